//! The deterministic simulation of the sync cores, as a test: thousands of
//! seeds of FTFW, NOTRACK and ALARM clusters (two and three nodes) through
//! loss, duplication, reordering, partitions and restarts must all
//! converge, a few of them with 100,000-flow tables; some seeds are keyed,
//! and half of those face an adversary that must get nothing in (more of
//! that in `sim_adversary.rs`); a seed must replay exactly; the checker
//! must catch a broken view.

use ctsync::sim::{
    expect_all_passed, params_for_seed, run, run_seed, run_seeds, Difference, FailureKind, Sim,
    SimParams, SimReport,
};
use ctsync::sync::Mode;
use std::time::Instant;

/// Seeds the suite runs (at least 2,000 by the issue); a debug build is
/// about twenty times slower, so it runs the minimum.
const SEEDS: u64 = if cfg!(debug_assertions) { 2_000 } else { 5_000 };

#[test]
fn thousands_of_seeds_converge_through_every_fault() {
    let started = Instant::now();
    let results = run_seeds(0, SEEDS, 2, |_| {});
    let wall = started.elapsed().as_secs_f64();
    println!(
        "sim: {} seeds in {wall:.1} s ({:.0} seeds/s)",
        results.len(),
        results.len() as f64 / wall.max(1e-9)
    );
    assert_eq!(results.len() as u64, SEEDS);
    let mut failures = Vec::new();
    let mut ok: Vec<&SimReport> = Vec::new();
    for (_, r) in &results {
        match r {
            Ok(report) => ok.push(report),
            Err(f) => failures.push(format!("{f}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {SEEDS} seeds failed; the first:\n{}",
        failures.len(),
        failures[..failures.len().min(3)].join("\n")
    );
    let worst = ok.iter().max_by_key(|r| r.converged_after_ms);
    if let Some(w) = worst {
        println!(
            "sim: worst convergence {} ms after the heal (seed {})",
            w.converged_after_ms, w.seed
        );
    }
    // The runs really went through what they claim to.
    let count = |f: &dyn Fn(&SimReport) -> bool| ok.iter().filter(|r| f(r)).count();
    assert!(count(&|r| r.params.nodes == 2) > 100);
    assert!(count(&|r| r.params.nodes == 3) > 100);
    assert!(count(&|r| r.restarts > 0) > 100, "restarts");
    assert!(count(&|r| r.partitions > 0) > 100, "partitions");
    assert!(count(&|r| r.net.lost > 0) > 1000, "loss");
    assert!(count(&|r| r.net.duplicated > 0) > 500, "duplication");
    assert!(count(&|r| r.nacks_sent > 0) > 500, "NACKs");
    assert!(count(&|r| r.resumes_sent > 0) > 10, "resume after overrun");
    assert!(
        count(&|r| r.flows.iter().sum::<usize>() > 10) > 1000,
        "flows"
    );
    assert_attacked_seeds_held(&ok, 150);
}

/// Keyed seeds ran, some with the adversary, which sent plenty and got
/// nothing forged in (a breach would have failed the seed).
fn assert_attacked_seeds_held(ok: &[&SimReport], min_attacked: usize) {
    let keyed = ok.iter().filter(|r| r.params.auth).count();
    let attacked: Vec<_> = ok.iter().filter_map(|r| r.adversary.as_ref()).collect();
    let sent: u64 = attacked.iter().map(|a| a.total_sent()).sum();
    println!(
        "sim: {keyed} keyed seeds, {} attacked (adversary sent {sent} datagrams, refused {})",
        attacked.len(),
        attacked.iter().map(|a| a.refused).sum::<u64>()
    );
    assert!(keyed > attacked.len() && attacked.len() > min_attacked);
    assert!(sent > 20 * attacked.len() as u64);
    assert!(attacked.iter().all(|a| a.forged_taken == 0));
    assert!(ok.iter().all(|r| r.breaches == 0));
}

#[test]
fn a_seed_replays_exactly() {
    for seed in 0..200 {
        let first = run_seed(seed);
        let again = run_seed(seed);
        assert_eq!(
            first,
            again,
            "seed {seed} did not replay identically (digest {:?} vs {:?})",
            first.as_ref().map(|r| r.digest),
            again.as_ref().map(|r| r.digest)
        );
    }
}

/// A seed whose run ends with flows on both sides.
fn busy_seed() -> (u64, ctsync::sim::SimParams) {
    (0..)
        .map(|s| (s, params_for_seed(s)))
        .find(|(_, p)| p.nodes == 3 && p.restarts && p.loss > 10)
        .unwrap()
}

#[test]
fn the_checker_catches_a_flow_dropped_from_a_view() {
    let (seed, params) = busy_seed();
    let mut sim = Sim::new(seed, &params).unwrap();
    sim.run_to_end().unwrap();
    assert!(sim.differences().is_empty(), "{:?}", sim.differences());
    let owner = sim.node_id(0).unwrap();
    let key = sim
        .node(0)
        .unwrap()
        .internal()
        .keys()
        .min()
        .expect("node 1 has flows at the end");
    // Node 3 loses one of node 1's flows behind the protocol's back.
    assert!(sim.node_mut(2).unwrap().remove_external(owner, &key));
    let failure = sim.finish().unwrap_err();
    assert_eq!(failure.kind, FailureKind::Diverged);
    assert_eq!(failure.total_differences, 1);
    assert!(matches!(
        &failure.differences[0],
        Difference::Missing { owner: 1, viewer: 3, flow } if flow.key() == key
    ));
    let text = failure.to_string();
    assert!(text.contains(&format!("seed {seed} FAILED")), "{text}");
    assert!(
        text.contains(&format!(
            "cargo run --release --bin ctsync-sim -- --seed {seed}"
        )),
        "{text}"
    );
    assert!(text.contains("node 3 lacks node 1's flow"), "{text}");
}

#[test]
fn the_checker_catches_a_changed_flow_and_a_stale_one() {
    let (seed, params) = busy_seed();
    let mut sim = Sim::new(seed, &params).unwrap();
    sim.run_to_end().unwrap();
    let now = sim.now();
    let node = sim.node_mut(1).unwrap();
    let mut flows: Vec<_> = node.internal().flows().collect();
    flows.sort_by_key(|f| f.key());
    let (first, last) = (flows[0].clone(), flows[flows.len() - 1].clone());
    // Node 2 changes one flow and forgets another without telling anyone
    // (and without its kernel knowing either).
    let mut changed = first.clone();
    changed.mark ^= 0x5a5a;
    node.local_upsert(&changed, now, false);
    node.local_delete(&last.key(), now, false);
    let failure = sim.finish().unwrap_err();
    let d = &failure.differences;
    assert!(d
        .iter()
        .any(|d| matches!(d, Difference::Differs { owner: 2, .. })));
    assert!(d
        .iter()
        .any(|d| matches!(d, Difference::Extra { owner: 2, .. })));
    // Its internal cache no longer matches its kernel, twice.
    let internal = d
        .iter()
        .filter(|d| matches!(d, Difference::Internal { node: 2, .. }))
        .count();
    assert_eq!(internal, 2, "{failure}");
}

#[test]
fn an_unknown_mode_or_cluster_size_still_runs_or_fails_cleanly() {
    // A single node has no peers: trivially converged, nothing panics.
    let mut p = params_for_seed(1);
    p.nodes = 1;
    let r = run(1, &p).unwrap();
    assert_eq!(r.flows.len(), 1);
    // Larger clusters run too.
    let mut p = params_for_seed(2);
    p.nodes = 5;
    let r = run(2, &p);
    assert!(r.is_ok(), "{}", r.unwrap_err());
}

/// Every seed of a batch must converge; returns the reports.
fn all_converge(
    from: u64,
    count: u64,
    adjust: impl Fn(&mut SimParams) + Sync,
    what: &str,
) -> Vec<SimReport> {
    let started = Instant::now();
    let results = run_seeds(from, count, 2, adjust);
    println!(
        "sim {what}: {} seeds in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    expect_all_passed(results, what)
}

#[test]
fn notrack_and_alarm_seeds_converge_once_the_network_heals() {
    let notrack = all_converge(
        0,
        5_000,
        |p| *p = p.clone().with_mode(Mode::Notrack),
        "NOTRACK",
    );
    assert!(notrack.iter().filter(|r| r.net.lost > 0).count() > 1_500);
    assert!(notrack.iter().filter(|r| r.restarts > 0).count() > 250);
    assert_attacked_seeds_held(&notrack.iter().collect::<Vec<_>>(), 150);
    let alarm = all_converge(0, 1_000, |p| *p = p.clone().with_mode(Mode::Alarm), "ALARM");
    assert!(alarm.iter().filter(|r| r.net.lost > 0).count() > 300);
    assert_attacked_seeds_held(&alarm.iter().collect::<Vec<_>>(), 25);
}

/// A few seeds with 100,000-flow tables per node: bulks of thousands of
/// datagrams through each seed's loss, duplication, reordering,
/// partitions and restarts, with the daemon's default window (a tiny one
/// is covered above with small tables).
#[test]
fn seeds_with_large_tables_converge() {
    let reports = all_converge(
        7_000,
        5,
        |p| {
            p.flows_per_node = 100_000;
            p.ops_per_node = 120_000;
            p.window = 4_096;
            p.quiet_ms = 60_000;
            p.converge_within_ms = 45_000;
        },
        "100,000-flow tables",
    );
    assert!(reports
        .iter()
        .all(|r| r.flows.iter().sum::<usize>() > 100_000));
}

/// Two links per node; link 0 loses datagrams and is cut three times
/// during the workload, once for longer than the peer timeout: data must
/// fail over to link 1 (seen on the nodes' active link) and back, and
/// every seed must converge, in FTFW and NOTRACK.
#[test]
fn redundant_links_fail_over_and_every_seed_converges() {
    for mode in [Mode::Ftfw, Mode::Notrack] {
        let adjust = move |p: &mut SimParams| {
            *p = p.clone().with_mode(mode);
            p.links = 2;
            p.link_faults = true;
            p.workload_ms = p.workload_ms.max(15_000);
            p.ops_per_node = p.ops_per_node.max(60);
        };
        let reports = all_converge(11_000, 100, adjust, "two links");
        assert!(reports.iter().all(|r| r.params.links == 2));
        // Step a few seeds by hand: some instants find data on link 1.
        let mut on_backup = 0;
        let mut on_primary = 0;
        for seed in 11_000..11_005 {
            let mut p = params_for_seed(seed);
            adjust(&mut p);
            let mut sim = Sim::new(seed, &p).unwrap();
            let mut t = 0;
            while t < sim.end_at() {
                t += 100;
                sim.run_until(t).unwrap();
                for i in 0..sim.len() {
                    match sim.node(i).and_then(|n| n.active_link()) {
                        Some(1) => on_backup += 1,
                        Some(0) => on_primary += 1,
                        _ => {}
                    }
                }
            }
            let report = sim.finish();
            assert!(report.is_ok(), "{}", report.unwrap_err());
        }
        println!("{mode:?}: active link 0 at {on_primary} and link 1 at {on_backup} instants");
        assert!(on_backup > 20, "{mode:?}: data never failed over");
        assert!(on_primary > on_backup, "{mode:?}: and came back");
    }
}

/// 45,000 flows made on node 1 while 20% of all datagrams are lost, both
/// ways, for the whole run (it never heals); the node-2 view must equal
/// node 1's table within 60 s of the last change.
fn steady_loss(mode: Mode, digest_interval_ms: Option<u64>) -> SimParams {
    let mut p = params_for_seed(0).with_mode(mode);
    p.nodes = 2;
    p.loss = 20;
    p.dup = 0;
    p.reorder = 20;
    p.partitions = false;
    p.restarts = false;
    p.window = 4_096;
    p.writers = 1;
    p.flows_per_node = 1_000_000;
    p.ops_per_node = 48_000;
    p.workload_ms = 10_000;
    p.steady_loss = true;
    p.quiet_ms = 70_000;
    p.converge_within_ms = 60_000;
    p.digest_interval_ms = digest_interval_ms;
    // Repair through loss alone: seed 0's keys and adversary stay out.
    p.auth = false;
    p.adversary = None;
    p
}

fn run_steady_loss(mode: Mode, digest_interval_ms: Option<u64>) -> Result<SimReport, String> {
    let p = steady_loss(mode, digest_interval_ms);
    let started = Instant::now();
    let r = run(77, &p);
    println!(
        "{mode:?} steady 20% loss, digests {digest_interval_ms:?}: {} in {:.1} s",
        match &r {
            Ok(rep) => format!(
                "converged {} ms after the last change, flows {:?}, lost {} of {} datagrams",
                rep.converged_after_ms, rep.flows, rep.net.lost, rep.net.sent
            ),
            Err(f) => format!("FAILED ({:?})", f.kind),
        },
        started.elapsed().as_secs_f64()
    );
    r.map_err(|f| f.to_string())
}

#[test]
fn notrack_converges_through_steady_loss_by_range_repair() {
    let r = run_steady_loss(Mode::Notrack, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.flows[0] >= 45_000, "{:?}", r.flows);
    assert!(r.converged_after_ms <= 60_000);
    assert!(r.net.lost > r.net.sent / 10, "the loss really happened");
}

/// The negative control: the same run without digests (so without range
/// repair) must not converge, or the test above proves nothing.
#[test]
fn notrack_without_range_repair_does_not_converge_through_steady_loss() {
    let r = run_steady_loss(Mode::Notrack, Some(0));
    let e = r.expect_err("NOTRACK without digests converged through 20% loss");
    assert!(e.contains("FAILED"), "{e}");
}

#[test]
fn ftfw_converges_through_steady_loss() {
    let r = run_steady_loss(Mode::Ftfw, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.flows[0] >= 45_000, "{:?}", r.flows);
    assert!(r.retransmits > 0);
}
