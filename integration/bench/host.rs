//! The host's side of a benchmark run: the machine's description, the
//! global conntrack sysctls (raised for the run, put back on drop), and
//! reading a daemon's memory and CPU from /proc.
//!
//! Must not: create namespaces or start daemons (the systems do).

use super::BenchError;
use serde::Serialize;
use std::process::Command;

const BUCKETS: &str = "net.netfilter.nf_conntrack_buckets";
const MAX: &str = "net.netfilter.nf_conntrack_max";

/// What the figures were measured on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub nf_conntrack_buckets: u64,
    pub nf_conntrack_max: u64,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            nf_conntrack_buckets: read_sysctl(BUCKETS).unwrap_or(0),
            nf_conntrack_max: read_sysctl(MAX).unwrap_or(0),
        }
    }
}

fn read_sysctl(key: &str) -> Result<u64, BenchError> {
    let out = Command::new("sysctl")
        .args(["-n", key])
        .output()
        .map_err(|e| BenchError::Command(format!("sysctl -n {key}: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|_| BenchError::Parse(format!("sysctl {key}: {text:?}")))
}

fn write_sysctl(key: &str, value: u64) -> Result<(), BenchError> {
    let out = Command::new("sysctl")
        .args(["-w", &format!("{key}={value}")])
        .output()
        .map_err(|e| BenchError::Command(format!("sysctl -w {key}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Command(format!(
            "sysctl -w {key}={value}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The global conntrack sysctls as the run needs them; what was changed is
/// put back when this is dropped.
pub struct ConntrackSysctls {
    restore: Vec<(&'static str, u64)>,
}

impl ConntrackSysctls {
    /// Set the bucket count (if given and different) and raise
    /// `nf_conntrack_max` to at least `min_max`.
    pub fn apply(buckets: Option<u64>, min_max: u64) -> Result<ConntrackSysctls, BenchError> {
        let mut guard = ConntrackSysctls {
            restore: Vec::new(),
        };
        if let Some(want) = buckets {
            let old = read_sysctl(BUCKETS)?;
            if old != want {
                write_sysctl(BUCKETS, want)?;
                guard.restore.push((BUCKETS, old));
            }
        }
        let old = read_sysctl(MAX)?;
        if old < min_max {
            write_sysctl(MAX, min_max)?;
            guard.restore.push((MAX, old));
        }
        Ok(guard)
    }
}

impl Drop for ConntrackSysctls {
    fn drop(&mut self) {
        for (key, value) in self.restore.iter().rev() {
            if let Err(e) = write_sysctl(key, *value) {
                eprintln!("[bench] could not restore {key}: {e}");
            }
        }
    }
}

/// Resident memory of a process, bytes (`VmRSS` in /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Result<u64, BenchError> {
    status_kb(pid, "VmRSS:").map(|kb| kb * 1024)
}

/// The most resident memory a process has had, bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> Result<u64, BenchError> {
    status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

/// Start a process's `VmHWM` afresh from its present resident memory
/// (`5` into /proc/PID/clear_refs), so that the next
/// [`peak_rss_bytes`] is the peak since now.
pub fn reset_peak_rss(pid: u32) -> Result<(), BenchError> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").map_err(|e| BenchError::Command(format!("write {path}: {e}")))
}

fn status_kb(pid: u32, field: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Command(format!("read {path}: {e}")))?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .ok_or_else(|| BenchError::Parse(format!("no {field} in {path}")))
}

/// User plus system CPU time of a process, seconds (/proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    cpu_times(pid).map(CpuTimes::total)
}

/// A process's CPU time, seconds: in its own code (user) and in the
/// kernel on its behalf (system: its system calls, a netlink `sendto`
/// with the kernel's create path among them).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    /// The time used since `earlier`.
    pub fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }

    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

/// A process's user and system CPU time (/proc/PID/stat).
pub fn cpu_times(pid: u32) -> Result<CpuTimes, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Command(format!("read {path}: {e}")))?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Parse(format!("{path}: no ')'")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, BenchError> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| BenchError::Parse(format!("{path}: field {}", i + 3)))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok(CpuTimes {
        user: field(11)? as f64 / hz,
        system: field(12)? as f64 / hz,
    })
}

/// Busy and total jiffies of all CPUs (first line of /proc/stat).
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    Some((total.saturating_sub(idle), total))
}

/// Wait until the machine is idle again (below 10% busy over half a
/// second), at most `within`: the kernel frees a torn-down namespace's or a
/// flushed table's flows in the background, and an insert measured
/// meanwhile measures that too. Returns how long it waited.
pub fn settle(within: std::time::Duration) -> std::time::Duration {
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        let Some((busy0, total0)) = cpu_jiffies() else {
            break;
        };
        std::thread::sleep(std::time::Duration::from_millis(500));
        let Some((busy1, total1)) = cpu_jiffies() else {
            break;
        };
        let total = total1.saturating_sub(total0).max(1);
        if (busy1.saturating_sub(busy0) as f64) / (total as f64) < 0.10 {
            break;
        }
    }
    started.elapsed()
}
