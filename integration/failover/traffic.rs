//! In-process traffic for the failover lab: long-lived TCP echo, TCP server
//! push, idle TCP connections pinged on demand, UDP echo and UDP server
//! push, over IPv4 and IPv6, from a client namespace to a server namespace.
//!
//! Owns: its threads (each enters its namespace with setns(2) before it
//! makes a socket; sockets keep their namespace), its sockets, the per-flow
//! logs it hands back, the arithmetic on them (gaps, counts), and a live
//! view of when each flow's client last heard from its server (for callers
//! that wait, while traffic runs, until every flow has resumed).
//! Must not: touch the lab (namespaces, firewalls, daemons, files), run
//! external commands, block without a timeout, or run past
//! `Spec::max_duration`. std and libc only.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Every message is one record: flow id, sequence number, send time (µs
/// since the traffic's epoch), all big-endian.
pub const RECORD: usize = 16;

/// What a flow does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The client writes a record every interval; the server echoes it.
    TcpEcho,
    /// The server writes a record every interval; the client only reads.
    TcpPush,
    /// Connected at setup (one hello echoed), then silent until a ping round.
    TcpIdle,
    /// The client sends a datagram every interval; the server echoes it to
    /// whatever address it came from.
    UdpEcho,
    /// The client sends one hello; the server then pushes a datagram every
    /// interval to the address:port it saw.
    UdpPush,
}

impl Kind {
    pub fn is_tcp(self) -> bool {
        matches!(self, Kind::TcpEcho | Kind::TcpPush | Kind::TcpIdle)
    }

    /// conntrack's protocol name.
    pub fn proto(self) -> &'static str {
        if self.is_tcp() {
            "tcp"
        } else {
            "udp"
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::TcpEcho => "tcp-echo",
            Kind::TcpPush => "tcp-push",
            Kind::TcpIdle => "tcp-idle",
            Kind::UdpEcho => "udp-echo",
            Kind::UdpPush => "udp-push",
        }
    }

    /// Port offset from `Spec::port_base` of this kind's server.
    fn port_offset(self) -> u16 {
        match self {
            Kind::TcpEcho => 0,
            Kind::TcpPush => 1,
            Kind::TcpIdle => 2,
            Kind::UdpEcho => 3,
            Kind::UdpPush => 4,
        }
    }
}

/// What to run. Counts are per server address (per family).
#[derive(Clone, Debug)]
pub struct Spec {
    pub client_ns: String,
    pub server_ns: String,
    /// The server's addresses, one per family under test.
    pub servers: Vec<IpAddr>,
    pub port_base: u16,
    pub tcp_echo: usize,
    pub tcp_push: usize,
    pub udp_echo: usize,
    pub udp_push: usize,
    pub idle: usize,
    /// Cadence of echo requests and pushes.
    pub interval: Duration,
    /// Everything stops by itself this long after `start`.
    pub max_duration: Duration,
    /// Every flow must be set up within this.
    pub setup_timeout: Duration,
    /// How long an idle connection waits for the echo of its ping.
    pub ping_timeout: Duration,
}

impl Spec {
    pub fn new(client_ns: &str, server_ns: &str, servers: Vec<IpAddr>) -> Spec {
        Spec {
            client_ns: client_ns.to_string(),
            server_ns: server_ns.to_string(),
            servers,
            port_base: 5001,
            tcp_echo: 2,
            tcp_push: 2,
            udp_echo: 2,
            udp_push: 2,
            idle: 100,
            interval: Duration::from_millis(10),
            max_duration: Duration::from_secs(90),
            setup_timeout: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(7),
        }
    }
}

/// One flow as both ends know it.
#[derive(Clone, Debug)]
pub struct FlowInfo {
    pub id: u32,
    pub kind: Kind,
    /// The client's address and port (the conntrack original source).
    pub client: SocketAddr,
    /// The server's address and port (the original destination).
    pub server: SocketAddr,
    /// The peer the server saw at setup: the SNAT address and port (the
    /// conntrack reply destination).
    pub peer: SocketAddr,
}

/// What one end of a flow saw.
#[derive(Clone, Debug, Default)]
pub struct SideLog {
    /// Records (datagrams) sent.
    pub sent: u64,
    /// Receive time (µs since the epoch) of every valid record.
    pub received: Vec<u64>,
    /// UDP, server side: datagrams of this flow from an address other than
    /// the peer seen at setup (time, source).
    pub foreign: Vec<(u64, SocketAddr)>,
    /// Records out of sequence or of another flow.
    pub bad: u64,
    /// Socket errors (time, what): ECONNRESET, EPIPE, EOF, ...
    pub errors: Vec<(u64, String)>,
}

impl SideLog {
    /// Valid records received at or after `t_us`.
    pub fn after(&self, t_us: u64) -> usize {
        self.received.iter().filter(|&&t| t >= t_us).count()
    }

