//! The daemon's configuration: TOML text in, a validated [`Config`] out.
//!
//! Owns: the key names and their defaults, the semantic checks, and error
//! messages that name the file, the line and the key
//! (`ctsyncd.toml:7: key 'link[0].peer': required for transport "udp"`).
//! Must not: open sockets, touch the kernel, or hand out a half-validated
//! config: `Config::parse` either returns a config the daemon can run with or
//! an error.

use crate::conntrackd_wire::PeerLevel;
use crate::expect::ExpectPolicy;
use crate::filter::{protocol_by_name, tcp_state_by_name, Cidr, FilterConfig, Policy, RuleSet};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Where the daemon and the client look for the config without `-C`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ctsyncd/ctsyncd.toml";
/// The control socket when `socket` is not set.
pub const DEFAULT_SOCKET: &str = "/run/ctsyncd/ctsyncd.sock";
/// At most this many `[[link]]` tables.
pub const MAX_LINKS: usize = 4;

/// `[sync] max_peers` at most: a cluster is a few nodes.
const MAX_PEERS: i64 = 1024;
/// `[sync] max_flows_per_peer` and `send_queue_max` at most (2^28, some
/// 30 GiB of cache).
const MAX_FLOWS: i64 = 1 << 28;
/// `[sync] reorder_limit` at most (the sync core's largest window).
const MAX_REORDER: i64 = 1 << 24;
/// `[sync] reorder_max_bytes` bounds; the least still holds a datagram of
/// the most messages the wire allows, as the reorder buffer counts it.
const MIN_REORDER_BYTES: i64 = 1 << 20;
const MAX_REORDER_BYTES: i64 = 1 << 32;
/// `[sync] send_queue_max` at least: fewer would turn an ordinary burst
/// (or a table re-read's refreshes) into a bulk of the whole table.
const MIN_SEND_QUEUE: i64 = 65_536;

/// A config that failed to load, with a one-line reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: can't read config: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML, or a key has the wrong type or is unknown.
    #[error("{origin}:{line}: {key_part}{message}", key_part = key_prefix(key))]
    Syntax {
        origin: String,
        line: usize,
        key: Option<String>,
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{origin}:{line}: key '{key}': {message}")]
    Invalid {
        origin: String,
        line: usize,
        key: String,
        message: String,
    },
}

fn key_prefix(key: &Option<String>) -> String {
    match key {
        Some(k) => format!("key '{k}': "),
        None => String::new(),
    }
}

impl ConfigError {
    /// The 1-based line the error points at (0 for a read error).
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Read { .. } => 0,
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// The dotted key the error is about, if known (`link[0].peer`).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

/// The replication mode (`[sync] mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Ftfw,
    Notrack,
    Alarm,
}

/// How a link reaches its peers (`[[link]] transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Multicast,
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    /// Unique in the cluster, never 0.
    pub node_id: u32,
    /// The control socket (created with mode 0600).
    pub socket: PathBuf,
    /// `socket_group`: a group whose members may also use the control
    /// socket (it is then mode 0660, owned by that group).
    pub socket_group: Option<String>,
    pub sync: SyncConfig,
    /// 1 to [`MAX_LINKS`] links; the first is the active one at start.
    pub links: Vec<LinkConfig>,
    pub kernel: KernelConfig,
    pub daemon: DaemonConfig,
    /// `[filter]`: which flows are replicated.
    pub filter: FilterConfig,
    /// `[compat]`: hints for tools written for conntrackd.
    pub compat: CompatConfig,
    /// `[auth]`: keys for the sync traffic (none: not authenticated).
    pub auth: AuthConfig,
    /// `[metrics]`: the Prometheus endpoint (off by default).
    pub metrics: MetricsConfig,
    /// `[doctor]`: facts for `ctsyncd doctor` the machine cannot tell.
    pub doctor: DoctorConfig,
}

/// `[auth]`: where the sync keys are, and the cluster name bound into
/// every datagram. The key file itself is read (and checked) by the daemon
/// at start and on reload, not here.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuthConfig {
    pub key_file: Option<PathBuf>,
    pub cluster: String,
}

/// `[sync]`: replication behaviour.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncConfig {
    pub mode: SyncMode,
    /// FTFW: messages in flight (sent, not yet acknowledged) per peer.
    pub window: u32,
    /// FTFW: acknowledge at least every this many messages received.
    pub ack_every: u32,
    /// FTFW: acknowledge at the latest this long after a message arrives.
    pub ack_delay_ms: u64,
    /// Send a keepalive when nothing else was sent for this long.
    pub keepalive_ms: u64,
    /// FTFW: resend an unacknowledged message after this long.
    pub rto_ms: u64,
    /// A peer heard from for this long is considered gone.
    pub peer_timeout_ms: u64,
    /// Largest datagram sent, IP header included.
    pub mtu: u32,
    /// Delay before the kernel flush scheduled by `-t` (conntrackd's PurgeTimeout).
    pub purge_timeout_s: u32,
    /// Anti-entropy: compare state digests with peers this often (ms; 0 = off).
    pub digest_interval_ms: u64,
    /// Let a few changes wait this long (ms) to fill a datagram; 0 = never.
    pub batch_delay_ms: u64,
    /// Warm standby: write peers' flows into our kernel as they arrive.
    pub warm_standby: bool,
    /// Warm standby: the least timeout (s) a flow written that way gets.
    pub warm_timeout_s: u32,
    /// ALARM: refresh every flow this often (conntrackd's RefreshTime).
    pub alarm_refresh_s: u32,
    /// ALARM: a peer flow not refreshed for this long expires (CacheTimeout).
    pub alarm_timeout_s: u32,
    /// Most peers (sender node ids) known at once; datagrams from further
    /// ids are dropped (`too_many_peers`).
    pub max_peers: u32,
    /// Most flows in one peer's external cache; a new flow past it is
    /// dropped (`external_cache_full`), updates and deletes still apply.
    pub max_flows_per_peer: u64,
    /// FTFW: how far ahead of a gap a peer's datagrams are buffered, in
    /// datagrams (at least `window`); further ones are dropped
    /// (`reorder_too_far`).
    pub reorder_limit: u32,
    /// FTFW: memory one peer's reorder buffer may hold, bytes; past it
    /// datagrams are dropped (`reorder_overflow`).
    pub reorder_max_bytes: u64,
    /// Most flow keys waiting to be sent; past it the send queue is dropped
    /// and the peers get a bulk instead (`send_queue_drops`).
    pub send_queue_max: u64,
    /// Which expectations are replicated (conntrackd's ExpectationSync):
    /// "off" (default), "all", or a list of helper-name prefixes.
    pub expectations: ExpectPolicy,
}

/// One `[[link]]`: a sync channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkConfig {
    pub transport: Transport,
    pub interface: String,
    /// The address this node binds.
    pub local: IpAddr,
    /// UDP: the other node.
    pub peer: Option<IpAddr>,
    /// Multicast: the group.
    pub group: Option<IpAddr>,
    pub port: u16,
    /// `node_ids`: the only senders this link accepts (none: any).
    pub node_ids: Option<Vec<u32>>,
    /// Which protocol the link speaks: ctsync's own, or conntrackd's (a
    /// peer still running conntrackd, during a migration).
    pub protocol: LinkProtocol,
}

