//! Fault injection for the failure tests: named points in the migration
//! where a test can make this lpmd fail on purpose (STYLE.md: "a failure at
//! any step loses nothing" is proven by making each step fail).
//!
//! Compiled in always and inert unless lpmd was started with `LPM_FAULT`
//! in its environment (the failure tests set it; nobody else does). The
//! variable holds rules separated by commas:
//!
//! ```text
//! LPM_FAULT = RULE[,RULE...]
//! RULE      = [HOST:]POINT=ACTION[+after=N]
//! ACTION    = kill | fail | flip | drop | sleep=MS
//! ```
//!
//! - `HOST:` restricts the rule to the lpmd of host HOST (a lab
//!   passes one environment to every host's lpmd).
//! - `kill`: SIGKILL this lpmd at once, as a crash would (nothing is
//!   cleaned up, no message leaves).
//! - `fail`: [`point`] returns an error, as a failed step would.
//! - `flip`: [`corrupt`] inverts one byte in the middle of the frame.
//! - `drop`: [`dropped`] says the message at the point is lost: it is not
//!   sent, and the connection stays up, as when a network loses it.
//! - `sleep=MS`: the point takes MS milliseconds longer (a slow peer), on
//!   every hit from the first eligible one on.
//! - `after=N`: the first N hits of the point pass untouched; the rule acts
//!   on hit N+1 (`after=2` on `target.pages` acts on the third frame).
//!
//! `kill`, `fail` and `flip` act once; `sleep` on every eligible hit. Each
//! action is logged ("fault injected", with the point and the hit) before
//! it happens, so a test can tell that it fired. The rules are read once,
//! at the first hit of any point; a malformed `LPM_FAULT` makes every
//! [`point`] fail, naming the mistake, rather than quietly test nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Result};

/// The environment variable holding the rules.
pub const ENV: &str = "LPM_FAULT";

/// What a rule does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL this lpmd.
    Kill,
    /// Return an error from [`point`].
    Fail,
    /// Invert the middle byte of the frame given to [`corrupt`].
    Flip,
    /// The message at the point is lost ([`dropped`]).
    Drop,
    /// Wait this long at the point.
    Sleep(Duration),
}

/// One rule of `LPM_FAULT`.
#[derive(Debug)]
pub struct Rule {
    /// Only for the lpmd of this host, when given.
    pub host: Option<String>,
    /// The point's name (`target.pages`, `source.pages`, ...).
    pub point: String,
    /// What happens.
    pub action: Action,
    /// Hits that pass before the rule acts.
    pub after: u64,
    hits: AtomicU64,
    fired: AtomicBool,
}

impl Rule {
    /// Counts a hit; true when the rule acts on it.
    fn hit(&self) -> Option<u64> {
        let n = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= self.after {
            return None;
        }
        match self.action {
            Action::Sleep(_) => Some(n),
            _ => (!self.fired.swap(true, Ordering::Relaxed)).then_some(n),
        }
    }
}

/// Parses `LPM_FAULT` text; the rules restricted to another host than
/// `host` are dropped. The error names the rule at fault.
pub fn parse(text: &str, host: Option<&str>) -> std::result::Result<Vec<Rule>, String> {
    let mut out = Vec::new();
    for raw in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let bad = |why: &str| format!("{ENV} rule {raw:?}: {why}");
        let (lhs, rhs) = raw.split_once('=').ok_or_else(|| bad("want [HOST:]POINT=ACTION"))?;
        let (rule_host, point) = match lhs.split_once(':') {
            Some((h, p)) => (Some(h.trim().to_string()), p.trim()),
            None => (None, lhs.trim()),
        };
        if point.is_empty() || !point.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
            return Err(bad("want a point name such as target.pages"));
        }
        if rule_host.as_deref() == Some("") {
            return Err(bad("empty host before ':'"));
        }
        let mut parts = rhs.split('+').map(str::trim);
        let action = match parts.next().unwrap_or("") {
            "kill" => Action::Kill,
            "fail" => Action::Fail,
            "flip" => Action::Flip,
            "drop" => Action::Drop,
            a => match a.strip_prefix("sleep=") {
                Some(ms) => Action::Sleep(Duration::from_millis(ms.parse().map_err(|_| bad("sleep=MS wants milliseconds"))?)),
                None => return Err(bad("unknown action (kill, fail, flip, drop, sleep=MS)")),
            },
        };
        let mut after = 0;
        for m in parts {
            match m.strip_prefix("after=") {
                Some(n) => after = n.parse().map_err(|_| bad("after=N wants a number"))?,
                None => return Err(bad("unknown modifier (after=N)")),
            }
        }
        if rule_host.as_deref().is_some_and(|h| Some(h) != host) {
            continue;
        }
        out.push(Rule { host: rule_host, point: point.to_string(), action, after, hits: AtomicU64::new(0), fired: AtomicBool::new(false) });
    }
    Ok(out)
}