    /// The longest stretch without a valid record inside [from_us, to_us]
    /// (the window's edges count as boundaries): (length, start), in µs.
    pub fn max_gap(&self, from_us: u64, to_us: u64) -> (u64, u64) {
        let mut prev = from_us;
        let mut best = (0, from_us);
        for &t in self
            .received
            .iter()
            .filter(|&&t| t >= from_us && t <= to_us)
        {
            if t - prev > best.0 {
                best = (t - prev, prev);
            }
            prev = t;
        }
        if to_us.saturating_sub(prev) > best.0 {
            best = (to_us - prev, prev);
        }
        best
    }

    fn error(&mut self, at_us: u64, e: &io::Error) {
        self.errors.push((at_us, describe(e)));
    }

    /// Record an error unless traffic is stopping (then a peer closing
    /// its socket first is expected).
    fn fault(&mut self, sh: &Shared, e: &io::Error) {
        if !sh.stop.load(Ordering::SeqCst) {
            self.error(sh.now_us(), e);
        }
    }
}

/// One ping of an idle connection.
#[derive(Clone, Debug)]
pub struct Ping {
    pub round: u32,
    pub sent_us: u64,
    pub echo_us: Option<u64>,
    pub error: Option<String>,
}

/// Everything about one flow once traffic has stopped.
#[derive(Clone, Debug)]
pub struct FlowReport {
    pub info: FlowInfo,
    pub client: SideLog,
    pub server: SideLog,
    pub pings: Vec<Ping>,
}

impl FlowReport {
    pub fn errors(&self) -> Vec<String> {
        self.client
            .errors
            .iter()
            .map(|(t, e)| format!("client {e} at {:.2}s", *t as f64 / 1e6))
            .chain(
                self.server
                    .errors
                    .iter()
                    .map(|(t, e)| format!("server {e} at {:.2}s", *t as f64 / 1e6)),
            )
            .collect()
    }
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct Report {
    pub flows: Vec<FlowReport>,
    pub epoch_wall: SystemTime,
}

impl Report {
    /// A wall-clock time as µs since this run's epoch (0 if before it).
    pub fn wall_to_us(&self, wall: SystemTime) -> u64 {
        wall.duration_since(self.epoch_wall)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }

    /// One line per flow that is not idle, plus one summary line for the
    /// idle connections: sent/received, records after `t_us`, max gap of
    /// what the client received in [from_us, to_us], errors.
    pub fn table(&self, t_us: u64, from_us: u64, to_us: u64) -> String {
        let mut s = String::from(
            "  id kind      client                          peer seen by server             c.sent c.recv c.after s.recv s.after foreign  max-gap(at)        errors\n",
        );
        for f in self.flows.iter().filter(|f| f.info.kind != Kind::TcpIdle) {
            let (gap, at) = f.client.max_gap(from_us, to_us);
            s.push_str(&format!(
                "{:4} {:9} {:31} {:31} {:6} {:6} {:7} {:6} {:7} {:7} {:6.3}s({:6.2}s) {}\n",
                f.info.id,
                f.info.kind.name(),
                f.info.client.to_string(),
                f.info.peer.to_string(),
                f.client.sent.max(f.server.sent),
                f.client.received.len(),
                f.client.after(t_us),
                f.server.received.len(),
                f.server.after(t_us),
                f.server.foreign.len(),
                gap as f64 / 1e6,
                at as f64 / 1e6,
                f.errors().join("; ")
            ));
        }
        let idle: Vec<&FlowReport> = self
            .flows
            .iter()
            .filter(|f| f.info.kind == Kind::TcpIdle)
            .collect();
        let pings: Vec<&Ping> = idle.iter().flat_map(|f| f.pings.iter()).collect();
        let echoed = pings.iter().filter(|p| p.echo_us.is_some()).count();
        let worst = pings
            .iter()
            .filter_map(|p| p.echo_us.map(|e| e.saturating_sub(p.sent_us)))
            .max()
            .unwrap_or(0);
        let errors = idle.iter().filter(|f| !f.errors().is_empty()).count();
        s.push_str(&format!(
            "idle: {} connections, {} pings, {} echoed (slowest {:.3}s), {} with errors\n",
            idle.len(),
            pings.len(),
            echoed,
            worst as f64 / 1e6,
            errors
        ));
        s
    }
}

/// State every thread shares.
struct Shared {
    epoch: Instant,
    epoch_wall: SystemTime,
    deadline: Instant,
    stop: AtomicBool,
    ping_round: AtomicU32,
    interval: Duration,
    ping_timeout: Duration,
    /// Client side of each flow, once set up.
    clients: Mutex<HashMap<u32, (Kind, SocketAddr, SocketAddr)>>,
    /// When each flow's client last received a valid record (µs since the
    /// epoch, 0 = never), indexed by flow id: the live view a caller polls
    /// while traffic runs.
    client_rx: Vec<AtomicU64>,
    /// Peer of each flow as the server saw it at setup.
    peers: Mutex<HashMap<u32, SocketAddr>>,
    setup_errors: Mutex<Vec<String>>,
}

impl Shared {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn now_us(&self) -> u64 {
        self.us(Instant::now())
    }