/// `[[link]] protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LinkProtocol {
    Ctsync,
    /// conntrackd's sync protocol, as the conntrackd version given speaks
    /// it (`conntrackd_version`, "1.4.7" by default: which attributes the
    /// peer understands, how 1.4.6 and older write NAT addresses).
    Conntrackd(PeerLevel),
}

impl LinkConfig {
    /// Where datagrams on this link are sent: the peer or the group.
    pub fn remote(&self) -> Option<IpAddr> {
        self.peer.or(self.group)
    }
}

/// `[kernel]`: the ctnetlink side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelConfig {
    /// Event socket receive buffer, bytes.
    pub netlink_buffer: u64,
    /// The buffer may double after an overrun up to this many bytes.
    pub netlink_buffer_max: u64,
    /// Keep the kernel's TCP window tracking on committed flows (off sets BE_LIBERAL).
    pub tcp_window_tracking: bool,
    /// Fixed timeout in seconds for committed flows; `None` = the cached
    /// timeout minus the time since the last update (conntrackd's estimate).
    pub commit_timeout: Option<u32>,
    /// Set `net.netfilter.nf_conntrack_events` to 1 at start when it is 0 or
    /// 2 ("auto"): with 2, flows created while nobody listens never report
    /// their updates or their end.
    pub enable_events: bool,
    /// Re-read the kernel table this often and send only the differences;
    /// heals changes the kernel never reported. 0 turns it off.
    pub reconcile_interval_s: u32,
}

/// `[daemon]`: process matters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    pub pid_file: Option<PathBuf>,
    /// An O_EXCL lock file, as conntrackd's LockFile.
    pub lock: Option<PathBuf>,
    /// error | warn | info | debug | trace
    pub log_level: String,
    /// `log_file`: also append log lines to this file (conntrackd's
    /// `LogFile`). Absolute path; unset: none.
    pub log_file: Option<PathBuf>,
    /// `syslog`: also send log lines to syslog/journald (conntrackd's
    /// `Syslog on`), with this facility. Unset: none.
    pub syslog: Option<SyslogFacility>,
    /// `nice`: the daemon's nice value, -20..=19 (conntrackd's `Nice`).
    pub nice: Option<i32>,
    /// `scheduler` + `scheduler_priority`: a real-time policy for the
    /// daemon (conntrackd's `Scheduler { Type; Priority }`).
    pub scheduler: Option<Scheduler>,
}

/// A syslog facility by name, as conntrackd's `Syslog` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFacility {
    Daemon,
    User,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl SyslogFacility {
    /// Every facility with its name, in the order error messages list them.
    pub const ALL: [(&'static str, SyslogFacility); 10] = [
        ("daemon", SyslogFacility::Daemon),
        ("user", SyslogFacility::User),
        ("local0", SyslogFacility::Local0),
        ("local1", SyslogFacility::Local1),
        ("local2", SyslogFacility::Local2),
        ("local3", SyslogFacility::Local3),
        ("local4", SyslogFacility::Local4),
        ("local5", SyslogFacility::Local5),
        ("local6", SyslogFacility::Local6),
        ("local7", SyslogFacility::Local7),
    ];

    /// The facility called `name` (lower case), if any.
    pub fn by_name(name: &str) -> Option<SyslogFacility> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    /// Its name as configured.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("daemon", |(n, _)| n)
    }
}

/// `[daemon] scheduler`: a real-time scheduling policy and its priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Scheduler {
    pub policy: SchedPolicy,
    /// 1..=99 for `rr` and `fifo`; 0 for `other`.
    pub priority: u8,
}

/// The policies conntrackd's `Scheduler { Type }` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedPolicy {
    /// SCHED_OTHER: the ordinary time-sharing policy.
    Other,
    /// SCHED_RR
    Rr,
    /// SCHED_FIFO
    Fifo,
}

/// `[metrics]`: the optional Prometheus endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    /// `listen = "ADDR:PORT"`: serve `/metrics` there. Unset: off.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[doctor]`: what `ctsyncd doctor` cannot read from the machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DoctorConfig {
    /// `upstream_idle_timeout_s`: the UDP idle timeout of a load balancer
    /// or cloud NIC in front of this firewall (AWS NLB: 120 s; its TCP
    /// idle timeout, 350 s, is not this). The UDP conntrack timeouts are
    /// reported when not below it; TCP ones are never compared with it.
    /// Unset: that check is skipped.
    pub upstream_idle_timeout_s: Option<u32>,
}

/// `[compat]`: text that tools written for conntrackd read from the config
/// file. The daemon itself never uses it; the config check makes sure it
/// agrees with the keys the daemon does use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompatConfig {
    /// `conntrackd_ra_hint`: conntrackd-syntax lines (`UNIX {`, `Path
    /// SOCKET`, `}`, optionally `LockFile LOCK`) for Pacemaker's
    /// `ocf:heartbeat:conntrackd` agent, which awk-parses them out of the
    /// file. Checked: the `Path` is `socket`, a `LockFile` is `[daemon] lock`.
    pub conntrackd_ra_hint: Option<String>,
}

impl Default for SyncConfig {
    /// The sync core's own defaults, where it has them, so the two never
    /// drift apart.
    fn default() -> Self {
        let core = crate::sync::SyncConfig::default();
        SyncConfig {
            mode: SyncMode::Ftfw,
            window: u32::try_from(core.window).unwrap_or(u32::MAX),
            ack_every: core.ack_every,
            ack_delay_ms: core.ack_delay_ms,
            keepalive_ms: core.keepalive_ms,
            rto_ms: core.rto_ms,
            peer_timeout_ms: core.peer_timeout_ms,
            mtu: 1500,
            purge_timeout_s: 60,
            digest_interval_ms: core.digest_interval_ms,
            batch_delay_ms: core.batch_delay_ms,
            warm_standby: false,
            expectations: ExpectPolicy::Off,
            warm_timeout_s: 1800,
            alarm_refresh_s: u32::try_from(core.alarm_refresh_ms / 1000).unwrap_or(u32::MAX),
            alarm_timeout_s: u32::try_from(core.alarm_timeout_ms / 1000).unwrap_or(u32::MAX),
            max_peers: u32::try_from(core.max_peers).unwrap_or(u32::MAX),
            max_flows_per_peer: core.max_flows_per_peer as u64,
            reorder_limit: u32::try_from(core.reorder_limit).unwrap_or(u32::MAX),
            reorder_max_bytes: core.reorder_max_bytes as u64,
            send_queue_max: core.send_queue_max as u64,
        }
    }
}

impl Default for KernelConfig {
    fn default() -> Self {
        KernelConfig {
            netlink_buffer: 8 << 20,
            netlink_buffer_max: 64 << 20,
            tcp_window_tracking: false,
            commit_timeout: None,
            enable_events: true,
            reconcile_interval_s: 60,
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            pid_file: None,
            lock: None,
            log_level: "info".to_string(),
            log_file: None,
            syslog: None,
            nice: None,
            scheduler: None,
        }
    }
}

