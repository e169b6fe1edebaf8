//! Sans-IO replication: the whole sync state of one daemon (`Node`).
//!
//! Owns: the internal cache (our flows), the external caches (peers' flows),
//! the FTFW sender (coalescing send queue, sequence numbers, bounded resend
//! queue, flow control) and receivers (one per sender node id), the NOTRACK
//! and ALARM variants of both (no acks; ALARM refreshes and expires),
//! anti-entropy digests, bulk resyncs, peer and link liveness, and the
//! counters. Must not: import tokio, sockets or the clock (time is the
//! `now_ms` argument), or talk to the kernel.
//!
//! The daemon feeds a Node local changes and datagrams, then calls
//! `poll_transmit` after every input and at the latest at `next_deadline`.

mod alarm;
mod queue;
mod resend;
mod rx;
mod seqstat;
mod stats;

pub use stats::{LinkStats, PeerStatus, ReconcileReport, SyncStats};

use crate::cache::{Confirm, FlowCache, Upsert};
use crate::flow::{Flow, FlowKey};
use crate::wire::{
    self, decode_datagram, flags, Body, Header, Message, Packer, Push, WireKey, HEADER_LEN,
    MAX_DATAGRAM,
};
use alarm::{ExpiryClock, RefreshCursor};
use queue::{Item, SendQueue};
use resend::ResendQueue;
use rx::{RxParams, RxStream};
use seqstat::SeqCounter;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// A rough size of one queued flow message on the wire, to tell whether
/// the queue would fill a datagram.
const BATCH_KEY_BYTES: usize = 32;

/// Replication mode (conntrackd's names). Every node of a cluster must use
/// the same one.
///
/// - `Ftfw`: reliable; acks, nacks, a bounded resend queue.
/// - `Notrack`: best effort; data is sent once and applied as it arrives;
///   `-n`, start-up and peer restarts still pull a bulk.
/// - `Alarm`: every flow is re-sent at least once per `alarm_refresh_ms`;
///   receivers expire what is not refreshed within `alarm_timeout_ms`; no
///   acks, nacks, resync requests, bulks or digests (only keepalives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    Ftfw,
    Notrack,
    Alarm,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SyncError {
    /// No longer returned: every mode is implemented.
    #[error("sync mode {0:?} is not implemented")]
    UnsupportedMode(Mode),
    #[error("invalid sync configuration: {0}")]
    InvalidConfig(&'static str),
}

/// One change to a peer's flows, as warm standby mirrors it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A flow the peer's view did not hold before.
    Created(Flow),
    /// A new state of a flow already held.
    Updated(Flow),
    Delete(FlowKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    pub mode: Mode,
    pub node_id: u32,
    /// UDP payload budget per datagram (path MTU minus IP/UDP headers). It
    /// bounds what we send and what we accept: a datagram longer than this is
    /// dropped unread (counted as "oversized"), so every node of a cluster
    /// must be configured with the same MTU (and link address family).
    pub max_payload: usize,
    /// Most unacknowledged reliable datagrams (the resend queue's bound).
    pub window: usize,
    /// Acknowledge after this many in-order datagrams...
    pub ack_every: u32,
    /// ...or this long after the first unacknowledged one.
    pub ack_delay_ms: u64,
    pub keepalive_ms: u64,
    pub rto_ms: u64,
    /// Silence after which a peer is down: its acks no longer hold the
    /// window, and we stop asking it for resyncs and resends.
    pub peer_timeout_ms: u64,
    /// How far ahead of the next expected sequence number a reliable
    /// datagram may be buffered; further ones are dropped unbuffered. Should
    /// be at least the senders' `window` (a live sender is never further
    /// ahead than that).
    pub reorder_limit: usize,
    /// Memory the reorder buffer of one sender may hold, in bytes.
    pub reorder_max_bytes: usize,
    /// Most senders known at once; datagrams from further node ids are
    /// dropped (counted as "too_many_peers").
    pub max_peers: usize,
    pub links: usize,
    /// FTFW and NOTRACK: send a `Digest` of our table this often (when the
    /// send queue is empty); a receiver that disagrees pulls a bulk. 0: off.
    pub digest_interval_ms: u64,
    /// ALARM: every flow is re-sent at least this often.
    pub alarm_refresh_ms: u64,
    /// ALARM: a peer's flow not refreshed for this long is dropped.
    pub alarm_timeout_ms: u64,
    /// Let a few queued keys wait this long (ms) for more to fill a
    /// datagram; 0 sends at once.
    pub batch_delay_ms: u64,
    /// Keep a list of every change to the external caches for the daemon
    /// to collect with `take_applied` (warm standby writes them into the
    /// kernel as they arrive).
    pub record_applied: bool,
    /// Key the caches' hash with this seed instead of at random, so that
    /// their order, and with it the order a bulk is sent in, depends only
    /// on what happened to them: for replayable simulations. (A daemon
    /// keeps the random key: its flows come from the network.)
    pub cache_seed: Option<u64>,
    /// FTFW: while no peer is alive, at most this many items wait in the
    /// send queue; past it the queue and the resend window are dropped and
    /// the next peer heard gets a bulk instead (a backup down for a day
    /// must not cost the primary its memory).
    pub alone_queue_max: usize,
}

/// What a reconcile with the kernel table sends to peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicate {
    /// Nothing: the cache is primed or refreshed (start-up, `-R`).
    Nothing,
    /// Every difference: added, changed and vanished flows.
    Differences,
    /// Every difference except flows a peer's cache holds: shortly after a
    /// commit those are the commit's own writes, cached as ours but never
    /// sent back (their events may have been paused or lost).
    DifferencesButPeerFlows,
}

