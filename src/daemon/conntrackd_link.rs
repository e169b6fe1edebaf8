//! A link that speaks conntrackd's own sync protocol (`[[link]] protocol =
//! "conntrackd"`), for a cluster moving from conntrackd one node at a time.
//!
//! The conntrackd peer's flows and expectations land in an external cache
//! of the sync core under a node id of their own (`PEER_ID_BASE`), so `-e`,
//! `-c`, warm standby, `-s` and the metrics treat them as any peer's. Our
//! replicated changes go to it as conntrackd messages, in the `[sync]` mode
//! (FTFW, NOTRACK or ALARM), through `crate::conntrackd_wire::CdNode`.
//!
//! Owns: the `CdLink` (the protocol state and its socket) and the daemon's
//! calls into it. Must not: decide what is replicated (the routing of
//! kernel events does, for both protocols), or decode conntrackd's bytes
//! (`crate::conntrackd_wire` does).

use super::Daemon;
use crate::config::{Config, LinkConfig, LinkProtocol, SyncMode};
use crate::conntrackd_wire::{CdConfig, CdMode, CdNode, CdStats, Codec, Object, Op, PeerLevel};
use crate::counters::CdLinkBlock;
use crate::expect::{ExpectKey, Expectation};
use crate::flow::{Flow, FlowKey};
use crate::sharded_table::Part;
use crate::transport::{self, Link, Received};
use crate::wire::{Message, WireFlow, WireKey};
use tokio::sync::mpsc;

/// The node id a conntrackd peer's flows are kept under (its protocol has
/// none): `-e --json` and the metrics show this id.
pub(super) const PEER_ID_BASE: u32 = 0xC0AD_0000;

/// The conntrackd peer, and the socket that reaches it.
pub(super) struct CdLink {
    pub node: CdNode,
    pub link: Link,
    pub peer_id: u32,
    /// Datagrams whose changes did not pass our checks (counted apart from
    /// the protocol's own refusals).
    pub invalid_changes: u64,
    pub send_errors: u64,
    /// Datagrams from an address other than the configured peer's.
    pub foreign_source: u64,
    /// When the peer's last resync request refilled the link from the
    /// internal cache (a walk of the whole table: at most once a second).
    refilled_ms: Option<u64>,
    /// The comparison after a healing re-read, while it runs.
    catch_up: Option<CatchUp>,
    /// The next part of the internal cache a refill (`cd_refill`) queues,
    /// while one runs.
    refill: Option<usize>,
    /// When a datagram last came from the peer's address (the owner's
    /// milliseconds).
    heard_ms: Option<u64>,
}

/// The comparison of the internal cache with what the conntrackd peer was
/// sent, a part of the cache per turn of the daemon's loop: at a million
/// flows the whole walk takes about a second, which no event should wait
/// for. What changes meanwhile reaches the peer as events anyway; the
/// peer's record counts the flows the walk has not seen (`CdNode`'s
/// sweep), so the flows we no longer hold are looked for only when there
/// are some.
struct CatchUp {
    started: std::time::Instant,
    /// The next part of the internal cache to compare.
    next_part: usize,
    /// The longest turn so far.
    longest: std::time::Duration,
}

/// The internal cache is compared (and refilled) in this many parts, one
/// a turn (about 16,000 flows each at a million).
const CATCH_UP_PARTS: usize = 64;

/// Least time between two refills for the peer's resync requests.
const REFILL_EVERY_MS: u64 = 1000;

fn mode_name(m: CdMode) -> &'static str {
    match m {
        CdMode::Ftfw => "ftfw",
        CdMode::Notrack => "notrack",
        CdMode::Alarm => "alarm",
    }
}

/// The configured conntrackd link, if any.
pub(super) fn configured(config: &Config) -> Option<(usize, &LinkConfig, PeerLevel)> {
    config
        .links
        .iter()
        .enumerate()
        .find_map(|(i, l)| match l.protocol {
            LinkProtocol::Conntrackd(v) => Some((i, l, v)),
            LinkProtocol::Ctsync => None,
        })
}

