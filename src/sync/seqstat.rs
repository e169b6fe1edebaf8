//! Sequence numbers in the best-effort modes (NOTRACK, ALARM): data is
//! applied as it arrives, whatever its number, and the numbers only feed the
//! loss statistics.
//!
//! Owns: the highest sequence number seen from one sender's epoch. Must
//! not: hold, reorder or drop datagrams, or schedule anything.

#[derive(Clone, Copy, Debug)]
pub(crate) struct SeqCounter {
    /// The highest sequence number known to have been sent.
    highest: u32,
}

impl SeqCounter {
    /// A stream first seen at `seq` (a data datagram's own number, or a
    /// control datagram's last-sent number).
    pub fn new(seq: u32, data: bool) -> SeqCounter {
        SeqCounter {
            highest: if data { seq.saturating_sub(1) } else { seq },
        }
    }

    /// A data datagram numbered `seq` arrived; returns how many numbers it
    /// reveals as missing (late ones arriving after are not subtracted).
    pub fn on_data(&mut self, seq: u32) -> u64 {
        if seq <= self.highest {
            return 0;
        }
        let lost = u64::from(seq - self.highest - 1);
        self.highest = seq;
        lost
    }

    /// A control datagram says the last data datagram sent was `last`.
    pub fn on_control(&mut self, last: u32) -> u64 {
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

    #[test]
    fn counts_gaps_and_tail_loss_once() {
        let mut s = SeqCounter::new(5, true);
        assert_eq!(s.on_data(5), 0);
        assert_eq!(s.on_data(8), 2);
        assert_eq!(s.on_data(7), 0, "late, already counted");
        assert_eq!(s.on_data(8), 0, "duplicate");
        assert_eq!(s.on_control(8), 0);
        assert_eq!(s.on_control(10), 2);
        assert_eq!(s.on_data(10), 0);
        assert_eq!(s.next(), 11);
        let mut c = SeqCounter::new(3, false);
        assert_eq!(c.on_data(4), 0);
    }
}
