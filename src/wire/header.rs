//! The fixed datagram header of the native sync protocol, and the errors of
//! the whole wire layer.
//!
//! Owns: the header layout (big-endian, `HEADER_LEN` bytes), its encoding,
//! and the checks made **before** a body is decoded (size, magic, version,
//! reserved bits, declared lengths). Must not: decode bodies, know about
//! flows, or keep any state.
//!
//! Layout:
//! ```text
//!  0      4   5   6        10               18       22   24  25  26
//!  | magic | v | fl| node_id | epoch          | seq    |blen|tl |rsv|
//! ```
//! magic `b"CTS\x01"`, version 1, flags (bit0 RELIABLE, bit1 AUTH), sender
//! node id u32, sender epoch u64, seq u32, body_len u16, tag_len u8,
//! reserved u8 (must be 0).
//!
//! With AUTH set (a sealed datagram, see `crate::auth`), the header is
//! followed by the key id (u8) and the packet number (u64), then
//! `body_len` bytes of encrypted body and a `tag_len` (= `TAG_LEN`) byte
//! tag. Only `Header::parse` knows that layout's lengths here; opening is
//! `crate::auth`'s job, and `decode_datagram` refuses sealed datagrams.

use thiserror::Error;

/// The first four bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"CTS\x01";
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 26;
/// The largest UDP payload (IPv4: 65535 - 20 - 8).
pub const MAX_DATAGRAM: usize = 65507;
/// The largest body a datagram can carry.
pub const MAX_BODY: usize = MAX_DATAGRAM - HEADER_LEN;
/// Sealed datagrams: bytes between the header and the body (key id, packet
/// number).
pub const AUTH_PREFIX_LEN: usize = 9;
/// Sealed datagrams: bytes of tag after the body.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a datagram.
pub const AUTH_OVERHEAD: usize = AUTH_PREFIX_LEN + TAG_LEN;

/// Header flag bits.
pub mod flags {
    /// The datagram consumes a sequence number and is resent until acked.
    pub const RELIABLE: u8 = 1 << 0;
    /// Sealed: key id and packet number follow the header, the body is
    /// encrypted and a tag follows it.
    pub const AUTH: u8 = 1 << 1;
    /// Every bit this version knows.
    pub const KNOWN: u8 = RELIABLE | AUTH;
}

/// Why a datagram was rejected. `reason()` is a stable counter name.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("datagram shorter than the {HEADER_LEN}-byte header ({0} bytes)")]
    Truncated(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    #[error("reserved header bits set or unsupported flags {0:#04x}")]
    BadHeader(u8),
    #[error("declared length {declared} disagrees with the datagram's {actual} bytes")]
    BadLength { declared: usize, actual: usize },
    #[error("datagram or body too large ({0} bytes)")]
    Oversized(usize),
    #[error("body does not decode: {0}")]
    BadBody(String),
    #[error("invalid flow in body: {0}")]
    BadFlow(&'static str),
    #[error("too many messages in one datagram ({0})")]
    TooManyMessages(u64),
    #[error("sealed datagram (authentication is not configured here)")]
    Sealed,
}

impl WireError {
    /// A short, stable name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Truncated(_) => "truncated",
            WireError::BadMagic => "bad_magic",
            WireError::BadVersion(_) => "bad_version",
            WireError::BadHeader(_) => "bad_header",
            WireError::BadLength { .. } => "bad_length",
            WireError::Oversized(_) => "oversized",
            WireError::BadBody(_) => "bad_body",
            WireError::BadFlow(_) => "bad_flow",
            WireError::TooManyMessages(_) => "too_many_messages",
            WireError::Sealed => "sealed",
        }
    }
}

/// The fixed header of one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub flags: u8,
    /// The sender's configured node id.
    pub node_id: u32,
    /// The sender's epoch, new (and larger) at every start.
    pub epoch: u64,
    /// RELIABLE: this datagram's sequence number; otherwise the last
    /// reliable sequence number the sender has sent (0: none yet).
    pub seq: u32,
    /// Bytes of body after the header (set by the encoder).
    pub body_len: u16,
    /// Bytes of authentication tag after the body.
    pub tag_len: u8,
}

impl Header {
    pub fn is_reliable(&self) -> bool {
        self.flags & flags::RELIABLE != 0
    }

