//! The core routes (docs/console.md): hosts, partitions, migrations and
//! the audit trail. Every change goes to the audit with who made it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use lpm_agent::api::Request;
use lpm_host::partition::PartitionSpec;
use serde::Deserialize;
use serde_json::json;

use super::{migrate, poll, ApiError, AppState, Event, MigrateOptions, Who};

/// The core routes, (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/hosts"),
    ("POST", "/v1/hosts"),
    ("GET", "/v1/hosts/{name}"),
    ("DELETE", "/v1/hosts/{name}"),
    ("GET", "/v1/partitions"),
    ("POST", "/v1/partitions"),
    ("GET", "/v1/partitions/{name}"),
    ("DELETE", "/v1/partitions/{name}"),
    ("POST", "/v1/partitions/{name}/start"),
    ("POST", "/v1/partitions/{name}/stop"),
    ("POST", "/v1/partitions/{name}/validate"),
    ("GET", "/v1/migrations"),
    ("POST", "/v1/migrations"),
    ("GET", "/v1/migrations/{id}"),
    ("POST", "/v1/migrations/{id}/stop"),
    ("POST", "/v1/migrations/{id}/recover"),
    ("GET", "/v1/audit"),
];

type Shared = State<Arc<AppState>>;
type Answer = Result<Response, ApiError>;

/// The core routes.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/hosts", get(list_hosts).post(add_host))
        .route("/v1/hosts/{name}", get(show_host).delete(remove_host))
        .route("/v1/partitions", get(list_partitions).post(create_partition))
        .route("/v1/partitions/{name}", get(show_partition).delete(delete_partition))
        .route("/v1/partitions/{name}/start", post(start_partition))
        .route("/v1/partitions/{name}/stop", post(stop_partition))
        .route("/v1/partitions/{name}/validate", post(validate_partition))
        .route("/v1/migrations", get(list_migrations).post(start_migration))
        .route("/v1/migrations/{id}", get(show_migration))
        .route("/v1/migrations/{id}/stop", post(stop_migration))
        .route("/v1/migrations/{id}/recover", post(recover_migration))
        .route("/v1/audit", get(audit))
}

/// `?fresh=true`: poll first rather than answer from the last poll.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Fresh {
    fresh: bool,
}

/// `?limit=N`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Limit {
    limit: Option<i64>,
}

fn ok<T: serde::Serialize>(v: T) -> Answer {
    Ok(Json(v).into_response())
}

async fn list_hosts(State(s): Shared, Query(q): Query<Fresh>) -> Answer {
    if q.fresh {
        poll::poll_all(&s).await;
    }
    ok(s.hosts().await?)
}

/// `POST /v1/hosts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddHost {
    name: String,
    api: String,
    #[serde(default)]
    mover: Option<String>,
}

fn parse_addr(what: &str, name: &str, a: &str) -> Result<SocketAddr, ApiError> {
    a.parse().map_err(|_| ApiError::bad_request(format!("host {name}: {what} {a:?} is not IP:PORT")))
}

