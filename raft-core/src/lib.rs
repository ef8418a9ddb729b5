//! # raft-core: a sans-IO Raft state machine
//!
//! This crate is the whole Raft protocol and nothing else: no async runtime, no files, no
//! sockets, no clock. Time enters as [`RawNode::tick`], messages as [`RawNode::step`],
//! proposals as [`RawNode::propose`]; everything the node wants done comes out as a [`Ready`].
//! The same seed and the same inputs give the same outputs, byte for byte, which is what lets
//! the simulator (feature `testkit`) test it exhaustively.
//!
//! ## Driving a node (the Ready contract)
//!
//! A host runs this loop:
//!
//! 1. Feed inputs: `tick()` at a fixed interval, `step(msg)` for every message received,
//!    `propose(data)` for client writes.
//! 2. `if node.has_ready() { let rd = node.ready(); ... }`
//! 3. Send `rd.messages` at once. They promise nothing about this node's durable state: a
//!    leader's appends and heartbeats, and pre-vote requests. A leader thus sends new entries
//!    to followers *while* it writes them to its own disk (thesis §10.2.1).
//! 4. Persist `rd.snapshot` (install it: drop the log it covers, keep a suffix only if the
//!    log holds its last entry, restore the state machine from its bytes), then
//!    `rd.hard_state` and `rd.entries`, as one all-or-nothing write, and make it durable
//!    (fsync). If `rd.entries[0].index` is at or below the host's last index, first discard
//!    the host's entries from that index on.
//! 5. Only then send `rd.messages_after_persist`, and call `node.on_persisted(rd.number)`.
//! 6. Apply `rd.committed_entries` in order (possibly on another thread) and call
//!    `node.on_applied(last_index)`.
//! 7. Serve each read in `rd.read_states` once the applied index reaches its index.
//!
//! Several Readies may be outstanding (fetch the next while the last one is being written),
//! as long as they are persisted and acknowledged in order.
//!
//! ## What must be durable before which message leaves
//!
//! | message | may leave once durable | why |
//! |---|---|---|
//! | `Vote` request | the candidate's new term and self-vote | a restart could otherwise vote twice in one term (§5.2) |
//! | `VoteResponse` | the voter's term and vote | same: one vote per term survives a crash |
//! | `AppendResponse` | the accepted entries and the term | the leader counts the answer toward commitment (§5.3) |
//! | `HeartbeatResponse`, `PreVoteResponse` | the term | answers never run ahead of durable state |
//! | `Append`, `Heartbeat` (leader) | nothing | the leader's own entries count toward commit only after `on_persisted` |
//! | `PreVote` request | nothing | it changes no state (thesis §9.6) |
//!
//! No message of a term leaves before that term is durable: a node that wins an election
//! alone (the only voter) holds its first appends until the Ready with its new term is
//! written, or a crash could let it lead the same term twice with different logs.
//!
//! A node that moves to a later term before its host took the Ready drops the answers it had
//! queued in the earlier term: an append ack among them could name entries that a leader of
//! the new term replaced in the same write.
//!
//! The two lists in [`Ready`] make this a type, not a comment: everything in
//! `messages_after_persist` waits for the write, everything in `messages` does not. Tests in
//! `tests/durability.rs` assert it for every message kind.
//!
//! ## Where to read on
//!
//! `docs/engine.md` (driving a node), `docs/elections.md`, `docs/replication.md`, and
//! `docs/rules.md` (each rule of Raft -> the function that implements it -> the test that
//! shows it).

mod confchange;
mod config;
mod election;
mod error;
mod log;
mod membership;
mod message;
mod node;
mod planted;
pub mod quorum;
mod raft;
mod read_index;
mod ready;
mod replication;
mod rng;
mod snapshot;
mod storage;
pub mod tracker;
mod transfer;
mod types;

#[cfg(feature = "testkit")]
pub mod sim;

pub use confchange::ConfChange;
pub use config::Config;
pub use error::{
    ConfChangeError, ConfigError, ProposeError, ReadIndexError, StepError, StoreError,
    TransferError,
};
pub use membership::Membership;
pub use message::{AppendResult, Message, MessageBody};
pub use node::{InitialState, Proposed, RawNode, Status};
pub use planted::PlantedBug;
pub use read_index::ReadState;
pub use ready::{Ready, ReadyNumber};
pub use rng::Rng;
pub use storage::{LogStore, MemLogStore};
pub use types::{
    Entry, EntryId, EntryKind, HardState, Index, NodeId, Role, SnapshotMeta, SoftState, Term,
};
