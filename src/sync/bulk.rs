//! Bulks: sending our table again, whole or by key range, and receiving a
//! peer's, with the sweep that removes what the peer no longer has.
//!
//! Owns: the sender's bulk state (`BulkTx`: whether a full bulk's begin
//! still waits in the send queue; the range bulks queued and their sums)
//! and the receiver's (`BulkRx`: Idle, receiving a full bulk, or a range
//! bulk), and the proof a sweep needs: a bulk sweeps only when the flows
//! it wrote equal, in count and hash, what the sender said it held. A
//! lossy bulk sweeps nothing (NOTRACK has no resend: the flows it lost are
//! still live at the sender). Must not: decide when a bulk is wanted (the
//! digest and the Node do), build datagrams, or touch sequence numbers.

use super::queue::{Item, SendQueue};
use crate::cache::FlowCache;
use crate::flow::FlowKey;
use crate::wire::{self, Message, RangeSum, RANGES};
use std::collections::VecDeque;

/// One range bulk waiting in the send queue.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RangeBulk {
    id: u32,
    ranges: Vec<u16>,
    /// What each range held when the bulk was queued.
    sums: Vec<RangeSum>,
}

/// The sender's side of full bulks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BulkTx {
    Idle,
    /// A full bulk's BulkBegin still waits in the send queue: another one
    /// would be redundant.
    Queued {
        id: u32,
    },
}

/// Every bulk we are sending.
#[derive(Clone, Debug)]
pub(crate) struct BulkSender {
    pub state: BulkTx,
    last_id: u32,
    /// Range bulks in the send queue, oldest first, until their end leaves.
    ranges: VecDeque<RangeBulk>,
    /// The ranges those bulks cover: a request for one coalesces.
    queued: Vec<bool>,
}

impl Default for BulkSender {
    fn default() -> BulkSender {
        BulkSender {
            state: BulkTx::Idle,
            last_id: 0,
            ranges: VecDeque::new(),
            queued: vec![false; usize::from(RANGES)],
        }
    }
}

impl BulkSender {
    fn next_id(&mut self) -> u32 {
        self.last_id = self.last_id.wrapping_add(1);
        self.last_id
    }

    /// Queue a full bulk of `cache`, unless one is queued already (false).
    /// Its begin goes first; a snapshot of every flow's Upsert follows, in
    /// the cache's order. A flow already queued is left out: its key is
    /// sent with the state it has then, and a change after this point
    /// queues it behind the bulk.
    pub fn start_full(&mut self, cache: &FlowCache, queue: &mut SendQueue) -> bool {
        if matches!(self.state, BulkTx::Queued { .. }) {
            return false;
        }
        let id = self.next_id();
        queue.push_front(Item::BulkBegin(id));
        let mut message = Vec::with_capacity(128);
        for (queued, bytes) in cache.wire_entries() {
            if queued {
                continue;
            }
            message.clear();
            message.push(wire::UPSERT_VARIANT);
            message.extend_from_slice(bytes);
            queue.push_bulk_flow(&message);
        }
        queue.push_back(Item::BulkEnd {
            id,
            count: cache.len() as u64,
            hash: cache.digest(),
        });
        self.state = BulkTx::Queued { id };
        true
    }

