//! The write-ahead log against an in-memory model, across reopenings and crashes.

use bytes::Bytes;
use raft_core::{
    Entry, EntryKind, HardState, Index, LogStore, MemLogStore, Membership, NodeId, Term,
};
use raft_log::vfs::FakeVfs;
use raft_log::wal::{Wal, WalError, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn entry(term: u64, index: u64) -> Entry {
    let data = Bytes::from(format!("entry {index} of term {term}"));
    Entry { term: Term(term), index: Index(index), kind: EntryKind::Normal, data }
}

fn hard_state(term: u64, commit: u64) -> HardState {
    HardState { term: Term(term), vote: Some(NodeId(1)), commit: Index(commit) }
}

/// The segment files in `dir`, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn small_segments() -> WalOptions {
    WalOptions { segment_bytes_max: 300, ..WalOptions::default() }
}

/// Every entry of `wal`, read back through `LogStore`.
fn all_entries(wal: &Wal) -> Vec<Entry> {
    let (first, last) = (wal.first_index(), wal.last_index());
    if first > last {
        return Vec::new();
    }
    wal.entries(first, last.next(), u64::MAX).unwrap()
}

#[test]
fn batches_survive_reopening_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small_segments()).unwrap();
    let mut model = MemLogStore::new();
    for batch in 0..20u64 {
        let entries: Vec<Entry> = (1..=3).map(|i| entry(1, batch * 3 + i)).collect();
        wal.write(Some(hard_state(1, batch * 3)), &entries).unwrap();
        model.append(&entries);
    }
    let segments = segment_files(dir.path()).len();
    assert!(segments > 3, "expected several segments, found {segments}");
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    assert_eq!(wal.hard_state(), hard_state(1, 57));
    assert_eq!(all_entries(&wal), model.entries(Index(1), Index(61), u64::MAX).unwrap());
    assert_eq!(wal.term(Index(60)), Ok(Term(1)));
}

#[test]
fn a_conflicting_suffix_is_replaced_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small_segments()).unwrap();
    let old: Vec<Entry> = (1..=20).map(|i| entry(1, i)).collect();
    wal.write(Some(hard_state(1, 3)), &old).unwrap();
    let new: Vec<Entry> = (6..=8).map(|i| entry(2, i)).collect();
    wal.write(Some(hard_state(2, 5)), &new).unwrap();
    for wal in [wal, Wal::open(dir.path(), small_segments()).unwrap()] {
        assert_eq!(wal.last_index(), Index(8));
        assert_eq!(wal.term(Index(5)), Ok(Term(1)));
        assert_eq!(wal.term(Index(6)), Ok(Term(2)));
        assert_eq!(wal.hard_state(), hard_state(2, 5));
    }
}

/// The newest segment keeps room ahead of its records, so appends that fit leave the file's
/// size alone (and an `fdatasync` need not write it); a sealed segment holds its records
/// only; and a log reopened over the room goes on where it stopped.
#[test]
fn the_newest_segment_keeps_room_ahead_and_sealed_ones_hold_only_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        WalOptions { segment_bytes_max: 2000, preallocate_bytes: 1000, ..small_segments() };
    let mut wal = Wal::open(dir.path(), options.clone()).unwrap();
    wal.write(Some(hard_state(1, 0)), &[entry(1, 1)]).unwrap();
    let size = |path: &Path| std::fs::metadata(path).unwrap().len();
    let newest = segment_files(dir.path()).pop().unwrap();
    let reserved = size(&newest);
    assert!(reserved > 1000, "no room was reserved: {reserved} bytes");
    for index in 2..=10 {
        wal.write(None, &[entry(1, index)]).unwrap();
    }
    assert_eq!(size(&newest), reserved, "appends that fit changed the file's size");
    drop(wal);
    let mut wal = Wal::open(dir.path(), options.clone()).unwrap();
    assert_eq!(wal.recovery_report().torn_bytes, 0);
    assert_eq!(wal.last_index(), Index(10));
    let mut index = 11;
    while segment_files(dir.path()).len() < 3 {
        wal.write(None, &[entry(1, index)]).unwrap();
        index += 1;
        // A segment rolls once its records pass the maximum size; room is not reserved
        // past it.
        let newest = std::fs::read(segment_files(dir.path()).pop().unwrap()).unwrap();
        let room_past_the_maximum = newest.len() > 2000 && newest.last() == Some(&0);
        assert!(!room_past_the_maximum, "{} bytes with room at the end", newest.len());
    }
    let files = segment_files(dir.path());
    for sealed in &files[..files.len() - 1] {
        let bytes = std::fs::read(sealed).unwrap();
        assert_ne!(bytes.last(), Some(&0), "{}: room left in a sealed segment", sealed.display());
    }
    drop(wal);
    let wal = Wal::open(dir.path(), options).unwrap();
    assert_eq!(wal.recovery_report().segments_indexed, 2);
    assert_eq!(all_entries(&wal), (1..index).map(|i| entry(1, i)).collect::<Vec<_>>());
}

