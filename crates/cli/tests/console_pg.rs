//! The console's inventory and history on a real PostgreSQL server, and
//! the same scenario on its default SQLite file: hosts registered, a
//! partition seen, a migration made through the console, the audit; the
//! console stopped and started again loses none of it and still knows
//! its tokens; an unauthenticated call is refused.
//!
//! The PostgreSQL server is Debian's package, started by the test in its
//! own directory with only a unix socket there (no port to clash with
//! another test) and stopped after, however the test ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::lab::TestLab;

#[path = "console_browser/console.rs"]
mod console;
use console::Console;

/// A PostgreSQL server of Debian's package for one test: its cluster in
/// the test's directory, listening only on a unix socket there (no port
/// to clash with another test or engineer), trust authentication for
/// the user `postgres`; stopped and removed when dropped.
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    /// The server's unix socket directory.
    pub socket_dir: PathBuf,
}

/// PostgreSQL refuses to run as root: its programs run as the package's
/// `postgres` user.
const AS_POSTGRES: [&str; 5] = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"];

impl PgServer {
    /// Creates a cluster under `dir` (which must not exist) and starts
    /// its server, waiting until it accepts connections.
    pub fn start(dir: &Path) -> PgServer {
        let bin = pg_bin();
        std::fs::create_dir_all(dir).unwrap();
        let data = dir.join("data");
        let socket_dir = dir.join("sock");
        for d in [&data, &socket_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let st = Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir).status().expect("chown");
        assert!(st.success(), "chown {}", dir.display());
        // The server is dropped (stopped, removed) however the test ends,
        // from here on.
        let pg = PgServer { bin, dir: dir.to_path_buf(), data, socket_dir };
        let out = pg
            .as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--no-instructions", "-D"])
            .arg(&pg.data)
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c port=5432 -c fsync=off -c shared_buffers=16MB -c huge_pages=off",
            pg.socket_dir.display()
        );
        // -w: pg_ctl returns once the server accepts connections.
        let out = pg
            .as_postgres("pg_ctl")
            .args(["start", "-w", "-t", "120", "-D"])
            .arg(&pg.data)
            .arg("-l")
            .arg(pg.dir.join("server.log"))
            .args(["-o", &opts])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(pg.dir.join("server.log")).unwrap_or_default()
        );
        pg
    }

    fn as_postgres(&self, prog: &str) -> Command {
        let mut c = Command::new(AS_POSTGRES[0]);
        c.args(&AS_POSTGRES[1..]).arg(self.bin.join(prog));
        c
    }

    /// The database's URL for sqlx: user and database `postgres` over the
    /// unix socket.
    pub fn url(&self) -> String {
        format!("postgres://postgres@localhost/postgres?host={}&port=5432", self.socket_dir.display())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.as_postgres("pg_ctl").args(["stop", "-m", "immediate", "-w", "-D"]).arg(&self.data).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest PostgreSQL of Debian's packages.
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, b): &(u32, PathBuf)| b.join("postgres").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).expect("no PostgreSQL under /usr/lib/postgresql (scripts/setup.sh installs postgresql)")
}

