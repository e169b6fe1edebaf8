//! Golden-byte, round-trip and fuzz-like tests of the ctnetlink codec.
//! Netlink headers are host-endian: the golden bytes are for little-endian
//! machines.
#![cfg(target_endian = "little")]

use super::*;
use crate::flow::{proto, status, Flow, ProtoState, SeqAdj, SeqAdjDir, Tuple, L4};
use proptest::prelude::*;

fn t(src: &str, dst: &str, p: u8, l4: L4) -> Tuple {
    Tuple {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: p,
        l4,
    }
}

fn tcp4() -> Flow {
    let mut f = Flow::new(t(
        "198.18.0.1",
        "198.18.0.2",
        proto::TCP,
        L4::Ports {
            src: 40000,
            dst: 80,
        },
    ));
    f.status = status::SEEN_REPLY | status::ASSURED;
    f.timeout = 300;
    f.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 7,
        wscale_reply: 9,
        flags_orig: 0x03,
        flags_reply: 0x23,
    };
    f
}

/// TCP over IPv4, no NAT: every byte written out by hand.
#[test]
fn golden_create_tcp_v4() {
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        // nlmsghdr: len 196, type (CTNETLINK << 8) | CT_NEW, flags
        // REQUEST|EXCL|CREATE = 0x0601, seq 1, pid 0
        0xc4, 0, 0, 0,  0x00, 0x01,  0x01, 0x06,  1, 0, 0, 0,  0, 0, 0, 0,
        // nfgenmsg: AF_INET, version 0, res_id 0
        2, 0, 0, 0,
        // CTA_TUPLE_ORIG (1 | NESTED), 52 bytes
        0x34, 0, 0x01, 0x80,
          // CTA_TUPLE_IP (1 | NESTED), 20 bytes: V4_SRC, V4_DST
          0x14, 0, 0x01, 0x80,
            8, 0, 1, 0,  198, 18, 0, 1,
            8, 0, 2, 0,  198, 18, 0, 2,
          // CTA_TUPLE_PROTO (2 | NESTED), 28 bytes: NUM 6, SRC_PORT 40000, DST_PORT 80
          0x1c, 0, 0x02, 0x80,
            5, 0, 1, 0,  6, 0, 0, 0,
            6, 0, 2, 0,  0x9c, 0x40, 0, 0,
            6, 0, 3, 0,  0x00, 0x50, 0, 0,
        // CTA_TUPLE_REPLY (2 | NESTED): the inverted original
        0x34, 0, 0x02, 0x80,
          0x14, 0, 0x01, 0x80,
            8, 0, 1, 0,  198, 18, 0, 2,
            8, 0, 2, 0,  198, 18, 0, 1,
          0x1c, 0, 0x02, 0x80,
            5, 0, 1, 0,  6, 0, 0, 0,
            6, 0, 2, 0,  0x00, 0x50, 0, 0,
            6, 0, 3, 0,  0x9c, 0x40, 0, 0,
        // CTA_STATUS (3): SEEN_REPLY|ASSURED|CONFIRMED = 0x0e, big endian
        8, 0, 3, 0,  0, 0, 0, 0x0e,
        // CTA_TIMEOUT (7): 300
        8, 0, 7, 0,  0, 0, 0x01, 0x2c,
        // CTA_MARK (8): 0
        8, 0, 8, 0,  0, 0, 0, 0,
        // CTA_PROTOINFO (4 | NESTED), 48 bytes
        0x30, 0, 0x04, 0x80,
          // CTA_PROTOINFO_TCP (1 | NESTED), 44 bytes
          0x2c, 0, 0x01, 0x80,
            5, 0, 1, 0,  3, 0, 0, 0,          // STATE ESTABLISHED
            5, 0, 2, 0,  7, 0, 0, 0,          // WSCALE_ORIGINAL
            5, 0, 3, 0,  9, 0, 0, 0,          // WSCALE_REPLY
            6, 0, 4, 0,  0x0b, 0x0b, 0, 0,    // FLAGS_ORIGINAL {flags, mask}, + BE_LIBERAL
            6, 0, 5, 0,  0x2b, 0x2b, 0, 0,    // FLAGS_REPLY, + BE_LIBERAL
    ];
    let mut buf = Vec::new();
    encode_create(&mut buf, &tcp4(), 1, &CreateOptions::default());
    assert_eq!(buf, want);
    // With window tracking on, BE_LIBERAL is not added.
    let mut tracked = Vec::new();
    let opts = CreateOptions {
        tcp_window_tracking: true,
    };
    encode_create(&mut tracked, &tcp4(), 1, &opts);
    assert_eq!(
        &tracked[180..],
        &[6, 0, 4, 0, 3, 3, 0, 0, 6, 0, 5, 0, 0x23, 0x23, 0, 0]
    );
}

// Small builders for the other golden messages: each names its attribute
// number and value explicitly (independent of the encoder's helpers).
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = ((4 + value.len()) as u16).to_le_bytes().to_vec();
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn nest(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut v = ((4 + body.len()) as u16).to_le_bytes().to_vec();
    v.extend_from_slice(&(kind | 0x8000).to_le_bytes());
    v.extend_from_slice(&body);
    v
}

