//! Authenticated sync between Nodes: sealed datagrams converge under loss,
//! restarts are admitted by challenge, and forged, replayed or plain
//! datagrams change nothing (with a keyless control that they would).

use super::*;
use crate::auth::KeyRing;

const KEY_A: [u8; 32] = [0x11; 32];
const KEY_B: [u8; 32] = [0x22; 32];

fn ring() -> KeyRing {
    KeyRing::single(1, &KEY_A)
}

fn keyed(sim: &mut Sim, ring: &KeyRing) {
    for n in sim.nodes.iter_mut().flatten() {
        n.enable_auth(ring.clone(), "pair");
    }
}

fn keyed_node(id: u32, epoch: u64, now: u64) -> Node {
    let mut n = Node::new(cfg(id), epoch, now).unwrap();
    n.enable_auth(ring(), "pair");
    n
}

fn b_view(sim: &Sim) -> Vec<Flow> {
    let mut flows: Vec<Flow> = sim.nodes[1]
        .as_ref()
        .unwrap()
        .external()
        .get(&1)
        .map(|c| c.flows().collect())
        .unwrap_or_default();
    flows.sort_by_key(|f| format!("{:?}", f.key()));
    flows
}

#[test]
fn sealed_sync_converges_through_loss_reordering_and_duplicates() {
    for seed in 0..40 {
        let mut sim = Sim::new(seed, vec![cfg(1), cfg(2)]);
        keyed(&mut sim, &ring());
        sim.faults = Faults {
            loss: 10,
            dup: 10,
            jitter: 20,
        };
        churn(&mut sim, &[0, 1], 300, 10, 3000, 200);
        sim.faults = Faults::default();
        sim.run_until(20_000);
        assert_all_converged(&sim, seed);
        for n in sim.nodes.iter().flatten() {
            let a = n.auth_stats();
            assert!(a.opened > 0 && a.sealed > 0, "seed {seed}: {a:?}");
            assert!(a.epochs_admitted >= 1, "seed {seed}: {a:?}");
            assert_eq!((a.bad_tag, a.unknown_key, a.missing), (0, 0, 0), "{a:?}");
        }
    }
}

#[test]
fn restarts_are_admitted_by_challenge_and_converge() {
    for seed in 0..30 {
        let mut sim = Sim::new(seed, vec![cfg(1), cfg(2)]);
        keyed(&mut sim, &ring());
        sim.faults.loss = 10;
        churn(&mut sim, &[0], 150, 10, 1500, 150);
        let now = sim.now;
        if seed % 2 == 0 {
            sim.nodes[1] = Some(keyed_node(2, 2000 + seed, now));
        } else {
            sim.nodes[0] = Some(keyed_node(1, 3000 + seed, now));
        }
        churn(&mut sim, &[0], 150, 1600, 3000, 150);
        sim.faults = Faults::default();
        sim.run_until(20_000);
        assert_all_converged(&sim, seed);
        let restarted = if seed % 2 == 0 { 0 } else { 1 };
        let a = sim.nodes[restarted].as_ref().unwrap().auth_stats();
        assert!(
            a.epochs_admitted >= 2,
            "seed {seed}: new epoch admitted: {a:?}"
        );
    }
}

/// A's datagrams recorded two lives ago, replayed to B (the attack of the
/// security issue). Returns B's view of A
/// before and after the replay, and B's stats.
fn replay_an_earlier_life(keys: bool) -> (Vec<Flow>, Vec<Flow>, SyncStats, AuthStats) {
    let mut sim = Sim::new(7, vec![cfg(1), cfg(2)]);
    if keys {
        keyed(&mut sim, &ring());
    }
    sim.recording = true;
    churn(&mut sim, &[0], 100, 10, 1000, 50);
    sim.run_until(3000);
    sim.recording = false;
    let old: Vec<Vec<u8>> = sim
        .recorded
        .iter()
        .filter(|(from, _)| *from == 0)
        .map(|(_, b)| b.clone())
        .collect();
    // A restarts empty, twice (B remembers one earlier epoch as stale);
    // B learns that its table is now empty.
    for epoch in [5000, 6000] {
        let now = sim.now;
        sim.nodes[0] = Some(if keys {
            keyed_node(1, epoch, now)
        } else {
            Node::new(cfg(1), epoch, now).unwrap()
        });
        sim.run_until(now + 8000);
    }
    let before = b_view(&sim);
    let restarts_before = sim.nodes[1].as_ref().unwrap().stats().peer_restarts;
    let now = sim.now;
    for bytes in &old {
        sim.node(1).on_datagram(bytes, 0, now);
    }
    let after = b_view(&sim);
    let b = sim.nodes[1].as_ref().unwrap();
    let mut stats = b.stats().clone();
    stats.peer_restarts -= restarts_before;
    (before, after, stats, b.auth_stats().clone())
}

#[test]
fn a_replayed_earlier_life_changes_nothing_with_keys() {
    let (before, after, stats, auth) = replay_an_earlier_life(true);
    assert!(
        before.is_empty(),
        "A restarted empty: {} flows",
        before.len()
    );
    assert_eq!(after, before, "the replay reached B's cache");
    assert_eq!(stats.peer_restarts, 0, "the replay restarted A's stream");
    assert!(auth.epoch_unadmitted > 0, "{auth:?}");
}