// ---- raw (as written) form, with spans for error lines -------------------

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: S<i64>,
    socket: Option<S<String>>,
    socket_group: Option<S<String>>,
    sync: Option<RawSync>,
    #[serde(default)]
    link: Vec<S<RawLink>>,
    kernel: Option<RawKernel>,
    daemon: Option<RawDaemon>,
    filter: Option<RawFilter>,
    compat: Option<RawCompat>,
    auth: Option<RawAuth>,
    metrics: Option<RawMetrics>,
    doctor: Option<RawDoctor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoctor {
    upstream_idle_timeout_s: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    key_file: Option<S<String>>,
    cluster: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    mode: Option<S<String>>,
    window: Option<S<i64>>,
    ack_every: Option<S<i64>>,
    ack_delay_ms: Option<S<i64>>,
    keepalive_ms: Option<S<i64>>,
    rto_ms: Option<S<i64>>,
    peer_timeout_ms: Option<S<i64>>,
    mtu: Option<S<i64>>,
    purge_timeout_s: Option<S<i64>>,
    digest_interval_ms: Option<S<i64>>,
    batch_delay_ms: Option<S<i64>>,
    warm_standby: Option<bool>,
    warm_timeout_s: Option<S<i64>>,
    alarm_refresh_s: Option<S<i64>>,
    alarm_timeout_s: Option<S<i64>>,
    max_peers: Option<S<i64>>,
    max_flows_per_peer: Option<S<i64>>,
    reorder_limit: Option<S<i64>>,
    reorder_max_bytes: Option<S<i64>>,
    send_queue_max: Option<S<i64>>,
    expectations: Option<S<RawExpectations>>,
}

/// `expectations = "all"` or `expectations = ["ftp", "sip"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawExpectations {
    Word(String),
    Helpers(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    transport: S<String>,
    interface: S<String>,
    local: S<String>,
    peer: Option<S<String>>,
    group: Option<S<String>>,
    port: S<i64>,
    node_ids: Option<S<Vec<S<i64>>>>,
    protocol: Option<S<String>>,
    conntrackd_version: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    netlink_buffer: Option<S<i64>>,
    netlink_buffer_max: Option<S<i64>>,
    tcp_window_tracking: Option<bool>,
    commit_timeout: Option<S<i64>>,
    enable_events: Option<bool>,
    reconcile_interval_s: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    pid_file: Option<S<String>>,
    lock: Option<S<String>>,
    log_level: Option<S<String>>,
    log_file: Option<S<String>>,
    syslog: Option<S<String>>,
    nice: Option<S<i64>>,
    scheduler: Option<S<String>>,
    scheduler_priority: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompat {
    conntrackd_ra_hint: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    sync_addresses: Option<S<String>>,
    protocol: Option<S<RawRuleSet>>,
    address: Option<S<RawRuleSet>>,
    tcp_state: Option<S<RawRuleSet>>,
}

/// `{ policy = "accept", list = [..] }`, inline or as a `[filter.x]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleSet {
    policy: S<String>,
    list: S<Vec<S<String>>>,
}

/// The text being validated, for turning byte offsets into lines.
struct Ctx<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        line_of(self.text, offset)
    }

    fn invalid<T>(
        &self,
        offset: usize,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            origin: self.origin.to_string(),
            line: self.line_of(offset),
            key: key.to_string(),
            message: message.into(),
        })
    }

    /// An integer within `lo..=hi`, or the default when absent.
    fn int(
        &self,
        v: &Option<S<i64>>,
        key: &str,
        lo: i64,
        hi: i64,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => {
                let n = *s.get_ref();
                if n < lo || n > hi {
                    self.invalid(
                        s.span().start,
                        key,
                        format!("{n} is out of range {lo}..={hi}"),
                    )
                } else {
                    Ok(n)
                }
            }
        }
    }

    fn addr(&self, s: &S<String>, key: &str) -> Result<IpAddr, ConfigError> {
        s.get_ref().parse::<IpAddr>().or_else(|_| {
            self.invalid(
                s.span().start,
                key,
                format!("\"{}\" is not an IPv4 or IPv6 address", s.get_ref()),
            )
        })
    }

    fn path(&self, s: &S<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let p = s.get_ref();
        if !p.starts_with('/') {
            return self.invalid(
                s.span().start,
                key,
                format!("\"{p}\" must be an absolute path"),
            );
        }
        Ok(PathBuf::from(p))
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()
        .get(..end)
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
        + 1
}

/// The dotted path of the table enclosing `offset` (`""`, `sync`, `link[1]`).
fn table_at(text: &str, offset: usize) -> String {
    let mut current = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut pos = 0usize;
    for line in text.split_inclusive('\n') {
        if pos > offset {
            break;
        }
        let t = line.split('#').next().unwrap_or("").trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            current = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = name.trim().to_string();
        }
        pos += line.len();
    }
    current
}

/// The key a toml error at `offset` is about, as a dotted path.
/// No span means the error is about the root table.
fn key_at(text: &str, span: Option<usize>, message: &str) -> Option<String> {
    let offset = span.unwrap_or(0);
    let table = span.map(|o| table_at(text, o)).unwrap_or_default();
    let join = |k: &str| {
        if table.is_empty() {
            k.to_string()
        } else {
            format!("{table}.{k}")
        }
    };
    let line = text
        .get(..offset.min(text.len()))
        .map(|before| before.rfind('\n').map_or(0, |i| i + 1))
        .and_then(|start| text.get(start..))
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    // serde names the field in backticks for unknown and missing fields.
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            if let Some(name) = rest.split('`').next() {
                // A field inside an inline table (`protocol = { .. }`)
                // belongs to that table's key.
                let inline = line
                    .split_once('=')
                    .filter(|(_, value)| span.is_some() && value.trim_start().starts_with('{'))
                    .map(|(left, _)| left.trim().trim_matches('"'))
                    .filter(|outer| *outer != name);
                return Some(match inline {
                    Some(outer) => join(&format!("{outer}.{name}")),
                    None => join(name),
                });
            }
        }
    }
    let (left, _) = line.split_once('=')?;
    let k = left.trim().trim_matches('"');
    (!k.is_empty() && !k.starts_with('[')).then(|| join(k))
}

impl Config {
    /// Read and validate a config file; errors name `path`. The file is
    /// ctsync's TOML or a conntrackd.conf, told apart by its content.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_notes(path).map(|(config, _)| config)
    }

    /// [`Config::load`], with the notes a conntrackd.conf's settings without
    /// effect in ctsyncd give (`FILE:LINE: TEXT`; none for TOML), for the
    /// daemon to log once its log is set up.
    pub fn load_with_notes(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
        // A conntrackd.conf (`General {`, `Sync {`) is read as is.
        if crate::conntrackd_conf::is_conntrackd(&text) {
            let converted = crate::conntrackd_conf::convert(&text, &origin)?;
            let notes = converted
                .notes
                .iter()
                .map(|n| format!("{origin}:{}: {}", n.line, n.text))
                .collect();
            return Ok((converted.config, notes));
        }
        Ok((Config::parse(&text, &origin)?, Vec::new()))
    }

    /// Validate config text; `origin` names it in errors (usually the file name).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml gives 0..0 for an error about the root table.
            let span = e.span().filter(|s| s.end > 0).map(|s| s.start);
            let message = e
                .message()
                .trim()
                .replace('\n', "; ")
                .replace("expected i64", "expected an integer");
            ConfigError::Syntax {
                origin: origin.to_string(),
                line: line_of(text, span.unwrap_or(0)),
                key: key_at(text, span, &message),
                message,
            }
        })?;
        let cx = Ctx { text, origin };
        raw_to_config(&cx, raw)
    }
}

