//! Traffic that could go untracked: a high rate of new flows, or many
//! short DNS flows in the table. Either costs table space and sync
//! traffic for flows nobody needs after a failover.
//!
//! Owns: the `notrack` decision and the nft line it suggests. Must not:
//! read the table or listen to events (`doctor::read` does).

use crate::doctor::facts::{FlowRate, TableMix};
use crate::doctor::finding::{Finding, Severity};

/// New flows a second from which NOTRACK is worth a look...
pub const RATE_INFO: f64 = 5_000.0;
/// ...and from which it is advised.
pub const RATE_WARNING: f64 = 20_000.0;
/// DNS flows in the table from which an untracked DNS rule is advised,
/// when they are also this share of the table.
pub const DNS_FLOWS: u64 = 1_000;
pub const DNS_SHARE_PCT: u64 = 20;

/// The nft commands that untrack `proto` port `port` both ways, through
/// and from this machine (`priority raw`, before conntrack).
pub fn nft_notrack_line(proto: &str, port: u16) -> String {
    let t = "ctsync_notrack";
    format!(
        "nft 'add table inet {t}; \
         add chain inet {t} pre {{ type filter hook prerouting priority raw; }}; \
         add chain inet {t} out {{ type filter hook output priority raw; }}; \
         add rule inet {t} pre {proto} dport {port} notrack; add rule inet {t} pre {proto} sport {port} notrack; \
         add rule inet {t} out {proto} dport {port} notrack; add rule inet {t} out {proto} sport {port} notrack'"
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
                    "many short DNS flows in the table: stateless DNS is the usual NOTRACK candidate (untracked traffic cannot be NATed or matched by ct state)",
                )
                .seen(seen)
                .fix(nft_notrack_line("udp", 53)),
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
    let severity = if r.per_s >= RATE_WARNING {
        Severity::Warning
    } else if r.per_s >= RATE_INFO {
        Severity::Info
    } else {
        out.push(
            Finding::new(
                "notrack_rate",
                Severity::Ok,
                "the new-flow rate is moderate",
            )
            .seen(seen),
        );
        return out;
    };
    let mut f = Finding::new(
        "notrack_rate",
        severity,
        "a high rate of new flows: stateless services among them could be untracked",
    )
    .seen(seen);
    if let Some((p, port, _)) = top {
        f = f.fix(nft_notrack_line(&p, port));
    }
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

    #[test]
    fn rate_thresholds() {
        let r = |per_s| {
            Some(FlowRate {
                per_s,
                at_least: false,
            })
        };
        let no_table = notrack(r(100.0), None);
        assert_eq!(
            (no_table[0].check, no_table[0].severity),
            ("notrack_dns", Severity::Info)
        );
        assert_eq!(no_table[1].severity, Severity::Ok);
        assert_eq!(notrack(r(6_000.0), None)[1].severity, Severity::Info);
        let f = notrack(r(30_000.0), Some(&mix(10, 5)));
        assert_eq!(f[1].severity, Severity::Warning);
        assert!(f[1]
            .seen
            .contains("30000 new flows/s; busiest destination udp/53"));
    }
}
