//! The metrics of one `StatsSnapshot`, as a Prometheus exposition: every
//! counter `-s` shows (named `ctsync_…`, with units in the names), per
//! peer and per link figures, the kernel table's use and the commit
//! duration histogram.
//!
//! Owns: the metric names, their help texts and labels. Must not: gather
//! counters (the daemon fills the snapshot, as for `-s --json`) or read
//! the clock.

use super::exposition::{Exposition, Kind};
use super::rows::{auth_refusals, auth_rows, daemon_rows, sync_rows};
use crate::counters::{StatsSnapshot, COMMIT_BUCKETS_MS};

/// The whole exposition of `snap`.
pub fn render(snap: &StatsSnapshot) -> String {
    let mut e = Exposition::new();
    e.family(
        "ctsync_build_info",
        "The ctsyncd version serving these metrics.",
        Kind::Gauge,
    )
    .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u64);
    e.single(
        "ctsync_uptime_seconds",
        "Seconds since the daemon started.",
        Kind::Gauge,
        snap.uptime_s,
    );
    caches(&mut e, snap);
    drops(&mut e, snap);
    for rows in [sync_rows(&snap.sync), daemon_rows(snap), auth_rows(snap)] {
        for (_, name, help, value) in rows {
            e.single(name, help, Kind::Counter, value);
        }
    }
    e.single(
        "ctsync_kernel_event_buffer_bytes",
        "The event socket's receive buffer now.",
        Kind::Gauge,
        snap.kernel.buffer_size,
    );
    queues(&mut e, snap);
    commits(&mut e, snap);
    warm(&mut e, snap);
    conntrackd_link(&mut e, snap);
    auth(&mut e, snap);
    links(&mut e, snap);
    peers(&mut e, snap);
    table(&mut e, snap);
    e.finish()
}

fn caches(e: &mut Exposition, snap: &StatsSnapshot) {
    let both = [("internal", &snap.internal), ("external", &snap.external)];
    e.family(
        "ctsync_cache_flows",
        "Flows in the cache (internal: ours; external: every peer's).",
        Kind::Gauge,
    );
    for (cache, b) in both {
        e.sample(&[("cache", cache)], b.active);
    }
    e.family(
        "ctsync_cache_changes_total",
        "Cache entries created, updated and destroyed.",
        Kind::Counter,
    );
    for (cache, b) in both {
        for (change, n) in [
            ("created", b.counts.created),
            ("updated", b.counts.updated),
            ("destroyed", b.counts.destroyed),
        ] {
            e.sample(&[("cache", cache), ("change", change)], n);
        }
    }
    e.family(
        "ctsync_cache_change_failures_total",
        "Cache creations, updates and destructions that failed.",
        Kind::Counter,
    );
    for (cache, b) in both {
        for (change, n) in [
            ("created", b.counts.create_failed),
            ("updated", b.counts.update_failed),
            ("destroyed", b.counts.destroy_failed),
        ] {
            e.sample(&[("cache", cache), ("change", change)], n);
        }
    }
}

/// Dropped datagrams by reason: the core's and the daemon's (every
/// reason, zero or not, so the series exist from the start).
fn drops(e: &mut Exposition, snap: &StatsSnapshot) {
    e.family("ctsync_dropped_total", "Sync datagrams (or messages) dropped, by reason (-s: Malformed msgs and ctsync's dropped by reason).", Kind::Counter);
    for (reason, n) in snap.sync.malformed.by_reason() {
        e.sample(&[("reason", reason)], n);
    }
    e.sample(&[("reason", "foreign_source")], snap.network.foreign_source);
}