fn raw_to_config(cx: &Ctx<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let node_id = cx.int(
        &Some(raw.node_id.clone()),
        "node_id",
        1,
        i64::from(u32::MAX),
        1,
    )?;
    let socket = match &raw.socket {
        None => PathBuf::from(DEFAULT_SOCKET),
        Some(s) => {
            let p = cx.path(s, "socket")?;
            // sun_path holds 108 bytes including the terminating NUL.
            if s.get_ref().len() > 107 {
                return cx.invalid(s.span().start, "socket", "path longer than 107 bytes");
            }
            p
        }
    };
    let socket_group = match &raw.socket_group {
        None => None,
        Some(g) => {
            let name = g.get_ref();
            let valid = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                return cx.invalid(
                    g.span().start,
                    "socket_group",
                    format!("\"{name}\" is not a group name"),
                );
            }
            Some(name.clone())
        }
    };
    let sync = sync_config(cx, raw.sync)?;
    let links = links_config(cx, &raw.link, sync.mtu)?;
    let kernel = kernel_config(cx, raw.kernel)?;
    let daemon = daemon_config(cx, raw.daemon)?;
    let filter = filter_config(cx, raw.filter)?;
    let compat = compat_config(cx, raw.compat, &socket, daemon.lock.as_deref())?;
    let auth = auth_config(cx, raw.auth)?;
    if auth.key_file.is_some() {
        let cd = links
            .iter()
            .position(|l| matches!(l.protocol, LinkProtocol::Conntrackd(_)));
        if let Some(i) = cd {
            let at = raw
                .link
                .get(i)
                .and_then(|l| l.get_ref().protocol.as_ref())
                .map_or(0, |p| p.span().start);
            return cx.invalid(
                at,
                &format!("link[{i}].protocol"),
                "conntrackd's protocol carries no authentication: remove [auth] key_file while a link speaks it, or switch the link to protocol = \"ctsync\"",
            );
        }
    }
    let metrics = metrics_config(cx, raw.metrics)?;
    let doctor = doctor_config(cx, raw.doctor)?;
    Ok(Config {
        node_id: u32::try_from(node_id).unwrap_or(1),
        socket,
        socket_group,
        sync,
        links,
        kernel,
        daemon,
        filter,
        compat,
        auth,
        metrics,
        doctor,
    })
}

/// `[metrics] listen`: an address and a port (not 0).
fn metrics_config(cx: &Ctx<'_>, raw: Option<RawMetrics>) -> Result<MetricsConfig, ConfigError> {
    let Some(listen) = raw.and_then(|r| r.listen) else {
        return Ok(MetricsConfig::default());
    };
    match listen.get_ref().parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(MetricsConfig { listen: Some(addr) }),
        Ok(_) => cx.invalid(
            listen.span().start,
            "metrics.listen",
            "port 0 is not a port to listen on",
        ),
        Err(_) => cx.invalid(
            listen.span().start,
            "metrics.listen",
            format!(
                "\"{}\" is not ADDRESS:PORT (\"127.0.0.1:9477\", \"[::1]:9477\")",
                listen.get_ref()
            ),
        ),
    }
}

/// `[doctor] upstream_idle_timeout_s`: 1 s to a week.
fn doctor_config(cx: &Ctx<'_>, raw: Option<RawDoctor>) -> Result<DoctorConfig, ConfigError> {
    let Some(r) = raw else {
        return Ok(DoctorConfig::default());
    };
    let upstream = match &r.upstream_idle_timeout_s {
        None => None,
        Some(_) => Some(to_u32(cx.int(
            &r.upstream_idle_timeout_s,
            "doctor.upstream_idle_timeout_s",
            1,
            7 * 86_400,
            0,
        )?)),
    };
    Ok(DoctorConfig {
        upstream_idle_timeout_s: upstream,
    })
}

