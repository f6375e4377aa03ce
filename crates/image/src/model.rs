//! The model of a checkpointed process tree.
//!
//! These messages are encoded as protobuf (prost). Field tags are part of the
//! format: add fields with new tags, never reuse or renumber one. Every enum
//! keeps 0 as "invalid" so that a missing field never decodes as a real kind.
//! docs/image-format.md is the specification.

/// The whole tree: everything but page contents.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TreeImage {
    /// The lpm release that wrote the image, for diagnostics only.
    #[prost(string, tag = "1")]
    pub writer: String,
    /// Wall-clock time of the dump, milliseconds since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub created_unix_ms: u64,
    /// The CPU state format the registers were saved in.
    #[prost(message, optional, tag = "3")]
    pub cpu: Option<CpuInfo>,
    /// Pid of the tree's root (as the checkpointing host saw it).
    #[prost(uint32, tag = "4")]
    pub root_pid: u32,
    /// Processes, parents before their children.
    #[prost(message, repeated, tag = "5")]
    pub processes: Vec<Process>,
    // Tag 6 (tree-wide namespaces) is retired: namespaces are recorded per
    // process (`Process::namespaces`). Never reuse it.
    /// Pipes and FIFOs referenced by file descriptors, with buffered data.
    #[prost(message, repeated, tag = "7")]
    pub pipes: Vec<PipeImage>,
    /// Shared anonymous memory objects (MAP_SHARED|MAP_ANONYMOUS and
    /// friends), identified by their shmem inode.
    #[prost(message, repeated, tag = "8")]
    pub shmems: Vec<ShmemImage>,
    /// Open file descriptions shared by several descriptors or processes.
    #[prost(message, repeated, tag = "9")]
    pub files: Vec<FileImage>,
    /// Unlinked files still open, one per inode, whatever the number of
    /// open file descriptions of it (`FileImage::ghost_id`).
    #[prost(message, repeated, tag = "20")]
    pub ghosts: Vec<GhostImage>,
    /// The packet filter rules the checkpoint installed so that no packet
    /// of the tree's connections to peers outside it moved while it was
    /// dumped, and until a restore has rebuilt them (`lpm checkpoint
    /// --tcp-established`): what the restore removes once the
    /// connections exist again. None when nothing was locked.
    #[prost(message, optional, tag = "30")]
    pub net_lock: Option<NetLockImage>,
}

/// Which tool holds a network lock's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum NetLockBackend {
    /// Never written.
    Invalid = 0,
    /// One nftables table of lpm's own (family inet) holding every rule.
    Nftables = 1,
    /// iptables and ip6tables rules, each tagged with the lock's name.
    Iptables = 2,
}

/// Packet filter rules that drop the packets of locked connections
/// (except the restore's own, which carry `mark`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetLockImage {
    /// Who holds the rules.
    #[prost(enumeration = "NetLockBackend", tag = "1")]
    pub backend: i32,
    /// The lock's name, unique per checkpoint: the nftables table
    /// (`inet NAME`), or the comment on every iptables rule.
    #[prost(string, tag = "2")]
    pub name: String,
    /// iptables only: every rule, as the arguments that follow
    /// `iptables -w` (or `ip6tables -w`) after `-A`/`-D`: chain first.
    #[prost(message, repeated, tag = "3")]
    pub rules: Vec<IptablesRule>,
    /// The packet mark that passes the lock (the restore's crafted
    /// segments carry it).
    #[prost(uint32, tag = "4")]
    pub mark: u32,
    /// Identity (nsfs inode) of the network namespace holding the rules,
    /// the checkpointing lpm's own: a restore in another one finds no lock.
    #[prost(uint64, tag = "5")]
    pub net_ns: u64,
}

/// One iptables rule of a lock.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IptablesRule {
    /// IPv6 (ip6tables) rather than IPv4 (iptables).
    #[prost(bool, tag = "1")]
    pub ipv6: bool,
    /// The chain and the match, as arguments.
    #[prost(string, repeated, tag = "2")]
    pub args: Vec<String>,
}

/// What the registers' layout depends on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CpuInfo {
    /// Architecture name, "x86_64".
    #[prost(string, tag = "1")]
    pub arch: String,
    /// XCR0 of the dumping host: the xsave components in the saved state.
    #[prost(uint64, tag = "2")]
    pub xcr0: u64,
    /// Size of the NT_X86_XSTATE regset in bytes.
    #[prost(uint32, tag = "3")]
    pub xstate_size: u32,
    /// CPUID feature flags of the dumping host (from /proc/cpuinfo), so the
    /// restore can refuse a CPU that lacks one.
    #[prost(string, repeated, tag = "4")]
    pub flags: Vec<String>,
}

/// Namespaces a process owns: it was created into them (they differ from
/// its parent's, or from the checkpointing lpm's for the root).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Namespaces {
    /// CLONE_NEW* flags of the namespaces to create with the process.
    #[prost(uint64, tag = "1")]
    pub clone_flags: u64,
    /// Host name inside the uts namespace.
    #[prost(string, tag = "2")]
    pub hostname: String,
    /// NIS domain name inside the uts namespace.
    #[prost(string, tag = "3")]
    pub domainname: String,
    /// This process mounts the procfs of its own pid namespace on /proc of
    /// its mount namespace at restore (`unshare --mount-proc`): that
    /// procfs was on top of /proc there, and this is the process in both
    /// namespaces that owns one of them (the mount namespace's owner, or
    /// the first process of a pid namespace nested inside it).
    #[prost(bool, tag = "4")]
    pub mount_proc: bool,
    /// Identity of the owned network namespace at dump (its nsfs inode):
    /// sockets name it in `SocketImage::net_ns`.
    #[prost(uint64, tag = "5")]
    pub net_ns: u64,
    /// The loopback interface was up in the owned network namespace.
    #[prost(bool, tag = "6")]
    pub lo_up: bool,
    /// The owned network namespace belongs to the caller (a partition's,
    /// with its NIC): its interfaces other than lo were not recorded, and
    /// a restore must be given an equivalent namespace to use instead of
    /// creating one.
    #[prost(bool, tag = "7")]
    pub net_external: bool,
    /// What the ipc namespace holds, when `clone_flags` has CLONE_NEWIPC.
    #[prost(message, optional, tag = "10")]
    pub ipc: Option<IpcNamespace>,
    /// Set on the owner of a mount namespace whose /proc showed the procfs
    /// of a pid namespace no process of that mount namespace is in (its
    /// first process, this one's descendant, moved on to a mount namespace
    /// of its own): the image pid of that first process. At restore it
    /// makes the procfs (fsopen, fsmount) and this process attaches it on
    /// /proc (move_mount). 0: none.
    #[prost(uint32, tag = "11")]
    pub proc_from: u32,
    /// Set on the owner of a mount namespace that does not see the host's
    /// /run/netns (the network namespaces the host binds by name there),
    /// which it detached (a partition's init does): the restore detaches
    /// the restoring host's, which it would otherwise inherit.
    #[prost(bool, tag = "12")]
    pub no_run_netns: bool,
    /// The owned network namespace's `net.ipv4.ping_group_range` (the
    /// lowest and highest gid allowed to create ICMP sockets, which an
    /// ICMP socket is checked against when it is made), when it is not
    /// the default "1 0": written again into the restored namespace.
    #[prost(uint32, repeated, tag = "160")]
    pub ping_group_range: Vec<u32>,
    /// Set on the owner of a mount namespace: the masks mounted in it over
    /// the host's paths (what a partition must not see of its host: lpm's
    /// state, keys and sockets), in mount order. Each hides what is under
    /// it and holds nothing, so it is made again exactly.
    #[prost(message, repeated, tag = "320")]
    pub masks: Vec<MountMask>,
}

/// A mount that hides a path and holds nothing: an empty read-only tmpfs
/// over a directory, or a read-only bind of the null device over a file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountMask {
    /// The mount point, as the mount namespace's owner sees it.
    #[prost(string, tag = "1")]
    pub path: String,
    /// A bind of the null device (over a file); otherwise an empty tmpfs.
    #[prost(bool, tag = "2")]
    pub null_file: bool,
    /// Per-mount MS_* flags besides MS_RDONLY (nosuid, nodev, noexec, the
    /// atime ones).
    #[prost(uint64, tag = "3")]
    pub flags: u64,
    /// The tmpfs's own options as mountinfo shows them, without ro/rw
    /// (`size=4k,mode=555,inode64`), given again to the new tmpfs.
    #[prost(string, tag = "4")]
    pub options: String,
}

