//! Batched, pipelined writes into the conntrack table: create, update,
//! delete, flush.
//!
//! Owns: the writer socket, packing many requests into one `send` (up to
//! [`CHUNK_BYTES`] each), mapping kernel errors back to requests by sequence
//! number, and conntrackd's fallbacks (create EEXIST -> delete + create,
//! up to [`MAX_REPLACES`] times where conntrackd tries once: packets of
//! the flow can make a new entry between the delete and the create, and
//! once that happened an entry the packets made with the flow's own NAT
//! binding is updated in place instead, which packets cannot race (a
//! refused update goes back to replacing);
//! update ENOENT -> create; delete ENOENT is success), plus those of
//! RELATED flows: a create whose master is missing (ENOENT) is tried again
//! after the rest of the batch (the master may come later in it), then
//! without the master (the connection survives, unattached, and is logged);
//! an update refused with EBUSY is tried once with the EXPECTED status bit
//! flipped (the kernel's copy was created without its master, or with one).
//! Must not: decide timeouts or which flows to write (callers do), or
//! filter events (callers compare event port ids with [`Writer::portid`]).
//!
//! Acknowledgement scheme: flow requests carry no NLM_F_ACK, so the kernel
//! only answers the ones that fail (NLMSG_ERROR with the request's seq; with
//! NETLINK_CAP_ACK the echo is just the header). Expectation requests
//! (`expect_write`) carry it: their ACK reads as success. Each send ends with an
//! NLMSG_NOOP barrier that does carry NLM_F_ACK; the kernel handles the
//! messages of one send in order before `send` returns, so once the
//! barrier's ACK is read every error of that send has been read too.

pub use super::codec::CreateOptions;
use super::codec::{encode_create_as, encode_delete, encode_update_as};
use super::socket::{
    finish_msg, messages, start_msg, NlSocket, NLMSG_NOOP, NLM_F_ACK, NLM_F_REQUEST,
};
use super::{dump_table, errno_name, KernelError};
use crate::flow::{proto_name, Flow, FlowKey};
use std::time::{Duration, Instant};

/// Bytes of requests packed into one `send`.
pub const CHUNK_BYTES: usize = 200 * 1024;
/// Bytes of requests per send in a bulk create (a commit): large sends
/// cost the kernel less per request (measured: 64 KiB sends make ~25%
/// fewer inserts a second than 256 KiB ones).
pub const BULK_CHUNK_BYTES: usize = 512 * 1024;
/// Buffers the bulk create's encoder may fill ahead of the sender.
const BULK_BUFFERS: usize = 3;
/// Room left in the send buffer for the request that crosses the chunk
/// size and the barrier.
const SEND_MARGIN: usize = 8 * 1024;
/// Receive buffer of the writer socket: far more than the error replies of
/// one chunk, so they never overrun.
const WRITER_RCVBUF: usize = 8 * 1024 * 1024;
/// How long to wait for the barrier ACK before giving up.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// How many error lines a report keeps.
const MAX_ERRORS: usize = 10;

/// One change to apply to the kernel table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Create(Flow),
    Update(Flow),
    Delete(FlowKey),
}

impl WriteOp {
    /// The flow this operation is about.
    pub fn key(&self) -> FlowKey {
        match self {
            WriteOp::Create(flow) | WriteOp::Update(flow) => flow.key(),
            WriteOp::Delete(key) => *key,
        }
    }
}

/// What a batch of writes did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, each naming the flow and the errno.
    pub first_errors: Vec<String>,
    /// Every flow whose write failed, so a caller can try it again later.
    pub failed_keys: Vec<FlowKey>,
    /// Replaces (delete + create after EEXIST) whose create met EEXIST
    /// again: packets of the flow made a new entry in between. Each was
    /// tried again, up to [`MAX_REPLACES`] times.
    pub replaces_lost: u64,
    /// Of those, the flows written as an update of the entry the packets
    /// made, because it held the flow's own NAT binding (reply tuple).
    pub updated_in_place: u64,
}

impl WriteReport {
    fn fail(&mut self, what: &str, key: &FlowKey, errno: i32) {
        self.failed += 1;
        self.failed_keys.push(*key);
        if self.first_errors.len() < MAX_ERRORS {
            self.first_errors.push(format!(
                "{what} {} {} zone {}: {}",
                proto_name(key.orig.proto),
                key.orig,
                key.zone,
                errno_name(errno)
            ));
        }
    }

