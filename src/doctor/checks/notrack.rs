//! Traffic that could go untracked: a high rate of new flows, or many
//! short DNS flows in the table. Either costs table space and sync
//! traffic for flows nobody needs after a failover.
//!
//! Owns: the `notrack` decision and the nft line it suggests. Must not:
//! read the table or listen to events (`doctor::read` does).
//!
//! Untracked packets are not NATed and match no `ct state established`
//! accept rule: on a NAT or stateful firewall, untracking forwarded
//! traffic breaks it. So a suggestion is only ever for UDP (never TCP),
//! only for traffic this machine itself serves or asks (`fib daddr type
//! local` on the way in, the output hook on the way out), and says that
//! the input filter then needs `ct state untracked accept`. The rate
//! finding never goes beyond `info`: doctor cannot tell whether the busy
//! port's flows are local.

use crate::doctor::facts::{FlowRate, TableMix};
use crate::doctor::finding::{Finding, Severity};

/// New flows a second from which the rate is worth a look...
pub const RATE_INFO: f64 = 5_000.0;
/// ...and from which it is called very high (still `info`).
pub const RATE_HEAVY: f64 = 20_000.0;
/// DNS flows in the table from which an untracked DNS rule is advised,
/// when they are also this share of the table.
pub const DNS_FLOWS: u64 = 1_000;
pub const DNS_SHARE_PCT: u64 = 20;

/// What every suggestion says: what untracking costs, and the rule the
/// input filter then needs.
pub const NOTRACK_CAVEAT: &str = "only for UDP this machine serves or asks itself: forwarded traffic that is NATed or accepted by ct state must stay tracked (untracked packets are not NATed and are never established); the input filter then needs 'ct state untracked accept' before its drop";

/// The nft commands that untrack UDP port `port` for this machine's own
/// traffic only: requests to a local service and its replies, and its
/// own requests and their replies (`priority raw`, before conntrack).
/// Forwarded traffic never matches (its destination is not local, and
/// it does not pass the output hook). Ends with the rule the input
/// filter needs, as a shell comment.
pub fn nft_notrack_local_udp(port: u16) -> String {
    let t = "ctsync_notrack";
    format!(
        "nft 'add table inet {t}; \
         add chain inet {t} pre {{ type filter hook prerouting priority raw; }}; \
         add chain inet {t} out {{ type filter hook output priority raw; }}; \
         add rule inet {t} pre fib daddr type local udp dport {port} notrack; \
         add rule inet {t} pre fib daddr type local udp sport {port} notrack; \
         add rule inet {t} out udp sport {port} notrack; add rule inet {t} out udp dport {port} notrack' \
         # and in the input filter chain, before its drop: ct state untracked accept"
    )
}

