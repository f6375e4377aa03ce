//! Migrations through the console: started through the source host's API,
//! followed into events and the store, stopped and recovered through the
//! hosts.
//!
//! The hosts' records are the truth: each host journals every migration
//! it takes part in (lpm_migrate::journal). The console follows a
//! migration it started on the source's answer stream while that stream
//! lasts; when the stream breaks (the console restarted, the source's
//! lpmd died, the migration ended in doubt) it follows the hosts' records
//! instead until both sides are final. A console that starts picks up
//! every migration its store has unended, and every unended one a host
//! records that it never heard of.

use std::sync::Arc;
use std::time::Duration;

use lpm_agent::api::{Check, MigrateRequest, MigrationInfo, Progress, Request, Response};
use lpm_migrate::handover::{PeerState, SourceState, TargetState};
use lpm_migrate::journal::Side;
use lpm_migrate::report::{Outcome, Report};
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedSemaphorePermit;

use super::store::{HostRow, MigrationRow};
use super::{now_ms, ApiError, AppState, Event};

/// How often the hosts' records are read while the console follows a
/// migration by them.
const TRACK_INTERVAL: Duration = Duration::from_millis(500);
/// How often a migration's progress is written to the store (every
/// progress message goes out as an event).
const STORE_INTERVAL_MS: i64 = 1000;
/// Time a host may take to answer a question about a migration.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Time `recover` relays the two sides' records before giving up.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// What a migration is asked with, as `lpm migrate` takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrateOptions {
    /// Downtime budget, ms.
    pub max_downtime_ms: u64,
    /// Pre-copy time limit, s.
    pub max_time_s: u64,
    /// Switch over at the time limit instead of aborting.
    pub force: bool,
    /// Parallel streams for pages.
    pub streams: u32,
    /// zstd level for pages, none when absent.
    pub compress: Option<i32>,
    /// Run the validation only.
    pub validate_only: bool,
}

impl Default for MigrateOptions {
    fn default() -> MigrateOptions {
        MigrateOptions { max_downtime_ms: 50, max_time_s: 120, force: false, streams: 1, compress: None, validate_only: false }
    }
}

/// The partition's host and the target's row, checked: the partition is
/// on one host, the target is another, registered, up and not in
/// maintenance.
async fn locate(state: &Arc<AppState>, partition: &str, target: &str) -> Result<(HostRow, HostRow), ApiError> {
    // On the hosts' word of now, not of the last poll: a partition just
    // made, stopped or moved is where it is.
    super::poll::poll_all(state).await;
    let seen = state.store.partition(partition).await?;
    let source = match seen.as_slice() {
        [] => return Err(ApiError::not_found(format!("no partition {partition:?} on any host the console knows"))),
        [one] => one.host.clone(),
        many => {
            // One name on two hosts: the one running it is the source
            // (the other holds a stopped copy, which the target's checks
            // name); two running it is a migration under way.
            let running: Vec<&str> = many.iter().filter(|p| p.state == "running").map(|p| p.host.as_str()).collect();
            match running.as_slice() {
                [one] => one.to_string(),
                _ => {
                    let hosts: Vec<&str> = many.iter().map(|p| p.host.as_str()).collect();
                    return Err(ApiError::conflict(format!(
                        "partition {partition} is on {} at once (a migration under way?)",
                        hosts.join(" and ")
                    )));
                }
            }
        }
    };
    if source == target {
        return Err(ApiError::bad_request(format!("partition {partition} is on {target} already")));
    }
    let src = state.store.host(&source).await?.ok_or_else(|| ApiError::not_found(format!("no host {source:?}")))?;
    let tgt = state.store.host(target).await?.ok_or_else(|| ApiError::not_found(format!("no host {target:?}")))?;
    if tgt.maintenance {
        return Err(ApiError::conflict(format!("host {target} is in maintenance: it receives no partition until it is released")));
    }
    Ok((src, tgt))
}

