//! The simulation's event loop: nodes, their kernels, the network, the
//! workload and the fault schedule on one virtual clock.
//!
//! Owns: `Sim`, which always advances to the earliest of (next delivery, any
//! node's deadline, next workload change, next fault, next periodic check,
//! the adversary's next move), restarts nodes as the daemon would (a new
//! Node with a new epoch, primed from its kernel, keyed if the run is),
//! heals the network, checks the invariant, and with keys or an adversary
//! watches that nothing forged gets in (`breach`). Must not: read the
//! clock, touch a socket, or let anything but the seed decide (no HashMap
//! order: every collection it walks is ordered).

use super::adversary::{Adversary, AdversaryStats, Injection, Origin};
use super::breach::{scan_for_forged, Breach, Fingerprint, HostView, Watch};
use super::check::{check_cluster, views_agree_quickly, Difference};
use super::net::{Faults, Network};
use super::params::SimParams;
use super::report::{FailureKind, SimFailure, SimReport};
use super::rng::Rng;
use super::workload::{next_change, Kernel};
use crate::auth::{AuthDrop, AuthStats, KeyRing};
use crate::flow::Flow;
use crate::sync::{Node, Replicate, SyncConfig, SyncStats};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// How often the invariant is checked after the heal (the resolution of the
/// reported convergence time).
pub const CHECK_EVERY_MS: u64 = 100;
/// Longest a crashed node stays down.
const MAX_DOWN_MS: u64 = 3_000;
/// Partition lengths: some shorter, some longer than the peer timeout.
const MIN_CUT_MS: u64 = 200;
const MAX_CUT_MS: u64 = 8_000;

// Purpose tags of the Rng streams (see `Rng::stream`).
const NET_STREAM: u64 = 2;
const WORK_STREAM: u64 = 3;
const FAULT_STREAM: u64 = 4;
const EPOCH_STREAM: u64 = 5;
const KEY_STREAM: u64 = 6;
const ADVERSARY_STREAM: u64 = 7;

/// The cluster name keyed runs bind their datagrams to.
pub const CLUSTER: &str = "sim";
/// How often the breach watch looks at every node while the adversary is
/// at work (and after every datagram of its, at the node it reached), and
/// how often once it is done.
const WATCH_EVERY_MS: u64 = 250;
const WATCH_IDLE_MS: u64 = 2_000;
/// Breaches a keyless run keeps (the count goes on).
const BREACHES_KEPT: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// The node's kernel changes (and, if it is up, its Node is told).
    Change(usize),
    CutOff(usize),
    Rejoin(usize),
    /// The daemon dies; `u64` names this crash for its restart.
    Crash(usize, u64),
    Restart(usize, u64),
    /// Link 0 is cut for everyone, then restored.
    CutLink(usize),
    RestoreLink(usize),
    Heal,
}

/// One simulated firewall: its daemon (if running) and its kernel table.
#[derive(Debug)]
struct Host {
    id: u32,
    node: Option<Node>,
    kernel: Kernel,
    /// Epochs this host has used: a restart never reuses one or a neighbour.
    epochs: Vec<u64>,
    /// The crash it is down for, if down.
    down: Option<u64>,
    /// Nested partitions in force.
    cuts: u32,
    /// Counters of the Nodes that crashed.
    dead_stats: Vec<SyncStats>,
    dead_auth: Vec<AuthStats>,
}

/// A whole simulated cluster. `run` drives one from seed to verdict; the
/// pieces are public so tests can step, inspect and tamper.
#[derive(Debug)]
pub struct Sim {
    seed: u64,
    params: SimParams,
    now: u64,
    /// The last instant every node was polled at.
    polled_at: Option<u64>,
    hosts: Vec<Host>,
    net: Network,
    net_rng: Rng,
    work_rng: Rng,
    epoch_rng: Rng,
    events: BTreeMap<(u64, u64), Event>,
    event_order: u64,
    heal_at: u64,
    end_at: u64,
    next_check: u64,
    /// The last periodic check after the heal that found differences.
    last_bad_check: Option<u64>,
    changes: u64,
    restarts: u64,
    partitions: u64,
    /// Keyed runs: the cluster's key ring (every node holds it).
    ring: Option<KeyRing>,
    adversary: Option<Adversary>,
    /// Keyed or attacked runs: the breach watch and its next look.
    watch: Option<Watch>,
    next_watch: u64,
    /// What got in (keyless runs: the negative control; a keyed run fails
    /// at the first).
    breaches: Vec<Breach>,
    breach_count: u64,
}

