//! The failover benchmark's kernel side: the idle filler flows that make
//! the primary's table busy (written with ctsync's batched writer inside
//! the primary's namespace), and a poller that watches how many flows a
//! namespace's kernel holds (its `nf_conntrack_count`) while a failover
//! runs, without forking a process per look.
//!
//! Must not: know about the daemons, keepalived or the traffic; write
//! anywhere but the namespace it is given; use addresses outside
//! 198.18.0.0/15 and 2001:db8::/32.

use crate::lab::{enter_netns, in_netns};
use ctsync::flow::{proto, status, Flow, ProtoState, Tuple, L4};
use ctsync::kernel::write::{CreateOptions, WriteOp, Writer};
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The timeout the filler flows start with: long enough that none expires
/// during a run, as an idle established flow's would not.
pub const FILLER_TIMEOUT_S: u32 = 3600;

/// LAN hosts behind the firewall that own the filler flows: 198.18.1.16 to
/// .255 (the lab's client is .10; .1–.3 are the VIP and the firewalls).
const FIRST_HOST: u8 = 16;
const HOSTS: usize = 240;
/// Flows per remote server; its NAT ports on the WAN VIP are 1024 + i % this.
const PER_SERVER: usize = 60_000;

/// `n` idle flows as a firewall holds them for forwarded traffic: from LAN
/// hosts to servers beyond the WAN, source-NATed to the WAN VIP (`vip4`,
/// `vip6`) as the lab's ruleset does, established and assured. Three in four
/// are TCP (ESTABLISHED, to port 443), one in four UDP (to port 443, as
/// QUIC); one in eight is IPv6. Every original and reply tuple is distinct
/// (up to 14 million flows), and none touches an address either daemon's
/// filter ignores (loopback, VIPs as a source, the sync link).
pub fn filler_flows(n: usize, vip4: IpAddr, vip6: IpAddr) -> Vec<Flow> {
    (0..n)
        .map(|i| {
            let host = FIRST_HOST as usize + i % HOSTS;
            let client_port = 1024 + ((i / HOSTS) % 64_000) as u16;
            let block = i / PER_SERVER;
            let nat_port = 1024 + (i % PER_SERVER) as u16;
            let ipv6 = (i / 4) % 8 == 7;
            let (client, server, vip) = if ipv6 {
                (
                    IpAddr::from([0x2001, 0x0db8, 1, 0, 0, 0, 1, host as u16]),
                    IpAddr::from([0x2001, 0x0db8, 0x20, block as u16, 0, 0, 0, 1]),
                    vip6,
                )
            } else {
                (
                    IpAddr::from([198, 18, 1, host as u8]),
                    IpAddr::from([198, 19, 16 + (block / 250) as u8, 1 + (block % 250) as u8]),
                    vip4,
                )
            };
            let udp = i % 4 == 3;
            let protocol = if udp { proto::UDP } else { proto::TCP };
            let orig = Tuple {
                src: client,
                dst: server,
                proto: protocol,
                l4: L4::Ports {
                    src: client_port,
                    dst: 443,
                },
            };
            let mut f = Flow::new(orig);
            f.reply = Tuple {
                src: server,
                dst: vip,
                proto: protocol,
                l4: L4::Ports {
                    src: 443,
                    dst: nat_port,
                },
            };
            f.status = status::SEEN_REPLY
                | status::ASSURED
                | status::CONFIRMED
                | status::SRC_NAT
                | status::SRC_NAT_DONE
                | status::DST_NAT_DONE;
            if !udp {
                f.state = ProtoState::Tcp {
                    state: 3,
                    wscale_orig: 7,
                    wscale_reply: 7,
                    flags_orig: 0,
                    flags_reply: 0,
                };
            }
            f.timeout = FILLER_TIMEOUT_S;
            f
        })
        .collect()
}

