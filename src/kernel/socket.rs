//! A thin wrapper over a NETLINK_NETFILTER socket, and a panic-free iterator
//! over the netlink messages in a received buffer.
//!
//! Owns: opening, binding, socket options (receive buffer, NETLINK_CAP_ACK,
//! multicast groups, timeouts), send, blocking receive and batched
//! non-blocking receive (recvmmsg, `RecvBatch`), and netlink header parsing.
//! Must not: know about conntrack attributes (that is `codec`).

use super::KernelError;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Netlink control message types.
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// Netlink header flags.
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;

/// Room for one datagram in a `RecvBatch` (a conntrack event takes a few
/// hundred bytes).
pub const RECV_SLOT_LEN: usize = 8192;

/// Buffers for `NlSocket::try_recv_batch`: many datagrams per system call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

// SAFETY: the raw pointers in `iovecs` and `headers` point into `bufs` and
// `iovecs` of the same value; they are rewritten by `prepare` before every
// use, so moving the value to another thread is sound.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(slots: usize) -> RecvBatch {
        let slots = slots.max(1);
        RecvBatch {
            bufs: vec![0; slots * RECV_SLOT_LEN],
            // SAFETY: iovec and mmsghdr are plain C structs for which all
            // zero bytes is a valid (empty) value.
            iovecs: (0..slots).map(|_| unsafe { std::mem::zeroed() }).collect(),
            headers: (0..slots).map(|_| unsafe { std::mem::zeroed() }).collect(),
            received: 0,
        }
    }

    fn prepare(&mut self) {
        self.received = 0;
        let base = self.bufs.as_mut_ptr();
        for (i, (iov, h)) in self.iovecs.iter_mut().zip(&mut self.headers).enumerate() {
            // SAFETY: slot i lies within `bufs` (slots * RECV_SLOT_LEN bytes).
            iov.iov_base = unsafe { base.add(i * RECV_SLOT_LEN) }.cast();
            iov.iov_len = RECV_SLOT_LEN;
            // SAFETY: as in `new`, all zero bytes is a valid msghdr.
            h.msg_hdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
        }
    }

    /// How many datagrams one call can receive.
    pub fn slots(&self) -> usize {
        self.headers.len()
    }

    /// The datagrams the last `try_recv_batch` received.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.headers[..self.received]
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let len = (h.msg_len as usize).min(RECV_SLOT_LEN);
                &self.bufs[i * RECV_SLOT_LEN..i * RECV_SLOT_LEN + len]
            })
    }
}