/// An empty cache as `seed` says (see `SyncConfig::cache_seed`).
fn new_cache(seed: Option<u64>) -> FlowCache {
    seed.map_or_else(FlowCache::new, FlowCache::with_seed)
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            mode: Mode::Ftfw,
            node_id: 1,
            max_payload: crate::wire::PAYLOAD_IPV4_1500,
            window: 4096,
            ack_every: 64,
            ack_delay_ms: 20,
            keepalive_ms: 1000,
            rto_ms: 200,
            peer_timeout_ms: 5000,
            reorder_limit: 8192,
            reorder_max_bytes: 64 << 20,
            max_peers: 16,
            links: 1,
            digest_interval_ms: 5000,
            alarm_refresh_ms: 60_000,
            alarm_timeout_ms: 180_000,
            record_applied: false,
            batch_delay_ms: 2,
            cache_seed: None,
            alone_queue_max: 65_536,
        }
    }
}

/// One datagram to send on one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub link: usize,
    pub bytes: Vec<u8>,
}

/// Datagrams resent at once when no ack progress was made for `rto_ms`.
const RTO_BURST: usize = 4;
/// Smallest `max_payload` accepted: a header and one IPv6 flow with NAT.
const MIN_PAYLOAD: usize = HEADER_LEN + 160;
/// Largest `window` accepted: it keeps the sequence space's reserve small.
const MAX_WINDOW: usize = 1 << 24;
/// A peer down for this many `peer_timeout_ms` with nothing in its external
/// cache is forgotten.
const FORGET_AFTER_TIMEOUTS: u64 = 60;
/// ALARM walks the table in this share of `alarm_refresh_ms` (per mille),
/// leaving slack for batching.
const ALARM_LAP_PERMILLE: u64 = 900;
/// A re-read of the kernel table sends a flow whose timeout now ends this
/// many seconds later than the one last sent (traffic refreshed it): peers
/// then know which flows are live, and commit those first.
const REFRESH_SLACK_S: u32 = 10;

#[derive(Clone, Debug)]
struct Peer {
    epoch: u64,
    /// The epoch before its last restart. Epochs need not grow; a new value
    /// is a restart, except that while the current epoch is alive, late
    /// datagrams of `prev_epoch` and of `epoch - 1` (the one before a
    /// sequence rollover, see `Node::new_epoch`, even if we first met it
    /// after the rollover) are stale. Once the current epoch falls silent
    /// any epoch is taken again, so a wrong switch cannot lock a peer out.
    prev_epoch: Option<u64>,
    last_heard_ms: u64,
    rx: RxStream,
    /// Bulk in progress from this peer: (id, generation of its cache).
    rx_bulk: Option<(u32, u32)>,
    /// How far this peer has acknowledged our stream.
    tx_acked: u32,
    /// NOTRACK and ALARM: its sequence numbers, for the loss counter only.
    seen: SeqCounter,
    /// When to ask again for its table (until its BulkBegin arrives).
    resync_retry: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Link {
    last_recv_ms: Option<u64>,
    /// False while the daemon reports the link's interface down.
    carrier_lost: bool,
}

impl Link {
    /// Usable for data: its interface is up and datagrams arrived lately.
    fn usable(&self, now: u64, peer_timeout_ms: u64) -> bool {
        !self.carrier_lost
            && self
                .last_recv_ms
                .is_some_and(|t| now.saturating_sub(t) < peer_timeout_ms)
    }
}

/// The replication state of one daemon.
#[derive(Debug)]
pub struct Node {
    cfg: SyncConfig,
    epoch: u64,
    now: u64,
    internal: FlowCache,
    external: BTreeMap<u32, FlowCache>,
    peers: BTreeMap<u32, Peer>,
    queue: SendQueue,
    resend: ResendQueue,
    next_seq: u32,
    /// The last sequence number of an epoch: past it we start a new epoch
    /// rather than let the numbers run out.
    seq_limit: u32,
    retransmit: BTreeSet<u32>,
    /// Control messages for everyone, sent at the next poll.
    control: Vec<Message>,
    bulk_id: u32,
    /// A BulkBegin is still in the send queue (a new bulk would be redundant).
    bulk_pending: bool,
    last_send_ms: u64,
    /// When the retransmit timer was last (re)started.
    rto_armed_ms: u64,
    links: Vec<Link>,
    stats: SyncStats,
    /// Changes to the external caches not yet taken (`record_applied`).
    applied: Vec<Applied>,
    /// When the send queue last became non-empty.
    queue_since_ms: Option<u64>,
    /// When the last Digest went out (or the node started).
    last_digest_ms: u64,
    /// ALARM: the sender's refresh walk over the internal keys.
    refresh: Option<RefreshCursor>,
    /// ALARM: the receiver's expiry of external flows.
    expiry: Option<ExpiryClock>,
    /// The backlog was dropped while no peer was alive: the next peer
    /// heard gets a bulk.
    owe_bulk: bool,
    /// We removed flows on our own (a local kernel flush, `-f internal`).
    /// Those removals are not replicated, as in conntrackd: a standby
    /// about to take over needs exactly the flows a demoted node purges.
    /// So no digest goes out (it would make peers sweep them) until `-R`
    /// or `-B` make our table the reference again.
    digests_paused: bool,
}

impl Node {
    /// A node that starts by asking its peers for their tables.
    pub fn new(cfg: SyncConfig, epoch: u64, now_ms: u64) -> Result<Node, SyncError> {
        let internal = new_cache(cfg.cache_seed);
        if cfg.mode == Mode::Alarm && (cfg.alarm_refresh_ms == 0 || cfg.alarm_timeout_ms == 0) {
            return Err(SyncError::InvalidConfig(
                "alarm_refresh_ms and alarm_timeout_ms must be at least 1",
            ));
        }
        if cfg.window == 0 {
            return Err(SyncError::InvalidConfig("window must be at least 1"));
        }
        if cfg.window > MAX_WINDOW {
            return Err(SyncError::InvalidConfig("window too large"));
        }
        if cfg.max_peers == 0 {
            return Err(SyncError::InvalidConfig("max_peers must be at least 1"));
        }
        if cfg.links == 0 {
            return Err(SyncError::InvalidConfig("at least one link is needed"));
        }
        if !(MIN_PAYLOAD..=MAX_DATAGRAM).contains(&cfg.max_payload) {
            return Err(SyncError::InvalidConfig("max_payload out of range"));
        }
        let links = cfg.links;
        let alarm = cfg.mode == Mode::Alarm;
        let lap_ms = cfg.alarm_refresh_ms.saturating_mul(ALARM_LAP_PERMILLE) / 1000;
        let refresh = alarm.then(|| RefreshCursor::new(lap_ms, now_ms));
        let expiry = alarm.then(|| ExpiryClock::new(cfg.alarm_timeout_ms, now_ms));
        // Keep a window's worth (and one) of numbers unused, so no stream
        // position or resend arithmetic ever meets u32::MAX.
        let reserve = u32::try_from(cfg.window).unwrap_or(u32::MAX);
        let seq_limit = u32::MAX.saturating_sub(reserve).saturating_sub(1);
        let mut node = Node {
            cfg,
            epoch,
            now: now_ms,
            internal,
            external: BTreeMap::new(),
            peers: BTreeMap::new(),
            queue: SendQueue::default(),
            resend: ResendQueue::default(),
            next_seq: 1,
            seq_limit,
            retransmit: BTreeSet::new(),
            control: Vec::new(),
            bulk_id: 0,
            bulk_pending: false,
            last_send_ms: now_ms,
            rto_armed_ms: now_ms,
            links: vec![Link::default(); links],
            applied: Vec::new(),
            queue_since_ms: None,
            stats: SyncStats {
                links: vec![LinkStats::default(); links],
                ..SyncStats::default()
            },
            last_digest_ms: now_ms,
            refresh,
            expiry,
            owe_bulk: false,
            digests_paused: false,
        };
        node.request_resync(now_ms);
        Ok(node)
    }