    fn setup_error(&self, what: String) {
        lock(&self.setup_errors).push(what);
    }

    /// Flow `id`'s client received a valid record now; returns the time.
    fn client_got(&self, id: u32) -> u64 {
        let now = self.now_us();
        if let Some(slot) = self.client_rx.get(id as usize) {
            slot.store(now, Ordering::Relaxed);
        }
        now
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// What a thread hands back: one end of one flow.
struct Piece {
    id: u32,
    side: Side,
    log: SideLog,
    pings: Vec<Ping>,
}

impl Piece {
    fn new(id: u32, side: Side, log: SideLog) -> Piece {
        Piece {
            id,
            side,
            log,
            pings: Vec::new(),
        }
    }
}

/// Running traffic. Dropping it stops and joins every thread.
pub struct Traffic {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<Vec<Piece>>>,
    flows: Vec<FlowInfo>,
}

impl Traffic {
    /// Start servers, then clients; return once every flow is set up (the
    /// server knows its peer, the client got its first reply), or an error
    /// naming what failed (everything started is stopped again).
    pub fn start(spec: &Spec) -> Result<Traffic, String> {
        let now = Instant::now();
        let per_server = spec.tcp_echo + spec.tcp_push + spec.idle + spec.udp_echo + spec.udp_push;
        // Flow ids run from 1 to the number of flows.
        let ids = 1 + per_server * spec.servers.len();
        let shared = Arc::new(Shared {
            epoch: now,
            epoch_wall: SystemTime::now(),
            deadline: now + spec.max_duration,
            stop: AtomicBool::new(false),
            ping_round: AtomicU32::new(0),
            interval: spec.interval,
            ping_timeout: spec.ping_timeout,
            clients: Mutex::new(HashMap::new()),
            client_rx: (0..ids).map(|_| AtomicU64::new(0)).collect(),
            peers: Mutex::new(HashMap::new()),
            setup_errors: Mutex::new(Vec::new()),
        });
        let mut traffic = Traffic {
            shared: shared.clone(),
            handles: Vec::new(),
            flows: Vec::new(),
        };
        let kinds = [
            (Kind::TcpEcho, spec.tcp_echo),
            (Kind::TcpPush, spec.tcp_push),
            (Kind::TcpIdle, spec.idle),
            (Kind::UdpEcho, spec.udp_echo),
            (Kind::UdpPush, spec.udp_push),
        ];

        // Servers first; each reports once it is bound.
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut servers = 0;
        for &ip in &spec.servers {
            for (kind, count) in kinds {
                if count == 0 {
                    continue;
                }
                let addr = SocketAddr::new(ip, spec.port_base + kind.port_offset());
                let sh = shared.clone();
                let ns = spec.server_ns.clone();
                let ready = ready_tx.clone();
                let setup = spec.setup_timeout;
                servers += 1;
                traffic.spawn(&format!("srv-{}", kind.name()), move || {
                    server_thread(sh, ns, kind, addr, count, setup, ready)
                })?;
            }
        }
        drop(ready_tx);
        for _ in 0..servers {
            match ready_rx.recv_timeout(spec.setup_timeout) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(traffic.fail(format!("server: {e}"))),
                Err(_) => return Err(traffic.fail("servers did not bind in time".into())),
            }
        }

        // Clients: one thread per flow, except idle connections (one thread
        // per server address holds them all).
        let mut next_id = 1u32;
        let mut expected = 0usize;
        for &ip in &spec.servers {
            for (kind, count) in kinds {
                if count == 0 {
                    continue;
                }
                let server = SocketAddr::new(ip, spec.port_base + kind.port_offset());
                let ids: Vec<u32> = (next_id..next_id + count as u32).collect();
                next_id += count as u32;
                expected += count;
                if kind == Kind::TcpIdle {
                    let sh = shared.clone();
                    let ns = spec.client_ns.clone();
                    traffic.spawn("cl-idle", move || idle_client(sh, ns, server, ids))?;
                } else {
                    for id in ids {
                        let sh = shared.clone();
                        let ns = spec.client_ns.clone();
                        traffic.spawn(&format!("cl-{}", kind.name()), move || {
                            client_thread(sh, ns, kind, id, server)
                        })?;
                    }
                }
            }
        }

        // Wait until every flow is known at both ends.
        let deadline = Instant::now() + spec.setup_timeout;
        loop {
            if let Some(e) = lock(&shared.setup_errors).first().cloned() {
                return Err(traffic.fail(e));
            }
            let complete = {
                let clients = lock(&shared.clients);
                let peers = lock(&shared.peers);
                clients.len() == expected && clients.keys().all(|id| peers.contains_key(id))
            };
            if complete {
                break;
            }
            if Instant::now() >= deadline {
                let clients = lock(&shared.clients).len();
                let peers = lock(&shared.peers).len();
                return Err(traffic.fail(format!(
                    "traffic setup incomplete after {:?}: {clients} of {expected} clients and {peers} server peers ready",
                    spec.setup_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut flows: Vec<FlowInfo> = {
            let clients = lock(&shared.clients);
            let peers = lock(&shared.peers);
            clients
                .iter()
                .filter_map(|(&id, &(kind, client, server))| {
                    peers.get(&id).map(|&peer| FlowInfo {
                        id,
                        kind,
                        client,
                        server,
                        peer,
                    })
                })
                .collect()
        };
        flows.sort_by_key(|f| f.id);
        traffic.flows = flows;
        Ok(traffic)
    }

    fn spawn(
        &mut self,
        name: &str,
        f: impl FnOnce() -> Vec<Piece> + Send + 'static,
    ) -> Result<(), String> {
        match std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(256 * 1024)
            .spawn(f)
        {
            Ok(h) => {
                self.handles.push(h);
                Ok(())
            }
            Err(e) => Err(self.fail(format!("spawn {name}: {e}"))),
        }
    }

    /// Stop what was started and pass `why` on.
    fn fail(&mut self, why: String) -> String {
        self.shared.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        why
    }

    /// Every flow, with the peer its server saw at setup.
    pub fn flows(&self) -> &[FlowInfo] {
        &self.flows
    }

    /// µs since this run's epoch, now.
    pub fn now_us(&self) -> u64 {
        self.shared.now_us()
    }

    /// A wall-clock time as µs since this run's epoch (0 if before it).
    pub fn wall_to_us(&self, wall: SystemTime) -> u64 {
        wall.duration_since(self.shared.epoch_wall)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }

    /// When flow `id`'s client last received a valid record (µs since the
    /// epoch), if it ever did: the live view while traffic runs.
    pub fn client_last_rx_us(&self, id: u32) -> Option<u64> {
        self.shared
            .client_rx
            .get(id as usize)
            .map(|t| t.load(Ordering::Relaxed))
            .filter(|&t| t > 0)
    }

    /// Start a ping round: every idle connection sends one record and waits
    /// up to `ping_timeout` for its echo. Returns the round's number.
    pub fn ping_idle(&self) -> u32 {
        self.shared.ping_round.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Stop every thread and collect what they saw.
    pub fn stop(mut self) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut pieces = Vec::new();
        for h in self.handles.drain(..) {
            match h.join() {
                Ok(p) => pieces.extend(p),
                Err(_) => eprintln!("traffic: a thread panicked"),
            }
        }
        let mut by_id: HashMap<u32, FlowReport> = self
            .flows
            .iter()
            .map(|info| {
                (
                    info.id,
                    FlowReport {
                        info: info.clone(),
                        client: SideLog::default(),
                        server: SideLog::default(),
                        pings: Vec::new(),
                    },
                )
            })
            .collect();
        for p in pieces {
            if let Some(f) = by_id.get_mut(&p.id) {
                match p.side {
                    Side::Client => f.client = p.log,
                    Side::Server => f.server = p.log,
                }
                f.pings.extend(p.pings);
            }
        }
        let mut flows: Vec<FlowReport> = by_id.into_values().collect();
        flows.sort_by_key(|f| f.info.id);
        Report {
            flows,
            epoch_wall: self.shared.epoch_wall,
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

// ---- records and socket helpers ------------------------------------------

fn encode(id: u32, seq: u32, t_us: u64) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[0..4].copy_from_slice(&id.to_be_bytes());
    b[4..8].copy_from_slice(&seq.to_be_bytes());
    b[8..16].copy_from_slice(&t_us.to_be_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() < RECORD {
        return None;
    }
    let id = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let seq = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    Some((id, seq))
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH".into(),
        _ => e.to_string(),
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Move this thread into network namespace `ns`.
fn enter_netns(ns: &str) -> Result<(), String> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: setns(2) on a namespace fd we own changes only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {path}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// Bytes read from a stream, cut into records across reads and timeouts.
#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    /// Read what arrives within `wait`; return the complete records (id, seq).
    /// A timeout is not an error; EOF is.
    fn pull(&mut self, s: &mut TcpStream, wait: Duration) -> io::Result<Vec<(u32, u32)>> {
        s.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "EOF")),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e),
        }
        Ok(self.take())
    }

    fn take(&mut self) -> Vec<(u32, u32)> {
        let whole = self.buf.len() / RECORD * RECORD;
        let out = self.buf[..whole]
            .chunks(RECORD)
            .filter_map(decode)
            .collect();
        self.buf.drain(..whole);
        out
    }
}

/// Write as much of `out` as the socket takes now (it has a write timeout).
fn flush(s: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    while !out.is_empty() {
        match s.write(out) {
            Ok(0) => return Err(io::Error::new(ErrorKind::WriteZero, "write returned 0")),
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_millis(100)))?;
    s.set_read_timeout(Some(Duration::from_millis(20)))
}

/// Wait up to `within` for the first record (setup only); returns every
/// complete record of that read (a push server may already have sent more).
fn read_first(s: &mut TcpStream, r: &mut Reader, within: Duration) -> io::Result<Vec<(u32, u32)>> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(ErrorKind::TimedOut, "no record in time"));
        }
        let recs = r.pull(s, left.min(Duration::from_millis(50)))?;
        if !recs.is_empty() {
            return Ok(recs);
        }
    }
}

/// The next tick after `next` that is not in the past (a stall does not
/// turn into a burst of catch-up records).
fn advance(next: Instant, interval: Duration) -> Instant {
    let now = Instant::now();
    let n = next + interval;
    if n + Duration::from_millis(500) < now {
        now + interval
    } else {
        n
    }
}

// ---- servers ---------------------------------------------------------------

fn server_thread(
    sh: Arc<Shared>,
    ns: String,
    kind: Kind,
    addr: SocketAddr,
    count: usize,
    setup: Duration,
    ready: mpsc::Sender<Result<(), String>>,
) -> Vec<Piece> {
    if let Err(e) = enter_netns(&ns) {
        let _ = ready.send(Err(e));
        return Vec::new();
    }
    match kind {
        Kind::UdpEcho | Kind::UdpPush => {
            let sock = match UdpSocket::bind(addr) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(format!("bind udp {addr}: {e}")));
                    return Vec::new();
                }
            };
            let _ = ready.send(Ok(()));
            udp_server(&sh, kind, sock)
        }
        _ => {
            let listener = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(format!("listen tcp {addr}: {e}")));
                    return Vec::new();
                }
            };
            let _ = ready.send(Ok(()));
            tcp_server(&sh, kind, listener, count, setup)
        }
    }
}

