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

/// One range of a peer's table we asked it to re-send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ask {
    /// When we last asked, and when to ask again if still not proven.
    asked_ms: u64,
    again_ms: u64,
    /// The external cache's generation when this repair began, and when:
    /// every flow of the range written since counts as re-sent. Rounds of
    /// a repair add up, so under steady loss a range is proven once each
    /// of its flows arrived in one round or another, and in any order.
    since: u32,
    since_ms: u64,
}

/// The ranges of one peer's table we asked it to re-send, until a range
/// bulk's end proves one or a digest shows it equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeWants {
    asked: BTreeMap<u16, Ask>,
}

impl RangeWants {
    /// A digest says `ranges` differ: those not asked for within
    /// `retry_ms` are to be asked for now (returned). A repair older than
    /// `restart_ms` starts afresh at a new generation (`generation` gives
    /// one), so a flow written during it that the peer deleted since (and
    /// whose delete was lost) cannot block the proof forever.
    pub fn want(
        &mut self,
        ranges: &[u16],
        now: u64,
        retry_ms: u64,
        restart_ms: u64,
        mut generation: impl FnMut() -> u32,
    ) -> Vec<u16> {
        let mut fresh: Option<u32> = None;
        let mut ask = Vec::new();
        for &r in ranges {
            let mut new_since = || *fresh.get_or_insert_with(&mut generation);
            match self.asked.get_mut(&r) {
                None => {
                    self.asked.insert(
                        r,
                        Ask {
                            asked_ms: now,
                            again_ms: now.saturating_add(retry_ms),
                            since: new_since(),
                            since_ms: now,
                        },
                    );
                    ask.push(r);
                }
                Some(a) => {
                    if now >= a.since_ms.saturating_add(restart_ms) {
                        a.since = new_since();
                        a.since_ms = now;
                    }
                    if now >= a.again_ms {
                        a.asked_ms = now;
                        a.again_ms = now.saturating_add(retry_ms);
                        ask.push(r);
                    }
                }
            }
        }
        ask
    }

    /// `ranges` are known to be incomplete right now (a bulk of them did
    /// not prove them): ask again, keeping what arrived so far; now, or
    /// `min_gap_ms` after the last ask if that was sooner (under churn a
    /// range may miss its proof round after round: it must not turn into
    /// a storm of bulks). Returns the ranges to ask for now.
    pub fn want_now(
        &mut self,
        ranges: &[u16],
        now: u64,
        min_gap_ms: u64,
        retry_ms: u64,
    ) -> Vec<u16> {
        let mut ask = Vec::new();
        for &r in ranges {
            if let Some(a) = self.asked.get_mut(&r) {
                let at = a.asked_ms.saturating_add(min_gap_ms);
                if now >= at {
                    a.asked_ms = now;
                    a.again_ms = now.saturating_add(retry_ms);
                    ask.push(r);
                } else {
                    a.again_ms = a.again_ms.min(at);
                }
            }
        }
        ask
    }

    /// The generation since which `range` is being repaired, if it is.
    pub fn since(&self, range: u16) -> Option<u32> {
        self.asked.get(&range).map(|a| a.since)
    }

    /// The range is right: stop asking.
    pub fn settled(&mut self, range: u16) {
        self.asked.remove(&range);
    }

    /// Ranges due to be asked for again and still not proven (asked
    /// `retry_ms` ago, or deferred by `want_now`): asked again now
    /// (returned). A repair no digest renewed for `give_up_ms` is
    /// dropped (the peer stopped sending digests: its table is not the
    /// reference now); the next digest that differs starts it again.
    pub fn due(&mut self, now: u64, retry_ms: u64, give_up_ms: u64) -> Vec<u16> {
        self.asked
            .retain(|_, a| now < a.since_ms.saturating_add(give_up_ms));
        let mut due = Vec::new();
        for (&r, a) in self.asked.iter_mut() {
            if now >= a.again_ms {
                a.asked_ms = now;
                a.again_ms = now.saturating_add(retry_ms);
                due.push(r);
            }
        }
        due
    }

    /// When `due` next has something to ask.
    pub fn next_due(&self) -> Option<u64> {
        self.asked.values().map(|a| a.again_ms).min()
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
                assert_eq!(
                    wire::Packer::pack_all(payload, std::slice::from_ref(m)).len(),
                    1
                );
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
        let mut g = 10;
        let mut next = || {
            g += 1;
            g
        };
        assert_eq!(w.want(&[3, 4], 0, 1_000, 5_000, &mut next), vec![3, 4]);
        assert_eq!(
            (w.since(3), w.since(4)),
            (Some(11), Some(11)),
            "one generation per digest"
        );
        assert_eq!(
            w.want(&[3, 5], 500, 1_000, 5_000, &mut next),
            vec![5],
            "3 was just asked"
        );
        assert_eq!(w.since(5), Some(12));
        assert_eq!(w.next_due(), Some(1_000));
        assert!(w.due(999, 1_000, 15_000).is_empty());
        assert_eq!(w.due(1_000, 1_000, 15_000), vec![3, 4]);
        // An unproven bulk asks again at once and keeps the generation.
        assert!(
            w.want_now(&[3], 1_150, 200, 1_000).is_empty(),
            "within the gap"
        );
        assert_eq!(w.next_due(), Some(1_200), "deferred to the gap's end");
        assert_eq!(w.due(1_200, 1_000, 15_000), vec![3]);
        assert_eq!(
            w.want_now(&[3, 9], 1_400, 200, 1_000),
            vec![3],
            "9 was never asked"
        );
        assert_eq!(w.since(3), Some(11));
        // A repair older than the restart period starts afresh.
        assert_eq!(w.want(&[3], 6_000, 1_000, 5_000, &mut next), vec![3]);
        assert_eq!(w.since(3), Some(13));
        // Without digests renewing them, repairs are given up.
        assert_eq!(
            w.due(15_600, 1_000, 15_000),
            vec![3],
            "4 and 5 began at 0 and 500"
        );
        assert_eq!(w.since(4), None);
        w.settled(3);
        w.settled(4);
        w.settled(5);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
        assert_eq!(w.since(3), None);
    }
}
