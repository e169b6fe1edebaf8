//! Seeded simulation of Nodes over an in-memory network with loss,
//! duplication, reordering, partitions and restarts.

use super::*;
use crate::flow::{proto, status, ProtoState, Tuple, L4};
use crate::wire::{decode_datagram, flags, Header, WireFlow, MAX_DATAGRAM};
use config::MIN_PAYLOAD;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// splitmix64: tiny, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy, Default)]
struct Faults {
    loss: u64,
    dup: u64,
    /// Extra random delay, in ms (reordering).
    jitter: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Option<Node>>,
    ids: Vec<u32>,
    /// (deliver at, order, to, link, bytes)
    wire: Vec<(u64, u64, usize, usize, Vec<u8>)>,
    order: u64,
    faults: Faults,
    /// Directed pairs (from, to) that drop everything.
    cut: HashSet<(usize, usize)>,
    /// Compare views without timeouts: what digests cover (a lost
    /// timeout-only refresh in NOTRACK is not repaired; the kernel counts
    /// timeouts down anyway).
    states_only: bool,
    /// Every datagram sent, by sender index, while `recording` (an
    /// attacker's capture).
    recording: bool,
    recorded: Vec<(usize, Vec<u8>)>,
}

/// Unit tests step time by hand: data leaves at once (no batching delay;
/// `batching_fills_datagrams_and_waits_no_longer_than_the_delay` covers it).
fn cfg(id: u32) -> SyncConfig {
    SyncConfig {
        node_id: id,
        batch_delay_ms: 0,
        ..SyncConfig::default()
    }
}

impl Sim {
    fn new(seed: u64, configs: Vec<SyncConfig>) -> Sim {
        let ids = configs.iter().map(|c| c.node_id).collect();
        let nodes = configs
            .into_iter()
            .map(|c| Some(Node::new(c, 1000, 0).unwrap()))
            .collect();
        Sim {
            rng: Rng(seed),
            now: 0,
            nodes,
            ids,
            wire: Vec::new(),
            order: 0,
            faults: Faults::default(),
            cut: HashSet::new(),
            states_only: false,
            recording: false,
            recorded: Vec::new(),
        }
    }

    fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().unwrap()
    }

    fn send(&mut self, from: usize, t: Transmit) {
        if self.recording {
            self.recorded.push((from, t.bytes.clone()));
        }
        for to in 0..self.nodes.len() {
            if to == from || self.cut.contains(&(from, to)) {
                continue;
            }
            let copies = if self.rng.chance(self.faults.dup) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                if self.rng.chance(self.faults.loss) {
                    continue;
                }
                let at = self.now + 1 + self.rng.below(self.faults.jitter + 1);
                self.order += 1;
                self.wire
                    .push((at, self.order, to, t.link, t.bytes.clone()));
            }
        }
    }

    /// Deliver what is due, poll every node, advance to the next event.
    fn step(&mut self) {
        let now = self.now;
        let mut due: Vec<_> = Vec::new();
        self.wire.retain(|d| {
            if d.0 <= now {
                due.push(d.clone());
                false
            } else {
                true
            }
        });
        due.sort_by_key(|d| (d.0, d.1));
        for (_, _, to, link, bytes) in due {
            if let Some(n) = self.nodes[to].as_mut() {
                n.on_datagram(&bytes, link, now);
            }
        }
        for i in 0..self.nodes.len() {
            let Some(n) = self.nodes[i].as_mut() else {
                continue;
            };
            for t in n.poll_transmit(now) {
                self.send(i, t);
            }
        }
        let next_wire = self.wire.iter().map(|d| d.0).min().unwrap_or(u64::MAX);
        let next_node = self
            .nodes
            .iter()
            .flatten()
            .filter_map(Node::next_deadline)
            .min()
            .unwrap_or(u64::MAX);
        self.now = next_wire.min(next_node).max(now + 1);
    }

    fn run_until(&mut self, t: u64) {
        while self.now < t {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Does `to`'s external view of `from` equal `from`'s internal cache?
    fn converged(&self, from: usize, to: usize) -> Result<(), String> {
        let a = self.nodes[from].as_ref().unwrap();
        let b = self.nodes[to].as_ref().unwrap();
        let strip = |mut f: Flow| {
            if self.states_only {
                f.timeout = 0;
            }
            (f.key(), f)
        };
        let want: HashMap<FlowKey, Flow> = a.internal().flows().map(strip).collect();
        let got: HashMap<FlowKey, Flow> = b
            .external()
            .get(&self.ids[from])
            .map(|c| c.flows().map(strip).collect())
            .unwrap_or_default();
        if want == got {
            return Ok(());
        }
        let missing = want.keys().filter(|k| !got.contains_key(k)).count();
        let extra = got.keys().filter(|k| !want.contains_key(k)).count();
        let differ = want
            .iter()
            .filter(|(k, f)| got.get(k).is_some_and(|g| g != *f))
            .count();
        Err(format!(
            "node {from} -> {to}: {} flows vs {}: missing {missing}, extra {extra}, differ {differ}; sender {:?} receiver {:?}",
            want.len(),
            got.len(),
            a.stats(),
            b.peers()
        ))
    }
}

fn flow_for(rng: &mut Rng, slot: u64) -> Flow {
    let kind = slot % 5;
    let n = (slot / 5) as u16;
    let v4 = |x: u16| IpAddr::V4(Ipv4Addr::new(198, 18, (x >> 8) as u8, x as u8));
    let v6 = |x: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, x));
    let (src, dst, p, l4) = match kind {
        0 => (
            v4(n),
            v4(9),
            proto::TCP,
            L4::Ports {
                src: 1024 + n,
                dst: 80,
            },
        ),
        1 => (
            v6(n),
            v6(9),
            proto::UDP,
            L4::Ports {
                src: 2000 + n,
                dst: 53,
            },
        ),
        2 => (
            v4(n),
            v4(7),
            proto::ICMP,
            L4::Icmp {
                kind: 8,
                code: 0,
                id: n,
            },
        ),
        3 => (v4(n), v4(8), proto::SCTP, L4::Ports { src: n, dst: 3868 }),
        _ => (
            v6(n),
            v6(8),
            proto::TCP,
            L4::Ports {
                src: 3000 + n,
                dst: 443,
            },
        ),
    };
    let mut f = Flow::new(Tuple {
        src,
        dst,
        proto: p,
        l4,
    });
    f.zone = (slot % 3) as u16;
    f.status = status::CONFIRMED | status::ASSURED;
    f.timeout = rng.below(432_000) as u32;
    f.mark = rng.below(4) as u32;
    if p == proto::TCP {
        f.state = ProtoState::Tcp {
            state: rng.below(10) as u8,
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0,
            flags_reply: 0,
        };
    }
    if kind == 0 && rng.chance(40) {
        // SNAT to another source and port.
        f.reply.dst = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1));
        f.reply.l4 = L4::Ports {
            src: 80,
            dst: 40000 + n,
        };
        f.status |= status::SRC_NAT | status::SRC_NAT_DONE;
    }
    if kind == 3 && rng.chance(50) {
        f.helper = Some("sip".into());
        f.labels = Some(vec![1, 0, 0, 2]);
    }
    f
}

/// Random upserts, updates and deletes on node `i` over `[from, to)` ms.
fn churn(sim: &mut Sim, nodes: &[usize], ops: usize, from: u64, to: u64, slots: u64) {
    for op in 0..ops {
        let t = from + (to - from) * op as u64 / ops as u64;
        sim.run_until(t);
        let i = nodes[sim.rng.below(nodes.len() as u64) as usize];
        let slot = sim.rng.below(slots);
        let f = flow_for(&mut sim.rng, slot);
        let now = sim.now;
        if sim.rng.chance(25) {
            sim.node(i).local_delete(&f.key(), now, true);
        } else {
            sim.node(i).local_upsert(&f, now, true);
        }
    }
}

fn assert_all_converged(sim: &Sim, seed: u64) {
    for a in 0..sim.nodes.len() {
        for b in 0..sim.nodes.len() {
            if a != b {
                if let Err(e) = sim.converged(a, b) {
                    panic!("seed {seed}: {e}");
                }
            }
        }
    }
}

fn scenario(seed: u64, faults: Faults, ops: usize) -> Sim {
    let mut sim = Sim::new(seed, vec![cfg(1), cfg(2)]);
    sim.faults = faults;
    churn(&mut sim, &[0, 1], ops, 10, 3000, 200);
    sim.faults = Faults::default();
    sim.run_until(20_000);
    assert_all_converged(&sim, seed);
    sim
}

#[test]
fn converges_without_faults() {
    for seed in 0..100 {
        let sim = scenario(seed, Faults::default(), 300);
        let s = sim.nodes[0].as_ref().unwrap().stats();
        assert_eq!(s.retransmits, 0, "seed {seed}");
        assert_eq!(s.lost, 0, "seed {seed}");
        assert!(!sim.nodes[1].as_ref().unwrap().external()[&1].is_empty());
        for n in sim.nodes.iter().flatten() {
            assert!(n.stats().digests_received > 0, "seed {seed}");
            assert_eq!(n.stats().digest_mismatches, 0, "seed {seed}");
        }
    }
}

#[test]
fn converges_with_20_percent_loss() {
    let mut nacks = 0;
    for seed in 0..200 {
        let f = Faults {
            loss: 20,
            ..Faults::default()
        };
        let sim = scenario(seed, f, 300);
        nacks += sim.nodes[0].as_ref().unwrap().stats().nacks_received;
        for n in sim.nodes.iter().flatten() {
            // Reliable and in order: a digest never disagrees.
            assert_eq!(n.stats().digest_mismatches, 0, "seed {seed}");
        }
    }
    assert!(nacks > 0, "loss must have caused NACKs");
}

#[test]
fn converges_with_reordering_and_duplication() {
    let mut dups = 0;
    for seed in 0..200 {
        let f = Faults {
            loss: 5,
            dup: 20,
            jitter: 30,
        };
        let sim = scenario(seed, f, 300);
        dups += sim.nodes[1].as_ref().unwrap().stats().duplicates;
    }
    assert!(dups > 0);
}

#[test]
fn restarted_receiver_converges_without_manual_resync() {
    for seed in 0..100 {
        let mut sim = Sim::new(seed, vec![cfg(1), cfg(2)]);
        sim.faults.loss = 10;
        churn(&mut sim, &[0], 200, 10, 1500, 150);
        // B restarts: a new Node with a new epoch; its external view is gone.
        sim.nodes[1] = Some(Node::new(cfg(2), 2000, sim.now).unwrap());
        churn(&mut sim, &[0], 200, 1600, 3000, 150);
        sim.faults = Faults::default();
        sim.run_until(20_000);
        assert_all_converged(&sim, seed);
        assert_eq!(sim.nodes[0].as_ref().unwrap().peers()[0].epoch, 2000);
    }
}

