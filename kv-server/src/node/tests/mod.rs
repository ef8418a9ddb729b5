//! Tests of the loop that need a running node, and their harness: a one-node cluster in the
//! test's process. It elects itself, its log lives on the file system the test gives, and the
//! test can hand the loop peer events of its own (answers from a peer that does not exist).
//! - `persist`: stopping, or losing every handle, waits for the batch being synced; a dead
//!   sync thread stops the node.
//! - `membership`: a learner silent for an election timeout is not promoted.
//! - `serving`: the client API served on it: unknown services are UNIMPLEMENTED, and a stop
//!   lets the calls in flight finish.
//! - `snapshots`: a snapshot received from a leader is checked and synced while the loop
//!   goes on answering.

mod membership;
mod persist;
mod serving;
mod snapshots;

use super::*;
use kv_proto::kv::Put;
use raft_net::{Security, TlsIdentity, TlsPaths, TransportConfig};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::path::Path;

/// A running one-node cluster.
struct OneNode {
    node: NodeHandle,
    task: LoopTask,
    /// Events for the loop, beside the transport's.
    inject: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
}

/// The election timeout of [`OneNode`]: 3 ticks of 10 ms.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(30);

impl OneNode {
    /// Starts node 1, the only voter, with its data in `dir` on `vfs`.
    async fn start(dir: &Path, vfs: Arc<dyn Vfs>) -> OneNode {
        let listen = "127.0.0.1:0".parse().unwrap();
        let config = TransportConfig::new(NodeId(1), "test-node", listen);
        let security = Security::Tls(tls_identity(dir));
        let (transport, mut from_transport) = Transport::start(config, security).await.unwrap();
        let (inject, events) = mpsc::channel(64);
        let forward = inject.clone();
        tokio::spawn(async move {
            while let Some(event) = from_transport.recv().await {
                if forward.send(event).await.is_err() {
                    return;
                }
            }
        });
        let me = kv_fsm::Member {
            name: "n1".into(),
            peer_address: transport.local_addr().to_string(),
            client_address: "127.0.0.1:1".into(),
            promote: false,
        };
        let config = NodeConfig {
            id: NodeId(1),
            voters: vec![NodeId(1)],
            data_dir: dir.join("data"),
            tick: ELECTION_TIMEOUT / 3,
            election_ticks: 3,
            snapshot_entries: 1 << 20,
            snapshot_bytes: 1 << 30,
            snapshot_catchup_entries: 0,
            request_timeout: Duration::from_secs(20),
            me,
        };
        let runtime = tokio::runtime::Handle::current();
        let metrics = Arc::new(Metrics::new());
        let (node, task) =
            start(vfs, config, Arc::new(transport), events, runtime, metrics.clone()).unwrap();
        OneNode { node, task, inject, metrics }
    }

    /// The node's status, once it answers.
    async fn status(&self) -> NodeStatus {
        within("the status", self.node.status()).await.expect("the loop answers")
    }

    /// Polls the status every few milliseconds until `condition` holds of it.
    async fn status_when(&self, what: &str, condition: impl Fn(&NodeStatus) -> bool) {
        within(what, async {
            while !condition(&self.status().await) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

/// A CA and a certificate it signed for 127.0.0.1, as the transport's files.
fn tls_identity(dir: &Path) -> TlsIdentity {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths =
        TlsPaths { ca: dir.join("ca.pem"), cert: dir.join("n1.pem"), key: dir.join("n1-key.pem") };
    std::fs::write(&paths.ca, ca_cert.pem()).unwrap();
    std::fs::write(&paths.cert, cert.pem()).unwrap();
    std::fs::write(&paths.key, key.serialize_pem()).unwrap();
    TlsIdentity::load(&paths).unwrap()
}

/// A put of value `v` at `key`.
fn put(key: &str) -> Op {
    Op::Put(Put { key: Bytes::from(key.to_owned()), value: Bytes::from_static(b"v") })
}

/// `future`, or a panic naming `what` after ten seconds.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(10), future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `condition` every few milliseconds until it holds.
async fn until(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}
