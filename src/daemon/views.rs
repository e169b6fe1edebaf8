//! `-i` and `-e`: the caches' contents rendered for a client, off the
//! owner's thread.
//!
//! Owns: the copy of a cache a `-i`/`-e` takes, a 64th of it per turn of
//! the owner's loop ([`SlicedDump`]: a million flows copied in one turn
//! held events back for some 100 ms), and decoding and rendering those
//! copies into conntrackd's line layout or JSON, on a thread of its own
//! that hands the text to the control server a chunk at a time (the whole
//! of a million flows is some 200 MB). Must not: keep a live cache (the
//! owner lends it for one part's copy, which costs no decoding).

use crate::cache::{FlowCache, FrozenCache};
use crate::control::{self, BodyStream, Reply};
use crate::sharded_table::Part;
use tokio::sync::oneshot;

/// Parts a `-i`/`-e` copies its caches in, one per turn of the loop.
const DUMP_PARTS: usize = 64;
/// Caches of at most this many flows together are copied in one turn
/// (a few ms): parts would only make the dump later. (Smaller in unit
/// tests, which step through parts of a few thousand flows.)
#[cfg(not(test))]
const WHOLE_AT_ONCE: usize = 65_536;
#[cfg(test)]
const WHOLE_AT_ONCE: usize = 1_000;

/// Which caches a dump shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DumpSource {
    /// `-i`: ours.
    Internal,
    /// `-e`: every peer's.
    External,
}

/// A `-i` or `-e` being copied a part at a time. Each part is copied in
/// one turn, so each flow shows as it was at that turn: one that changes
/// meanwhile shows once, before or after its change, like a kernel table
/// dump (`conntrack -L`). A flow created or removed meanwhile may or may
/// not show.
pub(super) struct SlicedDump {
    pub source: DumpSource,
    next: usize,
    copies: Vec<FrozenCache>,
    now_ms: u64,
    view: View,
    reply: oneshot::Sender<Reply>,
}

impl SlicedDump {
    pub(super) fn new(
        source: DumpSource,
        now_ms: u64,
        view: View,
        reply: oneshot::Sender<Reply>,
    ) -> SlicedDump {
        SlicedDump {
            source,
            next: 0,
            copies: Vec::with_capacity(DUMP_PARTS),
            now_ms,
            view,
            reply,
        }
    }

    /// Copy the next part of `caches` (the caches of `source`; all of
    /// them at the first step when they are small): the dump back while
    /// parts remain, else rendered off this thread (`None`).
    pub(super) fn step<'a>(
        mut self,
        caches: impl Iterator<Item = &'a FlowCache> + Clone,
    ) -> Option<SlicedDump> {
        let small = || caches.clone().map(FlowCache::len).sum::<usize>() <= WHOLE_AT_ONCE;
        let part = if self.next == 0 && small() {
            self.next = DUMP_PARTS;
            Part::WHOLE
        } else {
            Part::take_next(&mut self.next, DUMP_PARTS)
        };
        let mut copy = FrozenCache::default();
        for cache in caches {
            cache.freeze_into(part, std::slice::from_mut(&mut copy), |_| Some(0));
        }
        self.copies.push(copy);
        if self.next < DUMP_PARTS {
            return Some(self);
        }
        render_off_thread(self.copies, self.now_ms, self.view, self.reply);
        None
    }
}

/// Which view, and how it is printed.
#[derive(Clone, Copy, Debug)]
pub(super) struct View {
    /// Show the reply tuple (conntrackd's `-i` does, `-e` does not).
    pub with_reply: bool,
    pub json: bool,
}

