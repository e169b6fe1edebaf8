//! conntrackd settings ([`Settings`]) written out as ctsync's TOML, each key
//! tagged with the conntrackd.conf line it came from, and a comment
//! wherever a setting has no equivalent.
//!
//! Owns: the decision, option by option, between carrying a setting over,
//! accepting it with a comment (it has no effect in ctsync, and refusing it
//! would stop a working conntrackd.conf from starting), and refusing it
//! (its meaning cannot be kept); the node id derived from the sync address.
//! Must not: check ranges and relations that `config.rs` checks (the TOML
//! goes through `Config::parse`, whose errors are pointed back at the
//! conntrackd.conf line), or read anything but its input.

use super::parser::{At, Link, LinkKind, Mode, Overrun, Refusal, RuleSet, Settings};
use crate::expect::ExpectPolicy;
use std::net::IpAddr;

/// conntrackd's default lock file (its code's, not the examples').
pub const DEFAULT_LOCK: &str = "/var/lock/conntrackd.lock";
/// The smallest and largest netlink buffer ctsync takes.
const MIN_NETLINK: u64 = 65_536;
const MAX_NETLINK: u64 = 1 << 31;
/// ctsync's default `[kernel] netlink_buffer` and `netlink_buffer_max`.
const CTSYNC_NETLINK: u64 = 8 << 20;
const CTSYNC_NETLINK_MAX: u64 = 64 << 20;
/// ctsync's default `[sync] window` (`ack_every` may not exceed it).
const CTSYNC_WINDOW: u64 = 4096;

/// Where a TOML line came from: a conntrackd.conf line and its keyword.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub line: usize,
    pub keyword: String,
}

/// A setting accepted without effect: its line and what the comment says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub text: String,
}

/// The TOML, line by line, with origins.
#[derive(Default)]
pub struct Doc {
    pub lines: Vec<(String, Option<Origin>)>,
    pub notes: Vec<Note>,
}

impl Doc {
    fn raw(&mut self, text: impl Into<String>, origin: Option<Origin>) {
        self.lines.push((text.into(), origin));
    }

    fn blank(&mut self) {
        self.raw("", None);
    }

    /// `# text`, wrapped at 78 columns.
    fn comment(&mut self, text: &str) {
        let mut line = String::from("#");
        for word in text.split_whitespace() {
            if line.len() + 1 + word.len() > 78 && line.len() > 1 {
                self.raw(std::mem::replace(&mut line, String::from("#")), None);
            }
            line.push(' ');
            line.push_str(word);
        }
        if line.len() > 1 {
            self.raw(line, None);
        }
    }

    /// A key carried over from `keyword` on `line`, with what it came from
    /// (and why, if the value changed) in a comment above it.
    fn key(&mut self, key: &str, value: String, line: usize, keyword: &str, why: &str) {
        let mut c = format!("line {line}: {keyword}");
        if !why.is_empty() {
            c.push_str(": ");
            c.push_str(why);
        }
        self.comment(&c);
        self.raw(
            format!("{key} = {value}"),
            Some(Origin {
                line,
                keyword: keyword.to_string(),
            }),
        );
    }

    /// A setting that only says what ctsync does anyway: a comment.
    fn same(&mut self, line: usize, keyword: &str, text: &str) {
        self.comment(&format!("line {line}: {keyword}: {text}"));
    }

    /// A setting with no equivalent: a comment, and a note for the daemon.
    fn note(&mut self, line: usize, keyword: &str, text: &str) {
        self.comment(&format!("line {line}: {keyword}: {text}"));
        self.notes.push(Note {
            line,
            text: format!("{keyword}: {text}"),
        });
    }
}

