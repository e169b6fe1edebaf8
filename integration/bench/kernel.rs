//! The kernel tables the benchmark writes and reads: its flow sets (pure
//! IPv4 TCP, and a firewall's mix), timed
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
use std::net::Ipv6Addr;
use std::process::Command;
use std::time::{Duration, Instant};

/// TCP ESTABLISHED, window scale 7 both ways.
const ESTABLISHED: ProtoState = ProtoState::Tcp {
    state: 3,
    wscale_orig: 7,
    wscale_reply: 7,
    flags_orig: 0,
    flags_reply: 0,
};

/// Seen both ways and assured, with a timeout long enough that nothing
/// expires during a run.
fn long_lived(mut f: Flow) -> Flow {
    f.status = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;
    f.timeout = 7_200;
    f
}

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
            let mut f = long_lived(Flow::new(orig));
            f.state = ESTABLISHED;
            f
        })
        .collect()
}

/// Which flows a run's phases write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowSet {
    /// [`tcp_flows`]: ctsync's best case for bytes and memory.
    Tcp4,
    /// [`mix_flows`]: what a firewall holds.
    Mix,
}

impl FlowSet {
    pub fn flows(self, n: usize, salt: u8) -> Vec<Flow> {
        match self {
            FlowSet::Tcp4 => tcp_flows(n, salt),
            FlowSet::Mix => mix_flows(n, salt),
        }
    }
}

/// `n` distinct flows of a firewall's mix: a quarter IPv6; of the flows
/// per address family half TCP ESTABLISHED, 30% UDP, 10% ICMP echo and
/// 10% GRE (IPv4; UDP on IPv6); a third (of all flows) TCP or UDP with
/// SNAT or DNAT and a changed port; one in four with a mark, one in ten
/// in zone 1, one in eight with labels. Sources from 198.18.128.0/17 and
/// 2001:db8:1<salt>::/48 (clear of the lab's link addresses, which the
/// daemons ignore), destinations 198.19.(200 + salt).1-8 and
/// 2001:db8:ff<salt>::1-8, so different salts never collide; SNAT to
/// 198.19.64.0/18 or 2001:db8:fe00::/48, DNAT to 198.19.10.1-16 or
/// 2001:db8:fd00::1-16. At most 2^22 flows. The namespaces need labels
/// enabled ([`enable_labels`]).
pub fn mix_flows(n: usize, salt: u8) -> Vec<Flow> {
    debug_assert!(n <= 1 << 22, "mix_flows: at most 2^22 flows");
    (0..n).map(|i| mix_flow(i, salt)).collect()
}

fn mix_flow(i: usize, salt: u8) -> Flow {
    let v6 = i % 4 == 3;
    let kind = (i / 4) % 20;
    let proto = match kind {
        0..=9 => proto::TCP,
        10..=15 => proto::UDP,
        16 | 17 => {
            if v6 {
                proto::ICMPV6
            } else {
                proto::ICMP
            }
        }
        _ if v6 => proto::UDP,
        _ => proto::GRE,
    };
    let (src, dst) = if v6 {
        let base = u128::from(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x100 | u16::from(salt),
            0,
            0,
            0,
            0,
            0,
        ));
        (
            IpAddr::from(Ipv6Addr::from(base + i as u128 + 1)),
            IpAddr::from(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xff00 | u16::from(salt),
                0,
                0,
                0,
                0,
                1 + (i % 8) as u16,
            )),
        )
    } else {
        (
            IpAddr::from([198, 18, 128 | ((i >> 8) & 0x7f) as u8, i as u8]),
            IpAddr::from([198, 19, 200u8.wrapping_add(salt), 1 + (i % 8) as u8]),
        )
    };
    // Bits 15-22 of i (IPv4 sources take bits 0-14), so (source, port)
    // is unique up to 2^23 flows.
    let high = ((i >> 15) & 0xff) as u16;
    let l4 = match proto {
        proto::TCP => L4::Ports {
            src: 1024 + high,
            dst: [443, 80, 22, 25][i % 4],
        },
        proto::UDP => L4::Ports {
            src: 1024 + high,
            dst: [53, 123, 443, 4500][i % 4],
        },
        proto::ICMP => L4::Icmp {
            kind: 8,
            code: 0,
            id: high,
        },
        proto::ICMPV6 => L4::Icmp {
            kind: 128,
            code: 0,
            id: high,
        },
        _ => L4::Ports {
            src: high,
            dst: 0x100,
        },
    };
    let orig = Tuple {
        src,
        dst,
        proto,
        l4,
    };
    let mut f = long_lived(Flow::new(orig));
    if proto == proto::TCP {
        f.state = ESTABLISHED;
    }
    // A third of all flows: 5 in 12 of the TCP and UDP ones (80%).
    if matches!(proto, proto::TCP | proto::UDP) && i % 12 < 5 {
        if let L4::Ports {
            src: sport,
            dst: dport,
        } = l4
        {
            let mut reply = orig.inverted();
            if i % 2 == 0 {
                // SNAT to one of the firewall's addresses and another
                // source port: bits 8-21 of i pick the address, bits 0-7
                // the port, so reply tuples stay unique up to 2^22 flows.
                reply.dst = if v6 {
                    let base = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0xfe00, 0, 0, 0, 0, 0));
                    IpAddr::from(Ipv6Addr::from(base + (i >> 8) as u128 + 1))
                } else {
                    IpAddr::from([198, 19, 64 | ((i >> 16) & 0x3f) as u8, (i >> 8) as u8])
                };
                reply.l4 = L4::Ports {
                    src: dport,
                    dst: 10_000 + (i & 0xff) as u16,
                };
            } else {
                // DNAT to a server behind, another destination port.
                reply.src = if v6 {
                    IpAddr::from(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0xfd00,
                        0,
                        0,
                        0,
                        0,
                        1 + (i % 16) as u16,
                    ))
                } else {
                    IpAddr::from([198, 19, 10, 1 + (i % 16) as u8])
                };
                reply.l4 = L4::Ports {
                    src: 8_000 + (i % 100) as u16,
                    dst: sport,
                };
            }
            f.reply = reply;
        }
    }
    if i % 4 == 1 {
        f.mark = 0x100 + (i % 256) as u32;
    }
    if i % 10 == 7 {
        f.zone = 1;
    }
    if i % 8 == 2 {
        let mut labels = vec![0u8; 16];
        labels[(i / 8) % 16] = 1 << (i % 8);
        f.labels = Some(labels);
    }
    f
}

/// Let flows carry labels in namespace `ns`: the kernel attaches the
/// labels extension only once a ruleset uses labels.
pub fn enable_labels(ns: &str) -> Result<(), BenchError> {
    for rule in [
        "add table inet ctsbench",
        "add chain inet ctsbench pre { type filter hook prerouting priority 0; }",
        "add rule inet ctsbench pre ct label 127 counter",
    ] {
        run_in(ns, "nft", &[rule])?;
    }
    Ok(())
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

/// Run `cmd args` in namespace `ns`; its standard output, or an error
/// with its standard error when it fails.
pub fn run_in(ns: &str, cmd: &str, args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, cmd])
        .args(args)
        .output()
        .map_err(|e| BenchError::Command(format!("{cmd} {args:?} in {ns}: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Command(format!(
            "{cmd} {args:?} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn conntrack_in(ns: &str, args: &[&str]) -> Result<String, BenchError> {
    run_in(ns, "conntrack", args)
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
