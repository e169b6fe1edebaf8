//! Expectation replication: our expectations and what of their changes is
//! queued, and the peers' expectations as their messages left them.
//!
//! Expectations travel in the same sequenced stream as flows (so FTFW's
//! resends and in-order delivery cover them) but in datagrams of their
//! own, after the flow data of the same poll: a master flow queued before
//! its expectation reaches the peer first. Their anti-entropy is a bulk of
//! all of them (they are few): `ExpectBulkBegin`, every expectation,
//! `ExpectBulkEnd` with the sender's digest, after which a receiver that
//! got them all (what the bulk stamped adds up) drops what it did not
//! carry. A bulk goes with every full flow bulk, when a peer's
//! `ExpectDigest` (sent with the flow digests) differs, and in ALARM mode
//! once per refresh period.
//!
//! Owns: `ExpectTx` (the internal expectation cache, the send queue) and
//! `ExpectViews` (one `ExpectCache` per peer, bulk state, the changes warm
//! standby mirrors). Must not: decide which expectations are replicated
//! (the daemon filters), seal or send datagrams, or read the clock.

use super::Mode;
use crate::cache::Upsert;
use crate::expect::{ExpectKey, Expectation};
use crate::expect_cache::ExpectCache;
use crate::wire::Message;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One change to a peer's expectations, as warm standby mirrors it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppliedExpect {
    Created(Expectation),
    Updated(Expectation),
    Delete(ExpectKey),
}

/// What a re-read of the kernel's expectations changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpectReconcile {
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// The expectation's current state: upsert if cached, delete if not.
    Key(ExpectKey),
    BulkBegin(u32),
    BulkEnd(u32),
    Digest,
}

/// Our expectations and their send queue.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExpectTx {
    pub cache: ExpectCache,
    queue: VecDeque<Out>,
    /// Keys in `queue` (a change to a queued key goes out once, in its
    /// latest state).
    queued: BTreeSet<ExpectKey>,
    next_bulk: u32,
    /// ALARM: when the last refresh bulk was queued.
    refreshed_ms: u64,
    /// When the queue last became non-empty.
    waiting_since: Option<u64>,
    /// Expectations the wire format's checks refused (never cached or
    /// sent).
    pub refused: u64,
}

/// Expectations wait for the flows queued before them (their masters) at
/// most this long, so a busy flow queue cannot starve them.
pub(crate) const EXPECT_HOLD_MS: u64 = 100;

impl ExpectTx {
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// When what is queued may leave: at once when no flow waits before
    /// it (`flows_queued` false), else once it has waited `EXPECT_HOLD_MS`
    /// (`None`: nothing queued).
    pub fn ready_at(&mut self, now: u64, flows_queued: bool) -> Option<u64> {
        if self.queue.is_empty() {
            self.waiting_since = None;
            return None;
        }
        let since = *self.waiting_since.get_or_insert(now);
        Some(if flows_queued {
            since.saturating_add(EXPECT_HOLD_MS)
        } else {
            now
        })
    }

    /// `ready_at` without noting anything (for a deadline).
    pub fn ready_at_peek(&self, now: u64, flows_queued: bool) -> Option<u64> {
        if self.queue.is_empty() {
            return None;
        }
        let since = self.waiting_since.unwrap_or(now);
        Some(if flows_queued {
            since.saturating_add(EXPECT_HOLD_MS)
        } else {
            now
        })
    }

    fn push_key(&mut self, key: ExpectKey) {
        if self.queued.insert(key) {
            self.queue.push_back(Out::Key(key));
        }
    }

    /// A kernel NEW (or a re-read's); queued for peers when it changed and
    /// `replicate`.
    ///
    /// One the wire format's checks refuse is not cached (`Refused`, and an
    /// earlier state of it is dropped): a receiver would refuse its
    /// datagram whole.
    pub fn upsert(&mut self, e: Expectation, now_ms: u64, replicate: bool) -> Upsert {
        let key = e.key();
        if crate::wire::validate_expectation(&e).is_err() {
            self.refused += 1;
            if self.cache.contains(&key) {
                self.delete(&key, replicate);
            }
            return Upsert::Refused;
        }
        let what = self.cache.upsert(e, now_ms, true);
        if replicate && what != Upsert::Unchanged {
            self.push_key(key);
        }
        what
    }

    /// A kernel DESTROY; the delete is queued when `replicate`.
    pub fn delete(&mut self, key: &ExpectKey, replicate: bool) -> bool {
        let had = self.cache.remove(key).is_some();
        if had && replicate {
            self.push_key(*key);
        }
        had
    }

