//! Authenticated sync against an attacker on the sync segment, on the real
//! kernel in network namespaces.
//!
//! A third namespace joins the lab's sync bridge and spoofs the firewalls'
//! own sync addresses (IP_TRANSPARENT), so its datagrams pass every check
//! that only looks at the source. It reads what travels in the clear (node
//! ids, epochs, sequence and packet numbers: the headers) from a capture of
//! the sync link, as an eavesdropper on the segment could.
//!
//! - `an_attacker_on_the_sync_segment_gets_nothing_into_a_keyed_pair`: two
//!   nodes with keys sync 20,000 flows with warm standby on, and a capture
//!   of their link holds none of the flows' addresses in clear. Then the
//!   attacker sends well-formed forged upserts with A's real node id (plain,
//!   in A's epoch and in a new one; sealed-looking with a random tag; with a
//!   key id nobody has), replays A's captured datagrams after the flows they
//!   created were deleted (in A's epoch, and again after A restarted), and
//!   floods A with resync requests (plain, sealed garbage, and B's own
//!   captured datagrams), and finally replays A's datagrams to a restarted
//!   B while A is down (no sequence state left to catch them, nobody to
//!   answer B's challenge). Nothing reaches B's external cache or kernel, A
//!   sends no bulk for the flood, replication keeps going, and the
//!   authentication counters name every refusal.
//! - `without_keys_the_same_attacks_get_in`: the negative control. The same
//!   forged datagrams put their flows into a keyless B's external cache and
//!   (warm standby) kernel, a forged resync request makes A send a bulk, the
//!   replay to a restarted B brings deleted flows back into its cache and
//!   kernel, and the plaintext check finds the flows' addresses in a keyless
//!   capture: the checks above can fail.
//! - `key_rotation_while_a_streams_changes_loses_nothing`: key 2 added on
//!   both nodes, made the send key, key 1 removed, each step a reload while A
//!   creates and updates flows; B ends with exactly A's table, no datagram
//!   was refused, and both keys carried traffic.
//!
//! Needs root. Addresses: sync link 198.18.0.0/24 (the attacker is
//! 198.18.0.66 and spoofs .1 and .2), flows from `lab::flow_mix`, forged
//! flows 198.18.241.0/24 -> 198.19.241.0/24.

mod lab;

use ctsync::auth::seal::envelope;
use ctsync::flow::{proto, status, Flow, Tuple, L4};
use ctsync::kernel::write::{CreateOptions, WriteOp, Writer};
use ctsync::wire::{encode_datagram, flags, Header, Message, WireFlow, HEADER_LEN, TAG_LEN};
use lab::{apply_in, comparable, create_in, flow_mix, wait_until, Lab, LabSpec, Node};
use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);
/// How long refused datagrams get to be counted.
const COUNTED: Duration = Duration::from_secs(15);
const PORT: u16 = 3780;
const A_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const A_NODE_ID: u32 = 1;
const B_NODE_ID: u32 = 2;

fn sync_addr(ip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, PORT)
}

// ---- keys ----------------------------------------------------------------

/// A new key line from `ctsyncd genkey ID`, the shipped way to make one.
fn new_key(id: u8) -> String {
    let out = lab::must(
        lab::path_str(&lab::ctsyncd_bin()),
        &["genkey", &id.to_string()],
    );
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("genkey printed no key line: {out}"))
        .to_string()
}

/// Replace a key file in one step (a reload never reads half a file), mode
/// 0600 as the daemon demands.
fn write_keys(path: &Path, lines: &[&str]) {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .expect("create key file");
    file.write_all(format!("{}\n", lines.join("\n")).as_bytes())
        .expect("write key file");
    std::fs::rename(&tmp, path).expect("install key file");
}

fn key_file(lab: &Lab, node: &Node) -> PathBuf {
    lab.dir.join(format!("{}.keys", node.name))
}

const KEY_FILE_SLOT: &str = "@KEY_FILE@";

/// A two-node lab with `[auth]`, each node with its own key file
/// (`<lab dir>/<node>.keys`) holding `keys`.
fn keyed_lab(sync_extra: &str, keys: &[&str]) -> Lab {
    let lab = Lab::new(LabSpec {
        sync_extra: sync_extra.into(),
        tables: format!("[auth]\nkey_file = \"{KEY_FILE_SLOT}\"\ncluster = \"seclab\"\n\n"),
        ..LabSpec::default()
    });
    for n in lab.nodes() {
        let path = key_file(&lab, n);
        write_keys(&path, keys);
        let text = std::fs::read_to_string(&n.config).expect("read config");
        std::fs::write(&n.config, text.replace(KEY_FILE_SLOT, lab::path_str(&path)))
            .expect("write config");
    }
    lab
}

// ---- the attacker --------------------------------------------------------

/// A namespace with a port on the lab's sync bridge: another host on the
/// sync segment. Deleted on drop.
struct Attacker {
    ns: String,
}

