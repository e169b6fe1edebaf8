//! What to send now and when to be called again: data in sequence,
//! resends, acks and nacks, keep-alives, bulks, range digests and ALARM's
//! refresh, across the links that are up.
//!
//! Owns: `Node::poll_transmit` and `Node::next_deadline`. Must not: read
//! datagrams (`receive` does) or hold state of its own (the parts do).

use super::*;
use crate::wire::{Header, Message, Packer};
use digest::digest_messages;
use peers::Resync;

impl Node {
    /// Send `bytes` (a plain datagram) on `links`; with keys, sealed once
    /// under a fresh packet number (a resend is sealed anew).
    fn emit(&mut self, out: &mut Vec<Transmit>, links: &[usize], bytes: Vec<u8>) {
        let bytes = match self.guard.as_mut() {
            None => bytes,
            Some(g) => match g.seal(&bytes) {
                Some(sealed) => sealed,
                None => {
                    tracing::error!("cannot seal a datagram of ours: dropped");
                    return;
                }
            },
        };
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
        self.bound_backlog();
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
            for body in Packer::pack_all(self.payload(), &ctl) {
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
        let payload = self.payload();
        let hold = self
            .tx
            .holding_for_batch(now, payload, self.cfg.batch_delay_ms);
        while !hold && !self.tx.queue.is_empty() {
            if self.tx.seq_exhausted() {
                self.new_epoch();
            }
            if ftfw && self.tx.resend.len() >= self.cfg.window {
                self.stats.window_full += 1;
                break;
            }
            let Some((body, msgs)) = self.tx.next_body(&mut self.local.cache, payload) else {
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

        self.send_expectations(&mut out, &links);
        self.views.expects.expire(now);

        // ALARM: peers' flows not refreshed in time expire.
        if let Some(expiry) = self.expiry.as_mut() {
            let gone = expiry.tick(now, self.views.caches.iter_mut());
            self.stats.alarm_expired += gone.len() as u64;
            self.views
                .record_deletes(gone.into_iter().map(|(_, key)| key).collect());
        }

        // Keepalive, on every link so each stays known to be up.
        if now >= self.tx.last_send_ms + self.cfg.keepalive_ms {
            let body = Packer::pack_all(self.payload(), &[Message::Alive]);
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
        let msgs = digest_messages(&self.local.cache, self.payload());
        if self.cfg.expectations {
            self.expects.queue_digest();
        }
        self.digest.sent(self.now);
        self.stats.digests_sent += 1;
        self.stats.range_digests_sent += msgs.len() as u64;
        self.stats.messages_sent += msgs.len() as u64;
        let ftfw = self.cfg.mode == Mode::Ftfw;
        for body in Packer::pack_all(self.payload(), &msgs) {
            let bytes = self
                .tx
                .seal_next(&body, self.control_header(), ftfw, self.now);
            self.emit(out, links, bytes);
        }
    }

    /// Expectation messages, in datagrams of their own after the flows of
    /// this poll, in sequence (FTFW: while the window has room).
    fn send_expectations(&mut self, out: &mut Vec<Transmit>, links: &[usize]) {
        if !self.cfg.expectations {
            return;
        }
        if self.cfg.mode == Mode::Alarm {
            self.expects
                .alarm_refresh(self.now, self.cfg.alarm_refresh_ms);
        }
        let ftfw = self.cfg.mode == Mode::Ftfw;
        let flows_queued = !self.tx.queue.is_empty();
        let due = self
            .expects
            .ready_at(self.now, flows_queued)
            .is_some_and(|at| at <= self.now);
        if !due || (ftfw && self.tx.resend.len() >= self.cfg.window) {
            return;
        }
        let msgs = self.expects.take_messages();
        self.stats.messages_sent += msgs.len() as u64;
        for body in Packer::pack_all(self.payload(), &msgs) {
            if self.tx.seq_exhausted() {
                // The new epoch's bulk carries the expectations too.
                self.new_epoch();
                return;
            }
            let bytes = self
                .tx
                .seal_next(&body, self.control_header(), ftfw, self.now);
            self.emit(out, links, bytes);
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
            self.payload(),
            self.cfg.batch_delay_ms,
        ) {
            at(d);
        }
        if self.cfg.expectations {
            if let Some(ready) = self
                .expects
                .ready_at_peek(self.now, !self.tx.queue.is_empty())
                .filter(|_| window_open)
            {
                at(ready);
            }
            if self.cfg.mode == Mode::Alarm {
                at(self.expects.alarm_due(self.cfg.alarm_refresh_ms));
            }
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
            self.views.expects.views.remove(&id);
            if let Some(g) = self.guard.as_mut() {
                g.forget(id);
            }
            self.stats.peers_forgotten += 1;
            self.stats.peer_wire.remove(&id);
        }
    }
}
