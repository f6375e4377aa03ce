//! What the engine supports, kind by kind: printed by `lpm check` and kept
//! in step with docs/support.md by a test.

/// How far the engine goes with one kind of kernel state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Checkpointed and restored.
    Yes,
    /// Checkpointed and restored, with the limits named in the note.
    Partly,
    /// Refused at checkpoint, by name.
    Refused,
}

/// One row: the kind of state, how far it is supported, and a note.
pub type Row = (&'static str, Support, &'static str);

/// Every kind of state the engine knows of.
pub const KINDS: &[Row] = &[
    ("registers and xsave state", Support::Yes, "general registers, fs/gs base, x87/SSE/AVX/AVX-512; CPU features checked at restore"),
    ("threads", Support::Yes, "any number, names, rseq, robust list, tid address, nice, timer slack"),
    ("private memory", Support::Yes, "anonymous, heap, stacks, PROT_NONE, private file mappings; zero pages without data; madvise advice, mlock, MAP_NORESERVE, MAP_DROPPABLE, commit charge, mprotect rights; shadow stacks and sealed areas refused"),
    ("copy-on-write sharing", Support::Partly, "pages shared since a fork stay shared after restore and migration; moved shared pages and histories no fork order gives refused; sharing with processes outside the tree not kept"),
    ("shared memory", Support::Yes, "MAP_SHARED anonymous and memfd mappings, shared between processes; private mappings of them with their own pages; a migration pre-copies MAP_SHARED anonymous objects and SysV segments (sent again in the next round after a fork or exit during pre-copy; memfds whole in the stop)"),
    ("vdso areas", Support::Yes, "[vvar], [vvar_vclock], [vdso] at their recorded addresses (same sizes required); any of them unmapped by the process stays unmapped"),
    ("hugetlbfs memory", Support::Partly, "anonymous MAP_HUGETLB areas, private and shared (one object for all sharers), MFD_HUGETLB memfds mapped shared or held by descriptors, in their page size, the same huge pages allocated; free huge pages checked before a restore and at a migration's validation; sent whole in a migration's stop; copy-on-write sharing of huge pages not kept; private mappings of hugetlbfs memfds, SysV SHM_HUGETLB segments, files of hugetlbfs mounts and zero huge pages nobody maps refused"),
    ("device mappings", Support::Refused, "I/O and PFN mappings (VmFlags io, pf), named by range: their memory is a device's, which no image can hold"),
    ("file descriptor tables", Support::Partly, "per process or shared with the parent (CLONE_FILES); shared otherwise, or a thread's own, refused"),
    ("file owners for signal-driven I/O", Support::Yes, "F_SETOWN_EX thread, process or group of the tree with the setter's uids, F_SETSIG, O_ASYNC"),
    (
        "regular files",
        Support::Yes,
        "path, offset, flags, O_PATH (symbolic links too); unlinked files of any size (streamed) as one inode with holes, mode, owner, atime and mtime, also mapped; removed directories held open or as cwd (a dead process's /proc directory too); unlinked FIFOs and device nodes; files whose name was removed while others remain, by file handle",
    ),
    ("character devices", Support::Partly, "major 1 (null, zero, full, random, urandom); others refused"),
    ("pipes and FIFOs", Support::Yes, "with buffered data and capacity, each description with its own flags; packet-mode data refused"),
    ("unix sockets", Support::Partly, "stream, dgram, seqpacket; pairs, names (relative, or unlinked paths that stay unlinked), listeners with their accept queues, connections and queues inside the tree, datagrams from named senders of the tree, SCM_RIGHTS in flight (sockets, pipes, files, eventfds, memfds), peers outside the tree with --ext-unix-sk; SO_PASSCRED with data queued, waiting connections holding data and other peers outside the tree refused"),
    ("TCP and UDP sockets", Support::Partly, "IPv4/IPv6 listening, bound, options, shutdown state; TCP connections by TCP_REPAIR in every state a program holds (established, SYN_SENT, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING), inside the tree or outside it with --tcp-established (lpm locks the network); accept queues, handshakes in a listener's queue, connections ended but not closed and queued UDP refused (a migration waits these out before and at its stop)"),
    ("ICMP (ping) sockets", Support::Yes, "identifier, address, peer, options, filter; the namespace's ping_group_range; queued replies refused at this moment"),
    ("UDP-Lite sockets", Support::Yes, "as UDP, with UDPLITE_SEND_CSCOV and UDPLITE_RECV_CSCOV"),
    ("raw sockets", Support::Yes, "any protocol, IPv4 and IPv6: address, peer, IP_HDRINCL, ICMP(V6)_FILTER, IPV6_CHECKSUM, options, filter"),
    ("packet sockets", Support::Partly, "SOCK_RAW and SOCK_DGRAM: protocol, interface (same index and name), PACKET_* options, memberships, fanout group; rings refused (the frame the kernel fills next is neither shown nor settable: a ring made again starts at frame 0), program-driven fanout refused"),
    ("SO_REUSEPORT groups", Support::Partly, "UDP and TCP listener groups formed again in the kernel's order; the order after a member left is not visible"),
    ("non-local binds", Support::Yes, "IP_FREEBIND, IP_TRANSPARENT and their IPv6 kin, set before bind"),
    ("netlink sockets", Support::Partly, "protocol, port id, groups, connected destination (kernel or a port of the tree); unread data and peers outside the tree refused"),
    ("socket filters", Support::Partly, "classic BPF (SO_ATTACH_FILTER) with SO_LOCK_FILTER; eBPF refused"),
    ("other socket families", Support::Refused, "all but unix, inet, netlink and packet (AF_VSOCK, AF_ALG, AF_XDP, ...)"),
    ("eventfd", Support::Yes, "count and semaphore mode"),
    ("timerfd", Support::Yes, "clock, time left, interval, unread expirations"),
    ("signalfd", Support::Yes, "mask"),
    ("epoll", Support::Yes, "every registration, nested epoll, fired one-shots"),
    ("inotify", Support::Partly, "watches with their wds and masks, also on unlinked files the tree holds open (watched again through the remade ghost), by path in the holder's own mount namespace (a partition's); pending events refused"),
    ("fanotify", Support::Partly, "fanotify_init flags and event flags, marks on inodes, mounts and filesystems with their flags, masks and ignored masks, by path in the holder's own mount namespace (a partition's mounts); queued events, permission events and marks on inodes without a path refused"),
    ("memfd", Support::Yes, "name, seals, content, mappings sharing the fd's object (descriptors closed too), descriptions reopened through /proc"),
    ("pidfd", Support::Partly, "targets inside the tree (zombies too) and processes that exited and were reaped (their wait status, core flag included); threads and processes outside the tree refused"),
    ("namespace descriptors", Support::Partly, "net, uts, ipc, mnt and pid namespaces the tree owns (a partition's own network namespace too); the host's and other trees' namespaces, namespaces no process of the tree is in, user, cgroup and time refused"),
    ("signals", Support::Yes, "actions, masks, pending (per thread and shared), sigaltstack"),
    ("stopped processes", Support::Yes, "group stop by SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU comes back stopped by the same signal"),
    ("traced processes", Support::Refused, "a thread traced by another process (debugger): no call attaches the tracer again"),
    ("memory-deny-write-execute", Support::Refused, "PR_SET_MDWE, named at checkpoint: the restore does not set it again yet"),
    ("itimers", Support::Yes, "real, virtual, prof; time left as at checkpoint"),
    ("POSIX timers", Support::Yes, "same ids, clocks, notification, interval; overrun restarts at 0"),
    ("file locks", Support::Partly, "flock, POSIX, OFD; waiting requests and leases refused"),
    ("SysV IPC", Support::Partly, "shm, sem, msg in a tree-owned ipc namespace with the same ids; SEM_UNDO not restored"),
    ("POSIX shared memory", Support::Yes, "as files under /dev/shm"),
    ("POSIX message queues", Support::Partly, "name, attributes, mode, owner, messages with priorities in a tree-owned ipc namespace; mq_notify and unlinked queues refused"),
    ("credentials", Support::Yes, "uids, gids, groups, all capability sets, securebits"),
    ("process attributes", Support::Yes, "rlimits, cwd, root, umask, personality, no_new_privs, dumpable, THP disable, subreaper, pdeathsig, oom_score_adj, membarrier registrations"),
    ("scheduling policies", Support::Partly, "per thread: SCHED_OTHER, BATCH, IDLE, FIFO, RR with priority, nice, reset-on-fork, utilization clamps; SCHED_DEADLINE refused"),
    ("process tree", Support::Partly, "same pids in every pid namespace, sessions, process groups (also those whose leader exited); a session neither a process's own nor its parent's refused"),
    ("namespaces", Support::Partly, "pid, mount (private /proc; masks over host paths: empty read-only tmpfs, read-only binds of the null device), uts, ipc, net owned by the tree; other mounts refused"),
    ("user namespaces", Support::Refused, "a process's ids and capabilities are relative to its user namespace's maps, which the restore does not make (owner, maps, the namespaces it owns): refused rather than restored with the host's ids"),
    ("zombies", Support::Partly, "pid, parent, group, session, wait status (with the core flag where core_pattern writes into the working directory), creds, signal state, limits"),
    ("seccomp filters", Support::Partly, "mode 2, the same chain in every thread; strict mode and per-thread chains refused"),
    ("terminals and ptys", Support::Partly, "pty pairs inside the tree: termios, window size, packet mode, lock, slave owner and mode, data pending both ways (up to 4000 bytes each; typed input in canonical mode refused), the controlling terminal of a whole session (leader, descendants, foreground group, members that let it go); the pts index may change; a shell job's terminal (--shell-job) on the restoring terminal; /dev/tty of the controlling terminal; other slaves of masters outside the tree and other terminals refused"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn docs_count_the_kinds() {
        let doc = include_str!("../../../docs/support.md");
        let n = |w: super::Support| super::KINDS.iter().filter(|k| std::mem::discriminant(&k.1) == std::mem::discriminant(&w)).count();
        let line = format!("{} kinds: {} supported, {} partly", super::KINDS.len(), n(super::Support::Yes), n(super::Support::Partly));
        assert!(doc.contains(&line), "docs/support.md does not say {line:?}");
        assert!(doc.contains(&format!(
            "partly (the limits in each row, most of them\nrefused by name with the reason), {} refused",
            n(super::Support::Refused)
        )));
    }

    #[test]
    fn docs_list_every_kind() {
        let doc = include_str!("../../../docs/support.md");
        for (kind, _, _) in super::KINDS {
            assert!(doc.contains(kind), "docs/support.md does not mention {kind:?}");
        }
    }
}
