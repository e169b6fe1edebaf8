//! conntrackd 1.4.7 as a system under test: its configuration for the
//! lab's two firewalls (FTFW over UDP on sync0), its daemon as a child
//! process in a namespace (always stopped on drop), and its client.
//!
//! Must not: leave a conntrackd running, or touch anything outside the
//! lab's directory and namespaces.

use super::system::{Side, System, START_WITHIN};
use super::BenchError;
use crate::lab::{Lab, LabSpec};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One conntrackd: its files and, while it runs, its process.
struct Daemon {
    ns: String,
    conf: PathBuf,
    lock: PathBuf,
    out: PathBuf,
    child: Option<Child>,
}

/// conntrackd.conf for one node of the lab. `hash_limit` bounds each cache.
pub fn config_text(dir: &Path, name: &str, local: &str, peer: &str, hash_limit: u64) -> String {
    let d = dir.display();
    format!(
        "General {{\n\
         \tHashSize 1048576\n\
         \tHashLimit {hash_limit}\n\
         \tLockFile {d}/ctd-{name}.lock\n\
         \tUNIX {{ Path {d}/ctd-{name}.sock }}\n\
         \tSyslog off\n\
         \tLogFile {d}/ctd-{name}.log\n\
         \tNetlinkBufferSize 8388608\n\
         \tNetlinkBufferSizeMaxGrowth 67108864\n\
         \tFilter From Kernelspace {{\n\
         \t\tProtocol Accept {{ TCP UDP ICMP IPv6-ICMP SCTP GRE }}\n\
         \t\tAddress Ignore {{\n\
         \t\t\tIPv4_address 127.0.0.1\n\
         \t\t\tIPv4_address 198.18.0.0/24\n\
         \t\t\tIPv6_address ::1\n\
         \t\t}}\n\
         \t}}\n\
         }}\n\
         Sync {{\n\
         \tMode FTFW {{\n\
         \t}}\n\
         \tUDP {{\n\
         \t\tIPv4_address {local}\n\
         \t\tIPv4_Destination_Address {peer}\n\
         \t\tPort 3780\n\
         \t\tInterface sync0\n\
         \t\tSndSocketBuffer 1249280\n\
         \t\tRcvSocketBuffer 1249280\n\
         \t\tChecksum on\n\
         \t}}\n\
         }}\n"
    )
}

