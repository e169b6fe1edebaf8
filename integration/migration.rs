//! The rolling migration from conntrackd to ctsyncd, one firewall at a
//! time, in the failover lab (issue 12, part 4): both firewalls start on
//! conntrackd 1.4.7 under keepalived with live TCP and UDP connections
//! (IPv4 and IPv6) through them; then
//!
//! 1. the backup (fwb) is replaced by ctsyncd, configured by `ctsyncd
//!    convert` from its own conntrackd.conf plus `protocol = "conntrackd"`
//!    on the link, and resyncs from the conntrackd primary;
//! 2. the pair fails over to fwb, which commits what conntrackd sent it;
//! 3. the old primary (fwa) is replaced the same way and resyncs from fwb;
//! 4. both move to ctsync's own protocol with a shared key, backup first,
//!    the primary right after (no failover while the two cannot sync),
//!    then a failover to fwa and a final one back to fwb, sealed.
//!
//! Every handover is judged as the failover journeys are (`verdict`), and
//! the sync between the mixed pair is checked where it must have happened
//! (each new backup's external cache holds every live flow before the
//! failover). Two negative controls: ctsyncd on its own protocol against
//! conntrackd learns nothing, and so does a ctsync-protocol node whose
//! peer still speaks conntrackd's.
//!
//! Owns: the migration procedure and its checks (docs-draft/migrate.md
//! writes the same procedure for operators).
//! Must not: build namespaces or start processes itself (the lab does),
//! or weaken a check to make a run pass. Needs root, keepalived,
//! conntrackd with its example scripts, conntrack and nft.

#[path = "lab/mod.rs"]
mod lab;

#[path = "failover/mod.rs"]
mod failover;

use failover::traffic::{FlowInfo, Traffic};
use failover::verdict::{
    assert_survived, hand_over, json_is, judge, kernel_holds, print_metrics, secs, spec,
    wait_external_complete, After,
};
use failover::{FailoverLab, Failure, Mode, Options};
use std::time::{Duration, Instant};

/// How long a firewall may take to say MASTER or BACKUP (advert_int 1).
const VRRP_START: Duration = Duration::from_secs(14);
/// What a negative control waits for flows that must not come.
const NEGATIVE_WAIT: Duration = Duration::from_secs(4);
/// The traffic runs through the whole migration.
const TRAFFIC_FOR: Duration = Duration::from_secs(300);

