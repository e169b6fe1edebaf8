//! The shipped HA glue, checked for real: ctsync's Pacemaker resource agent
//! `conf/ocf/ctsyncd` (resource-agents' `ocf-tester`, a wedged daemon, and a
//! two-firewall promote / fail / promote / fail back journey without a
//! cluster), Debian's `ocf:heartbeat:conntrackd` agent driving ctsyncd
//! through the config's `[compat] conntrackd_ra_hint` and from a
//! conntrackd.conf read as is (and its `ctsyncd convert` output), and the keepalived
//! example `conf/keepalived/keepalived.conf` (`keepalived -t`).
//!
//! Owns: these checks, their stub `crm_master` / `crm_attribute` (which
//! record the promotion scores the agents set), and every network namespace
//! they create, removed on drop with the processes started in it, even when
//! a test fails.
//!
//! Needs root, `resource-agents` (ocf-tester, the conntrackd agent),
//! `libxml2-utils` (xmllint, for the meta-data check), `keepalived` and
//! `conntrack`. Addresses: 198.18.0.0/15 and 2001:db8::/32 only.

mod lab;

use lab::{comparable, create_in, flow_mix, must, run, wait_until, Lab, SyncFamily};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Pacemaker's agents and libraries.
const OCF_ROOT: &str = "/usr/lib/ocf";
/// Debian's (resource-agents') conntrackd agent.
const CONNTRACKD_RA: &str = "/usr/lib/ocf/resource.d/heartbeat/conntrackd";
/// OCF exit codes.
const OCF_SUCCESS: i32 = 0;
const OCF_ERR_GENERIC: i32 = 1;
const OCF_ERR_INSTALLED: i32 = 5;
const OCF_ERR_CONFIGURED: i32 = 6;
const OCF_NOT_RUNNING: i32 = 7;
const OCF_RUNNING_MASTER: i32 = 8;
/// The scores the agent gives an unpromoted and a promoted instance.
const UNPROMOTED: i64 = 100;
const PROMOTED: i64 = 1000;
/// A node name that is never this host's (`uname -n`), for notifications
/// about "another node".
const OTHER_NODE: &str = "ctsync-test-other-node";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn agent_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ocf/ctsyncd")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A tool the tests cannot do without: fail (not skip) with what to install.
fn require_tool(tool: &str, package: &str) {
    assert!(
        lab::has_tool(tool),
        "{tool} is missing: apt-get install --no-install-recommends {package}"
    );
}

// ---- guards -------------------------------------------------------------

/// SIGKILL every process still running in the given namespaces: the daemons
/// the agents started there. Declared after a `Lab` so it drops first.
struct Reaper {
    namespaces: Vec<String>,
}

