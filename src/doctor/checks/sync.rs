//! Sync health from the daemon's counters: is it running, is each peer
//! heard, are the links up, are drops growing, is the resend window
//! stuck, and does a peer's mode or MTU differ from ours.
//!
//! Owns: the `daemon`, `sync_peers`, `sync_links`, `sync_drops`,
//! `sync_window`, `peer_mode` and `peer_mtu` decisions. Must not: talk to
//! the daemon (`doctor::read` does).

use super::Settings;
use crate::config::SyncMode;
use crate::doctor::facts::{DaemonFacts, DaemonState};
use crate::doctor::finding::{Finding, Severity};

/// `sync_window`: the resend window this full (percent) means a peer is
/// not acknowledging.
pub const WINDOW_FULL_PCT: u64 = 90;

pub fn sync_checks(d: &DaemonState, s: &Settings) -> Vec<Finding> {
    let (first, later) = match d {
        DaemonState::NotRunning(reason) => {
            return vec![Finding::new(
                "daemon",
                Severity::Warning,
                "ctsyncd is not running: the sync checks were skipped",
            )
            .seen(reason.clone())
            .fix("systemctl start ctsyncd (or ctsyncd -C FILE -d)")]
        }
        DaemonState::Unreadable(reason) => {
            return vec![Finding::new(
                "daemon",
                Severity::Info,
                "ctsyncd answers, but not with the counters doctor reads: the sync checks were skipped (run the doctor of the same version as the daemon)",
            )
            .seen(reason.clone())]
        }
        DaemonState::Running { first, later } => (first.as_ref(), later.as_ref()),
    };
    let mut out = vec![Finding::new("daemon", Severity::Ok, "ctsyncd answers")
        .seen(format!("up {} s", later.uptime_s))];
    if later.links.is_empty() && later.conntrackd_link.is_some() {
        // A node mid-migration whose only link speaks conntrackd's
        // protocol: no ctsync peer is expected.
        out.push(
            Finding::new(
                "sync_peers",
                Severity::Ok,
                "no link speaks ctsync's protocol: the conntrackd link is judged apart (conntrackd_link)",
            )
            .seen("0 ctsync links, 1 conntrackd link"),
        );
    } else {
        out.extend(peers(later));
        out.push(links(later));
    }
    out.push(drops(first, later));
    out.push(window(later));
    out.extend(peer_mode(later, s));
    out.extend(peer_mtu(later, s));
    out
}

fn peers(d: &DaemonFacts) -> Vec<Finding> {
    if d.peers.is_empty() {
        return vec![Finding::new(
            "sync_peers",
            Severity::Critical,
            "no peer has been heard since ctsyncd started: nothing is replicated",
        )
        .seen(format!("up {} s, 0 peers", d.uptime_s))
        .fix("start ctsyncd on the peer; check the [[link]] addresses, port and firewall rules for the sync traffic")];
    }
    d.peers
        .iter()
        .map(|p| {
            let seen = format!(
                "peer node {}: last heard {:.1} s ago, {} flows, {} datagrams held ahead of a gap",
                p.node_id,
                p.last_heard_ms_ago as f64 / 1000.0,
                p.flows,
                p.reordered
            );
            if p.alive {
                Finding::new("sync_peers", Severity::Ok, format!("peer node {} is heard", p.node_id))
                    .seen(seen)
            } else {
                Finding::new(
                    "sync_peers",
                    Severity::Critical,
                    format!("peer node {} is not heard: its flows are not kept up to date", p.node_id),
                )
                .seen(seen)
                .fix("check that ctsyncd runs on the peer and that the sync link carries its datagrams")
            }
        })
        .collect()
}

