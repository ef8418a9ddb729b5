//! Test certificates (rcgen) and nodes on loopback.
#![allow(dead_code)] // each test file uses a part

use bytes::Bytes;
use raft_core::{Entry, EntryId, EntryKind, Index, Message, MessageBody, NodeId, Term};
use raft_net::{Event, PeerAddress, Security, TlsIdentity, TlsPaths, Transport, TransportConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

pub const CLUSTER: &str = "test-cluster";
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A certificate authority writing PEM files into a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    name: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, name: name.into() }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `file` covering `names` (DNS names or IPs), signed by this CA.
    pub fn issue(&self, file: &str, names: &[&str]) -> TlsPaths {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        self.issue_with(file, params)
    }

    pub fn issue_with(&self, file: &str, params: CertificateParams) -> TlsPaths {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        TlsPaths { ca: self.ca_path(), cert: cert_path, key: key_path }
    }

    /// Node `id`'s files: a certificate for `node-<id>.example` and 127.0.0.1.
    pub fn node(&self, id: u64) -> TlsPaths {
        let name = format!("node-{id}.example");
        self.issue(&format!("{}-node-{id}", self.name), &[&name, "127.0.0.1"])
    }
}

pub fn identity(paths: &TlsPaths) -> Security {
    Security::Tls(TlsIdentity::load(paths).unwrap())
}

/// A node listening on an ephemeral loopback port, resolving every `node-*.example` used by
/// the tests to 127.0.0.1.
pub struct Node {
    pub id: NodeId,
    pub transport: Transport,
    pub events: mpsc::Receiver<Event>,
}

pub fn config(id: u64) -> TransportConfig {
    let mut config = TransportConfig::new(NodeId(id), CLUSTER, SocketAddr::new(LOCALHOST, 0));
    for other in 1..=9 {
        config.resolve.insert(format!("node-{other}.example"), LOCALHOST);
    }
    config.backoff_initial = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(200);
    // Generous: a loaded CI machine must not time a handshake out and drop queued messages.
    config.handshake_timeout = Duration::from_secs(10);
    config
}

impl Node {
    pub async fn start(config: TransportConfig, security: Security) -> Node {
        let id = config.node_id;
        let (transport, events) = Transport::start(config, security).await.unwrap();
        Node { id, transport, events }
    }

    /// The address peers should use for this node: its name and its port.
    pub fn address(&self) -> PeerAddress {
        PeerAddress { host: format!("node-{}.example", self.id.0), port: self.port() }
    }

    pub fn port(&self) -> u16 {
        self.transport.local_addr().port()
    }

    /// The next event within `within`, if any.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, self.events.recv()).await.ok().flatten()
    }

    /// The next message (skipping other events) within `within`.
    pub async fn next_message(&mut self, within: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await? {
                Event::Message(message) => return Some(message),
                _ => continue,
            }
        }
    }
}

/// Makes each node a peer of every other, by name, and waits until every link is up.
pub async fn connect_all(nodes: &[&Node]) {
    for a in nodes {
        for b in nodes {
            if a.id != b.id {
                a.transport.add_peer(b.id, b.address());
            }
        }
    }
    await_links(nodes).await;
}

/// Waits until each node has accepted a connection from every other one. Until then a
/// message may be lost with a dial that its receiver refused because it did not know the
/// sender yet (Raft allows that, and the transport reports it), so a test that counts
/// messages must start after this.
pub async fn await_links(nodes: &[&Node]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let peers = nodes.len() as u64 - 1;
    for node in nodes {
        while node.transport.stats().connections_accepted < peers {
            let stats = node.transport.stats();
            assert!(tokio::time::Instant::now() < deadline, "node {} links: {stats:?}", node.id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A heartbeat from `from` to `to` numbered `n` (in its commit index).
pub fn heartbeat(from: u64, to: u64, n: u64) -> Message {
    let body = MessageBody::Heartbeat { commit: Index(n), read_round: 0 };
    Message { from: NodeId(from), to: NodeId(to), term: Term(1), body }
}

/// A proposal of `len` bytes from `from` to `to`.
pub fn proposal(from: u64, to: u64, len: usize) -> Message {
    let body = MessageBody::Propose { proposals: vec![Bytes::from(vec![0x5a; len])] };
    Message { from: NodeId(from), to: NodeId(to), term: Term(1), body }
}

/// An append from `from` to `to` carrying one entry of `len` bytes.
pub fn append(from: u64, to: u64, len: usize) -> Message {
    let entry = Entry {
        term: Term(1),
        index: Index(1),
        kind: EntryKind::Normal,
        data: vec![0xa5; len].into(),
    };
    let body =
        MessageBody::Append { prev: EntryId::default(), entries: vec![entry], commit: Index(0) };
    Message { from: NodeId(from), to: NodeId(to), term: Term(1), body }
}

/// Waits until `condition` holds, checking every 10 ms; after 10 s, fails naming `what`.
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "waited 10 s for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `message` until it is queued (the writer may still be dialling).
pub async fn send_eventually(transport: &Transport, message: &Message) {
    for _ in 0..500 {
        if transport.send(message).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("could not queue {message}");
}

pub fn path_of(paths: &TlsPaths, which: &str) -> PathBuf {
    let path: &Path = match which {
        "ca" => &paths.ca,
        "cert" => &paths.cert,
        _ => &paths.key,
    };
    path.to_path_buf()
}
