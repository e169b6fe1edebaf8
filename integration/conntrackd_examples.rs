//! Debian's conntrackd example configurations run for real: each of
//! `/usr/share/doc/conntrackd/examples/{sync/ftfw,sync/notrack,sync/alarm,
//! stats}/conntrackd.conf` (read at test time, not vendored; a missing one
//! fails the test, and tests/conntrackd_conf.rs fails on an example of any
//! other kind) is copied twice, one copy per firewall, and two
//! ctsyncd daemons started from them (`ctsyncd -C conntrackd.conf`, read as
//! is) in namespaces of our own must replicate a flow written with
//! `conntrack -I`, while the flows the example's Filter excludes stay home.
//! With the FTFW example, conntrackd's own `primary-backup.sh` (only its
//! three variables changed) then commits the flow on the other node. The
//! Stats example must be refused by the daemon with its documented reason.
//! A conntrackd.conf over an IPv6 UDP link (the examples are all IPv4
//! multicast) replicates an IPv6 flow the same way.
//!
//! Owns: the two namespaces per example joined by a veth pair named as the
//! example's interface (`eth2`), and the daemons in them, all removed on
//! drop even when a test fails.
//!
//! Network safety: the examples use 192.168.x.y, which must not appear on
//! the machine's networks; the copies have them moved into 198.18.x.y (the
//! benchmarking range). Their multicast group 225.0.0.50 stays as it is: it
//! only travels on the namespaces' own veth pair. Needs root, `conntrack`
//! and the conntrackd package (integration/install-deps).

mod lab;

