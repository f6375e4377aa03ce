//! `lpm bench plan`: the console's planners on a simulated inventory, each
//! held to under a second (build with `--release` to measure).

use anyhow::{bail, Result};

/// Arguments of `lpm bench plan`.
#[derive(clap::Args)]
pub struct PlanBench {
    /// Hosts of the simulated inventory.
    #[arg(long, default_value_t = 1000)]
    hosts: usize,
    /// Partitions of the simulated inventory.
    #[arg(long, default_value_t = 20_000)]
    partitions: usize,
    /// Seed of the simulated inventory.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also print the dry-run text of the plans.
    #[arg(long)]
    show: bool,
}

/// Plan on the simulated inventory and print the figures.
pub fn run(a: &PlanBench) -> Result<()> {
    if a.hosts == 0 {
        bail!("--hosts must be at least 1");
    }
    let inv = lpm_console::sim::inventory(a.hosts, a.partitions, a.seed);
    let rows = lpm_console::sim::bench(&inv, &lpm_console::Rules::default())?;
    if a.show {
        for r in &rows {
            print!("{}", r.plan.render());
        }
    }
    println!("{} hosts, {} partitions (seed {}), target under 1000 ms per plan", a.hosts, a.partitions, a.seed);
    print!("{}", lpm_console::sim::report(&rows));
    if let Some(slow) = rows.iter().find(|r| r.elapsed.as_secs_f64() >= 1.0) {
        bail!("{} took {:?}, over the 1 s target", slow.name, slow.elapsed);
    }
    Ok(())
}
