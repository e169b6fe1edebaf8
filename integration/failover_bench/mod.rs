//! The failover benchmark: the failover lab with a busy table (N idle
//! filler flows on fwa besides the live test traffic), the same failure
//! for ctsyncd in commit mode, ctsyncd with warm standby and conntrackd
//! 1.4.7, in one run. Per N and system it measures the connections that
//! survive, the blackout (the longest gap in the UDP server-push streams
//! around the failover), VRRP's own detection time, the commit's duration
//! and the time until fwb's kernel holds every flow, and judges the issue's
//! goals (warm standby: every connection survives, blackout ≤ detection +
//! 100 ms; commit mode: blackout ≤ detection + 200 ms, the commit in at
//! most a quarter of conntrackd's time).
//! `integration/bench_failover.rs` (`cargo bench --bench failover`, what
//! `integration/bench/failover` runs) runs it in full and
//! `integration/failover_bench_smoke.rs` at a small N in the test suite.
//!
//! A run, as the failover tests do it: build the lab; start fwa's daemon
//! and keepalived and let its start-up `-t` flush pass; write the N filler
//! flows into fwa's kernel and wait until its daemon caches them; start
//! the live traffic; start fwb's keepalived (its notify script starts the
//! daemon, `-t`, `-n`); wait until fwb's cache holds N + test flows and
//! then until a periodic table re-read on fwa (`reconcile_interval_s`) has
//! told fwb which flows are live; inject the failure; watch fwb's kernel
//! count on a thread in its namespace; wait for the commit, for every live
//! flow to resume and for one ping round on the idle connections; stop the
//! traffic and judge. Before the systems of each N, the kernel's own
//! ceiling for those flows is measured (the batched writer into an empty
//! namespace, one socket and one per core): no commit can beat it.
//!
//! Before a crash, fwa's sync daemon is frozen (SIGSTOP) and the filler is
//! deleted from fwa's kernel; the crash then kills the daemon before it
//! could read those deletes, so fwb's view is untouched (checked). In the
//! lab both firewalls share the kernel's one conntrack hash table, and a
//! crashed machine's N flows would otherwise slow every insert of fwb's
//! commit, which no standby on its own machine sees. After a link loss or
//! a graceful stop fwa is alive and keeps its table (and its daemon would
//! replicate deletes), so its flows stay in the shared table then.
//!
//! Owns: the command line, the order of a run, what is timed and counted,
//! and turning it into a report. Must not: assert speed or goals (it
//! reports them), change the failover tests' checks, or leave namespaces,
//! daemons or changed sysctls behind (the lab and ConntrackSysctls undo
//! themselves on drop, also when a run panics; host.rs does it on a
//! signal). Every wait is bounded.

// Shared by two targets that each use a different part.
#![allow(dead_code)]

pub mod host;
pub mod kernel;
pub mod logs;
pub mod report;

use crate::bench::host::{settle, ConntrackSysctls, Machine};
use crate::failover::traffic::{FlowInfo, Kind, Spec, Traffic};
use crate::failover::{FailoverLab, Failure, Mode, Options, Timing};
use crate::lab::{run as run_cmd, wait_until};
use ctsync::flow::Flow;
use ctsync::kernel::write::WriteOp;
use host::{busy_now, CpuSnapshot};
use logs::{commit_log_note, committed_flows, reconciles};
use report::{Outcome, Report};
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// What a run compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    /// ctsyncd, driven by conntrackd's primary-backup.sh: the new primary commits.
    CtsyncCommit,
    /// ctsyncd with `[sync] warm_standby = true`, driven by ctsync-notify.sh.
    CtsyncWarm,
    /// conntrackd 1.4.7, driven by primary-backup.sh.
    Conntrackd,
}

impl System {
    pub const ALL: [System; 3] = [System::CtsyncCommit, System::CtsyncWarm, System::Conntrackd];

    pub fn name(self) -> &'static str {
        match self {
            System::CtsyncCommit => "ctsync-commit",
            System::CtsyncWarm => "ctsync-warm",
            System::Conntrackd => "conntrackd",
        }
    }

    /// For column headers.
    pub fn short(self) -> &'static str {
        match self {
            System::CtsyncCommit => "commit",
            System::CtsyncWarm => "warm",
            System::Conntrackd => "conntrackd",
        }
    }

    pub fn parse(s: &str) -> Option<System> {
        System::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Whether the new primary's commit writes the peer's flows at the
    /// failure (warm standby's are in its kernel already): only then has
    /// it a rate to set beside the kernel's ceiling.
    pub fn commits_at_failover(self) -> bool {
        self != System::CtsyncWarm
    }

    pub fn mode(self) -> Mode {
        match self {
            System::CtsyncCommit => Mode::Commit,
            System::CtsyncWarm => Mode::WarmStandby,
            System::Conntrackd => Mode::Conntrackd,
        }
    }
}

