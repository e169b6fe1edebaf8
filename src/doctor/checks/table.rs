//! The table's size and cost: how full it is, whether it drops, its hash
//! buckets against its limit, and the kernel memory it may take.
//!
//! Owns: the `table_full`, `table_drops`, `hash_buckets` and
//! `table_memory` decisions and their thresholds. Must not: read `/proc`.

use crate::doctor::facts::{CtStat, Sysctls};
use crate::doctor::finding::{Finding, Severity};

/// `table_full`: warning from this share of `nf_conntrack_max` in use...
pub const FULL_WARNING_PCT: f64 = 80.0;
/// ...critical from this one.
pub const FULL_CRITICAL_PCT: f64 = 95.0;
/// `hash_buckets`: entries per bucket (max / buckets) advised at most...
pub const BUCKET_RATIO_ADVISED: u64 = 4;
/// ...and never this many or more (long chains, slow inserts).
pub const BUCKET_RATIO_WARNING: u64 = 8;
/// `table_memory`: the kernel's entry size when `/proc/slabinfo` is not
/// readable (300-350 bytes with common extensions).
pub const DEFAULT_ENTRY_BYTES: u64 = 320;
/// Share of the machine's memory a full table may take before a warning,
/// and before a critical finding.
pub const MEMORY_WARNING_PCT: f64 = 20.0;
pub const MEMORY_CRITICAL_PCT: f64 = 50.0;

fn unreadable(check: &'static str) -> Finding {
    Finding::new(
        check,
        Severity::Info,
        "not checked: the conntrack sysctls are not readable here (is nf_conntrack loaded?)",
    )
}

/// How full the table is.
pub fn table_full(s: &Sysctls) -> Finding {
    let (Some(count), Some(max)) = (s.count, s.max) else {
        return unreadable("table_full");
    };
    if max == 0 {
        return Finding::new(
            "table_full",
            Severity::Ok,
            "nf_conntrack_max is 0: no limit",
        )
        .seen(format!("nf_conntrack_count {count}"));
    }
    let pct = count as f64 * 100.0 / max as f64;
    let seen = format!("nf_conntrack_count {count} of nf_conntrack_max {max} ({pct:.1}%)");
    let severity = if pct >= FULL_CRITICAL_PCT {
        Severity::Critical
    } else if pct >= FULL_WARNING_PCT {
        Severity::Warning
    } else {
        return Finding::new("table_full", Severity::Ok, "the table has room").seen(seen);
    };
    Finding::new(
        "table_full",
        severity,
        "the conntrack table is nearly full: at the limit new flows are dropped (raise the limit on the host, mind table_memory, or shorten timeouts)",
    )
    .seen(seen)
    .fix(format!(
        "sysctl -w net.netfilter.nf_conntrack_max={}",
        max.saturating_mul(2)
    ))
}

/// Drops, early drops and insert failures, and whether they grew between
/// the two reads `interval_s` apart.
pub fn table_drops(first: Option<&CtStat>, later: Option<&CtStat>, interval_s: f64) -> Finding {
    let Some(first) = first else {
        return Finding::new(
            "table_drops",
            Severity::Info,
            "not checked: /proc/net/stat/nf_conntrack is not readable",
        );
    };
    let grew = |name: &str| later.map_or(0, |l| l.get(name).saturating_sub(first.get(name)));
    let now = |name: &str| later.map_or(first.get(name), |l| l.get(name));
    let seen = ["drop", "early_drop", "insert_failed", "search_restart"]
        .iter()
        .map(|n| format!("{n} {} (+{} in {interval_s:.1} s)", now(n), grew(n)))
        .collect::<Vec<_>>()
        .join(", ");
    let full_now = grew("drop") + grew("early_drop") > 0;
    let full_before = now("drop") + now("early_drop") > 0;
    let table_fix = "raise net.netfilter.nf_conntrack_max (see table_full) or shorten timeouts; conntrack -S shows the per-CPU counters";
    if full_now {
        return Finding::new(
            "table_drops",
            Severity::Critical,
            "the kernel is dropping or evicting flows now: the table is full",
        )
        .seen(seen)
        .fix(table_fix);
    }
    if full_before {
        return Finding::new(
            "table_drops",
            Severity::Warning,
            "the kernel has dropped or evicted flows since the namespace started (the table was full)",
        )
        .seen(seen)
        .fix(table_fix);
    }
    if grew("insert_failed") > 0 {
        return Finding::new(
            "table_drops",
            Severity::Warning,
            "insert failures are growing: clashing or racing inserts (often NAT port clashes)",
        )
        .seen(seen)
        .fix("check NAT port ranges and the rate of identical flows (`conntrack -S`)");
    }
    if now("insert_failed") > 0 {
        return Finding::new(
            "table_drops",
            Severity::Info,
            "some inserts failed in the past (races or clashes); not growing",
        )
        .seen(seen);
    }
    Finding::new(
        "table_drops",
        Severity::Ok,
        "no drops, early drops or insert failures",
    )
    .seen(seen)
}