/// A crash may cut the newest segment at any byte: the log always reopens, holding a prefix
/// of what was written and a hard state that was written, and accepts new writes after it.
#[test]
fn a_crash_at_every_byte_of_the_last_segment_reopens_at_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        WalOptions { segment_bytes_max: u64::MAX, preallocate_bytes: 256, ..WalOptions::default() };
    let mut wal = Wal::open(dir.path(), options.clone()).unwrap();
    // Entry i is of term i, written with hard state term i, commit i: a node never holds an
    // entry of a term beyond its durable term, whatever byte the crash cuts at.
    let written: Vec<Entry> = (1..=6).map(|i| entry(i, i)).collect();
    for e in &written {
        wal.write(Some(hard_state(e.term.0, e.index.0)), std::slice::from_ref(e)).unwrap();
    }
    drop(wal);
    let segment = segment_files(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&segment).unwrap();
    // A crash either cuts the file (its size was not yet durable) or leaves zeros where the
    // writes did not reach the disk (in room reserved ahead of them).
    let images = (0..=bytes.len()).flat_map(|cut| {
        let zeros = vec![0; bytes.len() - cut];
        [
            (format!("{cut}"), bytes[..cut].to_vec()),
            (format!("{cut}, then {} zeros", zeros.len()), [&bytes[..cut], &zeros[..]].concat()),
        ]
    });
    for (cut, image) in images {
        std::fs::write(&segment, &image).unwrap();
        let mut wal = Wal::open(dir.path(), options.clone()).unwrap();
        let kept = all_entries(&wal);
        assert_eq!(kept, written[..kept.len()], "cut at {cut}");
        assert!(wal.hard_state().commit.0 <= kept.len() as u64, "cut at {cut}");
        let last_term = kept.last().map_or(Term(0), |e| e.term);
        assert!(last_term <= wal.hard_state().term, "cut at {cut}: entry beyond the term");
        let next = entry(wal.hard_state().term.0, kept.len() as u64 + 1);
        wal.write(None, std::slice::from_ref(&next)).unwrap();
        assert_eq!(wal.last_index(), next.index, "cut at {cut}");
    }
}

/// Writes that do not fit the log are refused with an error, not a panic.
#[test]
fn a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert!(wal.write(Some(hard_state(1, 0)), &[entry(1, 5)]).is_err());
    assert!(wal.write(None, &[entry(1, 1)]).is_err(), "an entry of a term not yet durable");
    wal.write(Some(hard_state(1, 0)), &[entry(1, 1)]).unwrap();
    assert!(wal.write(None, &[entry(1, 3)]).is_err());
    assert!(wal.write(None, &[entry(1, 2), entry(1, 4)]).is_err());
    assert_eq!(wal.last_index(), Index(1));
}

