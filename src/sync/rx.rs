//! The FTFW receive side for one sender's sequence stream: in-order
//! delivery, the reorder buffer, gap detection, and when to ACK or NACK.
//!
//! Owns: `expected`, the reorder buffer and the ack/nack timers of one
//! (sender, epoch) stream. Must not: apply messages to caches (it hands them
//! back in order), or build datagrams.

use crate::wire::Message;
use std::collections::BTreeMap;

/// Most missing ranges one NACK round reports.
const MAX_NACK_RANGES: usize = 256;

/// Timing and size knobs the stream needs (copied from `SyncConfig`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RxParams {
    pub ack_every: u32,
    pub ack_delay_ms: u64,
    pub rto_ms: u64,
    /// How far ahead of `expected` a datagram may be buffered (and so the
    /// most datagrams buffered).
    pub reorder_limit: usize,
    /// The most memory (`buffered_cost`) the reorder buffer may hold.
    pub reorder_max_bytes: usize,
}

/// What a buffered body costs: the messages as they sit in memory plus the
/// bytes they own. A one-byte message decodes into a whole `Message`, so
/// counting wire bytes would understate it many times over.
pub(crate) fn buffered_cost(msgs: &[Message]) -> usize {
    let owned: usize = msgs
        .iter()
        .map(|m| match m {
            Message::Upsert(f) => {
                let related = match f.tail {
                    crate::wire::WireTail::Related(_) => {
                        std::mem::size_of::<crate::wire::WireRelated>()
                    }
                    _ => 0,
                };
                f.labels.as_ref().map_or(0, Vec::len)
                    + f.helper.as_ref().map_or(0, String::len)
                    + related
            }
            Message::ExpectUpsert(e) => {
                std::mem::size_of::<crate::expect::Expectation>()
                    + e.helper.as_ref().map_or(0, String::len)
                    + e.expectfn.as_ref().map_or(0, String::len)
            }
            Message::ExpectDelete(_) => std::mem::size_of::<crate::expect::ExpectKey>(),
            _ => 0,
        })
        .sum();
    std::mem::size_of::<Message>()
        .saturating_mul(msgs.len())
        .saturating_add(owned)
}

/// What a reliable datagram did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RxOutcome {
    /// Bodies now deliverable, in sequence order.
    pub deliver: Vec<Vec<Message>>,
    pub duplicate: bool,
    /// Newly detected missing sequence numbers.
    pub lost: u64,
    /// The reorder buffer was full (its byte budget); the datagram was
    /// dropped.
    pub overflow: bool,
    /// The datagram was more than `reorder_limit` ahead of `expected`; it was
    /// dropped without being buffered.
    pub too_far: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct RxStream {
    /// The next sequence number to apply.
    pub expected: u32,
    /// The highest sequence number known to exist.
    highest: u32,
    /// Out-of-order bodies with their `buffered_cost`.
    buffer: BTreeMap<u32, (usize, Vec<Message>)>,
    /// The sum of the buffered costs.
    buffered_bytes: usize,
    /// The last `upto` we acknowledged.
    acked: u32,
    ack_due: Option<u64>,
    nack_not_before: u64,
}

impl RxStream {
    /// A stream first seen at `seq` (a reliable datagram's own number, or a
    /// control datagram's last-sent number).
    pub fn new(seq: u32, reliable: bool, now: u64, p: &RxParams) -> RxStream {
        let expected = if reliable { seq } else { seq.saturating_add(1) };
        let expected = expected.max(1);
        RxStream {
            expected,
            highest: expected.saturating_sub(1),
            buffer: BTreeMap::new(),
            buffered_bytes: 0,
            acked: 0,
            // Tell the sender at once where we start, so it can prune.
            ack_due: (expected > 1).then_some(now + p.ack_delay_ms),
            nack_not_before: 0,
        }
    }

    fn note_seen(&mut self, seq: u32) -> u64 {
        let mut lost = 0;
        if seq > self.highest {
            let first_new = self.highest.saturating_add(1).max(self.expected);
            lost = u64::from(seq.saturating_sub(first_new));
            self.highest = seq;
        }
        lost
    }

