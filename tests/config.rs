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
    assert_eq!(c.sync.max_peers, 16);
    assert_eq!(c.sync.max_flows_per_peer, 4_000_000);
    assert_eq!(c.sync.reorder_limit, 8192);
    assert_eq!(c.sync.reorder_max_bytes, 64 << 20);
    assert_eq!(c.sync.send_queue_max, 4_000_000);
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

// ---- [filter] -------------------------------------------------------------

mod filter {
    use super::{err, GOOD};
    use ctsync::config::Config;
    use ctsync::filter::{Cidr, Filter, FilterConfig, Policy};
    use ctsync::flow::{proto, Flow, ProtoState, Tuple, L4};

    fn with(filter: &str) -> String {
        format!("{GOOD}[filter]\n{filter}")
    }

    fn parse(filter: &str) -> FilterConfig {
        Config::parse(&with(filter), "ctsyncd.toml").unwrap().filter
    }

    fn tcp(src: &str, dst: &str, state: u8) -> Flow {
        let mut f = Flow::new(Tuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: proto::TCP,
            l4: L4::Ports {
                src: 40000,
                dst: 22,
            },
        });
        f.state = ProtoState::Tcp {
            state,
            wscale_orig: 7,
            wscale_reply: 7,
            flags_orig: 0,
            flags_reply: 0,
        };
        f
    }

    #[test]
    fn absent_section_and_empty_section_are_the_default() {
        let c = Config::parse(GOOD, "x").unwrap();
        assert_eq!(c.filter, FilterConfig::default());
        assert_eq!(c.filter.sync_addresses, Policy::Ignore);
        assert_eq!(parse(""), FilterConfig::default());
    }

    #[test]
    fn inline_rule_sets_parse() {
        let f = parse(
            "sync_addresses = \"accept\"\n\
             protocol = { policy = \"accept\", list = [\"tcp\", \"UDP\", \"132\", \"ipv6-icmp\"] }\n\
             address = { policy = \"ignore\", list = [\"198.18.0.0/24\", \"2001:db8:5::/64\", \"198.19.1.1\"] }\n\
             tcp_state = { policy = \"accept\", list = [\"ESTABLISHED\", \"CLOSED\", \"time_wait\"] }\n",
        );
        assert_eq!(f.sync_addresses, Policy::Accept);
        let p = f.protocol.unwrap();
        assert_eq!(p.policy, Policy::Accept);
        assert_eq!(p.list, vec![6, 17, 132, 58]);
        let a = f.address.unwrap();
        assert_eq!(a.policy, Policy::Ignore);
        let want: Vec<Cidr> = ["198.18.0.0/24", "2001:db8:5::/64", "198.19.1.1/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(a.list, want);
        let s = f.tcp_state.unwrap();
        assert_eq!(s.policy, Policy::Accept);
        assert_eq!(s.list, vec![3, 8, 7]);
    }

    #[test]
    fn table_form_equals_inline_form() {
        let inline = parse("protocol = { policy = \"ignore\", list = [\"icmp\"] }\n");
        let text = format!("{GOOD}[filter.protocol]\npolicy = \"ignore\"\nlist = [\"icmp\"]\n");
        let table = Config::parse(&text, "x").unwrap().filter;
        assert_eq!(inline, table);
        assert_eq!(table.protocol.unwrap().list, vec![1]);
    }

    #[test]
    fn parsed_filter_drives_the_decision() {
        let c = Config::parse(
            &with(
                "address = { policy = \"ignore\", list = [\"198.18.5.0/24\"] }\n\
                 tcp_state = { policy = \"accept\", list = [\"ESTABLISHED\"] }\n",
            ),
            "x",
        )
        .unwrap();
        let sync = c
            .links
            .iter()
            .flat_map(|l| [Some(l.local), l.peer])
            .flatten();
        let f = Filter::from_config(&c.filter, sync);
        assert!(f.accepts(&tcp("198.18.9.1", "198.18.9.2", 3)));
        assert!(!f.accepts(&tcp("198.18.9.1", "198.18.9.2", 1)), "SYN_SENT");
        assert!(
            !f.accepts(&tcp("198.18.5.1", "198.18.9.2", 3)),
            "ignored net"
        );
        assert!(!f.accepts(&tcp("198.18.0.1", "198.18.0.2", 3)), "sync link");
    }

    fn invalid(filter: &str) -> (usize, String, String) {
        let e = err(&with(filter));
        (e.line(), e.key().unwrap_or("").to_string(), e.to_string())
    }

    // GOOD has 10 lines, [filter] is line 11, the first filter line is 12.

    #[test]
    fn unknown_protocol_names_line_key_and_entry() {
        let (line, key, msg) = invalid(
            "sync_addresses = \"ignore\"\nprotocol = { policy = \"accept\", list = [\"tcp\", \"tpc\"] }\n",
        );
        assert_eq!(line, 13);
        assert_eq!(key, "filter.protocol.list[1]");
        assert!(
            msg.starts_with(
                "ctsyncd.toml:13: key 'filter.protocol.list[1]': unknown protocol \"tpc\""
            ),
            "{msg}"
        );
        let (_, key, _) = invalid("protocol = { policy = \"accept\", list = [\"256\"] }\n");
        assert_eq!(key, "filter.protocol.list[0]");
    }

    #[test]
    fn bad_addresses_are_errors() {
        for (entry, needle) in [
            ("198.18.0/24", "is not an IPv4 or IPv6 address"),
            ("198.18.0.0/33", "is not a prefix length of IPv4 (0..=32)"),
            ("2001:db8::/129", "is not a prefix length of IPv6 (0..=128)"),
            ("198.18.0.0/x", "is not a prefix length"),
            ("198.18.1.0/16", "write 198.18.0.0/16"),
            ("2001:db8::1/64", "write 2001:db8::/64"),
        ] {
            let (line, key, msg) = invalid(&format!(
                "\n\naddress = {{ policy = \"ignore\", list = [\"198.18.9.9\", \"{entry}\"] }}\n"
            ));
            assert_eq!(line, 14, "{msg}");
            assert_eq!(key, "filter.address.list[1]", "{msg}");
            assert!(msg.contains(needle), "{entry}: {msg}");
        }
    }

    #[test]
    fn entries_in_a_multi_line_list_name_their_own_line() {
        let (line, key, _) = invalid(
            "[filter.address]\npolicy = \"accept\"\nlist = [\n  \"198.18.0.1\",\n  \"198.18.0.0/99\",\n]\n",
        );
        assert_eq!((line, key.as_str()), (16, "filter.address.list[1]"));
    }

    #[test]
    fn unknown_tcp_state_is_an_error() {
        let (line, key, msg) = invalid(
            "tcp_state = { policy = \"accept\", list = [\"ESTABLISHED\", \"ESTABLISH\"] }\n",
        );
        assert_eq!(line, 12);
        assert_eq!(key, "filter.tcp_state.list[1]");
        assert!(msg.contains("unknown TCP state \"ESTABLISH\""), "{msg}");
        assert!(msg.contains("TIME_WAIT"), "{msg}");
    }

    #[test]
    fn bad_policy_empty_list_and_unknown_keys() {
        let (line, key, msg) = invalid("protocol = { policy = \"drop\", list = [\"tcp\"] }\n");
        assert_eq!(
            (line, key.as_str()),
            (12, "filter.protocol.policy"),
            "{msg}"
        );
        assert!(msg.contains("not one of \"accept\", \"ignore\""), "{msg}");

        let (line, key, msg) = invalid("sync_addresses = \"yes\"\n");
        assert_eq!((line, key.as_str()), (12, "filter.sync_addresses"), "{msg}");

        let (line, key, msg) = invalid("address = { policy = \"accept\", list = [] }\n");
        assert_eq!((line, key.as_str()), (12, "filter.address.list"), "{msg}");
        assert!(msg.contains("empty list"), "{msg}");

        let (line, key, msg) = invalid("state = { policy = \"accept\", list = [\"CLOSE\"] }\n");
        assert_eq!((line, key.as_str()), (12, "filter.state"), "{msg}");

        let (line, _, msg) = invalid("protocol = { policy = \"accept\" }\n");
        assert_eq!(line, 12, "{msg}");
        assert!(msg.contains("missing field `list`"), "{msg}");

        let (line, _, msg) = invalid("protocol = { policy = \"accept\", list = [6] }\n");
        assert_eq!(line, 12, "{msg}");
    }

    #[test]
    fn shipped_example_filter_keys_parse() {
        // The example's commented [filter] keys, uncommented, are valid and
        // mean what its comments say.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ctsyncd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let (_, section) = text.split_once("\n[filter]\n").unwrap();
        let uncommented: String = section
            .lines()
            .filter(|l| l.starts_with('#') && !l.starts_with("# ") && l.contains(" = "))
            .map(|l| format!("{}\n", &l[1..]))
            .collect();
        let f = parse(&uncommented);
        assert_eq!(f.sync_addresses, Policy::Ignore);
        assert_eq!(f.protocol.unwrap().list.len(), 7);
        assert_eq!(f.address.unwrap().policy, Policy::Ignore);
        assert_eq!(f.tcp_state.unwrap().list, vec![3, 8, 7, 5]);
        // The migration example, with "#   " removed, parses too.
        let migrated: String = section
            .lines()
            .filter_map(|l| l.strip_prefix("#   "))
            .filter(|l| {
                ["protocol =", "address =", "tcp_state ="]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let m = parse(&migrated);
        assert_eq!(m.protocol.unwrap().list, vec![6, 17]);
        assert_eq!(m.address.unwrap().list.len(), 3);
    }
}

#[test]
fn unknown_or_missing_field_in_an_inline_table_names_the_table() {
    let text = format!("{GOOD}[filter]\nprotocol = {{ polcy = \"accept\", list = [\"tcp\"] }}\n");
    let e = err(&text);
    assert_eq!(
        (e.line(), e.key()),
        (12, Some("filter.protocol.polcy")),
        "{e}"
    );
    let text = format!("{GOOD}[filter]\naddress = {{ policy = \"accept\" }}\n");
    let e = err(&text);
    assert_eq!(
        (e.line(), e.key()),
        (12, Some("filter.address.list")),
        "{e}"
    );
    let text = format!("{GOOD}[filter.tcp_state]\nlist = [\"CLOSE\"]\nplicy = \"accept\"\n");
    let e = err(&text);
    assert_eq!(
        (e.line(), e.key()),
        (13, Some("filter.tcp_state.plicy")),
        "{e}"
    );
}

// ---- [compat] conntrackd_ra_hint ---------------------------------------------

mod compat {
    use super::{err, GOOD};
    use ctsync::config::Config;
    use std::path::Path;

    const AWK_PATH: &str = r#"/^[ \t]*UNIX[ \t]*{/,/^[ \t]*}/ { if ($1 == "Path") { print $2 } }"#;

    /// GOOD (lines 1-10) with a lock (lines 11-12) and a [compat] table
    /// (line 13) whose hint value opens on line 14.
    fn with_hint(hint_lines: &str) -> String {
        format!(
            "{GOOD}[daemon]\nlock = \"/run/ctsyncd/ctsyncd.lock\"\n[compat]\nconntrackd_ra_hint = \"\"\"\n{hint_lines}\"\"\"\n"
        )
    }

    const HINT: &str =
        "UNIX {\n\tPath /run/ctsyncd/ctsyncd.sock\n}\nLockFile /run/ctsyncd/ctsyncd.lock\n";

    #[test]
    fn a_matching_hint_is_accepted_and_kept() {
        let c = Config::parse(&with_hint(HINT), "ctsyncd.toml").unwrap();
        assert_eq!(c.compat.conntrackd_ra_hint.as_deref(), Some(HINT));
        // Without a LockFile line, and with spaces instead of a tab.
        let c = Config::parse(
            &with_hint("  UNIX  {\n    Path /run/ctsyncd/ctsyncd.sock\n  }\n"),
            "x",
        )
        .unwrap();
        assert!(c.compat.conntrackd_ra_hint.is_some());
        // No [compat] at all: no hint.
        let c = Config::parse(GOOD, "x").unwrap();
        assert_eq!(c.compat.conntrackd_ra_hint, None);
    }

    #[test]
    fn the_hint_matches_the_default_socket_when_socket_is_unset() {
        let text = with_hint(HINT).replace("socket  = \"/run/ctsyncd/ctsyncd.sock\"\n", "");
        let c = Config::parse(&text, "x").unwrap();
        assert_eq!(c.socket, Path::new(ctsync::config::DEFAULT_SOCKET));
        let other = with_hint(HINT)
            .replace("socket  = \"/run/ctsyncd/ctsyncd.sock\"\n", "")
            .replace("Path /run/ctsyncd/ctsyncd.sock", "Path /run/other.sock");
        assert!(err(&other)
            .to_string()
            .contains("is not the configured socket"));
    }

    #[test]
    fn a_path_other_than_the_socket_names_file_line_and_key() {
        let text = with_hint(&HINT.replace("ctsyncd.sock", "other.sock"));
        let e = err(&text);
        assert_eq!(e.line(), 16, "{e}");
        assert_eq!(e.key(), Some("compat.conntrackd_ra_hint"));
        assert_eq!(
            e.to_string(),
            "ctsyncd.toml:16: key 'compat.conntrackd_ra_hint': Path /run/ctsyncd/other.sock is not the configured socket (/run/ctsyncd/ctsyncd.sock)"
        );
    }

    #[test]
    fn a_lock_file_other_than_daemon_lock_is_refused() {
        let e = err(&with_hint(&HINT.replace("ctsyncd.lock", "conntrack.lock")));
        assert_eq!(e.line(), 18, "{e}");
        assert_eq!(e.key(), Some("compat.conntrackd_ra_hint"));
        let msg = e.to_string();
        assert!(
            msg.ends_with(
                "LockFile /run/ctsyncd/conntrack.lock is not the configured daemon.lock (/run/ctsyncd/ctsyncd.lock)"
            ),
            "{msg}"
        );
        // A LockFile while [daemon] lock is unset.
        let text = with_hint(HINT).replace("lock = \"/run/ctsyncd/ctsyncd.lock\"\n", "");
        let e = err(&text);
        assert_eq!(e.line(), 17, "{e}");
        assert!(e.to_string().contains("daemon.lock is not set"), "{e}");
    }

    #[test]
    fn what_the_agent_would_not_find_is_refused() {
        // Escapes in a one-line string: the value holds the lines, the file
        // does not, and the agent's awk reads the file.
        let one_line = format!(
            "{GOOD}[compat]\nconntrackd_ra_hint = \"UNIX {{\\n\\tPath /run/ctsyncd/ctsyncd.sock\\n}}\\n\"\n"
        );
        let e = err(&one_line);
        assert_eq!(e.line(), 12, "{e}");
        assert!(e.to_string().contains("no 'Path' line"), "{e}");
        // Path outside a UNIX block.
        let e = err(&with_hint("Path /run/ctsyncd/ctsyncd.sock\n"));
        assert!(e.to_string().contains("no 'Path' line"), "{e}");
        // Two Paths (awk would print both).
        let e = err(&with_hint(
            "UNIX {\nPath /run/ctsyncd/ctsyncd.sock\nPath /run/ctsyncd/ctsyncd.sock\n}\n",
        ));
        assert_eq!(e.line(), 17, "{e}");
        assert!(e.to_string().contains("more than one 'Path'"), "{e}");
        // A block never closed.
        let e = err(&with_hint("UNIX {\nPath /run/ctsyncd/ctsyncd.sock\n"));
        assert_eq!(e.line(), 15, "{e}");
        assert!(e.to_string().contains("not closed"), "{e}");
        // A path with a space in it.
        let e = err(&with_hint("UNIX {\nPath /run/ctsyncd/ctsyncd.sock x\n}\n"));
        assert!(e.to_string().contains("exactly one path"), "{e}");
        // Unknown keys in [compat] are errors like anywhere else.
        let e = err(&format!("{GOOD}[compat]\nconntrackd_hint = \"\"\n"));
        assert_eq!(e.key(), Some("compat.conntrackd_hint"), "{e}");
    }

    #[test]
    fn what_the_check_accepts_is_what_the_agents_awk_prints() {
        let dir = std::env::temp_dir().join(format!("cts-compat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctsyncd.toml");
        let text = with_hint("UNIX {\n\tPath /run/ctsyncd/ctsyncd.sock\n}\r\n");
        std::fs::write(&path, &text).unwrap();
        let accepted = Config::load(&path).unwrap();
        let out = std::process::Command::new("awk")
            .arg(AWK_PATH)
            .arg(&path)
            .output()
            .expect("run awk");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\n", accepted.socket.display())
        );
        // A trailing '\r' on the Path line reaches awk's $2: refused.
        std::fs::write(
            &path,
            with_hint("UNIX {\n\tPath /run/ctsyncd/ctsyncd.sock\r\n}\n"),
        )
        .unwrap();
        assert!(Config::load(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_shipped_example_block_parses_when_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ctsyncd.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut out = String::new();
        let mut in_compat = false;
        for line in text.lines() {
            if line == "# [compat]" {
                in_compat = true;
            }
            let line = if in_compat {
                line.strip_prefix("# ").unwrap_or(line)
            } else if line.starts_with("#lock = ") {
                &line[1..]
            } else {
                line
            };
            out.push_str(line);
            out.push('\n');
        }
        assert!(in_compat, "conf/ctsyncd.toml has no '# [compat]' block");
        let c = Config::parse(&out, "example").unwrap();
        let hint = c.compat.conntrackd_ra_hint.expect("the example's hint");
        assert!(hint.contains("Path /run/ctsyncd/ctsyncd.sock"), "{hint}");
    }
}

#[test]
fn a_link_may_name_the_node_ids_it_accepts() {
    let with = GOOD.replace("port = 3780\n", "port = 3780\nnode_ids = [2, 7]\n");
    let c = Config::parse(&with, "ctsyncd.toml").unwrap();
    assert_eq!(c.links[0].node_ids, Some(vec![2, 7]));
    assert_eq!(Config::parse(GOOD, "x").unwrap().links[0].node_ids, None);
    for bad in ["node_ids = []", "node_ids = [0]", "node_ids = [4294967296]"] {
        let text = GOOD.replace("port = 3780\n", &format!("port = 3780\n{bad}\n"));
        let e = err(&text).to_string();
        assert!(e.contains("link[0].node_ids"), "{bad}: {e}");
    }
}

#[test]
fn socket_group_is_a_group_name() {
    let with = GOOD.replace("node_id = 1\n", "node_id = 1\nsocket_group = \"ctsync\"\n");
    let c = Config::parse(&with, "ctsyncd.toml").unwrap();
    assert_eq!(c.socket_group.as_deref(), Some("ctsync"));
    assert_eq!(Config::parse(GOOD, "x").unwrap().socket_group, None);
    for bad in ["\"\"", "\"a b\"", "\"x/y\""] {
        let text = GOOD.replace(
            "node_id = 1\n",
            &format!("node_id = 1\nsocket_group = {bad}\n"),
        );
        let e = err(&text).to_string();
        assert!(e.contains("socket_group"), "{bad}: {e}");
    }
}

#[test]
fn auth_section_parses_and_bad_values_name_their_key() {
    let c = Config::parse(GOOD, "ctsyncd.toml").unwrap();
    assert_eq!(c.auth.key_file, None, "no keys unless configured");
    let text = GOOD.replace(
        "[[link]]",
        "[auth]\nkey_file = \"/etc/ctsyncd/sync.keys\"\ncluster = \"fw-pair-1\"\n[[link]]",
    );
    let c = Config::parse(&text, "ctsyncd.toml").unwrap();
    assert_eq!(
        c.auth.key_file.as_deref(),
        Some(Path::new("/etc/ctsyncd/sync.keys"))
    );
    assert_eq!(c.auth.cluster, "fw-pair-1");
    for (section, key, what, line) in [
        ("key_file = \"sync.keys\"", "auth.key_file", "absolute", 6),
        (
            "key_file = \"/k\"\ncluster = \"has space\"",
            "auth.cluster",
            "printable",
            7,
        ),
        ("cluster = \"c\"", "auth.cluster", "needs auth.key_file", 6),
    ] {
        let text = GOOD.replace("[[link]]", &format!("[auth]\n{section}\n[[link]]"));
        let e = err(&text);
        assert_eq!(e.key(), Some(key), "{e}");
        assert!(e.to_string().contains(what), "{e}");
        assert_eq!(e.line(), line, "{e}");
    }
    let e = err(&GOOD.replace("[[link]]", "[auth]\nkeyfile = \"/k\"\n[[link]]"));
    assert!(e.to_string().contains("keyfile"), "{e}");
}

#[test]
fn the_limits_on_what_peers_can_grow_are_keys() {
    let text = GOOD.replace(
        "mode = \"ftfw\"",
        "mode = \"ftfw\"\nmax_peers = 4\nmax_flows_per_peer = 2000000\nreorder_limit = 4096\n\
         reorder_max_bytes = 16777216\nsend_queue_max = 100000",
    );
    let c = Config::parse(&text, "ctsyncd.toml").unwrap();
    assert_eq!(c.sync.max_peers, 4);
    assert_eq!(c.sync.max_flows_per_peer, 2_000_000);
    assert_eq!(c.sync.reorder_limit, 4096);
    assert_eq!(c.sync.reorder_max_bytes, 16 << 20);
    assert_eq!(c.sync.send_queue_max, 100_000);
    // The bounds are accepted, just inside them too.
    for ok in [
        "max_peers = 1",
        "max_peers = 1024",
        "max_flows_per_peer = 1",
        "max_flows_per_peer = 268435456",
        "window = 1\nack_every = 1\nreorder_limit = 1",
        "reorder_limit = 16777216",
        "reorder_max_bytes = 1048576",
        "reorder_max_bytes = 4294967296",
        "send_queue_max = 65536",
        "send_queue_max = 268435456",
    ] {
        let text = GOOD.replace("mode = \"ftfw\"", &format!("mode = \"ftfw\"\n{ok}"));
        assert!(Config::parse(&text, "x").is_ok(), "{ok}");
    }
}

#[test]
fn zero_or_absurd_limits_are_refused_naming_the_key() {
    let cases: &[(&str, &str)] = &[
        ("max_peers = 0", "sync.max_peers"),
        ("max_peers = 1025", "sync.max_peers"),
        ("max_peers = -1", "sync.max_peers"),
        ("max_flows_per_peer = 0", "sync.max_flows_per_peer"),
        ("max_flows_per_peer = 268435457", "sync.max_flows_per_peer"),
        ("reorder_limit = 0", "sync.reorder_limit"),
        ("reorder_limit = 16777217", "sync.reorder_limit"),
        ("reorder_max_bytes = 0", "sync.reorder_max_bytes"),
        ("reorder_max_bytes = 1048575", "sync.reorder_max_bytes"),
        ("reorder_max_bytes = 4294967297", "sync.reorder_max_bytes"),
        ("send_queue_max = 0", "sync.send_queue_max"),
        ("send_queue_max = 65535", "sync.send_queue_max"),
        ("send_queue_max = 268435457", "sync.send_queue_max"),
        ("max_flows_per_peer = \"many\"", "sync.max_flows_per_peer"),
        // A live peer is up to its window ahead: a shorter reorder limit
        // would drop its datagrams.
        ("reorder_limit = 1000", "sync.reorder_limit"),
        ("window = 10000", "sync.window"),
    ];
    for (line, key) in cases {
        let text = GOOD.replace("mode = \"ftfw\"", &format!("mode = \"ftfw\"\n{line}"));
        let e = err(&text);
        assert_eq!(e.key(), Some(*key), "{line}: {e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("ctsyncd.toml:5: key '{key}': ")),
            "{line}: {msg}"
        );
    }
    let e = err(&GOOD.replace(
        "mode = \"ftfw\"",
        "mode = \"ftfw\"\nwindow = 8192\nreorder_limit = 4096",
    ));
    assert_eq!(
        e.to_string(),
        "ctsyncd.toml:6: key 'sync.reorder_limit': sync.reorder_limit (4096) is smaller than sync.window (8192): a live peer's datagrams would be dropped"
    );
    assert_eq!(
        err(&GOOD.replace("mode = \"ftfw\"", "mode = \"ftfw\"\nsend_queue_max = 0")).to_string(),
        "ctsyncd.toml:5: key 'sync.send_queue_max': 0 is out of range 65536..=268435456"
    );
}

#[test]
fn logging_and_scheduling_keys_parse_and_are_checked() {
    let text = format!(
        "{GOOD}[daemon]\nlog_file = \"/var/log/ctsyncd.log\"\nsyslog = \"local3\"\nnice = -5\nscheduler = \"fifo\"\nscheduler_priority = 7\n"
    );
    let c = Config::parse(&text, "ctsyncd.toml").unwrap();
    assert_eq!(
        c.daemon.log_file.as_deref(),
        Some(Path::new("/var/log/ctsyncd.log"))
    );
    assert_eq!(
        c.daemon.syslog,
        Some(ctsync::config::SyslogFacility::Local3)
    );
    assert_eq!(c.daemon.nice, Some(-5));
    let sched = c.daemon.scheduler.unwrap();
    assert_eq!(sched.policy, ctsync::config::SchedPolicy::Fifo);
    assert_eq!(sched.priority, 7);
    for (bad, key, words) in [
        ("log_file = \"ctsyncd.log\"", "daemon.log_file", "absolute"),
        ("syslog = \"kern\"", "daemon.syslog", "not a facility"),
        ("nice = 20", "daemon.nice", "out of range"),
        (
            "scheduler = \"rr\"",
            "daemon.scheduler",
            "needs daemon.scheduler_priority",
        ),
        ("scheduler = \"batch\"", "daemon.scheduler", "not one of"),
        (
            "scheduler_priority = 3",
            "daemon.scheduler_priority",
            "needs daemon.scheduler",
        ),
        (
            "scheduler = \"other\"\nscheduler_priority = 3",
            "daemon.scheduler_priority",
            "not used",
        ),
        (
            "scheduler = \"rr\"\nscheduler_priority = 100",
            "daemon.scheduler_priority",
            "out of range",
        ),
    ] {
        let e = err(&format!("{GOOD}[daemon]\n{bad}\n"));
        assert_eq!(e.key(), Some(key), "{bad}: {e}");
        assert!(e.to_string().contains(words), "{bad}: {e}");
        assert!(e.line() >= 12, "{bad}: {e}");
    }
}

#[test]
fn metrics_and_doctor_keys_parse_and_are_checked() {
    let c = Config::parse(GOOD, "ctsyncd.toml").unwrap();
    assert_eq!(c.metrics.listen, None, "metrics are off by default");
    let text = format!(
        "{GOOD}[metrics]\nlisten = \"[::1]:9477\"\n[doctor]\nupstream_idle_timeout_s = 350\n"
    );
    let c = Config::parse(&text, "ctsyncd.toml").unwrap();
    assert_eq!(c.metrics.listen, Some("[::1]:9477".parse().unwrap()));
    assert_eq!(c.doctor.upstream_idle_timeout_s, Some(350));
    for (bad, key) in [
        ("[metrics]\nlisten = \"127.0.0.1\"", "metrics.listen"),
        ("[metrics]\nlisten = \"127.0.0.1:0\"", "metrics.listen"),
        (
            "[doctor]\nupstream_idle_timeout_s = 0",
            "doctor.upstream_idle_timeout_s",
        ),
    ] {
        let e = err(&format!("{GOOD}{bad}\n"));
        assert_eq!(e.key(), Some(key), "{bad}: {e}");
        assert_eq!(e.line(), 12, "{bad}: {e}");
    }
}

#[test]
fn expectations_take_off_all_or_helper_prefixes() {
    use ctsync::expect::ExpectPolicy;
    let with = |v: &str| {
        GOOD.replace(
            "mode = \"ftfw\"",
            &format!("mode = \"ftfw\"\nexpectations = {v}"),
        )
    };
    let parse = |v: &str| Config::parse(&with(v), "ctsyncd.toml").map(|c| c.sync.expectations);
    assert_eq!(
        Config::parse(GOOD, "x").unwrap().sync.expectations,
        ExpectPolicy::Off
    );
    assert_eq!(parse("\"off\"").unwrap(), ExpectPolicy::Off);
    assert_eq!(parse("\"all\"").unwrap(), ExpectPolicy::All);
    assert_eq!(
        parse("[\"ftp\", \"sip-5060\"]").unwrap(),
        ExpectPolicy::Helpers(vec!["ftp".into(), "sip-5060".into()])
    );
    for (bad, why) in [
        ("\"on\"", "expected \"off\", \"all\""),
        ("[]", "empty list"),
        ("[\"f p\"]", "is not a helper name"),
        ("[\"averyveryverylonghelper\"]", "is not a helper name"),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(
            e.contains("ctsyncd.toml:5") && e.contains("sync.expectations") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

#[test]
fn a_link_may_speak_conntrackds_protocol_alone_and_without_keys() {
    use ctsync::config::LinkProtocol;
    use ctsync::conntrackd_wire::PeerLevel;
    let link = |extra: &str| GOOD.replace("port = 3780", &format!("port = 3780\n{extra}"));
    let c = Config::parse(&link("protocol = \"conntrackd\""), "ctsyncd.toml").unwrap();
    assert_eq!(
        c.links[0].protocol,
        LinkProtocol::Conntrackd(PeerLevel::V1_4_7)
    );
    let c = Config::parse(
        &link("protocol = \"conntrackd\"\nconntrackd_version = \"1.4.6\""),
        "ctsyncd.toml",
    )
    .unwrap();
    assert_eq!(
        c.links[0].protocol,
        LinkProtocol::Conntrackd(PeerLevel::V1_4_5)
    );
    assert_eq!(
        Config::parse(GOOD, "x").unwrap().links[0].protocol,
        LinkProtocol::Ctsync
    );
    let second = "\n[[link]]\ntransport = \"udp\"\ninterface = \"sync1\"\nlocal = \"198.18.1.1\"\npeer = \"198.18.1.2\"\nport = 3781\nprotocol = \"conntrackd\"\n";
    for (text, key, why) in [
        (
            link("protocol = \"tcp\""),
            "link[0].protocol",
            "is not one of",
        ),
        (
            link("protocol = \"conntrackd\"\nnode_ids = [2]"),
            "link[0].node_ids",
            "no node ids",
        ),
        (
            link("conntrackd_version = \"1.4.7\""),
            "link[0].conntrackd_version",
            "only for a link",
        ),
        (
            link("protocol = \"conntrackd\"\nconntrackd_version = \"0.9\""),
            "link[0].conntrackd_version",
            "not a conntrackd 1.4 version",
        ),
        (
            link("protocol = \"conntrackd\"") + second,
            "link[1].protocol",
            "only one link",
        ),
        (
            link("protocol = \"conntrackd\"") + "[auth]\nkey_file = \"/etc/ctsyncd/sync.key\"\n",
            "link[0].protocol",
            "no authentication",
        ),
    ] {
        let e = err(&text).to_string();
        assert!(e.contains(key) && e.contains(why), "{key}: {e}");
    }
}