impl Sim {
    /// Build the cluster and schedule its workload and faults.
    pub fn new(seed: u64, params: &SimParams) -> Result<Sim, SimFailure> {
        let n = params.nodes.max(1);
        let heal_at = params.workload_ms;
        let mut sim = Sim {
            seed,
            params: params.clone(),
            now: 0,
            polled_at: None,
            hosts: Vec::with_capacity(n),
            net: Network::new(
                n,
                Faults {
                    loss: params.loss,
                    dup: params.dup,
                    reorder: params.reorder,
                },
            ),
            net_rng: Rng::stream(seed, NET_STREAM),
            work_rng: Rng::stream(seed, WORK_STREAM),
            epoch_rng: Rng::stream(seed, EPOCH_STREAM),
            events: BTreeMap::new(),
            event_order: 0,
            heal_at,
            end_at: heal_at + params.quiet_ms,
            next_check: heal_at,
            last_bad_check: None,
            changes: 0,
            restarts: 0,
            partitions: 0,
            ring: params.auth.then(|| {
                let mut r = Rng::stream(seed, KEY_STREAM);
                let mut key = [0u8; 32];
                for b in &mut key {
                    *b = r.byte();
                }
                KeyRing::single(1, &key)
            }),
            adversary: params.adversary.as_ref().map(|a| {
                Adversary::new(
                    a,
                    Rng::stream(seed, ADVERSARY_STREAM),
                    n,
                    params.links,
                    params.auth,
                    CLUSTER,
                    heal_at,
                )
            }),
            watch: (params.auth || params.adversary.is_some()).then(Watch::default),
            next_watch: 0,
            breaches: Vec::new(),
            breach_count: 0,
        };
        for i in 0..n {
            let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            sim.hosts.push(Host {
                id,
                node: None,
                kernel: Kernel::default(),
                epochs: Vec::new(),
                down: None,
                cuts: 0,
                dead_stats: Vec::new(),
                dead_auth: Vec::new(),
            });
            sim.start_node(i)?;
        }
        if params.link_faults && params.links > 1 {
            sim.net.set_link_loss(0, params.loss.max(10));
        }
        sim.schedule(seed);
        Ok(sim)
    }

    fn schedule(&mut self, seed: u64) {
        let n = self.hosts.len() as u64;
        let span = self.params.workload_ms.max(1);
        let mut r = Rng::stream(seed, FAULT_STREAM);
        let writers = match self.params.writers {
            0 => self.hosts.len(),
            w => w.min(self.hosts.len()),
        };
        for i in 0..writers {
            for _ in 0..self.params.ops_per_node {
                let at = r.below(span);
                self.push_event(at, Event::Change(i));
            }
        }
        if self.params.partitions {
            for _ in 0..r.range(1, 3) {
                let node = r.below(n) as usize;
                let from = r.below(span);
                let to = (from + r.range(MIN_CUT_MS, MAX_CUT_MS)).min(self.heal_at);
                self.push_event(from, Event::CutOff(node));
                self.push_event(to, Event::Rejoin(node));
            }
        }
        if self.params.restarts {
            for crash in 0..r.range(1, 2) {
                let node = r.below(n) as usize;
                let at = r.below(span);
                let back = (at + r.range(0, MAX_DOWN_MS)).min(self.heal_at);
                self.push_event(at, Event::Crash(node, crash));
                self.push_event(back, Event::Restart(node, crash));
            }
        }
        if self.params.link_faults && self.params.links > 1 {
            // Link 0 fails a few times, once for longer than the peer
            // timeout: data must move to link 1 and back.
            let mut at = r.below(span / 4 + 1);
            for k in 0..3u64 {
                let len = if k == 0 {
                    r.range(6_000, MAX_CUT_MS)
                } else {
                    r.range(MIN_CUT_MS, MAX_CUT_MS)
                };
                let end = (at + len).min(self.heal_at);
                self.push_event(at, Event::CutLink(0));
                self.push_event(end, Event::RestoreLink(0));
                at = end + r.range(MIN_CUT_MS, MAX_CUT_MS);
                if at >= self.heal_at {
                    break;
                }
            }
        }
        self.push_event(self.heal_at, Event::Heal);
    }