    /// Queue a range bulk for each of `ranges` not queued already, behind
    /// everything queued; returns how many. One range per bulk, its flows
    /// together: a range is proven by its own few datagrams, so under
    /// steady loss each round proves most ranges rather than none. A
    /// queued flow goes as its key (it leaves with its latest state), the
    /// others as a snapshot.
    pub fn start_ranges(
        &mut self,
        cache: &FlowCache,
        queue: &mut SendQueue,
        ranges: &[u16],
    ) -> usize {
        let mut want = vec![false; usize::from(RANGES)];
        let mut fresh = Vec::new();
        for &r in ranges {
            let i = usize::from(r);
            let queued = self.queued.get(i).copied().unwrap_or(true);
            if let Some(w) = want.get_mut(i).filter(|w| !queued && !**w) {
                *w = true;
                fresh.push(r);
            }
        }
        fresh.sort_unstable();
        // One pass over the table, grouped by range.
        let mut groups: Vec<Vec<(Option<FlowKey>, &[u8])>> = vec![Vec::new(); usize::from(RANGES)];
        for (r, key, bytes) in cache.range_entries(&want) {
            if let Some(g) = groups.get_mut(usize::from(r)) {
                g.push((key, bytes));
            }
        }
        let mut message = Vec::with_capacity(128);
        for &r in &fresh {
            let id = self.next_id();
            if let Some(q) = self.queued.get_mut(usize::from(r)) {
                *q = true;
            }
            queue.push_back(Item::RangeBegin(id));
            for (key, bytes) in groups.get(usize::from(r)).map_or(&[][..], Vec::as_slice) {
                match key {
                    Some(key) => queue.push_key(*key),
                    None => {
                        message.clear();
                        message.push(wire::UPSERT_VARIANT);
                        message.extend_from_slice(bytes);
                        queue.push_bulk_flow(&message);
                    }
                }
            }
            queue.push_back(Item::RangeEnd(id));
            self.ranges.push_back(RangeBulk {
                id,
                ranges: vec![r],
                sums: vec![cache.range_sum(r)],
            });
        }
        fresh.len()
    }

    /// The message of a range bulk's marker (`None` for other items, or a
    /// bulk no longer known).
    pub fn marker(&self, item: &Item) -> Option<Message> {
        let find = |id: u32| self.ranges.iter().find(|b| b.id == id);
        match *item {
            Item::RangeBegin(id) => find(id).map(|b| Message::RangeBegin {
                id,
                ranges: b.ranges.clone(),
            }),
            Item::RangeEnd(id) => find(id).map(|b| Message::RangeEnd {
                id,
                sums: b.sums.clone(),
            }),
            _ => None,
        }
    }

