//! FlowCache: a table of flows keyed by zone and original tuple, with the
//! per-cache counters that `-s` prints.
//!
//! Owns: the compact storage of each flow (its wire encoding, see
//! `Slot`), the time each entry last changed, the resync generation an
//! entry was last confirmed in, the counters, and the anti-entropy digest
//! (kept up to date on every change, see `digest`).
//! Must not: do I/O, read the clock (times are arguments, in milliseconds of
//! the caller's clock), or decide what is replicated.

use crate::flow::{Flow, FlowKey, ProtoState, Tuple, L4};
use crate::sharded_table::{self, Part, ShardedTable};
use crate::wire::compact::{self, KeyBuf, Reader};
use crate::wire::{RangeSum, WireFlow, WireKey, RANGES};
use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;
use serde::Serialize;
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::net::IpAddr;

/// A cached flow, decoded, and its bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub flow: Flow,
    /// When the entry was created, in the caller's milliseconds, to the
    /// second.
    pub since_ms: u64,
    /// When the entry was last created or changed, likewise.
    pub updated_ms: u64,
}

/// How a flow compares with the cached one (see `FlowCache::confirm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// The same state, timeouts aside: confirmed in the current generation.
    Same,
    /// The same state, but its timeout was refreshed by traffic.
    Refreshed,
    /// Another state, or not cached.
    Differs,
}

/// What an upsert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    Created,
    Updated,
    /// The same flow was already cached; only the timestamps moved.
    Unchanged,
    /// A flow the wire format's checks refuse (`WireFlow::validate`): not
    /// cached (an earlier state stays as it was: the caller decides), so
    /// never sent. A receiver refuses a datagram holding such a flow
    /// whole, and FTFW would resend it for ever.
    Refused,
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

/// One stored flow: 32 bytes in the table plus its encoding on the heap
/// (about 40 bytes for an IPv4 TCP flow without NAT), where a `Flow`
/// struct alone takes 160.
#[derive(Clone, Debug)]
struct Slot {
    /// The hash of the key bytes: the table grows and probes without
    /// touching the heap.
    hash: u64,
    /// `[key length]`, the flow's wire encoding (`compact::put_flow`),
    /// whose first `key length` bytes encode its key, then the second it
    /// was created (`SINCE_LEN` bytes, little endian).
    bytes: Box<[u8]>,
    generation: u32,
    /// Seconds of the caller's clock when last changed, and in the top
    /// bit (`QUEUED`) whether the flow waits in the sender's queue.
    updated_s: u32,
}

const SINCE_LEN: usize = 4;

/// The bit of `Slot::updated_s` that marks a flow as queued for sending.
const QUEUED: u32 = 1 << 31;

/// The layout of a slot's bytes (`Slot::bytes`), read where they are kept
/// and from a frozen copy alike. Only this module writes them, from a flow
/// it encoded: they always decode.
mod slot_bytes {
    use super::{CacheEntry, Flow, FlowKey, Reader, SINCE_LEN};

    pub fn key(bytes: &[u8]) -> &[u8] {
        let len = usize::from(bytes[0]);
        &bytes[1..1 + len]
    }

    /// `[key length]` and the flow's encoding.
    pub fn with_flow(bytes: &[u8]) -> &[u8] {
        &bytes[..bytes.len() - SINCE_LEN]
    }

    pub fn flow_key(bytes: &[u8]) -> FlowKey {
        match Reader::new(key(bytes)).key_prefix() {
            Ok(key) => key.to_key(),
            Err(err) => unreachable!("cache key does not decode: {err}"),
        }
    }

    pub fn flow(bytes: &[u8]) -> Flow {
        match Reader::new(&with_flow(bytes)[1..]).flow() {
            Ok(flow) => flow.into_flow(),
            Err(err) => unreachable!("cache slot does not decode: {err}"),
        }
    }

    pub fn since_s(bytes: &[u8]) -> u32 {
        let mut since = [0; SINCE_LEN];
        since.copy_from_slice(&bytes[bytes.len() - SINCE_LEN..]);
        u32::from_le_bytes(since)
    }

    /// The entry, with `updated_s` (kept beside the bytes) as its stamp.
    pub fn entry(bytes: &[u8], updated_s: u32) -> CacheEntry {
        CacheEntry {
            flow: flow(bytes),
            since_ms: u64::from(since_s(bytes)) * 1000,
            updated_ms: u64::from(updated_s) * 1000,
        }
    }
}

impl Slot {
    fn key_bytes(&self) -> &[u8] {
        slot_bytes::key(&self.bytes)
    }

    /// `[key length]` and the flow's encoding.
    fn flow_bytes(&self) -> &[u8] {
        slot_bytes::with_flow(&self.bytes)
    }

    fn since_s(&self) -> u32 {
        slot_bytes::since_s(&self.bytes)
    }

    fn flow(&self) -> Flow {
        slot_bytes::flow(&self.bytes)
    }

    fn entry(&self) -> CacheEntry {
        slot_bytes::entry(&self.bytes, self.updated_s & !QUEUED)
    }
}

/// A cache of flows keyed by zone and original tuple.
#[derive(Clone, Debug)]
pub struct FlowCache {
    table: ShardedTable<Slot>,
    hasher: SeedableRandomState,
    generation: u32,
    stats: CacheStats,
    /// XOR of `state_hash` over the entries.
    digest: u64,
    /// Per key range (`range_of`, `RANGES` of them): the entries' count and
    /// the XOR of their `state_hash`, kept up to date like `digest`.
    ranges: Vec<(u32, u64)>,
    /// Reused for encoding the flow being upserted.
    scratch: Vec<u8>,
    /// Every zone other than 0 a flow was inserted in since the cache was
    /// last cleared (it does not shrink as flows leave: an expectation
    /// ending after its master still finds the zone it was replicated in).
    zones: BTreeSet<u16>,
}

impl Default for FlowCache {
    fn default() -> FlowCache {
        FlowCache::with_hasher(SeedableRandomState::random())
    }
}

