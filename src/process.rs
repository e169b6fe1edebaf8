//! Process matters of the daemon: the lock file, the pid file, the one
//! kernel setting ctsyncd adjusts at start, the allocator's settings, a
//! thread's priority, and how long a thread waited for a CPU.
//!
//! Owns: the lock and pid files the daemon holds while it runs (removed
//! again on drop), the events sysctl's adjustment, and the thread-level
//! calls (allocator settings, priority, run-queue wait). Must not: know about flows, sockets or the sync protocol.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::kernel::sysctl;

/// Where the kernel decides whether conntrack entries report events.
const EVENTS_SYSCTL: &str = "nf_conntrack_events";

/// A lock file held with `flock` while the daemon runs. Unlike conntrackd's
/// O_EXCL lock it can never be left stale by a crash: the kernel drops the
/// lock with the process.
/// The file itself stays after exit: unlinking it could let a starting
/// daemon lock a new inode while another still holds the old one.
pub struct LockFile {
    _file: File,
}

impl LockFile {
    pub fn acquire(path: &Path) -> io::Result<LockFile> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("lock file {}: {e}", path.display())))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "lock file {} is held: is ctsyncd already running?",
                    path.display()
                ),
            ));
        }
        Ok(LockFile { _file: file })
    }
}

/// The daemon's pid, written at start and removed at a clean exit.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn write(path: &Path) -> io::Result<PidFile> {
        // Never through a symlink: the path may be in a directory others
        // can write.
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("pid file {}: {e}", path.display())))?;
        writeln!(file, "{}", std::process::id())?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Make every conntrack entry created from now on report its events: the
/// kernel's default ("auto", 2) gives no event cache to entries created while
/// nobody listens, so their updates and their end are never reported.
/// Failure (a read-only /proc/sys) is logged, not fatal: the periodic
/// re-read of the table still heals what events miss.
pub fn enable_conntrack_events() {
    match sysctl::read_u64(EVENTS_SYSCTL) {
        Some(1) => {}
        Some(previous) => match sysctl::write(EVENTS_SYSCTL, 1) {
            Ok(()) => tracing::info!(previous, "net.netfilter.nf_conntrack_events set to 1"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot set net.netfilter.nf_conntrack_events to 1")
            }
        },
        None => tracing::warn!(
            "cannot read net.netfilter.nf_conntrack_events (missing, unreadable or not a number)"
        ),
    }
}

/// True unless the kernel was told not to report conntrack events
/// (`nf_conntrack_events` = 0): warm standby relies on them to know its
/// mirror intact. An unreadable setting counts as on (the kernel default
/// reports events to listeners).
pub fn conntrack_events_on() -> bool {
    sysctl::read_u64(EVENTS_SYSCTL) != Some(0)
}

/// The id of the group called `name`, from the system's group database.
pub fn group_id(name: &str) -> io::Result<u32> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name has a NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid value to be filled in.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the size passed.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if found.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group \"{name}\""),
        ));
    }
    Ok(group.gr_gid)
}

