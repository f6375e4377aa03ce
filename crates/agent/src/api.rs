//! The control API between the `lpm` CLI and `lpmd`, and the messages
//! between two `lpmd` movers.
//!
//! Every message is a JSON document in an lpm-wire `Control` frame (page
//! data travels in `Pages` frames, image files in `Blob` frames), after the
//! lpm-wire handshake has proven both ends hold the cluster key.

use std::io::{Read, Write};

use lpm_host::partition::PartitionSpec;
use lpm_migrate::handover::{Decision, Msg, PeerState};
use lpm_migrate::journal::Record;
use lpm_migrate::report::Report;
use lpm_wire::{FrameType, WireError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A request from the CLI to a host's lpmd.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Is the agent there?
    Ping,
    /// Create a partition and start it.
    Create(PartitionSpec),
    /// Every partition of the host.
    List,
    /// One partition.
    Show(String),
    /// Stop a partition's processes (it stays defined).
    Stop(String),
    /// Start a stopped partition again.
    Start(String),
    /// Stop and forget a partition.
    Delete(String),
    /// The tail of a partition's console log.
    Logs {
        /// The partition.
        name: String,
        /// At most this many bytes from the end.
        max_bytes: u64,
    },
    /// A piece of a partition's console log, for `lpm partition logs
    /// --tail N --follow`; the answer is `LogChunk` (older hosts do not
    /// know this request and say so).
    LogsFrom {
        /// The partition.
        name: String,
        /// Where the last piece ended; None for the first, which is the
        /// log's last `tail_lines` lines (all of it when None), within its
        /// last `max_bytes`.
        offset: Option<u64>,
        /// Lines from the end, for the first piece.
        tail_lines: Option<u64>,
        /// At most this many bytes in the piece.
        max_bytes: u64,
    },
    /// Move a partition to another host; the answer is a stream of
    /// `Progress` messages ended by `Report` or `Error`.
    Migrate(MigrateRequest),
    /// The migration reports kept on this host.
    Reports,
    /// The migrations this host records (unfinished ones only, unless
    /// `all`).
    Migrations {
        /// Finished ones too.
        all: bool,
    },
    /// One migration this host records, with its live figures.
    Migration(String),
    /// Stop a migration this host is the source of: before go the
    /// partition keeps running here; after it, too late.
    MigrationStop(String),
    /// A relay (`lpm migration recover`) brings the other host's recorded
    /// state of a migration; the answer is this host's record after taking
    /// it in.
    Resolve {
        /// The migration.
        id: String,
        /// The other host's recorded state.
        peer: PeerState,
    },
    /// This host's capacity and use (a console polls it); the answer is
    /// `Host` (older hosts do not know this request and say so).
    Host,
}

/// How a [`Request`] travels on the remote API (docs/api.md): its HTTP
/// method, its path with the query, and its JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// GET, POST or DELETE.
    pub method: &'static str,
    /// The path, percent-encoded, with the query.
    pub path: String,
    /// The JSON body, for the requests that carry one.
    pub body: Option<Vec<u8>>,
}

/// A path segment percent-encoded: names and ids are plain already, but a
/// name is never trusted to be.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

impl Request {
    /// Its route on the remote API.
    pub fn route(&self) -> Route {
        let (method, path, body) = match self {
            Request::Ping => ("GET", "/v1/ping".to_string(), None),
            Request::Create(spec) => ("POST", "/v1/partitions".into(), body(spec)),
            Request::List => ("GET", "/v1/partitions".into(), None),
            Request::Show(n) => ("GET", format!("/v1/partitions/{}", seg(n)), None),
            Request::Stop(n) => ("POST", format!("/v1/partitions/{}/stop", seg(n)), None),
            Request::Start(n) => ("POST", format!("/v1/partitions/{}/start", seg(n)), None),
            Request::Delete(n) => ("DELETE", format!("/v1/partitions/{}", seg(n)), None),
            Request::Logs { name, max_bytes } => ("GET", format!("/v1/partitions/{}/logs?max_bytes={max_bytes}", seg(name)), None),
            Request::LogsFrom { name, offset, tail_lines, max_bytes } => {
                let mut q = format!("max_bytes={max_bytes}");
                if let Some(o) = offset {
                    q.push_str(&format!("&offset={o}"));
                }
                if let Some(t) = tail_lines {
                    q.push_str(&format!("&tail_lines={t}"));
                }
                ("GET", format!("/v1/partitions/{}/log?{q}", seg(name)), None)
            }
            Request::Migrate(m) => ("POST", "/v1/migrations".into(), body(m)),
            Request::Reports => ("GET", "/v1/reports".into(), None),
            Request::Migrations { all } => ("GET", format!("/v1/migrations?all={all}"), None),
            Request::Migration(id) => ("GET", format!("/v1/migrations/{}", seg(id)), None),
            Request::MigrationStop(id) => ("POST", format!("/v1/migrations/{}/stop", seg(id)), None),
            Request::Resolve { id, peer } => ("POST", format!("/v1/migrations/{}/resolve", seg(id)), body(peer)),
            Request::Host => ("GET", "/v1/host".into(), None),
        };
        Route { method, path, body }
    }
}

