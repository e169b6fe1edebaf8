//! A `Flow` as conntrackd's conntrack attributes (§3.5, §3.6, §3.9): the
//! encoder in 1.4.7's emission order with the x86 traps (SPAT/DPAT and the
//! ICMP id little-endian), the peer's protocol level, and the decoder that
//! rebuilds the reply tuple from the NAT attributes.
//!
//! Owns: the attribute ids and sizes of message types 0–2 and `Codec`, the
//! settings that change what is sent. Must not: frame messages into
//! datagrams, keep state, or trust a byte of its input.

use super::header::Reject;
use super::tlv::{walk, Builder, Size};
use crate::flow::{proto, Flow, Nat, NatBinding, ProtoState, SeqAdj, SeqAdjDir, Tuple, L4};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Conntrack attribute ids (`NTA_*`).
pub mod nta {
    pub const IPV4: u16 = 0;
    pub const IPV6: u16 = 1;
    pub const L4PROTO: u16 = 2;
    pub const PORT: u16 = 3;
    pub const TCP_STATE: u16 = 4;
    pub const STATUS: u16 = 5;
    pub const TIMEOUT: u16 = 6;
    pub const MARK: u16 = 7;
    pub const MASTER_IPV4: u16 = 8;
    pub const MASTER_IPV6: u16 = 9;
    pub const MASTER_L4PROTO: u16 = 10;
    pub const MASTER_PORT: u16 = 11;
    pub const SNAT_IPV4: u16 = 12;
    pub const DNAT_IPV4: u16 = 13;
    pub const SPAT_PORT: u16 = 14;
    pub const DPAT_PORT: u16 = 15;
    pub const NAT_SEQ_ADJ: u16 = 16;
    pub const SCTP_STATE: u16 = 17;
    pub const SCTP_VTAG_ORIG: u16 = 18;
    pub const SCTP_VTAG_REPL: u16 = 19;
    pub const DCCP_STATE: u16 = 20;
    pub const DCCP_ROLE: u16 = 21;
    pub const ICMP_TYPE: u16 = 22;
    pub const ICMP_CODE: u16 = 23;
    pub const ICMP_ID: u16 = 24;
    pub const TCP_WSCALE_ORIG: u16 = 25;
    pub const TCP_WSCALE_REPL: u16 = 26;
    pub const HELPER_NAME: u16 = 27;
    pub const LABELS: u16 = 28;
    pub const SNAT_IPV6: u16 = 29;
    pub const DNAT_IPV6: u16 = 30;
    pub const SYNPROXY: u16 = 31;
    pub const ZONE: u16 = 32;
    /// 1.4.7's `NTA_MAX`: the receiver refuses any id from here on.
    pub const MAX: u16 = 33;
}

/// Longest helper name conntrackd carries: `nta_len` ≤ 16 with the NUL.
pub const MAX_HELPER_NAME: usize = 11;
/// Longest labels attribute accepted (`nta_len`).
const MAX_LABELS_LEN: u16 = 1028;

/// What version of conntrackd the peer runs, as far as the attributes it
/// accepts go (§3.9): a receiver refuses a whole message with an id at or
/// above its `NTA_MAX`, so newer attributes are left out for older peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub enum PeerLevel {
    /// ≤ 1.4.1: up to HELPER_NAME.
    V1_4_1,
    /// 1.4.2–1.4.3: adds LABELS.
    V1_4_2,
    /// 1.4.4: adds SNAT/DNAT_IPV6.
    V1_4_4,
    /// 1.4.5–1.4.6: adds SYNPROXY (which ctsync never sends).
    V1_4_5,
    /// ≥ 1.4.7: adds ZONE; NAT IPv4 addresses in network order.
    #[default]
    V1_4_7,
}

impl PeerLevel {
    /// The peer's `NTA_MAX`.
    pub fn nta_max(self) -> u16 {
        match self {
            PeerLevel::V1_4_1 => 28,
            PeerLevel::V1_4_2 => 29,
            PeerLevel::V1_4_4 => 31,
            PeerLevel::V1_4_5 => 32,
            PeerLevel::V1_4_7 => nta::MAX,
        }
    }

