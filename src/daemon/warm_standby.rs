//! Warm standby's bookkeeping: which peer flows still have to be written
//! into our kernel, the batch the kernel worker is writing, what failed,
//! and whether the mirror is known to be intact.
//!
//! Owns: the write queue and its batches, the failed set, the break count
//! that says whether flows may have left the kernel unseen, and finding
//! the flows a table re-read shows missing. Must not: read the caches
//! (the owner hands in peers' changes and flows) or touch the kernel.

use crate::cache::FrozenCache;
pub use crate::counters::WarmCounters;
use crate::flow::{Flow, FlowKey};
use crate::kernel::write::{WriteOp, WriteReport};
use crate::sync::Applied;
use foldhash::HashSet;

/// The kernel worker's side of the mirror.
#[derive(Debug, Default)]
enum Batch {
    #[default]
    Idle,
    /// A batch is being written; these are its keys.
    Writing(HashSet<FlowKey>),
}

#[derive(Debug, Default)]
pub(super) struct WarmStandby {
    /// Every mirrored flow has at least this timeout in our kernel: the
    /// primary's packets refresh its copy without telling anyone.
    warm_timeout_s: u32,
    queue: Vec<WriteOp>,
    batch: Batch,
    failed: HashSet<FlowKey>,
    counters: WarmCounters,
    /// Times the mirror could have lost flows unseen: an event socket
    /// overrun, a failed read, events paused for a commit. The mirror is
    /// known intact while this equals `checked_at_break`, the value when
    /// the table was last compared with the peers' caches (or at start).
    breaks: u64,
    checked_at_break: u64,
    /// `breaks` when the running table re-read began.
    read_started_at_break: u64,
}

impl WarmStandby {
    pub(super) fn new(warm_timeout_s: u32) -> WarmStandby {
        WarmStandby {
            warm_timeout_s,
            ..WarmStandby::default()
        }
    }

    pub(super) fn counters(&self) -> WarmCounters {
        WarmCounters {
            pending: self.missing().len() as u64,
            ..self.counters
        }
    }

    /// A peer's flow as warm standby writes it.
    pub(super) fn mirrored(&self, mut flow: Flow) -> Flow {
        flow.timeout = flow.timeout.max(self.warm_timeout_s);
        flow
    }

    /// Queue the peers' latest changes.
    pub(super) fn queue_applied(&mut self, changes: Vec<Applied>) {
        for change in changes {
            let op = match change {
                Applied::Created(flow) => WriteOp::Create(self.mirrored(flow)),
                Applied::Updated(flow) => WriteOp::Update(self.mirrored(flow)),
                Applied::Delete(key) => WriteOp::Delete(key),
            };
            self.queue.push(op);
        }
    }

    /// The kernel lost a flow a peer still has: write it again.
    pub(super) fn restore(&mut self, flow: Flow) {
        self.counters.restored += 1;
        let op = WriteOp::Create(self.mirrored(flow));
        self.queue.push(op);
    }

    /// The next batch for the kernel worker, when it is free. Batches grow
    /// while it is busy, so a burst is written in few large sends.
    pub(super) fn take_batch(&mut self) -> Option<Vec<WriteOp>> {
        if matches!(self.batch, Batch::Writing(_)) || self.queue.is_empty() {
            return None;
        }
        let batch = std::mem::take(&mut self.queue);
        self.batch = Batch::Writing(batch.iter().map(WriteOp::key).collect());
        Some(batch)
    }

    /// The kernel worker wrote a batch (`keys` are its ops' keys).
    pub(super) fn batch_done(&mut self, report: WriteReport, keys: &[FlowKey]) {
        self.batch = Batch::Idle;
        for key in keys {
            self.failed.remove(key);
        }
        self.counters.written += report.ok;
        self.counters.failed += report.failed;
        if report.failed > 0 {
            tracing::warn!(
                failed = report.failed,
                first_errors = ?report.first_errors,
                "warm standby could not write some flows; -c will"
            );
        }
        self.failed.extend(report.failed_keys);
    }

    /// Flows may have left the kernel unseen (an overrun, a failed read,
    /// events paused).
    pub(super) fn note_break(&mut self) {
        self.breaks += 1;
    }

    /// Every flow the peers hold is in the kernel but those `missing`
    /// lists: nothing was lost unseen since the table was last checked.
    pub(super) fn intact(&self) -> bool {
        self.breaks == self.checked_at_break
    }

    /// A table re-read begins.
    pub(super) fn table_read_started(&mut self) {
        self.read_started_at_break = self.breaks;
    }

