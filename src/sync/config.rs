//! The replication core's configuration and the plain types it exchanges
//! with the daemon: modes, errors, the changes warm standby mirrors, what
//! a reconcile replicates, and the datagrams to send.
//!
//! Owns: `SyncConfig` (its defaults and its validation), `Mode`,
//! `SyncError`, `Applied`, `Replicate`, `Transmit`. Must not: hold state
//! or logic beyond checking a configuration.

use crate::cache::FlowCache;
use crate::flow::{Flow, FlowKey};
use crate::wire::{HEADER_LEN, MAX_DATAGRAM};
use thiserror::Error;

/// Smallest `max_payload` accepted: a header and one IPv6 flow with NAT.
pub(crate) const MIN_PAYLOAD: usize = HEADER_LEN + 160;
/// Largest `window` accepted: it keeps the sequence space's reserve small.
const MAX_WINDOW: usize = 1 << 24;

/// Replication mode (conntrackd's names). Every node of a cluster must use
/// the same one.
///
/// - `Ftfw`: reliable; acks, nacks, a bounded resend queue.
/// - `Notrack`: best effort; data is sent once and applied as it arrives;
///   `-n`, start-up and peer restarts still pull a bulk.
/// - `Alarm`: every flow is re-sent at least once per `alarm_refresh_ms`;
///   receivers expire what is not refreshed within `alarm_timeout_ms`; no
///   acks, nacks, resync requests, bulks or digests (only keepalives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    Ftfw,
    Notrack,
    Alarm,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SyncError {
    /// No longer returned: every mode is implemented.
    #[error("sync mode {0:?} is not implemented")]
    UnsupportedMode(Mode),
    #[error("invalid sync configuration: {0}")]
    InvalidConfig(&'static str),
}

/// One change to a peer's flows, as warm standby mirrors it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A flow the peer's view did not hold before.
    Created(Flow),
    /// A new state of a flow already held.
    Updated(Flow),
    Delete(FlowKey),
}

impl Applied {
    pub fn key(&self) -> FlowKey {
        match self {
            Applied::Created(flow) | Applied::Updated(flow) => flow.key(),
            Applied::Delete(key) => *key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    pub mode: Mode,
    pub node_id: u32,
    /// UDP payload budget per datagram (path MTU minus IP/UDP headers). It
    /// bounds what we send, not what we accept: a peer configured with a
    /// larger MTU is read up to the format's limit (and counted in
    /// `peer_wire`), so a mismatch costs fragments, never the stream.
    pub max_payload: usize,
    /// Most unacknowledged reliable datagrams (the resend queue's bound).
    pub window: usize,
    /// Acknowledge after this many in-order datagrams...
    pub ack_every: u32,
    /// ...or this long after the first unacknowledged one.
    pub ack_delay_ms: u64,
    pub keepalive_ms: u64,
    pub rto_ms: u64,
    /// Silence after which a peer is down: its acks no longer hold the
    /// window, and we stop asking it for resyncs and resends.
    pub peer_timeout_ms: u64,
    /// How far ahead of the next expected sequence number a reliable
    /// datagram may be buffered; further ones are dropped unbuffered
    /// (counted as "reorder_too_far"). Should be at least the senders'
    /// `window` (a live sender is never further ahead than that).
    pub reorder_limit: usize,
    /// Memory the reorder buffer of one sender may hold, in bytes (see
    /// `rx::buffered_cost`); past it datagrams are dropped (counted as
    /// "reorder_overflow").
    pub reorder_max_bytes: usize,
    /// Most senders known at once; datagrams from further node ids are
    /// dropped (counted as "too_many_peers").
    pub max_peers: usize,
    /// Most flows in one sender's external cache: an Upsert of a flow it
    /// does not hold is dropped while it is full (counted as
    /// "external_cache_full"); updates and deletes still apply.
    pub max_flows_per_peer: usize,
    pub links: usize,
    /// Per link, the only sender node ids it accepts (`None`: any). A
    /// datagram from another id is dropped before anything of it is used
    /// (counted as "unexpected_node_id").
    pub link_node_ids: Vec<Option<Vec<u32>>>,
    /// FTFW and NOTRACK: send a `Digest` of our table this often (when the
    /// send queue is empty); a receiver that disagrees pulls a bulk. 0: off.
    pub digest_interval_ms: u64,
    /// ALARM: every flow is re-sent at least this often.
    pub alarm_refresh_ms: u64,
    /// ALARM: a peer's flow not refreshed for this long is dropped.
    pub alarm_timeout_ms: u64,
    /// Let a few queued keys wait this long (ms) for more to fill a
    /// datagram; 0 sends at once.
    pub batch_delay_ms: u64,
    /// Keep a list of every change to the external caches for the daemon
    /// to collect with `take_applied` (warm standby writes them into the
    /// kernel as they arrive).
    pub record_applied: bool,
    /// Key the caches' hash with this seed instead of at random, so that
    /// their order, and with it the order a bulk is sent in, depends only
    /// on what happened to them: for replayable simulations. (A daemon
    /// keeps the random key: its flows come from the network.)
    pub cache_seed: Option<u64>,
    /// FTFW: while no peer is alive, at most this many items wait in the
    /// send queue; past it the queue and the resend window are dropped and
    /// the next peer heard gets a bulk instead (a backup down for a day
    /// must not cost the primary its memory).
    pub alone_queue_max: usize,
    /// Most flow keys waiting in the send queue (keys coalesce per flow,
    /// but a delete and a re-creation of the same key queue it again, so a
    /// peer that holds our window without acknowledging would let churn
    /// grow it without end). Past it, in any mode, the queue is dropped
    /// and the peers get a bulk instead (counted as `send_queue_drops`).
    /// A bulk's flows are not counted: the table bounds them (one full bulk
    /// is queued at most, and one range bulk per range).
    pub send_queue_max: usize,
    /// Replicate expectations (`crate::expect`): the daemon feeds them
    /// through `local_expect_*`; off, no expectation message is sent.
    pub expectations: bool,
}

/// What a reconcile with the kernel table sends to peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicate {
    /// Nothing: the cache is primed or refreshed (start-up, `-R`).
    Nothing,
    /// Every difference: added, changed and vanished flows.
    Differences,
    /// Every difference except flows a peer's cache holds: shortly after a
    /// commit those are the commit's own writes, cached as ours but never
    /// sent back (their events may have been paused or lost).
    DifferencesButPeerFlows,
}

/// An empty cache as `seed` says (see `SyncConfig::cache_seed`).
pub(crate) fn new_cache(seed: Option<u64>) -> FlowCache {
    seed.map_or_else(FlowCache::new, FlowCache::with_seed)
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            mode: Mode::Ftfw,
            node_id: 1,
            max_payload: crate::wire::PAYLOAD_IPV4_1500,
            window: 4096,
            ack_every: 64,
            ack_delay_ms: 20,
            keepalive_ms: 1000,
            rto_ms: 200,
            peer_timeout_ms: 5000,
            reorder_limit: 8192,
            reorder_max_bytes: 64 << 20,
            max_peers: 16,
            max_flows_per_peer: 4_000_000,
            links: 1,
            link_node_ids: Vec::new(),
            digest_interval_ms: 5000,
            alarm_refresh_ms: 60_000,
            alarm_timeout_ms: 180_000,
            record_applied: false,
            batch_delay_ms: 2,
            cache_seed: None,
            alone_queue_max: 65_536,
            send_queue_max: 4_000_000,
            expectations: false,
        }
    }
}

