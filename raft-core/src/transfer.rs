//! Leadership transfer (thesis §3.10): the leader hands office to a chosen voter.
//!
//! 1. The host calls `transfer_leadership(to)` on the leader. From now on the leader refuses
//!    proposals, so its log stops growing and `to` can catch up.
//! 2. The leader sends `to` whatever entries it lacks, as usual.
//! 3. Once `to` holds the leader's whole log (its match index reaches the last index), the
//!    leader sends it `TimeoutNow`, and again on each of its answers while the transfer lasts
//!    (a lost TimeoutNow is thus repeated).
//! 4. `to` campaigns at once, skipping PreVote, in the next term. Its vote requests are
//!    marked `transfer`, so voters that still hear the old leader (in its lease) answer them
//!    if they would grant them (a late TimeoutNow from an abandoned transfer, whose target
//!    has fallen behind, cannot depose the leader).
//!    Its log is as up to date as any, so it normally wins; the old leader steps down when it
//!    sees the new term.
//! 5. If no new leader took over within an election timeout, the old leader gives up the
//!    transfer and takes proposals again.

use crate::error::TransferError;
use crate::message::MessageBody;
use crate::raft::Raft;
use crate::storage::LogStore;
use crate::types::{NodeId, Role};

impl<S: LogStore> Raft<S> {
    /// Step 1: starts handing leadership to `to`. A transfer already under way is replaced;
    /// transferring to the leader itself cancels it.
    pub(crate) fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        if !self.tracker.membership.voters.contains(&to) {
            return Err(TransferError::NotVoter { to });
        }
        if to == self.id {
            self.transfer = None;
            return Ok(());
        }
        tracing::info!(id = %self.id, term = %self.term, %to, "transferring leadership");
        self.transfer = Some((to, 0));
        // Step 2, or step 3 at once if `to` is already up to date.
        self.maybe_send_timeout_now(to);
        self.send_appends(to);
        Ok(())
    }

    /// Step 3: sends `TimeoutNow` if `peer` is the transfer's target and holds the whole log.
    pub(crate) fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let Some((to, _)) = self.transfer else { return };
        let caught_up = self
            .tracker
            .progress
            .get(&to)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if to == peer && caught_up {
            tracing::debug!(id = %self.id, %to, "transfer target caught up; sending TimeoutNow");
            self.send(to, self.term, MessageBody::TimeoutNow);
        }
    }

    /// Step 5, on every leader tick: abandons a transfer that took an election timeout.
    pub(crate) fn tick_transfer(&mut self) {
        let Some((to, elapsed)) = self.transfer.as_mut() else { return };
        *elapsed += 1;
        if *elapsed >= self.config.election_ticks {
            tracing::info!(id = %self.id, to = %*to, "leadership transfer timed out");
            self.transfer = None;
        }
    }

    /// Step 4, at the target: `TimeoutNow` from the leader of this term starts an election
    /// at once. Ignored from anyone else, and by a node that cannot vote.
    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.leader != Some(from) || !self.is_voter() || self.role == Role::Leader {
            // (A transfer targets a voter of the latest configuration.)
            tracing::debug!(id = %self.id, %from, "TimeoutNow ignored");
            return;
        }
        tracing::info!(id = %self.id, term = %self.term, %from, "TimeoutNow: campaigning");
        self.become_candidate(true);
    }
}