/// Open the conntrackd link (when one is configured) and start reading it
/// into `feed`.
pub(super) fn open(
    config: &Config,
    feed: mpsc::Sender<Received>,
    seed: u64,
) -> std::io::Result<Option<CdLink>> {
    let Some((index, link, version)) = configured(config) else {
        return Ok(None);
    };
    let Some(spec) = super::setup::spec_of(link) else {
        return Ok(None);
    };
    let socket = transport::open(&spec)?;
    tokio::spawn(socket.clone().read_into(index, feed));
    let mode = match config.sync.mode {
        SyncMode::Ftfw => CdMode::Ftfw,
        SyncMode::Notrack => CdMode::Notrack,
        SyncMode::Alarm => CdMode::Alarm,
    };
    let cfg = CdConfig {
        mode,
        codec: Codec {
            level: version,
            // As conntrackd: no timeout on the wire with a CommitTimeout.
            send_timeout: config.kernel.commit_timeout.is_none(),
            tcp_window_tracking: config.kernel.tcp_window_tracking,
        },
        mtu: config.sync.mtu as usize,
        refresh_time_s: config.sync.alarm_refresh_s,
        seed,
        ..CdConfig::default()
    };
    let unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let started_ms = 0;
    tracing::info!(
        device = %link.interface,
        mode = mode_name(mode),
        ?version,
        "a link speaks conntrackd's protocol"
    );
    Ok(Some(CdLink {
        node: CdNode::new(cfg, unix_secs, started_ms),
        link: socket,
        peer_id: PEER_ID_BASE + u32::try_from(index).unwrap_or(0),
        invalid_changes: 0,
        send_errors: 0,
        foreign_source: 0,
        refilled_ms: None,
        catch_up: None,
        refill: None,
        heard_ms: None,
    }))
}

/// A change the conntrackd peer sent, as one of our messages; `None` when
/// it does not pass the checks our own messages pass.
fn message_of(op: Op, object: Object) -> Option<Message> {
    let msg = match (op, object) {
        (Op::New | Op::Update, Object::Flow(f)) => {
            let wf = WireFlow::from(&f);
            wf.validate().ok()?;
            Message::Upsert(wf)
        }
        (Op::Delete, Object::Flow(f)) => {
            let wk = WireKey::from(&f.key());
            wk.validate().ok()?;
            Message::Delete(wk)
        }
        (Op::New | Op::Update, Object::Expect(e)) => Message::ExpectUpsert(Box::new(e)),
        (Op::Delete, Object::Expect(e)) => Message::ExpectDelete(Box::new(e.key())),
    };
    Some(msg)
}

/// Two states of one expectation, its timeout (which only counts down)
/// aside.
fn same_but_timeout(a: &Expectation, b: &Expectation) -> bool {
    let timeless = |e: &Expectation| Expectation {
        timeout: 0,
        ..e.clone()
    };
    timeless(a) == timeless(b)
}

impl CdLink {
    /// The counters of `-s --json`, at the owner's `now_ms`.
    pub fn block(&self, now_ms: u64) -> CdLinkBlock {
        let s: CdStats = self.node.stats();
        let mut by_reason: Vec<(String, u64)> = s
            .rejected
            .iter()
            .map(|(r, n)| (format!("{r:?}"), *n))
            .collect();
        by_reason.sort();
        CdLinkBlock {
            peer_node_id: self.peer_id,
            mode: mode_name(self.node.config().mode),
            handshake_done: self.node.handshake_done(),
            datagrams_sent: s.datagrams_sent,
            bytes_sent: s.bytes_sent,
            datagrams_received: s.datagrams_received,
            messages_received: s.messages_received,
            malformed: s.malformed(),
            malformed_by_reason: by_reason,
            invalid_changes: self.invalid_changes,
            lost: s.lost,
            before: s.before,
            hellos_received: s.hellos,
            peer_restarts: s.peer_restarts,
            resend_overflow: s.rs_overflow,
            overflow_bulks: s.overflow_bulks,
            resent_on_nack: s.nacked,
            resync_requests: s.resync_requests,
            resend_queue: self.node.resend_queue_len() as u64,
            send_errors: self.send_errors,
            foreign_source: self.foreign_source,
            last_heard_ms_ago: self.heard_ms.map(|at| now_ms.saturating_sub(at)),
        }
    }
}

impl Daemon {
    /// A replicated local change, for the conntrackd peer too (at the
    /// owner's `now`, milliseconds).
    pub(super) fn cd_flow(&mut self, flow: &Flow, now: u64) {
        if let Some(cd) = &mut self.cd {
            cd.node.local_flow(flow.clone(), now);
        }
    }

    pub(super) fn cd_flow_gone(&mut self, key: &FlowKey, now: u64) {
        if let Some(cd) = &mut self.cd {
            cd.node.local_flow_gone(key, now);
        }
    }

    pub(super) fn cd_expect(&mut self, e: &Expectation) {
        let now = self.now_ms();
        if let Some(cd) = &mut self.cd {
            cd.node.local_expect(e.clone(), now);
        }
    }

    pub(super) fn cd_expect_gone(&mut self, key: &ExpectKey) {
        let now = self.now_ms();
        if let Some(cd) = &mut self.cd {
            cd.node.local_expect_gone(key, now);
        }
    }