/// The failure's name on the command line.
pub fn failure_name(f: Failure) -> &'static str {
    match f {
        Failure::Crash => "crash",
        Failure::LinkLoss => "links",
        Failure::Graceful => "graceful",
    }
}

fn parse_failure(s: &str) -> Option<Failure> {
    [Failure::Crash, Failure::LinkLoss, Failure::Graceful]
        .into_iter()
        .find(|f| failure_name(*f) == s)
}

/// What a run does.
#[derive(Clone, Debug)]
pub struct Config {
    /// The filler sizes, one lab per N and system.
    pub flows: Vec<usize>,
    pub failure: Failure,
    pub systems: Vec<System>,
    /// ctsyncd's `[kernel] reconcile_interval_s` in the lab.
    pub reconcile_interval_s: u32,
    /// Set nf_conntrack_buckets for the run (global; put back afterwards).
    /// nf_conntrack_max is raised to 2.5 × (N + test flows) either way.
    pub tune_buckets: bool,
    /// Traffic keeps running this long after every live flow resumed.
    pub tail: Duration,
    /// Before each run, wait at most this long for the machine to go idle
    /// (the kernel frees the previous lab's flows in the background).
    pub settle: Duration,
    /// Measure the kernel's own ceiling for each N's filler flows first.
    pub ceiling: bool,
    /// fwb joins this long after the live traffic started (a standby that
    /// comes up late, after a reboot say): fwa's table re-reads have then
    /// already found the live flows refreshed before fwb's first bulk.
    pub standby_delay: Duration,
    /// Diagnosis: the lab starts fwb's daemon in the foreground (logging
    /// to fwb/daemon.log, which is kept) before fwb's keepalived, instead
    /// of its notify script starting it in the background; the commit's
    /// steps are then read from ctsyncd's log.
    pub fwb_log: bool,
}

impl Config {
    pub fn full(flows: Vec<usize>) -> Config {
        Config {
            flows,
            failure: Failure::Crash,
            systems: System::ALL.to_vec(),
            reconcile_interval_s: 10,
            tune_buckets: true,
            tail: Duration::from_secs(3),
            settle: Duration::from_secs(60),
            ceiling: true,
            standby_delay: Duration::ZERO,
            fwb_log: false,
        }
    }

    /// A quick run that proves every step works; leaves the buckets alone
    /// and re-reads fwa's table more often, so the wait for it is short.
    pub fn smoke(n: usize) -> Config {
        Config {
            reconcile_interval_s: 3,
            tune_buckets: false,
            tail: Duration::from_secs(2),
            settle: Duration::from_secs(5),
            ..Config::full(vec![n])
        }
    }
}

/// The command line.
#[derive(Clone, Debug)]
pub struct Cli {
    pub config: Config,
    pub json: PathBuf,
}

pub const USAGE: &str = "usage: integration/bench/failover [--flows N[,N...]] [--failure crash|links|graceful]\n\
    \x20      [--systems ctsync-commit,ctsync-warm,conntrackd] [--json PATH] [--standby-delay S] [--fwb-log]\n\
    \x20 --flows LIST       idle filler flows on fwa, one run per N (default 100000,1000000)\n\
    \x20 --failure F        what happens to fwa: crash (default), links (LAN and WAN down),\n\
    \x20                    graceful (keepalived stops)\n\
    \x20 --systems LIST     which systems to run (default all three)\n\
    \x20 --json PATH        where to write the JSON (default target/bench/failover.json)\n\
    \x20 --standby-delay S  fwb joins S seconds after the live traffic started (default 0)\n\
    \x20 --fwb-log          diagnosis: the lab starts fwb's daemon in the foreground, its log kept,\n\
    \x20                    instead of fwb's notify script; notes what ctsyncd logged of the commit";

