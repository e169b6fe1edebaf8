//! The failover lab: a client, a server, two stateful NAT firewalls (`fwa`,
//! `fwb`) and a switch, each a network namespace, wired and addressed as in
//! shared/reference/ha-failover.md §4.1–4.4 and §4.7; keepalived and a sync
//! daemon on the firewalls with the glue that joins them (conntrackd's own
//! primary-backup.sh, edited at run time, or our ctsync-notify.sh); failure
//! injection; and the snapshots the tests and the failover benchmark
//! compare (conntrack tables, nft counters, caches, VRRP events, timing of
//! the control commands). The daemon is ctsyncd (commit mode or warm
//! standby) or, as the benchmark's baseline, conntrackd 1.4.7 itself with a
//! conntrackd.conf equivalent to the ctsyncd one (`Mode::Conntrackd`).
//! `Options::helpers` swaps in the related-flows ruleset (the kernel's ftp,
//! tftp and sip helpers assigned by nftables, new LAN flows only to their
//! control ports) and `Options::expectation_sync` turns on expectation sync
//! in either daemon (integration/related_flows.rs).
//!
//! Owns: its namespaces (`ctf{pid}-{n}-*`, unique per lab), the processes
//! in them, and its temp directory; Drop kills those processes by pid and
//! deletes all of it, also when a test panics.
//! Must not: decide whether a failover survived (the tests do), touch
//! anything outside its own namespaces and directory, or use addresses
//! outside 198.18.0.0/15 and 2001:db8::/32.

#![allow(dead_code)]

pub mod traffic;
pub mod verdict;

use crate::lab::{ctsyncd_bin, has_tool, must, reap, run, wait_until};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// conntrackd's example script, taken from the Debian package at run time.
pub const PRIMARY_BACKUP_EXAMPLE: &str =
    "/usr/share/doc/conntrackd/examples/sync/primary-backup.sh";

pub const VIP4_LAN: &str = "198.18.1.1";
pub const VIP6_LAN: &str = "2001:db8:1::1";
pub const VIP4_WAN: &str = "198.19.0.1";
pub const VIP6_WAN: &str = "2001:db8:2::1";
pub const CLIENT4: &str = "198.18.1.10";
pub const CLIENT6: &str = "2001:db8:1::10";
pub const SERVER4: &str = "198.19.0.100";
pub const SERVER6: &str = "2001:db8:2::100";
/// `[sync] purge_timeout_s`: the kernel flush that `-t` schedules.
pub const PURGE_TIMEOUT_S: u64 = 3;

/// Debian's conntrackd, the baseline of `Mode::Conntrackd`.
pub const CONNTRACKD_BIN: &str = "/usr/sbin/conntrackd";

/// How the firewalls hand over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// conntrackd's primary-backup.sh drives ctsyncd; the new primary commits.
    Commit,
    /// `[sync] warm_standby = true`, driven by conf/keepalived/ctsync-notify.sh.
    WarmStandby,
    /// conntrackd 1.4.7 on both firewalls (FTFW over UDP on sync0), driven
    /// by the same primary-backup.sh with CONNTRACKD_BIN pointed at the real
    /// conntrackd: the baseline ctsyncd is measured against.
    Conntrackd,
}

impl Mode {
    /// The daemon's name, and the stem of its files in a firewall's directory.
    pub fn daemon(self) -> &'static str {
        match self {
            Mode::Commit | Mode::WarmStandby => "ctsyncd",
            Mode::Conntrackd => "conntrackd",
        }
    }

    /// The daemon's binary.
    pub fn bin(self) -> PathBuf {
        match self {
            Mode::Commit | Mode::WarmStandby => ctsyncd_bin(),
            Mode::Conntrackd => PathBuf::from(CONNTRACKD_BIN),
        }
    }
}

/// What kills the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// F1: SIGTERM to keepalived (priority-0 advert, VIPs removed).
    Graceful,
    /// F2: the switch-side ends of the LAN and WAN links go down.
    LinkLoss,
    /// F3: every process of the namespace stopped, links down, killed.
    Crash,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Graceful => "F1 graceful keepalived stop",
            Failure::LinkLoss => "F2 LAN and WAN link loss",
            Failure::Crash => "F3 crash",
        }
    }
}

/// One firewall.
pub struct Fw {
    /// "fwa" or "fwb".
    pub name: &'static str,
    pub idx: usize,
    /// Which daemon runs here (and so which client, config and files).
    pub mode: Mode,
    pub ns: String,
    pub dir: PathBuf,
    pub keepalived: Option<Child>,
    /// A ctsyncd the lab started in the foreground (ones started by the
    /// notify scripts with `-d` are found through `ip netns pids`).
    pub daemon: Option<Child>,
    /// Negative control: the script's CONNTRACKD_BIN.
    pub bin_override: Option<String>,
}

impl Fw {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The daemon's configuration file.
    pub fn config(&self) -> PathBuf {
        match self.mode {
            Mode::Commit | Mode::WarmStandby => self.path("ctsyncd.toml"),
            Mode::Conntrackd => self.path("conntrackd.conf"),
        }
    }

    /// The daemon's lock file (the scripts' CONNTRACKD_LOCK / CTSYNCD_LOCK).
    pub fn lock(&self) -> PathBuf {
        self.path(&format!("{}.lock", self.mode.daemon()))
    }

    /// The timing wrapper around the daemon's binary (what the scripts run).
    pub fn timed_bin(&self) -> PathBuf {
        self.path(&format!("{}-ts", self.mode.daemon()))
    }

    pub fn lan4(&self) -> String {
        format!("198.18.1.{}", 2 + self.idx)
    }
    pub fn lan6(&self) -> String {
        format!("2001:db8:1::{}", 2 + self.idx)
    }
    pub fn wan4(&self) -> String {
        format!("198.19.0.{}", 2 + self.idx)
    }
    pub fn wan6(&self) -> String {
        format!("2001:db8:2::{}", 2 + self.idx)
    }
    pub fn sync4(&self) -> String {
        format!("198.18.254.{}", 1 + self.idx)
    }

    /// The fixed, locally administered MAC of link `n` (1 LAN, 2 WAN, 3 sync).
    pub fn mac(&self, n: u8) -> String {
        format!("02:00:5e:fa:{:02x}:{n:02x}", self.idx + 1)
    }

