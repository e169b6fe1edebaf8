//! The verdicts of the failover journeys, shared by the tests that drive
//! the lab through handovers (integration/failover.rs, migration.rs): a
//! handover with its snapshots of the new primary (`hand_over`), the
//! survival checks of ha-failover.md §4.8 (`judge`, `assert_survived`),
//! and the external-cache waits a journey makes before failing over.
//!
//! Owns: those checks and the timing of a handover's observation.
//! Must not: build or change the lab (mod.rs does), or weaken a check to
//! make a run pass.

use super::traffic::{FlowInfo, Kind, Report, Spec, Traffic};
use super::{CtEntry, FailoverLab, Failure, Mode};
use crate::lab;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

/// Traffic keeps running this long after the new primary says MASTER.
pub const AFTER_MASTER: Duration = Duration::from_secs(10);
/// The idle connections ping this long after MASTER.
pub const PING_AFTER: Duration = Duration::from_secs(2);
/// TCP flows must carry at least this many records after the failover.
pub const MIN_RECORDS_AFTER: usize = 20;

/// The verdict on one handover.
pub struct Phase {
    pub name: String,
    pub violations: Vec<String>,
    /// Per-kind counts of flows that did not survive (for the negative control).
    pub dead_tcp: usize,
    pub tcp_total: usize,
    pub udp_push_stopped: usize,
    pub udp_push_total: usize,
    pub udp_echo_moved: usize,
    pub udp_echo_total: usize,
}

/// What the new primary looked like after a handover (taken while traffic
/// still runs, so closing sockets at the end cannot disturb it).
pub struct After {
    pub master_idx: usize,
    pub t0: SystemTime,
    pub master_at: SystemTime,
    pub table: Vec<CtEntry>,
    pub counters_before: BTreeMap<String, u64>,
    /// Taken as soon as the new primary's `-c` has returned (or 2 s after
    /// MASTER if it never runs one).
    pub counters_commit: BTreeMap<String, u64>,
    pub counters_after: BTreeMap<String, u64>,
    pub stats_before: serde_json::Value,
    pub stats: serde_json::Value,
    pub neigh4: Option<String>,
    pub neigh6: Option<String>,
    pub lan_mac: Option<String>,
    pub ping_round: u32,
    pub end: SystemTime,
    pub timing: Vec<super::Timing>,
}

pub fn spec(lab: &FailoverLab) -> Spec {
    let servers: Vec<IpAddr> = vec![
        super::SERVER4.parse().expect("server v4"),
        super::SERVER6.parse().expect("server v6"),
    ];
    Spec::new(&lab.cl, &lab.sv, servers)
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn wall_diff(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The kernel entry of a test flow (by its original tuple).
pub fn find<'a>(table: &'a [CtEntry], f: &FlowInfo) -> Option<&'a CtEntry> {
    table.iter().find(|e| {
        e.proto == f.kind.proto()
            && e.orig
                == (
                    f.client.ip(),
                    f.client.port(),
                    f.server.ip(),
                    f.server.port(),
                )
    })
}

/// Does a `-e --json` flow describe test flow `f`?
pub fn json_is(v: &serde_json::Value, f: &FlowInfo) -> bool {
    let o = &v["orig"];
    let ip = |k: &str| o[k].as_str().and_then(|s| s.parse::<IpAddr>().ok());
    o["proto"].as_str() == Some(f.kind.proto())
        && ip("src") == Some(f.client.ip())
        && ip("dst") == Some(f.server.ip())
        && o["sport"].as_u64() == Some(u64::from(f.client.port()))
        && o["dport"].as_u64() == Some(u64::from(f.server.port()))
}

/// Test flows missing from `idx`'s external cache.
pub fn missing_from_external(lab: &FailoverLab, idx: usize, flows: &[FlowInfo]) -> Vec<u32> {
    let cache = lab.fw(idx).cache("-e");
    flows
        .iter()
        .filter(|f| !cache.iter().any(|v| json_is(v, f)))
        .map(|f| f.id)
        .collect()
}

pub fn wait_external_complete(lab: &FailoverLab, idx: usize, flows: &[FlowInfo]) {
    let start = Instant::now();
    let complete = lab::wait_until(Duration::from_secs(20), || {
        missing_from_external(lab, idx, flows).is_empty()
    });
    let fw = lab.fw(idx);
    assert!(
        complete,
        "{}'s external cache never held every test flow: {} of {} missing (ids {:?}...){}",
        fw.name,
        missing_from_external(lab, idx, flows).len(),
        flows.len(),
        missing_from_external(lab, idx, flows)
            .into_iter()
            .take(10)
            .collect::<Vec<_>>(),
        fw.diagnostics()
    );
    eprintln!(
        "{}: external cache holds all {} test flows ({:.2}s)",
        fw.name,
        flows.len(),
        secs(start.elapsed())
    );
}