/// Write `flows` into namespace `ns` with ctsync's batched writer; returns
/// how long it took, or why it failed (a failed write is an error).
pub fn write_flows(ns: &str, flows: Vec<Flow>) -> Result<Duration, String> {
    let ns_name = ns.to_string();
    in_netns(ns, move || {
        let mut writer = Writer::open().map_err(|e| format!("open a writer in {ns_name}: {e}"))?;
        let started = Instant::now();
        let report = writer.create_all(&flows, &CreateOptions::default());
        let took = started.elapsed();
        if report.failed > 0 {
            return Err(format!(
                "{} of {} filler flows could not be written in {ns_name}: {:?}",
                report.failed,
                flows.len(),
                report.first_errors
            ));
        }
        Ok(took)
    })
}

/// Apply `ops` in namespace `ns` with the batched writer; a failed write is
/// an error.
pub fn apply(ns: &str, ops: Vec<WriteOp>) -> Result<(), String> {
    let ns_name = ns.to_string();
    in_netns(ns, move || {
        let mut writer = Writer::open().map_err(|e| format!("open a writer in {ns_name}: {e}"))?;
        let report = writer.apply(&ops);
        if report.failed > 0 {
            return Err(format!(
                "{} of {} writes failed in {ns_name}: {:?}",
                report.failed,
                ops.len(),
                report.first_errors
            ));
        }
        Ok(())
    })
}

/// A namespace of the benchmark's own for the ceiling, deleted on drop.
struct ScratchNs(String);

