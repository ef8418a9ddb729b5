//! One segment file: records appended at the end, made durable with `fdatasync`, and read
//! back at open with the recovery rules of `raft-log/FORMAT.md`:
//!
//! - a record cut short at the end of the *last* segment is a torn write: it is truncated
//!   away and reported;
//! - damage in the last batch of the last segment is a torn write too: a power cut during
//!   the batch's write-back can leave any of its sectors unwritten or garbage, intact ones
//!   after them included (see [`is_torn_write`]);
//! - any other damage (in a sealed segment, or in a batch that a later batch follows) is a
//!   damaged committed record: opening fails with the file, the offset and the reason, and
//!   nothing is dropped silently.
//!
//! The newest segment may end in zeros: room reserved ahead of the appends (see
//! [`Segment::append`]), so that an `fdatasync` does not also have to write the file's new
//! size. Zeros are never a record (a zero header fails its checksum), so a tail of zeros
//! after the last intact record is free space, not a torn write.

use crate::record::{self, CorruptRecord, Decoded, RecordKind, ScanEnd};
use crate::vfs::{Vfs, VfsFile};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// Why a segment could not be opened or written.
#[derive(Debug, Error)]
pub enum SegmentError {
    /// An operating-system error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A record that intact records follow (or in a sealed segment) is damaged.
    #[error(
        "{path}: damaged record at byte {offset} ({reason}); the log refuses to open. Restore \
         the node from a peer, or open with repair to truncate the log from this record on"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong with it.
        reason: CorruptRecord,
    },
}

/// What opening a segment found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SegmentRecovery {
    /// Bytes cut from the end as a torn write (0 if none).
    pub torn_bytes: u64,
    /// With repair: where a damaged record was found, and the segment cut (else `None`).
    pub repaired_from: Option<u64>,
}

/// How to open a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenMode {
    /// Whether it is the newest segment, the only one a crash can leave torn.
    pub last: bool,
    /// Whether damage is cut away (from the damaged record on) instead of refused.
    pub repair: bool,
}

/// An open segment file.
pub struct Segment {
    /// Shared with the [`SegmentSync`]s handed out (one per batch: a count, not a copy).
    path: Arc<Path>,
    /// Shared with the [`SegmentSync`]s handed out, which only sync it.
    file: Arc<dyn VfsFile>,
    /// Bytes of intact records.
    len: u64,
    /// The file's size. Invariant: `len <= size`, and the bytes past `len` are zeros (room
    /// reserved for appends). A sealed segment has none: its size is `len`.
    size: u64,
}

/// Syncs a segment's file from another thread ([`Segment::sync_later`]).
pub struct SegmentSync {
    path: Arc<Path>,
    file: Arc<dyn VfsFile>,
}

impl SegmentSync {
    /// `fdatasync`: every append that returned before this call is durable when it returns
    /// `Ok`.
    pub fn sync(&self) -> Result<(), SegmentError> {
        self.file.sync().map_err(io_error(&self.path))
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io { path: path.to_path_buf(), source }
}

impl Segment {
    /// Creates an empty segment at `path` (the caller syncs the directory).
    pub fn create(vfs: &dyn Vfs, path: &Path) -> Result<Segment, SegmentError> {
        let file = vfs.create_new(path).map_err(io_error(path))?;
        Ok(Segment { path: path.into(), file: file.into(), len: 0, size: 0 })
    }