#[test]
fn restarted_sender_converges() {
    for seed in 0..100 {
        let mut sim = Sim::new(seed, vec![cfg(1), cfg(2)]);
        sim.faults.loss = 10;
        churn(&mut sim, &[0], 200, 10, 1500, 150);
        // A restarts with an empty table; B must drop A's old flows.
        // Epochs need not grow (the daemon mixes in the pid).
        let epoch = if seed % 2 == 0 { 2000 } else { 500 };
        sim.nodes[0] = Some(Node::new(cfg(1), epoch, sim.now).unwrap());
        churn(&mut sim, &[0], 100, 1600, 3000, 150);
        sim.faults = Faults::default();
        sim.run_until(20_000);
        assert_all_converged(&sim, seed);
        let b = sim.nodes[1].as_ref().unwrap();
        assert_eq!(b.stats().peer_restarts, 1, "seed {seed}");
        assert_eq!(b.peers()[0].epoch, epoch);
    }
}

#[test]
fn tiny_window_and_long_partition_lose_nothing() {
    for seed in 0..50 {
        let mut sim = Sim::new(
            seed,
            vec![
                SyncConfig {
                    window: 2,
                    ..cfg(1)
                },
                cfg(2),
            ],
        );
        churn(&mut sim, &[0], 50, 10, 500, 300);
        sim.cut.insert((0, 1));
        sim.cut.insert((1, 0));
        churn(&mut sim, &[0], 400, 600, 10_000, 300);
        let a = sim.nodes[0].as_ref().unwrap();
        assert!(a.backlog().1 <= 2, "resend queue bounded by the window");
        assert!(a.stats().window_full > 0);
        sim.cut.clear();
        sim.run_until(40_000);
        assert_all_converged(&sim, seed);
    }
}

#[test]
fn resend_queue_overrun_heals_via_resume_and_bulk() {
    for seed in 0..50 {
        // C is cut off long enough to be "down": A's window moves on with B's
        // acks, so what C missed is gone from the resend queue.
        let mut sim = Sim::new(
            seed,
            vec![
                SyncConfig {
                    window: 4,
                    ..cfg(1)
                },
                cfg(2),
                cfg(3),
            ],
        );
        churn(&mut sim, &[0], 50, 10, 500, 300);
        sim.cut.insert((0, 2));
        sim.cut.insert((2, 0));
        churn(&mut sim, &[0], 400, 600, 12_000, 300);
        sim.cut.clear();
        churn(&mut sim, &[0], 20, 12_000, 12_500, 300);
        sim.run_until(40_000);
        assert_all_converged(&sim, seed);
        let a = sim.nodes[0].as_ref().unwrap();
        assert!(a.stats().resumes_sent > 0, "seed {seed}: {:?}", a.stats());
        let c = sim.nodes[2].as_ref().unwrap();
        assert!(c.stats().resumes_received > 0);
    }
}

#[test]
fn bulk_and_resync_request_repair_the_external_view() {
    let mut sim = Sim::new(7, vec![cfg(1), cfg(2)]);
    churn(&mut sim, &[0], 200, 10, 1000, 100);
    sim.run_until(3000);
    assert_all_converged(&sim, 7);
    let keys: Vec<FlowKey> = sim.nodes[0].as_ref().unwrap().internal().keys().collect();
    assert!(keys.len() > 10);
    // B loses some flows; A forgets one silently (B keeps a stale copy).
    for k in &keys[..5] {
        assert!(sim.node(1).remove_external(1, k));
    }
    let now = sim.now;
    sim.node(0).local_delete(&keys[6], now, false);
    assert!(sim.converged(0, 1).is_err());
    sim.node(0).send_bulk(now);
    sim.run_until(now + 2000);
    assert_all_converged(&sim, 7);
    assert!(sim.nodes[1].as_ref().unwrap().stats().bulk_swept > 0);

    // -n from B: the same repair, pulled.
    for k in &keys[7..12] {
        assert!(sim.node(1).remove_external(1, k));
    }
    let now = sim.now;
    sim.node(0).local_delete(&keys[13], now, false);
    assert!(sim.converged(0, 1).is_err());
    sim.node(1).request_resync(now);
    sim.run_until(now + 2000);
    assert_all_converged(&sim, 7);
    let a = sim.nodes[0].as_ref().unwrap().stats();
    assert!(
        a.resyncs_requested_received >= 2 && a.bulks_sent >= 3,
        "{a:?}"
    );
}

/// Many changes to one flow before it is sent leave as one message with
/// the last state.
#[test]
fn changes_to_a_queued_flow_coalesce_into_one_message() {
    let mut sim = Sim::new(4, vec![cfg(1), cfg(2)]);
    sim.run_until(1000);
    let before = sim.nodes[0].as_ref().unwrap().stats().messages_sent;
    let mut rng = Rng(9);
    let mut f = flow_for(&mut rng, 1);
    let now = sim.now;
    for mark in 0..100 {
        f.mark = mark;
        sim.node(0).local_upsert(&f, now, true);
    }
    sim.run_until(now + 500);
    let a = sim.nodes[0].as_ref().unwrap().stats();
    assert_eq!(a.messages_sent - before, 1, "{a:?}");
    let b = sim.nodes[1].as_ref().unwrap();
    assert_eq!(b.external().get(&1).and_then(|c| c.flow(&f.key())), Some(f));
}

/// A bulk sends a snapshot of the table; a flow that was already queued
/// is left out of it, so a change made to that flow after the snapshot
/// (coalesced into its queued key) is what the peer ends with, without
/// waiting for a digest to repair it.
#[test]
fn a_flow_changed_while_queued_during_a_bulk_arrives_in_its_last_state() {
    let mut sim = Sim::new(3, vec![cfg(1), cfg(2)]);
    sim.run_until(1000);
    let mut rng = Rng(5);
    let first = flow_for(&mut rng, 1);
    let now = sim.now;
    sim.node(0).local_upsert(&first, now, true);
    sim.node(0).send_bulk(now);
    let mut last = first.clone();
    last.mark ^= 0x00de_ad00;
    sim.node(0).local_upsert(&last, now, true);
    // Well before the first digest (5 s) could repair anything.
    sim.run_until(now + 500);
    let b = sim.nodes[1].as_ref().unwrap();
    let got = b.external().get(&1).and_then(|c| c.flow(&first.key()));
    assert_eq!(got, Some(last));
    assert_eq!(b.stats().digest_mismatches, 0);
}

#[test]
fn reconcile_sends_only_differences() {
    let mut sim = Sim::new(3, vec![cfg(1), cfg(2)]);
    churn(&mut sim, &[0], 100, 10, 500, 60);
    sim.run_until(2000);
    let mut kernel: Vec<Flow> = sim.nodes[0].as_ref().unwrap().internal().flows().collect();
    kernel.sort_by_key(|f| f.key());
    let removed = kernel.pop().unwrap();
    kernel[0].mark ^= 0x55;
    let mut rng = Rng(99);
    kernel.push(flow_for(&mut rng, 1000));
    let before = sim.nodes[0].as_ref().unwrap().stats().messages_sent;
    let now = sim.now;
    let r = sim
        .node(0)
        .reconcile_internal(kernel.clone(), now, Replicate::Differences);
    assert_eq!((r.added, r.changed, r.removed), (1, 1, 1));
    assert_eq!(r.unchanged, kernel.len() - 2);
    assert!(!sim.nodes[0]
        .as_ref()
        .unwrap()
        .internal()
        .contains(&removed.key()));
    sim.run_until(now + 2000);
    assert_all_converged(&sim, 3);
    let sent = sim.nodes[0].as_ref().unwrap().stats().messages_sent - before;
    // Three data messages plus a few keepalives, not the whole table.
    assert!(sent < 3 + 5, "{sent}");
}

/// After a commit, B's kernel holds A's flows: a re-read that takes peer
/// flows for the commit's own writes caches them as B's without sending
/// them back to A, while B's genuinely new flow goes out. (Anti-entropy
/// would later bring A's view of B to B's table: digests are kept out of
/// the way here.)
#[test]
fn a_reread_after_a_commit_does_not_send_the_peers_flows_back() {
    let quiet = |id| SyncConfig {
        digest_interval_ms: 600_000,
        ..cfg(id)
    };
    let mut sim = Sim::new(5, vec![quiet(1), quiet(2)]);
    churn(&mut sim, &[0], 50, 10, 500, 40);
    sim.run_until(3000);
    assert_all_converged(&sim, 5);
    let mut kernel: Vec<Flow> = sim.nodes[0].as_ref().unwrap().internal().flows().collect();
    assert!(!kernel.is_empty());
    let mut rng = Rng(77);
    let own = flow_for(&mut rng, 5000);
    kernel.push(own.clone());
    let now = sim.now;
    let r = sim
        .node(1)
        .reconcile_internal(kernel.clone(), now, Replicate::DifferencesButPeerFlows);
    assert_eq!(r.added, kernel.len());
    sim.run_until(now + 2000);
    let a = sim.nodes[0].as_ref().unwrap();
    let view: Vec<FlowKey> = a
        .external()
        .get(&2)
        .map_or(Vec::new(), |c| c.keys().collect());
    assert_eq!(view, vec![own.key()], "only B's own flow reaches A");
}

#[test]
fn malformed_datagrams_are_counted_and_ignored() {
    let mut sim = Sim::new(5, vec![cfg(1), cfg(2)]);
    churn(&mut sim, &[0], 50, 10, 500, 60);
    sim.run_until(2000);
    let before = sim.nodes[1].as_ref().unwrap().external()[&1].len();
    let now = sim.now;
    let b = sim.node(1);
    let bulks = b.stats().bulks_sent;
    b.on_datagram(b"garbage", 0, now);
    b.on_datagram(&[0u8; 40], 0, now);
    let mut bad_version = crate::wire::encode_datagram(&Header::default(), &[Message::Alive]);
    bad_version[4] = 7;
    b.on_datagram(&bad_version, 0, now);
    let own = crate::wire::encode_datagram(
        &Header {
            node_id: 2,
            ..Header::default()
        },
        &[Message::ResyncRequest { node: None }],
    );
    b.on_datagram(&own, 0, now);
    let m = &b.stats().malformed;
    assert_eq!(m.truncated, 1);
    assert_eq!(m.bad_magic, 1);
    assert_eq!(m.bad_version, 1);
    assert_eq!(m.own_node_id, 1);
    assert_eq!(b.stats().links[0].errors, 3);
    assert_eq!(b.external()[&1].len(), before);
    assert_eq!(
        b.stats().bulks_sent,
        bulks,
        "own ResyncRequest must not start a bulk"
    );
}

