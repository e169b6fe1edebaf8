//! Warm standby drift: peers' flows the kernel refused, flows missing
//! from the kernel that stay missing, and mirrored flows the kernel lost.
//!
//! Owns: the `warm_standby` decision. Must not: talk to the daemon.

use super::Settings;
use crate::doctor::facts::DaemonState;
use crate::doctor::finding::{Finding, Severity};

pub fn warm_standby(d: &DaemonState, s: &Settings) -> Option<Finding> {
    let DaemonState::Running { first, later } = d else {
        return None;
    };
    let (Some(a), Some(b)) = (first.warm, later.warm) else {
        return s.warm_standby.then(|| {
            Finding::new(
                "warm_standby",
                Severity::Info,
                "warm standby is on in the config but the daemon reports no warm standby counters (started with another config?)",
            )
        });
    };
    let seen = format!(
        "written {}, failed {} (+{}), restored {} (+{}), missing from the kernel {} (was {})",
        b.written,
        b.failed,
        b.failed.saturating_sub(a.failed),
        b.restored,
        b.restored.saturating_sub(a.restored),
        b.pending,
        a.pending
    );
    if b.failed > 0 {
        return Some(
            Finding::new(
                "warm_standby",
                Severity::Warning,
                "the kernel refused some of the peers' flows: they are not there for a failover",
            )
            .seen(seen)
            .fix("ctsyncd -c writes them; a full table (table_full) or a missing NAT module are the usual causes"),
        );
    }
    if b.pending > 0 && a.pending > 0 && b.pending >= a.pending {
        return Some(
            Finding::new(
                "warm_standby",
                Severity::Warning,
                "peers' flows are missing from the kernel and not being written",
            )
            .seen(seen)
            .fix("ctsyncd -R re-reads the table and writes what is missing; ctsyncd -c commits everything"),
        );
    }
    if b.restored > 0 {
        return Some(
            Finding::new(
                "warm_standby",
                Severity::Info,
                "the kernel lost mirrored flows (expired or deleted) and they were written again",
            )
            .seen(seen)
            .fix("if this keeps growing: a longer [sync] warm_timeout_s"),
        );
    }
    Some(
        Finding::new(
            "warm_standby",
            Severity::Ok,
            "the kernel holds the peers' flows",
        )
        .seen(seen),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::facts::{DaemonFacts, WarmFacts};

    fn set(warm_standby: bool) -> Settings {
        Settings {
            warm_standby,
            ..Settings::for_tests()
        }
    }

    fn state(a: Option<WarmFacts>, b: Option<WarmFacts>) -> DaemonState {
        DaemonState::Running {
            first: Box::new(DaemonFacts {
                warm: a,
                ..DaemonFacts::default()
            }),
            later: Box::new(DaemonFacts {
                warm: b,
                ..DaemonFacts::default()
            }),
        }
    }

    fn w(failed: u64, restored: u64, pending: u64) -> Option<WarmFacts> {
        Some(WarmFacts {
            written: 10,
            failed,
            restored,
            pending,
        })
    }

    #[test]
    fn drift_by_kind() {
        let sev = |a, b| warm_standby(&state(a, b), &set(true)).map(|f| f.severity);
        assert_eq!(sev(w(0, 0, 0), w(0, 0, 0)), Some(Severity::Ok));
        assert_eq!(sev(w(0, 0, 0), w(2, 0, 0)), Some(Severity::Warning));
        assert_eq!(sev(w(0, 0, 5), w(0, 0, 5)), Some(Severity::Warning));
        // Being written: shrinking, or appeared only now.
        assert_eq!(sev(w(0, 0, 5), w(0, 0, 2)), Some(Severity::Ok));
        assert_eq!(sev(w(0, 0, 0), w(0, 0, 3)), Some(Severity::Ok));
        assert_eq!(sev(w(0, 1, 0), w(0, 1, 0)), Some(Severity::Info));
        assert_eq!(sev(None, None), Some(Severity::Info));
        assert_eq!(warm_standby(&state(None, None), &set(false)), None);
        assert_eq!(
            warm_standby(&DaemonState::NotRunning(String::new()), &set(true)),
            None
        );
    }
}