async fn add_host(State(s): Shared, Extension(who): Extension<Who>, Json(h): Json<AddHost>) -> Answer {
    lpm_trust::check_name(&h.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let api = parse_addr("api", &h.name, &h.api)?;
    let mover = match &h.mover {
        Some(m) => parse_addr("mover", &h.name, m)?,
        None => SocketAddr::new(api.ip(), lpm_host::hosts::MOVER_PORT),
    };
    if !s.store.add_host(&h.name, &api.to_string(), &mover.to_string()).await? {
        return Err(ApiError::conflict(format!("host {} is registered already", h.name)));
    }
    s.audit(who.as_str(), "host.add", &format!("{} api {api} mover {mover}", h.name)).await?;
    poll::poll_one(&s, &h.name).await;
    let view = s.host(&h.name).await?;
    s.emit(Event::HostChanged { host: view.clone(), removed: false });
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn show_host(State(s): Shared, Path(name): Path<String>, Query(q): Query<Fresh>) -> Answer {
    if q.fresh {
        poll::poll_one(&s, &name).await;
    }
    ok(s.host(&name).await?)
}

async fn remove_host(State(s): Shared, Extension(who): Extension<Who>, Path(name): Path<String>) -> Answer {
    let view = s.host(&name).await?;
    s.store.remove_host(&name).await?;
    s.audit(who.as_str(), "host.remove", &name).await?;
    s.emit(Event::HostChanged { host: view.clone(), removed: true });
    ok(view)
}

async fn list_partitions(State(s): Shared, Query(q): Query<Fresh>) -> Answer {
    if q.fresh {
        poll::poll_all(&s).await;
    }
    ok(s.partitions().await?)
}

/// `POST /v1/partitions`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    host: String,
    spec: PartitionSpec,
}

async fn create_partition(State(s): Shared, Extension(who): Extension<Who>, Json(c): Json<Create>) -> Answer {
    let host = s.store.host(&c.host).await?.ok_or_else(|| ApiError::not_found(format!("no host {:?}", c.host)))?;
    if host.maintenance {
        return Err(ApiError::conflict(format!("host {} is in maintenance: it receives no partition until it is released", c.host)));
    }
    let name = c.spec.name.clone();
    if let Some(p) = s.store.partition(&name).await?.first() {
        return Err(ApiError::conflict(format!("a partition {name} exists already, on {}", p.host)));
    }
    s.hosts.call(&host, Request::Create(c.spec), None).await?;
    s.audit(who.as_str(), "partition.create", &format!("{name} on {}", c.host)).await?;
    poll::poll_one(&s, &c.host).await;
    Ok((StatusCode::CREATED, Json(one_partition(&s, &name).await?)).into_response())
}

/// The partition's host as last seen, refreshed by a poll of it.
async fn partition_host(s: &Arc<AppState>, name: &str) -> Result<super::HostRow, ApiError> {
    let seen = s.store.partition(name).await?;
    let host = match seen.as_slice() {
        [] => return Err(ApiError::not_found(format!("no partition {name:?} on any host the console knows"))),
        [one] => one.host.clone(),
        many => {
            // Two hosts list it while it moves: the one running it acts.
            many.iter().find(|p| p.state == "running").unwrap_or(&many[0]).host.clone()
        }
    };
    s.store.host(&host).await?.ok_or_else(|| ApiError::not_found(format!("no host {host:?}")))
}

async fn one_partition(s: &Arc<AppState>, name: &str) -> Result<super::PartitionView, ApiError> {
    s.partitions()
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no partition {name:?} on any host the console knows")))
}

async fn show_partition(State(s): Shared, Path(name): Path<String>) -> Answer {
    let host = partition_host(&s, &name).await?;
    poll::poll_one(&s, &host.name).await;
    ok(one_partition(&s, &name).await?)
}

/// Runs `req` on the partition's host, audits it, polls the host and
/// answers with the partition as it is then.
async fn on_partition(s: Arc<AppState>, who: Who, name: String, action: &str, req: Request) -> Answer {
    let host = partition_host(&s, &name).await?;
    s.hosts.call(&host, req, None).await?;
    s.audit(who.as_str(), action, &format!("{name} on {}", host.name)).await?;
    poll::poll_one(&s, &host.name).await;
    if action == "partition.delete" {
        return ok(json!({ "deleted": name, "host": host.name }));
    }
    ok(one_partition(&s, &name).await?)
}

async fn delete_partition(State(s): Shared, Extension(who): Extension<Who>, Path(name): Path<String>) -> Answer {
    on_partition(s, who, name.clone(), "partition.delete", Request::Delete(name)).await
}

async fn start_partition(State(s): Shared, Extension(who): Extension<Who>, Path(name): Path<String>) -> Answer {
    on_partition(s, who, name.clone(), "partition.start", Request::Start(name)).await
}

async fn stop_partition(State(s): Shared, Extension(who): Extension<Who>, Path(name): Path<String>) -> Answer {
    on_partition(s, who, name.clone(), "partition.stop", Request::Stop(name)).await
}

/// `POST /v1/partitions/{name}/validate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Validate {
    target: String,
}

async fn checks_answer(s: &Arc<AppState>, partition: &str, target: &str, who: &Who) -> Answer {
    let checks = s.validate(partition, target, who.as_str()).await?;
    let ok = checks.iter().all(|c| c.ok);
    Ok(Json(json!({ "partition": partition, "target": target, "ok": ok, "checks": checks })).into_response())
}

async fn validate_partition(State(s): Shared, Extension(who): Extension<Who>, Path(name): Path<String>, Json(v): Json<Validate>) -> Answer {
    checks_answer(&s, &name, &v.target, &who).await
}

async fn list_migrations(State(s): Shared, Query(q): Query<Limit>) -> Answer {
    let mut rows = s.store.migrations(q.limit.unwrap_or(100).clamp(1, 10_000)).await?;
    let live = s.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for r in rows.iter_mut() {
        if let Some(l) = live.get(&r.id) {
            *r = l.clone();
        }
    }
    ok(rows)
}

/// `POST /v1/migrations`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    partition: String,
    target: String,
    #[serde(default)]
    options: MigrateOptions,
}

async fn start_migration(State(s): Shared, Extension(who): Extension<Who>, Json(m): Json<Start>) -> Answer {
    if m.options.validate_only {
        return checks_answer(&s, &m.partition, &m.target, &who).await;
    }
    let id = s.migrate(&m.partition, &m.target, m.options, who.as_str()).await?;
    let row = s.migration(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(row)).into_response())
}

/// `GET /v1/migrations/{id}?hosts=true`: with both hosts' records.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ShowQuery {
    hosts: bool,
}

async fn show_migration(State(s): Shared, Path(id): Path<String>, Query(q): Query<ShowQuery>) -> Answer {
    let row = s.migration(&id).await?;
    if !q.hosts {
        return ok(row);
    }
    let sides = migrate::sides(&s, &row).await;
    let mut v = serde_json::to_value(&row).map_err(|e| ApiError::internal(e.to_string()))?;
    v["source_record"] = serde_json::to_value(&sides.source).unwrap_or_default();
    v["target_record"] = serde_json::to_value(&sides.target).unwrap_or_default();
    v["hosts_down"] = json!(sides.down);
    ok(v)
}

async fn stop_migration(State(s): Shared, Extension(who): Extension<Who>, Path(id): Path<String>) -> Answer {
    ok(migrate::stop(&s, &id, who.as_str()).await?)
}

async fn recover_migration(State(s): Shared, Extension(who): Extension<Who>, Path(id): Path<String>) -> Answer {
    ok(migrate::recover(&s, &id, who.as_str()).await?)
}

async fn audit(State(s): Shared, Query(q): Query<Limit>) -> Answer {
    ok(s.store.audit_entries(q.limit.unwrap_or(100).clamp(1, 10_000)).await?)
}
