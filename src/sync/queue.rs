//! The send queue: which flows (by key) and bulk markers still have to be
//! sent, in order, and the snapshot a bulk sends.
//!
//! Owns: a FIFO of keys and bulk markers, the encoded messages of the
//! bulks still queued, and how many keys wait. Must not: hold the contents
//! of a changed flow (its message is built from the internal cache at send
//! time), decide whether a key is queued already (the caller coalesces,
//! with a mark in the flow's cache slot), sequence numbers, or datagrams.

use crate::flow::FlowKey;
use std::collections::VecDeque;

/// One thing waiting to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// Send the flow's current state: Upsert if cached, Delete if not.
    Key(FlowKey),
    /// One flow of a bulk: its Upsert as it stood when the bulk began,
    /// `len` bytes at `at` in the queue's bulk snapshot. Copying a million
    /// encodings in the cache's order beats a million lookups by key.
    BulkFlow {
        at: usize,
        len: usize,
    },
    BulkBegin(u32),
    /// The end of a full bulk: what the table held when it began.
    BulkEnd {
        id: u32,
        count: u64,
        hash: u64,
    },
    /// The markers of a range bulk (their ranges and sums are kept by
    /// `bulk::BulkSender`).
    RangeBegin(u32),
    RangeEnd(u32),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SendQueue {
    items: VecDeque<Item>,
    /// The encoded messages of the `BulkFlow` items.
    bulk: Vec<u8>,
    /// `BulkFlow` items still queued; the snapshot is freed at zero.
    bulk_flows: usize,
    /// `Key` items queued (what `send_queue_max` bounds).
    keys: usize,
}

impl SendQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many of the items are flow keys (bulk flows and markers aside).
    pub fn keys(&self) -> usize {
        self.keys
    }

    pub fn push_key(&mut self, key: FlowKey) {
        self.push_back(Item::Key(key));
    }

    /// Queue one flow of a bulk, its message already encoded.
    pub fn push_bulk_flow(&mut self, message: &[u8]) {
        let at = self.bulk.len();
        self.bulk.extend_from_slice(message);
        self.items.push_back(Item::BulkFlow {
            at,
            len: message.len(),
        });
        self.bulk_flows += 1;
    }

    /// The encoded message of a `BulkFlow` item (empty for other items).
    pub fn bulk_message(&self, item: &Item) -> &[u8] {
        match *item {
            Item::BulkFlow { at, len } => self.bulk.get(at..at + len).unwrap_or_default(),
            _ => &[],
        }
    }

    pub fn push_front(&mut self, item: Item) {
        self.keys += usize::from(matches!(item, Item::Key(_)));
        self.items.push_front(item);
    }

    pub fn push_back(&mut self, item: Item) {
        self.keys += usize::from(matches!(item, Item::Key(_)));
        self.items.push_back(item);
    }

    pub fn front(&self) -> Option<&Item> {
        self.items.front()
    }

    pub fn pop_front(&mut self) -> Option<Item> {
        let item = self.items.pop_front()?;
        match item {
            Item::BulkFlow { .. } => {
                self.bulk_flows -= 1;
                if self.bulk_flows == 0 {
                    self.bulk = Vec::new();
                }
            }
            Item::Key(_) => self.keys -= 1,
            _ => {}
        }
        Some(item)
    }

    /// Forget everything, bulk markers included.
    pub fn clear(&mut self) {
        self.items = VecDeque::new();
        self.bulk = Vec::new();
        self.bulk_flows = 0;
        self.keys = 0;
    }

    /// Forget every waiting flow, bulk snapshots included, and the end of
    /// a full bulk: a peer receiving that end without the dropped flows
    /// would sweep them. The other markers stay (a bulk's begin alone
    /// sweeps nothing; a range bulk's end carries its sums, so the peer
    /// finds the dropped flows unproven and keeps them).
    pub fn drop_keys(&mut self) {
        self.items.retain(|i| {
            !matches!(
                i,
                Item::Key(_) | Item::BulkFlow { .. } | Item::BulkEnd { .. }
            )
        });
        self.bulk = Vec::new();
        self.bulk_flows = 0;
        self.keys = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;

    fn key(port: u16) -> FlowKey {
        udp(port).key()
    }

    #[test]
    fn items_leave_in_order_and_drop_keys_keeps_the_markers_that_sweep_nothing() {
        let mut q = SendQueue::default();
        q.push_key(key(1));
        q.push_key(key(2));
        q.push_front(Item::BulkBegin(7));
        q.push_back(Item::BulkEnd {
            id: 7,
            count: 2,
            hash: 0,
        });
        q.push_key(key(3));
        q.push_front(Item::Key(key(4)));
        assert_eq!((q.len(), q.keys()), (6, 4));
        assert_eq!(q.pop_front(), Some(Item::Key(key(4))));
        assert_eq!(q.pop_front(), Some(Item::BulkBegin(7)));
        assert_eq!(q.pop_front(), Some(Item::Key(key(1))));
        assert_eq!(q.keys(), 2);
        q.push_back(Item::RangeEnd(8));
        q.drop_keys();
        assert_eq!((q.len(), q.keys()), (1, 0));
        assert_eq!(q.pop_front(), Some(Item::RangeEnd(8)));
        assert!(q.is_empty(), "the full bulk's end went with its flows");
    }

    #[test]
    fn bulk_flows_keep_their_bytes_until_sent() {
        let mut q = SendQueue::default();
        q.push_key(key(1));
        q.push_bulk_flow(b"one");
        q.push_bulk_flow(b"three");
        q.push_key(key(2));
        assert_eq!((q.len(), q.keys()), (4, 2), "bulk flows are not keys");
        assert_eq!(q.pop_front(), Some(Item::Key(key(1))));
        let first = *q.front().unwrap();
        assert_eq!(q.bulk_message(&first), b"one");
        q.pop_front();
        let second = *q.front().unwrap();
        assert_eq!(q.bulk_message(&second), b"three");
        q.push_key(key(1));
        assert_eq!(q.len(), 3);
        q.pop_front();
        assert!(
            q.bulk.is_empty(),
            "the snapshot is freed with its last flow"
        );
        q.push_bulk_flow(b"x");
        q.push_back(Item::BulkEnd {
            id: 2,
            count: 2,
            hash: 0,
        });
        q.drop_keys();
        assert!(q.is_empty() && q.bulk.is_empty());
    }
}
