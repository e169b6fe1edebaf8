//! conntrackd's configuration grammar (conntrack-tools 1.4.7,
//! `read_config_yy.y`) read into [`Settings`]: every option of `General`
//! and `Sync` with the line it was written on.
//!
//! Owns: which keyword is allowed where, the form of each value (number,
//! boolean, path, address, facility), and the refusals that are about the
//! file's shape: malformed syntax, unknown and removed keywords, the `Stats`
//! and `Helper` sections, TCP links, expectation sync. Must not: decide what
//! a setting becomes in ctsync (that is `mapping`), or panic on any input.

use super::lexer::{Kind, Token};
use crate::expect::ExpectPolicy;
use std::net::IpAddr;

/// A refusal: the conntrackd.conf line and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub line: usize,
    pub message: String,
}

type R<T> = Result<T, Refusal>;

fn refuse<T>(line: usize, message: impl Into<String>) -> R<T> {
    Err(Refusal {
        line,
        message: message.into(),
    })
}

/// A value and the line it was written on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub line: usize,
}

/// `Mode X { }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ftfw,
    Notrack,
    Alarm,
}

/// `Multicast { }` or `UDP { }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Multicast,
    Udp,
}

/// `NetlinkOverrunResync on|off|<seconds>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overrun {
    On,
    Off,
    Secs(u64),
}

/// One `Multicast` or `UDP` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub line: usize,
    pub kind: LinkKind,
    pub default: bool,
    /// `IPv4_address` / `IPv6_address`: the group (Multicast) or this
    /// node's address (UDP).
    pub address: Option<At<IpAddr>>,
    /// `IPv4_Destination_Address` / `IPv6_Destination_Address` (UDP).
    pub destination: Option<At<IpAddr>>,
    /// `IPv4_interface` / `IPv6_interface` (Multicast): this node's address.
    pub interface_address: Option<At<IpAddr>>,
    /// `Interface`.
    pub interface: Option<At<String>>,
    /// `Group` (Multicast) or `Port` (UDP).
    pub port: Option<At<u64>>,
    pub snd_buffer: Option<At<u64>>,
    pub rcv_buffer: Option<At<u64>>,
    pub checksum: Option<At<bool>>,
}

/// One `Protocol`, `Address` or `State` set of a `Filter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub line: usize,
    pub accept: bool,
    pub items: Vec<At<String>>,
}

/// `Filter [From Userspace|Kernelspace] { }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The `Filter` line, if there is one.
    pub line: Option<usize>,
    /// `From Kernelspace` (true) or `From Userspace` (false), if written.
    pub kernelspace: Option<At<bool>>,
    pub protocol: Option<RuleSet>,
    pub address: Option<RuleSet>,
    pub state: Option<RuleSet>,
}

/// `Scheduler { Type; Priority }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerBlock {
    pub line: usize,
    /// "rr" or "fifo".
    pub policy: Option<At<String>>,
    pub priority: Option<At<u64>>,
}

/// Everything the file says, as written (later lines win over earlier
/// ones, as in conntrackd).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub general_line: Option<usize>,
    pub sync_line: Option<usize>,
    // General
    pub systemd: Option<At<bool>>,
    pub nice: Option<At<i64>>,
    pub hash_size: Option<At<u64>>,
    pub hash_limit: Option<At<u64>>,
    /// `LogFile`: None for off, the path for on (resolved) or a path.
    pub log_file: Option<At<Option<String>>>,
    /// `Syslog`: None for off, the facility (lower case) for on or a name.
    pub syslog: Option<At<Option<String>>>,
    pub lock_file: Option<At<String>>,
    pub unix_line: Option<usize>,
    pub unix_path: Option<At<String>>,
    pub unix_backlog: Option<At<u64>>,
    pub netlink_buffer: Option<At<u64>>,
    pub netlink_buffer_max: Option<At<u64>>,
    pub overrun_resync: Option<At<Overrun>>,
    pub events_reliable: Option<At<bool>>,
    pub poll_secs: Option<At<u64>>,
    pub event_iteration_limit: Option<At<u64>>,
    pub filter: Filter,
    pub scheduler: Option<SchedulerBlock>,
    // Sync
    pub mode: Option<At<Mode>>,
    /// The mode was written with an old name (`persistent`, `nack`).
    pub mode_alias: Option<String>,
    pub resend_queue_size: Option<At<u64>>,
    pub ack_window_size: Option<At<u64>>,
    pub disable_external_cache: Option<At<bool>>,
    pub disable_internal_cache: Option<At<bool>>,
    pub startup_resync: Option<At<bool>>,
    pub commit_timeout: Option<At<u64>>,
    pub purge_timeout: Option<At<u64>>,
    pub refresh_time: Option<At<u64>>,
    pub cache_timeout: Option<At<u64>>,
    pub tcp_window_tracking: Option<At<bool>>,
    /// `ExpectationSync on | off | { helper ... }`.
    pub expectation_sync: Option<At<ExpectPolicy>>,
    pub links: Vec<Link>,
}