fn string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn num(n: u64) -> String {
    n.to_string()
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The node id ctsync needs and conntrackd has none of: this node's own
/// sync address as a number (IPv4: the address itself; IPv6: its four
/// 32-bit words XORed). The nodes of a cluster have different addresses on
/// the sync link, so they get different ids; 0 is not an id and becomes 1.
pub fn node_id_for(addr: IpAddr) -> u32 {
    let id = match addr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let b = u128::from(a);
            (0..4).fold(0u32, |acc, i| acc ^ ((b >> (32 * i)) as u32))
        }
    };
    id.max(1)
}

/// One link's ctsync view: this node's address, the peer or group, port.
struct LinkOut {
    local: At<IpAddr>,
    local_keyword: &'static str,
}

fn link_local(l: &Link, name: &str) -> Result<LinkOut, Refusal> {
    match l.kind {
        LinkKind::Udp => match &l.address {
            Some(a) => Ok(LinkOut {
                local: a.clone(),
                local_keyword: if a.value.is_ipv4() {
                    "IPv4_address"
                } else {
                    "IPv6_address"
                },
            }),
            None => Err(Refusal {
                line: l.line,
                message: format!(
                    "{name} needs IPv4_address or IPv6_address: the address this node receives on"
                ),
            }),
        },
        LinkKind::Multicast => match &l.interface_address {
            Some(a) => Ok(LinkOut {
                local: a.clone(),
                local_keyword: if a.value.is_ipv4() {
                    "IPv4_interface"
                } else {
                    "IPv6_interface"
                },
            }),
            None => Err(Refusal {
                line: l.line,
                message: format!(
                    "{name} needs IPv4_interface (IPv6_interface for an IPv6 group): ctsyncd binds \
                     each link to this node's own address on it, and conntrackd's kernel-chosen \
                     interface has no equivalent"
                ),
            }),
        },
    }
}

/// Write `s` as ctsync TOML. `origin` names the conntrackd.conf in the
/// header comment.
pub fn to_toml(s: &Settings, origin: &str) -> Result<Doc, Refusal> {
    let mut d = Doc::default();
    let sync_line = s.sync_line.unwrap_or(1);
    let general_line = s.general_line.unwrap_or(sync_line);
    if s.links.is_empty() {
        return Err(Refusal {
            line: sync_line,
            message: "Sync has no Multicast or UDP block: ctsyncd needs at least one link".into(),
        });
    }
    if s.links.len() > crate::config::MAX_LINKS {
        return Err(Refusal {
            line: s.links[crate::config::MAX_LINKS].line,
            message: format!(
                "at most {} links (conntrackd's limit too)",
                crate::config::MAX_LINKS
            ),
        });
    }
    // The Default link first: it starts as the active one in both daemons.
    let mut links: Vec<&Link> = s.links.iter().filter(|l| l.default).collect();
    if links.len() > 1 {
        return Err(Refusal {
            line: links[1].line,
            message: format!(
                "a second Default link (line {} is one already)",
                links[0].line
            ),
        });
    }
    links.extend(s.links.iter().filter(|l| !l.default));
    let Some(unix) = &s.unix_path else {
        return Err(Refusal {
            line: s.unix_line.unwrap_or(general_line),
            message: "General needs UNIX { Path /path }: the control socket, which conntrackd \
                      has no default for either"
                .into(),
        });
    };

    d.comment(&format!(
        "ctsyncd configuration converted from {origin} by `ctsyncd convert`. \
         \"line N\" below is that file's line. Every setting of it is either carried over \
         or explained in a comment; `ctsyncd -C {origin}` runs with exactly this configuration."
    ));
    d.blank();
    let first = links[0];
    let lo = link_local(first, link_name(first))?;
    let own = lo.local.value;
    if own.is_unspecified() || own.is_loopback() || own.is_multicast() {
        // conntrackd accepts 0.0.0.0 (bind to every address), but the node
        // id comes from this address: both nodes would get the same id and
        // drop each other's datagrams as their own.
        return Err(Refusal {
            line: lo.local.line,
            message: format!(
                "{} {own}: ctsyncd derives this node's id from its own sync address, so it must be \
                 the node's own unicast address on the sync link (with {own} every node would get \
                 the same id)",
                lo.local_keyword
            ),
        });
    }
    d.comment(&format!(
        "conntrackd has no node id and ctsyncd needs one, unique in the cluster: it is derived \
         from this node's own sync address ({} {} of the {} link, line {}), which differs \
         between the nodes of a cluster{}. Keep it unique if you change the addresses.",
        lo.local_keyword,
        lo.local.value,
        if first.default { "Default" } else { "first" },
        lo.local.line,
        if lo.local.value.is_ipv4() {
            " (the IPv4 address as a 32-bit number)"
        } else {
            " (the IPv6 address's four 32-bit words XORed)"
        }
    ));
    d.raw(
        format!("node_id = {}", node_id_for(lo.local.value)),
        Some(Origin {
            line: lo.local.line,
            keyword: lo.local_keyword.to_string(),
        }),
    );
    d.key(
        "socket",
        string(&unix.value),
        unix.line,
        "UNIX { Path }",
        "",
    );
    if let Some(b) = &s.unix_backlog {
        d.note(
            b.line,
            &format!("UNIX {{ Backlog {} }}", b.value),
            "ignored, as conntrackd 1.4.7 ignores it",
        );
    }

    sync_section(&mut d, s)?;
    for (i, l) in links.iter().enumerate() {
        link_section(&mut d, l, i)?;
    }
    kernel_section(&mut d, s);
    daemon_section(&mut d, s, general_line);
    filter_section(&mut d, s)?;
    compat_section(&mut d, s, unix);
    Ok(d)
}