/// How many test flows `idx`'s kernel holds with the given reply tuples.
pub fn kernel_holds(lab: &FailoverLab, idx: usize, flows: &[FlowInfo]) -> usize {
    let table = lab.conntrack(idx);
    flows.iter().filter(|f| find(&table, f).is_some()).count()
}

pub fn sleep_until(t: SystemTime) {
    if let Ok(d) = t.duration_since(SystemTime::now()) {
        std::thread::sleep(d);
    }
}

/// Fail `from` over to `to` (the failure is injected into `from`) and look
/// at `to` while traffic still runs.
pub fn hand_over(
    lab: &mut FailoverLab,
    traffic: &Traffic,
    from: usize,
    to: usize,
    failure: Failure,
) -> After {
    let skip = lab.fw(to).events().len();
    let counters_before = lab.counters(to);
    let stats_before = lab.fw(to).stats();
    let t0 = lab.inject(from, failure);
    let within = Duration::from_secs(10 + 4 * u64::from(lab.opts.advert_int));
    let (_, master) = lab.wait_event(to, skip, "GROUP G1 MASTER", within);
    eprintln!(
        "{} ({}): {} MASTER {:.3}s after the failure",
        failure.name(),
        lab.fw(from).name,
        lab.fw(to).name,
        wall_diff(master.wall, t0)
    );
    // The commit's end: from here on, no packet may be invalid.
    let fw = lab.fw(to);
    lab::wait_until(Duration::from_secs(2), || {
        fw.timing()
            .iter()
            .any(|t| t.wall >= t0 && t.what == "end" && t.flag() == Some("-c"))
    });
    let counters_commit = lab.counters(to);
    sleep_until(master.wall + PING_AFTER);
    let ping_round = traffic.ping_idle();
    sleep_until(master.wall + AFTER_MASTER);
    let end = SystemTime::now();
    let fw = lab.fw(to);
    After {
        master_idx: to,
        t0,
        master_at: master.wall,
        table: lab.conntrack(to),
        counters_before,
        counters_commit,
        counters_after: lab.counters(to),
        stats_before,
        stats: fw.stats(),
        neigh4: lab.client_neigh(super::VIP4_LAN),
        neigh6: lab.client_neigh(super::VIP6_LAN),
        lan_mac: lab.link_mac(&fw.ns, "lan0"),
        ping_round,
        end,
        timing: fw.timing(),
    }
}

/// Print what a handover measured: detection, the commit's timing, the
/// exposed window, counters, and the per-flow table.
pub fn print_metrics(lab: &FailoverLab, report: &Report, after: &After, name: &str) {
    let fw = lab.fw(after.master_idx);
    let mut s = format!(
        "=== {name}: {} on {} ===\ndetection (MASTER - failure): {:.3}s\n",
        lab.id,
        fw.name,
        wall_diff(after.master_at, after.t0)
    );
    let from_t0 = |w: SystemTime| wall_diff(w, after.t0);
    for t in after.timing.iter().filter(|t| t.wall >= after.t0) {
        s.push_str(&format!(
            "  ctl {:+.3}s {} {}\n",
            from_t0(t.wall),
            t.what,
            t.rest
        ));
    }
    let commit_start = after
        .timing
        .iter()
        .find(|t| t.wall >= after.t0 && t.what == "start" && t.flag() == Some("-c"));
    let commit_end = after
        .timing
        .iter()
        .find(|t| t.wall >= after.t0 && t.what == "end" && t.flag() == Some("-c"));
    if let (Some(a), Some(b)) = (commit_start, commit_end) {
        s.push_str(&format!(
            "commit (-c) took {:.3}s; exposed window (commit end - MASTER) {:.3}s\n",
            wall_diff(b.wall, a.wall),
            wall_diff(b.wall, after.master_at)
        ));
    }
    let delta: BTreeMap<&String, i64> = after
        .counters_after
        .iter()
        .map(|(k, v)| {
            (
                k,
                *v as i64 - after.counters_before.get(k).copied().unwrap_or(0) as i64,
            )
        })
        .collect();
    s.push_str(&format!("nft counter deltas on {}: {delta:?}\n", fw.name));
    let stat = |v: &serde_json::Value, path: &[&str]| {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(|x| x.as_u64())
            .map_or("-".to_string(), |x| x.to_string())
    };
    s.push_str(&format!(
        "{} {} before -> after:",
        fw.name,
        fw.mode.daemon()
    ));
    for path in [
        &["internal", "active"][..],
        &["external", "active"],
        &["sync", "digest_mismatches"],
        &["sync", "resyncs_requested_sent"],
        &["sync", "bulks_received"],
        &["commit", "ok"],
        &["commit", "failed"],
        &["warm", "written"],
        &["warm", "failed"],
        &["warm", "pending"],
    ] {
        s.push_str(&format!(
            " {}={}->{}",
            path.join("."),
            stat(&after.stats_before, path),
            stat(&after.stats, path)
        ));
    }
    s.push('\n');
    let t = report.wall_to_us(after.master_at);
    let from = report.wall_to_us(after.t0).saturating_sub(1_000_000);
    s.push_str(&report.table(t, from, report.wall_to_us(after.end)));
    eprintln!("{s}");
}

