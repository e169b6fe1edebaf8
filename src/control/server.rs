//! The daemon's end of the control socket: bind it safely, accept
//! connections, read one request each, hand it to the state owner over a
//! channel, write the reply back, close.
//!
//! Owns: socket setup (parent dir, stale-socket removal, mode 0600), request
//! framing in both dialects (a JSON `Envelope` line, or conntrackd's native
//! 4-byte request code; `request::decode_request` decodes what was read),
//! and the limits on request size and read time.
//! Must not: carry out requests or hold daemon state; a bad request gets an
//! error reply and never stops the server.

pub use super::request::MAX_REQUEST;
use super::request::{decode_request, Dialect, Envelope, Reply};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How long a client may take to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// What the server hands the daemon: a request and where to put the reply.
pub type Job = (Envelope, oneshot::Sender<Reply>);

/// Bind the control socket at `path`: create the parent directory (0700) if
/// needed, replace a stale socket nobody answers on, refuse if a daemon
/// answers, and make the socket 0600. Must run inside a tokio runtime.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    UnixListener::from_std(bind_std(path, None)?)
}

/// `bind`, as a non-blocking standard listener that any runtime (the
/// control thread's own) can take over with `UnixListener::from_std`.
/// With `group`, the socket then belongs to that group and is mode 0660.
pub fn bind_std(path: &Path, group: Option<u32>) -> io::Result<std::os::unix::net::UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            // The group's members must be able to reach the socket: they
            // may pass through the directory (not list it).
            let mode = if group.is_some() { 0o711 } else { 0o700 };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(parent)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("ctsyncd already running on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Created 0600 (no moment with a wider mode); the umask is the
    // process's, and no other thread creates files while the daemon starts.
    // SAFETY: umask takes and returns a mode; no memory is involved.
    let previous = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener = bound?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    }
    listener.set_nonblocking(true)?;
    if group.is_none() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// What the control socket saw, counted where it happens (`-s runtime`
/// prints it as conntrackd's `local read failed` and `local unknown
/// request`).
#[derive(Debug, Default)]
pub struct ControlCounters {
    /// Requests read and handed to the daemon.
    pub requests: AtomicU64,
    /// Connections whose request could not be read (I/O error, timeout).
    pub read_failed: AtomicU64,
    /// Requests read but refused: unknown, malformed, unsupported.
    pub unknown: AtomicU64,
    /// Connections from a user who may not control the daemon.
    pub refused: AtomicU64,
}

/// A plain copy of `ControlCounters`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ControlStats {
    pub requests: u64,
    pub read_failed: u64,
    pub unknown: u64,
    pub refused: u64,
}

