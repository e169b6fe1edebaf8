//! The command line: the conntrackd flag matrix with its quirks, the
//! subcommands, and the built binary's exit codes and output.

use ctsync::control::cli::{parse, Action, Invocation};
use ctsync::control::{CacheSel, Envelope, Reply, Request, StatsSection};
use std::path::{Path, PathBuf};
use std::process::Command;

fn act(args: &[&str]) -> Action {
    match parse(args) {
        Ok(inv) => inv.action,
        Err(e) => panic!("{args:?}: {e}"),
    }
}

fn fails(args: &[&str]) -> String {
    match parse(args) {
        Ok(inv) => panic!("{args:?} parsed as {inv:?}"),
        Err(e) => e.to_string(),
    }
}

fn req(r: Request) -> Action {
    Action::Request(r)
}

#[test]
fn conntrackd_flags() {
    use Request::*;
    let cases: Vec<(&[&str], Action)> = vec![
        (&[], Action::Foreground),
        (&["-d"], Action::Background),
        (&["-c"], req(Commit)),
        (&["-c", "ct"], req(CommitCt)),
        (&["-cx"], req(Commit)),
        (&["-i"], req(DumpInternal)),
        (&["-i", "c"], req(DumpInternal)),
        (&["-e"], req(DumpExternal)),
        (&["-f"], req(FlushCaches(CacheSel::All))),
        (&["-f", "internal"], req(FlushCaches(CacheSel::Internal))),
        (&["-f", "ext"], req(FlushCaches(CacheSel::External))),
        (&["-F"], req(FlushKernel)),
        (&["-F", "ct"], req(FlushKernel)),
        (&["-R"], req(ResyncFromKernel)),
        (&["-k"], req(Kill)),
        (&["-s"], req(Stats(StatsSection::General))),
        (&["-s", "ct"], req(Stats(StatsSection::General))),
        (&["-s", "c"], req(Stats(StatsSection::Cache))),
        (&["-s", "r"], req(Stats(StatsSection::Runtime))),
        (&["-s", "n"], req(Stats(StatsSection::Network))),
        (&["-s", "link"], req(Stats(StatsSection::Link))),
        (&["-s", "m"], req(Stats(StatsSection::Link))),
        (&["-s", "rs"], req(Stats(StatsSection::Rsqueue))),
        (&["-s", "q"], req(Stats(StatsSection::Queue))),
        (&["-s", "p"], req(Stats(StatsSection::Process))),
        (&["-n"], req(RequestResync)),
        (&["-B"], req(SendBulk)),
        (&["-t"], req(ResetTimers)),
        (&["-v"], Action::Version),
        (&["-h"], Action::Help),
        // The last client option wins, as in conntrackd.
        (&["-i", "-e"], req(DumpExternal)),
        // Options are recognised by their second character.
        (&["-kill"], req(Kill)),
        (&["-stats", "cache"], req(Stats(StatsSection::Cache))),
    ];
    for (args, want) in cases {
        assert_eq!(act(args), want, "{args:?}");
    }
}

#[test]
fn config_and_json_flags() {
    let inv = parse(&["-C", "/tmp/x.toml", "-i", "--json"]).unwrap();
    assert_eq!(
        inv,
        Invocation {
            config: PathBuf::from("/tmp/x.toml"),
            json: true,
            action: req(Request::DumpInternal)
        }
    );
    assert_eq!(
        parse::<&str>(&[]).unwrap().config,
        PathBuf::from("/etc/ctsyncd/ctsyncd.toml")
    );
    assert!(fails(&["-C"]).contains("missing config filename"));
}

