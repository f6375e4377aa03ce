//! The lpm checkpoint image: the model of a process tree and its on-disk
//! encoding.
//!
//! An image is a directory. `tree.img` holds the [`TreeImage`] (everything
//! but page contents); each address space's pages live in a pages file of
//! their own, referenced by name from the tree. Every file starts with a
//! fixed 32-byte [`Header`] that can be read without decoding the body:
//! magic, format version, file kind, body length and checksum. The tree body
//! is protobuf; a pages body is raw page data whose runs carry their own
//! XXH3 checksums in the tree. docs/image-format.md is the specification.

#![forbid(unsafe_code)]

mod model;
mod show;

pub use model::*;
pub use show::render;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use prost::Message;

/// First eight bytes of every image file.
pub const MAGIC: [u8; 8] = *b"LPMIMAGE";
/// The newest format version this build writes (and reads).
///
/// Version 2 adds state that a reader of version 1 would skip without a
/// word, restoring something else than was checkpointed: an unlinked
/// file's content moved to `TreeImage::ghosts` (a version-1 reader would
/// recreate it empty), file owners for SIGIO, socket filters, shutdown
/// bits of inet sockets, unix sockets whose path was unlinked, shared fd
/// tables. A tree is written as version 2 only when it holds such state
/// ([`tree_version`]), so that version-1 readers refuse exactly the images
/// they cannot restore. Pages files did not change: they stay version 1.
///
/// Version 3 adds deleted things still in use, which a version-2 reader
/// would skip: an unlinked file's data streamed to a file of its own
/// (`GhostImage::data_file`), mappings of unlinked files
/// (`Vma::ghost_id`), a removed working directory (`Process::cwd_ghost`)
/// and removed directories held open, a memfd's second open file
/// description (`FileImage::memfd_of`).
pub const FORMAT_VERSION: u32 = 3;
/// The version of pages files this build writes.
///
/// Version 2 covers the header with its checksum field (XXH3-64 of the
/// header's bytes 0..24: magic, version, kind and body length), which
/// version 1 left 0: a flipped body length was only caught where it made
/// the file look short. Version 1 files are still read (their checksum
/// field must be 0, their body length fit the file); readers of version 1
/// ignore the field, so they read version 2 files too.
const PAGES_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 32;
/// Offset of a pages file's body: the header is padded to a page so that
/// page data is page-aligned in the file and can be mapped and copied
/// page by page.
pub const PAGES_BODY_OFFSET: u64 = 4096;
/// Name of the tree file inside an image directory.
pub const TREE_FILE: &str = "tree.img";
/// Size of a page on x86_64.
pub const PAGE_SIZE: u64 = 4096;

/// Errors reading or writing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An I/O call on an image file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the lpm magic.
    #[error("{path} is not an lpm image (bad magic)")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// The file's format version is outside what this build reads.
    #[error("{path} has image format version {version}; this lpm reads versions {MIN_FORMAT_VERSION} to {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The file holds another kind of body than expected.
    #[error("{path} holds a {found:?} body where a {expected:?} body was expected")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// Expected kind.
        expected: BodyKind,
        /// Kind found (raw value).
        found: u32,
    },
    /// The file is shorter than its header says.
    #[error("{path} is truncated: {what} needs {needed} bytes, {available} present")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which part.
        what: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// Data does not match its checksum.
    #[error("{path}: checksum mismatch in {what}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Which part.
        what: String,
    },
    /// The protobuf body did not decode.
    #[error("{path}: body does not decode")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: prost::DecodeError,
    },
}

/// Result alias for this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// The kind of body that follows a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum BodyKind {
    /// A protobuf [`TreeImage`].
    Tree = 1,
    /// Raw page data.
    Pages = 2,
}

