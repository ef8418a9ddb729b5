//! The index file of a sealed segment: where each entry's record starts, its term and its
//! payload length, plus the last hard state in the segment, under one checksum. Opening the
//! log maps these files instead of scanning the segments they describe.
//!
//! An index is a cache: it is written once, when its segment is sealed (temporary name,
//! rename; not synced), and it is never the only copy of anything. Opening the log uses it
//! only if its checksum holds and it describes the segment file as it is (same first index,
//! same length); otherwise the segment is scanned and the index written again. A crash that
//! leaves a torn or empty index costs a scan, never an entry.
//!
//! ```text
//! offset  size  field (little-endian)
//!      0     4  magic "RLIX"
//!      4     4  version (1)
//!      8     8  first index the segment holds
//!     16     8  segment length in bytes
//!     24     8  entry count n
//!     32     1  1 if a hard state follows, else 0; then 7 zero bytes
//!     40    24  hard state: term, vote (0: none), commit
//!     64  20*n  per entry: term u64, record offset u64, payload length u32
//! 64+20n     4  CRC-32 (crc32fast) of every byte before it
//! ```

use crate::record;
use crate::vfs::MappedBytes;
use raft_core::{HardState, Index, NodeId, Term};
use std::borrow::Cow;
use thiserror::Error;

const MAGIC: &[u8; 4] = b"RLIX";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 20;
const CRC_LEN: usize = 4;

/// Where one entry's record is in its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The entry's term.
    pub term: Term,
    /// Where its record starts in the segment.
    pub offset: u64,
    /// The length of its payload.
    pub payload_len: u32,
}

impl Location {
    /// The byte just past the entry's record.
    pub fn end(&self) -> u64 {
        self.offset + record::HEADER_LEN as u64 + u64::from(self.payload_len)
    }
}

/// What an index says about its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    /// The index of the segment's first entry.
    pub first: Index,
    /// The segment's length in bytes.
    pub segment_len: u64,
    /// How many entries it holds.
    pub count: u64,
    /// The last hard state recorded in the segment.
    pub hard_state: Option<HardState>,
}

