//! The vote file: the node's current term and vote, kept apart from the log so that no cut
//! of the log can take them with it (paper Figure 2: persistent state, updated on stable
//! storage before responding to RPCs).
//!
//! Why not only in the log (numbered timeline):
//!
//! 1. Node 2's newest segment holds `[hard state term 5, vote 1][entry 100][hard state term
//!    6, vote 3][entry 101]`: it voted for node 3 in term 6.
//! 2. Leader 3 of term 6 sends entries from 100 that conflict; node 2 cuts its segment before
//!    entry 100, which removes the record holding its term-6 vote, and syncs the cut.
//! 3. The process dies before the new batch (which repeats the hard state) is written.
//! 4. Node 2 restarts in term 5 with a vote for node 1, and can now vote again in term 6,
//!    for node 4: two leaders of term 6 become possible.
//!
//! The vote file is written before the log batch that needs it, and only when the term or
//! the vote changes (elections; rare), so it costs one extra `fdatasync` per election and
//! nothing per client write. The commit index stays in the log's hard-state records: it is a
//! hint the leader repeats, and losing it to a cut is harmless.
//!
//! The file holds two slots; a write goes to the slot not holding the newest value, so a torn
//! write can only damage the slot being written, and the other still holds the previous one.
//!
//! ```text
//! slot (32 bytes, at offset 0 or 32): sequence u64 | term u64 | vote u64 (0: none) |
//!                                     CRC-32 u32 of the 24 bytes before | 4 zero bytes
//! ```

use crate::vfs::{Vfs, VfsFile};
use raft_core::{NodeId, Term};
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

const SLOT_BYTES: usize = 32;
/// The file's name in the log directory.
pub const FILE_NAME: &str = "vote";

/// Why the vote file could not be read or written.
#[derive(Debug, Error)]
pub enum VoteError {
    /// An operating-system error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Neither slot is intact: the term and vote are lost, and the node must not vote.
    #[error(
        "{path}: damaged vote file (no intact slot); the log refuses to open. Restore the node \
         from a peer"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
}

/// A term and the vote cast in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vote {
    /// The current term.
    pub term: Term,
    /// Whom this node voted for in `term`.
    pub vote: Option<NodeId>,
}

/// The open vote file.
pub struct VoteFile {
    path: PathBuf,
    file: Box<dyn VfsFile>,
    /// The newest intact slot's sequence number and value.
    sequence: u64,
    current: Vote,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> VoteError + '_ {
    move |source| VoteError::Io { path: path.to_path_buf(), source }
}

fn encode_slot(sequence: u64, vote: Vote) -> [u8; SLOT_BYTES] {
    let mut slot = [0; SLOT_BYTES];
    slot[..8].copy_from_slice(&sequence.to_le_bytes());
    slot[8..16].copy_from_slice(&vote.term.0.to_le_bytes());
    slot[16..24].copy_from_slice(&vote.vote.map_or(0, |id| id.0).to_le_bytes());
    let crc = crc32fast::hash(&slot[..24]);
    slot[24..28].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// The slot's sequence number and value, if it is intact.
fn decode_slot(slot: &[u8]) -> Option<(u64, Vote)> {
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(slot.get(at..at + 8)?);
        Some(u64::from_le_bytes(bytes))
    };
    let crc = u32::from_le_bytes(slot.get(24..28)?.try_into().ok()?);
    if crc32fast::hash(&slot[..24]) != crc || word(8)? > Term::MAX.0 {
        return None;
    }
    let vote =
        Vote { term: Term(word(8)?), vote: Some(word(16)?).filter(|&id| id != 0).map(NodeId) };
    Some((word(0)?, vote))
}

