//! What `ctsyncd doctor` reports: findings with a severity, what was seen
//! and the fix, and the exit status the worst of them gives.
//!
//! Owns: `Severity`, `Finding`, `Report` and the exit-status rule. Must
//! not: read the machine or decide anything about it (the checks do).

use serde::Serialize;

/// How bad a finding is, mildest first (the order is the comparison).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Checked and fine.
    Ok,
    /// Worth knowing; nothing to do now (or nothing could be read).
    Info,
    /// Works today, breaks under load or at a failover.
    Warning,
    /// Broken now, or state is being lost.
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One finding of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's stable name (`table_full`, `tcp_loose`, ...): scripts
    /// and tests match on it.
    pub check: &'static str,
    pub severity: Severity,
    /// One line: what is wrong (or that it is fine).
    pub summary: String,
    /// The numbers behind it.
    pub seen: String,
    /// The exact line that fixes it (a sysctl, an nft rule, a config key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn new(check: &'static str, severity: Severity, summary: impl Into<String>) -> Finding {
        Finding {
            check,
            severity,
            summary: summary.into(),
            seen: String::new(),
            fix: None,
        }
    }

    pub fn seen(mut self, seen: impl Into<String>) -> Finding {
        self.seen = seen.into();
        self
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// Every finding of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The worst severity among the findings (`ok` when there are none).
    pub worst: Severity,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(findings: Vec<Finding>) -> Report {
        let worst = findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(Severity::Ok);
        Report { worst, findings }
    }

    /// The exit status: 0 when nothing is worse than info, 1 for a
    /// warning, 2 for a critical finding (the monitoring-plugin
    /// convention). A config that cannot be read is the usual error exit
    /// (1, the reason on stderr, no report on stdout).
    pub fn exit_code(&self) -> u8 {
        match self.worst {
            Severity::Ok | Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Critical => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_sets_the_exit_status() {
        let f = |s| Finding::new("x", s, "");
        assert_eq!(Report::new(vec![]).exit_code(), 0);
        assert_eq!(
            Report::new(vec![f(Severity::Ok), f(Severity::Info)]).exit_code(),
            0
        );
        assert_eq!(
            Report::new(vec![f(Severity::Warning), f(Severity::Ok)]).exit_code(),
            1
        );
        let r = Report::new(vec![f(Severity::Warning), f(Severity::Critical)]);
        assert_eq!((r.worst, r.exit_code()), (Severity::Critical, 2));
    }
}
