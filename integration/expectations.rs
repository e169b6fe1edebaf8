//! Expectation sync between two daemons on the real kernel: an FTP
//! expectation made in A's kernel (its master flow carrying the kernel's
//! FTP helper) reaches B's external cache, `-c` writes it into B's kernel
//! after its master, `-c expect` alone and `-c ct` alone do what they say,
//! a delete follows, warm standby writes it without a commit; and the
//! controls: with `[sync] expectations` off, for another helper, or with
//! the master filtered out, nothing travels.
//!
//! Needs root (namespaces, ctnetlink) and the kernel's FTP helper (built in
//! or the nf_conntrack_ftp module, loaded here). Addresses: 198.18.0.0/15.

mod lab;

use ctsync::expect::{ExpectKey, Expectation};
use ctsync::flow::{proto, status, Flow, ProtoState, Tuple, L4};
use ctsync::kernel::write::Writer;
use ctsync::kernel::{ExpectOp, ExpectWriteReport};
use lab::{create_in, in_netns, wait_until, Lab, LabSpec, Node, SyncFamily};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
/// How long a control waits for what must not come (the positive cases
/// arrive in well under a second).
const QUIET: Duration = Duration::from_secs(4);

fn require_ftp_helper() {
    for m in ["nf_conntrack_ftp", "nf_nat_ftp"] {
        let _ = Command::new("modprobe").args(["-q", m]).status();
    }
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
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

/// An FTP control connection 198.18.50.1:`sport` -> 198.18.60.1:21 with
/// the kernel's FTP helper attached, established.
fn control_flow(sport: u16) -> Flow {
    let mut f = Flow::new(tcp("198.18.50.1", sport, "198.18.60.1", 21));
    f.status = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;
    f.timeout = 600;
    f.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 7,
        wscale_reply: 7,
        flags_orig: 0,
        flags_reply: 0,
    };
    f.helper = Some("ftp".into());
    f
}

/// The passive-mode data connection the server announced on `port`.
fn expectation(sport: u16, port: u16) -> Expectation {
    Expectation {
        zone: 0,
        master: control_flow(sport).orig,
        tuple: tcp("198.18.50.1", 0, "198.18.60.1", port),
        mask: tcp("255.255.255.255", 0, "255.255.255.255", 0xffff),
        timeout: 280,
        flags: 0,
        class: 0,
        helper: Some("ftp".into()),
        nat: None,
        expectfn: None,
    }
}

fn apply_expect_in(ns: &str, ops: Vec<ExpectOp>) -> ExpectWriteReport {
    in_netns(ns, move || {
        let mut w = Writer::open().expect("open writer");
        w.apply_expectations(&ops)
    })
}

/// `conntrack -L expect` in a node's namespace: each line without its
/// leading timeout and the class, sorted.
fn kernel_expectations(n: &Node) -> Vec<String> {
    let out = n.exec("conntrack", &["-L", "expect"]);
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
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
    lines.sort();
    lines
}

