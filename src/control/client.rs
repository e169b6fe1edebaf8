//! The client's end of the control socket: a blocking, one-shot exchange.
//!
//! Owns: connecting, sending one `Envelope` line, and reading the reply
//! header line and body, whole or copied on into a writer as it comes.
//! Must not: print, exit, or interpret the body.

use super::request::{Envelope, Reply};
use super::server::ReplyHeader;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Why a request could not be carried to the daemon and back.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("can't connect to {path}: is ctsyncd running? appropriate permissions? ({source})")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply from ctsyncd: {0}")]
    Protocol(String),
    /// The daemon closed the connection without a reply (as a dying daemon may).
    #[error("ctsyncd closed the connection without replying")]
    NoReply,
    /// The reply's body could not be written where it was going.
    #[error("can't write the reply: {0}")]
    Output(#[source] std::io::Error),
}

/// Send one request and wait for the whole reply (a commit replies only when
/// it has finished, so there is no read timeout).
pub fn send(path: &Path, env: &Envelope) -> Result<Reply, ClientError> {
    let mut body = Vec::new();
    let outcome = send_to(path, env, &mut body)?;
    Ok(Reply {
        ok: outcome.ok,
        error: outcome.error,
        body: String::from_utf8_lossy(&body).into_owned(),
        rest: Default::default(),
    })
}

/// How the daemon answered a request whose body went to a writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
}

/// Send one request and copy the reply's body into `out` as it arrives,
/// without holding it (a `-i` of a million flows is some 200 MB of text).
/// A failed write to `out` is [`ClientError::Output`]: the reply was read
/// only up to there.
pub fn send_to(path: &Path, env: &Envelope, out: &mut dyn Write) -> Result<Outcome, ClientError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    let mut line = serde_json::to_vec(env).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::with_capacity(BODY_CHUNK, stream);
    let mut header = String::new();
    if reader.read_line(&mut header)? == 0 {
        return Err(ClientError::NoReply);
    }
    let header: ReplyHeader = serde_json::from_str(header.trim_end())
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        out.write_all(chunk).map_err(ClientError::Output)?;
        reader.consume(n);
    }
    out.flush().map_err(ClientError::Output)?;
    Ok(Outcome {
        ok: header.ok,
        error: header.error,
    })
}

/// Bytes of the reply read (and written on) at a time.
const BODY_CHUNK: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::request::Request;
    use std::os::unix::net::UnixListener;

    const OK: &str = "{\"ok\":true,\"error\":null}\n";

    /// A daemon's stand-in on a socket of its own (in a temp dir named by
    /// tag and pid, which the test removes): reads one request line,
    /// answers `header` (none: hangs up) and then `body`.
    fn answering(tag: &str, header: Option<&'static str>, body: Vec<u8>) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cts-client-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ctl.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let mut stream = reader.into_inner();
            if let Some(h) = header {
                let _ = stream.write_all(h.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        path
    }

    fn dump() -> Envelope {
        Envelope {
            request: Request::DumpInternal,
            json: false,
        }
    }

    /// Takes `room` bytes, then answers as a closed pipe does.
    struct ClosingAfter {
        room: usize,
        taken: usize,
    }

    impl Write for ClosingAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.taken >= self.room {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.room - self.taken);
            self.taken += n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_body_is_copied_on_as_it_comes() {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let path = answering("stream", Some(OK), body.clone());
        let mut out = Vec::new();
        let outcome = send_to(&path, &dump(), &mut out).expect("reply");
        assert_eq!(
            outcome,
            Outcome {
                ok: true,
                error: None
            }
        );
        assert_eq!(out, body);
        remove_dir(&path);
    }

    fn remove_dir(socket: &std::path::Path) {
        if let Some(dir) = socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    #[test]
    fn a_reader_gone_early_is_an_output_error_and_a_refusal_keeps_its_reason() {
        let path = answering("closed", Some(OK), vec![b'x'; 2_000_000]);
        let mut out = ClosingAfter {
            room: 100_000,
            taken: 0,
        };
        match send_to(&path, &dump(), &mut out) {
            Err(ClientError::Output(e)) => assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe),
            other => panic!("{other:?}"),
        }
        assert_eq!(out.taken, 100_000);
        remove_dir(&path);

        let refused = "{\"ok\":false,\"error\":\"no\"}\n";
        let path = answering("refused", Some(refused), b"partial\n".to_vec());
        let reply = send(&path, &dump()).expect("reply");
        assert_eq!((reply.ok, reply.error.as_deref()), (false, Some("no")));
        assert_eq!(reply.body, "partial\n");
        remove_dir(&path);

        let path = answering("hangup", None, Vec::new());
        assert!(matches!(send(&path, &dump()), Err(ClientError::NoReply)));
        remove_dir(&path);
    }
}
