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
//! the proof a sweep needs), `digest` (anti-entropy by key range) and
//! `alarm` (ALARM's refresh and expiry). Must not: import tokio, sockets
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
mod links;
mod local;
mod peers;
mod queue;
mod resend;
mod rx;
mod seqstat;
mod stats;
mod tx;

pub use config::{Applied, Mode, Replicate, SyncConfig, SyncError, Transmit};
pub use local::Reconciling;
pub use stats::{DropReason, Drops, LinkStats, PeerStatus, ReconcileReport, SyncStats};

use crate::cache::FlowCache;
use crate::flow::{Flow, FlowKey};
use crate::wire::{decode_datagram, Header, Message, Packer};
use alarm::{ExpiryClock, RefreshCursor};
use apply::{Ctx, Effect, Views};
use bulk::ranges_per_message;
use config::new_cache;
use digest::{digest_messages, DigestTx};
use links::Links;
use local::Local;
use peers::{Peer, PeerTable, Resync, Verdict};
use rx::RxParams;
use std::collections::BTreeMap;

/// A peer down for this many `peer_timeout_ms` with nothing in its external
/// cache is forgotten.
const FORGET_AFTER_TIMEOUTS: u64 = 60;
/// ALARM walks the table in this share of `alarm_refresh_ms` (per mille),
/// leaving slack for batching.
const ALARM_LAP_PERMILLE: u64 = 900;

