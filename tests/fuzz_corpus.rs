//! The fuzz corpora on stable Rust: every file in `fuzz/corpus/<target>/`
//! and `fuzz/artifacts/<target>/` goes through the same
//! `ctsync::fuzz_entry` function as the cargo-fuzz target of that name
//! (which needs nightly; this does not). A crash input kept in
//! `fuzz/artifacts/` stays a regression test for good.
//!
//! The test fails on an empty or missing corpus, and on a directory that
//! names no known target (a new target must be listed in `TARGETS`).
//!
//! `write_seeds` (ignored; run it by name) writes the seed inputs made
//! with the project's own encoders into the corpora, see fuzz/README.md.

use std::path::{Path, PathBuf};

/// A target's entry point: bytes in, a panic for a bug.
type Entry = fn(&[u8]);

/// Every fuzz target and its entry point.
const TARGETS: &[(&str, Entry)] = &[
    ("wire_datagram", ctsync::fuzz_entry::wire_datagram),
    ("ctnetlink", ctsync::fuzz_entry::ctnetlink),
    ("ctnetlink_expect", ctsync::fuzz_entry::ctnetlink_expect),
    ("config", ctsync::fuzz_entry::config),
    ("control_request", ctsync::fuzz_entry::control_request),
    ("cli_args", ctsync::fuzz_entry::cli_args),
    ("auth_open", ctsync::fuzz_entry::auth_open),
    ("key_file", ctsync::fuzz_entry::key_file),
    ("conntrackd_conf", ctsync::fuzz_entry::conntrackd_conf),
    (
        "conntrackd_datagram",
        ctsync::fuzz_entry::conntrackd_datagram,
    ),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The entries of `dir`, sorted; none when it does not exist.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    v.sort();
    v
}