/// Accept `count` connections (each sends a hello naming its flow), then
/// serve them: echo and push connections on their own threads, idle ones
/// all on this thread.
fn tcp_server(
    sh: &Arc<Shared>,
    kind: Kind,
    listener: TcpListener,
    count: usize,
    setup: Duration,
) -> Vec<Piece> {
    let deadline = Instant::now() + setup;
    let mut handlers: Vec<JoinHandle<Piece>> = Vec::new();
    let mut idle: Vec<(u32, TcpStream, Reader, SideLog)> = Vec::new();
    let mut accepted = 0;
    while accepted < count && !sh.done() && Instant::now() < deadline {
        let (mut s, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if would_block(&e) => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => {
                sh.setup_error(format!("{} accept: {e}", kind.name()));
                break;
            }
        };
        accepted += 1;
        let hello = s
            .set_nonblocking(false)
            .and_then(|_| tune(&s))
            .and_then(|_| read_first(&mut s, &mut Reader::default(), Duration::from_secs(5)))
            .and_then(|recs| {
                recs.first()
                    .copied()
                    .ok_or_else(|| io::Error::other("no hello"))
            });
        let (id, _) = match hello {
            Ok(h) => h,
            Err(e) => {
                sh.setup_error(format!("{} hello from {peer}: {e}", kind.name()));
                continue;
            }
        };
        lock(&sh.peers).insert(id, peer);
        let mut log = SideLog::default();
        log.received.push(sh.now_us());
        match kind {
            Kind::TcpIdle => {
                if let Err(e) = s.write_all(&encode(id, 0, sh.now_us())) {
                    sh.setup_error(format!("idle echo to {peer}: {e}"));
                    continue;
                }
                log.sent += 1;
                idle.push((id, s, Reader::default(), log));
            }
            _ => {
                let sh2 = sh.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("srv-{}-{id}", kind.name()))
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let log = if kind == Kind::TcpEcho {
                            tcp_echo_server(&sh2, id, s, log)
                        } else {
                            tcp_push_server(&sh2, id, s, log)
                        };
                        Piece::new(id, Side::Server, log)
                    });
                match spawned {
                    Ok(h) => handlers.push(h),
                    Err(e) => sh.setup_error(format!("spawn server handler: {e}")),
                }
            }
        }
    }
    let mut pieces = if idle.is_empty() {
        Vec::new()
    } else {
        idle_server(sh, idle)
    };
    for h in handlers {
        if let Ok(p) = h.join() {
            pieces.push(p);
        }
    }
    pieces
}