/// Render `caches` on a thread of its own: `reply` is answered at once,
/// and the body follows through its `rest`, a chunk of about
/// [`CHUNK_BYTES`] at a time, so the daemon never holds the whole text
/// (some 200 MB for a million flows). The thread stops when the client is
/// gone. (Not at a lower priority: a thread that frees a dump's buffers
/// holds the process's memory-map lock meanwhile, and starved of CPU it
/// stalled the event reader until the event socket overran.)
fn render_off_thread(
    caches: Vec<FrozenCache>,
    now_ms: u64,
    view: View,
    reply: oneshot::Sender<Reply>,
) {
    let (chunks_tx, chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(CHUNKS_AHEAD);
    let spawned = std::thread::Builder::new()
        .name("ct-render".into())
        .spawn(move || {
            // Never real-time (see `priority`); the daemon's nice value.
            super::priority::ordinary_thread();
            render_in_chunks(&caches, now_ms, view, &mut |chunk| {
                chunks_tx.blocking_send(chunk.into_bytes()).is_ok()
            });
        });
    match spawned {
        Ok(_) => {
            let _ = reply.send(Reply {
                rest: BodyStream::new(chunks),
                ..Reply::ok(String::new())
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a thread to render a cache");
            let _ = reply.send(Reply::err(format!("cannot render the cache: {e}")));
        }
    }
}

/// Bytes of rendered text handed on at a time.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks the renderer may be ahead of the client.
const CHUNKS_AHEAD: usize = 4;

/// Render `caches`, handing the text to `emit` a chunk of about
/// [`CHUNK_BYTES`] at a time (the last one maybe shorter); stops early
/// when `emit` returns false.
fn render_in_chunks(
    caches: &[FrozenCache],
    now_ms: u64,
    view: View,
    emit: &mut dyn FnMut(String) -> bool,
) {
    let entries = caches
        .iter()
        .flat_map(FrozenCache::entries)
        .map(|e| e.entry());
    let mut out = String::with_capacity(CHUNK_BYTES + 4096);
    let mut json = view
        .json
        .then(|| control::render::FlowsJsonWriter::open(&mut out));
    for entry in entries {
        match &mut json {
            Some(writer) => writer.item(&mut out, &entry, now_ms),
            None => {
                control::render::write_flow_line(&mut out, &entry, now_ms, view.with_reply);
                out.push('\n');
            }
        }
        if out.len() >= CHUNK_BYTES {
            let full = std::mem::replace(&mut out, String::with_capacity(CHUNK_BYTES + 4096));
            if !emit(full) {
                return;
            }
        }
    }
    if let Some(writer) = json {
        writer.close(&mut out);
    }
    if !out.is_empty() {
        emit(out);
    }
}

/// The whole text `render_in_chunks` makes, in one piece.
#[cfg(test)]
fn render(caches: &[FrozenCache], now_ms: u64, view: View) -> String {
    let mut whole = String::new();
    render_in_chunks(caches, now_ms, view, &mut |chunk| {
        whole.push_str(&chunk);
        true
    });
    whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheEntry, FlowCache};
    use crate::flow::test_flows::udp;

    /// Step a dump of `cache` to its end, changing the cache after part
    /// `change_after` as `change` says; the rendered body.
    fn sliced(
        cache: &mut FlowCache,
        view: View,
        change_after: usize,
        change: impl FnOnce(&mut FlowCache),
    ) -> String {
        let (tx, mut rx) = oneshot::channel();
        let mut dump = Some(SlicedDump::new(DumpSource::Internal, 9_000, view, tx));
        let mut change = Some(change);
        let want = if cache.len() > WHOLE_AT_ONCE {
            DUMP_PARTS
        } else {
            1
        };
        let mut turns = 0;
        while let Some(d) = dump.take() {
            dump = d.step(std::iter::once(&*cache));
            turns += 1;
            if turns == change_after {
                if let Some(change) = change.take() {
                    change(cache);
                }
            }
        }
        assert_eq!(turns, want);
        let reply = rx
            .try_recv()
            .expect("answered once the last part is copied");
        let mut body = reply.body.into_bytes();
        if let Some(mut rest) = reply.rest.take() {
            while let Some(chunk) = rest.blocking_recv() {
                body.extend_from_slice(&chunk);
            }
        }
        String::from_utf8(body).expect("text")
    }

    #[test]
    fn a_big_dump_comes_in_chunks_that_add_up_and_stops_when_nobody_takes_them() {
        let mut cache = FlowCache::with_seed(9);
        for port in 1..=12_000 {
            cache.upsert(udp(port), 2_000);
        }
        let frozen = [cache.freeze()];
        let live: Vec<CacheEntry> = cache.iter().collect();
        for json in [false, true] {
            let view = View {
                with_reply: true,
                json,
            };
            let mut chunks = Vec::new();
            render_in_chunks(&frozen, 9_000, view, &mut |c| {
                chunks.push(c);
                true
            });
            assert!(chunks.len() > 1, "{} chunks", chunks.len());
            let (last, full) = chunks.split_last().expect("chunks");
            assert!(full.iter().all(|c| c.len() >= CHUNK_BYTES));
            assert!(!last.is_empty());
            let whole = chunks.concat();
            if json {
                assert_eq!(whole, control::render::flows_json(&live, 9_000));
            } else {
                assert_eq!(whole.lines().count(), 12_000);
            }
            let mut taken = 0;
            render_in_chunks(&frozen, 9_000, view, &mut |_| {
                taken += 1;
                false
            });
            assert_eq!(taken, 1, "rendering went on with nobody taking it");
        }
        let empty = [FlowCache::new().freeze()];
        let view = View {
            with_reply: false,
            json: true,
        };
        assert_eq!(render(&empty, 0, view), control::render::flows_json(&[], 0));
    }

    #[test]
    fn a_dump_in_parts_shows_every_flow_once() {
        let mut cache = FlowCache::with_seed(5);
        for port in 1..=2_000 {
            cache.upsert(udp(port), 2_000);
        }
        let view = View {
            with_reply: true,
            json: false,
        };
        let mut whole: Vec<String> = render(&[cache.freeze()], 9_000, view)
            .lines()
            .map(str::to_string)
            .collect();
        let mut parts: Vec<String> = sliced(&mut cache, view, 0, |_| {})
            .lines()
            .map(str::to_string)
            .collect();
        whole.sort();
        parts.sort();
        assert_eq!(parts.len(), 2_000);
        assert_eq!(parts, whole);
        // Every flow changed halfway: each still shows once, old or new.
        let body = sliced(&mut cache, view, DUMP_PARTS / 2, |c| {
            for port in 1..=2_000 {
                let mut f = udp(port);
                f.mark = 7;
                c.upsert(f, 3_000);
            }
        });
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 2_000);
        let changed = lines.iter().filter(|l| l.contains("mark=7")).count();
        assert!(
            changed > 0 && changed < 2_000,
            "{changed} of 2000 show the change"
        );
        // A small cache goes in one turn: a change after it is not seen.
        let mut small = FlowCache::with_seed(5);
        for port in 1..=WHOLE_AT_ONCE as u16 {
            small.upsert(udp(port), 2_000);
        }
        let body = sliced(&mut small, view, 1, |c| {
            c.upsert(udp(60_000), 3_000);
        });
        assert_eq!(body.lines().count(), WHOLE_AT_ONCE);
    }

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
