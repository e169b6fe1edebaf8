//! What the checks decide on: the machine's conntrack settings and
//! counters, and the daemon's counters, as plain values; and the parsers
//! that turn `/proc` text and `-s --json` into them.
//!
//! Owns: `MachineFacts`, `CtStat`, `TableMix`, `DaemonFacts` and parsing
//! their text. Must not: open files or sockets (`read` does) or judge the
//! values (`checks` do).

use serde_json::Value;
use std::collections::BTreeMap;

/// The conntrack sysctls of the network namespace doctor runs in; `None`
/// where the file is missing or unreadable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub count: Option<u64>,
    pub max: Option<u64>,
    pub buckets: Option<u64>,
    pub events: Option<u64>,
    pub tcp_loose: Option<u64>,
    pub tcp_be_liberal: Option<u64>,
    pub tcp_timeout_established: Option<u64>,
    pub tcp_timeout_time_wait: Option<u64>,
    pub udp_timeout: Option<u64>,
    pub udp_timeout_stream: Option<u64>,
}

/// `/proc/net/stat/nf_conntrack` summed over the CPUs, by column name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtStat(pub BTreeMap<String, u64>);

impl CtStat {
    /// A column's sum (0 when this kernel has no such column).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Parse the file: a header line of names, then one row of hex numbers
    /// per CPU. `entries` is the table's count on every row, not a per-CPU
    /// counter, so it is kept once.
    pub fn parse(text: &str) -> Result<CtStat, String> {
        let mut lines = text.lines();
        let names: Vec<&str> = lines
            .next()
            .ok_or("empty file")?
            .split_whitespace()
            .collect();
        if names.is_empty() {
            return Err("no column names".into());
        }
        let mut sums = BTreeMap::new();
        for (row, line) in lines.enumerate() {
            let values: Vec<&str> = line.split_whitespace().collect();
            if values.is_empty() {
                continue;
            }
            if values.len() != names.len() {
                return Err(format!(
                    "row {} has {} columns, the header {}",
                    row + 1,
                    values.len(),
                    names.len()
                ));
            }
            for (name, v) in names.iter().zip(values) {
                let n = u64::from_str_radix(v, 16)
                    .map_err(|_| format!("row {}: '{v}' is not hex", row + 1))?;
                let sum: &mut u64 = sums.entry((*name).to_string()).or_default();
                *sum = if *name == "entries" {
                    n
                } else {
                    sum.saturating_add(n)
                };
            }
        }
        Ok(CtStat(sums))
    }
}

/// The conntrack entry's object size in `/proc/slabinfo` (the line
/// `nf_conntrack <active> <num> <objsize> ...`).
pub fn slab_object_size(slabinfo: &str) -> Option<u64> {
    slabinfo.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "nf_conntrack").then_some(())?;
        words.nth(2)?.parse().ok()
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        kb.checked_mul(1024)
    })
}

/// What the table holds, from one dump: for NOTRACK advice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableMix {
    pub total: u64,
    /// Flows to port 53 (UDP and TCP): DNS.
    pub dns: u64,
    /// The destination (protocol name, port) holding the most flows.
    pub top_port: Option<(String, u16, u64)>,
}

/// The new-flow rate measured by listening to NEW events for a while.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowRate {
    pub per_s: f64,
    /// The listening socket overran: the rate is at least this.
    pub at_least: bool,
}

/// Everything read from the machine, at two instants about a second apart
/// (counters that grow between them are happening now).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MachineFacts {
    pub sysctls: Sysctls,
    pub stat: Option<CtStat>,
    pub stat_later: Option<CtStat>,
    /// Seconds between the two reads.
    pub interval_s: f64,
    pub rate: Option<FlowRate>,
    pub slab_object_size: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub mix: Option<TableMix>,
}

/// One peer as the daemon's `-s --json` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerFacts {
    pub node_id: u64,
    pub alive: bool,
    pub last_heard_ms_ago: u64,
    pub flows: u64,
    pub reordered: u64,
    pub largest_datagram: u64,
    pub oversized: u64,
    pub acks_nacks: u64,
}

/// One sync link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkFacts {
    pub device: String,
    pub up: bool,
}

/// Warm standby's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmFacts {
    pub written: u64,
    pub failed: u64,
    pub restored: u64,
    pub pending: u64,
}

/// The daemon's counters that the sync checks use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonFacts {
    pub uptime_s: u64,
    pub peers: Vec<PeerFacts>,
    pub links: Vec<LinkFacts>,
    pub events_received: u64,
    pub overruns: u64,
    /// Datagrams dropped, every reason (`sync.malformed` summed).
    pub dropped: u64,
    pub lost: u64,
    pub send_errors: u64,
    pub backlog_dropped_items: u64,
    pub retransmits: u64,
    pub messages_sent: u64,
    pub resend_window: u64,
    pub window: u64,
    pub warm: Option<WarmFacts>,
}

