//! The ctsyncd-versus-conntrackd benchmark (issue 4): the same workloads on
//! both daemons in one run, each in a two-firewall namespace lab, giving
//! one table and one JSON file. `integration/bench_compare.rs` (the
//! `cargo bench --bench compare` entry) runs it at full size and
//! `integration/bench_smoke.rs` at a small N in the test suite.
//!
//! Owns: the command line, the order of the phases, what each phase times
//! and counts, and turning the figures into rows. Must not: assert speed
//! (targets are reported, never enforced), or leave daemons, namespaces or
//! changed sysctls behind (each has a guard that undoes it on drop).

// Shared by two targets that each use a different part.
#![allow(dead_code)]

pub mod ceiling;
pub mod conntrackd;
pub mod host;
pub mod kernel;
pub mod latency;
pub mod link_bytes;
pub mod report;
pub mod system;

use conntrackd::Conntrackd;
use ctsync::kernel::write::WriteOp;
use host::{cpu_seconds, cpu_times, peak_rss_bytes, rss_bytes, settle, ConntrackSysctls, Machine};
use kernel::{
    apply, check_report, enable_labels, kernel_count, kernel_flush, tcp_flows, timed_create,
    FlowSet,
};
use link_bytes::LinkCounter;
use report::{Report, Row, Target};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use system::{Ctsyncd, Side, System};

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Command(String),
    #[error("cannot parse {0}")]
    Parse(String),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("daemon: {0}")]
    Daemon(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("usage: {0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
}

/// The workloads, as `--only` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    Raw,
    Commit,
    Burst,
    Resync,
    Bytes,
    Memory,
    Cpu,
    Warm,
    Dump,
    Auth,
    Mix,
    Latency,
}

impl Workload {
    pub const ALL: [Workload; 12] = [
        Workload::Raw,
        Workload::Commit,
        Workload::Burst,
        Workload::Resync,
        Workload::Bytes,
        Workload::Memory,
        Workload::Cpu,
        Workload::Warm,
        Workload::Dump,
        Workload::Auth,
        Workload::Mix,
        Workload::Latency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Raw => "raw",
            Workload::Commit => "commit",
            Workload::Burst => "burst",
            Workload::Resync => "resync",
            Workload::Bytes => "bytes",
            Workload::Memory => "memory",
            Workload::Cpu => "cpu",
            Workload::Warm => "warm",
            Workload::Dump => "dump",
            Workload::Auth => "auth",
            Workload::Mix => "mix",
            Workload::Latency => "latency",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// N: flows per burst, commit and resync.
    pub flows: usize,
    pub only: BTreeSet<Workload>,
    /// Set nf_conntrack_buckets to N rounded up to a power of two, at least
    /// 1,048,576, for the run (global; put back afterwards).
    /// nf_conntrack_max is raised to 2.2 × N when lower either way.
    pub tune_kernel: bool,
    /// How long the idle traffic of the sync link is measured.
    pub idle: Duration,
    /// K: creates, updates and deletes per bytes-on-the-link phase (at most N).
    pub bytes_k: usize,
    /// Measure conntrackd too (`--ctsyncd-only` turns it off).
    pub with_conntrackd: bool,
    /// The flows the phases write (the mix workload runs bytes, CPU and
    /// memory again with `FlowSet::Mix`).
    pub flow_set: FlowSet,
    /// Repetitions of each system's phases (the two systems alternate
    /// which goes first) and of the raw writer's fastest shape; the table
    /// shows medians.
    pub reps: usize,
}

impl BenchConfig {
    /// The full benchmark.
    pub fn full(flows: usize) -> BenchConfig {
        BenchConfig {
            flows,
            only: Workload::ALL.into_iter().collect(),
            tune_kernel: true,
            idle: Duration::from_secs(6),
            bytes_k: 50_000,
            with_conntrackd: true,
            reps: 3,
            flow_set: FlowSet::Tcp4,
        }
    }

    /// A quick run that proves every phase works; leaves the bucket count alone.
    pub fn smoke(flows: usize) -> BenchConfig {
        BenchConfig {
            tune_kernel: false,
            idle: Duration::from_secs(3),
            reps: 1,
            ..BenchConfig::full(flows)
        }
    }

    fn wants(&self, w: Workload) -> bool {
        // The commit is held to the raw writer of the same run; sync with
        // keys to the same figures without.
        self.only.contains(&w)
            || (w == Workload::Raw && self.only.contains(&Workload::Commit))
            || (matches!(w, Workload::Cpu | Workload::Bytes) && self.only.contains(&Workload::Auth))
    }

    /// Whether A must be filled and B's external cache completed.
    fn wants_fill(&self) -> bool {
        [
            Workload::Burst,
            Workload::Cpu,
            Workload::Memory,
            Workload::Commit,
            Workload::Resync,
        ]
        .iter()
        .any(|w| self.wants(*w))
    }
}

/// The command line: `[--flows N] [--json PATH] [--only LIST]`.
#[derive(Clone, Debug)]
pub struct Cli {
    pub config: BenchConfig,
    pub json: PathBuf,
}

pub const USAGE: &str = "usage: integration/bench/run [--flows N] [--json PATH] [--only LIST] [--reps R] [--ctsyncd-only]\n\
    \x20 --flows N    flows per burst, commit and resync (default 1,000,000)\n\
    \x20 --json PATH  where to write the JSON (default target/bench/compare.json)\n\
    \x20 --only LIST  comma-separated subset of: raw,commit,burst,resync,bytes,memory,cpu,warm,dump,auth,mix,latency\n\
    \x20 --reps R     repetitions, the systems' order alternating; medians shown (default 3)\n\
    \x20 --ctsyncd-only  leave conntrackd out (its columns read n/a)";

impl Cli {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Cli, BenchError> {
        let mut flows = 1_000_000usize;
        let mut json = PathBuf::from("target/bench/compare.json");
        let mut only: Option<BTreeSet<Workload>> = None;
        let mut with_conntrackd = true;
        let mut reps = 3usize;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| BenchError::Usage(format!("{name} needs a value")))
            };
            match arg.as_str() {
                // cargo bench appends --bench to a harness-less target's arguments.
                "--bench" => {}
                "--flows" => {
                    let v = value("--flows")?.replace(['_', ','], "");
                    flows = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        BenchError::Usage(format!("--flows {v}: not a positive number"))
                    })?;
                }
                "--json" => json = PathBuf::from(value("--json")?),
                "--ctsyncd-only" => with_conntrackd = false,
                "--reps" => {
                    let v = value("--reps")?;
                    reps = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        BenchError::Usage(format!("--reps {v}: not a positive number"))
                    })?;
                }
                "--only" => {
                    let list = value("--only")?;
                    let mut set = BTreeSet::new();
                    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        set.insert(Workload::parse(name).ok_or_else(|| {
                            BenchError::Usage(format!("--only: unknown workload {name:?}"))
                        })?);
                    }
                    if set.is_empty() {
                        return Err(BenchError::Usage("--only: empty list".into()));
                    }
                    only = Some(set);
                }
                other => return Err(BenchError::Usage(format!("unknown argument {other:?}"))),
            }
        }
        let mut config = BenchConfig::full(flows);
        config.with_conntrackd = with_conntrackd;
        config.reps = reps;
        if let Some(set) = only {
            config.only = set;
        }
        Ok(Cli { config, json })
    }
}

