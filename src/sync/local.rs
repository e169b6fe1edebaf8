//! Our own flows: the internal cache, what of a kernel change or a re-read
//! of the kernel table is queued for peers, and ALARM's refresh walk over
//! our keys.
//!
//! Owns: the internal cache and the refresh cursor. Must not: apply
//! peers' messages, build datagrams, or read the clock (times are
//! arguments); it queues keys on the send side and nothing more.

use super::alarm::RefreshCursor;
use super::tx::Sender;
use super::{ReconcileReport, Replicate};
use crate::cache::{Confirm, FlowCache, Upsert};
use crate::flow::{Flow, FlowKey};

/// A re-read of the kernel table sends a flow whose timeout now ends this
/// many seconds later than the one last sent (traffic refreshed it): peers
/// then know which flows are live, and commit those first.
const REFRESH_SLACK_S: u32 = 10;

/// A comparison of the internal cache with a kernel dump, under way (see
/// `Local::reconcile_begin`).
#[derive(Debug)]
pub struct Reconciling {
    generation: u32,
    replicate: Replicate,
    report: ReconcileReport,
}

#[derive(Debug)]
pub(crate) struct Local {
    pub cache: FlowCache,
    /// ALARM: the walk that re-sends every flow once per period.
    pub refresh: Option<RefreshCursor>,
    /// Flows the wire format's checks refused (never cached or sent).
    pub refused: u64,
}

impl Local {
    pub fn new(cache: FlowCache, refresh: Option<RefreshCursor>) -> Local {
        Local {
            cache,
            refresh,
            refused: 0,
        }
    }

    /// Cache one of our flows; with `replicate`, queue it if it changed
    /// (one table probe for both).
    pub fn upsert(&mut self, flow: &Flow, now_ms: u64, replicate: bool, tx: &mut Sender) -> Upsert {
        let key = flow.key();
        let (what, queue) = self.cache.upsert_and_mark(flow, now_ms, replicate);
        if what == Upsert::Refused {
            self.refused += 1;
            // An earlier, valid state must not stay as if it were current.
            if self.cache.contains(&key) {
                self.delete(&key, replicate, tx);
            }
        }
        if what == Upsert::Created {
            if let Some(r) = self.refresh.as_mut() {
                r.insert(key);
            }
        }
        if queue {
            tx.queue.push_key(key);
        }
        what
    }

    /// A kernel DESTROY; with `replicate`, the delete is queued.
    pub fn delete(&mut self, key: &FlowKey, replicate: bool, tx: &mut Sender) {
        if self.cache.remove(key).is_none() {
            return;
        }
        if let Some(r) = self.refresh.as_mut() {
            r.remove(key);
        }
        if replicate {
            tx.enqueue(&mut self.cache, *key);
        }
    }

    /// Make the cache equal to a kernel dump, and queue for sending what
    /// `replicate` says (`holds_peer_flow`: whether a peer's view holds a
    /// key). In one step (the façade composes the three steps itself).
    #[cfg(test)]
    pub fn reconcile(
        &mut self,
        kernel: Vec<Flow>,
        now_ms: u64,
        replicate: Replicate,
        holds_peer_flow: impl Fn(&FlowKey) -> bool,
        tx: &mut Sender,
    ) -> ReconcileReport {
        let mut run = self.reconcile_begin(replicate);
        self.reconcile_chunk(&mut run, kernel, now_ms, holds_peer_flow, tx);
        self.reconcile_finish(run, tx)
    }

    /// Start comparing the cache with a kernel dump that arrives in
    /// chunks: every flow the kernel still has is stamped with a new
    /// generation; what is not stamped by `reconcile_finish` is gone.
    /// Changes made between chunks (kernel events) carry the new
    /// generation too, so they are never swept.
    pub fn reconcile_begin(&mut self, replicate: Replicate) -> Reconciling {
        Reconciling {
            generation: self.cache.begin_generation(),
            replicate,
            report: ReconcileReport::default(),
        }
    }

    /// Compare one chunk of the dump.
    pub fn reconcile_chunk(
        &mut self,
        run: &mut Reconciling,
        kernel: Vec<Flow>,
        now_ms: u64,
        holds_peer_flow: impl Fn(&FlowKey) -> bool,
        tx: &mut Sender,
    ) {
        let report = &mut run.report;
        for flow in kernel {
            // The kernel counts timeouts down by itself: a flow whose only
            // difference is its timeout has not changed.
            let confirm = self.cache.confirm(&flow, now_ms, Some(REFRESH_SLACK_S));
            if confirm == Confirm::Same {
                report.unchanged += 1;
                continue;
            }
            let send = match run.replicate {
                Replicate::Nothing => false,
                Replicate::Differences => true,
                Replicate::DifferencesButPeerFlows => !holds_peer_flow(&flow.key()),
            };
            if confirm == Confirm::Refreshed {
                let key = flow.key();
                if self.cache.refresh(flow, now_ms, send) {
                    tx.queue.push_key(key);
                }
                report.refreshed += 1;
                continue;
            }
            match self.upsert(&flow, now_ms, send, tx) {
                Upsert::Created => report.added += 1,
                Upsert::Updated => report.changed += 1,
                Upsert::Unchanged => report.unchanged += 1,
                Upsert::Refused => {}
            }
        }
    }

