//! The gate of an authenticated node: what it seals on the way out, and
//! which datagrams it lets in.
//!
//! Owns: the key ring in use, our packet numbers, each sender's admitted
//! epoch and replay window, the challenges we have out (a sender's new epoch
//! is let in only once it answered one), the rate limits on challenges and
//! answers, and the authentication counters. Must not: decode bodies or
//! apply anything (the node does, with what `open` hands on), or read the
//! clock (time is an argument).
//!
//! A datagram's way in: envelope (header, key id, packet number) → key
//! known → if its epoch is the admitted one, the replay window (before any
//! cryptography) → the tag → the window marked. A datagram of an epoch not
//! admitted is opened but only its challenge messages are used; the node
//! then asks `want_challenge` whether to challenge that epoch.

use super::keys::KeyRing;
use super::replay::{Replay, ReplayWindow};
use super::seal::{self, OpenError};
use serde::Serialize;
use std::collections::BTreeMap;

/// A challenge for one epoch is re-sent at most this often.
pub const CHALLENGE_RETRY_MS: u64 = 300;
/// A challenge unanswered for this long is forgotten.
pub const CHALLENGE_EXPIRY_MS: u64 = 30_000;
/// We answer one challenger at most this often.
pub const ANSWER_INTERVAL_MS: u64 = 100;

/// Why a datagram was refused by the gate. `name()` is a stable counter
/// name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthDrop {
    /// Plain datagram, and we require keys.
    Missing,
    /// Sealed with a key id we do not hold.
    UnknownKey,
    /// The tag does not verify.
    BadTag,
    /// Packet number below the replay window.
    TooOld,
    /// Packet number seen before (a replay, or the same datagram on two
    /// links).
    Replayed,
    /// Sealed, but we hold no keys.
    NotConfigured,
    /// Authentic, but of an epoch not (yet) admitted.
    EpochUnadmitted,
    /// Authentic, from a new sender while the table of senders is full.
    TooManySenders,
}

impl AuthDrop {
    pub fn name(self) -> &'static str {
        match self {
            AuthDrop::Missing => "auth_missing",
            AuthDrop::UnknownKey => "auth_unknown_key",
            AuthDrop::BadTag => "auth_bad_tag",
            AuthDrop::TooOld => "auth_too_old",
            AuthDrop::Replayed => "auth_replayed",
            AuthDrop::NotConfigured => "auth_not_configured",
            AuthDrop::EpochUnadmitted => "epoch_unadmitted",
            AuthDrop::TooManySenders => "auth_too_many_senders",
        }
    }
}

/// Authentication counters (all zero without keys, but `not_configured`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuthStats {
    pub sealed: u64,
    pub opened: u64,
    pub missing: u64,
    pub unknown_key: u64,
    pub bad_tag: u64,
    pub too_old: u64,
    pub replayed: u64,
    pub not_configured: u64,
    pub epoch_unadmitted: u64,
    pub too_many_senders: u64,
    pub challenges_sent: u64,
    pub challenges_answered: u64,
    pub epochs_admitted: u64,
    /// Per key id: datagrams sealed and opened with it.
    pub key_use: BTreeMap<u8, KeyUse>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyUse {
    pub sealed: u64,
    pub opened: u64,
}

impl AuthStats {
    pub fn count(&mut self, drop: AuthDrop) {
        let c = match drop {
            AuthDrop::Missing => &mut self.missing,
            AuthDrop::UnknownKey => &mut self.unknown_key,
            AuthDrop::BadTag => &mut self.bad_tag,
            AuthDrop::TooOld => &mut self.too_old,
            AuthDrop::Replayed => &mut self.replayed,
            AuthDrop::NotConfigured => &mut self.not_configured,
            AuthDrop::EpochUnadmitted => &mut self.epoch_unadmitted,
            AuthDrop::TooManySenders => &mut self.too_many_senders,
        };
        *c += 1;
    }

    /// Datagrams refused by the gate, every reason.
    pub fn refused(&self) -> u64 {
        self.missing
            + self.unknown_key
            + self.bad_tag
            + self.too_old
            + self.replayed
            + self.not_configured
            + self.epoch_unadmitted
            + self.too_many_senders
    }
}

/// A datagram the gate let through (opened and authentic).
#[derive(Debug)]
pub struct Opened {
    /// The plain datagram (for `wire::decode_datagram`).
    pub plain: Vec<u8>,
    /// Its sender's node id and epoch, and its packet number.
    pub node_id: u32,
    pub epoch: u64,
    pub pn: u64,
    /// Whether its epoch is the sender's admitted one (else only its
    /// challenge messages may be used).
    pub admitted: bool,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    nonce: u128,
    first_ms: u64,
    sent_ms: u64,
}