/// This lpmd's host, once its configuration is read ([`set_host`]): the
/// points are called deep in the migration, where no context reaches
/// them.
static OWN_HOST: OnceLock<String> = OnceLock::new();

/// Names this lpmd's host for the rules restricted to one (`HOST:`);
/// called before any point can fire.
pub fn set_host(host: &str) {
    let _ = OWN_HOST.set(host.to_string());
}

fn own_host() -> Option<String> {
    OWN_HOST.get().cloned()
}

/// The rules of this process, read once.
fn rules() -> &'static std::result::Result<Vec<Rule>, String> {
    static RULES: OnceLock<std::result::Result<Vec<Rule>, String>> = OnceLock::new();
    RULES.get_or_init(|| {
        let Ok(text) = std::env::var(ENV) else { return Ok(Vec::new()) };
        let r = parse(&text, own_host().as_deref());
        match &r {
            Ok(rules) if !rules.is_empty() => tracing::warn!(rules = ?rules, "fault injection armed"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "fault injection: bad {ENV}"),
        }
        r
    })
}

/// The rules of point `name` that act on this hit.
fn firing(name: &str) -> Result<Vec<(Action, u64)>> {
    let rules = rules().as_ref().map_err(|e| anyhow!("fault injection: {e}"))?;
    Ok(rules.iter().filter(|r| r.point == name).filter_map(|r| r.hit().map(|n| (r.action, n))).collect())
}

