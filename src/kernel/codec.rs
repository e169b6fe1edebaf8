//! The ctnetlink codec: [`Flow`] <-> netlink messages of the CTNETLINK
//! subsystem.
//!
//! Owns: the bytes of every ctnetlink request ctsync sends (create, update,
//! delete, get, dump) and the decoding of the flows the kernel reports
//! (dumps and events). Both directions are written by hand, straight into
//! the caller's buffer: netlink-packet-netfilter's emitters allocate a
//! vector per nest and recompute lengths at every level (556 ns a TCP
//! create against 62 by hand, `examples/encode_rate`), and its parsers
//! allocate likewise, while a commit encodes a million requests and events
//! arrive by the hundred thousand per second. The crate stays as the test
//! oracle: the requests are checked against its bytes for every kind of
//! flow (`requests_match_the_crate_byte_for_byte`). The attribute helpers
//! and tuple decoder are shared with `expect_codec`.
//! Must not: do I/O, panic on any input, or decide timeouts (a flow's
//! timeout is sent as given, except that 0 becomes 1, see [`encode_create`]).

use crate::flow::{
    proto, status, Flow, FlowKey, ProtoState, SeqAdj, SeqAdjDir, Tuple, L4, TCP_FLAG_BE_LIBERAL,
};
use std::net::IpAddr;

use super::socket::{finish_msg, start_msg, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};

/// nfnetlink subsystem id of ctnetlink.
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;
/// ctnetlink message types.
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
pub const IPCTNL_MSG_CT_GET: u8 = 1;
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;

/// The netlink message type of a ctnetlink message.
pub const fn ct_msg_type(msg: u8) -> u16 {
    ((NFNL_SUBSYS_CTNETLINK as u16) << 8) | msg as u16
}

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

// Top-level attributes (enum ctattr_type).
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_HELP: u16 = 5;
const CTA_NAT_SRC: u16 = 6;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_NAT_DST: u16 = 13;
const CTA_TUPLE_MASTER: u16 = 14;
const CTA_SEQ_ADJ_ORIG: u16 = 15;
const CTA_SEQ_ADJ_REPLY: u16 = 16;
const CTA_ZONE: u16 = 18;
const CTA_LABELS: u16 = 22;
const CTA_LABELS_MASK: u16 = 23;
// Inside a tuple.
const CTA_TUPLE_ZONE: u16 = 3;
// Inside CTA_TUPLE_PROTO.
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
// Inside CTA_PROTOINFO.
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_DCCP: u16 = 2;
const CTA_PROTOINFO_SCTP: u16 = 3;
const CTA_PROTOINFO_DCCP_STATE: u16 = 1;
const CTA_PROTOINFO_DCCP_ROLE: u16 = 2;
const CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ: u16 = 3;
const CTA_PROTOINFO_SCTP_STATE: u16 = 1;
const CTA_PROTOINFO_SCTP_VTAG_ORIGINAL: u16 = 2;
const CTA_PROTOINFO_SCTP_VTAG_REPLY: u16 = 3;
// Inside CTA_HELP.
const CTA_HELP_NAME: u16 = 1;
// Inside CTA_SEQ_ADJ_ORIG / CTA_SEQ_ADJ_REPLY (enum ctattr_seqadj).
const CTA_SEQADJ_CORRECTION_POS: u16 = 1;
const CTA_SEQADJ_OFFSET_BEFORE: u16 = 2;
const CTA_SEQADJ_OFFSET_AFTER: u16 = 3;
// Inside CTA_NAT_SRC / CTA_NAT_DST.
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_V6_MAXIP: u16 = 5;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;

/// Largest label set the kernel keeps (128 bits).
const LABELS_MAX: usize = 16;

