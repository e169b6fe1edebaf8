//! The plain counters of `-s` as metrics: each struct field (named by its
//! `-s --json` key) with the metric it becomes and what it counts, so a
//! test can prove no counter is left out.
//!
//! Owns: those tables. Must not: write the exposition (`render` does).

use crate::counters::StatsSnapshot;
use crate::sync::SyncStats;

/// One counter of a struct: its JSON key (the field name), the metric it
/// becomes, and what it counts.
pub type Row = (&'static str, &'static str, &'static str, u64);

/// The replication core's counters (`SyncStats`, except the drops by
/// reason and the per-link ones, which are labelled families).
#[rustfmt::skip]
pub fn sync_rows(s: &SyncStats) -> Vec<Row> {
    vec![
        ("datagrams_sent", "ctsync_sync_datagrams_sent_total", "Sync datagrams sent, every link.", s.datagrams_sent),
        ("bytes_sent", "ctsync_sync_sent_bytes_total", "Bytes of sync datagrams sent, every link.", s.bytes_sent),
        ("datagrams_received", "ctsync_sync_datagrams_received_total", "Sync datagrams received, every link.", s.datagrams_received),
        ("bytes_received", "ctsync_sync_received_bytes_total", "Bytes of sync datagrams received, every link.", s.bytes_received),
        ("messages_sent", "ctsync_sync_messages_sent_total", "Sync messages sent (a datagram carries several).", s.messages_sent),
        ("messages_received", "ctsync_sync_messages_received_total", "Sync messages received.", s.messages_received),
        ("lost", "ctsync_sync_lost_datagrams_total", "Peers' sequence numbers found missing (gaps seen; -s: Lost msgs).", s.lost),
        ("duplicates", "ctsync_sync_duplicate_datagrams_total", "Reliable datagrams received again (-s: Packets before).", s.duplicates),
        ("acks_sent", "ctsync_sync_acks_sent_total", "Acknowledgements sent.", s.acks_sent),
        ("acks_received", "ctsync_sync_acks_received_total", "Acknowledgements received.", s.acks_received),
        ("nacks_sent", "ctsync_sync_nacks_sent_total", "Negative acknowledgements (resend requests) sent.", s.nacks_sent),
        ("nacks_received", "ctsync_sync_nacks_received_total", "Negative acknowledgements received.", s.nacks_received),
        ("retransmits", "ctsync_sync_retransmits_total", "Datagrams sent again (-s: messages resent).", s.retransmits),
        ("resyncs_requested_sent", "ctsync_sync_resync_requests_sent_total", "Requests for a peer's whole table sent.", s.resyncs_requested_sent),
        ("resyncs_requested_received", "ctsync_sync_resync_requests_received_total", "Requests for our whole table received.", s.resyncs_requested_received),
        ("bulks_sent", "ctsync_sync_bulks_sent_total", "Full bulks (our whole table) sent.", s.bulks_sent),
        ("bulks_received", "ctsync_sync_bulks_received_total", "Full bulks of a peer's table received.", s.bulks_received),
        ("bulk_swept", "ctsync_sync_bulk_swept_flows_total", "Flows a full bulk's end removed (the sender no longer had them).", s.bulk_swept),
        ("resumes_sent", "ctsync_sync_resumes_sent_total", "Resume messages sent (a resend was no longer possible).", s.resumes_sent),
        ("resumes_received", "ctsync_sync_resumes_received_total", "Resume messages received.", s.resumes_received),
        ("peer_restarts", "ctsync_sync_peer_restarts_total", "Peer restarts seen (a new epoch).", s.peer_restarts),
        ("epoch_rollovers", "ctsync_sync_epoch_rollovers_total", "New epochs started because our sequence numbers ran out.", s.epoch_rollovers),
        ("peers_forgotten", "ctsync_sync_peers_forgotten_total", "Peers forgotten after being down long with an empty cache.", s.peers_forgotten),
        ("window_full", "ctsync_sync_window_full_total", "Times new data waited because the resend window was full.", s.window_full),
        ("digests_sent", "ctsync_sync_digests_sent_total", "Digests of our table sent.", s.digests_sent),
        ("digests_received", "ctsync_sync_digests_received_total", "Peers' digests applied.", s.digests_received),
        ("digest_mismatches", "ctsync_sync_digest_mismatches_total", "Peers' digests that disagreed with our view of their table.", s.digest_mismatches),
        ("range_digests_sent", "ctsync_sync_range_digest_messages_sent_total", "Range digest messages sent.", s.range_digests_sent),
        ("range_digests_received", "ctsync_sync_range_digest_messages_received_total", "Range digest messages received.", s.range_digests_received),
        ("range_requests_sent", "ctsync_sync_range_requests_sent_total", "Requests to re-send key ranges sent.", s.range_requests_sent),
        ("range_requests_received", "ctsync_sync_range_requests_received_total", "Requests to re-send key ranges received.", s.range_requests_received),
        ("range_bulks_sent", "ctsync_sync_range_bulks_sent_total", "Range bulks sent.", s.range_bulks_sent),
        ("range_bulks_received", "ctsync_sync_range_bulks_received_total", "Range bulks received.", s.range_bulks_received),
        ("ranges_repaired", "ctsync_sync_ranges_repaired_total", "Key ranges a range bulk proved complete.", s.ranges_repaired),
        ("ranges_unproven", "ctsync_sync_ranges_unproven_total", "Key ranges a range bulk did not prove (asked again).", s.ranges_unproven),
        ("range_swept", "ctsync_sync_range_swept_flows_total", "Flows range bulks removed (the sender no longer had them).", s.range_swept),
        ("bulk_unproven", "ctsync_sync_bulks_unproven_total", "Full bulks that arrived incomplete (nothing removed).", s.bulk_unproven),
        ("alarm_refreshes", "ctsync_sync_alarm_refreshes_total", "ALARM: flows re-sent by the periodic refresh.", s.alarm_refreshes),
        ("alarm_expired", "ctsync_sync_alarm_expired_flows_total", "ALARM: peers' flows dropped for not being refreshed in time.", s.alarm_expired),
        ("backlog_drops", "ctsync_sync_backlog_drops_total", "Times the backlog was dropped while no peer was alive (the next peer gets a bulk).", s.backlog_drops),
        ("backlog_dropped_items", "ctsync_sync_backlog_dropped_items_total", "Queued items dropped by the backlog bounds (-s queue: not enough space errors).", s.backlog_dropped_items),
        ("send_queue_drops", "ctsync_sync_send_queue_drops_total", "Times the send queue outgrew send_queue_max and was dropped (peers get a bulk).", s.send_queue_drops),
        ("unsendable", "ctsync_sync_unsendable_total", "Times one of our flows or expectations was refused by the wire format's checks (never cached or sent).", s.unsendable),
    ]
}

/// The kernel side, the daemon's network refusals and the control socket.
#[rustfmt::skip]
pub fn daemon_rows(snap: &StatsSnapshot) -> Vec<Row> {
    let k = &snap.kernel;
    let c = &snap.control;
    vec![
        ("events_received", "ctsync_kernel_events_received_total", "Conntrack events the event socket delivered.", k.events_received),
        ("events_filtered", "ctsync_kernel_events_filtered_total", "Events that changed nothing of ours (filtered, our own writes, mirrored flows).", k.events_filtered),
        ("overruns", "ctsync_kernel_event_overruns_total", "Event socket overruns (each costs a table re-read).", k.overruns),
        ("read_failures", "ctsync_kernel_read_failures_total", "Failed event reads and table reads (-s: catch event failed).", k.read_failures),
        ("table_reads", "ctsync_kernel_table_reads_total", "Kernel table reads (start-up, -R, overruns, the periodic re-read).", k.table_reads),
        ("flushes", "ctsync_kernel_flushes_total", "Kernel table flushes (-F, -t).", k.flushes),
        ("event_switch_failures", "ctsync_kernel_event_switch_failures_total", "Refusals to stop or start the event subscription around a quiet commit (a refused start is retried).", k.event_switch_failures),
        ("send_errors", "ctsync_send_errors_total", "Sync datagrams the sockets would not send, every link.", snap.network.send_errors),
        ("requests", "ctsync_control_requests_total", "Requests on the control socket.", c.requests),
        ("read_failed", "ctsync_control_read_failures_total", "Control requests that could not be read.", c.read_failed),
        ("unknown", "ctsync_control_unknown_requests_total", "Control requests not understood.", c.unknown),
        ("refused", "ctsync_control_refused_requests_total", "Control requests refused (not permitted).", c.refused),
    ]
}

/// Authentication's counters (refusals are one labelled family).
#[rustfmt::skip]
pub fn auth_rows(snap: &StatsSnapshot) -> Vec<Row> {
    let a = &snap.auth.counts;
    vec![
        ("sealed", "ctsync_auth_datagrams_sealed_total", "Datagrams sealed with a key.", a.sealed),
        ("opened", "ctsync_auth_datagrams_opened_total", "Sealed datagrams opened and accepted.", a.opened),
        ("challenges_sent", "ctsync_auth_challenges_sent_total", "Challenges sent to a peer's new epoch.", a.challenges_sent),
        ("challenges_answered", "ctsync_auth_challenges_answered_total", "Challenges answered.", a.challenges_answered),
        ("epochs_admitted", "ctsync_auth_epochs_admitted_total", "Peer epochs admitted after a challenge.", a.epochs_admitted),
    ]
}

/// Authentication refusals by reason (the names `-s` prints).
pub fn auth_refusals(snap: &StatsSnapshot) -> [(&'static str, u64); 8] {
    let a = &snap.auth.counts;
    [
        ("auth_missing", a.missing),
        ("auth_unknown_key", a.unknown_key),
        ("auth_bad_tag", a.bad_tag),
        ("auth_too_old", a.too_old),
        ("auth_replayed", a.replayed),
        ("auth_not_configured", a.not_configured),
        ("epoch_unadmitted", a.epoch_unadmitted),
        ("auth_too_many_senders", a.too_many_senders),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The numeric keys of a struct's JSON form, less `skip`.
    fn json_keys<T: serde::Serialize>(value: &T, skip: &[&str]) -> BTreeSet<String> {
        let v = serde_json::to_value(value).unwrap();
        v.as_object()
            .unwrap()
            .iter()
            .filter(|(k, v)| v.is_u64() && !skip.contains(&k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn row_keys(rows: &[Row]) -> BTreeSet<String> {
        rows.iter().map(|(k, ..)| k.to_string()).collect()
    }

    #[test]
    fn every_counter_of_the_core_kernel_control_and_auth_is_exported() {
        let snap = StatsSnapshot::default();
        assert_eq!(row_keys(&sync_rows(&snap.sync)), json_keys(&snap.sync, &[]));
        let mut daemon = json_keys(&snap.kernel, &["buffer_size"]);
        daemon.extend(json_keys(&snap.control, &[]));
        daemon.extend(json_keys(&snap.network, &["foreign_source"]));
        assert_eq!(row_keys(&daemon_rows(&snap)), daemon);
        let refusals: BTreeSet<String> = auth_refusals(&snap)
            .iter()
            .map(|(k, _)| k.trim_start_matches("auth_").to_string())
            .collect();
        let mut auth = row_keys(&auth_rows(&snap));
        auth.extend(refusals);
        assert_eq!(auth, json_keys(&snap.auth.counts, &[]));
    }
}
