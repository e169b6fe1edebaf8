//! The systemd watchdog: with `WATCHDOG_USEC` set (and `WATCHDOG_PID`, if
//! set, ours), `WATCHDOG=1` goes to the service manager at half the
//! interval, sent from the owner's loop itself so that a stuck loop stops
//! feeding it and systemd restarts the daemon.
//!
//! Owns: reading the interval and deciding when the next ping is due.
//! Must not: ping from any other thread or timer than the owner's loop.

use std::time::{Duration, Instant};

/// Pings less often than this are never planned (a tiny WATCHDOG_USEC
/// would otherwise spin the loop).
const MIN_PERIOD: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub(super) struct Watchdog {
    period: Duration,
    next: Instant,
}

impl Watchdog {
    /// The watchdog systemd asks for in our environment, if any.
    pub fn from_env(now: Instant) -> Option<Watchdog> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let period = ping_period(usec.as_deref(), pid.as_deref(), std::process::id())?;
        Some(Watchdog { period, next: now })
    }

    /// When the next ping is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Whether a ping is due at `now`; if so the next is planned a period
    /// from now.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.period;
        true
    }

    /// Ping if due.
    pub fn feed(&mut self, now: Instant) {
        if self.due(now) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }
}

/// Half the interval `WATCHDOG_USEC` names, as sd_watchdog_enabled(3)
/// reads it: none when unset, malformed or 0, or when `WATCHDOG_PID` names
/// another process.
fn ping_period(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some((Duration::from_micros(usec) / 2).max(MIN_PERIOD))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_interval_for_this_process_only() {
        assert_eq!(
            ping_period(Some("20000000"), None, 7),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            ping_period(Some("3000000"), Some("7"), 7),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(ping_period(Some("3000000"), Some("8"), 7), None);
        assert_eq!(ping_period(Some("3000000"), Some("x"), 7), None);
        assert_eq!(ping_period(None, Some("7"), 7), None);
        assert_eq!(ping_period(Some("0"), None, 7), None);
        assert_eq!(ping_period(Some("soon"), None, 7), None);
        assert_eq!(ping_period(Some("2"), None, 7), Some(MIN_PERIOD));
    }

    #[test]
    fn a_ping_is_due_once_per_period() {
        let start = Instant::now();
        let mut w = Watchdog {
            period: Duration::from_secs(5),
            next: start,
        };
        assert!(w.due(start), "the first ping goes at once");
        assert!(!w.due(start + Duration::from_secs(1)));
        assert_eq!(w.next(), start + Duration::from_secs(5));
        assert!(w.due(start + Duration::from_secs(5)));
        assert!(!w.due(start + Duration::from_secs(9)));
        // A loop that was stuck pings once when it comes back, not a burst.
        assert!(w.due(start + Duration::from_secs(60)));
        assert!(!w.due(start + Duration::from_secs(61)));
    }
}
