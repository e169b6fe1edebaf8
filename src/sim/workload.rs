//! What each simulated node's kernel holds and how it changes: the model
//! conntrack table and the random creates, updates and deletes applied to it.
//!
//! Owns: `Kernel` (a node's table, what a dump would return) and the flows a
//! node owns (a key space of its own, so nodes never share a flow). Must
//! not: talk to Nodes or the network; the driver feeds the changes on.

use super::rng::Rng;
use crate::flow::{proto, status, Flow, FlowKey, ProtoState, Tuple, L4};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A node's conntrack table as the kernel holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kernel {
    flows: BTreeMap<FlowKey, Flow>,
}

/// One kernel change, as an event would report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// NEW or UPDATE: the whole flow after the change.
    Upsert(Flow),
    /// DESTROY.
    Delete(FlowKey),
}

impl Kernel {
    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.flows.get(key)
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &Flow)> {
        self.flows.iter()
    }

    /// What a dump returns, in key order.
    pub fn dump(&self) -> Vec<Flow> {
        self.flows.values().cloned().collect()
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Upsert(f) => {
                self.flows.insert(f.key(), f.clone());
            }
            Change::Delete(k) => {
                self.flows.remove(k);
            }
        }
    }
}

/// The next change node `owner` makes: a new flow in a free slot, or an
/// update or delete of one it has.
pub fn next_change(rng: &mut Rng, kernel: &Kernel, owner: usize, slots: u32) -> Change {
    let slot = rng.below(u64::from(slots.max(1))) as u32;
    let key = flow_key(owner, slot);
    match kernel.get(&key) {
        None => Change::Upsert(new_flow(rng, owner, slot)),
        Some(_) if rng.chance(30) => Change::Delete(key),
        Some(f) => Change::Upsert(updated(rng, f)),
    }
}

/// The kinds of flow a node makes, chosen by slot.
const KINDS: u32 = 9;

fn v4(owner: usize, host: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        198,
        18,
        owner.min(250) as u8 + 1,
        (host % 256) as u8,
    ))
}

fn v6(owner: usize, host: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        owner.min(0xfff) as u16 + 1,
        0,
        0,
        0,
        (host >> 16) as u16,
        host as u16,
    ))
}

/// The original tuple and zone of `owner`'s flow in `slot`: addresses carry
/// the owner, ports or ids the slot, so keys never collide across nodes.
fn flow_key(owner: usize, slot: u32) -> FlowKey {
    let n = slot as u16;
    let kind = slot % KINDS;
    let (src, dst, p, l4) = match kind {
        0 => (
            v4(owner, slot),
            v4(owner, 250),
            proto::TCP,
            ports(1024 + n, 80),
        ),
        1 => (
            v6(owner, slot),
            v6(owner, 0x53),
            proto::UDP,
            ports(2000 + n, 53),
        ),
        2 => (v4(owner, slot), v4(owner, 251), proto::ICMP, icmp(8, n)),
        3 => (v4(owner, slot), v4(owner, 252), proto::SCTP, ports(n, 3868)),
        4 => (
            v6(owner, slot),
            v6(owner, 0x443),
            proto::TCP,
            ports(3000 + n, 443),
        ),
        5 => (
            v6(owner, slot),
            v6(owner, 0x58),
            proto::ICMPV6,
            icmp(128, n),
        ),
        6 => (
            v4(owner, slot),
            v4(owner, 253),
            proto::DCCP,
            ports(4000 + n, 5004),
        ),
        7 => (
            v4(owner, slot),
            v4(owner, 254),
            proto::GRE,
            ports(n, 0x1234),
        ),
        _ => (
            v6(owner, slot),
            v6(owner, 0x136),
            proto::UDPLITE,
            ports(5000 + n, 5060),
        ),
    };
    FlowKey {
        // Some flows live in another zone; the zone is part of the key.
        zone: if slot % 7 == 6 { 3 } else { 0 },
        orig: Tuple {
            src,
            dst,
            proto: p,
            l4,
        },
    }
}

fn ports(src: u16, dst: u16) -> L4 {
    L4::Ports { src, dst }
}

fn icmp(kind: u8, id: u16) -> L4 {
    L4::Icmp { kind, code: 0, id }
}