/// One process (thread group). Pids, parent, group and session are as the
/// checkpointing host saw them: they are the image's keys. What the
/// process sees of itself in nested pid namespaces is `nspid`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    /// Pid.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// Parent pid (0 for the root).
    #[prost(uint32, tag = "2")]
    pub ppid: u32,
    /// Process group id.
    #[prost(uint32, tag = "3")]
    pub pgid: u32,
    /// Session id.
    #[prost(uint32, tag = "4")]
    pub sid: u32,
    /// Threads; the first is the thread-group leader.
    #[prost(message, repeated, tag = "5")]
    pub threads: Vec<Thread>,
    /// Address space.
    #[prost(message, optional, tag = "6")]
    pub mm: Option<Mm>,
    /// Open file descriptors.
    #[prost(message, repeated, tag = "7")]
    pub fds: Vec<Fd>,
    /// Signal dispositions, one per signal number that is not SIG_DFL.
    #[prost(message, repeated, tag = "8")]
    pub sigactions: Vec<SigAction>,
    /// Credentials.
    #[prost(message, optional, tag = "9")]
    pub creds: Option<Creds>,
    /// Resource limits.
    #[prost(message, repeated, tag = "10")]
    pub rlimits: Vec<Rlimit>,
    /// Working directory.
    #[prost(string, tag = "11")]
    pub cwd: String,
    /// Root directory.
    #[prost(string, tag = "12")]
    pub root: String,
    /// The working directory was removed (`cwd` reads "PATH (deleted)"):
    /// the directory in `TreeImage::ghosts` made again, entered, removed.
    #[prost(uint64, tag = "120")]
    pub cwd_ghost: u64,
    /// The working directory is the /proc directory of a process that
    /// exited (`cwd` reads "/proc/N (deleted)"): N, as the process's own
    /// pid namespace numbers it (its /proc's); 0 otherwise.
    #[prost(uint32, tag = "121")]
    pub cwd_proc_pid: u32,
    /// File mode creation mask.
    #[prost(uint32, tag = "13")]
    pub umask: u32,
    /// Execution domain (personality(2)).
    #[prost(uint32, tag = "14")]
    pub personality: u32,
    /// Signals pending for the whole process (raw 128-byte siginfo each).
    #[prost(bytes = "vec", repeated, tag = "15")]
    pub shared_pending: Vec<Vec<u8>>,
    /// Interval timers: real, virtual, prof.
    #[prost(message, repeated, tag = "16")]
    pub itimers: Vec<Itimer>,
    /// Pid in the dumping host's namespace, for diagnostics.
    #[prost(uint32, tag = "17")]
    pub host_pid: u32,
    /// Per-process prctl state.
    #[prost(message, optional, tag = "18")]
    pub prctl: Option<ProcessPrctl>,
    /// The pid in every pid namespace from the host's down to its own
    /// (NSpid): one entry outside nested namespaces.
    #[prost(uint32, repeated, tag = "19")]
    pub nspid: Vec<u32>,
    /// Namespaces this process owns.
    #[prost(message, optional, tag = "20")]
    pub namespaces: Option<Namespaces>,
    /// POSIX timers (timer_create), in id order.
    #[prost(message, repeated, tag = "21")]
    pub posix_timers: Vec<PosixTimer>,
    /// File locks held through this process's descriptors (flock, POSIX
    /// record locks, OFD locks), restored once its fds are in place.
    #[prost(message, repeated, tag = "22")]
    pub file_locks: Vec<FileLock>,
    /// SysV shared memory segments attached in the address space (kept
    /// out of `mm`: they are attached with shmat, not mapped).
    #[prost(message, repeated, tag = "23")]
    pub sysv_shm_maps: Vec<SysvShmMap>,
    /// The process had exited and was not yet waited for (a zombie): it is
    /// recreated and made to exit again with this status at the end of the
    /// restore. A zombie has no memory, descriptors or threads of its own.
    #[prost(message, optional, tag = "27")]
    pub zombie: Option<Zombie>,
    /// Seccomp filters (mode 2) shared by every thread of the process.
    #[prost(message, optional, tag = "28")]
    pub seccomp: Option<Seccomp>,
    /// The pseudo-terminal of the tree (its recorded index, as
    /// `TtyImage::index`) that is the process's controlling terminal, when
    /// its session is the tree's; None when it has none, or its session
    /// (and so its terminal) is the restorer's to give.
    #[prost(uint32, optional, tag = "45")]
    pub ctty: Option<u32>,
    /// The process shares its parent's file descriptor table (it was
    /// cloned with CLONE_FILES): the restore clones it so, and installs
    /// the table's descriptors once, through the parent. `fds` lists them
    /// all the same.
    #[prost(bool, tag = "40")]
    pub shares_parent_files: bool,
    /// /proc/PID/oom_score_adj (per process, -1000 to 1000).
    #[prost(sint32, tag = "29")]
    pub oom_score_adj: i32,
    /// membarrier(2) registrations of the address space, as
    /// MEMBARRIER_CMD_GET_REGISTRATIONS returns them: one bit per
    /// MEMBARRIER_CMD_REGISTER_* command, each run again at restore.
    #[prost(uint32, tag = "30")]
    pub membarrier: u32,
    /// The process group id in every pid namespace from the host's down
    /// to its own (NSpgid): what a group whose leader has exited is made
    /// again with. Empty in images that predate it.
    #[prost(uint32, repeated, tag = "31")]
    pub nspgid: Vec<u32>,
    /// When it was started, in clock ticks since boot (/proc/PID/stat
    /// field 22): the restore forks a process's children in this order,
    /// the order pages shared copy-on-write were handed down in.
    #[prost(uint64, tag = "32")]
    pub start_time: u64,
    /// The signal that stopped the process (a group stop by SIGSTOP,
    /// SIGTSTP, SIGTTIN or SIGTTOU); 0 when it was running. The restored
    /// process stops again with it as it is released, before it runs.
    #[prost(uint32, tag = "46")]
    pub stop_signal: u32,
}

/// Process-wide prctl(2) state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessPrctl {
    /// PR_GET_NO_NEW_PRIVS.
    #[prost(bool, tag = "1")]
    pub no_new_privs: bool,
    /// PR_GET_THP_DISABLE.
    #[prost(bool, tag = "2")]
    pub thp_disable: bool,
    /// PR_GET_CHILD_SUBREAPER.
    #[prost(bool, tag = "3")]
    pub child_subreaper: bool,
    /// PR_GET_DUMPABLE.
    #[prost(uint32, tag = "4")]
    pub dumpable: u32,
    /// PR_GET_PDEATHSIG.
    #[prost(uint32, tag = "5")]
    pub pdeathsig: u32,
}

/// One thread.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Thread {
    /// Thread id (as the checkpointing host saw it).
    #[prost(uint32, tag = "1")]
    pub tid: u32,
    /// Raw `struct user_regs_struct` (x86_64, 27 words).
    #[prost(bytes = "vec", tag = "2")]
    pub gpregs: Vec<u8>,
    /// Raw NT_X86_XSTATE regset (XSAVE layout, includes x87/SSE/AVX).
    #[prost(bytes = "vec", tag = "3")]
    pub xstate: Vec<u8>,
    /// Blocked signal mask.
    #[prost(uint64, tag = "4")]
    pub sigmask: u64,
    /// Signals pending for this thread only (raw 128-byte siginfo each).
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub pending: Vec<Vec<u8>>,
    /// set_tid_address value (clear_child_tid).
    #[prost(uint64, tag = "6")]
    pub clear_child_tid: u64,
    /// Robust futex list head.
    #[prost(uint64, tag = "7")]
    pub robust_list: u64,
    /// Robust futex list head length.
    #[prost(uint64, tag = "8")]
    pub robust_list_len: u64,
    /// Alternate signal stack.
    #[prost(message, optional, tag = "9")]
    pub sigaltstack: Option<SigAltStack>,
    /// Restartable-sequences registration.
    #[prost(message, optional, tag = "10")]
    pub rseq: Option<Rseq>,
    /// Thread name (comm).
    #[prost(string, tag = "11")]
    pub comm: String,
    /// Host tid, for diagnostics.
    #[prost(uint32, tag = "12")]
    pub host_tid: u32,
    /// Nice value (per thread on Linux).
    #[prost(sint32, tag = "13")]
    pub nice: i32,
    /// Timer slack in nanoseconds (PR_GET_TIMERSLACK).
    #[prost(uint64, tag = "14")]
    pub timer_slack_ns: u64,
    /// The thread id in every pid namespace, host's first (NSpid).
    #[prost(uint32, repeated, tag = "15")]
    pub nstid: Vec<u32>,
    /// Scheduling policy and its parameters (sched_getattr); the nice
    /// value is `nice`. Absent in images that predate it: the restored
    /// thread then keeps SCHED_OTHER.
    #[prost(message, optional, tag = "16")]
    pub sched: Option<Sched>,
}

/// A thread's scheduling policy (sched_setattr(2)), besides its nice value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sched {
    /// SCHED_OTHER (0), SCHED_FIFO (1), SCHED_RR (2), SCHED_BATCH (3),
    /// SCHED_IDLE (5); SCHED_DEADLINE is refused at checkpoint.
    #[prost(uint32, tag = "1")]
    pub policy: u32,
    /// SCHED_FLAG_RESET_ON_FORK and the utilization clamp flags.
    #[prost(uint64, tag = "2")]
    pub flags: u64,
    /// Static priority of SCHED_FIFO and SCHED_RR (1 to 99), else 0.
    #[prost(uint32, tag = "3")]
    pub priority: u32,
    /// Utilization clamp minimum (0 to 1024).
    #[prost(uint32, tag = "4")]
    pub util_min: u32,
    /// Utilization clamp maximum (0 to 1024).
    #[prost(uint32, tag = "5")]
    pub util_max: u32,
}

