//! Sans-IO replication: the façade `Node` the daemon and the simulation
//! drive, delegating to one part per job.
//!
//! Owns: our epoch and clock high-water mark, the counters, and the wiring
//! between the parts: `config` (the configuration and the types shared
//! with the daemon), `local` (our flows: the internal cache and what of
//! their changes is queued), `peers` (who is talking, epochs, liveness),
//! `links` (which link data takes), `tx` (send queue, sequence numbers,
//! resend window, batching), `rx` (FTFW receive streams), `apply`
//! (messages into the external caches), `bulk` (full and range bulks, and
//! the proof a sweep needs), `digest` (anti-entropy by key range),
//! `alarm` (ALARM's refresh and expiry), `receive` (a datagram's way in:
//! checks, the sender's verdict, delivery, effects) and `poll` (what to send
//! now, and when to be called again). With keys (`enable_auth`), every
//! datagram passes `crate::auth::Guard` at the edges: sealed in `poll`'s
//! `emit`, opened first thing in `receive`. Must not: import tokio, sockets
//! or the clock (time is the `now_ms` argument), talk to the kernel, or
//! grow logic that belongs to a part.
//!
//! The daemon feeds a Node local changes and datagrams, then calls
//! `poll_transmit` after every input and at the latest at `next_deadline`.

mod alarm;
mod apply;
mod bulk;
mod config;
mod digest;
mod expect;
mod links;
mod local;
mod peers;
mod poll;
mod queue;
mod receive;
mod resend;
mod rx;
mod seqstat;
mod stats;
mod tx;

pub use config::{Applied, Mode, Replicate, SyncConfig, SyncError, Transmit};
pub use expect::{AppliedExpect, ExpectReconcile, ExpectView};
pub use local::Reconciling;
pub use stats::{
    DropReason, Drops, LinkStats, PeerCounters, PeerStatus, PeerWire, ReconcileReport, SyncStats,
};

use crate::auth::{AuthStats, Guard, KeyRing};
use crate::cache::{FlowCache, Upsert};
use crate::expect::{ExpectKey, Expectation};
use crate::expect_cache::ExpectCache;
use crate::flow::{Flow, FlowKey};
use crate::wire::Message;
use alarm::{ExpiryClock, RefreshCursor};
use apply::{Ctx, Views};
use bulk::ranges_per_message;
use config::new_cache;
use digest::DigestTx;
use links::Links;
use local::Local;
use peers::{PeerTable, Resync};
use rx::RxParams;
use std::collections::BTreeMap;

/// A peer down for this many `peer_timeout_ms` with nothing in its external
/// cache is forgotten.
const FORGET_AFTER_TIMEOUTS: u64 = 60;
/// ALARM walks the table in this share of `alarm_refresh_ms` (per mille),
/// leaving slack for batching.
const ALARM_LAP_PERMILLE: u64 = 900;

/// What became of the backlog while nobody listened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backlog {
    Kept,
    /// Dropped (see `bound_backlog_while_alone` and `bound_send_queue`):
    /// the next peer heard gets a bulk.
    OweBulk,
}

/// The replication state of one daemon.
#[derive(Debug)]
pub struct Node {
    cfg: SyncConfig,
    epoch: u64,
    now: u64,
    /// Our flows (and ALARM's refresh walk over them).
    local: Local,
    /// Our expectations and their send queue (`cfg.expectations`).
    expects: expect::ExpectTx,
    views: Views,
    peers: PeerTable,
    tx: tx::Sender,
    links: Links,
    stats: SyncStats,
    digest: DigestTx,
    /// ALARM: the receiver's expiry of external flows.
    expiry: Option<ExpiryClock>,
    backlog: Backlog,
    /// With keys: the gate every datagram passes (see `crate::auth`).
    guard: Option<Guard>,
    /// Peers that speak another protocol (conntrackd's, on a migration
    /// link): their messages are applied as they come (`apply_foreign`).
    foreign: BTreeMap<u32, peers::Peer>,
    /// Without keys: sealed datagrams refused (`auth_not_configured`).
    unauthenticated: AuthStats,
}

