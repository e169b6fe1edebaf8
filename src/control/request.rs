//! The control-socket vocabulary: what a client can ask, and what comes back.
//!
//! Owns: the `Request`/`Envelope`/`Reply` types, the mapping from
//! conntrackd's native integer request codes (reference §1.11) to requests,
//! and the decoding of a request's bytes as read from the socket
//! ([`decode_request`]). Must not: do I/O or know how a request is carried
//! out.

use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Which cache a flush applies to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSel {
    All,
    Internal,
    External,
}

/// Which block of counters `-s` prints.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsSection {
    General,
    Network,
    Cache,
    Runtime,
    Link,
    Rsqueue,
    Queue,
    Process,
    /// The expectation caches (`-s expect`).
    Expect,
}

/// One thing a client asks the daemon to do.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request {
    /// Commit one peer's flows only (`commit NODE_ID`).
    CommitPeer { node_id: u32 },
    /// Write the external cache into the kernel (`-c`): flows, then
    /// expectations (with expectation sync); replies when done.
    Commit,
    /// Flows only (`-c ct`).
    CommitCt,
    /// Expectations only (`-c expect`).
    CommitExpect,
    /// The internal expectation cache (`-i expect`).
    DumpInternalExpect,
    /// The external expectation caches (`-e expect`).
    DumpExternalExpect,
    /// Delete every expectation in the kernel (`-F expect`).
    FlushKernelExpect,
    /// Re-read the kernel's expectations into the internal cache (`-R expect`).
    ResyncFromKernelExpect,
    /// Empty one or both caches (`-f`).
    FlushCaches(CacheSel),
    /// Delete the kernel's flows that pass the filter (`-F`).
    FlushKernel,
    /// The internal cache (`-i`).
    DumpInternal,
    /// The external cache (`-e`).
    DumpExternal,
    /// Clean shutdown (`-k`).
    Kill,
    /// Counters (`-s [section]`).
    Stats(StatsSection),
    /// Re-read the kernel table into the internal cache (`-R`).
    ResyncFromKernel,
    /// Ask the peers for their bulk (`-n`).
    RequestResync,
    /// Send the internal cache to the peers (`-B`).
    SendBulk,
    /// Schedule a kernel and internal-cache flush (`-t`).
    ResetTimers,
    /// Re-read the sync key file (`reload-keys`).
    ReloadKeys,
    /// Re-read the config file: the filter and the keys take effect, the
    /// log file is reopened (`reload`, or SIGHUP).
    Reload,
    /// Test seam (built only with the `test-seams` feature): remove up to
    /// `count` flows from the external caches behind the sync protocol's
    /// back, to show that a resync repairs them.
    #[cfg(feature = "test-seams")]
    DebugDropExternal { count: usize },
    /// Test seam (`test-seams` builds only): block the daemon's main loop
    /// for `ms` milliseconds, as a loop stuck in a bug would be (the
    /// watchdog must then starve).
    #[cfg(feature = "test-seams")]
    DebugStall { ms: u64 },
}

/// A request as sent on the socket in ctsync's own protocol.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Envelope {
    pub request: Request,
    /// Render dumps and stats as JSON instead of conntrackd's text.
    #[serde(default)]
    pub json: bool,
}

/// The daemon's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    /// Text (or JSON) to print as is.
    pub body: String,
    /// More of the body, in chunks that follow `body` as they are made
    /// (a `-i` of a million flows is some 200 MB): the control server
    /// writes each on as it arrives. Never serialized.
    #[serde(skip)]
    pub rest: BodyStream,
}

/// The rest of a reply's body, made by another thread: chunks until the
/// sender is dropped. Taken once (by the control server).
#[derive(Clone, Default)]
pub struct BodyStream(Option<Arc<Mutex<Option<Chunks>>>>);

/// Where the chunks of a body arrive.
pub type Chunks = tokio::sync::mpsc::Receiver<Vec<u8>>;