#[derive(Clone, Debug, Default)]
struct Sender {
    /// The epoch whose datagrams are applied, and its replay window.
    admitted: Option<(u64, ReplayWindow)>,
    /// The challenge out to this sender, whatever epoch prompted it: the
    /// live sender answers in its current epoch, and that is the epoch
    /// admitted (replayed datagrams of old epochs cannot crowd it out).
    pending: Option<Pending>,
    /// When we last answered a challenge of this sender's.
    answered_ms: Option<u64>,
}

/// The gate (see the module doc).
#[derive(Debug)]
pub struct Guard {
    ring: KeyRing,
    cluster: Vec<u8>,
    next_pn: u64,
    senders: BTreeMap<u32, Sender>,
    max_senders: usize,
    /// Our epoch, the high half of every challenge nonce; the low half
    /// counts: no nonce repeats within a run, nor across runs.
    nonce_salt: u64,
    nonce_count: u64,
    pub stats: AuthStats,
}

impl Guard {
    pub fn new(ring: KeyRing, cluster: &str, max_senders: usize, nonce_salt: u64) -> Guard {
        Guard {
            ring,
            cluster: cluster.as_bytes().to_vec(),
            next_pn: 0,
            senders: BTreeMap::new(),
            max_senders,
            nonce_salt,
            nonce_count: 0,
            stats: AuthStats::default(),
        }
    }

    /// Use a new key ring from now on (admitted epochs stay: they are
    /// about senders, not keys).
    pub fn set_keys(&mut self, ring: KeyRing) {
        self.ring = ring;
    }

    pub fn keys(&self) -> &KeyRing {
        &self.ring
    }

    /// Seal a plain datagram of ours under a fresh packet number.
    pub fn seal(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        let pn = self.next_pn;
        let sealed = seal::seal(&self.ring, &self.cluster, plain, pn)?;
        self.next_pn += 1;
        self.stats.sealed += 1;
        let id = self.ring.send_key().id;
        self.stats.key_use.entry(id).or_default().sealed += 1;
        Some(sealed)
    }