    pub fn config(&self) -> &SyncConfig {
        &self.cfg
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Queue a key for sending, once: a flow already queued goes out with
    /// its latest state anyway (the mark lives in its cache slot).
    fn enqueue(&mut self, key: FlowKey) {
        if self.internal.mark_queued(&key) {
            self.queue.push_key(key);
        }
    }

    /// `sender`'s external cache, created empty if new.
    fn external_cache(&mut self, sender: u32) -> &mut FlowCache {
        let seed = self.cfg.cache_seed;
        self.external
            .entry(sender)
            .or_insert_with(|| new_cache(seed.map(|s| s ^ u64::from(sender))))
    }

    pub fn internal(&self) -> &FlowCache {
        &self.internal
    }

    pub fn external(&self) -> &BTreeMap<u32, FlowCache> {
        &self.external
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Keys waiting to be sent (coalesced) and datagrams awaiting an ack.
    pub fn backlog(&self) -> (usize, usize) {
        (self.queue.len(), self.resend.len())
    }

    /// Some peer was heard within `peer_timeout_ms`.
    fn any_peer_alive(&self) -> bool {
        self.peers.values().any(|p| self.peer_alive(p))
    }

    /// FTFW with nobody listening and more queued than `alone_queue_max`:
    /// forget the queue and the resend window; whoever is heard next gets
    /// a bulk (see `owe_bulk`), which carries the same flows in their
    /// latest state. A peer that kept its epoch also finds the gap in our
    /// numbers and is told where to resume.
    fn bound_backlog_while_alone(&mut self) {
        if self.cfg.mode != Mode::Ftfw
            || self.queue.len() <= self.cfg.alone_queue_max
            || self.any_peer_alive()
        {
            return;
        }
        self.stats.backlog_drops += 1;
        self.stats.backlog_dropped_items += self.queue.len() as u64;
        self.queue.clear();
        self.bulk_pending = false;
        self.internal.clear_queued_marks();
        self.resend = ResendQueue::default();
        self.retransmit.clear();
        self.queue_since_ms = None;
        self.owe_bulk = true;
    }

    fn rx_params(&self) -> RxParams {
        RxParams {
            ack_every: self.cfg.ack_every,
            ack_delay_ms: self.cfg.ack_delay_ms,
            rto_ms: self.cfg.rto_ms,
            reorder_limit: self.cfg.reorder_limit,
            reorder_max_bytes: self.cfg.reorder_max_bytes,
        }
    }

    fn tick(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
    }

    fn peer_alive(&self, p: &Peer) -> bool {
        self.now.saturating_sub(p.last_heard_ms) < self.cfg.peer_timeout_ms
    }

    /// Test seam: the next reliable datagram gets `seq` (a fresh Node only,
    /// before it has sent data), to reach the end of the sequence space.
    #[cfg(test)]
    pub(crate) fn start_seq_at(&mut self, seq: u32) {
        debug_assert!(self.resend.is_empty());
        self.next_seq = seq.max(1);
    }

    // ---- local side -------------------------------------------------------

    /// A kernel NEW/UPDATE. `replicate = false`: our own commit's echo; cache
    /// it without sending.
    pub fn local_upsert(&mut self, flow: Flow, now_ms: u64, replicate: bool) {
        self.tick(now_ms);
        self.upsert_internal(flow, now_ms, replicate);
    }

    /// Cache one of our flows; with `replicate`, queue it if it changed
    /// (one table probe for both).
    fn upsert_internal(&mut self, flow: Flow, now_ms: u64, replicate: bool) -> Upsert {
        let key = flow.key();
        let (what, queue) = if replicate {
            self.internal.upsert_and_mark_queued(flow, now_ms)
        } else {
            (self.internal.upsert(flow, now_ms), false)
        };
        if what == Upsert::Created {
            if let Some(r) = self.refresh.as_mut() {
                r.insert(key);
            }
        }
        if queue {
            self.queue.push_key(key);
        }
        what
    }

    /// Does a peer's cache hold this flow?
    pub fn holds_peer_flow(&self, key: &FlowKey) -> bool {
        self.external.values().any(|c| c.contains(key))
    }

    /// A kernel DESTROY.
    pub fn local_delete(&mut self, key: &FlowKey, now_ms: u64, replicate: bool) {
        self.tick(now_ms);
        let gone = self.internal.remove(key).is_some();
        if gone {
            if let Some(r) = self.refresh.as_mut() {
                r.remove(key);
            }
        }
        if gone && replicate {
            self.enqueue(*key);
        }
    }

    /// Make the internal cache equal to a kernel dump, and queue for
    /// sending what `replicate` says.
    pub fn reconcile_internal(
        &mut self,
        kernel: Vec<Flow>,
        now_ms: u64,
        replicate: Replicate,
    ) -> ReconcileReport {
        self.tick(now_ms);
        if replicate == Replicate::Nothing {
            // `-R` (or start-up): our table is the reference again.
            self.digests_paused = false;
        }
        let mut report = ReconcileReport::default();
        // Every flow the kernel still has is stamped with this generation;
        // the rest are gone.
        let generation = self.internal.begin_generation();
        for flow in kernel {
            // The kernel counts timeouts down by itself: a flow whose only
            // difference is its timeout has not changed.
            let confirm = self.internal.confirm(&flow, now_ms, Some(REFRESH_SLACK_S));
            if confirm == Confirm::Same {
                report.unchanged += 1;
                continue;
            }
            let send = match replicate {
                Replicate::Nothing => false,
                Replicate::Differences => true,
                Replicate::DifferencesButPeerFlows => !self.holds_peer_flow(&flow.key()),
            };
            if confirm == Confirm::Refreshed {
                let key = flow.key();
                if self.internal.refresh(flow, now_ms, send) {
                    self.queue.push_key(key);
                }
                report.refreshed += 1;
                continue;
            }
            match self.upsert_internal(flow, now_ms, send) {
                Upsert::Created => report.added += 1,
                Upsert::Updated => report.changed += 1,
                Upsert::Unchanged => report.unchanged += 1,
            }
        }
        let mut gone = self.internal.sweep_older_than(generation);
        // The cache's iteration order is random per process; sending in key
        // order keeps a seeded simulation replayable.
        gone.sort_unstable();
        for key in gone {
            if let Some(r) = self.refresh.as_mut() {
                r.remove(&key);
            }
            report.removed += 1;
            if replicate != Replicate::Nothing {
                self.enqueue(key);
            }
        }
        report
    }

    /// Forget our flows (`-f internal`); nothing is sent, pending keys are
    /// dropped (they would otherwise go out as deletes).
    pub fn flush_internal(&mut self) {
        self.digests_paused = true;
        self.internal.clear();
        self.queue.drop_keys();
        if let Some(r) = self.refresh.as_mut() {
            r.clear();
        }
    }

    /// Forget the peers' flows (`-f external`).
    pub fn flush_external(&mut self) {
        for cache in self.external.values_mut() {
            cache.clear();
        }
        for p in self.peers.values_mut() {
            p.rx_bulk = None;
        }
    }

    /// Remove one flow from a peer's external cache (a test seam: the
    /// daemon reaches it only in builds with the `test-seams` feature).
    pub fn remove_external(&mut self, peer: u32, key: &FlowKey) -> bool {
        self.external
            .get_mut(&peer)
            .is_some_and(|c| c.remove(key).is_some())
    }

    /// `-n`: ask every peer for its full table (nothing in ALARM mode).
    pub fn request_resync(&mut self, now_ms: u64) {
        self.tick(now_ms);
        if self.cfg.mode == Mode::Alarm {
            return;
        }
        self.control.push(Message::ResyncRequest { node: None });
        let retry = self.now + self.resync_retry_ms();
        for p in self.peers.values_mut() {
            p.resync_retry = Some(retry);
        }
    }

    /// `-B`: send our full table (nothing in ALARM mode: the refresh does).
    pub fn send_bulk(&mut self, now_ms: u64) {
        self.tick(now_ms);
        self.digests_paused = false;
        self.start_bulk();
    }

    /// Our kernel table is being flushed on our own (`-F`, the flush `-t`
    /// schedules): peers keep their view of our flows (see
    /// `digests_paused`).
    pub fn pause_digests(&mut self) {
        self.digests_paused = true;
    }

    /// Digests wait for `-R` or `-B` after a local flush.
    pub fn digests_paused(&self) -> bool {
        self.digests_paused
    }

    fn resync_retry_ms(&self) -> u64 {
        (self.cfg.rto_ms * 4).max(self.cfg.keepalive_ms)
    }

    fn start_bulk(&mut self) {
        if self.bulk_pending || self.cfg.mode == Mode::Alarm {
            return;
        }
        self.bulk_id = self.bulk_id.wrapping_add(1);
        let id = self.bulk_id;
        self.queue.push_front(Item::BulkBegin(id));
        // A snapshot of every flow's Upsert, in the cache's order (random in
        // a daemon, replayable under a `cache_seed`). A flow already queued
        // is left out: its key is sent with the state it has then, and a
        // change to it after this point queues it behind the bulk.
        let mut message = Vec::with_capacity(128);
        for (queued, bytes) in self.internal.wire_entries() {
            if queued {
                continue;
            }
            message.clear();
            message.push(wire::UPSERT_VARIANT);
            message.extend_from_slice(bytes);
            self.queue.push_bulk_flow(&message);
        }
        self.queue.push_back(Item::BulkEnd {
            id,
            count: self.internal.len() as u64,
        });
        self.bulk_pending = true;
        self.stats.bulks_sent += 1;
    }

    // ---- receive side -----------------------------------------------------

    /// A datagram from `link`. Malformed ones are counted by reason and
    /// dropped.
    pub fn on_datagram(&mut self, bytes: &[u8], link: usize, now_ms: u64) {
        self.tick(now_ms);
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        if let Some(l) = self.stats.links.get_mut(link) {
            l.recv_packets += 1;
            l.recv_bytes += bytes.len() as u64;
        }
        // No peer of ours sends more than the path MTU allows (the same on
        // every node): don't spend a decode on it.
        if bytes.len() > self.cfg.max_payload {
            self.stats.malformed("oversized");
            if let Some(l) = self.stats.links.get_mut(link) {
                l.errors += 1;
            }
            return;
        }
        let (header, messages) = match decode_datagram(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.stats.malformed(e.reason());
                if let Some(l) = self.stats.links.get_mut(link) {
                    l.errors += 1;
                }
                return;
            }
        };
        if header.node_id == self.cfg.node_id {
            self.stats.malformed("own_node_id");
            return;
        }
        if !self.peers.contains_key(&header.node_id) && self.peers.len() >= self.cfg.max_peers {
            self.stats.malformed("too_many_peers");
            return;
        }
        if let Some(l) = self.links.get_mut(link) {
            l.last_recv_ms = Some(self.now);
        }
        self.stats.messages_received += messages.len() as u64;
        let sender = header.node_id;
        let params = self.rx_params();
        let now = self.now;
        let reliable = header.is_reliable();
        // ALARM never asks: the refresh brings a new peer's table.
        let retry = (self.cfg.mode != Mode::Alarm).then(|| now + self.resync_retry_ms());
        let timeout = self.cfg.peer_timeout_ms;
        match self.peers.get_mut(&sender) {
            Some(p) if header.epoch == p.epoch => p.last_heard_ms = now,
            Some(p)
                if now.saturating_sub(p.last_heard_ms) < timeout
                    && (p.prev_epoch == Some(header.epoch)
                        || header.epoch.wrapping_add(1) == p.epoch) =>
            {
                self.stats.malformed("stale_epoch");
                return;
            }
            existing => {
                let prev_epoch = existing.as_ref().map(|p| p.epoch);
                // First contact or a restart: start its stream where it is
                // and ask for its table, after a pause: our start-up request
                // may already have reached it, and its bulk cancels this.
                // How far it acked our stream stays true: its acks are about
                // our epoch, not its own (a rollover keeps its receive side).
                if existing.is_some() {
                    self.stats.peer_restarts += 1;
                }
                let tx_acked = existing.as_ref().map_or(0, |p| p.tx_acked);
                self.peers.insert(
                    sender,
                    Peer {
                        epoch: header.epoch,
                        prev_epoch,
                        last_heard_ms: now,
                        rx: RxStream::new(header.seq, reliable, now, &params),
                        rx_bulk: None,
                        tx_acked,
                        seen: SeqCounter::new(header.seq, reliable),
                        resync_retry: retry,
                    },
                );
                self.external_cache(sender);
            }
        }
        if self.owe_bulk {
            // We dropped what waited for a peer while nobody listened.
            self.owe_bulk = false;
            self.start_bulk();
        }
        if reliable && self.cfg.mode != Mode::Ftfw {
            // Best effort: applied as it arrives; the number is for stats.
            if let Some(p) = self.peers.get_mut(&sender) {
                self.stats.lost += p.seen.on_data(header.seq);
            }
            for m in messages {
                self.apply(sender, m);
            }
        } else if reliable {
            let Some(p) = self.peers.get_mut(&sender) else {
                return;
            };
            let outcome = p.rx.on_reliable(header.seq, messages, now, &params);
            self.stats.lost += outcome.lost;
            self.stats.duplicates += u64::from(outcome.duplicate);
            self.stats.reorder_overflow += u64::from(outcome.overflow);
            self.stats.reorder_too_far += u64::from(outcome.too_far);
            for batch in outcome.deliver {
                for m in batch {
                    self.apply(sender, m);
                }
            }
        } else {
            let ftfw = self.cfg.mode == Mode::Ftfw;
            if let Some(p) = self.peers.get_mut(&sender) {
                self.stats.lost += if ftfw {
                    p.rx.on_control(header.seq)
                } else {
                    p.seen.on_control(header.seq)
                };
            }
            for m in messages {
                if m.is_data() {
                    self.stats.malformed("data_in_control");
                } else {
                    self.apply(sender, m);
                }
            }
        }
    }

    /// Whether this node's mode uses a message at all; the others are
    /// ignored (a misconfigured peer's acks cannot disturb a best-effort
    /// sender, nor bulks and resyncs an ALARM one).
    fn mode_uses(&self, msg: &Message) -> bool {
        match self.cfg.mode {
            Mode::Ftfw => true,
            Mode::Notrack => !matches!(
                msg,
                Message::Ack { .. } | Message::Nack { .. } | Message::Resume { .. }
            ),
            Mode::Alarm => matches!(
                msg,
                Message::Upsert(_) | Message::Delete(_) | Message::Alive
            ),
        }
    }

    /// Apply one message from `sender` (in FTFW, data messages arrive in
    /// order; in the best-effort modes as they came).
    fn apply(&mut self, sender: u32, msg: Message) {
        let now = self.now;
        if !self.mode_uses(&msg) {
            return;
        }
        match msg {
            Message::Upsert(wf) => {
                let flow = wf.into_flow();
                let copy = self.cfg.record_applied.then(|| flow.clone());
                // Outside a bulk, a flow sent again was reported again
                // (a change or a timeout traffic refreshed): its stamp,
                // which orders commits, moves even if its bytes did not.
                let in_bulk = self.peers.get(&sender).is_some_and(|p| p.rx_bulk.is_some());
                let cache = self.external_cache(sender);
                let change = if in_bulk {
                    cache.upsert(flow, now)
                } else {
                    cache.upsert_reported(flow, now)
                };
                if let Some(flow) = copy {
                    match change {
                        Upsert::Created => self.applied.push(Applied::Created(flow)),
                        Upsert::Updated => self.applied.push(Applied::Updated(flow)),
                        Upsert::Unchanged => {}
                    }
                }
            }
            Message::Delete(wk) => {
                let key = wk.to_key();
                let removed = self.external_cache(sender).remove(&key);
                if self.cfg.record_applied && removed.is_some() {
                    self.applied.push(Applied::Delete(key));
                }
            }
            Message::BulkBegin { id } => {
                self.stats.bulks_received += 1;
                let generation = self.external_cache(sender).begin_generation();
                if let Some(p) = self.peers.get_mut(&sender) {
                    p.rx_bulk = Some((id, generation));
                    p.resync_retry = None;
                }
            }
            Message::BulkEnd { id, .. } => {
                let Some(p) = self.peers.get_mut(&sender) else {
                    return;
                };
                if let Some((bulk, generation)) = p.rx_bulk {
                    if bulk == id {
                        p.rx_bulk = None;
                        let cache = self.external_cache(sender);
                        let swept = cache.sweep_older_than(generation);
                        if !swept.is_empty() {
                            self.stats.bulk_swept += 1;
                        }
                        if self.cfg.record_applied {
                            self.applied.extend(swept.into_iter().map(Applied::Delete));
                        }
                    }
                }
            }
            Message::Ack { node, epoch, upto } => {
                if node != self.cfg.node_id || epoch != self.epoch {
                    return;
                }
                self.stats.acks_received += 1;
                let last = self.next_seq.saturating_sub(1);
                if let Some(p) = self.peers.get_mut(&sender) {
                    p.tx_acked = p.tx_acked.max(upto.min(last));
                }
            }
            Message::Nack {
                node,
                epoch,
                from,
                to,
            } => {
                if node == self.cfg.node_id && epoch == self.epoch {
                    self.stats.nacks_received += 1;
                    self.on_nack(from, to);
                }
            }
            Message::ResyncRequest { node } => {
                if node.is_none_or(|n| n == self.cfg.node_id) {
                    self.stats.resyncs_requested_received += 1;
                    self.start_bulk();
                }
            }
            Message::Resume { from } => {
                self.stats.resumes_received += 1;
                let params = self.rx_params();
                let Some(p) = self.peers.get_mut(&sender) else {
                    return;
                };
                let (deliver, skipped) = p.rx.resume(from, now, &params);
                if skipped {
                    // Bulk markers may have been skipped: its bulk follows.
                    p.rx_bulk = None;
                }
                for batch in deliver {
                    for m in batch {
                        self.apply(sender, m);
                    }
                }
            }
            Message::Alive => {}
            Message::Digest { count, hash } => {
                self.stats.digests_received += 1;
                let (len, digest) = self
                    .external
                    .get(&sender)
                    .map_or((0, 0), |c| (c.len() as u64, c.digest()));
                if (len, digest) != (count, hash) {
                    // Our view of it diverged: pull its table; the bulk's
                    // sweep repairs missing, extra and different flows.
                    // (Unless we are asking already: its bulk is coming.)
                    self.stats.digest_mismatches += 1;
                    if let Some(p) = self.peers.get_mut(&sender) {
                        p.resync_retry.get_or_insert(now);
                    }
                }
            }
        }
    }

    fn on_nack(&mut self, from: u32, to: u32) {
        let last = self.next_seq.saturating_sub(1);
        let to = to.min(last);
        if from > to {
            return;
        }
        let oldest = self.resend.oldest().unwrap_or(self.next_seq);
        if from < oldest {
            // Never silent loss: say where we can resume, and send a bulk.
            self.control.push(Message::Resume { from: oldest });
            self.stats.resumes_sent += 1;
            self.start_bulk();
        }
        for seq in from.max(oldest)..=to {
            self.retransmit.insert(seq);
        }
    }

    // ---- send side --------------------------------------------------------

    fn live_min_acked(&self) -> Option<u32> {
        self.peers
            .values()
            .filter(|p| self.peer_alive(p))
            .map(|p| p.tx_acked)
            .min()
    }

    /// Our sequence numbers are running out: start a new epoch of our own,
    /// numbered from 1, and send our whole table in it. Peers take a new
    /// epoch for a restart: they start our stream afresh, hold late
    /// datagrams of the old one for stale, and the bulk rebuilds their view.
    /// What the old epoch left unacknowledged is dropped: the bulk covers it.
    fn new_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.next_seq = 1;
        self.resend = ResendQueue::default();
        self.retransmit.clear();
        self.rto_armed_ms = self.now;
        for p in self.peers.values_mut() {
            p.tx_acked = 0;
        }
        self.stats.epoch_rollovers += 1;
        self.start_bulk();
    }

