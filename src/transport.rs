//! Sync-link sockets: UDP unicast and multicast (IPv4 or IPv6), one link per
//! configured `[[link]]`, bound to the link's local address and interface;
//! and the link-state probe (`interface_up`) that redundant-link failover
//! reads.
//!
//! Owns: opening, binding and reading the sockets, joining multicast groups
//! on the configured interface only, telling a datagram from the configured
//! peer apart from a stranger's, and reading an interface's state from sysfs.
//! Must not: parse the sync protocol, choose the active link, or hold
//! replication state (that is `wire` and `sync`).

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How a link reaches its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// UDP unicast to one peer.
    Udp { peer: IpAddr },
    /// A multicast group (IPv4 or IPv6), joined on the link's interface.
    Multicast { group: IpAddr },
}

/// One configured sync link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    pub kind: LinkKind,
    pub interface: Option<String>,
    pub local: IpAddr,
    pub port: u16,
}

impl LinkSpec {
    /// Where this link's datagrams go.
    pub fn destination(&self) -> SocketAddr {
        match self.kind {
            LinkKind::Udp { peer } => SocketAddr::new(peer, self.port),
            LinkKind::Multicast { group } => SocketAddr::new(group, self.port),
        }
    }

    /// The addresses this link uses (never replicated themselves).
    pub fn addresses(&self) -> Vec<IpAddr> {
        match self.kind {
            LinkKind::Udp { peer } => vec![self.local, peer],
            LinkKind::Multicast { group } => vec![self.local, group],
        }
    }

    /// Largest datagram payload that fits the path MTU without fragmenting:
    /// IPv4 + UDP headers take 28 bytes, IPv6 + UDP 48.
    pub fn max_payload(&self, mtu: usize) -> usize {
        let overhead = if self.local.is_ipv6() { 48 } else { 28 };
        mtu.saturating_sub(overhead).max(512)
    }
}

/// An open link.
///
/// For a unicast link `socket` and `receiver` are the same socket. For a
/// multicast link `receiver` is bound to the group and port (so unicast and
/// other groups' traffic is not read), and `socket` is bound to the local
/// address with an ephemeral port, so datagrams leave with `local` as their
/// source (an IPv6 socket bound to a link-local group would pick a link-local
/// source otherwise).
#[derive(Clone, Debug)]
pub struct Link {
    pub spec: LinkSpec,
    /// The socket datagrams are sent from (to `spec.destination()`).
    pub socket: Arc<UdpSocket>,
    /// The socket datagrams are read from.
    pub receiver: Arc<UdpSocket>,
}

