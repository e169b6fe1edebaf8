//! `[daemon] nice` and `[daemon] scheduler`: the daemon's CPU priority,
//! set once at start on the main thread before any other thread exists,
//! so that every thread inherits it (both are per thread on Linux).
//!
//! Owns: setpriority(2) and sched_setscheduler(2) for the configured
//! values, and the warning when the privilege is missing (as conntrackd,
//! which warns and runs on). Must not: fail the start.

use crate::config::{DaemonConfig, SchedPolicy, Scheduler};

/// What applying the configured priority did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    pub nice: Option<Result<i32, String>>,
    pub scheduler: Option<Result<String, String>>,
}

/// Apply the configured nice value and scheduler to the calling thread
/// (call it before starting threads), and log the outcome.
pub(super) fn apply(config: &DaemonConfig) -> Applied {
    let applied = Applied {
        nice: config.nice.map(set_nice),
        scheduler: config.scheduler.map(set_scheduler),
    };
    match &applied.nice {
        Some(Ok(nice)) => tracing::info!(nice, "nice value set"),
        Some(Err(e)) => tracing::warn!(
            "[daemon] nice not applied: {e} (a negative value needs CAP_SYS_NICE); running at the inherited priority"
        ),
        None => {}
    }
    match &applied.scheduler {
        Some(Ok(what)) => tracing::info!(scheduler = %what, "scheduler set"),
        Some(Err(e)) => tracing::warn!(
            "[daemon] scheduler not applied: {e} (a real-time policy needs CAP_SYS_NICE); running under the inherited policy"
        ),
        None => {}
    }
    applied
}

fn set_nice(nice: i32) -> Result<i32, String> {
    // SAFETY: setpriority takes no pointers; 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(format!(
            "setpriority({nice}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(nice)
}

/// The policy number and priority sched_setscheduler takes.
fn policy(s: Scheduler) -> (libc::c_int, libc::c_int, &'static str) {
    match s.policy {
        SchedPolicy::Other => (libc::SCHED_OTHER, 0, "other"),
        SchedPolicy::Rr => (libc::SCHED_RR, libc::c_int::from(s.priority), "rr"),
        SchedPolicy::Fifo => (libc::SCHED_FIFO, libc::c_int::from(s.priority), "fifo"),
    }
}

fn set_scheduler(s: Scheduler) -> Result<String, String> {
    let (policy, priority, name) = policy(s);
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; 0 is
    // the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(format!(
            "sched_setscheduler({name}, {priority}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(format!("{name} priority {priority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_map_to_the_kernels() {
        let rr = Scheduler {
            policy: SchedPolicy::Rr,
            priority: 50,
        };
        assert_eq!(policy(rr), (libc::SCHED_RR, 50, "rr"));
        let fifo = Scheduler {
            policy: SchedPolicy::Fifo,
            priority: 1,
        };
        assert_eq!(policy(fifo), (libc::SCHED_FIFO, 1, "fifo"));
        let other = Scheduler {
            policy: SchedPolicy::Other,
            priority: 0,
        };
        assert_eq!(policy(other).0, libc::SCHED_OTHER);
    }

    #[test]
    fn nice_applies_to_the_calling_thread() {
        // A thread of its own: the test harness's others keep theirs.
        let got = std::thread::spawn(|| {
            let applied = apply(&DaemonConfig {
                pid_file: None,
                lock: None,
                log_level: "info".into(),
                log_file: None,
                syslog: None,
                nice: Some(5),
                scheduler: None,
            });
            // SAFETY: getpriority takes no pointers.
            let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            (applied, now)
        })
        .join()
        .unwrap();
        assert_eq!(got.0.nice, Some(Ok(5)));
        assert_eq!(got.1, 5);
    }
}