/// Status bits a create or update never sends. Checked on kernel 6.18
/// (integration test `every_status_bit_is_accepted`): DYING makes a create
/// fail with EBUSY; EXPECTED is refused by older kernels (conntrackd clears
/// it). Every other bit can be sent as dumped: the kernel keeps SEEN_REPLY,
/// ASSURED, HELPER and FIXED_TIMEOUT, and ignores the bits it manages itself
/// (NAT, NAT_DONE, SEQ_ADJUST, TEMPLATE, UNTRACKED, OFFLOAD). CONFIRMED is
/// always set: a hand-built create without it fails with EBUSY.
///
/// EXPECTED is the kernel's own: it sets it on a create that carries
/// CTA_TUPLE_MASTER (the status is applied before the master is attached,
/// so a create that sends the bit fails with EBUSY), and an update must send
/// it exactly as the kernel holds it (any change of EXPECTED, CONFIRMED or
/// DYING is EBUSY, `nf_ct_change_status_common`): see [`encode_update`].
pub const STATUS_NEVER_SENT: u32 = status::EXPECTED | status::DYING;

/// Options of a create (conntrackd's commit options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// Keep TCP window tracking on (conntrackd `TCPWindowTracking on`).
    /// Off by default: BE_LIBERAL is set in both directions, because the
    /// window state is not replicated.
    pub tcp_window_tracking: bool,
}