    /// Make the cache equal to a dump of the kernel's expectations (the
    /// ones the daemon replicates); queue the differences when `replicate`.
    pub fn reconcile(
        &mut self,
        dump: Vec<Expectation>,
        now_ms: u64,
        replicate: bool,
    ) -> ExpectReconcile {
        let mut report = ExpectReconcile::default();
        let generation = self.cache.begin_generation();
        for e in dump {
            match self.upsert(e, now_ms, replicate) {
                Upsert::Created => report.added += 1,
                Upsert::Updated => report.changed += 1,
                Upsert::Unchanged | Upsert::Refused => {}
            }
        }
        for key in self.cache.sweep_older_than(generation) {
            report.removed += 1;
            if replicate {
                self.push_key(key);
            }
        }
        report
    }

    /// Forget our expectations and what is queued (`-f internal`).
    pub fn flush(&mut self) {
        self.cache.clear();
        self.queue.clear();
        self.queued.clear();
    }

    /// Queue a bulk of every expectation we hold.
    pub fn queue_bulk(&mut self) {
        self.next_bulk = self.next_bulk.wrapping_add(1);
        let id = self.next_bulk;
        self.queue.push_back(Out::BulkBegin(id));
        // Every key, also one queued before the bulk (its place ahead of
        // the bulk would leave it unstamped, and swept).
        for key in self.cache.keys() {
            self.queued.insert(*key);
            self.queue.push_back(Out::Key(*key));
        }
        self.queue.push_back(Out::BulkEnd(id));
    }

    /// Queue our digest (after whatever is queued already).
    pub fn queue_digest(&mut self) {
        self.queue.push_back(Out::Digest);
    }

    /// ALARM: a bulk every `period_ms` re-sends every expectation (and
    /// sweeps, at the receivers, the ones whose delete was lost).
    pub fn alarm_refresh(&mut self, now_ms: u64, period_ms: u64) {
        if now_ms >= self.refreshed_ms.saturating_add(period_ms) {
            self.refreshed_ms = now_ms;
            self.queue_bulk();
        }
    }

    /// When ALARM's next refresh bulk is due.
    pub fn alarm_due(&self, period_ms: u64) -> u64 {
        self.refreshed_ms.saturating_add(period_ms)
    }

    /// Everything queued, as messages, in order (emptying the queue).
    pub fn take_messages(&mut self) -> Vec<Message> {
        self.waiting_since = None;
        let mut out = Vec::with_capacity(self.queue.len());
        while let Some(item) = self.queue.pop_front() {
            out.push(match item {
                Out::Key(key) => {
                    self.queued.remove(&key);
                    match self.cache.get(&key) {
                        Some(entry) => Message::ExpectUpsert(Box::new(entry.expect.clone())),
                        None => Message::ExpectDelete(Box::new(key)),
                    }
                }
                Out::BulkBegin(id) => Message::ExpectBulkBegin { id },
                Out::BulkEnd(id) => {
                    // The bulk's keys went out just before, in this call:
                    // the cache is what they carried.
                    let (count, hash) = self.cache.digest();
                    Message::ExpectBulkEnd { id, count, hash }
                }
                Out::Digest => {
                    let (count, hash) = self.cache.digest();
                    Message::ExpectDigest { count, hash }
                }
            });
        }
        out
    }
}

/// One peer's expectations and the bulk being received from it.
#[derive(Clone, Debug, Default)]
pub struct ExpectView {
    pub cache: ExpectCache,
    /// The bulk under way: its id and the generation it stamps.
    bulk: Option<(u32, u32)>,
    /// When we last asked this peer for a bulk.
    asked_ms: Option<u64>,
}

/// What the send side must do after a peer's expectation message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExpectEffect {
    /// The peer asked for our expectations.
    SendBulk,
    /// Ask the peer for its expectations.
    AskBulk(u32),
}

/// The peers' expectations as we know them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExpectViews {
    pub views: BTreeMap<u32, ExpectView>,
    pub applied: Vec<AppliedExpect>,
    pub record: bool,
    /// Expectations refused because their peer's view was full.
    pub refused_full: u64,
    expired_ms: u64,
}

/// Most expectations one peer's view holds: the kernel's own limit
/// (`nf_conntrack_expect_max`) is a few thousand by default; a peer (or a
/// forger on an unauthenticated conntrackd link) sending more is refused.
pub(crate) const MAX_EXPECTATIONS_PER_PEER: usize = 65_536;
/// An expectation outlives its timeout by this much before it is dropped
/// (its sender's refresh or delete may be on the way).
const EXPIRY_SLACK_MS: u64 = 10_000;

