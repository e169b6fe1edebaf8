//! Real-kernel tests of expectations and RELATED flows (`ctsync::kernel`'s
//! expectation codec, dump, event socket and writer, and the master tuple
//! and sequence adjustment of flows), run as root in network namespaces
//! `cts-x-<pid>-<test>-<role>` that a Drop guard deletes even when a test
//! fails.
//!
//! The read side uses the kernel's own FTP helper (built in or module
//! nf_conntrack_ftp / nf_nat_ftp): a client namespace, a router namespace
//! that assigns the helper with nftables (`ct helper`) and optionally
//! SNATs, and a server namespace; a small FTP-like exchange written here
//! (no FTP server needed) sends `PASV`/`227` or `PORT`. `conntrack -L
//! expect` is the oracle. The write side creates master flows, expectations
//! and RELATED flows through the `Writer` in a namespace without traffic.

use ctsync::expect::{flags, ExpectKey, Expectation};
use ctsync::flow::{proto, status, Flow, ProtoState, SeqAdj, SeqAdjDir, Tuple, L4};
use ctsync::kernel::codec::{encode_create, encode_update_as};
use ctsync::kernel::socket::{messages, NlSocket};
use ctsync::kernel::{
    dump_expectations, dump_table, get_expectation, get_flow, EventKind, EventSocket, ExpectEvent,
    ExpectEventSocket, ExpectOp, KernelError, KernelEvent, WriteOp, Writer,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A network namespace that is deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(test: &str, role: &str) -> Netns {
        let name = format!("cts-x-{}-{test}-{role}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip")
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Netns { name };
        ns.exec_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, cmd: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Run `f` on a new thread that has entered this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Start `f` on a thread in this namespace without waiting for it.
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).expect("open netns");
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd of a netns file; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple {
        src: ip(src),
        dst: ip(dst),
        proto: proto::TCP,
        l4: L4::Ports {
            src: sport,
            dst: dport,
        },
    }
}

const CLIENT: &str = "198.18.1.2";
const SERVER: &str = "198.18.2.2";
const SNAT_TO: &str = "198.19.100.200";

/// Client, router (FTP helper, optional SNAT) and server namespaces.
struct FtpLab {
    client: Netns,
    router: Netns,
    server: Netns,
}

impl FtpLab {
    fn new(test: &str, snat: bool) -> FtpLab {
        require_ftp_helper();
        let lab = FtpLab {
            client: Netns::new(test, "c"),
            router: Netns::new(test, "r"),
            server: Netns::new(test, "s"),
        };
        let (c, r, s) = (&lab.client, &lab.router, &lab.server);
        c.exec_ok(
            "ip",
            &[
                "link", "add", "c0", "type", "veth", "peer", "name", "rc", "netns", &r.name,
            ],
        );
        s.exec_ok(
            "ip",
            &[
                "link", "add", "s0", "type", "veth", "peer", "name", "rs", "netns", &r.name,
            ],
        );
        for (ns, dev, addr) in [
            (c, "c0", "198.18.1.2/24"),
            (r, "rc", "198.18.1.1/24"),
            (r, "rs", "198.18.2.1/24"),
            (s, "s0", "198.18.2.2/24"),
        ] {
            ns.exec_ok("ip", &["addr", "add", addr, "dev", dev]);
            ns.exec_ok("ip", &["link", "set", dev, "up"]);
        }
        c.exec_ok("ip", &["route", "add", "default", "via", "198.18.1.1"]);
        s.exec_ok("ip", &["route", "add", "default", "via", "198.18.2.1"]);
        r.exec_ok("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let mut rules = String::from(
            "table inet cts_ftp {\n\
               ct helper ftp-std { type \"ftp\" protocol tcp; }\n\
               chain pre { type filter hook prerouting priority 0; policy accept;\n\
                 tcp dport 21 ct helper set \"ftp-std\"; }\n\
             }\n",
        );
        if snat {
            rules.push_str(&format!(
                "table ip cts_nat {{\n\
                   chain post {{ type nat hook postrouting priority 100; policy accept;\n\
                     oifname \"rs\" ip saddr 198.18.1.0/24 snat to {SNAT_TO}; }}\n\
                 }}\n"
            ));
        }
        let file = std::env::temp_dir().join(format!("{}.nft", r.name));
        std::fs::write(&file, rules).unwrap();
        r.exec_ok("nft", &["-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        lab
    }
}

/// The kernel's FTP helper, built in or as modules (loaded here if
/// `modprobe` is there; nftables' `ct helper` loads them too). A built-in
/// nf_nat_ftp has no /sys/module entry: its absence shows as a PORT the
/// router did not rewrite.
fn require_ftp_helper() {
    let sys = std::path::Path::new("/sys/module");
    for m in ["nf_conntrack_ftp", "nf_nat_ftp"] {
        if !sys.join(m).exists() {
            let _ = Command::new("modprobe").args(["-q", m]).status();
        }
    }
    assert!(
        sys.join("nf_conntrack_ftp").exists(),
        "the kernel lacks nf_conntrack_ftp (CONFIG_NF_CONNTRACK_FTP)"
    );
}

/// Read one CRLF line.
fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).expect("read line");
    s
}