fn target_fn(name: &str) -> Option<Entry> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Run every file of `dir` through `f`; the paths of the inputs that
/// panicked, and how many ran.
fn replay(dir: &Path, f: Entry) -> (Vec<String>, usize) {
    let mut failed = Vec::new();
    let mut ran = 0;
    for path in entries(dir) {
        if !path.is_file() {
            failed.push(format!("{} is not a file", path.display()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        ran += 1;
        if std::panic::catch_unwind(|| f(&bytes)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    (failed, ran)
}

#[test]
fn every_corpus_input_runs_clean() {
    let corpus = fuzz_dir().join("corpus");
    let artifacts = fuzz_dir().join("artifacts");
    let mut problems = Vec::new();
    // No directory may name an unknown target: its inputs would never run.
    for root in [&corpus, &artifacts] {
        for dir in entries(root) {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !dir.is_dir() || target_fn(name).is_none() {
                problems.push(format!(
                    "{} is not the directory of a known target (add it to TARGETS)",
                    dir.display()
                ));
            }
        }
    }
    for (name, f) in TARGETS {
        let dir = corpus.join(name);
        if !dir.is_dir() {
            problems.push(format!("missing corpus {}", dir.display()));
            continue;
        }
        let (failed, ran) = replay(&dir, *f);
        if ran == 0 {
            problems.push(format!("empty corpus {}", dir.display()));
        }
        problems.extend(failed.into_iter().map(|p| format!("panicked: {p}")));
        let (failed, _) = replay(&artifacts.join(name), *f);
        problems.extend(failed.into_iter().map(|p| format!("panicked: {p}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// Seeds: valid inputs made with the project's encoders. Run with
// `cargo test --release --test fuzz_corpus -- --ignored write_seeds`;
// the files are named `seed-*` (a later `cargo fuzz cmin` keeps those that
// add coverage, under content-hash names).

mod seeds {
    use ctsync::control::{CacheSel, Envelope, Request, StatsSection};
    use ctsync::expect::{ExpectNat, Expectation};
    use ctsync::flow::{proto, status, Flow, ProtoState, Tuple, L4};
    use ctsync::kernel::{codec, expect_codec};
    use ctsync::wire::{self, flags, Header, Message, RangeSum, WireFlow, WireKey};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("a literal address")
    }

    fn tuple(src: &str, dst: &str, p: u8, l4: L4) -> Tuple {
        Tuple {
            src: ip(src),
            dst: ip(dst),
            proto: p,
            l4,
        }
    }

    /// Flows of every shape the codecs know.
    pub fn flows() -> Vec<Flow> {
        let mut tcp = Flow::new(tuple(
            "198.18.0.1",
            "198.18.0.2",
            proto::TCP,
            L4::Ports {
                src: 40000,
                dst: 80,
            },
        ));
        tcp.status = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;
        tcp.timeout = 120;
        tcp.state = ProtoState::Tcp {
            state: 3,
            wscale_orig: 7,
            wscale_reply: 9,
            flags_orig: 0x03,
            flags_reply: 0x23,
        };
        let mut snat = tcp.clone();
        snat.status |= status::SRC_NAT | status::SRC_NAT_DONE;
        snat.reply = tuple(
            "198.18.0.2",
            "198.19.0.1",
            proto::TCP,
            L4::Ports { src: 80, dst: 5000 },
        );
        let mut dnat = tcp.clone();
        dnat.status |= status::DST_NAT | status::DST_NAT_DONE;
        dnat.reply = tuple(
            "198.18.9.9",
            "198.18.0.1",
            proto::TCP,
            L4::Ports {
                src: 8080,
                dst: 40000,
            },
        );
        let mut udp6 = Flow::new(tuple(
            "2001:db8::1",
            "2001:db8::2",
            proto::UDP,
            L4::Ports { src: 53, dst: 5353 },
        ));
        udp6.timeout = 30;
        udp6.zone = 7;
        udp6.mark = 0x42;
        let mut icmp = Flow::new(tuple(
            "198.18.0.1",
            "198.18.0.2",
            proto::ICMP,
            L4::Icmp {
                kind: 8,
                code: 0,
                id: 77,
            },
        ));
        icmp.timeout = 30;
        let icmp6 = Flow::new(tuple(
            "2001:db8::1",
            "2001:db8::2",
            proto::ICMPV6,
            L4::Icmp {
                kind: 128,
                code: 0,
                id: 9,
            },
        ));
        let mut sctp = Flow::new(tuple(
            "198.18.0.1",
            "198.18.0.2",
            proto::SCTP,
            L4::Ports {
                src: 5000,
                dst: 36412,
            },
        ));
        sctp.state = ProtoState::Sctp {
            state: 3,
            vtag_orig: 0x1234_5678,
            vtag_reply: 0x9abc_def0,
        };
        let mut dccp = Flow::new(tuple(
            "198.18.0.1",
            "198.18.0.2",
            proto::DCCP,
            L4::Ports { src: 1, dst: 2 },
        ));
        dccp.state = ProtoState::Dccp { state: 4, role: 1 };
        let gre = Flow::new(tuple(
            "198.18.0.1",
            "198.18.0.2",
            proto::GRE,
            L4::Ports {
                src: 0x10,
                dst: 0x20,
            },
        ));
        let mut labelled = tcp.clone();
        labelled.zone = 300;
        labelled.labels = Some(vec![0xff; 16]);
        labelled.helper = Some("ftp".into());
        labelled.timeout = 432_000;
        labelled.status |= status::FIXED_TIMEOUT;
        let other = Flow::new(tuple("198.18.0.1", "198.18.0.2", 112, L4::None));
        vec![
            tcp, snat, dnat, udp6, icmp, icmp6, sctp, dccp, gre, labelled, other,
        ]
    }

    fn header(reliable: bool) -> Header {
        Header {
            flags: if reliable { flags::RELIABLE } else { 0 },
            node_id: 1,
            epoch: 1_700_000_000_000,
            seq: 42,
            body_len: 0,
            tag_len: 0,
        }
    }

    fn sums() -> Vec<RangeSum> {
        vec![
            RangeSum {
                range: 0,
                count: 3,
                hash: 0x0123_4567_89ab_cdef,
            },
            RangeSum {
                range: 255,
                count: 70_000,
                hash: u64::MAX,
            },
        ]
    }

    /// Datagrams: each flow as an upsert and a delete, every other message
    /// alone, and mixed batches.
    pub fn datagrams() -> Vec<Vec<u8>> {
        let flows = flows();
        let mut out = Vec::new();
        for f in &flows {
            out.push(wire::encode_datagram(
                &header(true),
                &[Message::Upsert(WireFlow::from(f))],
            ));
            out.push(wire::encode_datagram(
                &header(true),
                &[Message::Delete(WireKey::from(&f.key()))],
            ));
        }
        let control = [
            Message::BulkBegin { id: 7 },
            Message::BulkEnd {
                id: 7,
                count: 100_000,
            },
            Message::Ack {
                node: 2,
                epoch: 5,
                upto: 1000,
            },
            Message::Nack {
                node: 2,
                epoch: 5,
                from: 10,
                to: 300,
            },
            Message::ResyncRequest { node: None },
            Message::ResyncRequest { node: Some(2) },
            Message::Resume { from: 65_536 },
            Message::Alive,
            Message::Digest {
                count: 12,
                hash: 0xdead_beef,
            },
            Message::RangeDigest { sums: sums() },
            Message::RangeRequest {
                node: 2,
                ranges: vec![0, 17, 255],
            },
            Message::RangeBegin {
                id: 9,
                ranges: vec![1, 2, 3],
            },
            Message::RangeEnd {
                id: 9,
                sums: sums(),
            },
            Message::BulkEndSum {
                id: 7,
                count: 3,
                hash: 99,
            },
        ];
        for m in &control {
            out.push(wire::encode_datagram(
                &header(m.is_data()),
                std::slice::from_ref(m),
            ));
        }
        out.push(wire::encode_datagram(&header(false), &[]));
        let batch: Vec<Message> = flows
            .iter()
            .map(|f| Message::Upsert(WireFlow::from(f)))
            .chain(
                flows
                    .iter()
                    .map(|f| Message::Delete(WireKey::from(&f.key()))),
            )
            .chain([Message::BulkEnd { id: 1, count: 11 }])
            .collect();
        out.push(wire::encode_datagram(&header(true), &batch));
        out
    }

    /// A NEW event captured from kernel 6.18 (the fixture of
    /// `kernel::codec`'s tests): TCP with DNAT and SNAT, zone, mark,
    /// labels, and attributes ctsync ignores.
    #[rustfmt::skip]
    const KERNEL_NEW_EVENT: [u8; 260] = [0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x80, 0x5d, 0xce, 0xa1, 0x02, 0x00, 0x00, 0x00, 0x34, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00, 0x01, 0x00, 0xc6, 0x12, 0x01, 0x01, 0x08, 0x00, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x02, 0x1c, 0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00, 0x03, 0xe9, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x00, 0x50, 0x00, 0x00, 0x34, 0x00, 0x02, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00, 0x01, 0x00, 0xc6, 0x12, 0x09, 0x09, 0x08, 0x00, 0x02, 0x00, 0xc6, 0x13, 0x00, 0x01, 0x1c, 0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x07, 0xd1, 0x00, 0x00, 0x06, 0x00, 0x12, 0x00, 0x00, 0x07, 0x00, 0x00, 0x08, 0x00, 0x0c, 0x00, 0x17, 0x7e, 0x4c, 0xc7, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0xbe, 0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x01, 0x2c, 0x30, 0x00, 0x04, 0x80, 0x2c, 0x00, 0x01, 0x80, 0x05, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x02, 0x00, 0x07, 0x00, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x09, 0x00, 0x00, 0x00, 0x06, 0x00, 0x04, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x06, 0x00, 0x05, 0x00, 0x2b, 0x00, 0x00, 0x00, 0x14, 0x00, 0x16, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x1c, 0x00, 0x18, 0x80, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x42];

    /// A netlink header (host byte order) with `payload`.
    fn nlmsg(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&1u32.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Netlink datagrams as the kernel's conntrack socket delivers them:
    /// the captured event, every flow as a create (a NEW event's layout),
    /// update and delete, an error, a dump's end, and several in one.
    pub fn netlink() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if cfg!(target_endian = "little") {
            out.push(KERNEL_NEW_EVENT.to_vec());
        }
        let mut all = Vec::new();
        for f in flows() {
            let mut b = Vec::new();
            codec::encode_create(&mut b, &f, 1, &codec::CreateOptions::default());
            out.push(b.clone());
            all.extend_from_slice(&b);
            let mut b = Vec::new();
            codec::encode_update(&mut b, &f, 1);
            out.push(b);
            let mut b = Vec::new();
            codec::encode_delete(&mut b, &f.key(), 1);
            out.push(b.clone());
            all.extend_from_slice(&b);
        }
        // NLMSG_ERROR with EEXIST, an ACK, and NLMSG_DONE with 0 and EINTR.
        let mut err = (-17i32).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0; 16]);
        out.push(nlmsg(2, 0, &err));
        out.push(nlmsg(2, 0, &[0; 20]));
        out.push(nlmsg(3, 2, &0i32.to_ne_bytes()));
        out.push(nlmsg(3, 2, &(-4i32).to_ne_bytes()));
        all.extend(nlmsg(3, 2, &0i32.to_ne_bytes()));
        out.push(all);
        out
    }

    /// Expectations of every shape the expectation codec knows: FTP over
    /// IPv4, the same NATed with an expectfn, a permanent one in a zone,
    /// and a SIP media one over IPv6 (class 1, so with its helper name).
    pub fn expectations() -> Vec<Expectation> {
        let ftp = Expectation {
            zone: 0,
            master: tuple(
                "198.18.0.1",
                "198.18.0.2",
                proto::TCP,
                L4::Ports {
                    src: 40000,
                    dst: 21,
                },
            ),
            tuple: tuple(
                "198.18.0.2",
                "198.18.0.1",
                proto::TCP,
                L4::Ports { src: 0, dst: 50022 },
            ),
            mask: tuple(
                "255.255.255.255",
                "255.255.255.255",
                proto::TCP,
                L4::Ports {
                    src: 0,
                    dst: 0xffff,
                },
            ),
            timeout: 300,
            flags: 0,
            class: 0,
            helper: Some("ftp".into()),
            nat: None,
            expectfn: None,
        };
        let mut natted = ftp.clone();
        natted.nat = Some(ExpectNat {
            dir: 1,
            tuple: tuple(
                "0.0.0.0",
                "0.0.0.0",
                proto::TCP,
                L4::Ports { src: 50022, dst: 0 },
            ),
        });
        natted.expectfn = Some("nat-follow-master".into());
        let mut permanent = ftp.clone();
        permanent.zone = 4;
        permanent.flags = ctsync::expect::flags::PERMANENT;
        let sip = Expectation {
            zone: 0,
            master: tuple(
                "2001:db8::1",
                "2001:db8::2",
                proto::UDP,
                L4::Ports {
                    src: 5060,
                    dst: 5060,
                },
            ),
            tuple: tuple(
                "2001:db8::2",
                "2001:db8::1",
                proto::UDP,
                L4::Ports { src: 0, dst: 16384 },
            ),
            mask: tuple(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                proto::UDP,
                L4::Ports {
                    src: 0,
                    dst: 0xffff,
                },
            ),
            timeout: 180,
            flags: 0,
            class: 1,
            helper: Some("sip".into()),
            nat: None,
            expectfn: None,
        };
        vec![ftp, natted, permanent, sip]
    }

    /// Netlink datagrams as the kernel's expectation socket delivers them:
    /// every expectation as a NEW event's layout (the create) and as a
    /// DESTROY (the same attributes under IPCTNL_MSG_EXP_DELETE), a dump's
    /// end, and all of them in one datagram.
    pub fn expect_netlink() -> Vec<Vec<u8>> {
        const EXP_DELETE: u16 = 0x0202;
        let mut out = Vec::new();
        let mut all = Vec::new();
        for e in expectations() {
            let mut b = Vec::new();
            expect_codec::encode_expect_create(&mut b, &e, 1);
            out.push(b.clone());
            all.extend_from_slice(&b);
            b[4..6].copy_from_slice(&EXP_DELETE.to_ne_bytes());
            b[6..8].copy_from_slice(&0u16.to_ne_bytes());
            out.push(b.clone());
            all.extend_from_slice(&b);
        }
        all.extend(nlmsg(3, 2, &0i32.to_ne_bytes()));
        out.push(all);
        out
    }

    /// Config texts: the shipped example and variants that set every key.
    pub fn configs() -> Vec<Vec<u8>> {
        let example = include_str!("../conf/ctsyncd.toml");
        let full = r#"node_id = 4294967295
socket = "/run/ctsyncd/ctsyncd.sock"
socket_group = "ctsync"
[sync]
mode = "ftfw"
window = 1048576
reorder_limit = 1048576
ack_every = 64
ack_delay_ms = 20
keepalive_ms = 1000
rto_ms = 200
peer_timeout_ms = 5000
mtu = 9000
purge_timeout_s = 60
digest_interval_ms = 5000
batch_delay_ms = 2
warm_standby = true
warm_timeout_s = 1800
[[link]]
transport = "udp"
interface = "sync0"
local = "198.18.0.1"
peer = "198.18.0.2"
port = 3780
node_ids = [2, 3]
[[link]]
transport = "multicast"
interface = "sync1"
local = "198.19.0.1"
group = "225.0.0.51"
port = 3781
[kernel]
netlink_buffer = 8388608
netlink_buffer_max = 67108864
tcp_window_tracking = false
commit_timeout = 180
enable_events = true
reconcile_interval_s = 60
[daemon]
pid_file = "/run/ctsyncd/ctsyncd.pid"
lock = "/run/ctsyncd/ctsyncd.lock"
log_level = "debug"
[filter]
sync_addresses = "accept"
protocol = { policy = "accept", list = ["tcp", "udp", "sctp", "dccp", "icmp", "icmpv6", "gre", "47"] }
address = { policy = "ignore", list = ["127.0.0.0/8", "::1", "198.18.5.0/24"] }
tcp_state = { policy = "accept", list = ["ESTABLISHED", "CLOSE", "TIME_WAIT", "CLOSE_WAIT"] }
[compat]
conntrackd_ra_hint = """
UNIX {
	Path /run/ctsyncd/ctsyncd.sock
}
LockFile /run/ctsyncd/ctsyncd.lock
"""
"#;
        let alarm_v6 = r#"node_id = 2
[sync]
mode = "alarm"
alarm_refresh_s = 10
alarm_timeout_s = 30
mtu = 1280
[[link]]
transport = "multicast"
interface = "eth1"
local = "2001:db8::1"
group = "ff02::1:3"
port = 3780
[filter.protocol]
policy = "ignore"
list = ["udp"]
[filter.tcp_state]
policy = "ignore"
list = ["SYN_SENT", "NONE"]
"#;
        let notrack = "node_id = 3\n[sync]\nmode = \"notrack\"\n[[link]]\ntransport = \"udp\"\n\
                       interface = \"sync0\"\nlocal = \"::1\"\npeer = \"::2\"\nport = 1\n";
        // Refused ones: errors name a line and a key.
        let bad_value = "node_id = 0\n[[link]]\ntransport = \"udp\"\ninterface = \"x\"\n\
                         local = \"198.18.0.1\"\npeer = \"198.18.0.2\"\nport = 1\n";
        let unknown_key = "node_id = 1\nnodeid = 2\n";
        [example, full, alarm_v6, notrack, bad_value, unknown_key]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect()
    }

    /// Control requests: every request in JSON (both `json` values, as the
    /// client sends them) and every native code conntrackd defines.
    pub fn requests() -> Vec<Vec<u8>> {
        let requests = [
            Request::CommitPeer { node_id: 3 },
            Request::Commit,
            Request::FlushCaches(CacheSel::All),
            Request::FlushCaches(CacheSel::Internal),
            Request::FlushCaches(CacheSel::External),
            Request::FlushKernel,
            Request::DumpInternal,
            Request::DumpExternal,
            Request::Kill,
            Request::Stats(StatsSection::General),
            Request::Stats(StatsSection::Network),
            Request::Stats(StatsSection::Cache),
            Request::Stats(StatsSection::Runtime),
            Request::Stats(StatsSection::Link),
            Request::Stats(StatsSection::Rsqueue),
            Request::Stats(StatsSection::Queue),
            Request::Stats(StatsSection::Process),
            Request::ResyncFromKernel,
            Request::RequestResync,
            Request::SendBulk,
            Request::ResetTimers,
        ];
        let mut out = Vec::new();
        for (i, request) in requests.into_iter().enumerate() {
            let env = Envelope {
                request,
                json: i % 2 == 0,
            };
            let mut line = serde_json::to_vec(&env).expect("a request encodes");
            line.push(b'\n');
            out.push(line);
        }
        out.push(b"{\"request\":\"DumpInternal\"}".to_vec());
        out.extend((0..=48i32).map(|c| c.to_ne_bytes().to_vec()));
        out
    }

    /// Command lines, arguments separated by NUL.
    /// Plain datagrams (the round trip) and the same sealed with the
    /// fuzz key under a few packet numbers (the opening path).
    pub fn sealed() -> Vec<Vec<u8>> {
        use ctsync::auth::{Guard, KeyRing};
        use ctsync::fuzz_entry::{FUZZ_CLUSTER, FUZZ_KEY};
        let plain: Vec<Vec<u8>> = datagrams().into_iter().step_by(7).collect();
        let mut gate = Guard::new(KeyRing::single(1, &FUZZ_KEY), FUZZ_CLUSTER, 4, 9);
        let mut out = plain.clone();
        for p in &plain {
            out.push(gate.seal(p).expect("seal"));
        }
        out
    }

    /// conntrackd.conf files written for ctsync (not copied from
    /// conntrack-tools): FTFW over multicast with a filter, NOTRACK over
    /// IPv6 UDP, ALARM with the General options; all convert.
    pub fn conntrackd_confs() -> Vec<Vec<u8>> {
        let ftfw = "\
Sync {
\tMode FTFW {
\t\tResendQueueSize 131072
\t\tPurgeTimeout 60
\t\tACKWindowSize 300
\t\tDisableExternalCache Off
\t}
\tMulticast Default {
\t\tIPv4_address 225.0.0.50
\t\tGroup 3780
\t\tIPv4_interface 198.18.100.100
\t\tInterface eth2
\t\tSndSocketBuffer 1249280
\t\tRcvSocketBuffer 1249280
\t\tChecksum on
\t}
}
General {
\tHashSize 32768
\tHashLimit 131072
\tLogFile on
\tSyslog on
\tLockFile /var/lock/conntrack.lock
\tUNIX {
\t\tPath /var/run/conntrackd.ctl
\t}
\tNetlinkBufferSize 2097152
\tNetlinkBufferSizeMaxGrowth 8388608
\tFilter From Userspace {
\t\tProtocol Accept {
\t\t\tTCP
\t\t\tSCTP
\t\t}
\t\tAddress Ignore {
\t\t\tIPv4_address 127.0.0.1
\t\t\tIPv4_address 198.18.0.0/24
\t\t\tIPv6_address ::1
\t\t}
\t\tState Accept {
\t\t\tESTABLISHED CLOSED TIME_WAIT CLOSE_WAIT for TCP
\t\t}
\t}
}
";
        let notrack = "\
Sync {
\tMode NOTRACK {
\t\tDisableInternalCache on
\t}
\tUDP Default {
\t\tIPv6_address 2001:db8::1
\t\tIPv6_Destination_Address 2001:db8::2
\t\tPort 3781
\t\tInterface sync0
\t}
}
General {
\tUNIX { Path /run/ctsyncd/ctsyncd.sock }
\tNetlinkOverrunResync on
\tNetlinkEventsReliable off
}
";
        let alarm = "\
# comments and an ALARM pair over UDP
Sync {
\tMode ALARM {
\t\tRefreshTime 15
\t\tCacheTimeout 180
\t}
\tUDP {
\t\tIPv4_address 198.18.1.1
\t\tIPv4_Destination_Address 198.18.1.2
\t\tPort 3780
\t\tInterface eth3
\t}
}
General {
\tNice -20
\tScheduler {
\t\tType FIFO
\t\tPriority 50
\t}
\tUNIX {
\t\tPath /run/conntrackd.ctl
\t}
\tLogFile /var/log/ctsyncd/ctsyncd.log
\tSyslog local4
}
";
        [ftfw, notrack, alarm]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect()
    }

    /// conntrackd's wire as our conntrackd link sends it: a NOTRACK node's
    /// data (every seed flow, new, then updated, then gone) and an FTFW
    /// node's hello and alive messages.
    pub fn conntrackd_datagrams() -> Vec<Vec<u8>> {
        use ctsync::conntrackd_wire::{CdConfig, CdMode, CdNode};
        let mut out = Vec::new();
        for mode in [CdMode::Notrack, CdMode::Ftfw] {
            let cfg = CdConfig {
                mode,
                ..CdConfig::default()
            };
            let mut node = CdNode::new(cfg, 1_700_000_000, 0);
            out.extend(node.poll_transmit(0));
            for f in flows() {
                node.local_flow(f, 10);
            }
            out.extend(node.poll_transmit(10));
            for mut f in flows() {
                f.mark ^= 1;
                node.local_flow(f, 20);
            }
            out.extend(node.poll_transmit(20));
            for f in flows() {
                node.local_flow_gone(&f.key(), 30);
            }
            out.extend(node.poll_transmit(30));
            out.extend(node.poll_transmit(5_000));
        }
        out
    }

    /// Key files: one key, several with a `send` mark, comments, and the
    /// mistakes the parser names.
    pub fn key_files() -> Vec<Vec<u8>> {
        let k = |b: u8| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode([b; 32])
        };
        [
            format!("1 {}\n", k(1)),
            format!("# keys\n1 {}\n2 {} send # new\n", k(1), k(2)),
            format!("255 {} send\n", k(3)),
            format!("0 {}\n", k(1)),
            format!("1 {}\n1 {}\n", k(1), k(2)),
            "1 c2hvcnQ=\n".to_string(),
            format!("1 {} sned\n", k(1)),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect()
    }

    pub fn command_lines() -> Vec<Vec<u8>> {
        let lines: &[&[&str]] = &[
            &[],
            &["-d"],
            &["-C", "/etc/ctsyncd/ctsyncd.toml", "-d"],
            &["-c"],
            &["-c", "ct"],
            &["-c", "expect"],
            &["-i"],
            &["-i", "--json"],
            &["-e", "ct"],
            &["-f"],
            &["-f", "internal"],
            &["-f", "ext"],
            &["-F"],
            &["-R"],
            &["-k"],
            &["-s"],
            &["-s", "--json"],
            &["-s", "cache"],
            &["-s", "rs"],
            &["-s", "expect"],
            &["-n"],
            &["-B"],
            &["-t"],
            &["-v"],
            &["-h"],
            &["-x"],
            &["--help"],
            &["--version"],
            &["-kill"],
            &["-i", "-e"],
            &["-d", "-k"],
            &["status"],
            &["status", "-C", "/tmp/x.toml", "--json"],
            &["commit"],
            &["commit", "3"],
            &["dump", "external", "--json"],
            &["flush", "all"],
            &["stats", "queue"],
            &["resync"],
            &["bulk"],
            &["flush-kernel"],
            &["kill"],
            &["reload-kernel"],
        ];
        lines.iter().map(|l| l.join("\0").into_bytes()).collect()
    }
}

#[test]
#[ignore = "writes the seed corpora; run by name"]
fn write_seeds() {
    let sets: [(&str, Vec<Vec<u8>>); 10] = [
        ("wire_datagram", seeds::datagrams()),
        ("ctnetlink", seeds::netlink()),
        ("ctnetlink_expect", seeds::expect_netlink()),
        ("config", seeds::configs()),
        ("control_request", seeds::requests()),
        ("cli_args", seeds::command_lines()),
        ("auth_open", seeds::sealed()),
        ("key_file", seeds::key_files()),
        ("conntrackd_conf", seeds::conntrackd_confs()),
        ("conntrackd_datagram", seeds::conntrackd_datagrams()),
    ];
    for (name, inputs) in sets {
        let f = target_fn(name).expect("a listed target");
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (i, bytes) in inputs.iter().enumerate() {
            f(bytes);
            std::fs::write(dir.join(format!("seed-{i:03}")), bytes).expect("seed written");
        }
    }
}

/// The seeds are what they claim: the datagrams, kernel messages, configs
/// and requests decode (so the fuzzers start from the accepting paths).
#[test]
fn seeds_are_valid_inputs() {
    for d in seeds::datagrams() {
        assert!(ctsync::wire::decode_datagram(&d).is_ok());
    }
    for n in seeds::netlink() {
        for m in ctsync::kernel::socket::messages(&n) {
            let m = m.expect("a framed message");
            if m.nfnl_type().0 == ctsync::kernel::codec::NFNL_SUBSYS_CTNETLINK {
                assert!(ctsync::kernel::codec::decode_flow(m.payload).is_ok());
            }
        }
    }
    // Every expectation seed's message decodes: each expectation as a NEW
    // and a DESTROY, alone and again in the datagram of all of them.
    let per_datagram: Vec<usize> = seeds::expect_netlink()
        .iter()
        .map(|n| {
            ctsync::kernel::socket::messages(n)
                .filter_map(|m| m.ok())
                .filter(|m| ctsync::kernel::expect_codec::decode_expectation(m.payload).is_ok())
                .count()
        })
        .collect();
    let each = 2 * seeds::expectations().len();
    assert_eq!(
        per_datagram.iter().sum::<usize>(),
        2 * each,
        "{per_datagram:?}"
    );
    let configs = seeds::configs();
    for c in &configs[..4] {
        let text = std::str::from_utf8(c).expect("UTF-8");
        if let Err(e) = ctsync::config::Config::parse(text, "seed") {
            panic!("{e}\n{text}");
        }
    }
    for c in seeds::conntrackd_confs() {
        let text = std::str::from_utf8(&c).expect("UTF-8");
        if let Err(e) = ctsync::conntrackd_conf::convert(text, "seed") {
            panic!("{e}\n{text}");
        }
    }
    // Our own conntrackd-wire datagrams decode into flows again on a
    // receiving node (NOTRACK's data: the first seeds).
    let cd = seeds::conntrackd_datagrams();
    assert!(cd.len() >= 4, "{} conntrackd datagrams", cd.len());
    let mut rx = ctsync::conntrackd_wire::CdNode::new(
        ctsync::conntrackd_wire::CdConfig {
            mode: ctsync::conntrackd_wire::CdMode::Notrack,
            ..Default::default()
        },
        1_700_000_000,
        0,
    );
    let decoded: usize = cd.iter().map(|d| rx.on_datagram(d, 1).len()).sum();
    assert!(
        decoded >= 3 * seeds::flows().len(),
        "only {decoded} changes decoded from the conntrackd seeds"
    );
    for r in seeds::requests().iter().take(22) {
        assert!(ctsync::control::request::decode_request(r).1.is_ok());
    }
}