fn tcp_echo_server(sh: &Shared, id: u32, mut s: TcpStream, mut log: SideLog) -> SideLog {
    let mut out = encode(id, 0, sh.now_us()).to_vec();
    log.sent += 1;
    let mut rd = Reader::default();
    let mut expect = 1u32;
    while !sh.done() {
        if let Err(e) = flush(&mut s, &mut out) {
            log.fault(sh, &e);
            break;
        }
        match rd.pull(&mut s, Duration::from_millis(20)) {
            Ok(recs) => {
                for (rid, seq) in recs {
                    if rid != id || seq != expect {
                        log.bad += 1;
                    }
                    expect = seq.wrapping_add(1);
                    log.received.push(sh.now_us());
                    out.extend_from_slice(&encode(rid, seq, sh.now_us()));
                    log.sent += 1;
                }
            }
            Err(e) => {
                log.fault(sh, &e);
                break;
            }
        }
    }
    log
}

fn tcp_push_server(sh: &Shared, id: u32, mut s: TcpStream, mut log: SideLog) -> SideLog {
    let mut out = Vec::new();
    let mut seq = 1u32;
    let mut next = Instant::now();
    let mut sink = Reader::default();
    while !sh.done() {
        if Instant::now() >= next {
            out.extend_from_slice(&encode(id, seq, sh.now_us()));
            seq += 1;
            log.sent += 1;
            next = advance(next, sh.interval);
        }
        if let Err(e) = flush(&mut s, &mut out) {
            log.fault(sh, &e);
            break;
        }
        // Nothing is expected from the client; reading notices a reset or EOF.
        let wait = next.saturating_duration_since(Instant::now());
        if let Err(e) = sink.pull(&mut s, wait) {
            log.fault(sh, &e);
            break;
        }
    }
    log
}

