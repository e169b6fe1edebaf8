//! What a commit writes, and in which order.
//!
//! Owns: the choice between writing only what warm standby knows is
//! missing, verifying the mirror against the table, and writing every
//! peer flow most recently active first; the commit timeout of a written
//! flow; building the ordered flow lists from the copies the owner takes
//! (`recent_split`) on the worker's thread.
//! Must not: touch the kernel (the kernel worker writes) or change a
//! cache (the owner's copies only read them).

use crate::cache::{FrozenCache, FrozenEntry};
use crate::flow::{Flow, FlowKey};
use foldhash::HashSet;
use std::sync::mpsc::Receiver;

/// conntrackd's floor for a commit timeout whose estimate ran out.
pub(super) const COMMIT_TIMEOUT_FLOOR: u32 = 60;

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
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.updated_ms()));
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

/// Caches and copies of UDP flows for the tests here and in
/// `recent_split`.
#[cfg(test)]
pub(super) mod test_support {
    use crate::cache::{FlowCache, FrozenCache};
    use crate::flow::test_flows::udp;
    use crate::flow::Flow;

    /// A cache of UDP flows, each `(source port, last changed at ms)`.
    pub fn cache(flows: &[(u16, u64)]) -> FlowCache {
        let mut cache = FlowCache::with_seed(1);
        for &(port, at_ms) in flows {
            let mut f = udp(port);
            f.timeout = 120;
            cache.upsert(f, at_ms);
        }
        cache
    }

    pub fn ports(flows: impl IntoIterator<Item = Flow>) -> Vec<u16> {
        flows
            .into_iter()
            .map(|f| match f.orig.l4 {
                crate::flow::L4::Ports { src, .. } => src,
                _ => 0,
            })
            .collect()
    }

    pub fn count(copies: &[FrozenCache]) -> usize {
        copies.iter().map(FrozenCache::len).sum()
    }

    pub fn frozen_ports(copies: &[FrozenCache]) -> Vec<u16> {
        ports(
            copies
                .iter()
                .flat_map(FrozenCache::entries)
                .map(|e| e.entry().flow),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{cache, ports};
    use super::*;
    use crate::daemon::recent_split::RecentSplit;
    use crate::flow::test_flows::udp;

    fn source(flows: &[(u16, u64)], now_ms: u64, configured: Option<u32>) -> CommitSource {
        CommitSource {
            caches: vec![cache(flows).freeze()],
            later: None,
            now_ms,
            configured_timeout: configured,
        }
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
    fn a_commit_takes_the_recent_flows_then_what_the_owner_sends_later() {
        // 2 is 3 s old (age class 2), 1 is 9 s old (class 4).
        let c = cache(&[(1, 1_000), (2, 7_000), (3, 8_000), (4, 9_000)]);
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 2, 10_000);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut src = CommitSource {
            caches: recent,
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
