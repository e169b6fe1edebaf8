//! The ctnetlink expectation codec: [`Expectation`] <-> netlink messages of
//! the CTNETLINK_EXP subsystem.
//!
//! Owns: the bytes of every expectation request ctsync sends (create,
//! timeout change, read and delete by expected tuple, flush, dump) and the decoding
//! of the expectations the kernel reports (dumps and events). Tuples are
//! written and read with `codec`'s helpers.
//! Must not: do I/O, panic on any input, or decide timeouts.
//!
//! What the kernel (6.18, `ctnetlink_new_expect`) does with a create:
//! the master is looked up by CTA_EXPECT_MASTER in CTA_EXPECT_ZONE (ENOENT
//! when absent; EOPNOTSUPP when the master has no helper extension);
//! CTA_EXPECT_TIMEOUT is ignored (the master helper's policy timeout is
//! used), so [`encode_expect_timeout`] follows a create to set it;
//! CTA_EXPECT_FLAGS is taken without USERSPACE (the kernel clears it);
//! CTA_EXPECT_CLASS is taken only with CTA_EXPECT_HELP_NAME and must not
//! exceed that helper's class maximum (EINVAL); CTA_EXPECT_HELP_NAME names
//! the helper the *expected* connection gets (EOPNOTSUPP if unknown), while
//! dumps report the *master's* helper there, so an expectation written back
//! as dumped gives its connection the master's helper, as conntrackd's
//! commit does (ours sends name and class only for a class above 0); CTA_EXPECT_FN is looked up by name (EINVAL if unknown);
//! CTA_EXPECT_NAT needs both its direction and a complete tuple. An
//! existing expectation (found by the expected tuple) makes a create with
//! NLM_F_EXCL fail with EEXIST. Dumps and events never carry
//! CTA_EXPECT_ZONE: a decoded expectation is in zone 0 unless the message
//! says otherwise.

