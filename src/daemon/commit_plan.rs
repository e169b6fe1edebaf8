//! What a commit writes, and in which order.
//!
//! Owns: the choice between writing only what warm standby knows is
//! missing, verifying the mirror against the table, and writing every
//! peer flow most recently active first; the commit timeout of a written
//! flow; how the owner splits its live caches into the copies a commit
//! takes (`RecentSplit`); building the ordered flow lists from those
//! copies on the worker's thread.
//! Must not: touch the kernel (the kernel worker writes) or change a
//! cache (the owner's copies only read them).

use crate::cache::{FlowCache, FrozenCache, FrozenEntry};
use crate::flow::{Flow, FlowKey};
use foldhash::HashSet;
use std::sync::mpsc::Receiver;

/// conntrackd's floor for a commit timeout whose estimate ran out.
pub(super) const COMMIT_TIMEOUT_FLOOR: u32 = 60;

/// Flows the first step of a commit without warm standby writes while
/// the rest is copied: the most recently active ones. About 65 ms of
/// writing, as long as copying the rest of a million flows takes (at four
/// million the writer waits about 100 ms for the rest).
pub(super) const URGENT_COMMIT: usize = 32_768;

/// Age classes of the rest of such a commit: an entry last changed `age`
/// seconds ago is in class `bits(age)` (0 s; 1 s; 2-3 s; 4-7 s; ...), and
/// the classes go in youngest first.
const AGE_CLASSES: usize = 33;

/// How a commit proceeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CommitPlan {
    /// Warm standby, nothing lost unseen: the kernel holds every peer flow
    /// but these. Write them.
    OnlyMissing(HashSet<FlowKey>),
    /// Warm standby, the mirror may have holes nobody reported: write
    /// these first, then read the table and write every other flow that
    /// is absent or differs.
    Verify(HashSet<FlowKey>),
    /// No mirror: the `URGENT_COMMIT` most recently active flows at once,
    /// then the rest.
    RecentFirst,
}

impl CommitPlan {
    /// Choose: `warm` standby is on; its mirror is `intact` (no overrun,
    /// failed read or paused events since the table was last checked);
    /// the kernel delivers events at all; `missing` are the peer flows
    /// warm standby knows are not in the kernel.
    pub(super) fn choose(
        warm: bool,
        intact: bool,
        events_on: bool,
        missing: impl FnOnce() -> HashSet<FlowKey>,
    ) -> CommitPlan {
        match (warm, intact && events_on) {
            (false, _) => CommitPlan::RecentFirst,
            (true, true) => CommitPlan::OnlyMissing(missing()),
            (true, false) => CommitPlan::Verify(missing()),
        }
    }
}

/// The peers' flows to commit, frozen when the commit began.
pub(super) struct CommitSource {
    pub caches: Vec<FrozenCache>,
    /// The rest of a commit most recently active first (`caches` holding
    /// the most recent flows): the owner copies it while the worker
    /// writes those, and sends it here by age class, youngest first.
    pub later: Option<Receiver<Vec<FrozenCache>>>,
    /// The owner's clock when the caches were frozen.
    pub now_ms: u64,
    /// `[kernel] commit_timeout`: every written flow gets it.
    pub configured_timeout: Option<u32>,
}

/// How the owner splits its peers' caches for a commit most recently
/// active first: the `limit` most recently changed entries are copied
/// before the commit starts (`freeze_recent`), the rest while it writes
/// those (`freeze_rest`), by age class. The caches must not change in
/// between: both walk them in the same order.
pub(super) struct RecentSplit {
    /// Entries changed after this second are recent...
    cut_s: u32,
    /// ...and, per cache, this many of its entries of that second, the
    /// first in its order.
    at_cut: Vec<usize>,
    /// Each cache's size when split: a cache that changed since cannot be
    /// split the same way.
    lens: Vec<usize>,
    /// The owner's clock in seconds, for the age classes.
    now_s: u32,
    /// Bytes each age class takes frozen (recent entries included).
    class_bytes: [usize; AGE_CLASSES],
}

/// Whether an entry last changed at `stamp_s` is on the recent side of a
/// cut at `cut_s`: newer than it, or of that second while `left` of those
/// remain (one is used up). Both copies of a split decide with this, so
/// they cannot disagree.
fn is_recent(stamp_s: u32, cut_s: u32, left: &mut usize) -> bool {
    if stamp_s == cut_s && *left > 0 {
        *left -= 1;
        return true;
    }
    stamp_s > cut_s
}

/// The age class of an entry last changed at `stamp_s`.
fn age_class(now_s: u32, stamp_s: u32) -> usize {
    (u32::BITS - now_s.saturating_sub(stamp_s).leading_zeros()) as usize
}

