//! `cargo bench --bench compare -- [--flows N] [--json PATH] [--only LIST]`
//! (what `integration/bench/run` runs): ctsyncd against conntrackd 1.4.7 on
//! the same workloads, one table on stdout, the same figures as JSON.
//!
//! Owns: the process around the benchmark (arguments, output, exit status).
//! Must not: measure anything itself (integration/bench/mod.rs does).

mod bench;
mod lab;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match bench::Cli::parse(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("{e}\n{}", bench::USAGE);
            return ExitCode::from(2);
        }
    };
    let report = match bench::run(&cli.config) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.table());
    if let Err(e) = bench::write_json(&report, &cli.json) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    eprintln!("JSON written to {}", cli.json.display());
    ExitCode::SUCCESS
}
