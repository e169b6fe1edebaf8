//! Golden bytes, round trips and hostile input for the wire layer.

use super::*;
use crate::flow::{proto, status, Flow, ProtoState, SeqAdj, SeqAdjDir, Tuple, L4};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn tcp_flow() -> Flow {
    let mut f = Flow::new(Tuple {
        src: v4([198, 18, 0, 1]),
        dst: v4([198, 18, 0, 2]),
        proto: proto::TCP,
        l4: L4::Ports {
            src: 40000,
            dst: 80,
        },
    });
    f.status = status::SEEN_REPLY | status::ASSURED | status::CONFIRMED;
    f.timeout = 120;
    f.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 7,
        wscale_reply: 7,
        flags_orig: 0,
        flags_reply: 0,
    };
    f
}

fn header() -> Header {
    Header {
        flags: flags::RELIABLE,
        node_id: 1,
        epoch: 2,
        seq: 3,
        body_len: 0,
        tag_len: 0,
    }
}

#[rustfmt::skip]
const TCP_NO_NAT: [u8; 29] = [
    0x00,                               // Message::Upsert
    0x06,                               // proto TCP
    0x00, 198, 18, 0, 1, 198, 18, 0, 2, // orig: V4 src dst
    0x00, 0x9c, 0x40, 0x00, 0x50,       // Ports 40000 -> 80 (big endian)
    0x00,                               // zone 0
    0x0e,                               // status SEEN_REPLY|ASSURED|CONFIRMED
    0x78,                               // timeout 120
    0x00,                               // mark 0
    0x01, 3, 7, 7, 0, 0,                // Tcp ESTABLISHED, wscale 7/7, flags 0/0
    0x00,                               // labels None
    0x00,                               // helper None
    0x00,                               // reply None (no NAT)
];

