//! ctsyncd with a `[[link]] protocol = "conntrackd"` against the real
//! conntrackd 1.4.7 from Debian, daemon to daemon, over UDP between two
//! network namespaces the test creates (one runs ctsyncd, the other
//! conntrackd):
//!
//! - every mode (FTFW, NOTRACK, ALARM; ctsyncd's `[sync] mode` matching
//!   conntrackd's `Mode`), both ways at once: flows made with `conntrack
//!   -I` on each side (SNAT and DNAT with ports, ICMP under SNAT, a mark,
//!   IPv6 in a zone) and an FTP control connection with its helper and an
//!   expectation of it reach the other side's external cache (ctsyncd `-e
//!   --json` / `-e expect --json`, conntrackd `-e ct` / `-e expect`);
//!   conntrackd forgets its external cache and asks (`-f external`, `-n`;
//!   ALARM: our refresh) and gets everything back, as does ctsyncd
//!   (`-f external`, `-n`; ALARM: conntrackd's refresh); ctsyncd `-c` and
//!   conntrackd `-c ct`, `-c expect` commit into their kernels, after
//!   which both kernels hold the same flows (`conntrack -L`, NAT
//!   included, timeouts aside) and the same expectations (`conntrack -L
//!   expect`); a mark change and a deletion on each side follow.
//! - warm standby writes conntrackd's flows and expectation into
//!   ctsyncd's kernel without a commit, equal to conntrackd's kernel; a
//!   deletion follows.
//! - a restart of either side resyncs (FTFW): conntrackd with
//!   `StartupResync on` gets our table, a restarted ctsyncd asks and gets
//!   conntrackd's.
//! - 20% loss each way in FTFW (after the handshake) converges.
//! - flows (and an expectation) whose events an overrun lost, found by
//!   the re-reads that heal it, reach conntrackd too; the periodic
//!   re-reads after that resend nothing; deletes an overrun lost reach
//!   conntrackd the same way.
//! - malformed datagrams sent to ctsyncd's conntrackd link are counted by
//!   reason in `-s --json` (`conntrackd_link.malformed_by_reason`) and the
//!   daemon goes on.
//! - the negative control: ctsyncd on its own protocol ("ctsync") on the
//!   same link gives conntrackd nothing and takes nothing from it.
//! - the refills: a ctsyncd started on a table of 2,000 flows sends them
//!   all to conntrackd, and after conntrackd forgets them, the new
//!   primary's `-c`, `-f`, `-R`, `-B` sends them all again (the link's
//!   record was emptied by `-f`: only the walk of the internal cache has
//!   them).
//! - `ctsyncd doctor` on this node judges the conntrackd peer (ok while
//!   heard, critical once conntrackd stops) and expects no ctsync peer;
//!   the link's metrics say the peer is heard.
//!
//! Owns: two namespaces per test joined by a veth pair, the two daemons
//! and their files; all removed on drop, even when a test fails. Network
//! safety: 198.18.0.0/15 and 2001:db8::/32 only, inside those namespaces.
//! Needs root, `conntrack`, `conntrackd`, `nft` and the kernel's FTP helper.

mod lab;

use ctsync::conntrackd_wire::header::{Control, Reject};
use ctsync::conntrackd_wire::{encode_object, Codec, Object, Op};
use ctsync::expect::Expectation;
use ctsync::flow::{proto, status, Flow, ProtoState, Tuple, L4};
use ctsync::kernel::write::Writer;
use ctsync::kernel::ExpectOp;
use lab::{in_netns, must, normalise_conntrack, reap, run, wait_until, Node};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);
const PORT: u16 = 3780;
const WAIT: Duration = Duration::from_secs(30);
/// How long a control waits for what must not come (the positive cases
/// arrive within a second or two).
const QUIET: Duration = Duration::from_secs(5);

