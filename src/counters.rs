//! The daemon's counters, one plain struct per area, and the snapshot that
//! `-s` and `-s --json` render from the same value.
//!
//! Owns: the shapes of the kernel, network, commit, warm standby, queue
//! and digest counters and of `StatsSnapshot`. Must not: count anything
//! itself (each struct is written where its events happen: the sync core,
//! the daemon's kernel path, the control server) or render (see
//! `control::render`).

use crate::cache::CacheStats;
use crate::control::server::ControlStats;
use crate::sync::SyncStats;
use serde::Serialize;

/// Counters of one cache, as `cache internal:` prints them.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheBlock {
    pub active: u64,
    /// The cache's own counters (flattened: the JSON keeps its shape).
    #[serde(flatten)]
    pub counts: CacheStats,
}

/// Counters of one sync link.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkBlock {
    /// "UDP" or "multicast", as conntrackd names them.
    pub transport: String,
    pub device: String,
    /// The link currently used for sending.
    pub active: bool,
    pub up: bool,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub packets_sent: u64,
    pub packets_recv: u64,
    pub errors_send: u64,
    pub errors_recv: u64,
}

/// What this node knows of one peer.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerBlock {
    pub node_id: u32,
    pub epoch: u64,
    pub alive: bool,
    pub flows: u64,
    pub expected_seq: u32,
    /// Milliseconds since a datagram last came from it.
    pub last_heard_ms_ago: u64,
    /// Its datagrams held ahead of a gap (FTFW's reorder buffer).
    pub reordered: u64,
    /// FTFW: its datagrams known to exist and not yet applied here.
    pub rx_lag: u64,
    /// Datagrams of our resend window it has not acknowledged.
    pub unacked: u64,
    /// Bulks sent at its request and received from it, digest mismatches.
    #[serde(flatten)]
    pub counts: crate::sync::PeerCounters,
}

/// The kernel side, counted by the daemon as events and reads arrive.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Events the reader delivered.
    pub events_received: u64,
    /// Events that changed nothing of ours: refused by the filter, caused
    /// by warm standby's writes, or about a mirrored peer flow.
    pub events_filtered: u64,
    /// Event socket overruns (each costs a table re-read).
    pub overruns: u64,
    /// Failed event reads and table reads.
    pub read_failures: u64,
    /// The event socket's receive buffer now.
    pub buffer_size: u64,
    /// Table reads (start-up, `-R`, overruns, the periodic re-read).
    pub table_reads: u64,
    /// Kernel table flushes (`-F`, `-t` when it fires).
    pub flushes: u64,
    /// Times the kernel refused to stop or start the event subscription
    /// around a quiet commit (each refused start is retried).
    pub event_switch_failures: u64,
}

/// Sync datagrams the daemon refused or failed before the core saw them.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    /// Datagrams from an address that is not the link's peer.
    pub foreign_source: u64,
    /// Datagrams the socket would not send.
    pub send_errors: u64,
}

/// Commits (`-c`) since start, and the one running.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitCounters {
    /// Commits finished.
    pub commits: u64,
    /// Flows written, and flows the kernel refused, over every commit.
    pub ok: u64,
    pub failed: u64,
    pub running: bool,
    /// The running (or last) commit's progress.
    pub done: u64,
    pub total: u64,
    /// How long the last commit took, from the request to the last write.
    pub last_ms: u64,
    /// Of that, from the request to its first write into the kernel.
    pub last_first_write_us: u64,
    /// Of that, the time the kernel spent taking its writes.
    pub last_in_kernel_us: u64,
    /// Of that, the time the writing thread waited, runnable, for a CPU
    /// (0 where the kernel keeps no such account).
    pub last_writer_runqueue_us: u64,
    /// How long each finished commit took.
    pub durations: CommitDurations,
    /// Expectations written, and refused, over every commit.
    pub expectations_ok: u64,
    pub expectations_failed: u64,
}

/// Upper bounds (milliseconds) of the commit duration histogram's buckets;
/// the last bucket (+Inf) is `CommitDurations::count`.
pub const COMMIT_BUCKETS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000,
];

/// A histogram of commit durations: `buckets[i]` counts the commits that
/// took at most `COMMIT_BUCKETS_MS[i]` (cumulative, as Prometheus has it).
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitDurations {
    /// The bucket bounds (`COMMIT_BUCKETS_MS`), so the JSON explains itself.
    pub le_ms: [u64; 14],
    pub buckets: [u64; 14],
    pub count: u64,
    /// The sum of the durations, in microseconds.
    pub sum_us: u64,
}

impl Default for CommitDurations {
    fn default() -> CommitDurations {
        CommitDurations {
            le_ms: COMMIT_BUCKETS_MS,
            buckets: [0; 14],
            count: 0,
            sum_us: 0,
        }
    }
}

