//! The kernel conntrack table's use: `nf_conntrack_count` against
//! `nf_conntrack_max`, read through `kernel::sysctl`, which shows the
//! network namespace of the process reading it (the daemon's).
//!
//! Owns: building `TableUse` from those two sysctls. Must not: fail the caller
//! (without the conntrack module there is nothing to show: `None`).

use crate::counters::TableUse;
use crate::kernel::sysctl;
use std::path::Path;

/// The table's use now, or `None` if either file is missing or unreadable.
pub fn read_use() -> Option<TableUse> {
    read_from(
        &sysctl::path("nf_conntrack_count"),
        &sysctl::path("nf_conntrack_max"),
    )
}

fn read_from(count: &Path, max: &Path) -> Option<TableUse> {
    Some(TableUse {
        count: sysctl::read_u64_at(count)?,
        max: sysctl::read_u64_at(max)?,
    })
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