fn links(d: &DaemonFacts) -> Finding {
    let down: Vec<&str> = d
        .links
        .iter()
        .filter(|l| !l.up)
        .map(|l| l.device.as_str())
        .collect();
    let seen = format!(
        "{} links, down: {}",
        d.links.len(),
        if down.is_empty() {
            "none".into()
        } else {
            down.join(", ")
        }
    );
    if down.is_empty() {
        return Finding::new(
            "sync_links",
            Severity::Ok,
            "every sync link carries datagrams",
        )
        .seen(seen);
    }
    let severity = if down.len() == d.links.len() {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Finding::new(
        "sync_links",
        severity,
        "sync links without recent datagrams (or whose interface is down)",
    )
    .seen(seen)
    .fix("check the interfaces (ip link) and that the peer sends on them")
}

fn drops(first: &DaemonFacts, later: &DaemonFacts) -> Finding {
    let rows = [
        ("datagrams dropped", first.dropped, later.dropped),
        ("sequence numbers lost", first.lost, later.lost),
        ("send errors", first.send_errors, later.send_errors),
        (
            "backlog items dropped",
            first.backlog_dropped_items,
            later.backlog_dropped_items,
        ),
    ];
    let seen = rows
        .iter()
        .map(|(n, a, b)| format!("{n} {b} (+{})", b.saturating_sub(*a)))
        .collect::<Vec<_>>()
        .join(", ");
    if rows.iter().any(|(_, a, b)| b > a) {
        return Finding::new(
            "sync_drops",
            Severity::Warning,
            "sync traffic is being lost or refused now",
        )
        .seen(seen)
        .fix("ctsyncd -s network and -s link say where; check the link's loss, MTU and keys");
    }
    if rows.iter().any(|(_, _, b)| *b > 0) {
        return Finding::new(
            "sync_drops",
            Severity::Info,
            "sync traffic was lost or refused in the past; not now",
        )
        .seen(seen);
    }
    Finding::new(
        "sync_drops",
        Severity::Ok,
        "no sync datagram lost or refused",
    )
    .seen(seen)
}

fn window(d: &DaemonFacts) -> Finding {
    let seen = format!("resend window {} of {}", d.resend_window, d.window);
    if d.window > 0
        && d.resend_window.saturating_mul(100) >= d.window.saturating_mul(WINDOW_FULL_PCT)
    {
        return Finding::new(
            "sync_window",
            Severity::Warning,
            "the resend window is nearly full: a peer is not acknowledging (or the link is too slow)",
        )
        .seen(seen)
        .fix("check the peers' mode (peer_mode) and the link; a larger [sync] window only helps a slow link");
    }
    Finding::new("sync_window", Severity::Ok, "the resend window has room").seen(seen)
}

/// FTFW nodes acknowledge; NOTRACK and ALARM nodes never do. A peer that
/// acknowledges while we run another mode, or that never acknowledges the
/// data we keep re-sending, runs another mode than ours.
fn peer_mode(d: &DaemonFacts, s: &Settings) -> Vec<Finding> {
    let ours = mode_name(s.mode);
    d.peers
        .iter()
        .map(|p| {
            let seen = format!(
                "this node runs {ours}; peer node {} sent {} acknowledgements; we retransmitted {} datagrams",
                p.node_id, p.acks_nacks, d.retransmits
            );
            let fix = "[sync] mode must be the same on every node";
            if s.mode != SyncMode::Ftfw && p.acks_nacks > 0 {
                Finding::new(
                    "peer_mode",
                    Severity::Critical,
                    format!("peer node {} runs ftfw (it acknowledges), this node {ours}", p.node_id),
                )
                .seen(seen)
                .fix(fix)
            } else if s.mode == SyncMode::Ftfw && p.alive && p.acks_nacks == 0 && d.retransmits > 0 {
                Finding::new(
                    "peer_mode",
                    Severity::Critical,
                    format!(
                        "peer node {} never acknowledges what this ftfw node re-sends: it runs notrack or alarm",
                        p.node_id
                    ),
                )
                .seen(seen)
                .fix(fix)
            } else {
                Finding::new("peer_mode", Severity::Ok, format!("peer node {} behaves as a {ours} node", p.node_id))
                    .seen(seen)
            }
        })
        .collect()
}

fn mode_name(m: SyncMode) -> &'static str {
    match m {
        SyncMode::Ftfw => "ftfw",
        SyncMode::Notrack => "notrack",
        SyncMode::Alarm => "alarm",
    }
}