/// Serve the idle connections: echo every record, log when it came.
fn idle_server(sh: &Shared, mut conns: Vec<(u32, TcpStream, Reader, SideLog)>) -> Vec<Piece> {
    for (_, s, _, log) in conns.iter_mut() {
        if let Err(e) = s.set_nonblocking(true) {
            log.fault(sh, &e);
        }
    }
    let mut open: Vec<bool> = vec![true; conns.len()];
    while !sh.done() {
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|(_, s, _, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        for (fd, &o) in fds.iter_mut().zip(&open) {
            if !o {
                fd.fd = -1;
            }
        }
        // SAFETY: `fds` is a valid array of pollfd for the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.fd < 0 || fd.revents == 0 {
                continue;
            }
            let (id, s, rd, log) = &mut conns[i];
            let mut chunk = [0u8; 1024];
            match s.read(&mut chunk) {
                Ok(0) => {
                    log.fault(sh, &io::Error::new(ErrorKind::UnexpectedEof, "EOF"));
                    open[i] = false;
                }
                Ok(k) => {
                    rd.buf.extend_from_slice(&chunk[..k]);
                    for (rid, seq) in rd.take() {
                        if rid != *id {
                            log.bad += 1;
                        }
                        log.received.push(sh.now_us());
                        let mut out = encode(rid, seq, sh.now_us()).to_vec();
                        // The echo is 16 bytes on an idle socket: it fits.
                        if let Err(e) = flush(s, &mut out) {
                            log.fault(sh, &e);
                            open[i] = false;
                        }
                        log.sent += 1;
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => {
                    log.fault(sh, &e);
                    open[i] = false;
                }
            }
        }
    }
    conns
        .into_iter()
        .map(|(id, _, _, log)| Piece::new(id, Side::Server, log))
        .collect()
}

/// UDP echo and push servers: one socket for every flow of the kind; the
/// flow id in each datagram names the flow, and the address its hello came
/// from is the only one accepted later.
fn udp_server(sh: &Shared, kind: Kind, sock: UdpSocket) -> Vec<Piece> {
    let mut logs: HashMap<u32, SideLog> = HashMap::new();
    let mut peers: HashMap<u32, SocketAddr> = HashMap::new();
    let mut push_seq: HashMap<u32, u32> = HashMap::new();
    let mut next = Instant::now();
    let mut buf = [0u8; 256];
    while !sh.done() {
        if kind == Kind::UdpPush && Instant::now() >= next {
            let mut ids: Vec<u32> = peers.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                let seq = push_seq.entry(id).or_insert(1);
                let rec = encode(id, *seq, sh.now_us());
                *seq += 1;
                let log = logs.entry(id).or_default();
                log.sent += 1;
                if let Some(peer) = peers.get(&id) {
                    if let Err(e) = sock.send_to(&rec, peer) {
                        if log.errors.len() < 20 {
                            log.fault(sh, &e);
                        }
                    }
                }
            }
            next = advance(next, sh.interval);
        }
        let wait = if kind == Kind::UdpPush {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(20)
        };
        if sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .is_err()
        {
            break;
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if would_block(&e) => continue,
            Err(e) => {
                let log = logs.entry(0).or_default();
                if log.errors.len() < 20 {
                    log.fault(sh, &e);
                }
                continue;
            }
        };
        let Some((id, seq)) = decode(&buf[..n]) else {
            continue;
        };
        let now = sh.now_us();
        let log = logs.entry(id).or_default();
        let peer = *peers.entry(id).or_insert_with(|| {
            lock(&sh.peers).insert(id, from);
            from
        });
        if from != peer {
            log.foreign.push((now, from));
        } else {
            log.received.push(now);
        }
        if kind == Kind::UdpEcho {
            // Echo to wherever it came from, as a real server would.
            let rec = encode(id, seq, now);
            match sock.send_to(&rec, from) {
                Ok(_) => log.sent += 1,
                Err(e) => {
                    if log.errors.len() < 20 {
                        log.fault(sh, &e);
                    }
                }
            }
        }
    }
    logs.remove(&0);
    logs.into_iter()
        .map(|(id, log)| Piece::new(id, Side::Server, log))
        .collect()
}

