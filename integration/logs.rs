//! Operations, with real daemons in lab namespaces: where logs go (`-d`
//! with a log file, syslog through a /dev/log socket the test binds inside
//! a mount namespace of the daemon's own), the failover and commit lines,
//! reload (SIGHUP and `ctsyncd reload`) of the filter, SIGUSR1 that
//! reopens the log file only, a bad file on reload, the systemd watchdog,
//! which threads run real-time, and a daemon that runs as nobody with
//! CAP_NET_ADMIN only.

mod lab;

use lab::{
    create_in, ctsyncd_bin, flow_mix, must, path_str, run, wait_until, Lab, LabSpec, LinkTransport,
    Node, SyncFamily,
};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A log as written: the daemon writes no colour escapes where no terminal
/// reads (the file, a piped stderr), and the test checks that too.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Wait until the file at `path` has a line with every one of `words`.
fn wait_for_line(path: &Path, words: &[&str]) -> Option<String> {
    let mut found = None;
    wait_until(WAIT, || {
        found = read(path)
            .lines()
            .find(|l| words.iter().all(|w| l.contains(w)))
            .map(str::to_string);
        found.is_some()
    });
    found
}

/// Insert the TOML `text` into a lab config before its first `[[link]]`
/// (tables must come before the array of links), or append it.
fn add_to_config(config: &Path, text: &str) {
    let old = std::fs::read_to_string(config).expect("read config");
    let new = match old.find("[[link]]") {
        Some(at) => format!("{}{text}\n{}", &old[..at], &old[at..]),
        None => format!("{old}\n{text}\n"),
    };
    write_atomically(config, &new);
}

/// Replace a file in one step (a reload never reads half a file).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// Stops a daemon started with `-d` (not the lab's child) by its pid file.
struct Detached {
    pid_file: PathBuf,
}

