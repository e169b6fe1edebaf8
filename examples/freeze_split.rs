//! How long the two passes of a commit's first copy take over a cache of
//! a million flows (or the count given), walked by one thread and by two
//! threads each over half of the table's shards (`sharded_table::Part`),
//! as `recent_split` walks it before a commit's first write: the pass
//! that reads every entry's stamp, and the pass that copies the 65,536
//! most recent entries. Medians of five rounds.
//!
//! `cargo run --release --example freeze_split [-- FLOWS]`

use ctsync::cache::{FlowCache, FrozenCache};
use ctsync::flow::{Flow, Tuple, L4};
use ctsync::sharded_table::Part;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Entries copied by the second pass, as a commit's first step.
const RECENT: u32 = 65_536;
const ROUNDS: usize = 5;

/// The stamp pass: every entry's second and size, summed.
fn read_stamps(cache: &FlowCache, part: Part) -> usize {
    cache
        .freeze_plan(part)
        .map(|(stamp, bytes)| bytes + stamp as usize % 2)
        .sum()
}

/// The copy pass: entries changed after `cut_s`.
fn copy_recent(cache: &FlowCache, part: Part, cut_s: u32) -> usize {
    let mut out = [FrozenCache::with_capacity(RECENT as usize * 64 / part.of)];
    cache.freeze_into(part, &mut out, |stamp| (stamp > cut_s).then_some(0));
    out[0].len()
}

/// `pass` over the whole table on this thread, and over two halves on
/// this thread and another; the time of each and what both returned.
fn timed(pass: impl Fn(Part) -> usize + Sync) -> (Duration, Duration, usize, usize) {
    let started = Instant::now();
    let one = pass(Part::WHOLE);
    let serial = started.elapsed();
    let started = Instant::now();
    let two = std::thread::scope(|scope| {
        let other = scope.spawn(|| pass(Part { index: 1, of: 2 }));
        let mine = pass(Part { index: 0, of: 2 });
        mine + other.join().unwrap_or(0)
    });
    (serial, started.elapsed(), one, two)
}

fn median(mut times: Vec<Duration>) -> f64 {
    times.sort_unstable();
    times[times.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let flows: u32 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 1_000_000,
        Some(Ok(n)) => n,
        Some(Err(err)) => {
            eprintln!("freeze_split: FLOWS must be a count: {err}");
            std::process::exit(2);
        }
    };
    // One flow a millisecond: the most recent RECENT changed in the last
    // RECENT milliseconds.
    let mut cache = FlowCache::new();
    for i in 0..flows {
        let flow = Flow::new(Tuple {
            src: IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (i >> 8))),
            dst: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
            proto: 6,
            l4: L4::Ports {
                src: 1024 + (i & 0xff) as u16,
                dst: 80,
            },
        });
        cache.upsert(flow, u64::from(i));
    }
    let cut_s = flows.saturating_sub(RECENT) / 1000;
    let mut times = [vec![], vec![], vec![], vec![]];
    for _ in 0..ROUNDS {
        let (serial, parallel, one, two) = timed(|part| read_stamps(&cache, part));
        assert_eq!(one, two, "the halves read what the whole does");
        times[0].push(serial);
        times[1].push(parallel);
        let (serial, parallel, one, two) = timed(|part| copy_recent(&cache, part, cut_s));
        assert_eq!(one, two, "the halves copy what the whole does");
        times[2].push(serial);
        times[3].push(parallel);
    }
    let [a, b, c, d] = times;
    println!(
        "{flows} flows: reading the stamps {:.1} ms on one thread, {:.1} ms on two; \
         copying the most recent {:.1} ms on one, {:.1} ms on two",
        median(a),
        median(b),
        median(c),
        median(d)
    );
}
