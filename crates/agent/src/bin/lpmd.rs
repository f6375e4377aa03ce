//! `lpmd`, the lpm host agent.

#![forbid(unsafe_code)]

use anyhow::Result;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LPM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    lpm_agent::daemon::DaemonArgs::parse().run()
}