    /// Opens the segment at `path` and returns it with its intact records' bytes, applying
    /// the recovery rules (a torn tail cut from the last segment; other damage refused, or
    /// cut with `mode.repair`). A cut is synced before this returns. Zeros after the last
    /// intact record of the last segment are kept as room for appends.
    pub fn open(
        vfs: &dyn Vfs,
        path: &Path,
        mode: OpenMode,
    ) -> Result<(Segment, Vec<u8>, SegmentRecovery), SegmentError> {
        let file = vfs.open(path).map_err(io_error(path))?;
        let mut bytes = file.read_all().map_err(io_error(path))?;
        let (intact, repaired_from) = match intact_len(path, &bytes, mode.last) {
            Ok(intact) => (intact, None),
            Err(SegmentError::Corrupt { offset, .. }) if mode.repair => {
                (offset as usize, Some(offset))
            }
            Err(error) => return Err(error),
        };
        let reserved = mode.last && repaired_from.is_none() && all_zero(&bytes[intact..]);
        let torn_bytes =
            if repaired_from.is_some() || reserved { 0 } else { (bytes.len() - intact) as u64 };
        let recovery = SegmentRecovery { torn_bytes, repaired_from };
        let size = if reserved { bytes.len() } else { intact } as u64;
        if intact < bytes.len() && !reserved {
            file.set_len(intact as u64).map_err(io_error(path))?;
            file.sync().map_err(io_error(path))?;
        }
        bytes.truncate(intact);
        let segment = Segment { path: path.into(), file: file.into(), len: intact as u64, size };
        Ok((segment, bytes, recovery))
    }

    /// Opens a sealed segment without reading it, trusting its index that says it holds
    /// `len` bytes (records are still checked when read). `None` if the file's length differs.
    pub fn open_indexed(
        vfs: &dyn Vfs,
        path: &Path,
        len: u64,
    ) -> Result<Option<Segment>, SegmentError> {
        let file = vfs.open(path).map_err(io_error(path))?;
        if file.size().map_err(io_error(path))? != len {
            return Ok(None);
        }
        Ok(Some(Segment { path: path.into(), file: file.into(), len, size: len }))
    }

    /// Appends already-framed records (one `write`, no sync). When they do not fit in the
    /// room left, `reserve` zero bytes are written after them: the syncs of the appends that
    /// follow, until that room is used, then change neither the file's size nor its blocks,
    /// so they write data only. (Zeros written, not a sparse `set_len`: a write into a hole
    /// allocates a block, and the `fdatasync` must then write the inode too; on ext4 that
    /// costs about a third more.)
    pub fn append(&mut self, records: &[u8], reserve: u64) -> Result<(), SegmentError> {
        let end = self.len + records.len() as u64;
        self.file.write_at(records, self.len).map_err(io_error(&self.path))?;
        if end > self.size && reserve > 0 {
            let zeros = self.buffer_len(reserve)?;
            self.file.write_at(&vec![0; zeros], end).map_err(io_error(&self.path))?;
            self.size = end + reserve;
        }
        self.len = end;
        self.size = self.size.max(end);
        Ok(())
    }

    /// Gives back the room reserved after the records, durably: a sealed segment's file
    /// holds exactly its records (its index file records that length).
    pub fn seal(&mut self) -> Result<(), SegmentError> {
        if self.size > self.len {
            self.truncate(self.len)?;
        }
        Ok(())
    }

    /// Makes everything appended so far durable (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        self.sync_later().sync()
    }

    /// A handle that makes everything appended so far durable when its
    /// [`SegmentSync::sync`] is called, on any thread.
    pub fn sync_later(&self) -> SegmentSync {
        SegmentSync { path: self.path.clone(), file: self.file.clone() }
    }

    /// Cuts the segment to its first `len` bytes and makes that durable.
    pub fn truncate(&mut self, len: u64) -> Result<(), SegmentError> {
        self.file.set_len(len).map_err(io_error(&self.path))?;
        self.file.sync().map_err(io_error(&self.path))?;
        self.len = len;
        self.size = len;
        Ok(())
    }

    /// Cuts the segment to its first `len` bytes, durably, one batch at a time from the end,
    /// each cut synced: every file a crash can leave ends at a batch start (or at `len`).
    ///
    /// A power cut during a cut's sync may leave the old length with the bytes after the new
    /// end zeroed or garbled (file systems zero the rest of the block at a new end). Cut batch
    /// by batch, that damage lies in the last batch the file holds, which opening takes for a
    /// torn write; cut at once, it could lie in front of intact batch starts of the suffix
    /// being cut, which opening must take for damage to durable records.
    pub fn cut_back_to(&mut self, len: u64) -> Result<(), SegmentError> {
        for start in self.batch_starts_after(len)?.into_iter().rev() {
            self.truncate(start)?;
        }
        self.truncate(len)
    }

