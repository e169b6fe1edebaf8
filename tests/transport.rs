//! Multicast links and link state on the real kernel: two network namespaces
//! (`cts-t-<pid>-<n>a` / `b`) joined by two veth pairs, entered per thread
//! with `setns`. Needs root; skipped (with a message) otherwise.
//!
//! Multicast groups are not in the project's test ranges, so these tests use
//! the administratively scoped IPv4 group 239.198.18.1 and the link-local
//! IPv6 group ff02::1:198; unicast addresses are 198.18.0.0/15 and
//! 2001:db8::/32.

use ctsync::transport::{interface_up, open, Link, LinkKind, LinkSpec};
use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const GROUP4: &str = "239.198.18.1";
const GROUP6: &str = "ff02::1:198";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by veth pairs a1-b1 (198.18.0.0/24, 2001:db8:5::/64)
/// and a2-b2 (198.18.1.0/24, 2001:db8:6::/64); deleted on drop.
struct Lab {
    a: String,
    b: String,
}

impl Lab {
    fn new() -> Lab {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let base = format!("cts-t-{}-{n}", std::process::id());
        let lab = Lab {
            a: format!("{base}a"),
            b: format!("{base}b"),
        };
        ip(&["netns", "add", &lab.a]);
        ip(&["netns", "add", &lab.b]);
        for (pair, v4, v6) in [
            ("1", "198.18.0", "2001:db8:5"),
            ("2", "198.18.1", "2001:db8:6"),
        ] {
            let (va, vb) = (format!("a{pair}"), format!("b{pair}"));
            ip(&[
                "-n", &lab.a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns",
                &lab.b,
            ]);
            for (ns, dev, host) in [(&lab.a, &va, "1"), (&lab.b, &vb, "2")] {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v4}.{host}/24"),
                    "dev",
                    dev,
                ]);
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v6}::{host}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
                ip(&["-n", ns, "link", "set", dev, "up"]);
            }
        }
        ip(&["-n", &lab.a, "link", "set", "lo", "up"]);
        ip(&["-n", &lab.b, "link", "set", "lo", "up"]);
        // Until the kernel's link watcher has seen the carrier, a veth's
        // queue drops what is sent: wait for every end to be running.
        for (ns, dev) in [
            (&lab.a, "a1"),
            (&lab.a, "a2"),
            (&lab.b, "b1"),
            (&lab.b, "b2"),
        ] {
            assert!(running(ns, dev), "{ns} {dev} never came up");
        }
        lab
    }
}

