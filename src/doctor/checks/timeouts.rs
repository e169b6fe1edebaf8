//! Timeouts that fill the table, and timeouts that outlive an upstream
//! balancer's or cloud NIC's idle timeout (the NLB/ENI trap: a reply
//! leaves from an entry the balancer has forgotten and the client drops
//! it).
//!
//! Owns: the `tcp_established_timeout`, `tcp_time_wait`,
//! `upstream_udp_timeout` and `upstream_tcp_timeout` decisions. Must not:
//! read `/proc`.

use crate::doctor::facts::Sysctls;
use crate::doctor::finding::{Finding, Severity};

/// An established timeout this long (a day) keeps idle flows for days.
pub const LONG_ESTABLISHED_S: u64 = 86_400;
/// With the table at least this full, a long established timeout is a
/// warning, not just worth knowing.
pub const LARGE_TABLE_PCT: u64 = 50;
/// The established timeout advised instead (longer than applications'
/// keep-alives).
pub const ADVISED_ESTABLISHED_S: u64 = 1_800;
/// The kernel's TIME_WAIT default; longer only fills the table.
pub const DEFAULT_TIME_WAIT_S: u64 = 120;

/// Days-long ESTABLISHED timeouts with a table that is filling.
pub fn tcp_established(s: &Sysctls) -> Finding {
    let Some(est) = s.tcp_timeout_established else {
        return Finding::new(
            "tcp_established_timeout",
            Severity::Info,
            "not checked: nf_conntrack_tcp_timeout_established is not readable",
        );
    };
    let (count, max) = (s.count.unwrap_or(0), s.max.unwrap_or(0));
    let pct = count.saturating_mul(100).checked_div(max).unwrap_or(0);
    let seen = format!(
        "nf_conntrack_tcp_timeout_established {est} s ({:.1} days); table {pct}% full",
        est as f64 / 86_400.0
    );
    if est < LONG_ESTABLISHED_S {
        return Finding::new(
            "tcp_established_timeout",
            Severity::Ok,
            "established TCP flows expire within a day of silence",
        )
        .seen(seen);
    }
    let severity = if pct >= LARGE_TABLE_PCT {
        Severity::Warning
    } else {
        Severity::Info
    };
    Finding::new(
        "tcp_established_timeout",
        severity,
        "idle established TCP flows stay for days: they fill the table and every node's cache (keep a shorter timeout above the applications' keep-alive interval)",
    )
    .seen(seen)
    .fix(format!(
        "sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established={ADVISED_ESTABLISHED_S}"
    ))
}

/// TIME_WAIT kept longer than the kernel's default.
pub fn tcp_time_wait(s: &Sysctls) -> Finding {
    let Some(tw) = s.tcp_timeout_time_wait else {
        return Finding::new(
            "tcp_time_wait",
            Severity::Info,
            "not checked: nf_conntrack_tcp_timeout_time_wait is not readable",
        );
    };
    let seen = format!("nf_conntrack_tcp_timeout_time_wait {tw} s");
    if tw <= DEFAULT_TIME_WAIT_S {
        return Finding::new("tcp_time_wait", Severity::Ok, "TIME_WAIT expires in time").seen(seen);
    }
    Finding::new(
        "tcp_time_wait",
        Severity::Warning,
        "closed TCP flows linger in TIME_WAIT longer than the kernel's default: they fill the table",
    )
    .seen(seen)
    .fix("sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=30")
}

