//! Warm standby after a restart: which of the flows found in the kernel at
//! start are only provisionally ours.
//!
//! A daemon that starts has no peer cache yet, so it cannot tell its own
//! flows from those warm standby wrote into the kernel for a peer before
//! the restart: it takes them all, provisionally. A provisional flow a
//! peer turns out to hold is the peer's (the peer's claim wins, ours is
//! withdrawn); one that sees traffic of its own is ours for good; after
//! `PROVISIONAL_WINDOW` the rest are ours (a peer that was down gets them
//! when it returns). A flow held for good always wins over a peer's claim
//! of it: a restarted backup's provisional claims must never make the
//! primary give up, overwrite or delete its own live entries.
//!
//! Owns: the set of provisional keys and its deadline. Must not: touch
//! the caches or the kernel (the owner acts on its answers).

use crate::flow::FlowKey;
use foldhash::HashSet;
use std::time::{Duration, Instant};

/// How long a restarted daemon's flows stay provisional: time for every
/// live peer to be heard and to send its bulk (a second or two), with room.
pub(super) const PROVISIONAL_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub(super) struct Provisional {
    keys: HashSet<FlowKey>,
    /// Claims withdrawn for a peer's within the window. When both nodes
    /// restarted, the peer may withdraw its claim of the same flow too:
    /// its delete must then not remove the entry from our kernel.
    withdrawn: HashSet<FlowKey>,
    until: Option<Instant>,
}

impl Provisional {
    /// The flows primed at start, provisional until `until`.
    pub(super) fn after_start(keys: impl IntoIterator<Item = FlowKey>, until: Instant) -> Self {
        let keys: HashSet<FlowKey> = keys.into_iter().collect();
        let until = (!keys.is_empty()).then_some(until);
        Provisional {
            keys,
            withdrawn: HashSet::default(),
            until,
        }
    }

    pub(super) fn contains(&self, key: &FlowKey) -> bool {
        !self.keys.is_empty() && self.keys.contains(key)
    }

    /// The flow is ours for good (it saw traffic of its own), or gone, or
    /// withdrawn: no longer provisional. Whether it was.
    pub(super) fn settle(&mut self, key: &FlowKey) -> bool {
        !self.keys.is_empty() && self.keys.remove(key)
    }

    /// A peer claims a provisional flow: ours is withdrawn. Whether it was
    /// provisional.
    pub(super) fn withdraw(&mut self, key: &FlowKey) -> bool {
        if !self.settle(key) {
            return false;
        }
        self.withdrawn.insert(*key);
        true
    }

    /// A peer deletes a flow: whether we withdrew our claim of it within
    /// the window (asked once).
    pub(super) fn take_withdrawn(&mut self, key: &FlowKey) -> bool {
        !self.withdrawn.is_empty() && self.withdrawn.remove(key)
    }

    /// Every remaining flow is ours for good: the window has passed, or
    /// the peers' caches were forgotten (`-f`, a promotion).
    pub(super) fn confirm_all(&mut self) {
        self.keys = HashSet::default();
        self.withdrawn = HashSet::default();
        self.until = None;
    }

    /// Confirm all once the window has passed; how many were left.
    pub(super) fn expire(&mut self, now: Instant) -> Option<usize> {
        let until = self.until?;
        if now < until {
            return None;
        }
        let left = self.keys.len();
        self.confirm_all();
        Some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;

    #[test]
    fn flows_stay_provisional_until_settled_or_the_window_ends() {
        let start = Instant::now();
        let mut p =
            Provisional::after_start([udp(1).key(), udp(2).key()], start + PROVISIONAL_WINDOW);
        assert!(p.contains(&udp(1).key()));
        assert!(!p.contains(&udp(3).key()));
        assert!(p.settle(&udp(1).key()));
        assert!(!p.settle(&udp(1).key()), "settled once");
        assert!(!p.contains(&udp(1).key()));
        assert_eq!(p.expire(start), None, "the window is still open");
        assert!(p.contains(&udp(2).key()));
        assert_eq!(p.expire(start + PROVISIONAL_WINDOW), Some(1));
        assert!(!p.contains(&udp(2).key()));
        assert_eq!(p.expire(start + PROVISIONAL_WINDOW * 2), None, "once");
    }

    #[test]
    fn a_withdrawn_claim_is_remembered_once_within_the_window() {
        let start = Instant::now();
        let mut p = Provisional::after_start([udp(1).key()], start + PROVISIONAL_WINDOW);
        assert!(!p.withdraw(&udp(2).key()), "never ours");
        assert!(!p.take_withdrawn(&udp(1).key()), "not withdrawn yet");
        assert!(p.withdraw(&udp(1).key()));
        assert!(!p.contains(&udp(1).key()));
        assert!(!p.withdraw(&udp(1).key()), "once");
        assert!(p.take_withdrawn(&udp(1).key()));
        assert!(!p.take_withdrawn(&udp(1).key()), "asked once");
        let mut q = Provisional::after_start([udp(3).key()], start + PROVISIONAL_WINDOW);
        assert!(q.withdraw(&udp(3).key()));
        assert_eq!(q.expire(start + PROVISIONAL_WINDOW), Some(0));
        assert!(
            !q.take_withdrawn(&udp(3).key()),
            "forgotten with the window"
        );
    }

    #[test]
    fn nothing_primed_nothing_provisional() {
        let mut p = Provisional::after_start([], Instant::now());
        assert_eq!(p.expire(Instant::now() + PROVISIONAL_WINDOW), None);
        let mut q = Provisional::after_start([udp(1).key()], Instant::now());
        q.confirm_all();
        assert!(!q.contains(&udp(1).key()));
    }
}
