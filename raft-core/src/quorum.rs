//! Majority quorum math (paper §5.2 for votes, §5.3-§5.4 for commitment). Pure functions that
//! know nothing of roles or messages, tested by tables against a brute-force reference.

use crate::types::{Index, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// How many of `voters` make a majority.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest index that a majority of `voters` hold, given each voter's match index.
/// Voters missing from `match_index` count as holding nothing (index 0). An empty voter set
/// commits nothing.
pub fn committed_index(voters: &BTreeSet<NodeId>, match_index: impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index(0);
    }
    let mut matched: Vec<Index> = voters.iter().map(|&id| match_index(id)).collect();
    // Sorted from highest to lowest, the majority-th value is held by a majority.
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[majority(matched.len()) - 1]
}

/// Where an election stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority rejected: this election cannot be won.
    Lost,
    /// Neither yet.
    Pending,
}

/// Tallies `votes` (granted or not) of the `voters`; votes from non-voters do not count.
pub fn vote_result(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let (mut granted, mut rejected) = (0, 0);
    for voter in voters {
        match votes.get(voter) {
            Some(true) => granted += 1,
            Some(false) => rejected += 1,
            None => {}
        }
    }
    let needed = majority(voters.len());
    if granted >= needed {
        VoteResult::Won
    } else if rejected >= needed || voters.len() - rejected < needed {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(n: u64) -> BTreeSet<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    /// The reference: the largest index i such that at least a majority hold >= i.
    fn reference_committed(matched: &[u64]) -> u64 {
        (0..=matched.iter().copied().max().unwrap_or(0))
            .rev()
            .find(|&i| matched.iter().filter(|&&m| m >= i).count() >= majority(matched.len()))
            .unwrap_or(0)
    }

    #[test]
    fn committed_index_table() {
        let table: &[(&[u64], u64)] = &[
            (&[5], 5),
            (&[5, 3], 3),
            (&[5, 3, 1], 3),
            (&[1, 3, 5], 3),
            (&[2, 2, 9, 9], 2),
            (&[9, 9, 2, 2, 2], 2),
            (&[9, 9, 9, 2, 2], 9),
            (&[0, 0, 7, 7, 7, 7, 0], 7),
        ];
        for (matched, want) in table {
            let ids = voters(matched.len() as u64);
            let got = committed_index(&ids, |id| Index(matched[id.0 as usize - 1]));
            assert_eq!(got, Index(*want), "matched {matched:?}");
        }
    }

    #[test]
    fn committed_index_agrees_with_the_reference_on_all_small_inputs() {
        for n in 1..=5u32 {
            for code in 0..4u64.pow(n) {
                let matched: Vec<u64> = (0..n).map(|i| (code / 4u64.pow(i)) % 4).collect();
                let ids = voters(n as u64);
                let got = committed_index(&ids, |id| Index(matched[id.0 as usize - 1]));
                assert_eq!(got.0, reference_committed(&matched), "matched {matched:?}");
            }
        }
    }

    #[test]
    fn vote_result_table() {
        use VoteResult::*;
        // (voters, granted ids, rejected ids, result)
        let table: &[(u64, &[u64], &[u64], VoteResult)] = &[
            (1, &[1], &[], Won),
            (3, &[1], &[], Pending),
            (3, &[1, 2], &[], Won),
            (3, &[1], &[2], Pending),
            (3, &[1], &[2, 3], Lost),
            (4, &[1, 2], &[3], Pending),
            (4, &[1, 2], &[3, 4], Lost),
            (5, &[1, 2], &[3, 4], Pending),
            (5, &[1, 9], &[], Pending), // node 9 is not a voter
        ];
        for (n, granted, rejected, want) in table {
            let granted = granted.iter().map(|&id| (NodeId(id), true));
            let rejected = rejected.iter().map(|&id| (NodeId(id), false));
            let votes: BTreeMap<NodeId, bool> = granted.chain(rejected).collect();
            assert_eq!(vote_result(&voters(*n), &votes), *want, "{n} voters, {votes:?}");
        }
    }
}
