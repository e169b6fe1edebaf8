//! The conntrackd link's health from the daemon's counters, on a node of
//! a cluster moving from conntrackd: is the conntrackd peer heard, did
//! FTFW's handshake complete, are its datagrams refused or its messages
//! lost now.
//!
//! Owns: the `conntrackd_link` decision. Must not: talk to the daemon
//! (`doctor::read` does).

use super::Settings;
use crate::doctor::facts::{CdLinkFacts, DaemonState};
use crate::doctor::finding::{Finding, Severity};

/// `None` when the daemon is not running or has no conntrackd link.
pub fn conntrackd_link(d: &DaemonState, s: &Settings) -> Option<Finding> {
    let DaemonState::Running { first, later } = d else {
        return None;
    };
    let b = later.conntrackd_link.as_ref()?;
    let a = first.conntrackd_link.as_ref().unwrap_or(b);
    Some(judge(a, b, later.uptime_s, s.peer_timeout_ms))
}

fn judge(a: &CdLinkFacts, b: &CdLinkFacts, uptime_s: u64, peer_timeout_ms: u64) -> Finding {
    let heard = b.last_heard_ms_ago.map_or_else(
        || "never heard".to_string(),
        |ms| format!("last heard {:.1} s ago", ms as f64 / 1000.0),
    );
    let seen = format!(
        "mode {}, {heard}, handshake {}, refused {} (+{}), lost {} (+{})",
        b.mode,
        if b.handshake_done { "done" } else { "not done" },
        b.refused,
        b.refused.saturating_sub(a.refused),
        b.lost,
        b.lost.saturating_sub(a.lost)
    );
    // conntrackd sends an ALIVE every second in FTFW and NOTRACK; in
    // ALARM it sends only refreshes of the flows it has.
    let silent = b.last_heard_ms_ago.is_none_or(|ms| ms > peer_timeout_ms);
    let young = uptime_s.saturating_mul(1000) <= peer_timeout_ms;
    let finding = if b.mode != "alarm" && silent && !young {
        Finding::new(
            "conntrackd_link",
            Severity::Critical,
            "the conntrackd peer is not heard: its flows are not kept up to date, and it does not get ours",
        )
        .fix("check that conntrackd runs on the peer with the same Mode, and its Multicast/UDP block's addresses and port against the [[link]]")
    } else if b.mode == "ftfw" && !b.handshake_done && !silent {
        Finding::new(
            "conntrackd_link",
            Severity::Warning,
            "FTFW's handshake with the conntrackd peer has not completed: it may run another mode",
        )
        .fix("give both sides the same mode: conntrackd's Sync { Mode FTFW } and [sync] mode = \"ftfw\"")
    } else if b.refused > a.refused || b.lost > a.lost {
        Finding::new(
            "conntrackd_link",
            Severity::Warning,
            "the conntrackd peer's datagrams are refused or its messages lost now",
        )
        .fix("ctsyncd -s --json says why (conntrackd_link.malformed_by_reason); check the link's loss and MTU, and that both run conntrackd 1.4's protocol")
    } else if b.mode == "alarm" && silent {
        Finding::new(
            "conntrackd_link",
            Severity::Info,
            "the conntrackd peer has not been heard lately; in ALARM mode it sends only when it has flows to refresh",
        )
    } else {
        Finding::new(
            "conntrackd_link",
            Severity::Ok,
            "the conntrackd peer is heard",
        )
    };
    finding.seen(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::facts::DaemonFacts;

    fn link(mode: &str, heard: Option<u64>, handshake: bool) -> CdLinkFacts {
        CdLinkFacts {
            mode: mode.into(),
            handshake_done: handshake,
            last_heard_ms_ago: heard,
            refused: 0,
            lost: 0,
        }
    }

    fn severity(a: CdLinkFacts, b: CdLinkFacts, uptime_s: u64) -> Severity {
        judge(&a, &b, uptime_s, 5_000).severity
    }

    #[test]
    fn a_heard_peer_is_ok_a_silent_one_critical_except_in_alarm() {
        let ok = link("ftfw", Some(400), true);
        assert_eq!(severity(ok.clone(), ok, 60), Severity::Ok);
        let gone = link("notrack", Some(9_000), false);
        assert_eq!(severity(gone.clone(), gone, 60), Severity::Critical);
        let never = link("ftfw", None, false);
        assert_eq!(
            severity(never.clone(), never.clone(), 60),
            Severity::Critical
        );
        assert_eq!(severity(never.clone(), never, 3), Severity::Ok, "young");
        let quiet = link("alarm", None, false);
        assert_eq!(severity(quiet.clone(), quiet, 60), Severity::Info);
    }

    #[test]
    fn a_missing_handshake_and_growing_refusals_warn() {
        let half = link("ftfw", Some(100), false);
        assert_eq!(severity(half.clone(), half, 60), Severity::Warning);
        let before = link("ftfw", Some(100), true);
        let mut after = before.clone();
        after.refused = 3;
        assert_eq!(
            severity(before.clone(), after.clone(), 60),
            Severity::Warning
        );
        // Refusals in the past only.
        assert_eq!(severity(after.clone(), after, 60), Severity::Ok);
        let mut lost = before.clone();
        lost.lost = 1;
        assert_eq!(severity(before, lost, 60), Severity::Warning);
    }

    #[test]
    fn without_a_conntrackd_link_or_a_daemon_nothing_is_said() {
        let s = Settings::for_tests();
        let plain = DaemonFacts::default();
        let d = DaemonState::Running {
            first: Box::new(plain.clone()),
            later: Box::new(plain.clone()),
        };
        assert!(conntrackd_link(&d, &s).is_none());
        assert!(conntrackd_link(&DaemonState::NotRunning("x".into()), &s).is_none());
        let mut linked = plain;
        linked.uptime_s = 60;
        linked.conntrackd_link = Some(link("ftfw", Some(100), true));
        let d = DaemonState::Running {
            first: Box::new(linked.clone()),
            later: Box::new(linked),
        };
        assert_eq!(
            conntrackd_link(&d, &s).map(|f| f.severity),
            Some(Severity::Ok)
        );
    }
}
