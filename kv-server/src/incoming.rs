//! Snapshot bytes arriving from a leader, chunk by chunk, written to a file in the data
//! directory (never held in memory whole). Once the file is complete it is read back into a
//! state and checked (its checksum, and that it covers exactly the index the message names);
//! only then is the `InstallSnapshot` message stepped into the engine. The engine's Ready
//! then asks for the snapshot to be installed, and [`Incoming::take`] hands over the file and
//! the state.

use kv_fsm::KvState;
use raft_core::{Message, MessageBody, NodeId, SnapshotMeta};
use raft_net::ReceivedChunk;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

const PART: &str = "incoming-snapshot.part";

struct Transfer {
    from: NodeId,
    id: u64,
    file: File,
}

/// The transfer under way and the last complete one.
pub(crate) struct Incoming {
    dir: PathBuf,
    current: Option<Transfer>,
    complete: Option<(SnapshotMeta, PathBuf, KvState)>,
}

fn complete_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    dir.join(format!("incoming-snapshot-{}-{}", meta.index.0, meta.term.0))
}

impl Incoming {
    /// Receives into `dir`; files left by an earlier run are removed.
    pub(crate) fn new(dir: PathBuf) -> Incoming {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with("incoming-snapshot") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Incoming { dir, current: None, complete: None }
    }

    /// Takes a chunk; returns the `InstallSnapshot` message once the transfer is complete.
    /// A chunk at offset 0 starts a new transfer (abandoning the one under way); a chunk of
    /// any other transfer is ignored (the transport checked the order within one).
    pub(crate) fn receive(&mut self, chunk: ReceivedChunk) -> Option<Message> {
        if chunk.offset == 0 {
            let path = self.dir.join(PART);
            match File::create(&path) {
                Ok(file) => {
                    self.current = Some(Transfer { from: chunk.from, id: chunk.transfer_id, file })
                }
                Err(error) => {
                    tracing::warn!("{}: cannot receive a snapshot: {error}", path.display());
                    self.current = None;
                    return None;
                }
            }
        }
        let transfer = self.current.as_mut()?;
        if (transfer.from, transfer.id) != (chunk.from, chunk.transfer_id) {
            return None;
        }
        if let Err(error) = transfer.file.write_all(&chunk.data) {
            tracing::warn!("receiving a snapshot: {error}");
            self.current = None;
            return None;
        }
        let install = chunk.install?;
        self.current = None;
        let MessageBody::InstallSnapshot { snapshot } = &install.body else { return None };
        let path = complete_path(&self.dir, snapshot);
        if let Some((_, older, _)) = self.complete.take() {
            let _ = std::fs::remove_file(older);
        }
        if let Err(error) = std::fs::rename(self.dir.join(PART), &path) {
            tracing::warn!("receiving a snapshot: {error}");
            return None;
        }
        let state = match check(&path, snapshot) {
            Ok(state) => state,
            Err(reason) => {
                tracing::warn!("snapshot from node {} refused: {reason}", install.from);
                let _ = std::fs::remove_file(&path);
                return None;
            }
        };
        self.complete = Some((snapshot.clone(), path, state));
        Some(install)
    }

    /// The file and state of the complete snapshot `meta`, if it is the one received last.
    pub(crate) fn take(&mut self, meta: &SnapshotMeta) -> Option<(PathBuf, KvState)> {
        match self.complete.take() {
            Some((received, path, state))
                if received.index == meta.index && received.term == meta.term =>
            {
                Some((path, state))
            }
            other => {
                self.complete = other;
                None
            }
        }
    }
}

/// Reads a received snapshot back: it must be a whole, undamaged state at `meta.index`.
fn check(path: &Path, meta: &SnapshotMeta) -> Result<KvState, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let state = KvState::read_snapshot(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    if state.applied() != meta.index.0 {
        return Err(format!("it holds the state at {}, not at {}", state.applied(), meta.index));
    }
    Ok(state)
}