impl Reaper {
    fn kill_all(&self) {
        for ns in &self.namespaces {
            let out = run("ip", &["netns", "pids", ns]);
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a process inside a namespace this test
                // created; nothing else runs there.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A network namespace of our own with a veth pair `sync0` (198.18.0.1/24)
/// / `sync0p` (198.18.0.2/24) inside it, so a config's `[[link]]` has an
/// interface that is up. Removed on drop, after its processes are killed.
struct Netns {
    name: String,
}

impl Netns {
    fn with_sync_link(tag: &str) -> Netns {
        let ns = Netns {
            name: format!("cts-{}", unique(tag)),
        };
        must("ip", &["netns", "add", &ns.name]);
        let ip = |args: &[&str]| {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        ip(&["link", "set", "lo", "up"]);
        ip(&[
            "link", "add", "sync0", "type", "veth", "peer", "name", "sync0p",
        ]);
        ip(&["addr", "add", "198.18.0.1/24", "dev", "sync0"]);
        ip(&["addr", "add", "198.18.0.2/24", "dev", "sync0p"]);
        ip(&["link", "set", "sync0", "up"]);
        ip(&["link", "set", "sync0p", "up"]);
        ns
    }

    fn pids(&self) -> Vec<String> {
        let out = run("ip", &["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        Reaper {
            namespaces: vec![self.name.clone()],
        }
        .kill_all();
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A scratch directory, removed on drop unless the test failed.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("cts-{}", unique(tag)));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir { path }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ---- an agent's environment --------------------------------------------

/// What `crm_master` / `crm_attribute` were asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Score {
    Set(i64),
    Delete,
}

/// `HA_RSCTMP` and `HA_SBIN_DIR` for one node, the latter with stubs that
/// append their arguments to `scores.log`.
struct HaDirs {
    rsctmp: PathBuf,
    sbin: PathBuf,
}

impl HaDirs {
    fn new(base: &Path) -> HaDirs {
        let rsctmp = base.join("rsctmp");
        let sbin = base.join("sbin");
        std::fs::create_dir_all(&rsctmp).expect("HA_RSCTMP");
        std::fs::create_dir_all(&sbin).expect("HA_SBIN_DIR");
        for stub in ["crm_master", "crm_attribute"] {
            let path = sbin.join(stub);
            std::fs::write(
                &path,
                "#!/bin/sh\necho \"$(basename \"$0\") $*\" >>\"$(dirname \"$0\")/scores.log\"\n",
            )
            .expect("write stub");
            must("chmod", &["755", lab::path_str(&path)]);
        }
        HaDirs { rsctmp, sbin }
    }

    /// Every score change recorded so far, in order.
    fn scores(&self) -> Vec<Score> {
        let log = std::fs::read_to_string(self.sbin.join("scores.log")).unwrap_or_default();
        log.lines()
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.contains(&"-D") {
                    return Score::Delete;
                }
                let value = words
                    .iter()
                    .position(|w| *w == "-v")
                    .and_then(|i| words.get(i + 1))
                    .and_then(|v| v.parse::<i64>().ok());
                match value {
                    Some(v) => Score::Set(v),
                    None => panic!("unexpected score call: {line}"),
                }
            })
            .collect()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("OCF_ROOT".into(), OCF_ROOT.into()),
            ("HA_RSCTMP".into(), lab::path_str(&self.rsctmp).into()),
            ("HA_SBIN_DIR".into(), lab::path_str(&self.sbin).into()),
        ]
    }
}

/// One resource: an agent, the namespace it runs in, its parameters.
struct Resource<'a> {
    agent: PathBuf,
    ns: String,
    dirs: &'a HaDirs,
    params: Vec<(String, String)>,
}

impl Resource<'_> {
    /// Run `agent ACTION` in the namespace as Pacemaker would (a regular
    /// operation: interval 10 s, timeout 20 s), with `extra` variables.
    fn op(&self, action: &str, extra: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(&self.agent)
            .arg(action)
            .envs(self.dirs.env())
            .env("OCF_RESOURCE_INSTANCE", "ct")
            .env("OCF_RESKEY_CRM_meta_interval", "10000")
            .env("OCF_RESKEY_CRM_meta_timeout", "20000");
        for (k, v) in &self.params {
            cmd.env(format!("OCF_RESKEY_{k}"), v);
        }
        cmd.envs(extra.iter().copied());
        cmd.output()
            .unwrap_or_else(|e| panic!("run {} {action}: {e}", self.agent.display()))
    }

    /// Run an action and check its exit code; returns its output.
    fn expect(&self, action: &str, extra: &[(&str, &str)], want: i32, what: &str) -> Output {
        let out = self.op(action, extra);
        assert_eq!(
            out.status.code(),
            Some(want),
            "{what}: {action} in {} should exit {want}\n{}",
            self.ns,
            text(&out)
        );
        out
    }

    fn monitor(&self, want: i32, what: &str) {
        self.expect("monitor", &[], want, what);
    }

    /// A probe: a monitor with interval 0, which also sets the score again.
    fn probe(&self, want: i32, what: &str) {
        self.expect(
            "monitor",
            &[("OCF_RESKEY_CRM_meta_interval", "0")],
            want,
            what,
        );
    }
}

/// A ctsyncd config for a namespace made by `Netns::with_sync_link`.
fn single_node_config(dir: &TempDir, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "node_id = 1\nsocket = \"{}\"\n\n[[link]]\ntransport = \"udp\"\ninterface = \"sync0\"\n\
         local = \"198.18.0.1\"\npeer = \"198.18.0.2\"\nport = 3780\n{extra}",
        dir.join("ctsyncd.sock").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn ocf_tester(ns: &Netns, dirs: &HaDirs, agent: &Path, params: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("ip");
    // A start or stop loop that never ends (the conntrackd agent's are
    // unbounded) must fail the test, not hang it.
    cmd.args([
        "netns",
        "exec",
        &ns.name,
        "timeout",
        "300",
        "ocf-tester",
        "-n",
        "ct",
    ]);
    for (k, v) in params {
        cmd.arg("-o").arg(format!("{k}={v}"));
    }
    cmd.arg(agent).envs(dirs.env());
    cmd.output().expect("run ocf-tester")
}

fn assert_passes(out: &Output, agent: &Path) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("{} passed all tests", agent.display())),
        "ocf-tester did not pass {}:\n{}",
        agent.display(),
        text(out)
    );
}

fn assert_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o755,
        0o755,
        "{} must be mode 0755 (ocf-tester runs it as nobody)",
        path.display()
    );
}

// ---- ctsync's agent under ocf-tester -------------------------------------