/// sigaltstack(2) state.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SigAltStack {
    /// ss_sp.
    #[prost(uint64, tag = "1")]
    pub sp: u64,
    /// ss_flags (SS_AUTODISARM survives; SS_ONSTACK is derived).
    #[prost(uint32, tag = "2")]
    pub flags: u32,
    /// ss_size.
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

/// rseq(2) registration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rseq {
    /// Address of the struct rseq area.
    #[prost(uint64, tag = "1")]
    pub addr: u64,
    /// Registered length.
    #[prost(uint32, tag = "2")]
    pub len: u32,
    /// Abort signature.
    #[prost(uint32, tag = "3")]
    pub sig: u32,
}

/// A signal's disposition.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SigAction {
    /// Signal number.
    #[prost(uint32, tag = "1")]
    pub signo: u32,
    /// sa_handler (0 = SIG_DFL, 1 = SIG_IGN, else an address).
    #[prost(uint64, tag = "2")]
    pub handler: u64,
    /// sa_flags.
    #[prost(uint64, tag = "3")]
    pub flags: u64,
    /// sa_restorer.
    #[prost(uint64, tag = "4")]
    pub restorer: u64,
    /// sa_mask.
    #[prost(uint64, tag = "5")]
    pub mask: u64,
}

/// An interval timer (setitimer).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Itimer {
    /// ITIMER_REAL (0), ITIMER_VIRTUAL (1) or ITIMER_PROF (2).
    #[prost(uint32, tag = "1")]
    pub which: u32,
    /// Interval in microseconds.
    #[prost(uint64, tag = "2")]
    pub interval_us: u64,
    /// Time left in microseconds.
    #[prost(uint64, tag = "3")]
    pub value_us: u64,
}

/// Credentials of a process.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Creds {
    /// Real, effective, saved and filesystem uid.
    #[prost(uint32, repeated, tag = "1")]
    pub uids: Vec<u32>,
    /// Real, effective, saved and filesystem gid.
    #[prost(uint32, repeated, tag = "2")]
    pub gids: Vec<u32>,
    /// Supplementary groups.
    #[prost(uint32, repeated, tag = "3")]
    pub groups: Vec<u32>,
    /// Capability sets: inheritable, permitted, effective, bounding, ambient.
    #[prost(uint64, repeated, tag = "4")]
    pub caps: Vec<u64>,
    /// prctl securebits.
    #[prost(uint32, tag = "5")]
    pub securebits: u32,
}

/// A resource limit.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rlimit {
    /// RLIMIT_* number.
    #[prost(uint32, tag = "1")]
    pub resource: u32,
    /// Soft limit (u64::MAX = unlimited).
    #[prost(uint64, tag = "2")]
    pub soft: u64,
    /// Hard limit (u64::MAX = unlimited).
    #[prost(uint64, tag = "3")]
    pub hard: u64,
}

/// An address space.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mm {
    /// Memory areas in address order.
    #[prost(message, repeated, tag = "1")]
    pub vmas: Vec<Vma>,
    /// Runs of saved pages, in address order.
    #[prost(message, repeated, tag = "2")]
    pub pages: Vec<PageRun>,
    /// Name of the pages file in the image directory.
    #[prost(string, tag = "3")]
    pub pages_file: String,
    /// The mm_struct layout fields set by PR_SET_MM_MAP.
    #[prost(message, optional, tag = "4")]
    pub layout: Option<MmLayout>,
    /// Raw auxiliary vector (pairs of u64).
    #[prost(bytes = "vec", tag = "5")]
    pub auxv: Vec<u8>,
    /// Path of the executable.
    #[prost(string, tag = "6")]
    pub exe: String,
    /// Name, in the image directory, of the sparse file holding the pages
    /// of precopied runs (`PageRun::precopied`): the page of virtual
    /// address A at file offset A, no header, holes read as zero. The
    /// receiver of a live migration writes it; empty when no run is
    /// precopied.
    #[prost(string, tag = "7")]
    pub precopy_file: String,
    /// Every area eligible for KSM is mergeable, now and when mapped
    /// (prctl PR_SET_MEMORY_MERGE; "ksm_merge_any" in /proc/PID/ksm_stat).
    #[prost(bool, tag = "8")]
    pub ksm_merge_any: bool,
}

/// mm_struct fields that PR_SET_MM_MAP restores.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MmLayout {
    /// start_code.
    #[prost(uint64, tag = "1")]
    pub start_code: u64,
    /// end_code.
    #[prost(uint64, tag = "2")]
    pub end_code: u64,
    /// start_data.
    #[prost(uint64, tag = "3")]
    pub start_data: u64,
    /// end_data.
    #[prost(uint64, tag = "4")]
    pub end_data: u64,
    /// start_brk.
    #[prost(uint64, tag = "5")]
    pub start_brk: u64,
    /// Current program break.
    #[prost(uint64, tag = "6")]
    pub brk: u64,
    /// start_stack.
    #[prost(uint64, tag = "7")]
    pub start_stack: u64,
    /// arg_start.
    #[prost(uint64, tag = "8")]
    pub arg_start: u64,
    /// arg_end.
    #[prost(uint64, tag = "9")]
    pub arg_end: u64,
    /// env_start.
    #[prost(uint64, tag = "10")]
    pub env_start: u64,
    /// env_end.
    #[prost(uint64, tag = "11")]
    pub env_end: u64,
}

/// What backs a memory area.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VmaKind {
    /// Never written: a decoder seeing it has a corrupt or newer image.
    Invalid = 0,
    /// Private anonymous memory (including heap and stacks).
    AnonPrivate = 1,
    /// Shared anonymous memory; `shmem_id` names the object.
    AnonShared = 2,
    /// Private mapping of a file; written pages are saved.
    FilePrivate = 3,
    /// Shared mapping of a file; contents live in the file.
    FileShared = 4,
    /// The kernel's `[vdso]`.
    Vdso = 5,
    /// The kernel's `[vvar]` data pages.
    Vvar = 6,
    /// The kernel's `[vvar_vclock]` pages (kernel 6.13 and later).
    VvarVclock = 7,
    /// The legacy `[vsyscall]` page at a fixed address; never moved.
    Vsyscall = 8,
    /// Private mapping of a shared memory object (`shmem_id`: a shared
    /// anonymous area's object, reached through /proc/PID/map_files, or a
    /// memfd): the pages it did not write are the object's and follow
    /// it; the pages it wrote are saved, as a private file mapping's.
    ShmemPrivate = 9,
}

/// A memory area.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Vma {
    /// First address.
    #[prost(uint64, tag = "1")]
    pub start: u64,
    /// One past the last address.
    #[prost(uint64, tag = "2")]
    pub end: u64,
    /// PROT_* bits.
    #[prost(uint32, tag = "3")]
    pub prot: u32,
    /// MAP_* bits to map it with (MAP_SHARED/MAP_PRIVATE, MAP_GROWSDOWN, ...).
    #[prost(uint32, tag = "4")]
    pub flags: u32,
    /// What backs it.
    #[prost(enumeration = "VmaKind", tag = "5")]
    pub kind: i32,
    /// Backing file path, or the bracketed name (`[heap]`, `[stack]`).
    #[prost(string, tag = "6")]
    pub path: String,
    /// File offset in bytes.
    #[prost(uint64, tag = "7")]
    pub pgoff: u64,
    /// Identity of a shared anonymous object (its shmem inode), 0 otherwise.
    #[prost(uint64, tag = "8")]
    pub shmem_id: u64,
    /// madvise advice to reapply (MADV_HUGEPAGE, MADV_DONTFORK, ...).
    #[prost(uint32, repeated, tag = "9")]
    pub madvise: Vec<u32>,
    /// Device and inode of the backing file, to notice it changed.
    #[prost(uint64, tag = "10")]
    pub dev: u64,
    /// Inode of the backing file.
    #[prost(uint64, tag = "11")]
    pub inode: u64,
    /// The area's VmFlags at dump (/proc/PID/smaps, two letters each):
    /// what the restore makes again (the advice, locks, VM_ACCOUNT,
    /// VM_NORESERVE, VM_MAYWRITE of a shared file mapping, droppable)
    /// and what a check of the restored tree compares. Empty in images
    /// that predate it.
    #[prost(string, repeated, tag = "12")]
    pub vm_flags: Vec<String>,
    /// A mapping of a file unlinked since (`path` reads "PATH
    /// (deleted)"): the file in `TreeImage::ghosts` it maps; 0 otherwise.
    #[prost(uint64, tag = "120")]
    pub ghost_id: u64,
    /// A hugetlbfs area (VmFlags ht: anonymous MAP_HUGETLB, private or
    /// shared): the size of its pages in bytes; 0 for any other area.
    #[prost(uint64, tag = "220")]
    pub huge_page_size: u64,
}

