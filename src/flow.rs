//! The domain model of one tracked connection: tuples, protocol state, NAT,
//! status bits, and the key that identifies a flow in a cache.
//!
//! Owns: the plain data types every other layer speaks, and the pure
//! functions on them (inverting a tuple, deriving the NAT binding, naming
//! states). Must not: do I/O, know about netlink or the wire format, or read
//! the clock.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// IP protocol numbers ctsync models explicitly.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const DCCP: u8 = 33;
    pub const GRE: u8 = 47;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;
}

/// Conntrack status bits (`IPS_*` in linux/netfilter/nf_conntrack_common.h).
pub mod status {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const SEQ_ADJUST: u32 = 1 << 6;
    pub const SRC_NAT_DONE: u32 = 1 << 7;
    pub const DST_NAT_DONE: u32 = 1 << 8;
    pub const DYING: u32 = 1 << 9;
    pub const FIXED_TIMEOUT: u32 = 1 << 10;
    pub const TEMPLATE: u32 = 1 << 11;
    pub const UNTRACKED: u32 = 1 << 12;
    pub const HELPER: u32 = 1 << 13;
    pub const OFFLOAD: u32 = 1 << 14;
    pub const HW_OFFLOAD: u32 = 1 << 15;
}

/// The TCP flag that tells the kernel not to track windows on a flow.
pub const TCP_FLAG_BE_LIBERAL: u8 = 0x08;

/// The layer-4 part of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum L4 {
    /// TCP, UDP, UDPLite, SCTP, DCCP ports; for GRE, the keys.
    Ports { src: u16, dst: u16 },
    /// ICMP and ICMPv6: type, code and identifier.
    Icmp { kind: u8, code: u8, id: u16 },
    /// Protocols whose tuple has no layer-4 part.
    None,
}

/// One direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub l4: L4,
}

impl Tuple {
    /// The tuple the kernel expects in the reply direction when no NAT applies.
    pub fn inverted(&self) -> Tuple {
        let l4 = match self.l4 {
            L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
            L4::Icmp { kind, code, id } => L4::Icmp {
                kind: invert_icmp_type(self.proto, kind),
                code,
                id,
            },
            L4::None => L4::None,
        };
        Tuple {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            l4,
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// Source and destination ports (or GRE keys), if the protocol has them.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.l4 {
            L4::Ports { src, dst } => Some((src, dst)),
            _ => None,
        }
    }
}

/// The kernel's ICMP/ICMPv6 type inversion (`invmap` in nf_conntrack_proto_icmp*.c).
fn invert_icmp_type(proto: u8, kind: u8) -> u8 {
    match (proto, kind) {
        (proto::ICMP, 8) => 0,
        (proto::ICMP, 0) => 8,
        (proto::ICMP, 13) => 14,
        (proto::ICMP, 14) => 13,
        (proto::ICMP, 15) => 16,
        (proto::ICMP, 16) => 15,
        (proto::ICMP, 17) => 18,
        (proto::ICMP, 18) => 17,
        (proto::ICMPV6, 128) => 129,
        (proto::ICMPV6, 129) => 128,
        (proto::ICMPV6, 139) => 140,
        (proto::ICMPV6, 140) => 139,
        (_, other) => other,
    }
}

/// What identifies a flow in every cache: its zone and original tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowKey {
    pub zone: u16,
    pub orig: Tuple,
}

/// Protocol-specific state that the kernel needs to recreate a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ProtoState {
    #[default]
    None,
    Tcp {
        state: u8,
        wscale_orig: u8,
        wscale_reply: u8,
        flags_orig: u8,
        flags_reply: u8,
    },
    Sctp {
        state: u8,
        vtag_orig: u32,
        vtag_reply: u32,
    },
    Dccp {
        state: u8,
        role: u8,
    },
}

