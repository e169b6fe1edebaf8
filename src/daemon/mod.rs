//! The tokio wiring of `ctsyncd`: one task (the owner) holds the sync core,
//! and through it the caches, and selects over its inputs; kernel I/O runs
//! on two plain threads (`event_reader`, `kernel_worker`) that talk to it
//! by message; socket readers and the control server are tasks.
//!
//! Owns: start-up order (event socket, table read, READY), the run loop,
//! the timers, and handing the routed events, datagrams and finished jobs
//! to the parts. Must not: encode netlink or sync-protocol bytes, hold
//! flows anywhere but in the core, or walk a whole cache on the owner's
//! thread (freeze it and hand the copy to a worker).
//!
//! The parts: `event_reader` (the event thread), `routing` (which event
//! is ours), `kernel_worker` (commits, flushes, reads, warm standby's
//! writes), `commit_plan` (what a commit writes, in which order),
//! `warm_standby` (the mirror's bookkeeping), `requests` (control
//! requests), `stats` (the `-s` snapshot), `views` (`-i`/`-e`), `setup`,
//! `scrapes` (the metrics endpoint's snapshots),
//! `logging` (where lines go), `failover_log` (peer, resync, bulk and link
//! lines), `reload` (SIGHUP and `reload`; SIGUSR1 reopens the log file),
//! `priority` (nice, scheduler), `watchdog` (systemd's, fed from the loop).

mod commit_plan;
mod conntrackd_link;
mod event_reader;
mod expectations;
mod failover_log;
mod kernel_worker;
mod logging;
mod priority;
mod provisional;
mod recent_split;
mod reload;
mod requests;
mod routing;
mod scrapes;
mod setup;
mod stats;
mod sync_auth;
mod views;
mod warm_standby;
mod watchdog;

pub use logging::{check_log_file, dropped_lines, DETACHED_ENV};

use crate::cache::{FlowCache, FrozenCache};
use crate::config::Config;
use crate::control::server::ControlCounters;
use crate::control::{self, Envelope, Reply};
use crate::counters::{CommitCounters, KernelCounters, NetworkCounters};
use crate::filter::Filter;
use crate::flow::{Flow, FlowKey};
use crate::kernel::dump::dump_table;
use crate::kernel::events::{EventSocket, EventSwitch};
use crate::kernel::write::Writer;
use crate::kernel::{KernelError, KernelEvent};
use crate::process;
use crate::sync::{Applied, Node, Reconciling, Replicate};
use crate::transport::{self, Link, Received};
use event_reader::KernelFeed;
use kernel_worker::{Done, DumpPurpose, Job, JobSender, TableRead};
use provisional::{Provisional, PROVISIONAL_WINDOW};
use routing::{EventOrigins, KeyFacts, Route};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use warm_standby::WarmStandby;

/// Most queued kernel-event batches handled before the next transmit.
const KERNEL_DRAIN: usize = 4096;
/// How often the links' interfaces are looked at.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long the keys of a finished commit are remembered as our own writes.
const OWN_WRITES_MEMORY: Duration = Duration::from_secs(10);
/// Time the control server gets to deliver the reply to `-k`.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);
/// How long after a netlink overrun the kernel table is re-read.
const OVERRUN_RESYNC_DELAY: Duration = Duration::from_millis(200);

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
/// (`-d` sets `DETACHED_ENV`: logs then go to syslog unless a log file or
/// a facility is configured.) `config_notes` are what loading the config
/// had to say (`Config::load_with_notes`), logged once at start.
pub fn run_blocking(
    config: Config,
    config_path: PathBuf,
    config_notes: Vec<String>,
) -> Result<(), String> {
    let detached = std::env::var_os(DETACHED_ENV).is_some();
    let sinks = logging::sinks(&config.daemon, detached);
    // Before any thread starts (the log file's writer is the first): they
    // all inherit the nice value.
    let mut applied = priority::Applied {
        nice: priority::apply_nice(&config.daemon),
        scheduler: None,
    };
    let _log_guard = logging::init(&config.daemon.log_level, &sinks)?;
    // A real-time scheduler for this (the owner's) thread only: the
    // threads it starts from now on run under SCHED_OTHER (see `priority`).
    applied.scheduler = priority::apply_scheduler(&config.daemon);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config_path.display(),
        log_file = ?sinks.file,
        syslog = sinks.syslog.map(|f| f.name()),
        "ctsyncd starting"
    );
    priority::log(&applied);
    // A conntrackd.conf's settings without effect in ctsyncd, once, with
    // their line (`ctsyncd convert` shows the same as comments); through
    // the log, so that a background daemon's notes reach its file or syslog.
    for note in &config_notes {
        tracing::info!("note: {note}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(priority::ordinary_thread)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run(config, config_path)).map_err(|e| {
        tracing::error!(error = %e, "ctsyncd failed");
        e.to_string()
    })
}

/// Where the commit stands: its writes are taken for our own while it
/// runs and for `OWN_WRITES_MEMORY` after (see `remembers_own_writes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommitPhase {
    Idle,
    Running,
    Finished { own_writes_until: Instant },
}

