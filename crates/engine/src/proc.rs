//! Parsing of /proc: the state of a task that is visible from outside.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::{EngineError, Result};

/// Reads a /proc file to a string.
pub fn read(pid: i32, rel: &str) -> Result<String> {
    let path = PathBuf::from(format!("/proc/{pid}/{rel}"));
    std::fs::read_to_string(&path).map_err(|source| EngineError::Proc { path, source })
}

/// Reads a /proc file as bytes.
pub fn read_bytes(pid: i32, rel: &str) -> Result<Vec<u8>> {
    let path = PathBuf::from(format!("/proc/{pid}/{rel}"));
    std::fs::read(&path).map_err(|source| EngineError::Proc { path, source })
}

/// Reads a /proc symlink.
pub fn link(pid: i32, rel: &str) -> Result<String> {
    let path = PathBuf::from(format!("/proc/{pid}/{rel}"));
    std::fs::read_link(&path).map(|p| p.to_string_lossy().into_owned()).map_err(|source| EngineError::Proc { path, source })
}

/// Metadata of the file a /proc path leads to, links followed: a
/// namespace's inode (`ns/pid`), or the mount on top of a path in the
/// task's own mount namespace (`root/proc`).
pub fn stat(pid: i32, rel: &str) -> Result<std::fs::Metadata> {
    let path = PathBuf::from(format!("/proc/{pid}/{rel}"));
    std::fs::metadata(&path).map_err(|source| EngineError::Proc { path, source })
}

/// Thread ids of a process, leader first.
pub fn threads(pid: i32) -> Result<Vec<i32>> {
    let path = PathBuf::from(format!("/proc/{pid}/task"));
    let mut tids: Vec<i32> = std::fs::read_dir(&path)
        .map_err(|source| EngineError::Proc { path, source })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    Ok(tids)
}

/// Children of every thread of a process.
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let mut out: Vec<i32> = Vec::new();
    for tid in threads(pid)? {
        if let Ok(s) = read(pid, &format!("task/{tid}/children")) {
            // The kernel lists a thread's children in the order they were
            // forked (or adopted): kept, since pids say nothing of it (a
            // restored namespace hands out low pids again).
            for c in s.split_whitespace().filter_map(|w| w.parse::<i32>().ok()) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    Ok(out)
}

/// Fields of /proc/PID/stat (numbered as in proc(5), 1-based).
pub struct Stat {
    fields: Vec<String>,
    /// The command name (field 2, without parentheses).
    pub comm: String,
}

impl Stat {
    /// Reads /proc/PID/stat.
    pub fn read(pid: i32) -> Result<Stat> {
        Stat::parse(&read(pid, "stat")?).ok_or_else(|| EngineError::Parse { what: format!("/proc/{pid}/stat") })
    }

    /// Parses the text of a stat file.
    pub fn parse(s: &str) -> Option<Stat> {
        let open = s.find('(')?;
        let close = s.rfind(')')?;
        let comm = s[open + 1..close].to_string();
        let mut fields = vec![s[..open].trim().to_string(), comm.clone()];
        fields.extend(s[close + 1..].split_whitespace().map(String::from));
        Some(Stat { fields, comm })
    }

    /// Field `n` (1-based) as a number.
    pub fn num(&self, n: usize) -> u64 {
        self.fields.get(n - 1).and_then(|f| f.parse::<i64>().ok()).unwrap_or(0) as u64
    }

    /// Field 3, the state letter.
    pub fn state(&self) -> char {
        self.fields.get(2).and_then(|f| f.chars().next()).unwrap_or('?')
    }

    /// Whether the process has ended: a zombie, or inside exit(2)
    /// (PF_EXITING: its descriptors and memory go, and it leaves its
    /// cgroup, before it is a zombie).
    pub fn ended(&self) -> bool {
        const PF_EXITING: u64 = 0x4;
        self.state() == 'Z' || self.num(9) & PF_EXITING != 0
    }
}

/// /proc/PID/status as key-value pairs.
pub struct Status(BTreeMap<String, String>);

impl Status {
    /// Reads /proc/PID/status.
    pub fn read(pid: i32) -> Result<Status> {
        Ok(Status::parse(&read(pid, "status")?))
    }

    /// Reads /proc/PID/task/TID/status.
    pub fn read_task(pid: i32, tid: i32) -> Result<Status> {
        Ok(Status::parse(&read(pid, &format!("task/{tid}/status"))?))
    }

    /// Parses the text of a status file.
    pub fn parse(s: &str) -> Status {
        Status(s.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect())
    }

    /// A raw value.
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }

    /// A whitespace-separated list of decimal numbers.
    pub fn nums(&self, key: &str) -> Vec<u32> {
        self.get(key).split_whitespace().filter_map(|w| w.parse().ok()).collect()
    }

    /// A hexadecimal value (capability sets, signal masks).
    pub fn hex(&self, key: &str) -> u64 {
        u64::from_str_radix(self.get(key), 16).unwrap_or(0)
    }

    /// An octal value (Umask).
    pub fn oct(&self, key: &str) -> u32 {
        u32::from_str_radix(self.get(key), 8).unwrap_or(0)
    }
}

