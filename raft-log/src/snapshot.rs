//! Snapshot files: the state machine's bytes at an index, with the snapshot's metadata and a
//! checksum, installed atomically (paper §7).
//!
//! A snapshot is written to `<index>-<term>.<n>.snap.tmp`, synced, renamed to
//! `<index>-<term>.snap`, and the directory synced; only then are older snapshot files
//! given up (`given_up.rs`). A crash at any step leaves either the old snapshot or the new
//! one whole, plus at worst a temporary file, which the next open removes.
//!
//! Two snapshots may be written at once: one the node took of its own state and one received
//! from a leader, each on a thread of its own. So a temporary file is its writer's alone
//! until the next open: `n` tells apart two writers of the same index and term, and putting
//! one snapshot in force gives up older snapshot files but never touches another writer's
//! temporary file.
//!
//! ```text
//! magic "RLSN" | version u32 (1) | meta length u32 | meta | data length u64 | data | CRC-32
//! meta: the snapshot's index, term and configuration, encoded as a configuration entry's
//!       payload (codec.rs)
//! CRC-32 (crc32fast) of every byte before it
//! ```

use crate::codec::{self, PayloadError};
use crate::given_up;
use crate::vfs::{remove_if_present, Vfs};
use bytes::Bytes;
use raft_core::{Entry, EntryKind, Index, SnapshotMeta, Term};
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

const MAGIC: &[u8; 4] = b"RLSN";
const VERSION: u32 = 1;
/// Snapshot files are checked in chunks of this size.
const CHUNK_BYTES: usize = 1 << 20;
const EXTENSION: &str = "snap";
const TEMP_SUFFIX: &str = ".snap.tmp";

/// Why a snapshot file could not be written or read.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// An operating-system error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is damaged: a snapshot the log relies on cannot be read back.
    #[error(
        "{path}: damaged snapshot file ({reason}); the log refuses to open. Restore the node \
         from a peer"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

/// The file name of the snapshot `meta`.
fn file_name(meta: &SnapshotMeta) -> String {
    format!("{:020}-{:020}.{EXTENSION}", meta.index.0, meta.term.0)
}

/// A checked snapshot file: its metadata, and where its data lies.
#[derive(Debug)]
pub struct SnapshotFile {
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The file.
    pub path: PathBuf,
    data_offset: u64,
    data_len: u64,
}

impl SnapshotFile {
    /// The length of the state machine's bytes.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Reads the state machine's bytes whole.
    pub fn read_data(&self, vfs: &dyn Vfs) -> Result<Vec<u8>, SnapshotError> {
        let len = usize::try_from(self.data_len)
            .map_err(|e| io_error(&self.path)(io::Error::other(e)))?;
        let mut data = vec![0; len];
        self.read_data_at(vfs, 0, &mut data)?;
        Ok(data)
    }

    /// An open handle on the state machine's bytes, independent of the log: it reads the
    /// file it was opened on even if a newer snapshot replaces it meanwhile (the name goes,
    /// the open file stays readable).
    pub fn open_data(&self, vfs: &dyn Vfs) -> Result<SnapshotData, SnapshotError> {
        let file = vfs.open(&self.path).map_err(io_error(&self.path))?;
        Ok(SnapshotData {
            file,
            data_offset: self.data_offset,
            data_len: self.data_len,
            position: 0,
        })
    }

    /// Reads `buf.len()` bytes of the state machine's bytes from `offset` (to send a snapshot
    /// in chunks). The file was checked whole when it was opened.
    pub fn read_data_at(
        &self,
        vfs: &dyn Vfs,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SnapshotError> {
        self.open_data(vfs)?.read_at(offset, buf).map_err(io_error(&self.path))
    }
}

/// A snapshot's data on an open file: read by position (to send chunks) or as a stream (to
/// restore a state machine without holding the bytes whole).
pub struct SnapshotData {
    file: Box<dyn crate::vfs::VfsFile>,
    data_offset: u64,
    data_len: u64,
    position: u64,
}

impl SnapshotData {
    /// The data's length.
    pub fn len(&self) -> u64 {
        self.data_len
    }