impl CacheStats {
    /// Add another cache's counters (several peers shown as one block).
    pub fn add(&mut self, other: &CacheStats) {
        self.created += other.created;
        self.create_failed += other.create_failed;
        self.updated += other.updated;
        self.update_failed += other.update_failed;
        self.destroyed += other.destroyed;
        self.destroy_failed += other.destroy_failed;
    }
}

fn slot_key(s: &Slot) -> FlowKey {
    slot_bytes::flow_key(&s.bytes)
}

/// The key range of a key's compact bytes (`KeyBuf`, the wire encoding):
/// the same on every host and build, whatever a cache's hash seed.
fn range_of_bytes(key: &[u8]) -> usize {
    let mut h = Fnv::new();
    h.bytes(key);
    (h.finish() % u64::from(RANGES)) as usize
}

/// The key range (below `wire::RANGES`) a flow's key falls in: what the
/// range digest and range bulks partition a table by.
pub fn range_of(key: &FlowKey) -> u16 {
    range_of_bytes(KeyBuf::of(&WireKey::from(key)).as_slice()) as u16
}

/// Whether an entry stamped `entry` was written before the generation
/// `since` began (generations count up, wrapping).
fn older(entry: u32, since: u32) -> bool {
    (since.wrapping_sub(entry) as i32) > 0
}

/// The `since` generation of `range`, if it has one.
fn since_of(since: &[Option<u32>], range: usize) -> Option<u32> {
    since.get(range).copied().flatten()
}

/// Whether `want` (indexed by range) holds `range`.
fn wanted(want: &[bool], range: usize) -> bool {
    want.get(range).copied().unwrap_or(false)
}

/// The slot holding the key whose bytes hash to `hash`.
fn matches(hash: u64, key: &[u8]) -> impl Fn(&Slot) -> bool + '_ {
    move |s| s.hash == hash && s.key_bytes() == key
}

/// Seconds below the `QUEUED` bit (68 years of uptime).
fn seconds(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX).min(QUEUED - 1)
}

impl FlowCache {
    /// An empty cache whose hash is keyed at random (flows come from the
    /// network and the kernel: their layout must not be predictable).
    pub fn new() -> FlowCache {
        FlowCache::default()
    }

    /// An empty cache whose iteration order depends only on `seed` and the
    /// operations applied: for replayable simulations.
    pub fn with_seed(seed: u64) -> FlowCache {
        FlowCache::with_hasher(SeedableRandomState::with_seed(
            seed,
            SharedSeed::global_fixed(),
        ))
    }

    fn with_hasher(hasher: SeedableRandomState) -> FlowCache {
        FlowCache {
            table: ShardedTable::new(),
            hasher,
            generation: 0,
            stats: CacheStats::default(),
            digest: 0,
            ranges: vec![(0, 0); usize::from(RANGES)],
            scratch: Vec::new(),
            zones: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The zones other than 0 that flows were inserted in since the last
    /// `clear`, in order; some may hold no flow any more.
    pub fn zones(&self) -> impl Iterator<Item = u16> + '_ {
        self.zones.iter().copied()
    }

    /// The zones a flow whose original tuple is `orig` is cached in, 0
    /// first: for a report that names the tuple without its zone (the
    /// kernel's expectations name their master so).
    pub fn zones_of(&self, orig: &Tuple) -> Vec<u16> {
        std::iter::once(0)
            .chain(self.zones())
            .filter(|&zone| self.contains(&FlowKey { zone, orig: *orig }))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The XOR over every entry of `state_hash(flow)`: two caches holding
    /// the same flows in the same state (timeouts aside) have the same
    /// digest, on any host and build. Compare it together with `len()`.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// What key range `range` holds: its count and hash (zero past
    /// `RANGES`). Kept up to date on every change, like `digest`.
    pub fn range_sum(&self, range: u16) -> RangeSum {
        let (count, hash) = self
            .ranges
            .get(usize::from(range))
            .copied()
            .unwrap_or_default();
        RangeSum { range, count, hash }
    }

    /// Every range's sum, in range order.
    pub fn range_sums(&self) -> impl Iterator<Item = RangeSum> + '_ {
        (0..RANGES).map(|r| self.range_sum(r))
    }

    /// Per range: the count and hash of its entries written before
    /// `since[range]` (ranges with `None` are skipped). Only those entries
    /// are decoded.
    fn stale_sums(&self, since: &[Option<u32>]) -> Vec<(u32, u64)> {
        let mut stale = vec![(0u32, 0u64); usize::from(RANGES)];
        for slot in self.table.iter() {
            let r = range_of_bytes(slot.key_bytes());
            if !since_of(since, r).is_some_and(|g| older(slot.generation, g)) {
                continue;
            }
            if let Some(s) = stale.get_mut(r) {
                s.0 += 1;
                s.1 ^= state_hash(&slot.flow());
            }
        }
        stale
    }

    /// What each range with a `since` generation would hold after
    /// `sweep_ranges_older_than(since)`: only the entries written since
    /// `begin_generation` returned it.
    pub fn range_sums_if_swept(&self, since: &[Option<u32>]) -> Vec<RangeSum> {
        let stale = self.stale_sums(since);
        (0..RANGES)
            .filter(|&r| since_of(since, usize::from(r)).is_some())
            .map(|r| {
                let now = self.range_sum(r);
                let (count, hash) = stale.get(usize::from(r)).copied().unwrap_or_default();
                RangeSum {
                    range: r,
                    count: now.count.saturating_sub(count),
                    hash: now.hash ^ hash,
                }
            })
            .collect()
    }

    /// The whole table's (`len`, `digest`) after `sweep_older_than`.
    pub fn digest_if_swept(&self, generation: u32) -> (u64, u64) {
        let all = vec![Some(generation); usize::from(RANGES)];
        let stale = self.stale_sums(&all);
        let (count, hash) = stale.iter().fold((0u64, 0u64), |(c, h), &(sc, sh)| {
            (c + u64::from(sc), h ^ sh)
        });
        (
            (self.len() as u64).saturating_sub(count),
            self.digest ^ hash,
        )
    }

    /// Remove every entry of a range with a `since` generation that was
    /// written before it; returns the keys removed.
    pub fn sweep_ranges_older_than(&mut self, since: &[Option<u32>]) -> Vec<FlowKey> {
        self.sweep_slots(|generation, key| {
            since_of(since, range_of_bytes(key)).is_some_and(|g| older(generation, g))
        })
    }

    /// The entries of the wanted ranges, in the table's order: each one's
    /// range, wire encoding (as `take_for_send` gives it), and its key if
    /// it is marked queued.
    pub fn range_entries<'a>(
        &'a self,
        want: &'a [bool],
    ) -> impl Iterator<Item = (u16, Option<FlowKey>, &'a [u8])> + 'a {
        self.table.iter().filter_map(move |s| {
            let r = range_of_bytes(s.key_bytes());
            wanted(want, r).then(|| {
                let queued = (s.updated_s & QUEUED != 0).then(|| slot_key(s));
                (r as u16, queued, &s.flow_bytes()[1..])
            })
        })
    }

    /// A key's bytes and their hash: what the table is probed with.
    fn probe(&self, key: &FlowKey) -> (KeyBuf, u64) {
        let bytes = KeyBuf::of(&WireKey::from(key));
        let hash = self.hasher.hash_one(bytes.as_slice());
        (bytes, hash)
    }

    fn find(&self, key: &FlowKey) -> Option<&Slot> {
        let (bytes, hash) = self.probe(key);
        self.table.find(hash, matches(hash, bytes.as_slice()))
    }

    fn find_mut(&mut self, key: &FlowKey) -> Option<&mut Slot> {
        let (bytes, hash) = self.probe(key);
        self.table.find_mut(hash, matches(hash, bytes.as_slice()))
    }

    /// A decoded copy of the entry.
    pub fn get(&self, key: &FlowKey) -> Option<CacheEntry> {
        self.find(key).map(Slot::entry)
    }

    /// The sender's coalescing: mark a cached flow as queued. True when
    /// the caller should queue its key: the flow was not marked yet, or is
    /// not cached (a delete; those are not coalesced).
    pub fn mark_queued(&mut self, key: &FlowKey) -> bool {
        match self.find_mut(key) {
            Some(slot) if slot.updated_s & QUEUED != 0 => false,
            Some(slot) => {
                slot.updated_s |= QUEUED;
                true
            }
            None => true,
        }
    }

    /// The flow's wire encoding as it goes out now (as `Message::Upsert`
    /// carries it), its queued mark cleared (a change from here on queues
    /// it again).
    pub fn take_for_send(&mut self, key: &FlowKey) -> Option<&[u8]> {
        let slot = self.find_mut(key)?;
        slot.updated_s &= !QUEUED;
        Some(&slot.flow_bytes()[1..])
    }

    /// A decoded copy of the flow.
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.find(key).map(Slot::flow)
    }

