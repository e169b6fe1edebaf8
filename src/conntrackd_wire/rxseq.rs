//! The receiver's sequence tracking (§2.1): one `last_seq_recv` for all
//! senders, each message classified UNSET, IN_SYNC, AFTER (a gap) or
//! BEFORE, with conntrackd's "lost" and "before" statistics.
//!
//! Owns: that classification and its counters. Must not: decide what a
//! mode does with a class (see `node`).

use super::header::{after, before};

/// A sequence number against the last one accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqClass {
    Unset,
    InSync,
    /// A gap: the next expected number is carried.
    After {
        expected: u32,
    },
    Before,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxSeq {
    last: Option<u32>,
    /// conntrackd's "Packets lost" (`seq − last + 1` per gap: it
    /// over-counts by 2, and so does this, to keep the counters equal).
    pub lost: u64,
    /// "Packets before": old or duplicate numbers.
    pub before: u64,
}

impl RxSeq {
    pub fn last(&self) -> Option<u32> {
        self.last
    }

    /// Classify `seq`, counting a gap or a late message.
    pub fn classify(&mut self, seq: u32) -> SeqClass {
        let Some(last) = self.last else {
            return SeqClass::Unset;
        };
        let expected = last.wrapping_add(1);
        if seq == expected {
            SeqClass::InSync
        } else if after(seq, expected) {
            self.lost += u64::from(seq.wrapping_sub(last).wrapping_add(1));
            SeqClass::After { expected }
        } else {
            debug_assert!(before(seq, expected));
            self.before += 1;
            SeqClass::Before
        }
    }

    /// The message was accepted (data or control).
    pub fn accept(&mut self, seq: u32) {
        self.last = Some(seq);
    }
}