/// The expectations a daemon shows (`-i expect` / `-e expect`), as their
/// text without the age, sorted.
fn shown(n: &Node, flag: &str) -> Vec<String> {
    let json: Vec<Value> =
        serde_json::from_str(&n.ctl_ok(&[flag, "expect", "--json"])).expect("expect JSON");
    let mut v: Vec<String> = json
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

fn lab_with(sync_extra: &str, tables: &str) -> Lab {
    require_ftp_helper();
    let mut lab = Lab::new(LabSpec {
        family: SyncFamily::V4,
        sync_extra: sync_extra.to_string(),
        tables: tables.to_string(),
        ..LabSpec::default()
    });
    lab.a.start();
    lab.b.start();
    lab
}

/// A's kernel gets the control flow and its expectation.
fn make_in_a(lab: &Lab, sport: u16, port: u16) -> Expectation {
    create_in(&lab.a.ns, vec![control_flow(sport)]);
    // The master must be A's before its expectation is: wait for its event.
    assert!(
        wait_until(WAIT, || lab.a.cache_json("-i").len() == 1),
        "A never cached the control flow"
    );
    let e = expectation(sport, port);
    let r = apply_expect_in(&lab.a.ns, vec![ExpectOp::Create(e.clone())]);
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    e
}

#[test]
fn an_ftp_expectation_reaches_the_peer_and_commits_after_its_master() {
    let lab = lab_with("expectations = \"all\"", "");
    let e = make_in_a(&lab, 40001, 50001);
    let in_a = kernel_expectations(&lab.a);
    assert_eq!(in_a.len(), 1, "{in_a:?}");
    assert!(
        wait_until(WAIT, || shown(&lab.b, "-e") == vec![e.to_string()]),
        "B's external expectations: {:?}; A's internal: {:?}",
        shown(&lab.b, "-e"),
        shown(&lab.a, "-i")
    );
    assert_eq!(shown(&lab.a, "-i"), vec![e.to_string()]);
    // `-c ct` writes the flows only.
    assert!(kernel_expectations(&lab.b).is_empty());
    lab.b.ctl_ok(&["-c", "ct"]);
    assert_eq!(lab.b.kernel_table().len(), 1, "the control flow");
    assert!(
        kernel_expectations(&lab.b).is_empty(),
        "-c ct wrote an expectation"
    );
    // `-c expect` then writes the expectation: B's kernel equals A's.
    lab.b.ctl_ok(&["-c", "expect"]);
    assert_eq!(kernel_expectations(&lab.b), in_a);
    let stats: Value = serde_json::from_str(&lab.b.ctl_ok(&["-s", "--json"])).unwrap();
    assert_eq!(stats["expectations"]["committed"], 1, "{stats}");
    assert_eq!(stats["expectations"]["external"]["active"], 1);
    let text = lab.b.ctl_ok(&["-s", "expect"]);
    assert!(text.contains("cache external:"), "{text}");
    // A's delete reaches B's external cache.
    let r = apply_expect_in(&lab.a.ns, vec![ExpectOp::Delete(e.key())]);
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    assert!(
        wait_until(WAIT, || shown(&lab.b, "-e").is_empty()),
        "the delete never arrived: {:?}",
        shown(&lab.b, "-e")
    );
}

#[test]
fn a_plain_commit_writes_flows_then_expectations_into_an_empty_table() {
    let lab = lab_with("expectations = [\"ftp\"]", "");
    let e = make_in_a(&lab, 40002, 50002);
    assert!(wait_until(WAIT, || shown(&lab.b, "-e").len() == 1));
    // One `-c`: the expectation needs its master in B's empty table first.
    lab.b.ctl_ok(&["-c"]);
    assert_eq!(kernel_expectations(&lab.b), kernel_expectations(&lab.a));
    let key: ExpectKey = e.key();
    assert_eq!(key.master, control_flow(40002).orig);
}

#[test]
fn warm_standby_writes_the_expectation_without_a_commit() {
    let lab = lab_with("expectations = \"all\"\nwarm_standby = true", "");
    make_in_a(&lab, 40003, 50003);
    assert!(
        wait_until(WAIT, || kernel_expectations(&lab.b)
            == kernel_expectations(&lab.a)),
        "B's kernel: {:?}, A's: {:?}",
        kernel_expectations(&lab.b),
        kernel_expectations(&lab.a)
    );
    assert_eq!(kernel_expectations(&lab.b).len(), 1);
}

/// The controls: each setting that must keep the expectation home does.
#[test]
fn off_another_helper_or_a_filtered_master_sends_nothing() {
    let cases = [
        ("expectations = \"off\"", ""),
        ("expectations = [\"sip\"]", ""),
        (
            "expectations = \"all\"",
            "[filter]\naddress = { policy = \"ignore\", list = [\"198.18.50.0/24\"] }\n",
        ),
    ];
    for (sync_extra, tables) in cases {
        let lab = lab_with(sync_extra, tables);
        if tables.is_empty() {
            make_in_a(&lab, 40004, 50004);
        } else {
            // The master is filtered out: A does not cache it at all.
            create_in(&lab.a.ns, vec![control_flow(40004)]);
            let r = apply_expect_in(&lab.a.ns, vec![ExpectOp::Create(expectation(40004, 50004))]);
            assert_eq!(r.failed, 0, "{:?}", r.first_errors);
        }
        assert_eq!(
            kernel_expectations(&lab.a).len(),
            1,
            "{sync_extra} {tables}"
        );
        let arrived = wait_until(QUIET, || !shown(&lab.b, "-e").is_empty());
        assert!(!arrived, "{sync_extra} {tables}: an expectation travelled");
        assert!(shown(&lab.a, "-i").is_empty(), "{sync_extra} {tables}");
    }
}

/// The zones a daemon shows its expectations in (`-i` / `-e`).
fn shown_zones(n: &Node, flag: &str) -> Vec<u64> {
    let json: Vec<Value> =
        serde_json::from_str(&n.ctl_ok(&[flag, "expect", "--json"])).expect("expect JSON");
    json.iter().filter_map(|e| e["zone"].as_u64()).collect()
}

/// Two started daemons syncing every expectation, without periodic
/// re-reads: events only, since a re-read of A's expectations would mend
/// a delete that missed its zone.
fn started_without_rereads() -> Lab {
    let mut lab = Lab::new(LabSpec {
        family: SyncFamily::V4,
        sync_extra: "expectations = \"all\"".into(),
        reconcile_interval_s: 0,
        ..LabSpec::default()
    });
    lab.a.start();
    lab.b.start();
    lab
}

/// The kernel reports an expectation without its zone: A finds the zone
/// from the master flow it caches (also when it re-reads its kernel), B's
/// commit writes the expectation in that zone (where the kernel finds its
/// master), and its end in A reaches B as well.
#[test]
fn an_expectation_whose_master_is_in_a_zone_travels_in_that_zone() {
    require_ftp_helper();
    let lab = started_without_rereads();
    let mut master = control_flow(40005);
    master.zone = 7;
    create_in(&lab.a.ns, vec![master]);
    assert!(
        wait_until(WAIT, || lab.a.cache_json("-i").len() == 1),
        "A never cached the control flow"
    );
    let mut e = expectation(40005, 50005);
    e.zone = 7;
    let r = apply_expect_in(&lab.a.ns, vec![ExpectOp::Create(e.clone())]);
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    assert!(
        wait_until(WAIT, || shown_zones(&lab.b, "-e") == vec![7]),
        "B's external expectations: {:?}; A's internal: {:?}",
        shown(&lab.b, "-e"),
        shown(&lab.a, "-i")
    );
    lab.b.ctl_ok(&["-c"]);
    assert_eq!(kernel_expectations(&lab.b), kernel_expectations(&lab.a));
    assert_eq!(kernel_expectations(&lab.b).len(), 1);
    // A re-read of A's kernel finds it ours again, in zone 7: no change
    // travels.
    lab.a.ctl_ok(&["-R"]);
    assert_eq!(shown_zones(&lab.a, "-i"), vec![7]);
    let changed = wait_until(QUIET, || shown_zones(&lab.b, "-e") != vec![7]);
    assert!(
        !changed,
        "B's view after A's re-read: {:?}",
        shown(&lab.b, "-e")
    );
    // In zone 7 of B's kernel: a delete in zone 0 leaves it (the writer
    // counts a delete of nothing as done), one in zone 7 takes it.
    let mut in_zone_0 = e.key();
    in_zone_0.zone = 0;
    let r = apply_expect_in(&lab.b.ns, vec![ExpectOp::Delete(in_zone_0)]);
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    assert_eq!(kernel_expectations(&lab.b).len(), 1, "B held it in zone 0");
    let r = apply_expect_in(&lab.b.ns, vec![ExpectOp::Delete(e.key())]);
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    assert!(kernel_expectations(&lab.b).is_empty(), "not in zone 7");
    // Its end in A (as when its data connection arrives), reported again
    // without its zone, reaches B while the master stays.
    let r = apply_expect_in(&lab.a.ns, vec![ExpectOp::Delete(e.key())]);
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    assert!(kernel_expectations(&lab.a).is_empty());
    assert!(
        wait_until(WAIT, || shown(&lab.b, "-e").is_empty()),
        "the expectation's end never reached B: {:?}",
        shown(&lab.b, "-e")
    );
    assert_eq!(lab.b.cache_json("-e").len(), 1, "the master stays");
    assert!(shown(&lab.a, "-i").is_empty(), "{:?}", shown(&lab.a, "-i"));
}

/// Zones that overlap (one per customer, the same addresses in each): the
/// master tuple is cached in zones 0, 7 and 9, and an expectation of it,
/// reported without its zone, could be any one's. A asks its kernel which
/// zone holds each (events and re-reads alike), so B gets them in their
/// own zones, commits each there, and their ends follow. Before, both
/// were taken for zone 0's.
#[test]
fn an_expectation_whose_master_tuple_is_in_several_zones_is_placed_by_the_kernel() {
    require_ftp_helper();
    let lab = started_without_rereads();
    let masters: Vec<Flow> = [0, 7, 9]
        .into_iter()
        .map(|zone| {
            let mut m = control_flow(40006);
            m.zone = zone;
            m
        })
        .collect();
    create_in(&lab.a.ns, masters);
    assert!(
        wait_until(WAIT, || lab.a.cache_json("-i").len() == 3),
        "A never cached the three control flows"
    );
    let in_zone = |port, zone| {
        let mut e = expectation(40006, port);
        e.zone = zone;
        e
    };
    let (in_7, in_9) = (in_zone(50007, 7), in_zone(50009, 9));
    let r = apply_expect_in(
        &lab.a.ns,
        vec![
            ExpectOp::Create(in_9.clone()),
            ExpectOp::Create(in_7.clone()),
        ],
    );
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    let sorted_zones = |n: &Node, flag: &str| {
        let mut z = shown_zones(n, flag);
        z.sort_unstable();
        z
    };
    assert!(
        wait_until(WAIT, || sorted_zones(&lab.b, "-e") == vec![7, 9]),
        "B's external expectations: {:?}; A's internal: {:?}",
        shown(&lab.b, "-e"),
        shown(&lab.a, "-i")
    );
    // A re-read of A's kernel places them the same way: nothing travels.
    lab.a.ctl_ok(&["-R"]);
    assert_eq!(sorted_zones(&lab.a, "-i"), vec![7, 9]);
    let changed = wait_until(QUIET, || sorted_zones(&lab.b, "-e") != vec![7, 9]);
    assert!(
        !changed,
        "B's view after A's re-read: {:?}",
        shown(&lab.b, "-e")
    );
    // B's commit writes each in its own zone: zone 7 does not hold the
    // one of zone 9 (the writer counts a delete of nothing as done).
    lab.b.ctl_ok(&["-c"]);
    assert_eq!(kernel_expectations(&lab.b).len(), 2);
    let r = apply_expect_in(
        &lab.b.ns,
        vec![ExpectOp::Delete(ExpectKey {
            zone: 7,
            ..in_9.key()
        })],
    );
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    assert_eq!(kernel_expectations(&lab.b).len(), 2, "zone 7 held zone 9's");
    let r = apply_expect_in(&lab.b.ns, vec![ExpectOp::Delete(in_9.key())]);
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    assert_eq!(kernel_expectations(&lab.b).len(), 1, "not in zone 9");
    // Their ends in A reach B.
    let r = apply_expect_in(
        &lab.a.ns,
        vec![ExpectOp::Delete(in_9.key()), ExpectOp::Delete(in_7.key())],
    );
    assert_eq!(r.failed, 0, "{:?}", r.first_errors);
    assert!(
        wait_until(WAIT, || shown(&lab.b, "-e").is_empty()),
        "the expectations' ends never reached B: {:?}",
        shown(&lab.b, "-e")
    );
}
