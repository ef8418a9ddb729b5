//! Membership changes by joint consensus (paper §6, thesis §4.3).
//!
//! 1. The host asks the leader for a change (`propose_conf_change`): add or remove voters,
//!    add learners, promote learners, several at once. Only one change runs at a time.
//! 2. The leader appends a configuration entry for the joint configuration C_old,new: the
//!    new voters, with the old ones as `voters_outgoing`.
//! 3. Every node uses the latest configuration in its log, committed or not (thesis §4.1):
//!    from the moment the joint entry is in a log, that node's elections and commitment need
//!    a majority of C_old and a majority of C_new. A conflicting append that removes the
//!    entry reverts the node to the configuration before it.
//! 4. Once the joint entry is committed, the leader appends, by itself, the entry for C_new
//!    alone.
//! 5. Once that entry is committed, the change is done. A leader that is not a voter of
//!    C_new steps down (thesis §4.2.2); until then it led without counting itself.
//!
//! No decision made under the joint configuration can contradict one made under C_old or
//! C_new alone, because the joint configuration needs a majority of both.

use crate::error::ConfChangeError;
use crate::membership::Membership;
use crate::planted::PlantedBug;
use crate::raft::Raft;
use crate::storage::LogStore;
use crate::types::{Entry, EntryKind, Index, NodeId, Role};
use bytes::Bytes;

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a learner: it receives the log but neither votes nor counts for commitment.
    AddLearner(NodeId),
    /// Remove a voter or a learner.
    Remove(NodeId),
}

/// The configurations a node's log holds: the latest committed one, and those in entries not
/// yet known committed, in log order.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConfigHistory {
    /// The latest configuration known committed (or from a snapshot), and its index.
    committed: (Index, Membership),
    /// Earlier committed configurations, oldest first, kept so that a snapshot taken at an
    /// older applied index records the configuration of its own index.
    older: Vec<(Index, Membership)>,
    /// Configuration entries after `committed`, in index order.
    pending: Vec<(Index, Membership)>,
}

impl ConfigHistory {
    /// A history starting from `membership`, committed at `index`.
    pub(crate) fn new(index: Index, membership: Membership) -> ConfigHistory {
        ConfigHistory { committed: (index, membership), older: Vec::new(), pending: Vec::new() }
    }

    /// The configuration in force: the latest in the log (thesis §4.1).
    pub(crate) fn latest(&self) -> &Membership {
        self.pending.last().map_or(&self.committed.1, |(_, m)| m)
    }

    /// The latest configuration known to be committed.
    pub(crate) fn committed(&self) -> &Membership {
        &self.committed.1
    }

    /// The index of the latest configuration entry.
    pub(crate) fn latest_index(&self) -> Index {
        self.pending.last().map_or(self.committed.0, |(index, _)| *index)
    }

    /// Whether `id` may start elections: it votes in the latest committed configuration or
    /// in a later one. A node removed by a configuration entry that is not yet committed may
    /// still be needed to elect a leader that completes the change (thesis §4.2.2): say the
    /// leader removed itself and crashed before C_new committed, and only it holds C_new.
    pub(crate) fn may_campaign(&self, id: NodeId) -> bool {
        self.committed.1.is_voter(id) || self.pending.iter().any(|(_, m)| m.is_voter(id))
    }

    /// Whether a configuration entry is not yet known committed.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records the configuration entries among `entries`, which follow the log's end.
    /// Returns whether there was any.
    pub(crate) fn appended(&mut self, entries: &[Entry]) -> bool {
        let before = self.pending.len();
        for entry in entries {
            if let EntryKind::Config(membership) = &entry.kind {
                self.pending.push((entry.index, Membership::clone(membership)));
            }
        }
        self.pending.len() != before
    }

    /// The log lost its entries from `index` on (a conflicting append replaced them).
    /// Returns whether a configuration entry went with them.
    pub(crate) fn truncated_from(&mut self, index: Index) -> bool {
        let before = self.pending.len();
        self.pending.retain(|(at, _)| *at < index);
        self.pending.len() != before
    }

    /// Entries up to `commit` are committed.
    pub(crate) fn committed_to(&mut self, commit: Index) {
        while self.pending.first().is_some_and(|(at, _)| *at <= commit) {
            let next = self.pending.remove(0);
            self.older.push(std::mem::replace(&mut self.committed, next));
        }
    }