/// The table read a quiet commit (events paused while it wrote) owes:
/// until one started after it has been compared, however long it takes,
/// the commit's writes are remembered as our own too, or that read would
/// send the committed flows back to the peers as ours. A later commit
/// that needs no read does not cancel it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PostCommitRead {
    /// None owed, or it has been compared.
    Done,
    /// Not started yet.
    Owed,
    /// Started after the commit; done once compared.
    Running,
}

/// Whether the kernel table is being read (on the worker) or compared with
/// the internal cache (here, a chunk per turn of the loop); the events
/// seen meanwhile are replayed on the result, in order.
enum TableReadState {
    Idle,
    Running {
        replay: Vec<KernelEvent>,
    },
    Comparing {
        replay: Vec<KernelEvent>,
        run: Reconciling,
        rest: crate::wire::flow_list::FlowListIter,
        clients: Vec<oneshot::Sender<Reply>>,
        /// A re-read that replicates what it finds (an overrun's heal or
        /// the periodic re-read), not `-R`.
        heal: bool,
    },
}

/// Flows of a table read compared per turn of the owner's loop (a few
/// milliseconds), so a read of a million flows never stalls replication.
const COMPARE_CHUNK: usize = 16_384;

/// The owner's timers (the sync core keeps its own).
#[derive(Debug)]
struct Timers {
    link_check_at: Instant,
    /// Re-read the table after an overrun or a failed read.
    heal_at: Option<Instant>,
    /// The periodic re-read.
    reconcile_at: Option<Instant>,
    /// `-t`: flush the kernel table then.
    scheduled_flush_at: Option<Instant>,
}

impl Timers {
    /// When the owner must wake next for its own timers. A heal or re-read
    /// that falls due while the table is being read waits for that read to
    /// land (which looks again): no wake-ups meanwhile.
    fn earliest(&self, reading_table: bool, own_writes_until: Option<Instant>) -> Option<Instant> {
        let table_timers = [self.heal_at, self.reconcile_at]
            .into_iter()
            .filter(|_| !reading_table);
        [
            Some(self.link_check_at),
            self.scheduled_flush_at,
            own_writes_until,
        ]
        .into_iter()
        .chain(table_timers)
        .flatten()
        .min()
    }
}

struct Daemon {
    config: Config,
    node: Node,
    filter: Filter,
    links: Vec<Link>,
    origins: EventOrigins,
    /// `None` without warm standby.
    warm: Option<WarmStandby>,
    /// Under warm standby, the flows found in the kernel at start that may
    /// be a peer's mirror (see `provisional`).
    provisional: Provisional,
    commit: CommitPhase,
    post_commit_read: PostCommitRead,
    /// Flows the running commit has written so far (the kernel worker
    /// counts).
    commit_progress: Arc<AtomicU64>,
    /// Turns the kernel event subscription off for a commit and on after.
    events_switch: EventSwitch,
    events_paused: bool,
    /// Resuming the events after a quiet commit failed: retried with the
    /// link checks, and the table read again once it succeeds.
    events_resume_owed: bool,
    jobs: JobSender,
    done_tx: mpsc::Sender<Done>,
    started: Instant,
    table_read: TableReadState,
    timers: Timers,
    link_carrier: Vec<bool>,
    /// `-R` requests that arrived while another table read was running.
    pending_resyncs: Vec<oneshot::Sender<Reply>>,
    /// `-i`/`-e` being copied, a part a turn.
    dumps: Vec<views::SlicedDump>,
    kernel_counters: KernelCounters,
    network_counters: NetworkCounters,
    commit_counters: CommitCounters,
    control_counters: Arc<ControlCounters>,
    auth_log: sync_auth::AuthLog,
    /// The config file, read again on reload.
    config_path: PathBuf,
    /// The last look at the core, for failover log lines.
    observer: failover_log::Observer,
    /// `None` unless systemd asks for a watchdog.
    watchdog: Option<watchdog::Watchdog>,
    /// When the running table read started (its log line's duration).
    table_read_started: Option<Instant>,
    /// Flows our own kernel flush deleted while a table read was being
    /// compared, forgotten once it is done (see `forget_flushed`).
    flushed_during_read: Vec<FlowKey>,
    /// Warm standby's expectation writes.
    expect_state: expectations::ExpectState,
    /// A link that speaks conntrackd's protocol (a migration).
    cd: Option<conntrackd_link::CdLink>,
    /// Any link speaks ctsync's own protocol (otherwise our changes go to
    /// the conntrackd peer only).
    ctsync_links: bool,
    stop: bool,
}

