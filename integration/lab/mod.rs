//! The network-namespace lab shared by the end-to-end tests and the demo:
//! firewalls as namespaces joined by a veth sync link, ctsyncd daemons in
//! them, flows written into their kernels, and the oracles that compare
//! tables. Everything it creates is removed on drop, even when a test fails.
//!
//! Addresses: sync link 198.18.0.0/24 and 2001:db8:5::/64; test flows from
//! 198.18.1.0 upward, 198.19.0.0/16 and 2001:db8:1::/48.

#![allow(dead_code)]

mod notes;
#[allow(unused_imports)]
pub use notes::note_for_summary;

use ctsync::flow::{proto, status, Flow, ProtoState, Tuple, L4};
use ctsync::kernel::write::{CreateOptions, WriteOp, Writer};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fail (not skip) a test that needs the daemon's test-only control
/// requests when the build lacks them.
pub fn require_test_seams() {
    if !cfg!(feature = "test-seams") {
        panic!(
            "this test needs the test-seams feature: cargo test --features test-seams (integration/test-all sets it)"
        );
    }
}

/// Path of the daemon binary under test.
pub fn ctsyncd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ctsyncd"))
}

/// Run a command, returning its output; panics with the command on spawn failure.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"))
}

/// Run a command that must succeed.
pub fn must(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Move the calling thread into network namespace `ns` (only this thread:
/// setns(2) is per thread).
pub fn enter_netns(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into {path} failed");
}

/// Run `f` on a thread that has entered network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// One firewall: a network namespace and, when started, its daemon.
pub struct Node {
    pub name: String,
    pub ns: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub daemon: Option<Child>,
    /// Set by [`Lab::run_as_unit_user`]: the daemon's binary, copied where
    /// that user reaches it; the daemon then starts as the shipped unit
    /// runs it.
    pub unit_binary: Option<PathBuf>,
}

/// The user a daemon started as the shipped unit runs it has: nobody, as
/// unprivileged as the unit's own `ctsync` user.
pub const UNIT_UID: u32 = 65534;
/// The capabilities the shipped unit (systemd/ctsyncd.service) grants, in
/// setpriv's spelling.
pub const UNIT_CAPS: &str = "+net_admin,+sys_nice";

impl Node {
    /// Run `ctsyncd -C <config> args...` as a client; returns the output.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["-C", self.config.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        Command::new(ctsyncd_bin())
            .args(&all)
            .output()
            .expect("run ctsyncd client")
    }

    /// Run a client command that must succeed; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "{}: ctsyncd {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run a command inside this node's namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.ns.as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The command that starts this node's daemon in its namespace: as
    /// root, or (see [`Lab::run_as_unit_user`]) as the unit's user with
    /// the unit's capabilities alone, ambient and bounding, and no new
    /// privileges.
    fn daemon_command(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        match &self.unit_binary {
            None => {
                cmd.arg(ctsyncd_bin());
            }
            Some(bin) => {
                cmd.arg("setpriv")
                    .arg(format!("--reuid={UNIT_UID}"))
                    .arg(format!("--regid={UNIT_UID}"))
                    .arg("--clear-groups")
                    .arg(format!("--inh-caps=-all,{UNIT_CAPS}"))
                    .arg(format!("--ambient-caps=-all,{UNIT_CAPS}"))
                    .arg(format!("--bounding-set=-all,{UNIT_CAPS}"))
                    .arg("--no-new-privs")
                    .arg(bin);
            }
        }
        cmd.args(["-C", self.config.to_str().unwrap_or_default()])
            .env(
                "RUST_LOG",
                std::env::var("CTSYNC_LAB_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null());
        cmd
    }

    /// Start the daemon in the foreground (as systemd would) and wait until
    /// its control socket answers.
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// `start`, with extra environment variables for the daemon.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "{} already running", self.name);
        let log = File::create(&self.log).expect("create daemon log");
        let err = log.try_clone().expect("clone log handle");
        let child = self
            .daemon_command()
            .envs(env.iter().copied())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn ctsyncd");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ctl(&["-s"]).status.success() {
                return;
            }
            if let Some(child) = self.daemon.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "{} daemon exited early ({status}){}",
                        self.name,
                        self.log_tail()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} daemon did not come up{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `start` that reports a daemon which exits or never answers instead
    /// of panicking (e.g. a configuration key the build rejects).
    pub fn try_start(&mut self, within: Duration) -> Result<(), String> {
        if self.daemon.is_some() {
            return Err(format!("{} already running", self.name));
        }
        let log = File::create(&self.log).map_err(|e| format!("create daemon log: {e}"))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("clone log handle: {e}"))?;
        let child = self
            .daemon_command()
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn ctsyncd: {e}"))?;
        self.daemon = Some(child);
        let deadline = Instant::now() + within;
        loop {
            if self.ctl(&["-s"]).status.success() {
                return Ok(());
            }
            if let Some(child) = self.daemon.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.daemon = None;
                    return Err(format!(
                        "{} daemon exited early ({status}){}",
                        self.name,
                        self.log_tail()
                    ));
                }
            }
            if Instant::now() >= deadline {
                self.kill(libc::SIGKILL);
                return Err(format!("{} daemon did not come up", self.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's pid (`ip netns exec` execs it, so the child's pid is
    /// the daemon's), if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// Send a signal to the daemon and reap it.
    pub fn kill(&mut self, signal: i32) {
        if let Some(child) = self.daemon.take() {
            signal_and_reap(child, signal, Duration::from_secs(10));
        }
    }

    /// SIGTERM, as systemd stops it: true if the daemon exited on its own
    /// within `within` (else it was SIGKILLed), or was not running.
    pub fn terminate(&mut self, within: Duration) -> bool {
        self.daemon
            .take()
            .is_none_or(|child| signal_and_reap(child, libc::SIGTERM, within))
    }

    /// Wait for the daemon to exit on its own (after `-k`); true if it did.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.daemon.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.daemon = None;
                    return true;
                }
            } else {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "\n--- {} log tail ---\n{}",
            self.name,
            lines[start..].join("\n")
        )
    }

    /// `conntrack -L -o extended` in this namespace, normalised for
    /// comparison: timeouts, use counts and ids stripped, lines sorted.
    pub fn kernel_table(&self) -> Vec<String> {
        let out = self.exec("conntrack", &["-L", "-o", "extended"]);
        assert!(out.status.success(), "conntrack -L failed in {}", self.ns);
        normalise_conntrack(&String::from_utf8_lossy(&out.stdout))
    }

    /// `-i`/`-e` as JSON flows.
    pub fn cache_json(&self, flag: &str) -> Vec<serde_json::Value> {
        let text = self.ctl_ok(&[flag, "--json"]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON from {flag}: {e}: {text}"))
    }
}

/// Strip what differs between two kernels holding the same flows.
pub fn normalise_conntrack(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            tokens
                .iter()
                .enumerate()
                .filter(|(i, t)| *i != 4 && !t.starts_with("use=") && !t.starts_with("id="))
                .map(|(_, t)| *t)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort();
    lines
}

/// Firewalls joined by one or two sync links. Each link is a bridge in a
/// "switch" namespace with one veth per firewall, so the same layout serves
/// UDP unicast between two nodes and multicast among three.
pub struct Lab {
    pub dir: PathBuf,
    pub a: Node,
    pub b: Node,
    pub c: Option<Node>,
    pub switch_ns: String,
    pub spec: LabSpec,
}

/// The sync-link addressing of a lab.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SyncFamily {
    V4,
    V6,
}

/// How a lab's daemons reach each other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LinkTransport {
    Udp,
    Multicast,
}