fn queues(e: &mut Exposition, snap: &StatsSnapshot) {
    let q = &snap.queues;
    e.single(
        "ctsync_send_queue_flows",
        "Flows waiting to be sent.",
        Kind::Gauge,
        q.send_queue,
    );
    e.single(
        "ctsync_resend_window_datagrams",
        "Datagrams sent and not yet acknowledged by every live peer.",
        Kind::Gauge,
        q.resend_window,
    );
    e.single(
        "ctsync_resend_window_max_datagrams",
        "The most datagrams the resend window may hold.",
        Kind::Gauge,
        q.window,
    );
    e.single(
        "ctsync_reorder_buffer_datagrams",
        "Datagrams received ahead of a gap, every peer.",
        Kind::Gauge,
        q.reorder,
    );
    e.single(
        "ctsync_digests_paused",
        "1 after a local flush: no digest goes out until -R or -B.",
        Kind::Gauge,
        snap.digests.paused,
    );
}

fn commits(e: &mut Exposition, snap: &StatsSnapshot) {
    let c = &snap.commit;
    e.single(
        "ctsync_commits_total",
        "Commits (-c) finished.",
        Kind::Counter,
        c.commits,
    );
    e.family(
        "ctsync_commit_flows_total",
        "Flows commits wrote into the kernel (ok) and flows the kernel refused (failed).",
        Kind::Counter,
    )
    .sample(&[("result", "ok")], c.ok)
    .sample(&[("result", "failed")], c.failed);
    e.single(
        "ctsync_commit_running",
        "1 while a commit runs.",
        Kind::Gauge,
        c.running,
    );
    e.single(
        "ctsync_commit_progress_flows",
        "Flows the running (or last) commit has written.",
        Kind::Gauge,
        c.done,
    );
    e.single(
        "ctsync_commit_planned_flows",
        "Flows the running (or last) commit writes in all.",
        Kind::Gauge,
        c.total,
    );
    e.single(
        "ctsync_commit_last_duration_seconds",
        "How long the last commit took.",
        Kind::Gauge,
        c.last_ms as f64 / 1000.0,
    );
    e.single(
        "ctsync_commit_last_first_write_seconds",
        "Of the last commit, the time from the request to its first write into the kernel.",
        Kind::Gauge,
        c.last_first_write_us as f64 / 1e6,
    );
    e.single(
        "ctsync_commit_last_in_kernel_seconds",
        "Of the last commit, the time the kernel spent taking its writes (the rest is ctsync's).",
        Kind::Gauge,
        c.last_in_kernel_us as f64 / 1e6,
    );
    e.single(
        "ctsync_commit_last_writer_runqueue_seconds",
        "Of the last commit, the time its writing thread waited for a CPU while runnable (other threads or programs ran on it).",
        Kind::Gauge,
        c.last_writer_runqueue_us as f64 / 1e6,
    );
    let d = &c.durations;
    let buckets: Vec<(f64, u64)> = COMMIT_BUCKETS_MS
        .iter()
        .zip(d.buckets)
        .map(|(ms, n)| (*ms as f64 / 1000.0, n))
        .collect();
    e.family(
        "ctsync_commit_duration_seconds",
        "How long each commit took, from the request to the last flow written.",
        Kind::Histogram,
    )
    .histogram(&[], &buckets, d.sum_us as f64 / 1e6, d.count);
}

fn warm(e: &mut Exposition, snap: &StatsSnapshot) {
    let Some(w) = &snap.warm else {
        return;
    };
    e.single(
        "ctsync_warm_standby_written_total",
        "Warm standby: peer changes written into the kernel.",
        Kind::Counter,
        w.written,
    );
    e.single(
        "ctsync_warm_standby_failed_total",
        "Warm standby: writes the kernel refused.",
        Kind::Counter,
        w.failed,
    );
    e.single(
        "ctsync_warm_standby_restored_total",
        "Warm standby: mirrored flows the kernel lost and that were written again.",
        Kind::Counter,
        w.restored,
    );
    e.single(
        "ctsync_warm_standby_pending_flows",
        "Warm standby: peer flows not (yet) in our kernel.",
        Kind::Gauge,
        w.pending,
    );
}

