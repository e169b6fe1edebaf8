//! `[daemon] nice` and `[daemon] scheduler`: the daemon's CPU priority.
//! The nice value applies to every thread (as conntrackd's, whose one
//! thread does everything); a real-time scheduler only to the threads
//! that keep replication moving, the owner (the main thread) and the event
//! reader. The rest (control, render, metrics, log file, kernel writer,
//! blocking pools) run under SCHED_OTHER: a real-time thread that renders a
//! million flows or answers the network would starve packet forwarding.
//!
//! How: the nice value is set on the main thread before any thread starts
//! (threads inherit it); the scheduler is set on the main thread with
//! SCHED_RESET_ON_FORK, so every thread it starts afterwards begins under
//! SCHED_OTHER at nice 0, and `ordinary_thread` (called first thing in
//! those threads) puts the configured nice value back; the event thread
//! calls `realtime_thread`.
//!
//! Owns: setpriority(2) and sched_setscheduler(2) for the configured
//! values, and the warning when the privilege is missing (as conntrackd,
//! which warns and runs on). Must not: fail the start.

use crate::config::{DaemonConfig, SchedPolicy, Scheduler};
use std::sync::OnceLock;

/// The configured nice value, for `ordinary_thread` (set by `apply_nice`).
static NICE: OnceLock<i32> = OnceLock::new();

/// What applying the configured priority did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    pub nice: Option<Result<i32, String>>,
    pub scheduler: Option<Result<String, String>>,
}

/// Set the configured nice value on the calling (main) thread: call it
/// before any thread starts, so that they all inherit it.
pub(super) fn apply_nice(config: &DaemonConfig) -> Option<Result<i32, String>> {
    let nice = config.nice?;
    let _ = NICE.set(nice);
    Some(set_nice(nice))
}

/// Set the configured scheduler on the calling (main) thread; a real-time
/// one with reset-on-fork, so the threads started afterwards do not get it.
pub(super) fn apply_scheduler(config: &DaemonConfig) -> Option<Result<String, String>> {
    config.scheduler.map(set_scheduler)
}

/// Log what `apply_nice` and `apply_scheduler` did (once logging is up).
pub(super) fn log(applied: &Applied) {
    match &applied.nice {
        Some(Ok(nice)) => tracing::info!(nice, "nice value set"),
        Some(Err(e)) => tracing::warn!(
            "[daemon] nice not applied: {e} (a negative value needs CAP_SYS_NICE); running at the inherited priority"
        ),
        None => {}
    }
    match &applied.scheduler {
        Some(Ok(what)) => tracing::info!(
            scheduler = %what,
            "scheduler set for the main and event threads; the others run under SCHED_OTHER"
        ),
        Some(Err(e)) => tracing::warn!(
            "[daemon] scheduler not applied: {e} (a real-time policy needs CAP_SYS_NICE); running under the inherited policy"
        ),
        None => {}
    }
}

/// First thing in a thread the main thread starts (other than the event
/// reader): the configured nice value again, which reset-on-fork took
/// away (it starts threads at nice 0). Without a nice value, nothing.
pub(super) fn ordinary_thread() {
    if let Some(nice) = NICE.get() {
        let _ = set_nice(*nice);
    }
}