/// `ctsyncd convert` of `idx`'s conntrackd.conf (what an operator runs on
/// the firewall before replacing the daemon).
fn convert(lab: &FailoverLab, idx: usize) -> String {
    let conf = lab.fw(idx).path("conntrackd.conf");
    let out = std::process::Command::new(lab::ctsyncd_bin())
        .arg("convert")
        .arg(&conf)
        .output()
        .expect("run ctsyncd convert");
    assert!(
        out.status.success(),
        "ctsyncd convert {} failed: {}",
        conf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("convert prints UTF-8")
}

/// The operator's one edit: `protocol = "..."` in the (only) `[[link]]`.
fn with_protocol(toml: &str, protocol: &str) -> String {
    assert_eq!(
        toml.matches("\n[[link]]\n").count(),
        1,
        "the converted config has one link:\n{toml}"
    );
    toml.replacen(
        "\n[[link]]\n",
        &format!("\n[[link]]\nprotocol = \"{protocol}\"\n"),
        1,
    )
}

/// The edit for step 4: the link on ctsync's protocol, and `[auth]`.
fn with_key(toml: &str, key_file: &std::path::Path) -> String {
    format!(
        "{}\n[auth]\nkey_file = \"{}\"\ncluster = \"migration-lab\"\n",
        with_protocol(toml, "ctsync"),
        key_file.display()
    )
}

/// Replace the daemon on `idx` (stopped with `-k`) by ctsyncd running
/// `toml`, in the foreground; the notify script now drives ctsyncd.
fn run_ctsyncd(lab: &mut FailoverLab, idx: usize, toml: &str) {
    lab.stop_daemon(idx);
    lab.switch_daemon(idx, Mode::Commit);
    let path = lab.fw(idx).config();
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    lab.start_daemon(idx);
}

/// Test flows in `idx`'s external cache.
fn in_external(lab: &FailoverLab, idx: usize, flows: &[FlowInfo]) -> usize {
    let cache = lab.fw(idx).cache("-e");
    flows
        .iter()
        .filter(|f| cache.iter().any(|v| json_is(v, f)))
        .count()
}

/// ctsyncd's conntrackd link on `idx` talked with its peer: messages in,
/// none malformed.
fn assert_cd_link_healthy(lab: &FailoverLab, idx: usize) {
    let fw = lab.fw(idx);
    let link = &fw.stats()["conntrackd_link"];
    assert!(
        link["messages_received"].as_u64().unwrap_or(0) > 0,
        "{}: its conntrackd link received nothing: {link}{}",
        fw.name,
        fw.diagnostics()
    );
    assert_eq!(
        link["malformed"], 0,
        "{}: conntrackd's datagrams were refused: {link}",
        fw.name
    );
}

/// The key file `ctsyncd genkey` printed, on `idx`, mode 0600.
fn install_key(lab: &FailoverLab, idx: usize, key: &str) -> std::path::PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = lab.fw(idx).path("sync.keys");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    file.write_all(key.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Wait until `idx`'s backup branch (run by keepalived or by hand since
/// timing line `since`) has ended and its flush is past, with every test
/// flow in its external cache before and after.
fn settle_backup(lab: &FailoverLab, idx: usize, since: usize, flows: &[FlowInfo]) {
    wait_external_complete(lab, idx, flows);
    lab.wait_backup_done(idx, since, Duration::from_secs(15));
    wait_external_complete(lab, idx, flows);
}

#[test]
fn rolling_migration_from_conntrackd_keeps_connections() {
    let started = Instant::now();
    let mut lab = FailoverLab::new(Mode::Conntrackd, Options::default());
    eprintln!("lab {} in {}", lab.id, lab.dir.display());

    // ---- the starting point: conntrackd on both, fwa primary ------------
    lab.start_daemon(0);
    lab.start_keepalived(0);
    lab.wait_event(0, 0, "GROUP G1 MASTER", VRRP_START);
    assert!(
        lab::wait_until(Duration::from_secs(5), || lab.holds_vips(0)),
        "fwa says MASTER but does not hold the VIPs{}",
        lab.a.diagnostics()
    );
    lab.wait_backup_done(0, 0, Duration::from_secs(10));
    let mut traffic_spec = spec(&lab);
    traffic_spec.max_duration = TRAFFIC_FOR;
    let traffic = Traffic::start(&traffic_spec)
        .unwrap_or_else(|e| panic!("traffic did not start: {e}{}", lab.a.diagnostics()));
    let flows: Vec<FlowInfo> = traffic.flows().to_vec();
    eprintln!("{} test flows up through fwa (conntrackd)", flows.len());
    lab.start_daemon(1);
    lab.start_keepalived(1);
    lab.wait_event(1, 0, "GROUP G1 BACKUP", VRRP_START);
    settle_backup(&lab, 1, 0, &flows);
    let snapshot = lab.conntrack(0);
    let absent: Vec<u32> = flows
        .iter()
        .filter(|f| failover::verdict::find(&snapshot, f).is_none())
        .map(|f| f.id)
        .collect();
    assert!(
        absent.is_empty(),
        "fwa's kernel lacks test flows {absent:?}"
    );
    let mut afters: Vec<(After, String)> = Vec::new();

    // ---- step 1: fwb becomes ctsyncd -------------------------------------
    let converted_b = convert(&lab, 1);
    // Negative control: the converted config as is speaks ctsync's own
    // protocol, which conntrackd does not understand: even after a bulk
    // from fwa and a resync request from fwb, fwb has none of fwa's flows.
    run_ctsyncd(&mut lab, 1, &converted_b);
    lab.a.ctl_ok(&["-B"]);
    lab.b.ctl_ok(&["-n"]);
    std::thread::sleep(NEGATIVE_WAIT);
    let learnt = in_external(&lab, 1, &flows);
    assert_eq!(
        learnt, 0,
        "negative control: ctsyncd on protocol ctsync learnt {learnt} flows from conntrackd"
    );
    eprintln!("step 1 negative control: fwb on protocol ctsync holds 0 of fwa's flows");
    // The procedure: the link speaks conntrackd's protocol; after the
    // start, the glue's backup branch (-s, -t, -n) asks fwa for its table.
    run_ctsyncd(&mut lab, 1, &with_protocol(&converted_b, "conntrackd"));
    let since = lab.b.timing().len();
    lab.run_notify(1, "backup");
    settle_backup(&lab, 1, since, &flows);
    assert_cd_link_healthy(&lab, 1);
    eprintln!(
        "step 1 done at {:.1}s: fwb (ctsyncd, conntrackd protocol) holds fwa's flows",
        secs(started.elapsed())
    );

    // ---- step 2: fail over to fwb ----------------------------------------
    let after = hand_over(&mut lab, &traffic, 0, 1, Failure::Graceful);
    afters.push((after, "step 2: failover to fwb (ctsyncd)".into()));
    // fwb's -B (the glue's primary branch) reached fwa's conntrackd.
    wait_external_complete(&lab, 0, &flows);

    // ---- step 3: fwa becomes ctsyncd -------------------------------------
    let converted_a = convert(&lab, 0);
    run_ctsyncd(&mut lab, 0, &with_protocol(&converted_a, "conntrackd"));
    let skip = lab.a.events().len();
    let since = lab.a.timing().len();
    lab.start_keepalived(0);
    lab.wait_event(0, skip, "GROUP G1 BACKUP", VRRP_START);
    settle_backup(&lab, 0, since, &flows);
    assert_cd_link_healthy(&lab, 0);
    assert_cd_link_healthy(&lab, 1);
    eprintln!(
        "step 3 done at {:.1}s: fwa (ctsyncd, conntrackd protocol) holds fwb's flows",
        secs(started.elapsed())
    );

    // ---- step 4: ctsync's protocol with a key, backup first --------------
    let genkey = std::process::Command::new(lab::ctsyncd_bin())
        .arg("genkey")
        .output()
        .expect("run ctsyncd genkey");
    assert!(genkey.status.success(), "ctsyncd genkey failed");
    let key = String::from_utf8(genkey.stdout).expect("genkey prints UTF-8");
    let key_a = install_key(&lab, 0, &key);
    let key_b = install_key(&lab, 1, &key);
    run_ctsyncd(&mut lab, 0, &with_key(&converted_a, &key_a));
    // The window: fwa (ctsync, sealed) cannot hear fwb (conntrackd's
    // protocol), not even a bulk. No failover may happen here.
    lab.b.ctl_ok(&["-B"]);
    std::thread::sleep(NEGATIVE_WAIT);
    let learnt = in_external(&lab, 0, &flows);
    assert_eq!(
        learnt, 0,
        "negative control: fwa on ctsync's protocol learnt {learnt} flows from fwb on conntrackd's"
    );
    eprintln!("step 4 window: fwa (ctsync) holds 0 of fwb's (conntrackd protocol) flows");
    run_ctsyncd(&mut lab, 1, &with_key(&converted_b, &key_b));
    // A daemon restart leaves the primary's kernel table alone.
    assert_eq!(
        kernel_holds(&lab, 1, &flows),
        flows.len(),
        "fwb's kernel lost test flows when its daemon restarted"
    );
    let since = lab.a.timing().len();
    lab.run_notify(0, "backup");
    settle_backup(&lab, 0, since, &flows);
    let after = hand_over(&mut lab, &traffic, 1, 0, Failure::Graceful);
    afters.push((after, "step 4: failover to fwa (ctsync, keys)".into()));
    let skip = lab.b.events().len();
    let since = lab.b.timing().len();
    lab.start_keepalived(1);
    lab.wait_event(1, skip, "GROUP G1 BACKUP", VRRP_START);
    settle_backup(&lab, 1, since, &flows);
    let after = hand_over(&mut lab, &traffic, 0, 1, Failure::Graceful);
    afters.push((after, "final failover to fwb (ctsync, keys)".into()));

    // Both sealed and opened, neither refused a sealed datagram.
    for fw in [&lab.a, &lab.b] {
        let stats = fw.stats();
        let auth = &stats["auth"];
        assert_eq!(auth["enabled"], true, "{}: {auth}", fw.name);
        for counter in ["sealed", "opened", "epochs_admitted"] {
            assert!(
                auth[counter].as_u64().unwrap_or(0) > 0,
                "{}: no {counter}: {auth}",
                fw.name
            );
        }
        for counter in ["bad_tag", "unknown_key"] {
            assert_eq!(auth[counter], 0, "{}: {counter}: {auth}", fw.name);
        }
        assert!(
            stats["conntrackd_link"].is_null(),
            "{}: still a conntrackd link: {}",
            fw.name,
            stats["conntrackd_link"]
        );
    }

    let report = traffic.stop();
    let mut phases = Vec::new();
    for (after, name) in &afters {
        print_metrics(&lab, &report, after, name);
        phases.push(judge(
            &lab,
            &report,
            after,
            &snapshot,
            Failure::Graceful,
            name,
        ));
    }
    if phases.iter().any(|p| !p.violations.is_empty()) {
        lab.keep = true;
        eprintln!("{}{}", lab.a.diagnostics(), lab.b.diagnostics());
    }
    eprintln!("migration took {:.1}s", secs(started.elapsed()));
    assert_survived(&phases);
}
