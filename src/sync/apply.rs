//! Applying a peer's messages: flows into its external cache, bulk markers
//! and digests into its repair state, and what the send side must do about
//! acks, nacks and requests (returned as `Effect`s).
//!
//! Owns: the external caches (one per sender, each holding at most
//! `max_flows_per_peer` flows) and the list of changes made to them
//! (`record_applied`). Must not: send anything or touch the send
//! queue (it returns effects), decide who a datagram is from (the peer
//! table does), or read the clock.

use super::bulk::{prove_ranges, FullEnd};
use super::digest::differing;
use super::expect::{is_expect_message, mode_uses_expect, ExpectEffect, ExpectViews};
use super::peers::{Peer, Resync};
use super::rx::RxParams;
use super::stats::{DropReason, SyncStats};
use super::{Applied, Mode};
use crate::cache::{FlowCache, Upsert};
use crate::wire::Message;
use std::collections::BTreeMap;

/// What the send side must do after a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// The peer asked for our whole table.
    SendBulk,
    /// The peer asked for these ranges of our table.
    SendRanges(Vec<u16>),
    /// The peer missed `from..=to` of our stream.
    Resend { from: u32, to: u32 },
    /// Ask the peer for these ranges of its table.
    AskRanges(Vec<u16>),
    /// The peer asked for our expectations.
    SendExpectBulk,
    /// Ask this peer for its expectations.
    AskExpectBulk(u32),
}

/// What applying needs to know of the node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub mode: Mode,
    pub node_id: u32,
    /// Our epoch and the last sequence number we sent in it.
    pub epoch: u64,
    pub last_seq: u32,
    pub now: u64,
    /// How long to wait before asking a peer again.
    pub retry_ms: u64,
    /// How long one repair of a range may gather flows before it starts
    /// afresh (`digest::RangeWants::want`).
    pub restart_ms: u64,
    pub rx: RxParams,
}

/// The peers' flows as we know them.
#[derive(Clone, Debug)]
pub(crate) struct Views {
    pub caches: BTreeMap<u32, FlowCache>,
    /// Changes not yet taken (`record_applied`).
    pub applied: Vec<Applied>,
    record: bool,
    seed: Option<u64>,
    /// Most flows one cache may hold (`SyncConfig::max_flows_per_peer`).
    max_flows: usize,
    /// The peers' expectations.
    pub expects: ExpectViews,
}

/// Whether this node's mode uses a message at all; the others are ignored
/// (a misconfigured peer's acks cannot disturb a best-effort sender, nor
/// bulks and resyncs an ALARM one).
pub(crate) fn mode_uses(mode: Mode, msg: &Message) -> bool {
    if is_expect_message(msg) {
        return mode_uses_expect(mode, msg);
    }
    match mode {
        Mode::Ftfw => true,
        Mode::Notrack => !matches!(
            msg,
            Message::Ack { .. } | Message::Nack { .. } | Message::Resume { .. }
        ),
        Mode::Alarm => matches!(
            msg,
            Message::Upsert(_) | Message::Delete(_) | Message::Alive
        ),
    }
}

/// An empty view of `sender`'s table (see `SyncConfig::cache_seed`).
fn new_view(seed: Option<u64>, sender: u32) -> FlowCache {
    match seed {
        Some(s) => FlowCache::with_seed(s ^ u64::from(sender)),
        None => FlowCache::new(),
    }
}

impl Views {
    pub fn new(record: bool, seed: Option<u64>, max_flows: usize) -> Views {
        Views {
            caches: BTreeMap::new(),
            applied: Vec::new(),
            record,
            seed,
            max_flows,
            expects: ExpectViews::new(record),
        }
    }

    /// `sender`'s external cache, created empty if new.
    pub fn cache(&mut self, sender: u32) -> &mut FlowCache {
        let seed = self.seed;
        self.caches
            .entry(sender)
            .or_insert_with(|| new_view(seed, sender))
    }

    pub fn record_deletes(&mut self, keys: Vec<crate::flow::FlowKey>) {
        if self.record {
            self.applied.extend(keys.into_iter().map(Applied::Delete));
        }
    }

