//! What a transport needs to know: who this node is, where its peers are, and its limits.

use raft_core::NodeId;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A peer's advertised address: the host its certificate must cover, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    /// A DNS name (`node-1.example`) or an IP address (`127.0.0.1`, `::1`).
    pub host: String,
    /// The peer port.
    pub port: u16,
}

/// Why an address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer address {input:?}: {reason} (expected host:port, [ipv6]:port)")]
pub struct AddressError {
    input: String,
    reason: &'static str,
}

impl std::str::FromStr for PeerAddress {
    type Err = AddressError;

    /// `host:port`, `1.2.3.4:port` or `[::1]:port`.
    fn from_str(input: &str) -> Result<PeerAddress, AddressError> {
        let error = |reason| AddressError { input: input.into(), reason };
        let (host, port) = input.rsplit_once(':').ok_or_else(|| error("no port"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(|| error("unclosed '['"))?,
            None if host.contains(':') => return Err(error("an IPv6 address needs brackets")),
            None => host,
        };
        if host.is_empty() {
            return Err(error("no host"));
        }
        let port = port.parse().map_err(|_| error("the port is not a number below 65536"))?;
        Ok(PeerAddress { host: host.into(), port })
    }
}

impl std::fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The transport's settings. [`TransportConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node.
    pub node_id: NodeId,
    /// Peers refuse connections naming another cluster id.
    pub cluster_id: String,
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// Every other member, by id. A connection is accepted only from these ids, and only with a
    /// certificate covering the host configured for the id (or from a newer node that
    /// announces itself: [`crate::Transport::accept_announced_from`]).
    pub peers: BTreeMap<NodeId, PeerAddress>,
    /// This node's advertised address, announced in every hello.
    pub advertise: Option<PeerAddress>,
    /// The local IP address outbound connections are made from (`None`: the system's
    /// choice). Lets whatever sits between the nodes (a firewall, the test harness's link
    /// proxies) tell this node's connections from others'.
    pub source: Option<IpAddr>,
    /// Host names resolved here instead of by DNS (as curl's `--resolve`).
    pub resolve: BTreeMap<String, IpAddr>,
    /// The most bytes of messages queued for one peer; a send beyond it is refused and the
    /// caller told. Snapshot chunks are bounded apart (two chunks in flight per peer).
    pub queue_bytes_max: usize,
    /// The largest frame accepted (the prefix excluded); larger ones close the connection.
    pub frame_bytes_max: usize,
    /// Snapshot data goes in chunks of this many bytes.
    pub snapshot_chunk_bytes: usize,
    /// A connection must finish TLS and the hello exchange within this.
    pub handshake_timeout: Duration,
    /// A write to a peer that makes no progress for this long drops the connection.
    pub write_timeout: Duration,
    /// The first delay before redialling a peer; doubles on every failure.
    pub backoff_initial: Duration,
    /// The longest delay between dials.
    pub backoff_max: Duration,
}

impl TransportConfig {
    /// The defaults for node `node_id` of `cluster_id`, listening on `listen`, with no peers.
    pub fn new(node_id: NodeId, cluster_id: impl Into<String>, listen: SocketAddr) -> Self {
        TransportConfig {
            node_id,
            cluster_id: cluster_id.into(),
            listen,
            peers: BTreeMap::new(),
            advertise: None,
            source: None,
            resolve: BTreeMap::new(),
            queue_bytes_max: 64 << 20,
            frame_bytes_max: 16 << 20,
            snapshot_chunk_bytes: 1 << 20,
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Exponential backoff with "equal" jitter: each delay is drawn from `[d/2, d]` where `d`
/// doubles per failure up to the maximum, so that nodes restarting together do not redial in
/// lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, current: initial }
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay / 2 + delay.mul_f64(fastrand::f64() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_names_ipv4_and_bracketed_ipv6() {
        let parsed: PeerAddress = "node-1.example:7001".parse().unwrap();
        assert_eq!(parsed, PeerAddress { host: "node-1.example".into(), port: 7001 });
        assert_eq!("127.0.0.1:1".parse::<PeerAddress>().unwrap().host, "127.0.0.1");
        let v6: PeerAddress = "[::1]:7001".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:7001");
        for bad in ["node", ":7001", "::1:7001", "[::1:7001", "a:99999", "a:x"] {
            let error = bad.parse::<PeerAddress>().unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn backoff_doubles_to_the_maximum_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let ceilings = [100, 200, 400, 800, 800];
        for ceiling in ceilings {
            let delay = backoff.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?} for {ceiling:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