    fn fail_all(&mut self, n: usize, err: &KernelError) {
        self.failed += n as u64;
        if self.first_errors.len() < MAX_ERRORS {
            self.first_errors
                .push(format!("{n} requests not done: {err}"));
        }
    }
}

/// A request, borrowing its flow.
#[derive(Clone, Copy)]
enum Req<'a> {
    /// `master`: send the flow's master tuple, if it has one.
    Create {
        flow: &'a Flow,
        master: bool,
    },
    /// `expected`: the EXPECTED status bit to send.
    Update {
        flow: &'a Flow,
        expected: bool,
    },
    Delete(FlowKey),
}

impl Req<'_> {
    fn key(&self) -> FlowKey {
        match self {
            Req::Create { flow, .. } | Req::Update { flow, .. } => flow.key(),
            Req::Delete(k) => *k,
        }
    }
}

/// A request with what its fallbacks have done so far.
#[derive(Clone, Copy)]
struct Unit<'a> {
    req: Req<'a>,
    /// Send a delete of the same key just before (create after EEXIST).
    pre_delete: bool,
    /// Fallbacks already taken (`USED_*`): each is taken once at most.
    used: u8,
    /// Replaces (delete + create) already tried.
    replaces: u8,
}

/// How many times a create refused with EEXIST is tried again as delete +
/// create. Once (conntrackd's number) is not enough while packets of the
/// flow keep arriving: a packet that comes between the delete and the
/// create makes an entry of its own (with a NAT binding of its own), and
/// the create fails again. Measured on one UDP flow at ~100,000 packets a
/// second: one replace in two lost that race.
pub const MAX_REPLACES: u8 = 16;
const USED_MASTER_WAIT: u8 = 2;
const USED_DETACH: u8 = 4;
const USED_FLIP: u8 = 8;
const USED_UPDATE_CREATE: u8 = 16;
const USED_IN_PLACE: u8 = 32;
/// Passes over a batch: every fallback but the replace is taken at most
/// once per request, and a request takes at most five of them in a row,
/// besides its replaces.
const MAX_PASSES: usize = 6 + MAX_REPLACES as usize;

impl<'a> Unit<'a> {
    fn new(req: Req<'a>) -> Unit<'a> {
        Unit {
            req,
            pre_delete: false,
            used: 0,
            replaces: 0,
        }
    }

    fn then(self, req: Req<'a>, used: u8, pre_delete: bool) -> Unit<'a> {
        Unit {
            req,
            pre_delete,
            used: self.used | used,
            replaces: self.replaces + u8::from(pre_delete),
        }
    }

    /// The next step after the kernel answered `err`: `Ok(None)` done,
    /// `Ok(Some)` try this next, `Err` failed with this errno.
    fn next(self, err: i32) -> Result<Option<Unit<'a>>, i32> {
        let fresh = |bit: u8| self.used & bit == 0;
        match (self.req, err) {
            (_, 0) | (Req::Delete(_), libc::ENOENT) => Ok(None),
            (Req::Create { .. }, libc::EEXIST) if self.replaces < MAX_REPLACES => {
                Ok(Some(self.then(self.req, 0, true)))
            }
            (Req::Create { flow, master: true }, libc::ENOENT) if flow.master.is_some() => {
                if fresh(USED_MASTER_WAIT) {
                    Ok(Some(self.then(self.req, USED_MASTER_WAIT, false)))
                } else if fresh(USED_DETACH) {
                    let req = Req::Create {
                        flow,
                        master: false,
                    };
                    Ok(Some(self.then(req, USED_DETACH, false)))
                } else {
                    Err(err)
                }
            }
            (Req::Update { flow, .. }, libc::ENOENT) if fresh(USED_UPDATE_CREATE) => {
                let req = Req::Create { flow, master: true };
                Ok(Some(self.then(req, USED_UPDATE_CREATE, false)))
            }
            (Req::Update { flow, expected }, libc::EBUSY) if fresh(USED_FLIP) => {
                let req = Req::Update {
                    flow,
                    expected: !expected,
                };
                Ok(Some(self.then(req, USED_FLIP, false)))
            }
            // An update in place the kernel refused (a status bit it will
            // not clear, say): back to replacing.
            (Req::Update { flow, .. }, _)
                if !fresh(USED_IN_PLACE) && self.replaces < MAX_REPLACES =>
            {
                let req = Req::Create { flow, master: true };
                Ok(Some(self.then(req, 0, true)))
            }
            (_, e) => Err(e),
        }
    }

    /// After a replace lost its race (its create met EEXIST again), given
    /// the entry the kernel now holds under the flow's key: when that
    /// entry carries the flow's own reply tuple (NAT binding), write the
    /// flow as an update of it, which packets of the flow cannot race: they
    /// only update the same entry. `None` when the binding differs (only a
    /// replace can change it), the entry is gone, or this was done before.
    /// `existing` reads the entry, only when its answer matters.
    fn in_place(self, existing: impl FnOnce() -> Option<Flow>) -> Option<Unit<'a>> {
        let Req::Create { flow, .. } = self.req else {
            return None;
        };
        if self.used & USED_IN_PLACE != 0 || existing()?.reply != flow.reply {
            return None;
        }
        let update = Req::Update {
            flow,
            expected: flow.master.is_some(),
        };
        Some(self.then(update, USED_IN_PLACE, false))
    }
}