/// `conntrack -L expect` in `ns`, IPv4 then IPv6 (the tool lists one
/// family at a time): lines without the leading timeout and the `class=`
/// word, which our Display leaves out.
fn conntrack_expect(ns: &Netns) -> Vec<String> {
    let mut out = ns.exec_ok("conntrack", &["-L", "expect", "-f", "ipv4"]);
    out.push_str(&ns.exec_ok("conntrack", &["-L", "expect", "-f", "ipv6"]));
    out.lines()
        .filter(|l| l.contains("proto="))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter(|w| !w.starts_with("class="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Our Display of an expectation, in `conntrack -L expect`'s words.
fn expect_text(e: &Expectation) -> String {
    e.to_string()
}

fn wait_expect_events(es: &mut ExpectEventSocket, want: usize, out: &mut Vec<ExpectEvent>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < want && Instant::now() < deadline {
        match es.recv(out) {
            Ok(()) => {}
            Err(KernelError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("expectation event recv: {e}"),
        }
    }
}

/// Flow events until one satisfies `want` (bounded); all read so far.
fn flow_events_until(
    es: &mut EventSocket,
    within: Duration,
    want: impl Fn(&KernelEvent) -> bool,
) -> Vec<KernelEvent> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while !out.iter().any(&want) && Instant::now() < deadline {
        match es.recv(&mut out) {
            Ok(()) => {}
            Err(KernelError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("flow event recv: {e}"),
        }
    }
    out
}

fn flow_events(ns: &Netns) -> EventSocket {
    ns.run(|| {
        let es = EventSocket::open(1 << 20, 1 << 20).expect("flow event socket");
        es.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        es
    })
}

/// Poll the router's expectations until `n` are there (bounded).
fn wait_expectations(ns: &Netns, n: usize) -> Vec<Expectation> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = ns.run(|| dump_expectations().expect("dump expectations"));
        if got.len() == n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A raw capture of IPv4 packets arriving on one interface (AF_PACKET,
/// cooked), to read the TCP sequence number of a segment.
struct Capture {
    fd: libc::c_int,
}

impl Capture {
    /// Open on `dev` of the calling thread's namespace.
    fn open(dev: &str) -> Capture {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {dev}");
        // SAFETY: sockaddr_ll is plain data; all zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: tv outlives the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Capture { fd }
    }

    /// The sequence number of the first TCP segment to port 21 whose
    /// payload starts with `prefix` (bounded wait).
    fn seq_of(&self, prefix: &[u8]) -> Option<u32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let p = &buf[..n as usize];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < ihl + 20 || p[9] != 6 {
                continue;
            }
            let t = &p[ihl..];
            let dport = u16::from_be_bytes([t[2], t[3]]);
            let doff = usize::from(t[12] >> 4) * 4;
            if dport == 21 && t.get(doff..).is_some_and(|d| d.starts_with(prefix)) {
                return Some(u32::from_be_bytes([t[4], t[5], t[6], t[7]]));
            }
        }
        None
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

fn ones4() -> IpAddr {
    ip("255.255.255.255")
}

/// Passive mode, no NAT: the server's `227` makes the helper expect the
/// client's data connection. Dump, `conntrack -L expect` and the NEW event
/// agree; the data connection is RELATED to the control connection (its
/// master tuple decodes, the control's does not); the expectation's use is
/// reported as DESTROY.
#[test]
fn ftp_passive_expectation_dump_events_and_related_flow() {
    let lab = FtpLab::new("pasv", false);
    let mut flow_es = flow_events(&lab.router);
    let mut es = lab.router.run(|| {
        let es = ExpectEventSocket::open(1 << 20).expect("expectation event socket");
        es.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        es
    });
    let data_port: u16 = 50021;
    // Server: control on 21, data on 50021.
    let (srv_ready_tx, srv_ready_rx) = mpsc::channel();
    let (srv_done_tx, srv_done_rx) = mpsc::channel::<()>();
    let server = lab.server.spawn(move || {
        let ctl = TcpListener::bind((SERVER, 21)).unwrap();
        let data = TcpListener::bind((SERVER, data_port)).unwrap();
        srv_ready_tx.send(()).unwrap();
        let (mut c, _) = ctl.accept().unwrap();
        c.write_all(b"220 ctsync test\r\n").unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let cmd = line(&mut r);
        assert_eq!(cmd, "PASV\r\n");
        let [hi, lo] = data_port.to_be_bytes();
        c.write_all(format!("227 Entering Passive Mode (198,18,2,2,{hi},{lo})\r\n").as_bytes())
            .unwrap();
        let (mut d, _) = data.accept().unwrap();
        let mut got = [0u8; 4];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"data");
        let _ = srv_done_rx.recv_timeout(Duration::from_secs(30));
    });
    srv_ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let (cli_tx, cli_rx) = mpsc::channel::<u16>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let client = lab.client.spawn(move || {
        let c = TcpStream::connect((SERVER, 21)).unwrap();
        let local_port = c.local_addr().unwrap().port();
        let mut r = BufReader::new(c.try_clone().unwrap());
        assert!(line(&mut r).starts_with("220"));
        (&c).write_all(b"PASV\r\n").unwrap();
        assert!(line(&mut r).starts_with("227"));
        cli_tx.send(local_port).unwrap();
        go_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let mut d = TcpStream::connect((SERVER, data_port)).unwrap();
        d.write_all(b"data").unwrap();
        cli_tx.send(d.local_addr().unwrap().port()).unwrap();
        let _ = go_rx.recv_timeout(Duration::from_secs(30));
    });
    let ctl_port = cli_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let control = tcp(CLIENT, ctl_port, SERVER, 21);

    // The expectation, as the kernel's helper made it.
    let dumped = wait_expectations(&lab.router, 1);
    assert_eq!(dumped.len(), 1, "one expectation: {dumped:?}");
    let e = &dumped[0];
    assert_eq!(e.master, control, "master = the control connection");
    assert_eq!(e.tuple, tcp(CLIENT, 0, SERVER, data_port));
    assert_eq!(
        e.mask,
        Tuple {
            src: ones4(),
            dst: ones4(),
            proto: proto::TCP,
            l4: L4::Ports {
                src: 0,
                dst: 0xffff
            }
        }
    );
    assert_eq!(e.helper.as_deref(), Some("ftp"));
    assert_eq!((e.flags, e.class, e.nat, e.zone), (0, 0, None, 0));
    assert!(e.timeout > 250 && e.timeout <= 300, "timeout {}", e.timeout);
    assert_eq!(conntrack_expect(&lab.router), vec![expect_text(e)]);

    let mut events = Vec::new();
    wait_expect_events(&mut es, 1, &mut events);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::New);
    assert_eq!(events[0].portid, 0, "the helper's, not a socket's");
    assert!(events[0].expect.same_state(e), "{:?}", events[0]);

    // The data connection consumes the expectation.
    go_tx.send(()).unwrap();
    let data_sport = cli_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    wait_expect_events(&mut es, 2, &mut events);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].kind, EventKind::Destroy);
    assert!(events[1].expect.same_state(e), "{:?}", events[1]);
    assert!(wait_expectations(&lab.router, 0).is_empty());

    let flows = lab.router.run(|| dump_table().unwrap());
    let data = tcp(CLIENT, data_sport, SERVER, data_port);
    // The NEW event of the data connection carries its master too.
    let evs = flow_events_until(&mut flow_es, Duration::from_secs(5), |ev| {
        ev.kind == EventKind::New && ev.flow.orig == data
    });
    let new = evs
        .iter()
        .find(|ev| ev.kind == EventKind::New && ev.flow.orig == data)
        .unwrap_or_else(|| panic!("NEW event of {data}: {evs:?}"));
    assert_eq!(new.flow.master, Some(control), "master in the NEW event");
    let data_flow = flows
        .iter()
        .find(|f| f.orig == data)
        .unwrap_or_else(|| panic!("data flow {data} in {flows:?}"));
    assert_eq!(data_flow.master, Some(control), "RELATED: master tuple");
    assert!(data_flow.status & status::EXPECTED != 0);
    let ctl_flow = flows.iter().find(|f| f.orig == control).unwrap();
    assert_eq!(ctl_flow.master, None, "the control connection has none");
    assert_eq!(ctl_flow.helper.as_deref(), Some("ftp"));
    assert_eq!(ctl_flow.seq_adj, None, "no NAT, no sequence adjustment");
    assert_eq!(es.decode_errors(), 0);

    let _ = go_tx.send(());
    let _ = srv_done_tx.send(());
    client.join().unwrap();
    server.join().unwrap();
}

/// Active mode through SNAT: the router's helper rewrites the client's
/// `PORT` to the SNAT address (longer by 4 characters), which gives the
/// control flow a sequence adjustment, and expects the server's data
/// connection to the SNAT address with a NAT binding back to the client.
#[test]
fn ftp_port_under_snat_gives_seq_adj_and_a_nat_expectation() {
    let lab = FtpLab::new("port", true);
    let capture = lab.router.run(|| Capture::open("rc"));
    let mut flow_es = flow_events(&lab.router);
    let data_port: u16 = 50022;
    let (srv_ready_tx, srv_ready_rx) = mpsc::channel();
    let (srv_cmd_tx, srv_cmd_rx) = mpsc::channel::<String>();
    let (srv_go_tx, srv_go_rx) = mpsc::channel::<()>();
    let server = lab.server.spawn(move || {
        let ctl = TcpListener::bind((SERVER, 21)).unwrap();
        srv_ready_tx.send(()).unwrap();
        let (mut c, _) = ctl.accept().unwrap();
        c.write_all(b"220 ctsync test\r\n").unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        assert!(line(&mut r).starts_with("USER"));
        c.write_all(b"331 any password\r\n").unwrap();
        let cmd = line(&mut r);
        c.write_all(b"200 PORT ok\r\n").unwrap();
        srv_cmd_tx.send(cmd.clone()).unwrap();
        srv_go_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        // Connect back to the address and port the (rewritten) PORT named.
        let mut d = TcpStream::connect((SNAT_TO, data_port)).unwrap();
        d.write_all(b"data").unwrap();
        srv_cmd_tx
            .send(d.local_addr().unwrap().port().to_string())
            .unwrap();
        let _ = srv_go_rx.recv_timeout(Duration::from_secs(30));
    });
    srv_ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let (cli_tx, cli_rx) = mpsc::channel::<u16>();
    let (cli_go_tx, cli_go_rx) = mpsc::channel::<()>();
    let client = lab.client.spawn(move || {
        let data = TcpListener::bind((CLIENT, data_port)).unwrap();
        let c = TcpStream::connect((SERVER, 21)).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        assert!(line(&mut r).starts_with("220"));
        // The helper reads a direction only after its first line (it
        // learns where lines start), as in a real session: USER first.
        (&c).write_all(b"USER anonymous\r\n").unwrap();
        assert!(line(&mut r).starts_with("331"));
        let [hi, lo] = data_port.to_be_bytes();
        (&c).write_all(format!("PORT 198,18,1,2,{hi},{lo}\r\n").as_bytes())
            .unwrap();
        assert!(line(&mut r).starts_with("200"));
        cli_tx.send(c.local_addr().unwrap().port()).unwrap();
        let (mut d, _) = data.accept().unwrap();
        let mut got = [0u8; 4];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"data");
        let _ = cli_go_rx.recv_timeout(Duration::from_secs(30));
    });
    let ctl_port = cli_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let cmd = srv_cmd_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let [hi, lo] = data_port.to_be_bytes();
    assert_eq!(
        cmd,
        format!("PORT 198,19,100,200,{hi},{lo}\r\n"),
        "the router's helper rewrote PORT"
    );
    let control = tcp(CLIENT, ctl_port, SERVER, 21);

    let dumped = wait_expectations(&lab.router, 1);
    assert_eq!(dumped.len(), 1, "{dumped:?}");
    let e = &dumped[0];
    assert_eq!(e.master, control);
    assert_eq!(e.tuple, tcp(SERVER, 0, SNAT_TO, data_port));
    let nat = e
        .nat
        .expect("a NATed master's expectation has CTA_EXPECT_NAT");
    assert_eq!(
        nat.dir, 1,
        "the expected connection comes in reply direction"
    );
    // nf_nat_ftp saves only the port (the address comes from the master).
    assert_eq!(nat.tuple.src, ip("0.0.0.0"), "no saved address");
    assert_eq!(nat.tuple.ports(), Some((data_port, 0)), "saved port");
    assert_eq!(e.expectfn.as_deref(), Some("nat-follow-master"));
    assert_eq!(conntrack_expect(&lab.router), vec![expect_text(e)]);

    let flows = lab.router.run(|| dump_table().unwrap());
    let ctl_flow = flows.iter().find(|f| f.orig == control).unwrap();
    assert!(ctl_flow.status & status::SEQ_ADJUST != 0);
    let adj = ctl_flow
        .seq_adj
        .expect("seq_adj of the rewritten control flow");
    assert_eq!(
        (adj.orig.offset_before, adj.orig.offset_after),
        (0, 4),
        "\"198,18,1,2\" became \"198,19,100,200\": 4 bytes more"
    );
    let port_seq = capture.seq_of(b"PORT").expect("the PORT segment captured");
    assert_eq!(
        adj.orig.correction_pos, port_seq,
        "the kernel corrects from the PORT segment on"
    );
    assert_eq!(
        adj.reply,
        SeqAdjDir::default(),
        "no rewrite server -> client"
    );

    // No event carries the adjustment (the kernel sends none when a helper
    // sets it): a read of the flow by key does.
    let evs = flow_events_until(&mut flow_es, Duration::from_millis(500), |ev| {
        ev.flow.seq_adj.is_some()
    });
    let key = ctl_flow.key();
    let got = lab.router.run(move || get_flow(&key).unwrap());
    assert_eq!(got.and_then(|f| f.seq_adj), Some(adj), "get_flow");
    if evs.iter().any(|ev| ev.flow.seq_adj.is_some()) {
        eprintln!("note: this kernel reports the sequence adjustment in an event");
    }

    // The server's data connection arrives through the expectation.
    srv_go_tx.send(()).unwrap();
    let sport: u16 = srv_cmd_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .parse()
        .unwrap();
    let flows = lab.router.run(|| dump_table().unwrap());
    let data_flow = flows
        .iter()
        .find(|f| f.orig == tcp(SERVER, sport, SNAT_TO, data_port))
        .unwrap_or_else(|| panic!("data flow in {flows:?}"));
    assert_eq!(data_flow.master, Some(control));
    assert_eq!(data_flow.reply.src, ip(CLIENT), "DNAT back to the client");

    // What the router holds, committed into a standby: control flow (NAT,
    // helper, sequence adjustment), the expectation (NAT, expectfn) and the
    // RELATED data flow come back equal.
    let standby = Netns::new("port", "b");
    let ctl_flow = ctl_flow.clone();
    let data_flow = data_flow.clone();
    let want_exp = e.clone();
    let (flows_b, exps_b) = {
        let (c, d, x) = (ctl_flow.clone(), data_flow.clone(), want_exp.clone());
        standby.run(move || {
            let mut w = Writer::open().unwrap();
            let rep = w.apply(&[WriteOp::Create(c), WriteOp::Create(d)]);
            assert_eq!((rep.ok, rep.failed), (2, 0), "{rep:?}");
            let rep = w.apply_expectations(&[ExpectOp::Create(x)]);
            assert_eq!((rep.ok, rep.failed), (1, 0), "{rep:?}");
            (dump_table().unwrap(), dump_expectations().unwrap())
        })
    };
    let got = flows_b.iter().find(|f| f.orig == control).unwrap();
    assert_eq!(got.reply, ctl_flow.reply, "SNAT binding");
    assert_eq!(got.seq_adj, ctl_flow.seq_adj);
    assert_eq!(got.helper.as_deref(), Some("ftp"));
    let got = flows_b.iter().find(|f| f.orig == data_flow.orig).unwrap();
    assert_eq!(got.master, Some(control));
    assert_eq!(got.reply, data_flow.reply);
    assert_eq!(exps_b.len(), 1, "{exps_b:?}");
    assert!(
        exps_b[0].same_state(&want_exp),
        "{:?} vs {want_exp:?}",
        exps_b[0]
    );
    assert_eq!(conntrack_expect(&standby), vec![expect_text(&want_exp)]);

    let _ = srv_go_tx.send(());
    let _ = cli_go_tx.send(());
    client.join().unwrap();
    server.join().unwrap();
}