#[test]
fn golden_datagram_bytes() {
    let plain = tcp_flow();
    let mut snat = tcp_flow();
    snat.status |= status::SRC_NAT | status::SRC_NAT_DONE;
    snat.reply = Tuple {
        src: v4([198, 18, 0, 2]),
        dst: v4([198, 19, 0, 1]),
        proto: proto::TCP,
        l4: L4::Ports { src: 80, dst: 5000 },
    };
    let del_key = Flow::new(Tuple {
        src: v4([198, 18, 0, 3]),
        dst: v4([198, 18, 0, 4]),
        proto: proto::UDP,
        l4: L4::Ports { src: 53, dst: 5353 },
    })
    .key();
    let messages = vec![
        Message::Upsert(WireFlow::from(&plain)),
        Message::Upsert(WireFlow::from(&snat)),
        Message::Delete(WireKey::from(&del_key)),
        Message::Ack {
            node: 7,
            epoch: 2,
            upto: 300,
        },
    ];
    let bytes = encode_datagram(&header(), &messages);

    let mut body = vec![0x04]; // four messages
    body.extend_from_slice(&TCP_NO_NAT);
    #[rustfmt::skip]
    body.extend_from_slice(&[
        0x00, 0x06,
        0x00, 198, 18, 0, 1, 198, 18, 0, 2,
        0x00, 0x9c, 0x40, 0x00, 0x50,
        0x00,
        0x9e,                                // status + SRC_NAT + SRC_NAT_DONE = 158
        0x78, 0x00,
        0x01, 3, 7, 7, 0, 0,
        0x00, 0x00,
        0x03,                                // SnatTo: only the reply's destination
        0x00, 198, 19, 0, 1,                 // V4 198.19.0.1
        0x13, 0x88,                          // port 5000
    ]);
    #[rustfmt::skip]
    body.extend_from_slice(&[
        0x01,                                // Message::Delete
        0x11,                                // proto UDP
        0x00,                                // zone 0
        0x00, 198, 18, 0, 3, 198, 18, 0, 4,
        0x00, 0x00, 0x35, 0x14, 0xe9,        // Ports 53 -> 5353
        0x04, 0x07, 0x02, 0xfb, 0x2c, 0x01,  // Ack { node 7, epoch 2, upto 300 (251 + LE u16) }
    ]);
    #[rustfmt::skip]
    let mut expected = vec![
        b'C', b'T', b'S', 0x01, 0x01, flags::RELIABLE,
        0, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0, 2,
        0, 0, 0, 3,
    ];
    expected.extend_from_slice(&(body.len() as u16).to_be_bytes());
    expected.extend_from_slice(&[0, 0]);
    expected.extend_from_slice(&body);
    assert_eq!(bytes, expected);

    let (h, decoded) = decode_datagram(&bytes).unwrap();
    assert_eq!(h.seq, 3);
    assert_eq!(h.body_len as usize, body.len());
    assert_eq!(decoded, messages);
    match &decoded[1] {
        Message::Upsert(f) => assert_eq!(f.clone().into_flow(), snat),
        other => panic!("unexpected {other:?}"),
    }
    match &decoded[2] {
        Message::Delete(k) => assert_eq!(k.to_key(), del_key),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn ipv4_tcp_upsert_is_small() {
    let mut f = tcp_flow();
    // Realistic values: a long ESTABLISHED timeout and the usual status bits.
    f.timeout = 432_000;
    f.status |= status::SRC_NAT_DONE | status::DST_NAT_DONE;
    let n = encode_message(&Message::Upsert(WireFlow::from(&f))).len();
    println!("IPv4 TCP Upsert without NAT: {n} bytes (conntrackd: 84)");
    assert_eq!(
        encode_message(&Message::Upsert(WireFlow::from(&tcp_flow()))),
        TCP_NO_NAT
    );
    assert!(n < 45, "{n} bytes");
}

fn reason(bytes: &[u8]) -> &'static str {
    match decode_datagram(bytes) {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

#[test]
fn hostile_datagrams_are_rejected_with_their_reason() {
    let good = encode_datagram(&header(), &[Message::Upsert(WireFlow::from(&tcp_flow()))]);
    assert_eq!(reason(&good), "ok");
    for cut in 0..good.len() {
        let r = reason(&good[..cut]);
        let want = if cut < HEADER_LEN {
            "truncated"
        } else {
            "bad_length"
        };
        assert_eq!(r, want, "cut at {cut}");
    }
    let mut b = good.clone();
    b[1] = b'X';
    assert_eq!(reason(&b), "bad_magic");
    let mut b = good.clone();
    b[4] = 9;
    assert_eq!(reason(&b), "bad_version");
    assert_eq!(reason(&vec![0u8; MAX_DATAGRAM + 10]), "oversized");

    // A body whose bytes are garbage under a correct header.
    let mut b = good.clone();
    b[HEADER_LEN + 1] = 0x7f; // unknown message variant
    assert_eq!(reason(&b), "bad_body");
    // Trailing bytes inside the declared body.
    let mut h = header();
    let mut body = Packer::pack_all(1472, &[Message::Alive]).remove(0).seal(&h);
    body.push(0);
    h.body_len = 3; // declared body: count + Alive + the extra byte
    let mut b = Vec::new();
    h.encode_into(&mut b);
    b.extend_from_slice(&body[HEADER_LEN..]);
    assert_eq!(reason(&b), "bad_body");

    // Too many messages: the count is checked before decoding.
    let many = vec![Message::Alive; MAX_MESSAGES + 1];
    let mut b = Vec::new();
    let mut h = header();
    let mut raw = Vec::new();
    compact::put_varint(&mut raw, many.len() as u64);
    for m in &many {
        raw.extend_from_slice(&encode_message(m));
    }
    h.body_len = raw.len() as u16;
    h.encode_into(&mut b);
    b.extend_from_slice(&raw);
    assert_eq!(reason(&b), "too_many_messages");

    // Semantic checks after decoding.
    let mut mixed = WireFlow::from(&tcp_flow());
    mixed.tail = WireTail::Nat(WireTuple {
        addrs: WireAddrs::V6 {
            src: [0x20; 16],
            dst: [0x20; 16],
        },
        l4: WireL4::None,
    });
    assert_eq!(
        reason(&encode_datagram(&header(), &[Message::Upsert(mixed)])),
        "bad_flow"
    );
    let mut long_helper = WireFlow::from(&tcp_flow());
    long_helper.helper = Some("x".repeat(MAX_HELPER_LEN + 1));
    assert_eq!(
        reason(&encode_datagram(&header(), &[Message::Upsert(long_helper)])),
        "bad_flow"
    );
    let mut long_labels = WireFlow::from(&tcp_flow());
    long_labels.labels = Some(vec![1; MAX_LABELS_LEN + 1]);
    assert_eq!(
        reason(&encode_datagram(&header(), &[Message::Upsert(long_labels)])),
        "bad_flow"
    );
    let mut icmp_v6 = WireFlow::from(&tcp_flow());
    icmp_v6.proto = proto::ICMPV6; // v4 addresses with ports
    assert_eq!(
        reason(&encode_datagram(&header(), &[Message::Upsert(icmp_v6)])),
        "bad_flow"
    );
}

#[test]
fn packer_respects_the_payload_and_keeps_order() {
    let flows: Vec<Message> = (0..500u16)
        .map(|i| {
            let mut f = tcp_flow();
            f.orig.l4 = L4::Ports { src: i, dst: 80 };
            f.reply = f.orig.inverted();
            Message::Upsert(WireFlow::from(&f))
        })
        .collect();
    for max in [PAYLOAD_IPV4_1500, PAYLOAD_IPV6_1500, 200, 60] {
        let bodies = Packer::pack_all(max, &flows);
        let mut back = Vec::new();
        for b in &bodies {
            let dgram = b.seal(&header());
            assert!(dgram.len() <= max, "{} > {max}", dgram.len());
            back.extend(decode_datagram(&dgram).unwrap().1);
        }
        assert_eq!(back, flows);
        if max == PAYLOAD_IPV4_1500 {
            assert!(
                bodies.len() <= 500 * 31 / (1472 - 30) + 1,
                "{}",
                bodies.len()
            );
        }
    }
    // A payload too small for any message: each goes alone, never dropped.
    let bodies = Packer::pack_all(HEADER_LEN + 2, &flows[..3]);
    assert_eq!(bodies.len(), 3);
}

fn addr_pair(v6: bool) -> impl Strategy<Value = (IpAddr, IpAddr)> {
    if v6 {
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(a, b)| (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b))))
            .boxed()
    } else {
        (any::<[u8; 4]>(), any::<[u8; 4]>())
            .prop_map(|(a, b)| (v4(a), v4(b)))
            .boxed()
    }
}