/// Every survival check of §4.8 for one handover.
pub fn judge(
    lab: &FailoverLab,
    report: &Report,
    after: &After,
    snapshot: &[CtEntry],
    failure: Failure,
    name: &str,
) -> Phase {
    let mut v: Vec<String> = Vec::new();
    let fw = lab.fw(after.master_idx);
    let t = report.wall_to_us(after.master_at);
    let from = report.wall_to_us(after.t0);
    let end = report.wall_to_us(after.end);
    let mut phase = Phase {
        name: name.to_string(),
        violations: Vec::new(),
        dead_tcp: 0,
        tcp_total: 0,
        udp_push_stopped: 0,
        udp_push_total: 0,
        udp_echo_moved: 0,
        udp_echo_total: 0,
    };
    // Blackout bound (§4.8 step 9): UDP max gap < 2 s for a graceful stop,
    // < 3 x advert_int + 2 s when the master has to be declared dead.
    let bound_us = match failure {
        Failure::Graceful => 2_000_000,
        _ => (3 * u64::from(lab.opts.advert_int) + 2) * 1_000_000,
    };
    for f in &report.flows {
        let id = format!(
            "flow {} {} {}",
            f.info.id,
            f.info.kind.name(),
            f.info.client
        );
        // The server's peer at setup is the SNAT binding fwa made.
        match find(snapshot, &f.info) {
            Some(e) if (e.reply.2, e.reply.3) != (f.info.peer.ip(), f.info.peer.port()) => {
                v.push(format!(
                    "{id}: server saw {} but fwa's reply tuple says {}:{}",
                    f.info.peer, e.reply.2, e.reply.3
                ))
            }
            Some(_) => {}
            None => v.push(format!("{id}: not in fwa's snapshot")),
        }
        // The new primary's kernel holds it with the same reply tuple.
        match (find(&after.table, &f.info), find(snapshot, &f.info)) {
            (Some(now), Some(before)) => {
                if now.reply != before.reply {
                    v.push(format!(
                        "{id}: {}'s reply tuple {:?} differs from fwa's {:?}",
                        fw.name, now.reply, before.reply
                    ));
                }
                if f.info.kind.is_tcp() && now.state.as_deref() != Some("ESTABLISHED") {
                    v.push(format!("{id}: {} has it in state {:?}", fw.name, now.state));
                }
            }
            (None, _) => v.push(format!("{id}: missing from {}'s kernel", fw.name)),
            _ => {}
        }
        let errors = f.errors();
        match f.info.kind {
            Kind::TcpEcho | Kind::TcpPush => {
                phase.tcp_total += 1;
                let after_n = f.client.after(t);
                let dead = !errors.is_empty() || after_n < MIN_RECORDS_AFTER;
                if dead {
                    phase.dead_tcp += 1;
                }
                if !errors.is_empty() {
                    v.push(format!("{id}: errors {errors:?}"));
                }
                if after_n < MIN_RECORDS_AFTER {
                    v.push(format!(
                        "{id}: only {after_n} records after the failover (client side)"
                    ));
                }
                if f.info.kind == Kind::TcpEcho && f.server.after(t) < MIN_RECORDS_AFTER {
                    v.push(format!(
                        "{id}: server got only {} records after the failover",
                        f.server.after(t)
                    ));
                }
                if f.client.bad + f.server.bad > 0 {
                    v.push(format!(
                        "{id}: {} records out of sequence",
                        f.client.bad + f.server.bad
                    ));
                }
            }
            Kind::TcpIdle => {
                phase.tcp_total += 1;
                let ping = f.pings.iter().find(|p| p.round == after.ping_round);
                let ok = errors.is_empty() && ping.is_some_and(|p| p.echo_us.is_some());
                if !ok {
                    phase.dead_tcp += 1;
                    v.push(format!(
                        "{id}: ping after the failover failed ({:?}; errors {errors:?})",
                        ping.and_then(|p| p.error.clone())
                    ));
                }
            }
            Kind::UdpPush => {
                phase.udp_push_total += 1;
                let after_n = f.client.after(t);
                if after_n < MIN_RECORDS_AFTER {
                    phase.udp_push_stopped += 1;
                    v.push(format!(
                        "{id}: UDP push stopped ({after_n} datagrams after the failover)"
                    ));
                }
                let (gap, at) = f.client.max_gap(from, end);
                if gap > bound_us {
                    v.push(format!(
                        "{id}: blackout {:.3}s at {:.2}s exceeds {:.1}s",
                        gap as f64 / 1e6,
                        at as f64 / 1e6,
                        bound_us as f64 / 1e6
                    ));
                }
            }
            Kind::UdpEcho => {
                phase.udp_echo_total += 1;
                let same_after = f.server.after(t);
                let foreign_after: Vec<&(u64, SocketAddr)> = f
                    .server
                    .foreign
                    .iter()
                    .filter(|(ft, _)| *ft >= from)
                    .collect();
                let last_same = f.server.received.last().copied().unwrap_or(0);
                let last_foreign = foreign_after.last().map(|(ft, _)| *ft).unwrap_or(0);
                let moved = same_after < MIN_RECORDS_AFTER || last_foreign > last_same;
                if moved {
                    phase.udp_echo_moved += 1;
                    v.push(format!(
                        "{id}: UDP echo did not resume with the same peer {} ({same_after} from it after the failover, {} from {:?})",
                        f.info.peer,
                        foreign_after.len(),
                        foreign_after.first().map(|(_, a)| *a)
                    ));
                } else if !foreign_after.is_empty() {
                    eprintln!(
                        "note: {id}: {} datagrams reached the server from {} (a new NAT binding) before the flow returned to {}",
                        foreign_after.len(),
                        foreign_after[0].1,
                        f.info.peer
                    );
                }
                let (gap, at) = f.client.max_gap(from, end);
                if gap > bound_us {
                    v.push(format!(
                        "{id}: blackout {:.3}s at {:.2}s exceeds {:.1}s",
                        gap as f64 / 1e6,
                        at as f64 / 1e6,
                        bound_us as f64 / 1e6
                    ));
                }
            }
        }
    }
    // RSTs: none at all, from the failure on. Invalid forwarded packets:
    // none once the commit has returned (a committed flow without
    // BE_LIBERAL shows up here); those in the window between keepalived
    // adding the VIPs and the commit's end are keepalived's order
    // (VIPs first, notify after; keepalived #2254) and are only reported.
    let count = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let window = count(&after.counters_commit, "fwd_invalid")
        .saturating_sub(count(&after.counters_before, "fwd_invalid"));
    if window > 0 {
        eprintln!(
            "note: {name}: {window} forwarded packets were invalid on {} before its commit returned (VIPs up, state not yet written)",
            fw.name
        );
    }
    // Warm standby has no such window: the flows are in the standby's
    // kernel before the VIPs move, so nothing may be invalid at all.
    let (invalid_since, invalid_when) = if lab.mode == Mode::WarmStandby {
        (&after.counters_before, "from the failure on (warm standby)")
    } else {
        (&after.counters_commit, "after the commit returned")
    };
    for (counter, since, when) in [
        ("fwd_rst", &after.counters_before, "from the failure on"),
        ("out_rst", &after.counters_before, "from the failure on"),
        ("fwd_invalid", invalid_since, invalid_when),
    ] {
        let grew = count(&after.counters_after, counter).saturating_sub(count(since, counter));
        if grew != 0 {
            v.push(format!(
                "{}: nft counter {counter} grew by {grew} {when}",
                fw.name
            ));
        }
    }
    if after.lan_mac.is_none() || after.neigh4 != after.lan_mac || after.neigh6 != after.lan_mac {
        v.push(format!(
            "client's neighbour entries for the LAN VIPs ({:?}, {:?}) are not {}'s lan0 MAC {:?}",
            after.neigh4, after.neigh6, fw.name, after.lan_mac
        ));
    }
    let commit_failed = after.stats["commit"]["failed"].as_u64().unwrap_or(0);
    if commit_failed != 0 {
        v.push(format!(
            "{}: -s reports {commit_failed} failed commits",
            fw.name
        ));
    }
    phase.violations = v;
    phase
}

/// Panic with every violation of every handover.
pub fn assert_survived(phases: &[Phase]) {
    let failed: Vec<String> = phases
        .iter()
        .filter(|p| !p.violations.is_empty())
        .map(|p| {
            format!(
                "{}: {} violations:\n  {}",
                p.name,
                p.violations.len(),
                p.violations
                    .iter()
                    .take(40)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "connections did not survive:\n{}",
        failed.join("\n")
    );
}