async fn run(config: Config, config_path: PathBuf) -> Result<(), DaemonError> {
    let started = Instant::now();
    // First: a signal from the moment the control socket answers (logrotate's
    // SIGUSR1, say) is handled by the loop, never by the default action
    // (which ends the process).
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut sigusr1 =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    process::return_large_buffers();
    let keys = sync_auth::load_keys(&config)?;
    let _lock = match &config.daemon.lock {
        Some(path) => Some(process::LockFile::acquire(path)?),
        None => None,
    };
    let _pid_file = match &config.daemon.pid_file {
        Some(path) => Some(process::PidFile::write(path)?),
        None => None,
    };
    // Early, so a busy address stops the start before anything is set up;
    // scrapes wait (or time out) until the loop runs.
    let mut scrapes = scrapes::start(&config)?;
    if config.kernel.enable_events {
        process::enable_conntrack_events();
    }
    let epoch = setup::new_epoch();
    let specs = setup::link_specs(&config);
    let filter = Filter::from_config(&config.filter, specs.iter().flat_map(|s| s.addresses()));

    // Writer first: its port id marks our own changes in the event stream.
    let writer = Writer::open()?;
    // Warm standby writes through its own socket, whose events are ignored
    // entirely (as conntrackd's INJECT origin): peers' flows in our kernel
    // are not ours to cache or send.
    let injector = if config.sync.warm_standby {
        Some(Writer::open()?)
    } else {
        None
    };
    let origins = EventOrigins {
        own: [writer.portid()].into_iter().collect(),
        ignored: injector.iter().map(Writer::portid).collect(),
    };

    // Subscribe before reading the table so no change between the two is
    // missed; the events queued meanwhile are applied after it, in order.
    let events = EventSocket::open(
        usize::try_from(config.kernel.netlink_buffer).unwrap_or(usize::MAX),
        usize::try_from(config.kernel.netlink_buffer_max).unwrap_or(usize::MAX),
    )?;
    let kernel_counters = KernelCounters {
        buffer_size: events.buffer_size() as u64,
        ..KernelCounters::default()
    };
    // Valid while the event thread holds the socket, i.e. while we run.
    let events_switch = events.switch();
    let (kernel_tx, mut kernel_rx) = mpsc::channel::<KernelFeed>(1024);
    event_reader::spawn(
        events,
        kernel_tx,
        config.daemon.nice,
        config.daemon.scheduler,
    )?;

    // Expectations likewise: subscribed before they are first read.
    let (expect_tx, mut expect_rx) = mpsc::channel::<expectations::ExpectFeed>(64);
    if !config.sync.expectations.is_off() {
        expectations::spawn_reader(
            usize::try_from(config.kernel.netlink_buffer).unwrap_or(usize::MAX),
            expect_tx.clone(),
        )?;
    }

    let (job_tx, job_rx) = std::sync::mpsc::channel();
    let commit_progress = Arc::new(AtomicU64::new(0));
    kernel_worker::spawn(writer, injector, commit_progress.clone(), job_rx)?;
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(16);

    let mut links = Vec::new();
    for spec in &specs {
        links.push(transport::open(spec)?);
    }
    let (net_tx, mut net_rx) = mpsc::channel::<Received>(4096);
    for (i, link) in links.iter().enumerate() {
        tokio::spawn(link.clone().read_into(i, net_tx.clone()));
    }
    let (cd_tx, mut cd_rx) = mpsc::channel::<Received>(4096);
    let cd = conntrackd_link::open(&config, cd_tx, epoch)?;

    let mut sync_config = setup::core_config(&config);
    // With only a conntrackd link, the core keeps the caches and sends
    // nothing (it has one link, never used).
    sync_config.links = links.len().max(1);
    if let Some(first) = specs.first() {
        sync_config.max_payload = first.max_payload(config.sync.mtu as usize);
    }
    let now_ms = setup::elapsed_ms(started);
    let mut node =
        Node::new(sync_config, epoch, now_ms).map_err(|e| DaemonError::Sync(e.to_string()))?;
    if let Some(ring) = keys {
        node.enable_auth(ring, &config.auth.cluster);
    }

    let links_empty = links.is_empty();
    let warm = config
        .sync
        .warm_standby
        .then(|| WarmStandby::new(config.sync.warm_timeout_s));
    let mut daemon = Daemon {
        config,
        node,
        filter,
        links,
        origins,
        warm,
        provisional: Provisional::default(),
        commit: CommitPhase::Idle,
        post_commit_read: PostCommitRead::Done,
        commit_progress,
        events_switch,
        events_paused: false,
        events_resume_owed: false,
        jobs: job_tx,
        done_tx,
        started,
        table_read: TableReadState::Idle,
        timers: Timers {
            link_check_at: Instant::now(),
            heal_at: None,
            reconcile_at: None,
            scheduled_flush_at: None,
        },
        link_carrier: Vec::new(),
        pending_resyncs: Vec::new(),
        dumps: Vec::new(),
        kernel_counters,
        network_counters: NetworkCounters::default(),
        commit_counters: CommitCounters::default(),
        control_counters: Arc::default(),
        auth_log: sync_auth::AuthLog::default(),
        config_path,
        observer: failover_log::Observer::default(),
        watchdog: None,
        table_read_started: None,
        flushed_during_read: Vec::new(),
        expect_state: expectations::ExpectState::default(),
        ctsync_links: !links_empty,
        cd,
        stop: false,
    };

    // Prime the internal cache from the kernel before declaring readiness.
    let table = tokio::task::spawn_blocking(dump_table)
        .await
        .map_err(|e| DaemonError::Sync(format!("table read task failed: {e}")))??;
    daemon.kernel_counters.table_reads += 1;
    let accepted = table.into_iter().filter(|f| daemon.filter.accepts(f));
    let primed = daemon.ours(accepted.collect());
    let count = primed.len();
    if daemon.warm.is_some() {
        daemon.provisional = Provisional::after_start(
            primed.iter().map(Flow::key),
            Instant::now() + PROVISIONAL_WINDOW,
        );
    }
    daemon
        .node
        .reconcile_internal(primed, daemon.now_ms(), Replicate::Nothing);
    tracing::info!(
        flows = count,
        epoch,
        "internal cache primed from the kernel table"
    );
    if !daemon.config.sync.expectations.is_off() {
        let all = tokio::task::spawn_blocking(crate::kernel::dump_expectations)
            .await
            .map_err(|e| DaemonError::Sync(format!("expectation read task failed: {e}")))??;
        daemon.expectations_read(Ok(all), false, Vec::new());
        tracing::info!(
            expectations = daemon.node.internal_expectations().len(),
            "expectations primed from the kernel"
        );
    }

    daemon.cd_start();
    daemon.arm_reconcile();
    let group =
        match &daemon.config.socket_group {
            Some(name) => Some(process::group_id(name).map_err(|e| {
                std::io::Error::new(e.kind(), format!("socket_group \"{name}\": {e}"))
            })?),
            None => None,
        };
    let listener = control::server::bind_std(&daemon.config.socket, group)?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<(Envelope, oneshot::Sender<Reply>)>(64);
    spawn_control_thread(listener, ctl_tx, daemon.control_counters.clone(), group)?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    daemon.watchdog = watchdog::Watchdog::from_env(Instant::now());
    if let Some(w) = &daemon.watchdog {
        tracing::info!(
            every_ms = w.period().as_millis(),
            "feeding the systemd watchdog"
        );
    }
    tracing::info!(socket = %daemon.config.socket.display(), "ctsyncd ready");

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
            Some(feed) = expect_rx.recv() => daemon.on_expect_feed(feed),
            Some(received) = cd_rx.recv() => {
                daemon.on_cd_datagram(received);
                while let Ok(more) = cd_rx.try_recv() {
                    daemon.on_cd_datagram(more);
                }
            }
            Some(scrape) = scrapes.next() => daemon.answer_scrape(scrape),
            _ = tokio::time::sleep_until(deadline.into()) => daemon.on_timers(),
            _ = sigterm.recv() => daemon.stop = true,
            _ = sigint.recv() => daemon.stop = true,
            _ = sighup.recv() => {
                let _ = daemon.reload();
            }
            // logrotate's: the log file only, never the config.
            _ = sigusr1.recv() => reload::reopen_log_file_only(),
        }
        daemon.compare_table_chunk();
        daemon.cd_walk_turn();
        daemon.dump_turn();
        daemon.transmit().await;
        daemon.mirror_into_kernel();
        daemon.mirror_expectations();
        // From the loop itself: a loop that is stuck stops feeding it.
        if let Some(w) = &mut daemon.watchdog {
            w.feed(Instant::now());
        }
    }
    drop(expect_tx);
    tracing::info!("ctsyncd stopping");
    // Let the control server deliver the last replies (the answer to -k).
    // The socket goes last: agents take its absence for "stopped", and a
    // start right after must not find the lock still held.
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = std::fs::remove_file(&daemon.config.socket);
    Ok(())
}