/// One tracked connection, as much of it as a peer needs to carry it on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flow {
    pub orig: Tuple,
    /// The reply tuple as the kernel holds it; differs from `orig.inverted()`
    /// only under NAT.
    pub reply: Tuple,
    pub zone: u16,
    pub status: u32,
    /// Seconds left before the kernel expires the flow.
    pub timeout: u32,
    pub mark: u32,
    pub state: ProtoState,
    /// Connection labels (up to 128 bits), if any bit is set.
    pub labels: Option<Vec<u8>>,
    /// Name of the attached conntrack helper.
    pub helper: Option<String>,
    /// For a RELATED flow (one a helper's expectation created): the
    /// original tuple of its master connection (`CTA_TUPLE_MASTER`).
    pub master: Option<Tuple>,
    /// TCP sequence adjustment a helper made when it rewrote a payload
    /// under NAT (an FTP PORT command), `CTA_SEQ_ADJ_ORIG`/`_REPLY`.
    pub seq_adj: Option<SeqAdj>,
}

/// One direction's TCP sequence correction (`struct nf_ct_seqadj`): packets
/// after `correction_pos` are shifted by `offset_after`, before it by
/// `offset_before` (the kernel's offsets are signed; carried as they are
/// on the netlink wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct SeqAdjDir {
    pub correction_pos: u32,
    pub offset_before: u32,
    pub offset_after: u32,
}

/// Both directions' sequence corrections of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct SeqAdj {
    pub orig: SeqAdjDir,
    pub reply: SeqAdjDir,
}

/// One side of a NAT binding: the address and, if translated, the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatBinding {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// The NAT bindings a flow carries, derived from its two tuples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Nat {
    pub snat: Option<NatBinding>,
    pub dnat: Option<NatBinding>,
}

impl Flow {
    /// A flow with no NAT: the reply tuple is the inverted original.
    pub fn new(orig: Tuple) -> Flow {
        Flow {
            orig,
            reply: orig.inverted(),
            zone: 0,
            status: 0,
            timeout: 0,
            mark: 0,
            state: ProtoState::None,
            labels: None,
            helper: None,
            master: None,
            seq_adj: None,
        }
    }

    pub fn key(&self) -> FlowKey {
        FlowKey {
            zone: self.zone,
            orig: self.orig,
        }
    }

    /// True when both describe the same state of the connection: every
    /// field but the timeout, which the kernel counts down on its own.
    pub fn same_state(&self, other: &Flow) -> bool {
        // Exhaustive, so a new field must be placed on one side or the other.
        let Flow {
            orig,
            reply,
            zone,
            status,
            timeout: _,
            mark,
            state,
            labels,
            helper,
            master,
            seq_adj,
        } = self;
        *orig == other.orig
            && *reply == other.reply
            && *zone == other.zone
            && *status == other.status
            && *mark == other.mark
            && *state == other.state
            && *labels == other.labels
            && *helper == other.helper
            && *master == other.master
            && *seq_adj == other.seq_adj
    }

    /// Complete a kernel UPDATE event from the cached flow: the kernel puts
    /// protocol state, labels, the helper, the master tuple and the
    /// sequence adjustment in an update only when they changed, so their
    /// absence means "as before", not "none".
    pub fn fill_from_previous(&mut self, previous: &Flow) {
        if self.state == ProtoState::None {
            self.state = previous.state;
        }
        if self.labels.is_none() {
            self.labels.clone_from(&previous.labels);
        }
        if self.helper.is_none() {
            self.helper.clone_from(&previous.helper);
        }
        if self.master.is_none() {
            self.master = previous.master;
        }
        if self.seq_adj.is_none() {
            self.seq_adj = previous.seq_adj;
        }
    }

    /// True when the reply tuple is not simply the inverted original.
    pub fn has_nat(&self) -> bool {
        self.reply != self.orig.inverted()
    }

    /// The NAT bindings, as `conntrack --src-nat/--dst-nat` would set them:
    /// SNAT rewrites the original source into the reply destination, DNAT the
    /// original destination into the reply source.
    pub fn nat(&self) -> Nat {
        let inv = self.orig.inverted();
        let port_of = |translated: Option<u16>, original: Option<u16>| match (translated, original)
        {
            (Some(t), Some(o)) if t != o => Some(t),
            _ => None,
        };
        let (snat_port, dnat_port) = match (self.reply.l4, inv.l4) {
            // ICMP has one identifier; the kernel's SNAT may remap it, and
            // the NAT range carries it where ports would go.
            (L4::Icmp { id: translated, .. }, L4::Icmp { id: original, .. }) => {
                (port_of(Some(translated), Some(original)), None)
            }
            _ => {
                let reply_ports = self.reply.ports();
                let inv_ports = inv.ports();
                (
                    port_of(reply_ports.map(|p| p.1), inv_ports.map(|p| p.1)),
                    port_of(reply_ports.map(|p| p.0), inv_ports.map(|p| p.0)),
                )
            }
        };
        let snat = (self.reply.dst != inv.dst || snat_port.is_some()).then_some(NatBinding {
            addr: self.reply.dst,
            port: snat_port,
        });
        let dnat = (self.reply.src != inv.src || dnat_port.is_some()).then_some(NatBinding {
            addr: self.reply.src,
            port: dnat_port,
        });
        Nat { snat, dnat }
    }

