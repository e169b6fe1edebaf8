//! Which flows are synced.
//!
//! Owns: the decision, for one flow, whether it is replicated. Today the
//! rule is the safe default every sync daemon needs: flows to or from the
//! sync links' own addresses are never synced (the sync traffic must not be
//! replicated). Protocol, CIDR and TCP-state lists come on top of this.
//! Must not: do I/O or keep per-flow state.

use crate::flow::Flow;
use std::collections::HashSet;
use std::net::IpAddr;

/// The set of rules a flow must pass to be replicated.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    ignored_addresses: HashSet<IpAddr>,
}

impl Filter {
    /// A filter that ignores flows touching any of `addresses` (the sync
    /// links' local and peer addresses).
    pub fn ignoring(addresses: impl IntoIterator<Item = IpAddr>) -> Filter {
        Filter {
            ignored_addresses: addresses.into_iter().collect(),
        }
    }

    /// True when the flow is replicated. As in conntrackd, the addresses
    /// tested are the original source and the reply source (the real peer
    /// after DNAT); we also test the original destination so that a flow
    /// towards a sync address is never replicated either.
    pub fn accepts(&self, flow: &Flow) -> bool {
        let touched = [flow.orig.src, flow.orig.dst, flow.reply.src];
        !touched.iter().any(|a| self.ignored_addresses.contains(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{proto, Tuple, L4};

    fn udp(src: &str, dst: &str) -> Flow {
        Flow::new(Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: proto::UDP,
            l4: L4::Ports {
                src: 3780,
                dst: 3780,
            },
        })
    }

    #[test]
    fn sync_link_addresses_are_ignored_in_either_direction() {
        let f = Filter::ignoring(["198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap()]);
        assert!(!f.accepts(&udp("198.18.0.1", "198.18.0.2")));
        assert!(!f.accepts(&udp("198.18.9.9", "198.18.0.2")));
        assert!(f.accepts(&udp("198.18.9.9", "198.18.9.10")));
    }

    #[test]
    fn default_filter_accepts_everything() {
        assert!(Filter::default().accepts(&udp("198.18.0.1", "198.18.0.2")));
    }
}
