//! # raft-log: the write-ahead log of a raft-core node
//!
//! A node's Raft log, term and vote, and snapshots on disk: segment files of CRC-checked
//! records, a checksummed index file per sealed segment (memory-mapped at open, so opening
//! reads only the newest segment), group commit (one `fdatasync` per batch), and recovery
//! that truncates a torn tail but refuses to open over damage anywhere else.
//!
//! - [`record`]: the framing of every record: length, kind, a header CRC and a record CRC,
//!   so that a torn tail and a flipped bit are both detected; never panics on any bytes;
//! - [`codec`]: the payloads: raft-core entries (normal, no-op, configuration) and the hard
//!   state;
//! - [`segment`]: one segment file: append, `fdatasync`, truncate, and opening with the
//!   recovery rules;
//! - [`index`]: the index file of a sealed segment;
//! - [`vote`]: the term and vote, in a file of two checksummed slots;
//! - [`snapshot`]: snapshot files, written aside and renamed into place;
//! - [`given_up`]: files the log no longer uses, renamed out of its way and removed by its
//!   owner on any thread (removing a large file is slow);
//! - [`wal`]: the log: batches, cuts, roll-over, compaction, snapshots, reopening, and
//!   `raft_core::LogStore` for the engine;
//! - [`vfs`]: the file layer, with a fake that keeps written and synced bytes apart for
//!   honest crash tests.
//!
//! The byte layout is written down in `raft-log/FORMAT.md`; the durability contract and the
//! recovery rules in `docs/wal.md`.

pub mod codec;
pub mod given_up;
pub mod index;
pub mod record;
pub mod segment;
pub mod snapshot;
pub mod vfs;
pub mod vote;
pub mod wal;
