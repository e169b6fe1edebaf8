//! ALARM mode's two clocks: the sender's refresh cursor, which walks our
//! flows so that each is re-sent at least once per refresh period, and the
//! receiver's expiry clock, which ages external flows in coarse slots.
//!
//! Owns: the ordered key set the cursor walks and its send credit; the slot
//! arithmetic of expiry. Must not: build messages, touch the send queue, or
//! read the clock (times are arguments); the Node decides what to do with
//! the keys due and the entries expired.

use crate::cache::FlowCache;
use crate::flow::FlowKey;
use std::collections::BTreeSet;
use std::ops::Bound;

/// Keys a cursor wake-up should have collected at least (fewer only when
/// the table is smaller): a few datagrams' worth, so a large table is not
/// refreshed one key per millisecond.
const REFRESH_BATCH: u64 = 16;

/// Walks every key of the internal cache round and round, in key order, at
/// `len / lap_ms` keys per millisecond. A key is revisited when the cursor
/// has been once around: after about `lap_ms`, however the table changed
/// meanwhile (keys added behind the cursor wait a lap, ahead of it are met
/// in this one). Changes are sent at once by the Node besides.
#[derive(Clone, Debug)]
pub(crate) struct RefreshCursor {
    keys: BTreeSet<FlowKey>,
    /// The last key handed out.
    last: Option<FlowKey>,
    lap_ms: u64,
    /// Accrued key-milliseconds not yet spent (a key costs `lap_ms`).
    credit: u128,
    since_ms: u64,
}

impl RefreshCursor {
    /// A cursor that completes a lap in `lap_ms` (at least 1).
    pub fn new(lap_ms: u64, now_ms: u64) -> RefreshCursor {
        RefreshCursor {
            keys: BTreeSet::new(),
            last: None,
            lap_ms: lap_ms.max(1),
            credit: 0,
            since_ms: now_ms,
        }
    }

    pub fn insert(&mut self, key: FlowKey) {
        self.keys.insert(key);
    }

    pub fn remove(&mut self, key: &FlowKey) {
        self.keys.remove(key);
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.credit = 0;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    fn accrue(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.since_ms);
        self.since_ms = self.since_ms.max(now_ms);
        let len = self.keys.len() as u128;
        if len == 0 {
            self.credit = 0;
            return;
        }
        self.credit = self
            .credit
            .saturating_add(len.saturating_mul(u128::from(elapsed)));
        // Never more than one lap's worth: a late poll sends each key once.
        let lap = len.saturating_mul(u128::from(self.lap_ms));
        self.credit = self.credit.min(lap);
    }

    /// The keys due for a refresh by `now_ms`, in walking order.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<FlowKey> {
        self.accrue(now_ms);
        let lap = u128::from(self.lap_ms);
        let n = usize::try_from(self.credit / lap).unwrap_or(usize::MAX);
        if n == 0 {
            return Vec::new();
        }
        self.credit -= (n as u128) * lap;
        let after: Vec<FlowKey> = match self.last {
            Some(last) => self
                .keys
                .range((Bound::Excluded(last), Bound::Unbounded))
                .take(n)
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let rest = n.saturating_sub(after.len()).min(self.keys.len());
        let mut due = after;
        due.extend(self.keys.iter().take(rest).copied());
        // `n` never exceeds the key count, so no key is handed out twice.
        due.truncate(self.keys.len());
        self.last = due.last().copied().or(self.last);
        due
    }

    /// When at least a batch of keys will be due (`None`: nothing to walk).
    pub fn next_due(&self) -> Option<u64> {
        let len = self.keys.len() as u128;
        if len == 0 {
            return None;
        }
        let batch = len.min(u128::from(REFRESH_BATCH));
        let need = (batch * u128::from(self.lap_ms)).saturating_sub(self.credit);
        let wait = need.div_ceil(len);
        Some(
            self.since_ms
                .saturating_add(u64::try_from(wait).unwrap_or(u64::MAX)),
        )
    }
}

/// Slots of an expiry timeout: external flows expire between `timeout` and
/// `timeout + 2 * timeout / EXPIRY_SLOTS` after their last refresh.
pub(crate) const EXPIRY_SLOTS: u32 = 32;

/// The receiver's expiry clock. Each external cache's resync generation
/// (unused in ALARM, which has no bulks) counts slots: every upsert stamps
/// the entry with the current one, and a tick every `slot_ms` starts the
/// next. An entry more than `EXPIRY_SLOTS` generations old has not been
/// refreshed for at least `EXPIRY_SLOTS * slot_ms >= timeout`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExpiryClock {
    slot_ms: u64,
    slot_started_ms: u64,
}

