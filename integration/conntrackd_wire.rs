//! ctsync's conntrackd protocol codec and state machines
//! (`ctsync::conntrackd_wire`) against the real conntrackd 1.4.7 from
//! Debian, over UDP between two network namespaces the test creates:
//!
//! - conntrackd → ours (NOTRACK, FTFW, ALARM): flows written with
//!   `conntrack -I` (plain, SNAT with a port, DNAT with a port, ICMP under
//!   SNAT, IPv6 in a zone, a mark), a labelled flow and an FTP control
//!   connection with its helper (both written with ctsync's kernel writer)
//!   and an expectation of it reach our receiver, which answers
//!   FTFW's hello and acks with its state machine; each decoded flow equals
//!   what the kernel of conntrackd's namespace holds, the expectation
//!   equals `conntrack -L expect`'s, the plain flow's message is §3.8's
//!   captured layout byte for byte, updates and deletions follow, our
//!   RESYNC (ALARM: the refresh) brings everything back, and in FTFW
//!   conntrackd's resend queue empties (our acks count). Malformed
//!   datagrams sent to our receiver are counted by reason and it goes on.
//! - ours → conntrackd (FTFW with 20% loss each way, NOTRACK, ALARM):
//!   206 flows and an expectation our node sends appear in `conntrackd -e`
//!   and `-e expect`; an update and a deletion follow; after `-f external`,
//!   `conntrackd -n` (ALARM: our refresh) brings them back; `conntrackd -c
//!   ct` commits the flows into its namespace's kernel, where they equal
//!   what we sent (NAT, mark, zone, helper, labels), and `-c expect` the
//!   expectation, which `conntrack -L expect` then shows.
//! - FTFW restarts: conntrackd restarted with `StartupResync on` gets our
//!   bulk; our node restarted with lower sequence numbers is taken thanks
//!   to HELLO and gets conntrackd's bulk on its RESYNC.
//!
//! Owns: two namespaces per test (conntrackd's and ours) joined by a veth
//! pair, conntrackd's process and files; all removed on drop, even when a
//! test fails. Network safety: 198.18.0.0/15 and 2001:db8::/32 only, inside
//! those namespaces. Needs root, `conntrack`, `conntrackd` and `nft`.

mod lab;

use ctsync::conntrackd_wire::header::{Control, Reject};
use ctsync::conntrackd_wire::{CdConfig, CdMode, CdNode, Change, Codec, Key, Object, Op};
use ctsync::expect::Expectation;
use ctsync::flow::{proto, Flow, FlowKey, Nat, NatBinding, ProtoState, Tuple, L4};
use lab::{in_netns, must, reap, run, wait_until};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);
const PORT: u16 = 3780;

