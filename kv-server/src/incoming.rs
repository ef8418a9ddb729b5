//! Snapshot bytes arriving from a leader, chunk by chunk, written to a file in the data
//! directory (never held in memory whole).
//!
//! Once the file is complete, a thread of its own reads it back into a state and checks it
//! (its checksum, and that it covers exactly the index the message names), then writes it in
//! the log's snapshot format and syncs it ([`check_and_write`]). Only then is the
//! `InstallSnapshot` message stepped into the engine; the engine's Ready asks for the
//! snapshot to be installed, and [`Incoming::take`] hands over the state and the written
//! file, which the log puts in force with a rename. So a large snapshot is read, checked and
//! synced while the loop goes on answering clients and peers; the loop only renames a file.
//!
//! One check runs at a time. A transfer that completes meanwhile waits for it, and only the
//! newest waits: a leader sends a new snapshot only when the one before is no longer of use.

use kv_fsm::KvState;
use raft_core::{Message, MessageBody, NodeId, SnapshotMeta, Term};
use raft_log::wal::{SnapshotWriter, WrittenSnapshot};
use raft_net::ReceivedChunk;
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

const PART: &str = "incoming-snapshot.part";

struct Transfer {
    from: NodeId,
    id: u64,
    file: File,
}

/// A transfer complete on disk, not yet checked.
pub(crate) struct Received {
    /// The `InstallSnapshot` message, to step once the snapshot is checked and written.
    pub(crate) install: Message,
    /// What the message says the snapshot covers.
    pub(crate) meta: SnapshotMeta,
    /// The received bytes.
    pub(crate) path: PathBuf,
}

/// What the check of a [`Received`] found.
pub(crate) struct Checked {
    pub(crate) install: Message,
    /// The state, and the snapshot written in the log's format; or why it was refused.
    pub(crate) outcome: Result<(KvState, WrittenSnapshot), String>,
}

/// A snapshot checked and written (`written.meta()` says what it covers), waiting for the
/// engine to install it.
struct Staged {
    state: KvState,
    written: WrittenSnapshot,
}

/// The transfer under way, the check under way, the transfer waiting for it, and the last
/// snapshot checked.
pub(crate) struct Incoming {
    dir: PathBuf,
    current: Option<Transfer>,
    /// The sender of the snapshot whose check runs on its thread, if one does, and the term
    /// it sent it in.
    checking: Option<(NodeId, Term)>,
    waiting: Option<Received>,
    staged: Option<Staged>,
}

