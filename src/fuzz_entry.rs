//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz on nightly) and
//! for the stable test that replays their corpora (`tests/fuzz_corpus.rs`):
//! one function per decoder that takes bytes from outside the process.
//!
//! Owns: feeding arbitrary bytes to the real decoders, exactly as the
//! daemon and the binary do (same functions, same framing), and the cheap
//! properties that must hold for whatever they accept (a decoded datagram
//! re-encodes to one that decodes the same; a decoded kernel flow is
//! written back to the kernel under the same key). Every function returns
//! quietly on any input the decoder refuses; a panic here is a bug in the
//! decoder or in the property, never an expected outcome.
//! Must not: do I/O (no sockets, files, kernel or clock), read
//! configuration, or carry out what it decodes (a parsed command line is
//! not run, a control request is not dispatched).
//!
//! Adding a target: a `pub fn NAME(data: &[u8])` here, a
//! `fuzz/fuzz_targets/NAME.rs` calling it, a `[[bin]]` in
//! `fuzz/Cargo.toml`, a seed corpus in `fuzz/corpus/NAME/`, and its name in
//! `TARGETS` in `tests/fuzz_corpus.rs`.

use crate::config::Config;
use crate::control::cli;
use crate::control::request::{decode_request, Dialect};
use crate::expect::Expectation;
use crate::flow::{Flow, FlowKey};
use crate::kernel::codec::{self, CreateOptions};
use crate::kernel::expect_codec::{
    decode_expectation, encode_expect_create, encode_expect_timeout,
};
use crate::kernel::{events, expect_events, socket};
use crate::wire::{self, Header, Message, HEADER_LEN, MAX_BODY};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// A sync datagram as it arrives on a link (`wire::decode_datagram`:
/// header checks, then the body). What decodes must re-encode to a
/// datagram that decodes to the same header and messages, the re-encoding
/// must be canonical, the hand-written flow codec must agree with bincode
/// on the body, and the flows and keys must survive the way to the kernel
/// (`into_flow`, then `encode_create` / `encode_delete`) with their key.
pub fn wire_datagram(data: &[u8]) {
    let Ok((header, messages)) = wire::decode_datagram(data) else {
        return;
    };
    let again = wire::encode_datagram(&header, &messages);
    let Ok((header2, messages2)) = wire::decode_datagram(&again) else {
        panic!("a decoded datagram re-encodes to one that does not decode");
    };
    let same_header = Header {
        body_len: header.body_len,
        ..header2
    };
    assert_eq!(same_header, header, "header changed in a round trip");
    assert_eq!(messages2, messages, "messages changed in a round trip");
    assert_eq!(
        wire::encode_datagram(&header2, &messages2),
        again,
        "re-encoding is not canonical"
    );
    if let Some(body) = data.get(HEADER_LEN..) {
        agrees_with_bincode(body, &messages);
    }
    for m in messages {
        match m {
            Message::Upsert(wf) => {
                let flow = wf.into_flow();
                let _ = flow.nat();
                let mut buf = Vec::new();
                codec::encode_create(&mut buf, &flow, 1, &CreateOptions::default());
                kernel_names(&buf, &flow.key());
                buf.clear();
                codec::encode_update(&mut buf, &flow, 1);
                kernel_names(&buf, &flow.key());
            }
            Message::Delete(wk) => {
                let key = wk.to_key();
                let mut buf = Vec::new();
                codec::encode_delete(&mut buf, &key, 1);
                kernel_names(&buf, &key);
            }
            _ => {}
        }
    }
}

/// `compact` claims to be byte for byte bincode's encoding of the flow
/// messages: the body it accepted must decode the same through serde.
fn agrees_with_bincode(body: &[u8], messages: &[Message]) {
    let config = bincode::config::standard().with_limit::<{ MAX_BODY + 1 }>();
    match bincode::serde::decode_from_slice::<Vec<Message>, _>(body, config) {
        Ok((via_serde, used)) => {
            assert_eq!(used, body.len(), "bincode left bytes of an accepted body");
            assert_eq!(via_serde, messages, "compact and bincode disagree");
        }
        Err(e) => panic!("bincode refuses a body compact accepted: {e}"),
    }
}

