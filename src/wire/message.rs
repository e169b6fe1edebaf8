//! The body of a sync datagram: a bincode-encoded batch of `Message`s, and
//! the compact flow representation that travels in it.
//!
//! Owns: the message set, `WireFlow`/`WireKey` and their conversions from and
//! to the model (`crate::flow`), the bincode configuration, and the decoding
//! limits and semantic checks. Must not: touch the header, sequence numbers or
//! any replication state.

use super::compact;
use super::header::{WireError, MAX_BODY};
use crate::expect::{ExpectKey, Expectation};
use crate::flow::{proto, Flow, FlowKey, ProtoState, SeqAdj, SeqAdjDir, Tuple, L4};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most messages one datagram may carry.
pub const MAX_MESSAGES: usize = 4096;
/// Longest conntrack helper name accepted (the kernel's NF_CT_HELPER_NAME_LEN).
pub const MAX_HELPER_LEN: usize = 16;
/// Longest label bitmap accepted (128 bits).
pub const MAX_LABELS_LEN: usize = 16;

/// One unit of the sync protocol.
///
/// Data messages (`Upsert`, `Delete`, `BulkBegin`, `BulkEnd`, `Digest`,
/// `RangeDigest`, `RangeBegin`, `RangeEnd`, `BulkEndSum`) travel in
/// sequenced (reliable) datagrams; the others in control datagrams. New
/// variants go at the end: the variant index is on the wire. `node` fields
/// name the sender whose sequence stream an `Ack`/`Nack` refers to (needed when
/// more than two nodes share a multicast link) and `epoch` that stream's
/// epoch (so an ack for a sender's previous life cannot ack its new one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Upsert(WireFlow),
    Delete(WireKey),
    BulkBegin {
        id: u32,
    },
    BulkEnd {
        id: u32,
        count: u64,
    },
    /// Every reliable datagram of `node`'s stream `epoch` up to `upto` has
    /// been applied.
    Ack {
        node: u32,
        epoch: u64,
        upto: u32,
    },
    /// Please resend `from..=to` of `node`'s stream `epoch`.
    Nack {
        node: u32,
        epoch: u64,
        from: u32,
        to: u32,
    },
    /// Please send a bulk of your table (`None`: every receiver).
    ResyncRequest {
        node: Option<u32>,
    },
    /// Nothing before `from` can be resent any more; a bulk follows.
    Resume {
        from: u32,
    },
    Alive,
    /// Anti-entropy: the sender's whole table, as it stands after every
    /// data message before this one, has `count` flows and this
    /// `FlowCache::digest`.
    Digest {
        count: u64,
        hash: u64,
    },
    /// Anti-entropy by key range (see `RANGES`): for each listed range,
    /// what the sender's table holds in it, as it stands after every data
    /// message before this one. A full digest is split over several of
    /// these (each fits a datagram).
    RangeDigest {
        sums: Vec<RangeSum>,
    },
    /// Please re-send these ranges of `node`'s table (a range bulk).
    RangeRequest {
        node: u32,
        ranges: Vec<u16>,
    },
    /// A range bulk begins: every flow the sender holds in these ranges
    /// follows, before the `RangeEnd` of the same id.
    RangeBegin {
        id: u32,
        ranges: Vec<u16>,
    },
    /// The range bulk `id` is over: each range held what `sums` say when it
    /// began. A receiver whose copy of a range, less the flows the bulk did
    /// not write, equals its sum got every flow and may sweep the rest.
    RangeEnd {
        id: u32,
        sums: Vec<RangeSum>,
    },
    /// `BulkEnd` with the digest (`count`, `hash`) the whole table had when
    /// the bulk began: a receiver sweeps only a bulk proven complete.
    BulkEndSum {
        id: u32,
        count: u64,
        hash: u64,
    },
    /// Authenticated sync only (`crate::auth`): `node`, prove that you are
    /// live in `epoch` by sending `nonce` back. Until then that epoch's
    /// datagrams change nothing here.
    Challenge {
        node: u32,
        epoch: u64,
        nonce: u128,
    },
    /// The answer to `node`'s challenge: the sender is live in `epoch`
    /// (the epoch of the datagram carrying it).
    ChallengeAnswer {
        node: u32,
        epoch: u64,
        nonce: u128,
    },
    /// One of the sender's expectations, in its current state.
    ExpectUpsert(Box<Expectation>),
    /// The sender no longer has this expectation.
    ExpectDelete(Box<ExpectKey>),
    /// Every expectation the sender holds follows, before the
    /// `ExpectBulkEnd` of the same id.
    ExpectBulkBegin {
        id: u32,
    },
    /// The expectation bulk `id` is over: a receiver drops the sender's
    /// expectations the bulk did not carry.
    ExpectBulkEnd {
        id: u32,
        /// The sender's expectations when the bulk ended
        /// (`ExpectCache::digest`): a receiver sweeps only a bulk that
        /// delivered them all.
        count: u64,
        hash: u64,
    },
    /// Anti-entropy: the sender's expectations, as they stand after every
    /// data message before this one (`ExpectCache::digest`).
    ExpectDigest {
        count: u64,
        hash: u64,
    },
    /// Please send a bulk of your expectations.
    ExpectResyncRequest {
        node: u32,
    },
}