fn request(partition: &str, target: &HostRow, o: &MigrateOptions, validate_only: bool) -> MigrateRequest {
    MigrateRequest {
        name: partition.to_string(),
        target: target.name.clone(),
        target_addr: target.mover.clone(),
        max_downtime_ms: o.max_downtime_ms,
        max_total_s: o.max_time_s,
        force: o.force,
        streams: o.streams,
        compress: o.compress,
        validate_only,
    }
}

/// Every check of moving `partition` to `target`, as the hosts give them.
pub(super) async fn validate(state: &Arc<AppState>, partition: &str, target: &str, _who: &str) -> Result<Vec<Check>, ApiError> {
    let (src, tgt) = locate(state, partition, target).await?;
    let req = request(partition, &tgt, &MigrateOptions::default(), true);
    match state.hosts.call(&src, Request::Migrate(req), None).await? {
        Response::Validation(checks) => Ok(checks),
        other => Err(ApiError::bad_gateway(format!("{}: validation answered {other:?}", src.name))),
    }
}

/// Starts a migration and returns its id once the source host named it.
pub(super) async fn start(
    state: &Arc<AppState>,
    partition: &str,
    target: &str,
    options: MigrateOptions,
    who: &str,
) -> Result<String, ApiError> {
    if options.validate_only {
        return Err(ApiError::bad_request("validate_only: use the validation, which answers with the checks"));
    }
    let (src, tgt) = locate(state, partition, target).await?;
    // The console-wide limit: a migration beyond it waits for a slot.
    let permit = state.migration_slots.clone().acquire_owned().await.map_err(|_| ApiError::internal("the console is stopping"))?;
    let req = request(partition, &tgt, &options, false);
    let mut client = state.hosts.client(&src)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let mut call = tokio::task::spawn_blocking(move || {
        client.call_with_progress(&Request::Migrate(req), |p| {
            let _ = tx.send(p.clone());
        })
    });
    // The id comes with the first progress message; an answer before it
    // is a refusal (validation failed, the partition is not running, a
    // limit of the host).
    let first = loop {
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) if !p.id.is_empty() => break p,
                Some(_) => continue,
                None => {
                    // The sender is gone: the call ended.
                    let res = (&mut call).await;
                    return Err(refused(state, partition, &src.name, target, who, res).await);
                }
            },
            res = &mut call => {
                // Progress sent just before the end may still be queued.
                if let Ok(p) = rx.try_recv() {
                    if !p.id.is_empty() {
                        let row = started(state, &p, partition, &src.name, target, who, &options).await?;
                        tokio::spawn(finish_call(state.clone(), row, rx, res, permit));
                        return Ok(p.id);
                    }
                }
                return Err(refused(state, partition, &src.name, target, who, res).await);
            }
        }
    };
    let row = started(state, &first, partition, &src.name, target, who, &options).await?;
    let id = row.id.clone();
    tokio::spawn(follow(state.clone(), row, rx, call, permit));
    Ok(id)
}

type CallResult = Result<anyhow::Result<Response>, tokio::task::JoinError>;

async fn refused(state: &Arc<AppState>, partition: &str, source: &str, target: &str, who: &str, res: CallResult) -> ApiError {
    let e = match res {
        Ok(Ok(other)) => ApiError::bad_gateway(format!("{source}: the migration answered {other:?} before it began")),
        Ok(Err(e)) => super::poll::host_error(source, e),
        Err(e) => ApiError::internal(format!("the migration's thread failed: {e}")),
    };
    let _ = state.audit(who, "migration.refused", &format!("{partition} {source} -> {target}: {}", e.message)).await;
    e
}

#[allow(clippy::too_many_arguments)]
async fn started(
    state: &Arc<AppState>,
    p: &Progress,
    partition: &str,
    source: &str,
    target: &str,
    who: &str,
    options: &MigrateOptions,
) -> Result<MigrationRow, ApiError> {
    let row = MigrationRow {
        id: p.id.clone(),
        partition: partition.to_string(),
        source: source.to_string(),
        target: target.to_string(),
        who: who.to_string(),
        started_ms: now_ms(),
        ended_ms: None,
        state: "running".into(),
        options: serde_json::to_value(options).unwrap_or_default(),
        progress: serde_json::to_value(p).ok(),
        report: None,
        error: None,
    };
    state.store.put_migration(&row).await?;
    state.live.lock().unwrap_or_else(|e| e.into_inner()).insert(row.id.clone(), row.clone());
    state.audit(who, "migration.start", &format!("{} {partition} {source} -> {target}", row.id)).await?;
    progress(state, &row, p);
    Ok(row)
}