fn progress(msg: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[bench {:7.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// Poll `check` every 100 ms until it says yes or `bound` passes; a failing
/// check (a busy daemon's client timing out) counts as "not yet".
fn poll_until(bound: Duration, mut check: impl FnMut() -> Result<bool, BenchError>) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if matches!(check(), Ok(true)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a peer may take to complete N flows: 30 s plus 90 µs a flow,
/// at most 120 s.
fn completion_bound(n: usize) -> Duration {
    Duration::from_secs(30)
        .saturating_add(Duration::from_micros(90 * n as u64))
        .min(Duration::from_secs(120))
}

/// What one system produced.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub commit_s: Option<f64>,
    pub commit_rate: Option<f64>,
    /// B's daemon's CPU seconds during the commit.
    pub commit_cpu_s: Option<f64>,
    /// Of those, the seconds in its own code (user space): the commit's
    /// cost that is the daemon's, not the kernel's inserts.
    pub commit_user_cpu_s: Option<f64>,
    /// The daemon's own account: from the request to its first write,
    /// and the share of the commit's time the kernel spent taking writes.
    pub commit_first_write_s: Option<f64>,
    pub commit_in_kernel_share: Option<f64>,
    /// And how long its writing thread waited, runnable, for a CPU.
    pub commit_writer_runqueue_s: Option<f64>,
    /// The ceiling's shape once more around this commit, every daemon
    /// stopped, into a fresh namespace: the geometric mean of its rate
    /// right before the repetition and right after the commit (flows/s),
    /// what the kernel took about the commit's moment, which can differ
    /// from the start of the run.
    pub ceiling_beside_commit: Option<f64>,
    /// This commit's rate ÷ that rate.
    pub commit_vs_beside: Option<f64>,
    pub burst_s: Option<f64>,
    pub burst_complete_s: Option<f64>,
    pub burst_lost: Option<f64>,
    pub cpu_per_100k: Option<f64>,
    pub rss_a: Option<f64>,
    pub rss_b: Option<f64>,
    /// A's peak RSS (its whole life, through a `-R` of its full table),
    /// per flow of its internal cache.
    pub rss_peak_a: Option<f64>,
    pub resync_s: Option<f64>,
    pub bytes_new: Option<f64>,
    pub bytes_update: Option<f64>,
    pub bytes_delete: Option<f64>,
    /// Replication latency to B's external cache (ms): steady rate, burst.
    pub steady: Option<latency::Latencies>,
    pub burst_latency: Option<latency::Latencies>,
}

impl Figures {
    /// Each figure's median over `runs` (a figure a run lacks is left out).
    fn median(runs: &[Figures]) -> Figures {
        let m = |get: fn(&Figures) -> Option<f64>| {
            let mut v: Vec<f64> = runs.iter().filter_map(get).collect();
            (!v.is_empty()).then(|| report::median(&mut v))
        };
        Figures {
            commit_s: m(|f| f.commit_s),
            commit_rate: m(|f| f.commit_rate),
            commit_cpu_s: m(|f| f.commit_cpu_s),
            commit_user_cpu_s: m(|f| f.commit_user_cpu_s),
            commit_first_write_s: m(|f| f.commit_first_write_s),
            commit_in_kernel_share: m(|f| f.commit_in_kernel_share),
            commit_writer_runqueue_s: m(|f| f.commit_writer_runqueue_s),
            ceiling_beside_commit: m(|f| f.ceiling_beside_commit),
            commit_vs_beside: m(|f| f.commit_vs_beside),
            burst_s: m(|f| f.burst_s),
            burst_complete_s: m(|f| f.burst_complete_s),
            burst_lost: m(|f| f.burst_lost),
            cpu_per_100k: m(|f| f.cpu_per_100k),
            rss_a: m(|f| f.rss_a),
            rss_b: m(|f| f.rss_b),
            rss_peak_a: m(|f| f.rss_peak_a),
            resync_s: m(|f| f.resync_s),
            bytes_new: m(|f| f.bytes_new),
            bytes_update: m(|f| f.bytes_update),
            bytes_delete: m(|f| f.bytes_delete),
            steady: latency::Latencies::median(runs.iter().filter_map(|f| f.steady)),
            burst_latency: latency::Latencies::median(runs.iter().filter_map(|f| f.burst_latency)),
        }
    }
}

/// ctsyncd's warm standby figures.
#[derive(Clone, Debug, Default)]
pub struct Warm {
    pub kernel_complete_s: Option<f64>,
    pub vs_burst: Option<f64>,
    pub commit_ms: Option<f64>,
}

/// ctsyncd with `[auth] key_file`: the CPU and bytes figures again, every
/// datagram sealed and opened.
#[derive(Clone, Debug, Default)]
pub struct WithKeys {
    pub cpu_per_100k: Option<f64>,
    /// With keys ÷ without, each keyed repetition against the keyless one
    /// run next to it; the median.
    pub cpu_vs_plain: Option<f64>,
    pub bytes_new: Option<f64>,
    pub bytes_update: Option<f64>,
    pub bytes_delete: Option<f64>,
}

/// `-i` of A's whole table while A takes a burst, against the same burst
/// without it (ctsyncd only).
#[derive(Clone, Debug, Default)]
pub struct DumpUnderLoad {
    /// Mean completion (burst start to B's external cache complete) of
    /// the bursts without and with `-i` running on A.
    pub base_s: Option<f64>,
    pub with_dump_s: Option<f64>,
    pub ratio: Option<f64>,
    /// Mean duration of one `-i` of the whole table.
    pub dump_s: Option<f64>,
    /// A's peak resident memory through a burst with `-i`, over the same
    /// through one without (means of each, MB).
    pub peak_rss_with_dump_mb: Option<f64>,
    pub peak_rss_base_mb: Option<f64>,
}

fn keep<T>(notes: &mut Vec<String>, what: &str, r: Result<T, BenchError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = format!("{what}: {e}");
            progress(&msg);
            notes.push(msg);
            None
        }
    }
}

fn pid(sys: &dyn System, side: Side) -> Result<u32, BenchError> {
    sys.pid(side)
        .ok_or_else(|| BenchError::Daemon(format!("{} on {side:?} is not running", sys.name())))
}

/// Bytes on the sync link per create, update and delete of K IPv4 TCP flows.
fn bytes_phase(sys: &dyn System, cfg: &BenchConfig) -> Result<[f64; 3], BenchError> {
    let name = sys.name();
    let k = cfg.bytes_k.min(cfg.flows).max(1);
    let counter = LinkCounter::install(sys.ns(Side::A))?;
    let idle = counter.idle_rate(cfg.idle)?;
    progress(&format!("{name}: sync link idle traffic {idle:.0} B/s"));
    let flows = cfg.flow_set.flows(k, 2);
    let settle = Duration::from_secs(60);
    let mut out = [0.0; 3];
    for (i, what) in ["creates", "updates", "deletes"].into_iter().enumerate() {
        let before = counter.read()?;
        let started = Instant::now();
        let ops: Vec<WriteOp> = match i {
            0 => flows.iter().cloned().map(WriteOp::Create).collect(),
            1 => flows
                .iter()
                .map(|f| {
                    let mut g = f.clone();
                    g.mark = 7;
                    WriteOp::Update(g)
                })
                .collect(),
            _ => flows.iter().map(|f| WriteOp::Delete(f.key())).collect(),
        };
        check_report(what, &apply(sys.ns(Side::A), ops)?)?;
        let want = if i == 2 { 0 } else { k as u64 };
        if !poll_until(settle, || Ok(sys.external_active(Side::B)? == want)) {
            return Err(BenchError::Timeout(format!(
                "{what}: B's external cache never held {want} flows"
            )));
        }
        counter.quiesce(idle, Duration::from_secs(1), settle)?;
        let c = counter.read()?.since(&before);
        let bytes = (c.tx_bytes + c.rx_bytes) as f64;
        let net = bytes - idle * started.elapsed().as_secs_f64();
        out[i] = net / k as f64;
        progress(&format!(
            "{name}: {k} {what}: sent {} B in {} datagrams, received {} B in {}; \
             {:.1} B per flow after idle",
            c.tx_bytes, c.tx_packets, c.rx_bytes, c.rx_packets, out[i]
        ));
    }
    Ok(out)
}

/// The burst's outcome.
struct Burst {
    took: Duration,
    complete_after: Option<Duration>,
    lost: u64,
    cpu_s: f64,
}

/// N creates at full speed in A; B's external cache polled until complete.
fn burst_phase(sys: &dyn System, set: FlowSet, n: usize) -> Result<Burst, BenchError> {
    let name = sys.name();
    let pid_a = pid(sys, Side::A)?;
    let cpu_before = cpu_seconds(pid_a)?;
    let (report, took) = timed_create(sys.ns(Side::A), set.flows(n, 1))?;
    let end = Instant::now();
    check_report("burst", &report)?;
    progress(&format!(
        "{name}: burst of {n} creates took {:.2} s ({:.0}/s); waiting for B",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    ));
    let complete = poll_until(completion_bound(n), || {
        Ok(sys.external_active(Side::B)? >= n as u64)
    });
    let complete_after = complete.then(|| end.elapsed());
    let cpu_s = cpu_seconds(pid_a)? - cpu_before;
    std::thread::sleep(Duration::from_secs(2));
    let last = sys.external_active(Side::B)?;
    progress(&format!(
        "{name}: B's external cache {} ({last} of {n}); A's daemon used {cpu_s:.2} s CPU",
        complete_after.map_or_else(
            || "incomplete".to_string(),
            |d| format!("complete {:.2} s after the burst", d.as_secs_f64())
        )
    ));
    Ok(Burst {
        took,
        complete_after,
        lost: (n as u64).saturating_sub(last),
        cpu_s,
    })
}

/// Resident memory per cached flow on A (internal) and B (external).
/// The steady rate of the latency phase, flows (events) a second, and for
/// how long it runs at most.
const STEADY_RATE: usize = 50_000;
const STEADY_FOR: Duration = Duration::from_secs(10);

/// Latency to `probe` under a steady `STEADY_RATE` (for `STEADY_FOR`, at
/// most N flows), then during a burst of N.
fn latency_phases(
    ns_a: &str,
    probe: latency::Probe,
    cfg: &BenchConfig,
    name: &str,
    notes: &mut Vec<String>,
) -> (Option<latency::Latencies>, Option<latency::Latencies>) {
    let n = cfg.flows;
    let steady_n = n.min(STEADY_RATE * STEADY_FOR.as_secs() as usize);
    let mut run = |what: &str, flows, pace| {
        let r = latency::measure(ns_a, flows, pace, probe.clone(), completion_bound(n));
        let l = keep(notes, &format!("{name}: latency, {what}"), r)?;
        progress(&format!(
            "{name}: latency, {what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            if l.missing > 0 {
                format!(", {} flows never arrived", l.missing)
            } else {
                String::new()
            }
        ));
        if l.missing > 0 {
            notes.push(format!(
                "{name}: latency, {what}: {} flows had not arrived {} s later",
                l.missing,
                completion_bound(n).as_secs()
            ));
        }
        Some(l)
    };
    let steady = run(
        &format!("{steady_n} flows at {STEADY_RATE}/s"),
        tcp_flows(steady_n, 20),
        latency::Pace::steady(STEADY_RATE),
    );
    let burst = run(
        &format!("burst of {n}"),
        tcp_flows(n, 21),
        latency::Pace::burst(),
    );
    (steady, burst)
}

