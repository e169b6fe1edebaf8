//! conntrackd.conf read as is: every General and Sync option mapped onto
//! ctsync's keys or refused with `file:line: reason`, malformed files
//! refused the same way (never a panic), `ctsyncd convert` printing TOML
//! that parses into the same config, and every example configuration of
//! Debian's conntrackd package (found at test time) loaded or refused as
//! documented.

use ctsync::config::{Config, SchedPolicy, SyncMode, SyslogFacility, Transport};
use ctsync::conntrackd_conf::{convert, is_conntrackd, node_id_for};
use ctsync::expect::ExpectPolicy;
use ctsync::filter::Policy;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's conntrackd package puts its example configurations
/// (integration/install-deps extracts them where images drop /usr/share/doc).
const EXAMPLES: &str = "/usr/share/doc/conntrackd/examples";

/// A file using every General and Sync option conntrackd 1.4.7 has that
/// ctsync maps or accepts.
const FULL: &str = "\
General {
	Systemd on
	Nice -5
	HashSize 32768
	HashLimit 524288
	LogFile /var/log/ct-test.log
	Syslog local3
	LockFile /run/lock/ct-test.lock
	UNIX {
		Path /run/ct-test.ctl
		Backlog 20
	}
	NetlinkBufferSize 4194304
	NetlinkBufferSizeMaxGrowth 16777216
	NetlinkOverrunResync 10
	NetlinkEventsReliable on
	PollSecs 15
	EventIterationLimit 200
	Scheduler {
		Type FIFO
		Priority 50
	}
	Filter From Kernelspace {
		Protocol Accept { TCP UDP ICMP IPv6-ICMP SCTP DCCP VRRP }
		Address Ignore {
			IPv4_address 127.0.0.1
			IPv4_address 198.18.7.9/24 # host bits: conntrackd matches the network
			IPv6_address ::1
		}
		State Accept { ESTABLISHED CLOSED TIME_WAIT CLOSE_WAIT for TCP }
	}
}
Sync {
	Mode FTFW {
		ResendQueueSize 131072
		CommitTimeout 180
		PurgeTimeout 5
		ACKWindowSize 300
		DisableExternalCache off
		StartupResync on
	}
	UDP {
		IPv4_address 198.18.1.1
		IPv4_Destination_Address 198.18.1.2
		Port 3781
		Interface sync1
	}
	UDP Default {
		IPv4_address 198.18.0.1
		IPv4_Destination_Address 198.18.0.2
		Port 3780
		Interface sync0
		SndSocketBuffer 1249280
		RcvSocketBuffer 1249280
		Checksum on
	}
	Options {
		TCPWindowTracking on
		ExpectationSync {
			ftp
			sip
		}
	}
}
";

fn load(text: &str) -> Config {
    match convert(text, "conntrackd.conf") {
        Ok(c) => {
            let again = Config::parse(&c.toml, "converted.toml")
                .unwrap_or_else(|e| panic!("the converted TOML does not parse: {e}\n{}", c.toml));
            assert_eq!(
                again, c.config,
                "the TOML gives another config:\n{}",
                c.toml
            );
            c.config
        }
        Err(e) => panic!("expected to load, got: {e}"),
    }
}

fn refusal(text: &str) -> String {
    match convert(text, "conntrackd.conf") {
        Ok(c) => panic!("expected a refusal, got:\n{}", c.toml),
        Err(e) => e.to_string(),
    }
}

/// The line of `text` (1-based) that contains `needle` first.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
        + 1
}