impl Drop for Detached {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            return;
        };
        // SAFETY: kill(2) on the pid our own daemon wrote.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let gone = wait_until(Duration::from_secs(10), || {
            // SAFETY: signal 0 only probes.
            unsafe { libc::kill(pid, 0) != 0 }
        });
        if !gone {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// `ctsyncd -C CONFIG -d` inside the node's namespace; returns once it
/// answers (or panics with its error).
fn start_detached(node: &Node, wrapper: &[&str]) -> Detached {
    let pid_file = node.config.with_extension("pid");
    add_daemon_keys(
        &node.config,
        &format!("pid_file = \"{}\"", pid_file.display()),
    );
    let guard = Detached {
        pid_file: pid_file.clone(),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &node.ns])
        .args(wrapper)
        .arg(ctsyncd_bin())
        .args(["-C", path_str(&node.config), "-d"])
        .output()
        .expect("run ctsyncd -d");
    assert!(
        out.status.success(),
        "ctsyncd -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard
}

/// Adds `[daemon]` keys to a config that may already have a `[daemon]`.
fn add_daemon_keys(config: &Path, keys: &str) {
    let old = std::fs::read_to_string(config).expect("read config");
    if let Some(at) = old.find("[daemon]\n") {
        let at = at + "[daemon]\n".len();
        write_atomically(config, &format!("{}{keys}\n{}", &old[..at], &old[at..]));
    } else {
        add_to_config(config, &format!("[daemon]\n{keys}"));
    }
}

fn create_udp(node: &Node, sport: u16) {
    let sport = sport.to_string();
    let out = node.exec(
        "conntrack",
        &[
            "-I",
            "-p",
            "udp",
            "-s",
            "198.18.200.1",
            "-d",
            "198.18.200.2",
            "--sport",
            &sport,
            "--dport",
            "53",
            "-t",
            "300",
        ],
    );
    assert!(
        out.status.success(),
        "conntrack -I udp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn create_tcp(node: &Node, sport: u16) {
    let sport = sport.to_string();
    let out = node.exec(
        "conntrack",
        &[
            "-I",
            "-p",
            "tcp",
            "-s",
            "198.18.201.1",
            "-d",
            "198.18.201.2",
            "--sport",
            &sport,
            "--dport",
            "443",
            "--state",
            "ESTABLISHED",
            "-u",
            "ASSURED",
            "-t",
            "300",
        ],
    );
    assert!(
        out.status.success(),
        "conntrack -I tcp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `node`'s external cache holds the flow of protocol `proto`
/// from source port `sport`.
fn has_external(node: &Node, proto: &str, sport: u16) -> bool {
    node.cache_json("-e")
        .iter()
        .any(|f| f["orig"]["proto"] == proto && f["orig"]["sport"] == u64::from(sport))
}

#[test]
fn a_background_daemon_logs_to_its_log_file_and_without_one_writes_none() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    let file = lab.dir.join("a-daemon.log");
    let unused = lab.dir.join("b-daemon.log");
    add_to_config(
        &lab.a.config,
        &format!("[daemon]\nlog_file = \"{}\"", file.display()),
    );
    let _a = start_detached(&lab.a, &[]);
    assert!(
        wait_for_line(&file, &["ctsyncd ready"]).is_some(),
        "no startup line in {}: {}",
        file.display(),
        read(&file)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "log file mode {mode:o}");
    lab.b.start();
    let heard = wait_for_line(&file, &["peer heard", "peer=2"]);
    assert!(heard.is_some(), "{}", read(&file));
    lab.b.kill(libc::SIGKILL);
    let lost = wait_for_line(&file, &["peer lost", "peer=2", "silent_ms="]);
    assert!(lost.is_some(), "no peer-lost line: {}", read(&file));
    assert!(
        !read(&file).contains("\u{1b}["),
        "no colour escapes in the file"
    );

    // logrotate: the file is moved, SIGHUP reopens it at its path.
    let rotated = lab.dir.join("a-daemon.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    let pid: i32 = std::fs::read_to_string(lab.a.config.with_extension("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the pid our own daemon wrote.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        wait_for_line(&file, &["config reloaded"]).is_some(),
        "no line in the reopened file: {}",
        read(&file)
    );
    assert!(read(&rotated).contains("peer lost"));
    assert!(!read(&rotated).contains("config reloaded"));

    // Negative control: b in the background without log_file (its lines go
    // to syslog, absent here) creates no file.
    let _b = start_detached(&lab.b, &[]);
    assert!(lab.b.ctl(&["-s"]).status.success());
    assert!(!unused.exists(), "{} appeared", unused.display());

    // A log file that cannot be opened stops `-d` with its name.
    let bad = lab.dir.join("no-such-dir/x.log");
    let c = lab.dir.join("c.toml");
    let text = std::fs::read_to_string(&lab.a.config)
        .unwrap()
        .replace(&file.display().to_string(), &bad.display().to_string())
        .replace("a.sock", "c.sock");
    std::fs::write(&c, text).unwrap();
    let out = run(path_str(&ctsyncd_bin()), &["-C", path_str(&c), "-d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-dir/x.log"), "{err}");
}

/// Run a daemon in its own mount namespace whose /dev is a tmpfs holding
/// /dev/null and /dev/log, the latter a link to `socket`, which the test
/// binds: what the daemon sends to syslog arrives there.
fn syslog_wrapper(socket: &Path) -> Vec<String> {
    vec![
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && ln -s {} /dev/log && exec \"$0\" \"$@\"",
            socket.display()
        ),
    ]
}

/// Syslog datagrams that arrived on `socket` within `within`, until one
/// has every word of `until`.
fn receive_until(socket: &UnixDatagram, within: Duration, until: &[&str]) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = until.iter().all(|w| line.contains(w));
            got.push(line);
            if done {
                break;
            }
        }
    }
    got
}