/// A ctnetlink message that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message too short for {0}")]
    Truncated(&'static str),
    #[error("missing attribute {0}")]
    Missing(&'static str),
    #[error("invalid attribute {0}")]
    Invalid(&'static str),
}

// ---------------------------------------------------------------------------
// Encoding

pub(super) fn family_of(t: &Tuple) -> u8 {
    if t.is_ipv6() {
        AF_INET6
    } else {
        AF_INET
    }
}

/// Append a plain attribute (padded to 4 bytes).
pub(super) fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    pad(buf);
}

pub(super) fn pad(buf: &mut Vec<u8>) {
    buf.resize((buf.len() + 3) & !3, 0);
}

/// Open a nested attribute; close it with [`nest_end`].
pub(super) fn nest_start(buf: &mut Vec<u8>, kind: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    start
}

pub(super) fn nest_end(buf: &mut [u8], start: usize) {
    let len = u16::try_from(buf.len().saturating_sub(start)).unwrap_or(u16::MAX);
    if let Some(slot) = buf.get_mut(start..start + 2) {
        slot.copy_from_slice(&len.to_ne_bytes());
    }
}

/// Append an address attribute: `v4` or `v6` as the address's family.
fn put_ip(buf: &mut Vec<u8>, v4: u16, v6: u16, addr: &IpAddr) {
    match addr {
        IpAddr::V4(a) => put_attr(buf, v4, &a.octets()),
        IpAddr::V6(a) => put_attr(buf, v6, &a.octets()),
    }
}

/// Append `t` as a nested tuple attribute of type `kind` (CTA_TUPLE_IP and
/// CTA_TUPLE_PROTO inside), the layout of CTA_TUPLE_ORIG.
pub(super) fn put_tuple(buf: &mut Vec<u8>, kind: u16, t: &Tuple) {
    let n = nest_start(buf, kind);
    let ip = nest_start(buf, CTA_TUPLE_IP);
    put_ip(buf, CTA_IP_V4_SRC, CTA_IP_V6_SRC, &t.src);
    put_ip(buf, CTA_IP_V4_DST, CTA_IP_V6_DST, &t.dst);
    nest_end(buf, ip);
    let p = nest_start(buf, CTA_TUPLE_PROTO);
    put_attr(buf, CTA_PROTO_NUM, &[t.proto]);
    match t.l4 {
        L4::Ports { src, dst } => {
            put_attr(buf, CTA_PROTO_SRC_PORT, &src.to_be_bytes());
            put_attr(buf, CTA_PROTO_DST_PORT, &dst.to_be_bytes());
        }
        L4::Icmp { kind, code, id } => {
            let (id_a, type_a, code_a) = if t.proto == proto::ICMPV6 {
                (
                    CTA_PROTO_ICMPV6_ID,
                    CTA_PROTO_ICMPV6_TYPE,
                    CTA_PROTO_ICMPV6_CODE,
                )
            } else {
                (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            };
            put_attr(buf, id_a, &id.to_be_bytes());
            put_attr(buf, type_a, &[kind]);
            put_attr(buf, code_a, &[code]);
        }
        L4::None => {}
    }
    nest_end(buf, p);
    nest_end(buf, n);
}

/// Append a NUL-terminated name, sent as given (the kernel refuses a
/// helper name of more than 15 bytes, and looks expectfn names up whole).
pub(super) fn put_string(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    put_attr(buf, kind, &v);
}

/// Append a 32-bit big-endian attribute (status, timeout, mark).
fn put_be32(buf: &mut Vec<u8>, kind: u16, v: u32) {
    put_attr(buf, kind, &v.to_be_bytes());
}

fn put_seq_adj(buf: &mut Vec<u8>, seq_adj: &Option<SeqAdj>) {
    let Some(adj) = seq_adj else { return };
    for (kind, dir) in [(CTA_SEQ_ADJ_ORIG, adj.orig), (CTA_SEQ_ADJ_REPLY, adj.reply)] {
        let n = nest_start(buf, kind);
        put_attr(
            buf,
            CTA_SEQADJ_CORRECTION_POS,
            &dir.correction_pos.to_be_bytes(),
        );
        put_attr(
            buf,
            CTA_SEQADJ_OFFSET_BEFORE,
            &dir.offset_before.to_be_bytes(),
        );
        put_attr(
            buf,
            CTA_SEQADJ_OFFSET_AFTER,
            &dir.offset_after.to_be_bytes(),
        );
        nest_end(buf, n);
    }
}

fn put_zone(buf: &mut Vec<u8>, zone: u16) {
    if zone != 0 {
        put_attr(buf, CTA_ZONE, &zone.to_be_bytes());
    }
}

fn put_protoinfo(buf: &mut Vec<u8>, flow: &Flow, liberal: bool) {
    match flow.state {
        ProtoState::Tcp {
            state,
            wscale_orig,
            wscale_reply,
            flags_orig,
            flags_reply,
        } if flow.orig.proto == proto::TCP => {
            let extra = if liberal { TCP_FLAG_BE_LIBERAL } else { 0 };
            let fo = flags_orig | extra;
            let fr = flags_reply | extra;
            let outer = nest_start(buf, CTA_PROTOINFO);
            let inner = nest_start(buf, CTA_PROTOINFO_TCP);
            put_attr(buf, CTA_PROTOINFO_TCP_STATE, &[state]);
            put_attr(buf, CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, &[wscale_orig]);
            put_attr(buf, CTA_PROTOINFO_TCP_WSCALE_REPLY, &[wscale_reply]);
            // struct nf_ct_tcp_flags {flags, mask}: mask = flags, so
            // exactly these are set.
            put_attr(buf, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[fo, fo]);
            put_attr(buf, CTA_PROTOINFO_TCP_FLAGS_REPLY, &[fr, fr]);
            nest_end(buf, inner);
            nest_end(buf, outer);
        }
        ProtoState::Sctp {
            state,
            vtag_orig,
            vtag_reply,
        } if flow.orig.proto == proto::SCTP => {
            let outer = nest_start(buf, CTA_PROTOINFO);
            let inner = nest_start(buf, CTA_PROTOINFO_SCTP);
            put_attr(buf, CTA_PROTOINFO_SCTP_STATE, &[state]);
            put_attr(
                buf,
                CTA_PROTOINFO_SCTP_VTAG_ORIGINAL,
                &vtag_orig.to_be_bytes(),
            );
            put_attr(
                buf,
                CTA_PROTOINFO_SCTP_VTAG_REPLY,
                &vtag_reply.to_be_bytes(),
            );
            nest_end(buf, inner);
            nest_end(buf, outer);
        }
        ProtoState::Dccp { state, role } if flow.orig.proto == proto::DCCP => {
            let outer = nest_start(buf, CTA_PROTOINFO);
            let inner = nest_start(buf, CTA_PROTOINFO_DCCP);
            put_attr(buf, CTA_PROTOINFO_DCCP_STATE, &[state]);
            put_attr(buf, CTA_PROTOINFO_DCCP_ROLE, &[role]);
            nest_end(buf, inner);
            nest_end(buf, outer);
        }
        _ => {}
    }
}

/// The flow's NAT as bindings (CTA_NAT_SRC / CTA_NAT_DST, min = max).
fn put_nat_bindings(buf: &mut Vec<u8>, flow: &Flow) {
    let nat = flow.nat();
    if let Some(s) = nat.snat {
        put_nat(buf, CTA_NAT_SRC, s.addr, s.port);
    }
    if let Some(d) = nat.dnat {
        put_nat(buf, CTA_NAT_DST, d.addr, d.port);
    }
}

fn put_helper(buf: &mut Vec<u8>, helper: &Option<String>) {
    if let Some(h) = helper {
        let n = nest_start(buf, CTA_HELP);
        put_string(buf, CTA_HELP_NAME, h);
        nest_end(buf, n);
    }
}

fn put_labels(buf: &mut Vec<u8>, labels: &Option<Vec<u8>>) {
    let Some(l) = labels else { return };
    if l.iter().all(|b| *b == 0) {
        return;
    }
    let mut v: Vec<u8> = l.iter().copied().take(LABELS_MAX).collect();
    pad(&mut v);
    put_attr(buf, CTA_LABELS, &v);
    put_attr(buf, CTA_LABELS_MASK, &vec![0xff; v.len()]);
}

fn put_nat(buf: &mut Vec<u8>, kind: u16, addr: IpAddr, port: Option<u16>) {
    let n = nest_start(buf, kind);
    put_ip(buf, CTA_NAT_V4_MINIP, CTA_NAT_V6_MINIP, &addr);
    put_ip(buf, CTA_NAT_V4_MAXIP, CTA_NAT_V6_MAXIP, &addr);
    if let Some(p) = port {
        let pn = nest_start(buf, CTA_NAT_PROTO);
        put_attr(buf, CTA_PROTONAT_PORT_MIN, &p.to_be_bytes());
        put_attr(buf, CTA_PROTONAT_PORT_MAX, &p.to_be_bytes());
        nest_end(buf, pn);
    }
    nest_end(buf, n);
}

fn send_status(s: u32) -> u32 {
    (s | status::CONFIRMED) & !STATUS_NEVER_SENT
}

/// A timeout of 0 would make the kernel refuse a create (and expire the flow
/// at once on update); 1 second is the smallest timeout that works.
fn send_timeout(t: u32) -> u32 {
    t.max(1)
}

/// Append an IPCTNL_MSG_CT_NEW create request (NLM_F_REQUEST | CREATE |
/// EXCL, no ACK flag) for `flow`, as conntrackd's commit builds it: the
/// original tuple, the reply tuple rebuilt as the inverted original, NAT as
/// CTA_NAT_SRC/CTA_NAT_DST (min = max) from [`Flow::nat`], status with
/// CONFIRMED set and [`STATUS_NEVER_SENT`] cleared, timeout (0 becomes 1),
/// mark, zone, labels with an all-ones mask, helper name, and protocol
/// state (TCP with BE_LIBERAL in both directions unless
/// `opts.tcp_window_tracking`).
///
/// A RELATED flow carries its master's original tuple (CTA_TUPLE_MASTER):
/// the kernel looks the master up in the flow's zone, attaches the flow to
/// it and sets EXPECTED itself; it refuses the create with ENOENT when the
/// master is not in the table. A sequence adjustment is sent in both
/// directions (CTA_SEQ_ADJ_ORIG/_REPLY; the kernel sets SEQ_ADJUST).
pub fn encode_create(buf: &mut Vec<u8>, flow: &Flow, seq: u32, opts: &CreateOptions) {
    encode_create_as(buf, flow, seq, opts, true);
}

/// [`encode_create`], leaving the master tuple out when `with_master` is
/// false (the writer's fallback when the master is missing).
pub(super) fn encode_create_as(
    buf: &mut Vec<u8>,
    flow: &Flow,
    seq: u32,
    opts: &CreateOptions,
    with_master: bool,
) {
    let start = start_msg(
        buf,
        ct_msg_type(IPCTNL_MSG_CT_NEW),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        family_of(&flow.orig),
    );
    put_tuple(buf, CTA_TUPLE_ORIG, &flow.orig);
    put_tuple(buf, CTA_TUPLE_REPLY, &flow.orig.inverted());
    put_be32(buf, CTA_STATUS, send_status(flow.status));
    put_be32(buf, CTA_TIMEOUT, send_timeout(flow.timeout));
    put_be32(buf, CTA_MARK, flow.mark);
    put_zone(buf, flow.zone);
    put_protoinfo(buf, flow, !opts.tcp_window_tracking);
    put_nat_bindings(buf, flow);
    put_helper(buf, &flow.helper);
    put_labels(buf, &flow.labels);
    if let (Some(m), true) = (&flow.master, with_master) {
        put_tuple(buf, CTA_TUPLE_MASTER, m);
    }
    put_seq_adj(buf, &flow.seq_adj);
    finish_msg(buf, start);
}

/// Append an update of an existing flow (IPCTNL_MSG_CT_NEW without CREATE):
/// the original tuple and zone identify it; status, timeout, mark, protocol
/// state, labels and the sequence adjustment are changed. TCP flags are
/// sent with BE_LIBERAL set, as on create without window tracking. The
/// timeout is left out for flows with FIXED_TIMEOUT: the kernel refuses to
/// change it (EPERM). The master tuple is never sent: the kernel refuses
/// CTA_TUPLE_MASTER (and NAT) on an update with EOPNOTSUPP. The status
/// carries EXPECTED when the flow has a master, as the kernel holds it for
/// a flow created with one (a status whose EXPECTED bit differs from the
/// kernel's is refused with EBUSY; see [`encode_update_as`]).
pub fn encode_update(buf: &mut Vec<u8>, flow: &Flow, seq: u32) {
    encode_update_as(buf, flow, seq, flow.master.is_some());
}

/// [`encode_update`] with the EXPECTED bit of the status given explicitly
/// (`expected`): the writer retries with it flipped when the kernel's copy
/// of the flow was created without its master (or with one).
pub fn encode_update_as(buf: &mut Vec<u8>, flow: &Flow, seq: u32, expected: bool) {
    let start = start_msg(
        buf,
        ct_msg_type(IPCTNL_MSG_CT_NEW),
        NLM_F_REQUEST,
        seq,
        family_of(&flow.orig),
    );
    put_tuple(buf, CTA_TUPLE_ORIG, &flow.orig);
    let mut st = send_status(flow.status);
    if expected {
        st |= status::EXPECTED;
    }
    put_be32(buf, CTA_STATUS, st);
    if flow.status & status::FIXED_TIMEOUT == 0 {
        put_be32(buf, CTA_TIMEOUT, send_timeout(flow.timeout));
    }
    put_be32(buf, CTA_MARK, flow.mark);
    put_zone(buf, flow.zone);
    put_protoinfo(buf, flow, true);
    put_labels(buf, &flow.labels);
    put_seq_adj(buf, &flow.seq_adj);
    finish_msg(buf, start);
}

fn encode_by_key(buf: &mut Vec<u8>, key: &FlowKey, seq: u32, msg: u8) {
    let start = start_msg(
        buf,
        ct_msg_type(msg),
        NLM_F_REQUEST,
        seq,
        family_of(&key.orig),
    );
    put_tuple(buf, CTA_TUPLE_ORIG, &key.orig);
    put_zone(buf, key.zone);
    finish_msg(buf, start);
}

/// Append a delete of the flow with this key (IPCTNL_MSG_CT_DELETE).
pub fn encode_delete(buf: &mut Vec<u8>, key: &FlowKey, seq: u32) {
    encode_by_key(buf, key, seq, IPCTNL_MSG_CT_DELETE);
}

/// Append a get of the flow with this key (IPCTNL_MSG_CT_GET).
pub fn encode_get(buf: &mut Vec<u8>, key: &FlowKey, seq: u32) {
    encode_by_key(buf, key, seq, IPCTNL_MSG_CT_GET);
}

/// Append a dump request of the whole table, IPv4 and IPv6 (AF_UNSPEC).
pub fn encode_dump_request(buf: &mut Vec<u8>, seq: u32) {
    let start = start_msg(
        buf,
        ct_msg_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        AF_UNSPEC,
    );
    finish_msg(buf, start);
}

// ---------------------------------------------------------------------------
// Decoding

/// One netlink attribute, borrowed from the message.
pub(super) struct Attr<'a> {
    kind: u16,
    value: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The type without the nested / byte-order flags.
    pub(super) fn kind(&self) -> u16 {
        self.kind
    }

    pub(super) fn value(&self) -> &'a [u8] {
        self.value
    }
}

