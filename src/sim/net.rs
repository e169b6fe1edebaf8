//! The simulated network: a multicast group on virtual time that loses,
//! duplicates, delays (and so reorders) datagrams and can cut nodes off.
//!
//! Owns: the datagrams in flight, ordered by delivery time, the cut-off set
//! and the network counters. Must not: know about Nodes or flows (it carries
//! opaque bytes between node indexes), or draw numbers from anything but the
//! Rng it is handed.

use super::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// One copy of a datagram on its way to one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub from: usize,
    pub to: usize,
    pub link: usize,
    pub bytes: Vec<u8>,
}

/// What the network did, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Copies handed to the network (one per receiver).
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Dropped because one end was cut off or down.
    pub cut: u64,
}

/// The fault settings in force; `Faults::default()` is a perfect network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub loss: u32,
    pub dup: u32,
    pub reorder: u64,
}

/// Every datagram a node sends reaches every other node, subject to faults.
#[derive(Debug)]
pub struct Network {
    nodes: usize,
    /// (deliver at, send order) -> datagram: a total, reproducible order.
    in_flight: BTreeMap<(u64, u64), InFlight>,
    order: u64,
    faults: Faults,
    cut: BTreeSet<usize>,
    /// Links cut for everyone (both directions), in flight included.
    cut_links: BTreeSet<usize>,
    /// Extra loss of one link, in percent, on top of `faults.loss`.
    link_loss: BTreeMap<usize, u32>,
    stats: NetStats,
}

/// The time a datagram takes on a perfect network.
pub const BASE_LATENCY_MS: u64 = 1;

impl Network {
    pub fn new(nodes: usize, faults: Faults) -> Network {
        Network {
            nodes,
            in_flight: BTreeMap::new(),
            order: 0,
            faults,
            cut: BTreeSet::new(),
            cut_links: BTreeSet::new(),
            link_loss: BTreeMap::new(),
            stats: NetStats::default(),
        }
    }

    /// Cut `link` for every node until `restore_link`.
    pub fn cut_link(&mut self, link: usize) {
        self.cut_links.insert(link);
    }

    pub fn restore_link(&mut self, link: usize) {
        self.cut_links.remove(&link);
    }

