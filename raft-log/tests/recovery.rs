//! Recovery: the index files spare a scan of sealed segments; damage anywhere is detected
//! (and cut only with repair); a failed sync makes the log read-only; a crash at any step of
//! a snapshot install leaves the old log or the new one, and always the vote.

use bytes::Bytes;
use raft_core::Term;
use raft_core::{Entry, EntryKind, HardState, Index, LogStore, Membership, NodeId, SnapshotMeta};
use raft_log::vfs::{FakeVfs, Vfs};
use raft_log::wal::{Wal, WalError, WalOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DIR: &str = "/node-1";

fn entry(term: u64, index: u64) -> Entry {
    let data = Bytes::from(format!("entry {index} of term {term}"));
    Entry { term: Term(term), index: Index(index), kind: EntryKind::Normal, data }
}

fn hard_state(term: u64, commit: u64) -> HardState {
    HardState { term: Term(term), vote: Some(NodeId(2)), commit: Index(commit) }
}

fn small_segments() -> WalOptions {
    WalOptions { segment_bytes_max: 300, ..WalOptions::default() }
}

fn open(vfs: &FakeVfs, options: WalOptions) -> Result<Wal, WalError> {
    Wal::open_with(Arc::new(vfs.clone()), Path::new(DIR), options)
}

/// A log of entries 1..=`count` of term 3, in batches of 3, over several segments.
fn written_log(count: u64) -> (FakeVfs, Vec<Entry>) {
    let vfs = FakeVfs::new();
    let mut wal = open(&vfs, small_segments()).unwrap();
    let entries: Vec<Entry> = (1..=count).map(|i| entry(3, i)).collect();
    for batch in entries.chunks(3) {
        wal.write(Some(hard_state(3, batch[0].index.0)), batch).unwrap();
    }
    (vfs, entries)
}

fn all_entries(wal: &Wal) -> Result<Vec<Entry>, raft_core::StoreError> {
    if wal.first_index() > wal.last_index() {
        return Ok(Vec::new());
    }
    wal.entries(wal.first_index(), wal.last_index().next(), u64::MAX)
}

fn files_named(vfs: &FakeVfs, extension: &str) -> Vec<PathBuf> {
    let mut files = vfs.list(Path::new(DIR)).unwrap();
    files.retain(|p| p.extension().is_some_and(|e| e == extension));
    files.sort();
    files
}

#[test]
fn opening_reads_only_the_newest_segment() {
    let (vfs, entries) = written_log(60);
    let segments = files_named(&vfs, "seg").len();
    assert!(segments > 4, "{segments} segments");
    assert_eq!(files_named(&vfs, "idx").len(), segments - 1, "every sealed segment indexed");
    let wal = open(&vfs, small_segments()).unwrap();
    let report = wal.recovery_report();
    assert_eq!((report.segments_indexed, report.segments_scanned), (segments - 1, 1));
    assert_eq!(all_entries(&wal).unwrap(), entries);
    assert_eq!(wal.hard_state(), hard_state(3, 58));
}

#[test]
fn a_damaged_or_missing_index_is_rebuilt_from_its_segment() {
    let (vfs, entries) = written_log(60);
    let indexes = files_named(&vfs, "idx");
    let mut damaged = vfs.contents(&indexes[0]).unwrap();
    damaged[70] ^= 0x10;
    vfs.set_contents(&indexes[0], damaged);
    vfs.remove(&indexes[1]).unwrap();
    vfs.set_contents(&indexes[2], Vec::new()); // a crash right after the rename
    let wal = open(&vfs, small_segments()).unwrap();
    assert_eq!(wal.recovery_report().segments_scanned, 4);
    assert_eq!(all_entries(&wal).unwrap(), entries);
    drop(wal);
    let wal = open(&vfs, small_segments()).unwrap();
    assert_eq!(wal.recovery_report().segments_scanned, 1, "the indexes were written again");
    assert_eq!(all_entries(&wal).unwrap(), entries);
}

/// A deterministic stream of positions (xorshift), so a failure names its flip.
fn positions(seed: u64, below: usize, count: usize) -> Vec<usize> {
    let mut state = seed | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        })
        .collect()
}

/// One flipped bit in any segment, at random positions: the log never serves a wrong entry.
/// In the newest segment, a damaged last record is a torn write (cut); anywhere else the
/// open fails naming the file. In a sealed segment the index spares the scan, so the damage
/// is found when the entry is read, or at open with `verify_sealed`. With repair, the log
/// opens cut before the damage.
#[test]
fn flipped_bits_are_always_detected() {
    let (vfs, entries) = written_log(45);
    let segments = files_named(&vfs, "seg");
    for (number, path) in segments.iter().enumerate() {
        let newest = number + 1 == segments.len();
        let bytes = vfs.contents(path).unwrap();
        for (n, byte) in positions(number as u64 + 7, bytes.len(), 40).into_iter().enumerate() {
            let image = vfs.kill();
            let mut damaged = bytes.clone();
            damaged[byte] ^= 1 << (n % 8);
            image.set_contents(path, damaged);
            let case = format!("{} byte {byte}", path.display());
            check_flip(&image, &entries, newest, &case);
        }
    }
}

