//! Changing the log: batches (group commit), cuts, compaction and snapshots.

use super::{Wal, WalError};
use crate::codec;
use crate::index::{Location, SegmentIndex};
use crate::record::{self, RecordKind};
use crate::segment::SegmentSync;
use crate::snapshot;
use crate::vote::Vote;
use raft_core::{Entry, EntryId, HardState, Index, LogStore, Membership, SnapshotMeta};

impl Wal {
    /// Makes a Ready's hard state and entries durable with one write and one `fdatasync`
    /// (plus one of the vote file first if the term or vote changed). If `entries[0]` is at or
    /// below the last index, the log is first cut there. When this returns `Ok`, the whole
    /// batch survives any crash, except a new commit index without entries: that one is
    /// only remembered, and written with the next entries (see [`Wal::hard_state`]).
    pub fn write(
        &mut self,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        match self.write_unsynced(hard_state, entries)? {
            Some(pending) => {
                let outcome = pending.sync();
                self.finish_sync(outcome)
            }
            None => Ok(()),
        }
    }

    /// [`Wal::write`] without its `fdatasync`, which the caller runs, on any thread, with
    /// [`PendingSync::sync`], and whose outcome it hands to [`Wal::finish_sync`]: the thread
    /// that writes can go on while the disk syncs. The entries are readable at once, and
    /// durable once `finish_sync` returns `Ok`. `None`: nothing waits for a sync (no entries
    /// were written; a new term or vote is synced before this returns, as in `write`).
    ///
    /// Until `finish_sync`, every change is refused with [`WalError::InvalidWrite`]: a batch
    /// is written only once the one before it is durable, so that a power cut can tear only
    /// the last batch (`docs/wal.md`).
    pub fn write_unsynced(
        &mut self,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<Option<PendingSync>, WalError> {
        let pending = self.guarded(|wal| wal.write_batch(hard_state, entries))?;
        self.sync_pending = pending.is_some();
        Ok(pending)
    }

    /// Takes the outcome of the [`PendingSync`] of the last [`Wal::write_unsynced`], and
    /// returns it. After a failed sync the log is read-only, as after a failed `write`.
    pub fn finish_sync(&mut self, outcome: Result<(), WalError>) -> Result<(), WalError> {
        self.sync_pending = false;
        if outcome.is_err() {
            self.read_only = true;
        }
        outcome
    }

    /// Runs a change unless the log is read-only, and makes it read-only if the change fails
    /// for any reason but an invalid request (which is refused before anything is touched).
    /// A failed write or sync may have left the files and this log's view of them apart, and
    /// a failed `fdatasync` may have dropped dirty pages: retrying could acknowledge data
    /// that is not on disk. Reopening the log reads the truth back.
    fn guarded<T>(
        &mut self,
        change: impl FnOnce(&mut Wal) -> Result<T, WalError>,
    ) -> Result<T, WalError> {
        if self.read_only {
            return Err(WalError::ReadOnly);
        }
        if self.sync_pending {
            let reason = "the last batch is still being synced (finish_sync first)";
            return Err(WalError::InvalidWrite(reason.into()));
        }
        let result = change(self);
        if matches!(result, Err(ref error) if !matches!(error, WalError::InvalidWrite(_))) {
            self.read_only = true;
        }
        result
    }

    fn write_batch(
        &mut self,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<Option<PendingSync>, WalError> {
        self.check_batch(hard_state, entries)?;
        if let Some(hard_state) = hard_state {
            // Before the entries: a torn batch must never leave an entry of a term the
            // durable term has not reached (a node back in an older term could vote, and
            // lead, in the term whose entries it holds).
            self.save_vote(hard_state)?;
        }
        if let Some(first) = entries.first().filter(|e| e.index <= self.last_index()) {
            self.truncate_from(first.index)?;
        }
        let active = self.segments.last().expect("a log always has a segment");
        if active.segment.len() > self.options.segment_bytes_max && !active.index.is_empty() {
            self.roll(self.last_index().next())?;
        }
        if let Some(hard_state) = hard_state {
            self.commit = hard_state.commit;
        }
        if entries.is_empty() {
            // Nothing for the log: no write, no fdatasync. A new commit index alone waits
            // for the next entries (Raft keeps it in volatile state; the leader repeats it).
            return Ok(None);
        }
        let commit_changed = self.commit != self.commit_recorded;
        let (buf, written) = self.encode_batch(commit_changed, entries);
        let pending = self.append(&buf)?;
        self.recent.push(entries);
        self.commit_recorded = self.commit;
        let active = self.segments.last_mut().expect("a log always has a segment");
        if let SegmentIndex::Memory(locations) = &mut active.index {
            locations.extend(written);
        }
        Ok(Some(pending))
    }

    /// Refuses batches that do not continue the log, or hold entries of a term beyond the
    /// one made durable with them.
    fn check_batch(
        &self,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        let durable = self.vote_file.current().term;
        let term = hard_state.map_or(durable, |h| h.term);
        if term < durable {
            return Err(WalError::InvalidWrite(format!("term {term} is older than {durable}")));
        }
        let Some(first) = entries.first() else { return Ok(()) };
        let last = self.last_index();
        // Entries a snapshot covers are committed: replacing them is a host bug, and the cut
        // would leave the log without the snapshot's last entry (open would then drop it all).
        let covered = self.compacted.index.max(self.snapshot().index);
        if first.index > last.next() || first.index <= covered {
            return Err(WalError::InvalidWrite(format!(
                "entries from {} do not fit a log holding {}..={last} with entries up to \
                 {covered} covered by a snapshot",
                first.index,
                self.first_index()
            )));
        }
        for (offset, entry) in entries.iter().enumerate() {
            if entry.index != first.index.plus(offset as u64) || entry.term > term {
                return Err(WalError::InvalidWrite(format!(
                    "entry {} of term {} does not follow in a batch of term {term}",
                    entry.index, entry.term
                )));
            }
            let len = codec::entry_payload_len(entry);
            if len > record::PAYLOAD_LEN_MAX as usize {
                return Err(WalError::InvalidWrite(format!(
                    "entry {} of {len} bytes exceeds the record limit of {} bytes",
                    entry.index,
                    record::PAYLOAD_LEN_MAX
                )));
            }
        }
        Ok(())
    }

    /// Saves the term and vote if they changed.
    fn save_vote(&mut self, hard_state: HardState) -> Result<(), WalError> {
        let vote = Vote { term: hard_state.term, vote: hard_state.vote };
        Ok(self.vote_file.save(vote)?)
    }

    /// Frames a batch: a batch-start record, the hard-state record if wanted, then every
    /// entry. Returns the bytes and where each entry will be.
    fn encode_batch(&self, with_hard_state: bool, entries: &[Entry]) -> (Vec<u8>, Vec<Location>) {
        let capacity = entries.iter().map(|e| e.data.len() + 40).sum::<usize>() + 64;
        let mut buf = Vec::with_capacity(capacity);
        // Tells a torn batch from damaged durable records at open (`segment.rs`).
        record::encode(RecordKind::BatchStart, &[], &mut buf);
        if with_hard_state {
            let hard_state = self.hard_state();
            record::encode_with(RecordKind::HardState, &mut buf, |out| {
                codec::encode_hard_state(&hard_state, out)
            })
            .expect("a hard state is 24 bytes");
        }
        let base = self.segments.last().expect("a log always has a segment").segment.len();
        let mut written = Vec::with_capacity(entries.len());
        for entry in entries {
            let offset = base + buf.len() as u64;
            let payload_len = record::encode_with(RecordKind::Entry, &mut buf, |out| {
                codec::encode_entry(entry, out)
            })
            .expect("check_batch refuses an entry too large for a record");
            written.push(Location { term: entry.term, offset, payload_len });
        }
        (buf, written)
    }

    fn append(&mut self, buf: &[u8]) -> Result<PendingSync, WalError> {
        let active = &mut self.segments.last_mut().expect("a log always has a segment").segment;
        // No more room than the segment can still use before it rolls.
        let end = active.len() + buf.len() as u64;
        let reserve =
            self.options.preallocate_bytes.min(self.options.segment_bytes_max.saturating_sub(end));
        active.append(buf, reserve)?;
        Ok(PendingSync(active.sync_later()))
    }

    /// Cuts the log before `index` (held, not compacted): later segments go, the segment
    /// holding it becomes the newest (its index file goes) and is cut at the entry, durably.
    fn truncate_from(&mut self, index: Index) -> Result<(), WalError> {
        let (position, at) = self.locate(index).expect("a cut point is held");
        self.recent.cut_from(index);
        if self.segments.len() > position + 1 {
            for gone in self.segments.split_off(position + 1).into_iter().rev() {
                self.give_up_segment_files(gone.first)?;
            }
            let first = self.segments[position].first;
            self.remove_index_file(first)?;
            self.sync_dir()?;
        }
        // Synced before anything is appended over the cut: a crash must not leave old records
        // behind the new ones, which would read as damage in the middle of the segment. Cut
        // batch by batch from the end, so that a crash in the middle of it leaves at most the
        // last batch torn (`Segment::cut_back_to`).
        let active = self.segments.last_mut().expect("a log always has a segment");
        active.segment.cut_back_to(at.offset)?;
        active.index.truncate((index.0 - active.first.0) as usize);
        Ok(())
    }

    /// Drops the entries up to `index`, which the latest snapshot must cover (paper §7):
    /// they are no longer served, and every sealed segment holding only such entries is
    /// given up ([`Wal::take_given_up`]).
    pub fn compact(&mut self, index: Index) -> Result<(), WalError> {
        self.guarded(|wal| wal.compact_prefix(index))
    }

    fn compact_prefix(&mut self, index: Index) -> Result<(), WalError> {
        let covered = self.snapshot().index;
        if index > covered || index > self.last_index() {
            return Err(WalError::InvalidWrite(format!(
                "cannot compact to {index}: the snapshot covers {covered} and the log ends at {}",
                self.last_index()
            )));
        }
        if index <= self.compacted.index {
            return Ok(());
        }
        let term = self.physical_term(index).expect("an index above the boundary is held");
        self.compacted = EntryId::new(term, index);
        self.recent.forget_through(index);
        let sealed = self.segments.len() - 1;
        let removable = self.segments[..sealed].iter().take_while(|s| s.end() <= index.next());
        let removable = removable.count();
        if removable == 0 {
            return Ok(());
        }
        for gone in self.segments.drain(..removable).collect::<Vec<_>>() {
            self.give_up_segment_files(gone.first)?;
        }
        self.sync_dir()
    }

    /// Saves a snapshot the host's state machine took at `index` (held or the compaction
    /// boundary), with the configuration there and its bytes. The log is unchanged;
    /// [`Wal::compact`] may then drop the prefix it covers. An older snapshot is ignored.
    pub fn save_snapshot(
        &mut self,
        index: Index,
        membership: Membership,
        data: &[u8],
    ) -> Result<(), WalError> {
        self.save_snapshot_with(index, membership, &mut |out| out.write_all(data))
    }

    /// As [`Wal::save_snapshot`], with the bytes written by `fill` as a stream (a large state
    /// is never held in memory whole).
    pub fn save_snapshot_with(
        &mut self,
        index: Index,
        membership: Membership,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), WalError> {
        self.guarded(|wal| wal.save_snapshot_file(index, membership, fill))
    }

    /// Starts a snapshot at `index` that another thread may write (a large state takes a
    /// while, and the log's owner should go on meanwhile): the returned writer is independent
    /// of the log. Hand what it wrote to [`Wal::adopt_snapshot`].
    pub fn snapshot_writer(
        &self,
        index: Index,
        membership: Membership,
    ) -> Result<SnapshotWriter, WalError> {
        let term = self.term(index).map_err(|e| WalError::InvalidWrite(e.to_string()))?;
        Ok(self.received_snapshot_writer(SnapshotMeta { index, term, membership }))
    }

    /// Puts in force a snapshot written by a [`SnapshotWriter`], unless the log already holds
    /// one as new (installed from a leader meanwhile, say): that one is kept and this one's
    /// file removed. Returns whether it was put in force. The log can then be compacted to it.
    pub fn adopt_snapshot(&mut self, written: WrittenSnapshot) -> Result<bool, WalError> {
        if written.0.meta().index <= self.snapshot().index {
            self.discard_snapshot(written)?;
            return Ok(false);
        }
        self.guarded(|wal| {
            let published = written.0.publish(&*wal.vfs, &wal.dir)?;
            wal.snapshot = Some(wal.take_over(published));
            Ok(true)
        })
    }

    fn save_snapshot_file(
        &mut self,
        index: Index,
        membership: Membership,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), WalError> {
        if index <= self.snapshot().index {
            return Ok(());
        }
        let term = self.term(index).map_err(|e| WalError::InvalidWrite(e.to_string()))?;
        let meta = SnapshotMeta { index, term, membership };
        let published = snapshot::write_streamed(&*self.vfs, &self.dir, &meta, fill)?;
        self.snapshot = Some(self.take_over(published));
        Ok(())
    }

    /// A snapshot just put in force: its file, once the older files it made useless join
    /// those given up.
    fn take_over(&mut self, (file, given_up): snapshot::Published) -> snapshot::SnapshotFile {
        self.given_up.extend(given_up);
        file
    }

    /// Installs a snapshot received from the leader (a Ready's `snapshot`), before the
    /// Ready's write. The snapshot file is made durable first; then entries it covers are
    /// dropped, and the suffix after it is kept only if the log holds its last entry (the
    /// suffix then matches the leader's log, paper §7); otherwise the whole log goes.
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), WalError> {
        self.install_snapshot_with(meta, &mut |out| out.write_all(data))
    }

    /// As [`Wal::install_snapshot`], with the bytes written by `fill` as a stream (from the
    /// chunks received, say, without holding them all).
    pub fn install_snapshot_with(
        &mut self,
        meta: &SnapshotMeta,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), WalError> {
        self.guarded(|wal| wal.install(meta, fill))
    }

    fn install(
        &mut self,
        meta: &SnapshotMeta,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), WalError> {
        if meta.index <= self.compacted.index {
            return Ok(());
        }
        let published = snapshot::write_streamed(&*self.vfs, &self.dir, meta, fill)?;
        let file = self.take_over(published);
        self.put_installed_in_force(file)
    }

    /// Starts writing a snapshot received from a leader, described by `meta`, on any thread
    /// (checking and syncing a large one takes a while, and the log's owner should go on
    /// meanwhile): the returned writer is independent of the log. Hand what it wrote to
    /// [`Wal::install_written_snapshot`].
    pub fn received_snapshot_writer(&self, meta: SnapshotMeta) -> SnapshotWriter {
        SnapshotWriter { vfs: self.vfs.clone(), dir: self.dir.clone(), meta }
    }

    /// As [`Wal::install_snapshot`], for a snapshot already written and synced by a
    /// [`Wal::received_snapshot_writer`]: it is only renamed into place. One the log's
    /// compaction already covers is discarded instead (its file removed).
    pub fn install_written_snapshot(&mut self, written: WrittenSnapshot) -> Result<(), WalError> {
        if written.0.meta().index <= self.compacted.index {
            return self.discard_snapshot(written);
        }
        self.guarded(|wal| {
            let published = written.0.publish(&*wal.vfs, &wal.dir)?;
            let file = wal.take_over(published);
            wal.put_installed_in_force(file)
        })
    }

    /// Removes the file of a written snapshot that will not be put in force (one received
    /// that a newer one overtook, say). Dropping it instead leaves its temporary file until
    /// the log's next open.
    pub fn discard_snapshot(&self, written: WrittenSnapshot) -> Result<(), WalError> {
        Ok(written.0.discard(&*self.vfs)?)
    }

    /// The rest of an install once the received snapshot's file is in place: the entries it
    /// covers go, and the suffix after it stays only if the log holds its last entry (the
    /// suffix then matches the leader's log, paper §7); otherwise the whole log goes.
    fn put_installed_in_force(&mut self, file: snapshot::SnapshotFile) -> Result<(), WalError> {
        let meta = file.meta.clone();
        let holds_last = self.physical_term(meta.index) == Some(meta.term);
        self.snapshot = Some(file);
        if holds_last {
            self.compact_prefix(meta.index)?;
        } else {
            self.replace_log_after(&meta)?;
        }
        self.compacted = meta.last();
        Ok(())
    }

    /// An open handle on the newest snapshot's bytes (to stream them to a peer or into a
    /// state machine), if there is a snapshot.
    pub fn open_snapshot_data(&self) -> Result<Option<snapshot::SnapshotData>, WalError> {
        let Some(file) = &self.snapshot else { return Ok(None) };
        Ok(Some(file.open_data(&*self.vfs)?))
    }

    /// The newest snapshot's bytes, if there is a snapshot.
    pub fn snapshot_data(&self) -> Result<Option<Vec<u8>>, WalError> {
        let Some(file) = &self.snapshot else { return Ok(None) };
        Ok(Some(file.read_data(&*self.vfs)?))
    }

    /// Reads `buf.len()` bytes of the newest snapshot's data from `offset` (to send it in
    /// chunks), and the data's total length. `Ok(None)` if there is no snapshot.
    pub fn read_snapshot_at(&self, offset: u64, buf: &mut [u8]) -> Result<Option<u64>, WalError> {
        let Some(file) = &self.snapshot else { return Ok(None) };
        file.read_data_at(&*self.vfs, offset, buf)?;
        Ok(Some(file.data_len()))
    }
}

/// Writes one snapshot's file on any thread; made by [`Wal::snapshot_writer`] (a snapshot of
/// the host's state) or [`Wal::received_snapshot_writer`] (one received from a leader).
pub struct SnapshotWriter {
    vfs: std::sync::Arc<dyn crate::vfs::Vfs>,
    dir: std::path::PathBuf,
    meta: SnapshotMeta,
}

impl SnapshotWriter {
    /// What the snapshot will cover.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Writes the state machine's bytes, produced by `fill`, to a temporary file and syncs it.
    /// Nothing is in force until [`Wal::adopt_snapshot`] or [`Wal::install_written_snapshot`];
    /// a crash before leaves a temporary file that the next open removes.
    pub fn write(
        self,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<WrittenSnapshot, WalError> {
        let temp = snapshot::write_temp(&*self.vfs, &self.dir, &self.meta, fill)?;
        Ok(WrittenSnapshot(temp))
    }
}

/// A snapshot written by a [`SnapshotWriter`], waiting for [`Wal::adopt_snapshot`] or
/// [`Wal::install_written_snapshot`] (or [`Wal::discard_snapshot`]).
#[derive(Debug)]
pub struct WrittenSnapshot(snapshot::TempSnapshot);

impl WrittenSnapshot {
    /// What the snapshot covers.
    pub fn meta(&self) -> &SnapshotMeta {
        self.0.meta()
    }
}

/// The `fdatasync` a [`Wal::write_unsynced`] left to its caller. It may run on any thread;
/// its outcome goes back to [`Wal::finish_sync`].
#[must_use = "the batch is not durable until synced and finished"]
pub struct PendingSync(SegmentSync);

impl PendingSync {
    /// Makes the batch (and everything written before it) durable.
    pub fn sync(&self) -> Result<(), WalError> {
        Ok(self.0.sync()?)
    }
}
