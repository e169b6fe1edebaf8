//! `ctsyncd`: the daemon and its own client, in conntrackd's command-line
//! dialect (see `control::cli`).
//!
//! Owns: process matters around the library: reading the config, starting
//! the daemon in the foreground or the background (`-d`), sending one
//! request and printing the reply, exit codes (0 success, 1 with a one-line
//! reason on stderr). Must not: hold protocol or daemon logic.

use ctsync::config::Config;
use ctsync::control::cli::{self, Action, Invocation};
use ctsync::control::{self, Envelope, Request, StatsSection};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod progress;

/// How long `-d` waits for the background daemon's control socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    // args_os: std::env::args panics on an argument that is not UTF-8.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("ctsyncd: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<OsString>) -> Result<(), String> {
    let args = cli::args_from_os(args).map_err(|e| e.to_string())?;
    let inv = cli::parse(&args).map_err(|e| e.to_string())?;
    match inv.action {
        Action::Version => {
            println!(
                "ctsyncd v{}: connection tracking sync daemon (conntrackd-compatible). Licensed under MIT OR Apache-2.0.",
                env!("CARGO_PKG_VERSION")
            );
            return Ok(());
        }
        Action::Help => {
            print!("{}", cli::USAGE);
            return Ok(());
        }
        Action::GenKey { id } => {
            let line = ctsync::auth::new_key_line(id).map_err(|e| format!("genkey: {e}"))?;
            println!("# ctsync sync key file: the same keys on every node, mode 0600.");
            println!("# Format: <id> <base64 key> [send]; the `send` key (else the lowest id)");
            println!("# seals what this node sends, every key listed is accepted.");
            println!("{line}");
            return Ok(());
        }
        Action::Convert { file } => {
            let origin = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| format!("{origin}: {e}"))?;
            if !ctsync::conntrackd_conf::is_conntrackd(&text) {
                return Err(format!(
                    "{origin}: not a conntrackd.conf (it starts with no General or Sync section)"
                ));
            }
            let converted =
                ctsync::conntrackd_conf::convert(&text, &origin).map_err(|e| e.to_string())?;
            print!("{}", converted.toml);
            return Ok(());
        }
        _ => {}
    }
    let (config, notes) = Config::load_with_notes(&inv.config).map_err(|e| e.to_string())?;
    match &inv.action {
        Action::Foreground => ctsync::daemon::run_blocking(config, inv.config.clone(), notes),
        Action::Background => start_background(&config, &inv),
        Action::Status => status(&config),
        Action::Request(req) => request(&config, req.clone(), inv.json),
        Action::Doctor {
            upstream_idle_timeout_s,
        } => doctor(&config, *upstream_idle_timeout_s, inv.json),
        Action::Version | Action::Help | Action::GenKey { .. } | Action::Convert { .. } => Ok(()),
    }
}

fn request(config: &Config, request: Request, json: bool) -> Result<(), String> {
    let kill = request == Request::Kill;
    let long = matches!(
        request,
        Request::Commit | Request::CommitPeer { .. } | Request::ResyncFromKernel
    );
    // Progress only for a person watching: never when stderr is a pipe or
    // a file, so scripts see exactly what conntrackd would print.
    let _progress = (long && std::io::stderr().is_terminal())
        .then(|| progress::Progress::start(config.socket.clone(), request.clone()));
    // The body goes to stdout as it arrives (a -i of a million flows is
    // some 200 MB); a reader that stops early (`| head`) ends it quietly.
    let mut stdout = std::io::stdout().lock();
    let outcome = match control::send_to(&config.socket, &Envelope { request, json }, &mut stdout) {
        Ok(outcome) => outcome,
        // A daemon told to die may go before it answers: that is success.
        Err(control::ClientError::NoReply) if kill => return Ok(()),
        Err(control::ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(())
        }
        Err(e) => return Err(e.to_string()),
    };
    if outcome.ok {
        Ok(())
    } else {
        Err(outcome
            .error
            .unwrap_or_else(|| "ctsyncd refused the request".to_string()))
    }
}

