//! End-to-end tests on the real kernel: two firewalls in network namespaces
//! joined by a veth sync link, each running ctsyncd; flows are written into
//! A's kernel and must appear in B's external cache and, after `-c`, in B's
//! kernel table exactly as A holds them.
//!
//! Needs root (namespaces, ctnetlink). Addresses: 198.18.0.0/15, 2001:db8::/32.

mod lab;

use ctsync::flow::FlowKey;
use ctsync::kernel::write::WriteOp;
use lab::{
    apply_in, comparable, create_in, flow_mix, in_netns, mark_updates, wait_until, Lab, SyncFamily,
};
use serde_json::Value;
use std::net::UdpSocket;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

/// Does this kernel still track DCCP? Linux 6.16 removed its tracker: a
/// create then succeeds but the generic tracker drops the ports and state.
fn kernel_has_dccp(ns: &str) -> bool {
    let exec = |args: &[&str]| {
        let mut all = vec!["netns", "exec", ns, "conntrack"];
        all.extend_from_slice(args);
        lab::run("ip", &all)
    };
    let created = exec(&[
        "-I",
        "-p",
        "dccp",
        "-s",
        "198.18.250.1",
        "-d",
        "198.18.250.2",
        "--sport",
        "1",
        "--dport",
        "2",
        "--state",
        "OPEN",
        "--role",
        "client",
        "-t",
        "10",
    ]);
    if !created.status.success() {
        return false;
    }
    let listed = exec(&["-L", "-p", "dccp"]);
    let _ = exec(&["-D", "-p", "dccp"]);
    String::from_utf8_lossy(&listed.stdout).contains("sport=1 dport=2")
}

fn views_agree(lab: &Lab) -> bool {
    let a = comparable(lab.a.cache_json("-i"));
    let b = comparable(lab.b.cache_json("-e"));
    a == b
}

/// Wait until A's daemon holds `expected` flows (it has seen its kernel's
/// changes), then until B's external cache equals A's internal cache.
fn assert_converges(lab: &Lab, expected: usize, what: &str) {
    let a_ready = wait_until(CONVERGE, || lab.a.cache_json("-i").len() == expected);
    assert!(
        a_ready,
        "{what}: A's internal cache never reached {expected} flows (has {}){}",
        lab.a.cache_json("-i").len(),
        lab.a.log_tail()
    );
    let converged = wait_until(CONVERGE, || views_agree(lab));
    if !converged {
        let a = comparable(lab.a.cache_json("-i"));
        let b = comparable(lab.b.cache_json("-e"));
        let missing: Vec<_> = a.difference(&b).take(5).collect();
        let extra: Vec<_> = b.difference(&a).take(5).collect();
        panic!(
            "{what}: B's external cache ({}) never matched A's internal cache ({})\nmissing on B: {missing:#?}\nextra on B: {extra:#?}{}{}",
            b.len(),
            a.len(),
            lab.a.log_tail(),
            lab.b.log_tail()
        );
    }
}

fn stat_value(stats: &Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

/// `ctsyncd FLAG | head -1`: the client's reader takes one line and closes
/// the pipe while some 3 MB are still to come. The client stops quietly:
/// exit 0, nothing on stderr (it used to panic, "failed printing to
/// stdout", exit 101).
fn first_line_then_hang_up(node: &lab::Node, flag: &str) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(lab::ctsyncd_bin())
        .args(["-C", &node.config.display().to_string(), flag])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the ctsyncd client");
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out)
            .read_line(&mut first)
            .expect("read the first line");
    }
    let out = child.wait_with_output().expect("wait for the client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.contains("src="), "first line: {first:?}");
    assert!(
        out.status.success() && stderr.is_empty(),
        "ctsyncd {flag} | head -1: {} {stderr}",
        out.status
    );
}