impl VoteFile {
    /// Opens the vote file in `dir`, creating it (durably, holding term 0 and no vote) if
    /// `create` and it is missing. `Ok(None)` if it is missing and not to be created.
    pub fn open(vfs: &dyn Vfs, dir: &Path, create: bool) -> Result<Option<VoteFile>, VoteError> {
        let path = dir.join(FILE_NAME);
        let file = match vfs.open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound && create => {
                return VoteFile::create(vfs, dir, path).map(Some);
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&path)(error)),
        };
        let bytes = file.read_all().map_err(io_error(&path))?;
        let slots = [0, SLOT_BYTES].map(|at| bytes.get(at..at + SLOT_BYTES).and_then(decode_slot));
        let newest = slots.into_iter().flatten().max_by_key(|(sequence, _)| *sequence);
        let Some((sequence, current)) = newest else {
            return Err(VoteError::Corrupt { path });
        };
        Ok(Some(VoteFile { path, file, sequence, current }))
    }

    /// Creates the file at `path` holding term 0 and no vote, durably (file and directory).
    fn create(vfs: &dyn Vfs, dir: &Path, path: PathBuf) -> Result<VoteFile, VoteError> {
        let file = vfs.create_new(&path).map_err(io_error(&path))?;
        let mut both = encode_slot(0, Vote::default()).to_vec();
        both.extend_from_slice(&[0; SLOT_BYTES]);
        file.write_at(&both, 0).map_err(io_error(&path))?;
        file.sync().map_err(io_error(&path))?;
        vfs.sync_dir(dir).map_err(io_error(dir))?;
        Ok(VoteFile { path, file, sequence: 0, current: Vote::default() })
    }

    /// The durable term and vote.
    pub fn current(&self) -> Vote {
        self.current
    }

    /// Makes `vote` durable (one write, one `fdatasync`) in the slot not holding the current
    /// value. Nothing is written if it is unchanged.
    pub fn save(&mut self, vote: Vote) -> Result<(), VoteError> {
        if vote == self.current {
            return Ok(());
        }
        let sequence = self.sequence + 1;
        let offset = (sequence % 2) * SLOT_BYTES as u64;
        self.file.write_at(&encode_slot(sequence, vote), offset).map_err(io_error(&self.path))?;
        self.file.sync().map_err(io_error(&self.path))?;
        (self.sequence, self.current) = (sequence, vote);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::FakeVfs;

    fn vote(term: u64, id: u64) -> Vote {
        Vote { term: Term(term), vote: Some(NodeId(id)) }
    }

    #[test]
    fn the_newest_vote_survives_a_crash() {
        let vfs = FakeVfs::new();
        let dir = Path::new("/log");
        let mut file = VoteFile::open(&vfs, dir, true).unwrap().unwrap();
        for term in 1..=5 {
            file.save(vote(term, term % 3 + 1)).unwrap();
            let reopened = VoteFile::open(&vfs.crash(), dir, false).unwrap().unwrap();
            assert_eq!(reopened.current(), vote(term, term % 3 + 1));
        }
    }

    /// A write torn at any byte leaves either the old or the new value, never garbage.
    #[test]
    fn a_torn_write_keeps_the_previous_value() {
        let vfs = FakeVfs::new();
        let dir = Path::new("/log");
        let mut file = VoteFile::open(&vfs, dir, true).unwrap().unwrap();
        file.save(vote(1, 1)).unwrap();
        file.save(vote(2, 2)).unwrap();
        file.save(vote(3, 3)).unwrap(); // into the second slot: bytes 32..64
        let after = vfs.contents(&dir.join(FILE_NAME)).unwrap();
        for cut in SLOT_BYTES..=2 * SLOT_BYTES {
            for garbage in [0u8, 0xff] {
                let mut torn = after[..cut].to_vec();
                torn.resize(2 * SLOT_BYTES, garbage);
                vfs.set_contents(&dir.join(FILE_NAME), torn);
                let value = VoteFile::open(&vfs, dir, false).unwrap().unwrap().current();
                assert!(value == vote(2, 2) || value == vote(3, 3), "cut {cut}: {value:?}");
            }
        }
    }

    #[test]
    fn a_file_with_no_intact_slot_is_refused() {
        let vfs = FakeVfs::new();
        let dir = Path::new("/log");
        VoteFile::open(&vfs, dir, true).unwrap();
        vfs.set_contents(&dir.join(FILE_NAME), vec![7; 64]);
        let error = VoteFile::open(&vfs, dir, false).err().unwrap();
        assert!(error.to_string().contains("damaged vote file"), "{error}");
    }
}
