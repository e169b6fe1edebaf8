//! Which flows are synced.
//!
//! Owns: the decision, for one flow, whether it is replicated, and the
//! validated filter rules ([`FilterConfig`]) with the parsers for their
//! values (protocol names, TCP state names, addresses and CIDRs). The safe
//! default every sync daemon needs comes first: flows to or from the sync
//! links' own addresses are never synced (the sync traffic must not be
//! replicated). Then up to three rule sets as in conntrackd's `Filter`
//! block: protocols, addresses (original source and reply source), TCP
//! states, each an accept list or an ignore list; a flow must pass all.
//! Must not: do I/O, read TOML (config.rs maps the file onto
//! [`FilterConfig`]), or keep per-flow state: [`Filter::accepts`] is a pure
//! function of the flow, so a cached flow that stops passing can be deleted.

use crate::flow::{proto, Flow, ProtoState, TCP_STATES};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What a rule set does with the flows it lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Only the listed flows pass (conntrackd's `Accept`).
    Accept,
    /// The listed flows never pass (conntrackd's `Ignore`).
    Ignore,
}

impl Policy {
    /// `"accept"` or `"ignore"`, as written in the config.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "accept" => Some(Policy::Accept),
            "ignore" => Some(Policy::Ignore),
            _ => None,
        }
    }

    /// Whether a flow passes, given whether it matched the list.
    fn passes(self, matched: bool) -> bool {
        matched == (self == Policy::Accept)
    }
}

/// One rule set: a policy and what it lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleSet<T> {
    pub policy: Policy,
    pub list: Vec<T>,
}

/// The validated `[filter]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FilterConfig {
    /// `Ignore` (the default): flows whose original source, original
    /// destination or reply source is a sync link's own or peer address are
    /// never synced. `Accept`: no such default; only the rule sets apply.
    pub sync_addresses: Policy,
    /// IP protocol numbers.
    pub protocol: Option<RuleSet<u8>>,
    /// Addresses and networks, tested against the original source and the
    /// reply source.
    pub address: Option<RuleSet<Cidr>>,
    /// TCP conntrack states (`TCP_CONNTRACK_*`, the index in [`TCP_STATES`]).
    pub tcp_state: Option<RuleSet<u8>>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            sync_addresses: Policy::Ignore,
            protocol: None,
            address: None,
            tcp_state: None,
        }
    }
}

/// Protocol names accepted in `filter.protocol` (lowercase), with numbers.
pub const PROTOCOL_NAMES: [(&str, u8); 9] = [
    ("tcp", proto::TCP),
    ("udp", proto::UDP),
    ("udplite", proto::UDPLITE),
    ("sctp", proto::SCTP),
    ("dccp", proto::DCCP),
    ("icmp", proto::ICMP),
    ("icmpv6", proto::ICMPV6),
    ("ipv6-icmp", proto::ICMPV6),
    ("gre", proto::GRE),
];

/// An IP protocol by name (case-insensitive, see [`PROTOCOL_NAMES`]) or
/// by number (`0`..=`255`).
pub fn protocol_by_name(s: &str) -> Option<u8> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    PROTOCOL_NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s))
        .map(|&(_, n)| n)
}

/// A TCP conntrack state by name (case-insensitive, as in [`TCP_STATES`];
/// conntrackd's `CLOSED` is accepted for `CLOSE`).
pub fn tcp_state_by_name(s: &str) -> Option<u8> {
    if s.eq_ignore_ascii_case("CLOSED") {
        return tcp_state_by_name("CLOSE");
    }
    TCP_STATES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(s))
        .and_then(|i| u8::try_from(i).ok())
}

/// Why an address or CIDR was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("\"{0}\" is not an IPv4 or IPv6 address")]
    Address(String),
    #[error("\"{0}\" is not a prefix length of {1} (0..={2})")]
    Prefix(String, String, u8),
    #[error("\"{0}\" has bits set past the prefix; write {1}")]
    HostBits(String, Cidr),
}