impl BodyStream {
    pub fn new(chunks: Chunks) -> BodyStream {
        BodyStream(Some(Arc::new(Mutex::new(Some(chunks)))))
    }

    /// The chunks, the first time they are asked for.
    pub fn take(&self) -> Option<Chunks> {
        let shared = self.0.as_ref()?;
        shared.lock().ok()?.take()
    }
}

impl PartialEq for BodyStream {
    fn eq(&self, other: &BodyStream) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for BodyStream {}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BodyStream(..)"
        } else {
            "BodyStream(none)"
        })
    }
}

impl Reply {
    /// A success with a body.
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply {
            ok: true,
            error: None,
            body: body.into(),
            rest: BodyStream::default(),
        }
    }

    /// A failure with a one-line reason.
    pub fn err(reason: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(reason.into()),
            body: String::new(),
            rest: BodyStream::default(),
        }
    }
}

/// What a native conntrackd request code asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum NativeRequest {
    /// A request ctsync carries out.
    Supported(Request),
    /// A known code that ctsync does not implement (XML, debug info).
    Unsupported(&'static str),
    /// Not a conntrackd request code.
    Unknown(i32),
}

/// Map a conntrackd request code (reference §1.11) to a request.
pub fn from_native_code(code: i32) -> NativeRequest {
    use NativeRequest::{Supported as S, Unsupported as U};
    match code {
        0 | 43 => S(Request::FlushKernel),
        1 | 44 => S(Request::ResyncFromKernel),
        16 => S(Request::DumpInternal),
        17 => S(Request::DumpExternal),
        18 => S(Request::CommitCt),
        46 => S(Request::Commit),
        19 | 45 => S(Request::FlushCaches(CacheSel::All)),
        20 => S(Request::Kill),
        21 => S(Request::Stats(StatsSection::General)),
        22 => S(Request::SendBulk),
        23 => S(Request::RequestResync),
        26 => S(Request::ResetTimers),
        28 => S(Request::Stats(StatsSection::Network)),
        29 => S(Request::Stats(StatsSection::Cache)),
        30 => S(Request::Stats(StatsSection::Runtime)),
        31 => S(Request::Stats(StatsSection::Link)),
        32 => S(Request::Stats(StatsSection::Rsqueue)),
        33 => S(Request::FlushCaches(CacheSel::Internal)),
        34 => S(Request::FlushCaches(CacheSel::External)),
        35 => S(Request::Stats(StatsSection::Process)),
        36 => S(Request::Stats(StatsSection::Queue)),
        24 | 25 | 47 | 48 => U("XML output is not supported"),
        27 => U("debug info is not supported"),
        37 => S(Request::Stats(StatsSection::Expect)),
        38 => S(Request::FlushKernelExpect),
        39 => S(Request::ResyncFromKernelExpect),
        40 => S(Request::DumpInternalExpect),
        41 => S(Request::DumpExternalExpect),
        42 => S(Request::CommitExpect),
        other => NativeRequest::Unknown(other),
    }
}

/// Largest JSON request line accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// How a client spoke, which decides how the reply is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// ctsync's own: one JSON `Envelope` line.
    Json,
    /// conntrackd's: one native-endian `i32` request code.
    Native,
}