    /// `ctsyncd -C <config> args...` (a client: it only talks to the
    /// socket); in conntrackd mode `conntrackd -C <config> args...`, run in
    /// the firewall's namespace as the scripts run it (its client parses
    /// the whole file, interface names included).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = match self.mode {
            Mode::Commit | Mode::WarmStandby => Command::new(ctsyncd_bin()),
            Mode::Conntrackd => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.ns, CONNTRACKD_BIN]);
                c
            }
        };
        cmd.arg("-C")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run the {} client: {e}", self.mode.daemon()))
    }

    /// A client command that must succeed; stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "{}: {} {args:?} failed: {}",
            self.name,
            self.mode.daemon(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// True when the daemon answers on this firewall's socket.
    pub fn daemon_answers(&self) -> bool {
        let out = self.ctl(&["-s"]);
        // conntrackd's client exits 0 on some failures: it must also have
        // printed its statistics.
        out.status.success()
            && (self.mode != Mode::Conntrackd
                || String::from_utf8_lossy(&out.stdout).contains("cache external:"))
    }

    /// `-e --json` (or `-i`): the cache as JSON flows; empty if it fails.
    /// conntrackd has no JSON: its `-e`/`-i` lines are read into the same
    /// shape (`orig` with `proto`, `src`, `dst`, `sport`, `dport`).
    pub fn cache(&self, flag: &str) -> Vec<Value> {
        if self.mode == Mode::Conntrackd {
            let out = self.ctl(&[flag]);
            if !out.status.success() {
                return Vec::new();
            }
            return parse_conntrackd_dump(&String::from_utf8_lossy(&out.stdout));
        }
        let out = self.ctl(&[flag, "--json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// `-s --json`, or Null. conntrackd's `-s` text gives only
    /// `internal.active` and `external.active`.
    pub fn stats(&self) -> Value {
        if self.mode == Mode::Conntrackd {
            let out = self.ctl(&["-s"]);
            return parse_conntrackd_stats(&String::from_utf8_lossy(&out.stdout));
        }
        let out = self.ctl(&["-s", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Flows in the `internal` or `external` cache, if the daemon answers.
    pub fn cache_active(&self, which: &str) -> Option<u64> {
        self.stats()[which]["active"].as_u64()
    }

    /// VRRP events (the `notify` script's log), oldest first.
    pub fn events(&self) -> Vec<Event> {
        read_lines(&self.path("vrrp-events.log"))
            .iter()
            .filter_map(|l| {
                let (ts, text) = l.split_once(' ')?;
                Some(Event {
                    wall: parse_wall(ts)?,
                    text: text.trim().to_string(),
                })
            })
            .collect()
    }

    /// The control commands the scripts ran, as the timing wrapper logged them.
    pub fn timing(&self) -> Vec<Timing> {
        read_lines(&self.path("ctl-timing.log"))
            .iter()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let wall = parse_wall(it.next()?)?;
                let what = it.next()?.to_string();
                let rest = it.next().unwrap_or("").to_string();
                Some(Timing { wall, what, rest })
            })
            .collect()
    }

    pub fn log_tail(&self, file: &str, lines: usize) -> String {
        let all = read_lines(&self.path(file));
        let start = all.len().saturating_sub(lines);
        format!(
            "\n--- {} {file} (last {lines} lines) ---\n{}",
            self.name,
            all[start..].join("\n")
        )
    }

    /// keepalived's log, the events, the timing log and the daemon log.
    pub fn diagnostics(&self) -> String {
        let mut s = self.log_tail("keepalived.log", 25);
        s.push_str(&self.log_tail("vrrp-events.log", 20));
        s.push_str(&self.log_tail("ctl-timing.log", 40));
        s.push_str(&self.log_tail("daemon.log", 30));
        // conntrackd's LogFile, which a converted ctsyncd config keeps, and
        // ctsyncd's `log_file`: the only log of a daemon the notify script
        // started with -d.
        for file in ["conntrackd.log", DAEMON_FILE_LOG] {
            if self.path(file).exists() {
                s.push_str(&self.log_tail(file, 30));
            }
        }
        s
    }
}

/// One line of the VRRP events log.
#[derive(Clone, Debug)]
pub struct Event {
    pub wall: SystemTime,
    /// e.g. "GROUP G1 MASTER 100".
    pub text: String,
}

/// One line of the timing wrapper's log: `start ARGS` or `end rc=N ARGS`.
#[derive(Clone, Debug)]
pub struct Timing {
    pub wall: SystemTime,
    /// "start" or "end".
    pub what: String,
    /// For "start": the arguments; for "end": "rc=N ARGS".
    pub rest: String,
}

impl Timing {
    /// The ctsyncd flag this line is about (`-c`, `-t`, ...): the word after `-C FILE`.
    pub fn flag(&self) -> Option<&str> {
        let words: Vec<&str> = self.rest.split_whitespace().collect();
        let i = words.iter().position(|w| *w == "-C")?;
        words.get(i + 2).copied()
    }

    pub fn rc(&self) -> Option<i32> {
        self.rest
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rc="))
            .and_then(|r| r.parse().ok())
    }
}

/// conntrackd's `-e`/`-i` dump (one flow per line, conntrack's plain
/// layout) as JSON flows of ctsyncd's shape, original tuple only; lines
/// without ports are skipped.
pub fn parse_conntrackd_dump(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let proto = *tokens.first()?;
            let first = |key: &str| tokens.iter().find_map(|t| t.strip_prefix(key));
            let port = |key: &str| first(key).and_then(|p| p.parse::<u16>().ok());
            Some(serde_json::json!({
                "orig": {
                    "proto": proto,
                    "src": first("src=")?,
                    "dst": first("dst=")?,
                    "sport": port("sport=")?,
                    "dport": port("dport=")?,
                }
            }))
        })
        .collect()
}

/// conntrackd's `-s` text as `{"internal": {"active": N}, "external":
/// {"active": N}}` (a cache missing from the text is left out); Null when
/// neither is there.
pub fn parse_conntrackd_stats(text: &str) -> Value {
    let mut out = serde_json::Map::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(cache) = line
            .trim()
            .strip_prefix("cache ")
            .and_then(|c| c.strip_suffix(':'))
        else {
            continue;
        };
        let active = lines
            .next()
            .filter(|l| l.starts_with("current active connections:"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|n| n.trim().parse::<u64>().ok());
        if let Some(n) = active {
            out.insert(cache.to_string(), serde_json::json!({ "active": n }));
        }
    }
    if out.is_empty() {
        Value::Null
    } else {
        Value::Object(out)
    }
}

fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn parse_wall(ts: &str) -> Option<SystemTime> {
    let secs: f64 = ts.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// A conntrack entry as `conntrack -L` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub proto: String,
    /// TCP state, if any.
    pub state: Option<String>,
    pub orig: (IpAddr, u16, IpAddr, u16),
    pub reply: (IpAddr, u16, IpAddr, u16),
    pub assured: bool,
    pub line: String,
}

/// Parse `conntrack -L` output (both families); lines without ports or
/// with unparsable fields are skipped.
pub fn parse_conntrack(text: &str) -> Vec<CtEntry> {
    text.lines()
        .filter_map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let proto = tokens.first()?.to_string();
            let val = |key: &str, n: usize| -> Option<&str> {
                tokens.iter().filter_map(|t| t.strip_prefix(key)).nth(n)
            };
            let tuple = |n: usize| -> Option<(IpAddr, u16, IpAddr, u16)> {
                Some((
                    val("src=", n)?.parse().ok()?,
                    val("sport=", n)?.parse().ok()?,
                    val("dst=", n)?.parse().ok()?,
                    val("dport=", n)?.parse().ok()?,
                ))
            };
            let first_kv = tokens.iter().position(|t| t.contains('='))?;
            let state = tokens[..first_kv]
                .iter()
                .skip(2)
                .find(|t| t.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                .map(|s| s.to_string());
            Some(CtEntry {
                proto,
                state,
                orig: tuple(0)?,
                reply: tuple(1)?,
                assured: tokens.contains(&"[ASSURED]"),
                line: line.to_string(),
            })
        })
        .collect()
}

/// What can vary between labs besides the mode.
#[derive(Clone, Debug)]
pub struct Options {
    /// Negative control: fwb's CONNTRACKD_BIN (or CTSYNCD_BIN).
    pub fwb_bin: Option<String>,
    /// keepalived's advert_int, seconds (1 here; 3 in conntrackd's example).
    pub advert_int: u32,
    /// ctsyncd's `[kernel] reconcile_interval_s`: how often a primary
    /// re-reads its table and sends the flows whose timeouts traffic
    /// refreshed (which the commit order uses).
    pub reconcile_interval_s: u32,
    /// Flows each daemon must be able to hold (conntrackd's HashSize and
    /// HashLimit are sized for it; ctsyncd's caches need no size).
    pub capacity: usize,
    /// ctsyncd: a key file line (`<id> <base64>`); both firewalls get it
    /// (mode 0600) and `[auth] key_file`, so every sync datagram is sealed.
    pub sync_key: Option<String>,
    /// The forward ruleset: the lab's own, or the related-flows one with or
    /// without its `ct helper` assignments.
    pub helpers: Helpers,
    /// The daemons replicate expectations: conntrackd's `Sync { Options {
    /// ExpectationSync on } }`, ctsyncd's `[sync] expectations = "all"`.
    pub expectation_sync: bool,
}

/// Which ruleset the firewalls load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helpers {
    /// `RULESET`: any new flow from the LAN is accepted.
    Off,
    /// `related_ruleset(true)`: new LAN flows only to the control ports
    /// (tcp/21, udp/69, udp/5060), each assigned its kernel helper (ftp,
    /// tftp, sip) by an nftables `ct helper` object; anything else must be
    /// established or RELATED.
    Assigned,
    /// `related_ruleset(false)`: the same filter without the `ct helper`
    /// assignments (the sanity control: no helper, no expectation).
    Unassigned,
}