/// What a lab is made of.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub nodes: usize,
    pub family: SyncFamily,
    pub links: usize,
    pub transport: LinkTransport,
    pub mode: &'static str,
    /// `[kernel] reconcile_interval_s`; 0 = changes travel as events only.
    pub reconcile_interval_s: u32,
    /// Extra TOML lines for `[sync]`.
    pub sync_extra: String,
    /// Extra TOML lines for `[kernel]`.
    pub kernel_extra: String,
    /// Extra TOML tables (e.g. `[filter]`) put before the links.
    pub tables: String,
    /// Drop this share (percent) of the sync datagrams every node sends,
    /// at random, for the whole life of the lab (an nft `numgen random`
    /// rule in each node's output path): every direction loses that much.
    /// 0: no loss.
    pub sync_loss_percent: u32,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            nodes: 2,
            family: SyncFamily::V4,
            links: 1,
            transport: LinkTransport::Udp,
            mode: "ftfw",
            reconcile_interval_s: 5,
            sync_extra: String::new(),
            kernel_extra: String::new(),
            tables: String::new(),
            sync_loss_percent: 0,
        }
    }
}

impl LabSpec {
    /// Node `n`'s (0-based) address on link `k`.
    pub fn address(&self, k: usize, n: usize) -> String {
        match self.family {
            SyncFamily::V4 => format!("198.18.{k}.{}", n + 1),
            SyncFamily::V6 => format!("2001:db8:5:{k}::{}", n + 1),
        }
    }

