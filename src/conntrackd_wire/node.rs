//! Sans-IO conntrackd peer: FTFW, NOTRACK and ALARM as conntrackd 1.4.7
//! runs them (§2 of the reference), for one link to one conntrackd.
//!
//! The daemon feeds a `CdNode` local changes (`local_flow`, `local_expect`
//! and their `_gone` forms) and datagrams (`on_datagram`, which returns the
//! decoded changes to apply), then calls `poll_transmit` after every input
//! and at the latest at `next_deadline`; it sends the datagrams returned.
//!
//! Owns: the internal cache of what we sent (objects and whether they are
//! new, updated or dead, as conntrackd's cache status), the TX queue, the
//! sequence counter, the resend queue, the ACK window and hello handshake
//! (FTFW), the alive timer, ALARM's per-object refresh timers, the flow
//! sweep's marks, and the counters. Must not: do I/O or read the clock
//! (time is `now_ms`), talk to the kernel, or hold the external cache (the
//! caller applies `Change`s).

use super::flow_attrs::Codec;
use super::header::{self, before, flags, split, Control, Header, Piece, Reject};
use super::message::{decode_data, encode_object, Change, Key, Object, Op, Packer, UDP_OVERHEAD};
use super::rxseq::{RxSeq, SeqClass};
use super::tlv;
use crate::expect::{ExpectKey, Expectation};
use crate::flow::{Flow, FlowKey};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// The alive timer of FTFW and NOTRACK: fixed at 1 s in conntrackd.
pub const ALIVE_MS: u64 = 1000;

/// conntrackd's sync mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CdMode {
    Ftfw,
    Notrack,
    Alarm,
}

/// A link's settings, named as in conntrackd.conf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdConfig {
    pub mode: CdMode,
    pub codec: Codec,
    /// The link interface's MTU: datagrams carry at most MTU − 28 bytes.
    pub mtu: usize,
    /// FTFW `ResendQueueSize` (default 131072).
    pub resend_queue_size: usize,
    /// FTFW `ACKWindowSize` (default 300).
    pub ack_window: u32,
    /// ALARM `RefreshTime` in seconds (default 60).
    pub refresh_time_s: u32,
    /// Seeds ALARM's refresh jitter (conntrackd uses `rand()`).
    pub seed: u64,
}

impl Default for CdConfig {
    fn default() -> CdConfig {
        CdConfig {
            mode: CdMode::Ftfw,
            codec: Codec::default(),
            mtu: 1500,
            resend_queue_size: 131_072,
            ack_window: 300,
            refresh_time_s: 60,
            seed: 1,
        }
    }
}

/// Counters, as `conntrackd -s network` and `-s rsqueue` show them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdStats {
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub messages_sent: u64,
    pub datagrams_received: u64,
    pub messages_received: u64,
    /// Refused messages by reason (their sum is "Malformed messages").
    pub rejected: HashMap<Reject, u64>,
    /// "Packets lost" and "Packets before" (see `rxseq`).
    pub lost: u64,
    pub before: u64,
    /// Resyncs the peer asked for (each answered with a bulk).
    pub resync_requests: u64,
    /// Objects retransmitted because the peer NACKed them.
    pub nacked: u64,
    /// Resend queue entries dropped when it was full.
    pub rs_overflow: u64,
    /// Bulks sent because the peer NACKed after such an overflow.
    pub overflow_bulks: u64,
    /// Messages received with HELLO (the peer says it until our
    /// HELLO_BACK reaches it).
    pub hellos: u64,
    /// FTFW: peer starts and restarts seen (a run of HELLO messages, counted
    /// as it ends), each answered with a bulk: a restarted conntrackd
    /// without StartupResync would otherwise hear only of the flows that
    /// change from then on.
    pub peer_restarts: u64,
}

impl CdStats {
    pub fn rejected(&self, r: Reject) -> u64 {
        self.rejected.get(&r).copied().unwrap_or(0)
    }

