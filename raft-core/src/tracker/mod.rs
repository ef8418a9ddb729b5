//! The leader's bookkeeping: the membership, one [`Progress`] per member, and the votes of
//! an election in progress.

mod inflights;
mod progress;

pub use inflights::Inflights;
pub use progress::{Progress, ProgressState, Rejection};

use crate::membership::Membership;
use crate::quorum::VoteResult;
use crate::types::{Index, NodeId};
use std::collections::BTreeMap;

/// The membership, its progress, and the votes received in the current election.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    /// The configuration in force. Invariant: while leading, `progress` has exactly the keys
    /// of `membership.members()`.
    pub membership: Membership,
    /// Per-member replication progress (only meaningful on a leader).
    pub progress: BTreeMap<NodeId, Progress>,
    /// Votes received in the current (pre-)election.
    pub votes: BTreeMap<NodeId, bool>,
}

impl ProgressTracker {
    /// A tracker for `membership`, with no progress and no votes.
    pub fn new(membership: Membership) -> ProgressTracker {
        ProgressTracker { membership, progress: BTreeMap::new(), votes: BTreeMap::new() }
    }

    /// Resets every member's progress for a new leader whose last index is `last`, taking
    /// office at tick `now` (every member counts as heard from then).
    pub fn reset_progress(&mut self, last: Index, msgs_max: usize, bytes_max: u64, now: u64) {
        let fresh = |_| {
            let mut pr = Progress::new(last.next(), Inflights::new(msgs_max, bytes_max));
            pr.heard_at = now;
            pr
        };
        self.progress = self.membership.members().into_iter().map(|id| (id, fresh(id))).collect();
    }

    /// After a configuration change appended at `index` on a leader: tracks new members
    /// (probing from `index`, so the change itself goes out first; counted as heard at `now`)
    /// and forgets removed ones.
    pub fn sync_progress(&mut self, index: Index, msgs_max: usize, bytes_max: u64, now: u64) {
        let members = self.membership.members();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.progress.entry(id).or_insert_with(|| {
                let mut pr = Progress::new(index, Inflights::new(msgs_max, bytes_max));
                pr.heard_at = now;
                pr
            });
        }
    }

    /// The index a quorum of voters hold (a majority of each half while joint).
    pub fn committed_index(&self) -> Index {
        self.membership
            .committed_index(|id| self.progress.get(&id).map_or(Index(0), |pr| pr.match_index))
    }

    /// Records `from`'s vote (the first one counts) and tallies.
    pub fn record_vote(&mut self, from: NodeId, granted: bool) -> VoteResult {
        self.votes.entry(from).or_insert(granted);
        self.membership.vote_result(&self.votes)
    }

    /// Whether a quorum of voters, `me` included, were heard from in the `ticks` ticks up to
    /// `now` (CheckQuorum, thesis §6.2).
    pub fn quorum_heard_within(&self, me: NodeId, now: u64, ticks: u64) -> bool {
        self.membership.is_quorum(|id| {
            id == me || self.progress.get(&id).is_some_and(|pr| pr.heard_within(now, ticks))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(voters: &[u64], now: u64) -> ProgressTracker {
        let mut tracker =
            ProgressTracker::new(Membership::new(voters.iter().map(|&id| NodeId(id))));
        tracker.reset_progress(Index(0), 4, 1024, now);
        tracker
    }

    #[test]
    fn quorum_heard_within_counts_the_leader_and_recent_answers() {
        let me = NodeId(1);
        /// (voters, [(follower, heard_at)], now, heard within 10 ticks?)
        type Case = (&'static [u64], &'static [(u64, u64)], u64, bool);
        let table: [Case; 7] = [
            (&[1], &[], 100, true),                    // a single node is its own quorum
            (&[1, 2, 3], &[], 9, true),                // took office at 0: 9 ticks ago
            (&[1, 2, 3], &[], 10, false),              // 10 ticks without an answer
            (&[1, 2, 3], &[(2, 5)], 14, true),         // node 2 answered 9 ticks ago
            (&[1, 2, 3], &[(2, 5)], 15, false),        // ... and now 10 ticks ago
            (&[1, 2, 3, 4, 5], &[(2, 20)], 20, false), // two of five
            (&[1, 2, 3, 4, 5], &[(2, 20), (5, 11)], 20, true),
        ];
        for (voters, answers, now, want) in table {
            let mut t = tracker(voters, 0);
            for &(id, at) in answers {
                t.progress.get_mut(&NodeId(id)).unwrap().heard_at = at;
            }
            assert_eq!(t.quorum_heard_within(me, now, 10), want, "{voters:?} {answers:?} at {now}");
        }
    }
}