    pub fn contains(&self, key: &FlowKey) -> bool {
        self.find(key).is_some()
    }

    /// Decoded copies of every entry, in the table's order.
    pub fn iter(&self) -> impl Iterator<Item = CacheEntry> + '_ {
        self.table.iter().map(Slot::entry)
    }

    pub fn keys(&self) -> impl Iterator<Item = FlowKey> + '_ {
        self.table.iter().map(slot_key)
    }

    /// Every entry's wire encoding (as `take_for_send` gives it) and
    /// whether it is marked queued, in the table's order.
    pub fn wire_entries(&self) -> impl Iterator<Item = (bool, &[u8])> + '_ {
        self.table
            .iter()
            .map(|s| (s.updated_s & QUEUED != 0, &s.flow_bytes()[1..]))
    }

    pub fn flows(&self) -> impl Iterator<Item = Flow> + '_ {
        self.table.iter().map(Slot::flow)
    }

    /// The flows of `part` of the table; the parts of a split, one after
    /// another, give every flow once (`Part::WHOLE`: `flows`).
    pub fn part_flows(&self, part: Part) -> impl Iterator<Item = Flow> + '_ {
        self.table.iter_part(part).map(Slot::flow)
    }

    /// A copy of every entry in one contiguous buffer, taken in one pass
    /// without decoding (about 40 ms for a million flows), so that a
    /// thread that does not own the cache can decode, sort and render it.
    pub fn freeze(&self) -> FrozenCache {
        // An estimate (an IPv4 TCP flow takes about 46 bytes here), not a
        // pass of its own: the copy is the only walk over the table.
        let mut frozen = FrozenCache::with_capacity(self.table.len() * 56);
        for slot in self.table.iter() {
            frozen.push(slot);
        }
        frozen
    }

    /// Each entry's second of last change and the bytes its frozen copy
    /// takes, in the table's order, without touching the heap: what a
    /// caller needs to plan a `freeze_into`.
    /// Only the entries of `part` of the table (`Part::WHOLE` for all).
    pub fn freeze_plan(&self, part: Part) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.table
            .iter_part(part)
            .map(|s| (s.updated_s & !QUEUED, FROZEN_HEADER + s.bytes.len()))
    }

    /// `freeze` into several copies: each entry, in the table's order, goes
    /// into `out[pick(second of its last change)]`, or nowhere when `pick`
    /// says `None` (or names no copy). Two calls on an unchanged cache
    /// visit the entries in the same order, so a stateful `pick` can split
    /// the cache across calls. Only the entries of `part` of the table
    /// (`Part::WHOLE` for all); the parts of a split, one after another,
    /// visit the entries in the whole's order.
    pub fn freeze_into(
        &self,
        part: Part,
        out: &mut [FrozenCache],
        mut pick: impl FnMut(u32) -> Option<usize>,
    ) {
        for slot in self.table.iter_part(part) {
            if let Some(copy) = pick(slot.updated_s & !QUEUED).and_then(|i| out.get_mut(i)) {
                copy.push(slot);
            }
        }
    }

    /// `freeze` restricted to `keys` (those cached), found by lookup: for
    /// a few flows out of many.
    pub fn freeze_keys<'a>(&self, keys: impl IntoIterator<Item = &'a FlowKey>) -> FrozenCache {
        let mut frozen = FrozenCache::default();
        for key in keys {
            if let Some(slot) = self.find(key) {
                frozen.push(slot);
            }
        }
        frozen
    }

    /// Insert or replace a flow; `now_ms` stamps the change.
    pub fn upsert(&mut self, flow: Flow, now_ms: u64) -> Upsert {
        self.upsert_marking(&flow, now_ms, false, false).0
    }

    /// `upsert` of a flow a peer sent again: even unchanged, it is stamped
    /// `now_ms` (the peer re-sends a flow whose timeout traffic refreshed;
    /// a busy flow reads the same timeout each time). Not for bulks, which
    /// repeat every flow as it was.
    pub fn upsert_reported(&mut self, flow: Flow, now_ms: u64) -> Upsert {
        self.upsert_marking(&flow, now_ms, false, true).0
    }

    /// `upsert`, and with `mark`, when the flow changed, `mark_queued` in
    /// the same lookup: true in the second place when the caller should
    /// queue it. By reference: the event path's flow is not moved again.
    pub fn upsert_and_mark(&mut self, flow: &Flow, now_ms: u64, mark: bool) -> (Upsert, bool) {
        self.upsert_marking(flow, now_ms, mark, false)
    }

    /// Insert or replace; with `mark`, mark a changed flow queued (true in
    /// the second place: the caller should queue it). With
    /// `stamp_unchanged`, an unchanged flow is stamped `now_ms` (and
    /// marked too): it was reported again.
    fn upsert_marking(
        &mut self,
        flow: &Flow,
        now_ms: u64,
        mark: bool,
        stamp_unchanged: bool,
    ) -> (Upsert, bool) {
        let generation = self.generation;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.push(0);
        let wire = WireFlow::from(flow);
        if wire.validate().is_err() {
            self.scratch = scratch;
            return (Upsert::Refused, false);
        }
        let key_len = compact::put_flow(&mut scratch, &wire);
        // A key is at most compact::MAX_KEY_LEN bytes.
        scratch[0] = key_len as u8;
        let key = &scratch[1..1 + key_len];
        let hash = self.hasher.hash_one(key);
        let range = range_of_bytes(key);
        let outcome = match self.table.entry(hash, matches(hash, key), |s| s.hash) {
            sharded_table::Entry::Occupied(slot) => {
                slot.generation = generation;
                if slot.flow_bytes() == scratch.as_slice() && !stamp_unchanged {
                    // The stamp stays: it says when this state (and this
                    // timeout) was reported, which a bulk repeats.
                    (Upsert::Unchanged, false)
                } else if slot.flow_bytes() == scratch.as_slice() {
                    let was_queued = slot.updated_s & QUEUED != 0;
                    let queued = was_queued || mark;
                    slot.updated_s = seconds(now_ms) | if queued { QUEUED } else { 0 };
                    (Upsert::Unchanged, mark && !was_queued)
                } else {
                    let old = slot.flow();
                    if !old.same_state(flow) {
                        let change = state_hash(&old) ^ state_hash(flow);
                        self.digest ^= change;
                        if let Some(sum) = self.ranges.get_mut(range) {
                            sum.1 ^= change;
                        }
                    }
                    let since = slot.since_s().to_le_bytes();
                    if slot.bytes.len() == scratch.len() + SINCE_LEN {
                        slot.bytes[..scratch.len()].copy_from_slice(&scratch);
                    } else {
                        scratch.extend_from_slice(&since);
                        slot.bytes = scratch.as_slice().into();
                    }
                    let was_queued = slot.updated_s & QUEUED != 0;
                    let queued = was_queued || mark;
                    slot.updated_s = seconds(now_ms) | if queued { QUEUED } else { 0 };
                    self.stats.updated += 1;
                    (Upsert::Updated, mark && !was_queued)
                }
            }
            sharded_table::Entry::Vacant(slot) => {
                if flow.zone != 0 {
                    self.zones.insert(flow.zone);
                }
                let h = state_hash(flow);
                self.digest ^= h;
                if let Some(sum) = self.ranges.get_mut(range) {
                    sum.0 += 1;
                    sum.1 ^= h;
                }
                scratch.extend_from_slice(&seconds(now_ms).to_le_bytes());
                slot.insert(Slot {
                    hash,
                    bytes: scratch.as_slice().into(),
                    generation,
                    updated_s: seconds(now_ms) | if mark { QUEUED } else { 0 },
                });
                self.stats.created += 1;
                (Upsert::Created, mark)
            }
        };
        self.scratch = scratch;
        outcome
    }

    /// Remove a flow; counts a failed destroy when it was not cached.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let (bytes, hash) = self.probe(key);
        match self.table.remove(hash, matches(hash, bytes.as_slice())) {
            Some(slot) => {
                let flow = slot.flow();
                let h = state_hash(&flow);
                self.digest ^= h;
                if let Some(sum) = self.ranges.get_mut(range_of_bytes(slot.key_bytes())) {
                    sum.0 = sum.0.saturating_sub(1);
                    sum.1 ^= h;
                }
                self.stats.destroyed += 1;
                Some(flow)
            }
            None => {
                self.stats.destroy_failed += 1;
                None
            }
        }
    }

    /// Drop every entry (the counters stay).
    pub fn clear(&mut self) {
        self.table.clear_and_free();
        self.zones.clear();
        self.digest = 0;
        self.ranges = vec![(0, 0); usize::from(RANGES)];
    }

    /// Start a new resync generation: entries written from now on carry it.
    pub fn begin_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    /// Remove every entry not written since `begin_generation` returned
    /// `generation` (entries of later generations stay); returns the keys
    /// removed.
    pub fn sweep_older_than(&mut self, generation: u32) -> Vec<FlowKey> {
        self.sweep_where(|g| older(g, generation))
    }

    /// Remove every entry whose generation `is_stale`; returns the keys
    /// removed, in the table's order.
    pub fn sweep_where(&mut self, is_stale: impl Fn(u32) -> bool) -> Vec<FlowKey> {
        self.sweep_slots(|generation, _| is_stale(generation))
    }

    /// Remove every entry for which `is_stale(generation, key bytes)`
    /// holds, keeping the digest and range sums; returns the keys removed,
    /// in the table's order.
    fn sweep_slots(&mut self, is_stale: impl Fn(u32, &[u8]) -> bool) -> Vec<FlowKey> {
        let mut stale = Vec::new();
        let mut digest = self.digest;
        let mut ranges = std::mem::take(&mut self.ranges);
        self.table.retain(|slot| {
            if !is_stale(slot.generation, slot.key_bytes()) {
                return true;
            }
            let range = range_of_bytes(slot.key_bytes());
            let flow = slot.flow();
            let h = state_hash(&flow);
            digest ^= h;
            if let Some(sum) = ranges.get_mut(range) {
                sum.0 = sum.0.saturating_sub(1);
                sum.1 ^= h;
            }
            stale.push(flow.key());
            false
        });
        self.ranges = ranges;
        self.digest = digest;
        self.stats.destroyed += stale.len() as u64;
        stale
    }

    /// Compare `flow` with the cached one, timeouts aside, and confirm it
    /// in the current generation if it is the same. With
    /// `refresh_slack_s`, a flow whose timeout now runs out more than that
    /// many seconds later than the cached one did (traffic refreshed it in
    /// the kernel, which sends no event for that) is `Refreshed` instead:
    /// the caller stores it with `refresh`, and may send it, so that peers
    /// know which flows are live.
    pub fn confirm(&mut self, flow: &Flow, now_ms: u64, refresh_slack_s: Option<u32>) -> Confirm {
        let generation = self.generation;
        let Some(slot) = self.find_mut(&flow.key()) else {
            return Confirm::Differs;
        };
        let cached = slot.flow();
        if !cached.same_state(flow) {
            return Confirm::Differs;
        }
        if let Some(slack) = refresh_slack_s {
            let cached_end = u64::from(slot.updated_s & !QUEUED) + u64::from(cached.timeout);
            let kernel_end = u64::from(seconds(now_ms)) + u64::from(flow.timeout);
            if kernel_end > cached_end + u64::from(slack) {
                return Confirm::Refreshed;
            }
        }
        slot.generation = generation;
        Confirm::Same
    }

    /// Store a flow whose state is unchanged but whose timeout was
    /// refreshed, stamped `now_ms`, in the current generation; with
    /// `mark`, also `mark_queued` it (true: the caller should queue it).
    pub fn refresh(&mut self, flow: Flow, now_ms: u64, mark: bool) -> bool {
        self.upsert_marking(&flow, now_ms, mark, true).1
    }

    /// Clear every flow's queued mark (the sender dropped its queue).
    pub fn clear_queued_marks(&mut self) {
        for slot in self.table.iter_mut() {
            slot.updated_s &= !QUEUED;
        }
    }
}

