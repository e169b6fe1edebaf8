//! Bytes on the sync link, counted by nft in a node's namespace: every UDP
//! datagram to port 3780 leaving or entering `sync0` (IP and UDP headers
//! included, as they travel on the link).
//!
//! Must not: drop, alter or delay any packet (counters only).

use super::BenchError;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const TABLE: &str = "cts_bench";

/// What the counters hold: sent (tx) and received (rx) on sync0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

impl Counts {
    /// What was counted since `before`.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            tx_bytes: self.tx_bytes.saturating_sub(before.tx_bytes),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(before.rx_bytes),
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
        }
    }
}

/// nft counters on one namespace's sync link.
pub struct LinkCounter {
    ns: String,
}

fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> Result<String, BenchError> {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft"]).args(args);
    let out = if let Some(text) = stdin {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| BenchError::Command(format!("nft in {ns}: {e}")))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(text.as_bytes())
                .map_err(|e| BenchError::Command(format!("nft stdin: {e}")))?;
        }
        child
            .wait_with_output()
            .map_err(|e| BenchError::Command(format!("nft in {ns}: {e}")))?
    } else {
        cmd.output()
            .map_err(|e| BenchError::Command(format!("nft in {ns}: {e}")))?
    };
    if !out.status.success() {
        return Err(BenchError::Command(format!(
            "nft {args:?} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LinkCounter {
    /// Install the counters in `ns` (replacing any left by an earlier phase).
    pub fn install(ns: &str) -> Result<LinkCounter, BenchError> {
        let _ = nft(ns, &["delete", "table", "inet", TABLE], None);
        let rules = format!(
            "table inet {TABLE} {{\n\
             \x20chain rx {{ type filter hook input priority -400; iifname \"sync0\" udp dport 3780 counter; }}\n\
             \x20chain tx {{ type filter hook output priority -400; oifname \"sync0\" udp dport 3780 counter; }}\n\
             }}\n"
        );
        nft(ns, &["-f", "-"], Some(&rules))?;
        Ok(LinkCounter { ns: ns.to_string() })
    }

    /// Bytes counted so far, both directions.
    pub fn bytes(&self) -> Result<u64, BenchError> {
        self.read().map(|c| c.tx_bytes + c.rx_bytes)
    }

    /// Everything counted so far, per direction.
    pub fn read(&self) -> Result<Counts, BenchError> {
        let text = nft(&self.ns, &["-j", "list", "table", "inet", TABLE], None)?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| BenchError::Parse(format!("nft -j: {e}")))?;
        let items = json["nftables"]
            .as_array()
            .ok_or_else(|| BenchError::Parse("nft -j: no nftables array".into()))?;
        let mut c = Counts::default();
        let mut found = 0;
        for item in items {
            let rule = &item["rule"];
            let Some(exprs) = rule["expr"].as_array() else {
                continue;
            };
            for e in exprs {
                let counter = &e["counter"];
                let (Some(b), Some(p)) = (counter["bytes"].as_u64(), counter["packets"].as_u64())
                else {
                    continue;
                };
                found += 1;
                if rule["chain"] == "tx" {
                    c.tx_bytes += b;
                    c.tx_packets += p;
                } else {
                    c.rx_bytes += b;
                    c.rx_packets += p;
                }
            }
        }
        if found != 2 {
            return Err(BenchError::Parse(format!(
                "nft -j: {found} counters in {TABLE}, expected 2"
            )));
        }
        Ok(c)
    }

    /// Bytes per second with nothing to replicate, over `interval`.
    pub fn idle_rate(&self, interval: Duration) -> Result<f64, BenchError> {
        let before = self.bytes()?;
        let started = Instant::now();
        std::thread::sleep(interval);
        let after = self.bytes()?;
        Ok(after.saturating_sub(before) as f64 / started.elapsed().as_secs_f64())
    }

    /// Wait until the link carries no more than idle traffic for a second
    /// (at least `min` after the call, at most `max`).
    pub fn quiesce(&self, idle_rate: f64, min: Duration, max: Duration) -> Result<(), BenchError> {
        let started = Instant::now();
        let step = Duration::from_millis(250);
        let window = 4;
        let mut samples = vec![self.bytes()?];
        loop {
            std::thread::sleep(step);
            samples.push(self.bytes()?);
            if started.elapsed() >= min && samples.len() > window {
                let last = samples.len() - 1;
                let grew = samples[last].saturating_sub(samples[last - window]);
                if grew as f64 <= idle_rate * 1.5 + 512.0 {
                    return Ok(());
                }
            }
            if started.elapsed() >= max {
                return Err(BenchError::Timeout(format!(
                    "the sync link never went quiet within {} s",
                    max.as_secs()
                )));
            }
        }
    }
}