#[test]
fn negative_control_a_replayed_earlier_life_gets_in_without_keys() {
    let (before, after, stats, _) = replay_an_earlier_life(false);
    assert!(before.is_empty());
    assert!(
        !after.is_empty() || stats.peer_restarts > 0,
        "without keys the replay must get in (else the keyed test proves nothing)"
    );
}

#[test]
fn forged_plain_and_foreign_datagrams_are_refused_by_reason() {
    let mut sim = Sim::new(3, vec![cfg(1), cfg(2)]);
    keyed(&mut sim, &ring());
    sim.recording = true;
    churn(&mut sim, &[0], 50, 10, 500, 50);
    sim.run_until(3000);
    sim.recording = false;
    let good = b_view(&sim);
    assert!(!good.is_empty());
    let sealed: Vec<Vec<u8>> = sim
        .recorded
        .iter()
        .filter(|(from, _)| *from == 0)
        .map(|(_, b)| b.clone())
        .collect();
    let now = sim.now;
    // Bits flipped in the body, under a packet number not seen yet (a
    // seen one is refused by the replay window before the tag is checked).
    assert!(sealed.len() >= 5, "{} datagrams", sealed.len());
    for bytes in &sealed {
        let mut forged = bytes.clone();
        forged[crate::wire::HEADER_LEN + 1] ^= 0x40;
        let last = forged.len() - 1;
        forged[last] ^= 0x40;
        assert_eq!(
            sim.node(1).on_datagram(&forged, 0, now),
            Some(crate::auth::AuthDrop::BadTag)
        );
    }
    // Replayed as they are (same epoch): duplicates of the window.
    for bytes in &sealed {
        assert!(sim.node(1).on_datagram(bytes, 0, now).is_some());
    }
    // A plain datagram claiming to be A, and one sealed with another key.
    let mut plainsim = Sim::new(3, vec![cfg(1), cfg(2)]);
    plainsim.recording = true;
    churn(&mut plainsim, &[0], 20, 10, 200, 50);
    plainsim.run_until(500);
    let mut other = Sim::new(4, vec![cfg(1), cfg(2)]);
    keyed(&mut other, &KeyRing::single(1, &KEY_B));
    other.recording = true;
    churn(&mut other, &[0], 20, 10, 200, 50);
    other.run_until(500);
    // What they recorded from node 1 (A's id; node 2's own datagrams are
    // refused as our own id before the gate, and counted so).
    plainsim.recorded.retain(|(from, _)| *from == 0);
    other.recorded.retain(|(from, _)| *from == 0);
    for (_, bytes) in plainsim.recorded.iter().chain(&other.recorded) {
        assert!(sim.node(1).on_datagram(bytes, 0, now).is_some());
    }
    let a = sim.nodes[1].as_ref().unwrap().auth_stats().clone();
    let n = sealed.len() as u64;
    assert_eq!(a.missing, plainsim.recorded.len() as u64, "{a:?}");
    // The other key's datagrams fail their tag, or the replay window first
    // where their packet numbers are taken.
    assert!(a.bad_tag >= n && a.replayed >= n, "{a:?}");
    let foreign = other.recorded.len() as u64;
    assert_eq!(a.bad_tag + a.replayed + a.too_old, 2 * n + foreign, "{a:?}");
    assert_eq!(b_view(&sim), good, "nothing refused changed B's view");
    // And a node without keys refuses sealed datagrams (no silent
    // downgrade, no half-understood traffic).
    let mut keyless = Node::new(cfg(2), 9, now).unwrap();
    for bytes in sealed.iter().take(5) {
        assert_eq!(
            keyless.on_datagram(bytes, 0, now),
            Some(crate::auth::AuthDrop::NotConfigured)
        );
    }
    assert_eq!(keyless.auth_stats().not_configured, 5);
    assert!(keyless.external().values().all(FlowCache::is_empty));
}