fn master_flow() -> Flow {
    let mut f = Flow::new(tcp("198.18.0.1", 40000, "198.18.0.2", 21));
    f.status = status::SEEN_REPLY | status::ASSURED;
    f.timeout = 600;
    f.helper = Some("ftp".into());
    f.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 7,
        wscale_reply: 7,
        flags_orig: 0x01,
        flags_reply: 0x01,
    };
    f.seq_adj = Some(SeqAdj {
        orig: SeqAdjDir {
            correction_pos: 1_000_000,
            offset_before: 0,
            offset_after: 4,
        },
        reply: SeqAdjDir {
            correction_pos: 2_000_000,
            offset_before: 0,
            offset_after: (-4i32) as u32,
        },
    });
    f
}

fn ftp_expectation(port: u16, timeout: u32) -> Expectation {
    Expectation {
        zone: 0,
        master: master_flow().orig,
        tuple: tcp("198.18.0.2", 0, "198.18.0.1", port),
        mask: Tuple {
            src: ones4(),
            dst: ones4(),
            proto: proto::TCP,
            l4: L4::Ports {
                src: 0,
                dst: 0xffff,
            },
        },
        timeout,
        flags: 0,
        class: 0,
        helper: Some("ftp".into()),
        nat: None,
        expectfn: None,
    }
}

