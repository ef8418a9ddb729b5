//! The read side of durable log storage, and an in-memory implementation.
//!
//! The engine never writes storage: the host writes what [`crate::Ready`] hands it, then calls
//! [`crate::RawNode::on_persisted`]. The engine only reads entries it no longer holds itself,
//! through [`LogStore`]. The write-ahead log of `raft-log` implements it for real nodes;
//! [`MemLogStore`] serves tests and the simulator.

use crate::error::StoreError;
use crate::membership::Membership;
use crate::types::{Entry, Index, SnapshotMeta, Term};

/// Read access to the durable part of the log.
///
/// Invariants the implementation keeps: entries are contiguous from `first_index()` to
/// `last_index()`; `term(first_index() - 1)` is answered (the term of the entry compacted
/// last, or 0 for index 0).
pub trait LogStore {
    /// The first index held. Entries below it were compacted.
    fn first_index(&self) -> Index;
    /// The last index held; `first_index() - 1` when the store holds no entry.
    fn last_index(&self) -> Index;
    /// The term of the entry at `index`, for `index` in `[first_index() - 1, last_index()]`.
    fn term(&self, index: Index) -> Result<Term, StoreError>;
    /// Entries in `[lo, hi)`, stopping once their total [`Entry::size_bytes`] would exceed
    /// `max_bytes`, but always at least one entry when `lo < hi`.
    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StoreError>;
    /// The latest durable snapshot (index 0 when there is none). Invariant:
    /// `snapshot().index >= first_index() - 1`, so every compacted entry is covered.
    fn snapshot(&self) -> SnapshotMeta;
}

/// A log store in memory: what the host has "persisted", for tests and the simulator.
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    /// Entries from index `compacted.index + 1` on.
    entries: Vec<Entry>,
    /// The last compacted entry (index 0 when nothing was compacted).
    compacted: crate::types::EntryId,
    /// The latest snapshot. Invariant: `snapshot.index >= compacted.index`.
    snapshot: SnapshotMeta,
}

impl MemLogStore {
    /// An empty store.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    /// Appends `entries` as a Ready asks: entries at or after `entries[0].index` are discarded
    /// first, then the new ones are added.
    ///
    /// # Panics
    /// If `entries` would leave a gap after the last entry or reach into the compacted prefix:
    /// that is a host bug, not input.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index > self.compacted.index && first.index <= self.last_index().next(),
            "append at {} does not fit a store holding {}..={}",
            first.index,
            self.first_index(),
            self.last_index()
        );
        let keep = (first.index.0 - self.compacted.index.0 - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
    }

    /// Drops every entry after `last`: a cut whose new entries never arrived, as when a
    /// crash stops a batch after its cut was made durable.
    ///
    /// # Panics
    /// If `last` is below the compacted prefix: compacted entries are committed and are
    /// never cut (a host bug).
    pub fn truncate_after(&mut self, last: Index) {
        assert!(last >= self.compacted.index, "cut at {last} below the compacted prefix");
        self.entries.truncate((last.0 - self.compacted.index.0) as usize);
    }

    /// Records a snapshot the host's state machine took at `index` (which must be held or
    /// be the last compacted entry), with the configuration at that point. The log is unchanged;
    /// [`MemLogStore::compact`] may then drop the prefix it covers.
    pub fn record_snapshot(
        &mut self,
        index: Index,
        membership: Membership,
    ) -> Result<(), StoreError> {
        let term = self.term(index)?;
        if index > self.snapshot.index {
            self.snapshot = SnapshotMeta { index, term, membership };
        }
        Ok(())
    }

    /// Drops the entries up to `index`, which the latest snapshot must cover (paper §7).
    pub fn compact(&mut self, index: Index) -> Result<(), StoreError> {
        if index > self.snapshot.index || index > self.last_index() {
            return Err(StoreError::Unavailable(format!(
                "cannot compact to {index}: the snapshot covers {} and the log ends at {}",
                self.snapshot.index,
                self.last_index()
            )));
        }
        if index <= self.compacted.index {
            return Ok(());
        }
        let term = self.term(index)?;
        self.entries.drain(..(index.0 - self.compacted.index.0) as usize);
        self.compacted = crate::types::EntryId::new(term, index);
        Ok(())
    }

    /// Installs a snapshot received from the leader (as a Ready's `snapshot` asks): entries
    /// it covers are dropped; the suffix after it is kept only if the log holds the
    /// snapshot's last entry (then it is consistent with the leader's log), else everything
    /// goes.
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta) {
        if meta.index <= self.compacted.index {
            return;
        }
        let consistent = self.term(meta.index) == Ok(meta.term);
        if consistent {
            self.entries.drain(..(meta.index.0 - self.compacted.index.0) as usize);
        } else {
            self.entries.clear();
        }
        self.compacted = meta.last();
        self.snapshot = meta.clone();
    }

    fn position(&self, index: Index) -> Option<usize> {
        if index <= self.compacted.index || index > self.last_index() {
            return None;
        }
        Some((index.0 - self.compacted.index.0 - 1) as usize)
    }
}

