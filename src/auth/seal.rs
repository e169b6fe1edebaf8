//! Sealing and opening one datagram with XChaCha20-Poly1305.
//!
//! Owns: the sealed layout (`header | key id | packet number | encrypted
//! body | tag`), the nonce (`node id | epoch | packet number | 0`) and the
//! associated data (the sealed header, key id, packet number and the
//! cluster name). Must not: keep state (packet numbers and replay windows
//! are `guard`'s), or decode bodies: what `open` hands on is a plain
//! datagram for `wire::decode_datagram`.

use super::keys::KeyRing;
use crate::wire::{flags, Header, AUTH_PREFIX_LEN, HEADER_LEN, MAX_DATAGRAM, TAG_LEN};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XNonce};

/// The sealed-only fields of a datagram, read before any cryptography.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub header: Header,
    pub key_id: u8,
    pub pn: u64,
}

/// Why a sealed datagram does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Its key id is not in our ring.
    UnknownKey(u8),
    /// The tag does not verify: forged, corrupted, another key or cluster.
    BadTag,
}

fn nonce(node_id: u32, epoch: u64, pn: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[0..4].copy_from_slice(&node_id.to_be_bytes());
    n[4..12].copy_from_slice(&epoch.to_be_bytes());
    n[12..20].copy_from_slice(&pn.to_be_bytes());
    XNonce::from(n)
}

/// The associated data: everything before the body, then the cluster name.
fn associated_data(prefix: &[u8], cluster: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(prefix.len() + cluster.len());
    ad.extend_from_slice(prefix);
    ad.extend_from_slice(cluster);
    ad
}

/// Seal the plain datagram `plain` (header and body, as `Body::seal` makes
/// it) with the ring's send key under packet number `pn`. `None` if
/// `plain` is not a plain datagram of ours, or too large to stay a
/// datagram once sealed (a bug, never outside input: the node packs
/// bodies with room for the seal).
pub fn seal(ring: &KeyRing, cluster: &[u8], plain: &[u8], pn: u64) -> Option<Vec<u8>> {
    if plain.len() + AUTH_PREFIX_LEN + TAG_LEN > MAX_DATAGRAM {
        return None;
    }
    let header = Header::parse(plain).ok().filter(|h| !h.is_sealed())?;
    let key = ring.send_key();
    let body = plain.get(HEADER_LEN..)?;
    let sealed_header = Header {
        flags: header.flags | flags::AUTH,
        tag_len: TAG_LEN as u8,
        ..header
    };
    let mut out = Vec::with_capacity(plain.len() + AUTH_PREFIX_LEN + TAG_LEN);
    sealed_header.encode_into(&mut out);
    out.push(key.id);
    out.extend_from_slice(&pn.to_be_bytes());
    let ad = associated_data(&out, cluster);
    let start = out.len();
    out.extend_from_slice(body);
    let nonce = nonce(header.node_id, header.epoch, pn);
    let tag = key
        .cipher
        .encrypt_inout_detached(&nonce, &ad, (&mut out[start..]).into())
        .ok()?;
    out.extend_from_slice(&tag);
    Some(out)
}

/// Read a sealed datagram's header, key id and packet number (no
/// cryptography yet: the replay window is checked on these first).
/// `None` unless `bytes` is a well-formed sealed datagram.
pub fn envelope(bytes: &[u8]) -> Option<Envelope> {
    let header = Header::parse(bytes).ok().filter(Header::is_sealed)?;
    let key_id = *bytes.get(HEADER_LEN)?;
    let pn = bytes.get(HEADER_LEN + 1..HEADER_LEN + AUTH_PREFIX_LEN)?;
    let pn = u64::from_be_bytes(pn.try_into().ok()?);
    Some(Envelope { header, key_id, pn })
}

