//! The control API between the `lpm` CLI and `lpmd`, and the messages
//! between two `lpmd` movers.
//!
//! Every message is a JSON document in an lpm-wire `Control` frame (page
//! data travels in `Pages` frames, image files in `Blob` frames), after the
//! lpm-wire handshake has proven both ends hold the cluster key.

use std::io::{Read, Write};

use lpm_host::partition::PartitionSpec;
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
    /// Move a partition to another host; the answer is a stream of
    /// `Progress` messages ended by `Report` or `Error`.
    Migrate(MigrateRequest),
    /// The migration reports kept on this host.
    Reports,
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
}

/// One validation check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// The detail or the cause of failure.
    pub detail: String,
}

/// Live progress of a migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
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

/// An answer from lpmd.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// Done.
    Ok,
    /// Partitions.
    Partitions(Vec<PartitionInfo>),
    /// One partition.
    Partition(PartitionInfo),
    /// Log text.
    Logs(String),
    /// Validation results (a failed check makes the migration stop).
    Validation(Vec<Check>),
    /// Migration progress (more messages follow).
    Progress(Progress),
    /// A finished (or aborted) migration's report.
    Report(Box<Report>),
    /// Reports kept on the host.
    Reports(Vec<Report>),
    /// The request failed.
    Error(String),
}

/// Messages between the source's and the target's mover.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Mover {
    /// Source → target: can you take this partition?
    Validate {
        /// The partition.
        spec: PartitionSpec,
        /// Memory the partition uses now, bytes.
        memory_current: u64,
        /// The source CPU's description (image CpuInfo, protobuf bytes).
        cpu: Vec<u8>,
        /// Identity (device, inode) of each volume on the source.
        volumes: Vec<(String, u64, u64)>,
    },
    /// Target → source: the checks it ran.
    Validated(Vec<Check>),
    /// Source → target: create the partition's namespaces, cgroup and NIC
    /// (link down) and get ready to receive pages.
    Prepare(PartitionSpec),
    /// Target → source: ready; `id` names this incoming migration for
    /// the extra page streams.
    Prepared {
        /// The migration's name on the target.
        id: String,
    },
    /// Source → target, first message of an extra page stream: its pages
    /// belong to incoming migration `id`.
    Attach {
        /// As in `Prepared`.
        id: String,
    },
    /// Source → target on an extra stream: the round's pages on it are all
    /// sent; answer once they are stored.
    RoundEnd {
        /// The round.
        round: u32,
    },
    /// Target → source on an extra stream: every page of the round that
    /// came on it is stored.
    RoundDone {
        /// The round.
        round: u32,
    },
    /// Source → target: the partition is frozen; the image files follow
    /// as Blob frames (name, NUL, contents), then `Restore`.
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
    /// Target → source: restored and stopped, waiting for `Go`.
    Restored {
        /// Time the restore took, ms.
        restore_ms: f64,
    },
    /// Source → target: the source gave the partition up; run it.
    Go,
    /// Target → source: running, network unlocked, MAC announced.
    Running,
    /// Either side: give up; the target removes its copy.
    Abort(String),
    /// Source → target: the final report, kept on the target.
    Report(Box<Report>),
    /// A failure on the sending side.
    Failed(String),
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
        return Err(ApiError::Wire(WireError::Peer(String::from_utf8_lossy(&f.payload).into_owned())));
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
