//! What a run tells its caller: a report when the invariant held, a failure
//! that names the seed, the parameters, the first differences and how to
//! replay it, when not.
//!
//! Owns: `SimReport`, `SimFailure` and their text. Must not: run anything.

use super::adversary::AdversaryStats;
use super::check::Difference;
use super::net::NetStats;
use super::params::{adversary_for_seed, mode_name, params_for_seed, SimParams};
use std::fmt;
use thiserror::Error;

/// A run that held the invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    pub seed: u64,
    pub params: SimParams,
    /// Virtual time of the heal and of the final check.
    pub heal_ms: u64,
    pub end_ms: u64,
    /// How long after the heal every view held (and kept holding).
    pub converged_after_ms: u64,
    /// Kernel changes applied, restarts and partitions that happened.
    pub changes: u64,
    pub restarts: u64,
    pub partitions: u64,
    /// Flows in each node's internal cache at the end.
    pub flows: Vec<usize>,
    pub net: NetStats,
    /// Summed over every node (restarted ones included).
    pub retransmits: u64,
    pub nacks_sent: u64,
    pub bulks_sent: u64,
    pub resumes_sent: u64,
    /// Datagrams the nodes' authentication gates refused, every reason.
    pub auth_refused: u64,
    /// What the adversary did and what came of it (attacked runs).
    pub adversary: Option<AdversaryStats>,
    /// What it got in: always 0 with keys (a breach fails a keyed run).
    pub breaches: u64,
    /// A fingerprint of every cache and counter at the end: two runs of one
    /// seed must agree on it.
    pub digest: u64,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: ok, converged {} ms after the heal",
            self.seed, self.converged_after_ms
        )?;
        writeln!(f, "  params: {}", self.params)?;
        writeln!(
            f,
            "  changes={} restarts={} partitions={} flows={:?} heal={}ms end={}ms",
            self.changes, self.restarts, self.partitions, self.flows, self.heal_ms, self.end_ms
        )?;
        writeln!(
            f,
            "  network: sent={} delivered={} lost={} duplicated={} cut={}",
            self.net.sent, self.net.delivered, self.net.lost, self.net.duplicated, self.net.cut
        )?;
        write!(
            f,
            "  sync: retransmits={} nacks={} bulks={} resumes={} digest={:016x}",
            self.retransmits, self.nacks_sent, self.bulks_sent, self.resumes_sent, self.digest
        )?;
        if self.params.auth {
            write!(f, "\n  auth: refused={}", self.auth_refused)?;
        }
        if let Some(a) = &self.adversary {
            write!(f, "\n  adversary: {a} breaches={}", self.breaches)?;
        }
        Ok(())
    }
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// A Node could not be made (e.g. a mode the core does not support).
    Setup(String),
    /// Something panicked; the message.
    Panicked(String),
    /// The views still differ at the end.
    Diverged,
    /// The views held at the end, but only this long after the heal.
    Slow { converged_after_ms: u64 },
    /// With keys, something of the adversary's got in (what, as the
    /// breach watch tells it).
    Breached(String),
}

/// A run that broke the invariant (or could not run).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{}", self.render())]
pub struct SimFailure {
    pub seed: u64,
    /// Boxed: keeps the `Result`s that carry a failure small.
    pub params: Box<SimParams>,
    pub kind: FailureKind,
    /// The first differences found (at most `MAX_SHOWN`).
    pub differences: Vec<Difference>,
    /// How many there were in all.
    pub total_differences: usize,
    /// Virtual time of the failure.
    pub at_ms: u64,
    /// What the adversary had done by then (attacked runs; boxed, as
    /// `params`).
    pub adversary: Option<Box<AdversaryStats>>,
}

/// Differences a failure keeps and prints.
pub const MAX_SHOWN: usize = 8;

impl SimFailure {
    pub fn new(
        seed: u64,
        params: &SimParams,
        kind: FailureKind,
        mut differences: Vec<Difference>,
        at_ms: u64,
    ) -> SimFailure {
        let total_differences = differences.len();
        differences.truncate(MAX_SHOWN);
        SimFailure {
            seed,
            params: Box::new(params.clone()),
            kind,
            differences,
            total_differences,
            at_ms,
            adversary: None,
        }
    }

