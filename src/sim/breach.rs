//! What an adversary must never achieve against a keyed cluster, and how
//! the checks tell it: a peer under an invented node id, an honest peer
//! under an epoch its host never had or under one older than a node
//! already knew it by, a forged flow in a view, or a forged or altered
//! datagram that a node took or that changed what it holds.
//!
//! Owns: `Breach`, the watch over a cluster's peer tables and views (with
//! the epochs each node has seen of each peer) and `Fingerprint`, what a
//! refused datagram must leave as it was. Must not: change any state or
//! decide when to check (the driver does), or know how the adversary
//! works beyond the marks of its forgeries.

use super::adversary::{forged_keys, is_forged_key, Attack, FORGED_POOL};
use crate::auth::AuthDrop;
use crate::flow::{Flow, FlowKey};
use crate::sync::Node;
use std::collections::BTreeMap;
use std::fmt;

/// One thing the adversary got in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Breach {
    /// `viewer` knows a peer (or holds a view) under a node id no honest
    /// host has.
    FakePeer { viewer: u32, peer: u32 },
    /// `viewer` holds honest `peer` under an epoch `peer` never had.
    InventedEpoch { viewer: u32, peer: u32, epoch: u64 },
    /// `viewer` went back to an epoch of `peer`'s older than one it knew.
    OldEpoch {
        viewer: u32,
        peer: u32,
        epoch: u64,
        knew: u64,
    },
    /// A flow of the adversary's in `viewer`'s view of `owner` (or in
    /// `viewer`'s own table, `owner == viewer`).
    ForgedFlow {
        viewer: u32,
        owner: u32,
        flow: Box<Flow>,
    },
    /// A forged or altered datagram got past `viewer`'s checks (`verdict`
    /// is what `on_datagram` said), or changed what it holds.
    Taken {
        viewer: u32,
        attack: Attack,
        verdict: Option<AuthDrop>,
        changed: bool,
    },
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Breach::FakePeer { viewer, peer } => {
                write!(f, "node {viewer} took invented node id {peer:#x} as a peer")
            }
            Breach::InventedEpoch {
                viewer,
                peer,
                epoch,
            } => write!(
                f,
                "node {viewer} holds node {peer} under epoch {epoch:#x}, which it never had"
            ),
            Breach::OldEpoch {
                viewer,
                peer,
                epoch,
                knew,
            } => write!(
                f,
                "node {viewer} went back to node {peer}'s old epoch {epoch:#x} after {knew:#x}"
            ),
            Breach::ForgedFlow {
                viewer,
                owner,
                flow,
            } => write!(
                f,
                "node {viewer} holds for node {owner} the forged flow {} -> {}",
                flow.orig.src, flow.orig.dst
            ),
            Breach::Taken {
                viewer,
                attack,
                verdict,
                changed,
            } => write!(
                f,
                "node {viewer} {} a {} datagram (verdict {})",
                if *changed { "changed on" } else { "took" },
                attack.name(),
                verdict.map_or("taken", AuthDrop::name)
            ),
        }
    }
}

/// One host as the watch sees it: node id, the epochs it has had (in
/// order), its daemon if up.
pub type HostView<'a> = (u32, &'a [u64], Option<&'a Node>);

/// What the watch remembers between checks: per (viewer, viewer's epoch,
/// peer), the latest of the peer's epochs it has held.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    latest: BTreeMap<(u32, u64, u32), usize>,
}

impl Watch {
    /// Check `hosts[viewer]`'s peer table and views; with `forged`, look
    /// for the adversary's flows too (its pool of keys, or every key of a
    /// smaller view).
    pub fn check_node(
        &mut self,
        hosts: &[HostView<'_>],
        viewer: usize,
        forged: bool,
        out: &mut Vec<Breach>,
    ) {
        let Some(&(vid, _, Some(node))) = hosts.get(viewer) else {
            return;
        };
        let epochs_of = |id: u32| hosts.iter().find(|h| h.0 == id).map(|h| h.1);
        for p in node.peers() {
            let Some(epochs) = epochs_of(p.node_id) else {
                out.push(Breach::FakePeer {
                    viewer: vid,
                    peer: p.node_id,
                });
                continue;
            };
            let Some(idx) = epochs.iter().position(|&e| e == p.epoch) else {
                out.push(Breach::InventedEpoch {
                    viewer: vid,
                    peer: p.node_id,
                    epoch: p.epoch,
                });
                continue;
            };
            let mark = self
                .latest
                .entry((vid, node.epoch(), p.node_id))
                .or_insert(idx);
            if idx < *mark {
                out.push(Breach::OldEpoch {
                    viewer: vid,
                    peer: p.node_id,
                    epoch: p.epoch,
                    knew: epochs.get(*mark).copied().unwrap_or(0),
                });
            } else {
                *mark = idx;
            }
        }
        for (&owner, cache) in node.external() {
            if epochs_of(owner).is_none() {
                out.push(Breach::FakePeer {
                    viewer: vid,
                    peer: owner,
                });
            }
            if !forged || cache.is_empty() {
                continue;
            }
            // Whichever is fewer: the view's keys, or the forged pool.
            let hits: Vec<FlowKey> = if cache.len() <= FORGED_POOL as usize {
                cache.keys().filter(is_forged_key).collect()
            } else {
                forged_keys().filter(|k| cache.contains(k)).collect()
            };
            for k in hits {
                if let Some(flow) = cache.flow(&k) {
                    out.push(Breach::ForgedFlow {
                        viewer: vid,
                        owner,
                        flow: Box::new(flow),
                    });
                }
            }
        }
    }

    /// `check_node` for every host.
    pub fn check_all(&mut self, hosts: &[HostView<'_>], forged: bool, out: &mut Vec<Breach>) {
        for i in 0..hosts.len() {
            self.check_node(hosts, i, forged, out);
        }
    }
}

/// Every flow with the adversary's addresses anywhere in the cluster (a
/// walk over every cache: for the end of a run).
pub fn scan_for_forged(hosts: &[HostView<'_>], out: &mut Vec<Breach>) {
    for &(vid, _, node) in hosts {
        let Some(node) = node else {
            continue;
        };
        let own = std::iter::once((vid, node.internal()));
        for (owner, cache) in own.chain(node.external().iter().map(|(&o, c)| (o, c))) {
            for k in cache.keys().filter(is_forged_key) {
                if let Some(flow) = cache.flow(&k) {
                    out.push(Breach::ForgedFlow {
                        viewer: vid,
                        owner,
                        flow: Box::new(flow),
                    });
                }
            }
        }
    }
}

/// What a node holds that a refused datagram must leave as it was: its
/// peers' epochs and stream positions, its views and its own table (by
/// size and digest), and its send backlog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    peers: Vec<(u32, u64, u32, u32, usize, usize)>,
    views: Vec<(u32, usize, u64)>,
    internal: (usize, u64),
    backlog: (usize, usize),
}

impl Fingerprint {
    pub fn of(node: &Node) -> Fingerprint {
        Fingerprint {
            peers: node
                .peers()
                .iter()
                .map(|p| {
                    (
                        p.node_id,
                        p.epoch,
                        p.expected_seq,
                        p.acked_seq,
                        p.flows,
                        p.reordered,
                    )
                })
                .collect(),
            views: node
                .external()
                .iter()
                .map(|(&id, c)| (id, c.len(), c.digest()))
                .collect(),
            internal: (node.internal().len(), node.internal().digest()),
            backlog: node.backlog(),
        }
    }

    /// Whether a view (its node id, size or digest) differs.
    pub fn views_differ(&self, other: &Fingerprint) -> bool {
        self.views != other.views
    }
}
