//! The send side: the send queue, our sequence numbers, the FTFW resend
//! window and its retransmit timer, batching, and turning queued items
//! into datagram bodies and sealed datagrams.
//!
//! Owns: `Sender` (queue, resend queue, next sequence number and its limit,
//! the retransmissions asked for, the control messages waiting, and the
//! batching and retransmit clocks) and the bulks in it (`bulk::BulkSender`).
//! Must not: pick links, count link traffic, apply anything received,
//! decide who is alive, or read the clock (times are arguments).

use super::bulk::BulkSender;
use super::queue::{Item, SendQueue};
use super::resend::ResendQueue;
use crate::cache::FlowCache;
use crate::flow::FlowKey;
use crate::wire::{self, flags, Body, Header, Message, Packer, Push, WireKey};
use std::collections::BTreeSet;

/// A rough size of one queued flow message on the wire, to tell whether
/// the queue would fill a datagram.
const BATCH_KEY_BYTES: usize = 32;
/// Datagrams resent at once when no ack progress was made for `rto_ms`.
const RTO_BURST: usize = 4;

/// Everything waiting to leave, and our place in our own stream.
#[derive(Clone, Debug)]
pub(crate) struct Sender {
    pub queue: SendQueue,
    pub resend: ResendQueue,
    pub bulks: BulkSender,
    next_seq: u32,
    /// The last sequence number of an epoch: past it a new epoch starts
    /// rather than let the numbers run out.
    seq_limit: u32,
    /// Retransmissions asked for by NACKs.
    retransmit: BTreeSet<u32>,
    /// Control messages for everyone, sent at the next poll.
    pub control: Vec<Message>,
    pub last_send_ms: u64,
    /// When the retransmit timer was last (re)started.
    rto_armed_ms: u64,
    /// When the send queue last became non-empty.
    queue_since_ms: Option<u64>,
}

impl Sender {
    /// A sender whose window is `window` datagrams. A window's worth (and
    /// one) of numbers is kept unused, so no stream position or resend
    /// arithmetic ever meets u32::MAX.
    pub fn new(window: usize, now: u64) -> Sender {
        let reserve = u32::try_from(window).unwrap_or(u32::MAX);
        Sender {
            queue: SendQueue::default(),
            resend: ResendQueue::default(),
            bulks: BulkSender::default(),
            next_seq: 1,
            seq_limit: u32::MAX.saturating_sub(reserve).saturating_sub(1),
            retransmit: BTreeSet::new(),
            control: Vec::new(),
            last_send_ms: now,
            rto_armed_ms: now,
            queue_since_ms: None,
        }
    }

    /// Test seam: the next reliable datagram gets `seq`.
    #[cfg(test)]
    pub fn start_seq_at(&mut self, seq: u32) {
        debug_assert!(self.resend.is_empty());
        self.next_seq = seq.max(1);
    }

    /// Test seam: the last sequence number of an epoch.
    #[cfg(test)]
    pub fn seq_limit(&self) -> u32 {
        self.seq_limit
    }

    /// The last sequence number we sent (0: none yet).
    pub fn last_seq(&self) -> u32 {
        self.next_seq.saturating_sub(1)
    }

    /// Our numbers are running out: the caller starts a new epoch.
    pub fn seq_exhausted(&self) -> bool {
        self.next_seq > self.seq_limit
    }

    /// A new epoch: numbered from 1; what the old one left unacknowledged
    /// is dropped (the caller's bulk covers it).
    pub fn restart_numbering(&mut self, now: u64) {
        self.next_seq = 1;
        self.resend = ResendQueue::default();
        self.retransmit.clear();
        self.rto_armed_ms = now;
    }

    /// Queue a key for sending, once: a flow already queued goes out with
    /// its latest state anyway (the mark lives in its cache slot).
    pub fn enqueue(&mut self, cache: &mut FlowCache, key: FlowKey) {
        if cache.mark_queued(&key) {
            self.queue.push_key(key);
        }
    }