/// Timeouts that outlive the upstream's idle timeout `upstream_s`; an
/// `info` saying how to check when no upstream is named.
pub fn upstream_idle(s: &Sysctls, upstream_s: Option<u64>) -> Vec<Finding> {
    let Some(up) = upstream_s else {
        return vec![Finding::new(
            "upstream_udp_timeout",
            Severity::Info,
            "not checked: no upstream idle timeout named ([doctor] upstream_idle_timeout_s or --upstream-idle-timeout)",
        )];
    };
    // Below the upstream's, with a margin for the keep-alive's jitter.
    let below = (up * 3 / 4).max(1);
    let mut out = Vec::new();
    let mut udp_ok = Vec::new();
    for (check, name, value) in [
        (
            "upstream_udp_timeout",
            "nf_conntrack_udp_timeout",
            s.udp_timeout,
        ),
        (
            "upstream_udp_timeout",
            "nf_conntrack_udp_timeout_stream",
            s.udp_timeout_stream,
        ),
        (
            "upstream_tcp_timeout",
            "nf_conntrack_tcp_timeout_established",
            s.tcp_timeout_established,
        ),
    ] {
        let Some(v) = value else { continue };
        let seen = format!("{name} {v} s; upstream idle timeout {up} s");
        if v < up {
            if check == "upstream_udp_timeout" {
                udp_ok.push(seen);
            } else {
                out.push(
                    Finding::new(
                        check,
                        Severity::Ok,
                        "TCP entries expire before the upstream forgets them",
                    )
                    .seen(seen),
                );
            }
            continue;
        }
        let summary = if check == "upstream_udp_timeout" {
            "UDP entries outlive the upstream's session: a later request comes through a new session and the reply, sent from the old entry, is dropped by the client"
        } else {
            "established TCP entries outlive the upstream's idle timeout: the balancer or cloud NIC forgets the flow first and later packets of it go nowhere"
        };
        out.push(
            Finding::new(check, Severity::Warning, summary)
                .seen(seen)
                .fix(format!("sysctl -w net.netfilter.{name}={below}")),
        );
    }
    if !udp_ok.is_empty() && !out.iter().any(|f| f.check == "upstream_udp_timeout") {
        out.insert(
            0,
            Finding::new(
                "upstream_udp_timeout",
                Severity::Ok,
                "UDP entries expire before the upstream forgets the session",
            )
            .seen(udp_ok.join("; ")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(est: u64, tw: u64, udp: u64, stream: u64, count: u64) -> Sysctls {
        Sysctls {
            count: Some(count),
            max: Some(1000),
            tcp_timeout_established: Some(est),
            tcp_timeout_time_wait: Some(tw),
            udp_timeout: Some(udp),
            udp_timeout_stream: Some(stream),
            ..Sysctls::default()
        }
    }

    #[test]
    fn established_days_with_a_large_table() {
        assert_eq!(
            tcp_established(&sys(432_000, 120, 30, 120, 600)).severity,
            Severity::Warning
        );
        assert_eq!(
            tcp_established(&sys(432_000, 120, 30, 120, 10)).severity,
            Severity::Info
        );
        assert_eq!(
            tcp_established(&sys(1_800, 120, 30, 120, 990)).severity,
            Severity::Ok
        );
    }

    #[test]
    fn time_wait_beyond_the_default() {
        assert_eq!(
            tcp_time_wait(&sys(1, 120, 30, 120, 0)).severity,
            Severity::Ok
        );
        let f = tcp_time_wait(&sys(1, 600, 30, 120, 0));
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.fix.unwrap().contains("time_wait=30"));
    }

    #[test]
    fn upstream_idle_timeouts() {
        let f = upstream_idle(&sys(432_000, 120, 30, 120, 0), None);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Info);
        // A 20 s balancer: udp 30 s and stream 120 s outlive it.
        let f = upstream_idle(&sys(432_000, 120, 30, 120, 0), Some(20));
        let bad: Vec<_> = f
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .collect();
        assert_eq!(bad.len(), 3, "{f:?}");
        assert!(bad[1]
            .fix
            .as_deref()
            .unwrap()
            .ends_with("nf_conntrack_udp_timeout_stream=15"));
        assert_eq!(bad[2].check, "upstream_tcp_timeout");
        // Below it: nothing fires.
        let f = upstream_idle(&sys(10, 120, 10, 15, 0), Some(20));
        assert!(f.iter().all(|f| f.severity == Severity::Ok), "{f:?}");
        assert_eq!(
            f.iter()
                .filter(|f| f.check == "upstream_udp_timeout")
                .count(),
            1
        );
    }
}