/// The kernel modules the related-flows ruleset needs (built in on some
/// kernels: a failed modprobe is not an error, a missing helper makes nft
/// refuse the ruleset).
pub const HELPER_MODULES: [&str; 6] = [
    "nf_conntrack_ftp",
    "nf_nat_ftp",
    "nf_conntrack_tftp",
    "nf_nat_tftp",
    "nf_conntrack_sip",
    "nf_nat_sip",
];

impl Default for Options {
    fn default() -> Self {
        Options {
            fwb_bin: None,
            advert_int: 1,
            reconcile_interval_s: 5,
            capacity: 0,
            sync_key: None,
            helpers: Helpers::Off,
            expectation_sync: false,
        }
    }
}

/// ctsyncd's `[daemon] log_file` in a firewall's directory: a daemon the
/// notify script starts with -d logs nowhere else.
const DAEMON_FILE_LOG: &str = "ctsyncd.log";

/// The lab.
pub struct FailoverLab {
    pub id: String,
    pub dir: PathBuf,
    pub mode: Mode,
    pub opts: Options,
    /// Keep the lab's files after Drop (a test found something to look at).
    pub keep: bool,
    pub cl: String,
    pub sv: String,
    pub sw: String,
    pub a: Fw,
    pub b: Fw,
}

/// Panic unless the tools the lab drives are installed.
fn require_tools(mode: Mode) {
    for tool in ["keepalived", "conntrack", "nft", "ip", "sysctl", "flock"] {
        assert!(
            has_tool(tool),
            "the failover lab needs `{tool}`; install it with: apt-get install -y --no-install-recommends keepalived conntrackd conntrack nftables iproute2 procps util-linux"
        );
    }
    if matches!(mode, Mode::Commit | Mode::Conntrackd) {
        assert!(
            Path::new(PRIMARY_BACKUP_EXAMPLE).is_file(),
            "{mode:?} mode needs conntrackd's {PRIMARY_BACKUP_EXAMPLE} (apt-get install conntrackd; images that drop /usr/share/doc lack it)"
        );
    }
    if mode == Mode::Conntrackd {
        assert!(
            Path::new(CONNTRACKD_BIN).is_file(),
            "conntrackd mode needs {CONNTRACKD_BIN} (apt-get install conntrackd)"
        );
    }
}

/// The nft ruleset of ha-failover.md §4.4, one statement per line.
pub const RULESET: &str = r#"table inet fw {
    counter in_invalid { }
    counter in_drop { }
    counter fwd_invalid { }
    counter fwd_new_wan { }
    counter fwd_rst { }
    counter fwd_drop { }
    counter out_rst { }

    chain raw_pre {
        type filter hook prerouting priority raw; policy accept;
        iifname "sync0" notrack
        ip protocol vrrp notrack
    }

    chain raw_out {
        type filter hook output priority raw; policy accept;
        oifname "sync0" notrack
        ip protocol vrrp notrack
    }

    chain input {
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state invalid counter name "in_invalid" drop
        ct state established,related accept
        iifname "sync0" accept
        ip protocol vrrp accept
        meta l4proto ipv6-icmp accept
        meta l4proto icmp accept
        counter name "in_drop" drop
    }

    chain forward {
        type filter hook forward priority filter; policy drop;
        tcp flags & rst == rst counter name "fwd_rst"
        ct state invalid counter name "fwd_invalid" drop
        ct state established,related accept
        iifname "lan0" oifname "wan0" tcp flags & (fin|syn|rst|ack) == syn ct state new accept
        iifname "lan0" oifname "wan0" meta l4proto { udp, icmp, ipv6-icmp } ct state new accept
        iifname "wan0" ct state new counter name "fwd_new_wan" drop
        counter name "fwd_drop" drop
    }

    chain output {
        type filter hook output priority filter; policy accept;
        tcp flags & rst == rst counter name "out_rst"
    }

    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" ip saddr 198.18.1.0/24 snat ip to 198.19.0.1 fully-random
        oifname "wan0" ip6 saddr 2001:db8:1::/64 snat ip6 to 2001:db8:2::1 fully-random
    }
}
"#;