/// `request` (one netlink message of ours) decodes back to a flow with
/// `key`: what ctsync writes to the kernel names the flow it means.
fn kernel_names(request: &[u8], key: &FlowKey) {
    let Some(Ok(m)) = socket::messages(request).next() else {
        panic!("an encoded ctnetlink request does not frame");
    };
    match codec::decode_flow(m.payload) {
        Ok(f) => assert_eq!(&f.key(), key, "the kernel request names another flow"),
        Err(e) => panic!("an encoded ctnetlink request does not decode: {e}"),
    }
}

/// A netlink datagram from the kernel's conntrack socket: events
/// (`kernel::events`' decoding) and dump replies (`socket::messages` with
/// `decode_flow`, errors and done codes). A decoded flow, written back
/// (`encode_create`, `encode_update`, `encode_delete`), keeps its key.
pub fn ctnetlink(data: &[u8]) {
    let mut out = Vec::new();
    let mut decode_errors = 0u64;
    events::decode_datagram(data, &mut out, &mut decode_errors);
    for m in socket::messages(data) {
        let Ok(m) = m else { break };
        let _ = (m.error(), m.done_error(), m.nfnl_type());
        let Ok(flow) = codec::decode_flow(m.payload) else {
            continue;
        };
        written_back(&flow);
    }
    // What a bare payload (a test hands one to decode_flow directly) holds.
    if let Ok(flow) = codec::decode_flow(data) {
        written_back(&flow);
    }
}

fn written_back(flow: &Flow) {
    let _ = (flow.nat(), flow.has_nat());
    let key = flow.key();
    let mut buf = Vec::new();
    codec::encode_create(&mut buf, flow, 1, &CreateOptions::default());
    kernel_names(&buf, &key);
    buf.clear();
    codec::encode_update(&mut buf, flow, 1);
    kernel_names(&buf, &key);
    buf.clear();
    codec::encode_delete(&mut buf, &key, 1);
    kernel_names(&buf, &key);
}

/// A netlink datagram from the kernel's expectation socket: events
/// (`kernel::expect_events`' decoding) and dump replies (`socket::messages`
/// with `decode_expectation`). A decoded expectation, written back
/// (`encode_expect_create`, `encode_expect_timeout`), names the same
/// expectation and carries what the create is documented to carry. (An
/// event's expectation is one of the messages' below, decoded the same
/// way: the property is checked there, once.)
pub fn ctnetlink_expect(data: &[u8]) {
    let mut events = Vec::new();
    let mut decode_errors = 0u64;
    expect_events::decode_datagram(data, &mut events, &mut decode_errors);
    for m in socket::messages(data) {
        let Ok(m) = m else { break };
        if let Ok(e) = decode_expectation(m.payload) {
            expectation_written_back(&e);
        }
    }
    // What a bare payload (the unit tests hand one over directly) holds.
    if let Ok(e) = decode_expectation(data) {
        expectation_written_back(&e);
    }
}

