//! Progress of a long client request (a commit or a re-read of a large
//! table) on a terminal: a line on stderr, rewritten in place, fed by the
//! daemon's counters over a second control connection.
//!
//! Owns: the polling thread and the line it draws. Must not: print anything
//! when stderr is not a terminal (the caller decides), or touch stdout.

use ctsync::control::{self, Envelope, Request, StatsSection};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the daemon is asked how far it got.
const POLL: Duration = Duration::from_millis(250);

/// The running progress line; dropping it stops the thread and ends the line.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(socket: PathBuf, request: Request) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || draw(&socket, &request, &flag));
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn draw(socket: &Path, request: &Request, stop: &AtomicBool) {
    let started = Instant::now();
    let mut drawn = false;
    let stats = Envelope {
        request: Request::Stats(StatsSection::General),
        json: true,
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let secs = started.elapsed().as_secs_f64();
        let line = match request {
            Request::Commit | Request::CommitPeer { .. } => {
                let Ok(reply) = control::send(socket, &stats) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
                let done = v["commit"]["done"].as_u64().unwrap_or(0);
                let total = v["commit"]["total"].as_u64().unwrap_or(0).max(1);
                format!(
                    "committing: {done} / {total} flows ({:.0}%), {secs:.1} s",
                    done as f64 * 100.0 / total as f64
                )
            }
            _ => format!("reading the kernel table: {secs:.1} s"),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        drawn = true;
    }
    if drawn {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}