fn msg(flags: u16, family: u8, seq: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = attrs.concat();
    let mut v = ((20 + body.len()) as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&0x0100u16.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&[0, 0, 0, 0, family, 0, 0, 0]);
    v.extend_from_slice(&body);
    v
}

const CREATE: u16 = 0x0601;

fn v6(s: &str) -> Vec<u8> {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec()
}

#[test]
fn golden_create_udp_v6() {
    let mut f = Flow::new(t(
        "2001:db8::1",
        "2001:db8::2",
        proto::UDP,
        L4::Ports { src: 1234, dst: 53 },
    ));
    f.timeout = 0; // becomes 1
    f.mark = 0x01020304;
    let ip = |a: &str, b: &str| nest(1, &[nla(3, &v6(a)), nla(4, &v6(b))]);
    let want = msg(
        CREATE,
        10, // AF_INET6
        9,
        &[
            nest(
                1,
                &[
                    ip("2001:db8::1", "2001:db8::2"),
                    nest(2, &[nla(1, &[17]), nla(2, &[0x04, 0xd2]), nla(3, &[0, 53])]),
                ],
            ),
            nest(
                2,
                &[
                    ip("2001:db8::2", "2001:db8::1"),
                    nest(2, &[nla(1, &[17]), nla(2, &[0, 53]), nla(3, &[0x04, 0xd2])]),
                ],
            ),
            nla(3, &[0, 0, 0, 0x08]), // CONFIRMED
            nla(7, &[0, 0, 0, 1]),    // timeout 0 -> 1
            nla(8, &[1, 2, 3, 4]),
        ],
    );
    let mut buf = Vec::new();
    encode_create(&mut buf, &f, 9, &CreateOptions::default());
    assert_eq!(buf, want);
}

#[test]
fn golden_create_icmp_echo() {
    let mut f = Flow::new(t(
        "198.18.0.1",
        "198.18.0.2",
        proto::ICMP,
        L4::Icmp {
            kind: 8,
            code: 0,
            id: 0x1092,
        },
    ));
    f.timeout = 30;
    let proto_part = |kind: u8| {
        nest(
            2,
            &[
                nla(1, &[1]),          // CTA_PROTO_NUM ICMP
                nla(4, &[0x10, 0x92]), // CTA_PROTO_ICMP_ID
                nla(5, &[kind]),       // CTA_PROTO_ICMP_TYPE
                nla(6, &[0]),          // CTA_PROTO_ICMP_CODE
            ],
        )
    };
    let want = msg(
        CREATE,
        2,
        1,
        &[
            nest(
                1,
                &[
                    nest(1, &[nla(1, &[198, 18, 0, 1]), nla(2, &[198, 18, 0, 2])]),
                    proto_part(8),
                ],
            ),
            // reply: echo reply (type 0)
            nest(
                2,
                &[
                    nest(1, &[nla(1, &[198, 18, 0, 2]), nla(2, &[198, 18, 0, 1])]),
                    proto_part(0),
                ],
            ),
            nla(3, &[0, 0, 0, 0x08]),
            nla(7, &[0, 0, 0, 30]),
            nla(8, &[0, 0, 0, 0]),
        ],
    );
    let mut buf = Vec::new();
    encode_create(&mut buf, &f, 1, &CreateOptions::default());
    assert_eq!(buf, want);
}

fn nat_flow() -> Flow {
    // 198.18.1.1:1002 -> 198.18.0.2:53 DNATed to 198.18.9.9:5353 and SNATed
    // to 198.19.0.1:61002.
    let mut f = Flow::new(t(
        "198.18.1.1",
        "198.18.0.2",
        proto::UDP,
        L4::Ports { src: 1002, dst: 53 },
    ));
    f.reply = t(
        "198.18.9.9",
        "198.19.0.1",
        proto::UDP,
        L4::Ports {
            src: 5353,
            dst: 61002,
        },
    );
    f.status = status::SRC_NAT | status::DST_NAT | status::CONFIRMED;
    f.timeout = 100;
    f
}