impl ControlCounters {
    pub fn read(&self) -> ControlStats {
        ControlStats {
            requests: self.requests.load(Ordering::Relaxed),
            read_failed: self.read_failed.load(Ordering::Relaxed),
            unknown: self.unknown.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Accept connections until the receiving end of `tx` is gone; each one is
/// served on its own task.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Job>, counters: Arc<ControlCounters>) {
    serve_group(listener, tx, counters, None).await
}

/// `serve`, also to members of the group `group` (primary or
/// supplementary).
pub async fn serve_group(
    listener: UnixListener,
    tx: mpsc::Sender<Job>,
    counters: Arc<ControlCounters>,
    group: Option<u32>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let tx = tx.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx, &counters, group).await {
                counters.read_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "control connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// What was read from a connection.
enum Incoming {
    Request(Envelope, Dialect),
    Bad(String, Dialect),
    /// Nothing complete arrived in time.
    Unread(String),
    /// The peer may not control the daemon.
    Refused(String),
}

/// The daemon's effective uid.
fn own_uid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// The peer is a member of `group`: its primary group, or one of its
/// supplementary groups (from `/proc/PID/status`).
fn in_group(cred: &tokio::net::unix::UCred, group: Option<u32>) -> bool {
    let Some(group) = group else {
        return false;
    };
    if cred.gid() == group {
        return true;
    }
    let Some(pid) = cred.pid() else {
        return false;
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| {
            groups
                .split_whitespace()
                .any(|g| g.parse::<u32>().is_ok_and(|g| g == group))
        })
}

/// Only root and the daemon's own user may send requests (the socket's
/// 0600 mode says the same; this holds even if its mode is widened).
fn may_control(uid: u32) -> bool {
    uid == 0 || uid == own_uid()
}

async fn handle(
    mut stream: UnixStream,
    tx: mpsc::Sender<Job>,
    counters: &ControlCounters,
    group: Option<u32>,
) -> io::Result<()> {
    // The request is read (bounded in size and time) whoever sends it: a
    // socket closed with a request unread resets the client's connection,
    // and the refusal would never reach it.
    let incoming = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => Incoming::Unread("timed out reading the request".to_string()),
    };
    let incoming = match stream.peer_cred() {
        Ok(cred) if may_control(cred.uid()) || in_group(&cred, group) => incoming,
        Ok(cred) => Incoming::Refused(format!(
            "uid {} may not control ctsyncd (root, uid {}{} only)",
            cred.uid(),
            own_uid(),
            group.map_or(String::new(), |g| format!(" or group {g}"))
        )),
        Err(e) => Incoming::Refused(format!("cannot tell who is asking: {e}")),
    };
    let (reply, dialect) = match incoming {
        Incoming::Refused(reason) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%reason, "control request refused");
            (Reply::err(reason), Dialect::Json)
        }
        Incoming::Unread(reason) => {
            counters.read_failed.fetch_add(1, Ordering::Relaxed);
            (Reply::err(reason), Dialect::Json)
        }
        Incoming::Bad(reason, d) => {
            counters.unknown.fetch_add(1, Ordering::Relaxed);
            (Reply::err(reason), d)
        }
        Incoming::Request(env, d) => {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            (dispatch(env, &tx).await, d)
        }
    };
    match write_reply(&mut stream, &reply, dialect).await {
        // `-i | head`: the reader had what it wanted. Not a failure.
        Err(e) if client_left(&e) => {
            tracing::debug!("control client left before the whole reply");
            Ok(())
        }
        Err(e) => Err(e),
        Ok(()) => stream.shutdown().await,
    }
}

/// A write failed because the client closed its end.
fn client_left(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

async fn dispatch(env: Envelope, tx: &mpsc::Sender<Job>) -> Reply {
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send((env, reply_tx)).await.is_err() {
        return Reply::err("ctsyncd is shutting down");
    }
    reply_rx
        .await
        .unwrap_or_else(|_| Reply::err("ctsyncd dropped the request without replying"))
}

/// Read one request (a JSON line, bounded by `MAX_REQUEST`, or a native
/// 4-byte code) and decode it with [`decode_request`].
async fn read_request(stream: &mut UnixStream) -> io::Result<Incoming> {
    let mut first = [0u8; 1];
    let bytes = if stream.read(&mut first).await? == 0 {
        Vec::new()
    } else if first[0] == b'{' {
        read_json_line(stream).await?
    } else {
        // conntrackd's native protocol: one native-endian i32, nothing else.
        let mut code = [first[0], 0, 0, 0];
        match stream.read_exact(&mut code[1..]).await {
            Ok(_) => code.to_vec(),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => vec![first[0]],
            Err(e) => return Err(e),
        }
    };
    Ok(match decode_request(&bytes) {
        (dialect, Ok(env)) => Incoming::Request(env, dialect),
        (dialect, Err(reason)) => Incoming::Bad(reason, dialect),
    })
}

/// The bytes of a JSON request line (its `{` already read): up to the
/// first newline or the end of the stream, or more than `MAX_REQUEST`
/// bytes (which `decode_request` refuses).
async fn read_json_line(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut buf = vec![b'{'];
    let mut chunk = [0u8; 4096];
    while !buf.contains(&b'\n') && buf.len() <= MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(buf)
}

/// The first line of a reply in ctsync's own dialect.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct ReplyHeader {
    pub ok: bool,
    pub error: Option<String>,
}

