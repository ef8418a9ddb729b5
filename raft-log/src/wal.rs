//! The write-ahead log: a directory of segment files holding entries, with an index file per
//! sealed segment, a vote file and snapshot files.
//!
//! ```text
//! <dir>/00000000000000000001.seg   entries 1.. (sealed)      hard-state records between
//! <dir>/00000000000000000001.idx   its index (mapped at open; a cache, rebuilt if damaged)
//! <dir>/00000000000000052431.seg   entries 52431.. (newest: takes appends, scanned at open)
//! <dir>/vote                        term and vote (vote.rs)
//! <dir>/<index>-<term>.snap         the newest snapshot (snapshot.rs)
//! <dir>/<name>.<n>.gone             a file given up, not yet removed (given_up.rs)
//! ```
//!
//! - Segments are named after the first index they hold and roll over once they exceed
//!   `segment_bytes_max`; the one rolled out is sealed: never written again except by a cut,
//!   and its index file written.
//! - One [`Wal::write`] is one `write` and one `fdatasync` (group commit), preceded by a
//!   sync of the vote file only when the term or vote changed. When it returns, the caller may
//!   tell the engine the batch is durable.
//! - Entries replacing a conflicting suffix cut the log at the first replaced index (later
//!   segments are given up), then the batch is appended.
//! - A batch with nothing new (no entries, unchanged hard state) costs no write and no sync.
//! - The directory is synced after a segment or snapshot is created, renamed or given up.
//!   A file the log no longer needs is given up, not removed: renamed out of the log, to be
//!   removed by the owner on another thread ([`Wal::take_given_up`]), or at the next open.
//!
//! Invariants: segments are contiguous (each one's entries start at its name, and the next
//! starts where it ends); the newest segment's index is in memory; every entry's term is at
//! most the durable term.

use crate::codec::{self, PayloadError};
use crate::given_up::{self, GivenUp};
use crate::index::{self, IndexHeader, Location, SegmentIndex};
use crate::record::{self, RecordKind};
use crate::segment::{OpenMode, Segment, SegmentError};
use crate::snapshot::{self, SnapshotError, SnapshotFile};
use crate::vfs::{remove_if_present, StdVfs, Vfs};
use crate::vote::{Vote, VoteError, VoteFile};
use raft_core::{EntryId, HardState, Index, LogStore, SnapshotMeta};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why the log could not be opened or written.
#[derive(Debug, Error)]
pub enum WalError {
    /// A segment could not be read or written, or is damaged.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The vote file could not be read or written, or is damaged.
    #[error(transparent)]
    Vote(#[from] VoteError),
    /// A snapshot file could not be read or written, or is damaged.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// An operating-system error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record passed its checksum but its payload is not a valid entry or hard state.
    #[error("{path}: record at byte {offset}: {reason}")]
    Payload {
        /// The file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is wrong with it.
        reason: PayloadError,
    },
    /// The entries on disk do not follow each other, or miss a part no snapshot covers.
    #[error("{path}: entry {found} where {expected} was due; entries are missing or out of place")]
    Gap {
        /// The file.
        path: PathBuf,
        /// The index that should have come next.
        expected: Index,
        /// The index found.
        found: Index,
    },
    /// The log holds entries, or a term, that the vote file does not account for.
    #[error("{dir}: {reason}; the log refuses to open. Restore the node from a peer")]
    Inconsistent {
        /// The log's directory.
        dir: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A write asked for something the log cannot do.
    #[error("invalid write: {0}")]
    InvalidWrite(String),
    /// An earlier write or `fdatasync` failed: the page cache may have dropped data, so the
    /// log refuses every change from then on rather than acknowledge anything. Reopen it.
    #[error("the log is read-only after a failed write or sync; reopen it")]
    ReadOnly,
}

/// How the log is laid out and opened.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment rolls over once it holds more than this many bytes.
    pub segment_bytes_max: u64,
    /// Cut the log at a damaged record instead of refusing to open. What was cut is lost on
    /// this node: it must not vote or count toward a quorum before it has refetched the log
    /// from its peers (the server's job). Reported in [`RecoveryReport::repaired_from`].
    pub repair: bool,
    /// Scan sealed segments at open (checking every record) instead of trusting their index
    /// files. Without it, damage in a sealed segment is found when the entry is read.
    pub verify_sealed: bool,
    /// The newest segment's file gets this many zero bytes written ahead of its records
    /// whenever an append does not fit, so that most syncs change neither the file's size nor
    /// its blocks and need not write its inode (0: the file grows with each append). The room
    /// is given back when the segment is sealed.
    pub preallocate_bytes: u64,
    /// The newest entries written, up to this many bytes of them
    /// ([`raft_core::Entry::size_bytes`]), are also kept in memory and read from there: the
    /// host applies entries, and a leader sends them, soon after they are written (0: every
    /// read goes to the segments).
    pub recent_bytes_max: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes_max: 64 << 20,
            repair: false,
            verify_sealed: false,
            preallocate_bytes: 1 << 20,
            recent_bytes_max: 8 << 20,
        }
    }
}

