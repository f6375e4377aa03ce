//! The console service (`lpm console serve`, docs/console.md): an HTTP/JSON
//! API under /v1 over TLS for operators (a client certificate of the site
//! CA or a bearer token), the inventory and history in a database (SQLite
//! by default, PostgreSQL through the same code), each host's lpmd polled
//! over mutual TLS, migrations started and followed through the hosts.
//!
//! The router is the core routes (this module's [`ROUTES`]), then the
//! policies' ([`policy`]) and the web page's ([`ui`]); each module lists
//! its routes in a `ROUTES` table so the OpenAPI description can be
//! checked against them both ways. Every module shares one [`AppState`]
//! and one stream of [`Event`]s.

pub mod auth;
pub mod config;
mod core;
mod migrate;
pub mod policy;
pub mod poll;
pub mod store;
pub mod ui;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Semaphore};

pub use self::auth::Who;
pub use self::config::Config;
pub use self::core::ROUTES;
pub use self::migrate::MigrateOptions;
pub use self::store::{AuditEntry, HostRow, MigrationRow, PartitionRow, Store};

/// Events kept for a subscriber that reads slowly; past that it misses
/// the oldest (it learns so from the channel and can read the state
/// again).
pub const EVENT_QUEUE: usize = 1024;

/// What happens in the console, as it happens: the web page's live view
/// (`GET /v1/events`), the policies' executor following its moves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A migration's progress, as its source host reports it.
    MigrationProgress {
        /// The migration's id (the source host's).
        id: String,
        /// The partition.
        partition: String,
        /// Its source host.
        source: String,
        /// Its target host.
        target: String,
        /// "validate", "prepare", "precopy", "switchover", "handover".
        phase: String,
        /// Pre-copy round (1-based), 0 before.
        round: u32,
        /// Dirty pages left after the last round.
        pages: u64,
        /// Bytes sent so far.
        bytes: u64,
        /// Measured bandwidth, bytes/s.
        rate: f64,
        /// A line for humans.
        note: String,
    },
    /// A migration ended (or was found ended).
    MigrationFinished {
        /// The migration's id.
        id: String,
        /// The partition.
        partition: String,
        /// "completed", "aborted", "failed", "in_doubt", "validated",
        /// "refused" (validation failed), "error" (it never started).
        outcome: String,
        /// Its report (lpm_migrate's `Report` as JSON), or the checks of a
        /// validation, when there is one.
        report: Option<serde_json::Value>,
    },
    /// A host's state changed: reachable or not, capacity, use,
    /// maintenance, added or removed (`removed`).
    HostChanged {
        /// The host as the console now sees it.
        host: HostView,
        /// The host was removed from the console.
        #[serde(default)]
        removed: bool,
    },
    /// A host's partitions changed (one appeared, went, changed state or
    /// moved).
    PartitionsChanged {
        /// The host whose list changed.
        host: String,
    },
    /// A policy's plan being carried out (policy.rs).
    PlanProgress {
        /// The plan's id.
        plan: String,
        /// "running", "done", "failed", "stopped".
        state: String,
        /// Moves ended so far.
        done: u32,
        /// Moves in the plan.
        total: u32,
        /// A line for humans.
        note: String,
        /// Whatever else the plan's executor tells (the move that ended).
        #[serde(default)]
        detail: serde_json::Value,
    },
}

/// A host as the console sees it: registered, and as last polled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    /// Its name (its certificate's).
    pub name: String,
    /// Its lpmd's API address (api_listen).
    pub api: String,
    /// Its mover's address (listen).
    pub mover: String,
    /// In maintenance: it receives no partition (evacuate, release).
    pub maintenance: bool,
    /// "up", "unreachable", or "unknown" before the first poll.
    pub status: String,
    /// Why it is unreachable, when it is.
    pub error: Option<String>,
    /// When it was last polled, ms since the Unix epoch.
    pub last_poll_ms: Option<i64>,
    /// When it last answered, ms since the Unix epoch.
    pub last_seen_ms: Option<i64>,
    /// Capacity and use, as last answered.
    pub capacity: Option<Capacity>,
    /// Its partitions, as last answered.
    pub partitions: u32,
}

