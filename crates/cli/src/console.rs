//! `lpm console ...`: the console service (crates/console, docs/console.md)
//! and its tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use lpm_console::service::{self, Config};

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