/// A cut can take away the records written with the entries after it. Here it takes the
/// batch that carried the vote in term 6, and the process dies right after the cut is synced,
/// before the new entries are written: the term and the vote must survive (they live in the
/// vote file; vote.rs tells the timeline that breaks if they only lived in the log).
#[test]
fn a_cut_never_takes_the_vote_with_it() {
    let vfs = FakeVfs::new();
    let dir = Path::new("/node-2");
    let mut wal = Wal::open_with(Arc::new(vfs.clone()), dir, WalOptions::default()).unwrap();
    wal.write(Some(hard_state(5, 0)), &[entry(5, 1), entry(5, 2), entry(5, 3)]).unwrap();
    wal.write(None, &[entry(5, 4), entry(5, 5)]).unwrap();
    let voted = HardState { term: Term(6), vote: Some(NodeId(3)), commit: Index(2) };
    wal.write(Some(voted), &[entry(5, 6)]).unwrap();
    // The cut's syncs succeed (one for the batch of entry 6, cut first, one for the cut at
    // entry 5), the new batch's fails.
    vfs.fail_syncs_after(2);
    assert!(wal.write(None, &[entry(6, 5)]).is_err());
    assert!(wal.write(None, &[entry(6, 5)]).is_err(), "read-only after a failed sync");
    let reopened = Wal::open_with(Arc::new(vfs.crash()), dir, WalOptions::default()).unwrap();
    assert_eq!(reopened.last_index(), Index(4), "cut before entry 5, nothing after");
    let durable = reopened.hard_state();
    assert_eq!((durable.term, durable.vote), (voted.term, voted.vote));
}

#[test]
fn an_empty_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.write(Some(hard_state(1, 0)), &[entry(1, 1)]).unwrap();
    let size = || -> u64 {
        std::fs::read_dir(dir.path()).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum()
    };
    let before = size();
    wal.write(None, &[]).unwrap();
    assert_eq!(size(), before);
}

/// A log on a fake disk (and where it is), holding entries 1 to `last` of term 1.
fn fake_log_holding(last: u64) -> (FakeVfs, &'static Path, Wal) {
    let vfs = FakeVfs::new();
    let dir = Path::new("/node-1");
    let mut wal = Wal::open_with(Arc::new(vfs.clone()), dir, WalOptions::default()).unwrap();
    let entries: Vec<Entry> = (1..=last).map(|index| entry(1, index)).collect();
    wal.write(Some(hard_state(1, 0)), &entries).unwrap();
    (vfs, dir, wal)
}

/// A new commit index alone costs no sync: it is remembered at once, and recorded with the
/// next entries. A crash before those may lose it, never an entry, and never raises it.
#[test]
fn a_commit_alone_waits_for_the_next_entries() {
    let (vfs, dir, mut wal) = fake_log_holding(2);
    let syncs = vfs.syncs();
    wal.write(Some(hard_state(1, 2)), &[]).unwrap();
    assert_eq!(vfs.syncs(), syncs, "a commit alone is not synced");
    assert_eq!(wal.hard_state().commit, Index(2), "but it is known at once");
    let crashed = Wal::open_with(Arc::new(vfs.crash()), dir, WalOptions::default()).unwrap();
    assert_eq!(crashed.hard_state().commit, Index(0), "lost to the crash");
    assert_eq!(crashed.last_index(), Index(2), "with no entry");
    wal.write(None, &[entry(1, 3)]).unwrap();
    let crashed = Wal::open_with(Arc::new(vfs.crash()), dir, WalOptions::default()).unwrap();
    assert_eq!(crashed.hard_state().commit, Index(2), "recorded with the next entries");
}