/// ctsyncd with warm standby: latency to B's kernel, steady and burst.
fn warm_latency_phase(
    cfg: &BenchConfig,
    notes: &mut Vec<String>,
) -> (Option<latency::Latencies>, Option<latency::Latencies>) {
    let mut sys = Ctsyncd::new("warm_standby = true");
    let started = sys.start(Side::A).and_then(|_| sys.start(Side::B));
    if keep(notes, "warm standby latency: start", started).is_none() {
        wind_down(&mut sys);
        return (None, None);
    }
    std::thread::sleep(Duration::from_secs(2));
    let probe = latency::Probe::Kernel(sys.ns(Side::B).to_string());
    let out = latency_phases(sys.ns(Side::A), probe, cfg, "ctsyncd warm standby", notes);
    wind_down(&mut sys);
    out
}

/// `-R` on A with its whole table cached, then A's peak RSS per flow
/// (`VmHWM`: the most it ever held, so the burst's peak counts too).
fn reread_peak(sys: &dyn System) -> Result<f64, BenchError> {
    let pid_a = pid(sys, Side::A)?;
    let started = Instant::now();
    sys.reread(Side::A)?;
    let peak = peak_rss_bytes(pid_a)?;
    let n = sys.internal_active(Side::A)?.max(1);
    progress(&format!(
        "{}: -R of A's {n} flows took {:.2} s; A's peak RSS {} MiB",
        sys.name(),
        started.elapsed().as_secs_f64(),
        peak >> 20
    ));
    Ok(peak as f64 / n as f64)
}

fn memory_phase(sys: &dyn System, rss0: (u64, u64)) -> Result<(f64, f64), BenchError> {
    let a = rss_bytes(pid(sys, Side::A)?)?;
    let b = rss_bytes(pid(sys, Side::B)?)?;
    let na = sys.internal_active(Side::A)?.max(1);
    let nb = sys.external_active(Side::B)?.max(1);
    let per_a = (a as f64 - rss0.0 as f64) / na as f64;
    let per_b = (b as f64 - rss0.1 as f64) / nb as f64;
    progress(&format!(
        "{}: RSS A {} MiB ({na} internal), B {} MiB ({nb} external)",
        sys.name(),
        a >> 20,
        b >> 20
    ));
    Ok((per_a, per_b))
}

/// The longest the bench waits for the machine to go idle between phases.
const SETTLE_BOUND: Duration = Duration::from_secs(30);