// ---- clients ---------------------------------------------------------------

fn client_thread(
    sh: Arc<Shared>,
    ns: String,
    kind: Kind,
    id: u32,
    server: SocketAddr,
) -> Vec<Piece> {
    if let Err(e) = enter_netns(&ns) {
        sh.setup_error(e);
        return Vec::new();
    }
    let log = match kind {
        Kind::TcpEcho | Kind::TcpPush => tcp_client(&sh, kind, id, server),
        Kind::UdpEcho | Kind::UdpPush => udp_client(&sh, kind, id, server),
        Kind::TcpIdle => return Vec::new(),
    };
    vec![Piece::new(id, Side::Client, log)]
}

/// Connect, send the hello, wait for the first reply; returns the stream
/// the reader (holding any partial record), the sequence number of the
/// last record already read and how many were read.
fn tcp_setup(
    sh: &Shared,
    kind: Kind,
    id: u32,
    server: SocketAddr,
) -> io::Result<(TcpStream, Reader, u32, usize)> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
    tune(&s)?;
    s.write_all(&encode(id, 0, sh.now_us()))?;
    let mut rd = Reader::default();
    let recs = read_first(&mut s, &mut rd, Duration::from_secs(5))?;
    if let Some(&(rid, _)) = recs.iter().find(|(rid, _)| *rid != id) {
        return Err(io::Error::other(format!("a first record names flow {rid}")));
    }
    let last = recs.last().map(|&(_, seq)| seq).unwrap_or(0);
    let local = s.local_addr()?;
    lock(&sh.clients).insert(id, (kind, local, server));
    Ok((s, rd, last, recs.len()))
}

fn tcp_client(sh: &Shared, kind: Kind, id: u32, server: SocketAddr) -> SideLog {
    let mut log = SideLog::default();
    let (mut s, mut rd, last, got) = match tcp_setup(sh, kind, id, server) {
        Ok(x) => x,
        Err(e) => {
            sh.setup_error(format!("{} flow {id} to {server}: {e}", kind.name()));
            return log;
        }
    };
    log.sent += 1;
    for _ in 0..got {
        log.received.push(sh.client_got(id));
    }
    let mut out = Vec::new();
    let mut seq = 1u32;
    let mut expect = last.wrapping_add(1);
    let mut next = Instant::now();
    while !sh.done() {
        if kind == Kind::TcpEcho && Instant::now() >= next {
            out.extend_from_slice(&encode(id, seq, sh.now_us()));
            seq += 1;
            log.sent += 1;
            next = advance(next, sh.interval);
        }
        if let Err(e) = flush(&mut s, &mut out) {
            log.fault(sh, &e);
            break;
        }
        let wait = if kind == Kind::TcpEcho {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(20)
        };
        match rd.pull(&mut s, wait) {
            Ok(recs) => {
                for (rid, rseq) in recs {
                    if rid != id || rseq != expect {
                        log.bad += 1;
                    }
                    expect = rseq.wrapping_add(1);
                    log.received.push(sh.client_got(id));
                }
            }
            Err(e) => {
                log.fault(sh, &e);
                break;
            }
        }
    }
    log
}