/// FNV-1a, 64 bits, over bytes fed in order.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    fn addr(&mut self, a: &IpAddr) {
        match a {
            IpAddr::V4(v4) => {
                self.u8(4);
                self.bytes(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.u8(6);
                self.bytes(&v6.octets());
            }
        }
    }

    fn tuple(&mut self, t: &Tuple) {
        self.addr(&t.src);
        self.addr(&t.dst);
        self.u8(t.proto);
        match t.l4 {
            L4::Ports { src, dst } => {
                self.u8(0);
                self.bytes(&src.to_be_bytes());
                self.bytes(&dst.to_be_bytes());
            }
            L4::Icmp { kind, code, id } => {
                self.u8(1);
                self.bytes(&[kind, code]);
                self.bytes(&id.to_be_bytes());
            }
            L4::None => self.u8(2),
        }
    }

    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.u8(0),
            Some(b) => {
                self.u8(1);
                self.bytes(&(b.len() as u64).to_be_bytes());
                self.bytes(b);
            }
        }
    }

    /// FNV's high bits mix poorly; spread them before XOR-aggregation
    /// (the murmur3 64-bit finaliser).
    fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        z ^ (z >> 33)
    }
}

/// A cache's entries as they were when `FlowCache::freeze` ran: owned,
/// `Send`, decoded only by whoever reads it.
#[derive(Clone, Debug, Default)]
pub struct FrozenCache {
    /// Per entry: the second it last changed (u32 LE), the slot's length
    /// (u32 LE), then the slot's bytes (see `Slot::bytes`).
    bytes: Vec<u8>,
    len: usize,
}

