//! conntrackd's TLV attributes (§3.5): `nta_len` (u16 BE, header included,
//! unpadded), `nta_attr` (u16 BE), payload, padding to 4 bytes; the writer
//! and the receiver's checked walk.
//!
//! Owns: the attribute framing and the per-attribute size rules a receiver
//! applies (fixed sizes, maxima, the `NTA_MAX` bound). Must not: know what
//! an attribute means (see `flow_attrs`, `expect_attrs`).

use super::header::{Header, Reject, HEADER_LEN};

/// What a receiver accepts of one attribute id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// `nta_len` must be exactly this (header included).
    Exact(u16),
    /// `nta_len` may be at most this.
    Max(u16),
}

/// A message under construction: header placeholder, then attributes.
#[derive(Debug)]
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn new(kind: u8, flags: u8) -> Builder {
        let mut buf = Vec::with_capacity(128);
        Header {
            version: super::header::VERSION,
            kind,
            flags,
            len: 0,
            seq: 0,
        }
        .write(&mut buf);
        Builder { buf }
    }

    /// Append an attribute with this payload (padded to 4 bytes).
    pub fn put(&mut self, id: u16, payload: &[u8]) {
        let nta_len = 4 + payload.len();
        self.buf.extend_from_slice(&(nta_len as u16).to_be_bytes());
        self.buf.extend_from_slice(&id.to_be_bytes());
        self.buf.extend_from_slice(payload);
        let pad = (4 - nta_len % 4) % 4;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }

    pub fn put_u8(&mut self, id: u16, v: u8) {
        self.put(id, &[v]);
    }

    pub fn put_be16(&mut self, id: u16, v: u16) {
        self.put(id, &v.to_be_bytes());
    }

    pub fn put_be32(&mut self, id: u16, v: u32) {
        self.put(id, &v.to_be_bytes());
    }

    /// A NUL-terminated string.
    pub fn put_str(&mut self, id: u16, s: &str) {
        let mut p = Vec::with_capacity(s.len() + 1);
        p.extend_from_slice(s.as_bytes());
        p.push(0);
        self.put(id, &p);
    }

    /// The message without a sequence number yet (`len` is set). Its
    /// length stays below `MAX_MESSAGE` for every flow and expectation
    /// (at most about 1.2 kB with the largest labels).
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }
}

/// Write `seq` into a finished message.
pub fn set_seq(msg: &mut [u8], seq: u32) {
    if let Some(s) = msg.get_mut(4..8) {
        s.copy_from_slice(&seq.to_be_bytes());
    }
}

/// Set the hello bits of a finished message.
pub fn add_flags(msg: &mut [u8], bits: u8) {
    if let Some(f) = msg.get_mut(1) {
        *f |= bits;
    }
}

/// The attributes of a message after its 8-byte header, checked as
/// `msg2ct`/`msg2exp` check them: `nta_len` within the rest and at least
/// 4, an id below `nta_max`, and the id's size rule (`size(id)`, `None`:
/// no rule). The walk goes on while more than 4 bytes remain, so up to 4
/// trailing bytes are ignored, as conntrackd does.
pub fn walk(
    msg: &[u8],
    nta_max: u16,
    size: impl Fn(u16) -> Option<Size>,
) -> Result<Vec<(u16, &[u8])>, Reject> {
    let mut rest = msg.get(HEADER_LEN..).ok_or(Reject::MalformedPayload)?;
    let mut out = Vec::with_capacity(16);
    while rest.len() > 4 {
        let nta_len = u16::from_be_bytes([rest[0], rest[1]]);
        let id = u16::from_be_bytes([rest[2], rest[3]]);
        let n = usize::from(nta_len);
        if n > rest.len() || n < 4 || id >= nta_max {
            return Err(Reject::MalformedPayload);
        }
        match size(id) {
            Some(Size::Exact(s)) if nta_len != s => return Err(Reject::MalformedPayload),
            Some(Size::Max(s)) if nta_len > s => return Err(Reject::MalformedPayload),
            _ => {}
        }
        out.push((id, &rest[4..n]));
        let step = (n + 3) & !3;
        rest = rest.get(step..).unwrap_or(&[]);
    }
    Ok(out)
}