/// What opening the log found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes of a torn write cut from the end of the newest segment.
    pub torn_bytes: u64,
    /// With [`WalOptions::repair`]: the damaged record the log was cut from.
    pub repaired_from: Option<(PathBuf, u64)>,
    /// Sealed segments opened through their index file, without reading them.
    pub segments_indexed: usize,
    /// Segments read record by record (the newest, and sealed ones without a usable index).
    pub segments_scanned: usize,
    /// Whether the log was dropped because it did not hold the snapshot's last entry (a
    /// snapshot install that a crash interrupted).
    pub log_replaced_by_snapshot: bool,
}

/// One segment and where its entries are.
struct SegmentFile {
    /// The index of its first entry.
    first: Index,
    segment: Segment,
    index: SegmentIndex,
}

impl SegmentFile {
    /// The index just past its last entry.
    fn end(&self) -> Index {
        self.first.plus(self.index.len() as u64)
    }
}

/// A write-ahead log in a directory.
pub struct Wal {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    options: WalOptions,
    /// Oldest first; the last takes appends and has an in-memory index. Invariant: never
    /// empty, and `segments[i + 1].first == segments[i].end()`.
    segments: Vec<SegmentFile>,
    /// The entry before the first one served (index 0 if none was compacted). Invariant:
    /// `compacted.index <= snapshot index` and it is held or is the snapshot's last entry.
    compacted: EntryId,
    /// The durable term and vote.
    vote_file: VoteFile,
    /// The newest commit index given (a hint; see [`Wal::hard_state`]).
    commit: Index,
    /// The commit index last written into the log, with a batch of entries or in a sealed
    /// segment's index header. Invariant: at most `commit`. A change of the commit alone is
    /// not written: it goes with the next batch of entries (`Wal::write`), so it costs no
    /// `fdatasync` of its own. A cut may take the record that held it; opening then finds an
    /// older one, which is harmless for a hint.
    commit_recorded: Index,
    snapshot: Option<SnapshotFile>,
    /// The newest entries written, in memory. Invariant: each is the log's entry at its index.
    recent: RecentEntries,
    read_only: bool,
    /// A batch was written by [`Wal::write_unsynced`] and its sync is not finished: every
    /// change waits ([`Wal::finish_sync`]).
    sync_pending: bool,
    report: RecoveryReport,
    /// Files renamed out of the log, not yet handed over for removal ([`Wal::take_given_up`]).
    given_up: Vec<PathBuf>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

fn segment_path(dir: &Path, first: Index) -> PathBuf {
    dir.join(format!("{:020}.seg", first.0))
}

fn index_path(dir: &Path, first: Index) -> PathBuf {
    dir.join(format!("{:020}.idx", first.0))
}

impl Wal {
    /// Opens (or creates) the log in `dir` on the real file system, recovering from a crash
    /// as `FORMAT.md` says.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Wal, WalError> {
        Wal::open_with(Arc::new(StdVfs), dir, options)
    }