impl ExpectViews {
    pub fn new(record: bool) -> ExpectViews {
        ExpectViews {
            record,
            ..ExpectViews::default()
        }
    }

    /// Forget every peer's expectations (`-f external`).
    pub fn flush(&mut self) {
        for v in self.views.values_mut() {
            v.cache.clear();
            v.bulk = None;
            v.asked_ms = None;
        }
        // Nothing flushed is mirrored any more.
        self.applied.clear();
    }

    /// Drop the peers' expectations whose timeout ran out (their delete
    /// was lost, or the peer is gone), at most once per second.
    pub fn expire(&mut self, now: u64) {
        if now < self.expired_ms.saturating_add(1000) {
            return;
        }
        self.expired_ms = now;
        for v in self.views.values_mut() {
            let gone: Vec<ExpectKey> = v
                .cache
                .iter()
                // A timeout of 0 is unknown (a conntrackd peer with
                // CommitTimeout sends none): never expired here.
                .filter(|e| e.expect.timeout > 0)
                .filter(|e| {
                    let ends = e
                        .updated_ms
                        .saturating_add(u64::from(e.expect.timeout) * 1000);
                    now > ends.saturating_add(EXPIRY_SLACK_MS)
                })
                .map(|e| e.expect.key())
                .collect();
            for key in gone {
                v.cache.remove(&key);
                if self.record {
                    self.applied.push(AppliedExpect::Delete(key));
                }
            }
        }
    }

    /// Apply one expectation message from `sender`. `retry_ms`: how long
    /// to wait before asking a peer for a bulk again. `node_id`: ours.
    pub fn apply(
        &mut self,
        sender: u32,
        msg: Message,
        node_id: u32,
        now: u64,
        retry_ms: u64,
    ) -> Option<ExpectEffect> {
        let view = self.views.entry(sender).or_default();
        match msg {
            Message::ExpectUpsert(e) => {
                let e = *e;
                if view.cache.len() >= MAX_EXPECTATIONS_PER_PEER && !view.cache.contains(&e.key()) {
                    self.refused_full += 1;
                    return None;
                }
                let copy = self.record.then(|| e.clone());
                let what = view.cache.upsert(e, now, view.bulk.is_none());
                if let Some(e) = copy {
                    match what {
                        Upsert::Created => self.applied.push(AppliedExpect::Created(e)),
                        Upsert::Updated => self.applied.push(AppliedExpect::Updated(e)),
                        Upsert::Unchanged | Upsert::Refused => {}
                    }
                }
            }
            Message::ExpectDelete(key) => {
                let removed = view.cache.remove(&key).is_some();
                if removed && self.record {
                    self.applied.push(AppliedExpect::Delete(*key));
                }
            }
            Message::ExpectBulkBegin { id } => {
                view.bulk = Some((id, view.cache.begin_generation()));
            }
            Message::ExpectBulkEnd { id, count, hash } => {
                // Only a bulk whose beginning we saw and whose every
                // expectation arrived (what it stamped adds up to the
                // sender's digest) proves what is gone; a lossy one asks
                // again.
                let (begun, generation) = view.bulk.take()?;
                if begun != id {
                    return None;
                }
                if view.cache.digest_of_generation(generation) != (count, hash) {
                    return ask_again(view, sender, now, retry_ms);
                }
                let gone = view.cache.sweep_older_than(generation);
                if self.record {
                    self.applied
                        .extend(gone.into_iter().map(AppliedExpect::Delete));
                }
                view.asked_ms = None;
            }
            Message::ExpectDigest { count, hash } => {
                // A digest follows the end of any bulk queued before it:
                // a bulk still open here lost its end.
                view.bulk = None;
                if view.cache.digest() != (count, hash) {
                    return ask_again(view, sender, now, retry_ms);
                }
            }
            Message::ExpectResyncRequest { node } if node == node_id => {
                return Some(ExpectEffect::SendBulk);
            }
            _ => {}
        }
        None
    }
}

/// Ask `sender` for a bulk of its expectations, at most once per
/// `retry_ms`.
fn ask_again(view: &mut ExpectView, sender: u32, now: u64, retry_ms: u64) -> Option<ExpectEffect> {
    let due = view
        .asked_ms
        .is_none_or(|at| now >= at.saturating_add(retry_ms));
    if !due {
        return None;
    }
    view.asked_ms = Some(now);
    Some(ExpectEffect::AskBulk(sender))
}