use super::codec::{
    attrs, be_u32, decode_tuple, family_of, nest_end, nest_start, put_attr, put_string, put_tuple,
    CodecError,
};
use super::socket::{
    finish_msg, start_msg, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::expect::{ExpectKey, ExpectNat, Expectation};

/// nfnetlink subsystem id of ctnetlink's expectations.
pub const NFNL_SUBSYS_CTNETLINK_EXP: u8 = 2;
/// Expectation message types.
pub const IPCTNL_MSG_EXP_NEW: u8 = 0;
pub const IPCTNL_MSG_EXP_GET: u8 = 1;
pub const IPCTNL_MSG_EXP_DELETE: u8 = 2;

/// The netlink message type of an expectation message.
pub const fn exp_msg_type(msg: u8) -> u16 {
    ((NFNL_SUBSYS_CTNETLINK_EXP as u16) << 8) | msg as u16
}

const AF_UNSPEC: u8 = 0;

// enum ctattr_expect.
const CTA_EXPECT_MASTER: u16 = 1;
const CTA_EXPECT_TUPLE: u16 = 2;
const CTA_EXPECT_MASK: u16 = 3;
const CTA_EXPECT_TIMEOUT: u16 = 4;
const CTA_EXPECT_HELP_NAME: u16 = 6;
const CTA_EXPECT_ZONE: u16 = 7;
const CTA_EXPECT_FLAGS: u16 = 8;
const CTA_EXPECT_CLASS: u16 = 9;
const CTA_EXPECT_NAT: u16 = 10;
const CTA_EXPECT_FN: u16 = 11;
// enum ctattr_expect_nat.
const CTA_EXPECT_NAT_DIR: u16 = 1;
const CTA_EXPECT_NAT_TUPLE: u16 = 2;

fn put_zone(buf: &mut Vec<u8>, zone: u16) {
    if zone != 0 {
        put_attr(buf, CTA_EXPECT_ZONE, &zone.to_be_bytes());
    }
}

/// Master, expected tuple and mask: what every create or change needs.
fn put_identity(buf: &mut Vec<u8>, e: &Expectation) {
    put_tuple(buf, CTA_EXPECT_MASTER, &e.master);
    put_tuple(buf, CTA_EXPECT_TUPLE, &e.tuple);
    put_tuple(buf, CTA_EXPECT_MASK, &e.mask);
}

/// Append an IPCTNL_MSG_EXP_NEW create request (NLM_F_REQUEST | CREATE |
/// EXCL | ACK): master, expected tuple, mask, timeout (0 becomes 1; the
/// kernel ignores it on create, see the module doc), zone, flags, class,
/// helper name, NAT and expectfn, each as the expectation has it.
pub fn encode_expect_create(buf: &mut Vec<u8>, e: &Expectation, seq: u32) {
    let start = start_msg(
        buf,
        exp_msg_type(IPCTNL_MSG_EXP_NEW),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        seq,
        family_of(&e.tuple),
    );
    put_identity(buf, e);
    put_attr(buf, CTA_EXPECT_TIMEOUT, &e.timeout.max(1).to_be_bytes());
    put_zone(buf, e.zone);
    put_attr(buf, CTA_EXPECT_FLAGS, &e.flags.to_be_bytes());
    // The helper name is what the *expected* connection gets, and dumps
    // report the master's there: sent back, an FTP data connection would
    // carry the FTP helper. The kernel takes a class only with a helper
    // name, though, and a SIP call's media expectations (class 1 and 2)
    // would all collide in class 0. So: class and name for a class above
    // 0 (its connection then carries the master's helper, which finds
    // nothing to parse in media), neither for class 0.
    if e.class != 0 {
        put_attr(buf, CTA_EXPECT_CLASS, &e.class.to_be_bytes());
        if let Some(h) = &e.helper {
            put_string(buf, CTA_EXPECT_HELP_NAME, h);
        }
    }
    if let Some(nat) = &e.nat {
        let n = nest_start(buf, CTA_EXPECT_NAT);
        put_attr(buf, CTA_EXPECT_NAT_DIR, &nat.dir.to_be_bytes());
        put_tuple(buf, CTA_EXPECT_NAT_TUPLE, &nat.tuple);
        nest_end(buf, n);
    }
    if let Some(f) = &e.expectfn {
        put_string(buf, CTA_EXPECT_FN, f);
    }
    finish_msg(buf, start);
}

/// Append a change of an existing expectation's timeout (IPCTNL_MSG_EXP_NEW
/// without CREATE, with ACK): the only change the kernel makes to an
/// existing expectation. It needs master, tuple and mask like a create;
/// ENOENT when the expectation is gone, ETIME when it is expiring.
pub fn encode_expect_timeout(buf: &mut Vec<u8>, e: &Expectation, seq: u32) {
    let start = start_msg(
        buf,
        exp_msg_type(IPCTNL_MSG_EXP_NEW),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family_of(&e.tuple),
    );
    put_identity(buf, e);
    put_attr(buf, CTA_EXPECT_TIMEOUT, &e.timeout.max(1).to_be_bytes());
    put_zone(buf, e.zone);
    finish_msg(buf, start);
}

/// Append a delete of the expectation matching `key`'s expected tuple in
/// its zone (IPCTNL_MSG_EXP_DELETE with ACK; ENOENT when there is none).
pub fn encode_expect_delete(buf: &mut Vec<u8>, key: &ExpectKey, seq: u32) {
    let start = start_msg(
        buf,
        exp_msg_type(IPCTNL_MSG_EXP_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        family_of(&key.tuple),
    );
    put_tuple(buf, CTA_EXPECT_TUPLE, &key.tuple);
    put_zone(buf, key.zone);
    finish_msg(buf, start);
}

/// Append a read of the expectation matching `key`'s expected tuple in its
/// zone (IPCTNL_MSG_EXP_GET without DUMP): the kernel answers with the
/// expectation (an IPCTNL_MSG_EXP_NEW message, which, like every
/// expectation it reports, does not say its zone) or ENOENT. Asking zone
/// by zone is how an expectation's zone is found.
pub fn encode_expect_get(buf: &mut Vec<u8>, key: &ExpectKey, seq: u32) {
    let start = start_msg(
        buf,
        exp_msg_type(IPCTNL_MSG_EXP_GET),
        NLM_F_REQUEST,
        seq,
        family_of(&key.tuple),
    );
    put_tuple(buf, CTA_EXPECT_TUPLE, &key.tuple);
    put_zone(buf, key.zone);
    finish_msg(buf, start);
}

/// Append a delete of every expectation of the namespace
/// (IPCTNL_MSG_EXP_DELETE without a tuple, with ACK).
pub fn encode_expect_flush(buf: &mut Vec<u8>, seq: u32) {
    let start = start_msg(
        buf,
        exp_msg_type(IPCTNL_MSG_EXP_DELETE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        AF_UNSPEC,
    );
    finish_msg(buf, start);
}

/// Append a dump request of every expectation, IPv4 and IPv6 (AF_UNSPEC).
pub fn encode_expect_dump_request(buf: &mut Vec<u8>, seq: u32) {
    let start = start_msg(
        buf,
        exp_msg_type(IPCTNL_MSG_EXP_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        AF_UNSPEC,
    );
    finish_msg(buf, start);
}

fn be_u16_zone(v: &[u8]) -> Result<u16, CodecError> {
    match v.get(..2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(CodecError::Invalid("CTA_EXPECT_ZONE")),
    }
}

fn nul_string(v: &[u8], what: &'static str) -> Result<Option<String>, CodecError> {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    let s = std::str::from_utf8(v.get(..end).unwrap_or_default())
        .map_err(|_| CodecError::Invalid(what))?;
    Ok((!s.is_empty()).then(|| s.to_string()))
}

fn decode_nat(value: &[u8]) -> Result<ExpectNat, CodecError> {
    let mut dir = None;
    let mut tuple = None;
    for a in attrs(value) {
        let a = a?;
        match a.kind() {
            CTA_EXPECT_NAT_DIR => dir = Some(be_u32(a.value(), "CTA_EXPECT_NAT_DIR")?),
            CTA_EXPECT_NAT_TUPLE => {
                tuple = Some(decode_tuple(a.value(), "CTA_EXPECT_NAT_TUPLE")?.0)
            }
            _ => {}
        }
    }
    let dir = dir.ok_or(CodecError::Missing("CTA_EXPECT_NAT_DIR"))?;
    let tuple = tuple.ok_or(CodecError::Missing("CTA_EXPECT_NAT_TUPLE"))?;
    Ok(ExpectNat { dir, tuple })
}

/// Decode one expectation message: `payload` is everything after the
/// netlink header (nfgenmsg, then attributes). Master, tuple and mask are
/// required and must be of one address family; the rest defaults to zero
/// or none. Never panics; unknown attributes are ignored.
pub fn decode_expectation(payload: &[u8]) -> Result<Expectation, CodecError> {
    let attr_bytes = payload.get(4..).ok_or(CodecError::Truncated("nfgenmsg"))?;
    let (mut master, mut tuple, mut mask) = (None, None, None);
    let (mut timeout, mut zone, mut flags, mut class) = (0, 0, 0, 0);
    let (mut helper, mut nat, mut expectfn) = (None, None, None);
    for nla in attrs(attr_bytes) {
        let nla = nla?;
        let v = nla.value();
        match nla.kind() {
            CTA_EXPECT_MASTER => master = Some(decode_tuple(v, "CTA_EXPECT_MASTER")?.0),
            CTA_EXPECT_TUPLE => tuple = Some(decode_tuple(v, "CTA_EXPECT_TUPLE")?.0),
            CTA_EXPECT_MASK => mask = Some(decode_tuple(v, "CTA_EXPECT_MASK")?.0),
            CTA_EXPECT_TIMEOUT => timeout = be_u32(v, "CTA_EXPECT_TIMEOUT")?,
            CTA_EXPECT_ZONE => zone = be_u16_zone(v)?,
            CTA_EXPECT_FLAGS => flags = be_u32(v, "CTA_EXPECT_FLAGS")?,
            CTA_EXPECT_CLASS => class = be_u32(v, "CTA_EXPECT_CLASS")?,
            CTA_EXPECT_HELP_NAME => helper = nul_string(v, "CTA_EXPECT_HELP_NAME")?,
            CTA_EXPECT_NAT => nat = Some(decode_nat(v)?),
            CTA_EXPECT_FN => expectfn = nul_string(v, "CTA_EXPECT_FN")?,
            _ => {}
        }
    }
    let master = master.ok_or(CodecError::Missing("CTA_EXPECT_MASTER"))?;
    let tuple = tuple.ok_or(CodecError::Missing("CTA_EXPECT_TUPLE"))?;
    let mask = mask.ok_or(CodecError::Missing("CTA_EXPECT_MASK"))?;
    if master.is_ipv6() != tuple.is_ipv6() {
        return Err(CodecError::Invalid("CTA_EXPECT_MASTER"));
    }
    if mask.is_ipv6() != tuple.is_ipv6() {
        return Err(CodecError::Invalid("CTA_EXPECT_MASK"));
    }
    Ok(Expectation {
        zone,
        master,
        tuple,
        mask,
        timeout,
        flags,
        class,
        helper,
        nat,
        expectfn,
    })
}

#[cfg(test)]
#[path = "expect_codec_tests.rs"]
mod tests;