#[test]
fn syslog_gets_lines_with_facility_and_severity() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    // a: `-d` with neither log_file nor syslog: facility daemon.
    let a_socket = lab.dir.join("a-devlog.sock");
    let a_log = UnixDatagram::bind(&a_socket).expect("bind a's /dev/log");
    let wrapper = syslog_wrapper(&a_socket);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let _a = start_detached(&lab.a, &wrapper);
    let lines = receive_until(&a_log, WAIT, &["ctsyncd ready"]);
    // daemon.warning = 3*8+4 = 28: the unauthenticated-sync warning.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<28>") && l.contains("NOT authenticated")),
        "{lines:#?}"
    );
    // daemon.info = 30.
    let ready = lines.iter().find(|l| l.contains("ctsyncd ready"));
    assert!(
        ready.is_some_and(|l| l.starts_with("<30>") && l.contains(" ctsyncd[")),
        "{lines:#?}"
    );

    // b: in the foreground with syslog = "local3" (19*8+6 = 158 for info).
    let b_socket = lab.dir.join("b-devlog.sock");
    let b_log = UnixDatagram::bind(&b_socket).expect("bind b's /dev/log");
    add_to_config(&lab.b.config, "[daemon]\nsyslog = \"local3\"");
    let log = std::fs::File::create(&lab.b.log).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.b.ns])
        .args(syslog_wrapper(&b_socket))
        .arg(ctsyncd_bin())
        .args(["-C", path_str(&lab.b.config)])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn b");
    lab.b.daemon = Some(child);
    let lines = receive_until(&b_log, WAIT, &["peer heard", "peer=1"]);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<158>") && l.contains("ctsyncd ready")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<158>") && l.contains("peer heard") && l.contains("peer=1")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.starts_with("<30>")),
        "b logs with local3 only: {lines:#?}"
    );
    // And to stderr as before.
    assert!(read(&lab.b.log).contains("ctsyncd ready"));
}

#[test]
fn a_commit_logs_its_start_and_end_with_counts() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    lab.a.start();
    lab.b.start();
    for port in 1000..1010 {
        create_udp(&lab.a, port);
    }
    assert!(
        wait_until(WAIT, || lab.b.cache_json("-e").len() == 10),
        "b never had the 10 flows"
    );
    lab.b.ctl_ok(&["-c"]);
    let start = wait_for_line(&lab.b.log, &["commit started", "flows=10"]);
    assert!(start.is_some(), "{}", read(&lab.b.log));
    let end = wait_for_line(
        &lab.b.log,
        &["commit finished", "written=10", "failed=0", "duration_ms="],
    );
    assert!(end.is_some(), "{}", read(&lab.b.log));
}

#[test]
fn sighup_reloads_the_filter() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    lab.a.start();
    lab.b.start();
    // Before the reload UDP is replicated (the control).
    create_udp(&lab.a, 2001);
    assert!(
        wait_until(WAIT, || has_external(&lab.b, "udp", 2001)),
        "udp was replicated before the reload"
    );
    add_to_config(
        &lab.a.config,
        "[filter]\nprotocol = { policy = \"ignore\", list = [\"udp\"] }",
    );
    let pid = lab.a.pid().expect("a runs") as i32;
    // SAFETY: kill(2) on the daemon the lab started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        wait_for_line(&lab.a.log, &["filter reloaded"]).is_some(),
        "{}",
        read(&lab.a.log)
    );
    // The flow cached before the reload no longer passes: peers drop it.
    assert!(
        wait_until(WAIT, || !has_external(&lab.b, "udp", 2001)),
        "the udp flow stayed on b after the filter refused it"
    );
    create_udp(&lab.a, 2002);
    create_tcp(&lab.a, 3002);
    assert!(
        wait_until(WAIT, || has_external(&lab.b, "tcp", 3002)),
        "tcp is still replicated"
    );
    // Sent after the udp flow: had the udp flow been sent, it would be here.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !has_external(&lab.b, "udp", 2002),
        "a udp flow was replicated after the reload"
    );
}

