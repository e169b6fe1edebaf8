//! Control requests: what each `ctsyncd` client command does to the
//! daemon, and the commit's start and end.
//!
//! Owns: translating a request into core calls, kernel jobs or an
//! off-thread rendering, and answering the client. Must not: walk a cache
//! here (freeze it and hand the copy over) or write to the kernel.

use super::commit_plan::{CommitPlan, CommitSource};
use super::kernel_worker::{CommitJob, CommitReport, DumpPurpose, Job, QUIET_COMMIT_MIN};
use super::recent_split::{RecentSplit, URGENT_COMMIT};
use super::setup::millis;
use super::views::{DumpSource, SlicedDump, View};
use super::{failure, success, CommitPhase, Daemon, PostCommitRead, OWN_WRITES_MEMORY};
use crate::cache::FlowCache;
use crate::control::{CacheSel, Envelope, Reply, Request, StatsSection};
use crate::counters::micros;
use crate::kernel::write::CreateOptions;
use crate::kernel::KernelError;
use crate::process;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

impl Daemon {
    pub(super) fn on_request(&mut self, envelope: Envelope, reply: oneshot::Sender<Reply>) {
        let now = self.now_ms();
        let json = envelope.json;
        let answer = match envelope.request {
            Request::Commit => return self.start_commit(None, Tables::BOTH, now, reply),
            Request::CommitCt => return self.start_commit(None, Tables::FLOWS, now, reply),
            Request::CommitExpect => {
                return self.start_commit(None, Tables::EXPECTATIONS, now, reply)
            }
            Request::CommitPeer { node_id } => {
                if self.node.external().contains_key(&node_id) {
                    return self.start_commit(Some(node_id), Tables::BOTH, now, reply);
                }
                failure(format!("no flows from a peer with node id {node_id}"))
            }
            Request::DumpInternalExpect => self.render_expectations(true, json),
            Request::DumpExternalExpect => self.render_expectations(false, json),
            Request::FlushKernelExpect => return self.flush_kernel_expectations(reply),
            Request::ResyncFromKernelExpect => {
                tracing::info!("resync with master expectation table");
                return self.read_expectations(false, vec![reply]);
            }
            Request::FlushCaches(which) => {
                if self.commit == CommitPhase::Running && which != CacheSel::Internal {
                    failure("ignoring flush command, commit still in progress".into())
                } else {
                    tracing::info!(?which, "flushing caches");
                    self.forget_pending_expectations(which);
                    if which != CacheSel::External {
                        self.node.flush_internal();
                        if let Some(cd) = &mut self.cd {
                            cd.node.flush_internal();
                        }
                        self.timers.scheduled_flush_at = None;
                    }
                    if which != CacheSel::Internal {
                        self.node.flush_external();
                        // No peer's claim left to yield to: what we found
                        // in the kernel at start is ours (a promotion).
                        self.provisional.confirm_all();
                    }
                    success(String::new())
                }
            }
            Request::FlushKernel => {
                tracing::info!("flushing kernel conntrack table");
                self.node.pause_digests();
                return self.flush_kernel(Some(reply));
            }
            Request::ResyncFromKernel => {
                tracing::info!("resync with master conntrack table");
                if self.table_read_running() {
                    // A read is running or being compared (an overrun
                    // heal, say): read the table again right after it,
                    // for this request.
                    self.pending_resyncs.push(reply);
                } else {
                    self.start_table_read(DumpPurpose::Resync(vec![reply]));
                }
                return;
            }
            Request::DumpInternal => {
                let view = View {
                    with_reply: true,
                    json,
                };
                let dump = SlicedDump::new(DumpSource::Internal, now, view, reply);
                return self.dumps.push(dump);
            }
            Request::DumpExternal => {
                let view = View {
                    with_reply: false,
                    json,
                };
                let dump = SlicedDump::new(DumpSource::External, now, view, reply);
                return self.dumps.push(dump);
            }
            Request::Stats(section) => success(self.render_stats(section, json)),
            Request::RequestResync => {
                tracing::info!("resync requested");
                self.node.request_resync(now);
                if let Some(cd) = &mut self.cd {
                    cd.node.request_resync();
                }
                success(String::new())
            }
            Request::SendBulk => {
                tracing::info!("sending bulk update");
                self.node.send_bulk(now);
                self.cd_bulk();
                success(String::new())
            }
            Request::ResetTimers => {
                // A demoted node: from now on the peer that took over owns
                // the flows, whatever our table still holds until the
                // purge; our digests would refill its view of us with them.
                self.node.pause_digests();
                if self.timers.scheduled_flush_at.is_none() {
                    let delay = u64::from(self.config.sync.purge_timeout_s);
                    tracing::info!("flushing conntrack table in {delay} secs");
                    self.timers.scheduled_flush_at =
                        Some(Instant::now() + Duration::from_secs(delay));
                }
                success(String::new())
            }
            Request::Kill => {
                self.stop = true;
                success(String::new())
            }
            Request::ReloadKeys => match self.reload_keys() {
                Ok(text) => success(text),
                Err(why) => failure(why),
            },
            Request::Reload => match self.reload() {
                Ok(text) => success(text),
                Err(why) => failure(why),
            },
            #[cfg(feature = "test-seams")]
            Request::DebugDropExternal { count } => {
                let victims: Vec<(u32, crate::flow::FlowKey)> = self
                    .node
                    .external()
                    .iter()
                    .flat_map(|(peer, cache)| cache.keys().map(|k| (*peer, k)))
                    .take(count)
                    .collect();
                let dropped = victims
                    .iter()
                    .filter(|(peer, key)| self.node.remove_external(*peer, key))
                    .count();
                success(format!("dropped {dropped} external flows\n"))
            }
            #[cfg(feature = "test-seams")]
            Request::DebugStall { ms } => {
                // Blocks the owner's loop on purpose (see the request).
                tracing::info!(ms, "debug-stall: the loop sleeps");
                std::thread::sleep(Duration::from_millis(ms));
                success(String::new())
            }
        };
        let _ = reply.send(answer);
    }