fn tuple(v6: bool, p: u8) -> impl Strategy<Value = Tuple> {
    let l4 = match p {
        proto::ICMP | proto::ICMPV6 => (any::<u8>(), any::<u8>(), any::<u16>())
            .prop_map(|(kind, code, id)| L4::Icmp { kind, code, id })
            .boxed(),
        50 => Just(L4::None).boxed(),
        _ => (any::<u16>(), any::<u16>())
            .prop_map(|(src, dst)| L4::Ports { src, dst })
            .boxed(),
    };
    (addr_pair(v6), l4).prop_map(move |((src, dst), l4)| Tuple {
        src,
        dst,
        proto: p,
        l4,
    })
}

fn proto_state() -> impl Strategy<Value = ProtoState> {
    prop_oneof![
        Just(ProtoState::None),
        any::<[u8; 5]>().prop_map(|b| ProtoState::Tcp {
            state: b[0],
            wscale_orig: b[1],
            wscale_reply: b[2],
            flags_orig: b[3],
            flags_reply: b[4],
        }),
        (any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|(state, vtag_orig, vtag_reply)| {
            ProtoState::Sctp {
                state,
                vtag_orig,
                vtag_reply,
            }
        }),
        (any::<u8>(), any::<u8>()).prop_map(|(state, role)| ProtoState::Dccp { state, role }),
    ]
}