    /// Opens (or creates) the log in `dir` on `vfs`.
    pub fn open_with(vfs: Arc<dyn Vfs>, dir: &Path, options: WalOptions) -> Result<Wal, WalError> {
        vfs.create_dir_all(dir).map_err(io_error(dir))?;
        let names = segment_names(&*vfs, dir)?;
        let vote_file = match VoteFile::open(&*vfs, dir, names.is_empty())? {
            Some(file) => file,
            None => {
                let reason = "segments but no vote file: the term and vote are lost".into();
                return Err(WalError::Inconsistent { dir: dir.to_path_buf(), reason });
            }
        };
        let snapshot = snapshot::open_latest(&*vfs, dir)?;
        let recent = RecentEntries::new(options.recent_bytes_max);
        let mut wal = Wal {
            vfs,
            dir: dir.to_path_buf(),
            options,
            segments: Vec::new(),
            compacted: EntryId::default(),
            vote_file,
            commit: Index(0),
            commit_recorded: Index(0),
            snapshot,
            recent,
            read_only: false,
            sync_pending: false,
            report: RecoveryReport::default(),
            given_up: Vec::new(),
        };
        wal.load_segments(&names)?;
        wal.reconcile_with_snapshot()?;
        wal.check_terms()?;
        // A batch written but not synced when the process died (between a write and its
        // `fdatasync`, which may run on another thread) reads back intact from the page
        // cache. Syncing it here makes it durable before anything on top of it is
        // acknowledged.
        if let Some(active) = wal.segments.last_mut() {
            active.segment.sync()?;
        }
        // The commit index is only a hint (the leader tells it again); a torn batch may have
        // kept the hint and lost entries, so it is clamped.
        wal.commit = wal.commit.min(wal.last_index());
        wal.commit_recorded = wal.commit;
        // What recovery gave up (a repair's cut, an interrupted install) goes now: nothing
        // waits for the open.
        wal.take_given_up().remove()?;
        Ok(wal)
    }

    /// Loads every segment, oldest first. With repair, a cut in one gives up those after it.
    fn load_segments(&mut self, names: &[(Index, PathBuf)]) -> Result<(), WalError> {
        for (position, (first, path)) in names.iter().enumerate() {
            let last = position + 1 == names.len();
            if let Some(previous) = self.segments.last() {
                if previous.end() != *first {
                    let (path, expected) = (path.clone(), previous.end());
                    return Err(WalError::Gap { path, expected, found: *first });
                }
            }
            let cut = self.load_segment(*first, path, last)?;
            if cut {
                // Newest first: a crash amid the renames leaves the log contiguous.
                for (first, _) in names[position + 1..].iter().rev() {
                    self.give_up_segment_files(*first)?;
                }
                self.sync_dir()?;
                break;
            }
        }
        if self.segments.is_empty() {
            let first = self.snapshot.as_ref().map_or(Index(0), |s| s.meta.index).next();
            self.roll(first)?;
        }
        Ok(())
    }

    /// Loads one segment, through its index file if it is sealed and the index is usable.
    /// Returns whether repair cut it.
    fn load_segment(&mut self, first: Index, path: &Path, last: bool) -> Result<bool, WalError> {
        if !last && !self.options.verify_sealed {
            if let Some(indexed) = self.open_indexed(first, path)? {
                self.segments.push(indexed);
                self.report.segments_indexed += 1;
                return Ok(false);
            }
        }
        let mode = OpenMode { last, repair: self.options.repair };
        let (segment, bytes, recovery) = Segment::open(&*self.vfs, path, mode)?;
        self.report.segments_scanned += 1;
        self.report.torn_bytes += recovery.torn_bytes;
        let cut = recovery.repaired_from.is_some();
        if let Some(offset) = recovery.repaired_from {
            self.remove_index_file(first)?;
            self.report.repaired_from = Some((path.to_path_buf(), offset));
        }
        let locations = self.read_locations(path, first, &bytes)?;
        let sealed = !last && !cut;
        if sealed {
            self.write_index(first, segment.len(), &locations)?;
        }
        let index = SegmentIndex::Memory(locations);
        self.segments.push(SegmentFile { first, segment, index });
        Ok(cut)
    }

    /// The sealed segment at `path` through its index file, or `None` if the index is
    /// missing, damaged or does not describe the segment as it is.
    fn open_indexed(&mut self, first: Index, path: &Path) -> Result<Option<SegmentFile>, WalError> {
        let Ok(bytes) = self.vfs.map(&index_path(&self.dir, first)) else { return Ok(None) };
        let Ok(index) = SegmentIndex::mapped(bytes) else { return Ok(None) };
        let SegmentIndex::Mapped { header, .. } = &index else { return Ok(None) };
        if header.first != first || header.count == 0 {
            return Ok(None);
        }
        let hard_state = header.hard_state;
        let Some(segment) = Segment::open_indexed(&*self.vfs, path, header.segment_len)? else {
            return Ok(None);
        };
        if let Some(hard_state) = hard_state {
            self.commit = hard_state.commit;
        }
        Ok(Some(SegmentFile { first, segment, index }))
    }

