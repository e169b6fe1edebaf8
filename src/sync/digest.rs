//! Anti-entropy by key range: when our digest goes out and what it says,
//! which of a peer's ranges our view of it gets wrong, and which ranges we
//! asked it to re-send.
//!
//! Owns: the digest schedule (`DigestTx`: Running, or Paused until our
//! table is the reference again), the range digest messages (every range's
//! count and hash, `cache::FlowCache::range_sum`, split to fit datagrams),
//! the comparison of a received digest with a view, and per peer the
//! ranges asked for and when (`RangeWants`). Must not: send bulks, sweep
//! caches (the bulk part does, with proof), or read the clock.

use super::bulk::ranges_per_message;
use crate::cache::FlowCache;
use crate::wire::{Message, RangeSum};
use std::collections::BTreeMap;

/// Whether our digests go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DigestTx {
    /// Every `digest_interval_ms` after `last_ms` (when the last went out,
    /// or the node started).
    Running { last_ms: u64 },
    /// We removed flows on our own (a local kernel flush, `-f internal`).
    /// Those removals are not replicated, as in conntrackd: a standby about
    /// to take over needs exactly the flows a demoted node purges. So no
    /// digest goes out (it would make peers repair them away) until `-R`
    /// or `-B` make our table the reference again.
    Paused { last_ms: u64 },
}

impl DigestTx {
    pub fn paused(&self) -> bool {
        matches!(self, DigestTx::Paused { .. })
    }

    pub fn pause(&mut self) {
        let (DigestTx::Running { last_ms } | DigestTx::Paused { last_ms }) = *self;
        *self = DigestTx::Paused { last_ms };
    }

    /// Our table is the reference again.
    pub fn resume(&mut self) {
        let (DigestTx::Running { last_ms } | DigestTx::Paused { last_ms }) = *self;
        *self = DigestTx::Running { last_ms };
    }

    /// When the next digest is due (`None`: paused or off).
    pub fn due(&self, interval_ms: u64) -> Option<u64> {
        match *self {
            DigestTx::Running { last_ms } if interval_ms > 0 => {
                Some(last_ms.saturating_add(interval_ms))
            }
            _ => None,
        }
    }

    pub fn sent(&mut self, now: u64) {
        *self = DigestTx::Running { last_ms: now };
    }
}

/// The range digest of `cache`: every range's sum, in range order, in
/// messages that each fit a datagram of `max_payload`.
pub(crate) fn digest_messages(cache: &FlowCache, max_payload: usize) -> Vec<Message> {
    let sums: Vec<RangeSum> = cache.range_sums().collect();
    sums.chunks(ranges_per_message(max_payload))
        .map(|c| Message::RangeDigest { sums: c.to_vec() })
        .collect()
}

/// The ranges of `sums` that `view` (our copy of the sender's table, if
/// any) holds differently.
pub(crate) fn differing(view: Option<&FlowCache>, sums: &[RangeSum]) -> Vec<u16> {
    sums.iter()
        .filter(|s| {
            let mine = view.map_or(
                RangeSum {
                    range: s.range,
                    ..RangeSum::default()
                },
                |c| c.range_sum(s.range),
            );
            mine != **s
        })
        .map(|s| s.range)
        .collect()
}

/// The ranges of one peer's table we asked it to re-send, each with when
/// we last asked, until a range bulk proves it or a digest shows it equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeWants {
    asked: BTreeMap<u16, u64>,
}

impl RangeWants {
    /// `ranges` differ: those not asked for within `retry_ms` are to be
    /// asked for now (returned).
    pub fn want(&mut self, ranges: &[u16], now: u64, retry_ms: u64) -> Vec<u16> {
        let mut ask = Vec::new();
        for &r in ranges {
            let due = self
                .asked
                .get(&r)
                .is_none_or(|&at| now >= at.saturating_add(retry_ms));
            if due {
                self.asked.insert(r, now);
                ask.push(r);
            }
        }
        ask
    }

    /// `ranges` are known to be wrong right now (a bulk of them lost
    /// something): ask again at once.
    pub fn want_now(&mut self, ranges: &[u16], now: u64) -> Vec<u16> {
        for &r in ranges {
            self.asked.insert(r, now);
        }
        ranges.to_vec()
    }