    /// Forget the send queue, bulks and markers included (it outgrew its
    /// bound; the caller owes the peers a bulk); returns how many items
    /// were dropped. The resend window stays: what it holds was sent.
    pub fn drop_queue(&mut self, cache: &mut FlowCache) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.bulks.forget_queued();
        cache.clear_queued_marks();
        self.queue_since_ms = None;
        n
    }

    /// Forget the queue and the resend window (nobody listens and the
    /// backlog outgrew its bound); returns how many items were dropped.
    pub fn drop_backlog(&mut self, cache: &mut FlowCache) -> usize {
        let n = self.drop_queue(cache);
        self.resend = ResendQueue::default();
        self.retransmit.clear();
        n
    }

    /// A NACK for `from..=to`: queue what we still have; false when part of
    /// it is gone (the caller says where we resume and sends a bulk).
    pub fn on_nack(&mut self, from: u32, to: u32) -> Result<(), u32> {
        let to = to.min(self.last_seq());
        if from > to {
            return Ok(());
        }
        let oldest = self.resend.oldest().unwrap_or(self.next_seq);
        for seq in from.max(oldest)..=to {
            self.retransmit.insert(seq);
        }
        if from < oldest {
            Err(oldest)
        } else {
            Ok(())
        }
    }

    /// Drop what every live peer acknowledged (up to `upto`).
    pub fn prune(&mut self, upto: u32, now: u64) {
        if self.resend.prune_upto(upto) > 0 {
            self.rto_armed_ms = now;
        }
    }

    /// The datagrams to resend now: those NACKed, or on timeout (no ack
    /// progress for `rto_ms` while a live peer `lagging` behind) the oldest
    /// few.
    pub fn retransmissions(&mut self, now: u64, rto_ms: u64, lagging: bool) -> Vec<Vec<u8>> {
        let mut seqs: Vec<u32> = std::mem::take(&mut self.retransmit).into_iter().collect();
        if seqs.is_empty()
            && !self.resend.is_empty()
            && lagging
            && now >= self.rto_armed_ms.saturating_add(rto_ms)
        {
            if let Some(oldest) = self.resend.oldest() {
                seqs.extend((0..RTO_BURST as u32).map(|i| oldest.saturating_add(i)));
            }
            self.rto_armed_ms = now;
        }
        seqs.into_iter()
            .filter_map(|s| self.resend.get(s).map(<[u8]>::to_vec))
            .collect()
    }

    /// Note whether the queue is empty now (for batching).
    pub fn note_queue(&mut self, now: u64) {
        if self.queue.is_empty() {
            self.queue_since_ms = None;
        } else if self.queue_since_ms.is_none() {
            self.queue_since_ms = Some(now);
        }
    }

    /// True while too few keys are queued to fill a datagram and the oldest
    /// has waited less than `batch_delay_ms`.
    pub fn holding_for_batch(&self, now: u64, max_payload: usize, batch_delay_ms: u64) -> bool {
        let few = self.queue.len().saturating_mul(BATCH_KEY_BYTES) < max_payload;
        few && self
            .queue_since_ms
            .is_some_and(|since| now < since.saturating_add(batch_delay_ms))
    }

    /// The item's message, encoded into `out` (cleared first). A cached
    /// flow is already stored in its wire encoding: it is copied, not
    /// re-encoded.
    fn build_into(&mut self, cache: &mut FlowCache, item: &Item, out: &mut Vec<u8>) {
        out.clear();
        let message = match item {
            Item::BulkFlow { .. } => {
                out.extend_from_slice(self.queue.bulk_message(item));
                return;
            }
            Item::Key(k) => match cache.take_for_send(k) {
                Some(bytes) => {
                    out.push(wire::UPSERT_VARIANT);
                    out.extend_from_slice(bytes);
                    return;
                }
                None => Message::Delete(WireKey::from(k)),
            },
            Item::BulkBegin(id) => Message::BulkBegin { id: *id },
            Item::BulkEnd { id, count, hash } => Message::BulkEndSum {
                id: *id,
                count: *count,
                hash: *hash,
            },
            Item::RangeBegin(_) | Item::RangeEnd(_) => match self.bulks.marker(item) {
                Some(m) => m,
                // A marker whose bulk is gone: sends as a no-op.
                None => Message::Alive,
            },
        };
        wire::encode_message_into(&message, out);
    }

    /// The next datagram body from the queue (`None`: empty) and how many
    /// messages it holds.
    pub fn next_body(&mut self, cache: &mut FlowCache, max_payload: usize) -> Option<(Body, u64)> {
        let mut packer = Packer::new(max_payload);
        let mut msgs = 0u64;
        let mut encoded = Vec::with_capacity(128);
        while let Some(item) = self.queue.front().copied() {
            self.build_into(cache, &item, &mut encoded);
            match packer.try_push_encoded(&encoded) {
                Push::Full => break,
                Push::Added | Push::TooLarge => {
                    msgs += 1;
                    self.queue.pop_front();
                    self.bulks.sent(&item);
                }
            }
        }
        packer.take().map(|b| (b, msgs))
    }

    /// Seal `body` as the next reliable datagram of our stream (`header`
    /// gives node id and epoch), keep it for resending when `keep` (FTFW).
    pub fn seal_next(&mut self, body: &Body, header: Header, keep: bool, now: u64) -> Vec<u8> {
        let seq = self.next_seq;
        // Cannot saturate: a new epoch restarts the numbers first.
        self.next_seq = self.next_seq.saturating_add(1);
        let bytes = body.seal(&Header {
            flags: flags::RELIABLE,
            seq,
            ..header
        });
        if keep {
            if self.resend.is_empty() {
                self.rto_armed_ms = now;
            }
            self.resend.push(seq, bytes.clone());
        }
        bytes
    }

    /// When something is due (`None`: nothing but keepalives).
    /// `window_open`: FTFW's window has room (always true otherwise).
    pub fn deadline(
        &self,
        now: u64,
        window_open: bool,
        max_payload: usize,
        batch_delay_ms: u64,
    ) -> Option<u64> {
        if !self.control.is_empty() || !self.retransmit.is_empty() {
            return Some(now);
        }
        if self.queue.is_empty() || !window_open {
            return None;
        }
        match (
            self.holding_for_batch(now, max_payload, batch_delay_ms),
            self.queue_since_ms,
        ) {
            (true, Some(since)) => Some(since.saturating_add(batch_delay_ms)),
            _ => Some(now),
        }
    }

    /// When the retransmit timer fires (with a live peer lagging).
    pub fn rto_at(&self, rto_ms: u64) -> u64 {
        self.rto_armed_ms.saturating_add(rto_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;

    fn header() -> Header {
        Header {
            flags: 0,
            node_id: 1,
            epoch: 9,
            seq: 0,
            body_len: 0,
            tag_len: 0,
        }
    }

    #[test]
    fn queued_keys_coalesce_and_leave_in_full_datagrams() {
        let mut c = FlowCache::with_seed(1);
        let mut s = Sender::new(64, 0);
        for p in 0..200 {
            c.upsert(udp(p), 0);
            s.enqueue(&mut c, udp(p).key());
            s.enqueue(&mut c, udp(p).key());
        }
        assert_eq!(s.queue.len(), 200);
        let mut bodies = 0;
        let mut msgs = 0;
        while let Some((body, n)) = s.next_body(&mut c, 1472) {
            assert!(body.encoded_len() + wire::HEADER_LEN <= 1472);
            bodies += 1;
            msgs += n;
            let bytes = s.seal_next(&body, header(), true, 0);
            let (h, m) = wire::decode_datagram(&bytes).unwrap();
            assert_eq!((h.seq, m.len() as u64), (bodies, n));
        }
        assert_eq!(msgs, 200);
        assert!(bodies < 10, "{bodies}");
        assert_eq!(s.last_seq(), bodies);
        assert_eq!(s.resend.len(), bodies as usize);
    }

    #[test]
    fn nacks_retransmit_and_a_gone_range_says_where_to_resume() {
        let mut c = FlowCache::with_seed(1);
        let mut s = Sender::new(64, 0);
        for p in 0..5 {
            c.upsert(udp(p), 0);
            s.enqueue(&mut c, udp(p).key());
            let (body, _) = s.next_body(&mut c, 200).unwrap();
            s.seal_next(&body, header(), true, 0);
        }
        assert_eq!(s.on_nack(2, 3), Ok(()));
        assert_eq!(s.retransmissions(10, 200, true).len(), 2);
        s.prune(3, 20);
        assert_eq!(s.on_nack(1, 99), Err(4));
        assert_eq!(s.retransmissions(30, 200, true).len(), 2, "4 and 5");
        // The timer: nothing before rto, the oldest few after.
        assert!(s.retransmissions(219, 200, true).is_empty());
        assert_eq!(s.retransmissions(230, 200, true).len(), 2);
        assert!(
            s.retransmissions(1_000, 200, false).is_empty(),
            "nobody lags"
        );
    }

    #[test]
    fn batching_holds_a_few_keys_for_the_delay_only() {
        let mut c = FlowCache::with_seed(1);
        let mut s = Sender::new(64, 0);
        c.upsert(udp(1), 0);
        s.enqueue(&mut c, udp(1).key());
        s.note_queue(100);
        assert!(s.holding_for_batch(101, 1472, 2));
        assert_eq!(s.deadline(101, true, 1472, 2), Some(102));
        assert!(!s.holding_for_batch(102, 1472, 2));
        assert_eq!(s.deadline(101, false, 1472, 2), None, "window full");
        assert_eq!(s.drop_backlog(&mut c), 1);
        assert!(s.queue.is_empty());
        assert!(c.mark_queued(&udp(1).key()), "marks cleared");
    }

    #[test]
    fn dropping_the_queue_keeps_what_was_sent() {
        let mut c = FlowCache::with_seed(1);
        let mut s = Sender::new(64, 0);
        c.upsert(udp(1), 0);
        s.enqueue(&mut c, udp(1).key());
        let (body, _) = s.next_body(&mut c, 1472).unwrap();
        s.seal_next(&body, header(), true, 0);
        for p in 2..5 {
            c.upsert(udp(p), 0);
            s.enqueue(&mut c, udp(p).key());
        }
        assert_eq!(s.drop_queue(&mut c), 3);
        assert_eq!((s.queue.len(), s.queue.keys(), s.resend.len()), (0, 0, 1));
        assert!(c.mark_queued(&udp(2).key()), "marks cleared");
        assert_eq!(s.on_nack(1, 1), Ok(()), "still resendable");
    }

    #[test]
    fn the_sequence_space_ends_before_the_reserve() {
        let mut s = Sender::new(4, 0);
        s.start_seq_at(u32::MAX - 4);
        assert!(s.seq_exhausted());
        s.restart_numbering(0);
        assert!(!s.seq_exhausted());
        assert_eq!(s.last_seq(), 0);
    }
}