async fn write_reply(stream: &mut UnixStream, reply: &Reply, dialect: Dialect) -> io::Result<()> {
    match dialect {
        Dialect::Json => {
            let header = ReplyHeader {
                ok: reply.ok,
                error: reply.error.clone(),
            };
            let mut line = serde_json::to_vec(&header).map_err(io::Error::other)?;
            line.push(b'\n');
            stream.write_all(&line).await?;
            write_body(stream, reply).await
        }
        Dialect::Native => {
            write_body(stream, reply).await?;
            match (&reply.ok, &reply.error) {
                (false, Some(e)) => stream.write_all(format!("ERROR: {e}\n").as_bytes()).await,
                _ => Ok(()),
            }
        }
    }
}

/// The body, then the rest of it chunk by chunk as it is made (a client
/// that goes away ends the connection, and the thread making the chunks
/// stops when it finds nobody taking them).
async fn write_body(stream: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    stream.write_all(reply.body.as_bytes()).await?;
    if let Some(mut chunks) = reply.rest.take() {
        while let Some(chunk) = chunks.recv().await {
            stream.write_all(&chunk).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::client;
    use crate::control::request::{Request, StatsSection};
    use std::io::{Read, Write};

    /// A temp dir removed on drop, even when a test fails.
    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("cts-ctl-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A stand-in for the daemon: answers every request with its Debug form.
    fn fake_daemon(mut rx: mpsc::Receiver<Job>) {
        tokio::spawn(async move {
            while let Some((env, reply)) = rx.recv().await {
                let r = match env.request {
                    Request::Kill => Reply::err("refused in test"),
                    other => Reply::ok(format!("{other:?} json={}\n", env.json)),
                };
                let _ = reply.send(r);
            }
        });
    }

    fn raw_exchange(path: &Path, bytes: &[u8]) -> Vec<u8> {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn round_trip_native_and_garbage() {
        let dir = TempDir::new("rt");
        let path = dir.0.join("sub/ctsyncd.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (tx, rx) = mpsc::channel(8);
        fake_daemon(rx);
        tokio::spawn(serve(listener, tx, Arc::default()));

        let p = path.clone();
        let (reply, native, garbage, bad_code, kill, after) =
            tokio::task::spawn_blocking(move || {
                let reply = client::send(
                    &p,
                    &Envelope {
                        request: Request::Stats(StatsSection::Cache),
                        json: true,
                    },
                )
                .unwrap();
                let native = raw_exchange(&p, &16i32.to_ne_bytes());
                let garbage = raw_exchange(&p, b"{this is not json}\n");
                let bad_code = raw_exchange(&p, &999i32.to_ne_bytes());
                let kill = client::send(
                    &p,
                    &Envelope {
                        request: Request::Kill,
                        json: false,
                    },
                )
                .unwrap();
                let after = client::send(
                    &p,
                    &Envelope {
                        request: Request::Commit,
                        json: false,
                    },
                )
                .unwrap();
                (reply, native, garbage, bad_code, kill, after)
            })
            .await
            .unwrap();

        assert_eq!(reply, Reply::ok("Stats(Cache) json=true\n"));
        assert_eq!(
            String::from_utf8(native).unwrap(),
            "DumpInternal json=false\n"
        );
        let garbage = String::from_utf8(garbage).unwrap();
        let (head, body) = garbage.split_once('\n').unwrap();
        let head: serde_json::Value = serde_json::from_str(head).unwrap();
        assert_eq!(head["ok"], false);
        assert!(head["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed request"));
        assert_eq!(body, "");
        assert_eq!(
            String::from_utf8(bad_code).unwrap(),
            "ERROR: unknown request code 999\n"
        );
        assert!(!kill.ok);
        assert_eq!(kill.error.as_deref(), Some("refused in test"));
        assert_eq!(after, Reply::ok("Commit json=false\n"));
    }

    /// A stand-in that answers a dump with a head and 4 MiB of chunks
    /// made by another task, as the daemon's render thread does.
    fn streaming_daemon(mut rx: mpsc::Receiver<Job>) {
        tokio::spawn(async move {
            while let Some((_env, reply)) = rx.recv().await {
                let (chunks_tx, chunks) = mpsc::channel::<Vec<u8>>(4);
                tokio::spawn(async move {
                    for i in 0..64u8 {
                        if chunks_tx
                            .send(vec![b'a' + i % 26; 64 * 1024])
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                let _ = reply.send(Reply {
                    rest: crate::control::BodyStream::new(chunks),
                    ..Reply::ok("head\n")
                });
            }
        });
    }

    #[tokio::test]
    async fn a_streamed_body_arrives_whole_and_a_client_gone_early_is_no_failure() {
        let dir = TempDir::new("stream");
        let path = dir.0.join("ctsyncd.sock");
        let listener = bind(&path).unwrap();
        let (tx, rx) = mpsc::channel(8);
        streaming_daemon(rx);
        let counters: Arc<ControlCounters> = Arc::default();
        tokio::spawn(serve(listener, tx, counters.clone()));
        let p = path.clone();
        let dump = Envelope {
            request: Request::DumpInternal,
            json: false,
        };
        let (whole, early) = tokio::task::spawn_blocking(move || {
            let whole = client::send(&p, &dump).unwrap();
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"{\"request\":\"DumpInternal\"}\n").unwrap();
            let mut early = [0u8; 10];
            s.read_exact(&mut early).unwrap();
            drop(s);
            (whole, early)
        })
        .await
        .unwrap();
        assert!(whole.ok);
        assert_eq!(whole.body.len(), 5 + 64 * 64 * 1024);
        assert!(whole.body.starts_with("head\naaaa"));
        assert_eq!(&early[..1], b"{");
        // The server finds the client gone at its next write.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = counters.read();
        assert_eq!((c.requests, c.read_failed), (2, 0));
    }

    #[tokio::test]
    async fn oversized_and_truncated_requests_get_errors() {
        let dir = TempDir::new("big");
        let path = dir.0.join("ctsyncd.sock");
        let listener = bind(&path).unwrap();
        let (tx, rx) = mpsc::channel(8);
        fake_daemon(rx);
        tokio::spawn(serve(listener, tx, Arc::default()));
        let p = path.clone();
        let (big, short, ok) = tokio::task::spawn_blocking(move || {
            let mut req = vec![b'{'];
            req.extend(std::iter::repeat_n(b'x', MAX_REQUEST + 10));
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            // The server may close before reading everything; ignore write errors.
            let _ = s.write_all(&req);
            let mut big = Vec::new();
            let _ = s.read_to_end(&mut big);
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(&[16u8, 0]).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut short = Vec::new();
            s.read_to_end(&mut short).unwrap();
            let ok = raw_exchange(&p, &21i32.to_ne_bytes());
            (big, short, ok)
        })
        .await
        .unwrap();
        assert!(String::from_utf8_lossy(&big).contains("larger than"));
        assert_eq!(
            String::from_utf8(short).unwrap(),
            "ERROR: truncated request\n"
        );
        assert_eq!(
            String::from_utf8(ok).unwrap(),
            "Stats(General) json=false\n"
        );
    }

    #[tokio::test]
    async fn bind_replaces_stale_socket_and_refuses_live_one() {
        let dir = TempDir::new("stale");
        let path = dir.0.join("ctsyncd.sock");
        std::fs::create_dir_all(&dir.0).unwrap();
        // A stale socket: bound, then its listener dropped.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind(&path).unwrap();
        let err = bind(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("ctsyncd already running on {}", path.display())
        );
        drop(live);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(bind(&path)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
    }
}