impl RecentSplit {
    /// Copy the `limit` most recently changed entries of `caches` (by the
    /// second of their last change) into one frozen cache; returns it and
    /// the split that `freeze_rest` follows. Reads every entry's stamp
    /// in place, copies only the recent ones.
    pub(super) fn freeze_recent(
        caches: &[&FlowCache],
        limit: usize,
        now_ms: u64,
    ) -> (FrozenCache, RecentSplit) {
        let now_s = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let mut class_bytes = [0; AGE_CLASSES];
        let mut stamps = Vec::with_capacity(caches.iter().map(|c| c.len()).sum());
        for cache in caches {
            for (stamp, bytes) in cache.freeze_plan() {
                stamps.push(stamp);
                class_bytes[age_class(now_s, stamp)] += bytes;
            }
        }
        // The cut: the limit-th most recent stamp; of that second only as
        // many as fill the limit are recent.
        let (cut_s, mut quota) = if limit == 0 {
            (u32::MAX, 0)
        } else if stamps.len() <= limit {
            (0, usize::MAX)
        } else {
            let (_, &mut cut, _) =
                stamps.select_nth_unstable_by_key(limit - 1, |s| std::cmp::Reverse(*s));
            let newer = stamps.iter().filter(|&&s| s > cut).count();
            (cut, limit - newer)
        };
        let mut recent = [FrozenCache::with_capacity(limit.min(stamps.len()) * 64)];
        let mut at_cut = Vec::with_capacity(caches.len());
        for cache in caches {
            let before = quota;
            cache.freeze_into(&mut recent, |stamp| {
                is_recent(stamp, cut_s, &mut quota).then_some(0)
            });
            at_cut.push(before - quota);
        }
        let [recent] = recent;
        let split = RecentSplit {
            cut_s,
            at_cut,
            lens: caches.iter().map(|c| c.len()).collect(),
            now_s,
            class_bytes,
        };
        (recent, split)
    }

    /// Copy every entry of `caches` that `freeze_recent` left, by age
    /// class, youngest first (empty classes left out). Caches that are not
    /// the ones split, or changed since, are copied whole: a flow written
    /// twice is deleted and written again, one left out would be lost.
    pub(super) fn freeze_rest(&self, caches: &[&FlowCache]) -> Vec<FrozenCache> {
        let lens: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        if lens != self.lens {
            tracing::error!("a commit's caches changed between its copies: copying them whole");
            return caches.iter().map(|c| c.freeze()).collect();
        }
        let mut classes: Vec<FrozenCache> = self
            .class_bytes
            .iter()
            .map(|&bytes| FrozenCache::with_capacity(bytes))
            .collect();
        for (cache, &taken) in caches.iter().zip(&self.at_cut) {
            let mut left = taken;
            cache.freeze_into(&mut classes, |stamp| {
                (!is_recent(stamp, self.cut_s, &mut left)).then(|| age_class(self.now_s, stamp))
            });
        }
        classes.retain(|c| !c.is_empty());
        classes
    }
}

/// How recently a peer reported a flow: when it last reported a change (or
/// a timeout traffic refreshed), then when that timeout runs out.
pub(super) fn recency(updated_ms: u64, timeout_s: u32) -> (u64, u64) {
    (updated_ms, updated_ms / 1000 + u64::from(timeout_s))
}

/// A peer's flow as a commit writes it: the configured timeout, or what
/// was left on the wire minus the time since, floored at 60 s (as
/// conntrackd).
pub(super) fn commit_timeout(
    timeout_s: u32,
    updated_ms: u64,
    now_ms: u64,
    configured: Option<u32>,
) -> u32 {
    configured.unwrap_or_else(|| {
        let elapsed = now_ms.saturating_sub(updated_ms) / 1000;
        let left = u64::from(timeout_s).saturating_sub(elapsed);
        if left == 0 {
            COMMIT_TIMEOUT_FLOOR
        } else {
            u32::try_from(left).unwrap_or(u32::MAX)
        }
    })
}

/// A frozen entry decoded into the flow a commit writes, with its
/// recency.
fn decode_for_commit(
    entry: &FrozenEntry<'_>,
    now_ms: u64,
    configured: Option<u32>,
) -> ((u64, u64), Flow) {
    let entry = entry.entry();
    let rank = recency(entry.updated_ms, entry.flow.timeout);
    let mut flow = entry.flow;
    flow.timeout = commit_timeout(flow.timeout, entry.updated_ms, now_ms, configured);
    (rank, flow)
}

impl CommitSource {
    pub(super) fn len(&self) -> usize {
        self.caches.iter().map(FrozenCache::len).sum()
    }

    fn entries(&self) -> impl Iterator<Item = FrozenEntry<'_>> + '_ {
        self.caches.iter().flat_map(FrozenCache::entries)
    }