#[test]
fn ocf_tester_passes_ctsyncd_agent_and_a_wedged_daemon_is_killed() {
    require_tool("ocf-tester", "resource-agents");
    require_tool("xmllint", "libxml2-utils");
    let agent = agent_path();
    assert_executable(&agent);
    let dir = TempDir::new("ocf-ra");
    let ns = Netns::with_sync_link("ocf-ra");
    let dirs = HaDirs::new(&dir.path);
    let lock = dir.join("ctsyncd.lock");
    let config = single_node_config(
        &dir,
        "ctsyncd.toml",
        &format!("\n[daemon]\nlock = \"{}\"\n", lock.display()),
    );
    let bin = lab::ctsyncd_bin();
    let params = [
        ("binary", lab::path_str(&bin)),
        ("config", lab::path_str(&config)),
    ];
    let out = ocf_tester(&ns, &dirs, &agent, &params);
    assert_passes(&out, &agent);
    // ocf-tester's last steps stop the resource: nothing may be left.
    assert!(
        ns.pids().is_empty(),
        "processes left in {}: {:?}",
        ns.name,
        ns.pids()
    );
    assert!(!dir.join("ctsyncd.sock").exists(), "socket left behind");
    let scores = dirs.scores();
    assert!(scores.contains(&Score::Set(PROMOTED)), "{scores:?}");
    assert!(scores.contains(&Score::Set(UNPROMOTED)), "{scores:?}");
    assert_eq!(scores.last(), Some(&Score::Delete), "{scores:?}");

    let res = |params: Vec<(&str, &str)>| Resource {
        agent: agent.clone(),
        ns: ns.name.clone(),
        dirs: &dirs,
        params: params
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };

    // validate-all uses ctsyncd's own config check, without a daemon.
    let broken = dir.join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("port = 3780", "port = 0"),
    )
    .unwrap();
    let bad = res(vec![
        ("binary", lab::path_str(&bin)),
        ("config", lab::path_str(&broken)),
    ]);
    let out = bad.expect(
        "validate-all",
        &[],
        OCF_ERR_CONFIGURED,
        "a config ctsyncd refuses",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:", broken.display())) && stderr.contains("link[0].port"),
        "the reason must name the file, line and key: {stderr}"
    );
    bad.expect("start", &[], OCF_ERR_CONFIGURED, "start with a bad config");
    bad.monitor(
        OCF_NOT_RUNNING,
        "monitor with a bad config, nothing running",
    );
    let missing = res(vec![
        ("binary", lab::path_str(&bin)),
        ("config", "/nonexistent/ctsyncd.toml"),
    ]);
    missing.expect("validate-all", &[], OCF_ERR_INSTALLED, "a missing config");
    missing.probe(OCF_NOT_RUNNING, "a probe with a missing config");
    missing.expect("stop", &[], OCF_SUCCESS, "stop with a missing config");

    // A daemon that stops answering (SIGSTOP): monitor says so, and stop
    // gets rid of it by its pid (pid_file), escalating to SIGKILL.
    let pid_file = dir.join("ctsyncd.pid");
    let wedged_config = single_node_config(
        &dir,
        "wedged.toml",
        &format!(
            "\n[daemon]\nlock = \"{}\"\npid_file = \"{}\"\n",
            lock.display(),
            pid_file.display()
        ),
    );
    let wedged = res(vec![
        ("binary", lab::path_str(&bin)),
        ("config", lab::path_str(&wedged_config)),
        ("pid_file", lab::path_str(&pid_file)),
        ("query_timeout", "2"),
        ("stop_timeout", "2"),
    ]);
    wedged.expect("start", &[], OCF_SUCCESS, "start");
    wedged.monitor(OCF_SUCCESS, "running");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(ns.pids().contains(&pid.to_string()), "pid file names {pid}");
    // SAFETY: kill(2) on the daemon our agent started in our namespace.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let out = wedged.expect("monitor", &[], OCF_ERR_GENERIC, "a wedged daemon");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not answer"),
        "{}",
        text(&out)
    );
    let started = Instant::now();
    wedged.expect("stop", &[], OCF_SUCCESS, "stop of a wedged daemon");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "stop took {took:?} (2 s wait, 5 s after SIGTERM, then SIGKILL)"
    );
    wedged.monitor(OCF_NOT_RUNNING, "after the stop");
    assert!(
        wait_until(Duration::from_secs(5), || !ns
            .pids()
            .contains(&pid.to_string())),
        "the wedged daemon {pid} survived stop"
    );
}

// ---- ctsync's agent moving the promoted role between two firewalls -------

/// `ctsyncd -s --json`'s `bulks_sent`.
fn bulks_sent(node: &lab::Node) -> u64 {
    let stats: serde_json::Value =
        serde_json::from_str(&node.ctl_ok(&["-s", "--json"])).expect("stats JSON");
    stats["sync"]["bulks_sent"].as_u64().expect("bulks_sent")
}

