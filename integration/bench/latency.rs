//! Replication latency: from a flow's creation in A's kernel to its
//! arrival in B's external cache (or, with warm standby, in B's kernel),
//! under a steady rate and during a burst.
//!
//! Method: A's flows are created in batches whose start times are logged
//! (a batch's flows exist once its `send` returns). A sampler reads B's
//! count about every millisecond: the external cache through the control
//! socket with conntrackd's native statistics request (code 21, which
//! both daemons answer with the same text), B's kernel through
//! `nf_conntrack_count` read in B's namespace. The m-th flow created is
//! taken to have arrived at the first sample that counts m + 1 flows more
//! than before the phase. Only counts are observed, so flows are assumed
//! to arrive in the order they were made; the figures are upper bounds
//! (a sample's interval and the request's own time are included, and a
//! batch's flows are all dated at its start). A flow that never arrives
//! within the bound is counted as missing.
//!
//! Must not: know which daemon runs (callers give the socket or the
//! namespace).

use super::conntrackd::parse_active;
use super::BenchError;
use crate::lab::enter_netns;
use ctsync::flow::Flow;
use ctsync::kernel::write::{CreateOptions, Writer};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the sampler reads.
#[derive(Clone, Debug)]
pub enum Probe {
    /// B's external cache, through its control socket.
    External(PathBuf),
    /// B's kernel table: `nf_conntrack_count` in namespace B.
    Kernel(String),
}

/// One phase's latencies, milliseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latencies {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Flows that had not arrived when sampling stopped.
    pub missing: u64,
}

impl Latencies {
    /// Each figure's median over `runs`; `None` for no run.
    pub fn median(runs: impl Iterator<Item = Latencies>) -> Option<Latencies> {
        let runs: Vec<Latencies> = runs.collect();
        if runs.is_empty() {
            return None;
        }
        let m = |get: fn(&Latencies) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(get).collect();
            super::report::median(&mut v)
        };
        Some(Latencies {
            p50_ms: m(|l| l.p50_ms),
            p99_ms: m(|l| l.p99_ms),
            max_ms: m(|l| l.max_ms),
            missing: runs.iter().map(|l| l.missing).max().unwrap_or(0),
        })
    }
}

/// How A's flows are made: `per_batch` flows a batch, one batch every
/// `interval` (none: as fast as the kernel takes them).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub per_batch: usize,
    pub interval: Option<Duration>,
}

impl Pace {
    /// `rate` flows a second in batches a millisecond apart.
    pub fn steady(rate: usize) -> Pace {
        Pace {
            per_batch: (rate / 1000).max(1),
            interval: Some(Duration::from_millis(1)),
        }
    }

    /// Back to back, 2,048 flows a send.
    pub fn burst() -> Pace {
        Pace {
            per_batch: 2048,
            interval: None,
        }
    }
}

/// Create `flows` in namespace `ns` at `pace`; each batch's start time.
fn paced_create(ns: &str, flows: Vec<Flow>, pace: Pace) -> Result<Vec<Instant>, BenchError> {
    crate::lab::in_netns(ns, move || {
        let mut writer = Writer::open().map_err(|e| BenchError::Kernel(e.to_string()))?;
        let opts = CreateOptions::default();
        let started = Instant::now();
        let mut starts = Vec::with_capacity(flows.len() / pace.per_batch + 1);
        for (k, batch) in flows.chunks(pace.per_batch).enumerate() {
            if let Some(every) = pace.interval {
                let due = started + every * k as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            starts.push(Instant::now());
            let report = writer.create_all(batch, &opts);
            if report.failed > 0 {
                return Err(BenchError::Kernel(format!(
                    "latency writer: {} creates failed: {:?}",
                    report.failed, report.first_errors
                )));
            }
        }
        Ok(starts)
    })
}

/// B's external cache count, asked through its control socket.
fn external_count(socket: &std::path::Path) -> Result<u64, BenchError> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| BenchError::Command(format!("{}: {e}", socket.display())))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| BenchError::Io(e.to_string()))?;
    // conntrackd's native STATS request.
    s.write_all(&21i32.to_ne_bytes())
        .map_err(|e| BenchError::Io(e.to_string()))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| BenchError::Io(e.to_string()))?;
    parse_active(&text, "external")
}

/// The kernel table's count in the calling thread's namespace.
fn kernel_count_here() -> Result<u64, BenchError> {
    let text = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .map_err(|e| BenchError::Io(format!("nf_conntrack_count: {e}")))?;
    text.trim()
        .parse()
        .map_err(|_| BenchError::Parse(format!("nf_conntrack_count: {text:?}")))
}

/// Sample `probe` about every millisecond until `stop`; (time, count).
fn sample(probe: Probe, stop: Arc<AtomicBool>) -> Result<Vec<(Instant, u64)>, BenchError> {
    let read: Box<dyn Fn() -> Result<u64, BenchError>> = match probe {
        Probe::External(socket) => Box::new(move || external_count(&socket)),
        Probe::Kernel(ns) => {
            enter_netns(&ns);
            Box::new(kernel_count_here)
        }
    };
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let count = read()?;
        samples.push((Instant::now(), count));
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(samples)
}

/// Make `flows` in A's namespace `ns_a` at `pace` while sampling `probe`;
/// sampling stops once every flow arrived or `bound` after the last one
/// was made.
pub fn measure(
    ns_a: &str,
    flows: Vec<Flow>,
    pace: Pace,
    probe: Probe,
    bound: Duration,
) -> Result<Latencies, BenchError> {
    let n = flows.len() as u64;
    let base = count_now(&probe)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let probe = probe.clone();
        std::thread::spawn(move || sample(probe, stop))
    };
    let per_batch = pace.per_batch;
    let made = paced_create(ns_a, flows, pace);
    // Wait for completion through a second reader (the sampler's samples
    // stay its own until the end); what has not arrived by `bound` is
    // counted missing.
    let _ = super::poll_until(bound, || Ok(count_now(&probe)? >= base + n));
    // A few more samples past completion.
    std::thread::sleep(Duration::from_millis(5));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| BenchError::Io("the latency sampler panicked".into()))??;
    Ok(latencies(&made?, per_batch, &samples, base, n))
}

/// `probe`'s count now, from any thread.
fn count_now(probe: &Probe) -> Result<u64, BenchError> {
    match probe {
        Probe::External(socket) => external_count(socket),
        Probe::Kernel(ns) => crate::lab::in_netns(ns, kernel_count_here),
    }
}

/// The latency of each flow from its batch's start to the first sample
/// counting it, by the rule in the module's comment.
pub fn latencies(
    starts: &[Instant],
    per_batch: usize,
    samples: &[(Instant, u64)],
    base: u64,
    n: u64,
) -> Latencies {
    let mut ms = Vec::with_capacity(n as usize);
    let mut s = 0;
    let mut missing = 0;
    for m in 0..n {
        while s < samples.len() && samples[s].1 < base + m + 1 {
            s += 1;
        }
        let Some(&(arrived, _)) = samples.get(s) else {
            missing = n - m;
            break;
        };
        let Some(made) = starts.get(m as usize / per_batch.max(1)) else {
            missing = n - m;
            break;
        };
        ms.push(arrived.saturating_duration_since(*made).as_secs_f64() * 1000.0);
    }
    if ms.is_empty() {
        return Latencies {
            missing,
            ..Latencies::default()
        };
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Latencies {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
        missing,
    }
}