/// Hash buckets against the table's limit.
pub fn hash_buckets(s: &Sysctls) -> Finding {
    let (Some(max), Some(buckets)) = (s.max, s.buckets) else {
        return unreadable("hash_buckets");
    };
    if buckets == 0 || max == 0 {
        return Finding::new(
            "hash_buckets",
            Severity::Info,
            "no bucket ratio (max or buckets is 0)",
        )
        .seen(format!(
            "nf_conntrack_max {max}, nf_conntrack_buckets {buckets}"
        ));
    }
    let ratio = max as f64 / buckets as f64;
    let seen = format!(
        "nf_conntrack_max {max} / nf_conntrack_buckets {buckets} = {ratio:.1} entries per bucket when full"
    );
    let want = max.div_ceil(BUCKET_RATIO_ADVISED).next_power_of_two();
    // On the host; at boot: `options nf_conntrack hashsize=N` in
    // /etc/modprobe.d (said in the summary).
    let fix = format!("sysctl -w net.netfilter.nf_conntrack_buckets={want}");
    if ratio >= BUCKET_RATIO_WARNING as f64 {
        Finding::new(
            "hash_buckets",
            Severity::Warning,
            "too few hash buckets for the table's limit: long chains, slow inserts when it fills (at boot: options nf_conntrack hashsize=N in /etc/modprobe.d)",
        )
        .seen(seen)
        .fix(fix)
    } else if ratio > BUCKET_RATIO_ADVISED as f64 {
        Finding::new(
            "hash_buckets",
            Severity::Info,
            "fewer hash buckets than advised (max / 4 or more)",
        )
        .seen(seen)
        .fix(fix)
    } else {
        Finding::new("hash_buckets", Severity::Ok, "enough hash buckets").seen(seen)
    }
}