/// Wait until `to`'s external cache holds exactly `from`'s internal cache,
/// `n` flows.
fn assert_replicated(from: &lab::Node, to: &lab::Node, n: usize, what: &str) {
    let done = wait_until(Duration::from_secs(60), || {
        let internal = comparable(from.cache_json("-i"));
        internal.len() == n && internal == comparable(to.cache_json("-e"))
    });
    assert!(
        done,
        "{what}: {}'s external cache never matched {}'s {n} flows (internal {}, external {}){}{}",
        to.name,
        from.name,
        from.cache_json("-i").len(),
        to.cache_json("-e").len(),
        from.log_tail(),
        to.log_tail()
    );
}

fn assert_same_table(got: &[String], want: &[String], what: &str) {
    if got != want {
        let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).take(5).collect();
        panic!(
            "{what}: kernel tables differ ({} vs {} flows)\nmissing: {missing:#?}\nextra: {extra:#?}",
            got.len(),
            want.len()
        );
    }
}

/// The agent for a lab node, with the node's config and pid file.
fn lab_resource<'a>(
    agent: &Path,
    node: &lab::Node,
    dirs: &'a HaDirs,
    pid_file: &Path,
    binary: &Path,
) -> Resource<'a> {
    Resource {
        agent: agent.to_path_buf(),
        ns: node.ns.clone(),
        dirs,
        params: vec![
            ("binary".into(), lab::path_str(binary).into()),
            ("config".into(), lab::path_str(&node.config).into()),
            ("pid_file".into(), lab::path_str(pid_file).into()),
        ],
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn agent_fails_over_between_two_firewalls_without_a_cluster() {
    require_tool("conntrack", "conntrack");
    let lab = Lab::two_nodes(SyncFamily::V4);
    let _reaper = Reaper {
        namespaces: vec![lab.a.ns.clone(), lab.b.ns.clone()],
    };
    let agent = agent_path();
    let bin = lab::ctsyncd_bin();
    let setup = |node: &lab::Node| -> (HaDirs, PathBuf) {
        // The lab's config ends with its [[link]]s: a [daemon] table may follow.
        let pid_file = lab.dir.join(format!("{}.pid", node.name));
        let mut config = std::fs::read_to_string(&node.config).expect("lab config");
        config.push_str(&format!(
            "\n[daemon]\npid_file = \"{}\"\nlock = \"{}\"\n",
            pid_file.display(),
            lab.dir.join(format!("{}.lock", node.name)).display()
        ));
        std::fs::write(&node.config, config).expect("write config");
        (
            HaDirs::new(&lab.dir.join(format!("ocf-{}", node.name))),
            pid_file,
        )
    };
    let (dirs_a, pid_file_a) = setup(&lab.a);
    let (dirs_b, pid_file_b) = setup(&lab.b);
    let a = lab_resource(&agent, &lab.a, &dirs_a, &pid_file_a, &bin);
    let b = lab_resource(&agent, &lab.b, &dirs_b, &pid_file_b, &bin);

    a.probe(OCF_NOT_RUNNING, "A before start");
    a.expect("start", &[], OCF_SUCCESS, "start A");
    b.expect("start", &[], OCF_SUCCESS, "start B");
    a.monitor(OCF_SUCCESS, "A started, unpromoted");
    b.monitor(OCF_SUCCESS, "B started, unpromoted");

    // A promote whose commit fails is a failed promote, and leaves the
    // instance unpromoted.
    let failing = lab.dir.join("ctsyncd-failing-commit");
    std::fs::write(
        &failing,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = -c ]; then echo 'ctsyncd: commit refused by the test' >&2; exit 1; fi\ndone\nexec {} \"$@\"\n",
            bin.display()
        ),
    )
    .expect("write wrapper");
    must("chmod", &["755", lab::path_str(&failing)]);
    let out = lab_resource(&agent, &lab.a, &dirs_a, &pid_file_a, &failing).expect(
        "promote",
        &[],
        OCF_ERR_GENERIC,
        "promote with a failing commit",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("commit refused by the test"),
        "{}",
        text(&out)
    );
    a.monitor(OCF_SUCCESS, "A after a failed promote");

    a.expect("promote", &[], OCF_SUCCESS, "promote A");
    a.monitor(OCF_RUNNING_MASTER, "A promoted");
    b.monitor(OCF_SUCCESS, "B unpromoted");

    // Traffic on A: its flows reach B's external cache.
    const FLOWS: usize = 600;
    create_in(&lab.a.ns, flow_mix(FLOWS, 7, false));
    assert_replicated(&lab.a, &lab.b, FLOWS, "A's flows");
    let table_a = lab.a.kernel_table();
    assert_eq!(table_a.len(), FLOWS);
    assert!(
        lab.b.kernel_table().is_empty(),
        "B's kernel before failover"
    );

    // A's daemon crashes: A is not running (promoted or not), and stopping
    // it cleans up.
    let pid_a: i32 = std::fs::read_to_string(&pid_file_a)
        .expect("A's pid file")
        .trim()
        .parse()
        .expect("A's pid");
    // SAFETY: kill(2) on the daemon our agent started in the lab's namespace.
    unsafe { libc::kill(pid_a, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || !lab
            .a
            .ctl(&["-s"])
            .status
            .success()),
        "A's daemon still answers after SIGKILL"
    );
    a.monitor(OCF_NOT_RUNNING, "A crashed");
    a.expect("stop", &[], OCF_SUCCESS, "stop the crashed A");
    a.monitor(OCF_NOT_RUNNING, "A stopped");

    // Failover: B commits A's flows.
    b.expect("promote", &[], OCF_SUCCESS, "promote B");
    b.monitor(OCF_RUNNING_MASTER, "B promoted");
    b.probe(OCF_RUNNING_MASTER, "probe of the promoted B");
    let table_b = lab.b.kernel_table();
    assert_same_table(&table_b, &table_a, "B's kernel after failover against A's");

    // Failback. A comes back empty (a reboot) and unpromoted, and gets B's
    // table: after its start's -n, and from B's notify handlers.
    must("ip", &["netns", "exec", &lab.a.ns, "conntrack", "-F"]);
    assert!(lab.a.kernel_table().is_empty());
    a.expect("start", &[], OCF_SUCCESS, "restart A");
    a.monitor(OCF_SUCCESS, "A back, unpromoted");
    assert_replicated(&lab.b, &lab.a, FLOWS, "B's flows back to A");
    let before = bulks_sent(&lab.b);
    let out = b.expect(
        "notify",
        &[
            ("OCF_RESKEY_CRM_meta_notify_type", "post"),
            ("OCF_RESKEY_CRM_meta_notify_operation", "start"),
            ("OCF_RESKEY_CRM_meta_notify_start_uname", OTHER_NODE),
        ],
        OCF_SUCCESS,
        "B told that A started",
    );
    assert!(stderr_of(&out).contains("(-B)"), "{}", text(&out));
    assert!(bulks_sent(&lab.b) > before, "post-start notify sends -B");
    let before = bulks_sent(&lab.b);
    let out = b.expect(
        "notify",
        &[
            ("OCF_RESKEY_CRM_meta_notify_type", "pre"),
            ("OCF_RESKEY_CRM_meta_notify_operation", "promote"),
            ("OCF_RESKEY_CRM_meta_notify_promote_uname", OTHER_NODE),
        ],
        OCF_SUCCESS,
        "B told that A is about to be promoted",
    );
    assert!(stderr_of(&out).contains("(-B)"), "{}", text(&out));
    assert!(bulks_sent(&lab.b) > before, "pre-promote notify sends -B");
    // Notifications that do not concern B send nothing: post-promote, and
    // an instance starting on B itself.
    let me = must("uname", &["-n"]).trim().to_string();
    for (what, env) in [
        (
            "post-promote",
            [
                ("OCF_RESKEY_CRM_meta_notify_type", "post"),
                ("OCF_RESKEY_CRM_meta_notify_operation", "promote"),
                ("OCF_RESKEY_CRM_meta_notify_promote_uname", OTHER_NODE),
            ],
        ),
        (
            "post-start of this node",
            [
                ("OCF_RESKEY_CRM_meta_notify_type", "post"),
                ("OCF_RESKEY_CRM_meta_notify_operation", "start"),
                ("OCF_RESKEY_CRM_meta_notify_start_uname", me.as_str()),
            ],
        ),
    ] {
        let out = b.expect("notify", &env, OCF_SUCCESS, what);
        assert!(!stderr_of(&out).contains("-B"), "{what}: {}", text(&out));
    }

    b.expect("demote", &[], OCF_SUCCESS, "demote B");
    b.monitor(OCF_SUCCESS, "B demoted");
    a.expect("promote", &[], OCF_SUCCESS, "promote A again");
    a.monitor(OCF_RUNNING_MASTER, "A promoted again");
    assert_same_table(
        &lab.a.kernel_table(),
        &table_b,
        "A's kernel after failback against B's",
    );

    a.expect("stop", &[], OCF_SUCCESS, "stop A");
    b.expect("stop", &[], OCF_SUCCESS, "stop B");
    a.monitor(OCF_NOT_RUNNING, "A stopped");
    b.monitor(OCF_NOT_RUNNING, "B stopped");
    b.probe(OCF_NOT_RUNNING, "probe of the stopped B");
    for (name, path) in [("A", &pid_file_a), ("B", &pid_file_b)] {
        assert!(
            !path.exists(),
            "{name}'s pid file left: the daemon did not exit cleanly"
        );
    }

    // Every score change, in order.
    use Score::{Delete, Set};
    assert_eq!(
        dirs_a.scores(),
        vec![
            Set(UNPROMOTED), // start
            Set(PROMOTED),   // promote
            Delete,          // stop after the crash
            Set(UNPROMOTED), // start again
            Set(PROMOTED),   // promote again
            Delete,          // stop
        ],
        "A's scores"
    );
    assert_eq!(
        dirs_b.scores(),
        vec![
            Set(UNPROMOTED), // start
            Set(PROMOTED),   // promote
            Set(PROMOTED),   // probe while promoted
            Set(UNPROMOTED), // demote
            Delete,          // stop
        ],
        "B's scores"
    );
}

