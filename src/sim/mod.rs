//! Deterministic simulation of the sync cores: N `sync::Node`s on virtual
//! time over a seeded network that loses, duplicates, reorders and
//! partitions, with node restarts, then a heal and the invariant that every
//! node's external view of a peer equals that peer's internal cache. Some
//! runs are keyed (authenticated sync), and some of those face an
//! adversary on the segment (`adversary`) that must get nothing in
//! (`breach`).
//!
//! Owns: the harness (`Sim`), its parameters, the invariant checker and the
//! verdicts. Must not: use tokio, sockets, the clock or OS randomness (a
//! seed replays exactly), or reach into `sync` beyond `Node`'s public API.
//!
//! Replay a seed with `cargo run --release --bin ctsync-sim -- --seed N`.

mod adversary;
mod breach;
mod check;
mod driver;
mod net;
mod params;
mod report;
mod rng;
mod workload;

pub use adversary::{
    forged_key, is_fake_id, is_forged_key, AdversaryParams, AdversaryStats, Attack, FAKE_ID_BASE,
    LASTING_BUDGET,
};
pub use breach::Breach;
pub use check::Difference;
pub use driver::{Sim, CHECK_EVERY_MS, CLUSTER};
pub use net::{Faults, NetStats};
pub use params::{
    adversary_for_seed, attack_for_seed, mode_name, params_for_seed, parse_mode, SimParams,
};
pub use report::{replay_command, FailureKind, SimFailure, SimReport};
pub use rng::Rng;
pub use workload::{Change, Kernel};

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `seed` with its own parameters.
pub fn run_seed(seed: u64) -> Result<SimReport, SimFailure> {
    run(seed, &params_for_seed(seed))
}

/// Run `seed` with the given parameters (the seed still drives the
/// workload, the network and the faults). A panic anywhere is a failure.
pub fn run(seed: u64, params: &SimParams) -> Result<SimReport, SimFailure> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, params)?;
        sim.run_to_end()?;
        sim.finish()
    }));
    outcome.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic".to_string());
        Err(SimFailure::new(
            seed,
            params,
            FailureKind::Panicked(msg),
            Vec::new(),
            0,
        ))
    })
}

/// The reports of a batch from `run_seeds`/`run_seeds_with`, every seed of
/// which must have passed; otherwise a panic naming how many of the batch
/// failed and the first three failures (for tests).
pub fn expect_all_passed(
    results: Vec<(u64, Result<SimReport, SimFailure>)>,
    what: &str,
) -> Vec<SimReport> {
    let count = results.len();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().map(|f| format!("{f}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{what}: {} of {count} seeds failed; the first:\n{}",
        failures.len(),
        failures[..failures.len().min(3)].join("\n")
    );
    results.into_iter().filter_map(|(_, r)| r.ok()).collect()
}

/// Run `count` seeds from `from` on `threads` threads; `adjust` may change
/// each seed's parameters (the CLI's overrides). Results come back in seed
/// order, whatever the threads did.
pub fn run_seeds<F>(
    from: u64,
    count: u64,
    threads: usize,
    adjust: F,
) -> Vec<(u64, Result<SimReport, SimFailure>)>
where
    F: Fn(&mut SimParams) + Sync,
{
    run_seeds_with(from, count, threads, |_, p| adjust(p))
}

/// `run_seeds` with an `adjust` that is told the seed too (to draw what
/// the seed would: `adversary_for_seed`).
pub fn run_seeds_with<F>(
    from: u64,
    count: u64,
    threads: usize,
    adjust: F,
) -> Vec<(u64, Result<SimReport, SimFailure>)>
where
    F: Fn(u64, &mut SimParams) + Sync,
{
    let threads = threads.clamp(1, 64) as u64;
    let adjust = &adjust;
    let mut all: Vec<(u64, Result<SimReport, SimFailure>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..count)
                        .filter(|k| k % threads == t)
                        .map(|k| {
                            let seed = from.wrapping_add(k);
                            let mut p = params_for_seed(seed);
                            adjust(seed, &mut p);
                            (seed, run(seed, &p))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    all.sort_by_key(|(seed, _)| *seed);
    all
}
