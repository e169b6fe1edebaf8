//! What the checks decide on: the machine's conntrack settings and
//! counters, and the daemon's counters, as plain values; and the parsers
//! that turn `/proc` text and `-s --json` into them.
//!
//! Owns: `MachineFacts`, `CtStat`, `TableMix`, `DaemonFacts` and parsing
//! their text (a field missing from `-s --json` is an error, never a 0). Must not: open files or sockets (`read` does) or judge the
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

/// The link that speaks conntrackd's protocol (`-s --json`'s
/// `conntrackd_link`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdLinkFacts {
    pub mode: String,
    pub handshake_done: bool,
    /// `None`: nothing heard from the conntrackd peer yet.
    pub last_heard_ms_ago: Option<u64>,
    /// Datagrams refused (malformed) and changes that failed our checks.
    pub refused: u64,
    pub lost: u64,
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
    /// `None`: the daemon has no conntrackd link.
    pub conntrackd_link: Option<CdLinkFacts>,
}

/// Reads numbers out of `-s --json` and notes every field that is
/// missing or of the wrong type: a renamed counter must show as
/// "unreadable", never as 0 (a 0 would make findings of its own, such as
/// "no kernel event has reached the daemon").
struct Fields {
    missing: Vec<String>,
    /// Where the value being read sits (`peers[0]`), "" at the top.
    at: String,
}

impl Fields {
    fn name(&self, path: &[&str]) -> String {
        if self.at.is_empty() {
            path.join(".")
        } else {
            format!("{}.{}", self.at, path.join("."))
        }
    }

    fn get<'v>(&mut self, v: &'v Value, path: &[&str]) -> Option<&'v Value> {
        let found = path.iter().try_fold(v, |v, k| v.get(k));
        if found.is_none() {
            self.missing.push(self.name(path));
        }
        found
    }

    fn u64(&mut self, v: &Value, path: &[&str]) -> u64 {
        match self.get(v, path).map(Value::as_u64) {
            Some(Some(n)) => n,
            Some(None) => {
                self.missing
                    .push(format!("{} (not a number)", self.name(path)));
                0
            }
            None => 0,
        }
    }

    fn bool(&mut self, v: &Value, path: &[&str]) -> bool {
        match self.get(v, path).map(Value::as_bool) {
            Some(Some(b)) => b,
            Some(None) => {
                self.missing
                    .push(format!("{} (not true or false)", self.name(path)));
                false
            }
            None => false,
        }
    }

    fn array<'v>(&mut self, v: &'v Value, path: &[&str]) -> &'v [Value] {
        match self.get(v, path).map(Value::as_array) {
            Some(Some(a)) => a,
            Some(None) => {
                self.missing
                    .push(format!("{} (not a list)", self.name(path)));
                &[]
            }
            None => &[],
        }
    }

    fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &[&str],
    ) -> Option<&'v serde_json::Map<String, Value>> {
        match self.get(v, path).map(Value::as_object) {
            Some(Some(m)) => Some(m),
            Some(None) => {
                self.missing
                    .push(format!("{} (not an object)", self.name(path)));
                None
            }
            None => None,
        }
    }
}