impl Attacker {
    fn join(lab: &Lab) -> Attacker {
        let attacker = Attacker {
            ns: format!("{}-x", lab.switch_ns),
        };
        let (ns, sw) = (attacker.ns.as_str(), lab.switch_ns.as_str());
        lab::must("ip", &["netns", "add", ns]);
        lab::must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        lab::must(
            "ip",
            &[
                "link", "add", "att0", "netns", ns, "type", "veth", "peer", "name", "patt",
                "netns", sw,
            ],
        );
        lab::must("ip", &["-n", sw, "link", "set", "patt", "master", "br0"]);
        lab::must("ip", &["-n", sw, "link", "set", "patt", "up"]);
        lab::must(
            "ip",
            &["-n", ns, "addr", "add", "198.18.0.66/24", "dev", "att0"],
        );
        lab::must("ip", &["-n", ns, "link", "set", "att0", "up"]);
        // The firewalls' MACs, known in advance: no ARP exchange delays or
        // drops the first datagrams of a burst.
        for (node, ip) in [(&lab.a, A_ADDR), (&lab.b, B_ADDR)] {
            let mac = sync_mac(node);
            let ip = ip.to_string();
            lab::must(
                "ip",
                &[
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    &ip,
                    "lladdr",
                    &mac,
                    "dev",
                    "att0",
                    "nud",
                    "permanent",
                ],
            );
        }
        attacker
    }

    /// Send `datagrams` with the spoofed source `from` to `to`, at most
    /// `per_sec` a second; returns how many the kernel took.
    fn send(&self, from: Ipv4Addr, to: Ipv4Addr, datagrams: Vec<Vec<u8>>, per_sec: u32) -> u64 {
        send_spoofed(&self.ns, from, to, datagrams, per_sec)
    }
}

/// The MAC address of a node's sync interface.
fn sync_mac(node: &Node) -> String {
    let text = lab::must("ip", &["-n", &node.ns, "-j", "link", "show", "sync0"]);
    let links: Value = serde_json::from_str(&text).expect("ip -j link JSON");
    links[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no MAC for {}'s sync0: {text}", node.name))
        .to_string()
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = lab::run("ip", &["netns", "del", &self.ns]);
    }
}

fn send_spoofed(
    ns: &str,
    from: Ipv4Addr,
    to: Ipv4Addr,
    datagrams: Vec<Vec<u8>>,
    per_sec: u32,
) -> u64 {
    lab::in_netns(ns, move || {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        // Another host's address as our source: IP_TRANSPARENT (root).
        sock.set_ip_transparent_v4(true)
            .expect("IP_TRANSPARENT (needs CAP_NET_ADMIN)");
        sock.bind(&SockAddr::from(sync_addr(from)))
            .expect("bind the spoofed source");
        let dest = SockAddr::from(sync_addr(to));
        let started = Instant::now();
        let mut sent = 0;
        for (i, d) in datagrams.iter().enumerate() {
            let due = Duration::from_secs_f64(i as f64 / f64::from(per_sec.max(1)));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            if sock.send_to(d, &dest).is_ok() {
                sent += 1;
            }
        }
        sent
    })
}

// ---- capture -------------------------------------------------------------

/// A UDP datagram to or from the sync port, as seen on the wire.
#[derive(Clone, Debug)]
struct Seen {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: Vec<u8>,
}

/// At most this many datagrams are kept.
const CAPTURE_MAX: usize = 200_000;

/// An AF_PACKET capture of one interface (both directions) on a thread in
/// its namespace, until `stop`, `within` or `CAPTURE_MAX` datagrams.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Seen>>>,
}

impl Capture {
    fn start(ns: &str, ifname: &str, within: Duration) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, ifname, flag) = (ns.to_string(), ifname.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            lab::enter_netns(&ns);
            let mut sock = packet_socket(&ifname);
            let _ = ready_tx.send(());
            let deadline = Instant::now() + within;
            let mut seen = Vec::new();
            let mut frame = vec![0u8; 65_536];
            while !flag.load(Ordering::SeqCst)
                && Instant::now() < deadline
                && seen.len() < CAPTURE_MAX
            {
                // Times out every 100 ms (SO_RCVTIMEO) to look at the flag.
                if let Ok(n) = sock.read(&mut frame) {
                    seen.extend(sync_datagram(&frame[..n]));
                }
            }
            seen
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the capture socket never opened");
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Seen> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().expect("capture thread panicked"))
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raw packet socket bound to `ifname`, every protocol, with a large
/// buffer and a 100 ms read timeout.
fn packet_socket(ifname: &str) -> Socket {
    let all = (libc::ETH_P_ALL as u16).to_be();
    let sock = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(all))),
    )
    .expect("AF_PACKET socket");
    let name = std::ffi::CString::new(ifname).expect("interface name");
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {ifname}");
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind with a pointer to a live sockaddr_ll and its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind to {ifname}: {}",
        std::io::Error::last_os_error()
    );
    let size: libc::c_int = 64 << 20;
    // SAFETY: setsockopt reads a c_int from a pointer to a live local.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("SO_RCVTIMEO");
    sock
}

/// The UDP payload of an Ethernet/IPv4 frame to or from the sync port.
fn sync_datagram(frame: &[u8]) -> Option<Seen> {
    let be16 = |b: &[u8], i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
    let mut at = 14;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == 0x8100 {
        ethertype = be16(frame, 16)?;
        at = 18;
    }
    let ip = frame.get(at..)?;
    if ethertype != 0x0800 || ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    if be16(ip, 6)? & 0x3fff != 0 {
        return None; // a fragment
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(ip, 2)?);
    let udp = ip.get(ihl..total)?;
    if be16(udp, 0)? != PORT && be16(udp, 2)? != PORT {
        return None;
    }
    let len = usize::from(be16(udp, 4)?);
    Some(Seen {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        payload: udp.get(8..len)?.to_vec(),
    })
}

