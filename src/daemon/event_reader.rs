//! The kernel event reader: a plain thread that drains the ctnetlink event
//! socket into the owner's channel, pacing batches and holding events in
//! memory while the owner is busy.
//!
//! Owns: the event socket's reads, the thread's priority (nice, and the
//! configured scheduler), batching and
//! coalescing. Must not: look into events (routing is `routing`'s job) or
//! touch the caches.

use crate::config::Scheduler;
use crate::kernel::events::EventSocket;
use crate::kernel::{KernelError, KernelEvent};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the kernel event thread reports.
pub(super) enum KernelFeed {
    Events(Vec<KernelEvent>),
    Overrun { buffer_size: usize },
    Failed(String),
}

/// `daemon_nice`: `[daemon] nice`; the event thread never runs below it.
/// `scheduler`: `[daemon] scheduler`, which this thread runs under (as the
/// owner's; the daemon's other threads do not).
pub(super) fn spawn(
    events: EventSocket,
    tx: mpsc::Sender<KernelFeed>,
    daemon_nice: Option<i32>,
    scheduler: Option<Scheduler>,
) -> std::io::Result<()> {
    let nice = event_thread_nice(daemon_nice);
    std::thread::Builder::new()
        .name("ct-events".into())
        .spawn(move || {
            // Needs CAP_SYS_NICE; without it the thread keeps the
            // daemon's priority.
            crate::process::set_thread_nice(nice);
            super::priority::realtime_thread(scheduler);
            event_loop(events, tx);
        })
        .map(|_| ())
}

/// Nice value of the event reader: above the daemon's other threads, so
/// that a busy machine still drains the event socket before it overruns
/// (the events then wait in memory, and an overrun costs a table re-read).
const EVENT_THREAD_NICE: libc::c_int = -10;

/// The event thread's nice value: `EVENT_THREAD_NICE`, or the daemon's own
/// where `[daemon] nice` puts the daemon higher still.
fn event_thread_nice(daemon_nice: Option<i32>) -> libc::c_int {
    daemon_nice.map_or(EVENT_THREAD_NICE, |n| n.min(EVENT_THREAD_NICE))
}

/// Most events the reader holds while the daemon's loop is busy (about
/// 50 MB) before it waits, and the socket buffer takes over.
const MAX_HELD_EVENTS: usize = 1 << 18;

/// Fewer events than this in a batch: the reader pauses `COALESCE`.
const THIN_BATCH: usize = 512;
/// Every flow waits up to this long before the daemon sees it, so it sets
/// the replication latency at moderate rates: measured at 50,000 events/s
/// (1M flows, 2 cores), 2 ms gave p50 2.3 ms and p99 4.4 ms to the peer's
/// cache, 1 ms 1.6/3.3, 0.5 ms 1.0/3.3 (conntrackd: 0.9/1.7), for about
/// 5% more CPU per event in a burst than 2 ms. At 150k events/s, 0.5 ms is
/// 75 events, far under the socket buffer.
const COALESCE: Duration = Duration::from_micros(500);

/// Read events and hand them to the daemon's loop. When the loop's channel
/// is full (a long pass over the cache, say), keep reading into memory
/// rather than let the socket overrun: an overrun costs a table re-read.
fn event_loop(mut events: EventSocket, tx: mpsc::Sender<KernelFeed>) {
    let mut held: Vec<KernelEvent> = Vec::new();
    loop {
        let before = held.len();
        let read = if held.is_empty() {
            events.recv(&mut held)
        } else {
            events.recv_queued(&mut held)
        };
        match read {
            Ok(()) => {}
            Err(KernelError::Overrun) => {
                // Whatever decoded before the overrun still counts.
                let batch = std::mem::take(&mut held);
                let overrun = KernelFeed::Overrun {
                    buffer_size: events.buffer_size(),
                };
                if (!batch.is_empty() && tx.blocking_send(KernelFeed::Events(batch)).is_err())
                    || tx.blocking_send(overrun).is_err()
                {
                    return;
                }
                continue;
            }
            Err(e) => {
                std::thread::sleep(Duration::from_millis(100));
                if tx.blocking_send(KernelFeed::Failed(e.to_string())).is_err() {
                    return;
                }
                continue;
            }
        }
        if held.is_empty() {
            continue;
        }
        let delivered = held.len();
        match tx.try_send(KernelFeed::Events(std::mem::take(&mut held))) {
            Ok(()) => {
                // A thin batch: let the next events gather in the socket
                // for a moment rather than wake both threads per event (a
                // burst otherwise costs two context switches an event).
                if delivered < THIN_BATCH {
                    std::thread::sleep(COALESCE);
                }
            }
            Err(mpsc::error::TrySendError::Full(KernelFeed::Events(batch))) => {
                held = batch;
                if held.len() >= MAX_HELD_EVENTS {
                    tracing::warn!(held = held.len(), "event reader waits for the owner");
                    let batch = std::mem::take(&mut held);
                    if tx.blocking_send(KernelFeed::Events(batch)).is_err() {
                        return;
                    }
                } else if held.len() == before {
                    // Nothing new and nowhere to put it: wait a little.
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_thread_is_never_below_the_daemon() {
        assert_eq!(event_thread_nice(None), EVENT_THREAD_NICE);
        assert_eq!(event_thread_nice(Some(5)), EVENT_THREAD_NICE);
        assert_eq!(event_thread_nice(Some(-15)), -15);
    }
}
