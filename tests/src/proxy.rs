//! Network faults between peers without root: every node advertises, as its peer address, a
//! proxy run by the harness that forwards to the node's real listener, and every node dials
//! its peers from a loopback address of its own (`--peer-source-address`, see
//! [`source_ip`]). So the proxy in front of node `to` knows which node each connection comes
//! from, and applies the state of that one directed link (`from` -> `to`): up, down, slow or
//! lossy. A raft-net connection carries one direction only (each node sends on the
//! connection it dialled), so one-way faults are exact.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The state of one directed link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Link {
    /// Bytes flow.
    Up,
    /// No connection is let through, and those open are cut.
    Down,
    /// Bytes flow, each read held back this long first.
    Slow(Duration),
    /// Bytes flow, but each read cuts the connection with this probability (what a lossy
    /// network does to a TCP stream from the nodes' point of view: stalls and resets).
    Lossy(f64),
}

/// The loopback address node `index` (from 0) dials its peers from.
pub fn source_ip(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + index as u8))
}

/// The node a connection from `ip` comes from, if any.
fn node_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] >= 10 => {
            Some(usize::from(v4.octets()[3] - 10))
        }
        _ => None,
    }
}

/// Every link's state, shared by the proxies and the nemesis. A link not set is up.
#[derive(Clone)]
pub struct Links {
    state: Arc<Mutex<HashMap<(usize, usize), Link>>>,
    /// Bumped on every change, so that open connections look at their link again.
    changed: watch::Sender<u64>,
}

impl Default for Links {
    fn default() -> Links {
        Links { state: Arc::default(), changed: watch::Sender::new(0) }
    }
}

impl Links {
    /// The state of `from` -> `to`.
    pub fn get(&self, from: usize, to: usize) -> Link {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.get(&(from, to)).copied().unwrap_or(Link::Up)
    }

    /// Sets `from` -> `to`.
    pub fn set(&self, from: usize, to: usize, link: Link) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.insert((from, to), link);
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Every link up again.
    pub fn heal(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Starts the proxy in front of node `to`: it listens on `listen` and forwards to `target`.
/// Runs until the runtime stops.
pub async fn start(
    to: usize,
    listen: SocketAddr,
    target: SocketAddr,
    links: Links,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    tokio::spawn(async move {
        loop {
            let Ok((inbound, from)) = listener.accept().await else { continue };
            let Some(from) = node_of(from.ip()) else { continue }; // not a node: refused
            if links.get(from, to) == Link::Down {
                continue; // dropped: the dialer sees its connection closed
            }
            let links = links.clone();
            tokio::spawn(async move {
                if let Ok(outbound) = TcpStream::connect(target).await {
                    forward(inbound, outbound, links, from, to).await;
                }
            });
        }
    });
    Ok(())
}

/// Bytes read at most per forwarded chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// Copies both ways until either side closes or the link goes down.
async fn forward(inbound: TcpStream, outbound: TcpStream, links: Links, from: usize, to: usize) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let mut changed = links.changed.subscribe();
    let mut forth = vec![0u8; CHUNK_BYTES];
    let mut back = vec![0u8; CHUNK_BYTES];
    loop {
        tokio::select! {
            read = in_read.read(&mut forth) => {
                let Ok(n @ 1..) = read else { return };
                if !pass(&links, from, to).await || out_write.write_all(&forth[..n]).await.is_err()
                {
                    return;
                }
            }
            read = out_read.read(&mut back) => {
                let Ok(n @ 1..) = read else { return };
                if !pass(&links, from, to).await || in_write.write_all(&back[..n]).await.is_err() {
                    return;
                }
            }
            change = changed.changed() => {
                if change.is_err() || links.get(from, to) == Link::Down {
                    return;
                }
            }
        }
    }
}

/// Applies the link's state to one chunk: whether to pass it (after any delay) or cut.
async fn pass(links: &Links, from: usize, to: usize) -> bool {
    match links.get(from, to) {
        Link::Up => true,
        Link::Down => false,
        Link::Slow(delay) => {
            tokio::time::sleep(delay).await;
            true
        }
        Link::Lossy(probability) => fastrand::f64() >= probability,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind a proxy; returns the proxy's address.
    async fn echo_behind_proxy(links: &Links) -> SocketAddr {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        let _ = stream.write_all(&buf[..n]).await;
                    }
                });
            }
        });
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        start(1, listen, target, links.clone()).await.unwrap();
        listen
    }

    async fn dial_from(node: usize, to: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source_ip(node), 0)).unwrap();
        socket.connect(to).await.unwrap()
    }

    /// Whether a round trip of one byte works within a short time.
    async fn round_trip(stream: &mut TcpStream) -> bool {
        let trip = async {
            stream.write_all(b"x").await.ok()?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.ok()
        };
        matches!(tokio::time::timeout(Duration::from_secs(2), trip).await, Ok(Some(_)))
    }

    #[tokio::test]
    async fn a_link_down_cuts_its_connections_and_refuses_new_ones_others_go_on() {
        let links = Links::default();
        let proxy = echo_behind_proxy(&links).await;
        let mut from_0 = dial_from(0, proxy).await;
        let mut from_2 = dial_from(2, proxy).await;
        assert!(round_trip(&mut from_0).await && round_trip(&mut from_2).await);
        links.set(0, 1, Link::Down);
        assert!(!round_trip(&mut from_0).await, "the open connection is cut");
        let mut again = dial_from(0, proxy).await;
        assert!(!round_trip(&mut again).await, "a new one is refused");
        assert!(round_trip(&mut from_2).await, "another link is not touched");
        links.heal();
        let mut healed = dial_from(0, proxy).await;
        assert!(round_trip(&mut healed).await);
    }

    #[tokio::test]
    async fn a_slow_link_delays_and_a_lossy_one_cuts() {
        let links = Links::default();
        let proxy = echo_behind_proxy(&links).await;
        links.set(3, 1, Link::Slow(Duration::from_millis(300)));
        let mut slow = dial_from(3, proxy).await;
        let started = std::time::Instant::now();
        assert!(round_trip(&mut slow).await);
        assert!(started.elapsed() >= Duration::from_millis(600), "held back both ways");
        links.set(4, 1, Link::Lossy(1.0));
        let mut lossy = dial_from(4, proxy).await;
        assert!(!round_trip(&mut lossy).await);
    }
}