    /// Write the external cache (every peer's, or one peer's) into the
    /// kernel: flows, then expectations, as `tables` says; the client hears
    /// back when it is done. The caches are copied here (without warm
    /// standby the most recent flows first, the rest once the worker
    /// writes those, by age); the worker decodes, orders and writes them.
    fn start_commit(
        &mut self,
        peer: Option<u32>,
        tables: Tables,
        now_ms: u64,
        reply: oneshot::Sender<Reply>,
    ) {
        let requested = Instant::now();
        if self.commit == CommitPhase::Running {
            let _ = reply.send(failure("commit already in progress".into()));
            return;
        }
        self.commit = CommitPhase::Running;
        // As conntrackd: a commit cancels a pending `-t` flush.
        self.timers.scheduled_flush_at = None;
        let events_on = process::conntrack_events_on();
        let plan = match &self.warm {
            Some(warm) => CommitPlan::choose(true, warm.intact(), events_on, || warm.missing()),
            None => CommitPlan::choose(false, false, events_on, Default::default),
        };
        let peer_caches = self.commit_caches(peer, tables);
        // Warm standby with the mirror intact writes a few flows: copy only
        // those. Verifying walks every flow: copy them all. Otherwise copy
        // the most recently active flows now and the rest once the worker
        // writes those.
        let (caches, split) = match &plan {
            CommitPlan::OnlyMissing(missing) => (
                peer_caches.iter().map(|c| c.freeze_keys(missing)).collect(),
                None,
            ),
            CommitPlan::Verify(_) => (peer_caches.iter().map(|c| c.freeze()).collect(), None),
            CommitPlan::RecentFirst => {
                let t = Instant::now();
                let (recent, rest) =
                    RecentSplit::freeze_recent(&peer_caches, URGENT_COMMIT, now_ms);
                tracing::debug!(took = ?t.elapsed(), "commit: most recent flows copied");
                (recent, Some(rest))
            }
        };
        let (later_tx, later) = split
            .as_ref()
            .map(|_| std::sync::mpsc::sync_channel(1))
            .unzip();
        let source = CommitSource {
            caches,
            later,
            now_ms,
            configured_timeout: self.config.kernel.commit_timeout,
        };
        let total = if source.later.is_some() {
            peer_caches.iter().map(|c| c.len()).sum::<usize>() as u64
        } else {
            source.len() as u64
        };
        self.commit_progress.store(0, Ordering::Relaxed);
        self.commit_counters.running = true;
        self.commit_counters.done = 0;
        self.commit_counters.total = total;
        // A large commit would make the kernel report every flow back to
        // us, only for us to ignore it: listen to nothing while it runs and
        // re-read the table afterwards (what else changed meanwhile is then
        // found and sent, the committed flows cached as our own writes).
        if total >= QUIET_COMMIT_MIN as u64 {
            if let Some(warm) = &mut self.warm {
                warm.note_break();
            }
            match self.events_switch.set(false) {
                Ok(()) => self.events_paused = true,
                Err(e) => {
                    self.kernel_counters.event_switch_failures += 1;
                    tracing::warn!(error = %e, "cannot pause kernel events for the commit");
                }
            }
        }
        tracing::info!(
            flows = total,
            ?peer,
            plan = plan_name(&plan),
            "commit started: committing external cache"
        );
        let options = CreateOptions {
            tcp_window_tracking: self.config.kernel.tcp_window_tracking,
        };
        let expectations = if tables.expectations {
            self.expectations_to_commit(peer, now_ms)
        } else {
            Vec::new()
        };
        let job = CommitJob {
            requested,
            source,
            plan,
            options,
            expectations,
        };
        self.submit(Job::Commit(job, Some(reply)));
        if let (Some(split), Some(tx)) = (split, later_tx) {
            // Unchanged since `freeze_recent`: nothing ran in between.
            let t = Instant::now();
            let rest = split.freeze_rest(&self.commit_caches(peer, tables));
            tracing::debug!(took = ?t.elapsed(), "commit: the rest copied");
            // A commit that failed early has hung up: nothing to do.
            let _ = tx.send(rest);
        }
    }

