//! The conntrack event subscription (multicast groups NEW, UPDATE, DESTROY).
//!
//! Owns: the event socket, telling NEW from UPDATE (both IPCTNL_MSG_CT_NEW;
//! NEW carries NLM_F_CREATE|NLM_F_EXCL), overrun detection and receive-buffer
//! growth, counting undecodable events.
//! Must not: resync after an overrun (the caller dumps), filter or cache.

use super::codec::{ct_msg_type, decode_flow, IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_NEW};
use super::socket::{messages, NlSocket, NLM_F_CREATE, NLM_F_EXCL};
use super::{EventKind, KernelError, KernelEvent};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Multicast groups NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY.
const GROUPS: [u32; 3] = [1, 2, 3];
/// Largest datagram read at once (events are one per datagram, but be
/// generous).
const RECV_BUF: usize = 64 * 1024;

/// A socket subscribed to conntrack events.
pub struct EventSocket {
    sock: NlSocket,
    buf: Vec<u8>,
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
            rcvbuf: size,
            rcvbuf_max,
            overruns: 0,
            decode_errors: 0,
        })
    }

    /// Block until a datagram arrives and append its events to `out`.
    /// ENOBUFS grows the buffer (up to the maximum) and returns
    /// [`KernelError::Overrun`]: events were lost, the caller should resync.
    pub fn recv(&mut self, out: &mut Vec<KernelEvent>) -> Result<(), KernelError> {
        if let Err(e) = self.sock.recv(&mut self.buf) {
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                self.overruns += 1;
                let doubled = self.rcvbuf.saturating_mul(2);
                if doubled <= self.rcvbuf_max {
                    self.rcvbuf = self.sock.set_rcvbuf(doubled)?;
                    tracing::warn!(bytes = self.rcvbuf, "event socket buffer doubled");
                }
                return Err(KernelError::Overrun);
            }
            return Err(KernelError::io("recv event", e));
        }
        for m in messages(&self.buf) {
            let Ok(m) = m else {
                self.decode_errors += 1;
                break;
            };
            let kind = if m.kind == ct_msg_type(IPCTNL_MSG_CT_NEW) {
                if m.flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 {
                    EventKind::New
                } else {
                    EventKind::Update
                }
            } else if m.kind == ct_msg_type(IPCTNL_MSG_CT_DELETE) {
                EventKind::Destroy
            } else {
                continue;
            };
            match decode_flow(m.payload) {
                Ok(flow) => out.push(KernelEvent {
                    kind,
                    flow,
                    portid: m.pid,
                }),
                Err(e) => {
                    self.decode_errors += 1;
                    tracing::debug!(error = %e, "undecodable conntrack event");
                }
            }
        }
        Ok(())
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