// ---- Debian's conntrackd agent with ctsyncd ------------------------------

#[test]
fn debian_conntrackd_agent_runs_ctsyncd_through_the_compat_hint() {
    require_tool("ocf-tester", "resource-agents");
    require_tool("xmllint", "libxml2-utils");
    let agent = PathBuf::from(CONNTRACKD_RA);
    assert!(
        agent.exists(),
        "{CONNTRACKD_RA} is missing: apt-get install resource-agents"
    );
    let dir = TempDir::new("ocf-debian");
    let ns = Netns::with_sync_link("ocf-deb");
    let dirs = HaDirs::new(&dir.path);
    let socket = dir.join("ctsyncd.sock");
    let lock = dir.join("ctsyncd.lock");
    let plain = format!("\n[daemon]\nlock = \"{}\"\n", lock.display());
    let hint = format!(
        "{plain}\n[compat]\nconntrackd_ra_hint = \"\"\"\nUNIX {{\n\tPath {}\n}}\nLockFile {}\n\"\"\"\n",
        socket.display(),
        lock.display()
    );
    let config = single_node_config(&dir, "hint.toml", &hint);
    let bin = lab::ctsyncd_bin();
    let meta = [
        ("CRM_meta_master_max", "1"),
        ("CRM_meta_master_node_max", "1"),
        ("CRM_meta_clone_node_max", "1"),
    ];
    let mut params = vec![
        ("binary", lab::path_str(&bin)),
        ("config", lab::path_str(&config)),
    ];
    params.extend_from_slice(&meta);
    let out = ocf_tester(&ns, &dirs, &agent, &params);
    assert_passes(&out, &agent);
    assert!(ns.pids().is_empty(), "processes left: {:?}", ns.pids());
    // resource-agents 4.12's conntrackd agent sets scores with crm_master -Q.
    let scores = dirs.scores();
    assert!(scores.contains(&Score::Set(1000)), "{scores:?}");
    assert!(scores.contains(&Score::Set(100)), "{scores:?}");

    // Without the hint the agent finds no socket: its start loop never
    // ends (this is what the hint is for).
    let bare = single_node_config(&dir, "bare.toml", &plain);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "timeout", "5"])
        .arg(&agent)
        .arg("start")
        .envs(dirs.env())
        .env("OCF_RESOURCE_INSTANCE", "ct")
        .env("OCF_RESKEY_binary", &bin)
        .env("OCF_RESKEY_config", &bare)
        .env("OCF_RESKEY_CRM_meta_master_max", "1")
        .env("OCF_RESKEY_CRM_meta_master_node_max", "1")
        .env("OCF_RESKEY_CRM_meta_clone_node_max", "1")
        .output()
        .expect("run the conntrackd agent");
    assert_eq!(
        out.status.code(),
        Some(124),
        "without the hint, start should loop until killed\n{}",
        text(&out)
    );
    // Its first `-d` did start a daemon, which the agent never saw.
    let orphan = Command::new(&bin)
        .args(["-C", lab::path_str(&bare), "-k"])
        .output()
        .expect("ctsyncd -k");
    assert!(orphan.status.success(), "{}", text(&orphan));
}

