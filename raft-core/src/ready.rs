//! [`Ready`]: everything the engine asks of its host in one batch.

use crate::message::Message;
use crate::read_index::ReadState;
use crate::types::{Entry, HardState, SnapshotMeta, SoftState};

/// Identifies a [`Ready`], so the host can report it durable with
/// [`crate::RawNode::on_persisted`]. Numbers grow by one per Ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadyNumber(pub u64);

/// One batch of work for the host. Handle the fields in this order (see the crate docs):
///
/// 1. send `messages` (they do not depend on this batch being durable);
/// 2. install `snapshot`, then persist `hard_state` and `entries`, as one all-or-nothing
///    write, and make it durable;
/// 3. send `messages_after_persist`, then call `on_persisted(number)`;
/// 4. apply `committed_entries` in order, then call `on_applied(last index)`;
/// 5. serve each of `read_states` once the applied index reaches its index.
///
/// Several Readies may be in flight at once (the host may fetch the next one while the
/// previous write is in progress), but they must be persisted and acknowledged in order.
#[derive(Debug, Default)]
#[must_use = "a Ready must be persisted and acknowledged"]
pub struct Ready {
    /// Acknowledge with `on_persisted(number)` once step 2 is durable.
    pub number: ReadyNumber,
    /// The role or leader changed (volatile; nothing to persist).
    pub soft_state: Option<SoftState>,
    /// The term, vote or commit changed: persist it.
    pub hard_state: Option<HardState>,
    /// A snapshot from the leader to install before anything else in this Ready (paper §7):
    /// drop the log it covers, keep the suffix after it only if the log holds its last entry,
    /// and restore the state machine from its bytes (which the transport delivered).
    pub snapshot: Option<SnapshotMeta>,
    /// Entries to persist. If `entries[0].index` is at or below the last index the host
    /// holds, the host first discards its entries from that index on (a follower replacing a
    /// conflicting suffix; never a committed entry), then appends these.
    pub entries: Vec<Entry>,
    /// Messages the host may send at once, before or while it persists this Ready: a leader's
    /// appends and heartbeats, pre-vote requests.
    pub messages: Vec<Message>,
    /// Messages the host must send only after this Ready (and every earlier one) is durable:
    /// vote requests and all responses, since each promises durable state.
    pub messages_after_persist: Vec<Message>,
    /// Committed entries to apply to the state machine, in order. They are already durable on
    /// this node.
    pub committed_entries: Vec<Entry>,
    /// Confirmed reads: serve each once the state machine has applied up to its index.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether the host must write anything (and fsync) for this Ready.
    pub fn needs_persist(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}