/// A run of consecutive pages.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PageRun {
    /// Address of the first page.
    #[prost(uint64, tag = "1")]
    pub vaddr: u64,
    /// Number of pages.
    #[prost(uint64, tag = "2")]
    pub npages: u64,
    /// Byte offset of the run's data in the pages file (after the header).
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    /// XXH3-64 of the run's data.
    #[prost(uint64, tag = "4")]
    pub xxh3: u64,
    /// The pages are all zero: no data is stored.
    #[prost(bool, tag = "5")]
    pub zero: bool,
    /// The pages were pre-copied during a live migration: their data is
    /// not in the pages file but in the process's precopy file
    /// (`Mm::precopy_file`) at file offset `vaddr`; `offset` and `xxh3`
    /// are 0. Process address spaces, shared memory objects and SysV
    /// segments (their own `precopy_file`, at offset = offset in the
    /// object) have such runs.
    #[prost(bool, tag = "6")]
    pub precopied: bool,
    /// The pages are the same physical pages as process `cow_pid`'s (its
    /// image pid) at the same addresses, shared copy-on-write since a
    /// fork: no data here, `cow_pid`'s own run holds it, and the restore
    /// shares them again. 0 otherwise.
    #[prost(uint32, tag = "7")]
    pub cow_pid: u32,
}

/// A shared anonymous memory object.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShmemImage {
    /// The object's identity (shmem inode at dump time).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Size in bytes.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Saved pages; `vaddr` is the offset inside the object.
    #[prost(message, repeated, tag = "3")]
    pub pages: Vec<PageRun>,
    /// Name of the pages file in the image directory.
    #[prost(string, tag = "4")]
    pub pages_file: String,
    /// The object is a memfd of this name (mapped as "/memfd:NAME"):
    /// it is made again as one, so its mappings keep their name. Empty
    /// for a shared anonymous area's object ("/dev/zero (deleted)").
    #[prost(string, tag = "5")]
    pub memfd_name: String,
    /// A hugetlbfs object (a shared anonymous MAP_HUGETLB area's): the
    /// size of its pages in bytes, 0 otherwise. Its `pages` then cover
    /// exactly the huge pages it held (zero runs for those that were
    /// zero), and only those are allocated again.
    #[prost(uint64, tag = "220")]
    pub huge_page_size: u64,
    /// The receiver's precopy file holding the object's pre-copied
    /// pages (a live migration sent them in its rounds): `precopied`
    /// runs read from it at file offset = offset in the object. Empty
    /// without such runs.
    #[prost(string, tag = "250")]
    pub precopy_file: String,
}

/// What a file descriptor refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FileKind {
    /// Never written.
    Invalid = 0,
    /// A regular file or directory reached by path.
    Regular = 1,
    /// A regular file that was unlinked while open; content is saved.
    Unlinked = 2,
    /// A character device, reopened by its path and checked by number.
    CharDevice = 3,
    /// One end of an anonymous pipe.
    Pipe = 4,
    /// A FIFO (named pipe).
    Fifo = 5,
    /// An eventfd counter; state in `FileImage::eventfd`.
    Eventfd = 6,
    /// A timerfd; state in `FileImage::timerfd`.
    Timerfd = 7,
    /// A signalfd; state in `FileImage::signalfd`.
    Signalfd = 8,
    /// An epoll instance; registrations in `FileImage::epoll`.
    Epoll = 9,
    /// An inotify instance; watches in `FileImage::inotify`.
    Inotify = 10,
    /// A memfd (memfd_create); name, seals and content in `FileImage::memfd`.
    Memfd = 11,
    /// A pidfd of a process of the tree; target in `FileImage::pidfd`.
    Pidfd = 12,
    /// A unix socket; state in `FileImage::socket`.
    UnixSocket = 13,
    /// A TCP or UDP socket (IPv4 or IPv6); state in `FileImage::socket`.
    InetSocket = 14,
    /// A netlink socket; state in `FileImage::socket`.
    NetlinkSocket = 15,
    /// A pseudo-terminal end (master /dev/ptmx or slave /dev/pts/N); state
    /// in `FileImage::tty`.
    Tty = 16,
    /// A POSIX message queue (mq_open); state in `FileImage::mqueue`.
    Mqueue = 17,
    /// A namespace descriptor (open of /proc/PID/ns/*); which namespace in
    /// `FileImage::ns`.
    Namespace = 40,
    /// A fanotify group; its flags and marks in `FileImage::fanotify`.
    Fanotify = 41,
    /// A packet socket (AF_PACKET); state in `FileImage::socket` with its
    /// `packet` part.
    PacketSocket = 35,
}

/// An open file description (what several fds may share).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileImage {
    /// Identity inside the image, referenced by `Fd::file_id`.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// What it is.
    #[prost(enumeration = "FileKind", tag = "2")]
    pub kind: i32,
    /// Path (for regular files, FIFOs and devices).
    #[prost(string, tag = "3")]
    pub path: String,
    /// open(2) flags (O_ACCMODE, O_APPEND, O_NONBLOCK, ...), without O_CLOEXEC.
    #[prost(uint32, tag = "4")]
    pub flags: u32,
    /// File position.
    #[prost(uint64, tag = "5")]
    pub pos: u64,
    /// Device number for character devices.
    #[prost(uint64, tag = "6")]
    pub rdev: u64,
    /// Pipe identity (inode) for pipes and FIFOs.
    #[prost(uint64, tag = "7")]
    pub pipe_id: u64,
    /// Saved content of an unlinked file.
    #[prost(bytes = "vec", tag = "8")]
    pub content: Vec<u8>,
    /// File mode (type and permission bits).
    #[prost(uint32, tag = "9")]
    pub mode: u32,
    /// Size of a regular file at dump time, to notice it shrank.
    #[prost(uint64, tag = "10")]
    pub size: u64,
    /// State of an eventfd.
    #[prost(message, optional, tag = "11")]
    pub eventfd: Option<EventfdImage>,
    /// State of a timerfd.
    #[prost(message, optional, tag = "12")]
    pub timerfd: Option<TimerfdImage>,
    /// State of a signalfd.
    #[prost(message, optional, tag = "13")]
    pub signalfd: Option<SignalfdImage>,
    /// Registrations of an epoll instance.
    #[prost(message, optional, tag = "14")]
    pub epoll: Option<EpollImage>,
    /// Watches of an inotify instance.
    #[prost(message, optional, tag = "15")]
    pub inotify: Option<InotifyImage>,
    /// A memfd: name, seals and content.
    #[prost(message, optional, tag = "16")]
    pub memfd: Option<MemfdImage>,
    /// The process a pidfd refers to.
    #[prost(message, optional, tag = "17")]
    pub pidfd: Option<PidfdImage>,
    /// State of a socket (unix, inet or netlink).
    #[prost(message, optional, tag = "20")]
    pub socket: Option<SocketImage>,
    /// A pseudo-terminal end: its pty and, on the master, the pty's state.
    #[prost(message, optional, tag = "30")]
    pub tty: Option<TtyImage>,
    /// A POSIX message queue: name, attributes and queued messages.
    #[prost(message, optional, tag = "31")]
    pub mqueue: Option<MqueueImage>,
    /// An unlinked file: its inode in `TreeImage::ghosts` (0 in images of
    /// builds before it, whose `content` holds the data).
    #[prost(uint64, tag = "32")]
    pub ghost_id: u64,
    /// Who gets the file's SIGIO (F_SETOWN, F_SETOWN_EX); none when unset.
    #[prost(message, optional, tag = "33")]
    pub owner: Option<FileOwner>,
    /// The signal the owner gets instead of SIGIO (F_SETSIG); 0: SIGIO.
    #[prost(uint32, tag = "34")]
    pub signal: u32,
    /// A namespace descriptor: which namespace of the tree it names.
    #[prost(message, optional, tag = "180")]
    pub ns: Option<NsFdImage>,
    /// A fanotify group: its flags and marks.
    #[prost(message, optional, tag = "181")]
    pub fanotify: Option<FanotifyImage>,
    /// A memfd's second (third, ...) open file description, reopened
    /// through /proc/PID/fd: the file id of the memfd's first
    /// description, which holds its state (`memfd`); 0 otherwise.
    #[prost(uint32, tag = "120")]
    pub memfd_of: u32,
}

/// A fanotify group (fanotify_init) and its marks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FanotifyImage {
    /// fanotify_init flags (FAN_CLASS_*, FAN_REPORT_*, FAN_UNLIMITED_*,
    /// FAN_NONBLOCK, FAN_CLOEXEC), as fdinfo shows them.
    #[prost(uint32, tag = "1")]
    pub flags: u32,
    /// fanotify_init event_f_flags: the open flags of event descriptors.
    #[prost(uint32, tag = "2")]
    pub event_flags: u32,
    /// Its marks, in fdinfo order.
    #[prost(message, repeated, tag = "3")]
    pub marks: Vec<FanotifyMark>,
    /// The image pid of the process whose root and mount namespace the
    /// marks' paths are seen from (the holder the dump met first); the
    /// restore resolves them through the same process restored. 0 in
    /// older images: the first process holding it.
    #[prost(uint32, tag = "230")]
    pub seen_from: u32,
}

/// What a fanotify mark is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FanotifyMarkKind {
    /// Never written.
    Invalid = 0,
    /// An inode (a file or directory).
    Inode = 1,
    /// A mount (FAN_MARK_MOUNT).
    Mount = 2,
    /// A filesystem (FAN_MARK_FILESYSTEM).
    Filesystem = 3,
}