    /// `item` left the send queue.
    pub fn sent(&mut self, item: &Item) {
        match *item {
            Item::BulkBegin(id) if self.state == (BulkTx::Queued { id }) => {
                self.state = BulkTx::Idle;
            }
            Item::RangeEnd(id) => {
                if let Some(at) = self.ranges.iter().position(|b| b.id == id) {
                    if let Some(b) = self.ranges.remove(at) {
                        for r in b.ranges {
                            if let Some(q) = self.queued.get_mut(usize::from(r)) {
                                *q = false;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The send queue was dropped: nothing is queued any more.
    pub fn forget_queued(&mut self) {
        self.state = BulkTx::Idle;
        self.ranges.clear();
        self.queued.iter_mut().for_each(|q| *q = false);
    }
}

/// The receiver's side: the bulk a peer is sending us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BulkRx {
    Idle,
    /// A full bulk; entries written since `generation` began are fresh.
    Full {
        id: u32,
        generation: u32,
    },
    /// A range bulk (its proof does not depend on its begin: see
    /// `prove_ranges`); its flows repeat the sender's table.
    Ranges {
        id: u32,
    },
}

/// What the end of a full bulk did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FullEnd {
    /// Not the bulk in progress: nothing.
    Ignored,
    /// Complete: these flows, which the sender no longer has, were swept.
    Swept(Vec<FlowKey>),
    /// Something was lost on the way: nothing swept.
    Unproven,
}

/// What the end of a range bulk did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangesEnd {
    /// Ranges proven complete (and swept).
    pub proven: Vec<u16>,
    /// Ranges where something is still missing: nothing swept; ask again.
    pub unproven: Vec<u16>,
    pub swept: Vec<FlowKey>,
}

impl BulkRx {
    /// Entries written now repeat the sender's table (not a new report).
    pub fn in_progress(&self) -> bool {
        !matches!(self, BulkRx::Idle)
    }

    /// A full bulk begins; it replaces any bulk in progress.
    pub fn begin_full(&mut self, id: u32, cache: &mut FlowCache) {
        *self = BulkRx::Full {
            id,
            generation: cache.begin_generation(),
        };
    }

    /// A range bulk begins; false (ignored) while a full bulk is in
    /// progress, which covers it.
    pub fn begin_ranges(&mut self, id: u32) -> bool {
        if matches!(self, BulkRx::Full { .. }) {
            return false;
        }
        *self = BulkRx::Ranges { id };
        true
    }

    /// The range bulk `id` ended (whatever its proof).
    pub fn end_ranges(&mut self, id: u32) {
        if *self == (BulkRx::Ranges { id }) {
            *self = BulkRx::Idle;
        }
    }

    /// The full bulk `id` ended; the sender held `count` flows (and, when
    /// it says, `hash`) when it began. Sweeps only a complete bulk: one
    /// whose fresh entries match, or, with `in_order` (FTFW: every datagram
    /// since its begin was delivered, in order, or a resume would have
    /// closed it), any. (A flow changed while it waited in the sender's
    /// queue leaves in its latest state, so under churn the sums can miss
    /// by a change a reliable stream delivered anyway.)
    pub fn end_full(
        &mut self,
        id: u32,
        count: u64,
        hash: Option<u64>,
        in_order: bool,
        cache: &mut FlowCache,
    ) -> FullEnd {
        let BulkRx::Full { id: at, generation } = *self else {
            return FullEnd::Ignored;
        };
        if at != id {
            return FullEnd::Ignored;
        }
        *self = BulkRx::Idle;
        let (fresh_count, fresh_hash) = cache.digest_if_swept(generation);
        let proven = fresh_count == count && hash.is_none_or(|h| h == fresh_hash);
        if !proven && !in_order {
            return FullEnd::Unproven;
        }
        FullEnd::Swept(cache.sweep_older_than(generation))
    }
}

/// A range bulk ended with the sender's `sums`. Each range we are
/// repairing (`since` gives the generation its repair began at) whose
/// entries written since then equal its sum is complete: the older ones
/// are flows the sender no longer has, and are swept. Ranges we are not
/// repairing are left alone (a digest brings them up if they differ).
pub(crate) fn prove_ranges(
    cache: &mut FlowCache,
    sums: &[RangeSum],
    since: impl Fn(u16) -> Option<u32>,
) -> RangesEnd {
    let mut at = vec![None; usize::from(RANGES)];
    for s in sums {
        if let Some(slot) = at.get_mut(usize::from(s.range)) {
            *slot = since(s.range);
        }
    }
    let fresh = cache.range_sums_if_swept(&at);
    let mut out = RangesEnd::default();
    let mut sweep = vec![None; usize::from(RANGES)];
    for sum in sums {
        let Some(g) = at.get(usize::from(sum.range)).copied().flatten() else {
            continue;
        };
        if fresh.iter().any(|f| f == sum) {
            out.proven.push(sum.range);
            if let Some(s) = sweep.get_mut(usize::from(sum.range)) {
                *s = Some(g);
            }
        } else {
            out.unproven.push(sum.range);
        }
    }
    out.swept = cache.sweep_ranges_older_than(&sweep);
    out
}

/// Ranges per message so that a range message (`RangeSum`s or range
/// numbers, at most 17 bytes each) fits one datagram of `max_payload`.
pub(crate) fn ranges_per_message(max_payload: usize) -> usize {
    let room = max_payload.saturating_sub(wire::HEADER_LEN + 24);
    (room / 17).clamp(1, usize::from(RANGES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::range_of;
    use crate::flow::test_flows::udp;

    fn table(n: u16) -> FlowCache {
        let mut c = FlowCache::with_seed(5);
        for p in 0..n {
            c.upsert(udp(p), 0);
        }
        c
    }

    /// Replay the queue's flows into `into` (as a receiver applying them),
    /// skipping the ones `lose` picks; returns the markers seen.
    fn deliver(
        q: &mut SendQueue,
        sender: &mut BulkSender,
        from: &mut FlowCache,
        into: &mut FlowCache,
        rx: &mut BulkRx,
        lose: impl Fn(usize) -> bool,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        // Every range is being repaired from here on.
        let since = Some(into.begin_generation());
        let mut i = 0;
        while let Some(item) = q.front().copied() {
            i += 1;
            let msg = match item {
                Item::BulkFlow { .. } | Item::Key(_) => {
                    let bytes = match item {
                        Item::Key(k) => {
                            let mut b = vec![wire::UPSERT_VARIANT];
                            b.extend_from_slice(from.take_for_send(&k).unwrap_or_default());
                            b
                        }
                        _ => q.bulk_message(&item).to_vec(),
                    };
                    let mut body = Vec::new();
                    wire::compact::put_varint(&mut body, 1);
                    body.extend_from_slice(&bytes);
                    wire::decode_body(&body).unwrap().remove(0)
                }
                Item::BulkBegin(id) => Message::BulkBegin { id },
                Item::BulkEnd { id, count, hash } => Message::BulkEndSum { id, count, hash },
                Item::RangeBegin(_) | Item::RangeEnd(_) => sender.marker(&item).unwrap(),
            };
            q.pop_front();
            sender.sent(&item);
            if lose(i) && matches!(msg, Message::Upsert(_)) {
                continue;
            }
            match msg {
                Message::Upsert(f) => {
                    into.upsert(f.into_flow(), 1);
                }
                Message::BulkBegin { id } => rx.begin_full(id, into),
                Message::BulkEndSum { id, count, hash } => seen.push(format!(
                    "{:?}",
                    rx.end_full(id, count, Some(hash), false, into)
                )),
                Message::RangeBegin { id, .. } => {
                    assert!(rx.begin_ranges(id));
                }
                Message::RangeEnd { id, sums } => {
                    rx.end_ranges(id);
                    let e = prove_ranges(into, &sums, |_| since);
                    seen.push(format!(
                        "proven {} unproven {} swept {}",
                        e.proven.len(),
                        e.unproven.len(),
                        e.swept.len()
                    ));
                }
                other => panic!("{other:?}"),
            }
        }
        seen
    }

    #[test]
    fn a_complete_full_bulk_sweeps_and_a_lossy_one_does_not() {
        let mut from = table(300);
        let mut q = SendQueue::default();
        let mut s = BulkSender::default();
        assert!(s.start_full(&from, &mut q));
        assert!(!s.start_full(&from, &mut q), "one queued at a time");
        // The receiver holds an extra flow the sender deleted long ago.
        let mut into = FlowCache::with_seed(9);
        into.upsert(udp(5000), 0);
        let mut rx = BulkRx::Idle;
        let seen = deliver(&mut q, &mut s, &mut from, &mut into, &mut rx, |_| false);
        assert_eq!(
            seen,
            vec![format!("{:?}", FullEnd::Swept(vec![udp(5000).key()]))]
        );
        assert_eq!((into.len(), into.digest()), (from.len(), from.digest()));
        assert_eq!(s.state, BulkTx::Idle);
        // Again, losing every tenth flow: the extra stays, and so do the
        // flows the receiver had from before whose copies were lost.
        into.upsert(udp(5000), 0);
        assert!(s.start_full(&from, &mut q));
        let seen = deliver(&mut q, &mut s, &mut from, &mut into, &mut rx, |i| {
            i % 10 == 0
        });
        assert_eq!(seen, vec![format!("{:?}", FullEnd::Unproven)]);
        assert_eq!(into.len(), from.len() + 1, "nothing swept");
    }

    #[test]
    fn range_bulks_repair_only_their_ranges_and_prove_each() {
        let mut from = table(2000);
        let mut into = table(2000);
        let mut rx = BulkRx::Idle;
        // The receiver lacks two flows in one range and holds an extra one
        // in another.
        let (r1, r2) = (range_of(&udp(1).key()), range_of(&udp(5001).key()));
        into.remove(&udp(1).key());
        into.upsert(udp(5001), 0);
        let mut q = SendQueue::default();
        let mut s = BulkSender::default();
        assert_eq!(s.start_ranges(&from, &mut q, &[r1, r2, r1]), 2);
        assert_eq!(
            s.start_ranges(&from, &mut q, &[r1]),
            0,
            "queued ranges coalesce"
        );
        let before = q.len();
        assert!(before < 2000 / 256 * 6 + 20, "only the ranges: {before}");
        let seen = deliver(&mut q, &mut s, &mut from, &mut into, &mut rx, |_| false);
        assert_eq!(seen.len(), 2);
        assert_eq!((into.len(), into.digest()), (from.len(), from.digest()));
        // Losing flows leaves a range unproven: nothing swept there.
        into.upsert(udp(5001), 0);
        let lost_range = r2;
        assert_eq!(s.start_ranges(&from, &mut q, &[lost_range]), 1);
        let seen = deliver(&mut q, &mut s, &mut from, &mut into, &mut rx, |i| i == 2);
        assert_eq!(seen, vec!["proven 0 unproven 1 swept 0".to_string()]);
        assert!(into.contains(&udp(5001).key()));
    }

    #[test]
    fn a_range_bulk_inside_a_full_one_is_ignored() {
        let mut c = table(10);
        let mut rx = BulkRx::Idle;
        rx.begin_full(1, &mut c);
        assert!(!rx.begin_ranges(2));
        rx.end_ranges(2);
        assert!(matches!(rx, BulkRx::Full { id: 1, .. }));
        assert_eq!(rx.end_full(7, 0, None, false, &mut c), FullEnd::Ignored);
        // Legacy end (no hash): the count alone must match.
        assert_eq!(rx.end_full(1, 3, None, false, &mut c), FullEnd::Unproven);
        assert_eq!(rx, BulkRx::Idle);
        // In order (FTFW), a bulk whose sums missed still sweeps.
        rx.begin_full(2, &mut c);
        c.upsert(udp(1), 0);
        let FullEnd::Swept(mut swept) = rx.end_full(2, 3, Some(0), true, &mut c) else {
            panic!("an in-order bulk sweeps");
        };
        swept.sort_unstable();
        let mut want: Vec<FlowKey> = (0..10).filter(|&p| p != 1).map(|p| udp(p).key()).collect();
        want.sort_unstable();
        assert_eq!(swept, want);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn rounds_of_a_range_repair_add_up_in_any_order() {
        let from = table(3000);
        let r = range_of(&udp(1).key());
        let in_r: Vec<u16> = (0..3000)
            .filter(|&p| range_of(&udp(p).key()) == r)
            .collect();
        assert!(in_r.len() > 4);
        let mut into = FlowCache::with_seed(2);
        into.upsert(udp(9999), 0); // an extra, in some range
        let extra_r = range_of(&udp(9999).key());
        let g = into.begin_generation();
        let since = |range: u16| (range == r || range == extra_r).then_some(g);
        let sums = vec![from.range_sum(r), from.range_sum(extra_r)];
        // Round one brings half of r (and its end arrives early).
        for &p in &in_r[..in_r.len() / 2] {
            into.upsert(udp(p), 1);
        }
        let e = prove_ranges(&mut into, &sums, since);
        assert!(e.unproven.contains(&r) && e.swept.is_empty(), "{e:?}");
        // Round two the rest, in reverse: now it is complete.
        for &p in in_r[in_r.len() / 2..].iter().rev() {
            into.upsert(udp(p), 2);
        }
        for p in 0..3000u16 {
            if range_of(&udp(p).key()) == extra_r {
                into.upsert(udp(p), 2);
            }
        }
        let e = prove_ranges(&mut into, &sums, since);
        assert!(e.unproven.is_empty(), "{e:?}");
        assert_eq!(e.swept, vec![udp(9999).key()]);
        assert_eq!(into.range_sum(r), from.range_sum(r));
        // A range not being repaired is left alone.
        let e = prove_ranges(&mut into, &sums, |_| None);
        assert_eq!(e, RangesEnd::default());
    }

    #[test]
    fn range_messages_fit_the_payload() {
        for payload in [wire::HEADER_LEN + 160, 1452, 1472, 9000] {
            let n = ranges_per_message(payload);
            let sums: Vec<RangeSum> = (0..n as u16)
                .map(|range| RangeSum {
                    range: range + 200.min(RANGES - n as u16),
                    count: u32::MAX,
                    hash: u64::MAX,
                })
                .collect();
            let bodies =
                wire::Packer::pack_all(payload, &[Message::RangeEnd { id: u32::MAX, sums }]);
            assert_eq!(bodies.len(), 1);
            assert!(
                bodies[0].encoded_len() + wire::HEADER_LEN <= payload,
                "{payload}"
            );
        }
    }
}
