//! The replay window of one sender's epoch: which packet numbers were
//! already accepted, over the last `WINDOW` numbers (RFC 6479's bitmap).
//!
//! Owns: the bitmap and its top. Must not: know about keys, epochs or
//! datagrams. `check` comes before the tag is verified (a cheap refusal of
//! replays), `mark` only after it (a forged number never moves the window).

/// Bits kept (8 KiB of packet numbers, 1 KiB of memory).
const BITS: u64 = 8192;
const WORDS: usize = (BITS / 64) as usize;
/// How far below the highest number accepted a number may still arrive.
pub const WINDOW: u64 = BITS - 64;

/// Why a packet number is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// More than `WINDOW` below the highest number accepted.
    TooOld,
    /// Accepted before.
    Duplicate,
}

#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// The highest packet number accepted.
    top: u64,
    bits: Box<[u64; WORDS]>,
}

impl ReplayWindow {
    /// A window whose first accepted number is `pn`; every number below
    /// it counts as seen (whatever was sent before is never accepted).
    pub fn starting_at(pn: u64) -> ReplayWindow {
        let mut w = ReplayWindow {
            top: pn,
            bits: Box::new([u64::MAX; WORDS]),
        };
        // Numbers above `pn` in its word are not seen yet.
        let above = pn % 64;
        w.bits[Self::word(pn)] = if above == 63 {
            u64::MAX
        } else {
            (1u64 << (above + 1)) - 1
        };
        w
    }

    fn word(pn: u64) -> usize {
        ((pn / 64) % WORDS as u64) as usize
    }

    fn set(&mut self, pn: u64) {
        self.bits[Self::word(pn)] |= 1 << (pn % 64);
    }

    /// May `pn` be accepted (if its tag verifies)?
    pub fn check(&self, pn: u64) -> Result<(), Replay> {
        if pn > self.top {
            return Ok(());
        }
        if self.top - pn >= WINDOW {
            return Err(Replay::TooOld);
        }
        if self.bits[Self::word(pn)] & (1 << (pn % 64)) != 0 {
            return Err(Replay::Duplicate);
        }
        Ok(())
    }

    /// Record `pn` as accepted (after `check` and the tag).
    pub fn mark(&mut self, pn: u64) {
        if pn > self.top {
            let old_word = self.top / 64;
            let new_word = pn / 64;
            let clear = (new_word - old_word).min(WORDS as u64);
            for i in 1..=clear {
                self.bits[Self::word((old_word + i) * 64)] = 0;
            }
            self.top = pn;
        }
        self.set(pn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_and_old_numbers_are_refused_reordering_is_not() {
        let mut w = ReplayWindow::starting_at(100);
        assert_eq!(w.check(100), Err(Replay::Duplicate));
        assert_eq!(w.check(99), Err(Replay::Duplicate), "before the start");
        w.mark(105);
        assert_eq!(w.check(104), Ok(()), "reordered, never seen");
        assert_eq!(w.check(103), Ok(()));
        w.mark(103);
        assert_eq!(w.check(103), Err(Replay::Duplicate));
        w.mark(100 + WINDOW + 10);
        assert_eq!(w.check(105), Err(Replay::TooOld));
        assert_eq!(w.check(100 + WINDOW + 9), Ok(()));
    }

    #[test]
    fn the_edges_of_the_number_space() {
        let mut w = ReplayWindow::starting_at(0);
        assert_eq!(w.check(0), Err(Replay::Duplicate));
        assert_eq!(w.check(1), Ok(()));
        assert_eq!(w.check(63), Ok(()));
        assert_eq!(w.check(64), Ok(()));
        let w63 = ReplayWindow::starting_at(63);
        assert_eq!(
            (w63.check(62), w63.check(64)),
            (Err(Replay::Duplicate), Ok(()))
        );
        w.mark(u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(Replay::Duplicate));
        assert_eq!(w.check(0), Err(Replay::TooOld));
        assert_eq!(w.check(u64::MAX - 1), Ok(()));
        assert_eq!(w.check(u64::MAX - WINDOW), Err(Replay::TooOld));
        assert_eq!(w.check(u64::MAX - WINDOW + 1), Ok(()));
    }

    proptest! {
        /// The window agrees with a set of every number accepted, for
        /// numbers within the window.
        #[test]
        fn agrees_with_a_set(steps in proptest::collection::vec(0u64..20_000, 1..400)) {
            let mut w = ReplayWindow::starting_at(steps[0]);
            let mut seen: std::collections::BTreeSet<u64> = (0..=steps[0]).collect();
            let mut top = steps[0];
            for &pn in &steps[1..] {
                let verdict = w.check(pn);
                if top >= pn && top - pn >= WINDOW {
                    prop_assert_eq!(verdict, Err(Replay::TooOld));
                    continue;
                }
                if seen.contains(&pn) {
                    prop_assert_eq!(verdict, Err(Replay::Duplicate));
                } else {
                    prop_assert_eq!(verdict, Ok(()));
                    w.mark(pn);
                    seen.insert(pn);
                    top = top.max(pn);
                }
            }
        }
    }
}
