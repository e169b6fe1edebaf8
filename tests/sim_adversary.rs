//! The simulation's adversary (`ctsync::sim` with an adversary on the
//! segment: replays, forgeries, floods, bit flips) against keyed clusters
//! in every mode, a few of them with tables of 100,000 flows and more:
//! nothing it sends may reach a cache or a peer table, and the honest
//! nodes' views must converge as without it. The negative control runs
//! the same adversary against keyless clusters, where it must get in (or
//! the keyed checks would prove nothing).

use ctsync::sim::{
    adversary_for_seed, expect_all_passed, params_for_seed, run_seeds_with, Attack, Breach,
    FailureKind, Sim, SimParams, SimReport,
};
use ctsync::sync::Mode;
use std::time::Instant;

const MODES: [Mode; 3] = [Mode::Ftfw, Mode::Notrack, Mode::Alarm];

/// `params_for_seed(seed)` in `mode`, keyed (or not) and attacked.
fn attacked(seed: u64, p: &mut SimParams, mode: Mode, keys: bool) {
    *p = p.clone().with_mode(mode);
    p.auth = keys;
    p.adversary = Some(adversary_for_seed(seed));
}

/// Every seed must hold; returns the reports.
fn all_hold(
    from: u64,
    count: u64,
    adjust: impl Fn(u64, &mut SimParams) + Sync,
    what: &str,
) -> Vec<SimReport> {
    let started = Instant::now();
    let results = run_seeds_with(from, count, 2, adjust);
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{what}: {} seeds in {wall:.1} s ({:.0} seeds/s)",
        results.len(),
        results.len() as f64 / wall.max(1e-9)
    );
    expect_all_passed(results, what)
}

/// With keys, the adversary in every mode: every seed converges, nothing
/// forged or altered is ever taken, and it really tried everything.
#[test]
fn keyed_clusters_hold_against_the_adversary_in_every_mode() {
    for (mode, seeds) in [(Mode::Ftfw, 300), (Mode::Notrack, 300), (Mode::Alarm, 60)] {
        let what = format!("{mode:?} keyed and attacked");
        let reports = all_hold(
            20_000,
            seeds,
            |seed, p| attacked(seed, p, mode, true),
            &what,
        );
        let adv: Vec<_> = reports.iter().filter_map(|r| r.adversary.clone()).collect();
        assert_eq!(adv.len(), reports.len());
        let sum = |f: &dyn Fn(&ctsync::sim::AdversaryStats) -> u64| adv.iter().map(f).sum::<u64>();
        let sent = sum(&|a| a.total_sent());
        let delivered = sum(&|a| a.delivered);
        println!(
            "{what}: sent {sent}, delivered {delivered}, refused {}, replays taken {}, \
             auth refusals {}",
            sum(&|a| a.refused),
            sum(&|a| a.replays_taken),
            reports.iter().map(|r| r.auth_refused).sum::<u64>()
        );
        assert_eq!(sum(&|a| a.forged_taken), 0, "{what}");
        assert!(delivered > 10 * seeds, "{what}: {delivered} delivered");
        for attack in Attack::ALL {
            assert!(
                sum(&|a| a.sent_by(attack)) > seeds,
                "{what}: too few {attack:?}"
            );
        }
        assert!(reports.iter().any(|r| r.restarts > 0 && r.partitions > 0));
        assert!(reports.iter().all(|r| r.breaches == 0));
    }
}

/// `attacked`, with the adversary at it until the final check.
fn lasting(seed: u64, p: &mut SimParams, mode: Mode) {
    attacked(seed, p, mode, true);
    p.adversary = Some(adversary_for_seed(seed).lasting(p.quiet_ms));
}

/// FTFW holds even against an adversary that goes on to the end: its
/// receive stream takes a replayed datagram only where the original
/// belonged, in sequence, so a late copy of something a node never got is
/// what a retransmission would have brought.
#[test]
fn keyed_ftfw_holds_against_a_lasting_adversary() {
    let reports = all_hold(
        30_000,
        200,
        |seed, p| lasting(seed, p, Mode::Ftfw),
        "Ftfw keyed, attacked to the end",
    );
    let changed: u64 = reports
        .iter()
        .filter_map(|r| r.adversary.as_ref())
        .map(|a| a.replays_changed_views)
        .sum();
    println!("Ftfw keyed, attacked to the end: {changed} replays changed a view");
    assert!(
        changed > 0,
        "no replay was ever news: the test proves little"
    );
}

/// NOTRACK and ALARM apply data as it comes, so an authentic datagram a
/// node never got (lost, or sent while it was cut off), replayed later from
/// inside the replay window, used to roll its flows back and keep the
/// views from converging while the adversary lasted (a third of these
/// NOTRACK seeds, e.g. `ctsync-sim --seed 30000 --mode notrack --auth on
/// --adversary lasting`, and ALARM seeds 30033, 30047, 30055). Late data
/// is now applied only close behind the newest and before a keep-alive or
/// digest said the sender went past it (`sync::seqstat`).
#[test]
fn keyed_notrack_and_alarm_hold_against_a_lasting_adversary() {
    all_hold(
        30_000,
        200,
        |seed, p| lasting(seed, p, Mode::Notrack),
        "Notrack keyed, attacked to the end",
    );
    all_hold(
        30_000,
        60,
        |seed, p| lasting(seed, p, Mode::Alarm),
        "Alarm keyed, attacked to the end",
    );
}

