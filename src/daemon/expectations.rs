//! Expectations in the daemon: the thread that reads the kernel's
//! expectation events, which of them are ours to replicate, re-reads of
//! the kernel's expectations, what a commit writes of the peers', warm
//! standby's mirror of them, and `-i expect` / `-e expect`.
//!
//! An expectation is replicated when `[sync] expectations` takes its helper
//! and its master flow is in the internal cache (ours and replicated), as
//! conntrackd does; the kernel reports an expectation without its zone,
//! so it is placed in the zone its master is ours in (the kernel is asked
//! which, when the master's tuple is ours in several). Our writer's
//! creations (a commit's) and warm standby's injector's are a peer's, not
//! ours: neither cached nor sent, and a re-read leaves out what a peer's
//! view holds (after `-f`, `-R` makes them ours, as for flows).
//!
//! Owns: `ExpectState` (the mirror's retries) and the expectation paths of
//! `Daemon`. Must not: write to the kernel on the owner (the kernel worker
//! does; the owner only reads one master or one expectation at a time),
//! or hold expectations itself (the sync core's caches do).

use super::kernel_worker::Job;
use super::{failure, success, Daemon};
use crate::cache::Upsert;
use crate::control::{self, Reply};
use crate::expect::{ExpectKey, Expectation};
use crate::expect_cache::ExpectEntry;
use crate::flow::{Flow, FlowKey};
use crate::kernel::{EventKind, ExpectEvent, ExpectEventSocket, ExpectOp, ExpectWriteReport};
use crate::sync::AppliedExpect;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The timeout an expectation sent without one is written with.
const UNKNOWN_TIMEOUT_S: u32 = 60;
/// How long the reader waits after a failed read before reading again.
const FAILURE_PAUSE: Duration = Duration::from_secs(1);
/// How long the reader waits for events before looking whether the
/// daemon still listens.
const READ_TIMEOUT: Duration = Duration::from_millis(500);
/// Most times warm standby retries writing one expectation whose master is
/// not in the table yet (it arrives in a later batch).
const MIRROR_RETRIES: u8 = 20;
/// How long an expectation made by its connection's first packet waits
/// for that connection's event before it is dropped (the master is not
/// ours: filtered out, or another helper's).
const MASTER_WAIT_MS: u64 = 2_000;
/// Most expectations waiting for their master at once.
const MAX_WAITING: usize = 4096;
/// How long failed creates wait before they are tried again.
const MIRROR_RETRY_DELAY: Duration = Duration::from_millis(250);

/// What the expectation reader hands the owner.
pub(super) enum ExpectFeed {
    Events(Vec<ExpectEvent>),
    /// Events were lost: re-read the kernel's expectations.
    Overrun,
    Failed(String),
}

/// Warm standby's expectation writes: what waits for the worker, and the
/// creates that failed because their master was not in the table yet.
#[derive(Default)]
pub(super) struct ExpectState {
    /// Changes not yet handed to the worker (one per key, the latest).
    pending: Vec<ExpectOp>,
    /// Creates to try again, with the retries left.
    retry: Vec<(ExpectKey, u8)>,
    /// When the retries go next (with the next batch at the latest).
    retry_at: Option<Instant>,
    /// A batch is on the worker, with the retry budgets of its retries.
    in_flight: Option<Vec<(ExpectKey, u8)>>,
    /// Expectations whose master is not ours yet, and until when they wait.
    waiting: Vec<(Expectation, u64)>,
}

/// Subscribe to expectation events and read them on a thread of their own.
pub(super) fn spawn_reader(
    rcvbuf: usize,
    feed: mpsc::Sender<ExpectFeed>,
) -> Result<(), crate::kernel::KernelError> {
    let mut sock = ExpectEventSocket::open(rcvbuf)?;
    sock.set_read_timeout(Some(READ_TIMEOUT))?;
    let spawned = std::thread::Builder::new()
        .name("ct-expect".into())
        .spawn(move || {
            super::priority::ordinary_thread();
            loop {
                let mut events = Vec::new();
                let item = match sock.recv(&mut events) {
                    Ok(()) if events.is_empty() => continue,
                    Ok(()) => ExpectFeed::Events(events),
                    Err(crate::kernel::KernelError::Overrun) => ExpectFeed::Overrun,
                    Err(e) if is_timeout(&e) => {
                        if feed.is_closed() {
                            return;
                        }
                        continue;
                    }
                    Err(e) => ExpectFeed::Failed(e.to_string()),
                };
                let failed = matches!(item, ExpectFeed::Failed(_));
                if feed.blocking_send(item).is_err() {
                    return;
                }
                if failed {
                    // Whatever failed may fail again at once: not a busy loop.
                    std::thread::sleep(FAILURE_PAUSE);
                }
            }
        });
    spawned
        .map(|_| ())
        .map_err(|e| crate::kernel::KernelError::io("spawn", e))
}