    /// The gate (see the module doc). Refusals are counted here.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Opened, AuthDrop> {
        let result = self.try_open(bytes);
        if let Err(drop) = result {
            self.stats.count(drop);
        }
        result
    }

    fn try_open(&mut self, bytes: &[u8]) -> Result<Opened, AuthDrop> {
        // Callers pass only datagrams whose header says AUTH; anything that
        // is not a well-formed sealed datagram fails like a bad tag.
        let env = seal::envelope(bytes).ok_or(AuthDrop::BadTag)?;
        let (node_id, epoch) = (env.header.node_id, env.header.epoch);
        if self.ring.get(env.key_id).is_none() {
            return Err(AuthDrop::UnknownKey);
        }
        let window = self
            .senders
            .get(&node_id)
            .and_then(|s| s.admitted.as_ref())
            .filter(|(e, _)| *e == epoch)
            .map(|(_, w)| w);
        if let Some(w) = window {
            w.check(env.pn).map_err(|r| match r {
                Replay::TooOld => AuthDrop::TooOld,
                Replay::Duplicate => AuthDrop::Replayed,
            })?;
        }
        let plain = seal::open(&self.ring, &self.cluster, bytes, &env).map_err(|e| match e {
            OpenError::UnknownKey(_) => AuthDrop::UnknownKey,
            OpenError::BadTag => AuthDrop::BadTag,
        })?;
        self.stats.opened += 1;
        self.stats.key_use.entry(env.key_id).or_default().opened += 1;
        if !self.senders.contains_key(&node_id) && self.senders.len() >= self.max_senders {
            // Only key holders get here; still, the table stays bounded.
            self.forget_unadmitted();
            if self.senders.len() >= self.max_senders {
                return Err(AuthDrop::TooManySenders);
            }
        }
        let sender = self.senders.entry(node_id).or_default();
        let admitted = match sender.admitted.as_mut() {
            Some((e, w)) if *e == epoch => {
                w.mark(env.pn);
                true
            }
            _ => false,
        };
        Ok(Opened {
            plain,
            node_id,
            epoch,
            pn: env.pn,
            admitted,
        })
    }

    fn forget_unadmitted(&mut self) {
        self.senders.retain(|_, s| s.admitted.is_some());
    }

    /// Count an authentic datagram of an epoch not admitted (after its
    /// challenge messages were used), and say whether to challenge its
    /// sender now: `Some(nonce)` to send `Challenge { node, epoch, nonce }`.
    /// One challenge per sender, re-sent at most every
    /// `CHALLENGE_RETRY_MS`, a new nonce after `CHALLENGE_EXPIRY_MS`.
    pub fn unadmitted(&mut self, node_id: u32, now_ms: u64) -> Option<u128> {
        self.stats.count(AuthDrop::EpochUnadmitted);
        let sender = self.senders.get_mut(&node_id)?;
        if let Some(p) = sender.pending.as_mut() {
            if now_ms.saturating_sub(p.first_ms) < CHALLENGE_EXPIRY_MS {
                if now_ms.saturating_sub(p.sent_ms) < CHALLENGE_RETRY_MS {
                    return None;
                }
                p.sent_ms = now_ms;
                self.stats.challenges_sent += 1;
                return Some(p.nonce);
            }
        }
        self.nonce_count += 1;
        let nonce = (u128::from(self.nonce_salt) << 64) | u128::from(self.nonce_count);
        sender.pending = Some(Pending {
            nonce,
            first_ms: now_ms,
            sent_ms: now_ms,
        });
        self.stats.challenges_sent += 1;
        Some(nonce)
    }

    /// `node_id` challenged us: may we answer now? (One answer per
    /// challenger per `ANSWER_INTERVAL_MS`: replayed challenges cannot make
    /// us flood.)
    pub fn may_answer(&mut self, node_id: u32, now_ms: u64) -> bool {
        let Some(sender) = self.senders.get_mut(&node_id) else {
            return false;
        };
        if sender
            .answered_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < ANSWER_INTERVAL_MS)
        {
            return false;
        }
        sender.answered_ms = Some(now_ms);
        self.stats.challenges_answered += 1;
        true
    }

    /// An answer from `node_id`, in a datagram of `datagram_epoch` with
    /// packet number `pn`, claiming `epoch` and echoing `nonce`: if it
    /// echoes our challenge out to that sender and claims the epoch it was
    /// sealed in, that epoch is admitted (returns true) and its replay
    /// window starts at `pn`.
    pub fn on_answer(
        &mut self,
        node_id: u32,
        datagram_epoch: u64,
        pn: u64,
        epoch: u64,
        nonce: u128,
    ) -> bool {
        if datagram_epoch != epoch {
            return false;
        }
        let Some(sender) = self.senders.get_mut(&node_id) else {
            return false;
        };
        if sender.pending.is_none_or(|p| p.nonce != nonce) {
            return false;
        }
        sender.pending = None;
        sender.admitted = Some((epoch, ReplayWindow::starting_at(pn)));
        self.stats.epochs_admitted += 1;
        true
    }

    /// The epoch admitted for `node_id`, if any.
    pub fn admitted_epoch(&self, node_id: u32) -> Option<u64> {
        self.senders
            .get(&node_id)
            .and_then(|s| s.admitted.as_ref())
            .map(|(e, _)| *e)
    }

    /// Forget a sender the node forgot (silent for long).
    pub fn forget(&mut self, node_id: u32) {
        self.senders.remove(&node_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_datagram, flags, Header, Message};

    fn ring() -> KeyRing {
        KeyRing::single(1, &[5; 32])
    }

    fn plain(node_id: u32, epoch: u64, seq: u32) -> Vec<u8> {
        let h = Header {
            flags: flags::RELIABLE,
            node_id,
            epoch,
            seq,
            ..Header::default()
        };
        encode_datagram(&h, &[Message::BulkBegin { id: seq }])
    }

    /// A (node 1, epoch 10) talks to B's gate.
    fn admitted_pair() -> (Guard, Guard) {
        let mut a = Guard::new(ring(), "c", 4, 10);
        let mut b = Guard::new(ring(), "c", 4, 20);
        let first = a.seal(&plain(1, 10, 1)).expect("seal");
        let opened = b.open(&first).expect("authentic");
        assert!(!opened.admitted, "a new epoch is not taken on its word");
        let nonce = b.unadmitted(1, 0).expect("challenge");
        let answer = a.seal(&plain(1, 10, 2)).expect("seal");
        let env = b.open(&answer).expect("authentic");
        assert!(b.on_answer(1, env.epoch, env.pn, 10, nonce));
        (a, b)
    }

    #[test]
    fn answers_go_only_to_known_challengers_and_at_a_bounded_rate() {
        let (mut a, mut b) = admitted_pair();
        assert!(!a.may_answer(2, 0), "never heard of node 2");
        a.open(&b.seal(&plain(2, 20, 1)).expect("seal"))
            .expect("ok");
        assert!(a.may_answer(2, 0));
        assert!(!a.may_answer(2, 50));
        assert!(a.may_answer(2, 100));
        assert_eq!(a.stats.challenges_answered, 2);
    }

    #[test]
    fn a_new_epoch_is_admitted_only_by_the_answer_to_our_challenge() {
        let (mut a, mut b) = admitted_pair();
        assert_eq!(b.admitted_epoch(1), Some(10));
        let next = a.seal(&plain(1, 10, 3)).expect("seal");
        assert!(b.open(&next).expect("ok").admitted);
        assert_eq!(b.open(&next).map(|_| ()), Err(AuthDrop::Replayed));
        assert_eq!(b.stats.replayed, 1);
    }

    #[test]
    fn answers_that_do_not_match_admit_nothing() {
        let mut b = Guard::new(ring(), "c", 4, 20);
        let mut a = Guard::new(ring(), "c", 4, 10);
        b.open(&a.seal(&plain(1, 10, 1)).expect("seal"))
            .expect("ok");
        let nonce = b.unadmitted(1, 0).expect("challenge");
        assert!(!b.on_answer(1, 10, 5, 10, nonce + 1), "wrong nonce");
        assert!(
            !b.on_answer(1, 11, 5, 10, nonce),
            "answer from another epoch"
        );
        assert_eq!(b.admitted_epoch(1), None);
        assert!(b.on_answer(1, 10, 5, 10, nonce));
        assert!(!b.on_answer(1, 10, 6, 10, nonce), "a nonce admits once");
    }

    #[test]
    fn challenges_are_rate_limited_and_expire() {
        let mut b = Guard::new(ring(), "c", 4, 20);
        let mut a = Guard::new(ring(), "c", 4, 10);
        b.open(&a.seal(&plain(1, 10, 1)).expect("seal"))
            .expect("ok");
        let n1 = b.unadmitted(1, 0).expect("first");
        assert_eq!(b.unadmitted(1, 100), None, "too soon");
        assert_eq!(b.unadmitted(1, 300), Some(n1), "the same challenge again");
        let n2 = b.unadmitted(1, 30_001).expect("expired: a new one");
        assert_ne!(n1, n2);
        assert_eq!(b.stats.epoch_unadmitted, 4);
    }

    #[test]
    fn refusals_are_counted_by_reason_before_any_state_changes() {
        let (mut a, mut b) = admitted_pair();
        let good = a.seal(&plain(1, 10, 3)).expect("seal");
        let mut forged = good.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(b.open(&forged).map(|_| ()), Err(AuthDrop::BadTag));
        assert!(b.open(&good).is_ok(), "a forgery did not burn the number");
        let mut other = Guard::new(KeyRing::single(2, &[5; 32]), "c", 4, 1);
        let unknown = other.seal(&plain(1, 10, 4)).expect("seal");
        assert_eq!(b.open(&unknown).map(|_| ()), Err(AuthDrop::UnknownKey));
        for seq in 0..(super::super::replay::WINDOW + 2) {
            let _ = a.seal(&plain(1, 10, 5 + seq as u32)).expect("seal");
        }
        let latest = a.seal(&plain(1, 10, 9)).expect("seal");
        assert!(b.open(&latest).is_ok());
        assert_eq!(b.open(&good).map(|_| ()), Err(AuthDrop::TooOld));
        assert_eq!(
            (b.stats.bad_tag, b.stats.unknown_key, b.stats.too_old),
            (1, 1, 1)
        );
    }

    #[test]
    fn the_sender_table_is_bounded() {
        let mut b = Guard::new(ring(), "c", 2, 20);
        let mut a = Guard::new(ring(), "c", 4, 10);
        for node in 1..=2 {
            b.open(&a.seal(&plain(node, 10, 1)).expect("seal"))
                .expect("ok");
        }
        // Unadmitted senders make room for a new one...
        assert!(b.open(&a.seal(&plain(3, 10, 1)).expect("seal")).is_ok());
        // ...admitted ones do not.
        let nonce = b.unadmitted(3, 0).expect("challenge");
        assert!(b.on_answer(3, 10, 7, 10, nonce));
        let mut b2 = Guard::new(ring(), "c", 1, 20);
        b2.open(&a.seal(&plain(3, 10, 1)).expect("seal"))
            .expect("ok");
        let nonce = b2.unadmitted(3, 0).expect("challenge");
        assert!(b2.on_answer(3, 10, 8, 10, nonce));
        assert_eq!(
            b2.open(&a.seal(&plain(4, 10, 1)).expect("seal"))
                .map(|_| ()),
            Err(AuthDrop::TooManySenders)
        );
    }
}
