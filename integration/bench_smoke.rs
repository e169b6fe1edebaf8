//! The ctsyncd-vs-conntrackd benchmark at a small N, in the test suite: it
//! proves every workload runs and yields a figure, and that the JSON holds
//! the same metrics as the table. It asserts no speed: the figures of a
//! small N say little, and targets belong to the full benchmark.
//!
//! Needs root (namespaces, ctnetlink) and conntrackd 1.4.7.

mod bench;
mod lab;

use bench::{BenchConfig, Workload};
use serde_json::Value;
use std::collections::BTreeSet;

/// Rows measured on one system only.
const CTSYNCD_ONLY: &[&str] = &[
    "raw_writer_rate",
    "raw_writer_threads",
    "raw_writer_batch_kib",
    "raw_writer_no_extension_rate",
    "commit_first_write_ms",
    "commit_in_kernel_share",
    "commit_writer_runqueue_ms",
    "lat_warm_steady_p50_ms",
    "lat_warm_steady_p99_ms",
    "lat_warm_steady_max_ms",
    "lat_warm_burst_p50_ms",
    "lat_warm_burst_p99_ms",
    "lat_warm_burst_max_ms",
    "warm_kernel_complete_s",
    "warm_vs_burst",
    "warm_commit_ms",
    "dump_burst_base_s",
    "dump_burst_with_i_s",
    "dump_burst_ratio",
    "dump_i_s",
    "dump_peak_rss_base_mb",
    "dump_peak_rss_with_i_mb",
    "cpu_keys_vs_plain",
];
/// Rows that are "n/a" while the build rejects `[sync] warm_standby`.
const WARM: &[&str] = &[
    "warm_kernel_complete_s",
    "warm_vs_burst",
    "warm_commit_ms",
    "lat_warm_steady_p50_ms",
    "lat_warm_steady_p99_ms",
    "lat_warm_steady_max_ms",
    "lat_warm_burst_p50_ms",
    "lat_warm_burst_p99_ms",
    "lat_warm_burst_max_ms",
];
/// Rows whose figure may be zero.
/// (CPU time is counted in clock ticks of 10 ms: at 5,000 flows A's daemon
/// may use less than one for the burst, B's for the commit.)
const MAY_BE_ZERO: &[&str] = &[
    "burst_lost",
    "commit_cpu_s",
    "commit_user_cpu_s",
    "commit_writer_runqueue_ms",
    "cpu_per_100k",
    "cpu_per_100k_keys",
    "cpu_per_100k_mix",
    "cpu_keys_vs_plain",
];