/// One fanotify mark.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FanotifyMark {
    /// What it is on.
    #[prost(enumeration = "FanotifyMarkKind", tag = "1")]
    pub kind: i32,
    /// FAN_MARK_* flags the kernel reports (IGNORED_SURV_MODIFY,
    /// EVICTABLE, IGNORE).
    #[prost(uint32, tag = "2")]
    pub mflags: u32,
    /// Events reported.
    #[prost(uint64, tag = "3")]
    pub mask: u64,
    /// Events ignored.
    #[prost(uint64, tag = "4")]
    pub ignored_mask: u64,
    /// The inode's path (resolved from its file handle), or the mount
    /// point of the mount or of a mount of the filesystem.
    #[prost(string, tag = "5")]
    pub path: String,
    /// Inode number of a marked inode, to notice it was replaced.
    #[prost(uint64, tag = "6")]
    pub ino: u64,
    /// Device (st_dev) of the inode or filesystem.
    #[prost(uint64, tag = "7")]
    pub dev: u64,
}

/// The namespace a namespace descriptor names: one the tree owns.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NsFdImage {
    /// Its type as its descriptor's link names it ("net", "uts", "ipc",
    /// "mnt", "pid").
    #[prost(string, tag = "1")]
    pub ns_type: String,
    /// Its identity at dump (nsfs inode), as `Namespaces::net_ns` records
    /// it; 0 in a tree handed to the file restore: the namespace the
    /// restorer's thread is in (a partition's, given to the restore).
    #[prost(uint64, tag = "2")]
    pub ns: u64,
    /// For a type other than net: the image pid of a process of the tree
    /// in that namespace (the restored descriptor names what that
    /// process is in after restore).
    #[prost(uint32, tag = "3")]
    pub member: u32,
}

/// What a file owner is (F_OWNER_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum OwnerKind {
    /// Never written.
    Invalid = 0,
    /// A thread (F_OWNER_TID).
    Thread = 1,
    /// A process (F_OWNER_PID).
    Process = 2,
    /// A process group (F_OWNER_PGRP).
    Group = 3,
}

/// The owner of an open file for signal-driven I/O.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileOwner {
    /// A thread, a process or a group.
    #[prost(enumeration = "OwnerKind", tag = "1")]
    pub kind: i32,
    /// The image's id of it (`Thread::tid`, `Process::pid`, or the pid of
    /// the group's leader, a process of the image).
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    /// Real uid of whoever set it (F_GETOWNER_UIDS): the kernel checks it
    /// before it signals the owner.
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    /// Effective uid of whoever set it.
    #[prost(uint32, tag = "4")]
    pub euid: u32,
}

/// An unlinked regular file still open (a "ghost"): what it held and its
/// attributes. Recreated once, with every name its descriptions were
/// opened through, then unlinked again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GhostImage {
    /// Identity inside the image, referenced by `FileImage::ghost_id`.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Size in bytes.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// st_mode (type and permission bits, setuid, setgid, sticky).
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    /// Owner.
    #[prost(uint32, tag = "4")]
    pub uid: u32,
    /// Group.
    #[prost(uint32, tag = "5")]
    pub gid: u32,
    /// Last access, seconds since the epoch.
    #[prost(int64, tag = "6")]
    pub atime_sec: i64,
    /// Last access, nanoseconds.
    #[prost(uint32, tag = "7")]
    pub atime_nsec: u32,
    /// Last modification, seconds since the epoch.
    #[prost(int64, tag = "8")]
    pub mtime_sec: i64,
    /// Last modification, nanoseconds.
    #[prost(uint32, tag = "9")]
    pub mtime_nsec: u32,
    /// The extents holding data (SEEK_DATA to SEEK_HOLE), in order; the
    /// rest are holes. Images before `data_file` hold the data here.
    #[prost(message, repeated, tag = "10")]
    pub chunks: Vec<MemfdChunk>,
    /// The file of the image directory that holds the data of `extents`,
    /// one after the other (streamed there, never held in memory whole).
    #[prost(string, tag = "120")]
    pub data_file: String,
    /// The extents holding data, in order, with where each is in
    /// `data_file`; the rest are holes.
    #[prost(message, repeated, tag = "121")]
    pub extents: Vec<GhostExtent>,
    /// The name it was reached by (a descriptor's link or a mapping's
    /// path without " (deleted)"): where it is made again when no
    /// description names it.
    #[prost(string, tag = "122")]
    pub path: String,
    /// The device number of an unlinked character device node; 0 for
    /// other kinds (a FIFO's node has none).
    #[prost(uint64, tag = "123")]
    pub rdev: u64,
    /// A file whose name was removed while it keeps other names (which
    /// nothing tells): its file handle (name_to_handle_at), through which
    /// the restore opens the very inode again on the shared filesystem;
    /// no data is saved. Empty for an unlinked file.
    #[prost(bytes = "vec", tag = "124")]
    pub handle: Vec<u8>,
    /// The type of `handle`.
    #[prost(int32, tag = "125")]
    pub handle_type: i32,
    /// Where the filesystem of `handle` is mounted.
    #[prost(string, tag = "126")]
    pub mount: String,
    /// Its links at dump (0 for an unlinked file).
    #[prost(uint32, tag = "127")]
    pub nlink: u32,
}

/// One extent of an unlinked file's data, stored in its data file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GhostExtent {
    /// Byte offset in the file.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// Length in bytes.
    #[prost(uint64, tag = "2")]
    pub len: u64,
    /// Byte offset of its data in `GhostImage::data_file`.
    #[prost(uint64, tag = "3")]
    pub at: u64,
    /// XXH3-64 of the data.
    #[prost(uint64, tag = "4")]
    pub xxh3: u64,
}

/// A file descriptor of a process.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Fd {
    /// Descriptor number.
    #[prost(uint32, tag = "1")]
    pub fd: u32,
    /// FD_CLOEXEC.
    #[prost(bool, tag = "2")]
    pub cloexec: bool,
    /// The open file description (`FileImage::id`).
    #[prost(uint32, tag = "3")]
    pub file_id: u32,
}

/// A pipe or FIFO and the data buffered in it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PipeImage {
    /// Identity (pipefs or FIFO inode).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Bytes buffered in the pipe at dump time.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    /// Pipe capacity (F_GETPIPE_SZ).
    #[prost(uint32, tag = "3")]
    pub capacity: u32,
}

/// How a POSIX timer notifies its process (sigev_notify).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TimerNotify {
    /// Never written.
    Invalid = 0,
    /// SIGEV_SIGNAL: a signal to the process.
    Signal = 1,
    /// SIGEV_NONE: no notification.
    None = 2,
    /// SIGEV_SIGNAL | SIGEV_THREAD_ID: a signal to one thread (also how
    /// glibc implements SIGEV_THREAD).
    ThreadId = 3,
}

/// A POSIX timer (timer_create).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PosixTimer {
    /// Timer id; restored identical.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// Clock id (CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, ...).
    #[prost(sint32, tag = "2")]
    pub clock: i32,
    /// Notification kind.
    #[prost(enumeration = "TimerNotify", tag = "3")]
    pub notify: i32,
    /// Signal number sent on expiry.
    #[prost(uint32, tag = "4")]
    pub signo: u32,
    /// sigev_value (sival_ptr) carried by the signal.
    #[prost(uint64, tag = "5")]
    pub sigval: u64,
    /// Target thread of a `ThreadId` timer (`Thread::tid`).
    #[prost(uint32, tag = "6")]
    pub thread: u32,
    /// Interval in nanoseconds (0: one-shot).
    #[prost(uint64, tag = "7")]
    pub interval_ns: u64,
    /// Time left until the next expiry in nanoseconds (0: disarmed), as
    /// timer_gettime saw it; restored as is (time spent checkpointed does
    /// not count).
    #[prost(uint64, tag = "8")]
    pub value_ns: u64,
    /// Overrun count of the last delivered expiry (timer_getoverrun);
    /// recorded for diagnostics, it restarts at 0.
    #[prost(uint32, tag = "9")]
    pub overrun: u32,
    /// The timer's signal was queued and not yet delivered: the restored
    /// timer expires at once to queue it again (its siginfo is not kept
    /// among the pending signals).
    #[prost(bool, tag = "10")]
    pub pending: bool,
}

/// Kind of a file lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LockKind {
    /// Never written.
    Invalid = 0,
    /// flock(2): owned by the open file description.
    Flock = 1,
    /// POSIX record lock (F_SETLK): owned by the process.
    Posix = 2,
    /// Open file description lock (F_OFD_SETLK).
    Ofd = 3,
}

/// A file lock held through one descriptor of the process.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileLock {
    /// Kind.
    #[prost(enumeration = "LockKind", tag = "1")]
    pub kind: i32,
    /// The descriptor it is taken through.
    #[prost(uint32, tag = "2")]
    pub fd: u32,
    /// Exclusive (write) rather than shared (read).
    #[prost(bool, tag = "3")]
    pub write: bool,
    /// First byte (record locks).
    #[prost(uint64, tag = "4")]
    pub start: u64,
    /// Length in bytes; 0 reaches to the end of the file (record locks).
    #[prost(uint64, tag = "5")]
    pub len: u64,
}

