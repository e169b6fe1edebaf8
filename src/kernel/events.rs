//! The conntrack event subscription (multicast groups NEW, UPDATE, DESTROY).
//!
//! Owns: the event socket, telling NEW from UPDATE (both IPCTNL_MSG_CT_NEW;
//! NEW carries NLM_F_CREATE|NLM_F_EXCL), overrun detection and receive-buffer
//! growth, counting undecodable events.
//! Must not: resync after an overrun (the caller dumps), filter or cache.

use super::codec::{ct_msg_type, decode_flow, IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_NEW};
use super::socket::{
    messages, read_queued, setsockopt_int, NlSocket, RecvBatch, NLM_F_CREATE, NLM_F_EXCL,
};
use super::{EventKind, KernelError, KernelEvent};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Most events one `recv` call hands back.
const RECV_BATCH: usize = 1024;

/// Multicast groups NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY.
const GROUPS: [u32; 3] = [1, 2, 3];
/// Largest datagram read at once (events are one per datagram, but be
/// generous).
const RECV_BUF: usize = 64 * 1024;
/// Datagrams per recvmmsg call.
const RECV_SLOTS: usize = 64;

/// A socket subscribed to conntrack events.
pub struct EventSocket {
    sock: NlSocket,
    buf: Vec<u8>,
    batch: RecvBatch,
    rcvbuf: usize,
    rcvbuf_max: usize,
    overruns: u64,
    decode_errors: u64,
}

impl EventSocket {
    /// Subscribe. `rcvbuf` is the receive buffer to ask for (0 keeps the
    /// system default); on each overrun it doubles, up to `rcvbuf_max`.
    pub fn open(rcvbuf: usize, rcvbuf_max: usize) -> Result<EventSocket, KernelError> {
        let sock = NlSocket::open()?;
        for g in GROUPS {
            sock.add_membership(g)?;
        }
        let size = if rcvbuf > 0 {
            sock.set_rcvbuf(rcvbuf)?
        } else {
            sock.rcvbuf()?
        };
        Ok(EventSocket {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
            batch: RecvBatch::new(RECV_SLOTS),
            rcvbuf: size,
            rcvbuf_max,
            overruns: 0,
            decode_errors: 0,
        })
    }

    /// Block until a datagram arrives and append its events to `out`, with
    /// whatever else is queued already (up to a batch), so a burst reaches
    /// the daemon in batches rather than one event at a time.
    /// ENOBUFS grows the buffer (up to the maximum) and returns
    /// [`KernelError::Overrun`]: events were lost, the caller should resync.
    pub fn recv(&mut self, out: &mut Vec<KernelEvent>) -> Result<(), KernelError> {
        if let Err(e) = self.sock.recv(&mut self.buf) {
            return Err(self.failed(e));
        }
        decode_datagram(&self.buf, out, &mut self.decode_errors);
        self.recv_queued(out)
    }

    /// `recv` without blocking: append what is already queued (up to a
    /// batch), possibly nothing. Many datagrams per system call.
    pub fn recv_queued(&mut self, out: &mut Vec<KernelEvent>) -> Result<(), KernelError> {
        let limit = out.len() + RECV_BATCH;
        let errors = &mut self.decode_errors;
        // Reports the overrun with what was read before it.
        read_queued(
            &self.sock,
            &mut self.batch,
            out,
            |out| out.len() < limit,
            |out, datagram| decode_datagram(datagram, out, errors),
        )
        .map_err(|e| self.failed(e))
    }

    /// A receive error: on ENOBUFS count the overrun and grow the buffer.
    fn failed(&mut self, e: std::io::Error) -> KernelError {
        if e.raw_os_error() == Some(libc::ENOBUFS) {
            self.overruns += 1;
            let doubled = self.rcvbuf.saturating_mul(2);
            if doubled <= self.rcvbuf_max {
                match self.sock.set_rcvbuf(doubled) {
                    Ok(size) => {
                        self.rcvbuf = size;
                        tracing::warn!(bytes = self.rcvbuf, "event socket buffer doubled");
                    }
                    Err(err) => return err,
                }
            }
            return KernelError::Overrun;
        }
        KernelError::io("recv event", e)
    }

    /// A handle that turns the subscription off and on from another thread
    /// while this socket is being read. It must not outlive the socket.
    pub fn switch(&self) -> EventSwitch {
        EventSwitch {
            fd: self.sock.as_raw_fd(),
        }
    }

    /// The receive buffer size the kernel reports.
    pub fn buffer_size(&self) -> usize {
        self.rcvbuf
    }

    /// How many overruns (ENOBUFS) were seen.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// How many event messages could not be decoded.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// This socket's netlink port id.
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Give up a blocking `recv` after `timeout` (`Io` error of kind
    /// WouldBlock); `None` blocks forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), KernelError> {
        self.sock.set_read_timeout(timeout)
    }

    /// Non-blocking mode, for a poller (`recv` then fails with WouldBlock).
    pub fn set_nonblocking(&self, on: bool) -> Result<(), KernelError> {
        self.sock.set_nonblocking(on)
    }
}

