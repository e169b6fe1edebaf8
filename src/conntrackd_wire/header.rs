//! conntrackd's message header (8 bytes, 16 for ACK/NACK/RESYNC), its
//! types and flags, and the receiver's validation of a datagram (§3.2–3.4
//! of the conntrackd reference): the walk over the messages laid end to
//! end, with the reason for every message it refuses.
//!
//! Owns: the header layout, `MsgType`, the flag bits, `Control` (ACK, NACK,
//! RESYNC, ALIVE and the hello flags) and `split`. Must not: parse the TLV
//! payload (see `flow_attrs`, `expect_attrs`), keep state, or panic on any
//! input.

/// `CONNTRACKD_PROTOCOL_VERSION`.
pub const VERSION: u8 = 1;
/// `NETHDR_SIZ`.
pub const HEADER_LEN: usize = 8;
/// `NETHDR_ACK_SIZ`: the header of ACK, NACK and RESYNC.
pub const ACK_HEADER_LEN: usize = 16;
/// conntrackd builds a message in a 4096-byte buffer.
pub const MAX_MESSAGE: usize = 4096;

/// Header flag bits (`NET_F_*`).
pub mod flags {
    pub const UNUSED: u8 = 0x01;
    pub const RESYNC: u8 = 0x02;
    pub const NACK: u8 = 0x04;
    pub const ACK: u8 = 0x08;
    pub const ALIVE: u8 = 0x10;
    pub const HELLO: u8 = 0x20;
    pub const HELLO_BACK: u8 = 0x40;
}

/// Message types (`NET_T_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    CtNew,
    CtUpd,
    CtDel,
    ExpNew,
    ExpUpd,
    ExpDel,
    Ctl,
}

/// `NET_T_STATE_MAX`: the highest data type.
pub const STATE_MAX: u8 = 5;
/// `NET_T_CTL`.
pub const T_CTL: u8 = 10;

impl MsgType {
    pub fn code(self) -> u8 {
        match self {
            MsgType::CtNew => 0,
            MsgType::CtUpd => 1,
            MsgType::CtDel => 2,
            MsgType::ExpNew => 3,
            MsgType::ExpUpd => 4,
            MsgType::ExpDel => 5,
            MsgType::Ctl => T_CTL,
        }
    }

    pub fn from_code(code: u8) -> Option<MsgType> {
        Some(match code {
            0 => MsgType::CtNew,
            1 => MsgType::CtUpd,
            2 => MsgType::CtDel,
            3 => MsgType::ExpNew,
            4 => MsgType::ExpUpd,
            5 => MsgType::ExpDel,
            T_CTL => MsgType::Ctl,
            _ => return None,
        })
    }
}

/// The fixed part of every message, host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    /// The raw type nibble (0..=15): validation must see unknown ones.
    pub kind: u8,
    pub flags: u8,
    pub len: u16,
    pub seq: u32,
}

impl Header {
    /// Read the 8 bytes at the start of `b` (at least 8 long).
    fn read(b: &[u8]) -> Option<Header> {
        let h: &[u8; 8] = b.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            version: h[0] >> 4,
            kind: h[0] & 0x0f,
            flags: h[1],
            len: u16::from_be_bytes([h[2], h[3]]),
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        })
    }

    /// Append the 8 header bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push((self.version << 4) | (self.kind & 0x0f));
        out.push(self.flags);
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
    }

    pub fn is_ctl(&self) -> bool {
        self.kind == T_CTL
    }

    /// conntrackd's `IS_DATA`: a state type and no flags but the hello ones.
    pub fn is_data(&self) -> bool {
        self.kind <= STATE_MAX && self.flags & !(flags::HELLO | flags::HELLO_BACK) == 0
    }

    /// `IS_ACK || IS_NACK || IS_RESYNC`: a message with the 16-byte header.
    pub fn has_range(&self) -> bool {
        self.is_ctl() && self.flags & (flags::ACK | flags::NACK | flags::RESYNC) != 0
    }

    pub fn hello(&self) -> bool {
        self.flags & flags::HELLO != 0
    }

    pub fn hello_back(&self) -> bool {
        self.flags & flags::HELLO_BACK != 0
    }
}

/// A control message's meaning (type CTL), without its hello flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Ack {
        from: u32,
        to: u32,
    },
    Nack {
        from: u32,
        to: u32,
    },
    /// "Send me everything"; from and to are 0.
    Resync,
    Alive,
}

impl Control {
    /// Its flag and whether it has the 16-byte header.
    fn flag(self) -> u8 {
        match self {
            Control::Ack { .. } => flags::ACK,
            Control::Nack { .. } => flags::NACK,
            Control::Resync => flags::RESYNC,
            Control::Alive => flags::ALIVE,
        }
    }