fn check_flip(image: &FakeVfs, entries: &[Entry], newest: bool, case: &str) {
    let served_ok = |wal: &Wal| match all_entries(wal) {
        Ok(read) => read[..] == entries[..read.len()],
        Err(_) => true, // detected when read
    };
    match open(image, small_segments()) {
        Ok(wal) => {
            assert!(served_ok(&wal), "{case}: wrong entries served");
            if newest {
                assert!(wal.recovery_report().torn_bytes > 0, "{case}: damage not reported");
            }
        }
        Err(error) => {
            assert!(newest, "{case}: a sealed segment is not scanned without verify");
            assert!(error.to_string().contains("damaged record"), "{case}: {error}");
        }
    }
    let verify = WalOptions { verify_sealed: true, ..small_segments() };
    if let Ok(wal) = open(image, verify.clone()) {
        assert!(newest, "{case}: verify_sealed must find damage in a sealed segment");
        assert_eq!(all_entries(&wal).unwrap(), entries[..wal.last_index().0 as usize], "{case}");
    }
    let repair = WalOptions { repair: true, ..verify };
    let wal = open(image, repair).unwrap_or_else(|e| panic!("{case}: repair failed: {e}"));
    let kept = all_entries(&wal).unwrap();
    assert_eq!(kept[..], entries[..kept.len()], "{case}: repair kept a wrong entry");
}

#[test]
fn after_a_failed_sync_the_log_is_read_only() {
    let (vfs, entries) = written_log(9);
    let mut wal = open(&vfs, small_segments()).unwrap();
    vfs.fail_syncs();
    let error = wal.write(None, &[entry(3, 10)]).unwrap_err();
    assert!(error.to_string().contains("injected sync failure"), "{error}");
    // The page cache may have dropped the data: no retry may report it durable.
    assert!(matches!(wal.write(None, &[entry(3, 10)]), Err(WalError::ReadOnly)));
    assert!(matches!(wal.write(Some(hard_state(4, 9)), &[]), Err(WalError::ReadOnly)));
    assert_eq!(all_entries(&wal).unwrap()[..9], entries[..], "reads still served");
    let reopened = open(&vfs.crash(), small_segments()).unwrap();
    assert_eq!(all_entries(&reopened).unwrap(), entries);
}

#[test]
fn a_failed_vote_sync_makes_the_log_read_only_too() {
    let (vfs, _) = written_log(3);
    let mut wal = open(&vfs, small_segments()).unwrap();
    vfs.fail_syncs();
    assert!(wal.write(Some(hard_state(4, 3)), &[]).is_err());
    assert!(matches!(wal.write(None, &[entry(3, 4)]), Err(WalError::ReadOnly)));
    assert_eq!(open(&vfs.crash(), small_segments()).unwrap().hard_state().term, Term(3));
}

/// A cut syncs the segment it shortens before the new entries go in; when that sync fails
/// the batch is refused and so is every later change, compaction included.
#[test]
fn a_failed_sync_in_a_cut_makes_the_log_read_only() {
    let (vfs, entries) = written_log(9);
    let mut wal = open(&vfs, small_segments()).unwrap();
    vfs.fail_syncs();
    // No new term (its vote-file sync would fail first): the cut's own syncs fail.
    let replacing = [entry(3, 5)];
    assert!(wal.write(None, &replacing).is_err());
    assert!(matches!(wal.compact(Index(0)), Err(WalError::ReadOnly)));
    assert!(matches!(wal.write(None, &replacing), Err(WalError::ReadOnly)));
    let reopened = open(&vfs.crash(), small_segments()).unwrap();
    assert_eq!(all_entries(&reopened).unwrap(), entries, "nothing of the refused batch");
}

fn snapshot_meta(index: u64, term: u64) -> SnapshotMeta {
    let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    SnapshotMeta { index: Index(index), term: Term(term), membership }
}