/// One line of /proc/PID/maps with the VmFlags of smaps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the end.
    pub end: u64,
    /// "rwxp" / "rw-s" permission string.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Device major.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Inode.
    pub inode: u64,
    /// Path or pseudo name; empty for anonymous.
    pub path: String,
    /// Two-letter VmFlags from smaps.
    pub vmflags: Vec<String>,
}

impl MapEntry {
    /// PROT_* bits.
    pub fn prot(&self) -> u32 {
        let b = self.perms.as_bytes();
        let mut p = 0;
        if b.first() == Some(&b'r') {
            p |= libc::PROT_READ as u32;
        }
        if b.get(1) == Some(&b'w') {
            p |= libc::PROT_WRITE as u32;
        }
        if b.get(2) == Some(&b'x') {
            p |= libc::PROT_EXEC as u32;
        }
        p
    }

    /// Whether the mapping is MAP_SHARED.
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }

    /// Whether smaps lists flag `f`.
    pub fn has(&self, f: &str) -> bool {
        self.vmflags.iter().any(|v| v == f)
    }
}

/// Parses /proc/PID/smaps (maps lines plus VmFlags).
pub fn parse_smaps(s: &str) -> Option<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in s.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            out.last_mut()?.vmflags = flags.split_whitespace().map(String::from).collect();
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if !first.contains('-') || first.ends_with(':') {
            continue;
        }
        out.push(parse_maps_line(line)?);
    }
    Some(out)
}

/// Parses one line of /proc/PID/maps.
pub fn parse_maps_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (a, b) = range.split_once('-')?;
    let (ma, mi) = dev.split_once(':')?;
    Some(MapEntry {
        start: u64::from_str_radix(a, 16).ok()?,
        end: u64::from_str_radix(b, 16).ok()?,
        perms,
        offset,
        major: u32::from_str_radix(ma, 16).ok()?,
        minor: u32::from_str_radix(mi, 16).ok()?,
        inode,
        path,
        vmflags: Vec::new(),
    })
}

/// Reads /proc/PID/smaps.
pub fn smaps(pid: i32) -> Result<Vec<MapEntry>> {
    parse_smaps(&read(pid, "smaps")?).ok_or_else(|| EngineError::Parse { what: format!("/proc/{pid}/smaps") })
}

/// Reads /proc/PID/maps (no VmFlags; cheaper than smaps).
pub fn maps(pid: i32) -> Result<Vec<MapEntry>> {
    read(pid, "maps")?
        .lines()
        .map(parse_maps_line)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| EngineError::Parse { what: format!("/proc/{pid}/maps") })
}