impl LogStore for MemLogStore {
    fn first_index(&self) -> Index {
        self.compacted.index.next()
    }

    fn last_index(&self) -> Index {
        self.compacted.index.plus(self.entries.len() as u64)
    }

    fn term(&self, index: Index) -> Result<Term, StoreError> {
        if index == self.compacted.index {
            return Ok(self.compacted.term);
        }
        match self.position(index) {
            Some(pos) => Ok(self.entries[pos].term),
            None if index < self.compacted.index => {
                Err(StoreError::Compacted { first: self.first_index() })
            }
            None => Err(StoreError::Unavailable(format!(
                "index {index} is beyond the last index {}",
                self.last_index()
            ))),
        }
    }

    fn entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, StoreError> {
        if lo <= self.compacted.index {
            return Err(StoreError::Compacted { first: self.first_index() });
        }
        let (Some(start), true) = (self.position(lo), hi <= self.last_index().next()) else {
            return Err(StoreError::Unavailable(format!(
                "range {lo}..{hi} is beyond the last index {}",
                self.last_index()
            )));
        };
        let end = (hi.0 - self.compacted.index.0 - 1) as usize;
        Ok(take_within_budget(&self.entries[start..end], max_bytes))
    }

    fn snapshot(&self) -> SnapshotMeta {
        self.snapshot.clone()
    }
}

/// Clones entries from the front of `entries` while their sizes fit `max_bytes`, always at
/// least one.
pub(crate) fn take_within_budget(entries: &[Entry], max_bytes: u64) -> Vec<Entry> {
    let mut total = 0;
    let mut taken = Vec::new();
    for entry in entries {
        total += entry.size_bytes();
        if total > max_bytes && !taken.is_empty() {
            break;
        }
        taken.push(entry.clone());
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EntryKind, NodeId};
    use bytes::Bytes;

    fn entry(term: u64, index: u64) -> Entry {
        Entry { term: Term(term), index: Index(index), kind: EntryKind::Normal, data: Bytes::new() }
    }

    #[test]
    fn append_replaces_a_conflicting_suffix() {
        let mut store = MemLogStore::new();
        store.append(&[entry(1, 1), entry(1, 2), entry(1, 3)]);
        store.append(&[entry(2, 2)]);
        assert_eq!(store.last_index(), Index(2));
        assert_eq!(store.term(Index(2)), Ok(Term(2)));
        assert_eq!(store.term(Index(0)), Ok(Term(0)));
    }

    #[test]
    fn compaction_needs_a_snapshot_and_keeps_the_boundary_term() {
        let mut store = MemLogStore::new();
        store.append(&[entry(1, 1), entry(1, 2), entry(2, 3)]);
        assert!(store.compact(Index(2)).is_err(), "compacted without a snapshot");
        store.record_snapshot(Index(2), Membership::new([NodeId(1)])).unwrap();
        store.compact(Index(2)).unwrap();
        assert_eq!(store.first_index(), Index(3));
        assert_eq!(store.term(Index(2)), Ok(Term(1)));
        assert_eq!(store.term(Index(1)), Err(StoreError::Compacted { first: Index(3) }));
        assert_eq!(store.snapshot().last(), crate::types::EntryId::new(Term(1), Index(2)));
    }

    #[test]
    fn installing_a_snapshot_keeps_only_a_consistent_suffix() {
        let log = [entry(1, 1), entry(1, 2), entry(2, 3)];
        let meta = |term, index| SnapshotMeta {
            index: Index(index),
            term: Term(term),
            ..Default::default()
        };
        let mut consistent = MemLogStore::new();
        consistent.append(&log);
        consistent.install_snapshot(&meta(1, 2));
        assert_eq!((consistent.first_index(), consistent.last_index()), (Index(3), Index(3)));
        let mut divergent = MemLogStore::new();
        divergent.append(&log);
        divergent.install_snapshot(&meta(3, 2));
        assert_eq!((divergent.first_index(), divergent.last_index()), (Index(3), Index(2)));
        assert_eq!(divergent.term(Index(2)), Ok(Term(3)));
    }

    #[test]
    fn entries_respect_the_byte_budget_but_return_at_least_one() {
        let mut store = MemLogStore::new();
        store.append(&[entry(1, 1), entry(1, 2), entry(1, 3)]);
        assert_eq!(store.entries(Index(1), Index(4), 0).unwrap().len(), 1);
        assert_eq!(store.entries(Index(1), Index(4), 48).unwrap().len(), 2);
        assert_eq!(store.entries(Index(1), Index(4), u64::MAX).unwrap().len(), 3);
        assert!(store.entries(Index(1), Index(5), u64::MAX).is_err());
    }
}