    /// The peer caches a commit writes: every peer's or one peer's, if it
    /// writes flows at all; always in the same order.
    fn commit_caches(&self, peer: Option<u32>, tables: Tables) -> Vec<&FlowCache> {
        self.node
            .external()
            .iter()
            .filter(|(id, _)| tables.flows && peer.is_none_or(|p| p == **id))
            .map(|(_, cache)| cache)
            .collect()
    }

    /// Try again to hear the kernel's events; once it works, read the
    /// table for what was missed while deaf.
    pub(super) fn retry_events_resume(&mut self) {
        match self.resume_events() {
            Ok(()) => {
                self.events_resume_owed = false;
                self.timers.heal_at = Some(Instant::now());
                tracing::info!("kernel events resumed; reading the table again");
            }
            Err(e) => tracing::debug!(error = %e, "kernel events still not resumed"),
        }
    }

    /// Subscribe to the kernel's events again, counting a refusal. Test
    /// builds refuse the first `CTSYNC_TEST_EVENT_RESUME_FAILURES` tries,
    /// as a kernel short of memory would.
    fn resume_events(&mut self) -> Result<(), KernelError> {
        let result = match injected_resume_failure() {
            true => Err(KernelError::io(
                "setsockopt NETLINK_ADD_MEMBERSHIP",
                std::io::Error::from_raw_os_error(libc::ENOMEM),
            )),
            false => self.events_switch.set(true),
        };
        if result.is_err() {
            self.kernel_counters.event_switch_failures += 1;
        }
        result
    }

