//! Authenticated and encrypted sync: keys, sealing, replay windows and the
//! admission of peers' epochs.
//!
//! Owns: `keys` (key files, the key ring, new keys), `seal` (one datagram
//! sealed or opened with XChaCha20-Poly1305), `replay` (one sender's
//! replay window) and `guard` (the gate a node's datagrams pass, both
//! ways). Must not: do I/O other than reading a key file, decode bodies, or
//! know replication: the sync core calls the guard at its edges.

pub mod guard;
pub mod keys;
pub mod replay;
pub mod seal;

pub use guard::{AuthDrop, AuthStats, Guard, KeyUse, Opened};
pub use keys::{load_key_file, new_key_line, parse_key_file, Key, KeyFileError, KeyRing};
