//! kv-fsm: the replicated key-value state machine of kv-server.
//!
//! Every node applies the same committed log entries in the same order to a [`KvState`] and
//! so holds the same map. What it promises:
//!
//! - **Deterministic.** A write's outcome depends only on the state and the entry: its
//!   revision is the entry's log index; no clock, no randomness, no configuration.
//! - **At most once per session** (thesis §6.3): a write carries `(client_id, sequence)`; a
//!   retry of an applied write gets the first result back and changes nothing
//!   ([`session`]).
//! - **Streamed snapshots**: [`KvState::write_snapshot`] writes from an O(1) clone of the
//!   persistent map while entries keep applying, and [`KvState::read_snapshot`] restores
//!   record by record with every length, order and the checksum checked ([`snapshot`]).
//!
//! The command format in the log is `kv/v1/command.proto` (crate `kv-proto`).

mod key;
pub mod session;
pub mod snapshot;
mod state;

pub use key::Key;
pub use snapshot::SnapshotError;
pub use state::{encode_command, ApplyError, KvState, Member, Stored, WriteResult};
