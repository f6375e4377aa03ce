//! The migration report: what a migration did, kept as JSON in the
//! history and shown as text by `lpm migration show`; and the one-line
//! progress shown while it runs.
//!
//! Times are milliseconds as floating point numbers and sizes are bytes,
//! so the JSON reads without a schema; the text rendering picks units.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::precopy::RoundStats;

/// Bytes in a page.
const PAGE: f64 = 4096.0;
/// Bytes in a MiB.
const MIB: f64 = 1048576.0;

/// How a migration ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The partition runs on the target.
    Completed,
    /// Given up on purpose (policy or operator); the partition runs on the
    /// source.
    Aborted {
        /// Why.
        reason: String,
        /// The step it was in.
        step: String,
    },
    /// Something broke; the partition runs on the source unless the error
    /// says otherwise.
    Failed {
        /// The error with its causes.
        error: String,
        /// The step it was in.
        step: String,
    },
    /// Go was decided and sent, and the target has not confirmed that its
    /// copy runs: the source keeps its copy frozen and keeps asking
    /// (`lpm migration recover ID` relays the two records).
    InDoubt {
        /// What is known.
        note: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed => write!(f, "completed"),
            Outcome::Aborted { reason, step } => write!(f, "aborted in {step}: {reason}"),
            Outcome::Failed { error, step } => write!(f, "failed in {step}: {error}"),
            Outcome::InDoubt { note } => write!(f, "in doubt: {note}"),
        }
    }
}

/// One pre-copy round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Number, from 1.
    pub n: u32,
    /// Pages sent.
    pub pages: u64,
    /// Bytes on the wire (after compression).
    pub bytes: u64,
    /// Zero pages not sent.
    pub zero_pages_skipped: u64,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// Pages dirtied per second during the round.
    pub dirty_pages_per_s: f64,
    /// The same in MiB per second.
    pub dirty_mib_per_s: f64,
    /// Fraction of CPU taken from the partition during the round.
    pub throttle: f64,
}

impl Round {
    /// A round from pre-copy's figures; `wire_bytes` is what the mover put
    /// on the wire for it and `dirty_rate` the pages per second the
    /// following collection measured.
    pub fn from_stats(s: &RoundStats, wire_bytes: u64, dirty_rate: f64, throttle: f64) -> Round {
        Round {
            n: s.round,
            pages: s.pages,
            bytes: wire_bytes,
            zero_pages_skipped: s.zero_skipped,
            duration_ms: s.duration.as_secs_f64() * 1e3,
            dirty_pages_per_s: dirty_rate,
            dirty_mib_per_s: dirty_rate * PAGE / MIB,
            throttle,
        }
    }
}

/// Where the downtime went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopBreakdown {
    /// Freezing the partition (cgroup freezer and ptrace), ms.
    pub freeze_ms: f64,
    /// Pages sent while frozen.
    pub final_pages: u64,
    /// Bytes of the non-memory state image.
    pub state_image_bytes: u64,
    /// Sending the final pages and the state, ms.
    pub transfer_ms: f64,
    /// Restoring on the target, ms (the read-back check included).
    pub restore_ms: f64,
    /// Of which the target's read-back check of the restored tree, ms.
    #[serde(default)]
    pub verify_ms: f64,
    /// The two-phase handover until the partition ran on the target, ms.
    pub handover_ms: f64,
    /// Before the stop, with new connections held back, waiting for the
    /// partition's passing states to pass (handshakes under way,
    /// connections to accept), ms; the partition ran and served its
    /// established connections meanwhile. Not part of the downtime.
    #[serde(default)]
    pub drain_ms: f64,
    /// Times the stop found a passing state, let the partition run a
    /// moment (its network locked) and stopped it again.
    #[serde(default)]
    pub restops: u32,
    /// Of `freeze_ms`, locking the network and stopping every thread
    /// (the stopping again included), ms.
    #[serde(default)]
    pub stopping_ms: f64,
    /// Of `freeze_ms`, reading, sending and storing the pages written
    /// since the last round, ms.
    #[serde(default)]
    pub last_pages_ms: f64,
    /// Of `freeze_ms`, dumping the non-memory state (the state image), ms.
    #[serde(default)]
    pub dump_ms: f64,
}

