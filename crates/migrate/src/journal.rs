//! Each host's durable record of the migrations it takes part in: one JSON
//! file per migration in the agent's state directory
//! (`DIR/migrations/ID.json`), replaced atomically (written beside, synced,
//! renamed over, the directory synced) every time the migration's state
//! changes, before the agent acts on the new state. A restarted agent
//! resumes every migration whose record is not settled, and the records
//! answer `lpm migration list` and `show` across restarts.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lpm_host::partition::PartitionSpec;
use serde::{Deserialize, Serialize};

use crate::handover::{SourceState, TargetState};

/// Errors of the journal; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing a record failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record did not parse.
    #[error("migration record {path} is malformed")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A migration id that is not one (ids are made of `[a-z0-9-]`).
    #[error("{0:?} is not a migration id")]
    BadId(String),
}

/// Result alias for this module.
pub type Result<T, E = JournalError> = std::result::Result<T, E>;

/// Which side of the migration this host is, and where it stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", content = "at", rename_all = "kebab-case")]
pub enum Side {
    /// This host is the source.
    Source(SourceState),
    /// This host is the target.
    Target(TargetState),
}

impl Side {
    /// The state's name.
    pub fn name(self) -> &'static str {
        match self {
            Side::Source(s) => s.name(),
            Side::Target(t) => t.name(),
        }
    }

    /// Nothing more happens on this side once its actions are done.
    pub fn is_final(self) -> bool {
        match self {
            Side::Source(s) => s.is_final(),
            Side::Target(t) => t.is_final(),
        }
    }
}

/// A state the migration reached, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    /// The state's name (`PreCopy 3` with its round).
    pub state: String,
    /// When, in ms since the epoch.
    pub unix_ms: u64,
}

/// Why a migration did not complete: the step it was at, and the cause.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ending {
    /// The step (validate, prepare, precopy, switchover, handover, ...).
    pub step: String,
    /// What happened, for humans.
    pub cause: String,
}

/// Live figures of a migration, as of its last recorded round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Rounds sent.
    pub round: u32,
    /// Pages left dirty after the last round.
    pub dirty_pages: u64,
    /// Bytes sent so far.
    pub sent_bytes: u64,
    /// Downtime, once the partition ran again (on either side).
    pub downtime_ms: Option<f64>,
}

/// One migration as this host records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The migration's id (the same on both hosts).
    pub id: String,
    /// The partition moved.
    pub partition: String,
    /// The source host's name.
    pub source: String,
    /// The target host's name.
    pub target: String,
    /// The peer's mover address (host:port), where the agent asks when it
    /// lost touch.
    pub peer: String,
    /// This host's side and state.
    pub side: Side,
    /// The final state's actions are done: nothing is left to resume.
    #[serde(default)]
    pub settled: bool,
    /// When it began, ms since the epoch.
    pub started_unix_ms: u64,
    /// Every state reached, in order.
    #[serde(default)]
    pub history: Vec<Visit>,
    /// Why it did not complete, once it ended so.
    #[serde(default)]
    pub ending: Option<Ending>,
    /// Live figures.
    #[serde(default)]
    pub figures: Figures,
    /// The partition's spec.
    pub spec: PartitionSpec,
    /// What the agent needs to resume its side after a restart (its own
    /// business: pids, directories, the parked tree).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Ms since the epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Record {
    /// A new record, in `side`'s first state.
    pub fn new(id: &str, spec: &PartitionSpec, source: &str, target: &str, peer: &str, side: Side) -> Record {
        let now = unix_ms();
        Record {
            id: id.to_string(),
            partition: spec.name.clone(),
            source: source.to_string(),
            target: target.to_string(),
            peer: peer.to_string(),
            side,
            settled: false,
            started_unix_ms: now,
            history: vec![Visit { state: label(side), unix_ms: now }],
            ending: None,
            figures: Figures::default(),
            spec: spec.clone(),
            detail: serde_json::Value::Null,
        }
    }

    /// Moves the record to `side` (a new state is added to the history).
    pub fn enter(&mut self, side: Side) {
        if side != self.side || self.history.is_empty() {
            self.history.push(Visit { state: label(side), unix_ms: unix_ms() });
        }
        self.side = side;
    }
}

/// A state's name with its round, for the history.
fn label(side: Side) -> String {
    match side {
        Side::Source(SourceState::PreCopy { round }) => format!("PreCopy {round}"),
        s => s.name().to_string(),
    }
}

/// A new migration id: `m` and 8 random hex digits.
pub fn new_id() -> String {
    let mut b = [0u8; 4];
    // Any source of unpredictability will do: ids only need to differ.
    if File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut b)).is_err() {
        let n = unix_ms() as u32 ^ std::process::id().rotate_left(16);
        b = n.to_le_bytes();
    }
    format!("m{:08x}", u32::from_le_bytes(b))
}