#[test]
fn errors() {
    assert!(fails(&["-d", "-c"]).contains("-d"));
    assert!(fails(&["-c", "-d"]).contains("-d"));
    assert!(fails(&["-z"]).contains("unknown option '-z'"));
    assert!(fails(&["-x"]).contains("not supported"));
    assert!(fails(&["-i", "-x"]).contains("not supported"));
    assert!(fails(&["-s", "bogus"]).contains("unknown parameter 'bogus'"));
    assert!(fails(&["-f", "both"]).contains("unknown parameter 'both'"));
    // A word after -c that is no keyword prefix is not consumed, and then
    // it is no option either.
    assert!(fails(&["-c", "zzz"]).contains("unexpected argument 'zzz'"));
    // The expectation table, as conntrackd spells it (any prefix of
    // "expect"), and `ct` for flows only.
    for (args, want) in [
        (&["-c", "exp"][..], Request::CommitExpect),
        (&["-c", "ct"], Request::CommitCt),
        (&["-c"], Request::Commit),
        (&["-i", "expect"], Request::DumpInternalExpect),
        (&["-i", "ct"], Request::DumpInternal),
        (&["-e", "e"], Request::DumpExternalExpect),
        (&["-F", "expect"], Request::FlushKernelExpect),
        (&["-R", "ex"], Request::ResyncFromKernelExpect),
        (&["-s", "expect"], Request::Stats(StatsSection::Expect)),
    ] {
        assert_eq!(act(args), req(want), "{args:?}");
    }
    assert!(fails(&["frobnicate"]).contains("unknown command"));
    assert!(fails(&["dump", "sideways"]).contains("dump:"));
    assert!(fails(&["commit", "now"]).contains("expected a peer's node id"));
    assert!(fails(&["commit", "0"]).contains("expected a peer's node id"));
    if cfg!(feature = "test-seams") {
        assert!(fails(&["debug-drop-external", "x"]).contains("expected a count"));
    } else {
        // The seam is not in a production build.
        assert!(fails(&["debug-drop-external", "5"]).contains("unknown command"));
    }
}

#[test]
fn subcommands() {
    use Request::*;
    let cases: Vec<(&[&str], Action)> = vec![
        (&["status"], Action::Status),
        (&["commit"], req(Commit)),
        (&["commit", "3"], req(CommitPeer { node_id: 3 })),
        (&["dump"], req(DumpInternal)),
        (&["dump", "internal"], req(DumpInternal)),
        (&["dump", "external"], req(DumpExternal)),
        (&["stats"], req(Stats(StatsSection::General))),
        (&["stats", "network"], req(Stats(StatsSection::Network))),
        (&["stats", "c"], req(Stats(StatsSection::Cache))),
        (&["resync"], req(RequestResync)),
        (&["bulk"], req(SendBulk)),
        (&["flush"], req(FlushCaches(CacheSel::All))),
        (&["flush", "external"], req(FlushCaches(CacheSel::External))),
        (&["flush-kernel"], req(FlushKernel)),
        (&["kill"], req(Kill)),
        (&["reload-kernel"], req(ResyncFromKernel)),
        (&["reload-keys"], req(ReloadKeys)),
        (&["reload"], req(Reload)),
        (&["genkey"], Action::GenKey { id: 1 }),
        (&["genkey", "7"], Action::GenKey { id: 7 }),
        #[cfg(feature = "test-seams")]
        (
            &["debug-drop-external", "5"],
            req(DebugDropExternal { count: 5 }),
        ),
        #[cfg(feature = "test-seams")]
        (&["debug-stall", "100"], req(DebugStall { ms: 100 })),
    ];
    for (args, want) in cases {
        assert_eq!(act(args), want, "{args:?}");
    }
    let inv = parse(&["-C", "/a.toml", "dump", "external", "--json"]).unwrap();
    assert!(inv.json);
    assert_eq!(inv.config, PathBuf::from("/a.toml"));
    let inv = parse(&["--json", "stats", "-C", "/b.toml"]).unwrap();
    assert!(inv.json);
    assert_eq!(inv.config, PathBuf::from("/b.toml"));
}

// ---- the built binary ------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_ctsyncd");