/// A batch the log cannot take is refused before anything changes: an entry too large for a
/// record leaves the vote, the log and its writability as they were.
#[test]
fn a_batch_with_an_entry_too_large_changes_nothing() {
    let (vfs, dir, mut wal) = fake_log_holding(2);
    let too_large = raft_log::record::PAYLOAD_LEN_MAX as usize;
    let huge = Entry {
        term: Term(2),
        index: Index(2),
        kind: EntryKind::Normal,
        data: Bytes::from(vec![0; too_large]),
    };
    let refused = wal.write(Some(hard_state(2, 0)), &[huge]);
    assert!(matches!(refused, Err(WalError::InvalidWrite(_))), "{refused:?}");
    assert_eq!(wal.hard_state().term, Term(1), "the new term was not saved");
    assert_eq!(wal.last_index(), Index(2), "entry 2 was not cut");
    wal.write(Some(hard_state(2, 0)), &[entry(2, 3)]).unwrap();
    let reopened = Wal::open_with(Arc::new(vfs.crash()), dir, WalOptions::default()).unwrap();
    assert_eq!(reopened.last_index(), Index(3));
}

/// Entries just written are read from memory; older ones, and every one after a reopening,
/// from the segments. A cut or a compaction takes its entries out of memory too.
#[test]
fn the_newest_entries_are_read_without_touching_the_disk() {
    let vfs = FakeVfs::new();
    let dir = Path::new("/node-1");
    let entry_bytes = entry(1, 1).size_bytes();
    let options = WalOptions { recent_bytes_max: 4 * entry_bytes, ..WalOptions::default() };
    let open = |vfs: &FakeVfs| Wal::open_with(Arc::new(vfs.clone()), dir, options.clone());
    let mut wal = open(&vfs).unwrap();
    let batch: Vec<Entry> = (1..=6).map(|i| entry(1, i)).collect();
    wal.write(Some(hard_state(1, 0)), &batch).unwrap();
    let reads = vfs.reads();
    assert_eq!(wal.entries(Index(3), Index(7), u64::MAX).unwrap(), batch[2..]);
    assert_eq!(vfs.reads(), reads, "the newest four entries come from memory");
    assert_eq!(wal.entries(Index(1), Index(7), u64::MAX).unwrap(), batch);
    assert_eq!(vfs.reads(), reads + 1, "the two before them from the segment");

    wal.write(Some(hard_state(2, 0)), &[entry(2, 5)]).unwrap();
    let mut replaced = batch[..4].to_vec();
    replaced.push(entry(2, 5));
    assert_eq!(wal.entries(Index(3), Index(6), u64::MAX).unwrap(), replaced[2..]);
    wal.save_snapshot(Index(4), Membership::new([NodeId(1)]), b"state").unwrap();
    wal.compact(Index(4)).unwrap();
    assert_eq!(wal.entries(Index(5), Index(6), u64::MAX).unwrap(), replaced[4..]);
    drop(wal);

    let wal = open(&vfs).unwrap();
    let reads = vfs.reads();
    assert_eq!(wal.entries(Index(5), Index(6), u64::MAX).unwrap(), replaced[4..]);
    assert_eq!(vfs.reads(), reads + 1, "a reopened log reads its segments");
}

/// The names in `dir` ending with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let names = std::fs::read_dir(dir).unwrap().map(|f| f.unwrap().file_name());
    names.map(|n| n.to_string_lossy().into_owned()).filter(|n| n.ends_with(suffix)).collect()
}

/// A log in `dir` holding entries 1 to 30 of term 1, all committed.
fn log_of_30_entries(dir: &Path) -> Wal {
    let mut wal = Wal::open(dir, WalOptions::default()).unwrap();
    let entries: Vec<Entry> = (1..=30).map(|i| entry(1, i)).collect();
    wal.write(Some(hard_state(1, 30)), &entries).unwrap();
    wal
}

