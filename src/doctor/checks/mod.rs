//! The checks: each a small pure function from facts (and the settings
//! that matter) to findings. Every check that runs says something: `ok`
//! when all is well, so a report shows what was checked.
//!
//! Owns: `Settings` (what the checks need from the config) and running
//! every check in order. Must not: read the machine or the daemon (see
//! `doctor::read`), or print.

pub mod conntrackd_link;
pub mod kernel;
pub mod notrack;
pub mod sync;
pub mod table;
pub mod timeouts;
pub mod warm;

use super::facts::{DaemonState, MachineFacts};
use super::finding::Finding;
use crate::config::{Config, SyncMode};

/// What the checks need from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mode: SyncMode,
    pub mtu: u32,
    /// The largest datagram we accept (as the daemon computes it).
    pub max_payload: u64,
    pub tcp_window_tracking: bool,
    pub enable_events: bool,
    pub warm_standby: bool,
    /// A peer not heard for this long is gone (`[sync] peer_timeout_ms`).
    pub peer_timeout_ms: u64,
    /// An upstream balancer's or cloud NIC's idle timeout, seconds.
    pub upstream_idle_timeout_s: Option<u64>,
}

impl Settings {
    /// From the config; `upstream` (the command line's
    /// `--upstream-idle-timeout`) wins over `[doctor] upstream_idle_timeout_s`.
    pub fn from_config(c: &Config, upstream: Option<u32>) -> Settings {
        // As the daemon sizes datagrams (`LinkSpec::max_payload`): the MTU
        // less the IP and UDP headers of the first link's family.
        let v6 = c.links.first().is_some_and(|l| l.local.is_ipv6());
        let overhead = if v6 { 48 } else { 28 };
        Settings {
            mode: c.sync.mode,
            mtu: c.sync.mtu,
            max_payload: u64::from(c.sync.mtu).saturating_sub(overhead).max(512),
            tcp_window_tracking: c.kernel.tcp_window_tracking,
            enable_events: c.kernel.enable_events,
            warm_standby: c.sync.warm_standby,
            peer_timeout_ms: c.sync.peer_timeout_ms,
            upstream_idle_timeout_s: upstream.or(c.doctor.upstream_idle_timeout_s).map(u64::from),
        }
    }
}

#[cfg(test)]
impl Settings {
    /// An FTFW node of MTU 1500 with events on and the rest off: what the
    /// checks' tests change one field of.
    pub fn for_tests() -> Settings {
        Settings {
            mode: SyncMode::Ftfw,
            mtu: 1500,
            max_payload: 1472,
            tcp_window_tracking: false,
            enable_events: true,
            warm_standby: false,
            peer_timeout_ms: 5_000,
            upstream_idle_timeout_s: None,
        }
    }
}

/// Every check, in report order.
pub fn run_all(m: &MachineFacts, d: &DaemonState, s: &Settings) -> Vec<Finding> {
    let sys = &m.sysctls;
    let mut out = vec![
        table::table_full(sys),
        table::table_drops(m.stat.as_ref(), m.stat_later.as_ref(), m.interval_s),
        table::hash_buckets(sys),
        table::table_memory(sys, m.slab_object_size, m.mem_total_bytes),
        kernel::events(sys, s, d),
    ];
    out.extend(kernel::events_arriving(sys, d));
    out.push(kernel::tcp_loose(sys));
    out.push(kernel::tcp_be_liberal(sys, s));
    out.push(timeouts::tcp_established(sys));
    out.push(timeouts::tcp_time_wait(sys));
    out.extend(timeouts::upstream_idle(sys, s.upstream_idle_timeout_s));
    out.extend(notrack::notrack(m.rate, m.mix.as_ref()));
    out.extend(sync::sync_checks(d, s));
    out.extend(warm::warm_standby(d, s));
    out.extend(conntrackd_link::conntrackd_link(d, s));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(local: &str, doctor: &str) -> Config {
        let text = format!(
            "node_id = 1\n[sync]\nmode = \"notrack\"\nmtu = 1400\n[kernel]\ntcp_window_tracking = true\n{doctor}\n\
             [[link]]\ntransport = \"udp\"\ninterface = \"sync0\"\nlocal = \"{local}\"\npeer = \"{local}\"\nport = 3780\n"
        );
        Config::parse(&text, "test").unwrap()
    }

    #[test]
    fn settings_follow_the_config_and_the_command_line_wins() {
        let s = Settings::from_config(&config("198.18.0.1", ""), None);
        assert_eq!(
            (s.mode, s.mtu, s.max_payload),
            (SyncMode::Notrack, 1400, 1372)
        );
        assert!(s.tcp_window_tracking && s.enable_events && !s.warm_standby);
        assert_eq!(s.upstream_idle_timeout_s, None);
        let s = Settings::from_config(&config("2001:db8:5::1", ""), None);
        assert_eq!(s.max_payload, 1352);
        let c = config("198.18.0.1", "[doctor]\nupstream_idle_timeout_s = 20");
        assert_eq!(
            Settings::from_config(&c, None).upstream_idle_timeout_s,
            Some(20)
        );
        assert_eq!(
            Settings::from_config(&c, Some(5)).upstream_idle_timeout_s,
            Some(5)
        );
    }
}
