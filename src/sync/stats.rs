//! Counters and status reports of the replication core.
//!
//! Owns: the plain, serialisable structs that `-s` and metrics read. Must
//! not: hold logic beyond counting.

use crate::wire::WireError;
use serde::Serialize;
use std::collections::BTreeMap;

/// Per-link traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub recv_packets: u64,
    pub recv_bytes: u64,
    /// Malformed datagrams received on this link.
    pub errors: u64,
    /// Datagrams the link's socket would not send (`Node::note_send_error`).
    pub send_errors: u64,
    /// Whether datagrams have arrived recently.
    pub up: bool,
}

/// Every counter of one Node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncStats {
    /// Dropped datagrams (and messages), by reason: malformed ones, and
    /// those a check or a limit refused.
    pub malformed: Drops,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Sequence numbers found missing (gaps seen).
    pub lost: u64,
    /// Reliable datagrams received again.
    pub duplicates: u64,
    pub acks_sent: u64,
    pub acks_received: u64,
    pub nacks_sent: u64,
    pub nacks_received: u64,
    pub retransmits: u64,
    pub resyncs_requested_sent: u64,
    pub resyncs_requested_received: u64,
    pub bulks_sent: u64,
    pub bulks_received: u64,
    /// Bulks whose end swept flows the sender no longer has.
    pub bulk_swept: u64,
    pub resumes_sent: u64,
    pub resumes_received: u64,
    /// Peer restarts seen (a new epoch, which a peer's rollover is too).
    pub peer_restarts: u64,
    /// New epochs we started because our sequence numbers ran out.
    pub epoch_rollovers: u64,
    /// Peers forgotten after being down long with an empty external cache.
    pub peers_forgotten: u64,
    /// Times new data waited because the window was full.
    pub window_full: u64,
    /// Digests of our table sent (each is `range_digests_sent` messages
    /// of range sums).
    pub digests_sent: u64,
    /// Peers' digests applied (counted by their first message, range 0).
    pub digests_received: u64,
    /// Peers' digests (or, with range digests, digest messages) that
    /// disagreed with our view of them (each asks that peer for a repair).
    pub digest_mismatches: u64,
    /// Range digest messages sent and received (a digest is several).
    pub range_digests_sent: u64,
    pub range_digests_received: u64,
    /// Range requests (re-send these key ranges) sent and received.
    pub range_requests_sent: u64,
    pub range_requests_received: u64,
    /// Range bulks sent and received.
    pub range_bulks_sent: u64,
    pub range_bulks_received: u64,
    /// Ranges a range bulk proved complete, and ranges it did not (nothing
    /// swept there; asked again).
    pub ranges_repaired: u64,
    pub ranges_unproven: u64,
    /// Flows range bulks swept (the sender no longer had them).
    pub range_swept: u64,
    /// Full bulks that arrived incomplete: nothing swept.
    pub bulk_unproven: u64,
    /// ALARM: flows re-sent by the periodic refresh.
    pub alarm_refreshes: u64,
    /// ALARM: peers' flows dropped for not being refreshed in time.
    pub alarm_expired: u64,
    /// FTFW: times the send queue and resend window were dropped because
    /// no peer was alive and the queue outgrew `alone_queue_max` (the next
    /// peer heard gets a bulk), and the items dropped.
    pub backlog_drops: u64,
    /// Items dropped by that bound and by `send_queue_max`'s.
    pub backlog_dropped_items: u64,
    /// Times the send queue held more than `send_queue_max` keys and was
    /// dropped (the peers get a bulk instead: nothing is lost).
    pub send_queue_drops: u64,
    /// Times one of our flows or expectations was refused by the wire
    /// format's checks (each event and each re-read of it counts): it is
    /// kept out of the internal cache and sent to no peer (a datagram
    /// holding it would be refused whole, and FTFW would resend it for
    /// ever).
    pub unsendable: u64,
    pub links: Vec<LinkStats>,
    /// Per known peer (by node id): what its datagrams look like on the
    /// wire, for `ctsyncd doctor` (a peer whose MTU or mode differs).
    pub peer_wire: BTreeMap<u32, PeerWire>,
}