/// Send `signal` to the node's daemon (the lab's child).
fn signal(node: &Node, signal: libc::c_int) {
    let pid = node.pid().expect("the daemon runs") as i32;
    // SAFETY: kill(2) on the daemon the lab started.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// logrotate's SIGUSR1 reopens the log file and reads no config: a filter
/// edited meanwhile stays unapplied until SIGHUP (the control), which
/// applies it and reopens the file too.
#[test]
fn sigusr1_reopens_the_log_file_only_and_sighup_reloads() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    let log_file = lab.dir.join("a-file.log");
    add_daemon_keys(
        &lab.a.config,
        &format!("log_file = \"{}\"", log_file.display()),
    );
    lab.a.start();
    lab.b.start();
    create_udp(&lab.a, 2101);
    assert!(
        wait_until(WAIT, || has_external(&lab.b, "udp", 2101)),
        "udp was replicated before the signals"
    );
    // An edit not meant to go live yet.
    add_to_config(
        &lab.a.config,
        "[filter]\nprotocol = { policy = \"ignore\", list = [\"udp\"] }",
    );

    // logrotate: rename, then SIGUSR1.
    let rotated = lab.dir.join("a-file.log.1");
    std::fs::rename(&log_file, &rotated).unwrap();
    signal(&lab.a, libc::SIGUSR1);
    let reopened = wait_for_line(&log_file, &["log file: reopened", "SIGUSR1"]);
    assert!(
        reopened.is_some(),
        "no new log file after SIGUSR1: {}",
        read(&lab.a.log)
    );
    assert!(
        !read(&rotated).contains("log file: reopened"),
        "the reopen line went to the rotated file"
    );
    // The filter edit is not applied: udp is still replicated.
    create_udp(&lab.a, 2102);
    assert!(
        wait_until(WAIT, || has_external(&lab.b, "udp", 2102)),
        "SIGUSR1 applied the edited filter: {}",
        read(&lab.a.log)
    );
    assert!(has_external(&lab.b, "udp", 2101));
    assert!(
        !read(&lab.a.log).contains("filter reloaded"),
        "{}",
        read(&lab.a.log)
    );

    // The control: SIGHUP reloads the whole config (and reopens the file).
    let rotated2 = lab.dir.join("a-file.log.2");
    std::fs::rename(&log_file, &rotated2).unwrap();
    signal(&lab.a, libc::SIGHUP);
    // The reload's last line lands in the reopened file.
    assert!(
        wait_for_line(&log_file, &["config reloaded"]).is_some(),
        "{}",
        read(&lab.a.log)
    );
    assert!(
        read(&lab.a.log).contains("filter reloaded"),
        "{}",
        read(&lab.a.log)
    );
    assert!(
        wait_until(WAIT, || !has_external(&lab.b, "udp", 2101)),
        "the udp flow stayed on b after SIGHUP applied the filter"
    );
}