#[test]
fn a_snapshot_written_on_another_thread_is_adopted_and_a_stale_one_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = log_of_30_entries(dir.path());
    let membership = raft_core::Membership::new([NodeId(1)]);
    let writer = wal.snapshot_writer(Index(10), membership.clone()).unwrap();
    let written = std::thread::spawn(move || writer.write(&mut |out| out.write_all(b"at 10")));
    // The log goes on taking entries while the snapshot is written elsewhere.
    wal.write(Some(hard_state(1, 31)), &[entry(1, 31)]).unwrap();
    let written = written.join().unwrap().unwrap();
    assert_eq!(wal.snapshot().index, Index(0), "nothing in force before adoption");
    assert!(wal.adopt_snapshot(written).unwrap());
    assert_eq!(wal.snapshot().index, Index(10));
    assert_eq!(wal.snapshot_data().unwrap().unwrap(), b"at 10");
    // A writer overtaken by a newer snapshot: its file is discarded, the newer one kept.
    let overtaken = wal.snapshot_writer(Index(15), membership.clone()).unwrap();
    wal.save_snapshot(Index(20), membership, b"at 20").unwrap();
    let stale = overtaken.write(&mut |out| out.write_all(b"at 15")).unwrap();
    assert!(!wal.adopt_snapshot(stale).unwrap());
    assert_eq!(wal.snapshot().index, Index(20));
    assert!(files_ending(dir.path(), ".tmp").is_empty());
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.snapshot().index, Index(20));
    assert_eq!(wal.snapshot_data().unwrap().unwrap(), b"at 20");
}

/// A snapshot received from a leader, written and synced beside the log (as a server does
/// with a large one, so that its loop goes on meanwhile), then installed: the log ends up as
/// after an install given the bytes whole. Meanwhile the node put a snapshot of its own in
/// force; that must not remove the received one's temporary file.
#[test]
fn a_received_snapshot_written_beside_the_log_is_installed_by_a_rename() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = log_of_30_entries(dir.path());
    let membership = Membership::new([NodeId(1), NodeId(2)]);
    let received = raft_core::SnapshotMeta { index: Index(20), term: Term(1), membership };
    let writer = wal.received_snapshot_writer(received.clone());
    let written = std::thread::spawn(move || writer.write(&mut |out| out.write_all(b"at 20")));
    let written = written.join().unwrap().unwrap();
    assert_eq!(files_ending(dir.path(), ".tmp").len(), 1);
    wal.save_snapshot(Index(10), Membership::new([NodeId(1)]), b"at 10").unwrap();
    assert_eq!(files_ending(dir.path(), ".tmp").len(), 1, "another writer's file was removed");

    wal.install_written_snapshot(written).unwrap();
    assert_eq!(wal.snapshot().index, Index(20));
    assert_eq!(wal.snapshot_data().unwrap().unwrap(), b"at 20");
    assert_eq!(wal.first_index(), Index(21), "the entries the snapshot covers went");
    assert_eq!(wal.last_index(), Index(30), "the suffix after the snapshot stayed");
    assert!(files_ending(dir.path(), ".tmp").is_empty());
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.snapshot(), received);
    assert_eq!(wal.snapshot_data().unwrap().unwrap(), b"at 20");
}

/// A snapshot the node takes and one a leader sends may cover the same index and term, and
/// be written at once: neither writer may remove or overwrite the other's file.
#[test]
fn two_writers_of_one_snapshot_keep_their_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = log_of_30_entries(dir.path());
    let membership = Membership::new([NodeId(1)]);
    let own = wal.snapshot_writer(Index(20), membership.clone()).unwrap();
    let received = wal.received_snapshot_writer(own.meta().clone());
    let own = own.write(&mut |out| out.write_all(b"own")).unwrap();
    let received = received.write(&mut |out| out.write_all(b"received")).unwrap();
    assert_eq!(files_ending(dir.path(), ".tmp").len(), 2);
    assert!(wal.adopt_snapshot(own).unwrap());
    assert_eq!(wal.snapshot_data().unwrap().unwrap(), b"own");
    // Already covered by what is in force: discarded, not installed.
    wal.compact(Index(20)).unwrap();
    wal.install_written_snapshot(received).unwrap();
    assert_eq!(wal.snapshot_data().unwrap().unwrap(), b"own");
    assert!(files_ending(dir.path(), ".tmp").is_empty(), "the discarded one's file stayed");
}

