//! Timeouts that fill the table, and UDP timeouts that outlive an
//! upstream balancer's or cloud NIC's UDP idle timeout (the NLB/ENI trap:
//! a reply leaves from an entry the balancer has forgotten and the client
//! drops it).
//!
//! Owns: the `tcp_established_timeout`, `tcp_time_wait` and
//! `upstream_udp_timeout` decisions. Must not: read `/proc`.
//!
//! There is deliberately no TCP counterpart of `upstream_udp_timeout`.
//! A TCP flow the balancer forgot while conntrack still holds it is not
//! black-holed: its next packet is refused (an RST from the balancer, or
//! the client's retransmits time out) and the client reconnects, a new
//! flow that both sides track. Keep-alives below the balancer's idle
//! timeout are the cure, in the application. Lowering the global
//! `nf_conntrack_tcp_timeout_established` to the balancer's TCP idle
//! timeout (NLB: 350 s) would instead cut every idle TCP session through
//! the firewall, also those that never cross the balancer, and contradict
//! `tcp_established_timeout`. The UDP case has no such recovery: the
//! reply goes out from the old entry, the client drops it, silently.

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

/// UDP timeouts that outlive the upstream's UDP idle timeout
/// `upstream_s`; an `info` saying how to check when no upstream is named.
pub fn upstream_idle(s: &Sysctls, upstream_s: Option<u64>) -> Vec<Finding> {
    let Some(up) = upstream_s else {
        return vec![Finding::new(
            "upstream_udp_timeout",
            Severity::Info,
            "not checked: no upstream UDP idle timeout named ([doctor] upstream_idle_timeout_s or --upstream-idle-timeout)",
        )];
    };
    // Below the upstream's, with a margin for the keep-alive's jitter.
    let below = (up * 3 / 4).max(1);
    let mut out = Vec::new();
    let mut ok = Vec::new();
    for (name, value) in [
        ("nf_conntrack_udp_timeout", s.udp_timeout),
        ("nf_conntrack_udp_timeout_stream", s.udp_timeout_stream),
    ] {
        let Some(v) = value else { continue };
        let seen = format!("{name} {v} s; upstream UDP idle timeout {up} s");
        if v < up {
            ok.push(seen);
            continue;
        }
        out.push(
            Finding::new(
                "upstream_udp_timeout",
                Severity::Warning,
                "UDP entries outlive the upstream's session: a later request comes through a new session and the reply, sent from the old entry, is dropped by the client",
            )
            .seen(seen)
            .fix(format!("sysctl -w net.netfilter.{name}={below}")),
        );
    }
    if out.is_empty() {
        out.push(if ok.is_empty() {
            Finding::new(
                "upstream_udp_timeout",
                Severity::Info,
                "not checked: nf_conntrack_udp_timeout and nf_conntrack_udp_timeout_stream are not readable",
            )
        } else {
            Finding::new(
                "upstream_udp_timeout",
                Severity::Ok,
                "UDP entries expire before the upstream forgets the session",
            )
            .seen(ok.join("; "))
        });
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
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f
            .iter()
            .all(|f| f.severity == Severity::Warning && f.check == "upstream_udp_timeout"));
        assert!(f[0]
            .fix
            .as_deref()
            .unwrap()
            .ends_with("nf_conntrack_udp_timeout=15"));
        assert!(f[1]
            .fix
            .as_deref()
            .unwrap()
            .ends_with("nf_conntrack_udp_timeout_stream=15"));
        // Below it: one ok row for both.
        let f = upstream_idle(&sys(10, 120, 10, 15, 0), Some(20));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            (f[0].check, f[0].severity),
            ("upstream_udp_timeout", Severity::Ok)
        );
        // Neither readable: said so, not "ok".
        let f = upstream_idle(&Sysctls::default(), Some(20));
        assert_eq!(f[0].severity, Severity::Info);
    }

    /// An NLB's TCP idle timeout (350 s) given with the kernel's 5-day
    /// established timeout: nothing about TCP comes out, and no finding
    /// anywhere advises lowering the global established timeout below
    /// what `tcp_established_timeout` advises.
    #[test]
    fn no_tcp_advice_from_the_upstream_timeout() {
        let s = sys(432_000, 120, 30, 120, 0);
        let f = upstream_idle(&s, Some(350));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Ok);
        for f in upstream_idle(&s, Some(350))
            .iter()
            .chain(upstream_idle(&s, Some(20)).iter())
        {
            assert_ne!(f.check, "upstream_tcp_timeout");
            assert!(
                !f.fix
                    .as_deref()
                    .unwrap_or_default()
                    .contains("tcp_timeout_established"),
                "{f:?}"
            );
        }
    }
}