    /// Whether there is no data.
    pub fn is_empty(&self) -> bool {
        self.data_len == 0
    }

    /// Fills `buf` from `offset` of the data; an error past its end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= self.data_len);
        if end.is_none() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read beyond the data"));
        }
        self.file.read_exact_at(buf, self.data_offset + offset)
    }
}

impl io::Read for SnapshotData {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.data_len - self.position;
        let n = (buf.len() as u64).min(left) as usize;
        self.read_at(self.position, &mut buf[..n])?;
        self.position += n as u64;
        Ok(n)
    }
}

/// A snapshot put in force, and the older snapshot files it made useless: given up
/// (`given_up.rs`), for the caller to remove.
pub type Published = (SnapshotFile, Vec<PathBuf>);

/// Writes the snapshot `meta` with `data` durably into `dir`, then gives up older snapshot
/// files. When this returns, the snapshot survives any crash.
pub fn write(
    vfs: &dyn Vfs,
    dir: &Path,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<Published, SnapshotError> {
    write_streamed(vfs, dir, meta, &mut |out| io::Write::write_all(out, data))
}

/// As [`write`], with the data written by `fill` as a stream, so that it is never held in
/// memory whole. The data length goes in the header once `fill` returns (the file is written
/// by position); the checksum of header and data is combined from the two parts.
pub fn write_streamed(
    vfs: &dyn Vfs,
    dir: &Path,
    meta: &SnapshotMeta,
    fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
) -> Result<Published, SnapshotError> {
    write_temp(vfs, dir, meta, fill)?.publish(vfs, dir)
}

/// A snapshot written and synced under its temporary name, not yet in force: a crash now
/// leaves a temporary file that the next open removes.
#[derive(Debug)]
pub struct TempSnapshot {
    file: SnapshotFile,
    temp: PathBuf,
}

impl TempSnapshot {
    /// What the snapshot covers.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.file.meta
    }

    /// Gives the snapshot its name (durably: the directory is synced), then gives up the
    /// other snapshot files (not the temporary ones: those are their writers').
    pub fn publish(self, vfs: &dyn Vfs, dir: &Path) -> Result<Published, SnapshotError> {
        let path = &self.file.path;
        vfs.rename(&self.temp, path).map_err(io_error(path))?;
        vfs.sync_dir(dir).map_err(io_error(dir))?;
        let given_up = clear_all_but(vfs, dir, path, Leftovers::Keep)?;
        Ok((self.file, given_up))
    }

    /// Removes the temporary file (a newer snapshot took its place meanwhile).
    pub fn discard(self, vfs: &dyn Vfs) -> Result<(), SnapshotError> {
        remove_if_present(vfs, &self.temp).map_err(io_error(&self.temp))
    }
}

/// The first half of [`write_streamed`]: the file written and synced under its temporary name.
pub fn write_temp(
    vfs: &dyn Vfs,
    dir: &Path,
    meta: &SnapshotMeta,
    fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
) -> Result<TempSnapshot, SnapshotError> {
    let path = dir.join(file_name(meta));
    let writer = NEXT_WRITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = dir.join(format!("{:020}-{:020}.{writer}{TEMP_SUFFIX}", meta.index.0, meta.term.0));
    remove_if_present(vfs, &temp).map_err(io_error(&temp))?;
    let written = write_temp_file(vfs, &temp, meta, fill);
    if written.is_err() {
        let _ = remove_if_present(vfs, &temp); // best effort: the next open removes it too
    }
    let (data_offset, data_len) = written?;
    let file = SnapshotFile { meta: meta.clone(), path, data_offset, data_len };
    Ok(TempSnapshot { file, temp })
}