    pub fn malformed(&self) -> u64 {
        self.rejected.values().sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    New,
    Alive,
    Dead,
}

#[derive(Clone, Debug)]
struct Entry {
    object: Object,
    status: Status,
    /// The flow sweep it was last seen in (`begin_flow_sweep`).
    seen: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Obj(Key),
    Ctl(Control),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hello {
    Init,
    Say,
    Done,
}

/// The mode's verdict on a message (`MSG_DATA`, `MSG_CTL`, `MSG_DROP`,
/// `MSG_BAD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Data,
    Ctl,
    Drop,
    Bad,
}

/// One conntrackd peer on one link.
#[derive(Debug)]
pub struct CdNode {
    cfg: CdConfig,
    next_seq: u32,
    objects: HashMap<Key, Entry>,
    txq: VecDeque<Item>,
    queued: HashSet<Key>,
    /// FTFW resend queue: (seq, item) in sending order. An object entry is
    /// live while `rs_index` maps its key to that seq.
    rsq: VecDeque<(u32, Item)>,
    rs_index: HashMap<Key, u32>,
    rs_live: usize,
    rx: RxSeq,
    ack_from: u32,
    ack_from_set: bool,
    window: u32,
    hello: Hello,
    say_hello_back: bool,
    /// The peer's last message carried HELLO (a run of them is one start).
    peer_saying_hello: bool,
    /// The resend queue overflowed: objects the peer may lack can no
    /// longer be resent one by one, so its next NACK gets a bulk.
    owe_bulk: bool,
    alive_at: u64,
    /// ALARM: (deadline, key) and each key's deadline.
    timers: BTreeSet<(u64, Key)>,
    timer_of: HashMap<Key, u64>,
    rng: u64,
    stats: CdStats,
    /// Flows held and not dead.
    alive_flows: usize,
    /// The current flow sweep, and how many alive flows were seen in it.
    sweep: u32,
    seen_alive: usize,
}

impl CdNode {
    /// A peer whose first sequence number is `unix_secs` (conntrackd
    /// starts at `time(NULL)`).
    pub fn new(cfg: CdConfig, unix_secs: u32, now_ms: u64) -> CdNode {
        CdNode {
            next_seq: unix_secs,
            objects: HashMap::new(),
            txq: VecDeque::new(),
            queued: HashSet::new(),
            rsq: VecDeque::new(),
            rs_index: HashMap::new(),
            rs_live: 0,
            rx: RxSeq::default(),
            ack_from: 0,
            ack_from_set: false,
            window: cfg.ack_window,
            hello: Hello::Init,
            say_hello_back: false,
            peer_saying_hello: false,
            owe_bulk: false,
            alive_at: now_ms + ALIVE_MS,
            timers: BTreeSet::new(),
            timer_of: HashMap::new(),
            rng: cfg.seed | 1,
            stats: CdStats::default(),
            alive_flows: 0,
            sweep: 0,
            seen_alive: 0,
            cfg,
        }
    }

    pub fn config(&self) -> &CdConfig {
        &self.cfg
    }

    /// The bulks the peer was owed so far, for a resync request or for
    /// its (re)start (without copying `stats`).
    pub fn bulks_owed(&self) -> u64 {
        self.stats.resync_requests + self.stats.peer_restarts
    }

    pub fn stats(&self) -> CdStats {
        let mut s = self.stats.clone();
        s.lost = self.rx.lost;
        s.before = self.rx.before;
        s
    }

    /// Objects held (sent and not yet forgotten), dead ones included.
    pub fn internal_len(&self) -> usize {
        self.objects.len()
    }

    /// The flow last sent for `key`, unless it is gone (dead).
    pub fn flow(&self, key: &FlowKey) -> Option<&Flow> {
        match self.objects.get(&Key::Flow(*key)) {
            Some(Entry {
                object: Object::Flow(f),
                status,
                ..
            }) if *status != Status::Dead => Some(f),
            _ => None,
        }
    }

