//! Fuzzes the payload codec (`raft_log::codec`), which decodes every record that passed its
//! checksum.
//!
//! For any bytes, `decode_entry` and `decode_hard_state` never panic, and whatever they accept
//! re-encodes (`encode_entry`, `encode_hard_state`) to exactly the bytes it was decoded from:
//! one value, one encoding, so a payload that no writer could have produced is refused.
//!
//! ```sh
//! cd raft-log && cargo +nightly fuzz run payload_decode
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_log::codec;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = codec::decode_entry(data) {
        let mut encoded = Vec::new();
        codec::encode_entry(&entry, &mut encoded);
        assert_eq!(encoded, data, "entry {entry:?} re-encodes differently");
    }
    if let Ok(hard_state) = codec::decode_hard_state(data) {
        let mut encoded = Vec::new();
        codec::encode_hard_state(&hard_state, &mut encoded);
        assert_eq!(encoded, data, "hard state {hard_state:?} re-encodes differently");
    }
});
