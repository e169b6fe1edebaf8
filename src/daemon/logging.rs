//! Where log lines go: stderr always (journald reads it under systemd),
//! plus `[daemon] log_file` and/or `[daemon] syslog` as configured; with
//! `-d` and neither configured, syslog facility `daemon`, so that a
//! background daemon's lines are not lost.
//!
//! Owns: the subscriber, the log file (appended, created 0640, reopened on
//! reload and on SIGUSR1, for logrotate), the syslog socket (/dev/log,
//! RFC 3164 lines) and the count of lines dropped rather than wait. Must not: block the caller
//! for long: file lines go through a bounded queue to a writer thread
//! (dropped when it is full), syslog lines are sent without waiting
//! (dropped when the socket is full or absent).

use crate::config::{DaemonConfig, SyslogFacility};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Set (by `ctsyncd -d`) in the environment of the background daemon: its
/// stderr is /dev/null.
pub const DETACHED_ENV: &str = "CTSYNCD_DETACHED";

/// The local syslog socket (syslogd's and journald's).
const SYSLOG_SOCKET: &str = "/dev/log";
/// Lines longer than this are cut (syslog daemons' usual limit).
const SYSLOG_LINE_MAX: usize = 8192;
/// After the syslog socket could not be reached, try again this much later.
const SYSLOG_RETRY: Duration = Duration::from_secs(1);
/// File lines queued for the writer thread before new ones are dropped.
const FILE_QUEUE_LINES: usize = 16_384;

/// Lines the syslog socket did not take (full, absent, refused).
static SYSLOG_DROPPED: AtomicU64 = AtomicU64::new(0);
/// The log file, for `reopen_file` (set once, by `init`).
static LOG_FILE: OnceLock<LogFile> = OnceLock::new();
/// The file writer queue's count of dropped lines.
static FILE_DROPPED: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Where lines go besides stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Sinks {
    pub file: Option<PathBuf>,
    pub syslog: Option<SyslogFacility>,
}

/// The sinks for a configuration: as configured, except that a detached
/// daemon (`-d`, stderr gone) with neither logs to syslog, facility daemon.
pub(super) fn sinks(config: &DaemonConfig, detached: bool) -> Sinks {
    let syslog = match (config.syslog, &config.log_file, detached) {
        (Some(facility), _, _) => Some(facility),
        (None, None, true) => Some(SyslogFacility::Daemon),
        (None, _, _) => None,
    };
    Sinks {
        file: config.log_file.clone(),
        syslog,
    }
}

/// Keeps the file writer thread; dropping it flushes what is queued.
pub struct LogGuard {
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Install the subscriber: stderr, plus the sinks. `RUST_LOG` overrides
/// `level`. A log file that cannot be opened is an error naming it.
pub(super) fn init(level: &str, sinks: &Sinks) -> Result<LogGuard, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only for a person watching (journald and files get none).
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let (file_layer, guard) = match &sinks.file {
        Some(path) => {
            let file = LogFile::open(path)?;
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(true)
                .buffered_lines_limit(FILE_QUEUE_LINES)
                .thread_name("ct-logfile")
                .finish(file.clone());
            let _ = FILE_DROPPED.set(writer.error_counter());
            let _ = LOG_FILE.set(file);
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .with_target(false);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    let mut unreachable = None;
    let syslog_layer = sinks.syslog.map(|facility| {
        let sink = Syslog::new(PathBuf::from(SYSLOG_SOCKET), facility);
        unreachable = sink.connect().err();
        tracing_subscriber::fmt::layer()
            .with_writer(SyslogWriter(Arc::new(sink)))
            .with_ansi(false)
            .with_target(false)
            .with_level(false)
            .without_time()
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file_layer)
        .with(syslog_layer)
        .try_init();
    if let Some(e) = unreachable {
        tracing::warn!(
            "syslog socket {SYSLOG_SOCKET}: {e}; syslog lines are dropped until it can be reached"
        );
    }
    Ok(LogGuard { _file: guard })
}

/// Check that `[daemon] log_file` can be opened for appending (created
/// 0640 if absent): `ctsyncd -d` asks before it detaches, so the error
/// reaches the operator's terminal.
pub fn check_log_file(config: &DaemonConfig) -> Result<(), String> {
    match &config.log_file {
        Some(path) => open_append(path).map(|_| ()),
        None => Ok(()),
    }
}

/// Reopen the log file at its path (after logrotate moved it). Nothing to
/// do without one.
pub(super) fn reopen_file() -> Result<Option<PathBuf>, String> {
    match LOG_FILE.get() {
        Some(file) => file.reopen().map(|()| Some(file.path.clone())),
        None => Ok(None),
    }
}

/// Log lines dropped rather than wait (syslog socket full or absent, file
/// queue full).
pub fn dropped_lines() -> u64 {
    let file = FILE_DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX));
    SYSLOG_DROPPED.load(Ordering::Relaxed).saturating_add(file)
}

fn open_append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("log_file {}: {e}", path.display()))
}