impl Cli {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Cli, String> {
        let mut config = Config::full(vec![100_000, 1_000_000]);
        let mut json = PathBuf::from("target/bench/failover.json");
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                // cargo bench appends --bench to a harness-less target's arguments.
                "--bench" => {}
                "--flows" => {
                    let list = value("--flows")?;
                    let mut flows = Vec::new();
                    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let digits = item.replace('_', "");
                        let n = digits
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=4_000_000).contains(n))
                            .ok_or_else(|| {
                                format!("--flows {item}: not a number from 1 to 4,000,000")
                            })?;
                        flows.push(n);
                    }
                    if flows.is_empty() {
                        return Err("--flows: empty list".into());
                    }
                    config.flows = flows;
                }
                "--failure" => {
                    let f = value("--failure")?;
                    config.failure = parse_failure(&f)
                        .ok_or_else(|| format!("--failure {f:?}: one of crash, links, graceful"))?;
                }
                "--systems" => {
                    let list = value("--systems")?;
                    let mut systems = Vec::new();
                    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let s = System::parse(name)
                            .ok_or_else(|| format!("--systems: unknown system {name:?}"))?;
                        if !systems.contains(&s) {
                            systems.push(s);
                        }
                    }
                    if systems.is_empty() {
                        return Err("--systems: empty list".into());
                    }
                    systems.sort();
                    config.systems = systems;
                }
                "--json" => json = PathBuf::from(value("--json")?),
                "--fwb-log" => config.fwb_log = true,
                "--standby-delay" => {
                    let v = value("--standby-delay")?;
                    let secs = v
                        .parse::<u64>()
                        .ok()
                        .filter(|s| *s <= 600)
                        .ok_or_else(|| format!("--standby-delay {v}: seconds, 0 to 600"))?;
                    config.standby_delay = Duration::from_secs(secs);
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Cli { config, json })
    }
}

pub fn progress(msg: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!(
        "[failover-bench {:7.1}s] {msg}",
        start.elapsed().as_secs_f64()
    );
}

/// The live test flows of one lab (the traffic's default spec).
fn spec(lab: &FailoverLab) -> Spec {
    let servers: Vec<IpAddr> = [crate::failover::SERVER4, crate::failover::SERVER6]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let mut spec = Spec::new(&lab.cl, &lab.sv, servers);
    // The benchmark stops the traffic itself; this only bounds a run that
    // went wrong.
    spec.max_duration = Duration::from_secs(1200);
    spec
}

/// How many test flows `spec` sets up.
fn test_flow_count(spec: &Spec) -> usize {
    spec.servers.len() * (spec.tcp_echo + spec.tcp_push + spec.idle + spec.udp_echo + spec.udp_push)
}

/// How long a daemon may take to cache or replicate N flows: 60 s plus
/// 200 µs a flow.
fn sync_bound(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_micros(200 * n as u64)
}

/// How long a commit of N flows may take: 60 s plus 150 µs a flow.
fn commit_bound(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_micros(150 * n as u64)
}

/// Every live flow must have resumed within this after fwb's kernel is
/// complete (TCP's retransmission timer may have backed off to seconds).
const RESUME_BOUND: Duration = Duration::from_secs(70);
/// TCP and UDP flows count as carried on with at least this many records
/// after the new primary's MASTER (as the failover tests demand).
const MIN_RECORDS_AFTER: usize = 20;

