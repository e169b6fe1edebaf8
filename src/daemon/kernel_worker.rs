//! The kernel worker: a plain thread that owns the writer sockets and does
//! the daemon's heavy kernel work one job at a time (commits, flushes,
//! table reads, warm standby's writes), so the owner's loop never waits
//! for the kernel or walks a million flows.
//!
//! Owns: running jobs and reporting them back. Must not: hold state
//! between jobs beyond its sockets, or decide policy (the owner picks the
//! commit plan; `commit_plan` orders the flows).

use super::commit_plan::{CommitPlan, CommitSource};
use super::warm_standby::lost_from_table;
use crate::cache::FrozenCache;
use crate::control::Reply;
use crate::expect::Expectation;
use crate::filter::Filter;
use crate::flow::{Flow, FlowKey};
use crate::kernel::dump::{dump_expectations, dump_table, dump_table_compact};
use crate::kernel::write::{
    missing_from_table, CreateOptions, WriteClock, WriteOp, WriteReport, Writer,
};
use crate::kernel::{ExpectOp, ExpectWriteReport};
use crate::process;
use crate::wire::FlowList;
use foldhash::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Errors a merged write report keeps.
const MAX_REPORTED_ERRORS: usize = 10;
/// Commits this large run with kernel events paused (see the owner).
pub(super) const QUIET_COMMIT_MIN: usize = 10_000;
/// A commit: the peers' flows frozen when it began, and how to write them;
/// then the peers' expectations (their timeouts aged already), once every
/// flow is in, since an expectation needs its master in the table.
pub(super) struct CommitJob {
    /// When the client asked: a commit's duration counts from here.
    pub requested: Instant,
    pub source: CommitSource,
    pub plan: CommitPlan,
    pub options: CreateOptions,
    pub expectations: Vec<Expectation>,
}

/// What a commit wrote, and where the writer's time went.
pub(super) struct CommitReport {
    pub flows: WriteReport,
    pub expectations: ExpectWriteReport,
    pub clock: WriteClock,
    /// How long the writing thread waited, runnable, for a CPU meanwhile
    /// (its own encoder or the owner running on it, another program):
    /// `None` where the kernel does not say.
    pub writer_runqueue: Option<Duration>,
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
    /// The flows the filter accepts, in their wire encoding.
    pub accepted: FlowList,
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
    /// The report and the keys of the flows deleted.
    FlushKernel(
        Result<(WriteReport, Vec<FlowKey>), String>,
        Option<oneshot::Sender<Reply>>,
    ),
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
            let requested = job.requested;
            Done::Commit(commit(writer, job, progress), requested, client)
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
                .flush_keys(&|flow: &Flow| !filter.accepts(flow) || keep.contains(&flow.key()))
                .map_err(|e| e.to_string());
            Done::FlushKernel(report, client)
        }
        Job::Dump {
            purpose,
            filter,
            mirror,
        } => {
            let read = match mirror {
                // The common case: keep only the accepted flows, compact.
                None => {
                    dump_table_compact(&|f: &Flow| filter.accepts(f)).map(|accepted| TableRead {
                        accepted,
                        lost: None,
                    })
                }
                // Warm standby with a mirror that may have holes: the
                // whole table is compared with the peers' flows.
                Some(peers) => dump_table().map(|table| {
                    let lost = Some(lost_from_table(&peers, &table));
                    let accepted = table.into_iter().filter(|f| filter.accepts(f)).collect();
                    TableRead { accepted, lost }
                }),
            }
            .map_err(|e| e.to_string());
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
        requested: _,
        source,
        plan,
        options,
        expectations,
    } = job;
    writer.take_clock();
    let runqueue_before = process::thread_runqueue_wait();
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
        clock: writer.take_clock(),
        writer_runqueue: runqueue_before
            .zip(process::thread_runqueue_wait())
            .map(|(before, after)| after.saturating_sub(before)),
    })
}

/// The flows of a commit, by its plan.
fn commit_flows(
    writer: &mut Writer,
    mut source: CommitSource,
    plan: CommitPlan,
    options: &CreateOptions,
    progress: &AtomicU64,
) -> Result<WriteReport, String> {
    match plan {
        CommitPlan::OnlyMissing(missing) => {
            let flows = source.ordered(|k| missing.contains(k));
            Ok(write_flows(writer, flows.into_iter(), options, progress))
        }
        CommitPlan::Verify(missing) => {
            // Write the flows known to be missing first, then read the
            // table and write every other flow that is absent or differs
            // in its NAT binding or mark, whatever emptied it (`-t`, `-F`,
            // expiry, a failed batch, another program). Flows found in
            // place count as done.
            let first = source.ordered(|k| missing.contains(k));
            let mut report = write_flows(writer, first.into_iter(), options, progress);
            let rest = source.ordered(|k| !missing.contains(k));
            let (todo, in_place) = missing_from_table(rest)
                .map_err(|e| format!("cannot read the kernel table: {e}"))?;
            progress.fetch_add(in_place as u64, Ordering::Relaxed);
            merge_report(
                &mut report,
                write_flows(writer, todo.into_iter(), options, progress),
            );
            Ok(report)
        }
        CommitPlan::RecentFirst => {
            // The most recently active flows go in at once; the rest, which
            // the owner copies meanwhile, is decoded by the writer's
            // encoder as it goes.
            let rest = source.later_flows();
            Ok(write_flows(
                writer,
                source.recent_first().chain(rest),
                options,
                progress,
            ))
        }
    }
}

/// Write `flows` through one socket, pipelined (ctnetlink makes one create
/// at a time whatever the number of sockets: a second writer only spins on
/// its lock, measured at twice the CPU for no gain); the flows at the front
/// (the most recently active) go in first, and `progress` advances with
/// each send.
fn write_flows(
    writer: &mut Writer,
    flows: impl Iterator<Item = Flow> + Send,
    options: &CreateOptions,
    progress: &AtomicU64,
) -> WriteReport {
    writer.create_bulk(flows, options, &|sent| {
        progress.fetch_add(sent as u64, Ordering::Relaxed);
    })
}

fn merge_report(into: &mut WriteReport, part: WriteReport) {
    into.ok += part.ok;
    into.failed += part.failed;
    let room = MAX_REPORTED_ERRORS.saturating_sub(into.first_errors.len());
    into.first_errors
        .extend(part.first_errors.into_iter().take(room));
    into.failed_keys.extend(part.failed_keys);
    into.replaces_lost += part.replaces_lost;
    into.updated_in_place += part.updated_in_place;
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    replaces_lost: 1,
                    updated_in_place: 1,
                },
            );
        }
        assert_eq!((into.ok, into.failed), (6, 15));
        assert_eq!((into.replaces_lost, into.updated_in_place), (3, 3));
        assert_eq!(into.first_errors.len(), MAX_REPORTED_ERRORS);
    }
}
