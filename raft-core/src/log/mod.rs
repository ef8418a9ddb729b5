//! The engine's view of the log: the durable part in a [`LogStore`], the not-yet-durable
//! suffix in [`Unstable`], and the commit and apply cursors (paper §5.3, Figure 2).
//!
//! ```text
//!   first ........ persisted | unstable ......... last
//!   [ store                  ][ unstable entries   ]
//!         applied <= apply_cursor <= commit <= last
//! ```

mod unstable;

use crate::error::StoreError;
use crate::storage::LogStore;
use crate::types::{Entry, EntryId, Index, SnapshotMeta, Term};
use unstable::Unstable;

/// The log of one node.
pub(crate) struct RaftLog<S> {
    pub(crate) store: S,
    unstable: Unstable,
    /// The highest index known committed. Invariant: `commit <= last_index()`.
    pub(crate) commit: Index,
    /// Entries up to here were handed to the host to apply. Invariant:
    /// `applied <= apply_cursor <= commit`.
    pub(crate) apply_cursor: Index,
    /// The host reported entries up to here applied.
    pub(crate) applied: Index,
}

impl<S: LogStore> RaftLog<S> {
    /// A log over `store`, with entries up to `applied` already applied.
    pub(crate) fn new(store: S, commit: Index, applied: Index) -> RaftLog<S> {
        let last = store.last_index();
        RaftLog { store, unstable: Unstable::new(last), commit, apply_cursor: applied, applied }
    }

    /// The last index of the log.
    pub(crate) fn last_index(&self) -> Index {
        match (self.unstable.last_index(), &self.unstable.snapshot) {
            (Some(last), _) => last,
            (None, Some(snapshot)) => snapshot.index,
            (None, None) => self.store.last_index(),
        }
    }

    /// The first index the log holds; entries before it are covered by a snapshot.
    pub(crate) fn first_index(&self) -> Index {
        match &self.unstable.snapshot {
            Some(snapshot) => snapshot.index.next(),
            None => self.store.first_index(),
        }
    }

    /// Replaces the whole log with `snapshot` from the leader (paper §7): the log it covers
    /// and any suffix are dropped, everything up to its index counts as committed and applied
    /// (the host restores its state machine from the snapshot before applying anything else).
    pub(crate) fn restore(&mut self, snapshot: SnapshotMeta) {
        assert!(
            snapshot.index > self.commit,
            "snapshot {} does not reach past commit {}",
            snapshot.index,
            self.commit
        );
        self.commit = snapshot.index;
        self.apply_cursor = snapshot.index;
        self.applied = snapshot.index;
        self.unstable.restore(snapshot);
    }

    /// The received snapshot, if it waits to be handed to the host; marks it handed out.
    pub(crate) fn take_snapshot_to_persist(&mut self) -> Option<SnapshotMeta> {
        self.unstable.take_snapshot_to_persist()
    }

    /// Whether a received snapshot is not yet durable.
    pub(crate) fn has_pending_snapshot(&self) -> bool {
        self.unstable.snapshot.is_some()
    }

    /// Whether a received snapshot waits to be handed to the host.
    pub(crate) fn has_snapshot_to_persist(&self) -> bool {
        self.unstable.snapshot.is_some() && !self.unstable.snapshot_handed_out
    }

    /// The host made the snapshot ending at `index` durable.
    pub(crate) fn snapshot_stable(&mut self, index: Index) {
        self.unstable.snapshot_stable(index);
    }

    /// The id of the last entry (0/0 for an empty log).
    pub(crate) fn last_entry_id(&self) -> EntryId {
        let last = self.last_index();
        EntryId::new(self.term(last).unwrap_or_default(), last)
    }

    /// The last index that is durable and belongs to this log (a pending conflict may have
    /// replaced the store's suffix).
    pub(crate) fn persisted_index(&self) -> Index {
        if self.unstable.entries.is_empty() && self.unstable.snapshot.is_none() {
            self.store.last_index()
        } else {
            self.unstable.offset.prev()
        }
    }