fn payloads(seen: &[Seen], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<Vec<u8>> {
    seen.iter()
        .filter(|s| s.src == src && s.dst == dst)
        .map(|s| s.payload.clone())
        .collect()
}

/// What anyone on the segment reads in the clear in a sender's datagrams:
/// its node id, its latest epoch, and in that epoch the highest sequence
/// number and (sealed) packet number.
#[derive(Clone, Copy, Debug)]
struct Clear {
    node_id: u32,
    epoch: u64,
    seq: u32,
    pn: u64,
}

fn read_clear(seen: &[Seen], src: Ipv4Addr) -> Clear {
    let headers: Vec<(Header, u64)> = seen
        .iter()
        .filter(|s| s.src == src)
        .filter_map(|s| {
            let h = Header::parse(&s.payload).ok()?;
            Some((h, envelope(&s.payload).map_or(0, |e| e.pn)))
        })
        .collect();
    let (last, _) = *headers
        .last()
        .unwrap_or_else(|| panic!("nothing captured from {src}"));
    let same = || headers.iter().filter(|(h, _)| h.epoch == last.epoch);
    Clear {
        node_id: last.node_id,
        epoch: last.epoch,
        seq: same().map(|(h, _)| h.seq).max().unwrap_or(0),
        pn: same().map(|(_, pn)| *pn).max().unwrap_or(0),
    }
}

/// Byte strings that give a flow away in the plain wire format: an IPv4
/// flow's original source and destination address (8 bytes, as
/// `WireAddrs::V4` puts them), an IPv6 flow's original source (16 bytes).
fn address_patterns(flows: &[Flow]) -> HashSet<Vec<u8>> {
    flows
        .iter()
        .map(|f| match (f.orig.src, f.orig.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => [s.octets(), d.octets()].concat(),
            (s, _) => match s {
                IpAddr::V6(v6) => v6.octets().to_vec(),
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets().to_vec(),
            },
        })
        .collect()
}

/// How many of `patterns` occur in the captured payloads.
fn patterns_found(seen: &[Seen], patterns: &HashSet<Vec<u8>>) -> usize {
    let mut found: HashSet<&[u8]> = HashSet::new();
    for s in seen {
        for len in [8, 16] {
            for w in s.payload.windows(len) {
                if let Some(p) = patterns.get(w) {
                    found.insert(p.as_slice());
                }
            }
        }
    }
    found.len()
}

// ---- forged datagrams ----------------------------------------------------

/// xorshift64: random enough for tags and garbage, no dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

/// A UDP flow no node ever had: 198.18.241.n -> 198.19.241.n.
fn forged_flow(n: u8) -> Flow {
    let mut f = Flow::new(Tuple {
        src: IpAddr::from([198, 18, 241, n]),
        dst: IpAddr::from([198, 19, 241, n]),
        proto: proto::UDP,
        l4: L4::Ports {
            src: 40_000 + u16::from(n),
            dst: 53,
        },
    });
    f.status = status::CONFIRMED | status::SEEN_REPLY | status::ASSURED;
    f.timeout = 600;
    f
}

fn forged_src(n: u8) -> String {
    format!("198.18.241.{n}")
}

fn plain(node_id: u32, epoch: u64, seq: u32, reliable: bool, msgs: &[Message]) -> Vec<u8> {
    let header = Header {
        flags: if reliable { flags::RELIABLE } else { 0 },
        node_id,
        epoch,
        seq,
        ..Header::default()
    };
    encode_datagram(&header, msgs)
}

/// `plain` in the sealed layout (AUTH, key id, packet number, body, tag),
/// well-formed down to the lengths, but the body is not encrypted and the
/// tag is random: what someone without the key can make.
fn sealed_lookalike(plain: &[u8], key_id: u8, pn: u64, rng: &mut Rng) -> Vec<u8> {
    let header = Header::parse(plain).expect("a plain datagram");
    let mut out = Vec::new();
    Header {
        flags: header.flags | flags::AUTH,
        tag_len: TAG_LEN as u8,
        ..header
    }
    .encode_into(&mut out);
    out.push(key_id);
    out.extend_from_slice(&pn.to_be_bytes());
    out.extend_from_slice(&plain[HEADER_LEN..]);
    out.extend_from_slice(&rng.bytes(TAG_LEN));
    assert!(
        Header::parse(&out).is_ok_and(|h| h.is_sealed()),
        "the lookalike must be a well-formed sealed datagram"
    );
    out
}

/// Forged upserts, each of its own flow, claiming to come from `a`.
struct Forged {
    /// Plain, in `a`'s epoch, numbered right after its last datagram:
    /// upsert `forged_flow(1)`.
    same_epoch: Vec<Vec<u8>>,
    /// Plain, in a new epoch (as if `a` restarted): `forged_flow(2)`.
    new_epoch: Vec<Vec<u8>>,
    /// Sealed layout with `a`'s key id and a random tag: `forged_flow(3)`.
    bad_tag: Vec<Vec<u8>>,
    /// Sealed layout with a key id nobody holds: `forged_flow(4)`.
    unknown_key: Vec<Vec<u8>>,
}

const FORGED_EACH: u32 = 32;
/// Sealed lookalikes carry packet numbers this far beyond the sender's
/// last: fresh, so the replay window lets them through to the tag check
/// (and, were a forgery able to move the window, the sender's own
/// datagrams would be refused from then on: replication would stop).
const FRESH: u64 = 1_000_000;

fn forge(a: &Clear, key_id: u8, rng: &mut Rng) -> Forged {
    let upsert = |n| [Message::Upsert(WireFlow::from(&forged_flow(n)))];
    let numbered = |n: u8, epoch: u64| -> Vec<Vec<u8>> {
        (1..=FORGED_EACH)
            .map(|k| plain(a.node_id, epoch, a.seq + k, true, &upsert(n)))
            .collect()
    };
    let new_epoch = a.epoch.wrapping_add(1 << 32);
    let lookalikes = |n: u8, key: u8, rng: &mut Rng| -> Vec<Vec<u8>> {
        numbered(n, a.epoch)
            .iter()
            .zip(1..)
            .map(|(p, k)| sealed_lookalike(p, key, a.pn + FRESH + k, rng))
            .collect()
    };
    Forged {
        same_epoch: numbered(1, a.epoch),
        new_epoch: (1..=FORGED_EACH)
            .map(|k| plain(a.node_id, new_epoch, k, true, &upsert(2)))
            .collect(),
        bad_tag: lookalikes(3, key_id, rng),
        unknown_key: lookalikes(4, 200, rng),
    }
}

/// `n` forged resync requests claiming to come from `b`, alternating "every
/// node" and "node A".
fn forged_resync_requests(b: &Clear, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let node = (i % 2 == 1).then_some(A_NODE_ID);
            plain(
                b.node_id,
                b.epoch,
                b.seq,
                false,
                &[Message::ResyncRequest { node }],
            )
        })
        .collect()
}

