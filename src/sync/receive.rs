//! Datagram intake: size and decoding checks, the sender's verdict
//! (`peers`), in-order delivery (`rx`) or best-effort application, the
//! effects applying has (bulks, range bulks, resends, range requests), and
//! peers' restarts and departures.
//!
//! Owns: `Node::on_datagram` and what it sets in motion. Must not: build
//! datagrams (`poll` does) or decide what a message means (`apply` does).

use super::*;
use crate::auth::{AuthDrop, Opened};
use crate::wire::{decode_datagram, Header, Message};
use apply::Effect;
use peers::{Peer, Resync, Verdict};
use seqstat::Arrival;

impl Node {
    fn handle(&mut self, sender: u32, effects: Vec<Effect>) {
        let bulks_before = self.stats.bulks_sent;
        for e in effects {
            match e {
                Effect::SendBulk => self.start_bulk(),
                Effect::SendRanges(r) => self.start_range_bulks(&r),
                Effect::AskRanges(r) => self.ask_ranges(sender, &r),
                Effect::SendExpectBulk => self.expects_queue_bulk(),
                Effect::AskExpectBulk(peer) => {
                    if self.cfg.expectations {
                        self.tx
                            .control
                            .push(Message::ExpectResyncRequest { node: peer });
                    }
                }
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
        let started = self.stats.bulks_sent - bulks_before;
        if let Some(p) = self.peers.get_mut(sender).filter(|_| started > 0) {
            p.counts.bulks_sent += started;
        }
    }

    /// Does `link` take datagrams from `node_id` (`[[link]] node_ids`)?
    fn link_accepts(&self, link: usize, node_id: u32) -> bool {
        self.cfg
            .link_node_ids
            .get(link)
            .and_then(Option::as_ref)
            .is_none_or(|ids| ids.contains(&node_id))
    }

    /// With keys, the gate: a plain datagram is refused, a sealed one
    /// opened (`Ok(Some)`); without, a sealed one is refused. `sealed` is
    /// what its header says (`None`: no valid header; such a datagram is
    /// counted as malformed by the decoding that follows). Refusals are
    /// counted (by the guard, or in `unauthenticated`).
    fn pass_gate(
        &mut self,
        bytes: &[u8],
        link: usize,
        sealed: Option<bool>,
    ) -> Result<Option<Opened>, AuthDrop> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let result = match self.guard.as_mut() {
            None if sealed => {
                self.unauthenticated.count(AuthDrop::NotConfigured);
                Err(AuthDrop::NotConfigured)
            }
            None => Ok(None),
            Some(g) if !sealed => {
                g.stats.count(AuthDrop::Missing);
                Err(AuthDrop::Missing)
            }
            Some(g) => g.open(bytes).map(Some),
        };
        if result.is_err() {
            if let Some(l) = self.stats.links.get_mut(link) {
                l.errors += 1;
            }
        }
        result
    }

    /// With keys: use the challenges in an opened datagram (answer those
    /// for us; an answer to ours admits its sender's epoch), then say
    /// whether the datagram's epoch is admitted. If not, it is dropped and
    /// its epoch challenged (at a bounded rate).
    fn admit_epoch(&mut self, opened: &Opened, messages: &[Message]) -> bool {
        let (me, my_epoch, now) = (self.cfg.node_id, self.epoch, self.now);
        let Some(guard) = self.guard.as_mut() else {
            return true;
        };
        let mut admitted = opened.admitted;
        for m in messages {
            match *m {
                // Answered in our current epoch whatever epoch it names: the
                // challenger admits the epoch the answer is sealed in.
                Message::Challenge { node, nonce, .. }
                    if node == me && guard.may_answer(opened.node_id, now) =>
                {
                    self.tx.control.push(Message::ChallengeAnswer {
                        node: opened.node_id,
                        epoch: my_epoch,
                        nonce,
                    });
                }
                Message::ChallengeAnswer { node, epoch, nonce } if node == me => {
                    admitted |=
                        guard.on_answer(opened.node_id, opened.epoch, opened.pn, epoch, nonce);
                }
                _ => {}
            }
        }
        if !admitted {
            if let Some(nonce) = guard.unadmitted(opened.node_id, now) {
                self.tx.control.push(Message::Challenge {
                    node: opened.node_id,
                    epoch: opened.epoch,
                    nonce,
                });
            }
        }
        admitted
    }

    /// A datagram from `link`. Malformed ones are counted by reason and
    /// dropped; so are those the authentication gate refuses, whose reason
    /// is returned (for the daemon's log).
    pub fn on_datagram(&mut self, bytes: &[u8], link: usize, now_ms: u64) -> Option<AuthDrop> {
        self.tick(now_ms);
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        if let Some(l) = self.stats.links.get_mut(link) {
            l.recv_packets += 1;
            l.recv_bytes += bytes.len() as u64;
        }
        // A peer whose `sync.mtu` (or first link's family) differs from ours
        // sends larger datagrams than we do. They are read all the same, up
        // to the format's limit: dropping them would stall its FTFW stream
        // for good, its resends being the same size. `peer_wire` counts
        // them for `ctsyncd doctor`.
        // Who it claims to be is in clear: refuse our own node id (a
        // reflection of our own datagrams) and ids the link does not accept
        // before the gate keeps any state for them.
        let claimed = Header::parse(bytes).ok();
        if let Some(claimed) = claimed {
            let refused = if claimed.node_id == self.cfg.node_id {
                Some(DropReason::OwnNodeId)
            } else if !self.link_accepts(link, claimed.node_id) {
                Some(DropReason::UnexpectedNodeId)
            } else {
                None
            };
            if let Some(reason) = refused {
                self.stats.malformed.count(reason);
                if reason == DropReason::UnexpectedNodeId {
                    if let Some(l) = self.stats.links.get_mut(link) {
                        l.errors += 1;
                    }
                }
                return None;
            }
        }
        let wire_len = bytes.len() as u64;
        let opened = match self.pass_gate(bytes, link, claimed.map(|h| h.is_sealed())) {
            Ok(opened) => opened,
            Err(refused) => return Some(refused),
        };
        let bytes = opened.as_ref().map_or(bytes, |o| o.plain.as_slice());
        let (header, messages) = match decode_datagram(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.stats.malformed.count(DropReason::from(&e));
                if let Some(l) = self.stats.links.get_mut(link) {
                    l.errors += 1;
                }
                return None;
            }
        };
        let now = self.now;
        let sender = header.node_id;
        if let Some(opened) = &opened {
            if !self.admit_epoch(opened, &messages) {
                return Some(AuthDrop::EpochUnadmitted);
            }
        }
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
                return None;
            }
            Verdict::TableFull => {
                self.stats.malformed.count(DropReason::TooManyPeers);
                return None;
            }
            _ => {}
        }
        self.links.heard(link, now);
        self.stats.messages_received += messages.len() as u64;
        let reliable = header.is_reliable();
        match verdict {
            Verdict::Stale => {
                self.stats.malformed.count(DropReason::StaleEpoch);
                return None;
            }
            Verdict::SameEpoch => {
                if let Some(p) = self.peers.get_mut(sender) {
                    p.last_heard_ms = now;
                }
            }
            // Refused above.
            Verdict::OwnNodeId | Verdict::TableFull => return None,
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
        let wire = self.stats.peer_wire.entry(sender).or_default();
        wire.largest_datagram = wire.largest_datagram.max(wire_len);
        if wire_len > self.cfg.max_payload as u64 {
            wire.oversized += 1;
        }
        wire.acks_nacks += messages
            .iter()
            .filter(|m| matches!(m, Message::Ack { .. } | Message::Nack { .. }))
            .count() as u64;
        if self.backlog == Backlog::OweBulk {
            // We dropped what waited for a peer while nobody listened.
            self.backlog = Backlog::Kept;
            self.start_bulk();
        }
        let ctx = self.ctx();
        let mut effects = Vec::new();
        let p = self.peers.get_mut(sender)?;
        let stats = &mut self.stats;
        if reliable && ctx.mode != Mode::Ftfw {
            // Best effort: applied as it arrives, unless it is too late
            // (see `seqstat`); the numbers are for stats.
            match p.seen.on_data(header.seq, now) {
                Arrival::Apply { lost } => {
                    stats.lost += lost;
                    self.views
                        .apply_all(sender, p, messages, &ctx, stats, &mut effects);
                }
                Arrival::TooLate => stats.malformed.count(DropReason::LateData),
            }
        } else if reliable {
            let outcome = p.rx.on_reliable(header.seq, messages, now, &ctx.rx);
            stats.lost += outcome.lost;
            stats.duplicates += u64::from(outcome.duplicate);
            if outcome.overflow {
                stats.malformed.count(DropReason::ReorderOverflow);
            }
            if outcome.too_far {
                stats.malformed.count(DropReason::ReorderTooFar);
            }
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
        None
    }
}