/// Each attribute in `buf` (length, type, value, padded to 4 bytes);
/// stops at the first malformed one with an error.
pub(super) fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<Attr<'_>, CodecError>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        let Some(value) = rest.get(4..len).filter(|_| len >= 4) else {
            rest = &[];
            return Some(Err(CodecError::Invalid("attribute length")));
        };
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some(Ok(Attr { kind, value }))
    })
}

pub(super) fn be_u16(v: &[u8], what: &'static str) -> Result<u16, CodecError> {
    match v.get(..2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(CodecError::Invalid(what)),
    }
}

pub(super) fn be_u32(v: &[u8], what: &'static str) -> Result<u32, CodecError> {
    match v.get(..4) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(CodecError::Invalid(what)),
    }
}

fn first_u8(v: &[u8], what: &'static str) -> Result<u8, CodecError> {
    v.first().copied().ok_or(CodecError::Invalid(what))
}

// Inside a tuple (enum ctattr_tuple, ctattr_ip, ctattr_l4proto).
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// Inside CTA_PROTOINFO_TCP (enum ctattr_protoinfo_tcp).
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: u16 = 2;
const CTA_PROTOINFO_TCP_WSCALE_REPLY: u16 = 3;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;

fn ip_addr(v: &[u8], what: &'static str) -> Result<IpAddr, CodecError> {
    if let Ok(a) = <[u8; 4]>::try_from(v) {
        Ok(IpAddr::from(a))
    } else if let Ok(a) = <[u8; 16]>::try_from(v) {
        Ok(IpAddr::from(a))
    } else {
        Err(CodecError::Invalid(what))
    }
}

