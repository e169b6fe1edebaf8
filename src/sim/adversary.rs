//! An adversary on the simulated segment. It sees every datagram the honest
//! nodes send and sends its own: replays of what it recorded (soon, later,
//! after the sender restarted, shuffled, to one node or to all),
//! datagrams it forges with the library's encoder (flows no honest node
//! has, deletes of real flows, floods of resync requests, keep-alives under
//! invented node ids and under honest ids with invented epochs, acks,
//! nacks and resumes naming honest epochs) and, against a keyed cluster,
//! recorded sealed datagrams with bits flipped. Its rate and its total are
//! bounded by `AdversaryParams`; every choice it makes comes from its own
//! Rng stream, so a seed replays exactly and the honest network draws the
//! same numbers with or without it.
//!
//! Owns: `AdversaryParams`; what it recorded (per sender epoch, a bounded
//! sample of the datagrams and the highest sequence and packet numbers the
//! headers showed); the flow keys it watched on the data plane; its
//! schedule, budget and datagrams in flight; its counters; and the marks
//! of its forgeries that the checks look for (`is_forged_key`,
//! `forged_keys`, `is_fake_id`). Must not: hold the cluster's keys (it
//! seals with a key of its own), touch a Node or a kernel (the driver
//! delivers what it sends and shows it what the segment and the data plane
//! show), draw from the honest Rngs, or judge whether it got in (`breach`
//! does).

use super::rng::Rng;
use crate::auth::{seal, KeyRing};
use crate::flow::{proto, status, Flow, FlowKey, ProtoState, Tuple, L4};
use crate::wire::{encode_datagram, flags, Header, Message, WireFlow, WireKey};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How the adversary behaves in one run (drawn from the seed, see
/// `params::attack_for_seed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdversaryParams {
    /// Its first attack, in virtual ms.
    pub start_ms: u64,
    /// It attacks until this long after the heal (its datagrams in flight
    /// then still arrive).
    pub after_heal_ms: u64,
    /// Mean time between two attacks (each is one kind, see `Attack`).
    pub interval_ms: u64,
    /// Most datagrams one attack sends (a flood is one attack).
    pub burst: u32,
    /// Most datagrams in the whole run (each copy to each node counts).
    pub budget: u32,
    /// Datagrams kept per sender epoch for replays (a reservoir sample of
    /// all it saw).
    pub keep_per_epoch: usize,
    /// Most delay of one of its datagrams on the way (they overtake each
    /// other and honest ones).
    pub jitter_ms: u64,
}

impl AdversaryParams {
    /// Random parameters: from a trickle to a flood.
    pub fn draw(r: &mut Rng) -> AdversaryParams {
        AdversaryParams {
            start_ms: r.range(0, 1_000),
            after_heal_ms: r.range(0, 3_000),
            interval_ms: r.range(20, 400),
            burst: r.range(1, 32) as u32,
            budget: r.range(50, 800) as u32,
            keep_per_epoch: 256,
            jitter_ms: r.range(0, 500),
        }
    }
}

/// Smallest budget of a lasting adversary (see `AdversaryParams::lasting`).
pub const LASTING_BUDGET: u32 = 3_000;

impl AdversaryParams {
    /// The same adversary attacking through the whole quiet phase of
    /// `quiet_ms` (until the final check), with a budget to last. The seed
    /// sweeps' adversaries stop soon after the heal: replays of authentic
    /// datagrams a node never got are taken by NOTRACK and ALARM nodes as
    /// they come, and a lasting one keeps their views from converging.
    pub fn lasting(mut self, quiet_ms: u64) -> AdversaryParams {
        self.after_heal_ms = quiet_ms;
        self.budget = self.budget.max(LASTING_BUDGET);
        self
    }
}

impl fmt::Display for AdversaryParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "from={}ms until=heal+{}ms every~{}ms burst<={} budget={} keep={} jitter<={}ms",
            self.start_ms,
            self.after_heal_ms,
            self.interval_ms,
            self.burst,
            self.budget,
            self.keep_per_epoch,
            self.jitter_ms
        )
    }
}