    /// The locations of the entries in a scanned segment, which must start at `first` and
    /// follow each other; its hard-state records update the commit hint.
    fn read_locations(
        &mut self,
        path: &Path,
        first: Index,
        bytes: &[u8],
    ) -> Result<Vec<Location>, WalError> {
        let (records, _) = record::scan(bytes);
        let mut locations = Vec::new();
        for scanned in records {
            let offset = scanned.offset as u64;
            let bad = |reason| WalError::Payload { path: path.to_path_buf(), offset, reason };
            match scanned.kind {
                RecordKind::HardState => {
                    let hard_state = codec::decode_hard_state(scanned.payload).map_err(bad)?;
                    self.commit = hard_state.commit;
                }
                RecordKind::Entry => {
                    let entry = codec::decode_entry(scanned.payload).map_err(bad)?;
                    let expected = first.plus(locations.len() as u64);
                    if entry.index != expected {
                        let path = path.to_path_buf();
                        return Err(WalError::Gap { path, expected, found: entry.index });
                    }
                    let payload_len = scanned.payload.len() as u32;
                    locations.push(Location { term: entry.term, offset, payload_len });
                }
                RecordKind::BatchStart => {} // matters only to the recovery rules
            }
        }
        Ok(locations)
    }

    /// Writes a sealed segment's index file: whole under a temporary name, then renamed. Not
    /// synced: a torn index fails its checksum and is rebuilt, and it is never the only copy.
    fn write_index(
        &self,
        first: Index,
        segment_len: u64,
        locations: &[Location],
    ) -> Result<(), WalError> {
        let hard_state = Some(self.hard_state());
        let count = locations.len() as u64;
        let header = IndexHeader { first, segment_len, count, hard_state };
        let mut bytes = Vec::with_capacity(64 + locations.len() * 20 + 4);
        index::encode(&header, locations, &mut bytes);
        let path = index_path(&self.dir, first);
        let temp = path.with_extension("idx.tmp");
        remove_if_present(&*self.vfs, &temp).map_err(io_error(&temp))?;
        let file = self.vfs.create_new(&temp).map_err(io_error(&temp))?;
        file.write_at(&bytes, 0).map_err(io_error(&temp))?;
        self.vfs.rename(&temp, &path).map_err(io_error(&path))
    }

    /// Makes the log agree with the snapshot: the log must reach back to just after it, and
    /// if it does not hold the snapshot's last entry (a crash interrupted an install), it is
    /// replaced by an empty log after the snapshot. Sets where the served log starts.
    fn reconcile_with_snapshot(&mut self) -> Result<(), WalError> {
        let meta = self.snapshot.as_ref().map(|s| s.meta.clone()).unwrap_or_default();
        let first = self.segments[0].first;
        if first > meta.index.next() {
            let path = segment_path(&self.dir, first);
            return Err(WalError::Gap { path, expected: meta.index.next(), found: first });
        }
        let holds_last = first == meta.index.next()
            || self.physical_term(meta.index).is_some_and(|term| term == meta.term);
        if !holds_last {
            self.replace_log_after(&meta)?;
            self.report.log_replaced_by_snapshot = true;
        }
        let first = self.segments[0].first;
        self.compacted = if first == Index(1) {
            EntryId::default()
        } else if first == meta.index.next() {
            meta.last()
        } else {
            let term = self.physical_term(first).unwrap_or_default();
            EntryId::new(term, first)
        };
        Ok(())
    }

    /// No entry may be of a term the vote file has not reached: the term is saved first.
    fn check_terms(&self) -> Result<(), WalError> {
        let last_term = self.physical_term(self.last_index()).unwrap_or_default();
        let term = self.vote_file.current().term;
        if last_term > term {
            let reason = format!(
                "the last entry is of term {last_term} but the vote file holds term {term}"
            );
            return Err(WalError::Inconsistent { dir: self.dir.clone(), reason });
        }
        Ok(())
    }