fn is_timeout(e: &crate::kernel::KernelError) -> bool {
    e.errno()
        .is_some_and(|n| n == libc::EAGAIN || n == libc::EWOULDBLOCK || n == libc::EINTR)
}

impl Daemon {
    fn expectations_on(&self) -> bool {
        !self.config.sync.expectations.is_off()
    }

    /// The zone `e`'s master is ours in, if it is. The kernel reports an
    /// expectation without its zone (it decodes as 0), so it is placed in
    /// the zone its master tuple is cached in; when several zones cache
    /// that tuple, the kernel is asked which of them holds the
    /// expectation (one read per zone, only then). Should it be gone by
    /// then, or the kernel not answer, zone 0 is taken if it is among
    /// them, else none (not replicated).
    fn master_zone(&self, e: &Expectation) -> Option<u16> {
        let internal = self.node.internal();
        if e.zone != 0 {
            let key = FlowKey {
                zone: e.zone,
                orig: e.master,
            };
            return internal.contains(&key).then_some(e.zone);
        }
        let zones = internal.zones_of(&e.master);
        if zones.len() < 2 {
            return zones.first().copied();
        }
        let held_in = |zone: u16| {
            let key = ExpectKey { zone, ..e.key() };
            match crate::kernel::get_expectation(&key) {
                Ok(found) => found.is_some(),
                Err(err) => {
                    tracing::debug!(%err, zone, "cannot read an expectation in a zone");
                    false
                }
            }
        };
        zones
            .iter()
            .copied()
            .find(|&zone| held_in(zone))
            .or_else(|| zones.contains(&0).then_some(0))
    }

    /// The key an ending expectation, reported without its zone, was
    /// replicated under: the first zone whose key our cache holds, else
    /// the key as reported.
    fn replicated_key(&self, key: ExpectKey) -> ExpectKey {
        if key.zone != 0 {
            return key;
        }
        let cached = self.node.internal_expectations();
        std::iter::once(0)
            .chain(self.node.internal().zones())
            .map(|zone| ExpectKey { zone, ..key })
            .find(|k| cached.contains(k))
            .unwrap_or(key)
    }

    pub(super) fn on_expect_feed(&mut self, feed: ExpectFeed) {
        match feed {
            ExpectFeed::Events(events) => {
                for event in events {
                    self.apply_expect_event(event);
                }
            }
            ExpectFeed::Overrun => {
                tracing::warn!("expectation event socket overrun; expectations will be re-read");
                self.read_expectations(true, Vec::new());
            }
            ExpectFeed::Failed(reason) => {
                tracing::warn!(%reason, "reading expectation events failed; expectations will be re-read");
                self.read_expectations(true, Vec::new());
            }
        }
    }

    fn apply_expect_event(&mut self, event: ExpectEvent) {
        if self.origins.ignored.contains(&event.portid) || self.origins.own.contains(&event.portid)
        {
            return;
        }
        let e = event.expect;
        match event.kind {
            EventKind::New | EventKind::Update => {
                if !self.config.sync.expectations.takes(e.helper.as_deref()) {
                    return;
                }
                let key = e.key();
                self.expect_state.waiting.retain(|(w, _)| w.key() != key);
                if let Some(zone) = self.master_zone(&e) {
                    let e = Expectation { zone, ..e };
                    self.refresh_master(&e);
                    self.replicate_expectation(e);
                } else if self.expect_state.waiting.len() < MAX_WAITING {
                    // Made by its connection's first packet (TFTP's read
                    // request, SIP's INVITE): the master's own event comes
                    // right after; wait for it.
                    let until = self.now_ms() + MASTER_WAIT_MS;
                    self.expect_state.waiting.push((e, until));
                }
            }
            EventKind::Destroy => {
                let key = e.key();
                self.expect_state.waiting.retain(|(w, _)| w.key() != key);
                let key = self.replicated_key(key);
                if self.node.internal_expectations().contains(&key) {
                    self.cd_expect_gone(&key);
                }
                let now = self.now_ms();
                let replicate = self.ctsync_links;
                self.node.local_expect_delete(&key, now, replicate);
            }
        }
    }