/// The kinds of attack, one per action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    /// Recorded datagrams of a sender's latest epoch, shuffled.
    Replay,
    /// Recorded datagrams of an epoch the sender has left (it restarted).
    ReplayOld,
    /// Upserts of flows no honest node has, under an invented node id, an
    /// honest id in its epoch (with the next sequence numbers), or an
    /// honest id in an invented epoch.
    ForgeUpsert,
    /// Deletes of real flows' keys under their owner's id and epoch.
    ForgeDelete,
    /// A flood of resync requests (each asks for a whole table).
    ResyncFlood,
    /// Keep-alives under invented node ids and under honest ids with
    /// invented epochs (a restart, were they believed).
    FakeAlive,
    /// Acks, nacks and resumes naming honest nodes' epochs.
    ForgeControl,
    /// Recorded sealed datagrams with bits flipped (keyed clusters only).
    BitFlip,
}

impl Attack {
    /// Every attack, in counter order.
    pub const ALL: [Attack; 8] = [
        Attack::Replay,
        Attack::ReplayOld,
        Attack::ForgeUpsert,
        Attack::ForgeDelete,
        Attack::ResyncFlood,
        Attack::FakeAlive,
        Attack::ForgeControl,
        Attack::BitFlip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::Replay => "replay",
            Attack::ReplayOld => "replay_old_epoch",
            Attack::ForgeUpsert => "forge_upsert",
            Attack::ForgeDelete => "forge_delete",
            Attack::ResyncFlood => "resync_flood",
            Attack::FakeAlive => "fake_alive",
            Attack::ForgeControl => "forge_control",
            Attack::BitFlip => "bit_flip",
        }
    }

    fn index(self) -> usize {
        Attack::ALL.iter().position(|&a| a == self).unwrap_or(0)
    }
}

/// Where an injected datagram's bytes come from: what the checks may
/// expect of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A copy of an authentic datagram: it may be taken where the original
    /// would be (a late duplicate), never beyond.
    Replay,
    /// Made by the adversary: with keys, always refused.
    Forged,
    /// An authentic datagram altered: with keys, always refused.
    Flipped,
}

/// One datagram of the adversary's on its way to an honest node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    pub to: usize,
    pub link: usize,
    pub bytes: Vec<u8>,
    pub origin: Origin,
    pub attack: Attack,
}

/// What the adversary did, and (as the driver tells it) what came of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdversaryStats {
    /// Honest datagrams it saw.
    pub recorded: u64,
    pub actions: u64,
    /// Its datagrams, by attack (in `Attack` order).
    pub sent: [u64; 8],
    /// Its datagrams that reached a running node.
    pub delivered: u64,
    /// Of those: refused by the gate or dropped as malformed or stale.
    pub refused: u64,
    /// Replays a node took (authentic datagrams it had not had yet)...
    pub replays_taken: u64,
    /// ...and of those, the ones that changed its views: data the node
    /// never got, delivered late (NOTRACK and ALARM apply it as it comes).
    pub replays_changed_views: u64,
    /// Forged or altered datagrams a node took (never, with keys).
    pub forged_taken: u64,
}

impl AdversaryStats {
    pub fn total_sent(&self) -> u64 {
        self.sent.iter().sum()
    }

    pub fn sent_by(&self, attack: Attack) -> u64 {
        self.sent.get(attack.index()).copied().unwrap_or(0)
    }
}

impl fmt::Display for AdversaryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "saw={} actions={} sent={} (",
            self.recorded,
            self.actions,
            self.total_sent()
        )?;
        for (i, a) in Attack::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}={}", a.name(), self.sent[i])?;
        }
        write!(
            f,
            ") delivered={} refused={} replays_taken={} (changed views: {}) forged_taken={}",
            self.delivered,
            self.refused,
            self.replays_taken,
            self.replays_changed_views,
            self.forged_taken
        )
    }
}

// ---- the marks of its forgeries --------------------------------------------

/// Invented node ids are `FAKE_ID_BASE + 0..FAKE_IDS` (more than a node's
/// `max_peers`, so a keyless node's peer table can be filled).
pub const FAKE_ID_BASE: u32 = 0xAD00_0000;
pub const FAKE_IDS: u32 = 24;
/// Forged flows are drawn from this many keys, all in 198.19.255.0/24 or
/// 2001:db8:ffff::/48 (no honest node's addresses; see `workload`).
pub const FORGED_POOL: u32 = 64;

pub fn is_fake_id(id: u32) -> bool {
    id.wrapping_sub(FAKE_ID_BASE) < FAKE_IDS
}

