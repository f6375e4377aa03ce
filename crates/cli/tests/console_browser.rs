//! The console's web page in a real browser: a lab of two hosts, a
//! console serving them, a partition running a program that keeps
//! dirtying its memory; headless Chromium (Debian's, driven through its
//! ChromeDriver) opens the page, logs in with a token, presses Migrate,
//! sees the progress bar move and the report appear in the history, and
//! saves a screenshot. The partition's placement is then checked from
//! outside, through the hosts. The same browser asks the console for
//! every GET route of docs/openapi.json and sees none answer 404.
//!
//! Every wait is on a condition (a log line, a DOM state) with a
//! deadline, never a sleep.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use lpm_console::service::{all_routes, policy};
use serde_json::{json, Value};

mod common;
use common::lab::TestLab;

#[path = "console_browser/console.rs"]
mod console;
#[path = "console_browser/webdriver.rs"]
mod webdriver;
use console::{connector, Console, CONSOLE, LISTEN};
use webdriver::Browser;

/// A program that keeps rewriting a little of its 48 MiB (64 pages every
/// 10 ms): a migration takes a few pre-copy rounds, so the page sees
/// progress, and converges within the default downtime budget.
const DIRTIER: &str = r#"
import time
buf = bytearray(48 << 20)
for off in range(0, len(buf), 4096):
    buf[off] = 1
print("ready", flush=True)
i = 0
while True:
    for k in range(64):
        buf[((i * 64 + k) * 4096 * 3) % len(buf)] = i & 0xff
    i += 1
    time.sleep(0.01)
"#;

