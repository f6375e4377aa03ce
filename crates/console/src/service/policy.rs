//! The policies carried out (docs/console.md): evacuate, release,
//! balance and consolidate as routes, each planned by the pure planners
//! over the console's inventory with the hosts' validation folded in,
//! then carried out by [`crate::run`] through [`AppState::migrate`].
//!
//! A request with `dry_run` answers the plan and does nothing. Otherwise
//! the run is recorded (`GET /v1/plans`, `/v1/plans/{id}`), audited with
//! who asked, and carried out in the background; the answer (202) holds
//! its id and plan, and each step goes out as an [`Event::PlanProgress`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{now_ms, poll, ApiError, AppState, Event, HostView, MigrateOptions, PartitionView, Who};
use crate::run::{carry_out, Carrier, Outcome, Run, RunState, Step};
use crate::{Health, Host, Inventory, Mobility, Move, Partition, PartitionState, Plan, Policy, Resources, Rules};

/// The policies' routes, (method, path).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/hosts/{name}/evacuate"),
    ("POST", "/v1/hosts/{name}/release"),
    ("POST", "/v1/balance"),
    ("POST", "/v1/consolidate"),
    ("GET", "/v1/plans"),
    ("GET", "/v1/plans/{id}"),
];

/// How many times a plan is made again with the partitions validation
/// refused: each round validates only the moves new to it, so the
/// rounds end when no new move is refused; this bounds a pathological
/// inventory where every new plan finds a new refusal.
const VALIDATION_ROUNDS: usize = 8;

type Shared = State<Arc<AppState>>;
type Answer = Result<Response, ApiError>;

/// The policies' routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/hosts/{name}/evacuate", post(evacuate))
        .route("/v1/hosts/{name}/release", post(release))
        .route("/v1/balance", post(balance))
        .route("/v1/consolidate", post(consolidate))
        .route("/v1/plans", get(list_plans))
        .route("/v1/plans/{id}", get(show_plan))
}

/// The body of a policy request.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PolicyRequest {
    /// Answer the plan, do nothing.
    dry_run: bool,
    /// The options of every migration of the plan (as `lpm migrate`).
    options: Option<MigrateOptions>,
}

/// What a policy request answers: the plan, its dry-run text, and the
/// run's id when it is carried out.
#[derive(Debug, Serialize)]
struct Planned {
    /// The run's id (absent for a dry run).
    id: Option<String>,
    /// The plan.
    plan: Plan,
    /// `Plan::render`: what `--dry-run` prints.
    text: String,
}

async fn evacuate(State(s): Shared, Extension(who): Extension<Who>, Path(name): Path<String>, body: Option<Json<PolicyRequest>>) -> Answer {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    s.host(&name).await?;
    let policy = Policy::Evacuate { host: name.clone() };
    if !req.dry_run {
        // At once, before planning: from now on no plan and no migrate
        // through this console sends it anything.
        s.set_maintenance(&name, true, who.as_str()).await?;
    }
    go(s, who, policy, req).await
}

async fn release(State(s): Shared, Extension(who): Extension<Who>, Path(name): Path<String>) -> Answer {
    let view = s.set_maintenance(&name, false, who.as_str()).await?;
    Ok(Json(view).into_response())
}

async fn balance(State(s): Shared, Extension(who): Extension<Who>, body: Option<Json<PolicyRequest>>) -> Answer {
    go(s, who, Policy::Balance, body.map(|Json(b)| b).unwrap_or_default()).await
}

async fn consolidate(State(s): Shared, Extension(who): Extension<Who>, body: Option<Json<PolicyRequest>>) -> Answer {
    go(s, who, Policy::Consolidate, body.map(|Json(b)| b).unwrap_or_default()).await
}

/// `?limit=N`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Limit {
    limit: Option<i64>,
}

async fn list_plans(State(s): Shared, Query(q): Query<Limit>) -> Answer {
    Ok(Json(s.store.plans(q.limit.unwrap_or(100).clamp(1, 10_000)).await?).into_response())
}