impl StopBreakdown {
    /// The time of each phase of the stop, ms, in the order they run;
    /// together they make the downtime.
    pub fn phases(&self) -> [(StopPhase, f64); 5] {
        [
            (StopPhase::Freeze, self.stopping_ms),
            (StopPhase::LastPages, self.last_pages_ms),
            (StopPhase::StateImage, self.dump_ms + self.transfer_ms),
            (StopPhase::Restore, self.restore_ms),
            (StopPhase::Handover, self.handover_ms),
        ]
    }

    /// The phase that took the most of the stop, and its time.
    pub fn longest(&self) -> (StopPhase, f64) {
        self.phases().into_iter().fold((StopPhase::Freeze, f64::MIN), |a, b| if b.1 > a.1 { b } else { a })
    }
}

/// A phase of the stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopPhase {
    /// Locking the network and stopping every thread.
    Freeze,
    /// The pages written since the last round: read, sent, stored.
    LastPages,
    /// The non-memory state: dumped, sent.
    StateImage,
    /// The restore on the target, its check included.
    Restore,
    /// The two-phase handover until the partition runs on the target.
    Handover,
}

impl fmt::Display for StopPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopPhase::Freeze => "freeze",
            StopPhase::LastPages => "last pages",
            StopPhase::StateImage => "state image",
            StopPhase::Restore => "restore",
            StopPhase::Handover => "handover",
        })
    }
}

/// The downtime budget of a migration (`--max-downtime`) and whether its
/// stop kept it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// The allowed downtime, ms.
    pub max_downtime_ms: f64,
    /// The stop took longer than allowed.
    pub over: bool,
    /// By how much: downtime - allowed when over, else 0, ms.
    pub overrun_ms: f64,
    /// When over: the phase of the stop that took the most of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<StopPhase>,
    /// That phase's time, ms (0 when kept).
    #[serde(default)]
    pub cause_ms: f64,
}

impl Budget {
    /// How a stop of `downtime_ms` with this breakdown fared against an
    /// allowed `max_downtime_ms`.
    pub fn of(max_downtime_ms: f64, downtime_ms: f64, stop: &StopBreakdown) -> Budget {
        let over = downtime_ms > max_downtime_ms;
        let (cause, cause_ms) = if over {
            let (p, ms) = stop.longest();
            (Some(p), ms)
        } else {
            (None, 0.0)
        };
        Budget { max_downtime_ms, over, overrun_ms: if over { downtime_ms - max_downtime_ms } else { 0.0 }, cause, cause_ms }
    }
}

/// What a migration did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The migration's id.
    #[serde(default)]
    pub id: String,
    /// The partition.
    pub partition: String,
    /// The host it left.
    pub source: String,
    /// The host it went to.
    pub target: String,
    /// Start, in milliseconds since the Unix epoch (UTC).
    pub started_unix_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// From the start to the end, ms.
    pub total_ms: f64,
    /// Of it, connecting, validation and preparing the target, until the
    /// first round began, ms.
    #[serde(default)]
    pub setup_ms: f64,
    /// From frozen on the source to running on the target, ms (0 when it
    /// never stopped).
    pub downtime_ms: f64,
    /// The pre-copy rounds.
    pub rounds: Vec<Round>,
    /// The stop, when there was one.
    pub stop: Option<StopBreakdown>,
    /// Bytes on the wire in all.
    pub bytes_total: u64,
    /// Average bytes per second on the wire while sending.
    pub throughput_bytes_per_s: f64,
    /// Highest throttle applied.
    pub max_throttle: f64,
    /// Parallel streams used.
    pub streams: u32,
    /// Compression of the page stream ("none", "lz4", "zstd-1", ...).
    pub compression: String,
    /// The downtime budget and whether the stop kept it (a completed
    /// migration; absent in reports of older lpmd's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

impl Report {
    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// Whether the migration completed with a stop longer than allowed.
    pub fn over_budget(&self) -> bool {
        self.outcome == Outcome::Completed && self.budget.as_ref().is_some_and(|b| b.over)
    }

    /// How it ended, in words: the outcome, "completed over budget" for a
    /// completed one whose stop went over.
    pub fn outcome_text(&self) -> String {
        if self.over_budget() {
            "completed over budget".into()
        } else {
            self.outcome.to_string()
        }
    }

