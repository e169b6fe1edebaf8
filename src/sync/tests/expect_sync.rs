//! Expectations replicate in every mode, through loss, a receiver's
//! restart and a sender that forgets to say what it deleted; off, nothing
//! of them is sent.

use super::*;
use crate::expect::test_expectations::ftp;

fn expect_cfg(id: u32, mode: Mode) -> SyncConfig {
    SyncConfig {
        mode,
        expectations: true,
        alarm_refresh_ms: 2_000,
        alarm_timeout_ms: 6_000,
        digest_interval_ms: 1_000,
        ..cfg(id)
    }
}

/// Random creations, changes and deletions of `slots` expectations on node 0.
fn expect_churn(sim: &mut Sim, ops: usize, from: u64, to: u64, slots: u64) {
    for op in 0..ops {
        let t = from + (to - from) * op as u64 / ops as u64;
        sim.run_until(t);
        let port = 5000 + sim.rng.below(slots) as u16;
        let mut e = ftp(port);
        e.timeout = 300 - sim.rng.below(100) as u32;
        e.class = sim.rng.below(2) as u32;
        let now = sim.now;
        if sim.rng.chance(30) {
            sim.node(0).local_expect_delete(&e.key(), now, true);
        } else {
            sim.node(0).local_expect_upsert(e, now, true);
        }
    }
}

/// Node `to`'s view of node `from`'s expectations equals them (states,
/// timeouts aside).
fn expectations_converged(sim: &Sim, from: usize, to: usize) -> Result<(), String> {
    let a = sim.nodes[from].as_ref().unwrap();
    let b = sim.nodes[to].as_ref().unwrap();
    let strip = |e: &Expectation| {
        let mut e = e.clone();
        e.timeout = 0;
        e
    };
    let want: Vec<Expectation> = a
        .internal_expectations()
        .iter()
        .map(|x| strip(&x.expect))
        .collect();
    let got: Vec<Expectation> = b
        .external_expectations()
        .find(|(id, _)| *id == sim.ids[from])
        .map(|(_, c)| c.iter().map(|x| strip(&x.expect)).collect())
        .unwrap_or_default();
    if want == got {
        Ok(())
    } else {
        Err(format!(
            "{} expectations sent, {} held",
            want.len(),
            got.len()
        ))
    }
}

#[test]
fn expectations_converge_in_every_mode_through_loss() {
    for mode in [Mode::Ftfw, Mode::Notrack, Mode::Alarm] {
        for seed in 0..40 {
            let mut sim = Sim::new(seed, vec![expect_cfg(1, mode), expect_cfg(2, mode)]);
            sim.faults = Faults {
                loss: 20,
                dup: 5,
                jitter: 10,
            };
            expect_churn(&mut sim, 200, 10, 3000, 40);
            sim.faults = Faults::default();
            sim.run_until(12_000);
            let held = sim.nodes[0].as_ref().unwrap().internal_expectations().len();
            assert!(held > 0, "{mode:?} seed {seed}: the churn left some");
            if let Err(e) = expectations_converged(&sim, 0, 1) {
                panic!("{mode:?} seed {seed}: {e}");
            }
        }
    }
}

#[test]
fn a_restarted_receiver_gets_every_expectation_back() {
    let mut sim = Sim::new(
        7,
        vec![expect_cfg(1, Mode::Ftfw), expect_cfg(2, Mode::Ftfw)],
    );
    expect_churn(&mut sim, 50, 10, 1000, 20);
    sim.run_until(2000);
    expectations_converged(&sim, 0, 1).unwrap();
    let now = sim.now;
    sim.nodes[1] = Some(Node::new(expect_cfg(2, Mode::Ftfw), 2000, now).unwrap());
    assert!(
        expectations_converged(&sim, 0, 1).is_err(),
        "the new node knows nothing yet"
    );
    sim.run_until(now + 3000);
    expectations_converged(&sim, 0, 1).unwrap();
}

#[test]
fn a_lost_delete_is_repaired_by_the_digest() {
    let mut sim = Sim::new(
        3,
        vec![expect_cfg(1, Mode::Notrack), expect_cfg(2, Mode::Notrack)],
    );
    sim.node(0).local_expect_upsert(ftp(1), 5, true);
    sim.node(0).local_expect_upsert(ftp(2), 5, true);
    sim.run_until(500);
    expectations_converged(&sim, 0, 1).unwrap();
    // Deleted without telling anyone (as a lost datagram would).
    sim.node(0).local_expect_delete(&ftp(1).key(), 500, false);
    assert!(expectations_converged(&sim, 0, 1).is_err());
    sim.run_until(3000);
    expectations_converged(&sim, 0, 1).unwrap();
}

#[test]
fn with_expectation_sync_off_nothing_is_sent() {
    let off = |id| SyncConfig {
        expectations: false,
        ..expect_cfg(id, Mode::Ftfw)
    };
    let mut sim = Sim::new(5, vec![off(1), off(2)]);
    sim.recording = true;
    sim.node(0).local_expect_upsert(ftp(1), 5, true);
    sim.run_until(3000);
    assert_eq!(
        sim.nodes[0].as_ref().unwrap().internal_expectations().len(),
        1
    );
    assert_eq!(
        sim.nodes[1]
            .as_ref()
            .unwrap()
            .external_expectations()
            .count(),
        0
    );
    for (_, bytes) in &sim.recorded {
        let (_, msgs) = decode_datagram(bytes).unwrap();
        assert!(
            !msgs.iter().any(expect::is_expect_message),
            "an expectation message was sent: {msgs:?}"
        );
    }
}