/// conntrackd in one namespace, our socket in the other.
struct Link {
    dir: PathBuf,
    ns_cd: String,
    ns_us: String,
    net: u8,
    conf: PathBuf,
    child: Option<Child>,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            reap(&mut c, Duration::from_secs(5));
        }
        let _ = run("ip", &["netns", "del", &self.ns_cd]);
        let _ = run("ip", &["netns", "del", &self.ns_us]);
        if std::thread::panicking() {
            eprintln!("files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Link {
    /// `mode_block`: e.g. `Mode FTFW { }`.
    fn new(mode_block: &str) -> Link {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 100_000;
        let tag = format!("cdw{pid}{n}");
        let dir = std::env::temp_dir().join(format!("ctsync-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let net = 100 + (pid % 50) as u8 * 2 + n as u8 % 2;
        let link = Link {
            conf: dir.join("conntrackd.conf"),
            dir,
            ns_cd: format!("{tag}c"),
            ns_us: format!("{tag}u"),
            net,
            child: None,
        };
        must("ip", &["netns", "add", &link.ns_cd]);
        must("ip", &["netns", "add", &link.ns_us]);
        let (vc, vu) = (format!("{tag}c0"), format!("{tag}u0"));
        must(
            "ip",
            &["link", "add", &vc, "type", "veth", "peer", "name", &vu],
        );
        must("ip", &["link", "set", &vc, "netns", &link.ns_cd]);
        must("ip", &["link", "set", &vu, "netns", &link.ns_us]);
        for (ns, dev, host) in [(&link.ns_cd, &vc, 1), (&link.ns_us, &vu, 2)] {
            let addr = format!("198.18.{}.{host}/24", link.net);
            must("ip", &["-n", ns, "addr", "add", &addr, "dev", dev]);
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // Connection labels need the kernel's labels extension, which it
        // attaches only once a ruleset uses labels.
        let nft = |rule: &str| {
            must("ip", &["netns", "exec", &link.ns_cd, "nft", rule]);
        };
        nft("add table inet cdwlabels");
        nft("add chain inet cdwlabels pre { type filter hook prerouting priority 0; }");
        nft("add rule inet cdwlabels pre ct label set 127");
        let d = link.dir.display();
        let conf = format!(
            "General {{\n HashSize 8192\n HashLimit 65536\n Syslog off\n LogFile {d}/conntrackd.log\n \
             LockFile {d}/conntrackd.lock\n UNIX {{ Path {d}/conntrackd.ctl }}\n \
             NetlinkBufferSize 2097152\n NetlinkBufferSizeMaxGrowth 8388608\n \
             Filter From Kernelspace {{ Address Ignore {{ IPv4_address 198.18.{net}.0/24 }} }}\n}}\n\
             Sync {{\n {mode_block}\n UDP Default {{\n  IPv4_address 198.18.{net}.1\n  \
             IPv4_Destination_Address 198.18.{net}.2\n  Port {PORT}\n  Interface {vc}\n  Checksum on\n }}\n \
             Options {{ ExpectationSync on }}\n}}\n",
            net = link.net
        );
        std::fs::write(&link.conf, conf).unwrap();
        link
    }

    fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::from([198, 18, self.net, 1]), PORT)
    }

    fn start_conntrackd(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_cd, "conntrackd", "-C"])
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn conntrackd");
        self.child = Some(child);
        let ctl = self.dir.join("conntrackd.ctl");
        assert!(
            wait_until(Duration::from_secs(10), || ctl.exists()),
            "conntrackd did not start: {}",
            std::fs::read_to_string(self.dir.join("conntrackd.log")).unwrap_or_default()
        );
    }

    /// Stop conntrackd (SIGTERM) and wait until it is gone.
    fn stop_conntrackd(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            reap(&mut c, Duration::from_secs(10));
        }
        let ctl = self.dir.join("conntrackd.ctl");
        assert!(
            wait_until(Duration::from_secs(10), || !ctl.exists()),
            "conntrackd left its socket"
        );
    }

    /// `conntrackd -C conf ARGS` in conntrackd's namespace.
    fn cd(&self, args: &[&str]) -> String {
        let conf = self.conf.to_str().unwrap();
        let mut all = vec!["netns", "exec", &self.ns_cd, "conntrackd", "-C", conf];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// A command in conntrackd's namespace that must succeed.
    fn in_cd(&self, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.ns_cd, cmd];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// Our UDP socket, bound in our namespace.
    fn our_socket(&self) -> UdpSocket {
        let addr = SocketAddr::new(IpAddr::from([198, 18, self.net, 2]), PORT);
        let s = in_netns(&self.ns_us, move || UdpSocket::bind(addr).expect("bind"));
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        s
    }

    /// Drop `percent` of the sync datagrams leaving each namespace.
    fn lose(&self, percent: u32) {
        for ns in [&self.ns_cd, &self.ns_us] {
            let rules = format!(
                "table inet loss {{\n chain out {{\n  type filter hook output priority 0;\n  \
                 udp dport {PORT} numgen random mod 100 < {percent} counter drop\n }}\n}}\n"
            );
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(rules.as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(out.status.success(), "nft loss rule in {ns}");
        }
    }

    /// Datagrams the loss rules dropped, both ways, and the rules as the
    /// kernel lists them (for a failure's message).
    fn dropped(&self) -> (u64, String) {
        let mut listed = String::new();
        let mut dropped = 0;
        for ns in [&self.ns_cd, &self.ns_us] {
            let text = must(
                "ip",
                &["netns", "exec", ns, "nft", "list", "table", "inet", "loss"],
            );
            dropped += text
                .split("packets ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            listed.push_str(&format!("{ns}:\n{text}\n"));
        }
        (dropped, listed)
    }
}

/// Our side: the node, its socket, and the external cache it fills.
struct Us {
    node: CdNode,
    sock: UdpSocket,
    peer: SocketAddr,
    start: Instant,
    ext: HashMap<Key, Object>,
    raw: Vec<Vec<u8>>,
}

impl Us {
    fn new(link: &Link, mode: CdMode) -> Us {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        Us {
            node: CdNode::new(
                CdConfig {
                    mode,
                    refresh_time_s: 2,
                    ..CdConfig::default()
                },
                unix,
                0,
            ),
            sock: link.our_socket(),
            peer: link.peer_addr(),
            start: Instant::now(),
            ext: HashMap::new(),
            raw: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Receive, apply and send for `dur`.
    fn pump(&mut self, dur: Duration) {
        let end = Instant::now() + dur;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let now = self.now();
                self.raw.push(buf[..n].to_vec());
                for c in self.node.on_datagram(&buf[..n], now) {
                    self.apply(c);
                }
            }
            let now = self.now();
            for d in self.node.poll_transmit(now) {
                let _ = self.sock.send_to(&d, self.peer);
            }
        }
    }

    fn apply(&mut self, c: Change) {
        let key = c.object.key();
        match c.op {
            Op::Delete => {
                self.ext.remove(&key);
            }
            Op::New | Op::Update => {
                self.ext.insert(key, c.object);
            }
        }
    }

    /// Pump until `check` holds (at most `within`).
    fn pump_until(&mut self, within: Duration, mut check: impl FnMut(&Us) -> bool) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if check(self) {
                return true;
            }
            self.pump(Duration::from_millis(100));
        }
        check(self)
    }

    fn flow(&self, key: &FlowKey) -> Option<&Flow> {
        match self.ext.get(&Key::Flow(*key)) {
            Some(Object::Flow(f)) => Some(f),
            _ => None,
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ports(src: &str, sp: u16, dst: &str, dp: u16, p: u8) -> Tuple {
    Tuple {
        src: ip(src),
        dst: ip(dst),
        proto: p,
        l4: L4::Ports { src: sp, dst: dp },
    }
}

/// What conntrackd carries of a flow: no timeout, TCP flags or window
/// scales (TCPWindowTracking off), no helper here.
fn carried(f: &Flow) -> Flow {
    let mut f = f.clone();
    f.timeout = 0;
    if let ProtoState::Tcp { state, .. } = f.state {
        f.state = ProtoState::Tcp {
            state,
            wscale_orig: 0,
            wscale_reply: 0,
            flags_orig: 0,
            flags_reply: 0,
        };
    }
    f
}

/// The flows of conntrackd's namespace's kernel, without the sync link's.
fn kernel_flows(link: &Link) -> Vec<Flow> {
    let net = link.net;
    in_netns(&link.ns_cd, ctsync::kernel::dump_table)
        .expect("dump")
        .into_iter()
        .filter(|f| {
            f.orig.src != IpAddr::from([198, 18, net, 1])
                && f.orig.src != IpAddr::from([198, 18, net, 2])
        })
        .collect()
}

/// A UDP flow with labels 0, 7 and 127 and a mark.
fn labelled() -> Flow {
    let mut f = Flow::new(ports("198.18.1.8", 5, "198.18.2.8", 6, proto::UDP));
    let mut labels = vec![0u8; 16];
    labels[0] = 0x81;
    labels[15] = 0x80;
    f.labels = Some(labels);
    f.mark = 4;
    f.status = 0x08;
    f.timeout = 60;
    f
}

/// The `conntrack -I` flows of the conntrackd → ours tests.
const INSERTS: &[&str] = &[
    "-s 198.18.1.1 -d 198.18.2.2 -p tcp --sport 1234 --dport 80 --state ESTABLISHED -t 120 -u ASSURED,SEEN_REPLY -m 5",
    "-s 198.18.1.3 -d 198.18.2.2 -p tcp --sport 4321 --dport 443 --state ESTABLISHED -t 120 -u ASSURED,SEEN_REPLY --src-nat 198.19.0.1:5000",
    "-s 198.18.1.4 -d 198.18.2.2 -p udp --sport 53 --dport 5353 -t 120 --dst-nat 198.18.9.9:5454",
    "-s 198.18.1.5 -d 198.18.2.2 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 77 -t 30 --src-nat 198.19.0.2",
    "-s 2001:db8::1 -d 2001:db8::2 -p udp --sport 1000 --dport 2000 -t 60 --zone 7 -m 3",
];

fn conntrackd_to_ours(mode: CdMode, mode_block: &str) {
    let mut link = Link::new(mode_block);
    link.start_conntrackd();
    let mut us = Us::new(&link, mode);
    if mode == CdMode::Ftfw {
        assert!(
            us.pump_until(Duration::from_secs(10), |u| u.node.handshake_done()),
            "no FTFW handshake with conntrackd: {:?}",
            us.node.stats()
        );
    }
    for args in INSERTS {
        let mut a = vec!["-I"];
        a.extend(args.split_whitespace());
        link.in_cd("conntrack", &a);
    }
    // An FTP control connection with its helper (written with ctsync's own
    // kernel writer: `conntrack -I` sets no helper) and an expectation of
    // it (the kernel takes one only for a master with a helper).
    let mut master = Flow::new(ports("198.18.3.1", 1234, "198.18.4.1", 21, proto::TCP));
    master.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 0,
        wscale_reply: 0,
        flags_orig: 0,
        flags_reply: 0,
    };
    master.status = 0x0e;
    master.timeout = 120;
    master.helper = Some("ftp".into());
    // And a flow with labels (`conntrack -I -l` needs a connlabel.conf).
    lab::create_in(&link.ns_cd, vec![master, labelled()]);
    link.in_cd(
        "conntrack",
        &[
            "-I",
            "expect",
            "-p",
            "tcp",
            "--orig-src",
            "198.18.3.1",
            "--orig-dst",
            "198.18.4.1",
            "--orig-port-src",
            "1234",
            "--orig-port-dst",
            "21",
            "--tuple-src",
            "198.18.4.1",
            "--tuple-dst",
            "198.18.3.1",
            "--tuple-port-src",
            "0",
            "--tuple-port-dst",
            "5000",
            "--mask-src",
            "255.255.255.255",
            "--mask-dst",
            "255.255.255.255",
            "--mask-port-src",
            "0",
            "--mask-port-dst",
            "65535",
            "-t",
            "200",
        ],
    );
    let kernel_exp = link.in_cd("conntrack", &["-L", "expect"]);
    let kernel = kernel_flows(&link);
    assert_eq!(kernel.len(), INSERTS.len() + 2, "{kernel:#?}");
    assert!(
        kernel.iter().any(|k| k.labels.is_some()),
        "no labelled flow"
    );
    let all_there = us.pump_until(Duration::from_secs(15), |u| {
        kernel.iter().all(|k| u.flow(&k.key()).is_some())
            && u.ext.keys().any(|k| matches!(k, Key::Expect(_)))
    });
    assert!(all_there, "missing flows; got {:#?}", us.ext);
    // The expectation decoded is the kernel's: conntrack's own layout of
    // it (`-L expect`, which prints more) contains ours.
    let exp = us
        .ext
        .values()
        .find_map(|o| match o {
            Object::Expect(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        kernel_exp
            .replace(" class=0", "")
            .contains(&exp.to_string())
            && exp.helper.as_deref() == Some("ftp"),
        "decoded {exp:?}\nas {exp}\nkernel: {kernel_exp}"
    );
    // The kernel's timeout leads its line (the helper's 300 s: conntrack
    // 1.4.7's `-I expect` ignores -t, and its `-p tcp` gives proto 19).
    let kernel_timeout: u32 = kernel_exp
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        exp.timeout >= kernel_timeout && exp.timeout <= kernel_timeout + 3,
        "expectation timeout {} against the kernel's {kernel_timeout}",
        exp.timeout
    );
    for k in &kernel {
        let got = us.flow(&k.key()).unwrap();
        assert_eq!(
            carried(got),
            carried(k),
            "decoded flow differs from the kernel's"
        );
        assert!(got.timeout > 0 && got.timeout <= 120);
    }
    // NAT really came through: one SNAT with a port, one DNAT with a port.
    let snat = kernel
        .iter()
        .find(|f| f.orig.src == ip("198.18.1.3"))
        .unwrap();
    assert_eq!(
        us.flow(&snat.key()).unwrap().nat().snat,
        Some(NatBinding {
            addr: ip("198.19.0.1"),
            port: Some(5000)
        })
    );
    let dnat = kernel
        .iter()
        .find(|f| f.orig.src == ip("198.18.1.4"))
        .unwrap();
    assert_eq!(
        us.flow(&dnat.key()).unwrap().nat().dnat,
        Some(NatBinding {
            addr: ip("198.18.9.9"),
            port: Some(5454)
        })
    );
    // The plain flow's message is §3.8's captured layout: the header, the
    // attributes in that order and SYNPROXY zeros (addresses and seq aside;
    // the timeout is what the kernel had left when conntrackd read it, 120
    // or a few seconds less on a loaded machine).
    let plain = kernel.iter().find(|f| f.mark == 5).unwrap();
    let want = section_3_8_bytes(plain);
    let timeout_attr = [0x00, 0x08, 0x00, 0x06, 0x00, 0x00, 0x00, 0x78];
    let at = want
        .windows(timeout_attr.len())
        .position(|w| w == timeout_attr)
        .expect("§3.8's layout has a timeout attribute")
        + 4;
    let found = us.raw.iter().any(|d| {
        d.windows(want.len()).any(|w| {
            let timeout = u32::from_be_bytes([w[at], w[at + 1], w[at + 2], w[at + 3]]);
            w[..4] == want[..4]
                && w[8..at] == want[8..at]
                && (100..=120).contains(&timeout)
                && w[at + 4..] == want[at + 4..]
        })
    });
    assert!(
        found,
        "no message laid out as §3.8's capture: want {want:02x?}"
    );

    // An update and a deletion follow.
    link.in_cd(
        "conntrack",
        &[
            "-U",
            "-s",
            "198.18.1.1",
            "-p",
            "tcp",
            "--sport",
            "1234",
            "-m",
            "9",
        ],
    );
    link.in_cd("conntrack", &["-D", "-s", "198.18.1.4", "-p", "udp"]);
    let followed = us.pump_until(Duration::from_secs(15), |u| {
        u.flow(&plain.key()).is_some_and(|f| f.mark == 9) && u.flow(&dnat.key()).is_none()
    });
    assert!(followed, "update/delete did not follow: {:#?}", us.ext);

    // We forget and ask (`-n` on our side): conntrackd sends everything
    // (ALARM has no resync: its refresh sends everything anyway).
    us.ext.clear();
    us.node.request_resync();
    let resynced = us.pump_until(Duration::from_secs(15), |u| {
        u.flow(&plain.key()).is_some_and(|f| f.mark == 9) && u.ext.len() == INSERTS.len() + 2
    });
    assert!(
        resynced,
        "no bulk from conntrackd after our RESYNC: {:#?}",
        us.ext
    );
    // The flows left, the FTP master, the labelled flow and the expectation.
    assert_eq!(us.ext.len(), INSERTS.len() - 1 + 3, "{:#?}", us.ext);

    if mode == CdMode::Ftfw {
        // Our acks empty conntrackd's resend queue.
        let emptied = us.pump_until(Duration::from_secs(10), |_| rsqueue_len(&link) == Some(0));
        assert!(
            emptied,
            "conntrackd's resend queue: {}",
            link.cd(&["-s", "rsqueue"])
        );
    }
}

/// Objects in conntrackd's resend queue (`-s rsqueue`), if shown.
fn rsqueue_len(link: &Link) -> Option<u64> {
    let text = link.cd(&["-s", "rsqueue"]);
    text.lines()
        .find(|l| l.contains("len"))
        .and_then(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .rfind(|s| !s.is_empty())
        })
        .and_then(|v| v.parse().ok())
}

/// §3.8's captured message for this flow (status 0x0e, TCP ESTABLISHED,
/// timeout 120, mark 5), with its addresses and ports; seq left 0.
fn section_3_8_bytes(f: &Flow) -> Vec<u8> {
    let mut g = Flow::new(f.orig);
    g.status = 0x0e;
    g.timeout = 120;
    g.mark = 5;
    g.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 0,
        wscale_reply: 0,
        flags_orig: 0,
        flags_reply: 0,
    };
    let mut m =
        ctsync::conntrackd_wire::encode_object(&Codec::default(), Op::New, &Object::Flow(g));
    m.extend([0, 0x10, 0, 0x1f]);
    m.extend([0u8; 12]);
    m[2..4].copy_from_slice(&84u16.to_be_bytes());
    m
}

#[test]
fn conntrackd_notrack_to_ours() {
    conntrackd_to_ours(CdMode::Notrack, "Mode NOTRACK { }");
}

#[test]
fn conntrackd_ftfw_to_ours() {
    conntrackd_to_ours(CdMode::Ftfw, "Mode FTFW { }");
}

#[test]
fn conntrackd_alarm_to_ours() {
    conntrackd_to_ours(
        CdMode::Alarm,
        "Mode ALARM { RefreshTime 2 CacheTimeout 10 }",
    );
}

#[test]
fn malformed_datagrams_are_counted_by_reason_and_not_fatal() {
    let mut link = Link::new("Mode NOTRACK { }");
    link.start_conntrackd();
    let mut us = Us::new(&link, CdMode::Notrack);
    let target = us.sock.local_addr().unwrap();
    let good = {
        let mut m = ctsync::conntrackd_wire::encode_object(
            &Codec::default(),
            Op::New,
            &Object::Flow(Flow::new(ports(
                "198.18.5.5",
                1,
                "198.18.6.6",
                2,
                proto::UDP,
            ))),
        );
        m[4..8].copy_from_slice(&7u32.to_be_bytes());
        m
    };
    let mut cases: Vec<(Vec<u8>, Reject)> = vec![
        (good[..5].to_vec(), Reject::Truncated),
        (
            {
                let mut m = good.clone();
                m[2..4].copy_from_slice(&[0, 0]);
                m
            },
            Reject::BadSize,
        ),
        (
            {
                let mut m = good.clone();
                m[0] = 0x20;
                m
            },
            Reject::WrongVersion,
        ),
        (
            Control::Ack { from: 9, to: 1 }.encode(8, 0),
            Reject::MalformedHeader,
        ),
        (
            {
                let mut m = good.clone();
                m[11] = 0x21;
                m
            },
            Reject::MalformedPayload,
        ),
    ];
    // A message of type 7 is malformed header in NOTRACK.
    cases.push((vec![0x17, 0, 0, 8, 0, 0, 0, 9], Reject::MalformedHeader));
    let sender = in_netns(&link.ns_cd, || UdpSocket::bind("0.0.0.0:0").unwrap());
    for (d, _) in &cases {
        sender.send_to(d, target).unwrap();
    }
    us.pump(Duration::from_millis(500));
    let s = us.node.stats();
    for r in Reject::ALL {
        let want = cases.iter().filter(|(_, w)| *w == r).count() as u64;
        assert_eq!(s.rejected(r), want, "{r:?}: {s:?}");
    }
    // Still working: conntrackd's next flow arrives.
    link.in_cd(
        "conntrack",
        &[
            "-I",
            "-s",
            "198.18.1.9",
            "-d",
            "198.18.2.9",
            "-p",
            "udp",
            "--sport",
            "7",
            "--dport",
            "8",
            "-t",
            "60",
        ],
    );
    let key = Flow::new(ports("198.18.1.9", 7, "198.18.2.9", 8, proto::UDP)).key();
    assert!(us.pump_until(Duration::from_secs(10), |u| u.flow(&key).is_some()));
}

// ---- ours → conntrackd ------------------------------------------------------

fn tcp_est(mut f: Flow) -> Flow {
    f.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 0,
        wscale_reply: 0,
        flags_orig: 0,
        flags_reply: 0,
    };
    f.status = 0x0e;
    f
}

