//! An `Expectation` as conntrackd's expectation attributes (§3.7, a
//! separate id space with `NTA_EXP_MAX` = 21), both ways, in 1.4.7's
//! emission order.
//!
//! Owns: the expectation attribute ids and sizes. Must not: frame
//! messages, keep state, or trust its input. conntrackd carries no zone
//! for expectations (decoded ones are in zone 0) and no IPv6 NAT.

use super::flow_attrs::{cstr, has_port_builder, pair, Codec};
use super::header::Reject;
use super::tlv::{walk, Builder, Size};
use crate::expect::{ExpectNat, Expectation};
use crate::flow::{Tuple, L4};
use std::net::{IpAddr, Ipv4Addr};

/// Expectation attribute ids (`NTA_EXP_*`).
pub mod exp {
    pub const MASTER_IPV4: u16 = 0;
    pub const MASTER_IPV6: u16 = 1;
    pub const MASTER_L4PROTO: u16 = 2;
    pub const MASTER_PORT: u16 = 3;
    pub const EXPECT_IPV4: u16 = 4;
    pub const EXPECT_IPV6: u16 = 5;
    pub const EXPECT_L4PROTO: u16 = 6;
    pub const EXPECT_PORT: u16 = 7;
    pub const MASK_IPV4: u16 = 8;
    pub const MASK_IPV6: u16 = 9;
    pub const MASK_L4PROTO: u16 = 10;
    pub const MASK_PORT: u16 = 11;
    pub const TIMEOUT: u16 = 12;
    pub const FLAGS: u16 = 13;
    pub const CLASS: u16 = 14;
    pub const NAT_IPV4: u16 = 15;
    pub const NAT_PORT: u16 = 16;
    pub const NAT_L4PROTO: u16 = 17;
    pub const NAT_DIR: u16 = 18;
    pub const HELPER_NAME: u16 = 19;
    pub const FN: u16 = 20;
    /// `NTA_EXP_MAX`.
    pub const MAX: u16 = 21;
}

/// Longest expectfn name carried (`nta_len` ≤ 32 with the NUL).
pub const MAX_EXPECTFN: usize = 27;

fn addrs(t: &Tuple) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    for a in [t.src, t.dst] {
        match a {
            IpAddr::V4(v) => p.extend_from_slice(&v.octets()),
            IpAddr::V6(v) => p.extend_from_slice(&v.octets()),
        }
    }
    p
}

fn port_bytes(t: &Tuple) -> [u8; 4] {
    let (s, d) = t.ports().unwrap_or((0, 0));
    let (s, d) = (s.to_be_bytes(), d.to_be_bytes());
    [s[0], s[1], d[0], d[1]]
}

impl Codec {
    /// The attributes of `e` after the header. Ports go out only when the
    /// master's protocol has a port builder (TCP, UDP, SCTP, DCCP), for all
    /// three tuples; NAT only for IPv4; helper and expectfn names only
    /// when they fit conntrackd's limits.
    pub fn encode_expect(&self, b: &mut Builder, e: &Expectation) {
        let ports = has_port_builder(e.master.proto);
        let v6 = e.master.is_ipv6();
        let groups = [
            (
                &e.master,
                exp::MASTER_IPV4,
                exp::MASTER_L4PROTO,
                exp::MASTER_PORT,
            ),
            (
                &e.tuple,
                exp::EXPECT_IPV4,
                exp::EXPECT_L4PROTO,
                exp::EXPECT_PORT,
            ),
            (&e.mask, exp::MASK_IPV4, exp::MASK_L4PROTO, exp::MASK_PORT),
        ];
        for (t, id4, l4id, portid) in groups {
            b.put(if v6 { id4 + 1 } else { id4 }, &addrs(t));
            b.put_u8(l4id, t.proto);
            if ports {
                b.put(portid, &port_bytes(t));
            }
        }
        if self.send_timeout {
            b.put_be32(exp::TIMEOUT, e.timeout);
        }
        b.put_be32(exp::FLAGS, e.flags);
        if e.class != 0 {
            b.put_be32(exp::CLASS, e.class);
        }
        if let Some(n) = e.nat.as_ref().filter(|n| !n.tuple.is_ipv6()) {
            b.put(exp::NAT_IPV4, &addrs(&n.tuple));
            b.put_u8(exp::NAT_L4PROTO, n.tuple.proto);
            if ports {
                b.put(exp::NAT_PORT, &port_bytes(&n.tuple));
            }
            b.put_be32(exp::NAT_DIR, n.dir);
        }
        if let Some(h) = e.helper.as_deref() {
            if h.len() <= super::flow_attrs::MAX_HELPER_NAME && !h.contains('\0') {
                b.put_str(exp::HELPER_NAME, h);
            }
        }
        if let Some(f) = e.expectfn.as_deref() {
            if f.len() <= MAX_EXPECTFN && !f.contains('\0') {
                b.put_str(exp::FN, f);
            }
        }
    }

