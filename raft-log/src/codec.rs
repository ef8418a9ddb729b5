//! Payloads of log records: entries and the hard state (byte layout in `raft-log/FORMAT.md`).
//! All integers are little-endian. Decoding checks every length and never panics.
//!
//! ```text
//! entry:       term u64 | index u64 | kind u8 | body
//!              kind 0 normal: body = the data
//!              kind 1 noop:   body empty
//!              kind 2 config: body = voters | voters_outgoing | learners,
//!                             each a u32 count then that many u64 node ids
//! hard state:  term u64 | vote u64 (0: none) | commit u64
//! ```

use bytes::Bytes;
use raft_core::{Entry, EntryKind, HardState, Index, Membership, NodeId, Term};
use std::collections::BTreeSet;
use thiserror::Error;

/// Why a record's payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// The payload ends before a field it should hold.
    #[error("payload too short for its {0}")]
    Truncated(&'static str),
    /// A field holds a value no writer produces.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

const KIND_NORMAL: u8 = 0;
const KIND_NOOP: u8 = 1;
const KIND_CONFIG: u8 = 2;

/// The length of the payload [`encode_entry`] writes for `entry`.
pub fn entry_payload_len(entry: &Entry) -> usize {
    let header = 8 + 8 + 1;
    header
        + match &entry.kind {
            EntryKind::Normal => entry.data.len(),
            EntryKind::Noop => 0,
            EntryKind::Config(membership) => {
                let sets = [&membership.voters, &membership.voters_outgoing, &membership.learners];
                sets.iter().map(|set| 4 + 8 * set.len()).sum()
            }
        }
}

/// Appends the payload of `entry` to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(&entry.term.0.to_le_bytes());
    out.extend_from_slice(&entry.index.0.to_le_bytes());
    match &entry.kind {
        EntryKind::Normal => {
            out.push(KIND_NORMAL);
            out.extend_from_slice(&entry.data);
        }
        EntryKind::Noop => out.push(KIND_NOOP),
        EntryKind::Config(membership) => {
            out.push(KIND_CONFIG);
            for set in [&membership.voters, &membership.voters_outgoing, &membership.learners] {
                out.extend_from_slice(&(set.len() as u32).to_le_bytes());
                for id in set {
                    out.extend_from_slice(&id.0.to_le_bytes());
                }
            }
        }
    }
}

/// Decodes an entry payload (a normal entry's data is copied out of it).
pub fn decode_entry(payload: &[u8]) -> Result<Entry, PayloadError> {
    decode_entry_with(payload, Bytes::copy_from_slice)
}

/// Decodes an entry payload; a normal entry's data shares the payload's buffer (no copy).
pub fn decode_entry_shared(payload: &Bytes) -> Result<Entry, PayloadError> {
    decode_entry_with(payload, |data| payload.slice_ref(data))
}

/// Decodes an entry payload, turning a normal entry's data (a slice of `payload`) into
/// `Bytes` with `data_of`.
fn decode_entry_with(
    payload: &[u8],
    data_of: impl FnOnce(&[u8]) -> Bytes,
) -> Result<Entry, PayloadError> {
    let mut reader = Reader(payload);
    let term = Term(reader.u64("term")?);
    let index = Index(reader.u64("index")?);
    if term > Term::MAX || index > Index::MAX {
        return Err(PayloadError::Invalid("term or index beyond what the engine accepts"));
    }
    let kind = match reader.u8("entry kind")? {
        KIND_NORMAL => {
            let data = data_of(reader.rest());
            return Ok(Entry { term, index, kind: EntryKind::Normal, data });
        }
        KIND_NOOP => EntryKind::Noop,
        KIND_CONFIG => EntryKind::Config(Box::new(Membership {
            voters: reader.ids("voters")?,
            voters_outgoing: reader.ids("outgoing voters")?,
            learners: reader.ids("learners")?,
        })),
        _ => return Err(PayloadError::Invalid("entry kind")),
    };
    if !reader.rest().is_empty() {
        return Err(PayloadError::Invalid("trailing bytes after the entry"));
    }
    Ok(Entry { term, index, kind, data: Bytes::new() })
}

/// Appends the payload of `hard_state` to `out`.
pub fn encode_hard_state(hard_state: &HardState, out: &mut Vec<u8>) {
    out.extend_from_slice(&hard_state.term.0.to_le_bytes());
    out.extend_from_slice(&hard_state.vote.map_or(0, |v| v.0).to_le_bytes());
    out.extend_from_slice(&hard_state.commit.0.to_le_bytes());
}