    /// Gives up every segment and starts an empty one after the snapshot `meta`. The vote
    /// file keeps the term and vote; the commit hint goes with the segments.
    fn replace_log_after(&mut self, meta: &SnapshotMeta) -> Result<(), WalError> {
        self.recent.clear();
        // Newest first: a crash amid the renames leaves a contiguous log, which the next
        // open replaces again since it does not hold the snapshot's last entry.
        for gone in std::mem::take(&mut self.segments).into_iter().rev() {
            self.give_up_segment_files(gone.first)?;
        }
        self.sync_dir()?;
        self.roll(meta.index.next())
    }

    /// Gives up a segment's index file, then the segment (the caller syncs the directory):
    /// they leave the log now, and [`Wal::take_given_up`] hands them over for removal.
    fn give_up_segment_files(&mut self, first: Index) -> Result<(), WalError> {
        for path in [index_path(&self.dir, first), segment_path(&self.dir, first)] {
            let gone = given_up::give_up(&*self.vfs, &path).map_err(io_error(&path))?;
            self.given_up.extend(gone);
        }
        Ok(())
    }

    /// The files the log has given up since the last call (segments a snapshot or a cut made
    /// useless, older snapshots), for the caller to remove, on any thread: removing a large
    /// file can take tens of milliseconds (`given_up.rs`). Call it after each change that
    /// may give files up; the ones never removed are removed by the next open.
    pub fn take_given_up(&mut self) -> GivenUp {
        GivenUp::new(self.vfs.clone(), std::mem::take(&mut self.given_up))
    }

    /// Removes a segment's index file, before the segment changes or goes. It is a cache, so
    /// it may be missing (never written, or lost in a crash).
    fn remove_index_file(&self, first: Index) -> Result<(), WalError> {
        let path = index_path(&self.dir, first);
        remove_if_present(&*self.vfs, &path).map_err(io_error(&path))
    }

    fn sync_dir(&self) -> Result<(), WalError> {
        self.vfs.sync_dir(&self.dir).map_err(io_error(&self.dir))
    }

    /// Starts a new, empty segment for entries from `first`, sealing the current one (its
    /// index file is written) if there is one.
    fn roll(&mut self, first: Index) -> Result<(), WalError> {
        if let Some(active) = self.segments.last_mut() {
            active.segment.seal()?;
        }
        if let Some(sealed) = self.segments.last() {
            self.write_index(sealed.first, sealed.segment.len(), &sealed.index.locations())?;
        }
        let path = segment_path(&self.dir, first);
        let segment = Segment::create(&*self.vfs, &path)?;
        self.sync_dir()?;
        let index = SegmentIndex::Memory(Vec::new());
        self.segments.push(SegmentFile { first, segment, index });
        Ok(())
    }

    /// What opening the log found and did.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The hard state: the durable term and vote from the vote file, and the newest commit
    /// index given. The commit is a hint the leader repeats: it is written with the next
    /// batch of entries, so after a crash it may be older (and it is clamped to the last
    /// entry at open), but it is never above an index that was committed.
    pub fn hard_state(&self) -> HardState {
        let Vote { term, vote } = self.vote_file.current();
        HardState { term, vote, commit: self.commit }
    }
}

/// The segment files in `dir`, oldest first. Leftover temporary index files, index files
/// without their segment and files given up before are removed.
fn segment_names(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<(Index, PathBuf)>, WalError> {
    let files = vfs.list(dir).map_err(io_error(dir))?;
    let mut names = Vec::new();
    for path in &files {
        let Some(first) = numbered(path, "seg") else { continue };
        names.push((first, path.clone()));
    }
    names.sort();
    for path in &files {
        let orphan = numbered(path, "idx")
            .is_some_and(|first| !names.iter().any(|(segment, _)| *segment == first));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if orphan || name.ends_with(".idx.tmp") || given_up::is_given_up(path) {
            remove_if_present(vfs, path).map_err(io_error(path))?;
        }
    }
    Ok(names)
}

/// The number in a file name `<number>.<extension>`.
fn numbered(path: &Path, extension: &str) -> Option<Index> {
    if path.extension()? != extension {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok().map(Index)
}

mod access;
mod recent;
mod writing;

use recent::RecentEntries;

pub use writing::{PendingSync, SnapshotWriter, WrittenSnapshot};