/// A duration in whole microseconds, saturating.
pub fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl CommitDurations {
    /// Count one commit that took `took`.
    pub fn observe(&mut self, took: std::time::Duration) {
        let us = micros(took);
        for (bucket, le_ms) in self.buckets.iter_mut().zip(COMMIT_BUCKETS_MS) {
            if us <= le_ms.saturating_mul(1000) {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

/// The kernel conntrack table's use in the daemon's network namespace
/// (`nf_conntrack_count` against `nf_conntrack_max`).
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableUse {
    pub count: u64,
    pub max: u64,
}

/// Warm standby: peers' changes written into our kernel.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmCounters {
    /// Peer changes written into the kernel.
    pub written: u64,
    /// Writes the kernel refused (`-c` writes them).
    pub failed: u64,
    /// Mirrored flows the kernel lost (expired, deleted by someone else)
    /// and that were written again.
    pub restored: u64,
    /// Peer flows not (yet) in our kernel.
    pub pending: u64,
}

/// How much is waiting where.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLengths {
    /// Flows waiting to be sent.
    pub send_queue: u64,
    /// Datagrams sent and not yet acknowledged, and the most there may be.
    pub resend_window: u64,
    pub window: u64,
    /// Datagrams received ahead of a gap, over every peer.
    pub reorder: u64,
}

/// The anti-entropy digests of the caches.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub internal: u64,
    /// XOR over the peers' caches.
    pub external: u64,
    /// After a local flush: no digest goes out until `-R` or `-B`.
    pub paused: bool,
}

/// Authentication of the sync traffic.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthBlock {
    /// False: the sync traffic is not authenticated (a warning in `-s`).
    pub enabled: bool,
    /// Keys loaded: id and check value ("0a1b2c3d"), lowest id first.
    pub keys: Vec<KeyBlock>,
    /// The id of the key that seals what we send.
    pub send_key: Option<u8>,
    /// Counters (refusals by reason, challenges, per key id use).
    #[serde(flatten)]
    pub counts: crate::auth::AuthStats,
}

#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyBlock {
    pub id: u8,
    pub check: String,
}

/// Everything `-s` can print, gathered by the daemon at one instant.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub uptime_s: u64,
    pub internal: CacheBlock,
    pub external: CacheBlock,
    pub links: Vec<LinkBlock>,
    pub peers: Vec<PeerBlock>,
    /// The replication core's counters.
    pub sync: SyncStats,
    pub network: NetworkCounters,
    pub kernel: KernelCounters,
    pub commit: CommitCounters,
    /// `None` without warm standby.
    pub warm: Option<WarmCounters>,
    pub queues: QueueLengths,
    pub digests: Digests,
    pub control: ControlStats,
    pub auth: AuthBlock,
    /// `None` where the kernel does not say (no conntrack module).
    pub table: Option<TableUse>,
    /// The expectation caches (`-s expect`), and the expectation commits.
    pub expectations: ExpectBlock,
    /// The link that speaks conntrackd's protocol, if one does.
    pub conntrackd_link: Option<CdLinkBlock>,
}

/// `-s expect`: the expectation caches in the cache block's layout, and
/// what commits and warm standby wrote of them.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectBlock {
    /// Whether expectations are replicated (`[sync] expectations`).
    pub enabled: bool,
    pub internal: CacheBlock,
    pub external: CacheBlock,
    pub committed: u64,
    pub commit_failed: u64,
    /// Peers' expectations refused because the peer's view was full.
    pub refused_full: u64,
}

impl StatsSnapshot {
    /// Datagrams (and messages) dropped, every reason: malformed, or
    /// refused by a check or a limit.
    pub fn malformed(&self) -> u64 {
        self.sync.malformed.total() + self.network.foreign_source
    }

    /// Dropped datagrams by reason, the core's and the daemon's: those
    /// that happened.
    pub fn malformed_by_reason(&self) -> Vec<(&'static str, u64)> {
        self.sync
            .malformed
            .by_reason()
            .into_iter()
            .chain([("foreign_source", self.network.foreign_source)])
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// `-s --json`: the conntrackd link's counters.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CdLinkBlock {
    pub peer_node_id: u32,
    pub mode: &'static str,
    pub handshake_done: bool,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub messages_received: u64,
    pub malformed: u64,
    /// Refused messages by reason (conntrackd's `-s network` counters).
    pub malformed_by_reason: Vec<(String, u64)>,
    pub invalid_changes: u64,
    pub lost: u64,
    pub before: u64,
    /// Messages received with HELLO (the peer is new or restarted, and says
    /// so until our HELLO_BACK reaches it).
    pub hellos_received: u64,
    /// FTFW: starts and restarts of the peer seen (a run of HELLO
    /// messages, counted as it ends), each answered with our whole table.
    pub peer_restarts: u64,
    /// FTFW: our messages the full resend queue dropped before the peer
    /// acknowledged them, and the bulks sent for the NACK that followed.
    pub resend_overflow: u64,
    pub overflow_bulks: u64,
    /// Objects and controls resent because the peer nacked them (FTFW).
    pub resent_on_nack: u64,
    /// Resyncs the peer asked for (its `-n` or StartupResync).
    pub resync_requests: u64,
    pub resend_queue: u64,
    pub send_errors: u64,
    pub foreign_source: u64,
    /// Since the last datagram from the peer's address (`None`: none yet).
    pub last_heard_ms_ago: Option<u64>,
}
