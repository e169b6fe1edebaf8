//! Golden-byte, round-trip and malformed-input tests of the expectation
//! codec. Netlink headers are host-endian: the golden bytes are for
//! little-endian machines.
#![cfg(target_endian = "little")]

use super::*;
use crate::expect::test_expectations::ftp;
use crate::expect::{flags, ExpectNat};
use crate::flow::{proto, Tuple, L4};
use proptest::prelude::*;

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

/// A netlink message of subsystem 2 (CTNETLINK_EXP).
fn msg(kind: u8, flags: u16, family: u8, seq: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = attrs.concat();
    let mut v = ((20 + body.len()) as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&(0x0200u16 | u16::from(kind)).to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&[0, 0, 0, 0, family, 0, 0, 0]);
    v.extend_from_slice(&body);
    v
}

fn tuple4(kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
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

/// master, tuple, mask of `ftp(5000)`.
fn ftp_identity() -> Vec<Vec<u8>> {
    vec![
        tuple4(1, [198, 18, 0, 1], [198, 18, 0, 2], 40000, 21),
        tuple4(2, [198, 18, 0, 2], [198, 18, 0, 1], 0, 5000),
        tuple4(3, [255; 4], [255; 4], 0, 0xffff),
    ]
}

fn name(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// REQUEST|ACK|EXCL|CREATE.
const CREATE_ACK: u16 = 0x0605;

#[test]
fn golden_create() {
    let mut attrs = ftp_identity();
    attrs.extend([
        nla(4, &[0, 0, 0x01, 0x2c]), // CTA_EXPECT_TIMEOUT 300
        nla(8, &[0, 0, 0, 0]),       // CTA_EXPECT_FLAGS
                                     // Class 0: neither class nor helper name
                                     // (the data connection gets no helper).
    ]);
    let mut buf = Vec::new();
    encode_expect_create(&mut buf, &ftp(5000), 7);
    assert_eq!(buf, msg(0, CREATE_ACK, 2, 7, &attrs));
}

/// Zone, flags, class, NAT and expectfn; timeout 0 becomes 1.
#[test]
fn golden_create_with_everything() {
    let mut e = ftp(5000);
    e.zone = 9;
    e.timeout = 0;
    e.flags = flags::PERMANENT | flags::INACTIVE;
    e.class = 2;
    e.helper = Some("sip".into());
    e.nat = Some(ExpectNat {
        dir: 1,
        tuple: Tuple {
            src: "198.18.0.9".parse().unwrap(),
            dst: "0.0.0.0".parse().unwrap(),
            proto: proto::TCP,
            l4: L4::Ports { src: 5001, dst: 0 },
        },
    });
    e.expectfn = Some("nat-follow-master".into());
    let mut attrs = ftp_identity();
    attrs.extend([
        nla(4, &[0, 0, 0, 1]),
        nla(7, &[0, 9]), // CTA_EXPECT_ZONE
        nla(8, &[0, 0, 0, 3]),
        nla(9, &[0, 0, 0, 2]),
        nla(6, &name("sip")),
        nest(
            10,
            &[
                nla(1, &[0, 0, 0, 1]), // CTA_EXPECT_NAT_DIR
                tuple4(2, [198, 18, 0, 9], [0; 4], 5001, 0),
            ],
        ),
        nla(11, &name("nat-follow-master")),
    ]);
    let mut buf = Vec::new();
    encode_expect_create(&mut buf, &e, 1);
    assert_eq!(buf, msg(0, CREATE_ACK, 2, 1, &attrs));
}

#[test]
fn golden_timeout_delete_get_flush_dump() {
    let e = ftp(5000);
    let mut buf = Vec::new();
    encode_expect_timeout(&mut buf, &e, 2);
    let mut attrs = ftp_identity();
    attrs.push(nla(4, &[0, 0, 0x01, 0x2c]));
    assert_eq!(buf, msg(0, 0x0005, 2, 2, &attrs), "NEW without CREATE");

    let mut key = e.key();
    key.zone = 3;
    let mut buf = Vec::new();
    encode_expect_delete(&mut buf, &key, 3);
    let want = msg(
        2,
        0x0005,
        2,
        3,
        &[
            tuple4(2, [198, 18, 0, 2], [198, 18, 0, 1], 0, 5000),
            nla(7, &[0, 3]),
        ],
    );
    assert_eq!(buf, want);

    let mut buf = Vec::new();
    encode_expect_flush(&mut buf, 4);
    assert_eq!(
        buf,
        msg(2, 0x0005, 0, 4, &[]),
        "DELETE, no tuple, AF_UNSPEC"
    );

    let mut buf = Vec::new();
    encode_expect_dump_request(&mut buf, 5);
    assert_eq!(buf, msg(1, 0x0301, 0, 5, &[]), "GET|DUMP, AF_UNSPEC");

    let expected = tuple4(2, [198, 18, 0, 2], [198, 18, 0, 1], 0, 5000);
    let mut buf = Vec::new();
    encode_expect_get(&mut buf, &key, 6);
    let want = msg(1, 0x0001, 2, 6, &[expected.clone(), nla(7, &[0, 3])]);
    assert_eq!(buf, want, "GET without DUMP, in zone 3");
    key.zone = 0;
    let mut buf = Vec::new();
    encode_expect_get(&mut buf, &key, 7);
    assert_eq!(buf, msg(1, 0x0001, 2, 7, &[expected]), "zone 0: no zone");
}

/// An expectation as a kernel dump or event carries it (attribute order of
/// `ctnetlink_exp_dump_expect`, with CTA_EXPECT_ID, which is ignored).
fn kernel_message(nat: bool) -> Vec<u8> {
    let mut attrs = vec![
        tuple4(2, [198, 18, 2, 2], [198, 19, 100, 200], 0, 50022),
        tuple4(3, [255; 4], [255; 4], 0, 0xffff),
        tuple4(1, [198, 18, 1, 2], [198, 18, 2, 2], 41000, 21),
    ];
    if nat {
        attrs.push(nest(
            10,
            &[nla(1, &[0, 0, 0, 1]), tuple4(2, [0; 4], [0; 4], 50022, 0)],
        ));
    }
    attrs.extend([
        nla(4, &[0, 0, 0x01, 0x2b]),
        nla(5, &[0xde, 0xad, 0xbe, 0xef]),
        nla(8, &[0, 0, 0, 0]),
        nla(9, &[0, 0, 0, 0]),
        nla(6, &name("ftp")),
    ]);
    if nat {
        attrs.push(nla(11, &name("nat-follow-master")));
    }
    msg(0, 0x0600, 2, 0, &attrs)
}

#[test]
fn decodes_a_kernel_expectation() {
    let m = kernel_message(true);
    let e = decode_expectation(&m[16..]).unwrap();
    let tcp = |s: &str, sp: u16, d: &str, dp: u16| Tuple {
        src: s.parse().unwrap(),
        dst: d.parse().unwrap(),
        proto: proto::TCP,
        l4: L4::Ports { src: sp, dst: dp },
    };
    assert_eq!(e.master, tcp("198.18.1.2", 41000, "198.18.2.2", 21));
    assert_eq!(e.tuple, tcp("198.18.2.2", 0, "198.19.100.200", 50022));
    assert_eq!(e.mask, tcp("255.255.255.255", 0, "255.255.255.255", 0xffff));
    assert_eq!(e.timeout, 299);
    assert_eq!((e.zone, e.flags, e.class), (0, 0, 0));
    assert_eq!(e.helper.as_deref(), Some("ftp"));
    assert_eq!(
        e.nat,
        Some(ExpectNat {
            dir: 1,
            tuple: tcp("0.0.0.0", 50022, "0.0.0.0", 0)
        })
    );
    assert_eq!(e.expectfn.as_deref(), Some("nat-follow-master"));
    let plain = decode_expectation(&kernel_message(false)[16..]).unwrap();
    assert_eq!((plain.nat, plain.expectfn), (None, None));
}

#[test]
fn create_round_trips_through_decode() {
    let mut e = ftp(5000);
    e.zone = 4;
    e.class = 1;
    e.flags = flags::PERMANENT;
    let mut buf = Vec::new();
    encode_expect_create(&mut buf, &e, 1);
    assert_eq!(decode_expectation(&buf[16..]).unwrap(), e);
    let mut v6 = ftp(5000);
    v6.class = 1;
    let a: std::net::IpAddr = "2001:db8::1".parse().unwrap();
    let b: std::net::IpAddr = "2001:db8::2".parse().unwrap();
    let ones: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
    (v6.master.src, v6.master.dst) = (a, b);
    (v6.tuple.src, v6.tuple.dst) = (b, a);
    (v6.mask.src, v6.mask.dst) = (ones, ones);
    let mut buf = Vec::new();
    encode_expect_create(&mut buf, &v6, 1);
    assert_eq!(buf[16], 10, "AF_INET6");
    assert_eq!(decode_expectation(&buf[16..]).unwrap(), v6);
}

#[test]
fn missing_or_bad_attributes_are_errors_naming_them() {
    assert_eq!(
        decode_expectation(&[]),
        Err(CodecError::Truncated("nfgenmsg"))
    );
    let ident = ftp_identity();
    let with = |parts: &[Vec<u8>]| {
        let mut p = vec![2, 0, 0, 0];
        p.extend(parts.concat());
        decode_expectation(&p)
    };
    assert_eq!(
        with(&ident[1..]),
        Err(CodecError::Missing("CTA_EXPECT_MASTER"))
    );
    assert_eq!(
        with(&[ident[0].clone(), ident[2].clone()]),
        Err(CodecError::Missing("CTA_EXPECT_TUPLE"))
    );
    assert_eq!(
        with(&ident[..2]),
        Err(CodecError::Missing("CTA_EXPECT_MASK"))
    );
    let mut bad = ident.clone();
    bad.push(nla(4, &[0, 1]));
    assert_eq!(with(&bad), Err(CodecError::Invalid("CTA_EXPECT_TIMEOUT")));
    let mut bad = ident.clone();
    bad.push(nla(6, &[0xff, 0xfe, 0]));
    assert_eq!(with(&bad), Err(CodecError::Invalid("CTA_EXPECT_HELP_NAME")));
    let mut bad = ident.clone();
    bad.push(nest(10, &[nla(1, &[0, 0, 0, 1])]));
    assert_eq!(with(&bad), Err(CodecError::Missing("CTA_EXPECT_NAT_TUPLE")));
    let mut bad = ident.clone();
    bad.push(nla(7, &[1]));
    assert_eq!(with(&bad), Err(CodecError::Invalid("CTA_EXPECT_ZONE")));
    // An IPv6 master of an IPv4 expectation.
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    let master6 = nest(
        1,
        &[
            nest(1, &[nla(3, &v6("2001:db8::1")), nla(4, &v6("2001:db8::2"))]),
            nest(2, &[nla(1, &[6]), nla(2, &[0, 1]), nla(3, &[0, 21])]),
        ],
    );
    assert_eq!(
        with(&[master6, ident[1].clone(), ident[2].clone()]),
        Err(CodecError::Invalid("CTA_EXPECT_MASTER"))
    );
}

#[test]
fn events_are_told_apart_by_type_and_flags() {
    let mut datagram = kernel_message(false);
    let mut destroy = kernel_message(false);
    destroy[4] = 2; // IPCTNL_MSG_EXP_DELETE
    destroy[6] = 0; // no flags
    destroy[12] = 9; // nlmsg_pid
    datagram.extend(destroy);
    let mut out = Vec::new();
    let mut errors = 0;
    super::super::expect_events::decode_datagram(&datagram, &mut out, &mut errors);
    assert_eq!(errors, 0);
    let kinds: Vec<_> = out.iter().map(|e| (e.kind, e.portid)).collect();
    use super::super::EventKind;
    assert_eq!(kinds, vec![(EventKind::New, 0), (EventKind::Destroy, 9)]);
}

proptest! {
    #[test]
    fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_expectation(&bytes);
    }

    #[test]
    fn decode_never_panics_on_a_mutated_message(
        edits in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
        cut in 0usize..=240,
    ) {
        let mut b = kernel_message(true);
        for (i, v) in edits {
            if let Some(slot) = b.get_mut(i) {
                *slot = v;
            }
        }
        b.truncate(cut);
        if b.len() > 16 {
            let _ = decode_expectation(&b[16..]);
        }
    }
}
