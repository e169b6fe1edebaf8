//! Table dumps: read the whole conntrack table (IPv4 and IPv6, every zone)
//! into flows, and every expectation into expectations; and reads of one
//! flow by key, or of one expectation by its expected tuple and zone.
//!
//! Owns: the dump request/response loop, restarts after an interrupted dump
//! (or one that ran across a hash resize), the get request/response.
//! Must not: filter, cache or write flows or expectations.

use super::codec::{
    ct_msg_type, decode_flow, encode_dump_request, encode_get, CodecError, IPCTNL_MSG_CT_NEW,
};
use super::expect_codec::{
    decode_expectation, encode_expect_dump_request, encode_expect_get, exp_msg_type,
    IPCTNL_MSG_EXP_NEW,
};
use super::socket::{messages, NlSocket, NLM_F_DUMP_INTR};
use super::KernelError;
use crate::expect::{ExpectKey, Expectation};
use crate::flow::{Flow, FlowKey};
use crate::wire::FlowList;

/// What one kind of dump sends and reads back.
struct DumpKind<T> {
    what: &'static str,
    request: fn(&mut Vec<u8>, u32),
    msg_type: u16,
    decode: fn(&[u8]) -> Result<T, CodecError>,
}

/// How often a dump interrupted by table changes is restarted.
const MAX_DUMP_RESTARTS: u32 = 5;
/// Receive buffer for one dump datagram (the kernel sends at most ~32 KiB).
const RECV_BUF: usize = 256 * 1024;
/// How long `get_flow` waits for the kernel's answer.
const GET_TIMEOUT_MS: u64 = 200;

/// Dump the conntrack table of the calling thread's network namespace.
/// Flows the codec cannot decode are skipped (and logged).
pub fn dump_table() -> Result<Vec<Flow>, KernelError> {
    dump(&DumpKind {
        what: "dump",
        request: encode_dump_request,
        msg_type: ct_msg_type(IPCTNL_MSG_CT_NEW),
        decode: decode_flow,
    })
}

/// Dump every expectation (IPv4 and IPv6) of the calling thread's network
/// namespace. Expectations the codec cannot decode are skipped (and
/// logged).
pub fn dump_expectations() -> Result<Vec<Expectation>, KernelError> {
    dump(&DumpKind {
        what: "expectation dump",
        request: encode_expect_dump_request,
        msg_type: exp_msg_type(IPCTNL_MSG_EXP_NEW),
        decode: decode_expectation,
    })
}

/// Read one flow by key (IPCTNL_MSG_CT_GET); `None` when the table lacks
/// it. The kernel sends no event when a helper changes a flow's sequence
/// adjustment (an FTP PORT rewritten under NAT): read the master again
/// after its helper's expectation appears.
pub fn get_flow(key: &FlowKey) -> Result<Option<Flow>, KernelError> {
    get_one(
        &|req| encode_get(req, key, GET_SEQ),
        ct_msg_type(IPCTNL_MSG_CT_NEW),
        decode_flow,
    )
}

/// Read one expectation by its expected tuple in `key`'s zone
/// (IPCTNL_MSG_EXP_GET); `None` when that zone holds none. The answer does
/// not say its zone (decoded, it is 0): that it answers in `key.zone` is
/// what tells the zone.
pub fn get_expectation(key: &ExpectKey) -> Result<Option<Expectation>, KernelError> {
    get_one(
        &|req| encode_expect_get(req, key, GET_SEQ),
        exp_msg_type(IPCTNL_MSG_EXP_NEW),
        decode_expectation,
    )
}

/// The sequence number of a get's request.
const GET_SEQ: u32 = 1;

/// Send the one request `encode` writes and read its answer: a message of
/// `msg_type`, decoded, or `None` for ENOENT.
fn get_one<T>(
    encode: &dyn Fn(&mut Vec<u8>),
    msg_type: u16,
    decode: fn(&[u8]) -> Result<T, CodecError>,
) -> Result<Option<T>, KernelError> {
    let sock = NlSocket::open()?;
    // The kernel answers at once; never wait long for it (the daemon asks
    // from its main loop).
    sock.set_read_timeout(Some(std::time::Duration::from_millis(GET_TIMEOUT_MS)))?;
    let mut req = Vec::with_capacity(128);
    encode(&mut req);
    sock.send(&req)?;
    let mut buf = Vec::with_capacity(RECV_BUF);
    // Bounded: the answer is one message (the item or an error).
    for _ in 0..8 {
        sock.recv(&mut buf)
            .map_err(|e| KernelError::io("recv get", e))?;
        for m in messages(&buf).map_while(Result::ok) {
            if m.seq != GET_SEQ {
                continue;
            }
            match m.error() {
                Some(libc::ENOENT) => return Ok(None),
                Some(0) => continue,
                Some(errno) => return Err(KernelError::Refused { what: "get", errno }),
                None => {}
            }
            if m.kind == msg_type {
                return Ok(Some(decode(m.payload)?));
            }
        }
    }
    Err(KernelError::io(
        "recv get",
        std::io::Error::new(std::io::ErrorKind::InvalidData, "no answer to a get"),
    ))
}

