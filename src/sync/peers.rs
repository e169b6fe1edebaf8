//! Who is talking to us: the table of senders, each one's epoch and
//! liveness, and the verdict on a datagram's header (own id, a new peer,
//! the same epoch, a restart, a stale epoch, or a full table).
//!
//! Owns: `Peer` (one sender's epochs, when it was last heard, and the
//! per-sender state the other parts keep in it), `PeerTable` and
//! `classify`. Must not: read datagram bodies, apply messages, build
//! datagrams, or read the clock (times are arguments).

use super::bulk::BulkRx;
use super::digest::RangeWants;
use super::rx::{RxParams, RxStream};
use super::seqstat::SeqCounter;
use super::stats::PeerCounters;
use std::collections::BTreeMap;

/// What a datagram's header says about its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Our own node id: a loop or a misconfigured peer; dropped.
    OwnNodeId,
    /// A new sender, but the table holds `max_peers` already; dropped.
    TableFull,
    /// A sender not seen before.
    New,
    /// A known sender in the epoch we know.
    SameEpoch,
    /// A known sender in a new epoch: it restarted (or rolled over).
    Restart,
    /// A late datagram of a known sender's previous epoch while its current
    /// one is alive; dropped.
    Stale,
}

/// Whether a sender was heard within `peer_timeout_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    /// Nothing heard for `peer_timeout_ms`: its acks no longer hold our
    /// window, and nothing is asked of it until it is heard again.
    Silent,
}

/// Whether we are asking a sender for its whole table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resync {
    /// Nothing asked (or its bulk began).
    Settled,
    /// Ask (again) at `next_ms`, until its BulkBegin arrives.
    Asking { next_ms: u64 },
}

/// One sender, as the node knows it.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub epoch: u64,
    /// The epoch before its last restart. Epochs need not grow; a new value
    /// is a restart, except that while the current epoch is alive, late
    /// datagrams of `prev_epoch` and of `epoch - 1` (the one before a
    /// sequence rollover, even if we first met it after the rollover) are
    /// stale. Once the current epoch falls silent any epoch is taken again,
    /// so a wrong switch cannot lock a peer out.
    pub prev_epoch: Option<u64>,
    pub last_heard_ms: u64,
    /// FTFW: its reliable stream.
    pub rx: RxStream,
    /// NOTRACK and ALARM: its sequence numbers, for the loss counter only.
    pub seen: SeqCounter,
    /// How far it has acknowledged our stream.
    pub tx_acked: u32,
    pub resync: Resync,
    /// The bulk (full or by range) it is sending us.
    pub bulk: BulkRx,
    /// Key ranges of its table we asked it to re-send.
    pub wants: RangeWants,
    pub counts: PeerCounters,
}

impl Peer {
    /// A sender first heard (or heard again after a restart) at `now` with
    /// a datagram numbered `seq`.
    pub fn new(epoch: u64, seq: u32, reliable: bool, now: u64, p: &RxParams) -> Peer {
        Peer {
            epoch,
            prev_epoch: None,
            last_heard_ms: now,
            rx: RxStream::new(seq, reliable, now, p),
            seen: SeqCounter::new(seq, reliable, now),
            tx_acked: 0,
            resync: Resync::Settled,
            bulk: BulkRx::Idle,
            wants: RangeWants::default(),
            counts: PeerCounters::default(),
        }
    }

    pub fn liveness(&self, now: u64, timeout_ms: u64) -> Liveness {
        if now.saturating_sub(self.last_heard_ms) < timeout_ms {
            Liveness::Alive
        } else {
            Liveness::Silent
        }
    }

    pub fn alive(&self, now: u64, timeout_ms: u64) -> bool {
        self.liveness(now, timeout_ms) == Liveness::Alive
    }

    /// Whether a datagram of `epoch` belongs to an epoch this sender left
    /// behind while its current one is alive.
    fn is_stale(&self, epoch: u64, now: u64, timeout_ms: u64) -> bool {
        self.alive(now, timeout_ms)
            && (self.prev_epoch == Some(epoch) || epoch.wrapping_add(1) == self.epoch)
    }
}

/// Every sender known, bounded by `max_peers`.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerTable {
    pub peers: BTreeMap<u32, Peer>,
}

/// The verdict on a header from a sender other than us in `epoch`,
/// received at `now`; `known` is what we know of it.
fn classify(
    known: Option<&Peer>,
    table_len: usize,
    max_peers: usize,
    epoch: u64,
    now: u64,
    timeout_ms: u64,
) -> Verdict {
    match known {
        None if table_len >= max_peers => Verdict::TableFull,
        None => Verdict::New,
        Some(p) if p.epoch == epoch => Verdict::SameEpoch,
        Some(p) if p.is_stale(epoch, now, timeout_ms) => Verdict::Stale,
        Some(_) => Verdict::Restart,
    }
}