/// Longest expectation function name accepted (conntrackd's bound on
/// EXP_FN).
pub const MAX_EXPECTFN_LEN: usize = 32;

/// Semantic checks of an expectation bincode cannot make: one address
/// family in every tuple, ICMP ids only for ICMP, bounded names.
pub fn validate_expectation(e: &Expectation) -> Result<(), WireError> {
    let v6 = e.tuple.src.is_ipv6();
    let tuples = [&e.master, &e.tuple, &e.mask];
    let nat = e.nat.as_ref().map(|n| &n.tuple);
    if tuples
        .iter()
        .copied()
        .chain(nat)
        .any(|t| t.src.is_ipv6() != v6 || t.dst.is_ipv6() != v6)
    {
        return Err(WireError::BadFlow("expectation mixes address families"));
    }
    if tuples
        .iter()
        .any(|t| matches!(t.l4, L4::Icmp { .. }) && !matches!(t.proto, proto::ICMP | proto::ICMPV6))
    {
        return Err(WireError::BadFlow("icmp tuple for non-icmp"));
    }
    if e.helper.as_ref().is_some_and(|h| h.len() > MAX_HELPER_LEN) {
        return Err(WireError::BadFlow("helper name too long"));
    }
    if e.expectfn
        .as_ref()
        .is_some_and(|f| f.len() > MAX_EXPECTFN_LEN)
    {
        return Err(WireError::BadFlow("expectation function name too long"));
    }
    Ok(())
}

/// Key ranges of the range digest: a flow's range is a stable hash of its
/// key (`cache::range_of`), the same on every host and build.
pub const RANGES: u16 = 256;

/// What one key range of a table holds: its flow count and the XOR of
/// their `state_hash`es.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSum {
    pub range: u16,
    pub count: u32,
    pub hash: u64,
}

impl Message {
    /// True for the messages that consume a sequence number.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            Message::Upsert(_)
                | Message::Delete(_)
                | Message::BulkBegin { .. }
                | Message::BulkEnd { .. }
                | Message::Digest { .. }
                | Message::RangeDigest { .. }
                | Message::RangeBegin { .. }
                | Message::RangeEnd { .. }
                | Message::BulkEndSum { .. }
                | Message::ExpectUpsert(_)
                | Message::ExpectDelete(_)
                | Message::ExpectBulkBegin { .. }
                | Message::ExpectBulkEnd { .. }
                | Message::ExpectDigest { .. }
        )
    }

    /// Semantic checks of the range messages: at most `RANGES` entries,
    /// each naming a range below `RANGES`.
    pub fn validate_ranges(&self) -> Result<(), WireError> {
        let fine = match self {
            Message::RangeDigest { sums } | Message::RangeEnd { sums, .. } => {
                sums.len() <= usize::from(RANGES) && sums.iter().all(|s| s.range < RANGES)
            }
            Message::RangeRequest { ranges, .. } | Message::RangeBegin { ranges, .. } => {
                ranges.len() <= usize::from(RANGES) && ranges.iter().all(|&r| r < RANGES)
            }
            _ => true,
        };
        if fine {
            Ok(())
        } else {
            Err(WireError::BadBody("key range out of bounds".into()))
        }
    }
}

/// The two addresses of a tuple; one family for both by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireAddrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// The layer-4 part of a tuple; ports and ids in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireL4 {
    Ports { src: [u8; 2], dst: [u8; 2] },
    Icmp { kind: u8, code: u8, id: [u8; 2] },
    None,
}

/// A tuple without its protocol (the flow carries it once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTuple {
    pub addrs: WireAddrs,
    pub l4: WireL4,
}