    pub(super) fn commit_done(
        &mut self,
        result: Result<CommitReport, String>,
        requested: Instant,
        client: Option<oneshot::Sender<Reply>>,
    ) {
        let took = requested.elapsed();
        self.commit = CommitPhase::Finished {
            own_writes_until: Instant::now() + own_writes_memory(),
        };
        if self.events_paused {
            self.events_paused = false;
            let resumed = self.resume_events();
            if let Err(e) = &resumed {
                tracing::error!(
                    error = %e,
                    "cannot resume kernel events after the commit; retrying"
                );
            }
            self.events_resume_owed = resumed.is_err();
            // Heal what was not heard while deaf; until that read has
            // compared, the committed flows it finds are our own writes.
            self.timers.heal_at = Some(Instant::now());
            self.post_commit_read = PostCommitRead::Owed;
        }
        let counters = &mut self.commit_counters;
        counters.running = false;
        counters.commits += 1;
        counters.done = self.commit_progress.load(Ordering::Relaxed);
        counters.last_ms = millis(took);
        counters.durations.observe(took);
        let clock = result.as_ref().map(|r| r.clock).unwrap_or_default();
        counters.last_first_write_us = clock
            .first_send
            .map_or(0, |at| micros(at.saturating_duration_since(requested)));
        counters.last_in_kernel_us = micros(clock.in_kernel);
        counters.last_writer_runqueue_us = result
            .as_ref()
            .ok()
            .and_then(|r| r.writer_runqueue)
            .map_or(0, micros);
        let reply = match result {
            Ok(CommitReport {
                flows: report,
                expectations,
                clock: _,
                writer_runqueue: _,
            }) => {
                counters.expectations_ok += expectations.ok;
                counters.expectations_failed += expectations.failed;
                if expectations.ok + expectations.failed > 0 {
                    tracing::info!("Committed {} new expectations", expectations.ok);
                }
                if expectations.failed > 0 {
                    tracing::warn!(
                        first_errors = ?expectations.first_errors,
                        "{} expectations can't be committed",
                        expectations.failed
                    );
                }
                counters.ok += report.ok;
                counters.failed += report.failed;
                tracing::info!("Committed {} new entries", report.ok);
                if report.failed > 0 {
                    tracing::warn!(
                        first_errors = ?report.first_errors,
                        "{} entries can't be committed",
                        report.failed
                    );
                }
                tracing::info!("commit has taken {:.6} seconds", took.as_secs_f64());
                tracing::info!(
                    written = report.ok,
                    failed = report.failed,
                    replaces_lost = report.replaces_lost,
                    updated_in_place = report.updated_in_place,
                    flows = counters.total,
                    duration_ms = counters.last_ms,
                    first_write_ms = counters.last_first_write_us / 1000,
                    in_kernel_ms = counters.last_in_kernel_us / 1000,
                    waiting_for_flows_ms = millis(clock.waiting_for_flows),
                    writer_runqueue_ms = counters.last_writer_runqueue_us / 1000,
                    "commit finished"
                );
                if report.failed > 0 && report.ok == 0 {
                    failure(format!(
                        "none of {} entries could be committed: {}",
                        report.failed,
                        report
                            .first_errors
                            .first()
                            .map(String::as_str)
                            .unwrap_or("unknown error")
                    ))
                } else {
                    success(String::new())
                }
            }
            Err(reason) => {
                tracing::error!(%reason, duration_ms = counters.last_ms, "commit failed");
                failure(format!("commit failed: {reason}"))
            }
        };
        if let Some(client) = client {
            let _ = client.send(reply);
        }
        process::trim_heap();
    }

    fn render_stats(&self, section: StatsSection, json: bool) -> String {
        let snapshot = self.snapshot();
        if json {
            crate::control::render::render_stats_json(&snapshot)
        } else {
            crate::control::render::render_stats(&snapshot, section)
        }
    }
}

/// Whether a test build was asked to refuse this start of the events
/// (`CTSYNC_TEST_EVENT_RESUME_FAILURES` counts down; always `false`
/// without `test-seams`).
fn injected_resume_failure() -> bool {
    #[cfg(feature = "test-seams")]
    {
        use std::sync::atomic::AtomicU32;
        static LEFT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
        let left = LEFT.get_or_init(|| {
            AtomicU32::new(
                std::env::var("CTSYNC_TEST_EVENT_RESUME_FAILURES")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )
        });
        left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
    #[cfg(not(feature = "test-seams"))]
    false
}

/// How long a commit's writes are remembered as our own after it ends
/// (`OWN_WRITES_MEMORY`). Test builds (`test-seams`) take
/// `CTSYNC_TEST_OWN_WRITES_MS` from the environment, so that a lab can end
/// that memory before the table read after the commit ends, as a read of
/// several million flows would.
fn own_writes_memory() -> Duration {
    #[cfg(feature = "test-seams")]
    if let Some(ms) = std::env::var("CTSYNC_TEST_OWN_WRITES_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    OWN_WRITES_MEMORY
}

fn plan_name(plan: &CommitPlan) -> &'static str {
    match plan {
        CommitPlan::OnlyMissing(_) => "warm standby: only what is missing",
        CommitPlan::Verify(_) => "warm standby: verify against the table",
        CommitPlan::RecentFirst => "most recently active first",
    }
}

/// What a commit writes.
#[derive(Clone, Copy, Debug)]
struct Tables {
    flows: bool,
    expectations: bool,
}

impl Tables {
    /// `-c`: flows, then expectations (when they are replicated at all).
    const BOTH: Tables = Tables {
        flows: true,
        expectations: true,
    };
    /// `-c ct`.
    const FLOWS: Tables = Tables {
        flows: true,
        expectations: false,
    };
    /// `-c expect`.
    const EXPECTATIONS: Tables = Tables {
        flows: false,
        expectations: true,
    };
}