/// Why an index file is not usable (the log then rebuilds it from its segment).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IndexError {
    /// Too short, or its length does not match its entry count.
    #[error("index length {len} does not fit its header")]
    Length {
        /// The file's length.
        len: usize,
    },
    /// Not an index file, or another version.
    #[error("not a version-{VERSION} index file")]
    Magic,
    /// The checksum does not match.
    #[error("index checksum mismatch")]
    Checksum,
    /// An entry's location is impossible for its segment.
    #[error("index entry {position}: {reason}")]
    Entry {
        /// Which entry (0-based).
        position: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Appends the index file for a segment to `out`.
pub fn encode(header: &IndexHeader, entries: &[Location], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for value in [header.first.0, header.segment_len, entries.len() as u64] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    let hard_state = header.hard_state.unwrap_or_default();
    out.push(u8::from(header.hard_state.is_some()));
    out.extend_from_slice(&[0; 7]);
    let vote = hard_state.vote.map_or(0, |id| id.0);
    for value in [hard_state.term.0, vote, hard_state.commit.0] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    for at in entries {
        out.extend_from_slice(&at.term.0.to_le_bytes());
        out.extend_from_slice(&at.offset.to_le_bytes());
        out.extend_from_slice(&at.payload_len.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Checks an index file whole (length, checksum, every location) and returns its header.
/// Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<IndexHeader, IndexError> {
    let length = IndexError::Length { len: bytes.len() };
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(length);
    }
    if &bytes[..4] != MAGIC || u32_at(bytes, 4) != VERSION {
        return Err(IndexError::Magic);
    }
    let count = u64_at(bytes, 24);
    let expected = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(ENTRY_LEN))
        .and_then(|n| n.checked_add(HEADER_LEN + CRC_LEN));
    if expected != Some(bytes.len()) {
        return Err(length);
    }
    let body = bytes.len() - CRC_LEN;
    if crc32fast::hash(&bytes[..body]) != u32_at(bytes, body) {
        return Err(IndexError::Checksum);
    }
    let header = IndexHeader {
        first: Index(u64_at(bytes, 8)),
        segment_len: u64_at(bytes, 16),
        count,
        hard_state: decode_hard_state(bytes)?,
    };
    check_locations(bytes, &header)?;
    Ok(header)
}

fn decode_hard_state(bytes: &[u8]) -> Result<Option<HardState>, IndexError> {
    let bad = |reason| IndexError::Entry { position: 0, reason };
    match bytes[32] {
        0 => Ok(None),
        1 => {
            let term = Term(u64_at(bytes, 40));
            let vote = Some(u64_at(bytes, 48)).filter(|&id| id != 0).map(NodeId);
            let commit = Index(u64_at(bytes, 56));
            if term > Term::MAX || commit > Index::MAX {
                return Err(bad("hard state out of range"));
            }
            Ok(Some(HardState { term, vote, commit }))
        }
        _ => Err(bad("hard-state flag")),
    }
}

/// Locations follow each other inside the segment, terms never decrease, indexes fit.
fn check_locations(bytes: &[u8], header: &IndexHeader) -> Result<(), IndexError> {
    let last = header.first.0.checked_add(header.count);
    if header.first == Index(0) || last.is_none_or(|last| Index(last) > Index::MAX) {
        return Err(IndexError::Entry { position: 0, reason: "first index out of range" });
    }
    let mut end = 0;
    let mut term = Term(0);
    for position in 0..header.count {
        let at = location_at(bytes, position as usize);
        let bad = |reason| IndexError::Entry { position, reason };
        if at.offset < end {
            return Err(bad("record overlaps the one before"));
        }
        if at.payload_len > record::PAYLOAD_LEN_MAX || at.end() > header.segment_len {
            return Err(bad("record beyond the segment"));
        }
        if at.term < term || at.term > Term::MAX {
            return Err(bad("term out of order"));
        }
        (end, term) = (at.end(), at.term);
    }
    Ok(())
}

/// The location at `position`. The bytes must have passed [`decode`] and
/// `position < header.count`.
fn location_at(bytes: &[u8], position: usize) -> Location {
    let at = HEADER_LEN + position * ENTRY_LEN;
    Location {
        term: Term(u64_at(bytes, at)),
        offset: u64_at(bytes, at + 8),
        payload_len: u32_at(bytes, at + 16),
    }
}

/// The entry locations of one sealed segment.
pub enum SegmentIndex {
    /// Read from an index file, which stays mapped.
    Mapped {
        /// The file's bytes. Invariant: they passed [`decode`], which gave `header`.
        bytes: MappedBytes,
        /// What they say.
        header: IndexHeader,
    },
    /// Built in memory (the newest segment, or an index that could not be written).
    Memory(Vec<Location>),
}

impl SegmentIndex {
    /// Checks `bytes` and keeps them as the index.
    pub fn mapped(bytes: MappedBytes) -> Result<SegmentIndex, IndexError> {
        let header = decode((*bytes).as_ref())?;
        Ok(SegmentIndex::Mapped { bytes, header })
    }

    /// How many entries the segment holds.
    pub fn len(&self) -> usize {
        match self {
            SegmentIndex::Mapped { header, .. } => header.count as usize,
            SegmentIndex::Memory(locations) => locations.len(),
        }
    }

    /// Whether the segment holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every location, in order (borrowed when they are in memory).
    pub fn locations(&self) -> Cow<'_, [Location]> {
        match self {
            SegmentIndex::Mapped { .. } => {
                Cow::Owned((0..self.len()).map_while(|i| self.get(i)).collect())
            }
            SegmentIndex::Memory(locations) => Cow::Borrowed(locations),
        }
    }

    /// Keeps the first `len` locations, in memory (the segment is being cut and becomes the
    /// newest).
    pub fn truncate(&mut self, len: usize) {
        if let SegmentIndex::Mapped { .. } = self {
            *self = SegmentIndex::Memory(self.locations().into_owned());
        }
        if let SegmentIndex::Memory(locations) = self {
            locations.truncate(len);
        }
    }

    /// The location of the segment's `position`th entry, if it holds that many.
    pub fn get(&self, position: usize) -> Option<Location> {
        match self {
            SegmentIndex::Mapped { bytes, header } => (position < header.count as usize)
                .then(|| location_at((**bytes).as_ref(), position)),
            SegmentIndex::Memory(locations) => locations.get(position).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (IndexHeader, Vec<Location>, Vec<u8>) {
        let locations: Vec<Location> = (0..5u32)
            .map(|i| Location {
                term: Term(1 + u64::from(i / 2)),
                offset: 40 + u64::from(i) * 30,
                payload_len: 17,
            })
            .collect();
        let hard_state = HardState { term: Term(3), vote: Some(NodeId(2)), commit: Index(9) };
        let header = IndexHeader {
            first: Index(7),
            segment_len: 40 + 5 * 30,
            count: 5,
            hard_state: Some(hard_state),
        };
        let mut bytes = Vec::new();
        encode(&header, &locations, &mut bytes);
        (header, locations, bytes)
    }

    #[test]
    fn an_index_reads_back() {
        let (header, locations, bytes) = sample();
        assert_eq!(decode(&bytes), Ok(header));
        let index = SegmentIndex::mapped(Box::new(bytes)).unwrap();
        let read: Vec<_> = (0..index.len()).map_while(|i| index.get(i)).collect();
        assert_eq!(read, locations);
        assert_eq!(index.get(5), None);
    }

    /// Every flipped bit and every cut is refused: an index is used only when it is intact.
    #[test]
    fn any_damage_is_refused() {
        let (_, _, bytes) = sample();
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_err(), "bit {bit}");
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A well-formed index with impossible locations (checksum recomputed) is refused too.
    #[test]
    fn impossible_locations_are_refused() {
        let (header, locations, _) = sample();
        let mut overlapping = locations.clone();
        overlapping[3].offset = overlapping[2].offset;
        let mut beyond = locations.clone();
        beyond[4].payload_len = 1000;
        let mut older = locations;
        older[4].term = Term(1);
        for bad in [overlapping, beyond, older] {
            let mut bytes = Vec::new();
            encode(&header, &bad, &mut bytes);
            assert!(matches!(decode(&bytes), Err(IndexError::Entry { .. })), "{bad:?}");
        }
    }
}
