//! The Prometheus endpoint on the real kernel: a lab pair of daemons with
//! `[metrics] listen` on 127.0.0.1 inside their namespaces, scraped with
//! curl and checked by Prometheus' own `promtool check metrics` (which
//! also lints names, types and help), its values compared with what
//! `ctsyncd -s --json` and the kernel say. Negative controls: metrics are
//! off by default (nothing listens), promtool refuses a broken exposition,
//! bad requests get HTTP errors and the daemon keeps serving, slow
//! scrapers stall neither `-s` nor the next scrape, and an address that
//! cannot be bound stops the start, named in the error.
//!
//! Needs root (namespaces, ctnetlink), curl and promtool (Debian's
//! `prometheus` package; integration/install-deps installs it).
//! Addresses: 198.18.0.0/15 on the lab's links, 127.0.0.1 inside each
//! namespace for the endpoint.

mod lab;

use lab::{create_in, flow_mix, has_tool, promtool, wait_until, Lab, LabSpec, Node};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

const PORT: u16 = 9477;
const CONVERGE: Duration = Duration::from_secs(60);

/// Two nodes serving metrics on loopback; the scrapes' own connections
/// are not replicated (as an operator would filter them): the caches hold
/// only the test's flows.
fn metrics_lab() -> Lab {
    Lab::new(LabSpec {
        tables: format!(
            "[metrics]\nlisten = \"127.0.0.1:{PORT}\"\n\n\
             [filter]\naddress = {{ policy = \"ignore\", list = [\"127.0.0.0/8\", \"::1\"] }}\n"
        ),
        ..LabSpec::default()
    })
}

fn need_tools() {
    for tool in ["curl", "promtool"] {
        assert!(
            has_tool(tool),
            "{tool} is missing: run integration/install-deps"
        );
    }
}

fn stats(node: &Node) -> Value {
    serde_json::from_str(&node.ctl_ok(&["-s", "--json"])).expect("stats JSON")
}