/// Tells apart the temporary files of snapshots written at once in this process.
static NEXT_WRITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes and syncs the snapshot file at `temp`; returns where its data lies and its length.
fn write_temp_file(
    vfs: &dyn Vfs,
    temp: &Path,
    meta: &SnapshotMeta,
    fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
) -> Result<(u64, u64), SnapshotError> {
    let meta_payload = encode_meta(meta);
    let data_offset = 4 + 4 + 4 + meta_payload.len() as u64 + 8;
    let file = vfs.create_new(temp).map_err(io_error(temp))?;
    let mut data = DataWriter { file, offset: data_offset, crc: crc32fast::Hasher::new() };
    fill(&mut data).map_err(io_error(temp))?;
    let DataWriter { file, offset: end, crc: data_crc } = data;
    let data_len = end - data_offset;
    let mut head = Vec::with_capacity(data_offset as usize);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(meta_payload.len() as u32).to_le_bytes());
    head.extend_from_slice(&meta_payload);
    head.extend_from_slice(&data_len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.combine(&data_crc);
    file.write_at(&head, 0).map_err(io_error(temp))?;
    file.write_at(&crc.finalize().to_le_bytes(), end).map_err(io_error(temp))?;
    file.sync().map_err(io_error(temp))?;
    Ok((data_offset, data_len))
}

/// Appends a snapshot's data to its file by position, checksumming it.
struct DataWriter {
    file: Box<dyn crate::vfs::VfsFile>,
    offset: u64,
    crc: crc32fast::Hasher,
}

impl io::Write for DataWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_at(buf, self.offset)?;
        self.crc.update(buf);
        self.offset += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn encode_meta(meta: &SnapshotMeta) -> Vec<u8> {
    let kind = EntryKind::Config(Box::new(meta.membership.clone()));
    let entry = Entry { term: meta.term, index: meta.index, kind, data: Bytes::new() };
    let mut payload = Vec::new();
    codec::encode_entry(&entry, &mut payload);
    payload
}

/// What [`clear_all_but`] does with the files it clears.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leftovers {
    /// At open: every temporary file is a dead writer's, and every file is removed here.
    Remove,
    /// While running: a temporary file may be a live writer's, and an older snapshot is
    /// given up, for the caller to remove away from the log's owner.
    Keep,
}

/// Clears every snapshot file in `dir` but `keep` (durably), as `leftovers` says: removed,
/// with the temporary files, or given up. Returns the files given up.
fn clear_all_but(
    vfs: &dyn Vfs,
    dir: &Path,
    keep: &Path,
    leftovers: Leftovers,
) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut cleared = false;
    let mut given_up = Vec::new();
    for path in vfs.list(dir).map_err(io_error(dir))? {
        let goes = if is_temporary_file(&path) {
            leftovers == Leftovers::Remove
        } else {
            is_snapshot_file(&path)
        };
        if !goes || path == keep {
            continue;
        }
        match leftovers {
            Leftovers::Remove => vfs.remove(&path).map_err(io_error(&path))?,
            Leftovers::Keep => {
                given_up.extend(given_up::give_up(vfs, &path).map_err(io_error(&path))?)
            }
        }
        cleared = true;
    }
    if cleared {
        vfs.sync_dir(dir).map_err(io_error(dir))?;
    }
    Ok(given_up)
}

fn is_snapshot_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == EXTENSION)
}

fn is_temporary_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.ends_with(TEMP_SUFFIX)
}