    pub fn is_sealed(&self) -> bool {
        self.flags & flags::AUTH != 0
    }

    /// Append the 26 header bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.flags);
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.body_len.to_be_bytes());
        out.push(self.tag_len);
        out.push(0);
    }

    /// Parse and check the header of a whole datagram; on success the body is
    /// `bytes[HEADER_LEN..HEADER_LEN + body_len]`.
    pub fn parse(bytes: &[u8]) -> Result<Header, WireError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(WireError::Oversized(bytes.len()));
        }
        let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(WireError::Truncated(bytes.len()));
        };
        if head[0..4] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if head[4] != VERSION {
            return Err(WireError::BadVersion(head[4]));
        }
        let flag_bits = head[5];
        if flag_bits & !flags::KNOWN != 0 || head[25] != 0 {
            return Err(WireError::BadHeader(flag_bits));
        }
        let be32 = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&head[10..18]);
        let header = Header {
            flags: flag_bits,
            node_id: be32(6),
            epoch: u64::from_be_bytes(epoch),
            seq: be32(18),
            body_len: u16::from_be_bytes([head[22], head[23]]),
            tag_len: head[24],
        };
        let sealed = header.is_sealed();
        if (sealed && usize::from(header.tag_len) != TAG_LEN) || (!sealed && header.tag_len != 0) {
            return Err(WireError::BadHeader(flag_bits));
        }
        let prefix = if sealed { AUTH_PREFIX_LEN } else { 0 };
        let declared =
            HEADER_LEN + prefix + usize::from(header.body_len) + usize::from(header.tag_len);
        if declared != bytes.len() {
            return Err(WireError::BadLength {
                declared,
                actual: bytes.len(),
            });
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            flags: flags::RELIABLE,
            node_id: 0x0102_0304,
            epoch: 0x1112_1314_1516_1718,
            seq: 0x2122_2324,
            body_len: 3,
            tag_len: 0,
        }
    }

    #[test]
    fn golden_header_bytes() {
        let mut out = Vec::new();
        sample().encode_into(&mut out);
        let expected: [u8; HEADER_LEN] = [
            b'C', b'T', b'S', 0x01, // magic
            0x01, // version
            0x01, // flags: RELIABLE
            0x01, 0x02, 0x03, 0x04, // node id
            0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // epoch
            0x21, 0x22, 0x23, 0x24, // seq
            0x00, 0x03, // body_len
            0x00, // tag_len
            0x00, // reserved
        ];
        assert_eq!(out, expected);
        out.extend_from_slice(&[1, 2, 3]);
        assert_eq!(Header::parse(&out), Ok(sample()));
    }

    #[test]
    fn header_checks_give_their_reasons() {
        let mut good = Vec::new();
        sample().encode_into(&mut good);
        good.extend_from_slice(&[0, 0, 0]);
        let reason = |b: &[u8]| Header::parse(b).map_err(|e| e.reason());
        assert_eq!(reason(&good[..10]), Err("truncated"));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(reason(&b), Err("bad_magic"));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(reason(&b), Err("bad_version"));
        let mut b = good.clone();
        b[25] = 1;
        assert_eq!(reason(&b), Err("bad_header"));
        let mut b = good.clone();
        b[5] = 0x80;
        assert_eq!(reason(&b), Err("bad_header"));
        let mut b = good.clone();
        b[5] |= flags::AUTH;
        assert_eq!(reason(&b), Err("bad_header"), "AUTH without a tag");
        b[24] = TAG_LEN as u8;
        assert_eq!(reason(&b), Err("bad_length"), "no room for prefix and tag");
        b.extend_from_slice(&[0; AUTH_OVERHEAD]);
        assert!(Header::parse(&b).is_ok_and(|h| h.is_sealed()));
        let mut b = good.clone();
        b[24] = TAG_LEN as u8;
        b.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(reason(&b), Err("bad_header"), "a tag without AUTH");
        let mut b = good.clone();
        b.push(0);
        assert_eq!(reason(&b), Err("bad_length"));
        assert_eq!(reason(&good[..good.len() - 1]), Err("bad_length"));
        assert_eq!(reason(&vec![0u8; MAX_DATAGRAM + 1]), Err("oversized"));
    }
}