#[test]
fn a_bad_config_on_reload_keeps_the_old_filter_and_says_why() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    add_to_config(
        &lab.a.config,
        "[filter]\nprotocol = { policy = \"ignore\", list = [\"udp\"] }",
    );
    lab.a.start();
    lab.b.start();
    let good = std::fs::read_to_string(&lab.a.config).unwrap();
    // A client config of its own: the daemon re-reads a's file, which is
    // about to be broken.
    let client = lab.dir.join("a-client.toml");
    std::fs::write(&client, &good).unwrap();
    let reload = || {
        Command::new(ctsyncd_bin())
            .args(["-C", path_str(&client), "reload"])
            .output()
            .expect("ctsyncd reload")
    };

    // The filter line now names no protocol, and the filter is gone.
    let broken = good.replace(
        "protocol = { policy = \"ignore\", list = [\"udp\"] }",
        "protocol = { policy = \"ignore\", list = [\"udpp\"] }",
    );
    assert_ne!(broken, good);
    let line = broken
        .lines()
        .position(|l| l.contains("udpp"))
        .map(|i| i + 1)
        .unwrap();
    write_atomically(&lab.a.config, &broken);
    let out = reload();
    assert!(!out.status.success(), "a bad file must fail the reload");
    let err = String::from_utf8_lossy(&out.stderr);
    let at = format!("a.toml:{line}");
    assert!(
        err.contains(&at) && err.contains("nothing reloaded"),
        "{err}"
    );
    assert!(
        wait_for_line(&lab.a.log, &["config not reloaded", &at]).is_some(),
        "{}",
        read(&lab.a.log)
    );
    // The old filter stays: udp is not replicated, tcp is.
    create_udp(&lab.a, 4001);
    create_tcp(&lab.a, 5001);
    assert!(wait_until(WAIT, || has_external(&lab.b, "tcp", 5001)));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !has_external(&lab.b, "udp", 4001),
        "the old filter was lost"
    );

    // A valid file without the filter and with a setting only a start
    // applies: the filter goes, the other is reported, not applied.
    let without = good.replace(
        "[filter]\nprotocol = { policy = \"ignore\", list = [\"udp\"] }\n",
        "",
    );
    assert_ne!(without, good);
    write_atomically(&lab.a.config, &without);
    add_daemon_keys(&lab.a.config, "nice = 5");
    let out = reload();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("filter: reloaded"), "{body}");
    assert!(
        body.contains("needs a restart (not applied): [daemon] nice"),
        "{body}"
    );
    // The re-read under the new filter sends the udp flow now accepted.
    assert!(
        wait_until(WAIT, || has_external(&lab.b, "udp", 4001)),
        "the udp flow was not sent after the filter was lifted"
    );
    let main = threads(lab.a.pid().unwrap());
    assert!(
        main.iter()
            .any(|(name, nice, ..)| name == "ctsyncd" && *nice == 0),
        "nice is applied at start only: {main:?}"
    );
}

#[test]
fn the_watchdog_is_fed_from_the_loop_only_when_asked() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    let a_sock = lab.dir.join("a-notify.sock");
    let b_sock = lab.dir.join("b-notify.sock");
    let a_notify = UnixDatagram::bind(&a_sock).unwrap();
    let b_notify = UnixDatagram::bind(&b_sock).unwrap();
    lab.a.start_with_env(&[
        ("NOTIFY_SOCKET", path_str(&a_sock)),
        ("WATCHDOG_USEC", "1000000"),
    ]);
    // Negative control: no WATCHDOG_USEC, no pings.
    lab.b
        .start_with_env(&[("NOTIFY_SOCKET", path_str(&b_sock))]);
    let collect = |socket: &UnixDatagram, within: Duration| {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                got.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).trim().to_string(),
                ));
            }
        }
        got
    };
    let a = collect(&a_notify, Duration::from_secs(4));
    let texts: Vec<&str> = a.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.first(), Some(&"READY=1"), "{texts:?}");
    let pings: Vec<Instant> = a
        .iter()
        .filter(|(_, t)| t == "WATCHDOG=1")
        .map(|(at, _)| *at)
        .collect();
    // Every 500 ms (half of WATCHDOG_USEC) for 4 s: about 8; 4 for a busy
    // machine.
    assert!(pings.len() >= 4, "{texts:?}");
    let longest = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // Twice the period and a second's slack for a loaded machine: what is
    // checked is that the pings recur, the loop's part is checked below.
    assert!(
        longest < Duration::from_millis(2000),
        "a gap of {longest:?} between pings"
    );
    // A loop that is stuck stops feeding it: the pings come from the loop,
    // not from a timer beside it (the control thread still takes the
    // request while the loop sleeps in it).
    lab::require_test_seams();
    const STALL: Duration = Duration::from_secs(6);
    let asked = Instant::now();
    let mut stall = Command::new(ctsyncd_bin())
        .args(["-C", path_str(&lab.a.config), "debug-stall"])
        .arg(STALL.as_millis().to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The loop logs before it sleeps: from then on it sends nothing until
    // `asked + STALL` at the earliest.
    assert!(
        wait_for_line(&lab.a.log, &["debug-stall"]).is_some(),
        "{}",
        read(&lab.a.log)
    );
    // Drop what was sent before the stall began (sent before the line).
    a_notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while a_notify.recv(&mut buf).is_ok() {}
    a_notify.set_nonblocking(false).unwrap();
    let pings = |got: &[(Instant, String)]| got.iter().filter(|(_, t)| t == "WATCHDOG=1").count();
    // Surely inside the stall: up to 300 ms before its earliest end.
    let window = (asked + STALL)
        .saturating_duration_since(Instant::now())
        .saturating_sub(Duration::from_millis(300));
    assert!(
        window >= Duration::from_millis(1500),
        "the stall was acknowledged too late to measure ({window:?} left)"
    );
    let during = collect(&a_notify, window);
    assert!(stall.wait().unwrap().success());
    let after = collect(&a_notify, Duration::from_secs(3));
    assert_eq!(
        pings(&during),
        0,
        "pings while the loop was stuck ({window:?}): {during:?}"
    );
    assert!(
        pings(&after) >= 2,
        "the loop feeds it again afterwards: {after:?}"
    );
    let b = collect(&b_notify, Duration::from_secs(1));
    let texts: Vec<&str> = b.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(texts.first(), Some(&"READY=1"), "{texts:?}");
    assert!(!texts.contains(&"WATCHDOG=1"), "{texts:?}");
}