fn unspecified(server: SocketAddr) -> SocketAddr {
    match server.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

fn udp_client(sh: &Shared, kind: Kind, id: u32, server: SocketAddr) -> SideLog {
    let mut log = SideLog::default();
    let sock = match UdpSocket::bind(unspecified(server)).and_then(|s| {
        s.connect(server)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            sh.setup_error(format!("{} flow {id}: socket: {e}", kind.name()));
            return log;
        }
    };
    let mut buf = [0u8; 256];
    // Setup: a hello every 100 ms until the first reply (echo or push).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut expect;
    loop {
        if sh.done() || Instant::now() >= deadline {
            sh.setup_error(format!(
                "{} flow {id} to {server}: no reply to hello",
                kind.name()
            ));
            return log;
        }
        if sock.send(&encode(id, 0, sh.now_us())).is_ok() {
            log.sent += 1;
        }
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        if let Ok(n) = sock.recv(&mut buf) {
            if let Some((rid, seq)) = decode(&buf[..n]) {
                if rid == id {
                    log.received.push(sh.client_got(id));
                    expect = seq.wrapping_add(1);
                    break;
                }
            }
        }
    }
    match sock.local_addr() {
        Ok(local) => {
            lock(&sh.clients).insert(id, (kind, local, server));
        }
        Err(e) => {
            sh.setup_error(format!("{} flow {id}: local_addr: {e}", kind.name()));
            return log;
        }
    }
    let mut seq = 1u32;
    let mut next = Instant::now();
    while !sh.done() {
        if kind == Kind::UdpEcho && Instant::now() >= next {
            match sock.send(&encode(id, seq, sh.now_us())) {
                Ok(_) => log.sent += 1,
                Err(e) => {
                    if log.errors.len() < 20 {
                        log.fault(sh, &e);
                    }
                }
            }
            seq += 1;
            next = advance(next, sh.interval);
        }
        let wait = if kind == Kind::UdpEcho {
            next.saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(20)
        };
        if sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .is_err()
        {
            break;
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Some((rid, rseq)) = decode(&buf[..n]) {
                    // UDP may lose or (rarely) reorder: only a record of
                    // another flow or from the past counts as bad.
                    if rid != id || rseq < expect.saturating_sub(1000) {
                        log.bad += 1;
                    }
                    expect = rseq.wrapping_add(1);
                    log.received.push(sh.client_got(id));
                }
            }
            Err(e) if would_block(&e) => {}
            Err(e) => {
                // ECONNREFUSED from an ICMP error: note it, keep going.
                if log.errors.len() < 20 {
                    log.fault(sh, &e);
                }
            }
        }
    }
    log
}

/// Connect every idle connection (hello, echo), then wait for ping rounds:
/// each round sends one record on every connection and waits for the echoes.
fn idle_client(sh: Arc<Shared>, ns: String, server: SocketAddr, ids: Vec<u32>) -> Vec<Piece> {
    if let Err(e) = enter_netns(&ns) {
        sh.setup_error(e);
        return Vec::new();
    }
    let mut conns: Vec<(u32, TcpStream, SideLog, Vec<Ping>)> = Vec::new();
    for id in ids {
        if sh.done() {
            break;
        }
        match tcp_setup(&sh, Kind::TcpIdle, id, server) {
            Ok((s, _, _, _)) => {
                let mut log = SideLog::default();
                log.sent += 1;
                log.received.push(sh.client_got(id));
                conns.push((id, s, log, Vec::new()));
            }
            Err(e) => {
                sh.setup_error(format!("idle flow {id} to {server}: {e}"));
                break;
            }
        }
    }
    let mut done_round = 0u32;
    while !sh.done() {
        let round = sh.ping_round.load(Ordering::SeqCst);
        if round == done_round {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        done_round = round;
        ping_all(&sh, round, &mut conns);
    }
    conns
        .into_iter()
        .map(|(id, _, log, pings)| Piece {
            id,
            side: Side::Client,
            log,
            pings,
        })
        .collect()
}

fn ping_all(sh: &Shared, round: u32, conns: &mut [(u32, TcpStream, SideLog, Vec<Ping>)]) {
    let sent_us = sh.now_us();
    let mut waiting = Vec::new();
    for (i, (id, s, log, pings)) in conns.iter_mut().enumerate() {
        if !log.errors.is_empty() {
            continue;
        }
        log.sent += 1;
        match s.write_all(&encode(*id, round, sh.now_us())) {
            Ok(()) => waiting.push(i),
            Err(e) => {
                log.fault(sh, &e);
                pings.push(Ping {
                    round,
                    sent_us,
                    echo_us: None,
                    error: Some(describe(&e)),
                });
            }
        }
    }
    let deadline = Instant::now() + sh.ping_timeout;
    for i in waiting {
        let (id, s, log, pings) = &mut conns[i];
        let mut rd = Reader::default();
        let mut ping = Ping {
            round,
            sent_us,
            echo_us: None,
            error: None,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || sh.stop.load(Ordering::Relaxed) {
                ping.error = Some("no echo in time".into());
                break;
            }
            match rd.pull(s, left.min(Duration::from_millis(50))) {
                Ok(recs) => {
                    if let Some(&(rid, seq)) = recs.first() {
                        if rid != *id || seq != round {
                            log.bad += 1;
                        }
                        let now = sh.client_got(*id);
                        log.received.push(now);
                        ping.echo_us = Some(now);
                        break;
                    }
                }
                Err(e) => {
                    log.fault(sh, &e);
                    ping.error = Some(describe(&e));
                    break;
                }
            }
        }
        pings.push(ping);
    }
}
