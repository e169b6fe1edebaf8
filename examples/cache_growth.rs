//! How long single inserts into a `FlowCache` take while it grows to a
//! million flows (or the count given): the total, the slowest insert, and
//! every insert over 1 ms with the cache size it happened at. A table
//! grows by moving entries into a larger one; the cache's table is split
//! into shards (`sharded_table`) that grow one at a time, so no insert
//! waits for the whole table to move (with one table, 32 ms at 917,505
//! flows: the stalls once seen in the benchmark's replication latency
//! maxima).
//!
//! `cargo run --release --example cache_growth [-- FLOWS]`

use ctsync::cache::FlowCache;
use ctsync::flow::{Flow, Tuple, L4};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

fn main() {
    let flows: u32 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(err)) => {
            eprintln!("cache_growth: FLOWS must be a count: {err}");
            std::process::exit(2);
        }
    };
    let rss_before = rss_kib();
    let mut cache = FlowCache::new();
    let mut slow = Vec::new();
    let mut slowest = (0, Duration::ZERO);
    let all = Instant::now();
    for i in 0..flows {
        let flow = Flow::new(Tuple {
            src: IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (i >> 8))),
            dst: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
            proto: 17,
            l4: L4::Ports {
                src: 1024 + (i & 0xff) as u16,
                dst: 53,
            },
        });
        let started = Instant::now();
        cache.upsert(flow, u64::from(i));
        let took = started.elapsed();
        if took > slowest.1 {
            slowest = (cache.len(), took);
        }
        if took.as_micros() > 1_000 {
            slow.push((cache.len(), took));
        }
    }
    let total = all.elapsed();
    println!(
        "{flows} inserts in {:.3} s ({:.0} ns each); the slowest {:.3} ms at {} flows",
        total.as_secs_f64(),
        total.as_secs_f64() * 1e9 / f64::from(flows.max(1)),
        slowest.1.as_secs_f64() * 1e3,
        slowest.0
    );
    if let (Some(before), Some(after)) = (rss_before, rss_kib()) {
        println!(
            "RSS grew {:.1} bytes a flow",
            after.saturating_sub(before) as f64 * 1024.0 / f64::from(flows.max(1))
        );
    }
    println!("{} inserts over 1 ms (cache size, time):", slow.len());
    for (len, took) in slow {
        println!("  {len:>9}  {:.1} ms", took.as_secs_f64() * 1e3);
    }
}

/// This process's resident memory (`VmRSS`), in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