    /// Before 1.4.7 an x86 sender byte-swapped the NAT IPv4 addresses
    /// (§3.6); a receiver of that level swaps them back.
    pub fn swaps_nat_ipv4(self) -> bool {
        self < PeerLevel::V1_4_7
    }

    /// Parse "1.4.7", "1.4.6", ... (any 1.4.x, and 1.4 alone as 1.4.0).
    pub fn parse(s: &str) -> Option<PeerLevel> {
        let mut parts = s.trim().split('.');
        let (major, minor) = (parts.next()?, parts.next()?);
        let patch: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        if major != "1" || minor != "4" || parts.next().is_some() {
            return None;
        }
        Some(match patch {
            0 | 1 => PeerLevel::V1_4_1,
            2 | 3 => PeerLevel::V1_4_2,
            4 => PeerLevel::V1_4_4,
            5 | 6 => PeerLevel::V1_4_5,
            _ => PeerLevel::V1_4_7,
        })
    }
}

/// The settings that change what goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    pub level: PeerLevel,
    /// Send the timeout (conntrackd sends it unless `CommitTimeout` is set).
    pub send_timeout: bool,
    /// `TCPWindowTracking on`: send the TCP window scales.
    pub tcp_window_tracking: bool,
}

impl Default for Codec {
    fn default() -> Codec {
        Codec {
            level: PeerLevel::V1_4_7,
            send_timeout: true,
            tcp_window_tracking: false,
        }
    }
}

/// The 16-bit fields an x86 conntrackd writes little-endian (§3.6).
fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

fn addr_pair(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    for a in [src, dst] {
        match a {
            IpAddr::V4(v) => p.extend_from_slice(&v.octets()),
            IpAddr::V6(v) => p.extend_from_slice(&v.octets()),
        }
    }
    p
}

fn ports(src: u16, dst: u16) -> [u8; 4] {
    let (s, d) = (src.to_be_bytes(), dst.to_be_bytes());
    [s[0], s[1], d[0], d[1]]
}

/// Does conntrackd 1.4.7 have a port builder for this protocol?
pub fn has_port_builder(p: u8) -> bool {
    matches!(p, proto::TCP | proto::UDP | proto::SCTP | proto::DCCP)
}

impl Codec {
    fn allowed(&self, id: u16) -> bool {
        id < self.level.nta_max()
    }

    /// The attributes of `flow` (after the header), in conntrackd 1.4.7's
    /// order. What the peer's level does not know is left out; so is a
    /// helper name longer than `MAX_HELPER_NAME`, and the ports or keys of
    /// protocols conntrackd has no builder for (GRE, UDP-Lite).
    pub fn encode_flow(&self, b: &mut Builder, flow: &Flow) {
        let o = &flow.orig;
        let v6 = o.is_ipv6();
        b.put(
            if v6 { nta::IPV6 } else { nta::IPV4 },
            &addr_pair(o.src, o.dst),
        );
        b.put_be32(nta::STATUS, flow.status);
        b.put_u8(nta::L4PROTO, o.proto);
        self.encode_l4(b, flow);
        if self.send_timeout {
            b.put_be32(nta::TIMEOUT, flow.timeout);
        }
        b.put_be32(nta::MARK, flow.mark);
        if let Some(m) = &flow.master {
            let id = if m.is_ipv6() {
                nta::MASTER_IPV6
            } else {
                nta::MASTER_IPV4
            };
            b.put(id, &addr_pair(m.src, m.dst));
            b.put_u8(nta::MASTER_L4PROTO, m.proto);
            if let L4::Ports { src, dst } = m.l4 {
                b.put(nta::MASTER_PORT, &ports(src, dst));
            }
        }
        self.encode_nat(b, flow);
        if let Some(adj) = &flow.seq_adj {
            let mut p = Vec::with_capacity(24);
            for d in [adj.orig, adj.reply] {
                for v in [d.correction_pos, d.offset_before, d.offset_after] {
                    p.extend_from_slice(&v.to_be_bytes());
                }
            }
            b.put(nta::NAT_SEQ_ADJ, &p);
        }
        if let Some(h) = flow.helper.as_deref() {
            if h.len() <= MAX_HELPER_NAME && !h.contains('\0') {
                b.put_str(nta::HELPER_NAME, h);
            }
        }
        if let Some(l) = &flow.labels {
            if self.allowed(nta::LABELS) && l.iter().any(|x| *x != 0) {
                b.put(nta::LABELS, &labels_to_words(l));
            }
        }
        if flow.zone != 0 && self.allowed(nta::ZONE) {
            b.put_be16(nta::ZONE, flow.zone);
        }
    }