use lab::{ctsyncd_bin, must, run, wait_until, Node};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const EXAMPLES: &str = "/usr/share/doc/conntrackd/examples";
/// A flow must reach the other node within this (ALARM's refresh in the
/// example is 15 s; FTFW and NOTRACK send at once).
const REPLICATE: Duration = Duration::from_secs(40);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Two firewalls for one example: namespaces, daemons, scratch files.
struct Pair {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill(libc::SIGTERM);
        }
        for n in &self.nodes {
            let _ = run("ip", &["netns", "del", &n.ns]);
        }
        if std::thread::panicking() {
            eprintln!("files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The example's file, or a failure saying how to get it.
fn example(kind: &str) -> PathBuf {
    let path = Path::new(EXAMPLES).join(kind).join("conntrackd.conf");
    assert!(
        path.is_file(),
        "{} is missing: integration/install-deps installs conntrackd and extracts its examples",
        path.display()
    );
    path
}

/// The example, made runnable in the lab. Only what must change does:
/// - addresses 192.168.x.y become 198.18.x.y (network safety), and the
///   second node's own sync address 198.18.100.100 becomes .101: the two
///   copies are mirror images, as on a real pair;
/// - the UNIX socket, lock file and log file move into the test's
///   directory: network namespaces share the file system, so two daemons
///   cannot both use /var/run/conntrackd.ctl, and the host's /var/log is
///   left alone.
///
/// Everything else (mode, link, buffers, filter) is the example's own.
fn lab_copy(text: &str, dir: &Path, node: &str, second: bool) -> String {
    let original_lines = text.lines().count();
    let mut t = text.replace("192.168.", "198.18.");
    if second {
        t = t.replace("198.18.100.100", "198.18.100.101");
    }
    let socket = dir.join(format!("{node}.ctl"));
    let lock = dir.join(format!("{node}.lock"));
    let log = dir.join(format!("{node}.log"));
    let replace_word = |t: &str, from: &str, to: &str| -> String {
        assert!(t.contains(from), "the example no longer has {from:?}");
        t.replace(from, to)
    };
    t = replace_word(
        &t,
        "Path /var/run/conntrackd.ctl",
        &format!("Path {}", socket.display()),
    );
    t = replace_word(
        &t,
        "LockFile /var/lock/conntrack.lock",
        &format!("LockFile {}", lock.display()),
    );
    t = replace_word(&t, "LogFile on", &format!("LogFile {}", log.display()));
    assert!(!t.contains("192.168."), "an address left unchanged");
    assert_eq!(
        t.lines().count(),
        original_lines,
        "lines must stay where they were"
    );
    t
}

/// Two namespaces joined by a veth pair named `iface` on both sides, with
/// `addrs` on it, and a conntrackd.conf for each from `config(dir, node,
/// second)`.
fn build(
    tag: &str,
    iface: &str,
    addrs: [&str; 2],
    config: impl Fn(&Path, &str, bool) -> String,
) -> Pair {
    for module in ["nf_conntrack", "nf_conntrack_netlink"] {
        let _ = std::process::Command::new("modprobe").arg(module).output();
    }
    let id = format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let dir = std::env::temp_dir().join(format!("cts-cdconf-{}-{id}", tag.replace('/', "-")));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut p = Pair {
        dir: dir.clone(),
        nodes: Vec::new(),
    };
    for (i, name) in ["a", "b"].iter().enumerate() {
        let path = dir.join(format!("{name}-conntrackd.conf"));
        std::fs::write(&path, config(&dir, name, i == 1)).expect("write the config");
        let node = Node {
            name: format!("{tag}-{name}"),
            ns: format!("cts-cd{name}-{id}"),
            config: path,
            socket: dir.join(format!("{name}.ctl")),
            log: dir.join(format!("{name}.out")),
            daemon: None,
            unit_binary: None,
        };
        must("ip", &["netns", "add", &node.ns]);
        must("ip", &["-n", &node.ns, "link", "set", "lo", "up"]);
        p.nodes.push(node);
    }
    let (a, b) = (&p.nodes[0].ns, &p.nodes[1].ns);
    // The interface the config names, on both sides of one veth pair.
    must(
        "ip",
        &[
            "link", "add", iface, "netns", a, "type", "veth", "peer", "name", iface, "netns", b,
        ],
    );
    for (ns, addr) in [(a, addrs[0]), (b, addrs[1])] {
        let mut args = vec!["-n", ns.as_str(), "addr", "add", addr, "dev", iface];
        if addr.contains(':') {
            args.push("nodad");
        }
        must("ip", &args);
        must("ip", &["-n", ns, "link", "set", iface, "up"]);
    }
    p
}

fn pair(kind: &str) -> Pair {
    let text = std::fs::read_to_string(example(kind)).expect("read the example");
    build(
        kind,
        "eth2",
        ["198.18.100.100/24", "198.18.100.101/24"],
        |dir, name, second| lab_copy(&text, dir, name, second),
    )
}

/// `conntrack -I` in a node's namespace.
fn insert(node: &Node, args: &[&str]) {
    let mut all = vec!["-I"];
    all.extend_from_slice(args);
    let out = node.exec("conntrack", &all);
    assert!(
        out.status.success(),
        "conntrack {all:?} in {}: {}",
        node.ns,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn external(node: &Node) -> String {
    node.ctl_ok(&["-e"])
}

/// Start both daemons from the example's copies; a TCP flow created on A
/// must show in B's external cache; flows the example's Filter excludes
/// (a UDP flow: Protocol Accept lists TCP SCTP DCCP; a TCP flow from an
/// address under Address Ignore) must not.
fn replicates(kind: &str) {
    let mut p = pair(kind);
    for n in &mut p.nodes {
        n.start();
    }
    let (a, b) = (&p.nodes[0], &p.nodes[1]);
    // The settings without effect are named once at start, with their
    // line, through the daemon's log (an info line on stderr here).
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    let hash_line = std::fs::read_to_string(&a.config)
        .unwrap_or_default()
        .lines()
        .position(|l| l.trim_start().starts_with("HashSize"))
        .map_or(0, |i| i + 1);
    let note = format!(
        "INFO note: {}:{hash_line}: HashSize 32768: no setting",
        a.config.display()
    );
    assert_eq!(
        log.matches(&note).count(),
        1,
        "{kind}: not one start-up note for HashSize:\n{log}"
    );
    // The example's LogFile has it too: the note goes through the log, so
    // a background daemon (`-d`, stderr gone) keeps it.
    let log_file = p.dir.join("a.log");
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&log_file).is_ok_and(|f| f.contains(&note))
        }),
        "{kind}: no start-up note in {}",
        log_file.display()
    );
    // Both really are the example's configuration, read as is.
    let status = a.ctl_ok(&["status"]);
    let id_a = u32::from_be_bytes([198, 18, 100, 100]);
    assert!(status.contains(&format!("(node {id_a})")), "{status}");
    let tcp = [
        "-p",
        "tcp",
        "--sport",
        "40001",
        "--dport",
        "80",
        "--state",
        "ESTABLISHED",
        "-t",
        "600",
        "-u",
        "SEEN_REPLY,ASSURED",
    ];
    let mut wanted = vec!["-s", "198.19.5.1", "-d", "198.19.5.2"];
    wanted.extend_from_slice(&tcp);
    // 198.18.0.100 is the example's "virtual IP 1" (192.168.0.100), ignored.
    let mut ignored = vec!["-s", "198.18.0.100", "-d", "198.19.5.3"];
    ignored.extend_from_slice(&tcp);
    insert(a, &ignored);
    insert(
        a,
        &[
            "-p",
            "udp",
            "-s",
            "198.19.6.1",
            "-d",
            "198.19.6.2",
            "--sport",
            "5353",
            "--dport",
            "53",
            "-t",
            "600",
        ],
    );
    insert(a, &wanted);
    let arrived = wait_until(REPLICATE, || external(b).contains("src=198.19.5.1 "));
    assert!(
        arrived,
        "{kind}: the TCP flow never reached B's external cache:\n{}{}{}",
        external(b),
        a.log_tail(),
        b.log_tail()
    );
    let seen = external(b);
    assert!(
        !seen.contains("src=198.18.0.100 "),
        "{kind}: Address Ignore not applied:\n{seen}"
    );
    assert!(
        !seen.contains("src=198.19.6.1 "),
        "{kind}: Protocol Accept not applied:\n{seen}"
    );
    // And the copy that names 198.18.100.101 is B's: a different node id.
    let status = b.ctl_ok(&["status"]);
    let id_b = u32::from_be_bytes([198, 18, 100, 101]);
    assert!(status.contains(&format!("(node {id_b})")), "{status}");
    if kind == "sync/ftfw" {
        fail_over_with_primary_backup_sh(&p);
    }
}