#[test]
fn every_option_maps_onto_its_ctsync_key() {
    let c = load(FULL);
    assert_eq!(c.node_id, node_id_for("198.18.0.1".parse().unwrap()));
    assert_eq!(c.socket, Path::new("/run/ct-test.ctl"));
    assert_eq!(
        c.daemon.lock.as_deref(),
        Some(Path::new("/run/lock/ct-test.lock"))
    );
    assert_eq!(
        c.daemon.log_file.as_deref(),
        Some(Path::new("/var/log/ct-test.log"))
    );
    assert_eq!(c.daemon.syslog, Some(SyslogFacility::Local3));
    assert_eq!(c.daemon.nice, Some(-5));
    let sched = c.daemon.scheduler.expect("scheduler");
    assert_eq!((sched.policy, sched.priority), (SchedPolicy::Fifo, 50));
    assert_eq!(c.kernel.netlink_buffer, 4_194_304);
    assert_eq!(c.kernel.netlink_buffer_max, 16_777_216);
    assert_eq!(c.kernel.reconcile_interval_s, 15);
    assert!(c.kernel.tcp_window_tracking);
    assert_eq!(c.kernel.commit_timeout, Some(180));
    assert_eq!(c.sync.mode, SyncMode::Ftfw);
    assert_eq!(c.sync.purge_timeout_s, 5);
    assert_eq!(c.sync.ack_every, 300);
    assert!(!c.sync.warm_standby);
    assert_eq!(
        c.sync.expectations,
        ExpectPolicy::Helpers(vec!["ftp".into(), "sip".into()])
    );
    assert_eq!(c.sync.max_flows_per_peer, 524_288);
    // The Default link first, whatever the order in the file.
    assert_eq!(c.links.len(), 2);
    assert_eq!(c.links[0].interface, "sync0");
    assert_eq!(c.links[0].transport, Transport::Udp);
    assert_eq!(
        c.links[0].local,
        "198.18.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(c.links[0].peer, Some("198.18.0.2".parse().unwrap()));
    assert_eq!(c.links[0].port, 3780);
    assert_eq!(c.links[1].interface, "sync1");
    assert_eq!(c.links[1].port, 3781);
    let proto = c.filter.protocol.as_ref().expect("protocol set");
    assert_eq!(proto.policy, Policy::Accept);
    assert_eq!(proto.list.len(), 7);
    assert!(
        proto.list.contains(&112),
        "VRRP is protocol 112: {:?}",
        proto.list
    );
    let addr = c.filter.address.as_ref().expect("address set");
    assert_eq!(addr.policy, Policy::Ignore);
    let shown: Vec<String> = addr.list.iter().map(|a| a.to_string()).collect();
    assert!(shown.contains(&"198.18.7.0/24".to_string()), "{shown:?}");
    let states = c.filter.tcp_state.as_ref().expect("state set");
    assert_eq!(states.list.len(), 4);
    // The Pacemaker agent reads UNIX Path and LockFile from the file; the
    // TOML carries them for it.
    let hint = c.compat.conntrackd_ra_hint.as_deref().expect("hint");
    assert!(
        hint.contains("Path /run/ct-test.ctl") && hint.contains("LockFile /run/lock/ct-test.lock")
    );
}

#[test]
fn settings_without_effect_are_comments_in_the_converted_toml() {
    let c = convert(FULL, "conntrackd.conf").unwrap();
    for keyword in [
        "Systemd on",
        "HashSize 32768",
        "UNIX { Backlog 20 }",
        "NetlinkOverrunResync 10",
        "NetlinkEventsReliable on",
        "EventIterationLimit 200",
        "Filter From Kernelspace",
        "ResendQueueSize 131072",
        "StartupResync on",
        "SndSocketBuffer 1249280",
        "RcvSocketBuffer 1249280",
        "Checksum on",
    ] {
        let word = keyword.trim_start_matches("UNIX { ");
        let line = line_of(FULL, word.split(' ').next().unwrap());
        let comment = format!("# line {line}: {keyword}");
        assert!(
            c.toml.contains(&comment),
            "no comment {comment:?} in:\n{}",
            c.toml
        );
        assert!(
            c.notes.iter().any(|n| n.line == line),
            "no note for {keyword}"
        );
    }
    assert!(c.toml.contains("derived"), "the node id's comment");
}

#[test]
fn modes_and_their_options_map() {
    let base = |mode: &str| {
        FULL.replace(
        "Mode FTFW {\n\t\tResendQueueSize 131072\n\t\tCommitTimeout 180\n\t\tPurgeTimeout 5\n\t\tACKWindowSize 300\n\t\tDisableExternalCache off\n\t\tStartupResync on\n\t}",
        mode,
    )
    };
    let c = load(&base(
        "Mode ALARM {\n RefreshTime 15\n CacheTimeout 180\n CommitTimeout 90\n PurgeTimeout 7\n }",
    ));
    assert_eq!(c.sync.mode, SyncMode::Alarm);
    assert_eq!((c.sync.alarm_refresh_s, c.sync.alarm_timeout_s), (15, 180));
    assert_eq!(c.kernel.commit_timeout, Some(90));
    assert_eq!(c.sync.purge_timeout_s, 7);
    let c = load(&base("Mode NOTRACK {\n DisableInternalCache on\n DisableExternalCache on\n CommitTimeout 30\n StartupResync off\n }"));
    assert_eq!(c.sync.mode, SyncMode::Notrack);
    assert!(
        c.sync.warm_standby,
        "DisableExternalCache on is warm standby"
    );
    assert_eq!(
        c.kernel.commit_timeout, None,
        "dropped with DisableExternalCache, as conntrackd does"
    );
    let c = load(&base("Mode FTFW { CommitTimeout 0 }"));
    assert_eq!(c.kernel.commit_timeout, None, "0 is conntrackd's unset");
    let c = load(&base("Mode persistent { RefreshTime 20 CacheTimeout 60 }"));
    assert_eq!(
        c.sync.mode,
        SyncMode::Alarm,
        "persistent is ALARM's old name"
    );
    let c = load(&base("Mode nack { }"));
    assert_eq!(c.sync.mode, SyncMode::Ftfw, "nack is FTFW's old name");
    let c = load(&base(""));
    assert_eq!(
        c.sync.mode,
        SyncMode::Ftfw,
        "no Mode: conntrackd's default FTFW"
    );
    // The legacy placement of the timers directly in Sync.
    let c = load(&base("Mode ALARM { }\n RefreshTime 30\n CacheTimeout 90\n"));
    assert_eq!((c.sync.alarm_refresh_s, c.sync.alarm_timeout_s), (30, 90));
    // An ACKWindowSize above ctsync's window is lowered to it.
    let c = load(&base("Mode FTFW { ACKWindowSize 100000 }"));
    assert_eq!(c.sync.ack_every, c.sync.window);
}

#[test]
fn general_values_take_conntrackds_shorthands() {
    let c = load(
        &FULL
            .replace("LogFile /var/log/ct-test.log", "LogFile on")
            .replace("Syslog local3", "Syslog on")
            .replace("Type FIFO\n\t\tPriority 50", "Priority 0")
            .replace("\tLockFile /run/lock/ct-test.lock\n", ""),
    );
    assert_eq!(
        c.daemon.log_file.as_deref(),
        Some(Path::new("/var/log/conntrackd.log"))
    );
    assert_eq!(c.daemon.syslog, Some(SyslogFacility::Daemon));
    let s = c.daemon.scheduler.unwrap();
    assert_eq!(
        (s.policy, s.priority),
        (SchedPolicy::Rr, 1),
        "RR by default; priority 0 is no RT priority"
    );
    assert_eq!(
        c.daemon.lock.as_deref(),
        Some(Path::new("/var/lock/conntrackd.lock"))
    );
    let c = load(
        &FULL
            .replace("LogFile /var/log/ct-test.log", "LogFile off")
            .replace("Syslog local3", "Syslog no"),
    );
    assert_eq!((c.daemon.log_file, c.daemon.syslog), (None, None));
    // conntrackd ignores a NetlinkBufferSize above MaxGrowth.
    let c = load(&FULL.replace("NetlinkBufferSize 4194304", "SocketBufferSize 33554432"));
    assert_eq!(c.kernel.netlink_buffer_max, 16_777_216);
    assert!(c.kernel.netlink_buffer <= c.kernel.netlink_buffer_max);
    // A small MaxGrowth alone brings the start down with it.
    let c = load(
        &FULL
            .replace("\tNetlinkBufferSize 4194304\n", "")
            .replace("16777216", "655355"),
    );
    assert_eq!(
        (c.kernel.netlink_buffer, c.kernel.netlink_buffer_max),
        (655_355, 655_355)
    );
}

#[test]
fn multicast_links_ipv4_and_ipv6() {
    let v4 = "General { UNIX { Path /run/x.ctl } }\nSync {\n Mode NOTRACK { }\n Multicast Default {\n  IPv4_address 225.0.0.50\n  Group 3780\n  IPv4_interface 198.18.100.1\n  Interface eth2\n }\n}\n";
    let c = load(v4);
    assert_eq!(c.links[0].transport, Transport::Multicast);
    assert_eq!(c.links[0].group, Some("225.0.0.50".parse().unwrap()));
    assert_eq!(
        c.links[0].local,
        "198.18.100.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(c.node_id, node_id_for("198.18.100.1".parse().unwrap()));
    let v6 = v4
        .replace("IPv4_address 225.0.0.50", "IPv6_address ff02::1:3")
        .replace(
            "IPv4_interface 198.18.100.1",
            "IPv6_interface 2001:db8:5::1",
        );
    let c = load(&v6);
    assert_eq!(c.links[0].group, Some("ff02::1:3".parse().unwrap()));
    assert_eq!(c.node_id, node_id_for("2001:db8:5::1".parse().unwrap()));
    let udp6 = "General { UNIX { Path /run/x.ctl } }\nSync {\n UDP {\n  IPv6_address 2001:db8:5::1\n  IPv6_Destination_Address 2001:db8:5::2\n  Port 3780\n  Interface sync0\n }\n}\n";
    let c = load(udp6);
    assert_eq!(c.links[0].peer, Some("2001:db8:5::2".parse().unwrap()));
    // Two nodes with mirrored addresses get different ids.
    let other = udp6
        .replace("5::1", "5::X")
        .replace("5::2", "5::1")
        .replace("5::X", "5::2");
    assert_ne!(load(&other).node_id, c.node_id);
}

/// Every refusal: (file text, the needle on the line it must name, words of
/// the reason).
fn refusals() -> Vec<(String, &'static str, &'static str)> {
    let g = "General {\n UNIX {\n  Path /run/x.ctl\n }\n}\n";
    let udp = "UDP {\n  IPv4_address 198.18.0.1\n  IPv4_Destination_Address 198.18.0.2\n  Port 3780\n  Interface sync0\n }\n";
    let sync = |inner: &str| format!("{g}Sync {{\n {inner}\n {udp}}}\n");
    let general = |inner: &str| {
        format!("General {{\n UNIX {{\n  Path /run/x.ctl\n }}\n {inner}\n}}\nSync {{\n {udp}}}\n")
    };
    vec![
        (format!("{g}Stats {{\n LogFile on\n}}\n"), "Stats", "no statistics mode"),
        (format!("{g}Sync {{ {udp} }}\nHelper {{\n Setup on\n}}\n"), "Helper", "user-space"),
        (format!("{g}Sync {{\n TCP Default {{\n  IPv4_address 198.18.0.1\n }}\n}}\n"), "TCP", "no TCP transport"),
        (sync("Options {\n  ExpectationSync { }\n }"), "ExpectationSync", "name at least one helper"),
        (sync("Options {\n  ExpectationSync maybe\n }"), "maybe", "not on, off"),
        (general("ErrorQueueLength 128"), "ErrorQueueLength", "TCP"),
        (general("PollSecs 0"), "PollSecs", "invalid"),
        (general("StripNAT on"), "StripNAT", "removed in conntrackd 1.4.5"),
        (sync("Mode FTFW {\n  ResendBufferSize 10\n }"), "ResendBufferSize", "removed"),
        (format!("{g}Sync {{\n Multicast {{\n  McastSndSocketBuffer 1\n }}\n}}\n"), "McastSnd", "removed"),
        (general("Bogus 1"), "Bogus", "unknown keyword 'Bogus' in General"),
        (sync("Mode ALARM {\n  StartupResync on\n }"), "StartupResync", "unknown keyword 'StartupResync' in Mode ALARM"),
        (sync("Mode FTFW {\n  DisableInternalCache on\n }"), "DisableInternalCache", "in Mode FTFW"),
        (sync("Mode TURBO { }"), "TURBO", "not FTFW, NOTRACK or ALARM"),
        (general("Nice lots"), "lots", "not a number"),
        (general("HashLimit -1"), "HashLimit", "not a number"),
        (general("Syslog kern"), "kern", "not on, off or a facility"),
        (general("LockFile relative/x.lock"), "LockFile", "absolute path"),
        (general("Scheduler {\n  Type BATCH\n }"), "BATCH", "not RR or FIFO"),
        (general("Scheduler {\n  Priority 100\n }"), "Priority", "0..=99"),
        (general("Filter {\n  Address Ignore {\n   IPv4_address 300.1.1.1\n  }\n }"), "300.1.1.1", "not an IPv4 address"),
        (general("Filter {\n  Address Ignore {\n   IPv6_address 198.18.0.1\n  }\n }"), "IPv6_address 198", "not an IPv6 address"),
        (general("Filter {\n  Protocol Accept {\n   NOSUCHPROTO\n  }\n }"), "NOSUCHPROTO", "not a protocol"),
        (general("Filter {\n  Protocol Accept { }\n }"), "Protocol", "replicate nothing"),
        (general("Filter {\n  State Accept {\n   ESTABLISHED for UDP\n  }\n }"), "ESTABLISHED", "TCP only"),
        (general("Filter {\n  State Accept {\n   FLYING for TCP\n  }\n }"), "FLYING", "not a TCP state"),
        (general("Filter {\n  Protocol Accept { TCP }\n  Protocol Ignore { UDP }\n }"), "Protocol Ignore", "can't be mixed"),
        (format!("{g}Sync {{\n Mode FTFW {{ }}\n}}\n"), "Sync", "no Multicast or UDP block"),
        (format!("{g}Sync {{\n UDP {{\n  IPv4_Destination_Address 198.18.0.2\n  Port 3780\n  Interface sync0\n }}\n}}\n"), "UDP {", "needs IPv4_address"),
        (format!("{g}Sync {{\n UDP {{\n  IPv4_address 198.18.0.1\n  Port 3780\n  Interface sync0\n }}\n}}\n"), "UDP {", "Destination"),
        (format!("{g}Sync {{\n UDP {{\n  IPv4_address 198.18.0.1\n  IPv4_Destination_Address 198.18.0.2\n  Interface sync0\n }}\n}}\n"), "UDP {", "needs Port"),
        (format!("{g}Sync {{\n UDP {{\n  IPv4_address 198.18.0.1\n  IPv4_Destination_Address 198.18.0.2\n  Port 3780\n }}\n}}\n"), "UDP {", "needs Interface"),
        (format!("{g}Sync {{\n Multicast {{\n  IPv4_address 225.0.0.50\n  Group 3780\n  Interface eth2\n }}\n}}\n"), "Multicast", "IPv4_interface"),
        (format!("{g}Sync {{\n Multicast {{\n  Port 3780\n }}\n}}\n"), "Port", "Group"),
        (format!("{g}Sync {{\n UDP {{\n  Port 70000\n }}\n}}\n"), "Port", "1..=65535"),
        (format!("{g}Sync {{\n UDP {{\n  IPv4_address 198.18.0.1\n  IPv4_Destination_Address 2001:db8::2\n }}\n}}\n"), "Destination", "not an IPv4 address"),
        (format!("{g}Sync {{\n UDP Default {{\n }}\n UDP Default {{ Port 3780 }}\n}}\n"), "Default { Port", "second Default"),
        (format!("General {{\n HashSize 1\n}}\nSync {{\n {udp}}}\n"), "General", "UNIX { Path"),
        (format!("General {{\n UNIX {{\n  Path {}\n }}\n}}\nSync {{\n {udp}}}\n", "/x".repeat(60)), "Path", "107"),
    ]
}

#[test]
fn every_refused_option_names_the_file_its_line_and_a_reason() {
    for (text, needle, reason) in refusals() {
        let e = refusal(&text);
        let line = line_of(&text, needle);
        assert!(
            e.starts_with(&format!("conntrackd.conf:{line}: ")),
            "{needle:?} is on line {line}, the error says: {e}\n{text}"
        );
        assert!(e.contains(reason), "{e:?} should say {reason:?}");
    }
}

#[test]
fn a_value_ctsync_refuses_names_the_conntrackd_keyword_and_line() {
    let text = FULL.replace("PurgeTimeout 5", "PurgeTimeout 99999999999");
    let e = refusal(&text);
    let line = line_of(&text, "PurgeTimeout");
    assert!(
        e.starts_with(&format!(
            "conntrackd.conf:{line}: PurgeTimeout 99999999999:"
        )),
        "{e}"
    );
    assert!(e.contains("sync.purge_timeout_s"), "{e}");
    let text = FULL.replace("Nice -5", "Nice -40");
    let e = refusal(&text);
    assert!(
        e.starts_with(&format!(
            "conntrackd.conf:{}: Nice -40:",
            line_of(&text, "Nice")
        )),
        "{e}"
    );
    let text = FULL
        .replace("Port 3781", "Port 3780")
        .replace("Interface sync1", "Interface sync0")
        .replace("IPv4_address 198.18.1.1", "IPv4_address 198.18.0.1");
    let e = refusal(&text);
    assert!(e.contains("duplicates an earlier link"), "{e}");
}

#[test]
fn malformed_files_are_refused_with_their_line() {
    let cases: [(&str, usize, &str); 7] = [
        ("Sync {\n Mode FTFW {\n", 2, "is not closed"),
        (
            "General {\n UNIX {\n  Path /run/x.ctl\n }\n",
            4,
            "'General {' opened on line 1 is not closed",
        ),
        ("General {\n}\n}\n", 3, "outside a section"),
        ("General {\n HashSize\n}\n", 3, "a number after HashSize"),
        ("General {\n HashSize {\n}\n", 2, "a number after HashSize"),
        ("General {\n}\nFoo {\n}\n", 3, "unknown section 'Foo'"),
        ("General {\n LockFile /run/a\"b\n}\nSync { }\n", 2, "quotes"),
    ];
    for (text, line, reason) in cases {
        let e = refusal(text);
        assert!(
            e.starts_with(&format!("conntrackd.conf:{line}: ")),
            "line {line}: {e}"
        );
        assert!(e.contains(reason), "{e:?} should say {reason:?}");
    }
}

#[test]
fn config_load_recognises_a_conntrackd_file_by_content() {
    let dir = std::env::temp_dir().join(format!("cts-conf-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // No .conf name needed: the content decides.
    let path = dir.join("any-name");
    std::fs::write(&path, FULL).unwrap();
    let loaded = Config::load(&path).expect("loads");
    assert_eq!(loaded, load(FULL));
    std::fs::write(&path, FULL.replace("Nice -5", "Nice -40")).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:3: Nice -40", path.display())),
        "{e}"
    );
    // And a TOML file is still TOML.
    let toml = convert(FULL, "x").unwrap().toml;
    assert!(!is_conntrackd(&toml));
    std::fs::write(&path, &toml).unwrap();
    assert_eq!(Config::load(&path).unwrap(), loaded);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ctsyncd_convert_prints_toml_that_parses_into_the_same_config() {
    let dir = std::env::temp_dir().join(format!("cts-conf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("conntrackd.conf");
    std::fs::write(&path, FULL).unwrap();
    let bin = env!("CARGO_BIN_EXE_ctsyncd");
    let out = Command::new(bin)
        .arg("convert")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        Config::parse(&toml, "out.toml").unwrap(),
        Config::load(&path).unwrap()
    );
    // A refused file: exit 1, file:line: reason on stderr, nothing on stdout.
    std::fs::write(
        &path,
        FULL.replace("TCPWindowTracking on", "ExpectationSync maybe"),
    )
    .unwrap();
    let out = Command::new(bin)
        .arg("convert")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = line_of(FULL, "TCPWindowTracking");
    assert!(
        stderr.contains(&format!(
            "{}:{line}: ExpectationSync: 'maybe' is not on, off",
            path.display()
        )),
        "{stderr}"
    );
    // A TOML file is not something to convert.
    let toml_path = dir.join("ctsyncd.toml");
    std::fs::write(&toml_path, &toml).unwrap();
    let out = Command::new(bin)
        .arg("convert")
        .arg(&toml_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a conntrackd.conf"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every `conntrackd.conf*` under the package's examples directory.
fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("conntrackd.conf"))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new(EXAMPLES), &mut out);
    out.sort();
    out
}

#[test]
fn every_debian_example_loads_and_converts_or_is_refused_as_documented() {
    let files = example_files();
    for needed in ["sync/ftfw", "sync/notrack", "sync/alarm", "stats"] {
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(Path::new(EXAMPLES).join(needed))),
            "{EXAMPLES}/{needed}/conntrackd.conf is missing (integration/install-deps installs \
             conntrackd and extracts its examples): found {files:?}"
        );
    }
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(is_conntrackd(&text), "{} not recognised", f.display());
        let origin = f.display().to_string();
        let in_stats = f.starts_with(Path::new(EXAMPLES).join("stats"));
        match convert(&text, &origin) {
            Ok(c) if !in_stats => {
                let again = Config::parse(&c.toml, "converted.toml").unwrap();
                assert_eq!(again, c.config, "{origin}");
                assert_eq!(Config::load(f).unwrap(), c.config, "{origin}");
                let mode = f
                    .parent()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str())
                    .unwrap_or("");
                let want = match mode {
                    "ftfw" => SyncMode::Ftfw,
                    "notrack" => SyncMode::Notrack,
                    "alarm" => SyncMode::Alarm,
                    other => panic!("an example of an unknown kind: {other} ({origin})"),
                };
                assert_eq!(c.config.sync.mode, want, "{origin}");
                assert_eq!(c.config.links[0].interface, "eth2", "{origin}");
            }
            Ok(_) => panic!("{origin}: the Stats example must be refused"),
            Err(e) => {
                let e = e.to_string();
                assert!(in_stats, "{origin} should load: {e}");
                let line = line_of(&text, "Stats {");
                assert!(
                    e.starts_with(&format!("{origin}:{line}: the Stats section is refused")),
                    "{e}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes: a config or an error, never a panic.
    #[test]
    fn random_text_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = convert(&text, "fuzz.conf");
    }

    /// A valid file cut anywhere, or with a token dropped, or with a word
    /// replaced: a config or an error with a line inside the file.
    #[test]
    fn damaged_files_fail_with_a_line_in_the_file(cut in 0usize..2000, drop in 0usize..400, junk in "[A-Za-z0-9_./:{}-]{1,12}") {
        let mut text: String = FULL.chars().take(cut.min(FULL.len())).collect();
        let words: Vec<&str> = FULL.split_whitespace().collect();
        let mut w2 = words.clone();
        if drop < w2.len() { w2[drop] = junk.as_str(); }
        let replaced = w2.join("\n");
        let mut w3 = words;
        if drop < w3.len() { w3.remove(drop); }
        let dropped = w3.join(" \n");
        for t in [&mut text, &mut replaced.clone(), &mut dropped.clone()] {
            if let Err(e) = convert(t, "d.conf") {
                let n = t.lines().count().max(1);
                prop_assert!(e.line() >= 1 && e.line() <= n, "line {} of {}: {}", e.line(), n, e);
            }
        }
    }
}