/// Wait (at most 5 s) for `dev` in `ns` to report operstate UP.
fn running(ns: &str, dev: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let out = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show", "dev", dev])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(" state UP ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Move the calling thread into network namespace `ns`.
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: a valid namespace fd; setns affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Run `f` on a dedicated thread (which switches namespaces at will) with a
/// current-thread tokio runtime.
fn on_ns_thread<F>(f: F)
where
    F: FnOnce() + Send + 'static,
{
    std::thread::spawn(f).join().unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn mcast(group: &str, dev: &str, local: &str, port: u16) -> LinkSpec {
    LinkSpec {
        kind: LinkKind::Multicast {
            group: group.parse().unwrap(),
        },
        interface: Some(dev.to_string()),
        local: local.parse().unwrap(),
        port,
    }
}

/// The next datagram on `link`'s receiving socket, or None within 2 s.
async fn recv(link: &Link) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    let got = tokio::time::timeout(Duration::from_secs(2), link.receiver.recv_from(&mut buf));
    let (n, from) = got.await.ok()?.unwrap();
    buf.truncate(n);
    Some((buf, from))
}

/// One family's scenario: delivery A→B with A's local address as source, no
/// loopback to A, no unicast on the multicast socket, and nothing from the
/// other interface.
fn multicast_scenario(group: &'static str, net1: &'static str, net2: &'static str) {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::new();
    let (a, b) = (lab.a.clone(), lab.b.clone());
    let local = |net: &str, host: &str| -> String {
        if net.contains(':') {
            format!("{net}::{host}")
        } else {
            format!("{net}.{host}")
        }
    };
    let port = 3780;
    on_ns_thread(move || {
        runtime().block_on(async move {
            enter(&a);
            let a1 = open(&mcast(group, "a1", &local(net1, "1"), port)).unwrap();
            let a2 = open(&mcast(group, "a2", &local(net2, "1"), port)).unwrap();
            enter(&b);
            let b1 = open(&mcast(group, "b1", &local(net1, "2"), port)).unwrap();
            let b2 = open(&mcast(group, "b2", &local(net2, "2"), port)).unwrap();
            // A catch-all unicast socket in B on the same port proves the
            // unicast datagram below did arrive in B.
            let wildcard: SocketAddr = if group.contains(':') {
                "[::]:3780".parse().unwrap()
            } else {
                "0.0.0.0:3780".parse().unwrap()
            };
            let catch_all = socket2::Socket::new(
                socket2::Domain::for_address(wildcard),
                socket2::Type::DGRAM,
                None,
            )
            .unwrap();
            catch_all.set_reuse_address(true).unwrap();
            catch_all.bind(&wildcard.into()).unwrap();
            let catch_all: StdUdpSocket = catch_all.into();
            catch_all
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();

            // 1. Unicast to B's address and the link port, then multicast on
            //    a2 (the other interface), then multicast on a1.
            enter(&a);
            let uni =
                StdUdpSocket::bind(SocketAddr::new(local(net1, "1").parse().unwrap(), 0)).unwrap();
            let b_addr: IpAddr = local(net1, "2").parse().unwrap();
            uni.send_to(b"unicast", SocketAddr::new(b_addr, port))
                .unwrap();
            a2.send(b"via-a2").await.unwrap();
            a1.send(b"via-a1").await.unwrap();

            // b1 sees only a1's datagram, from A's configured local address.
            let (bytes, from) = recv(&b1).await.expect("b1 received nothing");
            assert_eq!(bytes, b"via-a1", "b1 read unicast or a2's traffic");
            assert_eq!(from.ip(), local(net1, "1").parse::<IpAddr>().unwrap());
            assert!(b1.is_from_peer(&from));
            let mut buf = [0u8; 64];
            let (n, _) = catch_all.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"unicast", "unicast reached B");
            // b2 sees a2's datagram only (the control for the interface test).
            let (bytes, from) = recv(&b2).await.expect("b2 received nothing");
            assert_eq!(bytes, b"via-a2");
            assert_eq!(from.ip(), local(net2, "1").parse::<IpAddr>().unwrap());

            // 2. Loop off: A's own datagrams do not come back to A. B answers
            //    on both links; that answer must be the first thing A reads.
            b1.send(b"from-b1").await.unwrap();
            b2.send(b"from-b2").await.unwrap();
            let (bytes, _) = recv(&a1).await.expect("a1 received nothing");
            assert_eq!(bytes, b"from-b1", "a1 read its own datagram");
            let (bytes, _) = recv(&a2).await.expect("a2 received nothing");
            assert_eq!(bytes, b"from-b2", "a2 read its own datagram");

            // 3. Nothing else is pending anywhere.
            for (name, link) in [("a1", &a1), ("a2", &a2), ("b1", &b1), ("b2", &b2)] {
                let mut buf = [0u8; 64];
                let r = link.receiver.try_recv_from(&mut buf);
                assert!(r.is_err(), "{name} has an extra datagram: {r:?}");
            }
        });
    });
    drop(lab);
}

#[test]
fn ipv4_multicast_between_namespaces() {
    multicast_scenario(GROUP4, "198.18.0", "198.18.1");
}

#[test]
fn ipv6_multicast_between_namespaces() {
    multicast_scenario(GROUP6, "2001:db8:5", "2001:db8:6");
}

/// Give this thread its own mount namespace with a sysfs of its current
/// network namespace (as `ip netns exec` does), so `/sys/class/net` shows it.
fn remount_sys() {
    // SAFETY: plain syscalls with valid NUL-terminated strings; they affect
    // only this thread's (newly unshared) mount namespace.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
        let root = c"/";
        let none = c"none";
        let rc = libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        );
        assert_eq!(rc, 0, "make / rslave");
        let sys = c"/sys";
        let sysfs = c"sysfs";
        let rc = libc::mount(
            sysfs.as_ptr(),
            sys.as_ptr(),
            sysfs.as_ptr(),
            0,
            std::ptr::null(),
        );
        assert_eq!(rc, 0, "mount sysfs: {}", std::io::Error::last_os_error());
    }
}

/// Poll `interface_up(dev)` until it equals `want` (operstate changes are
/// asynchronous), for at most 3 s.
fn settles(dev: &str, want: bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if interface_up(dev) == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn interface_up_follows_veth_state() {
    if !is_root() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lab = Lab::new();
    let (a, b) = (lab.a.clone(), lab.b.clone());
    on_ns_thread(move || {
        enter(&b);
        remount_sys();
        assert!(settles("b1", true), "b1 up");
        assert!(!interface_up("a1"), "a1 lives in the other namespace");
        // Peer end down: b1 is still administratively UP but not RUNNING.
        ip(&["-n", &a, "link", "set", "a1", "down"]);
        assert!(settles("b1", false), "b1 without carrier still up");
        ip(&["-n", &a, "link", "set", "a1", "up"]);
        assert!(settles("b1", true), "b1 not back up");
        ip(&["-n", &b, "link", "set", "b1", "down"]);
        assert!(settles("b1", false), "b1 down still up");
        assert!(interface_up("b2"), "b2 untouched");
        ip(&["-n", &b, "link", "set", "b1", "up"]);
        assert!(settles("b1", true), "b1 not back up");
    });
    drop(lab);
}