/// A link speaking conntrackd's protocol, when there is one.
fn conntrackd_link(e: &mut Exposition, snap: &StatsSnapshot) {
    let Some(c) = &snap.conntrackd_link else {
        return;
    };
    e.single(
        "ctsync_conntrackd_link_handshake_done",
        "FTFW: 1 once the conntrackd peer answered our HELLO.",
        Kind::Gauge,
        c.handshake_done,
    );
    if let Some(ms) = c.last_heard_ms_ago {
        e.single(
            "ctsync_conntrackd_link_last_heard_seconds",
            "Seconds since a datagram last came from the conntrackd peer (absent until one did).",
            Kind::Gauge,
            ms as f64 / 1000.0,
        );
    }
    e.family(
        "ctsync_conntrackd_link_datagrams_total",
        "Datagrams on the conntrackd link.",
        Kind::Counter,
    )
    .sample(&[("direction", "sent")], c.datagrams_sent)
    .sample(&[("direction", "received")], c.datagrams_received);
    e.single(
        "ctsync_conntrackd_link_sent_bytes_total",
        "Bytes sent to the conntrackd peer.",
        Kind::Counter,
        c.bytes_sent,
    );
    e.single(
        "ctsync_conntrackd_link_received_messages_total",
        "Messages received from the conntrackd peer.",
        Kind::Counter,
        c.messages_received,
    );
    e.family(
        "ctsync_conntrackd_link_refused_total",
        "The conntrackd peer's messages refused: malformed, by reason, or changes that failed our checks (invalid_change).",
        Kind::Counter,
    );
    for (reason, n) in &c.malformed_by_reason {
        e.sample(&[("reason", reason)], *n);
    }
    e.sample(&[("reason", "invalid_change")], c.invalid_changes);
    e.single(
        "ctsync_conntrackd_link_lost_messages_total",
        "Gaps in the conntrackd peer's sequence numbers.",
        Kind::Counter,
        c.lost,
    );
    e.single(
        "ctsync_conntrackd_link_resent_on_nack_total",
        "FTFW: our messages the conntrackd peer asked for again.",
        Kind::Counter,
        c.resent_on_nack,
    );
    e.single(
        "ctsync_conntrackd_link_resync_requests_total",
        "Resyncs the conntrackd peer asked for (its -n or StartupResync).",
        Kind::Counter,
        c.resync_requests,
    );
    e.single(
        "ctsync_conntrackd_link_peer_restarts_total",
        "Starts and restarts of the conntrackd peer seen (each answered with our whole table).",
        Kind::Counter,
        c.peer_restarts,
    );
    e.single(
        "ctsync_conntrackd_link_resend_queue_messages",
        "FTFW: our messages the conntrackd peer has not acknowledged.",
        Kind::Gauge,
        c.resend_queue,
    );
}

fn auth(e: &mut Exposition, snap: &StatsSnapshot) {
    let a = &snap.auth;
    e.single(
        "ctsync_auth_enabled",
        "1 if the sync traffic is authenticated (keys loaded).",
        Kind::Gauge,
        a.enabled,
    );
    e.family(
        "ctsync_auth_refused_total",
        "Datagrams the authentication gate refused, by reason.",
        Kind::Counter,
    );
    for (reason, n) in auth_refusals(snap) {
        e.sample(&[("reason", reason)], n);
    }
    e.family(
        "ctsync_auth_key_info",
        "Keys loaded: id, check value, and whether it seals what we send.",
        Kind::Gauge,
    );
    for k in &a.keys {
        let id = k.id.to_string();
        let sending = if a.send_key == Some(k.id) {
            "true"
        } else {
            "false"
        };
        e.sample(
            &[("key_id", &id), ("check", &k.check), ("sending", sending)],
            1u64,
        );
    }
    let per_key: Vec<(String, u64, u64)> = a
        .counts
        .key_use
        .iter()
        .map(|(id, u)| (id.to_string(), u.sealed, u.opened))
        .collect();
    e.family(
        "ctsync_auth_key_datagrams_total",
        "Datagrams sealed and opened with each key.",
        Kind::Counter,
    );
    for (id, sealed, opened) in &per_key {
        e.sample(&[("key_id", id), ("use", "sealed")], *sealed);
        e.sample(&[("key_id", id), ("use", "opened")], *opened);
    }
}

