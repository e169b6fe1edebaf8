//! The daemon's side of authenticated sync: loading the key file at start
//! and on reload, the warning when there is none, and the log of refused
//! datagrams (the first per source address and reason; counters take the
//! rest).
//!
//! Owns: `load_keys`, `AuthLog`, `Daemon::reload_keys`. Must not: seal,
//! open or judge datagrams (`crate::auth` and the sync core do).

use super::{Daemon, DaemonError};
use crate::auth::{load_key_file, AuthDrop, KeyRing};
use crate::config::Config;
use std::collections::HashSet;
use std::net::SocketAddr;

/// Source addresses remembered for "said once" log lines.
const LOGGED_SOURCES_MAX: usize = 256;

/// The key ring of `[auth] key_file` (`None`: not configured, with the
/// warning every operator must see).
pub(super) fn load_keys(config: &Config) -> Result<Option<KeyRing>, DaemonError> {
    let Some(path) = &config.auth.key_file else {
        let ports: Vec<String> = config.links.iter().map(|l| l.port.to_string()).collect();
        tracing::warn!(
            "sync traffic is NOT authenticated: any host that can send UDP to the sync port ({}) can insert conntrack entries here{}. Set [auth] key_file (ctsyncd genkey).",
            ports.join(", "),
            if config.sync.warm_standby {
                " (with warm_standby: into the kernel table)"
            } else {
                ""
            }
        );
        return Ok(None);
    };
    let ring = load_key_file(path).map_err(|e| DaemonError::Sync(e.to_string()))?;
    tracing::info!(keys = %describe(&ring), "sync datagrams are sealed and authenticated");
    Ok(Some(ring))
}

/// "1 (check 0a1b2c3d, sends), 2 (check ...)": ids and check values only.
pub(crate) fn describe(ring: &KeyRing) -> String {
    let send = ring.send_key().id;
    ring.summary()
        .iter()
        .map(|(id, check)| {
            let sends = if *id == send { ", sends" } else { "" };
            format!("{id} (check {check:08x}{sends})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Says once per source address and reason why its datagrams are refused.
#[derive(Debug, Default)]
pub(super) struct AuthLog {
    said: HashSet<(SocketAddr, &'static str)>,
}

impl AuthLog {
    pub fn note(&mut self, from: SocketAddr, drop: AuthDrop) {
        let why = match drop {
            AuthDrop::Missing => {
                "plain (unauthenticated) sync datagrams refused: this node requires keys ([auth] key_file); is the peer configured without one?"
            }
            AuthDrop::NotConfigured => {
                "sealed sync datagrams refused: the peer uses keys, this node has no [auth] key_file"
            }
            AuthDrop::UnknownKey => {
                "sync datagrams sealed with a key id not loaded here: add the key (reload-keys) or check the peer's key file"
            }
            AuthDrop::BadTag => {
                "sync datagrams fail authentication: a different key or [auth] cluster name, or forged"
            }
            // Replays, multi-link duplicates and epochs awaiting their
            // challenge are counted, not logged.
            _ => return,
        };
        if self.said.len() >= LOGGED_SOURCES_MAX || !self.said.insert((from, drop.name())) {
            return;
        }
        tracing::warn!(source = %from, reason = drop.name(), "{why}");
    }
}

impl Daemon {
    /// Re-read the key file: new keys take effect at once; a bad file keeps
    /// the keys in use. Returns what is loaded, or why nothing changed.
    pub(super) fn reload_keys(&mut self) -> Result<String, String> {
        let Some(path) = self.config.auth.key_file.clone() else {
            return Err(
                "no [auth] key_file configured (authentication is turned on at start)".into(),
            );
        };
        match load_key_file(&path) {
            Ok(ring) => {
                let keys = describe(&ring);
                self.node.set_keys(ring);
                tracing::info!(keys = %keys, "sync keys reloaded");
                Ok(format!("sync keys reloaded: {keys}\n"))
            }
            Err(e) => {
                tracing::error!(error = %e, "sync keys not reloaded, the old keys stay");
                Err(format!("{e} (the old keys stay)"))
            }
        }
    }
}