/// A host's capacity and use (lpmd's `GET /v1/host`).
pub use lpm_agent::api::HostInfo as Capacity;

/// A partition as the console last saw it on its host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionView {
    /// Its name.
    pub name: String,
    /// The host it was seen on.
    pub host: String,
    /// "running", "stopped", "migrating".
    pub state: String,
    /// Memory in use, bytes.
    pub memory_current: Option<u64>,
    /// Its host's pid of its init.
    pub pid: Option<i32>,
    /// Its specification (lpm_host's PartitionSpec as JSON).
    pub spec: serde_json::Value,
    /// When it was last seen, ms since the Unix epoch.
    pub seen_ms: i64,
    /// Its host did not answer the last poll: this is what it said
    /// before.
    pub stale: bool,
}

/// An error of the API: its status and the `{"error": "..."}` body.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the caller.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    /// 400: the request is not well formed.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: no such host, partition, migration.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: well formed, but the hosts or the console refused or failed.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 502: a host did not answer.
    pub fn bad_gateway(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, message)
    }

    /// 500: the console's own failure (its database).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> ApiError {
        ApiError::internal(format!("{:#}", anyhow::Error::from(e)))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// What every route of the console shares.
pub struct AppState {
    /// The inventory and history.
    pub store: Store,
    /// The service's configuration.
    pub config: Config,
    /// The events; subscribe with `events.subscribe()`.
    pub events: broadcast::Sender<Event>,
    /// How to reach the hosts' APIs (the console's certificate).
    pub hosts: poll::HostClients,
    /// The console-wide limit on migrations under way.
    pub(crate) migration_slots: Arc<Semaphore>,
    /// Migrations this console follows now, by id: their latest view.
    pub(crate) live: Mutex<HashMap<String, MigrationRow>>,
}

impl AppState {
    /// The state of a console: opens (and migrates) the database, reads
    /// the console's identity.
    pub async fn open(config: Config) -> anyhow::Result<Arc<AppState>> {
        let store = Store::open(&config.database_url()).await?;
        let hosts = poll::HostClients::new(&config)?;
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        Ok(Arc::new(AppState {
            store,
            migration_slots: Arc::new(Semaphore::new(config.max_migrations.max(1))),
            config,
            events,
            hosts,
            live: Mutex::new(HashMap::new()),
        }))
    }

    /// Sends an event to whoever listens (nobody, often: not an error).
    pub fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Records a change and who made it.
    pub async fn audit(&self, who: &str, action: &str, detail: &str) -> Result<(), ApiError> {
        self.store.audit(who, action, detail).await?;
        Ok(())
    }

    /// The registered hosts, as last polled.
    pub async fn hosts(&self) -> Result<Vec<HostView>, ApiError> {
        Ok(self.store.hosts().await?)
    }

    /// One host, as last polled.
    pub async fn host(&self, name: &str) -> Result<HostView, ApiError> {
        self.store.host(name).await?.ok_or_else(|| ApiError::not_found(format!("no host {name:?}")))
    }

    /// Every partition of every host, as last seen (a host that did not
    /// answer its last poll has its partitions marked `stale`).
    pub async fn partitions(&self) -> Result<Vec<PartitionView>, ApiError> {
        let down: std::collections::HashSet<String> =
            self.store.hosts().await?.into_iter().filter(|h| h.status != "up").map(|h| h.name).collect();
        Ok(self
            .store
            .partitions()
            .await?
            .into_iter()
            .map(|p| {
                let stale = down.contains(&p.host);
                p.into_view(stale)
            })
            .collect())
    }