/// `e` written as a create and as a timeout change decodes back to the
/// same key and mask and a timeout of at least 1; the create keeps flags,
/// NAT and expectfn, and sends class and helper only for a class above 0.
fn expectation_written_back(e: &Expectation) {
    let decoded = |encode: fn(&mut Vec<u8>, &Expectation, u32)| {
        let mut buf = Vec::new();
        encode(&mut buf, e, 1);
        let Some(Ok(m)) = socket::messages(&buf).next() else {
            panic!("an encoded expectation request does not frame");
        };
        match decode_expectation(m.payload) {
            Ok(back) => back,
            Err(err) => panic!("an encoded expectation request does not decode: {err}"),
        }
    };
    let created = decoded(encode_expect_create);
    assert_eq!(
        (created.key(), created.mask),
        (e.key(), e.mask),
        "the create names another expectation"
    );
    assert_eq!(created.timeout, e.timeout.max(1), "the create's timeout");
    assert_eq!(
        (created.flags, &created.nat, &created.expectfn),
        (e.flags, &e.nat, &e.expectfn),
        "the create lost flags, NAT or expectfn"
    );
    let (class, helper) = match e.class {
        0 => (0, None),
        c => (c, e.helper.clone()),
    };
    assert_eq!(
        (created.class, created.helper),
        (class, helper),
        "class and helper"
    );
    let changed = decoded(encode_expect_timeout);
    assert_eq!(
        (changed.key(), changed.mask),
        (e.key(), e.mask),
        "the timeout change names another expectation"
    );
    assert_eq!(
        changed.timeout,
        e.timeout.max(1),
        "the timeout change's timeout"
    );
}

/// A config file's bytes (`Config::load` reads it as UTF-8 text, then
/// `Config::parse` validates it). An error names a line of the text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(c) => {
            let _ = serde_json::to_string(&c);
        }
        Err(e) => error_names_a_line(text, &e),
    }
}

/// A config error (TOML or conntrackd.conf) points at a line of its text,
/// and renders.
fn error_names_a_line(text: &str, e: &crate::config::ConfigError) {
    let lines = text.matches('\n').count() + 1;
    assert!(
        (1..=lines).contains(&e.line()),
        "error line {} outside 1..={lines}: {e}",
        e.line()
    );
    let _ = (e.to_string(), e.key());
}

/// A datagram from a conntrackd peer on a link that speaks conntrackd's
/// protocol, as `CdNode::on_datagram` takes it, into a node of each mode
/// (the FTFW one keeps sequence and resend state, NOTRACK and ALARM only
/// decode): whatever it yields, the node must then still poll, and every
/// flow it decodes must go to the kernel (`encode_create`, as a commit
/// writes it) and back on conntrackd's wire (`encode_object`).
pub fn conntrackd_datagram(data: &[u8]) {
    use crate::conntrackd_wire::{encode_object, CdConfig, CdMode, CdNode, Object};
    for mode in [CdMode::Ftfw, CdMode::Notrack, CdMode::Alarm] {
        let cfg = CdConfig {
            mode,
            ..CdConfig::default()
        };
        let mut node = CdNode::new(cfg, 1_700_000_000, 0);
        let changes = node.on_datagram(data, 1);
        let _ = node.poll_transmit(2);
        let _ = node.on_datagram(data, 3);
        let _ = node.poll_transmit(2_000);
        for change in &changes {
            let _ = encode_object(&cfg.codec, change.op, &change.object);
            if let Object::Flow(flow) = &change.object {
                let mut buf = Vec::new();
                codec::encode_create(&mut buf, flow, 1, &CreateOptions::default());
            }
        }
    }
}

/// A conntrackd.conf's bytes (`Config::load` recognises the format and
/// hands the text to `conntrackd_conf::convert`). An error names a line of
/// the conntrackd.conf; what converts prints TOML (`ctsyncd convert`) that
/// loads into the very same config, and the conversion is deterministic.
pub fn conntrackd_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::conntrackd_conf::convert(text, "fuzz.conf") {
        Ok(converted) => {
            let again = Config::parse(&converted.toml, "converted.toml")
                .unwrap_or_else(|e| panic!("converted TOML does not load: {e}"));
            assert_eq!(again, converted.config, "converted TOML loads differently");
            let second = crate::conntrackd_conf::convert(text, "fuzz.conf")
                .unwrap_or_else(|e| panic!("second conversion failed: {e}"));
            assert_eq!(
                second.toml, converted.toml,
                "conversion is not deterministic"
            );
        }
        Err(e) => error_names_a_line(text, &e),
    }
}