/// Drive Debian's conntrackd agent by hand through start, monitor, promote,
/// demote and stop with `binary=ctsyncd` and `config`, checking monitor's
/// answer after each step and the scores the agent set.
fn conntrackd_agent_journey(ns: &Netns, dir: &TempDir, config: &Path, socket: &Path, tag: &str) {
    let bin = lab::ctsyncd_bin();
    let base = dir.join(tag);
    std::fs::create_dir_all(&base).expect("HA dirs");
    let dirs = HaDirs::new(&base);
    let res = Resource {
        agent: PathBuf::from(CONNTRACKD_RA),
        ns: ns.name.clone(),
        dirs: &dirs,
        params: vec![
            ("binary".into(), lab::path_str(&bin).into()),
            ("config".into(), lab::path_str(config).into()),
            ("CRM_meta_master_max".into(), "1".into()),
            ("CRM_meta_master_node_max".into(), "1".into()),
            ("CRM_meta_clone_node_max".into(), "1".into()),
        ],
    };
    let what = format!("{tag} ({})", config.display());
    res.monitor(OCF_NOT_RUNNING, &format!("{what}: before start"));
    res.expect("start", &[], OCF_SUCCESS, &what);
    assert!(socket.exists(), "{what}: no socket at {}", socket.display());
    res.monitor(OCF_SUCCESS, &format!("{what}: running, not promoted"));
    // The daemon runs the configuration the agent named: its node id is
    // the one derived from the UDP link's own address.
    let status = Command::new(&bin)
        .args(["-C", lab::path_str(config), "status"])
        .output()
        .expect("ctsyncd status");
    let id = u32::from_be_bytes([198, 18, 0, 1]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(&format!("(node {id})")),
        "{what}: {}",
        text(&status)
    );
    res.expect("promote", &[], OCF_SUCCESS, &what);
    res.monitor(OCF_RUNNING_MASTER, &format!("{what}: promoted"));
    res.probe(OCF_RUNNING_MASTER, &format!("{what}: probe while promoted"));
    res.expect("demote", &[], OCF_SUCCESS, &what);
    res.monitor(OCF_SUCCESS, &format!("{what}: demoted"));
    res.expect("stop", &[], OCF_SUCCESS, &what);
    res.monitor(OCF_NOT_RUNNING, &format!("{what}: stopped"));
    assert!(!socket.exists(), "{what}: the socket outlived stop");
    assert!(
        wait_until(Duration::from_secs(10), || ns.pids().is_empty()),
        "{what}: processes left: {:?}",
        ns.pids()
    );
    assert_eq!(
        dirs.scores(),
        vec![
            Score::Set(UNPROMOTED), // start
            Score::Set(PROMOTED),   // promote
            Score::Set(PROMOTED),   // probe while promoted
            Score::Set(UNPROMOTED), // demote
        ],
        "{what}: scores"
    );
}