/// The log file, shared by the writer thread and `reopen_file`.
#[derive(Clone)]
struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl LogFile {
    fn open(path: &Path) -> Result<LogFile, String> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    /// Open the path again and write there from now on; on failure the old
    /// file stays in use.
    fn reopen(&self) -> Result<(), String> {
        let new = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// The syslog socket: connected on first use, again after syslogd went
/// away; never waits.
struct Syslog {
    path: PathBuf,
    facility: u8,
    pid: u32,
    state: Mutex<SyslogState>,
}

#[derive(Default)]
struct SyslogState {
    socket: Option<UnixDatagram>,
    retry_at: Option<Instant>,
}

impl Syslog {
    fn new(path: PathBuf, facility: SyslogFacility) -> Syslog {
        Syslog {
            path,
            facility: facility_code(facility),
            pid: std::process::id(),
            state: Mutex::default(),
        }
    }

    fn connect(&self) -> std::io::Result<UnixDatagram> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        socket.connect(&self.path)?;
        Ok(socket)
    }

    fn send(&self, severity: u8, message: &[u8]) {
        let line = syslog_line(self.facility, severity, &timestamp(), self.pid, message);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // Once more after a reconnect: syslogd may have restarted.
        for _ in 0..2 {
            if state.socket.is_none() {
                if state.retry_at.is_some_and(|at| Instant::now() < at) {
                    break;
                }
                match self.connect() {
                    Ok(socket) => {
                        state.socket = Some(socket);
                        state.retry_at = None;
                    }
                    Err(_) => {
                        state.retry_at = Some(Instant::now() + SYSLOG_RETRY);
                        break;
                    }
                }
            }
            let Some(socket) = &state.socket else {
                break;
            };
            match socket.send(&line) {
                Ok(_) => return,
                // Full: drop the line rather than wait.
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => state.socket = None,
            }
        }
        SYSLOG_DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The fmt layer's writer for syslog: one datagram per line, at the
/// line's severity.
struct SyslogWriter(Arc<Syslog>);

struct SyslogLine {
    sink: Arc<Syslog>,
    severity: u8,
    buf: Vec<u8>,
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            sink: self.0.clone(),
            severity: severity(&tracing::Level::INFO),
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        SyslogLine {
            sink: self.0.clone(),
            severity: severity(meta.level()),
            buf: Vec::new(),
        }
    }
}

impl Write for SyslogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text = self.buf.trim_ascii_end();
        if !text.is_empty() {
            self.sink.send(self.severity, text);
        }
    }
}

/// syslog(3)'s facility numbers.
fn facility_code(facility: SyslogFacility) -> u8 {
    match facility {
        SyslogFacility::User => 1,
        SyslogFacility::Daemon => 3,
        SyslogFacility::Local0 => 16,
        SyslogFacility::Local1 => 17,
        SyslogFacility::Local2 => 18,
        SyslogFacility::Local3 => 19,
        SyslogFacility::Local4 => 20,
        SyslogFacility::Local5 => 21,
        SyslogFacility::Local6 => 22,
        SyslogFacility::Local7 => 23,
    }
}

