//! The per-peer figures `-s --json` and the metrics show: bulks sent at a
//! peer's request and received from it, digest mismatches, how far the
//! receive side lags the peer's stream, and how much of our resend window
//! the peer has not acknowledged.

use super::*;

fn peer_of(sim: &Sim, at: usize, id: u32) -> PeerStatus {
    sim.nodes[at]
        .as_ref()
        .unwrap()
        .peers()
        .into_iter()
        .find(|p| p.node_id == id)
        .unwrap()
}

#[test]
fn bulks_and_digest_mismatches_are_counted_per_peer() {
    let mut sim = Sim::new(11, vec![cfg(1), cfg(2)]);
    churn(&mut sim, &[0], 100, 10, 1000, 100);
    sim.run_until(3000);
    assert_all_converged(&sim, 11);
    let (a_bulks, b_bulks) = (peer_of(&sim, 0, 2).counts, peer_of(&sim, 1, 1).counts);
    // Start-up: each asked the other for its table.
    assert!(a_bulks.bulks_sent >= 1, "{a_bulks:?}");
    assert!(b_bulks.bulks_received >= 1, "{b_bulks:?}");
    assert_eq!(b_bulks.digest_mismatches, 0);
    let all = sim.nodes[1].as_ref().unwrap().stats().clone();
    assert_eq!(b_bulks.bulks_received, all.bulks_received);

    // B asks for A's table: one more bulk, counted on both sides.
    let now = sim.now;
    sim.node(1).request_resync(now);
    sim.run_until(now + 2000);
    assert_eq!(
        peer_of(&sim, 0, 2).counts.bulks_sent,
        a_bulks.bulks_sent + 1
    );
    assert_eq!(
        peer_of(&sim, 1, 1).counts.bulks_received,
        b_bulks.bulks_received + 1
    );

    // B loses flows behind the protocol's back: A's next digest disagrees.
    let keys: Vec<FlowKey> = sim.nodes[0].as_ref().unwrap().internal().keys().collect();
    for k in &keys[..3] {
        assert!(sim.node(1).remove_external(1, k));
    }
    let now = sim.now;
    let interval = sim.nodes[0].as_ref().unwrap().config().digest_interval_ms;
    sim.run_until(now + 3 * interval);
    assert_all_converged(&sim, 11);
    assert!(peer_of(&sim, 1, 1).counts.digest_mismatches >= 1);
    assert_eq!(peer_of(&sim, 0, 2).counts.digest_mismatches, 0);
}

#[test]
fn lag_and_unacknowledged_datagrams_show_a_cut_and_clear_after_it() {
    let mut sim = Sim::new(12, vec![cfg(1), cfg(2)]);
    churn(&mut sim, &[0], 20, 10, 500, 50);
    sim.run_until(2000);
    assert_all_converged(&sim, 12);
    assert_eq!(
        (peer_of(&sim, 0, 2).unacked, peer_of(&sim, 1, 1).rx_lag),
        (0, 0)
    );

    // A's data to B is lost: B has not acknowledged it.
    sim.cut.insert((0, 1));
    churn(&mut sim, &[0], 20, 2000, 2500, 50);
    let unacked = peer_of(&sim, 0, 2).unacked;
    let window = sim.nodes[0].as_ref().unwrap().backlog().1 as u32;
    assert!(unacked > 0 && unacked <= window, "{unacked} of {window}");

    // One more is lost, the next arrives: B knows of a datagram it cannot
    // apply yet.
    sim.cut.clear();
    sim.run_until(sim.now + 5000);
    assert_all_converged(&sim, 12);
    assert_eq!(
        (peer_of(&sim, 0, 2).unacked, peer_of(&sim, 1, 1).rx_lag),
        (0, 0)
    );
    sim.cut.insert((0, 1));
    let now = sim.now;
    sim.node(0)
        .local_upsert(&flow_for(&mut Rng(1), 1001), now, true);
    sim.step();
    sim.cut.clear();
    let now = sim.now;
    sim.node(0)
        .local_upsert(&flow_for(&mut Rng(2), 1002), now, true);
    let mut most_lag = 0;
    for _ in 0..5 {
        sim.step();
        most_lag = most_lag.max(peer_of(&sim, 1, 1).rx_lag);
    }
    let now = sim.now;
    sim.run_until(now + 5000);
    assert_all_converged(&sim, 12);
    assert!(most_lag > 0, "B never lagged A's stream");
    assert_eq!(
        (peer_of(&sim, 0, 2).unacked, peer_of(&sim, 1, 1).rx_lag),
        (0, 0)
    );
}