#[test]
fn golden_create_snat_dnat_with_ports() {
    let tuple = |a: [u8; 4], b: [u8; 4], sp: u16, dp: u16| {
        vec![
            nest(1, &[nla(1, &a), nla(2, &b)]),
            nest(
                2,
                &[
                    nla(1, &[17]),
                    nla(2, &sp.to_be_bytes()),
                    nla(3, &dp.to_be_bytes()),
                ],
            ),
        ]
    };
    let want = msg(
        CREATE,
        2,
        3,
        &[
            nest(1, &tuple([198, 18, 1, 1], [198, 18, 0, 2], 1002, 53)),
            // The reply tuple of a create is the inverted original; the
            // kernel rewrites it from the NAT attributes.
            nest(2, &tuple([198, 18, 0, 2], [198, 18, 1, 1], 53, 1002)),
            nla(3, &[0, 0, 0, 0x38]), // CONFIRMED|SRC_NAT|DST_NAT, sent as is
            nla(7, &[0, 0, 0, 100]),
            nla(8, &[0, 0, 0, 0]),
            // CTA_NAT_SRC (6): V4_MINIP = V4_MAXIP = 198.19.0.1, CTA_NAT_PROTO
            // {PORT_MIN = PORT_MAX = 61002}
            nest(
                6,
                &[
                    nla(1, &[198, 19, 0, 1]),
                    nla(2, &[198, 19, 0, 1]),
                    nest(
                        3,
                        &[
                            nla(1, &61002u16.to_be_bytes()),
                            nla(2, &61002u16.to_be_bytes()),
                        ],
                    ),
                ],
            ),
            // CTA_NAT_DST (13): 198.18.9.9 port 5353
            nest(
                13,
                &[
                    nla(1, &[198, 18, 9, 9]),
                    nla(2, &[198, 18, 9, 9]),
                    nest(
                        3,
                        &[
                            nla(1, &5353u16.to_be_bytes()),
                            nla(2, &5353u16.to_be_bytes()),
                        ],
                    ),
                ],
            ),
        ],
    );
    let mut buf = Vec::new();
    encode_create(&mut buf, &nat_flow(), 3, &CreateOptions::default());
    assert_eq!(buf, want);
}