/// An address with a prefix length: a network, or one host at the full
/// length (/32, /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`, if the prefix fits the family and no host bit is set.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let c = Cidr { addr, prefix };
        (prefix <= max_prefix(addr) && masked(addr, prefix) == bits(addr)).then_some(c)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True for a single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.prefix == max_prefix(self.addr)
    }

    /// True when `ip` is of the same family and inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == bits(self.addr)
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// The address as a number, IPv4 in the low 32 bits.
fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address as a number with the bits past `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> u128 {
    let width = u32::from(max_prefix(ip));
    let keep = u32::from(prefix).min(width);
    let host_bits = width - keep;
    // checked_shl: a shift by 128 (prefix 0 of IPv6) clears everything.
    let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
    bits(ip) & mask
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `198.18.0.1`, `198.18.0.0/15`, `2001:db8::1`, `2001:db8::/32`.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Address(s.to_string()))?;
        let max = max_prefix(addr);
        let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
        let prefix = match p {
            None => max,
            Some(p) => p
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| p.parse::<u8>().ok())
                .flatten()
                .filter(|&n| n <= max)
                .ok_or_else(|| CidrError::Prefix(p.to_string(), family.to_string(), max))?,
        };
        Cidr::new(addr, prefix).ok_or_else(|| {
            let net = Cidr {
                addr: from_bits(addr, masked(addr, prefix)),
                prefix,
            };
            CidrError::HostBits(s.to_string(), net)
        })
    }
}

fn from_bits(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(u32::try_from(n).unwrap_or(0).into()),
        IpAddr::V6(_) => IpAddr::V6(n.into()),
    }
}

impl fmt::Display for Cidr {
    /// A host prints as a bare address, a network as `addr/prefix`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// ---- compiled rules -------------------------------------------------------

/// Above this many networks, lookups go by prefix length instead of a scan.
const CIDR_SCAN_MAX: usize = 16;

/// Networks, for "is this address in any of them".
#[derive(Clone, Debug, Default)]
enum CidrSet {
    #[default]
    Empty,
    /// Few networks: a linear scan.
    Scan(Vec<Cidr>),
    /// Many: one hash set of masked addresses per (family, prefix length),
    /// so a lookup costs one hash probe per distinct length.
    ByLength(Vec<(bool, u8, HashSet<u128>)>),
}

impl CidrSet {
    fn new(nets: Vec<Cidr>) -> CidrSet {
        if nets.is_empty() {
            return CidrSet::Empty;
        }
        if nets.len() <= CIDR_SCAN_MAX {
            return CidrSet::Scan(nets);
        }
        let mut groups: HashMap<(bool, u8), HashSet<u128>> = HashMap::new();
        for n in nets {
            groups
                .entry((n.addr.is_ipv4(), n.prefix))
                .or_default()
                .insert(bits(n.addr));
        }
        let mut by_len: Vec<(bool, u8, HashSet<u128>)> =
            groups.into_iter().map(|((v4, p), s)| (v4, p, s)).collect();
        // Longest prefixes first: the usual case for a hit is a narrow net.
        by_len.sort_by_key(|g| std::cmp::Reverse(g.1));
        CidrSet::ByLength(by_len)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match self {
            CidrSet::Empty => false,
            CidrSet::Scan(nets) => nets.iter().any(|n| n.contains(ip)),
            CidrSet::ByLength(groups) => groups
                .iter()
                .filter(|(v4, _, _)| *v4 == ip.is_ipv4())
                .any(|(_, p, set)| set.contains(&masked(ip, *p))),
        }
    }
}

#[derive(Clone, Debug)]
struct ProtocolRule {
    policy: Policy,
    /// Bit n set = protocol n listed.
    listed: [u64; 4],
}

impl ProtocolRule {
    fn new(rule: &RuleSet<u8>) -> ProtocolRule {
        let mut listed = [0u64; 4];
        for &p in &rule.list {
            if let Some(word) = listed.get_mut(usize::from(p / 64)) {
                *word |= 1 << (p % 64);
            }
        }
        ProtocolRule {
            policy: rule.policy,
            listed,
        }
    }

    fn passes(&self, p: u8) -> bool {
        let listed = self
            .listed
            .get(usize::from(p / 64))
            .is_some_and(|w| w & (1 << (p % 64)) != 0);
        self.policy.passes(listed)
    }
}

#[derive(Clone, Debug)]
struct AddressRule {
    policy: Policy,
    hosts: HashSet<IpAddr>,
    nets: CidrSet,
}

impl AddressRule {
    fn new(rule: &RuleSet<Cidr>) -> AddressRule {
        let (hosts, nets): (Vec<Cidr>, Vec<Cidr>) = rule.list.iter().partition(|c| c.is_host());
        AddressRule {
            policy: rule.policy,
            hosts: hosts.into_iter().map(|c| c.addr).collect(),
            nets: CidrSet::new(nets),
        }
    }

    /// conntrackd's test: the original source or the reply source (the real
    /// peer after DNAT) is listed; never the original destination.
    fn passes(&self, flow: &Flow) -> bool {
        let listed = |ip: IpAddr| self.hosts.contains(&ip) || self.nets.contains(ip);
        self.policy
            .passes(listed(flow.orig.src) || listed(flow.reply.src))
    }
}

#[derive(Clone, Debug)]
struct TcpStateRule {
    policy: Policy,
    /// Bit n set = state n listed.
    listed: u32,
}

impl TcpStateRule {
    fn new(rule: &RuleSet<u8>) -> TcpStateRule {
        let listed = rule
            .list
            .iter()
            .filter_map(|&s| 1u32.checked_shl(u32::from(s)))
            .fold(0, |acc, bit| acc | bit);
        TcpStateRule {
            policy: rule.policy,
            listed,
        }
    }

    /// As conntrackd: only TCP flows with a known state are tested; every
    /// other flow passes.
    fn passes(&self, flow: &Flow) -> bool {
        match flow.state {
            ProtoState::Tcp { state, .. } if flow.orig.proto == proto::TCP => {
                let listed = 1u32
                    .checked_shl(u32::from(state))
                    .is_some_and(|bit| self.listed & bit != 0);
                self.policy.passes(listed)
            }
            _ => true,
        }
    }
}

/// The set of rules a flow must pass to be replicated.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    ignored_addresses: HashSet<IpAddr>,
    protocol: Option<ProtocolRule>,
    address: Option<AddressRule>,
    tcp_state: Option<TcpStateRule>,
}

impl Filter {
    /// A filter that ignores flows touching any of `addresses` (the sync
    /// links' local and peer addresses), and nothing else.
    pub fn ignoring(addresses: impl IntoIterator<Item = IpAddr>) -> Filter {
        Filter {
            ignored_addresses: addresses.into_iter().collect(),
            ..Filter::default()
        }
    }

    /// The filter a `[filter]` section describes. `sync_addresses` are the
    /// sync links' own and peer addresses; flows touching them are ignored
    /// unless `config.sync_addresses` is `Accept`.
    pub fn from_config(
        config: &FilterConfig,
        sync_addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Filter {
        let ignored_addresses = match config.sync_addresses {
            Policy::Ignore => sync_addresses.into_iter().collect(),
            Policy::Accept => HashSet::new(),
        };
        Filter {
            ignored_addresses,
            protocol: config.protocol.as_ref().map(ProtocolRule::new),
            address: config.address.as_ref().map(AddressRule::new),
            tcp_state: config.tcp_state.as_ref().map(TcpStateRule::new),
        }
    }

    /// True when the flow is replicated: it touches no ignored sync address
    /// (original source, original destination or reply source), and passes
    /// every configured rule set.
    pub fn accepts(&self, flow: &Flow) -> bool {
        let touched = [flow.orig.src, flow.orig.dst, flow.reply.src];
        if touched.iter().any(|a| self.ignored_addresses.contains(a)) {
            return false;
        }
        self.protocol
            .as_ref()
            .is_none_or(|r| r.passes(flow.orig.proto))
            && self.address.as_ref().is_none_or(|r| r.passes(flow))
            && self.tcp_state.as_ref().is_none_or(|r| r.passes(flow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Tuple, L4};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn flow(p: u8, src: &str, dst: &str) -> Flow {
        let l4 = match p {
            proto::ICMP | proto::ICMPV6 => L4::Icmp {
                kind: 8,
                code: 0,
                id: 1,
            },
            _ => L4::Ports {
                src: 40000,
                dst: 80,
            },
        };
        Flow::new(Tuple {
            src: ip(src),
            dst: ip(dst),
            proto: p,
            l4,
        })
    }

    fn udp(src: &str, dst: &str) -> Flow {
        flow(proto::UDP, src, dst)
    }

    fn tcp_in(state: &str) -> Flow {
        let mut f = flow(proto::TCP, "198.18.1.1", "198.18.2.2");
        f.state = ProtoState::Tcp {
            state: tcp_state_by_name(state).unwrap(),
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0,
            flags_reply: 0,
        };
        f
    }

    /// The flow after DNAT of its destination to `real`.
    fn dnat(mut f: Flow, real: &str) -> Flow {
        f.reply.src = ip(real);
        f
    }

    fn only(config: FilterConfig) -> Filter {
        Filter::from_config(&config, [])
    }

    fn protocols(policy: Policy, list: &[u8]) -> Filter {
        only(FilterConfig {
            protocol: Some(RuleSet {
                policy,
                list: list.to_vec(),
            }),
            ..FilterConfig::default()
        })
    }

    fn addresses(policy: Policy, list: &[&str]) -> Filter {
        only(FilterConfig {
            address: Some(RuleSet {
                policy,
                list: list.iter().map(|s| s.parse().unwrap()).collect(),
            }),
            ..FilterConfig::default()
        })
    }

    fn states(policy: Policy, list: &[&str]) -> Filter {
        only(FilterConfig {
            tcp_state: Some(RuleSet {
                policy,
                list: list.iter().map(|s| tcp_state_by_name(s).unwrap()).collect(),
            }),
            ..FilterConfig::default()
        })
    }

    #[test]
    fn sync_link_addresses_are_ignored_in_either_direction() {
        let f = Filter::ignoring([ip("198.18.0.1"), ip("198.18.0.2")]);
        assert!(!f.accepts(&udp("198.18.0.1", "198.18.0.2")));
        assert!(!f.accepts(&udp("198.18.9.9", "198.18.0.2")));
        assert!(!f.accepts(&dnat(udp("198.18.9.9", "198.18.9.10"), "198.18.0.1")));
        assert!(f.accepts(&udp("198.18.9.9", "198.18.9.10")));
    }

    #[test]
    fn default_filter_accepts_everything() {
        assert!(Filter::default().accepts(&udp("198.18.0.1", "198.18.0.2")));
        assert!(only(FilterConfig::default()).accepts(&udp("198.18.0.1", "198.18.0.2")));
    }

    #[test]
    fn sync_addresses_stay_ignored_with_rules_unless_accepted() {
        let mut config = FilterConfig {
            protocol: Some(RuleSet {
                policy: Policy::Accept,
                list: vec![proto::UDP],
            }),
            ..FilterConfig::default()
        };
        let sync = [ip("198.18.0.1"), ip("198.18.0.2")];
        let sync_flow = udp("198.18.0.1", "198.18.0.2");
        let other = udp("198.18.9.9", "198.18.9.10");
        let f = Filter::from_config(&config, sync);
        assert!(!f.accepts(&sync_flow));
        assert!(f.accepts(&other));
        config.sync_addresses = Policy::Accept;
        let f = Filter::from_config(&config, sync);
        assert!(f.accepts(&sync_flow));
        assert!(f.accepts(&other));
        // The rules still apply to the sync flows.
        assert!(!f.accepts(&flow(proto::TCP, "198.18.0.1", "198.18.0.2")));
    }

    #[test]
    fn protocol_accept_list_passes_only_listed() {
        let f = protocols(Policy::Accept, &[proto::TCP, proto::UDP]);
        assert!(f.accepts(&flow(proto::TCP, "198.18.1.1", "198.18.2.2")));
        assert!(f.accepts(&flow(proto::UDP, "198.18.1.1", "198.18.2.2")));
        assert!(!f.accepts(&flow(proto::ICMP, "198.18.1.1", "198.18.2.2")));
        assert!(!f.accepts(&flow(proto::SCTP, "198.18.1.1", "198.18.2.2")));
        assert!(!f.accepts(&flow(255, "198.18.1.1", "198.18.2.2")));
    }

    #[test]
    fn protocol_ignore_list_passes_all_but_listed() {
        let f = protocols(Policy::Ignore, &[proto::ICMP, proto::ICMPV6, 255]);
        assert!(f.accepts(&flow(proto::TCP, "198.18.1.1", "198.18.2.2")));
        assert!(!f.accepts(&flow(proto::ICMP, "198.18.1.1", "198.18.2.2")));
        assert!(!f.accepts(&flow(proto::ICMPV6, "2001:db8::1", "2001:db8::2")));
        assert!(!f.accepts(&flow(255, "198.18.1.1", "198.18.2.2")));
        assert!(f.accepts(&flow(0, "198.18.1.1", "198.18.2.2")));
    }

    #[test]
    fn address_accept_tests_orig_src_and_reply_src_not_orig_dst() {
        let f = addresses(
            Policy::Accept,
            &["198.18.1.1", "198.19.0.0/16", "2001:db8:5::/64"],
        );
        // Exact host as original source.
        assert!(f.accepts(&udp("198.18.1.1", "198.18.2.2")));
        // Exact host as reply source: the flow was answered by it.
        assert!(f.accepts(&udp("198.18.2.2", "198.18.1.1")));
        // CIDR as original source.
        assert!(f.accepts(&udp("198.19.7.7", "198.18.2.2")));
        // Only the original destination is listed, no NAT: the reply source
        // is that address, so it passes...
        assert!(f.accepts(&udp("198.18.3.3", "198.19.7.7")));
        // ...but after DNAT to an unlisted host the original destination
        // alone does not count.
        assert!(!f.accepts(&dnat(udp("198.18.3.3", "198.19.7.7"), "198.18.4.4")));
        // And DNAT to a listed host passes though neither orig address is.
        assert!(f.accepts(&dnat(udp("198.18.3.3", "198.18.5.5"), "198.19.0.9")));
        assert!(!f.accepts(&udp("198.18.3.3", "198.18.4.4")));
        // IPv6: the CIDR, and an unlisted network.
        assert!(f.accepts(&udp("2001:db8:5::9", "2001:db8:6::1")));
        assert!(!f.accepts(&udp("2001:db8:6::9", "2001:db8:7::1")));
    }

    #[test]
    fn address_ignore_drops_listed_orig_src_or_reply_src() {
        let f = addresses(
            Policy::Ignore,
            &["198.18.1.1", "198.19.0.0/16", "2001:db8:5::/64"],
        );
        assert!(!f.accepts(&udp("198.18.1.1", "198.18.2.2")));
        assert!(!f.accepts(&udp("198.18.2.2", "198.18.1.1")));
        assert!(!f.accepts(&udp("198.19.255.255", "198.18.2.2")));
        assert!(!f.accepts(&udp("2001:db8:5::1", "2001:db8:9::1")));
        assert!(f.accepts(&udp("198.18.3.3", "198.18.4.4")));
        assert!(f.accepts(&udp("2001:db8:6::1", "2001:db8:9::1")));
        // Original destination listed, but DNAT sends it elsewhere: passes.
        assert!(f.accepts(&dnat(udp("198.18.3.3", "198.18.1.1"), "198.18.4.4")));
        // DNAT to a listed host: dropped.
        assert!(!f.accepts(&dnat(udp("198.18.3.3", "198.18.4.4"), "198.19.1.1")));
    }

    #[test]
    fn address_only_hosts_or_only_networks_work_alone() {
        // conntrackd before its fix rejected everything under Accept when
        // only one of the two kinds was listed.
        let hosts = addresses(Policy::Accept, &["198.18.1.1"]);
        assert!(hosts.accepts(&udp("198.18.1.1", "198.18.2.2")));
        assert!(!hosts.accepts(&udp("198.18.1.2", "198.18.2.2")));
        let nets = addresses(Policy::Accept, &["0.0.0.0/0"]);
        assert!(nets.accepts(&udp("198.18.1.2", "198.18.2.2")));
        assert!(!nets.accepts(&udp("2001:db8::1", "2001:db8::2")));
        let all6 = addresses(Policy::Ignore, &["::/0"]);
        assert!(!all6.accepts(&udp("2001:db8::1", "2001:db8::2")));
        assert!(all6.accepts(&udp("198.18.1.2", "198.18.2.2")));
    }

    #[test]
    fn tcp_state_accept_list() {
        let f = states(
            Policy::Accept,
            &["ESTABLISHED", "CLOSE", "TIME_WAIT", "CLOSE_WAIT"],
        );
        assert!(f.accepts(&tcp_in("ESTABLISHED")));
        assert!(f.accepts(&tcp_in("TIME_WAIT")));
        assert!(f.accepts(&tcp_in("CLOSED")));
        assert!(!f.accepts(&tcp_in("SYN_SENT")));
        assert!(!f.accepts(&tcp_in("FIN_WAIT")));
        // TCP without a known state, and other protocols, are not tested.
        assert!(f.accepts(&flow(proto::TCP, "198.18.1.1", "198.18.2.2")));
        assert!(f.accepts(&udp("198.18.1.1", "198.18.2.2")));
        let mut sctp = flow(proto::SCTP, "198.18.1.1", "198.18.2.2");
        sctp.state = ProtoState::Sctp {
            state: 4,
            vtag_orig: 1,
            vtag_reply: 2,
        };
        assert!(f.accepts(&sctp));
        // A state number past the table is not listed.
        let mut odd = tcp_in("ESTABLISHED");
        if let ProtoState::Tcp { state, .. } = &mut odd.state {
            *state = 200;
        }
        assert!(!f.accepts(&odd));
    }

    #[test]
    fn tcp_state_ignore_list() {
        let f = states(Policy::Ignore, &["SYN_SENT", "SYN_RECV"]);
        assert!(!f.accepts(&tcp_in("SYN_SENT")));
        assert!(!f.accepts(&tcp_in("SYN_RECV")));
        assert!(f.accepts(&tcp_in("ESTABLISHED")));
        assert!(f.accepts(&udp("198.18.1.1", "198.18.2.2")));
    }

    #[test]
    fn all_sets_must_pass() {
        let f = only(FilterConfig {
            sync_addresses: Policy::Ignore,
            protocol: Some(RuleSet {
                policy: Policy::Accept,
                list: vec![proto::TCP, proto::UDP],
            }),
            address: Some(RuleSet {
                policy: Policy::Ignore,
                list: vec!["198.18.7.0/24".parse().unwrap()],
            }),
            tcp_state: Some(RuleSet {
                policy: Policy::Accept,
                list: vec![tcp_state_by_name("ESTABLISHED").unwrap()],
            }),
        });
        let est = tcp_in("ESTABLISHED");
        assert!(f.accepts(&est));
        assert!(!f.accepts(&tcp_in("SYN_SENT")), "state set");
        let mut ignored = est.clone();
        ignored.orig.src = ip("198.18.7.77");
        assert!(!f.accepts(&ignored), "address set");
        assert!(
            !f.accepts(&flow(proto::ICMP, "198.18.3.1", "198.18.2.2")),
            "protocol set"
        );
        assert!(f.accepts(&udp("198.18.3.1", "198.18.2.2")));
    }

    #[test]
    fn accepts_is_a_pure_function_of_the_flow() {
        let f = states(Policy::Accept, &["ESTABLISHED"]);
        let est = tcp_in("ESTABLISHED");
        let closing = tcp_in("FIN_WAIT");
        for _ in 0..3 {
            assert!(f.accepts(&est));
            assert!(!f.accepts(&closing));
        }
    }

    #[test]
    fn many_networks_use_the_length_index_with_the_same_answers() {
        let mut list: Vec<String> = (0..40).map(|i| format!("198.18.{i}.0/24")).collect();
        list.push("198.19.0.0/16".into());
        list.push("2001:db8:1::/48".into());
        list.push("2001:db8:2:3::/64".into());
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let f = addresses(Policy::Accept, &refs);
        assert!(matches!(
            f.address.as_ref().unwrap().nets,
            CidrSet::ByLength(_)
        ));
        assert!(f.accepts(&udp("198.18.39.200", "198.18.200.1")));
        assert!(!f.accepts(&udp("198.18.40.1", "198.18.200.1")));
        assert!(f.accepts(&udp("198.19.255.1", "198.18.200.1")));
        assert!(f.accepts(&udp("2001:db8:1:ffff::1", "2001:db8:9::1")));
        assert!(f.accepts(&udp("2001:db8:2:3::1", "2001:db8:9::1")));
        assert!(!f.accepts(&udp("2001:db8:2:4::1", "2001:db8:9::1")));
        // The same rules scanned linearly agree on a sweep of addresses.
        let nets: Vec<Cidr> = refs.iter().map(|s| s.parse().unwrap()).collect();
        for a in 0..=255u8 {
            for b in [0u8, 1, 39, 40, 255] {
                let probe = IpAddr::from([198, 18 + (a % 2), a, b]);
                let scan = nets.iter().any(|n| n.contains(probe));
                assert_eq!(
                    f.address.as_ref().unwrap().nets.contains(probe),
                    scan,
                    "{probe}"
                );
            }
        }
    }

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "198.18.0.0/15".parse().unwrap();
        assert_eq!((c.addr(), c.prefix()), (ip("198.18.0.0"), 15));
        assert!(c.contains(ip("198.19.255.255")));
        assert!(!c.contains(ip("198.20.0.0")));
        assert!(!c.contains(ip("::ffff:198.18.0.1")));
        let h: Cidr = "198.18.0.1".parse().unwrap();
        assert!(h.is_host());
        assert_eq!(h, "198.18.0.1/32".parse().unwrap());
        assert_eq!(h.to_string(), "198.18.0.1");
        assert_eq!(c.to_string(), "198.18.0.0/15");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")));
        let six: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(six.contains(ip("2001:db8:ffff::1")));
        assert!(!six.contains(ip("2001:db9::1")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
        assert!("2001:db8::1/128".parse::<Cidr>().unwrap().is_host());
    }

    #[test]
    fn cidr_errors() {
        assert_eq!(
            "198.18.0/24".parse::<Cidr>(),
            Err(CidrError::Address("198.18.0/24".into()))
        );
        assert_eq!(
            "198.18.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix("33".into(), "IPv4".into(), 32))
        );
        assert_eq!(
            "2001:db8::/129".parse::<Cidr>(),
            Err(CidrError::Prefix("129".into(), "IPv6".into(), 128))
        );
        for bad in [
            "198.18.0.0/",
            "198.18.0.0/+8",
            "198.18.0.0/ 8",
            "198.18.0.0/8/8",
            "x/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let e = "198.18.1.0/16".parse::<Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"198.18.1.0/16\" has bits set past the prefix; write 198.18.0.0/16"
        );
        assert!("2001:db8::1/64".parse::<Cidr>().is_err());
    }

    #[test]
    fn names() {
        assert_eq!(protocol_by_name("tcp"), Some(6));
        assert_eq!(protocol_by_name("TCP"), Some(6));
        assert_eq!(protocol_by_name("IPv6-ICMP"), Some(58));
        assert_eq!(protocol_by_name("udplite"), Some(136));
        assert_eq!(protocol_by_name("47"), Some(47));
        assert_eq!(protocol_by_name("256"), None);
        assert_eq!(protocol_by_name("-1"), None);
        assert_eq!(protocol_by_name("tpc"), None);
        assert_eq!(protocol_by_name(""), None);
        assert_eq!(tcp_state_by_name("established"), Some(3));
        assert_eq!(tcp_state_by_name("CLOSED"), Some(8));
        assert_eq!(tcp_state_by_name("CLOSE"), Some(8));
        assert_eq!(tcp_state_by_name("TIME_WAIT"), Some(7));
        assert_eq!(tcp_state_by_name("ESTABLISH"), None);
    }
}
