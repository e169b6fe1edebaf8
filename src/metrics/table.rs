//! The kernel conntrack table's use: `nf_conntrack_count` against
//! `nf_conntrack_max`, read from `/proc/sys/net/netfilter`, which shows the
//! network namespace of the process reading it (the daemon's).
//!
//! Owns: reading and parsing those two files. Must not: fail the caller
//! (without the conntrack module there is nothing to show: `None`).

use crate::counters::TableUse;
use std::path::Path;

const COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";
const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// The table's use now, or `None` if either file is missing or unreadable.
pub fn read_use() -> Option<TableUse> {
    read_from(Path::new(COUNT), Path::new(MAX))
}

fn read_from(count: &Path, max: &Path) -> Option<TableUse> {
    Some(TableUse {
        count: read_number(count)?,
        max: read_number(max)?,
    })
}

/// A file holding one decimal number (and a line feed).
fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_and_refuses_garbage() {
        let dir = std::env::temp_dir().join(format!("ctsync-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, m, bad) = (dir.join("c"), dir.join("m"), dir.join("bad"));
        std::fs::write(&c, "17\n").unwrap();
        std::fs::write(&m, "262144\n").unwrap();
        std::fs::write(&bad, "lots\n").unwrap();
        assert_eq!(
            read_from(&c, &m),
            Some(TableUse {
                count: 17,
                max: 262144
            })
        );
        assert_eq!(read_from(&c, &bad), None);
        assert_eq!(read_from(&dir.join("missing"), &m), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