    /// The keys of the flows held and not gone.
    pub fn flow_keys(&self) -> Vec<FlowKey> {
        self.objects
            .iter()
            .filter_map(|(k, e)| match k {
                Key::Flow(fk) if e.status != Status::Dead => Some(*fk),
                _ => None,
            })
            .collect()
    }

    /// Start a sweep for the flows held that the caller no longer has: it
    /// then marks each flow it still has with `seen` (a flow sent meanwhile
    /// is marked by `local_flow`), and `unseen_flows` counts the rest.
    pub fn begin_flow_sweep(&mut self) {
        self.sweep = self.sweep.wrapping_add(1);
        self.seen_alive = 0;
    }

    /// The current sweep saw the flow `key` (if held and not dead).
    pub fn seen(&mut self, key: &FlowKey) {
        if let Some(e) = self.objects.get_mut(&Key::Flow(*key)) {
            if e.status != Status::Dead && e.seen != self.sweep {
                e.seen = self.sweep;
                self.seen_alive += 1;
            }
        }
    }

    /// Flows held, not dead, that the current sweep has not seen: counted
    /// as they change, so that a sweep that saw them all needs no walk.
    pub fn unseen_flows(&self) -> usize {
        self.alive_flows.saturating_sub(self.seen_alive)
    }

    /// Their keys (a walk of everything held).
    pub fn unseen_flow_keys(&self) -> Vec<FlowKey> {
        self.objects
            .iter()
            .filter_map(|(k, e)| match k {
                Key::Flow(fk) if e.status != Status::Dead && e.seen != self.sweep => Some(*fk),
                _ => None,
            })
            .collect()
    }

    /// The expectation last sent for `key`, unless it is gone (dead).
    pub fn expectation(&self, key: &ExpectKey) -> Option<&Expectation> {
        match self.objects.get(&Key::Expect(*key)) {
            Some(Entry {
                object: Object::Expect(e),
                status,
                ..
            }) if *status != Status::Dead => Some(e),
            _ => None,
        }
    }

    /// The keys of the expectations held and not gone.
    pub fn expectation_keys(&self) -> Vec<ExpectKey> {
        self.objects
            .iter()
            .filter_map(|(k, e)| match k {
                Key::Expect(ek) if e.status != Status::Dead => Some(*ek),
                _ => None,
            })
            .collect()
    }

    /// Entries waiting in the resend queue (FTFW).
    pub fn resend_queue_len(&self) -> usize {
        self.rs_live
    }

    /// True once the peer answered our HELLO (FTFW).
    pub fn handshake_done(&self) -> bool {
        self.hello == Hello::Done
    }

    // ---- local side -------------------------------------------------------

    /// A local flow appeared or changed (a kernel NEW/UPDATE or a dump).
    pub fn local_flow(&mut self, flow: Flow, now_ms: u64) {
        self.upsert(Object::Flow(flow), now_ms);
    }

    /// A local flow is gone: its DEL goes out (unknown keys are ignored,
    /// as conntrackd ignores a destroy for an uncached flow).
    pub fn local_flow_gone(&mut self, key: &FlowKey, now_ms: u64) {
        self.kill(Key::Flow(*key), now_ms);
    }

    pub fn local_expect(&mut self, e: Expectation, now_ms: u64) {
        self.upsert(Object::Expect(e), now_ms);
    }

    pub fn local_expect_gone(&mut self, key: &ExpectKey, now_ms: u64) {
        self.kill(Key::Expect(*key), now_ms);
    }

    fn upsert(&mut self, object: Object, now_ms: u64) {
        let key = object.key();
        let (status, seen_before) = match self.objects.get(&key) {
            Some(e) if e.status != Status::Dead => (Status::Alive, e.seen == self.sweep),
            _ => (Status::New, false),
        };
        if matches!(key, Key::Flow(_)) {
            if status == Status::New {
                self.alive_flows += 1;
            }
            if !seen_before {
                self.seen_alive += 1;
            }
        }
        let seen = self.sweep;
        self.objects.insert(
            key,
            Entry {
                object,
                status,
                seen,
            },
        );
        self.arm_refresh(key, now_ms);
        self.enqueue(Item::Obj(key));
    }