impl AsRawFd for EventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Turns an event socket's subscription off and on. While it is off the
/// kernel generates no events for us at all (cheaper for its own writes,
/// such as a large commit); whatever changed meanwhile must be re-read.
#[derive(Clone, Copy, Debug)]
pub struct EventSwitch {
    fd: std::os::fd::RawFd,
}

/// SOL_NETLINK and its membership options (linux/netlink.h).
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_DROP_MEMBERSHIP: libc::c_int = 2;

impl EventSwitch {
    /// Subscribe (`true`) or unsubscribe (`false`) every conntrack group.
    /// All or nothing when turning off: a group that cannot be left puts
    /// back the ones already left, so a failed pause leaves the daemon
    /// hearing every event. Turning on tries every group.
    pub fn set(&self, on: bool) -> Result<(), KernelError> {
        switch_groups(&GROUPS, on, |group, join| {
            let option = if join {
                NETLINK_ADD_MEMBERSHIP
            } else {
                NETLINK_DROP_MEMBERSHIP
            };
            // Groups 1..=3: a c_int holds each as the u32 the kernel reads.
            setsockopt_int(self.fd, SOL_NETLINK, option, group as libc::c_int)
        })
        .map_err(|e| KernelError::io("setsockopt NETLINK_(ADD|DROP)_MEMBERSHIP", e))
    }
}

/// Join (`on`) or leave every group through `apply(group, join)`. Leaving
/// stops at the first failure and joins again what it left; joining tries
/// them all. The first error is returned.
fn switch_groups(
    groups: &[u32],
    on: bool,
    mut apply: impl FnMut(u32, bool) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut first_error = None;
    for (i, &group) in groups.iter().enumerate() {
        if let Err(e) = apply(group, on) {
            if !on {
                for &left in &groups[..i] {
                    // Best effort: joining a group we were in cannot fail
                    // for want of room, and the error to report is `e`.
                    let _ = apply(left, true);
                }
                return Err(e);
            }
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Append the events in one netlink datagram to `out`; count what does not
/// decode. (Crate-visible for `fuzz_entry`.)
pub(crate) fn decode_datagram(
    datagram: &[u8],
    out: &mut Vec<KernelEvent>,
    decode_errors: &mut u64,
) {
    let types = (
        ct_msg_type(IPCTNL_MSG_CT_NEW),
        ct_msg_type(IPCTNL_MSG_CT_DELETE),
    );
    out.extend(decode_events(
        datagram,
        types,
        decode_errors,
        |kind, payload, portid| decode_flow(payload).map(|flow| KernelEvent { kind, flow, portid }),
    ));
}

/// The events of one netlink datagram: messages of the `(new, delete)`
/// types, told apart as NEW (CREATE|EXCL), UPDATE and DESTROY, decoded by
/// `decode`; what does not decode is counted and skipped. Flow and
/// expectation events share it.
pub(crate) fn decode_events<'a, E, D>(
    datagram: &'a [u8],
    (new, delete): (u16, u16),
    decode_errors: &'a mut u64,
    decode: D,
) -> impl Iterator<Item = E> + 'a
where
    D: Fn(EventKind, &[u8], u32) -> Result<E, super::CodecError> + 'a,
{
    let mut stop = false;
    messages(datagram).filter_map(move |m| {
        if stop {
            return None;
        }
        let Ok(m) = m else {
            *decode_errors += 1;
            stop = true;
            return None;
        };
        let kind = if m.kind == new {
            if m.flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 {
                EventKind::New
            } else {
                EventKind::Update
            }
        } else if m.kind == delete {
            EventKind::Destroy
        } else {
            return None;
        };
        match decode(kind, m.payload, m.pid) {
            Ok(event) => Some(event),
            Err(e) => {
                *decode_errors += 1;
                tracing::debug!(error = %e, "undecodable ctnetlink event");
                None
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::switch_groups;
    use std::io::{Error, ErrorKind};

    /// Records each call; fails the given (group, join) once.
    fn recorder(
        fail: (u32, bool),
        calls: &mut Vec<(u32, bool)>,
    ) -> impl FnMut(u32, bool) -> std::io::Result<()> + '_ {
        move |group, join| {
            calls.push((group, join));
            if (group, join) == fail {
                Err(Error::new(ErrorKind::OutOfMemory, "no room"))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn a_pause_that_fails_partway_joins_again_what_it_left() {
        let mut calls = Vec::new();
        let result = switch_groups(&[1, 2, 3], false, recorder((3, false), &mut calls));
        assert!(result.is_err());
        assert_eq!(
            calls,
            vec![(1, false), (2, false), (3, false), (1, true), (2, true)]
        );
    }

    #[test]
    fn a_resume_that_fails_on_one_group_still_joins_the_others() {
        let mut calls = Vec::new();
        let result = switch_groups(&[1, 2, 3], true, recorder((1, true), &mut calls));
        assert!(result.is_err());
        assert_eq!(calls, vec![(1, true), (2, true), (3, true)]);
    }

    #[test]
    fn a_switch_without_failures_touches_each_group_once() {
        for on in [false, true] {
            let mut calls = Vec::new();
            let result = switch_groups(&[1, 2, 3], on, recorder((9, on), &mut calls));
            assert!(result.is_ok());
            assert_eq!(calls, vec![(1, on), (2, on), (3, on)]);
        }
    }
}