/// A request's JSON body: plain data (strings, numbers, maps with string
/// keys), which always serializes.
fn body<T: Serialize>(v: &T) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(v).expect("a request body serializes"))
}

/// What `lpm migrate` asks of the source host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// The partition.
    pub name: String,
    /// The target host's name.
    pub target: String,
    /// The target's mover address (host:port).
    pub target_addr: String,
    /// Downtime budget in milliseconds.
    pub max_downtime_ms: u64,
    /// Give up pre-copy (or switch anyway with `force`) after this long.
    pub max_total_s: u64,
    /// Switch over at the time limit instead of aborting.
    pub force: bool,
    /// Parallel TCP streams for pages.
    pub streams: u32,
    /// zstd level for page frames, none when absent.
    pub compress: Option<i32>,
    /// Stop after validation.
    pub validate_only: bool,
}

/// A migration as one host records it, with its live figures while it
/// runs there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// The host answering.
    pub host: String,
    /// Its record.
    pub record: Record,
    /// Live progress, while this host drives it.
    pub live: Option<Progress>,
    /// The report, once it ended (the source's).
    pub report: Option<Report>,
}

/// A partition as the host sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Its specification.
    pub spec: PartitionSpec,
    /// The host running it.
    pub host: String,
    /// "running", "stopped", "migrating".
    pub state: String,
    /// Host pid of its init when running.
    pub pid: Option<i32>,
    /// Memory in use (bytes), from its cgroup.
    pub memory_current: Option<u64>,
    /// How its init last ended, while it is stopped; absent from older
    /// hosts.
    #[serde(default)]
    pub exit: Option<Exit>,
}

/// How a partition's init ended, as its lpmd recorded it (kept in the
/// partition's record, so a restarted lpmd still tells it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Its exit status, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it ("SIGKILL"), when one did.
    pub signal: Option<String>,
    /// The signal left a core dump.
    pub core_dumped: bool,
    /// `lpm partition stop` ended it (SIGTERM, then SIGKILL to the rest
    /// after a grace period).
    pub by_stop: bool,
    /// When lpmd saw it end, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Why neither status nor signal is known, when they are not (the
    /// init was no child of this lpmd, or it ended while no lpmd ran).
    pub unknown: Option<String>,
}

impl Exit {
    /// The end that `waitpid` reported; None while the process lives or
    /// only stopped.
    pub fn from_wait(status: &nix::sys::wait::WaitStatus, by_stop: bool) -> Option<Exit> {
        use nix::sys::wait::WaitStatus;
        let mut e = Exit { by_stop, at_unix_ms: now_unix_ms(), ..Exit::default() };
        match *status {
            WaitStatus::Exited(_, code) => e.code = Some(code),
            WaitStatus::Signaled(_, sig, core) => {
                e.signal = Some(sig.as_str().to_string());
                e.core_dumped = core;
            }
            _ => return None,
        }
        Some(e)
    }

