//! The Debian package: `cargo deb` builds it from the project's files, it
//! holds what it must (binary stripped, unit, config as a conffile, glue,
//! man pages, completions, README), and it installs on this machine: the
//! daemon's user exists, the unit passes `systemd-analyze verify`, nothing
//! is enabled or started, and a purge takes it all away again.
//!
//! Needs root and cargo-deb (integration/install-deps installs it). The
//! package is made from the binary this test run built (`--no-build`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Build the package into a fresh directory and return its path.
fn build_deb(dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .current_dir(repo())
        .args(["deb", "--no-build", "--strip", "--output"])
        .arg(dir));
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one package expected: {debs:?}");
    debs.into_iter().next().expect("one package")
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", "ctsync"])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

/// Purges the package when the test ends, pass or fail, unless it was
/// installed before the test (then it is left as the test found it: the
/// same version reinstalled).
struct Purge {
    was_installed: bool,
}

impl Drop for Purge {
    fn drop(&mut self) {
        if !self.was_installed {
            let _ = Command::new("dpkg").args(["-P", "ctsync"]).output();
        }
    }
}

const FILES: &[&str] = &[
    "./usr/sbin/ctsyncd",
    "./etc/ctsyncd/ctsyncd.toml",
    "./etc/logrotate.d/ctsyncd",
    "./usr/lib/systemd/system/ctsyncd.service",
    "./usr/lib/sysusers.d/ctsync.conf",
    "./usr/share/ctsync/keepalived/ctsync-notify.sh",
    "./usr/share/ctsync/keepalived/keepalived.conf",
    "./usr/lib/ocf/resource.d/ctsync/ctsyncd",
    "./usr/share/man/man8/ctsyncd.8.gz",
    "./usr/share/man/man5/ctsyncd.toml.5.gz",
    "./usr/share/bash-completion/completions/ctsyncd",
    "./usr/share/zsh/vendor-completions/_ctsyncd",
    "./usr/share/fish/vendor_completions.d/ctsyncd.fish",
    "./usr/share/doc/ctsync/README.md",
];

#[test]
fn the_package_builds_holds_its_files_and_installs() {
    let tmp = std::env::temp_dir().join(format!("ctsync-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let deb = build_deb(&tmp);

    // Contents, with modes where they matter.
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for f in FILES {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} missing from the package:\n{listing}"
        );
    }
    for exe in [
        "./usr/sbin/ctsyncd",
        "./usr/lib/ocf/resource.d/ctsync/ctsyncd",
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {exe}")))
            .unwrap_or("");
        assert!(line.starts_with("-rwxr-xr-x"), "{exe}: {line}");
    }
    let depends = text(&run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends")));
    assert!(depends.contains("systemd"), "Depends: {depends}");
    let control = tmp.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    let mut conffiles: Vec<&str> = conffiles.lines().collect();
    conffiles.sort();
    assert_eq!(
        conffiles,
        ["/etc/ctsyncd/ctsyncd.toml", "/etc/logrotate.d/ctsyncd"]
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("systemd-sysusers"), "{postinst}");
    assert!(
        !postinst.contains("deb-systemd-invoke start") && !postinst.contains("systemctl start"),
        "the unit must not start before its config is edited:\n{postinst}"
    );

    // The packaged binary: stripped (the release build keeps line tables),
    // and it runs.
    let root = tmp.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let packaged = root.join("usr/sbin/ctsyncd");
    let built = std::fs::metadata(env!("CARGO_BIN_EXE_ctsyncd")).expect("built binary");
    let size = std::fs::metadata(&packaged).expect("packaged binary").len();
    assert!(
        size * 2 < built.len(),
        "packaged binary {size} bytes is not stripped (built: {})",
        built.len()
    );
    let version = text(&run(Command::new(&packaged).arg("-v")));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // Install on this machine.
    let _purge = Purge {
        was_installed: installed(),
    };
    run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(installed());
    let version = text(&run(Command::new("/usr/sbin/ctsyncd").arg("-v")));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let user = text(&run(Command::new("getent").args(["passwd", "ctsync"])));
    assert!(user.trim_end().ends_with(":/usr/sbin/nologin"), "{user}");
    let uid: u32 = user
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("uid");
    assert!(uid > 0 && uid < 1000, "a system user: {user}");
    // The unit verifies (man pages checked by tests/docs.rs: a minimal
    // image may exclude /usr/share/man from packages).
    let verify = Command::new("systemd-analyze")
        .args([
            "verify",
            "--man=no",
            "/usr/lib/systemd/system/ctsyncd.service",
        ])
        .output()
        .expect("systemd-analyze (systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !complaints.contains("ctsyncd"),
        "systemd-analyze verify: {complaints}"
    );
    // Installed, not enabled: the example config must be edited first.
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/ctsyncd.service").exists());
    // The installed example config is valid: a client command gets as far
    // as the (absent) daemon's socket.
    let status = Command::new("/usr/sbin/ctsyncd")
        .args(["-C", "/etc/ctsyncd/ctsyncd.toml", "status"])
        .output()
        .expect("ctsyncd status");
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(
        !status.status.success() && err.contains("/run/ctsyncd/ctsyncd.sock"),
        "{err}"
    );

    // Purge takes the files (the conffile too) away; the user stays.
    if !_purge.was_installed {
        run(Command::new("dpkg").args(["-P", "ctsync"]));
        assert!(!installed());
        for f in FILES {
            let p = Path::new(f.trim_start_matches('.'));
            assert!(!p.exists(), "{} left after purge", p.display());
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