/// Protocol state as it travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireState {
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

/// What a peer needs to recreate a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFlow {
    pub proto: u8,
    pub orig: WireTuple,
    pub zone: u16,
    pub status: u32,
    pub timeout: u32,
    pub mark: u32,
    pub state: WireState,
    pub labels: Option<Vec<u8>>,
    pub helper: Option<String>,
    pub tail: WireTail,
}

/// What follows a flow's common fields. `Plain` and `Nat` encode exactly as
/// an `Option` of the reply tuple (tag 0 or 1), so only a RELATED or
/// sequence-adjusted flow pays for what it carries. Most NAT changes one
/// end of the reply tuple, address and port: `SnatTo` and `DnatTo` carry
/// just that end (8 bytes for IPv4 where the whole tuple takes 15, 20
/// against 39 for IPv6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireTail {
    /// No NAT: the reply tuple is the inverted original.
    Plain,
    /// The reply tuple, under NAT.
    Nat(WireTuple),
    /// A flow with a master connection or a sequence adjustment.
    Related(Box<WireRelated>),
    /// Source NAT (ports or GRE keys): the reply tuple is the inverted
    /// original but for its destination, this address and port.
    SnatTo(WireEnd),
    /// Destination NAT: the inverted original but for its source.
    DnatTo(WireEnd),
}

/// One end of a tuple: an address and a port (network byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireEnd {
    V4 { addr: [u8; 4], port: [u8; 2] },
    V6 { addr: [u8; 16], port: [u8; 2] },
}

impl WireEnd {
    fn new(addr: IpAddr, port: u16) -> WireEnd {
        match addr {
            IpAddr::V4(a) => WireEnd::V4 {
                addr: a.octets(),
                port: port.to_be_bytes(),
            },
            IpAddr::V6(a) => WireEnd::V6 {
                addr: a.octets(),
                port: port.to_be_bytes(),
            },
        }
    }

    fn addr(&self) -> IpAddr {
        match *self {
            WireEnd::V4 { addr, .. } => IpAddr::V4(Ipv4Addr::from(addr)),
            WireEnd::V6 { addr, .. } => IpAddr::V6(Ipv6Addr::from(addr)),
        }
    }

    fn port(&self) -> u16 {
        match *self {
            WireEnd::V4 { port, .. } | WireEnd::V6 { port, .. } => u16::from_be_bytes(port),
        }
    }

    fn is_v6(&self) -> bool {
        matches!(self, WireEnd::V6 { .. })
    }
}

/// The rarer parts of a flow: a helper's doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRelated {
    pub reply: Option<WireTuple>,
    /// The master connection's protocol and original tuple.
    pub master: Option<WireMaster>,
    pub seq_adj: Option<WireSeqAdj>,
}

/// A master connection's original tuple (its protocol may differ from the
/// related flow's: a SIP call over TCP expects UDP media).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMaster {
    pub proto: u8,
    pub tuple: WireTuple,
}

/// `flow::SeqAdj` as it travels: original direction, then reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSeqAdj {
    pub orig_pos: u32,
    pub orig_before: u32,
    pub orig_after: u32,
    pub reply_pos: u32,
    pub reply_before: u32,
    pub reply_after: u32,
}

impl WireTail {
    /// Whether the tail says the reply tuple differs from the inverted
    /// original (NAT).
    pub fn has_reply(&self) -> bool {
        match self {
            WireTail::Plain => false,
            WireTail::Nat(_) | WireTail::SnatTo(_) | WireTail::DnatTo(_) => true,
            WireTail::Related(rel) => rel.reply.is_some(),
        }
    }

    /// The reply tuple of a flow with original tuple `orig`, if the tail
    /// says it is not `orig.inverted()`. Call on a validated flow.
    fn reply_of(&self, orig: &Tuple) -> Option<Tuple> {
        let with_end = |end: &WireEnd, dst: bool| {
            let mut r = orig.inverted();
            if let L4::Ports { src, dst: dport } = r.l4 {
                if dst {
                    r.dst = end.addr();
                    r.l4 = L4::Ports {
                        src,
                        dst: end.port(),
                    };
                } else {
                    r.src = end.addr();
                    r.l4 = L4::Ports {
                        src: end.port(),
                        dst: dport,
                    };
                }
            }
            r
        };
        match self {
            WireTail::Plain => None,
            WireTail::Nat(t) => Some(t.to_tuple(orig.proto)),
            WireTail::Related(rel) => rel.reply.map(|t| t.to_tuple(orig.proto)),
            WireTail::SnatTo(end) => Some(with_end(end, true)),
            WireTail::DnatTo(end) => Some(with_end(end, false)),
        }
    }
}