/// The related-flows ruleset: `RULESET`'s input, output and NAT chains, a
/// forward chain that accepts new flows from the LAN only to the control
/// ports (so a data connection the firewall does not expect is dropped:
/// `fwd_new_lan` when it comes from the LAN, `in_drop` when it comes from
/// the WAN to the SNAT address), a `fwd_related` counter for the first
/// packets of expected flows, and with `assign` the `ct helper` objects
/// that attach the kernel's ftp, tftp and sip helpers to the control flows.
pub fn related_ruleset(assign: bool) -> String {
    let helpers = if assign {
        r#"
    ct helper ftp-21 {
        type "ftp" protocol tcp
        l3proto inet
    }
    ct helper tftp-69 {
        type "tftp" protocol udp
        l3proto inet
    }
    ct helper sip-5060 {
        type "sip" protocol udp
        l3proto inet
    }

    chain helpers {
        type filter hook prerouting priority filter; policy accept;
        iifname "lan0" tcp dport 21 ct state new ct helper set "ftp-21"
        iifname "lan0" udp dport 69 ct state new ct helper set "tftp-69"
        iifname "lan0" udp dport 5060 ct state new ct helper set "sip-5060"
    }
"#
    } else {
        ""
    };
    let forward = r#"    chain forward {
        type filter hook forward priority filter; policy drop;
        tcp flags & rst == rst counter name "fwd_rst"
        ct state invalid counter name "fwd_invalid" drop
        ct state related counter name "fwd_related" accept
        ct state established accept
        iifname "lan0" oifname "wan0" tcp dport 21 tcp flags & (fin|syn|rst|ack) == syn ct state new accept
        iifname "lan0" oifname "wan0" udp dport { 69, 5060 } ct state new accept
        iifname "lan0" oifname "wan0" meta l4proto { icmp, ipv6-icmp } ct state new accept
        iifname "lan0" ct state new counter name "fwd_new_lan" drop
        iifname "wan0" ct state new counter name "fwd_new_wan" drop
        counter name "fwd_drop" drop
    }
"#;
    let start = RULESET
        .find("    chain forward {")
        .expect("RULESET has a forward chain");
    let end = start
        + RULESET[start..]
            .find("    }\n")
            .expect("the forward chain ends")
        + "    }\n".len();
    let counters = "    counter fwd_related { }\n    counter fwd_new_lan { }\n";
    let head = RULESET[..start].replacen(
        "    counter out_rst { }\n",
        &format!("    counter out_rst {{ }}\n{counters}{helpers}"),
        1,
    );
    format!("{head}{forward}{}", &RULESET[end..])
}

fn sysctl(ns: &str, key: &str, value: &str) {
    must(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            &format!("{key}={value}"),
        ],
    );
}