    fn push_event(&mut self, at: u64, e: Event) {
        self.event_order += 1;
        self.events.insert((at, self.event_order), e);
    }

    fn config(&self, id: u32) -> SyncConfig {
        SyncConfig {
            mode: self.params.mode,
            node_id: id,
            window: self.params.window.max(1),
            cache_seed: Some(u64::from(id)),
            links: self.params.links.max(1),
            digest_interval_ms: self
                .params
                .digest_interval_ms
                .unwrap_or(SyncConfig::default().digest_interval_ms),
            ..SyncConfig::default()
        }
    }

    /// An epoch far from every one this host used (a neighbour would read as
    /// a stale datagram of the same run, which no real restart produces).
    fn fresh_epoch(&mut self, i: usize) -> u64 {
        loop {
            let e = self.epoch_rng.next_u64();
            let used = self.hosts.get(i).map_or(&[][..], |h| &h.epochs[..]);
            if !used.iter().any(|&u| e.abs_diff(u) <= 1) {
                return e;
            }
        }
    }

    /// Start host `i`'s daemon as `ctsyncd` does: a new Node with a new
    /// epoch, its internal cache primed from the kernel without replicating.
    fn start_node(&mut self, i: usize) -> Result<(), SimFailure> {
        let epoch = self.fresh_epoch(i);
        let now = self.now;
        let Some(host) = self.hosts.get(i) else {
            return Ok(());
        };
        let cfg = self.config(host.id);
        let mut node = Node::new(cfg, epoch, now).map_err(|e| {
            SimFailure::new(
                self.seed,
                &self.params,
                FailureKind::Setup(e.to_string()),
                Vec::new(),
                now,
            )
        })?;
        if let Some(ring) = &self.ring {
            node.enable_auth(ring.clone(), CLUSTER);
        }
        if let Some(host) = self.hosts.get_mut(i) {
            node.reconcile_internal(host.kernel.dump(), now, Replicate::Nothing);
            host.epochs.push(epoch);
            host.node = Some(node);
            host.down = None;
        }
        Ok(())
    }