    /// The same failure, with what the adversary did.
    pub fn with_adversary(mut self, stats: Option<&AdversaryStats>) -> SimFailure {
        self.adversary = stats.map(|a| Box::new(a.clone()));
        self
    }

    /// The command that replays this run exactly.
    pub fn replay(&self) -> String {
        replay_command(self.seed, &self.params)
    }

    fn render(&self) -> String {
        let what = match &self.kind {
            FailureKind::Setup(e) => format!("could not start: {e}"),
            FailureKind::Panicked(m) => format!("panicked: {m}"),
            FailureKind::Diverged => format!(
                "views still differ at {} ms ({} differences)",
                self.at_ms, self.total_differences
            ),
            FailureKind::Slow { converged_after_ms } => format!(
                "converged only {converged_after_ms} ms after the heal (bound {} ms)",
                self.params.converge_within_ms
            ),
            FailureKind::Breached(what) => {
                format!("the adversary got in at {} ms: {what}", self.at_ms)
            }
        };
        let mut s = format!(
            "seed {} FAILED: {what}\n  params: {}\n",
            self.seed, self.params
        );
        if !self.differences.is_empty() {
            s.push_str("  first differences:\n");
            for d in &self.differences {
                s.push_str(&format!("    {d}\n"));
            }
        }
        if let Some(a) = &self.adversary {
            s.push_str(&format!("  adversary: {a}\n"));
        }
        s.push_str(&format!("  replay: {}", self.replay()));
        s
    }
}

/// `cargo run --release --bin ctsync-sim -- --seed N`, with the overrides
/// that make `params` differ from the seed's own (`--adversary on` gives
/// the adversary the seed's drawn parameters).
pub fn replay_command(seed: u64, params: &SimParams) -> String {
    let mut cmd = format!("cargo run --release --bin ctsync-sim -- --seed {seed}");
    let own = params_for_seed(seed);
    if params.mode != own.mode {
        cmd.push_str(&format!(" --mode {}", mode_name(params.mode)));
    }
    if params.nodes != own.nodes {
        cmd.push_str(&format!(" --nodes {}", params.nodes));
    }
    let on_off = |b: bool| if b { "on" } else { "off" };
    if params.auth != own.auth {
        cmd.push_str(&format!(" --auth {}", on_off(params.auth)));
    }
    if params.adversary != own.adversary {
        let drawn = adversary_for_seed(seed);
        let lasting = drawn.clone().lasting(params.quiet_ms);
        match &params.adversary {
            None => cmd.push_str(" --adversary off"),
            Some(a) if *a == drawn => cmd.push_str(" --adversary on"),
            Some(a) if *a == lasting => cmd.push_str(" --adversary lasting"),
            Some(_) => cmd.push_str(" --adversary on (with adjusted adversary parameters)"),
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_command_names_every_override() {
        let seed = (0..)
            .find(|&s| params_for_seed(s).adversary.is_some())
            .expect("an attacked seed");
        let own = params_for_seed(seed);
        let plain = format!("cargo run --release --bin ctsync-sim -- --seed {seed}");
        assert_eq!(replay_command(seed, &own), plain);
        let mut p = own.clone();
        p.auth = false;
        assert_eq!(replay_command(seed, &p), format!("{plain} --auth off"));
        p.adversary = None;
        assert_eq!(
            replay_command(seed, &p),
            format!("{plain} --auth off --adversary off")
        );
        let calm = (0..)
            .find(|&s| params_for_seed(s).adversary.is_none())
            .expect("a calm seed");
        let mut p = params_for_seed(calm);
        p.adversary = Some(adversary_for_seed(calm));
        assert!(replay_command(calm, &p).ends_with("--adversary on"));
        p.adversary = Some(adversary_for_seed(calm).lasting(p.quiet_ms));
        assert!(replay_command(calm, &p).ends_with("--adversary lasting"));
    }
}