/// A link's state: failed when down, else active or standby.
fn link_state(l: &crate::counters::LinkBlock) -> &'static str {
    match (l.up, l.active) {
        (false, _) => "failed",
        (true, true) => "active",
        (true, false) => "standby",
    }
}

fn links(e: &mut Exposition, snap: &StatsSnapshot) {
    let labelled: Vec<(String, &crate::counters::LinkBlock)> = snap
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l))
        .collect();
    e.family("ctsync_link_state", "Each sync link's state: 1 for the state it is in (active: carries data; standby: up, not used; failed: down).", Kind::Gauge);
    for (i, l) in &labelled {
        let now = link_state(l);
        for state in ["active", "standby", "failed"] {
            e.sample(
                &[
                    ("index", i),
                    ("interface", &l.device),
                    ("transport", &l.transport),
                    ("state", state),
                ],
                state == now,
            );
        }
    }
    type Field = fn(&crate::counters::LinkBlock) -> u64;
    let families: [(&'static str, &str, Field); 6] = [
        (
            "ctsync_link_sent_bytes_total",
            "Bytes sent on the link.",
            |l| l.bytes_sent,
        ),
        (
            "ctsync_link_received_bytes_total",
            "Bytes received on the link.",
            |l| l.bytes_recv,
        ),
        (
            "ctsync_link_sent_datagrams_total",
            "Datagrams sent on the link.",
            |l| l.packets_sent,
        ),
        (
            "ctsync_link_received_datagrams_total",
            "Datagrams received on the link.",
            |l| l.packets_recv,
        ),
        (
            "ctsync_link_send_errors_total",
            "Datagrams the link's socket would not send.",
            |l| l.errors_send,
        ),
        (
            "ctsync_link_receive_errors_total",
            "Malformed datagrams received on the link.",
            |l| l.errors_recv,
        ),
    ];
    for (name, help, field) in families {
        e.family(name, help, Kind::Counter);
        for (i, l) in &labelled {
            e.sample(
                &[
                    ("index", i),
                    ("interface", &l.device),
                    ("transport", &l.transport),
                ],
                field(l),
            );
        }
    }
}