/// The control server runs on a thread (and runtime) of its own: writing a
/// dump of a million flows to a client is its work, not the owner's. (At
/// its default priority: see `views::render_off_thread`.)
fn spawn_control_thread(
    listener: std::os::unix::net::UnixListener,
    requests: mpsc::Sender<(Envelope, oneshot::Sender<Reply>)>,
    counters: Arc<ControlCounters>,
    group: Option<u32>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ct-control".into())
        .spawn(move || {
            priority::ordinary_thread();
            runtime.block_on(async move {
                match tokio::net::UnixListener::from_std(listener) {
                    Ok(listener) => {
                        control::server::serve_group(listener, requests, counters, group).await
                    }
                    Err(e) => tracing::error!(error = %e, "cannot serve the control socket"),
                }
            });
        })
        .map(|_| ())
}

impl Daemon {
    fn now_ms(&self) -> u64 {
        setup::elapsed_ms(self.started)
    }

    /// The flows of a table read (that the filter accepts) that are ours
    /// to cache and send: not a peer's mirrored one.
    fn ours(&self, flows: Vec<Flow>) -> Vec<Flow> {
        flows
            .into_iter()
            .filter(|f| !self.is_mirrored(&f.key()))
            .collect()
    }

    /// Each running `-i`/`-e` copies its next part (see `SlicedDump`).
    fn dump_turn(&mut self) {
        for dump in std::mem::take(&mut self.dumps) {
            let more = match dump.source {
                views::DumpSource::Internal => dump.step(std::iter::once(self.node.internal())),
                views::DumpSource::External => dump.step(self.node.external().values()),
            };
            self.dumps.extend(more);
        }
    }