/// A SysV shared memory segment attached in an address space.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysvShmMap {
    /// First address.
    #[prost(uint64, tag = "1")]
    pub start: u64,
    /// One past the last address.
    #[prost(uint64, tag = "2")]
    pub end: u64,
    /// Segment id (in the process's ipc namespace).
    #[prost(uint32, tag = "3")]
    pub shmid: u32,
    /// PROT_* bits of the area.
    #[prost(uint32, tag = "4")]
    pub prot: u32,
}

/// Ownership and permissions of a SysV IPC object.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IpcPerm {
    /// Key (0 = IPC_PRIVATE).
    #[prost(sint32, tag = "1")]
    pub key: i32,
    /// Id; restored identical.
    #[prost(uint32, tag = "2")]
    pub id: u32,
    /// Owner uid.
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    /// Owner gid.
    #[prost(uint32, tag = "4")]
    pub gid: u32,
    /// Mode (permission bits, with SHM_DEST/SHM_LOCKED for segments).
    #[prost(uint32, tag = "5")]
    pub mode: u32,
}

/// A SysV shared memory segment.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysvShm {
    /// Key, id, owner, mode.
    #[prost(message, optional, tag = "1")]
    pub perm: Option<IpcPerm>,
    /// Size in bytes.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Saved non-zero pages; `vaddr` is the offset in the segment.
    #[prost(message, repeated, tag = "3")]
    pub pages: Vec<PageRun>,
    /// Name of the pages file in the image directory.
    #[prost(string, tag = "4")]
    pub pages_file: String,
    /// The receiver's precopy file holding the segment's pre-copied
    /// pages: `precopied` runs read from it at file offset = offset in
    /// the segment. Empty without such runs.
    #[prost(string, tag = "250")]
    pub precopy_file: String,
}

/// A SysV semaphore set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysvSem {
    /// Key, id, owner, mode.
    #[prost(message, optional, tag = "1")]
    pub perm: Option<IpcPerm>,
    /// Value of each semaphore.
    #[prost(uint32, repeated, tag = "2")]
    pub values: Vec<u32>,
}

/// One message of a SysV message queue.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysvMsg {
    /// mtype.
    #[prost(int64, tag = "1")]
    pub mtype: i64,
    /// mtext.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// A SysV message queue and its messages, oldest first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysvMsgQueue {
    /// Key, id, owner, mode.
    #[prost(message, optional, tag = "1")]
    pub perm: Option<IpcPerm>,
    /// msg_qbytes: the queue's capacity.
    #[prost(uint64, tag = "2")]
    pub qbytes: u64,
    /// Messages in queue order.
    #[prost(message, repeated, tag = "3")]
    pub messages: Vec<SysvMsg>,
}

/// A per-namespace IPC setting (/proc/sys/kernel/shmmax, ...).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IpcSysctl {
    /// Path under /proc/sys.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value as read.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// What an ipc namespace owned by the tree holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IpcNamespace {
    /// Shared memory segments.
    #[prost(message, repeated, tag = "1")]
    pub shm: Vec<SysvShm>,
    /// Semaphore sets.
    #[prost(message, repeated, tag = "2")]
    pub sem: Vec<SysvSem>,
    /// Message queues.
    #[prost(message, repeated, tag = "3")]
    pub msg: Vec<SysvMsgQueue>,
    /// Per-namespace limits.
    #[prost(message, repeated, tag = "4")]
    pub sysctls: Vec<IpcSysctl>,
}

/// An eventfd counter (fdinfo "eventfd-count", "eventfd-semaphore").
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventfdImage {
    /// The counter value.
    #[prost(uint64, tag = "1")]
    pub count: u64,
    /// EFD_SEMAPHORE: each read takes one from the counter.
    #[prost(bool, tag = "2")]
    pub semaphore: bool,
}

/// A timerfd (fdinfo "clockid", "settime flags", "it_value", "it_interval",
/// "ticks").
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimerfdImage {
    /// The clock (CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME, ...).
    #[prost(uint32, tag = "1")]
    pub clockid: u32,
    /// timerfd_settime flags (TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET).
    #[prost(uint32, tag = "2")]
    pub settime_flags: u32,
    /// Time left until the next expiry at dump, in nanoseconds (0: disarmed).
    #[prost(uint64, tag = "3")]
    pub value_ns: u64,
    /// Period in nanoseconds (0: one-shot).
    #[prost(uint64, tag = "4")]
    pub interval_ns: u64,
    /// Expirations not yet read.
    #[prost(uint64, tag = "5")]
    pub ticks: u64,
    /// Next expiry on `clockid` at dump, in nanoseconds since that clock's
    /// epoch; what an absolute timer is re-armed with (0: disarmed).
    #[prost(uint64, tag = "6")]
    pub abs_ns: u64,
}

/// A signalfd.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignalfdImage {
    /// The signals it reads (bit N-1 for signal N).
    #[prost(uint64, tag = "1")]
    pub sigmask: u64,
}

/// An epoll instance and what is registered in it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EpollImage {
    /// The process (image pid) whose descriptors the registrations name;
    /// they are made inside it on restore.
    #[prost(uint32, tag = "1")]
    pub owner: u32,
    /// Registrations, in the order they are made again.
    #[prost(message, repeated, tag = "2")]
    pub items: Vec<EpollItem>,
}

/// One epoll registration (fdinfo "tfd: ... events: ... data: ...").
#[derive(Clone, PartialEq, prost::Message)]
pub struct EpollItem {
    /// The registered descriptor number in the owner.
    #[prost(uint32, tag = "1")]
    pub tfd: u32,
    /// The events mask, with EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE and
    /// EPOLLWAKEUP as set (a fired one-shot item keeps only those).
    #[prost(uint32, tag = "2")]
    pub events: u32,
    /// The user data returned with events.
    #[prost(uint64, tag = "3")]
    pub data: u64,
}

/// An inotify instance and its watches.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InotifyImage {
    /// Watches in watch-descriptor order.
    #[prost(message, repeated, tag = "1")]
    pub watches: Vec<InotifyWatch>,
    /// The image pid of the process whose root and mount namespace the
    /// watches' paths are seen from (as `FanotifyImage::seen_from`).
    #[prost(uint32, tag = "230")]
    pub seen_from: u32,
}

/// One inotify watch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InotifyWatch {
    /// Watch descriptor; restore must give back the same number.
    #[prost(sint32, tag = "1")]
    pub wd: i32,
    /// IN_* event mask and flags.
    #[prost(uint32, tag = "2")]
    pub mask: u32,
    /// Path of the watched inode, resolved at dump from its file handle.
    #[prost(string, tag = "3")]
    pub path: String,
    /// Inode number of the watched inode, to notice it was replaced.
    #[prost(uint64, tag = "4")]
    pub ino: u64,
    /// Device of the watched inode (st_dev).
    #[prost(uint64, tag = "5")]
    pub dev: u64,
    /// The watched inode was unlinked and is still open in the tree: its
    /// ghost (`GhostImage::id`), watched again through a descriptor of
    /// it at restore; `path` is then the name it had. 0: a linked inode.
    #[prost(uint64, tag = "180")]
    pub ghost_id: u64,
}

/// A memfd object (one per inode; several descriptions may share it).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemfdImage {
    /// The name given to memfd_create (without the "memfd:" prefix).
    #[prost(string, tag = "1")]
    pub name: String,
    /// F_GET_SEALS.
    #[prost(uint32, tag = "2")]
    pub seals: u32,
    /// Size in bytes.
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Inode at dump: the `Vma::shmem_id` of its shared mappings.
    #[prost(uint64, tag = "4")]
    pub ino: u64,
    /// The parts of the content that hold data (holes are left out).
    #[prost(message, repeated, tag = "5")]
    pub chunks: Vec<MemfdChunk>,
    /// A memfd on hugetlbfs (MFD_HUGETLB): the size of its pages in
    /// bytes, 0 otherwise. Its `chunks` are then exactly the huge pages it
    /// held, each whole (zero ones too), and `ino` has bit 63 set, as the
    /// `Vma::shmem_id` of its mappings.
    #[prost(uint64, tag = "220")]
    pub huge_page_size: u64,
}

/// A piece of a memfd's or an unlinked file's content.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemfdChunk {
    /// Byte offset in the memfd.
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    /// The bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// The process a pidfd refers to: a member of the tree, or one that has
/// exited and been reaped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PidfdImage {
    /// The target's image pid (`Process::pid`).
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// The target's pid as the holder of the pidfd sees it.
    #[prost(uint32, tag = "2")]
    pub ns_pid: u32,
    /// The target had exited and been reaped: its wait status, as
    /// PIDFD_GET_INFO told it (`pid` and `ns_pid` are then 0). The restore
    /// makes a pidfd of a process that ended the same way.
    #[prost(int32, optional, tag = "180")]
    pub reaped_status: Option<i32>,
}

/// Connection state of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SocketState {
    /// Never written.
    Invalid = 0,
    /// Not connected and not listening (bound or not).
    Unconnected = 1,
    /// Listening for connections.
    Listening = 2,
    /// Connected to a peer (unix: `peer_ino`; inet: `peer`).
    Connected = 3,
}

