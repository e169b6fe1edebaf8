//! The tokio wiring of `ctsyncd`: one task owns the sync core (and through it
//! the caches) and selects over its inputs; kernel I/O runs on two plain
//! threads (the event reader and the kernel worker) that talk to it by
//! message; socket readers and the control server are tasks.
//!
//! Owns: start-up order (event socket, table dump, READY), the event
//! reader's pacing (batches, holding events while the loop is busy), routing of events,
//! datagrams, control requests and timers to the sync core, and the
//! translation of control requests into kernel jobs. Must not: encode
//! netlink or sync-protocol bytes, or hold flows anywhere but in the core.

use crate::cache::{CacheEntry, FlowCache};
use crate::config::{Config, SyncMode, Transport};
use crate::control::render::{CacheBlock, LinkBlock, PeerBlock, StatsSnapshot};
use crate::control::{self, CacheSel, Envelope, Reply, Request, StatsSection};
use crate::filter::Filter;
use crate::flow::{Flow, FlowKey};
use crate::kernel::dump::dump_table;
use crate::kernel::events::{EventSocket, EventSwitch};
use crate::kernel::write::{missing_from_table, CreateOptions, WriteOp, WriteReport, Writer};
use crate::kernel::{EventKind, KernelError, KernelEvent};
use crate::process;
use crate::sync::{Applied, Mode, Node, Replicate, SyncConfig};
use crate::transport::{self, Link, LinkKind, LinkSpec, Received};
use foldhash::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Most queued kernel-event batches handled before the next transmit.
const KERNEL_DRAIN: usize = 4096;
/// Most writer sockets (and threads) one commit uses.
const MAX_COMMIT_WRITERS: usize = 4;
/// Errors a merged write report keeps.
const MAX_REPORTED_ERRORS: usize = 10;
/// Commits this large run with kernel events paused.
const QUIET_COMMIT_MIN: usize = 10_000;
/// Flows per commit step (the progress a terminal sees moves by this much).
const COMMIT_CHUNK: usize = 50_000;
/// How often the links' interfaces are looked at.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long the keys of a finished commit are remembered as our own writes.
const OWN_WRITES_MEMORY: Duration = Duration::from_secs(10);
/// Time the control server gets to deliver the reply to `-k`.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);
/// How long after a netlink overrun the kernel table is re-read.
const OVERRUN_RESYNC_DELAY: Duration = Duration::from_millis(200);
/// conntrackd's floor for a commit timeout whose estimate ran out.
const COMMIT_TIMEOUT_FLOOR: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("sync: {0}")]
    Sync(String),
}

