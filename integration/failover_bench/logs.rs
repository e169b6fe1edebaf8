//! What the failover benchmark reads from the daemons' logs: ctsyncd's
//! table re-reads on fwa (and how many flows they found refreshed), the
//! flows a commit wrote (ctsyncd's counter, conntrackd's log), and, for
//! diagnosis, when ctsyncd logged the steps of a commit.
//!
//! Must not: change anything (it only reads files and asks `-s`), or fail
//! a run over a line it cannot parse (that is "unknown", not an error).

use crate::failover::{Fw, Mode};
use std::time::{Duration, SystemTime};

fn wall_diff(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// fwa's ctsyncd's table re-reads so far, as its log reports them: each
/// report's text and how many flows it found refreshed by traffic.
pub fn reconciles(fw: &Fw) -> Vec<(String, u64)> {
    let raw = std::fs::read_to_string(fw.path("daemon.log")).unwrap_or_default();
    strip_ansi(&raw)
        .lines()
        .filter(|l| l.contains("internal cache reconciled with the kernel table"))
        .map(|l| {
            let report = l
                .split_once("report=")
                .map(|(_, r)| r.trim().to_string())
                .unwrap_or_default();
            let refreshed = report
                .split_once("refreshed:")
                .and_then(|(_, r)| {
                    r.trim_start()
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            (report, refreshed)
        })
        .collect()
}

/// Flows written by the commits of `fw`'s daemon so far: ctsyncd's
/// `commit_ok` counter, or the sum of conntrackd's "Committed N new
/// entries" log lines.
pub fn committed_flows(fw: &Fw) -> Option<u64> {
    if fw.mode == Mode::Conntrackd {
        let log = std::fs::read_to_string(fw.path("conntrackd.log")).ok()?;
        Some(
            log.lines()
                .filter_map(|l| l.split_once("Committed ")?.1.split_once(' '))
                .filter_map(|(n, _)| n.parse::<u64>().ok())
                .sum(),
        )
    } else {
        fw.stats()["commit"]["ok"].as_u64()
    }
}

/// A ctsyncd log line's time (`2026-11-29T18:13:09.965288Z ...`).
pub fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60;
    let secs = u64::try_from(secs).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_secs_f64(sec))
}

/// What fwb's ctsyncd log says about the commit that `-c` started at
/// `start`: when the commit set was ready (the daemon logs "committing
/// external cache" once it has built and sorted it) and what it reported.
pub fn commit_log_note(fw: &Fw, start: SystemTime) -> String {
    let raw = std::fs::read_to_string(fw.path("daemon.log")).unwrap_or_default();
    let log = strip_ansi(&raw);
    let after: Vec<&str> = log
        .lines()
        .filter(|l| log_time(l).is_some_and(|t| t >= start))
        .collect();
    let at = |needle: &str| {
        after
            .iter()
            .find(|l| l.contains(needle))
            .and_then(|l| log_time(l).map(|t| (wall_diff(t, start) * 1000.0, l.to_string())))
    };
    let mut parts = Vec::new();
    if let Some((ms, _)) = at("committing external cache") {
        parts.push(format!(
            "commit set built and sorted {ms:.0} ms after -c started"
        ));
    }
    if let Some((ms, line)) = at("commit has taken") {
        let took = line
            .split("commit has taken ")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string();
        parts.push(format!("'commit has taken {took}' logged at {ms:.0} ms"));
    }
    if parts.is_empty() {
        "fwb's ctsyncd log says nothing about the commit".to_string()
    } else {
        format!("fwb's ctsyncd log: {}", parts.join("; "))
    }
}

/// `text` without ANSI colour sequences (ctsyncd's log has them).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