/// /proc/PID/fdinfo/N: position, flags and mount id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    /// File position.
    pub pos: u64,
    /// open flags, octal in the file (includes O_CLOEXEC).
    pub flags: u32,
    /// Mount id.
    pub mnt_id: u32,
    /// Inode number.
    pub ino: u64,
}

/// Parses the text of an fdinfo file.
pub fn parse_fdinfo(s: &str) -> FdInfo {
    let st = Status::parse(s);
    FdInfo {
        pos: st.get("pos").parse().unwrap_or(0),
        flags: st.oct("flags"),
        mnt_id: st.get("mnt_id").parse().unwrap_or(0),
        ino: st.get("ino").parse().unwrap_or(0),
    }
}

/// Parses /proc/PID/limits into (resource, soft, hard); "unlimited" is
/// u64::MAX.
pub fn parse_limits(s: &str) -> Vec<(u32, u64, u64)> {
    const NAMES: [&str; 16] = [
        "Max cpu time",
        "Max file size",
        "Max data size",
        "Max stack size",
        "Max core file size",
        "Max resident set",
        "Max processes",
        "Max open files",
        "Max locked memory",
        "Max address space",
        "Max file locks",
        "Max pending signals",
        "Max msgqueue size",
        "Max nice priority",
        "Max realtime priority",
        "Max realtime timeout",
    ];
    let val = |w: &str| if w == "unlimited" { u64::MAX } else { w.parse().unwrap_or(u64::MAX) };
    let mut out = Vec::new();
    for line in s.lines() {
        if let Some(i) = NAMES.iter().position(|n| line.starts_with(n)) {
            let rest: Vec<&str> = line[NAMES[i].len()..].split_whitespace().collect();
            if rest.len() >= 2 {
                out.push((i as u32, val(rest[0]), val(rest[1])));
            }
        }
    }
    out
}

/// One mount of /proc/PID/mountinfo: (mount point, major:minor, fs type).
pub fn mounts(pid: i32) -> Result<Vec<(String, String, String)>> {
    Ok(read(pid, "mountinfo")?
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let sep = w.iter().position(|x| *x == "-")?;
            Some((w.get(4)?.to_string(), w.get(2)?.to_string(), w.get(sep + 1)?.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let s = Stat::parse("42 (a (b) c) S 1 42 42 0 -1 4194560 10 0").unwrap();
        assert_eq!(s.comm, "a (b) c");
        assert_eq!(s.state(), 'S');
        assert_eq!(s.num(4), 1);
        assert_eq!(s.num(5), 42);
    }

    #[test]
    fn smaps_lines_and_flags() {
        let text = "7f0000000000-7f0000002000 rw-p 00001000 fd:01 1234                       /usr/lib/x (deleted)\n\
Size:                  8 kB\n\
VmFlags: rd wr mr mw me ac sd\n\
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n\
VmFlags: rd wr mr mw me gd ac\n";
        let m = parse_smaps(text).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].path, "/usr/lib/x (deleted)");
        assert_eq!(m[0].offset, 0x1000);
        assert_eq!((m[0].major, m[0].minor, m[0].inode), (0xfd, 1, 1234));
        assert_eq!(m[0].prot(), 3);
        assert!(!m[0].shared());
        assert!(m[1].has("gd"));
        assert_eq!(m[1].path, "[stack]");
    }

    #[test]
    fn limits_parse() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            512                  1024                 files     \n";
        let l = parse_limits(text);
        assert_eq!(l, vec![(0, u64::MAX, u64::MAX), (7, 512, 1024)]);
    }

    #[test]
    fn fdinfo_parse() {
        let f = parse_fdinfo("pos:\t12\nflags:\t02100002\nmnt_id:\t25\nino:\t99\n");
        assert_eq!(f.pos, 12);
        assert_eq!(f.flags, 0o2100002);
        assert_eq!(f.mnt_id, 25);
        assert_eq!(f.ino, 99);
    }
}
