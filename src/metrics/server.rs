//! The HTTP side of the endpoint: hyper's HTTP/1 server on a thread and
//! tokio runtime of its own. `GET` (or `HEAD`) `/metrics` asks the daemon
//! for a snapshot and answers with its exposition; any other path is 404,
//! any other method 405, and what hyper cannot parse gets its 400.
//!
//! Owns: binding the address, accepting connections (a bounded number at
//! once, each with time limits, one request each), and the answers. Must not: gather
//! counters (the daemon's owner task does, when asked through the channel)
//! or block the owner: a scrape waits for its snapshot here, never there.

use crate::counters::StatsSnapshot;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// What a scrape sends the daemon: where to put the snapshot.
pub type SnapshotRequest = oneshot::Sender<StatsSnapshot>;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// Time a client gets to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection is kept, whatever it does.
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);
/// The longest a scrape waits for the daemon's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bind `addr`; a failure names the address.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr} ([metrics] listen): {e}"),
        )
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serve `listener` on a thread of its own until the process ends; each
/// scrape sends a `SnapshotRequest` on `snapshots`. `on_start` runs first
/// on that thread (the daemon sets its priority there).
pub fn spawn(
    listener: std::net::TcpListener,
    snapshots: mpsc::Sender<SnapshotRequest>,
    on_start: fn(),
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ct-metrics".into())
        .spawn(move || {
            on_start();
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, snapshots).await,
                    Err(e) => tracing::error!(error = %e, "cannot serve the metrics endpoint"),
                }
            });
        })
        .map(|_| ())
}

/// Accept connections and serve each on a task of its own.
pub async fn serve(listener: tokio::net::TcpListener, snapshots: mpsc::Sender<SnapshotRequest>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: try again shortly.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let snapshots = snapshots.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(request, snapshots).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                // One request a connection: an idle kept-alive connection
                // would hold a slot (hyper's header timeout does not cover
                // the wait between requests), and 16 of them every slot.
                // Prometheus scrapes every 15 s or so: a new connection
                // each time costs nothing.
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let ended = tokio::time::timeout(CONNECTION_LIMIT, connection).await;
            if let Ok(Err(e)) = ended {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

/// The answer to one request.
async fn answer(
    request: Request<Incoming>,
    snapshots: mpsc::Sender<SnapshotRequest>,
) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(snapshot) = ask(&snapshots).await else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon did not answer in time\n",
        );
    };
    // To HEAD, hyper sends the headers (with the length) and no body.
    let text = super::render::render(&snapshot);
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    r
}

/// A snapshot from the daemon, or `None` if it is gone or too slow.
async fn ask(snapshots: &mpsc::Sender<SnapshotRequest>) -> Option<StatsSnapshot> {
    let (tx, rx) = oneshot::channel();
    let asked = async {
        snapshots.send(tx).await.ok()?;
        rx.await.ok()
    };
    tokio::time::timeout(SNAPSHOT_TIMEOUT, asked)
        .await
        .ok()
        .flatten()
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
