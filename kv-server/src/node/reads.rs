//! Linearizable reads: the reads of one loop turn share one read-index request, and each
//! batch is served once the state has applied up to its confirmed index (docs/reads.md).

use super::{Core, ReadError, Reply};
use kv_fsm::KvState;
use raft_core::{Index, ReadIndexError, ReadState};
use std::time::Instant;

/// Reads waiting together for one ReadIndex confirmation, then for the apply to reach its
/// index: every linearizable read that arrived in one loop turn (they all started before the
/// ReadIndex request was made, so its index serves each of them).
pub(super) struct PendingRead {
    pub(super) replies: Vec<Reply<Result<KvState, ReadError>>>,
    /// The latest deadline among them (each is answered by the turn after its own at most).
    pub(super) deadline: Instant,
}

impl PendingRead {
    pub(super) fn answer(self, answer: impl Fn() -> Result<KvState, ReadError>) {
        for reply in self.replies {
            let _ = reply.send(answer());
        }
    }
}

impl Core {
    pub(super) fn start_read(
        &mut self,
        linearizable: bool,
        reply: Reply<Result<KvState, ReadError>>,
    ) {
        if !linearizable {
            let _ = reply.send(Ok(self.state.clone()));
            return;
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let arrived =
            self.reads_arrived.get_or_insert_with(|| PendingRead { replies: Vec::new(), deadline });
        arrived.replies.push(reply);
        arrived.deadline = deadline;
    }

    /// Asks the engine for one read index for every linearizable read of this turn: on a
    /// follower that is one ReadIndex message to the leader, not one per read.
    pub(super) fn request_read_index(&mut self) {
        let Some(reads) = self.reads_arrived.take() else { return };
        let request = self.next_read;
        self.next_read += 1;
        match self.raw.read_index(request) {
            Ok(()) => {
                self.reads_unconfirmed.insert(request, reads);
            }
            Err(ReadIndexError::NoLeader) => reads.answer(|| Err(ReadError::NoLeader)),
            Err(ReadIndexError::TooManyPending { .. }) => reads.answer(|| Err(ReadError::Busy)),
        }
    }

    /// Serves the confirmed reads the state has caught up with (by applying entries or by
    /// installing a snapshot).
    pub(super) fn release_reads(&mut self) {
        let applied = Index(self.state.applied());
        for reads in self.take_confirmed_reads(|index, _| index <= applied) {
            reads.answer(|| Ok(self.state.clone()));
        }
    }

    /// Removes and returns the confirmed reads `pick` chooses (by read index and read).
    pub(super) fn take_confirmed_reads(
        &mut self,
        pick: impl Fn(Index, &PendingRead) -> bool,
    ) -> Vec<PendingRead> {
        let (picked, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads_confirmed).into_iter().partition(|(i, r)| pick(*i, r));
        self.reads_confirmed = kept;
        picked.into_iter().map(|(_, read)| read).collect()
    }

    pub(super) fn confirm_reads(&mut self, read_states: Vec<ReadState>) {
        let applied = Index(self.state.applied());
        for read_state in read_states {
            let Some(reads) = self.reads_unconfirmed.remove(&read_state.request) else { continue };
            if read_state.index <= applied {
                reads.answer(|| Ok(self.state.clone()));
            } else {
                self.reads_confirmed.push((read_state.index, reads));
            }
        }
    }
}