    /// One the wire's checks refuse goes to no peer, the conntrackd
    /// link's included (its catch-up would take it for gone).
    fn replicate_expectation(&mut self, e: Expectation) {
        let now = self.now_ms();
        let replicate = self.ctsync_links;
        let copy = self.cd.is_some().then(|| e.clone());
        if self.node.local_expect_upsert(e, now, replicate) == Upsert::Refused {
            return;
        }
        if let Some(e) = copy {
            self.cd_expect(&e);
        }
    }

    /// A local flow change for every peer: ctsync's (when a link speaks
    /// it) and the conntrackd link's, at the owner's `now` (milliseconds).
    /// One the wire's checks refuse goes to none.
    pub(super) fn replicate_flow(&mut self, flow: &Flow, now: u64) {
        let replicate = self.ctsync_links;
        if self.node.local_upsert(flow, now, replicate) != Upsert::Refused {
            self.cd_flow(flow, now);
        }
    }

    /// The helper that made `e` may have rewritten its master's payload
    /// under NAT (an FTP PORT), and the kernel reports the new sequence
    /// adjustment in no event: read the master now and replicate what
    /// changed.
    fn refresh_master(&mut self, e: &Expectation) {
        let key = FlowKey {
            zone: e.zone,
            orig: e.master,
        };
        // Only a TCP master under NAT can have had its payload rewritten:
        // spare the kernel a request for every other expectation.
        let rewritable = e.master.proto == crate::flow::proto::TCP
            && self.node.internal().flow(&key).is_some_and(|f| f.has_nat());
        if !rewritable {
            return;
        }
        match crate::kernel::get_flow(&key) {
            Ok(Some(mut flow)) => {
                if let Some(cached) = self.node.internal().flow(&key) {
                    flow.fill_from_previous(&cached);
                    if cached.same_state(&flow) {
                        return;
                    }
                }
                if self.filter.accepts(&flow) {
                    let now = self.now_ms();
                    self.replicate_flow(&flow, now);
                }
            }
            Ok(None) => {}
            Err(err) => tracing::debug!(%err, "cannot read an expectation's master"),
        }
    }

    /// Expectations waiting for their master: those whose master is ours
    /// now are replicated, those that waited too long are dropped.
    pub(super) fn settle_waiting_expectations(&mut self) {
        if self.expect_state.waiting.is_empty() {
            return;
        }
        let now = self.now_ms();
        let waiting = std::mem::take(&mut self.expect_state.waiting);
        for (e, until) in waiting {
            if let Some(zone) = self.master_zone(&e) {
                let e = Expectation { zone, ..e };
                self.refresh_master(&e);
                self.replicate_expectation(e);
            } else if now < until {
                self.expect_state.waiting.push((e, until));
            }
        }
    }

    /// Read the kernel's expectations on the worker (with expectation
    /// sync); `replicate`: send what differs.
    pub(super) fn read_expectations(
        &mut self,
        replicate: bool,
        clients: Vec<oneshot::Sender<Reply>>,
    ) {
        if !self.expectations_on() {
            for c in clients {
                let _ = c.send(success(String::new()));
            }
            return;
        }
        self.submit(Job::DumpExpectations { replicate, clients });
    }

    pub(super) fn expectations_read(
        &mut self,
        result: Result<Vec<Expectation>, String>,
        replicate: bool,
        clients: Vec<oneshot::Sender<Reply>>,
    ) {
        let reply = match result {
            Ok(all) => {
                // A peer's expectation written here (a commit's, warm
                // standby's) is the peer's while its view holds it.
                let ours: Vec<Expectation> = all
                    .into_iter()
                    .filter(|e| self.config.sync.expectations.takes(e.helper.as_deref()))
                    .filter_map(|e| self.master_zone(&e).map(|zone| Expectation { zone, ..e }))
                    .filter(|e| {
                        let key = e.key();
                        !self
                            .node
                            .external_expectations()
                            .any(|(_, c)| c.contains(&key))
                    })
                    .collect();
                let now = self.now_ms();
                let r = self.node.reconcile_expectations(ours, now, replicate);
                if replicate {
                    self.cd_catch_up_expectations();
                }
                if r.added + r.changed + r.removed > 0 {
                    tracing::info!(
                        added = r.added,
                        changed = r.changed,
                        removed = r.removed,
                        "expectations re-read from the kernel"
                    );
                }
                success(String::new())
            }
            Err(reason) => {
                tracing::warn!(%reason, "reading the kernel's expectations failed");
                failure(format!("cannot read the kernel's expectations: {reason}"))
            }
        };
        for c in clients {
            let _ = c.send(reply.clone());
        }
    }