/// conntrackd's own keepalived script, with only its three variables
/// pointed at ctsyncd and B's copy of the example, makes B primary: the
/// replicated flow is in B's kernel table afterwards (it was only in its
/// external cache before).
fn fail_over_with_primary_backup_sh(p: &Pair) {
    let b = &p.nodes[1];
    let in_kernel = |n: &Node| {
        n.kernel_table()
            .iter()
            .any(|l| l.contains("src=198.19.5.1 "))
    };
    assert!(!in_kernel(b), "B's kernel has the flow before any commit");
    let original = Path::new(EXAMPLES).join("sync/primary-backup.sh");
    let script = std::fs::read_to_string(&original).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (integration/install-deps extracts it)",
            original.display()
        )
    });
    let lock = p.dir.join("b.lock");
    let mut replaced = 0;
    let copy: String = script
        .lines()
        .map(|line| {
            let value = if line.starts_with("CONNTRACKD_BIN=") {
                Some(format!("CONNTRACKD_BIN={}", ctsyncd_bin().display()))
            } else if line.starts_with("CONNTRACKD_LOCK=") {
                Some(format!("CONNTRACKD_LOCK={}", lock.display()))
            } else if line.starts_with("CONNTRACKD_CONFIG=") {
                Some(format!("CONNTRACKD_CONFIG={}", b.config.display()))
            } else {
                None
            };
            replaced += usize::from(value.is_some());
            value.unwrap_or_else(|| line.to_string()) + "\n"
        })
        .collect();
    assert_eq!(
        replaced, 3,
        "primary-backup.sh no longer sets its three variables"
    );
    let path = p.dir.join("primary-backup.sh");
    std::fs::write(&path, copy).expect("write the script");
    let out = b.exec("sh", &[lab::path_str(&path), "primary"]);
    assert!(
        out.status.success(),
        "primary-backup.sh primary: {}{}",
        String::from_utf8_lossy(&out.stderr),
        b.log_tail()
    );
    assert!(
        wait_until(Duration::from_secs(10), || in_kernel(b)),
        "after primary-backup.sh primary, B's kernel lacks the flow:\n{:?}{}",
        b.kernel_table(),
        b.log_tail()
    );
}

