//! `cargo bench --bench failover -- [--flows N[,N...]] [--failure F]
//! [--systems LIST] [--json PATH]` (what `integration/bench/failover`
//! runs): the failover lab with N idle filler flows on the primary, the
//! same failure for ctsyncd in commit mode, ctsyncd with warm standby and
//! conntrackd 1.4.7; one table on stdout, the same figures as JSON.
//!
//! Owns: the process around the benchmark (arguments, output, exit status).
//! Must not: measure anything itself (integration/failover_bench/ does).

mod bench;
mod lab;

#[path = "failover/mod.rs"]
mod failover;

#[path = "failover_bench/mod.rs"]
mod failover_bench;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match failover_bench::Cli::parse(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("{e}\n{}", failover_bench::USAGE);
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the failover benchmark needs root (network namespaces, conntrack, sysctls)");
        return ExitCode::from(2);
    }
    failover_bench::host::install_interrupt_cleanup();
    let report = match failover_bench::run(&cli.config) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.table());
    if let Err(e) = failover_bench::write_json(&report, &cli.json) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    eprintln!("JSON written to {}", cli.json.display());
    ExitCode::SUCCESS
}