/// The fixed header of every image file (little endian).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `LPMIMAGE` |
/// | 8 | 4 | format version |
/// | 12 | 4 | body kind |
/// | 16 | 8 | body length in bytes |
/// | 24 | 8 | XXH3-64 of the body; for pages (whose runs carry their own) of the header's bytes 0..24 from pages version 2, 0 before |
///
/// A pages body starts at [`PAGES_BODY_OFFSET`], the header padded with zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Raw body kind.
    pub kind: u32,
    /// Body length.
    pub body_len: u64,
    /// Body checksum.
    pub checksum: u64,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.kind.to_le_bytes());
        b[16..24].copy_from_slice(&self.body_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Decodes and validates a header read from `path`.
    pub fn decode(b: &[u8], path: &Path, expected: BodyKind) -> Result<Header> {
        if b.len() < HEADER_LEN {
            return Err(ImageError::Truncated {
                path: path.into(),
                what: "header".into(),
                needed: HEADER_LEN as u64,
                available: b.len() as u64,
            });
        }
        if b[..8] != MAGIC {
            return Err(ImageError::BadMagic { path: path.into() });
        }
        let word = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(a)
        };
        let h = Header { version: word(8..12) as u32, kind: word(12..16) as u32, body_len: word(16..24), checksum: word(24..32) };
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&h.version) {
            return Err(ImageError::UnsupportedVersion { path: path.into(), version: h.version });
        }
        if h.kind != expected as u32 {
            return Err(ImageError::WrongKind { path: path.into(), expected, found: h.kind });
        }
        Ok(h)
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { op, path: path.into(), source }
}

/// Options that create a file readable and writable by its owner alone:
/// an image holds a process tree's memory, which no other user may read.
pub fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600);
    o
}

/// Creates `dir` and its missing parents, each new one searchable by its
/// owner alone (an existing directory is left as it is).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// XXH3-64 (seed 0) as used by every checksum in the format; twox-hash
/// picks AVX2 at run time where the CPU has it.
pub fn checksum(data: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(data)
}

/// Writes `tree` to `dir/tree.img` atomically (temporary file, then rename),
/// so a crash never leaves a half-written tree that looks complete.
pub fn write_tree(dir: &Path, tree: &TreeImage) -> Result<()> {
    let body = tree.encode_to_vec();
    let header =
        Header { version: tree_version(tree), kind: BodyKind::Tree as u32, body_len: body.len() as u64, checksum: checksum(&body) };
    let path = dir.join(TREE_FILE);
    let tmp = dir.join(format!("{TREE_FILE}.tmp"));
    let mut f = private_file().write(true).create(true).truncate(true).open(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&header.encode()).map_err(io("write", &tmp))?;
    f.write_all(&body).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    Ok(())
}

/// `tree` as the bytes of a tree file (header, checksum, body), for
/// [`decode_tree`] at the other end of a connection.
pub fn encode_tree(tree: &TreeImage) -> Vec<u8> {
    let body = tree.encode_to_vec();
    let header =
        Header { version: tree_version(tree), kind: BodyKind::Tree as u32, body_len: body.len() as u64, checksum: checksum(&body) };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The oldest format version that can hold `tree` (see [`FORMAT_VERSION`]).
pub fn tree_version(tree: &TreeImage) -> u32 {
    let file_v2 = |f: &FileImage| {
        f.ghost_id != 0
            || f.owner.is_some()
            || f.signal != 0
            || f.socket.as_ref().is_some_and(|s| {
                !s.filter.is_empty()
                    || s.unlinked
                    || (s.shutdown != 0 && s.family != AF_UNIX)
                    || !s.queue_meta.is_empty()
                    || !s.bind_dir.is_empty()
                    || s.external_peer
                    || !s.accept_queue.is_empty()
            })
    };
    let v3 = tree.files.iter().any(|f| f.memfd_of != 0)
        || tree.ghosts.iter().any(|g| !g.handle.is_empty())
        || tree.ghosts.iter().any(|g| !g.data_file.is_empty() || !g.extents.is_empty() || !g.path.is_empty())
        || tree
            .processes
            .iter()
            .any(|p| p.cwd_ghost != 0 || p.cwd_proc_pid != 0 || p.mm.as_ref().is_some_and(|m| m.vmas.iter().any(|v| v.ghost_id != 0)));
    if v3 {
        return 3;
    }
    let v2 = !tree.ghosts.is_empty() || tree.processes.iter().any(|p| p.shares_parent_files) || tree.files.iter().any(file_v2);
    if v2 {
        2
    } else {
        1
    }
}

/// AF_UNIX, whose shutdown bits version 1 already kept.
const AF_UNIX: u32 = 1;

/// Reads and verifies `dir/tree.img`.
pub fn read_tree(dir: &Path) -> Result<TreeImage> {
    let path = dir.join(TREE_FILE);
    let mut bytes = Vec::new();
    File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io("read", &path))?;
    decode_tree(&bytes, &path)
}

