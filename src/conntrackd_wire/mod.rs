//! conntrackd 1.4.7's own sync protocol, sans-IO, for a link that talks to
//! a conntrackd peer during a rolling migration (`[[link]] protocol =
//! "conntrackd"`): the header and its validation (`header`), the TLV
//! framing (`tlv`), flows and expectations as attributes (`flow_attrs`,
//! `expect_attrs`), whole messages and datagram packing (`message`), the
//! receive sequence tracking (`rxseq`) and the FTFW, NOTRACK and ALARM
//! state machines (`node`).
//!
//! Owns: nothing but the wiring of its parts. Must not: do I/O, read the
//! clock or talk to the kernel; ctsync's own protocol lives in
//! `crate::wire` and `crate::sync` and shares nothing with this one.

pub mod expect_attrs;
pub mod flow_attrs;
pub mod header;
pub mod message;
pub mod node;
pub mod rxseq;
pub mod tlv;

pub use flow_attrs::{Codec, PeerLevel};
pub use header::{split, Control, Header, MsgType, Piece, Reject};
pub use message::{decode_data, encode_object, Change, Key, Object, Op, Packer};
pub use node::{CdConfig, CdMode, CdNode, CdStats};

#[cfg(test)]
mod tests;