    /// Forget peers down for long with nothing of theirs cached (a node
    /// removed from the cluster, or a stray id), so they stop counting
    /// toward `max_peers`.
    fn forget_dead_peers(&mut self) {
        let horizon = self
            .cfg
            .peer_timeout_ms
            .saturating_mul(FORGET_AFTER_TIMEOUTS);
        let now = self.now;
        let external = &self.external;
        let gone: Vec<u32> = self
            .peers
            .iter()
            .filter(|(id, p)| {
                now.saturating_sub(p.last_heard_ms) >= horizon
                    && external.get(id).is_none_or(FlowCache::is_empty)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.peers.remove(&id);
            self.external.remove(&id);
            self.stats.peers_forgotten += 1;
        }
    }

    fn prune(&mut self) {
        if let Some(upto) = self.live_min_acked() {
            if self.resend.prune_upto(upto) > 0 {
                self.rto_armed_ms = self.now;
            }
        }
    }

    /// Links data goes out on: the lowest one that is usable, or else every
    /// link whose interface is up (or every link, if none is).
    fn data_links(&self) -> Vec<usize> {
        let timeout = self.cfg.peer_timeout_ms;
        if let Some(i) = self.links.iter().position(|l| l.usable(self.now, timeout)) {
            return vec![i];
        }
        let with_carrier: Vec<usize> = (0..self.links.len())
            .filter(|&i| self.links.get(i).is_some_and(|l| !l.carrier_lost))
            .collect();
        if with_carrier.is_empty() {
            (0..self.links.len()).collect()
        } else {
            with_carrier
        }
    }

    /// The link data goes out on now, if one is usable.
    pub fn active_link(&self) -> Option<usize> {
        let timeout = self.cfg.peer_timeout_ms;
        self.links.iter().position(|l| l.usable(self.now, timeout))
    }

    /// The daemon's view of a link's interface (operstate and carrier): a
    /// link whose interface is down carries no data until it is up again and
    /// datagrams arrive on it.
    pub fn set_link_carrier(&mut self, link: usize, up: bool) {
        if let Some(l) = self.links.get_mut(link) {
            if !up {
                l.last_recv_ms = None;
            }
            l.carrier_lost = !up;
        }
        if let Some(s) = self.stats.links.get_mut(link) {
            s.up = self
                .links
                .get(link)
                .is_some_and(|l| l.usable(self.now, self.cfg.peer_timeout_ms));
        }
    }

    fn emit(&mut self, out: &mut Vec<Transmit>, links: &[usize], bytes: Vec<u8>) {
        self.last_send_ms = self.now;
        for &link in links {
            self.stats.datagrams_sent += 1;
            self.stats.bytes_sent += bytes.len() as u64;
            if let Some(l) = self.stats.links.get_mut(link) {
                l.sent_packets += 1;
                l.sent_bytes += bytes.len() as u64;
            }
            out.push(Transmit {
                link,
                bytes: bytes.clone(),
            });
        }
    }

    fn control_header(&self) -> Header {
        Header {
            flags: 0,
            node_id: self.cfg.node_id,
            epoch: self.epoch,
            seq: self.next_seq.saturating_sub(1),
            body_len: 0,
            tag_len: 0,
        }
    }

    fn count_sent(&mut self, msgs: &[Message]) {
        self.stats.messages_sent += msgs.len() as u64;
        for m in msgs {
            match m {
                Message::Ack { .. } => self.stats.acks_sent += 1,
                Message::Nack { .. } => self.stats.nacks_sent += 1,
                Message::ResyncRequest { .. } => self.stats.resyncs_requested_sent += 1,
                _ => {}
            }
        }
    }

    /// The item's message, encoded into `out` (cleared first). A cached
    /// flow is already stored in its wire encoding: it is copied, not
    /// re-encoded.
    fn build_into(&mut self, item: &Item, out: &mut Vec<u8>) {
        out.clear();
        let message = match item {
            Item::BulkFlow { .. } => {
                out.extend_from_slice(self.queue.bulk_message(item));
                return;
            }
            Item::Key(k) => match self.internal.take_for_send(k) {
                Some(bytes) => {
                    out.push(wire::UPSERT_VARIANT);
                    out.extend_from_slice(bytes);
                    return;
                }
                None => Message::Delete(WireKey::from(k)),
            },
            Item::BulkBegin(id) => Message::BulkBegin { id: *id },
            Item::BulkEnd { id, count } => Message::BulkEnd {
                id: *id,
                count: *count,
            },
        };
        wire::encode_message_into(&message, out);
    }

    /// Everything due now: control (acks, nacks, resync requests, resumes),
    /// retransmissions, new data within the window, keepalives.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Vec<Transmit> {
        self.tick(now_ms);
        let now = self.now;
        let mut out = Vec::new();
        self.forget_dead_peers();
        self.prune();
        self.bound_backlog_while_alone();
        let links = self.data_links();

        // Control messages; none for peers that are down (they resume when
        // it is heard again).
        let params = self.rx_params();
        let retry = self.resync_retry_ms();
        let timeout = self.cfg.peer_timeout_ms;
        let mut ctl = std::mem::take(&mut self.control);
        let ftfw = self.cfg.mode == Mode::Ftfw;
        for (&id, p) in self.peers.iter_mut() {
            if now.saturating_sub(p.last_heard_ms) >= timeout {
                continue;
            }
            if ftfw {
                ctl.extend(p.rx.poll(id, p.epoch, now, &params));
            }
            if p.resync_retry.is_some_and(|t| t <= now) {
                p.resync_retry = Some(now + retry);
                ctl.push(Message::ResyncRequest { node: Some(id) });
            }
        }
        if !ctl.is_empty() {
            self.count_sent(&ctl);
            let header = self.control_header();
            for body in Packer::pack_all(self.cfg.max_payload, &ctl) {
                self.emit(&mut out, &links, body.seal(&header));
            }
        }

        // Retransmissions asked for by NACKs, then on timeout.
        let mut resend: Vec<u32> = std::mem::take(&mut self.retransmit).into_iter().collect();
        let last = self.next_seq.saturating_sub(1);
        let lagging = self
            .peers
            .values()
            .any(|p| self.peer_alive(p) && p.tx_acked < last);
        if !self.resend.is_empty()
            && lagging
            && now >= self.rto_armed_ms + self.cfg.rto_ms
            && resend.is_empty()
        {
            if let Some(oldest) = self.resend.oldest() {
                resend.extend((0..RTO_BURST as u32).map(|i| oldest.saturating_add(i)));
            }
            self.rto_armed_ms = now;
        }
        for seq in resend {
            if let Some(bytes) = self.resend.get(seq).map(<[u8]>::to_vec) {
                self.stats.retransmits += 1;
                self.emit(&mut out, &links, bytes);
            }
        }

        // ALARM: the flows whose refresh is due join the queue.
        if let Some(r) = self.refresh.as_mut() {
            let due = r.take_due(now);
            self.stats.alarm_refreshes += due.len() as u64;
            for key in due {
                self.enqueue(key);
            }
        }

        // New data, within the window (FTFW); sent once otherwise. A few
        // keys wait up to batch_delay_ms for company, so that a stream of
        // single events still leaves in full datagrams.
        if self.queue.is_empty() {
            self.queue_since_ms = None;
        } else if self.queue_since_ms.is_none() {
            self.queue_since_ms = Some(now);
        }
        let hold = self.holding_for_batch(now);
        let mut encoded = Vec::with_capacity(128);
        while !hold && !self.queue.is_empty() {
            if self.next_seq > self.seq_limit {
                self.new_epoch();
            }
            if ftfw && self.resend.len() >= self.cfg.window {
                self.stats.window_full += 1;
                break;
            }
            let mut packer = Packer::new(self.cfg.max_payload);
            let mut msgs = 0u64;
            while let Some(item) = self.queue.front().copied() {
                self.build_into(&item, &mut encoded);
                match packer.try_push_encoded(&encoded) {
                    Push::Full => break,
                    Push::Added | Push::TooLarge => {
                        msgs += 1;
                        self.queue.pop_front();
                        if matches!(item, Item::BulkBegin(_)) {
                            self.bulk_pending = false;
                        }
                    }
                }
            }
            let Some(body) = packer.take() else {
                continue;
            };
            self.stats.messages_sent += msgs;
            self.send_in_sequence(&mut out, &links, body);
        }

        if self.digest_wanted() && now >= self.digest_due() {
            self.send_digest(&mut out, &links);
        }

        // ALARM: peers' flows not refreshed in time expire.
        if let Some(clock) = self.expiry.as_mut() {
            let gone = clock.tick(now, self.external.iter_mut());
            self.stats.alarm_expired += gone.len() as u64;
            if self.cfg.record_applied {
                self.applied
                    .extend(gone.into_iter().map(|(_, key)| Applied::Delete(key)));
            }
        }

        // Keepalive, on every link so each stays known to be up.
        if now >= self.last_send_ms + self.cfg.keepalive_ms {
            let body = Packer::pack_all(self.cfg.max_payload, &[Message::Alive]);
            self.stats.messages_sent += 1;
            let all: Vec<usize> = (0..self.links.len()).collect();
            for b in body {
                self.emit(&mut out, &all, b.seal(&self.control_header()));
            }
        }
        for (i, l) in self.links.iter().enumerate() {
            if let Some(s) = self.stats.links.get_mut(i) {
                s.up = l.usable(now, self.cfg.peer_timeout_ms);
            }
        }
        out
    }

