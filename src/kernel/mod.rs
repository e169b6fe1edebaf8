//! The kernel layer: the only code in ctsync that speaks ctnetlink
//! (netlink family NETLINK_NETFILTER, subsystem CTNETLINK).
//!
//! Owns: the netlink sockets (`socket`), the byte codec between [`Flow`] and
//! ctnetlink attributes (`codec`) and between expectations and theirs
//! (`expect_codec`), table and expectation dumps (`dump`), the event
//! subscriptions (`events`, `expect_events`) and batched writes of flows
//! (`write`) and expectations (`expect_write`).
//! Must not: decide what is replicated, keep caches, read the clock for
//! timeouts (callers decide timeouts), or run the `conntrack` tool.
//!
//! Every socket here works in the network namespace of the thread that opens
//! it.

pub mod codec;
pub mod dump;
pub mod events;
pub mod expect_codec;
pub mod expect_events;
pub mod expect_write;
pub mod socket;
pub mod sysctl;
pub mod write;

use crate::flow::Flow;

pub use codec::{CodecError, CreateOptions};
pub use dump::{dump_expectations, dump_table, get_expectation, get_flow};
pub use events::EventSocket;
pub use expect_events::{ExpectEvent, ExpectEventSocket};
pub use expect_write::{ExpectOp, ExpectWriteReport};
pub use write::{WriteOp, WriteReport, Writer};

/// Errors of the kernel layer.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A socket call failed (open, bind, setsockopt, send, recv).
    #[error("netlink {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The event socket's receive buffer overran (ENOBUFS): events were lost
    /// and the caller should resync with a dump.
    #[error("netlink event socket overrun: events were lost")]
    Overrun,
    /// The kernel answered a request with an error.
    #[error("kernel refused {what}: {}", errno_name(*errno))]
    Refused { what: &'static str, errno: i32 },
    /// A message from the kernel could not be decoded.
    #[error("malformed ctnetlink message: {0}")]
    Decode(#[from] CodecError),
    /// A dump was interrupted by table changes more often than we retry.
    #[error("conntrack dump interrupted {0} times in a row")]
    DumpInterrupted(u32),
}

impl KernelError {
    pub(crate) fn io(op: &'static str, source: std::io::Error) -> KernelError {
        KernelError::Io { op, source }
    }

    /// The OS error number behind this error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Io { source, .. } => source.raw_os_error(),
            KernelError::Refused { errno, .. } => Some(*errno),
            KernelError::Overrun => Some(libc::ENOBUFS),
            _ => None,
        }
    }
}

/// `EEXIST (errno 17: File exists)`-style text for an errno.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EEXIST => "EEXIST",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EBUSY => "EBUSY",
        libc::EPERM => "EPERM",
        libc::ENOMEM => "ENOMEM",
        libc::ENOSPC => "ENOSPC",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAGAIN => "EAGAIN",
        libc::ENOBUFS => "ENOBUFS",
        libc::EINTR => "EINTR",
        libc::ETIME => "ETIME",
        libc::ERANGE => "ERANGE",
        _ => "E?",
    };
    format!(
        "{name} (errno {errno}: {})",
        std::io::Error::from_raw_os_error(errno)
    )
}

/// What kind of change an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    New,
    Update,
    Destroy,
}

/// One conntrack event from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    pub kind: EventKind,
    pub flow: Flow,
    /// `nlmsg_pid` of the event: the netlink port id of the socket whose
    /// request caused the change, 0 for changes driven by packets or timers.
    pub portid: u32,
}