fn our_flows() -> Vec<Flow> {
    let mut plain = tcp_est(Flow::new(ports(
        "198.18.3.1",
        1234,
        "198.18.4.1",
        21,
        proto::TCP,
    )));
    plain.mark = 5;
    plain.timeout = 300;
    // The master of the expectation: its helper lets the kernel take it.
    plain.helper = Some("ftp".into());
    let mut snat = tcp_est(
        Flow::new(ports("198.18.3.2", 4321, "198.18.4.1", 443, proto::TCP)).with_nat(Nat {
            snat: Some(NatBinding {
                addr: ip("198.19.0.1"),
                port: Some(5000),
            }),
            dnat: None,
        }),
    );
    snat.status |= 0x10 | 0x80 | 0x100;
    snat.timeout = 300;
    let mut dnat =
        Flow::new(ports("198.18.3.3", 53, "198.18.4.1", 5353, proto::UDP)).with_nat(Nat {
            snat: None,
            dnat: Some(NatBinding {
                addr: ip("198.18.9.9"),
                port: Some(5454),
            }),
        });
    dnat.status = 0x08 | 0x20 | 0x80 | 0x100;
    dnat.timeout = 300;
    let mut icmp = Flow::new(Tuple {
        src: ip("198.18.3.4"),
        dst: ip("198.18.4.1"),
        proto: proto::ICMP,
        l4: L4::Icmp {
            kind: 8,
            code: 0,
            id: 77,
        },
    });
    icmp.status = 0x08;
    icmp.timeout = 30;
    let mut v6 = Flow::new(ports("2001:db8::3", 1000, "2001:db8::4", 2000, proto::UDP));
    v6.zone = 7;
    v6.mark = 3;
    v6.status = 0x08;
    v6.timeout = 300;
    let mut all = vec![plain, snat, dnat, icmp, v6, labelled()];
    // Enough messages that the loss hits data, not only acks.
    for i in 0..200u16 {
        let mut f = Flow::new(ports(
            "198.18.10.1",
            10_000 + i,
            "198.18.11.1",
            53,
            proto::UDP,
        ));
        f.status = 0x08;
        f.timeout = 300;
        all.push(f);
    }
    all
}

