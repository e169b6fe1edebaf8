//! The kernel worker: a plain thread that owns the writer sockets and does
//! the daemon's heavy kernel work one job at a time (commits, flushes,
//! table reads, warm standby's writes), so the owner's loop never waits
//! for the kernel or walks a million flows.
//!
//! Owns: running jobs and reporting them back. Must not: hold state
//! between jobs beyond its sockets, or decide policy (the owner picks the
//! commit plan; `commit_plan` orders the flows).

use super::commit_plan::{CommitPlan, CommitSource, URGENT_COMMIT};
use super::warm_standby::lost_from_table;
use crate::cache::FrozenCache;
use crate::control::Reply;
use crate::expect::Expectation;
use crate::filter::Filter;
use crate::flow::{Flow, FlowKey};
use crate::kernel::dump::{dump_expectations, dump_table};
use crate::kernel::write::{missing_from_table, CreateOptions, WriteOp, WriteReport, Writer};
use crate::kernel::{ExpectOp, ExpectWriteReport};
use foldhash::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most writer sockets (and threads) one commit uses.
const MAX_COMMIT_WRITERS: usize = 4;
/// Errors a merged write report keeps.
const MAX_REPORTED_ERRORS: usize = 10;
/// Commits this large use several writer sockets (and run with kernel
/// events paused, see the owner).
pub(super) const QUIET_COMMIT_MIN: usize = 10_000;
/// Flows per commit step (the progress a terminal sees moves by this much).
const COMMIT_CHUNK: usize = 50_000;
/// Flows written by the first step of a commit: small, so that the most
/// recently active flows (the commit set is sorted that way) are in the
/// kernel within milliseconds.
const FIRST_COMMIT_STEP: usize = 2048;

/// A commit: the peers' flows frozen when it began, and how to write them;
/// then the peers' expectations (their timeouts aged already), once every
/// flow is in, since an expectation needs its master in the table.
pub(super) struct CommitJob {
    pub source: CommitSource,
    pub plan: CommitPlan,
    pub options: CreateOptions,
    pub expectations: Vec<Expectation>,
}

/// What a commit wrote.
pub(super) struct CommitReport {
    pub flows: WriteReport,
    pub expectations: ExpectWriteReport,
}

/// Why the table is being read, and who waits for it.
pub(super) enum DumpPurpose {
    /// `-R`: repopulate the internal cache, send nothing; answer these clients.
    Resync(Vec<oneshot::Sender<Reply>>),
    /// A netlink overrun or the periodic re-read: reconcile and send the
    /// differences.
    Heal,
}

/// Work for the kernel worker.
pub(super) enum Job {
    Commit(CommitJob, Option<oneshot::Sender<Reply>>),
    /// Delete every flow the filter accepts, except the peers' (warm
    /// standby: their flows mirrored here, frozen when the flush began).
    FlushKernel {
        filter: Filter,
        keep: Vec<FrozenCache>,
        client: Option<oneshot::Sender<Reply>>,
    },
    /// Read the table; keep the flows `filter` accepts; with `mirror` (warm
    /// standby whose mirror may have holes), find the peer flows it lacks.
    Dump {
        purpose: DumpPurpose,
        filter: Filter,
        mirror: Option<Vec<FrozenCache>>,
    },
    /// Warm standby: mirror peers' changes into our kernel.
    Inject(Vec<WriteOp>),
    /// Read the kernel's expectations; `replicate`: send the differences
    /// (a heal), or only cache them (start-up, `-R expect`).
    DumpExpectations {
        replicate: bool,
        clients: Vec<oneshot::Sender<Reply>>,
    },
    /// Warm standby: mirror peers' expectation changes into our kernel.
    InjectExpectations(Vec<ExpectOp>),
    /// `-F expect`: delete every expectation in the kernel.
    FlushExpectations(oneshot::Sender<Reply>),
}

/// A table read, sorted out.
pub(super) struct TableRead {
    /// The flows the filter accepts.
    pub accepted: Vec<Flow>,
    /// Peer flows (as frozen) that the table lacks.
    pub lost: Option<Vec<FlowKey>>,
}

/// What the kernel worker hands back.
pub(super) enum Done {
    Commit(
        Result<CommitReport, String>,
        Instant,
        Option<oneshot::Sender<Reply>>,
    ),
    DumpExpectations(
        Result<Vec<Expectation>, String>,
        bool,
        Vec<oneshot::Sender<Reply>>,
    ),
    InjectExpectations(ExpectWriteReport, Vec<ExpectOp>),
    FlushExpectations(Result<(), String>, oneshot::Sender<Reply>),
    FlushKernel(Result<WriteReport, String>, Option<oneshot::Sender<Reply>>),
    Dump(Result<TableRead, String>, DumpPurpose),
    /// The report, and the keys of every op in the batch.
    Inject(WriteReport, Vec<FlowKey>),
}

