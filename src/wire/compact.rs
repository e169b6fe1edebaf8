//! A hand-written codec for the two messages that carry flows
//! (`Message::Upsert`'s `WireFlow`, `Message::Delete`'s `WireKey`) and for
//! the key prefix the flow cache hashes, byte for byte what bincode's
//! standard configuration makes of them through serde, at a fraction of
//! the cost (no visitor per field).
//!
//! Owns: the byte layout of those types (bincode's: varint integers and
//! lengths, varint enum variant indexes, one-byte option tags, fixed arrays
//! raw). Must not: validate flows beyond what decoding needs (`WireFlow::
//! validate` does that) or know about headers, bodies and sequencing.
//! `wire::tests` proves the equivalence with bincode on random values.

use super::header::WireError;
use super::message::{
    WireAddrs, WireEnd, WireFlow, WireKey, WireL4, WireMaster, WireRelated, WireSeqAdj, WireState,
    WireTail, WireTuple,
};

/// Longest encoding of a key (`put_key_prefix`): an IPv6 ICMP tuple and a
/// three-byte zone take 42.
pub const MAX_KEY_LEN: usize = 48;

/// Where encodings go: a `Vec`, or a `KeyBuf` on the stack.
pub trait Out {
    fn push(&mut self, byte: u8);
    fn extend_from_slice(&mut self, bytes: &[u8]);
}

impl Out for Vec<u8> {
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte);
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        Vec::extend_from_slice(self, bytes);
    }
}

/// A key prefix, built without allocating.
pub struct KeyBuf {
    buf: [u8; MAX_KEY_LEN],
    len: usize,
}

