//! `lpm host add/list/remove`: the hosts the CLI reaches through their
//! remote API, kept in a hosts file (lpm_host::hosts, which says where
//! the CLI looks for it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use lpm_host::hosts::{self, HostsFile, Operator};

use crate::cluster::{lab_dir, Cluster};

/// The hosts file the CLI uses, first found: `explicit` (`--config`),
/// `LPM_CONFIG`, the lab's when a lab is up (`LPM_LAB`, default
/// /run/lpm/lab), `~/.config/lpm/hosts.toml`, /etc/lpm/hosts.toml; a new
/// one goes to `~/.config/lpm/hosts.toml`.
pub fn path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("LPM_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let lab = lab_dir();
    if lab.join(lpm_host::lab::STATE_FILE).exists() {
        return Ok(lab.join(hosts::LAB_FILE));
    }
    let user = hosts::user_path();
    if let Some(u) = user.as_ref().filter(|u| u.exists()) {
        return Ok(u.clone());
    }
    let system = PathBuf::from(hosts::SYSTEM_PATH);
    if system.exists() {
        return Ok(system);
    }
    user.context("no hosts file: HOME is not set; give --config FILE or set LPM_CONFIG")
}

/// `lpm host add`
#[derive(Args)]
pub struct AddArgs {
    /// The host's name (as in its certificate, `lpm host enroll NAME`).
    pub name: String,
    /// Its lpmd's remote API (`api_listen`): IP:PORT, HOST:PORT, or an IP
    /// (port 7412).
    pub addr: String,
    /// Its mover (`listen`), which migrations to it use (default: the
    /// API's address, port 7411).
    #[arg(long)]
    pub mover: Option<String>,
    /// With --cert and --key: the operator identity to present to every
    /// host, recorded in the file (the site CA's certificate).
    #[arg(long, requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// The operator's certificate (`lpm pki operator NAME`).
    #[arg(long, requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// The operator's key (mode 0600).
    #[arg(long, requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
    /// The hosts file (default: see `lpm host list --help`).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `lpm host list`
#[derive(Args)]
pub struct ListArgs {
    /// Print the hosts as JSON.
    #[arg(long)]
    pub json: bool,
    /// The hosts file (default: LPM_CONFIG, the lab's when a lab is up,
    /// ~/.config/lpm/hosts.toml, /etc/lpm/hosts.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `lpm host remove`
#[derive(Args)]
pub struct RemoveArgs {
    /// The host's name.
    pub name: String,
    /// The hosts file (default: see `lpm host list --help`).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn absolute(p: PathBuf) -> Result<PathBuf> {
    Ok(if p.is_absolute() { p } else { std::env::current_dir().context("current directory")?.join(p) })
}

/// Runs `lpm host add`.
pub fn add(a: AddArgs) -> Result<ExitCode> {
    let path = path(a.config.as_deref())?;
    let mut f = HostsFile::load(&path)?;
    let api = hosts::parse_addr(&a.name, &a.addr)?;
    let mover = a.mover.as_deref().map(|m| hosts::parse_addr(&a.name, m)).transpose()?;
    f.add(&a.name, api, mover)?;
    if let (Some(ca), Some(cert), Some(key)) = (a.ca, a.cert, a.key) {
        let op = Operator { ca: absolute(ca)?, cert: absolute(cert)?, key: absolute(key)? };
        // Checked now, not at the first call: a wrong file is named here.
        lpm_agent::client::operator_tls(&op.ca, &op.cert, &op.key)?;
        f.operator = Some(op);
    }
    f.save(&path)?;
    let entry = &f.hosts[&a.name];
    println!("{}  api {}  mover {}  ({})", a.name, entry.api, entry.mover(), path.display());
    if f.operator.is_none() {
        eprintln!("lpm: note: {} names no operator identity yet: add one with --ca, --cert and --key", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `lpm host remove`.
pub fn remove(a: RemoveArgs) -> Result<ExitCode> {
    let path = path(a.config.as_deref())?;
    let mut f = HostsFile::load(&path)?;
    f.remove(&a.name, &path)?;
    f.save(&path)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `lpm host list`: every host asked at once; one that does not
/// answer is listed as unreachable, with why, and the others all the same.
pub fn list(a: ListArgs) -> Result<ExitCode> {
    let path = path(a.config.as_deref())?;
    let c = Cluster::with_hosts_file(&path)?;
    let rows: Vec<_> = c
        .each()
        .into_iter()
        .map(|(name, listed)| {
            let entry = c.hosts.hosts.get(&name).cloned();
            (name, entry, listed)
        })
        .collect();
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, e, listed)| {
                serde_json::json!({
                    "name": name,
                    "api": e.as_ref().map(|e| e.api.to_string()),
                    "mover": e.as_ref().map(|e| e.mover().to_string()),
                    "reachable": listed.is_ok(),
                    "partitions": listed.as_ref().ok().map(|p| p.len()),
                    "error": listed.as_ref().err().map(|e| format!("{e:#}")),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        bail!("no hosts in {}: add one with `lpm host add NAME ADDR`", path.display());
    }
    println!("{:12} {:22} {:12} PARTITIONS", "NAME", "API", "STATE");
    for (name, e, listed) in &rows {
        let api = e.as_ref().map(|e| e.api.to_string()).unwrap_or_default();
        match listed {
            Ok(p) => println!("{name:12} {api:22} {:12} {}", "reachable", p.len()),
            Err(err) => println!("{name:12} {api:22} {:12} - ({err:#})", "unreachable"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
