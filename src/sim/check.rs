//! The invariant of a converged cluster, and what a violation looks like.
//!
//! Owns: comparing every node's external view of a peer with that peer's
//! internal cache (and each internal cache with its kernel), and describing
//! the differences. Must not: change any state or decide when to check.

use super::workload::Kernel;
use crate::cache::FlowCache;
use crate::flow::{proto_name, Flow};
use crate::sync::Node;
use std::fmt;

/// One way the views disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Difference {
    /// `owner` has the flow; `viewer`'s external view of it does not.
    Missing { owner: u32, viewer: u32, flow: Flow },
    /// `viewer` holds a flow for `owner` that `owner` does not have.
    Extra { owner: u32, viewer: u32, flow: Flow },
    /// Both have the flow, in different states.
    Differs {
        owner: u32,
        viewer: u32,
        want: Box<Flow>,
        got: Box<Flow>,
    },
    /// A node's internal cache is not what its kernel holds.
    Internal {
        node: u32,
        kernel: Option<Flow>,
        internal: Option<Flow>,
    },
    /// A node is down when it should be up.
    Down { node: u32 },
}

fn show(f: &Flow) -> String {
    let mut s = format!(
        "{} zone={} {} reply: {} status={:#x} mark={} {:?}",
        proto_name(f.orig.proto),
        f.zone,
        f.orig,
        f.reply,
        f.status,
        f.mark,
        f.state
    );
    if let Some(l) = &f.labels {
        s.push_str(&format!(" labels={l:02x?}"));
    }
    if let Some(h) = &f.helper {
        s.push_str(&format!(" helper={h}"));
    }
    s
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Missing {
                owner,
                viewer,
                flow,
            } => write!(f, "node {viewer} lacks node {owner}'s flow {}", show(flow)),
            Difference::Extra {
                owner,
                viewer,
                flow,
            } => write!(
                f,
                "node {viewer} holds for node {owner} a flow it does not have: {}",
                show(flow)
            ),
            Difference::Differs {
                owner,
                viewer,
                want,
                got,
            } => write!(
                f,
                "node {viewer}'s copy of node {owner}'s flow differs:\n      want {}\n      got  {}",
                show(want),
                show(got)
            ),
            Difference::Internal {
                node,
                kernel,
                internal,
            } => write!(
                f,
                "node {node}'s internal cache is not its kernel: kernel {} / internal {}",
                kernel.as_ref().map_or("-".into(), show),
                internal.as_ref().map_or("-".into(), show)
            ),
            Difference::Down { node } => write!(f, "node {node} is down"),
        }
    }
}

/// Differences between what `viewer` holds for `owner` and `owner`'s
/// internal cache, in key order.
pub fn compare_view(
    owner: u32,
    internal: &FlowCache,
    viewer: u32,
    view: Option<&FlowCache>,
    out: &mut Vec<Difference>,
) {
    let empty = FlowCache::new();
    let view = view.unwrap_or(&empty);
    // Fast path: the common case at every periodic check.
    if view.len() == internal.len()
        && internal
            .flows()
            .all(|e| view.flow(&e.key()).is_some_and(|v| v.same_state(&e)))
    {
        return;
    }
    let mut found = Vec::new();
    for e in internal.flows() {
        match view.flow(&e.key()) {
            None => found.push(Difference::Missing {
                owner,
                viewer,
                flow: e,
            }),
            Some(v) if !v.same_state(&e) => found.push(Difference::Differs {
                owner,
                viewer,
                want: Box::new(e),
                got: Box::new(v),
            }),
            Some(_) => {}
        }
    }
    for v in view.flows() {
        if !internal.contains(&v.key()) {
            found.push(Difference::Extra {
                owner,
                viewer,
                flow: v,
            });
        }
    }
    found.sort_by_key(|d| match d {
        Difference::Missing { flow, .. } | Difference::Extra { flow, .. } => Some(flow.key()),
        Difference::Differs { want, .. } => Some(want.key()),
        _ => None,
    });
    out.extend(found);
}

