//! Reading the log: where an entry is, its term, and ranges of entries read with one
//! positional read per segment (records are checked again as they are read).

use super::{SegmentFile, Wal};
use crate::codec;
use crate::index::Location;
use crate::record::{self, RecordKind, ScanEnd};
use bytes::Bytes;
use raft_core::{Entry, Index, LogStore, SnapshotMeta, StoreError, Term};

/// An upper bound of [`Entry::size_bytes`] from the payload length: a normal entry's payload
/// is 17 bytes of header and its data; `size_bytes` counts 24 plus the data.
fn size_bytes_max(at: &Location) -> u64 {
    u64::from(at.payload_len) + 7
}

impl Wal {
    /// The position of the segment holding `index`, if any does.
    pub(super) fn position_of(&self, index: Index) -> Option<usize> {
        let position = self.segments.partition_point(|s| s.first <= index).checked_sub(1)?;
        (index < self.segments[position].end()).then_some(position)
    }

    /// Where the entry at `index` is, whether or not it was compacted.
    pub(super) fn locate(&self, index: Index) -> Option<(usize, Location)> {
        let position = self.position_of(index)?;
        let segment = &self.segments[position];
        let at = segment.index.get((index.0 - segment.first.0) as usize)?;
        Some((position, at))
    }

    /// The term of the entry at `index` if a segment holds it (compacted or not).
    pub(super) fn physical_term(&self, index: Index) -> Option<Term> {
        self.locate(index).map(|(_, at)| at.term)
    }

    fn active(&self) -> &SegmentFile {
        self.segments.last().expect("a log always has a segment")
    }

    /// Reads entries from `lo` (held, in one segment) toward `hi` whose sizes surely fit
    /// `budget` (at least one), with one read.
    fn read_span(&self, lo: Index, hi: Index, budget: u64) -> Result<Vec<Entry>, StoreError> {
        let unavailable = |what: String| StoreError::Unavailable(what);
        let (position, first) =
            self.locate(lo).ok_or_else(|| unavailable(format!("entry {lo} is not held")))?;
        let segment = &self.segments[position];
        let end = hi.min(segment.end());
        let (mut last, mut size) = (first, size_bytes_max(&first));
        for index in (lo.0 + 1..end.0).map(Index) {
            let Some(at) = segment.index.get((index.0 - segment.first.0) as usize) else { break };
            if size + size_bytes_max(&at) > budget {
                break;
            }
            (last, size) = (at, size + size_bytes_max(&at));
        }
        let mut buf = vec![0; (last.end() - first.offset) as usize];
        let path = segment.segment.path();
        let damaged = |what: String| unavailable(format!("{}: {what}", path.display()));
        segment.segment.read_at(&mut buf, first.offset).map_err(|e| damaged(e.to_string()))?;
        // The entries' data share this one buffer (no copy per entry); it lives as long as any
        // of them, and its size is bounded by the caller's budget or one segment.
        let buf = Bytes::from(buf);
        let (records, scan_end) = record::scan(&buf);
        if scan_end != ScanEnd::Clean {
            return Err(damaged(format!(
                "damaged record after byte {}: {scan_end:?}",
                first.offset
            )));
        }
        let mut entries = Vec::new();
        for scanned in records.into_iter().filter(|r| r.kind == RecordKind::Entry) {
            let payload = buf.slice_ref(scanned.payload);
            let entry = codec::decode_entry_shared(&payload).map_err(|e| damaged(e.to_string()))?;
            if entry.index != lo.plus(entries.len() as u64) {
                return Err(damaged(format!("entry {} out of place", entry.index)));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// The entries a [`LogStore::entries`] call takes: the first always, then each while their
/// sizes ([`Entry::size_bytes`]) add up to at most `max_bytes`.
pub(super) struct Taken {
    pub(super) entries: Vec<Entry>,
    bytes: u64,
    max_bytes: u64,
}

impl Taken {
    pub(super) fn new(max_bytes: u64) -> Taken {
        Taken { entries: Vec::new(), bytes: 0, max_bytes }
    }

    /// Takes `entry` unless the budget is spent; returns whether it took it.
    pub(super) fn add(&mut self, entry: Entry) -> bool {
        let bytes = self.bytes + entry.size_bytes();
        if bytes > self.max_bytes && !self.entries.is_empty() {
            return false;
        }
        self.bytes = bytes;
        self.entries.push(entry);
        true
    }

    /// What the budget still allows (a read may fetch this much and stop).
    fn bytes_left(&self) -> u64 {
        self.max_bytes.saturating_sub(self.bytes)
    }
}

impl LogStore for Wal {
    fn first_index(&self) -> Index {
        self.compacted.index.next()
    }

    fn last_index(&self) -> Index {
        self.active().end().prev()
    }

    fn term(&self, index: Index) -> Result<Term, StoreError> {
        if index == self.compacted.index {
            return Ok(self.compacted.term);
        }
        if index < self.compacted.index {
            return Err(StoreError::Compacted { first: self.first_index() });
        }
        self.physical_term(index)
            .ok_or_else(|| StoreError::Unavailable(format!("index {index} is beyond the log")))
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StoreError> {
        if lo <= self.compacted.index {
            return Err(StoreError::Compacted { first: self.first_index() });
        }
        if hi > self.last_index().next() {
            return Err(StoreError::Unavailable(format!("range {lo}..{hi} is beyond the log")));
        }
        let mut taken = Taken::new(max_bytes);
        let mut next = lo;
        while next < hi {
            // The newest entries come from memory; older ones from the segments, up to where
            // the entries in memory begin.
            let first_recent = self.recent.first();
            if first_recent.is_some_and(|first| first <= next) {
                if self.recent.read(next, hi, &mut taken) {
                    break;
                }
                let after = lo.plus(taken.entries.len() as u64);
                if after > next {
                    next = after;
                    continue; // done, or the rest is on disk only (after a failed change)
                }
            }
            let disk_hi = first_recent.filter(|&first| first > next).map_or(hi, |f| f.min(hi));
            for entry in self.read_span(next, disk_hi, taken.bytes_left())? {
                if !taken.add(entry) {
                    return Ok(taken.entries);
                }
            }
            next = lo.plus(taken.entries.len() as u64);
        }
        Ok(taken.entries)
    }

    fn snapshot(&self) -> SnapshotMeta {
        self.snapshot.as_ref().map(|s| s.meta.clone()).unwrap_or_default()
    }
}
