//! How the owner copies its peers' caches for a commit most recently
//! active first, in two steps: the most recently changed entries before
//! the commit starts, the rest by age class while the kernel writer
//! writes those.
//!
//! Owns: finding the cut (counting entries by second of age), the
//! threads that read the caches for the first step, and the bookkeeping
//! that lets the second step take exactly what the first left.
//! Must not: change a cache (both steps only read the owner's caches),
//! decode flows or decide timeouts (`commit_plan` does, on the worker's
//! thread).

use crate::cache::{FlowCache, FrozenCache};
use crate::sharded_table::Part;

/// Flows the first step of a commit without warm standby writes while
/// the rest is copied: the most recently active ones. 120-150 ms of
/// writing, longer than copying the rest of a million flows takes (74 to
/// 105 ms measured; with half as many the writer waited up to 20 ms for
/// the rest). At four million flows the writer still waits for it.
pub(super) const URGENT_COMMIT: usize = 65_536;

/// Age classes of the rest of such a commit: an entry last changed `age`
/// seconds ago is in class `bits(age)` (0 s; 1 s; 2-3 s; 4-7 s; ...), and
/// the classes go in youngest first.
const AGE_CLASSES: usize = 33;

/// How the owner splits its peers' caches for a commit most recently
/// active first: the `limit` most recently changed entries are copied
/// before the commit starts (`freeze_recent`), the rest while it writes
/// those (`freeze_rest`), by age class. The caches must not change in
/// between: both walk them in the same order.
pub(super) struct RecentSplit {
    /// Entries changed after this second are recent...
    cut_s: u32,
    /// The parts each cache was read in...
    parts: Vec<Part>,
    /// ...and, per part of each cache (index: cache * parts + part), this
    /// many of its entries of that second, the first in its order.
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

/// Threads `freeze_recent` reads the caches with.
const FREEZE_THREADS: usize = 2;

/// `work` on each of `parts`, the first on this thread, the others on
/// threads of their own (or this one, if one cannot be started); the
/// results in the parts' order.
fn in_parallel<T: Send>(parts: &[Part], work: impl Fn(Part) -> T + Sync) -> Vec<T> {
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = parts
            .iter()
            .skip(1)
            .map(|&part| {
                let started = std::thread::Builder::new()
                    .name("ctsync-freeze".into())
                    .spawn_scoped(scope, move || {
                        super::priority::ordinary_thread();
                        work(part)
                    });
                (part, started)
            })
            .collect();
        let mut results = Vec::with_capacity(parts.len());
        results.extend(parts.first().map(|&part| work(part)));
        for (part, started) in others {
            let result = match started {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => work(part),
            };
            results.push(result);
        }
        results
    })
}

/// Seconds of age within which `freeze_recent` finds its cut by counting
/// the entries of each second (in the pass that reads the stamps anyway);
/// when fewer than the limit changed that recently, it sorts the stamps.
const COUNTED_AGES: usize = 4096;

/// The entries of a split counted by the second of their last change,
/// for the last `COUNTED_AGES` seconds.
struct AgeCounts {
    now_s: u32,
    /// Stamped after `now_s` (not expected: the stamps come from the same
    /// clock), newer than any cut.
    after_now: usize,
    /// Index: age in seconds.
    per_age: Vec<usize>,
}

impl AgeCounts {
    fn new(now_s: u32) -> AgeCounts {
        AgeCounts {
            now_s,
            after_now: 0,
            per_age: vec![0; COUNTED_AGES],
        }
    }

    fn add(&mut self, stamp_s: u32) {
        match self.now_s.checked_sub(stamp_s) {
            None => self.after_now += 1,
            Some(age) => {
                if let Some(n) = self.per_age.get_mut(age as usize) {
                    *n += 1;
                }
            }
        }
    }

    fn merge(&mut self, other: &AgeCounts) {
        self.after_now += other.after_now;
        self.per_age
            .iter_mut()
            .zip(&other.per_age)
            .for_each(|(n, m)| *n += m);
    }

    /// The entries of second `stamp_s`, if it is one of those counted.
    fn at(&self, stamp_s: u32) -> Option<usize> {
        let age = self.now_s.checked_sub(stamp_s)?;
        self.per_age.get(usize::try_from(age).ok()?).copied()
    }

    /// The cut for `limit`: the second of the limit-th most recent entry
    /// and how many of that second's are recent (as `cut_by_sorting`);
    /// `None` if that second is older than the counted ones.
    fn cut(&self, limit: usize) -> Option<(u32, usize)> {
        let mut newer = self.after_now;
        if newer >= limit {
            return None;
        }
        for (age, &n) in self.per_age.iter().enumerate() {
            if newer + n >= limit {
                let cut_s = self.now_s.checked_sub(u32::try_from(age).ok()?)?;
                return Some((cut_s, limit - newer));
            }
            newer += n;
        }
        None
    }
}

