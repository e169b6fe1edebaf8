//! The coalescing send queue: which flows (by key) and bulk markers still
//! have to be sent, in order.
//!
//! Owns: a FIFO of keys without duplicates plus bulk markers. Must not: hold
//! flow contents (the message is built from the internal cache at send time),
//! sequence numbers, or bytes.

use crate::flow::FlowKey;
use foldhash::HashSet;
use std::collections::VecDeque;

/// One thing waiting to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// Send the flow's current state: Upsert if cached, Delete if not.
    Key(FlowKey),
    /// The same, for a flow of a bulk: not coalesced with other keys (a
    /// bulk's keys are distinct already, and a million set insertions
    /// cost more than the rare duplicate send).
    BulkKey(FlowKey),
    BulkBegin(u32),
    BulkEnd {
        id: u32,
        count: u64,
    },
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SendQueue {
    items: VecDeque<Item>,
    keys: HashSet<FlowKey>,
}

impl SendQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queue a key unless it is already waiting (its latest state is sent).
    pub fn push_key(&mut self, key: FlowKey) {
        if self.keys.insert(key) {
            self.items.push_back(Item::Key(key));
        }
    }

    /// Queue one of a bulk's keys (see `Item::BulkKey`).
    pub fn push_bulk_key(&mut self, key: FlowKey) {
        self.items.push_back(Item::BulkKey(key));
    }

    pub fn push_front(&mut self, item: Item) {
        if let Item::Key(k) = item {
            if !self.keys.insert(k) {
                return;
            }
        }
        self.items.push_front(item);
    }

    pub fn push_back(&mut self, item: Item) {
        match item {
            Item::Key(k) => self.push_key(k),
            other => self.items.push_back(other),
        }
    }

    pub fn front(&self) -> Option<&Item> {
        self.items.front()
    }

    pub fn pop_front(&mut self) -> Option<Item> {
        let item = self.items.pop_front()?;
        if let Item::Key(k) = &item {
            self.keys.remove(k);
        }
        Some(item)
    }

    /// Forget every waiting key; bulk markers stay.
    pub fn drop_keys(&mut self) {
        self.items
            .retain(|i| !matches!(i, Item::Key(_) | Item::BulkKey(_)));
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{proto, Tuple, L4};

    fn key(port: u16) -> FlowKey {
        FlowKey {
            zone: 0,
            orig: Tuple {
                src: "198.18.0.1".parse().unwrap(),
                dst: "198.18.0.2".parse().unwrap(),
                proto: proto::UDP,
                l4: L4::Ports { src: port, dst: 53 },
            },
        }
    }

    #[test]
    fn keys_coalesce_and_keep_first_position() {
        let mut q = SendQueue::default();
        q.push_key(key(1));
        q.push_key(key(2));
        q.push_key(key(1));
        q.push_front(Item::BulkBegin(7));
        q.push_back(Item::Key(key(2)));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop_front(), Some(Item::BulkBegin(7)));
        assert_eq!(q.pop_front(), Some(Item::Key(key(1))));
        q.push_key(key(1));
        assert_eq!(q.pop_front(), Some(Item::Key(key(2))));
        assert_eq!(q.pop_front(), Some(Item::Key(key(1))));
        assert!(q.is_empty());
        q.push_key(key(3));
        q.push_back(Item::BulkEnd { id: 1, count: 0 });
        q.drop_keys();
        assert_eq!(q.pop_front(), Some(Item::BulkEnd { id: 1, count: 0 }));
        q.push_key(key(3));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn bulk_keys_are_not_coalesced_and_are_dropped_with_keys() {
        let mut q = SendQueue::default();
        q.push_key(key(1));
        q.push_bulk_key(key(1));
        q.push_bulk_key(key(2));
        q.push_key(key(2));
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop_front(), Some(Item::Key(key(1))));
        assert_eq!(q.pop_front(), Some(Item::BulkKey(key(1))));
        // A bulk key does not hold a later key back or swallow it.
        q.push_key(key(1));
        assert_eq!(q.len(), 3);
        q.push_back(Item::BulkEnd { id: 2, count: 2 });
        q.drop_keys();
        assert_eq!(q.pop_front(), Some(Item::BulkEnd { id: 2, count: 2 }));
        assert!(q.is_empty());
    }
}