/// Sends a progress message out as an event.
fn progress(state: &AppState, row: &MigrationRow, p: &Progress) {
    state.emit(Event::MigrationProgress {
        id: row.id.clone(),
        partition: row.partition.clone(),
        source: row.source.clone(),
        target: row.target.clone(),
        phase: p.phase.clone(),
        round: p.round,
        pages: p.dirty_pages,
        bytes: p.sent_bytes,
        rate: p.rate,
        note: p.note.clone(),
    });
}

/// Takes a progress message into the live row (and the store, at most
/// once a second).
async fn take_progress(state: &AppState, row: &mut MigrationRow, p: &Progress, stored: &mut i64) {
    row.progress = serde_json::to_value(p).ok();
    state.live.lock().unwrap_or_else(|e| e.into_inner()).insert(row.id.clone(), row.clone());
    progress(state, row, p);
    let now = now_ms();
    if now - *stored >= STORE_INTERVAL_MS {
        *stored = now;
        if let Err(e) = state.store.put_migration(row).await {
            tracing::warn!(id = %row.id, error = format!("{e:#}"), "migration progress not recorded");
        }
    }
}

/// Follows a migration on the source's answer stream, then ends it.
async fn follow(
    state: Arc<AppState>,
    mut row: MigrationRow,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
    mut call: tokio::task::JoinHandle<anyhow::Result<Response>>,
    permit: OwnedSemaphorePermit,
) {
    let mut stored = now_ms();
    let res = loop {
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) => take_progress(&state, &mut row, &p, &mut stored).await,
                None => break (&mut call).await,
            },
            res = &mut call => break res,
        }
    };
    finish_call(state, row, rx, res, permit).await;
}

/// The source's answer stream ended: the report ends the migration;
/// anything else (an error, a broken stream) leaves the hosts' records to
/// tell how it ends.
async fn finish_call(
    state: Arc<AppState>,
    mut row: MigrationRow,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Progress>,
    res: CallResult,
    permit: OwnedSemaphorePermit,
) {
    let mut stored = 0;
    while let Ok(p) = rx.try_recv() {
        take_progress(&state, &mut row, &p, &mut stored).await;
    }
    // The source no longer drives it: the slot is free.
    drop(permit);
    match res {
        Ok(Ok(Response::Report(r))) if !matches!(r.outcome, Outcome::InDoubt { .. }) => {
            end(&state, &mut row, outcome_of(&r), serde_json::to_value(&r).ok(), None).await;
        }
        Ok(Ok(other)) => {
            row.error = Some(format!("{}: the migration answered {other:?}", row.source));
            track(state, row).await;
        }
        Ok(Err(e)) => {
            row.error = Some(format!("{e:#}"));
            track(state, row).await;
        }
        Err(e) => {
            row.error = Some(format!("the migration's thread failed: {e}"));
            track(state, row).await;
        }
    }
}

/// A report's outcome as the console names it.
fn outcome_of(r: &Report) -> &'static str {
    match &r.outcome {
        Outcome::Completed => "completed",
        Outcome::Aborted { reason, .. } if reason.contains("stopped by request") => "stopped",
        Outcome::Aborted { .. } => "aborted",
        Outcome::Failed { .. } => "failed",
        Outcome::InDoubt { .. } => "in_doubt",
    }
}