/// A datagram read from a link.
#[derive(Debug)]
pub struct Received {
    pub link: usize,
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Receive and send buffer size asked of the kernel for sync sockets.
const SOCKET_BUFFER: usize = 16 << 20;

/// Ask for SOCKET_BUFFER both ways. Plain SO_RCVBUF/SO_SNDBUF are capped by
/// net.core.rmem_max/wmem_max (about 200 KiB by default), far too little for
/// a window of datagrams in flight, so the FORCE variants come first (as
/// conntrackd's Snd/RcvSocketBuffer do; they need CAP_NET_ADMIN). Failure is
/// not fatal: the window and retransmissions cope, only more slowly.
fn grow_buffers(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let size = libc::c_int::try_from(SOCKET_BUFFER / 2).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for option in [force, plain] {
            // SAFETY: setsockopt reads a c_int from a pointer to a live local.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

/// Open and bind one link's sockets. Must run inside a tokio runtime.
///
/// Errors carry the link's interface or address in their message; a
/// multicast link without an interface, with a group that is not multicast,
/// or with a group and local address of different families is
/// `InvalidInput`, an unknown interface `NotFound`.
pub fn open(spec: &LinkSpec) -> io::Result<Link> {
    match spec.kind {
        LinkKind::Udp { .. } => open_unicast(spec),
        LinkKind::Multicast { group } => open_multicast(spec, group),
    }
}

fn open_unicast(spec: &LinkSpec) -> io::Result<Link> {
    let socket = new_socket(spec.local, spec.interface.as_deref())?;
    socket.set_reuse_address(true)?;
    let bind = SocketAddr::new(spec.local, spec.port);
    bind_to(&socket, bind)?;
    let socket = into_tokio(socket)?;
    Ok(Link {
        spec: spec.clone(),
        socket: socket.clone(),
        receiver: socket,
    })
}

fn open_multicast(spec: &LinkSpec, group: IpAddr) -> io::Result<Link> {
    if !group.is_multicast() {
        return Err(invalid(format!("{group} is not a multicast group address")));
    }
    if group.is_ipv4() != spec.local.is_ipv4() {
        return Err(invalid(format!(
            "multicast group {group} and local address {} are of different address families",
            spec.local
        )));
    }
    let dev = match spec.interface.as_deref() {
        Some(dev) if !dev.is_empty() => dev,
        _ => {
            return Err(invalid(format!(
                "multicast group {group}: an interface is required (set `interface`)"
            )))
        }
    };
    let ifindex = interface_index(dev)?;

    // Receiving socket: bound to the group itself, on this device only, and
    // delivered only the groups it joined itself.
    let receiver = new_socket(spec.local, Some(dev))?;
    receiver.set_reuse_address(true)?;
    let bind = match group {
        IpAddr::V4(g) => {
            receiver.set_multicast_all_v4(false)?;
            join_v4(&receiver, g, spec.local, dev)?;
            SocketAddr::new(group, spec.port)
        }
        IpAddr::V6(g) => {
            receiver.set_multicast_all_v6(false)?;
            receiver
                .join_multicast_v6(&g, ifindex)
                .map_err(|e| context(e, format!("cannot join group {g} on {dev}")))?;
            // Link-local groups need the scope; harmless for wider ones.
            SocketAddr::V6(SocketAddrV6::new(g, spec.port, 0, ifindex))
        }
    };
    set_multicast_send_options(&receiver, spec.local, ifindex)?;
    bind_to(&receiver, bind)?;

    // Sending socket: source address `local`, out of this device only.
    let sender = new_socket(spec.local, Some(dev))?;
    set_multicast_send_options(&sender, spec.local, ifindex)?;
    bind_to(&sender, SocketAddr::new(spec.local, 0))?;

    Ok(Link {
        spec: spec.clone(),
        socket: into_tokio(sender)?,
        receiver: into_tokio(receiver)?,
    })
}

fn join_v4(socket: &Socket, group: Ipv4Addr, local: IpAddr, dev: &str) -> io::Result<()> {
    let IpAddr::V4(local) = local else {
        return Err(invalid(format!(
            "group {group} needs an IPv4 local address"
        )));
    };
    socket
        .join_multicast_v4(&group, &local)
        .map_err(|e| context(e, format!("cannot join group {group} on {dev} ({local})")))
}

/// Outgoing interface, TTL/hop limit 1 and no loopback of our own datagrams.
fn set_multicast_send_options(socket: &Socket, local: IpAddr, ifindex: u32) -> io::Result<()> {
    match local {
        IpAddr::V4(local) => {
            socket.set_multicast_if_v4(&local)?;
            socket.set_multicast_ttl_v4(1)?;
            socket.set_multicast_loop_v4(false)?;
        }
        IpAddr::V6(_) => {
            socket.set_multicast_if_v6(ifindex)?;
            socket.set_multicast_hops_v6(1)?;
            socket.set_multicast_loop_v6(false)?;
        }
    }
    Ok(())
}

/// A UDP socket of `local`'s family, tied to `dev` when one is given.
fn new_socket(local: IpAddr, dev: Option<&str>) -> io::Result<Socket> {
    let domain = if local.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(dev) = dev.filter(|d| !d.is_empty()) {
        socket
            .bind_device(Some(dev.as_bytes()))
            .map_err(|e| context(e, format!("cannot bind to interface {dev}")))?;
    }
    // Larger buffers absorb bursts; failure to grow them is not fatal.
    grow_buffers(&socket);
    Ok(socket)
}

fn bind_to(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|e| context(e, format!("cannot bind {addr}")))
}

fn into_tokio(socket: Socket) -> io::Result<Arc<UdpSocket>> {
    socket.set_nonblocking(true)?;
    Ok(Arc::new(UdpSocket::from_std(socket.into())?))
}

/// The kernel's index of interface `name`.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| invalid(format!("bad interface name {name:?}")))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name}: {e}"),
        ));
    }
    Ok(index)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// `IFF_UP` in `/sys/class/net/<dev>/flags`.
const IFF_UP: u32 = 0x1;

/// True when interface `name` is both administratively UP and RUNNING
/// (operstate "up", or "unknown" with carrier 1 as some virtual devices
/// report). conntrackd accepted UP *or* RUNNING; a link whose peer end is
/// gone is not a candidate. Reads sysfs only; an unknown interface is down.
pub fn interface_up(name: &str) -> bool {
    interface_up_in(Path::new("/sys/class/net"), name)
}

/// `interface_up` against a sysfs-like directory (tests use a fake one).
fn interface_up_in(root: &Path, name: &str) -> bool {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return false;
    }
    let dir = root.join(name);
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    let admin_up = read("flags")
        .and_then(|f| {
            let f = f.trim();
            u32::from_str_radix(f.strip_prefix("0x").unwrap_or(f), 16).ok()
        })
        .is_some_and(|flags| flags & IFF_UP != 0);
    if !admin_up {
        return false;
    }
    // Reading `carrier` of a down device fails (EINVAL): that is no carrier.
    let carrier = || read("carrier").is_some_and(|c| c.trim() == "1");
    match read("operstate").as_deref().map(str::trim) {
        Some("up") => true,
        Some("unknown") => carrier(),
        _ => false,
    }
}

