//! What one simulated run looks like: the cluster size, the mode, the
//! network's faults and the workload, all drawn from a seed.
//!
//! Owns: `SimParams` and `params_for_seed`. Must not: run anything or keep
//! state; the same seed always gives the same parameters.

use super::adversary::AdversaryParams;
use super::rng::Rng;
use crate::sync::Mode;
use std::fmt;

/// The knobs of one run. Every field is drawn by `params_for_seed`; callers
/// may override some (the CLI's `--mode` and `--nodes`) before running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimParams {
    /// Nodes in the group (every datagram goes to every other node).
    pub nodes: usize,
    pub mode: Mode,
    /// Chance that one copy of a datagram is lost, in percent (0..=50).
    pub loss: u32,
    /// Chance that a datagram is delivered twice, in percent.
    pub dup: u32,
    /// Most extra delay of one datagram, in ms (random per copy, so
    /// datagrams overtake each other); 0 keeps them in order.
    pub reorder: u64,
    /// Whether nodes are cut off (both directions) for random intervals.
    pub partitions: bool,
    /// Whether nodes crash and come back as a new Node with a new epoch.
    pub restarts: bool,
    /// The sync window (the resend queue's bound): small ones force the
    /// resume-and-bulk path.
    pub window: usize,
    /// Distinct flows each node may own at once.
    pub flows_per_node: u32,
    /// Kernel changes (create, update, delete) per node.
    pub ops_per_node: u32,
    /// How long the workload and the faults last (virtual ms).
    pub workload_ms: u64,
    /// How long the healed, idle network runs before the final check.
    pub quiet_ms: u64,
    /// Every view must hold, continuously to the end, this soon after the
    /// heal (a liveness bound; must be below `quiet_ms`).
    pub converge_within_ms: u64,
    /// Links per node: separate paths between every pair of nodes. Data
    /// goes out on the lowest one that works (keepalives on all).
    pub links: usize,
    /// With two links or more: link 0 is cut for random intervals during
    /// the workload (longer ones than the peer timeout among them), and
    /// loses `loss` percent besides, so data must fail over to link 1.
    pub link_faults: bool,
    /// The network's loss, duplication and reordering go on after the
    /// heal (partitions end and crashed nodes restart): views must agree
    /// through steady loss.
    pub steady_loss: bool,
    /// Only the first `writers` nodes change their tables (0: every node).
    pub writers: usize,
    /// Every node's `digest_interval_ms` (`None`: the daemon's default).
    pub digest_interval_ms: Option<u64>,
    /// Authenticated sync: every node holds the same key ring (drawn from
    /// the seed) and seals every datagram.
    pub auth: bool,
    /// An adversary on the segment records, replays, forges and floods
    /// (see `sim::adversary`). The seed sweep runs it only with `auth`:
    /// without keys it gets in by design (the negative control).
    pub adversary: Option<AdversaryParams>,
}

impl fmt::Display for SimParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nodes={} mode={} loss={}% dup={}% reorder<={}ms partitions={} restarts={} \
             window={} flows/node={} ops/node={} workload={}ms quiet={}ms converge<={}ms \
             links={} link_faults={} steady_loss={} writers={} digest_interval={:?} auth={}",
            self.nodes,
            mode_name(self.mode),
            self.loss,
            self.dup,
            self.reorder,
            self.partitions,
            self.restarts,
            self.window,
            self.flows_per_node,
            self.ops_per_node,
            self.workload_ms,
            self.quiet_ms,
            self.converge_within_ms,
            self.links,
            self.link_faults,
            self.steady_loss,
            self.writers,
            self.digest_interval_ms,
            self.auth
        )?;
        match &self.adversary {
            Some(a) => write!(f, " adversary: {a}"),
            None => write!(f, " adversary=none"),
        }
    }
}

/// The mode as the CLI and the config spell it.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Ftfw => "ftfw",
        Mode::Notrack => "notrack",
        Mode::Alarm => "alarm",
    }
}

impl SimParams {
    /// The same run in another mode, with the quiet phase and the
    /// convergence bound that mode needs: ALARM repairs a lost update only
    /// at the next refresh and a lost delete only when the peer's copy
    /// expires (defaults: every 60 s, after 180 s), so its runs go quiet for
    /// longer.
    pub fn with_mode(mut self, mode: Mode) -> SimParams {
        self.mode = mode;
        let (quiet_ms, converge_within_ms) = match mode {
            Mode::Ftfw | Mode::Notrack => (30_000, 20_000),
            Mode::Alarm => (400_000, 300_000),
        };
        self.quiet_ms = quiet_ms;
        self.converge_within_ms = converge_within_ms;
        self
    }
}

/// Parse `ftfw`, `notrack` or `alarm`.
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "ftfw" => Some(Mode::Ftfw),
        "notrack" => Some(Mode::Notrack),
        "alarm" => Some(Mode::Alarm),
        _ => None,
    }
}

/// Purpose tags of the parameter streams (see `Rng::stream`): the
/// authentication and adversary draws have a stream of their own, so that
/// adding them left every other parameter of every seed as it was.
const PARAMS_STREAM: u64 = 1;
const ATTACK_PARAMS_STREAM: u64 = 8;