/// The cut for `limit` (below `stamps.len()`, above 0) from every stamp:
/// the limit-th most recent, and how many of that second are recent.
fn cut_by_sorting(mut stamps: Vec<u32>, limit: usize) -> (u32, usize) {
    let (_, &mut cut, _) = stamps.select_nth_unstable_by_key(limit - 1, |s| std::cmp::Reverse(*s));
    let newer = stamps.iter().filter(|&&s| s > cut).count();
    (cut, limit - newer)
}

impl RecentSplit {
    /// Copy the `limit` most recently changed entries of `caches` (by the
    /// second of their last change); returns the copies (one per part of
    /// the caches) and the split that `freeze_rest` follows. Reads every
    /// entry's stamp in place, counting them by second of age to find the
    /// cut, then copies only the recent ones: both passes by
    /// `FREEZE_THREADS` threads, each over its part of every cache (the
    /// kernel writer's core has nothing to do until they are done).
    pub(super) fn freeze_recent(
        caches: &[&FlowCache],
        limit: usize,
        now_ms: u64,
    ) -> (Vec<FrozenCache>, RecentSplit) {
        let now_s = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let parts: Vec<Part> = Part::all(FREEZE_THREADS).collect();
        // Per part, per cache: its entries by age; and the class bytes.
        let plans = in_parallel(&parts, |part| {
            let mut class_bytes = [0; AGE_CLASSES];
            let counts: Vec<AgeCounts> = caches
                .iter()
                .map(|cache| {
                    let mut counts = AgeCounts::new(now_s);
                    for (stamp, bytes) in cache.freeze_plan(part) {
                        counts.add(stamp);
                        class_bytes[age_class(now_s, stamp)] += bytes;
                    }
                    counts
                })
                .collect();
            (counts, class_bytes)
        });
        let mut class_bytes = [0; AGE_CLASSES];
        let mut all = AgeCounts::new(now_s);
        for (counts, bytes) in &plans {
            class_bytes
                .iter_mut()
                .zip(bytes)
                .for_each(|(sum, b)| *sum += b);
            counts.iter().for_each(|c| all.merge(c));
        }
        let total: usize = caches.iter().map(|c| c.len()).sum();
        // The cut: the limit-th most recent stamp; of that second only as
        // many as fill the limit are recent, the first ones met walking
        // the caches in order, each part by part.
        let (cut_s, quota) = if limit == 0 {
            (u32::MAX, 0)
        } else if total <= limit {
            (0, usize::MAX)
        } else {
            all.cut(limit).unwrap_or_else(|| {
                let stamps = caches
                    .iter()
                    .flat_map(|c| c.freeze_plan(Part::WHOLE).map(|(stamp, _)| stamp));
                cut_by_sorting(stamps.collect(), limit)
            })
        };
        // How many of the cut's second each part of each cache gives
        // (index: cache * parts + part); usize::MAX: all of them.
        let mut at_cut = vec![quota; caches.len() * parts.len()];
        if quota != usize::MAX {
            let mut left = quota;
            for (c, cache) in caches.iter().enumerate() {
                for (p, &part) in parts.iter().enumerate() {
                    let of_cut = match plans[p].0[c].at(cut_s) {
                        Some(n) => n,
                        None if left == 0 => 0,
                        None => cache
                            .freeze_plan(part)
                            .filter(|&(stamp, _)| stamp == cut_s)
                            .count(),
                    };
                    at_cut[c * parts.len() + p] = left.min(of_cut);
                    left -= left.min(of_cut);
                }
            }
        }
        let per_part = limit.min(total) * 64 / parts.len();
        let recent = in_parallel(&parts, |part| {
            let mut recent = [FrozenCache::with_capacity(per_part)];
            for (c, cache) in caches.iter().enumerate() {
                let mut left = at_cut[c * parts.len() + part.index];
                cache.freeze_into(part, &mut recent, |stamp| {
                    is_recent(stamp, cut_s, &mut left).then_some(0)
                });
            }
            let [recent] = recent;
            recent
        });
        let split = RecentSplit {
            cut_s,
            parts,
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
        let parts = caches
            .iter()
            .flat_map(|c| self.parts.iter().map(move |&p| (c, p)));
        for ((cache, part), &taken) in parts.zip(&self.at_cut) {
            let mut left = taken;
            cache.freeze_into(part, &mut classes, |stamp| {
                (!is_recent(stamp, self.cut_s, &mut left)).then(|| age_class(self.now_s, stamp))
            });
        }
        classes.retain(|c| !c.is_empty());
        classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::commit_plan::test_support::{cache, count, frozen_ports};
    use crate::flow::test_flows::udp;

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
        let mut recent_ports = frozen_ports(&recent);
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

    proptest::proptest! {
        /// Counting stamps by second of age finds the cut sorting them
        /// finds, whenever the cut is within the counted seconds.
        #[test]
        fn counting_finds_the_cut_sorting_finds(
            ages in proptest::collection::vec(0u32..5_000, 2..300),
            limit_at in 0.0f64..1.0,
        ) {
            let now_s = 10_000;
            let limit = 1 + (limit_at * (ages.len() - 1) as f64) as usize;
            let stamps: Vec<u32> = ages.iter().map(|a| now_s - a).collect();
            let mut counts = AgeCounts::new(now_s);
            stamps.iter().for_each(|&s| counts.add(s));
            let sorted = cut_by_sorting(stamps, limit);
            match counts.cut(limit) {
                Some(counted) => proptest::prop_assert_eq!(counted, sorted),
                None => proptest::prop_assert!(now_s - sorted.0 >= COUNTED_AGES as u32),
            }
        }
    }

    proptest::proptest! {
        /// Whatever the stamps and the limit, the parts read by separate
        /// threads together copy exactly the `limit` most recent entries,
        /// and the rest copies every other entry once.
        #[test]
        fn the_split_takes_the_limit_most_recent_across_parts(
            stamps_a in proptest::collection::vec(0u64..6_000, 0..400),
            stamps_b in proptest::collection::vec(0u64..6_000, 0..400),
            limit in 0usize..900,
        ) {
            let now_ms = 6_000_000;
            let flows = |stamps: &[u64], from: u16| -> Vec<(u16, u64)> {
                stamps.iter().zip(from..).map(|(s, port)| (port, s * 1000)).collect()
            };
            let a = cache(&flows(&stamps_a, 1));
            let b = cache(&flows(&stamps_b, 1_001));
            let caches = [&a, &b];
            let (recent, split) = RecentSplit::freeze_recent(&caches, limit, now_ms);
            let rest = split.freeze_rest(&caches);
            let total = a.len() + b.len();
            proptest::prop_assert_eq!(count(&recent), limit.min(total));
            let stamps = |copies: &[FrozenCache]| -> Vec<u64> {
                copies.iter().flat_map(FrozenCache::entries).map(|e| e.updated_ms()).collect()
            };
            let oldest_recent = stamps(&recent).into_iter().min();
            let newest_rest = stamps(&rest).into_iter().max();
            if let (Some(old), Some(new)) = (oldest_recent, newest_rest) {
                proptest::prop_assert!(old >= new, "a rest entry is newer than a recent one");
            }
            let mut all = frozen_ports(&recent);
            all.extend(frozen_ports(&rest));
            all.sort_unstable();
            let mut want: Vec<u16> = (1..).take(stamps_a.len()).collect();
            want.extend((1_001..).take(stamps_b.len()));
            proptest::prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn a_cut_older_than_the_counted_seconds_is_found_by_sorting() {
        // Now 10,000 s; nothing changed in the last 4,096 s: the cut for
        // two of three falls at 4,500 s of age, past the counted seconds.
        let c = cache(&[(1, 1_000_000), (2, 5_500_000), (3, 5_500_000)]);
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 2, 10_000_000);
        let rest = split.freeze_rest(&[&c]);
        assert_eq!(frozen_ports(&recent).len(), 2);
        assert!(!frozen_ports(&recent).contains(&1));
        assert_eq!(frozen_ports(&rest), vec![1]);
        // A cut inside the counted seconds, in the middle of a second.
        let c = cache(&[(1, 9_000_000), (2, 9_990_000), (3, 9_990_500)]);
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 1, 10_000_000);
        assert_eq!(count(&recent), 1);
        assert_eq!(count(&split.freeze_rest(&[&c])), 2);
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
        assert_eq!(count(&recent), 0);
        let rest = split.freeze_rest(&[&c]);
        assert_eq!(rest.len(), 5, "one copy per non-empty class");
        assert_eq!(frozen_ports(&rest), vec![5, 4, 3, 2, 1]);
        // A limit past the size takes everything now, nothing later.
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 10, 1_000_000);
        assert_eq!(count(&recent), 5);
        assert!(split.freeze_rest(&[&c]).is_empty());
    }

    #[test]
    fn a_cache_changed_between_the_copies_is_copied_whole() {
        let mut c = cache(&[(1, 1_000), (2, 2_000), (3, 3_000)]);
        let (recent, split) = RecentSplit::freeze_recent(&[&c], 1, 4_000);
        assert_eq!(count(&recent), 1);
        assert_eq!(count(&split.freeze_rest(&[&c])), 2);
        c.upsert(udp(4), 3_500);
        let rest = split.freeze_rest(&[&c]);
        assert_eq!(count(&rest), 4);
        // A different set of caches likewise.
        assert_eq!(split.freeze_rest(&[&c, &c]).len(), 2);
    }
}