fn our_expectation() -> Expectation {
    let ones = ip("255.255.255.255");
    Expectation {
        zone: 0,
        master: ports("198.18.3.1", 1234, "198.18.4.1", 21, proto::TCP),
        tuple: ports("198.18.4.1", 0, "198.18.3.1", 5000, proto::TCP),
        mask: Tuple {
            src: ones,
            dst: ones,
            proto: proto::TCP,
            l4: L4::Ports {
                src: 0,
                dst: 0xffff,
            },
        },
        timeout: 300,
        flags: 0,
        class: 0,
        helper: Some("ftp".into()),
        nat: None,
        expectfn: None,
    }
}

/// `conntrackd -e` lines naming each flow's original tuple.
fn external_has(text: &str, f: &Flow) -> bool {
    let o = &f.orig;
    let mut needle = format!("src={} dst={}", o.src, o.dst);
    match o.l4 {
        L4::Ports { src, dst } => needle.push_str(&format!(" sport={src} dport={dst}")),
        L4::Icmp { kind, code, id } => {
            needle.push_str(&format!(" type={kind} code={code} id={id}"))
        }
        L4::None => {}
    }
    text.lines()
        .any(|l| l.contains(&needle) && (f.mark == 0 || l.contains(&format!("mark={}", f.mark))))
}