#[test]
fn the_benchmark_runs_every_workload_and_reports_every_figure() {
    let cfg = BenchConfig::smoke(5_000);
    assert_eq!(cfg.only.len(), Workload::ALL.len());
    let report = bench::run(&cfg).expect("benchmark run");
    let table = report.table();
    println!("{table}");
    let warm_rejected = report
        .notes
        .iter()
        .any(|n| n.contains("rejects `[sync] warm_standby"));
    assert!(report.rows.len() >= 18, "{table}");
    // A ratio to a figure of zero (under one clock tick at this N) has
    // none; every repetition then says so in a note.
    let keys_ratio_missing = report
        .notes
        .iter()
        .filter(|n| n.starts_with(bench::NO_KEYS_RATIO))
        .count();
    for row in &report.rows {
        if row.key == "cpu_keys_vs_plain" && row.ctsyncd.is_none() {
            assert_eq!(keys_ratio_missing, cfg.reps, "{table}");
            continue;
        }
        let mut columns = vec![("ctsyncd", row.ctsyncd)];
        if !CTSYNCD_ONLY.contains(&row.key) {
            columns.push(("conntrackd", row.conntrackd));
        }
        for (system, value) in columns {
            if warm_rejected && WARM.contains(&row.key) {
                assert!(value.is_none(), "{}: {value:?}", row.key);
                continue;
            }
            let v = value.unwrap_or_else(|| panic!("{} has no {system} figure\n{table}", row.key));
            assert!(v.is_finite(), "{} {system}: {v}", row.key);
            if MAY_BE_ZERO.contains(&row.key) {
                assert!(v >= 0.0, "{} {system}: {v}", row.key);
            } else {
                assert!(v > 0.0, "{} {system}: {v}\n{table}", row.key);
            }
        }
        assert!(
            table.contains(&format!("| {} |", row.metric)),
            "{} missing from the table",
            row.key
        );
    }
    // Both systems ended with B holding every flow of the 5,000 burst.
    let burst_lost = report.rows.iter().find(|r| r.key == "burst_lost");
    assert_eq!(burst_lost.and_then(|r| r.ctsyncd), Some(0.0), "{table}");

    let path = std::env::temp_dir().join(format!("cts-bench-{}.json", std::process::id()));
    bench::write_json(&report, &path).expect("write JSON");
    let text = std::fs::read_to_string(&path).expect("read JSON back");
    let _ = std::fs::remove_file(&path);
    let json: Value = serde_json::from_str(&text).expect("the JSON parses");
    let keys: BTreeSet<&str> = json["metrics"]
        .as_object()
        .expect("metrics object")
        .keys()
        .map(String::as_str)
        .collect();
    let rows: BTreeSet<&str> = report.rows.iter().map(|r| r.key).collect();
    assert_eq!(keys, rows);
    for row in &report.rows {
        let m = &json["metrics"][row.key];
        for (system, value) in [("ctsyncd", row.ctsyncd), ("conntrackd", row.conntrackd)] {
            let same = match (m[system].as_f64(), value) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                (a, b) => a.is_none() && b.is_none(),
            };
            assert!(
                same,
                "{} {system}: JSON {} vs {value:?}",
                row.key, m[system]
            );
        }
        assert_eq!(m["metric"], row.metric.as_str());
    }
    assert_eq!(json["flows"], 5_000);
    assert!(json["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);
    assert!(json["machine"]["nf_conntrack_max"].as_u64().unwrap_or(0) >= 11_000);
}

#[test]
fn the_command_line_is_parsed_and_checked() {
    let args = |s: &str| -> Vec<String> { s.split_whitespace().map(String::from).collect() };
    let cli = bench::Cli::parse(args(
        "--flows 1_000 --only raw,commit --json x.json --bench",
    ))
    .expect("valid arguments");
    assert_eq!(cli.config.flows, 1_000);
    assert_eq!(
        cli.config.only,
        [Workload::Raw, Workload::Commit].into_iter().collect()
    );
    assert_eq!(cli.json, std::path::PathBuf::from("x.json"));
    assert_eq!(cli.config.reps, 3);
    assert!(cli.config.with_conntrackd);
    let cli = bench::Cli::parse(args("--reps 5 --ctsyncd-only")).expect("valid arguments");
    assert_eq!(cli.config.reps, 5);
    assert!(!cli.config.with_conntrackd);
    let default = bench::Cli::parse(Vec::new()).expect("no arguments");
    assert_eq!(default.config.flows, 1_000_000);
    assert_eq!(default.config.only.len(), Workload::ALL.len());
    for bad in [
        "--flows 0",
        "--only nope",
        "--flows",
        "--fast",
        "--only ,",
        "--reps 0",
        "--reps",
    ] {
        assert!(bench::Cli::parse(args(bad)).is_err(), "{bad}");
    }
}

#[test]
fn each_flow_is_dated_by_its_batch_and_the_first_sample_counting_it() {
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let ms = |x: u64| t0 + Duration::from_millis(x);
    // Two batches of two flows at 0 and 10 ms; the count (from 5) reaches
    // 6 at 3 ms, 7 at 4 ms and 9 at 15 ms: 3, 4, 5 and 5 ms.
    let starts = [ms(0), ms(10)];
    let samples = [(ms(1), 5), (ms(3), 6), (ms(4), 7), (ms(12), 7), (ms(15), 9)];
    let l = bench::latency::latencies(&starts, 2, &samples, 5, 4);
    assert_eq!(l.missing, 0);
    assert!((l.p50_ms - 4.0).abs() < 1e-9, "{l:?}");
    assert!((l.p99_ms - 5.0).abs() < 1e-9, "{l:?}");
    assert!((l.max_ms - 5.0).abs() < 1e-9, "{l:?}");
    // Flows never counted are missing.
    let l = bench::latency::latencies(&starts, 2, &samples[..4], 5, 4);
    assert_eq!(l.missing, 2);
}

#[test]
fn conntrackd_stats_give_both_caches_active_counts() {
    let text = "cache internal:\ncurrent active connections:\t          12\n\
                connections created:\t\t 1\tfailed:\t 0\n\n\
                cache external:\ncurrent active connections:\t      100012\n";
    assert_eq!(
        bench::conntrackd::parse_active(text, "internal").ok(),
        Some(12)
    );
    assert_eq!(
        bench::conntrackd::parse_active(text, "external").ok(),
        Some(100_012)
    );
    assert!(bench::conntrackd::parse_active("nothing", "external").is_err());
}

#[test]
fn numbers_ratios_and_targets_read_right() {
    use bench::report::{fmt_num, median, Row, Target};
    assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    assert!(median(&mut []).is_nan());
    assert_eq!(fmt_num(1_234_567.4), "1,234,567");
    assert_eq!(fmt_num(999.6), "1,000");
    assert_eq!(fmt_num(123.4), "123");
    assert_eq!(fmt_num(12.34), "12.3");
    assert_eq!(fmt_num(1.2345), "1.234");
    let r = Row::new(
        "k",
        "m",
        Some(5.0),
        Some(2.0),
        true,
        Target::RatioAtLeast(2.5),
    );
    assert_eq!((r.ratio, r.met), (Some(2.5), Some(true)));
    let r = Row::new(
        "k",
        "m",
        Some(1.0),
        Some(2.0),
        true,
        Target::RatioAtMost(0.45),
    );
    assert_eq!(r.met, Some(false));
    let r = Row::new("k", "m", None, Some(2.0), true, Target::RatioAtMost(0.45));
    assert_eq!((r.ratio, r.met), (None, None));
    let r = Row::new("k", "m", Some(0.0), None, false, Target::CtsyncdAtMost(0.0));
    assert_eq!(r.met, Some(true));
    let r = Row::new(
        "k",
        "m",
        Some(120.0),
        None,
        false,
        Target::CtsyncdBelow(100.0),
    );
    assert_eq!(r.met, Some(false));
}

/// The kernel refuses a flow whose original or reply tuple another flow
/// already holds in either direction, and the daemons ignore flows of
/// the lab's link addresses: the mix at its largest size has neither.
#[test]
fn the_mix_has_unique_tuples_clear_of_the_lab_addresses() {
    let flows = bench::kernel::mix_flows(1 << 22, 2);
    let mut seen = std::collections::HashSet::new();
    for f in &flows {
        assert!(seen.insert((f.zone, f.orig)), "twice: {:?}", f.orig);
        assert!(seen.insert((f.zone, f.reply)), "twice: {:?}", f.reply);
    }
    let lab: Vec<std::net::IpAddr> = ["198.18.0.1", "198.18.0.2", "198.18.1.1", "198.18.1.2"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    for f in &flows {
        assert!(
            !lab.contains(&f.orig.src) && !lab.contains(&f.orig.dst),
            "{:?}",
            f.orig
        );
    }
    // The mix is a mix: every protocol, NAT, marks, zones and labels.
    let has = |p: &dyn Fn(&ctsync::flow::Flow) -> bool| flows.iter().filter(|f| p(f)).count();
    let n = flows.len();
    assert!(has(&|f| f.orig.src.is_ipv6()) * 4 == n);
    for proto in [1, 6, 17, 47, 58] {
        assert!(has(&|f| f.orig.proto == proto) > n / 50, "protocol {proto}");
    }
    let nat = has(&|f| f.reply != f.orig.inverted());
    assert!(
        nat * 100 > n * 32 && nat * 100 < n * 35,
        "{nat} of {n} NATed"
    );
    assert!(has(&|f| f.mark != 0) * 4 == n);
    assert!(has(&|f| f.zone == 1) > n / 11);
    assert!(has(&|f| f.labels.is_some()) * 8 == n);
}
