//! Expectations as text: the libnetfilter_conntrack layout that
//! `conntrack -L expect` prints and conntrackd's `-i expect` / `-e expect`
//! print (ctsyncd's `-e expect` prints the same), parsed into the parts a
//! test compares.
//!
//! Owns: the parser and the comparison key. Must not: run commands.

use std::net::IpAddr;

/// An address pair and port pair, source first.
pub type Quad = (IpAddr, u16, IpAddr, u16);

/// One expectation line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpLine {
    /// Seconds left (the leading number of `conntrack -L expect`; conntrackd
    /// prints none).
    pub timeout: Option<u64>,
    /// `proto=` (the IP protocol number of the expected tuple).
    pub proto: u8,
    /// The expected tuple (a zero port is a wildcard).
    pub tuple: Quad,
    /// The master connection's original tuple.
    pub master: Quad,
    pub helper: Option<String>,
    /// `class=` (the helper's expectation class: SIP's audio is 1).
    pub class: Option<u32>,
    /// The line without the timeout and without bracketed notes such as
    /// conntrackd's `[active since Ns]`: equal keys, same expectation.
    pub key: String,
    pub line: String,
}

impl ExpLine {
    /// What makes two expectations the same whichever tool printed them:
    /// protocol, expected tuple, master and helper. (The class is left to
    /// the comparison of whole lines, `key`, between two kernels.)
    pub fn ident(&self) -> String {
        format!(
            "{} {:?} {:?} {:?}",
            self.proto, self.tuple, self.master, self.helper
        )
    }
}

/// Every expectation line of `text`; other lines are skipped.
pub fn parse(text: &str) -> Vec<ExpLine> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<ExpLine> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let timeout = tokens.first()?.parse::<u64>().ok();
    let val = |key: &str, n: usize| tokens.iter().filter_map(|t| t.strip_prefix(key)).nth(n);
    let proto = val("proto=", 0)?.parse().ok()?;
    // Ports: the expected tuple's, the mask's, then the master's.
    let port = |key: &str, n: usize| val(key, n)?.parse::<u16>().ok();
    let tuple = (
        val("src=", 0)?.parse().ok()?,
        port("sport=", 0)?,
        val("dst=", 0)?.parse().ok()?,
        port("dport=", 0)?,
    );
    let master = (
        val("master-src=", 0)?.parse().ok()?,
        port("sport=", 2)?,
        val("master-dst=", 0)?.parse().ok()?,
        port("dport=", 2)?,
    );
    let helper = val("helper=", 0).map(str::to_string);
    let class = val("class=", 0).and_then(|c| c.parse().ok());
    let mut in_note = false;
    let key = tokens
        .iter()
        .skip(usize::from(timeout.is_some()))
        .filter(|t| {
            if t.starts_with('[') {
                in_note = !t.ends_with(']');
                return false;
            }
            if in_note {
                in_note = !t.ends_with(']');
                return false;
            }
            true
        })
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    Some(ExpLine {
        timeout,
        proto,
        tuple,
        master,
        helper,
        class,
        key,
        line: line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_conntrackd_layouts_give_one_key() {
        let kernel = "297 proto=6 src=198.18.1.10 dst=198.19.0.100 sport=0 dport=40001 mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 master-src=198.18.1.10 master-dst=198.19.0.100 sport=53412 dport=21 class=0 helper=ftp";
        let daemon = "proto=6 src=198.18.1.10 dst=198.19.0.100 sport=0 dport=40001 mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 master-src=198.18.1.10 master-dst=198.19.0.100 sport=53412 dport=21 class=0 helper=ftp [active since 5s]";
        let a = parse(kernel);
        let b = parse(daemon);
        assert_eq!(a[0].timeout, Some(297));
        assert_eq!(b[0].timeout, None);
        assert_eq!(a[0].key, b[0].key);
        assert_eq!(a[0].tuple.3, 40001);
        assert_eq!(a[0].master.1, 53412);
        assert_eq!(a[0].helper.as_deref(), Some("ftp"));
        assert_eq!(a[0].class, Some(0));
        assert_eq!(a[0].ident(), b[0].ident());
    }
}
