//! Fuzzes the record framing (`raft_log::record`), which reads every byte of a segment file.
//!
//! Two checks per input:
//!
//! 1. The input as a segment's bytes: `decode` and `scan` never panic; every record they
//!    return re-encodes with `record::encode` to exactly the bytes it was read from; the
//!    records tile the buffer from offset 0; the end they report is where the records stop
//!    and agrees with `decode` at that offset.
//! 2. The input as records to write: its pieces (split at `|`) are framed with `encode`, then
//!    the buffer is left whole, cut at a byte, or has one bit flipped, as the input's first
//!    bytes say. `scan` must return exactly the records before the damage, and report a clean
//!    end, a torn tail, or corruption at the damaged record. Random bytes rarely carry valid
//!    checksums; this check reaches the intact-record paths on every input.
//!
//! ```sh
//! cd raft-log && cargo +nightly fuzz run record_decode
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_log::record::{self, Decoded, RecordKind, ScanEnd, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    check_as_segment(data);
    check_framed(data);
});

/// Decodes `data` as a segment's bytes and checks what the decoder claims against the bytes.
fn check_as_segment(data: &[u8]) {
    if let Ok(Decoded::Record { kind, payload, len }) = record::decode(data) {
        assert_eq!(len, HEADER_LEN + payload.len());
        let mut encoded = Vec::new();
        record::encode(kind, payload, &mut encoded);
        assert_eq!(encoded, data[..len], "a decoded record re-encodes differently");
    }
    let (records, end) = record::scan(data);
    let mut offset = 0;
    for scanned in &records {
        assert_eq!(scanned.offset, offset, "records do not follow each other");
        let mut encoded = Vec::new();
        record::encode(scanned.kind, scanned.payload, &mut encoded);
        let stored = &data[offset..offset + encoded.len()];
        assert_eq!(encoded, stored, "a scanned record at {offset} re-encodes differently");
        offset += encoded.len();
    }
    match end {
        ScanEnd::Clean => assert_eq!(offset, data.len(), "clean end before the end"),
        ScanEnd::Torn { offset: at } => {
            assert_eq!(at, offset);
            assert!(at < data.len(), "a torn tail of no bytes");
            assert_eq!(record::decode(&data[at..]), Ok(Decoded::Incomplete));
        }
        ScanEnd::Corrupt { offset: at, reason } => {
            assert_eq!(at, offset);
            assert_eq!(record::decode(&data[at..]), Err(reason));
        }
    }
}

/// Frames the pieces of `data` as records, damages the buffer as its first three bytes say,
/// and checks that `scan` finds exactly the intact records before the damage.
fn check_framed(data: &[u8]) {
    let [mode, at_low, at_high, rest @ ..] = data else { return };
    let mut buf = Vec::new();
    let mut written = Vec::new(); // (offset, kind, payload) of every record
    for (i, payload) in rest.split(|&byte| byte == b'|').enumerate() {
        let kind = [RecordKind::BatchStart, RecordKind::Entry, RecordKind::HardState][i % 3];
        written.push((buf.len(), kind, payload));
        record::encode(kind, payload, &mut buf);
    }
    let at = usize::from(u16::from_le_bytes([*at_low, *at_high])) % buf.len();
    // The record that holds byte `at`: every record before it is intact, whatever the damage.
    let hit = written.iter().rposition(|&(offset, ..)| offset <= at).expect("one starts at 0");
    let hit_offset = written[hit].0;
    let flipped_bit = mode % 8;
    match mode % 3 {
        0 => {}
        1 => buf.truncate(at),
        _ => buf[at] ^= 1 << flipped_bit,
    }
    let (records, end) = record::scan(&buf);
    let what = ["left whole", "cut", "with a flipped bit"][usize::from(mode % 3)];
    match mode % 3 {
        0 => {
            assert_eq!(end, ScanEnd::Clean);
            assert_eq!(records.len(), written.len());
        }
        1 if at == hit_offset => {
            assert_eq!(end, ScanEnd::Clean, "cut at {at}, a record boundary");
            assert_eq!(records.len(), hit, "cut at {at}");
        }
        1 => {
            assert_eq!(end, ScanEnd::Torn { offset: hit_offset }, "cut at {at}");
            assert_eq!(records.len(), hit, "cut at {at}");
        }
        _ => {
            let detected = matches!(end, ScanEnd::Corrupt { offset, .. } if offset == hit_offset);
            assert!(detected, "bit {flipped_bit} of byte {at} flipped: {end:?}");
            assert_eq!(records.len(), hit, "bit {flipped_bit} of byte {at} flipped");
        }
    }
    for (scanned, &(offset, kind, payload)) in records.iter().zip(&written) {
        let expected = (offset, kind, payload);
        assert_eq!((scanned.offset, scanned.kind, scanned.payload), expected, "buffer {what}");
    }
}
