//! Sync-link sockets: UDP unicast today (IPv4 or IPv6), one socket per
//! configured link, bound to the link's local address and interface.
//!
//! Owns: opening, binding and reading the sockets, and telling a datagram
//! from the configured peer apart from a stranger's. Must not: parse the sync
//! protocol, or hold replication state (that is `wire` and `sync`).

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How a link reaches its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// UDP unicast to one peer.
    Udp { peer: IpAddr },
    /// A multicast group (not available yet).
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
#[derive(Clone, Debug)]
pub struct Link {
    pub spec: LinkSpec,
    pub socket: Arc<UdpSocket>,
}

/// A datagram read from a link.
#[derive(Debug)]
pub struct Received {
    pub link: usize,
    pub from: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Receive and send buffer size asked of the kernel for sync sockets.
const SOCKET_BUFFER: usize = 4 << 20;

/// Open and bind one link's socket. Must run inside a tokio runtime.
pub fn open(spec: &LinkSpec) -> io::Result<Link> {
    if let LinkKind::Multicast { .. } = spec.kind {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "multicast links are not supported yet; use transport = \"udp\"",
        ));
    }
    let domain = if spec.local.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    if spec.local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(dev) = &spec.interface {
        socket.bind_device(Some(dev.as_bytes())).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind to interface {dev}: {e}"))
        })?;
    }
    // Larger buffers absorb bursts; failure to grow them is not fatal.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let bind = SocketAddr::new(spec.local, spec.port);
    socket
        .bind(&SockAddr::from(bind))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {bind}: {e}")))?;
    socket.set_nonblocking(true)?;
    let socket = UdpSocket::from_std(socket.into())?;
    Ok(Link {
        spec: spec.clone(),
        socket: Arc::new(socket),
    })
}

impl Link {
    /// True when a datagram comes from the address this link expects.
    pub fn is_from_peer(&self, from: &SocketAddr) -> bool {
        match self.spec.kind {
            LinkKind::Udp { peer } => from.ip() == peer,
            LinkKind::Multicast { .. } => true,
        }
    }

    /// Read datagrams forever, handing each to `tx`; ends when `tx` closes.
    pub async fn read_into(self, index: usize, tx: mpsc::Sender<Received>) {
        let mut buf = vec![0u8; 65536];
        loop {
            match self.socket.recv_from(&mut buf).await {
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
}
