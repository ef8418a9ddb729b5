//! The loop and its sync thread together, with the log on a file system whose syncs the
//! test holds or breaks: the promises of `persist.rs` that only a running loop can break.
//! - A node asked to stop, or whose every handle is dropped, while a batch is being synced
//!   stops only once it is durable.
//! - A node whose sync thread died stops with an error, instead of waiting for it forever.

use super::super::*;
use super::{put, until, within, OneNode};
use raft_log::vfs::{MappedBytes, StdVfs, VfsFile};
use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex};

/// What a gated sync does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum SyncMode {
    /// Syncs at once.
    #[default]
    Pass,
    /// Waits until the mode changes, then syncs.
    Hold,
    /// Panics: the thread running the sync dies.
    Panic,
}

/// The mode, and how many syncs wait in it.
#[derive(Default)]
struct GateState {
    mode: SyncMode,
    /// Syncs waiting in [`SyncMode::Hold`] now.
    held: usize,
}

/// The test's hold on the syncs of some files ([`GatedVfs`] says which): the log's segment
/// files synced by the `wal-sync` thread (the loop's own syncs, when it seals or cuts a
/// segment, and the one at open pass at once, so that holding one never blocks a runtime
/// thread), or the temporary snapshot files.
#[derive(Default)]
pub(super) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn set(&self, mode: SyncMode) {
        self.state().mode = mode;
        self.changed.notify_all();
    }

    pub(super) fn held(&self) -> usize {
        self.state().held
    }

    /// Runs before a gated file's real sync.
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

/// Sets the gate back to [`SyncMode::Pass`] when dropped, so that a failed assertion never
/// leaves the sync thread waiting.
pub(super) struct Released(pub(super) Arc<Gate>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.set(SyncMode::Pass);
    }
}

/// The real file system, with the syncs of some files passing the gate.
pub(super) struct GatedVfs {
    gate: Arc<Gate>,
    /// The files whose syncs pass it: those whose names end so.
    suffix: &'static str,
    /// Only the syncs run by this thread pass it, if set.
    thread: Option<&'static str>,
    /// If set, the removals of files the log gave up (`.gone`) pass this gate.
    removals: Option<Arc<Gate>>,
}

/// A file whose syncs pass the gate.
struct GatedFile {
    file: Box<dyn VfsFile>,
    gate: Arc<Gate>,
    thread: Option<&'static str>,
}

impl GatedVfs {
    /// Gates the syncs of the log's segment files that the `wal-sync` thread runs.
    pub(super) fn wal_syncs(gate: Arc<Gate>) -> GatedVfs {
        GatedVfs { gate, suffix: ".seg", thread: Some("wal-sync"), removals: None }
    }

    /// Gates the syncs of every temporary snapshot file, on any thread, and the removals of
    /// files the log gave up behind `removals`.
    pub(super) fn snapshot_syncs(gate: Arc<Gate>, removals: Arc<Gate>) -> GatedVfs {
        GatedVfs { gate, suffix: ".snap.tmp", thread: None, removals: Some(removals) }
    }