/// A peer with a larger `sync.mtu` sends datagrams larger than ours: read,
/// but fragmented, or lost where the path's MTU is ours.
fn peer_mtu(d: &DaemonFacts, s: &Settings) -> Vec<Finding> {
    d.peers
        .iter()
        .map(|p| {
            let seen = format!(
                "peer node {}: largest datagram {} bytes, {} over our own size of {} (sync.mtu {})",
                p.node_id, p.largest_datagram, p.oversized, s.max_payload, s.mtu
            );
            if p.oversized > 0 {
                Finding::new(
                    "peer_mtu",
                    Severity::Warning,
                    format!(
                        "peer node {} sends datagrams larger than this node's: they fragment, or are lost if the path's MTU is this node's",
                        p.node_id
                    ),
                )
                .seen(seen)
                .fix(format!("sync.mtu must be the same on every node (this node: {})", s.mtu))
            } else {
                Finding::new("peer_mtu", Severity::Ok, format!("peer node {}'s datagrams fit", p.node_id)).seen(seen)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::facts::{LinkFacts, PeerFacts};

    fn set(mode: SyncMode) -> Settings {
        Settings {
            mode,
            ..Settings::for_tests()
        }
    }

    fn peer(alive: bool) -> PeerFacts {
        PeerFacts {
            node_id: 2,
            alive,
            last_heard_ms_ago: if alive { 100 } else { 30_000 },
            acks_nacks: 5,
            largest_datagram: 1000,
            ..PeerFacts::default()
        }
    }

    fn healthy() -> DaemonFacts {
        DaemonFacts {
            uptime_s: 100,
            peers: vec![peer(true)],
            links: vec![LinkFacts {
                device: "sync0".into(),
                up: true,
            }],
            window: 100,
            ..DaemonFacts::default()
        }
    }

    fn run(first: DaemonFacts, later: DaemonFacts, mode: SyncMode) -> Vec<Finding> {
        let d = DaemonState::Running {
            first: Box::new(first),
            later: Box::new(later),
        };
        sync_checks(&d, &set(mode))
    }

    fn worst(f: &[Finding], check: &str) -> Severity {
        f.iter()
            .filter(|f| f.check == check)
            .map(|f| f.severity)
            .max()
            .unwrap_or_else(|| panic!("no {check} finding in {f:?}"))
    }

    #[test]
    fn a_healthy_pair_is_all_ok() {
        let f = run(healthy(), healthy(), SyncMode::Ftfw);
        assert!(f.iter().all(|f| f.severity == Severity::Ok), "{f:?}");
        for c in [
            "daemon",
            "sync_peers",
            "sync_links",
            "sync_drops",
            "sync_window",
            "peer_mode",
            "peer_mtu",
        ] {
            worst(&f, c);
        }
    }

    #[test]
    fn not_running_is_one_warning() {
        let f = sync_checks(
            &DaemonState::NotRunning("refused".into()),
            &set(SyncMode::Ftfw),
        );
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].check, f[0].severity), ("daemon", Severity::Warning));
    }

    /// A daemon whose counters doctor cannot read is said so: no sync
    /// finding is made from zeros (no peer would be a critical).
    #[test]
    fn unreadable_counters_are_one_info() {
        let f = sync_checks(
            &DaemonState::Unreadable("ctsyncd -s --json lacks kernel.events_received".into()),
            &set(SyncMode::Ftfw),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].check, f[0].severity), ("daemon", Severity::Info));
        assert!(f[0].seen.contains("kernel.events_received"));
    }

    #[test]
    fn silent_peers_down_links_and_growing_drops() {
        let mut bad = healthy();
        bad.peers = vec![peer(false)];
        bad.links[0].up = false;
        bad.lost = 4;
        let f = run(healthy(), bad.clone(), SyncMode::Ftfw);
        assert_eq!(worst(&f, "sync_peers"), Severity::Critical);
        assert_eq!(worst(&f, "sync_links"), Severity::Critical);
        assert_eq!(worst(&f, "sync_drops"), Severity::Warning);
        // Old drops only: info.
        let f = run(bad.clone(), bad, SyncMode::Ftfw);
        assert_eq!(worst(&f, "sync_drops"), Severity::Info);
        let mut none = healthy();
        none.peers.clear();
        assert_eq!(
            worst(&run(healthy(), none, SyncMode::Ftfw), "sync_peers"),
            Severity::Critical
        );
    }

    /// A node whose only link speaks conntrackd's protocol expects no
    /// ctsync peer; with a ctsync link beside it, a silent ctsync peer is
    /// still critical.
    #[test]
    fn a_conntrackd_link_alone_expects_no_ctsync_peer() {
        let mut cd_only = healthy();
        cd_only.peers.clear();
        cd_only.links.clear();
        cd_only.conntrackd_link = Some(crate::doctor::facts::CdLinkFacts::default());
        let f = run(cd_only.clone(), cd_only.clone(), SyncMode::Ftfw);
        assert_eq!(worst(&f, "sync_peers"), Severity::Ok);
        assert!(f.iter().all(|f| f.check != "sync_links"), "{f:?}");
        let mut both = healthy();
        both.peers.clear();
        both.conntrackd_link = cd_only.conntrackd_link;
        let f = run(both.clone(), both, SyncMode::Ftfw);
        assert_eq!(worst(&f, "sync_peers"), Severity::Critical);
    }

    #[test]
    fn a_full_window_and_mismatched_peers() {
        let mut d = healthy();
        d.resend_window = 95;
        assert_eq!(
            worst(&run(healthy(), d, SyncMode::Ftfw), "sync_window"),
            Severity::Warning
        );
        // An acknowledging peer of a notrack node runs ftfw.
        assert_eq!(
            worst(&run(healthy(), healthy(), SyncMode::Notrack), "peer_mode"),
            Severity::Critical
        );
        // A peer that never acknowledges what we re-send runs notrack.
        let mut d = healthy();
        d.peers[0].acks_nacks = 0;
        d.retransmits = 3;
        assert_eq!(
            worst(&run(healthy(), d.clone(), SyncMode::Ftfw), "peer_mode"),
            Severity::Critical
        );
        // Nothing re-sent: nothing to tell.
        d.retransmits = 0;
        assert_eq!(
            worst(&run(healthy(), d, SyncMode::Ftfw), "peer_mode"),
            Severity::Ok
        );
        let mut d = healthy();
        d.peers[0].oversized = 2;
        d.peers[0].largest_datagram = 8000;
        let f = run(healthy(), d, SyncMode::Ftfw);
        assert_eq!(worst(&f, "peer_mtu"), Severity::Warning);
    }
}
