//! The control plane: requests a client sends over the daemon's UNIX socket,
//! the replies, the server and client ends, the command line, and the text
//! and JSON renderings of caches and counters.
//!
//! Owns: the control protocol (ours: a JSON line per request, a JSON header
//! line plus body per reply; and conntrackd's native 4-byte request codes),
//! conntrackd's exact output layouts, and the CLI grammar.
//! Must not: hold daemon state. The server forwards each request over a
//! channel to the task that owns the state and writes back what it answers.

pub mod cli;
pub mod client;
pub mod render;
pub mod request;
pub mod server;

pub use client::{send, send_to, ClientError, Outcome};
pub use render::{CacheBlock, LinkBlock, PeerBlock, StatsSnapshot};
pub use request::{BodyStream, CacheSel, Envelope, Reply, Request, StatsSection};