/// What a client sent on the control socket, as the server read it
/// (`request::decode_request`). A JSON request that decodes re-encodes, as
/// the client sends it, to the same request.
pub fn control_request(data: &[u8]) {
    let (dialect, decoded) = decode_request(data);
    let Ok(env) = decoded else {
        return;
    };
    if dialect == Dialect::Json {
        let Ok(mut line) = serde_json::to_vec(&env) else {
            panic!("a decoded request does not encode");
        };
        line.push(b'\n');
        assert_eq!(
            decode_request(&line),
            (Dialect::Json, Ok(env)),
            "a request changed in a round trip"
        );
    }
}

/// A command line: the bytes split on NUL into arguments (as the kernel
/// hands argv over; empty input is no argument at all), through the
/// binary's own path (`cli::args_from_os`, then `cli::parse`). Nothing is
/// run.
pub fn cli_args(data: &[u8]) {
    let args: Vec<OsString> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect()
    };
    let Ok(args) = cli::args_from_os(args) else {
        return;
    };
    let _ = cli::parse(&args);
}

/// The key every `auth_open` input is tried with (its seeds are sealed
/// with it, so the fuzzer starts from envelopes that open).
pub const FUZZ_KEY: [u8; 32] = [0x5a; 32];
/// The cluster name bound into `auth_open`'s datagrams.
pub const FUZZ_CLUSTER: &str = "fuzz";

/// A datagram as it reaches a node with keys (`auth::Guard::open`: the
/// envelope, key id, replay window, tag), then the opened body
/// (`wire::decode_datagram`). What opens must keep its header (less the
/// AUTH flag and tag length). And whatever is a plain datagram, sealed by
/// one gate, must open at another to the same bytes, and not open with
/// its last byte changed.
pub fn auth_open(data: &[u8]) {
    use crate::auth::{Guard, KeyRing};
    let ring = KeyRing::single(1, &FUZZ_KEY);
    let mut gate = Guard::new(ring.clone(), FUZZ_CLUSTER, 4, 1);
    if let Ok(opened) = gate.open(data) {
        let sealed = Header::parse(data).expect("an opened datagram has a header");
        let plain = Header::parse(&opened.plain).expect("opens to a plain datagram");
        assert!(sealed.is_sealed() && !plain.is_sealed());
        assert_eq!(
            (plain.node_id, plain.epoch, plain.seq),
            (sealed.node_id, sealed.epoch, sealed.seq)
        );
        let _ = wire::decode_datagram(&opened.plain);
    }
    let Ok(header) = Header::parse(data) else {
        return;
    };
    if header.is_sealed() {
        return;
    }
    let mut sender = Guard::new(ring.clone(), FUZZ_CLUSTER, 4, 2);
    let Some(sealed) = sender.seal(data) else {
        // Only a plain datagram with no room left for the seal is refused.
        assert!(data.len() + wire::AUTH_OVERHEAD > wire::MAX_DATAGRAM);
        return;
    };
    let mut receiver = Guard::new(ring, FUZZ_CLUSTER, 4, 3);
    let opened = receiver.open(&sealed).expect("what we seal opens");
    assert_eq!(opened.plain, data);
    let mut forged = sealed;
    if let Some(last) = forged.last_mut() {
        *last ^= 1;
    }
    let mut fresh = Guard::new(KeyRing::single(1, &FUZZ_KEY), FUZZ_CLUSTER, 4, 4);
    assert!(fresh.open(&forged).is_err(), "a changed tag opened");
}

/// The sync key file (`auth::parse_key_file`). A ring it accepts holds at
/// least one key, ids 1..=255, and sends with one of them.
pub fn key_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ring) = crate::auth::parse_key_file(text) else {
        return;
    };
    let keys = ring.summary();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|(id, _)| *id >= 1));
    let send = ring.send_key().id;
    assert!(keys.iter().any(|(id, _)| *id == send));
}