/// Whether `id` could name a migration (and a file).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The records of one host.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Journal> {
        lpm_image::create_private_dir(dir).map_err(|source| JournalError::Io { op: "create", path: dir.to_path_buf(), source })?;
        Ok(Journal { dir: dir.to_path_buf() })
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(JournalError::BadId(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Writes `r` durably: when this returns, a crash leaves either the
    /// whole new record or the whole old one, never a mix.
    pub fn write(&self, r: &Record) -> Result<()> {
        let path = self.path(&r.id)?;
        let tmp = self.dir.join(format!(".{}.json.new", r.id));
        let io = |op, p: &Path| {
            let path = p.to_path_buf();
            move |source| JournalError::Io { op, path, source }
        };
        let body = serde_json::to_vec_pretty(r).expect("a record serializes");
        let mut f = lpm_image::private_file().write(true).create(true).truncate(true).open(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&body).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io("sync", &self.dir))?;
        Ok(())
    }

    /// The record of migration `id`, if this host has one.
    pub fn read(&self, id: &str) -> Result<Option<Record>> {
        let path = self.path(id)?;
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| JournalError::Malformed { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JournalError::Io { op: "read", path, source }),
        }
    }

    /// Every record, oldest first. A malformed one is an error naming it:
    /// its migration may need the agent's care.
    pub fn all(&self) -> Result<Vec<Record>> {
        let rd = fs::read_dir(&self.dir).map_err(|source| JournalError::Io { op: "list", path: self.dir.clone(), source })?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if id.starts_with('.') || !valid_id(id) {
                continue;
            }
            if let Some(r) = self.read(id)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| (a.started_unix_ms, &a.id).cmp(&(b.started_unix_ms, &b.id)));
        Ok(out)
    }

    /// Removes settled records beyond the newest `keep`.
    pub fn prune(&self, keep: usize) -> Result<usize> {
        let all = self.all()?;
        let settled: Vec<&Record> = all.iter().filter(|r| r.settled).collect();
        let mut removed = 0;
        for r in settled.iter().take(settled.len().saturating_sub(keep)) {
            let path = self.path(&r.id)?;
            fs::remove_file(&path).map_err(|source| JournalError::Io { op: "remove", path, source })?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PartitionSpec {
        PartitionSpec {
            name: "kv".into(),
            command: vec!["sleep".into(), "1".into()],
            memory: None,
            cpus: None,
            rt_runtime_us: None,
            ip: None,
            mac: None,
            volumes: vec![],
            isolation: Default::default(),
        }
    }

    fn journal() -> (Journal, PathBuf) {
        let dir = std::env::temp_dir().join(format!("lpm-journal-{}-{}", std::process::id(), new_id()));
        (Journal::open(&dir).unwrap(), dir)
    }

    #[test]
    fn records_round_trip_and_list_in_order() {
        let (j, dir) = journal();
        let mut a = Record::new("m1", &spec(), "h1", "h2", "10.0.0.12:7001", Side::Source(SourceState::Validating));
        a.started_unix_ms = 10;
        j.write(&a).unwrap();
        a.enter(Side::Source(SourceState::PreCopy { round: 1 }));
        a.enter(Side::Source(SourceState::PreCopy { round: 2 }));
        a.detail = serde_json::json!({"pid": 42});
        j.write(&a).unwrap();
        let mut b = Record::new("m0", &spec(), "h2", "h1", "10.0.0.11:7001", Side::Target(TargetState::Prepared));
        b.started_unix_ms = 20;
        b.settled = true;
        j.write(&b).unwrap();
        assert_eq!(j.read("m1").unwrap().unwrap(), a);
        let states: Vec<&str> = a.history.iter().map(|v| v.state.as_str()).collect();
        assert_eq!(states, ["Validating", "PreCopy 1", "PreCopy 2"]);
        assert_eq!(j.all().unwrap().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["m1", "m0"]);
        assert!(j.read("m9").unwrap().is_none());
        // No temporary file is left beside the records.
        let names: Vec<String> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(j.prune(0).unwrap(), 1);
        assert_eq!(j.all().unwrap().len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_ids_and_malformed_records_are_named() {
        let (j, dir) = journal();
        assert!(matches!(j.read("../x"), Err(JournalError::BadId(_))));
        fs::write(dir.join("m2.json"), b"{").unwrap();
        let e = j.all().unwrap_err();
        assert!(e.to_string().contains("m2.json"), "{e}");
        assert!(valid_id(&new_id()));
        fs::remove_dir_all(dir).unwrap();
    }
}