/// B's external cache into an empty kernel table, as at a failover: the
/// primary is gone. A's daemon is stopped and A's flows flushed first: in
/// the lab both namespaces share the kernel's one conntrack hash table, and
/// A's million flows there would slow every insert (a raw writer falls
/// from ~360k to ~150k flows/s), which no standby on its own machine sees.
/// Its ceiling is the raw writer measured into an empty table at the start
/// of the run (measuring it again here would leave a million flows for the
/// kernel to free in the background during the commit).
/// Returns seconds, flows/s and the CPU B's daemon used meanwhile.
fn commit_phase(sys: &mut dyn System) -> Result<(f64, f64, host::CpuTimes), BenchError> {
    let ns = sys.ns(Side::B).to_string();
    let expected = sys.external_active(Side::B)?;
    sys.stop(Side::A);
    kernel_flush(sys.ns(Side::A))?;
    kernel_flush(&ns)?;
    // Still B's whole view of A after A stopped?
    let kept = sys.external_active(Side::B)?;
    if kept != expected {
        return Err(BenchError::Kernel(format!(
            "B's external cache went from {expected} to {kept} flows when A stopped"
        )));
    }
    // The kernel frees flushed flows in the background: let it finish.
    let waited = settle(SETTLE_BOUND);
    progress(&format!(
        "{}: the machine was idle again {:.1} s after the flush",
        sys.name(),
        waited.as_secs_f64()
    ));
    let pid_b = pid(sys, Side::B)?;
    let cpu_before = cpu_times(pid_b)?;
    let started = Instant::now();
    sys.commit(Side::B)?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_times(pid_b)?.since(cpu_before);
    let count = kernel_count(&ns)?;
    progress(&format!(
        "{}: commit of {expected} flows took {secs:.2} s (B's daemon used {:.2} s CPU, \
         {:.2} s of it in user space); B's kernel holds {count}",
        sys.name(),
        cpu.total(),
        cpu.user
    ));
    if count != expected {
        return Err(BenchError::Kernel(format!(
            "after the commit B's kernel holds {count} flows, its external cache {expected}"
        )));
    }
    Ok((secs, count as f64 / secs, cpu))
}

/// B stopped, its kernel emptied, started again: seconds until its external
/// cache holds A's table again.
fn resync_phase(sys: &mut dyn System, n: usize) -> Result<f64, BenchError> {
    let expected = sys.internal_active(Side::A)?;
    sys.stop(Side::B);
    kernel_flush(sys.ns(Side::B))?;
    let started = Instant::now();
    sys.start(Side::B)?;
    sys.after_restart(Side::B)?;
    let complete = poll_until(completion_bound(n), || {
        Ok(sys.external_active(Side::B)? >= expected)
    });
    let secs = started.elapsed().as_secs_f64();
    if !complete {
        let have = sys.external_active(Side::B).unwrap_or(0);
        return Err(BenchError::Timeout(format!(
            "cold resync: B holds {have} of {expected} flows after {secs:.0} s"
        )));
    }
    progress(&format!(
        "{}: cold resync of {expected} flows took {secs:.2} s",
        sys.name()
    ));
    Ok(secs)
}

/// Every phase on one system, in order: bytes, burst (with CPU), memory,
/// cold resync, commit (A stopped).
fn measure(sys: &mut dyn System, cfg: &BenchConfig, notes: &mut Vec<String>) -> Figures {
    let name = sys.name();
    let mut f = Figures::default();
    if cfg.flow_set == FlowSet::Mix {
        for side in [Side::A, Side::B] {
            if keep(
                notes,
                &format!("{name}: labels"),
                enable_labels(sys.ns(side)),
            )
            .is_none()
            {
                return f;
            }
        }
    }
    progress(&format!(
        "{name}: starting A and B ({:?} flows)",
        cfg.flow_set
    ));
    let started = sys.start(Side::A).and_then(|_| sys.start(Side::B));
    if keep(notes, &format!("{name}: start"), started).is_none() {
        return f;
    }
    // Let the peers find each other before anything is measured.
    std::thread::sleep(Duration::from_secs(2));
    let rss0 = match (sys.pid(Side::A), sys.pid(Side::B)) {
        (Some(a), Some(b)) => (rss_bytes(a).unwrap_or(0), rss_bytes(b).unwrap_or(0)),
        _ => (0, 0),
    };
    if cfg.wants(Workload::Latency) {
        let probe = latency::Probe::External(sys.control_socket(Side::B));
        let (steady, burst) = latency_phases(sys.ns(Side::A), probe, cfg, name, notes);
        f.steady = steady;
        f.burst_latency = burst;
    }
    if cfg.wants(Workload::Bytes) {
        progress(&format!("{name}: bytes on the sync link"));
        if let Some([new, update, delete]) =
            keep(notes, &format!("{name}: bytes"), bytes_phase(sys, cfg))
        {
            f.bytes_new = Some(new);
            f.bytes_update = Some(update);
            f.bytes_delete = Some(delete);
        }
    }
    if !cfg.wants_fill() {
        return f;
    }
    progress(&format!("{name}: burst of {} creates", cfg.flows));
    let Some(burst) = keep(
        notes,
        &format!("{name}: burst"),
        burst_phase(sys, cfg.flow_set, cfg.flows),
    ) else {
        return f;
    };
    f.burst_s = Some(burst.took.as_secs_f64());
    f.burst_complete_s = burst.complete_after.map(|d| d.as_secs_f64());
    if burst.complete_after.is_none() {
        notes.push(format!(
            "{name}: B's external cache was still incomplete {} s after the burst ({} flows missing)",
            completion_bound(cfg.flows).as_secs(),
            burst.lost
        ));
    }
    f.burst_lost = Some(burst.lost as f64);
    f.cpu_per_100k = Some(burst.cpu_s / cfg.flows as f64 * 100_000.0);
    if cfg.wants(Workload::Memory) {
        if let Some((a, b)) = keep(notes, &format!("{name}: memory"), memory_phase(sys, rss0)) {
            f.rss_a = Some(a);
            f.rss_b = Some(b);
        }
        f.rss_peak_a = keep(notes, &format!("{name}: re-read"), reread_peak(sys));
    }
    if cfg.wants(Workload::Resync) {
        progress(&format!("{name}: cold resync of B"));
        f.resync_s = keep(
            notes,
            &format!("{name}: cold resync"),
            resync_phase(sys, cfg.flows),
        );
    }
    // Last: it stops A, as a failover would.
    if cfg.wants(Workload::Commit) {
        progress(&format!(
            "{name}: commit on B (A stopped, its flows flushed)"
        ));
        if let Some((secs, rate, cpu)) = keep(notes, &format!("{name}: commit"), commit_phase(sys))
        {
            f.commit_s = Some(secs);
            f.commit_rate = Some(rate);
            f.commit_cpu_s = Some(cpu.total());
            f.commit_user_cpu_s = Some(cpu.user);
            if let Some(Some(clock)) = keep(
                notes,
                &format!("{name}: the commit's clock"),
                sys.commit_clock(Side::B),
            ) {
                progress(&format!(
                    "{name}: its first write {:.1} ms after the request; the kernel took \
                     its writes {:.3} s of {secs:.3} s; its writer waited {:.1} ms for a CPU",
                    clock.first_write * 1000.0,
                    clock.in_kernel,
                    clock.writer_runqueue * 1000.0
                ));
                f.commit_first_write_s = Some(clock.first_write);
                f.commit_in_kernel_share = Some(clock.in_kernel / secs);
                f.commit_writer_runqueue_s = Some(clock.writer_runqueue);
            }
        }
    }
    f
}

/// Stop both daemons and empty both tables, so tearing the lab down does
/// not overlap the next system's measurements.
fn wind_down(sys: &mut dyn System) {
    sys.stop(Side::A);
    sys.stop(Side::B);
    for side in [Side::A, Side::B] {
        let _ = kernel_flush(sys.ns(side));
    }
}

