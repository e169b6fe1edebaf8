//! What a commit writes, and in which order.
//!
//! Owns: the choice between writing only what warm standby knows is
//! missing, verifying the mirror against the table, and writing every
//! peer flow most recently active first; the commit timeout of a written
//! flow; building the ordered flow lists from frozen peer caches.
//! Must not: touch the kernel (the kernel worker writes) or the live
//! caches (it reads frozen copies, on the worker's thread).

use crate::cache::{FrozenCache, FrozenEntry};
use crate::flow::{Flow, FlowKey};
use foldhash::HashSet;

/// conntrackd's floor for a commit timeout whose estimate ran out.
pub(super) const COMMIT_TIMEOUT_FLOOR: u32 = 60;

/// Flows the first step of a commit without warm standby writes before
/// the rest is gathered: the most recently active ones.
pub(super) const URGENT_COMMIT: usize = 16_384;

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
    /// The owner's clock when the caches were frozen.
    pub now_ms: u64,
    /// `[kernel] commit_timeout`: every written flow gets it.
    pub configured_timeout: Option<u32>,
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

impl CommitSource {
    pub(super) fn len(&self) -> usize {
        self.caches.iter().map(FrozenCache::len).sum()
    }

    fn entries(&self) -> impl Iterator<Item = FrozenEntry<'_>> + '_ {
        self.caches.iter().flat_map(FrozenCache::entries)
    }

    /// Decode an entry into the flow a commit writes, with its recency.
    fn decoded(&self, entry: &FrozenEntry<'_>) -> ((u64, u64), Flow) {
        let entry = entry.entry();
        let rank = recency(entry.updated_ms, entry.flow.timeout);
        let mut flow = entry.flow;
        flow.timeout = commit_timeout(
            flow.timeout,
            entry.updated_ms,
            self.now_ms,
            self.configured_timeout,
        );
        (rank, flow)
    }

    fn sorted(mut ranked: Vec<((u64, u64), Flow)>) -> Vec<Flow> {
        ranked.sort_unstable_by_key(|(rank, _)| std::cmp::Reverse(*rank));
        ranked.into_iter().map(|(_, flow)| flow).collect()
    }

    /// The `limit` most recently changed flows (by the second of their
    /// last change), most recent first; only those are decoded.
    pub(super) fn most_recent(&self, limit: usize) -> Vec<Flow> {
        let mut stamps: Vec<(u64, FrozenEntry<'_>)> =
            self.entries().map(|e| (e.updated_ms(), e)).collect();
        if stamps.len() > limit && limit > 0 {
            stamps.select_nth_unstable_by_key(limit - 1, |(t, _)| std::cmp::Reverse(*t));
        }
        stamps.truncate(limit);
        let ranked = stamps.iter().map(|(_, e)| self.decoded(e)).collect();
        Self::sorted(ranked)
    }

    /// Every flow whose key `keep` accepts, by the second of its last
    /// change, most recent first (within a second in no set order), ranked
    /// when first asked for and decoded one at a time as the iterator is
    /// advanced: a commit's encoder takes them while the kernel inserts
    /// the flows before them.
    pub(super) fn recent_first_lazy<'a>(
        &'a self,
        keep: impl Fn(&FlowKey) -> bool + Send + 'a,
    ) -> impl Iterator<Item = Flow> + Send + 'a {
        std::iter::once(())
            .flat_map(move |()| {
                let mut entries: Vec<FrozenEntry<'a>> = self.entries().collect();
                entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.updated_ms()));
                entries
            })
            .filter(move |e| keep(&e.key()))
            .map(move |e| self.decoded(&e).1)
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
    use crate::cache::FlowCache;
    use crate::flow::test_flows::udp;

    fn source(flows: &[(u16, u64)], now_ms: u64, configured: Option<u32>) -> CommitSource {
        let mut cache = FlowCache::with_seed(1);
        for &(port, at_ms) in flows {
            let mut f = udp(port);
            f.timeout = 120;
            cache.upsert(f, at_ms);
        }
        CommitSource {
            caches: vec![cache.freeze()],
            now_ms,
            configured_timeout: configured,
        }
    }

    fn ports(flows: &[Flow]) -> Vec<u16> {
        flows
            .iter()
            .map(|f| match f.orig.l4 {
                crate::flow::L4::Ports { src, .. } => src,
                _ => 0,
            })
            .collect()
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
        assert_eq!(ports(&src.ordered(|_| true)), vec![2, 3, 4, 1]);
        assert_eq!(ports(&src.most_recent(2)), vec![2, 3]);
        let all = src.ordered(|_| true);
        assert_eq!(all[0].timeout, 110, "120 s on the wire, 10 s ago");
    }

    #[test]
    fn the_rest_of_a_commit_leaves_out_what_went_first() {
        let src = source(&[(1, 1_000), (2, 2_000), (3, 3_000)], 4_000, Some(300));
        let first: HashSet<FlowKey> = src.most_recent(1).iter().map(Flow::key).collect();
        let rest = src.ordered(|k| !first.contains(k));
        assert_eq!(ports(&rest), vec![2, 1]);
        assert!(rest.iter().all(|f| f.timeout == 300));
        let lazy: Vec<Flow> = src.recent_first_lazy(|k| !first.contains(k)).collect();
        assert_eq!(lazy, rest);
    }
}
