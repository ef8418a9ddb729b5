//! Real kv-server processes on loopback for the process tests: certificates, ports, data
//! directories, and helpers to find the leader, write, read and wait.

#![allow(dead_code)] // each test file uses its own subset

use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::kv_client::KvClient;
use kv_proto::kv::{GetRequest, ReadConsistency, SetRequest, StatusRequest};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(20);

/// The ports `free_port` hands out: below Linux's ephemeral range (32768 and up by default).
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A free loopback port, for a server to take later; never the same one twice in a process.
///
/// Not `bind(":0")`: that port comes from the ephemeral range, the same range the source ports
/// of outgoing connections come from, so between its release and the server's bind any new
/// connection could take it (CI saw a node fail with its metrics address "already in use").
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..TEST_PORTS.len() {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let offset = start.wrapping_add(n) % TEST_PORTS.len() as u32;
        let port = (TEST_PORTS.start + offset) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA and one certificate for all nodes' peer connections (covering 127.0.0.1).
pub fn certificates(dir: &Path) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca-key.pem"), ca.key().serialize_pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("peer.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("peer-key.pem"), key.serialize_pem()).unwrap();
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub peer_ports: Vec<u16>,
    pub client_ports: Vec<u16>,
    /// Where each slot serves Prometheus metrics (plain HTTP, /metrics).
    pub metrics_ports: Vec<u16>,
    pub children: Vec<Option<Child>>,
    /// The slots of the initial cluster (the first ones); later slots are spares for joins.
    initial: usize,
    /// Flags given to every process besides the usual ones.
    pub extra_flags: Vec<String>,
}

impl Cluster {
    pub fn start(size: usize) -> Cluster {
        let mut cluster = Cluster::new(size);
        for node in 0..size {
            cluster.spawn(node);
        }
        cluster
    }

    /// A cluster with nothing running yet.
    pub fn new(size: usize) -> Cluster {
        Cluster::with_spares(size, 0)
    }

    /// A cluster of `size` nodes with nothing running yet, and `spares` more slots (ports
    /// and data directories) for members that join later.
    pub fn with_spares(size: usize, spares: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        let slots = size + spares;
        Cluster {
            dir,
            peer_ports: (0..slots).map(|_| free_port()).collect(),
            client_ports: (0..slots).map(|_| free_port()).collect(),
            metrics_ports: (0..slots).map(|_| free_port()).collect(),
            children: (0..slots).map(|_| None).collect(),
            initial: size,
            extra_flags: Vec::new(),
        }
    }

    pub fn initial_cluster(&self) -> String {
        let members: Vec<String> = self
            .peer_ports
            .iter()
            .take(self.initial)
            .enumerate()
            .map(|(i, port)| format!("n{}=127.0.0.1:{port}", i + 1))
            .collect();
        members.join(",")
    }

    pub fn data_dir(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", node + 1))
    }

    pub fn spawn(&mut self, node: usize) {
        let initial_cluster = self.initial_cluster();
        self.spawn_as(node, &format!("n{}", node + 1), &initial_cluster, "new");
    }