/// `[auth]`: an absolute key file path, and a short printable cluster name.
fn auth_config(cx: &Ctx<'_>, raw: Option<RawAuth>) -> Result<AuthConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(AuthConfig::default());
    };
    let key_file = match raw.key_file {
        None => None,
        Some(f) => {
            let path = PathBuf::from(f.get_ref());
            if !path.is_absolute() {
                return cx.invalid(f.span().start, "auth.key_file", "must be an absolute path");
            }
            Some(path)
        }
    };
    let cluster = match raw.cluster {
        None => String::new(),
        Some(c) => {
            let name = c.get_ref();
            if name.len() > 64 || !name.chars().all(|ch| ch.is_ascii_graphic()) {
                return cx.invalid(
                    c.span().start,
                    "auth.cluster",
                    "at most 64 printable characters, no spaces",
                );
            }
            if key_file.is_none() {
                return cx.invalid(c.span().start, "auth.cluster", "needs auth.key_file");
            }
            name.clone()
        }
    };
    Ok(AuthConfig { key_file, cluster })
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn sync_config(cx: &Ctx<'_>, raw: Option<RawSync>) -> Result<SyncConfig, ConfigError> {
    let d = SyncConfig::default();
    let Some(r) = raw else { return Ok(d) };
    let mode = match &r.mode {
        None => d.mode,
        Some(s) => match s.get_ref().as_str() {
            "ftfw" => SyncMode::Ftfw,
            "notrack" => SyncMode::Notrack,
            "alarm" => SyncMode::Alarm,
            other => {
                return cx.invalid(
                    s.span().start,
                    "sync.mode",
                    format!("\"{other}\" is not one of \"ftfw\", \"notrack\", \"alarm\""),
                )
            }
        },
    };
    const DAY_MS: i64 = 86_400_000;
    let window = cx.int(&r.window, "sync.window", 1, 1 << 20, i64::from(d.window))?;
    let ack_every = cx.int(
        &r.ack_every,
        "sync.ack_every",
        1,
        1 << 20,
        i64::from(d.ack_every),
    )?;
    if ack_every > window {
        if let Some(s) = &r.ack_every {
            return cx.invalid(
                s.span().start,
                "sync.ack_every",
                format!("{ack_every} is larger than sync.window ({window})"),
            );
        }
        if let Some(s) = &r.window {
            return cx.invalid(
                s.span().start,
                "sync.window",
                format!("{window} is smaller than sync.ack_every ({ack_every})"),
            );
        }
    }
    let ack_delay_ms = cx.int(
        &r.ack_delay_ms,
        "sync.ack_delay_ms",
        0,
        60_000,
        d.ack_delay_ms as i64,
    )?;
    let keepalive_ms = cx.int(
        &r.keepalive_ms,
        "sync.keepalive_ms",
        10,
        DAY_MS,
        d.keepalive_ms as i64,
    )?;
    let rto_ms = cx.int(&r.rto_ms, "sync.rto_ms", 1, 600_000, d.rto_ms as i64)?;
    let peer_timeout_ms = cx.int(
        &r.peer_timeout_ms,
        "sync.peer_timeout_ms",
        1,
        DAY_MS,
        d.peer_timeout_ms as i64,
    )?;
    if peer_timeout_ms <= keepalive_ms {
        let (span, key) = match (&r.peer_timeout_ms, &r.keepalive_ms) {
            (Some(s), _) => (s.span().start, "sync.peer_timeout_ms"),
            (None, Some(s)) => (s.span().start, "sync.keepalive_ms"),
            (None, None) => (0, "sync.peer_timeout_ms"),
        };
        return cx.invalid(
            span,
            key,
            format!("sync.peer_timeout_ms ({peer_timeout_ms}) must be larger than sync.keepalive_ms ({keepalive_ms})"),
        );
    }
    let mtu = cx.int(&r.mtu, "sync.mtu", 576, 65535, i64::from(d.mtu))?;
    let purge = cx.int(
        &r.purge_timeout_s,
        "sync.purge_timeout_s",
        0,
        86_400,
        i64::from(d.purge_timeout_s),
    )?;
    let digest = cx.int(
        &r.digest_interval_ms,
        "sync.digest_interval_ms",
        0,
        86_400_000,
        d.digest_interval_ms as i64,
    )?;
    let batch_delay = cx.int(
        &r.batch_delay_ms,
        "sync.batch_delay_ms",
        0,
        1000,
        d.batch_delay_ms as i64,
    )?;
    let warm_timeout = cx.int(
        &r.warm_timeout_s,
        "sync.warm_timeout_s",
        1,
        i64::from(u32::MAX),
        i64::from(d.warm_timeout_s),
    )?;
    let refresh = cx.int(
        &r.alarm_refresh_s,
        "sync.alarm_refresh_s",
        1,
        86_400,
        i64::from(d.alarm_refresh_s),
    )?;
    let expire = cx.int(
        &r.alarm_timeout_s,
        "sync.alarm_timeout_s",
        1,
        86_400 * 7,
        i64::from(d.alarm_timeout_s),
    )?;
    if expire <= refresh {
        let span = r
            .alarm_timeout_s
            .as_ref()
            .or(r.alarm_refresh_s.as_ref())
            .map_or(0, |s| s.span().start);
        return cx.invalid(
            span,
            "sync.alarm_timeout_s",
            format!("sync.alarm_timeout_s ({expire}) must be larger than sync.alarm_refresh_s ({refresh})"),
        );
    }
    let max_peers = cx.int(
        &r.max_peers,
        "sync.max_peers",
        1,
        MAX_PEERS,
        i64::from(d.max_peers),
    )?;
    let max_flows_per_peer = cx.int(
        &r.max_flows_per_peer,
        "sync.max_flows_per_peer",
        1,
        MAX_FLOWS,
        d.max_flows_per_peer as i64,
    )?;
    let reorder_limit = cx.int(
        &r.reorder_limit,
        "sync.reorder_limit",
        1,
        MAX_REORDER,
        i64::from(d.reorder_limit),
    )?;
    if reorder_limit < window {
        let (span, key) = match (&r.reorder_limit, &r.window) {
            (Some(s), _) => (s.span().start, "sync.reorder_limit"),
            (None, Some(s)) => (s.span().start, "sync.window"),
            (None, None) => (0, "sync.reorder_limit"),
        };
        return cx.invalid(
            span,
            key,
            format!("sync.reorder_limit ({reorder_limit}) is smaller than sync.window ({window}): a live peer's datagrams would be dropped"),
        );
    }
    let reorder_max_bytes = cx.int(
        &r.reorder_max_bytes,
        "sync.reorder_max_bytes",
        MIN_REORDER_BYTES,
        MAX_REORDER_BYTES,
        d.reorder_max_bytes as i64,
    )?;
    let send_queue_max = cx.int(
        &r.send_queue_max,
        "sync.send_queue_max",
        MIN_SEND_QUEUE,
        MAX_FLOWS,
        d.send_queue_max as i64,
    )?;
    Ok(SyncConfig {
        mode,
        window: to_u32(window),
        ack_every: to_u32(ack_every),
        ack_delay_ms: to_u64(ack_delay_ms),
        keepalive_ms: to_u64(keepalive_ms),
        rto_ms: to_u64(rto_ms),
        peer_timeout_ms: to_u64(peer_timeout_ms),
        mtu: to_u32(mtu),
        purge_timeout_s: to_u32(purge),
        digest_interval_ms: to_u64(digest),
        batch_delay_ms: to_u64(batch_delay),
        warm_standby: r.warm_standby.unwrap_or(d.warm_standby),
        warm_timeout_s: to_u32(warm_timeout),
        alarm_refresh_s: to_u32(refresh),
        alarm_timeout_s: to_u32(expire),
        max_peers: to_u32(max_peers),
        max_flows_per_peer: to_u64(max_flows_per_peer),
        reorder_limit: to_u32(reorder_limit),
        reorder_max_bytes: to_u64(reorder_max_bytes),
        send_queue_max: to_u64(send_queue_max),
        expectations: expectations_config(cx, r.expectations.as_ref())?,
    })
}

/// `[sync] expectations`: "off", "all", or helper-name prefixes (each a
/// kernel helper name's start: letters, digits, '-' and '_', at most 16).
fn expectations_config(
    cx: &Ctx<'_>,
    raw: Option<&S<RawExpectations>>,
) -> Result<ExpectPolicy, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ExpectPolicy::Off);
    };
    let at = raw.span().start;
    let key = "sync.expectations";
    match raw.get_ref() {
        RawExpectations::Word(w) => match w.as_str() {
            "off" => Ok(ExpectPolicy::Off),
            "all" => Ok(ExpectPolicy::All),
            other => cx.invalid(
                at,
                key,
                format!("'{other}': expected \"off\", \"all\" or a list of helper names such as [\"ftp\", \"sip\"]"),
            ),
        },
        RawExpectations::Helpers(names) => {
            if names.is_empty() {
                return cx.invalid(
                    at,
                    key,
                    "empty list: name at least one helper, or write \"off\"",
                );
            }
            for name in names {
                let fine = !name.is_empty()
                    && name.len() <= crate::wire::MAX_HELPER_LEN
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !fine {
                    return cx.invalid(
                        at,
                        key,
                        format!("'{name}' is not a helper name (letters, digits, '-' and '_', at most 16)"),
                    );
                }
            }
            Ok(ExpectPolicy::Helpers(names.clone()))
        }
    }
}

