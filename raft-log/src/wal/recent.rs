//! The newest entries, kept in memory as they are written.
//!
//! Entries are read back soon after they are written: the host applies them once they
//! commit, and a leader sends them to a follower that fell a little behind. Reading them from
//! the segment would cost a `pread`, a copy, a checksum and a decode each time; and on a file
//! system that updates access times (relatime), the first read after a write dirties the
//! inode, which the next `fdatasync` must then write as well.

use super::access::Taken;
use raft_core::{Entry, Index};
use std::collections::VecDeque;

/// A window of the log's newest entries, at most `bytes_max` bytes of them
/// ([`Entry::size_bytes`]).
///
/// The entries are not copied: their data may share a larger buffer (a follower's entries
/// share the frame they arrived in), which stays in memory while any of them is held. So the
/// memory held is about the bytes received over the span the window covers, a little more
/// than `bytes_max`.
///
/// Invariant: the entries follow each other without a gap, and each is the log's entry at its
/// index. The log keeps it so by cutting the window before it cuts its files, and by adding
/// entries only once they are written.
#[derive(Debug)]
pub(super) struct RecentEntries {
    entries: VecDeque<Entry>,
    /// The sum of `size_bytes` over `entries`. Invariant: at most `bytes_max`.
    bytes: u64,
    bytes_max: u64,
}

impl RecentEntries {
    /// An empty window that holds at most `bytes_max` bytes of entries.
    pub(super) fn new(bytes_max: u64) -> RecentEntries {
        RecentEntries { entries: VecDeque::new(), bytes: 0, bytes_max }
    }

    /// The index of the oldest entry held, if any is.
    pub(super) fn first(&self) -> Option<Index> {
        self.entries.front().map(|e| e.index)
    }

    /// The entry at `index`, if held.
    fn get(&self, index: Index) -> Option<&Entry> {
        let first = self.first()?;
        let offset = index.0.checked_sub(first.0)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Adds entries just written after the log's last one. They start a new window if they
    /// do not follow the newest entry held. The oldest entries go once the window is full.
    pub(super) fn push(&mut self, written: &[Entry]) {
        let Some(first) = written.first() else { return };
        let follows = self.entries.back().is_some_and(|last| last.index.next() == first.index);
        if !follows {
            self.clear();
        }
        for entry in written {
            self.bytes += entry.size_bytes();
            self.entries.push_back(entry.clone());
        }
        while self.bytes > self.bytes_max {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.bytes -= oldest.size_bytes();
        }
    }

    /// Forgets the entries from `index` on (the log is about to cut them).
    pub(super) fn cut_from(&mut self, index: Index) {
        while self.entries.back().is_some_and(|last| last.index >= index) {
            let Some(newest) = self.entries.pop_back() else { break };
            self.bytes -= newest.size_bytes();
        }
    }

    /// Forgets the entries up to `index` (compacted away).
    pub(super) fn forget_through(&mut self, index: Index) {
        while self.entries.front().is_some_and(|oldest| oldest.index <= index) {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.bytes -= oldest.size_bytes();
        }
    }

    /// Forgets every entry.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Adds to `taken` the entries held from `next` toward `hi`, until its budget is spent.
    /// Returns whether the budget stopped it.
    pub(super) fn read(&self, next: Index, hi: Index, taken: &mut Taken) -> bool {
        let mut index = next;
        while index < hi {
            let Some(entry) = self.get(index) else { break };
            if !taken.add(entry.clone()) {
                return true;
            }
            index = index.next();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::{EntryKind, Term};

    fn entry(index: u64) -> Entry {
        Entry {
            term: Term(1),
            index: Index(index),
            kind: EntryKind::Normal,
            data: Bytes::from(vec![7; 76]),
        }
    }

    fn held(recent: &RecentEntries) -> Vec<u64> {
        recent.entries.iter().map(|e| e.index.0).collect()
    }

    #[test]
    fn the_oldest_entries_go_once_the_window_is_full() {
        let size = entry(1).size_bytes();
        let mut recent = RecentEntries::new(3 * size);
        recent.push(&[entry(1), entry(2)]);
        recent.push(&[entry(3), entry(4)]);
        assert_eq!(held(&recent), [2, 3, 4]);
        assert_eq!(recent.bytes, 3 * size);
    }

    #[test]
    fn entries_that_do_not_follow_start_a_new_window() {
        let mut recent = RecentEntries::new(u64::MAX);
        recent.push(&[entry(1), entry(2)]);
        recent.push(&[entry(5)]);
        assert_eq!(held(&recent), [5]);
    }

    #[test]
    fn cuts_and_compaction_forget_their_entries() {
        let mut recent = RecentEntries::new(u64::MAX);
        recent.push(&(1..=6).map(entry).collect::<Vec<_>>());
        recent.cut_from(Index(5));
        recent.forget_through(Index(2));
        assert_eq!(held(&recent), [3, 4]);
        assert_eq!(recent.bytes, 2 * entry(1).size_bytes());
        recent.push(&[entry(5)]);
        assert_eq!(held(&recent), [3, 4, 5]);
    }

    #[test]
    fn a_read_stops_at_the_budget_but_takes_at_least_one_entry() {
        let size = entry(1).size_bytes();
        let mut recent = RecentEntries::new(u64::MAX);
        recent.push(&(1..=6).map(entry).collect::<Vec<_>>());
        let indexes = |taken: &Taken| taken.entries.iter().map(|e| e.index.0).collect::<Vec<_>>();
        let mut taken = Taken::new(2 * size);
        assert!(recent.read(Index(2), Index(7), &mut taken));
        assert_eq!(indexes(&taken), [2, 3]);
        let mut taken = Taken::new(1);
        assert!(recent.read(Index(2), Index(7), &mut taken));
        assert_eq!(taken.entries.len(), 1);
        let mut taken = Taken::new(u64::MAX);
        assert!(!recent.read(Index(5), Index(9), &mut taken));
        assert_eq!(indexes(&taken), [5, 6]);
    }
}