fn is_forged_addr(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[..3] == [198, 19, 255],
        IpAddr::V6(a) => a.segments()[..3] == [0x2001, 0xdb8, 0xffff],
    }
}

/// Whether a flow key carries the adversary's addresses.
pub fn is_forged_key(k: &FlowKey) -> bool {
    is_forged_addr(&k.orig.src) || is_forged_addr(&k.orig.dst)
}

/// The `i`th key of the forged pool.
pub fn forged_key(i: u32) -> FlowKey {
    let i = i % FORGED_POOL;
    let n = i as u16;
    let orig = if i % 2 == 0 {
        Tuple {
            src: IpAddr::V4(Ipv4Addr::new(198, 19, 255, i as u8)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 19, 255, 254)),
            proto: proto::TCP,
            l4: L4::Ports {
                src: 40_000 + n,
                dst: 443,
            },
        }
    } else {
        Tuple {
            src: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, n)),
            dst: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x53)),
            proto: proto::UDP,
            l4: L4::Ports {
                src: 50_000 + n,
                dst: 53,
            },
        }
    };
    FlowKey { zone: 0, orig }
}

/// Every key of the forged pool.
pub fn forged_keys() -> impl Iterator<Item = FlowKey> {
    (0..FORGED_POOL).map(forged_key)
}

fn forged_flow(r: &mut Rng) -> Flow {
    let key = forged_key(r.below(u64::from(FORGED_POOL)) as u32);
    let mut f = Flow::new(key.orig);
    f.zone = key.zone;
    f.status = status::CONFIRMED | status::SEEN_REPLY | status::ASSURED;
    f.timeout = r.range(1, 432_000) as u32;
    f.mark = r.u32();
    if key.orig.proto == proto::TCP {
        f.state = ProtoState::Tcp {
            state: 3,
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0,
            flags_reply: 0,
        };
    }
    f
}

// ---- the adversary ----------------------------------------------------------

/// One honest datagram kept for later.
#[derive(Clone, Debug)]
struct Recorded {
    bytes: Vec<u8>,
}

/// What it saw of one sender epoch.
#[derive(Clone, Debug, Default)]
struct EpochLog {
    /// Highest sequence number in a header (the stream's position).
    max_seq: u32,
    /// Highest packet number of a sealed datagram.
    max_pn: Option<u64>,
    seen: u64,
    kept: Vec<Recorded>,
}

/// What it saw of one node id.
#[derive(Clone, Debug)]
struct Heard {
    /// The host it was sent from (where not to send it back, mostly).
    host: usize,
    /// Epochs in the order first seen; the last is the latest.
    order: Vec<u64>,
    epochs: BTreeMap<u64, EpochLog>,
}

impl Heard {
    fn latest(&self) -> u64 {
        self.order.last().copied().unwrap_or(0)
    }
}

/// An identity it sends under: a node id, an epoch and the sequence (and
/// packet) numbers that would come next.
#[derive(Clone, Copy, Debug)]
struct Identity {
    id: u32,
    /// The host that really is this node (`None`: an invented one).
    host: Option<usize>,
    epoch: u64,
    seq: u32,
    pn: Option<u64>,
}

/// The adversary (see the module doc).
#[derive(Debug)]
pub struct Adversary {
    params: AdversaryParams,
    rng: Rng,
    /// Honest hosts (targets are `0..hosts`) and links per host.
    hosts: usize,
    links: usize,
    /// Whether the cluster seals (it sees so in every header).
    keyed: bool,
    cluster: String,
    /// Its own key: it seals under the cluster's key id (a forged tag) or
    /// under ids nobody holds.
    own_key: [u8; 32],
    /// Rings of its own key under the ids it has sealed with.
    rings: BTreeMap<u8, KeyRing>,
    heard: BTreeMap<u32, Heard>,
    /// The key id the cluster seals with, as seen on the wire.
    key_id: Option<u8>,
    /// Real flows seen on the data plane: (owner host, key), a sample.
    flows: Vec<(usize, FlowKey)>,
    flows_seen: u64,
    /// Invented nodes: their epoch and next sequence number.
    fakes: BTreeMap<u32, (u64, u32)>,
    next_action: Option<u64>,
    stop_at: u64,
    left: u32,
    in_flight: BTreeMap<(u64, u64), Injection>,
    order: u64,
    stats: AdversaryStats,
}