/// What became of the FTFW backlog while nobody listened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backlog {
    Kept,
    /// Dropped (see `bound_backlog_while_alone`): the next peer heard gets
    /// a bulk.
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
    views: Views,
    peers: PeerTable,
    tx: tx::Sender,
    links: Links,
    stats: SyncStats,
    digest: DigestTx,
    /// ALARM: the receiver's expiry of external flows.
    expiry: Option<ExpiryClock>,
    backlog: Backlog,
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
            views: Views::new(cfg.record_applied, cfg.cache_seed),
            tx: tx::Sender::new(cfg.window, now_ms),
            cfg,
            epoch,
            now: now_ms,
            local: Local::new(internal, refresh),
            peers: PeerTable::default(),
            links: Links::new(links),
            stats: SyncStats {
                links: vec![LinkStats::default(); links],
                ..SyncStats::default()
            },
            digest: DigestTx::Running { last_ms: now_ms },
            expiry,
            backlog: Backlog::Kept,
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

    /// Keys waiting to be sent (coalesced) and datagrams awaiting an ack.
    pub fn backlog(&self) -> (usize, usize) {
        (self.tx.queue.len(), self.tx.resend.len())
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

    // ---- local side -------------------------------------------------------

    /// A kernel NEW/UPDATE. `replicate = false`: our own commit's echo; cache
    /// it without sending.
    pub fn local_upsert(&mut self, flow: Flow, now_ms: u64, replicate: bool) {
        self.tick(now_ms);
        self.local.upsert(flow, now_ms, replicate, &mut self.tx);
    }

    /// Does a peer's cache hold this flow?
    pub fn holds_peer_flow(&self, key: &FlowKey) -> bool {
        self.views.caches.values().any(|c| c.contains(key))
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
    }

    /// Forget the peers' flows (`-f external`).
    pub fn flush_external(&mut self) {
        for cache in self.views.caches.values_mut() {
            cache.clear();
        }
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
        for chunk in ranges.chunks(ranges_per_message(self.cfg.max_payload)) {
            self.tx.control.push(Message::RangeRequest {
                node: peer,
                ranges: chunk.to_vec(),
            });
        }
    }

    fn handle(&mut self, sender: u32, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::SendBulk => self.start_bulk(),
                Effect::SendRanges(r) => self.start_range_bulks(&r),
                Effect::AskRanges(r) => self.ask_ranges(sender, &r),
                Effect::Resend { from, to } => {
                    if let Err(oldest) = self.tx.on_nack(from, to) {
                        // Never silent loss: say where we can resume, and
                        // send a bulk.
                        self.tx.control.push(Message::Resume { from: oldest });
                        self.stats.resumes_sent += 1;
                        self.start_bulk();
                    }
                }
            }
        }
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
            self.stats.malformed.count(DropReason::Oversized);
            if let Some(l) = self.stats.links.get_mut(link) {
                l.errors += 1;
            }
            return;
        }
        let (header, messages) = match decode_datagram(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.stats.malformed.count(DropReason::from(&e));
                if let Some(l) = self.stats.links.get_mut(link) {
                    l.errors += 1;
                }
                return;
            }
        };
        let now = self.now;
        let sender = header.node_id;
        let timeout = self.cfg.peer_timeout_ms;
        let verdict = self.peers.classify(
            self.cfg.node_id,
            sender,
            header.epoch,
            now,
            timeout,
            self.cfg.max_peers,
        );
        match verdict {
            Verdict::OwnNodeId => {
                self.stats.malformed.count(DropReason::OwnNodeId);
                return;
            }
            Verdict::TableFull => {
                self.stats.malformed.count(DropReason::TooManyPeers);
                return;
            }
            _ => {}
        }
        self.links.heard(link, now);
        self.stats.messages_received += messages.len() as u64;
        let reliable = header.is_reliable();
        match verdict {
            Verdict::Stale => {
                self.stats.malformed.count(DropReason::StaleEpoch);
                return;
            }
            Verdict::SameEpoch => {
                if let Some(p) = self.peers.get_mut(sender) {
                    p.last_heard_ms = now;
                }
            }
            // Refused above.
            Verdict::OwnNodeId | Verdict::TableFull => return,
            Verdict::New | Verdict::Restart => {
                // First contact or a restart: start its stream where it is
                // and ask for its table, after a pause: our start-up request
                // may already have reached it, and its bulk cancels this.
                // ALARM never asks: the refresh brings a new peer's table.
                if verdict == Verdict::Restart {
                    self.stats.peer_restarts += 1;
                }
                let mut peer =
                    Peer::new(header.epoch, header.seq, reliable, now, &self.rx_params());
                if self.cfg.mode != Mode::Alarm {
                    peer.resync = Resync::Asking {
                        next_ms: now + self.resync_retry_ms(),
                    };
                }
                self.peers.admit(sender, peer);
                self.views.cache(sender);
            }
        }
        if self.backlog == Backlog::OweBulk {
            // We dropped what waited for a peer while nobody listened.
            self.backlog = Backlog::Kept;
            self.start_bulk();
        }
        let ctx = self.ctx();
        let mut effects = Vec::new();
        let Some(p) = self.peers.get_mut(sender) else {
            return;
        };
        let stats = &mut self.stats;
        if reliable && ctx.mode != Mode::Ftfw {
            // Best effort: applied as it arrives; the number is for stats.
            stats.lost += p.seen.on_data(header.seq);
            self.views
                .apply_all(sender, p, messages, &ctx, stats, &mut effects);
        } else if reliable {
            let outcome = p.rx.on_reliable(header.seq, messages, now, &ctx.rx);
            stats.lost += outcome.lost;
            stats.duplicates += u64::from(outcome.duplicate);
            stats.reorder_overflow += u64::from(outcome.overflow);
            stats.reorder_too_far += u64::from(outcome.too_far);
            for batch in outcome.deliver {
                self.views
                    .apply_all(sender, p, batch, &ctx, stats, &mut effects);
            }
        } else {
            stats.lost += if ctx.mode == Mode::Ftfw {
                p.rx.on_control(header.seq)
            } else {
                p.seen.on_control(header.seq)
            };
            for m in messages {
                if m.is_data() {
                    stats.malformed.count(DropReason::DataInControl);
                } else {
                    self.views.apply(sender, p, m, &ctx, stats, &mut effects);
                }
            }
        }
        self.handle(sender, effects);
    }

    // ---- send side --------------------------------------------------------

    /// Our sequence numbers are running out: start a new epoch of our own,
    /// numbered from 1, and send our whole table in it. Peers take a new
    /// epoch for a restart: they start our stream afresh, hold late
    /// datagrams of the old one for stale, and the bulk rebuilds their view.
    /// What the old epoch left unacknowledged is dropped: the bulk covers it.
    fn new_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.tx.restart_numbering(self.now);
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
        let caches = &self.views.caches;
        let gone = self.peers.forget(self.now, horizon, |id| {
            caches.get(&id).is_none_or(FlowCache::is_empty)
        });
        for id in gone {
            self.views.caches.remove(&id);
            self.stats.peers_forgotten += 1;
        }
    }

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

    fn emit(&mut self, out: &mut Vec<Transmit>, links: &[usize], bytes: Vec<u8>) {
        self.tx.last_send_ms = self.now;
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
            seq: self.tx.last_seq(),
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
                Message::RangeRequest { .. } => self.stats.range_requests_sent += 1,
                _ => {}
            }
        }
    }

    /// Everything due now: control (acks, nacks, resync and range
    /// requests, resumes), retransmissions, new data within the window,
    /// digests, keepalives.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Vec<Transmit> {
        self.tick(now_ms);
        let now = self.now;
        let mut out = Vec::new();
        self.forget_dead_peers();
        if let Some(upto) = self.peers.live_min_acked(now, self.cfg.peer_timeout_ms) {
            self.tx.prune(upto, now);
        }
        self.bound_backlog_while_alone();
        let links = self.links.data_links(now, self.cfg.peer_timeout_ms);
        let ftfw = self.cfg.mode == Mode::Ftfw;

        // Control messages; none for peers that are down (they resume when
        // heard again).
        let params = self.rx_params();
        let retry = self.resync_retry_ms();
        let restart = self.repair_restart_ms();
        let timeout = self.cfg.peer_timeout_ms;
        let mut ctl = std::mem::take(&mut self.tx.control);
        let mut asks: Vec<(u32, Vec<u16>)> = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            if !p.alive(now, timeout) {
                continue;
            }
            if ftfw {
                ctl.extend(p.rx.poll(id, p.epoch, now, &params));
            }
            if let Resync::Asking { next_ms } = p.resync {
                if next_ms <= now {
                    p.resync = Resync::Asking {
                        next_ms: now + retry,
                    };
                    ctl.push(Message::ResyncRequest { node: Some(id) });
                }
            }
            let due = p.wants.due(now, retry, 3 * restart);
            if !due.is_empty() {
                asks.push((id, due));
            }
        }
        for (id, ranges) in asks {
            self.ask_ranges(id, &ranges);
        }
        ctl.append(&mut self.tx.control);
        if !ctl.is_empty() {
            self.count_sent(&ctl);
            let header = self.control_header();
            for body in Packer::pack_all(self.cfg.max_payload, &ctl) {
                self.emit(&mut out, &links, body.seal(&header));
            }
        }

        // Retransmissions asked for by NACKs, then on timeout.
        let last = self.tx.last_seq();
        let lagging = self
            .peers
            .values()
            .any(|p| p.alive(now, timeout) && p.tx_acked < last);
        for bytes in self.tx.retransmissions(now, self.cfg.rto_ms, lagging) {
            self.stats.retransmits += 1;
            self.emit(&mut out, &links, bytes);
        }

        // ALARM: the flows whose refresh is due join the queue.
        if let Some(refresh) = self.local.refresh.as_mut() {
            let due = refresh.take_due(now);
            self.stats.alarm_refreshes += due.len() as u64;
            for key in due {
                self.tx.enqueue(&mut self.local.cache, key);
            }
        }

        // New data, within the window (FTFW); sent once otherwise. A few
        // keys wait up to batch_delay_ms for company, so that a stream of
        // single events still leaves in full datagrams.
        self.tx.note_queue(now);
        let hold = self
            .tx
            .holding_for_batch(now, self.cfg.max_payload, self.cfg.batch_delay_ms);
        while !hold && !self.tx.queue.is_empty() {
            if self.tx.seq_exhausted() {
                self.new_epoch();
            }
            if ftfw && self.tx.resend.len() >= self.cfg.window {
                self.stats.window_full += 1;
                break;
            }
            let Some((body, msgs)) = self
                .tx
                .next_body(&mut self.local.cache, self.cfg.max_payload)
            else {
                continue;
            };
            self.stats.messages_sent += msgs;
            let bytes = self.tx.seal_next(&body, self.control_header(), ftfw, now);
            self.emit(&mut out, &links, bytes);
        }

        if self.digest_wanted()
            && self
                .digest
                .due(self.cfg.digest_interval_ms)
                .is_some_and(|due| now >= due)
        {
            self.send_digest(&mut out, &links);
        }

        // ALARM: peers' flows not refreshed in time expire.
        if let Some(expiry) = self.expiry.as_mut() {
            let gone = expiry.tick(now, self.views.caches.iter_mut());
            self.stats.alarm_expired += gone.len() as u64;
            self.views
                .record_deletes(gone.into_iter().map(|(_, key)| key).collect());
        }

        // Keepalive, on every link so each stays known to be up.
        if now >= self.tx.last_send_ms + self.cfg.keepalive_ms {
            let body = Packer::pack_all(self.cfg.max_payload, &[Message::Alive]);
            self.stats.messages_sent += 1;
            let all: Vec<usize> = (0..self.links.len()).collect();
            for b in body {
                self.emit(&mut out, &all, b.seal(&self.control_header()));
            }
        }
        for (i, s) in self.stats.links.iter_mut().enumerate() {
            s.up = self.links.usable(i, now, self.cfg.peer_timeout_ms);
        }
        out
    }

    /// A digest can go out now but for the time: the mode has them, they
    /// are not paused, the queue is empty (so the stream before it
    /// describes exactly the table it digests), the window has room, and
    /// someone is listening.
    fn digest_wanted(&self) -> bool {
        self.cfg.mode != Mode::Alarm
            && self.digest.due(self.cfg.digest_interval_ms).is_some()
            && self.tx.queue.is_empty()
            && (self.cfg.mode != Mode::Ftfw || self.tx.resend.len() < self.cfg.window)
            && self.any_peer_alive()
    }

    /// Send the range digest of the internal cache as it is now, in
    /// sequence.
    fn send_digest(&mut self, out: &mut Vec<Transmit>, links: &[usize]) {
        if self.tx.seq_exhausted() {
            // Its bulk fills the queue: the digest waits for the next time.
            self.new_epoch();
            return;
        }
        let msgs = digest_messages(&self.local.cache, self.cfg.max_payload);
        self.digest.sent(self.now);
        self.stats.digests_sent += 1;
        self.stats.range_digests_sent += msgs.len() as u64;
        self.stats.messages_sent += msgs.len() as u64;
        let ftfw = self.cfg.mode == Mode::Ftfw;
        for body in Packer::pack_all(self.cfg.max_payload, &msgs) {
            let bytes = self
                .tx
                .seal_next(&body, self.control_header(), ftfw, self.now);
            self.emit(out, links, bytes);
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
            l.errors += 1;
        }
    }

    /// When to call `poll_transmit` at the latest (may be in the past: now).
    pub fn next_deadline(&self) -> Option<u64> {
        let mut t = self.tx.last_send_ms + self.cfg.keepalive_ms;
        let mut at = |x: u64| t = t.min(x);
        let ftfw = self.cfg.mode == Mode::Ftfw;
        let window_open = !ftfw || self.tx.resend.len() < self.cfg.window;
        if let Some(d) = self.tx.deadline(
            self.now,
            window_open,
            self.cfg.max_payload,
            self.cfg.batch_delay_ms,
        ) {
            at(d);
        }
        if self.digest_wanted() {
            if let Some(due) = self.digest.due(self.cfg.digest_interval_ms) {
                at(due);
            }
        }
        if let Some(due) = self
            .local
            .refresh
            .as_ref()
            .and_then(RefreshCursor::next_due)
        {
            at(due);
        }
        if let Some(expiry) = &self.expiry {
            if self.views.caches.values().any(|c| !c.is_empty()) {
                at(expiry.next_tick());
            }
        }
        let last = self.tx.last_seq();
        for p in self.peers.values() {
            if !p.alive(self.now, self.cfg.peer_timeout_ms) {
                // Nothing is sent to it until it is heard again (an input).
                continue;
            }
            if let Some(d) = p.rx.deadline().filter(|_| ftfw) {
                at(d);
            }
            if let Resync::Asking { next_ms } = p.resync {
                at(next_ms);
            }
            if let Some(d) = p.wants.next_due() {
                at(d);
            }
            if p.tx_acked < last && !self.tx.resend.is_empty() {
                at(self.tx.rto_at(self.cfg.rto_ms));
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
                alive: p.alive(self.now, self.cfg.peer_timeout_ms),
                last_heard_ms: p.last_heard_ms,
                expected_seq: match self.cfg.mode {
                    Mode::Ftfw => p.rx.expected,
                    Mode::Notrack | Mode::Alarm => p.seen.next(),
                },
                acked_seq: p.tx_acked,
                flows: self.views.caches.get(&id).map_or(0, FlowCache::len),
                reordered: p.rx.buffered(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