    /// The term of the entry at `index`, if the log holds it (index 0 has term 0).
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == Index(0) {
            return Some(Term(0));
        }
        if let Some(snapshot) = &self.unstable.snapshot {
            if index <= snapshot.index {
                return (index == snapshot.index).then_some(snapshot.term);
            }
        }
        if let Some(term) = self.unstable.term(index) {
            return Some(term);
        }
        if index >= self.unstable.offset || index > self.store.last_index() {
            return None;
        }
        self.store.term(index).ok()
    }

    /// Whether this log holds the entry `id` (the AppendEntries consistency check, §5.3).
    pub(crate) fn matches(&self, id: EntryId) -> bool {
        self.term(id.index) == Some(id.term)
    }

    /// The index of the first of `entries` that this log does not hold (a conflict or a new
    /// entry), if any.
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries.iter().find(|entry| !self.matches(entry.id())).map(|entry| entry.index)
    }

    /// The last entry at or below `index` whose term is at most `term`: where this log may
    /// agree with one that has `term` at `index`. The leader and follower each skip a whole
    /// term per round trip this way (fast back-off, §5.3).
    ///
    /// Terms never decrease along a log, so the entries with term at most `term` form a
    /// prefix and a binary search finds its end in O(log n) term lookups. Below the first
    /// index whose term is known (compacted), the answer is that index with term 0.
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> EntryId {
        let mut hi = index.min(self.last_index());
        let mut lo = self.first_index().prev().min(hi);
        match (self.term(lo), self.term(hi)) {
            (_, Some(t)) if t <= term => return EntryId::new(t, hi),
            (Some(t), _) if t <= term => {}
            _ => return EntryId::new(Term(0), lo),
        }
        // Invariant: term(lo) <= term < term(hi).
        while hi.0 - lo.0 > 1 {
            let mid = Index(lo.0 + (hi.0 - lo.0) / 2);
            match self.term(mid) {
                Some(t) if t <= term => lo = mid,
                Some(_) => hi = mid,
                None => return EntryId::new(Term(0), mid),
            }
        }
        EntryId::new(self.term(lo).unwrap_or_default(), lo)
    }

    /// Appends `entries`, replacing any suffix from `entries[0].index` on.
    ///
    /// # Panics
    /// If that would replace a committed entry or leave a gap: callers check first.
    pub(crate) fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else { return };
        assert!(
            first.index > self.commit && first.index <= self.last_index().next(),
            "append at {} conflicts with commit {} or leaves a gap after {}",
            first.index,
            self.commit,
            self.last_index()
        );
        self.unstable.truncate_and_append(entries);
    }

    /// Appends one entry right after the last one (a leader's proposal).
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index().next());
        if self.unstable.entries.is_empty() {
            self.unstable.offset = entry.index;
        }
        self.unstable.push(entry);
    }

    /// Entries in `[lo, hi)` within `max_bytes` (at least one), from the store and the
    /// unstable suffix.
    pub(crate) fn entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let first = self.first_index();
        if lo < first {
            return Err(StoreError::Compacted { first });
        }
        let split = self.unstable.offset;
        let mut out = Vec::new();
        if lo < split {
            let stored_hi = hi.min(split);
            out = self.store.entries(lo, stored_hi, max_bytes)?;
            if (out.len() as u64) < stored_hi.0 - lo.0 {
                return Ok(out); // the byte budget ran out inside the store
            }
        }
        if hi > split {
            let mut used: u64 = out.iter().map(Entry::size_bytes).sum();
            let from = (lo.max(split).0 - split.0) as usize;
            let to = ((hi.0 - split.0) as usize).min(self.unstable.entries.len());
            for entry in &self.unstable.entries[from.min(to)..to] {
                used += entry.size_bytes();
                if used > max_bytes && !out.is_empty() {
                    break;
                }
                out.push(entry.clone());
            }
        }
        Ok(out)
    }

    /// Advances the commit index to `index` if that is higher.
    ///
    /// # Panics
    /// If `index` is beyond the last index: committing an entry the log lacks is a bug.
    pub(crate) fn commit_to(&mut self, index: Index) -> bool {
        if index <= self.commit {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} is beyond the last index {}",
            self.last_index()
        );
        self.commit = index;
        true
    }

    /// Unstable entries not yet handed to the host; marks them handed out.
    pub(crate) fn take_to_persist(&mut self) -> Vec<Entry> {
        self.unstable.take_to_persist()
    }

    /// Whether unstable entries wait to be handed out to persist.
    pub(crate) fn has_entries_to_persist(&self) -> bool {
        self.unstable.last_index().is_some_and(|last| last > self.unstable.handed_out)
    }

    /// The host made entries up to `id` durable.
    pub(crate) fn stable_to(&mut self, id: EntryId) {
        self.unstable.stable_to(id)
    }

    /// The highest index that may be handed out to apply: committed and durable here.
    fn applicable_index(&self) -> Index {
        self.commit.min(self.persisted_index())
    }

    /// Whether committed entries wait to be handed out for applying.
    pub(crate) fn has_entries_to_apply(&self) -> bool {
        self.applicable_index() > self.apply_cursor
    }

    /// The next committed entries to apply, within `max_bytes`; advances the apply cursor.
    pub(crate) fn take_to_apply(&mut self, max_bytes: u64) -> Vec<Entry> {
        let hi = self.applicable_index().next();
        match self.entries(self.apply_cursor.next(), hi, max_bytes) {
            Ok(entries) => {
                if let Some(last) = entries.last() {
                    self.apply_cursor = last.index;
                }
                entries
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read committed entries to apply; retrying later");
                Vec::new()
            }
        }
    }

    /// The host applied entries up to `index`.
    pub(crate) fn applied_to(&mut self, index: Index) {
        assert!(
            index <= self.apply_cursor,
            "applied {index} beyond what was handed out ({})",
            self.apply_cursor
        );
        self.applied = self.applied.max(index);
    }

    /// The term of each entry in the unstable suffix never decreases (one of the whole-state
    /// invariants); returns a description of the first violation.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        if self.commit > self.last_index() {
            return Err(format!("commit {} > last index {}", self.commit, self.last_index()));
        }
        if !(self.applied <= self.apply_cursor && self.apply_cursor <= self.commit) {
            return Err(format!(
                "applied {} <= apply cursor {} <= commit {} broken",
                self.applied, self.apply_cursor, self.commit
            ));
        }
        let entries = &self.unstable.entries;
        for (i, pair) in entries.windows(2).enumerate() {
            if pair[0].term > pair[1].term || pair[1].index != pair[0].index.next() {
                return Err(format!("unstable entries out of order at position {i}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemLogStore;
    use crate::types::EntryKind;
    use bytes::Bytes;

    fn log_with_terms(terms: &[u64]) -> RaftLog<MemLogStore> {
        let entries: Vec<Entry> = (1..)
            .zip(terms)
            .map(|(i, &t)| Entry {
                term: Term(t),
                index: Index(i),
                kind: EntryKind::Normal,
                data: Bytes::new(),
            })
            .collect();
        let mut store = MemLogStore::new();
        store.append(&entries);
        RaftLog::new(store, Index(0), Index(0))
    }

    /// The obvious linear walk, as the reference for the binary search.
    fn find_conflict_by_term_linear(
        log: &RaftLog<MemLogStore>,
        index: Index,
        term: Term,
    ) -> EntryId {
        let mut probe = index.min(log.last_index());
        loop {
            match log.term(probe) {
                Some(t) if t <= term => return EntryId::new(t, probe),
                Some(_) => probe = probe.prev(),
                None => return EntryId::new(Term(0), probe),
            }
        }
    }

    #[test]
    fn find_conflict_by_term_agrees_with_a_linear_walk() {
        let logs: [&[u64]; 5] =
            [&[], &[1], &[1, 1, 2, 2, 2, 5], &[3, 3, 3], &[1, 2, 3, 4, 5, 6, 7]];
        for terms in logs {
            let log = log_with_terms(terms);
            for index in 0..=terms.len() as u64 + 2 {
                for term in 0..=8 {
                    let (index, term) = (Index(index), Term(term));
                    assert_eq!(
                        log.find_conflict_by_term(index, term),
                        find_conflict_by_term_linear(&log, index, term),
                        "log {terms:?}, index {index}, term {term}"
                    );
                }
            }
        }
    }

    #[test]
    fn find_conflict_by_term_skips_a_whole_term() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(log.find_conflict_by_term(Index(6), Term(4)), EntryId::new(Term(2), Index(5)));
        assert_eq!(log.find_conflict_by_term(Index(5), Term(1)), EntryId::new(Term(1), Index(2)));
        assert_eq!(log.find_conflict_by_term(Index(9), Term(9)), EntryId::new(Term(5), Index(6)));
        assert_eq!(log.find_conflict_by_term(Index(4), Term(0)), EntryId::new(Term(0), Index(0)));
    }
}