/// The write side in one namespace: a master flow with a sequence
/// adjustment, expectations (refused without their master, created,
/// replaced on EEXIST, deleted, flushed) and RELATED flows (attached,
/// updated, and detached when their master is missing).
#[test]
fn writer_creates_masters_expectations_and_related_flows() {
    let ns = Netns::new("write", "w");
    let result = ns.run(move || {
        let mut es = ExpectEventSocket::open(1 << 20).unwrap();
        es.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut w = Writer::open().unwrap();
        let exp = ftp_expectation(5000, 120);

        // Negative control: no master flow yet.
        let rep = w.apply_expectations(&[ExpectOp::Create(exp.clone())]);
        assert_eq!((rep.ok, rep.failed), (0, 1), "{rep:?}");
        assert_eq!(rep.failed_keys, vec![(exp.key(), libc::ENOENT)]);
        assert!(
            rep.first_errors[0].contains("ENOENT") && rep.first_errors[0].contains("dport=5000"),
            "{:?}",
            rep.first_errors
        );
        assert!(dump_expectations().unwrap().is_empty());

        // The master, with helper and sequence adjustment.
        let master = master_flow();
        let rep = w.apply(&[WriteOp::Create(master.clone())]);
        assert_eq!(rep.failed, 0, "{rep:?}");
        let flows = dump_table().unwrap();
        let got = flows.iter().find(|f| f.orig == master.orig).unwrap();
        assert_eq!(got.seq_adj, master.seq_adj, "seq_adj read back");
        assert!(got.status & status::SEQ_ADJUST != 0);
        assert_eq!(got.helper.as_deref(), Some("ftp"));
        assert_eq!(got.master, None);
        assert_eq!(
            get_flow(&master.key()).unwrap().map(|f| f.seq_adj),
            Some(master.seq_adj)
        );
        let mut absent = master.key();
        absent.orig.l4 = L4::Ports { src: 1, dst: 21 };
        assert_eq!(get_flow(&absent).unwrap(), None, "get of an absent flow");

        // The expectation; its timeout is the one asked for, not the
        // helper's 300 s.
        let rep = w.apply_expectations(&[ExpectOp::Create(exp.clone())]);
        assert_eq!((rep.ok, rep.failed), (1, 0), "{rep:?}");
        let dumped = dump_expectations().unwrap();
        assert_eq!(dumped.len(), 1, "{dumped:?}");
        assert!(dumped[0].same_state(&exp), "{:?} vs {exp:?}", dumped[0]);
        assert!(
            dumped[0].timeout <= 120 && dumped[0].timeout >= 110,
            "timeout {}",
            dumped[0].timeout
        );
        let mut events = Vec::new();
        wait_expect_events(&mut es, 1, &mut events);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].kind, events[0].portid),
            (EventKind::New, w.portid())
        );
        // Read back by its expected tuple in its zone (0), not in zone 7.
        let got = get_expectation(&exp.key()).unwrap();
        assert!(got.is_some_and(|g| g.same_state(&exp)), "get in zone 0");
        let elsewhere = ExpectKey {
            zone: 7,
            ..exp.key()
        };
        assert_eq!(get_expectation(&elsewhere).unwrap(), None, "get in zone 7");

        // What the kernel refuses: a class beyond the helper's (FTP has
        // one), an unknown expectfn. (An unknown helper name is taken by
        // kernel 6.18 as no helper, so it is not checked here.)
        let mut bad_class = ftp_expectation(5010, 60);
        bad_class.class = 1;
        let mut bad_fn = ftp_expectation(5011, 60);
        bad_fn.expectfn = Some("no-such-fn".into());
        let rep = w.apply_expectations(&[
            ExpectOp::Create(bad_class.clone()),
            ExpectOp::Create(bad_fn.clone()),
        ]);
        assert_eq!(
            rep.failed_keys,
            vec![
                (bad_class.key(), libc::EINVAL),
                (bad_fn.key(), libc::EINVAL)
            ],
            "{rep:?}"
        );
        assert_eq!(dump_expectations().unwrap().len(), 1);

        // Again: EEXIST, replaced.
        let mut flagged = exp.clone();
        flagged.flags = flags::PERMANENT;
        let rep = w.apply_expectations(&[ExpectOp::Create(flagged.clone())]);
        assert_eq!((rep.ok, rep.failed), (1, 0), "{rep:?}");
        let dumped = dump_expectations().unwrap();
        assert_eq!(dumped.len(), 1, "{dumped:?}");
        assert!(dumped[0].same_state(&flagged), "replaced: {:?}", dumped[0]);

        // A RELATED flow attached to the master.
        let mut related = Flow::new(tcp("198.18.0.2", 20, "198.18.0.1", 6000));
        related.status = status::SEEN_REPLY | status::ASSURED;
        related.timeout = 300;
        related.master = Some(master.orig);
        // A RELATED flow whose master is not there: created unattached.
        let mut orphan = Flow::new(tcp("198.18.0.2", 20, "198.18.0.1", 6001));
        orphan.timeout = 300;
        orphan.master = Some(tcp("198.18.0.9", 1, "198.18.0.2", 21));
        let rep = w.apply(&[
            WriteOp::Create(related.clone()),
            WriteOp::Create(orphan.clone()),
        ]);
        assert_eq!((rep.ok, rep.failed), (2, 0), "{rep:?}");
        let flows = dump_table().unwrap();
        let got = flows.iter().find(|f| f.orig == related.orig).unwrap();
        assert_eq!(got.master, Some(master.orig), "RELATED read back");
        assert!(got.status & status::EXPECTED != 0);
        let got = flows.iter().find(|f| f.orig == orphan.orig).unwrap();
        assert_eq!(got.master, None, "orphan created without master");
        assert!(got.status & status::EXPECTED == 0);

        // A RELATED flow before its master in one batch: attached all the
        // same (it is tried again after the rest of the batch).
        let mut master3 = master_flow();
        master3.orig = tcp("198.18.0.1", 40003, "198.18.0.2", 21);
        master3.reply = master3.orig.inverted();
        let mut early = Flow::new(tcp("198.18.0.2", 20, "198.18.0.1", 6003));
        early.timeout = 300;
        early.master = Some(master3.orig);
        let rep = w.apply(&[WriteOp::Create(early.clone()), WriteOp::Create(master3)]);
        assert_eq!((rep.ok, rep.failed), (2, 0), "{rep:?}");
        let got = get_flow(&early.key()).unwrap().expect("early flow");
        assert_eq!(got.master, early.master, "attached after its master");

        // An update of the RELATED flow keeps EXPECTED (the kernel refuses
        // any change of it) ...
        let mut marked = related.clone();
        marked.mark = 7;
        let rep = w.apply(&[WriteOp::Update(marked.clone())]);
        assert_eq!((rep.ok, rep.failed), (1, 0), "{rep:?}");
        let flows = dump_table().unwrap();
        assert_eq!(
            flows.iter().find(|f| f.orig == related.orig).unwrap().mark,
            7
        );
        // ... as a raw update without the bit shows.
        let sock = NlSocket::open().unwrap();
        let mut buf = Vec::new();
        encode_update_as(&mut buf, &marked, 77, false);
        sock.send(&buf).unwrap();
        let mut rbuf = Vec::with_capacity(65536);
        sock.recv(&mut rbuf).unwrap();
        let errno = messages(&rbuf).find_map(|m| m.ok().and_then(|m| m.error()));
        assert_eq!(errno, Some(libc::EBUSY), "update clearing EXPECTED");
        // ... and an update carrying the master is refused: the create's
        // bytes without CREATE|EXCL.
        let mut buf = Vec::new();
        encode_create(&mut buf, &marked, 78, &Default::default());
        buf[6..8].copy_from_slice(&1u16.to_ne_bytes());
        sock.send(&buf).unwrap();
        sock.recv(&mut rbuf).unwrap();
        let errno = messages(&rbuf).find_map(|m| m.ok().and_then(|m| m.error()));
        assert_eq!(errno, Some(libc::EOPNOTSUPP), "update with a master");
        // The orphan's update (master in the flow, not in the kernel)
        // succeeds through the flipped retry.
        let mut orphan2 = orphan.clone();
        orphan2.mark = 8;
        let rep = w.apply(&[WriteOp::Update(orphan2)]);
        assert_eq!((rep.ok, rep.failed), (1, 0), "{rep:?}");

        // Delete, then flush.
        let rep = w.apply_expectations(&[ExpectOp::Delete(exp.key())]);
        assert_eq!((rep.ok, rep.failed), (1, 0), "{rep:?}");
        assert!(dump_expectations().unwrap().is_empty());
        let rep = w.apply_expectations(&[ExpectOp::Delete(exp.key())]);
        assert_eq!(
            (rep.ok, rep.failed),
            (1, 0),
            "a second delete is ENOENT: ok"
        );
        // The FTP helper keeps one expectation per master (a newer one
        // evicts the older): the second is for a second master.
        let mut master2 = master_flow();
        master2.orig = tcp("198.18.0.1", 40001, "198.18.0.2", 21);
        master2.reply = master2.orig.inverted();
        let rep = w.apply(&[WriteOp::Create(master2.clone())]);
        assert_eq!(rep.failed, 0, "{rep:?}");
        let mut second = ftp_expectation(5002, 100);
        second.master = master2.orig;
        let two = [ftp_expectation(5000, 100), second];
        let rep = w.apply_expectations(&[
            ExpectOp::Create(two[0].clone()),
            ExpectOp::Create(two[1].clone()),
        ]);
        assert_eq!((rep.ok, rep.failed), (2, 0), "{rep:?}");
        assert_eq!(dump_expectations().unwrap().len(), 2);
        two
    });
    // Seen by the conntrack tool, exactly.
    let mut want: Vec<String> = result.iter().map(expect_text).collect();
    want.sort();
    let mut got = conntrack_expect(&ns);
    got.sort();
    assert_eq!(got, want);
    ns.run(|| Writer::open().unwrap().flush_expectations().unwrap());
    assert!(conntrack_expect(&ns).is_empty(), "flushed");
    assert!(ns.run(|| dump_expectations().unwrap()).is_empty());
}