impl DaemonFacts {
    /// From `ctsyncd -s --json`. Every field doctor uses must be there:
    /// the error lists those that are not (a daemon of another version),
    /// and the checks then say "unreadable" instead of judging zeros.
    /// `warm` is `null` without warm standby, `conntrackd_link` without
    /// such a link (and its `last_heard_ms_ago` until the peer is heard),
    /// and a peer may not have sent a datagram yet (no `sync.peer_wire`
    /// entry): all are values.
    pub fn from_stats_json(v: &Value) -> Result<DaemonFacts, Vec<String>> {
        let mut f = Fields {
            missing: Vec::new(),
            at: String::new(),
        };
        let wire = f.object(v, &["sync", "peer_wire"]);
        let mut peers = Vec::new();
        for (i, p) in f.array(v, &["peers"]).iter().enumerate() {
            f.at = format!("peers[{i}]");
            let id = f.u64(p, &["node_id"]);
            let mut peer = PeerFacts {
                node_id: id,
                alive: f.bool(p, &["alive"]),
                last_heard_ms_ago: f.u64(p, &["last_heard_ms_ago"]),
                flows: f.u64(p, &["flows"]),
                reordered: f.u64(p, &["reordered"]),
                ..PeerFacts::default()
            };
            if let Some(w) = wire.and_then(|w| w.get(&id.to_string())) {
                f.at = format!("sync.peer_wire.{id}");
                peer.largest_datagram = f.u64(w, &["largest_datagram"]);
                peer.oversized = f.u64(w, &["oversized"]);
                peer.acks_nacks = f.u64(w, &["acks_nacks"]);
            }
            peers.push(peer);
        }
        let mut links = Vec::new();
        for (i, l) in f.array(v, &["links"]).iter().enumerate() {
            f.at = format!("links[{i}]");
            let device = match f.get(l, &["device"]).map(Value::as_str) {
                Some(Some(d)) => d.to_string(),
                Some(None) => {
                    f.missing.push(format!("links[{i}].device (not a string)"));
                    String::new()
                }
                None => String::new(),
            };
            links.push(LinkFacts {
                device,
                up: f.bool(l, &["up"]),
            });
        }
        f.at.clear();
        let malformed: u64 = f
            .object(v, &["sync", "malformed"])
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        let dropped = malformed + f.u64(v, &["network", "foreign_source"]);
        let warm = match f.get(v, &["warm"]) {
            Some(w) if w.is_null() => None,
            Some(w) => {
                f.at = "warm".into();
                let warm = WarmFacts {
                    written: f.u64(w, &["written"]),
                    failed: f.u64(w, &["failed"]),
                    restored: f.u64(w, &["restored"]),
                    pending: f.u64(w, &["pending"]),
                };
                f.at.clear();
                Some(warm)
            }
            None => None,
        };
        let conntrackd_link = match f.get(v, &["conntrackd_link"]) {
            Some(c) if c.is_null() => None,
            Some(c) => {
                f.at = "conntrackd_link".into();
                let mode = match f.get(c, &["mode"]).map(Value::as_str) {
                    Some(Some(m)) => m.to_string(),
                    Some(None) => {
                        f.missing.push("conntrackd_link.mode (not a string)".into());
                        String::new()
                    }
                    None => String::new(),
                };
                let last_heard_ms_ago = match f.get(c, &["last_heard_ms_ago"]) {
                    Some(h) if h.is_null() => None,
                    Some(_) => Some(f.u64(c, &["last_heard_ms_ago"])),
                    None => None,
                };
                let link = CdLinkFacts {
                    mode,
                    handshake_done: f.bool(c, &["handshake_done"]),
                    last_heard_ms_ago,
                    refused: f.u64(c, &["malformed"]) + f.u64(c, &["invalid_changes"]),
                    lost: f.u64(c, &["lost"]),
                };
                f.at.clear();
                Some(link)
            }
            None => None,
        };
        let facts = DaemonFacts {
            uptime_s: f.u64(v, &["uptime_s"]),
            peers,
            links,
            events_received: f.u64(v, &["kernel", "events_received"]),
            overruns: f.u64(v, &["kernel", "overruns"]),
            dropped,
            lost: f.u64(v, &["sync", "lost"]),
            send_errors: f.u64(v, &["network", "send_errors"]),
            backlog_dropped_items: f.u64(v, &["sync", "backlog_dropped_items"]),
            retransmits: f.u64(v, &["sync", "retransmits"]),
            messages_sent: f.u64(v, &["sync", "messages_sent"]),
            resend_window: f.u64(v, &["queues", "resend_window"]),
            window: f.u64(v, &["queues", "window"]),
            warm,
            conntrackd_link,
        };
        if f.missing.is_empty() {
            Ok(facts)
        } else {
            f.missing.dedup();
            Err(f.missing)
        }
    }
}