/// A received snapshot that does not match the log (another term at its index): the whole
/// log goes, as with an install given the bytes whole.
#[test]
fn a_received_snapshot_written_beside_a_log_it_contradicts_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = log_of_30_entries(dir.path());
    let meta = raft_core::SnapshotMeta {
        index: Index(25),
        term: Term(2),
        membership: Membership::new([NodeId(1)]),
    };
    let writer = wal.received_snapshot_writer(meta.clone());
    let written = writer.write(&mut |out| out.write_all(b"at 25 of term 2")).unwrap();
    wal.install_written_snapshot(written).unwrap();
    assert_eq!(wal.snapshot(), meta);
    assert_eq!((wal.first_index(), wal.last_index()), (Index(26), Index(25)), "the log went");
    let given_up = wal.take_given_up();
    assert_eq!(given_up.paths().len(), 1, "the old segment, given up: {given_up:?}");
    assert!(given_up.paths()[0].exists(), "removed inside the install");
    given_up.remove().unwrap();
    assert!(files_ending(dir.path(), ".gone").is_empty());
}

#[test]
fn a_crash_between_writing_and_adopting_a_snapshot_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = log_of_30_entries(dir.path());
    let membership = raft_core::Membership::new([NodeId(1)]);
    wal.save_snapshot(Index(10), membership.clone(), b"at 10").unwrap();
    let writer = wal.snapshot_writer(Index(20), membership).unwrap();
    let _written = writer.write(&mut |out| out.write_all(b"at 20")).unwrap();
    assert_eq!(files_ending(dir.path(), ".tmp").len(), 1);
    drop(wal); // the process dies before adopting
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.snapshot().index, Index(10));
    assert_eq!(wal.snapshot_data().unwrap().unwrap(), b"at 10");
    assert!(files_ending(dir.path(), ".tmp").is_empty(), "the open removed the leftover");
}

/// A batch written but not synced when the process died reads back from the page cache;
/// the next open syncs it, so that what the node acknowledges on top survives a power cut.
#[test]
fn an_unsynced_batch_left_by_a_dead_process_is_synced_when_the_log_opens() {
    let (vfs, dir, mut wal) = fake_log_holding(1);
    let pending = wal.write_unsynced(None, &[entry(1, 2)]).unwrap().unwrap();
    drop((pending, wal)); // the process dies before the sync; the kernel keeps the bytes
    let reopened = Wal::open_with(Arc::new(vfs.clone()), dir, WalOptions::default()).unwrap();
    assert_eq!(reopened.last_index(), Index(2));
    let crashed = Wal::open_with(Arc::new(vfs.crash()), dir, WalOptions::default()).unwrap();
    assert_eq!(all_entries(&crashed), vec![entry(1, 1), entry(1, 2)]);
}