/// A socket that is not read while expectations are made loses events and
/// says so (ENOBUFS -> `Overrun`), as the flow event socket does.
#[test]
fn expectation_event_overrun_is_reported() {
    let ns = Netns::new("overrun", "o");
    let (first, overruns) = ns.run(|| {
        // The smallest buffer the kernel allows (about 2 KiB).
        let mut es = ExpectEventSocket::open(1).unwrap();
        es.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut w = Writer::open().unwrap();
        // One master per expectation: the FTP helper keeps one each.
        let masters: Vec<Flow> = (0..64u16)
            .map(|i| {
                let mut m = master_flow();
                m.orig = tcp("198.18.0.1", 41000 + i, "198.18.0.2", 21);
                m.reply = m.orig.inverted();
                m.seq_adj = None;
                m
            })
            .collect();
        let ops: Vec<WriteOp> = masters.iter().cloned().map(WriteOp::Create).collect();
        assert_eq!(w.apply(&ops).failed, 0);
        let exps: Vec<ExpectOp> = masters
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut e = ftp_expectation(6000 + i as u16, 60);
                e.master = m.orig;
                ExpectOp::Create(e)
            })
            .collect();
        let rep = w.apply_expectations(&exps);
        assert_eq!((rep.ok, rep.failed), (64, 0), "{rep:?}");
        let mut out = Vec::new();
        let mut first = None;
        for _ in 0..200 {
            match es.recv(&mut out) {
                Ok(()) => {}
                Err(e) => {
                    first = Some(e);
                    break;
                }
            }
        }
        (first, es.overruns())
    });
    assert!(
        matches!(first, Some(KernelError::Overrun)),
        "first error: {first:?}"
    );
    assert_eq!(overruns, 1);
}

