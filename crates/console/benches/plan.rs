//! The planners on a simulated inventory of 1000 hosts and 20 000
//! partitions: each plan must take under a second (`cargo bench -p
//! lpm-console`).

fn main() {
    let inv = lpm_console::sim::inventory(1000, 20_000, 1);
    let rows = match lpm_console::sim::bench(&inv, &lpm_console::Rules::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plan: {e}");
            std::process::exit(1);
        }
    };
    print!("{}", lpm_console::sim::report(&rows));
    if let Some(slow) = rows.iter().find(|r| r.elapsed.as_secs_f64() >= 1.0) {
        eprintln!("{} took {:?}, over the 1 s target", slow.name, slow.elapsed);
        std::process::exit(1);
    }
}
