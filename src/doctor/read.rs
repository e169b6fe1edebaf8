//! Reading the machine and the daemon for the checks: the conntrack
//! sysctls and statistics of this network namespace, slab and memory
//! sizes, the new-flow rate (NEW events counted for a while), what the
//! table holds, and the daemon's `-s --json`.
//!
//! Owns: every file, netlink and control-socket read doctor makes. Must
//! not: judge what it reads (`checks`), or change anything: doctor only
//! reads.

use super::facts::{
    mem_total_bytes, slab_object_size, CtStat, DaemonFacts, FlowRate, MachineFacts, Sysctls,
    TableMix,
};
use crate::control::{self, Envelope, Request, StatsSection};
use crate::flow::{proto_name, L4};
use crate::kernel::socket::{messages, NlSocket};
use crate::kernel::sysctl::read_u64 as sysctl;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Tables larger than this are not dumped for the NOTRACK advice (the
/// dump would take long, and a copy of every flow a few hundred MB).
pub const MIX_MAX_FLOWS: u64 = 1_000_000;
/// NFNLGRP_CONNTRACK_NEW.
const GROUP_NEW: u32 = 1;

/// The conntrack sysctls as this namespace sees them.
pub fn sysctls() -> Sysctls {
    Sysctls {
        count: sysctl("nf_conntrack_count"),
        max: sysctl("nf_conntrack_max"),
        buckets: sysctl("nf_conntrack_buckets"),
        events: sysctl("nf_conntrack_events"),
        tcp_loose: sysctl("nf_conntrack_tcp_loose"),
        tcp_be_liberal: sysctl("nf_conntrack_tcp_be_liberal"),
        tcp_timeout_established: sysctl("nf_conntrack_tcp_timeout_established"),
        tcp_timeout_time_wait: sysctl("nf_conntrack_tcp_timeout_time_wait"),
        udp_timeout: sysctl("nf_conntrack_udp_timeout"),
        udp_timeout_stream: sysctl("nf_conntrack_udp_timeout_stream"),
    }
}

/// `/proc/net/stat/nf_conntrack` (this namespace's); `None` when absent
/// or not in the expected layout.
pub fn ct_stat() -> Option<CtStat> {
    let text = std::fs::read_to_string("/proc/net/stat/nf_conntrack").ok()?;
    CtStat::parse(&text).ok()
}

/// NEW events counted for `sample`: the rate at which flows are created.
/// `None` when events are off (nothing would arrive) or netlink refuses.
pub fn new_flow_rate(sample: Duration, events: Option<u64>) -> Option<FlowRate> {
    if events == Some(0) {
        std::thread::sleep(sample);
        return None;
    }
    let started = Instant::now();
    let sock = NlSocket::open().ok()?;
    let _ = sock.set_rcvbuf(4 * 1024 * 1024);
    sock.add_membership(GROUP_NEW).ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .ok()?;
    let mut buf = Vec::with_capacity(256 * 1024);
    let (mut count, mut at_least) = (0u64, false);
    while started.elapsed() < sample {
        match sock.recv(&mut buf) {
            Ok(()) => count += messages(&buf).filter(|m| m.is_ok()).count() as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => at_least = true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    let secs = started.elapsed().as_secs_f64().max(0.001);
    Some(FlowRate {
        per_s: count as f64 / secs,
        at_least,
    })
}

/// What the table holds: DNS flows and the busiest destination port.
pub fn table_mix(count: Option<u64>) -> Option<TableMix> {
    if count.is_none_or(|n| n > MIX_MAX_FLOWS) {
        return None;
    }
    let flows = crate::kernel::dump_table().ok()?;
    let mut by_port: HashMap<(u8, u16), u64> = HashMap::new();
    let mut mix = TableMix {
        total: flows.len() as u64,
        ..TableMix::default()
    };
    for f in &flows {
        if let L4::Ports { dst, .. } = f.orig.l4 {
            *by_port.entry((f.orig.proto, dst)).or_default() += 1;
            if dst == 53 {
                mix.dns += 1;
            }
        }
    }
    mix.top_port = by_port
        .into_iter()
        .max_by_key(|(k, n)| (*n, std::cmp::Reverse(*k)))
        .map(|((proto, port), n)| (proto_name(proto).to_string(), port, n));
    Some(mix)
}

/// Everything about the machine, with the counters read twice `sample`
/// apart (the rate is measured in between).
pub fn machine(sample: Duration) -> MachineFacts {
    let sysctls = sysctls();
    let stat = ct_stat();
    let started = Instant::now();
    let rate = new_flow_rate(sample, sysctls.events);
    let stat_later = ct_stat();
    let interval_s = started.elapsed().as_secs_f64();
    let slab = std::fs::read_to_string("/proc/slabinfo")
        .ok()
        .and_then(|t| slab_object_size(&t));
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| mem_total_bytes(&t));
    let mix = table_mix(sysctls.count);
    MachineFacts {
        sysctls,
        stat,
        stat_later,
        interval_s,
        rate,
        slab_object_size: slab,
        mem_total_bytes: mem,
        mix,
    }
}

/// What the daemon's control socket gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonReply {
    /// Its counters, every field doctor uses found.
    Facts(Box<DaemonFacts>),
    /// Nothing (or a refusal) came back: why.
    NoAnswer(String),
    /// It answered, but not with the `-s --json` doctor reads: what is
    /// wrong or missing.
    Unreadable(String),
}

/// The daemon's counters, or why they could not be had.
pub fn daemon(socket: &Path) -> DaemonReply {
    let env = Envelope {
        request: Request::Stats(StatsSection::General),
        json: true,
    };
    let reply = match control::send(socket, &env) {
        Ok(reply) => reply,
        Err(e) => return DaemonReply::NoAnswer(e.to_string()),
    };
    if !reply.ok {
        return DaemonReply::NoAnswer(
            reply
                .error
                .unwrap_or_else(|| "ctsyncd refused the stats request".into()),
        );
    }
    let v: serde_json::Value = match serde_json::from_str(&reply.body) {
        Ok(v) => v,
        Err(e) => return DaemonReply::Unreadable(format!("malformed stats from ctsyncd: {e}")),
    };
    match DaemonFacts::from_stats_json(&v) {
        Ok(facts) => DaemonReply::Facts(Box::new(facts)),
        Err(missing) => DaemonReply::Unreadable(format!(
            "ctsyncd -s --json lacks {} (a ctsyncd of another version?)",
            missing.join(", ")
        )),
    }
}