#[test]
fn twenty_thousand_flows_replicate_commit_update_and_delete() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    let dccp = kernel_has_dccp(&lab.a.ns);
    if !dccp {
        lab::note_for_summary(
            "e2e: this kernel has no DCCP conntrack tracker (removed in Linux 6.16): \
             the 20,000-flow replication test ran without DCCP flows",
        );
    }
    let flows = flow_mix(20_000, 1, dccp);
    create_in(&lab.a.ns, flows.clone());
    lab.a.start();
    lab.b.start();

    assert_eq!(
        lab.a.cache_json("-i").len(),
        20_000,
        "A's internal cache after its start-up dump"
    );
    first_line_then_hang_up(&lab.a, "-i");
    assert_converges(&lab, 20_000, "initial replication");

    // Failover: commit B's external cache into B's (empty) kernel table.
    assert!(
        lab.b.kernel_table().is_empty(),
        "B's kernel table must start empty"
    );
    lab.b.ctl_ok(&["-c"]);
    let table_a = lab.a.kernel_table();
    let table_b = lab.b.kernel_table();
    assert_eq!(table_a.len(), 20_000);
    if table_a != table_b {
        let only_a: Vec<_> = table_a
            .iter()
            .filter(|l| !table_b.contains(l))
            .take(5)
            .collect();
        let only_b: Vec<_> = table_b
            .iter()
            .filter(|l| !table_a.contains(l))
            .take(5)
            .collect();
        panic!("kernel tables differ after -c\nonly in A: {only_a:#?}\nonly in B: {only_b:#?}");
    }
    // Updates and deletions in A reach B.
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    for (i, flow) in flows.iter().enumerate() {
        if i % 10 == 1 {
            let mut changed = flow.clone();
            changed.mark = 4242;
            updates.push(WriteOp::Update(changed));
        } else if i % 10 == 4 {
            deletes.push(WriteOp::Delete(flow.key()));
        }
    }
    let deleted: Vec<FlowKey> = deletes
        .iter()
        .filter_map(|op| match op {
            WriteOp::Delete(k) => Some(*k),
            _ => None,
        })
        .collect();
    apply_in(&lab.a.ns, updates);
    apply_in(&lab.a.ns, deletes);
    // A's daemon must see its kernel's changes first; then B must follow.
    let a_settled = wait_until(CONVERGE, || {
        let a = lab.a.cache_json("-i");
        a.len() == 20_000 - deleted.len() && a.iter().filter(|f| f["mark"] == 4242).count() == 2_000
    });
    if !a_settled {
        let a = lab.a.cache_json("-i");
        let marked = a.iter().filter(|f| f["mark"] == 4242).count();
        let kernel = lab.a.kernel_table();
        let kernel_marked = kernel.iter().filter(|l| l.contains("mark=4242")).count();
        panic!(
            "A's internal cache never reflected the updates and deletes: cache {} flows ({marked} marked), kernel {} flows ({kernel_marked} marked){}",
            a.len(),
            kernel.len(),
            lab.a.log_tail()
        );
    }
    assert_converges(&lab, 20_000 - deleted.len(), "updates and deletes");
    let b_external = lab.b.cache_json("-e");
    assert_eq!(b_external.len(), 20_000 - deleted.len());
    let marked = b_external.iter().filter(|f| f["mark"] == 4242).count();
    assert_eq!(marked, 2_000, "updated marks on B");
}

#[test]
fn ipv6_sync_link_carries_events_only_changes() {
    // No periodic re-read: creates, updates and deletes must all travel as
    // kernel events, over an IPv6 sync link.
    let mut lab = Lab::two_nodes_events_only(SyncFamily::V6);
    lab.a.start();
    lab.b.start();
    let flows = flow_mix(2_000, 2, false);
    create_in(&lab.a.ns, flows.clone());
    assert_converges(&lab, 2_000, "creates over an IPv6 sync link");
    let updates = mark_updates(&flows, 4, 77);
    let deletes: Vec<WriteOp> = flows
        .iter()
        .skip(1)
        .step_by(4)
        .map(|f| WriteOp::Delete(f.key()))
        .collect();
    apply_in(&lab.a.ns, updates);
    apply_in(&lab.a.ns, deletes);
    assert_converges(&lab, 1_500, "updates and deletes as events");
    let marked = lab
        .b
        .cache_json("-e")
        .iter()
        .filter(|f| f["mark"] == 77)
        .count();
    assert_eq!(marked, 500);
    lab.b.ctl_ok(&["-c"]);
    assert_eq!(lab.a.kernel_table(), lab.b.kernel_table());
}

