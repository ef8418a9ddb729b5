//! Snapshots: written beside the loop and adopted by it, sent to followers under their own
//! description, and installed from a leader (docs/snapshots.md, docs/state-machine.md).

use super::Core;
use crate::incoming::{Checked, Received};
use raft_core::{Index, Message, MessageBody};
use raft_log::wal::{Wal, WrittenSnapshot};
use raft_net::SnapshotSource;
use std::time::Instant;

/// Where the snapshot thread answers with the snapshot it wrote.
pub(super) type SnapshotOutcome = std::sync::mpsc::Receiver<Result<WrittenSnapshot, String>>;

impl Core {
    /// Sends the log's snapshot with `message`, if it is the snapshot the message describes
    /// (a newer one may have been saved since the engine built the message; the engine then
    /// resends with the right description after the failure is reported).
    pub(super) fn send_snapshot(&mut self, message: Message) -> Result<(), SnapshotNotSent> {
        let failed = SnapshotNotSent::Failed;
        let MessageBody::InstallSnapshot { snapshot } = &message.body else {
            return Err(failed("not an InstallSnapshot".into()));
        };
        let data = described_snapshot(self.raw.store(), snapshot).map_err(failed)?;
        let _runtime = self.runtime.enter();
        match self.transport.send_snapshot(message, Box::new(SnapshotReader(data))) {
            Ok(()) => Ok(()),
            Err(raft_net::SendError::SnapshotInProgress(_)) => Err(SnapshotNotSent::InProgress),
            Err(error) => Err(failed(error.to_string())),
        }
    }

    /// Checks a snapshot a leader sent, whose bytes all arrived, on a thread of its own, or
    /// queues it behind the check under way (`incoming.rs`).
    pub(super) fn check_received(&mut self, received: Received) {
        if let Some(received) = self.incoming.next_check(received) {
            self.start_check(received);
        }
    }

    /// Starts the check `Incoming` just marked as under way.
    fn start_check(&mut self, received: Received) {
        let writer = self.raw.store().received_snapshot_writer(received.meta.clone());
        let path = received.path.clone();
        let done = self.snapshot_checks.clone();
        let started = std::thread::Builder::new().name("snapshot-check".into()).spawn(move || {
            let _ = done.send(crate::incoming::check_and_write(received, writer));
        });
        if let Err(error) = started {
            // Refused; the leader sends it again once it hears the node is still behind.
            tracing::warn!("cannot start checking a received snapshot: {error}");
            let _ = std::fs::remove_file(path);
            if let Some(next) = self.incoming.end_check() {
                self.start_check(next);
            }
        }
    }

    /// A check ended: a snapshot that passed is staged and its `InstallSnapshot` stepped
    /// (one sent in an earlier term is discarded, the message still stepped: the engine
    /// answers its sender with the new term); the snapshot it replaces as the one staged is
    /// discarded; the next check starts.
    pub(super) fn on_snapshot_checked(&mut self, checked: Checked) {
        let ended = self.incoming.checked(checked, self.raw.term());
        if let Some(replaced) = ended.replaced {
            self.discard_received(replaced);
        }
        self.discard_overtaken_snapshot();
        if let Some(install) = ended.install {
            self.step(install);
        }
        if let Some(next) = ended.next {
            self.start_check(next);
        }
    }

    /// Removes the file of the received snapshot staged if the state has reached it (it was
    /// stale when it arrived, or the entries it covers came another way): the engine will not
    /// install it, since it restores a snapshot only beyond its commit index, which is at
    /// least the applied one (`Raft::handle_snapshot`). Checked at each tick and each check's
    /// end.
    pub(super) fn discard_overtaken_snapshot(&mut self) {
        if let Some(written) = self.incoming.take_overtaken(self.state.applied()) {
            self.discard_received(written);
        }
    }