    fn wrap(&self, path: &Path, file: Box<dyn VfsFile>) -> Box<dyn VfsFile> {
        if path.to_string_lossy().ends_with(self.suffix) {
            Box::new(GatedFile { file, gate: self.gate.clone(), thread: self.thread })
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
        let given_up = raft_log::given_up::is_given_up(path);
        if let Some(removals) = self.removals.as_ref().filter(|_| given_up) {
            removals.pass();
        }
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
        if self.thread.is_none_or(|name| std::thread::current().name() == Some(name)) {
            self.gate.pass();
        }
        self.file.sync()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

/// A one-node cluster on a gated file system that has elected itself and applied a write.
pub(super) async fn one_node_that_wrote() -> (tempfile::TempDir, Arc<Gate>, NodeHandle, LoopTask) {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let one = OneNode::start(dir.path(), Arc::new(GatedVfs::wal_syncs(gate.clone()))).await;
    within("the first write", one.node.write(put("a"), None)).await.expect("applied");
    (dir, gate, one.node, one.task)
}

/// Writes `b` with the gate holding syncs; returns once its batch is written and its sync
/// held. The write's task holds a handle of its own.
async fn write_held(
    gate: &Gate,
    node: &NodeHandle,
) -> tokio::task::JoinHandle<Result<WriteResult, WriteError>> {
    gate.set(SyncMode::Hold);
    let writer = node.clone();
    let write = tokio::spawn(async move { writer.write(put("b"), None).await });
    until("the batch with b to be written and its sync held", || gate.held() == 1).await;
    write
}

/// Stop is asked while the batch holding a write is being synced. The node must not stop
/// before that sync ends: a stop that left at once would let the process exit with a batch
/// whose answers may have left (to a leader that counts them) and that no sync covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_waits_for_the_batch_being_synced() {
    let (_dir, gate, node, task) = one_node_that_wrote().await;
    let _released = Released(gate.clone());

    let _write = write_held(&gate, &node).await;
    let stopper = node.clone();
    let stopping = tokio::spawn(async move { stopper.stop().await });
    // The loop has taken the stop once its queue is empty; a stop that did not wait for the
    // sync would be answered within that same turn.
    until("the loop to take the stop", || node.inputs.capacity() == INPUTS_MAX).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "the node stopped while its batch was being synced");
    assert!(!task.is_finished(), "the loop ended while its batch was being synced");

    gate.set(SyncMode::Pass);
    within("the stop", stopping).await.unwrap();
    assert_eq!(within("the loop", task).await.unwrap(), Ok(()));
}

/// Every handle is dropped while the batch holding a write is being synced (the server is
/// gone). As with a stop, the loop ends only once that sync has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_handles_are_gone_waits_for_the_batch_being_synced() {
    let (_dir, gate, node, task) = one_node_that_wrote().await;
    let _released = Released(gate.clone());

    let write = write_held(&gate, &node).await;
    drop(node);
    write.abort(); // its handle goes too
    until("the write's handle to go", || write.is_finished()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "the loop ended while its batch was being synced");

    gate.set(SyncMode::Pass);
    assert_eq!(within("the loop", task).await.unwrap(), Ok(()));
}

/// The sync thread dies (a panic in the sync). The loop must see it and stop with an error
/// naming it; otherwise every write waits forever for a sync no one runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_sync_thread_died_stops_with_an_error() {
    let (_dir, gate, node, task) = one_node_that_wrote().await;
    let _released = Released(gate.clone());

    gate.set(SyncMode::Panic);
    let write = within("the write's answer", node.write(put("b"), None)).await;
    assert!(write.is_err(), "a write was answered {write:?} with no sync thread");
    let error = within("the loop", task).await.unwrap().expect_err("the loop went on");
    assert!(error.contains("sync thread"), "the error does not name the sync thread: {error}");
}

/// A sync the disk holds past [`slow::SLOW_STEP`] is counted (and logged) as a slow sync of
/// the log, once, while the loop goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_held_past_the_threshold_is_counted_as_slow() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let one = OneNode::start(dir.path(), Arc::new(GatedVfs::wal_syncs(gate.clone()))).await;
    let _released = Released(gate.clone());
    within("the first write", one.node.write(put("a"), None)).await.expect("applied");
    let slow_syncs = || {
        let label = crate::metrics::SlowStepLabel { step: "wal_sync" };
        one.metrics.slow_steps.get_or_create(&label).get()
    };
    assert_eq!(slow_syncs(), 0, "a sync passing at once was counted slow");

    let write = write_held(&gate, &one.node).await;
    tokio::time::sleep(slow::SLOW_STEP + Duration::from_millis(50)).await;
    one.status().await; // the loop answers while the disk holds the sync
    assert_eq!(slow_syncs(), 0, "counted before the sync ended");
    gate.set(SyncMode::Pass);
    within("the held write", write).await.unwrap().expect("applied");
    assert_eq!(slow_syncs(), 1);
    let text = one.metrics.encode();
    assert!(!text.contains("kv_raft_loop_turn_duration_seconds_count 0"), "no turn measured");
}