    /// Decode an entry into the flow a commit writes, with its recency.
    fn decoded(&self, entry: &FrozenEntry<'_>) -> ((u64, u64), Flow) {
        decode_for_commit(entry, self.now_ms, self.configured_timeout)
    }

    fn sorted(mut ranked: Vec<((u64, u64), Flow)>) -> Vec<Flow> {
        ranked.sort_unstable_by_key(|(rank, _)| std::cmp::Reverse(*rank));
        ranked.into_iter().map(|(_, flow)| flow).collect()
    }

    /// Every flow of `caches` by the second of its last change, most
    /// recent first (within a second in no set order): ranked at once,
    /// decoded one at a time as the iterator is advanced.
    pub(super) fn recent_first(&self) -> impl Iterator<Item = Flow> + Send + '_ {
        let mut entries: Vec<FrozenEntry<'_>> =
            self.caches.iter().flat_map(FrozenCache::entries).collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.updated_ms()));
        let (now_ms, configured) = (self.now_ms, self.configured_timeout);
        entries
            .into_iter()
            .map(move |e| decode_for_commit(&e, now_ms, configured).1)
    }

    /// The flows the owner sends to `later` (none without it), age class
    /// by age class, decoded one at a time as the iterator is advanced: a
    /// commit's encoder waits for them, if it must, once it has taken the
    /// flows before them, and takes them while the kernel inserts those.
    pub(super) fn later_flows(&mut self) -> impl Iterator<Item = Flow> + Send + 'static {
        let later = self.later.take();
        let (now_ms, configured) = (self.now_ms, self.configured_timeout);
        std::iter::once(())
            .flat_map(move |()| later.as_ref().and_then(|rx| rx.recv().ok()))
            .flatten()
            .flat_map(move |class| {
                class.into_mapped(move |e| decode_for_commit(&e, now_ms, configured).1)
            })
    }

    /// Every flow whose key `keep` accepts, most recently active first.
    pub(super) fn ordered(&self, keep: impl Fn(&FlowKey) -> bool) -> Vec<Flow> {
        let mut ranked = Vec::with_capacity(self.len());
        ranked.extend(
            self.entries()
                .filter(|e| keep(&e.key()))
                .map(|e| self.decoded(&e)),
        );
        Self::sorted(ranked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;

    /// A cache of UDP flows, each `(source port, last changed at ms)`.
    fn cache(flows: &[(u16, u64)]) -> FlowCache {
        let mut cache = FlowCache::with_seed(1);
        for &(port, at_ms) in flows {
            let mut f = udp(port);
            f.timeout = 120;
            cache.upsert(f, at_ms);
        }
        cache
    }

    fn source(flows: &[(u16, u64)], now_ms: u64, configured: Option<u32>) -> CommitSource {
        CommitSource {
            caches: vec![cache(flows).freeze()],
            later: None,
            now_ms,
            configured_timeout: configured,
        }
    }

    fn ports(flows: impl IntoIterator<Item = Flow>) -> Vec<u16> {
        flows
            .into_iter()
            .map(|f| match f.orig.l4 {
                crate::flow::L4::Ports { src, .. } => src,
                _ => 0,
            })
            .collect()
    }

    fn frozen_ports(copies: &[FrozenCache]) -> Vec<u16> {
        ports(
            copies
                .iter()
                .flat_map(FrozenCache::entries)
                .map(|e| e.entry().flow),
        )
    }

    #[test]
    fn the_plan_follows_warm_standby_and_the_mirrors_state() {
        let missing = || [udp(1).key()].into_iter().collect::<HashSet<_>>();
        assert_eq!(
            CommitPlan::choose(false, true, true, missing),
            CommitPlan::RecentFirst
        );
        assert_eq!(
            CommitPlan::choose(true, true, true, missing),
            CommitPlan::OnlyMissing(missing())
        );
        // A broken mirror, or a kernel that reports nothing, is verified.
        assert_eq!(
            CommitPlan::choose(true, false, true, missing),
            CommitPlan::Verify(missing())
        );
        assert_eq!(
            CommitPlan::choose(true, true, false, missing),
            CommitPlan::Verify(missing())
        );
    }

    #[test]
    fn timeouts_are_what_was_left_floored_or_the_configured_one() {
        assert_eq!(commit_timeout(120, 10_000, 40_000, None), 90);
        assert_eq!(commit_timeout(120, 0, 500_000, None), COMMIT_TIMEOUT_FLOOR);
        assert_eq!(commit_timeout(120, 0, 500_000, Some(180)), 180);
    }

    #[test]
    fn flows_come_most_recently_changed_first() {
        let src = source(
            &[(1, 1_000), (2, 30_000), (3, 20_000), (4, 5_000)],
            40_000,
            None,
        );
        assert_eq!(src.len(), 4);
        assert_eq!(ports(src.ordered(|_| true)), vec![2, 3, 4, 1]);
        assert_eq!(ports(src.recent_first()), vec![2, 3, 4, 1]);
        let all = src.ordered(|_| true);
        assert_eq!(all[0].timeout, 110, "120 s on the wire, 10 s ago");
    }

    #[test]
    fn the_split_copies_each_flow_once_the_most_recent_first() {
        // Two peers; second 30 holds four flows across both, and the cut
        // falls inside it: 3 newer than 30 s plus 2 of those four.
        let a = cache(&[
            (1, 31_000),
            (2, 30_000),
            (3, 10_000),
            (4, 30_500),
            (5, 33_000),
        ]);
        let b = cache(&[(6, 30_000), (7, 32_000), (8, 1_000), (9, 30_900)]);
        let caches = [&a, &b];
        let (recent, split) = RecentSplit::freeze_recent(&caches, 5, 40_000);
        let rest = split.freeze_rest(&caches);
        let mut recent_ports = frozen_ports(std::slice::from_ref(&recent));
        let rest_ports = frozen_ports(&rest);
        assert_eq!(recent_ports.len(), 5);
        assert_eq!(rest_ports.len(), 4);
        // The three newer than second 30 are recent; of second 30 two are,
        // the other two are the youngest of the rest.
        for newer in [1, 5, 7] {
            assert!(recent_ports.contains(&newer), "{recent_ports:?}");
        }
        assert!(rest_ports[..2].iter().all(|p| [2, 4, 6, 9].contains(p)));
        // Then by age class: 3 is 30 s old (class 5), 8 is 39 s (class 6).
        assert_eq!(rest_ports[2..], [3, 8]);
        recent_ports.extend(&rest_ports);
        recent_ports.sort_unstable();
        assert_eq!(
            recent_ports,
            (1..=9).collect::<Vec<_>>(),
            "each flow exactly once"
        );
    }

    #[test]
    fn the_rest_goes_youngest_age_class_first() {
        // Now 1000 s; ages 0, 1, 3, 100 and 900 s: five classes.
        let c = cache(&[
            (1, 100_000),
            (2, 900_000),
            (3, 997_000),
            (4, 999_000),
            (5, 1_000_000),
        ]);
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 0, 1_000_000);
        assert!(recent.is_empty());
        let rest = split.freeze_rest(&[&c]);
        assert_eq!(rest.len(), 5, "one copy per non-empty class");
        assert_eq!(frozen_ports(&rest), vec![5, 4, 3, 2, 1]);
        // A limit past the size takes everything now, nothing later.
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 10, 1_000_000);
        assert_eq!(recent.len(), 5);
        assert!(split.freeze_rest(&[&c]).is_empty());
    }

    #[test]
    fn a_cache_changed_between_the_copies_is_copied_whole() {
        let mut c = cache(&[(1, 1_000), (2, 2_000), (3, 3_000)]);
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 1, 4_000);
        assert_eq!(recent.len(), 1);
        assert_eq!(
            split
                .freeze_rest(&[&c])
                .iter()
                .map(FrozenCache::len)
                .sum::<usize>(),
            2
        );
        c.upsert(udp(4), 3_500);
        let rest = split.freeze_rest(&[&c]);
        assert_eq!(rest.iter().map(FrozenCache::len).sum::<usize>(), 4);
        // A different set of caches likewise.
        assert_eq!(split.freeze_rest(&[&c, &c]).len(), 2);
    }

    #[test]
    fn a_commit_takes_the_recent_flows_then_what_the_owner_sends_later() {
        // 2 is 3 s old (age class 2), 1 is 9 s old (class 4).
        let c = cache(&[(1, 1_000), (2, 7_000), (3, 8_000), (4, 9_000)]);
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 2, 10_000);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut src = CommitSource {
            caches: vec![recent],
            later: Some(rx),
            now_ms: 10_000,
            configured_timeout: Some(300),
        };
        let rest = src.later_flows();
        // The owner copies the rest after the commit began.
        tx.send(split.freeze_rest(&[&c])).unwrap();
        let flows: Vec<Flow> = src.recent_first().chain(rest).collect();
        assert!(flows.iter().all(|f| f.timeout == 300));
        assert_eq!(ports(flows), vec![4, 3, 2, 1]);
        // An owner that hung up ends the commit after the recent flows.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<FrozenCache>>(1);
        drop(tx);
        let mut src = CommitSource {
            later: Some(rx),
            ..source(&[(1, 1_000)], 10_000, None)
        };
        assert_eq!(src.later_flows().count(), 0);
    }
}