/// An IPv4 or IPv6 address and port.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InetAddr {
    /// 4 (IPv4) or 16 (IPv6) address bytes, network order.
    #[prost(bytes = "vec", tag = "1")]
    pub ip: Vec<u8>,
    /// Port.
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// IPv6 scope id (link-local addresses).
    #[prost(uint32, tag = "3")]
    pub scope_id: u32,
}

/// A socket option to set again at restore: level, name and raw value as
/// getsockopt returned it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SockOpt {
    /// SOL_SOCKET, IPPROTO_TCP, IPPROTO_IPV6, ...
    #[prost(int32, tag = "1")]
    pub level: i32,
    /// The option (SO_REUSEADDR, TCP_NODELAY, ...).
    #[prost(int32, tag = "2")]
    pub name: i32,
    /// Raw value.
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
}

/// The state of a TCP connection, by the kernel's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TcpState {
    /// Not recorded: images written before the states were (every
    /// connection then was established).
    Unrecorded = 0,
    /// Established.
    Established = 1,
    /// Our SYN sent, no answer yet (a connect in progress).
    SynSent = 2,
    /// Our FIN sent (or queued behind data), not acknowledged.
    FinWait1 = 4,
    /// Our FIN acknowledged, the peer's not received.
    FinWait2 = 5,
    /// The peer's FIN received, ours not sent.
    CloseWait = 8,
    /// The peer's FIN received, then ours sent (or queued), not
    /// acknowledged.
    LastAck = 9,
    /// Both FINs crossed: ours sent (or queued) and not acknowledged, the
    /// peer's received.
    Closing = 11,
}

/// A TCP connection as TCP_REPAIR shows it: established, half-closed or
/// closing (`state`), or still connecting (SYN_SENT). Sequence numbers
/// and queues count data only: a FIN is told by the state (and
/// `fin_unsent`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TcpConnImage {
    /// Sequence number after the last byte of data queued for sending
    /// (write_seq, less our FIN when one is queued). SYN_SENT: the
    /// sequence number after the SYN (the initial one plus 1).
    #[prost(uint32, tag = "1")]
    pub snd_seq: u32,
    /// Next sequence number expected from the peer (rcv_nxt), less the
    /// peer's FIN when it was received.
    #[prost(uint32, tag = "2")]
    pub rcv_seq: u32,
    /// Send queue: bytes not yet acknowledged by the peer, sent or not.
    #[prost(bytes = "vec", tag = "3")]
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were never sent.
    #[prost(uint32, tag = "4")]
    pub unsent: u32,
    /// Receive queue: bytes received and not yet read.
    #[prost(bytes = "vec", tag = "5")]
    pub recv_queue: Vec<u8>,
    /// Maximum segment size (TCP_MAXSEG).
    #[prost(uint32, tag = "6")]
    pub mss: u32,
    /// TCPI_OPT_* bits negotiated: 1 timestamps, 2 SACK, 4 window scaling.
    #[prost(uint32, tag = "7")]
    pub options: u32,
    /// Send window scale.
    #[prost(uint32, tag = "8")]
    pub snd_wscale: u32,
    /// Receive window scale.
    #[prost(uint32, tag = "9")]
    pub rcv_wscale: u32,
    /// TCP timestamp clock value (TCP_TIMESTAMP).
    #[prost(uint32, tag = "10")]
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW: snd_wl1.
    #[prost(uint32, tag = "11")]
    pub snd_wl1: u32,
    /// TCP_REPAIR_WINDOW: snd_wnd.
    #[prost(uint32, tag = "12")]
    pub snd_wnd: u32,
    /// TCP_REPAIR_WINDOW: max_window.
    #[prost(uint32, tag = "13")]
    pub max_window: u32,
    /// TCP_REPAIR_WINDOW: rcv_wnd.
    #[prost(uint32, tag = "14")]
    pub rcv_wnd: u32,
    /// TCP_REPAIR_WINDOW: rcv_wup.
    #[prost(uint32, tag = "15")]
    pub rcv_wup: u32,
    /// The connection's state (`TcpState`; 0 in images before it:
    /// established).
    #[prost(enumeration = "TcpState", tag = "16")]
    pub state: i32,
    /// Our FIN is queued but was never sent (behind unsent data, or a
    /// closed window): it goes out after the data, as the kernel would
    /// have sent it.
    #[prost(bool, tag = "17")]
    pub fin_unsent: bool,
    /// SO_RCVBUF as getsockopt showed it (the kernel's sk_rcvbuf; 0 in
    /// images before it): the window the connection advertises depends
    /// on it.
    #[prost(uint32, tag = "18")]
    pub rcvbuf: u32,
    /// SO_SNDBUF as getsockopt showed it (0 in images before it).
    #[prost(uint32, tag = "19")]
    pub sndbuf: u32,
}

impl TcpConnImage {
    /// The state (established for images before states were recorded);
    /// None for a number this build does not know.
    pub fn tcp_state(&self) -> Option<TcpState> {
        match TcpState::try_from(self.state) {
            Ok(TcpState::Unrecorded) => Some(TcpState::Established),
            Ok(s) => Some(s),
            Err(_) => None,
        }
    }
}

/// A socket: what every family shares plus the family's own part.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketImage {
    /// Identity (socket inode at dump); unix peers refer to it.
    #[prost(uint64, tag = "1")]
    pub ino: u64,
    /// AF_UNIX, AF_INET, AF_INET6 or AF_NETLINK.
    #[prost(uint32, tag = "2")]
    pub family: u32,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET or SOCK_RAW.
    #[prost(uint32, tag = "3")]
    pub sock_type: u32,
    /// Protocol (IPPROTO_TCP, IPPROTO_UDP, NETLINK_ROUTE, ...).
    #[prost(uint32, tag = "4")]
    pub protocol: u32,
    /// Connection state.
    #[prost(enumeration = "SocketState", tag = "5")]
    pub state: i32,
    /// The network namespace it lives in (`Namespaces::net_ns` of the
    /// process owning it), 0 for the namespace lpm ran in.
    #[prost(uint64, tag = "6")]
    pub net_ns: u64,
    /// Unix: bound name (a path, or abstract with a leading NUL byte);
    /// empty when unbound.
    #[prost(bytes = "vec", tag = "7")]
    pub name: Vec<u8>,
    /// Unix: identity of the peer socket (0: none or closed).
    #[prost(uint64, tag = "8")]
    pub peer_ino: u64,
    /// Listen backlog.
    #[prost(uint32, tag = "9")]
    pub backlog: u32,
    /// Shutdown bits (1: receive side, 2: send side).
    #[prost(uint32, tag = "10")]
    pub shutdown: u32,
    /// Unix: the receive queue, one entry per message (datagram and
    /// seqpacket) or one entry with every byte (stream).
    #[prost(bytes = "vec", repeated, tag = "11")]
    pub queue: Vec<Vec<u8>>,
    /// Options to set again.
    #[prost(message, repeated, tag = "12")]
    pub opts: Vec<SockOpt>,
    /// Inet: local address (unbound: empty ip and port 0).
    #[prost(message, optional, tag = "13")]
    pub local: Option<InetAddr>,
    /// Inet: peer address when connected.
    #[prost(message, optional, tag = "14")]
    pub peer: Option<InetAddr>,
    /// TCP: the established connection.
    #[prost(message, optional, tag = "15")]
    pub tcp: Option<TcpConnImage>,
    /// Netlink: port id it is bound to (0: unbound).
    #[prost(uint32, tag = "16")]
    pub nl_portid: u32,
    /// Netlink: multicast groups joined (group numbers).
    #[prost(uint32, repeated, tag = "17")]
    pub nl_groups: Vec<u32>,
    /// Unix: a pair end whose peer was closed (shut down both ways).
    #[prost(bool, tag = "18")]
    pub peer_closed: bool,
    /// The classic BPF filter attached (SO_ATTACH_FILTER), as raw
    /// `struct sock_filter` instructions (8 bytes each); empty: none.
    #[prost(bytes = "vec", tag = "19")]
    pub filter: Vec<u8>,
    /// The filter is locked (SO_LOCK_FILTER).
    #[prost(bool, tag = "20")]
    pub filter_locked: bool,
    /// Unix: bound to a path that was unlinked since (or now leads to
    /// another file): the restore binds it and unlinks the path again.
    #[prost(bool, tag = "21")]
    pub unlinked: bool,
    /// Unix: what travels with the messages of `queue` besides their bytes
    /// (descriptors in flight, credentials, a datagram's sender), one entry
    /// per message that carries any.
    #[prost(message, repeated, tag = "100")]
    pub queue_meta: Vec<QueueMeta>,
    /// Unix: a relative `name` was bound from this directory (absolute, as
    /// the binder's root sees it); the restore binds from it again.
    #[prost(string, tag = "101")]
    pub bind_dir: String,
    /// Unix: connected to a peer outside the tree that the caller declared
    /// external (`--ext-unix-sk`); `peer_name` is its name, if any.
    #[prost(bool, tag = "102")]
    pub external_peer: bool,
    /// Unix: the external peer's bound name (empty: unnamed, which no
    /// restore can reach).
    #[prost(bytes = "vec", tag = "103")]
    pub peer_name: Vec<u8>,
    /// Unix listener: the connections waiting in its accept queue, in
    /// order, by the inode of each embryo socket (a socket image of its
    /// own that no descriptor holds, connected to its client).
    #[prost(uint64, repeated, tag = "104")]
    pub accept_queue: Vec<u64>,
    /// Netlink: the port id it is connected to (connect(2); 0 with no
    /// group: the kernel), with `state` Connected.
    #[prost(uint32, tag = "160")]
    pub nl_peer_portid: u32,
    /// Netlink: the multicast group mask it is connected to.
    #[prost(uint32, tag = "161")]
    pub nl_peer_groups: u32,
    /// Packet: what an AF_PACKET socket holds besides its type and
    /// protocol.
    #[prost(message, optional, tag = "162")]
    pub packet: Option<PacketImage>,
    /// Inet: its place (1, 2, ...) in the SO_REUSEPORT group of its
    /// address, in the order the group was formed; 0: not in a group of
    /// several. The restore binds (or listens) the members in that order.
    #[prost(uint32, tag = "163")]
    pub reuseport_rank: u32,
    /// Inet, netlink and packet: the owner of the socket (its inode's uid
    /// and gid: the filesystem ids of its creator), which the kernel
    /// keeps as the socket's uid (sk_uid: SO_REUSEPORT groups join only
    /// sockets of one uid; routing rules and firewall owner matches see
    /// it). Created by a thread with these filesystem ids at restore.
    #[prost(uint32, tag = "164")]
    pub owner_uid: u32,
    /// See `owner_uid`.
    #[prost(uint32, tag = "165")]
    pub owner_gid: u32,
}