pub(crate) fn arb_flow() -> impl Strategy<Value = Flow> {
    let family_proto = prop_oneof![
        Just((false, proto::TCP)),
        Just((true, proto::TCP)),
        Just((false, proto::UDP)),
        Just((true, proto::UDP)),
        Just((false, proto::ICMP)),
        Just((true, proto::ICMPV6)),
        Just((false, proto::SCTP)),
        Just((true, proto::DCCP)),
        Just((false, proto::GRE)),
        Just((true, 50u8)),
    ];
    family_proto.prop_flat_map(|(v6, p)| {
        (
            tuple(v6, p),
            // No NAT, any reply tuple, SNAT or DNAT of one end.
            (0u8..4, tuple(v6, p), addr_pair(v6), any::<u16>()),
            any::<(u16, u32, u32, u32)>(),
            proto_state(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=16)),
            proptest::option::of("[a-z0-9-]{0,16}"),
            proptest::option::of(tuple(v6, proto::TCP)),
            proptest::option::of(any::<[u32; 6]>()),
        )
            .prop_map(
                |(orig, nat, (zone, st, timeout, mark), state, labels, helper, master, adj)| {
                    let mut f = Flow::new(orig);
                    let (kind, any_reply, (addr, _), port) = nat;
                    match (kind, f.reply.l4) {
                        (1, _) => f.reply = any_reply,
                        (2, L4::Ports { src, .. }) => {
                            f.reply.dst = addr;
                            f.reply.l4 = L4::Ports { src, dst: port };
                        }
                        (3, L4::Ports { dst, .. }) => {
                            f.reply.src = addr;
                            f.reply.l4 = L4::Ports { src: port, dst };
                        }
                        _ => {}
                    }
                    f.zone = zone;
                    f.status = st;
                    f.timeout = timeout;
                    f.mark = mark;
                    f.state = state;
                    f.labels = labels;
                    f.helper = helper;
                    f.master = master;
                    f.seq_adj = adj.map(|[a, b, c, d, e, g]| SeqAdj {
                        orig: SeqAdjDir {
                            correction_pos: a,
                            offset_before: b,
                            offset_after: c,
                        },
                        reply: SeqAdjDir {
                            correction_pos: d,
                            offset_before: e,
                            offset_after: g,
                        },
                    });
                    f
                },
            )
    })
}

/// SNAT and DNAT of one end travel as that end only; NAT of both ends,
/// or of an ICMP id, as the whole reply tuple; all come back equal.
#[test]
fn one_ended_nat_travels_as_that_end() {
    let mut snat = tcp_flow();
    snat.reply.dst = "198.19.255.1".parse().unwrap_or(snat.reply.dst);
    if let L4::Ports { src, .. } = snat.reply.l4 {
        snat.reply.l4 = L4::Ports { src, dst: 61_000 };
    }
    let mut dnat = tcp_flow();
    dnat.reply.src = "198.18.254.9".parse().unwrap_or(dnat.reply.src);
    if let L4::Ports { dst, .. } = dnat.reply.l4 {
        dnat.reply.l4 = L4::Ports { src: 8080, dst };
    }
    let mut both = snat.clone();
    both.reply.src = dnat.reply.src;
    let plain = tcp_flow();
    let size = |f: &Flow| encode_message(&Message::Upsert(WireFlow::from(f))).len();
    assert!(matches!(WireFlow::from(&snat).tail, WireTail::SnatTo(_)));
    assert!(matches!(WireFlow::from(&dnat).tail, WireTail::DnatTo(_)));
    assert!(matches!(WireFlow::from(&both).tail, WireTail::Nat(_)));
    assert_eq!(size(&snat), size(&plain) + 7);
    assert_eq!(size(&dnat), size(&plain) + 7);
    assert_eq!(size(&both), size(&plain) + 14);
    for f in [&snat, &dnat, &both] {
        let dgram = encode_datagram(&header(), &[Message::Upsert(WireFlow::from(f))]);
        let (_, msgs) = decode_datagram(&dgram).unwrap();
        match &msgs[..] {
            [Message::Upsert(w)] => assert_eq!(&w.clone().into_flow(), f),
            other => panic!("{other:?}"),
        }
    }
    // A one-ended tail on a flow without ports, or of the other family,
    // is refused.
    let mut icmp = WireFlow::from(&snat);
    icmp.proto = proto::ICMP;
    icmp.orig.l4 = WireL4::Icmp {
        kind: 8,
        code: 0,
        id: [0, 1],
    };
    let mut v6 = WireFlow::from(&snat);
    v6.tail = WireTail::SnatTo(WireEnd::V6 {
        addr: [0x20; 16],
        port: [0, 1],
    });
    for bad in [icmp, v6] {
        let dgram = encode_datagram(&header(), &[Message::Upsert(bad)]);
        assert_eq!(reason(&dgram), "bad_flow");
    }
}

