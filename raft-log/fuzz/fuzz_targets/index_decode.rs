//! Fuzzes the index-file decoder (`raft_log::index`), which reads files a crash may have left
//! torn or a disk may have damaged.
//!
//! For any bytes, `index::decode` never panics; whatever it accepts can be read through
//! `SegmentIndex` without panicking, and every location it yields lies inside the segment, in
//! order, with terms that never decrease.
//!
//! ```sh
//! cd raft-log && cargo +nightly fuzz run index_decode
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_log::index::{self, SegmentIndex};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = index::decode(data) else { return };
    let locations = SegmentIndex::mapped(Box::new(data.to_vec())).expect("decoded once").locations().into_owned();
    assert_eq!(locations.len() as u64, header.count);
    for pair in locations.windows(2) {
        assert!(pair[0].end() <= pair[1].offset && pair[0].term <= pair[1].term);
    }
    assert!(locations.iter().all(|at| at.end() <= header.segment_len));
});