/// Whether the kernel table of `node` has a flow with `needle` in it.
fn in_kernel(node: &Node, needle: &str) -> bool {
    node.kernel_table().iter().any(|l| l.contains(needle))
}

#[test]
fn a_daemon_as_nobody_with_cap_net_admin_replicates_and_commits() {
    as_nobody(Lab::two_nodes(SyncFamily::V4));
}

#[test]
fn a_daemon_as_nobody_with_cap_net_admin_replicates_over_multicast() {
    as_nobody(Lab::new(LabSpec {
        family: SyncFamily::V6,
        transport: LinkTransport::Multicast,
        ..LabSpec::default()
    }));
}

/// Node b runs as nobody with CAP_NET_ADMIN only (and first, as the
/// negative control, with nothing).
fn as_nobody(mut lab: Lab) {
    // b runs as nobody: its control socket in a directory it owns, its
    // binary where it can reach it.
    let run_dir = lab.dir.join("b-run");
    std::fs::create_dir(&run_dir).unwrap();
    must("chown", &["65534:65534", path_str(&run_dir)]);
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = lab.dir.join("ctsyncd");
    std::fs::copy(ctsyncd_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&lab.b.config).unwrap().replace(
        &lab.b.socket.display().to_string(),
        &run_dir.join("b.sock").display().to_string(),
    );
    std::fs::write(&lab.b.config, text).unwrap();
    // Raising its own priority needs CAP_SYS_NICE: a warning, not a stop.
    add_daemon_keys(&lab.b.config, "nice = -5");
    std::fs::set_permissions(&lab.b.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    lab.b
        .exec("sysctl", &["-qw", "net.netfilter.nf_conntrack_events=2"]);

    lab.a.start();
    let log = std::fs::File::create(&lab.b.log).unwrap();
    let (b_ns, b_config) = (lab.b.ns.clone(), lab.b.config.clone());
    let spawn_b = |caps: &str, log: std::fs::File| {
        // setpriv may find the copied binary busy for a moment (another
        // test thread's fork holding it open): retried by waiting below.
        Command::new("ip")
            .args(["netns", "exec", &b_ns, "setpriv"])
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps=-all{caps}"))
            .arg(format!("--ambient-caps=-all{caps}"))
            .arg(&bin)
            .args(["-C", path_str(&b_config)])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn setpriv ctsyncd")
    };

    // Negative control: without CAP_NET_ADMIN it cannot subscribe.
    let mut child = spawn_b("", log.try_clone().unwrap());
    let exited = wait_until(WAIT, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    assert!(exited, "a daemon without CAP_NET_ADMIN must not start");
    assert!(
        read(&lab.b.log).contains("Operation not permitted"),
        "{}",
        read(&lab.b.log)
    );

    // A copy just written may be busy for a moment (another test thread's
    // fork holding it open until its exec): a few tries.
    for _ in 0..5 {
        let log = std::fs::File::create(&lab.b.log).unwrap();
        lab.b.daemon = Some(spawn_b(",+net_admin", log));
        if wait_until(WAIT, || {
            lab.b.ctl(&["-s"]).status.success() || read(&lab.b.log).contains("Text file busy")
        }) && !read(&lab.b.log).contains("Text file busy")
        {
            break;
        }
        lab.b.kill(libc::SIGKILL);
    }
    assert!(
        lab.b.ctl(&["-s"]).status.success(),
        "b did not come up as nobody: {}",
        read(&lab.b.log)
    );
    assert!(
        read(&lab.b.log).contains("[daemon] nice not applied"),
        "{}",
        read(&lab.b.log)
    );
    let pid = lab.b.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().skip(1).all(|u| u == "65534")),
        "{status}"
    );
    // It set nf_conntrack_events (a net sysctl CAP_NET_ADMIN may write).
    let events = lab
        .b
        .exec("sysctl", &["-n", "net.netfilter.nf_conntrack_events"]);
    assert_eq!(String::from_utf8_lossy(&events.stdout).trim(), "1");
    // Its event socket got the configured buffer (SO_RCVBUFFORCE).
    let stats = lab.b.ctl_ok(&["-s"]);
    assert!(
        stats.lines().any(|l| l.contains("kernel buffer size")
            && l.split_whitespace()
                .last()
                .and_then(|n| n.parse::<u64>().ok())
                > Some(1 << 20)),
        "{stats}"
    );
    // Replicates both ways: b's events reach a, a's flows reach b.
    create_tcp(&lab.b, 6001);
    assert!(
        wait_until(WAIT, || has_external(&lab.a, "tcp", 6001)),
        "a never got b's flow: {}",
        read(&lab.b.log)
    );
    create_udp(&lab.a, 6002);
    assert!(
        wait_until(WAIT, || has_external(&lab.b, "udp", 6002)),
        "b never got a's flow"
    );
    // And commits them into its kernel.
    assert!(!in_kernel(&lab.b, "sport=6002"));
    lab.b.ctl_ok(&["-c"]);
    assert!(
        in_kernel(&lab.b, "sport=6002"),
        "{:?}",
        lab.b.kernel_table()
    );
}

