//! `ctsyncd doctor` against real namespaces: each one set up to show a
//! problem (sysctls set inside it, flows written into its table, a lab
//! pair with a stopped peer or a peer of another mode and MTU), and each
//! check also run where the problem is absent and must not fire. The exit
//! status is checked against the worst finding.
//!
//! nf_conntrack_max and nf_conntrack_buckets are read-only in child
//! namespaces on current kernels (the host's values apply), so the full
//! table is made by writing entries up to the host's limit into a
//! namespace of our own (its count is its own); nothing global changes.

mod lab;

use ctsync::control::cli::{self, Action};
use ctsync::flow::{proto, status, Flow, Tuple, L4};
use ctsync::kernel::write::{CreateOptions, Writer};
use lab::{ctsyncd_bin, in_netns, must, run, wait_until, Lab, SyncFamily};
use serde_json::Value;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace of our own, deleted on drop (even when a test fails).
struct Ns {
    name: String,
    dir: PathBuf,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let name = format!("ctsd-{tag}-{id}");
        let _ = Command::new("modprobe").arg("nf_conntrack").output();
        must("ip", &["netns", "add", &name]);
        must("ip", &["-n", &name, "link", "set", "lo", "up"]);
        let dir = std::env::temp_dir().join(format!("ctsd-{id}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        Ns { name, dir }
    }

    /// Set `net.netfilter.<key>` inside this namespace.
    fn sysctl(&self, key: &str, value: u64) {
        let cmd = format!("echo {value} > /proc/sys/net/netfilter/{key}");
        must("ip", &["netns", "exec", &self.name, "sh", "-c", &cmd]);
    }

    fn read(&self, key: &str) -> u64 {
        let path = format!("/proc/sys/net/netfilter/{key}");
        must("ip", &["netns", "exec", &self.name, "cat", &path])
            .trim()
            .parse()
            .expect("a number")
    }

    /// A config for a daemon that does not run (its socket is never made).
    fn config(&self, extra_kernel: &str) -> PathBuf {
        let path = self
            .dir
            .join(format!("c{}.toml", COUNTER.fetch_add(1, Ordering::SeqCst)));
        let text = format!(
            "node_id = 1\nsocket = \"{}\"\n\n[sync]\nmode = \"ftfw\"\n\n[kernel]\n{extra_kernel}\n\n\
             [[link]]\ntransport = \"udp\"\ninterface = \"sync0\"\nlocal = \"198.18.0.1\"\npeer = \"198.18.0.2\"\nport = 3780\n",
            self.dir.join("none.sock").display()
        );
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A doctor run: its exit status and its JSON report.
struct Doctor {
    code: i32,
    report: Value,
}

impl Doctor {
    fn findings(&self, check: &str) -> Vec<&Value> {
        self.report["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter(|f| f["check"] == check)
            .collect()
    }

    /// The worst severity among `check`'s findings; panics when the check
    /// did not report (every check that can run says something).
    fn worst(&self, check: &str) -> String {
        let order = ["ok", "info", "warning", "critical"];
        let f = self.findings(check);
        assert!(!f.is_empty(), "no {check} finding in {:#}", self.report);
        f.iter()
            .filter_map(|f| f["severity"].as_str())
            .max_by_key(|s| order.iter().position(|o| o == s))
            .unwrap_or_default()
            .to_string()
    }

    fn assert(&self, check: &str, severity: &str) {
        assert_eq!(self.worst(check), severity, "{check} in {:#}", self.report);
    }

    /// The exit status follows the worst finding.
    fn assert_exit_matches_worst(&self) {
        let want = match self.report["worst"].as_str() {
            Some("ok") | Some("info") => 0,
            Some("warning") => 1,
            Some("critical") => 2,
            other => panic!("worst is {other:?}"),
        };
        assert_eq!(self.code, want, "{:#}", self.report);
        assert_eq!(self.report["exit_code"], want);
    }
}

fn doctor(ns: &str, config: &Path, extra: &[&str]) -> Doctor {
    let (code, report) = lab::doctor_report(ns, config, extra);
    let d = Doctor { code, report };
    d.assert_exit_matches_worst();
    d
}

#[test]
fn the_command_line_takes_doctor_and_its_options() {
    let inv = cli::parse(&[
        "doctor",
        "--json",
        "-C",
        "x.toml",
        "--upstream-idle-timeout",
        "20",
    ])
    .unwrap();
    assert_eq!(
        inv.action,
        Action::Doctor {
            upstream_idle_timeout_s: Some(20)
        }
    );
    assert!(inv.json);
    assert_eq!(inv.config, PathBuf::from("x.toml"));
    assert_eq!(
        cli::parse(&["doctor"]).unwrap().action,
        Action::Doctor {
            upstream_idle_timeout_s: None
        }
    );
    for bad in [
        &["doctor", "--upstream-idle-timeout"][..],
        &["doctor", "--upstream-idle-timeout", "0"],
        &["doctor", "--upstream-idle-timeout", "x"],
        &["doctor", "extra"],
        &["status", "--upstream-idle-timeout", "5"],
    ] {
        assert!(cli::parse(bad).is_err(), "{bad:?}");
    }
    // An unreadable config is the usual error exit, with no report.
    let out = Command::new(ctsyncd_bin())
        .args(["doctor", "--json", "-C", "/nonexistent/ctsyncd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ctsyncd.toml"));
}

#[test]
fn kernel_settings_fire_in_a_bad_namespace_and_not_in_a_healthy_one() {
    let bad = Ns::new("bad");
    bad.sysctl("nf_conntrack_events", 0);
    bad.sysctl("nf_conntrack_tcp_loose", 0);
    bad.sysctl("nf_conntrack_tcp_be_liberal", 0);
    bad.sysctl("nf_conntrack_tcp_timeout_time_wait", 600);
    bad.sysctl("nf_conntrack_udp_timeout", 30);
    bad.sysctl("nf_conntrack_udp_timeout_stream", 120);
    bad.sysctl("nf_conntrack_tcp_timeout_established", 432_000);
    // Committed flows keep window tracking, and the daemon will not turn
    // events on.
    let config = bad.config("tcp_window_tracking = true\nenable_events = false");
    let d = doctor(&bad.name, &config, &["--upstream-idle-timeout", "20"]);
    d.assert("events", "critical");
    d.assert("tcp_loose", "warning");
    d.assert("tcp_be_liberal", "warning");
    d.assert("tcp_time_wait", "warning");
    d.assert("upstream_udp_timeout", "warning");
    // No TCP row from the upstream timeout: lowering the global
    // established timeout to a balancer's would cut every idle TCP
    // session (see doctor::checks::timeouts).
    assert!(
        d.findings("upstream_tcp_timeout").is_empty(),
        "{:#}",
        d.report
    );
    // A small table: days of established timeout are worth knowing only.
    d.assert("tcp_established_timeout", "info");
    d.assert("daemon", "warning");
    assert_eq!(d.code, 2);
    // Each fix is the line that repairs it.
    let fix = |check: &str| {
        d.findings(check)[0]["fix"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        fix("tcp_loose"),
        "sysctl -w net.netfilter.nf_conntrack_tcp_loose=1"
    );
    assert_eq!(
        fix("events"),
        "sysctl -w net.netfilter.nf_conntrack_events=1"
    );
    // The same upstream timeout through the config file.
    let from_file = bad.config("[doctor]\nupstream_idle_timeout_s = 20");
    let d = doctor(&bad.name, &from_file, &[]);
    d.assert("upstream_udp_timeout", "warning");
    // Applying the fixes inside the namespace clears each finding.
    for f in d.report["findings"].as_array().unwrap() {
        let (Some(fix), Some(check)) = (f["fix"].as_str(), f["check"].as_str()) else {
            continue;
        };
        if [
            "tcp_loose",
            "events",
            "tcp_time_wait",
            "upstream_udp_timeout",
        ]
        .contains(&check)
        {
            must("ip", &["netns", "exec", &bad.name, "sh", "-c", fix]);
        }
    }
    let d = doctor(&bad.name, &from_file, &[]);
    for check in [
        "tcp_loose",
        "events",
        "tcp_time_wait",
        "upstream_udp_timeout",
    ] {
        d.assert(check, "ok");
    }
    assert_eq!(bad.read("nf_conntrack_udp_timeout_stream"), 15);
    // An NLB's TCP idle timeout (350 s) with days of established timeout:
    // the one fix touching the established timeout is
    // tcp_established_timeout's 1800 s, nothing lowers it to the
    // balancer's.
    let d = doctor(&bad.name, &config, &["--upstream-idle-timeout", "350"]);
    let est_fixes: Vec<(&str, &str)> = d.report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| Some((f["check"].as_str()?, f["fix"].as_str()?)))
        .filter(|(_, fix)| fix.contains("tcp_timeout_established"))
        .collect();
    assert_eq!(
        est_fixes,
        vec![(
            "tcp_established_timeout",
            "sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=1800"
        )],
        "{:#}",
        d.report
    );
    d.assert("upstream_udp_timeout", "ok");

    // Healthy: fixed settings, no finding fires.
    let good = Ns::new("good");
    good.sysctl("nf_conntrack_events", 1);
    good.sysctl("nf_conntrack_tcp_loose", 1);
    good.sysctl("nf_conntrack_tcp_be_liberal", 0);
    good.sysctl("nf_conntrack_tcp_timeout_time_wait", 30);
    good.sysctl("nf_conntrack_udp_timeout", 10);
    good.sysctl("nf_conntrack_udp_timeout_stream", 15);
    good.sysctl("nf_conntrack_tcp_timeout_established", 15);
    let config = good.config("tcp_window_tracking = false");
    let d = doctor(&good.name, &config, &["--upstream-idle-timeout", "20"]);
    for check in [
        "events",
        "tcp_loose",
        "tcp_be_liberal",
        "tcp_time_wait",
        "upstream_udp_timeout",
        "tcp_established_timeout",
        "table_full",
        "table_drops",
        "table_memory",
        "notrack_dns",
        "notrack_rate",
    ] {
        d.assert(check, "ok");
    }
    // Only the daemon is missing: a warning, exit 1.
    d.assert("daemon", "warning");
    assert_eq!(d.code, 1);
}

/// `n` distinct UDP flows to `dport`, from 198.18.64.0/18.
fn udp_flows(n: usize, dport: u16) -> Vec<Flow> {
    (0..n)
        .map(|i| {
            let src = IpAddr::from([198, 18, 64 + ((i >> 8) & 63) as u8, (i & 0xff) as u8]);
            let mut f = Flow::new(Tuple {
                src,
                dst: IpAddr::from([198, 19, 0, 53]),
                proto: proto::UDP,
                l4: L4::Ports {
                    src: 10_000 + (i >> 14) as u16,
                    dst: dport,
                },
            });
            f.status = status::CONFIRMED;
            f.timeout = 600;
            f
        })
        .collect()
}

/// Write flows with ctsync's batched writer; refusals (a full table) are
/// expected here and returned as a count.
fn create(ns: &str, flows: Vec<Flow>) -> u64 {
    in_netns(ns, move || {
        let mut w = Writer::open().expect("writer");
        w.create_all(&flows, &CreateOptions::default()).failed
    })
}

#[test]
fn dns_flows_fire_notrack_and_its_nft_line_is_valid() {
    let dns = Ns::new("dns");
    assert_eq!(create(&dns.name, udp_flows(1_500, 53)), 0);
    let config = dns.config("");
    let d = doctor(&dns.name, &config, &[]);
    d.assert("notrack_dns", "warning");
    let f = d.findings("notrack_dns")[0];
    assert!(
        f["seen"].as_str().unwrap().starts_with("1500 DNS flows"),
        "{f}"
    );
    // The suggested rules load as they are.
    let fix = f["fix"].as_str().unwrap();
    must("ip", &["netns", "exec", &dns.name, "sh", "-c", fix]);
    let rules = must(
        "ip",
        &[
            "netns",
            "exec",
            &dns.name,
            "nft",
            "list",
            "table",
            "inet",
            "ctsync_notrack",
        ],
    );
    // Only this machine's own DNS: to a local address on the way in, the
    // output hook on the way out; never TCP.
    assert!(
        rules.contains("fib daddr type local udp dport 53 notrack"),
        "{rules}"
    );
    assert!(rules.contains("udp sport 53 notrack"), "{rules}");
    assert!(!rules.contains("tcp"), "{rules}");
    assert!(
        f["summary"].as_str().unwrap().contains("must stay tracked"),
        "{f}"
    );
    assert!(fix.contains("ct state untracked accept"), "{fix}");

    // The same number of flows to another port: nothing to say.
    let other = Ns::new("nodns");
    assert_eq!(create(&other.name, udp_flows(1_500, 5_000)), 0);
    let d = doctor(&other.name, &other.config(""), &[]);
    d.assert("notrack_dns", "ok");
    assert!(d.findings("notrack_dns")[0]["seen"]
        .as_str()
        .unwrap()
        .starts_with("0 DNS flows"));
}

/// Send one UDP datagram from `sport` to `to`, inside namespace `ns`.
fn send_udp(ns: &str, sport: u16, to: &str) {
    let to = to.to_string();
    in_netns(ns, move || {
        let sock = std::net::UdpSocket::bind(("0.0.0.0", sport)).expect("bind");
        sock.send_to(b"q", to.as_str()).expect("send");
    });
}

/// Whether namespace `ns` tracks a UDP flow whose original source port is
/// `sport`.
fn tracked(ns: &str, sport: u16) -> bool {
    must("ip", &["netns", "exec", ns, "conntrack", "-L", "-p", "udp"])
        .lines()
        .any(|l| l.contains(&format!(" sport={sport} ")))
}

/// The NOTRACK rules doctor suggests, loaded on a router between a client
/// and a server namespace: DNS the router serves or asks itself goes
/// untracked, DNS it forwards stays tracked (NAT and `ct state` keep
/// working). The old global rule (any UDP to port 53 in prerouting) is the
/// negative control: it untracks the forwarded flow, and this test sees it.
#[test]
fn the_suggested_notrack_rules_spare_forwarded_traffic() {
    let (c, r, srv) = (Ns::new("nc"), Ns::new("nr"), Ns::new("ns"));
    must(
        "ip",
        &[
            "-n", &r.name, "link", "add", "toc", "type", "veth", "peer", "name", "tor", "netns",
            &c.name,
        ],
    );
    must(
        "ip",
        &[
            "-n", &r.name, "link", "add", "tos", "type", "veth", "peer", "name", "tor", "netns",
            &srv.name,
        ],
    );
    for (ns, dev, addr, via) in [
        (&r.name, "toc", "198.18.201.2/30", None),
        (&r.name, "tos", "198.18.201.5/30", None),
        (&c.name, "tor", "198.18.201.1/30", Some("198.18.201.2")),
        (&srv.name, "tor", "198.18.201.6/30", Some("198.18.201.5")),
    ] {
        must("ip", &["-n", ns, "addr", "add", addr, "dev", dev]);
        must("ip", &["-n", ns, "link", "set", dev, "up"]);
        if let Some(via) = via {
            must("ip", &["-n", ns, "route", "add", "default", "via", via]);
        }
    }
    must(
        "ip",
        &[
            "netns",
            "exec",
            &r.name,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ],
    );
    // A stateful forward chain: it also makes the router track at all.
    must(
        "ip",
        &[
            "netns", "exec", &r.name, "nft",
            "add table inet filt; add chain inet filt through { type filter hook forward priority 0; }; \
             add rule inet filt through ct state established,related accept; \
             add rule inet filt through ct state untracked accept; add rule inet filt through accept",
        ],
    );
    let fix = ctsync::doctor::checks::notrack::nft_notrack_local_udp(53);
    must("ip", &["netns", "exec", &r.name, "sh", "-c", &fix]);

    send_udp(&c.name, 40_001, "198.18.201.6:53"); // forwarded
    send_udp(&c.name, 40_002, "198.18.201.2:53"); // to the router's own DNS
    send_udp(&r.name, 40_003, "198.18.201.6:53"); // the router asking
    send_udp(&c.name, 40_004, "198.18.201.2:54"); // controls: not DNS
    send_udp(&r.name, 40_005, "198.18.201.6:54");
    let seen = |ports: &[u16]| {
        wait_until(Duration::from_secs(5), || {
            ports.iter().all(|p| tracked(&r.name, *p))
        })
    };
    assert!(
        seen(&[40_001, 40_004, 40_005]),
        "forwarded DNS or a control went untracked"
    );
    assert!(
        !tracked(&r.name, 40_002),
        "the router's own DNS is still tracked"
    );
    assert!(
        !tracked(&r.name, 40_003),
        "the router's own query is still tracked"
    );

    // Negative control: the global rule untracks the forwarded flow.
    must(
        "ip",
        &[
            "netns",
            "exec",
            &r.name,
            "nft",
            "delete table inet ctsync_notrack; add table inet old; \
             add chain inet old pre { type filter hook prerouting priority raw; }; \
             add rule inet old pre udp dport 53 notrack",
        ],
    );
    send_udp(&c.name, 40_006, "198.18.201.6:53");
    send_udp(&c.name, 40_007, "198.18.201.6:54");
    assert!(seen(&[40_007]));
    assert!(
        !tracked(&r.name, 40_006),
        "the global rule should untrack forwarded DNS"
    );
}

#[test]
fn a_filling_table_fires_and_an_overflowing_one_drops() {
    let ns = Ns::new("full");
    let max = ns.read("nf_conntrack_max");
    assert!(
        (1_000..=1 << 21).contains(&max),
        "nf_conntrack_max {max}: this test fills the table and expects a usual host limit"
    );
    ns.sysctl("nf_conntrack_tcp_timeout_established", 432_000);
    let config = ns.config("");
    // Empty: the negative control.
    let d = doctor(&ns.name, &config, &[]);
    d.assert("table_full", "ok");
    d.assert("table_drops", "ok");
    d.assert("tcp_established_timeout", "info");

    // 82% of the limit: a warning, and days-long established timeouts
    // with a table this full are one too.
    let want = (max * 82 / 100) as usize;
    assert_eq!(create(&ns.name, udp_flows(want, 7)), 0);
    assert_eq!(ns.read("nf_conntrack_count"), want as u64);
    let d = doctor(&ns.name, &config, &[]);
    d.assert("table_full", "warning");
    d.assert("tcp_established_timeout", "warning");
    d.assert("table_drops", "ok");
    assert!(d.code >= 1);
    // Shorter established timeouts clear that one.
    ns.sysctl("nf_conntrack_tcp_timeout_established", 1_800);
    doctor(&ns.name, &config, &[]).assert("tcp_established_timeout", "ok");

    // Past the limit with unassured flows: the kernel evicts unassured
    // entries (early drop) to make room, and the drops show.
    let more = (max as usize - want) + 2_000;
    let flows: Vec<Flow> = udp_flows(want + more, 7).split_off(want);
    create(&ns.name, flows);
    let d = doctor(&ns.name, &config, &[]);
    d.assert("table_drops", "warning");
    let seen = d.findings("table_drops")[0]["seen"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!seen.contains("early_drop 0 "), "{seen}");
    // (table_full is not judged here: while the table is 95% full the
    // kernel's garbage collector evicts unassured entries too, so a table
    // of unassured flows settles just below 95%. Assured ones it never
    // evicts: they show the critical case, next.)

    // At the limit with assured flows: nothing can be evicted, the table
    // stays at nf_conntrack_max and the writes past it are refused.
    must("ip", &["netns", "exec", &ns.name, "conntrack", "-F"]);
    assert_eq!(ns.read("nf_conntrack_count"), 0);
    let mut assured = udp_flows(max as usize + 2_000, 8);
    for f in &mut assured {
        f.status |= status::ASSURED;
    }
    let refused = create(&ns.name, assured);
    assert!(
        refused >= 2_000,
        "only {refused} writes refused past the limit"
    );
    assert_eq!(ns.read("nf_conntrack_count"), max);
    let d = doctor(&ns.name, &config, &[]);
    d.assert("table_full", "critical");
    assert!(
        d.findings("table_full")[0]["seen"]
            .as_str()
            .unwrap()
            .ends_with("(100.0%)"),
        "{:#}",
        d.report
    );
    assert_eq!(d.code, 2);
    // Still full after doctor read it: the critical was no accident.
    assert!(ns.read("nf_conntrack_count") * 100 >= max * 95);
}

fn peer_alive(node: &lab::Node, peer: u64) -> Option<bool> {
    let out = node.ctl(&["-s", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["peers"]
        .as_array()?
        .iter()
        .find(|p| p["node_id"] == peer)
        .and_then(|p| p["alive"].as_bool())
}

#[test]
fn sync_health_a_stopped_peer_fires_a_running_one_does_not() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    lab.a.start();
    lab.b.start();
    assert!(
        wait_until(Duration::from_secs(20), || peer_alive(&lab.a, 2)
            == Some(true)),
        "a never heard b"
    );
    lab::create_in(&lab.a.ns, udp_flows(50, 4_000));
    let d = doctor(&lab.a.ns, &lab.a.config, &[]);
    for check in [
        "daemon",
        "sync_peers",
        "sync_links",
        "peer_mode",
        "peer_mtu",
        "events",
        "events_arriving",
    ] {
        d.assert(check, "ok");
    }
    assert!(d.code <= 1, "{:#}", d.report);

    assert!(lab.b.terminate(Duration::from_secs(10)));
    assert!(
        wait_until(Duration::from_secs(30), || peer_alive(&lab.a, 2)
            == Some(false)),
        "a still thinks b is alive"
    );
    let d = doctor(&lab.a.ns, &lab.a.config, &[]);
    d.assert("daemon", "ok");
    d.assert("sync_peers", "critical");
    let f = d.findings("sync_peers")[0];
    assert!(
        f["summary"]
            .as_str()
            .unwrap()
            .contains("peer node 2 is not heard"),
        "{f}"
    );
    assert_eq!(d.code, 2);
    // In b's namespace nothing answers.
    let d = doctor(&lab.b.ns, &lab.b.config, &[]);
    d.assert("daemon", "warning");
    assert!(d.findings("sync_peers").is_empty());
}

#[test]
fn a_peer_of_another_mode_and_mtu_is_named_and_its_jumbo_datagrams_are_read() {
    let lab = Lab::two_nodes(SyncFamily::V4);
    // b runs notrack with jumbo datagrams; a runs ftfw with 1500.
    let text = std::fs::read_to_string(&lab.b.config).unwrap();
    assert!(text.contains("mode = \"ftfw\""));
    let text = text.replace("mode = \"ftfw\"", "mode = \"notrack\"\nmtu = 9000");
    std::fs::write(&lab.b.config, text).unwrap();
    let mut lab = lab;
    lab.a.start();
    lab.b.start();
    assert!(wait_until(Duration::from_secs(20), || peer_alive(
        &lab.a, 2
    ) == Some(true)
        && peer_alive(&lab.b, 1) == Some(true)));
    // a sends data b never acknowledges; b's bulk fills jumbo datagrams.
    lab::create_in(&lab.a.ns, udp_flows(200, 4_000));
    lab::create_in(&lab.b.ns, udp_flows(600, 4_001));
    lab.b.ctl_ok(&["-B"]);
    let mut last = None;
    let fired = wait_until(Duration::from_secs(40), || {
        let d = doctor(&lab.a.ns, &lab.a.config, &[]);
        let ok = d.worst("peer_mode") == "critical" && d.worst("peer_mtu") == "warning";
        last = Some(d.report);
        ok
    });
    assert!(fired, "{:#}", last.unwrap_or_default());
    // Larger than a's own datagrams, b's are read all the same: every flow
    // of b's bulk reaches a's external cache.
    let mut held = 0;
    let arrived = wait_until(Duration::from_secs(30), || {
        held = lab.a.cache_json("-e").len();
        held >= 600
    });
    assert!(arrived, "a holds {held} of b's 600 flows");
    let fired = wait_until(Duration::from_secs(30), || {
        let d = doctor(&lab.b.ns, &lab.b.config, &[]);
        let ok = d.worst("peer_mode") == "critical";
        last = Some(d.report);
        ok
    });
    assert!(fired, "{:#}", last.unwrap_or_default());
}

fn warm_counter(node: &lab::Node, key: &str) -> Option<u64> {
    let out = node.ctl(&["-s", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["warm"][key].as_u64()
}

#[test]
fn warm_standby_is_ok_when_mirrored_and_says_so_when_the_kernel_lost_flows() {
    let mut lab = Lab::two_nodes_with(SyncFamily::V4, "warm_standby = true");
    lab.a.start();
    lab.b.start();
    assert!(wait_until(Duration::from_secs(20), || peer_alive(
        &lab.b, 1
    ) == Some(true)));
    lab::create_in(&lab.a.ns, udp_flows(100, 4_100));
    assert!(
        wait_until(Duration::from_secs(30), || warm_counter(&lab.b, "written")
            .is_some_and(|n| n >= 100)
            && warm_counter(&lab.b, "pending") == Some(0)),
        "b never mirrored a's flows"
    );
    let d = doctor(&lab.b.ns, &lab.b.config, &[]);
    d.assert("warm_standby", "ok");
    // Someone deletes mirrored flows from b's kernel: b writes them again,
    // and doctor says the kernel lost flows.
    let out = lab
        .b
        .exec("conntrack", &["-D", "-p", "udp", "--dport", "4100"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(30), || warm_counter(&lab.b, "restored")
            .is_some_and(|n| n > 0)),
        "b did not restore the deleted flows"
    );
    let d = doctor(&lab.b.ns, &lab.b.config, &[]);
    d.assert("warm_standby", "info");
    // a's kernel lost nothing it mirrors.
    doctor(&lab.a.ns, &lab.a.config, &[]).assert("warm_standby", "ok");
    // Without warm standby there is nothing to say.
    let mut plain = Lab::two_nodes(SyncFamily::V4);
    plain.a.start();
    let d = doctor(&plain.a.ns, &plain.a.config, &[]);
    d.assert("daemon", "ok");
    assert!(d.findings("warm_standby").is_empty(), "{:#}", d.report);
}

#[test]
fn a_high_new_flow_rate_suggests_notrack_for_the_busiest_port() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let ns = Ns::new("rate");
    let config = ns.config("");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // New flows to udp/5353 in batches of 2,000 every 25 ms (at most
    // 80,000 a second), for as long as doctor watches; 150,000 at most.
    let writer = {
        let name = ns.name.clone();
        std::thread::spawn(move || {
            in_netns(&name, move || {
                let mut w = Writer::open().expect("writer");
                let all = udp_flows(150_000, 5_353);
                let mut written = 0;
                for batch in all.chunks(2_000) {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    written +=
                        batch.len() as u64 - w.create_all(batch, &CreateOptions::default()).failed;
                    std::thread::sleep(Duration::from_millis(25));
                }
                written
            })
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let d = doctor(&ns.name, &config, &[]);
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("writer thread");
    assert!(written > 0);
    // Info, never more: doctor cannot tell local flows from forwarded
    // ones, which must stay tracked on a NAT or stateful firewall.
    d.assert("notrack_rate", "info");
    let f = d.findings("notrack_rate")[0];
    assert!(
        f["seen"]
            .as_str()
            .unwrap()
            .contains("busiest destination udp/5353"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("fib daddr type local udp dport 5353 notrack"),
        "{f}"
    );
    // Quiet again: the same namespace, nothing created while doctor watches.
    let d = doctor(&ns.name, &config, &[]);
    d.assert("notrack_rate", "ok");
}
