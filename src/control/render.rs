//! Text and JSON renderings of cache entries and counters.
//!
//! Owns: conntrackd's exact output layouts (reference §1.12): the
//! libnetfilter_conntrack "plain" flow line used by `-i`/`-e`, the `-s`
//! blocks with their printf widths, and ctsync's own `ctsync:` block; plus
//! the `--json` forms. Must not: read the clock (times are arguments), or
//! gather the counters (the daemon fills a [`StatsSnapshot`]).

use super::request::StatsSection;
use crate::cache::CacheEntry;
use crate::flow::{proto_name, status, Flow, Tuple, L4};
use serde::Serialize;
use std::fmt::Write as _;

pub use crate::counters::{CacheBlock, LinkBlock, PeerBlock, StatsSnapshot};

/// Which `malformed_by_reason` keys (the wire layer's `WireError::reason()`
/// names) fill each row of `-s network`.
pub mod reason {
    pub const VERSION: &[&str] = &["bad_version"];
    pub const HEADER: &[&str] = &["bad_magic", "bad_header"];
    pub const PAYLOAD: &[&str] = &["bad_body", "bad_flow"];
    pub const TYPE: &[&str] = &["data_in_control"];
    pub const TRUNCATED: &[&str] = &["truncated"];
    pub const SIZE: &[&str] = &["bad_length", "oversized", "too_many_messages"];
}

// ---- flows ----------------------------------------------------------------

/// Seconds an entry has been cached, as `[active since Ns]` prints it.
fn active_since_s(entry: &CacheEntry, now_ms: u64) -> u64 {
    now_ms.saturating_sub(entry.since_ms) / 1000
}

/// One flow in libnetfilter_conntrack's plain layout, without the timeout,
/// followed by ` [active since Ns]`. `with_reply` prints the reply tuple
/// (`-i`); without it only the original tuple is shown (`-e`).
pub fn flow_line(entry: &CacheEntry, now_ms: u64, with_reply: bool) -> String {
    let mut s = String::with_capacity(200);
    write_flow_line(&mut s, entry, now_ms, with_reply);
    s
}

/// `flow_line`, appended to `s` (a whole table renders into one buffer).
pub fn write_flow_line(s: &mut String, entry: &CacheEntry, now_ms: u64, with_reply: bool) {
    // Written field by field without `format!`: a dump of a million flows
    // is rendered this way, and the formatting machinery doubled its cost.
    let f = &entry.flow;
    let name = proto_name(f.orig.proto);
    s.push_str(name);
    for _ in name.len()..8 {
        s.push(' ');
    }
    s.push(' ');
    push_num(s, u64::from(f.orig.proto));
    s.push(' ');
    if let Some(name) = f.state.name() {
        // libnetfilter_conntrack prints an out-of-range state as NONE.
        s.push_str(if name == "UNKNOWN" { "NONE" } else { name });
        s.push(' ');
    }
    push_tuple(s, &f.orig);
    s.push(' ');
    if f.status & status::SEEN_REPLY == 0 {
        s.push_str("[UNREPLIED] ");
    }
    if with_reply {
        push_tuple(s, &f.reply);
        s.push(' ');
    }
    if f.status & status::HW_OFFLOAD != 0 {
        s.push_str("[HW_OFFLOAD] ");
    } else if f.status & status::OFFLOAD != 0 {
        s.push_str("[OFFLOAD] ");
    } else if f.status & status::ASSURED != 0 {
        s.push_str("[ASSURED] ");
    }
    push_field(s, "mark=", u64::from(f.mark));
    s.push(' ');
    if f.zone != 0 {
        push_field(s, "zone=", u64::from(f.zone));
        s.push(' ');
    }
    if let Some(h) = &f.helper {
        s.push_str("helper=");
        s.push_str(h);
        s.push(' ');
    }
    // Labels are not printed: conntrackd formats without a label map, so
    // libnetfilter_conntrack omits them. `--json` carries them.
    push_field(s, "[active since ", active_since_s(entry, now_ms));
    s.push_str("s]");
}

