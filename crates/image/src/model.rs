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
    /// This process (the first of its pid namespace) mounts that
    /// namespace's procfs on /proc of its mount namespace
    /// (`unshare --mount-proc`).
    #[prost(bool, tag = "4")]
    pub mount_proc: bool,
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
    /// The kernel's [vdso].
    Vdso = 5,
    /// The kernel's [vvar] data pages.
    Vvar = 6,
    /// The kernel's [vvar_vclock] pages (kernel 6.13 and later).
    VvarVclock = 7,
    /// The legacy [vsyscall] page at a fixed address; never moved.
    Vsyscall = 8,
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
    /// Backing file path, or the bracketed name ([heap], [stack]).
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
