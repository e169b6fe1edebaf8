//! Which kernel event is ours, and what it does to the internal cache.
//!
//! Owns: the decision for one event, from the facts the owner gathers (the
//! port ids of our own sockets, whether a peer's flow is mirrored under
//! that key, the filter's verdict, the cached flow). Must not: hold state,
//! touch the kernel or the caches (the owner applies the verdict).

use crate::flow::{Flow, FlowKey};
use crate::kernel::{EventKind, KernelEvent};
use foldhash::HashSet;

/// Where an event's change came from, by the netlink port id of the
/// socket that caused it.
#[derive(Clone, Debug, Default)]
pub(super) struct EventOrigins {
    /// Our writer's (commits, flushes): cached, never echoed to peers.
    pub own: HashSet<u32>,
    /// Warm standby's injector's: peers' flows, not ours at all.
    pub ignored: HashSet<u32>,
}

/// What to do with one kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Not ours: warm standby's own write, or a mirrored peer's flow
    /// changing in the kernel.
    Ignore,
    /// A mirrored peer's flow left the kernel (expiry, another program, a
    /// flush): the kernel must hold it while the peer does.
    RestoreMirrored(FlowKey),
    /// Cache the event's flow, as completed by [`route`] (and replicate
    /// it unless it is our own write).
    Upsert { replicate: bool },
    /// Drop it from the internal cache (and from the peers').
    Delete { key: FlowKey, replicate: bool },
    /// The filter refuses it and it is not cached: nothing to do.
    Nothing,
}

/// What the owner can tell about an event's key, asked only when the
/// decision needs it (each answer is a cache lookup).
pub(super) trait KeyFacts {
    /// Warm standby holds a peer's flow with this key in our kernel.
    fn mirrored(&self, key: &FlowKey) -> bool;
    /// The internal cache's copy (an update completes from it).
    fn cached(&self, key: &FlowKey) -> Option<Flow>;
}

/// Route one event. `accepts` is the filter's verdict on a complete flow.
/// An update's flow is completed in place from the cached copy; the event
/// is borrowed, not moved (a flow is a few hundred bytes, and events come
/// by the hundred thousand a second).
pub(super) fn route(
    event: &mut KernelEvent,
    origins: &EventOrigins,
    facts: &impl KeyFacts,
    accepts: impl Fn(&Flow) -> bool,
) -> Route {
    if origins.ignored.contains(&event.portid) {
        return Route::Ignore;
    }
    let key = event.flow.key();
    if facts.mirrored(&key) {
        return match event.kind {
            EventKind::Destroy => Route::RestoreMirrored(key),
            EventKind::New | EventKind::Update => Route::Ignore,
        };
    }
    let replicate = !origins.own.contains(&event.portid);
    let flow = &mut event.flow;
    match event.kind {
        EventKind::Destroy => return Route::Delete { key, replicate },
        EventKind::Update => {
            // Complete the partial update first, so the filter judges the
            // flow's real state.
            if let Some(cached) = facts.cached(&key) {
                flow.fill_from_previous(&cached);
            }
        }
        EventKind::New => {}
    }
    if accepts(flow) {
        Route::Upsert { replicate }
    } else if facts.cached(&key).is_some() {
        // It left the filter (a TCP state no longer accepted, say): the
        // peers drop it too.
        Route::Delete { key, replicate }
    } else {
        Route::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_flows::udp;

    const OURS: u32 = 7;
    const INJECTOR: u32 = 9;

    fn origins() -> EventOrigins {
        EventOrigins {
            own: [OURS].into_iter().collect(),
            ignored: [INJECTOR].into_iter().collect(),
        }
    }

    fn event(kind: EventKind, flow: Flow, portid: u32) -> KernelEvent {
        KernelEvent { kind, flow, portid }
    }

    struct Facts {
        mirrored: bool,
        cached: Option<Flow>,
    }

    impl KeyFacts for Facts {
        fn mirrored(&self, _: &FlowKey) -> bool {
            self.mirrored
        }
        fn cached(&self, _: &FlowKey) -> Option<Flow> {
            self.cached.clone()
        }
    }

    fn facts(mirrored: bool, cached: Option<Flow>) -> Facts {
        Facts { mirrored, cached }
    }

    #[test]
    fn packet_driven_changes_are_cached_and_replicated() {
        let f = udp(1000);
        let r = route(
            &mut event(EventKind::New, f.clone(), 0),
            &origins(),
            &facts(false, None),
            |_| true,
        );
        assert_eq!(r, Route::Upsert { replicate: true });
        let r = route(
            &mut event(EventKind::Destroy, f.clone(), 0),
            &origins(),
            &facts(false, Some(f.clone())),
            |_| true,
        );
        assert_eq!(
            r,
            Route::Delete {
                key: f.key(),
                replicate: true
            }
        );
    }

    #[test]
    fn our_own_writes_are_cached_but_not_echoed() {
        let f = udp(1001);
        let r = route(
            &mut event(EventKind::New, f.clone(), OURS),
            &origins(),
            &facts(false, None),
            |_| true,
        );
        assert_eq!(r, Route::Upsert { replicate: false });
    }

    #[test]
    fn the_injectors_writes_and_mirrored_flows_are_not_ours() {
        let f = udp(1002);
        let r = route(
            &mut event(EventKind::New, f.clone(), INJECTOR),
            &origins(),
            &facts(false, None),
            |_| true,
        );
        assert_eq!(r, Route::Ignore);
        for kind in [EventKind::New, EventKind::Update] {
            let r = route(
                &mut event(kind, f.clone(), 0),
                &origins(),
                &facts(true, None),
                |_| true,
            );
            assert_eq!(r, Route::Ignore);
        }
    }

    #[test]
    fn a_mirrored_flow_destroyed_by_anyone_else_is_restored() {
        let f = udp(1003);
        for portid in [0, OURS, 12345] {
            let r = route(
                &mut event(EventKind::Destroy, f.clone(), portid),
                &origins(),
                &facts(true, None),
                |_| true,
            );
            assert_eq!(r, Route::RestoreMirrored(f.key()));
        }
    }

    #[test]
    fn an_update_is_completed_from_the_cache_before_the_filter_sees_it() {
        let mut cached = udp(1004);
        cached.helper = Some("tftp".into());
        let mut partial = cached.clone();
        partial.helper = None;
        let mut e = event(EventKind::Update, partial, 0);
        let r = route(
            &mut e,
            &origins(),
            &facts(false, Some(cached.clone())),
            |f| f.helper.is_some(),
        );
        assert_eq!(r, Route::Upsert { replicate: true });
        assert_eq!(e.flow, cached);
    }

    #[test]
    fn a_flow_that_leaves_the_filter_is_deleted_only_if_cached() {
        let f = udp(1005);
        let r = route(
            &mut event(EventKind::Update, f.clone(), 0),
            &origins(),
            &facts(false, Some(f.clone())),
            |_| false,
        );
        assert_eq!(
            r,
            Route::Delete {
                key: f.key(),
                replicate: true
            }
        );
        let r = route(
            &mut event(EventKind::New, f.clone(), 0),
            &origins(),
            &facts(false, None),
            |_| false,
        );
        assert_eq!(r, Route::Nothing);
    }
}