/// Real flow keys it remembers.
const FLOWS_KEPT: usize = 512;

impl Adversary {
    /// An adversary against `hosts` honest hosts with `links` links each,
    /// attacking from `params.start_ms` until `heal_at + after_heal_ms`.
    pub fn new(
        params: &AdversaryParams,
        mut rng: Rng,
        hosts: usize,
        links: usize,
        keyed: bool,
        cluster: &str,
        heal_at: u64,
    ) -> Adversary {
        let mut own_key = [0u8; 32];
        for b in &mut own_key {
            *b = rng.byte();
        }
        Adversary {
            params: params.clone(),
            rng,
            hosts: hosts.max(1),
            links: links.max(1),
            keyed,
            cluster: cluster.to_string(),
            own_key,
            rings: BTreeMap::new(),
            heard: BTreeMap::new(),
            key_id: None,
            flows: Vec::new(),
            flows_seen: 0,
            fakes: BTreeMap::new(),
            next_action: Some(params.start_ms),
            stop_at: heal_at.saturating_add(params.after_heal_ms),
            left: params.budget,
            in_flight: BTreeMap::new(),
            order: 0,
            stats: AdversaryStats::default(),
        }
    }

    pub fn stats(&self) -> &AdversaryStats {
        &self.stats
    }

    /// Whether it will still attack or has datagrams on the way.
    pub fn active(&self) -> bool {
        self.next_action.is_some() || !self.in_flight.is_empty()
    }

    /// When it next acts or one of its datagrams arrives.
    pub fn next_at(&self) -> Option<u64> {
        let flight = self.in_flight.keys().next().map(|&(at, _)| at);
        match (self.next_action, flight) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The driver tells it what came of a delivered datagram: refused, or
    /// taken (and whether the node's views changed).
    pub fn note(&mut self, origin: Origin, refused: bool, views_changed: bool) {
        self.stats.delivered += 1;
        if refused {
            self.stats.refused += 1;
        } else if origin == Origin::Replay {
            self.stats.replays_taken += 1;
            self.stats.replays_changed_views += u64::from(views_changed);
        } else {
            self.stats.forged_taken += 1;
        }
    }

    // ---- what it sees ----------------------------------------------------

    /// An honest datagram host `from` sent (the segment shows it whether
    /// or not it arrives).
    pub fn record(&mut self, from: usize, bytes: &[u8]) {
        let Ok(h) = Header::parse(bytes) else {
            return;
        };
        self.stats.recorded += 1;
        let env = if h.is_sealed() {
            seal::envelope(bytes)
        } else {
            None
        };
        if let Some(env) = env {
            self.key_id = Some(env.key_id);
        }
        let heard = self.heard.entry(h.node_id).or_insert_with(|| Heard {
            host: from,
            order: Vec::new(),
            epochs: BTreeMap::new(),
        });
        heard.host = from;
        if heard.latest() != h.epoch || heard.order.is_empty() {
            heard.order.retain(|&e| e != h.epoch);
            heard.order.push(h.epoch);
        }
        let log = heard.epochs.entry(h.epoch).or_default();
        log.max_seq = log.max_seq.max(h.seq);
        if let Some(env) = env {
            log.max_pn = Some(log.max_pn.map_or(env.pn, |p| p.max(env.pn)));
        }
        log.seen += 1;
        let keep = self.params.keep_per_epoch.max(1);
        if log.kept.len() < keep {
            log.kept.push(Recorded {
                bytes: bytes.to_vec(),
            });
        } else {
            let j = self.rng.below(log.seen) as usize;
            if let Some(slot) = log.kept.get_mut(j) {
                *slot = Recorded {
                    bytes: bytes.to_vec(),
                };
            }
        }
    }

    /// A flow of host `owner` seen on the data plane (the packets of a
    /// connection show its key, with or without keys on the sync link).
    pub fn observe_flow(&mut self, owner: usize, key: FlowKey) {
        self.flows_seen += 1;
        if self.flows.len() < FLOWS_KEPT {
            self.flows.push((owner, key));
        } else {
            let j = self.rng.below(self.flows_seen) as usize;
            if let Some(slot) = self.flows.get_mut(j) {
                *slot = (owner, key);
            }
        }
    }

    // ---- what it does ----------------------------------------------------

    /// Attack if it is time (as often as the schedule says up to `now`).
    pub fn act(&mut self, now: u64) {
        while let Some(at) = self.next_action {
            if at > now {
                break;
            }
            if now > self.stop_at || self.left == 0 {
                self.next_action = None;
                break;
            }
            self.attack(now);
            let i = self.params.interval_ms.max(2);
            self.next_action = Some(now + self.rng.range(i / 2, i + i / 2).max(1));
        }
    }

    /// The next of its datagrams due at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Injection> {
        let entry = self.in_flight.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }

    fn attack(&mut self, now: u64) {
        self.stats.actions += 1;
        let pick = Attack::ALL[self.rng.below(Attack::ALL.len() as u64) as usize];
        let done = match pick {
            Attack::Replay => self.replay(now, false),
            Attack::ReplayOld => self.replay(now, true),
            Attack::ForgeDelete => self.forge_delete(now),
            Attack::ResyncFlood => {
                self.flood(now, Attack::ResyncFlood);
                true
            }
            Attack::FakeAlive => {
                self.flood(now, Attack::FakeAlive);
                true
            }
            Attack::ForgeControl => self.forge_control(now),
            Attack::BitFlip => self.keyed && self.bit_flip(now),
            Attack::ForgeUpsert => false,
        };
        if !done {
            self.forge_upserts(now);
        }
    }

    fn burst(&mut self) -> u32 {
        self.rng.range(1, u64::from(self.params.burst.max(1))) as u32
    }

    /// Send `bytes` to host `to`, at a random delay, if the budget allows.
    fn inject(&mut self, now: u64, to: usize, bytes: Vec<u8>, origin: Origin, attack: Attack) {
        if self.left == 0 {
            return;
        }
        self.left -= 1;
        if let Some(n) = self.stats.sent.get_mut(attack.index()) {
            *n += 1;
        }
        let at = now + 1 + self.rng.range(0, self.params.jitter_ms);
        let link = self.rng.below(self.links as u64) as usize;
        self.order += 1;
        self.in_flight.insert(
            (at, self.order),
            Injection {
                to,
                link,
                bytes,
                origin,
                attack,
            },
        );
    }

    /// A host other than `not` (any host when there is only one).
    fn target(&mut self, not: Option<usize>) -> usize {
        let n = self.hosts as u64;
        let t = self.rng.below(n) as usize;
        match not {
            Some(x) if t == x && n > 1 => (t + 1 + self.rng.below(n - 1) as usize) % self.hosts,
            _ => t,
        }
    }

    /// Send to one host other than `not`, or (a third of the time) to all.
    fn spray(&mut self, now: u64, not: Option<usize>, bytes: Vec<u8>, o: Origin, a: Attack) {
        if self.rng.chance(33) {
            for to in 0..self.hosts {
                if Some(to) != not || self.hosts == 1 {
                    self.inject(now, to, bytes.clone(), o, a);
                }
            }
        } else {
            let to = self.target(not);
            self.inject(now, to, bytes, o, a);
        }
    }