/// Each thread of `pid`: its name, nice value, scheduling policy and
/// real-time priority (proc(5) stat fields 19, 41 and 40).
fn threads(pid: u32) -> Vec<(String, i64, i64, i64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = entry.unwrap().path();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap();
        // The fields after the name's closing parenthesis start at field 3.
        let rest: Vec<i64> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let field = |n: usize| rest[n - 4];
        out.push((comm.trim().to_string(), field(19), field(41), field(40)));
    }
    out
}

/// The metrics port of `real_time_only_for_the_main_and_event_threads`
/// (inside the node's namespace).
const METRICS_PORT: u16 = 9481;

#[test]
fn real_time_only_for_the_main_and_event_threads() {
    let mut lab = Lab::two_nodes(SyncFamily::V4);
    let log_file = lab.dir.join("a-file.log");
    // Every thread the daemon can have at rest: metrics and a log file
    // too (the log file's writer is the first thread to start).
    add_to_config(
        &lab.a.config,
        &format!("[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\""),
    );
    add_daemon_keys(
        &lab.a.config,
        &format!(
            "nice = -5\nscheduler = \"rr\"\nscheduler_priority = 1\nlog_file = \"{}\"",
            log_file.display()
        ),
    );
    lab.a.start();
    lab.b.start();
    let a = threads(lab.a.pid().unwrap());
    let names: Vec<&str> = a.iter().map(|(name, ..)| name.as_str()).collect();
    for want in [
        "ctsyncd",
        "ct-events",
        "ct-control",
        "ct-metrics",
        "ct-logfile",
        "ct-writer",
    ] {
        assert!(names.contains(&want), "no {want} thread: {a:?}");
    }
    let rr = (i64::from(libc::SCHED_RR), 1);
    let other = (i64::from(libc::SCHED_OTHER), 0);
    for (name, nice, policy, rt) in &a {
        let (want_policy, want_nice) = match name.as_str() {
            "ctsyncd" => (rr, -5),
            "ct-events" => (rr, -10),
            // Control, metrics, log file, writer, blocking pool: the
            // daemon's nice value, never its real-time policy.
            _ => (other, -5),
        };
        assert_eq!((*policy, *rt), want_policy, "{name}: {a:?}");
        assert_eq!(*nice, want_nice, "{name}: {a:?}");
    }
    let log = read(&lab.a.log);
    assert!(
        log.contains("scheduler set for the main and event threads"),
        "{log}"
    );
    assert!(!log.contains("not applied"), "{log}");
    // The same lines reach the log file: the outcome is logged once
    // logging is up.
    assert!(
        wait_for_line(&log_file, &["scheduler set", "rr priority 1"]).is_some(),
        "{}",
        read(&log_file)
    );
    // The control: unconfigured, the daemon keeps the ordinary policy.
    let b = threads(lab.b.pid().unwrap());
    assert!(
        b.iter()
            .all(|(_, _, policy, _)| *policy == i64::from(libc::SCHED_OTHER)),
        "{b:?}"
    );
    let main = b.iter().find(|(name, ..)| name == "ctsyncd").unwrap();
    assert_eq!(main.1, 0, "{b:?}");
}