fn ours_to_conntrackd(mode: CdMode, mode_block: &str, loss: u32) {
    let mut link = Link::new(mode_block);
    link.start_conntrackd();
    if loss > 0 {
        link.lose(loss);
    }
    let mut us = Us::new(&link, mode);
    if mode == CdMode::Ftfw {
        // HELLO-flagged messages skip conntrackd's sequence check (their
        // losses are never nacked): send data once the handshake is done,
        // as conntrackd's own StartupResync relies on.
        assert!(
            us.pump_until(Duration::from_secs(20), |u| u.node.handshake_done()),
            "no handshake"
        );
    }
    let flows = our_flows();
    // In batches, as events come: many datagrams, so the loss hits data.
    for batch in flows.chunks(8) {
        let now = us.now();
        for f in batch {
            us.node.local_flow(f.clone(), now);
        }
        us.pump(Duration::from_millis(30));
    }
    let now = us.now();
    us.node.local_expect(our_expectation(), now);
    let mut ext = String::new();
    let converged = us.pump_until(Duration::from_secs(40), |_| {
        ext = link.cd(&["-e", "ct"]);
        flows.iter().all(|f| external_has(&ext, f))
    });
    assert!(
        converged,
        "conntrackd -e lacks flows:\n{ext}\nour stats {:?}",
        us.node.stats()
    );
    let mut exp = String::new();
    let got_exp = us.pump_until(Duration::from_secs(20), |_| {
        exp = link.cd(&["-e", "expect"]);
        exp.contains("dport=5000") && exp.contains("master-src=198.18.3.1")
    });
    assert!(got_exp, "conntrackd -e expect: {exp}");
    if loss > 0 {
        let (dropped, rules) = link.dropped();
        assert!(
            dropped > 0,
            "the loss rules dropped nothing; our stats {:?}; the rules:\n{rules}",
            us.node.stats()
        );
        // conntrackd noticed gaps in our stream and we resent on its NACKs.
        assert!(
            us.node.stats().nacked > 0,
            "nothing was nacked: {:?}",
            us.node.stats()
        );
    }
    // An update and a deletion follow.
    let mut upd = flows[0].clone();
    upd.mark = 9;
    let now = us.now();
    us.node.local_flow(upd.clone(), now);
    us.node.local_flow_gone(&flows[2].key(), now);
    let followed = us.pump_until(Duration::from_secs(40), |_| {
        ext = link.cd(&["-e", "ct"]);
        external_has(&ext, &upd) && !external_has(&ext, &flows[2])
    });
    assert!(
        followed,
        "update/delete did not reach conntrackd -e:\n{ext}"
    );

    // conntrackd forgets its external cache and asks us (`-n`): our node
    // answers with a bulk of everything it holds. (conntrackd ignores a
    // flush while it deems a commit in progress: retried.)
    let flushed = us.pump_until(Duration::from_secs(15), |_| {
        link.cd(&["-f", "external"]);
        !external_has(&link.cd(&["-e", "ct"]), &upd)
    });
    assert!(flushed, "-f external kept flows");
    if mode != CdMode::Alarm {
        link.cd(&["-n"]);
    }
    // (ALARM: `-n` does nothing; our refresh brings everything back.)
    let resynced = us.pump_until(Duration::from_secs(40), |_| {
        ext = link.cd(&["-e", "ct"]);
        external_has(&ext, &upd) && flows[3..].iter().all(|f| external_has(&ext, f))
    });
    assert!(resynced, "no bulk after conntrackd -n:\n{ext}");
    if mode != CdMode::Alarm {
        assert!(us.node.stats().resync_requests >= 1);
    }
    // Commit into conntrackd's kernel (after which conntrackd 1.4.7 refuses
    // every flush as "commit still in progress"): the flows equal ours as
    // they are now, NAT included.
    link.cd(&["-c", "ct"]);
    let kernel = kernel_flows(&link);
    let mut flows = flows;
    flows[0] = upd;
    flows.remove(2);
    for f in &flows {
        let k = kernel.iter().find(|k| k.key() == f.key());
        let k = k.unwrap_or_else(|| panic!("{f:?} not committed; kernel {kernel:#?}"));
        assert_eq!(k.reply, f.reply, "reply tuple (NAT) of {:?}", f.orig);
        assert_eq!((k.mark, k.zone), (f.mark, f.zone));
        assert_eq!(k.state.name(), f.state.name());
        assert_eq!(k.helper, f.helper);
        assert_eq!(k.labels, f.labels, "labels of {:?}", f.orig);
    }
    assert_eq!(kernel.len(), flows.len(), "only what we sent is committed");
    // Then the expectation (flows first, as conntrackd commits them).
    let before = link.in_cd("conntrack", &["-L", "expect"]);
    assert!(
        !before.contains("dport=5000"),
        "expectation before the commit: {before}"
    );
    link.cd(&["-c", "expect"]);
    let committed = link.in_cd("conntrack", &["-L", "expect"]);
    assert!(
        committed.contains("src=198.18.4.1 dst=198.18.3.1 sport=0 dport=5000")
            && committed
                .contains("master-src=198.18.3.1 master-dst=198.18.4.1 sport=1234 dport=21")
            && committed.contains("helper=ftp"),
        "conntrack -L expect after -c expect: {committed}"
    );
}

