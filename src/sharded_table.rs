//! ShardedTable: a hash table split into `SHARDS` tables by eight bits of
//! each entry's hash, so that growing moves one shard's entries at a time.
//!
//! A single table doubles at 7/8 full and moves every entry in that one
//! insert: 32 ms at 917,505 flows, a stall every flow behind it waits for.
//! Here the shards fill evenly and double one by one, each moving about a
//! 256th of the entries, spread over the inserts around that size: the
//! slowest insert while growing to a million takes 0.2 ms
//! (`examples/cache_growth.rs`).
//!
//! Owns: which shard an entry lives in, the shards, their count of
//! entries (kept, not summed: `len` is asked for every flow a peer sends),
//! and the split of the shards into `Part`s that several threads read.
//! Must not: hash (callers pass the hash, as to hashbrown's `HashTable`,
//! and keep it with the entry for `entry`'s rehash), or know what it
//! stores.

use hashbrown::HashTable;

/// How many shards: enough that a shard of a 4,000,000-flow table moves
/// in about half a millisecond, few enough that an empty table's shard
/// headers (32 bytes each) are nothing beside its entries.
pub const SHARDS: usize = 256;

/// The shard is bits 48..56 of the hash: hashbrown indexes a table by its
/// low bits and tags a slot with its top seven, so the shard says nothing
/// about either within a shard.
const SHARD_SHIFT: u32 = 48;

fn shard_of(hash: u64) -> usize {
    (hash >> SHARD_SHIFT) as usize % SHARDS
}

/// Part `index` of `of` runs of shards of equal length, in order: what
/// one of several threads reading a table walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: usize,
    pub of: usize,
}

impl Part {
    /// The whole table, as one part.
    pub const WHOLE: Part = Part { index: 0, of: 1 };

    /// The parts of a split into `of`.
    pub fn all(of: usize) -> impl Iterator<Item = Part> {
        (0..of).map(move |index| Part { index, of })
    }

    /// For a walk of a split into `of` that takes one part at a time and
    /// whose next part is `next`: that part; `next` moves on.
    pub fn take_next(next: &mut usize, of: usize) -> Part {
        let part = Part { index: *next, of };
        *next += 1;
        part
    }

    fn shards(self) -> std::ops::Range<usize> {
        let of = self.of.max(1);
        SHARDS * self.index / of..SHARDS * (self.index + 1) / of
    }
}

/// A hash table of `T` in `SHARDS` shards (see the module's doc).
#[derive(Clone, Debug)]
pub struct ShardedTable<T> {
    shards: Box<[HashTable<T>; SHARDS]>,
    /// Entries in all shards together.
    len: usize,
}

/// What `ShardedTable::entry` found: the entry, or the place for it.
pub enum Entry<'a, T> {
    Occupied(&'a mut T),
    Vacant(VacantEntry<'a, T>),
}

/// The place for an entry not in the table; `insert` fills it.
pub struct VacantEntry<'a, T> {
    slot: hashbrown::hash_table::VacantEntry<'a, T>,
    len: &'a mut usize,
}

impl<'a, T> VacantEntry<'a, T> {
    pub fn insert(self, value: T) -> &'a mut T {
        *self.len += 1;
        self.slot.insert(value).into_mut()
    }
}

impl<T> Default for ShardedTable<T> {
    fn default() -> ShardedTable<T> {
        ShardedTable::new()
    }
}

impl<T> ShardedTable<T> {
    /// An empty table; no shard allocates until it holds an entry.
    pub fn new() -> ShardedTable<T> {
        ShardedTable {
            shards: Box::new(std::array::from_fn(|_| HashTable::new())),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many entries the shards can hold without growing, together.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(HashTable::capacity).sum()
    }

    /// The largest shard's capacity: the most one insert can move.
    pub fn largest_shard_capacity(&self) -> usize {
        self.shards
            .iter()
            .map(HashTable::capacity)
            .max()
            .unwrap_or(0)
    }

    pub fn find(&self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&T> {
        self.shards[shard_of(hash)].find(hash, eq)
    }

    pub fn find_mut(&mut self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&mut T> {
        self.shards[shard_of(hash)].find_mut(hash, eq)
    }

    /// The entry for `hash` and `eq`, found or to insert in one probe;
    /// `hasher` gives a stored entry's hash when its shard grows.
    pub fn entry(
        &mut self,
        hash: u64,
        eq: impl FnMut(&T) -> bool,
        hasher: impl Fn(&T) -> u64,
    ) -> Entry<'_, T> {
        match self.shards[shard_of(hash)].entry(hash, eq, hasher) {
            hashbrown::hash_table::Entry::Occupied(found) => Entry::Occupied(found.into_mut()),
            hashbrown::hash_table::Entry::Vacant(slot) => Entry::Vacant(VacantEntry {
                slot,
                len: &mut self.len,
            }),
        }
    }

    /// Take the entry for `hash` and `eq` out, if there is one.
    pub fn remove(&mut self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<T> {
        let found = self.shards[shard_of(hash)].find_entry(hash, eq).ok()?;
        self.len -= 1;
        Some(found.remove().0)
    }

    /// Every entry, shard by shard: the same order on every walk of an
    /// unchanged table.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.shards.iter().flat_map(HashTable::iter)
    }

    /// The entries of one `part` of the shards: walking the parts of a
    /// split one after another visits what `iter` visits, in its order.
    pub fn iter_part(&self, part: Part) -> impl Iterator<Item = &T> + '_ {
        self.shards
            .get(part.shards())
            .unwrap_or_default()
            .iter()
            .flat_map(HashTable::iter)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.shards.iter_mut().flat_map(HashTable::iter_mut)
    }

    /// Keep the entries for which `keep` holds, visited in `iter`'s order.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) {
        for shard in self.shards.iter_mut() {
            shard.retain(&mut keep);
        }
        self.len = self.shards.iter().map(HashTable::len).sum();
    }