#[test]
fn packet_driven_updates_keep_tcp_state_on_the_peer() {
    // A real TCP connection through A's conntrack (on A's loopback): the
    // kernel's later updates carry only what changed (here a mark set by a
    // rule on one large segment), and B must still know the connection is
    // ESTABLISHED.
    let mut lab = Lab::two_nodes_events_only(SyncFamily::V4);
    lab.a.start();
    lab.b.start();
    let rules = "table inet cts_test {\n chain out {\n  type filter hook output priority 0;\n  tcp dport 4000 meta length > 200 ct mark set 42\n }\n}\n";
    let rules_file = lab.dir.join("rules.nft");
    std::fs::write(&rules_file, rules).expect("write rules");
    let out = lab.a.exec("nft", &["-f", lab::path_str(&rules_file)]);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let ns = lab.a.ns.clone();
    let traffic = std::thread::spawn(move || {
        use std::io::{Read, Write};
        lab::enter_netns(&ns);
        let listener = std::net::TcpListener::bind("127.0.0.1:4000").expect("listen");
        let mut client = std::net::TcpStream::connect("127.0.0.1:4000").expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        for _ in 0..3 {
            client.write_all(b"hello").expect("write");
            server.read_exact(&mut buf).expect("read");
            server.write_all(&buf).expect("echo");
            client.read_exact(&mut buf).expect("read echo");
        }
        // The connection is ESTABLISHED and quiet; now one large segment
        // changes only the mark, so the kernel's update event carries no
        // TCP state.
        std::thread::sleep(Duration::from_millis(300));
        let big = [7u8; 400];
        let mut sink = [0u8; 400];
        client.write_all(&big).expect("write big");
        server.read_exact(&mut sink).expect("read big");
        ready_tx.send(()).expect("signal");
        // Keep the connection open until the test has looked.
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("connection up");
    let seen = wait_until(Duration::from_secs(20), || {
        lab.b
            .cache_json("-e")
            .iter()
            .any(|f| f["orig"]["dport"] == 4000 && f["mark"] == 42 && f["state"] == "ESTABLISHED")
    });
    let _ = done_tx.send(());
    let _ = traffic.join();
    assert!(
        seen,
        "B never held the marked connection as ESTABLISHED: {:#?}",
        lab.b.cache_json("-e")
    );
}

#[test]
fn killed_backup_converges_after_restart_without_manual_resync() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    create_in(&lab.a.ns, flow_mix(3_000, 3, false));
    lab.a.start();
    lab.b.start();
    assert_converges(&lab, 3_000, "before the crash");

    lab.b.kill(libc::SIGKILL);
    // A keeps changing while B is down: new flows, deletions, updates.
    create_in(&lab.a.ns, flow_mix(2_000, 4, false));
    let gone: Vec<WriteOp> = flow_mix(3_000, 3, false)
        .iter()
        .step_by(3)
        .map(|f| WriteOp::Delete(f.key()))
        .collect();
    apply_in(&lab.a.ns, gone);
    // The socket of the killed daemon is stale; the restart must cope.
    lab.b.start();
    create_in(&lab.a.ns, flow_mix(500, 5, false));
    assert_converges(&lab, 4_500, "after B's restart");
}

#[test]
fn malformed_datagrams_are_counted_dropped_and_survived() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    lab.a.start();
    lab.b.start();
    create_in(&lab.a.ns, flow_mix(200, 6, false));
    assert_converges(&lab, 200, "before the garbage");

    // Garbage from A's own sync address, so it passes the source check and
    // reaches the decoder.
    in_netns(&lab.a.ns, || {
        let sock = UdpSocket::bind("198.18.0.1:0").expect("bind");
        let target = "198.18.0.2:3780";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        sock.send_to(&[0x43], target).expect("truncated");
        sock.send_to(&[0u8; 64], target).expect("wrong magic");
        for _ in 0..50 {
            let len = (next() % 1400) as usize + 1;
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            sock.send_to(&junk, target).expect("random");
        }
        // Larger than B's own datagrams: read all the same (a peer with a
        // larger sync.mtu), and refused for its magic.
        let huge = vec![0x55u8; 9000];
        sock.send_to(&huge, target).expect("jumbo junk");
    });
    // A valid header with a bad version and one with a lying length.
    let valid = in_netns(&lab.a.ns, || {
        use ctsync::wire::header::{flags, Header};
        let header = Header {
            flags: flags::RELIABLE,
            node_id: 99,
            epoch: 1,
            seq: 1,
            body_len: 0,
            tag_len: 0,
        };
        let mut bytes = ctsync::wire::encode_datagram(&header, &[]);
        let sock = UdpSocket::bind("198.18.0.1:0").expect("bind");
        let mut bad_version = bytes.clone();
        bad_version[4] = 77;
        sock.send_to(&bad_version, "198.18.0.2:3780")
            .expect("bad version");
        bytes.extend_from_slice(&[1, 2, 3]);
        sock.send_to(&bytes, "198.18.0.2:3780").expect("bad length");
        true
    });
    assert!(valid);

    let counted = wait_until(Duration::from_secs(10), || {
        let stats: Value =
            serde_json::from_str(&lab.b.ctl_ok(&["-s", "--json"])).expect("stats json");
        let by_reason = &stats["sync"]["malformed"];
        stat_value(by_reason, &["truncated"]) >= 1
            && stat_value(by_reason, &["bad_magic"]) >= 2
            && stat_value(by_reason, &["bad_version"]) >= 1
            && stat_value(by_reason, &["bad_length"]) >= 1
            && by_reason
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>())
                >= 54
    });
    assert!(
        counted,
        "malformed datagrams not counted: {}",
        lab.b.ctl_ok(&["-s"])
    );
    // The text stats show them too.
    let text = lab.b.ctl_ok(&["-s"]);
    assert!(text.contains("Malformed msgs"), "{text}");

    // B keeps running and keeps syncing.
    create_in(&lab.a.ns, flow_mix(300, 7, false));
    assert_converges(&lab, 500, "after the garbage");
}