/// A fresh flow in `slot`: random state, sometimes NAT, labels, a helper.
pub fn new_flow(rng: &mut Rng, owner: usize, slot: u32) -> Flow {
    let key = flow_key(owner, slot);
    let mut f = Flow::new(key.orig);
    f.zone = key.zone;
    f.status = status::CONFIRMED;
    let v6 = key.orig.is_ipv6();
    let nat_addr = |host: u32| {
        if v6 {
            self::v6(owner, 0xff00 + host)
        } else {
            v4(owner, 200 + host)
        }
    };
    // NAT, as the kernel sets it up when the flow is created.
    let natted = matches!(
        key.orig.proto,
        proto::TCP | proto::UDP | proto::ICMP | proto::ICMPV6
    );
    if natted && rng.chance(30) {
        f.reply.dst = nat_addr(1);
        match &mut f.reply.l4 {
            L4::Ports { dst, .. } if rng.chance(70) => *dst = rng.range(30_000, 60_000) as u16,
            L4::Icmp { id, .. } if rng.chance(50) => *id = rng.u16(),
            _ => {}
        }
        f.status |= status::SRC_NAT | status::SRC_NAT_DONE;
    }
    if natted && rng.chance(20) {
        f.reply.src = nat_addr(2);
        if let L4::Ports { src, .. } = &mut f.reply.l4 {
            if rng.chance(50) {
                *src = rng.range(8000, 9000) as u16;
            }
        }
        f.status |= status::DST_NAT | status::DST_NAT_DONE;
    }
    if rng.chance(15) {
        f.helper = Some(
            match key.orig.proto {
                proto::TCP => "ftp",
                proto::UDP => "tftp",
                _ => "sip",
            }
            .to_string(),
        );
        f.status |= status::HELPER;
    }
    randomize(rng, &mut f);
    f
}

/// The same flow after a kernel UPDATE: new protocol state, status bits,
/// mark, labels or only a new timeout.
pub fn updated(rng: &mut Rng, flow: &Flow) -> Flow {
    let mut f = flow.clone();
    if rng.chance(25) {
        // Only the timeout moved (the kernel's refresh).
        f.timeout = f.timeout.wrapping_add(1 + rng.below(1000) as u32);
    } else {
        randomize(rng, &mut f);
    }
    f
}

/// Draw the parts of a flow that change over its life.
fn randomize(rng: &mut Rng, f: &mut Flow) {
    let keep = status::SRC_NAT
        | status::SRC_NAT_DONE
        | status::DST_NAT
        | status::DST_NAT_DONE
        | status::HELPER
        | status::CONFIRMED;
    let mut bits = f.status & keep;
    if rng.chance(70) {
        bits |= status::SEEN_REPLY;
    }
    if rng.chance(50) {
        bits |= status::ASSURED;
    }
    f.status = bits;
    f.timeout = rng.range(1, 432_000) as u32;
    f.mark = if rng.chance(60) { 0 } else { rng.u32() };
    f.labels = rng.chance(15).then(|| {
        let mut l = vec![0u8; 16];
        let i = rng.below(16) as usize;
        if let Some(b) = l.get_mut(i) {
            *b = rng.byte() | 1;
        }
        l
    });
    f.state = match f.orig.proto {
        proto::TCP => ProtoState::Tcp {
            state: rng.range(1, 10) as u8,
            wscale_orig: rng.below(15) as u8,
            wscale_reply: rng.below(15) as u8,
            flags_orig: rng.byte() & 0x0f,
            flags_reply: rng.byte() & 0x0f,
        },
        proto::SCTP => ProtoState::Sctp {
            state: rng.range(1, 9) as u8,
            vtag_orig: rng.u32(),
            vtag_reply: rng.u32(),
        },
        proto::DCCP => ProtoState::Dccp {
            state: rng.range(1, 8) as u8,
            role: rng.below(2) as u8,
        },
        _ => ProtoState::None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_never_share_a_key() {
        let mut seen = std::collections::BTreeSet::new();
        for owner in 0..4 {
            for slot in 0..300 {
                assert!(seen.insert(flow_key(owner, slot)), "{owner} {slot}");
            }
        }
    }

    #[test]
    fn changes_cover_create_update_delete_and_nat() {
        let mut rng = Rng::new(5);
        let mut k = Kernel::default();
        let (mut creates, mut updates, mut deletes, mut nat, mut v6) = (0, 0, 0, 0, 0);
        for _ in 0..2000 {
            let c = next_change(&mut rng, &k, 1, 30);
            match &c {
                Change::Upsert(f) if k.get(&f.key()).is_none() => {
                    creates += 1;
                    nat += usize::from(f.has_nat());
                    v6 += usize::from(f.orig.is_ipv6());
                }
                Change::Upsert(f) => {
                    updates += 1;
                    assert_eq!(k.get(&f.key()).map(|o| o.reply), Some(f.reply));
                }
                Change::Delete(key) => {
                    deletes += 1;
                    assert!(k.get(key).is_some());
                }
            }
            k.apply(&c);
        }
        assert!(creates > 50 && updates > 50 && deletes > 50 && nat > 5 && v6 > 5);
        assert!(k.len() <= 30);
    }

    #[test]
    fn generated_flows_survive_the_wire() {
        let mut rng = Rng::new(9);
        for slot in 0..200 {
            let f = new_flow(&mut rng, 2, slot);
            let back = crate::wire::WireFlow::from(&f).into_flow();
            assert_eq!(back, f);
            // NAT bindings round-trip as the protocol would carry them.
            assert_eq!(Flow::new(f.orig).with_nat(f.nat()).reply, f.reply, "{f:?}");
        }
    }
}