#[test]
fn a_link_with_node_ids_drops_every_other_sender_before_use() {
    let mut b = Node::new(
        SyncConfig {
            link_node_ids: vec![Some(vec![1])],
            ..cfg(2)
        },
        1,
        0,
    )
    .unwrap();
    let flow = Message::Upsert(WireFlow::from(&crate::flow::test_flows::udp(4000)));
    let from = |node_id: u32| {
        crate::wire::encode_datagram(
            &Header {
                node_id,
                ..Header::default()
            },
            std::slice::from_ref(&flow),
        )
    };
    b.on_datagram(&from(3), 0, 1);
    assert_eq!(b.stats().malformed.unexpected_node_id, 1);
    assert!(b.external().is_empty(), "node 3 must not reach a cache");
    assert!(b.peers().is_empty(), "node 3 must not become a peer");
    // The listed node is heard (the negative control).
    b.on_datagram(&from(1), 0, 2);
    assert_eq!(b.stats().malformed.unexpected_node_id, 1);
    assert_eq!(b.peers().len(), 1);
}

#[test]
fn send_errors_are_counted_apart_from_malformed_datagrams() {
    let mut a = Node::new(cfg(1), 1, 0).unwrap();
    a.note_send_error(0);
    a.note_send_error(0);
    a.on_datagram(b"garbage", 0, 1);
    let link = a.stats().links[0];
    assert_eq!((link.send_errors, link.errors), (2, 1));
}

#[test]
fn late_datagrams_of_a_previous_epoch_are_stale() {
    let mut b = Node::new(cfg(2), 1, 0).unwrap();
    let mut a_old = Node::new(cfg(1), 900, 0).unwrap();
    let now = 1;
    let mut rng = Rng(4);
    a_old.local_upsert(&flow_for(&mut rng, 0), now, true);
    let old: Vec<Transmit> = a_old.poll_transmit(now);
    for t in &old {
        b.on_datagram(&t.bytes, 0, now);
    }
    assert_eq!(b.external()[&1].len(), 1);
    let mut a_new = Node::new(cfg(1), 100, now).unwrap();
    for t in a_new.poll_transmit(now) {
        b.on_datagram(&t.bytes, 0, now);
    }
    assert_eq!(b.peers()[0].epoch, 100);
    // A reordered datagram of the old life arrives late: dropped.
    b.on_datagram(&old[old.len() - 1].bytes, 0, now);
    assert_eq!(b.stats().malformed.stale_epoch, 1);
    assert_eq!(b.peers()[0].epoch, 100);
}

#[test]
fn every_mode_is_accepted_and_alarm_timers_are_validated() {
    for mode in [Mode::Ftfw, Mode::Notrack, Mode::Alarm] {
        let c = SyncConfig {
            mode,
            ..SyncConfig::default()
        };
        assert!(Node::new(c, 1, 0).is_ok(), "{mode:?}");
    }
    let c = SyncConfig {
        window: 0,
        ..SyncConfig::default()
    };
    assert!(Node::new(c, 1, 0).is_err());
    let c = SyncConfig {
        alarm_refresh_ms: 0,
        ..alarm(1)
    };
    assert!(matches!(
        Node::new(c, 1, 0),
        Err(SyncError::InvalidConfig(_))
    ));
}

#[test]
fn startup_requests_a_resync_and_data_is_compact() {
    let mut n = Node::new(cfg(1), 42, 0).unwrap();
    let out = n.poll_transmit(0);
    assert_eq!(out.len(), 1);
    let (h, msgs) = decode_datagram(&out[0].bytes).unwrap();
    assert_eq!(
        (h.node_id, h.epoch, h.seq, h.is_reliable()),
        (1, 42, 0, false)
    );
    assert_eq!(msgs, vec![Message::ResyncRequest { node: None }]);
    // 100 changes to one flow cost one message.
    let mut rng = Rng(1);
    for _ in 0..100 {
        let f = flow_for(&mut rng, 0);
        n.local_upsert(&f, 1, true);
    }
    let out = n.poll_transmit(1);
    assert_eq!(out.len(), 1);
    let (h, msgs) = decode_datagram(&out[0].bytes).unwrap();
    assert_eq!((h.seq, h.is_reliable()), (1, true));
    assert_eq!(msgs.len(), 1);
    // Many flows fill datagrams up to max_payload.
    for slot in 0..500 {
        let f = flow_for(&mut rng, slot);
        n.local_upsert(&f, 2, true);
    }
    let out = n.poll_transmit(2);
    assert!(out.len() > 5);
    assert!(out.iter().all(|t| t.bytes.len() <= 1472 && t.link == 0));
}

#[test]
fn data_goes_on_the_lowest_link_that_is_up() {
    let two = |id| SyncConfig {
        links: 2,
        ..cfg(id)
    };
    let mut a = Node::new(two(1), 1, 0).unwrap();
    let mut b = Node::new(two(2), 1, 0).unwrap();
    // Nothing heard yet: everything goes on every link.
    let out = a.poll_transmit(0);
    assert_eq!(out.iter().map(|t| t.link).collect::<Vec<_>>(), vec![0, 1]);
    // B is heard on link 1 only: A's data now uses link 1.
    for t in b.poll_transmit(0) {
        if t.link == 1 {
            a.on_datagram(&t.bytes, 1, 1);
        }
    }
    let mut rng = Rng(2);
    a.local_upsert(&flow_for(&mut rng, 1), 2, true);
    let out = a.poll_transmit(2);
    assert!(!out.is_empty());
    assert!(out.iter().all(|t| t.link == 1));
    assert!(a.stats().links[1].up && !a.stats().links[0].up);
    assert_eq!(a.stats().links[1].recv_packets, 1);
}

#[test]
fn data_leaves_a_link_whose_interface_went_down_and_returns_later() {
    let two = |id| SyncConfig {
        links: 2,
        ..cfg(id)
    };
    let mut a = Node::new(two(1), 1, 0).unwrap();
    let mut b = Node::new(two(2), 1, 0).unwrap();
    // B is heard on both links: link 0 is preferred.
    for t in b.poll_transmit(0) {
        a.on_datagram(&t.bytes, t.link, 1);
    }
    assert_eq!(a.active_link(), Some(0));
    // Link 0's interface goes down: data moves to link 1 at once.
    a.set_link_carrier(0, false);
    assert_eq!(a.active_link(), Some(1));
    let mut rng = Rng(3);
    a.local_upsert(&flow_for(&mut rng, 1), 2, true);
    let out = a.poll_transmit(2);
    assert!(!out.is_empty() && out.iter().all(|t| t.link == 1));
    assert!(!a.stats().links[0].up && a.stats().links[1].up);
    // Back up, and heard again on it: link 0 is preferred once more.
    a.set_link_carrier(0, true);
    assert_eq!(a.active_link(), Some(1), "not before it is heard again");
    for t in b.poll_transmit(1_500) {
        if t.link == 0 {
            a.on_datagram(&t.bytes, 0, 1_500);
        }
    }
    assert_eq!(a.active_link(), Some(0));
}

/// Both nodes start a few dozen datagrams short of `end(node)` (their
/// rollover point, or u32::MAX itself: past it they roll over at once),
/// change flows through loss, duplication and reordering, then heal; every
/// view must converge.
fn churn_across_a_rollover(sim: &mut Sim, seed: u64, end: impl Fn(&Node) -> u32) {
    for i in 0..2 {
        let n = sim.node(i);
        let at = end(n) - 30 - seed as u32;
        n.start_seq_at(at);
    }
    sim.faults = Faults {
        loss: 10,
        dup: 10,
        jitter: 20,
    };
    churn(sim, &[0, 1], 400, 10, 3000, 200);
    sim.faults = Faults::default();
    sim.run_until(20_000);
    assert_all_converged(sim, seed);
}

#[test]
fn sync_continues_across_a_sequence_rollover() {
    for seed in 0..40 {
        let mut sim = Sim::new(seed, vec![cfg(1), cfg(2)]);
        churn_across_a_rollover(&mut sim, seed, |n| {
            if seed % 2 == 0 {
                n.seq_limit()
            } else {
                u32::MAX
            }
        });
        for (i, peer) in [(0, 1), (1, 0)] {
            let n = sim.nodes[i].as_ref().unwrap();
            assert_eq!(n.stats().epoch_rollovers, 1, "seed {seed}");
            assert_eq!(n.epoch(), 1001, "seed {seed}");
            let p = sim.nodes[peer].as_ref().unwrap();
            assert_eq!(p.peers()[0].epoch, 1001, "seed {seed}");
            assert!(n.next_seq() < 1000, "seed {seed}: numbered from 1 again");
        }
    }
}

#[test]
fn rollover_is_a_new_epoch_and_the_old_one_is_stale() {
    let mut a = Node::new(cfg(1), 7, 0).unwrap();
    let mut b = Node::new(cfg(2), 1, 0).unwrap();
    let last = a.seq_limit();
    a.start_seq_at(last);
    let mut rng = Rng(11);
    let deliver = |from: &mut Node, to: &mut Node, now: u64| -> Vec<Transmit> {
        let out = from.poll_transmit(now);
        for t in &out {
            to.on_datagram(&t.bytes, t.link, now);
        }
        out
    };
    deliver(&mut b, &mut a, 0);
    a.local_upsert(&flow_for(&mut rng, 0), 1, true);
    let old = deliver(&mut a, &mut b, 1);
    let (h, _) = decode_datagram(&old.last().unwrap().bytes).unwrap();
    assert_eq!((h.epoch, h.seq), (7, last));
    assert_eq!(b.peers()[0].expected_seq, last + 1);

    // The next data goes out in epoch 8 from seq 1, led by a bulk.
    a.local_upsert(&flow_for(&mut rng, 1), 2, true);
    let new = deliver(&mut a, &mut b, 2);
    let (h, msgs) = decode_datagram(&new.last().unwrap().bytes).unwrap();
    assert_eq!((h.epoch, h.seq, h.is_reliable()), (8, 1, true));
    assert!(matches!(msgs[0], Message::BulkBegin { .. }));
    assert_eq!((a.epoch(), a.backlog().1), (8, 1));
    assert_eq!(b.peers()[0].epoch, 8);
    assert_eq!(b.stats().peer_restarts, 1);
    assert_eq!(b.external()[&1].len(), 2);

    // A late copy from epoch 7 is stale: it neither applies nor flips back.
    b.on_datagram(&old.last().unwrap().bytes, 0, 3);
    assert_eq!(b.stats().malformed.stale_epoch, 1);
    assert_eq!(b.peers()[0].epoch, 8);
    // B's ack of epoch 8 frees A's resend queue; the bulk cancelled B's
    // resync request.
    deliver(&mut b, &mut a, 100);
    a.poll_transmit(101);
    assert_eq!(a.backlog(), (0, 0));
    assert_eq!(b.stats().resyncs_requested_sent, 1, "start-up only");
    assert!(b.peers()[0].acked_seq == 0 && a.peers()[0].acked_seq == 1);
}

