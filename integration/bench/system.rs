//! A system under test: two firewalls (primary A, backup B) in the lab's
//! namespaces running one sync daemon, driven through the same few verbs
//! for ctsyncd and conntrackd; and the ctsyncd implementation of them.
//!
//! Must not: time or measure anything (the phases in `mod.rs` do).

use super::BenchError;
use crate::lab::{Lab, LabSpec, Node};
use serde_json::Value;
use std::time::Duration;

/// Which firewall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// How long a daemon may take to answer after it was started.
pub const START_WITHIN: Duration = Duration::from_secs(30);

/// The verbs every phase uses.
pub trait System {
    fn name(&self) -> &'static str;
    /// The namespace of a firewall.
    fn ns(&self, side: Side) -> &str;
    /// Start the daemon; returns once its control socket answers.
    fn start(&mut self, side: Side) -> Result<(), BenchError>;
    /// Stop the daemon (SIGTERM, reaped).
    fn stop(&mut self, side: Side);
    fn pid(&self, side: Side) -> Option<u32>;
    /// Flows in the internal cache (our kernel's flows).
    fn internal_active(&self, side: Side) -> Result<u64, BenchError>;
    /// Flows in the external cache (the peer's flows).
    fn external_active(&self, side: Side) -> Result<u64, BenchError>;
    /// Commit the external cache to the kernel; returns when done.
    fn commit(&self, side: Side) -> Result<(), BenchError>;
    /// Where the last commit's time went, if the daemon says.
    fn commit_clock(&self, _side: Side) -> Result<Option<CommitClock>, BenchError> {
        Ok(None)
    }
    /// What an HA agent runs after starting a backup daemon empty.
    fn after_restart(&self, side: Side) -> Result<(), BenchError>;
    /// `-R`: re-read the kernel table into the internal cache; returns
    /// when the daemon says it is done.
    fn reread(&self, side: Side) -> Result<(), BenchError>;
    /// The control socket (both daemons answer conntrackd's native
    /// requests on it).
    fn control_socket(&self, side: Side) -> std::path::PathBuf;
}

/// The daemon's account of its last commit (seconds).
#[derive(Clone, Copy, Debug)]
pub struct CommitClock {
    /// From the request to the first write into the kernel.
    pub first_write: f64,
    /// The kernel taking the writes.
    pub in_kernel: f64,
    /// The writing thread waiting, runnable, for a CPU.
    pub writer_runqueue: f64,
}

/// ctsyncd in the lab, with the lab's TOML, run as the shipped unit runs
/// it: as an unprivileged user with CAP_NET_ADMIN and CAP_SYS_NICE alone
/// (see `Lab::run_as_unit_user`).
pub struct Ctsyncd {
    pub lab: Lab,
    /// Key files the daemons read, handed to their user at the first start.
    key_files: Vec<std::path::PathBuf>,
}

impl Ctsyncd {
    /// Two firewalls with the daemon's own defaults, plus `sync_extra`
    /// lines for `[sync]`.
    pub fn new(sync_extra: &str) -> Ctsyncd {
        Ctsyncd {
            lab: Lab::new(LabSpec {
                // The daemon's default; the lab's 5 s suits tests only.
                reconcile_interval_s: 60,
                sync_extra: sync_extra.to_string(),
                ..LabSpec::default()
            }),
            key_files: Vec::new(),
        }
    }