/// Open `bytes` (whose envelope is `env`): verify the tag and decrypt.
/// Returns the plain datagram (header without AUTH, then the body).
pub fn open(
    ring: &KeyRing,
    cluster: &[u8],
    bytes: &[u8],
    env: &Envelope,
) -> Result<Vec<u8>, OpenError> {
    let key = ring
        .get(env.key_id)
        .ok_or(OpenError::UnknownKey(env.key_id))?;
    let body_start = HEADER_LEN + AUTH_PREFIX_LEN;
    let body_end = body_start + usize::from(env.header.body_len);
    let (Some(prefix), Some(body), Some(tag)) = (
        bytes.get(..body_start),
        bytes.get(body_start..body_end),
        bytes.get(body_end..body_end + TAG_LEN),
    ) else {
        return Err(OpenError::BadTag);
    };
    let tag = Tag::try_from(tag).map_err(|_| OpenError::BadTag)?;
    let plain_header = Header {
        flags: env.header.flags & !flags::AUTH,
        tag_len: 0,
        ..env.header
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    plain_header.encode_into(&mut out);
    out.extend_from_slice(body);
    let ad = associated_data(prefix, cluster);
    let nonce = nonce(env.header.node_id, env.header.epoch, env.pn);
    key.cipher
        .decrypt_inout_detached(&nonce, &ad, (&mut out[HEADER_LEN..]).into(), &tag)
        .map_err(|_| OpenError::BadTag)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_datagram, encode_datagram, Message};

    fn plain() -> Vec<u8> {
        let header = Header {
            flags: flags::RELIABLE,
            node_id: 7,
            epoch: 0xdead_beef,
            seq: 42,
            ..Header::default()
        };
        encode_datagram(
            &header,
            &[Message::BulkBegin { id: 3 }, Message::Resume { from: 9 }],
        )
    }

    fn ring(byte: u8) -> KeyRing {
        KeyRing::single(1, &[byte; 32])
    }

    fn open_all(ring: &KeyRing, cluster: &[u8], bytes: &[u8]) -> Result<Vec<u8>, OpenError> {
        let env = envelope(bytes).ok_or(OpenError::BadTag)?;
        open(ring, cluster, bytes, &env)
    }

    #[test]
    fn a_sealed_datagram_opens_to_the_same_plain_datagram() {
        let p = plain();
        let sealed = seal(&ring(1), b"pair", &p, 5).expect("seal");
        assert_eq!(sealed.len(), p.len() + AUTH_PREFIX_LEN + TAG_LEN);
        assert!(decode_datagram(&sealed).is_err(), "plain decoder refuses");
        let env = envelope(&sealed).expect("envelope");
        assert_eq!((env.key_id, env.pn, env.header.seq), (1, 5, 42));
        assert_eq!(open_all(&ring(1), b"pair", &sealed), Ok(p.clone()));
        let (_, msgs) = decode_datagram(&p).expect("plain");
        assert_eq!(msgs.len(), 2);
    }

    #[test]
    fn the_body_is_not_in_clear() {
        let p = plain();
        let sealed = seal(&ring(1), b"", &p, 1).expect("seal");
        let body = &p[HEADER_LEN..];
        assert!(
            !sealed.windows(body.len()).any(|w| w == body),
            "plaintext body found in the sealed datagram"
        );
    }

    #[test]
    fn every_flipped_bit_and_every_wrong_key_or_cluster_is_refused() {
        let p = plain();
        let sealed = seal(&ring(1), b"pair", &p, 5).expect("seal");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut b = sealed.clone();
                b[i] ^= 1 << bit;
                assert!(
                    open_all(&ring(1), b"pair", &b).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
        assert_eq!(
            open_all(&ring(2), b"pair", &sealed),
            Err(OpenError::BadTag),
            "another key"
        );
        assert_eq!(
            open_all(&ring(1), b"other", &sealed),
            Err(OpenError::BadTag),
            "another cluster"
        );
        assert_eq!(
            open_all(&KeyRing::single(9, &[1; 32]), b"pair", &sealed),
            Err(OpenError::UnknownKey(1))
        );
    }

    #[test]
    fn packet_numbers_change_the_ciphertext() {
        let p = plain();
        let a = seal(&ring(1), b"", &p, 1).expect("seal");
        let b = seal(&ring(1), b"", &p, 2).expect("seal");
        assert_ne!(
            a[HEADER_LEN + AUTH_PREFIX_LEN..],
            b[HEADER_LEN + AUTH_PREFIX_LEN..]
        );
    }
}
