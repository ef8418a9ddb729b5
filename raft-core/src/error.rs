//! Errors, one enum per API surface.

use crate::types::{Index, NodeId};

/// A [`crate::Config`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value the engine cannot run with.
    #[error("invalid raft config: {field} {reason}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The start state contradicts the log store.
    #[error("invalid raft start state: {0}")]
    StartState(String),
}

/// Why a proposal was refused. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals; `leader` is the one this node knows, if any.
    #[error("not the leader (leader: {})", leader.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader {
        /// The leader this node knows of in its current term.
        leader: Option<NodeId>,
    },
    /// The leader already holds `uncommitted_bytes_max` bytes of proposals that are not yet
    /// committed and handed out to apply; retry once some commit (backpressure).
    #[error("too many uncommitted proposals (limit {uncommitted_bytes_max} bytes)")]
    UncommittedFull {
        /// The configured limit.
        uncommitted_bytes_max: u64,
    },
    /// The leader is handing leadership to `to` (thesis §3.10) and takes no proposals until
    /// the transfer completes or is abandoned (after an election timeout).
    #[error("leadership is being transferred to node {to}")]
    TransferInProgress {
        /// The transfer's target.
        to: NodeId,
    },
}

/// Why a read was refused at once. A read that was taken may still be dropped later (a
/// leader stepping down drops its reads); its reader times out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadIndexError {
    /// No leader is known to ask for a read index.
    #[error("no leader known to confirm a read")]
    NoLeader,
    /// The leader already holds `read_requests_max` reads waiting for confirmation.
    #[error("too many reads waiting for confirmation (limit {read_requests_max})")]
    TooManyPending {
        /// The configured limit.
        read_requests_max: usize,
    },
}

/// Why a membership change was refused. Nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    /// Only the leader changes the membership; `leader` is the one this node knows, if any.
    #[error("not the leader (leader: {})", leader.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader {
        /// The leader this node knows of in its current term.
        leader: Option<NodeId>,
    },
    /// A change is still under way: its latest configuration entry, at `index`, is not yet
    /// committed, or the configuration is still joint. One change at a time.
    #[error("a membership change is in progress (configuration entry at {index})")]
    InProgress {
        /// The index of the latest configuration entry.
        index: Index,
    },
    /// A leadership transfer is under way.
    #[error("leadership is being transferred to node {to}")]
    TransferInProgress {
        /// The transfer's target.
        to: NodeId,
    },
    /// The change makes no sense for the current configuration.
    #[error("invalid membership change: {0}")]
    Invalid(String),
}

/// Why a leadership transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader can hand over leadership; `leader` is the one this node knows, if any.
    #[error("not the leader (leader: {})", leader.map_or("unknown".to_string(), |l| l.to_string()))]
    NotLeader {
        /// The leader this node knows of in its current term.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the current configuration.
    #[error("node {to} is not a voter")]
    NotVoter {
        /// The requested target.
        to: NodeId,
    },
}

/// Why a message was refused. The node's state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The message is addressed to another node.
    #[error("message for node {to} delivered to node {me}")]
    WrongRecipient {
        /// The addressee.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The message breaks the protocol's shape (a peer bug or a corrupted message).
    #[error("malformed message from node {from}: {reason}")]
    Malformed {
        /// The sender.
        from: NodeId,
        /// What is wrong with it.
        reason: String,
    },
}

/// A read from the [`crate::LogStore`] that could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The entries were compacted away (they are covered by a snapshot).
    #[error("log entries before index {first} were compacted")]
    Compacted {
        /// The first index the store still holds.
        first: Index,
    },
    /// The store failed to read (for example an IO error). The engine retries later.
    #[error("log store unavailable: {0}")]
    Unavailable(String),
}
