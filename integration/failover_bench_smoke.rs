//! The failover benchmark at a small N in the test suite: one crash for
//! each of ctsyncd in commit mode, ctsyncd with warm standby and
//! conntrackd 1.4.7, proving that every step runs and every row of the
//! report gets a figure for every system, that the JSON holds the same,
//! and that ctsyncd (both ways) kept every TCP connection. It asserts no
//! speed or blackout: a small N says little, and the goals belong to the
//! full benchmark (integration/bench/failover).
//!
//! Needs root, keepalived, conntrackd 1.4.7 (with its example
//! primary-backup.sh), conntrack and nft.

mod bench;
mod lab;

#[path = "failover/mod.rs"]
mod failover;

#[path = "failover_bench/mod.rs"]
mod failover_bench;

use failover_bench::report::Cell;
use failover_bench::{Cli, Config, System};
use serde_json::Value;

const N: usize = 2_000;
/// Rows without a figure for warm standby, whose -c writes nothing.
const WARM_WRITES_NOTHING: &[&str] = &[
    "commit_rate",
    "commit_vs_ceiling",
    "commit_vs_ceiling_after",
    "commit_vs_ceiling_around",
];

#[test]
fn the_failover_benchmark_runs_end_to_end_for_every_system() {
    let cfg = Config::smoke(N);
    assert_eq!(cfg.systems, System::ALL.to_vec());
    let report = failover_bench::run(&cfg).expect("benchmark run");
    let table = report.table();
    println!("{table}");
    assert_eq!(report.outcomes.len(), 3, "{table}");
    for o in &report.outcomes {
        assert!(
            o.error.is_none(),
            "{} failed: {:?}\n{table}",
            o.system,
            o.error
        );
        assert_eq!(o.test_flows, 216, "{table}");
    }
    let rows = report.rows();
    assert!(rows.len() >= 12, "{table}");
    for row in &rows {
        assert_eq!(row.cells.len(), 3, "{}", row.key);
        for (sys, cell) in &row.cells {
            if *sys == System::CtsyncWarm && WARM_WRITES_NOTHING.contains(&row.key) {
                // Warm standby's -c writes nothing: no rate.
                assert_eq!(*cell, Cell::Missing, "{}\n{table}", row.key);
                continue;
            }
            match cell {
                Cell::Num(v) => assert!(v.is_finite(), "{} {}: {v}\n{table}", row.key, sys.name()),
                Cell::Frac(_, of) => assert!(*of > 0, "{} {}\n{table}", row.key, sys.name()),
                Cell::Missing => panic!("{} has no figure for {}\n{table}", row.key, sys.name()),
            }
        }
        assert!(
            table.contains(row.metric),
            "{} missing from the table",
            row.key
        );
    }
    for sys in [System::CtsyncCommit, System::CtsyncWarm] {
        let o = report.outcome(N, sys).expect("outcome");
        assert_eq!(
            o.tcp_survived,
            o.tcp_total,
            "{} lost TCP connections\n{table}",
            sys.name()
        );
        assert_eq!(o.tcp_total, Some(208), "{table}");
        assert_eq!(o.udp_push_resumed, o.udp_push_total, "{table}");
    }
    // Warm standby's kernel held every flow before the failure.
    let warm = report.outcome(N, System::CtsyncWarm).expect("warm outcome");
    assert!(
        warm.b_kernel_at_failure.unwrap_or(0) >= (N + 216) as u64,
        "{table}"
    );
    assert_eq!(
        warm.kernel_complete_s,
        Some(0.0),
        "warm standby's kernel was not complete at the failure\n{table}"
    );

    let path = std::env::temp_dir().join(format!("cts-failover-bench-{}.json", std::process::id()));
    failover_bench::write_json(&report, &path).expect("write JSON");
    let text = std::fs::read_to_string(&path).expect("read JSON back");
    let _ = std::fs::remove_file(&path);
    let json: Value = serde_json::from_str(&text).expect("the JSON parses");
    assert_eq!(json["failure"], "crash");
    assert_eq!(json["flows"][0], N);
    assert_eq!(json["runs"].as_array().map(Vec::len), Some(3));
    let json_rows = json["rows"].as_array().expect("rows");
    assert_eq!(json_rows.len(), rows.len());
    for (j, r) in json_rows.iter().zip(&rows) {
        assert_eq!(j["key"], r.key);
        for (sys, cell) in &r.cells {
            let v = &j["values"][sys.name()];
            match cell {
                Cell::Num(x) => {
                    let y = v.as_f64().unwrap_or(f64::NAN);
                    assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{}: {v}", r.key);
                }
                Cell::Frac(a, b) => {
                    assert_eq!(v["ok"].as_u64(), Some(*a as u64), "{}", r.key);
                    assert_eq!(v["of"].as_u64(), Some(*b as u64), "{}", r.key);
                }
                Cell::Missing => assert!(v.is_null(), "{}: {v}", r.key),
            }
        }
    }
    assert!(json["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);
    let ceiling = &json["kernel_ceilings"][0];
    assert!(
        ceiling["one_socket"].as_f64().unwrap_or(0.0) > 0.0,
        "{ceiling}"
    );
}

#[test]
fn the_command_line_is_parsed_and_checked() {
    let args = |s: &str| -> Vec<String> { s.split_whitespace().map(String::from).collect() };
    let cli = Cli::parse(args(
        "--flows 1_000,50000 --failure links --systems conntrackd,ctsync-warm --json x.json --bench",
    ))
    .expect("valid arguments");
    assert_eq!(cli.config.flows, vec![1_000, 50_000]);
    assert_eq!(cli.config.failure, failover::Failure::LinkLoss);
    assert_eq!(
        cli.config.systems,
        vec![System::CtsyncWarm, System::Conntrackd]
    );
    assert_eq!(cli.json, std::path::PathBuf::from("x.json"));
    assert!(!cli.config.fwb_log);
    let cli = Cli::parse(args("--standby-delay 25 --fwb-log")).expect("valid arguments");
    assert_eq!(cli.config.standby_delay, std::time::Duration::from_secs(25));
    assert!(cli.config.fwb_log);
    let default = Cli::parse(Vec::new()).expect("no arguments");
    assert_eq!(default.config.flows, vec![100_000, 1_000_000]);
    assert_eq!(default.config.failure, failover::Failure::Crash);
    assert_eq!(default.config.systems, System::ALL.to_vec());
    assert!(default.config.standby_delay.is_zero());
    assert_eq!(
        default.json,
        std::path::PathBuf::from("target/bench/failover.json")
    );
    for bad in [
        "--flows 0",
        "--flows x",
        "--flows",
        "--flows ,",
        "--failure boom",
        "--systems nope",
        "--systems ,",
        "--fast",
        "--standby-delay x",
        "--standby-delay 601",
    ] {
        assert!(Cli::parse(args(bad)).is_err(), "{bad}");
    }
}

#[test]
fn filler_tuples_are_distinct_and_snat_to_the_vip() {
    use std::collections::HashSet;
    let vip4: std::net::IpAddr = failover::VIP4_WAN.parse().expect("v4");
    let vip6: std::net::IpAddr = failover::VIP6_WAN.parse().expect("v6");
    let flows = failover_bench::kernel::filler_flows(300_000, vip4, vip6);
    let orig: HashSet<_> = flows.iter().map(|f| f.orig).collect();
    let reply: HashSet<_> = flows.iter().map(|f| f.reply).collect();
    assert_eq!(orig.len(), flows.len());
    assert_eq!(reply.len(), flows.len());
    assert!(flows
        .iter()
        .all(|f| f.reply.dst == vip4 || f.reply.dst == vip6));
    assert!(flows
        .iter()
        .all(|f| f.orig.src.is_ipv4() == f.orig.dst.is_ipv4()));
    let v6 = flows.iter().filter(|f| f.orig.src.is_ipv6()).count();
    let udp = flows
        .iter()
        .filter(|f| f.orig.proto == ctsync::flow::proto::UDP)
        .count();
    assert_eq!(v6, flows.len() / 8);
    assert_eq!(udp, flows.len() / 4);
}

#[test]
fn conntrackd_text_is_read_into_the_labs_shapes() {
    let stats = "cache internal:\ncurrent active connections:\t          12\n\
                 connections created:\t\t 1\tfailed:\t 0\n\n\
                 cache external:\ncurrent active connections:\t      100012\n";
    let v = failover::parse_conntrackd_stats(stats);
    assert_eq!(v["internal"]["active"], 12);
    assert_eq!(v["external"]["active"], 100_012);
    assert!(failover::parse_conntrackd_stats("nothing").is_null());
    let dump = "tcp      6 ESTABLISHED src=198.18.1.10 dst=198.19.0.100 sport=41268 dport=5001 [ASSURED] mark=0 [active since 3s]\n\
                udp      17 src=2001:db8:1::10 dst=2001:db8:2::100 sport=36074 dport=5004 mark=0 [active since 2s]\n\
                icmp     1 src=198.18.1.10 dst=198.19.0.100 type=8 code=0 id=77 [UNREPLIED] mark=0 [active since 2s]\n";
    let flows = failover::parse_conntrackd_dump(dump);
    assert_eq!(flows.len(), 2, "the ICMP line has no ports");
    assert_eq!(flows[0]["orig"]["proto"], "tcp");
    assert_eq!(flows[0]["orig"]["src"], "198.18.1.10");
    assert_eq!(flows[0]["orig"]["dport"], 5001);
    assert_eq!(flows[1]["orig"]["dst"], "2001:db8:2::100");
    assert_eq!(flows[1]["orig"]["sport"], 36074);
}

#[test]
fn the_commit_is_divided_by_the_faster_ceiling_shape() {
    use failover_bench::report::Ceiling;
    let both = |one, per_core| Ceiling {
        n: 1,
        one_socket: one,
        per_core,
        cores: 2,
        error: None,
    };
    // One socket faster than one per core: the one socket counts (it
    // once divided by the per-core rate whatever the faster).
    assert_eq!(both(Some(316.0), Some(302.0)).best(), Some(316.0));
    assert_eq!(both(Some(302.0), Some(316.0)).best(), Some(316.0));
    // The shape measured again after a lab is that faster one.
    assert_eq!(
        both(Some(316.0), Some(302.0)).best_shape(),
        Some((1, 316.0))
    );
    assert_eq!(
        both(Some(302.0), Some(316.0)).best_shape(),
        Some((2, 316.0))
    );
    assert_eq!(both(None, Some(302.0)).best(), Some(302.0));
    assert_eq!(both(Some(316.0), None).best(), Some(316.0));
    assert_eq!(both(None, None).best(), None);
}