/// Dump the table and keep, in their wire encoding, the flows `keep`
/// accepts: about a third of the memory of a `Vec<Flow>` of them, so a
/// re-read of a big table does not triple the daemon's resident memory.
pub fn dump_table_compact(keep: &dyn Fn(&Flow) -> bool) -> Result<FlowList, KernelError> {
    let mut list = FlowList::default();
    let kind = DumpKind {
        what: "dump",
        request: encode_dump_request,
        msg_type: ct_msg_type(IPCTNL_MSG_CT_NEW),
        decode: decode_flow,
    };
    dump_with(&kind, &mut |step| match step {
        Step::Item(flow) if keep(&flow) => list.push(&flow),
        Step::Item(_) => {}
        // A restarted dump starts the list again.
        Step::Restart => list.clear(),
    })?;
    Ok(list)
}

fn dump<T>(kind: &DumpKind<T>) -> Result<Vec<T>, KernelError> {
    let mut items = Vec::new();
    dump_with(kind, &mut |step| match step {
        Step::Item(item) => items.push(item),
        Step::Restart => items.clear(),
    })?;
    Ok(items)
}

/// What a dump hands its caller.
enum Step<T> {
    Item(T),
    /// The dump was interrupted and starts again: forget its items.
    Restart,
}

/// Run a dump, handing each decoded item to `on_step`, and a restart
/// before an interrupted dump starts again.
fn dump_with<T>(kind: &DumpKind<T>, on_step: &mut dyn FnMut(Step<T>)) -> Result<(), KernelError> {
    let sock = NlSocket::open()?;
    // A big buffer keeps a long dump from stalling on a slow reader.
    sock.set_rcvbuf(4 * 1024 * 1024)?;
    let mut buf = Vec::with_capacity(RECV_BUF);
    let mut attempt = 0;
    loop {
        let seq = attempt + 1;
        let buckets_before = hash_buckets();
        let complete = dump_once(kind, &sock, seq, &mut buf, on_step)?;
        // The kernel marks no dump interrupted by a hash resize, and a
        // dump resumed in a resized table skips or repeats entries.
        match complete && hash_buckets() == buckets_before {
            true => return Ok(()),
            false => {
                on_step(Step::Restart);
                attempt += 1;
                if attempt > MAX_DUMP_RESTARTS {
                    return Err(KernelError::DumpInterrupted(attempt));
                }
                tracing::debug!(attempt, "conntrack dump interrupted, restarting");
            }
        }
    }
}

/// The table's hash size (`nf_conntrack_buckets`), `None` if unreadable.
/// It is written when a resize starts: a dump that sees it change ran
/// while the table was rehashed (`sysctl -w
/// net.netfilter.nf_conntrack_buckets=...`, as `ctsyncd doctor` advises).
fn hash_buckets() -> Option<String> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_buckets").ok()
}

/// One dump; `false` if it was interrupted and must be restarted.
fn dump_once<T>(
    kind: &DumpKind<T>,
    sock: &NlSocket,
    seq: u32,
    buf: &mut Vec<u8>,
    on_step: &mut dyn FnMut(Step<T>),
) -> Result<bool, KernelError> {
    let mut req = Vec::with_capacity(32);
    (kind.request)(&mut req, seq);
    sock.send(&req)?;
    let mut interrupted = false;
    let mut skipped = 0u64;
    loop {
        sock.recv(buf)
            .map_err(|e| KernelError::io("recv dump", e))?;
        for m in messages(buf) {
            let m = m.map_err(|e| {
                KernelError::io(
                    "recv dump",
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            })?;
            if m.seq != seq {
                continue;
            }
            if m.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            if let Some(err) = m.done_error() {
                if err == libc::EINTR || (err == 0 && interrupted) {
                    return Ok(false);
                }
                if err != 0 {
                    return Err(KernelError::Refused {
                        what: kind.what,
                        errno: err,
                    });
                }
                if skipped > 0 {
                    tracing::warn!(skipped, what = kind.what, "undecodable entries skipped");
                }
                return Ok(true);
            }
            if let Some(err) = m.error() {
                if err == libc::EINTR {
                    return Ok(false);
                }
                if err != 0 {
                    return Err(KernelError::Refused {
                        what: kind.what,
                        errno: err,
                    });
                }
                continue;
            }
            if m.kind == kind.msg_type {
                match (kind.decode)(m.payload) {
                    Ok(f) => on_step(Step::Item(f)),
                    Err(e) => {
                        skipped += 1;
                        tracing::debug!(error = %e, "skipping undecodable dump entry");
                    }
                }
            }
        }
    }
}
