//! The failover benchmark's result: what each (N, system) run measured, the
//! table that puts the systems side by side per N with their ratios to
//! conntrackd and the goals, and the same as JSON.
//!
//! Must not: measure anything, or judge a goal met when a figure is missing
//! (a missing figure is "n/a", and a goal that needs it is not met).

use super::System;
use crate::bench::host::Machine;
use crate::bench::report::fmt_num;
use serde::Serialize;
use serde_json::{json, Value};

/// What one run (one N, one system) measured. Times are seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub n: usize,
    pub system: &'static str,
    /// Why the run stopped before it measured everything.
    pub error: Option<String>,
    /// What is worth knowing about the run (incomplete phases).
    pub notes: Vec<String>,
    /// The live test flows (TCP and UDP, IPv4 and IPv6).
    pub test_flows: usize,
    /// Writing the N filler flows into fwa's kernel.
    pub fill_s: Option<f64>,
    /// From the fill's end until fwa's daemon had cached all N.
    pub a_cached_s: Option<f64>,
    /// From fwb's keepalived start until fwb's external cache held all
    /// N + test flows.
    pub b_external_s: Option<f64>,
    /// Warm standby: from fwb's keepalived start until its kernel held them.
    pub b_mirror_s: Option<f64>,
    /// fwb's external cache and kernel table at the failure.
    pub b_external_at_failure: Option<u64>,
    pub b_kernel_at_failure: Option<u64>,
    pub tcp_survived: Option<usize>,
    pub tcp_total: Option<usize>,
    pub udp_push_resumed: Option<usize>,
    pub udp_push_total: Option<usize>,
    pub udp_echo_kept: Option<usize>,
    pub udp_echo_total: Option<usize>,
    /// fwb's MASTER event minus the failure.
    pub detection_s: Option<f64>,
    /// The longest gap in any UDP server-push stream around the failover.
    pub blackout_s: Option<f64>,
    /// The longest gap of each UDP (push and echo) and TCP echo stream
    /// around the failover, client side: (kind, seconds). Streams whose
    /// flows were committed late show it here.
    pub stream_gaps_s: Vec<(String, f64)>,
    /// The notify script's `-c` on fwb, from the timing wrapper.
    pub commit_s: Option<f64>,
    /// Flows that `-c` wrote into fwb's kernel (ctsyncd's `commit_ok`,
    /// conntrackd's "Committed N new entries").
    pub commit_wrote: Option<u64>,
    /// From fwb's MASTER event to the start of that `-c`.
    pub commit_start_after_master_s: Option<f64>,
    /// The kernel's ceiling for these flows (the faster shape of the
    /// start of the run) measured again right after this lab was torn
    /// down: the kernel's rate drifts by more than the commit's distance
    /// from it over a run of several minutes.
    pub ceiling_after: Option<f64>,
    /// The same, measured right before this lab was set up (after the
    /// machine was idle): with `ceiling_after`, it brackets the commit.
    pub ceiling_before: Option<f64>,
    /// From the failure until fwb's kernel held N + test flows (0 if it
    /// already did).
    pub kernel_complete_s: Option<f64>,
    /// Crash only: deleting the filler from the frozen fwa's kernel before
    /// the crash (see the bench's module doc).
    pub crash_prep_s: Option<f64>,
}

impl Outcome {
    pub fn new(n: usize, system: System) -> Outcome {
        Outcome {
            n,
            system: system.name(),
            ..Outcome::default()
        }
    }

    /// Flows per second the commit wrote (None when it wrote none).
    pub fn commit_rate(&self) -> Option<f64> {
        let wrote = self.commit_wrote.filter(|w| *w > 0)?;
        Some(wrote as f64 / self.commit_s.filter(|s| *s > 0.0)?)
    }

    pub fn blackout_minus_detection_s(&self) -> Option<f64> {
        Some(self.blackout_s? - self.detection_s?)
    }

    /// Every TCP connection survived and every UDP push stream resumed.
    pub fn all_survived(&self) -> Option<bool> {
        Some(
            self.tcp_survived? == self.tcp_total?
                && self.udp_push_resumed? == self.udp_push_total?
                && self.tcp_total? > 0,
        )
    }
}

/// One cell of the table.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Num(f64),
    /// `a/b`.
    Frac(usize, usize),
    Missing,
}

impl Cell {
    fn num(v: Option<f64>) -> Cell {
        v.map_or(Cell::Missing, Cell::Num)
    }

    fn frac(a: Option<usize>, b: Option<usize>) -> Cell {
        match (a, b) {
            (Some(a), Some(b)) => Cell::Frac(a, b),
            _ => Cell::Missing,
        }
    }