/// conntrackd in one namespace, ctsyncd in the other.
struct Pair {
    dir: PathBuf,
    ns_cd: String,
    net: u8,
    conf: PathBuf,
    conntrackd: Option<Child>,
    us: Node,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.us.kill(libc::SIGTERM);
        if let Some(mut c) = self.conntrackd.take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            reap(&mut c, Duration::from_secs(5));
        }
        let _ = run("ip", &["netns", "del", &self.ns_cd]);
        let _ = run("ip", &["netns", "del", &self.us.ns]);
        if std::thread::panicking() {
            eprintln!("files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What a pair runs: conntrackd's `Mode` block and ctsyncd's matching mode.
struct Setup {
    cd_mode: &'static str,
    our_mode: &'static str,
    /// ctsyncd's link protocol ("conntrackd"; "ctsync" for the control).
    protocol: &'static str,
    /// ctsyncd's `[kernel] reconcile_interval_s` (0: events only).
    reread_s: u32,
    /// Extra lines for ctsyncd's `[sync]`.
    sync_extra: &'static str,
}

impl Setup {
    fn new(cd_mode: &'static str, our_mode: &'static str) -> Setup {
        Setup {
            cd_mode,
            our_mode,
            protocol: "conntrackd",
            reread_s: 0,
            sync_extra: "",
        }
    }
}

impl Pair {
    fn new(setup: &Setup) -> Pair {
        for m in ["nf_conntrack", "nf_nat", "nf_conntrack_ftp", "nf_nat_ftp"] {
            let _ = Command::new("modprobe").args(["-q", m]).status();
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id() % 100_000;
        let tag = format!("cdl{pid}x{n}");
        let dir = std::env::temp_dir().join(format!("ctsync-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let net = 100 + (pid % 50) as u8 * 2 + n as u8 % 2;
        let us = Node {
            name: "ctsyncd".into(),
            ns: format!("{tag}u"),
            config: dir.join("ctsyncd.toml"),
            socket: dir.join("ctsyncd.sock"),
            log: dir.join("ctsyncd.log"),
            daemon: None,
            unit_binary: None,
        };
        let pair = Pair {
            conf: dir.join("conntrackd.conf"),
            dir,
            ns_cd: format!("{tag}c"),
            net,
            conntrackd: None,
            us,
        };
        must("ip", &["netns", "add", &pair.ns_cd]);
        must("ip", &["netns", "add", &pair.us.ns]);
        let (vc, vu) = (format!("{tag}c0"), format!("{tag}u0"));
        must(
            "ip",
            &["link", "add", &vc, "type", "veth", "peer", "name", &vu],
        );
        must("ip", &["link", "set", &vc, "netns", &pair.ns_cd]);
        must("ip", &["link", "set", &vu, "netns", &pair.us.ns]);
        for (ns, dev, host) in [(&pair.ns_cd, &vc, 1), (&pair.us.ns, &vu, 2)] {
            let addr = format!("198.18.{net}.{host}/24");
            // No IPv6 link-local address: no neighbour discovery flows.
            must("ip", &["-n", ns, "link", "set", dev, "addrgenmode", "none"]);
            must("ip", &["-n", ns, "addr", "add", &addr, "dev", dev]);
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        let d = pair.dir.display();
        let conf = format!(
            "General {{\n HashSize 8192\n HashLimit 65536\n Syslog off\n LogFile {d}/conntrackd.log\n \
             LockFile {d}/conntrackd.lock\n UNIX {{ Path {d}/conntrackd.ctl }}\n \
             NetlinkBufferSize 2097152\n NetlinkBufferSizeMaxGrowth 8388608\n \
             Filter From Kernelspace {{ Address Ignore {{ IPv4_address 198.18.{net}.0/24 }} }}\n}}\n\
             Sync {{\n {mode}\n UDP Default {{\n  IPv4_address 198.18.{net}.1\n  \
             IPv4_Destination_Address 198.18.{net}.2\n  Port {PORT}\n  Interface {vc}\n  Checksum on\n }}\n \
             Options {{ ExpectationSync on }}\n}}\n",
            mode = setup.cd_mode
        );
        std::fs::write(&pair.conf, conf).unwrap();
        let toml = format!(
            "node_id = 1\nsocket = \"{sock}\"\n\n[sync]\nmode = \"{mode}\"\nexpectations = \"all\"\n\
             alarm_refresh_s = 2\nalarm_timeout_s = 10\n{extra}\n\n[kernel]\nreconcile_interval_s = {reread}\n\n\
             [filter]\naddress = {{ policy = \"ignore\", list = [\"198.18.{net}.0/24\"] }}\n\n\
             [[link]]\ntransport = \"udp\"\ninterface = \"{vu}\"\nlocal = \"198.18.{net}.2\"\n\
             peer = \"198.18.{net}.1\"\nport = {PORT}\nprotocol = \"{protocol}\"\n",
            sock = pair.us.socket.display(),
            mode = setup.our_mode,
            protocol = setup.protocol,
            reread = setup.reread_s,
            extra = setup.sync_extra,
        );
        std::fs::write(&pair.us.config, toml).unwrap();
        pair
    }

    fn start_conntrackd(&mut self) {
        assert!(self.conntrackd.is_none());
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_cd, "conntrackd", "-C"])
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn conntrackd");
        self.conntrackd = Some(child);
        let ctl = self.dir.join("conntrackd.ctl");
        assert!(
            wait_until(Duration::from_secs(10), || ctl.exists()),
            "conntrackd did not start: {}",
            std::fs::read_to_string(self.dir.join("conntrackd.log")).unwrap_or_default()
        );
    }

    fn stop_conntrackd(&mut self) {
        if let Some(mut c) = self.conntrackd.take() {
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

    /// Both daemons, ctsyncd second (it asks conntrackd for its table at
    /// start); FTFW: until ctsyncd's handshake with conntrackd is done.
    fn start(&mut self) {
        self.start_conntrackd();
        self.us.start();
        if self.stats()["conntrackd_link"]["mode"] == "ftfw" {
            assert!(
                wait_until(WAIT, || self.stats()["conntrackd_link"]["handshake_done"]
                    == true),
                "no FTFW handshake: {}",
                self.stats()
            );
        }
    }

    /// `conntrackd -C conf ARGS` in conntrackd's namespace.
    fn cd(&self, args: &[&str]) -> String {
        let conf = self.conf.to_str().unwrap();
        let mut all = vec!["netns", "exec", &self.ns_cd, "conntrackd", "-C", conf];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// Flows in conntrackd's external cache (`-e ct`) whose line holds
    /// `src=PREFIX`.
    fn cd_flows_from(&self, prefix: &str) -> usize {
        let needle = format!("src={prefix}");
        self.cd(&["-e", "ct"])
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    fn stats(&self) -> Value {
        serde_json::from_str(&self.us.ctl_ok(&["-s", "--json"])).expect("-s --json")
    }

    /// A namespace's `conntrack -L -o extended`, normalised (timeouts, use
    /// counts and ids stripped), without the sync link's own flows.
    fn kernel(&self, ns: &str) -> Vec<String> {
        let text = must(
            "ip",
            &["netns", "exec", ns, "conntrack", "-L", "-o", "extended"],
        );
        let link = format!("198.18.{}.", self.net);
        normalise_conntrack(&text)
            .into_iter()
            .filter(|l| !l.contains(&link))
            .collect()
    }

    /// ctsyncd's external cache (the conntrackd peer's flows): original
    /// source and destination with the mark, one line per flow.
    fn our_external(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .us
            .cache_json("-e")
            .iter()
            .map(|f| {
                format!(
                    "{} {} {} mark={}",
                    f["orig"]["src"].as_str().unwrap_or_default(),
                    f["orig"]["dst"].as_str().unwrap_or_default(),
                    f["orig"]["sport"].as_u64().unwrap_or(0),
                    f["mark"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        v.sort();
        v
    }

    /// ctsyncd's external expectations, as their text.
    fn our_external_expect(&self) -> Vec<String> {
        let json: Vec<Value> =
            serde_json::from_str(&self.us.ctl_ok(&["-e", "expect", "--json"])).unwrap();
        json.iter()
            .map(|e| e["text"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// `conntrack -L expect` in `ns`: each line without its timeout and class.
fn kernel_expectations(ns: &str) -> Vec<String> {
    let text = must("ip", &["netns", "exec", ns, "conntrack", "-L", "expect"]);
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.contains("proto="))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter(|w| !w.starts_with("class="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    v.sort();
    v
}

/// One side's flows, `conntrack -I` arguments; `a` and `b` are the second
/// octets' third parts that keep the two sides apart (198.18.`a`.x ->
/// 198.18.`b`.x, 2001:db8:`a`::).
fn inserts(a: u8, b: u8) -> Vec<String> {
    vec![
        format!("-s 198.18.{a}.1 -d 198.18.{b}.1 -p tcp --sport 1234 --dport 80 --state ESTABLISHED -t 600 -u ASSURED,SEEN_REPLY -m 5"),
        format!("-s 198.18.{a}.2 -d 198.18.{b}.1 -p tcp --sport 4321 --dport 443 --state ESTABLISHED -t 600 -u ASSURED,SEEN_REPLY --src-nat 198.19.{a}.1:5000"),
        format!("-s 198.18.{a}.3 -d 198.18.{b}.1 -p udp --sport 53 --dport 5353 -t 600 --dst-nat 198.19.{b}.9:5454"),
        format!("-s 198.18.{a}.4 -d 198.18.{b}.1 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 77 -t 600 --src-nat 198.19.{a}.2"),
        format!("-s 2001:db8:{a}::1 -d 2001:db8:{b}::1 -p udp --sport 1000 --dport 2000 -t 600 --zone 7 -m 3"),
    ]
}

fn conntrack_i(pair: &Pair, ns: &str, args: &str) {
    let mut all = vec!["netns", "exec", ns, "conntrack", "-I"];
    all.extend(args.split_whitespace());
    let _ = pair;
    must("ip", &all);
}

fn tcp(src: String, sport: u16, dst: String, dport: u16) -> Tuple {
    Tuple {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: proto::TCP,
        l4: L4::Ports {
            src: sport,
            dst: dport,
        },
    }
}

/// An FTP control connection 198.18.`a`.50:40000 -> 198.18.`b`.60:21 with
/// the kernel's FTP helper, established.
fn ftp_master(a: u8, b: u8) -> Flow {
    let mut f = Flow::new(tcp(
        format!("198.18.{a}.50"),
        40000,
        format!("198.18.{b}.60"),
        21,
    ));
    f.status = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;
    f.timeout = 600;
    f.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 0,
        wscale_reply: 0,
        flags_orig: 0,
        flags_reply: 0,
    };
    f.helper = Some("ftp".into());
    f
}

/// The passive-mode data connection the server announced on `port`.
fn ftp_expectation(a: u8, b: u8, port: u16) -> Expectation {
    Expectation {
        zone: 0,
        master: ftp_master(a, b).orig,
        tuple: tcp(format!("198.18.{a}.50"), 0, format!("198.18.{b}.60"), port),
        mask: tcp(
            "255.255.255.255".into(),
            0,
            "255.255.255.255".into(),
            0xffff,
        ),
        timeout: 280,
        flags: 0,
        class: 0,
        helper: Some("ftp".into()),
        nat: None,
        expectfn: None,
    }
}

fn create_expectation(ns: &str, e: Expectation) {
    let report = in_netns(ns, move || {
        let mut w = Writer::open().expect("open writer");
        w.apply_expectations(&[ExpectOp::Create(e)])
    });
    assert_eq!(report.failed, 0, "{:?}", report.first_errors);
}

/// conntrackd's `-e ct` lines naming `src`/`dst` (and `mark`, if given).
fn cd_has(text: &str, src: &str, dst: &str, mark: Option<u32>) -> bool {
    let needle = format!("src={src} dst={dst} ");
    text.lines()
        .any(|l| l.contains(&needle) && mark.is_none_or(|m| l.contains(&format!("mark={m}"))))
}

/// Third octets: conntrackd's flows 198.18.1.x -> 198.18.2.x, ours
/// 198.18.3.x -> 198.18.4.x.
const CD: (u8, u8) = (1, 2);
const US: (u8, u8) = (3, 4);

/// Make one side's flows, FTP master and expectation in `ns`; `wait_master`
/// runs between the master and its expectation (ctsyncd replicates an
/// expectation only once its master is replicated).
fn make_side(pair: &Pair, ns: &str, (a, b): (u8, u8), port: u16, wait_master: impl Fn()) {
    for args in inserts(a, b) {
        conntrack_i(pair, ns, &args);
    }
    lab::create_in(ns, vec![ftp_master(a, b)]);
    wait_master();
    create_expectation(ns, ftp_expectation(a, b, port));
}

/// The flows of one side in `-e` line form: src, dst, sport, mark.
fn flow_sources(a: u8) -> Vec<String> {
    vec![
        format!("198.18.{a}.1"),
        format!("198.18.{a}.2"),
        format!("198.18.{a}.3"),
        format!("198.18.{a}.4"),
        format!("2001:db8:{a}::1"),
        format!("198.18.{a}.50"),
    ]
}

fn conntrackd_has_ours(pair: &Pair) -> bool {
    let text = pair.cd(&["-e", "ct"]);
    let (a, b) = US;
    flow_sources(a)
        .iter()
        .all(|s| text.contains(&format!("src={s} ")))
        && cd_has(
            &text,
            &format!("198.18.{a}.1"),
            &format!("198.18.{b}.1"),
            Some(5),
        )
}

fn ours_has_conntrackds(pair: &Pair) -> bool {
    let ext = pair.our_external();
    let (a, _) = CD;
    ext.len() == 6
        && flow_sources(a)
            .iter()
            .all(|s| ext.iter().any(|l| l.starts_with(&format!("{s} "))))
}

fn both_ways(setup: Setup) {
    let alarm = setup.our_mode == "alarm";
    let mut pair = Pair::new(&setup);
    pair.start();
    let us_ns = pair.us.ns.clone();
    let cd_ns = pair.ns_cd.clone();
    make_side(&pair, &cd_ns, CD, 50001, || {});
    make_side(&pair, &us_ns, US, 50002, || {
        assert!(
            wait_until(WAIT, || pair
                .us
                .cache_json("-i")
                .iter()
                .any(|f| f["orig"]["dport"] == 21)),
            "ctsyncd never cached its FTP master"
        );
    });
    assert_eq!(kernel_expectations(&cd_ns).len(), 1);
    assert_eq!(kernel_expectations(&us_ns).len(), 1);

    // conntrackd -> ctsyncd's external cache.
    assert!(
        wait_until(WAIT, || ours_has_conntrackds(&pair)),
        "ctsyncd -e: {:?}\n{}",
        pair.our_external(),
        pair.stats()["conntrackd_link"]
    );
    assert!(
        wait_until(WAIT, || pair.our_external_expect().len() == 1),
        "ctsyncd -e expect: {:?}",
        pair.our_external_expect()
    );
    assert!(
        pair.our_external_expect()[0].contains("dport=50001"),
        "{:?}",
        pair.our_external_expect()
    );
    // ctsyncd -> conntrackd's external cache.
    assert!(
        wait_until(WAIT, || conntrackd_has_ours(&pair)),
        "conntrackd -e ct:\n{}",
        pair.cd(&["-e", "ct"])
    );
    assert!(
        wait_until(WAIT, || pair.cd(&["-e", "expect"]).contains("dport=50002")),
        "conntrackd -e expect:\n{}",
        pair.cd(&["-e", "expect"])
    );

    // conntrackd forgets and asks (`-n`): ctsyncd's bulk refills it.
    // (ALARM has no resync: ctsyncd's refresh does it.) conntrackd ignores
    // a flush while it deems a commit in progress: retried.
    assert!(
        wait_until(Duration::from_secs(15), || {
            pair.cd(&["-f", "external"]);
            !pair.cd(&["-e", "ct"]).contains("198.18.3.")
        }),
        "-f external kept flows"
    );
    if !alarm {
        pair.cd(&["-n"]);
    }
    assert!(
        wait_until(WAIT, || conntrackd_has_ours(&pair)
            && pair.cd(&["-e", "expect"]).contains("dport=50002")),
        "no resync after conntrackd -n:\n{}",
        pair.cd(&["-e", "ct"])
    );

    // And ctsyncd forgets and asks (`-f external`, `-n`): conntrackd's
    // bulk refills it (ALARM: conntrackd's refresh).
    // (ALARM: a refresh that lands between `-f` and the look refills it
    // at once; flushed again then.)
    assert!(
        wait_until(Duration::from_secs(15), || {
            pair.us.ctl_ok(&["-f", "external"]);
            pair.our_external().is_empty() && pair.our_external_expect().is_empty()
        }),
        "-f external kept: {:?}",
        pair.our_external()
    );
    pair.us.ctl_ok(&["-n"]);
    assert!(
        wait_until(WAIT, || ours_has_conntrackds(&pair)
            && pair.our_external_expect().len() == 1),
        "no resync after ctsyncd -n: {:?}",
        pair.our_external()
    );

    // Commit both ways: both kernels then hold the same flows, NAT
    // included, and the same expectations.
    pair.us.ctl_ok(&["-c"]);
    pair.cd(&["-c", "ct"]);
    pair.cd(&["-c", "expect"]);
    let (in_cd, in_us) = (pair.kernel(&cd_ns), pair.kernel(&us_ns));
    assert_eq!(in_cd.len(), 12, "conntrackd's kernel: {in_cd:#?}");
    assert_eq!(in_cd, in_us, "the kernels differ after the commits");
    for needle in [
        "dst=198.19.1.1 sport=443 dport=5000",
        "src=198.19.2.9",
        "helper=ftp",
        "zone=7",
    ] {
        assert!(
            in_us.iter().any(|l| l.contains(needle)),
            "{needle} missing: {in_us:#?}"
        );
    }
    let exp_cd = kernel_expectations(&cd_ns);
    assert_eq!(exp_cd.len(), 2, "{exp_cd:#?}");
    assert_eq!(exp_cd, kernel_expectations(&us_ns));

    // Updates and deletions follow, both ways.
    conntrack_i_like(
        &pair,
        &cd_ns,
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
    conntrack_i_like(&pair, &cd_ns, &["-D", "-s", "198.18.1.3", "-p", "udp"]);
    conntrack_i_like(
        &pair,
        &us_ns,
        &[
            "-U",
            "-s",
            "198.18.3.1",
            "-p",
            "tcp",
            "--sport",
            "1234",
            "-m",
            "9",
        ],
    );
    conntrack_i_like(&pair, &us_ns, &["-D", "-s", "198.18.3.3", "-p", "udp"]);
    assert!(
        wait_until(WAIT, || {
            let ext = pair.our_external();
            ext.iter().any(|l| l == "198.18.1.1 198.18.2.1 1234 mark=9")
                && !ext.iter().any(|l| l.starts_with("198.18.1.3 "))
        }),
        "ctsyncd -e after the update and delete: {:?}",
        pair.our_external()
    );
    assert!(
        wait_until(WAIT, || {
            let text = pair.cd(&["-e", "ct"]);
            cd_has(&text, "198.18.3.1", "198.18.4.1", Some(9)) && !text.contains("src=198.18.3.3 ")
        }),
        "conntrackd -e after the update and delete:\n{}",
        pair.cd(&["-e", "ct"])
    );
    let cd_link = &pair.stats()["conntrackd_link"];
    assert_eq!(cd_link["malformed"], 0, "{cd_link}");
    assert_eq!(cd_link["invalid_changes"], 0, "{cd_link}");
}

/// `conntrack ARGS` in `ns` (updates, deletions).
fn conntrack_i_like(pair: &Pair, ns: &str, args: &[&str]) {
    let _ = pair;
    let mut all = vec!["netns", "exec", ns, "conntrack"];
    all.extend_from_slice(args);
    must("ip", &all);
}

#[test]
fn ftfw_both_ways_with_commits_updates_and_deletions() {
    both_ways(Setup::new("Mode FTFW { }", "ftfw"));
}

#[test]
fn notrack_both_ways_with_commits_updates_and_deletions() {
    both_ways(Setup::new("Mode NOTRACK { }", "notrack"));
}

#[test]
fn alarm_both_ways_with_commits_updates_and_deletions() {
    both_ways(Setup::new(
        "Mode ALARM { RefreshTime 2 CacheTimeout 10 }",
        "alarm",
    ));
}

/// conntrackd's external cache (`-e ct`) holds the five flows `inserts`
/// made on our side.
fn holds_our_five(pair: &Pair) -> bool {
    let text = pair.cd(&["-e", "ct"]);
    flow_sources(US.0)[..5]
        .iter()
        .all(|s| text.contains(&format!("src={s} ")))
}

/// Restart conntrackd; its external cache must hold our five flows again.
fn restart_conntrackd_until_it_holds_our_five(pair: &mut Pair) {
    pair.stop_conntrackd();
    pair.start_conntrackd();
    assert!(
        wait_until(WAIT, || holds_our_five(pair)),
        "conntrackd restarted: -e ct lacks ours:\n{}",
        pair.cd(&["-e", "ct"])
    );
}

/// FTFW: conntrackd restarted with `StartupResync on` gets our table;
/// ctsyncd restarted asks and gets conntrackd's. Neither mode has a
/// refresh, so nothing else would bring the tables back.
#[test]
fn a_restart_of_either_side_resyncs() {
    let mut pair = Pair::new(&Setup::new("Mode FTFW { StartupResync on }", "ftfw"));
    pair.start();
    let (cd_ns, us_ns) = (pair.ns_cd.clone(), pair.us.ns.clone());
    for args in inserts(CD.0, CD.1) {
        conntrack_i(&pair, &cd_ns, &args);
    }
    for args in inserts(US.0, US.1) {
        conntrack_i(&pair, &us_ns, &args);
    }
    let theirs_in_us = |pair: &Pair| pair.our_external().len() == 5;
    assert!(
        wait_until(WAIT, || holds_our_five(&pair)),
        "first sync to conntrackd"
    );
    assert!(
        wait_until(WAIT, || theirs_in_us(&pair)),
        "first sync to ctsyncd"
    );

    let asked = pair.stats()["conntrackd_link"]["resync_requests"].clone();
    restart_conntrackd_until_it_holds_our_five(&mut pair);
    let cd_link = &pair.stats()["conntrackd_link"];
    assert!(
        cd_link["resync_requests"].as_u64() > asked.as_u64(),
        "conntrackd's StartupResync was not seen: {cd_link}"
    );

    pair.us.kill(libc::SIGTERM);
    pair.us.start();
    assert!(
        wait_until(WAIT, || theirs_in_us(&pair)),
        "ctsyncd restarted: -e {:?}\n{}",
        pair.our_external(),
        pair.stats()["conntrackd_link"]
    );
    // And the restarted ctsyncd's new flows still reach conntrackd (its
    // sequence numbers taken thanks to its HELLO).
    conntrack_i(
        &pair,
        &us_ns,
        "-s 198.18.3.9 -d 198.18.4.9 -p udp --sport 7 --dport 8 -t 600",
    );
    assert!(
        wait_until(WAIT, || pair.cd(&["-e", "ct"]).contains("src=198.18.3.9 ")),
        "conntrackd dropped the restarted ctsyncd's flow:\n{}",
        pair.cd(&["-e", "ct"])
    );
}

/// conntrackd restarted without StartupResync (its default), and nothing
/// of ours changing afterwards: its first HELLO gets our whole table all
/// the same, so a failover to it keeps our idle connections. (conntrackd
/// itself sends nothing to a restarted peer; nor did ctsyncd before.)
#[test]
fn a_conntrackd_restarted_without_startup_resync_gets_our_flows() {
    let mut pair = Pair::new(&Setup::new("Mode FTFW { }", "ftfw"));
    pair.start();
    let us_ns = pair.us.ns.clone();
    for args in inserts(US.0, US.1) {
        conntrack_i(&pair, &us_ns, &args);
    }
    assert!(
        wait_until(WAIT, || holds_our_five(&pair)),
        "first sync to conntrackd"
    );
    let restarts = |pair: &Pair| {
        pair.stats()["conntrackd_link"]["peer_restarts"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = restarts(&pair);
    restart_conntrackd_until_it_holds_our_five(&mut pair);
    assert_eq!(restarts(&pair), before + 1);
    let cd_link = &pair.stats()["conntrackd_link"];
    assert_eq!(
        cd_link["resync_requests"], 0,
        "conntrackd asked for a resync: the test proves nothing"
    );
}

/// 20% of the datagrams lost each way (after the handshake): FTFW's NACKs
/// and resends bring every flow through, both ways.
#[test]
fn ftfw_converges_with_20_percent_loss() {
    let mut pair = Pair::new(&Setup::new("Mode FTFW { }", "ftfw"));
    pair.start();
    // Both ends of the handshake: conntrackd's messages that still say
    // HELLO skip the sequence check (their loss is never nacked), so the
    // loss starts once conntrackd has had our HELLO_BACK and stopped.
    let counters = |pair: &Pair| {
        let c = &pair.stats()["conntrackd_link"];
        (
            c["hellos_received"].as_u64().unwrap_or(0),
            c["messages_received"].as_u64().unwrap_or(0),
        )
    };
    assert!(
        wait_until(WAIT, || {
            let (h0, m0) = counters(&pair);
            std::thread::sleep(Duration::from_millis(1500));
            let (h1, m1) = counters(&pair);
            h1 == h0 && m1 > m0
        }),
        "conntrackd kept saying HELLO: {}",
        pair.stats()["conntrackd_link"]
    );
    for ns in [pair.ns_cd.clone(), pair.us.ns.clone()] {
        let rules = format!(
            "table inet loss {{\n chain out {{\n  type filter hook output priority 0;\n  \
             udp dport {PORT} numgen random mod 100 < 20 counter drop\n }}\n}}\n"
        );
        let file = pair.dir.join(format!("loss-{ns}.nft"));
        std::fs::write(&file, rules).unwrap();
        must(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", file.to_str().unwrap()],
        );
    }
    const N: u16 = 150;
    let batch = |a: u8| -> Vec<Flow> {
        (0..N)
            .map(|i| {
                let mut f = Flow::new(Tuple {
                    src: format!("198.18.{a}.{}", 1 + i % 200).parse().unwrap(),
                    dst: format!("198.18.{}.1", a + 1).parse().unwrap(),
                    proto: proto::UDP,
                    l4: L4::Ports {
                        src: 10_000 + i,
                        dst: 53,
                    },
                });
                f.status = status::CONFIRMED;
                f.timeout = 600;
                f.mark = u32::from(i % 4);
                f
            })
            .collect()
    };
    // In 50 batches each way: about as many data datagrams, so that the
    // 20% loss hits data in both directions (no data datagram lost among
    // 50: 0.8^50, about 1 in 70,000; among 10, as before, 1 in 10).
    for chunk in batch(CD.0).chunks(3) {
        lab::create_in(&pair.ns_cd, chunk.to_vec());
        std::thread::sleep(Duration::from_millis(30));
    }
    for chunk in batch(US.0).chunks(3) {
        lab::create_in(&pair.us.ns, chunk.to_vec());
        std::thread::sleep(Duration::from_millis(30));
    }
    let count_ours = |pair: &Pair| {
        pair.cd(&["-e", "ct"])
            .lines()
            .filter(|l| l.contains("src=198.18.3."))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(60), || pair.our_external().len()
            == usize::from(N)),
        "ctsyncd -e has {} of {N}: {}",
        pair.our_external().len(),
        pair.stats()["conntrackd_link"]
    );
    assert!(
        wait_until(Duration::from_secs(60), || count_ours(&pair)
            == usize::from(N)),
        "conntrackd -e has {} of ours: {}",
        count_ours(&pair),
        pair.stats()["conntrackd_link"]
    );
    let dropped: u64 = [&pair.ns_cd, &pair.us.ns]
        .iter()
        .map(|ns| {
            let text = pair.in_any(ns, &["nft", "list", "table", "inet", "loss"]);
            text.split("packets ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(dropped > 0, "the loss rules dropped nothing");
    // The loss showed both ways: gaps in conntrackd's sequence, and our
    // messages resent on conntrackd's NACKs.
    let cd_link = &pair.stats()["conntrackd_link"];
    assert!(cd_link["lost"].as_u64().unwrap_or(0) > 0, "{cd_link}");
    assert!(
        cd_link["resent_on_nack"].as_u64().unwrap_or(0) > 0,
        "{cd_link}"
    );
}

impl Pair {
    fn in_any(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        must("ip", &all)
    }
}

/// Malformed conntrackd datagrams sent to ctsyncd's link port (from the
/// peer's address) are counted by reason; the daemon goes on and the next
/// flow from conntrackd arrives.
#[test]
fn malformed_datagrams_are_counted_by_reason_and_not_fatal() {
    let mut pair = Pair::new(&Setup::new("Mode NOTRACK { }", "notrack"));
    pair.start();
    let good = {
        let mut m = encode_object(
            &Codec::default(),
            Op::New,
            &Object::Flow(Flow::new(Tuple {
                src: "198.18.5.5".parse().unwrap(),
                dst: "198.18.6.6".parse().unwrap(),
                proto: proto::UDP,
                l4: L4::Ports { src: 1, dst: 2 },
            })),
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
    cases.push((vec![0x17, 0, 0, 8, 0, 0, 0, 9], Reject::MalformedHeader));
    let net = pair.net;
    let sender = in_netns(&pair.ns_cd, move || {
        UdpSocket::bind(SocketAddr::new(IpAddr::from([198, 18, net, 1]), 0)).unwrap()
    });
    let target = SocketAddr::new(IpAddr::from([198, 18, net, 2]), PORT);
    for (d, _) in &cases {
        sender.send_to(d, target).unwrap();
    }
    let by_reason = |pair: &Pair| -> BTreeMap<String, u64> {
        let stats = pair.stats();
        stats["conntrackd_link"]["malformed_by_reason"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap_or_default().to_string(),
                            p[1].as_u64().unwrap_or(0),
                        )
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut want = BTreeMap::new();
    for (_, r) in &cases {
        *want.entry(format!("{r:?}")).or_insert(0u64) += 1;
    }
    assert!(
        wait_until(Duration::from_secs(10), || by_reason(&pair) == want),
        "malformed_by_reason {:?}, want {want:?}",
        by_reason(&pair)
    );
    let stats = pair.stats();
    assert_eq!(
        stats["conntrackd_link"]["malformed"],
        cases.len() as u64,
        "{}",
        stats["conntrackd_link"]
    );
    // Nothing of it landed in the external cache, and the daemon goes on:
    // conntrackd's next flow arrives.
    assert!(pair.our_external().is_empty(), "{:?}", pair.our_external());
    conntrack_i(
        &pair,
        &pair.ns_cd.clone(),
        "-s 198.18.1.9 -d 198.18.2.9 -p udp --sport 7 --dport 8 -t 600",
    );
    assert!(
        wait_until(WAIT, || pair.our_external()
            == vec!["198.18.1.9 198.18.2.9 7 mark=0".to_string()]),
        "after the malformed datagrams: {:?}",
        pair.our_external()
    );
    // A datagram from another address is no conntrackd message at all.
    pair.in_any(
        &pair.ns_cd,
        &[
            "ip",
            "addr",
            "add",
            &format!("198.18.{net}.3/32"),
            "dev",
            "lo",
        ],
    );
    let stranger = in_netns(&pair.ns_cd, move || {
        UdpSocket::bind(SocketAddr::new(IpAddr::from([198, 18, net, 3]), 0)).unwrap()
    });
    stranger.send_to(&good, target).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || pair.stats()["conntrackd_link"]
            ["foreign_source"]
            == 1),
        "{}",
        pair.stats()["conntrackd_link"]
    );
    assert!(!pair
        .our_external()
        .iter()
        .any(|l| l.starts_with("198.18.5.5 ")));
}

/// The negative control: the same link on ctsync's own protocol gives
/// conntrackd nothing and takes nothing from it (so the tests above pass
/// because of the conntrackd protocol, not in spite of it).
#[test]
fn on_ctsyncs_own_protocol_nothing_crosses() {
    let mut pair = Pair::new(&Setup {
        cd_mode: "Mode NOTRACK { }",
        our_mode: "notrack",
        protocol: "ctsync",
        reread_s: 0,
        sync_extra: "",
    });
    pair.start_conntrackd();
    pair.us.start();
    assert!(pair.stats()["conntrackd_link"].is_null());
    let (cd_ns, us_ns) = (pair.ns_cd.clone(), pair.us.ns.clone());
    for args in inserts(CD.0, CD.1) {
        conntrack_i(&pair, &cd_ns, &args);
    }
    for args in inserts(US.0, US.1) {
        conntrack_i(&pair, &us_ns, &args);
    }
    assert!(
        wait_until(WAIT, || pair.us.cache_json("-i").len() == 5),
        "ctsyncd did not cache its own flows"
    );
    let crossed = wait_until(QUIET, || {
        pair.cd(&["-e", "ct"]).contains("src=198.18.3.") || !pair.our_external().is_empty()
    });
    assert!(
        !crossed,
        "a flow crossed: conntrackd -e {}\nctsyncd -e {:?}",
        pair.cd(&["-e", "ct"]),
        pair.our_external()
    );
}

/// Flows whose events the kernel could not deliver (ctsyncd stopped
/// while thousands are made; its event socket overruns) are found by the
/// re-read that heals the overrun, which must tell the conntrackd peer
/// too, not only ctsync's own links.
#[test]
fn flows_found_by_the_overrun_re_read_reach_conntrackd() {
    // FTFW: a burst of thousands of messages overflows a socket buffer
    // now and then, which NOTRACK never repairs.
    let mut pair = Pair::new(&Setup {
        reread_s: 2,
        ..Setup::new("Mode FTFW { }", "ftfw")
    });
    let toml = std::fs::read_to_string(&pair.us.config).unwrap().replace(
        "[kernel]\n",
        "[kernel]\nnetlink_buffer = 65536\nnetlink_buffer_max = 65536\n",
    );
    std::fs::write(&pair.us.config, toml).unwrap();
    pair.start();
    const N: usize = 3000;
    const M: u16 = 1000;
    let flows: Vec<Flow> = (0..N)
        .map(|i| {
            let mut f = Flow::new(Tuple {
                src: IpAddr::from([198, 18, 3, (i / 250) as u8 + 1]),
                dst: IpAddr::from([198, 18, 4, 1]),
                proto: proto::UDP,
                l4: L4::Ports {
                    src: 10_000 + i as u16,
                    dst: 53,
                },
            });
            f.status = status::CONFIRMED;
            f.timeout = 600;
            f
        })
        .collect();
    let pid = pair.us.pid().expect("ctsyncd runs") as i32;
    // SAFETY: signalling the daemon we started, by its pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    lab::create_in(&pair.us.ns, flows);
    // FTP masters and their expectations after the flood that overruns
    // the event sockets: their events are lost too.
    let masters: Vec<Flow> = (0..M)
        .map(|i| {
            let mut f = ftp_master(US.0, US.1);
            f.orig.l4 = L4::Ports {
                src: 30_000 + i,
                dst: 21,
            };
            f.reply.l4 = L4::Ports {
                src: 21,
                dst: 30_000 + i,
            };
            f
        })
        .collect();
    let expectations: Vec<ExpectOp> = masters
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut e = ftp_expectation(US.0, US.1, 50_000 + i as u16);
            e.master = m.orig;
            ExpectOp::Create(e)
        })
        .collect();
    lab::create_in(&pair.us.ns, masters);
    let report = in_netns(&pair.us.ns, move || {
        Writer::open()
            .expect("writer")
            .apply_expectations(&expectations)
    });
    assert_eq!(report.failed, 0, "{:?}", report.first_errors);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        wait_until(WAIT, || pair.us.cache_json("-i").len()
            == N + usize::from(M)),
        "ctsyncd -i has {} of {N}",
        pair.us.cache_json("-i").len()
    );
    let stats = pair.stats();
    assert!(
        stats["kernel"]["overruns"].as_u64().unwrap_or(0) > 0,
        "no overrun: the test proves nothing: {}",
        stats["kernel"]
    );
    let in_cd = |pair: &Pair| pair.cd_flows_from("198.18.3.");
    let all = N + usize::from(M);
    assert!(
        wait_until(WAIT, || in_cd(&pair) == all),
        "conntrackd -e has {} of {all}",
        in_cd(&pair),
    );
    let ours_expected = |pair: &Pair| {
        let v: Vec<Value> =
            serde_json::from_str(&pair.us.ctl_ok(&["-i", "expect", "--json"])).unwrap();
        v.len()
    };
    assert!(
        wait_until(WAIT, || ours_expected(&pair) == usize::from(M)),
        "ctsyncd -i expect has {} of {M}",
        ours_expected(&pair)
    );
    let cd_expected = |pair: &Pair| {
        pair.cd(&["-e", "expect"])
            .lines()
            .filter(|l| l.contains("helper=ftp"))
            .count()
    };
    assert!(
        wait_until(WAIT, || cd_expected(&pair) == usize::from(M)),
        "conntrackd -e expect has {} of {M}; ctsyncd: {}",
        cd_expected(&pair),
        pair.stats()["kernel"]
    );
    // The periodic re-reads after that find nothing new: they send the
    // peer nothing but FTFW's acks (about one datagram a second).
    let sent = |pair: &Pair| {
        let s = pair.stats();
        (
            s["conntrackd_link"]["datagrams_sent"].as_u64().unwrap_or(0),
            s["kernel"]["table_reads"].as_u64().unwrap_or(0),
        )
    };
    let (d0, r0) = sent(&pair);
    std::thread::sleep(Duration::from_secs(5));
    let (d1, r1) = sent(&pair);
    assert!(r1 >= r0 + 2, "no periodic re-read ran: {r0} -> {r1}");
    assert!(
        d1 - d0 < 15,
        "the re-reads resent flows: {d0} -> {d1} datagrams"
    );
    // Deletes lost the same way: a third of the flows go while ctsyncd is
    // stopped, its event socket overruns again, and the re-read that heals
    // it tells conntrackd they are gone.
    let overruns = |pair: &Pair| pair.stats()["kernel"]["overruns"].as_u64().unwrap_or(0);
    let o0 = overruns(&pair);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for host in 1..=4 {
        let src = format!("198.18.3.{host}");
        let out = pair.us.exec("conntrack", &["-D", "-s", &src]);
        assert!(out.status.success(), "{out:?}");
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let left = all - 1000;
    assert!(
        wait_until(WAIT, || pair.us.cache_json("-i").len() == left),
        "ctsyncd -i has {} of {left}",
        pair.us.cache_json("-i").len()
    );
    assert!(
        overruns(&pair) > o0,
        "no overrun of the deletes: the test proves nothing"
    );
    assert!(
        wait_until(WAIT, || in_cd(&pair) == left),
        "conntrackd -e has {} of {left} after the deletes",
        in_cd(&pair),
    );
}

/// Warm standby on the conntrackd link: conntrackd's flows (NAT, mark,
/// IPv6 in a zone) and its FTP master and expectation are written into
/// ctsyncd's kernel as they arrive, without a commit; a deletion follows.
#[test]
fn warm_standby_writes_conntrackds_flows_and_expectation() {
    let mut pair = Pair::new(&Setup {
        sync_extra: "warm_standby = true",
        ..Setup::new("Mode FTFW { }", "ftfw")
    });
    pair.start();
    let (cd_ns, us_ns) = (pair.ns_cd.clone(), pair.us.ns.clone());
    make_side(&pair, &cd_ns, CD, 50004, || {});
    let in_cd = pair.kernel(&cd_ns);
    assert_eq!(in_cd.len(), 6, "{in_cd:#?}");
    assert!(
        wait_until(WAIT, || pair.kernel(&us_ns) == in_cd),
        "ctsyncd's kernel {:#?}\nconntrackd's {in_cd:#?}",
        pair.kernel(&us_ns)
    );
    assert!(
        wait_until(WAIT, || kernel_expectations(&us_ns)
            == kernel_expectations(&cd_ns)),
        "ctsyncd's expectations {:?}, conntrackd's {:?}",
        kernel_expectations(&us_ns),
        kernel_expectations(&cd_ns)
    );
    conntrack_i_like(&pair, &cd_ns, &["-D", "-s", "198.18.1.3", "-p", "udp"]);
    assert!(
        wait_until(WAIT, || pair.kernel(&us_ns) == pair.kernel(&cd_ns)),
        "the deletion: ctsyncd's kernel {:#?}",
        pair.kernel(&us_ns)
    );
    assert_eq!(pair.kernel(&us_ns).len(), 5);
}

/// `ctsyncd doctor --json` in ctsyncd's namespace: its exit status and,
/// by check, the severities it reported.
fn doctor(pair: &Pair) -> (i32, BTreeMap<String, Vec<String>>) {
    let (code, report) = lab::doctor_report(&pair.us.ns, &pair.us.config, &[]);
    let mut by_check: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in report["findings"].as_array().expect("findings") {
        by_check
            .entry(f["check"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(f["severity"].as_str().unwrap_or_default().to_string());
    }
    (code, by_check)
}

/// On a node whose only link speaks conntrackd's protocol (mid-migration)
/// doctor expects no ctsync peer and judges the conntrackd peer instead:
/// ok while it is heard, critical once conntrackd stops.
#[test]
fn doctor_judges_the_conntrackd_peer_and_expects_no_ctsync_one() {
    // (The metrics table after [sync]'s lines: TOML takes it there.)
    let mut pair = Pair::new(&Setup {
        sync_extra: "peer_timeout_ms = 2000\n\n[metrics]\nlisten = \"127.0.0.1:9478\"",
        ..Setup::new("Mode FTFW { }", "ftfw")
    });
    pair.start();
    let (code, found) = doctor(&pair);
    let ok = vec!["ok".to_string()];
    assert_eq!(found.get("conntrackd_link"), Some(&ok), "{found:?}");
    assert_eq!(found.get("sync_peers"), Some(&ok), "{found:?}");
    assert!(code < 2, "exit {code}: {found:?}");
    // The metrics say the same.
    let out = pair.us.exec(
        "curl",
        &["-sS", "-m", "10", "http://127.0.0.1:9478/metrics"],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(value("ctsync_conntrackd_link_handshake_done"), 1.0);
    assert!(value("ctsync_conntrackd_link_last_heard_seconds") < 2.0);
    assert!(value("ctsync_conntrackd_link_datagrams_total{direction=\"received\"}") > 0.0);
    if let Err(said) = lab::promtool(&text) {
        panic!("promtool: {said}");
    }
    pair.stop_conntrackd();
    assert!(
        wait_until(WAIT, || pair.stats()["conntrackd_link"]
            ["last_heard_ms_ago"]
            .as_u64()
            .is_some_and(|ms| ms > 2000)),
        "conntrackd still heard: {}",
        pair.stats()["conntrackd_link"]
    );
    let (code, found) = doctor(&pair);
    assert_eq!(
        found.get("conntrackd_link"),
        Some(&vec!["critical".to_string()]),
        "{found:?}"
    );
    assert_eq!(code, 2);
}

/// 2,000 UDP flows from 198.18.5.0/24 (not the link's network).
fn table_flows() -> Vec<Flow> {
    (0..2000u32)
        .map(|i| {
            let mut f = Flow::new(Tuple {
                src: IpAddr::from([198, 18, 5, (i / 200) as u8 + 1]),
                dst: IpAddr::from([198, 18, 6, 1]),
                proto: proto::UDP,
                l4: L4::Ports {
                    src: 20_000 + (i % 200) as u16,
                    dst: 5353,
                },
            });
            f.status = status::CONFIRMED;
            f.timeout = 600;
            f
        })
        .collect()
}

/// The refills walk the internal cache a part a turn; every part must go
/// out: at start (the link's record is empty) and for `-B` after `-f`
/// (emptied again), with conntrackd's external cache flushed in between.
#[test]
fn the_refills_at_start_and_for_b_send_the_whole_table() {
    let mut pair = Pair::new(&Setup::new("Mode FTFW { }", "ftfw"));
    lab::create_in(&pair.us.ns, table_flows());
    pair.start();
    let in_cd = |pair: &Pair| pair.cd_flows_from("198.18.5.");
    assert!(
        wait_until(WAIT, || in_cd(&pair) == 2000),
        "after ctsyncd's start conntrackd -e has {} of 2000",
        in_cd(&pair)
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            pair.cd(&["-f", "external"]);
            in_cd(&pair) == 0
        }),
        "-f external kept flows"
    );
    for args in [["-f"].as_slice(), &["-R"], &["-B"]] {
        pair.us.ctl_ok(args);
    }
    assert!(
        wait_until(WAIT, || in_cd(&pair) == 2000),
        "after -f, -R, -B conntrackd -e has {} of 2000",
        in_cd(&pair)
    );
}