pub fn notrack(rate: Option<FlowRate>, mix: Option<&TableMix>) -> Vec<Finding> {
    let mut out = Vec::new();
    if mix.is_none() {
        out.push(Finding::new(
            "notrack_dns",
            Severity::Info,
            "not checked: the table could not be read (needs CAP_NET_ADMIN) or is too large to dump",
        ));
    }
    if let Some(m) = mix {
        let share = m.dns.saturating_mul(100).checked_div(m.total).unwrap_or(0);
        let seen = format!(
            "{} DNS flows (port 53) of {} in the table ({share}%)",
            m.dns, m.total
        );
        if m.dns >= DNS_FLOWS && share >= DNS_SHARE_PCT {
            out.push(
                Finding::new(
                    "notrack_dns",
                    Severity::Warning,
                    format!("many short DNS flows in the table: DNS is the usual NOTRACK candidate, {NOTRACK_CAVEAT}"),
                )
                .seen(seen)
                .fix(nft_notrack_local_udp(53)),
            );
        } else {
            out.push(
                Finding::new("notrack_dns", Severity::Ok, "DNS does not crowd the table")
                    .seen(seen),
            );
        }
    }
    let Some(r) = rate else {
        out.push(Finding::new(
            "notrack_rate",
            Severity::Info,
            "new-flow rate not measured (events are off, or listening needs CAP_NET_ADMIN)",
        ));
        return out;
    };
    let top = mix.and_then(|m| m.top_port.clone());
    let seen = format!(
        "{}{:.0} new flows/s{}",
        if r.at_least { "at least " } else { "" },
        r.per_s,
        top.as_ref()
            .map(|(p, port, n)| format!("; busiest destination {p}/{port} with {n} flows"))
            .unwrap_or_default()
    );
    if r.per_s < RATE_INFO {
        out.push(
            Finding::new(
                "notrack_rate",
                Severity::Ok,
                "the new-flow rate is moderate",
            )
            .seen(seen),
        );
        return out;
    }
    // Never more than info: whether the busy port's flows are this
    // machine's own (which may be untracked) or forwarded (which must
    // not be on a NAT or stateful firewall) is not known here.
    let heavy = if r.per_s >= RATE_HEAVY {
        "a very high"
    } else {
        "a high"
    };
    let mut f = match top {
        Some((p, port, _)) if p == "udp" => Finding::new(
            "notrack_rate",
            Severity::Info,
            format!("{heavy} rate of new flows, most to udp/{port}: if that is a service of this machine, it could be untracked ({NOTRACK_CAVEAT})"),
        )
        .fix(nft_notrack_local_udp(port)),
        _ => Finding::new(
            "notrack_rate",
            Severity::Info,
            format!("{heavy} rate of new flows: size the table for it (TCP and forwarded NATed traffic must stay tracked)"),
        ),
    };
    f = f.seen(seen);
    out.push(f);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(total: u64, dns: u64) -> TableMix {
        TableMix {
            total,
            dns,
            top_port: Some(("udp".into(), 53, dns)),
        }
    }

    #[test]
    fn dns_crowding_the_table() {
        let f = notrack(None, Some(&mix(2_000, 1_500)));
        assert_eq!(f[0].check, "notrack_dns");
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("udp dport 53 notrack"));
        assert_eq!(
            notrack(None, Some(&mix(2_000, 900)))[0].severity,
            Severity::Ok
        );
        // Many, but a small share of a big table.
        assert_eq!(
            notrack(None, Some(&mix(100_000, 5_000)))[0].severity,
            Severity::Ok
        );
        assert_eq!(f[1].severity, Severity::Info);
    }

    fn rate(per_s: f64) -> Option<FlowRate> {
        Some(FlowRate {
            per_s,
            at_least: false,
        })
    }

    #[test]
    fn rate_thresholds() {
        let no_table = notrack(rate(100.0), None);
        assert_eq!(
            (no_table[0].check, no_table[0].severity),
            ("notrack_dns", Severity::Info)
        );
        assert_eq!(no_table[1].severity, Severity::Ok);
        assert_eq!(notrack(rate(6_000.0), None)[1].severity, Severity::Info);
        // Even a very high UDP rate stays info: doctor cannot tell local
        // from forwarded flows.
        let f = notrack(rate(30_000.0), Some(&mix(10, 5)));
        assert_eq!(f[1].severity, Severity::Info);
        assert!(f[1]
            .seen
            .contains("30000 new flows/s; busiest destination udp/53"));
        let fix = f[1].fix.as_deref().unwrap();
        assert!(
            fix.contains("fib daddr type local udp dport 53 notrack"),
            "{fix}"
        );
        assert!(fix.contains("ct state untracked accept"), "{fix}");
        assert!(f[1].summary.contains("must stay tracked"), "{:?}", f[1]);
    }

    /// The busiest port of most firewalls is tcp/443: no rate, however
    /// high, yields a NOTRACK fix for TCP (it would break NAT and every
    /// `ct state established` accept rule for that traffic).
    #[test]
    fn a_tcp_dominated_rate_never_yields_a_notrack_fix() {
        let tcp = TableMix {
            total: 50_000,
            dns: 0,
            top_port: Some(("tcp".into(), 443, 40_000)),
        };
        for per_s in [6_000.0, 30_000.0, 1_000_000.0] {
            let f = notrack(rate(per_s), Some(&tcp));
            let r = f.iter().find(|f| f.check == "notrack_rate").unwrap();
            assert_eq!(r.severity, Severity::Info, "{r:?}");
            assert_eq!(r.fix, None, "{r:?}");
            assert!(f
                .iter()
                .all(|f| !f.fix.as_deref().unwrap_or_default().contains("tcp")));
        }
        // Negative control: the same rate with a UDP port does get a fix.
        let udp = TableMix {
            top_port: Some(("udp".into(), 443, 40_000)),
            ..tcp
        };
        let f = notrack(rate(30_000.0), Some(&udp));
        assert!(f[1]
            .fix
            .as_deref()
            .unwrap()
            .contains("udp dport 443 notrack"));
    }

    /// Every rule of a suggestion is for this machine's own traffic: in
    /// prerouting only to a local address, else in output.
    #[test]
    fn the_suggested_rules_are_local_only() {
        let fix = nft_notrack_local_udp(53);
        let rules: Vec<&str> = fix.split(';').filter(|r| r.contains(" notrack")).collect();
        assert_eq!(rules.len(), 4, "{fix}");
        for r in rules {
            assert!(
                r.contains(" pre fib daddr type local udp ") || r.contains(" out udp "),
                "{r}"
            );
        }
        assert!(!fix.contains("tcp"));
    }
}