    /// A node id it heard, at random.
    fn some_heard(&mut self) -> Option<u32> {
        let n = self.heard.len() as u64;
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n) as usize;
        self.heard.keys().nth(i).copied()
    }

    /// Node `id` as it is now: its latest epoch and the numbers next due.
    fn honest(&mut self, id: u32) -> Option<Identity> {
        let h = self.heard.get(&id)?;
        let epoch = h.latest();
        let log = h.epochs.get(&epoch)?;
        let ahead = self.rng.range(1, 3) as u32;
        // Packet numbers just ahead (the ones the sender uses next), or far
        // ahead: a forged number must never move a replay window.
        let pn_ahead = if self.rng.chance(20) {
            self.rng.range(10_000, 1 << 40)
        } else {
            self.rng.range(1, 4)
        };
        Some(Identity {
            id,
            host: Some(h.host),
            epoch,
            seq: log.max_seq.wrapping_add(ahead),
            pn: log.max_pn.map(|p| p + pn_ahead),
        })
    }

    /// An invented node, with an epoch and sequence of its own.
    fn fake(&mut self) -> Identity {
        let id = FAKE_ID_BASE + self.rng.below(u64::from(FAKE_IDS)) as u32;
        let fresh = (self.rng.next_u64(), self.rng.range(1, 1_000) as u32);
        let entry = self.fakes.entry(id).or_insert(fresh);
        entry.1 = entry.1.wrapping_add(1);
        Identity {
            id,
            host: None,
            epoch: entry.0,
            seq: entry.1,
            pn: Some(u64::from(entry.1)),
        }
    }

    /// An honest node id under an epoch it never had: the next one, a
    /// near one, or any.
    fn invented_epoch(&mut self) -> Option<Identity> {
        let id = self.some_heard()?;
        let mut me = self.honest(id)?;
        me.epoch = match self.rng.below(3) {
            0 => me.epoch.wrapping_add(1),
            1 => me.epoch.wrapping_add(self.rng.range(2, 1_000)),
            _ => self.rng.next_u64(),
        };
        me.seq = self.rng.range(1, 100) as u32;
        me.pn = Some(self.rng.range(0, 100));
        Some(me)
    }

    /// Who to forge as: invented, honest in its epoch, or honest in an
    /// invented one.
    fn someone(&mut self) -> Identity {
        let pick = self.rng.below(3);
        let heard = self.some_heard();
        match (pick, heard) {
            (1, Some(id)) => self.honest(id).unwrap_or_else(|| self.fake()),
            (2, Some(_)) => self.invented_epoch().unwrap_or_else(|| self.fake()),
            _ => self.fake(),
        }
    }

    /// The datagram `msgs` under `who`, as the adversary can make it: plain
    /// for a keyless cluster; for a keyed one plain (refused as unsealed),
    /// sealed with its own key under the cluster's key id (a bad tag), or
    /// under a key id nobody holds.
    fn forge(&mut self, who: &Identity, reliable: bool, msgs: &[Message]) -> Vec<u8> {
        let header = Header {
            flags: if reliable { flags::RELIABLE } else { 0 },
            node_id: who.id,
            epoch: who.epoch,
            seq: who.seq,
            ..Header::default()
        };
        let plain = encode_datagram(&header, msgs);
        if !self.keyed {
            return plain;
        }
        let cluster_id = self.key_id.unwrap_or(1);
        let id = match self.rng.below(4) {
            0 => return plain,
            1 => cluster_id.wrapping_add(1 + self.rng.below(4) as u8),
            _ => cluster_id,
        };
        let pn = who.pn.unwrap_or_else(|| self.rng.range(0, 1_000));
        let key = &self.own_key;
        let ring = self
            .rings
            .entry(id)
            .or_insert_with(|| KeyRing::single(id, key));
        seal::seal(ring, self.cluster.as_bytes(), &plain, pn).unwrap_or(plain)
    }

    fn forge_upserts(&mut self, now: u64) {
        for _ in 0..self.burst() {
            let who = self.someone();
            let n = self.rng.range(1, 4);
            let msgs: Vec<Message> = (0..n)
                .map(|_| Message::Upsert(WireFlow::from(&forged_flow(&mut self.rng))))
                .collect();
            let bytes = self.forge(&who, true, &msgs);
            self.spray(now, who.host, bytes, Origin::Forged, Attack::ForgeUpsert);
        }
    }

    fn forge_delete(&mut self, now: u64) -> bool {
        if self.flows.is_empty() {
            return false;
        }
        for _ in 0..self.burst() {
            let i = self.rng.below(self.flows.len() as u64) as usize;
            let Some(&(owner, key)) = self.flows.get(i) else {
                continue;
            };
            // Its owner's node id, as the segment showed it.
            let id = self
                .heard
                .iter()
                .find(|(_, h)| h.host == owner)
                .map(|(&id, _)| id);
            let Some(who) = id.and_then(|id| self.honest(id)) else {
                continue;
            };
            let msgs = [Message::Delete(WireKey::from(&key))];
            let bytes = self.forge(&who, true, &msgs);
            self.spray(now, who.host, bytes, Origin::Forged, Attack::ForgeDelete);
        }
        true
    }

    fn flood(&mut self, now: u64, attack: Attack) {
        for _ in 0..self.burst() {
            let (who, msg) = if attack == Attack::ResyncFlood {
                let who = self.someone();
                let node = match self.some_heard() {
                    Some(id) if self.rng.chance(50) => Some(id),
                    _ => None,
                };
                (who, Message::ResyncRequest { node })
            } else {
                let who = if self.rng.chance(60) {
                    self.fake()
                } else {
                    self.invented_epoch().unwrap_or_else(|| self.fake())
                };
                (who, Message::Alive)
            };
            let bytes = self.forge(&who, false, &[msg]);
            self.spray(now, who.host, bytes, Origin::Forged, attack);
        }
    }

    fn forge_control(&mut self, now: u64) -> bool {
        let (Some(a), Some(b)) = (self.some_heard(), self.some_heard()) else {
            return false;
        };
        let who = if a != b {
            self.honest(a)
        } else {
            Some(self.fake())
        };
        let (Some(mut who), Some(victim)) = (who, self.honest(b)) else {
            return false;
        };
        // A control datagram carries the sender's last sequence number.
        who.seq = who.seq.wrapping_sub(1);
        let top = victim.seq.wrapping_sub(1);
        for _ in 0..self.burst() {
            let msg = match self.rng.below(3) {
                0 => Message::Ack {
                    node: victim.id,
                    epoch: victim.epoch,
                    upto: top.wrapping_add(self.rng.below(64) as u32),
                },
                1 => Message::Nack {
                    node: victim.id,
                    epoch: victim.epoch,
                    from: top.saturating_sub(self.rng.below(500) as u32),
                    to: top,
                },
                _ => Message::Resume {
                    from: who.seq.wrapping_add(1 + self.rng.below(100) as u32),
                },
            };
            let bytes = self.forge(&who, false, &[msg]);
            match victim.host {
                Some(to) if self.rng.chance(70) => {
                    self.inject(now, to, bytes, Origin::Forged, Attack::ForgeControl)
                }
                _ => self.spray(now, who.host, bytes, Origin::Forged, Attack::ForgeControl),
            }
        }
        true
    }

    /// Recorded datagrams of one sender: of its latest epoch, or (`old`)
    /// of one it left; `None` if it has none such.
    fn pick_log(&mut self, old: bool) -> Option<(usize, Vec<Vec<u8>>)> {
        let id = self.some_heard()?;
        let h = self.heard.get(&id)?;
        let epoch = if old {
            let before: Vec<u64> = h.order[..h.order.len().saturating_sub(1)].to_vec();
            if before.is_empty() {
                return None;
            }
            let i = self.rng.below(before.len() as u64) as usize;
            before.get(i).copied()?
        } else {
            h.latest()
        };
        let host = h.host;
        let kept: Vec<Vec<u8>> = h
            .epochs
            .get(&epoch)?
            .kept
            .iter()
            .map(|r| r.bytes.clone())
            .collect();
        (!kept.is_empty()).then_some((host, kept))
    }

    fn replay(&mut self, now: u64, old: bool) -> bool {
        let picked = if old { self.pick_log(true) } else { None };
        let old = picked.is_some();
        let Some((host, kept)) = picked.or_else(|| self.pick_log(false)) else {
            return false;
        };
        let n = self.burst() as usize;
        let mut batch: Vec<Vec<u8>> = (0..n)
            .filter_map(|_| {
                kept.get(self.rng.below(kept.len() as u64) as usize)
                    .cloned()
            })
            .collect();
        // Shuffled (Fisher-Yates), on top of the delays on the way.
        for i in (1..batch.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            batch.swap(i, j);
        }
        let attack = if old {
            Attack::ReplayOld
        } else {
            Attack::Replay
        };
        for bytes in batch {
            // Now and then back to its own sender (a reflection).
            let not = (!self.rng.chance(10)).then_some(host);
            self.spray(now, not, bytes, Origin::Replay, attack);
        }
        true
    }

    fn bit_flip(&mut self, now: u64) -> bool {
        let old = self.rng.chance(30);
        let Some((host, kept)) = self.pick_log(old).or_else(|| self.pick_log(false)) else {
            return false;
        };
        for _ in 0..self.burst() {
            let Some(original) = kept.get(self.rng.below(kept.len() as u64) as usize) else {
                continue;
            };
            let mut bytes = original.clone();
            for _ in 0..self.rng.range(1, 3) {
                let at = self.rng.below(bytes.len() as u64) as usize;
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 1 << self.rng.below(8);
                }
            }
            if bytes == *original {
                continue;
            }
            self.spray(now, Some(host), bytes, Origin::Flipped, Attack::BitFlip);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode_datagram;

    fn params() -> AdversaryParams {
        AdversaryParams {
            start_ms: 0,
            after_heal_ms: 0,
            interval_ms: 20,
            burst: 8,
            budget: 800,
            keep_per_epoch: 4,
            jitter_ms: 50,
        }
    }

    fn honest(node_id: u32, epoch: u64, seq: u32) -> Vec<u8> {
        let h = Header {
            flags: flags::RELIABLE,
            node_id,
            epoch,
            seq,
            ..Header::default()
        };
        encode_datagram(&h, &[Message::Alive])
    }

    fn run(keyed: bool, seed: u64) -> (Vec<Injection>, AdversaryStats) {
        let mut a = Adversary::new(&params(), Rng::new(seed), 3, 2, keyed, "sim", 1_000);
        let mut out = Vec::new();
        for t in 0..1_000u64 {
            if t % 7 == 0 {
                let node = (t % 3) as u32 + 1;
                let epoch = if t < 500 { 100 } else { 200 } + u64::from(node);
                let plain = honest(node, epoch, t as u32);
                let bytes = if keyed {
                    let ring = KeyRing::single(1, &[7; 32]);
                    seal::seal(&ring, b"sim", &plain, t).expect("seals")
                } else {
                    plain
                };
                a.record((t % 3) as usize, &bytes);
                a.observe_flow((t % 3) as usize, forged_key(0));
            }
            a.act(t);
            while let Some(i) = a.pop_due(t) {
                out.push(i);
            }
        }
        while let Some(i) = a.pop_due(u64::MAX) {
            out.push(i);
        }
        (out, a.stats().clone())
    }

    #[test]
    fn it_is_a_function_of_its_seed_and_keeps_to_its_budget() {
        let (a, sa) = run(true, 5);
        let (b, _) = run(true, 5);
        assert_eq!(a, b);
        assert_eq!(a.len() as u64, sa.total_sent());
        assert!(a.len() <= 800 && a.len() > 100, "{}", a.len());
        assert!(a.iter().all(|i| i.to < 3 && i.link < 2));
        let (c, _) = run(true, 6);
        assert_ne!(a, c);
    }

    #[test]
    fn it_tries_every_attack_and_old_epochs() {
        let (_, s) = run(true, 9);
        for attack in Attack::ALL {
            assert!(s.sent_by(attack) > 0, "{attack:?}: {s}");
        }
        let (_, plain) = run(false, 9);
        assert_eq!(plain.sent_by(Attack::BitFlip), 0, "no flips without keys");
    }

    #[test]
    fn keyless_forgeries_decode_and_carry_its_marks() {
        let (out, _) = run(false, 3);
        let mut forged_flows = 0;
        let mut fake_ids = 0;
        for i in out.iter().filter(|i| i.origin == Origin::Forged) {
            let (h, msgs) = decode_datagram(&i.bytes).expect("a valid datagram");
            fake_ids += usize::from(is_fake_id(h.node_id));
            for m in msgs {
                if let Message::Upsert(f) = m {
                    assert!(is_forged_key(&f.key()));
                    assert!(forged_keys().any(|k| k == f.key()));
                    forged_flows += 1;
                }
            }
        }
        assert!(
            forged_flows > 10 && fake_ids > 10,
            "{forged_flows} {fake_ids}"
        );
        // No honest flow carries its marks.
        let mut r = Rng::new(1);
        for owner in 0..4 {
            for slot in 0..500 {
                let f = crate::sim::workload::new_flow(&mut r, owner, slot);
                assert!(!is_forged_key(&f.key()));
                assert!(!is_forged_addr(&f.reply.src) && !is_forged_addr(&f.reply.dst));
            }
        }
    }

    #[test]
    fn keyed_forgeries_never_carry_the_cluster_key() {
        let ring = KeyRing::single(1, &[7; 32]);
        let (out, _) = run(true, 4);
        let mut sealed = 0;
        for i in out.iter().filter(|i| i.origin != Origin::Replay) {
            if let Some(env) = seal::envelope(&i.bytes) {
                sealed += 1;
                assert!(seal::open(&ring, b"sim", &i.bytes, &env).is_err());
            }
        }
        assert!(sealed > 10, "{sealed}");
    }
}