    /// A Digest can go out now but for the time: the mode has them, the
    /// queue is empty (so the stream before it describes exactly the table
    /// it digests), the window has room, and someone is listening.
    fn digest_wanted(&self) -> bool {
        self.cfg.mode != Mode::Alarm
            && !self.digests_paused
            && self.cfg.digest_interval_ms > 0
            && self.queue.is_empty()
            && (self.cfg.mode != Mode::Ftfw || self.resend.len() < self.cfg.window)
            && self.peers.values().any(|p| self.peer_alive(p))
    }

    fn digest_due(&self) -> u64 {
        self.last_digest_ms
            .saturating_add(self.cfg.digest_interval_ms)
    }

    /// Send a Digest of the internal cache as it is now, in sequence.
    fn send_digest(&mut self, out: &mut Vec<Transmit>, links: &[usize]) {
        if self.next_seq > self.seq_limit {
            // Its bulk fills the queue: the digest waits for the next time.
            self.new_epoch();
            return;
        }
        let msg = Message::Digest {
            count: self.internal.len() as u64,
            hash: self.internal.digest(),
        };
        let Some(body) = Packer::pack_all(self.cfg.max_payload, &[msg]).pop() else {
            return;
        };
        self.last_digest_ms = self.now;
        self.stats.digests_sent += 1;
        self.stats.messages_sent += 1;
        self.send_in_sequence(out, links, body);
    }

