//! cgroups of partitions, on both layouts a Linux host may have.
//!
//! - Hybrid: the `memory` and `cpu` controllers are cgroup v1 hierarchies
//!   (e.g. /sys/fs/cgroup/memory and /sys/fs/cgroup/cpu,cpuacct) and a
//!   controller-less cgroup2 is mounted beside them (/sys/fs/cgroup/unified).
//!   Limits go to the v1 directories; freezing, killing and
//!   `CLONE_INTO_CGROUP` use the cgroup2 directory.
//! - Unified: one cgroup2 hierarchy (/sys/fs/cgroup). lpm enables `+memory
//!   +cpu` in `cgroup.subtree_control` of every directory above a partition's
//!   cgroup. Processes live only in leaves, which keep their subtree_control
//!   empty (cgroup2's no-internal-processes rule).
//!
//! A [`Cgroup`] is named by a path relative to each hierarchy's root, like
//! `lpm-ab12/h1/web`, and exists in every hierarchy lpm uses.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// The cfs period lpm writes with every CPU limit, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const MIN_QUOTA_US: u64 = 1_000;
/// How long [`Cgroup::remove`] waits for killed tasks to leave.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of cgroup handling; each names the cgroup and the file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory operation failed.
    #[error("{op} {path} (cgroup {cgroup})")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cgroup (relative path).
        cgroup: String,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No usable cgroup layout was found in /proc/self/mountinfo.
    #[error("cgroup layout: {0}")]
    Layout(String),
    /// The cgroup does not exist (in the named directory).
    #[error("cgroup {cgroup} does not exist ({path})")]
    NotFound {
        /// The cgroup.
        cgroup: String,
        /// The missing directory.
        path: PathBuf,
    },
    /// [`Cgroup::create`] found the cgroup already there.
    #[error("cgroup {cgroup} already exists ({path})")]
    Exists {
        /// The cgroup.
        cgroup: String,
        /// The existing directory.
        path: PathBuf,
    },
    /// The relative path is not a plain relative path.
    #[error("bad cgroup path {0:?}: want a relative path of plain names")]
    BadPath(String),
    /// A limit cannot be expressed.
    #[error("cgroup {cgroup}: bad limit {what}")]
    BadLimit {
        /// The cgroup.
        cgroup: String,
        /// Which limit and why.
        what: String,
    },
    /// A cgroup file held something unexpected.
    #[error("cgroup {cgroup}: cannot parse {path}: {content:?}")]
    Parse {
        /// The cgroup.
        cgroup: String,
        /// The file.
        path: PathBuf,
        /// What it held.
        content: String,
    },
    /// An operation that needs an empty cgroup found processes inside.
    #[error("cgroup {cgroup}: cannot {op}: processes are still inside")]
    Populated {
        /// The cgroup.
        cgroup: String,
        /// The operation.
        op: &'static str,
    },
    /// The cgroup did not reach a state in time.
    #[error("cgroup {cgroup}: timed out after {timeout:?} waiting to {what}")]
    Timeout {
        /// The cgroup.
        cgroup: String,
        /// The awaited state.
        what: &'static str,
        /// How long was waited.
        timeout: Duration,
    },
}

/// Result alias for this module.
pub type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// Where the hierarchies lpm uses are mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// v1 `memory` and `cpu` controllers plus a controller-less cgroup2.
    Hybrid {
        /// The cgroup2 mount (freezer, kill, CLONE_INTO_CGROUP).
        v2: PathBuf,
        /// The v1 hierarchy holding the `memory` controller.
        memory: PathBuf,
        /// The v1 hierarchy holding the `cpu` controller.
        cpu: PathBuf,
    },
    /// One cgroup2 hierarchy with the controllers.
    Unified {
        /// The cgroup2 mount.
        root: PathBuf,
    },
}

impl Layout {
    /// Reads the layout of this process's mount namespace.
    pub fn detect() -> Result<Layout> {
        let text = fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Io {
            op: "read",
            cgroup: String::new(),
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
        Layout::from_mountinfo(&text)
    }

    /// The layout detected once for this process (mounts of cgroup
    /// hierarchies do not change under a running host agent).
    pub fn current() -> Result<&'static Layout> {
        static LAYOUT: OnceLock<Layout> = OnceLock::new();
        if let Some(l) = LAYOUT.get() {
            return Ok(l);
        }
        let l = Layout::detect()?;
        Ok(LAYOUT.get_or_init(|| l))
    }

