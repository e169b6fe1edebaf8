//! A cache of expectations (ours, or one peer's): keyed by `ExpectKey`,
//! with creation and update times, counters in `-s expect`'s layout, an
//! incremental digest for anti-entropy, and generations for sweeping what
//! a bulk or a table re-read did not confirm.
//!
//! Expectations are few (the kernel bounds them by `nf_conntrack_expect_max`,
//! a few thousand), so this is a plain ordered map, not the packed store of
//! `crate::cache` the flows need. Must not: decide what is replicated, or
//! read the clock (times are arguments).

use crate::cache::Upsert;
use crate::expect::{ExpectKey, Expectation};
use std::collections::BTreeMap;

/// One cached expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectEntry {
    pub expect: Expectation,
    /// When it was first cached, and last changed or reported (ms, the
    /// caller's clock).
    pub since_ms: u64,
    pub updated_ms: u64,
    generation: u32,
}

/// The counters `-s expect` prints (conntrackd's cache block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpectCacheStats {
    pub created: u64,
    pub updated: u64,
    pub destroyed: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ExpectCache {
    map: BTreeMap<ExpectKey, ExpectEntry>,
    stats: ExpectCacheStats,
    /// XOR of `state_hash` over every entry.
    digest: u64,
    generation: u32,
}

impl ExpectCache {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn stats(&self) -> ExpectCacheStats {
        self.stats
    }

    /// How many expectations, and the XOR of their state hashes: equal on
    /// two nodes when they hold the same expectations.
    pub fn digest(&self) -> (u64, u64) {
        (self.map.len() as u64, self.digest)
    }

    pub fn get(&self, key: &ExpectKey) -> Option<&ExpectEntry> {
        self.map.get(key)
    }

    pub fn contains(&self, key: &ExpectKey) -> bool {
        self.map.contains_key(key)
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = &ExpectEntry> + '_ {
        self.map.values()
    }

    pub fn keys(&self) -> impl Iterator<Item = &ExpectKey> + '_ {
        self.map.keys()
    }

    /// Cache `e` (stamped with the current generation). `reported`: the
    /// update time moves even when nothing but the timeout changed.
    pub fn upsert(&mut self, e: Expectation, now_ms: u64, reported: bool) -> Upsert {
        let key = e.key();
        let generation = self.generation;
        match self.map.get_mut(&key) {
            Some(entry) => {
                entry.generation = generation;
                if entry.expect.same_state(&e) {
                    entry.expect.timeout = e.timeout;
                    if reported {
                        entry.updated_ms = now_ms;
                    }
                    return Upsert::Unchanged;
                }
                self.digest ^= state_hash(&entry.expect) ^ state_hash(&e);
                entry.expect = e;
                entry.updated_ms = now_ms;
                self.stats.updated += 1;
                Upsert::Updated
            }
            None => {
                self.digest ^= state_hash(&e);
                self.map.insert(
                    key,
                    ExpectEntry {
                        expect: e,
                        since_ms: now_ms,
                        updated_ms: now_ms,
                        generation,
                    },
                );
                self.stats.created += 1;
                Upsert::Created
            }
        }
    }

    pub fn remove(&mut self, key: &ExpectKey) -> Option<Expectation> {
        let entry = self.map.remove(key)?;
        self.digest ^= state_hash(&entry.expect);
        self.stats.destroyed += 1;
        Some(entry.expect)
    }

    /// Forget everything (the counters stay).
    pub fn clear(&mut self) {
        self.map.clear();
        self.digest = 0;
    }

    /// `digest` over the entries upserted since `generation` began only.
    pub fn digest_of_generation(&self, generation: u32) -> (u64, u64) {
        self.map
            .values()
            .filter(|e| e.generation == generation)
            .fold((0, 0), |(n, h), e| (n + 1, h ^ state_hash(&e.expect)))
    }

    /// Start a new generation: entries upserted from now on carry it.
    pub fn begin_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    /// Remove the entries not upserted since `generation` began; returns
    /// their keys, in key order.
    pub fn sweep_older_than(&mut self, generation: u32) -> Vec<ExpectKey> {
        let stale: Vec<ExpectKey> = self
            .map
            .iter()
            .filter(|(_, e)| e.generation != generation)
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            self.remove(k);
        }
        stale
    }
}

/// A stable 64-bit hash of an expectation's state (every field but the
/// timeout, as `Expectation::same_state` compares): FNV-1a over its
/// bincode encoding, the same in every process and build.
pub fn state_hash(e: &Expectation) -> u64 {
    let mut copy = e.clone();
    copy.timeout = 0;
    let bytes =
        bincode::serde::encode_to_vec(&copy, bincode::config::standard()).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Never 0, so that XOR-ing an entry in always changes the digest.
    h | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::test_expectations::ftp;

    #[test]
    fn upserts_count_and_the_digest_follows_the_contents() {
        let mut a = ExpectCache::default();
        let mut b = ExpectCache::default();
        assert_eq!(a.upsert(ftp(1), 0, false), Upsert::Created);
        assert_eq!(a.upsert(ftp(2), 0, false), Upsert::Created);
        let mut shorter = ftp(1);
        shorter.timeout = 5;
        assert_eq!(a.upsert(shorter, 9, true), Upsert::Unchanged);
        assert_eq!(a.get(&ftp(1).key()).map(|e| e.updated_ms), Some(9));
        // Same contents in another order: same digest.
        b.upsert(ftp(2), 0, false);
        b.upsert(ftp(1), 0, false);
        assert_eq!(a.digest(), b.digest());
        let mut changed = ftp(2);
        changed.class = 1;
        assert_eq!(b.upsert(changed, 1, false), Upsert::Updated);
        assert_ne!(a.digest(), b.digest());
        assert_eq!(b.remove(&ftp(2).key()).map(|e| e.class), Some(1));
        a.remove(&ftp(2).key());
        assert_eq!(a.digest(), b.digest());
        assert_eq!(
            b.stats(),
            ExpectCacheStats {
                created: 2,
                updated: 1,
                destroyed: 1
            }
        );
    }

    #[test]
    fn a_sweep_removes_what_the_generation_did_not_confirm() {
        let mut c = ExpectCache::default();
        c.upsert(ftp(1), 0, false);
        c.upsert(ftp(2), 0, false);
        let g = c.begin_generation();
        c.upsert(ftp(2), 1, false);
        c.upsert(ftp(3), 1, false);
        assert_eq!(c.sweep_older_than(g), vec![ftp(1).key()]);
        assert_eq!(c.len(), 2);
        c.clear();
        assert_eq!(c.digest(), (0, 0));
    }
}
