//! The kernel seam of lpm: safe wrappers for the interfaces that nix and
//! rustix lack (ptrace regsets and remote syscalls, clone3 with set_tid,
//! pidfd_getfd, PR_SET_MM_MAP, userfaultfd write-protect, PAGEMAP_SCAN,
//! TCP_REPAIR). All of lpm's unsafe code lives here.

pub mod probe;