    /// `link` loses `percent` of its datagrams besides the faults in force
    /// (0: no more than those).
    pub fn set_link_loss(&mut self, link: usize, percent: u32) {
        if percent == 0 {
            self.link_loss.remove(&link);
        } else {
            self.link_loss.insert(link, percent);
        }
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Cut `node` off, both directions, until `rejoin`.
    pub fn cut_off(&mut self, node: usize) {
        self.cut.insert(node);
    }

    pub fn rejoin(&mut self, node: usize) {
        self.cut.remove(&node);
    }

    /// Hand a datagram from `from` to the group at `now`.
    pub fn send(&mut self, rng: &mut Rng, now: u64, from: usize, link: usize, bytes: &[u8]) {
        for to in 0..self.nodes {
            if to == from {
                continue;
            }
            self.stats.sent += 1;
            if self.cut.contains(&from) || self.cut.contains(&to) || self.cut_links.contains(&link)
            {
                self.stats.cut += 1;
                continue;
            }
            let extra = self.link_loss.get(&link).copied().unwrap_or(0);
            if extra > 0 && rng.chance(extra) {
                self.stats.lost += 1;
                continue;
            }
            let copies = if rng.chance(self.faults.dup) {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                if rng.chance(self.faults.loss) {
                    self.stats.lost += 1;
                    continue;
                }
                let at = now + BASE_LATENCY_MS + rng.range(0, self.faults.reorder);
                self.order += 1;
                self.in_flight.insert(
                    (at, self.order),
                    InFlight {
                        from,
                        to,
                        link,
                        bytes: bytes.to_vec(),
                    },
                );
            }
        }
    }

    /// When the next datagram arrives.
    pub fn next_at(&self) -> Option<u64> {
        self.in_flight.keys().next().map(|&(at, _)| at)
    }

    /// The next datagram due at or before `now`, unless a cut drops it on
    /// the way (then the next one).
    pub fn pop_due(&mut self, now: u64) -> Option<InFlight> {
        loop {
            let entry = self.in_flight.first_entry()?;
            if entry.key().0 > now {
                return None;
            }
            let d = entry.remove();
            if self.cut.contains(&d.from)
                || self.cut.contains(&d.to)
                || self.cut_links.contains(&d.link)
            {
                self.stats.cut += 1;
                continue;
            }
            self.stats.delivered += 1;
            return Some(d);
        }
    }

    /// Drop everything on its way to `node` (it went down).
    pub fn drop_to(&mut self, node: usize) {
        let before = self.in_flight.len();
        self.in_flight.retain(|_, d| d.to != node);
        self.stats.cut += (before - self.in_flight.len()) as u64;
    }

    /// Datagrams on their way.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_network_delivers_to_every_other_node_in_order() {
        let mut net = Network::new(3, Faults::default());
        let mut rng = Rng::new(1);
        net.send(&mut rng, 10, 0, 0, b"a");
        net.send(&mut rng, 10, 0, 0, b"b");
        assert_eq!(net.next_at(), Some(11));
        assert!(net.pop_due(10).is_none());
        let got: Vec<(usize, Vec<u8>)> = std::iter::from_fn(|| net.pop_due(11))
            .map(|d| (d.to, d.bytes))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, b"a".to_vec()),
                (2, b"a".to_vec()),
                (1, b"b".to_vec()),
                (2, b"b".to_vec())
            ]
        );
        assert_eq!(net.stats().delivered, 4);
    }

    #[test]
    fn cuts_drop_both_directions_and_in_flight() {
        let mut net = Network::new(2, Faults::default());
        let mut rng = Rng::new(1);
        net.send(&mut rng, 0, 0, 0, b"x");
        net.cut_off(1);
        net.send(&mut rng, 0, 1, 0, b"y");
        assert!(net.pop_due(100).is_none());
        assert_eq!(net.stats().cut, 2);
        net.rejoin(1);
        net.send(&mut rng, 0, 1, 0, b"z");
        assert_eq!(net.pop_due(100).map(|d| d.bytes), Some(b"z".to_vec()));
    }

    #[test]
    fn a_cut_or_lossy_link_spares_the_other() {
        let mut net = Network::new(2, Faults::default());
        let mut rng = Rng::new(1);
        net.send(&mut rng, 0, 0, 0, b"a");
        net.cut_link(0);
        net.send(&mut rng, 0, 0, 0, b"b");
        net.send(&mut rng, 0, 0, 1, b"c");
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| net.pop_due(10))
            .map(|d| d.bytes)
            .collect();
        assert_eq!(
            got,
            vec![b"c".to_vec()],
            "in flight on a cut link is lost too"
        );
        net.restore_link(0);
        net.set_link_loss(1, 100);
        net.send(&mut rng, 20, 0, 1, b"d");
        net.send(&mut rng, 20, 0, 0, b"e");
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| net.pop_due(30))
            .map(|d| d.bytes)
            .collect();
        assert_eq!(got, vec![b"e".to_vec()]);
        assert_eq!(net.stats().lost, 1);
    }

    #[test]
    fn total_loss_delivers_nothing_and_dup_doubles() {
        let mut rng = Rng::new(3);
        let mut lossy = Network::new(
            2,
            Faults {
                loss: 100,
                ..Faults::default()
            },
        );
        lossy.send(&mut rng, 0, 0, 0, b"x");
        assert_eq!(lossy.next_at(), None);
        let mut dups = Network::new(
            2,
            Faults {
                dup: 100,
                ..Faults::default()
            },
        );
        dups.send(&mut rng, 0, 0, 0, b"x");
        assert_eq!(dups.in_flight(), 2);
    }
}