fn wall_diff(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Poll every 100 ms until `check` holds or `bound` passes.
fn poll(bound: Duration, check: impl FnMut() -> bool) -> bool {
    wait_until(bound, check)
}

/// How a watched count went.
struct Watched {
    reached: bool,
    last: u64,
    /// (seconds since the watch began, count), every 10 s.
    history: Vec<(f64, u64)>,
}

impl Watched {
    fn describe(&self) -> String {
        self.history
            .iter()
            .map(|(t, c)| format!("{c} at {t:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Poll `count` every 100 ms until it reaches `target`, `bound` passes, or
/// it has not moved for `stall`; log it every 10 s.
fn watch(
    what: &str,
    target: u64,
    bound: Duration,
    stall: Duration,
    say: &dyn Fn(String),
    mut count: impl FnMut() -> Option<u64>,
) -> Watched {
    let started = Instant::now();
    let mut w = Watched {
        reached: false,
        last: 0,
        history: Vec::new(),
    };
    let mut moved = Instant::now();
    let mut next_log = Duration::from_secs(10);
    loop {
        let c = count().unwrap_or(w.last);
        if c != w.last {
            moved = Instant::now();
            w.last = c;
        }
        if c >= target {
            w.reached = true;
            return w;
        }
        if started.elapsed() >= next_log {
            w.history.push((started.elapsed().as_secs_f64(), c));
            say(format!("{what}: {c} of {target}"));
            next_log += Duration::from_secs(10);
        }
        if started.elapsed() >= bound || moved.elapsed() >= stall {
            w.history.push((started.elapsed().as_secs_f64(), c));
            return w;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flows in namespace `ns`'s kernel table (`conntrack -C`).
fn kernel_count(ns: &str) -> Option<u64> {
    let out = run_cmd("ip", &["netns", "exec", ns, "conntrack", "-C"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The first line of `fw`'s timing log at or after `t0` for `flag`, `what`
/// ("start" or "end").
fn timing_after(timing: &[Timing], t0: SystemTime, what: &str, flag: &str) -> Option<SystemTime> {
    timing
        .iter()
        .find(|t| t.wall >= t0 && t.what == what && t.flag() == Some(flag))
        .map(|t| t.wall)
}

/// The benchmark: every N, every system; one report.
pub fn run(cfg: &Config) -> Result<Report, String> {
    let started = Instant::now();
    host::save_sysctls();
    let max_n = cfg.flows.iter().copied().max().unwrap_or(0);
    // The test flows are fixed by the traffic's default spec: 2 × 108.
    let tests = 216;
    let total = (max_n + tests) as u64;
    // Both firewalls' tables live in the one global table: fwa's N, fwb's
    // N (warm standby, or after the commit), and headroom.
    let want_max = (total * 5).div_ceil(2);
    let buckets = cfg
        .tune_buckets
        .then(|| (2 * total).next_power_of_two().clamp(262_144, 4_194_304));
    let _sysctls = ConntrackSysctls::apply(buckets, want_max)
        .map_err(|e| format!("conntrack sysctls: {e}"))?;
    let machine = Machine::probe();
    progress(&format!(
        "{} cores ({}), kernel {}; nf_conntrack_buckets {}, nf_conntrack_max {}; failure {}",
        machine.nproc,
        machine.cpu,
        machine.kernel,
        machine.nf_conntrack_buckets,
        machine.nf_conntrack_max,
        failure_name(cfg.failure)
    ));
    let mut outcomes = Vec::new();
    let mut ceilings = Vec::new();
    for &n in &cfg.flows {
        let ceiling = cfg.ceiling.then(|| measure_ceiling(cfg, n));
        if let Some(c) = &ceiling {
            ceilings.push(c.clone());
        }
        for &sys in &cfg.systems {
            // The kernel frees the previous lab's flows in the background.
            let waited = settle(cfg.settle);
            let mut out = Outcome::new(n, sys);
            if waited >= cfg.settle {
                let busy = busy_now();
                progress(&format!(
                    "=== N = {n}, {}: the machine is still {:.0}% busy after {:.0} s; going on ===",
                    sys.name(),
                    busy * 100.0,
                    waited.as_secs_f64()
                ));
                out.notes.push(format!(
                    "the run started on a busy machine ({:.0}% of all CPUs busy; something else was running)",
                    busy * 100.0
                ));
            } else {
                progress(&format!(
                    "=== N = {n}, {}: machine idle after {:.1} s ===",
                    sys.name(),
                    waited.as_secs_f64()
                ));
            }
            if let Some(c) = ceiling.as_ref().filter(|_| sys.commits_at_failover()) {
                out.ceiling_before = ceiling_beside_lab(cfg, c, "before", &mut out);
                // The kernel frees that namespace's flows in the background.
                settle(cfg.settle);
            }
            let result = catch_unwind(AssertUnwindSafe(|| run_one(cfg, n, sys, &mut out)));
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => out.error = Some(e),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panicked".into());
                    // The first line is enough for the table; the rest
                    // (diagnostics) was printed when it panicked.
                    out.error = Some(msg.lines().next().unwrap_or("panicked").to_string());
                }
            }
            if let Some(e) = &out.error {
                progress(&format!("N = {n}, {}: FAILED: {e}", sys.name()));
            }
            if let Some(c) = ceiling.as_ref().filter(|_| out.commit_rate().is_some()) {
                out.ceiling_after = ceiling_beside_lab(cfg, c, "after", &mut out);
            }
            outcomes.push(out);
        }
    }
    Ok(Report {
        machine,
        failure: failure_name(cfg.failure),
        flows: cfg.flows.clone(),
        systems: cfg.systems.clone(),
        outcomes,
        ceilings,
        notes: Vec::new(),
        took_s: started.elapsed().as_secs_f64(),
    })
}

/// The N filler flows the labs write into fwa (and the ceiling measures).
fn filler(n: usize) -> Result<Vec<Flow>, String> {
    let vip = |s: &str| s.parse::<IpAddr>().map_err(|e| format!("VIP {s}: {e}"));
    let (vip4, vip6) = (
        vip(crate::failover::VIP4_WAN)?,
        vip(crate::failover::VIP6_WAN)?,
    );
    Ok(kernel::filler_flows(n, vip4, vip6))
}

/// The kernel's ceiling for N filler flows, one socket and one per core.
fn measure_ceiling(cfg: &Config, n: usize) -> report::Ceiling {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut c = report::Ceiling {
        n,
        cores,
        ..report::Ceiling::default()
    };
    let flows = match filler(n) {
        Ok(flows) => flows,
        Err(e) => {
            c.error = Some(e);
            return c;
        }
    };
    for sockets in [1, cores] {
        settle(cfg.settle);
        match kernel::ceiling(&flows, sockets, crate::failover::RULESET) {
            Ok(rate) => {
                progress(&format!(
                    "N = {n}: the kernel's ceiling with {sockets} writer socket(s): {rate:.0} flows/s"
                ));
                if sockets == 1 {
                    c.one_socket = Some(rate);
                } else {
                    c.per_core = Some(rate);
                }
            }
            Err(e) => {
                progress(&format!(
                    "N = {n}: ceiling with {sockets} socket(s) failed: {e}"
                ));
                c.error = Some(e);
            }
        }
        if cores == 1 {
            break;
        }
    }
    c
}

/// `measure_ceiling_again` for `out`'s lab, right `when` ("before" or
/// "after") it: the rate, said as progress, or a note why there is none.
fn ceiling_beside_lab(
    cfg: &Config,
    start: &report::Ceiling,
    when: &str,
    out: &mut Outcome,
) -> Option<f64> {
    match measure_ceiling_again(cfg, out.n, start) {
        Ok(rate) => {
            progress(&format!(
                "N = {}, {}: the kernel's ceiling right {when} the lab: {rate:.0} flows/s",
                out.n, out.system
            ));
            Some(rate)
        }
        Err(e) => {
            out.notes
                .push(format!("the ceiling {when} the lab failed: {e}"));
            None
        }
    }
}

/// The faster shape of `start` once more, the machine idle again, right
/// before a lab or right after it: what the kernel took about the moment
/// of that lab's commit.
fn measure_ceiling_again(cfg: &Config, n: usize, start: &report::Ceiling) -> Result<f64, String> {
    let (sockets, _) = start
        .best_shape()
        .ok_or("no ceiling at the start of the run")?;
    let flows = filler(n)?;
    settle(cfg.settle);
    kernel::ceiling(&flows, sockets, crate::failover::RULESET)
}

/// Write the report's JSON to `path` (creating its directory).
pub fn write_json(report: &Report, path: &std::path::Path) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report.to_json())
        .map_err(|e| format!("encode the JSON: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))
}

/// One lab, one system, one N: fills `out` as it goes.
fn run_one(cfg: &Config, n: usize, sys: System, out: &mut Outcome) -> Result<(), String> {
    let label = format!("N = {n}, {}", sys.name());
    let say = |msg: String| progress(&format!("{label}: {msg}"));
    let mut lab = FailoverLab::new(
        sys.mode(),
        Options {
            reconcile_interval_s: cfg.reconcile_interval_s,
            capacity: n + 4096,
            ..Options::default()
        },
    );
    say(format!("lab {} in {}", lab.id, lab.dir.display()));
    let advert = u64::from(lab.opts.advert_int);
    let vrrp_start = Duration::from_secs(10 + 4 * advert);

    // fwa: daemon, keepalived; MASTER on its own; its start-up -t passes.
    lab.start_daemon(0);
    lab.start_keepalived(0);
    lab.wait_event(0, 0, "GROUP G1 MASTER", vrrp_start);
    if !poll(Duration::from_secs(5), || lab.holds_vips(0)) {
        return Err(format!(
            "fwa says MASTER but holds no VIPs{}",
            lab.a.diagnostics()
        ));
    }
    lab.wait_backup_done(0, 0, Duration::from_secs(10));

    // The busy table: N idle flows in fwa's kernel, cached by its daemon.
    let took = kernel::write_flows(&lab.a.ns, filler(n)?)?;
    out.fill_s = Some(took.as_secs_f64());
    let filled = Instant::now();
    let cached = poll(sync_bound(n), || {
        lab.a
            .cache_active("internal")
            .is_some_and(|c| c >= n as u64)
    });
    if !cached {
        return Err(format!(
            "fwa's daemon cached {:?} of the {n} filler flows within {:?}",
            lab.a.cache_active("internal"),
            sync_bound(n)
        ));
    }
    out.a_cached_s = Some(filled.elapsed().as_secs_f64());
    say(format!(
        "{n} filler flows written in {:.2} s, cached by fwa's daemon {:.2} s later",
        took.as_secs_f64(),
        filled.elapsed().as_secs_f64()
    ));

    // Live traffic through fwa.
    let spec = spec(&lab);
    let traffic = Traffic::start(&spec)
        .map_err(|e| format!("traffic did not start: {e}{}", lab.a.diagnostics()))?;
    let flows: Vec<FlowInfo> = traffic.flows().to_vec();
    out.test_flows = flows.len();
    if flows.len() != test_flow_count(&spec) {
        return Err(format!(
            "{} of {} test flows set up",
            flows.len(),
            test_flow_count(&spec)
        ));
    }
    let target = (n + flows.len()) as u64;
    if !cfg.standby_delay.is_zero() {
        say(format!(
            "fwb joins {:.0} s after the traffic started",
            cfg.standby_delay.as_secs_f64()
        ));
        std::thread::sleep(cfg.standby_delay);
    }

    // fwb: keepalived only; its notify script starts the daemon, -t, -n.
    let b_start = Instant::now();
    if cfg.fwb_log {
        lab.start_daemon(1);
        lab.keep = true;
    }
    lab.start_keepalived(1);
    lab.wait_event(1, 0, "GROUP G1 BACKUP", vrrp_start);
    if !poll(Duration::from_secs(20), || lab.b.daemon_answers()) {
        return Err(format!(
            "fwb's notify script did not start the daemon{}",
            lab.b.diagnostics()
        ));
    }
    let external = |lab: &FailoverLab| lab.b.cache_active("external").unwrap_or(0);
    let w = watch(
        "fwb's cache",
        target,
        sync_bound(n),
        Duration::from_secs(60),
        &say,
        || lab.b.cache_active("external"),
    );
    if w.reached {
        out.b_external_s = Some(b_start.elapsed().as_secs_f64());
        say(format!(
            "fwb's cache holds all {target} flows {:.2} s after its keepalived started",
            b_start.elapsed().as_secs_f64()
        ));
    } else {
        let note = format!(
            "fwb's cache never held every flow: {} of {target} {:.0} s after fwb started, \
             and it had stopped growing (counts: {})",
            w.last,
            b_start.elapsed().as_secs_f64(),
            w.describe()
        );
        say(note.clone());
        out.notes.push(note);
    }
    lab.wait_backup_done(1, 0, Duration::from_secs(30));
    if sys == System::CtsyncWarm {
        if poll(sync_bound(n), || {
            kernel_count(&lab.b.ns).is_some_and(|c| c >= target)
        }) {
            out.b_mirror_s = Some(b_start.elapsed().as_secs_f64());
        } else {
            out.notes.push(format!(
                "warm standby: fwb's kernel held {:?} of {target} flows before the failure",
                kernel_count(&lab.b.ns)
            ));
        }
    }

    // Let a table re-read on fwa tell fwb which flows are live (ctsyncd),
    // or give conntrackd the same time.
    let interval = Duration::from_secs(u64::from(cfg.reconcile_interval_s));
    let margin = Duration::from_secs(1) + Duration::from_micros(2 * n as u64);
    if sys.mode() == Mode::Conntrackd {
        std::thread::sleep(interval + margin);
    } else {
        // A re-read sees a flow as refreshed only once its timeout ends
        // more than ctsyncd's slack (10 s) later than when last stamped,
        // so the first re-read after the traffic started may find none.
        let before = reconciles(&lab.a).len();
        let bound = 3 * interval + Duration::from_secs(30) + Duration::from_micros(20 * n as u64);
        let found = poll(bound, || {
            reconciles(&lab.a)
                .iter()
                .skip(before)
                .any(|(_, refreshed)| *refreshed > 0)
        });
        for (report, _) in reconciles(&lab.a).iter().skip(before) {
            say(format!("fwa re-read its table: {report}"));
        }
        if found {
            std::thread::sleep(margin);
        } else {
            out.notes.push(format!(
                "no table re-read on fwa found a flow refreshed by traffic within {bound:?}"
            ));
        }
    }
    if cfg.failure == Failure::Crash {
        // A crashed machine's table goes with it; in the lab fwa's N
        // flows would stay in the kernel's one conntrack hash table and
        // slow fwb's inserts. Freeze fwa's daemon (the crash kills it
        // before it could read the deletes) and delete the filler from
        // fwa's kernel; live traffic keeps flowing through fwa.
        let pid = lab
            .a
            .daemon
            .as_ref()
            .map(|c| c.id())
            .ok_or("fwa's daemon is not the lab's child")?;
        let pid = i32::try_from(pid).map_err(|_| format!("pid {pid}"))?;
        // SAFETY: kill(2) on the daemon the lab started and has not reaped.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let started = Instant::now();
        let keys: Vec<WriteOp> = filler(n)?
            .iter()
            .map(|f| WriteOp::Delete(f.key()))
            .collect();
        kernel::apply(&lab.a.ns, keys)?;
        let took = started.elapsed().as_secs_f64();
        out.crash_prep_s = Some(took);
        let left = kernel_count(&lab.a.ns);
        // The kernel frees them in the background.
        let waited = settle(Duration::from_secs(15));
        say(format!(
            "fwa's daemon frozen, its {n} filler flows deleted from its kernel in {took:.2} s \
             ({left:?} flows left there); machine idle {:.1} s later",
            waited.as_secs_f64()
        ));
    }
    // Still complete?
    let ext_now = external(&lab);
    out.b_external_at_failure = Some(ext_now);
    if ext_now < target {
        out.notes.push(format!(
            "at the failure fwb's cache held {ext_now} of {target} flows"
        ));
    }
    out.b_kernel_at_failure = kernel_count(&lab.b.ns);
    let commits_before = committed_flows(&lab.b);

    // Nothing else may run on the machine while the failover is measured.
    let snapshot = CpuSnapshot::take(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let busy = snapshot.busy_since(0.1);
    if !busy.is_empty() {
        let list = CpuSnapshot::describe(&busy);
        say(format!("WARNING: other processes are busy: {list}"));
        out.notes.push(format!(
            "other processes were busy right before the failure, so its figures are suspect: {list}"
        ));
    }
    let snapshot = CpuSnapshot::take(&lab);

    // The failure.
    let poller = kernel::CountPoller::start(&lab.b.ns, target, commit_bound(n) + vrrp_start)?;
    let skip = lab.b.events().len();
    say(format!(
        "injecting {} (fwb's cache {ext_now}, fwb's kernel {:?})",
        failure_name(cfg.failure),
        out.b_kernel_at_failure
    ));
    let t0 = lab.inject(0, cfg.failure);
    let (_, master) = lab.wait_event(1, skip, "GROUP G1 MASTER", vrrp_start);
    out.detection_s = Some(wall_diff(master.wall, t0));
    say(format!(
        "fwb MASTER {:.3} s after the failure",
        wall_diff(master.wall, t0)
    ));
    let committed = poll(commit_bound(n), || {
        timing_after(&lab.b.timing(), t0, "end", "-c").is_some()
    });
    if !committed {
        out.notes.push(format!(
            "fwb's -c had not returned {:?} after the failure",
            commit_bound(n)
        ));
    }
    // Once the commit has returned, a count that stops growing will not
    // reach the target any more.
    let left = commit_bound(n).saturating_sub(
        SystemTime::now()
            .duration_since(t0)
            .unwrap_or(Duration::ZERO),
    );
    let stall = if committed {
        Duration::from_secs(5)
    } else {
        left
    };
    watch("fwb's kernel", target, left, stall, &say, || {
        Some(if poller.reached().is_some() {
            target
        } else {
            poller.last()
        })
    });
    let last_count = poller.last();
    let seen = poller.finish();
    let busy = snapshot.busy_since(0.1);
    if !busy.is_empty() {
        let list = CpuSnapshot::describe(&busy);
        say(format!(
            "WARNING: other processes were busy during the failover: {list}"
        ));
        out.notes.push(format!(
            "other processes were busy between the failure and fwb's complete kernel, so its figures are suspect: {list}"
        ));
    }
    out.kernel_complete_s = seen.reached.map(|r| wall_diff(r, t0).max(0.0));
    if seen.reached.is_none() {
        out.notes.push(format!(
            "fwb's kernel held at most {} of {target} flows (last {last_count}){}",
            seen.max,
            seen.error
                .as_ref()
                .map_or(String::new(), |e| format!("; poller: {e}"))
        ));
    }
    say(format!(
        "fwb's kernel {}",
        out.kernel_complete_s.map_or_else(
            || "never complete".to_string(),
            |s| format!("complete {s:.3} s after the failure")
        )
    ));

    // Every live flow must resume; then the idle connections ping once.
    let resume_from = traffic.wall_to_us(seen.reached.unwrap_or(master.wall).max(master.wall));
    let live: Vec<u32> = flows
        .iter()
        .filter(|f| f.kind != Kind::TcpIdle)
        .map(|f| f.id)
        .collect();
    let resumed = poll(RESUME_BOUND, || {
        live.iter().all(|&id| {
            traffic
                .client_last_rx_us(id)
                .is_some_and(|t| t > resume_from)
        })
    });
    if !resumed {
        say("not every live flow resumed".into());
    }
    std::thread::sleep(cfg.tail);
    let ping_at = traffic.now_us();
    let round = traffic.ping_idle();
    let idle: Vec<u32> = flows
        .iter()
        .filter(|f| f.kind == Kind::TcpIdle)
        .map(|f| f.id)
        .collect();
    poll(spec.ping_timeout + Duration::from_secs(1), || {
        idle.iter()
            .all(|&id| traffic.client_last_rx_us(id).is_some_and(|t| t > ping_at))
    });
    let end = SystemTime::now();
    let tr = traffic.stop();

    // The commit, as the timing wrapper saw it.
    let timing = lab.b.timing();
    let c_start = timing_after(&timing, t0, "start", "-c");
    let c_end = timing_after(&timing, t0, "end", "-c");
    if let (Some(a), Some(b)) = (c_start, c_end) {
        out.commit_s = Some(wall_diff(b, a));
        out.commit_start_after_master_s = Some(wall_diff(a, master.wall));
    }
    out.commit_wrote = match (commits_before, committed_flows(&lab.b)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    if let (true, Some(a)) = (cfg.fwb_log && sys.mode() != Mode::Conntrackd, c_start) {
        let note = commit_log_note(&lab.b, a);
        say(note.clone());
        out.notes.push(note);
    }

    // The verdicts.
    let master_us = tr.wall_to_us(master.wall);
    let t0_us = tr.wall_to_us(t0);
    let end_us = tr.wall_to_us(end);
    let (mut tcp_ok, mut tcp_all, mut push_ok, mut push_all, mut echo_ok, mut echo_all) =
        (0, 0, 0, 0, 0, 0);
    let mut blackout: Option<u64> = None;
    for f in &tr.flows {
        let clean = f.errors().is_empty() && f.client.bad + f.server.bad == 0;
        match f.info.kind {
            Kind::TcpEcho | Kind::TcpPush => {
                tcp_all += 1;
                let both_ways =
                    f.info.kind == Kind::TcpPush || f.server.after(master_us) >= MIN_RECORDS_AFTER;
                if clean && f.client.after(master_us) >= MIN_RECORDS_AFTER && both_ways {
                    tcp_ok += 1;
                }
            }
            Kind::TcpIdle => {
                tcp_all += 1;
                let pinged = f
                    .pings
                    .iter()
                    .any(|p| p.round == round && p.echo_us.is_some());
                if clean && pinged {
                    tcp_ok += 1;
                }
            }
            Kind::UdpPush => {
                push_all += 1;
                if f.client.after(master_us) >= MIN_RECORDS_AFTER {
                    push_ok += 1;
                }
                // From a second before the failure, so the gap starts at
                // the last datagram that got through.
                let (gap, _) = f.client.max_gap(t0_us.saturating_sub(1_000_000), end_us);
                blackout = Some(blackout.map_or(gap, |b| b.max(gap)));
                out.stream_gaps_s
                    .push((f.info.kind.name().to_string(), gap as f64 / 1e6));
            }
            Kind::UdpEcho => {
                echo_all += 1;
                let (gap, _) = f.client.max_gap(t0_us.saturating_sub(1_000_000), end_us);
                out.stream_gaps_s
                    .push((f.info.kind.name().to_string(), gap as f64 / 1e6));
                let same_after = f.server.after(master_us);
                let last_same = f.server.received.last().copied().unwrap_or(0);
                let last_foreign = f
                    .server
                    .foreign
                    .iter()
                    .filter(|(t, _)| *t >= t0_us)
                    .map(|(t, _)| *t)
                    .max()
                    .unwrap_or(0);
                if same_after >= MIN_RECORDS_AFTER && last_foreign <= last_same {
                    echo_ok += 1;
                }
            }
        }
    }
    out.tcp_survived = Some(tcp_ok);
    out.tcp_total = Some(tcp_all);
    out.udp_push_resumed = Some(push_ok);
    out.udp_push_total = Some(push_all);
    out.udp_echo_kept = Some(echo_ok);
    out.udp_echo_total = Some(echo_all);
    out.blackout_s = blackout.map(|us| us as f64 / 1e6);
    // TCP echo: the longest wait for an echo (the client's side).
    for f in tr.flows.iter().filter(|f| f.info.kind == Kind::TcpEcho) {
        let (gap, _) = f.client.max_gap(t0_us.saturating_sub(1_000_000), end_us);
        out.stream_gaps_s
            .push((f.info.kind.name().to_string(), gap as f64 / 1e6));
    }
    say(format!(
        "longest gap per stream (s): {}",
        out.stream_gaps_s
            .iter()
            .map(|(k, g)| format!("{k} {g:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    say(format!(
        "TCP {tcp_ok}/{tcp_all} survived, UDP push {push_ok}/{push_all} resumed, \
         UDP echo {echo_ok}/{echo_all} kept their binding; detection {:.3} s, \
         blackout {}, -c {}",
        out.detection_s.unwrap_or(f64::NAN),
        out.blackout_s
            .map_or_else(|| "n/a".to_string(), |b| format!("{b:.3} s")),
        out.commit_s
            .map_or_else(|| "n/a".to_string(), |c| format!("{c:.3} s"))
    ));
    if tcp_ok != tcp_all || push_ok != push_all {
        // Keep the lab's files to look at.
        lab.keep = true;
        let t = tr.table(master_us, t0_us.saturating_sub(1_000_000), end_us);
        eprintln!("{t}{}{}", lab.a.diagnostics(), lab.b.diagnostics());
    }
    Ok(())
}