impl From<&SeqAdj> for WireSeqAdj {
    fn from(a: &SeqAdj) -> WireSeqAdj {
        WireSeqAdj {
            orig_pos: a.orig.correction_pos,
            orig_before: a.orig.offset_before,
            orig_after: a.orig.offset_after,
            reply_pos: a.reply.correction_pos,
            reply_before: a.reply.offset_before,
            reply_after: a.reply.offset_after,
        }
    }
}

impl From<WireSeqAdj> for SeqAdj {
    fn from(a: WireSeqAdj) -> SeqAdj {
        SeqAdj {
            orig: SeqAdjDir {
                correction_pos: a.orig_pos,
                offset_before: a.orig_before,
                offset_after: a.orig_after,
            },
            reply: SeqAdjDir {
                correction_pos: a.reply_pos,
                offset_before: a.reply_before,
                offset_after: a.reply_after,
            },
        }
    }
}

/// What identifies a flow: zone and original tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireKey {
    pub proto: u8,
    pub zone: u16,
    pub orig: WireTuple,
}

fn addrs_of(src: IpAddr, dst: IpAddr) -> WireAddrs {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => WireAddrs::V4 {
            src: s.octets(),
            dst: d.octets(),
        },
        // A mixed pair cannot come from the kernel; carry it as v6 (mapped)
        // rather than panic.
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            WireAddrs::V6 {
                src: v6(s),
                dst: v6(d),
            }
        }
    }
}

impl From<&Tuple> for WireTuple {
    fn from(t: &Tuple) -> WireTuple {
        let l4 = match t.l4 {
            L4::Ports { src, dst } => WireL4::Ports {
                src: src.to_be_bytes(),
                dst: dst.to_be_bytes(),
            },
            L4::Icmp { kind, code, id } => WireL4::Icmp {
                kind,
                code,
                id: id.to_be_bytes(),
            },
            L4::None => WireL4::None,
        };
        WireTuple {
            addrs: addrs_of(t.src, t.dst),
            l4,
        }
    }
}

impl WireTuple {
    fn is_v6(&self) -> bool {
        matches!(self.addrs, WireAddrs::V6 { .. })
    }

    /// The model tuple, with the flow's protocol.
    pub fn to_tuple(&self, proto: u8) -> Tuple {
        let (src, dst) = match self.addrs {
            WireAddrs::V4 { src, dst } => (
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
            ),
            WireAddrs::V6 { src, dst } => (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
            ),
        };
        let l4 = match self.l4 {
            WireL4::Ports { src, dst } => L4::Ports {
                src: u16::from_be_bytes(src),
                dst: u16::from_be_bytes(dst),
            },
            WireL4::Icmp { kind, code, id } => L4::Icmp {
                kind,
                code,
                id: u16::from_be_bytes(id),
            },
            WireL4::None => L4::None,
        };
        Tuple {
            src,
            dst,
            proto,
            l4,
        }
    }

    /// The layer-4 part must suit the protocol: ICMP ids only for ICMP and
    /// ICMPv6, in either address family (the kernel tracks ICMP inside
    /// IPv6 and ICMPv6 inside IPv4 by their protocol number alone, so any
    /// host can make such entries).
    fn validate(&self, proto: u8) -> Result<(), WireError> {
        let icmp = matches!(proto, proto::ICMP | proto::ICMPV6);
        match self.l4 {
            WireL4::Icmp { .. } if !icmp => Err(WireError::BadFlow("icmp tuple for non-icmp")),
            WireL4::Ports { .. } | WireL4::None if icmp => {
                Err(WireError::BadFlow("icmp flow without icmp tuple"))
            }
            _ => Ok(()),
        }
    }
}

impl From<&ProtoState> for WireState {
    fn from(s: &ProtoState) -> WireState {
        match *s {
            ProtoState::None => WireState::None,
            ProtoState::Tcp {
                state,
                wscale_orig,
                wscale_reply,
                flags_orig,
                flags_reply,
            } => WireState::Tcp {
                state,
                wscale_orig,
                wscale_reply,
                flags_orig,
                flags_reply,
            },
            ProtoState::Sctp {
                state,
                vtag_orig,
                vtag_reply,
            } => WireState::Sctp {
                state,
                vtag_orig,
                vtag_reply,
            },
            ProtoState::Dccp { state, role } => WireState::Dccp { state, role },
        }
    }
}

