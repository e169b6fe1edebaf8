//! Kernel settings sync depends on: event delivery, and the TCP tracking
//! sysctls that decide what survives a failover.
//!
//! Owns: the `events`, `events_arriving`, `tcp_loose` and `tcp_be_liberal`
//! decisions. Must not: read `/proc` or the daemon.

use super::Settings;
use crate::doctor::facts::{DaemonState, Sysctls};
use crate::doctor::finding::{Finding, Severity};

/// `events_arriving`: a daemon up this long with flows in the table and
/// not one event received is not being told about changes.
pub const EVENTS_GRACE_S: u64 = 60;

/// In this namespace; `[kernel] enable_events = true` also sets it when
/// ctsyncd starts.
const EVENTS_FIX: &str = "sysctl -w net.netfilter.nf_conntrack_events=1";

/// `nf_conntrack_events`: 1 delivers every event; 2 (the newer kernels'
/// default) only for flows created while someone listens; 0 none.
pub fn events(s: &Sysctls, set: &Settings, d: &DaemonState) -> Finding {
    let Some(v) = s.events else {
        return Finding::new(
            "events",
            Severity::Info,
            "not checked: net.netfilter.nf_conntrack_events is not readable",
        );
    };
    let running = !matches!(d, DaemonState::NotRunning(_));
    let seen = format!(
        "nf_conntrack_events {v}; ctsyncd {}; [kernel] enable_events = {}",
        if running { "running" } else { "not running" },
        set.enable_events
    );
    // The daemon sets 1 at start when enable_events is on: until then (it
    // is not running) a 0 or 2 is expected, and says less.
    let will_fix = set.enable_events && !running;
    let (severity, summary) = match v {
        1 => return Finding::new("events", Severity::Ok, "events are delivered").seen(seen),
        0 if will_fix => (
            Severity::Warning,
            "events are off (0): nothing is reported until ctsyncd starts and turns them on",
        ),
        0 => (
            Severity::Critical,
            "events are off (0): the kernel reports no change, sync only sees periodic re-reads",
        ),
        2 if will_fix => (
            Severity::Info,
            "events on demand (2): ctsyncd sets 1 when it starts; flows created before then report nothing (the periodic re-read finds them)",
        ),
        2 => (
            Severity::Warning,
            "events on demand (2): flows created while nobody listened never report their updates or their end",
        ),
        _ => (Severity::Warning, "nf_conntrack_events has an unknown value"),
    };
    Finding::new("events", severity, summary)
        .seen(seen)
        .fix(EVENTS_FIX)
}

/// Whether events reach the running daemon.
pub fn events_arriving(s: &Sysctls, d: &DaemonState) -> Option<Finding> {
    let DaemonState::Running { first, later } = d else {
        return None;
    };
    let count = s.count.unwrap_or(0);
    let seen = format!(
        "ctsyncd up {} s, {} kernel events received ({} overruns); {count} flows in the table",
        later.uptime_s, later.events_received, later.overruns
    );
    if later.overruns > first.overruns {
        return Some(
            Finding::new(
                "events_arriving",
                Severity::Warning,
                "the daemon's event socket is overrunning now (each costs a table re-read)",
            )
            .seen(seen)
            .fix("raise [kernel] netlink_buffer_max (and netlink_buffer)"),
        );
    }
    if later.events_received == 0 && later.uptime_s >= EVENTS_GRACE_S && count > 0 {
        return Some(
            Finding::new(
                "events_arriving",
                Severity::Warning,
                "no kernel event has reached the daemon although the table holds flows",
            )
            .seen(seen)
            .fix(EVENTS_FIX),
        );
    }
    Some(
        Finding::new(
            "events_arriving",
            Severity::Ok,
            "events reach the daemon (or it is young)",
        )
        .seen(seen),
    )
}

/// `nf_conntrack_tcp_loose`: 0 means the kernel will not pick up an
/// established TCP flow from the middle.
pub fn tcp_loose(s: &Sysctls) -> Finding {
    match s.tcp_loose {
        None => Finding::new(
            "tcp_loose",
            Severity::Info,
            "not checked: net.netfilter.nf_conntrack_tcp_loose is not readable",
        ),
        Some(0) => Finding::new(
            "tcp_loose",
            Severity::Warning,
            "mid-stream pickup is off: after a failover, TCP flows not synced in time are INVALID on the new primary and dropped",
        )
        .seen("nf_conntrack_tcp_loose 0")
        .fix("sysctl -w net.netfilter.nf_conntrack_tcp_loose=1"),
        Some(v) => Finding::new(
            "tcp_loose",
            Severity::Ok,
            "mid-stream pickup is on (it also hides missing state in a failover test)",
        )
        .seen(format!("nf_conntrack_tcp_loose {v}")),
    }
}