/// An HTTP request from inside the node's namespace: (status, body).
fn http(node: &Node, method: &str, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{PORT}{path}");
    let out = node.exec(
        "curl",
        &[
            "-sS",
            "-m",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    assert!(
        out.status.success(),
        "curl {method} {url} in {}: {}{}",
        node.ns,
        String::from_utf8_lossy(&out.stderr),
        node.log_tail()
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("curl wrote the status");
    (code.parse().expect("status code"), body.to_string())
}

/// A scrape that must succeed.
fn scrape(node: &Node) -> String {
    let (code, body) = http(node, "GET", "/metrics");
    assert_eq!(code, 200, "scrape of {}: {body}", node.name);
    body
}

/// The value of the sample `name{labels}` (labels exactly as written,
/// e.g. `node_id="1"`; empty for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.parse().ok())
}

fn must_sample(text: &str, name: &str, labels: &str) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{text}"))
}

fn proc_number(node: &Node, file: &str) -> f64 {
    let out = node.exec("cat", &[&format!("/proc/sys/net/netfilter/{file}")]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file} in {}: {e}", node.ns))
}

#[test]
fn scrape_passes_promtool_and_agrees_with_stats_and_the_kernel() {
    need_tools();
    let mut lab = metrics_lab();
    lab.a.start();
    lab.b.start();
    let flows = 300;
    create_in(&lab.a.ns, flow_mix(flows, 41, false));
    let b = &lab.b;
    let replicated = wait_until(CONVERGE, || {
        stats(b)["external"]["active"].as_u64() == Some(flows as u64)
    });
    assert!(replicated, "b never held a's {flows} flows{}", b.log_tail());

    let before = scrape(b);
    if let Err(complaints) = promtool(&before) {
        panic!("promtool refused the scrape:\n{complaints}\n--- scrape ---\n{before}");
    }
    let json = stats(b);
    // Caches: b holds a's flows, none of its own.
    assert_eq!(
        must_sample(&before, "ctsync_cache_flows", "cache=\"external\""),
        flows as f64
    );
    assert_eq!(
        must_sample(&before, "ctsync_cache_flows", "cache=\"internal\""),
        json["internal"]["active"]
            .as_f64()
            .expect("internal.active")
    );
    // The peer: node 1, alive, heard lately, its flows in our cache.
    let peer = &json["peers"][0];
    assert_eq!(peer["node_id"], 1);
    assert_eq!(peer["alive"], true);
    let a_id = "node_id=\"1\"";
    assert_eq!(must_sample(&before, "ctsync_peer_up", a_id), 1.0);
    assert_eq!(
        must_sample(&before, "ctsync_peer_flows", a_id),
        flows as f64
    );
    let heard = must_sample(&before, "ctsync_peer_last_heard_seconds", a_id);
    assert!((0.0..5.0).contains(&heard), "last heard {heard}s ago");
    assert_eq!(
        must_sample(&before, "ctsync_peer_bulks_received_total", a_id),
        peer["bulks_received"]
            .as_f64()
            .expect("peer bulks_received")
    );
    // The link: active, and its state set says so alone.
    assert_eq!(json["links"][0]["active"], true);
    assert_eq!(json["links"][0]["up"], true);
    let link = "index=\"0\",interface=\"sync0\",transport=\"UDP\"";
    for (state, want) in [("active", 1.0), ("standby", 0.0), ("failed", 0.0)] {
        assert_eq!(
            must_sample(
                &before,
                "ctsync_link_state",
                &format!("{link},state=\"{state}\"")
            ),
            want,
            "{state}"
        );
    }
    assert!(must_sample(&before, "ctsync_link_received_datagrams_total", link) > 0.0);
    // The kernel table against its limit, as the kernel and -s say.
    assert_eq!(
        must_sample(&before, "ctsync_conntrack_entries_max", ""),
        proc_number(b, "nf_conntrack_max")
    );
    assert_eq!(
        json["table"]["max"].as_f64(),
        Some(proc_number(b, "nf_conntrack_max"))
    );
    let entries_before = must_sample(&before, "ctsync_conntrack_entries", "");
    assert!(
        entries_before < flows as f64,
        "b's kernel has {entries_before} entries before the commit"
    );

    // A commit: the histogram and the counters move by one commit of
    // `flows` flows, and the kernel table grows by them.
    let commits = must_sample(&before, "ctsync_commits_total", "");
    let hist = must_sample(&before, "ctsync_commit_duration_seconds_count", "");
    let inf = must_sample(
        &before,
        "ctsync_commit_duration_seconds_bucket",
        "le=\"+Inf\"",
    );
    let ok = must_sample(&before, "ctsync_commit_flows_total", "result=\"ok\"");
    assert_eq!((commits, hist, inf), (0.0, 0.0, 0.0));
    b.ctl_ok(&["-c"]);
    let after = scrape(b);
    promtool(&after).unwrap_or_else(|c| panic!("promtool after the commit:\n{c}"));
    let json = stats(b);
    assert_eq!(must_sample(&after, "ctsync_commits_total", ""), 1.0);
    assert_eq!(
        must_sample(&after, "ctsync_commit_duration_seconds_count", ""),
        1.0
    );
    assert_eq!(
        must_sample(
            &after,
            "ctsync_commit_duration_seconds_bucket",
            "le=\"+Inf\""
        ),
        1.0
    );
    assert_eq!(json["commit"]["durations"]["count"], 1);
    assert_eq!(
        must_sample(&after, "ctsync_commit_flows_total", "result=\"ok\"") - ok,
        flows as f64
    );
    assert_eq!(json["commit"]["ok"], flows);
    let sum = must_sample(&after, "ctsync_commit_duration_seconds_sum", "");
    assert!(sum > 0.0 && sum < 60.0, "commit took {sum}s");
    // Its breakdown: the kernel took some of that time, and the first
    // write went out within it (each rounded down to a microsecond, the
    // duration's sum too).
    let last = must_sample(&after, "ctsync_commit_last_duration_seconds", "");
    let in_kernel = must_sample(&after, "ctsync_commit_last_in_kernel_seconds", "");
    let first_write = must_sample(&after, "ctsync_commit_last_first_write_seconds", "");
    assert!(
        in_kernel > 0.0 && in_kernel <= sum,
        "in the kernel {in_kernel}s of {sum}s"
    );
    assert!(
        first_write > 0.0 && first_write + in_kernel <= sum + 1e-6,
        "first write after {first_write}s, {in_kernel}s in the kernel, of {sum}s"
    );
    assert!(last <= sum + 0.001, "last {last}s, sum {sum}s");
    // The writer's wait for a CPU is a part of the commit too (0 when the
    // kernel keeps no account), and -s --json says the same.
    let runqueue = must_sample(&after, "ctsync_commit_last_writer_runqueue_seconds", "");
    assert!(
        (0.0..=last + 1e-6).contains(&runqueue),
        "the writer waited {runqueue}s for a CPU in a commit of {last}s"
    );
    assert_eq!(
        json["commit"]["last_writer_runqueue_us"].as_f64(),
        Some((runqueue * 1e6).round()),
        "-s --json and the metric differ on the writer's wait"
    );
    assert_eq!(
        json["commit"]["last_in_kernel_us"].as_f64(),
        Some((in_kernel * 1e6).round()),
        "-s --json and the metric differ"
    );
    let entries = must_sample(&after, "ctsync_conntrack_entries", "");
    let kernel_now = proc_number(b, "nf_conntrack_count");
    assert!(
        entries >= flows as f64 && entries <= kernel_now + 5.0 && kernel_now <= entries + 5.0,
        "entries {entries}, kernel {kernel_now}, {flows} flows committed"
    );
    let json_count = json["table"]["count"].as_f64().expect("table.count");
    assert!(
        (json_count - entries).abs() <= 5.0,
        "-s says {json_count} entries, metrics {entries}"
    );
}

#[test]
fn metrics_are_off_by_default_and_bad_requests_get_errors() {
    need_tools();
    // Off by default: a daemon without [metrics] listens on no TCP port.
    let mut plain = Lab::new(LabSpec::default());
    plain.a.start();
    let listening = plain.a.exec("ss", &["-ltnH"]);
    assert!(listening.status.success());
    assert_eq!(
        String::from_utf8_lossy(&listening.stdout).trim(),
        "",
        "a daemon without [metrics] listens on TCP"
    );
    drop(plain);

    let mut lab = metrics_lab();
    lab.a.start();
    let a = &lab.a;
    // On, the same check sees the endpoint: the control above can fail.
    let listening = a.exec("ss", &["-ltnH"]);
    assert!(
        String::from_utf8_lossy(&listening.stdout).contains(&format!("127.0.0.1:{PORT}")),
        "nothing listens on {PORT}"
    );
    let good = scrape(a);
    promtool(&good).unwrap_or_else(|c| panic!("promtool:\n{c}"));
    // promtool can fail: a value that is not a number, a counter without
    // `_total`, a label value whose quote is not escaped, a family twice.
    for (what, broken) in [
        (
            "garbage value",
            good.replacen("\nctsync_uptime_seconds ", "\nctsync_uptime_seconds x", 1),
        ),
        (
            "counter without _total",
            good.replace("ctsync_commits_total", "ctsync_commits"),
        ),
        (
            "label value with an unescaped quote",
            good.replace("interface=\"sync0\"", "interface=\"sy\"nc0\""),
        ),
        (
            "family declared twice",
            format!("{good}# TYPE ctsync_commits_total counter\nctsync_commits_total 1\n"),
        ),
    ] {
        assert_ne!(broken, good, "{what}: nothing changed");
        assert!(promtool(&broken).is_err(), "promtool took a {what}");
    }

    assert_eq!(http(a, "GET", "/").0, 404);
    assert_eq!(http(a, "GET", "/metricsx").0, 404);
    assert_eq!(http(a, "POST", "/metrics").0, 405);
    assert_eq!(http(a, "DELETE", "/metrics").0, 405);
    // HEAD: the headers of a scrape, no body.
    let head = a.exec(
        "curl",
        &[
            "-sS",
            "-m",
            "10",
            "-I",
            &format!("http://127.0.0.1:{PORT}/metrics"),
        ],
    );
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "HEAD: {head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "HEAD: {head}"
    );
    // Garbage on the wire: hyper answers 400 and closes.
    let raw = a.exec(
        "bash",
        &[
            "-c",
            &format!(
                "exec 3<>/dev/tcp/127.0.0.1/{PORT}; printf 'NOT HTTP AT ALL\\r\\n\\r\\n' >&3; \
                 timeout 10 head -c 12 <&3"
            ),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&raw.stdout),
        "HTTP/1.1 400",
        "garbage request: {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    // The daemon and the endpoint are still there.
    a.ctl_ok(&["-s"]);
    let again = scrape(a);
    assert!(must_sample(&again, "ctsync_uptime_seconds", "") >= 0.0);

    // Slow scrapers (half a request, then nothing) stall neither the
    // daemon nor the next scrape.
    let mut slow = Command::new("ip")
        .args(["netns", "exec", &a.ns, "bash", "-c"])
        .arg(format!(
            "for i in 1 2 3; do exec {{fd}}<>/dev/tcp/127.0.0.1/{PORT}; \
             printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n' >&$fd; done; exec sleep 8"
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("start the slow scrapers");
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    a.ctl_ok(&["-s"]);
    let during = scrape(a);
    let took = started.elapsed();
    let stalled = slow.try_wait().expect("slow scrapers").is_some();
    lab::signal_and_reap(slow, libc::SIGKILL, Duration::from_secs(5));
    assert!(!stalled, "the slow scrapers were gone before the check");
    assert!(
        took < Duration::from_secs(3),
        "-s and a scrape took {took:?}"
    );
    assert!(must_sample(&during, "ctsync_uptime_seconds", "") >= 0.0);

    // Idle kept-alive connections hold no slot: more than the 16 slots'
    // worth, each having had its request answered and then left open,
    // and a scrape still gets through at once.
    let mut idle = Command::new("ip")
        .args(["netns", "exec", &a.ns, "bash", "-c"])
        .arg(format!(
            "for i in $(seq 20); do exec {{fd}}<>/dev/tcp/127.0.0.1/{PORT}; \
             printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&$fd; \
             timeout 3 head -c 12 <&$fd; echo; done; echo ready; exec sleep 30"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the idle keep-alive clients");
    let mut answered = 0;
    let mut ready = false;
    for line in std::io::BufRead::lines(std::io::BufReader::new(
        idle.stdout.take().expect("their stdout"),
    ))
    .take(21)
    {
        let line = line.expect("read their output");
        if line == "ready" {
            ready = true;
            break;
        }
        answered += usize::from(line == "HTTP/1.1 200");
    }
    let started = std::time::Instant::now();
    let http_result = std::panic::catch_unwind(|| scrape(a));
    let took = started.elapsed();
    let held = idle.try_wait().expect("idle clients").is_none();
    lab::signal_and_reap(idle, libc::SIGKILL, Duration::from_secs(5));
    assert!(ready && held, "the idle clients did not hold their sockets");
    assert_eq!(answered, 20, "idle clients' requests answered");
    let during = http_result.expect("a scrape past 20 idle connections");
    assert!(
        took < Duration::from_secs(3),
        "a scrape past 20 idle connections took {took:?}"
    );
    assert!(must_sample(&during, "ctsync_uptime_seconds", "") >= 0.0);

    // An address the namespace does not have: the start fails, naming it.
    let bad = "198.18.99.1:9477";
    let config = std::fs::read_to_string(&lab.b.config).expect("b's config");
    let config = config.replace(&format!("127.0.0.1:{PORT}"), bad);
    std::fs::write(&lab.b.config, config).expect("write b's config");
    let refused = lab.b.try_start(Duration::from_secs(30));
    let log = std::fs::read_to_string(&lab.b.log).unwrap_or_default();
    assert!(refused.is_err(), "b started with metrics on {bad}");
    assert!(
        log.contains(&format!("cannot listen for metrics on {bad}")),
        "the error does not name {bad}:\n{log}"
    );
    assert!(
        !lab.b.socket.exists(),
        "a start refused for its metrics address left its control socket"
    );
}