/// The daemon as doctor found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonState {
    /// Nothing answers on the control socket (the reason says why).
    NotRunning(String),
    /// It answers, but its `-s --json` lacks fields doctor reads (another
    /// version): the reason names them. Its counters are not judged.
    Unreadable(String),
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
            "warm": {"written": 1, "failed": 2, "restored": 3, "pending": 4},
            "conntrackd_link": null
        });
        let d = DaemonFacts::from_stats_json(&v).unwrap();
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
        assert_eq!(d.conntrackd_link, None);
        // A renamed counter is reported, not read as 0.
        let mut renamed = v.clone();
        let kernel = renamed["kernel"].as_object_mut().unwrap();
        let n = kernel.remove("events_received").unwrap();
        kernel.insert("events_delivered".into(), n);
        renamed["links"][0]["up"] = serde_json::json!("yes");
        renamed["warm"].as_object_mut().unwrap().remove("pending");
        assert_eq!(
            DaemonFacts::from_stats_json(&renamed),
            Err(vec![
                "links[0].up (not true or false)".to_string(),
                "warm.pending".to_string(),
                "kernel.events_received".to_string()
            ])
        );
        let bare = DaemonFacts::from_stats_json(&serde_json::json!({"warm": null})).unwrap_err();
        assert!(bare.contains(&"uptime_s".to_string()), "{bare:?}");
        assert!(bare.contains(&"conntrackd_link".to_string()), "{bare:?}");
        assert!(!bare.iter().any(|m| m.starts_with("warm")), "{bare:?}");
        let mut linked = v.clone();
        linked["conntrackd_link"] = serde_json::json!({"mode": "notrack", "handshake_done": false});
        assert_eq!(
            DaemonFacts::from_stats_json(&linked),
            Err(vec![
                "conntrackd_link.last_heard_ms_ago".to_string(),
                "conntrackd_link.malformed".to_string(),
                "conntrackd_link.invalid_changes".to_string(),
                "conntrackd_link.lost".to_string()
            ])
        );
    }

    /// The JSON the daemon really renders for `-s --json` (the same
    /// function, from a snapshot with every part doctor reads filled in
    /// with distinct numbers) reads back complete and to the same values:
    /// renaming a field of the snapshot breaks this test, not doctor.
    #[test]
    fn reads_the_stats_json_the_daemon_renders() {
        use crate::counters::{LinkBlock, PeerBlock, StatsSnapshot, WarmCounters};
        let mut snap = StatsSnapshot {
            uptime_s: 101,
            ..StatsSnapshot::default()
        };
        snap.peers = vec![
            PeerBlock {
                node_id: 2,
                alive: true,
                flows: 102,
                last_heard_ms_ago: 103,
                reordered: 104,
                ..PeerBlock::default()
            },
            // Heard of, no datagram measured yet: no peer_wire entry.
            PeerBlock {
                node_id: 3,
                flows: 105,
                ..PeerBlock::default()
            },
        ];
        snap.links = vec![LinkBlock {
            device: "sync7".into(),
            up: true,
            ..LinkBlock::default()
        }];
        snap.sync.peer_wire.insert(
            2,
            crate::sync::PeerWire {
                largest_datagram: 106,
                oversized: 107,
                acks_nacks: 108,
            },
        );
        snap.sync.malformed.truncated = 109;
        snap.sync.malformed.bad_flow = 110;
        snap.network.foreign_source = 111;
        snap.network.send_errors = 112;
        snap.kernel.events_received = 113;
        snap.kernel.overruns = 114;
        snap.sync.lost = 115;
        snap.sync.backlog_dropped_items = 116;
        snap.sync.retransmits = 117;
        snap.sync.messages_sent = 118;
        snap.queues.resend_window = 119;
        snap.queues.window = 120;
        snap.warm = Some(WarmCounters {
            written: 121,
            failed: 122,
            restored: 123,
            pending: 124,
        });
        snap.conntrackd_link = Some(crate::counters::CdLinkBlock {
            mode: "ftfw",
            handshake_done: true,
            malformed: 125,
            invalid_changes: 126,
            lost: 127,
            last_heard_ms_ago: Some(128),
            ..crate::counters::CdLinkBlock::default()
        });
        let read = |snap: &StatsSnapshot| {
            let text = crate::control::render::render_stats_json(snap);
            let v: Value = serde_json::from_str(&text).unwrap();
            DaemonFacts::from_stats_json(&v)
        };
        let d = read(&snap).unwrap();
        assert_eq!(
            d,
            DaemonFacts {
                uptime_s: 101,
                peers: vec![
                    PeerFacts {
                        node_id: 2,
                        alive: true,
                        last_heard_ms_ago: 103,
                        flows: 102,
                        reordered: 104,
                        largest_datagram: 106,
                        oversized: 107,
                        acks_nacks: 108,
                    },
                    PeerFacts {
                        node_id: 3,
                        flows: 105,
                        ..PeerFacts::default()
                    },
                ],
                links: vec![LinkFacts {
                    device: "sync7".into(),
                    up: true
                }],
                events_received: 113,
                overruns: 114,
                dropped: 109 + 110 + 111,
                lost: 115,
                send_errors: 112,
                backlog_dropped_items: 116,
                retransmits: 117,
                messages_sent: 118,
                resend_window: 119,
                window: 120,
                warm: Some(WarmFacts {
                    written: 121,
                    failed: 122,
                    restored: 123,
                    pending: 124,
                }),
                conntrackd_link: Some(CdLinkFacts {
                    mode: "ftfw".into(),
                    handshake_done: true,
                    last_heard_ms_ago: Some(128),
                    refused: 125 + 126,
                    lost: 127,
                }),
            }
        );
        // A conntrackd peer not heard yet.
        if let Some(c) = &mut snap.conntrackd_link {
            c.last_heard_ms_ago = None;
        }
        let d = read(&snap).unwrap();
        assert_eq!(d.conntrackd_link.and_then(|c| c.last_heard_ms_ago), None);
        // Without warm standby or a conntrackd link, and with no peer or
        // link yet: complete too.
        let d = read(&StatsSnapshot::default()).unwrap();
        assert_eq!(
            (d.warm, d.conntrackd_link, d.peers.len(), d.links.len()),
            (None, None, 0, 0)
        );
    }
}