    /// Where the batches that start after byte `len` start.
    fn batch_starts_after(&self, len: u64) -> Result<Vec<u64>, SegmentError> {
        let mut tail = vec![0; self.buffer_len(self.len.saturating_sub(len))?];
        self.read_at(&mut tail, len)?;
        let (records, _) = record::scan(&tail);
        let starts = records.iter().filter(|r| r.kind == RecordKind::BatchStart && r.offset > 0);
        Ok(starts.map(|r| len + r.offset as u64).collect())
    }

    /// `bytes` as a buffer length (an error on a target whose memory could not hold it).
    fn buffer_len(&self, bytes: u64) -> Result<usize, SegmentError> {
        usize::try_from(bytes).map_err(|e| io_error(&self.path)(io::Error::other(e)))
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SegmentError> {
        self.file.read_exact_at(buf, offset).map_err(io_error(&self.path))
    }

    /// Bytes of intact records.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The file's size: the records and the room reserved after them.
    pub fn file_size(&self) -> u64 {
        self.size
    }

    /// Whether the segment holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How many leading bytes of a segment are intact records, by the recovery rules.
fn intact_len(path: &Path, bytes: &[u8], last: bool) -> Result<usize, SegmentError> {
    let (records, end) = record::scan(bytes);
    let valid = records.last().map_or(0, |r| r.offset + record::HEADER_LEN + r.payload.len());
    let corrupt = |offset: usize, reason| SegmentError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    match end {
        ScanEnd::Clean => Ok(bytes.len()),
        ScanEnd::Torn { offset } if last => Ok(offset),
        ScanEnd::Torn { offset } => Err(corrupt(
            offset,
            CorruptRecord::InvalidHeader("a sealed segment ends inside a record"),
        )),
        ScanEnd::Corrupt { offset, .. } if last && is_torn_write(bytes, &records, offset) => {
            Ok(valid)
        }
        ScanEnd::Corrupt { offset, reason } => Err(corrupt(offset, reason)),
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&byte| byte == 0)
}

/// Whether the damaged record at `offset` of the last segment is what a crash in the middle
/// of the last batch leaves (a torn write), rather than a durable record damaged later.
///
/// A batch is one `write` then one `fdatasync`, and the next batch is written only once that
/// sync returned: only the last batch can be torn. Within it, a power cut may have kept any
/// of its sectors, in any order, so a hole (zeros or garbage) may come before intact records
/// of the same batch. Every batch starts with a batch-start record (`before` holds the intact
/// records before the damage, from the segment's start), so the damage is torn exactly when
/// no intact batch start follows it: one that did would be a batch written after the damaged
/// one was synced.
///
/// A segment whose first record is not a batch start was written before batches were
/// marked; there the damaged record must be the last record of all.
fn is_torn_write(bytes: &[u8], before: &[record::ScannedRecord<'_>], offset: usize) -> bool {
    let marked = before.first().is_none_or(|first| first.kind == RecordKind::BatchStart);
    !intact_record_after(bytes, offset, |kind| !marked || kind == RecordKind::BatchStart)
}

/// Whether an intact record of a `wanted` kind starts anywhere after `offset`. A record's
/// header holds a non-zero kind byte, so none starts in a tail of zeros (room reserved for
/// appends), which is not searched.
fn intact_record_after(bytes: &[u8], offset: usize, wanted: impl Fn(RecordKind) -> bool) -> bool {
    let last_non_zero = bytes.iter().rposition(|&byte| byte != 0).unwrap_or(0);
    (offset + 1..=last_non_zero).any(|at| {
        matches!(record::decode(&bytes[at..]), Ok(Decoded::Record { kind, .. }) if wanted(kind))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::StdVfs;

    fn records(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for payload in payloads {
            record::encode(RecordKind::Entry, payload, &mut buf);
        }
        buf
    }

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    const LAST: OpenMode = OpenMode { last: true, repair: false };
    const SEALED: OpenMode = OpenMode { last: false, repair: false };

    #[test]
    fn appended_records_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.seg");
        let mut segment = Segment::create(&StdVfs, &path).unwrap();
        let bytes = records(&[b"a", b"bb", b"ccc"]);
        segment.append(&bytes, 0).unwrap();
        segment.sync().unwrap();
        let (reopened, read, recovery) = Segment::open(&StdVfs, &path, LAST).unwrap();
        assert_eq!(
            (read, recovery, reopened.len()),
            (bytes.clone(), SegmentRecovery::default(), bytes.len() as u64)
        );
    }

    /// A crash can cut the last segment at any byte: it always opens, at an intact prefix,
    /// and the torn bytes are gone from the file.
    #[test]
    fn last_segment_cut_at_every_byte_opens_at_an_intact_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = records(&[b"first", b"second", &[9; 100], b"last"]);
        let (all, _) = record::scan(&bytes);
        for cut in 0..=bytes.len() {
            let path = dir.path().join(format!("cut-{cut}.seg"));
            write(&path, &bytes[..cut]);
            let (segment, read, recovery) = Segment::open(&StdVfs, &path, LAST).unwrap();
            let (kept, end) = record::scan(&read);
            assert_eq!(end, ScanEnd::Clean, "cut at {cut}");
            assert_eq!(kept, all[..kept.len()], "cut at {cut}");
            assert_eq!(recovery.torn_bytes + segment.len(), cut as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), segment.len());
        }
    }

    /// Room reserved ahead of the appends reads back as free space, not as a torn write:
    /// opening keeps it, appends go on in it, and sealing gives it back.
    #[test]
    fn room_reserved_after_the_records_is_kept_and_given_back_when_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.seg");
        let mut segment = Segment::create(&StdVfs, &path).unwrap();
        let first = records(&[b"a", b"bb"]);
        segment.append(&first, 1000).unwrap();
        segment.sync().unwrap();
        let size = first.len() as u64 + 1000;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
        let (mut reopened, read, recovery) = Segment::open(&StdVfs, &path, LAST).unwrap();
        assert_eq!((read, recovery), (first.clone(), SegmentRecovery::default()));
        assert_eq!((reopened.len(), reopened.file_size()), (first.len() as u64, size));
        let second = records(&[b"ccc"]);
        reopened.append(&second, 1000).unwrap();
        reopened.sync().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "the append fit the room");
        let (mut sealed, read, _) = Segment::open(&StdVfs, &path, LAST).unwrap();
        assert_eq!(read, [first, second].concat());
        sealed.seal().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), sealed.len());
        assert!(Segment::open(&StdVfs, &path, SEALED).is_ok());
    }

    /// A crash inside reserved room leaves a partial record followed by zeros: the segment
    /// opens at an intact prefix, and what follows it in the file is zeros only.
    #[test]
    fn a_cut_followed_by_reserved_zeros_opens_at_an_intact_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = records(&[b"first", b"second", &[9; 100], b"last"]);
        let (all, _) = record::scan(&bytes);
        for cut in 0..=bytes.len() {
            let path = dir.path().join(format!("cut-{cut}.seg"));
            write(&path, &[&bytes[..cut], &[0; 200][..]].concat());
            let (segment, read, _) = Segment::open(&StdVfs, &path, LAST).unwrap();
            let (kept, end) = record::scan(&read);
            assert_eq!(end, ScanEnd::Clean, "cut at {cut}");
            assert_eq!(kept, all[..kept.len()], "cut at {cut}");
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(on_disk.len() as u64, segment.file_size(), "cut at {cut}");
            assert!(all_zero(&on_disk[read.len()..]), "cut at {cut}: garbage kept");
        }
    }

    /// A non-zero byte in the reserved room, with no intact record after it, is what a torn
    /// write leaves: it is cut away and reported. In a sealed segment, zeros after the
    /// records are damage: sealing gave the room back, so they cannot be there.
    #[test]
    fn garbage_in_the_reserved_room_is_a_torn_tail_and_zeros_in_a_sealed_segment_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = records(&[b"first", b"second"]);
        let path = dir.path().join("garbage.seg");
        let mut room = vec![0; 300];
        room[150] = 7;
        write(&path, &[&bytes[..], &room[..]].concat());
        let (segment, read, recovery) = Segment::open(&StdVfs, &path, LAST).unwrap();
        assert_eq!((read, segment.file_size()), (bytes.clone(), bytes.len() as u64));
        assert_eq!(recovery.torn_bytes, 300);
        write(&path, &[&bytes[..], &[0; 300][..]].concat());
        assert!(Segment::open(&StdVfs, &path, SEALED).is_err());
    }

    /// Flips every bit of `bytes` (batches) in turn. In the last batch of the last segment
    /// the damage cannot be told from a torn write (a crash can leave a full-length record
    /// with garbage in it), so that batch is cut from the damage on and the cut reported;
    /// anywhere else, and in any sealed segment, opening fails with the offset.
    fn every_flipped_bit_is_cut_in_the_last_batch_and_refused_elsewhere(bytes: &[u8]) {
        let (all, _) = record::scan(bytes);
        let last_start =
            all.iter().rev().find(|r| r.kind == RecordKind::BatchStart).unwrap().offset;
        let dir = tempfile::tempdir().unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let path = dir.path().join(format!("bit-{bit}.seg"));
            write(&path, &damaged);
            let opened = Segment::open(&StdVfs, &path, LAST);
            if bit / 8 >= last_start {
                let (_, read, recovery) = opened.unwrap();
                assert_eq!(read, bytes[..read.len()], "bit {bit}");
                assert!(read.len() >= last_start && recovery.torn_bytes > 0, "bit {bit}");
            } else {
                let error = opened.err().expect("damage in the middle must not open");
                assert!(matches!(error, SegmentError::Corrupt { .. }), "bit {bit}: {error}");
            }
            write(&path, &damaged);
            assert!(
                Segment::open(&StdVfs, &path, SEALED).is_err(),
                "bit {bit} in a sealed segment"
            );
        }
    }

    /// A flipped bit is never ignored: cut in the last batch (a torn write, as far as anyone
    /// can tell), refused anywhere else, with batches of one record each.
    #[test]
    fn flipped_bits_are_corruption_unless_in_the_torn_tail() {
        let bytes = batches(&[&[b"first"], &[b"second"], &[b"third"]]);
        every_flipped_bit_is_cut_in_the_last_batch_and_refused_elsewhere(&bytes);
    }

    /// A segment that does not start with a batch start was not framed in batches: there a
    /// damaged record is a torn write only if no intact record at all follows it.
    #[test]
    fn records_without_batch_starts_keep_the_last_record_rule() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = records(&[b"first", b"second", b"third"]);
        let (all, _) = record::scan(&bytes);
        let path = dir.path().join("unbatched.seg");
        let mut damaged = bytes.clone();
        damaged[all[1].offset + record::HEADER_LEN] ^= 1;
        write(&path, &damaged);
        assert!(Segment::open(&StdVfs, &path, LAST).is_err(), "an intact record follows");
        let mut damaged = bytes.clone();
        damaged[all[2].offset + record::HEADER_LEN] ^= 1;
        write(&path, &damaged);
        let (_, read, _) = Segment::open(&StdVfs, &path, LAST).unwrap();
        assert_eq!(read, bytes[..all[2].offset]);
    }

    /// Records framed as the log writes them: each batch a batch start, then its records.
    fn batches(batches: &[&[&[u8]]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for batch in batches {
            record::encode(RecordKind::BatchStart, &[], &mut buf);
            buf.extend(records(batch));
        }
        buf
    }

    /// A power cut while the last batch is written back may keep any of its sectors, in any
    /// order: holes of zeros or garbage with intact records of the same batch after them.
    /// The segment always opens, with the durable batches and an intact prefix of the last.
    #[test]
    fn a_last_batch_torn_anywhere_opens_at_an_intact_prefix() {
        let durable = batches(&[&[b"one", b"two"], &[&[5; 40]]]);
        let last = batches(&[&[b"three", &[6; 30], b"four", &[7; 50], b"five"]]);
        let whole = [&durable[..], &last[..]].concat();
        let (all, _) = record::scan(&whole);
        let path = Path::new("/log/1.seg");
        let mut holes_before_intact_records = 0;
        for seed in 0..500 {
            let vfs = crate::vfs::FakeVfs::new();
            vfs.set_contents(path, durable.clone());
            let file = vfs.open(path).unwrap();
            file.write_at(&last, durable.len() as u64).unwrap();
            let image = vfs.crash_torn(seed, 8);
            let on_disk = image.contents(path).unwrap();
            let (_, end) = record::scan(&on_disk);
            let hole = match end {
                ScanEnd::Corrupt { offset, .. } => Some(offset),
                _ => None,
            };
            if hole.is_some_and(|hole| intact_record_after(&on_disk, hole, |_| true)) {
                holes_before_intact_records += 1;
            }
            let (_, read, _) = Segment::open(&image, path, LAST)
                .unwrap_or_else(|error| panic!("seed {seed}: a torn last batch refused: {error}"));
            let (kept, end) = record::scan(&read);
            assert_eq!(end, ScanEnd::Clean, "seed {seed}");
            assert!(read.len() >= durable.len(), "seed {seed}: a durable batch was cut");
            assert_eq!(kept, all[..kept.len()], "seed {seed}");
        }
        assert!(holes_before_intact_records > 50, "{holes_before_intact_records} holes");
    }

    /// Damage in a batch that a later batch follows is damage to durable records, whatever
    /// the bytes after it: the later batch was written only after this one was synced. Here
    /// with batches of several records, so that intact records follow damage in a batch.
    #[test]
    fn damage_in_a_batch_followed_by_another_batch_is_refused() {
        let bytes = batches(&[&[b"one", b"two"], &[&[5; 40], b"three"], &[b"four"]]);
        every_flipped_bit_is_cut_in_the_last_batch_and_refused_elsewhere(&bytes);
    }

    /// A power cut during a cut, after any of its syncs, with any mix of the sectors the
    /// unsynced step changed: the segment always opens, at a prefix of the old records that
    /// keeps everything before the cut point. (Cut at once instead of batch by batch, a hole
    /// at the cut point in front of the old batches is refused as damage.)
    #[test]
    fn a_cut_torn_at_any_step_opens_at_a_prefix_of_the_old_records() {
        let whole = batches(&[&[b"one", b"two"], &[b"three", &[3; 40]], &[b"four"], &[b"five"]]);
        let (all, _) = record::scan(&whole);
        let cut = all[4].offset as u64; // inside the second batch, at "three"
        let path = Path::new("/log/1.seg");
        for syncs_ok in 0..4 {
            for seed in 0..200 {
                let vfs = crate::vfs::FakeVfs::new();
                vfs.set_contents(path, whole.clone());
                let (mut segment, _, _) = Segment::open(&vfs, path, LAST).unwrap();
                vfs.fail_syncs_after(syncs_ok);
                let _ = segment.cut_back_to(cut);
                let image = vfs.crash_torn(seed, 8);
                let case = format!("{syncs_ok} syncs, seed {seed}");
                let (_, read, _) = Segment::open(&image, path, LAST)
                    .unwrap_or_else(|error| panic!("{case}: refused: {error}"));
                assert!(read.len() as u64 >= cut, "{case}: cut below the cut point");
                assert_eq!(read, whole[..read.len()], "{case}");
            }
        }
    }

    /// A sealed segment (not the last) must be whole: even a cut tail is an error.
    #[test]
    fn a_sealed_segment_must_be_whole() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = records(&[b"first", b"second"]);
        let path = dir.path().join("sealed.seg");
        write(&path, &bytes[..bytes.len() - 1]);
        let error = Segment::open(&StdVfs, &path, SEALED).err().unwrap();
        assert!(error.to_string().contains("sealed.seg"), "{error}");
    }
}