/// Records the end and tells it.
async fn end(state: &AppState, row: &mut MigrationRow, outcome: &str, report: Option<serde_json::Value>, error: Option<String>) {
    row.state = outcome.to_string();
    row.ended_ms = Some(now_ms());
    row.report = report.or(row.report.take());
    if error.is_some() {
        row.error = error;
    } else if outcome == "completed" {
        row.error = None;
    }
    if let Err(e) = state.store.put_migration(row).await {
        tracing::warn!(id = %row.id, error = format!("{e:#}"), "migration end not recorded");
    }
    state.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&row.id);
    tracing::info!(id = %row.id, partition = %row.partition, outcome, "migration ended");
    state.emit(Event::MigrationFinished {
        id: row.id.clone(),
        partition: row.partition.clone(),
        outcome: outcome.to_string(),
        report: row.report.clone(),
    });
    for h in [row.source.clone(), row.target.clone()] {
        state.emit(Event::PartitionsChanged { host: h });
    }
}

/// Both sides of a migration as their hosts record them.
#[derive(Debug, Default)]
pub(super) struct Sides {
    pub source: Option<MigrationInfo>,
    pub target: Option<MigrationInfo>,
    /// Hosts that did not answer, and why.
    pub down: Vec<String>,
}

impl Sides {
    fn source_state(&self) -> Option<SourceState> {
        match self.source.as_ref()?.record.side {
            Side::Source(s) => Some(s),
            Side::Target(_) => None,
        }
    }

    fn target_state(&self) -> Option<TargetState> {
        match self.target.as_ref()?.record.side {
            Side::Target(t) => Some(t),
            Side::Source(_) => None,
        }
    }

    /// The migration's end as the records tell it, once both sides that
    /// answered are final (or the source is, and the target has no
    /// record): None while it goes on or is in doubt.
    fn outcome(&self) -> Option<&'static str> {
        let final_ = |i: &Option<MigrationInfo>| i.as_ref().is_none_or(|i| i.record.side.is_final());
        if !(final_(&self.source) && final_(&self.target)) || (self.source.is_none() && self.target.is_none()) {
            return None;
        }
        if let Some(r) = self.source.as_ref().and_then(|s| s.report.as_ref()) {
            if !matches!(r.outcome, Outcome::InDoubt { .. }) {
                return Some(outcome_of(r));
            }
        }
        match (self.source_state(), self.target_state()) {
            (Some(SourceState::Completed), _) | (None, Some(TargetState::Running)) => Some("completed"),
            (Some(SourceState::RolledBack), _) => {
                let cause = self.source.as_ref().and_then(|s| s.record.ending.as_ref()).map(|e| e.cause.as_str()).unwrap_or("");
                Some(if cause.contains("stopped by request") { "stopped" } else { "aborted" })
            }
            (None, Some(TargetState::RolledBack)) => Some("aborted"),
            _ => None,
        }
    }

    /// A source in hand-over with no driver: in doubt until recovered.
    fn in_doubt(&self) -> bool {
        self.source_state() == Some(SourceState::HandingOver) && self.source.as_ref().is_some_and(|s| s.live.is_none())
    }
}

/// Asks the migration's two hosts for their records of it.
pub(super) async fn sides(state: &AppState, row: &MigrationRow) -> Sides {
    let mut s = Sides::default();
    for host in [&row.source, &row.target] {
        let Ok(Some(h)) = state.store.host(host).await else {
            s.down.push(format!("{host}: not registered with the console"));
            continue;
        };
        match state.hosts.call(&h, Request::Migration(row.id.clone()), Some(ASK_TIMEOUT)).await {
            Ok(Response::Migration(m)) => match m.record.side {
                Side::Source(_) => s.source = Some(*m),
                Side::Target(_) => s.target = Some(*m),
            },
            Ok(other) => s.down.push(format!("{host}: answered {other:?}")),
            // This host never heard of it (the target, when the source
            // stopped before asking it).
            Err(e) if e.message.contains("no migration") => {}
            Err(e) => s.down.push(e.message),
        }
    }
    s
}