    /// Every peer's cache, frozen (see `FlowCache::freeze`).
    fn frozen_peer_caches(&self) -> Vec<FrozenCache> {
        self.node
            .external()
            .values()
            .map(FlowCache::freeze)
            .collect()
    }

    /// Warm standby: a flow a peer owns, written into our kernel for it.
    /// A flow we hold for good (not provisionally, see `provisional`) is
    /// ours even when a peer claims it too. (After `-f` the peers' caches
    /// are empty, and `-R` then takes every flow in the kernel as ours, as
    /// a promotion wants.)
    fn is_mirrored(&self, key: &FlowKey) -> bool {
        self.warm.is_some() && self.node.holds_peer_flow(key) && !self.owns(key)
    }

    /// Our internal cache holds the flow, and not provisionally.
    fn owns(&self, key: &FlowKey) -> bool {
        self.node.internal().contains(key) && !self.provisional.contains(key)
    }

    /// Warm standby: whether a peer's change goes into our kernel. Not over
    /// a flow we own (our live entry stays as it is; the peer's claim is a
    /// restarted peer's provisional one, which it withdraws). A peer's
    /// create or update of a flow we hold provisionally makes us withdraw
    /// ours, and is written. A peer's delete of a flow we hold, or of one
    /// whose claim we withdrew within the window (both nodes restarted and
    /// both withdrew), is the peer withdrawing its claim: our entry stays.
    fn mirrors_peer_change(&mut self, change: &Applied, now: u64) -> bool {
        let key = change.key();
        if matches!(change, Applied::Delete(_)) {
            // Not while we hold it, nor while another peer does (each
            // holding it as its own, as after the traffic moved between
            // them): the entry is still that peer's.
            let withdrawn = self.provisional.take_withdrawn(&key);
            return !withdrawn
                && !self.node.internal().contains(&key)
                && !self.node.holds_peer_flow(&key);
        }
        if !self.node.internal().contains(&key) {
            return true;
        }
        if self.provisional.withdraw(&key) {
            self.forget_own_flow(&key, now, true);
            return true;
        }
        tracing::debug!(
            ?key,
            "warm standby: a peer claims a flow of ours; ours stays"
        );
        false
    }

    /// A commit runs or ended within `OWN_WRITES_MEMORY`, or a quiet
    /// commit's read has not been compared yet (`PostCommitRead`): a
    /// re-read of the table then takes a flow a peer's cache holds for one
    /// the commit wrote (`Replicate::DifferencesButPeerFlows`), so that the
    /// committed flows (events are paused during a large commit) are not
    /// sent back. (The peers' caches answer that without a set of a
    /// million keys.)
    fn remembers_own_writes(&self) -> bool {
        self.commit != CommitPhase::Idle || self.post_commit_read != PostCommitRead::Done
    }

    /// A table read is being read or compared.
    fn table_read_running(&self) -> bool {
        !matches!(self.table_read, TableReadState::Idle)
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut deadline = now + Duration::from_secs(1);
        for ms in [self.node.next_deadline(), self.cd_deadline_ms()]
            .into_iter()
            .flatten()
        {
            let at = self.started + Duration::from_millis(ms);
            deadline = deadline.min(at.max(now));
        }
        let own_writes = match self.commit {
            CommitPhase::Finished { own_writes_until } => Some(own_writes_until),
            CommitPhase::Idle | CommitPhase::Running => None,
        };
        if let Some(at) = self.timers.earliest(self.table_read_running(), own_writes) {
            deadline = deadline.min(at);
        }
        if let Some(w) = &self.watchdog {
            deadline = deadline.min(w.next().max(now));
        }
        if matches!(self.table_read, TableReadState::Comparing { .. })
            || self.cd_walking()
            || !self.dumps.is_empty()
        {
            // More of the table to compare or copy: only poll the other
            // inputs.
            deadline = now;
        }
        deadline
    }

    fn submit(&self, job: Job) {
        if self.jobs.send((job, self.done_tx.clone())).is_err() {
            tracing::error!("kernel worker is gone");
        }
    }

    /// Events may have been lost: re-read the table soon.
    fn schedule_heal(&mut self, after: Duration) {
        if let Some(warm) = &mut self.warm {
            warm.note_break();
        }
        if self.timers.heal_at.is_none() {
            self.timers.heal_at = Some(Instant::now() + after);
        }
    }

    fn on_kernel(&mut self, feed: KernelFeed) {
        match feed {
            KernelFeed::Events(mut events) => {
                self.kernel_counters.events_received += events.len() as u64;
                if let TableReadState::Running { replay }
                | TableReadState::Comparing { replay, .. } = &mut self.table_read
                {
                    replay.extend(events.iter().cloned());
                }
                // One clock read for the batch (a few hundred
                // microseconds of work at most), not two per event.
                let now = self.now_ms();
                for event in &mut events {
                    self.apply_event(event, now);
                }
                self.settle_waiting_expectations();
            }
            KernelFeed::Overrun { buffer_size } => {
                self.kernel_counters.overruns += 1;
                self.kernel_counters.buffer_size = buffer_size as u64;
                tracing::warn!(
                    buffer_size,
                    overruns = self.kernel_counters.overruns,
                    resync_in_ms = OVERRUN_RESYNC_DELAY.as_millis(),
                    "netlink event socket overrun; the table will be re-read"
                );
                self.schedule_heal(OVERRUN_RESYNC_DELAY);
            }
            KernelFeed::Failed(reason) => {
                // Whatever the reason, events may be lost: re-read the table.
                self.kernel_counters.read_failures += 1;
                tracing::warn!(%reason, "reading kernel events failed; the table will be re-read");
                self.schedule_heal(OVERRUN_RESYNC_DELAY);
            }
        }
    }