    /// For a migration over budget: the line that says by how much and
    /// where the stop went.
    pub fn overrun_line(&self) -> Option<String> {
        let b = self.budget.as_ref().filter(|_| self.over_budget())?;
        let cause = b.cause.map(|c| format!("; most of the stop went to the {c} ({:.1} ms)", b.cause_ms)).unwrap_or_default();
        Some(format!("downtime {:.1} ms, {:.1} ms over the {} ms allowed{cause}", self.downtime_ms, b.overrun_ms, b.max_downtime_ms))
    }

    /// A report read back from JSON.
    pub fn from_json(s: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// A size with a binary unit: "512 B", "4.0 KiB", "1.50 GiB".
pub fn bytes(n: u64) -> String {
    let f = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if f < MIB {
        format!("{:.1} KiB", f / 1024.0)
    } else if f < 1024.0 * MIB {
        format!("{:.1} MiB", f / MIB)
    } else {
        format!("{:.2} GiB", f / (1024.0 * MIB))
    }
}

/// A rate: "123.4 MiB/s".
fn rate(bytes_per_s: f64) -> String {
    format!("{}/s", bytes(bytes_per_s.max(0.0) as u64))
}

/// Milliseconds since the epoch as RFC 3339 UTC ("2024-05-01T12:00:00.250Z").
pub fn rfc3339(unix_ms: u64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    // Milliseconds since 1970 in a u64 stay within time's years (to 9999)
    // for every clock this runs on; past them the raw number is shown.
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms after 1970"))
}

fn pct(f: f64) -> String {
    format!("{:.0} %", f * 100.0)
}

/// The report as readable text: a summary, the rounds as a table and the
/// stop's breakdown.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let id = if r.id.is_empty() { String::new() } else { format!(" {}", r.id) };
    let _ = writeln!(s, "migration{id} of partition {}: {} -> {}", r.partition, r.source, r.target);
    let _ = writeln!(s, "started     {}", rfc3339(r.started_unix_ms));
    match r.overrun_line() {
        Some(l) => {
            let _ = writeln!(s, "outcome     {}: {l}", r.outcome_text());
        }
        None => {
            let _ = writeln!(s, "outcome     {}", r.outcome);
        }
    }
    let _ = writeln!(s, "total       {:.3} s (setup {:.1} ms: connect, validate, prepare)", r.total_ms / 1e3, r.setup_ms);
    match &r.budget {
        Some(b) => {
            let _ = writeln!(s, "downtime    {:.1} ms (allowed {} ms)", r.downtime_ms, b.max_downtime_ms);
        }
        None => {
            let _ = writeln!(s, "downtime    {:.1} ms", r.downtime_ms);
        }
    }
    let _ = writeln!(
        s,
        "transfer    {} in {} rounds at {}, {} stream{}, compression {}",
        bytes(r.bytes_total),
        r.rounds.len(),
        rate(r.throughput_bytes_per_s),
        r.streams,
        if r.streams == 1 { "" } else { "s" },
        r.compression
    );
    let _ = writeln!(s, "throttle    max {}", pct(r.max_throttle));
    if !r.rounds.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:>5} {:>10} {:>12} {:>10} {:>10} {:>14} {:>12} {:>9}",
            "round", "pages", "wire", "zero", "time ms", "dirty pages/s", "dirty MiB/s", "throttle"
        );
        for x in &r.rounds {
            let _ = writeln!(
                s,
                "{:>5} {:>10} {:>12} {:>10} {:>10.1} {:>14.0} {:>12.1} {:>9}",
                x.n,
                x.pages,
                bytes(x.bytes),
                x.zero_pages_skipped,
                x.duration_ms,
                x.dirty_pages_per_s,
                x.dirty_mib_per_s,
                pct(x.throttle)
            );
        }
    }
    if let Some(b) = &r.stop {
        let _ = writeln!(s);
        if b.drain_ms > 0.0 {
            let _ = writeln!(s, "drain       {:.1} ms (new connections held back, the partition running)", b.drain_ms);
        }
        let _ = writeln!(
            s,
            "stop        freeze {:.1} ms (stopping {:.1} ms, last pages {:.1} ms, state dump {:.1} ms)",
            b.freeze_ms, b.stopping_ms, b.last_pages_ms, b.dump_ms
        );
        if b.restops > 0 {
            let _ = writeln!(s, "            stopped again {} times (passing states let pass)", b.restops);
        }
        let _ = writeln!(
            s,
            "            transfer {:.1} ms: {} final pages ({}), state image {}",
            b.transfer_ms,
            b.final_pages,
            bytes(b.final_pages * PAGE as u64),
            bytes(b.state_image_bytes)
        );
        let _ = writeln!(s, "            restore {:.1} ms (its check {:.1} ms)", b.restore_ms, b.verify_ms);
        let _ = writeln!(s, "            handover {:.1} ms", b.handover_ms);
    }
    s
}