    /// Seal `body` as the next reliable datagram of our stream, keep it for
    /// resending (FTFW) and send it.
    fn send_in_sequence(&mut self, out: &mut Vec<Transmit>, links: &[usize], body: Body) {
        let seq = self.next_seq;
        // Cannot saturate: `new_epoch` restarts the numbers first.
        self.next_seq = self.next_seq.saturating_add(1);
        let header = Header {
            flags: flags::RELIABLE,
            seq,
            ..self.control_header()
        };
        let bytes = body.seal(&header);
        if self.cfg.mode == Mode::Ftfw {
            if self.resend.is_empty() {
                self.rto_armed_ms = self.now;
            }
            self.resend.push(seq, bytes.clone());
        }
        self.emit(out, links, bytes);
    }

    /// True while too few keys are queued to fill a datagram and the oldest
    /// has waited less than batch_delay_ms.
    fn holding_for_batch(&self, now: u64) -> bool {
        let few = self.queue.len().saturating_mul(BATCH_KEY_BYTES) < self.cfg.max_payload;
        few && self
            .queue_since_ms
            .is_some_and(|since| now < since.saturating_add(self.cfg.batch_delay_ms))
    }

    /// The changes made to the external caches since the last call (empty
    /// unless `record_applied`): what warm standby mirrors into the kernel.
    pub fn take_applied(&mut self) -> Vec<Applied> {
        std::mem::take(&mut self.applied)
    }