#[test]
fn keys_rotate_in_three_phases_while_flows_change() {
    let both = |send: u8| {
        let text = format!(
            "1 {}{}\n2 {}{}\n",
            b64(&KEY_A),
            if send == 1 { " send" } else { "" },
            b64(&KEY_B),
            if send == 2 { " send" } else { "" },
        );
        crate::auth::parse_key_file(&text).unwrap()
    };
    for seed in 0..10 {
        let mut sim = Sim::new(seed, vec![cfg(1), cfg(2)]);
        keyed(&mut sim, &ring());
        sim.faults.loss = 5;
        churn(&mut sim, &[0, 1], 100, 10, 1000, 150);
        // Phase 1: both keys everywhere, one node at a time; key 1 sends.
        sim.node(0).set_keys(both(1));
        churn(&mut sim, &[0, 1], 50, 1000, 1500, 150);
        sim.node(1).set_keys(both(1));
        churn(&mut sim, &[0, 1], 50, 1500, 2000, 150);
        // Phase 2: key 2 sends, one node at a time.
        sim.node(1).set_keys(both(2));
        churn(&mut sim, &[0, 1], 50, 2000, 2500, 150);
        sim.node(0).set_keys(both(2));
        churn(&mut sim, &[0, 1], 50, 2500, 3000, 150);
        sim.run_until(4000);
        // Phase 3: key 1 goes.
        for i in 0..2 {
            sim.node(i).set_keys(KeyRing::single(2, &KEY_B));
        }
        churn(&mut sim, &[0, 1], 50, 4000, 4500, 150);
        sim.faults = Faults::default();
        sim.run_until(20_000);
        assert_all_converged(&sim, seed);
        for n in sim.nodes.iter().flatten() {
            let a = n.auth_stats();
            assert_eq!(a.unknown_key, 0, "seed {seed}: lost to rotation: {a:?}");
            assert!(a.key_use.get(&2).is_some_and(|k| k.opened > 0), "{a:?}");
            assert!(a.key_use.get(&1).is_some_and(|k| k.opened > 0), "{a:?}");
        }
    }
}

fn b64(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[test]
fn two_clusters_sharing_a_key_do_not_talk() {
    let mut sim = Sim::new(1, vec![cfg(1), cfg(2)]);
    sim.node(0).enable_auth(ring(), "pair-a");
    sim.node(1).enable_auth(ring(), "pair-b");
    churn(&mut sim, &[0], 20, 10, 500, 50);
    sim.run_until(5000);
    assert!(b_view(&sim).is_empty());
    assert!(sim.nodes[1].as_ref().unwrap().auth_stats().bad_tag > 0);
}

#[test]
fn a_sequence_rollover_is_a_new_epoch_admitted_by_challenge() {
    for seed in 0..20 {
        let mut sim = Sim::new(seed, vec![cfg(1), cfg(2)]);
        keyed(&mut sim, &ring());
        churn_across_a_rollover(&mut sim, seed, Node::seq_limit);
        for i in 0..2 {
            let n = sim.nodes[i].as_ref().unwrap();
            assert_eq!(n.stats().epoch_rollovers, 1, "seed {seed}");
            assert_eq!(
                n.peers()[0].epoch,
                1001,
                "seed {seed}: the peer's new epoch"
            );
            let a = n.auth_stats();
            assert!(a.epochs_admitted >= 2, "seed {seed}: {a:?}");
        }
    }
}

#[test]
fn our_own_datagrams_reflected_back_leave_no_trace_in_the_gate() {
    let mut sim = Sim::new(5, vec![cfg(1), cfg(2)]);
    keyed(&mut sim, &ring());
    sim.recording = true;
    churn(&mut sim, &[0, 1], 30, 10, 500, 50);
    sim.run_until(3000);
    let own: Vec<Vec<u8>> = sim
        .recorded
        .iter()
        .filter(|(from, _)| *from == 1)
        .map(|(_, b)| b.clone())
        .collect();
    assert!(!own.is_empty());
    let now = sim.now;
    let before = sim.nodes[1].as_ref().unwrap().auth_stats().clone();
    for bytes in &own {
        assert_eq!(sim.node(1).on_datagram(bytes, 0, now), None);
    }
    let b = sim.nodes[1].as_ref().unwrap();
    assert_eq!(b.stats().malformed.own_node_id, own.len() as u64);
    let after = b.auth_stats();
    assert_eq!(
        (
            after.opened,
            after.challenges_sent,
            after.challenges_answered
        ),
        (
            before.opened,
            before.challenges_sent,
            before.challenges_answered
        ),
        "a reflection reached the gate"
    );
}

#[test]
fn replays_of_old_epochs_cannot_keep_a_restarted_peer_out() {
    // A lives three times; its first two lives are recorded and replayed
    // to B all through A's third, which B must still admit.
    let mut sim = Sim::new(9, vec![cfg(1), cfg(2)]);
    keyed(&mut sim, &ring());
    sim.recording = true;
    let mut old = Vec::new();
    for (life, epoch) in [(0u64, 4000u64), (1, 5000)] {
        churn(&mut sim, &[0], 30, 10 + life * 3000, 1000 + life * 3000, 50);
        sim.run_until(2500 + life * 3000);
        old.extend(
            sim.recorded
                .drain(..)
                .filter(|(from, _)| *from == 0)
                .map(|(_, b)| b),
        );
        let now = sim.now;
        sim.nodes[0] = Some(keyed_node(1, epoch, now));
    }
    sim.recording = false;
    let start = sim.now;
    churn(&mut sim, &[0], 50, start + 10, start + 3000, 50);
    let mut i = 0;
    while sim.now < start + 10_000 {
        let now = sim.now;
        for _ in 0..4 {
            let bytes = old[i % old.len()].clone();
            sim.node(1).on_datagram(&bytes, 0, now);
            i += 1;
        }
        sim.step();
    }
    sim.run_until(start + 25_000);
    assert_eq!(sim.nodes[1].as_ref().unwrap().peers()[0].epoch, 5000);
    assert_all_converged(&sim, 9);
}