/// Where a writer's time went since it was last asked
/// ([`Writer::take_clock`]): what tells a commit slowed by the kernel from
/// one slowed by ctsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteClock {
    /// In `send` and reading the kernel's answers: the kernel inserting.
    pub in_kernel: Duration,
    /// A bulk create's sender waiting for its encoder to fill a batch.
    pub waiting_for_flows: Duration,
    /// When the first request went out.
    pub first_send: Option<Instant>,
}

impl WriteClock {
    /// A send begins: returns when, for [`WriteClock::sent`].
    fn sending(&mut self) -> Instant {
        let now = Instant::now();
        self.first_send.get_or_insert(now);
        now
    }

    /// The send begun at `started` and its answers are done: that time
    /// was the kernel's.
    fn sent(&mut self, started: Instant) {
        self.in_kernel += started.elapsed();
    }
}

/// Writes flows into the kernel table through its own netlink socket.
pub struct Writer {
    sock: NlSocket,
    seq: u32,
    opts: CreateOptions,
    buf: Vec<u8>,
    rbuf: Vec<u8>,
    clock: WriteClock,
}

impl Writer {
    pub fn open() -> Result<Writer, KernelError> {
        let sock = NlSocket::open()?;
        sock.set_rcvbuf(WRITER_RCVBUF)?;
        // Older kernels lack CAP_ACK; error replies are then just longer.
        if let Err(e) = sock.set_cap_ack(true) {
            tracing::debug!(error = %e, "NETLINK_CAP_ACK not available");
        }
        sock.set_read_timeout(Some(ACK_TIMEOUT))?;
        Ok(Writer {
            sock,
            seq: 1,
            opts: CreateOptions::default(),
            buf: Vec::with_capacity(CHUNK_BYTES + 4096),
            rbuf: Vec::with_capacity(64 * 1024),
            clock: WriteClock::default(),
        })
    }

    /// Where this writer's time went since the last call; starts afresh.
    pub fn take_clock(&mut self) -> WriteClock {
        std::mem::take(&mut self.clock)
    }

    /// The netlink port id of this writer: the kernel events its writes
    /// cause carry it.
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// The options [`Writer::apply`] uses for creates.
    pub fn set_create_options(&mut self, opts: CreateOptions) {
        self.opts = opts;
    }

    /// Create every flow (conntrackd's commit): on EEXIST the kernel entry
    /// is deleted and the create tried again (see [`MAX_REPLACES`] and
    /// [`WriteReport::updated_in_place`]).
    pub fn create_all(&mut self, flows: &[Flow], opts: &CreateOptions) -> WriteReport {
        let reqs: Vec<Req> = flows
            .iter()
            .map(|flow| Req::Create { flow, master: true })
            .collect();
        self.run(&reqs, opts)
    }

