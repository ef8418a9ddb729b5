//! The write-ahead log: a directory of segment files holding entries and hard states.
//!
//! - Segments are named after the first index they may hold (`00000000000000000001.seg`)
//!   and roll over once they exceed `segment_bytes_max`. The first batch in a new segment
//!   starts with the current hard state, so the newest hard state is always in the newest
//!   segments.
//! - One [`Wal::write`] is one `write` and one `fdatasync` (group commit): the hard state and
//!   every entry of a Ready become durable together. When it returns, the caller may tell the
//!   engine the batch is durable. The hard state is written first in the batch, so a torn
//!   batch never leaves entries of a term the durable term has not reached; its commit index
//!   is clamped to the last entry at open.
//! - Entries replacing a conflicting suffix truncate the log at the first replaced index
//!   (later segments are deleted), then the batch is appended; the hard state is written
//!   again after the cut so the truncation cannot take the latest one with it.
//! - A batch with nothing new (no entries, unchanged hard state) costs no write and no sync.
//! - The directory is fsync'd after a segment is created or removed.
//!
//! The index of every entry (segment, offset, term) is kept in memory, rebuilt by scanning
//! the segments at open.

use crate::codec::{self, PayloadError};
use crate::record::{self, RecordKind};
use crate::segment::{Segment, SegmentError};
use raft_core::{Entry, HardState, Index, LogStore, SnapshotMeta, StoreError, Term};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why the log could not be opened or written.
#[derive(Debug, Error)]
pub enum WalError {
    /// A segment could not be read or written.
    #[error(transparent)]
    Segment(#[from] SegmentError),
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
    /// The entries on disk do not follow each other.
    #[error("{path}: entry {found} where {expected} was due")]
    Gap {
        /// The file.
        path: PathBuf,
        /// The index that should have come next.
        expected: Index,
        /// The index found.
        found: Index,
    },
    /// A write asked for something the log cannot do.
    #[error("invalid write: {0}")]
    InvalidWrite(String),
    /// An earlier `fdatasync` failed: the page cache may have dropped data, so the log
    /// refuses every write from then on rather than acknowledge anything.
    #[error("the log is read-only after a failed sync")]
    ReadOnly,
}

/// How the log is laid out.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment rolls over once it holds more than this many bytes.
    pub segment_bytes_max: u64,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions { segment_bytes_max: 64 << 20 }
    }
}

/// Where one entry lives.
#[derive(Clone, Copy, Debug)]
struct Location {
    term: Term,
    /// Position of the segment in `Wal::segments`.
    segment: usize,
    /// Offset of the entry's record in the segment.
    offset: u64,
    /// Length of the entry's payload.
    payload_len: u32,
}

/// One segment and what the log knows about it.
struct SegmentFile {
    segment: Segment,
    /// A read handle for positional reads.
    reader: File,
}

/// A write-ahead log in a directory.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    segments: Vec<SegmentFile>,
    /// `locations[i]` is the entry at index `first + i`.
    locations: Vec<Location>,
    first: Index,
    hard_state: HardState,
    snapshot: SnapshotMeta,
    read_only: bool,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

