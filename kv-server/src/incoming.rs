//! Snapshot bytes arriving from a leader, chunk by chunk, written to a file in the data
//! directory (never held in memory whole). The `InstallSnapshot` message in the last chunk is
//! stepped into the engine only once the file is complete; the engine's Ready then asks for
//! the snapshot to be installed, and [`Incoming::take`] hands the file over.

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
    complete: Option<(SnapshotMeta, PathBuf)>,
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
        if let Err(error) = std::fs::rename(self.dir.join(PART), &path) {
            tracing::warn!("receiving a snapshot: {error}");
            return None;
        }
        if let Some((_, older)) = self.complete.replace((snapshot.clone(), path)) {
            let _ = std::fs::remove_file(older);
        }
        Some(install)
    }

    /// The file of the complete snapshot `meta`, if it is the one received last.
    pub(crate) fn take(&mut self, meta: &SnapshotMeta) -> Option<PathBuf> {
        match self.complete.take() {
            Some((received, path))
                if received.index == meta.index && received.term == meta.term =>
            {
                Some(path)
            }
            other => {
                self.complete = other;
                None
            }
        }
    }
}