    fn kill(&mut self, key: Key, _now_ms: u64) {
        let Some(e) = self.objects.get_mut(&key) else {
            return;
        };
        if e.status == Status::Dead {
            return;
        }
        e.status = Status::Dead;
        if matches!(key, Key::Flow(_)) {
            self.alive_flows -= 1;
            if e.seen == self.sweep {
                self.seen_alive -= 1;
            }
        }
        self.disarm_refresh(&key);
        self.enqueue(Item::Obj(key));
    }

    /// `-n`: ask the peer for everything (nothing in ALARM mode).
    pub fn request_resync(&mut self) {
        if self.cfg.mode != CdMode::Alarm {
            self.enqueue(Item::Ctl(Control::Resync));
        }
    }

    /// `-B`, and the answer to the peer's RESYNC: every object we hold goes
    /// out again (nothing in ALARM mode, whose refresh does it).
    pub fn send_bulk(&mut self) {
        if self.cfg.mode == CdMode::Alarm {
            return;
        }
        let mut keys: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, e)| e.status != Status::Dead)
            .map(|(k, _)| *k)
            .collect();
        keys.sort();
        for k in keys {
            self.enqueue(Item::Obj(k));
        }
    }

    /// Forget every object without sending anything (`-f internal`).
    pub fn flush_internal(&mut self) {
        self.objects.clear();
        self.alive_flows = 0;
        self.seen_alive = 0;
        self.txq.retain(|i| matches!(i, Item::Ctl(_)));
        self.queued.clear();
        self.rs_index.clear();
        self.rsq.retain(|(_, i)| matches!(i, Item::Ctl(_)));
        self.rs_live = self.rsq.len();
        self.timers.clear();
        self.timer_of.clear();
    }

    fn enqueue(&mut self, item: Item) {
        match item {
            Item::Obj(k) => {
                // Waiting in the resend queue: moved from there.
                if self.rs_index.remove(&k).is_some() {
                    self.rs_live -= 1;
                }
                if self.queued.insert(k) {
                    self.txq.push_back(item);
                }
            }
            Item::Ctl(_) => self.txq.push_back(item),
        }
    }

    // ---- ALARM timers -------------------------------------------------------

    fn rand(&mut self) -> u64 {
        // xorshift64: conntrackd's rand() only spreads the refreshes.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn arm_refresh(&mut self, key: Key, now_ms: u64) {
        if self.cfg.mode != CdMode::Alarm {
            return;
        }
        self.disarm_refresh(&key);
        let secs = self.rand() % u64::from(self.cfg.refresh_time_s.max(1)) + 1;
        let jitter = (self.rand() % 5 + 1) * 200;
        let at = now_ms + secs * 1000 + jitter;
        self.timers.insert((at, key));
        self.timer_of.insert(key, at);
    }

    fn disarm_refresh(&mut self, key: &Key) {
        if let Some(at) = self.timer_of.remove(key) {
            self.timers.remove(&(at, *key));
        }
    }

    // ---- send side ----------------------------------------------------------

    /// When `poll_transmit` must be called at the latest.
    pub fn next_deadline(&self) -> u64 {
        match self.cfg.mode {
            CdMode::Alarm => self.timers.first().map_or(u64::MAX, |(at, _)| *at),
            CdMode::Ftfw | CdMode::Notrack => self.alive_at,
        }
    }

    /// Fire due timers and send everything queued: the datagrams to send.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Vec<Vec<u8>> {
        match self.cfg.mode {
            CdMode::Alarm => {
                while let Some(&(at, key)) = self.timers.first() {
                    if at > now_ms {
                        break;
                    }
                    self.arm_refresh(key, now_ms);
                    self.enqueue(Item::Obj(key));
                }
            }
            CdMode::Ftfw | CdMode::Notrack => {
                if now_ms >= self.alive_at {
                    let ctl = match (self.cfg.mode, self.rx.last()) {
                        (CdMode::Ftfw, Some(last)) if self.ack_from_set => {
                            self.ack_from_set = false;
                            Control::Ack {
                                from: self.ack_from,
                                to: last,
                            }
                        }
                        _ => Control::Alive,
                    };
                    self.enqueue(Item::Ctl(ctl));
                    self.alive_at = now_ms + ALIVE_MS;
                }
            }
        }
        if self.txq.is_empty() {
            return Vec::new();
        }
        let mut packer = Packer::new(self.cfg.mtu.saturating_sub(UDP_OVERHEAD).max(64));
        while let Some(item) = self.txq.pop_front() {
            let seq = self.next_seq;
            let mut msg = match item {
                Item::Obj(k) => {
                    self.queued.remove(&k);
                    let Some(e) = self.objects.get(&k) else {
                        continue;
                    };
                    let op = match e.status {
                        Status::New => Op::New,
                        Status::Alive => Op::Update,
                        Status::Dead => Op::Delete,
                    };
                    let mut m = encode_object(&self.cfg.codec, op, &e.object);
                    tlv::set_seq(&mut m, seq);
                    m
                }
                Item::Ctl(c) => {
                    if self.cfg.mode == CdMode::Alarm {
                        continue;
                    }
                    c.encode(seq, 0)
                }
            };
            self.next_seq = seq.wrapping_add(1);
            if self.cfg.mode == CdMode::Ftfw {
                tlv::add_flags(&mut msg, self.hello_flags());
            }
            packer.push(&msg);
            self.stats.messages_sent += 1;
            self.after_send(item, seq);
        }
        let out = packer.finish();
        if !out.is_empty() && self.cfg.mode != CdMode::Alarm {
            self.alive_at = now_ms + ALIVE_MS;
        }
        self.stats.datagrams_sent += out.len() as u64;
        self.stats.bytes_sent += out.iter().map(|d| d.len() as u64).sum::<u64>();
        out
    }

    /// The hello bits of the next message (FTFW).
    fn hello_flags(&mut self) -> u8 {
        let mut f = 0;
        if self.hello == Hello::Init {
            self.hello = Hello::Say;
        }
        if self.hello == Hello::Say {
            f |= flags::HELLO;
        }
        if self.say_hello_back {
            f |= flags::HELLO_BACK;
            self.say_hello_back = false;
        }
        f
    }

    /// After `item` went out as `seq`: keep it for a resend (FTFW), or
    /// forget a dead object (NOTRACK, ALARM).
    fn after_send(&mut self, item: Item, seq: u32) {
        match (self.cfg.mode, item) {
            (CdMode::Ftfw, Item::Ctl(Control::Alive)) => {}
            (CdMode::Ftfw, Item::Ctl(_)) => {
                self.rsq.push_back((seq, item));
                self.rs_live += 1;
            }
            (CdMode::Ftfw, Item::Obj(k)) => {
                self.rsq.push_back((seq, item));
                self.rs_index.insert(k, seq);
                self.rs_live += 1;
            }
            (_, Item::Obj(k))
                if self
                    .objects
                    .get(&k)
                    .is_some_and(|e| e.status == Status::Dead) =>
            {
                self.objects.remove(&k);
            }
            _ => {}
        }
        while self.rs_live > self.cfg.resend_queue_size.max(1) {
            match self.rsq.pop_front() {
                Some((s, i)) => {
                    if self.release(s, i) {
                        self.stats.rs_overflow += 1;
                        self.owe_bulk = true;
                    }
                }
                None => break,
            }
        }
        if self.rsq.len() > 2 * self.rs_live + 64 {
            let index = &self.rs_index;
            self.rsq.retain(|(s, i)| match i {
                Item::Obj(k) => index.get(k) == Some(s),
                Item::Ctl(_) => true,
            });
        }
    }

    /// Take a resend-queue entry out (popped already); true if it was live.
    /// A dead object that waited only for this ack is forgotten.
    fn release(&mut self, seq: u32, item: Item) -> bool {
        match item {
            Item::Ctl(_) => {
                self.rs_live -= 1;
                true
            }
            Item::Obj(k) => {
                if self.rs_index.get(&k) != Some(&seq) {
                    return false;
                }
                self.rs_index.remove(&k);
                self.rs_live -= 1;
                if !self.queued.contains(&k)
                    && self
                        .objects
                        .get(&k)
                        .is_some_and(|e| e.status == Status::Dead)
                {
                    self.objects.remove(&k);
                }
                true
            }
        }
    }

    /// Walk the resend queue over [from, to]: ACK releases, NACK resends.
    fn rs_range(&mut self, from: u32, to: u32, resend: bool) {
        let mut keep = VecDeque::with_capacity(self.rsq.len());
        let mut picked = Vec::new();
        let mut done = false;
        while let Some((s, i)) = self.rsq.pop_front() {
            if done || before(s, from) {
                keep.push_back((s, i));
                continue;
            }
            if header::after(s, to) {
                done = true;
                keep.push_back((s, i));
                continue;
            }
            picked.push((s, i));
        }
        self.rsq = keep;
        for (s, i) in picked {
            if resend {
                let live = match i {
                    Item::Obj(k) => self.rs_index.get(&k) == Some(&s),
                    Item::Ctl(_) => true,
                };
                if live {
                    if let Item::Obj(k) = i {
                        self.rs_index.remove(&k);
                    }
                    self.rs_live -= 1;
                    self.stats.nacked += 1;
                    self.enqueue(i);
                }
            } else {
                self.release(s, i);
            }
        }
    }

    /// The peer restarted: everything it had not acked is forgotten.
    fn rs_clear(&mut self) {
        while let Some((s, i)) = self.rsq.pop_front() {
            self.release(s, i);
        }
    }

    // ---- receive side -------------------------------------------------------

    /// One datagram from the peer: the changes it carries, in order.
    /// Refused messages are counted by reason; nothing here fails.
    pub fn on_datagram(&mut self, bytes: &[u8], now_ms: u64) -> Vec<Change> {
        let _ = now_ms;
        self.stats.datagrams_received += 1;
        let mut out = Vec::new();
        for piece in split(bytes) {
            match piece {
                Piece::Rejected(r) => self.reject(r),
                Piece::Message(h, msg) => {
                    self.stats.messages_received += 1;
                    self.on_message(&h, msg, &mut out);
                }
            }
        }
        out
    }

    fn reject(&mut self, r: Reject) {
        *self.stats.rejected.entry(r).or_insert(0) += 1;
    }

    fn on_message(&mut self, h: &Header, msg: &[u8], out: &mut Vec<Change>) {
        let verdict = match self.cfg.mode {
            CdMode::Ftfw => self.ftfw_recv(h, msg),
            CdMode::Notrack => self.notrack_recv(h, msg),
            CdMode::Alarm => {
                self.rx.classify(h.seq);
                if h.flags != 0 {
                    Verdict::Ctl
                } else {
                    Verdict::Data
                }
            }
        };
        if matches!(verdict, Verdict::Data | Verdict::Ctl) {
            self.rx.accept(h.seq);
        }
        match verdict {
            Verdict::Data => match decode_data(&self.cfg.codec, h, msg) {
                Ok(c) => out.push(c),
                Err(r) => self.reject(r),
            },
            Verdict::Bad => self.reject(Reject::MalformedHeader),
            Verdict::Ctl | Verdict::Drop => {}
        }
    }

    fn notrack_recv(&mut self, h: &Header, msg: &[u8]) -> Verdict {
        self.rx.classify(h.seq);
        if h.is_data() {
            return Verdict::Data;
        }
        match Control::decode(h, msg) {
            Some(Control::Resync) => {
                self.stats.resync_requests += 1;
                self.send_bulk();
                Verdict::Ctl
            }
            Some(Control::Alive) => Verdict::Ctl,
            _ => Verdict::Bad,
        }
    }

    fn ftfw_recv(&mut self, h: &Header, msg: &[u8]) -> Verdict {
        if h.hello() {
            self.say_hello_back = true;
        }
        if h.hello_back() && self.hello == Hello::Say {
            self.hello = Hello::Done;
        }
        let class = if h.hello() {
            self.stats.hellos += 1;
            if self.ack_from_set && before(h.seq, self.ack_from) {
                self.window = self.cfg.ack_window.saturating_sub(1);
                self.ack_from = h.seq;
            }
            self.rs_clear();
            self.peer_saying_hello = true;
            SeqClass::InSync
        } else {
            if self.peer_saying_hello {
                // The peer (re)started, its external cache empty, and has
                // our HELLO_BACK: send it everything, as a resync request
                // would. Not before: each of its HELLO messages empties
                // our resend queue, and what it lost of the bulk then
                // could not be sent again.
                self.peer_saying_hello = false;
                self.stats.peer_restarts += 1;
                self.send_bulk();
            }
            self.rx.classify(h.seq)
        };
        match class {
            SeqClass::Before => Verdict::Drop,
            SeqClass::After { expected } => {
                let v = self.digest(h, msg);
                if v == Verdict::Bad {
                    return v;
                }
                if self.ack_from_set {
                    self.enqueue(Item::Ctl(Control::Ack {
                        from: self.ack_from,
                        to: expected.wrapping_sub(1),
                    }));
                    self.ack_from_set = false;
                }
                self.enqueue(Item::Ctl(Control::Nack {
                    from: expected,
                    to: h.seq.wrapping_sub(1),
                }));
                self.window = self.cfg.ack_window.saturating_sub(1);
                self.ack_from = h.seq;
                self.ack_from_set = true;
                v
            }
            SeqClass::Unset | SeqClass::InSync => {
                let v = self.digest(h, msg);
                if v == Verdict::Bad {
                    return v;
                }
                if !self.ack_from_set {
                    self.ack_from_set = true;
                    self.ack_from = h.seq;
                }
                self.window = self.window.saturating_sub(1);
                if self.window == 0 {
                    self.enqueue(Item::Ctl(Control::Ack {
                        from: self.ack_from,
                        to: h.seq,
                    }));
                    self.window = self.cfg.ack_window;
                    self.ack_from_set = false;
                }
                v
            }
        }
    }

    /// FTFW's `digest_msg`: data, or a control message acted on.
    fn digest(&mut self, h: &Header, msg: &[u8]) -> Verdict {
        if h.is_data() {
            return Verdict::Data;
        }
        match Control::decode(h, msg) {
            Some(Control::Ack { from, to }) => {
                if before(to, from) {
                    return Verdict::Bad;
                }
                self.rs_range(from, to, false);
                Verdict::Ctl
            }
            Some(Control::Nack { from, to }) => {
                if before(to, from) {
                    return Verdict::Bad;
                }
                self.rs_range(from, to, true);
                if std::mem::take(&mut self.owe_bulk) {
                    // What it lost may have left the resend queue: send
                    // everything held (deletes evicted stay lost, as in
                    // conntrackd).
                    self.stats.overflow_bulks += 1;
                    self.send_bulk();
                }
                Verdict::Ctl
            }
            Some(Control::Resync) => {
                self.stats.resync_requests += 1;
                // A request made while the peer still says HELLO (its
                // StartupResync) is answered as the run ends, with it.
                if !self.peer_saying_hello {
                    self.send_bulk();
                }
                Verdict::Ctl
            }
            Some(Control::Alive) => Verdict::Ctl,
            None => Verdict::Bad,
        }
    }
}