    /// The whole dump was compared: remove what it did not hold.
    pub fn reconcile_finish(&mut self, run: Reconciling, tx: &mut Sender) -> ReconcileReport {
        let Reconciling {
            generation,
            replicate,
            mut report,
        } = run;
        let mut gone = self.cache.sweep_older_than(generation);
        // The cache's iteration order is random per process; sending in key
        // order keeps a seeded simulation replayable.
        gone.sort_unstable();
        for key in gone {
            if let Some(r) = self.refresh.as_mut() {
                r.remove(&key);
            }
            report.removed += 1;
            if replicate != Replicate::Nothing {
                tx.enqueue(&mut self.cache, key);
            }
        }
        report
    }

    /// Forget our flows (`-f internal`); nothing is sent, pending keys are
    /// dropped (they would otherwise go out as deletes).
    pub fn flush(&mut self, tx: &mut Sender) {
        self.cache.clear();
        tx.queue.drop_keys();
        if let Some(r) = self.refresh.as_mut() {
            r.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;

    fn local() -> (Local, Sender) {
        (
            Local::new(FlowCache::with_seed(1), Some(RefreshCursor::new(1_000, 0))),
            Sender::new(64, 0),
        )
    }

    #[test]
    fn changes_are_queued_once_and_echoes_not_at_all() {
        let (mut l, mut tx) = local();
        assert_eq!(l.upsert(&udp(1), 0, true, &mut tx), Upsert::Created);
        assert_eq!(l.upsert(&udp(1), 0, true, &mut tx), Upsert::Unchanged);
        let mut changed = udp(1);
        changed.mark = 4;
        assert_eq!(l.upsert(&changed, 0, true, &mut tx), Upsert::Updated);
        assert_eq!(tx.queue.len(), 1, "coalesced");
        assert_eq!(l.upsert(&udp(2), 0, false, &mut tx), Upsert::Created);
        assert_eq!(tx.queue.len(), 1, "our own commit's echo is not sent");
        l.delete(&udp(2).key(), true, &mut tx);
        l.delete(&udp(3).key(), true, &mut tx);
        assert_eq!(
            tx.queue.len(),
            2,
            "a delete of a flow never cached is not sent"
        );
        assert_eq!(l.refresh.as_ref().map(RefreshCursor::len), Some(1));
        l.flush(&mut tx);
        assert!(l.cache.is_empty() && tx.queue.is_empty());
    }

    #[test]
    fn a_reconcile_sends_differences_and_removals_and_spares_peer_flows() {
        let (mut l, mut tx) = local();
        let kernel: Vec<Flow> = (0..10).map(udp).collect();
        let r = l.reconcile(kernel.clone(), 0, Replicate::Nothing, |_| false, &mut tx);
        assert_eq!((r.added, tx.queue.len()), (10, 0));
        // One changed, one gone, one new that a peer's view holds.
        let mut next = kernel[1..].to_vec();
        next[0].mark = 7;
        next.push(udp(50));
        let peer = udp(50).key();
        let r = l.reconcile(
            next,
            1_000,
            Replicate::DifferencesButPeerFlows,
            |k| *k == peer,
            &mut tx,
        );
        assert_eq!((r.added, r.changed, r.removed, r.unchanged), (1, 1, 1, 8));
        assert_eq!(
            tx.queue.len(),
            2,
            "the change and the removal, not the peer's flow"
        );
        assert_eq!(l.cache.len(), 10);
    }

    #[test]
    fn a_chunked_reconcile_keeps_changes_made_between_chunks() {
        let (mut l, mut tx) = local();
        let kernel: Vec<Flow> = (0..10).map(udp).collect();
        let r = l.reconcile(kernel.clone(), 0, Replicate::Nothing, |_| false, &mut tx);
        assert_eq!(r.added, 10);
        // A dump that lacks flows 8 and 9, compared in two chunks; between
        // them an event creates flow 20 (newer than the dump).
        let mut run = l.reconcile_begin(Replicate::Differences);
        l.reconcile_chunk(&mut run, kernel[..4].to_vec(), 1_000, |_| false, &mut tx);
        assert_eq!(l.upsert(&udp(20), 1_000, true, &mut tx), Upsert::Created);
        l.reconcile_chunk(&mut run, kernel[4..8].to_vec(), 1_000, |_| false, &mut tx);
        let r = l.reconcile_finish(run, &mut tx);
        assert_eq!((r.removed, r.unchanged), (2, 8));
        assert!(
            l.cache.contains(&udp(20).key()),
            "the event's flow was swept"
        );
        assert!(!l.cache.contains(&udp(9).key()));
        assert_eq!(l.cache.len(), 9);
    }
}
