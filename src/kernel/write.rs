//! Batched, pipelined writes into the conntrack table: create, update,
//! delete, flush.
//!
//! Owns: the writer socket, packing many requests into one `send` (up to
//! [`CHUNK_BYTES`] each), mapping kernel errors back to requests by sequence
//! number, and conntrackd's fallbacks (create EEXIST -> delete + create;
//! update ENOENT -> create; delete ENOENT is success).
//! Must not: decide timeouts or which flows to write (callers do), or
//! filter events (callers compare event port ids with [`Writer::portid`]).
//!
//! Acknowledgement scheme: requests carry no NLM_F_ACK, so the kernel only
//! answers the ones that fail (NLMSG_ERROR with the request's seq; with
//! NETLINK_CAP_ACK the echo is just the header). Each send ends with an
//! NLMSG_NOOP barrier that does carry NLM_F_ACK; the kernel handles the
//! messages of one send in order before `send` returns, so once the
//! barrier's ACK is read every error of that send has been read too.

pub use super::codec::CreateOptions;
use super::codec::{encode_create, encode_delete, encode_update};
use super::socket::{
    finish_msg, messages, start_msg, NlSocket, NLMSG_NOOP, NLM_F_ACK, NLM_F_REQUEST,
};
use super::{dump_table, errno_name, KernelError};
use crate::flow::{proto_name, Flow, FlowKey};
use std::time::Duration;

/// Bytes of requests packed into one `send`.
pub const CHUNK_BYTES: usize = 200 * 1024;
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
    Create(&'a Flow),
    Update(&'a Flow),
    Delete(FlowKey),
}

impl Req<'_> {
    fn key(&self) -> FlowKey {
        match self {
            Req::Create(f) | Req::Update(f) => f.key(),
            Req::Delete(k) => *k,
        }
    }
}

/// Writes flows into the kernel table through its own netlink socket.
pub struct Writer {
    sock: NlSocket,
    seq: u32,
    opts: CreateOptions,
    buf: Vec<u8>,
    rbuf: Vec<u8>,
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
        })
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
    /// is deleted and the create tried once more.
    pub fn create_all(&mut self, flows: &[Flow], opts: &CreateOptions) -> WriteReport {
        let reqs: Vec<Req> = flows.iter().map(Req::Create).collect();
        self.run(&reqs, opts)
    }

    /// Apply changes with conntrackd's inject fallbacks: create EEXIST ->
    /// delete + create; update ENOENT -> create; delete ENOENT is success.
    pub fn apply(&mut self, ops: &[WriteOp]) -> WriteReport {
        let reqs: Vec<Req> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Create(f) => Req::Create(f),
                WriteOp::Update(f) => Req::Update(f),
                WriteOp::Delete(k) => Req::Delete(*k),
            })
            .collect();
        let opts = self.opts;
        self.run(&reqs, &opts)
    }

    /// Dump the table and delete every flow for which `keep` is false.
    pub fn flush(&mut self, keep: &dyn Fn(&Flow) -> bool) -> Result<WriteReport, KernelError> {
        let flows = dump_table()?;
        let reqs: Vec<Req> = flows
            .iter()
            .filter(|f| !keep(f))
            .map(|f| Req::Delete(f.key()))
            .collect();
        let opts = self.opts;
        Ok(self.run(&reqs, &opts))
    }

    /// Run requests with the fallbacks, in two pipelined passes.
    fn run(&mut self, reqs: &[Req], opts: &CreateOptions) -> WriteReport {
        let mut rep = WriteReport::default();
        let errs = match self.exec(reqs, opts) {
            Ok(e) => e,
            Err(e) => {
                rep.fail_all(reqs.len(), &e);
                return rep;
            }
        };
        // Second pass: (request, is the create after a delete).
        let mut retry: Vec<Req> = Vec::new();
        for (req, &err) in reqs.iter().zip(&errs) {
            match (req, err) {
                (_, 0) | (Req::Delete(_), libc::ENOENT) => rep.ok += 1,
                (Req::Create(f), libc::EEXIST) => {
                    retry.push(Req::Delete(f.key()));
                    retry.push(Req::Create(f));
                }
                (Req::Update(f), libc::ENOENT) => retry.push(Req::Create(f)),
                (r, e) => rep.fail(verb(r), &r.key(), e),
            }
        }
        if retry.is_empty() {
            return rep;
        }
        let errs = match self.exec(&retry, opts) {
            Ok(e) => e,
            Err(e) => {
                let n = retry.iter().filter(|r| matches!(r, Req::Create(_))).count();
                rep.fail_all(n, &e);
                return rep;
            }
        };
        let mut delete_failed = None;
        for (req, &err) in retry.iter().zip(&errs) {
            match req {
                // A delete before a re-create: ENOENT is fine (it expired).
                Req::Delete(_) => delete_failed = (err != 0 && err != libc::ENOENT).then_some(err),
                Req::Create(f) => match (delete_failed.take(), err) {
                    (Some(de), _) => rep.fail("delete", &f.key(), de),
                    (None, 0) => rep.ok += 1,
                    (None, e) => rep.fail("create", &f.key(), e),
                },
                Req::Update(_) => {}
            }
        }
        rep
    }

    /// Send the requests in chunks; returns each request's errno (0 = ok).
    fn exec(&mut self, reqs: &[Req], opts: &CreateOptions) -> Result<Vec<i32>, KernelError> {
        let mut errs = vec![0i32; reqs.len()];
        let mut i = 0;
        while i < reqs.len() {
            self.buf.clear();
            let base = self.seq;
            let first = i;
            while i < reqs.len() && self.buf.len() < CHUNK_BYTES {
                let seq = base.wrapping_add((i - first) as u32);
                match reqs.get(i) {
                    Some(Req::Create(f)) => encode_create(&mut self.buf, f, seq, opts),
                    Some(Req::Update(f)) => encode_update(&mut self.buf, f, seq),
                    Some(Req::Delete(k)) => encode_delete(&mut self.buf, k, seq),
                    None => break,
                }
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
            self.sock.send(&self.buf)?;
            self.collect(base, barrier, errs.get_mut(first..i).unwrap_or_default())?;
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

fn verb(r: &Req) -> &'static str {
    match r {
        Req::Create(_) => "create",
        Req::Update(_) => "update",
        Req::Delete(_) => "delete",
    }
}