/// Seeds (in percent) whose nodes seal their datagrams. Keyed runs cost
/// about three times a keyless one (the sealing and opening) and attacked
/// ones four times, so the shares are small: the sweeps of thousands of
/// seeds still meet hundreds of attacked ones, at a fifth more time.
const AUTH_SHARE: u32 = 10;
/// Of those, the seeds (in percent) with an adversary on the segment.
const ADVERSARY_SHARE: u32 = 50;

/// Whether `seed`'s cluster is keyed, and the adversary it faces if any.
/// Every seed draws adversary parameters (`ctsync-sim --adversary on` uses
/// them), keyed or not; only keyed seeds are given one.
pub fn attack_for_seed(seed: u64) -> (bool, Option<AdversaryParams>) {
    let mut r = Rng::stream(seed, ATTACK_PARAMS_STREAM);
    let auth = r.chance(AUTH_SHARE);
    let attacked = r.chance(ADVERSARY_SHARE);
    let params = AdversaryParams::draw(&mut r);
    (auth, (auth && attacked).then_some(params))
}

/// The adversary parameters `seed` draws (whether or not it is attacked).
pub fn adversary_for_seed(seed: u64) -> AdversaryParams {
    let mut r = Rng::stream(seed, ATTACK_PARAMS_STREAM);
    r.chance(AUTH_SHARE);
    r.chance(ADVERSARY_SHARE);
    AdversaryParams::draw(&mut r)
}

/// The parameters of `seed`: 2 or 3 nodes, FTFW, and faults of every kind
/// in random strengths; some seeds keyed, half of those attacked (the
/// other modes' sweeps keep both: `with_mode` changes only the mode's
/// timing). Small on purpose: thousands of seeds run per minute.
pub fn params_for_seed(seed: u64) -> SimParams {
    let mut r = Rng::stream(seed, PARAMS_STREAM);
    let nodes = if r.chance(50) { 2 } else { 3 };
    // A quarter of the runs are clean in each respect, so the plain paths
    // stay covered too.
    let loss = if r.chance(75) {
        r.range(1, 50) as u32
    } else {
        0
    };
    let dup = if r.chance(60) {
        r.range(1, 25) as u32
    } else {
        0
    };
    let reorder = if r.chance(75) { r.range(1, 200) } else { 0 };
    let partitions = r.chance(50);
    let restarts = r.chance(50);
    let window = match r.below(4) {
        0 => r.range(2, 8) as usize,
        1 => 64,
        _ => 4096,
    };
    let p = SimParams {
        nodes,
        mode: Mode::Ftfw,
        loss,
        dup,
        reorder,
        partitions,
        restarts,
        window,
        flows_per_node: r.range(8, 40) as u32,
        ops_per_node: r.range(10, 80) as u32,
        workload_ms: r.range(1_000, 6_000),
        quiet_ms: 0,
        converge_within_ms: 0,
        links: 1,
        link_faults: false,
        steady_loss: false,
        writers: 0,
        digest_interval_ms: None,
        auth: false,
        adversary: None,
    };
    let (auth, adversary) = attack_for_seed(seed);
    SimParams {
        auth,
        adversary,
        ..p.with_mode(Mode::Ftfw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_a_function_of_the_seed_and_vary() {
        assert_eq!(params_for_seed(42), params_for_seed(42));
        let all: Vec<SimParams> = (0..200).map(params_for_seed).collect();
        assert!(all.iter().any(|p| p.nodes == 2) && all.iter().any(|p| p.nodes == 3));
        assert!(all.iter().any(|p| p.partitions) && all.iter().any(|p| p.restarts));
        assert!(all.iter().all(|p| p.loss <= 50));
        assert!(all.iter().any(|p| p.loss >= 40));
        assert!(all
            .iter()
            .all(|p| p.converge_within_ms < p.quiet_ms && p.mode == Mode::Ftfw));
        let many: Vec<SimParams> = (0..2000).map(params_for_seed).collect();
        let keyed = many.iter().filter(|p| p.auth).count();
        let attacked = many.iter().filter(|p| p.adversary.is_some()).count();
        assert!((150..=250).contains(&keyed), "{keyed} keyed of 2000");
        assert!(
            (60..=140).contains(&attacked),
            "{attacked} attacked of 2000"
        );
        assert!(many.iter().all(|p| p.adversary.is_none() || p.auth));
        for (seed, p) in many.iter().enumerate().take(300) {
            let a = adversary_for_seed(seed as u64);
            assert!(p.adversary.as_ref().is_none_or(|x| *x == a));
            let m = p.clone().with_mode(Mode::Alarm);
            assert_eq!((m.auth, &m.adversary), (p.auth, &p.adversary));
        }
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [Mode::Ftfw, Mode::Notrack, Mode::Alarm] {
            assert_eq!(parse_mode(mode_name(m)), Some(m));
        }
        assert_eq!(parse_mode("FTFW"), None);
    }
}