    fn text(&self) -> String {
        match self {
            Cell::Num(v) => fmt_num(*v),
            Cell::Frac(a, b) => format!("{a}/{b}"),
            Cell::Missing => "n/a".into(),
        }
    }

    fn value(&self) -> Value {
        match self {
            Cell::Num(v) => json!(v),
            Cell::Frac(a, b) => json!({ "of": b, "ok": a }),
            Cell::Missing => Value::Null,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Num(v) => Some(*v),
            _ => None,
        }
    }
}

/// One metric for one N: a cell per system run, ratios to conntrackd.
#[derive(Clone, Debug)]
pub struct Row {
    pub n: usize,
    pub key: &'static str,
    pub metric: &'static str,
    /// In the order of `Report::systems`.
    pub cells: Vec<(System, Cell)>,
    /// Show ctsync ÷ conntrackd.
    pub with_ratio: bool,
    /// The goals this row carries, with their verdicts.
    pub goals: Vec<Goal>,
}

/// A goal of the issue, judged on one N.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub text: String,
    /// None: a figure it needs is missing (then it is not met either).
    pub met: Option<bool>,
}

impl Row {
    pub fn cell(&self, system: System) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|(s, _)| *s == system)
            .map(|(_, c)| c)
    }

    /// `system`'s figure ÷ conntrackd's, when both are numbers.
    pub fn ratio(&self, system: System) -> Option<f64> {
        if !self.with_ratio {
            return None;
        }
        let a = self.cell(system)?.as_f64()?;
        let b = self.cell(System::Conntrackd)?.as_f64()?;
        (b != 0.0).then(|| a / b)
    }
}

/// The kernel's own speed for the filler flows of one N (measured once
/// per N, before the systems run): flows per second.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ceiling {
    pub n: usize,
    pub one_socket: Option<f64>,
    /// With one writer per core.
    pub per_core: Option<f64>,
    pub cores: usize,
    pub error: Option<String>,
}

impl Ceiling {
    /// The faster of the two shapes: its writer sockets and its rate.
    pub fn best_shape(&self) -> Option<(usize, f64)> {
        match (self.one_socket, self.per_core) {
            (Some(one), Some(per_core)) if per_core > one => Some((self.cores, per_core)),
            (Some(one), _) => Some((1, one)),
            (None, Some(per_core)) => Some((self.cores, per_core)),
            (None, None) => None,
        }
    }