/// Read what is queued on `sock` without blocking, many datagrams per
/// system call, handing each to `each` with `out`, while `more(out)` holds
/// and until a call comes back short or finds nothing. Any error but
/// WouldBlock is returned, after what was read before it was handed over.
pub fn read_queued<T>(
    sock: &NlSocket,
    batch: &mut RecvBatch,
    out: &mut T,
    more: impl Fn(&T) -> bool,
    mut each: impl FnMut(&mut T, &[u8]),
) -> Result<(), std::io::Error> {
    while more(out) {
        match sock.try_recv_batch(batch) {
            Ok(n) => {
                for datagram in batch.datagrams() {
                    each(out, datagram);
                }
                if n < batch.slots() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A bound NETLINK_NETFILTER socket.
pub struct NlSocket {
    sock: Socket,
    portid: u32,
}

impl NlSocket {
    /// Open and bind (the kernel picks the port id).
    pub fn open() -> Result<NlSocket, KernelError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| KernelError::io("socket", e))?;
        let addr = sock.bind_auto().map_err(|e| KernelError::io("bind", e))?;
        Ok(NlSocket {
            sock,
            portid: addr.port_number(),
        })
    }

    /// The netlink port id the kernel gave this socket.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Ask for a receive buffer of `bytes` (the kernel doubles the request,
    /// so half is asked for): SO_RCVBUFFORCE, or SO_RCVBUF if that is not
    /// permitted. Returns the size the kernel reports back.
    pub fn set_rcvbuf(&self, bytes: usize) -> Result<usize, KernelError> {
        self.set_buffer(bytes, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF")?;
        self.rcvbuf()
    }

    /// Set a buffer size with the FORCE option (root or CAP_NET_ADMIN),
    /// else the plain one; half of `bytes`, as the kernel doubles it.
    fn set_buffer(
        &self,
        bytes: usize,
        force: libc::c_int,
        plain: libc::c_int,
        what: &'static str,
    ) -> Result<(), KernelError> {
        let half = libc::c_int::try_from(bytes / 2).unwrap_or(libc::c_int::MAX);
        if setsockopt_int(self.as_raw_fd(), libc::SOL_SOCKET, force, half).is_err() {
            setsockopt_int(self.as_raw_fd(), libc::SOL_SOCKET, plain, half)
                .map_err(|e| KernelError::io(what, e))?;
        }
        Ok(())
    }

    /// Ask for a send buffer of `bytes` (halved, as for the receive buffer):
    /// SO_SNDBUFFORCE, or SO_SNDBUF (capped by `wmem_max`) if that is not
    /// permitted. Returns the size the kernel reports back, which bounds
    /// one `send`.
    pub fn set_sndbuf(&self, bytes: usize) -> Result<usize, KernelError> {
        self.set_buffer(bytes, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF")?;
        let size = getsockopt_int(self.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF)
            .map_err(|e| KernelError::io("getsockopt SO_SNDBUF", e))?;
        Ok(usize::try_from(size).unwrap_or(0))
    }

    /// The receive buffer size the kernel reports.
    pub fn rcvbuf(&self) -> Result<usize, KernelError> {
        self.sock
            .get_rx_buf_sz()
            .map_err(|e| KernelError::io("getsockopt SO_RCVBUF", e))
    }

    /// NETLINK_CAP_ACK: error replies carry only the request header.
    pub fn set_cap_ack(&self, on: bool) -> Result<(), KernelError> {
        self.sock
            .set_cap_ack(on)
            .map_err(|e| KernelError::io("setsockopt NETLINK_CAP_ACK", e))
    }

    /// Join a multicast group (1-based group number).
    pub fn add_membership(&self, group: u32) -> Result<(), KernelError> {
        self.sock
            .add_membership(group)
            .map_err(|e| KernelError::io("setsockopt NETLINK_ADD_MEMBERSHIP", e))
    }

    /// SO_RCVTIMEO: a blocking `recv` gives up after `timeout` with
    /// `WouldBlock`. `None` blocks forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), KernelError> {
        let d = timeout.unwrap_or(Duration::ZERO);
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            // Below 1_000_000: fits every suseconds_t.
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(KernelError::io(
                "setsockopt SO_RCVTIMEO",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Non-blocking mode (for use with a poller).
    pub fn set_nonblocking(&self, on: bool) -> Result<(), KernelError> {
        self.sock
            .set_non_blocking(on)
            .map_err(|e| KernelError::io("fcntl O_NONBLOCK", e))
    }

    /// Send one buffer (any number of netlink messages) to the kernel.
    pub fn send(&self, buf: &[u8]) -> Result<(), KernelError> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(buf, &kernel, 0) {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(_) => {
                    return Err(KernelError::io(
                        "send",
                        std::io::Error::new(std::io::ErrorKind::WriteZero, "short netlink send"),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(KernelError::io("send", e)),
            }
        }
    }

    /// Receive one datagram into `buf` (cleared first; its capacity is the
    /// limit). A datagram larger than the capacity is an error, not a silent
    /// truncation. Retries on EINTR.
    pub fn recv(&self, buf: &mut Vec<u8>) -> Result<(), std::io::Error> {
        buf.clear();
        loop {
            let cap = buf.capacity();
            match self.sock.recv(buf, libc::MSG_TRUNC) {
                Ok(n) if n > cap => {
                    buf.clear();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("netlink datagram of {n} bytes truncated to {cap}"),
                    ));
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Receive up to one queued datagram per slot of `batch` in one system call
    /// without waiting (recvmmsg); returns how many arrived (`WouldBlock`
    /// when none was queued). A datagram longer than a slot is an error.
    pub fn try_recv_batch(&self, batch: &mut RecvBatch) -> Result<usize, std::io::Error> {
        batch.prepare();
        let n = loop {
            // SAFETY: `prepare` pointed every header at its own iovec and
            // every iovec at its own RECV_SLOT_LEN bytes of `batch.bufs`, all of
            // which live (unmoved) in `batch` for the whole call.
            let n = unsafe {
                libc::recvmmsg(
                    self.as_raw_fd(),
                    batch.headers.as_mut_ptr(),
                    batch.headers.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        batch.received = n;
        if batch.headers[..n]
            .iter()
            .any(|h| h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("netlink datagram longer than {RECV_SLOT_LEN} bytes truncated"),
            ));
        }
        Ok(n)
    }
}

impl AsRawFd for NlSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Set an `int`-valued socket option (also the netlink group options,
/// which read a `u32`).
pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: i32,
    name: i32,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: value is a valid c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid locals that outlive the call; len
    // holds value's size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of_mut!(value).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// One netlink message, borrowed from a receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// The bytes after the 16-byte header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

impl NlMsg<'_> {
    /// For NLMSG_ERROR: the errno as a positive number (0 = ACK). A
    /// truncated error message reads as EINVAL.
    pub fn error(&self) -> Option<i32> {
        if self.kind != NLMSG_ERROR {
            return None;
        }
        Some(read_error_code(self.payload))
    }

    /// For NLMSG_DONE: the error code the kernel put in the payload
    /// (positive errno, 0 for a clean end).
    pub fn done_error(&self) -> Option<i32> {
        if self.kind != NLMSG_DONE {
            return None;
        }
        if self.payload.len() < 4 {
            return Some(0);
        }
        Some(read_error_code(self.payload))
    }

    /// The netfilter subsystem and message type of a netfilter message.
    pub fn nfnl_type(&self) -> (u8, u8) {
        let [subsys, msg] = self.kind.to_be_bytes();
        (subsys, msg)
    }
}

fn read_error_code(payload: &[u8]) -> i32 {
    match payload.get(..4) {
        Some(b) => {
            let code = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            code.checked_neg().unwrap_or(libc::EINVAL)
        }
        None => libc::EINVAL,
    }
}

/// Iterates over the messages in a buffer. A bad length ends the iteration
/// with one `Err`; it never panics.
pub struct NlMessages<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The messages in a received datagram.
pub fn messages(buf: &[u8]) -> NlMessages<'_> {
    NlMessages { buf, pos: 0 }
}

/// A netlink header whose length does not fit the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad netlink message length {len} at offset {offset} of {total}")]
pub struct BadLength {
    pub len: usize,
    pub offset: usize,
    pub total: usize,
}

impl<'a> Iterator for NlMessages<'a> {
    type Item = Result<NlMsg<'a>, BadLength>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let (offset, total) = (self.pos, self.buf.len());
        let bad = |len| BadLength { len, offset, total };
        let Some(hdr) = rest.get(..NLMSG_HDRLEN) else {
            self.pos = self.buf.len();
            return Some(Err(bad(rest.len())));
        };
        let u32_at = |i: usize| u32::from_ne_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let len = u32_at(0) as usize;
        let kind = u16::from_ne_bytes([hdr[4], hdr[5]]);
        let flags = u16::from_ne_bytes([hdr[6], hdr[7]]);
        let seq = u32_at(8);
        let pid = u32_at(12);
        let Some(payload) = (len >= NLMSG_HDRLEN)
            .then(|| rest.get(NLMSG_HDRLEN..len))
            .flatten()
        else {
            let e = bad(len);
            self.pos = self.buf.len();
            return Some(Err(e));
        };
        self.pos = self.pos.saturating_add((len + 3) & !3);
        Some(Ok(NlMsg {
            kind,
            flags,
            seq,
            pid,
            payload,
        }))
    }
}

/// Append a netlink header plus nfgenmsg; returns the offset of the header
/// so that [`finish_msg`] can fill in the length.
pub fn start_msg(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version 0, res_id 0 (big endian).
    buf.extend_from_slice(&[family, 0, 0, 0]);
    start
}

/// Write the final length into the header started at `start`.
pub fn finish_msg(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len().saturating_sub(start)).unwrap_or(u32::MAX);
    if let Some(slot) = buf.get_mut(start..start + 4) {
        slot.copy_from_slice(&len.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_two_messages_and_an_error() {
        let mut buf = Vec::new();
        let a = start_msg(&mut buf, 0x0100, NLM_F_REQUEST, 7, 2);
        buf.extend_from_slice(&[1, 2, 3]); // unaligned payload
        finish_msg(&mut buf, a);
        buf.resize((buf.len() + 3) & !3, 0);
        // NLMSG_ERROR with -EEXIST and an echoed header.
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&9u32.to_ne_bytes());
        buf.extend_from_slice(&5u32.to_ne_bytes());
        buf.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        buf.extend_from_slice(&[0u8; 16]);
        let msgs: Vec<_> = messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].kind, 0x0100);
        assert_eq!(msgs[0].nfnl_type(), (1, 0));
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(msgs[0].payload, &[2, 0, 0, 0, 1, 2, 3]);
        assert_eq!(msgs[0].error(), None);
        assert_eq!(msgs[1].error(), Some(libc::EEXIST));
        assert_eq!((msgs[1].seq, msgs[1].pid), (9, 5));
    }

    #[test]
    fn bad_length_is_an_error_not_a_panic() {
        let mut buf = vec![0u8; 16];
        buf[0] = 200; // longer than the buffer
        let r: Vec<_> = messages(&buf).collect();
        assert_eq!(r.len(), 1);
        assert!(r[0].is_err());
        buf[0] = 3; // shorter than a header
        assert!(messages(&buf).next().unwrap().is_err());
        assert!(messages(&buf[..5]).next().unwrap().is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for m in messages(&bytes).flatten() {
                let _ = (m.error(), m.done_error(), m.nfnl_type());
            }
        }
    }
}