    /// Drop every entry and give the memory back.
    pub fn clear_and_free(&mut self) {
        for shard in self.shards.iter_mut() {
            *shard = HashTable::new();
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A well-spread hash of a small key (splitmix64's finaliser).
    fn spread(key: u32) -> u64 {
        let mut z = u64::from(key).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn insert(table: &mut ShardedTable<(u64, u32, u32)>, key: u32, value: u32) {
        let hash = spread(key);
        match table.entry(hash, |e| e.1 == key, |e| e.0) {
            Entry::Occupied(e) => e.2 = value,
            Entry::Vacant(e) => {
                e.insert((hash, key, value));
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32, u32),
        Remove(u32),
        RetainEven,
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u32..2_000, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => (0u32..2_000).prop_map(Op::Remove),
            1 => Just(Op::RetainEven),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Whatever the operations, the table holds what a map would.
        #[test]
        fn behaves_as_one_map(ops in proptest::collection::vec(op(), 1..400)) {
            let mut table = ShardedTable::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        insert(&mut table, k, v);
                        model.insert(k, v);
                    }
                    Op::Remove(k) => {
                        let removed = table.remove(spread(k), |e| e.1 == k).map(|e| e.2);
                        prop_assert_eq!(removed, model.remove(&k));
                    }
                    Op::RetainEven => {
                        table.retain(|e| e.2 % 2 == 0);
                        model.retain(|_, v| *v % 2 == 0);
                    }
                    Op::Clear => {
                        table.clear_and_free();
                        model.clear();
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(table.is_empty(), model.is_empty());
                prop_assert_eq!(table.iter().count(), model.len());
            }
            let mut held: Vec<(u32, u32)> = table.iter().map(|e| (e.1, e.2)).collect();
            held.sort_unstable();
            let want: Vec<(u32, u32)> = model.into_iter().collect();
            prop_assert_eq!(held, want);
            for e in table.iter_mut() {
                e.2 = 7;
            }
            prop_assert!(table.iter().all(|e| e.2 == 7));
            for e in table.iter() {
                prop_assert_eq!(table.find(e.0, |x| x.1 == e.1).map(|x| x.1), Some(e.1));
            }
        }
    }

    /// No insert grows the table by more than a shard: the stall a single
    /// table has at each doubling is split into `SHARDS` small ones. (With
    /// one shard, one insert grows it by 229,376 at once, and this fails.)
    #[test]
    fn growth_moves_one_shard_at_a_time() {
        let mut table = ShardedTable::new();
        let mut largest_step = 0;
        for key in 0..300_000u32 {
            let before = table.capacity();
            insert(&mut table, key, key);
            let after = table.capacity();
            if after > before {
                largest_step = largest_step.max(after - before);
                // The shard that grew doubled: it is at most the largest.
                assert!(after - before <= table.largest_shard_capacity());
            }
        }
        // 300,000 entries in 256 shards: about 1,200 each, in shards of
        // 1,792 (2,048 buckets); the last step of each was 1,792. One
        // table's last step was 229,376.
        assert!(
            largest_step <= 300_000 / 64,
            "one insert grew the table by {largest_step}"
        );
        assert_eq!(table.len(), 300_000);
    }

    #[test]
    fn the_parts_of_a_split_walk_the_table_in_its_order() {
        let mut table = ShardedTable::new();
        for key in 0..5_000u32 {
            insert(&mut table, key, key);
        }
        let whole: Vec<u32> = table.iter().map(|e| e.1).collect();
        for of in [1, 2, 3, 7] {
            let parts: Vec<u32> = Part::all(of)
                .flat_map(|part| table.iter_part(part).map(|e| e.1))
                .collect();
            assert_eq!(parts, whole, "{of} parts");
        }
        // Each part of two holds some of the entries, not all.
        let first = table.iter_part(Part { index: 0, of: 2 }).count();
        assert!(first > 0 && first < whole.len());
        assert_eq!(table.iter_part(Part { index: 2, of: 2 }).count(), 0);
    }

    #[test]
    fn shards_are_chosen_by_bits_hashbrown_does_not_use() {
        // Low bits (hashbrown's bucket index) and top seven (its tag) do
        // not pick the shard.
        assert_eq!(shard_of(0xFE00_0000_0000_0000), 0);
        assert_eq!(shard_of(0x0000_FFFF_FFFF_FFFF), 0);
        assert_eq!(shard_of(0x00AB_0000_0000_0000), 0xAB);
    }
}
