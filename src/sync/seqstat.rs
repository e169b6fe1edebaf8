//! Sequence numbers in the best-effort modes (NOTRACK, ALARM): data is
//! applied as it arrives, and the numbers feed the loss statistics. A
//! datagram behind the newest one is late: applied only if it is at most
//! `LATE_SEQS` behind, arrives within `LATE_MS` of the newest, and no
//! control datagram has since said the sender went past it (a keep-alive
//! or digest carries the last number sent: what is missing then is lost,
//! and the digest repairs it). Later ones would roll flows back to a past
//! state (a datagram the network lost, replayed by someone who recorded
//! it, would do just that), so they are dropped.
//!
//! Owns: the highest sequence number seen from one sender's epoch and when
//! it arrived. Must not: hold or reorder datagrams, or schedule anything.

/// How far behind the newest datagram a late one may be.
pub(crate) const LATE_SEQS: u32 = 64;
/// How long after the newest datagram a late one may arrive.
pub(crate) const LATE_MS: u64 = 1000;

#[derive(Clone, Copy, Debug)]
pub(crate) struct SeqCounter {
    /// The highest sequence number known to have been sent.
    highest: u32,
    /// When a data datagram last raised `highest`.
    highest_at_ms: u64,
    /// Numbers up to this one are never applied late: a control datagram
    /// said they were sent before it.
    floor: u32,
}

/// What to do with an arriving data datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Apply it; `lost` numbers before it are now known missing.
    Apply { lost: u64 },
    /// Too far behind the newest, or too long after it: drop it.
    TooLate,
}

impl SeqCounter {
    /// A stream first seen at `seq` (a data datagram's own number, or a
    /// control datagram's last-sent number).
    pub fn new(seq: u32, data: bool, now_ms: u64) -> SeqCounter {
        let highest = if data { seq.saturating_sub(1) } else { seq };
        SeqCounter {
            highest,
            highest_at_ms: now_ms,
            floor: highest,
        }
    }

    /// A data datagram numbered `seq` arrived at `now_ms`: apply it (and
    /// how many numbers it reveals as missing; late ones arriving after
    /// are not subtracted), or drop it as too late.
    pub fn on_data(&mut self, seq: u32, now_ms: u64) -> Arrival {
        if seq <= self.highest {
            let behind = self.highest - seq;
            let after = now_ms.saturating_sub(self.highest_at_ms);
            return if seq > self.floor && behind < LATE_SEQS && after <= LATE_MS {
                Arrival::Apply { lost: 0 }
            } else {
                Arrival::TooLate
            };
        }
        let lost = u64::from(seq - self.highest - 1);
        self.highest = seq;
        self.highest_at_ms = now_ms;
        Arrival::Apply { lost }
    }

    /// A control datagram says the last data datagram sent was `last`.
    pub fn on_control(&mut self, last: u32) -> u64 {
        self.floor = self.floor.max(last);
        if last <= self.highest {
            return 0;
        }
        let lost = u64::from(last - self.highest);
        self.highest = last;
        lost
    }

    /// The number after the highest seen.
    pub fn next(&self) -> u32 {
        self.highest.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(a: Arrival) -> u64 {
        match a {
            Arrival::Apply { lost } => lost,
            Arrival::TooLate => panic!("dropped as too late"),
        }
    }

    #[test]
    fn counts_gaps_and_tail_loss_once() {
        let mut s = SeqCounter::new(5, true, 0);
        assert_eq!(lost(s.on_data(5, 0)), 0);
        assert_eq!(lost(s.on_data(8, 0)), 2);
        assert_eq!(lost(s.on_data(7, 0)), 0, "late, already counted");
        assert_eq!(lost(s.on_data(8, 0)), 0, "duplicate");
        assert_eq!(s.on_control(8), 0);
        assert_eq!(s.on_control(10), 2);
        assert_eq!(
            s.on_data(10, 0),
            Arrival::TooLate,
            "a keep-alive said 10 was sent before it: lost, and too late now"
        );
        assert_eq!(s.next(), 11);
        let mut c = SeqCounter::new(3, false, 0);
        assert_eq!(lost(c.on_data(4, 0)), 0);
    }

    #[test]
    fn data_far_behind_or_long_after_the_newest_is_too_late() {
        let mut s = SeqCounter::new(1, true, 0);
        assert_eq!(lost(s.on_data(100, 10)), 99);
        assert_eq!(lost(s.on_data(100 - LATE_SEQS + 1, 10)), 0, "just in reach");
        assert_eq!(s.on_data(100 - LATE_SEQS, 10), Arrival::TooLate);
        assert_eq!(lost(s.on_data(99, 10 + LATE_MS)), 0);
        assert_eq!(
            s.on_data(98, 11 + LATE_MS),
            Arrival::TooLate,
            "a replay, later"
        );
        assert_eq!(lost(s.on_data(101, 5000)), 0, "new data is always taken");
        assert_eq!(lost(s.on_data(99, 5000)), 0);
        // A keep-alive says 105 was the last sent: 102..=105 are lost, and
        // arriving later they are too late, even at once.
        assert_eq!(s.on_control(105), 4);
        assert_eq!(s.on_data(104, 5000), Arrival::TooLate);
        assert_eq!(s.on_data(100, 5000), Arrival::TooLate);
        assert_eq!(lost(s.on_data(106, 5001)), 0);
    }
}