/// One entry of a `FrozenCache`, not decoded yet.
#[derive(Clone, Copy, Debug)]
pub struct FrozenEntry<'a> {
    updated_s: u32,
    slot: &'a [u8],
}

/// Bytes a frozen entry takes before its slot's bytes: its second and
/// the slot's length.
const FROZEN_HEADER: usize = 8;

impl FrozenCache {
    /// An empty copy with room for `bytes` (see `FlowCache::freeze_plan`).
    pub fn with_capacity(bytes: usize) -> FrozenCache {
        FrozenCache {
            bytes: Vec::with_capacity(bytes),
            len: 0,
        }
    }

    fn push(&mut self, slot: &Slot) {
        self.bytes
            .extend_from_slice(&(slot.updated_s & !QUEUED).to_le_bytes());
        // A slot holds one flow's encoding: far below 4 GiB.
        let len = u32::try_from(slot.bytes.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(&slot.bytes);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, in the frozen table's order.
    pub fn entries(&self) -> impl Iterator<Item = FrozenEntry<'_>> + '_ {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            let (entry, tail) = Self::entry_at(rest)?;
            rest = tail;
            Some(entry)
        })
    }

    /// The entries, each mapped by `f`, the copy owned by the iterator: for
    /// a consumer that outlives whoever handed the copy over.
    pub fn into_mapped<T>(
        self,
        mut f: impl FnMut(FrozenEntry<'_>) -> T,
    ) -> impl Iterator<Item = T> {
        let mut offset = 0;
        std::iter::from_fn(move || {
            let rest = self.bytes.get(offset..)?;
            let (entry, tail) = Self::entry_at(rest)?;
            offset = self.bytes.len() - tail.len();
            Some(f(entry))
        })
    }

    /// The entry at the start of `bytes`, and what follows it.
    fn entry_at(bytes: &[u8]) -> Option<(FrozenEntry<'_>, &[u8])> {
        let (head, tail) = bytes.split_at_checked(FROZEN_HEADER)?;
        let updated_s = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let (slot, tail) = tail.split_at_checked(usize::try_from(len).ok()?)?;
        Some((FrozenEntry { updated_s, slot }, tail))
    }
}

impl FrozenEntry<'_> {
    /// When the entry last changed, in the cache owner's milliseconds (to
    /// the second).
    pub fn updated_ms(&self) -> u64 {
        u64::from(self.updated_s) * 1000
    }

