//! The kernel tables the benchmark writes and reads: its flow sets, timed
//! batched writes into a namespace with ctsync's `Writer`, counting and
//! flushing a namespace's table with `conntrack`, and the raw writer
//! ceiling in a namespace of its own.
//!
//! Must not: know about either daemon.

use super::BenchError;
use crate::lab::in_netns;
use ctsync::flow::{proto, status, Flow, ProtoState, Tuple, L4};
use ctsync::kernel::write::{CreateOptions, WriteOp, WriteReport, Writer};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// `n` distinct IPv4 TCP ESTABLISHED flows without NAT: sources from
/// 198.19.0.0/16 (the port tells blocks of 65,536 apart), destination
/// 198.18.(100 + salt).1:443, so different salts never collide.
pub fn tcp_flows(n: usize, salt: u8) -> Vec<Flow> {
    (0..n)
        .map(|i| {
            let orig = Tuple {
                src: IpAddr::from([198, 19, (i >> 8) as u8, i as u8]),
                dst: IpAddr::from([198, 18, 100u8.wrapping_add(salt), 1]),
                proto: proto::TCP,
                l4: L4::Ports {
                    src: 1024 + ((i >> 16) as u16 % 60_000),
                    dst: 443,
                },
            };
            let mut f = Flow::new(orig);
            f.state = ProtoState::Tcp {
                state: 3,
                wscale_orig: 7,
                wscale_reply: 7,
                flags_orig: 0,
                flags_reply: 0,
            };
            f.status = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;
            // Long enough that nothing expires during a run.
            f.timeout = 7_200;
            f
        })
        .collect()
}

/// Create `flows` in namespace `ns` at full speed; returns the writer's
/// report and how long the writes took.
pub fn timed_create(ns: &str, flows: Vec<Flow>) -> Result<(WriteReport, Duration), BenchError> {
    in_netns(ns, move || {
        let mut writer = Writer::open().map_err(|e| BenchError::Kernel(e.to_string()))?;
        let started = Instant::now();
        let report = writer.create_all(&flows, &CreateOptions::default());
        Ok((report, started.elapsed()))
    })
}

/// Apply changes in namespace `ns` with the batched writer.
pub fn apply(ns: &str, ops: Vec<WriteOp>) -> Result<WriteReport, BenchError> {
    in_netns(ns, move || {
        let mut writer = Writer::open().map_err(|e| BenchError::Kernel(e.to_string()))?;
        Ok(writer.apply(&ops))
    })
}

/// A write that must have written everything.
pub fn check_report(what: &str, report: &WriteReport) -> Result<(), BenchError> {
    if report.failed == 0 {
        Ok(())
    } else {
        Err(BenchError::Kernel(format!(
            "{what}: {} writes failed: {:?}",
            report.failed, report.first_errors
        )))
    }
}

fn conntrack_in(ns: &str, args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack"])
        .args(args)
        .output()
        .map_err(|e| BenchError::Command(format!("conntrack {args:?} in {ns}: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Command(format!(
            "conntrack {args:?} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Flows in a namespace's kernel table (`conntrack -C`).
pub fn kernel_count(ns: &str) -> Result<u64, BenchError> {
    let text = conntrack_in(ns, &["-C"])?;
    text.trim()
        .parse()
        .map_err(|_| BenchError::Parse(format!("conntrack -C in {ns}: {text:?}")))
}

/// Empty a namespace's kernel table and check it is empty.
pub fn kernel_flush(ns: &str) -> Result<(), BenchError> {
    conntrack_in(ns, &["-F"])?;
    match kernel_count(ns)? {
        0 => Ok(()),
        n => Err(BenchError::Kernel(format!(
            "{ns} still holds {n} flows after a flush"
        ))),
    }
}

/// A namespace of the benchmark's own, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns, BenchError> {
        let name = format!("cts-{tag}-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| BenchError::Command(format!("ip netns add {name}: {e}")))?;
        if !out.status.success() {
            return Err(BenchError::Command(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Netns { name })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The ceiling: `n` creates into an empty namespace nobody listens to;
/// flows per second.
pub fn raw_writer_rate(n: usize) -> Result<f64, BenchError> {
    let ns = Netns::new("raw")?;
    let (report, took) = timed_create(&ns.name, tcp_flows(n, 0))?;
    check_report("raw writer", &report)?;
    let count = kernel_count(&ns.name)?;
    if count != n as u64 {
        return Err(BenchError::Kernel(format!(
            "raw writer: the table holds {count} of {n} flows"
        )));
    }
    Ok(n as f64 / took.as_secs_f64())
}