/// The lines of `path` from the first with `first` on.
fn lines_from(path: &Path, first: &str) -> Vec<String> {
    read(path)
        .lines()
        .skip_while(|l| !l.contains(first))
        .map(str::to_string)
        .collect()
}

#[test]
fn an_overrun_logs_its_buffer_and_the_re_read_that_heals_it() {
    let mut lab = Lab::new(LabSpec {
        kernel_extra: "netlink_buffer = 65536\nnetlink_buffer_max = 65536".into(),
        ..LabSpec::default()
    });
    lab.a.start();
    lab.b.start();
    let pid = lab.a.pid().expect("a runs").to_string();
    run("kill", &["-STOP", &pid]);
    create_in(&lab.a.ns, flow_mix(5_000, 77, false));
    run("kill", &["-CONT", &pid]);
    let overrun = wait_for_line(
        &lab.a.log,
        &[
            "netlink event socket overrun",
            "buffer_size=",
            "resync_in_ms=",
        ],
    );
    assert!(overrun.is_some(), "{}", read(&lab.a.log));
    let healed = wait_until(WAIT, || {
        lines_from(&lab.a.log, "netlink event socket overrun")
            .iter()
            .any(|l| l.contains("internal cache reconciled") && l.contains("duration_ms="))
    });
    assert!(healed, "{}", read(&lab.a.log));
}

#[test]
fn a_link_failover_is_logged() {
    let mut lab = Lab::new(LabSpec {
        links: 2,
        ..LabSpec::default()
    });
    lab.a.start();
    lab.b.start();
    assert!(
        wait_for_line(&lab.a.log, &["sync link active", "link=0"]).is_some(),
        "{}",
        read(&lab.a.log)
    );
    // Negative control: nothing failed yet.
    assert!(!read(&lab.a.log).contains("sync link failover"));
    let out = lab.a.exec("ip", &["link", "set", "sync0", "down"]);
    assert!(out.status.success());
    let failover = wait_for_line(&lab.a.log, &["sync link failover", "from=0", "to=1"]);
    assert!(failover.is_some(), "{}", read(&lab.a.log));
}
