//! The network lock of a plain checkpoint (`lpm checkpoint
//! --tcp-established`): packet filter rules that drop every packet of the
//! tree's connections to peers outside it, from before their state is
//! read until a restore has rebuilt them, so that the peer only
//! retransmits meanwhile. Without it the kernel would go on acknowledging
//! data the image never holds, and the killed tree's sockets would reset
//! the peer.
//!
//! One nftables table of its own per checkpoint (`inet lpm-PID-TIME`),
//! with a set of 4-tuples per family and input and output chains that drop
//! what matches; where `nft` is missing, iptables and ip6tables rules
//! tagged with the same name. Segments the restore makes up for a
//! connection (`files::tcp_segment`) carry a mark the rules let through.
//! The rules live in the network namespace lpm runs in (a connection to a
//! peer outside the tree is in it: a namespace the tree owns is rebuilt
//! by the restore). The image records them (`TreeImage::net_lock`); the
//! restore removes them once the connections exist again, just before
//! they leave repair mode. A failed checkpoint removes them, and so does
//! one whose tree goes on running. A restore that finds them gone (a
//! reboot, an operator) goes on: there is nothing left to unlock.
//!
//! A migration locks a partition's network differently (its veth off the
//! bridge, lpm-host) and never uses this.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use lpm_image::{InetAddr, IptablesRule, NetLockBackend, NetLockImage};

use crate::files::{tcp_mark, Seen};
use crate::{EngineError, Result};

/// Rules installed by this checkpoint, removed when dropped unless kept
/// ([`NetLock::keep`]).
#[derive(Debug)]
pub struct NetLock {
    name: String,
    backend: Option<NetLockBackend>,
    /// nftables: the table exists.
    table: bool,
    /// iptables: every rule inserted.
    rules: Vec<IptablesRule>,
    kept: bool,
}

fn lock_err(what: String, detail: impl Into<String>) -> EngineError {
    EngineError::Io { what, source: std::io::Error::other(detail.into()) }
}

