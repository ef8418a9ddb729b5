//! The leader's bookkeeping: the voters, one [`Progress`] per voter, and the votes of an
//! election in progress.

mod inflights;
mod progress;

pub use inflights::Inflights;
pub use progress::{Progress, ProgressState};

use crate::quorum::{self, VoteResult};
use crate::types::{Index, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Voters, their progress, and the votes received in the current election.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    /// The voting members. Invariant: `progress` has exactly these keys while leading.
    pub voters: BTreeSet<NodeId>,
    /// Per-voter replication progress (only meaningful on a leader).
    pub progress: BTreeMap<NodeId, Progress>,
    /// Votes received in the current (pre-)election.
    pub votes: BTreeMap<NodeId, bool>,
}

impl ProgressTracker {
    /// A tracker for `voters`, with no progress and no votes.
    pub fn new(voters: BTreeSet<NodeId>) -> ProgressTracker {
        ProgressTracker { voters, progress: BTreeMap::new(), votes: BTreeMap::new() }
    }

    /// Resets every voter's progress for a new leader whose last index is `last`.
    pub fn reset_progress(&mut self, last: Index, msgs_max: usize, bytes_max: u64) {
        self.progress = self
            .voters
            .iter()
            .map(|&id| (id, Progress::new(last.next(), Inflights::new(msgs_max, bytes_max))))
            .collect();
    }

    /// The index a majority of voters hold.
    pub fn committed_index(&self) -> Index {
        quorum::committed_index(&self.voters, |id| {
            self.progress.get(&id).map_or(Index(0), |pr| pr.match_index)
        })
    }

    /// Records `from`'s vote (the first one counts) and tallies.
    pub fn record_vote(&mut self, from: NodeId, granted: bool) -> VoteResult {
        self.votes.entry(from).or_insert(granted);
        quorum::vote_result(&self.voters, &self.votes)
    }

    /// Whether a majority of voters were recently active; clears the marks for the next
    /// round. `me` always counts as active.
    pub fn quorum_active(&mut self, me: NodeId) -> bool {
        let mut active = 0;
        for (&id, pr) in self.progress.iter_mut() {
            if id == me || pr.recent_active {
                active += 1;
            }
            pr.recent_active = false;
        }
        active >= quorum::majority(self.voters.len())
    }
}