fn links_config(
    cx: &Ctx<'_>,
    raw: &[S<RawLink>],
    mtu: u32,
) -> Result<Vec<LinkConfig>, ConfigError> {
    if raw.is_empty() {
        return cx.invalid(cx.text.len(), "link", "at least one [[link]] is required");
    }
    if raw.len() > MAX_LINKS {
        let span = raw.get(MAX_LINKS).map_or(0, |l| l.span().start);
        return cx.invalid(
            span,
            "link",
            format!(
                "at most {MAX_LINKS} [[link]] tables are supported, found {}",
                raw.len()
            ),
        );
    }
    let mut out: Vec<LinkConfig> = Vec::with_capacity(raw.len());
    for (i, sl) in raw.iter().enumerate() {
        let l = sl.get_ref();
        let k = |name: &str| format!("link[{i}].{name}");
        let transport = match l.transport.get_ref().as_str() {
            "udp" => Transport::Udp,
            "multicast" => Transport::Multicast,
            other => {
                return cx.invalid(
                    l.transport.span().start,
                    &k("transport"),
                    format!("\"{other}\" is not one of \"udp\", \"multicast\""),
                )
            }
        };
        let ifname = l.interface.get_ref();
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', '\t']) {
            return cx.invalid(
                l.interface.span().start,
                &k("interface"),
                format!("\"{ifname}\" is not a valid interface name (1 to 15 characters)"),
            );
        }
        let local = cx.addr(&l.local, &k("local"))?;
        if local.is_multicast() {
            return cx.invalid(
                l.local.span().start,
                &k("local"),
                format!("{local} is a multicast address; use a unicast address of this node"),
            );
        }
        let port = cx.int(&Some(l.port.clone()), &k("port"), 1, 65535, 0)?;
        let ts = l.transport.span().start;
        let (peer, group) = match transport {
            Transport::Udp => {
                if let Some(g) = &l.group {
                    return cx.invalid(
                        g.span().start,
                        &k("group"),
                        "not allowed for transport \"udp\" (use peer)",
                    );
                }
                let Some(p) = &l.peer else {
                    return cx.invalid(ts, &k("peer"), "required for transport \"udp\"");
                };
                let peer = cx.addr(p, &k("peer"))?;
                if peer.is_multicast() || peer.is_unspecified() {
                    return cx.invalid(
                        p.span().start,
                        &k("peer"),
                        format!("{peer} is not a unicast address"),
                    );
                }
                if peer.is_ipv4() != local.is_ipv4() {
                    return cx.invalid(
                        p.span().start,
                        &k("peer"),
                        format!("{peer} is not of the same address family as local ({local})"),
                    );
                }
                (Some(peer), None)
            }
            Transport::Multicast => {
                if let Some(p) = &l.peer {
                    return cx.invalid(
                        p.span().start,
                        &k("peer"),
                        "not allowed for transport \"multicast\" (use group)",
                    );
                }
                let Some(g) = &l.group else {
                    return cx.invalid(ts, &k("group"), "required for transport \"multicast\"");
                };
                let group = cx.addr(g, &k("group"))?;
                if !group.is_multicast() {
                    return cx.invalid(
                        g.span().start,
                        &k("group"),
                        format!("{group} is not a multicast address"),
                    );
                }
                if group.is_ipv4() != local.is_ipv4() {
                    return cx.invalid(
                        g.span().start,
                        &k("group"),
                        format!("{group} is not of the same address family as local ({local})"),
                    );
                }
                (None, Some(group))
            }
        };
        if local.is_ipv6() && mtu < 1280 {
            return cx.invalid(
                l.local.span().start,
                &k("local"),
                format!("IPv6 links need sync.mtu >= 1280 (it is {mtu})"),
            );
        }
        let node_ids = match &l.node_ids {
            None => None,
            Some(list) if list.get_ref().is_empty() => {
                return cx.invalid(
                    list.span().start,
                    &k("node_ids"),
                    "an empty list would accept nobody (leave the key out to accept any)",
                )
            }
            Some(list) => {
                let mut ids = Vec::with_capacity(list.get_ref().len());
                for id in list.get_ref() {
                    let n = cx.int(&Some(id.clone()), &k("node_ids"), 1, i64::from(u32::MAX), 0)?;
                    ids.push(u32::try_from(n).unwrap_or(0));
                }
                Some(ids)
            }
        };
        let protocol = match l
            .protocol
            .as_ref()
            .map(|p| (p.span().start, p.get_ref().as_str()))
        {
            None | Some((_, "ctsync")) => {
                if let Some(v) = &l.conntrackd_version {
                    return cx.invalid(
                        v.span().start,
                        &k("conntrackd_version"),
                        "only for a link with protocol = \"conntrackd\"",
                    );
                }
                LinkProtocol::Ctsync
            }
            Some((at, "conntrackd")) => {
                if let Some(ids) = &l.node_ids {
                    return cx.invalid(
                        ids.span().start,
                        &k("node_ids"),
                        "conntrackd's protocol carries no node ids",
                    );
                }
                if out
                    .iter()
                    .any(|o| matches!(o.protocol, LinkProtocol::Conntrackd(_)))
                {
                    return cx.invalid(
                        at,
                        &k("protocol"),
                        "only one link may speak conntrackd's protocol",
                    );
                }
                let version = match &l.conntrackd_version {
                    None => PeerLevel::V1_4_7,
                    Some(v) => PeerLevel::parse(v.get_ref()).map_or_else(
                        || {
                            cx.invalid(
                                v.span().start,
                                &k("conntrackd_version"),
                                format!(
                                    "\"{}\" is not a conntrackd 1.4 version (such as \"1.4.7\")",
                                    v.get_ref()
                                ),
                            )
                        },
                        Ok,
                    )?,
                };
                LinkProtocol::Conntrackd(version)
            }
            Some((at, other)) => {
                return cx.invalid(
                    at,
                    &k("protocol"),
                    format!("\"{other}\" is not one of \"ctsync\", \"conntrackd\""),
                )
            }
        };
        let link = LinkConfig {
            transport,
            interface: ifname.clone(),
            local,
            peer,
            group,
            port: u16::try_from(port).unwrap_or(0),
            node_ids,
            protocol,
        };
        if out
            .iter()
            .any(|o| o.local == link.local && o.port == link.port && o.interface == link.interface)
        {
            return cx.invalid(
                sl.span().start,
                &format!("link[{i}]"),
                "duplicates an earlier link (same interface, local and port)",
            );
        }
        out.push(link);
    }
    Ok(out)
}

fn kernel_config(cx: &Ctx<'_>, raw: Option<RawKernel>) -> Result<KernelConfig, ConfigError> {
    let d = KernelConfig::default();
    let Some(r) = raw else { return Ok(d) };
    const MAX: i64 = 1 << 31;
    let buf = cx.int(
        &r.netlink_buffer,
        "kernel.netlink_buffer",
        65_536,
        MAX,
        d.netlink_buffer as i64,
    )?;
    let max = cx.int(
        &r.netlink_buffer_max,
        "kernel.netlink_buffer_max",
        65_536,
        MAX,
        d.netlink_buffer_max as i64,
    )?;
    if max < buf {
        let span = r
            .netlink_buffer_max
            .as_ref()
            .or(r.netlink_buffer.as_ref())
            .map_or(0, |s| s.span().start);
        return cx.invalid(
            span,
            "kernel.netlink_buffer_max",
            format!(
                "kernel.netlink_buffer_max ({max}) is smaller than kernel.netlink_buffer ({buf})"
            ),
        );
    }
    let commit_timeout = match &r.commit_timeout {
        None => None,
        Some(_) => Some(to_u32(cx.int(
            &r.commit_timeout,
            "kernel.commit_timeout",
            1,
            i64::from(u32::MAX),
            0,
        )?)),
    };
    let reconcile_interval_s = cx.int(
        &r.reconcile_interval_s,
        "kernel.reconcile_interval_s",
        0,
        86_400,
        i64::from(d.reconcile_interval_s),
    )?;
    Ok(KernelConfig {
        netlink_buffer: to_u64(buf),
        netlink_buffer_max: to_u64(max),
        tcp_window_tracking: r.tcp_window_tracking.unwrap_or(d.tcp_window_tracking),
        commit_timeout,
        enable_events: r.enable_events.unwrap_or(d.enable_events),
        reconcile_interval_s: to_u32(reconcile_interval_s),
    })
}

