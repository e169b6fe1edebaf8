//! How long single inserts into a `FlowCache` take while it grows to a
//! million flows: prints every insert over 1 ms and the cache size it
//! happened at. The cache's hash table doubles at 7/8 full and moves every
//! entry at once, so each doubling is one insert that waits for the whole
//! move (the stalls in the benchmark's replication latency maxima).
//!
//! `cargo run --release --example cache_growth`

use ctsync::cache::FlowCache;
use ctsync::flow::{Flow, Tuple, L4};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

const FLOWS: u32 = 1_000_000;

fn main() {
    let mut cache = FlowCache::new();
    let mut slow = Vec::new();
    for i in 0..FLOWS {
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
        if took.as_micros() > 1_000 {
            slow.push((cache.len(), took));
        }
    }
    println!("{FLOWS} inserts; those over 1 ms (cache size, time):");
    for (len, took) in slow {
        println!("  {len:>9}  {:.1} ms", took.as_secs_f64() * 1e3);
    }
}