/// Build the runtime and run the daemon until SIGTERM, SIGINT or `-k`.
pub fn run_blocking(config: Config, config_path: PathBuf) -> Result<(), String> {
    init_logging(&config.daemon.log_level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime
        .block_on(run(config, config_path))
        .map_err(|e| e.to_string())
}

/// Log to stderr (journald picks it up under systemd); `RUST_LOG` overrides
/// the configured level.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// What the kernel event thread reports.
enum KernelFeed {
    Events(Vec<KernelEvent>),
    Overrun { buffer_size: usize },
    Failed(String),
}

/// A commit for the kernel worker: the flows, most recently active first.
struct CommitJob {
    flows: Vec<Flow>,
    options: CreateOptions,
    /// Warm standby: most flows should be in the kernel already. Write the
    /// flows with these keys (known not to be) first, then read the table
    /// and write every other flow that is missing or differs from it.
    verify: Option<HashSet<FlowKey>>,
    /// The rest of the commit, still being gathered when the job was
    /// handed over: `flows` are the most recently active, written while
    /// the owner collects the others.
    rest: Option<std::sync::mpsc::Receiver<Vec<Flow>>>,
}

/// Work for the kernel worker thread, which owns the writer socket.
enum Job {
    Commit(CommitJob, Option<oneshot::Sender<Reply>>),
    /// Delete every flow the filter accepts, except those with these keys
    /// (warm standby: the peers' flows mirrored here).
    FlushKernel(Filter, HashSet<FlowKey>, Option<oneshot::Sender<Reply>>),
    Dump(DumpPurpose),
    /// Warm standby: mirror peers' changes into our kernel.
    Inject(Vec<WriteOp>),
}

/// Why the table is being dumped, and who waits for it.
enum DumpPurpose {
    /// `-R`: repopulate the internal cache, send nothing; answer these clients.
    Resync(Vec<oneshot::Sender<Reply>>),
    /// A netlink overrun or the periodic re-read: reconcile and send the
    /// differences.
    Heal,
}

/// What the kernel worker hands back.
enum Done {
    Commit(
        Result<WriteReport, String>,
        Instant,
        Option<oneshot::Sender<Reply>>,
    ),
    FlushKernel(Result<WriteReport, String>, Option<oneshot::Sender<Reply>>),
    Dump(Result<Vec<Flow>, String>, DumpPurpose),
    /// The report, and the keys of every op in the batch.
    Inject(WriteReport, Vec<FlowKey>),
}

/// Warm standby's bookkeeping: peers' changes waiting to be written into
/// the kernel, the batch being written, and what could not be written.
#[derive(Default)]
struct WarmStandby {
    queue: Vec<WriteOp>,
    in_flight: bool,
    in_flight_keys: HashSet<FlowKey>,
    failed: HashSet<FlowKey>,
    written: u64,
    write_failures: u64,
    /// Mirrored flows the kernel lost (expired, deleted by someone else)
    /// and that were written again.
    restored: u64,
    /// Times the mirror could have lost flows unseen: an event socket
    /// overrun, a failed read, events paused for a commit. The mirror is
    /// known intact while this equals `checked_at_break`, the value when
    /// the table was last compared with the peers' caches (or at start).
    breaks: u64,
    checked_at_break: u64,
    /// `breaks` when the running table re-read began.
    dump_started_at_break: u64,
}

impl WarmStandby {
    /// Every flow the peers hold is in the kernel but those in
    /// `queue`, `in_flight_keys` and `failed`: nothing was lost unseen
    /// since the table was last checked.
    fn intact(&self) -> bool {
        self.breaks == self.checked_at_break
    }
}

/// Counters kept by the daemon itself (the core keeps the rest).
#[derive(Default)]
struct DaemonCounters {
    kernel_overruns: u64,
    kernel_buffer_size: u64,
    kernel_failures: u64,
    commit_ok: u64,
    commit_failed: u64,
    foreign_source: u64,
    send_errors: u64,
}

struct Daemon {
    config: Config,
    node: Node,
    filter: Filter,
    links: Vec<Link>,
    own_portids: HashSet<u32>,
    /// Netlink port ids whose events are not ours at all (warm standby).
    ignored_portids: HashSet<u32>,
    /// Flows the running commit has written so far (the kernel worker
    /// counts), and how many it will write.
    commit_progress: Arc<AtomicU64>,
    commit_total: u64,
    /// Turns the kernel event subscription off for a commit and on after.
    events_switch: EventSwitch,
    events_paused: bool,
    warm: WarmStandby,
    jobs: std::sync::mpsc::Sender<(Job, mpsc::Sender<Done>)>,
    done_tx: mpsc::Sender<Done>,
    started: Instant,
    commit_running: bool,
    /// Events seen while a dump is in flight, replayed after it lands.
    replay: Option<Vec<KernelEvent>>,
    overrun_resync_at: Option<Instant>,
    reconcile_at: Option<Instant>,
    /// When to look at the links' interfaces again, and what we saw last.
    link_check_at: Instant,
    link_carrier: Vec<bool>,
    scheduled_flush_at: Option<Instant>,
    /// When the last commit's writes stop being taken for our own (see
    /// `remembers_own_writes`).
    own_writes_expire_at: Option<Instant>,
    /// `-R` requests that arrived while another dump was running.
    pending_resyncs: Vec<oneshot::Sender<Reply>>,
    counters: DaemonCounters,
    stop: bool,
}

async fn run(config: Config, _config_path: PathBuf) -> Result<(), DaemonError> {
    let started = Instant::now();
    process::return_large_buffers();
    let _lock = match &config.daemon.lock {
        Some(path) => Some(process::LockFile::acquire(path)?),
        None => None,
    };
    let _pid_file = match &config.daemon.pid_file {
        Some(path) => Some(process::PidFile::write(path)?),
        None => None,
    };
    if config.kernel.enable_events {
        process::enable_conntrack_events();
    }
    let epoch = new_epoch();
    let specs = link_specs(&config);
    let filter = Filter::from_config(&config.filter, specs.iter().flat_map(|s| s.addresses()));

    // Writer first: its port id marks our own changes in the event stream.
    let writer = Writer::open()?;
    let own_portids: HashSet<u32> = [writer.portid()].into_iter().collect();
    // Warm standby writes through its own socket, whose events are ignored
    // entirely (as conntrackd's INJECT origin): peers' flows in our kernel
    // are not ours to cache or send.
    let injector = if config.sync.warm_standby {
        Some(Writer::open()?)
    } else {
        None
    };
    let ignored_portids: HashSet<u32> = injector.iter().map(Writer::portid).collect();

    // Subscribe before dumping so no change between the two is missed; the
    // events queued meanwhile are applied after the dump, in order.
    let events = EventSocket::open(
        usize::try_from(config.kernel.netlink_buffer).unwrap_or(usize::MAX),
        usize::try_from(config.kernel.netlink_buffer_max).unwrap_or(usize::MAX),
    )?;
    let kernel_buffer_size = events.buffer_size() as u64;
    // Valid while the event thread holds the socket, i.e. while we run.
    let events_switch = events.switch();
    let (kernel_tx, mut kernel_rx) = mpsc::channel::<KernelFeed>(1024);
    spawn_event_thread(events, kernel_tx)?;

    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let commit_progress = Arc::new(AtomicU64::new(0));
    spawn_kernel_worker(writer, injector, commit_progress.clone(), job_rx)?;
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(16);

    let mut links = Vec::new();
    for spec in &specs {
        links.push(transport::open(spec)?);
    }
    let (net_tx, mut net_rx) = mpsc::channel::<Received>(4096);
    for (i, link) in links.iter().enumerate() {
        tokio::spawn(link.clone().read_into(i, net_tx.clone()));
    }

    let mut sync_config = core_config(&config);
    sync_config.links = links.len();
    if let Some(first) = specs.first() {
        sync_config.max_payload = first.max_payload(config.sync.mtu as usize);
    }
    let now_ms = elapsed_ms(started);
    let node =
        Node::new(sync_config, epoch, now_ms).map_err(|e| DaemonError::Sync(e.to_string()))?;

    let mut daemon = Daemon {
        config,
        node,
        filter,
        links,
        own_portids,
        ignored_portids,
        warm: WarmStandby::default(),
        commit_progress,
        commit_total: 0,
        events_switch,
        events_paused: false,
        jobs: job_tx,
        done_tx,
        started,
        commit_running: false,
        replay: None,
        overrun_resync_at: None,
        reconcile_at: None,
        link_check_at: Instant::now(),
        link_carrier: Vec::new(),
        scheduled_flush_at: None,
        own_writes_expire_at: None,
        pending_resyncs: Vec::new(),
        counters: DaemonCounters {
            kernel_buffer_size,
            ..DaemonCounters::default()
        },
        stop: false,
    };

    // Prime the internal cache from the kernel before declaring readiness.
    let table = tokio::task::spawn_blocking(dump_table)
        .await
        .map_err(|e| DaemonError::Sync(format!("dump task failed: {e}")))??;
    let primed = daemon.accepted(table);
    let count = primed.len();
    daemon
        .node
        .reconcile_internal(primed, daemon.now_ms(), Replicate::Nothing);
    tracing::info!(
        flows = count,
        epoch,
        "internal cache primed from the kernel table"
    );

    daemon.arm_reconcile();
    let listener = control::server::bind(&daemon.config.socket)?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<(Envelope, oneshot::Sender<Reply>)>(64);
    tokio::spawn(control::server::serve(listener, ctl_tx));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(socket = %daemon.config.socket.display(), "ctsyncd ready");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    daemon.transmit().await;
    while !daemon.stop {
        let deadline = daemon.next_deadline();
        tokio::select! {
            Some(feed) = kernel_rx.recv() => {
                daemon.on_kernel(feed);
                // Take every batch already queued before transmitting once,
                // so a burst leaves in full datagrams.
                for _ in 0..KERNEL_DRAIN {
                    match kernel_rx.try_recv() {
                        Ok(more) => daemon.on_kernel(more),
                        Err(_) => break,
                    }
                }
            }
            Some(received) = net_rx.recv() => {
                daemon.on_datagram(received);
                // Drain what else is queued before transmitting once.
                while let Ok(more) = net_rx.try_recv() {
                    daemon.on_datagram(more);
                }
            }
            Some((envelope, reply)) = ctl_rx.recv() => daemon.on_request(envelope, reply),
            Some(done) = done_rx.recv() => daemon.on_done(done),
            _ = tokio::time::sleep_until(deadline.into()) => daemon.on_timers(),
            _ = sigterm.recv() => daemon.stop = true,
            _ = sigint.recv() => daemon.stop = true,
        }
        daemon.transmit().await;
        daemon.mirror_into_kernel();
    }
    tracing::info!("ctsyncd stopping");
    // Let the control server deliver the last replies (the answer to -k).
    // The socket goes last: agents take its absence for "stopped", and a
    // start right after must not find the lock still held.
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&daemon.config.socket);
    Ok(())
}