/// What one message of a unix receive queue carries besides its bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueueMeta {
    /// Index of the message in `SocketImage::queue`.
    #[prost(uint32, tag = "1")]
    pub entry: u32,
    /// Descriptors in flight with it (SCM_RIGHTS), by `FileImage::id`, in
    /// order.
    #[prost(uint32, repeated, tag = "2")]
    pub files: Vec<u32>,
    /// The sender's credentials were recorded (SCM_CREDENTIALS, the
    /// receiver has SO_PASSCRED).
    #[prost(bool, tag = "3")]
    pub has_creds: bool,
    /// Sender pid as the receiver saw it.
    #[prost(int32, tag = "4")]
    pub pid: i32,
    /// Sender uid.
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    /// Sender gid.
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    /// Datagram: the sender's bound name (empty: unnamed).
    #[prost(bytes = "vec", tag = "7")]
    pub from: Vec<u8>,
}

/// A packet socket (AF_PACKET): where it is bound and its PACKET_*
/// state. Rings (PACKET_RX_RING, PACKET_TX_RING) are refused at
/// checkpoint, so none is recorded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PacketImage {
    /// The protocol it is bound to (network byte order, as sll_protocol).
    #[prost(uint32, tag = "1")]
    pub protocol: u32,
    /// The interface index it is bound to (0: every interface).
    #[prost(uint32, tag = "2")]
    pub ifindex: u32,
    /// The name that interface had (the restore checks the index names
    /// the same interface).
    #[prost(string, tag = "3")]
    pub ifname: String,
    /// It was bound (bind(2)); an unbound socket keeps its protocol from
    /// socket(2).
    #[prost(bool, tag = "4")]
    pub bound: bool,
    /// The fanout group word as PACKET_FANOUT reads it (id | mode << 16 |
    /// flags << 16); 0: none.
    #[prost(uint32, tag = "5")]
    pub fanout: u32,
    /// Memberships (PACKET_ADD_MEMBERSHIP), as packet_diag lists them.
    #[prost(message, repeated, tag = "6")]
    pub memberships: Vec<PacketMembership>,
}

/// One PACKET_ADD_MEMBERSHIP of a packet socket.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PacketMembership {
    /// Interface index.
    #[prost(uint32, tag = "1")]
    pub ifindex: u32,
    /// PACKET_MR_MULTICAST, PROMISC, ALLMULTI or UNICAST.
    #[prost(uint32, tag = "2")]
    pub mr_type: u32,
    /// The address (multicast and unicast).
    #[prost(bytes = "vec", tag = "3")]
    pub address: Vec<u8>,
    /// How many times it was added (each one counts).
    #[prost(uint32, tag = "4")]
    pub count: u32,
}

/// What is left of a process that exited and was not yet waited for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Zombie {
    /// The wait status its parent will collect (stat field 52): exit code
    /// << 8, or the number of the signal that killed it.
    #[prost(uint32, tag = "1")]
    pub exit_status: u32,
}

/// One seccomp BPF filter.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SeccompFilter {
    /// Raw `struct sock_filter` array (8 bytes per instruction), as
    /// PTRACE_SECCOMP_GET_FILTER returned it.
    #[prost(bytes = "vec", tag = "1")]
    pub insns: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_* the filter was installed with that the
    /// kernel reports (PTRACE_SECCOMP_GET_METADATA: FLAG_LOG).
    #[prost(uint64, tag = "2")]
    pub flags: u64,
}

/// The seccomp state of a process (mode 2, the same chain in every thread).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Seccomp {
    /// Filters, oldest first (the order they are installed again).
    #[prost(message, repeated, tag = "1")]
    pub filters: Vec<SeccompFilter>,
}

/// One end of a pseudo-terminal pair held in the tree. The master carries
/// the pty's state; a slave only names its pty (whose master must be in
/// the tree). The index is the one at dump: restore gets a new one from
/// the host's devpts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TtyImage {
    /// The pty's index at dump (N of /dev/pts/N).
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// This file is the master (/dev/ptmx); otherwise the slave.
    #[prost(bool, tag = "2")]
    pub master: bool,
    /// Master: raw kernel `struct termios` of the pty (TCGETS, 36 bytes on
    /// x86_64).
    #[prost(bytes = "vec", tag = "3")]
    pub termios: Vec<u8>,
    /// Master: window size rows, cols, xpixel, ypixel.
    #[prost(uint32, repeated, tag = "4")]
    pub winsize: Vec<u32>,
    /// Master: packet mode (TIOCPKT).
    #[prost(bool, tag = "5")]
    pub packet: bool,
    /// Master: the slave is locked (TIOCSPTLCK).
    #[prost(bool, tag = "6")]
    pub locked: bool,
    /// Master: pid of the session leader whose controlling terminal this
    /// pty is (0: none).
    #[prost(uint32, tag = "7")]
    pub session: u32,
    /// Master: the foreground process group as the session leader sees it
    /// (0: none).
    #[prost(uint32, tag = "8")]
    pub fg_pgrp: u32,
    /// What the slave side wrote that the master has not read yet (master
    /// only): put back through the slave at restore, output processing off.
    #[prost(bytes = "vec", tag = "20")]
    pub pending_output: Vec<u8>,
    /// What was written to the master that the slave side has not read yet
    /// (master only; a slave in non-canonical mode: a canonical line's
    /// boundaries cannot be read back): put back through the master at
    /// restore, input processing off.
    #[prost(bytes = "vec", tag = "21")]
    pub pending_input: Vec<u8>,
    /// Master: owner of the slave's device node (/dev/pts/N), as grantpt
    /// or chown left it.
    #[prost(uint32, tag = "9")]
    pub slave_uid: u32,
    /// Master: group of the slave's device node.
    #[prost(uint32, tag = "10")]
    pub slave_gid: u32,
    /// Master: permission bits of the slave's device node (`mesg n`
    /// clears the group's write bit); 0 in images that predate it, which
    /// leave the node as the restoring host's devpts makes it.
    #[prost(uint32, tag = "11")]
    pub slave_mode: u32,
    /// Slave of a pty whose master was outside the tree (the user's
    /// terminal of a shell job): restored on the restoring terminal, which
    /// takes `termios`; `fg_pgrp` is then the host pid of the tree's group
    /// that was in the foreground (0: none of the tree's).
    #[prost(bool, tag = "200")]
    pub external: bool,
    /// Opened through /dev/tty (device 5:0), standing for `index`, the
    /// process's controlling terminal: each process holding it opens
    /// /dev/tty again itself once it has that terminal.
    #[prost(bool, tag = "201")]
    pub dev_tty: bool,
}

/// One message of a POSIX message queue.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MqMessage {
    /// Priority (mq_send).
    #[prost(uint32, tag = "1")]
    pub prio: u32,
    /// The bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// A POSIX message queue of an ipc namespace the tree owns.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MqueueImage {
    /// Name with its leading slash ("/NAME").
    #[prost(string, tag = "1")]
    pub name: String,
    /// Capacity in messages (mq_maxmsg).
    #[prost(int64, tag = "2")]
    pub maxmsg: i64,
    /// Largest message in bytes (mq_msgsize).
    #[prost(int64, tag = "3")]
    pub msgsize: i64,
    /// Permission bits of the queue.
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    /// Owner uid.
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    /// Owner gid.
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    /// Queued messages in the order they are received (highest priority
    /// first, oldest first within a priority).
    #[prost(message, repeated, tag = "7")]
    pub messages: Vec<MqMessage>,
}