/// A valid datagram from node 1 carrying `flows` upserts, sealed as-is.
fn datagram_with(flows: u64) -> Vec<u8> {
    let mut rng = Rng(8);
    let msgs: Vec<Message> = (0..flows)
        .map(|slot| Message::Upsert(WireFlow::from(&flow_for(&mut rng, slot))))
        .collect();
    let header = Header {
        flags: flags::RELIABLE,
        node_id: 1,
        epoch: 5,
        seq: 1,
        ..Header::default()
    };
    crate::wire::encode_datagram(&header, &msgs)
}

#[test]
fn datagrams_over_our_max_payload_are_read_and_counted() {
    let mut b = Node::new(cfg(2), 1, 0).unwrap();
    let big = datagram_with(60);
    assert!(big.len() > b.config().max_payload && big.len() < MAX_DATAGRAM);
    b.on_datagram(&big, 0, 1);
    assert_eq!(b.stats().malformed.total(), 0);
    assert_eq!(b.stats().links[0].errors, 0);
    assert_eq!(b.external()[&1].len(), 60);
    assert_eq!(b.stats().peer_wire[&1].oversized, 1);
}

#[test]
fn nodes_with_different_mtus_converge_both_ways() {
    // One node on a 9000-byte link, the other on a 576-byte one (or an
    // IPv6 first link beside an IPv4 one): neither may stall the other.
    for seed in 0..10 {
        let jumbo = SyncConfig {
            max_payload: 8972,
            ..cfg(1)
        };
        let small = SyncConfig {
            max_payload: 548,
            ..cfg(2)
        };
        let mut sim = Sim::new(seed, vec![jumbo, small]);
        sim.faults = Faults {
            loss: 5,
            ..Faults::default()
        };
        churn(&mut sim, &[0, 1], 2000, 10, 300, 1000);
        sim.faults = Faults::default();
        sim.run_until(20_000);
        assert_all_converged(&sim, seed);
        let b = sim.nodes[1].as_ref().unwrap();
        assert!(b.stats().peer_wire[&1].oversized > 0, "seed {seed}");
        assert!(b.external()[&1].len() > 50, "seed {seed}");
        let a = sim.nodes[0].as_ref().unwrap();
        assert_eq!(a.stats().peer_wire[&2].oversized, 0, "seed {seed}");
    }
}

#[test]
fn peer_wire_records_the_largest_datagram_oversized_ones_and_acks() {
    let mut b = Node::new(cfg(2), 1, 0).unwrap();
    let big = datagram_with(60);
    let small = datagram_with(10);
    b.on_datagram(&small, 0, 2);
    let w = b.stats().peer_wire[&1];
    assert_eq!(
        (w.largest_datagram, w.oversized, w.acks_nacks),
        (small.len() as u64, 0, 0)
    );
    // A datagram over our own limit is counted against it.
    b.on_datagram(&big, 0, 3);
    let w = b.stats().peer_wire[&1];
    assert_eq!((w.largest_datagram, w.oversized), (big.len() as u64, 1));
    // An FTFW pair acknowledges each other's data.
    let mut sim = scenario(3, Faults::default(), 50);
    sim.run_until(25_000);
    let a = sim.nodes[0].as_ref().unwrap().stats();
    assert!(a.peer_wire[&2].acks_nacks > 0, "{:?}", a.peer_wire);
    // A NOTRACK node sends none.
    let mut sim = Sim::new(
        4,
        vec![
            cfg(1),
            SyncConfig {
                mode: Mode::Notrack,
                ..cfg(2)
            },
        ],
    );
    churn(&mut sim, &[0, 1], 50, 10, 3000, 200);
    sim.run_until(20_000);
    let a = sim.nodes[0].as_ref().unwrap().stats();
    assert_eq!(a.peer_wire[&2].acks_nacks, 0, "{:?}", a.peer_wire);
    assert!(a.peer_wire[&2].largest_datagram > 0);
}

#[test]
fn far_ahead_datagrams_are_not_buffered() {
    let mut b = Node::new(
        SyncConfig {
            reorder_limit: 3,
            ..cfg(2)
        },
        1,
        0,
    )
    .unwrap();
    let at = |seq: u32| {
        let mut d = datagram_with(1);
        d[18..22].copy_from_slice(&seq.to_be_bytes());
        d
    };
    b.on_datagram(&at(1), 0, 1);
    b.on_datagram(&at(4), 0, 1);
    b.on_datagram(&at(6), 0, 1);
    assert_eq!(b.stats().malformed.reorder_too_far, 1);
    assert_eq!(b.stats().malformed.reorder_overflow, 0);
    assert_eq!(b.peers()[0].expected_seq, 2);
}

/// The control datagram node `id` sends first (a ResyncRequest), or at
/// `now` (a keepalive).
fn hello(id: u32, now: u64) -> Vec<u8> {
    let mut n = Node::new(cfg(id), u64::from(id), 0).unwrap();
    let first = n.poll_transmit(0);
    if now == 0 {
        return first[0].bytes.clone();
    }
    n.poll_transmit(now).remove(0).bytes
}