    /// Marks `host` in maintenance (it receives nothing) or out of it.
    pub async fn set_maintenance(&self, host: &str, on: bool, who: &str) -> Result<HostView, ApiError> {
        if !self.store.set_maintenance(host, on).await? {
            return Err(ApiError::not_found(format!("no host {host:?}")));
        }
        self.audit(who, if on { "host.maintenance" } else { "host.release" }, host).await?;
        let view = self.host(host).await?;
        self.emit(Event::HostChanged { host: view.clone(), removed: false });
        Ok(view)
    }

    /// Runs every validation check of moving `partition` to `target` (the
    /// source host runs its own and asks the target for its), as the
    /// hosts give them.
    pub async fn validate(self: &Arc<Self>, partition: &str, target: &str, who: &str) -> Result<Vec<lpm_agent::api::Check>, ApiError> {
        migrate::validate(self, partition, target, who).await
    }

    /// Starts moving `partition` to `target` through its host and returns
    /// the migration's id once the source host took it; the console
    /// follows it (events, the store) and holds one of its
    /// `max_migrations` slots until it ends (a call beyond waits for one).
    pub async fn migrate(self: &Arc<Self>, partition: &str, target: &str, options: MigrateOptions, who: &str) -> Result<String, ApiError> {
        migrate::start(self, partition, target, options, who).await
    }

    /// Waits until migration `id` ends (at once when it has) and returns
    /// its record: the policies' executor follows its moves with it.
    pub async fn wait_migration(&self, id: &str) -> Result<MigrationRow, ApiError> {
        migrate::wait(self, id).await
    }

    /// One migration: live while the console follows it, else as
    /// recorded.
    pub async fn migration(&self, id: &str) -> Result<MigrationRow, ApiError> {
        if let Some(m) = self.live.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(m.clone());
        }
        self.store.migration(id).await?.ok_or_else(|| ApiError::not_found(format!("no migration {id:?}")))
    }
}

/// The console's router: the core routes, the policies', the page's.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new().merge(core::routes()).merge(policy::routes()).merge(ui::routes()).with_state(state)
}

/// Every route the console serves, (method, path) with axum's `{param}`.
pub fn all_routes() -> Vec<(&'static str, &'static str)> {
    ROUTES.iter().chain(policy::ROUTES).chain(ui::ROUTES).copied().collect()
}

/// Runs the console until SIGINT or SIGTERM: the database migrated, the
/// migrations in flight when it last stopped picked up from the hosts,
/// the poller, the listener.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let state = AppState::open(config).await?;
    for (name, h) in &state.config.hosts {
        let mover = h.mover.unwrap_or_else(|| std::net::SocketAddr::new(h.api.ip(), lpm_host::hosts::MOVER_PORT));
        if state.store.add_host(name, &h.api.to_string(), &mover.to_string()).await? {
            state.audit("config", "host.add", &format!("{name} api {} mover {mover}", h.api)).await?;
        }
    }
    poll::poll_all(&state).await;
    migrate::resume(&state).await;
    policy::interrupted(&state).await;
    let poller = tokio::spawn(poll::run(state.clone()));
    let served = auth::listen(state.clone()).await;
    poller.abort();
    served
}

/// Runs `f` to its end on a runtime of its own: the CLI's way in (`lpm
/// console serve`, `lpm console token`), which has none.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lpm-console")
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("the console's runtime: {e}"))?;
    Ok(rt.block_on(f))
}

/// Adds (or replaces) operator token `name` in `config`'s database and
/// returns the token, which is shown this once: the database keeps its
/// hash.
pub async fn add_token(config: &Config, name: &str) -> anyhow::Result<String> {
    lpm_trust::check_name(name).map_err(|e| anyhow::anyhow!("token name: {e}"))?;
    let store = Store::open(&config.database_url()).await?;
    let token = auth::new_token()?;
    store.put_token(name, &auth::token_hash(&token)).await?;
    store.audit("admin", "token.add", name).await?;
    store.close().await;
    Ok(token)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