/// Runs `cmd` with `input` on its standard input; its error output on
/// failure.
fn run(cmd: &str, args: &[String], input: Option<&str>) -> std::result::Result<(), String> {
    let mut c = Command::new(cmd);
    c.args(args).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("run {cmd}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| format!("write to {cmd}: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("wait for {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn works(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// An address as nft and iptables write it; IPv4-mapped IPv6 as IPv4
/// (the packets on the wire are IPv4).
fn text(a: &InetAddr) -> (bool, String) {
    match a.ip.len() {
        4 => (false, std::net::Ipv4Addr::new(a.ip[0], a.ip[1], a.ip[2], a.ip[3]).to_string()),
        16 => {
            let ip: [u8; 16] = a.ip.clone().try_into().unwrap_or([0; 16]);
            let v6 = std::net::Ipv6Addr::from(ip);
            match v6.to_ipv4_mapped() {
                Some(v4) => (false, v4.to_string()),
                None => (true, v6.to_string()),
            }
        }
        _ => (false, String::new()),
    }
}

/// The identity of lpm's own network namespace.
fn own_netns() -> u64 {
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0)
}

impl NetLock {
    /// A lock with a name unique to this checkpoint; nothing is installed
    /// before the first connection is added.
    pub fn new() -> NetLock {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        NetLock { name: format!("lpm-{}-{nanos:x}", std::process::id()), backend: None, table: false, rules: Vec::new(), kept: false }
    }

    /// Drops every packet of the connection between `local` and `peer`
    /// (a socket of the network namespace `net_ns`, as the image names
    /// it), both ways, from now on.
    pub fn add(&mut self, seen: &Seen, net_ns: u64, local: &InetAddr, peer: &InetAddr) -> Result<()> {
        if net_ns != 0 {
            return Err(seen.unsupported(format!(
                "TCP connection to {} outside the tree from a network namespace the tree owns: lpm locks connections of its own namespace only",
                crate::files::show_addr(peer)
            )));
        }
        let backend = match self.backend {
            Some(b) => b,
            None => {
                let b = if works("nft") {
                    NetLockBackend::Nftables
                } else if works("iptables") && works("ip6tables") {
                    NetLockBackend::Iptables
                } else {
                    return Err(seen.unsupported(
                        "TCP connection outside the tree: locking the network needs nft (nftables) or iptables, and neither runs here",
                    ));
                };
                self.backend = Some(b);
                b
            }
        };
        let ((v6, l), (_, p)) = (text(local), text(peer));
        let what = || format!("lock the network for the connection {} - {}", crate::files::show_addr(local), crate::files::show_addr(peer));
        match backend {
            NetLockBackend::Nftables => {
                let mut script = String::new();
                if !self.table {
                    script.push_str(&self.nft_table());
                }
                let set = if v6 { "c6" } else { "c4" };
                script.push_str(&format!(
                    "add element inet {n} {set} {{ {l} . {lp} . {p} . {pp}, {p} . {pp} . {l} . {lp} }}\n",
                    n = self.name,
                    lp = local.port,
                    pp = peer.port
                ));
                run("nft", &["-f".into(), "-".into()], Some(&script)).map_err(|e| lock_err(what(), e))?;
                self.table = true;
            }
            NetLockBackend::Iptables => {
                let mark = format!("{:#x}", tcp_mark());
                let rule = |chain: &str, src: &str, sport: u32, dst: &str, dport: u32| IptablesRule {
                    ipv6: v6,
                    args: [
                        chain,
                        "-p",
                        "tcp",
                        "-s",
                        src,
                        "--sport",
                        &sport.to_string(),
                        "-d",
                        dst,
                        "--dport",
                        &dport.to_string(),
                        "-m",
                        "mark",
                        "!",
                        "--mark",
                        &mark,
                        "-m",
                        "comment",
                        "--comment",
                        &self.name,
                        "-j",
                        "DROP",
                    ]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                };
                for r in [rule("OUTPUT", &l, local.port, &p, peer.port), rule("INPUT", &p, peer.port, &l, local.port)] {
                    let mut args = vec!["-w".to_string(), "-I".to_string()];
                    args.extend(r.args.iter().cloned());
                    run(if v6 { "ip6tables" } else { "iptables" }, &args, None).map_err(|e| lock_err(what(), e))?;
                    self.rules.push(r);
                }
            }
            NetLockBackend::Invalid => unreachable!("never chosen"),
        }
        Ok(())
    }

    fn nft_table(&self) -> String {
        let mark = tcp_mark();
        let rules = "ip saddr . tcp sport . ip daddr . tcp dport @c4 drop; ip6 saddr . tcp sport . ip6 daddr . tcp dport @c6 drop;";
        format!(
            "table inet {n} {{\n  set c4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; }}\n  set c6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; }}\n  chain input {{ type filter hook input priority -160; policy accept; meta mark {mark:#x} accept; {rules} }}\n  chain output {{ type filter hook output priority -160; policy accept; meta mark {mark:#x} accept; {rules} }}\n}}\n",
            n = self.name
        )
    }

    /// What the image records, when anything was locked.
    pub fn image(&self) -> Option<NetLockImage> {
        let backend = self.backend?;
        if !self.table && self.rules.is_empty() {
            return None;
        }
        Some(NetLockImage {
            backend: backend as i32,
            name: self.name.clone(),
            rules: self.rules.clone(),
            mark: tcp_mark(),
            net_ns: own_netns(),
        })
    }

    /// Leaves the rules in place (the image records them: the restore
    /// removes them).
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Default for NetLock {
    fn default() -> NetLock {
        NetLock::new()
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Some(img) = self.image() {
            if let Err(e) = unlock(&img) {
                tracing::error!(lock = %self.name, error = %e, "remove the network lock");
            }
        }
    }
}

/// Removes the rules of a lock an image records. Rules already gone are
/// no error (the lock was lifted by someone else, or the machine
/// restarted); a lock of another network namespace is not looked for.
pub fn unlock(img: &NetLockImage) -> Result<()> {
    if img.net_ns != 0 && img.net_ns != own_netns() {
        tracing::warn!(lock = %img.name, "the image's network lock was taken in another network namespace: not removed from here");
        return Ok(());
    }
    let what = || format!("remove the network lock {}", img.name);
    match NetLockBackend::try_from(img.backend) {
        Ok(NetLockBackend::Nftables) => {
            match run("nft", &["delete".into(), "table".into(), "inet".into(), img.name.clone()], None) {
                Ok(()) => Ok(()),
                // Gone already: nothing to unlock.
                Err(e) if e.contains("No such file or directory") => Ok(()),
                Err(e) if !works("nft") => {
                    tracing::warn!(lock = %img.name, error = %e, "nft does not run here: the lock cannot be there");
                    Ok(())
                }
                Err(e) => Err(lock_err(what(), e)),
            }
        }
        Ok(NetLockBackend::Iptables) => {
            for r in &img.rules {
                let cmd = if r.ipv6 { "ip6tables" } else { "iptables" };
                let mut args = vec!["-w".to_string(), "-D".to_string()];
                args.extend(r.args.iter().cloned());
                if let Err(e) = run(cmd, &args, None) {
                    // A rule already gone says "does a matching rule exist
                    // in that chain?" (or "Bad rule"); anything else fails.
                    if !(e.contains("matching rule") || e.contains("Bad rule") || !works(cmd)) {
                        return Err(lock_err(what(), e));
                    }
                }
            }
            Ok(())
        }
        _ => Err(EngineError::Incompatible(format!("network lock {} has an unknown backend {}", img.name, img.backend))),
    }
}