#[test]
fn debian_conntrackd_agent_runs_ctsyncd_from_a_conntrackd_conf() {
    require_tool("conntrack", "conntrack");
    let agent = PathBuf::from(CONNTRACKD_RA);
    assert!(
        agent.exists(),
        "{CONNTRACKD_RA} is missing: apt-get install resource-agents"
    );
    let dir = TempDir::new("ocf-cdconf");
    let ns = Netns::with_sync_link("ocf-cdc");
    let socket = dir.join("conntrackd.ctl");
    let lock = dir.join("conntrack.lock");
    // A conntrackd.conf as Pacemaker users have it: `UNIX {` and `Path` on
    // lines of their own (the agent awk-parses them).
    let conf = dir.join("conntrackd.conf");
    std::fs::write(
        &conf,
        format!(
            "Sync {{\n\tMode FTFW {{\n\t\tDisableExternalCache off\n\t}}\n\tUDP Default {{\n\
             \t\tIPv4_address 198.18.0.1\n\t\tIPv4_Destination_Address 198.18.0.2\n\
             \t\tPort 3780\n\t\tInterface sync0\n\t}}\n}}\nGeneral {{\n\tHashLimit 131072\n\
             \tLockFile {}\n\tUNIX {{\n\t\tPath {}\n\t}}\n\tFilter From Userspace {{\n\
             \t\tProtocol Accept {{\n\t\t\tTCP\n\t\t\tUDP\n\t\t}}\n\t}}\n}}\n",
            lock.display(),
            socket.display()
        ),
    )
    .expect("write conntrackd.conf");
    conntrackd_agent_journey(&ns, &dir, &conf, &socket, "conf");
    // `ctsyncd convert` keeps the agent working: the TOML carries UNIX Path
    // and LockFile in [compat] conntrackd_ra_hint.
    let out = Command::new(lab::ctsyncd_bin())
        .arg("convert")
        .arg(&conf)
        .output()
        .expect("ctsyncd convert");
    assert!(out.status.success(), "{}", text(&out));
    let toml = dir.join("converted.toml");
    std::fs::write(&toml, &out.stdout).expect("write the TOML");
    conntrackd_agent_journey(&ns, &dir, &toml, &socket, "toml");
    // Negative control: a conntrackd.conf whose UNIX block the agent can't
    // read (on one line) leaves monitor blind to a running daemon.
    let one_line = dir.join("one-line.conf");
    let text_one = std::fs::read_to_string(&conf).expect("read").replace(
        &format!("UNIX {{\n\t\tPath {}\n\t}}", socket.display()),
        &format!("UNIX {{ Path {} }}", socket.display()),
    );
    std::fs::write(&one_line, text_one).expect("write");
    let dirs = HaDirs::new(&dir.path);
    let res = Resource {
        agent: agent.clone(),
        ns: ns.name.clone(),
        dirs: &dirs,
        params: vec![
            ("binary".into(), lab::path_str(&lab::ctsyncd_bin()).into()),
            ("config".into(), lab::path_str(&one_line).into()),
            ("CRM_meta_master_max".into(), "1".into()),
            ("CRM_meta_master_node_max".into(), "1".into()),
            ("CRM_meta_clone_node_max".into(), "1".into()),
        ],
    };
    let started = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(lab::ctsyncd_bin())
        .args(["-C", lab::path_str(&one_line), "-d"])
        .output()
        .expect("ctsyncd -d");
    assert!(started.status.success(), "{}", text(&started));
    res.monitor(
        OCF_NOT_RUNNING,
        "UNIX block on one line: the agent finds no socket",
    );
    let killed = Command::new(lab::ctsyncd_bin())
        .args(["-C", lab::path_str(&one_line), "-k"])
        .output()
        .expect("ctsyncd -k");
    assert!(killed.status.success(), "{}", text(&killed));
}