    /// The peers' expectations a commit writes (of one peer, or all), each
    /// with the timeout it has left (expired ones are left out).
    pub(super) fn expectations_to_commit(
        &self,
        peer: Option<u32>,
        now_ms: u64,
    ) -> Vec<Expectation> {
        let configured = self.config.kernel.commit_timeout;
        self.node
            .external_expectations()
            .filter(|(id, _)| peer.is_none_or(|p| p == *id))
            .flat_map(|(_, cache)| cache.iter())
            .filter_map(|entry| aged(entry, now_ms, configured))
            .collect()
    }

    /// Warm standby: the peers' expectation changes into our kernel (a
    /// batch at a time, on the worker), and the retries of creates whose
    /// master was not there yet (it may come in a later flow batch).
    pub(super) fn mirror_expectations(&mut self) {
        if self.warm.is_none() {
            return;
        }
        for change in self.node.take_applied_expectations() {
            let op = match change {
                AppliedExpect::Created(e) | AppliedExpect::Updated(e) => ExpectOp::Create(e),
                AppliedExpect::Delete(key) => ExpectOp::Delete(key),
            };
            let key = op.key();
            let state = &mut self.expect_state;
            state.pending.retain(|p| p.key() != key);
            state.retry.retain(|(k, _)| *k != key);
            state.pending.push(op);
        }
        let state = &self.expect_state;
        let retry_due =
            !state.retry.is_empty() && state.retry_at.is_none_or(|at| Instant::now() >= at);
        if state.in_flight.is_some() || (state.pending.is_empty() && !retry_due) {
            return;
        }
        let now = self.now_ms();
        let mut ops = std::mem::take(&mut self.expect_state.pending);
        for op in &mut ops {
            if let ExpectOp::Create(e) = op {
                if let Some(fresh) = self.peer_expectation_now(&e.key(), now) {
                    *e = fresh;
                }
            }
        }
        let mut budgets = Vec::new();
        if retry_due {
            for (key, left) in std::mem::take(&mut self.expect_state.retry) {
                // Still the peer's, with the time it has left.
                if let Some(e) = self.peer_expectation_now(&key, now) {
                    ops.push(ExpectOp::Create(e));
                    budgets.push((key, left));
                }
            }
        }
        if ops.is_empty() {
            return;
        }
        self.expect_state.in_flight = Some(budgets);
        self.submit(Job::InjectExpectations(ops));
    }

    /// A peer's expectation with the time it has left `now` (`None`: no
    /// peer holds it, or it ran out).
    fn peer_expectation_now(&self, key: &ExpectKey, now: u64) -> Option<Expectation> {
        self.node
            .external_expectations()
            .find_map(|(_, c)| c.get(key))
            .and_then(|entry| aged(entry, now, None))
    }

    pub(super) fn expectations_mirrored(&mut self, report: ExpectWriteReport, ops: Vec<ExpectOp>) {
        let state = &mut self.expect_state;
        let budgets = state.in_flight.take().unwrap_or_default();
        for (key, errno) in &report.failed_keys {
            let is_create = ops
                .iter()
                .any(|op| matches!(op, ExpectOp::Create(e) if e.key() == *key));
            // A master not in the table yet: it may come in a later batch.
            if !is_create || *errno != libc::ENOENT {
                tracing::debug!(errno, "warm standby cannot write an expectation");
                continue;
            }
            // A newer change of the same key waits already.
            if state.pending.iter().any(|p| p.key() == *key) {
                continue;
            }
            let left = budgets
                .iter()
                .find(|(k, _)| k == key)
                .map_or(MIRROR_RETRIES, |(_, n)| *n);
            if left > 0 {
                state.retry.push((*key, left - 1));
            }
        }
        // A retry waits its delay once; later batches do not push it back.
        if state.retry.is_empty() {
            state.retry_at = None;
        } else if state.retry_at.is_none_or(|at| at <= Instant::now()) {
            state.retry_at = Some(Instant::now() + MIRROR_RETRY_DELAY);
        }
    }