    /// After a re-read that replicates what it found (an overrun's heal, or
    /// the periodic re-read): the sync core sent the differences to the
    /// ctsync links; the conntrackd peer gets them here. Our flows whose
    /// state differs from what the peer was last sent go out as updates,
    /// those no longer in the internal cache as deletes. A peer's flow
    /// committed into our kernel is not sent back (as for its events).
    /// Starts the comparison (anew, if one runs) and takes its first turn;
    /// `cd_catch_up_turn` takes the rest, one a turn of the loop.
    pub(super) fn cd_catch_up(&mut self) {
        let Some(cd) = &mut self.cd else {
            return;
        };
        cd.node.begin_flow_sweep();
        cd.catch_up = Some(CatchUp {
            started: std::time::Instant::now(),
            next_part: 0,
            longest: std::time::Duration::ZERO,
        });
        self.cd_catch_up_turn();
    }

    /// A comparison or a refill for the conntrackd peer is under way.
    pub(super) fn cd_walking(&self) -> bool {
        self.cd
            .as_ref()
            .is_some_and(|cd| cd.catch_up.is_some() || cd.refill.is_some())
    }

    /// A turn of each walk of the internal cache under way.
    pub(super) fn cd_walk_turn(&mut self) {
        self.cd_catch_up_turn();
        self.cd_refill_turn();
    }

    /// One part of the comparison `cd_catch_up` started; after the last,
    /// the deletes of what the peer holds and we do not.
    fn cd_catch_up_turn(&mut self) {
        let now = self.now_ms();
        let Some(CdLink { node, catch_up, .. }) = &mut self.cd else {
            return;
        };
        let Some(run) = catch_up else {
            return;
        };
        let turn_started = std::time::Instant::now();
        let internal = self.node.internal();
        for flow in internal.part_flows(Part::take_next(&mut run.next_part, CATCH_UP_PARTS)) {
            let key = flow.key();
            node.seen(&key);
            if node.flow(&key).is_some_and(|sent| sent.same_state(&flow))
                || self.node.peer_flow(&key).is_some()
            {
                continue;
            }
            node.local_flow(flow, now);
        }
        let last = run.next_part == CATCH_UP_PARTS;
        let mut gone = 0;
        if last && node.unseen_flows() > 0 {
            for key in node.unseen_flow_keys() {
                if !internal.contains(&key) {
                    node.local_flow_gone(&key, now);
                    gone += 1;
                }
            }
        }
        run.longest = run.longest.max(turn_started.elapsed());
        if last {
            tracing::debug!(
                duration_ms = run.started.elapsed().as_millis(),
                turns = CATCH_UP_PARTS,
                longest_turn_us = run.longest.as_micros(),
                gone,
                "conntrackd link compared with the internal cache"
            );
            *catch_up = None;
        }
    }

    /// `cd_catch_up` for the expectations, after a re-read of them that
    /// replicates what it found.
    pub(super) fn cd_catch_up_expectations(&mut self) {
        let now = self.now_ms();
        let Some(cd) = &mut self.cd else {
            return;
        };
        let internal = self.node.internal_expectations();
        for entry in internal.iter() {
            let e = &entry.expect;
            let key = e.key();
            let sent_same = cd
                .node
                .expectation(&key)
                .is_some_and(|sent| same_but_timeout(sent, e));
            let a_peers = self
                .node
                .external_expectations()
                .any(|(_, cache)| cache.contains(&key));
            if !sent_same && !a_peers {
                cd.node.local_expect(e.clone(), now);
            }
        }
        for key in cd.node.expectation_keys() {
            if !internal.contains(&key) {
                cd.node.local_expect_gone(&key, now);
            }
        }
    }

    /// Start-up: the conntrackd peer learns our table, and is asked for
    /// its own (conntrackd's StartupResync).
    pub(super) fn cd_start(&mut self) {
        self.cd_refill();
        if let Some(cd) = &mut self.cd {
            cd.node.request_resync();
        }
    }

    /// `-B`: every flow and expectation of the internal cache goes to the
    /// conntrackd peer. The link's own record of what it sent cannot
    /// answer this alone: `-f` empties it and `-R` refills only the
    /// internal cache, so after the glue's `-c`, `-f`, `-R`, `-B` on a new
    /// primary that record was empty and the bulk sent nothing. The
    /// record goes first; the refill adds what it lacks.
    pub(super) fn cd_bulk(&mut self) {
        if let Some(cd) = &mut self.cd {
            cd.node.send_bulk();
        }
        self.cd_refill();
    }

    /// Queue for the conntrackd peer every flow and expectation of the
    /// internal cache that the link's record lacks or holds in another
    /// state (the record itself went out already: its answer to the
    /// peer's resync request, or `-B`'s bulk). Starts the refill (anew,
    /// if one runs) and takes its first turn; `cd_walk_turn` takes the
    /// rest, a part of the cache a turn, the expectations after the last.
    fn cd_refill(&mut self) {
        let Some(cd) = &mut self.cd else {
            return;
        };
        cd.refill = Some(0);
        self.cd_refill_turn();
    }

