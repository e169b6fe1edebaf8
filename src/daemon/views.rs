//! `-i` and `-e`: the caches' contents rendered for a client, off the
//! owner's thread.
//!
//! Owns: decoding and rendering frozen caches into conntrackd's line
//! layout or JSON, on a blocking thread, and handing the reply over. Must
//! not: read the live caches (the owner freezes them, which costs one
//! copy and no decoding).

use crate::cache::{CacheEntry, FrozenCache};
use crate::control::{self, Reply};
use tokio::sync::oneshot;

/// Which view, and how it is printed.
#[derive(Clone, Copy, Debug)]
pub(super) struct View {
    /// Show the reply tuple (conntrackd's `-i` does, `-e` does not).
    pub with_reply: bool,
    pub json: bool,
}

/// Render `caches` on a thread of its own and answer `reply` from there.
/// (Not at a lower priority: a thread that frees a dump's buffers holds
/// the process's memory-map lock meanwhile, and starved of CPU it stalled
/// the event reader until the event socket overran.)
pub(super) fn render_off_thread(
    caches: Vec<FrozenCache>,
    now_ms: u64,
    view: View,
    reply: oneshot::Sender<Reply>,
) {
    let spawned = std::thread::Builder::new()
        .name("ct-render".into())
        .spawn(move || {
            // Never real-time (see `priority`); the daemon's nice value.
            super::priority::ordinary_thread();
            let body = render(&caches, now_ms, view);
            let _ = reply.send(super::success(body));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to render a cache");
    }
}

pub(super) fn render(caches: &[FrozenCache], now_ms: u64, view: View) -> String {
    let entries = caches
        .iter()
        .flat_map(FrozenCache::entries)
        .map(|e| e.entry());
    if view.json {
        let all: Vec<CacheEntry> = entries.collect();
        control::render::flows_json(&all, now_ms)
    } else {
        let len: usize = caches.iter().map(FrozenCache::len).sum();
        let mut out = String::with_capacity(len * 160);
        for entry in entries {
            control::render::write_flow_line(&mut out, &entry, now_ms, view.with_reply);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::FlowCache;
    use crate::flow::test_flows::udp;

    #[test]
    fn a_frozen_cache_renders_as_the_live_one_does() {
        let mut cache = FlowCache::with_seed(5);
        for port in 1..=3 {
            cache.upsert(udp(port), 2_000);
        }
        let live: Vec<CacheEntry> = cache.iter().collect();
        let mut want = String::new();
        for entry in &live {
            want.push_str(&control::render::flow_line(entry, 9_000, true));
            want.push('\n');
        }
        let view = View {
            with_reply: true,
            json: false,
        };
        assert_eq!(render(&[cache.freeze()], 9_000, view), want);
        assert_eq!(want.lines().count(), 3);
        let json = render(&[cache.freeze()], 9_000, View { json: true, ..view });
        assert_eq!(json, control::render::flows_json(&live, 9_000));
    }
}