/// What one peer's datagrams look like on the wire: a peer with a larger
/// `sync.mtu` sends datagrams larger than ours (read all the same), and
/// only FTFW nodes send acknowledgements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerWire {
    /// The largest datagram received from it (as sent: sealed, with keys).
    pub largest_datagram: u64,
    /// Its datagrams longer than our own `max_payload`: read, since the
    /// format allows them, but a sign its `sync.mtu` differs from ours.
    pub oversized: u64,
    /// FTFW acknowledgements (Ack and Nack messages) it sent, whoever they
    /// were for, in any mode of ours.
    pub acks_nacks: u64,
}

/// Why a datagram (or, for `data_in_control` and `external_cache_full`, a
/// message) was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Decoding failed (`WireError`'s kinds).
    Truncated,
    BadMagic,
    BadVersion,
    BadHeader,
    BadLength,
    /// Longer than the format allows (65,507 bytes; never decoded).
    Oversized,
    BadBody,
    BadFlow,
    TooManyMessages,
    /// Sent with our own node id.
    OwnNodeId,
    /// From a new node id while the peer table is full.
    TooManyPeers,
    /// From an epoch the sender has left.
    StaleEpoch,
    /// From a node id the link does not accept (`[[link]] node_ids`).
    UnexpectedNodeId,
    /// A data message in an unsequenced (control) datagram.
    DataInControl,
    /// An Upsert of a flow the sender's external cache does not hold, while
    /// that cache holds `max_flows_per_peer` flows (updates and deletes of
    /// flows it holds still apply).
    ExternalCacheFull,
    /// Ahead of a gap, but buffering it would take the sender's reorder
    /// buffer past `reorder_max_bytes` (the gap's NACK brings it again).
    ReorderOverflow,
    /// Further ahead of the next expected datagram than `reorder_limit`:
    /// never buffered (the sender re-sends it, or says where to resume).
    ReorderTooFar,
    /// NOTRACK and ALARM: data too far behind the newest from its sender,
    /// or too long after it (`seqstat`): it would roll flows back.
    LateData,
}

impl From<&WireError> for DropReason {
    fn from(e: &WireError) -> DropReason {
        match e {
            WireError::Truncated(_) => DropReason::Truncated,
            WireError::BadMagic => DropReason::BadMagic,
            WireError::BadVersion(_) => DropReason::BadVersion,
            WireError::BadHeader(_) => DropReason::BadHeader,
            WireError::BadLength { .. } => DropReason::BadLength,
            WireError::Oversized(_) => DropReason::Oversized,
            WireError::BadBody(_) => DropReason::BadBody,
            WireError::BadFlow(_) => DropReason::BadFlow,
            WireError::TooManyMessages(_) => DropReason::TooManyMessages,
            // Counted by the node as an authentication refusal first.
            WireError::Sealed => DropReason::BadHeader,
        }
    }
}

/// Dropped datagrams (and messages) by reason: one counter each (the JSON
/// keys are the field names, as `WireError::reason()` names the decoding
/// ones). Names are stable; new reasons go at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    pub truncated: u64,
    pub bad_magic: u64,
    pub bad_version: u64,
    pub bad_header: u64,
    pub bad_length: u64,
    pub oversized: u64,
    pub bad_body: u64,
    pub bad_flow: u64,
    pub too_many_messages: u64,
    pub own_node_id: u64,
    pub too_many_peers: u64,
    pub stale_epoch: u64,
    pub unexpected_node_id: u64,
    pub data_in_control: u64,
    pub external_cache_full: u64,
    pub reorder_overflow: u64,
    pub reorder_too_far: u64,
    pub late_data: u64,
}