    fn encode_l4(&self, b: &mut Builder, flow: &Flow) {
        let o = &flow.orig;
        match o.l4 {
            L4::Icmp { kind, code, id } => {
                b.put_u8(nta::ICMP_TYPE, kind);
                b.put_u8(nta::ICMP_CODE, code);
                b.put(nta::ICMP_ID, &le16(id));
            }
            L4::Ports { src, dst } if has_port_builder(o.proto) => {
                b.put(nta::PORT, &ports(src, dst));
                match flow.state {
                    ProtoState::Tcp {
                        state,
                        wscale_orig,
                        wscale_reply,
                        ..
                    } if o.proto == proto::TCP => {
                        b.put_u8(nta::TCP_STATE, state);
                        if self.tcp_window_tracking {
                            b.put_u8(nta::TCP_WSCALE_ORIG, wscale_orig);
                            b.put_u8(nta::TCP_WSCALE_REPL, wscale_reply);
                        }
                    }
                    ProtoState::Sctp {
                        state,
                        vtag_orig,
                        vtag_reply,
                    } if o.proto == proto::SCTP => {
                        b.put_u8(nta::SCTP_STATE, state);
                        b.put_be32(nta::SCTP_VTAG_ORIG, vtag_orig);
                        b.put_be32(nta::SCTP_VTAG_REPL, vtag_reply);
                    }
                    ProtoState::Dccp { state, role } if o.proto == proto::DCCP => {
                        b.put_u8(nta::DCCP_STATE, state);
                        b.put_u8(nta::DCCP_ROLE, role);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn encode_nat(&self, b: &mut Builder, flow: &Flow) {
        let nat = flow.nat();
        let inv = flow.orig.inverted();
        let swap = self.level.swaps_nat_ipv4();
        let put_addr = |b: &mut Builder, a: IpAddr, id4: u16, id6: u16| match a {
            IpAddr::V4(v) => {
                let mut o = v.octets();
                if swap {
                    o.reverse();
                }
                b.put(id4, &o);
            }
            IpAddr::V6(v) => {
                if self.allowed(id6) {
                    b.put(id6, &v.octets());
                }
            }
        };
        // Addresses: only when they differ (`NFCT_GOPT_IS_SNAT/DNAT`).
        if let Some(s) = nat.snat.filter(|s| s.addr != inv.dst) {
            put_addr(b, s.addr, nta::SNAT_IPV4, nta::SNAT_IPV6);
        }
        if let Some(d) = nat.dnat.filter(|d| d.addr != inv.src) {
            put_addr(b, d.addr, nta::DNAT_IPV4, nta::DNAT_IPV6);
        }
        if let Some(p) = nat.snat.and_then(|s| s.port) {
            b.put(nta::SPAT_PORT, &le16(p));
        }
        if let Some(p) = nat.dnat.and_then(|d| d.port) {
            b.put(nta::DPAT_PORT, &le16(p));
        }
    }

    /// A flow back from the attributes of a CT message (the whole message,
    /// header included). Refused as `MalformedPayload`, as conntrackd
    /// refuses it, on a framing or size error or an id ≥ `NTA_MAX`; also
    /// when the addresses or the protocol are missing, since no flow can be
    /// made without them. SYNPROXY is accepted and dropped.
    pub fn decode_flow(&self, msg: &[u8]) -> Result<Flow, Reject> {
        let attrs = walk(msg, nta::MAX, flow_attr_size)?;
        let mut addrs: Option<(IpAddr, IpAddr)> = None;
        let mut l4proto: Option<u8> = None;
        let mut f = FlowParts::default();
        for (id, p) in attrs {
            match id {
                nta::IPV4 | nta::IPV6 => addrs = Some(pair(p)?),
                nta::L4PROTO => l4proto = Some(u8_of(p)?),
                nta::PORT => f.ports = Some(port_pair(p)?),
                nta::TCP_STATE => f.tcp_state = Some(u8_of(p)?),
                nta::TCP_WSCALE_ORIG => f.wscale.0 = u8_of(p)?,
                nta::TCP_WSCALE_REPL => f.wscale.1 = u8_of(p)?,
                nta::SCTP_STATE => f.sctp_state = Some(u8_of(p)?),
                nta::SCTP_VTAG_ORIG => f.vtags.0 = be32(p)?,
                nta::SCTP_VTAG_REPL => f.vtags.1 = be32(p)?,
                nta::DCCP_STATE => f.dccp_state = Some(u8_of(p)?),
                nta::DCCP_ROLE => f.dccp_role = u8_of(p)?,
                nta::ICMP_TYPE => f.icmp.0 = Some(u8_of(p)?),
                nta::ICMP_CODE => f.icmp.1 = Some(u8_of(p)?),
                nta::ICMP_ID => f.icmp.2 = Some(u16::from_le_bytes(two(p)?)),
                nta::STATUS => f.status = be32(p)?,
                nta::TIMEOUT => f.timeout = be32(p)?,
                nta::MARK => f.mark = be32(p)?,
                nta::ZONE => f.zone = u16::from_be_bytes(two(p)?),
                nta::MASTER_IPV4 | nta::MASTER_IPV6 => f.master_addrs = Some(pair(p)?),
                nta::MASTER_L4PROTO => f.master_proto = Some(u8_of(p)?),
                nta::MASTER_PORT => f.master_ports = Some(port_pair(p)?),
                nta::SNAT_IPV4 => f.snat = Some(self.nat_v4(p)?),
                nta::DNAT_IPV4 => f.dnat = Some(self.nat_v4(p)?),
                nta::SNAT_IPV6 => f.snat = Some(v6_of(p)?),
                nta::DNAT_IPV6 => f.dnat = Some(v6_of(p)?),
                nta::SPAT_PORT => f.spat = Some(u16::from_le_bytes(two(p)?)),
                nta::DPAT_PORT => f.dpat = Some(u16::from_le_bytes(two(p)?)),
                nta::NAT_SEQ_ADJ => f.seq_adj = Some(seq_adj(p)?),
                nta::HELPER_NAME => f.helper = cstr(p),
                nta::LABELS => f.labels = words_to_labels(p),
                // SYNPROXY (and anything below NTA_MAX without a handler):
                // ctsync has no field for it.
                _ => {}
            }
        }
        let (src, dst) = addrs.ok_or(Reject::MalformedPayload)?;
        let proto = l4proto.ok_or(Reject::MalformedPayload)?;
        f.build(src, dst, proto)
    }

    fn nat_v4(&self, p: &[u8]) -> Result<IpAddr, Reject> {
        let mut o: [u8; 4] = p.try_into().map_err(|_| Reject::MalformedPayload)?;
        if self.level.swaps_nat_ipv4() {
            o.reverse();
        }
        Ok(IpAddr::V4(Ipv4Addr::from(o)))
    }
}

/// What a receiver (1.4.7) accepts of each conntrack attribute.
pub fn flow_attr_size(id: u16) -> Option<Size> {
    Some(match id {
        nta::IPV4 | nta::MASTER_IPV4 => Size::Exact(12),
        nta::IPV6 | nta::MASTER_IPV6 => Size::Exact(36),
        nta::L4PROTO
        | nta::TCP_STATE
        | nta::MASTER_L4PROTO
        | nta::SCTP_STATE
        | nta::DCCP_STATE
        | nta::DCCP_ROLE
        | nta::ICMP_TYPE
        | nta::ICMP_CODE
        | nta::TCP_WSCALE_ORIG
        | nta::TCP_WSCALE_REPL => Size::Exact(5),
        nta::PORT
        | nta::MASTER_PORT
        | nta::STATUS
        | nta::TIMEOUT
        | nta::MARK
        | nta::SNAT_IPV4
        | nta::DNAT_IPV4
        | nta::SCTP_VTAG_ORIG
        | nta::SCTP_VTAG_REPL => Size::Exact(8),
        nta::SPAT_PORT | nta::DPAT_PORT | nta::ICMP_ID | nta::ZONE => Size::Exact(6),
        nta::NAT_SEQ_ADJ => Size::Exact(28),
        nta::SNAT_IPV6 | nta::DNAT_IPV6 => Size::Exact(20),
        nta::SYNPROXY => Size::Exact(16),
        nta::HELPER_NAME => Size::Max(16),
        nta::LABELS => Size::Max(MAX_LABELS_LEN),
        _ => return None,
    })
}

/// The decoded attributes before they become a flow.
#[derive(Default)]
struct FlowParts {
    ports: Option<(u16, u16)>,
    tcp_state: Option<u8>,
    wscale: (u8, u8),
    sctp_state: Option<u8>,
    vtags: (u32, u32),
    dccp_state: Option<u8>,
    dccp_role: u8,
    icmp: (Option<u8>, Option<u8>, Option<u16>),
    status: u32,
    timeout: u32,
    mark: u32,
    zone: u16,
    master_addrs: Option<(IpAddr, IpAddr)>,
    master_proto: Option<u8>,
    master_ports: Option<(u16, u16)>,
    snat: Option<IpAddr>,
    dnat: Option<IpAddr>,
    spat: Option<u16>,
    dpat: Option<u16>,
    seq_adj: Option<SeqAdj>,
    helper: Option<String>,
    labels: Option<Vec<u8>>,
}

impl FlowParts {
    fn build(self, src: IpAddr, dst: IpAddr, proto: u8) -> Result<Flow, Reject> {
        let l4 = match (proto, self.ports, self.icmp) {
            (proto::ICMP | proto::ICMPV6, _, (Some(kind), Some(code), Some(id))) => {
                L4::Icmp { kind, code, id }
            }
            (proto::ICMP | proto::ICMPV6, _, _) => return Err(Reject::MalformedPayload),
            (_, Some((s, d)), _) => L4::Ports { src: s, dst: d },
            _ => L4::None,
        };
        let orig = Tuple {
            src,
            dst,
            proto,
            l4,
        };
        if src.is_ipv6() != dst.is_ipv6() {
            return Err(Reject::MalformedPayload);
        }
        let mut flow = Flow::new(orig);
        flow.status = self.status;
        flow.timeout = self.timeout;
        flow.mark = self.mark;
        flow.zone = self.zone;
        flow.state = match proto {
            proto::TCP => self
                .tcp_state
                .map_or(ProtoState::None, |state| ProtoState::Tcp {
                    state,
                    wscale_orig: self.wscale.0,
                    wscale_reply: self.wscale.1,
                    flags_orig: 0,
                    flags_reply: 0,
                }),
            proto::SCTP => self
                .sctp_state
                .map_or(ProtoState::None, |state| ProtoState::Sctp {
                    state,
                    vtag_orig: self.vtags.0,
                    vtag_reply: self.vtags.1,
                }),
            proto::DCCP => self
                .dccp_state
                .map_or(ProtoState::None, |state| ProtoState::Dccp {
                    state,
                    role: self.dccp_role,
                }),
            _ => ProtoState::None,
        };
        if let Some((msrc, mdst)) = self.master_addrs {
            let mproto = self.master_proto.unwrap_or(proto);
            flow.master = Some(Tuple {
                src: msrc,
                dst: mdst,
                proto: mproto,
                l4: self
                    .master_ports
                    .map_or(L4::None, |(s, d)| L4::Ports { src: s, dst: d }),
            });
        }
        flow.seq_adj = self.seq_adj;
        flow.helper = self.helper;
        flow.labels = self.labels;
        let inv = orig.inverted();
        let family_ok = |a: &IpAddr| a.is_ipv6() == src.is_ipv6();
        if !self.snat.iter().chain(self.dnat.iter()).all(family_ok) {
            return Err(Reject::MalformedPayload);
        }
        // A port translation on a protocol without ports (conntrackd
        // compares the raw 16 bits whatever the protocol) carries nothing.
        let with_ports = matches!(l4, L4::Ports { .. });
        let spat = self.spat.filter(|_| with_ports);
        let dpat = self.dpat.filter(|_| with_ports);
        let snat = (self.snat.is_some() || spat.is_some()).then(|| NatBinding {
            addr: self.snat.unwrap_or(inv.dst),
            port: spat,
        });
        let dnat = (self.dnat.is_some() || dpat.is_some()).then(|| NatBinding {
            addr: self.dnat.unwrap_or(inv.src),
            port: dpat,
        });
        Ok(flow.with_nat(Nat { snat, dnat }))
    }
}

/// An address pair attribute (8 or 32 bytes): source, destination.
pub(crate) fn pair(p: &[u8]) -> Result<(IpAddr, IpAddr), Reject> {
    match p.len() {
        8 => {
            let a: [u8; 4] = p[..4].try_into().map_err(|_| Reject::MalformedPayload)?;
            let b: [u8; 4] = p[4..].try_into().map_err(|_| Reject::MalformedPayload)?;
            Ok((Ipv4Addr::from(a).into(), Ipv4Addr::from(b).into()))
        }
        32 => {
            let a: [u8; 16] = p[..16].try_into().map_err(|_| Reject::MalformedPayload)?;
            let b: [u8; 16] = p[16..].try_into().map_err(|_| Reject::MalformedPayload)?;
            Ok((Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into()))
        }
        _ => Err(Reject::MalformedPayload),
    }
}

fn v6_of(p: &[u8]) -> Result<IpAddr, Reject> {
    let a: [u8; 16] = p.try_into().map_err(|_| Reject::MalformedPayload)?;
    Ok(Ipv6Addr::from(a).into())
}

fn u8_of(p: &[u8]) -> Result<u8, Reject> {
    p.first().copied().ok_or(Reject::MalformedPayload)
}

fn two(p: &[u8]) -> Result<[u8; 2], Reject> {
    p.get(..2)
        .and_then(|s| s.try_into().ok())
        .ok_or(Reject::MalformedPayload)
}

fn be32(p: &[u8]) -> Result<u32, Reject> {
    p.get(..4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(Reject::MalformedPayload)
}

fn port_pair(p: &[u8]) -> Result<(u16, u16), Reject> {
    let s = p.get(..4).ok_or(Reject::MalformedPayload)?;
    Ok((
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
    ))
}

fn seq_adj(p: &[u8]) -> Result<SeqAdj, Reject> {
    let mut v = [0u32; 6];
    for (i, slot) in v.iter_mut().enumerate() {
        *slot = be32(p.get(i * 4..).ok_or(Reject::MalformedPayload)?)?;
    }
    Ok(SeqAdj {
        orig: SeqAdjDir {
            correction_pos: v[0],
            offset_before: v[1],
            offset_after: v[2],
        },
        reply: SeqAdjDir {
            correction_pos: v[3],
            offset_before: v[4],
            offset_after: v[5],
        },
    })
}

/// A string up to its first NUL (or the attribute's end), if it is valid
/// UTF-8 and not empty.
pub(crate) fn cstr(p: &[u8]) -> Option<String> {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    let s = std::str::from_utf8(&p[..end]).ok()?;
    (!s.is_empty()).then(|| s.to_string())
}

/// ctsync's labels (the kernel's bitmap bytes, label n = byte n/8 bit
/// n%8) as conntrackd's u32 words (word i bit b = label 32i+b), BE.
fn labels_to_words(l: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(l.len().div_ceil(4) * 4);
    for chunk in l.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        out.extend_from_slice(&u32::from_le_bytes(w).to_be_bytes());
    }
    out
}

/// The inverse of `labels_to_words`; `None` when no bit is set. A tail
/// shorter than a word is ignored, as conntrackd ignores it.
fn words_to_labels(p: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.len());
    for w in p.chunks_exact(4) {
        let v = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.iter().any(|b| *b != 0).then_some(out)
}
