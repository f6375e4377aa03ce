//! `lpm console ...`: the console service (crates/console, docs/console.md)
//! and its tokens.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use lpm_agent::api::{MigrateRequest, MigrationInfo, PartitionInfo, Progress, Request, Response};
use lpm_agent::client::Client;
use lpm_console::client::{seg, ConsoleClient};
use lpm_console::service::{self, Config};
use lpm_host::hosts::{ConsoleEntry, HostsFile};
use serde_json::{json, Value};

/// Where `lpm console serve` and `lpm console token` read the console's
/// configuration unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/lpm/console.toml";

/// `lpm console ...`
#[derive(Subcommand)]
pub enum ConsoleCmd {
    /// Run the console: the HTTP API for operators, the hosts polled, the
    /// inventory and history in its database (until SIGINT or SIGTERM).
    Serve {
        /// The console's configuration.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Operators' bearer tokens, in the console's database.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Make the cluster commands go through the console at ADDR
    /// (recorded in the hosts file; `LPM_CONSOLE` overrides it).
    Use(UseArgs),
    /// Make the cluster commands go to the hosts again.
    Forget {
        /// The hosts file (default: the one the CLI uses).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `lpm console token ...`
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a token for NAME (or replace its token) and print it, this
    /// once: the database keeps its hash only.
    Add {
        /// Who the token is for (letters, digits and '-'): the audit names
        /// its calls `token:NAME`.
        name: String,
        /// The console's configuration.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The tokens' names.
    List {
        /// The console's configuration.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Revoke NAME's token.
    Remove {
        /// Whose token.
        name: String,
        /// The console's configuration.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// Runs `lpm console ...`.
pub fn run(cmd: ConsoleCmd) -> Result<ExitCode> {
    match cmd {
        ConsoleCmd::Serve { config } => {
            let c = Config::load(&config)?;
            std::fs::create_dir_all(&c.state_dir).with_context(|| format!("create the console's state dir {}", c.state_dir.display()))?;
            service::block_on(service::serve(c))??;
        }
        ConsoleCmd::Use(a) => return use_console(a),
        ConsoleCmd::Forget { config } => return forget(config),
        ConsoleCmd::Token { cmd } => match cmd {
            TokenCmd::Add { name, config } => {
                let c = Config::load(&config)?;
                let token = service::block_on(service::add_token(&c, &name))??;
                println!("{token}");
            }
            TokenCmd::List { config } => {
                let c = Config::load(&config)?;
                let names = service::block_on(async {
                    let s = service::Store::open(&c.database_url()).await?;
                    let n = s.tokens().await;
                    s.close().await;
                    n
                })??;
                for n in names {
                    println!("{n}");
                }
            }
            TokenCmd::Remove { name, config } => {
                let c = Config::load(&config)?;
                let removed = service::block_on(async {
                    let s = service::Store::open(&c.database_url()).await?;
                    let r = s.remove_token(&name).await?;
                    if r {
                        s.audit("admin", "token.remove", &name).await?;
                    }
                    s.close().await;
                    Ok::<bool, service::store::StoreError>(r)
                })??;
                if !removed {
                    bail!("no token {name:?}");
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// The console the CLI goes through, if any: `LPM_CONSOLE` (ADDR, with
/// `LPM_CONSOLE_TOKEN` and `LPM_CONSOLE_NAME`; empty or `none` for none,
/// whatever the file says), else the hosts file's `console` entry.
pub(crate) fn configured(file: &HostsFile, path: &Path) -> Result<Option<ConsoleClient>> {
    let entry = match std::env::var("LPM_CONSOLE") {
        Ok(v) if v.is_empty() || v == "none" => return Ok(None),
        Ok(v) => ConsoleEntry {
            addr: v.parse().with_context(|| format!("LPM_CONSOLE={v:?}: want IP:PORT"))?,
            name: std::env::var("LPM_CONSOLE_NAME").unwrap_or_else(|_| "console".into()),
            token: std::env::var("LPM_CONSOLE_TOKEN").ok().filter(|t| !t.is_empty()),
        },
        Err(_) => match &file.console {
            Some(c) => {
                let mut c = c.clone();
                if let Ok(t) = std::env::var("LPM_CONSOLE_TOKEN") {
                    c.token = Some(t).filter(|t| !t.is_empty());
                }
                c
            }
            None => return Ok(None),
        },
    };
    let op = file.operator.as_ref().with_context(|| {
        format!(
            "{}: a console is configured but no operator identity (the site CA's certificate is needed to check the console's)",
            path.display()
        )
    })?;
    let cert = entry.token.is_none().then_some((op.cert.as_path(), op.key.as_path()));
    Ok(Some(ConsoleClient::new(entry.addr, &entry.name, file.netns.clone(), &op.ca, cert, entry.token)?))
}

/// A host's API as the cluster commands call it: straight, or through the
/// console (each request translated to the console's routes).
pub(crate) enum HostCall {
    /// Straight to the host.
    Direct(Client),
    /// Through the console.
    Console {
        /// The console.
        con: ConsoleClient,
        /// The host the request is for.
        host: String,
        /// The host straight, for what the console does not relay (logs).
        direct: Option<Client>,
    },
}

/// A partition as the console shows it, as the host's API gives it.
fn info(v: &Value) -> Result<PartitionInfo> {
    Ok(PartitionInfo {
        spec: serde_json::from_value(v["spec"].clone()).context("the console's partition spec")?,
        host: v["host"].as_str().unwrap_or_default().to_string(),
        state: v["state"].as_str().unwrap_or_default().to_string(),
        pid: v["pid"].as_i64().map(|p| p as i32),
        memory_current: v["memory_current"].as_u64(),
        exit: None,
    })
}

impl HostCall {
    /// Sends a request and returns the single answer.
    pub(crate) fn call(&mut self, req: &Request) -> Result<Response> {
        self.call_with_progress(req, |_| {})
    }

    /// Like `call`, passing progress to `on_progress` until the answer.
    pub(crate) fn call_with_progress(&mut self, req: &Request, mut on_progress: impl FnMut(&Progress)) -> Result<Response> {
        let (con, host, direct) = match self {
            HostCall::Direct(c) => return c.call_with_progress(req, on_progress),
            HostCall::Console { con, host, direct } => (con, host.clone(), direct),
        };
        match req {
            Request::Ping => {
                let h: Value = con.call("GET", &format!("/v1/hosts/{}?fresh=true", seg(&host)), None)?;
                if h["status"] != "up" {
                    bail!("{host}: {}", h["error"].as_str().unwrap_or("unreachable"));
                }
                Ok(Response::Ok)
            }
            Request::List => {
                let h: Value = con.call("GET", &format!("/v1/hosts/{}?fresh=true", seg(&host)), None)?;
                if h["status"] != "up" {
                    bail!("{host}: {}", h["error"].as_str().unwrap_or("unreachable"));
                }
                let all: Vec<Value> = con.call("GET", "/v1/partitions", None)?;
                Ok(Response::Partitions(all.iter().filter(|p| p["host"] == host.as_str()).map(info).collect::<Result<_>>()?))
            }
            Request::Show(n) => Ok(Response::Partition(Box::new(info(&con.call("GET", &format!("/v1/partitions/{}", seg(n)), None)?)?))),
            Request::Create(spec) => {
                let body = json!({ "host": host, "spec": spec });
                Ok(Response::Partition(Box::new(info(&con.call("POST", "/v1/partitions", Some(&body))?)?)))
            }
            Request::Stop(n) | Request::Start(n) => {
                let verb = if matches!(req, Request::Stop(_)) { "stop" } else { "start" };
                con.call::<Value>("POST", &format!("/v1/partitions/{}/{verb}", seg(n)), None)?;
                Ok(Response::Ok)
            }
            Request::Delete(n) => {
                con.call::<Value>("DELETE", &format!("/v1/partitions/{}", seg(n)), None)?;
                Ok(Response::Ok)
            }
            Request::Migrate(m) => migrate(con, m, &mut on_progress),
            Request::Migrations { all } => {
                let rows: Vec<Value> = con.call("GET", "/v1/migrations?limit=1000", None)?;
                let mut out = Vec::new();
                for r in rows.iter().filter(|r| r["source"] == host.as_str() || r["target"] == host.as_str()) {
                    let ended = !matches!(r["state"].as_str(), Some("running" | "in_doubt"));
                    if ended && !all {
                        continue;
                    }
                    if let Some(m) = record_of(con, r["id"].as_str().unwrap_or_default(), &host)? {
                        out.push(m);
                    }
                }
                Ok(Response::Migrations(out))
            }
            Request::Migration(id) => match record_of(con, id, &host)? {
                Some(m) => Ok(Response::Migration(Box::new(m))),
                None => bail!("{host}: no migration {id:?} recorded here"),
            },
            Request::MigrationStop(id) => {
                con.call::<Value>("POST", &format!("/v1/migrations/{}/stop", seg(id)), None)?;
                match record_of(con, id, &host)? {
                    Some(m) => Ok(Response::Migration(Box::new(m))),
                    None => bail!("{host}: no migration {id:?} recorded here"),
                }
            }
            Request::Resolve { id, .. } => {
                // The console relays both sides' records itself.
                con.call::<Value>("POST", &format!("/v1/migrations/{}/recover", seg(id)), None)?;
                match record_of(con, id, &host)? {
                    Some(m) => Ok(Response::Migration(Box::new(m))),
                    None => bail!("{host}: no migration {id:?} recorded here"),
                }
            }
            Request::Logs { .. } | Request::LogsFrom { .. } | Request::Reports | Request::Host => match direct {
                Some(d) => d.call_with_progress(req, on_progress),
                None => {
                    bail!("{host}: the console does not relay {}; the hosts file names no way to reach {host} itself", req.route().path)
                }
            },
        }
    }
}

/// Host `host`'s record of migration `id`, through the console.
fn record_of(con: &ConsoleClient, id: &str, host: &str) -> Result<Option<MigrationInfo>> {
    let v: Value = con.call("GET", &format!("/v1/migrations/{}?hosts=true", seg(id)), None)?;
    for side in ["source_record", "target_record"] {
        if v[side]["host"] == host {
            return Ok(Some(serde_json::from_value(v[side].clone()).with_context(|| format!("migration {id}: the {side}"))?));
        }
    }
    Ok(None)
}

/// Time between two looks at a migration the console runs.
const FOLLOW: Duration = Duration::from_millis(200);

/// `lpm migrate` through the console: started there, followed until it
/// ends; the same answers as the source host gives (a report when it
/// completed, the checks of a validation, else an error).
fn migrate(con: &ConsoleClient, m: &MigrateRequest, on_progress: &mut dyn FnMut(&Progress)) -> Result<Response> {
    let body = json!({
        "partition": m.name,
        "target": m.target,
        "options": {
            "max_downtime_ms": m.max_downtime_ms,
            "max_time_s": m.max_total_s,
            "force": m.force,
            "streams": m.streams,
            "compress": m.compress,
            "validate_only": m.validate_only,
        },
    });
    if m.validate_only {
        let v: Value = con.call("POST", "/v1/migrations", Some(&body))?;
        return Ok(Response::Validation(serde_json::from_value(v["checks"].clone()).context("the console's checks")?));
    }
    let row: Value = con.call("POST", "/v1/migrations", Some(&body))?;
    let id = row["id"].as_str().context("the console named no migration")?.to_string();
    let mut last = Value::Null;
    loop {
        let row: Value = con.call("GET", &format!("/v1/migrations/{}", seg(&id)), None)?;
        if row["progress"] != last && !row["progress"].is_null() {
            last = row["progress"].clone();
            if let Ok(p) = serde_json::from_value::<Progress>(last.clone()) {
                on_progress(&p);
            }
        }
        let state = row["state"].as_str().unwrap_or_default();
        match state {
            "running" => {}
            "in_doubt" => bail!(
                "migration {id} of {} is in doubt: go was recorded, and {} has not confirmed that its copy runs (`lpm migration show {id}`, `lpm migration recover {id}`)",
                m.name,
                m.target
            ),
            "completed" => {
                let report = serde_json::from_value(row["report"].clone()).context("the console's report")?;
                return Ok(Response::Report(Box::new(report)));
            }
            other => {
                let why = row["error"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| row["report"]["outcome"].as_object().map(|o| Value::Object(o.clone()).to_string()))
                    .unwrap_or_default();
                bail!("migration {id}: migrate {} to {}: ended {other}: {why}", m.name, m.target);
            }
        }
        std::thread::sleep(FOLLOW);
    }
}

/// `lpm console use` / `forget`: arguments.
#[derive(clap::Args)]
pub struct UseArgs {
    /// The console's address, IP:PORT.
    pub addr: String,
    /// Its name (its certificate is for NAME.consoles.lpm).
    #[arg(long, default_value = "console")]
    pub name: String,
    /// A bearer token (`lpm console token add`); without one the CLI
    /// presents the hosts file's operator certificate.
    #[arg(long)]
    pub token: Option<String>,
    /// The hosts file to record it in (default: the one the CLI uses).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `lpm console use ADDR`: the cluster commands go through this console.
pub fn use_console(a: UseArgs) -> Result<ExitCode> {
    let path = crate::hosts::path(a.config.as_deref())?;
    let mut f = HostsFile::load(&path)?;
    let addr = a.addr.parse().with_context(|| format!("console address {:?}: want IP:PORT", a.addr))?;
    lpm_trust::check_name(&a.name)?;
    f.console = Some(ConsoleEntry { addr, name: a.name, token: a.token });
    f.save(&path)?;
    println!("the cluster commands go through the console at {addr} ({})", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `lpm console forget`: the cluster commands go to the hosts again.
pub fn forget(config: Option<PathBuf>) -> Result<ExitCode> {
    let path = crate::hosts::path(config.as_deref())?;
    let mut f = HostsFile::load(&path)?;
    if f.console.take().is_none() {
        bail!("{} names no console", path.display());
    }
    f.save(&path)?;
    Ok(ExitCode::SUCCESS)
}
