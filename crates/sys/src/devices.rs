//! A cgroup's device filter: a BPF_PROG_TYPE_CGROUP_DEVICE program on a
//! cgroup2 directory (cgroup v2's device controller; it works in a
//! hybrid layout's controller-less cgroup2 too), which the kernel asks
//! before any process of the cgroup opens a device node or makes one.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// One BPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

/// r(dst) = *(u32 *)(r(src) + off)
const fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
/// if r(dst) == imm goto +off
const fn jeq(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}
/// if r(dst) != imm goto +off
const fn jne(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}
/// if r(dst) < imm goto +off (unsigned)
const fn jlt(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0xa5, dst, 0, off, imm)
}
/// if r(dst) > imm goto +off (unsigned)
const fn jgt(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x25, dst, 0, off, imm)
}
/// goto +off
const fn ja(off: i16) -> Insn {
    insn(0x05, 0, 0, off, 0)
}
/// r(dst) = imm
const fn mov(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}
const EXIT: Insn = insn(0x95, 0, 0, 0, 0);

/// The usual character devices of a container, Docker's list without the
/// console and tun: null (1:3), zero (1:5), full (1:7), random (1:8),
/// urandom (1:9), tty (5:0), ptmx (5:2) and the pty slaves (136-143:*);
/// making any node (mknod) is allowed, opening it is not.
const USUAL: [Insn; 26] = [
    // r2 = access_type: (access << 16) | type; r4 = major; r5 = minor.
    ldx_w(2, 1, 0),
    insn(0xbf, 3, 2, 0, 0),      // r3 = r2
    insn(0x77, 3, 0, 0, 16),     // r3 >>= 16: access
    insn(0x57, 2, 0, 0, 0xffff), // r2 &= 0xffff: type
    ldx_w(4, 1, 4),
    ldx_w(5, 1, 8),
    jeq(3, 1, 17),   // 6: mknod alone -> allow (24)
    jne(2, 2, 14),   // 7: not a character device -> deny (22)
    jeq(4, 1, 4),    // 8: major 1 -> 13
    jeq(4, 5, 9),    // 9: major 5 -> 19
    jlt(4, 136, 11), // 10: -> deny
    jgt(4, 143, 10), // 11: -> deny
    ja(11),          // 12: a pty slave -> allow
    jeq(5, 3, 10),   // 13: null
    jeq(5, 5, 9),    // 14: zero
    jeq(5, 7, 8),    // 15: full
    jeq(5, 8, 7),    // 16: random
    jeq(5, 9, 6),    // 17: urandom
    ja(3),           // 18: -> deny
    jeq(5, 0, 4),    // 19: tty
    jeq(5, 2, 3),    // 20: ptmx
    ja(0),           // 21: -> deny
    mov(0, 0),       // 22: deny
    EXIT,
    mov(0, 1), // 24: allow
    EXIT,
];

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zeroed union bpf_attr of 128 bytes (larger than
    // what the commands used here read; the kernel checks that the rest
    // is zero), whose pointers point into memory alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Attaches the filter of the usual character devices to the cgroup2
/// directory `cgroup`, replacing the one attached before: every process
/// of the cgroup (and below) may open only those devices. The cgroup
/// keeps the program as long as it exists.
pub fn allow_usual_devices(cgroup: BorrowedFd<'_>) -> io::Result<()> {
    let license = c"GPL";
    let mut load = [0u64; 16];
    load[0] = BPF_PROG_TYPE_CGROUP_DEVICE as u64 | ((USUAL.len() as u64) << 32);
    load[1] = USUAL.as_ptr() as u64;
    load[2] = license.as_ptr() as u64;
    let prog = bpf(BPF_PROG_LOAD, &mut load)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that we own.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let mut attach = [0u64; 16];
    attach[0] = cgroup.as_raw_fd() as u32 as u64 | ((prog.as_raw_fd() as u32 as u64) << 32);
    attach[1] = BPF_CGROUP_DEVICE as u64;
    bpf(BPF_PROG_ATTACH, &mut attach)?;
    Ok(())
}
