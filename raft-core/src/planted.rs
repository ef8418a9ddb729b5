//! Deliberately broken Raft rules, for proving that the simulator's checkers can fail.
//!
//! Each variant names the rule it breaks. They are only selectable with the `planted-bugs`
//! feature (`Config::planted_bug`); without it, every check for them compiles to `false`.

/// A rule to break on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// Commit an entry of an earlier term by counting replicas (breaks paper §5.4.2, Figure 8).
    CommitEarlierTerm,
    /// Send a vote response before the vote is durable (breaks the persist-before-answer rule,
    /// paper Figure 2: a restarted node can vote twice in one term).
    VoteBeforePersist,
    /// Grant votes without the up-to-date check (breaks paper §5.4.1, Leader Completeness).
    SkipUpToDateCheck,
    /// Count the leader's own log toward the quorum before it is durable (breaks thesis
    /// §10.2.1: a crash loses an entry that was reported committed).
    LeaderCountsUnpersisted,
    /// Accept an append without checking that `prev` matches (breaks Log Matching, §5.3).
    SkipConsistencyCheck,
    /// Do not resend appends that were lost in the replicate state when a heartbeat answer
    /// shows the follower is behind (breaks liveness: the follower waits for the next
    /// proposal, forever if none comes).
    ForgetLostAppends,
    /// Serve a ReadIndex read before the leader committed an entry of its own term (breaks
    /// thesis §6.4: the new leader's commit index may lag, so the read misses acknowledged
    /// writes).
    ReadBeforeOwnTermCommit,
    /// Release a ReadIndex read without the heartbeat round that confirms leadership (breaks
    /// thesis §6.4: a deposed leader that has not heard of its successor serves stale reads).
    ReadWithoutHeartbeatRound,
    /// Install a snapshot by dropping the whole log even when it holds the snapshot's last
    /// entry (breaks paper §7: the consistent suffix, possibly acknowledged to the leader and
    /// counted toward commitment, is lost).
    SnapshotDropsSuffix,
    /// Switch straight to the new configuration, without the joint phase (breaks paper §6:
    /// disjoint majorities of the old and new configurations can elect two leaders).
    ConfChangeWithoutJoint,
    /// Accept a membership change while another is under way (breaks the one-change-at-a-time
    /// rule: a configuration can be joined with one nobody committed).
    OverlappingConfChanges,
}

impl PlantedBug {
    /// Every planted bug, for tests that try them all.
    pub const ALL: [PlantedBug; 11] = [
        PlantedBug::CommitEarlierTerm,
        PlantedBug::VoteBeforePersist,
        PlantedBug::SkipUpToDateCheck,
        PlantedBug::LeaderCountsUnpersisted,
        PlantedBug::SkipConsistencyCheck,
        PlantedBug::ForgetLostAppends,
        PlantedBug::ReadBeforeOwnTermCommit,
        PlantedBug::ReadWithoutHeartbeatRound,
        PlantedBug::SnapshotDropsSuffix,
        PlantedBug::ConfChangeWithoutJoint,
        PlantedBug::OverlappingConfChanges,
    ];

    /// The name used on the command line of `raft-sim --planted-bug`.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::CommitEarlierTerm => "commit-earlier-term",
            PlantedBug::VoteBeforePersist => "vote-before-persist",
            PlantedBug::SkipUpToDateCheck => "skip-up-to-date-check",
            PlantedBug::LeaderCountsUnpersisted => "leader-counts-unpersisted",
            PlantedBug::SkipConsistencyCheck => "skip-consistency-check",
            PlantedBug::ForgetLostAppends => "forget-lost-appends",
            PlantedBug::ReadBeforeOwnTermCommit => "read-before-own-term-commit",
            PlantedBug::ReadWithoutHeartbeatRound => "read-without-heartbeat-round",
            PlantedBug::SnapshotDropsSuffix => "snapshot-drops-suffix",
            PlantedBug::ConfChangeWithoutJoint => "conf-change-without-joint",
            PlantedBug::OverlappingConfChanges => "overlapping-conf-changes",
        }
    }

    /// The bug named `name`, if any.
    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}