#[test]
fn debian_ftfw_example_replicates_a_flow() {
    replicates("sync/ftfw");
}

#[test]
fn debian_notrack_example_replicates_a_flow() {
    replicates("sync/notrack");
}

#[test]
fn debian_alarm_example_replicates_a_flow() {
    replicates("sync/alarm");
}

#[test]
fn debian_stats_example_is_refused_at_start_with_its_reason() {
    let path = example("stats");
    let text = std::fs::read_to_string(&path).expect("read");
    let line = text
        .lines()
        .position(|l| l.starts_with("Stats"))
        .expect("a Stats section")
        + 1;
    let out = std::process::Command::new(ctsyncd_bin())
        .arg("-C")
        .arg(&path)
        .output()
        .expect("run ctsyncd");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:{line}: the Stats section is refused",
            path.display()
        )),
        "{stderr}"
    );
}

/// A conntrackd.conf of one's own over an IPv6 UDP link (Debian's examples
/// are all IPv4 multicast): mirrored on the two nodes, it replicates an
/// IPv6 flow, and each node's id is derived from its own IPv6 address.
#[test]
fn ipv6_udp_conntrackd_conf_replicates_a_flow() {
    let config = |dir: &Path, name: &str, second: bool| {
        let (me, other) = if second { (2, 1) } else { (1, 2) };
        format!(
            "General {{\n\tLockFile {d}/{name}.lock\n\tUNIX {{\n\t\tPath {d}/{name}.ctl\n\t}}\n\
             \tFilter From Kernelspace {{\n\t\tProtocol Accept {{ TCP }}\n\t}}\n}}\n\
             Sync {{\n\tMode FTFW {{ }}\n\tUDP Default {{\n\t\tIPv6_address 2001:db8:5::{me}\n\
             \t\tIPv6_Destination_Address 2001:db8:5::{other}\n\t\tPort 3780\n\
             \t\tInterface sync6\n\t}}\n}}\n",
            d = dir.display()
        )
    };
    let mut p = build(
        "udp6",
        "sync6",
        ["2001:db8:5::1/64", "2001:db8:5::2/64"],
        config,
    );
    for n in &mut p.nodes {
        n.start();
    }
    let (a, b) = (&p.nodes[0], &p.nodes[1]);
    for (n, addr) in [(a, "2001:db8:5::1"), (b, "2001:db8:5::2")] {
        let id = ctsync::conntrackd_conf::node_id_for(addr.parse().unwrap());
        let status = n.ctl_ok(&["status"]);
        assert!(status.contains(&format!("(node {id})")), "{status}");
    }
    insert(
        a,
        &[
            "-p",
            "udp",
            "-s",
            "2001:db8:1::5",
            "-d",
            "2001:db8:1::6",
            "--sport",
            "5353",
            "--dport",
            "53",
            "-t",
            "600",
        ],
    );
    insert(
        a,
        &[
            "-p",
            "tcp",
            "-s",
            "2001:db8:1::1",
            "-d",
            "2001:db8:1::2",
            "--sport",
            "40001",
            "--dport",
            "443",
            "--state",
            "ESTABLISHED",
            "-t",
            "600",
            "-u",
            "SEEN_REPLY,ASSURED",
        ],
    );
    let arrived = wait_until(REPLICATE, || external(b).contains("src=2001:db8:1::1 "));
    assert!(
        arrived,
        "the IPv6 flow never reached B:\n{}{}{}",
        external(b),
        a.log_tail(),
        b.log_tail()
    );
    let seen = external(b);
    assert!(
        !seen.contains("src=2001:db8:1::5 "),
        "Protocol Accept {{ TCP }} not applied:\n{seen}"
    );
}