    fn delivered_upto(&self) -> u32 {
        self.expected.saturating_sub(1)
    }

    fn drain(&mut self, out: &mut Vec<Vec<Message>>) {
        while let Some((cost, msgs)) = self.buffer.remove(&self.expected) {
            self.buffered_bytes = self.buffered_bytes.saturating_sub(cost);
            out.push(msgs);
            self.expected = self.expected.saturating_add(1);
        }
    }

    fn schedule_ack(&mut self, now: u64, p: &RxParams) {
        let unacked = self.delivered_upto().saturating_sub(self.acked);
        if unacked >= p.ack_every.max(1) {
            self.ack_due = Some(now);
        } else if unacked > 0 && self.ack_due.is_none() {
            self.ack_due = Some(now + p.ack_delay_ms);
        }
    }

    pub fn on_reliable(
        &mut self,
        seq: u32,
        msgs: Vec<Message>,
        now: u64,
        p: &RxParams,
    ) -> RxOutcome {
        let mut out = RxOutcome::default();
        if seq < self.expected || self.buffer.contains_key(&seq) {
            out.duplicate = true;
            // The sender may have missed our ack: repeat it soon.
            self.ack_due = Some(self.ack_due.unwrap_or(u64::MAX).min(now));
            return out;
        }
        // A live sender has at most its window beyond what we applied;
        // further ahead is a sender that gave up on us (it will say so when
        // we NACK) or garbage: never buffered. The gap it reveals is noted
        // only up to the limit, so a wild seq cannot make the NACKs huge.
        let limit = u32::try_from(p.reorder_limit).unwrap_or(u32::MAX);
        let horizon = self.expected.saturating_add(limit);
        if seq > horizon {
            // As if a control datagram said `horizon` was sent.
            out.lost = self.on_control(horizon);
            out.too_far = true;
            return out;
        }
        out.lost = self.note_seen(seq);
        if seq == self.expected {
            out.deliver.push(msgs);
            self.expected = self.expected.saturating_add(1);
            self.drain(&mut out.deliver);
        } else {
            let cost = buffered_cost(&msgs);
            let bytes = self.buffered_bytes.saturating_add(cost);
            if self.buffer.len() < p.reorder_limit && bytes <= p.reorder_max_bytes {
                self.buffer.insert(seq, (cost, msgs));
                self.buffered_bytes = bytes;
            } else {
                out.overflow = true;
            }
        }
        self.schedule_ack(now, p);
        out
    }

    /// A control datagram says the sender's last reliable seq is `last`.
    pub fn on_control(&mut self, last: u32) -> u64 {
        let was = self.highest;
        let lost = self.note_seen(last);
        // Unlike a reliable datagram, `last` itself has not arrived either.
        if last > was && last >= self.expected {
            lost + 1
        } else {
            lost
        }
    }

    /// The sender cannot resend anything before `from`: skip to it. Returns
    /// what became deliverable and whether anything was skipped.
    pub fn resume(&mut self, from: u32, now: u64, p: &RxParams) -> (Vec<Vec<Message>>, bool) {
        let mut out = Vec::new();
        if from <= self.expected {
            return (out, false);
        }
        self.expected = from;
        self.highest = self.highest.max(from.saturating_sub(1));
        self.buffer = self.buffer.split_off(&from);
        self.buffered_bytes = self.buffer.values().map(|(c, _)| *c).sum();
        self.drain(&mut out);
        self.schedule_ack(now, p);
        (out, true)
    }

    /// The missing range, if any: `expected ..= last known before a hole ends`.
    /// Datagrams held ahead of a gap.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Datagrams known to exist and not yet delivered (held ahead of a gap
    /// or missing).
    pub fn lag(&self) -> u32 {
        self.highest.saturating_sub(self.delivered_upto())
    }