    /// Create every flow as [`Writer::create_all`] does, pipelined for a
    /// large commit: another thread takes the flows from `flows` (decoding
    /// them, if the iterator does) and encodes them into a few reusable
    /// buffers of up to [`BULK_CHUNK_BYTES`] while this one sends them, so
    /// that work overlaps the kernel's inserts. One socket: ctnetlink makes
    /// one create at a time, more sockets only spin on its lock. `on_sent`
    /// is told how many requests each send carried. The creates that
    /// failed then go through [`Writer::create_all`] and its fallbacks
    /// (EEXIST, a missing master).
    pub fn create_bulk(
        &mut self,
        flows: impl Iterator<Item = Flow> + Send,
        opts: &CreateOptions,
        on_sent: &(dyn Fn(usize) + Sync),
    ) -> WriteReport {
        let chunk = self.bulk_chunk();
        let seq0 = self.seq;
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Batch>(BULK_BUFFERS);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Batch>();
        for _ in 0..BULK_BUFFERS {
            let _ = free_tx.send(Batch::with_capacity(chunk + 4096));
        }
        let mut failed: Vec<Flow> = Vec::new();
        let mut errs: Vec<i32> = Vec::new();
        let mut sent_ok = 0u64;
        let (result, requests) = std::thread::scope(|scope| {
            let encoder =
                scope.spawn(move || encode_batches(flows, opts, seq0, chunk, &free_rx, &full_tx));
            let mut result = Ok(());
            let mut waiting_since = Instant::now();
            for batch in full_rx.iter() {
                self.clock.waiting_for_flows += waiting_since.elapsed();
                let count = batch.flows.len();
                errs.clear();
                errs.resize(count, 0);
                let started = self.clock.sending();
                result = self
                    .sock
                    .send(&batch.buf)
                    .and_then(|()| self.collect(batch.base, batch.barrier, &mut errs));
                self.clock.sent(started);
                if result.is_err() {
                    // Dropping the receiver stops the encoder.
                    break;
                }
                // The flows themselves are dropped by the encoder when it
                // reuses the batch: only the failed ones are copied here.
                for (flow, err) in batch.flows.iter().zip(&errs) {
                    if *err == 0 {
                        sent_ok += 1;
                    } else {
                        failed.push(flow.clone());
                    }
                }
                on_sent(count);
                let _ = free_tx.send(batch);
                waiting_since = Instant::now();
            }
            // After a failed send the encoder may be waiting for a free
            // buffer or for room in the full queue: hang up both ways so
            // it returns.
            drop(full_rx);
            drop(free_tx);
            let requests = encoder.join().unwrap_or(0);
            (result, requests)
        });
        // Past every request and every barrier (one per batch, at most one
        // per request).
        self.seq = seq0.wrapping_add(2 * requests as u32).wrapping_add(1);
        let mut report = WriteReport {
            ok: sent_ok,
            ..WriteReport::default()
        };
        if let Err(e) = result {
            report.fail_all(requests.saturating_sub(sent_ok as usize), &e);
            return report;
        }
        if !failed.is_empty() {
            let retried = self.create_all(&failed, opts);
            report.ok += retried.ok;
            report.failed += retried.failed;
            report.first_errors = retried.first_errors;
            report.failed_keys = retried.failed_keys;
            report.replaces_lost = retried.replaces_lost;
        }
        report
    }

    /// Bytes of requests per send in [`Writer::create_bulk`]: what the
    /// socket's send buffer allows, at most [`BULK_CHUNK_BYTES`].
    fn bulk_chunk(&mut self) -> usize {
        match self.sock.set_sndbuf(2 * BULK_CHUNK_BYTES) {
            Ok(room) => room
                .saturating_sub(SEND_MARGIN)
                .clamp(4096, BULK_CHUNK_BYTES),
            Err(e) => {
                tracing::debug!(error = %e, "cannot raise the writer's send buffer");
                CHUNK_BYTES
            }
        }
    }