/// A temp dir removed on drop, even when the test fails.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("cts-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn config(&self, socket: &Path) -> PathBuf {
        let path = self.0.join("ctsyncd.toml");
        std::fs::write(
            &path,
            format!(
                "node_id = 1\nsocket = \"{}\"\n[[link]]\ntransport = \"udp\"\ninterface = \"cts-sync0\"\nlocal = \"198.18.0.1\"\npeer = \"198.18.0.2\"\nport = 3780\n",
                socket.display()
            ),
        )
        .unwrap();
        path
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_exit_codes_without_a_daemon() {
    let dir = TempDir::new("nodaemon");
    let cfg = dir.config(&dir.0.join("missing.sock"));
    let cfg = cfg.to_str().unwrap();

    let (code, out, _) = run(&["-v"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ctsyncd v"));
    let (code, out, _) = run(&["-h"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage"));

    let (code, _, err) = run(&["-C", cfg, "-s"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("can't connect") && err.contains("is ctsyncd running?"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let (code, _, err) = run(&["-C", cfg, "status"]);
    assert_eq!(code, 1, "{err}");

    let (code, _, err) = run(&["-C", cfg, "-z"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown option"), "{err}");

    let (code, _, err) = run(&["-C", cfg, "-d", "-k"]);
    assert_eq!(code, 1, "{err}");

    // An argument that is not UTF-8: a one-line reason, not a panic.
    use std::os::unix::ffi::OsStrExt;
    let out = Command::new(BIN)
        .arg("-C")
        .arg(std::ffi::OsStr::from_bytes(b"/tmp/\xff.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("argument 2 is not valid UTF-8"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn binary_refuses_a_bad_or_missing_config() {
    let dir = TempDir::new("badcfg");
    let path = dir.0.join("ctsyncd.toml");
    std::fs::write(&path, "node_id = 0\n[[link]]\ntransport = \"udp\"\ninterface = \"x\"\nlocal = \"198.18.0.1\"\npeer = \"198.18.0.2\"\nport = 1\n").unwrap();
    let p = path.to_str().unwrap();
    for args in [&["-C", p, "-s"][..], &["-C", p], &["-C", p, "-d"]] {
        let (code, _, err) = run(args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains("ctsyncd.toml:1: key 'node_id'"), "{err}");
    }
    let (code, _, err) = run(&["-C", "/nonexistent/ctsyncd.toml", "-i"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/ctsyncd.toml"), "{err}");
}

#[test]
fn genkey_prints_a_valid_new_key_file_and_refuses_bad_ids() {
    let (code, first, _) = run(&["genkey"]);
    assert_eq!(code, 0);
    let ring = ctsync::auth::parse_key_file(&first).expect("genkey output is a key file");
    assert_eq!(ring.send_key().id, 1);
    let (code, second, _) = run(&["genkey", "9"]);
    assert_eq!(code, 0);
    assert_eq!(
        ctsync::auth::parse_key_file(&second).unwrap().send_key().id,
        9
    );
    let key = |text: &str| {
        text.lines()
            .find(|l| !l.starts_with('#'))
            .map(str::to_string)
    };
    assert_ne!(key(&first), key(&second), "two keys are never the same");
    for bad in ["0", "256", "x"] {
        let (code, _, err) = run(&["genkey", bad]);
        assert_eq!(code, 1, "genkey {bad}");
        assert!(err.contains("genkey: expected a key id"), "{err}");
    }
}

#[test]
fn the_daemon_refuses_to_start_with_a_readable_or_bad_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("keys");
    let keys = dir.0.join("sync.keys");
    let (_, text, _) = run(&["genkey"]);
    std::fs::write(&keys, &text).unwrap();
    let cfg = dir.config(&dir.0.join("ctsyncd.sock"));
    let mut toml = std::fs::read_to_string(&cfg).unwrap();
    toml = toml.replacen(
        "[[link]]",
        &format!("[auth]\nkey_file = \"{}\"\n\n[[link]]", keys.display()),
        1,
    );
    std::fs::write(&cfg, toml).unwrap();
    let c = cfg.to_str().unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(&["-C", c]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&keys.display().to_string()) && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&keys, "1 c2hvcnQ=\n").unwrap();
    let (code, _, err) = run(&["-C", c]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 1") && err.contains("not 32"), "{err}");
    assert!(!err.contains("c2hvcnQ"), "the key is never printed: {err}");
}

/// Run the copied binary `bin` as another user. A copy just written may
/// still be open for writing in a child forked meanwhile by another test
/// thread (until that child execs): exec then fails with "Text file busy",
/// which is retried, a bounded number of times.
fn setpriv(ids: &[&str], bin: &Path, args: &[&str]) -> std::process::Output {
    for _ in 0..100 {
        let out = Command::new("setpriv")
            .args(ids)
            .arg(bin)
            .args(args)
            .output()
            .expect("setpriv (util-linux)");
        if !String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} stayed busy", bin.display());
}

/// Serve the control socket with a fake daemon on a background runtime.
fn fake_daemon(socket: &Path) -> std::sync::mpsc::Receiver<Envelope> {
    fake_daemon_for(socket, None)
}

/// `fake_daemon`, whose socket also serves the members of `group`.
fn fake_daemon_for(socket: &Path, group: Option<u32>) -> std::sync::mpsc::Receiver<Envelope> {
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let std_listener = ctsync::control::server::bind_std(&socket, group).unwrap();
            let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(Envelope, tokio::sync::oneshot::Sender<Reply>)>(4);
            tokio::spawn(ctsync::control::server::serve_group(
                listener,
                tx,
                Default::default(),
                group,
            ));
            ready_tx.send(()).unwrap();
            while let Some((env, reply)) = rx.recv().await {
                let r = match &env.request {
                    Request::Commit => Reply::err("commit already in progress"),
                    Request::Stats(_) if env.json => Reply::ok(
                        "{\"uptime_s\": 7, \"internal\": {\"active\": 3}, \"external\": {\"active\": 2}, \"peers\": []}\n",
                    ),
                    other => Reply::ok(format!("did {other:?}\n")),
                };
                let _ = seen_tx.send(env);
                let _ = reply.send(r);
            }
        });
    });
    ready_rx.recv().unwrap();
    seen_rx
}

#[test]
fn binary_talks_to_the_daemon() {
    let dir = TempDir::new("fake");
    let socket = dir.0.join("ctsyncd.sock");
    let cfg = dir.config(&socket);
    let cfg = cfg.to_str().unwrap();
    let seen = fake_daemon(&socket);

    let (code, out, err) = run(&["-C", cfg, "-f", "ext"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "did FlushCaches(External)\n"),
        "{err}"
    );
    assert_eq!(
        seen.recv().unwrap().request,
        Request::FlushCaches(CacheSel::External)
    );

    let (code, out, _) = run(&["-C", cfg, "dump", "--json"]);
    assert_eq!((code, out.as_str()), (0, "did DumpInternal\n"));
    assert!(seen.recv().unwrap().json);

    let (code, _, err) = run(&["-C", cfg, "-c"]);
    assert_eq!(code, 1);
    assert_eq!(err, "ctsyncd: commit already in progress\n");

    let (code, out, err) = run(&["-C", cfg, "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("up 7s, internal 3 flows, external 2 flows"),
        "{out}"
    );

    // -d refuses when a daemon already answers on the socket.
    let (code, _, err) = run(&["-C", cfg, "-d"]);
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");
}

/// Only root and the daemon's own user may control it: a request from
/// another user is refused by its peer credentials even when the socket's
/// 0600 mode has been widened (the negative control: the same request as
/// root is served).
#[test]
fn another_user_is_refused_even_through_a_widened_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("creds");
    let socket = dir.0.join("ctsyncd.sock");
    let cfg = dir.config(&socket);
    let seen = fake_daemon(&socket);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is created 0600");
    // Widen everything a user "nobody" needs to reach the socket.
    let bin = dir.0.join("ctsyncd");
    std::fs::copy(BIN, &bin).unwrap();
    for (path, mode) in [
        (&dir.0, 0o755),
        (&bin, 0o755),
        (&cfg, 0o644),
        (&socket, 0o666),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = setpriv(
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
        &bin,
        &["-C", cfg.to_str().unwrap(), "-s"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("may not control ctsyncd"), "{err}");
    assert!(
        seen.try_recv().is_err(),
        "the refused request reached the daemon"
    );
    let (code, _, err) = run(&["-C", cfg.to_str().unwrap(), "-s"]);
    assert_eq!(code, 0, "root is served: {err}");
    assert!(seen.try_recv().is_ok());
}

/// With `socket_group`, the group's members are served too: by primary or
/// supplementary group; the socket is 0660 and belongs to the group; a user
/// outside it is still refused (through a widened socket).
#[test]
fn members_of_the_socket_group_are_served_and_others_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const GROUP: u32 = 65534;
    let dir = TempDir::new("group");
    let socket = dir.0.join("ctsyncd.sock");
    let cfg = dir.config(&socket);
    let seen = fake_daemon_for(&socket, Some(GROUP));
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o660, GROUP)
    );
    let bin = dir.0.join("ctsyncd");
    std::fs::copy(BIN, &bin).unwrap();
    for (path, mode) in [(&dir.0, 0o755), (&bin, 0o755), (&cfg, 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let as_user = |ids: &[&str]| {
        let out = setpriv(ids, &bin, &["-C", cfg.to_str().unwrap(), "-s"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = as_user(&["--reuid=65533", "--regid=65534", "--clear-groups"]);
    assert_eq!(code, Some(0), "primary group member refused: {err}");
    assert!(seen.try_recv().is_ok());
    let (code, err) = as_user(&["--reuid=65533", "--regid=65533", "--groups=65534"]);
    assert_eq!(code, Some(0), "supplementary group member refused: {err}");
    assert!(seen.try_recv().is_ok());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, err) = as_user(&["--reuid=65533", "--regid=65533", "--clear-groups"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("may not control ctsyncd"), "{err}");
    assert!(seen.try_recv().is_err());
}