/// The live progress line: round, what is left dirty, the rate and what
/// was sent so far.
pub fn progress_line(round: u32, dirty_left_pages: u64, rate_bytes_per_s: f64, sent_bytes: u64) -> String {
    format!(
        "round {round}: {dirty_left_pages} pages dirty ({}), {}, {} sent",
        bytes(dirty_left_pages * PAGE as u64),
        rate(rate_bytes_per_s),
        bytes(sent_bytes)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample() -> Report {
        let r1 = RoundStats {
            round: 1,
            pages: 16384,
            bytes: 64 << 20,
            zero_skipped: 2048,
            dirty_found: 18432,
            unreadable: 0,
            duration: Duration::from_millis(640),
        };
        let r2 = RoundStats { round: 2, pages: 1024, bytes: 4 << 20, duration: Duration::from_millis(41), ..r1.clone() };
        Report {
            id: "m0123abcd".into(),
            partition: "web1".into(),
            source: "host-a".into(),
            target: "host-b".into(),
            started_unix_ms: 1_714_564_800_250,
            outcome: Outcome::Completed,
            total_ms: 1234.0,
            setup_ms: 60.5,
            downtime_ms: 48.7,
            rounds: vec![Round::from_stats(&r1, 30 << 20, 1600.0, 0.0), Round::from_stats(&r2, 2 << 20, 1700.0, 0.2)],
            stop: Some(StopBreakdown {
                freeze_ms: 2.5,
                final_pages: 300,
                state_image_bytes: 90_000,
                transfer_ms: 12.0,
                restore_ms: 30.2,
                verify_ms: 0.4,
                handover_ms: 4.0,
                drain_ms: 0.0,
                restops: 0,
                stopping_ms: 1.0,
                last_pages_ms: 1.0,
                dump_ms: 0.5,
            }),
            bytes_total: 33 << 20,
            throughput_bytes_per_s: 48.0 * MIB,
            max_throttle: 0.2,
            streams: 2,
            compression: "zstd-1".into(),
            budget: Some(Budget { max_downtime_ms: 50.0, over: false, overrun_ms: 0.0, cause: None, cause_ms: 0.0 }),
        }
    }

    #[test]
    fn json_round_trip() {
        let mut reports = vec![sample()];
        reports.push(Report {
            outcome: Outcome::Aborted { reason: "round limit (30 of 30 rounds)".into(), step: "precopy".into() },
            stop: None,
            ..sample()
        });
        reports.push(Report { outcome: Outcome::Failed { error: "connection reset".into(), step: "restore".into() }, ..sample() });
        for r in reports {
            let j = r.to_json();
            assert_eq!(Report::from_json(&j).unwrap(), r, "{j}");
        }
        let j = sample().to_json();
        assert!(j.contains("\"result\": \"completed\""), "{j}");
        let v: serde_json::Value = serde_json::from_str(&Report { stop: None, ..sample() }.to_json()).unwrap();
        assert_eq!(v["rounds"][1]["dirty_mib_per_s"].as_f64().unwrap(), 1700.0 * 4096.0 / MIB);
        assert_eq!(v["stop"], serde_json::Value::Null);
    }

    #[test]
    fn rendering_shows_the_key_figures() {
        let text = render(&sample());
        for want in [
            "partition web1: host-a -> host-b",
            "2024-05-01T12:00:00.250Z",
            "completed",
            "1.234 s",
            "48.7 ms",
            "33.0 MiB in 2 rounds at 48.0 MiB/s, 2 streams, compression zstd-1",
            "max 20 %",
            "freeze 2.5 ms",
            "300 final pages (1.2 MiB), state image 87.9 KiB",
            "restore 30.2 ms",
            "handover 4.0 ms",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let rows: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).collect();
        assert_eq!(rows.len(), 2, "{text}");
        for (row, want) in rows.iter().zip([
            ["1", "16384", "30.0 MiB", "2048", "640.0", "1600", "6.2", "0 %"],
            ["2", "1024", "2.0 MiB", "2048", "41.0", "1700", "6.6", "20 %"],
        ]) {
            for w in want {
                assert!(row.contains(w), "row {row:?} lacks {w}");
            }
        }
        let aborted = render(&Report {
            outcome: Outcome::Aborted { reason: "time limit".into(), step: "precopy".into() },
            stop: None,
            rounds: vec![],
            ..sample()
        });
        assert!(aborted.contains("aborted in precopy: time limit") && !aborted.contains("freeze"), "{aborted}");
    }

    #[test]
    fn progress_line_and_units() {
        assert_eq!(progress_line(3, 1024, 100.0 * MIB, 3 << 30), "round 3: 1024 pages dirty (4.0 MiB), 100.0 MiB/s, 3.00 GiB sent");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn budget_says_whether_the_stop_kept_it_and_where_it_went() {
        let stop = sample().stop.unwrap();
        // freeze 1, last pages 1, state image 0.5 + 12, restore 30.2,
        // handover 4: 48.7 ms.
        let kept = Budget::of(50.0, 48.7, &stop);
        assert_eq!(kept, Budget { max_downtime_ms: 50.0, over: false, overrun_ms: 0.0, cause: None, cause_ms: 0.0 });
        let at = Budget::of(48.7, 48.7, &stop);
        assert!(!at.over, "a stop of exactly the budget keeps it");
        let over = Budget::of(20.0, 48.7, &stop);
        assert!(over.over && (over.overrun_ms - 28.7).abs() < 1e-9, "{over:?}");
        assert_eq!((over.cause, over.cause_ms), (Some(StopPhase::Restore), 30.2));
        let frozen = StopBreakdown { stopping_ms: 400.0, ..stop.clone() };
        assert_eq!(Budget::of(50.0, 448.0, &frozen).cause, Some(StopPhase::Freeze));
        let sum: f64 = stop.phases().iter().map(|p| p.1).sum();
        assert!((sum - 48.7).abs() < 1e-9, "the phases make the downtime: {sum}");
    }

    #[test]
    fn a_stop_over_budget_is_said_in_text_and_json() {
        let r = Report { budget: Some(Budget::of(20.0, 48.7, sample().stop.as_ref().unwrap())), ..sample() };
        assert!(r.over_budget());
        assert_eq!(r.outcome_text(), "completed over budget");
        let text = render(&r);
        assert!(
            text.contains("outcome     completed over budget: downtime 48.7 ms, 28.7 ms over the 20 ms allowed; most of the stop went to the restore (30.2 ms)"),
            "{text}"
        );
        assert!(text.contains("downtime    48.7 ms (allowed 20 ms)"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["outcome"]["result"], "completed");
        assert_eq!(v["budget"]["over"], true);
        assert_eq!(v["budget"]["cause"], "restore");
        assert!((v["budget"]["overrun_ms"].as_f64().unwrap() - 28.7).abs() < 1e-9, "{v}");
        assert_eq!(Report::from_json(&r.to_json()).unwrap(), r);
        // Kept: the outcome says nothing more.
        let kept = sample();
        assert!(!kept.over_budget() && kept.outcome_text() == "completed" && kept.overrun_line().is_none());
        assert!(render(&kept).contains("outcome     completed\n"), "{}", render(&kept));
        // A failed migration is never over budget, whatever its figures.
        let failed =
            Report { outcome: Outcome::Failed { error: "x".into(), step: "restore".into() }, budget: r.budget.clone(), ..sample() };
        assert!(!failed.over_budget() && failed.outcome_text().starts_with("failed"));
        // A report of an older lpmd (no budget, no stop phases) still reads.
        let mut old: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        old.as_object_mut().unwrap().remove("budget");
        for k in ["stopping_ms", "last_pages_ms", "dump_ms"] {
            old["stop"].as_object_mut().unwrap().remove(k);
        }
        let back = Report::from_json(&old.to_string()).unwrap();
        assert!(back.budget.is_none() && !back.over_budget() && back.stop.unwrap().stopping_ms == 0.0);
    }
}