fn segment_name(first: Index) -> String {
    format!("{:020}.seg", first.0)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering from a crash as `FORMAT.md` says.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            options,
            segments: Vec::new(),
            locations: Vec::new(),
            first: Index(1),
            hard_state: HardState::default(),
            snapshot: SnapshotMeta::default(),
            read_only: false,
        };
        let names = segment_names(dir)?;
        for (i, (first, path)) in names.iter().enumerate() {
            if i == 0 {
                wal.first = *first;
            }
            wal.load_segment(path, i + 1 == names.len())?;
        }
        if wal.segments.is_empty() {
            wal.roll(Index(1))?;
        }
        // A torn batch may have kept its hard state and lost entries up to its commit index;
        // the commit index is only a hint (the leader tells it again), so it is clamped.
        wal.hard_state.commit = wal.hard_state.commit.min(wal.last_index());
        Ok(wal)
    }

    /// Reads one segment's records into the index.
    fn load_segment(&mut self, path: &Path, last: bool) -> Result<(), WalError> {
        let (segment, bytes, _recovery) = Segment::open(path, last)?;
        let position = self.segments.len();
        let (records, _) = record::scan(&bytes);
        for scanned in records {
            let bad = |reason| WalError::Payload {
                path: path.to_path_buf(),
                offset: scanned.offset as u64,
                reason,
            };
            match scanned.kind {
                RecordKind::HardState => {
                    self.hard_state = codec::decode_hard_state(scanned.payload).map_err(bad)?;
                }
                RecordKind::Entry => {
                    let entry = codec::decode_entry(scanned.payload).map_err(bad)?;
                    self.index_entry(
                        path,
                        &entry,
                        position,
                        scanned.offset as u64,
                        scanned.payload.len(),
                    )?;
                }
            }
        }
        let reader = File::open(path).map_err(io_error(path))?;
        self.segments.push(SegmentFile { segment, reader });
        Ok(())
    }

    /// Records where `entry` lives. Entries on disk follow each other without gaps or
    /// repeats (a truncation cuts the file itself); only the log's very first entry may set
    /// where the log starts.
    fn index_entry(
        &mut self,
        path: &Path,
        entry: &Entry,
        segment: usize,
        offset: u64,
        payload_len: usize,
    ) -> Result<(), WalError> {
        if self.locations.is_empty() && segment == 0 {
            self.first = entry.index;
        }
        let next = self.first.plus(self.locations.len() as u64);
        if entry.index != next {
            let path = path.to_path_buf();
            return Err(WalError::Gap { path, expected: next, found: entry.index });
        }
        let payload_len = payload_len as u32;
        self.locations.push(Location { term: entry.term, segment, offset, payload_len });
        Ok(())
    }

    /// Starts a new, empty segment for entries from `first`. The next batch, the first in it,
    /// writes the hard state first (see [`Wal::write`]), and is synced with it.
    fn roll(&mut self, first: Index) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(first));
        let segment = Segment::create(&path)?;
        sync_dir(&self.dir)?;
        let reader = File::open(&path).map_err(io_error(&path))?;
        self.segments.push(SegmentFile { segment, reader });
        Ok(())
    }

    /// Makes a Ready's hard state and entries durable with one write and one `fdatasync`.
    /// If `entries[0]` is at or below the last index, the log is first cut there.
    pub fn write(
        &mut self,
        hard_state: Option<HardState>,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        if self.read_only {
            return Err(WalError::ReadOnly);
        }
        let mut truncated = false;
        if let Some(first) = entries.first() {
            let last = self.last_index();
            if first.index > last.next() || first.index < self.first {
                return Err(WalError::InvalidWrite(format!(
                    "entries from {} do not fit a log holding {}..={last}",
                    first.index, self.first
                )));
            }
            if first.index <= last {
                self.truncate_from(first.index)?;
                truncated = true;
            }
        }
        if self.active().segment.len() > self.options.segment_bytes_max {
            self.roll(self.last_index().next())?;
        }
        // The hard state goes first: a crash that tears the batch may lose entries, but never
        // leaves an entry of a term the durable term has not reached (a node back in an older
        // term could vote, and lead, in the term whose entries it holds). It is also written
        // unchanged at the head of a new segment, and after a truncation (which may have cut
        // away the record that held it); otherwise an unchanged hard state costs nothing.
        let write_hard_state =
            hard_state.is_some() || truncated || self.active().segment.is_empty();
        if !write_hard_state && entries.is_empty() {
            return Ok(()); // nothing to make durable: no write, no fdatasync
        }
        let hard_state = hard_state.unwrap_or(self.hard_state);
        let mut buf = Vec::new();
        let mut payload = Vec::new();
        if write_hard_state {
            codec::encode_hard_state(&hard_state, &mut payload);
            record::encode(RecordKind::HardState, &payload, &mut buf);
        }
        let base = self.active().segment.len();
        let segment = self.segments.len() - 1;
        let mut written = Vec::with_capacity(entries.len());
        for entry in entries {
            payload.clear();
            codec::encode_entry(entry, &mut payload);
            if payload.len() > record::PAYLOAD_LEN_MAX as usize {
                return Err(WalError::InvalidWrite(format!(
                    "entry {} of {} bytes exceeds the record limit of {} bytes",
                    entry.index,
                    payload.len(),
                    record::PAYLOAD_LEN_MAX
                )));
            }
            written.push(Location {
                term: entry.term,
                segment,
                offset: base + buf.len() as u64,
                payload_len: payload.len() as u32,
            });
            record::encode(RecordKind::Entry, &payload, &mut buf);
        }
        self.append_synced(&buf)?;
        self.locations.extend(written);
        self.hard_state = hard_state;
        Ok(())
    }

    fn append_synced(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let active = &mut self.segments.last_mut().expect("a log always has a segment").segment;
        active.append(buf)?;
        if let Err(error) = active.sync() {
            self.read_only = true;
            return Err(error.into());
        }
        Ok(())
    }

    /// Cuts the log before `index`: its segment is truncated at the entry, later segments go.
    fn truncate_from(&mut self, index: Index) -> Result<(), WalError> {
        let at = self.locations[(index.0 - self.first.0) as usize];
        if self.segments.len() > at.segment + 1 {
            for gone in self.segments.drain(at.segment + 1..).rev() {
                let path = gone.segment.path().to_path_buf();
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
            sync_dir(&self.dir)?;
        }
        // Synced before anything is appended over the cut: a crash must not leave old records
        // behind the new ones, which would read as damage in the middle of the segment.
        self.active_mut().segment.truncate(at.offset)?;
        self.locations.truncate((index.0 - self.first.0) as usize);
        Ok(())
    }

    fn active(&self) -> &SegmentFile {
        self.segments.last().expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut SegmentFile {
        self.segments.last_mut().expect("a log always has a segment")
    }

    /// The durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn read_entry(&self, index: Index) -> Result<Entry, StoreError> {
        let at = self.locations[(index.0 - self.first.0) as usize];
        let file = &self.segments[at.segment].reader;
        let mut buf = vec![0; record::HEADER_LEN + at.payload_len as usize];
        file.read_exact_at(&mut buf, at.offset)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        match record::decode(&buf) {
            Ok(record::Decoded::Record { payload, .. }) => {
                codec::decode_entry(payload).map_err(|e| StoreError::Unavailable(e.to_string()))
            }
            other => Err(StoreError::Unavailable(format!("entry {index} unreadable: {other:?}"))),
        }
    }
}