/// A call to the console's API from the page, with the token: (status,
/// body as JSON or text).
fn fetch(b: &Browser, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let v = b
        .exec_async(
            "const [token, method, path, body, done] = arguments;
             const opts = {method, headers: {Authorization: 'Bearer ' + token}};
             if (body !== null) { opts.headers['Content-Type'] = 'application/json'; opts.body = JSON.stringify(body); }
             const ctl = new AbortController(); opts.signal = ctl.signal;
             fetch(path, opts).then(async (r) => {
               // An event stream never ends: its status is the answer.
               if ((r.headers.get('content-type') || '').startsWith('text/event-stream')) { ctl.abort(); return done([r.status, null]); }
               const t = await r.text();
               let j; try { j = JSON.parse(t); } catch (_) { j = t; }
               done([r.status, j]);
             }).catch((e) => done([0, String(e)]));",
            json!([token, method, path, body]),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (v[0].as_u64().unwrap_or(0) as u16, v[1].clone())
}

/// The page's base URL. The console's certificate is for
/// `webconsole.consoles.lpm`, mapped to its address for the browser.
fn base() -> String {
    format!("https://{CONSOLE}.consoles.lpm:{}/", LISTEN.rsplit(':').next().unwrap())
}

#[test]
fn page_migrates_a_partition_with_its_button_and_shows_progress_and_report() {
    let lab = TestLab::up("webui", 2);
    let console = Console::start(&lab, None);
    let l = lab.lab();
    let browser = Browser::start(
        &lab.root,
        Some(l.fabric()),
        connector(l.fabric()),
        &[&format!("MAP {CONSOLE}.consoles.lpm 127.0.0.1")],
        &l.pki().unwrap().ca_cert(),
    )
    .expect("start Chromium");
    browser.goto(&base()).expect("open the page");
    browser.wait_for("the login form", "!document.querySelector('#login').hidden", Duration::from_secs(120)).unwrap();

    // The hosts, registered through the API as an operator would.
    for h in l.hosts() {
        let api = h.api.expect("the lab's hosts serve the API").to_string();
        let (status, body) =
            fetch(&browser, &console.token, "POST", "/v1/hosts", Some(json!({"name": h.name, "api": api, "mover": h.listen.to_string()})));
        assert_eq!(status, 201, "POST /v1/hosts {}: {body}", h.name);
    }
    let argv: Vec<String> = vec!["python3".into(), "-c".into(), DIRTIER.into()];
    lab.create("web", "h1", Some("256M"), &argv).unwrap();
    lab.wait_log("web", "ready", Duration::from_secs(30));

    // A wrong token is refused and the form says so.
    browser.type_into("#token", "lpm_not-a-token").unwrap();
    browser.click("#login-button").unwrap();
    browser
        .wait_for("the refusal", "document.querySelector('#login-error').textContent.includes('refused')", Duration::from_secs(120))
        .unwrap();
    browser.exec("document.querySelector('#token').value = ''; return 1;", json!([])).unwrap();
    browser.type_into("#token", &console.token).unwrap();
    browser.click("#login-button").unwrap();
    browser.wait_for("the live stream", "document.querySelector('#live').textContent === 'live'", Duration::from_secs(120)).unwrap();
    // The partition appears once the console has polled h1.
    let row = "#partitions tr[data-partition=\"web\"]";
    browser
        .wait_for(
            "the partition on h1 with h2 as a target",
            &format!("document.querySelector('{row} .placement')?.textContent === 'h1' && document.querySelector('{row} select.target')?.value === 'h2' && !document.querySelector('{row} button.migrate').disabled"),
            Duration::from_secs(120),
        )
        .unwrap();

    // Every value the progress bars take, recorded in the page as it
    // changes (a MutationObserver), so none is missed between two looks.
    browser
        .exec(
            "window.__seen = [];
             const box = document.querySelector('#live-migrations');
             new MutationObserver(() => {
               for (const p of box.querySelectorAll('progress')) {
                 const v = Number(p.getAttribute('value'));
                 if (window.__seen[window.__seen.length - 1] !== v) window.__seen.push(v);
               }
             }).observe(box, {subtree: true, childList: true, attributes: true});
             return 1;",
            json!([]),
        )
        .unwrap();
    browser.click(&format!("{row} button.migrate")).unwrap();
    let card = browser
        .wait_for("a migration card", "document.querySelector('#live-migrations .migration')?.dataset.migration", Duration::from_secs(120))
        .unwrap();
    let id = card.as_str().unwrap().to_string();
    let outcome = browser
        .wait_for(
            "the report in the history",
            &format!("document.querySelector('#history tr[data-migration=\"{id}\"] details.report') && document.querySelector('#history tr[data-migration=\"{id}\"] .outcome').textContent"),
            Duration::from_secs(180),
        )
        .unwrap();
    // The page shows the partition where it now runs once the console
    // has polled the hosts after the move.
    browser
        .wait_for(
            "the partition running on h2 in the page",
            &format!("document.querySelector('{row} .placement')?.textContent === 'h2' && document.querySelector('{row} .badge')?.textContent === 'running'"),
            Duration::from_secs(120),
        )
        .unwrap();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console_browser.png");
    browser.screenshot(&shot).unwrap();
    println!("screenshot: {}", shot.display());
    assert_eq!(outcome, json!("completed"), "the migration's outcome in the page");
    let seen = browser.exec("return window.__seen;", json!([])).unwrap();
    let moving: BTreeSet<u64> =
        seen.as_array().unwrap().iter().filter_map(Value::as_f64).filter(|v| *v > 0.0 && *v < 100.0).map(|v| v as u64).collect();
    println!("progress values seen: {seen}");
    assert!(moving.len() >= 2, "the progress bar took {seen} before the end: it did not move");
    let summary = browser
        .exec(&format!("return document.querySelector('#history tr[data-migration=\"{id}\"] summary').textContent"), json!([]))
        .unwrap();
    assert!(summary.as_str().is_some_and(|s| s.contains("downtime")), "the report's summary: {summary}");

    // From outside: the hosts say where it runs, and the console agrees.
    assert_eq!(lab.host_of("web"), "h2");
    assert_eq!(lab.state_of("web"), "running");
    let (status, m) = fetch(&browser, &console.token, "GET", &format!("/v1/migrations/{id}"), None);
    assert_eq!((status, m["state"].as_str()), (200, Some("completed")), "{m}");

    // Every documented GET is answered (a route the build serves), never
    // 404; a plan id exists only once a plan was made.
    let doc: Value = serde_json::from_str(lpm_console::service::ui::OPENAPI).unwrap();
    let served: BTreeSet<(String, String)> = all_routes().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let mut asked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_none() {
            continue;
        }
        if policy::ROUTES.is_empty() && !served.contains(&("GET".to_string(), path.clone())) {
            continue;
        }
        let concrete = path
            .replace("/v1/hosts/{name}", "/v1/hosts/h1")
            .replace("/v1/partitions/{name}", "/v1/partitions/web")
            .replace("/v1/migrations/{id}", &format!("/v1/migrations/{id}"));
        let (status, body) = fetch(&browser, &console.token, "GET", &concrete, None);
        if path == "/v1/plans/{id}" {
            // No plan was made here: the route answers that there is none.
            assert!(status != 404 || body.get("error").is_some(), "GET {concrete}: {status} {body}");
        } else {
            assert!(status != 404 && status != 0, "GET {concrete} (documented {path}): {status} {body}");
        }
        asked += 1;
    }
    println!("documented GETs answered: {asked}");
    drop(browser);
    drop(console);
}