fn daemon_config(cx: &Ctx<'_>, raw: Option<RawDaemon>) -> Result<DaemonConfig, ConfigError> {
    let d = DaemonConfig::default();
    let Some(r) = raw else { return Ok(d) };
    let pid_file = r
        .pid_file
        .as_ref()
        .map(|s| cx.path(s, "daemon.pid_file"))
        .transpose()?;
    let lock = r
        .lock
        .as_ref()
        .map(|s| cx.path(s, "daemon.lock"))
        .transpose()?;
    let log_level = match &r.log_level {
        None => d.log_level,
        Some(s) => {
            let v = s.get_ref();
            if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                return cx.invalid(
                    s.span().start,
                    "daemon.log_level",
                    format!(
                        "\"{v}\" is not one of \"error\", \"warn\", \"info\", \"debug\", \"trace\""
                    ),
                );
            }
            v.clone()
        }
    };
    let log_file = r
        .log_file
        .as_ref()
        .map(|s| cx.path(s, "daemon.log_file"))
        .transpose()?;
    let syslog = match &r.syslog {
        None => None,
        Some(s) => match SyslogFacility::by_name(s.get_ref()) {
            Some(f) => Some(f),
            None => {
                let names: Vec<String> = SyslogFacility::ALL
                    .iter()
                    .map(|(n, _)| format!("\"{n}\""))
                    .collect();
                return cx.invalid(
                    s.span().start,
                    "daemon.syslog",
                    format!(
                        "\"{}\" is not a facility: {}",
                        s.get_ref(),
                        names.join(", ")
                    ),
                );
            }
        },
    };
    let nice = match &r.nice {
        None => None,
        Some(_) => Some(cx.int(&r.nice, "daemon.nice", -20, 19, 0)? as i32),
    };
    let scheduler = scheduler_config(cx, &r)?;
    Ok(DaemonConfig {
        pid_file,
        lock,
        log_level,
        log_file,
        syslog,
        nice,
        scheduler,
    })
}

/// `scheduler = "rr" | "fifo" | "other"` with `scheduler_priority`
/// (1..=99, required for rr and fifo, not allowed for other).
fn scheduler_config(cx: &Ctx<'_>, r: &RawDaemon) -> Result<Option<Scheduler>, ConfigError> {
    let Some(s) = &r.scheduler else {
        if let Some(p) = &r.scheduler_priority {
            return cx.invalid(
                p.span().start,
                "daemon.scheduler_priority",
                "needs daemon.scheduler = \"rr\" or \"fifo\"",
            );
        }
        return Ok(None);
    };
    let policy = match s.get_ref().as_str() {
        "other" => SchedPolicy::Other,
        "rr" => SchedPolicy::Rr,
        "fifo" => SchedPolicy::Fifo,
        other => {
            return cx.invalid(
                s.span().start,
                "daemon.scheduler",
                format!("\"{other}\" is not one of \"other\", \"rr\", \"fifo\""),
            )
        }
    };
    let priority = match (policy, &r.scheduler_priority) {
        (SchedPolicy::Other, None) => 0,
        (SchedPolicy::Other, Some(p)) => {
            return cx.invalid(
                p.span().start,
                "daemon.scheduler_priority",
                "not used with scheduler = \"other\"",
            )
        }
        (_, None) => {
            return cx.invalid(
                s.span().start,
                "daemon.scheduler",
                "a real-time policy needs daemon.scheduler_priority (1..=99)",
            )
        }
        (_, Some(_)) => cx.int(&r.scheduler_priority, "daemon.scheduler_priority", 1, 99, 1)?,
    };
    Ok(Some(Scheduler {
        policy,
        priority: u8::try_from(priority).unwrap_or(1),
    }))
}

/// One directive the conntrackd agent would take from the hint: the byte
/// offset of its line in the file and its whitespace-separated fields.
struct HintLine<'a> {
    offset: usize,
    fields: Vec<&'a str>,
}

/// `[compat] conntrackd_ra_hint`. What Pacemaker's conntrackd agent sees is
/// the file's raw lines, not the TOML value, so the check reads the lines
/// the value spans exactly as the agent's awk does:
/// `/^[ \t]*UNIX[ \t]*{/,/^[ \t]*}/ { if ($1 == "Path") print $2 }` for
/// the socket, and lines whose first field is `LockFile` for the lock.
/// Exactly one `Path` must be there and name `socket`; a `LockFile`, if
/// any, must name `[daemon] lock`.
fn compat_config(
    cx: &Ctx<'_>,
    raw: Option<RawCompat>,
    socket: &Path,
    lock: Option<&Path>,
) -> Result<CompatConfig, ConfigError> {
    const KEY: &str = "compat.conntrackd_ra_hint";
    let Some(hint) = raw.and_then(|r| r.conntrackd_ra_hint) else {
        return Ok(CompatConfig::default());
    };
    let span = hint.span();
    let text = cx.text;
    // Whole lines: from the start of the line the value opens on to the end
    // of the line it closes on (awk splits on '\n' only; a '\r' stays).
    let first = text
        .get(..span.start)
        .and_then(|t| t.rfind('\n'))
        .map_or(0, |i| i + 1);
    let last = text
        .get(span.end..)
        .and_then(|t| t.find('\n'))
        .map_or(text.len(), |i| span.end + i);
    let blank = |c: char| c == ' ' || c == '\t';
    let mut offset = first;
    let mut in_unix = false;
    let mut unix_open: Option<usize> = None;
    let mut paths: Vec<HintLine<'_>> = Vec::new();
    let mut locks: Vec<HintLine<'_>> = Vec::new();
    for line in text.get(first..last).unwrap_or("").split('\n') {
        let fields: Vec<&str> = line.split(blank).filter(|f| !f.is_empty()).collect();
        let lead = line.trim_start_matches(blank);
        if !in_unix
            && lead
                .strip_prefix("UNIX")
                .is_some_and(|rest| rest.trim_start_matches(blank).starts_with('{'))
        {
            in_unix = true;
            unix_open = Some(offset);
        }
        if in_unix {
            if fields.first() == Some(&"Path") {
                paths.push(HintLine {
                    offset,
                    fields: fields.clone(),
                });
            }
            if lead.starts_with('}') {
                in_unix = false;
            }
        }
        if fields.first() == Some(&"LockFile") {
            locks.push(HintLine { offset, fields });
        }
        offset += line.len() + 1;
    }
    if in_unix {
        return cx.invalid(
            unix_open.unwrap_or(span.start),
            KEY,
            "the UNIX { block is not closed by a line starting with '}'",
        );
    }
    let want = socket.display().to_string();
    match paths.as_slice() {
        [] => {
            return cx.invalid(
                span.start,
                KEY,
                format!(
                    "no 'Path' line inside a 'UNIX {{' block: Pacemaker's conntrackd agent \
                     would find no socket (write one directive per line: 'UNIX {{', \
                     'Path {want}', '}}')"
                ),
            )
        }
        [p] => {
            let got = p.fields.get(1).copied().unwrap_or("");
            if p.fields.len() != 2 {
                return cx.invalid(
                    p.offset,
                    KEY,
                    "'Path' must be followed by exactly one path (no spaces)",
                );
            }
            if got != want {
                return cx.invalid(
                    p.offset,
                    KEY,
                    format!("Path {got} is not the configured socket ({want})"),
                );
            }
        }
        [_, second, ..] => {
            return cx.invalid(
                second.offset,
                KEY,
                "more than one 'Path' inside 'UNIX {' blocks: the agent would see a list",
            )
        }
    }
    match locks.as_slice() {
        [] => {}
        [l] => {
            let got = l.fields.get(1).copied().unwrap_or("");
            if l.fields.len() != 2 {
                return cx.invalid(
                    l.offset,
                    KEY,
                    "'LockFile' must be followed by exactly one path (no spaces)",
                );
            }
            match lock {
                None => {
                    return cx.invalid(
                        l.offset,
                        KEY,
                        format!("LockFile {got} is given but daemon.lock is not set"),
                    )
                }
                Some(lock) if lock != Path::new(got) => {
                    return cx.invalid(
                        l.offset,
                        KEY,
                        format!(
                            "LockFile {got} is not the configured daemon.lock ({})",
                            lock.display()
                        ),
                    )
                }
                Some(_) => {}
            }
        }
        [_, second, ..] => return cx.invalid(second.offset, KEY, "more than one 'LockFile' line"),
    }
    Ok(CompatConfig {
        conntrackd_ra_hint: Some(hint.into_inner()),
    })
}