    /// The same flow with its reply tuple rebuilt from the original and a NAT
    /// binding (the receiving side of a wire message).
    pub fn with_nat(mut self, nat: Nat) -> Flow {
        let mut reply = self.orig.inverted();
        if let Some(s) = nat.snat {
            reply.dst = s.addr;
            match (s.port, &mut reply.l4) {
                (Some(p), L4::Ports { dst, .. }) => *dst = p,
                (Some(p), L4::Icmp { id, .. }) => *id = p,
                _ => {}
            }
        }
        if let Some(d) = nat.dnat {
            reply.src = d.addr;
            if let (Some(p), L4::Ports { src, .. }) = (d.port, &mut reply.l4) {
                *src = p;
            }
        }
        self.reply = reply;
        self
    }
}

/// conntrack's name for an IP protocol, as `conntrack -L` prints it.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        proto::ICMP => "icmp",
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::DCCP => "dccp",
        proto::GRE => "gre",
        proto::ICMPV6 => "icmpv6",
        proto::SCTP => "sctp",
        proto::UDPLITE => "udplite",
        _ => "unknown",
    }
}

/// TCP conntrack state names (`TCP_CONNTRACK_*`), index = state.
pub const TCP_STATES: [&str; 11] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
    "LISTEN",
];

/// SCTP conntrack state names (`SCTP_CONNTRACK_*`).
pub const SCTP_STATES: [&str; 10] = [
    "NONE",
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECD",
    "SHUTDOWN_ACK_SENT",
    "HEARTBEAT_SENT",
    "HEARTBEAT_ACKED",
];

/// DCCP conntrack state names (`CT_DCCP_*`).
pub const DCCP_STATES: [&str; 10] = [
    "NONE", "REQUEST", "RESPOND", "PARTOPEN", "OPEN", "CLOSEREQ", "CLOSING", "TIMEWAIT", "IGNORE",
    "INVALID",
];

impl ProtoState {
    /// The state's name as conntrack prints it, if the protocol has one.
    pub fn name(&self) -> Option<&'static str> {
        let (table, s): (&[&'static str], u8) = match *self {
            ProtoState::Tcp { state, .. } => (&TCP_STATES, state),
            ProtoState::Sctp { state, .. } => (&SCTP_STATES, state),
            ProtoState::Dccp { state, .. } => (&DCCP_STATES, state),
            ProtoState::None => return None,
        };
        Some(table.get(usize::from(s)).copied().unwrap_or("UNKNOWN"))
    }
}

impl fmt::Display for Tuple {
    /// `src=.. dst=.. sport=.. dport=..` in conntrack's layout.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "src={} dst={}", self.src, self.dst)?;
        match self.l4 {
            L4::Ports { src, dst } if self.proto == proto::GRE => {
                write!(f, " srckey=0x{src:x} dstkey=0x{dst:x}")
            }
            L4::Ports { src, dst } => write!(f, " sport={src} dport={dst}"),
            L4::Icmp { kind, code, id } => write!(f, " type={kind} code={code} id={id}"),
            L4::None => Ok(()),
        }
    }
}

/// Flows for the unit tests of the modules that store or queue them.
#[cfg(test)]
pub(crate) mod test_flows {
    use super::{proto, Flow, Tuple, L4};