/// ctsyncd with `[sync] warm_standby = true`: B's kernel complete after A's
/// burst, and `-c` afterwards. "n/a" when the build rejects the key.
fn warm_phase(cfg: &BenchConfig, notes: &mut Vec<String>) -> Warm {
    let n = cfg.flows;
    let mut w = Warm::default();
    let mut sys = Ctsyncd::new("warm_standby = true");
    if let Err(e) = sys.start(Side::A) {
        let text = e.to_string();
        let msg = if text.contains("warm_standby") {
            "warm standby: n/a, this build rejects `[sync] warm_standby = true`".to_string()
        } else {
            format!("warm standby: {text}")
        };
        progress(&msg);
        notes.push(msg);
        return w;
    }
    if keep(notes, "warm standby: start B", sys.start(Side::B)).is_none() {
        return w;
    }
    std::thread::sleep(Duration::from_secs(2));
    let burst = timed_create(sys.ns(Side::A), tcp_flows(n, 3))
        .and_then(|(report, took)| check_report("warm burst", &report).map(|_| took));
    let Some(took) = keep(notes, "warm standby: burst", burst) else {
        return w;
    };
    let end = Instant::now();
    let ns_b = sys.ns(Side::B).to_string();
    let complete = poll_until(completion_bound(n), || Ok(kernel_count(&ns_b)? >= n as u64));
    if complete {
        let lag = end.elapsed().as_secs_f64();
        w.kernel_complete_s = Some(lag);
        w.vs_burst = Some(lag / took.as_secs_f64());
        progress(&format!(
            "warm standby: B's kernel complete {lag:.2} s after a {:.2} s burst",
            took.as_secs_f64()
        ));
    } else {
        let have = kernel_count(&ns_b).unwrap_or(0);
        notes.push(format!(
            "warm standby: B's kernel held {have} of {n} flows {} s after the burst",
            completion_bound(n).as_secs()
        ));
    }
    let started = Instant::now();
    if keep(notes, "warm standby: commit", sys.commit(Side::B)).is_some() {
        w.commit_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    }
    wind_down(&mut sys);
    w
}