    /// After a re-read found `lost` (peer flows the table lacked, as the
    /// peers hold them now): write them again. The mirror is then known
    /// intact, unless it broke once more while the table was read.
    pub(super) fn repaired(&mut self, lost: Vec<Flow>) {
        let restored = lost.len() as u64;
        for flow in lost {
            let op = WriteOp::Create(self.mirrored(flow));
            self.queue.push(op);
        }
        self.counters.restored += restored;
        if restored > 0 {
            tracing::info!(
                restored,
                "warm standby: flows missing from the kernel written again"
            );
        }
        self.checked_at_break = self.read_started_at_break;
    }

    /// The peers' flows not (yet) in our kernel.
    pub(super) fn missing(&self) -> HashSet<FlowKey> {
        let mut missing: HashSet<FlowKey> = self.failed.clone();
        if let Batch::Writing(keys) = &self.batch {
            missing.extend(keys.iter().copied());
        }
        missing.extend(self.queue.iter().map(WriteOp::key));
        missing
    }
}

/// The keys of the frozen peer flows that `table` (a kernel dump) lacks.
pub(super) fn lost_from_table(peers: &[FrozenCache], table: &[Flow]) -> Vec<FlowKey> {
    let present: HashSet<FlowKey> = table.iter().map(Flow::key).collect();
    peers
        .iter()
        .flat_map(FrozenCache::entries)
        .map(|e| e.key())
        .filter(|k| !present.contains(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::FlowCache;
    use crate::flow::test_flows::udp;

    #[test]
    fn changes_wait_while_a_batch_is_written_then_go_together() {
        let mut warm = WarmStandby::new(300);
        warm.queue_applied(vec![Applied::Created(udp(1))]);
        let first = warm.take_batch().expect("a batch");
        assert_eq!(first.len(), 1);
        warm.queue_applied(vec![
            Applied::Created(udp(2)),
            Applied::Delete(udp(3).key()),
        ]);
        assert!(warm.take_batch().is_none(), "one batch at a time");
        let missing = warm.missing();
        assert_eq!(missing.len(), 3, "in flight and queued count as missing");
        warm.batch_done(
            WriteReport {
                ok: 1,
                ..WriteReport::default()
            },
            &[udp(1).key()],
        );
        assert_eq!(warm.take_batch().map(|b| b.len()), Some(2));
    }

    #[test]
    fn mirrored_flows_get_at_least_the_warm_timeout() {
        let warm = WarmStandby::new(300);
        let mut f = udp(1);
        f.timeout = 30;
        assert_eq!(warm.mirrored(f.clone()).timeout, 300);
        f.timeout = 4000;
        assert_eq!(warm.mirrored(f).timeout, 4000);
    }

    #[test]
    fn failed_writes_stay_missing_until_written() {
        let mut warm = WarmStandby::new(0);
        warm.queue_applied(vec![Applied::Created(udp(1)), Applied::Created(udp(2))]);
        let _ = warm.take_batch();
        let keys = [udp(1).key(), udp(2).key()];
        warm.batch_done(
            WriteReport {
                ok: 1,
                failed: 1,
                failed_keys: vec![udp(2).key()],
                ..WriteReport::default()
            },
            &keys,
        );
        assert_eq!(warm.missing(), [udp(2).key()].into_iter().collect());
        assert_eq!(warm.counters().failed, 1);
        warm.restore(udp(2));
        let _ = warm.take_batch();
        warm.batch_done(
            WriteReport {
                ok: 1,
                ..WriteReport::default()
            },
            &[udp(2).key()],
        );
        assert!(warm.missing().is_empty());
        assert_eq!(warm.counters().restored, 1);
    }

    #[test]
    fn a_break_makes_the_mirror_unknown_until_a_read_that_began_after_it() {
        let mut warm = WarmStandby::new(0);
        assert!(warm.intact());
        warm.note_break();
        assert!(!warm.intact());
        warm.table_read_started();
        // Another break while the table is read: that read does not cover it.
        warm.note_break();
        warm.repaired(Vec::new());
        assert!(!warm.intact());
        warm.table_read_started();
        warm.repaired(vec![udp(9)]);
        assert!(warm.intact());
        assert_eq!(warm.counters().restored, 1);
        assert_eq!(warm.missing(), [udp(9).key()].into_iter().collect());
    }

    #[test]
    fn lost_flows_are_the_peers_flows_the_table_lacks() {
        let mut peer = FlowCache::with_seed(3);
        for port in 1..=5 {
            peer.upsert(udp(port), 1_000);
        }
        let table = vec![udp(1), udp(3), udp(5), udp(77)];
        let mut lost = lost_from_table(&[peer.freeze()], &table);
        lost.sort_by_key(|k| format!("{k:?}"));
        let mut want = vec![udp(2).key(), udp(4).key()];
        want.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(lost, want);
    }
}