proptest! {
    #[test]
    fn flows_round_trip(flows in proptest::collection::vec(arb_flow(), 1..20), seq in any::<u32>()) {
        let messages: Vec<Message> = flows.iter().map(|f| Message::Upsert(WireFlow::from(f))).collect();
        let h = Header { seq, ..header() };
        let mut back = Vec::new();
        for body in Packer::pack_all(PAYLOAD_IPV6_1500, &messages) {
            let dgram = body.seal(&h);
            prop_assert!(dgram.len() <= PAYLOAD_IPV6_1500);
            let (got_h, msgs) = decode_datagram(&dgram).unwrap();
            prop_assert_eq!(got_h.seq, seq);
            back.extend(msgs);
        }
        prop_assert_eq!(&back, &messages);
        for (m, f) in back.into_iter().zip(&flows) {
            match m {
                Message::Upsert(w) => {
                    prop_assert_eq!(w.tail.has_reply(), f.has_nat());
                    prop_assert_eq!(w.key(), f.key());
                    prop_assert_eq!(&w.into_flow(), f);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }

    #[test]
    fn keys_round_trip(f in arb_flow()) {
        let k = f.key();
        let dgram = encode_datagram(&header(), &[Message::Delete(WireKey::from(&k))]);
        let (_, msgs) = decode_datagram(&dgram).unwrap();
        prop_assert_eq!(msgs, vec![Message::Delete(WireKey::from(&k))]);
        prop_assert_eq!(WireKey::from(&k).to_key(), k);
    }

    /// The hand-written codec writes exactly bincode's bytes.
    #[test]
    fn compact_encoding_is_bincode(f in arb_flow()) {
        let config = bincode::config::standard();
        let upsert = Message::Upsert(WireFlow::from(&f));
        prop_assert_eq!(encode_message(&upsert), bincode::serde::encode_to_vec(&upsert, config).unwrap());
        let delete = Message::Delete(WireKey::from(&f.key()));
        prop_assert_eq!(encode_message(&delete), bincode::serde::encode_to_vec(&delete, config).unwrap());
        // The key prefix leads the flow's encoding.
        let mut flow_bytes = Vec::new();
        let key_len = compact::put_flow(&mut flow_bytes, &WireFlow::from(&f));
        let prefix = compact::KeyBuf::of(&WireKey::from(&f.key()));
        prop_assert_eq!(&flow_bytes[..key_len], prefix.as_slice());
        let back = compact::Reader::new(prefix.as_slice()).key_prefix().unwrap();
        prop_assert_eq!(back.to_key(), f.key());
    }

    /// The hand-written decoder accepts and rejects what bincode does,
    /// with the same result, on damaged bodies.
    #[test]
    fn compact_decoding_agrees_with_bincode(
        f in arb_flow(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    ) {
        let messages = vec![
            Message::Upsert(WireFlow::from(&f)),
            Message::Delete(WireKey::from(&f.key())),
            Message::Alive,
            Message::Upsert(WireFlow::from(&f)),
        ];
        let mut body = bincode::serde::encode_to_vec(&messages, bincode::config::standard()).unwrap();
        for (pos, val) in flips {
            let i = pos % body.len();
            body[i] = val;
        }
        // With a limit, as the daemon's own bincode decoding has: a damaged
        // length must not make bincode allocate exabytes.
        let limited = bincode::config::standard().with_limit::<65_536>();
        let by_bincode = bincode::serde::decode_from_slice::<Vec<Message>, _>(&body, limited)
            .ok()
            .filter(|(_, used)| *used == body.len())
            .map(|(m, _)| m)
            .filter(|ms| ms.iter().all(|m| match m {
                Message::Upsert(f) => f.validate().is_ok(),
                Message::Delete(k) => k.validate().is_ok(),
                other => other.validate_ranges().is_ok(),
            }));
        prop_assert_eq!(decode_body(&body).ok(), by_bincode);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        prop_assert!(decode_datagram(&bytes).is_err());
    }

    #[test]
    fn random_bodies_behind_a_good_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut b = Vec::new();
        Header { body_len: body.len() as u16, ..header() }.encode_into(&mut b);
        b.extend_from_slice(&body);
        // Either a clean decode or a body-level reason; never a panic.
        if let Err(e) = decode_datagram(&b) {
            prop_assert!(matches!(e.reason(), "bad_body" | "bad_flow" | "too_many_messages"), "{}", e.reason());
        }
    }

    #[test]
    fn flipped_bytes_never_panic(f in arb_flow(), pos in any::<usize>(), val in any::<u8>()) {
        let mut d = encode_datagram(&header(), &[Message::Upsert(WireFlow::from(&f)), Message::Alive]);
        let i = pos % d.len();
        d[i] = val;
        let _ = decode_datagram(&d);
    }
}

#[test]
fn digest_golden_bytes_and_round_trip() {
    let msg = Message::Digest {
        count: 300,
        hash: 0x0102_0304_0506_0708,
    };
    assert!(msg.is_data());
    #[rustfmt::skip]
    let expected = [
        0x09,                                // Message::Digest, after Alive (8)
        0xfb, 0x2c, 0x01,                    // count 300 (251 + LE u16)
        0xfd, 8, 7, 6, 5, 4, 3, 2, 1,        // hash: 253 + LE u64
    ];
    assert_eq!(encode_message(&msg), expected);
    let bytes = encode_datagram(&header(), std::slice::from_ref(&msg));
    let (_, decoded) = decode_datagram(&bytes).unwrap();
    assert_eq!(decoded, vec![msg]);
}

fn sums(ranges: impl Iterator<Item = u16>) -> Vec<RangeSum> {
    ranges
        .map(|range| RangeSum {
            range,
            count: u32::from(range) * 1000,
            hash: u64::from(range).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        })
        .collect()
}

#[test]
fn range_messages_round_trip_and_only_the_request_is_control() {
    let msgs = vec![
        Message::RangeDigest { sums: sums(0..64) },
        Message::RangeRequest {
            node: 7,
            ranges: vec![0, 3, 255],
        },
        Message::RangeBegin {
            id: 9,
            ranges: vec![1, 2],
        },
        Message::RangeEnd {
            id: 9,
            sums: sums(1..3),
        },
        Message::BulkEndSum {
            id: 4,
            count: 45_000,
            hash: u64::MAX,
        },
    ];
    for m in &msgs {
        assert_eq!(
            m.is_data(),
            !matches!(m, Message::RangeRequest { .. }),
            "{m:?}"
        );
        let bytes = encode_datagram(&header(), std::slice::from_ref(m));
        let (_, decoded) = decode_datagram(&bytes).unwrap();
        assert_eq!(&decoded, std::slice::from_ref(m));
    }
    // A digest chunk of 64 ranges fits the smallest payload's datagram
    // several times over at 1472 bytes.
    let chunk = encode_message(&msgs[0]);
    assert!(chunk.len() < 1000, "{}", chunk.len());
    // Empty lists are fine.
    let empty = Message::RangeRequest {
        node: 1,
        ranges: Vec::new(),
    };
    let bytes = encode_datagram(&header(), std::slice::from_ref(&empty));
    assert_eq!(decode_datagram(&bytes).unwrap().1, vec![empty]);
}

#[test]
fn range_messages_out_of_bounds_are_rejected() {
    let bad = [
        Message::RangeRequest {
            node: 1,
            ranges: vec![RANGES],
        },
        Message::RangeBegin {
            id: 1,
            ranges: vec![0, u16::MAX],
        },
        Message::RangeDigest {
            sums: sums(250..260),
        },
        Message::RangeEnd {
            id: 1,
            sums: sums(0..1).into_iter().cycle().take(257).collect(),
        },
    ];
    for m in &bad {
        // The encoder writes what it is given; the decoder refuses it.
        let body = {
            let mut b = Vec::new();
            compact::put_varint(&mut b, 1);
            b.extend_from_slice(&encode_message(m));
            b
        };
        let err = decode_body(&body).unwrap_err();
        assert_eq!(err.reason(), "bad_body", "{m:?}");
    }
    // Truncated range messages are errors, not panics.
    let good = encode_message(&Message::RangeEnd {
        id: 3,
        sums: sums(0..20),
    });
    for cut in 0..good.len() {
        let mut body = Vec::new();
        compact::put_varint(&mut body, 1);
        body.extend_from_slice(&good[..cut]);
        assert!(decode_body(&body).is_err(), "cut at {cut}");
    }
    // A huge claimed length allocates nothing and fails.
    let mut body = Vec::new();
    compact::put_varint(&mut body, 1);
    body.push(12); // RangeBegin
    body.push(1); // id
    body.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(decode_body(&body).is_err());
}