#[test]
fn golden_create_zone_labels_helper() {
    let mut f = Flow::new(t(
        "198.18.0.1",
        "198.18.0.2",
        proto::TCP,
        L4::Ports { src: 2000, dst: 21 },
    ));
    f.zone = 7;
    f.timeout = 60;
    f.status = status::EXPECTED | status::DYING | status::ASSURED; // EXPECTED, DYING dropped
    f.labels = Some(vec![0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.helper = Some("ftp".into());
    let tuple = |a: [u8; 4], b: [u8; 4], sp: u16, dp: u16| {
        vec![
            nest(1, &[nla(1, &a), nla(2, &b)]),
            nest(
                2,
                &[
                    nla(1, &[6]),
                    nla(2, &sp.to_be_bytes()),
                    nla(3, &dp.to_be_bytes()),
                ],
            ),
        ]
    };
    let want = msg(
        CREATE,
        2,
        4,
        &[
            nest(1, &tuple([198, 18, 0, 1], [198, 18, 0, 2], 2000, 21)),
            nest(2, &tuple([198, 18, 0, 2], [198, 18, 0, 1], 21, 2000)),
            nla(3, &[0, 0, 0, 0x0c]), // ASSURED|CONFIRMED
            nla(7, &[0, 0, 0, 60]),
            nla(8, &[0, 0, 0, 0]),
            nla(18, &[0, 7]), // CTA_ZONE
            // CTA_HELP (5) { CTA_HELP_NAME "ftp\0" }
            nest(5, &[nla(1, b"ftp\0")]),
            // CTA_LABELS (22), CTA_LABELS_MASK (23) all ones
            nla(22, &[0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            nla(23, &[0xff; 16]),
        ],
    );
    let mut buf = Vec::new();
    encode_create(&mut buf, &f, 4, &CreateOptions::default());
    assert_eq!(buf, want);
}

fn sctp_flow() -> Flow {
    let mut f = Flow::new(t(
        "198.18.0.1",
        "198.18.0.2",
        proto::SCTP,
        L4::Ports {
            src: 3868,
            dst: 3869,
        },
    ));
    f.timeout = 200;
    f.state = ProtoState::Sctp {
        state: 4,
        vtag_orig: 0x11223344,
        vtag_reply: 0x55667788,
    };
    f
}

#[test]
fn golden_create_sctp() {
    let tuple = |a: [u8; 4], b: [u8; 4], sp: u16, dp: u16| {
        vec![
            nest(1, &[nla(1, &a), nla(2, &b)]),
            nest(
                2,
                &[
                    nla(1, &[132]),
                    nla(2, &sp.to_be_bytes()),
                    nla(3, &dp.to_be_bytes()),
                ],
            ),
        ]
    };
    let want = msg(
        CREATE,
        2,
        5,
        &[
            nest(1, &tuple([198, 18, 0, 1], [198, 18, 0, 2], 3868, 3869)),
            nest(2, &tuple([198, 18, 0, 2], [198, 18, 0, 1], 3869, 3868)),
            nla(3, &[0, 0, 0, 0x08]),
            nla(7, &[0, 0, 0, 200]),
            nla(8, &[0, 0, 0, 0]),
            // CTA_PROTOINFO { CTA_PROTOINFO_SCTP (3) { STATE 4, VTAG_ORIGINAL, VTAG_REPLY } }
            nest(
                4,
                &[nest(
                    3,
                    &[
                        nla(1, &[4]),
                        nla(2, &[0x11, 0x22, 0x33, 0x44]),
                        nla(3, &[0x55, 0x66, 0x77, 0x88]),
                    ],
                )],
            ),
        ],
    );
    let mut buf = Vec::new();
    encode_create(&mut buf, &sctp_flow(), 5, &CreateOptions::default());
    assert_eq!(buf, want);
}

#[test]
fn golden_update_delete_get_dump() {
    let f = tcp4();
    let tuple_orig = nest(
        1,
        &[
            nest(1, &[nla(1, &[198, 18, 0, 1]), nla(2, &[198, 18, 0, 2])]),
            nest(
                2,
                &[
                    nla(1, &[6]),
                    nla(2, &40000u16.to_be_bytes()),
                    nla(3, &[0, 80]),
                ],
            ),
        ],
    );
    let mut z = f.key();
    z.zone = 3;
    // Delete: IPCTNL_MSG_CT_DELETE (0x0102), REQUEST, orig tuple + zone.
    let mut want = msg(0x0001, 2, 7, &[tuple_orig.clone(), nla(18, &[0, 3])]);
    want[4] = 0x02;
    let mut buf = Vec::new();
    encode_delete(&mut buf, &z, 7);
    assert_eq!(buf, want);
    // Get: type 0x0101.
    want[4] = 0x01;
    buf.clear();
    encode_get(&mut buf, &z, 7);
    assert_eq!(buf, want);
    // Dump: GET, REQUEST|DUMP (0x0301), AF_UNSPEC, no attributes.
    buf.clear();
    encode_dump_request(&mut buf, 2);
    let mut dump = msg(0x0301, 0, 2, &[]);
    dump[4] = 0x01;
    assert_eq!(buf, dump);
    // Update: CT_NEW with only REQUEST, no reply tuple, BE_LIBERAL flags.
    buf.clear();
    encode_update(&mut buf, &f, 8);
    let want = msg(
        0x0001,
        2,
        8,
        &[
            tuple_orig,
            nla(3, &[0, 0, 0, 0x0e]),
            nla(7, &[0, 0, 1, 0x2c]),
            nla(8, &[0, 0, 0, 0]),
            nest(
                4,
                &[nest(
                    1,
                    &[
                        nla(1, &[3]),
                        nla(2, &[7]),
                        nla(3, &[9]),
                        nla(4, &[0x0b, 0x0b]),
                        nla(5, &[0x2b, 0x2b]),
                    ],
                )],
            ),
        ],
    );
    assert_eq!(buf, want);
}

/// What a flow looks like after encode_create -> decode_flow: the reply is
/// the inverted original, status as sent, TCP flags with BE_LIBERAL.
fn as_sent(f: &Flow) -> Flow {
    let mut e = f.clone();
    e.reply = f.orig.inverted();
    e.status = (f.status | status::CONFIRMED) & !STATUS_NEVER_SENT;
    e.timeout = f.timeout.max(1);
    if let ProtoState::Tcp {
        flags_orig,
        flags_reply,
        ..
    } = &mut e.state
    {
        *flags_orig |= 0x08;
        *flags_reply |= 0x08;
    }
    e
}

fn payload(buf: &[u8]) -> &[u8] {
    &buf[16..]
}

#[test]
fn create_round_trips_through_decode() {
    let mut labelled = tcp4();
    labelled.zone = 7;
    labelled.labels = Some(vec![0xff; 16]);
    labelled.helper = Some("ftp".into());
    let mut gre = Flow::new(t(
        "198.18.0.1",
        "198.18.0.2",
        proto::GRE,
        L4::Ports {
            src: 0x10,
            dst: 0x20,
        },
    ));
    gre.timeout = 5;
    let mut icmp6 = Flow::new(t(
        "2001:db8::1",
        "2001:db8::2",
        proto::ICMPV6,
        L4::Icmp {
            kind: 128,
            code: 0,
            id: 9,
        },
    ));
    icmp6.timeout = 30;
    let mut dccp = Flow::new(t(
        "198.18.0.1",
        "198.18.0.2",
        proto::DCCP,
        L4::Ports { src: 1, dst: 2 },
    ));
    dccp.state = ProtoState::Dccp { state: 4, role: 1 };
    dccp.timeout = 9;
    for f in [tcp4(), labelled, sctp_flow(), nat_flow(), gre, icmp6, dccp] {
        let mut buf = Vec::new();
        encode_create(&mut buf, &f, 1, &CreateOptions::default());
        let got = decode_flow(payload(&buf)).unwrap();
        assert_eq!(got, as_sent(&f), "{f:?}");
    }
}

/// A NEW event captured from kernel 6.18 (integration test
/// `raw_new_event_decodes`): TCP 198.18.1.1:1001 -> 198.18.0.2:80, DNAT to
/// 198.18.9.9:8080, SNAT to 198.19.0.1:2001, zone 7, mark 0x42, labels, and
/// attributes we ignore (CTA_ID, CTA_SYNPROXY).
#[rustfmt::skip]
const KERNEL_NEW_EVENT: [u8; 260] = [0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x80, 0x5d, 0xce, 0xa1, 0x02, 0x00, 0x00, 0x00, 0x34, 0x00, 0x01, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00, 0x01, 0x00, 0xc6, 0x12, 0x01, 0x01, 0x08, 0x00, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x02, 0x1c, 0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00, 0x03, 0xe9, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x00, 0x50, 0x00, 0x00, 0x34, 0x00, 0x02, 0x80, 0x14, 0x00, 0x01, 0x80, 0x08, 0x00, 0x01, 0x00, 0xc6, 0x12, 0x09, 0x09, 0x08, 0x00, 0x02, 0x00, 0xc6, 0x13, 0x00, 0x01, 0x1c, 0x00, 0x02, 0x80, 0x05, 0x00, 0x01, 0x00, 0x06, 0x00, 0x00, 0x00, 0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00, 0x06, 0x00, 0x03, 0x00, 0x07, 0xd1, 0x00, 0x00, 0x06, 0x00, 0x12, 0x00, 0x00, 0x07, 0x00, 0x00, 0x08, 0x00, 0x0c, 0x00, 0x17, 0x7e, 0x4c, 0xc7, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0xbe, 0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x01, 0x2c, 0x30, 0x00, 0x04, 0x80, 0x2c, 0x00, 0x01, 0x80, 0x05, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x02, 0x00, 0x07, 0x00, 0x00, 0x00, 0x05, 0x00, 0x03, 0x00, 0x09, 0x00, 0x00, 0x00, 0x06, 0x00, 0x04, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x06, 0x00, 0x05, 0x00, 0x2b, 0x00, 0x00, 0x00, 0x14, 0x00, 0x16, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x1c, 0x00, 0x18, 0x80, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x42];

#[test]
fn decodes_a_kernel_new_event() {
    use crate::kernel::socket::{messages, NLM_F_CREATE, NLM_F_EXCL};
    let m = messages(&KERNEL_NEW_EVENT).next().unwrap().unwrap();
    assert_eq!(m.kind, ct_msg_type(IPCTNL_MSG_CT_NEW));
    assert_eq!(m.flags, NLM_F_CREATE | NLM_F_EXCL);
    assert_eq!(m.pid, 0xa1ce5d80); // the writer's port id
    let f = decode_flow(m.payload).unwrap();
    let mut want = Flow::new(t(
        "198.18.1.1",
        "198.18.0.2",
        proto::TCP,
        L4::Ports { src: 1001, dst: 80 },
    ));
    want.reply = t(
        "198.18.9.9",
        "198.19.0.1",
        proto::TCP,
        L4::Ports {
            src: 8080,
            dst: 2001,
        },
    );
    want.zone = 7;
    // SEEN_REPLY|ASSURED|CONFIRMED|SRC_NAT|DST_NAT|SRC_NAT_DONE|DST_NAT_DONE
    want.status = 0x1be;
    want.timeout = 300;
    want.mark = 0x42;
    want.state = ProtoState::Tcp {
        state: 3,
        wscale_orig: 7,
        wscale_reply: 9,
        flags_orig: 0x0b,
        flags_reply: 0x2b,
    };
    want.labels = Some(vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
    assert_eq!(f, want);
    let nat = f.nat();
    assert_eq!(nat.snat.unwrap().port, Some(2001));
    assert_eq!(nat.dnat.unwrap().port, Some(8080));
}

#[test]
fn missing_or_bad_attributes_are_errors() {
    assert_eq!(decode_flow(&[]), Err(CodecError::Truncated("nfgenmsg")));
    assert_eq!(
        decode_flow(&[2, 0, 0, 0]),
        Err(CodecError::Missing("CTA_TUPLE_ORIG"))
    );
    // A zone attribute that is too short.
    let mut p = vec![2, 0, 0, 0];
    p.extend(nla(18, &[7]));
    assert!(decode_flow(&p).is_err());
    // A tuple with only a source address.
    let mut p = vec![2, 0, 0, 0];
    p.extend(nest(1, &[nest(1, &[nla(1, &[1, 2, 3, 4])])]));
    assert_eq!(decode_flow(&p), Err(CodecError::Missing("CTA_TUPLE_ORIG")));
}

proptest! {
    #[test]
    fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_flow(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_event(
        edits in proptest::collection::vec((0usize..260, any::<u8>()), 1..8),
        cut in 0usize..=260,
    ) {
        let mut b = KERNEL_NEW_EVENT.to_vec();
        for (i, v) in edits {
            b[i] = v;
        }
        b.truncate(cut);
        if b.len() > 16 {
            let _ = decode_flow(&b[16..]);
        }
    }

    #[test]
    fn tcp_round_trip(sport: u16, dport: u16, mark: u32, timeout in 1u32.., zone: u16, state in 0u8..10) {
        let mut f = tcp4();
        f.orig.l4 = L4::Ports { src: sport, dst: dport };
        f.reply = f.orig.inverted();
        f.mark = mark;
        f.timeout = timeout;
        f.zone = zone;
        if let ProtoState::Tcp { state: s, .. } = &mut f.state {
            *s = state;
        }
        let mut buf = Vec::new();
        encode_create(&mut buf, &f, 1, &CreateOptions::default());
        prop_assert_eq!(decode_flow(payload(&buf)).unwrap(), as_sent(&f));
    }
}

/// An FTP data connection 198.18.0.2:20 -> 198.18.0.1:5000, RELATED to the
/// control connection 198.18.0.1:40000 -> 198.18.0.2:21, with a sequence
/// adjustment (offsets +4 / -4 as the kernel's u32).
fn related_flow() -> Flow {
    let mut f = Flow::new(t(
        "198.18.0.2",
        "198.18.0.1",
        proto::TCP,
        L4::Ports { src: 20, dst: 5000 },
    ));
    f.timeout = 60;
    f.status = status::EXPECTED | status::SEEN_REPLY;
    f.master = Some(t(
        "198.18.0.1",
        "198.18.0.2",
        proto::TCP,
        L4::Ports {
            src: 40000,
            dst: 21,
        },
    ));
    f.seq_adj = Some(SeqAdj {
        orig: SeqAdjDir {
            correction_pos: 0x01020304,
            offset_before: 0,
            offset_after: 4,
        },
        reply: SeqAdjDir {
            correction_pos: 0x0a0b0c0d,
            offset_before: 0,
            offset_after: 0xffff_fffc,
        },
    });
    f
}

fn tcp_tuple_nest(kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    nest(
        kind,
        &[
            nest(1, &[nla(1, &src), nla(2, &dst)]),
            nest(
                2,
                &[
                    nla(1, &[6]),
                    nla(2, &sport.to_be_bytes()),
                    nla(3, &dport.to_be_bytes()),
                ],
            ),
        ],
    )
}

fn seq_adj_nests() -> Vec<Vec<u8>> {
    vec![
        // CTA_SEQ_ADJ_ORIG (15): CORRECTION_POS, OFFSET_BEFORE, OFFSET_AFTER
        nest(
            15,
            &[
                nla(1, &[1, 2, 3, 4]),
                nla(2, &[0, 0, 0, 0]),
                nla(3, &[0, 0, 0, 4]),
            ],
        ),
        // CTA_SEQ_ADJ_REPLY (16)
        nest(
            16,
            &[
                nla(1, &[0x0a, 0x0b, 0x0c, 0x0d]),
                nla(2, &[0, 0, 0, 0]),
                nla(3, &[0xff, 0xff, 0xff, 0xfc]),
            ],
        ),
    ]
}

/// A RELATED flow: EXPECTED is not sent (the kernel sets it), the master
/// goes in CTA_TUPLE_MASTER (14) after the rest, then the sequence
/// adjustment in both directions; without the master on the writer's
/// fallback.
#[test]
fn golden_create_related_with_seq_adj() {
    let f = related_flow();
    let master = tcp_tuple_nest(14, [198, 18, 0, 1], [198, 18, 0, 2], 40000, 21);
    let mut attrs = vec![
        tcp_tuple_nest(1, [198, 18, 0, 2], [198, 18, 0, 1], 20, 5000),
        tcp_tuple_nest(2, [198, 18, 0, 1], [198, 18, 0, 2], 5000, 20),
        nla(3, &[0, 0, 0, 0x0a]), // SEEN_REPLY|CONFIRMED, no EXPECTED
        nla(7, &[0, 0, 0, 60]),
        nla(8, &[0, 0, 0, 0]),
        master,
    ];
    attrs.extend(seq_adj_nests());
    let mut buf = Vec::new();
    encode_create(&mut buf, &f, 3, &CreateOptions::default());
    assert_eq!(buf, msg(CREATE, 2, 3, &attrs));

    let mut detached = Vec::new();
    encode_create_as(&mut detached, &f, 3, &CreateOptions::default(), false);
    attrs.remove(5);
    assert_eq!(detached, msg(CREATE, 2, 3, &attrs));
}

/// An update never carries the master (the kernel refuses it with
/// EOPNOTSUPP) but does carry the sequence adjustment, and sends EXPECTED
/// for a flow with a master (the kernel refuses a change of it with EBUSY).
#[test]
fn golden_update_related() {
    let f = related_flow();
    let mut attrs = vec![
        tcp_tuple_nest(1, [198, 18, 0, 2], [198, 18, 0, 1], 20, 5000),
        nla(3, &[0, 0, 0, 0x0b]), // EXPECTED|SEEN_REPLY|CONFIRMED
        nla(7, &[0, 0, 0, 60]),
        nla(8, &[0, 0, 0, 0]),
    ];
    attrs.extend(seq_adj_nests());
    let mut buf = Vec::new();
    encode_update(&mut buf, &f, 4);
    assert_eq!(buf, msg(0x0001, 2, 4, &attrs));

    let mut without = Vec::new();
    encode_update_as(&mut without, &f, 4, false);
    attrs[1] = nla(3, &[0, 0, 0, 0x0a]);
    assert_eq!(without, msg(0x0001, 2, 4, &attrs));
    // A flow without master sends no EXPECTED, whatever its status says.
    let mut plain = f.clone();
    plain.master = None;
    plain.seq_adj = None;
    let mut buf = Vec::new();
    encode_update(&mut buf, &plain, 4);
    assert_eq!(buf, msg(0x0001, 2, 4, &attrs[..4]));
}

#[test]
fn related_flow_round_trips_and_partial_seq_adj_decodes() {
    let f = related_flow();
    let mut buf = Vec::new();
    encode_create(&mut buf, &f, 1, &CreateOptions::default());
    let got = decode_flow(payload(&buf)).unwrap();
    assert_eq!(got.master, f.master);
    assert_eq!(got.seq_adj, f.seq_adj);
    // Only the original direction: the reply direction reads as zeros.
    let mut p = vec![2, 0, 0, 0];
    p.extend(tcp_tuple_nest(1, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
    p.extend(seq_adj_nests().remove(0));
    let got = decode_flow(&p).unwrap();
    assert_eq!(
        got.seq_adj,
        Some(SeqAdj {
            orig: SeqAdjDir {
                correction_pos: 0x01020304,
                offset_before: 0,
                offset_after: 4
            },
            reply: SeqAdjDir::default(),
        })
    );
    assert_eq!(got.master, None);
}

#[test]
fn bad_master_or_seq_adj_is_an_error_naming_it() {
    let orig = tcp_tuple_nest(1, [1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
    // A sequence adjustment without OFFSET_AFTER.
    let mut p = vec![2, 0, 0, 0];
    p.extend(orig.clone());
    p.extend(nest(16, &[nla(1, &[0, 0, 0, 1]), nla(2, &[0, 0, 0, 0])]));
    assert_eq!(
        decode_flow(&p),
        Err(CodecError::Missing("CTA_SEQ_ADJ_REPLY"))
    );
    // A short value.
    let mut p = vec![2, 0, 0, 0];
    p.extend(orig.clone());
    p.extend(nest(
        15,
        &[nla(1, &[0, 1]), nla(2, &[0; 4]), nla(3, &[0; 4])],
    ));
    assert_eq!(
        decode_flow(&p),
        Err(CodecError::Invalid("CTA_SEQ_ADJ_ORIG"))
    );
    // A master tuple without addresses.
    let mut p = vec![2, 0, 0, 0];
    p.extend(orig.clone());
    p.extend(nest(14, &[nest(2, &[nla(1, &[6])])]));
    assert_eq!(
        decode_flow(&p),
        Err(CodecError::Missing("CTA_TUPLE_MASTER"))
    );
    // An IPv6 master of an IPv4 flow.
    let mut p = vec![2, 0, 0, 0];
    p.extend(orig);
    p.extend(nest(
        14,
        &[
            nest(1, &[nla(3, &v6("2001:db8::1")), nla(4, &v6("2001:db8::2"))]),
            nest(2, &[nla(1, &[6]), nla(2, &[0, 1]), nla(3, &[0, 2])]),
        ],
    ));
    assert_eq!(
        decode_flow(&p),
        Err(CodecError::Invalid("CTA_TUPLE_MASTER"))
    );
}

/// The requests as netlink-packet-netfilter builds them: the oracle the
/// hand-written tuple, status, timeout, mark and TCP attributes must match
/// byte for byte (what the crate does not model is shared with the codec).
mod crate_oracle {
    use super::super::*;
    use netlink_packet_core::{DefaultNla, Emitable};
    use netlink_packet_netfilter::conntrack::{
        ConntrackAttribute, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol, Status,
        TCPFlags, Tuple as NlTuple,
    };

    fn put(buf: &mut Vec<u8>, nla: &ConntrackAttribute) {
        let start = buf.len();
        buf.resize(start + nla.buffer_len(), 0);
        nla.emit(&mut buf[start..]);
    }

    fn tuple(t: &Tuple) -> Vec<NlTuple> {
        let ip = NlTuple::Ip(vec![
            IPTuple::SourceAddress(t.src),
            IPTuple::DestinationAddress(t.dst),
        ]);
        let mut p = vec![ProtoTuple::Protocol(Protocol::from(t.proto))];
        match t.l4 {
            L4::Ports { src, dst } => {
                p.push(ProtoTuple::SourcePort(src));
                p.push(ProtoTuple::DestinationPort(dst));
            }
            L4::Icmp { kind, code, id } => {
                let (id_a, type_a, code_a) = if t.proto == proto::ICMPV6 {
                    (7, 8, 9)
                } else {
                    (4, 5, 6)
                };
                p.push(ProtoTuple::Other(DefaultNla::new(
                    id_a,
                    id.to_be_bytes().to_vec(),
                )));
                p.push(ProtoTuple::Other(DefaultNla::new(type_a, vec![kind])));
                p.push(ProtoTuple::Other(DefaultNla::new(code_a, vec![code])));
            }
            L4::None => {}
        }
        vec![ip, NlTuple::Proto(p)]
    }

    fn tcp_protoinfo(buf: &mut Vec<u8>, flow: &Flow, liberal: bool) {
        if let (
            ProtoState::Tcp {
                state,
                wscale_orig,
                wscale_reply,
                flags_orig,
                flags_reply,
            },
            true,
        ) = (flow.state, flow.orig.proto == proto::TCP)
        {
            let extra = if liberal { TCP_FLAG_BE_LIBERAL } else { 0 };
            let (fo, fr) = (flags_orig | extra, flags_reply | extra);
            let items = vec![
                ProtoInfoTCP::State(state),
                ProtoInfoTCP::OriginalWindowScale(wscale_orig),
                ProtoInfoTCP::ReplyWindowScale(wscale_reply),
                ProtoInfoTCP::OriginalFlags(TCPFlags::parse(&[fo, fo]).unwrap()),
                ProtoInfoTCP::ReplyFlags(TCPFlags::parse(&[fr, fr]).unwrap()),
            ];
            put(
                buf,
                &ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(items)]),
            );
        } else {
            put_protoinfo(buf, flow, liberal);
        }
    }

    pub fn create(
        buf: &mut Vec<u8>,
        flow: &Flow,
        seq: u32,
        opts: &CreateOptions,
        with_master: bool,
    ) {
        let start = start_msg(
            buf,
            ct_msg_type(IPCTNL_MSG_CT_NEW),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            seq,
            family_of(&flow.orig),
        );
        put(buf, &ConntrackAttribute::CtaTupleOrig(tuple(&flow.orig)));
        put(
            buf,
            &ConntrackAttribute::CtaTupleReply(tuple(&flow.orig.inverted())),
        );
        put(
            buf,
            &ConntrackAttribute::CtaStatus(Status::from_bits_retain(send_status(flow.status))),
        );
        put(
            buf,
            &ConntrackAttribute::CtaTimeout(send_timeout(flow.timeout)),
        );
        put(buf, &ConntrackAttribute::CtaMark(flow.mark));
        put_zone(buf, flow.zone);
        tcp_protoinfo(buf, flow, !opts.tcp_window_tracking);
        put_nat_bindings(buf, flow);
        put_helper(buf, &flow.helper);
        put_labels(buf, &flow.labels);
        if let (Some(m), true) = (&flow.master, with_master) {
            let n = nest_start(buf, CTA_TUPLE_MASTER);
            for part in tuple(m) {
                let at = buf.len();
                buf.resize(at + part.buffer_len(), 0);
                part.emit(&mut buf[at..]);
            }
            nest_end(buf, n);
        }
        put_seq_adj(buf, &flow.seq_adj);
        finish_msg(buf, start);
    }

    pub fn update(buf: &mut Vec<u8>, flow: &Flow, seq: u32, expected: bool) {
        let start = start_msg(
            buf,
            ct_msg_type(IPCTNL_MSG_CT_NEW),
            NLM_F_REQUEST,
            seq,
            family_of(&flow.orig),
        );
        put(buf, &ConntrackAttribute::CtaTupleOrig(tuple(&flow.orig)));
        let mut st = send_status(flow.status);
        if expected {
            st |= status::EXPECTED;
        }
        put(
            buf,
            &ConntrackAttribute::CtaStatus(Status::from_bits_retain(st)),
        );
        if flow.status & status::FIXED_TIMEOUT == 0 {
            put(
                buf,
                &ConntrackAttribute::CtaTimeout(send_timeout(flow.timeout)),
            );
        }
        put(buf, &ConntrackAttribute::CtaMark(flow.mark));
        put_zone(buf, flow.zone);
        tcp_protoinfo(buf, flow, true);
        put_labels(buf, &flow.labels);
        put_seq_adj(buf, &flow.seq_adj);
        finish_msg(buf, start);
    }

    pub fn delete(buf: &mut Vec<u8>, key: &FlowKey, seq: u32) {
        let start = start_msg(
            buf,
            ct_msg_type(IPCTNL_MSG_CT_DELETE),
            NLM_F_REQUEST,
            seq,
            family_of(&key.orig),
        );
        put(buf, &ConntrackAttribute::CtaTupleOrig(tuple(&key.orig)));
        put_zone(buf, key.zone);
        finish_msg(buf, start);
    }
}

proptest! {
    /// The hand-written requests are the bytes netlink-packet-netfilter
    /// builds, for every kind of flow.
    #[test]
    fn requests_match_the_crate_byte_for_byte(
        flow in crate::wire::tests::arb_flow(),
        seq in any::<u32>(),
        tracking in any::<bool>(),
        with_master in any::<bool>(),
        expected in any::<bool>(),
    ) {
        let opts = CreateOptions { tcp_window_tracking: tracking };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        encode_create_as(&mut ours, &flow, seq, &opts, with_master);
        crate_oracle::create(&mut theirs, &flow, seq, &opts, with_master);
        prop_assert_eq!(&ours, &theirs, "create");
        ours.clear();
        theirs.clear();
        encode_update_as(&mut ours, &flow, seq, expected);
        crate_oracle::update(&mut theirs, &flow, seq, expected);
        prop_assert_eq!(&ours, &theirs, "update");
        ours.clear();
        theirs.clear();
        encode_delete(&mut ours, &flow.key(), seq);
        crate_oracle::delete(&mut theirs, &flow.key(), seq);
        prop_assert_eq!(&ours, &theirs, "delete");
    }
}