/// Without keys the same adversary gets in, in every mode: forged flows
/// in views, invented node ids among the peers, invented epochs. (Keyless
/// runs are never in a sweep's invariant: this is what keys are for.)
#[test]
fn negative_control_without_keys_the_adversary_gets_in() {
    for mode in MODES {
        let (mut forged_flows, mut fake_peers, mut epochs, mut taken, mut breached_seeds) =
            (0, 0, 0, 0, 0);
        let seeds = 20_000..20_030;
        for seed in seeds.clone() {
            let mut p = params_for_seed(seed);
            attacked(seed, &mut p, mode, false);
            // It has time to act before the heal.
            p.workload_ms = p.workload_ms.max(3_000);
            let mut sim = Sim::new(seed, &p).unwrap();
            sim.run_to_end().unwrap();
            let (kept, count) = sim.breaches();
            breached_seeds += usize::from(count > 0);
            for b in kept {
                match b {
                    Breach::ForgedFlow { .. } => forged_flows += 1,
                    Breach::FakePeer { .. } => fake_peers += 1,
                    Breach::InventedEpoch { .. } | Breach::OldEpoch { .. } => epochs += 1,
                    Breach::Taken { .. } => taken += 1,
                }
            }
            // The same seed keyed: nothing.
            let mut keyed = p.clone();
            keyed.auth = true;
            let r = ctsync::sim::run(seed, &keyed);
            assert!(r.is_ok(), "{}", r.unwrap_err());
        }
        println!(
            "{mode:?} keyless: {breached_seeds} of {} seeds breached; forged flows {forged_flows}, \
             fake peers {fake_peers}, invented or old epochs {epochs}, datagrams taken {taken}",
            seeds.end - seeds.start
        );
        assert!(breached_seeds >= 25, "{mode:?}: {breached_seeds}");
        assert!(
            forged_flows > 0 && fake_peers > 0 && epochs > 0 && taken > 0,
            "{mode:?}: the keyless adversary must get in every way"
        );
    }
}

/// A keyed run that breaks a check fails with the breach, the seed and
/// the replay command: here a forged flow put in a view behind the
/// protocol's back.
#[test]
fn a_breach_fails_a_keyed_run_with_its_replay_command() {
    let seed = (0..)
        .find(|&s| params_for_seed(s).adversary.is_some() && params_for_seed(s).nodes == 3)
        .unwrap();
    let p = params_for_seed(seed);
    let mut sim = Sim::new(seed, &p).unwrap();
    sim.run_until(p.workload_ms / 2).unwrap();
    let now = sim.now();
    let forged = ctsync::sim::forged_key(4);
    let mut flow = ctsync::flow::Flow::new(forged.orig);
    flow.zone = forged.zone;
    // Node 2 takes a forged flow as its own (as a view would if a forged
    // upsert got in): it replicates it to the others.
    sim.node_mut(1).unwrap().local_upsert(&flow, now, true);
    let failure = match sim.run_to_end() {
        Err(f) => f,
        Ok(()) => sim.finish().unwrap_err(),
    };
    assert!(
        matches!(failure.kind, FailureKind::Breached(_)),
        "{failure}"
    );
    let text = failure.to_string();
    assert!(text.contains("forged flow 198.19.255.4"), "{text}");
    assert!(
        text.contains(&format!(
            "cargo run --release --bin ctsync-sim -- --seed {seed}"
        )),
        "{text}"
    );
}

/// Two seeds per mode, keyed and attacked, with tables of 100,000 flows
/// and more on every node: one pair, and one trio through partitions and
/// restarts (so old epochs to replay). Bulks of thousands of sealed
/// datagrams go through the seed's faults while the adversary records,
/// replays and forges (its forged deletes name real flows of those
/// tables).
#[test]
fn large_keyed_tables_hold_against_the_adversary() {
    let find = |nodes: usize| {
        (7_100..)
            .find(|&s| {
                let p = params_for_seed(s);
                p.nodes == nodes && p.restarts && (nodes == 2 || p.partitions)
            })
            .unwrap()
    };
    let seeds = [find(2), find(3)];
    let started = Instant::now();
    for mode in MODES {
        let t = Instant::now();
        let large = |seed: u64| {
            let mut p = params_for_seed(seed);
            attacked(seed, &mut p, mode, true);
            // Slots to spare: most changes make a new flow (about
            // 105,000 per node).
            p.flows_per_node = 1_000_000;
            p.ops_per_node = 116_000;
            p.window = 4_096;
            if mode != Mode::Alarm {
                p.quiet_ms = 60_000;
                p.converge_within_ms = 45_000;
            }
            ctsync::sim::run(seed, &p)
        };
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = seeds
                .iter()
                .map(|&seed| s.spawn(move || large(seed)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        println!(
            "{mode:?} keyed, attacked, 100,000-flow tables: seeds {seeds:?} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for r in results {
            let r = r.unwrap_or_else(|f| panic!("{mode:?}: {f}"));
            println!(
                "  seed {}: nodes {}, restarts {}, flows {:?}, auth refusals {}\n    adversary {}",
                r.seed,
                r.params.nodes,
                r.restarts,
                r.flows,
                r.auth_refused,
                r.adversary
                    .as_ref()
                    .map_or(String::new(), ToString::to_string)
            );
            assert!(r.flows.iter().all(|&n| n >= 100_000), "{:?}", r.flows);
            let a = r.adversary.as_ref().unwrap();
            assert!(a.delivered > 0 && a.forged_taken == 0);
        }
    }
    println!(
        "large keyed tables under attack, 3 modes: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