    /// Apply changes with conntrackd's inject fallbacks: create EEXIST ->
    /// delete + create; update ENOENT -> create; delete ENOENT is success.
    pub fn apply(&mut self, ops: &[WriteOp]) -> WriteReport {
        let reqs: Vec<Req> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Create(flow) => Req::Create { flow, master: true },
                WriteOp::Update(flow) => Req::Update {
                    flow,
                    expected: flow.master.is_some(),
                },
                WriteOp::Delete(k) => Req::Delete(*k),
            })
            .collect();
        let opts = self.opts;
        self.run(&reqs, &opts)
    }

    /// Dump the table and delete every flow for which `keep` is false.
    pub fn flush(&mut self, keep: &dyn Fn(&Flow) -> bool) -> Result<WriteReport, KernelError> {
        self.flush_keys(keep).map(|(report, _)| report)
    }

    /// [`Writer::flush`], and the keys of the flows it deleted (or found
    /// gone already).
    pub fn flush_keys(
        &mut self,
        keep: &dyn Fn(&Flow) -> bool,
    ) -> Result<(WriteReport, Vec<FlowKey>), KernelError> {
        let flows = dump_table()?;
        let reqs: Vec<Req> = flows
            .iter()
            .filter(|f| !keep(f))
            .map(|f| Req::Delete(f.key()))
            .collect();
        let opts = self.opts;
        let report = self.run(&reqs, &opts);
        let failed: std::collections::HashSet<&FlowKey> = report.failed_keys.iter().collect();
        let deleted = reqs
            .iter()
            .map(Req::key)
            .filter(|k| !failed.contains(k))
            .collect();
        Ok((report, deleted))
    }

    /// Run requests with the fallbacks, in pipelined passes: each pass
    /// sends what the previous one left to retry.
    fn run(&mut self, reqs: &[Req], opts: &CreateOptions) -> WriteReport {
        let mut rep = WriteReport::default();
        let mut units: Vec<Unit> = reqs.iter().map(|r| Unit::new(*r)).collect();
        for pass in 0..MAX_PASSES {
            if units.is_empty() {
                break;
            }
            // Each unit is one or two requests (a delete before a re-create).
            let mut wire: Vec<(Req, bool)> = Vec::with_capacity(units.len());
            for u in &units {
                if u.pre_delete {
                    wire.push((Req::Delete(u.req.key()), true));
                }
                wire.push((u.req, false));
            }
            let errs = match self.exec_encoded(wire.len(), |buf, i, seq| {
                if let Some((req, _)) = wire.get(i) {
                    encode_req(buf, req, seq, opts);
                }
            }) {
                Ok(e) => e,
                Err(e) => {
                    rep.fail_all(units.len(), &e);
                    return rep;
                }
            };
            let mut next = Vec::new();
            let mut errs = errs.iter();
            for u in &units {
                let delete_err = if u.pre_delete {
                    errs.next().copied().unwrap_or(0)
                } else {
                    0
                };
                let err = errs.next().copied().unwrap_or(0);
                if delete_err != 0 && delete_err != libc::ENOENT {
                    rep.fail("delete", &u.req.key(), delete_err);
                    continue;
                }
                let last = pass + 1 == MAX_PASSES;
                if u.pre_delete && err == libc::EEXIST {
                    rep.replaces_lost += 1;
                    if let Some(update) = u.in_place(|| in_table(&u.req.key())) {
                        if !last {
                            next.push(update);
                            continue;
                        }
                    }
                }
                match u.next(err) {
                    Ok(None) => {
                        rep.ok += 1;
                        if u.used & USED_IN_PLACE != 0 && matches!(u.req, Req::Update { .. }) {
                            rep.updated_in_place += 1;
                        }
                        if let Req::Create {
                            flow,
                            master: false,
                        } = u.req
                        {
                            if flow.master.is_some() {
                                tracing::warn!(
                                    flow = %flow.orig,
                                    master = ?flow.master,
                                    "RELATED flow created without its master (not in the table)"
                                );
                            }
                        }
                    }
                    Ok(Some(n)) if !last => next.push(n),
                    Ok(Some(_)) => rep.fail(verb(&u.req), &u.req.key(), err),
                    Err(e) => rep.fail(verb(&u.req), &u.req.key(), e),
                }
            }
            units = next;
        }
        rep
    }

    /// Send `n` requests in chunks, request `i` written by `encode(buf, i,
    /// seq)`; returns each request's errno (0 = ok). Requests may carry
    /// NLM_F_ACK or not: an ACK reads as 0.
    pub(super) fn exec_encoded(
        &mut self,
        n: usize,
        mut encode: impl FnMut(&mut Vec<u8>, usize, u32),
    ) -> Result<Vec<i32>, KernelError> {
        let mut errs = vec![0i32; n];
        let mut i = 0;
        while i < n {
            self.buf.clear();
            let base = self.seq;
            let first = i;
            while i < n && self.buf.len() < CHUNK_BYTES {
                let seq = base.wrapping_add((i - first) as u32);
                encode(&mut self.buf, i, seq);
                i += 1;
            }
            let count = i - first;
            let barrier = base.wrapping_add(count as u32);
            let b = start_msg(
                &mut self.buf,
                NLMSG_NOOP,
                NLM_F_REQUEST | NLM_F_ACK,
                barrier,
                0,
            );
            finish_msg(&mut self.buf, b);
            self.seq = barrier.wrapping_add(1);
            let started = self.clock.sending();
            let sent = self.sock.send(&self.buf).and_then(|()| {
                self.collect(base, barrier, errs.get_mut(first..i).unwrap_or_default())
            });
            self.clock.sent(started);
            sent?;
        }
        Ok(errs)
    }

    /// Read replies until the barrier's ACK; errors of requests
    /// `base..barrier` land in `errs`.
    fn collect(&mut self, base: u32, barrier: u32, errs: &mut [i32]) -> Result<(), KernelError> {
        loop {
            self.sock
                .recv(&mut self.rbuf)
                .map_err(|e| KernelError::io("recv ack", e))?;
            let mut done = false;
            for m in messages(&self.rbuf).map_while(Result::ok) {
                let Some(err) = m.error() else { continue };
                if m.seq == barrier {
                    done = true;
                    continue;
                }
                let off = m.seq.wrapping_sub(base) as usize;
                if let Some(slot) = errs.get_mut(off) {
                    *slot = err;
                }
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// Of `flows`, those the kernel table lacks or holds with another reply
/// tuple (NAT binding) or mark, and how many were found in place. One
/// table dump, compared by key.
pub fn missing_from_table(flows: Vec<Flow>) -> Result<(Vec<Flow>, usize), KernelError> {
    let present: foldhash::HashMap<FlowKey, (crate::flow::Tuple, u32)> = dump_table()?
        .into_iter()
        .map(|f| (f.key(), (f.reply, f.mark)))
        .collect();
    let checked = flows.len();
    let missing: Vec<Flow> = flows
        .into_iter()
        .filter(|f| present.get(&f.key()) != Some(&(f.reply, f.mark)))
        .collect();
    let in_place = checked - missing.len();
    Ok((missing, in_place))
}

/// One send of [`Writer::create_bulk`]: its flows' create requests
/// (sequence numbers from `base`, one per flow) and the barrier that ends
/// them; the flows are kept for the retry of those that fail.
struct Batch {
    buf: Vec<u8>,
    flows: Vec<Flow>,
    base: u32,
    barrier: u32,
}

impl Batch {
    fn with_capacity(bytes: usize) -> Batch {
        Batch {
            buf: Vec::with_capacity(bytes),
            flows: Vec::new(),
            base: 0,
            barrier: 0,
        }
    }
}

/// The encoder of [`Writer::create_bulk`]: sequence numbers run on from
/// `seq0`, each batch's requests then its barrier. Stops when `flows` ends
/// or the sender hangs up; returns how many requests it encoded.
fn encode_batches(
    mut flows: impl Iterator<Item = Flow>,
    opts: &CreateOptions,
    seq0: u32,
    chunk: usize,
    free: &std::sync::mpsc::Receiver<Batch>,
    full: &std::sync::mpsc::SyncSender<Batch>,
) -> usize {
    let mut seq = seq0;
    let mut requests = 0;
    let mut next = flows.next();
    while next.is_some() {
        let Ok(mut batch) = free.recv() else {
            return requests;
        };
        batch.buf.clear();
        batch.flows.clear();
        batch.base = seq;
        while batch.buf.len() < chunk {
            let Some(flow) = next.take() else { break };
            encode_create_as(&mut batch.buf, &flow, seq, opts, true);
            seq = seq.wrapping_add(1);
            batch.flows.push(flow);
            next = flows.next();
        }
        requests += batch.flows.len();
        batch.barrier = seq;
        seq = seq.wrapping_add(1);
        let b = start_msg(
            &mut batch.buf,
            NLMSG_NOOP,
            NLM_F_REQUEST | NLM_F_ACK,
            batch.barrier,
            0,
        );
        finish_msg(&mut batch.buf, b);
        if full.send(batch).is_err() {
            return requests;
        }
    }
    requests
}

fn encode_req(buf: &mut Vec<u8>, req: &Req, seq: u32, opts: &CreateOptions) {
    match *req {
        Req::Create { flow, master } => encode_create_as(buf, flow, seq, opts, master),
        Req::Update { flow, expected } => encode_update_as(buf, flow, seq, expected),
        Req::Delete(k) => encode_delete(buf, &k, seq),
    }
}

/// The kernel's entry under `key`, if it can be read (a read that fails
/// counts as none: the replace then goes on).
fn in_table(key: &FlowKey) -> Option<Flow> {
    match super::get_flow(key) {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the entry a replace met");
            None
        }
    }
}

fn verb(r: &Req) -> &'static str {
    match r {
        Req::Create { .. } => "create",
        Req::Update { .. } => "update",
        Req::Delete(_) => "delete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;

    fn create(flow: &Flow) -> Unit<'_> {
        Unit::new(Req::Create { flow, master: true })
    }

    #[test]
    fn create_fallbacks() {
        let plain = udp(1);
        let mut related = udp(2);
        related.master = Some(udp(3).orig);
        // EEXIST: delete + create, MAX_REPLACES times, then a failure.
        let mut again = create(&plain);
        for _ in 0..MAX_REPLACES {
            again = again.next(libc::EEXIST).unwrap().unwrap();
            assert!(again.pre_delete);
        }
        assert_eq!(again.replaces, MAX_REPLACES);
        assert_eq!(again.next(libc::EEXIST).err(), Some(libc::EEXIST));
        // ENOENT without a master is a failure.
        assert_eq!(create(&plain).next(libc::ENOENT).err(), Some(libc::ENOENT));
        // With a master: once more as is, then without the master, then fail.
        let wait = create(&related).next(libc::ENOENT).unwrap().unwrap();
        assert!(matches!(wait.req, Req::Create { master: true, .. }));
        let detach = wait.next(libc::ENOENT).unwrap().unwrap();
        assert!(matches!(detach.req, Req::Create { master: false, .. }));
        assert_eq!(detach.next(libc::ENOENT).err(), Some(libc::ENOENT));
        assert!(detach.next(0).unwrap().is_none());
    }

    #[test]
    fn a_lost_replace_updates_in_place_only_an_entry_with_the_same_binding() {
        let f = udp(1);
        let lost = create(&f).next(libc::EEXIST).unwrap().unwrap();
        // The packets' entry holds the flow's reply tuple: update it.
        let mut packets_made = udp(1);
        packets_made.mark = f.mark + 1;
        let update = lost.in_place(|| Some(packets_made.clone())).unwrap();
        assert!(matches!(update.req, Req::Update { .. }));
        assert!(!update.pre_delete);
        // Once: the update that fell back to a create and lost again
        // goes on replacing.
        let created = update.next(libc::ENOENT).unwrap().unwrap();
        assert!(matches!(created.req, Req::Create { .. }));
        let again = created.next(libc::EEXIST).unwrap().unwrap();
        assert!(again.in_place(|| Some(packets_made.clone())).is_none());
        // An update in place the kernel refuses (after the EXPECTED flip
        // for EBUSY) goes back to replacing.
        let flipped = update.next(libc::EBUSY).unwrap().unwrap();
        let replace = flipped.next(libc::EBUSY).unwrap().unwrap();
        assert!(matches!(replace.req, Req::Create { .. }) && replace.pre_delete);
        assert!(replace.in_place(|| Some(packets_made.clone())).is_none());
        let replace = update.next(libc::EPERM).unwrap().unwrap();
        assert!(matches!(replace.req, Req::Create { .. }) && replace.pre_delete);
        // Another NAT binding, or no entry: only a replace will do.
        let mut other_binding = udp(1);
        other_binding.reply.dst = "198.18.0.9".parse().unwrap();
        assert_ne!(other_binding.reply, f.reply);
        assert!(lost.in_place(|| Some(other_binding.clone())).is_none());
        assert!(lost.in_place(|| None).is_none());
        // Never for anything but a create.
        let update_unit = Unit::new(Req::Update {
            flow: &f,
            expected: false,
        });
        assert!(update_unit
            .in_place(|| Some(packets_made.clone()))
            .is_none());
    }

    #[test]
    fn update_and_delete_fallbacks() {
        let f = udp(1);
        let update = Unit::new(Req::Update {
            flow: &f,
            expected: false,
        });
        let created = update.next(libc::ENOENT).unwrap().unwrap();
        assert!(matches!(created.req, Req::Create { master: true, .. }));
        let flipped = update.next(libc::EBUSY).unwrap().unwrap();
        assert!(matches!(flipped.req, Req::Update { expected: true, .. }));
        assert_eq!(flipped.next(libc::EBUSY).err(), Some(libc::EBUSY));
        assert_eq!(update.next(libc::EPERM).err(), Some(libc::EPERM));
        let delete = Unit::new(Req::Delete(f.key()));
        assert!(delete.next(libc::ENOENT).unwrap().is_none());
        assert_eq!(delete.next(libc::EINVAL).err(), Some(libc::EINVAL));
    }
}