    /// The range is right: stop asking.
    pub fn settled(&mut self, range: u16) {
        self.asked.remove(&range);
    }

    /// Ranges asked for `retry_ms` ago and still not proven: asked again
    /// now (returned).
    pub fn due(&mut self, now: u64, retry_ms: u64) -> Vec<u16> {
        let due: Vec<u16> = self
            .asked
            .iter()
            .filter(|(_, &at)| now >= at.saturating_add(retry_ms))
            .map(|(&r, _)| r)
            .collect();
        for r in &due {
            self.asked.insert(*r, now);
        }
        due
    }

    pub fn next_due(&self, retry_ms: u64) -> Option<u64> {
        self.asked
            .values()
            .min()
            .map(|&at| at.saturating_add(retry_ms))
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.asked.is_empty()
    }

    pub fn clear(&mut self) {
        self.asked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::range_of;
    use crate::flow::test_flows::udp;
    use crate::wire::{self, RANGES};

    #[test]
    fn the_schedule_runs_pauses_and_resumes_where_it_was() {
        let mut d = DigestTx::Running { last_ms: 100 };
        assert_eq!(d.due(5_000), Some(5_100));
        assert_eq!(d.due(0), None, "interval 0: off");
        d.pause();
        assert!(d.paused());
        assert_eq!(d.due(5_000), None);
        d.resume();
        assert_eq!(d.due(5_000), Some(5_100));
        d.sent(7_000);
        assert_eq!(d.due(5_000), Some(12_000));
    }

    #[test]
    fn a_digest_covers_every_range_in_datagram_sized_messages() {
        let mut c = FlowCache::with_seed(1);
        for p in 0..3000 {
            c.upsert(udp(p), 0);
        }
        for payload in [wire::HEADER_LEN + 160, 1472] {
            let msgs = digest_messages(&c, payload);
            let mut all = Vec::new();
            for m in &msgs {
                let Message::RangeDigest { sums } = m else {
                    panic!("{m:?}")
                };
                all.extend(sums.iter().copied());
                assert_eq!(wire::Packer::pack_all(payload, &[m.clone()]).len(), 1);
            }
            assert_eq!(all, c.range_sums().collect::<Vec<_>>());
            assert_eq!(all.len(), usize::from(RANGES));
        }
        assert!(digest_messages(&c, 1472).len() <= 4);
    }

    #[test]
    fn differing_names_exactly_the_ranges_that_differ() {
        let mut a = FlowCache::with_seed(1);
        let mut b = FlowCache::with_seed(2);
        for p in 0..500 {
            a.upsert(udp(p), 0);
            b.upsert(udp(p), 0);
        }
        let sums: Vec<RangeSum> = a.range_sums().collect();
        assert!(differing(Some(&b), &sums).is_empty());
        b.remove(&udp(7).key());
        let mut changed = udp(9);
        changed.mark = 1;
        b.upsert(changed, 0);
        let mut want = vec![range_of(&udp(7).key()), range_of(&udp(9).key())];
        want.sort_unstable();
        want.dedup();
        assert_eq!(differing(Some(&b), &sums), want);
        // No view at all: every non-empty range differs.
        let none = differing(None, &sums);
        assert_eq!(none.len(), sums.iter().filter(|s| s.count > 0).count());
    }

    #[test]
    fn wants_are_asked_once_per_retry_until_settled() {
        let mut w = RangeWants::default();
        assert_eq!(w.want(&[3, 4], 0, 1_000), vec![3, 4]);
        assert_eq!(w.want(&[3, 5], 500, 1_000), vec![5], "3 was just asked");
        assert_eq!(w.next_due(1_000), Some(1_000));
        assert!(w.due(999, 1_000).is_empty());
        assert_eq!(w.due(1_000, 1_000), vec![3, 4]);
        w.settled(3);
        w.settled(4);
        assert_eq!(w.want_now(&[5], 1_200), vec![5]);
        assert_eq!(w.due(2_199, 1_000), Vec::<u16>::new());
        w.settled(5);
        assert!(w.is_empty());
        assert_eq!(w.next_due(1_000), None);
    }
}