/// `nf_conntrack_tcp_be_liberal` against `[kernel] tcp_window_tracking`:
/// committed flows whose window the backup only learned from the sync
/// drop out-of-window packets after a failover unless one is liberal.
pub fn tcp_be_liberal(s: &Sysctls, set: &Settings) -> Finding {
    let seen = |v: u64| {
        format!(
            "nf_conntrack_tcp_be_liberal {v}; [kernel] tcp_window_tracking = {}",
            set.tcp_window_tracking
        )
    };
    match s.tcp_be_liberal {
        None => Finding::new(
            "tcp_be_liberal",
            Severity::Info,
            "not checked: net.netfilter.nf_conntrack_tcp_be_liberal is not readable",
        ),
        Some(0) if set.tcp_window_tracking => Finding::new(
            "tcp_be_liberal",
            Severity::Warning,
            "committed flows keep window tracking: packets outside the window the backup learned are dropped after a failover",
        )
        .seen(seen(0))
        .fix("[kernel] tcp_window_tracking = false (committed flows are liberal), or sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1"),
        Some(0) => Finding::new(
            "tcp_be_liberal",
            Severity::Ok,
            "committed flows are liberal (tcp_window_tracking off); others keep window tracking",
        )
        .seen(seen(0)),
        Some(v) => Finding::new(
            "tcp_be_liberal",
            Severity::Info,
            "every TCP flow is liberal: out-of-window packets pass (safe for failover, but it hides missing state in a test)",
        )
        .seen(seen(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::facts::DaemonFacts;

    fn set(enable_events: bool, tcp_window_tracking: bool) -> Settings {
        Settings {
            tcp_window_tracking,
            enable_events,
            ..Settings::for_tests()
        }
    }

    fn sys(f: impl FnOnce(&mut Sysctls)) -> Sysctls {
        let mut s = Sysctls::default();
        f(&mut s);
        s
    }

    fn running(first: DaemonFacts, later: DaemonFacts) -> DaemonState {
        DaemonState::Running {
            first: Box::new(first),
            later: Box::new(later),
        }
    }

    #[test]
    fn events_by_value_and_daemon() {
        let down = DaemonState::NotRunning("no socket".into());
        let up = running(DaemonFacts::default(), DaemonFacts::default());
        let ev = |v| sys(|s| s.events = Some(v));
        assert_eq!(
            events(&ev(1), &set(true, false), &up).severity,
            Severity::Ok
        );
        assert_eq!(
            events(&ev(1), &set(false, false), &down).severity,
            Severity::Ok
        );
        assert_eq!(
            events(&ev(0), &set(true, false), &up).severity,
            Severity::Critical
        );
        assert_eq!(
            events(&ev(0), &set(false, false), &down).severity,
            Severity::Critical
        );
        assert_eq!(
            events(&ev(0), &set(true, false), &down).severity,
            Severity::Warning
        );
        assert_eq!(
            events(&ev(2), &set(true, false), &down).severity,
            Severity::Info
        );
        let f = events(&ev(2), &set(true, false), &up);
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.fix.unwrap().contains("nf_conntrack_events=1"));
        assert_eq!(
            events(&ev(2), &set(false, false), &down).severity,
            Severity::Warning
        );
        assert_eq!(
            events(&Sysctls::default(), &set(true, false), &up).severity,
            Severity::Info
        );
    }

    #[test]
    fn events_arriving_needs_events_after_the_grace() {
        let s = sys(|s| s.count = Some(10));
        let d = |events, uptime, overruns| DaemonFacts {
            events_received: events,
            uptime_s: uptime,
            overruns,
            ..DaemonFacts::default()
        };
        assert_eq!(
            events_arriving(&s, &DaemonState::NotRunning(String::new())),
            None
        );
        let f = events_arriving(&s, &running(d(0, 100, 0), d(0, 101, 0))).unwrap();
        assert_eq!(f.severity, Severity::Warning);
        let f = events_arriving(&s, &running(d(0, 5, 0), d(0, 6, 0))).unwrap();
        assert_eq!(f.severity, Severity::Ok);
        let f = events_arriving(&s, &running(d(9, 100, 0), d(9, 101, 0))).unwrap();
        assert_eq!(f.severity, Severity::Ok);
        let f = events_arriving(&s, &running(d(9, 100, 1), d(9, 101, 2))).unwrap();
        assert_eq!(f.severity, Severity::Warning);
        let empty = sys(|s| s.count = Some(0));
        let f = events_arriving(&empty, &running(d(0, 100, 0), d(0, 101, 0))).unwrap();
        assert_eq!(f.severity, Severity::Ok);
    }

    #[test]
    fn tcp_loose_and_liberal() {
        let loose = |v| sys(|s| s.tcp_loose = Some(v));
        assert_eq!(tcp_loose(&loose(0)).severity, Severity::Warning);
        assert_eq!(tcp_loose(&loose(1)).severity, Severity::Ok);
        let lib = |v| sys(|s| s.tcp_be_liberal = Some(v));
        let f = tcp_be_liberal(&lib(0), &set(true, true));
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.fix.unwrap().contains("tcp_window_tracking = false"));
        assert_eq!(
            tcp_be_liberal(&lib(0), &set(true, false)).severity,
            Severity::Ok
        );
        assert_eq!(
            tcp_be_liberal(&lib(1), &set(true, true)).severity,
            Severity::Info
        );
        assert_eq!(
            tcp_be_liberal(&Sysctls::default(), &set(true, true)).severity,
            Severity::Info
        );
    }
}