    fn cd_refill_turn(&mut self) {
        let now = self.now_ms();
        let Some(CdLink { node, refill, .. }) = &mut self.cd else {
            return;
        };
        let Some(next_part) = refill else {
            return;
        };
        for flow in self
            .node
            .internal()
            .part_flows(Part::take_next(next_part, CATCH_UP_PARTS))
        {
            let key = flow.key();
            // A peer's flow committed into our kernel is not sent back, as
            // in `cd_catch_up_turn`: the walk takes several turns, and a
            // commit landing between them put the conntrackd peer's own
            // flows in the internal cache (it then committed them over its
            // own entries, and their expectations were lost).
            if node.flow(&key).is_some_and(|sent| sent.same_state(&flow))
                || self.node.peer_flow(&key).is_some()
            {
                continue;
            }
            node.local_flow(flow, now);
        }
        if *next_part < CATCH_UP_PARTS {
            return;
        }
        for entry in self.node.internal_expectations().iter() {
            let e = &entry.expect;
            if !node
                .expectation(&e.key())
                .is_some_and(|sent| same_but_timeout(sent, e))
            {
                node.local_expect(e.clone(), now);
            }
        }
        *refill = None;
    }

    /// A datagram on the conntrackd link.
    pub(super) fn on_cd_datagram(&mut self, received: Received) {
        let now = self.now_ms();
        let Some(cd) = &mut self.cd else {
            return;
        };
        if !cd.link.is_from_peer(&received.from) {
            cd.foreign_source += 1;
            return;
        }
        cd.heard_ms = Some(now);
        let owed = cd.node.bulks_owed();
        let changes = cd.node.on_datagram(&received.bytes, now);
        let mut msgs = Vec::with_capacity(changes.len());
        for change in changes {
            match message_of(change.op, change.object) {
                Some(m) => msgs.push(m),
                None => cd.invalid_changes += 1,
            }
        }
        let peer = cd.peer_id;
        // The peer asked for a resync (its `-n`, or its StartupResync) or
        // (re)started: the link answered from its own record; the internal
        // cache completes it (see `cd_bulk`).
        let due = cd
            .refilled_ms
            .is_none_or(|at| now >= at.saturating_add(REFILL_EVERY_MS));
        if cd.node.bulks_owed() != owed && due {
            cd.refilled_ms = Some(now);
            self.cd_refill();
        }
        if !msgs.is_empty() {
            self.node.apply_foreign(peer, msgs, now);
        }
    }

    /// Send what the conntrackd peer is due.
    pub(super) async fn cd_transmit(&mut self) {
        let now = self.now_ms();
        let Some(cd) = &mut self.cd else {
            return;
        };
        let dest = cd.link.spec.destination();
        for bytes in cd.node.poll_transmit(now) {
            if let Err(e) = cd.link.socket.send_to(&bytes, dest).await {
                cd.send_errors += 1;
                tracing::debug!(error = %e, %dest, "conntrackd link send failed");
            }
        }
    }

    /// When the conntrackd link wants the loop back (ms on our clock).
    pub(super) fn cd_deadline_ms(&self) -> Option<u64> {
        self.cd.as_ref().map(|cd| cd.node.next_deadline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::test_expectations::ftp;
    use crate::flow::test_flows::udp;

    #[test]
    fn conntrackd_changes_become_our_messages() {
        let f = udp(7);
        assert_eq!(
            message_of(Op::New, Object::Flow(f.clone())),
            Some(Message::Upsert(WireFlow::from(&f)))
        );
        assert_eq!(
            message_of(Op::Delete, Object::Flow(f.clone())),
            Some(Message::Delete(WireKey::from(&f.key())))
        );
        assert_eq!(
            message_of(Op::Delete, Object::Expect(ftp(1))),
            Some(Message::ExpectDelete(Box::new(ftp(1).key())))
        );
        // A flow our own checks refuse (an ICMP id on a UDP flow) is not
        // applied.
        let mut bad = udp(8);
        bad.orig.l4 = crate::flow::L4::Icmp {
            kind: 8,
            code: 0,
            id: 1,
        };
        assert_eq!(message_of(Op::Update, Object::Flow(bad)), None);
    }

    #[test]
    fn an_expectation_counting_down_is_the_same_one_changed_is_not() {
        let a = ftp(1);
        let mut older = a.clone();
        older.timeout += 30;
        assert!(same_but_timeout(&a, &older));
        let mut other = a.clone();
        other.flags ^= 1;
        assert!(!same_but_timeout(&a, &other));
    }
}
