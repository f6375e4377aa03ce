//! The hosts' clients and the poller: every `poll_interval_ms` each
//! registered host's lpmd is asked, over mutual TLS with the console's
//! certificate, for its capacity and use (`GET /v1/host`) and its
//! partitions (`GET /v1/partitions`), each host on its own, with a
//! deadline: a host that does not answer in `poll_timeout_ms` is marked
//! unreachable and the others go on. What changed goes out as events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use lpm_agent::api::{Request, Response};
use lpm_agent::client::{Client, Remote, TlsConfig};

use super::store::{HostRow, PartitionRow};
use super::{ApiError, AppState, Config, Event};

/// How the console reaches the hosts' APIs.
pub struct HostClients {
    tls: TlsConfig,
    /// Hosts with a poll under way, since when: a blocking call that
    /// hangs past its deadline still holds its thread, so a host whose
    /// poll is overdue is not asked again until it answered or gave up
    /// (polls within their deadline may overlap).
    polling: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl HostClients {
    /// The clients of a console with `config`'s TLS files.
    pub fn new(config: &Config) -> Result<HostClients> {
        let t = &config.tls;
        let tls = lpm_agent::client::operator_tls(&t.ca, &t.cert, &t.key).context("the console's identity towards the hosts")?;
        Ok(HostClients { tls, polling: Mutex::new(HashMap::new()) })
    }

    /// A client of `host`'s API.
    pub fn client(&self, host: &HostRow) -> Result<Client, ApiError> {
        let addr: SocketAddr =
            host.api.parse().map_err(|_| ApiError::internal(format!("host {}: API address {:?} unreadable", host.name, host.api)))?;
        Ok(Client::remote(&host.name, Remote { addr, netns: None, tls: self.tls.clone() }))
    }

    /// Sends `req` to `host` on a blocking thread; with a deadline, gives
    /// up waiting after it (the call itself ends by its own timeouts).
    pub async fn call(&self, host: &HostRow, req: Request, deadline: Option<Duration>) -> Result<Response, ApiError> {
        let mut client = self.client(host)?;
        let name = host.name.clone();
        let what = format!("{} {}", req.route().method, req.route().path);
        let task = tokio::task::spawn_blocking(move || client.call(&req));
        let joined = match deadline {
            Some(d) => tokio::time::timeout(d, task)
                .await
                .map_err(|_| ApiError::bad_gateway(format!("{name}: no answer to {what} within {d:?}")))?,
            None => task.await,
        };
        let answer = joined.map_err(|e| ApiError::internal(format!("{name}: the call's thread failed: {e}")))?;
        answer.map_err(|e| host_error(&name, e))
    }
}

/// A host's refusal (its lpmd said why: 409) or a failure to reach it
/// (502), with the whole chain of causes.
pub fn host_error(host: &str, e: anyhow::Error) -> ApiError {
    let text = format!("{e:#}");
    // The client turns lpmd's own error answers into "HOST: why"; a
    // failure to connect or a broken answer says "reach the API" or
    // "answer to".
    if text.starts_with(&format!("{host}: ")) && !text.contains("answered HTTP") {
        ApiError::conflict(text)
    } else {
        ApiError::bad_gateway(text)
    }
}

/// Polls every host, every `poll_interval_ms`, for as long as the
/// console runs.
pub async fn run(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(state.config.poll_interval_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        poll_all(&state).await;
    }
}

/// Polls every host at once and waits for all (each bounded by its
/// deadline).
pub async fn poll_all(state: &Arc<AppState>) {
    let hosts = match state.store.hosts().await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "poll: the hosts unreadable");
            return;
        }
    };
    let polls: Vec<_> = hosts
        .into_iter()
        .map(|h| {
            let state = state.clone();
            tokio::spawn(async move { poll_host(&state, h).await })
        })
        .collect();
    for p in polls {
        let _ = p.await;
    }
}

/// Polls one host now (after a change made through it, so the inventory
/// shows it at once).
pub async fn poll_one(state: &Arc<AppState>, name: &str) {
    if let Ok(Some(h)) = state.store.host(name).await {
        poll_host(state, h).await;
    }
}

/// A poll registered as under way; it ends with this.
struct Polling<'a> {
    clients: &'a HostClients,
    host: String,
    since: tokio::time::Instant,
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut p = self.clients.polling.lock().unwrap_or_else(|e| e.into_inner());
        if p.get(&self.host) == Some(&self.since) {
            p.remove(&self.host);
        }
    }
}