    /// Hands the files the log gave up (segments and snapshots it no longer uses) to a
    /// blocking thread to remove: removing a large file takes tens of milliseconds, which
    /// the loop would otherwise spend (raft-log's `given_up.rs`). The removal goes on
    /// whether or not the returned task is awaited; files not removed before the process
    /// stops are removed by the log's next open. `None` if there is nothing to remove.
    pub(super) fn remove_given_up_files(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let given_up = self.raw.store_mut().take_given_up();
        if given_up.is_empty() {
            return None;
        }
        Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = given_up.remove() {
                tracing::warn!("removing files the log no longer uses: {error}");
            }
        }))
    }

    fn discard_received(&mut self, written: raft_log::wal::WrittenSnapshot) {
        if let Err(error) = self.raw.store().discard_snapshot(written) {
            tracing::warn!("removing a received snapshot that will not be installed: {error}");
        }
    }

    /// Installs the snapshot a leader sent, checked and written beside the loop: the state
    /// is the one read from it, and the log puts the written file in force with a rename and
    /// is replaced or compacted (docs/snapshots.md).
    pub(super) fn install_snapshot(
        &mut self,
        meta: &raft_core::SnapshotMeta,
    ) -> Result<(), String> {
        let (state, written) = self.incoming.take(meta).ok_or_else(|| {
            format!(
                "the engine installs snapshot {}/{} but it was never checked",
                meta.index, meta.term
            )
        })?;
        self.raw
            .store_mut()
            .install_written_snapshot(written)
            .map_err(|e| format!("installing the snapshot: {e}"))?;
        tracing::info!(node = %self.config.id, "installed the leader's snapshot at {}/{}", meta.index, meta.term);
        self.state = state;
        self.applied_bytes_since_snapshot = 0;
        self.connect_members();
        Ok(())
    }

    /// Starts a snapshot once enough entries were applied since the last one: the state is
    /// cloned (O(1)) and written by a thread of its own, so that a large state never holds up
    /// heartbeats, appends or client answers. One at a time.
    pub(super) fn maybe_snapshot(&mut self) -> Result<(), String> {
        if self.snapshot_in_flight.is_some() {
            return Ok(());
        }
        let applied = self.state.applied();
        // The log's snapshot, saved here or installed from a leader, is the last one.
        let last_snapshot = raft_core::LogStore::snapshot(self.raw.store()).index.0;
        let entries_due = applied >= last_snapshot.saturating_add(self.config.snapshot_entries);
        let bytes_due = self.applied_bytes_since_snapshot >= self.config.snapshot_bytes;
        if !entries_due && !bytes_due {
            return Ok(());
        }
        let membership = self.raw.membership_at(Index(applied));
        let writer = self
            .raw
            .store()
            .snapshot_writer(Index(applied), membership)
            .map_err(|e| format!("starting a snapshot: {e}"))?;
        let state = self.state.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let written = writer.write(&mut |out| state.write_snapshot(out).map(|_| ()));
                let _ = sender.send(written.map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("starting the snapshot thread: {e}"))?;
        self.snapshot_in_flight = Some((receiver, Instant::now()));
        self.applied_bytes_since_snapshot = 0;
        Ok(())
    }

    /// Puts in force the snapshot the snapshot thread wrote, if it is done, and compacts the
    /// log below it, keeping a margin for followers a little behind.
    pub(super) fn adopt_written_snapshot(&mut self) -> Result<(), String> {
        if self.persisting.is_syncing() {
            return Ok(()); // the log takes no change until the batch in flight is durable
        }
        let Some((receiver, started)) = &self.snapshot_in_flight else { return Ok(()) };
        let written = match receiver.try_recv() {
            Ok(written) => written,
            Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Err("the snapshot thread stopped without an answer".into())
            }
        };
        let took = started.elapsed();
        self.snapshot_in_flight = None;
        self.metrics.snapshots.inc();
        crate::metrics::observe(&self.metrics.snapshot_seconds, took);
        let written = written.map_err(|e| format!("writing a snapshot: {e}"))?;
        let index = written.meta().index;
        let wal = self.raw.store_mut();
        if !wal.adopt_snapshot(written).map_err(|e| format!("saving a snapshot: {e}"))? {
            return Ok(()); // a newer one, installed from the leader, took its place
        }
        let keep_from = index.0.saturating_sub(self.config.snapshot_catchup_entries);
        let compact_to = Index(keep_from).min(self.raw.compactable_index());
        self.raw.store_mut().compact(compact_to).map_err(|e| format!("compacting: {e}"))?;
        tracing::info!(node = %self.config.id, "snapshot at {index} (written in {took:.0?} beside the loop), log compacted to {compact_to}");
        Ok(())
    }
}

/// Why a snapshot did not go out.
pub(super) enum SnapshotNotSent {
    /// A transfer to the peer is under way already.
    InProgress,
    /// It failed; the engine should retry later.
    Failed(String),
}

/// The bytes of the log's snapshot, if it is the one `described` (a newer one may have been
/// saved since the engine built its InstallSnapshot: those bytes under that description would
/// install a state at the wrong index).
fn described_snapshot(
    wal: &Wal,
    described: &raft_core::SnapshotMeta,
) -> Result<raft_log::snapshot::SnapshotData, String> {
    let held = raft_core::LogStore::snapshot(wal);
    if held.last() != described.last() {
        return Err(format!("the log holds snapshot {}, not {}", held.last(), described.last()));
    }
    let data = wal.open_snapshot_data().map_err(|e| e.to_string())?;
    data.ok_or_else(|| "no snapshot to send".into())
}

/// A snapshot's bytes, read for the transport.
struct SnapshotReader(raft_log::snapshot::SnapshotData);

impl SnapshotSource for SnapshotReader {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::{Entry, EntryKind, LogStore, Membership, NodeId, Term};
    use raft_log::wal::WalOptions;

    #[test]
    fn a_snapshot_goes_out_only_under_its_own_description() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let entries: Vec<Entry> = (1..=20)
            .map(|i| Entry {
                term: Term(1),
                index: Index(i),
                kind: EntryKind::Normal,
                data: Bytes::new(),
            })
            .collect();
        let hard_state = raft_core::HardState { term: Term(1), vote: None, commit: Index(20) };
        wal.write(Some(hard_state), &entries).unwrap();
        let membership = Membership::new([NodeId(1)]);
        wal.save_snapshot(Index(10), membership.clone(), b"state at 10").unwrap();
        let at_10 = LogStore::snapshot(&wal);
        let data = described_snapshot(&wal, &at_10).expect("the held snapshot goes out");
        assert_eq!(data.len(), b"state at 10".len() as u64);
        // A newer snapshot is saved after the engine described the old one.
        wal.save_snapshot(Index(20), membership, b"state at 20").unwrap();
        let error = described_snapshot(&wal, &at_10).err().expect("a stale description");
        assert!(error.contains("holds snapshot 1/20, not 1/10"), "{error}");
        assert!(described_snapshot(&wal, &LogStore::snapshot(&wal)).is_ok());
    }
}
