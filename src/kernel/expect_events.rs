//! The expectation event subscription (multicast groups EXP_NEW, EXP_UPDATE,
//! EXP_DESTROY).
//!
//! Owns: the expectation event socket, telling NEW (IPCTNL_MSG_EXP_NEW with
//! NLM_F_CREATE|NLM_F_EXCL) from DESTROY (IPCTNL_MSG_EXP_DELETE), overrun
//! detection, counting undecodable events.
//! Must not: resync after an overrun (the caller dumps), filter or cache.
//!
//! Kernel behaviour (6.18): only NEW and DESTROY are ever sent (an
//! expectation does not change; EXP_UPDATE is joined in case a kernel
//! starts to). The kernel reports an expectation only when its master
//! carries the event extension, which it adds to new flows while someone
//! listens: open this socket before the connections whose expectations it
//! should see. A DESTROY follows the expected connection's arrival, a
//! timeout, a delete or the master's end.

use super::events::decode_events;
use super::expect_codec::{
    decode_expectation, exp_msg_type, IPCTNL_MSG_EXP_DELETE, IPCTNL_MSG_EXP_NEW,
};
use super::socket::{read_queued, NlSocket, RecvBatch};
use super::{EventKind, KernelError};
use crate::expect::Expectation;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Multicast groups NFNLGRP_CONNTRACK_EXP_NEW, _EXP_UPDATE, _EXP_DESTROY.
const GROUPS: [u32; 3] = [4, 5, 6];
/// Largest datagram read at once.
const RECV_BUF: usize = 64 * 1024;
/// Datagrams per recvmmsg call when draining what is queued.
const RECV_SLOTS: usize = 16;
/// Most events one `recv` call hands back.
const RECV_BATCH: usize = 256;

/// One expectation event from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectEvent {
    /// `New` or `Destroy` (`Update` only if a kernel ever sends one).
    pub kind: EventKind,
    pub expect: Expectation,
    /// `nlmsg_pid`: the port id of the socket whose request caused the
    /// change (a [`super::Writer`]'s creations carry its
    /// [`super::Writer::portid`]), 0 for the kernel's own helpers and timers.
    pub portid: u32,
}

/// A socket subscribed to expectation events.
pub struct ExpectEventSocket {
    sock: NlSocket,
    buf: Vec<u8>,
    batch: RecvBatch,
    overruns: u64,
    decode_errors: u64,
}

impl ExpectEventSocket {
    /// Subscribe. `rcvbuf` is the receive buffer to ask for (0 keeps the
    /// system default).
    pub fn open(rcvbuf: usize) -> Result<ExpectEventSocket, KernelError> {
        let sock = NlSocket::open()?;
        for g in GROUPS {
            sock.add_membership(g)?;
        }
        if rcvbuf > 0 {
            sock.set_rcvbuf(rcvbuf)?;
        }
        Ok(ExpectEventSocket {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
            batch: RecvBatch::new(RECV_SLOTS),
            overruns: 0,
            decode_errors: 0,
        })
    }

    /// Block until a datagram arrives and append its events to `out`, with
    /// whatever else is queued already (up to a batch). ENOBUFS returns
    /// [`KernelError::Overrun`]: events were lost, the caller should dump.
    pub fn recv(&mut self, out: &mut Vec<ExpectEvent>) -> Result<(), KernelError> {
        if let Err(e) = self.sock.recv(&mut self.buf) {
            return Err(self.failed(e));
        }
        decode_datagram(&self.buf, out, &mut self.decode_errors);
        let limit = out.len() + RECV_BATCH;
        let errors = &mut self.decode_errors;
        read_queued(
            &self.sock,
            &mut self.batch,
            out,
            |out| out.len() < limit,
            |out, datagram| decode_datagram(datagram, out, errors),
        )
        .map_err(|e| self.failed(e))
    }

    fn failed(&mut self, e: std::io::Error) -> KernelError {
        if e.raw_os_error() == Some(libc::ENOBUFS) {
            self.overruns += 1;
            return KernelError::Overrun;
        }
        KernelError::io("recv expectation event", e)
    }

    /// Give up a blocking `recv` after `timeout` (`Io` error of kind
    /// WouldBlock); `None` blocks forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), KernelError> {
        self.sock.set_read_timeout(timeout)
    }

    /// The receive buffer size the kernel reports.
    pub fn buffer_size(&self) -> Result<usize, KernelError> {
        self.sock.rcvbuf()
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
}

impl AsRawFd for ExpectEventSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Append the expectation events in one netlink datagram to `out`; count
/// what does not decode.
pub(crate) fn decode_datagram(
    datagram: &[u8],
    out: &mut Vec<ExpectEvent>,
    decode_errors: &mut u64,
) {
    let types = (
        exp_msg_type(IPCTNL_MSG_EXP_NEW),
        exp_msg_type(IPCTNL_MSG_EXP_DELETE),
    );
    out.extend(decode_events(
        datagram,
        types,
        decode_errors,
        |kind, payload, portid| {
            decode_expectation(payload).map(|expect| ExpectEvent {
                kind,
                expect,
                portid,
            })
        },
    ));
}