/// A batch written without its sync is readable at once and durable only once its sync,
/// run on another thread, is finished; meanwhile every other change is refused, so that a
/// power cut can tear only the last batch.
#[test]
fn a_batch_synced_on_another_thread_is_durable_once_finished() {
    let (vfs, dir, mut wal) = fake_log_holding(1);
    let pending = wal.write_unsynced(None, &[entry(1, 2), entry(1, 3)]).unwrap().unwrap();
    assert_eq!(wal.entries(Index(2), Index(4), u64::MAX), Ok(vec![entry(1, 2), entry(1, 3)]));
    let refused = wal.write(None, &[entry(1, 4)]);
    assert!(matches!(refused, Err(raft_log::wal::WalError::InvalidWrite(_))), "{refused:?}");
    assert!(wal.compact(Index(1)).is_err(), "no change of any kind before the sync");
    let crashed = Wal::open_with(Arc::new(vfs.crash()), dir, WalOptions::default()).unwrap();
    assert_eq!(crashed.last_index(), Index(1), "not durable before the sync");
    let synced = std::thread::spawn(move || pending.sync()).join().unwrap();
    wal.finish_sync(synced).unwrap();
    let crashed = Wal::open_with(Arc::new(vfs.crash()), dir, WalOptions::default()).unwrap();
    assert_eq!(all_entries(&crashed), vec![entry(1, 1), entry(1, 2), entry(1, 3)]);
    wal.write(None, &[entry(1, 4)]).unwrap();
    assert!(wal.write_unsynced(Some(hard_state(1, 4)), &[]).unwrap().is_none(), "nothing to sync");
    vfs.fail_syncs();
    let pending = wal.write_unsynced(None, &[entry(1, 5)]).unwrap().unwrap();
    assert!(wal.finish_sync(pending.sync()).is_err());
    let refused = wal.write(None, &[entry(1, 5)]);
    assert!(matches!(refused, Err(raft_log::wal::WalError::ReadOnly)), "{refused:?}");
}

/// Compaction gives up the segments it no longer needs (renamed out of the log, as slow to
/// remove as they are large): the owner removes them, and a crash before that leaves them to
/// the next open, which removes them too.
#[test]
fn compaction_gives_up_segments_for_the_owner_to_remove() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small_segments()).unwrap();
    let write_up_to = |wal: &mut Wal, last: u64| {
        let entries: Vec<Entry> = (wal.last_index().0 + 1..=last).map(|i| entry(1, i)).collect();
        for batch in entries.chunks(4) {
            wal.write(Some(hard_state(1, batch[0].index.0)), batch).unwrap();
        }
    };
    write_up_to(&mut wal, 40);
    let before = segment_files(dir.path());
    wal.save_snapshot(Index(30), Membership::new([NodeId(1)]), b"at 30").unwrap();
    wal.compact(Index(30)).unwrap();
    let after = segment_files(dir.path());
    assert!(after.len() < before.len(), "no segment left the log: {after:?}");
    let given_up = wal.take_given_up();
    let gone = before.len() - after.len();
    assert_eq!(given_up.paths().len(), gone * 2, "each segment with its index file");
    assert!(given_up.paths().iter().all(|p| p.exists()), "removed inside the compaction");
    assert_eq!(files_ending(dir.path(), ".gone").len(), gone * 2);
    assert!(wal.take_given_up().is_empty(), "handed over twice");
    given_up.remove().unwrap();
    assert!(files_ending(dir.path(), ".gone").is_empty());

    // Given up again by the next snapshot, and left behind by a crash.
    write_up_to(&mut wal, 80);
    wal.save_snapshot(Index(70), Membership::new([NodeId(1)]), b"at 70").unwrap();
    wal.compact(Index(70)).unwrap();
    assert!(files_ending(dir.path(), ".gone").len() > 2, "the old snapshot and segments");
    drop(wal);
    let wal = Wal::open(dir.path(), small_segments()).unwrap();
    assert!(files_ending(dir.path(), ".gone").is_empty(), "the open left given-up files");
    assert_eq!(wal.last_index(), Index(80));
    assert!(wal.first_index() <= Index(71), "entries after the snapshot lost");
    assert_eq!(wal.snapshot_data().unwrap().unwrap(), b"at 70");
}

/// More renames than any change below makes: a change that never finishes fails its test
/// rather than looping for ever.
const RENAMES_MAX: u64 = 64;

