//! The domain model of a conntrack expectation: the connection a helper
//! (FTP, SIP, TFTP, H.323, PPTP...) told the kernel to expect, so that its
//! first packet is tracked as RELATED to the master connection.
//!
//! Owns: the plain data type, its key in a cache, and the pure functions on
//! it (the helper-name filter conntrackd applies). Must not: do I/O, know
//! about netlink or the wire format, or read the clock.

use crate::flow::Tuple;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Expectation flags (`NF_CT_EXPECT_*` in linux/netfilter/nf_conntrack_common.h).
pub mod flags {
    pub const PERMANENT: u32 = 0x1;
    pub const INACTIVE: u32 = 0x2;
    pub const USERSPACE: u32 = 0x4;
}

/// Where a NATed master wants the expected connection to go
/// (`CTA_EXPECT_NAT`): the direction and the saved address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExpectNat {
    pub dir: u32,
    /// Only the source half is meaningful (`saved_addr`, `saved_proto`);
    /// the kernel fills the rest of the tuple from the expected one.
    pub tuple: Tuple,
}

/// One expectation as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Expectation {
    pub zone: u16,
    /// The master connection's original tuple.
    pub master: Tuple,
    /// The tuple the expected connection will have.
    pub tuple: Tuple,
    /// Which parts of `tuple` must match (all-ones bits must; a zero source
    /// port means "any").
    pub mask: Tuple,
    /// Seconds left before the kernel drops the expectation.
    pub timeout: u32,
    pub flags: u32,
    /// The helper's expectation class (SIP: signalling, audio, video).
    pub class: u32,
    /// The helper that created it (`CTA_EXPECT_HELP_NAME`).
    pub helper: Option<String>,
    pub nat: Option<ExpectNat>,
    /// The function the kernel runs when the connection arrives
    /// (`CTA_EXPECT_FN`, e.g. "nat-follow-master").
    pub expectfn: Option<String>,
}

/// What identifies an expectation in every cache. conntrackd keys by the
/// master alone, which loses all but one of a SIP call's expectations; the
/// kernel's own identity is the expected tuple (with its mask) in a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExpectKey {
    pub zone: u16,
    pub master: Tuple,
    pub tuple: Tuple,
}

impl Expectation {
    pub fn key(&self) -> ExpectKey {
        ExpectKey {
            zone: self.zone,
            master: self.master,
            tuple: self.tuple,
        }
    }

    /// True when both describe the same expectation: every field but the
    /// timeout, which the kernel counts down on its own.
    pub fn same_state(&self, other: &Expectation) -> bool {
        let Expectation {
            zone,
            master,
            tuple,
            mask,
            timeout: _,
            flags,
            class,
            helper,
            nat,
            expectfn,
        } = self;
        *zone == other.zone
            && *master == other.master
            && *tuple == other.tuple
            && *mask == other.mask
            && *flags == other.flags
            && *class == other.class
            && *helper == other.helper
            && *nat == other.nat
            && *expectfn == other.expectfn
    }
}

/// Which expectations are replicated (`ExpectationSync` in conntrackd.conf,
/// `[sync] expectations` in ctsyncd.toml).
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ExpectPolicy {
    /// None (conntrackd's default).
    #[default]
    Off,
    /// Every helper's.
    All,
    /// Those whose helper name starts with one of these, case-insensitively
    /// (conntrackd's rule: `sip` takes `sip-5060`).
    Helpers(Vec<String>),
}

impl ExpectPolicy {
    pub fn is_off(&self) -> bool {
        matches!(self, ExpectPolicy::Off)
    }

    /// Whether an expectation created by `helper` is replicated. An
    /// expectation without a helper name passes only `All`.
    pub fn takes(&self, helper: Option<&str>) -> bool {
        match self {
            ExpectPolicy::Off => false,
            ExpectPolicy::All => true,
            ExpectPolicy::Helpers(names) => helper.is_some_and(|h| {
                names.iter().any(|n| {
                    h.len() >= n.len() && h.as_bytes()[..n.len()].eq_ignore_ascii_case(n.as_bytes())
                })
            }),
        }
    }
}

