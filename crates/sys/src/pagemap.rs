//! PAGEMAP_SCAN: which pages of a range are present, swapped, file-backed or
//! the shared zero page, in one ioctl per batch of runs instead of eight
//! bytes read per page from /proc/PID/pagemap.

use std::fs::File;
use std::os::fd::AsRawFd;

use linux_raw_sys::general::{page_region, pm_scan_arg};

use crate::{Error, Result};

/// Pagemap entry: the page is present.
pub const PM_PRESENT: u64 = 1 << 63;
/// Pagemap entry: the page is mapped once in all the system.
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// Pagemap entry: the page frame number.
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;

pub use linux_raw_sys::general::{
    PAGE_IS_FILE, PAGE_IS_HUGE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
};

/// `_IOWR('f', 16, struct pm_scan_arg)`, absent from the crates.
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;

/// A run of pages sharing the same categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// PAGE_IS_* bits, masked by the scan's return mask.
    pub categories: u64,
}

/// The page size.
const PAGE: u64 = 4096;

/// An open /proc/PID/pagemap.
pub struct Pagemap {
    file: File,
    pid: i32,
    buf: Vec<page_region>,
}

/// What a scan asks for.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    /// PM_SCAN_* flags (write-protect matching pages, ...).
    pub flags: u64,
    /// Pages must have all of these categories...
    pub category_mask: u64,
    /// ...and at least one of these (0 = no condition).
    pub anyof_mask: u64,
    /// Categories reported back for each region.
    pub return_mask: u64,
}

impl Pagemap {
    /// Opens the pagemap of `pid`.
    pub fn open(pid: i32) -> Result<Pagemap> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| Error::sys("open pagemap", pid, e))?;
        let empty = page_region { start: 0, end: 0, categories: 0 };
        Ok(Pagemap { file, pid, buf: vec![empty; 4096] })
    }

    /// The ranges of `[start, end)` (page aligned) whose pagemap entries
    /// are not userfaultfd write-protect markers, in order. A marker is
    /// what write-protection leaves on a page never populated; PAGEMAP_SCAN
    /// reports it as swapped, like a page really swapped out. The
    /// /proc/PID/pagemap entry tells them apart: a marker is a swap entry
    /// of the last swap type (31), which no swap file gets.
    pub fn without_markers(&mut self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        use std::os::unix::fs::FileExt;
        const PM_SWAP: u64 = 1 << 62;
        const MARKER_TYPE: u64 = 31;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = start;
        while at < end {
            let n = (((end - at) / PAGE) as usize).min(buf.len() / 8);
            let got = self.file.read_at(&mut buf[..n * 8], at / PAGE * 8).map_err(|e| Error::sys("read pagemap", self.pid, e))?;
            if got < 8 {
                return Err(Error::sys("read pagemap (short)", self.pid, std::io::Error::from_raw_os_error(libc::EIO)));
            }
            for (i, e) in buf[..got - got % 8].chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                if v & PM_SWAP != 0 && v & 0x1f == MARKER_TYPE {
                    continue;
                }
                let a = at + i as u64 * PAGE;
                match out.last_mut() {
                    Some(last) if last.1 == a => last.1 = a + PAGE,
                    _ => out.push((a, a + PAGE)),
                }
            }
            at += (got / 8) as u64 * PAGE;
        }
        Ok(out)
    }

    /// The raw /proc/PID/pagemap entries of `[start, end)` (page aligned),
    /// one per page, appended to `out`: bit 63 present, 62 swapped, 61
    /// file page or shared anonymous, 56 exclusively mapped (one mapping
    /// of the page in all the system), bits 0-54 the page frame number
    /// (0 without CAP_SYS_ADMIN).
    pub fn entries(&mut self, start: u64, end: u64, out: &mut Vec<u64>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = start;
        while at < end {
            let n = (((end - at) / PAGE) as usize).min(buf.len() / 8);
            let got = self.file.read_at(&mut buf[..n * 8], at / PAGE * 8).map_err(|e| Error::sys("read pagemap", self.pid, e))?;
            if got < 8 {
                return Err(Error::sys("read pagemap (short)", self.pid, std::io::Error::from_raw_os_error(libc::EIO)));
            }
            out.extend(buf[..got - got % 8].chunks_exact(8).map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes"))));
            at += (got / 8) as u64 * PAGE;
        }
        Ok(())
    }

    /// Scans `[start, end)`, appending matching regions to `out` (adjacent
    /// regions with equal categories merged by the kernel).
    pub fn scan(&mut self, start: u64, end: u64, q: Query, out: &mut Vec<Region>) -> Result<()> {
        let mut at = start;
        while at < end {
            let mut arg = pm_scan_arg {
                size: std::mem::size_of::<pm_scan_arg>() as u64,
                flags: q.flags,
                start: at,
                end,
                walk_end: 0,
                vec: self.buf.as_mut_ptr() as u64,
                vec_len: self.buf.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: q.category_mask,
                category_anyof_mask: q.anyof_mask,
                return_mask: q.return_mask,
            };
            // SAFETY: arg is a valid pm_scan_arg whose vec points to
            // self.buf with vec_len entries; the kernel fills at most that.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut pm_scan_arg) };
            if n < 0 {
                return Err(Error::mem("pagemap scan", self.pid, at, std::io::Error::last_os_error()));
            }
            let got = &self.buf[..n as usize];
            out.extend(got.iter().map(|r| Region { start: r.start, end: r.end, categories: r.categories }));
            // The kernel may report a walk_end below the last region it
            // returned (seen on 6.18 with more regions than its internal
            // buffer holds, the zero page among them): going on from there
            // would return those regions twice.
            let next = arg.walk_end.max(got.last().map_or(0, |r| r.end));
            if next <= at {
                break;
            }
            at = next;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_is_iowr_f_16_pm_scan_arg() {
        let computed = (3 << 30) | ((std::mem::size_of::<pm_scan_arg>() as libc::c_ulong) << 16) | 0x6610;
        assert_eq!(PAGEMAP_SCAN, computed);
    }
}