    /// An end whose status is not known, and why.
    pub fn unknown(why: &str, by_stop: bool) -> Exit {
        Exit { by_stop, at_unix_ms: now_unix_ms(), unknown: Some(why.to_string()), ..Exit::default() }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.by_stop {
            f.write_str("stopped by lpm: ")?;
        }
        match (&self.code, &self.signal, &self.unknown) {
            (Some(code), _, _) => write!(f, "exited with status {code}"),
            (None, Some(sig), _) => write!(f, "killed by {sig}{}", if self.core_dumped { " (core dumped)" } else { "" }),
            (None, None, Some(why)) => write!(f, "ended, status unknown ({why})"),
            (None, None, None) => f.write_str("ended, status unknown"),
        }
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A host's capacity for partitions and what they use of it (`GET
/// /v1/host`): what a console shows and plans with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's name.
    pub host: String,
    /// Memory partitions may hold here, bytes: what they use now plus
    /// what they may still take.
    pub memory_bytes: u64,
    /// Memory partitions may still take, bytes (cgroup limits,
    /// MemAvailable).
    pub memory_available_bytes: u64,
    /// Memory the partitions use now, bytes (their cgroups).
    pub memory_partitions_bytes: u64,
    /// What bounds `memory_available_bytes` (a cgroup limit, MemAvailable).
    pub memory_bound: String,
    /// CPUs partitions may use here (cgroup limits, online CPUs).
    pub cpus: f64,
    /// CPU limits of the partitions here, summed.
    pub cpus_reserved: f64,
    /// What bounds `cpus`.
    pub cpus_bound: String,
    /// The machine's load average over a minute.
    pub load1: f64,
    /// Partitions here.
    pub partitions: u32,
    /// Of which running.
    pub running: u32,
    /// Migrations under way here (either side).
    pub migrations: u32,
}

/// One validation check (name, passed, detail or cause).
pub use lpm_host::checks::Check;

/// Live progress of a migration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    /// The migration's id.
    #[serde(default)]
    pub id: String,
    /// The phase: "validate", "prepare", "precopy", "switchover", "handover".
    pub phase: String,
    /// Pre-copy round (1-based), 0 before.
    pub round: u32,
    /// Dirty pages left after the last round.
    pub dirty_pages: u64,
    /// Bytes sent so far.
    pub sent_bytes: u64,
    /// Measured bandwidth, bytes/s.
    pub rate: f64,
    /// CPU taken away by auto-converge (0..1).
    pub throttle: f64,
    /// A line for humans.
    pub note: String,
}

/// Where a migration's source tells the CLI how it goes, whichever way
/// the CLI asked (the control socket or the remote API): best effort, a
/// gone CLI does not stop the migration (`lpm migration show` finds it).
pub type ProgressSink<'a> = dyn FnMut(Progress) + 'a;

/// An answer from lpmd.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// Done.
    Ok,
    /// Partitions.
    Partitions(Vec<PartitionInfo>),
    /// One partition.
    Partition(Box<PartitionInfo>),
    /// Log text.
    Logs(String),
    /// A piece of a console log.
    LogChunk {
        /// The text (whole UTF-8 characters; a character cut by the end
        /// of the piece starts the next one).
        text: String,
        /// The log's offset after `text`: the next piece's `offset`.
        end: u64,
        /// The partition's state ("running", "stopped", "migrating").
        state: String,
    },
    /// Validation results (a failed check makes the migration stop).
    Validation(Vec<Check>),
    /// Migration progress (more messages follow).
    Progress(Progress),
    /// A finished (or aborted) migration's report.
    Report(Box<Report>),
    /// Reports kept on the host.
    Reports(Vec<Report>),
    /// Migrations this host records.
    Migrations(Vec<MigrationInfo>),
    /// One migration this host records.
    Migration(Box<MigrationInfo>),
    /// This host's capacity and use.
    Host(Box<HostInfo>),
    /// The request failed.
    Error(String),
}

/// Messages between the source's and the target's mover. Each maps onto
/// one message of the protocol's machines ([`Mover::kind`],
/// lpm_migrate::handover::Msg); the payloads ride beside it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Mover {
    /// Source → target: can you take this partition?
    Validate {
        /// The migration.
        id: String,
        /// The partition.
        spec: PartitionSpec,
        /// Memory the partition uses now, bytes.
        memory_current: u64,
        /// The source CPU's description (image CpuInfo, protobuf bytes).
        cpu: Vec<u8>,
        /// Each volume's path, with device and inode numbers of older
        /// sources (0 from this one: they are one kernel's and are not
        /// compared).
        volumes: Vec<(String, u64, u64)>,
        /// Each volume's identity (lpm_host::volume): its filesystem's UUID
        /// and the marker the source wrote in it; absent from older
        /// sources, whose volumes the target then refuses.
        #[serde(default)]
        volume_ids: Vec<lpm_host::volume::VolumeId>,
        /// Huge pages the partition's hugetlbfs areas reserve: (page
        /// size in bytes, count) per size; absent from older sources.
        #[serde(default)]
        huge_pages: Vec<(u64, u64)>,
    },
    /// Target → source: the checks it ran.
    Validated(Vec<Check>),
    /// Source → target: create the partition's namespaces, cgroup and NIC
    /// (link down) and get ready to receive pages.
    Prepare {
        /// The migration.
        id: String,
        /// The partition.
        spec: PartitionSpec,
        /// The source's mover address, where the target asks when it lost
        /// touch.
        source_addr: String,
        /// The source host's name.
        source: String,
    },
    /// Target → source: ready for pages.
    Prepared,
    /// Source → target, first message of an extra page stream: its pages
    /// belong to incoming migration `id`.
    Attach {
        /// The migration.
        id: String,
    },
    /// Source → target: the round's pages on this stream are all sent;
    /// answer once they are stored.
    RoundEnd {
        /// The round.
        round: u32,
    },
    /// Target → source: every page of the round that came on this stream
    /// is stored.
    RoundDone {
        /// The round.
        round: u32,
    },
    /// Source → target: the partition is frozen; the image files went
    /// before as Blob frames.
    Restore {
        /// Number of Blob frames sent before this message.
        files: u32,
        /// The partition's init is in the partition's own network
        /// namespace (the one with its NIC), which the target brings; false
        /// when the init made a namespace of its own inside, which the
        /// image then holds like any other.
        #[serde(default)]
        external_netns: bool,
        /// Per process (pid in the image), the page ranges the last round
        /// sent while the partition was stopped: filled before it runs.
        #[serde(default)]
        hot: std::collections::HashMap<u32, Vec<(u64, u64)>>,
    },
    /// Target → source: restored, complete, frozen and recorded.
    Restored {
        /// Time the restore took, ms.
        restore_ms: f64,
        /// Of which its read-back check, ms.
        #[serde(default)]
        verify_ms: f64,
    },
    /// Source → target: the decision, recorded before it was sent.
    Decision {
        /// The migration.
        id: String,
        /// Go or abort.
        decision: Decision,
        /// Why, for an abort.
        why: String,
    },
    /// Target → source: its record says its copy runs.
    Running,
    /// Target → source: its record says its copy is gone.
    RolledBack {
        /// Why, for the source's log.
        why: String,
    },
    /// Either way: the sender's recorded state of migration `id`; `reply`
    /// asks for the receiver's own.
    Status {
        /// The migration.
        id: String,
        /// The sender's recorded state.
        state: PeerState,
        /// Answer with yours.
        reply: bool,
    },
    /// Source → target: the final report, kept on the target.
    Report(Box<Report>),
    /// Source → target: still at work on a step that sends nothing else
    /// for long (the dump in the stop), so the target does not count the
    /// source as lost; nothing to answer.
    Alive,
}