    /// One kernel event, at the owner's `now` (milliseconds).
    fn apply_event(&mut self, event: &mut KernelEvent, now: u64) {
        match routing::route(event, &self.origins, &*self, |f| self.filter.accepts(f)) {
            Route::Ignore | Route::Nothing => self.kernel_counters.events_filtered += 1,
            Route::RestoreMirrored(key) => {
                self.kernel_counters.events_filtered += 1;
                self.restore_mirrored(&key);
            }
            Route::Upsert { replicate: true } => {
                // Traffic of its own: ours for good.
                self.provisional.settle(&event.flow.key());
                self.replicate_flow(&event.flow, now)
            }
            Route::Upsert { replicate: false } => {
                self.node.local_upsert(&event.flow, now, false);
            }
            Route::Delete { key, replicate } => self.forget_own_flow(&key, now, replicate),
        }
    }

    /// An event seen while the table was read, applied again once the
    /// comparison is done: the dump may be older than it, so the internal
    /// cache (and, through it, the peers after a heal) must end in the
    /// event's state. Everything else it caused (counters, warm standby's
    /// restore, provisional claims, the conntrackd link) happened when it
    /// arrived, and must not happen twice: a second restore rewrote a
    /// live mirrored entry.
    fn reapply_event(&mut self, event: &mut KernelEvent, now: u64) {
        match routing::route(event, &self.origins, &*self, |f| self.filter.accepts(f)) {
            Route::Ignore | Route::Nothing | Route::RestoreMirrored(_) => {}
            Route::Upsert { replicate } => {
                let replicate = replicate && self.ctsync_links;
                self.node.local_upsert(&event.flow, now, replicate);
            }
            Route::Delete { key, replicate } => {
                if self.node.internal().contains(&key) {
                    let replicate = replicate && self.ctsync_links;
                    self.node.local_delete(&key, now, replicate);
                }
            }
        }
    }

    /// One of our flows is gone (its DESTROY, our own flush, a claim we
    /// withdrew): out of the internal cache, and with `replicate` the
    /// peers (and a conntrackd link) hear of it.
    fn forget_own_flow(&mut self, key: &FlowKey, now: u64, replicate: bool) {
        self.provisional.settle(key);
        if replicate {
            self.cd_flow_gone(key, now);
        }
        self.node
            .local_delete(key, now, replicate && self.ctsync_links);
    }

    fn on_datagram(&mut self, received: Received) {
        let from_peer = self
            .links
            .get(received.link)
            .is_some_and(|link| link.is_from_peer(&received.from));
        if !from_peer {
            self.network_counters.foreign_source += 1;
            return;
        }
        let now = self.now_ms();
        if let Some(refused) = self.node.on_datagram(&received.bytes, received.link, now) {
            self.auth_log.note(received.from, refused);
        }
    }