impl From<WireState> for ProtoState {
    fn from(s: WireState) -> ProtoState {
        match s {
            WireState::None => ProtoState::None,
            WireState::Tcp {
                state,
                wscale_orig,
                wscale_reply,
                flags_orig,
                flags_reply,
            } => ProtoState::Tcp {
                state,
                wscale_orig,
                wscale_reply,
                flags_orig,
                flags_reply,
            },
            WireState::Sctp {
                state,
                vtag_orig,
                vtag_reply,
            } => ProtoState::Sctp {
                state,
                vtag_orig,
                vtag_reply,
            },
            WireState::Dccp { state, role } => ProtoState::Dccp { state, role },
        }
    }
}

impl From<&Flow> for WireFlow {
    fn from(f: &Flow) -> WireFlow {
        WireFlow {
            proto: f.orig.proto,
            orig: WireTuple::from(&f.orig),
            zone: f.zone,
            status: f.status,
            timeout: f.timeout,
            mark: f.mark,
            state: WireState::from(&f.state),
            labels: f.labels.clone(),
            helper: f.helper.clone(),
            tail: wire_tail(f),
        }
    }
}

fn wire_tail(f: &Flow) -> WireTail {
    if f.master.is_none() && f.seq_adj.is_none() {
        return if f.has_nat() {
            nat_tail(f)
        } else {
            WireTail::Plain
        };
    }
    let reply = f.has_nat().then(|| WireTuple::from(&f.reply));
    WireTail::Related(Box::new(WireRelated {
        reply,
        master: f.master.as_ref().map(|m| WireMaster {
            proto: m.proto,
            tuple: WireTuple::from(m),
        }),
        seq_adj: f.seq_adj.as_ref().map(WireSeqAdj::from),
    }))
}

/// A NATed flow's tail: one end of the reply tuple when only that end
/// (address and port) differs from the inverted original, else the whole
/// reply tuple.
fn nat_tail(f: &Flow) -> WireTail {
    let inv = f.orig.inverted();
    if let (L4::Ports { src: is, dst: id }, L4::Ports { src: rs, dst: rd }) = (inv.l4, f.reply.l4) {
        if f.reply.src == inv.src && rs == is && f.reply.dst.is_ipv6() == inv.dst.is_ipv6() {
            return WireTail::SnatTo(WireEnd::new(f.reply.dst, rd));
        }
        if f.reply.dst == inv.dst && rd == id && f.reply.src.is_ipv6() == inv.src.is_ipv6() {
            return WireTail::DnatTo(WireEnd::new(f.reply.src, rs));
        }
    }
    WireTail::Nat(WireTuple::from(&f.reply))
}

impl WireFlow {
    /// The model flow. Call on a validated flow (`decode_body` validates).
    pub fn into_flow(self) -> Flow {
        let orig = self.orig.to_tuple(self.proto);
        let reply = self.tail.reply_of(&orig).unwrap_or_else(|| orig.inverted());
        let (master, seq_adj) = match &self.tail {
            WireTail::Related(rel) => (
                rel.master.map(|m| m.tuple.to_tuple(m.proto)),
                rel.seq_adj.map(SeqAdj::from),
            ),
            _ => (None, None),
        };
        Flow {
            orig,
            reply,
            zone: self.zone,
            status: self.status,
            timeout: self.timeout,
            mark: self.mark,
            state: self.state.into(),
            labels: self.labels,
            helper: self.helper,
            master,
            seq_adj,
        }
    }

    pub fn key(&self) -> FlowKey {
        FlowKey {
            zone: self.zone,
            orig: self.orig.to_tuple(self.proto),
        }
    }

