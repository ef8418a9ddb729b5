//! Cluster membership: the voters, the outgoing voters of a joint configuration, and the
//! learners (paper §6, thesis §4.3), with the quorum rules that follow from them.
//!
//! A simple configuration has one set of voters; a decision (an election, a commit) needs a
//! majority of it. A joint configuration C_old,new has two: `voters` (C_new) and
//! `voters_outgoing` (C_old), and a decision needs a majority of each, so no decision made
//! under C_old alone or C_new alone can contradict one made under the joint configuration.
//! Learners receive the log but never vote and never count toward a commit.

use crate::quorum::{self, VoteResult};
use crate::types::{Index, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A configuration of the cluster.
///
/// Invariants: `voters` is not empty (except for a node that has not yet learned any
/// configuration); a learner is in neither voter set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// The voters (C_new while joint).
    pub voters: BTreeSet<NodeId>,
    /// The outgoing voters (C_old) while the configuration is joint; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Nodes that receive the log but neither vote nor count for commitment.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A simple configuration of `voters`.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership { voters: voters.into_iter().collect(), ..Membership::default() }
    }

    /// Whether this is a joint configuration C_old,new.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in this configuration (in either half while joint).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a voter (of either half) or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every node the leader replicates to: voters of both halves and learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let voters = self.voters.iter().chain(&self.voters_outgoing);
        voters.chain(&self.learners).copied().collect()
    }

    /// Every voter, of both halves.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.voters_outgoing).copied().collect()
    }

    /// The highest index a quorum holds: while joint, the lower of the two halves' values.
    pub fn committed_index(&self, match_index: impl Fn(NodeId) -> Index) -> Index {
        let incoming = quorum::committed_index(&self.voters, &match_index);
        if !self.is_joint() {
            return incoming;
        }
        incoming.min(quorum::committed_index(&self.voters_outgoing, &match_index))
    }

    /// The outcome of an election: won only if won in both halves, lost if lost in either.
    pub fn vote_result(&self, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
        let incoming = quorum::vote_result(&self.voters, votes);
        if !self.is_joint() {
            return incoming;
        }
        match (incoming, quorum::vote_result(&self.voters_outgoing, votes)) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// Whether the nodes for which `yes` holds form a quorum (a majority of each half).
    pub fn is_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        let majority_of = |set: &BTreeSet<NodeId>| {
            set.iter().filter(|&&id| yes(id)).count() >= quorum::majority(set.len())
        };
        majority_of(&self.voters) && (!self.is_joint() || majority_of(&self.voters_outgoing))
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &BTreeSet<NodeId>| {
            set.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
        };
        write!(f, "voters=({})", list(&self.voters))?;
        if self.is_joint() {
            write!(f, "&({})", list(&self.voters_outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners=({})", list(&self.learners))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|&id| NodeId(id)).collect()
    }

    fn joint(new: &[u64], old: &[u64]) -> Membership {
        Membership { voters: set(new), voters_outgoing: set(old), learners: BTreeSet::new() }
    }

    /// Joint commitment takes the lower of the two halves' majorities.
    #[test]
    fn joint_commit_needs_a_majority_of_each_half() {
        /// (new, old, match index of nodes 1..=6, committed)
        type Case = (&'static [u64], &'static [u64], [u64; 6], u64);
        let table: [Case; 4] = [
            (&[1, 2, 3], &[], [5, 5, 1, 0, 0, 0], 5),
            (&[3, 4, 5], &[1, 2, 3], [5, 5, 5, 1, 1, 0], 1),
            (&[3, 4, 5], &[1, 2, 3], [5, 5, 1, 5, 5, 0], 5),
            (&[4, 5, 6], &[1, 2, 3], [9, 9, 9, 2, 7, 7], 7),
        ];
        for (new, old, matched, want) in table {
            let m = joint(new, old);
            let got = m.committed_index(|id| Index(matched[id.0 as usize - 1]));
            assert_eq!(got, Index(want), "{m} with {matched:?}");
        }
    }

    /// A joint election is won only in both halves and lost as soon as either half is lost.
    #[test]
    fn joint_election_needs_both_halves() {
        let m = joint(&[3, 4, 5], &[1, 2, 3]);
        let votes = |granted: &[u64], rejected: &[u64]| {
            let yes = granted.iter().map(|&id| (NodeId(id), true));
            yes.chain(rejected.iter().map(|&id| (NodeId(id), false))).collect()
        };
        assert_eq!(m.vote_result(&votes(&[1, 2, 3], &[])), VoteResult::Pending);
        assert_eq!(m.vote_result(&votes(&[1, 3, 4], &[])), VoteResult::Won);
        assert_eq!(m.vote_result(&votes(&[1, 2, 3], &[4, 5])), VoteResult::Lost);
        assert!(m.is_quorum(|id| [2, 3, 4].contains(&id.0)));
        assert!(!m.is_quorum(|id| [1, 2, 4].contains(&id.0)));
    }

    #[test]
    fn learners_are_members_but_not_voters() {
        let m = Membership { learners: set(&[9]), ..Membership::new(set(&[1, 2])) };
        assert!(!m.is_voter(NodeId(9)));
        assert_eq!(m.members(), set(&[1, 2, 9]));
        assert_eq!(m.to_string(), "voters=(1,2) learners=(9)");
        assert!(!m.is_quorum(|id| id == NodeId(1) || id == NodeId(9)));
    }
}