/// One datagram to send on one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub link: usize,
    pub bytes: Vec<u8>,
}

impl SyncConfig {
    /// Refuse a configuration no Node can run with.
    pub fn validate(&self) -> Result<(), SyncError> {
        if self.mode == Mode::Alarm && (self.alarm_refresh_ms == 0 || self.alarm_timeout_ms == 0) {
            return Err(SyncError::InvalidConfig(
                "alarm_refresh_ms and alarm_timeout_ms must be at least 1",
            ));
        }
        if self.window == 0 {
            return Err(SyncError::InvalidConfig("window must be at least 1"));
        }
        if self.window > MAX_WINDOW {
            return Err(SyncError::InvalidConfig("window too large"));
        }
        if self.max_peers == 0 {
            return Err(SyncError::InvalidConfig("max_peers must be at least 1"));
        }
        if self.max_flows_per_peer == 0 {
            return Err(SyncError::InvalidConfig(
                "max_flows_per_peer must be at least 1",
            ));
        }
        if self.reorder_limit == 0 {
            return Err(SyncError::InvalidConfig("reorder_limit must be at least 1"));
        }
        if self.reorder_max_bytes == 0 {
            return Err(SyncError::InvalidConfig(
                "reorder_max_bytes must be at least 1",
            ));
        }
        if self.send_queue_max == 0 {
            return Err(SyncError::InvalidConfig(
                "send_queue_max must be at least 1",
            ));
        }
        if self.links == 0 {
            return Err(SyncError::InvalidConfig("at least one link is needed"));
        }
        if !(MIN_PAYLOAD..=MAX_DATAGRAM).contains(&self.max_payload) {
            return Err(SyncError::InvalidConfig("max_payload out of range"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_each_bound_is_checked() {
        let ok = SyncConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            SyncConfig {
                window: 0,
                ..ok.clone()
            },
            SyncConfig {
                window: MAX_WINDOW + 1,
                ..ok.clone()
            },
            SyncConfig {
                max_peers: 0,
                ..ok.clone()
            },
            SyncConfig {
                max_flows_per_peer: 0,
                ..ok.clone()
            },
            SyncConfig {
                reorder_limit: 0,
                ..ok.clone()
            },
            SyncConfig {
                reorder_max_bytes: 0,
                ..ok.clone()
            },
            SyncConfig {
                send_queue_max: 0,
                ..ok.clone()
            },
            SyncConfig {
                links: 0,
                ..ok.clone()
            },
            SyncConfig {
                max_payload: MIN_PAYLOAD - 1,
                ..ok.clone()
            },
            SyncConfig {
                max_payload: MAX_DATAGRAM + 1,
                ..ok.clone()
            },
            SyncConfig {
                mode: Mode::Alarm,
                alarm_timeout_ms: 0,
                ..ok.clone()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
        // Zero refresh timers matter only in ALARM.
        let notrack = SyncConfig {
            mode: Mode::Notrack,
            alarm_refresh_ms: 0,
            ..ok
        };
        assert_eq!(notrack.validate(), Ok(()));
    }
}