async fn show_plan(State(s): Shared, Path(id): Path<String>) -> Answer {
    match s.store.plan(&id).await? {
        Some(run) => Ok(Json(run).into_response()),
        None => Err(ApiError::not_found(format!("no plan {id:?}"))),
    }
}

/// Runs recorded as running when the console starts were cut short by
/// its stop: recorded as interrupted, so that no run shows as going on
/// forever. Their migrations under way are followed again by the
/// console's own resume; the moves not started are not started.
pub async fn interrupted(s: &AppState) {
    let runs = match s.store.plans(10_000).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "the plans' records are unreadable");
            return;
        }
    };
    for mut run in runs.into_iter().filter(|r| r.state == RunState::Running) {
        run.state = RunState::Interrupted;
        run.ended_unix_ms = Some(now_ms() as u64);
        if let Err(e) = s.store.put_plan(&run).await {
            tracing::warn!(plan = %run.id, error = %e, "plan not recorded as interrupted");
        }
    }
}

/// The rules the console plans with: the default headroom and per-host
/// limits (lpmd's), the console's own limit on migrations at once.
fn rules(s: &AppState) -> Rules {
    let mut r = Rules::default();
    r.limits.max_total = s.config.max_migrations.max(1);
    r
}

/// Plan `policy` (validated), then answer it (dry run) or carry it out.
async fn go(s: Arc<AppState>, who: Who, policy: Policy, req: PolicyRequest) -> Answer {
    let rules = rules(&s);
    let (inv, plan) = plan_validated(&s, &policy, &rules, who.as_str()).await?;
    let text = plan.render();
    if req.dry_run {
        return Ok(Json(Planned { id: None, plan, text }).into_response());
    }
    // Random bits (the std hasher's random keys) beside the time: two
    // plans started in one millisecond, or by two consoles on one
    // database, get different ids.
    let salt = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), now_ms()) as u32;
    let id = format!("plan-{}-{salt:08x}", now_ms());
    let run = Run::new(id.clone(), who.as_str().to_string(), plan.clone(), now_ms() as u64);
    s.store.put_plan(&run).await?;
    s.audit(who.as_str(), "plan.start", &format!("{id} {}: {} moves, {} stay", run.what(), plan.move_count(), plan.left.len())).await?;
    let carrier = Arc::new(Console { state: s.clone(), options: req.options.unwrap_or_default(), who: who.as_str().to_string() });
    tokio::spawn(async move {
        let run = carry_out(carrier, run, rules, inv, || now_ms() as u64).await;
        if let Some(sum) = &run.summary {
            let detail = format!(
                "{} {}: {} moved, {} failed, {} skipped, {} not movable",
                run.id,
                run.what(),
                sum.moved.len(),
                sum.failed.len(),
                sum.skipped.len(),
                sum.not_movable.len()
            );
            if let Err(e) = s.audit(&run.who, "plan.end", &detail).await {
                tracing::warn!(plan = %run.id, error = %e, "plan end not audited");
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(Planned { id: Some(id), plan, text })).into_response())
}

/// Make the plan, validate each of its moves with the hosts, and make it
/// again with the partitions validation refused marked immovable (named
/// with the checks that failed), until no move of the plan is refused.
async fn plan_validated(s: &Arc<AppState>, policy: &Policy, rules: &Rules, who: &str) -> Result<(Inventory, Plan), ApiError> {
    let mut inv = fresh_inventory(s).await?;
    // (partition, target) pairs validated already: a plan made again
    // mostly repeats the moves of the one before.
    let mut passed: BTreeMap<(String, String), ()> = BTreeMap::new();
    for _ in 0..VALIDATION_ROUNDS {
        let plan = make(&inv, rules, policy)?;
        let mut refused = BTreeMap::new();
        for m in plan.moves() {
            let key = (m.partition.clone(), m.to.clone());
            if passed.contains_key(&key) {
                continue;
            }
            let checks = s
                .validate(&m.partition, &m.to, who)
                .await
                .map_err(|e| ApiError::new(e.status, format!("validate {} {} -> {}: {}", m.partition, m.from, m.to, e.message)))?;
            let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
            if failed.is_empty() {
                passed.insert(key, ());
            } else {
                refused.insert(m.partition.clone(), format!("to {}: {}", m.to, failed.join("; ")));
            }
        }
        if refused.is_empty() {
            return Ok((inv, plan));
        }
        for p in inv.partitions.iter_mut() {
            if let Some(reason) = refused.remove(&p.name) {
                p.mobility = Mobility::Immovable { reason };
            }
        }
    }
    Err(ApiError::conflict(format!("validation refused new moves in each of {VALIDATION_ROUNDS} plans made in turn: no plan to carry out")))
}

fn make(inv: &Inventory, rules: &Rules, policy: &Policy) -> Result<Plan, ApiError> {
    let plan = match policy {
        Policy::Evacuate { host } => crate::evacuate(inv, rules, host),
        Policy::Balance => crate::balance(inv, rules),
        Policy::Consolidate => crate::consolidate(inv, rules),
    };
    plan.map_err(|e| ApiError::conflict(e.to_string()))
}

/// The planners' inventory from the console's: hosts with what
/// partitions may hold (their use plus what is free) as capacity, down
/// when their last poll failed (or none answered yet); partitions with
/// their memory and CPU limits as reserved and their memory in use. A
/// partition seen on two hosts is in a migration between them.
pub fn inventory(hosts: &[HostView], parts: &[PartitionView]) -> Inventory {
    let mib = |b: u64| b.div_ceil(1 << 20);
    let mut inv = Inventory::default();
    for h in hosts {
        let mut host = Host::new(&h.name, Resources::new(1, 1));
        match (&h.capacity, h.status.as_str()) {
            (Some(c), "up") => host.capacity = Resources::new(mib(c.memory_bytes).max(1), ((c.cpus * 1000.0).round() as u64).max(1)),
            _ => host.health = Health::Down,
        }
        host.maintenance = h.maintenance;
        inv.hosts.push(host);
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for p in parts {
        if let Some(&i) = seen.get(&p.name) {
            inv.partitions[i].state = PartitionState::Migrating;
            continue;
        }
        if !inv.hosts.iter().any(|h| h.name == p.host) {
            // A host removed since: its partitions are not the console's.
            continue;
        }
        let memory = p.spec.get("memory").and_then(|v| v.as_u64()).map_or(0, mib);
        let cpus = p.spec.get("cpus").and_then(|v| v.as_f64()).map_or(0, |c| (c * 1000.0).round() as u64);
        let mut part = Partition::new(&p.name, &p.host, Resources::new(memory, cpus));
        part.used = Resources::new(p.memory_current.map_or(0, mib), 0);
        part.state = match p.state.as_str() {
            "running" => PartitionState::Running,
            "migrating" => PartitionState::Migrating,
            _ => PartitionState::Stopped,
        };
        seen.insert(p.name.clone(), inv.partitions.len());
        inv.partitions.push(part);
    }
    inv
}

/// The inventory as the hosts answer now: every host polled (after the
/// poll in flight, if any: the moves of the wave before changed the
/// hosts since), then the console's records read, which its validation
/// and migrations go by too.
async fn fresh_inventory(s: &Arc<AppState>) -> Result<Inventory, ApiError> {
    poll::poll_all(s).await;
    Ok(inventory(&s.hosts().await?, &s.partitions().await?))
}

/// The console as [`crate::run`] sees it.
struct Console {
    state: Arc<AppState>,
    options: MigrateOptions,
    who: String,
}

impl Carrier for Console {
    async fn inventory(&self) -> Result<Inventory, String> {
        fresh_inventory(&self.state).await.map_err(|e| e.message)
    }

    async fn migrate(&self, mv: &Move) -> Result<String, (Option<String>, String)> {
        let id = self.state.migrate(&mv.partition, &mv.to, self.options.clone(), &self.who).await.map_err(|e| (None, e.message))?;
        let row = self.state.wait_migration(&id).await.map_err(|e| (Some(id.clone()), e.message))?;
        if row.state == "completed" {
            return Ok(id);
        }
        let why = row
            .error
            .clone()
            .or_else(|| row.report.as_ref().and_then(|r| r.get("outcome")).map(|o| o.to_string()))
            .unwrap_or_else(|| "no reason recorded".into());
        Err((Some(id.clone()), format!("migration {id} {}: {why}", row.state)))
    }

    async fn update(&self, run: &Run, step: &Step) {
        if let Err(e) = self.state.store.put_plan(run).await {
            tracing::warn!(plan = %run.id, error = %e, "plan progress not recorded");
        }
        let c = run.counts();
        let note = match step {
            Step::Wave { wave, of } => format!("{}: wave {wave} of {of}", run.what()),
            Step::Started { partition, from, to } => format!("{partition}: {from} -> {to} started"),
            Step::Ended { partition, outcome: Outcome::Moved { migration } } => format!("{partition}: moved ({migration})"),
            Step::Ended { partition, outcome: Outcome::Failed { reason, .. } } => format!("{partition}: failed: {reason}"),
            Step::Ended { partition, outcome: Outcome::Skipped { reason } } => format!("{partition}: skipped: {reason}"),
            Step::Ended { partition, .. } => partition.clone(),
            Step::Finished { summary } => format!(
                "{} done: {} moved, {} failed, {} skipped, {} not movable",
                run.what(),
                summary.moved.len(),
                summary.failed.len(),
                summary.skipped.len(),
                summary.not_movable.len()
            ),
        };
        self.state.emit(Event::PlanProgress {
            plan: run.id.clone(),
            state: match run.state {
                RunState::Running => "running",
                RunState::Finished => "done",
                RunState::Interrupted => "stopped",
            }
            .into(),
            done: (c.moved + c.failed + c.skipped) as u32,
            total: c.total as u32,
            note,
            detail: json!(step),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, status: &str, gib: u64, cpus: f64) -> HostView {
        HostView {
            name: name.into(),
            status: status.into(),
            capacity: Some(super::super::Capacity { memory_bytes: gib << 30, cpus, ..Default::default() }),
            ..Default::default()
        }
    }

    fn part(name: &str, host: &str, state: &str, spec: serde_json::Value, current: Option<u64>) -> PartitionView {
        PartitionView {
            name: name.into(),
            host: host.into(),
            state: state.into(),
            memory_current: current,
            pid: None,
            spec,
            seen_ms: 0,
            stale: false,
        }
    }

    #[test]
    fn the_console_s_inventory_becomes_the_planners() {
        let mut down = host("h3", "unreachable", 8, 2.0);
        down.maintenance = true;
        let hosts = vec![host("h1", "up", 8, 2.0), host("h2", "up", 4, 1.5), down];
        let parts = vec![
            part("a", "h1", "running", json!({"memory": 64u64 << 20, "cpus": 0.5}), Some(10 << 20)),
            part("b", "h1", "stopped", json!({"cpus": null}), Some(100 << 20)),
            part("c", "h1", "migrating", json!({}), None),
            part("c", "h2", "migrating", json!({}), None),
            part("gone", "h9", "running", json!({}), None),
        ];
        let inv = inventory(&hosts, &parts);
        assert_eq!(inv.hosts[0].capacity, Resources::new(8192, 2000));
        assert_eq!(inv.hosts[1].capacity, Resources::new(4096, 1500));
        assert_eq!(inv.hosts[2].health, Health::Down);
        assert!(inv.hosts[2].maintenance);
        assert_eq!(inv.partitions.len(), 3, "{:?}", inv.partitions);
        assert_eq!(inv.partitions[0].footprint(), Resources::new(64, 500));
        assert_eq!(inv.partitions[1].footprint(), Resources::new(100, 0));
        assert_eq!(inv.partitions[1].state, PartitionState::Stopped);
        assert_eq!(inv.partitions[2].state, PartitionState::Migrating);
        // The planners take it as it is.
        crate::balance(&inv, &Rules::default()).unwrap();
    }
}