/// Keywords conntrackd 1.4.5 removed (upstream commit f6ca216): a syntax
/// error in conntrackd 1.4.7 too.
const REMOVED: [&str; 14] = [
    "DelayDestroyMessages",
    "IgnoreProtocol",
    "IgnoreTrafficFor",
    "StripNAT",
    "RelaxTransitions",
    "ListenTo",
    "Family",
    "ResendBufferSize",
    "Replicate",
    "CacheWriteThrough",
    "LogFileBufferSize",
    "DestroyTimeout",
    "McastSndSocketBuffer",
    "McastRcvSocketBuffer",
];

/// conntrackd's TCP state names (`CLOSE` is its alias of `CLOSED`).
const TCP_STATES: [&str; 10] = [
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSED",
    "CLOSE",
    "LISTEN",
];

/// The longest path conntrackd takes (its UNIX socket path: 107).
const MAX_PATH: usize = 256;
const MAX_UNIX_PATH: usize = 107;

/// Why the `Stats` section is refused.
pub const STATS_REFUSED: &str = "the Stats section is refused: ctsyncd has no statistics mode \
     (it only synchronizes); for flow logging use `conntrack -E` or ulogd2, for counters \
     ctsyncd's metrics";
/// Why the `Helper` section is refused.
pub const HELPER_REFUSED: &str = "the Helper section is refused: ctsyncd runs no user-space \
     conntrack helpers (the kernel's own helpers are not affected); keep conntrackd for \
     helpers or use the kernel's";
/// Why `TCP` links are refused.
pub const TCP_REFUSED: &str = "TCP links are refused: ctsyncd has no TCP transport; use a UDP \
     block with the same addresses and port (with Mode FTFW it is reliable: sequence numbers, \
     acknowledgements and resends)";
/// Why an empty helper list is refused.
pub const EXPECTATION_EMPTY: &str = "ExpectationSync { }: name at least one helper (ftp, sip, \
     tftp, ...), or write `ExpectationSync off`";

/// Read a whole file's tokens.
pub fn parse(tokens: &[Token]) -> Result<Settings, Refusal> {
    let mut p = Parser {
        tokens,
        pos: 0,
        s: Settings::default(),
    };
    p.file()?;
    Ok(p.s)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    s: Settings,
}

fn is_on(w: &str) -> bool {
    w.eq_ignore_ascii_case("on") || w.eq_ignore_ascii_case("yes")
}

fn is_off(w: &str) -> bool {
    w.eq_ignore_ascii_case("off") || w.eq_ignore_ascii_case("no")
}