/// Decodes a whole tree file held in memory; `path` names it in errors.
pub fn decode_tree(bytes: &[u8], path: &Path) -> Result<TreeImage> {
    let h = Header::decode(bytes, path, BodyKind::Tree)?;
    let body = &bytes[HEADER_LEN..];
    if (body.len() as u64) < h.body_len {
        return Err(ImageError::Truncated {
            path: path.into(),
            what: "tree body".into(),
            needed: h.body_len,
            available: body.len() as u64,
        });
    }
    let body = &body[..h.body_len as usize];
    if checksum(body) != h.checksum {
        return Err(ImageError::Checksum { path: path.into(), what: "tree body".into() });
    }
    let tree = TreeImage::decode(body).map_err(|source| ImageError::Decode { path: path.into(), source })?;
    // Every writer writes the version its tree needs ([`tree_version`]),
    // which the checksum does not cover: another one is a corrupt header.
    if tree_version(&tree) != h.version {
        return Err(ImageError::Checksum {
            path: path.into(),
            what: format!("tree header (version {}, of a body of version {})", h.version, tree_version(&tree)),
        });
    }
    Ok(tree)
}

/// Appends page runs to a pages file.
pub struct PagesWriter {
    file: File,
    path: PathBuf,
    name: String,
    len: u64,
}

impl PagesWriter {
    /// Creates `dir/name` with a header whose length is filled in by
    /// [`PagesWriter::finish`].
    pub fn create(dir: &Path, name: &str) -> Result<PagesWriter> {
        let path = dir.join(name);
        let mut file = private_file().write(true).create(true).truncate(true).open(&path).map_err(io("create", &path))?;
        let mut first = vec![0u8; PAGES_BODY_OFFSET as usize];
        first[..HEADER_LEN].copy_from_slice(&PagesWriter::header(0));
        file.write_all(&first).map_err(io("write", &path))?;
        Ok(PagesWriter { file, path, name: name.into(), len: 0 })
    }

    /// The file's name inside the image directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends one run of pages starting at `vaddr`; `data` is a whole
    /// number of pages.
    pub fn append(&mut self, vaddr: u64, data: &[u8]) -> Result<PageRun> {
        debug_assert_eq!(data.len() as u64 % PAGE_SIZE, 0);
        self.file.write_all(data).map_err(io("write", &self.path))?;
        let run = PageRun {
            vaddr,
            npages: data.len() as u64 / PAGE_SIZE,
            offset: self.len,
            xxh3: checksum(data),
            zero: false,
            precopied: false,
            cow_pid: 0,
        };
        self.len += data.len() as u64;
        Ok(run)
    }