fn ipn(ns: &str, args: &[&str]) {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    must("ip", &all);
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Pids of the processes in namespace `ns` (never our own).
pub fn netns_pids(ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    String::from_utf8_lossy(&run("ip", &["netns", "pids", ns]).stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != me && p > 1)
        .collect()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid taken from our own namespace's process list.
    unsafe { libc::kill(pid, sig) };
}

impl FailoverLab {
    /// Build everything up to (not including) daemons and keepalived.
    pub fn new(mode: Mode, opts: Options) -> FailoverLab {
        require_tools(mode);
        for module in ["nf_conntrack", "nf_nat", "br_netfilter"] {
            let _ = Command::new("modprobe").arg(module).output();
        }
        if opts.helpers != Helpers::Off {
            for module in HELPER_MODULES {
                let _ = Command::new("modprobe").arg(module).output();
            }
        }
        let id = format!(
            "ctf{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        let fw = |name: &'static str, idx: usize| Fw {
            name,
            idx,
            mode,
            ns: format!("{id}-{name}"),
            dir: dir.join(name),
            keepalived: None,
            daemon: None,
            bin_override: None,
        };
        let mut lab = FailoverLab {
            cl: format!("{id}-cl"),
            sv: format!("{id}-sv"),
            sw: format!("{id}-sw"),
            a: fw("fwa", 0),
            b: fw("fwb", 1),
            id,
            dir,
            mode,
            opts,
            keep: false,
        };
        lab.b.bin_override = lab.opts.fwb_bin.clone();
        for f in [&lab.a, &lab.b] {
            std::fs::create_dir_all(&f.dir).expect("create the lab directory");
        }
        lab.build();
        lab
    }

    fn build(&self) {
        // The switch: two bridges, no rules, bridged traffic not sent to
        // netfilter.
        for ns in [&self.sw, &self.cl, &self.sv] {
            must("ip", &["netns", "add", ns]);
            ipn(ns, &["link", "set", "lo", "up"]);
        }
        for key in [
            "net.bridge.bridge-nf-call-iptables",
            "net.bridge.bridge-nf-call-ip6tables",
            "net.bridge.bridge-nf-call-arptables",
        ] {
            sysctl(&self.sw, key, "0");
        }
        for br in ["br-lan", "br-wan"] {
            ipn(
                &self.sw,
                &["link", "add", br, "type", "bridge", "mcast_snooping", "0"],
            );
            ipn(&self.sw, &["link", "set", br, "up"]);
        }
        // Client and server.
        for (ns, port, br, v4, v6) in [
            (&self.cl, "lan-cl", "br-lan", CLIENT4, CLIENT6),
            (&self.sv, "wan-sv", "br-wan", SERVER4, SERVER6),
        ] {
            sysctl(ns, "net.ipv6.conf.all.accept_dad", "0");
            sysctl(ns, "net.ipv6.conf.default.accept_dad", "0");
            self.veth_to_switch(ns, "eth0", None, port, br);
            ipn(ns, &["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ipn(
                ns,
                &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"],
            );
            ipn(ns, &["link", "set", "eth0", "up"]);
        }
        ipn(&self.cl, &["route", "add", "default", "via", VIP4_LAN]);
        ipn(
            &self.cl,
            &["-6", "route", "add", "default", "via", VIP6_LAN],
        );
        // The firewalls and their direct sync link.
        self.build_fw(&self.a);
        self.build_fw(&self.b);
        must(
            "ip",
            &[
                "link",
                "add",
                "sync0",
                "netns",
                &self.a.ns,
                "address",
                &self.a.mac(3),
                "type",
                "veth",
                "peer",
                "name",
                "sync0",
                "netns",
                &self.b.ns,
                "address",
                &self.b.mac(3),
            ],
        );
        self.setup_sync(&self.a);
        self.setup_sync(&self.b);
        self.write_glue(&self.a);
        self.write_glue(&self.b);
    }

    /// `dev` in `ns` (with MAC `mac`, if given), its peer `port` in the
    /// switch on bridge `br`.
    fn veth_to_switch(&self, ns: &str, dev: &str, mac: Option<&str>, port: &str, br: &str) {
        let mut args = vec!["link", "add", dev, "netns", ns];
        if let Some(mac) = mac {
            args.extend(["address", mac]);
        }
        args.extend(["type", "veth", "peer", "name", port, "netns", &self.sw]);
        must("ip", &args);
        ipn(&self.sw, &["link", "set", port, "master", br]);
        ipn(&self.sw, &["link", "set", port, "up"]);
    }

    /// A firewall's namespace: sysctls, LAN and WAN links, addresses, the
    /// ruleset, then conntrack's sysctls (they exist once it is in use).
    fn build_fw(&self, fw: &Fw) {
        let ns = fw.ns.as_str();
        must("ip", &["netns", "add", ns]);
        ipn(ns, &["link", "set", "lo", "up"]);
        sysctl(ns, "net.ipv4.ip_forward", "1");
        sysctl(ns, "net.ipv6.conf.all.forwarding", "1");
        for scope in ["all", "default"] {
            sysctl(ns, &format!("net.ipv4.conf.{scope}.rp_filter"), "0");
            sysctl(ns, &format!("net.ipv6.conf.{scope}.accept_dad"), "0");
        }
        let x = fw.name;
        // Fixed MACs: a rebuilt ("rebooted") firewall keeps its NICs' addresses.
        self.veth_to_switch(ns, "lan0", Some(&fw.mac(1)), &format!("lan-{x}"), "br-lan");
        self.veth_to_switch(ns, "wan0", Some(&fw.mac(2)), &format!("wan-{x}"), "br-wan");
        for (dev, v4, v6) in [
            ("lan0", fw.lan4(), fw.lan6()),
            ("wan0", fw.wan4(), fw.wan6()),
        ] {
            sysctl(ns, &format!("net.ipv4.conf.{dev}.rp_filter"), "0");
            ipn(ns, &["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ipn(
                ns,
                &["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"],
            );
            ipn(ns, &["link", "set", dev, "up"]);
        }
        let rules = fw.path("fw.nft");
        let ruleset = match self.opts.helpers {
            Helpers::Off => RULESET.to_string(),
            Helpers::Assigned => related_ruleset(true),
            Helpers::Unassigned => related_ruleset(false),
        };
        std::fs::write(&rules, ruleset).expect("write the ruleset");
        must("ip", &["netns", "exec", ns, "nft", "-f", path_str(&rules)]);
        sysctl(ns, "net.netfilter.nf_conntrack_tcp_be_liberal", "0");
        sysctl(ns, "net.netfilter.nf_conntrack_tcp_loose", "0");
    }

    fn setup_sync(&self, fw: &Fw) {
        sysctl(&fw.ns, "net.ipv4.conf.sync0.rp_filter", "0");
        ipn(
            &fw.ns,
            &["addr", "add", &format!("{}/30", fw.sync4()), "dev", "sync0"],
        );
        ipn(&fw.ns, &["link", "set", "sync0", "up"]);
    }

    pub fn fw(&self, idx: usize) -> &Fw {
        if idx == 0 {
            &self.a
        } else {
            &self.b
        }
    }

    fn fw_mut(&mut self, idx: usize) -> &mut Fw {
        if idx == 0 {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// ctsyncd's configuration for `fw` (ha-failover.md §4.5).
    fn ctsyncd_config(&self, fw: &Fw, peer: &Fw) -> String {
        format!(
            r#"# failover lab, {name}
node_id = {node}
socket = "{socket}"

[sync]
mode = "ftfw"
purge_timeout_s = {purge}
warm_standby = {warm}
{expectations}
[kernel]
reconcile_interval_s = {reconcile}

[daemon]
lock = "{lock}"
pid_file = "{pid}"
log_level = "info"
log_file = "{log_file}"

[filter]
protocol = {{ policy = "accept", list = ["tcp", "udp", "icmp", "icmpv6"] }}
address = {{ policy = "ignore", list = ["127.0.0.1", "::1", "{v4l}", "{v4w}", "{v6l}", "{v6w}"] }}

{auth}
[[link]]
transport = "udp"
interface = "sync0"
local = "{local}"
peer = "{remote}"
port = 3780
"#,
            expectations = if self.opts.expectation_sync {
                "expectations = \"all\"\n"
            } else {
                ""
            },
            auth = match self.opts.sync_key {
                Some(_) => format!(
                    "[auth]\nkey_file = \"{}\"\ncluster = \"failover-lab\"\n",
                    fw.path("sync.keys").display()
                ),
                None => String::new(),
            },
            name = fw.name,
            node = fw.idx + 1,
            socket = fw.path("ctsyncd.sock").display(),
            purge = PURGE_TIMEOUT_S,
            warm = self.mode == Mode::WarmStandby,
            reconcile = self.opts.reconcile_interval_s,
            lock = fw.lock().display(),
            pid = fw.path("ctsyncd.pid").display(),
            log_file = fw.path(DAEMON_FILE_LOG).display(),
            v4l = VIP4_LAN,
            v4w = VIP4_WAN,
            v6l = VIP6_LAN,
            v6w = VIP6_WAN,
            local = fw.sync4(),
            remote = peer.sync4(),
        )
    }

    /// conntrackd.conf for `fw`, equivalent to the ctsyncd configuration:
    /// FTFW over UDP on sync0 between the sync addresses, the same filter
    /// (TCP, UDP, ICMP and IPv6-ICMP; loopback, the virtual addresses and
    /// the sync addresses ignored, tested on the original and reply
    /// sources as ctsyncd does), the same PurgeTimeout, no CommitTimeout,
    /// socket, lock and log in the firewall's directory, netlink buffers as
    /// the benchmark gives ctsyncd (8 MiB, growing to 64 MiB), and caches
    /// sized for `Options::capacity` (HashLimit twice that, as conntrackd's
    /// manual asks, since dead entries awaiting acknowledgement count), and
    /// a resend queue that holds a whole bulk of that many flows; with
    /// `Options::expectation_sync`, `Options { ExpectationSync on }`.
    fn conntrackd_config(&self, fw: &Fw, peer: &Fw) -> String {
        let capacity = self.opts.capacity as u64;
        let hash_size = capacity.next_power_of_two().clamp(65_536, 4_194_304);
        let hash_limit = (2 * capacity + 65_536).max(262_144);
        // FTFW can repair a loss only from what its resend queue still
        // holds: a bulk of N flows must fit in it, or a resync that loses
        // datagrams on the way loses flows for good (measured: with the
        // default 131,072, fwb got 58% of a 1,000,000-flow table).
        let resend_queue = (capacity + capacity / 4).max(131_072);
        // The sync socket buffers: Debian's example value, raised for a
        // large table so that a bulk of N flows (~100 bytes each on the
        // wire) mostly fits while the receiver catches up.
        let sock_buf = (capacity * 100).clamp(1_249_280, 67_108_864);
        format!(
            "# failover lab, {name}: conntrackd 1.4.7\n\
             General {{\n\
             \tHashSize {hash_size}\n\
             \tHashLimit {hash_limit}\n\
             \tLockFile {lock}\n\
             \tUNIX {{\n\
             \t\tPath {socket}\n\
             \t}}\n\
             \tSyslog off\n\
             \tLogFile {log}\n\
             \tNetlinkBufferSize 8388608\n\
             \tNetlinkBufferSizeMaxGrowth 67108864\n\
             \tFilter From Userspace {{\n\
             \t\tProtocol Accept {{\n\
             \t\t\tTCP\n\
             \t\t\tUDP\n\
             \t\t\tICMP\n\
             \t\t\tIPv6-ICMP\n\
             \t\t}}\n\
             \t\tAddress Ignore {{\n\
             \t\t\tIPv4_address 127.0.0.1\n\
             \t\t\tIPv6_address ::1\n\
             \t\t\tIPv4_address {v4l}\n\
             \t\t\tIPv4_address {v4w}\n\
             \t\t\tIPv6_address {v6l}\n\
             \t\t\tIPv6_address {v6w}\n\
             \t\t\tIPv4_address {local}\n\
             \t\t\tIPv4_address {remote}\n\
             \t\t}}\n\
             \t}}\n\
             }}\n\
             Sync {{\n\
             \tMode FTFW {{\n\
             \t\tPurgeTimeout {purge}\n\
             \t\tResendQueueSize {resend_queue}\n\
             \t}}\n\
             \tUDP {{\n\
             \t\tIPv4_address {local}\n\
             \t\tIPv4_Destination_Address {remote}\n\
             \t\tPort 3780\n\
             \t\tInterface sync0\n\
             \t\tSndSocketBuffer {sock_buf}\n\
             \t\tRcvSocketBuffer {sock_buf}\n\
             \t\tChecksum on\n\
             \t}}\n\
             {options}\
             }}\n",
            options = if self.opts.expectation_sync {
                "\tOptions {\n\t\tExpectationSync on\n\t}\n"
            } else {
                ""
            },
            name = fw.name,
            lock = fw.lock().display(),
            socket = fw.path("conntrackd.sock").display(),
            log = fw.path("conntrackd.log").display(),
            v4l = VIP4_LAN,
            v4w = VIP4_WAN,
            v6l = VIP6_LAN,
            v6w = VIP6_WAN,
            local = fw.sync4(),
            remote = peer.sync4(),
            purge = PURGE_TIMEOUT_S,
        )
    }

    /// The daemon's config, keepalived's config and the scripts of one firewall.
    fn write_glue(&self, fw: &Fw) {
        let peer = self.fw(1 - fw.idx);
        let config = match fw.mode {
            Mode::Commit | Mode::WarmStandby => self.ctsyncd_config(fw, peer),
            Mode::Conntrackd => self.conntrackd_config(fw, peer),
        };
        std::fs::write(fw.config(), config)
            .unwrap_or_else(|e| panic!("write {}: {e}", fw.config().display()));
        if let Some(key) = &self.opts.sync_key {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let path = fw.path("sync.keys");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            writeln!(file, "{key}").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let script = self.write_scripts(fw);
        self.write_keepalived_conf(fw, peer, &script);
    }

    /// The timing wrapper around `fw`'s daemon binary, the VRRP event log
    /// script, and the notify script keepalived runs (for `fw.mode`);
    /// returns the notify script's path.
    fn write_scripts(&self, fw: &Fw) -> PathBuf {
        // The timing wrapper around the real binary.
        let timing = fw.path("ctl-timing.log");
        write_script(
            &fw.timed_bin(),
            &format!(
                "#!/bin/sh\n\
                 echo \"$(date +%s.%N) start $*\" >> {log}\n\
                 {bin} \"$@\"\n\
                 rc=$?\n\
                 echo \"$(date +%s.%N) end rc=$rc $*\" >> {log}\n\
                 exit $rc\n",
                log = timing.display(),
                bin = fw.mode.bin().display()
            ),
        );
        // The generic notify: a timestamped line per VRRP event.
        write_script(
            &fw.path("ts-notify.sh"),
            &format!(
                "#!/bin/sh\necho \"$(date +%s.%N) $*\" >> {}\n",
                fw.path("vrrp-events.log").display()
            ),
        );
        match fw.mode {
            Mode::Commit | Mode::Conntrackd => {
                let copy = fw.path("primary-backup.sh");
                std::fs::copy(PRIMARY_BACKUP_EXAMPLE, &copy)
                    .unwrap_or_else(|e| panic!("copy {PRIMARY_BACKUP_EXAMPLE}: {e}"));
                let bin = fw
                    .bin_override
                    .clone()
                    .unwrap_or_else(|| path_str(&fw.timed_bin()).to_string());
                must(
                    "sed",
                    &[
                        "-i",
                        "-e",
                        &format!("s|^CONNTRACKD_BIN=.*|CONNTRACKD_BIN={bin}|"),
                        "-e",
                        &format!(
                            "s|^CONNTRACKD_LOCK=.*|CONNTRACKD_LOCK={}|",
                            fw.lock().display()
                        ),
                        "-e",
                        &format!(
                            "s|^CONNTRACKD_CONFIG=.*|CONNTRACKD_CONFIG={}|",
                            fw.config().display()
                        ),
                        path_str(&copy),
                    ],
                );
                let text = std::fs::read_to_string(&copy).expect("read the edited script");
                for want in [
                    format!("CONNTRACKD_BIN={bin}\n"),
                    format!("CONNTRACKD_LOCK={}\n", fw.lock().display()),
                    format!("CONNTRACKD_CONFIG={}\n", fw.config().display()),
                ] {
                    assert!(
                        text.contains(&want),
                        "editing {} did not set {want:?}: has upstream changed the script?",
                        copy.display()
                    );
                }
                std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod the script");
                copy
            }
            Mode::WarmStandby => {
                let notify =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/keepalived/ctsync-notify.sh");
                let wrapper = fw.path("notify.sh");
                write_script(
                    &wrapper,
                    &format!(
                        "#!/bin/sh\n\
                         export CTSYNCD_BIN={bin}\n\
                         export CTSYNCD_CONFIG={config}\n\
                         export CTSYNCD_LOCK={lock}\n\
                         export CTSYNCD_NOTIFY_LOCK={nlock}\n\
                         exec /bin/sh {notify} \"$@\"\n",
                        bin = fw
                            .bin_override
                            .clone()
                            .unwrap_or_else(|| path_str(&fw.timed_bin()).to_string()),
                        config = fw.config().display(),
                        lock = fw.lock().display(),
                        nlock = fw.path("notify.lock").display(),
                        notify = notify.display()
                    ),
                );
                wrapper
            }
        }
    }

    /// keepalived's configuration for `fw`, its notify script `script`.
    fn write_keepalived_conf(&self, fw: &Fw, peer: &Fw, script: &Path) {
        let s = script.display();
        let instance =
            |vi: &str, dev: &str, vrid: u32, src: String, dst: String, vip4: &str, vip6: &str| {
                format!(
                    r#"vrrp_instance {vi} {{
    interface {dev}
    state BACKUP
    nopreempt
    virtual_router_id {vrid}
    priority {prio}
    advert_int {advert}
    unicast_src_ip {src}
    unicast_peer {{
        {dst}
    }}
    authentication {{
        auth_type PASS
        auth_pass papas_co
    }}
    virtual_ipaddress {{
        {vip4}/32 dev {dev}
    }}
    virtual_ipaddress_excluded {{
        {vip6}/64 dev {dev}
    }}
}}
"#,
                    prio = if fw.idx == 0 { 150 } else { 100 },
                    advert = self.opts.advert_int,
                )
            };
        let conf = format!(
            r#"global_defs {{
    router_id {name}
    script_user root
    enable_script_security
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}}

vrrp_sync_group G1 {{
    group {{
        VI_LAN
        VI_WAN
    }}
    notify_master "{s} primary"
    notify_backup "{s} backup"
    notify_fault "{s} fault"
    notify "{ts}"
}}

{lan}
{wan}"#,
            name = fw.name,
            ts = fw.path("ts-notify.sh").display(),
            lan = instance(
                "VI_LAN",
                "lan0",
                61,
                fw.lan4(),
                peer.lan4(),
                VIP4_LAN,
                VIP6_LAN
            ),
            wan = instance(
                "VI_WAN",
                "wan0",
                62,
                fw.wan4(),
                peer.wan4(),
                VIP4_WAN,
                VIP6_WAN
            ),
        );
        std::fs::write(fw.path("keepalived.conf"), conf).expect("write keepalived.conf");
    }

    /// Start the daemon (ctsyncd, or conntrackd in conntrackd mode) in the
    /// foreground in `idx`'s namespace and wait until it answers.
    pub fn start_daemon(&mut self, idx: usize) {
        let fw = self.fw_mut(idx);
        assert!(fw.daemon.is_none(), "{}: daemon already started", fw.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(fw.path("daemon.log"))
            .expect("open the daemon log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new("ip")
            .args(["netns", "exec", &fw.ns])
            .arg(fw.mode.bin())
            .arg("-C")
            .arg(fw.config())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", fw.mode.daemon()));
        fw.daemon = Some(child);
        let fw = self.fw(idx);
        assert!(
            wait_until(Duration::from_secs(15), || fw.daemon_answers()),
            "{}: {} did not answer{}",
            fw.name,
            fw.mode.daemon(),
            fw.diagnostics()
        );
    }

    /// Stop `idx`'s daemon as an operator does (`-k` through its client),
    /// wait until no process of that daemon is left in the namespace (it
    /// may have been started by the notify script, not by the lab), and
    /// reap the lab's child if it started one. Bounded; SIGKILL at the end.
    pub fn stop_daemon(&mut self, idx: usize) {
        let fw = self.fw(idx);
        let _ = fw.ctl(&["-k"]);
        let name = fw.mode.daemon();
        let running = |ns: &str| -> Vec<i32> {
            netns_pids(ns)
                .into_iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == name)
                })
                .collect()
        };
        let ns = fw.ns.clone();
        if !wait_until(Duration::from_secs(10), || running(&ns).is_empty()) {
            for p in running(&ns) {
                signal(p, libc::SIGKILL);
            }
        }
        let fw = self.fw_mut(idx);
        if let Some(mut child) = fw.daemon.take() {
            reap(&mut child, Duration::from_secs(5));
        }
        assert!(
            !self.fw(idx).daemon_answers(),
            "{}: {name} still answers after -k",
            self.fw(idx).name
        );
    }

    /// Let `idx` run another daemon from now on (a rolling migration):
    /// `fw.mode` becomes `mode`, and the timing wrapper and the notify
    /// script keepalived runs are rewritten for it (keepalived reads the
    /// script anew at each transition, so it need not restart). The
    /// daemon's configuration is the caller's to write (`Fw::config`).
    pub fn switch_daemon(&mut self, idx: usize, mode: Mode) {
        self.fw_mut(idx).mode = mode;
        self.write_scripts(self.fw(idx));
    }

    /// Run `idx`'s notify script for `state` ("primary", "backup",
    /// "fault") by hand in its namespace, as an operator re-runs the glue
    /// after replacing the daemon under a running keepalived; it must
    /// exit 0.
    pub fn run_notify(&self, idx: usize, state: &str) {
        let fw = self.fw(idx);
        let script = match fw.mode {
            Mode::Commit | Mode::Conntrackd => fw.path("primary-backup.sh"),
            Mode::WarmStandby => fw.path("notify.sh"),
        };
        let out = run("ip", &["netns", "exec", &fw.ns, path_str(&script), state]);
        assert!(
            out.status.success(),
            "{}: {} {state} failed ({}): {}{}",
            fw.name,
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fw.diagnostics()
        );
    }

    /// `keepalived -t`, then keepalived in the foreground in `idx`'s namespace.
    pub fn start_keepalived(&mut self, idx: usize) {
        let fw = self.fw_mut(idx);
        assert!(
            fw.keepalived.is_none(),
            "{}: keepalived already started",
            fw.name
        );
        let conf = fw.path("keepalived.conf");
        let check = run(
            "ip",
            &[
                "netns",
                "exec",
                &fw.ns,
                "keepalived",
                "-t",
                "-f",
                path_str(&conf),
            ],
        );
        assert!(
            check.status.success(),
            "{}: keepalived -t -f {} failed ({}):\n{}{}",
            fw.name,
            conf.display(),
            check.status,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(fw.path("keepalived.log"))
            .expect("open keepalived.log");
        let err = log.try_clone().expect("clone the log handle");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &fw.ns,
                "keepalived",
                "-P",
                "-n",
                "-l",
                "-D",
                "-G",
                "-f",
            ])
            .arg(&conf)
            .arg("-p")
            .arg(fw.path("keepalived.pid"))
            .arg("-r")
            .arg(fw.path("vrrp.pid"))
            .arg("-c")
            .arg(fw.path("checkers.pid"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn keepalived");
        fw.keepalived = Some(child);
    }

    /// Wait for an event whose text starts with `prefix` among the events
    /// after the first `skip`; returns it and its index.
    pub fn wait_event(
        &self,
        idx: usize,
        skip: usize,
        prefix: &str,
        within: Duration,
    ) -> (usize, Event) {
        let fw = self.fw(idx);
        let deadline = Instant::now() + within;
        loop {
            let found = fw
                .events()
                .into_iter()
                .enumerate()
                .skip(skip)
                .find(|(_, e)| e.text.starts_with(prefix));
            if let Some(hit) = found {
                return hit;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no '{prefix}' event within {within:?}{}",
                fw.name,
                fw.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the backup branch of the notify script, started after the
    /// first `since` lines of the timing log, has run to its end (`-n`),
    /// and the flush its `-t` scheduled (purge_timeout_s later) is past,
    /// with a margin.
    pub fn wait_backup_done(&self, idx: usize, since: usize, within: Duration) {
        let fw = self.fw(idx);
        let ended = wait_until(within, || {
            fw.timing()
                .iter()
                .skip(since)
                .any(|l| l.what == "end" && l.flag() == Some("-n"))
        });
        assert!(
            ended,
            "{}: the backup script never ran -n to its end{}",
            fw.name,
            fw.diagnostics()
        );
        if let Some(last) = fw
            .timing()
            .iter()
            .rev()
            .find(|l| l.what == "end" && l.flag() == Some("-t"))
        {
            let due =
                last.wall + Duration::from_secs(PURGE_TIMEOUT_S) + Duration::from_millis(1500);
            if let Ok(wait) = due.duration_since(SystemTime::now()) {
                std::thread::sleep(wait);
            }
        }
    }

    /// True when `idx` holds the VIPs on its LAN and WAN links.
    pub fn holds_vips(&self, idx: usize) -> bool {
        let fw = self.fw(idx);
        let addrs = |dev: &str| {
            String::from_utf8_lossy(&run("ip", &["-n", &fw.ns, "addr", "show", "dev", dev]).stdout)
                .into_owned()
        };
        let lan = addrs("lan0");
        let wan = addrs("wan0");
        lan.contains(&format!("{VIP4_LAN}/32"))
            && lan.contains(&format!("{VIP6_LAN}/64"))
            && wan.contains(&format!("{VIP4_WAN}/32"))
            && wan.contains(&format!("{VIP6_WAN}/64"))
    }

    /// `conntrack -L` in `idx`'s kernel.
    pub fn conntrack(&self, idx: usize) -> Vec<CtEntry> {
        let fw = self.fw(idx);
        let out = run("ip", &["netns", "exec", &fw.ns, "conntrack", "-L"]);
        assert!(
            out.status.success(),
            "{}: conntrack -L failed: {}",
            fw.name,
            String::from_utf8_lossy(&out.stderr)
        );
        parse_conntrack(&String::from_utf8_lossy(&out.stdout))
    }

    /// Delete every flow from the client from `idx`'s kernel.
    pub fn conntrack_delete_client_flows(&self, idx: usize) {
        let fw = self.fw(idx);
        for args in [
            vec!["-D", "-s", CLIENT4],
            vec!["-D", "-f", "ipv6", "-s", CLIENT6],
        ] {
            let mut all = vec!["netns", "exec", fw.ns.as_str(), "conntrack"];
            all.extend(args);
            // conntrack -D exits 1 when it deleted nothing; that is fine.
            let _ = run("ip", &all);
        }
    }

    /// The packet counts of the ruleset's named counters in `idx`.
    pub fn counters(&self, idx: usize) -> BTreeMap<String, u64> {
        let fw = self.fw(idx);
        let text = must(
            "ip",
            &[
                "netns", "exec", &fw.ns, "nft", "-j", "list", "counters", "table", "inet", "fw",
            ],
        );
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        v["nftables"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| {
                        let c = i.get("counter")?;
                        Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The MAC address of `dev` in namespace `ns`.
    pub fn link_mac(&self, ns: &str, dev: &str) -> Option<String> {
        let out = run("ip", &["-n", ns, "-j", "link", "show", "dev", dev]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get(0)?.get("address")?.as_str().map(str::to_string)
    }

    /// The client's neighbour entry (MAC) for `addr`.
    pub fn client_neigh(&self, addr: &str) -> Option<String> {
        let out = run("ip", &["-n", &self.cl, "-j", "neigh", "show", addr]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get(0)?.get("lladdr")?.as_str().map(str::to_string)
    }

    /// Inject a failure into `idx`; returns the wall-clock time it began.
    pub fn inject(&mut self, idx: usize, failure: Failure) -> SystemTime {
        let t0 = SystemTime::now();
        match failure {
            Failure::Graceful => {
                let fw = self.fw_mut(idx);
                let ka = fw
                    .keepalived
                    .as_mut()
                    .expect("keepalived runs on the primary");
                signal(ka.id() as i32, libc::SIGTERM);
                reap(ka, Duration::from_secs(10));
                fw.keepalived = None;
            }
            Failure::LinkLoss => {
                let x = self.fw(idx).name;
                ipn(&self.sw, &["link", "set", &format!("lan-{x}"), "down"]);
                ipn(&self.sw, &["link", "set", &format!("wan-{x}"), "down"]);
            }
            Failure::Crash => {
                let ns = self.fw(idx).ns.clone();
                let pids = netns_pids(&ns);
                for &p in &pids {
                    signal(p, libc::SIGSTOP);
                }
                for dev in ["lan0", "wan0", "sync0"] {
                    ipn(&ns, &["link", "set", dev, "down"]);
                }
                for &p in &pids {
                    signal(p, libc::SIGKILL);
                }
                let fw = self.fw_mut(idx);
                for child in [fw.keepalived.take(), fw.daemon.take()]
                    .into_iter()
                    .flatten()
                {
                    let mut child = child;
                    reap(&mut child, Duration::from_secs(5));
                }
            }
        }
        t0
    }

    /// "Reboot" a crashed firewall: kill what is left in it, unplug its end
    /// of the sync link (park it in the switch namespace, so the peer's
    /// interface stays what it was), delete the namespace, build it anew
    /// and plug the sync link back in. Its files stay (logs append).
    pub fn rebuild(&mut self, idx: usize) {
        let ns = self.fw(idx).ns.clone();
        self.kill_all(&ns);
        let fw = self.fw_mut(idx);
        for child in [fw.keepalived.take(), fw.daemon.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            reap(&mut child, Duration::from_secs(5));
        }
        ipn(&ns, &["link", "set", "sync0", "netns", &self.sw]);
        // The kernel tears a deleted namespace's veths down asynchronously:
        // delete the switch ports first and wait until they are gone, or the
        // rebuilt firewall's `lan-X`/`wan-X` may still "exist".
        let x = self.fw(idx).name;
        let ports = [format!("lan-{x}"), format!("wan-{x}")];
        for port in &ports {
            let _ = run("ip", &["-n", &self.sw, "link", "del", port]);
        }
        must("ip", &["netns", "del", &ns]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline
            && ports.iter().any(|port| {
                run("ip", &["-n", &self.sw, "link", "show", port])
                    .status
                    .success()
            })
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.build_fw(self.fw(idx));
        ipn(&self.sw, &["link", "set", "sync0", "netns", &ns]);
        self.setup_sync(self.fw(idx));
    }

    /// SIGKILL every process in `ns`, until none is left (bounded).
    fn kill_all(&self, ns: &str) {
        for _ in 0..20 {
            let pids = netns_pids(ns);
            if pids.is_empty() {
                return;
            }
            for p in pids {
                signal(p, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn namespaces(&self) -> Vec<String> {
        vec![
            self.a.ns.clone(),
            self.b.ns.clone(),
            self.cl.clone(),
            self.sv.clone(),
            self.sw.clone(),
        ]
    }
}

impl Drop for FailoverLab {
    fn drop(&mut self) {
        for fw in [&mut self.a, &mut self.b] {
            if let Some(ka) = fw.keepalived.as_mut() {
                signal(ka.id() as i32, libc::SIGKILL);
            }
        }
        for ns in self.namespaces() {
            self.kill_all(&ns);
        }
        for fw in [&mut self.a, &mut self.b] {
            for child in [fw.keepalived.take(), fw.daemon.take()]
                .into_iter()
                .flatten()
            {
                let mut child = child;
                reap(&mut child, Duration::from_secs(5));
            }
        }
        for ns in self.namespaces() {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        if self.keep || std::thread::panicking() || std::env::var_os("CTF_KEEP").is_some() {
            eprintln!("failover lab files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
