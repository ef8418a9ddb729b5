//! The record framing of a segment file (byte layout in `raft-log/FORMAT.md`).
//!
//! ```text
//! offset  size  field
//!      0     4  payload length, little-endian u32
//!      4     1  record kind
//!      5     4  header CRC: crc32 of bytes 0..5
//!      9     4  record CRC: crc32 of bytes 0..5 and the payload
//!     13     n  payload
//! ```
//!
//! The header has its own CRC so that a flipped bit in the length field is detected as
//! corruption instead of looking like a record that runs past the end of the file (which is
//! what a torn write looks like). Decoding never panics, whatever the bytes.

use thiserror::Error;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 13;

/// The largest payload a record may carry (a sanity bound for decoding garbage).
pub const PAYLOAD_LEN_MAX: u32 = 256 << 20;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A log entry.
    Entry = 1,
    /// The hard state (term, vote, commit).
    HardState = 2,
    /// The start of a batch (one `write`, one `fdatasync`); empty payload. At open it tells a
    /// torn last batch from a damaged durable one: see `segment.rs`.
    BatchStart = 3,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Entry),
            2 => Some(RecordKind::HardState),
            3 => Some(RecordKind::BatchStart),
            _ => None,
        }
    }
}

/// Why the bytes at some offset are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CorruptRecord {
    /// The header's checksum does not match.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// The record's checksum does not match its header and payload.
    #[error("record checksum mismatch")]
    RecordChecksum,
    /// The header is intact but names an unknown kind or an impossible length.
    #[error("invalid header: {0}")]
    InvalidHeader(&'static str),
}

/// One step of decoding a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete, intact record, `len` bytes long in total.
    Record {
        /// What it holds.
        kind: RecordKind,
        /// Its payload.
        payload: &'a [u8],
        /// Header plus payload.
        len: usize,
    },
    /// The buffer ends inside a record (or is empty): a torn write, or the end.
    Incomplete,
}

/// Appends the record for `payload` to `out`.
///
/// # Panics
/// If `payload` is longer than [`PAYLOAD_LEN_MAX`] (a caller bug: use [`encode_with`] for
/// payloads whose size is not known to fit).
pub fn encode(kind: RecordKind, payload: &[u8], out: &mut Vec<u8>) {
    encode_with(kind, out, |out| out.extend_from_slice(payload))
        .expect("record payload within PAYLOAD_LEN_MAX");
}

/// Appends a record whose payload `write_payload` appends to `out` in place (no payload
/// buffer, no copy), and returns the payload's length. If the payload exceeds
/// [`PAYLOAD_LEN_MAX`], `out` is left as it was and the length is the error.
pub fn encode_with(
    kind: RecordKind,
    out: &mut Vec<u8>,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> Result<u32, usize> {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    write_payload(out);
    let payload_len = out.len() - start - HEADER_LEN;
    let Some(len) = u32::try_from(payload_len).ok().filter(|&len| len <= PAYLOAD_LEN_MAX) else {
        out.truncate(start);
        return Err(payload_len);
    };
    let header = &mut out[start..start + HEADER_LEN];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4] = kind as u8;
    let header_crc = crc32fast::hash(&header[..5]);
    header[5..9].copy_from_slice(&header_crc.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start..start + 5]);
    hasher.update(&out[start + HEADER_LEN..]);
    let crc = hasher.finalize();
    out[start + 9..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, CorruptRecord> {
    let Some(header) = buf.get(..HEADER_LEN) else { return Ok(Decoded::Incomplete) };
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if crc32fast::hash(&header[..5]) != word(5) {
        return Err(CorruptRecord::HeaderChecksum);
    }
    let len = word(0);
    let kind =
        RecordKind::from_byte(header[4]).ok_or(CorruptRecord::InvalidHeader("unknown kind"))?;
    if len > PAYLOAD_LEN_MAX {
        return Err(CorruptRecord::InvalidHeader("payload length beyond the maximum"));
    }
    let total = HEADER_LEN + len as usize;
    let Some(payload) = buf.get(HEADER_LEN..total) else { return Ok(Decoded::Incomplete) };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..5]);
    hasher.update(payload);
    if hasher.finalize() != word(9) {
        return Err(CorruptRecord::RecordChecksum);
    }
    Ok(Decoded::Record { kind, payload, len: total })
}