    fn apply(&mut self, e: Event) -> Result<(), SimFailure> {
        let now = self.now;
        match e {
            Event::Change(i) => {
                let slots = self.params.flows_per_node;
                let Some(host) = self.hosts.get_mut(i) else {
                    return Ok(());
                };
                let change = next_change(&mut self.work_rng, &host.kernel, i, slots);
                host.kernel.apply(&change);
                if let (Some(adv), super::workload::Change::Upsert(f)) =
                    (self.adversary.as_mut(), &change)
                {
                    // The connection's packets show its key on the data
                    // plane.
                    adv.observe_flow(i, f.key());
                }
                self.changes += 1;
                if let Some(node) = host.node.as_mut() {
                    match change {
                        super::workload::Change::Upsert(f) => {
                            node.local_upsert(&f, now, true);
                        }
                        super::workload::Change::Delete(k) => node.local_delete(&k, now, true),
                    }
                }
            }
            Event::CutOff(i) => {
                if let Some(h) = self.hosts.get_mut(i) {
                    h.cuts += 1;
                    self.partitions += 1;
                    self.net.cut_off(i);
                }
            }
            Event::Rejoin(i) => {
                if let Some(h) = self.hosts.get_mut(i) {
                    h.cuts = h.cuts.saturating_sub(1);
                    if h.cuts == 0 {
                        self.net.rejoin(i);
                    }
                }
            }
            Event::Crash(i, crash) => {
                if let Some(h) = self.hosts.get_mut(i) {
                    if let Some(node) = h.node.take() {
                        h.dead_stats.push(node.stats().clone());
                        h.dead_auth.push(node.auth_stats().clone());
                        h.down = Some(crash);
                        self.net.drop_to(i);
                    }
                }
            }
            Event::Restart(i, crash) => {
                if self.hosts.get(i).is_some_and(|h| h.down == Some(crash)) {
                    self.restarts += 1;
                    self.start_node(i)?;
                }
            }
            Event::CutLink(l) => self.net.cut_link(l),
            Event::RestoreLink(l) => self.net.restore_link(l),
            Event::Heal => {
                if !self.params.steady_loss {
                    self.net.set_faults(Faults::default());
                    self.net.set_link_loss(0, 0);
                }
                self.net.restore_link(0);
                for i in 0..self.hosts.len() {
                    if let Some(h) = self.hosts.get_mut(i) {
                        h.cuts = 0;
                    }
                    self.net.rejoin(i);
                    if self.hosts.get(i).is_some_and(|h| h.node.is_none()) {
                        self.restarts += 1;
                        self.start_node(i)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The earliest thing that happens next, if before the end.
    fn next_time(&self) -> u64 {
        let mut t = self.end_at.saturating_add(1);
        let mut at = |x: u64| t = t.min(x);
        if let Some(x) = self.net.next_at() {
            at(x);
        }
        if let Some(&(x, _)) = self.events.keys().next() {
            at(x);
        }
        at(self.next_check);
        if let Some(x) = self.adversary.as_ref().and_then(Adversary::next_at) {
            at(x);
        }
        if self.watch.is_some() {
            at(self.next_watch);
        }
        for h in &self.hosts {
            if let Some(d) = h.node.as_ref().and_then(Node::next_deadline) {
                at(d);
            }
        }
        // Everything due at the last instant was done then: move on.
        match self.polled_at {
            Some(p) if t <= p => p + 1,
            _ => t,
        }
    }

    /// Process one instant. False once past the end.
    pub fn step(&mut self) -> Result<bool, SimFailure> {
        let t = self.next_time();
        if t > self.end_at {
            self.now = self.now.max(self.end_at);
            return Ok(false);
        }
        self.now = t;
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > t {
                break;
            }
            let e = entry.remove();
            self.apply(e)?;
        }
        while let Some(d) = self.net.pop_due(t) {
            if let Some(node) = self.hosts.get_mut(d.to).and_then(|h| h.node.as_mut()) {
                node.on_datagram(&d.bytes, d.link, t);
            }
        }
        while let Some(inj) = self.adversary.as_mut().and_then(|a| a.pop_due(t)) {
            self.deliver_attack(inj, t)?;
        }
        for i in 0..self.hosts.len() {
            let out = match self.hosts.get_mut(i).and_then(|h| h.node.as_mut()) {
                Some(node) => node.poll_transmit(t),
                None => continue,
            };
            for tx in out {
                if let Some(adv) = self.adversary.as_mut() {
                    adv.record(i, &tx.bytes);
                }
                self.net.send(&mut self.net_rng, t, i, tx.link, &tx.bytes);
            }
        }
        if let Some(adv) = self.adversary.as_mut() {
            adv.act(t);
        }
        if self.watch.is_some() && t >= self.next_watch {
            self.watch_all(t)?;
            let busy = self.adversary.as_ref().is_some_and(Adversary::active);
            self.next_watch = t + if busy { WATCH_EVERY_MS } else { WATCH_IDLE_MS };
        }
        self.polled_at = Some(t);
        if t >= self.next_check {
            if !self.views_agree_quickly() {
                self.last_bad_check = Some(t);
            }
            self.next_check = t + CHECK_EVERY_MS;
        }
        Ok(true)
    }

    /// Run every instant up to and including `t` (at most the end).
    pub fn run_until(&mut self, t: u64) -> Result<(), SimFailure> {
        while self.next_time() <= t.min(self.end_at) {
            self.step()?;
        }
        self.now = self.now.max(t.min(self.end_at));
        Ok(())
    }

    /// Run the workload, the faults, the heal and the quiet phase.
    pub fn run_to_end(&mut self) -> Result<(), SimFailure> {
        while self.step()? {}
        Ok(())
    }

    // ---- the adversary and the breach watch ----------------------------------

    /// Hand one of the adversary's datagrams to its node. A forged or
    /// altered one must be refused (by the gate, or as malformed or stale)
    /// and leave the node's peers, views, table and backlog as they were;
    /// a replay may be taken (as a late duplicate of the original would
    /// be). Then the node's peer table and views are checked.
    fn deliver_attack(&mut self, inj: Injection, t: u64) -> Result<(), SimFailure> {
        let Some(node) = self.hosts.get_mut(inj.to).and_then(|h| h.node.as_mut()) else {
            return Ok(());
        };
        let viewer = node.config().node_id;
        let forged = inj.origin != Origin::Replay;
        let before = Fingerprint::of(node);
        let malformed = node.stats().malformed.total();
        let verdict = node.on_datagram(&inj.bytes, inj.link, t);
        let refused = match verdict {
            Some(AuthDrop::EpochUnadmitted | AuthDrop::TooManySenders) => !forged,
            Some(_) => true,
            None => node.stats().malformed.total() > malformed,
        };
        let after = Fingerprint::of(node);
        let changed = before != after;
        let views_changed = before.views_differ(&after);
        if let Some(adv) = self.adversary.as_mut() {
            adv.note(inj.origin, refused, views_changed);
        }
        let mut found = Vec::new();
        if forged && (!refused || changed) {
            found.push(Breach::Taken {
                viewer,
                attack: inj.attack,
                verdict,
                changed,
            });
        }
        if let Some(mut watch) = self.watch.take() {
            // A view the datagram left as it was took no flow from it.
            watch.check_node(&self.host_views(), inj.to, views_changed, &mut found);
            self.watch = Some(watch);
        }
        self.breached(found, t)
    }

    fn host_views(&self) -> Vec<HostView<'_>> {
        self.hosts
            .iter()
            .map(|h| (h.id, &h.epochs[..], h.node.as_ref()))
            .collect()
    }

    /// The periodic look at every node.
    fn watch_all(&mut self, t: u64) -> Result<(), SimFailure> {
        let mut found = Vec::new();
        if let Some(mut watch) = self.watch.take() {
            let forged = self.adversary.is_some();
            watch.check_all(&self.host_views(), forged, &mut found);
            self.watch = Some(watch);
        }
        self.breached(found, t)
    }

    /// A keyed run fails at the first breach; a keyless one keeps them
    /// (the negative control reads them).
    fn breached(&mut self, found: Vec<Breach>, t: u64) -> Result<(), SimFailure> {
        if found.is_empty() {
            return Ok(());
        }
        if self.params.auth {
            let what = found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(SimFailure::new(
                self.seed,
                &self.params,
                FailureKind::Breached(what),
                Vec::new(),
                t,
            )
            .with_adversary(self.adversary_stats()));
        }
        self.breach_count += found.len() as u64;
        let room = BREACHES_KEPT.saturating_sub(self.breaches.len());
        self.breaches.extend(found.into_iter().take(room));
        Ok(())
    }

    /// What the adversary got in so far (keyless runs; a keyed run fails
    /// instead), the first `BREACHES_KEPT` of them, and how many in all.
    pub fn breaches(&self) -> (&[Breach], u64) {
        (&self.breaches, self.breach_count)
    }

    pub fn adversary_stats(&self) -> Option<&AdversaryStats> {
        self.adversary.as_ref().map(Adversary::stats)
    }

    /// Authentication counters summed over every node (crashed ones too).
    pub fn auth_stats(&self) -> Vec<AuthStats> {
        self.hosts
            .iter()
            .flat_map(|h| {
                h.dead_auth
                    .iter()
                    .cloned()
                    .chain(h.node.as_ref().map(|n| n.auth_stats().clone()))
            })
            .collect()
    }

    /// The end of a watched run: the last look, and a walk over every cache
    /// for the adversary's addresses.
    fn final_watch(&mut self) -> Result<(), SimFailure> {
        if self.watch.is_none() {
            return Ok(());
        }
        let t = self.now;
        self.watch_all(t)?;
        let mut found = Vec::new();
        if self.adversary.is_some() {
            scan_for_forged(&self.host_views(), &mut found);
        }
        self.breached(found, t)
    }

    /// The invariant's differences right now.
    /// Every host as the checks see it: id, daemon (if up), kernel table.
    fn cluster_view(&self) -> Vec<(u32, Option<&Node>, &Kernel)> {
        self.hosts
            .iter()
            .map(|h| (h.id, h.node.as_ref(), &h.kernel))
            .collect()
    }

    /// The periodic check (see `check::views_agree_quickly`).
    fn views_agree_quickly(&self) -> bool {
        views_agree_quickly(&self.cluster_view())
    }

    pub fn differences(&self) -> Vec<Difference> {
        check_cluster(&self.cluster_view())
    }

    /// The verdict: the report if every view holds now and held soon enough
    /// after the heal.
    pub fn finish(mut self) -> Result<SimReport, SimFailure> {
        self.final_watch()?;
        let diffs = self.differences();
        if !diffs.is_empty() {
            return Err(SimFailure::new(
                self.seed,
                &self.params,
                FailureKind::Diverged,
                diffs,
                self.now,
            )
            .with_adversary(self.adversary_stats()));
        }
        let converged_after_ms = self
            .last_bad_check
            .map_or(0, |t| (t + CHECK_EVERY_MS).saturating_sub(self.heal_at));
        if converged_after_ms > self.params.converge_within_ms {
            return Err(SimFailure::new(
                self.seed,
                &self.params,
                FailureKind::Slow { converged_after_ms },
                Vec::new(),
                self.now,
            )
            .with_adversary(self.adversary_stats()));
        }
        Ok(self.report(converged_after_ms))
    }

    fn report(&self, converged_after_ms: u64) -> SimReport {
        let all_stats: Vec<&SyncStats> = self
            .hosts
            .iter()
            .flat_map(|h| h.dead_stats.iter().chain(h.node.as_ref().map(Node::stats)))
            .collect();
        let sum = |f: fn(&SyncStats) -> u64| all_stats.iter().map(|s| f(s)).sum();
        SimReport {
            seed: self.seed,
            params: self.params.clone(),
            heal_ms: self.heal_at,
            end_ms: self.now,
            converged_after_ms,
            changes: self.changes,
            restarts: self.restarts,
            partitions: self.partitions,
            flows: self
                .hosts
                .iter()
                .map(|h| h.node.as_ref().map_or(0, |n| n.internal().len()))
                .collect(),
            net: self.net.stats(),
            retransmits: sum(|s| s.retransmits),
            nacks_sent: sum(|s| s.nacks_sent),
            bulks_sent: sum(|s| s.bulks_sent),
            resumes_sent: sum(|s| s.resumes_sent),
            auth_refused: self.auth_stats().iter().map(AuthStats::refused).sum(),
            adversary: self.adversary_stats().cloned(),
            breaches: self.breach_count,
            digest: self.digest(&all_stats),
        }
    }

    /// A fingerprint of every cache (in key order) and every counter.
    fn digest(&self, stats: &[&SyncStats]) -> u64 {
        let mut h = DefaultHasher::new();
        let sorted = |c: &crate::cache::FlowCache| {
            let mut v: Vec<Flow> = c.flows().collect();
            v.sort_by_key(|f| f.key());
            v
        };
        for host in &self.hosts {
            host.id.hash(&mut h);
            host.epochs.hash(&mut h);
            if let Some(node) = &host.node {
                sorted(node.internal()).hash(&mut h);
                for (peer, cache) in node.external() {
                    peer.hash(&mut h);
                    sorted(cache).hash(&mut h);
                }
            }
        }
        for s in stats {
            format!("{s:?}").hash(&mut h);
        }
        format!("{:?}", self.net.stats()).hash(&mut h);
        format!("{:?}", self.auth_stats()).hash(&mut h);
        format!("{:?}", self.adversary_stats()).hash(&mut h);
        h.finish()
    }

    // ---- inspection, for tests and the CLI ---------------------------------

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn heal_at(&self) -> u64 {
        self.heal_at
    }

    pub fn end_at(&self) -> u64 {
        self.end_at
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Node id of host `i` (ids are `i + 1`).
    pub fn node_id(&self, i: usize) -> Option<u32> {
        self.hosts.get(i).map(|h| h.id)
    }

    /// Host `i`'s daemon, if it is up.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.hosts.get(i).and_then(|h| h.node.as_ref())
    }

    /// Host `i`'s daemon, to tamper with (tests of the checker).
    pub fn node_mut(&mut self, i: usize) -> Option<&mut Node> {
        self.hosts.get_mut(i).and_then(|h| h.node.as_mut())
    }

    pub fn kernel(&self, i: usize) -> Option<&Kernel> {
        self.hosts.get(i).map(|h| &h.kernel)
    }
}