    /// Starts process slot `node` (its ports and data directory) as member `name`.
    pub fn spawn_as(&mut self, node: usize, name: &str, initial_cluster: &str, state: &str) {
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join(format!("n{}.log", node + 1))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kv-server"))
            .arg(format!("--name={name}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg(format!("--data-dir={}", self.data_dir(node).display()))
            .arg(format!("--listen-peer-address=127.0.0.1:{}", self.peer_ports[node]))
            .arg(format!("--listen-client-address=127.0.0.1:{}", self.client_ports[node]))
            .arg(format!("--listen-metrics-address=127.0.0.1:{}", self.metrics_ports[node]))
            .arg(format!("--peer-cert-file={}", dir.join("peer.pem").display()))
            .arg(format!("--peer-key-file={}", dir.join("peer-key.pem").display()))
            .arg(format!("--peer-trusted-ca-file={}", dir.join("ca.pem").display()))
            .arg("--tick-ms=50")
            .arg("--snapshot-entries=200")
            .arg("--snapshot-catchup-entries=20")
            .args(&self.extra_flags)
            .arg("--request-timeout-ms=1000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[node] = Some(child);
    }

    /// The log (stderr) of slot `node`.
    pub fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{}.log", node + 1))).unwrap()
    }

    /// Waits for slot `node`'s process to exit by itself; kills it and fails if it does not.
    pub fn wait_exit(&mut self, node: usize, why: &str) -> std::process::ExitStatus {
        let mut child = self.children[node].take().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill(); // never leave a process behind
                let _ = child.wait();
                panic!("node {} did not exit: {why}", node + 1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, node: usize) -> std::process::ExitStatus {
        let pid = self.children[node].as_ref().unwrap().id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.wait_exit(node, "no exit after SIGTERM")
    }

    pub async fn channel(&self, node: usize) -> Channel {
        let address = format!("http://127.0.0.1:{}", self.client_ports[node]);
        let deadline = Instant::now() + WAIT;
        loop {
            match Channel::from_shared(address.clone()).unwrap().connect().await {
                Ok(channel) => return channel,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(error) => panic!("node {node} does not serve clients: {error}"),
            }
        }
    }

    pub async fn kv(&self, node: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(node).await)
    }

    /// The index of the node every live node names as leader.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for node in (0..self.children.len()).filter(|&n| self.children[n].is_some()) {
                let mut client = ClusterClient::new(self.channel(node).await);
                if let Ok(status) = client.status(StatusRequest {}).await {
                    let status = status.into_inner();
                    if status.role == "leader" {
                        return node;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..self.children.len() {
            self.kill(node);
        }
    }
}

/// Sets `key` through `node`, retrying while no leader is known.
pub async fn set(cluster: &Cluster, node: usize, key: &str, value: &str) -> u64 {
    let mut client = cluster.kv(node).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let request = SetRequest {
            key: key.to_string().into(),
            value: value.to_string().into(),
            session: None,
        };
        match client.set(request).await {
            Ok(response) => return response.into_inner().revision,
            Err(status) if Instant::now() < deadline => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    ),
                    "{status}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("set {key} at node {node}: {status}"),
        }
    }
}

/// Waits until `node`'s own state (a serializable read) holds `key`.
pub async fn caught_up(cluster: &Cluster, node: usize, key: &str, failure: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let consistency = ReadConsistency::Serializable.into();
        let request = GetRequest { key: key.to_string().into(), consistency };
        if let Ok(response) = cluster.kv(node).await.get(request).await {
            if response.into_inner().found {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{failure}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn get(cluster: &Cluster, node: usize, key: &str) -> Option<String> {
    let mut client = cluster.kv(node).await;
    let request = GetRequest {
        key: key.to_string().into(),
        consistency: ReadConsistency::Linearizable.into(),
    };
    let response = client.get(request).await.unwrap().into_inner();
    response.found.then(|| String::from_utf8(response.value.to_vec()).unwrap())
}

/// Sends a membership request to the nodes in turn until the leader takes it.
pub async fn through_leader<T, F, Fut>(cluster: &Cluster, call: F) -> T
where
    F: Fn(ClusterClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        for node in (0..cluster.children.len()).filter(|&n| cluster.children[n].is_some()) {
            match call(ClusterClient::new(cluster.channel(node).await)).await {
                Ok(response) => return response.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable => {}
                Err(status) => panic!("membership change refused: {status}"),
            }
        }
        assert!(Instant::now() < deadline, "no leader took the membership change");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client certificate for `user` (its Common Name), signed by the cluster's CA in `dir`:
/// `client-<user>.pem` and `client-<user>-key.pem`.
pub fn client_certificate(dir: &Path, user: &str) {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).unwrap());
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let ca = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key.unwrap()).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, user);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join(format!("client-{user}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("client-{user}-key.pem")), key.serialize_pem()).unwrap();
}
