//! `lpm pki ...` and `lpm host enroll`: the site's certificate authority
//! and the certificates of its hosts and operators (crates/trust).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use lpm_trust::{Pki, Role};

/// `lpm pki ...`
#[derive(Subcommand)]
pub enum PkiCmd {
    /// Make the site's certificate authority (once per site; its key stays
    /// on the machine where it is made, 0600).
    Init {
        /// The PKI directory (created 0700).
        #[arg(long, default_value = lpm_trust::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Issue an operator's certificate, for the CLI to present to hosts.
    Operator {
        /// The operator's name (letters, digits and '-').
        name: String,
        /// The PKI directory.
        #[arg(long, default_value = lpm_trust::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Issue a console's certificate: it serves operators with it and
    /// presents it to hosts, which take it as an operator.
    Console {
        /// The console's name (letters, digits and '-'), as in its
        /// console.toml.
        name: String,
        /// The PKI directory.
        #[arg(long, default_value = lpm_trust::DEFAULT_DIR)]
        dir: PathBuf,
    },
}

/// `lpm host ...`
#[derive(Subcommand)]
pub enum HostCmd {
    /// Issue a host's certificate (its lpmd presents it to other hosts and
    /// to operators, and checks theirs against the same CA).
    Enroll {
        /// The host's name, as in its lpmd.toml.
        name: String,
        /// The PKI directory.
        #[arg(long, default_value = lpm_trust::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Register a host (its lpmd's api_listen) in the CLI's hosts file.
    Add(crate::hosts::AddArgs),
    /// The registered hosts, each reachable or not, with its partitions.
    List(crate::hosts::ListArgs),
    /// Forget a registered host.
    Remove(crate::hosts::RemoveArgs),
}

/// Runs `lpm pki ...`.
pub fn pki(cmd: PkiCmd) -> Result<ExitCode> {
    match cmd {
        PkiCmd::Init { dir } => {
            let pki = Pki::init(&dir).context("lpm pki init")?;
            println!("site CA {}", pki.ca_cert().display());
        }
        PkiCmd::Operator { name, dir } => issue(&dir, Role::Operator, &name)?,
        PkiCmd::Console { name, dir } => issue(&dir, Role::Console, &name)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `lpm host ...`.
pub fn host(cmd: HostCmd) -> Result<ExitCode> {
    match cmd {
        HostCmd::Enroll { name, dir } => issue(&dir, Role::Host, &name)?,
        HostCmd::Add(a) => return crate::hosts::add(a),
        HostCmd::List(a) => return crate::hosts::list(a),
        HostCmd::Remove(a) => return crate::hosts::remove(a),
    }
    Ok(ExitCode::SUCCESS)
}

fn issue(dir: &std::path::Path, role: Role, name: &str) -> Result<()> {
    let pki = Pki::open(dir)?;
    let issued = pki.enroll(role, name).with_context(|| format!("issue a certificate for {}", role.subject(name)))?;
    println!("{}  certificate {}  key {}", role.subject(name), issued.cert.display(), issued.key.display());
    Ok(())
}