impl KeyBuf {
    pub fn of(key: &WireKey) -> KeyBuf {
        let mut k = KeyBuf {
            buf: [0; MAX_KEY_LEN],
            len: 0,
        };
        put_key_prefix(&mut k, key);
        k
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Out for KeyBuf {
    fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    /// Never past `MAX_KEY_LEN`: a key's fields cannot reach it.
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(MAX_KEY_LEN);
        self.buf[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }
}

/// bincode's varint: below 251 one byte, else a tag and the value little
/// endian in 2, 4 or 8 bytes.
pub fn put_varint(out: &mut impl Out, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_tuple(out: &mut impl Out, t: &WireTuple) {
    match &t.addrs {
        WireAddrs::V4 { src, dst } => {
            out.push(0);
            out.extend_from_slice(src);
            out.extend_from_slice(dst);
        }
        WireAddrs::V6 { src, dst } => {
            out.push(1);
            out.extend_from_slice(src);
            out.extend_from_slice(dst);
        }
    }
    match &t.l4 {
        WireL4::Ports { src, dst } => {
            out.push(0);
            out.extend_from_slice(src);
            out.extend_from_slice(dst);
        }
        WireL4::Icmp { kind, code, id } => {
            out.extend_from_slice(&[1, *kind, *code]);
            out.extend_from_slice(id);
        }
        WireL4::None => out.push(2),
    }
}

fn put_bytes(out: &mut impl Out, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
}

/// The key's bytes as they lead a `WireFlow`: proto, orig, zone.
fn put_key_fields(out: &mut impl Out, proto: u8, orig: &WireTuple, zone: u16) {
    out.push(proto);
    put_tuple(out, orig);
    put_varint(out, u64::from(zone));
}

/// Append `flow` as bincode encodes it; returns how many of the bytes
/// written encode its key (`put_key_prefix`'s bytes for the same key).
pub fn put_flow(out: &mut Vec<u8>, flow: &WireFlow) -> usize {
    let start = out.len();
    put_key_fields(out, flow.proto, &flow.orig, flow.zone);
    let key_len = out.len() - start;
    put_varint(out, u64::from(flow.status));
    put_varint(out, u64::from(flow.timeout));
    put_varint(out, u64::from(flow.mark));
    match flow.state {
        WireState::None => out.push(0),
        WireState::Tcp {
            state,
            wscale_orig,
            wscale_reply,
            flags_orig,
            flags_reply,
        } => out.extend_from_slice(&[1, state, wscale_orig, wscale_reply, flags_orig, flags_reply]),
        WireState::Sctp {
            state,
            vtag_orig,
            vtag_reply,
        } => {
            out.extend_from_slice(&[2, state]);
            put_varint(out, u64::from(vtag_orig));
            put_varint(out, u64::from(vtag_reply));
        }
        WireState::Dccp { state, role } => out.extend_from_slice(&[3, state, role]),
    }
    put_bytes(out, flow.labels.as_deref());
    put_bytes(out, flow.helper.as_deref().map(str::as_bytes));
    match &flow.tail {
        WireTail::Plain => out.push(0),
        WireTail::Nat(reply) => {
            out.push(1);
            put_tuple(out, reply);
        }
        WireTail::Related(rel) => {
            out.push(2);
            put_related(out, rel);
        }
        WireTail::SnatTo(end) => {
            out.push(3);
            put_end(out, end);
        }
        WireTail::DnatTo(end) => {
            out.push(4);
            put_end(out, end);
        }
    }
    key_len
}

fn put_end(out: &mut Vec<u8>, end: &WireEnd) {
    match end {
        WireEnd::V4 { addr, port } => {
            out.push(0);
            out.extend_from_slice(addr);
            out.extend_from_slice(port);
        }
        WireEnd::V6 { addr, port } => {
            out.push(1);
            out.extend_from_slice(addr);
            out.extend_from_slice(port);
        }
    }
}

fn put_related(out: &mut Vec<u8>, rel: &WireRelated) {
    match &rel.reply {
        None => out.push(0),
        Some(reply) => {
            out.push(1);
            put_tuple(out, reply);
        }
    }
    match &rel.master {
        None => out.push(0),
        Some(m) => {
            out.extend_from_slice(&[1, m.proto]);
            put_tuple(out, &m.tuple);
        }
    }
    match &rel.seq_adj {
        None => out.push(0),
        Some(a) => {
            out.push(1);
            for v in [
                a.orig_pos,
                a.orig_before,
                a.orig_after,
                a.reply_pos,
                a.reply_before,
                a.reply_after,
            ] {
                put_varint(out, u64::from(v));
            }
        }
    }
}

/// The bytes that lead the encoding of every flow with this key.
pub fn put_key_prefix(out: &mut impl Out, key: &WireKey) {
    put_key_fields(out, key.proto, &key.orig, key.zone);
}

/// Append `key` as bincode encodes a `WireKey` (proto, zone, orig: not the
/// order of the prefix).
pub fn put_key(out: &mut impl Out, key: &WireKey) {
    out.push(key.proto);
    put_varint(out, u64::from(key.zone));
    put_tuple(out, &key.orig);
}

/// Reads bincode's encoding from a slice, never past its end.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn bad(what: &str) -> WireError {
    WireError::BadBody(what.to_string())
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Step over `n` bytes decoded elsewhere.
    pub fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n).map(|_| ())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| bad("unexpected end of body"))?;
        let taken = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    /// A varint that must fit in `max`.
    pub fn varint(&mut self, max: u64) -> Result<u64, WireError> {
        // As bincode: a tag wider than the type is an error.
        let v = match self.u8()? {
            b @ 0..=250 => u64::from(b),
            251 => u64::from(u16::from_le_bytes(self.array()?)),
            252 if max > u64::from(u16::MAX) => u64::from(u32::from_le_bytes(self.array()?)),
            253 if max > u64::from(u32::MAX) => u64::from_le_bytes(self.array()?),
            _ => return Err(bad("invalid varint tag")),
        };
        if v > max {
            return Err(bad("integer out of range"));
        }
        Ok(v)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(self.varint(u64::from(u16::MAX))? as u16)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(self.varint(u64::from(u32::MAX))? as u32)
    }

    /// An enum's variant index.
    pub fn variant(&mut self) -> Result<u32, WireError> {
        self.u32()
    }

