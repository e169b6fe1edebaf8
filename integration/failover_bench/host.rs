//! The failover benchmark's host side beyond bench/host.rs: who else is
//! using the CPUs (a measurement taken while another process ran is
//! suspect, and the report says so), how busy the machine is, and the
//! cleanup on SIGINT, SIGTERM or SIGHUP that the guards' drops cannot do
//! when a signal ends the process.
//!
//! Must not: touch anything but this process's own labs (namespaces and
//! directories named `ctf{pid}-*`) and the two conntrack sysctls it saved.

use super::progress;
use crate::bench::host::cpu_jiffies;
use crate::failover::FailoverLab;
use crate::lab::run as run_cmd;
use std::time::{Duration, Instant};

/// CPU time (clock ticks) of every user-space process outside the lab (not
/// in its namespaces, not this benchmark), taken at one moment.
pub struct CpuSnapshot {
    at: Instant,
    ticks: Vec<(i32, u64)>,
}

fn process_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl CpuSnapshot {
    pub fn take(lab: &FailoverLab) -> CpuSnapshot {
        let mut ours: Vec<i32> = vec![std::process::id() as i32];
        for ns in [&lab.a.ns, &lab.b.ns, &lab.cl, &lab.sv, &lab.sw] {
            ours.extend(crate::failover::netns_pids(ns));
        }
        let pids: Vec<i32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|p| !ours.contains(p))
                    // Kernel threads have an empty command line.
                    .filter(|p| {
                        std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| !c.is_empty())
                    })
                    .collect()
            })
            .unwrap_or_default();
        CpuSnapshot {
            at: Instant::now(),
            ticks: pids
                .into_iter()
                .filter_map(|p| Some((p, process_ticks(p)?)))
                .collect(),
        }
    }

    /// The processes of this snapshot that used at least `min_share` of
    /// one CPU since: (pid, command, share). Something else running during
    /// a measurement makes it suspect, and is worth saying.
    pub fn busy_since(&self, min_share: f64) -> Vec<(i32, String, f64)> {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.ticks
            .iter()
            .filter_map(|&(p, t0)| {
                let share = process_ticks(p)?.saturating_sub(t0) as f64 / hz / secs;
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (share >= min_share).then(|| (p, cmd.trim().chars().take(80).collect(), share))
            })
            .collect()
    }

    pub fn describe(busy: &[(i32, String, f64)]) -> String {
        busy.iter()
            .map(|(p, c, share)| format!("pid {p} `{c}` {:.0}% of a CPU", share * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The share of all CPUs busy over half a second (/proc/stat).
pub fn busy_now() -> f64 {
    let Some((b0, t0)) = cpu_jiffies() else {
        return 0.0;
    };
    std::thread::sleep(Duration::from_millis(500));
    let Some((b1, t1)) = cpu_jiffies() else {
        return 0.0;
    };
    b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64
}

/// The conntrack sysctls as they were before the first run changed them,
/// for `install_interrupt_cleanup`.
static ORIGINAL_SYSCTLS: std::sync::Mutex<Vec<(&'static str, String)>> =
    std::sync::Mutex::new(Vec::new());
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

const SYSCTLS: [&str; 2] = [
    "net.netfilter.nf_conntrack_buckets",
    "net.netfilter.nf_conntrack_max",
];

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(sig, std::sync::atomic::Ordering::SeqCst);
}

/// Remember the conntrack sysctls as they are now (once), for the cleanup
/// on a signal.
pub fn save_sysctls() {
    if let Ok(mut saved) = ORIGINAL_SYSCTLS.lock() {
        if saved.is_empty() {
            for key in SYSCTLS {
                let out = run_cmd("sysctl", &["-n", key]);
                let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if out.status.success() && !value.is_empty() {
                    saved.push((key, value));
                }
            }
        }
    }
}

/// For the benchmark process (not the test suite): on SIGINT, SIGTERM or
/// SIGHUP, do what the guards would have done on drop (a signal skips
/// them): kill the processes of this process's labs and delete their
/// namespaces and directories, put the conntrack sysctls back, exit 130.
/// A handler only sets a flag (a child's exec resets it); a thread acts.
pub fn install_interrupt_cleanup() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let spawned = std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(|| loop {
            let sig = INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
            if sig != 0 {
                progress(&format!("signal {sig}: cleaning up"));
                interrupt_cleanup();
                std::process::exit(130);
            }
            std::thread::sleep(Duration::from_millis(100));
        });
    if let Err(e) = spawned {
        eprintln!("no cleanup on interrupt: {e}");
    }
}

fn interrupt_cleanup() {
    let prefix = format!("ctf{}-", std::process::id());
    let list = run_cmd("ip", &["netns", "list"]);
    let spaces: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    for _ in 0..10 {
        let mut any = false;
        for ns in &spaces {
            for pid in crate::failover::netns_pids(ns) {
                any = true;
                // SAFETY: kill(2) on a process in one of our own labs.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if !any {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for ns in &spaces {
        let _ = run_cmd("ip", &["netns", "del", ns]);
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let saved = ORIGINAL_SYSCTLS
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    for (key, value) in saved.iter().rev() {
        let _ = run_cmd("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }
}