async fn poll_host(state: &Arc<AppState>, before: HostRow) {
    let name = before.name.clone();
    let deadline = Duration::from_millis(state.config.poll_timeout_ms.max(100));
    let now = tokio::time::Instant::now();
    let overdue = {
        let mut p = state.hosts.polling.lock().unwrap_or_else(|e| e.into_inner());
        match p.get(&name) {
            Some(since) if now.duration_since(*since) > deadline => Some(now.duration_since(*since)),
            Some(_) => None,
            None => {
                p.insert(name.clone(), now);
                None
            }
        }
    };
    if let Some(late) = overdue {
        record(state, &before, Err(format!("a poll has gone unanswered for {late:.0?}"))).await;
        return;
    }
    let _polling = Polling { clients: &state.hosts, host: name.clone(), since: now };
    let started = tokio::time::Instant::now();
    let answer = async {
        let cap = match state.hosts.call(&before, Request::Host, Some(deadline)).await {
            Ok(Response::Host(h)) => Some(*h),
            Ok(other) => return Err(ApiError::bad_gateway(format!("{name}: GET /v1/host answered {other:?}"))),
            // An lpmd older than the request: up, its capacity unknown.
            Err(e) if e.message.contains("answered HTTP 404") => None,
            Err(e) => return Err(e),
        };
        let left = deadline.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
        let parts = match state.hosts.call(&before, Request::List, Some(left)).await? {
            Response::Partitions(p) => p,
            other => return Err(ApiError::bad_gateway(format!("{name}: GET /v1/partitions answered {other:?}"))),
        };
        Ok((cap, parts))
    }
    .await;
    let seen = super::now_ms();
    let result = answer
        .map(|(cap, parts)| {
            let rows = parts
                .into_iter()
                .map(|p| PartitionRow {
                    host: name.clone(),
                    name: p.spec.name.clone(),
                    state: p.state.clone(),
                    memory_current: p.memory_current,
                    pid: p.pid,
                    spec: serde_json::to_value(&p.spec).unwrap_or_default(),
                    seen_ms: seen,
                })
                .collect::<Vec<_>>();
            (cap, rows)
        })
        .map_err(|e| e.message);
    record(state, &before, result).await;
}

/// Stores a poll's result and sends the events of what changed.
async fn record(
    state: &Arc<AppState>,
    before: &HostRow,
    result: std::result::Result<(Option<super::Capacity>, Vec<PartitionRow>), String>,
) {
    let name = &before.name;
    let parts_before: HashMap<String, String> = match state.store.partitions().await {
        Ok(p) => p.into_iter().filter(|p| &p.host == name).map(|p| (p.name, p.state)).collect(),
        Err(_) => HashMap::new(),
    };
    let stored = match &result {
        Ok((cap, rows)) => state.store.host_up(name, cap.as_ref(), rows).await,
        Err(why) => state.store.host_unreachable(name, why).await,
    };
    if let Err(e) = stored {
        tracing::warn!(host = %name, error = format!("{e:#}"), "poll: not recorded");
        return;
    }
    let parts_changed = match &result {
        Ok((_, rows)) => rows.len() != parts_before.len() || rows.iter().any(|r| parts_before.get(&r.name) != Some(&r.state)),
        Err(_) => false,
    };
    let Ok(Some(after)) = state.store.host(name).await else { return };
    let changed = after.status != before.status
        || after.error != before.error
        || after.partitions != before.partitions
        || after.maintenance != before.maintenance
        || capacity_moved(before.capacity.as_ref(), after.capacity.as_ref());
    if after.status != before.status {
        match &after.error {
            Some(e) => tracing::warn!(host = %name, error = %e, "host unreachable"),
            None => tracing::info!(host = %name, "host up"),
        }
    }
    if changed {
        state.emit(Event::HostChanged { host: after, removed: false });
    }
    if parts_changed {
        state.emit(Event::PartitionsChanged { host: name.clone() });
    }
}

/// Capacity or use moved enough to tell (memory by 1 %, CPUs reserved,
/// load by 0.1): not at every poll's small drift.
fn capacity_moved(a: Option<&super::Capacity>, b: Option<&super::Capacity>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            let mem = (a.memory_available_bytes as f64 - b.memory_available_bytes as f64).abs() > 0.01 * a.memory_bytes.max(1) as f64;
            mem || a.cpus != b.cpus || a.cpus_reserved != b.cpus_reserved || (a.load1 - b.load1).abs() >= 0.1 || a.running != b.running
        }
        (None, None) => false,
        _ => true,
    }
}