    fn on_timers(&mut self) {
        self.settle_waiting_expectations();
        let now = Instant::now();
        if self.timers.link_check_at <= now {
            self.timers.link_check_at = now + LINK_CHECK_INTERVAL;
            self.check_links();
            self.log_failover_events();
            if self.events_resume_owed {
                self.retry_events_resume();
            }
        }
        if matches!(self.commit, CommitPhase::Finished { own_writes_until } if own_writes_until <= now)
        {
            self.commit = CommitPhase::Idle;
        }
        if !self.table_read_running() {
            let heal_due = self.timers.heal_at.is_some_and(|at| at <= now);
            let reread_due = self.timers.reconcile_at.is_some_and(|at| at <= now);
            if heal_due || reread_due {
                self.timers.heal_at = None;
                self.timers.reconcile_at = None;
                self.start_table_read(DumpPurpose::Heal);
            }
        }
        if let Some(left) = self.provisional.expire(now) {
            tracing::info!(
                flows = left,
                "flows found in the kernel at start that no peer claimed are ours"
            );
        }
        if self.timers.scheduled_flush_at.is_some_and(|at| at <= now) {
            self.timers.scheduled_flush_at = None;
            tracing::info!("flushing kernel conntrack table (scheduled)");
            self.node.flush_internal();
            self.flush_kernel(None);
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
    /// hand a batch to the kernel worker when it is free.
    fn mirror_into_kernel(&mut self) {
        if self.warm.is_none() {
            return;
        }
        let mut changes = self.node.take_applied();
        if !changes.is_empty() {
            let now = self.now_ms();
            changes.retain(|change| self.mirrors_peer_change(change, now));
        }
        let Some(warm) = &mut self.warm else {
            return;
        };
        warm.queue_applied(changes);
        if let Some(batch) = warm.take_batch() {
            self.submit(Job::Inject(batch));
        }
    }

    /// Warm standby: the kernel lost a flow a peer still has (it expired,
    /// or another program deleted it): write it again.
    fn restore_mirrored(&mut self, key: &FlowKey) {
        let Some(flow) = self.node.peer_flow(key) else {
            return;
        };
        if let Some(warm) = &mut self.warm {
            warm.restore(flow);
        }
    }

    /// Delete every flow of ours from the kernel; warm standby keeps the
    /// peers' (frozen now, compared on the worker).
    fn flush_kernel(&mut self, client: Option<oneshot::Sender<Reply>>) {
        self.kernel_counters.flushes += 1;
        let keep = if self.warm.is_some() {
            self.frozen_peer_caches()
        } else {
            Vec::new()
        };
        self.submit(Job::FlushKernel {
            filter: self.filter.clone(),
            keep,
            client,
        });
    }

    /// Schedule the next periodic re-read of the kernel table.
    fn arm_reconcile(&mut self) {
        let every = self.config.kernel.reconcile_interval_s;
        self.timers.reconcile_at =
            (every > 0).then(|| Instant::now() + Duration::from_secs(u64::from(every)));
    }

    /// Read the kernel table on the worker. Under warm standby whose
    /// mirror may have holes, the peers' caches go along (frozen) so the
    /// worker finds what the table lacks.
    fn start_table_read(&mut self, purpose: DumpPurpose) {
        let mirror = match &mut self.warm {
            Some(warm) => {
                warm.table_read_started();
                (!warm.intact()).then(|| self.frozen_peer_caches())
            }
            None => None,
        };
        if self.post_commit_read == PostCommitRead::Owed {
            self.post_commit_read = PostCommitRead::Running;
        }
        self.table_read = TableReadState::Running { replay: Vec::new() };
        self.table_read_started = Some(Instant::now());
        self.kernel_counters.table_reads += 1;
        self.submit(Job::Dump {
            purpose,
            filter: self.filter.clone(),
            mirror,
        });
    }

    async fn transmit(&mut self) {
        self.cd_transmit().await;
        let now = self.now_ms();
        for out in self.node.poll_transmit(now) {
            let Some(link) = self.links.get(out.link) else {
                continue;
            };
            let dest = link.spec.destination();
            if let Err(e) = link.socket.send_to(&out.bytes, dest).await {
                self.network_counters.send_errors += 1;
                self.node.note_send_error(out.link);
                tracing::debug!(error = %e, %dest, "sync send failed");
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Commit(result, started, client) => self.commit_done(result, started, client),
            Done::Inject(report, keys) => {
                if let Some(warm) = &mut self.warm {
                    warm.batch_done(report, &keys);
                }
            }
            Done::FlushKernel(result, client) => {
                let reply = match result {
                    Ok((report, deleted)) => {
                        tracing::info!(
                            deleted = report.ok,
                            failed = report.failed,
                            "kernel table flushed"
                        );
                        self.forget_flushed(deleted);
                        success(String::new())
                    }
                    Err(reason) => failure(format!("kernel flush failed: {reason}")),
                };
                if let Some(client) = client {
                    let _ = client.send(reply);
                }
            }
            Done::Dump(result, purpose) => self.table_read_done(result, purpose),
            Done::DumpExpectations(result, replicate, clients) => {
                self.expectations_read(result, replicate, clients);
            }
            Done::InjectExpectations(report, ops) => self.expectations_mirrored(report, ops),
            Done::FlushExpectations(result, client) => {
                let reply = match result {
                    Ok(()) => success(String::new()),
                    Err(reason) => failure(format!("expectation flush failed: {reason}")),
                };
                let _ = client.send(reply);
            }
        }
    }

    fn table_read_done(&mut self, result: Result<TableRead, String>, purpose: DumpPurpose) {
        let replay = match std::mem::replace(&mut self.table_read, TableReadState::Idle) {
            TableReadState::Running { replay } => replay,
            TableReadState::Idle | TableReadState::Comparing { .. } => Vec::new(),
        };
        self.arm_reconcile();
        // A `-R` read while a heal is owed (an overrun, paused events)
        // heals too: taken in silently, what the kernel changed unheard
        // would look the same to the heal that follows, and never be sent.
        let (heal, clients) = match purpose {
            DumpPurpose::Resync(clients) => (self.timers.heal_at.is_some(), clients),
            DumpPurpose::Heal => (true, Vec::new()),
        };
        let read = match result {
            Ok(read) => read,
            Err(reason) => {
                self.kernel_counters.read_failures += 1;
                if heal {
                    // Try again: an overrun must always heal.
                    self.timers.heal_at = Some(Instant::now() + OVERRUN_RESYNC_DELAY);
                }
                let reply = failure(format!("kernel dump failed: {reason}"));
                return self.table_read_answered(clients, reply);
            }
        };
        if let Some(lost) = read.lost {
            // Peers' flows the table lacked, as the peers hold them now
            // (one may have deleted it since it was frozen).
            let lost: Vec<Flow> = lost.iter().filter_map(|k| self.node.peer_flow(k)).collect();
            if let Some(warm) = &mut self.warm {
                warm.repaired(lost);
            }
        }
        // Our own commit's flows are cached, never echoed, even when their
        // events were paused or the overrun swallowed them.
        let replicate = match (heal, self.remembers_own_writes()) {
            (false, _) => Replicate::Nothing,
            (true, false) => Replicate::Differences,
            (true, true) => Replicate::DifferencesButPeerFlows,
        };
        let run = self.node.reconcile_begin(self.now_ms(), replicate);
        self.table_read = TableReadState::Comparing {
            replay,
            run,
            rest: read.accepted.into_iter(),
            clients,
            heal,
        };
        self.compare_table_chunk();
    }

    /// Compare the next chunk of a table read with the internal cache; after
    /// the last, sweep what the table lacked and replay the events seen
    /// meanwhile.
    fn compare_table_chunk(&mut self) {
        // Called every turn of the loop: any other state stays as it is (a
        // running read must keep collecting the events to replay).
        let (replay, mut run, mut rest, clients, heal) =
            match std::mem::replace(&mut self.table_read, TableReadState::Idle) {
                TableReadState::Comparing {
                    replay,
                    run,
                    rest,
                    clients,
                    heal,
                } => (replay, run, rest, clients, heal),
                other => {
                    self.table_read = other;
                    return;
                }
            };
        let chunk = self.ours(rest.by_ref().take(COMPARE_CHUNK).collect());
        let now = self.now_ms();
        self.node.reconcile_chunk(&mut run, chunk, now);
        if rest.len() > 0 {
            self.table_read = TableReadState::Comparing {
                replay,
                run,
                rest,
                clients,
                heal,
            };
            return;
        }
        let report = self.node.reconcile_finish(run, now);
        let flushed = std::mem::take(&mut self.flushed_during_read);
        self.forget_flushed(flushed);
        let now = self.now_ms();
        for mut event in replay {
            self.reapply_event(&mut event, now);
        }
        if heal {
            // Against the cache as the replay left it: the dump's older
            // states must not reach the conntrackd peer.
            self.cd_catch_up();
        }
        if self.post_commit_read == PostCommitRead::Running {
            self.post_commit_read = PostCommitRead::Done;
        }
        let duration_ms = self
            .table_read_started
            .take()
            .map_or(0, |at| at.elapsed().as_millis());
        tracing::info!(
            duration_ms,
            ?report,
            "internal cache reconciled with the kernel table"
        );
        // The expectations now, against the whole table (one is ours when
        // its master is); `-R`'s clients hear back once they are in too.
        self.read_expectations(heal, clients);
        self.table_read_answered(Vec::new(), success(String::new()));
    }

    /// Our own kernel flush (`-F`, `-t`) deleted these flows: forget them
    /// without telling the peers, as their DESTROY events (ours) do, also
    /// when those events were lost to an overrun; a table re-read would
    /// otherwise find them gone and send their deletes. While a read is
    /// being compared they wait for it to finish, since its dump may be
    /// older than the flush.
    fn forget_flushed(&mut self, keys: Vec<FlowKey>) {
        if matches!(self.table_read, TableReadState::Comparing { .. }) {
            self.flushed_during_read.extend(keys);
            return;
        }
        let now = self.now_ms();
        for key in keys {
            self.forget_own_flow(&key, now, false);
        }
    }

    /// A table read is over: answer who waited, and start the next one
    /// that `-R` asked for meanwhile.
    fn table_read_answered(&mut self, clients: Vec<oneshot::Sender<Reply>>, reply: Reply) {
        for client in clients {
            let _ = client.send(reply.clone());
        }
        process::trim_heap();
        if !self.pending_resyncs.is_empty() {
            let waiting = std::mem::take(&mut self.pending_resyncs);
            self.start_table_read(DumpPurpose::Resync(waiting));
        }
    }
}

impl KeyFacts for Daemon {
    fn mirrored(&self, key: &FlowKey) -> bool {
        self.is_mirrored(key)
    }

    fn cached(&self, key: &FlowKey) -> Option<Flow> {
        self.node.internal().flow(key)
    }
}

fn success(body: String) -> Reply {
    Reply::ok(body)
}

fn failure(reason: String) -> Reply {
    Reply::err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_heal_does_not_wake_the_owner_while_the_table_is_read() {
        let now = Instant::now();
        let timers = Timers {
            link_check_at: now + Duration::from_millis(250),
            heal_at: Some(now - Duration::from_millis(5)),
            reconcile_at: Some(now + Duration::from_secs(60)),
            scheduled_flush_at: None,
        };
        // Idle: the overdue heal is the next wake-up.
        assert_eq!(timers.earliest(false, None), timers.heal_at);
        // Reading: the heal waits for the read; the link check is next.
        assert_eq!(timers.earliest(true, None), Some(timers.link_check_at));
        let soon = now + Duration::from_millis(10);
        assert_eq!(timers.earliest(true, Some(soon)), Some(soon));
    }
}