    /// A UDP flow 198.18.0.1:`port` -> 198.18.0.2:53, without NAT.
    pub fn udp(port: u16) -> Flow {
        Flow::new(Tuple {
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            proto: proto::UDP,
            l4: L4::Ports { src: port, dst: 53 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Tuple {
        Tuple {
            src: IpAddr::V4(Ipv4Addr::from(src)),
            dst: IpAddr::V4(Ipv4Addr::from(dst)),
            proto: proto::TCP,
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        }
    }

    #[test]
    fn same_state_ignores_only_the_timeout() {
        let f = Flow::new(tcp([198, 18, 0, 1], 1000, [198, 18, 0, 2], 80));
        let mut later = f.clone();
        later.timeout = 17;
        assert!(f.same_state(&later));
        later.mark = 1;
        assert!(!f.same_state(&later));
    }

    #[test]
    fn partial_update_keeps_what_it_does_not_carry() {
        let mut cached = Flow::new(tcp([198, 18, 0, 1], 1000, [198, 18, 0, 2], 80));
        cached.state = ProtoState::Tcp {
            state: 3,
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0,
            flags_reply: 0,
        };
        cached.labels = Some(vec![1; 16]);
        cached.helper = Some("ftp".into());
        let mut update = Flow::new(cached.orig);
        update.mark = 5;
        update.fill_from_previous(&cached);
        assert_eq!(update.state, cached.state);
        assert_eq!(update.labels, cached.labels);
        assert_eq!(update.helper, cached.helper);
        assert_eq!(update.mark, 5);
        // A carried state wins over the cached one.
        let mut newer = Flow::new(cached.orig);
        newer.state = ProtoState::Tcp {
            state: 7,
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0,
            flags_reply: 0,
        };
        newer.fill_from_previous(&cached);
        assert_eq!(newer.state.name(), Some("TIME_WAIT"));
    }

    #[test]
    fn plain_flow_has_no_nat() {
        let f = Flow::new(tcp([198, 18, 0, 1], 1000, [198, 18, 0, 2], 80));
        assert!(!f.has_nat());
        assert_eq!(f.nat(), Nat::default());
    }

    #[test]
    fn snat_with_port_round_trips_through_nat() {
        let orig = tcp([198, 18, 0, 1], 1000, [198, 18, 0, 2], 80);
        let mut f = Flow::new(orig);
        f.reply = tcp([198, 18, 0, 2], 80, [198, 19, 0, 1], 5000);
        let nat = f.nat();
        assert_eq!(
            nat.snat,
            Some(NatBinding {
                addr: "198.19.0.1".parse().unwrap(),
                port: Some(5000)
            })
        );
        assert_eq!(nat.dnat, None);
        assert_eq!(Flow::new(orig).with_nat(nat), f);
    }

    #[test]
    fn dnat_and_snat_together_round_trip() {
        let orig = tcp([198, 18, 0, 1], 1000, [198, 18, 0, 2], 80);
        let mut f = Flow::new(orig);
        f.reply = tcp([198, 18, 9, 9], 8080, [198, 19, 0, 1], 1000);
        let nat = f.nat();
        assert!(nat.snat.is_some() && nat.dnat.is_some());
        assert_eq!(nat.snat.unwrap().port, None);
        assert_eq!(nat.dnat.unwrap().port, Some(8080));
        assert_eq!(Flow::new(orig).with_nat(nat), f);
    }

    #[test]
    fn icmp_snat_with_a_remapped_id_round_trips() {
        let orig = Tuple {
            src: "198.18.1.1".parse().unwrap(),
            dst: "198.19.0.1".parse().unwrap(),
            proto: proto::ICMP,
            l4: L4::Icmp {
                kind: 8,
                code: 0,
                id: 77,
            },
        };
        let mut f = Flow::new(orig);
        f.reply.dst = "198.19.255.1".parse().unwrap();
        f.reply.l4 = L4::Icmp {
            kind: 0,
            code: 0,
            id: 1234,
        };
        let nat = f.nat();
        assert_eq!(
            nat.snat,
            Some(NatBinding {
                addr: "198.19.255.1".parse().unwrap(),
                port: Some(1234)
            })
        );
        assert_eq!(nat.dnat, None);
        assert_eq!(Flow::new(orig).with_nat(nat), f);
    }

    #[test]
    fn icmp_echo_inverts_to_reply() {
        let t = Tuple {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            proto: proto::ICMPV6,
            l4: L4::Icmp {
                kind: 128,
                code: 0,
                id: 7,
            },
        };
        assert_eq!(
            t.inverted().l4,
            L4::Icmp {
                kind: 129,
                code: 0,
                id: 7
            }
        );
        assert_eq!(t.inverted().inverted(), t);
    }
}