impl ScratchNs {
    fn new(tag: &str, ruleset: &str) -> Result<ScratchNs, String> {
        let name = format!("ctfb{}-{tag}", std::process::id());
        let _ = crate::lab::run("ip", &["netns", "del", &name]);
        let out = crate::lab::run("ip", &["netns", "add", &name]);
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = ScratchNs(name);
        // Every new flow with the event extension, as on fwb, where the
        // sync daemon sets nf_conntrack_events = 1 (conntrackd's listening
        // socket has the same effect under the default 2): a commit's
        // flows pay for it, so the ceiling does too (3-10%).
        crate::bench::kernel::run_in(
            &ns.0,
            "sysctl",
            &["-q", "-w", "net.netfilter.nf_conntrack_events=1"],
        )
        .map_err(|e| e.to_string())?;
        // The firewalls' ruleset: the same hooks (and NAT) as fwb's kernel.
        let path = std::env::temp_dir().join(format!("{}.nft", ns.0));
        std::fs::write(&path, ruleset).map_err(|e| format!("write {}: {e}", path.display()))?;
        let out = crate::lab::run(
            "ip",
            &["netns", "exec", &ns.0, "nft", "-f", &path.to_string_lossy()],
        );
        let _ = std::fs::remove_file(&path);
        if !out.status.success() {
            return Err(format!(
                "nft -f in {}: {}",
                ns.0,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(ns)
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = crate::lab::run("ip", &["netns", "del", &self.0]);
    }
}

/// The kernel's own ceiling for a commit of `flows`: the batched writer
/// creating them at full speed in a namespace of its own (the firewalls'
/// ruleset loaded, every flow given the event extension as on fwb, nobody
/// listening to events), with `sockets` writers on
/// as many threads, each taking an equal share. Flows per second.
pub fn ceiling(flows: &[Flow], sockets: usize, ruleset: &str) -> Result<f64, String> {
    let ns = ScratchNs::new(&format!("raw{sockets}"), ruleset)?;
    let sockets = sockets.max(1);
    let chunk = flows.len().div_ceil(sockets).max(1);
    let parts: Vec<Vec<Flow>> = flows.chunks(chunk).map(<[Flow]>::to_vec).collect();
    // Every writer is open (and in the namespace) before the clock starts.
    let barrier = Arc::new(std::sync::Barrier::new(parts.len() + 1));
    let handles: Vec<JoinHandle<Result<u64, String>>> = parts
        .into_iter()
        .map(|part| {
            let name = ns.0.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                enter_netns(&name);
                let writer = Writer::open().map_err(|e| format!("open a writer: {e}"));
                barrier.wait();
                let report = writer?.create_all(&part, &CreateOptions::default());
                if report.failed > 0 {
                    return Err(format!(
                        "{} of {} ceiling writes failed: {:?}",
                        report.failed,
                        part.len(),
                        report.first_errors
                    ));
                }
                Ok(report.ok)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut written = 0u64;
    for h in handles {
        written += h
            .join()
            .map_err(|_| "a ceiling writer panicked".to_string())??;
    }
    let took = started.elapsed().as_secs_f64();
    if written != flows.len() as u64 {
        return Err(format!("ceiling: wrote {written} of {}", flows.len()));
    }
    Ok(written as f64 / took.max(1e-9))
}

/// What a poller saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The count at the poller's first look.
    pub first: u64,
    /// The largest count seen.
    pub max: u64,
    /// When the count first reached the target (the first look, if it
    /// already had).
    pub reached: Option<SystemTime>,
    /// Why the poller stopped early, if it did.
    pub error: Option<String>,
}

/// Watches `nf_conntrack_count` of one namespace every few milliseconds, on
/// a thread of its own inside that namespace, until the count reaches a
/// target, the deadline passes, or it is stopped (also on drop).
pub struct CountPoller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    last: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

/// How often the poller looks.
const POLL_EVERY: Duration = Duration::from_millis(5);

impl CountPoller {
    /// Start polling; returns once the first look is done (so a failure
    /// injected afterwards comes after it).
    pub fn start(ns: &str, target: u64, within: Duration) -> Result<CountPoller, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let last = Arc::new(AtomicU64::new(0));
        let (stop2, seen2, last2) = (stop.clone(), seen.clone(), last.clone());
        let ns = ns.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("ct-count".into())
            .spawn(move || poll(&ns, target, within, &stop2, &seen2, &last2, ready_tx))
            .map_err(|e| format!("spawn the count poller: {e}"))?;
        let mut poller = CountPoller {
            stop,
            seen,
            last,
            handle: Some(handle),
        };
        // The sender is dropped when the thread ends, whatever happened.
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        let error = lock(&poller.seen).error.clone();
        if let Some(e) = error {
            poller.halt();
            return Err(e);
        }
        Ok(poller)
    }

    /// When the count reached the target, if it has.
    pub fn reached(&self) -> Option<SystemTime> {
        lock(&self.seen).reached
    }

    /// The most recent count.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// Stop and return what was seen.
    pub fn finish(mut self) -> Seen {
        self.halt();
        lock(&self.seen).clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                lock(&self.seen).error = Some("the count poller panicked".into());
            }
        }
    }
}

impl Drop for CountPoller {
    fn drop(&mut self) {
        self.halt();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn poll(
    ns: &str,
    target: u64,
    within: Duration,
    stop: &AtomicBool,
    seen: &Mutex<Seen>,
    last: &AtomicU64,
    ready: std::sync::mpsc::Sender<()>,
) {
    let deadline = Instant::now() + within;
    enter_netns(ns);
    // Opened after setns: the file is this namespace's counter for good.
    let path = "/proc/sys/net/netfilter/nf_conntrack_count";
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            lock(seen).error = Some(format!("open {path} in {ns}: {e}"));
            return;
        }
    };
    let mut first = true;
    let mut buf = [0u8; 32];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let now = SystemTime::now();
        let count = match file.read_at(&mut buf, 0) {
            Ok(k) => std::str::from_utf8(&buf[..k])
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok()),
            Err(_) => None,
        };
        let Some(count) = count else {
            lock(seen).error = Some(format!("unreadable {path} in {ns}"));
            return;
        };
        last.store(count, Ordering::Relaxed);
        {
            let mut s = lock(seen);
            if first {
                s.first = count;
                first = false;
            }
            s.max = s.max.max(count);
            if count >= target {
                s.reached = Some(now);
                return;
            }
        }
        let _ = ready.send(());
        std::thread::sleep(POLL_EVERY);
    }
}