#[derive(Default)]
struct TupleParts {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
    icmp_id: Option<u16>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    zone: Option<u16>,
}

/// A CTA_TUPLE_* nest, read in place (events are decoded by the
/// hundred thousand per second: no allocation per attribute).
pub(super) fn decode_tuple(
    value: &[u8],
    what: &'static str,
) -> Result<(Tuple, Option<u16>), CodecError> {
    let mut t = TupleParts::default();
    for nla in attrs(value) {
        let nla = nla?;
        match nla.kind() {
            CTA_TUPLE_IP => {
                for a in attrs(nla.value()) {
                    let a = a?;
                    match a.kind() {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = Some(ip_addr(a.value(), what)?),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => t.dst = Some(ip_addr(a.value(), what)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in attrs(nla.value()) {
                    let a = a?;
                    let v = a.value();
                    match a.kind() {
                        CTA_PROTO_NUM => t.proto = Some(first_u8(v, "CTA_PROTO_NUM")?),
                        CTA_PROTO_SRC_PORT => t.sport = Some(be_u16(v, "CTA_PROTO_SRC_PORT")?),
                        CTA_PROTO_DST_PORT => t.dport = Some(be_u16(v, "CTA_PROTO_DST_PORT")?),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            t.icmp_id = Some(be_u16(v, "CTA_PROTO_ICMP_ID")?)
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            t.icmp_type = Some(first_u8(v, "CTA_PROTO_ICMP_TYPE")?)
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            t.icmp_code = Some(first_u8(v, "CTA_PROTO_ICMP_CODE")?)
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_ZONE => t.zone = Some(be_u16(nla.value(), "CTA_TUPLE_ZONE")?),
            _ => {}
        }
    }
    let (Some(src), Some(dst), Some(proto)) = (t.src, t.dst, t.proto) else {
        return Err(CodecError::Missing(what));
    };
    if src.is_ipv6() != dst.is_ipv6() {
        return Err(CodecError::Invalid(what));
    }
    let l4 = match (t.sport, t.dport, t.icmp_type, t.icmp_code, t.icmp_id) {
        (Some(src), Some(dst), _, _, _) => L4::Ports { src, dst },
        (_, _, Some(kind), Some(code), Some(id)) => L4::Icmp { kind, code, id },
        _ => L4::None,
    };
    Ok((
        Tuple {
            src,
            dst,
            proto,
            l4,
        },
        t.zone,
    ))
}

fn decode_protoinfo(value: &[u8], proto_num: u8) -> Result<ProtoState, CodecError> {
    for nla in attrs(value) {
        let nla = nla?;
        match nla.kind() {
            CTA_PROTOINFO_TCP if proto_num == proto::TCP => {
                let (mut state, mut wo, mut wr, mut fo, mut fr) = (0, 0, 0, 0, 0);
                for a in attrs(nla.value()) {
                    let a = a?;
                    let v = a.value();
                    match a.kind() {
                        CTA_PROTOINFO_TCP_STATE => state = first_u8(v, "TCP state")?,
                        CTA_PROTOINFO_TCP_WSCALE_ORIGINAL => wo = first_u8(v, "TCP wscale")?,
                        CTA_PROTOINFO_TCP_WSCALE_REPLY => wr = first_u8(v, "TCP wscale")?,
                        // struct nf_ct_tcp_flags { flags, mask }
                        CTA_PROTOINFO_TCP_FLAGS_ORIGINAL => fo = first_u8(v, "TCP flags")?,
                        CTA_PROTOINFO_TCP_FLAGS_REPLY => fr = first_u8(v, "TCP flags")?,
                        _ => {}
                    }
                }
                return Ok(ProtoState::Tcp {
                    state,
                    wscale_orig: wo,
                    wscale_reply: wr,
                    flags_orig: fo,
                    flags_reply: fr,
                });
            }
            CTA_PROTOINFO_SCTP if proto_num == proto::SCTP => {
                let (mut state, mut vo, mut vr) = (0, 0, 0);
                for a in attrs(nla.value()) {
                    let a = a?;
                    match a.kind() {
                        CTA_PROTOINFO_SCTP_STATE => state = first_u8(a.value(), "SCTP state")?,
                        CTA_PROTOINFO_SCTP_VTAG_ORIGINAL => vo = be_u32(a.value(), "SCTP vtag")?,
                        CTA_PROTOINFO_SCTP_VTAG_REPLY => vr = be_u32(a.value(), "SCTP vtag")?,
                        _ => {}
                    }
                }
                return Ok(ProtoState::Sctp {
                    state,
                    vtag_orig: vo,
                    vtag_reply: vr,
                });
            }
            CTA_PROTOINFO_DCCP if proto_num == proto::DCCP => {
                let (mut state, mut role) = (0, 0);
                for a in attrs(nla.value()) {
                    let a = a?;
                    match a.kind() {
                        CTA_PROTOINFO_DCCP_STATE => state = first_u8(a.value(), "DCCP state")?,
                        CTA_PROTOINFO_DCCP_ROLE => role = first_u8(a.value(), "DCCP role")?,
                        CTA_PROTOINFO_DCCP_HANDSHAKE_SEQ => {}
                        _ => {}
                    }
                }
                return Ok(ProtoState::Dccp { state, role });
            }
            _ => {}
        }
    }
    Ok(ProtoState::None)
}

/// One direction of CTA_SEQ_ADJ_*: all three values are required (the
/// kernel always sends them together and refuses a write without one).
fn decode_seq_adj_dir(value: &[u8], what: &'static str) -> Result<SeqAdjDir, CodecError> {
    let (mut pos, mut before, mut after) = (None, None, None);
    for a in attrs(value) {
        let a = a?;
        match a.kind() {
            CTA_SEQADJ_CORRECTION_POS => pos = Some(be_u32(a.value(), what)?),
            CTA_SEQADJ_OFFSET_BEFORE => before = Some(be_u32(a.value(), what)?),
            CTA_SEQADJ_OFFSET_AFTER => after = Some(be_u32(a.value(), what)?),
            _ => {}
        }
    }
    match (pos, before, after) {
        (Some(correction_pos), Some(offset_before), Some(offset_after)) => Ok(SeqAdjDir {
            correction_pos,
            offset_before,
            offset_after,
        }),
        _ => Err(CodecError::Missing(what)),
    }
}

fn decode_helper(value: &[u8]) -> Result<Option<String>, CodecError> {
    for a in attrs(value) {
        let a = a?;
        if a.kind() == CTA_HELP_NAME {
            let raw = a.value();
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            let name = std::str::from_utf8(raw.get(..end).unwrap_or_default())
                .map_err(|_| CodecError::Invalid("CTA_HELP_NAME"))?;
            return Ok((!name.is_empty()).then(|| name.to_string()));
        }
    }
    Ok(None)
}

/// Decode one ctnetlink conntrack message: `payload` is everything after
/// the netlink header (nfgenmsg, then attributes). Never panics; unknown
/// attributes are ignored.
pub fn decode_flow(payload: &[u8]) -> Result<Flow, CodecError> {
    let attr_bytes = payload.get(4..).ok_or(CodecError::Truncated("nfgenmsg"))?;
    let mut orig = None;
    let mut reply = None;
    let mut tuple_zone = None;
    let mut zone = None;
    let mut st = 0u32;
    let mut timeout = 0u32;
    let mut mark = 0u32;
    let mut protoinfo: Option<&[u8]> = None;
    let mut labels = None;
    let mut helper = None;
    let mut master = None;
    let mut seq_orig = None;
    let mut seq_reply = None;
    for nla in attrs(attr_bytes) {
        let nla = nla?;
        let v = nla.value();
        match nla.kind() {
            CTA_TUPLE_ORIG => {
                let (t, z) = decode_tuple(v, "CTA_TUPLE_ORIG")?;
                orig = Some(t);
                tuple_zone = z;
            }
            CTA_TUPLE_REPLY => reply = Some(decode_tuple(v, "CTA_TUPLE_REPLY")?.0),
            CTA_STATUS => st = be_u32(v, "CTA_STATUS")?,
            CTA_TIMEOUT => timeout = be_u32(v, "CTA_TIMEOUT")?,
            CTA_MARK => mark = be_u32(v, "CTA_MARK")?,
            CTA_ZONE => zone = Some(be_u16(v, "CTA_ZONE")?),
            CTA_LABELS if v.iter().any(|b| *b != 0) => labels = Some(v.to_vec()),
            CTA_HELP => helper = decode_helper(v)?,
            CTA_PROTOINFO => protoinfo = Some(v),
            CTA_TUPLE_MASTER => master = Some(decode_tuple(v, "CTA_TUPLE_MASTER")?.0),
            CTA_SEQ_ADJ_ORIG => seq_orig = Some(decode_seq_adj_dir(v, "CTA_SEQ_ADJ_ORIG")?),
            CTA_SEQ_ADJ_REPLY => seq_reply = Some(decode_seq_adj_dir(v, "CTA_SEQ_ADJ_REPLY")?),
            _ => {}
        }
    }
    let orig = orig.ok_or(CodecError::Missing("CTA_TUPLE_ORIG"))?;
    if master.is_some_and(|m: Tuple| m.is_ipv6() != orig.is_ipv6()) {
        return Err(CodecError::Invalid("CTA_TUPLE_MASTER"));
    }
    let seq_adj = (seq_orig.is_some() || seq_reply.is_some()).then(|| SeqAdj {
        orig: seq_orig.unwrap_or_default(),
        reply: seq_reply.unwrap_or_default(),
    });
    let reply = reply.unwrap_or_else(|| orig.inverted());
    if reply.is_ipv6() != orig.is_ipv6() || reply.proto != orig.proto {
        return Err(CodecError::Invalid("CTA_TUPLE_REPLY"));
    }
    let state = match protoinfo {
        Some(p) => decode_protoinfo(p, orig.proto)?,
        None => ProtoState::None,
    };
    Ok(Flow {
        orig,
        reply,
        zone: zone.or(tuple_zone).unwrap_or(0),
        status: st,
        timeout,
        mark,
        state,
        labels,
        helper,
        master,
        seq_adj,
    })
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