/// A snapshot from the leader that the log does not hold replaces the whole log. A power cut
/// after any durable step of the install leaves either the old log or the snapshot with an
/// empty log after it, and always the term and vote.
#[test]
fn a_crash_at_any_step_of_a_snapshot_install_leaves_old_or_new() {
    let meta = snapshot_meta(50, 3);
    for steps in 0.. {
        let (vfs, entries) = written_log(30);
        let mut wal = open(&vfs, small_segments()).unwrap();
        vfs.fail_syncs_after(steps);
        let installed = wal.install_snapshot(&meta, b"state at 50").is_ok();
        let after = open(&vfs.crash(), small_segments()).unwrap();
        assert_eq!(after.hard_state().term, Term(3), "after {steps} syncs");
        assert_eq!(after.hard_state().vote, Some(NodeId(2)), "after {steps} syncs");
        if after.snapshot().index == Index(0) {
            assert!(!installed, "after {steps} syncs: an acknowledged install was lost");
            assert_eq!(all_entries(&after).unwrap(), entries, "after {steps} syncs");
        } else {
            assert_eq!(after.snapshot(), meta, "after {steps} syncs");
            assert_eq!((after.first_index(), after.last_index()), (Index(51), Index(50)));
            assert_eq!(after.term(Index(50)), Ok(Term(3)));
            assert_eq!(after.snapshot_data().unwrap().unwrap(), b"state at 50");
        }
        if installed {
            assert!(steps > 0);
            break;
        }
    }
}

/// A snapshot whose last entry the log holds keeps the suffix after it (paper §7), and
/// whole segments it covers are given up.
#[test]
fn a_snapshot_the_log_holds_keeps_the_suffix() {
    let (vfs, entries) = written_log(60);
    let mut wal = open(&vfs, small_segments()).unwrap();
    let before = files_named(&vfs, "seg").len();
    wal.install_snapshot(&snapshot_meta(40, 3), b"state at 40").unwrap();
    assert!(files_named(&vfs, "seg").len() < before, "covered segments given up");
    assert_eq!(wal.first_index(), Index(41));
    assert_eq!(all_entries(&wal).unwrap(), entries[40..]);
    drop(wal);
    let wal = open(&vfs.crash(), small_segments()).unwrap();
    assert!(wal.first_index() <= Index(41));
    let served = wal.entries(Index(41), Index(61), u64::MAX).unwrap();
    assert_eq!(served, entries[40..]);
}

#[test]
fn a_log_without_its_vote_file_refuses_to_open() {
    let (vfs, _) = written_log(3);
    vfs.remove(&Path::new(DIR).join("vote")).unwrap();
    let error = open(&vfs, small_segments()).err().unwrap();
    assert!(error.to_string().contains("no vote file"), "{error}");
}

/// Entries a snapshot covers are committed: a batch replacing them is refused, not
/// acknowledged and then dropped at the next open (found by the model test).
#[test]
fn a_batch_reaching_into_the_snapshot_is_refused() {
    let (vfs, entries) = written_log(10);
    let mut wal = open(&vfs, small_segments()).unwrap();
    wal.save_snapshot(Index(8), Membership::new([NodeId(1)]), b"state at 8").unwrap();
    let replacing: Vec<Entry> = (6..=12).map(|i| entry(4, i)).collect();
    let error = wal.write(Some(hard_state(4, 8)), &replacing).unwrap_err();
    assert!(error.to_string().contains("covered by a snapshot"), "{error}");
    wal.write(Some(hard_state(4, 8)), &replacing[3..]).unwrap(); // from 9: fine
    let reopened = open(&vfs.kill(), small_segments()).unwrap();
    assert_eq!(reopened.entries(Index(1), Index(9), u64::MAX).unwrap(), entries[..8]);
    assert_eq!(reopened.entries(Index(9), Index(13), u64::MAX).unwrap(), replacing[3..]);
}

/// Figure 2: the current term is on stable storage before anything that depends on it. A
/// batch that raises the term and carries entries of that term, stopped by a power cut after
/// any of its syncs, never leaves an entry of a term the durable term has not reached (the
/// open would refuse such a log).
#[test]
fn the_term_is_durable_before_its_entries() {
    for steps in 0.. {
        let (vfs, entries) = written_log(6);
        let mut wal = open(&vfs, small_segments()).unwrap();
        vfs.fail_syncs_after(steps);
        let written = wal.write(Some(hard_state(4, 6)), &[entry(4, 7), entry(4, 8)]).is_ok();
        let after = open(&vfs.crash(), small_segments())
            .unwrap_or_else(|e| panic!("after {steps} syncs: {e}"));
        let kept = all_entries(&after).unwrap();
        assert_eq!(kept[..6], entries[..], "after {steps} syncs");
        if kept.len() > 6 {
            assert_eq!(after.hard_state().term, Term(4), "after {steps} syncs");
        }
        if written {
            assert_eq!(kept.len(), 8, "after {steps} syncs: an acknowledged batch was lost");
            break;
        }
    }
}