    /// Derives the layout from the text of a mountinfo file. A v1 `memory`
    /// hierarchy means hybrid (which then needs v1 `cpu` and a cgroup2
    /// mount); otherwise a cgroup2 mount means unified.
    pub fn from_mountinfo(text: &str) -> Result<Layout> {
        let mut v2 = None;
        let mut memory = None;
        let mut cpu = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let Some(mount_point) = left.split(' ').nth(4) else { continue };
            let mut r = right.split(' ');
            let (Some(fstype), Some(_source), Some(opts)) = (r.next(), r.next(), r.next()) else { continue };
            let path = PathBuf::from(unescape_mountinfo(mount_point));
            match fstype {
                "cgroup2" => {
                    v2.get_or_insert(path);
                }
                "cgroup" => {
                    for opt in opts.split(',') {
                        match opt {
                            "memory" => {
                                memory.get_or_insert(path.clone());
                            }
                            "cpu" => {
                                cpu.get_or_insert(path.clone());
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        match (memory, cpu, v2) {
            (Some(memory), Some(cpu), Some(v2)) => Ok(Layout::Hybrid { v2, memory, cpu }),
            (Some(_), None, _) => Err(CgroupError::Layout("v1 memory controller mounted but no v1 cpu controller".into())),
            (Some(_), Some(_), None) => {
                Err(CgroupError::Layout("v1 controllers mounted but no cgroup2 (needed for freeze and kill)".into()))
            }
            (None, _, Some(root)) => Ok(Layout::Unified { root }),
            (None, _, None) => Err(CgroupError::Layout("no cgroup2 mount and no v1 memory controller".into())),
        }
    }

    /// The cgroup2 mount point.
    pub fn v2_root(&self) -> &Path {
        match self {
            Layout::Hybrid { v2, .. } => v2,
            Layout::Unified { root } => root,
        }
    }

    /// Every hierarchy root lpm uses, cgroup2 first, without duplicates.
    fn roots(&self) -> Vec<&Path> {
        match self {
            Layout::Hybrid { v2, memory, cpu } => {
                let mut r = vec![v2.as_path(), memory.as_path()];
                if cpu != memory {
                    r.push(cpu.as_path());
                }
                r
            }
            Layout::Unified { root } => vec![root.as_path()],
        }
    }
}

pub(crate) use lpm_sys::probe::unescape_mountinfo;

/// Resource limits of a partition.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes; `None` is unlimited.
    pub memory: Option<u64>,
    /// CPU limit in CPUs (1.5 = one and a half cores); `None` is unlimited.
    pub cpus: Option<f64>,
    /// Real-time budget: microseconds of every second its SCHED_FIFO and
    /// SCHED_RR threads may run; `None` is none (no real-time thread can
    /// run where the kernel budgets real-time time per group).
    pub rt_runtime_us: Option<u64>,
}

/// A cgroup's real-time budget per period (the v1 `cpu` controller, and
/// cgroup v2 on kernels that budget real-time time per group).
const RT_RUNTIME: &str = "cpu.rt_runtime_us";

/// A cgroup present in every hierarchy lpm uses.
#[derive(Clone, Debug)]
pub struct Cgroup {
    rel: String,
    layout: Layout,
}

impl Cgroup {
    /// Creates the cgroup `rel` (and missing parents) in every hierarchy of
    /// the current layout and applies `limits`. Fails if it already exists.
    pub fn create(rel: &str, limits: Limits) -> Result<Cgroup> {
        Cgroup::create_in(Layout::current()?.clone(), rel, limits)
    }

    /// [`Cgroup::create`] in a given layout.
    pub fn create_in(layout: Layout, rel: &str, limits: Limits) -> Result<Cgroup> {
        let cg = Cgroup::new(layout, rel)?;
        let v2 = cg.v2_dir();
        if v2.exists() {
            return Err(CgroupError::Exists { cgroup: cg.rel.clone(), path: v2 });
        }
        if let Layout::Unified { root } = &cg.layout {
            cg.enable_controllers(root)?;
        }
        for dir in cg.dirs() {
            fs::create_dir_all(&dir).map_err(|e| cg.io("mkdir", &dir, e))?;
        }
        // A new cgroup is unlimited: write only the limits asked for (so a
        // layout without a controller works for partitions without limits).
        let r = match (limits.memory, limits.cpus) {
            (None, None) => Ok(()),
            (m, None) => cg.set_memory(m),
            (None, c) => cg.set_cpus(c),
            (m, c) => cg.set_memory(m).and_then(|_| cg.set_cpus(c)),
        };
        let r = r.and_then(|_| limits.rt_runtime_us.filter(|&us| us > 0).map_or(Ok(()), |us| cg.grant_rt(us)));
        if let Err(e) = r {
            let _ = cg.remove();
            return Err(e);
        }
        tracing::debug!(cgroup = %cg.rel, ?limits, "created cgroup");
        Ok(cg)
    }

    /// Opens an existing cgroup `rel` in the current layout.
    pub fn open(rel: &str) -> Result<Cgroup> {
        Cgroup::open_in(Layout::current()?.clone(), rel)
    }

    /// [`Cgroup::open`] in a given layout.
    pub fn open_in(layout: Layout, rel: &str) -> Result<Cgroup> {
        let cg = Cgroup::new(layout, rel)?;
        for dir in cg.dirs() {
            if !dir.is_dir() {
                return Err(CgroupError::NotFound { cgroup: cg.rel.clone(), path: dir });
            }
        }
        Ok(cg)
    }

    fn new(layout: Layout, rel: &str) -> Result<Cgroup> {
        let rel = rel.trim_matches('/');
        let plain = !rel.is_empty()
            && rel.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0') && !c.starts_with("cgroup."));
        if !plain {
            return Err(CgroupError::BadPath(rel.to_string()));
        }
        Ok(Cgroup { rel: rel.to_string(), layout })
    }

    /// The path relative to each hierarchy root.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The layout this cgroup lives in.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every directory of this cgroup, the cgroup2 one first. A restored
    /// task is placed by writing its pid into each one's `cgroup.procs`.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.layout.roots().into_iter().map(|r| r.join(&self.rel)).collect()
    }

    /// The cgroup2 directory (freeze, kill, `CLONE_INTO_CGROUP`).
    pub fn v2_dir(&self) -> PathBuf {
        self.layout.v2_root().join(&self.rel)
    }

    fn memory_dir(&self) -> PathBuf {
        match &self.layout {
            Layout::Hybrid { memory, .. } => memory.join(&self.rel),
            Layout::Unified { root } => root.join(&self.rel),
        }
    }

    fn cpu_dir(&self) -> PathBuf {
        self.cpu_root().join(&self.rel)
    }

    /// The root of the hierarchy holding the `cpu` controller.
    fn cpu_root(&self) -> PathBuf {
        match &self.layout {
            Layout::Hybrid { cpu, .. } => cpu.clone(),
            Layout::Unified { root } => root.clone(),
        }
    }

    fn io(&self, op: &'static str, path: &Path, source: io::Error) -> CgroupError {
        CgroupError::Io { op, cgroup: self.rel.clone(), path: path.to_path_buf(), source }
    }

    fn read(&self, path: &Path) -> Result<String> {
        fs::read_to_string(path).map_err(|e| self.io("read", path, e))
    }

    fn write(&self, path: &Path, value: &str) -> Result<()> {
        fs::write(path, value).map_err(|e| self.io("write", path, e))
    }

    fn parse_err(&self, path: &Path, content: &str) -> CgroupError {
        CgroupError::Parse { cgroup: self.rel.clone(), path: path.to_path_buf(), content: content.to_string() }
    }

    /// Unified layout: turns on `memory` and `cpu` for the children of every
    /// directory from the root down to this cgroup's parent. Those
    /// directories must hold no processes (the root is exempt).
    fn enable_controllers(&self, root: &Path) -> Result<()> {
        let avail_path = root.join("cgroup.controllers");
        let avail = self.read(&avail_path)?;
        let wanted: Vec<&str> = ["memory", "cpu"].into_iter().filter(|c| avail.split_whitespace().any(|a| a == *c)).collect();
        let mut dir = root.to_path_buf();
        let comps: Vec<&str> = self.rel.split('/').collect();
        for (i, comp) in comps.iter().enumerate() {
            let file = dir.join("cgroup.subtree_control");
            let on = self.read(&file)?;
            let missing: Vec<String> =
                wanted.iter().filter(|c| !on.split_whitespace().any(|o| o == **c)).map(|c| format!("+{c}")).collect();
            if !missing.is_empty() {
                self.write(&file, &missing.join(" "))?;
            }
            dir.push(comp);
            if i + 1 < comps.len() {
                match fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(self.io("mkdir", &dir, e)),
                }
            }
        }
        Ok(())
    }

    fn set_memory(&self, bytes: Option<u64>) -> Result<()> {
        let dir = self.memory_dir();
        match (&self.layout, bytes) {
            (_, Some(0)) => Err(CgroupError::BadLimit { cgroup: self.rel.clone(), what: "memory 0 bytes".into() }),
            (Layout::Hybrid { .. }, b) => self.write(&dir.join("memory.limit_in_bytes"), &b.map_or("-1".to_string(), |b| b.to_string())),
            (Layout::Unified { .. }, b) => self.write(&dir.join("memory.max"), &b.map_or("max".to_string(), |b| b.to_string())),
        }
    }

    /// Sets (or with `None` lifts) the CPU limit, in CPUs. Used for the
    /// partition's own limit and for throttling it while pre-copy
    /// converges (auto-converge).
    pub fn set_cpus(&self, cpus: Option<f64>) -> Result<()> {
        let quota = match cpus {
            None => None,
            Some(c) if c.is_finite() && c > 0.0 => {
                let q = (c * CPU_PERIOD_US as f64).round() as u64;
                if q < MIN_QUOTA_US {
                    return Err(CgroupError::BadLimit {
                        cgroup: self.rel.clone(),
                        what: format!("cpus {c}: below {} CPUs", MIN_QUOTA_US as f64 / CPU_PERIOD_US as f64),
                    });
                }
                Some(q)
            }
            Some(c) => return Err(CgroupError::BadLimit { cgroup: self.rel.clone(), what: format!("cpus {c}: want a positive number") }),
        };
        let dir = self.cpu_dir();
        match &self.layout {
            Layout::Hybrid { .. } => {
                // The period first: the kernel checks the quota against it.
                self.write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                self.write(&dir.join("cpu.cfs_quota_us"), &quota.map_or("-1".to_string(), |q| q.to_string()))
            }
            Layout::Unified { .. } => {
                self.write(&dir.join("cpu.max"), &format!("{} {CPU_PERIOD_US}", quota.map_or("max".to_string(), |q| q.to_string())))
            }
        }
    }

    /// The current CPU limit in CPUs; `None` when unlimited.
    pub fn cpus(&self) -> Result<Option<f64>> {
        let dir = self.cpu_dir();
        let (quota, period) = match &self.layout {
            Layout::Hybrid { .. } => {
                let qp = dir.join("cpu.cfs_quota_us");
                let pp = dir.join("cpu.cfs_period_us");
                let q = self.read(&qp)?;
                let p = self.read(&pp)?;
                let q: i64 = q.trim().parse().map_err(|_| self.parse_err(&qp, &q))?;
                let p: u64 = p.trim().parse().map_err(|_| self.parse_err(&pp, &p))?;
                (if q < 0 { None } else { Some(q as u64) }, p)
            }
            Layout::Unified { .. } => {
                let path = dir.join("cpu.max");
                let s = self.read(&path)?;
                let mut it = s.split_whitespace();
                let (Some(q), Some(p)) = (it.next(), it.next()) else { return Err(self.parse_err(&path, &s)) };
                let p: u64 = p.parse().map_err(|_| self.parse_err(&path, &s))?;
                let q = if q == "max" { None } else { Some(q.parse::<u64>().map_err(|_| self.parse_err(&path, &s))?) };
                (q, p)
            }
        };
        Ok(quota.map(|q| q as f64 / period.max(1) as f64))
    }

    /// The memory limit in bytes; `None` when unlimited.
    pub fn memory_limit(&self) -> Result<Option<u64>> {
        let path = match &self.layout {
            Layout::Hybrid { .. } => self.memory_dir().join("memory.limit_in_bytes"),
            Layout::Unified { .. } => self.memory_dir().join("memory.max"),
        };
        let s = self.read(&path)?;
        let t = s.trim();
        if t == "max" {
            return Ok(None);
        }
        let v: u64 = t.parse().map_err(|_| self.parse_err(&path, &s))?;
        // v1 reports "unlimited" as the largest page-aligned i64.
        Ok(if v >= (i64::MAX as u64) & !0xfff { None } else { Some(v) })
    }

    /// Memory charged to the cgroup now, in bytes.
    pub fn memory_current(&self) -> Result<u64> {
        let path = match &self.layout {
            Layout::Hybrid { .. } => self.memory_dir().join("memory.usage_in_bytes"),
            Layout::Unified { .. } => self.memory_dir().join("memory.current"),
        };
        let s = self.read(&path)?;
        s.trim().parse().map_err(|_| self.parse_err(&path, &s))
    }

    /// Moves process `pid` (all its threads) into the cgroup in every
    /// hierarchy.
    pub fn add(&self, pid: i32) -> Result<()> {
        for dir in self.dirs() {
            self.write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes directly in this cgroup (cgroup2 view).
    pub fn procs(&self) -> Result<Vec<i32>> {
        self.procs_in(&self.v2_dir())
    }

    fn procs_in(&self, dir: &Path) -> Result<Vec<i32>> {
        let path = dir.join("cgroup.procs");
        let s = self.read(&path)?;
        s.lines().map(|l| l.trim().parse().map_err(|_| self.parse_err(&path, &s))).collect()
    }

    /// The processes of this cgroup and of every cgroup below it.
    fn procs_recursive(&self) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        for dir in subdirs_deepest_first(&self.v2_dir()).map_err(|(p, e)| self.io("list", &p, e))? {
            match self.procs_in(&dir) {
                Ok(p) => out.extend(p),
                Err(CgroupError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A key of cgroup2's `cgroup.events`.
    fn event(&self, key: &str) -> Result<bool> {
        let path = self.v2_dir().join("cgroup.events");
        let s = self.read(&path)?;
        for line in s.lines() {
            if let Some((k, v)) = line.split_once(' ') {
                if k == key {
                    return Ok(v.trim() == "1");
                }
            }
        }
        Err(self.parse_err(&path, &s))
    }

    /// True while any process is in the cgroup or below it.
    pub fn populated(&self) -> Result<bool> {
        self.event("populated")
    }

    fn wait_event(&self, key: &str, want: bool, what: &'static str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(200);
        loop {
            if self.event(key)? == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Timeout { cgroup: self.rel.clone(), what, timeout });
            }
            thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(2));
        }
    }

    /// Freezes every task of the cgroup (cgroup2 freezer) and waits until
    /// the kernel reports the cgroup frozen.
    pub fn freeze(&self, timeout: Duration) -> Result<()> {
        self.write(&self.v2_dir().join("cgroup.freeze"), "1")?;
        self.wait_event("frozen", true, "freeze", timeout)
    }

    /// Asks the cgroup2 freezer to freeze every task of the cgroup and
    /// returns at once: from the write on, a task of the cgroup runs no
    /// more of its own code (each enters the freezer's trap on its way
    /// back to user space). [`Cgroup::freeze`] or the engine's stop waits
    /// for the kernel to report it frozen.
    pub fn begin_freeze(&self) -> Result<()> {
        self.write(&self.v2_dir().join("cgroup.freeze"), "1")
    }

    /// Thaws the cgroup and waits until the kernel reports it thawed.
    pub fn thaw(&self, timeout: Duration) -> Result<()> {
        self.write(&self.v2_dir().join("cgroup.freeze"), "0")?;
        self.wait_event("frozen", false, "thaw", timeout)
    }

    /// True when the cgroup is frozen.
    pub fn frozen(&self) -> Result<bool> {
        self.event("frozen")
    }

    /// Sends SIGKILL to every process in the cgroup and below: atomically
    /// through `cgroup.kill` where the kernel has it, else one by one.
    ///
    /// A cgroup killed through `cgroup.kill` must not receive new
    /// processes by `CLONE_INTO_CGROUP` from outside: on this kernel
    /// (6.18) clone3 compares the kill count of the target cgroup with the
    /// one of the caller's own cgroup, and kills the child at birth when
    /// they differ, as they do for ever after a kill. [`Cgroup::recreate`]
    /// gives a cgroup that counts from zero again.
    pub fn kill(&self) -> Result<()> {
        let file = self.v2_dir().join("cgroup.kill");
        if file.exists() {
            return self.write(&file, "1");
        }
        for pid in self.procs_recursive()? {
            // A process may have exited meanwhile; anything else is ours to
            // report through the emptiness wait of the caller.
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        Ok(())
    }

    /// The limits the cgroup has now; a controller this layout lacks (no
    /// limit file) counts as no limit.
    pub fn limits(&self) -> Result<Limits> {
        Ok(Limits { memory: absent(self.memory_limit())?, cpus: absent(self.cpus())?, rt_runtime_us: self.rt_runtime()? })
    }

    /// The real-time budget (`None`: none, or no such budget here).
    pub fn rt_runtime(&self) -> Result<Option<u64>> {
        self.rt_runtime_at(&self.cpu_dir().join(RT_RUNTIME))
    }

    fn rt_runtime_at(&self, path: &Path) -> Result<Option<u64>> {
        match fs::read_to_string(path) {
            Ok(t) => Ok(t.trim().parse::<u64>().ok().filter(|&us| us > 0)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read", path, e)),
        }
    }

    /// The cpu hierarchy's directories above this cgroup, from the top
    /// (the root excluded: its budget is the machine's,
    /// /proc/sys/kernel/sched_rt_runtime_us).
    fn cpu_ancestors(&self) -> Vec<PathBuf> {
        let root = self.cpu_root();
        let comps: Vec<&str> = self.rel.split('/').collect();
        (1..comps.len()).map(|n| root.join(comps[..n].join("/"))).collect()
    }

    /// Holds the cpu hierarchy's real-time budgets for one change:
    /// partitions are made and removed at once by several agents, and a
    /// parent's budget is read, then written.
    fn lock_rt(&self) -> Result<fs::File> {
        let root = self.cpu_root();
        let f = fs::File::open(&root).map_err(|e| self.io("open", &root, e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| self.io("lock", &root, e.into()))?;
        Ok(f)
    }

    /// Adds `us` to the budget of `dir` (negative: takes it back); an
    /// unlimited budget (-1) stays so.
    fn add_rt(&self, dir: &Path, us: i64) -> Result<()> {
        let path = dir.join(RT_RUNTIME);
        let text = self.read(&path)?;
        let now: i64 = text.trim().parse().map_err(|_| self.parse_err(&path, &text))?;
        if now < 0 {
            return Ok(());
        }
        self.write(&path, &(now + us).max(0).to_string())
    }

    /// Gives the new cgroup a real-time budget of `us` per period. The
    /// kernel wants every group's budget to hold its children's, so each
    /// ancestor's grows by `us` first, from the top (and
    /// [`Cgroup::remove`] gives it back). Where the kernel does not budget
    /// real-time time per group (no such file), real-time threads run in
    /// any group: nothing to do.
    fn grant_rt(&self, us: u64) -> Result<()> {
        let leaf = self.cpu_dir().join(RT_RUNTIME);
        if !leaf.exists() {
            return Ok(());
        }
        let _lock = self.lock_rt()?;
        let mut grown = Vec::new();
        let mut r = Ok(());
        for dir in self.cpu_ancestors() {
            r = self.add_rt(&dir, us as i64);
            if r.is_err() {
                break;
            }
            grown.push(dir);
        }
        let r = r.and_then(|_| self.write(&leaf, &us.to_string())).map_err(|e| match e {
            CgroupError::Io { path, source, .. } if source.raw_os_error() == Some(libc::EINVAL) => CgroupError::BadLimit {
                cgroup: self.rel.clone(),
                what: format!("a real-time budget of {us} us: more than is left for it ({} refused it)", path.display()),
            },
            e => e,
        });
        if r.is_err() {
            for dir in grown.iter().rev() {
                let _ = self.add_rt(dir, -(us as i64));
            }
        }
        r
    }

    /// Replaces the cgroup, which must hold no process, by a new one of
    /// the same name with the same limits. Needed after [`Cgroup::kill`]
    /// before a process is cloned into it with `CLONE_INTO_CGROUP` (see
    /// there): the new cgroup has never been killed.
    pub fn recreate(&self) -> Result<()> {
        if self.populated()? {
            return Err(CgroupError::Populated { cgroup: self.rel.clone(), op: "recreate" });
        }
        let limits = self.limits()?;
        self.remove()?;
        Cgroup::create_in(self.layout.clone(), &self.rel, limits)?;
        tracing::debug!(cgroup = %self.rel, ?limits, "recreated cgroup");
        Ok(())
    }

    /// Waits until no process is left in the cgroup or below it.
    pub fn wait_empty(&self, timeout: Duration) -> Result<()> {
        self.wait_event("populated", false, "become empty", timeout)
    }

    /// Kills everything inside, waits until empty and removes every
    /// directory of the cgroup and of cgroups below it, deepest first.
    /// Removing a cgroup that is already gone succeeds.
    pub fn remove(&self) -> Result<()> {
        if self.v2_dir().is_dir() {
            // A frozen cgroup's killed tasks still exit: SIGKILL thaws them.
            self.kill()?;
            self.wait_empty(REMOVE_TIMEOUT)?;
        }
        // Its real-time budget goes back to its ancestors once it is gone.
        // A removed group leaves its parent only a moment after rmdir: its
        // budget (and its subgroups', carved from it) is set to 0 first, so
        // the ancestors' can shrink at once.
        let rt = self.rt_runtime()?;
        let _lock = rt.map(|_| self.lock_rt()).transpose()?;
        if rt.is_some() {
            let dirs = subdirs_deepest_first(&self.cpu_dir()).map_err(|(p, e)| self.io("list", &p, e))?;
            for dir in dirs {
                let file = dir.join(RT_RUNTIME);
                if self.rt_runtime_at(&file)?.is_some() {
                    self.write(&file, "0")?;
                }
            }
        }
        for root_dir in self.dirs() {
            let dirs = match subdirs_deepest_first(&root_dir) {
                Ok(d) => d,
                Err((_, e)) if e.kind() == ErrorKind::NotFound => continue,
                Err((p, e)) => return Err(self.io("list", &p, e)),
            };
            for dir in dirs {
                self.rmdir(&dir)?;
            }
        }
        if let Some(us) = rt {
            for dir in self.cpu_ancestors().iter().rev() {
                self.add_rt(dir, -(us as i64))?;
            }
        }
        tracing::debug!(cgroup = %self.rel, "removed cgroup");
        Ok(())
    }

    /// rmdir, retrying while the kernel still sees exiting tasks.
    fn rmdir(&self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(self.io("rmdir", dir, e)),
            }
        }
    }
}

/// What the cgroups of a host (and the machine under them) allow a new
/// partition: the memory it can be given before some limit above it is
/// reached, and the CPUs it can use at most. Limits are not reservations:
/// this is what is free now, and it changes as partitions come and go.
#[derive(Clone, Debug, PartialEq)]
pub struct Headroom {
    /// Bytes: the least, over the cgroup partitions are put under and each
    /// of its ancestors, of its memory limit minus what it uses now
    /// (memory.max - memory.current on cgroup v2, memory.limit_in_bytes -
    /// memory.usage_in_bytes on v1, page cache included), and the
    /// machine's MemAvailable.
    pub memory: u64,
    /// What binds the memory, e.g. "memory.max of lpm-ab12/h1 (300 MiB,
    /// 86 MiB used)" or "MemAvailable of this machine".
    pub memory_bound: String,
    /// CPUs: the least of the CPU limits of that cgroup and its ancestors
    /// (cpu.max on v2, cpu.cfs_quota_us / cpu.cfs_period_us on v1) and
    /// the machine's online CPUs.
    pub cpus: f64,
    /// What binds the CPUs, e.g. "cpu.max of lpm-ab12/h1 (0.75 CPUs)" or
    /// "the 2 online CPUs of this machine".
    pub cpus_bound: String,
}

impl Headroom {
    /// Both amounts and what binds each, for a check's detail.
    pub fn detail(&self) -> String {
        format!("{} MiB of memory ({}); {} CPUs ({})", self.memory >> 20, self.memory_bound, self.cpus, self.cpus_bound)
    }
}

impl std::fmt::Display for Headroom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail())
    }
}

impl Layout {
    /// The [`Headroom`] under cgroup `rel` (a host's `{prefix}/{host}`),
    /// whether or not it exists yet: a cgroup that does not exist limits
    /// nothing, its existing ancestors still do.
    pub fn headroom(&self, rel: &str) -> Result<Headroom> {
        let read = |path: &str, parse: fn(&str) -> Option<u64>| {
            let text = fs::read_to_string(path).map_err(|source| CgroupError::Io {
                op: "read",
                cgroup: rel.to_string(),
                path: path.into(),
                source,
            })?;
            parse(&text).ok_or_else(|| CgroupError::Parse { cgroup: rel.to_string(), path: path.into(), content: text })
        };
        let avail = read("/proc/meminfo", mem_available)?;
        let cpus = read("/sys/devices/system/cpu/online", online_cpus)?;
        self.headroom_within(rel, avail, cpus as f64)
    }

    /// [`Layout::headroom`] with the machine's MemAvailable (bytes) and
    /// online CPUs given.
    pub fn headroom_within(&self, rel: &str, mem_available: u64, machine_cpus: f64) -> Result<Headroom> {
        let mut h = Headroom {
            memory: mem_available,
            memory_bound: format!("MemAvailable of this machine ({} MiB)", mem_available >> 20),
            cpus: machine_cpus,
            cpus_bound: format!("the {machine_cpus} online CPUs of this machine"),
        };
        let (mem_file, cpu_file) = match self {
            Layout::Hybrid { .. } => ("memory.limit_in_bytes", "cpu.cfs_quota_us"),
            Layout::Unified { .. } => ("memory.max", "cpu.max"),
        };
        let rel = rel.trim_matches('/');
        let parts: Vec<&str> = rel.split('/').collect();
        // The cgroup itself, then each ancestor below the root (the root
        // has no limits).
        for n in (1..=parts.len()).rev() {
            let cg = Cgroup::new(self.clone(), &parts[..n].join("/"))?;
            if cg.memory_dir().is_dir() {
                if let Some(limit) = absent(cg.memory_limit())? {
                    let used = cg.memory_current()?;
                    let left = limit.saturating_sub(used);
                    if left < h.memory {
                        h.memory = left;
                        h.memory_bound = format!("{mem_file} of {} ({} MiB, {} MiB used)", cg.rel, limit >> 20, used >> 20);
                    }
                }
            }
            if cg.cpu_dir().is_dir() {
                if let Some(c) = absent(cg.cpus())? {
                    if c < h.cpus {
                        h.cpus = c;
                        h.cpus_bound = format!("{cpu_file} of {} ({c} CPUs)", cg.rel);
                    }
                }
            }
        }
        Ok(h)
    }
}

/// MemAvailable of /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map(|kb| kb << 10)
}

/// How many CPUs a list like "0-3,5" of /sys/devices/system/cpu/online
/// names.
fn online_cpus(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse::<u64>().ok()?)? + 1,
            None => part.parse::<u64>().map(|_| 1).ok()?,
        };
    }
    Some(n)
}