/// Where a complete transfer waits for its check: named by transfer, so that a copy of the
/// same snapshot sent again never lands on the file of one being checked.
fn complete_path(dir: &Path, from: NodeId, transfer_id: u64) -> PathBuf {
    dir.join(format!("incoming-snapshot-{from}-{transfer_id}"))
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
        Incoming { dir, current: None, checking: None, waiting: None, staged: None }
    }

    /// Takes a chunk; returns the transfer once it is complete, for [`Incoming::next_check`].
    /// A chunk at offset 0 starts a new transfer (abandoning the one under way); a chunk of
    /// any other transfer is ignored (the transport checked the order within one).
    pub(crate) fn receive(&mut self, chunk: ReceivedChunk) -> Option<Received> {
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
        let meta = snapshot.clone();
        let path = complete_path(&self.dir, chunk.from, chunk.transfer_id);
        if let Err(error) = std::fs::rename(self.dir.join(PART), &path) {
            tracing::warn!("receiving a snapshot: {error}");
            return None;
        }
        Some(Received { install, meta, path })
    }

    /// The transfer to check now: `received` if no check is under way (the caller starts
    /// it), else none, and `received` waits in place of any transfer waiting before it.
    pub(crate) fn next_check(&mut self, received: Received) -> Option<Received> {
        if self.checking.is_none() {
            self.checking = Some((received.install.from, received.install.term));
            return Some(received);
        }
        if let Some(older) = self.waiting.replace(received) {
            let _ = std::fs::remove_file(older.path);
        }
        None
    }

    /// The check under way ended (or could not start): the transfer to check next, if one
    /// waited (marked as under check, for the caller to start).
    pub(crate) fn end_check(&mut self) -> Option<Received> {
        self.checking = None;
        self.waiting.take().and_then(|received| self.next_check(received))
    }

    /// The check under way ended with `checked`, the node being in `term`. Returns the
    /// message to step, if the snapshot passed, a written snapshot to discard (the one it
    /// replaces as the one staged, or itself if it was sent in a term before `term`: the
    /// engine refuses it), and the transfer to check next, if one waited.
    pub(crate) fn checked(&mut self, checked: Checked, term: Term) -> CheckEnded {
        let next = self.end_check();
        let Checked { install, outcome } = checked;
        match outcome {
            Ok((_, written)) if install.term < term => {
                CheckEnded { install: Some(install), replaced: Some(written), next }
            }
            Ok((state, written)) => {
                let replaced = self.staged.replace(Staged { state, written });
                CheckEnded { install: Some(install), replaced: replaced.map(|s| s.written), next }
            }
            Err(reason) => {
                tracing::warn!("snapshot from node {} refused: {reason}", install.from);
                CheckEnded { install: None, replaced: None, next }
            }
        }
    }

    /// Whether `message` must not leave (it is dropped, not sent later): a heartbeat's answer
    /// to the leader whose snapshot is being checked. The leader sends a snapshot again when
    /// a follower answers its heartbeats an election timeout after the snapshot went out
    /// without having installed it (docs/snapshots.md, "Resend after an election timeout");
    /// a large snapshot can take longer than that to check and sync, and each resend would
    /// be checked again, for nothing. Unanswered, the leader waits, as it did when the check held up the loop.
    ///
    /// Only answers in the term the snapshot was sent in: an answer in a later term tells an
    /// old leader that a new one was elected (or answers the sender, elected again), and
    /// must leave.
    pub(crate) fn holds(&self, message: &Message) -> bool {
        matches!(message.body, MessageBody::HeartbeatResponse { .. })
            && self.checking == Some((message.to, message.term))
    }

    /// The snapshot staged, if the state has reached it already (`applied`): the engine will
    /// never install it (it answers such a snapshot without installing it), so its file goes.
    pub(crate) fn take_overtaken(&mut self, applied: u64) -> Option<WrittenSnapshot> {
        match &self.staged {
            Some(staged) if staged.written.meta().index.0 <= applied => {
                self.staged.take().map(|staged| staged.written)
            }
            _ => None,
        }
    }

    /// The state and written file of the checked snapshot `meta`, if it is the one staged.
    pub(crate) fn take(&mut self, meta: &SnapshotMeta) -> Option<(KvState, WrittenSnapshot)> {
        match self.staged.take() {
            Some(staged) if staged.written.meta().last() == meta.last() => {
                Some((staged.state, staged.written))
            }
            other => {
                self.staged = other;
                None
            }
        }
    }
}

/// See [`Incoming::checked`].
pub(crate) struct CheckEnded {
    pub(crate) install: Option<Message>,
    pub(crate) replaced: Option<WrittenSnapshot>,
    pub(crate) next: Option<Received>,
}

/// The check of a received snapshot, on a thread of its own: the file is read back into a
/// state, which must be whole, undamaged and at the index the message names; then its bytes
/// are written by `writer` (in the log's format, synced). The received file is removed
/// either way. A check that panics is a refusal, so that it still reports and the heartbeat
/// answers withheld meanwhile are not withheld for good.
pub(crate) fn check_and_write(received: Received, writer: SnapshotWriter) -> Checked {
    let checking = std::panic::AssertUnwindSafe(|| check_and_write_file(&received, writer));
    let outcome =
        std::panic::catch_unwind(checking).unwrap_or_else(|_| Err("its check panicked".into()));
    let _ = std::fs::remove_file(&received.path);
    Checked { install: received.install, outcome }
}

