//! Entries the engine holds that are not yet durable.
//!
//! Entries enter here when a leader appends a proposal or a follower accepts an append. They
//! are handed to the host in a Ready (`handed_out` moves), and leave once the host reports them
//! durable (`stable_to`). A conflicting append can replace entries here, and also entries the
//! store already holds: then `offset` moves below the store's last index, and the next Ready
//! starts at `offset`, which tells the host to drop its suffix from there.

use crate::types::{Entry, EntryId, Index, SnapshotMeta, Term};

/// The not-yet-durable suffix of the log.
#[derive(Debug)]
pub(crate) struct Unstable {
    /// Invariant: `entries[i].index == offset + i`.
    pub(crate) entries: Vec<Entry>,
    /// The index of `entries[0]` (or where the next entry would go when empty).
    pub(crate) offset: Index,
    /// Entries up to this index were handed to the host to persist.
    /// Invariant: `offset - 1 <= handed_out <= last index`.
    pub(crate) handed_out: Index,
    /// A snapshot received from the leader, not yet durable; it replaces the whole log up to
    /// its index. Invariant: when set, `offset == snapshot.index + 1`.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// Whether `snapshot` was handed to the host to persist.
    pub(crate) snapshot_handed_out: bool,
}

impl Unstable {
    /// An empty suffix after a store whose last index is `last`.
    pub(crate) fn new(last: Index) -> Unstable {
        Unstable {
            entries: Vec::new(),
            offset: last.next(),
            handed_out: last,
            snapshot: None,
            snapshot_handed_out: false,
        }
    }

    /// The last unstable index, if any.
    pub(crate) fn last_index(&self) -> Option<Index> {
        (!self.entries.is_empty()).then(|| self.offset.plus(self.entries.len() as u64 - 1))
    }

    /// The term at `index` if it is held here.
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        self.slot(index).map(|pos| self.entries[pos].term)
    }

    /// The position of `index` in `entries`.
    pub(crate) fn slot(&self, index: Index) -> Option<usize> {
        if index < self.offset {
            return None;
        }
        let pos = (index.0 - self.offset.0) as usize;
        (pos < self.entries.len()).then_some(pos)
    }

    /// Appends `new`, first dropping every entry at or after `new[0].index`. When that index
    /// is below `offset`, the store's suffix from there is replaced too.
    pub(crate) fn truncate_and_append(&mut self, new: Vec<Entry>) {
        let Some(after) = new.first().map(|entry| entry.index) else { return };
        if after <= self.offset {
            self.offset = after;
            self.entries.clear();
        } else {
            self.entries.truncate((after.0 - self.offset.0) as usize);
        }
        self.entries.extend(new);
        self.handed_out = self.handed_out.min(after.prev());
    }

    /// Replaces everything with `snapshot`: the entries it covers and any suffix go.
    pub(crate) fn restore(&mut self, snapshot: SnapshotMeta) {
        self.entries.clear();
        self.offset = snapshot.index.next();
        self.handed_out = snapshot.index;
        self.snapshot = Some(snapshot);
        self.snapshot_handed_out = false;
    }

    /// The snapshot to persist, if one waits to be handed out; marks it handed out.
    pub(crate) fn take_snapshot_to_persist(&mut self) -> Option<SnapshotMeta> {
        if self.snapshot_handed_out {
            return None;
        }
        self.snapshot_handed_out = true;
        self.snapshot.clone()
    }

    /// The host made the snapshot ending at `index` durable.
    pub(crate) fn snapshot_stable(&mut self, index: Index) {
        if self.snapshot.as_ref().is_some_and(|s| s.index == index && self.snapshot_handed_out) {
            self.snapshot = None;
        }
    }

    /// Appends one entry at the end. The caller guarantees it follows the last entry.
    pub(crate) fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// Entries not yet handed out to persist; marks them handed out.
    pub(crate) fn take_to_persist(&mut self) -> Vec<Entry> {
        let Some(last) = self.last_index() else { return Vec::new() };
        if self.handed_out >= last {
            return Vec::new();
        }
        let start = (self.handed_out.next().0 - self.offset.0) as usize;
        self.handed_out = last;
        self.entries[start..].to_vec()
    }

    /// The host made entries up to `id` durable. Drops them from here if `id` is still in this
    /// log (a later conflict may have replaced it; then a later Ready persists the new one).
    pub(crate) fn stable_to(&mut self, id: EntryId) {
        if self.term(id.index) != Some(id.term) || id.index > self.handed_out {
            return;
        }
        let count = (id.index.0 - self.offset.0 + 1) as usize;
        self.entries.drain(..count);
        self.offset = id.index.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;
    use bytes::Bytes;

    fn entry(term: u64, index: u64) -> Entry {
        Entry { term: Term(term), index: Index(index), kind: EntryKind::Normal, data: Bytes::new() }
    }

    #[test]
    fn a_conflict_below_the_offset_reaches_into_the_store() {
        let mut unstable = Unstable::new(Index(5));
        unstable.push(entry(1, 6));
        unstable.truncate_and_append(vec![entry(2, 4)]);
        assert_eq!(unstable.offset, Index(4));
        assert_eq!(unstable.handed_out, Index(3));
        assert_eq!(unstable.take_to_persist(), vec![entry(2, 4)]);
    }

    #[test]
    fn stable_to_ignores_a_replaced_entry() {
        let mut unstable = Unstable::new(Index(0));
        unstable.truncate_and_append(vec![entry(1, 1), entry(1, 2)]);
        assert_eq!(unstable.take_to_persist().len(), 2);
        unstable.truncate_and_append(vec![entry(2, 2)]);
        unstable.stable_to(EntryId::new(Term(1), Index(2)));
        assert_eq!(unstable.offset, Index(1), "the replaced entry 1/2 must not count as stable");
        assert_eq!(unstable.take_to_persist(), vec![entry(2, 2)]);
        unstable.stable_to(EntryId::new(Term(2), Index(2)));
        assert_eq!(unstable.offset, Index(3));
        assert!(unstable.entries.is_empty());
    }
}