impl Drops {
    pub fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::Truncated => &mut self.truncated,
            DropReason::BadMagic => &mut self.bad_magic,
            DropReason::BadVersion => &mut self.bad_version,
            DropReason::BadHeader => &mut self.bad_header,
            DropReason::BadLength => &mut self.bad_length,
            DropReason::Oversized => &mut self.oversized,
            DropReason::BadBody => &mut self.bad_body,
            DropReason::BadFlow => &mut self.bad_flow,
            DropReason::TooManyMessages => &mut self.too_many_messages,
            DropReason::OwnNodeId => &mut self.own_node_id,
            DropReason::TooManyPeers => &mut self.too_many_peers,
            DropReason::StaleEpoch => &mut self.stale_epoch,
            DropReason::UnexpectedNodeId => &mut self.unexpected_node_id,
            DropReason::DataInControl => &mut self.data_in_control,
            DropReason::ExternalCacheFull => &mut self.external_cache_full,
            DropReason::ReorderOverflow => &mut self.reorder_overflow,
            DropReason::ReorderTooFar => &mut self.reorder_too_far,
            DropReason::LateData => &mut self.late_data,
        };
        *counter += 1;
    }

    /// Every reason with its name and count, in a fixed order.
    pub fn by_reason(&self) -> [(&'static str, u64); 18] {
        [
            ("truncated", self.truncated),
            ("bad_magic", self.bad_magic),
            ("bad_version", self.bad_version),
            ("bad_header", self.bad_header),
            ("bad_length", self.bad_length),
            ("oversized", self.oversized),
            ("bad_body", self.bad_body),
            ("bad_flow", self.bad_flow),
            ("too_many_messages", self.too_many_messages),
            ("own_node_id", self.own_node_id),
            ("too_many_peers", self.too_many_peers),
            ("stale_epoch", self.stale_epoch),
            ("unexpected_node_id", self.unexpected_node_id),
            ("data_in_control", self.data_in_control),
            ("external_cache_full", self.external_cache_full),
            ("reorder_overflow", self.reorder_overflow),
            ("reorder_too_far", self.reorder_too_far),
            ("late_data", self.late_data),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_counter_and_its_name() {
        let mut d = Drops::default();
        d.count(DropReason::StaleEpoch);
        d.count(DropReason::StaleEpoch);
        d.count(DropReason::from(&WireError::BadMagic));
        assert_eq!((d.stale_epoch, d.bad_magic, d.total()), (2, 1, 3));
        let json = serde_json::to_value(d).expect("serialises");
        for (name, n) in d.by_reason() {
            assert_eq!(json[name], n, "{name}");
        }
        // The decoding reasons are named as the wire layer names them.
        let e = WireError::BadMagic;
        assert!(d.by_reason().iter().any(|(name, _)| *name == e.reason()));
    }

    #[test]
    fn every_reason_counts_once_under_its_own_name() {
        use DropReason::*;
        let all = [
            Truncated,
            BadMagic,
            BadVersion,
            BadHeader,
            BadLength,
            Oversized,
            BadBody,
            BadFlow,
            TooManyMessages,
            OwnNodeId,
            TooManyPeers,
            StaleEpoch,
            UnexpectedNodeId,
            DataInControl,
            ExternalCacheFull,
            ReorderOverflow,
            ReorderTooFar,
            LateData,
        ];
        let mut d = Drops::default();
        for r in all {
            d.count(r);
        }
        assert_eq!(d.by_reason().len(), all.len());
        assert!(d.by_reason().iter().all(|(_, n)| *n == 1), "{d:?}");
        let json = serde_json::to_value(d).expect("serialises");
        assert_eq!(json.as_object().map(|m| m.len()), Some(all.len()));
    }
}

/// What the Node knows about one sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub node_id: u32,
    pub epoch: u64,
    pub alive: bool,
    pub last_heard_ms: u64,
    /// The next sequence number we will apply from it.
    pub expected_seq: u32,
    /// How far it has acknowledged our stream.
    pub acked_seq: u32,
    /// Flows in its external cache.
    pub flows: usize,
    /// Its datagrams held in the reorder buffer, ahead of a gap.
    pub reordered: usize,
    /// FTFW: its datagrams known to exist (a later one arrived, or it said
    /// how far it has sent) and not yet applied here. 0 otherwise.
    pub rx_lag: u32,
    /// Datagrams of our resend window it has not acknowledged.
    pub unacked: u32,
    pub counts: PeerCounters,
}

/// What happened with one peer (kept across its restarts, gone when it is
/// forgotten).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerCounters {
    /// Full bulks of our table we started at its request (a resync request
    /// or a resend it asked for that was no longer possible). The bulk
    /// goes to every peer.
    pub bulks_sent: u64,
    /// Full bulks of its table it began sending us.
    pub bulks_received: u64,
    /// Its digests that disagreed with our view of its table.
    pub digest_mismatches: u64,
}

/// What `reconcile_internal` changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// The same state, with a timeout that traffic moved on.
    pub refreshed: usize,
}
