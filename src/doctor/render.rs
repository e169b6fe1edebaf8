//! The report as text for people and as JSON for scripts.
//!
//! Owns: both layouts. Must not: decide severities or read anything.

use super::finding::{Report, Severity};
use std::fmt::Write as _;

/// `--json`: `{"worst": .., "exit_code": .., "findings": [..]}`.
pub fn json(r: &Report) -> String {
    let v = serde_json::json!({
        "worst": r.worst,
        "exit_code": r.exit_code(),
        "findings": r.findings,
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// Text: problems first (worst first), then what was checked and is fine.
pub fn text(r: &Report) -> String {
    let mut s = String::new();
    let n = |sev| r.findings.iter().filter(|f| f.severity == sev).count();
    let _ = writeln!(
        s,
        "ctsyncd doctor: {} critical, {} warning, {} info, {} ok (exit {})\n",
        n(Severity::Critical),
        n(Severity::Warning),
        n(Severity::Info),
        n(Severity::Ok),
        r.exit_code()
    );
    let mut sorted: Vec<_> = r.findings.iter().collect();
    // Stable: within a severity, the checks keep their order.
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for f in sorted {
        let _ = writeln!(
            s,
            "{:<9} {:<24} {}",
            f.severity.name().to_uppercase(),
            f.check,
            f.summary
        );
        if !f.seen.is_empty() {
            let _ = writeln!(s, "{:<34} seen: {}", "", f.seen);
        }
        if let Some(fix) = &f.fix {
            let _ = writeln!(s, "{:<34} fix:  {}", "", fix);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::finding::Finding;

    #[test]
    fn text_puts_problems_first_and_json_carries_everything() {
        let r = Report::new(vec![
            Finding::new("a", Severity::Ok, "fine").seen("1"),
            Finding::new("b", Severity::Critical, "broken")
                .seen("2")
                .fix("do x"),
        ]);
        let t = text(&r);
        assert!(t.starts_with("ctsyncd doctor: 1 critical, 0 warning, 0 info, 1 ok (exit 2)"));
        let b = t.find("CRITICAL  b").unwrap();
        let a = t.find("OK        a").unwrap();
        assert!(b < a, "{t}");
        assert!(t.contains("fix:  do x"));
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(v["worst"], "critical");
        assert_eq!(v["exit_code"], 2);
        assert_eq!(v["findings"][1]["check"], "b");
        assert_eq!(v["findings"][1]["fix"], "do x");
        assert!(v["findings"][0].get("fix").is_none());
    }
}