    /// The committed configuration in force at `index` (at or after the oldest one kept).
    /// Forgets the ones before it, which no later snapshot can need.
    pub(crate) fn committed_at(&mut self, index: Index) -> Membership {
        // After this, `older[0]` is the last one at or before `index`, if any is.
        let keep_from = self.older.iter().rposition(|(at, _)| *at <= index).unwrap_or(0);
        self.older.drain(..keep_from);
        if self.committed.0 <= index {
            return self.committed.1.clone();
        }
        self.older.first().map_or(&self.committed.1, |(_, m)| m).clone()
    }

    /// The log was replaced by a snapshot with `membership` at `index`.
    pub(crate) fn restored(&mut self, index: Index, membership: Membership) {
        *self = ConfigHistory::new(index, membership);
    }
}

/// The joint configuration that applies `changes` to the simple configuration `current`.
fn joint_config(
    current: &Membership,
    changes: &[ConfChange],
) -> Result<Membership, ConfChangeError> {
    let mut voters = current.voters.clone();
    let mut learners = current.learners.clone();
    for &change in changes {
        if matches!(change, ConfChange::AddVoter(NodeId(0)) | ConfChange::AddLearner(NodeId(0))) {
            return Err(ConfChangeError::Invalid("node id 0 is reserved".to_string()));
        }
        match change {
            ConfChange::AddVoter(id) => {
                learners.remove(&id);
                voters.insert(id);
            }
            ConfChange::AddLearner(id) if voters.contains(&id) => {
                return Err(ConfChangeError::Invalid(format!(
                    "node {id} is a voter: remove it before adding it as a learner"
                )));
            }
            ConfChange::AddLearner(id) => {
                learners.insert(id);
            }
            ConfChange::Remove(id) if !voters.remove(&id) && !learners.remove(&id) => {
                return Err(ConfChangeError::Invalid(format!("node {id} is not a member")));
            }
            ConfChange::Remove(_) => {}
        }
    }
    if voters.is_empty() {
        return Err(ConfChangeError::Invalid("the change would leave no voter".to_string()));
    }
    Ok(Membership { voters, voters_outgoing: current.voters.clone(), learners })
}