    /// The whole message, with `hello` (HELLO|HELLO_BACK bits) added.
    pub fn encode(self, seq: u32, hello: u8) -> Vec<u8> {
        let (from, to, len) = match self {
            Control::Ack { from, to } | Control::Nack { from, to } => (from, to, ACK_HEADER_LEN),
            Control::Resync => (0, 0, ACK_HEADER_LEN),
            Control::Alive => (0, 0, HEADER_LEN),
        };
        let mut out = Vec::with_capacity(len);
        Header {
            version: VERSION,
            kind: T_CTL,
            flags: self.flag() | hello,
            len: len as u16,
            seq,
        }
        .write(&mut out);
        if len == ACK_HEADER_LEN {
            out.extend_from_slice(&from.to_be_bytes());
            out.extend_from_slice(&to.to_be_bytes());
        }
        out
    }

    /// The control meaning of a CTL message, in conntrackd's order of
    /// tests (ACK, NACK, RESYNC, ALIVE); `None` for anything else.
    /// `body` is the whole message (16 bytes for the ranged ones, checked
    /// by `split`).
    pub fn decode(h: &Header, msg: &[u8]) -> Option<Control> {
        if !h.is_ctl() {
            return None;
        }
        let range = || -> Option<(u32, u32)> {
            let from = u32::from_be_bytes(msg.get(8..12)?.try_into().ok()?);
            let to = u32::from_be_bytes(msg.get(12..16)?.try_into().ok()?);
            Some((from, to))
        };
        if h.flags & flags::ACK != 0 {
            let (from, to) = range()?;
            Some(Control::Ack { from, to })
        } else if h.flags & flags::NACK != 0 {
            let (from, to) = range()?;
            Some(Control::Nack { from, to })
        } else if h.flags & flags::RESYNC != 0 {
            Some(Control::Resync)
        } else if h.flags & flags::ALIVE != 0 {
            Some(Control::Alive)
        } else {
            None
        }
    }
}

/// Why the receiver refused a message: conntrackd's error counters
/// (`conntrackd -s network`), all of which also count as "malformed".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Fewer bytes left than a header needs.
    Truncated,
    /// A length of 0, past the datagram's end, or below the header's.
    BadSize,
    /// A version other than 1.
    WrongVersion,
    /// The mode's handler found it meaningless (unknown control, an ACK
    /// or NACK whose range ends before it starts).
    MalformedHeader,
    /// A data message of an unknown type.
    BadType,
    /// The TLV payload failed its checks.
    MalformedPayload,
}

impl Reject {
    pub const ALL: [Reject; 6] = [
        Reject::Truncated,
        Reject::BadSize,
        Reject::WrongVersion,
        Reject::MalformedHeader,
        Reject::BadType,
        Reject::MalformedPayload,
    ];

    /// A short name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::BadSize => "bad_size",
            Reject::WrongVersion => "wrong_version",
            Reject::MalformedHeader => "malformed_header",
            Reject::BadType => "bad_type",
            Reject::MalformedPayload => "malformed_payload",
        }
    }
}

/// One step of the walk over a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A message that passed the framing checks (steps 1–4): its header
    /// and all its bytes, header included.
    Message(Header, &'a [u8]),
    /// A message refused; the walk goes on after a wrong version and ends
    /// after the others, as conntrackd's does.
    Rejected(Reject),
}

/// The messages of one datagram in order, with conntrackd's framing checks
/// (§3.4 steps 1–4). Never panics, whatever the bytes.
pub fn split(datagram: &[u8]) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some(h) = Header::read(rest) else {
            out.push(Piece::Rejected(Reject::Truncated));
            break;
        };
        let len = usize::from(h.len);
        if len == 0 || len > rest.len() {
            out.push(Piece::Rejected(Reject::BadSize));
            break;
        }
        if h.has_range() {
            if rest.len() < ACK_HEADER_LEN {
                out.push(Piece::Rejected(Reject::Truncated));
                break;
            }
            if len < ACK_HEADER_LEN {
                out.push(Piece::Rejected(Reject::BadSize));
                break;
            }
        } else if len < HEADER_LEN {
            out.push(Piece::Rejected(Reject::BadSize));
            break;
        }
        let (msg, tail) = rest.split_at(len);
        if h.version != VERSION {
            out.push(Piece::Rejected(Reject::WrongVersion));
        } else {
            out.push(Piece::Message(h, msg));
        }
        rest = tail;
    }
    out
}

/// `before(a, b)`: serial-number comparison as conntrackd's (and TCP's).
pub fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `after(a, b)`.
pub fn after(a: u32, b: u32) -> bool {
    before(b, a)
}