    /// The flow's key, decoding only the key's bytes.
    pub fn key(&self) -> FlowKey {
        slot_bytes::flow_key(self.slot)
    }

    /// The whole entry, decoded.
    pub fn entry(&self) -> CacheEntry {
        slot_bytes::entry(self.slot, self.updated_s)
    }
}

/// A stable 64-bit hash of a flow's state, every field but the timeout (as
/// `Flow::same_state` compares), over a fixed big-endian encoding: the same
/// value in every process and build. The unit of `FlowCache::digest`.
pub fn state_hash(flow: &Flow) -> u64 {
    // Exhaustive, so a new field must be placed on one side or the other.
    let Flow {
        orig,
        reply,
        zone,
        status,
        timeout: _,
        mark,
        state,
        labels,
        helper,
        master,
        seq_adj,
    } = flow;
    let mut h = Fnv::new();
    h.tuple(orig);
    h.tuple(reply);
    h.bytes(&zone.to_be_bytes());
    h.bytes(&status.to_be_bytes());
    h.bytes(&mark.to_be_bytes());
    match *state {
        ProtoState::None => h.u8(0),
        ProtoState::Tcp {
            state,
            wscale_orig,
            wscale_reply,
            flags_orig,
            flags_reply,
        } => {
            h.u8(1);
            h.bytes(&[state, wscale_orig, wscale_reply, flags_orig, flags_reply]);
        }
        ProtoState::Sctp {
            state,
            vtag_orig,
            vtag_reply,
        } => {
            h.u8(2);
            h.u8(state);
            h.bytes(&vtag_orig.to_be_bytes());
            h.bytes(&vtag_reply.to_be_bytes());
        }
        ProtoState::Dccp { state, role } => {
            h.u8(3);
            h.bytes(&[state, role]);
        }
    }
    h.opt_bytes(labels.as_deref());
    h.opt_bytes(helper.as_deref().map(str::as_bytes));
    // Hashed only when present, so an ordinary flow's hash does not change.
    if let Some(m) = master {
        h.u8(1);
        h.tuple(m);
    }
    if let Some(adj) = seq_adj {
        h.u8(2);
        for d in [adj.orig, adj.reply] {
            h.bytes(&d.correction_pos.to_be_bytes());
            h.bytes(&d.offset_before.to_be_bytes());
            h.bytes(&d.offset_after.to_be_bytes());
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::ProtoState;

    use crate::flow::test_flows::udp as flow;

    #[test]
    fn upsert_reports_created_updated_unchanged() {
        let mut c = FlowCache::new();
        assert_eq!(c.upsert(flow(1), 1_000), Upsert::Created);
        assert_eq!(c.upsert(flow(1), 5_000), Upsert::Unchanged);
        let mut changed = flow(1);
        changed.mark = 9;
        assert_eq!(c.upsert(changed, 7_000), Upsert::Updated);
        let e = c.get(&flow(1).key()).unwrap();
        assert_eq!((e.since_ms, e.updated_ms, e.flow.mark), (1_000, 7_000, 9));
        // A change of length (a longer varint) keeps the creation time.
        let mut longer = flow(1);
        longer.mark = u32::MAX;
        assert_eq!(c.upsert(longer.clone(), 9_000), Upsert::Updated);
        let e = c.get(&flow(1).key()).unwrap();
        assert_eq!((e.since_ms, e.updated_ms, e.flow), (1_000, 9_000, longer));
        assert_eq!(c.stats().created, 1);
        assert_eq!(c.stats().updated, 2);
    }

    #[test]
    fn zones_outlive_their_flows_until_a_clear() {
        let mut c = FlowCache::new();
        c.upsert(flow(1), 0);
        assert_eq!(c.zones().count(), 0, "zone 0 is not listed");
        for (n, zone) in [(2, 9), (3, 4), (4, 9)] {
            let mut f = flow(n);
            f.zone = zone;
            c.upsert(f, 0);
        }
        assert_eq!(c.zones().collect::<Vec<_>>(), vec![4, 9]);
        let mut gone = flow(3);
        gone.zone = 4;
        assert!(c.remove(&gone.key()).is_some());
        assert_eq!(c.zones().collect::<Vec<_>>(), vec![4, 9]);
        c.clear();
        assert_eq!(c.zones().count(), 0);
    }

    #[test]
    fn the_parts_of_a_split_give_every_flow_once() {
        let mut c = FlowCache::new();
        for n in 0..5_000 {
            c.upsert(flow(n), 0);
        }
        let mut seen: Vec<FlowKey> = Part::all(64)
            .flat_map(|part| c.part_flows(part).map(|f| f.key()).collect::<Vec<_>>())
            .collect();
        assert!(Part::all(64).all(|part| c.part_flows(part).count() < 5_000));
        seen.sort();
        let mut all: Vec<FlowKey> = c.keys().collect();
        all.sort();
        assert_eq!(seen.len(), 5_000);
        assert_eq!(seen, all);
        assert_eq!(c.part_flows(Part::WHOLE).count(), 5_000);
    }

    #[test]
    fn a_tuple_without_its_zone_is_found_in_every_zone_that_caches_it() {
        let mut c = FlowCache::new();
        let in_zone = |n, zone| {
            let mut f = flow(n);
            f.zone = zone;
            f
        };
        assert!(c.zones_of(&flow(1).orig).is_empty(), "not cached");
        c.upsert(in_zone(1, 5), 0);
        c.upsert(in_zone(2, 6), 0);
        assert_eq!(c.zones_of(&flow(1).orig), [5]);
        assert_eq!(c.zones_of(&flow(2).orig), [6]);
        // In zone 0 as well: zone 0 first.
        c.upsert(flow(1), 0);
        assert_eq!(c.zones_of(&flow(1).orig), [0, 5]);
        c.upsert(in_zone(2, 8), 0);
        assert_eq!(c.zones_of(&flow(2).orig), [6, 8]);
        c.remove(&in_zone(2, 6).key());
        assert_eq!(c.zones_of(&flow(2).orig), [8]);
    }

    #[test]
    fn queued_mark_coalesces_until_the_flow_is_taken_for_sending() {
        let mut c = FlowCache::new();
        c.upsert(flow(1), 3_000);
        assert!(c.mark_queued(&flow(1).key()), "first change queues");
        assert!(!c.mark_queued(&flow(1).key()), "later ones coalesce");
        let mut changed = flow(1);
        changed.mark = 5;
        c.upsert(changed, 4_000);
        assert!(!c.mark_queued(&flow(1).key()), "an update keeps the mark");
        assert_eq!(c.get(&flow(1).key()).unwrap().updated_ms, 4_000);
        assert!(c.wire_entries().all(|(queued, _)| queued));
        let sent = c.take_for_send(&flow(1).key()).unwrap().to_vec();
        let stored: Vec<Vec<u8>> = c.wire_entries().map(|(_, b)| b.to_vec()).collect();
        assert_eq!(stored, vec![sent]);
        assert!(c.mark_queued(&flow(1).key()), "queued again after sending");
        // Upsert and mark in one: queue only on a change not yet queued.
        let mut other = flow(3);
        assert_eq!(c.upsert_and_mark(&other, 0, true), (Upsert::Created, true));
        assert_eq!(
            c.upsert_and_mark(&other, 0, true),
            (Upsert::Unchanged, false)
        );
        other.mark = 1;
        assert_eq!(c.upsert_and_mark(&other, 0, true), (Upsert::Updated, false));
        c.take_for_send(&other.key());
        other.mark = 2;
        assert_eq!(c.upsert_and_mark(&other, 0, true), (Upsert::Updated, true));
        assert!(!c.mark_queued(&other.key()));
        // A key not cached (a delete) is always queued.
        assert!(c.mark_queued(&flow(2).key()));
        assert!(c.mark_queued(&flow(2).key()));
        assert!(c.take_for_send(&flow(2).key()).is_none());
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

    /// The digest recomputed from scratch.
    fn full_digest(c: &FlowCache) -> u64 {
        c.flows().fold(0, |d, f| d ^ state_hash(&f))
    }

    #[test]
    fn digest_follows_every_change_and_ignores_timeouts() {
        let mut c = FlowCache::new();
        assert_eq!(c.digest(), 0);
        c.upsert(flow(1), 0);
        c.upsert(flow(2), 0);
        let two = c.digest();
        assert_ne!(two, 0);
        assert_eq!(two, full_digest(&c));
        let mut later = flow(1);
        later.timeout = 99;
        c.upsert(later, 1);
        assert_eq!(c.digest(), two, "a timeout is not state");
        let mut marked = flow(1);
        marked.mark = 3;
        c.upsert(marked, 2);
        assert_ne!(c.digest(), two);
        assert_eq!(c.digest(), full_digest(&c));
        c.upsert(flow(1), 3);
        assert_eq!(c.digest(), two, "back to the same state");
        c.remove(&flow(2).key());
        assert_eq!(c.digest(), state_hash(&flow(1)));
        c.remove(&flow(2).key());
        assert_eq!(c.digest(), state_hash(&flow(1)));
        let g = c.begin_generation();
        c.upsert(flow(3), 4);
        c.sweep_older_than(g);
        assert_eq!(c.digest(), state_hash(&flow(3)));
        c.clear();
        assert_eq!(c.digest(), 0);
        // Insertion order does not matter.
        let mut d = FlowCache::new();
        d.upsert(flow(5), 0);
        d.upsert(flow(4), 0);
        let mut e = FlowCache::new();
        e.upsert(flow(4), 0);
        e.upsert(flow(5), 0);
        assert_eq!(d.digest(), e.digest());
    }

    #[test]
    fn state_hash_is_pinned() {
        // The value travels between hosts: it must never change by accident.
        let mut f = flow(1000);
        f.helper = Some("sip".into());
        f.labels = Some(vec![1, 2]);
        f.zone = 7;
        assert_eq!(state_hash(&f), PINNED);
        // Every field but the timeout counts.
        let base = state_hash(&f);
        let variants: [fn(&mut Flow); 7] = [
            |f| f.zone = 8,
            |f| f.status = 1,
            |f| f.mark = 1,
            |f| f.labels = None,
            |f| f.helper = None,
            |f| f.reply.dst = "198.19.0.1".parse().unwrap(),
            |f| f.state = ProtoState::Dccp { state: 1, role: 0 },
        ];
        for change in variants {
            let mut g = f.clone();
            change(&mut g);
            assert_ne!(state_hash(&g), base, "{g:?}");
        }
        f.timeout = 5;
        assert_eq!(state_hash(&f), base);
    }

    proptest::proptest! {
        /// Every flow comes back from the compact storage exactly as it
        /// went in, found by its key alone, among others.
        #[test]
        fn stored_flows_come_back_unchanged(
            flows in proptest::collection::vec(crate::wire::tests::arb_flow(), 1..40),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut c = FlowCache::with_seed(seed);
            let mut want = std::collections::HashMap::new();
            for f in flows {
                c.upsert(f.clone(), 0);
                want.insert(f.key(), f);
            }
            proptest::prop_assert_eq!(c.len(), want.len());
            for (key, f) in &want {
                proptest::prop_assert_eq!(c.flow(key), Some(f.clone()));
            }
            let mut keys: Vec<FlowKey> = c.keys().collect();
            keys.sort();
            let mut expected: Vec<FlowKey> = want.keys().copied().collect();
            expected.sort();
            proptest::prop_assert_eq!(keys, expected);
            proptest::prop_assert_eq!(c.digest(), full_digest(&c));
            for key in want.keys() {
                proptest::prop_assert!(c.remove(key).is_some());
            }
            proptest::prop_assert_eq!((c.len(), c.digest()), (0, 0));
        }
    }

    /// Every range's sum recomputed from scratch.
    fn full_ranges(c: &FlowCache) -> Vec<RangeSum> {
        let mut v: Vec<RangeSum> = (0..RANGES)
            .map(|range| RangeSum {
                range,
                ..RangeSum::default()
            })
            .collect();
        for f in c.flows() {
            let s = &mut v[usize::from(range_of(&f.key()))];
            s.count += 1;
            s.hash ^= state_hash(&f);
        }
        v
    }

    #[test]
    fn range_sums_follow_every_change_and_partition_the_digest() {
        let mut c = FlowCache::with_seed(3);
        for port in 0..2000 {
            c.upsert(flow(port), 0);
        }
        let sums: Vec<RangeSum> = c.range_sums().collect();
        assert_eq!(sums, full_ranges(&c));
        assert_eq!(
            sums.iter().map(|s| s.count as usize).sum::<usize>(),
            c.len()
        );
        assert_eq!(sums.iter().fold(0, |h, s| h ^ s.hash), c.digest());
        // 2,000 keys reach nearly every one of 256 ranges.
        assert!(sums.iter().filter(|s| s.count > 0).count() > 240);
        let mut marked = flow(5);
        marked.mark = 77;
        c.upsert(marked, 1);
        c.remove(&flow(6).key());
        let g = c.begin_generation();
        for port in 0..1000 {
            c.upsert(flow(port), 2);
        }
        c.sweep_older_than(g);
        assert_eq!(c.range_sums().collect::<Vec<_>>(), full_ranges(&c));
        c.clear();
        assert!(c.range_sums().all(|s| s.count == 0 && s.hash == 0));
        // The range of a key does not depend on the cache's hash seed.
        let other = FlowCache::with_seed(99);
        drop(other);
        assert_eq!(range_of(&flow(1).key()), range_of(&flow(1).key()));
        assert!(range_of(&flow(1).key()) < RANGES);
    }

    #[test]
    fn a_range_sweep_is_checked_before_and_touches_only_its_ranges() {
        let mut c = FlowCache::with_seed(1);
        for port in 0..600 {
            c.upsert(flow(port), 0);
        }
        let target = range_of(&flow(0).key());
        let mut want = vec![false; usize::from(RANGES)];
        want[usize::from(target)] = true;
        let mut since = vec![None; usize::from(RANGES)];
        let in_range: Vec<u16> = (0..600)
            .filter(|&p| range_of(&flow(p).key()) == target)
            .collect();
        assert!(in_range.len() >= 2, "{in_range:?}");
        let before = c.range_sum(target);
        // A range bulk rewrites all but the first flow of the range.
        let g = c.begin_generation();
        since[usize::from(target)] = Some(g);
        for &p in &in_range[1..] {
            c.upsert(flow(p), 1);
        }
        // A later generation (another range asked) does not make these
        // stale.
        let later = c.begin_generation();
        c.upsert(flow(in_range[1]), 2);
        assert!(later != g);
        let expect = {
            let mut s = before;
            s.count -= 1;
            s.hash ^= state_hash(&flow(in_range[0]));
            s
        };
        assert_eq!(c.range_sums_if_swept(&since), vec![expect]);
        // Unwritten flows elsewhere count as stale for a full check only.
        let (count, _) = c.digest_if_swept(g);
        assert_eq!(count as usize, in_range.len() - 1);
        let gone = c.sweep_ranges_older_than(&since);
        assert_eq!(gone, vec![flow(in_range[0]).key()]);
        assert_eq!(c.len(), 599);
        assert_eq!(c.range_sum(target), expect);
        assert_eq!(c.range_sums().collect::<Vec<_>>(), full_ranges(&c));
        // The entries of a range, with the keys of queued ones.
        c.mark_queued(&flow(in_range[1]).key());
        let entries: Vec<(Option<FlowKey>, Vec<u8>)> = c
            .range_entries(&want)
            .map(|(r, k, b)| {
                assert_eq!(r, target);
                (k, b.to_vec())
            })
            .collect();
        assert_eq!(entries.len(), in_range.len() - 1);
        assert_eq!(
            entries.iter().filter_map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![flow(in_range[1]).key()]
        );
    }

    #[test]
    fn same_seed_same_order() {
        let fill = |seed| {
            let mut c = FlowCache::with_seed(seed);
            for port in 0..500 {
                c.upsert(flow(port), 0);
            }
            c.keys().collect::<Vec<_>>()
        };
        assert_eq!(fill(7), fill(7));
        assert_ne!(fill(7), fill(8));
    }

    // Computed independently (a Python FNV-1a over the documented encoding).
    const PINNED: u64 = 0x1cd3_bab6_4fa7_28b2;

    #[test]
    fn frozen_copies_decode_to_the_live_entries() {
        use crate::flow::test_flows::udp;
        let mut cache = FlowCache::with_seed(11);
        for port in 1..=50 {
            cache.upsert(udp(port), u64::from(port) * 1_000);
        }
        let mut live: Vec<CacheEntry> = cache.iter().collect();
        let mut frozen: Vec<CacheEntry> = cache.freeze().entries().map(|e| e.entry()).collect();
        live.sort_by_key(|e| e.updated_ms);
        frozen.sort_by_key(|e| e.updated_ms);
        assert_eq!(frozen, live);
        let keys = [udp(7).key(), udp(9).key(), udp(999).key()];
        let some = cache.freeze_keys(&keys);
        assert_eq!(some.len(), 2, "the uncached key is left out");
        let got: Vec<FlowKey> = some.entries().map(|e| e.key()).collect();
        assert!(got.contains(&udp(7).key()) && got.contains(&udp(9).key()));
    }
}
