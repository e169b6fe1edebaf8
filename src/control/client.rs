//! The client's end of the control socket: a blocking, one-shot exchange.
//!
//! Owns: connecting, sending one `Envelope` line, and reading the reply
//! header line and body. Must not: print, exit, or interpret the body.

use super::request::{Envelope, Reply};
use super::server::ReplyHeader;
use std::io::{BufRead, BufReader, Read, Write};
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
}

/// Send one request and wait for the whole reply (a commit replies only when
/// it has finished, so there is no read timeout).
pub fn send(path: &Path, env: &Envelope) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    let mut line = serde_json::to_vec(env).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    if reader.read_line(&mut header)? == 0 {
        return Err(ClientError::Protocol(
            "connection closed before a reply".into(),
        ));
    }
    let header: ReplyHeader = serde_json::from_str(header.trim_end())
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut body = Vec::new();
    reader.read_to_end(&mut body)?;
    Ok(Reply {
        ok: header.ok,
        error: header.error,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