impl LogStore for Wal {
    fn first_index(&self) -> Index {
        self.first
    }

    fn last_index(&self) -> Index {
        self.first.plus(self.locations.len() as u64).prev()
    }

    fn term(&self, index: Index) -> Result<Term, StoreError> {
        if index == self.first.prev() {
            return Ok(if index == self.snapshot.index { self.snapshot.term } else { Term(0) });
        }
        if index < self.first {
            return Err(StoreError::Compacted { first: self.first });
        }
        self.locations
            .get((index.0 - self.first.0) as usize)
            .map(|at| at.term)
            .ok_or_else(|| StoreError::Unavailable(format!("index {index} is beyond the log")))
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StoreError> {
        if lo < self.first {
            return Err(StoreError::Compacted { first: self.first });
        }
        if hi > self.last_index().next() {
            return Err(StoreError::Unavailable(format!("range {lo}..{hi} is beyond the log")));
        }
        let mut out = Vec::new();
        let mut used = 0;
        for index in (lo.0..hi.0).map(Index) {
            let entry = self.read_entry(index)?;
            used += entry.size_bytes();
            if used > max_bytes && !out.is_empty() {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn snapshot(&self) -> SnapshotMeta {
        self.snapshot.clone()
    }
}

/// The segment files in `dir`, oldest first.
fn segment_names(dir: &Path) -> Result<Vec<(Index, PathBuf)>, WalError> {
    let mut names = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = item.map_err(io_error(dir))?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "seg") {
            if let Ok(first) = stem.parse::<u64>() {
                names.push((Index(first), path));
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}