fn filter_config(cx: &Ctx<'_>, raw: Option<RawFilter>) -> Result<FilterConfig, ConfigError> {
    let d = FilterConfig::default();
    let Some(r) = raw else { return Ok(d) };
    let sync_addresses = match &r.sync_addresses {
        None => d.sync_addresses,
        Some(s) => policy(cx, s, "filter.sync_addresses")?,
    };
    let protocol = r
        .protocol
        .as_ref()
        .map(|set| {
            rule_set(cx, set, "filter.protocol", |name| {
                protocol_by_name(name).ok_or_else(|| {
                    format!(
                        "unknown protocol \"{name}\": use tcp, udp, udplite, sctp, dccp, icmp, icmpv6, gre or a number 0..=255"
                    )
                })
            })
        })
        .transpose()?;
    let address = r
        .address
        .as_ref()
        .map(|set| {
            rule_set(cx, set, "filter.address", |text| {
                text.parse::<Cidr>().map_err(|e| e.to_string())
            })
        })
        .transpose()?;
    let tcp_state = r
        .tcp_state
        .as_ref()
        .map(|set| {
            rule_set(cx, set, "filter.tcp_state", |name| {
                tcp_state_by_name(name).ok_or_else(|| {
                    format!(
                        "unknown TCP state \"{name}\": use one of {}",
                        crate::flow::TCP_STATES.join(", ")
                    )
                })
            })
        })
        .transpose()?;
    Ok(FilterConfig {
        sync_addresses,
        protocol,
        address,
        tcp_state,
    })
}

fn policy(cx: &Ctx<'_>, s: &S<String>, key: &str) -> Result<Policy, ConfigError> {
    match Policy::parse(s.get_ref()) {
        Some(p) => Ok(p),
        None => cx.invalid(
            s.span().start,
            key,
            format!("\"{}\" is not one of \"accept\", \"ignore\"", s.get_ref()),
        ),
    }
}

/// One `{ policy, list }` set; `item` turns an entry into its value or a
/// reason, reported at the entry's line as `key.list[i]`.
fn rule_set<T>(
    cx: &Ctx<'_>,
    raw: &S<RawRuleSet>,
    key: &str,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<RuleSet<T>, ConfigError> {
    let r = raw.get_ref();
    let policy = policy(cx, &r.policy, &format!("{key}.policy"))?;
    if r.list.get_ref().is_empty() {
        return cx.invalid(
            r.list.span().start,
            &format!("{key}.list"),
            "empty list: remove the whole key to turn this rule set off",
        );
    }
    let list = r
        .list
        .get_ref()
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            item(entry.get_ref().trim()).or_else(|message| {
                cx.invalid(entry.span().start, &format!("{key}.list[{i}]"), message)
            })
        })
        .collect::<Result<Vec<T>, ConfigError>>()?;
    Ok(RuleSet { policy, list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_reorder_budget_holds_the_largest_datagram() {
        use crate::wire::{
            Message, WireRelated, MAX_EXPECTFN_LEN, MAX_HELPER_LEN, MAX_LABELS_LEN, MAX_MESSAGES,
        };
        // As `sync::rx::buffered_cost` counts it, at its largest.
        let flow = MAX_HELPER_LEN + MAX_LABELS_LEN + std::mem::size_of::<WireRelated>();
        let expectation =
            std::mem::size_of::<crate::expect::Expectation>() + MAX_HELPER_LEN + MAX_EXPECTFN_LEN;
        let message = std::mem::size_of::<Message>();
        // The most expectations a body can hold: as many as its smallest
        // encoding fits.
        let t = crate::flow::Tuple {
            src: std::net::Ipv4Addr::UNSPECIFIED.into(),
            dst: std::net::Ipv4Addr::UNSPECIFIED.into(),
            proto: 0,
            l4: crate::flow::L4::None,
        };
        let smallest = crate::expect::Expectation {
            zone: 0,
            master: t,
            tuple: t,
            mask: t,
            timeout: 0,
            flags: 0,
            class: 0,
            helper: None,
            nat: None,
            expectfn: None,
        };
        let fit = |m: &Message| {
            (crate::wire::MAX_BODY / crate::wire::encode_message(m).len()).min(MAX_MESSAGES)
        };
        let max_expectations = fit(&Message::ExpectUpsert(Box::new(smallest)));
        let mut related = crate::wire::WireFlow::from(&crate::flow::Flow::new(t));
        related.tail = crate::wire::WireTail::Related(Box::new(WireRelated {
            reply: None,
            master: None,
            seq_adj: None,
        }));
        let max_related = fit(&Message::Upsert(related));
        let plain = MAX_HELPER_LEN + MAX_LABELS_LEN;
        assert!(MAX_MESSAGES * (message + plain) <= MIN_REORDER_BYTES as usize);
        assert!(max_related * (message + flow) <= MIN_REORDER_BYTES as usize);
        assert!(max_expectations * (message + expectation) <= MIN_REORDER_BYTES as usize);
    }

    #[test]
    fn line_of_counts_newlines() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }

    #[test]
    fn table_at_indexes_array_tables() {
        let t = "x = 1\n[[link]]\na = 1\n[[link]]\nb = 2\n[sync]\nc = 3\n";
        assert_eq!(table_at(t, 0), "");
        assert_eq!(table_at(t, t.find("a =").unwrap()), "link[0]");
        assert_eq!(table_at(t, t.find("b =").unwrap()), "link[1]");
        assert_eq!(table_at(t, t.find("c =").unwrap()), "sync");
    }
}