impl DaemonFacts {
    /// From `ctsyncd -s --json`; missing numbers read as 0 (an older
    /// daemon may lack the newest counters).
    pub fn from_stats_json(v: &Value) -> DaemonFacts {
        let n = |v: &Value, path: &[&str]| -> u64 {
            path.iter()
                .try_fold(v, |v, k| v.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let wire = v.get("sync").and_then(|s| s.get("peer_wire"));
        let peers = v
            .get("peers")
            .and_then(Value::as_array)
            .map(|peers| {
                peers
                    .iter()
                    .map(|p| {
                        let id = n(p, &["node_id"]);
                        let w = wire.and_then(|w| w.get(id.to_string()));
                        let wn = |k: &str| w.map_or(0, |w| n(w, &[k]));
                        PeerFacts {
                            node_id: id,
                            alive: p.get("alive").and_then(Value::as_bool).unwrap_or(false),
                            last_heard_ms_ago: n(p, &["last_heard_ms_ago"]),
                            flows: n(p, &["flows"]),
                            reordered: n(p, &["reordered"]),
                            largest_datagram: wn("largest_datagram"),
                            oversized: wn("oversized"),
                            acks_nacks: wn("acks_nacks"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let links = v
            .get("links")
            .and_then(Value::as_array)
            .map(|links| {
                links
                    .iter()
                    .map(|l| LinkFacts {
                        device: l
                            .get("device")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        up: l.get("up").and_then(Value::as_bool).unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dropped = v
            .get("sync")
            .and_then(|s| s.get("malformed"))
            .and_then(Value::as_object)
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
            + n(v, &["network", "foreign_source"]);
        let warm = v.get("warm").filter(|w| w.is_object()).map(|w| WarmFacts {
            written: n(w, &["written"]),
            failed: n(w, &["failed"]),
            restored: n(w, &["restored"]),
            pending: n(w, &["pending"]),
        });
        DaemonFacts {
            uptime_s: n(v, &["uptime_s"]),
            peers,
            links,
            events_received: n(v, &["kernel", "events_received"]),
            overruns: n(v, &["kernel", "overruns"]),
            dropped,
            lost: n(v, &["sync", "lost"]),
            send_errors: n(v, &["network", "send_errors"]),
            backlog_dropped_items: n(v, &["sync", "backlog_dropped_items"]),
            retransmits: n(v, &["sync", "retransmits"]),
            messages_sent: n(v, &["sync", "messages_sent"]),
            resend_window: n(v, &["queues", "resend_window"]),
            window: n(v, &["queues", "window"]),
            warm,
        }
    }
}

/// The daemon as doctor found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonState {
    /// Nothing answers on the control socket (the reason says why).
    NotRunning(String),
    /// Two `-s --json` reads, about a second apart.
    Running {
        first: Box<DaemonFacts>,
        later: Box<DaemonFacts>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_stat_sums_the_cpus_and_keeps_entries_once() {
        let text = "entries  clashres found drop early_drop insert_failed\n\
                    00000032  00000000 00000001 00000002 00000000 0000000a\n\
                    00000032  00000000 00000001 00000003 00000001 00000000\n";
        let s = CtStat::parse(text).unwrap();
        assert_eq!(s.get("entries"), 50);
        assert_eq!(s.get("drop"), 5);
        assert_eq!(s.get("early_drop"), 1);
        assert_eq!(s.get("insert_failed"), 10);
        assert_eq!(s.get("no_such_column"), 0);
        assert!(CtStat::parse("a b\n1 2 3\n").is_err());
        assert!(CtStat::parse("a b\n1 zz\n").is_err());
        assert!(CtStat::parse("").is_err());
    }

    #[test]
    fn slabinfo_and_meminfo() {
        let slab = "slabinfo - version: 2.1\n\
                    nf_conntrack_expect 0 0 208 19 1 : tunables 0 0 0\n\
                    nf_conntrack         224    288    256   16    1 : tunables    0    0    0\n";
        assert_eq!(slab_object_size(slab), Some(256));
        assert_eq!(slab_object_size("kmalloc-8 1 2 8\n"), None);
        assert_eq!(
            mem_total_bytes("MemTotal:       24684092 kB\nMemFree: 1 kB\n"),
            Some(24684092 * 1024)
        );
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn daemon_facts_from_stats_json() {
        let v: Value = serde_json::json!({
            "uptime_s": 12,
            "peers": [{"node_id": 2, "alive": true, "last_heard_ms_ago": 300, "flows": 7, "reordered": 1}],
            "links": [{"device": "sync0", "up": false}],
            "kernel": {"events_received": 40, "overruns": 1},
            "network": {"foreign_source": 2, "send_errors": 3},
            "sync": {"malformed": {"truncated": 1, "oversized": 4}, "lost": 5, "retransmits": 6,
                     "messages_sent": 9, "backlog_dropped_items": 8,
                     "peer_wire": {"2": {"largest_datagram": 1400, "oversized": 4, "acks_nacks": 11}}},
            "queues": {"resend_window": 10, "window": 20},
            "warm": {"written": 1, "failed": 2, "restored": 3, "pending": 4}
        });
        let d = DaemonFacts::from_stats_json(&v);
        assert_eq!(d.uptime_s, 12);
        assert_eq!(
            d.peers,
            vec![PeerFacts {
                node_id: 2,
                alive: true,
                last_heard_ms_ago: 300,
                flows: 7,
                reordered: 1,
                largest_datagram: 1400,
                oversized: 4,
                acks_nacks: 11,
            }]
        );
        assert_eq!(d.links[0].device, "sync0");
        assert!(!d.links[0].up);
        assert_eq!((d.dropped, d.lost, d.send_errors), (7, 5, 3));
        assert_eq!((d.resend_window, d.window, d.events_received), (10, 20, 40));
        assert_eq!(d.warm.map(|w| w.pending), Some(4));
        let none = DaemonFacts::from_stats_json(&serde_json::json!({"warm": null}));
        assert_eq!(none.warm, None);
        assert!(none.peers.is_empty());
    }
}