fn peers(e: &mut Exposition, snap: &StatsSnapshot) {
    let ids: Vec<(String, &crate::counters::PeerBlock)> = snap
        .peers
        .iter()
        .map(|p| (p.node_id.to_string(), p))
        .collect();
    type Field = fn(&crate::counters::PeerBlock) -> super::exposition::Value;
    let families: [(&'static str, &str, Kind, Field); 10] = [
        (
            "ctsync_peer_up",
            "1 if the peer was heard within the peer timeout.",
            Kind::Gauge,
            |p| p.alive.into(),
        ),
        (
            "ctsync_peer_last_heard_seconds",
            "Seconds since a datagram last came from the peer.",
            Kind::Gauge,
            |p| (p.last_heard_ms_ago as f64 / 1000.0).into(),
        ),
        (
            "ctsync_peer_flows",
            "Flows in the peer's external cache (what we hold of its table).",
            Kind::Gauge,
            |p| p.flows.into(),
        ),
        (
            "ctsync_peer_sequence_lag_datagrams",
            "FTFW: the peer's datagrams known to exist and not yet applied here.",
            Kind::Gauge,
            |p| p.rx_lag.into(),
        ),
        (
            "ctsync_peer_reorder_buffer_datagrams",
            "The peer's datagrams held ahead of a gap.",
            Kind::Gauge,
            |p| p.reordered.into(),
        ),
        (
            "ctsync_peer_unacked_datagrams",
            "Datagrams of our resend window the peer has not acknowledged.",
            Kind::Gauge,
            |p| p.unacked.into(),
        ),
        (
            "ctsync_peer_expected_sequence",
            "The next sequence number we will apply from the peer.",
            Kind::Gauge,
            |p| u64::from(p.expected_seq).into(),
        ),
        (
            "ctsync_peer_bulks_sent_total",
            "Full bulks of our table started at the peer's request (a bulk goes to every peer).",
            Kind::Counter,
            |p| p.counts.bulks_sent.into(),
        ),
        (
            "ctsync_peer_bulks_received_total",
            "Full bulks of its table the peer began sending us.",
            Kind::Counter,
            |p| p.counts.bulks_received.into(),
        ),
        (
            "ctsync_peer_digest_mismatches_total",
            "The peer's digests that disagreed with our view of its table.",
            Kind::Counter,
            |p| p.counts.digest_mismatches.into(),
        ),
    ];
    for (name, help, kind, field) in families {
        e.family(name, help, kind);
        for (id, p) in &ids {
            e.sample(&[("node_id", id)], field(p));
        }
    }
}

fn table(e: &mut Exposition, snap: &StatsSnapshot) {
    let Some(t) = snap.table else {
        return;
    };
    e.single("ctsync_conntrack_entries", "Entries in the kernel conntrack table (nf_conntrack_count of the daemon's network namespace).", Kind::Gauge, t.count);
    e.single(
        "ctsync_conntrack_entries_max",
        "The kernel conntrack table's limit (nf_conntrack_max).",
        Kind::Gauge,
        t.max,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{CommitDurations, LinkBlock, PeerBlock, TableUse};
    use std::collections::BTreeSet;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_is_the_count() {
        let mut d = CommitDurations::default();
        for ms in [3, 7, 7, 40, 200_000] {
            d.observe(Duration::from_millis(ms));
        }
        let snap = StatsSnapshot {
            commit: crate::counters::CommitCounters {
                durations: d,
                commits: 5,
                ..Default::default()
            },
            ..Default::default()
        };
        let out = render(&snap);
        let bucket = |le: &str| -> u64 {
            let prefix = format!("ctsync_commit_duration_seconds_bucket{{le=\"{le}\"}} ");
            let line = out.lines().find(|l| l.starts_with(&prefix)).unwrap();
            line[prefix.len()..].parse().unwrap()
        };
        assert_eq!(bucket("0.005"), 1);
        assert_eq!(bucket("0.01"), 3);
        assert_eq!(bucket("0.025"), 3);
        assert_eq!(bucket("0.05"), 4);
        assert_eq!(bucket("120"), 4, "200 s is above every bound");
        assert_eq!(bucket("+Inf"), 5);
        let counts: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("ctsync_commit_duration_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), COMMIT_BUCKETS_MS.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert!(out.contains("\nctsync_commit_duration_seconds_count 5\n"));
        assert!(
            out.contains("\nctsync_commit_duration_seconds_sum 200.057\n"),
            "{out}"
        );
    }

    #[test]
    fn links_peers_and_table_carry_their_labels() {
        let snap = StatsSnapshot {
            links: vec![
                LinkBlock {
                    transport: "UDP".into(),
                    device: "sync\"0".into(),
                    active: true,
                    up: true,
                    bytes_sent: 680,
                    ..Default::default()
                },
                LinkBlock {
                    transport: "multicast".into(),
                    device: "sync1".into(),
                    up: false,
                    ..Default::default()
                },
            ],
            peers: vec![PeerBlock {
                node_id: 7,
                alive: true,
                flows: 12,
                last_heard_ms_ago: 1_500,
                rx_lag: 3,
                unacked: 2,
                counts: crate::sync::PeerCounters {
                    bulks_received: 1,
                    ..Default::default()
                },
                ..Default::default()
            }],
            table: Some(TableUse { count: 9, max: 100 }),
            conntrackd_link: Some(crate::counters::CdLinkBlock {
                handshake_done: true,
                last_heard_ms_ago: Some(250),
                datagrams_received: 5,
                malformed_by_reason: vec![("Truncated".into(), 2)],
                invalid_changes: 1,
                resend_queue: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = render(&snap);
        let l0 = "index=\"0\",interface=\"sync\\\"0\",transport=\"UDP\"";
        let l1 = "index=\"1\",interface=\"sync1\",transport=\"multicast\"";
        for line in [
            format!("ctsync_link_state{{{l0},state=\"active\"}} 1"),
            format!("ctsync_link_state{{{l0},state=\"failed\"}} 0"),
            format!("ctsync_link_state{{{l1},state=\"failed\"}} 1"),
            format!("ctsync_link_state{{{l1},state=\"standby\"}} 0"),
            format!("ctsync_link_sent_bytes_total{{{l0}}} 680"),
            "ctsync_peer_up{node_id=\"7\"} 1".into(),
            "ctsync_peer_last_heard_seconds{node_id=\"7\"} 1.5".into(),
            "ctsync_peer_flows{node_id=\"7\"} 12".into(),
            "ctsync_peer_sequence_lag_datagrams{node_id=\"7\"} 3".into(),
            "ctsync_peer_unacked_datagrams{node_id=\"7\"} 2".into(),
            "ctsync_peer_bulks_received_total{node_id=\"7\"} 1".into(),
            "ctsync_conntrack_entries 9".into(),
            "ctsync_conntrackd_link_handshake_done 1".into(),
            "ctsync_conntrackd_link_last_heard_seconds 0.25".into(),
            "ctsync_conntrackd_link_datagrams_total{direction=\"received\"} 5".into(),
            "ctsync_conntrackd_link_refused_total{reason=\"Truncated\"} 2".into(),
            "ctsync_conntrackd_link_refused_total{reason=\"invalid_change\"} 1".into(),
            "ctsync_conntrackd_link_resend_queue_messages 4".into(),
            "ctsync_conntrack_entries_max 100".into(),
            "ctsync_dropped_total{reason=\"foreign_source\"} 0".into(),
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in:\n{out}");
        }
        // Without the kernel's figures, no table metrics (not zeros); no
        // conntrackd link, none of its metrics; a peer not heard yet, no
        // last-heard figure.
        let out = render(&StatsSnapshot::default());
        assert!(!out.contains("ctsync_conntrack_entries"));
        assert!(!out.contains("ctsync_conntrackd_link"));
        let quiet = StatsSnapshot {
            conntrackd_link: Some(Default::default()),
            ..Default::default()
        };
        let out = render(&quiet);
        assert!(out.contains("ctsync_conntrackd_link_handshake_done 0"));
        assert!(!out.contains("ctsync_conntrackd_link_last_heard_seconds"));
    }

    #[test]
    fn every_family_has_help_and_type_once_and_its_samples_follow() {
        let snap = StatsSnapshot {
            warm: Some(Default::default()),
            conntrackd_link: Some(crate::counters::CdLinkBlock {
                last_heard_ms_ago: Some(1),
                malformed_by_reason: vec![("BadType".into(), 1)],
                ..Default::default()
            }),
            peers: vec![PeerBlock::default()],
            ..Default::default()
        };
        let out = render(&snap);
        let mut seen = BTreeSet::new();
        let mut current = String::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} twice");
                current = name;
            } else if !line.starts_with('#') {
                let sample = line.split(['{', ' ']).next().unwrap();
                let family = sample
                    .strip_suffix("_bucket")
                    .or(sample.strip_suffix("_sum"))
                    .or(sample.strip_suffix("_count"))
                    .filter(|f| *f == current)
                    .unwrap_or(sample);
                assert_eq!(family, current, "{line}");
                assert!(family.starts_with("ctsync_"));
            }
        }
        assert!(seen.len() > 80, "{}", seen.len());
    }
}