/// `doctor`: print the report; exit 1 for a warning, 2 for a critical finding.
fn doctor(config: &Config, upstream: Option<u32>, json: bool) -> Result<(), String> {
    use std::io::Write as _;
    let report = ctsync::doctor::run(config, upstream);
    let out = if json {
        ctsync::doctor::render::json(&report)
    } else {
        ctsync::doctor::render::text(&report)
    };
    let mut stdout = std::io::stdout();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("doctor: can't write the report: {e}"))?;
    match report.exit_code() {
        0 => Ok(()),
        code => std::process::exit(i32::from(code)),
    }
}

fn status(config: &Config) -> Result<(), String> {
    let env = Envelope {
        request: Request::Stats(StatsSection::General),
        json: true,
    };
    let reply = control::send(&config.socket, &env).map_err(|e| e.to_string())?;
    if !reply.ok {
        return Err(reply
            .error
            .unwrap_or_else(|| "ctsyncd refused the request".into()));
    }
    let v: serde_json::Value = serde_json::from_str(&reply.body)
        .map_err(|e| format!("malformed stats from ctsyncd: {e}"))?;
    let n = |path: &[&str]| {
        path.iter()
            .try_fold(&v, |v, k| v.get(k))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    };
    println!(
        "ctsyncd is running on {} (node {}): up {}s, internal {} flows, external {} flows",
        config.socket.display(),
        config.node_id,
        n(&["uptime_s"]),
        n(&["internal", "active"]),
        n(&["external", "active"]),
    );
    if let Some(peers) = v.get("peers").and_then(|p| p.as_array()) {
        for p in peers {
            let alive = p.get("alive").and_then(|a| a.as_bool()).unwrap_or(false);
            println!(
                "peer node {}: {}, {} flows",
                p.get("node_id").and_then(|x| x.as_u64()).unwrap_or(0),
                if alive { "alive" } else { "not heard from" },
                p.get("flows").and_then(|x| x.as_u64()).unwrap_or(0)
            );
        }
    }
    Ok(())
}

/// True when a daemon answers a stats request on `socket`.
fn answers(socket: &Path) -> bool {
    let env = Envelope {
        request: Request::Stats(StatsSection::General),
        json: true,
    };
    matches!(control::send(socket, &env), Ok(r) if r.ok)
}

/// close_range(2)'s flag: mark the range close-on-exec instead of closing it.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// `-d`: re-run this binary without `-d` in its own process group, stdio on
/// /dev/null, and succeed only once its control socket answers. Its logs go
/// to `[daemon] log_file`/`syslog`, or else to syslog (facility daemon).
fn start_background(config: &Config, inv: &Invocation) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    if answers(&config.socket) {
        return Err(format!(
            "ctsyncd already running on {}",
            config.socket.display()
        ));
    }
    // The background daemon's stderr goes nowhere: say it here.
    ctsync::daemon::check_log_file(&config.daemon)?;
    let exe = std::env::current_exe().map_err(|e| format!("can't find my own binary: {e}"))?;
    let config_path =
        std::path::absolute(&inv.config).map_err(|e| format!("{}: {e}", inv.config.display()))?;
    let mut command = Command::new(exe);
    command
        .arg("-C")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env(ctsync::daemon::DETACHED_ENV, "1")
        .process_group(0);
    // The daemon outlives its caller: it must not keep the caller's open
    // files (a notify script's lock, say) beyond stdio.
    // SAFETY: close_range only marks descriptors close-on-exec; nothing
    // here allocates or takes locks between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let _ = libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("can't start the daemon: {e}"))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!(
                "the daemon exited during startup ({st}); run ctsyncd -C {} in the foreground to see why",
                config_path.display()
            ));
        }
        if answers(&config.socket) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the daemon (pid {}) did not answer on {} within {}s",
                child.id(),
                config.socket.display(),
                START_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
