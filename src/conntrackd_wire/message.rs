//! Whole conntrackd data messages (a header and a flow's or an
//! expectation's attributes) both ways, the decoded change a receiver
//! applies, and the packing of messages into datagrams of (MTU − 28)
//! bytes (§3.1).
//!
//! Owns: `Op`, `Object`, `Change`, `encode_object`, `decode_data`,
//! `Packer`. Must not: keep protocol state (sequence numbers, acks: see
//! `node`), or panic on any input.

use super::flow_attrs::Codec;
use super::header::{Header, MsgType, Reject};
use super::tlv::Builder;
use crate::expect::{ExpectKey, Expectation};
use crate::flow::{Flow, FlowKey};

/// UDP and IP header bytes conntrackd subtracts from the MTU (it assumes
/// IPv4 even on IPv6 links).
pub const UDP_OVERHEAD: usize = 28;

/// What a data message says happened to its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    New,
    Update,
    Delete,
}

/// A flow or an expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Flow(Flow),
    Expect(Expectation),
}

/// Which object: what the sender's caches key by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Flow(FlowKey),
    Expect(ExpectKey),
}

impl Object {
    pub fn key(&self) -> Key {
        match self {
            Object::Flow(f) => Key::Flow(f.key()),
            Object::Expect(e) => Key::Expect(e.key()),
        }
    }
}

/// One decoded data message: what the receiver applies to its external
/// cache (or, with the external cache disabled, to the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub object: Object,
}

fn msg_type(op: Op, o: &Object) -> MsgType {
    match (o, op) {
        (Object::Flow(_), Op::New) => MsgType::CtNew,
        (Object::Flow(_), Op::Update) => MsgType::CtUpd,
        (Object::Flow(_), Op::Delete) => MsgType::CtDel,
        (Object::Expect(_), Op::New) => MsgType::ExpNew,
        (Object::Expect(_), Op::Update) => MsgType::ExpUpd,
        (Object::Expect(_), Op::Delete) => MsgType::ExpDel,
    }
}

/// The data message for `object` with sequence number 0 and no flags (see
/// `tlv::set_seq`, `tlv::add_flags`).
pub fn encode_object(codec: &Codec, op: Op, object: &Object) -> Vec<u8> {
    let mut b = Builder::new(msg_type(op, object).code(), 0);
    match object {
        Object::Flow(f) => codec.encode_flow(&mut b, f),
        Object::Expect(e) => codec.encode_expect(&mut b, e),
    }
    b.finish()
}

/// The change a data message carries (`msg` is the whole message, as
/// `header::split` gave it). A type above 5 is `BadType`.
pub fn decode_data(codec: &Codec, h: &Header, msg: &[u8]) -> Result<Change, Reject> {
    let (op, flow) = match MsgType::from_code(h.kind) {
        Some(MsgType::CtNew) => (Op::New, true),
        Some(MsgType::CtUpd) => (Op::Update, true),
        Some(MsgType::CtDel) => (Op::Delete, true),
        Some(MsgType::ExpNew) => (Op::New, false),
        Some(MsgType::ExpUpd) => (Op::Update, false),
        Some(MsgType::ExpDel) => (Op::Delete, false),
        _ => return Err(Reject::BadType),
    };
    let object = if flow {
        Object::Flow(codec.decode_flow(msg)?)
    } else {
        Object::Expect(codec.decode_expect(msg)?)
    };
    Ok(Change { op, object })
}

/// Messages into datagrams as conntrackd's channel buffer does: a message
/// is appended while `used + len < size`, else the buffer goes first.
#[derive(Debug)]
pub struct Packer {
    size: usize,
    buf: Vec<u8>,
    out: Vec<Vec<u8>>,
}

impl Packer {
    /// `size`: the datagram budget, (MTU − 28) for UDP.
    pub fn new(size: usize) -> Packer {
        Packer {
            size,
            buf: Vec::new(),
            out: Vec::new(),
        }
    }

    pub fn push(&mut self, msg: &[u8]) {
        if !self.buf.is_empty() && self.buf.len() + msg.len() >= self.size {
            self.out.push(std::mem::take(&mut self.buf));
        }
        // A message as large as the buffer (unreachable with sane MTUs;
        // conntrackd loops on it) goes alone.
        self.buf.extend_from_slice(msg);
    }

    /// The datagrams, the last one flushed.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.buf.is_empty() {
            self.out.push(self.buf);
        }
        self.out
    }
}
