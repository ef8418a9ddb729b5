//! # raft-log: the write-ahead log of a raft-core node
//!
//! This crate will keep a node's Raft log, hard state and snapshots on disk: segment files of
//! CRC-checked records, a memory-mapped index per segment, group commit, and recovery that
//! truncates a torn tail but refuses to open over damage anywhere else.
//!
//! What is here so far (issue 4, first step):
//!
//! - [`record`]: the framing of every record: length, kind, a header CRC and a record CRC,
//!   so that a torn tail and a flipped bit are both detected, and a decoder that never
//!   panics on any bytes;
//! - [`codec`]: the payloads: raft-core entries (normal, no-op, configuration) and the hard
//!   state;
//! - [`segment`]: one segment file: append, `fdatasync`, truncate, and opening with the
//!   recovery rules (a torn tail of the last segment is cut; other damage refuses to open);
//! - [`wal`]: the log over segments: batches of a hard state and entries made durable with one
//!   write and one `fdatasync`, suffix truncation, segment roll-over, reopening, and
//!   `raft_core::LogStore` for the engine. Not yet: compaction, snapshots, the mmap'd index.
//!
//! The byte layout is written down in `raft-log/FORMAT.md`.

pub mod codec;
pub mod record;
pub mod segment;
pub mod wal;
