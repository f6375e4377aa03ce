//! The remote control API (docs/api.md) of real lpmd's in a lab: who may
//! call it, the CLI's hosts file, and the metrics page.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lpm_agent::api::{Request, Response};
use lpm_agent::client::{get_text, operator_tls, Client, Remote};
use lpm_trust::{Pki, Role};

mod common;
use common::lab::*;
use common::*;

/// A client of `host`'s API in the lab presenting `cert`/`key` (of the
/// CA `ca`), from the lab's management network.
fn remote(lab: &TestLab, ca: &Path, cert: &Path, key: &Path) -> Remote {
    let l = lab.lab();
    let hosts = lpm_host::hosts::HostsFile::load(&l.hosts_file()).expect("the lab's hosts file");
    Remote { addr: hosts.hosts["h1"].api, netns: hosts.netns.clone(), tls: operator_tls(ca, cert, key).expect("load the identity") }
}

fn hosts_json(lab: &TestLab) -> Vec<serde_json::Value> {
    let out = lab.lpm(&["host", "list", "--json"]);
    assert!(out.status.success(), "host list: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("host list --json is JSON")
}

/// An operator's certificate reaches h1's API and lists its partitions;
/// one from another CA, an expired one, and a host's of the same CA, are
/// refused at the
/// API port before any request is handled (lpmd logs the refusal, and
/// serves nothing to them). The metrics page, scraped after a migration,
/// is valid Prometheus text with the migration counted. A host whose
/// lpmd is gone is listed as unreachable and the other still answers.
#[test]
fn operators_reach_the_api_others_are_refused_and_metrics_count_a_migration() {
    let lab = TestLab::up("api", 2);
    let l = lab.lab();
    let pki = l.pki().unwrap();
    lab.create("web", "h1", Some("64M"), &["sleep".into(), "1000".into()]).expect("create web on h1");

    // The lab's operator.
    let op = pki.paths(Role::Operator, lpm_host::lab::LAB_OPERATOR);
    let r = remote(&lab, &pki.ca_cert(), &op.cert, &op.key);
    match Client::remote("h1", r.clone()).call(&Request::List).expect("an operator lists h1's partitions") {
        Response::Partitions(p) => assert!(p.iter().any(|p| p.spec.name == "web"), "{p:?}"),
        other => panic!("h1 answered {other:?}"),
    }
    let (status, _) = get_text("h1", &r, "/v1/nowhere").unwrap();
    assert_eq!(status, 404, "an unknown route");

    // Another site's operator: the handshake fails, no request is read.
    let foreign_dir = lab.root.join("foreign-pki");
    let foreign = Pki::init(&foreign_dir).unwrap();
    let fop = foreign.enroll(Role::Operator, lpm_host::lab::LAB_OPERATOR).unwrap();
    let fr = remote(&lab, &foreign.ca_cert(), &fop.cert, &fop.key);
    let e = format!("{:#}", Client::remote("h1", fr.clone()).call(&Request::List).unwrap_err());
    assert!(e.contains("TLS handshake") || e.contains("certificate"), "a foreign operator: {e}");
    // Trusting the foreign CA cannot help either: h1's certificate is not
    // that CA's, and h1 does not take the foreign certificate.
    let mixed = remote(&lab, &pki.ca_cert(), &fop.cert, &fop.key);
    let e = format!("{:#}", Client::remote("h1", mixed).call(&Request::List).unwrap_err());
    assert!(!e.contains("Partitions"), "a foreign certificate got an answer: {e}");
    lab.wait_for_log("h1", "api TLS handshake", Duration::from_secs(20));
    // The site's own operator certificate, expired.
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    let old = pki.issue(Role::Operator, "old", past - time::Duration::days(1), past).unwrap();
    let or = remote(&lab, &pki.ca_cert(), &old.cert, &old.key);
    assert!(Client::remote("h1", or).call(&Request::List).is_err(), "an expired certificate got an answer");

    // A host's certificate of the same CA: the handshake completes, the
    // connection is closed before any request is read.
    let h2 = pki.paths(Role::Host, "h2");
    let hr = remote(&lab, &pki.ca_cert(), &h2.cert, &h2.key);
    assert!(Client::remote("h1", hr).call(&Request::List).is_err(), "a host's certificate got an answer");
    // h1 counts each refusal (its log says them at most once a second):
    // three at the handshake, one after it.
    let t = Instant::now();
    loop {
        let page = get_text("h1", &r, "/metrics").unwrap().1;
        let m = parse_prometheus(&page).unwrap_or_else(|e| panic!("h1's metrics: {e}\n{page}"));
        let count = |result| m.value("lpm_api_connections_total", &[("result", result)]).unwrap_or_else(|| panic!("{page}"));
        if (count("refused_tls"), count("refused_role")) == (3.0, 1.0) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "h1 did not count the refusals:\n{page}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A migration, then the metrics of both ends.
    match lab.migrate("web", "h2") {
        Moved::Completed(_) => {}
        Moved::Failed(e) => panic!("migrate web to h2: {e}"),
    }
    let (status, page) = get_text("h1", &r, "/metrics").unwrap();
    assert_eq!(status, 200, "{page}");
    let m = parse_prometheus(&page).unwrap_or_else(|e| panic!("h1's metrics are not valid Prometheus text: {e}\n{page}"));
    assert_eq!(m.value("lpm_migrations_total", &[("outcome", "completed")]), Some(1.0), "{page}");
    assert_eq!(m.value("lpm_migration_downtime_seconds_count", &[]), Some(1.0), "{page}");
    assert!(m.value("lpm_migration_downtime_seconds_sum", &[]).unwrap() > 0.0, "{page}");
    assert!(m.value("lpm_migration_sent_bytes_total", &[]).unwrap() > 0.0, "{page}");
    assert!(m.value("lpm_migration_precopy_rounds_total", &[]).unwrap() >= 1.0, "{page}");
    assert_eq!(m.value("lpm_partitions", &[("state", "running")]), Some(0.0), "{page}");
    assert!(m.value("lpm_host_memory_available_bytes", &[]).unwrap() > 0.0, "{page}");
    for (family, kind) in [("lpm_migration_downtime_seconds", "histogram"), ("lpm_migration_total_seconds", "histogram")] {
        assert_eq!(m.types.get(family).map(String::as_str), Some(kind), "{page}");
    }
    let h2_page = {
        let hosts = lpm_host::hosts::HostsFile::load(&l.hosts_file()).unwrap();
        let r2 = Remote { addr: hosts.hosts["h2"].api, ..r.clone() };
        get_text("h2", &r2, "/metrics").unwrap().1
    };
    let m2 = parse_prometheus(&h2_page).unwrap_or_else(|e| panic!("h2's metrics: {e}\n{h2_page}"));
    assert_eq!(m2.value("lpm_partitions", &[("state", "running")]), Some(1.0), "{h2_page}");
    assert!(m2.value("lpm_host_partition_memory_limit_bytes", &[]).unwrap() >= (64 << 20) as f64, "{h2_page}");

    // h2's lpmd gone: h2 is unreachable, h1 still answers.
    let pid = lab.lpmd_pid("h2").expect("h2's lpmd pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}/cwd")).exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "h2's lpmd survived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
    let rows = hosts_json(&lab);
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap_or_else(|| panic!("{n} not listed: {rows:?}")).clone();
    assert_eq!((row("h1")["reachable"].clone(), row("h1")["partitions"].clone()), (true.into(), 0.into()), "{rows:?}");
    assert_eq!(row("h2")["reachable"], false, "{rows:?}");
    assert!(row("h2")["error"].as_str().is_some_and(|e| e.contains("10.213.0.12") || e.contains("h2")), "{rows:?}");
    let out = lab.lpm(&["host", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("h2") && l.contains("unreachable")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("h1") && l.contains("reachable")), "{text}");
}

/// `lpm host add/list/remove` on a hosts file of its own (`--config`):
/// the round trip, a clear error for a bad address and for an unknown
/// name, and a host that does not answer listed as unreachable.
#[test]
fn host_add_list_remove_round_trip() {
    let s = Scene::new("hosts");
    let file = s.path("hosts.toml");
    let f = file.to_str().unwrap();
    let pki = Pki::init(&s.path("pki")).unwrap();
    let op = pki.enroll(Role::Operator, "ann").unwrap();
    let nowhere = s.path("no-lab");
    let lpm = |args: &[&str]| {
        let out = Command::new(LPM).args(args).env("LPM_LAB", &nowhere).env_remove("LPM_CONFIG").stdin(Stdio::null()).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let ca = pki.ca_cert();
    let (ok, out, err) = lpm(&[
        "host",
        "add",
        "alpha",
        "127.0.0.1:1",
        "--config",
        f,
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        op.cert.to_str().unwrap(),
        "--key",
        op.key.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("alpha") && out.contains("127.0.0.1:1"), "{out}{err}");
    let (ok, out, err) = lpm(&["host", "add", "beta", "192.0.2.7", "--mover", "192.0.2.7:9000", "--config", f]);
    assert!(ok && out.contains("192.0.2.7:7412") && out.contains("192.0.2.7:9000"), "{out}{err}");

    let (ok, _, err) = lpm(&["host", "add", "gamma", "not-an-address", "--config", f]);
    assert!(!ok && err.contains("gamma") && err.contains("not-an-address"), "a bad address: {err}");
    let (ok, _, err) = lpm(&["host", "add", "gamma", "10.0.0.1:70000", "--config", f]);
    assert!(!ok && err.contains("10.0.0.1:70000"), "a bad port: {err}");
    let (ok, _, err) = lpm(&["host", "add", "bad.name", "10.0.0.1", "--config", f]);
    assert!(!ok && err.contains("bad.name"), "a bad name: {err}");

    // alpha refuses connections: unreachable, and the list still comes.
    let (ok, out, err) = lpm(&["host", "list", "--json", "--config", f]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "beta"], "{out}");
    assert_eq!(rows[0]["reachable"], false, "{out}");
    assert!(rows[0]["error"].as_str().unwrap().contains("127.0.0.1:1"), "{out}");
    assert_eq!(rows[1]["mover"], "192.0.2.7:9000", "{out}");

    let (ok, _, err) = lpm(&["host", "remove", "delta", "--config", f]);
    assert!(!ok && err.contains("delta") && err.contains("alpha, beta"), "an unknown name: {err}");
    let (ok, _, err) = lpm(&["host", "remove", "beta", "--config", f]);
    assert!(ok, "{err}");
    let (ok, out, err) = lpm(&["host", "list", "--json", "--config", f]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    // The file is the operator's alone: it names the operator's key.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    // LPM_CONFIG points at the same file for every command.
    let out = Command::new(LPM).args(["host", "list"]).env("LPM_LAB", &nowhere).env("LPM_CONFIG", &file).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("alpha"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// What a strict reading of a Prometheus text page (format 0.0.4) finds:
/// each family's TYPE and each sample's value by name and labels.
struct Metrics {
    types: BTreeMap<String, String>,
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Metrics {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.sort();
        self.samples.get(&(name.to_string(), l)).copied()
    }
}

fn valid_name(n: &str, colon: bool) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses a page strictly: every line a comment (HELP or TYPE before the
/// family's samples, TYPE at most once, of a known type) or a sample of a
/// family whose TYPE came before (histograms by their _bucket, _sum and
/// _count), valid metric and label names, quoted label values with only
/// the format's escapes, no duplicate sample, a float value; a
/// histogram's buckets rising to a +Inf bucket equal to its count.
fn parse_prometheus(page: &str) -> Result<Metrics, String> {
    let mut m = Metrics { types: BTreeMap::new(), samples: BTreeMap::new() };
    let mut helped = BTreeSet::new();
    let mut seen_samples = BTreeSet::new();
    if !page.ends_with('\n') {
        return Err("the page does not end with a newline".into());
    }
    for (i, line) in page.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut w = rest.trim_start().splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("HELP"), Some(name), _) if !valid_name(name, true) || !helped.insert(name.to_string()) => {
                    return Err(at("a bad or second HELP".into()));
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_name(name, true) || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at("a bad TYPE".into()));
                    }
                    if seen_samples.contains(name) || m.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at("TYPE after the family's samples, or twice".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(p) => line.split_at(p),
            None => return Err(at("no value".into())),
        };
        if !valid_name(name, true) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let mut labels = Vec::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end = loop {
                let (start, c) = chars.next().ok_or_else(|| at("unclosed labels".into()))?;
                if c == '}' {
                    break start;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if !valid_name(&key, false) {
                    return Err(at(format!("bad label name {key:?}")));
                }
                if chars.next().map(|x| x.1) != Some('"') {
                    return Err(at("a label value is not quoted".into()));
                }
                let mut value = String::new();
                loop {
                    match chars.next().map(|x| x.1) {
                        Some('"') => break,
                        Some('\\') => match chars.next().map(|x| x.1) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => return Err(at(format!("bad escape {other:?}"))),
                        },
                        Some('\n') | None => return Err(at("unclosed label value".into())),
                        Some(c) => value.push(c),
                    }
                }
                labels.push((key, value));
            };
            &body[end + 1..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| at("no value".into()))?;
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => value.parse().map_err(|_| at(format!("bad value {value:?}")))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|f| m.types.get(*f).is_some_and(|k| k == "histogram" || k == "summary"))
            .unwrap_or(name);
        if !m.types.contains_key(family) {
            return Err(at(format!("a sample of {family}, whose TYPE did not come before")));
        }
        seen_samples.insert(family.to_string());
        labels.sort();
        if m.samples.insert((name.to_string(), labels), v).is_some() {
            return Err(at("a second sample with the same labels".into()));
        }
    }
    for (family, kind) in &m.types {
        if kind != "histogram" {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = m
            .samples
            .iter()
            .filter(|((n, _), _)| *n == format!("{family}_bucket"))
            .map(|((_, l), v)| {
                let le = l.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str()).unwrap_or("");
                (if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) }, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.iter().any(|b| b.0.is_nan()) || buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
            return Err(format!("histogram {family}: a bucket without a valid le, or no +Inf bucket"));
        }
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("histogram {family}: buckets are not cumulative"));
        }
        let count = m.value(&format!("{family}_count"), &[]).ok_or(format!("histogram {family}: no _count"))?;
        m.value(&format!("{family}_sum"), &[]).ok_or(format!("histogram {family}: no _sum"))?;
        if buckets.last().unwrap().1 != count {
            return Err(format!("histogram {family}: the +Inf bucket is not the count"));
        }
    }
    Ok(m)
}