// ---- keepalived example ----------------------------------------------------

/// Every IPv4 and IPv6 address written in `text` (outside comments too).
fn addresses_in(text: &str) -> Vec<std::net::IpAddr> {
    text.split(|c: char| c.is_whitespace() || c == '{' || c == '}' || c == '"' || c == ',')
        .map(|w| w.split('/').next().unwrap_or(""))
        .filter_map(|w| w.parse::<std::net::IpAddr>().ok())
        .collect()
}

fn documentation_range(addr: &std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 198 && (o[1] == 18 || o[1] == 19)
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0x2001 && s[1] == 0x0db8
        }
    }
}

#[test]
fn keepalived_example_passes_keepalived_t() {
    require_tool("keepalived", "keepalived");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/keepalived/keepalived.conf");
    let text_a = std::fs::read_to_string(&example).expect("read the example");
    let addrs = addresses_in(&text_a);
    assert!(addrs.len() >= 10, "addresses found: {addrs:?}");
    for addr in &addrs {
        assert!(
            documentation_range(addr),
            "{addr} in {} is outside 198.18.0.0/15 and 2001:db8::/32",
            example.display()
        );
    }
    for needle in [
        "vrrp_sync_group",
        "notify_master \"/etc/ctsyncd/ctsync-notify.sh primary\"",
        "notify_backup \"/etc/ctsyncd/ctsync-notify.sh backup\"",
        "notify_fault \"/etc/ctsyncd/ctsync-notify.sh fault\"",
        "nopreempt",
        "unicast_peer",
        "virtual_ipaddress_excluded",
        "advert_int 1",
    ] {
        assert!(text_a.contains(needle), "the example lacks {needle}");
    }
    assert!(
        !text_a
            .lines()
            .any(|l| l.trim_start().starts_with("vrrp_strict")),
        "vrrp_strict must stay off"
    );

    // keepalived checks that the interfaces exist: give it lan0 and wan0.
    let ns = Netns::with_sync_link("ka");
    for (dev, peer) in [("lan0", "lan0p"), ("wan0", "wan0p")] {
        must(
            "ip",
            &[
                "-n", &ns.name, "link", "add", dev, "type", "veth", "peer", "name", peer,
            ],
        );
    }
    let dir = TempDir::new("ka");
    let check = |name: &str, text: &str| -> Output {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write keepalived.conf");
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "keepalived", "-t", "-l", "-f"])
            .arg(&path)
            .output()
            .expect("run keepalived -t")
    };
    let clean = |out: &Output, what: &str| {
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !log.contains("WARNING") && !log.contains("nknown"),
            "keepalived -t on {what}:\n{}",
            text(out)
        );
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "keepalived", "-t", "-l", "-f"])
        .arg(&example)
        .output()
        .expect("run keepalived -t");
    clean(&out, "the shipped example (FW-A)");
    // FW-B as the header describes it.
    let text_b = text_a
        .replace("router_id fwa", "router_id fwb")
        .replace("priority 150", "priority 100")
        .replace("unicast_src_ip 198.18.1.2", "unicast_src_ip 198.18.1.X")
        .replace("198.18.1.3\n", "198.18.1.2\n")
        .replace("unicast_src_ip 198.18.1.X", "unicast_src_ip 198.18.1.3")
        .replace("unicast_src_ip 198.19.0.2", "unicast_src_ip 198.19.0.X")
        .replace("198.19.0.3\n", "198.19.0.2\n")
        .replace("unicast_src_ip 198.19.0.X", "unicast_src_ip 198.19.0.3");
    assert_ne!(text_a, text_b);
    clean(&check("fwb.conf", &text_b), "FW-B");
    // The sub-second variant the comments describe.
    let v3 = text_a
        .replace("#vrrp_version 3", "vrrp_version 3")
        .replace("advert_int 1\n", "advert_int 0.2\n");
    assert!(
        v3.contains("\n    vrrp_version 3\n"),
        "the vrrp_version line moved"
    );
    clean(&check("v3.conf", &v3), "the VRRPv3 variant");
    // The check does catch mistakes (conntrack-tools' example's `state SLAVE`).
    let out = check("bad.conf", &text_a.replace("state BACKUP", "state SLAVE"));
    assert!(
        !out.status.success(),
        "keepalived -t accepted 'state SLAVE':\n{}",
        text(&out)
    );
}