impl Daemon {
    fn client(&self, args: &[&str]) -> Result<String, BenchError> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "conntrackd", "-C"])
            .arg(&self.conf)
            .args(args)
            .output()
            .map_err(|e| BenchError::Command(format!("conntrackd {args:?}: {e}")))?;
        // conntrackd's client exits 0 on some failures: also require output
        // where output is expected.
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(BenchError::Command(format!(
                "conntrackd {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    fn start(&mut self) -> Result<(), BenchError> {
        if self.child.is_some() {
            return Err(BenchError::Daemon("conntrackd already running".into()));
        }
        // A lock left by a killed run would block the start.
        let _ = std::fs::remove_file(&self.lock);
        let log = File::create(&self.out)
            .map_err(|e| BenchError::Daemon(format!("create {}: {e}", self.out.display())))?;
        let err = log
            .try_clone()
            .map_err(|e| BenchError::Daemon(format!("clone log: {e}")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "conntrackd", "-C"])
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| BenchError::Daemon(format!("spawn conntrackd: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if self
                .client(&["-s"])
                .is_ok_and(|t| t.contains("cache external:"))
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    let log = std::fs::read_to_string(&self.out).unwrap_or_default();
                    return Err(BenchError::Daemon(format!(
                        "conntrackd exited early ({status}): {log}"
                    )));
                }
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(BenchError::Daemon("conntrackd did not come up".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::lab::signal_and_reap(child, libc::SIGTERM, Duration::from_secs(20));
        }
    }
}

/// Active connections of one cache in conntrackd's `-s` text.
pub fn parse_active(stats: &str, cache: &str) -> Result<u64, BenchError> {
    let header = format!("cache {cache}:");
    let mut lines = stats.lines();
    while let Some(line) = lines.next() {
        if line.trim() == header {
            return lines
                .next()
                .filter(|l| l.starts_with("current active connections:"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| BenchError::Parse(format!("conntrackd -s: bad {header} block")));
        }
    }
    Err(BenchError::Parse(format!("conntrackd -s: no {header}")))
}

/// conntrackd on the lab's two firewalls.
pub struct Conntrackd {
    a: Daemon,
    b: Daemon,
    // Dropped after the daemons (see Drop), so the namespaces outlive them.
    lab: Lab,
}

impl Conntrackd {
    pub fn new(flows: usize) -> Result<Conntrackd, BenchError> {
        let lab = Lab::new(LabSpec::default());
        let hash_limit = (2 * flows as u64 + 65_536).max(262_144);
        let daemon =
            |name: &str, ns: &str, local: &str, peer: &str| -> Result<Daemon, BenchError> {
                let conf = lab.dir.join(format!("ctd-{name}.conf"));
                std::fs::write(&conf, config_text(&lab.dir, name, local, peer, hash_limit))
                    .map_err(|e| BenchError::Daemon(format!("write {}: {e}", conf.display())))?;
                Ok(Daemon {
                    ns: ns.to_string(),
                    conf,
                    lock: lab.dir.join(format!("ctd-{name}.lock")),
                    out: lab.dir.join(format!("ctd-{name}.out")),
                    child: None,
                })
            };
        let a = daemon(
            "a",
            &lab.a.ns,
            &lab.spec.address(0, 0),
            &lab.spec.address(0, 1),
        )?;
        let b = daemon(
            "b",
            &lab.b.ns,
            &lab.spec.address(0, 1),
            &lab.spec.address(0, 0),
        )?;
        Ok(Conntrackd { a, b, lab })
    }

    fn daemon(&self, side: Side) -> &Daemon {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn daemon_mut(&mut self, side: Side) -> &mut Daemon {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn active(&self, side: Side, cache: &str) -> Result<u64, BenchError> {
        parse_active(&self.daemon(side).client(&["-s"])?, cache)
    }
}

impl Drop for Conntrackd {
    fn drop(&mut self) {
        self.a.stop();
        self.b.stop();
    }
}

impl System for Conntrackd {
    fn name(&self) -> &'static str {
        "conntrackd"
    }

    fn ns(&self, side: Side) -> &str {
        match side {
            Side::A => &self.lab.a.ns,
            Side::B => &self.lab.b.ns,
        }
    }

    fn start(&mut self, side: Side) -> Result<(), BenchError> {
        self.daemon_mut(side).start()
    }

    fn stop(&mut self, side: Side) {
        self.daemon_mut(side).stop();
    }

    fn pid(&self, side: Side) -> Option<u32> {
        self.daemon(side).child.as_ref().map(|c| c.id())
    }

    fn internal_active(&self, side: Side) -> Result<u64, BenchError> {
        self.active(side, "internal")
    }

    fn external_active(&self, side: Side) -> Result<u64, BenchError> {
        self.active(side, "external")
    }

    fn commit(&self, side: Side) -> Result<(), BenchError> {
        self.daemon(side).client(&["-c"]).map(|_| ())
    }

    fn after_restart(&self, side: Side) -> Result<(), BenchError> {
        // As the Pacemaker agent does: ask the peer for its whole table.
        self.daemon(side).client(&["-n"]).map(|_| ())
    }

    fn reread(&self, side: Side) -> Result<(), BenchError> {
        self.daemon(side).client(&["-R"]).map(|_| ())
    }

    fn control_socket(&self, side: Side) -> PathBuf {
        let name = match side {
            Side::A => "a",
            Side::B => "b",
        };
        self.lab.dir.join(format!("ctd-{name}.sock"))
    }
}