/// How a scan of a buffer of records ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belonged to an intact record.
    Clean,
    /// The buffer ends inside a record starting at `offset` (a torn tail).
    Torn {
        /// Where the incomplete record starts.
        offset: usize,
    },
    /// The record at `offset` is damaged.
    Corrupt {
        /// Where the damaged record starts.
        offset: usize,
        /// What is wrong with it.
        reason: CorruptRecord,
    },
}

/// An intact record found by [`scan`].
#[derive(Debug, PartialEq, Eq)]
pub struct ScannedRecord<'a> {
    /// What it holds.
    pub kind: RecordKind,
    /// Its payload.
    pub payload: &'a [u8],
    /// Where it starts in the buffer.
    pub offset: usize,
}

/// Decodes records from the start of `buf` until the end or the first bad record. Returns
/// the intact records and how the scan ended.
pub fn scan(buf: &[u8]) -> (Vec<ScannedRecord<'_>>, ScanEnd) {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        match decode(&buf[offset..]) {
            Ok(Decoded::Record { kind, payload, len }) => {
                records.push(ScannedRecord { kind, payload, offset });
                offset += len;
            }
            Ok(Decoded::Incomplete) => return (records, ScanEnd::Torn { offset }),
            Err(reason) => return (records, ScanEnd::Corrupt { offset, reason }),
        }
    }
    (records, ScanEnd::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Vec<Vec<u8>>) {
        let payloads: Vec<Vec<u8>> =
            vec![b"first".to_vec(), Vec::new(), vec![7; 300], b"last record".to_vec()];
        let mut buf = Vec::new();
        for payload in &payloads {
            encode(RecordKind::Entry, payload, &mut buf);
        }
        (buf, payloads)
    }

    #[test]
    fn records_round_trip() {
        let (buf, payloads) = sample();
        let (records, end) = scan(&buf);
        assert_eq!(end, ScanEnd::Clean);
        let got: Vec<&[u8]> = records.iter().map(|r| r.payload).collect();
        assert_eq!(got, payloads.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    /// A crash may cut the file at any byte: the scan then yields an intact prefix of the
    /// records and reports a torn tail, never corruption, never a wrong record.
    #[test]
    fn a_cut_at_every_byte_leaves_an_intact_prefix() {
        let (buf, payloads) = sample();
        for cut in 0..buf.len() {
            let (records, end) = scan(&buf[..cut]);
            for (i, record) in records.iter().enumerate() {
                assert_eq!(record.payload, payloads[i].as_slice(), "cut at {cut}");
            }
            let complete = records.last().map_or(0, |r| r.offset + HEADER_LEN + r.payload.len());
            let expected =
                if complete == cut { ScanEnd::Clean } else { ScanEnd::Torn { offset: complete } };
            assert_eq!(end, expected, "cut at {cut}");
        }
    }

    /// Every single flipped bit is detected: the scan stops at the damaged record with an
    /// error, and every record before it is returned unchanged.
    #[test]
    fn every_flipped_bit_is_detected() {
        let (buf, payloads) = sample();
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let (records, end) = scan(&damaged);
            for (i, record) in records.iter().enumerate() {
                assert_eq!(record.payload, payloads[i].as_slice(), "bit {bit}");
            }
            assert!(records.len() < payloads.len(), "bit {bit}: damage went unnoticed");
            assert!(matches!(end, ScanEnd::Corrupt { .. }), "bit {bit}: {end:?}");
        }
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_u64;
        for len in 0..2_000 {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    state =
                        state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect();
            let _ = scan(&bytes);
        }
    }
}