    pub fn gap(&self) -> Option<(u32, u32)> {
        let end = match self.buffer.keys().next() {
            Some(first) => first.saturating_sub(1),
            None => self.highest,
        };
        (end >= self.expected).then_some((self.expected, end))
    }

    /// Control messages due now for this stream.
    pub fn poll(&mut self, node: u32, epoch: u64, now: u64, p: &RxParams) -> Vec<Message> {
        let mut out = Vec::new();
        if self.ack_due.is_some_and(|t| t <= now) {
            self.ack_due = None;
            let upto = self.delivered_upto();
            if upto > 0 {
                self.acked = upto;
                out.push(Message::Ack { node, epoch, upto });
            }
        }
        if self.gap().is_some() && now >= self.nack_not_before {
            self.nack_not_before = now + p.rto_ms.max(1);
            // Every hole at once (up to a bound), not just the first: under
            // heavy loss a window holds hundreds of them, and one round trip
            // per hole would stall the stream.
            for (from, to) in self.gaps(MAX_NACK_RANGES) {
                out.push(Message::Nack {
                    node,
                    epoch,
                    from,
                    to,
                });
            }
        }
        out
    }

    /// The missing ranges between `expected` and the highest sequence seen,
    /// at most `limit` of them, lowest first.
    pub fn gaps(&self, limit: usize) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut next = self.expected;
        for &seq in self.buffer.keys() {
            if out.len() >= limit {
                return out;
            }
            if seq > next {
                out.push((next, seq - 1));
            }
            next = seq.saturating_add(1);
        }
        if out.len() < limit && self.highest >= next {
            out.push((next, self.highest));
        }
        out
    }

    /// The latest time `poll` must be called.
    pub fn deadline(&self) -> Option<u64> {
        let nack = self.gap().map(|_| self.nack_not_before);
        match (self.ack_due, nack) {
            (Some(a), Some(n)) => Some(a.min(n)),
            (a, n) => a.or(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RxParams = RxParams {
        ack_every: 3,
        ack_delay_ms: 20,
        rto_ms: 200,
        reorder_limit: 4,
        reorder_max_bytes: usize::MAX,
    };

    fn body(n: u32) -> Vec<Message> {
        vec![Message::BulkBegin { id: n }]
    }

    #[test]
    fn every_hole_is_nacked_in_one_round() {
        let wide = RxParams {
            reorder_limit: 64,
            ..P
        };
        let mut s = RxStream::new(1, true, 0, &wide);
        for seq in [1, 3, 4, 7, 10] {
            s.on_reliable(seq, body(seq), 0, &wide);
        }
        assert_eq!(s.gaps(10), vec![(2, 2), (5, 6), (8, 9)]);
        assert_eq!(s.gaps(2), vec![(2, 2), (5, 6)]);
        let nacks: Vec<(u32, u32)> = s
            .poll(9, 5, 1, &wide)
            .into_iter()
            .filter_map(|m| match m {
                Message::Nack { from, to, .. } => Some((from, to)),
                _ => None,
            })
            .collect();
        assert_eq!(nacks, vec![(2, 2), (5, 6), (8, 9)]);
    }

    #[test]
    fn reorders_detects_gaps_and_nacks_at_a_rate() {
        let mut s = RxStream::new(1, true, 0, &P);
        assert_eq!(s.on_reliable(1, body(1), 0, &P).deliver, vec![body(1)]);
        let o = s.on_reliable(4, body(4), 1, &P);
        assert_eq!((o.deliver.len(), o.lost), (0, 2));
        assert_eq!(s.gap(), Some((2, 3)));
        let msgs = s.poll(9, 5, 1, &P);
        assert!(msgs.contains(&Message::Nack {
            node: 9,
            epoch: 5,
            from: 2,
            to: 3
        }));
        // Rate-limited until rto.
        assert!(!s
            .poll(9, 5, 2, &P)
            .iter()
            .any(|m| matches!(m, Message::Nack { .. })));
        assert_eq!(s.deadline(), Some(20));
        let o = s.on_reliable(3, body(3), 3, &P);
        assert!(o.deliver.is_empty());
        assert!(s.on_reliable(3, body(3), 3, &P).duplicate);
        let o = s.on_reliable(2, body(2), 4, &P);
        assert_eq!(o.deliver, vec![body(2), body(3), body(4)]);
        assert_eq!(s.gap(), None);
        // Four delivered, ack_every 3: an ack is due now.
        assert_eq!(
            s.poll(9, 5, 4, &P),
            vec![Message::Ack {
                node: 9,
                epoch: 5,
                upto: 4
            }]
        );
        assert!(s.on_reliable(2, body(2), 5, &P).duplicate);
        assert_eq!(s.deadline(), Some(5));
    }

    #[test]
    fn control_reveals_tail_loss_and_resume_skips() {
        let mut s = RxStream::new(10, false, 0, &P);
        assert_eq!(s.expected, 11);
        assert_eq!(s.on_control(10), 0);
        assert_eq!(s.gap(), None);
        assert_eq!(s.on_control(13), 3);
        assert_eq!(s.gap(), Some((11, 13)));
        s.on_reliable(13, body(13), 1, &P);
        let (d, skipped) = s.resume(13, 2, &P);
        assert!(skipped);
        assert_eq!(d, vec![body(13)]);
        assert_eq!(s.expected, 14);
        assert_eq!(s.resume(5, 3, &P), (vec![], false));
    }

    #[test]
    fn reorder_buffer_is_bounded_in_distance() {
        let mut s = RxStream::new(1, true, 0, &P);
        for seq in 3..=5 {
            let o = s.on_reliable(seq, body(seq), 0, &P);
            assert!(!o.overflow && !o.too_far);
        }
        // 6 is more than reorder_limit (4) ahead of 1: never buffered.
        let o = s.on_reliable(6, body(6), 0, &P);
        assert!(o.too_far && !o.overflow && o.deliver.is_empty());
        // A wild seq notes a gap no wider than the limit.
        let o = s.on_reliable(u32::MAX - 1, body(0), 0, &P);
        assert_eq!((o.too_far, o.lost), (true, 0));
        assert_eq!(s.gap(), Some((1, 2)));
        assert!(s.on_reliable(2, body(2), 0, &P).deliver.is_empty());
        let o = s.on_reliable(1, body(1), 0, &P);
        assert_eq!(o.deliver, (1..=5).map(body).collect::<Vec<_>>());
        // 6 was noted no further than the limit: the sender's next control
        // datagram reveals it like any tail loss. Now it is in reach.
        assert_eq!(s.gap(), None);
        assert_eq!(s.on_reliable(6, body(6), 0, &P).deliver, vec![body(6)]);
        assert_eq!(s.gap(), None);
    }

    #[test]
    fn reorder_buffer_is_bounded_in_bytes() {
        let p = RxParams {
            reorder_limit: 100,
            reorder_max_bytes: 2 * buffered_cost(&body(0)),
            ..P
        };
        let mut s = RxStream::new(1, true, 0, &p);
        assert!(!s.on_reliable(3, body(3), 0, &p).overflow);
        assert!(!s.on_reliable(4, body(4), 0, &p).overflow);
        let o = s.on_reliable(5, body(5), 0, &p);
        assert!(o.overflow && !o.too_far);
        assert_eq!(s.gap(), Some((1, 2)));
        // Draining frees the budget.
        s.on_reliable(1, body(1), 0, &p);
        assert_eq!(s.on_reliable(2, body(2), 0, &p).deliver.len(), 3);
        assert_eq!(s.buffered_bytes, 0);
        assert!(!s.on_reliable(7, body(7), 0, &p).overflow);
        assert!(!s.on_reliable(8, body(8), 0, &p).overflow);
        assert!(s.on_reliable(9, body(9), 0, &p).overflow);
        // A resume past them recounts what is left.
        s.resume(8, 0, &p);
        assert_eq!(s.expected, 9);
        assert_eq!(s.buffered_bytes, 0);
    }
}