#[test]
fn ours_ftfw_to_conntrackd_with_20_percent_loss() {
    ours_to_conntrackd(CdMode::Ftfw, "Mode FTFW { }", 20);
}

#[test]
fn ours_notrack_to_conntrackd() {
    ours_to_conntrackd(CdMode::Notrack, "Mode NOTRACK { }", 0);
}

#[test]
fn ours_alarm_to_conntrackd() {
    ours_to_conntrackd(
        CdMode::Alarm,
        "Mode ALARM { RefreshTime 2 CacheTimeout 10 }",
        0,
    );
}

/// A restart of either side in FTFW: the restarted one says HELLO (so its
/// new, lower or higher, sequence numbers are taken) and asks for a resync
/// (conntrackd: `StartupResync on`; ours: `request_resync`), which the other
/// answers with a bulk of everything it holds.
#[test]
fn ftfw_restart_of_either_side_resyncs() {
    let mut link = Link::new("Mode FTFW { StartupResync on }");
    link.start_conntrackd();
    let mut us = Us::new(&link, CdMode::Ftfw);
    assert!(us.pump_until(Duration::from_secs(10), |u| u.node.handshake_done()));
    let ours: Vec<Flow> = our_flows().into_iter().skip(5).take(10).collect();
    let now = us.now();
    for f in &ours {
        us.node.local_flow(f.clone(), now);
    }
    let mut ext = String::new();
    let mut has_ours = |us: &mut Us, link: &Link, what: &str| {
        let ok = us.pump_until(Duration::from_secs(20), |_| {
            ext = link.cd(&["-e", "ct"]);
            ours.iter().all(|f| external_has(&ext, f))
        });
        assert!(ok, "{what}: conntrackd -e lacks our flows:\n{ext}");
    };
    has_ours(&mut us, &link, "first sync");
    link.in_cd(
        "conntrack",
        &[
            "-I",
            "-s",
            "198.18.1.1",
            "-d",
            "198.18.2.2",
            "-p",
            "tcp",
            "--sport",
            "1",
            "--dport",
            "2",
            "--state",
            "ESTABLISHED",
            "-t",
            "120",
            "-u",
            "ASSURED,SEEN_REPLY",
        ],
    );
    let theirs = Flow::new(ports("198.18.1.1", 1, "198.18.2.2", 2, proto::TCP)).key();
    assert!(us.pump_until(Duration::from_secs(10), |u| u.flow(&theirs).is_some()));

    // conntrackd restarts: its external cache is empty, StartupResync asks
    // us, and our bulk refills it.
    link.stop_conntrackd();
    us.pump(Duration::from_millis(300));
    link.start_conntrackd();
    let hellos = us.node.stats().hellos;
    has_ours(&mut us, &link, "after conntrackd's restart");
    assert!(us.node.stats().resync_requests >= 1);
    assert!(
        us.node.stats().hellos > hellos,
        "no HELLO from the restarted conntrackd"
    );

    // We restart: a new node whose sequence numbers start lower than the
    // old one's last (the Unix time, a few seconds on, against hundreds of
    // messages sent). conntrackd takes them thanks to HELLO, and our
    // resync request brings its table.
    let sent_before = us.node.stats().messages_sent;
    assert!(
        sent_before > 20,
        "too few messages to make the restart go backwards"
    );
    drop(us);
    let mut us = Us::new(&link, CdMode::Ftfw);
    us.node.request_resync();
    assert!(
        us.pump_until(Duration::from_secs(15), |u| u.flow(&theirs).is_some()),
        "no bulk from conntrackd after our restart: {:?}",
        us.node.stats()
    );
    let mut fresh = Flow::new(ports("198.18.12.1", 7, "198.18.13.1", 8, proto::UDP));
    fresh.timeout = 100;
    fresh.status = 0x08;
    let now = us.now();
    us.node.local_flow(fresh.clone(), now);
    let ok = us.pump_until(Duration::from_secs(15), |_| {
        ext = link.cd(&["-e", "ct"]);
        external_has(&ext, &fresh)
    });
    assert!(ok, "conntrackd dropped our restarted node's flow:\n{ext}");
}

/// The negative control of `conntrackd_ftfw_to_ours`' resend-queue check: a
/// receiver that decodes but never answers leaves conntrackd's messages
/// in its resend queue.
#[test]
fn without_our_acks_conntrackd_keeps_its_messages() {
    let mut link = Link::new("Mode FTFW { }");
    link.start_conntrackd();
    let sock = link.our_socket();
    for args in &INSERTS[..2] {
        let mut a = vec!["-I"];
        a.extend(args.split_whitespace());
        link.in_cd("conntrack", &a);
    }
    let mut buf = vec![0u8; 65536];
    let mut heard = 0;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if sock.recv_from(&mut buf).is_ok() {
            heard += 1;
        }
    }
    assert!(heard > 0, "conntrackd sent nothing");
    let len = rsqueue_len(&link);
    assert!(
        len.is_some_and(|n| n >= 2),
        "resend queue without acks: {}",
        link.cd(&["-s", "rsqueue"])
    );
}
