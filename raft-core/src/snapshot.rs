//! Snapshots and log compaction (paper §7).
//!
//! 1. The host's state machine takes a snapshot at an applied index and records it in its
//!    log store; the store may then drop the log prefix the snapshot covers
//!    ([`crate::RawNode::compactable_index`] says how far).
//! 2. A leader that must send a follower entries it no longer holds sends its store's latest
//!    snapshot instead (`InstallSnapshot`, the description only: the host's transport moves
//!    the bytes) and waits, sending nothing else to that follower, until the follower
//!    acknowledges it, the host reports it failed, or an election timeout passes.
//! 3. The follower, if its log already holds the snapshot's last entry, keeps its log (the
//!    suffix after that entry is consistent with the leader's) and just learns the commit
//!    index. Otherwise it hands the snapshot to its host in a Ready: the host installs it
//!    (dropping the log it covers and any inconsistent suffix), restores its state machine
//!    from it, and only then is the acknowledgement sent.
//! 4. The leader, seeing the acknowledgement, probes from just after the snapshot.

use crate::message::{AppendResult, MessageBody};
use crate::planted::PlantedBug;
use crate::raft::Raft;
use crate::storage::LogStore;
use crate::types::{NodeId, SnapshotMeta};

impl<S: LogStore> Raft<S> {
    /// Step 2: sends `to` the latest snapshot, if the store has one.
    pub(crate) fn send_snapshot(&mut self, to: NodeId) {
        let snapshot = self.log.store.snapshot();
        if snapshot.index < self.log.first_index().prev() || snapshot.index.0 == 0 {
            tracing::warn!(id = %self.id, %to, "entries compacted without a snapshot covering them");
            return;
        }
        let now = self.ticks;
        let Some(pr) = self.tracker.progress.get_mut(&to) else { return };
        pr.become_snapshot(snapshot.index, now);
        tracing::debug!(id = %self.id, %to, index = %snapshot.index, "sending snapshot");
        self.send(to, self.term, MessageBody::InstallSnapshot { snapshot });
    }

    /// Step 3: a snapshot from the leader of this term.
    pub(crate) fn handle_snapshot(&mut self, from: NodeId, snapshot: SnapshotMeta) {
        if !self.follow(from) {
            return;
        }
        let match_index = if snapshot.index <= self.log.commit {
            // Old news: everything it covers is already committed here.
            self.log.commit
        } else if self.log.matches(snapshot.last())
            && !self.config.has_bug(PlantedBug::SnapshotDropsSuffix)
        {
            // The log already holds the snapshot's last entry: keep it and its suffix.
            self.log.commit_to(snapshot.index);
            snapshot.index
        } else {
            tracing::info!(id = %self.id, index = %snapshot.index, "restoring from a snapshot");
            let index = snapshot.index;
            self.configs.restored(index, snapshot.membership.clone());
            self.log.restore(snapshot);
            self.use_latest_config();
            index
        };
        let result = AppendResult::Accepted { match_index };
        self.send_after_persist(from, self.term, MessageBody::AppendResponse(result));
    }

    /// The host could not deliver the snapshot to `peer`: probe again (which sends it anew).
    pub(crate) fn report_snapshot_failure(&mut self, peer: NodeId) {
        if self.role != crate::types::Role::Leader {
            return;
        }
        if let Some(pr) = self.tracker.progress.get_mut(&peer) {
            if matches!(pr.state, crate::tracker::ProgressState::Snapshot { .. }) {
                pr.become_probe();
            }
        }
    }
}