    /// As `new("")`, with `[auth] key_file`: a fresh key (mode 0600, handed
    /// to the daemons' user at their first start) in a directory of its
    /// own.
    pub fn with_keys() -> Result<Ctsyncd, BenchError> {
        let dir = Ctsyncd::keys_dir();
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::Io(e.to_string()))?;
        let file = dir.join("sync.keys");
        let line = ctsync::auth::new_key_line(1).map_err(|e| BenchError::Io(e.to_string()))?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)
                .map_err(|e| BenchError::Io(format!("{}: {e}", file.display())))?;
            writeln!(f, "{line}").map_err(|e| BenchError::Io(e.to_string()))?;
        }
        Ok(Ctsyncd {
            lab: Lab::new(LabSpec {
                reconcile_interval_s: 60,
                tables: format!("[auth]\nkey_file = \"{}\"\n\n", file.display()),
                ..LabSpec::default()
            }),
            key_files: vec![file],
        })
    }

    fn keys_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("cts-bench-keys-{}", std::process::id()))
    }

    /// Remove the key `with_keys` wrote.
    pub fn remove_keys(&self) {
        let _ = std::fs::remove_dir_all(Ctsyncd::keys_dir());
    }

    fn node(&self, side: Side) -> &Node {
        match side {
            Side::A => &self.lab.a,
            Side::B => &self.lab.b,
        }
    }

    fn node_mut(&mut self, side: Side) -> &mut Node {
        match side {
            Side::A => &mut self.lab.a,
            Side::B => &mut self.lab.b,
        }
    }

    fn client(&self, side: Side, args: &[&str]) -> Result<String, BenchError> {
        let node = self.node(side);
        let out = node.ctl(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(BenchError::Command(format!(
                "ctsyncd {args:?} on {}: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    pub fn stats(&self, side: Side) -> Result<Value, BenchError> {
        let text = self.client(side, &["-s", "--json"])?;
        serde_json::from_str(&text)
            .map_err(|e| BenchError::Parse(format!("ctsyncd -s --json: {e}")))
    }

    fn active(&self, side: Side, cache: &str) -> Result<u64, BenchError> {
        self.stats(side)?[cache]["active"]
            .as_u64()
            .ok_or_else(|| BenchError::Parse(format!("ctsyncd -s --json: no {cache}.active")))
    }
}

impl System for Ctsyncd {
    fn name(&self) -> &'static str {
        "ctsyncd"
    }

    fn ns(&self, side: Side) -> &str {
        &self.node(side).ns
    }

    fn start(&mut self, side: Side) -> Result<(), BenchError> {
        if self.lab.a.unit_binary.is_none() {
            let keys: Vec<&std::path::Path> = self.key_files.iter().map(|k| k.as_path()).collect();
            self.lab
                .run_as_unit_user(&keys)
                .map_err(|e| BenchError::Daemon(format!("run as the unit's user: {e}")))?;
        }
        self.node_mut(side)
            .try_start(START_WITHIN)
            .map_err(BenchError::Daemon)
    }

    fn stop(&mut self, side: Side) {
        self.node_mut(side).kill(libc::SIGTERM);
    }

    fn pid(&self, side: Side) -> Option<u32> {
        self.node(side).pid()
    }

    fn internal_active(&self, side: Side) -> Result<u64, BenchError> {
        self.active(side, "internal")
    }

    fn external_active(&self, side: Side) -> Result<u64, BenchError> {
        self.active(side, "external")
    }

    fn commit(&self, side: Side) -> Result<(), BenchError> {
        self.client(side, &["-c"]).map(|_| ())
    }

    fn commit_clock(&self, side: Side) -> Result<Option<CommitClock>, BenchError> {
        let stats = self.stats(side)?;
        let us = |key: &str| {
            stats["commit"][key]
                .as_f64()
                .map(|us| us / 1e6)
                .ok_or_else(|| BenchError::Parse(format!("ctsyncd -s --json: no commit.{key}")))
        };
        Ok(Some(CommitClock {
            first_write: us("last_first_write_us")?,
            in_kernel: us("last_in_kernel_us")?,
            writer_runqueue: us("last_writer_runqueue_us")?,
        }))
    }

    fn after_restart(&self, _side: Side) -> Result<(), BenchError> {
        // A restarted ctsyncd resyncs with its peers by itself.
        Ok(())
    }

    fn reread(&self, side: Side) -> Result<(), BenchError> {
        self.client(side, &["-R"]).map(|_| ())
    }

    fn control_socket(&self, side: Side) -> std::path::PathBuf {
        self.node(side).socket.clone()
    }
}