/// The newest snapshot in `dir`, checked whole; leftover temporary files and older snapshots
/// are removed. A damaged newest snapshot is an error: the log may have been compacted
/// relying on it.
pub fn open_latest(vfs: &dyn Vfs, dir: &Path) -> Result<Option<SnapshotFile>, SnapshotError> {
    let mut newest: Option<(Index, Term, PathBuf)> = None;
    for path in vfs.list(dir).map_err(io_error(dir))? {
        let Some((index, term)) = parse_name(&path) else { continue };
        if newest.as_ref().is_none_or(|(i, t, _)| (index, term) > (*i, *t)) {
            newest = Some((index, term, path));
        }
    }
    let Some((_, _, path)) = newest else {
        clear_all_but(vfs, dir, Path::new(""), Leftovers::Remove)?;
        return Ok(None);
    };
    let file = check(vfs, &path)?;
    clear_all_but(vfs, dir, &path, Leftovers::Remove)?;
    Ok(Some(file))
}

fn parse_name(path: &Path) -> Option<(Index, Term)> {
    if path.extension()? != EXTENSION {
        return None;
    }
    let (index, term) = path.file_stem()?.to_str()?.split_once('-')?;
    Some((Index(index.parse().ok()?), Term(term.parse().ok()?)))
}

/// Reads a snapshot file through, checking its layout, its checksum and that its metadata
/// matches its name.
fn check(vfs: &dyn Vfs, path: &Path) -> Result<SnapshotFile, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt { path: path.to_path_buf(), reason };
    let file = vfs.open(path).map_err(io_error(path))?;
    let len = file.size().map_err(io_error(path))?;
    let read = |offset: u64, n: u64| -> Result<Vec<u8>, SnapshotError> {
        let mut buf = vec![0; n as usize];
        file.read_exact_at(&mut buf, offset).map_err(io_error(path))?;
        Ok(buf)
    };
    let too_short = || corrupt(format!("{len} bytes is too short"));
    if len < 12 {
        return Err(too_short());
    }
    let head = read(0, 12)?;
    if &head[..4] != MAGIC || head[4..8] != VERSION.to_le_bytes() {
        return Err(corrupt("not a version-1 snapshot file".into()));
    }
    let meta_len = u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
    let data_offset = 12 + meta_len + 8;
    if len < data_offset + 4 {
        return Err(too_short());
    }
    let meta_and_len = read(12, meta_len + 8)?;
    let (meta_payload, data_len) = meta_and_len.split_at(meta_len as usize);
    let mut word = [0; 8];
    word.copy_from_slice(data_len);
    let data_len = u64::from_le_bytes(word);
    if data_offset.checked_add(data_len).and_then(|n| n.checked_add(4)) != Some(len) {
        return Err(corrupt(format!("data length {data_len} does not fit the file")));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(&meta_and_len);
    let mut offset = data_offset;
    while offset < len - 4 {
        let n = (len - 4 - offset).min(CHUNK_BYTES as u64);
        crc.update(&read(offset, n)?);
        offset += n;
    }
    let stored = read(len - 4, 4)?;
    if crc.finalize().to_le_bytes()[..] != stored[..] {
        return Err(corrupt("checksum mismatch".into()));
    }
    let meta = decode_meta(meta_payload).map_err(|e| corrupt(e.to_string()))?;
    if parse_name(path) != Some((meta.index, meta.term)) {
        return Err(corrupt(format!("holds {}@{}, not what its name says", meta.index, meta.term)));
    }
    Ok(SnapshotFile { meta, path: path.to_path_buf(), data_offset, data_len })
}