impl<S: LogStore> Raft<S> {
    /// Steps 1-2: the leader appends the joint configuration for `changes`.
    pub(crate) fn propose_conf_change(
        &mut self,
        changes: &[ConfChange],
    ) -> Result<Index, ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader { leader: self.leader });
        }
        if let Some((to, _)) = self.transfer {
            return Err(ConfChangeError::TransferInProgress { to });
        }
        let current = self.configs.latest();
        let overlapping = self.config.has_bug(PlantedBug::OverlappingConfChanges);
        if (self.configs.has_pending() || current.is_joint()) && !overlapping {
            return Err(ConfChangeError::InProgress { index: self.configs.latest_index() });
        }
        let simple = Membership { voters_outgoing: Default::default(), ..current.clone() };
        let mut next = joint_config(&simple, changes)?;
        if self.config.has_bug(PlantedBug::ConfChangeWithoutJoint) {
            next.voters_outgoing.clear();
        }
        Ok(self.append_config(next))
    }

    /// Appends a configuration entry, which takes effect at once (step 3).
    fn append_config(&mut self, membership: Membership) -> Index {
        // Tell the followers the commit index reached so far before the new configuration
        // may drop some of them: a member removed now still learns that the joint entry
        // removing it committed, say.
        self.flush_commit_news();
        let index = self.log.last_index().next();
        tracing::info!(id = %self.id, term = %self.term, %index, %membership, "configuration change");
        let kind = EntryKind::Config(Box::new(membership));
        let entry = Entry { term: self.term, index, kind, data: Bytes::new() };
        self.configs.appended(std::slice::from_ref(&entry));
        self.log.push(entry);
        self.pending_broadcast = true;
        self.use_latest_config();
        index
    }

    /// Step 3: puts the latest configuration in the log in force. A leader starts tracking
    /// new members (probing them from its last index) and forgets removed ones.
    pub(crate) fn use_latest_config(&mut self) {
        let latest = self.configs.latest();
        if *latest == self.tracker.membership {
            return;
        }
        self.tracker.membership = latest.clone();
        if self.role == Role::Leader {
            let (last, now) = (self.log.last_index(), self.ticks);
            let (msgs_max, bytes_max) =
                (self.config.inflight_msgs_max, self.config.inflight_bytes_max);
            self.tracker.sync_progress(last, msgs_max, bytes_max, now);
        }
    }

    /// Steps 4-5, after every input: folds committed configurations; a leader leaves a
    /// committed joint configuration, and steps down once a C_new without it is committed.
    pub(crate) fn advance_membership(&mut self) {
        self.configs.committed_to(self.log.commit);
        if self.role != Role::Leader || self.configs.has_pending() {
            return;
        }
        let latest = self.configs.latest();
        if latest.is_joint() {
            let leave = Membership { voters_outgoing: Default::default(), ..latest.clone() };
            self.append_config(leave);
        } else if !latest.is_voter(self.id) {
            tracing::info!(id = %self.id, term = %self.term, "removed from the configuration; stepping down");
            self.become_follower(self.term, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[u64]) -> std::collections::BTreeSet<NodeId> {
        ids.iter().map(|&id| NodeId(id)).collect()
    }

    #[test]
    fn changes_build_a_joint_configuration() {
        let current = Membership { learners: ids(&[9]), ..Membership::new(ids(&[1, 2, 3])) };
        let changes = [
            ConfChange::Remove(NodeId(1)),
            ConfChange::Remove(NodeId(2)),
            ConfChange::AddVoter(NodeId(4)),
            ConfChange::AddVoter(NodeId(9)),
        ];
        let joint = joint_config(&current, &changes).unwrap();
        assert_eq!(joint.voters, ids(&[3, 4, 9]));
        assert_eq!(joint.voters_outgoing, ids(&[1, 2, 3]));
        assert!(joint.learners.is_empty(), "the promoted learner is still a learner");
    }

    #[test]
    fn invalid_changes_are_refused() {
        let current = Membership::new(ids(&[1]));
        let refused = |changes: &[ConfChange]| joint_config(&current, changes).is_err();
        assert!(refused(&[ConfChange::Remove(NodeId(1))]), "no voter left");
        assert!(refused(&[ConfChange::Remove(NodeId(7))]), "unknown node");
        assert!(refused(&[ConfChange::AddLearner(NodeId(1))]), "voter to learner");
        assert!(refused(&[ConfChange::AddVoter(NodeId(0))]), "node 0");
    }

    /// A configuration entry of term 1 at `index` naming `voters`.
    fn config_entry(index: u64, voters: &[u64]) -> Entry {
        let kind = EntryKind::Config(Box::new(Membership::new(ids(voters))));
        Entry { term: crate::types::Term(1), index: Index(index), kind, data: Bytes::new() }
    }

    #[test]
    fn history_follows_appends_truncations_and_commits() {
        let mut history = ConfigHistory::new(Index(0), Membership::new(ids(&[1])));
        history.appended(&[config_entry(3, &[1, 2]), config_entry(5, &[1, 2, 3])]);
        assert_eq!(history.latest().voters, ids(&[1, 2, 3]));
        history.truncated_from(Index(4));
        assert_eq!(history.latest().voters, ids(&[1, 2]), "the truncated config is forgotten");
        history.committed_to(Index(3));
        assert!(!history.has_pending());
        assert_eq!(history.latest_index(), Index(3));
        assert_eq!(history.committed_at(Index(2)).voters, ids(&[1]), "before the entry at 3");
        assert_eq!(history.committed_at(Index(3)).voters, ids(&[1, 2]));
    }

    /// Thesis §4.2.2: a node removed by an entry not yet committed may still campaign (it may
    /// be the only one holding that entry); once the removal commits, it may not.
    #[test]
    fn a_node_removed_by_an_uncommitted_entry_may_still_campaign() {
        let mut history = ConfigHistory::new(Index(0), Membership::new(ids(&[1, 2])));
        history.appended(&[config_entry(2, &[2])]);
        assert!(!history.latest().is_voter(NodeId(1)));
        assert!(history.may_campaign(NodeId(1)), "node 1 may still be needed");
        history.committed_to(Index(2));
        assert!(!history.may_campaign(NodeId(1)));
        assert!(!history.may_campaign(NodeId(9)), "a stranger never campaigns");
    }
}