    /// The transport failed to send on `link`.
    pub fn note_send_error(&mut self, link: usize) {
        if let Some(l) = self.stats.links.get_mut(link) {
            l.errors += 1;
        }
    }

    /// When to call `poll_transmit` at the latest (may be in the past: now).
    pub fn next_deadline(&self) -> Option<u64> {
        let mut t = self.last_send_ms + self.cfg.keepalive_ms;
        let mut at = |x: u64| t = t.min(x);
        let ftfw = self.cfg.mode == Mode::Ftfw;
        let data_ready = !self.queue.is_empty() && (!ftfw || self.resend.len() < self.cfg.window);
        if !self.control.is_empty() || !self.retransmit.is_empty() {
            at(self.now);
        } else if data_ready {
            match (self.holding_for_batch(self.now), self.queue_since_ms) {
                (true, Some(since)) => at(since + self.cfg.batch_delay_ms),
                _ => at(self.now),
            }
        }
        if self.digest_wanted() {
            at(self.digest_due());
        }
        if let Some(due) = self.refresh.as_ref().and_then(RefreshCursor::next_due) {
            at(due);
        }
        if let Some(clock) = &self.expiry {
            if self.external.values().any(|c| !c.is_empty()) {
                at(clock.next_tick());
            }
        }
        let last = self.next_seq.saturating_sub(1);
        for p in self.peers.values() {
            if !self.peer_alive(p) {
                // Nothing is sent to it until it is heard again (an input).
                continue;
            }
            if let Some(d) = p.rx.deadline().filter(|_| ftfw) {
                at(d);
            }
            if let Some(r) = p.resync_retry {
                at(r);
            }
            if p.tx_acked < last && !self.resend.is_empty() {
                at(self.rto_armed_ms + self.cfg.rto_ms);
                // When it times out, the others' acks may free the window.
                at(p.last_heard_ms + self.cfg.peer_timeout_ms);
            }
        }
        Some(t)
    }

    /// Per sender: what we know of it.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(&id, p)| PeerStatus {
                node_id: id,
                epoch: p.epoch,
                alive: self.peer_alive(p),
                last_heard_ms: p.last_heard_ms,
                expected_seq: match self.cfg.mode {
                    Mode::Ftfw => p.rx.expected,
                    Mode::Notrack | Mode::Alarm => p.seen.next(),
                },
                acked_seq: p.tx_acked,
                flows: self.external.get(&id).map_or(0, FlowCache::len),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
