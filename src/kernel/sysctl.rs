//! The netfilter sysctls under `/proc/sys/net/netfilter`, as the network
//! namespace of the calling process sees them: read one as a number,
//! write one.
//!
//! Owns: the path and the parsing of those one-number files; every reader
//! of a conntrack sysctl (metrics, doctor, the daemon's start) goes
//! through here. Must not: decide what a value means, or fail the caller
//! on a missing file (without the conntrack module there is nothing to
//! read: `None`).

use std::io;
use std::path::{Path, PathBuf};

/// Where the netfilter sysctls live.
pub const NETFILTER: &str = "/proc/sys/net/netfilter";

/// The file of sysctl `name` (`nf_conntrack_max`, ...).
pub fn path(name: &str) -> PathBuf {
    Path::new(NETFILTER).join(name)
}

/// `net.netfilter.<name>` as a number; `None` when the file is missing,
/// unreadable or does not hold one decimal number.
pub fn read_u64(name: &str) -> Option<u64> {
    read_u64_at(&path(name))
}

/// A file holding one decimal number (and a line feed).
pub fn read_u64_at(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Set `net.netfilter.<name>` to `value`.
pub fn write(name: &str, value: u64) -> io::Result<()> {
    std::fs::write(path(name), format!("{value}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("ctsync-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, bad, empty) = (dir.join("good"), dir.join("bad"), dir.join("empty"));
        std::fs::write(&good, "262144\n").unwrap();
        std::fs::write(&bad, "lots\n").unwrap();
        std::fs::write(&empty, "").unwrap();
        assert_eq!(read_u64_at(&good), Some(262_144));
        assert_eq!(read_u64_at(&bad), None);
        assert_eq!(read_u64_at(&empty), None);
        assert_eq!(read_u64_at(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            path("nf_conntrack_max"),
            Path::new("/proc/sys/net/netfilter/nf_conntrack_max")
        );
    }
}