fn link_name(l: &Link) -> &'static str {
    match (l.kind, l.default) {
        (LinkKind::Udp, true) => "UDP Default",
        (LinkKind::Udp, false) => "UDP",
        (LinkKind::Multicast, true) => "Multicast Default",
        (LinkKind::Multicast, false) => "Multicast",
    }
}

fn sync_section(d: &mut Doc, s: &Settings) -> Result<(), Refusal> {
    d.blank();
    d.raw("[sync]", None);
    let mode = s.mode.as_ref().map_or(Mode::Ftfw, |m| m.value);
    let name = match mode {
        Mode::Ftfw => "ftfw",
        Mode::Notrack => "notrack",
        Mode::Alarm => "alarm",
    };
    match &s.mode {
        Some(m) => {
            let why = s.mode_alias.clone().unwrap_or_default();
            d.key(
                "mode",
                string(name),
                m.line,
                &format!("Mode {}", name.to_ascii_uppercase()),
                &why,
            );
        }
        None => d.key(
            "mode",
            string(name),
            s.sync_line.unwrap_or(1),
            "Sync without Mode",
            "FTFW, conntrackd's default",
        ),
    }
    if let Some(a) = &s.ack_window_size {
        let (v, why) = if a.value > CTSYNC_WINDOW {
            (CTSYNC_WINDOW, format!("lowered to ctsync's window ({CTSYNC_WINDOW}): an acknowledgement is due at least once a window"))
        } else {
            (a.value, String::new())
        };
        d.key(
            "ack_every",
            num(v),
            a.line,
            &format!("ACKWindowSize {}", a.value),
            &why,
        );
    }
    if let Some(r) = &s.resend_queue_size {
        d.note(
            r.line,
            &format!("ResendQueueSize {}", r.value),
            "no equivalent: what waits for an acknowledgement is bounded by `window` (messages), \
             and a peer that falls further behind gets a bulk instead",
        );
    }
    if let Some(p) = &s.purge_timeout {
        d.key(
            "purge_timeout_s",
            num(p.value),
            p.line,
            &format!("PurgeTimeout {}", p.value),
            "",
        );
    }
    if let Some(b) = &s.disable_external_cache {
        if b.value {
            d.key(
                "warm_standby",
                "true".into(),
                b.line,
                "DisableExternalCache on",
                "peers' flows go into this node's kernel table as they arrive, as without an \
                 external cache in conntrackd; ctsyncd still keeps them cached, so `-e` and a \
                 commit that fills in what could not be written still work",
            );
        } else {
            d.same(b.line, "DisableExternalCache off", "the default");
        }
    }
    if let Some(b) = &s.disable_internal_cache {
        let kw = format!("DisableInternalCache {}", on_off(b.value));
        if b.value {
            d.note(
                b.line,
                &kw,
                "no equivalent: ctsyncd always keeps its internal cache (so `-R`, `-f` and bulks \
                 work, and `-f` never flushes the kernel table as conntrackd's bypass does)",
            );
        } else {
            d.same(b.line, &kw, "the default");
        }
    }
    if let Some(b) = &s.startup_resync {
        d.note(
            b.line,
            &format!("StartupResync {}", on_off(b.value)),
            "no setting needed: ctsyncd always asks its peers for their flows when it starts",
        );
    }
    if let Some(r) = &s.refresh_time {
        d.key(
            "alarm_refresh_s",
            num(r.value),
            r.line,
            &format!("RefreshTime {}", r.value),
            "",
        );
    }
    if let Some(c) = &s.cache_timeout {
        d.key(
            "alarm_timeout_s",
            num(c.value),
            c.line,
            &format!("CacheTimeout {}", c.value),
            "",
        );
    }
    if let Some(e) = &s.expectation_sync {
        let (value, keyword) = match &e.value {
            ExpectPolicy::Off => ("\"off\"".to_string(), "ExpectationSync off".to_string()),
            ExpectPolicy::All => ("\"all\"".to_string(), "ExpectationSync on".to_string()),
            ExpectPolicy::Helpers(names) => (
                format!(
                    "[{}]",
                    names
                        .iter()
                        .map(|n| string(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("ExpectationSync {{ {} }}", names.join(" ")),
            ),
        };
        d.key("expectations", value, e.line, &keyword, "");
    }
    if let Some(h) = &s.hash_limit {
        d.key(
            "max_flows_per_peer",
            num(h.value),
            h.line,
            &format!("HashLimit {}", h.value),
            "the most flows a cache holds, as in conntrackd",
        );
    }
    Ok(())
}

fn link_section(d: &mut Doc, l: &Link, i: usize) -> Result<(), Refusal> {
    let name = link_name(l);
    let lo = link_local(l, name)?;
    d.blank();
    d.comment(&format!(
        "line {}: {name}{}",
        l.line,
        if i == 0 {
            " (the active link at start)"
        } else {
            ""
        }
    ));
    d.raw(
        "[[link]]",
        Some(Origin {
            line: l.line,
            keyword: name.to_string(),
        }),
    );
    let transport = match l.kind {
        LinkKind::Udp => "udp",
        LinkKind::Multicast => "multicast",
    };
    d.raw(
        format!("transport = {}", string(transport)),
        Some(Origin {
            line: l.line,
            keyword: name.into(),
        }),
    );
    let Some(iface) = &l.interface else {
        return Err(Refusal {
            line: l.line,
            message: format!(
                "{name} needs Interface: conntrackd can't open the link without it either"
            ),
        });
    };
    d.key(
        "interface",
        string(&iface.value),
        iface.line,
        "Interface",
        "",
    );
    d.key(
        "local",
        string(&lo.local.value.to_string()),
        lo.local.line,
        lo.local_keyword,
        "",
    );
    match l.kind {
        LinkKind::Udp => {
            let Some(dst) = &l.destination else {
                return Err(Refusal {
                    line: l.line,
                    message: format!("{name} needs IPv4_Destination_Address or IPv6_Destination_Address: the other node"),
                });
            };
            let kw = if dst.value.is_ipv4() {
                "IPv4_Destination_Address"
            } else {
                "IPv6_Destination_Address"
            };
            d.key("peer", string(&dst.value.to_string()), dst.line, kw, "");
        }
        LinkKind::Multicast => {
            let Some(g) = &l.address else {
                return Err(Refusal {
                    line: l.line,
                    message: format!(
                        "{name} needs IPv4_address or IPv6_address: the multicast group"
                    ),
                });
            };
            let kw = if g.value.is_ipv4() {
                "IPv4_address"
            } else {
                "IPv6_address"
            };
            d.key("group", string(&g.value.to_string()), g.line, kw, "");
        }
    }
    let port_kw = if l.kind == LinkKind::Udp {
        "Port"
    } else {
        "Group"
    };
    let Some(port) = &l.port else {
        return Err(Refusal {
            line: l.line,
            message: format!("{name} needs {port_kw}: the UDP port (conntrackd would use port 0)"),
        });
    };
    d.key(
        "port",
        num(port.value),
        port.line,
        &format!("{port_kw} {}", port.value),
        "",
    );
    for (b, kw) in [
        (&l.snd_buffer, "SndSocketBuffer"),
        (&l.rcv_buffer, "RcvSocketBuffer"),
    ] {
        if let Some(b) = b {
            d.note(
                b.line,
                &format!("{kw} {}", b.value),
                "no setting needed: ctsyncd asks for 16 MiB send and receive buffers on every \
                 sync socket (with SO_*BUFFORCE, as conntrackd)",
            );
        }
    }
    if let Some(c) = &l.checksum {
        d.note(
            c.line,
            &format!("Checksum {}", on_off(c.value)),
            "no setting: ctsyncd's datagrams always carry the UDP checksum; [auth] adds \
             authentication",
        );
    }
    Ok(())
}

fn kernel_section(d: &mut Doc, s: &Settings) {
    d.blank();
    d.raw("[kernel]", None);
    // conntrackd sets NetlinkBufferSize only when it is at most
    // NetlinkBufferSizeMaxGrowth, which must be set too. A size larger than
    // the growth limit is ignored here as well; a size without a growth
    // limit (conntrackd's silent trap: the size is ignored and the buffer
    // never grows) is honoured, with a note, since it is plainly what the
    // operator meant. ctsync needs buffer <= max and 64 KiB..2 GiB.
    let clamp = |n: u64| n.clamp(MIN_NETLINK, MAX_NETLINK);
    let max = s.netlink_buffer_max.as_ref().map(|m| clamp(m.value));
    let mut buffer_written = None;
    if let Some(b) = &s.netlink_buffer {
        let kw = format!("NetlinkBufferSize {}", b.value);
        match max {
            Some(m) if b.value > s.netlink_buffer_max.as_ref().map_or(0, |x| x.value) => {
                d.note(
                    b.line,
                    &kw,
                    &format!("ignored, as conntrackd ignores a size larger than NetlinkBufferSizeMaxGrowth; the buffer starts at {}", CTSYNC_NETLINK.min(m)),
                );
            }
            _ => {
                let v = clamp(b.value);
                let why = if v != b.value {
                    format!("raised or lowered to ctsync's range {MIN_NETLINK}..={MAX_NETLINK}")
                } else if s.netlink_buffer_max.is_none() {
                    "conntrackd ignores it without NetlinkBufferSizeMaxGrowth; ctsyncd uses it"
                        .to_string()
                } else {
                    String::new()
                };
                d.key("netlink_buffer", num(v), b.line, &kw, &why);
                buffer_written = Some(v);
            }
        }
    }
    match (&s.netlink_buffer_max, max) {
        (Some(m), Some(v)) => {
            let why = if v != m.value {
                format!("raised or lowered to ctsync's range {MIN_NETLINK}..={MAX_NETLINK}")
            } else {
                String::new()
            };
            d.key(
                "netlink_buffer_max",
                num(v),
                m.line,
                &format!("NetlinkBufferSizeMaxGrowth {}", m.value),
                &why,
            );
            if buffer_written.is_none() && v < CTSYNC_NETLINK {
                d.key(
                    "netlink_buffer",
                    num(v),
                    m.line,
                    &format!("NetlinkBufferSizeMaxGrowth {}", m.value),
                    "the buffer starts at this most, since ctsync's default start is larger",
                );
            }
        }
        _ => {
            if let (Some(b), Some(v)) = (&s.netlink_buffer, buffer_written) {
                if v > CTSYNC_NETLINK_MAX {
                    d.key(
                        "netlink_buffer_max",
                        num(v),
                        b.line,
                        &format!("NetlinkBufferSize {}", b.value),
                        "the buffer may not grow past its start here (no NetlinkBufferSizeMaxGrowth)",
                    );
                }
            }
        }
    }
    if let Some(o) = &s.overrun_resync {
        let v = match o.value {
            Overrun::On => "on".to_string(),
            Overrun::Off => "off".to_string(),
            Overrun::Secs(n) => n.to_string(),
        };
        d.note(
            o.line,
            &format!("NetlinkOverrunResync {v}"),
            "no setting: after an overrun ctsyncd re-reads the kernel table at once and sends \
             peers what changed (it cannot be turned off: the peers would keep stale flows)",
        );
    }
    if let Some(r) = &s.events_reliable {
        d.note(
            r.line,
            &format!("NetlinkEventsReliable {}", on_off(r.value)),
            "no setting: ctsyncd detects lost events (overruns) and heals them with a table \
             re-read, and re-reads the table every reconcile_interval_s",
        );
    }
    if let Some(p) = &s.poll_secs {
        d.key(
            "reconcile_interval_s",
            num(p.value),
            p.line,
            &format!("PollSecs {}", p.value),
            "ctsyncd always listens for events too; it also re-reads the whole table this often, \
             as conntrackd's polling mode does",
        );
    }
    if let Some(e) = &s.event_iteration_limit {
        d.note(
            e.line,
            &format!("EventIterationLimit {}", e.value),
            "no setting: ctsyncd's event thread drains the socket in batches of its own",
        );
    }
    if let Some(t) = &s.tcp_window_tracking {
        d.key(
            "tcp_window_tracking",
            t.value.to_string(),
            t.line,
            &format!("TCPWindowTracking {}", on_off(t.value)),
            "",
        );
    }
    if let Some(c) = &s.commit_timeout {
        let kw = format!("CommitTimeout {}", c.value);
        if c.value == 0 {
            // conntrackd tests the value for non-zero: 0 is "not set".
            d.same(
                c.line,
                &kw,
                "0 means unset, as in conntrackd: the timeout the peer sent, aged",
            );
        } else if s.disable_external_cache.as_ref().is_some_and(|b| b.value) {
            d.note(
                c.line,
                &kw,
                "dropped, as conntrackd drops it with DisableExternalCache",
            );
        } else {
            d.key("commit_timeout", num(c.value), c.line, &kw, "");
        }
    }
}

fn daemon_section(d: &mut Doc, s: &Settings, general_line: usize) {
    d.blank();
    d.raw("[daemon]", None);
    match &s.lock_file {
        Some(l) => d.key(
            "lock",
            string(&l.value),
            l.line,
            "LockFile",
            "held with flock, so a crash never leaves it stale",
        ),
        None => d.key(
            "lock",
            string(DEFAULT_LOCK),
            general_line,
            "no LockFile",
            "conntrackd's default lock file",
        ),
    }
    if let Some(l) = &s.log_file {
        match &l.value {
            Some(p) => d.key("log_file", string(p), l.line, "LogFile", ""),
            None => d.same(l.line, "LogFile off", "the default"),
        }
    }
    if let Some(l) = &s.syslog {
        match &l.value {
            Some(f) => d.key("syslog", string(f), l.line, "Syslog", ""),
            None => d.same(l.line, "Syslog off", "the default"),
        }
    }
    if let Some(n) = &s.nice {
        d.key(
            "nice",
            n.value.to_string(),
            n.line,
            &format!("Nice {}", n.value),
            "conntrackd 1.4.7 ignores Nice; ctsyncd applies it",
        );
    }
    if let Some(b) = &s.scheduler {
        // conntrackd's defaults within a Scheduler block: RR, priority 99.
        let (policy, pline) = b
            .policy
            .as_ref()
            .map_or(("rr".to_string(), b.line), |p| (p.value.clone(), p.line));
        d.key(
            "scheduler",
            string(&policy),
            pline,
            "Scheduler { Type }",
            if b.policy.is_none() {
                "RR, conntrackd's default"
            } else {
                ""
            },
        );
        let (prio, line) = b
            .priority
            .as_ref()
            .map_or((99, b.line), |p| (p.value, p.line));
        let (v, why) = if prio == 0 {
            (
                1,
                "0 is no real-time priority (Linux refuses it for RR and FIFO): 1, the lowest",
            )
        } else if b.priority.is_none() {
            (prio, "99, conntrackd's default")
        } else {
            (prio, "")
        };
        d.key(
            "scheduler_priority",
            num(v),
            line,
            "Scheduler { Priority }",
            why,
        );
    }
    if let Some(sd) = &s.systemd {
        d.note(
            sd.line,
            &format!("Systemd {}", on_off(sd.value)),
            "no setting: ctsyncd notifies systemd when it runs under it (NOTIFY_SOCKET) and not otherwise",
        );
    }
    if let Some(h) = &s.hash_size {
        d.note(
            h.line,
            &format!("HashSize {}", h.value),
            "no setting: ctsyncd's caches size their hash tables themselves",
        );
    }
}

/// `Protocol` names as ctsync takes them: its own names, conntrackd's
/// VRRP and IGMP tokens, else /etc/protocols (conntrackd's getprotobyname).
fn protocol(name: &At<String>) -> Result<String, Refusal> {
    if crate::filter::protocol_by_name(&name.value).is_some() {
        return Ok(name.value.to_ascii_lowercase());
    }
    match name.value.as_str() {
        "VRRP" => return Ok("112".into()),
        "IGMP" => return Ok("2".into()),
        _ => {}
    }
    let table = std::fs::read_to_string("/etc/protocols").unwrap_or_default();
    for line in table.lines() {
        let mut f = line.split('#').next().unwrap_or("").split_whitespace();
        let (Some(n), Some(num)) = (f.next(), f.next()) else {
            continue;
        };
        let aliases: Vec<&str> = f.collect();
        if (n == name.value || aliases.contains(&name.value.as_str())) && num.parse::<u8>().is_ok()
        {
            return Ok(num.to_string());
        }
    }
    Err(Refusal {
        line: name.line,
        message: format!(
            "Protocol: '{}' is not a protocol name (conntrackd only warns and skips it; ctsyncd \
             refuses it so that the filter is what you meant: use TCP, UDP, SCTP, DCCP, ICMP, \
             IPv6-ICMP, GRE or a name from /etc/protocols)",
            name.value
        ),
    })
}

/// A Filter address with the bits past its prefix cleared (ctsync refuses
/// them; conntrackd matches the network).
fn network(text: &str) -> (String, bool) {
    let Some((a, bits)) = text.split_once('/') else {
        return (text.to_string(), false);
    };
    let (Ok(addr), Ok(bits)) = (a.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return (text.to_string(), false);
    };
    let masked = match addr {
        IpAddr::V4(v) => {
            let m = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits.min(32))
            };
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(v) & m))
        }
        IpAddr::V6(v) => {
            let m = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits.min(128))
            };
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(v) & m))
        }
    };
    (format!("{masked}/{bits}"), masked != addr)
}

