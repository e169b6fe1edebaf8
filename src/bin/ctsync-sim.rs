//! `ctsync-sim`: run the deterministic simulation of the sync cores over a
//! range of seeds, or replay one.
//!
//! Owns: the command line and the summary. Must not: hold simulation logic
//! (that is `ctsync::sim`).

use ctsync::sim::{adversary_for_seed, mode_name, parse_mode, run_seeds_with, SimParams};
use ctsync::sync::Mode;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: ctsync-sim [--seeds N] [--from S] [--seed S] \
[--mode ftfw|notrack|alarm] [--nodes K] [--auth on|off] [--adversary on|off|lasting] \
[--threads T]";

#[derive(Debug, PartialEq, Eq)]
struct Args {
    from: u64,
    seeds: u64,
    /// One seed, replayed with its full report.
    single: bool,
    mode: Option<Mode>,
    nodes: Option<usize>,
    /// Keys on or off, whatever the seed says.
    auth: Option<bool>,
    /// The adversary (with the seed's drawn parameters) on, off, or on
    /// until the end of the run.
    adversary: Option<Adversary>,
    threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Adversary {
    On,
    Off,
    Lasting,
}

fn on_off(flag: &str, value: Option<String>) -> Result<bool, String> {
    match value.as_deref() {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(v) => Err(format!("{flag}: on or off, not {v}")),
        None => Err(format!("{flag} needs a value")),
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
    let v = value.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse()
        .map_err(|_| format!("{flag}: not a valid number: {v}"))
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        from: 0,
        seeds: 1000,
        single: false,
        mode: None,
        nodes: None,
        auth: None,
        adversary: None,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
    };
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--seeds" => a.seeds = number(&flag, argv.next())?,
            "--from" => a.from = number(&flag, argv.next())?,
            "--seed" => {
                a.from = number(&flag, argv.next())?;
                a.seeds = 1;
                a.single = true;
            }
            "--mode" => {
                let v = argv.next().ok_or("--mode needs a value")?;
                a.mode = Some(parse_mode(&v).ok_or_else(|| format!("unknown mode: {v}"))?);
            }
            "--nodes" => {
                let k: usize = number(&flag, argv.next())?;
                if !(2..=8).contains(&k) {
                    return Err("--nodes must be 2 to 8".into());
                }
                a.nodes = Some(k);
            }
            "--auth" => a.auth = Some(on_off(&flag, argv.next())?),
            "--adversary" => {
                let v = argv.next();
                a.adversary = Some(if v.as_deref() == Some("lasting") {
                    Adversary::Lasting
                } else if on_off(&flag, v)? {
                    Adversary::On
                } else {
                    Adversary::Off
                });
            }
            "--threads" => a.threads = number::<usize>(&flag, argv.next())?.max(1),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument: {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let adjust = |seed: u64, p: &mut SimParams| {
        if let Some(m) = args.mode {
            *p = p.clone().with_mode(m);
        }
        if let Some(k) = args.nodes {
            p.nodes = k;
        }
        if let Some(on) = args.auth {
            p.auth = on;
        }
        match args.adversary {
            Some(Adversary::On) if p.adversary.is_none() => {
                p.adversary = Some(adversary_for_seed(seed));
            }
            // After `--mode`: it lasts through that mode's quiet phase.
            Some(Adversary::Lasting) => {
                p.adversary = Some(adversary_for_seed(seed).lasting(p.quiet_ms));
            }
            Some(Adversary::Off) => p.adversary = None,
            _ => {}
        }
    };
    let started = Instant::now();
    let results = run_seeds_with(args.from, args.seeds, args.threads, adjust);
    let wall = started.elapsed().as_secs_f64();

    let mut failed = Vec::new();
    let mut worst: Option<(u64, u64)> = None;
    for (seed, r) in &results {
        match r {
            Ok(report) => {
                if args.single {
                    println!("{report}");
                }
                if worst.is_none_or(|(ms, _)| report.converged_after_ms > ms) {
                    worst = Some((report.converged_after_ms, *seed));
                }
            }
            Err(f) => {
                // The first few in full; the rest by seed in the summary.
                if failed.len() < 5 {
                    println!("{f}");
                }
                failed.push(*seed);
            }
        }
    }
    let mode = args.mode.map_or("per seed (ftfw)", mode_name);
    println!(
        "seeds run: {} (from {}), mode {mode}, failures: {}, {:.1} s, {:.0} seeds/s",
        results.len(),
        args.from,
        failed.len(),
        wall,
        results.len() as f64 / wall.max(1e-9)
    );
    if let Some((ms, seed)) = worst {
        println!("worst convergence: {ms} ms after the heal (seed {seed})");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        let list: Vec<String> = failed.iter().map(u64::to_string).collect();
        println!("failing seeds: {}", list.join(" "));
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags_parse() {
        let a = args("--seeds 50 --from 7 --mode notrack --nodes 3 --threads 1").unwrap();
        assert_eq!((a.seeds, a.from, a.single), (50, 7, false));
        assert_eq!(
            (a.mode, a.nodes, a.threads),
            (Some(Mode::Notrack), Some(3), 1)
        );
        let one = args("--seed 99").unwrap();
        assert_eq!((one.from, one.seeds, one.single), (99, 1, true));
        assert!(args("--seeds").is_err());
        assert!(args("--seeds x").is_err());
        assert!(args("--nodes 1").is_err());
        assert!(args("--mode bogus").is_err());
        assert!(args("--frobnicate").is_err());
        let keyed = args("--seed 3 --auth off --adversary on").unwrap();
        assert_eq!(
            (keyed.auth, keyed.adversary),
            (Some(false), Some(Adversary::On))
        );
        let late = args("--adversary lasting").unwrap();
        assert_eq!(late.adversary, Some(Adversary::Lasting));
        assert!(args("--adversary always").is_err());
        assert!(args("--auth maybe").is_err());
        assert!(args("--adversary").is_err());
    }
}