    /// Semantic checks bincode cannot make.
    pub fn validate(&self) -> Result<(), WireError> {
        self.orig.validate(self.proto)?;
        if let WireTail::Related(rel) = &self.tail {
            if let Some(m) = &rel.master {
                m.tuple.validate(m.proto)?;
                if m.tuple.is_v6() != self.orig.is_v6() {
                    return Err(WireError::BadFlow("master of another address family"));
                }
            }
        }
        let reply = match &self.tail {
            WireTail::Nat(t) => Some(t),
            WireTail::Related(rel) => rel.reply.as_ref(),
            WireTail::SnatTo(end) | WireTail::DnatTo(end) => {
                if !matches!(self.orig.l4, WireL4::Ports { .. }) {
                    return Err(WireError::BadFlow(
                        "translated port of a flow without ports",
                    ));
                }
                if end.is_v6() != self.orig.is_v6() {
                    return Err(WireError::BadFlow("address family differs between tuples"));
                }
                None
            }
            WireTail::Plain => None,
        };
        if let Some(reply) = reply {
            reply.validate(self.proto)?;
            if reply.is_v6() != self.orig.is_v6() {
                return Err(WireError::BadFlow("address family differs between tuples"));
            }
        }
        if self
            .helper
            .as_ref()
            .is_some_and(|h| h.len() > MAX_HELPER_LEN)
        {
            return Err(WireError::BadFlow("helper name too long"));
        }
        if self
            .labels
            .as_ref()
            .is_some_and(|l| l.len() > MAX_LABELS_LEN)
        {
            return Err(WireError::BadFlow("labels too long"));
        }
        Ok(())
    }
}

impl From<&FlowKey> for WireKey {
    fn from(k: &FlowKey) -> WireKey {
        WireKey {
            proto: k.orig.proto,
            zone: k.zone,
            orig: WireTuple::from(&k.orig),
        }
    }
}

impl WireKey {
    pub fn to_key(&self) -> FlowKey {
        FlowKey {
            zone: self.zone,
            orig: self.orig.to_tuple(self.proto),
        }
    }

    pub fn validate(&self) -> Result<(), WireError> {
        self.orig.validate(self.proto)
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_BODY + 1 }>()
}

/// The bincode bytes of one message; a body is a varint count followed
/// by the messages' bytes, exactly as bincode encodes a `Vec<Message>`.
/// The flow-carrying messages take the hand-written path (`compact`).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message_into(msg, &mut out);
    out
}

/// `encode_message`, appended to `out`.
pub fn encode_message_into(msg: &Message, out: &mut Vec<u8>) {
    match msg {
        Message::Upsert(flow) => {
            out.push(UPSERT_VARIANT);
            compact::put_flow(out, flow);
        }
        Message::Delete(key) => {
            out.push(DELETE_VARIANT);
            compact::put_key(out, key);
        }
        other => {
            if let Err(err) = bincode::serde::encode_into_std_write(other, out, config()) {
                // Our own types always serialise; log rather than panic.
                tracing::error!(%err, "cannot encode a sync message");
            }
        }
    }
}

/// `Message::Upsert`'s variant index, its first byte on the wire.
pub const UPSERT_VARIANT: u8 = 0;
/// `Message::Delete`'s.
pub const DELETE_VARIANT: u8 = 1;

/// Decode and validate a body.
pub fn decode_body(body: &[u8]) -> Result<Vec<Message>, WireError> {
    if body.len() > MAX_BODY {
        return Err(WireError::Oversized(body.len()));
    }
    let mut r = compact::Reader::new(body);
    // Check the count before decoding anything behind it.
    let count = r.varint(u64::MAX)?;
    if count > MAX_MESSAGES as u64 {
        return Err(WireError::TooManyMessages(count));
    }
    let mut messages = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let message = match body.get(r.position()) {
            Some(&UPSERT_VARIANT) => {
                r.u8()?;
                Message::Upsert(r.flow()?)
            }
            Some(&DELETE_VARIANT) => {
                r.u8()?;
                Message::Delete(r.key()?)
            }
            _ => {
                let rest = &body[r.position()..];
                let (message, used): (Message, usize) =
                    bincode::serde::decode_from_slice(rest, config())
                        .map_err(|e| WireError::BadBody(e.to_string()))?;
                r.skip(used)?;
                message
            }
        };
        match &message {
            Message::Upsert(f) => f.validate()?,
            Message::Delete(k) => k.validate()?,
            Message::ExpectUpsert(e) => validate_expectation(e)?,
            Message::ExpectDelete(k) => validate_expectation(&Expectation {
                zone: k.zone,
                master: k.master,
                tuple: k.tuple,
                mask: k.tuple,
                timeout: 0,
                flags: 0,
                class: 0,
                helper: None,
                nat: None,
                expectfn: None,
            })?,
            other => other.validate_ranges()?,
        }
        messages.push(message);
    }
    if !r.is_empty() {
        return Err(WireError::BadBody(format!(
            "{} trailing bytes",
            body.len() - r.position()
        )));
    }
    Ok(messages)
}
