//! The sync protocol's bytes: every encoding and decoding of a datagram.
//!
//! Owns: the fixed header (`header`), the bincode body (`message`), whole
//! datagrams, the `Packer` that fills datagrams up to the path MTU, and
//! lists of flows kept in their wire encoding (`flow_list`).
//! Must not: keep replication state, do I/O, or read the clock.

pub mod compact;
pub mod flow_list;
pub mod header;
pub mod message;

pub use flow_list::FlowList;
pub use header::{
    flags, Header, WireError, AUTH_OVERHEAD, AUTH_PREFIX_LEN, HEADER_LEN, MAGIC, MAX_BODY,
    MAX_DATAGRAM, TAG_LEN, VERSION,
};
pub use message::{
    decode_body, encode_message, encode_message_into, validate_expectation, Message, RangeSum,
    WireAddrs, WireEnd, WireFlow, WireKey, WireL4, WireMaster, WireRelated, WireSeqAdj, WireState,
    WireTail, WireTuple, MAX_EXPECTFN_LEN, MAX_HELPER_LEN, MAX_LABELS_LEN, MAX_MESSAGES, RANGES,
    UPSERT_VARIANT,
};

/// The largest UDP payload for a 1500-byte MTU over IPv4 (1500 - 20 - 8).
pub const PAYLOAD_IPV4_1500: usize = 1472;
/// The largest UDP payload for a 1500-byte MTU over IPv6 (1500 - 40 - 8).
pub const PAYLOAD_IPV6_1500: usize = 1452;

/// An encoded body: the message count and the messages' bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Body {
    count: usize,
    bytes: Vec<u8>,
}

impl Body {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the encoded body (count prefix included).
    pub fn encoded_len(&self) -> usize {
        count_len(self.count) + self.bytes.len()
    }

    /// The whole datagram: `header` (its `body_len` is set here) and body.
    pub fn seal(&self, header: &Header) -> Vec<u8> {
        let body_len = self.encoded_len();
        let mut out = Vec::with_capacity(HEADER_LEN + body_len);
        let header = Header {
            body_len: u16::try_from(body_len).unwrap_or(u16::MAX),
            tag_len: 0,
            ..*header
        };
        header.encode_into(&mut out);
        compact::put_varint(&mut out, self.count as u64);
        out.extend_from_slice(&self.bytes);
        out
    }
}

fn count_len(n: usize) -> usize {
    let mut v = Vec::with_capacity(9);
    compact::put_varint(&mut v, n as u64);
    v.len()
}

/// What `Packer::try_push` did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// The message is in the current body.
    Added,
    /// The current body is full: take it, then push the message again.
    Full,
    /// The message can never be sent (larger than any datagram).
    TooLarge,
}

/// Fills one datagram body at a time up to `max_payload` bytes of UDP
/// payload (header included).
#[derive(Clone, Debug)]
pub struct Packer {
    max_payload: usize,
    body: Body,
}

impl Packer {
    /// `max_payload`: path MTU minus IP and UDP headers (e.g. 1472).
    pub fn new(max_payload: usize) -> Packer {
        Packer {
            max_payload: max_payload.min(MAX_DATAGRAM),
            body: Body::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Messages in the current body.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Add a message to the current body if it fits. A message too large for
    /// `max_payload` is still accepted alone into an empty body if it fits a
    /// UDP datagram at all.
    pub fn try_push(&mut self, msg: &Message) -> Push {
        self.try_push_encoded(&encode_message(msg))
    }

    /// `try_push` for a message already encoded (`encode_message`'s bytes).
    pub fn try_push_encoded(&mut self, bytes: &[u8]) -> Push {
        let count = self.body.count + 1;
        let total = HEADER_LEN + count_len(count) + self.body.bytes.len() + bytes.len();
        if bytes.is_empty() {
            return Push::TooLarge;
        }
        let fits = total <= self.max_payload && count <= MAX_MESSAGES;
        if fits || (self.body.is_empty() && total <= MAX_DATAGRAM) {
            self.body.count = count;
            self.body.bytes.extend_from_slice(bytes);
            Push::Added
        } else if self.body.is_empty() {
            Push::TooLarge
        } else {
            Push::Full
        }
    }

    /// Close the current body and hand it out (`None` when empty).
    pub fn take(&mut self) -> Option<Body> {
        if self.body.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.body))
        }
    }

    /// Pack `messages` in order into as few bodies as possible.
    pub fn pack_all(max_payload: usize, messages: &[Message]) -> Vec<Body> {
        let mut packer = Packer::new(max_payload);
        let mut out = Vec::new();
        for m in messages {
            if packer.try_push(m) == Push::Full {
                out.extend(packer.take());
                if packer.try_push(m) == Push::TooLarge {
                    tracing::warn!("dropping a sync message larger than a datagram");
                }
            }
        }
        out.extend(packer.take());
        out
    }
}

/// One datagram with `messages` (the header's `body_len` is computed). The
/// caller keeps the batch within a datagram (the `Packer` does); messages
/// beyond `MAX_BODY` are left out rather than produce an invalid datagram.
pub fn encode_datagram(header: &Header, messages: &[Message]) -> Vec<u8> {
    let mut packer = Packer::new(MAX_DATAGRAM);
    for m in messages {
        if packer.try_push(m) != Push::Added {
            tracing::warn!("encode_datagram: batch exceeds one datagram, truncated");
            break;
        }
    }
    packer.take().unwrap_or_default().seal(header)
}

/// Parse a datagram: the header is checked first, then the body decoded
/// within its limits and validated. Sealed datagrams are refused (they are
/// opened by `crate::auth` first, which hands on the plain datagram).
pub fn decode_datagram(bytes: &[u8]) -> Result<(Header, Vec<Message>), WireError> {
    let header = Header::parse(bytes)?;
    if header.is_sealed() {
        return Err(WireError::Sealed);
    }
    let end = HEADER_LEN + usize::from(header.body_len);
    let body = bytes.get(HEADER_LEN..end).ok_or(WireError::BadLength {
        declared: end,
        actual: bytes.len(),
    })?;
    let messages = decode_body(body)?;
    Ok((header, messages))
}

#[cfg(test)]
pub(crate) mod tests;