    /// An expectation back from an EXP message (header included).
    pub fn decode_expect(&self, msg: &[u8]) -> Result<Expectation, Reject> {
        let attrs = walk(msg, exp::MAX, exp_attr_size)?;
        // master, expected, mask, nat: addresses, protocol, ports.
        let mut t: [TupleParts; 4] = [(None, None, None); 4];
        let mut e = Expectation {
            zone: 0,
            master: blank(),
            tuple: blank(),
            mask: blank(),
            timeout: 0,
            flags: 0,
            class: 0,
            helper: None,
            nat: None,
            expectfn: None,
        };
        let mut nat_dir = None;
        for (id, p) in attrs {
            match id {
                exp::MASTER_IPV4 | exp::MASTER_IPV6 => t[0].0 = Some(pair(p)?),
                exp::EXPECT_IPV4 | exp::EXPECT_IPV6 => t[1].0 = Some(pair(p)?),
                exp::MASK_IPV4 | exp::MASK_IPV6 => t[2].0 = Some(pair(p)?),
                exp::NAT_IPV4 => t[3].0 = Some(pair(p)?),
                exp::MASTER_L4PROTO => t[0].1 = p.first().copied(),
                exp::EXPECT_L4PROTO => t[1].1 = p.first().copied(),
                exp::MASK_L4PROTO => t[2].1 = p.first().copied(),
                exp::NAT_L4PROTO => t[3].1 = p.first().copied(),
                exp::MASTER_PORT => t[0].2 = Some(ports(p)?),
                exp::EXPECT_PORT => t[1].2 = Some(ports(p)?),
                exp::MASK_PORT => t[2].2 = Some(ports(p)?),
                exp::NAT_PORT => t[3].2 = Some(ports(p)?),
                exp::TIMEOUT => e.timeout = be32(p)?,
                exp::FLAGS => e.flags = be32(p)?,
                exp::CLASS => e.class = be32(p)?,
                exp::NAT_DIR => nat_dir = Some(be32(p)?),
                exp::HELPER_NAME => e.helper = cstr(p),
                exp::FN => e.expectfn = cstr(p),
                _ => {}
            }
        }
        let tuple = |(a, p, ports): TupleParts| {
            let (src, dst) = a?;
            Some(Tuple {
                src,
                dst,
                proto: p?,
                // Ports go out by the master's builder for all three
                // tuples; a tuple of a protocol without ports has none.
                l4: match ports {
                    Some((s, d)) if has_port_builder(p?) => L4::Ports { src: s, dst: d },
                    _ => L4::None,
                },
            })
        };
        let need = |x: Option<Tuple>| x.ok_or(Reject::MalformedPayload);
        e.master = need(tuple(t[0]))?;
        e.tuple = need(tuple(t[1]))?;
        e.mask = need(tuple(t[2]))?;
        let fam = e.master.is_ipv6();
        if [&e.master, &e.tuple, &e.mask]
            .iter()
            .any(|x| x.src.is_ipv6() != fam || x.dst.is_ipv6() != fam)
        {
            return Err(Reject::MalformedPayload);
        }
        if let Some(nt) = tuple(t[3]) {
            e.nat = Some(ExpectNat {
                dir: nat_dir.unwrap_or(0),
                tuple: nt,
            });
        }
        Ok(e)
    }
}

/// A tuple's attributes as decoded: addresses, protocol, ports.
type TupleParts = (Option<(IpAddr, IpAddr)>, Option<u8>, Option<(u16, u16)>);

fn blank() -> Tuple {
    Tuple {
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        proto: 0,
        l4: L4::None,
    }
}

/// What a receiver accepts of each expectation attribute.
pub fn exp_attr_size(id: u16) -> Option<Size> {
    Some(match id {
        exp::MASTER_IPV4 | exp::EXPECT_IPV4 | exp::MASK_IPV4 | exp::NAT_IPV4 => Size::Exact(12),
        exp::MASTER_IPV6 | exp::EXPECT_IPV6 | exp::MASK_IPV6 => Size::Exact(36),
        exp::MASTER_L4PROTO | exp::EXPECT_L4PROTO | exp::MASK_L4PROTO | exp::NAT_L4PROTO => {
            Size::Exact(5)
        }
        exp::MASTER_PORT
        | exp::EXPECT_PORT
        | exp::MASK_PORT
        | exp::NAT_PORT
        | exp::TIMEOUT
        | exp::FLAGS
        | exp::CLASS
        | exp::NAT_DIR => Size::Exact(8),
        exp::HELPER_NAME => Size::Max(16),
        exp::FN => Size::Max(32),
        _ => return None,
    })
}

fn ports(p: &[u8]) -> Result<(u16, u16), Reject> {
    let s = p.get(..4).ok_or(Reject::MalformedPayload)?;
    Ok((
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
    ))
}

fn be32(p: &[u8]) -> Result<u32, Reject> {
    p.get(..4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(Reject::MalformedPayload)
}
