//! The Prometheus text exposition format (version 0.0.4): `# HELP` and
//! `# TYPE` lines, then the samples of each family, with escaped label
//! values and histograms written as cumulative `_bucket`s, `_sum` and
//! `_count`.
//!
//! Owns: the bytes of one exposition. Must not: know which metrics exist
//! (`render` does) or read anything. Written here rather than taken from
//! the `prometheus-client` crate: that crate writes OpenMetrics (its
//! counters are named without `_total` and get it appended, and it ends
//! with `# EOF`), and what is needed is a few lines of formatting over a
//! snapshot the daemon already has.

use std::fmt::Write as _;

/// A metric family's type, as `# TYPE` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One scrape's text, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    /// The family whose samples are being written.
    current: Option<&'static str>,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Start a family: its `# HELP` and `# TYPE` lines. Its samples follow
    /// (a family is written once, all its samples together).
    pub fn family(&mut self, name: &'static str, help: &str, kind: Kind) -> &mut Exposition {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
        self.current = Some(name);
        self
    }

    /// A sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Exposition {
        let name = self.current.unwrap_or("unnamed");
        self.line(name, "", labels, None, value.into());
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &'static str, help: &str, kind: Kind, value: impl Into<Value>) {
        self.family(name, help, kind).sample(&[], value);
    }

    /// A histogram's samples: `buckets` are (upper bound, cumulative count)
    /// pairs, lowest bound first; `+Inf` is `count`.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Exposition {
        let name = self.current.unwrap_or("unnamed");
        for (le, n) in buckets {
            let le = format_float(*le);
            self.line(name, "_bucket", labels, Some(&le), Value::Int(*n));
        }
        self.line(name, "_bucket", labels, Some("+Inf"), Value::Int(count));
        self.line(name, "_sum", labels, None, Value::Float(sum));
        self.line(name, "_count", labels, None, Value::Int(count));
        self
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn line(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        le: Option<&str>,
        value: Value,
    ) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (label, v)) in all.enumerate() {
            self.out.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.out, "{label}=\"{}\"", escape_label(v));
        }
        if !labels.is_empty() || le.is_some() {
            self.out.push('}');
        }
        self.out.push(' ');
        match value {
            Value::Int(n) => {
                let _ = write!(self.out, "{n}");
            }
            Value::Float(f) => self.out.push_str(&format_float(f)),
        }
        self.out.push('\n');
    }
}

/// A sample's value: counts stay exact integers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(u64::from(b))
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

/// A float as the format wants it: `+Inf`, `-Inf`, `NaN`, or Rust's
/// shortest round-trip decimal.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{f}")
    }
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A help text: backslash and line feed escaped.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("eth0\nx"), "eth0\\nx");
        assert_eq!(escape_help("a\\b\nc \"q\""), "a\\\\b\\nc \"q\"");
        let mut e = Exposition::new();
        e.family("ctsync_x_total", "Line one\nline two", Kind::Counter)
            .sample(&[("interface", "we\"ird\\dev\n")], 3u64);
        assert_eq!(
            e.finish(),
            "# HELP ctsync_x_total Line one\\nline two\n\
             # TYPE ctsync_x_total counter\n\
             ctsync_x_total{interface=\"we\\\"ird\\\\dev\\n\"} 3\n"
        );
    }

    #[test]
    fn samples_without_labels_and_floats() {
        let mut e = Exposition::new();
        e.single("ctsync_a", "A.", Kind::Gauge, 0.25);
        e.single("ctsync_b", "B.", Kind::Gauge, true);
        let out = e.finish();
        assert!(out.contains("\nctsync_a 0.25\n"), "{out}");
        assert!(out.ends_with("\nctsync_b 1\n"), "{out}");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(1.0), "1");
    }

    #[test]
    fn histogram_writes_buckets_then_inf_sum_count() {
        let mut e = Exposition::new();
        e.family("ctsync_h_seconds", "H.", Kind::Histogram)
            .histogram(&[("x", "y")], &[(0.005, 1), (0.5, 3)], 1.5, 4);
        assert_eq!(
            e.finish(),
            "# HELP ctsync_h_seconds H.\n\
             # TYPE ctsync_h_seconds histogram\n\
             ctsync_h_seconds_bucket{x=\"y\",le=\"0.005\"} 1\n\
             ctsync_h_seconds_bucket{x=\"y\",le=\"0.5\"} 3\n\
             ctsync_h_seconds_bucket{x=\"y\",le=\"+Inf\"} 4\n\
             ctsync_h_seconds_sum{x=\"y\"} 1.5\n\
             ctsync_h_seconds_count{x=\"y\"} 4\n"
        );
    }
}