/// Follows a migration by its hosts' records until it ends.
pub(super) async fn track(state: Arc<AppState>, mut row: MigrationRow) {
    row.state = "running".into();
    state.live.lock().unwrap_or_else(|e| e.into_inner()).insert(row.id.clone(), row.clone());
    let mut stored = 0;
    let mut last_note = String::new();
    loop {
        let s = sides(&state, &row).await;
        if let Some(outcome) = s.outcome() {
            let report = s.source.as_ref().and_then(|i| i.report.as_ref()).and_then(|r| serde_json::to_value(r).ok());
            end(&state, &mut row, outcome, report, None).await;
            return;
        }
        let note = if s.in_doubt() {
            "in doubt: the source recorded go, the target has not confirmed its copy runs (recover it)".to_string()
        } else if !s.down.is_empty() {
            format!("a host does not answer: {}", s.down.join("; "))
        } else if s.source.is_none() && s.target.is_none() {
            "no host records it".to_string()
        } else {
            String::new()
        };
        let st = if s.in_doubt() { "in_doubt" } else { "running" };
        if st != row.state || note != last_note {
            row.state = st.into();
            // What the source answered when its stream ended stays the
            // error until a newer trouble replaces it.
            if !note.is_empty() {
                row.error = Some(note.clone());
            }
            last_note = note;
            state.live.lock().unwrap_or_else(|e| e.into_inner()).insert(row.id.clone(), row.clone());
            let _ = state.store.put_migration(&row).await;
        }
        if let Some(p) = s.source.as_ref().and_then(|i| i.live.clone()) {
            let mut p = p;
            p.id = row.id.clone();
            take_progress(&state, &mut row, &p, &mut stored).await;
        }
        tokio::time::sleep(TRACK_INTERVAL).await;
    }
}

/// Waits until migration `id` ends.
pub(super) async fn wait(state: &AppState, id: &str) -> Result<MigrationRow, ApiError> {
    let mut events = state.events.subscribe();
    loop {
        let live = state.live.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id);
        if !live {
            let row = state.store.migration(id).await?.ok_or_else(|| ApiError::not_found(format!("no migration {id:?}")))?;
            if row.ended() {
                return Ok(row);
            }
        }
        match tokio::time::timeout(TRACK_INTERVAL * 4, events.recv()).await {
            Ok(Ok(Event::MigrationFinished { id: ended, .. })) if ended == id => {}
            // Another event, a lag or a quiet while: look again.
            _ => continue,
        }
    }
}

/// Stops migration `id` through its source: before go the partition
/// keeps running there; after it, too late (the source says so).
pub(super) async fn stop(state: &Arc<AppState>, id: &str, who: &str) -> Result<MigrationRow, ApiError> {
    let row = state.migration(id).await?;
    let src = state.store.host(&row.source).await?.ok_or_else(|| ApiError::not_found(format!("no host {:?}", row.source)))?;
    match state.hosts.call(&src, Request::MigrationStop(id.to_string()), Some(ASK_TIMEOUT)).await? {
        Response::Migration(_) => {}
        other => return Err(ApiError::bad_gateway(format!("{}: stop answered {other:?}", src.name))),
    }
    state.audit(who, "migration.stop", &format!("{id} {}", row.partition)).await?;
    if !state.live.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id) && !row.ended() {
        tokio::spawn(track(state.clone(), row.clone()));
    }
    state.migration(id).await
}