impl ExpiryClock {
    pub fn new(timeout_ms: u64, now_ms: u64) -> ExpiryClock {
        ExpiryClock {
            slot_ms: timeout_ms.div_ceil(u64::from(EXPIRY_SLOTS)).max(1),
            slot_started_ms: now_ms,
        }
    }

    pub fn next_tick(&self) -> u64 {
        self.slot_started_ms.saturating_add(self.slot_ms)
    }

    /// If a slot has ended, start the next one in every cache and remove
    /// what has expired; returns `(sender, key)` of each removed flow. One
    /// slot per call, so a late call can only make expiry later, never
    /// earlier.
    pub fn tick<'a>(
        &mut self,
        now_ms: u64,
        caches: impl Iterator<Item = (&'a u32, &'a mut FlowCache)>,
    ) -> Vec<(u32, FlowKey)> {
        if now_ms < self.next_tick() {
            return Vec::new();
        }
        self.slot_started_ms = now_ms;
        let mut gone = Vec::new();
        for (&sender, cache) in caches {
            if cache.is_empty() {
                continue;
            }
            let current = cache.begin_generation();
            let old = cache.sweep_where(|g| current.wrapping_sub(g) > EXPIRY_SLOTS);
            gone.extend(old.into_iter().map(|key| (sender, key)));
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;
    use std::collections::{BTreeMap, HashMap};

    fn key(n: u16) -> FlowKey {
        udp(n).key()
    }

    #[test]
    fn every_key_is_refreshed_within_a_lap_and_evenly() {
        let lap = 900;
        let mut c = RefreshCursor::new(lap, 0);
        for n in 0..1000 {
            c.insert(key(n));
        }
        let mut last_seen: HashMap<FlowKey, u64> = HashMap::new();
        let mut worst_gap = 0;
        let mut most_at_once = 0;
        let mut t = 0;
        let mut polls = 0;
        let mut added = 0;
        while t < 10 * lap {
            let due = c.take_due(t);
            most_at_once = most_at_once.max(due.len());
            for k in due {
                let before = last_seen.insert(k, t).unwrap_or(0);
                worst_gap = worst_gap.max(t - before);
            }
            // Churn: a key added (as if sent at once), another removed.
            if t / 97 > added {
                added = t / 97;
                c.insert(key(2000 + added as u16));
                last_seen.insert(key(2000 + added as u16), t);
                c.remove(&key(added as u16));
            }
            let next = c.next_due().unwrap();
            assert!(next > t, "no busy loop");
            t = next;
            polls += 1;
        }
        assert!(last_seen.len() > 1000);
        assert!(worst_gap <= lap + 20, "worst gap {worst_gap}");
        assert!(most_at_once <= 2 * REFRESH_BATCH as usize, "{most_at_once}");
        assert!(polls > 100, "spread, not bursts: {polls}");
        // Keys never inserted are never due; removed keys no more.
        assert!(!last_seen.contains_key(&key(5000)));
    }

    #[test]
    fn a_late_poll_sends_each_key_once_and_empty_means_idle() {
        let mut c = RefreshCursor::new(100, 0);
        assert_eq!(c.next_due(), None);
        for n in 0..10 {
            c.insert(key(n));
        }
        let due = c.take_due(10_000);
        assert_eq!(due.len(), 10);
        let unique: BTreeSet<_> = due.iter().collect();
        assert_eq!(unique.len(), 10);
        c.clear();
        assert_eq!(c.len(), 0);
        assert!(c.take_due(20_000).is_empty());
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn expiry_is_never_early_and_at_most_two_slots_late() {
        let timeout = 3200;
        let mut clock = ExpiryClock::new(timeout, 0);
        let mut caches: BTreeMap<u32, FlowCache> = BTreeMap::new();
        let mut t = 0;
        let mut expired_at: HashMap<FlowKey, u64> = HashMap::new();
        let refreshed_at = [(0u16, 50u64), (1, 1234), (2, 2000)];
        while t < 10_000 {
            for (n, at) in refreshed_at {
                // Flow n is refreshed every 500 ms until `at`.
                if t <= at && t % 500 == 0 {
                    caches.entry(9).or_default().upsert(udp(n), t);
                }
            }
            for (_, k) in clock.tick(t, caches.iter_mut()) {
                expired_at.insert(k, t);
            }
            t += 10;
        }
        let slot = timeout / u64::from(EXPIRY_SLOTS);
        for (n, at) in refreshed_at {
            let last = at - at % 500;
            let gone = expired_at[&key(n)];
            assert!(gone >= last + timeout, "{n}: {gone} < {last} + {timeout}");
            assert!(gone <= last + timeout + 2 * slot + 10, "{n}: {gone}");
        }
        assert!(caches[&9].is_empty());
    }
}