    /// The faster shape's rate: what the kernel can take.
    pub fn best(&self) -> Option<f64> {
        self.best_shape().map(|(_, rate)| rate)
    }
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct Report {
    pub machine: Machine,
    pub failure: &'static str,
    pub flows: Vec<usize>,
    pub systems: Vec<System>,
    pub outcomes: Vec<Outcome>,
    pub ceilings: Vec<Ceiling>,
    pub notes: Vec<String>,
    /// Wall-clock seconds the whole run took.
    pub took_s: f64,
}

/// The goals' bounds.
pub const WARM_EXTRA_S: f64 = 0.100;
pub const COMMIT_EXTRA_S: f64 = 0.200;
pub const COMMIT_RATIO: f64 = 0.25;

impl Report {
    pub fn outcome(&self, n: usize, system: System) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|o| o.n == n && o.system == system.name())
    }

    fn cells(&self, n: usize, f: impl Fn(&Outcome) -> Cell) -> Vec<(System, Cell)> {
        self.systems
            .iter()
            .map(|&s| (s, self.outcome(n, s).map_or(Cell::Missing, &f)))
            .collect()
    }

    /// Every row, N by N.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for &n in &self.flows {
            let o = |s: System| self.outcome(n, s);
            let has = |s: System| self.systems.contains(&s);
            let mut row =
                |key, metric, with_ratio, goals: Vec<Goal>, f: &dyn Fn(&Outcome) -> Cell| {
                    rows.push(Row {
                        n,
                        key,
                        metric,
                        cells: self.cells(n, f),
                        with_ratio,
                        goals,
                    })
                };
            let warm_survived = if has(System::CtsyncWarm) {
                vec![Goal {
                    text: "warm: 100%".into(),
                    met: o(System::CtsyncWarm).and_then(Outcome::all_survived),
                }]
            } else {
                Vec::new()
            };
            row(
                "tcp_survived",
                "TCP connections surviving",
                false,
                warm_survived.clone(),
                &|o| Cell::frac(o.tcp_survived, o.tcp_total),
            );
            row(
                "udp_push_resumed",
                "UDP push streams resumed",
                false,
                warm_survived,
                &|o| Cell::frac(o.udp_push_resumed, o.udp_push_total),
            );
            row(
                "udp_echo_kept",
                "UDP echo streams kept their NAT binding",
                false,
                Vec::new(),
                &|o| Cell::frac(o.udp_echo_kept, o.udp_echo_total),
            );
            row(
                "detection_s",
                "VRRP detection: fwb MASTER − failure (s)",
                false,
                Vec::new(),
                &|o| Cell::num(o.detection_s),
            );
            row(
                "blackout_s",
                "blackout: longest gap in the UDP push streams (s)",
                true,
                Vec::new(),
                &|o| Cell::num(o.blackout_s),
            );
            let mut goals = Vec::new();
            let extra = |s: System| o(s).and_then(Outcome::blackout_minus_detection_s);
            if has(System::CtsyncCommit) {
                goals.push(Goal {
                    text: format!("commit ≤ {:.0} ms", COMMIT_EXTRA_S * 1000.0),
                    met: extra(System::CtsyncCommit).map(|v| v <= COMMIT_EXTRA_S),
                });
            }
            if has(System::CtsyncWarm) {
                goals.push(Goal {
                    text: format!("warm ≤ {:.0} ms", WARM_EXTRA_S * 1000.0),
                    met: extra(System::CtsyncWarm).map(|v| v <= WARM_EXTRA_S),
                });
            }
            row(
                "blackout_minus_detection_ms",
                "blackout − detection (ms)",
                false,
                goals,
                &|o| Cell::num(o.blackout_minus_detection_s().map(|v| v * 1000.0)),
            );
            let commit_ratio = |this: &Report| -> Option<f64> {
                let a = this.outcome(n, System::CtsyncCommit)?.commit_s?;
                let b = this.outcome(n, System::Conntrackd)?.commit_s?;
                (b > 0.0).then(|| a / b)
            };
            let goals = if has(System::CtsyncCommit) && has(System::Conntrackd) {
                vec![Goal {
                    text: format!("commit ≤ {COMMIT_RATIO}× conntrackd"),
                    met: commit_ratio(self).map(|r| r <= COMMIT_RATIO),
                }]
            } else {
                Vec::new()
            };
            row(
                "commit_s",
                "-c on fwb, start to end (s)",
                true,
                goals,
                &|o| Cell::num(o.commit_s),
            );
            let ceiling = self
                .ceilings
                .iter()
                .find(|c| c.n == n)
                .and_then(Ceiling::best);
            row(
                "commit_rate",
                "-c's rate: flows written ÷ its duration (flows/s)",
                true,
                Vec::new(),
                &|o| Cell::num(o.commit_rate()),
            );
            row(
                "commit_vs_ceiling",
                "-c's rate ÷ the kernel's ceiling for these flows",
                false,
                Vec::new(),
                &|o| Cell::num(o.commit_rate().zip(ceiling).map(|(r, c)| r / c)),
            );
            row(
                "commit_vs_ceiling_after",
                "-c's rate ÷ that ceiling measured again right after the lab",
                false,
                Vec::new(),
                &|o| Cell::num(o.commit_rate().zip(o.ceiling_after).map(|(r, c)| r / c)),
            );
            row(
                "commit_vs_ceiling_around",
                "-c's rate ÷ the geometric mean of that ceiling right before the lab and right after it",
                false,
                Vec::new(),
                &|o| {
                    let around = o
                        .ceiling_before
                        .zip(o.ceiling_after)
                        .map(|(before, after)| (before * after).sqrt());
                    Cell::num(o.commit_rate().zip(around).map(|(r, c)| r / c))
                },
            );
            row(
                "commit_wrote",
                "flows that -c wrote into fwb's kernel",
                false,
                Vec::new(),
                &|o| Cell::num(o.commit_wrote.map(|v| v as f64)),
            );
            row(
                "commit_start_after_master_ms",
                "-c started after MASTER (ms)",
                false,
                Vec::new(),
                &|o| Cell::num(o.commit_start_after_master_s.map(|v| v * 1000.0)),
            );
            row(
                "kernel_complete_s",
                "failure → fwb's kernel holds every flow (s)",
                true,
                Vec::new(),
                &|o| Cell::num(o.kernel_complete_s),
            );
            row(
                "b_kernel_at_failure",
                "flows in fwb's kernel at the failure",
                false,
                Vec::new(),
                &|o| Cell::num(o.b_kernel_at_failure.map(|v| v as f64)),
            );
            row(
                "b_external_s",
                "fwb started → its cache holds every flow (s)",
                true,
                Vec::new(),
                &|o| Cell::num(o.b_external_s),
            );
            row(
                "fill_s",
                "writing the N filler flows into fwa (s)",
                false,
                Vec::new(),
                &|o| Cell::num(o.fill_s),
            );
        }
        rows
    }

    /// Every goal verdict, N by N, each once (the two survival rows carry
    /// the same goal).
    pub fn goals(&self) -> Vec<(usize, Goal)> {
        let mut out: Vec<(usize, Goal)> = Vec::new();
        for r in self.rows() {
            for g in r.goals {
                if !out.iter().any(|(n, h)| *n == r.n && h.text == g.text) {
                    out.push((r.n, g));
                }
            }
        }
        out
    }

    /// The Markdown table, the machine line, the goals and the notes.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "Failover benchmark: ctsyncd (commit mode, warm standby) vs conntrackd 1.4.7; \
             failure: {}; {} cores ({}), kernel {}, nf_conntrack_buckets {}, \
             nf_conntrack_max {}; whole run {:.0} s\n\n",
            self.failure,
            m.nproc,
            m.cpu,
            m.kernel,
            m.nf_conntrack_buckets,
            m.nf_conntrack_max,
            self.took_s
        );
        let mut header = String::from("| N | metric |");
        let mut rule = String::from("|---:|---|");
        for sys in &self.systems {
            header.push_str(&format!(" {} |", sys.name()));
            rule.push_str("---:|");
        }
        let ratios: Vec<System> = self
            .systems
            .iter()
            .copied()
            .filter(|s| *s != System::Conntrackd && self.systems.contains(&System::Conntrackd))
            .collect();
        for sys in &ratios {
            header.push_str(&format!(" {} ÷ conntrackd |", sys.short()));
            rule.push_str("---:|");
        }
        header.push_str(" goal | met |");
        rule.push_str("---|---|");
        s.push_str(&header);
        s.push('\n');
        s.push_str(&rule);
        s.push('\n');
        for r in self.rows() {
            let mut line = format!("| {} | {} |", fmt_num(r.n as f64), r.metric);
            for (_, c) in &r.cells {
                line.push_str(&format!(" {} |", c.text()));
            }
            for sys in &ratios {
                let v = r
                    .ratio(*sys)
                    .map_or_else(|| "–".to_string(), |x| format!("{x:.2}×"));
                line.push_str(&format!(" {v} |"));
            }
            let goal = if r.goals.is_empty() {
                "–".to_string()
            } else {
                r.goals
                    .iter()
                    .map(|g| g.text.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let met = if r.goals.is_empty() {
                "–".to_string()
            } else {
                r.goals
                    .iter()
                    .map(|g| match g.met {
                        Some(true) => "yes",
                        Some(false) => "NO",
                        None => "n/a (NO)",
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            line.push_str(&format!(" {goal} | {met} |\n"));
            s.push_str(&line);
        }
        for c in &self.ceilings {
            let rate = |r: Option<f64>| r.map_or_else(|| "n/a".to_string(), fmt_num);
            s.push_str(&format!(
                "\nKernel ceiling for the N = {} filler flows (NAT'd, the firewalls' ruleset, \
                 every flow with the event extension, nobody listening, into an empty namespace): \
                 {} flows/s with one writer socket, \
                 {} flows/s with {} (one per core){}.\n",
                fmt_num(c.n as f64),
                rate(c.one_socket),
                rate(c.per_core),
                c.cores,
                c.best().map_or(String::new(), |r| format!(
                    "; no commit of them can take less than {:.2} s",
                    c.n as f64 / r
                ))
            ));
        }
        let mut notes: Vec<String> = self.notes.clone();
        for o in &self.outcomes {
            if let Some(e) = &o.error {
                notes.push(format!("N = {}, {}: run failed: {e}", o.n, o.system));
            }
            for n in &o.notes {
                notes.push(format!("N = {}, {}: {n}", o.n, o.system));
            }
        }
        if !notes.is_empty() {
            s.push_str("\nNotes:\n");
            for n in notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }

    /// The same as JSON: the machine, every run's figures, and the rows
    /// (keyed `N/key`) with their cells, ratios and goals.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows()
            .iter()
            .map(|r| {
                let cells: serde_json::Map<String, Value> = r
                    .cells
                    .iter()
                    .map(|(s, c)| (s.name().to_string(), c.value()))
                    .collect();
                let ratios: serde_json::Map<String, Value> = r
                    .cells
                    .iter()
                    .filter(|(s, _)| *s != System::Conntrackd)
                    .filter_map(|(s, _)| Some((s.name().to_string(), json!(r.ratio(*s)?))))
                    .collect();
                json!({
                    "n": r.n,
                    "key": r.key,
                    "metric": r.metric,
                    "values": cells,
                    "ratio_to_conntrackd": ratios,
                    "goals": r.goals,
                })
            })
            .collect();
        json!({
            "benchmark": "failover",
            "failure": self.failure,
            "flows": self.flows,
            "systems": self.systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "machine": self.machine,
            "took_s": self.took_s,
            "runs": self.outcomes,
            "kernel_ceilings": self.ceilings,
            "rows": rows,
            "notes": self.notes,
        })
    }
}