    /// The multicast group of link `k` (administratively / link scoped: the
    /// datagrams never leave the lab's switch).
    pub fn group(&self, k: usize) -> String {
        match self.family {
            SyncFamily::V4 => format!("239.198.18.{}", k + 1),
            SyncFamily::V6 => format!("ff12::db8:{}", k + 1),
        }
    }
}

impl Lab {
    /// Two firewalls, one UDP sync link.
    pub fn two_nodes(family: SyncFamily) -> Lab {
        Lab::new(LabSpec {
            family,
            ..LabSpec::default()
        })
    }

    /// As `two_nodes`, with extra TOML appended to the `[sync]` table.
    pub fn two_nodes_with(family: SyncFamily, sync_extra: &str) -> Lab {
        Lab::new(LabSpec {
            family,
            sync_extra: sync_extra.to_string(),
            ..LabSpec::default()
        })
    }

    /// Two nodes whose daemons never re-read their kernel table on their
    /// own: every change must travel as a kernel event.
    pub fn two_nodes_events_only(family: SyncFamily) -> Lab {
        Lab::new(LabSpec {
            family,
            reconcile_interval_s: 0,
            ..LabSpec::default()
        })
    }

    pub fn new(spec: LabSpec) -> Lab {
        assert!((2..=3).contains(&spec.nodes) && (1..=4).contains(&spec.links));
        assert!(
            spec.nodes == 2 || spec.transport == LinkTransport::Multicast,
            "three nodes need multicast"
        );
        // ctnetlink creates of NAT flows need the NAT core; where the kernel
        // has them as modules, load them (built-in kernels need nothing).
        for module in ["nf_conntrack", "nf_nat"] {
            let _ = Command::new("modprobe").arg(module).output();
        }
        let id = format!(
            "{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("cts-lab-{id}"));
        std::fs::create_dir_all(&dir).expect("lab dir");
        let node = |name: &str| Node {
            name: name.to_string(),
            ns: format!("cts-{name}-{id}"),
            config: dir.join(format!("{name}.toml")),
            socket: dir.join(format!("{name}.sock")),
            log: dir.join(format!("{name}.log")),
            daemon: None,
            unit_binary: None,
        };
        let lab = Lab {
            a: node("a"),
            b: node("b"),
            c: (spec.nodes == 3).then(|| node("c")),
            switch_ns: format!("cts-sw-{id}"),
            dir,
            spec,
        };
        must("ip", &["netns", "add", &lab.switch_ns]);
        for n in lab.nodes() {
            must("ip", &["netns", "add", &n.ns]);
            must("ip", &["-n", &n.ns, "link", "set", "lo", "up"]);
        }
        let spec = &lab.spec;
        for k in 0..spec.links {
            let bridge = format!("br{k}");
            let sync = format!("sync{k}");
            must(
                "ip",
                &[
                    "-n",
                    &lab.switch_ns,
                    "link",
                    "add",
                    &bridge,
                    "type",
                    "bridge",
                ],
            );
            must("ip", &["-n", &lab.switch_ns, "link", "set", &bridge, "up"]);
            for (i, n) in lab.nodes().into_iter().enumerate() {
                let port = format!("p{k}n{i}");
                must(
                    "ip",
                    &[
                        "link",
                        "add",
                        &sync,
                        "netns",
                        &n.ns,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &port,
                        "netns",
                        &lab.switch_ns,
                    ],
                );
                must(
                    "ip",
                    &[
                        "-n",
                        &lab.switch_ns,
                        "link",
                        "set",
                        &port,
                        "master",
                        &bridge,
                    ],
                );
                must("ip", &["-n", &lab.switch_ns, "link", "set", &port, "up"]);
                let plen = if spec.family == SyncFamily::V4 {
                    "24"
                } else {
                    "64"
                };
                let cidr = format!("{}/{plen}", spec.address(k, i));
                let mut args = vec![
                    "-n",
                    n.ns.as_str(),
                    "addr",
                    "add",
                    cidr.as_str(),
                    "dev",
                    sync.as_str(),
                ];
                if spec.family == SyncFamily::V6 {
                    args.push("nodad");
                }
                must("ip", &args);
                must("ip", &["-n", &n.ns, "link", "set", &sync, "up"]);
            }
        }
        for (i, n) in lab.nodes().into_iter().enumerate() {
            std::fs::write(&n.config, lab.config_for(i, n)).expect("write config");
        }
        if lab.spec.sync_loss_percent > 0 {
            for n in lab.nodes() {
                lab.install_sync_loss(n);
            }
        }
        lab
    }

    /// The table `sync_loss_percent` installs in a node's namespace.
    const LOSS_TABLE: &'static str = "cts_lab_loss";

    fn install_sync_loss(&self, n: &Node) {
        let rules = format!(
            "table inet {} {{\n chain out {{\n  type filter hook output priority 0;\n  \
             oifname \"sync*\" udp dport 3780 numgen random mod 100 < {} counter drop\n }}\n}}\n",
            Lab::LOSS_TABLE,
            self.spec.sync_loss_percent
        );
        let file = self.dir.join(format!("sync-loss-{}.nft", n.name));
        std::fs::write(&file, rules).expect("write nft rules");
        let out = n.exec("nft", &["-f", path_str(&file)]);
        assert!(
            out.status.success(),
            "nft (sync loss): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sync datagrams `sync_loss_percent` dropped on their way out of `n`.
    pub fn sync_loss_drops(&self, n: &Node) -> u64 {
        let out = n.exec("nft", &["list", "table", "inet", Lab::LOSS_TABLE]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn config_for(&self, i: usize, n: &Node) -> String {
        let spec = &self.spec;
        let mut text = format!(
            "node_id = {}\nsocket = \"{}\"\n\n[sync]\nmode = \"{}\"\n{}\n\n[kernel]\n\
             # Flows made before a daemon starts never report events (the kernel's\n\
             # nf_conntrack_events=2); the periodic re-read finds their changes.\n\
             reconcile_interval_s = {}\n{}\n",
            i + 1,
            n.socket.display(),
            spec.mode,
            spec.sync_extra,
            spec.reconcile_interval_s,
            spec.kernel_extra
        );
        text.push_str(&spec.tables);
        for k in 0..spec.links {
            let remote = match spec.transport {
                LinkTransport::Udp => format!("peer = \"{}\"", spec.address(k, 1 - i)),
                LinkTransport::Multicast => format!("group = \"{}\"", spec.group(k)),
            };
            let transport = match spec.transport {
                LinkTransport::Udp => "udp",
                LinkTransport::Multicast => "multicast",
            };
            text.push_str(&format!(
                "\n[[link]]\ntransport = \"{transport}\"\ninterface = \"sync{k}\"\nlocal = \"{}\"\n{remote}\nport = 3780\n",
                spec.address(k, i)
            ));
        }
        text
    }

    pub fn nodes(&self) -> Vec<&Node> {
        let mut all = vec![&self.a, &self.b];
        all.extend(self.c.as_ref());
        all
    }

    /// Start every daemon from now on as the shipped unit runs it (see
    /// [`Node::daemon_command`]): the binary copied into the lab's
    /// directory, which that user may then enter; the configurations made
    /// readable, each control socket moved into a directory the user owns;
    /// `key_files` handed to the user (a key file must be the daemon's
    /// own, mode 0600).
    pub fn run_as_unit_user(&mut self, key_files: &[&Path]) -> Result<(), String> {
        use std::os::unix::fs::{chown, PermissionsExt};
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("lab directory", e))?;
        let bin = self.dir.join("ctsyncd");
        std::fs::copy(ctsyncd_bin(), &bin).map_err(|e| io("copy ctsyncd", e))?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("ctsyncd copy", e))?;
        let run = self.dir.join("run");
        std::fs::create_dir_all(&run).map_err(|e| io("run directory", e))?;
        chown(&run, Some(UNIT_UID), Some(UNIT_UID)).map_err(|e| io("chown run", e))?;
        for key in key_files {
            chown(key, Some(UNIT_UID), Some(UNIT_UID)).map_err(|e| io("chown key file", e))?;
            if let Some(dir) = key.parent() {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| io("key directory", e))?;
            }
        }
        // Every configuration checked before any is changed.
        let mut moved = Vec::new();
        for node in self.nodes() {
            let socket = run.join(format!("{}.sock", node.name));
            let text = std::fs::read_to_string(&node.config).map_err(|e| io("config", e))?;
            let changed = text.replace(
                &format!("socket = \"{}\"", node.socket.display()),
                &format!("socket = \"{}\"", socket.display()),
            );
            if changed == text {
                return Err(format!("{}: no socket line to move", node.config.display()));
            }
            moved.push((changed, socket));
        }
        for (node, (text, socket)) in self.nodes_mut().into_iter().zip(moved) {
            std::fs::write(&node.config, text).map_err(|e| io("config", e))?;
            std::fs::set_permissions(&node.config, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| io("config", e))?;
            node.socket = socket;
            node.unit_binary = Some(bin.clone());
        }
        Ok(())
    }

    pub fn nodes_mut(&mut self) -> Vec<&mut Node> {
        let mut all = vec![&mut self.a, &mut self.b];
        all.extend(self.c.as_mut());
        all
    }

    /// Run a command in the switch namespace (to cut or degrade a link).
    pub fn switch_exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.switch_ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.nodes_mut() {
            n.kill(libc::SIGTERM);
        }
        let mut spaces: Vec<String> = self.nodes().iter().map(|n| n.ns.clone()).collect();
        spaces.push(self.switch_ns.clone());
        for ns in spaces {
            let _ = run("ip", &["netns", "del", &ns]);
        }
        if std::thread::panicking() || std::env::var_os("CTSYNC_KEEP_LAB").is_some() {
            eprintln!("lab files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Send `signal` to a daemon we started under `ip netns exec` (which execs
/// it, so the child's pid is the daemon's) and reap it; SIGKILL if it is
/// still there after `within`. True if it exited on its own.
pub fn signal_and_reap(mut child: Child, signal: i32, within: Duration) -> bool {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe { libc::kill(child.id() as i32, signal) };
    reap(&mut child, within)
}

/// Wait for a child to exit (reap it); SIGKILL it after `within`. True if
/// it exited on its own.
pub fn reap(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Whether `tool` is on the PATH.
pub fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Poll `check` every 100 ms until it returns true or `within` passes.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::from([a, b, c, d])
}

fn v6(group3: u16, low: u32) -> IpAddr {
    IpAddr::from([
        0x2001,
        0x0db8,
        0x0001,
        group3,
        0,
        0,
        (low >> 16) as u16,
        low as u16,
    ])
}

/// A deterministic mix of `n` flows covering every protocol ctsync models,
/// IPv4 and IPv6, SNAT, DNAT and both with port changes, a non-default zone
/// and marks. `salt` keeps different batches apart.
pub fn flow_mix(n: usize, salt: u8, with_dccp: bool) -> Vec<Flow> {
    let kinds = if with_dccp { 11 } else { 10 };
    (0..n)
        .map(|i| {
            // Blocks of 16,384 flows share a destination; up to 4 million stay unique.
            let hi = (i >> 8) as u32;
            let block = (hi >> 6) as u8;
            let lo = (i & 0xff) as u8;
            let idx = i as u16;
            let src4 = v4(198, 18, 16 + (hi & 0x3f) as u8, lo);
            let dst4 = v4(198, 19, salt, 1 + block);
            let src6 = v6(u16::from(salt), i as u32);
            let dst6 = v6(0xffff, 1);
            let ports = |p: u16| L4::Ports {
                src: 1024 + p % 60000,
                dst: 80,
            };
            let tuple = |src, dst, proto, l4| Tuple {
                src,
                dst,
                proto,
                l4,
            };
            let established = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;
            let mut flow = match i % kinds {
                0 => {
                    let mut f = Flow::new(tuple(src4, dst4, proto::TCP, ports(idx)));
                    f.state = tcp_state(3);
                    f.status = established;
                    f
                }
                1 => {
                    let mut f = Flow::new(tuple(src6, dst6, proto::TCP, ports(idx)));
                    f.state = tcp_state(1);
                    f.status = status::CONFIRMED;
                    f
                }
                2 => {
                    let orig = tuple(src4, dst4, proto::UDP, ports(idx));
                    let mut f = Flow::new(orig);
                    f.reply.dst = v4(198, 19, 255, salt);
                    f.reply.l4 = L4::Ports {
                        src: 80,
                        dst: 10000 + idx % 50000,
                    };
                    f.status = status::CONFIRMED
                        | status::SRC_NAT
                        | status::SRC_NAT_DONE
                        | status::DST_NAT_DONE;
                    f
                }
                3 => {
                    let orig = tuple(src6, dst6, proto::UDP, ports(idx));
                    let mut f = Flow::new(orig);
                    f.reply.src = v6(0xfffe, 1);
                    f.reply.l4 = L4::Ports {
                        src: 8080,
                        dst: 1024 + idx % 60000,
                    };
                    f.status = status::CONFIRMED
                        | status::DST_NAT
                        | status::SRC_NAT_DONE
                        | status::DST_NAT_DONE;
                    f
                }
                4 => {
                    let mut f = Flow::new(tuple(
                        src4,
                        dst4,
                        proto::ICMP,
                        L4::Icmp {
                            kind: 8,
                            code: 0,
                            id: idx,
                        },
                    ));
                    f.status = status::CONFIRMED;
                    if (i / 10) % 2 == 0 {
                        // SNAT that also remaps the echo identifier.
                        f.reply.dst = v4(198, 19, 253, salt);
                        f.reply.l4 = L4::Icmp {
                            kind: 0,
                            code: 0,
                            id: idx ^ 0x8000,
                        };
                        f.status |= status::SRC_NAT | status::SRC_NAT_DONE | status::DST_NAT_DONE;
                    }
                    f
                }
                5 => {
                    let mut f = Flow::new(tuple(
                        src6,
                        dst6,
                        proto::ICMPV6,
                        L4::Icmp {
                            kind: 128,
                            code: 0,
                            id: idx,
                        },
                    ));
                    f.status = status::CONFIRMED;
                    f
                }
                6 => {
                    let mut f = Flow::new(tuple(src4, dst4, proto::SCTP, ports(idx)));
                    f.state = ProtoState::Sctp {
                        state: 4,
                        vtag_orig: 0x1000 + u32::from(idx),
                        vtag_reply: 0x2000 + u32::from(idx),
                    };
                    f.status = established;
                    f
                }
                7 => {
                    let mut f = Flow::new(tuple(
                        src4,
                        dst4,
                        proto::GRE,
                        L4::Ports {
                            src: idx,
                            dst: idx ^ 0x5555,
                        },
                    ));
                    f.status = status::CONFIRMED;
                    f
                }
                8 => {
                    let mut f = Flow::new(tuple(src6, dst6, proto::UDPLITE, ports(idx)));
                    f.status = status::CONFIRMED | status::SEEN_REPLY;
                    f
                }
                9 => {
                    // SNAT and DNAT with ports, in zone 7.
                    let orig = tuple(src4, dst4, proto::TCP, ports(idx));
                    let mut f = Flow::new(orig);
                    f.reply = tuple(
                        v4(198, 18, 200, 1 + block),
                        v4(198, 19, 254, salt),
                        proto::TCP,
                        L4::Ports {
                            src: 8443,
                            dst: 20000 + idx % 40000,
                        },
                    );
                    f.zone = 7;
                    f.state = tcp_state(3);
                    f.status = established
                        | status::SRC_NAT
                        | status::DST_NAT
                        | status::SRC_NAT_DONE
                        | status::DST_NAT_DONE;
                    f
                }
                _ => {
                    let mut f = Flow::new(tuple(src4, dst4, proto::DCCP, ports(idx)));
                    f.state = ProtoState::Dccp { state: 4, role: 0 };
                    f.status = established;
                    f
                }
            };
            flow.mark = (i % 5) as u32;
            flow.timeout = 600;
            flow
        })
        .collect()
}

fn tcp_state(state: u8) -> ProtoState {
    ProtoState::Tcp {
        state,
        wscale_orig: 7,
        wscale_reply: 7,
        flags_orig: 0,
        flags_reply: 0,
    }
}

/// Read a file path as str for command arguments.
pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Write flows into a namespace's kernel with ctsync's own batched writer.
pub fn create_in(ns: &str, flows: Vec<Flow>) {
    let name = ns.to_string();
    let report = in_netns(ns, move || {
        let mut writer = Writer::open().expect("open writer");
        writer.create_all(&flows, &CreateOptions::default())
    });
    assert_eq!(
        report.failed, 0,
        "creating flows in {name}: {:?}",
        report.first_errors
    );
}

/// An update of every `step`-th flow of `flows` (the first included),
/// each given `mark`: a change every node must follow.
pub fn mark_updates(flows: &[Flow], step: usize, mark: u32) -> Vec<WriteOp> {
    flows
        .iter()
        .step_by(step)
        .map(|f| {
            let mut changed = f.clone();
            changed.mark = mark;
            WriteOp::Update(changed)
        })
        .collect()
}

pub fn apply_in(ns: &str, ops: Vec<WriteOp>) {
    let name = ns.to_string();
    let report = in_netns(ns, move || {
        let mut writer = Writer::open().expect("open writer");
        writer.apply(&ops)
    });
    assert_eq!(
        report.failed, 0,
        "applying ops in {name}: {:?}",
        report.first_errors
    );
}

/// A flow list as a comparable set: JSON objects without the fields that
/// legitimately differ between two views of one flow (timeouts, ages).
pub fn comparable(flows: Vec<Value>) -> BTreeSet<String> {
    flows
        .into_iter()
        .map(|mut v| {
            if let Some(obj) = v.as_object_mut() {
                obj.remove("timeout");
                obj.remove("active_since_s");
                obj.remove("peer");
            }
            v.to_string()
        })
        .collect()
}

/// `promtool check metrics` on a scrape: Ok, or its complaints.
pub fn promtool(text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// `ctsyncd doctor --json -C config EXTRA...` in namespace `ns`: its exit
/// status and its JSON report (panics when it printed none).
pub fn doctor_report(ns: &str, config: &Path, extra: &[&str]) -> (i32, Value) {
    let bin = ctsyncd_bin();
    let mut args = vec![
        "netns",
        "exec",
        ns,
        bin.to_str().unwrap_or_default(),
        "doctor",
        "--json",
        "-C",
        config.to_str().unwrap_or_default(),
    ];
    args.extend_from_slice(extra);
    let out = run("ip", &args);
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit status"), report)
}
