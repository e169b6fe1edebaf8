//! Start-up helpers: the transport view of the configured links, the sync
//! core's settings, the epoch.
//! (Logging is `logging`'s.)
//!
//! Owns: translating `Config` into what the transport and the core take.
//! Must not: open sockets or start threads (the run loop does, in order).

use crate::config::{Config, LinkConfig, LinkProtocol, SyncMode, Transport};
use crate::sync::{Mode, SyncConfig};
use crate::transport::{LinkKind, LinkSpec};
use std::time::Instant;

/// The transport view of the configured links.
pub(super) fn link_specs(config: &Config) -> Vec<LinkSpec> {
    config
        .links
        .iter()
        .filter(|link| link.protocol == LinkProtocol::Ctsync)
        .filter_map(spec_of)
        .collect()
}

/// The socket settings of one link.
pub(super) fn spec_of(link: &LinkConfig) -> Option<LinkSpec> {
    let kind = match link.transport {
        Transport::Udp => LinkKind::Udp { peer: link.peer? },
        Transport::Multicast => LinkKind::Multicast { group: link.group? },
    };
    Some(LinkSpec {
        kind,
        interface: (!link.interface.is_empty()).then(|| link.interface.clone()),
        local: link.local,
        port: link.port,
    })
}

/// The sync core's settings from `[sync]`.
pub(super) fn core_config(config: &Config) -> SyncConfig {
    let s = &config.sync;
    SyncConfig {
        mode: match s.mode {
            SyncMode::Ftfw => Mode::Ftfw,
            SyncMode::Notrack => Mode::Notrack,
            SyncMode::Alarm => Mode::Alarm,
        },
        node_id: config.node_id,
        window: s.window as usize,
        ack_every: s.ack_every,
        ack_delay_ms: s.ack_delay_ms,
        keepalive_ms: s.keepalive_ms,
        rto_ms: s.rto_ms,
        peer_timeout_ms: s.peer_timeout_ms,
        digest_interval_ms: s.digest_interval_ms,
        alarm_refresh_ms: u64::from(s.alarm_refresh_s) * 1000,
        alarm_timeout_ms: u64::from(s.alarm_timeout_s) * 1000,
        record_applied: s.warm_standby,
        batch_delay_ms: s.batch_delay_ms,
        link_node_ids: config
            .links
            .iter()
            .filter(|l| l.protocol == LinkProtocol::Ctsync)
            .map(|l| l.node_ids.clone())
            .collect(),
        max_peers: to_usize(u64::from(s.max_peers)),
        max_flows_per_peer: to_usize(s.max_flows_per_peer),
        reorder_limit: to_usize(u64::from(s.reorder_limit)),
        reorder_max_bytes: to_usize(s.reorder_max_bytes),
        send_queue_max: to_usize(s.send_queue_max),
        expectations: !s.expectations.is_off(),
        ..SyncConfig::default()
    }
}

/// A configured bound as the core takes it (a 32-bit host caps it).
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A random value, different at every start: a recorded datagram of an
/// earlier run cannot be made to look current by guessing the clock.
/// (From the kernel's random pool; should that fail, the time in
/// nanoseconds mixed with the process id.)
pub(super) fn new_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(got).is_ok_and(|n| n == bytes.len()) {
        return u64::from_le_bytes(bytes);
    }
    tracing::warn!(
        err = %std::io::Error::last_os_error(),
        "no random epoch: using the clock"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 40)
}

pub(super) fn elapsed_ms(since: Instant) -> u64 {
    millis(since.elapsed())
}

/// A duration in whole milliseconds, saturating.
pub(super) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_gets_the_configured_mode_and_timers() {
        let text = "node_id = 1\n[[link]]\ntransport = \"udp\"\ninterface = \"sync0\"\nlocal = \"198.18.0.1\"\nport = 3780\nnode_ids = [2]\npeer = \"198.18.0.2\"\n\
                    [sync]\nmode = \"notrack\"\nalarm_refresh_s = 3\nwarm_standby = true\n";
        let config = Config::parse(text, "test").expect("valid config");
        let core = core_config(&config);
        assert_eq!(core.mode, Mode::Notrack);
        assert_eq!(core.alarm_refresh_ms, 3_000);
        assert!(core.record_applied, "warm standby records applied changes");
        assert_eq!(core.link_node_ids, vec![Some(vec![2])]);
    }

    /// The limits on what peers can grow, as `[sync]` sets them, and by
    /// default the core's own.
    fn limits(core: &SyncConfig) -> [usize; 5] {
        [
            core.max_peers,
            core.max_flows_per_peer,
            core.reorder_limit,
            core.reorder_max_bytes,
            core.send_queue_max,
        ]
    }

    #[test]
    fn the_core_gets_the_configured_limits() {
        let base = "node_id = 1\n[[link]]\ntransport = \"udp\"\ninterface = \"sync0\"\nlocal = \"198.18.0.1\"\nport = 3780\npeer = \"198.18.0.2\"\n[sync]\n";
        let config = Config::parse(base, "test").expect("valid config");
        assert_eq!(
            limits(&core_config(&config)),
            limits(&SyncConfig::default())
        );
        let text = format!(
            "{base}max_peers = 3\nmax_flows_per_peer = 1000\nreorder_limit = 5000\n\
             reorder_max_bytes = 2097152\nsend_queue_max = 70000\n"
        );
        let core = core_config(&Config::parse(&text, "test").expect("valid config"));
        assert_eq!(core.validate(), Ok(()));
        assert_eq!(limits(&core), [3, 1000, 5000, 2 << 20, 70_000]);
    }

    #[test]
    fn epochs_are_random() {
        // Back to back, within the clock's resolution: a clock-derived
        // epoch would repeat or differ in its low bits only.
        let epochs: Vec<u64> = (0..64).map(|_| new_epoch()).collect();
        let mut unique = epochs.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), epochs.len());
        let high_bits_vary = epochs.windows(2).any(|w| (w[0] ^ w[1]) >> 48 != 0);
        assert!(high_bits_vary, "{epochs:x?}");
    }
}