fn check_and_write_file(
    received: &Received,
    writer: SnapshotWriter,
) -> Result<(KvState, WrittenSnapshot), String> {
    let path = &received.path;
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let state = check(&mut file, &received.meta)?;
    let written = writer
        .write(&mut |out| {
            file.rewind()?;
            std::io::copy(&mut file, out).map(|_| ())
        })
        .map_err(|e| format!("writing it to the log: {e}"))?;
    Ok((state, written))
}

/// Reads a received snapshot back: it must be a whole, undamaged state at `meta.index`.
fn check(file: &mut File, meta: &SnapshotMeta) -> Result<KvState, String> {
    let state = KvState::read_snapshot(file).map_err(|e| e.to_string())?;
    if state.applied() != meta.index.0 {
        return Err(format!("it holds the state at {}, not at {}", state.applied(), meta.index));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::{Index, Membership, Term};
    use raft_log::wal::{Wal, WalOptions};

    /// The state at `index` (nothing written), as a snapshot's bytes.
    fn state_at(index: u64) -> Bytes {
        let mut state = KvState::new();
        for i in 1..=index {
            state.skip(i);
        }
        let mut bytes = Vec::new();
        state.write_snapshot(&mut bytes).unwrap();
        Bytes::from(bytes)
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            index: Index(index),
            term: Term(1),
            membership: Membership::new([NodeId(1)]),
        }
    }

    /// The whole snapshot `data`, described as `meta`, from `from` in one chunk.
    fn chunk(from: u64, transfer_id: u64, meta: SnapshotMeta, data: Bytes) -> ReceivedChunk {
        let body = MessageBody::InstallSnapshot { snapshot: meta };
        let install = Message { from: NodeId(from), to: NodeId(1), term: Term(1), body };
        let total_len = data.len() as u64;
        ReceivedChunk {
            from: NodeId(from),
            transfer_id,
            offset: 0,
            total_len,
            data,
            install: Some(install),
        }
    }

    fn heartbeat_answer(to: u64) -> Message {
        let body = MessageBody::HeartbeatResponse { read_round: 0 };
        Message { from: NodeId(1), to: NodeId(to), term: Term(1), body }
    }

    fn incoming_files(dir: &Path) -> usize {
        let names = std::fs::read_dir(dir).unwrap().map(|f| f.unwrap().file_name());
        names.filter(|n| n.to_string_lossy().starts_with("incoming")).count()
    }

    /// A snapshot whose bytes are whole and at the index named is written in the log's
    /// format; one damaged or at another index is refused. The received file goes either way.
    #[test]
    fn a_received_snapshot_is_written_only_if_whole_and_at_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let mut incoming = Incoming::new(dir.path().to_path_buf());
        let mut damaged = state_at(7).to_vec();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        let cases = [
            (meta(7), state_at(7), true),
            (meta(7), Bytes::from(damaged), false),
            (meta(8), state_at(7), false),
        ];
        for (id, (meta, data, whole)) in cases.into_iter().enumerate() {
            let received = incoming.receive(chunk(2, id as u64, meta.clone(), data)).unwrap();
            let checked = check_and_write(received, wal.received_snapshot_writer(meta));
            assert_eq!(checked.outcome.is_ok(), whole, "case {id}");
            assert_eq!(incoming_files(dir.path()), 0, "case {id}: the received file stayed");
        }
    }

    /// While node 2's snapshot is checked, the node's heartbeat answers to node 2 are held
    /// (node 2 would send its snapshot again on seeing one); other messages, and answers to
    /// other nodes, leave. Once the check ends, answers to node 2 leave again.
    #[test]
    fn heartbeat_answers_to_the_sender_are_held_while_its_snapshot_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (mut incoming, received) = checking_snapshot_at_7(dir.path());
        assert!(incoming.holds(&heartbeat_answer(2)));
        assert!(!incoming.holds(&heartbeat_answer(3)));
        let in_a_later_term = Message { term: Term(2), ..heartbeat_answer(2) };
        assert!(!incoming.holds(&in_a_later_term), "tells node 2 of a new term");
        let append_answer = Message {
            body: MessageBody::AppendResponse(raft_core::AppendResult::Accepted {
                match_index: Index(3),
            }),
            ..heartbeat_answer(2)
        };
        assert!(!incoming.holds(&append_answer));
        let install = received.install;
        incoming.checked(Checked { install, outcome: Err("refused".into()) }, Term(1));
        assert!(!incoming.holds(&heartbeat_answer(2)));
    }

    /// Transfers that complete while a check runs wait for it, only the newest: an older one
    /// waiting is dropped with its file. A refused snapshot's message is not stepped.
    #[test]
    fn only_the_newest_transfer_waits_for_the_check_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let (mut incoming, first) = checking_snapshot_at_7(dir.path());
        let second = incoming.receive(chunk(2, 2, meta(8), state_at(8))).unwrap();
        assert!(incoming.next_check(second).is_none(), "checked beside the one under way");
        let third = incoming.receive(chunk(2, 3, meta(9), state_at(9))).unwrap();
        assert!(incoming.next_check(third).is_none());
        assert_eq!(incoming_files(dir.path()), 2, "the first's and the newest's");
        let refused = Checked { install: first.install, outcome: Err("no".into()) };
        let ended = incoming.checked(refused, Term(1));
        assert!(ended.install.is_none(), "a refused snapshot was stepped");
        let next = ended.next.expect("the newest waited");
        assert_eq!(next.meta.index, Index(9));
        assert!(incoming.holds(&heartbeat_answer(2)), "its check is under way");
    }

    /// An `Incoming` in `dir` that received node 2's snapshot at 7 and marked its check as
    /// under way.
    fn checking_snapshot_at_7(dir: &Path) -> (Incoming, Received) {
        let mut incoming = Incoming::new(dir.to_path_buf());
        let received = incoming.receive(chunk(2, 1, meta(7), state_at(7))).unwrap();
        let received = incoming.next_check(received).expect("no check under way");
        (incoming, received)
    }

    /// A log and an `Incoming` in `dir`, and node 2's snapshot at 7 received and checked.
    fn snapshot_at_7_checked(dir: &Path) -> (Wal, Incoming, Checked) {
        let wal = Wal::open(dir, WalOptions::default()).unwrap();
        let (incoming, received) = checking_snapshot_at_7(dir);
        let checked = check_and_write(received, wal.received_snapshot_writer(meta(7)));
        (wal, incoming, checked)
    }

    /// A snapshot staged that the state has reached since will never be installed: it is
    /// handed back to be discarded. One still ahead of the state stays.
    #[test]
    fn a_staged_snapshot_the_state_reached_is_handed_back() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, mut incoming, checked) = snapshot_at_7_checked(dir.path());
        assert!(incoming.checked(checked, Term(1)).install.is_some(), "a whole one was refused");
        assert!(incoming.take_overtaken(6).is_none(), "handed back while still ahead");
        let overtaken = incoming.take_overtaken(7).expect("the state reached it");
        wal.discard_snapshot(overtaken).unwrap();
        assert!(incoming.take(&meta(7)).is_none(), "still staged");
    }

    /// A snapshot sent in a term before the node's is not staged (the engine refuses the
    /// message): handed back to be discarded, the message still stepped (its answer tells
    /// the sender of the new term).
    #[test]
    fn a_snapshot_sent_in_an_earlier_term_is_not_staged() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, mut incoming, checked) = snapshot_at_7_checked(dir.path());
        let ended = incoming.checked(checked, Term(2));
        assert!(ended.install.is_some(), "the message was not stepped");
        wal.discard_snapshot(ended.replaced.expect("not handed back")).unwrap();
        assert!(incoming.take(&meta(7)).is_none(), "staged");
    }
}