    /// Apply the messages of one datagram (or one delivered batch) from
    /// `sender`, in order; effects for the send side go to `effects`.
    pub fn apply_all(
        &mut self,
        sender: u32,
        peer: &mut Peer,
        msgs: Vec<Message>,
        ctx: &Ctx,
        stats: &mut SyncStats,
        effects: &mut Vec<Effect>,
    ) {
        for m in msgs {
            self.apply(sender, peer, m, ctx, stats, effects);
        }
    }

    /// Apply one message from `sender` (in FTFW, data messages arrive in
    /// order; in the best-effort modes as they came).
    pub fn apply(
        &mut self,
        sender: u32,
        peer: &mut Peer,
        msg: Message,
        ctx: &Ctx,
        stats: &mut SyncStats,
        effects: &mut Vec<Effect>,
    ) {
        if !mode_uses(ctx.mode, &msg) {
            return;
        }
        let now = ctx.now;
        if is_expect_message(&msg) {
            let effect = self
                .expects
                .apply(sender, msg, ctx.node_id, now, ctx.retry_ms);
            effects.extend(effect.map(|e| match e {
                ExpectEffect::SendBulk => Effect::SendExpectBulk,
                ExpectEffect::AskBulk(peer) => Effect::AskExpectBulk(peer),
            }));
            return;
        }
        match msg {
            Message::Upsert(wf) => {
                let flow = wf.into_flow();
                let max_flows = self.max_flows;
                let record = self.record;
                let cache = self.cache(sender);
                // A full cache takes no new flow; those it holds still
                // change (and deletes make room).
                if cache.len() >= max_flows && !cache.contains(&flow.key()) {
                    stats.malformed.count(DropReason::ExternalCacheFull);
                    return;
                }
                let copy = record.then(|| flow.clone());
                // Outside a bulk, a flow sent again was reported again (a
                // change or a timeout traffic refreshed): its stamp, which
                // orders commits, moves even if its bytes did not.
                let in_bulk = peer.bulk.in_progress();
                let change = if in_bulk {
                    cache.upsert(flow, now)
                } else {
                    cache.upsert_reported(flow, now)
                };
                if let Some(flow) = copy {
                    match change {
                        Upsert::Created => self.applied.push(Applied::Created(flow)),
                        Upsert::Updated => self.applied.push(Applied::Updated(flow)),
                        // Decoded flows were validated: not refused.
                        Upsert::Unchanged | Upsert::Refused => {}
                    }
                }
            }
            Message::Delete(wk) => {
                let key = wk.to_key();
                let removed = self.cache(sender).remove(&key);
                if self.record && removed.is_some() {
                    self.applied.push(Applied::Delete(key));
                }
            }
            Message::BulkBegin { id } => {
                stats.bulks_received += 1;
                peer.counts.bulks_received += 1;
                peer.bulk.begin_full(id, self.cache(sender));
                peer.resync = Resync::Settled;
            }
            Message::BulkEnd { id, count } => {
                self.end_full(sender, peer, (id, count, None), ctx.mode, stats);
            }
            Message::BulkEndSum { id, count, hash } => {
                self.end_full(sender, peer, (id, count, Some(hash)), ctx.mode, stats);
            }
            Message::RangeBegin { id, .. } => {
                if peer.bulk.begin_ranges(id) {
                    stats.range_bulks_received += 1;
                }
            }
            Message::RangeEnd { id, sums } => {
                peer.bulk.end_ranges(id);
                if matches!(peer.bulk, super::bulk::BulkRx::Full { .. }) {
                    // Its whole table is coming: the full bulk decides.
                    return;
                }
                let wants = &peer.wants;
                let end = prove_ranges(self.cache(sender), &sums, |r| wants.since(r));
                if !end.swept.is_empty() {
                    stats.range_swept += end.swept.len() as u64;
                }
                self.record_deletes(end.swept);
                for r in &end.proven {
                    peer.wants.settled(*r);
                }
                stats.ranges_repaired += end.proven.len() as u64;
                if !end.unproven.is_empty() {
                    stats.ranges_unproven += end.unproven.len() as u64;
                    let ask = peer
                        .wants
                        .want_now(&end.unproven, now, ctx.rx.rto_ms, ctx.retry_ms);
                    if !ask.is_empty() {
                        effects.push(Effect::AskRanges(ask));
                    }
                }
            }
            Message::Ack { node, epoch, upto } => {
                if node != ctx.node_id || epoch != ctx.epoch {
                    return;
                }
                stats.acks_received += 1;
                peer.tx_acked = peer.tx_acked.max(upto.min(ctx.last_seq));
            }
            Message::Nack {
                node,
                epoch,
                from,
                to,
            } => {
                if node == ctx.node_id && epoch == ctx.epoch {
                    stats.nacks_received += 1;
                    effects.push(Effect::Resend { from, to });
                }
            }
            Message::ResyncRequest { node } => {
                if node.is_none_or(|n| n == ctx.node_id) {
                    stats.resyncs_requested_received += 1;
                    effects.push(Effect::SendBulk);
                }
            }
            Message::RangeRequest { node, ranges } => {
                if node == ctx.node_id {
                    stats.range_requests_received += 1;
                    effects.push(Effect::SendRanges(ranges));
                }
            }
            Message::Resume { from } => {
                stats.resumes_received += 1;
                let (deliver, skipped) = peer.rx.resume(from, now, &ctx.rx);
                if skipped {
                    // Bulk markers may have been skipped: its bulk follows.
                    peer.bulk = super::bulk::BulkRx::Idle;
                }
                for batch in deliver {
                    self.apply_all(sender, peer, batch, ctx, stats, effects);
                }
            }
            // Challenges are the gate's (see `receive`), answered before
            // any message is applied.
            Message::Alive | Message::Challenge { .. } | Message::ChallengeAnswer { .. } => {}
            // Taken by `expects` above.
            Message::ExpectUpsert(_)
            | Message::ExpectDelete(_)
            | Message::ExpectBulkBegin { .. }
            | Message::ExpectBulkEnd { .. }
            | Message::ExpectDigest { .. }
            | Message::ExpectResyncRequest { .. } => {}
            Message::Digest { count, hash } => {
                stats.digests_received += 1;
                let (len, digest) = self
                    .caches
                    .get(&sender)
                    .map_or((0, 0), |c| (c.len() as u64, c.digest()));
                if (len, digest) != (count, hash) {
                    // A peer without range digests: pull its whole table.
                    stats.digest_mismatches += 1;
                    peer.counts.digest_mismatches += 1;
                    if peer.resync == Resync::Settled {
                        peer.resync = Resync::Asking { next_ms: now };
                    }
                }
            }
            Message::RangeDigest { sums } => {
                // A digest's first message carries range 0.
                if sums.first().is_some_and(|s| s.range == 0) {
                    stats.digests_received += 1;
                }
                stats.range_digests_received += 1;
                let differ = differing(self.caches.get(&sender), &sums);
                for s in &sums {
                    if !differ.contains(&s.range) {
                        peer.wants.settled(s.range);
                    }
                }
                // A digest follows the end of any full bulk the sender
                // queued before it: one still open here lost its end.
                if matches!(peer.bulk, super::bulk::BulkRx::Full { .. }) {
                    peer.bulk = super::bulk::BulkRx::Idle;
                    stats.bulk_unproven += 1;
                }
                if !differ.is_empty() {
                    stats.digest_mismatches += 1;
                    peer.counts.digest_mismatches += 1;
                    // Unless its whole table is coming anyway.
                    if peer.resync == Resync::Settled {
                        let caches = &mut self.caches;
                        let seed = self.seed;
                        let ask =
                            peer.wants
                                .want(&differ, now, ctx.retry_ms, ctx.restart_ms, || {
                                    caches
                                        .entry(sender)
                                        .or_insert_with(|| new_view(seed, sender))
                                        .begin_generation()
                                });
                        if !ask.is_empty() {
                            effects.push(Effect::AskRanges(ask));
                        }
                    }
                }
            }
        }
    }