#[test]
fn primary_backup_script_fails_over_with_ctsyncd() {
    let script = std::path::Path::new("/usr/share/doc/conntrackd/examples/sync/primary-backup.sh");
    assert!(
        script.exists(),
        "conntrackd's primary-backup.sh is missing (apt-get install conntrackd)"
    );
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    create_in(&lab.a.ns, flow_mix(1_000, 8, false));
    lab.a.start();
    lab.b.start();
    assert_converges(&lab, 1_000, "before failover");

    let text = std::fs::read_to_string(script).expect("read script");
    let patched = text
        .replace(
            "CONNTRACKD_BIN=/usr/sbin/conntrackd",
            &format!("CONNTRACKD_BIN={}", lab::ctsyncd_bin().display()),
        )
        .replace(
            "CONNTRACKD_CONFIG=/etc/conntrackd/conntrackd.conf",
            &format!("CONNTRACKD_CONFIG={}", lab.b.config.display()),
        )
        .replace(
            "CONNTRACKD_LOCK=/var/lock/conntrack.lock",
            &format!("CONNTRACKD_LOCK={}", lab.dir.join("b.lock").display()),
        );
    assert_ne!(patched, text, "the script's variables were not found");
    let copy = lab.dir.join("primary-backup.sh");
    std::fs::write(&copy, patched).expect("write script");

    // B becomes primary: -c, -f, -R, -B.
    let out = lab.b.exec("sh", &[lab::path_str(&copy), "primary"]);
    assert!(
        out.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lab.a.kernel_table(),
        lab.b.kernel_table(),
        "B's kernel after promotion"
    );
    assert_eq!(
        lab.b.cache_json("-i").len(),
        1_000,
        "B's internal cache after -R"
    );
    assert!(
        lab.b.cache_json("-e").is_empty(),
        "B's external cache after -f"
    );
    // -B sent B's table to A, which now holds it as external state.
    let bulk_arrived = wait_until(CONVERGE, || lab.a.cache_json("-e").len() == 1_000);
    assert!(bulk_arrived, "B's bulk never reached A");

    // A becomes backup: -s succeeds (daemon alive), then -t and -n.
    let script_a = lab.dir.join("primary-backup-a.sh");
    let text_a = std::fs::read_to_string(&copy)
        .expect("read copy")
        .replace(lab::path_str(&lab.b.config), lab::path_str(&lab.a.config));
    std::fs::write(&script_a, text_a).expect("write script");
    let b_stats = |lab: &Lab| -> Value {
        serde_json::from_str(&lab.b.ctl_ok(&["-s", "--json"])).expect("stats JSON")
    };
    let requests_before = b_stats(&lab)["sync"]["resyncs_requested_received"]
        .as_u64()
        .unwrap_or(0);
    let out = lab.a.exec("sh", &[lab::path_str(&script_a), "backup"]);
    assert!(
        out.status.success(),
        "backup transition failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -t scheduled A's kernel flush, -n reached B.
    let log = std::fs::read_to_string(&lab.a.log).unwrap_or_default();
    assert!(
        log.contains("flushing conntrack table in"),
        "-t did not schedule a flush{}",
        lab.a.log_tail()
    );
    let asked = wait_until(CONVERGE, || {
        b_stats(&lab)["sync"]["resyncs_requested_received"]
            .as_u64()
            .unwrap_or(0)
            > requests_before
    });
    assert!(asked, "A's -n never reached B");
    // After the flush (purge_timeout_s, 60 s by default: not waited for
    // here) A still holds B's table as its external view.
    assert_eq!(lab.a.cache_json("-e").len(), 1_000);
}

#[test]
fn kill_flag_and_sigterm_stop_the_daemon_cleanly() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    lab.a.start();
    lab.b.start();
    lab.a.ctl_ok(&["-k"]);
    assert!(
        lab.a.wait_exit(Duration::from_secs(10)),
        "-k did not stop A"
    );
    assert!(!lab.a.socket.exists(), "A left its control socket behind");
    let out = lab.a.ctl(&["-s"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "client must fail when the daemon is gone"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "one-line reason"
    );

    lab.b.kill(libc::SIGTERM);
    assert!(
        !lab.b.socket.exists(),
        "B left its control socket behind after SIGTERM"
    );
}

#[test]
fn systemd_hears_ready_only_once_the_cache_is_primed() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    create_in(&lab.a.ns, flow_mix(5_000, 9, false));
    let notify_path = lab.dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let path = notify_path.to_str().expect("utf-8 path").to_string();
    lab.a.start_with_env(&[("NOTIFY_SOCKET", &path)]);
    let mut buf = [0u8; 512];
    let n = notify
        .recv(&mut buf)
        .expect("no notification from the daemon");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        message.contains("READY=1"),
        "unexpected notification: {message}"
    );
    // READY came after the start-up dump: the cache already holds the table.
    assert_eq!(lab.a.cache_json("-i").len(), 5_000);
    lab.a.kill(libc::SIGTERM);
    let n = notify.recv(&mut buf).expect("no STOPPING notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

#[test]
fn resync_request_repairs_and_anti_entropy_follows_a_kernel_flush() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    lab.a.start();
    lab.b.start();
    create_in(&lab.a.ns, flow_mix(500, 10, false));
    assert_converges(&lab, 500, "before the damage");

    // Flows removed from B's external cache behind the protocol's back come
    // back with `-n` (B asks A for its full table).
    lab::require_test_seams();
    let out = lab.b.ctl_ok(&["debug-drop-external", "100"]);
    assert!(out.contains("dropped 100"), "{out}");
    assert_eq!(lab.b.cache_json("-e").len(), 400);
    lab.b.ctl_ok(&["-n"]);
    assert_converges(&lab, 500, "after -n");

    // `-F` empties A's kernel table of every flow the filter accepts. The
    // deletions are A's own and are not replicated (as with conntrackd),
    // not even by anti-entropy: a standby keeps what a demoted node purges.
    lab.a.ctl_ok(&["-F"]);
    assert!(lab.a.kernel_table().is_empty(), "A's kernel table after -F");
    let emptied = wait_until(Duration::from_secs(10), || {
        lab.a.cache_json("-i").is_empty()
    });
    assert!(emptied, "A's internal cache still holds flows after -F");
    let a_stats: Value = serde_json::from_str(&lab.a.ctl_ok(&["-s", "--json"])).expect("JSON");
    assert_eq!(a_stats["digests"]["paused"], true);
    // Two digest intervals (5 s): B's view of A stays.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        lab.b.cache_json("-e").len(),
        500,
        "B swept A's flushed flows"
    );
    // `-R` makes A's (empty) table the reference again: B follows it.
    lab.a.ctl_ok(&["-R"]);
    let aligned = wait_until(Duration::from_secs(30), || {
        lab.b.cache_json("-e").is_empty()
    });
    assert!(aligned, "B's view of A never followed A after -R");
}

#[test]
fn commit_shows_progress_on_a_terminal_and_nothing_otherwise() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    lab.a.start();
    lab.b.start();
    create_in(&lab.a.ns, flow_mix(150_000, 11, false));
    let complete = wait_until(Duration::from_secs(60), || {
        let s: Value = serde_json::from_str(&lab.b.ctl_ok(&["-s", "--json"])).expect("stats");
        s["external"]["active"] == 150_000
    });
    assert!(complete, "B's external cache never held the 150,000 flows");

    // Not a terminal: exactly what conntrackd prints for -c, nothing.
    let out = lab.b.ctl(&["-c"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");

    // On a terminal (script(1) gives the client a pty): a progress line.
    lab.b.exec("conntrack", &["-F"]);
    let command = format!(
        "{} -C {} -c",
        lab::ctsyncd_bin().display(),
        lab.b.config.display()
    );
    let out = lab::run("script", &["-qec", &command, "/dev/null"]);
    assert!(out.status.success(), "{out:?}");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("committing: "),
        "no progress on the terminal: {seen:?}"
    );
    assert!(seen.contains("/ 150000 flows"), "{seen:?}");
}