impl Link {
    /// True when a datagram comes from the address this link expects.
    pub fn is_from_peer(&self, from: &SocketAddr) -> bool {
        match self.spec.kind {
            LinkKind::Udp { peer } => from.ip() == peer,
            LinkKind::Multicast { .. } => true,
        }
    }

    /// Send one datagram to this link's destination (peer or group).
    pub async fn send(&self, bytes: &[u8]) -> io::Result<usize> {
        self.socket.send_to(bytes, self.spec.destination()).await
    }

    /// Read datagrams forever, handing each to `tx`; ends when `tx` closes.
    pub async fn read_into(self, index: usize, tx: mpsc::Sender<Received>) {
        let mut buf = vec![0u8; 65536];
        loop {
            match self.receiver.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    let bytes = buf.get(..n).unwrap_or_default().to_vec();
                    let msg = Received {
                        link: index,
                        from,
                        bytes,
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(link = index, error = %e, "sync socket read failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_loopback_links_exchange_a_datagram() {
        let a = LinkSpec {
            kind: LinkKind::Udp {
                peer: "127.0.0.1".parse().unwrap(),
            },
            interface: None,
            local: "127.0.0.1".parse().unwrap(),
            port: 0,
        };
        let link = open(&a).unwrap();
        let addr = link.socket.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(link.clone().read_into(3, tx));
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(b"hello", addr).unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!((got.link, got.bytes.as_slice()), (3, &b"hello"[..]));
        assert!(link.is_from_peer(&got.from));
    }

    #[test]
    fn payload_budget_depends_on_address_family() {
        let mut spec = LinkSpec {
            kind: LinkKind::Udp {
                peer: "198.18.0.2".parse().unwrap(),
            },
            interface: None,
            local: "198.18.0.1".parse().unwrap(),
            port: 3780,
        };
        assert_eq!(spec.max_payload(1500), 1472);
        spec.local = "2001:db8::1".parse().unwrap();
        assert_eq!(spec.max_payload(1500), 1452);
    }

    fn mcast(group: &str, local: &str, interface: Option<&str>) -> LinkSpec {
        LinkSpec {
            kind: LinkKind::Multicast {
                group: group.parse().unwrap(),
            },
            interface: interface.map(str::to_string),
            local: local.parse().unwrap(),
            port: 3780,
        }
    }

    #[tokio::test]
    async fn multicast_needs_an_interface() {
        for dev in [None, Some("")] {
            let e = open(&mcast("239.198.18.1", "198.18.0.1", dev)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("interface is required"), "{e}");
        }
    }

    #[tokio::test]
    async fn multicast_rejects_bad_groups_and_interfaces() {
        let e = open(&mcast("198.18.0.9", "198.18.0.1", Some("lo"))).unwrap_err();
        assert!(e.to_string().contains("not a multicast group"), "{e}");
        let e = open(&mcast("ff02::1:198", "198.18.0.1", Some("lo"))).unwrap_err();
        assert!(e.to_string().contains("different address families"), "{e}");
        let e = open(&mcast("239.198.18.1", "198.18.0.1", Some("cts-nonesuch0"))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = open(&mcast("239.198.18.1", "198.18.0.1", Some("a\0b"))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    struct FakeSys(std::path::PathBuf);
    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn interface_up_requires_admin_up_and_running() {
        let root = std::env::temp_dir().join(format!("cts-sys-{}", std::process::id()));
        let _guard = FakeSys(root.clone());
        let dev = |name: &str, flags: &str, oper: &str, carrier: Option<&str>| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("flags"), format!("{flags}\n")).unwrap();
            std::fs::write(d.join("operstate"), format!("{oper}\n")).unwrap();
            if let Some(c) = carrier {
                std::fs::write(d.join("carrier"), format!("{c}\n")).unwrap();
            }
        };
        dev("up0", "0x1003", "up", Some("1"));
        dev("unk1", "0x1003", "unknown", Some("1"));
        dev("unk0", "0x1003", "unknown", Some("0"));
        dev("unkx", "0x1003", "unknown", None);
        dev("lower", "0x1003", "lowerlayerdown", Some("0"));
        dev("dormant", "0x1003", "dormant", Some("1"));
        // Running but administratively down: conntrackd's UP-or-RUNNING bug.
        dev("admin", "0x1002", "up", Some("1"));
        dev("junk", "zz", "up", Some("1"));
        let cases = [
            ("up0", true),
            ("unk1", true),
            ("unk0", false),
            ("unkx", false),
            ("lower", false),
            ("dormant", false),
            ("admin", false),
            ("junk", false),
            ("missing", false),
            ("", false),
            ("..", false),
            ("up0/..", false),
        ];
        for (name, want) in cases {
            assert_eq!(interface_up_in(&root, name), want, "{name}");
        }
    }

    #[test]
    fn loopback_is_up_on_this_host() {
        // `lo` reports operstate "unknown" with carrier 1.
        assert!(interface_up("lo"));
        assert!(!interface_up("cts-nonesuch0"));
    }
}