impl fmt::Display for Expectation {
    /// conntrack's `-L expect` layout without the timeout and class:
    /// `proto=6 src=.. dst=.. sport=.. dport=.. mask-src=.. mask-dst=..
    /// sport=.. dport=.. master-src=.. master-dst=.. sport=.. dport=..`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proto={} {}", self.tuple.proto, self.tuple)?;
        write!(f, " mask-src={} mask-dst={}", self.mask.src, self.mask.dst)?;
        if let Some((s, d)) = self.mask.ports() {
            write!(f, " sport={s} dport={d}")?;
        }
        write!(
            f,
            " master-src={} master-dst={}",
            self.master.src, self.master.dst
        )?;
        if let Some((s, d)) = self.master.ports() {
            write!(f, " sport={s} dport={d}")?;
        }
        if self.flags & flags::PERMANENT != 0 {
            f.write_str(" PERMANENT")?;
        }
        if self.flags & flags::INACTIVE != 0 {
            f.write_str(" INACTIVE")?;
        }
        if self.flags & flags::USERSPACE != 0 {
            f.write_str(" USERSPACE")?;
        }
        if let Some(h) = &self.helper {
            write!(f, " helper={h}")?;
        }
        Ok(())
    }
}

/// Expectations for the unit tests of the modules that store or send them.
#[cfg(test)]
pub(crate) mod test_expectations {
    use super::Expectation;
    use crate::flow::{proto, Tuple, L4};

    /// An FTP data expectation 198.18.0.2:any -> 198.18.0.1:`port` of the
    /// control connection 198.18.0.1:40000 -> 198.18.0.2:21.
    pub fn ftp(port: u16) -> Expectation {
        let a = "198.18.0.1".parse().unwrap();
        let b = "198.18.0.2".parse().unwrap();
        let ones = "255.255.255.255".parse().unwrap();
        Expectation {
            zone: 0,
            master: Tuple {
                src: a,
                dst: b,
                proto: proto::TCP,
                l4: L4::Ports {
                    src: 40000,
                    dst: 21,
                },
            },
            tuple: Tuple {
                src: b,
                dst: a,
                proto: proto::TCP,
                l4: L4::Ports { src: 0, dst: port },
            },
            mask: Tuple {
                src: ones,
                dst: ones,
                proto: proto::TCP,
                l4: L4::Ports {
                    src: 0,
                    dst: 0xffff,
                },
            },
            timeout: 300,
            flags: 0,
            class: 0,
            helper: Some("ftp".into()),
            nat: None,
            expectfn: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_expectations::ftp;
    use super::*;

    #[test]
    fn policy_matches_helper_prefixes_case_insensitively() {
        let p = ExpectPolicy::Helpers(vec!["sip".into(), "FTP".into()]);
        assert!(p.takes(Some("sip-5060")));
        assert!(p.takes(Some("ftp")));
        assert!(!p.takes(Some("tftp")));
        assert!(!p.takes(Some("si")));
        assert!(!p.takes(None));
        assert!(ExpectPolicy::All.takes(None));
        assert!(!ExpectPolicy::Off.takes(Some("ftp")));
    }

    #[test]
    fn same_state_ignores_only_the_timeout() {
        let e = ftp(5000);
        let mut later = e.clone();
        later.timeout = 3;
        assert!(e.same_state(&later));
        later.flags = flags::PERMANENT;
        assert!(!e.same_state(&later));
        assert_ne!(ftp(5000).key(), ftp(5001).key());
    }

    #[test]
    fn displays_in_conntracks_layout() {
        assert_eq!(
            ftp(5000).to_string(),
            "proto=6 src=198.18.0.2 dst=198.18.0.1 sport=0 dport=5000 \
             mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 \
             master-src=198.18.0.1 master-dst=198.18.0.2 sport=40000 dport=21 helper=ftp"
        );
    }
}
