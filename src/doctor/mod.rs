//! `ctsyncd doctor`: reads the machine (the network namespace it runs in)
//! and, if it answers, the daemon, and reports what operators trip over
//! around the conntrack table and the sync, each finding with a severity,
//! the numbers seen and the line that fixes it.
//!
//! Owns: one run: read (`read`), decide (`checks`, pure and unit-tested
//! without a kernel), report (`finding`, `render`). Must not: change the
//! machine or the daemon; print or exit (`main.rs` does).

pub mod checks;
pub mod facts;
pub mod finding;
pub mod read;
pub mod render;

pub use finding::{Finding, Report, Severity};

use crate::config::Config;
use facts::DaemonState;
use read::DaemonReply;
use std::time::Duration;

/// How long the counters are watched (drops growing, new-flow rate).
pub const SAMPLE: Duration = Duration::from_secs(1);

/// Read everything, run every check.
pub fn run(config: &Config, upstream_idle_timeout_s: Option<u32>) -> Report {
    let settings = checks::Settings::from_config(config, upstream_idle_timeout_s);
    let first = read::daemon(&config.socket);
    let machine = read::machine(SAMPLE);
    let daemon = match first {
        DaemonReply::NoAnswer(reason) => DaemonState::NotRunning(reason),
        DaemonReply::Unreadable(reason) => DaemonState::Unreadable(reason),
        DaemonReply::Facts(first) => {
            let later = match read::daemon(&config.socket) {
                DaemonReply::Facts(later) => later,
                _ => first.clone(),
            };
            DaemonState::Running { first, later }
        }
    };
    Report::new(checks::run_all(&machine, &daemon, &settings))
}