    /// The header of a pages file whose body is `body_len` bytes, for
    /// writers that fill the file through a mapping.
    pub fn header(body_len: u64) -> [u8; HEADER_LEN] {
        let mut b = Header { version: PAGES_VERSION, kind: BodyKind::Pages as u32, body_len, checksum: 0 }.encode();
        let sum = checksum(&b[..24]);
        b[24..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Writes the final body length into the header.
    pub fn finish(self) -> Result<()> {
        self.file.write_all_at(&PagesWriter::header(self.len), 0).map_err(io("write", &self.path))?;
        Ok(())
    }
}

/// Reads page runs back from a pages file.
pub struct PagesReader {
    file: File,
    path: PathBuf,
    len: u64,
}

impl PagesReader {
    /// Opens `dir/name` and validates its header (its checksum from
    /// version 2) and its length against the file's: every later length
    /// is checked against the body, so that nothing read from the file
    /// makes a reader index or allocate past it.
    pub fn open(dir: &Path, name: &str) -> Result<PagesReader> {
        let path = dir.join(name);
        let file = File::open(&path).map_err(io("open", &path))?;
        let mut hb = [0u8; HEADER_LEN];
        let n = file.read_at(&mut hb, 0).map_err(io("read", &path))?;
        let h = Header::decode(&hb[..n], &path, BodyKind::Pages)?;
        let expected = if h.version >= 2 { checksum(&hb[..24]) } else { 0 };
        if h.checksum != expected {
            return Err(ImageError::Checksum { path, what: format!("pages header (version {})", h.version) });
        }
        let actual = file.metadata().map_err(io("stat", &path))?.len();
        if PAGES_BODY_OFFSET.checked_add(h.body_len).is_none_or(|end| actual < end) {
            return Err(ImageError::Truncated {
                path,
                what: "pages body".into(),
                needed: h.body_len,
                available: actual.saturating_sub(PAGES_BODY_OFFSET),
            });
        }
        Ok(PagesReader { file, path, len: h.body_len })
    }

    /// The underlying file, for zero-copy use (mmap) by the caller.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// File offset of the body's first byte.
    pub fn body_offset(&self) -> u64 {
        PAGES_BODY_OFFSET
    }

    /// Checks that `run` lies inside the body.
    pub fn check_bounds(&self, run: &PageRun) -> Result<()> {
        let end = run.npages.checked_mul(PAGE_SIZE).and_then(|l| l.checked_add(run.offset));
        match end {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ImageError::Truncated {
                path: self.path.clone(),
                what: format!("page run at {:#x}", run.vaddr),
                needed: run.offset.saturating_add(run.npages.saturating_mul(PAGE_SIZE)),
                available: self.len,
            }),
        }
    }

    /// Verifies a run's checksum against data the caller read or mapped.
    pub fn verify(&self, run: &PageRun, data: &[u8]) -> Result<()> {
        if checksum(data) != run.xxh3 {
            return Err(ImageError::Checksum {
                path: self.path.clone(),
                what: format!("page run at {:#x} ({} pages)", run.vaddr, run.npages),
            });
        }
        Ok(())
    }

    /// Reads and verifies one run into `buf` (resized to fit).
    pub fn read_run(&self, run: &PageRun, buf: &mut Vec<u8>) -> Result<()> {
        self.check_bounds(run)?;
        buf.resize((run.npages * PAGE_SIZE) as usize, 0);
        self.file.read_exact_at(buf, PAGES_BODY_OFFSET + run.offset).map_err(io("read", &self.path))?;
        self.verify(run, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let d = std::env::temp_dir().join(format!("lpm-image-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample() -> TreeImage {
        TreeImage {
            writer: "test".into(),
            root_pid: 42,
            processes: vec![Process {
                pid: 42,
                threads: vec![Thread { tid: 42, gpregs: vec![7; 216], ..Default::default() }],
                mm: Some(Mm {
                    vmas: vec![Vma { start: 0x1000, end: 0x3000, prot: 3, kind: VmaKind::AnonPrivate as i32, ..Default::default() }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn tree_round_trip() {
        let d = tmpdir("rt");
        let t = sample();
        write_tree(&d, &t).unwrap();
        assert_eq!(read_tree(&d).unwrap(), t);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let mut bytes =
            Header { version: tree_version(&sample()), kind: BodyKind::Tree as u32, body_len: 0, checksum: 0 }.encode().to_vec();
        let body = sample().encode_to_vec();
        bytes[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        bytes[24..32].copy_from_slice(&checksum(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let p = Path::new("tree.img");
        decode_tree(&bytes, p).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(decode_tree(&b, p).is_err(), "flip at byte {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode_tree(&bytes[..n], p).is_err(), "truncation to {n} accepted");
        }
    }

    #[test]
    fn checksum_is_standard_xxh3_64() {
        // Reference values of XXH3-64 with seed 0.
        assert_eq!(checksum(b""), 0x2d06_8005_38d3_94c2);
        // The same function as the scalar reference implementation, for
        // every length class (short, medium, long with stripes).
        for len in [1usize, 3, 16, 17, 128, 129, 240, 241, 1024, 4096, 100_000] {
            let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
            assert_eq!(checksum(&data), xxhash_rust::xxh3::xxh3_64(&data), "length {len}");
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let h = Header { version: FORMAT_VERSION + 1, kind: BodyKind::Tree as u32, body_len: 0, checksum: 0 };
        let e = Header::decode(&h.encode(), Path::new("x"), BodyKind::Tree).unwrap_err();
        assert!(e.to_string().contains(&format!("format version {}", FORMAT_VERSION + 1)), "{e}");
    }

    #[test]
    fn trees_are_version_2_only_with_state_version_1_would_drop() {
        let dir = tmpdir("version");
        let mut t = sample();
        write_tree(&dir, &t).unwrap();
        let version = |dir: &Path| u32::from_le_bytes(std::fs::read(dir.join(TREE_FILE)).unwrap()[8..12].try_into().unwrap());
        assert_eq!(version(&dir), 1);
        t.files.push(FileImage { id: 99, ghost_id: 1, ..Default::default() });
        write_tree(&dir, &t).unwrap();
        assert_eq!(version(&dir), 2);
        assert_eq!(read_tree(&dir).unwrap(), t);
        // A unix socket's shutdown bits were kept by version 1 already.
        let unix = SocketImage { family: 1, shutdown: 2, ..Default::default() };
        let inet = SocketImage { family: 2, shutdown: 2, ..Default::default() };
        let with = |s: SocketImage| TreeImage { files: vec![FileImage { socket: Some(s), ..Default::default() }], ..Default::default() };
        assert_eq!(tree_version(&with(unix)), 1);
        assert_eq!(tree_version(&with(inet)), 2);
        // Deleted things still in use need version 3.
        let mut g = t.clone();
        g.ghosts.push(GhostImage { id: 1, data_file: "ghost-1.img".into(), ..Default::default() });
        assert_eq!(tree_version(&g), 3);
        let mut m = t.clone();
        m.files.push(FileImage { id: 100, memfd_of: 3, ..Default::default() });
        assert_eq!(tree_version(&m), 3);
        let mut c = t.clone();
        c.processes.push(Process { cwd_ghost: 1, ..Default::default() });
        assert_eq!(tree_version(&c), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pages_round_trip_and_corruption() {
        let d = tmpdir("pages");
        let mut w = PagesWriter::create(&d, "pages-1.img").unwrap();
        let a = vec![1u8; 8192];
        let b = vec![2u8; 4096];
        let ra = w.append(0x10000, &a).unwrap();
        let rb = w.append(0x20000, &b).unwrap();
        w.finish().unwrap();
        let r = PagesReader::open(&d, "pages-1.img").unwrap();
        let mut buf = Vec::new();
        r.read_run(&ra, &mut buf).unwrap();
        assert_eq!(buf, a);
        r.read_run(&rb, &mut buf).unwrap();
        assert_eq!(buf, b);
        let bad = PageRun { xxh3: rb.xxh3 ^ 1, ..rb.clone() };
        assert!(matches!(r.read_run(&bad, &mut buf), Err(ImageError::Checksum { .. })));
        let beyond = PageRun { offset: 8192, npages: 2, ..rb };
        assert!(matches!(r.read_run(&beyond, &mut buf), Err(ImageError::Truncated { .. })));
        // A file cut short is refused at open.
        let p = d.join("pages-1.img");
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(PAGES_BODY_OFFSET + 4096).unwrap();
        assert!(matches!(PagesReader::open(&d, "pages-1.img"), Err(ImageError::Truncated { .. })));
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[cfg(test)]
mod pages_corruption {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Reads every run of a pages file as a restore would: open, then
    /// each run checked against the body and its checksum.
    fn read_all(dir: &Path, runs: &[PageRun]) -> Result<Vec<Vec<u8>>> {
        let r = PagesReader::open(dir, "pages-7.img")?;
        let file_len = r.file().metadata().unwrap().len();
        runs.iter()
            .map(|run| {
                let mut buf = Vec::new();
                let res = r.read_run(run, &mut buf);
                assert!(buf.capacity() as u64 <= file_len, "a buffer of {} bytes for a file of {file_len}", buf.capacity());
                res.map(|()| buf)
            })
            .collect()
    }

    /// Truncations, huge and wrong header lengths, and bit flips in the
    /// header and the body: each is an error naming the file or (where
    /// the flip hit padding) the very data written, never a panic and
    /// never a buffer larger than the file.
    #[test]
    fn corrupted_pages_files_are_named_errors_never_panics() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let d = std::env::temp_dir().join(format!("lpm-image-corrupt-{}-{nanos}", std::process::id()));
        create_private_dir(&d).unwrap();
        let mut w = PagesWriter::create(&d, "pages-7.img").unwrap();
        let data: Vec<Vec<u8>> = (1..=3u8).map(|i| vec![i; i as usize * 4096]).collect();
        let runs: Vec<PageRun> = data.iter().enumerate().map(|(i, p)| w.append(0x10000 * (i as u64 + 1), p).unwrap()).collect();
        w.finish().unwrap();
        let path = d.join("pages-7.img");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let good = std::fs::read(&path).unwrap();
        assert_eq!(read_all(&d, &runs).unwrap(), data);
        let named = |e: &ImageError, what: &str| {
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{what}: the error does not name the file: {text}");
        };
        let mut tried = 0;
        let mut check = |bytes: &[u8], what: &str, may_pass: bool| {
            std::fs::write(&path, bytes).unwrap();
            tried += 1;
            match read_all(&d, &runs) {
                Ok(back) => assert!(may_pass && back == data, "{what}: accepted with other data"),
                Err(e) => named(&e, what),
            }
        };
        for n in (0..good.len()).step_by(509).chain([0, 1, 31, 32, 33, 4095, 4096, 4097, good.len() - 1]) {
            check(&good[..n], &format!("cut to {n} bytes"), false);
        }
        for len in [u64::MAX, u64::MAX - 4095, u64::MAX - 4096, 1 << 32, 1 << 40, good.len() as u64, 6 * 4096 + 1] {
            for covered in [false, true] {
                let mut b = good.clone();
                let h = if covered {
                    PagesWriter::header(len)
                } else {
                    Header { version: 2, kind: 2, body_len: len, checksum: checksum(&good[..24]) }.encode()
                };
                b[..HEADER_LEN].copy_from_slice(&h);
                check(&b, &format!("body length {len} (header checksum right: {covered})"), false);
                // A version 1 header, which its checksum did not cover: the
                // length alone must be caught against the file.
                b[..HEADER_LEN].copy_from_slice(&Header { version: 1, kind: 2, body_len: len, checksum: 0 }.encode());
                check(&b, &format!("version 1, body length {len}"), false);
            }
        }
        for i in 0..HEADER_LEN * 8 {
            let mut b = good.clone();
            b[i / 8] ^= 1 << (i % 8);
            check(&b, &format!("header bit {i} flipped"), false);
        }
        for i in (HEADER_LEN * 8..good.len() * 8).step_by(997) {
            let mut b = good.clone();
            b[i / 8] ^= 1 << (i % 8);
            // Padding between header and body is read by nobody.
            check(&b, &format!("bit {i} flipped"), (i / 8) < PAGES_BODY_OFFSET as usize);
        }
        // Version 1 files (no header checksum) are still read.
        let mut v1 = good.clone();
        v1[..HEADER_LEN].copy_from_slice(&Header { version: 1, kind: 2, body_len: (good.len() - 4096) as u64, checksum: 0 }.encode());
        check(&v1, "a sound version 1 file", true);
        assert!(tried > 400, "{tried}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        framed_as(body, FORMAT_VERSION)
    }

    fn framed_as(body: &[u8], version: u32) -> Vec<u8> {
        let h = Header { version, kind: BodyKind::Tree as u32, body_len: body.len() as u64, checksum: checksum(body) };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(body);
        b
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_are_refused_or_decoded(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_tree(&bytes, Path::new("fuzz"));
        }

        /// A well-framed but arbitrary body (valid checksum) never panics:
        /// protobuf garbage is a decode error, not a crash.
        #[test]
        fn arbitrary_bodies_behind_a_valid_header(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_tree(&framed(&body), Path::new("fuzz"));
        }

        /// Every single-byte corruption of a real tree is caught.
        #[test]
        fn any_flipped_bit_is_caught(at in 0usize..10_000, bit in 0u8..8) {
            let t = TreeImage { writer: "fuzz".into(), root_pid: 7, processes: vec![Process { pid: 7, cwd: "/".into(), ..Default::default() }], ..Default::default() };
            let mut b = framed_as(&t.encode_to_vec(), tree_version(&t));
            prop_assert!(decode_tree(&b, Path::new("fuzz")).is_ok());
            let at = at % b.len();
            b[at] ^= 1 << bit;
            prop_assert!(decode_tree(&b, Path::new("fuzz")).is_err());
        }
    }
}