/// Brings each side the other's recorded state until both are final, as
/// `lpm migration recover` does, then returns the migration as it ended.
pub(super) async fn recover(state: &Arc<AppState>, id: &str, who: &str) -> Result<MigrationRow, ApiError> {
    let row = match state.migration(id).await {
        Ok(r) => r,
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => adopt(state, id).await?,
        Err(e) => return Err(e),
    };
    state.audit(who, "migration.recover", &format!("{id} {}", row.partition)).await?;
    let status = |i: &MigrationInfo| match i.record.side {
        Side::Source(state) => PeerState::Source { state },
        Side::Target(state) => PeerState::Target { state },
    };
    let started = tokio::time::Instant::now();
    loop {
        let s = sides(state, &row).await;
        let final_ = |i: &Option<MigrationInfo>| i.as_ref().is_none_or(|i| i.record.side.is_final());
        if final_(&s.source) && final_(&s.target) && (s.source.is_some() || s.target.is_some()) {
            break;
        }
        let (Some(src), Some(tgt)) = (&s.source, &s.target) else {
            return Err(ApiError::conflict(format!(
                "migration {id}: the {} does not answer or has no record ({}); recover it once it is back",
                if s.source.is_none() { "source" } else { "target" },
                s.down.join("; ")
            )));
        };
        let (ss, ts) = (status(src), status(tgt));
        let (sh, th) = (host_row(state, &src.host).await?, host_row(state, &tgt.host).await?);
        state.hosts.call(&th, Request::Resolve { id: id.to_string(), peer: ss }, Some(ASK_TIMEOUT)).await?;
        state.hosts.call(&sh, Request::Resolve { id: id.to_string(), peer: ts }, Some(ASK_TIMEOUT)).await?;
        if started.elapsed() > RECOVER_TIMEOUT {
            return Err(ApiError::conflict(format!("migration {id} did not settle in {RECOVER_TIMEOUT:?}")));
        }
        // The hosts act on the records they took (a destroy, a run).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = state.live.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id);
    if live {
        // Its follower sees the end and records it.
        wait(state, id).await
    } else {
        let mut row = state.migration(id).await?;
        let s = sides(state, &row).await;
        let report = s.source.as_ref().and_then(|i| i.report.as_ref()).and_then(|r| serde_json::to_value(r).ok());
        if let Some(outcome) = s.outcome() {
            end(state, &mut row, outcome, report, None).await;
        }
        Ok(row)
    }
}

async fn host_row(state: &AppState, name: &str) -> Result<HostRow, ApiError> {
    state.store.host(name).await?.ok_or_else(|| ApiError::not_found(format!("no host {name:?}")))
}

/// A migration the hosts record that the console has no row of: looked
/// for on every host, then recorded as found there.
async fn adopt(state: &Arc<AppState>, id: &str) -> Result<MigrationRow, ApiError> {
    for h in state.store.hosts().await? {
        if let Ok(Response::Migration(m)) = state.hosts.call(&h, Request::Migration(id.to_string()), Some(ASK_TIMEOUT)).await {
            let row = found_row(&m, &h.name);
            state.store.put_migration(&row).await?;
            return Ok(row);
        }
    }
    Err(ApiError::not_found(format!("no migration {id:?}: neither the console nor a host that answered records it")))
}

fn found_row(m: &MigrationInfo, host: &str) -> MigrationRow {
    let r = &m.record;
    MigrationRow {
        id: r.id.clone(),
        partition: r.partition.clone(),
        source: r.source.clone(),
        target: r.target.clone(),
        who: format!("found on {host}"),
        started_ms: r.started_unix_ms as i64,
        ended_ms: None,
        state: "running".into(),
        options: serde_json::Value::Null,
        progress: m.live.as_ref().and_then(|p| serde_json::to_value(p).ok()),
        report: None,
        error: None,
    }
}

/// On the console's start: follows again every migration the store has
/// unended, and every unended one a host records that the store lacks
/// (started while the console was down, or by the CLI straight at a host).
pub(super) async fn resume(state: &Arc<AppState>) {
    let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
    match state.store.unfinished_migrations().await {
        Ok(rows) => {
            for row in rows {
                tracing::info!(id = %row.id, partition = %row.partition, "following again a migration under way when the console stopped");
                known.insert(row.id.clone());
                tokio::spawn(track(state.clone(), row));
            }
        }
        Err(e) => tracing::warn!(error = format!("{e:#}"), "resume: the unended migrations unreadable"),
    }
    let hosts = state.store.hosts().await.unwrap_or_default();
    for h in hosts {
        let Ok(Response::Migrations(list)) = state.hosts.call(&h, Request::Migrations { all: false }, Some(ASK_TIMEOUT)).await else {
            continue;
        };
        for m in list {
            if known.contains(&m.record.id) || state.store.migration(&m.record.id).await.ok().flatten().is_some() {
                continue;
            }
            let row = found_row(&m, &h.name);
            known.insert(row.id.clone());
            if state.store.put_migration(&row).await.is_ok() {
                tracing::info!(id = %row.id, host = %h.name, "following a migration found on a host");
                tokio::spawn(track(state.clone(), row));
            }
        }
    }
}