fn resync_requests_to(out: &[Transmit]) -> Vec<u32> {
    out.iter()
        .flat_map(|t| decode_datagram(&t.bytes).map(|d| d.1).unwrap_or_default())
        .filter_map(|m| match m {
            Message::ResyncRequest { node: Some(n) } => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn peers_are_bounded_and_dead_ones_go_quiet_then_forgotten() {
    let c = SyncConfig {
        max_peers: 2,
        ..cfg(1)
    };
    let timeout = c.peer_timeout_ms;
    let mut a = Node::new(c, 1, 0).unwrap();
    a.on_datagram(&hello(2, 0), 0, 0);
    a.on_datagram(&hello(3, 0), 0, 0);
    a.on_datagram(&hello(4, 0), 0, 0);
    assert_eq!(a.stats().malformed.too_many_peers, 1);
    assert_eq!(a.peers().len(), 2);
    assert!(!a.external().contains_key(&4));
    // Node 2 leaves a flow behind.
    let mut rng = Rng(3);
    let mut n2 = Node::new(cfg(2), 2, 0).unwrap();
    n2.local_upsert(&flow_for(&mut rng, 0), 0, true);
    for t in n2.poll_transmit(0) {
        a.on_datagram(&t.bytes, 0, 0);
    }
    assert_eq!(a.external()[&2].len(), 1);

    // Neither answers: retries while they are up, silence once they are down.
    let mut t = 0;
    let mut asked_late = Vec::new();
    let mut asked_early = 0;
    while t <= timeout * FORGET_AFTER_TIMEOUTS + 1000 {
        let out = a.poll_transmit(t);
        let asked = resync_requests_to(&out);
        if t < timeout {
            asked_early += asked.len();
        } else {
            asked_late.extend(asked);
        }
        let next = a.next_deadline().unwrap();
        assert!(next > t, "no busy loop at {t}: {next}");
        t = next;
    }
    assert!(asked_early >= 4, "{asked_early}");
    assert_eq!(asked_late, Vec::<u32>::new());
    // 3 had nothing cached: forgotten; 2's flow keeps it known.
    assert_eq!(a.stats().peers_forgotten, 1);
    let ids: Vec<u32> = a.peers().iter().map(|p| p.node_id).collect();
    assert_eq!(ids, vec![2]);
    assert!(!a.external().contains_key(&3));
    // Room for 4 now.
    a.on_datagram(&hello(4, 0), 0, t);
    assert_eq!(a.peers().len(), 2);
    assert_eq!(a.stats().malformed.too_many_peers, 1);
    // 2 is heard again: the resync request it never answered resumes.
    a.on_datagram(&hello(2, t), 0, t);
    assert_eq!(resync_requests_to(&a.poll_transmit(t)), vec![2]);
}

#[test]
fn the_epoch_before_a_rollover_is_stale_even_when_first_met_after_it() {
    let mut a = Node::new(cfg(1), 7, 0).unwrap();
    let mut b = Node::new(cfg(2), 1, 0).unwrap();
    let mut rng = Rng(12);
    // B misses A's start-up datagram and its last datagram of epoch 7.
    a.poll_transmit(0);
    a.start_seq_at(a.seq_limit());
    a.local_upsert(&flow_for(&mut rng, 0), 1, true);
    let old = a.poll_transmit(1);
    a.local_upsert(&flow_for(&mut rng, 1), 2, true);
    for t in a.poll_transmit(2) {
        b.on_datagram(&t.bytes, 0, 2);
    }
    assert_eq!(b.peers()[0].epoch, 8);
    // Epoch 7 shows up late: stale, not a restart.
    b.on_datagram(&old[0].bytes, 0, 3);
    assert_eq!(b.stats().malformed.stale_epoch, 1);
    assert_eq!(b.peers()[0].epoch, 8);
    assert_eq!(b.stats().peer_restarts, 0);
}

#[test]
fn a_switch_to_an_old_epoch_heals_once_it_falls_silent() {
    let mut b = Node::new(cfg(2), 1, 0).unwrap();
    let mut a_old = Node::new(cfg(1), 900, 0).unwrap();
    let old = a_old.poll_transmit(0);
    // B meets A's new life first, then a late datagram of the old one:
    // indistinguishable from a restart, so B switches to it.
    let mut a_new = Node::new(cfg(1), 100, 10).unwrap();
    for t in a_new.poll_transmit(10) {
        b.on_datagram(&t.bytes, 0, 10);
    }
    b.on_datagram(&old[0].bytes, 0, 11);
    assert_eq!(b.peers()[0].epoch, 900);
    // The live epoch is stale while the old one counts as alive, then taken.
    let timeout = b.config().peer_timeout_ms;
    let mut t = 11;
    while t < 11 + 2 * timeout {
        t += 1000;
        for d in a_new.poll_transmit(t) {
            b.on_datagram(&d.bytes, 0, t);
        }
    }
    assert_eq!(b.peers()[0].epoch, 100);
    assert!(b.stats().malformed.stale_epoch > 0);
    assert_eq!(b.stats().peer_restarts, 2);
}

#[test]
fn the_largest_valid_flow_fits_the_smallest_payload() {
    // No valid message may need more than MIN_PAYLOAD: the Packer would
    // send it alone, larger than the node's own limit.
    let v6 = |x: u16| IpAddr::V6(Ipv6Addr::new(0xffff, 0xffff, 0, 0, 0, 0, 0xffff, x));
    let mut f = Flow::new(Tuple {
        src: v6(1),
        dst: v6(2),
        proto: proto::SCTP,
        l4: L4::Ports {
            src: u16::MAX,
            dst: u16::MAX,
        },
    });
    f.zone = u16::MAX;
    f.status = u32::MAX;
    f.timeout = u32::MAX;
    f.mark = u32::MAX;
    f.state = ProtoState::Sctp {
        state: u8::MAX,
        vtag_orig: u32::MAX,
        vtag_reply: u32::MAX,
    };
    f.helper = Some("x".repeat(crate::wire::MAX_HELPER_LEN));
    f.labels = Some(vec![0xff; crate::wire::MAX_LABELS_LEN]);
    f.reply.src = v6(3);
    let wf = WireFlow::from(&f);
    assert!(wf.tail.has_reply(), "NAT: the reply tuple travels too");
    let msg = Message::Upsert(wf);
    let one = crate::wire::encode_datagram(&Header::default(), &[msg]);
    assert!(decode_datagram(&one).is_ok());
    assert!(one.len() <= MIN_PAYLOAD, "{} > {MIN_PAYLOAD}", one.len());
}

// ---- anti-entropy digests ---------------------------------------------------

/// Flows of `from` that `to` lacks or holds in another state, and flows `to`
/// holds that `from` has not.
fn view_diff(sim: &Sim, from: usize, to: usize) -> (usize, usize, usize) {
    let a = sim.nodes[from].as_ref().unwrap();
    let b = sim.nodes[to].as_ref().unwrap();
    let empty = FlowCache::new();
    let got = b.external().get(&sim.ids[from]).unwrap_or(&empty);
    let want = a.internal();
    let missing = want.keys().filter(|k| !got.contains(k)).count();
    let extra = got.keys().filter(|k| !want.contains(k)).count();
    let differ = want
        .flows()
        .filter(|f| got.flow(&f.key()).is_some_and(|g| g != *f))
        .count();
    (missing, extra, differ)
}

#[test]
fn digest_repairs_a_damaged_external_view_without_a_manual_resync() {
    for mode in [Mode::Ftfw, Mode::Notrack] {
        let c = |id| SyncConfig { mode, ..cfg(id) };
        let mut sim = Sim::new(21, vec![c(1), c(2)]);
        churn(&mut sim, &[0], 200, 10, 1000, 100);
        sim.run_until(3000);
        assert_all_converged(&sim, 21);
        let interval = sim.nodes[0].as_ref().unwrap().config().digest_interval_ms;
        let keys: Vec<FlowKey> = sim.nodes[0].as_ref().unwrap().internal().keys().collect();
        assert!(keys.len() > 10);
        let requests = sim.nodes[1].as_ref().unwrap().stats().range_requests_sent;

        // 1. A flow removed behind the daemon's back.
        assert!(sim.node(1).remove_external(1, &keys[0]));
        assert_eq!(view_diff(&sim, 0, 1), (1, 0, 0));
        let t = sim.now;
        sim.run_until(t + interval + 1000);
        assert_all_converged(&sim, 21);
        let b = sim.nodes[1].as_ref().unwrap().stats();
        assert_eq!(b.digest_mismatches, 1, "{mode:?}");
        // Only the damaged range is asked for and re-sent, not the table.
        assert!(b.range_requests_sent > requests, "{mode:?}");
        assert_eq!(b.ranges_repaired, 1, "{mode:?}");
        assert_eq!(b.bulks_received, 1, "{mode:?}: the start-up bulk only");

        // 2. A bogus flow, and 3. a flow in another state.
        let now = sim.now;
        let mut rng = Rng(5);
        let bogus = flow_for(&mut rng, 100_000);
        let mut changed = sim.nodes[0]
            .as_ref()
            .unwrap()
            .internal()
            .get(&keys[1])
            .unwrap()
            .flow
            .clone();
        changed.mark ^= 0x40;
        let ext = sim.node(1).external_mut(1).unwrap();
        ext.upsert(bogus, now);
        ext.upsert(changed, now);
        assert_eq!(view_diff(&sim, 0, 1), (0, 1, 1));
        sim.run_until(now + interval + 1000);
        assert_all_converged(&sim, 21);
        let b = sim.nodes[1].as_ref().unwrap().stats();
        assert!(b.digest_mismatches >= 2, "{mode:?}");
        assert!(b.range_swept > 0, "{mode:?}: the bogus flow is swept");
        assert_eq!(b.ranges_unproven, 0, "{mode:?}");
    }
}

#[test]
fn digests_go_out_at_the_interval_and_matching_ones_do_nothing() {
    let mut sim = Sim::new(8, vec![cfg(1), cfg(2)]);
    churn(&mut sim, &[0, 1], 200, 10, 1000, 100);
    sim.run_until(3000);
    assert_all_converged(&sim, 8);
    let before: Vec<SyncStats> = (0..2)
        .map(|i| sim.nodes[i].as_ref().unwrap().stats().clone())
        .collect();
    let interval = sim.nodes[0].as_ref().unwrap().config().digest_interval_ms;
    let t = sim.now;
    sim.run_until(t + 10 * interval);
    for (i, was) in before.iter().enumerate() {
        let now = sim.nodes[i].as_ref().unwrap().stats();
        let sent = now.digests_sent - was.digests_sent;
        assert!((9..=11).contains(&sent), "node {i}: {sent} digests");
        let other = sim.nodes[1 - i].as_ref().unwrap().stats();
        let received = other.digests_received - before[1 - i].digests_received;
        assert_eq!(received, sent, "no loss: every digest is applied");
        assert_eq!(now.digest_mismatches, 0);
        assert_eq!(now.bulks_sent, was.bulks_sent);
        assert_eq!(now.resyncs_requested_sent, was.resyncs_requested_sent);
        assert_eq!(now.retransmits, 0);
    }
    assert_all_converged(&sim, 8);
    // Off means off.
    let mut quiet = Sim::new(
        8,
        vec![
            SyncConfig {
                digest_interval_ms: 0,
                ..cfg(1)
            },
            cfg(2),
        ],
    );
    quiet.run_until(30_000);
    assert_eq!(quiet.nodes[0].as_ref().unwrap().stats().digests_sent, 0);
    assert!(quiet.nodes[1].as_ref().unwrap().stats().digests_sent > 0);
}

fn digests_in(out: &[Transmit]) -> usize {
    out.iter()
        .flat_map(|t| decode_datagram(&t.bytes).map(|d| d.1).unwrap_or_default())
        .filter(|m| matches!(m, Message::Digest { .. }))
        .count()
}

#[test]
fn a_digest_waits_for_an_empty_queue() {
    let mut a = Node::new(
        SyncConfig {
            window: 1,
            ..cfg(1)
        },
        1,
        0,
    )
    .unwrap();
    a.on_datagram(&hello(2, 0), 0, 0);
    let interval = a.config().digest_interval_ms;
    let mut rng = Rng(3);
    a.local_upsert(&flow_for(&mut rng, 0), 1, true);
    assert_eq!(digests_in(&a.poll_transmit(1)), 0);
    // The window (1) is full and never acked: the next change waits.
    a.local_upsert(&flow_for(&mut rng, 1), 2, true);
    let mut t = 2;
    let alive = crate::wire::encode_datagram(
        &Header {
            node_id: 2,
            epoch: 2,
            ..Header::default()
        },
        &[Message::Alive],
    );
    while t < 2 * interval {
        // Keep the peer alive; it never acks.
        a.on_datagram(&alive, 0, t);
        assert_eq!(digests_in(&a.poll_transmit(t)), 0, "at {t}");
        t += 500;
    }
    assert_eq!(a.stats().digests_sent, 0);
    assert_eq!(a.backlog(), (1, 1));
}

// ---- NOTRACK ------------------------------------------------------------------

fn notrack(id: u32) -> SyncConfig {
    SyncConfig {
        mode: Mode::Notrack,
        ..cfg(id)
    }
}

fn assert_no_ftfw_traffic(sim: &Sim, seed: u64) {
    for n in sim.nodes.iter().flatten() {
        let s = n.stats();
        assert_eq!(
            (s.acks_sent, s.nacks_sent, s.retransmits, s.resumes_sent),
            (0, 0, 0, 0),
            "seed {seed}"
        );
        assert_eq!(n.backlog().1, 0, "no resend queue");
    }
}

#[test]
fn notrack_converges_without_faults() {
    for seed in 0..60 {
        let mut sim = Sim::new(seed, vec![notrack(1), notrack(2)]);
        churn(&mut sim, &[0, 1], 300, 10, 3000, 200);
        sim.run_until(20_000);
        assert_all_converged(&sim, seed);
        assert_no_ftfw_traffic(&sim, seed);
        for n in sim.nodes.iter().flatten() {
            assert_eq!(n.stats().lost, 0, "seed {seed}");
            assert_eq!(n.stats().digest_mismatches, 0, "seed {seed}");
        }
    }
}

#[test]
fn notrack_loses_under_loss_and_converges_after_request_resync() {
    let mut diverged = 0;
    let mut lost = 0;
    for seed in 0..60 {
        let c = |id| SyncConfig {
            digest_interval_ms: 0,
            ..notrack(id)
        };
        let mut sim = Sim::new(seed, vec![c(1), c(2)]);
        sim.faults.loss = 20;
        churn(&mut sim, &[0, 1], 300, 10, 3000, 200);
        sim.faults = Faults::default();
        sim.run_until(10_000);
        let broken = (0..2).any(|i| sim.converged(i, 1 - i).is_err());
        diverged += u64::from(broken);
        lost += sim
            .nodes
            .iter()
            .flatten()
            .map(|n| n.stats().lost)
            .sum::<u64>();
        // Nothing repairs it but a resync.
        sim.run_until(20_000);
        assert_eq!(
            broken,
            (0..2).any(|i| sim.converged(i, 1 - i).is_err()),
            "seed {seed}"
        );
        let now = sim.now;
        sim.node(0).request_resync(now);
        sim.node(1).request_resync(now);
        sim.run_until(now + 3000);
        assert_all_converged(&sim, seed);
        assert_no_ftfw_traffic(&sim, seed);
    }
    assert!(diverged > 10, "20% loss must break many runs: {diverged}");
    assert!(lost > 0);
}

#[test]
fn notrack_digests_heal_loss_without_an_operator() {
    let mut mismatches = 0;
    for seed in 0..40 {
        let mut sim = Sim::new(seed, vec![notrack(1), notrack(2)]);
        sim.states_only = true;
        sim.faults.loss = 20;
        churn(&mut sim, &[0, 1], 300, 10, 3000, 200);
        sim.faults = Faults::default();
        sim.run_until(20_000);
        assert_all_converged(&sim, seed);
        assert_no_ftfw_traffic(&sim, seed);
        mismatches += sim.nodes[1].as_ref().unwrap().stats().digest_mismatches;
    }
    assert!(mismatches > 0);
}

#[test]
fn notrack_restarted_receiver_pulls_a_bulk() {
    for seed in 0..30 {
        let c = |id| SyncConfig {
            digest_interval_ms: 0,
            ..notrack(id)
        };
        let mut sim = Sim::new(seed, vec![c(1), c(2)]);
        churn(&mut sim, &[0], 200, 10, 1500, 150);
        sim.nodes[1] = Some(Node::new(c(2), 2000, sim.now).unwrap());
        sim.run_until(5000);
        assert_all_converged(&sim, seed);
        assert!(sim.nodes[0].as_ref().unwrap().stats().bulks_sent >= 1);
    }
}

// ---- ALARM ---------------------------------------------------------------------

const REFRESH: u64 = 1000;
const EXPIRE: u64 = 3200;

fn alarm(id: u32) -> SyncConfig {
    SyncConfig {
        mode: Mode::Alarm,
        alarm_refresh_ms: REFRESH,
        alarm_timeout_ms: EXPIRE,
        ..cfg(id)
    }
}

/// Nothing but data and keepalives went out.
fn assert_no_control_but_keepalives(sim: &Sim, seed: u64) {
    for n in sim.nodes.iter().flatten() {
        let s = n.stats();
        assert_eq!(
            (
                s.acks_sent,
                s.nacks_sent,
                s.resyncs_requested_sent,
                s.resumes_sent,
                s.bulks_sent,
                s.digests_sent,
                s.retransmits
            ),
            (0, 0, 0, 0, 0, 0, 0),
            "seed {seed}"
        );
    }
}

#[test]
fn alarm_converges_through_20_percent_loss_by_refreshing() {
    let slot = EXPIRE.div_ceil(u64::from(alarm::EXPIRY_SLOTS));
    let (mut lost, mut expired) = (0, 0);
    for seed in 0..40 {
        let mut sim = Sim::new(seed, vec![alarm(1), alarm(2)]);
        sim.faults.loss = 20;
        churn(&mut sim, &[0, 1], 300, 10, 3000, 200);
        // The loss goes on for two more refresh periods.
        sim.run_until(3000 + 2 * REFRESH);
        sim.faults = Faults::default();
        let quiet = sim.now;
        // One refresh period later every live flow is there, as it is.
        sim.run_until(quiet + REFRESH + 100);
        for (a, b) in [(0, 1), (1, 0)] {
            let (missing, _, differ) = view_diff(&sim, a, b);
            assert_eq!((missing, differ), (0, 0), "seed {seed}: {a} -> {b}");
        }
        // Deletes that were lost expire.
        sim.run_until(quiet + EXPIRE + 2 * slot + 100);
        assert_all_converged(&sim, seed);
        assert_no_control_but_keepalives(&sim, seed);
        for n in sim.nodes.iter().flatten() {
            assert!(n.stats().alarm_refreshes > 0);
            lost += n.stats().lost;
            expired += n.stats().alarm_expired;
        }
    }
    assert!(lost > 0 && expired > 0, "lost {lost}, expired {expired}");
}

#[test]
fn alarm_refreshes_every_flow_within_the_period() {
    let mut sim = Sim::new(2, vec![alarm(1), alarm(2)]);
    churn(&mut sim, &[0], 200, 10, 500, 100);
    sim.run_until(1000);
    let flows = sim.nodes[0].as_ref().unwrap().internal().len() as u64;
    let before = sim.nodes[0].as_ref().unwrap().stats().alarm_refreshes;
    sim.run_until(1000 + 10 * REFRESH);
    let refreshes = sim.nodes[0].as_ref().unwrap().stats().alarm_refreshes - before;
    // A lap is 90% of the period: 10 periods make 11 laps or so.
    assert!(refreshes >= 10 * flows, "{refreshes} < 10 x {flows}");
    assert!(refreshes <= 12 * flows, "{refreshes} > 12 x {flows}");
}

#[test]
fn alarm_expires_the_flows_of_a_sender_that_went_silent() {
    let slot = EXPIRE.div_ceil(u64::from(alarm::EXPIRY_SLOTS));
    let mut sim = Sim::new(3, vec![alarm(1), alarm(2)]);
    churn(&mut sim, &[0], 100, 10, 1000, 100);
    sim.run_until(3000);
    assert_all_converged(&sim, 3);
    let n = sim.nodes[1].as_ref().unwrap().external()[&1].len() as u64;
    assert!(n > 10);
    sim.cut.insert((0, 1));
    sim.cut.insert((1, 0));
    let cut = sim.now;
    // The last refreshes before the cut are not a lap old: not expired yet.
    sim.run_until(cut + EXPIRE - 300);
    assert!(!sim.nodes[1].as_ref().unwrap().external()[&1].is_empty());
    sim.run_until(cut + EXPIRE + 2 * slot + 50);
    let b = sim.nodes[1].as_ref().unwrap();
    assert!(b.external()[&1].is_empty());
    assert_eq!(b.stats().alarm_expired, n);
    // Back on the network: the refresh brings everything back.
    sim.cut.clear();
    let t = sim.now;
    sim.run_until(t + REFRESH + 100);
    assert_all_converged(&sim, 3);
    assert_no_control_but_keepalives(&sim, 3);
}

#[test]
fn alarm_ignores_resync_and_bulk_requests() {
    let mut a = Node::new(alarm(1), 1, 0).unwrap();
    assert!(a.poll_transmit(0).is_empty(), "no start-up resync request");
    a.on_datagram(&hello(2, 0), 0, 1);
    let mut rng = Rng(1);
    a.local_upsert(&flow_for(&mut rng, 0), 1, true);
    a.request_resync(1);
    a.send_bulk(1);
    let msgs: Vec<Message> = a
        .poll_transmit(1)
        .iter()
        .flat_map(|t| decode_datagram(&t.bytes).map(|d| d.1).unwrap_or_default())
        .collect();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert!(matches!(msgs[0], Message::Upsert(_)));
    assert_eq!(a.stats().bulks_sent, 0);
    assert_eq!(a.stats().resyncs_requested_received, 0);
}

#[test]
fn recorded_changes_mirror_the_external_cache() {
    let mut a = Node::new(cfg(1), 1, 0).unwrap();
    let mut b = Node::new(
        SyncConfig {
            record_applied: true,
            ..cfg(2)
        },
        2,
        0,
    )
    .unwrap();
    let pump = |a: &mut Node, b: &mut Node, t: u64| {
        for d in a.poll_transmit(t) {
            b.on_datagram(&d.bytes, d.link, t);
        }
        for d in b.poll_transmit(t) {
            a.on_datagram(&d.bytes, d.link, t);
        }
    };
    pump(&mut a, &mut b, 0);
    let mut rng = Rng(7);
    let f = flow_for(&mut rng, 1);
    a.local_upsert(&f, 10, true);
    pump(&mut a, &mut b, 10);
    let applied = b.take_applied();
    assert!(
        applied.contains(&Applied::Created(f.clone())),
        "{applied:?}"
    );
    assert!(b.take_applied().is_empty(), "taken once");
    a.local_delete(&f.key(), 20, true);
    pump(&mut a, &mut b, 20);
    assert_eq!(b.take_applied(), vec![Applied::Delete(f.key())]);
    // Without the switch nothing is kept.
    assert!(a.take_applied().is_empty());
}

#[test]
fn batching_fills_datagrams_and_waits_no_longer_than_the_delay() {
    let batching = |id| SyncConfig {
        batch_delay_ms: 5,
        ..cfg(id)
    };
    let mut a = Node::new(batching(1), 1, 0).unwrap();
    let _ = a.poll_transmit(0);
    let mut rng = Rng(11);
    // One flow: it waits for company, but no longer than the delay.
    a.local_upsert(&flow_for(&mut rng, 1), 100, true);
    let sent = |out: &[Transmit]| out.len();
    assert_eq!(sent(&a.poll_transmit(100)), 0, "held for batching");
    assert_eq!(a.next_deadline(), Some(105));
    assert_eq!(sent(&a.poll_transmit(104)), 0);
    assert_eq!(
        sent(&a.poll_transmit(105)),
        1,
        "sent once the delay is over"
    );
    // A datagram's worth arrives: it leaves at once, full.
    for i in 0..200 {
        a.local_upsert(&flow_for(&mut rng, i), 200, true);
    }
    let out = a.poll_transmit(200);
    assert!(!out.is_empty(), "a full queue is not held");
    assert!(
        out.iter()
            .all(|t| t.bytes.len() > 1000 || t.bytes.len() < 100),
        "data datagrams are full"
    );
}

/// Rounds of creates and deletes on node 0 while node 1 is cut off; the
/// queue's length after each round.
fn churn_alone(alone_queue_max: usize) -> (Sim, Vec<usize>) {
    let a = SyncConfig {
        alone_queue_max,
        window: 64,
        ..cfg(1)
    };
    let mut sim = Sim::new(21, vec![a, cfg(2)]);
    sim.run_until(2_000);
    sim.cut.extend([(0, 1), (1, 0)]);
    // Past peer_timeout_ms: node 1 is down for node 0.
    sim.run_until(8_000);
    let mut lengths = Vec::new();
    for round in 0..6u64 {
        let flows: Vec<Flow> = (0..2_000)
            .map(|i| flow_for(&mut sim.rng, round * 2_000 + i))
            .collect();
        let now = sim.now;
        for f in &flows {
            sim.node(0).local_upsert(f, now, true);
        }
        sim.run_until(now + 500);
        let now = sim.now;
        // Every round but the last ends with its flows deleted.
        if round < 5 {
            for f in &flows {
                sim.node(0).local_delete(&f.key(), now, true);
            }
        }
        sim.run_until(now + 500);
        lengths.push(sim.nodes[0].as_ref().unwrap().backlog().0);
    }
    (sim, lengths)
}

#[test]
fn a_node_alone_keeps_a_bounded_backlog_and_bulks_when_a_peer_returns() {
    let (mut sim, lengths) = churn_alone(1_000);
    let a = sim.nodes[0].as_ref().unwrap();
    assert!(lengths.iter().all(|&l| l <= 1_000), "{lengths:?}");
    assert!(a.backlog().1 <= a.config().window);
    assert!(a.stats().backlog_drops > 0);
    // The partition heals: node 1 gets node 0's table by a bulk.
    let bulks = a.stats().bulks_sent;
    sim.cut.clear();
    let now = sim.now;
    sim.run_until(now + 20_000);
    assert!(sim.nodes[0].as_ref().unwrap().stats().bulks_sent > bulks);
    assert_eq!(sim.nodes[0].as_ref().unwrap().internal().len(), 2_000);
    assert_all_converged(&sim, 21);
}

/// Negative control for the test above: without the bound, the deletes
/// for a peer nobody hears pile up round after round.
#[test]
fn without_the_bound_the_backlog_of_a_node_alone_grows() {
    let (_, lengths) = churn_alone(usize::MAX);
    assert!(
        lengths.windows(2).all(|w| w[1] > w[0]) && lengths[5] > 10_000,
        "{lengths:?}"
    );
}

#[test]
fn a_reread_sends_flows_whose_timeout_traffic_refreshed() {
    let mut sim = Sim::new(4, vec![cfg(1), cfg(2)]);
    let mut idle = flow_for(&mut sim.rng, 0);
    idle.timeout = 100;
    let mut live = flow_for(&mut sim.rng, 5);
    live.timeout = 100;
    sim.node(0).local_upsert(&idle, 0, true);
    sim.node(0).local_upsert(&live, 0, true);
    sim.run_until(2_000);
    assert_all_converged(&sim, 4);
    // 30 s later the idle flow's timeout has counted down; traffic put the
    // live one's back to (nearly) 100 s.
    sim.run_until(30_000);
    idle.timeout = 70;
    live.timeout = 99;
    let now = sim.now;
    let r = sim.node(0).reconcile_internal(
        vec![idle.clone(), live.clone()],
        now,
        Replicate::Differences,
    );
    assert_eq!((r.unchanged, r.refreshed, r.changed), (1, 1, 0), "{r:?}");
    assert_eq!(sim.nodes[0].as_ref().unwrap().backlog().0, 1);
    sim.run_until(now + 2_000);
    let b = sim.nodes[1].as_ref().unwrap();
    let seen = b.external()[&1].get(&live.key()).unwrap();
    assert_eq!(seen.flow.timeout, 99);
    assert!(seen.updated_ms >= 30_000, "{seen:?}");
}

/// A local flush (the one `-t` schedules on a demoted node) is not
/// replicated, not even by anti-entropy: the standby keeps the flows it
/// may have to take over until `-R` makes the node's table the reference.
#[test]
fn a_local_flush_pauses_digests_until_the_table_is_the_reference_again() {
    let mut sim = Sim::new(8, vec![cfg(1), cfg(2)]);
    churn(&mut sim, &[0], 200, 10, 1_000, 100);
    sim.run_until(3_000);
    assert_all_converged(&sim, 8);
    let held = sim.nodes[1].as_ref().unwrap().external()[&1].len();
    assert!(held > 0);
    sim.node(0).flush_internal();
    let sent = sim.nodes[0].as_ref().unwrap().stats().digests_sent;
    sim.run_until(30_000);
    let a = sim.nodes[0].as_ref().unwrap();
    assert!(a.digests_paused());
    assert_eq!(a.stats().digests_sent, sent, "a digest went out");
    assert_eq!(sim.nodes[1].as_ref().unwrap().external()[&1].len(), held);
    // -R: the (empty) kernel table is ours again; peers follow it.
    let now = sim.now;
    sim.node(0)
        .reconcile_internal(Vec::new(), now, Replicate::Nothing);
    sim.run_until(now + 20_000);
    assert!(!sim.nodes[0].as_ref().unwrap().digests_paused());
    assert!(sim.nodes[1].as_ref().unwrap().external()[&1].is_empty());
}

/// A busy flow reads the same timeout at every table re-read: the peer's
/// refresh then carries the same bytes, and must still move the stamp
/// the commit order uses (a bulk, which repeats every flow, must not).
#[test]
fn a_refresh_with_the_same_bytes_moves_the_stamp_but_a_bulk_does_not() {
    let mut sim = Sim::new(6, vec![cfg(1), cfg(2)]);
    let mut live = flow_for(&mut sim.rng, 0);
    live.timeout = 431_999;
    let mut idle = flow_for(&mut sim.rng, 5);
    idle.timeout = 3_600;
    sim.node(0).local_upsert(&live, 0, true);
    sim.node(0).local_upsert(&idle, 0, true);
    sim.run_until(2_000);
    assert_all_converged(&sim, 6);
    // 60 s on, the re-read finds the busy flow at 431,999 s again.
    sim.run_until(60_000);
    let now = sim.now;
    idle.timeout = 3_540;
    let r = sim.node(0).reconcile_internal(
        vec![live.clone(), idle.clone()],
        now,
        Replicate::Differences,
    );
    assert_eq!(r.refreshed, 1, "{r:?}");
    sim.run_until(now + 2_000);
    let stamp = |sim: &Sim, f: &Flow| {
        sim.nodes[1].as_ref().unwrap().external()[&1]
            .get(&f.key())
            .unwrap()
            .updated_ms
    };
    assert!(stamp(&sim, &live) >= 60_000, "{}", stamp(&sim, &live));
    assert!(stamp(&sim, &idle) < 2_000);
    // A bulk repeats both as they are: neither stamp moves.
    let (live_at, idle_at) = (stamp(&sim, &live), stamp(&sim, &idle));
    sim.run_until(90_000);
    let now = sim.now;
    sim.node(0).send_bulk(now);
    sim.run_until(now + 2_000);
    assert_eq!(stamp(&sim, &live), live_at);
    assert_eq!(stamp(&sim, &idle), idle_at);
}

// ---- sweeps under loss ------------------------------------------------------

/// Keys `from`'s table and `to`'s view of it share.
fn shared_keys(sim: &Sim, from: usize, to: usize) -> HashSet<FlowKey> {
    let a = sim.nodes[from].as_ref().unwrap();
    let b = sim.nodes[to].as_ref().unwrap();
    let Some(view) = b.external().get(&sim.ids[from]) else {
        return HashSet::new();
    };
    view.keys().filter(|k| a.internal().contains(k)).collect()
}

/// Through 20% loss and reordering both ways, full bulks (asked for with
/// `-n`) and range repairs (of a view damaged with bogus flows) sweep the
/// flows the sender no longer has, and never one it still has: checked
/// after every step, in NOTRACK (no resend: its bulks arrive incomplete)
/// and FTFW.
#[test]
fn lossy_bulks_and_range_repairs_never_sweep_a_flow_the_sender_has() {
    for mode in [Mode::Notrack, Mode::Ftfw] {
        for seed in 0..4 {
            let c = |id| SyncConfig { mode, ..cfg(id) };
            let mut sim = Sim::new(seed, vec![c(1), c(2)]);
            // Small tables and large ones (ranges of several datagrams).
            let slots = if seed % 2 == 0 { 2_000 } else { 30_000 };
            churn(&mut sim, &[0], slots as usize, 10, 2_000, slots);
            sim.run_until(4_000);
            assert_all_converged(&sim, seed);
            sim.faults = Faults {
                loss: 20,
                dup: 0,
                jitter: 5,
            };
            // Bogus flows in B's view of A make ranges differ.
            let mut rng = Rng(seed + 99);
            for slot in 0..40 {
                let bogus = flow_for(&mut rng, 50_000 + slot);
                let now = sim.now;
                sim.node(1).external_mut(1).unwrap().upsert(bogus, now);
            }
            let mut asked = false;
            let mut held = shared_keys(&sim, 0, 1);
            let start = sim.now;
            while sim.now < start + 30_000 {
                if !asked && sim.now >= start + 500 {
                    let now = sim.now;
                    sim.node(1).request_resync(now);
                    asked = true;
                }
                // A keeps changing a little (deletes included).
                if sim.rng.chance(2) {
                    let slot = sim.rng.below(slots);
                    let now = sim.now;
                    let f = flow_for(&mut sim.rng, slot);
                    let key = f.key();
                    if sim.node(0).internal().contains(&key) && sim.rng.chance(50) {
                        sim.node(0).local_delete(&key, now, true);
                    } else {
                        sim.node(0).local_upsert(&f, now, true);
                    }
                }
                sim.step();
                let now_held = shared_keys(&sim, 0, 1);
                let a = sim.nodes[0].as_ref().unwrap();
                for k in &held {
                    assert!(
                        !a.internal().contains(k) || now_held.contains(k),
                        "{mode:?} seed {seed}: B dropped {k:?}, which A still has, at {}",
                        sim.now
                    );
                }
                held = now_held;
            }
            sim.faults = Faults::default();
            sim.run_until(sim.now + 30_000);
            sim.states_only = mode == Mode::Notrack;
            assert_all_converged(&sim, seed);
            let b = sim.nodes[1].as_ref().unwrap().stats();
            assert!(
                b.range_swept + b.bulk_swept > 0,
                "{mode:?} seed {seed}: the bogus flows were swept by a proven repair"
            );
            if mode == Mode::Notrack {
                assert!(b.lost > 0 && b.bulks_received > 1, "{mode:?}: {b:?}");
            }
        }
    }
}

// ---- limits on what peers can grow -----------------------------------------

#[test]
fn a_full_peer_table_refuses_the_17th_node_id_and_serves_the_others() {
    let mut a = Node::new(cfg(1), 1, 0).unwrap();
    assert_eq!(a.config().max_peers, 16, "the default");
    for id in 2..=17 {
        a.on_datagram(&hello(id, 0), 0, 0);
    }
    assert_eq!(a.peers().len(), 16);
    a.on_datagram(&hello(18, 0), 0, 0);
    assert_eq!(a.stats().malformed.too_many_peers, 1);
    assert_eq!(a.stats().malformed.total(), 1, "nothing else refused");
    assert_eq!(a.peers().len(), 16);
    assert!(!a.external().contains_key(&18));
    // A known peer's data still lands.
    let mut rng = Rng(5);
    let mut n2 = Node::new(cfg(2), 2, 0).unwrap();
    n2.local_upsert(&flow_for(&mut rng, 0), 0, true);
    for t in n2.poll_transmit(0) {
        a.on_datagram(&t.bytes, 0, 0);
    }
    assert_eq!(a.external()[&2].len(), 1);
    assert_eq!(a.stats().malformed.total(), 1);
}

/// Does every flow `to` holds of `from` equal `from`'s own?
fn held_flows_are_current(sim: &Sim, from: usize, to: usize) -> Result<usize, String> {
    let a = sim.nodes[from].as_ref().unwrap();
    let b = sim.nodes[to].as_ref().unwrap();
    let Some(view) = b.external().get(&sim.ids[from]) else {
        return Ok(0);
    };
    for f in view.flows() {
        if a.internal().flow(&f.key()).as_ref() != Some(&f) {
            return Err(format!("{:?} is stale or gone at the sender", f.key()));
        }
    }
    Ok(view.len())
}

#[test]
fn a_full_external_cache_refuses_new_flows_and_keeps_the_held_ones_current() {
    for mode in [Mode::Ftfw, Mode::Notrack] {
        let b = SyncConfig {
            mode,
            max_flows_per_peer: 50,
            ..cfg(2)
        };
        let mut sim = Sim::new(31, vec![SyncConfig { mode, ..cfg(1) }, b]);
        sim.run_until(1_000);
        let flows: Vec<Flow> = (0..100).map(|s| flow_for(&mut sim.rng, s)).collect();
        let now = sim.now;
        for f in &flows {
            sim.node(0).local_upsert(f, now, true);
        }
        sim.run_until(now + 2_000);
        let refused = sim.nodes[1].as_ref().unwrap().stats().malformed;
        assert_eq!(held_flows_are_current(&sim, 0, 1), Ok(50), "{mode:?}");
        assert!(refused.external_cache_full >= 50, "{mode:?}: {refused:?}");
        assert_eq!(
            refused.total(),
            refused.external_cache_full,
            "{mode:?}: nothing else refused"
        );
        // Every flow changes: those held follow.
        let held: Vec<FlowKey> = sim.nodes[1].as_ref().unwrap().external()[&1]
            .keys()
            .collect();
        let now = sim.now;
        for f in &flows {
            let mut changed = f.clone();
            changed.mark ^= 0x100;
            sim.node(0).local_upsert(&changed, now, true);
        }
        sim.run_until(now + 2_000);
        assert_eq!(held_flows_are_current(&sim, 0, 1), Ok(50), "{mode:?}");
        // Deletes apply; the room they make is filled again by the repairs
        // the digests ask for, never past the bound.
        let now = sim.now;
        for k in held.iter().take(30) {
            sim.node(0).local_delete(k, now, true);
        }
        sim.run_until(now + 30_000);
        let b = sim.nodes[1].as_ref().unwrap();
        assert!(held.iter().take(30).all(|k| !b.external()[&1].contains(k)));
        assert_eq!(held_flows_are_current(&sim, 0, 1), Ok(50), "{mode:?}");
        assert_eq!(
            b.stats().malformed.total(),
            b.stats().malformed.external_cache_full
        );
    }
}

#[test]
fn a_reorder_buffer_over_its_bytes_drops_and_the_nacks_heal_it() {
    let tight = SyncConfig {
        // Room for eight messages: most reordered datagrams do not fit
        // beside another.
        reorder_max_bytes: 8 * std::mem::size_of::<Message>(),
        ..cfg(2)
    };
    let mut sim = Sim::new(9, vec![cfg(1), tight]);
    sim.faults = Faults {
        loss: 0,
        dup: 0,
        jitter: 30,
    };
    churn(&mut sim, &[0], 3_000, 10, 3_000, 2_000);
    sim.faults = Faults::default();
    sim.run_until(20_000);
    assert_all_converged(&sim, 9);
    let s = sim.nodes[1].as_ref().unwrap().stats();
    assert!(s.malformed.reorder_overflow > 0, "{s:?}");
    assert_eq!(
        s.malformed.total(),
        s.malformed.reorder_overflow + s.malformed.reorder_too_far,
        "{s:?}"
    );
}

#[test]
fn a_send_queue_past_its_bound_is_dropped_and_replaced_by_a_bulk() {
    for mode in [Mode::Ftfw, Mode::Notrack, Mode::Alarm] {
        let a = SyncConfig {
            mode,
            send_queue_max: 1_000,
            window: 4,
            ..cfg(1)
        };
        let mut sim = Sim::new(23, vec![a, SyncConfig { mode, ..cfg(2) }]);
        sim.run_until(2_000);
        for round in 0..4u64 {
            // Creates and deletes between two polls: more keys than the
            // bound, the peer alive all along.
            let flows: Vec<Flow> = (0..2_000)
                .map(|i| flow_for(&mut sim.rng, round * 2_000 + i))
                .collect();
            let now = sim.now;
            for f in &flows {
                sim.node(0).local_upsert(f, now, true);
            }
            for f in flows.iter().take(1_500) {
                sim.node(0).local_delete(&f.key(), now, true);
            }
            sim.step();
            let a = sim.nodes[0].as_ref().unwrap();
            assert!(a.tx.queue.keys() <= 1_000, "{mode:?} round {round}");
        }
        let a = sim.nodes[0].as_ref().unwrap();
        assert_eq!(a.stats().send_queue_drops, 4, "{mode:?}");
        assert!(a.stats().backlog_dropped_items >= 4 * 2_500, "{mode:?}");
        let now = sim.now;
        // ALARM heals by its refresh and expiry, the others by the bulk.
        let settle = if mode == Mode::Alarm {
            a.config().alarm_timeout_ms + a.config().alarm_refresh_ms
        } else {
            20_000
        };
        sim.run_until(now + settle);
        assert_eq!(sim.nodes[0].as_ref().unwrap().internal().len(), 4 * 500);
        assert_all_converged(&sim, 23);
        if mode != Mode::Alarm {
            assert!(sim.nodes[0].as_ref().unwrap().stats().bulks_sent >= 4);
        }
    }
}

mod auth;
mod expect_sync;
mod peer_figures;

/// What the kernel tracks, the peer takes. An IPv6 packet whose next
/// header is 1 (ICMP, not ICMPv6) gets a conntrack entry with an ICMP
/// tuple, and so does ICMPv6 over IPv4; anyone can send one through the
/// firewall. Such a flow must reach the peer like any other, and above all
/// must not make it refuse the datagram: FTFW would resend the same bytes
/// for ever, and every later change of the node would wait behind them.
#[test]
fn icmp_tuples_of_the_other_family_travel_and_stall_nothing() {
    use crate::flow::{proto, Tuple, L4};
    let mut sim = Sim::new(6, vec![cfg(1), cfg(2)]);
    sim.run_until(1000);
    let icmp = |src: &str, dst: &str, proto: u8| {
        Flow::new(Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            l4: L4::Icmp {
                kind: 8,
                code: 0,
                id: 7,
            },
        })
    };
    let odd = [
        icmp("2001:db8::1", "2001:db8::2", proto::ICMP),
        icmp("198.18.0.1", "198.18.0.2", proto::ICMPV6),
    ];
    let now = sim.now;
    for f in &odd {
        sim.node(0).local_upsert(f, now, true);
    }
    let mut rng = Rng(11);
    let after: Vec<Flow> = (0..50).map(|slot| flow_for(&mut rng, slot)).collect();
    for f in &after {
        sim.node(0).local_upsert(f, now + 1, true);
    }
    sim.run_until(now + 2_000);
    let b = sim.nodes[1].as_ref().unwrap();
    let view = b.external().get(&1).expect("B's view of A");
    for f in after.iter().chain(&odd) {
        assert_eq!(view.flow(&f.key()).as_ref(), Some(f), "{:?}", f.orig);
    }
    assert_eq!(b.stats().malformed.total(), 0);
}

/// A flow of ours the receivers' checks would refuse (none the kernel is
/// known to make; the ICMP case above once was one) is kept out of the
/// internal cache: sent, its datagram would be refused whole and resent for
/// ever, and every later change would wait behind it. An earlier valid
/// state of it is dropped; re-reads refuse it too, and expectations
/// likewise.
#[test]
fn a_flow_the_wire_refuses_is_never_cached_or_sent_and_stalls_nothing() {
    let mut sim = Sim::new(7, vec![cfg(1), cfg(2)]);
    sim.run_until(1000);
    // TCP with an ICMP tuple; a reply tuple of the other family; a helper
    // name past the format's bound.
    let mut tcp_with_icmp_tuple = Flow::new(Tuple {
        src: "198.18.0.1".parse().unwrap(),
        dst: "198.18.0.2".parse().unwrap(),
        proto: proto::TCP,
        l4: L4::Icmp {
            kind: 8,
            code: 0,
            id: 7,
        },
    });
    tcp_with_icmp_tuple.status = status::CONFIRMED;
    let mut rng = Rng(12);
    let mut mixed_families = flow_for(&mut rng, 0);
    mixed_families.reply.src = "2001:db8::9".parse().unwrap();
    // This one was cached and sent in a valid state first: that state
    // must not stay, here or at the peer, as if it were current.
    let was_valid = flow_for(&mut rng, 5);
    let now = sim.now;
    sim.node(0).local_upsert(&was_valid, now, true);
    sim.run_until(now + 500);
    let b = sim.nodes[1].as_ref().unwrap();
    assert!(b.external()[&1].contains(&was_valid.key()));
    let now = sim.now;
    let mut long_helper = was_valid.clone();
    long_helper.helper = Some("h".repeat(crate::wire::MAX_HELPER_LEN + 1));
    let refused = [tcp_with_icmp_tuple, mixed_families, long_helper];
    for f in &refused {
        sim.node(0).local_upsert(f, now, true);
    }
    let after: Vec<Flow> = (1..51)
        .map(|slot| flow_for(&mut rng, slot * 5 + 1))
        .collect();
    for f in &after {
        sim.node(0).local_upsert(f, now + 1, true);
    }
    // A re-read finding them refuses them again.
    let mut dump = after.clone();
    dump.extend(refused.iter().cloned());
    let report = sim
        .node(0)
        .reconcile_internal(dump, now + 2, Replicate::Differences);
    assert_eq!(report.added, 0, "{report:?}");
    let mut odd_expectation = crate::expect::test_expectations::ftp(2000);
    odd_expectation.helper = Some("h".repeat(crate::wire::MAX_HELPER_LEN + 1));
    let what = sim
        .node(0)
        .local_expect_upsert(odd_expectation, now + 2, true);
    assert_eq!(what, crate::cache::Upsert::Refused);
    sim.run_until(now + 3_000);
    let b = sim.nodes[1].as_ref().unwrap();
    let view = b.external().get(&1).expect("B's view of A");
    for f in &after {
        assert_eq!(view.flow(&f.key()).as_ref(), Some(f), "{:?}", f.orig);
    }
    assert_eq!(view.len(), after.len());
    assert_eq!(b.stats().malformed.total(), 0);
    let a = sim.nodes[0].as_ref().unwrap();
    assert_eq!(a.internal().len(), after.len());
    assert!(a.internal_expectations().is_empty());
    assert_eq!(a.stats().unsendable, 7);
}

/// `-f internal` (or the purge `-t` schedules) while a full bulk of ours is
/// still going out: the flows not yet sent are dropped with the rest of
/// the queue, and so must be the bulk's end, or the peer, finding them
/// missing from a bulk received in order, would sweep them. A standby
/// keeps what a demoted node purges.
#[test]
fn a_local_flush_during_an_outgoing_bulk_does_not_sweep_the_peer() {
    let mut sim = Sim::new(
        8,
        vec![
            SyncConfig {
                window: 4,
                ..cfg(1)
            },
            cfg(2),
        ],
    );
    sim.run_until(1000);
    let mut rng = Rng(13);
    let flows: Vec<Flow> = (0..2_000).map(|slot| flow_for(&mut rng, slot)).collect();
    let now = sim.now;
    for f in &flows {
        sim.node(0).local_upsert(f, now, true);
    }
    sim.run_until(now + 3_000);
    let held = |sim: &Sim| {
        sim.nodes[1]
            .as_ref()
            .unwrap()
            .external()
            .get(&1)
            .map_or(0, |c| c.len())
    };
    assert_eq!(held(&sim), flows.len(), "B holds A's flows before");
    let now = sim.now;
    sim.node(0).send_bulk(now);
    // A few datagrams of the bulk leave, then the purge.
    sim.run_until(now + 3);
    sim.node(0).flush_internal();
    sim.run_until(now + 20_000);
    assert_eq!(held(&sim), flows.len(), "B swept the purged flows");
}