impl Node {
    /// A node that starts by asking its peers for their tables.
    pub fn new(cfg: SyncConfig, epoch: u64, now_ms: u64) -> Result<Node, SyncError> {
        cfg.validate()?;
        let internal = new_cache(cfg.cache_seed);
        let links = cfg.links;
        let lap_ms = cfg.alarm_refresh_ms.saturating_mul(ALARM_LAP_PERMILLE) / 1000;
        let alarm = cfg.mode == Mode::Alarm;
        let refresh = alarm.then(|| RefreshCursor::new(lap_ms, now_ms));
        let expiry = alarm.then(|| ExpiryClock::new(cfg.alarm_timeout_ms, now_ms));
        let mut node = Node {
            views: Views::new(cfg.record_applied, cfg.cache_seed, cfg.max_flows_per_peer),
            tx: tx::Sender::new(cfg.window, now_ms),
            cfg,
            epoch,
            now: now_ms,
            local: Local::new(internal, refresh),
            expects: expect::ExpectTx::default(),
            peers: PeerTable::default(),
            links: Links::new(links),
            stats: SyncStats {
                links: vec![LinkStats::default(); links],
                ..SyncStats::default()
            },
            digest: DigestTx::Running { last_ms: now_ms },
            expiry,
            backlog: Backlog::Kept,
            guard: None,
            foreign: BTreeMap::new(),
            unauthenticated: AuthStats::default(),
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

    pub fn internal(&self) -> &FlowCache {
        &self.local.cache
    }

    pub fn external(&self) -> &BTreeMap<u32, FlowCache> {
        &self.views.caches
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Seal every datagram from now on with `ring`'s send key, and let in
    /// only datagrams sealed with one of its keys and bound to `cluster`
    /// (call before the first datagram; see `crate::auth`).
    pub fn enable_auth(&mut self, ring: KeyRing, cluster: &str) {
        self.guard = Some(Guard::new(ring, cluster, self.cfg.max_peers, self.epoch));
    }

    /// Replace the keys (a reload); false without `enable_auth`.
    pub fn set_keys(&mut self, ring: KeyRing) -> bool {
        match self.guard.as_mut() {
            Some(g) => {
                g.set_keys(ring);
                true
            }
            None => false,
        }
    }

    /// The keys in use (`None`: sync is not authenticated).
    pub fn keys(&self) -> Option<&KeyRing> {
        self.guard.as_ref().map(Guard::keys)
    }

    /// The authentication counters.
    pub fn auth_stats(&self) -> &AuthStats {
        self.guard
            .as_ref()
            .map_or(&self.unauthenticated, |g| &g.stats)
    }

    /// UDP payload left for header and body: `max_payload` less what
    /// sealing adds.
    fn payload(&self) -> usize {
        let overhead = if self.guard.is_some() {
            crate::wire::AUTH_OVERHEAD
        } else {
            0
        };
        self.cfg.max_payload - overhead
    }

    /// Keys waiting to be sent (coalesced) and datagrams awaiting an ack.
    pub fn backlog(&self) -> (usize, usize) {
        (self.tx.queue.len(), self.tx.resend.len())
    }

    /// Datagrams of the resend window after `acked` (a peer's ack).
    fn unacked_by(&self, acked: u32) -> u32 {
        let Some(oldest) = self.tx.resend.oldest() else {
            return 0;
        };
        self.tx
            .last_seq()
            .saturating_sub(acked.max(oldest.saturating_sub(1)))
    }

    /// Test seam: the next reliable datagram gets `seq` (a fresh Node only,
    /// before it has sent data), to reach the end of the sequence space.
    #[cfg(test)]
    pub(crate) fn start_seq_at(&mut self, seq: u32) {
        self.tx.start_seq_at(seq);
    }

    /// Test seam: the last sequence number of an epoch.
    #[cfg(test)]
    pub(crate) fn seq_limit(&self) -> u32 {
        self.tx.seq_limit()
    }

    /// Test seam: the next sequence number.
    #[cfg(test)]
    pub(crate) fn next_seq(&self) -> u32 {
        self.tx.last_seq().saturating_add(1)
    }

    /// Test seam: a peer's external cache, to damage behind the protocol's
    /// back.
    #[cfg(test)]
    pub(crate) fn external_mut(&mut self, peer: u32) -> Option<&mut FlowCache> {
        self.views.caches.get_mut(&peer)
    }

    fn tick(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
    }

    fn any_peer_alive(&self) -> bool {
        self.peers.any_alive(self.now, self.cfg.peer_timeout_ms)
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

    fn resync_retry_ms(&self) -> u64 {
        (self.cfg.rto_ms * 4).max(self.cfg.keepalive_ms)
    }

    /// How long a range repair gathers flows before it starts afresh.
    fn repair_restart_ms(&self) -> u64 {
        self.cfg
            .digest_interval_ms
            .max(self.resync_retry_ms().saturating_mul(4))
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            mode: self.cfg.mode,
            node_id: self.cfg.node_id,
            epoch: self.epoch,
            last_seq: self.tx.last_seq(),
            now: self.now,
            retry_ms: self.resync_retry_ms(),
            restart_ms: self.cfg.digest_interval_ms.max(self.resync_retry_ms() * 4),
            rx: self.rx_params(),
        }
    }

    /// Keep the send queue within its bounds (see
    /// `bound_backlog_while_alone` and `bound_send_queue`).
    fn bound_backlog(&mut self) {
        self.bound_backlog_while_alone();
        self.bound_send_queue();
    }

    /// FTFW with nobody listening and more queued than `alone_queue_max`:
    /// forget the queue and the resend window; whoever is heard next gets
    /// a bulk, which carries the same flows in their latest state. A peer
    /// that kept its epoch also finds the gap in our numbers and is told
    /// where to resume.
    fn bound_backlog_while_alone(&mut self) {
        if self.cfg.mode != Mode::Ftfw
            || self.tx.queue.len() <= self.cfg.alone_queue_max
            || self.any_peer_alive()
        {
            return;
        }
        self.stats.backlog_drops += 1;
        let dropped = self.tx.drop_backlog(&mut self.local.cache);
        self.stats.backlog_dropped_items += dropped as u64;
        self.backlog = Backlog::OweBulk;
    }

    /// More than `send_queue_max` keys wait (a peer holds our window
    /// without acknowledging while our flows churn, or they change faster
    /// than the link carries them): forget the queue, not what was sent,
    /// and send a bulk instead, now if a peer listens, else to the next
    /// one heard. The bulk carries every flow in its latest state and its
    /// end sweeps what we no longer have: the dropped changes are not lost.
    /// (ALARM sends no bulks: its refresh re-sends every flow, and a
    /// dropped delete expires at the peers.)
    fn bound_send_queue(&mut self) {
        if self.tx.queue.keys() <= self.cfg.send_queue_max {
            return;
        }
        self.stats.send_queue_drops += 1;
        let dropped = self.tx.drop_queue(&mut self.local.cache);
        self.stats.backlog_dropped_items += dropped as u64;
        if self.any_peer_alive() {
            self.start_bulk();
        } else {
            self.backlog = Backlog::OweBulk;
        }
    }

    // ---- local side -------------------------------------------------------

    /// A kernel NEW/UPDATE. `replicate = false`: our own commit's echo; cache
    /// it without sending.
    pub fn local_upsert(&mut self, flow: &Flow, now_ms: u64, replicate: bool) -> Upsert {
        self.tick(now_ms);
        let what = self.local.upsert(flow, now_ms, replicate, &mut self.tx);
        self.count_unsendable();
        what
    }

    /// `stats.unsendable`: what the wire format's checks kept out of our
    /// caches (flows and expectations).
    fn count_unsendable(&mut self) {
        self.stats.unsendable = self.local.refused + self.expects.refused;
    }

    /// Does a peer's cache hold this flow?
    pub fn holds_peer_flow(&self, key: &FlowKey) -> bool {
        self.views.caches.values().any(|c| c.contains(key))
    }

    /// The flow with this key as a peer holds it.
    pub fn peer_flow(&self, key: &FlowKey) -> Option<Flow> {
        self.views.caches.values().find_map(|c| c.flow(key))
    }

    /// A kernel DESTROY.
    pub fn local_delete(&mut self, key: &FlowKey, now_ms: u64, replicate: bool) {
        self.tick(now_ms);
        self.local.delete(key, replicate, &mut self.tx);
    }

    /// Make the internal cache equal to a kernel dump, and queue for
    /// sending what `replicate` says.
    pub fn reconcile_internal(
        &mut self,
        kernel: Vec<Flow>,
        now_ms: u64,
        replicate: Replicate,
    ) -> ReconcileReport {
        let mut run = self.reconcile_begin(now_ms, replicate);
        self.reconcile_chunk(&mut run, kernel, now_ms);
        self.reconcile_finish(run, now_ms)
    }

    /// `reconcile_internal` in steps, so that a dump of a million flows is
    /// compared a chunk at a time between other work: begin, then every
    /// chunk of the dump, then finish. Local changes made in between are
    /// kept (they are newer than the dump).
    pub fn reconcile_begin(&mut self, now_ms: u64, replicate: Replicate) -> Reconciling {
        self.tick(now_ms);
        if replicate == Replicate::Nothing {
            // `-R` (or start-up): our table is the reference again.
            self.digest.resume();
        }
        self.local.reconcile_begin(replicate)
    }

    /// Compare one chunk of the dump (see `reconcile_begin`).
    pub fn reconcile_chunk(&mut self, run: &mut Reconciling, kernel: Vec<Flow>, now_ms: u64) {
        self.tick(now_ms);
        let caches = &self.views.caches;
        let holds_peer_flow = |key: &FlowKey| caches.values().any(|c| c.contains(key));
        self.local
            .reconcile_chunk(run, kernel, now_ms, holds_peer_flow, &mut self.tx);
        self.count_unsendable();
    }

    /// The whole dump was compared: what it lacked is gone.
    pub fn reconcile_finish(&mut self, run: Reconciling, now_ms: u64) -> ReconcileReport {
        self.tick(now_ms);
        self.local.reconcile_finish(run, &mut self.tx)
    }

    /// Forget our flows (`-f internal`); nothing is sent, pending keys are
    /// dropped (they would otherwise go out as deletes).
    pub fn flush_internal(&mut self) {
        self.digest.pause();
        self.local.flush(&mut self.tx);
        self.expects.flush();
    }

    /// Forget the peers' flows (`-f external`).
    pub fn flush_external(&mut self) {
        for cache in self.views.caches.values_mut() {
            cache.clear();
        }
        self.views.expects.flush();
        for p in self.peers.values_mut() {
            p.bulk = bulk::BulkRx::Idle;
            p.wants.clear();
        }
    }

    /// Remove one flow from a peer's external cache (a test seam: the
    /// daemon reaches it only in builds with the `test-seams` feature).
    pub fn remove_external(&mut self, peer: u32, key: &FlowKey) -> bool {
        self.views
            .caches
            .get_mut(&peer)
            .is_some_and(|c| c.remove(key).is_some())
    }

    /// `-n`: ask every peer for its full table (nothing in ALARM mode).
    pub fn request_resync(&mut self, now_ms: u64) {
        self.tick(now_ms);
        if self.cfg.mode == Mode::Alarm {
            return;
        }
        self.tx.control.push(Message::ResyncRequest { node: None });
        let retry = self.now + self.resync_retry_ms();
        for p in self.peers.values_mut() {
            p.resync = Resync::Asking { next_ms: retry };
        }
    }

    /// `-B`: send our full table (nothing in ALARM mode: the refresh does).
    pub fn send_bulk(&mut self, now_ms: u64) {
        self.tick(now_ms);
        self.digest.resume();
        self.start_bulk();
    }

    /// Our kernel table is being flushed on our own (`-F`, the flush `-t`
    /// schedules): peers keep their view of our flows (see `DigestTx`).
    pub fn pause_digests(&mut self) {
        self.digest.pause();
    }

    /// Digests (and range bulks) wait for `-R` or `-B` after a local flush.
    pub fn digests_paused(&self) -> bool {
        self.digest.paused()
    }

    fn start_bulk(&mut self) {
        if self.cfg.mode == Mode::Alarm {
            return;
        }
        self.expects_queue_bulk();
        if self
            .tx
            .bulks
            .start_full(&self.local.cache, &mut self.tx.queue)
        {
            self.stats.bulks_sent += 1;
        }
    }

    /// A peer asked for some ranges of our table. Not while our digests
    /// are paused (the repair would remove what a local flush purged from
    /// the peers' views), nor while a full bulk waits to go out.
    fn start_range_bulks(&mut self, ranges: &[u16]) {
        if self.cfg.mode == Mode::Alarm
            || self.digest.paused()
            || self.tx.bulks.state != bulk::BulkTx::Idle
        {
            return;
        }
        let n = self
            .tx
            .bulks
            .start_ranges(&self.local.cache, &mut self.tx.queue, ranges);
        self.stats.range_bulks_sent += n as u64;
    }

    /// Ask `peer` for these ranges of its table (control messages, each
    /// fitting a datagram).
    fn ask_ranges(&mut self, peer: u32, ranges: &[u16]) {
        for chunk in ranges.chunks(ranges_per_message(self.payload())) {
            self.tx.control.push(Message::RangeRequest {
                node: peer,
                ranges: chunk.to_vec(),
            });
        }
    }

    // ---- expectations -----------------------------------------------------

    /// Queue a bulk of our expectations (with expectation sync on).
    fn expects_queue_bulk(&mut self) {
        if self.cfg.expectations {
            self.expects.queue_bulk();
        }
    }

    /// A kernel expectation NEW (one the daemon replicates). `replicate =
    /// false`: our own commit's echo; cache it without sending.
    pub fn local_expect_upsert(&mut self, e: Expectation, now_ms: u64, replicate: bool) -> Upsert {
        self.tick(now_ms);
        let replicate = replicate && self.cfg.expectations;
        let what = self.expects.upsert(e, now_ms, replicate);
        self.count_unsendable();
        what
    }

    /// A kernel expectation DESTROY.
    pub fn local_expect_delete(&mut self, key: &ExpectKey, now_ms: u64, replicate: bool) -> bool {
        self.tick(now_ms);
        let replicate = replicate && self.cfg.expectations;
        self.expects.delete(key, replicate)
    }

    /// Make our expectations equal to a kernel dump (of the ones the
    /// daemon replicates); send the differences when `replicate`.
    pub fn reconcile_expectations(
        &mut self,
        dump: Vec<Expectation>,
        now_ms: u64,
        replicate: bool,
    ) -> ExpectReconcile {
        self.tick(now_ms);
        let replicate = replicate && self.cfg.expectations;
        let report = self.expects.reconcile(dump, now_ms, replicate);
        self.count_unsendable();
        report
    }

    /// Our expectations.
    pub fn internal_expectations(&self) -> &ExpectCache {
        &self.expects.cache
    }

    /// The peers' expectations, by node id.
    pub fn external_expectations(&self) -> impl Iterator<Item = (u32, &ExpectCache)> + '_ {
        self.views
            .expects
            .views
            .iter()
            .map(|(id, v)| (*id, &v.cache))
    }

    /// Expectations refused because their peer's view was full
    /// (`MAX_EXPECTATIONS_PER_PEER`).
    pub fn expectations_refused(&self) -> u64 {
        self.views.expects.refused_full
    }

    /// The changes made to the peers' expectations since the last call
    /// (empty unless `record_applied`): what warm standby mirrors.
    pub fn take_applied_expectations(&mut self) -> Vec<AppliedExpect> {
        std::mem::take(&mut self.views.expects.applied)
    }

    /// Changes from a peer that speaks another protocol (conntrackd's, on a
    /// migration link; its decoder turns them into our messages): applied
    /// to `sender`'s external view in order, with none of our sequence,
    /// bulk or digest machinery. Warm standby mirrors them as any peer's.
    pub fn apply_foreign(&mut self, sender: u32, msgs: Vec<Message>, now_ms: u64) {
        self.tick(now_ms);
        let ctx = self.ctx();
        let params = self.rx_params();
        let peer = self
            .foreign
            .entry(sender)
            .or_insert_with(|| peers::Peer::new(0, 0, false, now_ms, &params));
        peer.last_heard_ms = now_ms;
        let mut effects = Vec::new();
        self.views
            .apply_all(sender, peer, msgs, &ctx, &mut self.stats, &mut effects);
    }

    // ---- receive side -----------------------------------------------------

    // ---- send side --------------------------------------------------------

    /// The link data goes out on now, if one is usable.
    pub fn active_link(&self) -> Option<usize> {
        self.links.active(self.now, self.cfg.peer_timeout_ms)
    }

    /// The daemon's view of a link's interface (operstate and carrier): a
    /// link whose interface is down carries no data until it is up again and
    /// datagrams arrive on it.
    pub fn set_link_carrier(&mut self, link: usize, up: bool) {
        self.links.set_carrier(link, up);
        if let Some(s) = self.stats.links.get_mut(link) {
            s.up = self.links.usable(link, self.now, self.cfg.peer_timeout_ms);
        }
    }

    /// The changes made to the external caches since the last call (empty
    /// unless `record_applied`): what warm standby mirrors into the kernel.
    pub fn take_applied(&mut self) -> Vec<Applied> {
        std::mem::take(&mut self.views.applied)
    }

    /// The transport failed to send on `link`.
    pub fn note_send_error(&mut self, link: usize) {
        if let Some(l) = self.stats.links.get_mut(link) {
            l.send_errors += 1;
        }
    }

    /// Per sender: what we know of it.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(&id, p)| PeerStatus {
                node_id: id,
                epoch: p.epoch,
                alive: p.alive(self.now, self.cfg.peer_timeout_ms),
                last_heard_ms: p.last_heard_ms,
                expected_seq: match self.cfg.mode {
                    Mode::Ftfw => p.rx.expected,
                    Mode::Notrack | Mode::Alarm => p.seen.next(),
                },
                acked_seq: p.tx_acked,
                flows: self.views.caches.get(&id).map_or(0, FlowCache::len),
                reordered: p.rx.buffered(),
                rx_lag: match self.cfg.mode {
                    Mode::Ftfw => p.rx.lag(),
                    Mode::Notrack | Mode::Alarm => 0,
                },
                unacked: self.unacked_by(p.tx_acked),
                counts: p.counts,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
