//! Messages between nodes (paper Figure 2, thesis §9.6 for PreVote).
//!
//! A message is a header (`from`, `to`, `term`) and a [`MessageBody`] enum, so every kind
//! carries exactly the fields it needs. Local events (an election timeout, an unreachable peer)
//! are methods on [`crate::RawNode`], never messages.

use crate::types::{Entry, EntryId, Index, NodeId, SnapshotMeta, Term};
use bytes::Bytes;
use std::fmt;

/// One message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's term; for a PreVote request and a granted PreVote response, the term the
    /// sender would campaign in (its own term + 1).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// "Would you vote for me in `term` if I campaigned?" (thesis §9.6). Changes nobody's state.
    PreVote {
        /// The sender's last log entry, for the up-to-date check (§5.4.1).
        last: EntryId,
    },
    /// The answer to [`MessageBody::PreVote`].
    PreVoteResponse {
        /// Whether the pre-vote was granted.
        granted: bool,
    },
    /// RequestVote (paper §5.2).
    Vote {
        /// The candidate's last log entry, for the up-to-date check (§5.4.1).
        last: EntryId,
        /// The candidate campaigns because its leader handed over with
        /// [`MessageBody::TimeoutNow`]: voters answer even while they still hear that leader
        /// (thesis §3.10), which they otherwise refuse (the lease, thesis §4.2.3).
        transfer: bool,
    },
    /// The answer to [`MessageBody::Vote`].
    VoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (paper §5.3): entries following `prev`, and the leader's commit index.
    Append {
        /// The entry just before `entries`; the follower must hold it (the consistency check).
        prev: EntryId,
        /// Consecutive entries starting at `prev.index + 1`; may be empty (a probe).
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: Index,
    },
    /// The answer to [`MessageBody::Append`].
    AppendResponse(AppendResult),
    /// A leader's periodic "I am alive" (paper §5.2). Carries a commit index the follower is
    /// known to hold (`min(match, commit)`), so it can never commit an entry it lacks.
    Heartbeat {
        /// The commit index the follower may advance to.
        commit: Index,
        /// The leader's latest ReadIndex round (thesis §6.4); the answer echoes it, which
        /// confirms every read registered up to that round. 0 before the first read.
        read_round: u64,
    },
    /// The answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse {
        /// The heartbeat's `read_round`, echoed.
        read_round: u64,
    },
    /// A follower asks its leader for a read index on behalf of read `request` (thesis
    /// §6.4). Answered with [`MessageBody::ReadIndexResponse`] once the leader confirmed it
    /// still leads; dropped if it does not, and the reader times out.
    ReadIndex {
        /// The follower's id for the read.
        request: u64,
    },
    /// The leader's answer to [`MessageBody::ReadIndex`]: the follower may serve `request`
    /// once it has applied up to `index`.
    ReadIndexResponse {
        /// The follower's id for the read.
        request: u64,
        /// The leader's commit index when it took the request.
        index: Index,
    },
    /// InstallSnapshot (paper §7): the follower needs entries the leader has compacted, so the
    /// leader sends its latest snapshot. The message carries the description; the host's
    /// transport moves the state's bytes alongside (in chunks if it likes), and the receiving
    /// host steps this message in once it holds them. Answered with an `AppendResponse`.
    InstallSnapshot {
        /// What the snapshot covers.
        snapshot: SnapshotMeta,
    },
    /// Proposals a follower forwards to its leader, in the order they were made there. Its
    /// term carries no meaning: only a leader appends them, anyone else drops them, and nobody
    /// answers (each proposer learns the outcome by seeing its entry applied, or times out).
    Propose {
        /// The proposals (one or more; the proposals of one turn share a message).
        proposals: Vec<Bytes>,
    },
    /// Leadership transfer (thesis §3.10): the leader, having brought the receiver's log up to
    /// date, asks it to campaign at once.
    TimeoutNow,
}

/// The outcome of an append at the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `match_index` (and, once this message is
    /// sent, holds it durably).
    Accepted {
        /// The last index known to match the leader's log.
        match_index: Index,
    },
    /// The consistency check failed for `rejected` (the append's `prev.index`).
    Rejected {
        /// The `prev.index` of the append that failed.
        rejected: Index,
        /// The follower's guess of where the logs may agree: its last entry at or below
        /// `min(rejected, its last index)` whose term is at most the append's `prev.term`.
        /// The leader skips back over whole terms with it.
        hint: EntryId,
    },
}

impl MessageBody {
    /// A short name for traces.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResp",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResp",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse(_) => "AppendResp",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResp",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResp",
            MessageBody::Propose { .. } => "Propose",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}

/// Messages print as protocol traces: `1->2 Append term=2 prev=1/3 commit=3 [2/4 "foo"]`.
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{} {} term={}", self.from, self.to, self.body.kind_name(), self.term)?;
        match &self.body {
            MessageBody::PreVote { last } | MessageBody::Vote { last, transfer: false } => {
                write!(f, " last={last}")
            }
            MessageBody::Vote { last, transfer: true } => write!(f, " last={last} transfer"),
            MessageBody::PreVoteResponse { granted } | MessageBody::VoteResponse { granted } => {
                f.write_str(if *granted { " granted" } else { " rejected" })
            }
            MessageBody::Append { prev, entries, commit } => {
                write!(f, " prev={prev} commit={commit} [")?;
                for (i, entry) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write_entry(f, entry)?;
                }
                f.write_str("]")
            }
            MessageBody::AppendResponse(AppendResult::Accepted { match_index }) => {
                write!(f, " match={match_index}")
            }
            MessageBody::AppendResponse(AppendResult::Rejected { rejected, hint }) => {
                write!(f, " rejected={rejected} hint={hint}")
            }
            MessageBody::Heartbeat { commit, read_round: 0 } => write!(f, " commit={commit}"),
            MessageBody::Heartbeat { commit, read_round } => {
                write!(f, " commit={commit} read_round={read_round}")
            }
            MessageBody::HeartbeatResponse { read_round: 0 } | MessageBody::TimeoutNow => Ok(()),
            MessageBody::HeartbeatResponse { read_round } => write!(f, " read_round={read_round}"),
            MessageBody::ReadIndex { request } => write!(f, " request={request}"),
            MessageBody::InstallSnapshot { snapshot } => {
                write!(f, " snapshot={} {}", snapshot.last(), snapshot.membership)
            }
            MessageBody::ReadIndexResponse { request, index } => {
                write!(f, " request={request} index={index}")
            }
            MessageBody::Propose { proposals } => proposals.iter().try_for_each(|data| {
                write!(f, " \"{}\"", String::from_utf8_lossy(data).escape_debug())
            }),
        }
    }
}

/// Writes an entry as `term/index "data"` (or `term/index noop`).
pub(crate) fn write_entry(f: &mut impl fmt::Write, entry: &Entry) -> fmt::Result {
    match &entry.kind {
        crate::types::EntryKind::Noop => write!(f, "{} noop", entry.id()),
        crate::types::EntryKind::Config(membership) => {
            write!(f, "{} config {membership}", entry.id())
        }
        crate::types::EntryKind::Normal => {
            write!(f, "{} \"{}\"", entry.id(), String::from_utf8_lossy(&entry.data).escape_debug())
        }
    }
}