/// Decode a request as the server read it from a connection: a JSON line
/// when the first byte is `{` (up to the first newline, or every byte
/// when there is none), else conntrackd's native code in the first four
/// bytes (any further bytes are ignored, as the server never reads them).
/// The error is the one-line reason sent back to the client.
pub fn decode_request(bytes: &[u8]) -> (Dialect, Result<Envelope, String>) {
    let Some(&first) = bytes.first() else {
        return (Dialect::Json, Err("empty request".to_string()));
    };
    if first == b'{' {
        let line = match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => bytes.get(..end).unwrap_or_default(),
            None => bytes,
        };
        if line.len() > MAX_REQUEST {
            return (
                Dialect::Json,
                Err(format!("request larger than {MAX_REQUEST} bytes")),
            );
        }
        let env =
            serde_json::from_slice::<Envelope>(line).map_err(|e| format!("malformed request: {e}"));
        return (Dialect::Json, env);
    }
    let Some(&code) = bytes.first_chunk::<4>() else {
        return (Dialect::Native, Err("truncated request".to_string()));
    };
    let env = match from_native_code(i32::from_ne_bytes(code)) {
        NativeRequest::Supported(request) => Ok(Envelope {
            request,
            json: false,
        }),
        NativeRequest::Unsupported(why) => Err(why.to_string()),
        NativeRequest::Unknown(c) => Err(format!("unknown request code {c}")),
    };
    (Dialect::Native, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_in_both_dialects() {
        let (d, env) = decode_request(b"{\"request\":\"Commit\",\"json\":true}\ntrailing");
        assert_eq!(d, Dialect::Json);
        assert_eq!(
            env,
            Ok(Envelope {
                request: Request::Commit,
                json: true
            })
        );
        let (d, env) = decode_request(b"{\"request\":{\"Stats\":\"Cache\"}}");
        assert_eq!(d, Dialect::Json);
        assert_eq!(
            env.map(|e| e.request),
            Ok(Request::Stats(StatsSection::Cache))
        );
        assert_eq!(
            decode_request(&16i32.to_ne_bytes()),
            (
                Dialect::Native,
                Ok(Envelope {
                    request: Request::DumpInternal,
                    json: false
                })
            )
        );
        assert_eq!(
            decode_request(&[16, 0]),
            (Dialect::Native, Err("truncated request".to_string()))
        );
        assert_eq!(
            decode_request(&999i32.to_ne_bytes()).1,
            Err("unknown request code 999".to_string())
        );
        assert_eq!(
            decode_request(b""),
            (Dialect::Json, Err("empty request".to_string()))
        );
        assert!(decode_request(b"{not json}\n")
            .1
            .unwrap_err()
            .starts_with("malformed request"));
        let mut big = vec![b'{'];
        big.extend(std::iter::repeat_n(b' ', MAX_REQUEST));
        assert!(decode_request(&big).1.unwrap_err().contains("larger than"));
    }

    #[test]
    fn native_codes_map_to_requests() {
        assert_eq!(
            from_native_code(16),
            NativeRequest::Supported(Request::DumpInternal)
        );
        assert_eq!(
            from_native_code(46),
            NativeRequest::Supported(Request::Commit)
        );
        assert_eq!(
            from_native_code(18),
            NativeRequest::Supported(Request::CommitCt)
        );
        assert_eq!(
            from_native_code(42),
            NativeRequest::Supported(Request::CommitExpect)
        );
        assert_eq!(
            from_native_code(37),
            NativeRequest::Supported(Request::Stats(StatsSection::Expect))
        );
        assert_eq!(
            from_native_code(34),
            NativeRequest::Supported(Request::FlushCaches(CacheSel::External))
        );
        assert_eq!(
            from_native_code(0),
            NativeRequest::Supported(Request::FlushKernel)
        );
        assert_eq!(
            from_native_code(44),
            NativeRequest::Supported(Request::ResyncFromKernel)
        );
        assert_eq!(
            from_native_code(40),
            NativeRequest::Supported(Request::DumpInternalExpect)
        );
        assert!(matches!(
            from_native_code(47),
            NativeRequest::Unsupported(_)
        ));
        assert_eq!(from_native_code(999), NativeRequest::Unknown(999));
    }

    #[test]
    fn envelope_json_round_trips() {
        let e = Envelope {
            request: Request::CommitPeer { node_id: 3 },
            json: true,
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.starts_with('{'));
        assert_eq!(serde_json::from_str::<Envelope>(&s).unwrap(), e);
    }
}