    fn option(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("invalid option tag")),
        }
    }

    fn bytes(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if !self.option()? {
            return Ok(None);
        }
        let len = self.varint(u64::MAX)?;
        let len = usize::try_from(len).map_err(|_| bad("length out of range"))?;
        Ok(Some(self.take(len)?.to_vec()))
    }

    fn tuple(&mut self) -> Result<WireTuple, WireError> {
        let addrs = match self.variant()? {
            0 => WireAddrs::V4 {
                src: self.array()?,
                dst: self.array()?,
            },
            1 => WireAddrs::V6 {
                src: self.array()?,
                dst: self.array()?,
            },
            _ => return Err(bad("invalid address family")),
        };
        let l4 = match self.variant()? {
            0 => WireL4::Ports {
                src: self.array()?,
                dst: self.array()?,
            },
            1 => WireL4::Icmp {
                kind: self.u8()?,
                code: self.u8()?,
                id: self.array()?,
            },
            2 => WireL4::None,
            _ => return Err(bad("invalid layer-4 kind")),
        };
        Ok(WireTuple { addrs, l4 })
    }

    fn state(&mut self) -> Result<WireState, WireError> {
        Ok(match self.variant()? {
            0 => WireState::None,
            1 => {
                let [state, wscale_orig, wscale_reply, flags_orig, flags_reply] = self.array()?;
                WireState::Tcp {
                    state,
                    wscale_orig,
                    wscale_reply,
                    flags_orig,
                    flags_reply,
                }
            }
            2 => WireState::Sctp {
                state: self.u8()?,
                vtag_orig: self.u32()?,
                vtag_reply: self.u32()?,
            },
            3 => WireState::Dccp {
                state: self.u8()?,
                role: self.u8()?,
            },
            _ => return Err(bad("invalid protocol state")),
        })
    }

    /// What `put_flow` wrote.
    pub fn flow(&mut self) -> Result<WireFlow, WireError> {
        let proto = self.u8()?;
        let orig = self.tuple()?;
        let zone = self.u16()?;
        let status = self.u32()?;
        let timeout = self.u32()?;
        let mark = self.u32()?;
        let state = self.state()?;
        let labels = self.bytes()?;
        let helper = match self.bytes()? {
            None => None,
            Some(b) => Some(String::from_utf8(b).map_err(|_| bad("helper name is not UTF-8"))?),
        };
        let tail = match self.variant()? {
            0 => WireTail::Plain,
            1 => WireTail::Nat(self.tuple()?),
            2 => WireTail::Related(Box::new(self.related()?)),
            3 => WireTail::SnatTo(self.end()?),
            4 => WireTail::DnatTo(self.end()?),
            _ => return Err(bad("invalid flow tail")),
        };
        Ok(WireFlow {
            proto,
            orig,
            zone,
            status,
            timeout,
            mark,
            state,
            labels,
            helper,
            tail,
        })
    }

    fn end(&mut self) -> Result<WireEnd, WireError> {
        Ok(match self.variant()? {
            0 => WireEnd::V4 {
                addr: self.array()?,
                port: self.array()?,
            },
            1 => WireEnd::V6 {
                addr: self.array()?,
                port: self.array()?,
            },
            _ => return Err(bad("invalid address family")),
        })
    }

    fn related(&mut self) -> Result<WireRelated, WireError> {
        let reply = if self.option()? {
            Some(self.tuple()?)
        } else {
            None
        };
        let master = if self.option()? {
            let proto = self.u8()?;
            Some(WireMaster {
                proto,
                tuple: self.tuple()?,
            })
        } else {
            None
        };
        let seq_adj = if self.option()? {
            Some(WireSeqAdj {
                orig_pos: self.u32()?,
                orig_before: self.u32()?,
                orig_after: self.u32()?,
                reply_pos: self.u32()?,
                reply_before: self.u32()?,
                reply_after: self.u32()?,
            })
        } else {
            None
        };
        Ok(WireRelated {
            reply,
            master,
            seq_adj,
        })
    }

    /// What `put_key` wrote.
    pub fn key(&mut self) -> Result<WireKey, WireError> {
        let proto = self.u8()?;
        let zone = self.u16()?;
        let orig = self.tuple()?;
        Ok(WireKey { proto, zone, orig })
    }

    /// What `put_key_prefix` wrote.
    pub fn key_prefix(&mut self) -> Result<WireKey, WireError> {
        let proto = self.u8()?;
        let orig = self.tuple()?;
        let zone = self.u16()?;
        Ok(WireKey { proto, zone, orig })
    }
}
