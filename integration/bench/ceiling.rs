//! The raw writer ceiling: the fastest batched ctnetlink creator the
//! benchmark can build, as the yardstick a failover commit is divided by.
//!
//! Every create request is encoded before the clock starts (the same bytes
//! the commit sends: ctsync's `encode_create`), packed into batches of a
//! given size, and sent by one or more threads, each on its own netlink
//! socket, with nothing read back until the end (the requests carry no ACK
//! flag, so only failures are answered). Each configuration writes the
//! same flows into a namespace of its own with an empty table; the fastest
//! one, its median over repetitions, is the ceiling. The namespace is set
//! up as a syncing firewall's (`nf_conntrack_events` = 1, see [`Events`]).
//! The table must then hold every flow and no socket may have had a
//! failure reported.
//!
//! Must not: know about either daemon, or use the `Writer` the commit uses
//! (its fallbacks and per-send barrier are what the ceiling leaves out).

use super::kernel::{kernel_count, run_in, Netns};
use super::BenchError;
use crate::lab::in_netns;
use ctsync::flow::Flow;
use ctsync::kernel::codec::{encode_create, CreateOptions};
use ctsync::kernel::socket::{messages, NlSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Writer threads (one socket each) and bytes of requests per `send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub threads: usize,
    pub batch_bytes: usize,
}

/// The shapes tried: one to four threads, 64 KiB to 1 MiB batches.
pub const SHAPES: [Shape; 9] = [
    Shape {
        threads: 1,
        batch_bytes: 64 << 10,
    },
    Shape {
        threads: 1,
        batch_bytes: 256 << 10,
    },
    Shape {
        threads: 1,
        batch_bytes: 1 << 20,
    },
    Shape {
        threads: 2,
        batch_bytes: 64 << 10,
    },
    Shape {
        threads: 2,
        batch_bytes: 256 << 10,
    },
    Shape {
        threads: 2,
        batch_bytes: 1 << 20,
    },
    Shape {
        threads: 4,
        batch_bytes: 64 << 10,
    },
    Shape {
        threads: 4,
        batch_bytes: 256 << 10,
    },
    Shape {
        threads: 4,
        batch_bytes: 1 << 20,
    },
];

/// One shape's measurement.
#[derive(Clone, Copy, Debug)]
pub struct CeilingRun {
    pub shape: Shape,
    pub flows_per_s: f64,
}

/// The ceiling: the fastest shape and its median rate, and the same shape
/// without the event extension.
#[derive(Clone, Debug)]
pub struct Ceiling {
    /// The fastest shape and its median rate.
    pub best: CeilingRun,
    /// That shape into a namespace at its default `nf_conntrack_events`.
    pub without_extension: f64,
}

/// Encode `flows` as create requests, `batch_bytes` at most per batch.
fn encode_batches(flows: &[Flow], batch_bytes: usize) -> Vec<Vec<u8>> {
    let opts = CreateOptions::default();
    let mut batches = Vec::new();
    let mut buf = Vec::with_capacity(batch_bytes + 4096);
    for (i, flow) in flows.iter().enumerate() {
        let before = buf.len();
        encode_create(&mut buf, flow, i as u32 + 1, &opts);
        if buf.len() > batch_bytes && before > 0 {
            let tail = buf.split_off(before);
            batches.push(std::mem::replace(&mut buf, tail));
        }
    }
    if !buf.is_empty() {
        batches.push(buf);
    }
    batches
}

/// Failures the kernel queued on `sock` (it answers only failed requests).
fn reported_failures(sock: &NlSocket) -> Result<usize, BenchError> {
    sock.set_nonblocking(true)
        .map_err(|e| BenchError::Kernel(e.to_string()))?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut failures = 0;
    loop {
        match sock.recv(&mut buf) {
            Ok(()) => {
                failures += messages(&buf)
                    .filter_map(Result::ok)
                    .filter(|m| m.error().is_some_and(|e| e != 0))
                    .count()
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(failures),
            Err(e) => return Err(BenchError::Kernel(format!("reading failures: {e}"))),
        }
    }
}

/// Write pre-encoded `batches` into `ns` with `threads` sockets; the time
/// from the first send to the last one's return.
fn write_batches(ns: &str, batches: Vec<Vec<u8>>, threads: usize) -> Result<Duration, BenchError> {
    in_netns(ns, move || {
        let sockets = (0..threads)
            .map(|_| {
                let sock = NlSocket::open().map_err(|e| BenchError::Kernel(e.to_string()))?;
                sock.set_rcvbuf(8 << 20)
                    .map_err(|e| BenchError::Kernel(e.to_string()))?;
                sock.set_cap_ack(true)
                    .map_err(|e| BenchError::Kernel(e.to_string()))?;
                sock.set_sndbuf(4 << 20)
                    .map_err(|e| BenchError::Kernel(e.to_string()))?;
                Ok(sock)
            })
            .collect::<Result<Vec<_>, BenchError>>()?;
        let next = AtomicUsize::new(0);
        let send_all = |sock: &NlSocket| -> Result<(), BenchError> {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else {
                    return Ok(());
                };
                sock.send(batch)
                    .map_err(|e| BenchError::Kernel(format!("send: {e}")))?;
            }
        };
        let started = Instant::now();
        std::thread::scope(|scope| {
            let handles: Vec<_> = sockets
                .iter()
                .map(|s| scope.spawn(|| send_all(s)))
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| BenchError::Kernel("a writer thread panicked".into()))??;
            }
            Ok::<(), BenchError>(())
        })?;
        let took = started.elapsed();
        let mut failures = 0;
        for s in &sockets {
            failures += reported_failures(s)?;
        }
        if failures > 0 {
            return Err(BenchError::Kernel(format!(
                "raw writer: the kernel refused {failures} creates"
            )));
        }
        Ok(took)
    })
}

/// The namespace's `nf_conntrack_events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Events {
    /// 1, as ctsyncd sets it (and a syncing firewall needs it): every new
    /// flow gets the kernel's event extension, so that it reports its
    /// updates and its end later, also when it was written while nobody
    /// listened (as a commit's flows are, ctsyncd pausing its events).
    EveryFlow,
    /// A fresh namespace's 2: without a listener no flow gets the
    /// extension. Cheaper, but such a flow never reports its end.
    OnlyWithListener,
}

/// Measure one shape: `flows` into a fresh namespace.
pub fn measure_shape(
    flows: &[Flow],
    shape: Shape,
    events: Events,
) -> Result<CeilingRun, BenchError> {
    let batches = encode_batches(flows, shape.batch_bytes);
    let ns = Netns::new("raw")?;
    if events == Events::EveryFlow {
        run_in(
            &ns.name,
            "sysctl",
            &["-q", "-w", "net.netfilter.nf_conntrack_events=1"],
        )?;
    }
    let took = write_batches(&ns.name, batches, shape.threads)?;
    let count = kernel_count(&ns.name)?;
    if count != flows.len() as u64 {
        return Err(BenchError::Kernel(format!(
            "raw writer {shape:?}: the table holds {count} of {} flows",
            flows.len()
        )));
    }
    Ok(CeilingRun {
        shape,
        flows_per_s: flows.len() as f64 / took.as_secs_f64(),
    })
}

/// Every shape of [`SHAPES`] once on `flows`, with every flow given the
/// event extension as on a syncing firewall; then the fastest shape
/// `reps` more times: the median of those is the ceiling. `without_extension`
/// is that shape once more in a namespace left at its default
/// (informative: the cost of the extension).
pub fn raw_writer_ceiling(flows: &[Flow], reps: usize) -> Result<Ceiling, BenchError> {
    let mut runs = Vec::new();
    for shape in SHAPES {
        let run = measure_shape(flows, shape, Events::EveryFlow)?;
        super::progress(&format!(
            "raw writer, {} thread(s), {} KiB per send: {:.0} flows/s",
            shape.threads,
            shape.batch_bytes >> 10,
            run.flows_per_s
        ));
        runs.push(run);
        // The namespace's flows go with it; let the kernel free them.
        super::host::settle(Duration::from_secs(10));
    }
    let fastest = runs
        .iter()
        .copied()
        .max_by(|a, b| a.flows_per_s.total_cmp(&b.flows_per_s))
        .ok_or_else(|| BenchError::Kernel("no raw writer shape".into()))?;
    // Its rate from fresh runs alone: the run that chose it was the best
    // of nine noisy ones, which overstates it (by the spread between
    // shapes, several per cent here).
    let mut best = Vec::new();
    for _ in 0..reps.max(1) {
        let rate = measure_shape(flows, fastest.shape, Events::EveryFlow)?.flows_per_s;
        super::progress(&format!(
            "raw writer, fastest shape again: {rate:.0} flows/s"
        ));
        best.push(rate);
        super::host::settle(Duration::from_secs(10));
    }
    let median = super::report::median(&mut best);
    let without = measure_shape(flows, fastest.shape, Events::OnlyWithListener)?;
    super::host::settle(Duration::from_secs(10));
    super::progress(&format!(
        "raw writer ceiling: {median:.0} flows/s (median of {} runs of {} thread(s), {} KiB per send); \
         {:.0} flows/s without the event extension",
        best.len(),
        fastest.shape.threads,
        fastest.shape.batch_bytes >> 10,
        without.flows_per_s
    ));
    Ok(Ceiling {
        best: CeilingRun {
            shape: fastest.shape,
            flows_per_s: median,
        },
        without_extension: without.flows_per_s,
    })
}
