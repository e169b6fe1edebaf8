//! The bounded resend queue of the FTFW sender: reliable datagrams, as sent,
//! until every live peer has acknowledged them.
//!
//! Owns: consecutive (seq, bytes) pairs. Must not: decide when to resend or
//! prune (the Node does), or re-encode anything: a resend is the same bytes.

use std::collections::VecDeque;

#[derive(Clone, Debug, Default)]
pub(crate) struct ResendQueue {
    /// Consecutive sequence numbers, oldest first.
    q: VecDeque<(u32, Vec<u8>)>,
}

impl ResendQueue {
    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub fn oldest(&self) -> Option<u32> {
        self.q.front().map(|(s, _)| *s)
    }

    /// Append the next datagram; `seq` must follow the newest.
    pub fn push(&mut self, seq: u32, bytes: Vec<u8>) {
        self.q.push_back((seq, bytes));
    }

    pub fn get(&self, seq: u32) -> Option<&[u8]> {
        let first = self.oldest()?;
        let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.q
            .get(idx)
            .filter(|(s, _)| *s == seq)
            .map(|(_, b)| b.as_slice())
    }

    /// Drop every datagram up to and including `upto`; returns how many.
    pub fn prune_upto(&mut self, upto: u32) -> usize {
        let mut n = 0;
        while self.q.front().is_some_and(|(s, _)| *s <= upto) {
            self.q.pop_front();
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_prune() {
        let mut r = ResendQueue::default();
        for s in 5..10u32 {
            r.push(s, vec![s as u8]);
        }
        assert_eq!(r.get(4), None);
        assert_eq!(r.get(7), Some(&[7u8][..]));
        assert_eq!(r.get(10), None);
        assert_eq!(r.prune_upto(6), 2);
        assert_eq!(r.oldest(), Some(7));
        assert_eq!(r.get(5), None);
        assert_eq!(r.prune_upto(100), 3);
        assert!(r.is_empty());
    }
}