/// The transport view of the configured links.
fn link_specs(config: &Config) -> Vec<LinkSpec> {
    config
        .links
        .iter()
        .filter_map(|link| {
            let kind = match link.transport {
                Transport::Udp => LinkKind::Udp { peer: link.peer? },
                Transport::Multicast => LinkKind::Multicast { group: link.group? },
            };
            Some(LinkSpec {
                kind,
                interface: (!link.interface.is_empty()).then(|| link.interface.clone()),
                local: link.local,
                port: link.port,
            })
        })
        .collect()
}

/// The sync core's settings from `[sync]`.
fn core_config(config: &Config) -> SyncConfig {
    let s = &config.sync;
    SyncConfig {
        mode: match s.mode {
            SyncMode::Ftfw => Mode::Ftfw,
            SyncMode::Notrack => Mode::Notrack,
            SyncMode::Alarm => Mode::Alarm,
        },
        node_id: config.node_id,
        window: s.window as usize,
        ack_every: s.ack_every,
        ack_delay_ms: s.ack_delay_ms,
        keepalive_ms: s.keepalive_ms,
        rto_ms: s.rto_ms,
        peer_timeout_ms: s.peer_timeout_ms,
        digest_interval_ms: s.digest_interval_ms,
        alarm_refresh_ms: u64::from(s.alarm_refresh_s) * 1000,
        alarm_timeout_ms: u64::from(s.alarm_timeout_s) * 1000,
        record_applied: s.warm_standby,
        batch_delay_ms: s.batch_delay_ms,
        ..SyncConfig::default()
    }
}

/// A value that differs at every start: the time in nanoseconds mixed with
/// the process id.
fn new_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 40)
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn spawn_event_thread(events: EventSocket, tx: mpsc::Sender<KernelFeed>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ct-events".into())
        .spawn(move || {
            raise_priority();
            event_loop(events, tx);
        })
        .map(|_| ())
}

/// Nice value of the event reader: above the daemon's other threads, so
/// that a busy machine still drains the event socket before it overruns
/// (the events then wait in memory, and an overrun costs a table re-read).
const EVENT_THREAD_NICE: libc::c_int = -10;

/// Give the calling thread `EVENT_THREAD_NICE` (needs CAP_SYS_NICE;
/// without it the thread keeps the daemon's priority).
fn raise_priority() {
    // SAFETY: gettid and setpriority take no pointers.
    let tid = unsafe { libc::gettid() };
    let who = libc::id_t::try_from(tid).unwrap_or(0);
    // SAFETY: as above; `who` is this thread's id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, who, EVENT_THREAD_NICE) } != 0 {
        tracing::debug!(
            err = %std::io::Error::last_os_error(),
            "event thread keeps the default priority"
        );
    }
}

/// Most events the reader holds while the daemon's loop is busy (about
/// 50 MB) before it waits, and the socket buffer takes over.
const MAX_HELD_EVENTS: usize = 1 << 18;

/// Fewer events than this in a batch: the reader pauses `COALESCE`.
const THIN_BATCH: usize = 512;
/// At 150k events/s, 2 ms is 300 events (well under 1 MB of socket
/// buffer); the sync core holds datagrams for `batch_delay_ms` anyway.
const COALESCE: Duration = Duration::from_millis(2);

