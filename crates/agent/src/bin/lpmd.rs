//! `lpmd`, the lpm host agent.

#![forbid(unsafe_code)]

use anyhow::Result;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("LPM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour only on a terminal: the journal or a log file gets plain
        // text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // lpmd runs itself again for the lazy fill of a partition that arrived.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(lpm_agent::fill::FILL_ARG) {
        let partition = args.iter().skip_while(|a| *a != "--partition").nth(1).cloned().unwrap_or_default();
        return lpm_agent::fill::run_child(&partition);
    }
    lpm_agent::daemon::DaemonArgs::parse().run()
}