/// The kernel memory a full table takes: `max` entries of the slab's
/// object size (or [`DEFAULT_ENTRY_BYTES`]) plus 8 bytes a bucket.
pub fn table_memory(s: &Sysctls, object_size: Option<u64>, mem_total: Option<u64>) -> Finding {
    let (Some(max), Some(mem)) = (s.max, mem_total) else {
        return unreadable("table_memory");
    };
    let (per, source) = match object_size {
        Some(n) if n > 0 => (n, "slabinfo"),
        _ => (DEFAULT_ENTRY_BYTES, "estimate"),
    };
    let bytes = max
        .saturating_mul(per)
        .saturating_add(s.buckets.unwrap_or(0).saturating_mul(8));
    let pct = bytes as f64 * 100.0 / mem.max(1) as f64;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let seen = format!(
        "nf_conntrack_max {max} x {per} B ({source}) + buckets = {:.0} MiB, {pct:.1}% of MemTotal {:.0} MiB (extensions such as NAT, labels, accounting add more)",
        mib(bytes),
        mib(mem)
    );
    let severity = if pct >= MEMORY_CRITICAL_PCT {
        Severity::Critical
    } else if pct >= MEMORY_WARNING_PCT {
        Severity::Warning
    } else {
        return Finding::new(
            "table_memory",
            Severity::Ok,
            "a full table fits in memory comfortably",
        )
        .seen(seen);
    };
    let fit = (mem as f64 * MEMORY_WARNING_PCT / 200.0) as u64 / per.max(1);
    Finding::new(
        "table_memory",
        severity,
        "a full table would take a large share of the machine's memory",
    )
    .seen(seen)
    .fix(format!("sysctl -w net.netfilter.nf_conntrack_max={fit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(count: u64, max: u64, buckets: u64) -> Sysctls {
        Sysctls {
            count: Some(count),
            max: Some(max),
            buckets: Some(buckets),
            ..Sysctls::default()
        }
    }

    fn stat(drop: u64, early: u64, failed: u64) -> CtStat {
        let text = format!(
            "entries drop early_drop insert_failed\n00000001 {drop:08x} {early:08x} {failed:08x}\n"
        );
        CtStat::parse(&text).unwrap()
    }

    #[test]
    fn table_full_thresholds() {
        assert_eq!(table_full(&sys(799, 1000, 1000)).severity, Severity::Ok);
        let w = table_full(&sys(800, 1000, 1000));
        assert_eq!(w.severity, Severity::Warning);
        assert!(
            w.seen.contains("800 of nf_conntrack_max 1000 (80.0%)"),
            "{}",
            w.seen
        );
        assert!(w.fix.unwrap().contains("nf_conntrack_max=2000"));
        assert_eq!(table_full(&sys(949, 1000, 1)).severity, Severity::Warning);
        assert_eq!(table_full(&sys(950, 1000, 1)).severity, Severity::Critical);
        assert_eq!(table_full(&Sysctls::default()).severity, Severity::Info);
        assert_eq!(table_full(&sys(5, 0, 1)).severity, Severity::Ok);
    }

    #[test]
    fn drops_growing_now_are_critical_old_ones_a_warning() {
        let clean = stat(0, 0, 0);
        let f = table_drops(Some(&clean), Some(&clean), 1.0);
        assert_eq!(f.severity, Severity::Ok);
        let f = table_drops(Some(&stat(3, 0, 0)), Some(&stat(3, 0, 0)), 1.0);
        assert_eq!(f.severity, Severity::Warning);
        let f = table_drops(Some(&stat(3, 0, 0)), Some(&stat(3, 2, 0)), 1.0);
        assert_eq!(f.severity, Severity::Critical);
        assert!(f.seen.contains("early_drop 2 (+2 in 1.0 s)"), "{}", f.seen);
        let f = table_drops(Some(&stat(0, 0, 4)), Some(&stat(0, 0, 4)), 1.0);
        assert_eq!(f.severity, Severity::Info);
        let f = table_drops(Some(&stat(0, 0, 4)), Some(&stat(0, 0, 9)), 1.0);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(table_drops(None, None, 1.0).severity, Severity::Info);
    }

    #[test]
    fn buckets_against_max() {
        assert_eq!(hash_buckets(&sys(0, 262144, 262144)).severity, Severity::Ok);
        assert_eq!(hash_buckets(&sys(0, 262144, 65536)).severity, Severity::Ok);
        let f = hash_buckets(&sys(0, 262144, 65535));
        assert_eq!(f.severity, Severity::Info);
        let f = hash_buckets(&sys(0, 1048576, 131072));
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.fix.unwrap().contains("nf_conntrack_buckets=262144"));
    }

    #[test]
    fn memory_share() {
        let gib = 1024 * 1024 * 1024;
        let f = table_memory(&sys(0, 262144, 262144), Some(256), Some(24 * gib));
        assert_eq!(f.severity, Severity::Ok, "{}", f.seen);
        assert!(f.seen.contains("x 256 B (slabinfo)"), "{}", f.seen);
        // 4M entries of 320 bytes on a 4 GiB machine: ~31%.
        let f = table_memory(&sys(0, 4 << 20, 1 << 20), None, Some(4 * gib));
        assert_eq!(f.severity, Severity::Warning, "{}", f.seen);
        assert!(f.seen.contains("(estimate)"));
        let f = table_memory(&sys(0, 8 << 20, 1 << 20), None, Some(4 * gib));
        assert_eq!(f.severity, Severity::Critical, "{}", f.seen);
        assert_eq!(
            table_memory(&sys(0, 1, 1), None, None).severity,
            Severity::Info
        );
    }
}
