//! The loop and its sync thread together, with the log on a file system whose syncs the
//! test holds or breaks: the promises of `persist.rs` that only a running loop can break.
//! - A node asked to stop while a batch is being synced stops only once it is durable.
//! - A node whose sync thread died stops with an error, instead of waiting for it forever.

use super::*;
use kv_proto::kv::Put;
use raft_log::vfs::{MappedBytes, StdVfs, VfsFile};
use raft_net::{Security, TlsIdentity, TlsPaths, TransportConfig};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex};

/// What a sync of a log segment does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SyncMode {
    /// Syncs at once.
    #[default]
    Pass,
    /// Waits until the mode changes, then syncs.
    Hold,
    /// Panics: the thread running the sync dies.
    Panic,
}

#[derive(Default)]
struct GateState {
    mode: SyncMode,
    /// Syncs waiting in [`SyncMode::Hold`] now.
    held: usize,
    /// Syncs finished.
    done: usize,
}

/// The test's hold on the syncs of the log's segment files (other files sync at once).
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, mode: SyncMode) {
        self.state().mode = mode;
        self.changed.notify_all();
    }

    fn held(&self) -> usize {
        self.state().held
    }

    fn done(&self) -> usize {
        self.state().done
    }

    /// Runs before a segment's real sync.
    fn pass(&self) {
        let mut state = self.state();
        match state.mode {
            SyncMode::Pass => {}
            SyncMode::Panic => {
                drop(state);
                panic!("injected: the thread running the log's sync dies");
            }
            SyncMode::Hold => {
                state.held += 1;
                while state.mode == SyncMode::Hold {
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                state.held -= 1;
            }
        }
    }
}

/// The real file system, with the syncs of segment files (`*.seg`) passing the gate.
struct GatedVfs {
    gate: Arc<Gate>,
}

struct GatedFile {
    file: Box<dyn VfsFile>,
    gate: Arc<Gate>,
}

impl GatedVfs {
    fn wrap(&self, path: &Path, file: Box<dyn VfsFile>) -> Box<dyn VfsFile> {
        if path.extension().is_some_and(|e| e == "seg") {
            Box::new(GatedFile { file, gate: self.gate.clone() })
        } else {
            file
        }
    }
}

impl Vfs for GatedVfs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        Ok(self.wrap(path, StdVfs.create_new(path)?))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        Ok(self.wrap(path, StdVfs.open(path)?))
    }
    fn map(&self, path: &Path) -> io::Result<MappedBytes> {
        StdVfs.map(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdVfs.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdVfs.rename(from, to)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
        StdVfs.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdVfs.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdVfs.sync_dir(dir)
    }
}

impl VfsFile for GatedFile {
    fn size(&self) -> io::Result<u64> {
        self.file.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn read_all(&self) -> io::Result<Vec<u8>> {
        self.file.read_all()
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_at(data, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.gate.pass();
        let synced = self.file.sync();
        self.gate.state().done += 1;
        synced
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
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

/// A one-node cluster (it elects itself) with its log in `dir` on `vfs`.
async fn one_node(dir: &Path, vfs: GatedVfs) -> Started {
    let listen = "127.0.0.1:0".parse().unwrap();
    let config = TransportConfig::new(NodeId(1), "persist-tests", listen);
    let security = Security::Tls(tls_identity(dir));
    let (transport, events) = Transport::start(config, security).await.unwrap();
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
        tick: Duration::from_millis(10),
        election_ticks: 3,
        snapshot_entries: 1 << 20,
        snapshot_bytes: 1 << 30,
        snapshot_catchup_entries: 0,
        request_timeout: Duration::from_secs(20),
        me,
    };
    let runtime = tokio::runtime::Handle::current();
    let metrics = Arc::new(Metrics::new());
    start(Arc::new(vfs), config, Arc::new(transport), events, runtime, metrics).unwrap()
}

/// A one-node cluster on a gated file system that has elected itself and applied a write.
async fn one_node_that_wrote() -> (tempfile::TempDir, Arc<Gate>, NodeHandle, LoopTask) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let (node, task) = one_node(dir.path(), GatedVfs { gate: gate.clone() }).await;
    within("the first write", node.write(put("a"), None)).await.expect("applied");
    (dir, gate, node, task)
}

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

/// Stop is asked while the batch holding a write is being synced. The node must not stop
/// before that sync ends: a stop that left at once would let the process exit with a batch
/// whose answers may have left (to a leader that counts them) and that no sync covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_waits_for_the_batch_being_synced() {
    let (_dir, gate, node, task) = one_node_that_wrote().await;

    gate.set(SyncMode::Hold);
    let writer = node.clone();
    let _write = tokio::spawn(async move { writer.write(put("b"), None).await });
    until("the batch with b to be written and its sync held", || gate.held() == 1).await;
    let done_before = gate.done();
    let stopper = node.clone();
    let stopping = tokio::spawn(async move { stopper.stop().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "the node stopped while its batch was being synced");
    assert!(!task.is_finished(), "the loop ended while its batch was being synced");

    gate.set(SyncMode::Pass);
    within("the stop", stopping).await.unwrap();
    assert!(gate.done() > done_before, "stopped before the held sync ended");
    assert_eq!(within("the loop", task).await.unwrap(), Ok(()));
}

/// The sync thread dies (a panic in the sync). The loop must see it and stop with an error
/// naming it; otherwise every write waits forever for a sync no one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_sync_thread_died_stops_with_an_error() {
    let (_dir, gate, node, task) = one_node_that_wrote().await;

    gate.set(SyncMode::Panic);
    let write = within("the write's answer", node.write(put("b"), None)).await;
    assert!(write.is_err(), "a write was answered {write:?} with no sync thread");
    let error = within("the loop", task).await.unwrap().expect_err("the loop went on");
    assert!(error.contains("sync thread"), "the error does not name the sync thread: {error}");
}
