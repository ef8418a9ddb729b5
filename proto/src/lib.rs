//! The wire types of the project, generated from the `.proto` files beside this crate, and
//! the conversions between the peer protocol and raft-core's types.
//!
//! Converting to the wire cannot fail. Converting from it can, and never panics: every field a
//! message needs must be present, enums must hold known values and membership ids must be
//! strictly increasing (one encoding per configuration). What the engine itself checks (a
//! message addressed to it, numbers in range) is left to `RawNode::step`.

/// The peer protocol (`raft/v1/peer.proto`).
#[allow(missing_docs, clippy::doc_markdown)]
pub mod peer {
    include!(concat!(env!("OUT_DIR"), "/raft.v1.rs"));
}

/// The key-value protocol (package `kv.v1`): the log's command format
/// (`kv/v1/command.proto`), applied by kv-fsm.
#[allow(missing_docs, clippy::doc_markdown)]
pub mod kv {
    include!(concat!(env!("OUT_DIR"), "/kv.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every `.proto` file here, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

mod convert;

pub use convert::WireError;
