//! FlowCache: a table of flows keyed by zone and original tuple, with the
//! per-cache counters that `-s` prints.
//!
//! Owns: the map, the time each entry was first seen and last changed, the
//! resync generation an entry was last confirmed in, and the counters.
//! Must not: do I/O, read the clock (times are arguments, in milliseconds of
//! the caller's clock), or decide what is replicated.

use crate::flow::{Flow, FlowKey};
use serde::Serialize;
use std::collections::HashMap;

/// One cached flow and its bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub flow: Flow,
    /// When the entry was created, in the caller's milliseconds.
    pub since_ms: u64,
    /// When the entry was last created or changed.
    pub updated_ms: u64,
    /// The resync generation in which this entry was last written.
    pub generation: u32,
}

/// What an upsert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    Created,
    Updated,
    /// The same flow was already cached; only the timestamps moved.
    Unchanged,
}

/// Counters in the layout of conntrackd's `cache internal:` block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub created: u64,
    pub create_failed: u64,
    pub updated: u64,
    pub update_failed: u64,
    pub destroyed: u64,
    pub destroy_failed: u64,
}

/// A cache of flows keyed by zone and original tuple.
#[derive(Clone, Debug, Default)]
pub struct FlowCache {
    map: HashMap<FlowKey, CacheEntry>,
    generation: u32,
    stats: CacheStats,
}

impl FlowCache {
    pub fn new() -> FlowCache {
        FlowCache::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn get(&self, key: &FlowKey) -> Option<&CacheEntry> {
        self.map.get(key)
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.map.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &CacheEntry)> {
        self.map.iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &FlowKey> {
        self.map.keys()
    }

    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.map.values().map(|e| &e.flow)
    }

    /// Insert or replace a flow; `now_ms` stamps the change.
    pub fn upsert(&mut self, flow: Flow, now_ms: u64) -> Upsert {
        let generation = self.generation;
        match self.map.entry(flow.key()) {
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                entry.generation = generation;
                if entry.flow == flow {
                    return Upsert::Unchanged;
                }
                entry.flow = flow;
                entry.updated_ms = now_ms;
                self.stats.updated += 1;
                Upsert::Updated
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(CacheEntry {
                    flow,
                    since_ms: now_ms,
                    updated_ms: now_ms,
                    generation,
                });
                self.stats.created += 1;
                Upsert::Created
            }
        }
    }

    /// Remove a flow; counts a failed destroy when it was not cached.
    pub fn remove(&mut self, key: &FlowKey) -> Option<CacheEntry> {
        let gone = self.map.remove(key);
        match gone {
            Some(_) => self.stats.destroyed += 1,
            None => self.stats.destroy_failed += 1,
        }
        gone
    }

    /// Drop every entry (the counters stay).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Start a new resync generation: entries written from now on carry it.
    pub fn begin_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    /// Remove every entry not written since `begin_generation` returned
    /// `generation`; returns the keys removed.
    pub fn sweep_older_than(&mut self, generation: u32) -> Vec<FlowKey> {
        let stale: Vec<FlowKey> = self
            .map
            .iter()
            .filter(|(_, e)| e.generation != generation)
            .map(|(k, _)| *k)
            .collect();
        for key in &stale {
            self.map.remove(key);
            self.stats.destroyed += 1;
        }
        stale
    }

    /// Mark every entry as confirmed in the current generation.
    pub fn touch_all(&mut self) {
        let generation = self.generation;
        for entry in self.map.values_mut() {
            entry.generation = generation;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{proto, Tuple, L4};

    fn flow(port: u16) -> Flow {
        Flow::new(Tuple {
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            proto: proto::UDP,
            l4: L4::Ports { src: port, dst: 53 },
        })
    }

    #[test]
    fn upsert_reports_created_updated_unchanged() {
        let mut c = FlowCache::new();
        assert_eq!(c.upsert(flow(1), 0), Upsert::Created);
        assert_eq!(c.upsert(flow(1), 5), Upsert::Unchanged);
        let mut changed = flow(1);
        changed.mark = 9;
        assert_eq!(c.upsert(changed, 7), Upsert::Updated);
        let e = c.get(&flow(1).key()).unwrap();
        assert_eq!((e.since_ms, e.updated_ms, e.flow.mark), (0, 7, 9));
        assert_eq!(c.stats().created, 1);
        assert_eq!(c.stats().updated, 1);
    }

    #[test]
    fn zone_is_part_of_the_key() {
        let mut c = FlowCache::new();
        let mut other_zone = flow(1);
        other_zone.zone = 7;
        c.upsert(flow(1), 0);
        c.upsert(other_zone, 0);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn sweep_removes_entries_not_rewritten_in_the_generation() {
        let mut c = FlowCache::new();
        c.upsert(flow(1), 0);
        c.upsert(flow(2), 0);
        let g = c.begin_generation();
        c.upsert(flow(2), 1);
        c.upsert(flow(3), 1);
        let gone = c.sweep_older_than(g);
        assert_eq!(gone, vec![flow(1).key()]);
        assert_eq!(c.len(), 2);
        assert!(c.remove(&flow(1).key()).is_none());
        assert_eq!(c.stats().destroy_failed, 1);
    }
}