/// A tuple as `Tuple`'s `Display` writes it (`src=.. dst=.. sport=..`).
fn push_tuple(s: &mut String, t: &Tuple) {
    s.push_str("src=");
    push_addr(s, t.src);
    s.push_str(" dst=");
    push_addr(s, t.dst);
    match t.l4 {
        L4::Ports { src, dst } if t.proto == crate::flow::proto::GRE => {
            let _ = write!(s, " srckey=0x{src:x} dstkey=0x{dst:x}");
        }
        L4::Ports { src, dst } => {
            push_field(s, " sport=", u64::from(src));
            push_field(s, " dport=", u64::from(dst));
        }
        L4::Icmp { kind, code, id } => {
            push_field(s, " type=", u64::from(kind));
            push_field(s, " code=", u64::from(code));
            push_field(s, " id=", u64::from(id));
        }
        L4::None => {}
    }
}

fn push_addr(s: &mut String, addr: std::net::IpAddr) {
    match addr {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                push_num(s, u64::from(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(s, "{v6}");
        }
    }
}

/// `name` and `n` in decimal.
fn push_field(s: &mut String, name: &str, n: u64) {
    s.push_str(name);
    push_num(s, n);
}

/// `n` in decimal.
fn push_num(s: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

/// A tuple as `--json` shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TupleJson {
    pub src: String,
    pub dst: String,
    pub proto: &'static str,
    pub protonum: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
}

impl From<&Tuple> for TupleJson {
    fn from(t: &Tuple) -> TupleJson {
        let mut j = TupleJson {
            src: t.src.to_string(),
            dst: t.dst.to_string(),
            proto: proto_name(t.proto),
            protonum: t.proto,
            sport: None,
            dport: None,
            r#type: None,
            code: None,
            id: None,
        };
        match t.l4 {
            L4::Ports { src, dst } => {
                j.sport = Some(src);
                j.dport = Some(dst);
            }
            L4::Icmp { kind, code, id } => {
                j.r#type = Some(kind);
                j.code = Some(code);
                j.id = Some(id);
            }
            L4::None => {}
        }
        j
    }
}

/// A NAT binding as `--json` shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct NatJson {
    pub addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A flow as `--json` shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FlowJson {
    pub orig: TupleJson,
    pub reply: TupleJson,
    pub zone: u16,
    pub status: u32,
    pub timeout: u32,
    pub mark: u32,
    pub state: Option<&'static str>,
    pub snat: Option<NatJson>,
    pub dnat: Option<NatJson>,
    /// Label bits as lowercase hex, if any is set.
    pub labels: Option<String>,
    pub helper: Option<String>,
    /// A RELATED flow's master connection (its original tuple).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<TupleJson>,
    pub active_since_s: u64,
}

/// The JSON form of one cache entry.
pub fn flow_json(entry: &CacheEntry, now_ms: u64) -> FlowJson {
    let f: &Flow = &entry.flow;
    let nat = f.nat();
    let bind = |b: crate::flow::NatBinding| NatJson {
        addr: b.addr.to_string(),
        port: b.port,
    };
    FlowJson {
        orig: TupleJson::from(&f.orig),
        reply: TupleJson::from(&f.reply),
        zone: f.zone,
        status: f.status,
        timeout: f.timeout,
        mark: f.mark,
        state: f.state.name(),
        snat: nat.snat.map(bind),
        dnat: nat.dnat.map(bind),
        labels: f.labels.as_ref().map(|l| {
            l.iter().fold(String::new(), |mut acc, b| {
                let _ = write!(acc, "{b:02x}");
                acc
            })
        }),
        helper: f.helper.clone(),
        master: f.master.as_ref().map(TupleJson::from),
        active_since_s: active_since_s(entry, now_ms),
    }
}

/// `--json` for `-i`/`-e`, one flow at a time (a dump is too big to hold
/// in one piece): `open` first, then `item` per flow, then `close`; the
/// pieces together are `flows_json` of those flows, byte for byte.
pub struct FlowsJsonWriter {
    items: usize,
}

impl FlowsJsonWriter {
    pub fn open(out: &mut String) -> FlowsJsonWriter {
        out.push('[');
        FlowsJsonWriter { items: 0 }
    }

    pub fn item(&mut self, out: &mut String, entry: &CacheEntry, now_ms: u64) {
        let one = serde_json::to_string_pretty(&flow_json(entry, now_ms))
            .unwrap_or_else(|_| "{}".to_string());
        out.push_str(if self.items == 0 { "\n  " } else { ",\n  " });
        // JSON strings hold no raw newline: each one starts a line to indent.
        for (i, line) in one.split('\n').enumerate() {
            if i > 0 {
                out.push_str("\n  ");
            }
            out.push_str(line);
        }
        self.items += 1;
    }

    pub fn close(self, out: &mut String) {
        out.push_str(if self.items == 0 { "]\n" } else { "\n]\n" });
    }
}

/// An array of flow objects, then a newline, in one piece through serde:
/// what [`FlowsJsonWriter`]'s pieces are checked against.
#[cfg(test)]
pub fn flows_json(entries: &[CacheEntry], now_ms: u64) -> String {
    let all: Vec<FlowJson> = entries.iter().map(|e| flow_json(e, now_ms)).collect();
    let mut s = serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".to_string());
    s.push('\n');
    s
}

// ---- stats ----------------------------------------------------------------

/// `--json` for `-s`: the whole snapshot, whatever the section.
pub fn render_stats_json(snap: &StatsSnapshot) -> String {
    let mut s = serde_json::to_string_pretty(snap).unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    s
}

/// `-s [section]` in conntrackd's layout; `General` ends with ctsync's own block.
pub fn render_stats(snap: &StatsSnapshot, section: StatsSection) -> String {
    let mut s = String::new();
    match section {
        StatsSection::Expect => {
            cache_block(&mut s, "internal", &snap.expectations.internal);
            cache_block(&mut s, "external", &snap.expectations.external);
        }
        StatsSection::General => {
            cache_block(&mut s, "internal", &snap.internal);
            cache_block(&mut s, "external", &snap.external);
            active_link_block(&mut s, snap);
            conntrackd_link_block(&mut s, snap);
            let _ = write!(
                s,
                "message tracking:\n{:>20} Malformed msgs {:>20} Lost msgs\n\n",
                snap.malformed(),
                snap.sync.lost
            );
            ctsync_block(&mut s, snap);
        }
        StatsSection::Network => {
            let by_reason = snap.malformed_by_reason();
            let r = |keys: &[&str]| -> u64 {
                by_reason
                    .iter()
                    .filter(|(k, _)| keys.contains(k))
                    .map(|(_, n)| n)
                    .sum()
            };
            let _ = write!(
                s,
                "network statistics:\n\
                 \trecv:\n\
                 \t\tMalformed messages:\t{:>20}\n\
                 \t\tWrong protocol version:\t{:>20}\n\
                 \t\tMalformed header:\t{:>20}\n\
                 \t\tMalformed payload:\t{:>20}\n\
                 \t\tBad message type:\t{:>20}\n\
                 \t\tTruncated message:\t{:>20}\n\
                 \t\tBad message size:\t{:>20}\n\n",
                snap.malformed(),
                r(reason::VERSION),
                r(reason::HEADER),
                r(reason::PAYLOAD),
                r(reason::TYPE),
                r(reason::TRUNCATED),
                r(reason::SIZE),
            );
            let _ = write!(
                s,
                "sequence tracking statistics:\n\
                 \trecv:\n\
                 \t\tPackets lost:\t\t{:>20}\n\
                 \t\tPackets before:\t\t{:>20}\n\n",
                snap.sync.lost, snap.sync.duplicates
            );
            active_link_block(&mut s, snap);
        }
        StatsSection::Cache => {
            cache_detail(&mut s, "internal", &snap.internal);
            cache_detail(&mut s, "external", &snap.external);
        }
        StatsSection::Runtime => {
            let _ = writeln!(s, "{}\n", uptime_line(snap.uptime_s));
            let k = &snap.kernel;
            let _ = write!(
                s,
                "netlink stats:\n\
                 \tevents received:\t{:>20}\n\
                 \tevents filtered:\t{:>20}\n\
                 \tcatch event failed:\t\t{:>12}\n\
                 \tnetlink overrun:\t\t{:>12}\n\
                 \tflush kernel table:\t\t{:>12}\n\
                 \tresync with kernel table:\t{:>12}\n\
                 \tcurrent buffer size (in bytes):\t{:>12}\n\n",
                k.events_received,
                k.events_filtered,
                k.read_failures,
                k.overruns,
                k.flushes,
                k.table_reads,
                k.buffer_size
            );
            let _ = write!(
                s,
                "runtime stats:\n\
                 \tlocal requests:\t\t\t{:>12}\n\
                 \tlocal read failed:\t\t{:>12}\n\
                 \tlocal unknown request:\t\t{:>12}\n\
                 \tlocal request refused:\t\t{:>12}\n\n",
                snap.control.requests,
                snap.control.read_failed,
                snap.control.unknown,
                snap.control.refused
            );
        }
        StatsSection::Link => {
            for l in &snap.links {
                let _ = writeln!(
                    s,
                    "{} traffic device={} status={} role={}:",
                    l.transport,
                    l.device,
                    if l.up { "RUNNING" } else { "DOWN" },
                    if l.active { "ACTIVE" } else { "BACKUP" }
                );
                link_counters(&mut s, l);
            }
        }
        StatsSection::Rsqueue => {
            // The resend window holds whole datagrams, not conntrackd's
            // per-message items: its length is all there is to list.
            let _ = writeln!(s, "resent queue (len={})", snap.queues.resend_window);
        }
        StatsSection::Queue => {
            let _ = write!(
                s,
                "allocated queue nodes:\t\t{:>12}\n\n",
                snap.queues.send_queue + snap.queues.resend_window
            );
            for (name, current, max, errors) in [
                (
                    "txqueue",
                    snap.queues.send_queue,
                    2147483647u64,
                    snap.sync.backlog_dropped_items,
                ),
                (
                    "rsqueue",
                    snap.queues.resend_window,
                    snap.queues.window,
                    snap.sync.window_full,
                ),
            ] {
                let _ = write!(
                    s,
                    "queue {name}:\ncurrent elements:\t\t{current:>12}\nmaximum elements:\t\t{max:>12}\nnot enough space errors:\t{errors:>12}\n\n",
                );
            }
        }
        StatsSection::Process => {
            // ctsync forks no children: nothing to list.
        }
    }
    s
}

fn cache_block(s: &mut String, name: &str, c: &CacheBlock) {
    let _ = write!(
        s,
        "cache {name}:\n\
         current active connections:\t{:>12}\n\
         connections created:\t\t{:>12}\tfailed:\t{:>12}\n\
         connections updated:\t\t{:>12}\tfailed:\t{:>12}\n\
         connections destroyed:\t\t{:>12}\tfailed:\t{:>12}\n\n",
        c.active,
        c.counts.created,
        c.counts.create_failed,
        c.counts.updated,
        c.counts.update_failed,
        c.counts.destroyed,
        c.counts.destroy_failed
    );
}

fn cache_detail(s: &mut String, name: &str, c: &CacheBlock) {
    let _ = write!(
        s,
        "cache:{name}\tactive objects:\t\t{:>12}\n\
         \tcreation OK/failed:\t\t{:>12}/{:>12}\n\
         \tupdate OK/failed:\t\t{:>12}/{:>12}\n\
         \tdeletion created/failed:\t{:>12}/{:>12}\n\n",
        c.active,
        c.counts.created,
        c.counts.create_failed,
        c.counts.updated,
        c.counts.update_failed,
        c.counts.destroyed,
        c.counts.destroy_failed
    );
}

/// The link that speaks conntrackd's protocol, in the layout of its
/// traffic block.
fn conntrackd_link_block(s: &mut String, snap: &StatsSnapshot) {
    let Some(c) = &snap.conntrackd_link else {
        return;
    };
    let _ = write!(
        s,
        "conntrackd link (mode={}, peer node id {}):\n\
         {:>20} Bytes sent {:>20} Pckts sent\n\
         {:>20} Pckts recv {:>20} Msgs recv\n\
         {:>20} Malformed msgs {:>16} Lost msgs\n\n",
        c.mode,
        c.peer_node_id,
        c.bytes_sent,
        c.datagrams_sent,
        c.datagrams_received,
        c.messages_received,
        c.malformed + c.invalid_changes,
        c.lost
    );
}

fn active_link_block(s: &mut String, snap: &StatsSnapshot) {
    let Some(l) = snap.links.iter().find(|l| l.active).or(snap.links.first()) else {
        return;
    };
    let _ = writeln!(s, "{} traffic (active device={}):", l.transport, l.device);
    link_counters(s, l);
}

fn link_counters(s: &mut String, l: &LinkBlock) {
    let _ = write!(
        s,
        "{:>20} Bytes sent {:>20} Bytes recv\n\
         {:>20} Pckts sent {:>20} Pckts recv\n\
         {:>20} Error send {:>20} Error recv\n\n",
        l.bytes_sent, l.bytes_recv, l.packets_sent, l.packets_recv, l.errors_send, l.errors_recv
    );
}

/// `daemon uptime: [N day(s) ][H h ]M min`, as conntrackd prints it.
pub fn uptime_line(uptime_s: u64) -> String {
    let days = uptime_s / 86_400;
    let hours = (uptime_s % 86_400) / 3600;
    let mins = (uptime_s % 3600) / 60;
    let mut s = String::from("daemon uptime: ");
    if days > 0 {
        let _ = write!(s, "{days} day{} ", if days > 1 { "s" } else { "" });
    }
    if hours > 0 {
        let _ = write!(s, "{hours} h ");
    }
    let _ = write!(s, "{mins} min");
    s
}

fn row(s: &mut String, label: &str, v: u64) {
    let _ = writeln!(s, "\t{:<28}{:>20}", format!("{label}:"), v);
}

/// Authentication: keys by id and check value, refusals by reason.
fn auth_rows(s: &mut String, auth: &crate::counters::AuthBlock) {
    if !auth.enabled {
        let _ = writeln!(
            s,
            "	authentication: NONE (any host on the sync link can write flows here)"
        );
        if auth.counts.not_configured > 0 {
            row(s, "sealed datagrams refused", auth.counts.not_configured);
        }
        return;
    }
    let keys: Vec<String> = auth
        .keys
        .iter()
        .map(|k| {
            let sends = if auth.send_key == Some(k.id) {
                " sends"
            } else {
                ""
            };
            format!("{} (check {}{sends})", k.id, k.check)
        })
        .collect();
    let _ = writeln!(s, "	authentication: keys {}", keys.join(", "));
    let c = &auth.counts;
    row(s, "datagrams sealed", c.sealed);
    row(s, "datagrams opened", c.opened);
    for (why, n) in [
        ("auth_missing", c.missing),
        ("auth_unknown_key", c.unknown_key),
        ("auth_bad_tag", c.bad_tag),
        ("auth_too_old", c.too_old),
        ("auth_replayed", c.replayed),
        ("epoch_unadmitted", c.epoch_unadmitted),
        ("auth_too_many_senders", c.too_many_senders),
    ] {
        if n > 0 {
            let _ = writeln!(s, "		{:<26}{:>20}", format!("{why}:"), n);
        }
    }
    row(s, "challenges sent", c.challenges_sent);
    row(s, "challenges answered", c.challenges_answered);
    row(s, "peer epochs admitted", c.epochs_admitted);
}

/// ctsync's own counters, printed after conntrackd's blocks by `-s`.
fn ctsync_block(s: &mut String, snap: &StatsSnapshot) {
    let sync = &snap.sync;
    s.push_str("ctsync:\n");
    row(s, "dropped (by reason)", snap.malformed());
    for (why, n) in snap.malformed_by_reason() {
        let _ = writeln!(s, "\t\t{:<26}{:>20}", format!("{why}:"), n);
    }
    row(s, "messages resent", sync.retransmits);
    row(s, "resyncs requested", sync.resyncs_requested_sent);
    row(s, "resyncs received", sync.resyncs_requested_received);
    row(s, "bulks sent", sync.bulks_sent);
    row(s, "bulks received", sync.bulks_received);
    row(s, "kernel overruns", snap.kernel.overruns);
    row(s, "kernel buffer size", snap.kernel.buffer_size);
    row(s, "commits ok", snap.commit.ok);
    row(s, "commits failed", snap.commit.failed);
    row(s, "digest mismatches", sync.digest_mismatches);
    row(s, "range requests sent", sync.range_requests_sent);
    row(s, "ranges repaired", sync.ranges_repaired);
    row(s, "ranges unproven", sync.ranges_unproven);
    row(s, "range bulks sent", sync.range_bulks_sent);
    row(s, "alarm expired", sync.alarm_expired);
    row(s, "epoch rollovers", sync.epoch_rollovers);
    if let Some(warm) = &snap.warm {
        row(s, "warm standby written", warm.written);
        row(s, "warm standby failed", warm.failed);
        row(s, "warm standby pending", warm.pending);
        row(s, "warm standby restored", warm.restored);
    }
    row(s, "send queue", snap.queues.send_queue);
    row(s, "resend window", snap.queues.resend_window);
    row(s, "resend window max", snap.queues.window);
    row(s, "reorder buffer", snap.queues.reorder);
    row(s, "backlog drops", sync.backlog_drops);
    row(s, "send queue drops", sync.send_queue_drops);
    row(s, "digests paused", u64::from(snap.digests.paused));
    auth_rows(s, &snap.auth);
    row(s, "uptime (s)", snap.uptime_s);
    for (i, l) in snap.links.iter().enumerate() {
        let _ = writeln!(
            s,
            "\tlink {i} {} device={} {} {} sent={}/{}B recv={}/{}B errors={}/{}",
            l.transport,
            l.device,
            if l.up { "up" } else { "down" },
            if l.active { "active" } else { "backup" },
            l.packets_sent,
            l.bytes_sent,
            l.packets_recv,
            l.bytes_recv,
            l.errors_send,
            l.errors_recv
        );
    }
    for p in &snap.peers {
        let _ = writeln!(
            s,
            "\tpeer node={} epoch={} {} flows={} expected_seq={} heard={}ms ago",
            p.node_id,
            p.epoch,
            if p.alive { "alive" } else { "dead" },
            p.flows,
            p.expected_seq,
            p.last_heard_ms_ago
        );
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheStats;
    use crate::flow::{proto, ProtoState};

    fn entry(flow: Flow, since_ms: u64) -> CacheEntry {
        CacheEntry {
            flow,
            since_ms,
            updated_ms: since_ms,
        }
    }

    fn v4(a: &str) -> std::net::IpAddr {
        a.parse().unwrap()
    }

    fn tcp_flow() -> Flow {
        let mut f = Flow::new(Tuple {
            src: v4("198.18.0.1"),
            dst: v4("198.18.0.2"),
            proto: proto::TCP,
            l4: L4::Ports { src: 1234, dst: 80 },
        });
        f.status = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;
        f.mark = 5;
        f.timeout = 120;
        f.state = ProtoState::Tcp {
            state: 3,
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0,
            flags_reply: 0,
        };
        f
    }

    #[test]
    fn tcp_internal_line_matches_conntrackd() {
        let e = entry(tcp_flow(), 1_000);
        assert_eq!(
            flow_line(&e, 4_999, true),
            "tcp      6 ESTABLISHED src=198.18.0.1 dst=198.18.0.2 sport=1234 dport=80 \
             src=198.18.0.2 dst=198.18.0.1 sport=80 dport=1234 [ASSURED] mark=5 [active since 3s]"
        );
    }

    #[test]
    fn tcp_external_line_shows_the_original_tuple_only() {
        let e = entry(tcp_flow(), 0);
        assert_eq!(
            flow_line(&e, 3_000, false),
            "tcp      6 ESTABLISHED src=198.18.0.1 dst=198.18.0.2 sport=1234 dport=80 [ASSURED] mark=5 [active since 3s]"
        );
    }

    #[test]
    fn icmp_unreplied_line() {
        let f = Flow::new(Tuple {
            src: v4("198.18.0.1"),
            dst: v4("198.18.0.4"),
            proto: proto::ICMP,
            l4: L4::Icmp {
                kind: 8,
                code: 0,
                id: 77,
            },
        });
        let e = entry(f, 0);
        assert_eq!(
            flow_line(&e, 2_500, true),
            "icmp     1 src=198.18.0.1 dst=198.18.0.4 type=8 code=0 id=77 [UNREPLIED] \
             src=198.18.0.4 dst=198.18.0.1 type=0 code=0 id=77 mark=0 [active since 2s]"
        );
    }

    #[test]
    fn nat_zone_helper_line() {
        let mut f = tcp_flow();
        f.reply = Tuple {
            src: v4("198.18.9.9"),
            dst: v4("198.19.0.1"),
            proto: proto::TCP,
            l4: L4::Ports {
                src: 21,
                dst: 40000,
            },
        };
        f.status = status::ASSURED;
        f.mark = 0;
        f.zone = 7;
        f.helper = Some("ftp".into());
        let e = entry(f, 0);
        assert_eq!(
            flow_line(&e, 0, true),
            "tcp      6 ESTABLISHED src=198.18.0.1 dst=198.18.0.2 sport=1234 dport=80 [UNREPLIED] \
             src=198.18.9.9 dst=198.19.0.1 sport=21 dport=40000 [ASSURED] mark=0 zone=7 helper=ftp [active since 0s]"
        );
        let j = flow_json(&e, 0);
        assert_eq!(j.snat.as_ref().map(|n| n.addr.as_str()), Some("198.19.0.1"));
        assert_eq!(j.snat.as_ref().and_then(|n| n.port), Some(40000));
        assert_eq!(j.dnat.as_ref().map(|n| n.addr.as_str()), Some("198.18.9.9"));
        assert_eq!(j.state, Some("ESTABLISHED"));
    }

    #[test]
    fn ipv6_udp_line_has_no_state() {
        let mut f = Flow::new(Tuple {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            proto: proto::UDP,
            l4: L4::Ports { src: 5000, dst: 53 },
        });
        f.status = status::SEEN_REPLY;
        let e = entry(f, 0);
        assert_eq!(
            flow_line(&e, 61_000, true),
            "udp      17 src=2001:db8::1 dst=2001:db8::2 sport=5000 dport=53 \
             src=2001:db8::2 dst=2001:db8::1 sport=53 dport=5000 mark=0 [active since 61s]"
        );
    }

    #[test]
    fn flows_json_is_an_array_of_objects() {
        let a = entry(tcp_flow(), 0);
        let out = flows_json(&[a.clone(), a], 5_000);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["orig"]["src"], "198.18.0.1");
        assert_eq!(arr[0]["orig"]["dport"], 80);
        assert_eq!(arr[0]["reply"]["sport"], 80);
        assert_eq!(arr[0]["mark"], 5);
        assert_eq!(arr[0]["active_since_s"], 5);
        assert!(arr[0]["snat"].is_null());
    }

    fn snapshot() -> StatsSnapshot {
        StatsSnapshot {
            internal: CacheBlock {
                active: 6,
                counts: CacheStats {
                    created: 6,
                    ..Default::default()
                },
            },
            links: vec![LinkBlock {
                transport: "UDP".into(),
                device: "sync0".into(),
                active: true,
                up: true,
                bytes_sent: 680,
                bytes_recv: 160,
                packets_sent: 15,
                packets_recv: 10,
                ..Default::default()
            }],
            sync: crate::sync::SyncStats {
                malformed: crate::sync::Drops {
                    bad_magic: 2,
                    ..Default::default()
                },
                lost: 3,
                ..Default::default()
            },
            kernel: crate::counters::KernelCounters {
                events_received: 41,
                overruns: 1,
                ..Default::default()
            },
            uptime_s: 90_061,
            ..Default::default()
        }
    }

    #[test]
    fn general_stats_layout_matches_conntrackd() {
        let out = render_stats(&snapshot(), StatsSection::General);
        let expected = [
            "cache internal:\n",
            "current active connections:\t           6\n",
            "connections created:\t\t           6\tfailed:\t           0\n",
            "connections updated:\t\t           0\tfailed:\t           0\n",
            "connections destroyed:\t\t           0\tfailed:\t           0\n",
            "\n",
            "cache external:\n",
            "current active connections:\t           0\n",
            "connections created:\t\t           0\tfailed:\t           0\n",
            "connections updated:\t\t           0\tfailed:\t           0\n",
            "connections destroyed:\t\t           0\tfailed:\t           0\n",
            "\n",
            "UDP traffic (active device=sync0):\n",
            "                 680 Bytes sent                  160 Bytes recv\n",
            "                  15 Pckts sent                   10 Pckts recv\n",
            "                   0 Error send                    0 Error recv\n",
            "\n",
            "message tracking:\n",
            "                   2 Malformed msgs                    3 Lost msgs\n",
            "\n",
            "ctsync:\n",
        ]
        .concat();
        assert!(out.starts_with(&expected), "got:\n{out}");
        assert!(out.contains("\t\tbad_magic:"));
    }

    #[test]
    fn refusals_by_a_limit_show_in_text_and_json() {
        let mut snap = snapshot();
        snap.sync.malformed.external_cache_full = 7;
        snap.sync.malformed.reorder_overflow = 5;
        snap.sync.malformed.reorder_too_far = 4;
        snap.sync.malformed.too_many_peers = 3;
        snap.sync.send_queue_drops = 2;
        let out = render_stats(&snap, StatsSection::General);
        for line in [
            "\tdropped (by reason):                          21\n",
            "\t\texternal_cache_full:                         7\n",
            "\t\treorder_overflow:                            5\n",
            "\t\treorder_too_far:                             4\n",
            "\t\ttoo_many_peers:                              3\n",
            "\tsend queue drops:                              2\n",
        ] {
            assert!(out.contains(line), "{line:?} not in:\n{out}");
        }
        let v: serde_json::Value = serde_json::from_str(&render_stats_json(&snap)).unwrap();
        let m = &v["sync"]["malformed"];
        assert_eq!(
            (
                &m["external_cache_full"],
                &m["reorder_overflow"],
                &m["reorder_too_far"],
                &m["too_many_peers"],
                &v["sync"]["send_queue_drops"]
            ),
            (&7.into(), &5.into(), &4.into(), &3.into(), &2.into())
        );
    }

    #[test]
    fn other_sections() {
        let snap = snapshot();
        let net = render_stats(&snap, StatsSection::Network);
        assert!(net.contains("\t\tMalformed header:\t                   2\n"));
        let cache = render_stats(&snap, StatsSection::Cache);
        assert!(cache.starts_with("cache:internal\tactive objects:\t\t           6\n\tcreation OK/failed:\t\t           6/           0\n"));
        let link = render_stats(&snap, StatsSection::Link);
        assert!(link.starts_with(
            "UDP traffic device=sync0 status=RUNNING role=ACTIVE:\n                 680 Bytes sent"
        ));
        let rt = render_stats(&snap, StatsSection::Runtime);
        assert!(rt.starts_with("daemon uptime: 1 day 1 h 1 min\n\nnetlink stats:\n"));
        assert!(rt.contains("\tevents received:\t                  41\n"));
        assert!(rt.contains("\tnetlink overrun:\t\t           1\n"));
        assert_eq!(uptime_line(59), "daemon uptime: 0 min");
        assert_eq!(uptime_line(2 * 86_400 + 120), "daemon uptime: 2 days 2 min");
        let v: serde_json::Value = serde_json::from_str(&render_stats_json(&snap)).unwrap();
        assert_eq!(v["internal"]["active"], 6);
        assert_eq!(v["links"][0]["bytes_sent"], 680);
        assert_eq!(v["sync"]["lost"], 3);
        assert_eq!(v["kernel"]["events_received"], 41);
        assert!(v["warm"].is_null());
    }

    #[test]
    fn tuples_are_written_as_their_display_shows_them() {
        let tuples = [
            Tuple {
                src: v4("198.18.0.1"),
                dst: v4("198.18.255.254"),
                proto: proto::GRE,
                l4: L4::Ports {
                    src: 0x1f,
                    dst: 0xabcd,
                },
            },
            Tuple {
                src: "2001:db8::7".parse().unwrap(),
                dst: "2001:db8:ffff::1".parse().unwrap(),
                proto: proto::ICMPV6,
                l4: L4::Icmp {
                    kind: 128,
                    code: 0,
                    id: 65535,
                },
            },
            Tuple {
                src: v4("0.0.0.0"),
                dst: v4("255.255.255.255"),
                proto: proto::UDP,
                l4: L4::Ports { src: 0, dst: 65535 },
            },
            Tuple {
                src: v4("198.18.0.9"),
                dst: v4("198.18.0.10"),
                proto: 47,
                l4: L4::None,
            },
        ];
        for t in tuples {
            let mut fast = String::new();
            push_tuple(&mut fast, &t);
            assert_eq!(fast, t.to_string());
        }
        let mut n = String::new();
        push_num(&mut n, u64::MAX);
        assert_eq!(n, u64::MAX.to_string());
    }
}