    /// `-f`: what waits to be written (the peers') or replicated (ours)
    /// goes with the caches it came from.
    pub(super) fn forget_pending_expectations(&mut self, which: crate::control::CacheSel) {
        use crate::control::CacheSel;
        let state = &mut self.expect_state;
        if which != CacheSel::Internal {
            state.pending.clear();
            state.retry.clear();
            state.retry_at = None;
        }
        if which != CacheSel::External {
            state.waiting.clear();
        }
    }

    /// `-F expect`.
    pub(super) fn flush_kernel_expectations(&mut self, reply: oneshot::Sender<Reply>) {
        tracing::info!("flushing kernel expectation table");
        self.submit(Job::FlushExpectations(reply));
    }

    /// `-i expect` / `-e expect`: few enough to render here.
    pub(super) fn render_expectations(&self, internal: bool, json: bool) -> Reply {
        let now = self.now_ms();
        let rows: Vec<(Option<u32>, &ExpectEntry)> = if internal {
            self.node
                .internal_expectations()
                .iter()
                .map(|e| (None, e))
                .collect()
        } else {
            self.node
                .external_expectations()
                .flat_map(|(id, c)| c.iter().map(move |e| (Some(id), e)))
                .collect()
        };
        if json {
            let all: Vec<ExpectJson> = rows
                .iter()
                .map(|(node, e)| ExpectJson::of(*node, e, now))
                .collect();
            let mut s = serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".into());
            s.push('\n');
            return success(s);
        }
        let mut out = String::new();
        for (_, e) in rows {
            let _ = writeln!(
                out,
                "{} [active since {}s]",
                e.expect,
                now.saturating_sub(e.since_ms) / 1000
            );
        }
        success(out)
    }
}

/// An expectation with the timeout it has left `now_ms` (the configured
/// commit timeout instead, if any); `None` once it ran out.
fn aged(entry: &ExpectEntry, now_ms: u64, configured: Option<u32>) -> Option<Expectation> {
    let mut e = entry.expect.clone();
    if e.timeout == 0 {
        // Sent without one (a conntrackd peer with CommitTimeout).
        e.timeout = configured.unwrap_or(UNKNOWN_TIMEOUT_S);
        return Some(e);
    }
    let elapsed = now_ms.saturating_sub(entry.updated_ms) / 1000;
    let left = u64::from(e.timeout).checked_sub(elapsed)?;
    e.timeout = u32::try_from(left).ok().filter(|t| *t > 0)?;
    if let Some(t) = configured {
        e.timeout = t;
    }
    Some(e)
}

/// One expectation in `--json`.
#[derive(Serialize)]
struct ExpectJson {
    /// The peer it came from (`-e`); absent for our own (`-i`).
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<u32>,
    zone: u16,
    master: control::render::TupleJson,
    tuple: control::render::TupleJson,
    mask: control::render::TupleJson,
    timeout: u32,
    flags: u32,
    class: u32,
    helper: Option<String>,
    nat_dir: Option<u32>,
    nat: Option<control::render::TupleJson>,
    expectfn: Option<String>,
    active_since_s: u64,
    text: String,
}

impl ExpectJson {
    fn of(node_id: Option<u32>, entry: &ExpectEntry, now_ms: u64) -> ExpectJson {
        let e = &entry.expect;
        ExpectJson {
            node_id,
            zone: e.zone,
            master: control::render::TupleJson::from(&e.master),
            tuple: control::render::TupleJson::from(&e.tuple),
            mask: control::render::TupleJson::from(&e.mask),
            timeout: e.timeout,
            flags: e.flags,
            class: e.class,
            helper: e.helper.clone(),
            nat_dir: e.nat.as_ref().map(|n| n.dir),
            nat: e
                .nat
                .as_ref()
                .map(|n| control::render::TupleJson::from(&n.tuple)),
            expectfn: e.expectfn.clone(),
            active_since_s: now_ms.saturating_sub(entry.since_ms) / 1000,
            text: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::test_expectations::ftp;
    use crate::expect_cache::ExpectCache;

    #[test]
    fn a_commit_ages_the_timeout_and_leaves_expired_ones_out() {
        let mut c = ExpectCache::default();
        c.upsert(ftp(1), 10_000, false);
        let entry = c.get(&ftp(1).key()).unwrap();
        assert_eq!(aged(entry, 70_000, None).map(|e| e.timeout), Some(240));
        assert_eq!(aged(entry, 310_000, None), None, "300 s ran out");
        assert_eq!(aged(entry, 70_000, Some(60)).map(|e| e.timeout), Some(60));
        assert_eq!(aged(entry, 900_000, Some(60)), None, "ran out before");
    }
}