impl PeerTable {
    #[cfg(test)]
    pub fn get(&self, id: u32) -> Option<&Peer> {
        self.peers.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Peer> {
        self.peers.get_mut(&id)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn values(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.peers.values_mut()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Peer)> {
        self.peers.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u32, &mut Peer)> {
        self.peers.iter_mut()
    }

    /// The verdict on a header from `sender` in `epoch`.
    pub fn classify(
        &self,
        own_id: u32,
        sender: u32,
        epoch: u64,
        now: u64,
        timeout_ms: u64,
        max_peers: usize,
    ) -> Verdict {
        if sender == own_id {
            return Verdict::OwnNodeId;
        }
        classify(
            self.peers.get(&sender),
            self.peers.len(),
            max_peers,
            epoch,
            now,
            timeout_ms,
        )
    }

    /// Take `sender` in `epoch` as new (first contact or a restart): its
    /// stream starts where it is. How far it acked our stream stays true:
    /// its acks are about our epoch, not its own.
    pub fn admit(&mut self, sender: u32, mut peer: Peer) {
        if let Some(old) = self.peers.get(&sender) {
            peer.prev_epoch = Some(old.epoch);
            peer.tx_acked = old.tx_acked;
            peer.counts = old.counts;
        }
        self.peers.insert(sender, peer);
    }

    pub fn any_alive(&self, now: u64, timeout_ms: u64) -> bool {
        self.peers.values().any(|p| p.alive(now, timeout_ms))
    }

    /// The lowest ack among live peers.
    pub fn live_min_acked(&self, now: u64, timeout_ms: u64) -> Option<u32> {
        self.peers
            .values()
            .filter(|p| p.alive(now, timeout_ms))
            .map(|p| p.tx_acked)
            .min()
    }

    /// Peers silent for `horizon_ms` for which `forgettable` holds; they
    /// are removed and returned.
    pub fn forget(
        &mut self,
        now: u64,
        horizon_ms: u64,
        forgettable: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        let gone: Vec<u32> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                now.saturating_sub(p.last_heard_ms) >= horizon_ms && forgettable(**id)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in &gone {
            self.peers.remove(id);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> RxParams {
        RxParams {
            ack_every: 8,
            ack_delay_ms: 20,
            rto_ms: 200,
            reorder_limit: 64,
            reorder_max_bytes: 1 << 20,
        }
    }

    const TIMEOUT: u64 = 5_000;

    fn table_with(sender: u32, epoch: u64, now: u64) -> PeerTable {
        let mut t = PeerTable::default();
        t.admit(sender, Peer::new(epoch, 1, true, now, &params()));
        t
    }

    #[test]
    fn own_id_new_same_and_full() {
        let t = table_with(2, 10, 0);
        assert_eq!(t.classify(1, 1, 10, 0, TIMEOUT, 4), Verdict::OwnNodeId);
        assert_eq!(t.classify(1, 2, 10, 0, TIMEOUT, 4), Verdict::SameEpoch);
        assert_eq!(t.classify(1, 3, 10, 0, TIMEOUT, 4), Verdict::New);
        assert_eq!(t.classify(1, 3, 10, 0, TIMEOUT, 1), Verdict::TableFull);
        // A known sender is never refused for a full table.
        assert_eq!(t.classify(1, 2, 11, 0, TIMEOUT, 1), Verdict::Restart);
    }

    #[test]
    fn restart_then_the_old_epoch_is_stale_while_the_new_one_lives() {
        let mut t = table_with(2, 10, 0);
        t.get_mut(2).unwrap().tx_acked = 42;
        assert_eq!(t.classify(1, 2, 500, 100, TIMEOUT, 4), Verdict::Restart);
        t.admit(2, Peer::new(500, 1, true, 100, &params()));
        let p = t.get(2).unwrap();
        assert_eq!((p.epoch, p.prev_epoch, p.tx_acked), (500, Some(10), 42));
        assert_eq!(t.classify(1, 2, 10, 200, TIMEOUT, 4), Verdict::Stale);
        // The epoch before a rollover is stale too, even if never met.
        assert_eq!(t.classify(1, 2, 499, 200, TIMEOUT, 4), Verdict::Stale);
        // Once the current epoch falls silent, any epoch is taken again.
        assert_eq!(
            t.classify(1, 2, 10, 100 + TIMEOUT, TIMEOUT, 4),
            Verdict::Restart
        );
    }

    #[test]
    fn liveness_and_forgetting() {
        let mut t = table_with(2, 10, 0);
        t.admit(3, Peer::new(7, 1, false, 4_000, &params()));
        let p = t.get(2).unwrap();
        assert_eq!(p.liveness(4_999, TIMEOUT), Liveness::Alive);
        assert_eq!(p.liveness(5_000, TIMEOUT), Liveness::Silent);
        assert!(t.any_alive(5_000, TIMEOUT));
        t.get_mut(3).unwrap().tx_acked = 9;
        assert_eq!(t.live_min_acked(5_000, TIMEOUT), Some(9));
        assert_eq!(t.live_min_acked(9_000, TIMEOUT), None);
        // Only the long-silent one that may be forgotten goes.
        assert_eq!(t.forget(60_000, 56_001, |_| true), vec![2]);
        assert_eq!(t.forget(60_000, 10_000, |id| id != 3), Vec::<u32>::new());
        assert_eq!(t.len(), 1);
    }
}