impl Mover {
    /// The protocol message this is; `None` for what the machines do not
    /// see (pages' companions: Attach, Report, Alive).
    pub fn kind(&self) -> Option<Msg> {
        Some(match self {
            Mover::Validate { .. } => Msg::Validate,
            Mover::Validated(checks) => Msg::Validated { ok: checks.iter().all(|c| c.ok) },
            Mover::Prepare { .. } => Msg::Prepare,
            Mover::Prepared => Msg::Prepared,
            Mover::RoundEnd { round } => Msg::RoundEnd(*round),
            Mover::RoundDone { round } => Msg::RoundDone(*round),
            Mover::Restore { .. } => Msg::Restore,
            Mover::Restored { .. } => Msg::Restored,
            Mover::Decision { decision, .. } => Msg::Decision(*decision),
            Mover::Running => Msg::Running,
            Mover::RolledBack { .. } => Msg::RolledBack,
            Mover::Status { state, reply, .. } => Msg::Status { state: *state, reply: *reply },
            Mover::Attach { .. } | Mover::Report(_) | Mover::Alive => return None,
        })
    }

    /// The migration the message names, if it names one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Mover::Validate { id, .. }
            | Mover::Prepare { id, .. }
            | Mover::Attach { id }
            | Mover::Decision { id, .. }
            | Mover::Status { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Errors of the control channel.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The transport failed.
    #[error("control channel")]
    Wire(#[from] WireError),
    /// A message did not decode.
    #[error("malformed {what} message")]
    Json {
        /// Which message.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Another frame came where a control message was expected.
    #[error("expected a control message, got a {0:?} frame")]
    Unexpected(FrameType),
}

/// Sends one message as a Control frame.
pub fn send<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ApiError> {
    let body = serde_json::to_vec(msg).map_err(|source| ApiError::Json { what: "outgoing", source })?;
    lpm_wire::write_frame(w, FrameType::Control, &body, None)?;
    w.flush().map_err(|source| ApiError::Wire(WireError::Io { op: "flush control message", source }))?;
    Ok(())
}

/// Receives one Control frame and decodes it.
pub fn recv<R: Read, T: DeserializeOwned>(r: &mut R, what: &'static str) -> Result<T, ApiError> {
    let f = lpm_wire::read_frame(r)?;
    if f.kind == FrameType::Error {
        return Err(ApiError::Wire(WireError::Peer(lpm_wire::peer_text(&f.payload))));
    }
    if f.kind != FrameType::Control {
        return Err(ApiError::Unexpected(f.kind));
    }
    decode(&f.payload, what)
}

/// Decodes a Control frame's payload.
pub fn decode<T: DeserializeOwned>(payload: &[u8], what: &'static str) -> Result<T, ApiError> {
    serde_json::from_slice(payload).map_err(|source| ApiError::Json { what, source })
}