/// The configured scheduler for the calling thread (the event reader):
/// a warning if it cannot be set.
pub(super) fn realtime_thread(scheduler: Option<Scheduler>) {
    if let Some(Err(e)) = scheduler.map(set_scheduler) {
        tracing::warn!("[daemon] scheduler not applied to the event thread: {e}");
    }
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

/// The policy number (with reset-on-fork for a real-time one) and priority
/// sched_setscheduler takes.
fn policy(s: Scheduler) -> (libc::c_int, libc::c_int, &'static str) {
    let rt = |p: libc::c_int| p | libc::SCHED_RESET_ON_FORK;
    match s.policy {
        SchedPolicy::Other => (libc::SCHED_OTHER, 0, "other"),
        SchedPolicy::Rr => (rt(libc::SCHED_RR), libc::c_int::from(s.priority), "rr"),
        SchedPolicy::Fifo => (rt(libc::SCHED_FIFO), libc::c_int::from(s.priority), "fifo"),
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

    fn daemon_config(nice: Option<i32>, scheduler: Option<Scheduler>) -> DaemonConfig {
        DaemonConfig {
            pid_file: None,
            lock: None,
            log_level: "info".into(),
            log_file: None,
            syslog: None,
            nice,
            scheduler,
        }
    }

    /// The calling thread's policy (without the reset-on-fork flag), its
    /// whether reset-on-fork is set, and its nice value.
    fn now() -> (libc::c_int, bool, libc::c_int) {
        // SAFETY: neither takes pointers; 0 is the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        // SAFETY: as above.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert!(policy >= 0, "{}", std::io::Error::last_os_error());
        (
            policy & !libc::SCHED_RESET_ON_FORK,
            policy & libc::SCHED_RESET_ON_FORK != 0,
            nice,
        )
    }

    #[test]
    fn policies_map_to_the_kernels() {
        let rr = Scheduler {
            policy: SchedPolicy::Rr,
            priority: 50,
        };
        let reset = libc::SCHED_RESET_ON_FORK;
        assert_eq!(policy(rr), (libc::SCHED_RR | reset, 50, "rr"));
        let fifo = Scheduler {
            policy: SchedPolicy::Fifo,
            priority: 1,
        };
        assert_eq!(policy(fifo), (libc::SCHED_FIFO | reset, 1, "fifo"));
        let other = Scheduler {
            policy: SchedPolicy::Other,
            priority: 0,
        };
        assert_eq!(policy(other).0, libc::SCHED_OTHER);
    }

    /// Both tests that set a nice value use this one (`NICE` is set once).
    const TEST_NICE: i32 = 5;

    #[test]
    fn nice_applies_to_the_calling_thread() {
        // A thread of its own: the test harness's others keep theirs.
        let got = std::thread::spawn(|| {
            let applied = apply_nice(&daemon_config(Some(TEST_NICE), None));
            (applied, now().2)
        })
        .join()
        .unwrap();
        assert_eq!(got.0, Some(Ok(TEST_NICE)));
        assert_eq!(got.1, TEST_NICE);
    }

    /// std::thread::spawn (pthread_create, clone(2)) honours reset-on-fork:
    /// the threads a real-time main thread starts run under SCHED_OTHER,
    /// and `ordinary_thread` gives them the nice value back. The control:
    /// without the flag, a thread inherits the real-time policy. (Needs
    /// CAP_SYS_NICE: the tests run as root.)
    #[test]
    fn threads_started_by_a_real_time_thread_run_under_sched_other() {
        let rr = Scheduler {
            policy: SchedPolicy::Rr,
            priority: 1,
        };
        let (main, child, renewed) = std::thread::spawn(move || {
            let config = daemon_config(Some(TEST_NICE), Some(rr));
            assert_eq!(apply_nice(&config), Some(Ok(TEST_NICE)));
            assert_eq!(
                apply_scheduler(&config),
                Some(Ok("rr priority 1".to_string()))
            );
            let main = now();
            let child = std::thread::spawn(now).join().unwrap();
            let renewed = std::thread::spawn(|| {
                ordinary_thread();
                now()
            })
            .join()
            .unwrap();
            (main, child, renewed)
        })
        .join()
        .unwrap();
        assert_eq!(main, (libc::SCHED_RR, true, TEST_NICE));
        assert_eq!(child, (libc::SCHED_OTHER, false, 0));
        assert_eq!(renewed, (libc::SCHED_OTHER, false, TEST_NICE));

        // The control: sched_setscheduler without reset-on-fork.
        let inherited = std::thread::spawn(|| {
            let param = libc::sched_param { sched_priority: 1 };
            // SAFETY: `param` is valid for the call; 0 is this thread.
            let set = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
            assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
            std::thread::spawn(now).join().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(inherited.0, libc::SCHED_RR);
    }
}