/// A log on a fake disk in many small segments, holding entries 1 to 20 of term 1.
fn fake_log_in_small_segments() -> (FakeVfs, &'static Path, Vec<Entry>) {
    let dir = Path::new("/node-1");
    let vfs = FakeVfs::new();
    let mut wal = Wal::open_with(Arc::new(vfs.clone()), dir, small_segments()).unwrap();
    let old: Vec<Entry> = (1..=20).map(|i| entry(1, i)).collect();
    for batch in old.chunks(2) {
        wal.write(Some(hard_state(1, 3)), batch).unwrap(); // a segment holds about 4
    }
    (vfs, dir, old)
}

/// Runs `change` on a copy of the log in `base` whose renames fail after `renames` of them,
/// as a process killed amid them would stop; returns whether `change` finished, and the log
/// opened again from what the stopped process left.
fn stopped_after_renames(
    base: &FakeVfs,
    dir: &Path,
    renames: u64,
    change: impl FnOnce(&mut Wal) -> Result<(), WalError>,
) -> (bool, Wal) {
    assert!(renames <= RENAMES_MAX, "the change never finished");
    let vfs = base.kill(); // a copy of the disk as the log left it
    let mut wal = Wal::open_with(Arc::new(vfs.clone()), dir, small_segments()).unwrap();
    vfs.fail_renames_after(renames);
    let finished = change(&mut wal).is_ok();
    drop(wal);
    let reopened = Wal::open_with(Arc::new(vfs.kill()), dir, small_segments())
        .unwrap_or_else(|e| panic!("stopped after {renames} renames, the log is refused: {e}"));
    (finished, reopened)
}

/// A cut that gives up several segments is stopped after each of its renames in turn. The
/// segments go newest first, so every stop leaves a log that opens: the entries before the
/// cut point intact, then a contiguous run of the old entries after it, or the new ones.
/// (Oldest first, a stop after the first segment leaves a gap, and the log is refused.)
#[test]
fn a_cut_stopped_amid_its_renames_leaves_a_log_that_opens() {
    let (base, dir, old) = fake_log_in_small_segments();
    let new: Vec<Entry> = (6..=8).map(|i| entry(2, i)).collect();
    for renames in 0.. {
        let (cut, reopened) = stopped_after_renames(&base, dir, renames, |wal| {
            wal.write(Some(hard_state(2, 5)), &new)
        });
        let entries = all_entries(&reopened);
        assert_eq!(entries[..5], old[..5], "stopped after {renames} renames");
        if cut {
            assert_eq!(entries[5..], new[..]);
            assert!(renames >= 4, "only {renames} renames: too few segments given up");
            break;
        }
        assert!(entries[5..].iter().all(|e| e.term == Term(1)), "a half-written cut");
    }
}

/// An installed snapshot that contradicts the log replaces every segment, stopped after each
/// of its renames in turn: every stop leaves a log that opens, on the old log whole if the
/// snapshot's own rename did not happen, else on the new snapshot, the old segments left
/// behind replaced again by that open.
#[test]
fn an_install_stopped_amid_its_renames_leaves_a_log_that_opens() {
    let (base, dir, old) = fake_log_in_small_segments();
    let meta = raft_core::SnapshotMeta {
        index: Index(15),
        term: Term(2),
        membership: Membership::new([NodeId(1)]),
    };
    for renames in 0.. {
        let (installed, reopened) = stopped_after_renames(&base, dir, renames, |wal| {
            let writer = wal.received_snapshot_writer(meta.clone());
            let written = writer.write(&mut |out| out.write_all(b"at 15 of term 2"))?;
            wal.install_written_snapshot(written).map(|_| ())
        });
        if reopened.snapshot().index == Index(0) {
            // Stopped at the snapshot's own rename: the old log, whole.
            assert!(!installed);
            assert_eq!(all_entries(&reopened), old, "stopped after {renames} renames");
            continue;
        }
        assert_eq!(reopened.snapshot(), meta, "stopped after {renames} renames");
        assert_eq!(reopened.last_index(), Index(15), "stopped after {renames} renames");
        if installed {
            assert!(renames >= 8, "only {renames} renames: too few segments given up");
            break;
        }
    }
}