impl Parser<'_> {
    /// The line of the last token (for errors at the end of the file).
    fn last_line(&self) -> usize {
        self.tokens.last().map_or(1, |t| t.line)
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.pos);
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    /// The next token, which must be a word: `what` says what was expected.
    fn word(&mut self, what: &str) -> R<At<String>> {
        let end = self.last_line();
        match self.next() {
            Some(Token {
                kind: Kind::Word(w),
                line,
            }) => Ok(At {
                value: w.clone(),
                line: *line,
            }),
            Some(t) => refuse(
                t.line,
                format!("syntax error: {} where {what} was expected", t.show()),
            ),
            None => refuse(end, format!("unexpected end of file: {what} was expected")),
        }
    }

    fn open(&mut self, after: &str) -> R<usize> {
        let end = self.last_line();
        match self.next() {
            Some(Token {
                kind: Kind::Open,
                line,
            }) => Ok(*line),
            Some(t) => refuse(
                t.line,
                format!(
                    "syntax error: {} where '{{' was expected after {after}",
                    t.show()
                ),
            ),
            None => refuse(
                end,
                format!("unexpected end of file: '{{' was expected after {after}"),
            ),
        }
    }

    fn peek_open(&self) -> bool {
        matches!(
            self.peek(),
            Some(Token {
                kind: Kind::Open,
                ..
            })
        )
    }

    /// `{ ... }`: calls `item` for each keyword inside, until the `}`.
    fn block(&mut self, name: &str, mut item: impl FnMut(&mut Self, At<String>) -> R<()>) -> R<()> {
        let opened = self.open(name)?;
        loop {
            let end = self.last_line();
            let Some(t) = self.next() else {
                return refuse(
                    end,
                    format!("unexpected end of file: the '{name} {{' opened on line {opened} is not closed"),
                );
            };
            match &t.kind {
                Kind::Close => return Ok(()),
                Kind::Open => {
                    return refuse(
                        t.line,
                        format!("syntax error: unexpected '{{' inside {name}"),
                    )
                }
                Kind::Word(w) => {
                    let kw = At {
                        value: w.clone(),
                        line: t.line,
                    };
                    if REMOVED.contains(&kw.value.as_str()) {
                        return refuse(
                            kw.line,
                            format!(
                                "'{}' was removed in conntrackd 1.4.5 and is a syntax error there \
                                 too: delete the line",
                                kw.value
                            ),
                        );
                    }
                    item(self, kw)?;
                }
            }
        }
    }

    fn number(&mut self, kw: &str) -> R<At<u64>> {
        let w = self.word(&format!("a number after {kw}"))?;
        match w.value.parse::<u64>() {
            Ok(n) if w.value.bytes().all(|b| b.is_ascii_digit()) => Ok(At {
                value: n,
                line: w.line,
            }),
            _ => refuse(w.line, format!("{kw}: '{}' is not a number", w.value)),
        }
    }

    fn signed(&mut self, kw: &str) -> R<At<i64>> {
        let w = self.word(&format!("a number after {kw}"))?;
        let digits = w.value.strip_prefix(['+', '-']).unwrap_or(&w.value);
        match w.value.trim_start_matches('+').parse::<i64>() {
            Ok(n) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(At {
                value: n,
                line: w.line,
            }),
            _ => refuse(w.line, format!("{kw}: '{}' is not a number", w.value)),
        }
    }

    fn boolean(&mut self, kw: &str) -> R<At<bool>> {
        let w = self.word(&format!("on or off after {kw}"))?;
        if is_on(&w.value) {
            Ok(At {
                value: true,
                line: w.line,
            })
        } else if is_off(&w.value) {
            Ok(At {
                value: false,
                line: w.line,
            })
        } else {
            refuse(
                w.line,
                format!("{kw}: '{}' is not on, off, yes or no", w.value),
            )
        }
    }

    fn path(&mut self, kw: &str, max: usize) -> R<At<String>> {
        let w = self.word(&format!("a path after {kw}"))?;
        check_path(kw, &w, max)?;
        Ok(w)
    }

    fn address(&mut self, kw: &str, v6: bool) -> R<At<IpAddr>> {
        let w = self.word(&format!("an address after {kw}"))?;
        match w.value.parse::<IpAddr>() {
            Ok(a) if a.is_ipv6() == v6 => Ok(At {
                value: a,
                line: w.line,
            }),
            _ => refuse(
                w.line,
                format!(
                    "{kw}: '{}' is not an {} address",
                    w.value,
                    if v6 { "IPv6" } else { "IPv4" }
                ),
            ),
        }
    }

    fn file(&mut self) -> R<()> {
        while let Some(t) = self.next() {
            let line = t.line;
            let name = match &t.kind {
                Kind::Word(w) => w.clone(),
                _ => {
                    return refuse(
                        line,
                        format!(
                            "syntax error: {} outside a section (General, Sync)",
                            t.show()
                        ),
                    )
                }
            };
            match name.as_str() {
                "General" => {
                    self.s.general_line = Some(line);
                    self.block("General", Self::general)?;
                }
                "Sync" => {
                    self.s.sync_line = Some(line);
                    self.block("Sync", Self::sync)?;
                }
                "Stats" => return refuse(line, STATS_REFUSED),
                "Helper" => return refuse(line, HELPER_REFUSED),
                other => {
                    return refuse(
                        line,
                        format!("unknown section '{other}' (conntrackd has General, Sync, Stats and Helper)"),
                    )
                }
            }
        }
        if self.s.sync_line.is_none() {
            return refuse(
                self.s.general_line.unwrap_or(1),
                "no Sync section: conntrackd would run in statistics mode, which ctsyncd does not have",
            );
        }
        Ok(())
    }

    fn general(&mut self, kw: At<String>) -> R<()> {
        let k = kw.value.as_str();
        match k {
            "Systemd" => self.s.systemd = Some(self.boolean(k)?),
            "Nice" => self.s.nice = Some(self.signed(k)?),
            "HashSize" => self.s.hash_size = Some(self.number(k)?),
            "HashLimit" => self.s.hash_limit = Some(self.number(k)?),
            "LogFile" => {
                let w = self.word("on, off or a path after LogFile")?;
                let v = if is_on(&w.value) {
                    Some("/var/log/conntrackd.log".to_string())
                } else if is_off(&w.value) {
                    None
                } else {
                    check_path(k, &w, MAX_PATH)?;
                    Some(w.value.clone())
                };
                self.s.log_file = Some(At { value: v, line: w.line });
            }
            "Syslog" => {
                let w = self.word("on, off or a facility after Syslog")?;
                let v = if is_on(&w.value) {
                    Some("daemon".to_string())
                } else if is_off(&w.value) {
                    None
                } else {
                    let f = w.value.to_ascii_lowercase();
                    let known = f == "daemon"
                        || f == "user"
                        || (f.len() == 6 && f.starts_with("local") && matches!(f.as_bytes()[5], b'0'..=b'7'));
                    if !known {
                        return refuse(
                            w.line,
                            format!("Syslog: '{}' is not on, off or a facility (daemon, user, local0..local7)", w.value),
                        );
                    }
                    Some(f)
                };
                self.s.syslog = Some(At { value: v, line: w.line });
            }
            "LockFile" => self.s.lock_file = Some(self.path(k, MAX_PATH)?),
            "UNIX" => {
                self.s.unix_line = Some(kw.line);
                self.block("UNIX", |p, kw| match kw.value.as_str() {
                    "Path" => {
                        p.s.unix_path = Some(p.path("Path", MAX_UNIX_PATH)?);
                        Ok(())
                    }
                    "Backlog" => {
                        p.s.unix_backlog = Some(p.number("Backlog")?);
                        Ok(())
                    }
                    other => unknown(kw.line, other, "UNIX", "Path, Backlog"),
                })?;
            }
            "NetlinkBufferSize" | "SocketBufferSize" => {
                self.s.netlink_buffer = Some(self.number(k)?)
            }
            "NetlinkBufferSizeMaxGrowth" | "SocketBufferSizeMaxGrowth" | "SocketBufferSizeMaxGrown" => {
                self.s.netlink_buffer_max = Some(self.number(k)?)
            }
            "NetlinkOverrunResync" => {
                let w = self.word("on, off or seconds after NetlinkOverrunResync")?;
                let v = if is_on(&w.value) {
                    Overrun::On
                } else if is_off(&w.value) {
                    Overrun::Off
                } else {
                    match w.value.parse::<u64>() {
                        Ok(n) if w.value.bytes().all(|b| b.is_ascii_digit()) => Overrun::Secs(n),
                        _ => {
                            return refuse(
                                w.line,
                                format!("NetlinkOverrunResync: '{}' is not on, off or a number of seconds", w.value),
                            )
                        }
                    }
                };
                self.s.overrun_resync = Some(At { value: v, line: w.line });
            }
            "NetlinkEventsReliable" => self.s.events_reliable = Some(self.boolean(k)?),
            "PollSecs" => {
                let n = self.number(k)?;
                if n.value == 0 {
                    return refuse(n.line, "PollSecs 0 is invalid (conntrackd refuses it too)");
                }
                self.s.poll_secs = Some(n);
            }
            "EventIterationLimit" => self.s.event_iteration_limit = Some(self.number(k)?),
            "Filter" => self.filter(kw.line)?,
            "Scheduler" => {
                let mut b = SchedulerBlock {
                    line: kw.line,
                    policy: None,
                    priority: None,
                };
                self.block("Scheduler", |p, kw| match kw.value.as_str() {
                    "Type" => {
                        let w = p.word("RR or FIFO after Type")?;
                        let v = w.value.to_ascii_lowercase();
                        if v != "rr" && v != "fifo" {
                            return refuse(w.line, format!("Scheduler Type: '{}' is not RR or FIFO", w.value));
                        }
                        b.policy = Some(At { value: v, line: w.line });
                        Ok(())
                    }
                    "Priority" => {
                        let n = p.number("Priority")?;
                        if n.value > 99 {
                            return refuse(n.line, format!("Scheduler Priority: {} is out of range 0..=99", n.value));
                        }
                        b.priority = Some(n);
                        Ok(())
                    }
                    other => unknown(kw.line, other, "Scheduler", "Type, Priority"),
                })?;
                self.s.scheduler = Some(b);
            }
            "ErrorQueueLength" => {
                return refuse(kw.line, "ErrorQueueLength belongs to TCP links, which are refused: ctsyncd has no TCP transport")
            }
            other => {
                return unknown(
                kw.line,
                other,
                "General",
                "Systemd, Nice, HashSize, HashLimit, LogFile, Syslog, LockFile, UNIX, \
                 NetlinkBufferSize, NetlinkBufferSizeMaxGrowth, NetlinkOverrunResync, \
                 NetlinkEventsReliable, PollSecs, EventIterationLimit, Filter, Scheduler",
            )
            }
        }
        Ok(())
    }

    fn filter(&mut self, line: usize) -> R<()> {
        self.s.filter.line = Some(line);
        if let Some(Token {
            kind: Kind::Word(w),
            line,
        }) = self.peek()
        {
            let line = *line;
            if w != "From" {
                return refuse(
                    line,
                    format!("Filter: '{w}' where 'From' or '{{' was expected"),
                );
            }
            self.pos += 1;
            let w = self.word("Userspace or Kernelspace after From")?;
            let kernel = match w.value.as_str() {
                "Userspace" => false,
                "Kernelspace" => true,
                other => {
                    return refuse(
                        w.line,
                        format!("Filter From: '{other}' is not Userspace or Kernelspace"),
                    )
                }
            };
            self.s.filter.kernelspace = Some(At {
                value: kernel,
                line: w.line,
            });
        }
        self.block("Filter", |p, kw| {
            let set = match kw.value.as_str() {
                "Protocol" | "Address" | "State" => kw.value.clone(),
                other => return unknown(kw.line, other, "Filter", "Protocol, Address, State"),
            };
            let pol = p.word(&format!("Accept or Ignore after {set}"))?;
            let accept = match pol.value.as_str() {
                "Accept" => true,
                "Ignore" => false,
                other => {
                    return refuse(
                        pol.line,
                        format!("{set}: '{other}' is not Accept or Ignore"),
                    )
                }
            };
            let mut items: Vec<At<String>> = Vec::new();
            match set.as_str() {
                "Protocol" => p.block("Protocol", |_, w| {
                    items.push(w);
                    Ok(())
                })?,
                "Address" => p.block("Address", |p, w| {
                    let v6 = match w.value.as_str() {
                        "IPv4_address" => false,
                        "IPv6_address" => true,
                        other => {
                            return unknown(w.line, other, "Address", "IPv4_address, IPv6_address")
                        }
                    };
                    let a = p.word(&format!("an address after {}", w.value))?;
                    check_cidr(&w.value, &a, v6)?;
                    items.push(a);
                    Ok(())
                })?,
                _ => {
                    let mut after_for = false;
                    let mut done = false;
                    p.block("State", |_, w| {
                        if done {
                            return refuse(w.line, format!("State: '{}' after 'for TCP'", w.value));
                        }
                        if after_for {
                            if w.value != "TCP" {
                                return refuse(
                                    w.line,
                                    format!(
                                        "State: 'for {}': conntrackd filters states for TCP only",
                                        w.value
                                    ),
                                );
                            }
                            done = true;
                            return Ok(());
                        }
                        if w.value == "for" {
                            after_for = true;
                            return Ok(());
                        }
                        if !TCP_STATES.contains(&w.value.as_str()) {
                            return refuse(
                                w.line,
                                format!(
                                    "State: '{}' is not a TCP state ({})",
                                    w.value,
                                    TCP_STATES.join(" ")
                                ),
                            );
                        }
                        items.push(w);
                        Ok(())
                    })?;
                    if !done {
                        return refuse(kw.line, "State { ... } must end with 'for TCP'");
                    }
                }
            }
            let slot = match set.as_str() {
                "Protocol" => &mut p.s.filter.protocol,
                "Address" => &mut p.s.filter.address,
                _ => &mut p.s.filter.state,
            };
            match slot {
                Some(old) if old.accept != accept => refuse(
                    kw.line,
                    format!(
                        "{set}: Accept and Ignore can't be mixed (line {} has the other)",
                        old.line
                    ),
                ),
                Some(old) => {
                    old.items.extend(items);
                    Ok(())
                }
                None => {
                    *slot = Some(RuleSet {
                        line: kw.line,
                        accept,
                        items,
                    });
                    Ok(())
                }
            }
        })
    }

    fn sync(&mut self, kw: At<String>) -> R<()> {
        let k = kw.value.as_str();
        match k {
            "Mode" => {
                let w = self.word("FTFW, NOTRACK or ALARM after Mode")?;
                let lower = w.value.to_ascii_lowercase();
                let mode = match lower.as_str() {
                    "ftfw" => Mode::Ftfw,
                    "notrack" => Mode::Notrack,
                    "alarm" => Mode::Alarm,
                    "persistent" => {
                        self.s.mode_alias = Some(format!("'{}' is conntrackd's old name of ALARM", w.value));
                        Mode::Alarm
                    }
                    "nack" => {
                        self.s.mode_alias = Some(format!("'{}' is conntrackd's old name of FTFW", w.value));
                        Mode::Ftfw
                    }
                    _ => return refuse(w.line, format!("Mode: '{}' is not FTFW, NOTRACK or ALARM", w.value)),
                };
                self.s.mode = Some(At { value: mode, line: w.line });
                let name = format!("Mode {}", w.value);
                self.block(&name, |p, kw| p.mode_option(mode, kw))?;
            }
            "Multicast" | "UDP" => self.link(kw)?,
            "TCP" => return refuse(kw.line, TCP_REFUSED),
            "Options" => self.block("Options", |p, kw| match kw.value.as_str() {
                "TCPWindowTracking" => {
                    p.s.tcp_window_tracking = Some(p.boolean("TCPWindowTracking")?);
                    Ok(())
                }
                "ExpectationSync" => {
                    let value = if p.peek_open() {
                        let mut names = Vec::new();
                        p.block("ExpectationSync", |_, name| {
                            names.push(name.value);
                            Ok(())
                        })?;
                        if names.is_empty() {
                            return refuse(kw.line, EXPECTATION_EMPTY);
                        }
                        ExpectPolicy::Helpers(names)
                    } else if p.boolean("ExpectationSync")?.value {
                        ExpectPolicy::All
                    } else {
                        ExpectPolicy::Off
                    };
                    p.s.expectation_sync = Some(At {
                        value,
                        line: kw.line,
                    });
                    Ok(())
                }
                other => unknown(kw.line, other, "Options", "TCPWindowTracking, ExpectationSync"),
            })?,
            // The legacy placement of the timers, directly in Sync.
            "RefreshTime" => self.s.refresh_time = Some(self.number(k)?),
            "CacheTimeout" => self.s.cache_timeout = Some(self.number(k)?),
            "CommitTimeout" => self.s.commit_timeout = Some(self.number(k)?),
            "PurgeTimeout" => self.s.purge_timeout = Some(self.number(k)?),
            other => {
                return unknown(
                    kw.line,
                    other,
                    "Sync",
                    "Mode, Multicast, UDP, TCP, Options, RefreshTime, CacheTimeout, CommitTimeout, PurgeTimeout",
                )
            }
        }
        Ok(())
    }

    fn mode_option(&mut self, mode: Mode, kw: At<String>) -> R<()> {
        let k = kw.value.as_str();
        let allowed: &[&str] = match mode {
            Mode::Ftfw => &[
                "ResendQueueSize",
                "CommitTimeout",
                "PurgeTimeout",
                "ACKWindowSize",
                "DisableExternalCache",
                "StartupResync",
            ],
            Mode::Notrack => &[
                "CommitTimeout",
                "PurgeTimeout",
                "DisableInternalCache",
                "DisableExternalCache",
                "StartupResync",
            ],
            Mode::Alarm => &[
                "RefreshTime",
                "CacheTimeout",
                "CommitTimeout",
                "PurgeTimeout",
            ],
        };
        if !allowed.contains(&k) {
            let name = match mode {
                Mode::Ftfw => "Mode FTFW",
                Mode::Notrack => "Mode NOTRACK",
                Mode::Alarm => "Mode ALARM",
            };
            return unknown(kw.line, k, name, &allowed.join(", "));
        }
        match k {
            "ResendQueueSize" => self.s.resend_queue_size = Some(self.number(k)?),
            "ACKWindowSize" => self.s.ack_window_size = Some(self.number(k)?),
            "CommitTimeout" => self.s.commit_timeout = Some(self.number(k)?),
            "PurgeTimeout" => self.s.purge_timeout = Some(self.number(k)?),
            "RefreshTime" => self.s.refresh_time = Some(self.number(k)?),
            "CacheTimeout" => self.s.cache_timeout = Some(self.number(k)?),
            "DisableExternalCache" => self.s.disable_external_cache = Some(self.boolean(k)?),
            "DisableInternalCache" => self.s.disable_internal_cache = Some(self.boolean(k)?),
            _ => self.s.startup_resync = Some(self.boolean(k)?),
        }
        Ok(())
    }

    fn link(&mut self, kw: At<String>) -> R<()> {
        let kind = if kw.value == "UDP" {
            LinkKind::Udp
        } else {
            LinkKind::Multicast
        };
        let mut link = Link {
            line: kw.line,
            kind,
            default: false,
            address: None,
            destination: None,
            interface_address: None,
            interface: None,
            port: None,
            snd_buffer: None,
            rcv_buffer: None,
            checksum: None,
        };
        if let Some(Token {
            kind: Kind::Word(w),
            line,
        }) = self.peek()
        {
            if w != "Default" {
                return refuse(
                    *line,
                    format!("{}: '{w}' where 'Default' or '{{' was expected", kw.value),
                );
            }
            link.default = true;
            self.pos += 1;
        }
        let name = kw.value.clone();
        self.block(&name, |p, o| {
            let k = o.value.as_str();
            match (kind, k) {
                (_, "IPv4_address") => link.address = Some(p.address(k, false)?),
                (_, "IPv6_address") => link.address = Some(p.address(k, true)?),
                (LinkKind::Udp, "IPv4_Destination_Address") => {
                    link.destination = Some(p.address(k, false)?)
                }
                (LinkKind::Udp, "IPv6_Destination_Address") => {
                    link.destination = Some(p.address(k, true)?)
                }
                (LinkKind::Multicast, "IPv4_interface") => {
                    link.interface_address = Some(p.address(k, false)?)
                }
                (LinkKind::Multicast, "IPv6_interface") => {
                    link.interface_address = Some(p.address(k, true)?)
                }
                (_, "Interface") => {
                    let w = p.word("an interface name after Interface")?;
                    link.interface = Some(w);
                }
                (LinkKind::Multicast, "Group") | (LinkKind::Udp, "Port") => {
                    let n = p.number(k)?;
                    if n.value == 0 || n.value > 65535 {
                        return refuse(
                            n.line,
                            format!("{k}: {} is not a UDP port (1..=65535)", n.value),
                        );
                    }
                    link.port = Some(n);
                }
                (LinkKind::Multicast, "Port") => {
                    return refuse(
                        o.line,
                        "'Port' is not a Multicast option: Multicast takes its UDP port as 'Group'",
                    )
                }
                (LinkKind::Udp, "Group") => {
                    return refuse(
                        o.line,
                        "'Group' is not a UDP option: UDP takes its port as 'Port'",
                    )
                }
                (_, "SndSocketBuffer") => link.snd_buffer = Some(p.number(k)?),
                (_, "RcvSocketBuffer") => link.rcv_buffer = Some(p.number(k)?),
                (_, "Checksum") => link.checksum = Some(p.boolean(k)?),
                (LinkKind::Udp, other) => {
                    return unknown(
                        o.line,
                        other,
                        "UDP",
                        "IPv4_address, IPv6_address, IPv4_Destination_Address, \
                         IPv6_Destination_Address, Port, Interface, SndSocketBuffer, \
                         RcvSocketBuffer, Checksum",
                    )
                }
                (LinkKind::Multicast, other) => {
                    return unknown(
                        o.line,
                        other,
                        "Multicast",
                        "IPv4_address, IPv6_address, Group, IPv4_interface, IPv6_interface, \
                         Interface, SndSocketBuffer, RcvSocketBuffer, Checksum",
                    )
                }
            }
            Ok(())
        })?;
        self.s.links.push(link);
        Ok(())
    }
}