pub(super) type JobSender = std::sync::mpsc::Sender<(Job, mpsc::Sender<Done>)>;

pub(super) fn spawn(
    mut writer: Writer,
    mut injector: Option<Writer>,
    progress: Arc<AtomicU64>,
    jobs: std::sync::mpsc::Receiver<(Job, mpsc::Sender<Done>)>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ct-writer".into())
        .spawn(move || {
            super::priority::ordinary_thread();
            while let Ok((job, done)) = jobs.recv() {
                let result = run_job(job, &mut writer, injector.as_mut(), &progress);
                if done.blocking_send(result).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

fn run_job(
    job: Job,
    writer: &mut Writer,
    injector: Option<&mut Writer>,
    progress: &AtomicU64,
) -> Done {
    match job {
        Job::Commit(job, client) => {
            let started = Instant::now();
            Done::Commit(commit(writer, job, progress), started, client)
        }
        Job::FlushKernel {
            filter,
            keep,
            client,
        } => {
            let keep: HashSet<FlowKey> = keep
                .iter()
                .flat_map(FrozenCache::entries)
                .map(|e| e.key())
                .collect();
            let report = writer
                .flush(&|flow: &Flow| !filter.accepts(flow) || keep.contains(&flow.key()))
                .map_err(|e| e.to_string());
            Done::FlushKernel(report, client)
        }
        Job::Dump {
            purpose,
            filter,
            mirror,
        } => {
            let read = dump_table().map_err(|e| e.to_string()).map(|table| {
                let lost = mirror.map(|peers| lost_from_table(&peers, &table));
                let accepted = table.into_iter().filter(|f| filter.accepts(f)).collect();
                TableRead { accepted, lost }
            });
            Done::Dump(read, purpose)
        }
        Job::Inject(ops) => {
            let keys: Vec<FlowKey> = ops.iter().map(WriteOp::key).collect();
            let report = match injector {
                Some(injector) => injector.apply(&ops),
                None => WriteReport {
                    failed: ops.len() as u64,
                    failed_keys: keys.clone(),
                    ..WriteReport::default()
                },
            };
            Done::Inject(report, keys)
        }
        Job::DumpExpectations { replicate, clients } => Done::DumpExpectations(
            dump_expectations().map_err(|e| e.to_string()),
            replicate,
            clients,
        ),
        Job::InjectExpectations(ops) => {
            let report = match injector {
                Some(injector) => injector.apply_expectations(&ops),
                None => ExpectWriteReport {
                    failed: ops.len() as u64,
                    ..ExpectWriteReport::default()
                },
            };
            Done::InjectExpectations(report, ops)
        }
        Job::FlushExpectations(client) => Done::FlushExpectations(
            writer.flush_expectations().map_err(|e| e.to_string()),
            client,
        ),
    }
}

/// Run a commit: the flows by its plan, then the expectations.
fn commit(
    writer: &mut Writer,
    job: CommitJob,
    progress: &AtomicU64,
) -> Result<CommitReport, String> {
    let CommitJob {
        source,
        plan,
        options,
        expectations,
    } = job;
    let flows = commit_flows(writer, source, plan, &options, progress)?;
    let ops: Vec<ExpectOp> = expectations.into_iter().map(ExpectOp::Create).collect();
    let expectations = if ops.is_empty() {
        ExpectWriteReport::default()
    } else {
        writer.apply_expectations(&ops)
    };
    Ok(CommitReport {
        flows,
        expectations,
    })
}

/// The flows of a commit, by its plan.
fn commit_flows(
    writer: &mut Writer,
    source: CommitSource,
    plan: CommitPlan,
    options: &CreateOptions,
    progress: &AtomicU64,
) -> Result<WriteReport, String> {
    match plan {
        CommitPlan::OnlyMissing(missing) => {
            let flows = source.ordered(|k| missing.contains(k));
            Ok(write_in_parallel(writer, &flows, options, progress))
        }
        CommitPlan::Verify(missing) => {
            // Write the flows known to be missing first, then read the
            // table and write every other flow that is absent or differs
            // in its NAT binding or mark, whatever emptied it (`-t`, `-F`,
            // expiry, a failed batch, another program). Flows found in
            // place count as done.
            let first = source.ordered(|k| missing.contains(k));
            let mut report = write_in_parallel(writer, &first, options, progress);
            let rest = source.ordered(|k| !missing.contains(k));
            let (todo, in_place) = missing_from_table(rest)
                .map_err(|e| format!("cannot read the kernel table: {e}"))?;
            progress.fetch_add(in_place as u64, Ordering::Relaxed);
            merge_report(
                &mut report,
                write_in_parallel(writer, &todo, options, progress),
            );
            Ok(report)
        }
        CommitPlan::RecentFirst => {
            // The most recently active flows go in at once; the rest is
            // decoded and sorted on another thread meanwhile.
            let urgent = source.most_recent(URGENT_COMMIT);
            let urgent_keys: HashSet<FlowKey> = urgent.iter().map(Flow::key).collect();
            std::thread::scope(|scope| {
                let rest = scope.spawn(|| source.ordered(|k| !urgent_keys.contains(k)));
                let mut report = write_in_parallel(writer, &urgent, options, progress);
                match rest.join() {
                    Ok(rest) => merge_report(
                        &mut report,
                        write_in_parallel(writer, &rest, options, progress),
                    ),
                    Err(_) => {
                        report.failed += 1;
                        report
                            .first_errors
                            .push("gathering the rest of the commit failed".into());
                    }
                }
                Ok(report)
            })
        }
    }
}

/// The steps of a commit, in order: a small first one, then
/// `COMMIT_CHUNK`-sized ones.
fn commit_steps(len: usize) -> Vec<std::ops::Range<usize>> {
    let mut steps = Vec::new();
    let mut at = 0;
    let mut size = FIRST_COMMIT_STEP;
    while at < len {
        let end = (at + size).min(len);
        steps.push(at..end);
        at = end;
        size = COMMIT_CHUNK;
    }
    steps
}

/// Write `flows` with one writer per core for a large commit (the kernel
/// inserts on several CPUs at once; our events are paused meanwhile, so
/// the extra sockets' port ids need not be known). The writers take the
/// steps in order, so the flows at the front (the most recently active)
/// go in first; each step advances `progress`.
fn write_in_parallel(
    writer: &mut Writer,
    flows: &[Flow],
    options: &CreateOptions,
    progress: &AtomicU64,
) -> WriteReport {
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_COMMIT_WRITERS);
    let mut extra: Vec<Writer> = if flows.len() >= QUIET_COMMIT_MIN {
        (1..cores).filter_map(|_| Writer::open().ok()).collect()
    } else {
        Vec::new()
    };
    let steps = commit_steps(flows.len());
    let next_step = AtomicU64::new(0);
    let write = |writer: &mut Writer| {
        let mut report = WriteReport::default();
        loop {
            let i = next_step.fetch_add(1, Ordering::Relaxed) as usize;
            let Some(step) = steps.get(i).and_then(|r| flows.get(r.clone())) else {
                break;
            };
            merge_report(&mut report, writer.create_all(step, options));
            progress.fetch_add(step.len() as u64, Ordering::Relaxed);
        }
        report
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = extra.iter_mut().map(|w| scope.spawn(|| write(w))).collect();
        let mut report = write(writer);
        for handle in handles {
            match handle.join() {
                Ok(part) => merge_report(&mut report, part),
                Err(_) => {
                    report.failed += 1;
                    report
                        .first_errors
                        .push("a commit writer thread panicked".into());
                }
            }
        }
        report
    })
}

fn merge_report(into: &mut WriteReport, part: WriteReport) {
    into.ok += part.ok;
    into.failed += part.failed;
    let room = MAX_REPORTED_ERRORS.saturating_sub(into.first_errors.len());
    into.first_errors
        .extend(part.first_errors.into_iter().take(room));
    into.failed_keys.extend(part.failed_keys);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_steps_start_small_and_cover_everything_once() {
        assert!(commit_steps(0).is_empty());
        assert_eq!(commit_steps(10), vec![0..10]);
        let steps = commit_steps(FIRST_COMMIT_STEP + 2 * COMMIT_CHUNK + 5);
        assert_eq!(steps.len(), 4);
        assert_eq!(steps[0], 0..FIRST_COMMIT_STEP);
        assert_eq!(steps[1].len(), COMMIT_CHUNK);
        assert_eq!(steps[3].len(), 5);
        assert!(steps.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn merged_reports_add_up_and_keep_few_errors() {
        let mut into = WriteReport::default();
        for _ in 0..3 {
            merge_report(
                &mut into,
                WriteReport {
                    ok: 2,
                    failed: 5,
                    first_errors: vec!["e".into(); 5],
                    failed_keys: Vec::new(),
                },
            );
        }
        assert_eq!((into.ok, into.failed), (6, 15));
        assert_eq!(into.first_errors.len(), MAX_REPORTED_ERRORS);
    }
}