/// Allocations at least this large get pages of their own, returned to
/// the kernel when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Make the allocator give large transient buffers (table dumps, event
/// batches held while the loop is busy, commit sets) back to the kernel
/// when they are freed. glibc otherwise raises its mmap threshold after
/// the first such free, serves the next ones from the heap, and keeps the
/// high-water mark resident for good.
pub fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes allocator settings only.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Give memory freed after a large piece of work (a table re-read, a
/// commit) back to the kernel.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long the calling thread has waited, runnable, for a CPU since it
/// started: the second field of `/proc/thread-self/schedstat`. `None`
/// where the kernel keeps no such account (CONFIG_SCHED_INFO off).
pub fn thread_runqueue_wait() -> Option<std::time::Duration> {
    parse_schedstat_wait(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
}

/// The wait of a schedstat line (`<on CPU ns> <waiting ns> <timeslices>`).
fn parse_schedstat_wait(line: &str) -> Option<std::time::Duration> {
    let mut fields = line.split_ascii_whitespace();
    let _on_cpu: u64 = fields.next()?.parse().ok()?;
    let waiting: u64 = fields.next()?.parse().ok()?;
    Some(std::time::Duration::from_nanos(waiting))
}

/// Give the calling thread the nice value `nice` (raising a thread's
/// priority needs CAP_SYS_NICE; without it the thread keeps its own).
pub fn set_thread_nice(nice: libc::c_int) {
    // SAFETY: gettid and setpriority take no pointers.
    let tid = unsafe { libc::gettid() };
    let who = libc::id_t::try_from(tid).unwrap_or(0);
    // SAFETY: as above; `who` is this thread's id.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) } != 0 {
        tracing::debug!(
            nice,
            err = %std::io::Error::last_os_error(),
            "thread keeps its priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn schedstat_lines_give_their_wait() {
        assert_eq!(
            super::parse_schedstat_wait("1793492979 25030590 43\n"),
            Some(Duration::from_nanos(25_030_590))
        );
        assert_eq!(super::parse_schedstat_wait("17934"), None);
        assert_eq!(super::parse_schedstat_wait("x 1 2"), None);
        assert_eq!(super::parse_schedstat_wait(""), None);
    }

    /// Two threads that spin on the one CPU both may use wait for it, each
    /// about as long as the other runs; one spinning alone waits less (only
    /// for whatever else runs there). (The control: the same spin without
    /// a rival.)
    #[test]
    fn a_thread_sharing_its_cpu_is_seen_waiting() {
        fn pin_to_first_allowed_cpu() -> bool {
            // SAFETY: the sets are valid locals for the calls; 0 is this
            // thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                let size = std::mem::size_of::<libc::cpu_set_t>();
                if libc::sched_getaffinity(0, size, &mut set) != 0 {
                    return false;
                }
                let Some(cpu) = (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, &set))
                else {
                    return false;
                };
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut one);
                libc::sched_setaffinity(0, size, &one) == 0
            }
        }
        fn spin_and_measure(for_how_long: Duration) -> Option<Duration> {
            assert!(pin_to_first_allowed_cpu(), "cannot pin the thread");
            let before = super::thread_runqueue_wait()?;
            let started = Instant::now();
            while started.elapsed() < for_how_long {
                std::hint::spin_loop();
            }
            Some(super::thread_runqueue_wait()? - before)
        }
        let spin = Duration::from_millis(300);
        let Some(alone) = std::thread::spawn(move || spin_and_measure(spin))
            .join()
            .expect("thread")
        else {
            eprintln!("no /proc/thread-self/schedstat here: nothing to test");
            return;
        };
        let rivals: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || spin_and_measure(spin)))
            .collect();
        let shared: Vec<Duration> = rivals
            .into_iter()
            .map(|t| t.join().expect("thread").expect("schedstat"))
            .collect();
        let most = shared.iter().max().copied().unwrap_or_default();
        assert!(
            most >= Duration::from_millis(100),
            "two threads on one CPU for {spin:?}: waits {shared:?}"
        );
        assert!(
            alone < most,
            "alone it waited {alone:?}, beside a rival {shared:?}"
        );
    }

    #[test]
    fn group_names_resolve_to_their_ids() {
        assert_eq!(super::group_id("root").ok(), Some(0));
        let missing = super::group_id("cts-no-such-group");
        assert!(missing.is_err_and(|e| e.to_string().contains("no group")));
    }

    #[test]
    fn pid_and_lock_files_are_never_opened_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("cts-symlink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let target = dir.join("target");
        std::fs::write(&target, "keep me\n").expect("target");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(
            PidFile::write(&link).is_err(),
            "pid file followed a symlink"
        );
        assert!(
            LockFile::acquire(&link).is_err(),
            "lock file followed a symlink"
        );
        assert_eq!(
            std::fs::read_to_string(&target).ok().as_deref(),
            Some("keep me\n")
        );
        // A plain path works, with the modes given.
        let pid = PidFile::write(&dir.join("pid")).expect("pid file");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("pid")).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o644));
        drop(pid);
        let _ = std::fs::remove_dir_all(&dir);
    }

    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_holder_and_a_released_one_is_reusable() {
        let dir = std::env::temp_dir().join(format!("cts-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctsyncd.lock");
        let first = LockFile::acquire(&path).unwrap();
        let second = LockFile::acquire(&path);
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
        drop(first);
        // The file left behind (as after a crash) does not block the next start.
        assert!(path.exists());
        assert!(LockFile::acquire(&path).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pid_file_holds_our_pid() {
        let path = std::env::temp_dir().join(format!("cts-pid-{}", std::process::id()));
        let pid = PidFile::write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(pid);
        assert!(!path.exists());
    }
}