fn rule_set(
    d: &mut Doc,
    key: &str,
    set: &RuleSet,
    name: &str,
    item: impl Fn(&At<String>) -> Result<(String, String), Refusal>,
) -> Result<(), Refusal> {
    let policy = if set.accept { "Accept" } else { "Ignore" };
    if set.items.is_empty() {
        if set.accept {
            return Err(Refusal {
                line: set.line,
                message: format!("{name} Accept {{ }} is empty: it would replicate nothing; remove it or list what to replicate"),
            });
        }
        d.note(
            set.line,
            &format!("{name} Ignore {{ }}"),
            "empty: ignores nothing",
        );
        return Ok(());
    }
    let origin = Some(Origin {
        line: set.line,
        keyword: format!("{name} {policy}"),
    });
    d.comment(&format!("line {}: {name} {policy}", set.line));
    d.raw(format!("[filter.{key}]"), origin.clone());
    d.raw(
        format!("policy = {}", string(&policy.to_ascii_lowercase())),
        origin.clone(),
    );
    d.raw("list = [", origin);
    for it in &set.items {
        let (v, why) = item(it)?;
        let tail = if why.is_empty() {
            format!("  # line {}", it.line)
        } else {
            format!("  # line {}: {why}", it.line)
        };
        d.raw(
            format!("  {},{tail}", string(&v)),
            Some(Origin {
                line: it.line,
                keyword: format!("{name} {}", it.value),
            }),
        );
    }
    d.raw("]", None);
    Ok(())
}