/// Decodes a hard-state payload.
pub fn decode_hard_state(payload: &[u8]) -> Result<HardState, PayloadError> {
    let mut reader = Reader(payload);
    let term = Term(reader.u64("term")?);
    let vote = reader.u64("vote")?;
    let commit = Index(reader.u64("commit")?);
    if term > Term::MAX || commit > Index::MAX {
        return Err(PayloadError::Invalid("term or commit beyond what the engine accepts"));
    }
    if !reader.rest().is_empty() {
        return Err(PayloadError::Invalid("trailing bytes after the hard state"));
    }
    Ok(HardState { term, vote: (vote != 0).then_some(NodeId(vote)), commit })
}

/// A cursor over a payload; every read checks the remaining length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PayloadError> {
        if self.0.len() < n {
            return Err(PayloadError::Truncated(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PayloadError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, PayloadError> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, PayloadError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(word))
    }

    fn ids(&mut self, what: &'static str) -> Result<BTreeSet<NodeId>, PayloadError> {
        let count = self.u32(what)? as usize;
        if count > self.0.len() / 8 {
            return Err(PayloadError::Truncated(what));
        }
        // The encoder writes a set in increasing order; anything else was not written by it,
        // so it is refused rather than silently normalised (found by the payload fuzz target).
        let mut ids = BTreeSet::new();
        for _ in 0..count {
            let id = NodeId(self.u64(what)?);
            if ids.last().is_some_and(|last| *last >= id) {
                return Err(PayloadError::Invalid("node ids not in increasing order"));
            }
            ids.insert(id);
        }
        Ok(ids)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        let entry = |kind, data: &'static [u8]| Entry {
            term: Term(3),
            index: Index(17),
            kind,
            data: Bytes::from_static(data),
        };
        let joint = Membership {
            voters: [3, 4, 5].map(NodeId).into(),
            voters_outgoing: [1, 2, 3].map(NodeId).into(),
            learners: [9].map(NodeId).into(),
        };
        vec![
            entry(EntryKind::Normal, b"set k v"),
            entry(EntryKind::Normal, b""),
            entry(EntryKind::Noop, b""),
            entry(EntryKind::Config(Box::new(joint)), b""),
        ]
    }

    #[test]
    fn entries_and_hard_states_round_trip() {
        for entry in entries() {
            let mut buf = Vec::new();
            encode_entry(&entry, &mut buf);
            assert_eq!(buf.len(), entry_payload_len(&entry), "{entry:?}");
            assert_eq!(decode_entry(&buf), Ok(entry));
        }
        for vote in [None, Some(NodeId(2))] {
            let hard_state = HardState { term: Term(9), vote, commit: Index(40) };
            let mut buf = Vec::new();
            encode_hard_state(&hard_state, &mut buf);
            assert_eq!(decode_hard_state(&buf), Ok(hard_state));
        }
    }

    /// Every prefix of a valid payload, and every byte changed, either decodes to something
    /// or is refused with an error; nothing panics.
    #[test]
    fn damaged_payloads_are_refused_not_panicked_on() {
        for entry in entries() {
            let mut buf = Vec::new();
            encode_entry(&entry, &mut buf);
            for cut in 0..buf.len() {
                let decoded = decode_entry(&buf[..cut]);
                if entry.kind != EntryKind::Normal {
                    assert!(decoded.is_err(), "a cut {entry:?} at {cut} decoded");
                }
            }
            for at in 0..buf.len() {
                let mut damaged = buf.clone();
                damaged[at] = damaged[at].wrapping_add(0x5a);
                let _ = decode_entry(&damaged);
            }
        }
        assert!(decode_hard_state(&[0; 23]).is_err());
        assert!(decode_hard_state(&[0; 25]).is_err());
        assert!(decode_hard_state(&[0xff; 24]).is_err(), "a term no engine could reach");
        assert!(decode_entry(&[0xff; 17]).is_err(), "an index no engine could reach");
    }

    /// Every payload that decodes is exactly what the encoder writes for the result: ids out
    /// of order or repeated are refused (the fuzz target's round-trip property).
    #[test]
    fn configuration_ids_must_be_in_increasing_order() {
        let config = |ids: &[u64]| {
            let mut payload = vec![0; 8];
            payload.extend_from_slice(&1u64.to_le_bytes());
            payload.push(KIND_CONFIG);
            payload.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            ids.iter().for_each(|id| payload.extend_from_slice(&id.to_le_bytes()));
            payload.extend_from_slice(&[0; 8]); // no outgoing voters, no learners
            payload
        };
        assert!(decode_entry(&config(&[1, 2, 3])).is_ok());
        assert!(decode_entry(&config(&[2, 1, 3])).is_err());
        assert!(decode_entry(&config(&[1, 1, 3])).is_err());
    }
}