fn unknown<T>(line: usize, word: &str, block: &str, known: &str) -> R<T> {
    refuse(
        line,
        format!("unknown keyword '{word}' in {block} (conntrackd refuses it too; {block} takes {known})"),
    )
}

/// conntrackd's paths: absolute, no quotes, at most `max` bytes.
fn check_path(kw: &str, w: &At<String>, max: usize) -> R<()> {
    let p = &w.value;
    if !p.starts_with('/') {
        return refuse(w.line, format!("{kw}: '{p}' is not an absolute path"));
    }
    if p.contains(['"', '\'', '\\']) {
        return refuse(
            w.line,
            format!("{kw}: '{p}': a path may not contain quotes or backslashes"),
        );
    }
    if p.len() > max {
        return refuse(w.line, format!("{kw}: the path is longer than {max} bytes"));
    }
    Ok(())
}

/// A Filter address: `a.b.c.d[/bits]` under IPv4_address, `x::y[/bits]`
/// under IPv6_address.
fn check_cidr(kw: &str, w: &At<String>, v6: bool) -> R<()> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    let (addr, bits) = match w.value.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (w.value.as_str(), None),
    };
    let ok_addr = addr.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6() == v6);
    let max = if v6 { 128 } else { 32 };
    let ok_bits = bits.is_none_or(|b| {
        b.bytes().all(|c| c.is_ascii_digit()) && b.parse::<u32>().is_ok_and(|n| n <= max)
    });
    if ok_addr && ok_bits {
        Ok(())
    } else {
        refuse(
            w.line,
            format!(
                "{kw}: '{}' is not an {family} address or {family} network",
                w.value
            ),
        )
    }
}