/// The parser itself refuses what is not Prometheus text: the check that
/// can fail.
#[test]
fn the_metrics_parser_refuses_bad_pages() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 1\n";
    assert!(parse_prometheus(good).is_ok());
    for bad in [
        "a_total 1\n",                                                                             // no TYPE
        "# TYPE a_total counter\na_total{k=\"v} 1\n",                                              // unclosed
        "# TYPE a_total counter\na_total{1k=\"v\"} 1\n",                                           // label name
        "# TYPE a-total counter\n",                                                                // metric name
        "# TYPE a_total counter\na_total one\n",                                                   // value
        "# TYPE a_total counter\na_total 1\na_total 2\n",                                          // duplicate
        "# TYPE a_total countr\n",                                                                 // type
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",                          // no +Inf
        "# TYPE a_total counter\na_total 1",                                                       // no newline
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted: {bad:?}");
    }
}

/// The API port before the handshake: one address holds at most 8
/// connections still in their handshake (the ninth is closed at once),
/// and idle ones are cut at the handshake's deadline (10 s); both are
/// counted on the metrics page.
#[test]
fn idle_connections_are_bounded_and_cut_at_the_handshake_deadline() {
    use std::io::Read;
    use std::os::fd::AsFd;
    let lab = TestLab::up("apigate", 1);
    let l = lab.lab();
    let hosts = lpm_host::hosts::HostsFile::load(&l.hosts_file()).unwrap();
    let addr = hosts.hosts["h1"].api;
    let ns = std::fs::File::open(Path::new("/run/netns").join(hosts.netns.as_deref().unwrap())).unwrap();
    let connect = || lpm_sys::net::in_netns(ns.as_fd(), || std::net::TcpStream::connect(addr)).unwrap().expect("connect to h1's API");
    let t = Instant::now();
    let mut idle: Vec<std::net::TcpStream> = (0..8).map(|_| connect()).collect();
    // The accept queue is served in order: the ninth finds the eight
    // still in their handshake and is closed without a byte.
    let closed = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    };
    let mut ninth = connect();
    assert!(closed(&mut ninth), "a ninth idle connection from one address was kept");
    for s in &mut idle {
        assert!(closed(s), "an idle connection was not cut");
    }
    let cut = t.elapsed();
    assert!(cut >= Duration::from_secs(9) && cut < Duration::from_secs(60), "idle connections cut after {cut:?}, not at the 10 s deadline");
    let pki = l.pki().unwrap();
    let op = pki.paths(Role::Operator, lpm_host::lab::LAB_OPERATOR);
    let r = remote(&lab, &pki.ca_cert(), &op.cert, &op.key);
    // lpmd counts a connection as it lets it go: wait for the count.
    let t = Instant::now();
    loop {
        let page = get_text("h1", &r, "/metrics").unwrap().1;
        let m = parse_prometheus(&page).unwrap_or_else(|e| panic!("{e}\n{page}"));
        let count = |result| m.value("lpm_api_connections_total", &[("result", result)]).unwrap_or_else(|| panic!("{page}"));
        if (count("refused_limit"), count("refused_tls")) == (1.0, 8.0) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "h1 did not count the refusals:\n{page}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