/// Asks `what` of the console until `done` holds of its answer, within
/// `deadline`: the console learns of hosts' changes by polling them
/// (every 500 ms here), so there is no event to wait on from outside.
fn until(c: &Console, what: &str, path: &str, deadline: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + deadline;
    loop {
        let (status, v) = c.api("GET", path, None);
        if status == 200 && done(&v) {
            return v;
        }
        assert!(Instant::now() < end, "{what}: GET {path} answered {status} {v} for {deadline:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x[key].as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The scenario, on the console's database at `database` (None: SQLite).
fn inventory_and_history_survive_a_restart(tag: &str, database: Option<String>) {
    let lab = TestLab::up(tag, 2);
    let mut c = Console::start(&lab, database);
    let l = lab.lab();

    let (status, _) = c.api_as(None, "GET", "/v1/hosts", None);
    assert_eq!(status, 401, "an unauthenticated call is refused");
    // The event stream takes its token as a query parameter too, and
    // refuses a stream with none or a wrong one; the page and the API's
    // description are public.
    assert_eq!(c.api_as(None, "GET", "/v1/events", None).0, 401);
    assert_eq!(c.api_as(None, "GET", "/v1/events?token=lpm_wrong", None).0, 401);
    assert_eq!(c.api_as(None, "GET", "/v1/hosts?token=lpm_wrong", None).0, 401);
    assert_eq!(
        c.api_as(None, "GET", &format!("/v1/hosts?token={}", c.token), None).0,
        401,
        "the token goes in a query on the event stream only"
    );
    for public in ["/", "/ui/app.js", "/ui/style.css", "/openapi.json"] {
        assert_eq!(c.api_as(None, "GET", public, None).0, 200, "GET {public} without a token");
    }

    for h in l.hosts() {
        let body = json!({"name": h.name, "api": h.api.expect("the lab's hosts serve the API").to_string(), "mover": h.listen.to_string()});
        let (status, v) = c.api("POST", "/v1/hosts", Some(&body));
        assert_eq!(status, 201, "POST /v1/hosts {}: {v}", h.name);
    }
    let argv: Vec<String> =
        ["python3", "-c", "import time\nprint('ready', flush=True)\nwhile True: time.sleep(1)"].iter().map(|s| s.to_string()).collect();
    lab.create("kv", "h1", Some("128M"), &argv).unwrap();
    lab.wait_log("kv", "ready", Duration::from_secs(30));
    until(&c, "the partition on h1", "/v1/partitions", Duration::from_secs(60), |v| {
        v.as_array().is_some_and(|a| a.iter().any(|p| p["name"] == "kv" && p["host"] == "h1" && p["state"] == "running"))
    });

    let (status, m) = c.api("POST", "/v1/migrations", Some(&json!({"partition": "kv", "target": "h2"})));
    assert_eq!(status, 202, "POST /v1/migrations: {m}");
    let id = m["id"].as_str().expect("the migration's id").to_string();
    let done = until(&c, "the migration's end", &format!("/v1/migrations/{id}"), Duration::from_secs(180), |v| v["ended_ms"].is_i64());
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(lab.host_of("kv"), "h2");

    let hosts_before = c.api("GET", "/v1/hosts", None).1;
    let audit_before = c.api("GET", "/v1/audit", None).1;
    let by_token =
        |action: &str| audit_before.as_array().is_some_and(|a| a.iter().any(|e| e["action"] == action && e["who"] == "token:browser"));
    assert!(by_token("host.add"), "the audit names who added the hosts: {audit_before}");

    c.stop();
    c.serve();

    let hosts_after = c.api("GET", "/v1/hosts", None).1;
    assert_eq!(names(&hosts_after, "name"), names(&hosts_before, "name"), "hosts after the restart: {hosts_after}");
    assert_eq!(names(&hosts_after, "api"), names(&hosts_before, "api"));
    let (status, m) = c.api("GET", &format!("/v1/migrations/{id}"), None);
    assert_eq!(status, 200, "the migration after the restart: {m}");
    assert_eq!(
        (m["state"].as_str(), m["partition"].as_str(), m["source"].as_str(), m["target"].as_str()),
        (Some("completed"), Some("kv"), Some("h1"), Some("h2")),
        "{m}"
    );
    assert!(m["report"].is_object(), "the report after the restart: {m}");
    let (_, list) = c.api("GET", "/v1/migrations", None);
    assert!(names(&list, "id").contains(&id), "history after the restart: {list}");
    let audit_after = c.api("GET", "/v1/audit", None).1;
    let before: Vec<i64> = audit_before.as_array().unwrap().iter().filter_map(|e| e["id"].as_i64()).collect();
    let after: Vec<i64> = audit_after.as_array().unwrap().iter().filter_map(|e| e["id"].as_i64()).collect();
    assert!(before.iter().all(|i| after.contains(i)), "audit before {audit_before}, after {audit_after}");
    until(&c, "the partition on h2 after the restart", "/v1/partitions", Duration::from_secs(60), |v| {
        v.as_array().is_some_and(|a| a.iter().any(|p| p["name"] == "kv" && p["host"] == "h2"))
    });
}

#[test]
fn sqlite_inventory_and_history_survive_a_restart() {
    inventory_and_history_survive_a_restart("consq", None);
}

#[test]
fn postgres_inventory_and_history_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!(
        "lpm-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    let pg = PgServer::start(&dir);
    inventory_and_history_survive_a_restart("conpg", Some(pg.url()));
}