// ---- looking at the nodes ------------------------------------------------

fn stats(node: &Node) -> Value {
    serde_json::from_str(&node.ctl_ok(&["-s", "--json"])).expect("stats JSON")
}

fn counter(stats: &Value, block: &str, name: &str) -> u64 {
    stats[block][name].as_u64().unwrap_or(0)
}

/// Authentication counter `name` of `node`.
fn auth(node: &Node, name: &str) -> u64 {
    counter(&stats(node), "auth", name)
}

/// Wait until `node`'s authentication counters `names` together rose by at
/// least `by` over `before` (a stats snapshot).
fn assert_auth_rose(node: &Node, before: &Value, names: &[&str], by: u64, what: &str) {
    let rise = |now: &Value| -> u64 {
        names
            .iter()
            .map(|n| counter(now, "auth", n).saturating_sub(counter(before, "auth", n)))
            .sum()
    };
    let counted = wait_until(COUNTED, || rise(&stats(node)) >= by);
    let now = stats(node);
    assert!(
        counted,
        "{what}: {}'s {names:?} rose by {} (expected at least {by}): {}",
        node.name,
        rise(&now),
        now["auth"]
    );
    println!("{what}: {} {names:?} +{}", node.name, rise(&now));
}

fn external_has(node: &Node, src: &str) -> bool {
    node.cache_json("-e")
        .iter()
        .any(|f| f["orig"]["src"].as_str() == Some(src))
}

fn kernel_has(node: &Node, src: &str) -> bool {
    let out = node.exec("conntrack", &["-L", "-s", src]);
    String::from_utf8_lossy(&out.stdout).contains(&format!("src={src} "))
}

