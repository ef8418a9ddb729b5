//! Linearizable reads with ReadIndex (thesis §6.4), without writing to the log.
//!
//! A read must see every write acknowledged before it started. The leader serves it so:
//!
//! 1. It takes the read only once it has committed an entry of its own term; until then its
//!    commit index may lag behind what earlier leaders committed, so reads wait.
//! 2. It records its commit index as the read's index, and assigns the read to the next
//!    heartbeat round (one round serves every read taken before it is sent).
//! 3. It sends that round's heartbeats. An answer echoing round `r` or later, from a voter
//!    still in this term, shows the voter had not moved on to a newer leader when the round
//!    was sent after the read arrived.
//! 4. Once a majority (the leader included) echoed round `r`, every read of rounds up to `r`
//!    is released as a [`ReadState`]: the host serves it once it has applied up to its index.
//!
//! A follower asks the leader with `ReadIndex`; the leader runs steps 1-4 and answers with
//! `ReadIndexResponse`; the follower hands the host a [`ReadState`] and serves the read from
//! its own state machine once that has applied up to the index. A leader that steps down
//! drops the reads it holds; their readers time out. Nothing here depends on clocks.

use crate::error::ReadIndexError;
use crate::message::MessageBody;
use crate::planted::PlantedBug;
use crate::raft::Raft;
use crate::storage::LogStore;
use crate::types::{Index, NodeId, Role};
use std::collections::VecDeque;

/// A read that may be served once the state machine has applied up to `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The host's id for the read, as given to `read_index`.
    pub request: u64,
    /// Serve the read once the applied index reaches this.
    pub index: Index,
}

/// Who asked for a read, and their id for it.
#[derive(Clone, Copy, Debug)]
struct ReadRequest {
    request: u64,
    from: NodeId,
}

/// A read the leader took, waiting for its round to be confirmed.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    read: ReadRequest,
    index: Index,
    round: u64,
}

/// The reads one node holds.
#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    /// Leader: reads waiting for the first commit of an entry of its term (step 1).
    waiting_for_commit: Vec<ReadRequest>,
    /// Leader: reads waiting for their round to be confirmed, in round order (step 3).
    pending: VecDeque<PendingRead>,
    /// The latest round assigned; heartbeats carry it. Only grows.
    pub(crate) round: u64,
    /// The latest round has reads but its heartbeats were not sent yet.
    round_unsent: bool,
    /// Reads released to the host, handed out with the next Ready.
    pub(crate) ready: Vec<ReadState>,
}

impl ReadQueue {
    /// Drops the reads a leader was holding (it stepped down; the readers time out).
    pub(crate) fn clear_pending(&mut self) {
        self.waiting_for_commit.clear();
        self.pending.clear();
        self.round_unsent = false;
    }

    /// Reads held by the leader, waiting for a commit or a confirmation.
    fn held(&self) -> usize {
        self.waiting_for_commit.len() + self.pending.len()
    }

    /// Whether heartbeats for a new round must go out with the next Ready.
    pub(crate) fn has_unsent_round(&self) -> bool {
        self.round_unsent
    }

    /// Heartbeats carrying the latest round were just sent.
    pub(crate) fn round_sent(&mut self) {
        self.round_unsent = false;
    }
}

impl<S: LogStore> Raft<S> {
    /// A read at this node: a leader takes it; a follower asks the leader it knows.
    pub(crate) fn read_index(&mut self, request: u64) -> Result<(), ReadIndexError> {
        match (self.role, self.leader) {
            (Role::Leader, _) => {
                if self.reads.held() >= self.config.read_requests_max {
                    let read_requests_max = self.config.read_requests_max;
                    return Err(ReadIndexError::TooManyPending { read_requests_max });
                }
                self.take_read(ReadRequest { request, from: self.id });
                Ok(())
            }
            (_, Some(leader)) => {
                self.send(leader, self.term, MessageBody::ReadIndex { request });
                Ok(())
            }
            (_, None) => Err(ReadIndexError::NoLeader),
        }
    }

    /// A follower's `ReadIndex`. Dropped unless this node leads and has room.
    pub(crate) fn handle_read_index_request(&mut self, from: NodeId, request: u64) {
        if self.role != Role::Leader || self.reads.held() >= self.config.read_requests_max {
            tracing::debug!(id = %self.id, %from, request, "read index request dropped");
            return;
        }
        self.take_read(ReadRequest { request, from });
    }

    /// The leader's answer to this follower's `ReadIndex`.
    pub(crate) fn handle_read_index_response(&mut self, from: NodeId, request: u64, index: Index) {
        if self.leader != Some(from) || self.role == Role::Leader {
            tracing::debug!(id = %self.id, %from, request, "read index response ignored");
            return;
        }
        self.reads.ready.push(ReadState { request, index });
    }

    /// Whether this leader has committed an entry of its own term (step 1's condition).
    fn committed_in_term(&self) -> bool {
        self.log.term(self.log.commit) == Some(self.term)
    }

    /// Step 1: a read waits until this leader has committed an entry of its own term.
    fn take_read(&mut self, read: ReadRequest) {
        if self.committed_in_term() || self.config.has_bug(PlantedBug::ReadBeforeOwnTermCommit) {
            self.register_read(read);
        } else {
            self.reads.waiting_for_commit.push(read);
        }
    }

    /// Step 1 done: the leader committed an entry of its term; register the waiting reads.
    pub(crate) fn register_reads_waiting_for_commit(&mut self) {
        if self.role != Role::Leader || !self.committed_in_term() {
            return;
        }
        for read in std::mem::take(&mut self.reads.waiting_for_commit) {
            self.register_read(read);
        }
    }

    /// Step 2: the read's index is the commit index now; it joins the next round. A leader
    /// that is a quorum by itself (a one-voter cluster) confirms it at once.
    fn register_read(&mut self, read: ReadRequest) {
        let index = self.log.commit;
        if self.config.has_bug(PlantedBug::ReadWithoutHeartbeatRound) {
            self.release_read(read, index);
            return;
        }
        if !self.reads.round_unsent {
            self.reads.round += 1;
            self.reads.round_unsent = true;
        }
        let round = self.reads.round;
        self.reads.pending.push_back(PendingRead { read, index, round });
        self.release_confirmed_reads();
    }

    /// Step 3: sends the heartbeats of a round that has reads, once per Ready.
    pub(crate) fn flush_read_round(&mut self) {
        if self.reads.round_unsent && self.role == Role::Leader {
            self.broadcast_heartbeat();
        }
    }

    /// Step 4: releases every read whose round a quorum (this leader, if a voter, included)
    /// has echoed.
    pub(crate) fn release_confirmed_reads(&mut self) {
        while let Some(&PendingRead { read, index, round }) = self.reads.pending.front() {
            let (me, progress) = (self.id, &self.tracker.progress);
            let echoed = |id: NodeId| {
                id == me || progress.get(&id).is_some_and(|pr| pr.read_round_acked >= round)
            };
            if !self.tracker.membership.is_quorum(echoed) {
                return;
            }
            self.reads.pending.pop_front();
            self.release_read(read, index);
        }
    }

    /// Hands a confirmed read to the host, or to the follower that asked.
    fn release_read(&mut self, read: ReadRequest, index: Index) {
        let ReadRequest { request, from } = read;
        if from == self.id {
            self.reads.ready.push(ReadState { request, index });
        } else {
            self.send(from, self.term, MessageBody::ReadIndexResponse { request, index });
        }
    }
}