/// Read events and hand them to the daemon's loop. When the loop's channel
/// is full (a long pass over the cache, say), keep reading into memory
/// rather than let the socket overrun: an overrun costs a table re-read.
fn event_loop(mut events: EventSocket, tx: mpsc::Sender<KernelFeed>) {
    let mut held: Vec<KernelEvent> = Vec::new();
    loop {
        let before = held.len();
        let read = if held.is_empty() {
            events.recv(&mut held)
        } else {
            events.recv_queued(&mut held)
        };
        match read {
            Ok(()) => {}
            Err(KernelError::Overrun) => {
                // Whatever decoded before the overrun still counts.
                let batch = std::mem::take(&mut held);
                let overrun = KernelFeed::Overrun {
                    buffer_size: events.buffer_size(),
                };
                if (!batch.is_empty() && tx.blocking_send(KernelFeed::Events(batch)).is_err())
                    || tx.blocking_send(overrun).is_err()
                {
                    return;
                }
                continue;
            }
            Err(e) => {
                std::thread::sleep(Duration::from_millis(100));
                if tx.blocking_send(KernelFeed::Failed(e.to_string())).is_err() {
                    return;
                }
                continue;
            }
        }
        if held.is_empty() {
            continue;
        }
        let delivered = held.len();
        match tx.try_send(KernelFeed::Events(std::mem::take(&mut held))) {
            Ok(()) => {
                // A thin batch: let the next events gather in the socket
                // for a moment rather than wake both threads per event (a
                // burst otherwise costs two context switches an event).
                if delivered < THIN_BATCH {
                    std::thread::sleep(COALESCE);
                }
            }
            Err(mpsc::error::TrySendError::Full(KernelFeed::Events(batch))) => {
                held = batch;
                if held.len() >= MAX_HELD_EVENTS {
                    let batch = std::mem::take(&mut held);
                    if tx.blocking_send(KernelFeed::Events(batch)).is_err() {
                        return;
                    }
                } else if held.len() == before {
                    // Nothing new and nowhere to put it: wait a little.
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            Err(_) => return,
        }
    }
}

fn spawn_kernel_worker(
    mut writer: Writer,
    mut injector: Option<Writer>,
    progress: Arc<AtomicU64>,
    jobs: std::sync::mpsc::Receiver<(Job, mpsc::Sender<Done>)>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ct-writer".into())
        .spawn(move || {
            while let Ok((job, done)) = jobs.recv() {
                let result = match job {
                    Job::Commit(job, client) => {
                        let started = Instant::now();
                        let mut report = match job.verify {
                            None => Ok(commit_in_parallel(
                                &mut writer,
                                &job.flows,
                                &job.options,
                                &progress,
                            )),
                            Some(missing) => commit_verified(
                                &mut writer,
                                job.flows,
                                &missing,
                                &job.options,
                                &progress,
                            ),
                        };
                        if let (Ok(report), Some(rest)) = (report.as_mut(), job.rest) {
                            match rest.recv() {
                                Ok(flows) => merge_report(
                                    report,
                                    commit_in_parallel(
                                        &mut writer,
                                        &flows,
                                        &job.options,
                                        &progress,
                                    ),
                                ),
                                Err(_) => {
                                    report.failed += 1;
                                    report
                                        .first_errors
                                        .push("the rest of the commit never came".into());
                                }
                            }
                        }
                        Done::Commit(report, started, client)
                    }
                    Job::FlushKernel(filter, keep, client) => {
                        let report = writer
                            .flush(&|flow: &Flow| {
                                !filter.accepts(flow) || keep.contains(&flow.key())
                            })
                            .map_err(|e| e.to_string());
                        Done::FlushKernel(report, client)
                    }
                    Job::Dump(purpose) => {
                        Done::Dump(dump_table().map_err(|e| e.to_string()), purpose)
                    }
                    Job::Inject(ops) => {
                        let keys: Vec<FlowKey> = ops.iter().map(WriteOp::key).collect();
                        let report = match injector.as_mut() {
                            Some(injector) => injector.apply(&ops),
                            None => WriteReport {
                                failed: ops.len() as u64,
                                failed_keys: keys.clone(),
                                ..WriteReport::default()
                            },
                        };
                        Done::Inject(report, keys)
                    }
                };
                if done.blocking_send(result).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

/// Flows the first step of a commit without warm standby hands to the
/// writer before the rest is gathered: the most recently active ones.
const URGENT_COMMIT: usize = 16_384;

/// How recently a peer reported a flow: when it last reported a change (or
/// a timeout traffic refreshed), then when that timeout runs out.
fn recency(entry: &CacheEntry) -> (u64, u64) {
    (
        entry.updated_ms,
        entry.updated_ms / 1000 + u64::from(entry.flow.timeout),
    )
}

/// Warm standby's commit: write the flows known to be missing first, then
/// read the kernel table and write every flow that is absent from it or
/// differs in its NAT binding or mark, whatever emptied it (`-t`, `-F`,
/// expiry, a failed batch, another program). Flows found in place count
/// as done.
fn commit_verified(
    writer: &mut Writer,
    flows: Vec<Flow>,
    missing: &HashSet<FlowKey>,
    options: &CreateOptions,
    progress: &AtomicU64,
) -> Result<WriteReport, String> {
    let (first, rest): (Vec<Flow>, Vec<Flow>) =
        flows.into_iter().partition(|f| missing.contains(&f.key()));
    let mut report = commit_in_parallel(writer, &first, options, progress);
    let (todo, in_place) =
        missing_from_table(rest).map_err(|e| format!("cannot read the kernel table: {e}"))?;
    progress.fetch_add(in_place as u64, Ordering::Relaxed);
    merge_report(
        &mut report,
        commit_in_parallel(writer, &todo, options, progress),
    );
    Ok(report)
}

/// Flows written by the first step of a commit: small, so that the most
/// recently active flows (the commit set is sorted that way) are in the
/// kernel within milliseconds.
const FIRST_COMMIT_STEP: usize = 2048;

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
fn commit_in_parallel(
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

impl Daemon {
    fn now_ms(&self) -> u64 {
        elapsed_ms(self.started)
    }

    /// The flows of a kernel dump that are ours to cache and send: those
    /// the filter accepts and, under warm standby, not a peer's mirrored one.
    fn accepted(&self, flows: Vec<Flow>) -> Vec<Flow> {
        flows
            .into_iter()
            .filter(|f| self.filter.accepts(f) && !self.is_mirrored(&f.key()))
            .collect()
    }

    /// Warm standby: a flow a peer owns, written into our kernel for it.
    /// (After `-f` the peers' caches are empty, and `-R` then takes every
    /// flow in the kernel as ours, as a promotion wants.)
    fn is_mirrored(&self, key: &FlowKey) -> bool {
        self.config.sync.warm_standby && self.node.holds_peer_flow(key)
    }

    /// A commit runs or ended within `OWN_WRITES_MEMORY`: a re-read of the
    /// table then takes a flow a peer's cache holds for one the commit
    /// wrote (`Replicate::DifferencesButPeerFlows`), so that the committed
    /// flows (events are paused during a large commit) are not sent back.
    /// (The peers' caches answer that without a set of a million keys.)
    fn remembers_own_writes(&self) -> bool {
        self.commit_running || self.own_writes_expire_at.is_some()
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut deadline = now + Duration::from_secs(1);
        if let Some(ms) = self.node.next_deadline() {
            let at = self.started + Duration::from_millis(ms);
            deadline = deadline.min(at.max(now));
        }
        let timers = [
            Some(self.link_check_at),
            self.overrun_resync_at,
            self.reconcile_at,
            self.scheduled_flush_at,
            self.own_writes_expire_at,
        ];
        for at in timers.into_iter().flatten() {
            deadline = deadline.min(at);
        }
        deadline
    }

    fn submit(&self, job: Job) {
        if self.jobs.send((job, self.done_tx.clone())).is_err() {
            tracing::error!("kernel worker is gone");
        }
    }

    fn on_kernel(&mut self, feed: KernelFeed) {
        match feed {
            KernelFeed::Events(events) => {
                if let Some(replay) = &mut self.replay {
                    replay.extend(events.iter().cloned());
                }
                for event in events {
                    self.apply_event(event);
                }
            }
            KernelFeed::Overrun { buffer_size } => {
                self.counters.kernel_overruns += 1;
                self.warm.breaks += 1;
                self.counters.kernel_buffer_size = buffer_size as u64;
                tracing::warn!(
                    buffer_size,
                    "netlink event socket overrun; the table will be re-read"
                );
                if self.overrun_resync_at.is_none() {
                    self.overrun_resync_at = Some(Instant::now() + OVERRUN_RESYNC_DELAY);
                }
            }
            KernelFeed::Failed(reason) => {
                // Whatever the reason, events may be lost: re-read the table.
                self.counters.kernel_failures += 1;
                self.warm.breaks += 1;
                tracing::warn!(%reason, "reading kernel events failed; the table will be re-read");
                if self.overrun_resync_at.is_none() {
                    self.overrun_resync_at = Some(Instant::now() + OVERRUN_RESYNC_DELAY);
                }
            }
        }
    }

    fn apply_event(&mut self, event: KernelEvent) {
        if self.ignored_portids.contains(&event.portid) {
            return;
        }
        if self.is_mirrored(&event.flow.key()) {
            // Whoever removed it (expiry, another program, a flush racing
            // with a new mirror write, a commit's delete-and-create), the
            // kernel must hold it while a peer does.
            if event.kind == EventKind::Destroy {
                self.restore_mirrored(&event.flow.key());
            }
            return;
        }
        let now = self.now_ms();
        // Changes our own writer made are cached but never echoed to peers.
        let replicate = !self.own_portids.contains(&event.portid);
        let key = event.flow.key();
        let mut flow = event.flow;
        match event.kind {
            EventKind::Destroy => {
                self.node.local_delete(&key, now, replicate);
                return;
            }
            EventKind::Update => {
                // Complete the partial update first, so the filter judges
                // the flow's real state.
                if let Some(cached) = self.node.internal().flow(&key) {
                    flow.fill_from_previous(&cached);
                }
            }
            EventKind::New => {}
        }
        if self.filter.accepts(&flow) {
            self.node.local_upsert(flow, now, replicate);
        } else if self.node.internal().contains(&key) {
            // It left the filter (a TCP state no longer accepted, say): the
            // peers drop it too.
            self.node.local_delete(&key, now, replicate);
        }
    }

    fn on_datagram(&mut self, received: Received) {
        let from_peer = self
            .links
            .get(received.link)
            .is_some_and(|link| link.is_from_peer(&received.from));
        if !from_peer {
            self.counters.foreign_source += 1;
            return;
        }
        let now = self.now_ms();
        self.node.on_datagram(&received.bytes, received.link, now);
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if self.link_check_at <= now {
            self.link_check_at = now + LINK_CHECK_INTERVAL;
            self.check_links();
        }
        if self.own_writes_expire_at.is_some_and(|at| at <= now) {
            self.own_writes_expire_at = None;
        }
        if self.overrun_resync_at.is_some_and(|at| at <= now) && self.replay.is_none() {
            self.overrun_resync_at = None;
            self.start_dump(DumpPurpose::Heal);
        }
        if self.reconcile_at.is_some_and(|at| at <= now) {
            self.reconcile_at = None;
            if self.replay.is_none() {
                self.start_dump(DumpPurpose::Heal);
            }
        }
        if self.scheduled_flush_at.is_some_and(|at| at <= now) {
            self.scheduled_flush_at = None;
            tracing::info!("flushing kernel conntrack table (scheduled)");
            self.node.flush_internal();
            let keep = self.mirrored_keys();
            self.submit(Job::FlushKernel(self.filter.clone(), keep, None));
        }
    }

    /// Tell the sync core which links' interfaces are up (operstate and
    /// carrier), so data leaves a dead link at once rather than after the
    /// peer timeout.
    fn check_links(&mut self) {
        let states: Vec<bool> = self
            .links
            .iter()
            .map(|l| {
                l.spec
                    .interface
                    .as_deref()
                    .is_none_or(transport::interface_up)
            })
            .collect();
        for (i, up) in states.iter().enumerate() {
            if self.link_carrier.get(i) != Some(up) {
                if !self.link_carrier.is_empty() {
                    let device = self
                        .links
                        .get(i)
                        .and_then(|l| l.spec.interface.clone())
                        .unwrap_or_default();
                    tracing::warn!(link = i, %device, up, "sync link interface changed state");
                }
                self.node.set_link_carrier(i, *up);
            }
        }
        self.link_carrier = states;
    }

    /// Warm standby: queue the peers' latest changes for the kernel and
    /// hand a batch to the kernel worker when it is free. Batches grow
    /// while the worker is busy, so a burst is written in few large sends.
    fn mirror_into_kernel(&mut self) {
        if !self.config.sync.warm_standby {
            return;
        }
        for change in self.node.take_applied() {
            let op = match change {
                Applied::Created(flow) => WriteOp::Create(self.as_mirrored(flow)),
                Applied::Updated(flow) => WriteOp::Update(self.as_mirrored(flow)),
                Applied::Delete(key) => WriteOp::Delete(key),
            };
            self.warm.queue.push(op);
        }
        if self.warm.in_flight || self.warm.queue.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.warm.queue);
        self.warm.in_flight_keys = batch.iter().map(WriteOp::key).collect();
        self.warm.in_flight = true;
        self.submit(Job::Inject(batch));
    }

    /// Warm standby: the kernel lost a flow a peer still has (it expired,
    /// or another program deleted it): write it again.
    fn restore_mirrored(&mut self, key: &FlowKey) {
        let Some(flow) = self.node.external().values().find_map(|c| c.flow(key)) else {
            return;
        };
        self.warm.restored += 1;
        let op = WriteOp::Create(self.as_mirrored(flow));
        self.warm.queue.push(op);
    }

    /// A peer's flow as warm standby writes it: with at least
    /// `warm_timeout_s` of timeout (the primary's packets refresh its copy
    /// without telling anyone).
    fn as_mirrored(&self, mut flow: Flow) -> Flow {
        flow.timeout = flow.timeout.max(self.config.sync.warm_timeout_s);
        flow
    }

    /// Warm standby, after a table re-read, if the mirror may have lost
    /// flows unseen (see `WarmStandby::intact`): write every flow a peer
    /// holds that the table lacks. The mirror is then known intact again,
    /// unless it broke once more while the table was read.
    fn repair_mirror(&mut self, table: &[Flow]) {
        if !self.config.sync.warm_standby || self.warm.intact() {
            return;
        }
        let present: HashSet<FlowKey> = table
            .iter()
            .map(Flow::key)
            .filter(|k| self.node.holds_peer_flow(k))
            .collect();
        let lost: Vec<WriteOp> = self
            .node
            .external()
            .values()
            .flat_map(FlowCache::flows)
            .filter(|f| !present.contains(&f.key()))
            .map(|f| WriteOp::Create(self.as_mirrored(f)))
            .collect();
        let restored = lost.len() as u64;
        self.warm.queue.extend(lost);
        self.warm.restored += restored;
        if restored > 0 {
            tracing::info!(
                restored,
                "warm standby: flows missing from the kernel written again"
            );
        }
        self.warm.checked_at_break = self.warm.dump_started_at_break;
    }

    /// Warm standby: the peers' flows not (yet) in our kernel.
    fn warm_missing(&self) -> HashSet<FlowKey> {
        let warm = &self.warm;
        let mut missing: HashSet<FlowKey> = warm.failed.clone();
        missing.extend(warm.in_flight_keys.iter().copied());
        missing.extend(warm.queue.iter().map(WriteOp::key));
        missing
    }

    /// Schedule the next periodic re-read of the kernel table.
    fn arm_reconcile(&mut self) {
        let every = self.config.kernel.reconcile_interval_s;
        self.reconcile_at =
            (every > 0).then(|| Instant::now() + Duration::from_secs(u64::from(every)));
    }

    fn start_dump(&mut self, purpose: DumpPurpose) {
        self.warm.dump_started_at_break = self.warm.breaks;
        self.replay = Some(Vec::new());
        self.submit(Job::Dump(purpose));
    }

    async fn transmit(&mut self) {
        let now = self.now_ms();
        for out in self.node.poll_transmit(now) {
            let Some(link) = self.links.get(out.link) else {
                continue;
            };
            let dest = link.spec.destination();
            if let Err(e) = link.socket.send_to(&out.bytes, dest).await {
                self.counters.send_errors += 1;
                tracing::debug!(error = %e, %dest, "sync send failed");
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Commit(result, started, client) => {
                self.commit_running = false;
                if self.events_paused {
                    self.events_paused = false;
                    if let Err(e) = self.events_switch.set(true) {
                        tracing::error!(error = %e, "cannot resume kernel events after the commit");
                    }
                    // Heal what was not heard while deaf.
                    self.overrun_resync_at = Some(Instant::now());
                }
                self.own_writes_expire_at = Some(Instant::now() + OWN_WRITES_MEMORY);
                let reply = match result {
                    Ok(report) => {
                        self.counters.commit_ok += report.ok;
                        self.counters.commit_failed += report.failed;
                        tracing::info!("Committed {} new entries", report.ok);
                        if report.failed > 0 {
                            tracing::warn!(
                                first_errors = ?report.first_errors,
                                "{} entries can't be committed",
                                report.failed
                            );
                        }
                        tracing::info!(
                            "commit has taken {:.6} seconds",
                            started.elapsed().as_secs_f64()
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
                    Err(reason) => failure(format!("commit failed: {reason}")),
                };
                if let Some(client) = client {
                    let _ = client.send(reply);
                }
                process::trim_heap();
            }
            Done::Inject(report, keys) => {
                let warm = &mut self.warm;
                warm.in_flight = false;
                warm.in_flight_keys.clear();
                for key in &keys {
                    warm.failed.remove(key);
                }
                warm.written += report.ok;
                warm.write_failures += report.failed;
                if report.failed > 0 {
                    tracing::warn!(
                        failed = report.failed,
                        first_errors = ?report.first_errors,
                        "warm standby could not write some flows; -c will"
                    );
                }
                warm.failed.extend(report.failed_keys);
            }
            Done::FlushKernel(result, client) => {
                let reply = match result {
                    Ok(report) => {
                        tracing::info!(
                            deleted = report.ok,
                            failed = report.failed,
                            "kernel table flushed"
                        );
                        success(String::new())
                    }
                    Err(reason) => failure(format!("kernel flush failed: {reason}")),
                };
                if let Some(client) = client {
                    let _ = client.send(reply);
                }
            }
            Done::Dump(result, purpose) => {
                let replay = self.replay.take().unwrap_or_default();
                self.arm_reconcile();
                let (heal, clients) = match purpose {
                    DumpPurpose::Resync(clients) => (false, clients),
                    DumpPurpose::Heal => (true, Vec::new()),
                };
                // Our own commit's flows are cached, never echoed, even when
                // their events were paused or the overrun swallowed them.
                let replicate = match (heal, self.remembers_own_writes()) {
                    (false, _) => Replicate::Nothing,
                    (true, false) => Replicate::Differences,
                    (true, true) => Replicate::DifferencesButPeerFlows,
                };
                let reply = match result {
                    Ok(flows) => {
                        self.repair_mirror(&flows);
                        let flows = self.accepted(flows);
                        let now = self.now_ms();
                        let report = self.node.reconcile_internal(flows, now, replicate);
                        tracing::info!(?report, "internal cache reconciled with the kernel table");
                        for event in replay {
                            self.apply_event(event);
                        }
                        success(String::new())
                    }
                    Err(reason) => {
                        self.counters.kernel_failures += 1;
                        if heal {
                            // Try again: an overrun must always heal.
                            self.overrun_resync_at = Some(Instant::now() + OVERRUN_RESYNC_DELAY);
                        }
                        failure(format!("kernel dump failed: {reason}"))
                    }
                };
                for client in clients {
                    let _ = client.send(reply.clone());
                }
                process::trim_heap();
                if !self.pending_resyncs.is_empty() {
                    let waiting = std::mem::take(&mut self.pending_resyncs);
                    self.start_dump(DumpPurpose::Resync(waiting));
                }
            }
        }
    }

    fn on_request(&mut self, envelope: Envelope, reply: oneshot::Sender<Reply>) {
        let now = self.now_ms();
        let json = envelope.json;
        let answer = match envelope.request {
            Request::Commit => return self.start_commit(None, now, reply),
            Request::CommitPeer { node_id } => {
                if self.node.external().contains_key(&node_id) {
                    return self.start_commit(Some(node_id), now, reply);
                }
                failure(format!("no flows from a peer with node id {node_id}"))
            }
            Request::FlushCaches(which) => {
                if self.commit_running && which != CacheSel::Internal {
                    failure("ignoring flush command, commit still in progress".into())
                } else {
                    tracing::info!(?which, "flushing caches");
                    if which != CacheSel::External {
                        self.node.flush_internal();
                        self.scheduled_flush_at = None;
                    }
                    if which != CacheSel::Internal {
                        self.node.flush_external();
                    }
                    success(String::new())
                }
            }
            Request::FlushKernel => {
                tracing::info!("flushing kernel conntrack table");
                self.node.pause_digests();
                let keep = self.mirrored_keys();
                self.submit(Job::FlushKernel(self.filter.clone(), keep, Some(reply)));
                return;
            }
            Request::ResyncFromKernel => {
                tracing::info!("resync with master conntrack table");
                if self.replay.is_some() {
                    // A dump is running (an overrun heal, say): read the
                    // table again right after it, for this request.
                    self.pending_resyncs.push(reply);
                } else {
                    self.start_dump(DumpPurpose::Resync(vec![reply]));
                }
                return;
            }
            Request::DumpInternal => success(self.render_internal(json)),
            Request::DumpExternal => success(self.render_external(json)),
            Request::Stats(section) => success(self.render_stats(section, json)),
            Request::RequestResync => {
                tracing::info!("resync requested");
                self.node.request_resync(now);
                success(String::new())
            }
            Request::SendBulk => {
                tracing::info!("sending bulk update");
                self.node.send_bulk(now);
                success(String::new())
            }
            Request::ResetTimers => {
                if self.scheduled_flush_at.is_none() {
                    let delay = u64::from(self.config.sync.purge_timeout_s);
                    tracing::info!("flushing conntrack table in {delay} secs");
                    self.scheduled_flush_at = Some(Instant::now() + Duration::from_secs(delay));
                }
                success(String::new())
            }
            Request::Kill => {
                self.stop = true;
                success(String::new())
            }
            #[cfg(feature = "test-seams")]
            Request::DebugDropExternal { count } => {
                let victims: Vec<(u32, FlowKey)> = self
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
        };
        let _ = reply.send(answer);
    }

    /// Write the external cache (every peer's, or one peer's) into the
    /// kernel; the client hears back when it is done.
    fn start_commit(&mut self, peer: Option<u32>, now: u64, reply: oneshot::Sender<Reply>) {
        if self.commit_running {
            let _ = reply.send(failure("commit already in progress".into()));
            return;
        }
        self.commit_running = true;
        // As conntrackd: a commit cancels a pending `-t` flush.
        self.scheduled_flush_at = None;
        let warm = self.config.sync.warm_standby;
        let intact = warm && self.warm.intact() && process::conntrack_events_on();
        let (flows, verify, urgent_first) = if intact {
            // Warm standby and nothing lost unseen: the kernel holds every
            // peer flow but those known missing. Write those.
            let missing = self.warm_missing();
            (self.commit_set_of(peer, now, &missing), None, false)
        } else if warm {
            // The mirror may have holes nobody reported: write what is
            // known missing, then check the rest against the table. A
            // commit that returns 0 leaves every flow in place.
            let missing = self.warm_missing();
            (self.commit_set(peer, now, None), Some(missing), false)
        } else {
            // The most recently active flows go to the writer at once; the
            // rest follow as soon as they are gathered.
            let urgent = self.recent_commit_set(peer, now, URGENT_COMMIT);
            (urgent, None, true)
        };
        self.own_writes_expire_at = None;
        self.commit_progress.store(0, Ordering::Relaxed);
        let total: usize = self.peer_caches(peer).map(FlowCache::len).sum();
        self.commit_total = if urgent_first || verify.is_some() {
            total as u64
        } else {
            flows.len() as u64
        };
        // A large commit would make the kernel report every flow back to
        // us, only for us to ignore it: listen to nothing while it runs and
        // re-read the table afterwards (what else changed meanwhile is then
        // found and sent, the committed flows cached as our own writes).
        if self.commit_total >= QUIET_COMMIT_MIN as u64 {
            self.warm.breaks += 1;
            match self.events_switch.set(false) {
                Ok(()) => self.events_paused = true,
                Err(e) => tracing::warn!(error = %e, "cannot pause kernel events for the commit"),
            }
        }
        tracing::info!(
            flows = self.commit_total,
            ?peer,
            mirror_intact = intact,
            "committing external cache"
        );
        let options = CreateOptions {
            tcp_window_tracking: self.config.kernel.tcp_window_tracking,
        };
        if !urgent_first {
            let job = CommitJob {
                flows,
                options,
                verify,
                rest: None,
            };
            self.submit(Job::Commit(job, Some(reply)));
            return;
        }
        // The writer starts on the urgent flows while the rest is gathered.
        let urgent: HashSet<FlowKey> = flows.iter().map(Flow::key).collect();
        let (rest_tx, rest_rx) = std::sync::mpsc::channel();
        let job = CommitJob {
            flows,
            options,
            verify,
            rest: Some(rest_rx),
        };
        self.submit(Job::Commit(job, Some(reply)));
        let _ = rest_tx.send(self.commit_set(peer, now, Some(&urgent)));
    }

    /// The external caches a commit writes: every peer's, or `peer`'s.
    fn peer_caches(&self, peer: Option<u32>) -> impl Iterator<Item = &FlowCache> + '_ {
        self.node
            .external()
            .iter()
            .filter(move |(id, _)| peer.is_none_or(|p| p == **id))
            .map(|(_, cache)| cache)
    }

    /// The `limit` most recently active flows of the commit set (see
    /// `commit_set`), found by their stamps before any is decoded.
    fn recent_commit_set(&self, peer: Option<u32>, now_ms: u64, limit: usize) -> Vec<Flow> {
        let mut recent: Vec<CacheEntry> = self
            .peer_caches(peer)
            .flat_map(|c| c.most_recent(limit))
            .collect();
        recent.sort_unstable_by_key(|e| std::cmp::Reverse(recency(e)));
        recent.truncate(limit);
        recent
            .into_iter()
            .map(|e| self.commit_flow(e, now_ms))
            .collect()
    }

    /// The commit set restricted to `keys`, most recently active first.
    fn commit_set_of(&self, peer: Option<u32>, now_ms: u64, keys: &HashSet<FlowKey>) -> Vec<Flow> {
        let mut entries: Vec<CacheEntry> = keys
            .iter()
            .filter_map(|k| self.peer_caches(peer).find_map(|c| c.get(k)))
            .collect();
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(recency(e)));
        entries
            .into_iter()
            .map(|e| self.commit_flow(e, now_ms))
            .collect()
    }

    /// A peer's flow as a commit writes it: conntrackd's commit timeout,
    /// the configured one, or what was left on the wire minus the time
    /// since, floored at 60 s.
    fn commit_flow(&self, entry: CacheEntry, now_ms: u64) -> Flow {
        let mut flow = entry.flow;
        flow.timeout = self.config.kernel.commit_timeout.unwrap_or_else(|| {
            let elapsed = now_ms.saturating_sub(entry.updated_ms) / 1000;
            let left = u64::from(flow.timeout).saturating_sub(elapsed);
            if left == 0 {
                COMMIT_TIMEOUT_FLOOR
            } else {
                u32::try_from(left).unwrap_or(u32::MAX)
            }
        });
        flow
    }

    /// Every peer's flows with conntrackd's commit timeout (the configured
    /// one, or what was left on the wire minus the time since, floored at
    /// 60 s), the most recently active first, so that live connections do
    /// not wait behind idle ones: sorted by when the peer last reported a
    /// change (its table re-reads also report flows whose timeout traffic
    /// refreshed), then by when that timeout runs out, latest first.
    /// With `except`, those keys are left out (already handed over).
    fn commit_set(
        &self,
        peer: Option<u32>,
        now_ms: u64,
        except: Option<&HashSet<FlowKey>>,
    ) -> Vec<Flow> {
        // One pass, straight into the commit's vector (a million flows).
        let total = self.peer_caches(peer).map(FlowCache::len).sum();
        let mut flows = Vec::with_capacity(total);
        flows.extend(
            self.peer_caches(peer)
                .flat_map(FlowCache::iter)
                .filter(|e| except.is_none_or(|x| !x.contains(&e.flow.key())))
                .map(|e| (recency(&e), self.commit_flow(e, now_ms))),
        );
        flows.sort_unstable_by_key(|(recency, _)| std::cmp::Reverse(*recency));
        flows.into_iter().map(|(_, flow)| flow).collect()
    }

    /// Warm standby: the keys of every peer's flow (mirrored in our
    /// kernel, so a kernel flush keeps them). Empty otherwise.
    fn mirrored_keys(&self) -> HashSet<FlowKey> {
        if !self.config.sync.warm_standby {
            return HashSet::default();
        }
        self.node
            .external()
            .values()
            .flat_map(FlowCache::keys)
            .collect()
    }

    fn render_internal(&self, json: bool) -> String {
        let entries: Vec<CacheEntry> = self.node.internal().iter().collect();
        render_entries(&entries, self.now_ms(), true, json)
    }

    fn render_external(&self, json: bool) -> String {
        let now = self.now_ms();
        let entries: Vec<CacheEntry> = self
            .node
            .external()
            .values()
            .flat_map(FlowCache::iter)
            .collect();
        render_entries(&entries, now, false, json)
    }

    fn render_stats(&self, section: StatsSection, json: bool) -> String {
        let snapshot = self.snapshot();
        if json {
            control::render::render_stats_json(&snapshot)
        } else {
            control::render::render_stats(&snapshot, section)
        }
    }
}

impl Daemon {
    /// Everything `-s` prints, gathered now.
    fn snapshot(&self) -> StatsSnapshot {
        let stats = self.node.stats();
        let internal = self.node.internal();
        let mut external = CacheBlock::default();
        for cache in self.node.external().values() {
            add_cache(&mut external, cache);
        }
        let mut internal_block = CacheBlock::default();
        add_cache(&mut internal_block, internal);
        let mut malformed_by_reason = stats.malformed.clone();
        if self.counters.foreign_source > 0 {
            malformed_by_reason.insert("foreign_source".into(), self.counters.foreign_source);
        }
        let active_link = self.node.active_link();
        let links = self
            .links
            .iter()
            .enumerate()
            .map(|(i, link)| {
                let counters = stats.links.get(i).cloned().unwrap_or_default();
                LinkBlock {
                    transport: match link.spec.kind {
                        LinkKind::Udp { .. } => "UDP".into(),
                        LinkKind::Multicast { .. } => "multicast".into(),
                    },
                    device: link.spec.interface.clone().unwrap_or_default(),
                    active: active_link == Some(i),
                    up: counters.up,
                    bytes_sent: counters.sent_bytes,
                    bytes_recv: counters.recv_bytes,
                    packets_sent: counters.sent_packets,
                    packets_recv: counters.recv_packets,
                    errors_send: if i == 0 { self.counters.send_errors } else { 0 },
                    errors_recv: counters.errors,
                }
            })
            .collect();
        StatsSnapshot {
            internal: internal_block,
            external,
            traffic_bytes: 0,
            traffic_packets: 0,
            links,
            malformed: malformed_by_reason.values().sum(),
            lost: stats.lost,
            malformed_by_reason,
            resent: stats.retransmits,
            resyncs_requested: stats.resyncs_requested_sent,
            resyncs_received: stats.resyncs_requested_received,
            bulks_sent: stats.bulks_sent,
            bulks_received: stats.bulks_received,
            kernel_overruns: self.counters.kernel_overruns,
            kernel_buffer_size: self.counters.kernel_buffer_size,
            commit_ok: self.counters.commit_ok,
            commit_failed: self.counters.commit_failed,
            uptime_s: self.started.elapsed().as_secs(),
            digest_mismatches: stats.digest_mismatches,
            alarm_expired: stats.alarm_expired,
            epoch_rollovers: stats.epoch_rollovers,
            internal_digest: internal.digest(),
            commit_running: self.commit_running,
            commit_done: self.commit_progress.load(Ordering::Relaxed),
            commit_total: self.commit_total,
            warm_written: self.warm.written,
            warm_failed: self.warm.write_failures,
            warm_pending: self.warm_missing().len() as u64,
            warm_restored: self.warm.restored,
            queue_len: self.node.backlog().0 as u64,
            resend_len: self.node.backlog().1 as u64,
            window: self.node.config().window as u64,
            backlog_drops: stats.backlog_drops,
            backlog_dropped_items: stats.backlog_dropped_items,
            digests_paused: self.node.digests_paused(),
            external_digest: self
                .node
                .external()
                .values()
                .fold(0, |acc, cache| acc ^ cache.digest()),
            peers: self
                .node
                .peers()
                .into_iter()
                .map(|p| PeerBlock {
                    node_id: p.node_id,
                    epoch: p.epoch,
                    alive: p.alive,
                    flows: p.flows as u64,
                    expected_seq: p.expected_seq,
                })
                .collect(),
        }
    }
}

fn add_cache(block: &mut CacheBlock, cache: &FlowCache) {
    block.active += cache.len() as u64;
    block.counts.add(cache.stats());
}

fn render_entries(entries: &[CacheEntry], now_ms: u64, with_reply: bool, json: bool) -> String {
    if json {
        control::render::flows_json(entries, now_ms)
    } else {
        let mut out = String::new();
        for entry in entries {
            out.push_str(&control::render::flow_line(entry, now_ms, with_reply));
            out.push('\n');
        }
        out
    }
}

fn success(body: String) -> Reply {
    Reply {
        ok: true,
        error: None,
        body,
    }
}

fn failure(reason: String) -> Reply {
    Reply {
        ok: false,
        error: Some(reason),
        body: String::new(),
    }
}