fn decode_meta(payload: &[u8]) -> Result<SnapshotMeta, PayloadError> {
    let entry = codec::decode_entry(payload)?;
    match entry.kind {
        EntryKind::Config(membership) => {
            Ok(SnapshotMeta { index: entry.index, term: entry.term, membership: *membership })
        }
        _ => Err(PayloadError::Invalid("snapshot metadata")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::FakeVfs;
    use raft_core::{Membership, NodeId};

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
        SnapshotMeta { index: Index(index), term: Term(term), membership }
    }

    #[test]
    fn a_streamed_snapshot_is_the_same_file_as_one_written_whole() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let (whole, streamed) = (FakeVfs::new(), FakeVfs::new());
        let dir = Path::new("/d");
        let (file, _) = write(&whole, dir, &meta(9, 2), &data).unwrap();
        let mut pieces = data.chunks(70_001);
        let mut fill = |out: &mut dyn io::Write| pieces.try_for_each(|p| out.write_all(p));
        let (streamed_file, _) = write_streamed(&streamed, dir, &meta(9, 2), &mut fill).unwrap();
        assert_eq!(whole.contents(&file.path), streamed.contents(&streamed_file.path));
        let mut read = Vec::new();
        io::Read::read_to_end(&mut streamed_file.open_data(&streamed).unwrap(), &mut read).unwrap();
        assert_eq!(read, data, "read back as a stream");
        assert_eq!(
            open_latest(&streamed, dir).unwrap().unwrap().read_data(&streamed).unwrap(),
            data
        );
    }

    #[test]
    fn a_snapshot_reads_back_and_replaces_the_older_one() {
        let vfs = FakeVfs::new();
        let dir = Path::new("/log");
        let (old, _) = write(&vfs, dir, &meta(10, 2), b"old state").unwrap();
        let (_, given_up) = write(&vfs, dir, &meta(20, 3), b"new state").unwrap();
        assert_eq!(given_up.len(), 1, "the older snapshot is given up");
        let name = given_up[0].to_string_lossy();
        assert!(name.starts_with(&*old.path.to_string_lossy()) && name.ends_with(".gone"));
        assert!(!vfs.list(dir).unwrap().contains(&old.path));
        vfs.remove(&given_up[0]).unwrap(); // as the log's owner does
        let latest = open_latest(&vfs, dir).unwrap().unwrap();
        assert_eq!(latest.meta, meta(20, 3));
        assert_eq!(latest.read_data(&vfs).unwrap(), b"new state");
        let mut middle = [0; 3];
        latest.read_data_at(&vfs, 4, &mut middle).unwrap();
        assert_eq!(&middle, b"sta");
        assert_eq!(vfs.list(dir).unwrap(), vec![latest.path]);
    }

    /// A crash at any point of writing a new snapshot leaves the old one or the new one, whole.
    #[test]
    fn a_crash_while_writing_leaves_one_whole_snapshot() {
        let vfs = FakeVfs::new();
        let dir = Path::new("/log");
        write(&vfs, dir, &meta(10, 2), b"old state").unwrap();
        let before = vfs.crash();
        let mut new = before.crash();
        write(&new, dir, &meta(20, 3), b"new state").unwrap();
        for image in [before.crash(), new.crash(), new.kill()] {
            let latest = open_latest(&image, dir).unwrap().unwrap();
            let data = latest.read_data(&image).unwrap();
            assert!(matches!(&data[..], b"old state" | b"new state"));
        }
        // Torn after the rename but before the data was synced cannot happen: the file is
        // synced before it is renamed. A temporary file left behind is removed at open.
        new = before.crash();
        let temp = dir.join(format!("{}.tmp", file_name(&meta(20, 3))));
        new.set_contents(&temp, b"RLSN partial".to_vec());
        assert_eq!(open_latest(&new, dir).unwrap().unwrap().meta, meta(10, 2));
        assert!(!new.list(dir).unwrap().contains(&temp));
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let vfs = FakeVfs::new();
        let dir = Path::new("/log");
        let (file, _) = write(&vfs, dir, &meta(20, 3), b"some state").unwrap();
        let bytes = vfs.contents(&file.path).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            vfs.set_contents(&file.path, damaged);
            let error = open_latest(&vfs, dir).expect_err("damage must be refused");
            assert!(error.to_string().contains("damaged snapshot"), "bit {bit}: {error}");
        }
        for cut in 0..bytes.len() {
            vfs.set_contents(&file.path, bytes[..cut].to_vec());
            assert!(open_latest(&vfs, dir).is_err(), "cut at {cut}");
        }
    }
}