    /// The end of a full bulk: its id, and the count (and hash) the
    /// sender's table had when it began.
    fn end_full(
        &mut self,
        sender: u32,
        peer: &mut Peer,
        (id, count, hash): (u32, u64, Option<u64>),
        mode: Mode,
        stats: &mut SyncStats,
    ) {
        let in_order = mode == Mode::Ftfw;
        match peer
            .bulk
            .end_full(id, count, hash, in_order, self.cache(sender))
        {
            FullEnd::Ignored => {}
            FullEnd::Unproven => stats.bulk_unproven += 1,
            FullEnd::Swept(keys) => {
                if !keys.is_empty() {
                    stats.bulk_swept += 1;
                }
                self.record_deletes(keys);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;
    use crate::wire::{RangeSum, WireFlow, WireKey};

    fn ctx(mode: Mode) -> Ctx {
        Ctx {
            mode,
            node_id: 1,
            epoch: 77,
            last_seq: 10,
            now: 1_000,
            retry_ms: 1_000,
            restart_ms: 5_000,
            rx: RxParams {
                ack_every: 8,
                ack_delay_ms: 20,
                rto_ms: 200,
                reorder_limit: 64,
                reorder_max_bytes: 1 << 20,
            },
        }
    }

    fn run(views: &mut Views, peer: &mut Peer, mode: Mode, msgs: Vec<Message>) -> Vec<Effect> {
        run_at(views, peer, mode, 1_000, msgs)
    }

    fn run_at(
        views: &mut Views,
        peer: &mut Peer,
        mode: Mode,
        now: u64,
        msgs: Vec<Message>,
    ) -> Vec<Effect> {
        let mut stats = SyncStats::default();
        let mut effects = Vec::new();
        let ctx = Ctx { now, ..ctx(mode) };
        views.apply_all(2, peer, msgs, &ctx, &mut stats, &mut effects);
        effects
    }

    fn peer() -> Peer {
        Peer::new(5, 1, true, 0, &ctx(Mode::Ftfw).rx)
    }

    #[test]
    fn flows_land_in_the_senders_cache_and_are_recorded() {
        let mut v = Views::new(true, Some(1), usize::MAX);
        let mut p = peer();
        let up = Message::Upsert(WireFlow::from(&udp(1)));
        let del = Message::Delete(WireKey::from(&udp(1).key()));
        run(&mut v, &mut p, Mode::Notrack, vec![up.clone()]);
        assert_eq!(v.caches.get(&2).map(FlowCache::len), Some(1));
        run(&mut v, &mut p, Mode::Notrack, vec![del]);
        assert_eq!(
            v.applied,
            vec![Applied::Created(udp(1)), Applied::Delete(udp(1).key())]
        );
    }

    #[test]
    fn a_full_cache_refuses_new_flows_and_keeps_applying_the_others() {
        let mut v = Views::new(true, Some(1), 2);
        let mut p = peer();
        let mut stats = SyncStats::default();
        let mut effects = Vec::new();
        let mut apply = |v: &mut Views, m: Message| {
            v.apply_all(
                2,
                &mut p,
                vec![m],
                &ctx(Mode::Ftfw),
                &mut stats,
                &mut effects,
            );
        };
        let up = |f: &crate::flow::Flow| Message::Upsert(WireFlow::from(f));
        for port in 1..=3 {
            apply(&mut v, up(&udp(port)));
        }
        assert_eq!(v.caches[&2].len(), 2);
        assert!(
            !v.caches[&2].contains(&udp(3).key()),
            "the third is refused"
        );
        // A flow it holds still changes; a delete makes room.
        let mut changed = udp(1);
        changed.mark = 9;
        apply(&mut v, up(&changed));
        assert_eq!(v.caches[&2].flow(&udp(1).key()), Some(changed.clone()));
        apply(&mut v, Message::Delete(WireKey::from(&udp(2).key())));
        apply(&mut v, up(&udp(3)));
        apply(&mut v, up(&udp(4)));
        assert!(v.caches[&2].contains(&udp(3).key()));
        assert_eq!(v.caches[&2].len(), 2);
        assert_eq!(stats.malformed.external_cache_full, 2, "3 once, 4 once");
        assert_eq!(stats.malformed.total(), 2);
        // What was refused was never recorded for warm standby.
        assert_eq!(
            v.applied,
            vec![
                Applied::Created(udp(1)),
                Applied::Created(udp(2)),
                Applied::Updated(changed),
                Applied::Delete(udp(2).key()),
                Applied::Created(udp(3)),
            ]
        );
    }

    #[test]
    fn acks_and_nacks_are_ftfw_only_and_requests_become_effects() {
        let mut v = Views::new(false, None, usize::MAX);
        let mut p = peer();
        let ack = Message::Ack {
            node: 1,
            epoch: 77,
            upto: 99,
        };
        let nack = Message::Nack {
            node: 1,
            epoch: 77,
            from: 3,
            to: 4,
        };
        assert!(run(
            &mut v,
            &mut p,
            Mode::Notrack,
            vec![ack.clone(), nack.clone()]
        )
        .is_empty());
        assert_eq!(p.tx_acked, 0);
        let e = run(&mut v, &mut p, Mode::Ftfw, vec![ack, nack]);
        assert_eq!(p.tx_acked, 10, "never past what we sent");
        assert_eq!(e, vec![Effect::Resend { from: 3, to: 4 }]);
        let e = run(
            &mut v,
            &mut p,
            Mode::Notrack,
            vec![
                Message::ResyncRequest { node: None },
                Message::RangeRequest {
                    node: 1,
                    ranges: vec![4],
                },
                Message::RangeRequest {
                    node: 9,
                    ranges: vec![5],
                },
            ],
        );
        assert_eq!(e, vec![Effect::SendBulk, Effect::SendRanges(vec![4])]);
        // ALARM ignores all of it.
        assert!(run(
            &mut v,
            &mut p,
            Mode::Alarm,
            vec![Message::ResyncRequest { node: None }]
        )
        .is_empty());
    }

    #[test]
    fn a_differing_range_digest_asks_for_those_ranges_once_per_retry() {
        let mut v = Views::new(false, Some(1), usize::MAX);
        let mut p = peer();
        let mut sender = FlowCache::with_seed(3);
        for port in 0..100 {
            sender.upsert(udp(port), 0);
        }
        let sums: Vec<RangeSum> = sender.range_sums().collect();
        let digest = Message::RangeDigest { sums: sums.clone() };
        let e = run(&mut v, &mut p, Mode::Notrack, vec![digest.clone()]);
        let want: Vec<u16> = sums
            .iter()
            .filter(|s| s.count > 0)
            .map(|s| s.range)
            .collect();
        assert_eq!(e, vec![Effect::AskRanges(want.clone())]);
        assert!(
            run(&mut v, &mut p, Mode::Notrack, vec![digest]).is_empty(),
            "asked already"
        );
        // A range bulk that arrives whole settles its ranges.
        let r = want[0];
        let mut msgs = vec![Message::RangeBegin {
            id: 1,
            ranges: vec![r],
        }];
        for f in sender.flows() {
            if crate::cache::range_of(&f.key()) == r {
                msgs.push(Message::Upsert(WireFlow::from(&f)));
            }
        }
        msgs.push(Message::RangeEnd {
            id: 1,
            sums: vec![sender.range_sum(r)],
        });
        let flows = msgs.len() - 2;
        assert!(run(&mut v, &mut p, Mode::Notrack, msgs.clone()).is_empty());
        assert_eq!(v.caches[&2].range_sum(r), sender.range_sum(r));
        // A range not being repaired is left alone by a range bulk.
        v.caches.get_mut(&2).unwrap().clear();
        assert!(run(&mut v, &mut p, Mode::Notrack, msgs.clone()).is_empty());
        // One being repaired that lost a flow asks again at once.
        v.caches.get_mut(&2).unwrap().clear();
        let digest = Message::RangeDigest { sums };
        assert_eq!(
            run(&mut v, &mut p, Mode::Notrack, vec![digest]),
            vec![Effect::AskRanges(vec![r])],
            "the others were asked for just now"
        );
        if flows > 0 {
            msgs.remove(1);
            let e = run_at(&mut v, &mut p, Mode::Notrack, 1_500, msgs);
            assert_eq!(e, vec![Effect::AskRanges(vec![r])]);
        }
    }
}