/// syslog(3)'s severities: err, warning, info, debug.
fn severity(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// `<PRI>Mmm dd hh:mm:ss ctsyncd[PID]: message` (RFC 3164, as glibc's
/// syslog(3) sends it), cut to `SYSLOG_LINE_MAX` bytes.
fn syslog_line(facility: u8, severity: u8, stamp: &str, pid: u32, message: &[u8]) -> Vec<u8> {
    let pri = u16::from(facility) * 8 + u16::from(severity);
    let mut line = format!("<{pri}>{stamp} ctsyncd[{pid}]: ").into_bytes();
    line.extend_from_slice(message);
    line.truncate(SYSLOG_LINE_MAX);
    line
}

/// Local time as RFC 3164 writes it ("Nov  3 04:05:06").
fn timestamp() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time(NULL) takes no pointer; localtime_r writes only `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return "Jan  1 00:00:00".to_string();
    }
    let month = usize::try_from(tm.tm_mon)
        .ok()
        .and_then(|m| MONTHS.get(m))
        .unwrap_or(&"Jan");
    format!(
        "{month} {:>2} {:02}:{:02}:{:02}",
        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(log_file: Option<&str>, syslog: Option<SyslogFacility>) -> DaemonConfig {
        DaemonConfig {
            pid_file: None,
            lock: None,
            log_level: "info".into(),
            log_file: log_file.map(PathBuf::from),
            syslog,
            nice: None,
            scheduler: None,
        }
    }

    #[test]
    fn a_detached_daemon_without_sinks_logs_to_syslog_daemon() {
        let none = daemon(None, None);
        assert_eq!(sinks(&none, false).syslog, None, "foreground: stderr only");
        assert_eq!(sinks(&none, true).syslog, Some(SyslogFacility::Daemon));
        // A configured file is enough: no syslog added.
        let file = daemon(Some("/var/log/ctsyncd.log"), None);
        assert_eq!(sinks(&file, true).syslog, None);
        assert_eq!(
            sinks(&file, true).file,
            Some(PathBuf::from("/var/log/ctsyncd.log"))
        );
        // A configured facility is kept, detached or not.
        let local3 = daemon(None, Some(SyslogFacility::Local3));
        assert_eq!(sinks(&local3, false).syslog, Some(SyslogFacility::Local3));
        assert_eq!(sinks(&local3, true).syslog, Some(SyslogFacility::Local3));
    }

    #[test]
    fn syslog_lines_carry_facility_and_severity() {
        let line = syslog_line(
            facility_code(SyslogFacility::Daemon),
            severity(&tracing::Level::INFO),
            "Nov  3 04:05:06",
            42,
            b"peer lost",
        );
        assert_eq!(line, b"<30>Nov  3 04:05:06 ctsyncd[42]: peer lost");
        let line = syslog_line(
            facility_code(SyslogFacility::Local7),
            severity(&tracing::Level::ERROR),
            "Nov  3 04:05:06",
            1,
            b"x",
        );
        assert!(
            line.starts_with(b"<187>"),
            "{}",
            String::from_utf8_lossy(&line)
        );
        let long = syslog_line(3, 6, "Nov  3 04:05:06", 1, &[b'a'; 20_000]);
        assert_eq!(long.len(), SYSLOG_LINE_MAX);
    }

    #[test]
    fn a_full_syslog_socket_drops_lines_without_waiting() {
        let dir = std::env::temp_dir().join(format!("cts-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let sink = Syslog::new(path.clone(), SyslogFacility::Daemon);
        let before = SYSLOG_DROPPED.load(Ordering::Relaxed);
        let started = Instant::now();
        // Nobody reads: the socket fills and later lines are dropped.
        for _ in 0..5_000 {
            sink.send(6, &[b'x'; 1000]);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = SYSLOG_DROPPED.load(Ordering::Relaxed) - before;
        assert!(dropped > 0, "a full socket must drop lines");
        let mut buf = [0u8; 2048];
        let n = server.recv(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"<30>"));
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_file_is_created_0640_and_reopened_after_rotation() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cts-logfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctsyncd.log");
        let mut file = LogFile::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
        file.write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.join("ctsyncd.log.1")).unwrap();
        file.write_all(b"two\n").unwrap();
        file.reopen().unwrap();
        file.write_all(b"three\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("ctsyncd.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        let missing = LogFile::open(&dir.join("no/such/dir/x.log"));
        assert!(missing.is_err_and(|e| e.contains("no/such/dir/x.log")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
