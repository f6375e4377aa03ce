//! The target's page store: pages that arrive during pre-copy, kept in one
//! sparse file per source process where the page of virtual address A sits
//! at file offset A (`precopy-{pid}.pages` in the image directory, read by
//! the engine's restore for the ranges `CheckpointOptions::precopied`
//! names). A page resent in a later round simply overwrites its place; a
//! page never written reads as zero, which is why pre-copy may count a
//! never-sent zero page as held.
//!
//! User addresses reach 0x7fff_ffff_f000, so the file system must allow
//! sparse files of 128 TiB: tmpfs, xfs and btrfs do; ext4 stops at 16 TiB
//! and refuses with EFBIG, which [`StoreError::TooLarge`] reports by name.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::precopy::{PageSink, SinkError};

/// Bytes in a page.
const PAGE: u64 = 4096;

/// Errors of the page store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's directory could not be created.
    #[error("create page store directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Pages that are not whole, aligned pages.
    #[error("pages of pid {pid} at {vaddr:#x}: {len} bytes are not whole aligned pages")]
    Unaligned {
        /// The source process.
        pid: i32,
        /// The first address.
        vaddr: u64,
        /// The length given.
        len: usize,
    },
    /// The pages file could not be created.
    #[error("create {path} for pid {pid}")]
    Create {
        /// The source process.
        pid: i32,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file system cannot hold a file that large (ext4: 16 TiB).
    #[error("{path} cannot hold the page at {vaddr:#x} of pid {pid}: its file system does not allow sparse files that large (use tmpfs, xfs or btrfs)")]
    TooLarge {
        /// The source process.
        pid: i32,
        /// The address.
        vaddr: u64,
        /// The file.
        path: PathBuf,
    },
    /// Writing pages failed.
    #[error("write pages of pid {pid} at {vaddr:#x} to {path}")]
    Write {
        /// The source process.
        pid: i32,
        /// The address.
        vaddr: u64,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Name of the pages file of source process `pid` inside the image
/// directory (the engine's restore reads the same name).
pub fn pages_file_name(pid: i32) -> String {
    format!("precopy-{pid}.pages")
}

/// The pages received so far, one sparse file per source process.
pub struct Store {
    dir: PathBuf,
    files: HashMap<i32, Arc<File>>,
    pages: u64,
}

/// The pages file of one source process: writes to it need no lock on
/// the store, so that several streams store at once.
#[derive(Clone, Debug)]
pub struct PagesFile {
    pid: i32,
    path: PathBuf,
    file: Arc<File>,
}

impl PagesFile {
    /// Stores `data` (whole pages) at address `vaddr`.
    pub fn write(&self, vaddr: u64, data: &[u8]) -> Result<()> {
        let pid = self.pid;
        if vaddr & (PAGE - 1) != 0 || data.len() as u64 & (PAGE - 1) != 0 || vaddr.checked_add(data.len() as u64).is_none() {
            return Err(StoreError::Unaligned { pid, vaddr, len: data.len() });
        }
        self.file.write_all_at(data, vaddr).map_err(|source| {
            if source.raw_os_error() == Some(libc::EFBIG) {
                StoreError::TooLarge { pid, vaddr, path: self.path.clone() }
            } else {
                StoreError::Write { pid, vaddr, path: self.path.clone(), source }
            }
        })
    }
}

impl Store {
    /// A store writing into `dir` (created when missing). A pages file
    /// left there by an earlier attempt is truncated when its process first
    /// sends, so stale pages never survive.
    pub fn create(dir: &Path) -> Result<Store> {
        // The partition's memory: its owner's alone (the directory and
        // each file), whoever else is on the host.
        lpm_image::create_private_dir(dir).map_err(|source| StoreError::Dir { path: dir.to_path_buf(), source })?;
        Ok(Store { dir: dir.to_path_buf(), files: HashMap::new(), pages: 0 })
    }

    /// The pages file of `pid`.
    pub fn path(&self, pid: i32) -> PathBuf {
        self.dir.join(pages_file_name(pid))
    }

    /// The pages file of `pid`, made (or truncated) on first use.
    pub fn file(&mut self, pid: i32) -> Result<PagesFile> {
        let path = self.path(pid);
        let file = match self.files.entry(pid) {
            std::collections::hash_map::Entry::Occupied(o) => o.get().clone(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let f = lpm_image::private_file()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|source| StoreError::Create { pid, path: path.clone(), source })?;
                v.insert(Arc::new(f)).clone()
            }
        };
        Ok(PagesFile { pid, path, file })
    }

    /// Stores `data` (whole pages) of process `pid` at address `vaddr`.
    pub fn write(&mut self, pid: i32, vaddr: u64, data: &[u8]) -> Result<()> {
        self.file(pid)?.write(vaddr, data)?;
        self.pages += data.len() as u64 / PAGE;
        Ok(())
    }

    /// Pages written so far (a page resent counts again).
    pub fn pages_received(&self) -> u64 {
        self.pages
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE
    }

    /// Source processes that sent pages.
    pub fn pids(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.files.keys().copied().collect();
        p.sort_unstable();
        p
    }
}

impl PageSink for Store {
    fn pages(&mut self, pid: i32, vaddr: u64, data: &[u8]) -> Result<(), SinkError> {
        self.write(pid, vaddr, data).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory on tmpfs (sparse files of 128 TiB), removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = PathBuf::from(format!("/dev/shm/lpm-migrate-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0xaa; len];
        File::open(path).unwrap().read_exact_at(&mut b, off).unwrap();
        b
    }

    /// Whether `nobody` (uid and gid 65534, set in the child before it
    /// runs) can open `path` to read it.
    fn nobody_reads(path: &Path) -> bool {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("cat").arg(path).uid(65534).gid(65534).output().expect("run cat as nobody");
        out.status.success()
    }

    /// The store holds a partition's memory: another user on the host
    /// can neither list its directory nor read its files, even where the
    /// directory existed before with a wider mode.
    #[test]
    fn another_user_cannot_read_the_store() {
        use std::os::unix::fs::PermissionsExt;
        let d = TempDir::new("private");
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let probe = d.0.join("probe");
        std::fs::write(&probe, b"x").unwrap();
        std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(nobody_reads(&probe), "the test cannot run as nobody: a refusal below would prove nothing");
        let sub = d.0.join("sub");
        for dir in [&d.0, &sub] {
            let mut s = Store::create(dir).unwrap();
            s.write(9, 0x7000, &[0x5a; 4096]).unwrap();
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&s.path(9)), 0o600, "{}", s.path(9).display());
            assert!(!nobody_reads(&s.path(9)), "nobody read {}", s.path(9).display());
        }
        assert_eq!(std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn sparse_pages_land_at_their_address_and_holes_read_zero() {
        let d = TempDir::new("store");
        let mut s = Store::create(&d.0.join("sub")).unwrap();
        let high = 0x7fff_0000_0000u64;
        s.write(7, 0x1000, &[1u8; 4096]).unwrap();
        s.write(7, high, &[2u8; 8192]).unwrap();
        s.write(9, 0x5555_5555_4000, &[3u8; 4096]).unwrap();
        // A page resent in a later round overwrites the older copy.
        s.write(7, high + 4096, &[4u8; 4096]).unwrap();
        let p7 = s.path(7);
        assert_eq!(p7.file_name().unwrap(), "precopy-7.pages");
        assert_eq!(read_at(&p7, 0x1000, 4096), vec![1u8; 4096]);
        assert_eq!(read_at(&p7, high, 4096), vec![2u8; 4096]);
        assert_eq!(read_at(&p7, high + 4096, 4096), vec![4u8; 4096]);
        assert_eq!(read_at(&p7, 0, 4096), vec![0u8; 4096], "hole before the first page");
        assert_eq!(read_at(&p7, 0x2000, 4096), vec![0u8; 4096], "hole after the first page");
        assert_eq!(read_at(&p7, high - 4096, 4096), vec![0u8; 4096], "hole before the high pages");
        assert_eq!(read_at(&s.path(9), 0x5555_5555_4000, 4096), vec![3u8; 4096]);
        assert_eq!(s.pages_received(), 5);
        assert_eq!(s.bytes(), 5 * 4096);
        assert_eq!(s.pids(), vec![7, 9]);
        // Sparse: 5 pages of data, not 128 TiB.
        let blocks = std::fs::metadata(&p7).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(blocks.blocks() * 512 < 1 << 20, "file is not sparse: {} blocks", blocks.blocks());
    }

    #[test]
    fn a_new_store_truncates_stale_files() {
        let d = TempDir::new("stale");
        std::fs::write(d.0.join(pages_file_name(5)), vec![9u8; 3 * 4096]).unwrap();
        let mut s = Store::create(&d.0).unwrap();
        s.write(5, 0x2000, &[1u8; 4096]).unwrap();
        assert_eq!(read_at(&s.path(5), 0, 4096), vec![0u8; 4096], "stale page survived");
    }

    #[test]
    fn unaligned_pages_are_refused_naming_pid_and_address() {
        let d = TempDir::new("unaligned");
        let mut s = Store::create(&d.0).unwrap();
        for (vaddr, len) in [(0x1001u64, 4096usize), (0x1000, 100), (0x1000, 4097), (!4095, 8192)] {
            let e = s.write(42, vaddr, &vec![0u8; len]).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("pid 42") && msg.contains(&format!("{vaddr:#x}")), "{msg}");
        }
        assert_eq!(s.pages_received(), 0);
    }

    #[test]
    fn a_file_system_without_huge_sparse_files_is_named() {
        // The repository's target directory: ext4 here (16 TiB files), which
        // must refuse by name; other file systems must take the page.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target").join(format!("lpm-migrate-efbig-{}", std::process::id()));
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _rm = Rm(dir.clone());
        let mut s = Store::create(&dir).unwrap();
        let out = std::process::Command::new("stat").args(["-f", "-c", "%T"]).arg(&dir).output().expect("stat -f");
        let fs = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let r = s.write(3, 0x7fff_0000_0000, &[1u8; 4096]);
        if fs.starts_with("ext") {
            let e = r.expect_err("ext4 took a 128 TiB offset");
            assert!(matches!(e, StoreError::TooLarge { pid: 3, vaddr: 0x7fff_0000_0000, .. }), "{e:?}");
            assert!(e.to_string().contains("tmpfs"), "{e}");
        } else {
            r.unwrap_or_else(|e| panic!("{fs}: {e}"));
        }
    }
}