fn filter_section(d: &mut Doc, s: &Settings) -> Result<(), Refusal> {
    let f = &s.filter;
    d.blank();
    d.raw("[filter]", None);
    d.comment(
        "conntrackd users list the sync link's own addresses under Address Ignore; ctsyncd \
         never replicates flows of the links' addresses anyway (sync_addresses = \"ignore\").",
    );
    if let Some(k) = &f.kernelspace {
        if k.value {
            d.note(
                k.line,
                "Filter From Kernelspace",
                "ctsyncd filters in user space, with conntrackd's user-space rules: an \
                 Address set matches a flow's original source or reply source. conntrackd's \
                 kernel-space filter tests the original source and destination instead, so \
                 check that the Address set still selects the flows you mean",
            );
        } else {
            d.same(
                k.line,
                "Filter From Userspace",
                "ctsyncd always filters this way",
            );
        }
    }
    if let Some(set) = &f.protocol {
        rule_set(d, "protocol", set, "Protocol", |it| {
            Ok((protocol(it)?, String::new()))
        })?;
    }
    if let Some(set) = &f.address {
        rule_set(d, "address", set, "Address", |it| {
            let (v, changed) = network(&it.value);
            Ok((
                v,
                if changed {
                    "host bits cleared, as conntrackd matches the network".into()
                } else {
                    String::new()
                },
            ))
        })?;
    }
    if let Some(set) = &f.state {
        rule_set(d, "tcp_state", set, "State", |it| {
            Ok((it.value.clone(), String::new()))
        })?;
    }
    Ok(())
}

fn compat_section(d: &mut Doc, s: &Settings, unix: &At<String>) {
    d.blank();
    d.raw("[compat]", None);
    d.comment(
        "For Pacemaker's ocf:heartbeat:conntrackd agent (binary=ctsyncd, config=this file), \
         which reads the socket and the lock file out of the file itself.",
    );
    let lock = s
        .lock_file
        .as_ref()
        .map_or(DEFAULT_LOCK, |l| l.value.as_str());
    let origin = Some(Origin {
        line: unix.line,
        keyword: "UNIX { Path }".into(),
    });
    d.raw("conntrackd_ra_hint = '''", origin.clone());
    d.raw("UNIX {", origin.clone());
    d.raw(format!("\tPath {}", unix.value), origin.clone());
    d.raw("}", origin.clone());
    let lock_origin = s
        .lock_file
        .as_ref()
        .map(|l| Origin {
            line: l.line,
            keyword: "LockFile".into(),
        })
        .or(origin);
    d.raw(format!("LockFile {lock}"), lock_origin.clone());
    d.raw("'''", lock_origin);
}
