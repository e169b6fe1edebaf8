//! How fast ctsync encodes ctnetlink create and update requests, the work
//! a commit's encoder thread and the warm standby's writer do per flow:
//! prints nanoseconds a request for pure IPv4 TCP flows and for a firewall
//! mix (IPv6, UDP, ICMP, NAT, marks, a zone, labels).
//!
//! `cargo run --release --example encode_rate`

use ctsync::flow::{proto, status, Flow, ProtoState, Tuple, L4};
use ctsync::kernel::codec::{encode_create, encode_update, CreateOptions};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

const FLOWS: u32 = 200_000;
const ROUNDS: usize = 5;

fn tcp4(i: u32) -> Flow {
    let mut f = Flow::new(Tuple {
        src: IpAddr::V4(Ipv4Addr::from(0xC613_0000 | (i & 0xffff))),
        dst: IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1)),
        proto: proto::TCP,
        l4: L4::Ports {
            src: 1024 + (i >> 16) as u16,
            dst: 443,
        },
    });
    f.status = status::SEEN_REPLY | status::ASSURED;
    f.timeout = 432_000;
    f.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 7,
        wscale_reply: 7,
        flags_orig: 0x03,
        flags_reply: 0x03,
    };
    f
}

/// Every third flow NATed, every fifth IPv6, some UDP and ICMP, marks,
/// a zone and labels on some.
fn mixed(i: u32) -> Flow {
    let mut f = tcp4(i);
    if i % 5 == 0 {
        f.orig.src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i as u16));
        f.orig.dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));
    }
    match i % 7 {
        1 | 2 => f.orig.proto = proto::UDP,
        3 if i % 5 != 0 => {
            f.orig.proto = proto::ICMP;
            f.orig.l4 = L4::Icmp {
                kind: 8,
                code: 0,
                id: i as u16,
            };
        }
        _ => {}
    }
    if f.orig.proto != proto::TCP {
        f.state = ProtoState::None;
    }
    f.reply = f.orig.inverted();
    if i % 3 == 0 {
        if let (IpAddr::V4(_), L4::Ports { src, .. }) = (f.orig.src, f.reply.l4) {
            f.reply.dst = IpAddr::V4(Ipv4Addr::new(198, 18, 200, 1));
            f.reply.l4 = L4::Ports {
                src,
                dst: 30_000 + (i % 1000) as u16,
            };
        }
    }
    f.mark = i % 4;
    f.zone = u16::from(i % 11 == 0);
    if i % 13 == 0 {
        f.labels = Some(vec![1, 0, 0, 0]);
    }
    f
}

fn rate(name: &str, flows: &[Flow], encode: impl Fn(&mut Vec<u8>, &Flow, u32)) {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut best = f64::MAX;
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for (i, flow) in flows.iter().enumerate() {
            if buf.len() > (1 << 20) - 4096 {
                bytes = buf.len();
                buf.clear();
            }
            encode(&mut buf, flow, i as u32);
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    let per = best * 1e9 / flows.len() as f64;
    println!("{name:<28} {per:7.1} ns a request (best of {ROUNDS}; {bytes} bytes in the last full buffer)");
}

fn main() {
    let opts = CreateOptions::default();
    for (label, flows) in [
        ("IPv4 TCP", (0..FLOWS).map(tcp4).collect::<Vec<_>>()),
        ("mix", (0..FLOWS).map(mixed).collect::<Vec<_>>()),
    ] {
        rate(&format!("create, {label}"), &flows, |b, f, s| {
            encode_create(b, f, s, &opts)
        });
        rate(&format!("update, {label}"), &flows, encode_update);
    }
}