fn kill_self(name: &str, hit: u64) {
    tracing::warn!(point = name, hit, action = "kill", "fault injected");
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    // SIGKILL is not delivered synchronously to every thread; nothing may
    // run on meanwhile.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Whether any rule names point `name` (or the rules are malformed, which
/// the point reports): a hot path takes a slower way that the point can
/// act on only then.
pub fn watched(name: &str) -> bool {
    rules().as_ref().map_or(true, |rules| rules.iter().any(|r| r.point == name))
}

/// Carries out the rules of point `name` that act on this hit: kill,
/// fail (an error), sleep; flips `frame` when one is given; true when the
/// message at the point is to be lost.
fn fire(name: &str, mut frame: Option<&mut [u8]>) -> Result<bool> {
    let mut lost = false;
    for (action, hit) in firing(name)? {
        match action {
            Action::Kill => kill_self(name, hit),
            Action::Fail => {
                tracing::warn!(point = name, hit, action = "fail", "fault injected");
                return Err(anyhow!("fault injected at {name} (hit {hit})"));
            }
            Action::Sleep(d) => {
                tracing::warn!(point = name, hit, action = "sleep", ms = d.as_millis() as u64, "fault injected");
                std::thread::sleep(d);
            }
            Action::Drop => {
                tracing::warn!(point = name, hit, action = "drop", "fault injected");
                lost = true;
            }
            Action::Flip => match frame.as_deref_mut() {
                Some(f) if !f.is_empty() => {
                    let at = f.len() / 2;
                    f[at] ^= 0xff;
                    tracing::warn!(point = name, hit, action = "flip", offset = at, len = f.len(), "fault injected");
                }
                _ => {}
            },
        }
    }
    Ok(lost)
}

/// Called at the named point; returns an error when a test asked for a
/// failure here (or does what the test asked, such as killing lpmd).
pub fn point(name: &str) -> Result<()> {
    fire(name, None).map(|_| ())
}

/// Called where a message is about to be sent: true when a test asked
/// for it to be lost here (`drop`); `kill`, `fail` (as an error) and
/// `sleep` act as at [`point`].
pub fn dropped(name: &str) -> Result<bool> {
    fire(name, None)
}

/// Lets a test corrupt an outgoing frame at the named point (`flip`), or
/// kill or slow this lpmd there; a `fail` here is only logged.
pub fn corrupt(name: &str, frame: &mut [u8]) {
    if let Err(e) = fire(name, Some(frame)) {
        tracing::error!(point = name, error = format!("{e:#}"), "fault injection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str, host: Option<&str>) -> Rule {
        let mut r = parse(text, host).unwrap();
        assert_eq!(r.len(), 1, "{text}");
        r.remove(0)
    }

    #[test]
    fn actions_and_modifiers() {
        let r = one("target.pages=kill", Some("h2"));
        assert_eq!((r.host.as_deref(), r.point.as_str(), r.action, r.after), (None, "target.pages", Action::Kill, 0));
        assert_eq!(one("source.round=fail", None).action, Action::Fail);
        assert_eq!(one("source.send.go=drop", None).action, Action::Drop);
        assert_eq!(one("source.pages=flip+after=2", None).after, 2);
        let r = one(" h2:target.pages = sleep=250 + after=3 ", Some("h2"));
        assert_eq!((r.host.as_deref(), r.action, r.after), (Some("h2"), Action::Sleep(Duration::from_millis(250)), 3));
    }

    #[test]
    fn host_restriction() {
        let rules = parse("h2:target.pages=kill,h1:source.pages=flip,target.go=fail", Some("h1")).unwrap();
        let points: Vec<&str> = rules.iter().map(|r| r.point.as_str()).collect();
        assert_eq!(points, ["source.pages", "target.go"]);
        // An lpmd that does not know its host takes only unrestricted rules.
        assert_eq!(parse("h2:target.pages=kill,target.go=fail", None).unwrap().len(), 1);
        assert!(parse("", Some("h1")).unwrap().is_empty());
        assert!(parse(" , ", Some("h1")).unwrap().is_empty());
    }

    #[test]
    fn mistakes_are_named() {
        for (bad, says) in [
            ("target.pages", "want [HOST:]POINT=ACTION"),
            ("target.pages=explode", "unknown action"),
            ("target.pages=sleep=soon", "milliseconds"),
            ("target.pages=kill+after=x", "after=N"),
            ("target.pages=kill+twice", "unknown modifier"),
            ("=kill", "point name"),
            (":target.pages=kill", "empty host"),
            ("h2:target pages=kill", "point name"),
        ] {
            let e = parse(bad, Some("h2")).unwrap_err();
            assert!(e.contains(says) && e.contains(bad.split(',').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn after_and_once() {
        let r = one("target.pages=fail+after=2", None);
        let hits: Vec<Option<u64>> = (0..5).map(|_| r.hit()).collect();
        assert_eq!(hits, [None, None, Some(3), None, None]);
        let s = one("target.pages=sleep=1+after=1", None);
        let hits: Vec<Option<u64>> = (0..3).map(|_| s.hit()).collect();
        assert_eq!(hits, [None, Some(2), Some(3)]);
    }

    #[test]
    fn unarmed_points_pass() {
        // This test process has no LPM_FAULT (nobody sets it in cargo's
        // environment): every point passes and frames stay as they are.
        assert!(std::env::var(ENV).is_err(), "run the unit tests without {ENV}");
        point("target.pages").unwrap();
        let mut f = vec![7u8; 16];
        corrupt("source.pages", &mut f);
        assert_eq!(f, vec![7u8; 16]);
    }
}