/// Differences between a kernel table and the internal cache fed from it.
pub fn compare_internal(
    node: u32,
    kernel: &Kernel,
    internal: &FlowCache,
    out: &mut Vec<Difference>,
) {
    for (k, f) in kernel.iter() {
        let cached = internal.flow(k);
        if !cached.as_ref().is_some_and(|c| c.same_state(f)) {
            out.push(Difference::Internal {
                node,
                kernel: Some(f.clone()),
                internal: cached,
            });
        }
    }
    let mut extra: Vec<Flow> = internal
        .flows()
        .filter(|f| kernel.get(&f.key()).is_none())
        .collect();
    extra.sort_by_key(|f| f.key());
    out.extend(extra.into_iter().map(|f| Difference::Internal {
        node,
        kernel: None,
        internal: Some(f),
    }));
}

/// The whole invariant over a cluster of (node id, node if up, kernel):
/// every view of every peer matches, every internal cache matches its
/// kernel. Returns the differences in a reproducible order.
pub fn check_cluster(nodes: &[(u32, Option<&Node>, &Kernel)]) -> Vec<Difference> {
    let mut out = Vec::new();
    for &(id, node, kernel) in nodes {
        let Some(node) = node else {
            out.push(Difference::Down { node: id });
            continue;
        };
        compare_internal(id, kernel, node.internal(), &mut out);
    }
    for &(owner, owner_node, _) in nodes {
        let Some(owner_node) = owner_node else {
            continue;
        };
        for &(viewer, viewer_node, _) in nodes {
            let Some(viewer_node) = viewer_node else {
                continue;
            };
            if viewer == owner {
                continue;
            }
            compare_view(
                owner,
                owner_node.internal(),
                viewer,
                viewer_node.external().get(&owner),
                &mut out,
            );
        }
    }
    out
}

/// What the periodic checks after the heal look at between the full
/// comparisons of `check_cluster` (which the final verdict runs): every
/// node is up, each internal cache has its kernel's size, and each view of
/// a peer has the peer's size and digest (the XOR of per-flow state
/// hashes). False means a difference for certain; true, almost certainly
/// none, at a fraction of the cost with 100,000-flow tables.
pub fn views_agree_quickly(nodes: &[(u32, Option<&Node>, &Kernel)]) -> bool {
    let up: Option<Vec<(u32, &Node, &Kernel)>> = nodes
        .iter()
        .map(|&(id, node, kernel)| node.map(|n| (id, n, kernel)))
        .collect();
    let Some(up) = up else {
        return false;
    };
    up.iter().all(|&(owner, owner_node, kernel)| {
        let internal = owner_node.internal();
        internal.len() == kernel.len()
            && up
                .iter()
                .filter(|(v, ..)| *v != owner)
                .all(|(_, viewer, _)| match viewer.external().get(&owner) {
                    Some(view) => {
                        view.len() == internal.len() && view.digest() == internal.digest()
                    }
                    None => internal.is_empty(),
                })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::Rng;
    use crate::sim::workload::new_flow;

    #[test]
    fn view_comparison_finds_missing_extra_and_changed() {
        let mut rng = Rng::new(1);
        let a = new_flow(&mut rng, 0, 1);
        let b = new_flow(&mut rng, 0, 2);
        let c = new_flow(&mut rng, 0, 3);
        let mut internal = FlowCache::new();
        internal.upsert(a.clone(), 0);
        internal.upsert(b.clone(), 0);
        let mut view = FlowCache::new();
        let mut a_later = a.clone();
        a_later.timeout ^= 77;
        view.upsert(a_later, 5);
        let mut out = Vec::new();
        compare_view(1, &internal, 2, Some(&view), &mut out);
        assert_eq!(out.len(), 1, "timeout alone is no difference: {out:?}");
        assert!(matches!(&out[0], Difference::Missing { flow, .. } if *flow == b));
        let mut b2 = b.clone();
        b2.mark ^= 1;
        view.upsert(b2, 5);
        view.upsert(c.clone(), 5);
        out.clear();
        compare_view(1, &internal, 2, Some(&view), &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().any(|d| matches!(d, Difference::Differs { .. })));
        assert!(out
            .iter()
            .any(|d| matches!(d, Difference::Extra { flow, .. } if *flow == c)));
        out.clear();
        compare_view(1, &internal, 2, None, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|d| d.to_string().contains("lacks")));
    }
}