/// Whether a message is one of this part's.
pub(crate) fn is_expect_message(msg: &Message) -> bool {
    matches!(
        msg,
        Message::ExpectUpsert(_)
            | Message::ExpectDelete(_)
            | Message::ExpectBulkBegin { .. }
            | Message::ExpectBulkEnd { .. }
            | Message::ExpectDigest { .. }
            | Message::ExpectResyncRequest { .. }
    )
}

/// Whether `mode` uses an expectation message: ALARM has no digests and no
/// requests (its refresh bulks do both jobs).
pub(crate) fn mode_uses_expect(mode: Mode, msg: &Message) -> bool {
    match mode {
        Mode::Ftfw | Mode::Notrack => true,
        Mode::Alarm => !matches!(
            msg,
            Message::ExpectDigest { .. } | Message::ExpectResyncRequest { .. }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::test_expectations::ftp;

    /// Deliver everything `tx` has queued to `rx` as peer 1.
    fn deliver(tx: &mut ExpectTx, rx: &mut ExpectViews, now: u64) -> Vec<ExpectEffect> {
        tx.take_messages()
            .into_iter()
            .filter_map(|m| rx.apply(1, m, 2, now, 100))
            .collect()
    }

    fn view(rx: &ExpectViews) -> Vec<ExpectKey> {
        rx.views[&1].cache.keys().copied().collect()
    }

    #[test]
    fn changes_coalesce_and_arrive_in_their_latest_state() {
        let (mut tx, mut rx) = (ExpectTx::default(), ExpectViews::new(true));
        tx.upsert(ftp(1), 0, true);
        let mut changed = ftp(1);
        changed.flags = 1;
        tx.upsert(changed.clone(), 0, true);
        tx.upsert(ftp(2), 0, false);
        let msgs = tx.take_messages();
        assert_eq!(msgs, vec![Message::ExpectUpsert(Box::new(changed.clone()))]);
        for m in msgs {
            rx.apply(1, m, 2, 0, 100);
        }
        assert_eq!(rx.applied, vec![AppliedExpect::Created(changed)]);
        tx.delete(&ftp(1).key(), true);
        deliver(&mut tx, &mut rx, 1);
        assert!(view(&rx).is_empty());
        assert_eq!(
            rx.applied.last(),
            Some(&AppliedExpect::Delete(ftp(1).key()))
        );
    }

    #[test]
    fn a_differing_digest_asks_once_per_retry_and_the_bulk_sweeps() {
        let (mut tx, mut rx) = (ExpectTx::default(), ExpectViews::new(false));
        // The peer saw ftp(9) but missed its delete and ftp(1)'s creation.
        rx.apply(1, Message::ExpectUpsert(Box::new(ftp(9))), 2, 0, 100);
        tx.upsert(ftp(1), 0, false);
        tx.queue_digest();
        assert_eq!(
            deliver(&mut tx, &mut rx, 10),
            vec![ExpectEffect::AskBulk(1)]
        );
        tx.queue_digest();
        assert!(deliver(&mut tx, &mut rx, 50).is_empty(), "asked already");
        tx.queue_bulk();
        tx.queue_digest();
        assert!(
            deliver(&mut tx, &mut rx, 60).is_empty(),
            "equal after the bulk"
        );
        assert_eq!(view(&rx), vec![ftp(1).key()]);
    }

    #[test]
    fn an_end_without_its_beginning_sweeps_nothing() {
        let mut rx = ExpectViews::new(false);
        rx.apply(1, Message::ExpectUpsert(Box::new(ftp(1))), 2, 0, 100);
        rx.apply(
            1,
            Message::ExpectBulkEnd {
                id: 4,
                count: 0,
                hash: 0,
            },
            2,
            0,
            100,
        );
        assert_eq!(view(&rx), vec![ftp(1).key()]);
        rx.apply(1, Message::ExpectBulkBegin { id: 5 }, 2, 0, 100);
        rx.apply(
            1,
            Message::ExpectBulkEnd {
                id: 4,
                count: 0,
                hash: 0,
            },
            2,
            0,
            100,
        );
        assert_eq!(view(&rx), vec![ftp(1).key()], "another bulk's end");
    }

    #[test]
    fn a_bulk_that_lost_an_expectation_sweeps_nothing_and_asks_again() {
        let (mut tx, mut rx) = (ExpectTx::default(), ExpectViews::new(false));
        for p in 1..=3 {
            tx.upsert(ftp(p), 0, true);
        }
        deliver(&mut tx, &mut rx, 0);
        tx.queue_bulk();
        let msgs = tx.take_messages();
        // ftp(2)'s datagram is lost (NOTRACK).
        let lost = Message::ExpectUpsert(Box::new(ftp(2)));
        let effects: Vec<_> = msgs
            .into_iter()
            .filter(|m| *m != lost)
            .filter_map(|m| rx.apply(1, m, 2, 10, 100))
            .collect();
        assert_eq!(effects, vec![ExpectEffect::AskBulk(1)]);
        assert_eq!(view(&rx).len(), 3, "nothing swept");
        // A queued change ahead of a bulk is carried by the bulk too.
        let mut changed = ftp(1);
        changed.class = 1;
        tx.upsert(changed, 20, true);
        tx.queue_bulk();
        let msgs = tx.take_messages();
        let ups = msgs
            .iter()
            .filter(|m| matches!(m, Message::ExpectUpsert(e) if e.key() == ftp(1).key()))
            .count();
        assert_eq!(ups, 2, "{msgs:?}");
        for m in msgs {
            rx.apply(1, m, 2, 30, 100);
        }
        assert_eq!(rx.views[&1].cache.digest(), tx.cache.digest());
    }

    #[test]
    fn views_expire_what_outlived_its_timeout_and_are_bounded() {
        let mut rx = ExpectViews::new(true);
        let mut short = ftp(1);
        short.timeout = 5;
        let mut unknown = ftp(2);
        unknown.timeout = 0;
        rx.apply(1, Message::ExpectUpsert(Box::new(short)), 2, 0, 100);
        rx.apply(1, Message::ExpectUpsert(Box::new(unknown)), 2, 0, 100);
        rx.expire(14_000);
        assert_eq!(view(&rx).len(), 2, "within timeout + slack");
        rx.expire(16_000);
        assert_eq!(
            view(&rx),
            vec![ftp(2).key()],
            "a timeout of 0 never expires"
        );
        assert_eq!(
            rx.applied.last(),
            Some(&AppliedExpect::Delete(ftp(1).key()))
        );
        for p in 0..=MAX_EXPECTATIONS_PER_PEER {
            let e = ftp(10_000 + (p % 50_000) as u16);
            let mut e = e;
            e.tuple.l4 = crate::flow::L4::Ports {
                src: (p / 50_000) as u16,
                dst: (p % 50_000) as u16,
            };
            rx.apply(1, Message::ExpectUpsert(Box::new(e)), 2, 0, 100);
        }
        assert_eq!(rx.views[&1].cache.len(), MAX_EXPECTATIONS_PER_PEER);
        assert!(rx.refused_full > 0);
    }

    #[test]
    fn expectations_wait_for_queued_flows_a_little() {
        let mut tx = ExpectTx::default();
        assert_eq!(tx.ready_at(0, true), None, "nothing queued");
        tx.upsert(ftp(1), 0, true);
        assert_eq!(tx.ready_at(10, false), Some(10), "no flow ahead: now");
        assert_eq!(tx.ready_at(20, true), Some(10 + EXPECT_HOLD_MS));
        tx.take_messages();
        tx.upsert(ftp(2), 0, true);
        assert_eq!(tx.ready_at(500, true), Some(500 + EXPECT_HOLD_MS));
    }

    #[test]
    fn requests_for_another_node_are_not_ours() {
        let mut rx = ExpectViews::new(false);
        let ask = |node| Message::ExpectResyncRequest { node };
        assert_eq!(rx.apply(1, ask(2), 2, 0, 100), Some(ExpectEffect::SendBulk));
        assert_eq!(rx.apply(1, ask(3), 2, 0, 100), None);
    }

    #[test]
    fn a_reread_queues_only_differences() {
        let mut tx = ExpectTx::default();
        tx.reconcile(vec![ftp(1), ftp(2)], 0, false);
        assert!(tx.is_idle());
        let r = tx.reconcile(vec![ftp(2), ftp(3)], 1, true);
        assert_eq!(
            r,
            ExpectReconcile {
                added: 1,
                changed: 0,
                removed: 1
            }
        );
        let msgs = tx.take_messages();
        assert_eq!(
            msgs,
            vec![
                Message::ExpectUpsert(Box::new(ftp(3))),
                Message::ExpectDelete(Box::new(ftp(1).key()))
            ]
        );
    }
}
