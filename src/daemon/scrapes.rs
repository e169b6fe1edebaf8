//! The daemon's side of the metrics endpoint: binding `[metrics] listen`
//! at start-up (a failure stops the start, naming the address), starting
//! `metrics::server` on its own thread, and answering each scrape with a
//! `-s` snapshot from the owner task.
//!
//! Owns: the channel between the endpoint and the owner. Must not: render
//! (the endpoint's thread does) or wait for a scraper.

use super::Daemon;
use crate::config::Config;
use crate::metrics::server::{self, SnapshotRequest};
use tokio::sync::mpsc;

/// Scrapes waiting for a snapshot: a few; more wait on the endpoint's side.
const PENDING_SCRAPES: usize = 4;

/// Scrape requests from the endpoint; never any when metrics are off.
pub(super) struct Scrapes {
    rx: Option<mpsc::Receiver<SnapshotRequest>>,
}

/// Bind and start the endpoint if `[metrics] listen` is set.
pub(super) fn start(config: &Config) -> std::io::Result<Scrapes> {
    let Some(addr) = config.metrics.listen else {
        return Ok(Scrapes { rx: None });
    };
    let listener = server::bind(addr)?;
    let (tx, rx) = mpsc::channel(PENDING_SCRAPES);
    server::spawn(listener, tx, super::priority::ordinary_thread)?;
    tracing::info!(%addr, "metrics endpoint listening");
    Ok(Scrapes { rx: Some(rx) })
}

impl Scrapes {
    /// The next scrape; pending forever when metrics are off.
    pub(super) async fn next(&mut self) -> Option<SnapshotRequest> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }
}

impl Daemon {
    pub(super) fn answer_scrape(&self, request: SnapshotRequest) {
        // The scraper may have given up meanwhile: nothing to do then.
        let _ = request.send(self.snapshot());
    }
}