/// B's external cache complete: polled every 10 ms (a burst of N/4
/// completes in about a second; the 100 ms of `poll_until` is too coarse).
fn completion_after(
    sys: &dyn System,
    started: Instant,
    want: u64,
    bound: Duration,
) -> Result<Duration, BenchError> {
    let deadline = started + bound;
    loop {
        if sys.external_active(Side::B)? >= want {
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Daemon(format!(
                "B's external cache held fewer than {want} flows {} s after the burst began",
                bound.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start one `ctsyncd -i` (output discarded) on another thread; its
/// duration when it succeeded.
fn dump_once(config: PathBuf) -> std::thread::JoinHandle<Option<Duration>> {
    std::thread::spawn(move || {
        let started = Instant::now();
        std::process::Command::new(crate::lab::ctsyncd_bin())
            .arg("-C")
            .arg(&config)
            .arg("-i")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then(|| started.elapsed())
    })
}

/// A holds N flows; four bursts of N/4 creates each (without, with, with,
/// without one `-i` of A's table started with the burst: the order cancels
/// the table's growth), each timed from its start to B's external cache
/// complete.
fn dump_phase(cfg: &BenchConfig, notes: &mut Vec<String>) -> DumpUnderLoad {
    let n = cfg.flows;
    let burst = (n / 4).max(1);
    let mut d = DumpUnderLoad::default();
    let mut sys = Ctsyncd::new("");
    let started = sys.start(Side::A).and_then(|_| sys.start(Side::B));
    if keep(notes, "dump under load: start", started).is_none() {
        return d;
    }
    std::thread::sleep(Duration::from_secs(2));
    let fill = timed_create(sys.ns(Side::A), tcp_flows(n, 5))
        .and_then(|(report, _)| check_report("dump under load: fill", &report))
        .and_then(|_| completion_after(&sys, Instant::now(), n as u64, completion_bound(n)));
    if keep(notes, "dump under load: fill", fill).is_none() {
        wind_down(&mut sys);
        return d;
    }
    let mut want = n as u64;
    let (mut base, mut with_dump, mut dumps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut peak_base, mut peak_with_dump) = (Vec::new(), Vec::new());
    let a_pid = sys.pid(Side::A);
    for (i, dumping) in [false, true, true, false].into_iter().enumerate() {
        let reset = a_pid.map(host::reset_peak_rss);
        let dump = dumping.then(|| dump_once(sys.lab.a.config.clone()));
        let began = Instant::now();
        want += burst as u64;
        let run = timed_create(sys.ns(Side::A), tcp_flows(burst, 10 + i as u8))
            .and_then(|(report, _)| check_report("dump under load: burst", &report))
            .and_then(|_| completion_after(&sys, began, want, completion_bound(burst)));
        if let Some(handle) = dump {
            dumps.extend(handle.join().ok().flatten());
        }
        let Some(took) = keep(notes, "dump under load: burst", run) else {
            wind_down(&mut sys);
            return d;
        };
        let a = sys.stats(Side::A).unwrap_or_default();
        progress(&format!(
            "dump under load: burst {} of {burst} complete on B after {:.3} s{}; \
             A so far: {} overruns, {} table reads",
            i + 1,
            took.as_secs_f64(),
            if dumping { " (with -i on A)" } else { "" },
            a["kernel"]["overruns"],
            a["kernel"]["table_reads"]
        ));
        let peak = match (reset, a_pid) {
            (Some(Ok(())), Some(pid)) => host::peak_rss_bytes(pid).ok(),
            _ => None,
        };
        let peak_mb = peak.map(|b| b as f64 / 1e6);
        if let Some(mb) = peak_mb {
            progress(&format!(
                "dump under load: A's peak RSS in that burst {mb:.1} MB"
            ));
        }
        if dumping {
            with_dump.push(took.as_secs_f64());
            peak_with_dump.extend(peak_mb);
        } else {
            base.push(took.as_secs_f64());
            peak_base.extend(peak_mb);
        }
        settle(Duration::from_secs(10));
    }
    wind_down(&mut sys);
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    d.peak_rss_base_mb = mean(&peak_base);
    d.peak_rss_with_dump_mb = mean(&peak_with_dump);
    d.base_s = mean(&base);
    d.with_dump_s = mean(&with_dump);
    d.ratio = ratio(d.with_dump_s, d.base_s);
    let dump_secs: Vec<f64> = dumps.iter().map(Duration::as_secs_f64).collect();
    d.dump_s = mean(&dump_secs);
    if dumps.is_empty() {
        notes.push("dump under load: no -i finished during the bursts".into());
    }
    d
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn rows(
    cfg: &BenchConfig,
    raw: Option<&ceiling::Ceiling>,
    c: &Figures,
    d: &Figures,
    w: &Warm,
    dump: &DumpUnderLoad,
) -> Vec<Row> {
    let n = report::fmt_num(cfg.flows as f64);
    let mut rows = Vec::new();
    if cfg.wants(Workload::Raw) || cfg.wants(Workload::Commit) {
        rows.push(Row::new(
            "raw_writer_rate",
            "raw writer ceiling: fastest shape, empty table, every flow with the event extension (flows/s)",
            raw.map(|c| c.best.flows_per_s),
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "raw_writer_threads",
            "raw writer ceiling: its threads (one socket each)",
            raw.map(|c| c.best.shape.threads as f64),
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "raw_writer_batch_kib",
            "raw writer ceiling: KiB per send",
            raw.map(|c| (c.best.shape.batch_bytes >> 10) as f64),
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "raw_writer_no_extension_rate",
            "the same shape without the event extension (a fresh namespace; flows/s)",
            raw.map(|c| c.without_extension),
            None,
            false,
            Target::None,
        ));
    }
    if cfg.wants(Workload::Commit) {
        rows.push(Row::new(
            "commit_s",
            format!("commit of {n} flows (s)"),
            c.commit_s,
            d.commit_s,
            true,
            Target::None,
        ));
        rows.push(Row::new(
            "commit_rate",
            "commit rate (flows/s)",
            c.commit_rate,
            d.commit_rate,
            true,
            Target::RatioAtLeast(2.5),
        ));
        rows.push(Row::new(
            "commit_vs_raw",
            "commit rate ÷ raw writer ceiling",
            ratio(c.commit_rate, raw.map(|c| c.best.flows_per_s)),
            ratio(d.commit_rate, raw.map(|c| c.best.flows_per_s)),
            false,
            Target::CtsyncdAtLeast(1.0),
        ));
        rows.push(Row::new(
            "raw_beside_commit",
            "raw writer ceiling's shape around each commit (geometric mean of right before its repetition and right after it), every daemon stopped (flows/s)",
            c.ceiling_beside_commit,
            d.ceiling_beside_commit,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "commit_vs_raw_beside",
            "each commit's rate ÷ that rate around it (median)",
            c.commit_vs_beside,
            d.commit_vs_beside,
            false,
            Target::CtsyncdAtLeast(1.0),
        ));
        rows.push(Row::new(
            "commit_cpu_s",
            "B's daemon CPU during the commit (s)",
            c.commit_cpu_s,
            d.commit_cpu_s,
            true,
            Target::None,
        ));
        rows.push(Row::new(
            "commit_user_cpu_s",
            "of which in the daemon's own code, user space (s)",
            c.commit_user_cpu_s,
            d.commit_user_cpu_s,
            true,
            Target::None,
        ));
        rows.push(Row::new(
            "commit_first_write_ms",
            "commit: from the request to its first write into the kernel, by the daemon (ms)",
            c.commit_first_write_s.map(|s| s * 1000.0),
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "commit_in_kernel_share",
            "commit: the kernel taking its writes, share of the commit's time",
            c.commit_in_kernel_share,
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "commit_writer_runqueue_ms",
            "commit: its writing thread waiting, runnable, for a CPU, by the daemon (ms)",
            c.commit_writer_runqueue_s.map(|s| s * 1000.0),
            None,
            false,
            Target::None,
        ));
    }
    if cfg.wants(Workload::Burst) {
        rows.push(Row::new(
            "burst_s",
            format!("burst: {n} creates in A (s)"),
            c.burst_s,
            d.burst_s,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "burst_complete_s",
            "burst: B's external cache complete after the burst (s)",
            c.burst_complete_s,
            d.burst_complete_s,
            true,
            Target::None,
        ));
        rows.push(Row::new(
            "burst_lost",
            "burst: flows lost",
            c.burst_lost,
            d.burst_lost,
            false,
            Target::CtsyncdAtMost(0.0),
        ));
    }
    if cfg.wants(Workload::Resync) {
        rows.push(Row::new(
            "cold_resync_s",
            format!("cold resync of {n} flows, B restarted empty (s)"),
            c.resync_s,
            d.resync_s,
            true,
            Target::RatioAtMost(1.0),
        ));
    }
    if cfg.wants(Workload::Bytes) {
        rows.push(Row::new(
            "bytes_per_new",
            "sync link bytes per new IPv4 TCP flow",
            c.bytes_new,
            d.bytes_new,
            true,
            Target::RatioAtMost(0.45),
        ));
        rows.push(Row::new(
            "bytes_per_update",
            "sync link bytes per update",
            c.bytes_update,
            d.bytes_update,
            true,
            Target::None,
        ));
        rows.push(Row::new(
            "bytes_per_delete",
            "sync link bytes per delete",
            c.bytes_delete,
            d.bytes_delete,
            true,
            Target::None,
        ));
    }
    if cfg.wants(Workload::Memory) {
        rows.push(Row::new(
            "rss_per_flow_a",
            "RSS per cached flow, A internal (bytes)",
            c.rss_a,
            d.rss_a,
            true,
            Target::RatioAtMost(0.35),
        ));
        rows.push(Row::new(
            "rss_per_flow_b",
            "RSS per cached flow, B external (bytes)",
            c.rss_b,
            d.rss_b,
            true,
            Target::RatioAtMost(0.35),
        ));
        rows.push(Row::new(
            "rss_peak_per_flow_a",
            "A's peak RSS per flow, through a -R of its table (bytes)",
            c.rss_peak_a,
            d.rss_peak_a,
            true,
            Target::RatioAtMost(0.35),
        ));
    }
    if cfg.wants(Workload::Cpu) {
        rows.push(Row::new(
            "cpu_per_100k",
            "A's daemon CPU per 100,000 replicated events (s)",
            c.cpu_per_100k,
            d.cpu_per_100k,
            true,
            Target::RatioAtMost(0.5),
        ));
    }
    if cfg.wants(Workload::Warm) {
        rows.push(Row::new(
            "warm_kernel_complete_s",
            "warm standby: B's kernel complete after the burst (s)",
            w.kernel_complete_s,
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "warm_vs_burst",
            "warm standby: that ÷ the burst's duration",
            w.vs_burst,
            None,
            false,
            Target::CtsyncdAtMost(1.5),
        ));
        rows.push(Row::new(
            "warm_commit_ms",
            "warm standby: -c afterwards (ms)",
            w.commit_ms,
            None,
            false,
            Target::CtsyncdBelow(100.0),
        ));
    }
    if cfg.wants(Workload::Dump) {
        rows.push(Row::new(
            "dump_burst_base_s",
            "burst of N/4 with N in the table: B complete after (s)",
            dump.base_s,
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "dump_burst_with_i_s",
            "the same with one -i of A's whole table started with it (s)",
            dump.with_dump_s,
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "dump_burst_ratio",
            "that ÷ without -i",
            dump.ratio,
            None,
            false,
            Target::CtsyncdAtMost(1.1),
        ));
        rows.push(Row::new(
            "dump_i_s",
            "one -i of the whole table, during the burst (s)",
            dump.dump_s,
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "dump_peak_rss_base_mb",
            "A's peak RSS through a burst without -i (MB)",
            dump.peak_rss_base_mb,
            None,
            false,
            Target::None,
        ));
        rows.push(Row::new(
            "dump_peak_rss_with_i_mb",
            "A's peak RSS through a burst with -i (MB)",
            dump.peak_rss_with_dump_mb,
            None,
            false,
            Target::None,
        ));
    }
    rows
}

/// Both systems' phases `cfg.reps` times, which goes first alternating;
/// each figure's median. With the raw writer's `ceiling` shape, that
/// shape's rate is taken around each commit: right before the system's
/// repetition and right after its commit (the kernel's rate drifts within
/// a run, and a yardstick taken only on one side would lean with it).
fn compare(
    cfg: &BenchConfig,
    ceiling: Option<ceiling::Shape>,
    notes: &mut Vec<String>,
) -> (Figures, Figures) {
    let n = cfg.flows;
    let mut cts_runs = Vec::new();
    let mut ctd_runs = Vec::new();
    for rep in 0..cfg.reps {
        let ctsyncd_first = rep % 2 == 0;
        let shape = ceiling.filter(|_| cfg.wants(Workload::Commit));
        for ctsyncd in [ctsyncd_first, !ctsyncd_first] {
            progress(&format!(
                "repetition {} of {}: {}",
                rep + 1,
                cfg.reps,
                if ctsyncd { "ctsyncd" } else { "conntrackd" }
            ));
            if ctsyncd {
                let f = around_ceiling(shape, n, notes, |notes| {
                    let mut sys = Ctsyncd::new("");
                    let f = measure(&mut sys, cfg, notes);
                    wind_down(&mut sys);
                    Some(f)
                });
                cts_runs.extend(f);
            } else if cfg.with_conntrackd {
                let f = around_ceiling(shape, n, notes, |notes| match Conntrackd::new(n) {
                    Ok(mut sys) => {
                        let f = measure(&mut sys, cfg, notes);
                        wind_down(&mut sys);
                        Some(f)
                    }
                    Err(e) => {
                        notes.push(format!("conntrackd: {e}"));
                        None
                    }
                });
                ctd_runs.extend(f);
            }
        }
    }
    if !cfg.with_conntrackd {
        notes.push("conntrackd: not measured (--ctsyncd-only)".into());
    }
    (Figures::median(&cts_runs), Figures::median(&ctd_runs))
}

/// One system's repetition (`run`; `None` when the system could not be
/// set up), with the ceiling's `shape` measured around its commit: right
/// before the repetition and right after it; the figure is the geometric
/// mean of the two (or the one measured, if the other failed). Either way
/// no daemon runs then, so that no conntrack listener anywhere makes the
/// kernel build events. A repetition that did not commit gets no figure.
fn around_ceiling(
    shape: Option<ceiling::Shape>,
    n: usize,
    notes: &mut Vec<String>,
    run: impl FnOnce(&mut Vec<String>) -> Option<Figures>,
) -> Option<Figures> {
    let before = shape.and_then(|s| ceiling_now(s, n, "before the repetition", notes));
    let mut f = run(notes)?;
    f.ceiling_beside_commit = match (shape, f.commit_rate) {
        (Some(s), Some(_)) => {
            let after = ceiling_now(s, n, "right after the commit", notes);
            match (before, after) {
                (Some(b), Some(a)) => Some((b * a).sqrt()),
                (one, other) => one.or(other),
            }
        }
        _ => None,
    };
    f.commit_vs_beside = ratio(f.commit_rate, f.ceiling_beside_commit);
    Some(f)
}

/// The ceiling's `shape` once more into a fresh namespace, the machine
/// idle before and after: flows/s.
fn ceiling_now(
    shape: ceiling::Shape,
    n: usize,
    when: &str,
    notes: &mut Vec<String>,
) -> Option<f64> {
    settle(SETTLE_BOUND);
    let run = keep(
        notes,
        &format!("raw writer {when}"),
        ceiling::measure_shape(&tcp_flows(n, 0), shape, ceiling::Events::EveryFlow),
    )?;
    progress(&format!(
        "raw writer {when}: {:.0} flows/s",
        run.flows_per_s
    ));
    settle(SETTLE_BOUND);
    Some(run.flows_per_s)
}

/// Run the benchmark.
pub fn run(cfg: &BenchConfig) -> Result<Report, BenchError> {
    let n = cfg.flows;
    progress(&format!("N = {n}; workloads {:?}", cfg.only));
    let min_max = (n as f64 * 2.2).ceil() as u64;
    // One bucket per flow at least (1,048,576 up to N = 1,000,000).
    let buckets = (n as u64).next_power_of_two().max(1_048_576);
    let _sysctls = ConntrackSysctls::apply(cfg.tune_kernel.then_some(buckets), min_max)?;
    let machine = Machine::probe();
    progress(&format!(
        "{} cores ({}), kernel {}, nf_conntrack_buckets {}, nf_conntrack_max {}",
        machine.nproc,
        machine.cpu,
        machine.kernel,
        machine.nf_conntrack_buckets,
        machine.nf_conntrack_max
    ));
    let mut notes = Vec::new();
    let ceiling = if cfg.wants(Workload::Raw) {
        progress(&format!(
            "raw writer: {n} creates into an empty namespace, {} shapes",
            ceiling::SHAPES.len()
        ));
        keep(
            &mut notes,
            "raw writer",
            ceiling::raw_writer_ceiling(&tcp_flows(n, 0), cfg.reps),
        )
    } else {
        None
    };
    let mut all = cfg.only.clone();
    all.remove(&Workload::Raw);
    all.remove(&Workload::Mix);
    all.remove(&Workload::Latency);
    all.remove(&Workload::Warm);
    all.remove(&Workload::Dump);
    if all.remove(&Workload::Auth) {
        all.extend([Workload::Cpu, Workload::Bytes]);
    }
    let (cts, ctd) = if all.is_empty() {
        (Figures::default(), Figures::default())
    } else {
        // The mix and the latency phases run in passes of their own.
        let main = BenchConfig {
            only: cfg
                .only
                .iter()
                .copied()
                .filter(|w| !matches!(w, Workload::Mix | Workload::Latency))
                .collect(),
            ..cfg.clone()
        };
        compare(&main, ceiling.as_ref().map(|c| c.best.shape), &mut notes)
    };
    let latency = if cfg.wants(Workload::Latency) {
        progress("replication latency: steady rate and burst");
        let sub = BenchConfig {
            only: [Workload::Latency].into_iter().collect(),
            ..cfg.clone()
        };
        let (c, d) = compare(&sub, None, &mut notes);
        progress("replication latency to B's kernel (ctsyncd, warm standby)");
        let warm = warm_latency_phase(cfg, &mut notes);
        Some((c, d, warm))
    } else {
        None
    };
    let mix = if cfg.wants(Workload::Mix) {
        progress("the firewall mix: bytes, CPU and memory");
        let sub = BenchConfig {
            only: [Workload::Bytes, Workload::Cpu, Workload::Memory]
                .into_iter()
                .collect(),
            flow_set: FlowSet::Mix,
            ..cfg.clone()
        };
        Some(compare(&sub, None, &mut notes))
    } else {
        None
    };
    let warm = if cfg.wants(Workload::Warm) {
        progress("warm standby (ctsyncd)");
        warm_phase(cfg, &mut notes)
    } else {
        Warm::default()
    };
    let dump = if cfg.wants(Workload::Dump) {
        progress("-i during a burst (ctsyncd)");
        dump_phase(cfg, &mut notes)
    } else {
        DumpUnderLoad::default()
    };
    let keyed = if cfg.wants(Workload::Auth) {
        progress("ctsyncd with keys: bytes and CPU");
        keyed_phase(cfg, &mut notes)
    } else {
        WithKeys::default()
    };
    let mut rows = rows(cfg, ceiling.as_ref(), &cts, &ctd, &warm, &dump);
    if cfg.wants(Workload::Auth) {
        rows.extend(keyed_rows(&ctd, &keyed));
    }
    if let Some((c, d)) = &mix {
        rows.extend(mix_rows(c, d));
    }
    if let Some((c, d, warm)) = &latency {
        rows.extend(latency_rows(c, d, warm));
    }
    Ok(Report {
        flows: n,
        machine,
        rows,
        notes,
    })
}

/// One figure of a phase's latencies.
type LatencyFigure = fn(&latency::Latencies) -> f64;

/// The replication latency rows (ms): to B's external cache for both
/// systems, to B's kernel with warm standby.
fn latency_rows(
    c: &Figures,
    d: &Figures,
    warm: &(Option<latency::Latencies>, Option<latency::Latencies>),
) -> Vec<Row> {
    let steady = format!("{} flows/s", report::fmt_num(STEADY_RATE as f64));
    let mut rows = Vec::new();
    let mut three = |key: [&'static str; 3],
                     what: &str,
                     a: Option<latency::Latencies>,
                     b: Option<latency::Latencies>,
                     p99: Target| {
        let parts: [(&str, LatencyFigure, Target); 3] = [
            ("p50", |l| l.p50_ms, Target::None),
            ("p99", |l| l.p99_ms, p99),
            ("max", |l| l.max_ms, Target::None),
        ];
        for (k, (name, get, target)) in key.into_iter().zip(parts) {
            rows.push(Row::new(
                k,
                format!("latency {what}, {name} (ms)"),
                a.as_ref().map(get),
                b.as_ref().map(get),
                true,
                target,
            ));
        }
    };
    three(
        [
            "lat_steady_p50_ms",
            "lat_steady_p99_ms",
            "lat_steady_max_ms",
        ],
        &format!("to B's external cache at {steady}"),
        c.steady,
        d.steady,
        Target::CtsyncdBelow(10.0),
    );
    three(
        ["lat_burst_p50_ms", "lat_burst_p99_ms", "lat_burst_max_ms"],
        "to B's external cache during the burst",
        c.burst_latency,
        d.burst_latency,
        Target::None,
    );
    three(
        [
            "lat_warm_steady_p50_ms",
            "lat_warm_steady_p99_ms",
            "lat_warm_steady_max_ms",
        ],
        &format!("to B's kernel (warm standby) at {steady}"),
        warm.0,
        None,
        Target::CtsyncdBelow(10.0),
    );
    three(
        [
            "lat_warm_burst_p50_ms",
            "lat_warm_burst_p99_ms",
            "lat_warm_burst_max_ms",
        ],
        "to B's kernel (warm standby) during the burst",
        warm.1,
        None,
        Target::None,
    );
    rows
}

/// The firewall mix's rows, with issue 13's targets.
fn mix_rows(c: &Figures, d: &Figures) -> Vec<Row> {
    vec![
        Row::new(
            "bytes_new_mix",
            "mix: sync link bytes per new flow",
            c.bytes_new,
            d.bytes_new,
            true,
            Target::RatioAtMost(0.45),
        ),
        Row::new(
            "bytes_update_mix",
            "mix: sync link bytes per update",
            c.bytes_update,
            d.bytes_update,
            true,
            Target::None,
        ),
        Row::new(
            "bytes_delete_mix",
            "mix: sync link bytes per delete",
            c.bytes_delete,
            d.bytes_delete,
            true,
            Target::None,
        ),
        Row::new(
            "rss_a_mix",
            "mix: RSS per cached flow, A internal (bytes)",
            c.rss_a,
            d.rss_a,
            true,
            Target::RatioAtMost(0.35),
        ),
        Row::new(
            "rss_b_mix",
            "mix: RSS per cached flow, B external (bytes)",
            c.rss_b,
            d.rss_b,
            true,
            Target::RatioAtMost(0.35),
        ),
        Row::new(
            "rss_peak_a_mix",
            "mix: A's peak RSS per flow, through a -R of its table (bytes)",
            c.rss_peak_a,
            d.rss_peak_a,
            true,
            Target::RatioAtMost(0.35),
        ),
        Row::new(
            "cpu_per_100k_mix",
            "mix: A's daemon CPU per 100,000 replicated events (s)",
            c.cpu_per_100k,
            d.cpu_per_100k,
            true,
            Target::RatioAtMost(0.5),
        ),
    ]
}

/// The note of a keyed repetition whose CPU ratio cannot be taken (no
/// figure, or under one clock tick without keys).
pub const NO_KEYS_RATIO: &str = "ctsyncd: no CPU ratio with keys to without";

/// The bytes and CPU phases on a ctsyncd pair with keys, `cfg.reps`
/// times (a fresh pair and key each time), each beside the same phases on
/// a pair without keys, which goes first alternating; each figure's median.
/// The keyless runs are the yardstick of the keys' cost: the machine's
/// speed drifts over a whole run by more than the keys cost, so the
/// keyless figures of the run's first phase are too far away in time.
fn keyed_phase(cfg: &BenchConfig, notes: &mut Vec<String>) -> WithKeys {
    let sub = BenchConfig {
        only: [Workload::Bytes, Workload::Cpu].into_iter().collect(),
        ..cfg.clone()
    };
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    'reps: for rep in 0..cfg.reps {
        let mut keyed = None;
        let mut plain = None;
        for with_keys in [rep % 2 == 1, rep % 2 == 0] {
            progress(&format!(
                "ctsyncd {} keys: repetition {} of {}",
                if with_keys { "with" } else { "without" },
                rep + 1,
                cfg.reps
            ));
            let made = if with_keys {
                Ctsyncd::with_keys()
            } else {
                Ok(Ctsyncd::new(""))
            };
            let mut sys = match made {
                Ok(sys) => sys,
                Err(e) => {
                    notes.push(format!("ctsyncd with keys: {e}"));
                    break 'reps;
                }
            };
            let f = measure(&mut sys, &sub, notes);
            wind_down(&mut sys);
            if with_keys {
                sys.remove_keys();
                keyed = f.cpu_per_100k;
                runs.push(f);
            } else {
                plain = f.cpu_per_100k;
            }
        }
        match ratio(keyed, plain) {
            Some(r) => {
                progress(&format!(
                    "ctsyncd: CPU per event with keys ÷ without, side by side: {r:.3}"
                ));
                ratios.push(r);
            }
            None => notes.push(format!(
                "{NO_KEYS_RATIO} in repetition {} (with keys {keyed:?}, without {plain:?})",
                rep + 1
            )),
        }
    }
    let f = Figures::median(&runs);
    WithKeys {
        cpu_per_100k: f.cpu_per_100k,
        cpu_vs_plain: (!ratios.is_empty()).then(|| report::median(&mut ratios)),
        bytes_new: f.bytes_new,
        bytes_update: f.bytes_update,
        bytes_delete: f.bytes_delete,
    }
}

/// The cost of keys: CPU and bytes with keys, against conntrackd (which
/// has no authentication) and against ctsyncd without keys.
fn keyed_rows(d: &Figures, k: &WithKeys) -> Vec<Row> {
    vec![
        Row::new(
            "cpu_per_100k_keys",
            "with keys: A's daemon CPU per 100,000 events (s)",
            k.cpu_per_100k,
            d.cpu_per_100k,
            true,
            Target::RatioAtMost(0.5),
        ),
        Row::new(
            "cpu_keys_vs_plain",
            "with keys: that ÷ ctsyncd without keys, each run beside one without (median)",
            k.cpu_vs_plain,
            None,
            false,
            Target::CtsyncdAtMost(1.15),
        ),
        Row::new(
            "bytes_per_new_keys",
            "with keys: sync link bytes per new IPv4 TCP flow",
            k.bytes_new,
            d.bytes_new,
            true,
            Target::None,
        ),
        Row::new(
            "bytes_per_update_keys",
            "with keys: sync link bytes per update",
            k.bytes_update,
            d.bytes_update,
            true,
            Target::None,
        ),
        Row::new(
            "bytes_per_delete_keys",
            "with keys: sync link bytes per delete",
            k.bytes_delete,
            d.bytes_delete,
            true,
            Target::None,
        ),
    ]
}

/// Write the report's JSON, creating the directory.
pub fn write_json(report: &Report, path: &Path) -> Result<(), BenchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::Io(format!("create {}: {e}", dir.display())))?;
    }
    let text = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| BenchError::Io(format!("JSON: {e}")))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| BenchError::Io(format!("write {}: {e}", path.display())))
}