/// IPv6: a master flow and its expectation written, dumped and listed by
/// `conntrack -L expect` alike (16-byte addresses and masks).
#[test]
fn writer_ipv6_expectation_round_trips() {
    let ns = Netns::new("v6", "6");
    let mut master = master_flow();
    master.orig = tcp("2001:db8::1", 40000, "2001:db8::2", 21);
    master.reply = master.orig.inverted();
    let ones6 = ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    let mut e = ftp_expectation(5000, 90);
    e.master = master.orig;
    e.tuple = tcp("2001:db8::2", 0, "2001:db8::1", 5000);
    e.mask.src = ones6;
    e.mask.dst = ones6;
    let (m, x) = (master.clone(), e.clone());
    let (flows, dumped) = ns.run(move || {
        let mut w = Writer::open().unwrap();
        assert_eq!(w.apply(&[WriteOp::Create(m)]).failed, 0);
        let rep = w.apply_expectations(&[ExpectOp::Create(x)]);
        assert_eq!((rep.ok, rep.failed), (1, 0), "{rep:?}");
        (dump_table().unwrap(), dump_expectations().unwrap())
    });
    let got = flows.iter().find(|f| f.orig == master.orig).unwrap();
    assert_eq!(got.seq_adj, master.seq_adj);
    assert_eq!(dumped.len(), 1, "{dumped:?}");
    assert!(dumped[0].same_state(&e), "{:?} vs {e:?}", dumped[0]);
    assert_eq!(conntrack_expect(&ns), vec![expect_text(&e)]);
}
