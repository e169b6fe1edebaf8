//! The benchmark's result: one row per metric with both systems' figures,
//! their ratio (ctsyncd / conntrackd) and issue 4's target; printed as a
//! Markdown table and saved as JSON with the same keys.
//!
//! Must not: measure anything.

use super::host::Machine;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// How a row's target is judged.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Target {
    None,
    /// ratio (ctsyncd / conntrackd) at least this.
    RatioAtLeast(f64),
    /// ratio at most this.
    RatioAtMost(f64),
    /// ctsyncd's own figure at least this.
    CtsyncdAtLeast(f64),
    /// ctsyncd's own figure at most this.
    CtsyncdAtMost(f64),
    /// ctsyncd's own figure below this.
    CtsyncdBelow(f64),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::None => "–".into(),
            Target::RatioAtLeast(x) => format!("ratio ≥ {x}"),
            Target::RatioAtMost(x) => format!("ratio ≤ {x}"),
            Target::CtsyncdAtLeast(x) => format!("ctsyncd ≥ {x}"),
            Target::CtsyncdAtMost(x) => format!("ctsyncd ≤ {x}"),
            Target::CtsyncdBelow(x) => format!("ctsyncd < {x}"),
        }
    }
}

/// One metric.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub key: &'static str,
    pub metric: String,
    pub ctsyncd: Option<f64>,
    pub conntrackd: Option<f64>,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

impl Row {
    /// A row; the ratio is ctsyncd / conntrackd when both exist and
    /// `with_ratio`.
    pub fn new(
        key: &'static str,
        metric: impl Into<String>,
        ctsyncd: Option<f64>,
        conntrackd: Option<f64>,
        with_ratio: bool,
        target: Target,
    ) -> Row {
        let ratio = match (with_ratio, ctsyncd, conntrackd) {
            (true, Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        let met = match target {
            Target::None => None,
            Target::RatioAtLeast(x) => ratio.map(|r| r >= x),
            Target::RatioAtMost(x) => ratio.map(|r| r <= x),
            Target::CtsyncdAtLeast(x) => ctsyncd.map(|v| v >= x),
            Target::CtsyncdAtMost(x) => ctsyncd.map(|v| v <= x),
            Target::CtsyncdBelow(x) => ctsyncd.map(|v| v < x),
        };
        Row {
            key,
            metric: metric.into(),
            ctsyncd,
            conntrackd,
            ratio,
            target: target.describe(),
            met,
        }
    }
}

/// Everything one run produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub flows: usize,
    pub machine: Machine,
    pub rows: Vec<Row>,
    /// What went wrong or is worth knowing (incomplete phases, errors).
    pub notes: Vec<String>,
}

/// A number as a person reads it: thousands grouped, a few significant
/// digits for small values.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 999.5 {
        let s = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), fmt_num)
}

impl Report {
    /// The Markdown table, the machine line and the notes.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "ctsyncd vs conntrackd 1.4.7, N = {} flows; {} cores ({}), kernel {}, \
             nf_conntrack_buckets {}, nf_conntrack_max {}\n\n",
            fmt_num(self.flows as f64),
            m.nproc,
            m.cpu,
            m.kernel,
            m.nf_conntrack_buckets,
            m.nf_conntrack_max
        );
        s.push_str("| metric | ctsyncd | conntrackd | ratio | target | met |\n");
        s.push_str("|---|---:|---:|---:|---|---|\n");
        for r in &self.rows {
            let ratio = r.ratio.map_or_else(|| "–".into(), |x| format!("{x:.2}×"));
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "–",
            };
            s.push_str(&format!(
                "| {} | {} | {} | {ratio} | {} | {met} |\n",
                r.metric,
                cell(r.ctsyncd),
                cell(r.conntrackd),
                r.target
            ));
        }
        if !self.notes.is_empty() {
            s.push_str("\nNotes:\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }

    /// The same as JSON: `metrics` keyed by each row's key.
    pub fn to_json(&self) -> Value {
        let mut metrics = Map::new();
        for r in &self.rows {
            metrics.insert(
                r.key.to_string(),
                json!({
                    "metric": r.metric,
                    "ctsyncd": r.ctsyncd,
                    "conntrackd": r.conntrackd,
                    "ratio": r.ratio,
                    "target": r.target,
                    "met": r.met,
                }),
            );
        }
        json!({
            "flows": self.flows,
            "machine": self.machine,
            "metrics": metrics,
            "notes": self.notes,
        })
    }
}