/// A limit whose file this layout lacks (no such controller) is no limit.
fn absent<T>(r: Result<Option<T>>) -> Result<Option<T>> {
    match r {
        Err(CgroupError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(None),
        other => other,
    }
}

/// `dir` and every directory below it, children before parents.
fn subdirs_deepest_first(dir: &Path) -> std::result::Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| (dir.to_path_buf(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (dir.to_path_buf(), e))?;
        let ft = entry.file_type().map_err(|e| (entry.path(), e))?;
        if ft.is_dir() && entry.file_name() != OsStr::new(".") {
            match subdirs_deepest_first(&entry.path()) {
                Ok(sub) => out.extend(sub),
                Err((_, e)) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    out.push(dir.to_path_buf());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "\
25 20 0:22 / /sys rw,nosuid - sysfs sysfs rw
29 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn layouts_from_mountinfo() {
        assert_eq!(
            Layout::from_mountinfo(HYBRID).unwrap(),
            Layout::Hybrid {
                v2: "/sys/fs/cgroup/unified".into(),
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu,cpuacct".into()
            }
        );
        assert_eq!(Layout::from_mountinfo(UNIFIED).unwrap(), Layout::Unified { root: "/sys/fs/cgroup".into() });
        let no_v2: String = HYBRID.lines().filter(|l| !l.contains("cgroup2")).map(|l| format!("{l}\n")).collect();
        assert!(matches!(Layout::from_mountinfo(&no_v2), Err(CgroupError::Layout(_))));
        assert!(matches!(Layout::from_mountinfo(""), Err(CgroupError::Layout(_))));
    }

    #[test]
    fn hybrid_dirs_v2_first_and_cpu_once() {
        let l = Layout::from_mountinfo(HYBRID).unwrap();
        let cg = Cgroup::new(l, "lpm-x/h1/web").unwrap();
        assert_eq!(
            cg.dirs(),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified/lpm-x/h1/web"),
                PathBuf::from("/sys/fs/cgroup/memory/lpm-x/h1/web"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/lpm-x/h1/web"),
            ]
        );
    }

    #[test]
    fn bad_paths_refused() {
        let l = Layout::from_mountinfo(UNIFIED).unwrap();
        for bad in ["", "/", "a/../b", "a//b", "./a", "a/cgroup.procs"] {
            assert!(matches!(Cgroup::new(l.clone(), bad), Err(CgroupError::BadPath(_))), "{bad:?}");
        }
        assert_eq!(Cgroup::new(l, "/a/b/").unwrap().rel(), "a/b");
    }

    /// A fake hierarchy under the temp directory: `files` are (relative
    /// path, content).
    fn fake(files: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!("lpm-headroom-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        for (path, content) in files {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        root
    }

    #[test]
    fn headroom_unified_names_the_binding_limit() {
        let root = fake(&[
            ("lpm-x/memory.max", "1073741824\n"),
            ("lpm-x/memory.current", "104857600\n"),
            ("lpm-x/cpu.max", "max 100000\n"),
            ("lpm-x/h1/memory.max", "314572800\n"),
            ("lpm-x/h1/memory.current", "52428800\n"),
            ("lpm-x/h1/cpu.max", "75000 100000\n"),
        ]);
        let l = Layout::Unified { root: root.clone() };
        let h = l.headroom_within("lpm-x/h1", 8 << 30, 2.0).unwrap();
        assert_eq!(h.memory, 250 << 20);
        assert_eq!(h.memory_bound, "memory.max of lpm-x/h1 (300 MiB, 50 MiB used)");
        assert_eq!(h.cpus, 0.75);
        assert_eq!(h.cpus_bound, "cpu.max of lpm-x/h1 (0.75 CPUs)");
        // The machine binds when it has less; a host cgroup not made yet
        // limits nothing, its parent still does.
        let h = l.headroom_within("lpm-x/h1", 100 << 20, 0.5).unwrap();
        assert_eq!((h.memory, h.cpus), (100 << 20, 0.5));
        assert!(h.memory_bound.starts_with("MemAvailable") && h.cpus_bound.contains("online CPUs"), "{h}");
        let h = l.headroom_within("lpm-x/h2", 8 << 30, 2.0).unwrap();
        assert_eq!(h.memory, (1024 - 100) << 20);
        assert_eq!(h.memory_bound, "memory.max of lpm-x (1024 MiB, 100 MiB used)");
        assert_eq!(h.cpus, 2.0);
        // A cgroup without the controllers (no limit files) limits nothing.
        let h = l.headroom_within("other", 8 << 30, 2.0).unwrap();
        assert_eq!((h.memory, h.cpus), (8 << 30, 2.0));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn headroom_hybrid_reads_v1_files() {
        let root = fake(&[
            ("memory/lpm-x/h1/memory.limit_in_bytes", "209715200\n"),
            ("memory/lpm-x/h1/memory.usage_in_bytes", "262144000\n"),
            ("memory/lpm-x/memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory/lpm-x/memory.usage_in_bytes", "262144000\n"),
            ("cpu/lpm-x/h1/cpu.cfs_quota_us", "-1\n"),
            ("cpu/lpm-x/h1/cpu.cfs_period_us", "100000\n"),
            ("cpu/lpm-x/cpu.cfs_quota_us", "150000\n"),
            ("cpu/lpm-x/cpu.cfs_period_us", "100000\n"),
        ]);
        let l = Layout::Hybrid { v2: root.join("unified"), memory: root.join("memory"), cpu: root.join("cpu") };
        let h = l.headroom_within("lpm-x/h1", 8 << 30, 4.0).unwrap();
        // Over its limit: nothing left.
        assert_eq!(h.memory, 0);
        assert_eq!(h.memory_bound, "memory.limit_in_bytes of lpm-x/h1 (200 MiB, 250 MiB used)");
        assert_eq!(h.cpus, 1.5);
        assert_eq!(h.cpus_bound, "cpu.cfs_quota_us of lpm-x (1.5 CPUs)");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn machine_figures_parse() {
        assert_eq!(online_cpus("0-1\n"), Some(2));
        assert_eq!(online_cpus("0-3,5,7-8"), Some(7));
        assert_eq!(online_cpus("x"), None);
        assert_eq!(mem_available("MemTotal: 10 kB\nMemAvailable:    2048 kB\n"), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 10 kB\n"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo(r"/a\04"), r"/a\04");
    }
}
