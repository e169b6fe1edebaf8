//! Config loading: good files, the shipped example, and errors that name the
//! file, the line and the key.

use ctsync::config::{Config, ConfigError, SyncMode, Transport};
use std::path::Path;

const GOOD: &str = r#"node_id = 1
socket  = "/run/ctsyncd/ctsyncd.sock"
[sync]
mode = "ftfw"
[[link]]
transport = "udp"
interface = "sync0"
local = "198.18.0.1"
peer  = "198.18.0.2"
port = 3780
"#;

fn err(text: &str) -> ConfigError {
    match Config::parse(text, "ctsyncd.toml") {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn good_config_parses_with_defaults() {
    let c = Config::parse(GOOD, "ctsyncd.toml").unwrap();
    assert_eq!(c.node_id, 1);
    assert_eq!(c.socket, Path::new("/run/ctsyncd/ctsyncd.sock"));
    assert_eq!(c.sync.mode, SyncMode::Ftfw);
    assert_eq!(c.sync.window, 4096);
    assert_eq!(c.sync.ack_every, 64);
    assert_eq!(c.sync.ack_delay_ms, 20);
    assert_eq!(c.sync.keepalive_ms, 1000);
    assert_eq!(c.sync.rto_ms, 200);
    assert_eq!(c.sync.peer_timeout_ms, 5000);
    assert_eq!(c.sync.mtu, 1500);
    assert_eq!(c.kernel.netlink_buffer, 8 << 20);
    assert_eq!(c.kernel.netlink_buffer_max, 64 << 20);
    assert!(!c.kernel.tcp_window_tracking);
    assert_eq!(c.kernel.commit_timeout, None);
    assert_eq!(c.daemon.log_level, "info");
    assert_eq!(c.links.len(), 1);
    let l = &c.links[0];
    assert_eq!(l.transport, Transport::Udp);
    assert_eq!(l.interface, "sync0");
    assert_eq!(l.local, "198.18.0.1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(l.peer, Some("198.18.0.2".parse().unwrap()));
    assert_eq!(l.group, None);
    assert_eq!(l.port, 3780);
}

#[test]
fn shipped_example_parses_and_matches_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ctsyncd.toml");
    let c = Config::load(&path).unwrap();
    let g = Config::parse(GOOD, "x").unwrap();
    assert_eq!(c, g, "the example's values must be the defaults");
}

#[test]
fn every_commented_key_in_the_example_is_accepted() {
    // Uncomment `key = value` lines (not the second-link block) and parse again.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ctsyncd.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut in_second_link = false;
    for line in text.lines() {
        if line.starts_with("#[[link]]") {
            in_second_link = true;
        }
        if line.starts_with("[kernel]") {
            in_second_link = false;
        }
        let uncomment = !in_second_link
            && line.starts_with('#')
            && line.contains(" = ")
            && !line.starts_with("# ")
            && !line.starts_with("#group");
        out.push_str(if uncomment { &line[1..] } else { line });
        out.push('\n');
    }
    let c = Config::parse(&out, "example").unwrap();
    assert_eq!(c.kernel.commit_timeout, Some(180));
    assert_eq!(
        c.daemon.pid_file.as_deref(),
        Some(Path::new("/run/ctsyncd/ctsyncd.pid"))
    );
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = GOOD.replace("mode = \"ftfw\"", "mode = \"ftfw\"\nwindw = 10");
    let e = err(&text);
    let msg = e.to_string();
    assert!(
        msg.starts_with("ctsyncd.toml:5: key 'sync.windw': "),
        "{msg}"
    );
    assert!(msg.contains("unknown field"), "{msg}");
    assert!(!msg.contains('\n'));
    assert_eq!(e.line(), 5);
}

#[test]
fn unknown_key_in_a_link_is_indexed() {
    let text = format!("{GOOD}[[link]]\ntransport = \"udp\"\ninterface = \"sync1\"\nlocal = \"198.18.1.1\"\npeer = \"198.18.1.2\"\nport = 3781\nttl = 3\n");
    let msg = err(&text).to_string();
    assert!(
        msg.starts_with("ctsyncd.toml:17: key 'link[1].ttl': "),
        "{msg}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let text = GOOD.replace("port = 3780", "port = \"3780\"");
    let msg = err(&text).to_string();
    assert!(
        msg.starts_with("ctsyncd.toml:10: key 'link[0].port': "),
        "{msg}"
    );
}

#[test]
fn syntax_error_names_the_line() {
    let text = GOOD.replace("[sync]", "[sync");
    let e = err(&text);
    assert_eq!(e.line(), 3, "{e}");
    assert!(e.to_string().starts_with("ctsyncd.toml:3: "), "{e}");
}

#[test]
fn udp_needs_a_peer() {
    let text = GOOD.replace("peer  = \"198.18.0.2\"\n", "");
    let msg = err(&text).to_string();
    assert_eq!(
        msg,
        "ctsyncd.toml:6: key 'link[0].peer': required for transport \"udp\""
    );
}

#[test]
fn udp_refuses_a_group() {
    let text = GOOD.replace("port = 3780", "port = 3780\ngroup = \"225.0.0.50\"");
    let msg = err(&text).to_string();
    assert!(
        msg.starts_with("ctsyncd.toml:11: key 'link[0].group': "),
        "{msg}"
    );
}

#[test]
fn multicast_rules() {
    let mc = GOOD
        .replace("transport = \"udp\"", "transport = \"multicast\"")
        .replace("peer  = \"198.18.0.2\"", "group = \"225.0.0.50\"");
    let c = Config::parse(&mc, "ctsyncd.toml").unwrap();
    assert_eq!(c.links[0].transport, Transport::Multicast);
    assert_eq!(c.links[0].group, Some("225.0.0.50".parse().unwrap()));
    assert_eq!(c.links[0].remote(), c.links[0].group);

    let not_group = mc.replace("225.0.0.50", "198.18.0.9");
    let msg = err(&not_group).to_string();
    assert!(
        msg.starts_with("ctsyncd.toml:9: key 'link[0].group': "),
        "{msg}"
    );
    assert!(msg.contains("not a multicast address"), "{msg}");

    let with_peer = mc.replace("port = 3780", "port = 3780\npeer = \"198.18.0.2\"");
    assert_eq!(err(&with_peer).key(), Some("link[0].peer"));

    let no_group = mc.replace("group = \"225.0.0.50\"\n", "");
    assert_eq!(err(&no_group).key(), Some("link[0].group"));

    let v6_group = mc.replace("225.0.0.50", "ff02::1:3");
    let msg = err(&v6_group).to_string();
    assert!(msg.contains("same address family"), "{msg}");
}

#[test]
fn mixed_families_are_refused() {
    let text = GOOD.replace("198.18.0.2", "2001:db8::2");
    let e = err(&text);
    assert_eq!(e.key(), Some("link[0].peer"));
    assert_eq!(e.line(), 9);
}

#[test]
fn ipv6_link_parses() {
    let text = GOOD
        .replace("198.18.0.1", "2001:db8::1")
        .replace("198.18.0.2", "2001:db8::2");
    let c = Config::parse(&text, "x").unwrap();
    assert!(c.links[0].local.is_ipv6());
}

#[test]
fn bad_values() {
    let cases: &[(&str, &str, &str)] = &[
        ("node_id = 1", "node_id = 0", "node_id"),
        ("node_id = 1", "node_id = 4294967296", "node_id"),
        ("port = 3780", "port = 0", "link[0].port"),
        ("port = 3780", "port = 65536", "link[0].port"),
        ("mode = \"ftfw\"", "mode = \"fast\"", "sync.mode"),
        (
            "mode = \"ftfw\"",
            "mode = \"ftfw\"\nwindow = 0",
            "sync.window",
        ),
        (
            "mode = \"ftfw\"",
            "mode = \"ftfw\"\nwindow = 8\nack_every = 9",
            "sync.ack_every",
        ),
        (
            "mode = \"ftfw\"",
            "mode = \"ftfw\"\npeer_timeout_ms = 500",
            "sync.peer_timeout_ms",
        ),
        ("mode = \"ftfw\"", "mode = \"ftfw\"\nmtu = 100", "sync.mtu"),
        (
            "transport = \"udp\"",
            "transport = \"tcp\"",
            "link[0].transport",
        ),
        (
            "local = \"198.18.0.1\"",
            "local = \"sync0\"",
            "link[0].local",
        ),
        (
            "local = \"198.18.0.1\"",
            "local = \"225.1.1.1\"",
            "link[0].local",
        ),
        (
            "interface = \"sync0\"",
            "interface = \"\"",
            "link[0].interface",
        ),
        (
            "interface = \"sync0\"",
            "interface = \"a-very-long-interface-name\"",
            "link[0].interface",
        ),
        (
            "socket  = \"/run/ctsyncd/ctsyncd.sock\"",
            "socket = \"relative.sock\"",
            "socket",
        ),
    ];
    for (from, to, key) in cases {
        let text = GOOD.replace(from, to);
        assert_ne!(text, GOOD, "case {to} did not apply");
        let e = err(&text);
        assert_eq!(e.key(), Some(*key), "{to}: {e}");
        assert!(e.to_string().starts_with("ctsyncd.toml:"), "{e}");
    }
}

#[test]
fn kernel_and_daemon_values() {
    let text = format!("{GOOD}[kernel]\nnetlink_buffer = 1048576\nnetlink_buffer_max = 524288\n");
    let e = err(&text);
    assert_eq!(e.key(), Some("kernel.netlink_buffer_max"));
    assert_eq!(e.line(), 13);

    let text = format!("{GOOD}[kernel]\ncommit_timeout = 0\n");
    assert_eq!(err(&text).key(), Some("kernel.commit_timeout"));

    let text = format!("{GOOD}[daemon]\nlog_level = \"loud\"\n");
    assert_eq!(err(&text).key(), Some("daemon.log_level"));

    let text = format!("{GOOD}[kernel]\ncommit_timeout = 30\ntcp_window_tracking = true\n[daemon]\nlock = \"/run/ctsyncd.lock\"\n");
    let c = Config::parse(&text, "x").unwrap();
    assert_eq!(c.kernel.commit_timeout, Some(30));
    assert!(c.kernel.tcp_window_tracking);
    assert_eq!(
        c.daemon.lock.as_deref(),
        Some(Path::new("/run/ctsyncd.lock"))
    );
}

fn link(i: usize) -> String {
    format!("[[link]]\ntransport = \"udp\"\ninterface = \"sync{i}\"\nlocal = \"198.18.{i}.1\"\npeer = \"198.18.{i}.2\"\nport = 3780\n")
}

#[test]
fn four_links_ok_five_rejected() {
    let head = "node_id = 2\n";
    let four: String = (0..4).map(link).collect();
    let c = Config::parse(&format!("{head}{four}"), "x").unwrap();
    assert_eq!(c.links.len(), 4);
    let five: String = (0..5).map(link).collect();
    let e = err(&format!("{head}{five}"));
    assert_eq!(e.key(), Some("link"));
    assert_eq!(e.line(), 1 + 4 * 6 + 1, "{e}");
}

#[test]
fn no_link_rejected_and_missing_node_id_named() {
    let e = err("node_id = 3\n");
    assert_eq!(e.key(), Some("link"));
    let e = err(&link(0));
    assert_eq!(e.key(), Some("node_id"), "{e}");
}

#[test]
fn duplicate_links_rejected() {
    let e = err(&format!("node_id = 1\n{}{}", link(0), link(0)));
    assert_eq!(e.key(), Some("link[1]"));
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("cts-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ctsyncd.toml");
    std::fs::write(&path, GOOD.replace("port = 3780", "port = 3780\nbogus = 1")).unwrap();
    let msg = Config::load(&path).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        msg.starts_with(&format!("{}:11: key 'link[0].bogus'", path.display())),
        "{msg}"
    );
    let missing = Config::load(Path::new("/nonexistent/ctsyncd.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }));
    assert!(missing
        .to_string()
        .starts_with("/nonexistent/ctsyncd.toml: "));
}

#[test]
fn every_prefix_of_a_good_file_fails_cleanly_or_parses() {
    for end in 0..GOOD.len() {
        if let Err(e) = Config::parse(&GOOD[..end], "p") {
            let msg = e.to_string();
            assert!(msg.starts_with("p:"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}

proptest::proptest! {
    #[test]
    fn arbitrary_edits_never_panic(pos in 0usize..GOOD.len(), byte in 0u8..128) {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes[pos] = byte;
        if let Ok(text) = String::from_utf8(bytes) {
            if let Err(e) = Config::parse(&text, "p") {
                let msg = e.to_string();
                proptest::prop_assert!(msg.starts_with("p:"));
                proptest::prop_assert!(e.line() >= 1 && e.line() <= text.lines().count() + 1);
            }
        }
    }
}