/// For `watch`, `node`'s external cache and kernel never show a flow from
/// any of `srcs`.
fn assert_kept_out(node: &Node, srcs: &[String], watch: Duration, what: &str) {
    let deadline = Instant::now() + watch;
    loop {
        for src in srcs {
            assert!(
                !external_has(node, src),
                "{what}: {src} got into {}'s external cache",
                node.name
            );
            assert!(
                !kernel_has(node, src),
                "{what}: {src} got into {}'s kernel",
                node.name
            );
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Wait until A holds `expected` flows, B's external cache equals A's
/// internal cache and (warm standby) B's kernel equals A's kernel.
fn assert_mirrored(lab: &Lab, expected: usize, what: &str) {
    let a_ready = wait_until(CONVERGE, || {
        counter(&stats(&lab.a), "internal", "active") == expected as u64
    });
    assert!(
        a_ready,
        "{what}: A never held {expected} flows: {}{}",
        stats(&lab.a)["internal"],
        lab.a.log_tail()
    );
    assert_converged(lab, what);
    let mirrored = wait_until(CONVERGE, || lab.b.kernel_table() == lab.a.kernel_table());
    assert!(
        mirrored,
        "{what}: B's kernel ({}) never matched A's ({}){}",
        lab.b.kernel_table().len(),
        lab.a.kernel_table().len(),
        lab.b.log_tail()
    );
}

/// Wait until B's external cache equals A's internal cache.
fn assert_converged(lab: &Lab, what: &str) {
    let agree = || comparable(lab.a.cache_json("-i")) == comparable(lab.b.cache_json("-e"));
    if !wait_until(CONVERGE, agree) {
        let a = comparable(lab.a.cache_json("-i"));
        let b = comparable(lab.b.cache_json("-e"));
        let missing: Vec<_> = a.difference(&b).take(3).collect();
        let extra: Vec<_> = b.difference(&a).take(3).collect();
        panic!(
            "{what}: B's external cache ({}) never matched A's internal cache ({})\n\
             missing on B: {missing:#?}\nextra on B: {extra:#?}{}{}",
            b.len(),
            a.len(),
            lab.a.log_tail(),
            lab.b.log_tail()
        );
    }
}

// ---- the keyed pair under attack -----------------------------------------

#[test]
fn an_attacker_on_the_sync_segment_gets_nothing_into_a_keyed_pair() {
    let started = Instant::now();
    let key = format!("{} send", new_key(1));
    let mut lab = keyed_lab("warm_standby = true", &[&key]);
    let attacker = Attacker::join(&lab);
    // A's switch port carries everything A and B say to each other.
    let capture = Capture::start(&lab.switch_ns, "p0n0", Duration::from_secs(120));
    lab.a.start();
    lab.b.start();
    let flows = flow_mix(20_000, 41, false);
    create_in(&lab.a.ns, flows.clone());
    assert_mirrored(&lab, 20_000, "20,000 flows with keys and warm standby");
    let seen = capture.stop();
    println!(
        "keyed: 20,000 flows mirrored after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    nothing_in_clear(&seen, &flows);
    let mut rng = Rng::new();
    forgeries_are_refused(&lab, &attacker, &read_clear(&seen, A_ADDR), &mut rng);
    replays_are_refused(&mut lab, &attacker, &seen, &flows);
    resync_flood_is_ignored(&lab, &attacker, &seen, &mut rng);
    replay_to_a_fresh_b_is_refused(&mut lab, &attacker, &seen);
    println!("keyed: done in {:.1} s", started.elapsed().as_secs_f64());
}

/// Every sync datagram captured is sealed, and none shows a flow's
/// addresses, although the capture carried the whole table.
fn nothing_in_clear(seen: &[Seen], flows: &[Flow]) {
    let bytes: usize = seen.iter().map(|s| s.payload.len()).sum();
    let plain = seen
        .iter()
        .filter(|s| !Header::parse(&s.payload).is_ok_and(|h| h.is_sealed()))
        .count();
    assert_eq!(plain, 0, "{plain} of {} datagrams not sealed", seen.len());
    assert!(
        bytes > flows.len() * 20,
        "the capture saw too little to carry the table: {bytes} bytes in {} datagrams",
        seen.len()
    );
    let found = patterns_found(seen, &address_patterns(flows));
    assert_eq!(
        found, 0,
        "{found} flows' addresses in clear in the keyed capture"
    );
    println!(
        "keyed capture: {} datagrams, {bytes} bytes, all sealed, no flow address in clear",
        seen.len()
    );
}

/// Forged upserts with A's node id (plain in its epoch and in a new one,
/// sealed-looking with a random tag, with an unknown key id) are refused and
/// counted by reason; nothing of them reaches B's cache or kernel.
fn forgeries_are_refused(lab: &Lab, attacker: &Attacker, a: &Clear, rng: &mut Rng) {
    assert_eq!(a.node_id, A_NODE_ID, "A's node id as read off the wire");
    let forged = forge(a, 1, rng);
    let before = stats(&lab.b);
    let n = u64::from(FORGED_EACH);
    let mut all = forged.same_epoch;
    all.extend(forged.new_epoch);
    all.extend(forged.bad_tag);
    all.extend(forged.unknown_key);
    let sent = attacker.send(A_ADDR, B_ADDR, all, 2_000);
    assert_eq!(sent, 4 * n, "forged datagrams sent");
    assert_auth_rose(&lab.b, &before, &["missing"], 2 * n, "plain forgeries");
    assert_auth_rose(&lab.b, &before, &["bad_tag"], n, "random tags");
    assert_auth_rose(&lab.b, &before, &["unknown_key"], n, "unknown key id");
    let srcs: Vec<String> = (1..=4).map(forged_src).collect();
    assert_kept_out(&lab.b, &srcs, Duration::from_secs(2), "forged upserts");
    // A forgery burns nothing of A's: replication goes on.
    create_in(&lab.a.ns, flow_mix(500, 42, false));
    assert_mirrored(lab, 20_500, "after the forgeries");
}

/// A's captured datagrams replayed after the flows they created were
/// deleted: refused by the replay window, and after A restarted by the
/// epoch admission; the deleted flows never come back.
fn replays_are_refused(lab: &mut Lab, attacker: &Attacker, seen: &[Seen], flows: &[Flow]) {
    let deleted: Vec<WriteOp> = flows
        .iter()
        .step_by(20)
        .map(|f| WriteOp::Delete(f.key()))
        .collect();
    let gone = deleted.len();
    apply_in(&lab.a.ns, deleted);
    assert_mirrored(lab, 20_500 - gone, "deletes before the replay");
    let replay = payloads(seen, A_ADDR, B_ADDR);
    let n = replay.len() as u64;
    assert!(n > 100, "too few of A's datagrams captured: {n}");

    let before = stats(&lab.b);
    assert_eq!(attacker.send(A_ADDR, B_ADDR, replay.clone(), 2_000), n);
    assert_auth_rose(
        &lab.b,
        &before,
        &["replayed", "too_old"],
        n,
        "replay in A's epoch",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_mirrored(lab, 20_500 - gone, "after the replay");

    // A new epoch of A's: the old one's datagrams are authentic but never
    // admitted again.
    let admitted = auth(&lab.b, "epochs_admitted");
    lab.a.kill(libc::SIGTERM);
    lab.a.start();
    let readmitted = wait_until(CONVERGE, || auth(&lab.b, "epochs_admitted") > admitted);
    assert!(
        readmitted,
        "B never admitted A's new epoch{}",
        lab.b.log_tail()
    );
    assert_mirrored(lab, 20_500 - gone, "after A's restart");
    let before = stats(&lab.b);
    assert_eq!(attacker.send(A_ADDR, B_ADDR, replay, 2_000), n);
    assert_auth_rose(
        &lab.b,
        &before,
        &["epoch_unadmitted"],
        n,
        "replay of A's previous epoch",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_mirrored(lab, 20_500 - gone, "after the replay of an old epoch");
}

/// Stop A, then restart B: a receiver that knows nothing of A's numbers
/// any more, and no A to answer for its epoch. The attacker then replays
/// A's captured datagrams to B. Returns B's kernel table before the replay.
fn replay_to_a_fresh_b(lab: &mut Lab, attacker: &Attacker, replay: Vec<Vec<u8>>) -> Vec<String> {
    lab.a.kill(libc::SIGTERM);
    lab.b.kill(libc::SIGTERM);
    lab.b.start();
    assert!(
        lab.b.cache_json("-e").is_empty(),
        "a restarted B with A down holds peer flows"
    );
    let table = lab.b.kernel_table();
    let n = replay.len() as u64;
    assert_eq!(attacker.send(A_ADDR, B_ADDR, replay, 2_000), n);
    table
}

/// The replay to a fresh B (see `replay_to_a_fresh_b`): B challenges the
/// replayed epoch, nobody answers, and nothing of it is applied.
fn replay_to_a_fresh_b_is_refused(lab: &mut Lab, attacker: &Attacker, seen: &[Seen]) {
    let replay = payloads(seen, A_ADDR, B_ADDR);
    let n = replay.len() as u64;
    let table = replay_to_a_fresh_b(lab, attacker, replay);
    let before = serde_json::json!({});
    assert_auth_rose(
        &lab.b,
        &before,
        &["epoch_unadmitted"],
        n,
        "replay to a fresh B, A down",
    );
    std::thread::sleep(Duration::from_secs(1));
    let s = stats(&lab.b);
    assert!(
        counter(&s, "auth", "challenges_sent") >= 1 && counter(&s, "auth", "epochs_admitted") == 0,
        "B should challenge the replayed epoch and admit nothing: {}",
        s["auth"]
    );
    let external = lab.b.cache_json("-e");
    assert!(
        external.is_empty(),
        "replayed datagrams put {} flows into a fresh B's external cache",
        external.len()
    );
    assert_eq!(
        lab.b.kernel_table(),
        table,
        "replayed datagrams changed a fresh B's kernel table"
    );
}

/// A flood of resync requests at A claiming to come from B (plain, sealed
/// garbage, and B's own captured datagrams replayed): refused and counted,
/// no bulk sent for it, and A keeps replicating to B meanwhile.
fn resync_flood_is_ignored(lab: &Lab, attacker: &Attacker, seen: &[Seen], rng: &mut Rng) {
    const EACH: usize = 1_500;
    let b = read_clear(seen, B_ADDR);
    assert_eq!(b.node_id, B_NODE_ID, "B's node id as read off the wire");
    let plain_requests = forged_resync_requests(&b, EACH);
    let garbage: Vec<Vec<u8>> = plain_requests
        .iter()
        .zip(1..)
        .map(|(p, k)| sealed_lookalike(p, 1, b.pn + FRESH + k, rng))
        .collect();
    let b_said = payloads(seen, B_ADDR, A_ADDR);
    assert!(!b_said.is_empty(), "nothing of B's captured");
    let mut flood = Vec::with_capacity(3 * EACH);
    for i in 0..EACH {
        flood.push(plain_requests[i].clone());
        flood.push(garbage[i].clone());
        flood.push(b_said[i % b_said.len()].clone());
    }
    let before = stats(&lab.a);
    let ns = attacker.ns.clone();
    // 4,500 datagrams over 3 s.
    let flooding = std::thread::spawn(move || send_spoofed(&ns, B_ADDR, A_ADDR, flood, 1_500));
    create_in(&lab.a.ns, flow_mix(2_000, 43, false));
    let sent = flooding.join().expect("flood thread");
    assert_eq!(sent, 3 * EACH as u64);
    let each = EACH as u64;
    assert_auth_rose(&lab.a, &before, &["missing"], each, "plain resync requests");
    assert_auth_rose(&lab.a, &before, &["bad_tag"], each, "sealed garbage");
    assert_auth_rose(
        &lab.a,
        &before,
        &["replayed", "too_old"],
        each,
        "B's datagrams replayed",
    );
    let gone = 20_000 / 20;
    assert_mirrored(lab, 22_500 - gone, "flows created during the flood");
    let after = stats(&lab.a);
    for name in ["resyncs_requested_received", "bulks_sent"] {
        assert_eq!(
            counter(&after, "sync", name),
            counter(&before, "sync", name),
            "the flood moved A's {name}"
        );
    }
}

// ---- the negative control ------------------------------------------------

#[test]
fn without_keys_the_same_attacks_get_in() {
    let mut lab = Lab::new(LabSpec {
        sync_extra: "warm_standby = true".into(),
        ..LabSpec::default()
    });
    let attacker = Attacker::join(&lab);
    let capture = Capture::start(&lab.switch_ns, "p0n0", Duration::from_secs(60));
    lab.a.start();
    lab.b.start();
    let flows = flow_mix(2_000, 44, false);
    create_in(&lab.a.ns, flows.clone());
    assert_mirrored(&lab, 2_000, "2,000 flows without keys");
    let seen = capture.stop();

    // The plaintext check finds the flows in a keyless capture.
    let found = patterns_found(&seen, &address_patterns(&flows));
    assert!(
        found * 10 >= flows.len() * 9,
        "the plaintext check found only {found} of {} flows in a keyless capture",
        flows.len()
    );
    println!("keyless capture: {found} of {} flows in clear", flows.len());

    // The same forgeries: the plain ones get into B's cache and kernel.
    let forged = forge(&read_clear(&seen, A_ADDR), 1, &mut Rng::new());
    for (n, datagrams) in [(1, forged.same_epoch), (2, forged.new_epoch)] {
        let count = datagrams.len() as u64;
        assert_eq!(attacker.send(A_ADDR, B_ADDR, datagrams, 2_000), count);
        let src = forged_src(n);
        let inside = wait_until(COUNTED, || {
            external_has(&lab.b, &src) && kernel_has(&lab.b, &src)
        });
        assert!(
            inside,
            "forgery {n} did not get into a keyless B (external {}, kernel {})",
            external_has(&lab.b, &src),
            kernel_has(&lab.b, &src)
        );
    }
    // Sealed datagrams are refused by a keyless node, and counted.
    let before = stats(&lab.b);
    let mut sealed = forged.bad_tag;
    sealed.extend(forged.unknown_key);
    let count = sealed.len() as u64;
    assert_eq!(attacker.send(A_ADDR, B_ADDR, sealed, 2_000), count);
    assert_auth_rose(
        &lab.b,
        &before,
        &["not_configured"],
        count,
        "sealed, no keys",
    );

    // A forged resync request makes a keyless A send a bulk.
    let before = stats(&lab.a);
    let requests = forged_resync_requests(&read_clear(&seen, B_ADDR), 4);
    assert_eq!(attacker.send(B_ADDR, A_ADDR, requests, 100), 4);
    let obeyed = wait_until(COUNTED, || {
        let now = stats(&lab.a);
        counter(&now, "sync", "resyncs_requested_received")
            > counter(&before, "sync", "resyncs_requested_received")
            && counter(&now, "sync", "bulks_sent") > counter(&before, "sync", "bulks_sent")
    });
    assert!(obeyed, "a keyless A ignored forged resync requests");

    // Replayed to a restarted B with A down, A's datagrams bring back
    // flows A deleted since.
    let deleted: Vec<WriteOp> = flows
        .iter()
        .step_by(10)
        .map(|f| WriteOp::Delete(f.key()))
        .collect();
    apply_in(&lab.a.ns, deleted);
    // B takes A's real epoch again once the forged one falls silent, and
    // mirrors the deletes: the flows are gone from B's kernel too.
    assert_mirrored(&lab, 1_800, "keyless deletes before the replay");
    let a_has = comparable(lab.a.cache_json("-i"));
    let table = replay_to_a_fresh_b(&mut lab, &attacker, payloads(&seen, A_ADDR, B_ADDR));
    let came_back = || {
        comparable(lab.b.cache_json("-e"))
            .difference(&a_has)
            .count()
    };
    let back = wait_until(COUNTED, || came_back() > 0 && lab.b.kernel_table() != table);
    assert!(
        back,
        "replayed datagrams brought back no deleted flow into a keyless B (external: {} flows)",
        lab.b.cache_json("-e").len()
    );
    println!(
        "keyless replay to a fresh B: {} deleted flows came back",
        came_back()
    );
}

// ---- key rotation --------------------------------------------------------

/// Creates `flows` in `ns`'s kernel 50 at a time, re-marking the previous
/// batch each time, every 40 ms, until `stop` or the flows run out; counts
/// the flows created in `done`.
fn stream(
    ns: &str,
    flows: Vec<Flow>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        lab::enter_netns(&ns);
        let mut writer = Writer::open().expect("open writer");
        let batches: Vec<&[Flow]> = flows.chunks(50).collect();
        for (i, batch) in batches.iter().enumerate() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let report = writer.create_all(batch, &CreateOptions::default());
            assert_eq!(report.failed, 0, "stream: {:?}", report.first_errors);
            if let Some(previous) = i.checked_sub(1).map(|p| batches[p]) {
                let updates: Vec<WriteOp> = previous
                    .iter()
                    .map(|f| {
                        let mut changed = f.clone();
                        changed.mark = 7_000 + i as u32;
                        WriteOp::Update(changed)
                    })
                    .collect();
                let report = writer.apply(&updates);
                assert_eq!(report.failed, 0, "stream: {:?}", report.first_errors);
            }
            done.fetch_add(batch.len(), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(40));
        }
    })
}

/// Install `lines` as `node`'s key file and have it reload.
fn rekey(lab: &Lab, node: &Node, lines: &[&str]) {
    write_keys(&key_file(lab, node), lines);
    node.ctl_ok(&["reload-keys"]);
}

fn key_use(stats: &Value, id: u8, what: &str) -> u64 {
    stats["auth"]["key_use"][id.to_string()][what]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn key_rotation_while_a_streams_changes_loses_nothing() {
    let (k1, k2) = (new_key(1), new_key(2));
    let (k1_send, k2_send) = (format!("{k1} send"), format!("{k2} send"));
    let mut lab = keyed_lab("", &[&k1_send]);
    lab.a.start();
    lab.b.start();
    create_in(&lab.a.ns, flow_mix(2_000, 45, false));
    assert_converged(&lab, "before the rotation");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let streamer = stream(
        &lab.a.ns,
        flow_mix(25_000, 46, false),
        stop.clone(),
        done.clone(),
    );
    let mut progress = vec![];
    let mut dwell = |what: &str| {
        let at = done.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1_500));
        let now = done.load(Ordering::SeqCst);
        assert!(now > at, "A's stream stalled during {what}");
        progress.push(format!("{what}: {at}..{now}"));
    };
    dwell("key 1 only");
    let nodes = [&lab.a, &lab.b];
    // 1. Every node accepts key 2 before anyone sends with it.
    for n in nodes {
        rekey(&lab, n, &[&k1_send, &k2]);
    }
    dwell("key 2 added");
    // 2. Send with key 2.
    for n in nodes {
        rekey(&lab, n, &[&k1, &k2_send]);
    }
    dwell("key 2 sends");
    // 3. Once nothing sealed with key 1 is sealed or opened any more,
    // remove it.
    let key1_use = || {
        nodes
            .iter()
            .map(|n| {
                let s = stats(n);
                (key_use(&s, 1, "sealed"), key_use(&s, 1, "opened"))
            })
            .collect::<Vec<_>>()
    };
    let settled = {
        let mut last = key1_use();
        wait_until(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(400));
            let now = key1_use();
            std::mem::replace(&mut last, now.clone()) == now
        })
    };
    assert!(settled, "key 1 is still in use after both send with key 2");
    // A bad file (readable by others) is refused and keeps the keys in use.
    let path = key_file(&lab, &lab.a);
    write_keys(&path, &[&k1, &k2_send]);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .expect("chmod key file");
    let refused = lab.a.ctl(&["reload-keys"]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("chmod 600") && why.contains("old keys stay"),
        "a world-readable key file was not refused: {why}"
    );
    dwell("a refused reload");
    for n in nodes {
        rekey(&lab, n, &[&k2_send]);
    }
    dwell("key 1 removed");
    stop.store(true, Ordering::SeqCst);
    streamer.join().expect("stream thread");
    let created = done.load(Ordering::SeqCst);
    println!("rotation: A streamed {created} flows; {progress:?}");

    let expected = 2_000 + created as u64;
    let a_ready = wait_until(CONVERGE, || {
        counter(&stats(&lab.a), "internal", "active") == expected
    });
    assert!(a_ready, "A never held its {expected} flows");
    assert_converged(&lab, "after the rotation");
    for n in nodes {
        let s = stats(n);
        for name in ["unknown_key", "bad_tag", "missing", "not_configured"] {
            assert_eq!(
                counter(&s, "auth", name),
                0,
                "{}: {name} during the rotation: {}",
                n.name,
                s["auth"]
            );
        }
        assert_eq!(s["auth"]["send_key"], 2, "{}", n.name);
        for id in [1, 2] {
            assert!(
                key_use(&s, id, "sealed") > 0 && key_use(&s, id, "opened") > 0,
                "{}: key {id} carried no traffic both ways: {}",
                n.name,
                s["auth"]
            );
        }
    }
    // Only key 2 is loaded now, the same on both (the text stats list the
    // keys by id and check value).
    let key_lines: Vec<String> = nodes.iter().map(|n| key_line(n)).collect();
    assert_eq!(key_lines[0], key_lines[1], "A and B hold different keys");
    let ids: Vec<&str> = key_lines[0]
        .split(", ")
        .filter_map(|k| k.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["2"], "keys loaded: {}", key_lines[0]);
    // The JSON lists the same keys.
    let listed: Vec<Value> = nodes
        .iter()
        .map(|n| stats(n)["auth"]["keys"].clone())
        .collect();
    assert_eq!(listed[0], listed[1], "A and B list different keys");
    assert_eq!(listed[0].as_array().map(Vec::len), Some(1), "{}", listed[0]);
    assert_eq!(listed[0][0]["id"], 2, "{}", listed[0]);
    assert_eq!(
        listed[0][0]["check"].as_str().map(str::len),
        Some(8),
        "{}",
        listed[0]
    );
}

/// The keys `-s` lists: "2 (check 0a1b2c3d sends), ...".
fn key_line(node: &Node) -> String {
    let text = node.ctl_ok(&["-s"]);
    text.lines()
        .find_map(|l| l.split("authentication: keys ").nth(1))
        .unwrap_or_else(|| panic!("{}: no key line in -s:\n{text}", node.name))
        .trim()
        .to_string()
}
