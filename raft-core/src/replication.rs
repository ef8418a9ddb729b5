//! Log replication (paper §5.3) and commitment (§5.4.2, thesis §10.2.1).
//!
//! Leader side: proposals append to the leader's log and are sent in batches; each follower is
//! probed until the logs agree, then streamed to within its in-flight window. A rejection
//! carries a hint so the leader skips back a whole term per round trip. An entry commits when
//! a majority holds it durably and it is of the leader's own term (Figure 8); the leader's own
//! log counts only once the host reported it durable, so the host may write it in parallel
//! with sending it.
//!
//! Follower side: the consistency check on `prev`, truncation of a conflicting suffix, and
//! the commit index learned from the leader.

use crate::error::{ProposeError, StoreError};
use crate::message::{AppendResult, Message, MessageBody};
use crate::node::Proposed;
use crate::planted::PlantedBug;
use crate::raft::Raft;
use crate::storage::LogStore;
use crate::tracker::{ProgressState, Rejection};
use crate::types::{Entry, EntryId, EntryKind, Index, NodeId, Role, ENTRY_HEADER_BYTES};
use bytes::Bytes;

impl<S: LogStore> Raft<S> {
    /// A client's proposal at this node: a leader appends it; a follower forwards it to the
    /// leader it knows (if forwarding is on); otherwise it is refused with the leader hint.
    pub(crate) fn propose(&mut self, data: Bytes) -> Result<Proposed, ProposeError> {
        match (self.role, self.leader) {
            (Role::Leader, _) => self.append_proposal(data).map(Proposed::Appended),
            (_, Some(leader)) if self.config.proposal_forwarding => {
                self.forward(leader, data);
                Ok(Proposed::Forwarded(leader))
            }
            (_, leader) => Err(ProposeError::NotLeader { leader }),
        }
    }

    /// Queues `data` for `leader`: in the Propose message queued last, if that one goes to
    /// `leader` too and stays within `append_bytes_max`, so that the proposals of one turn
    /// travel in one message (one frame to encode and decode, one step at the leader).
    fn forward(&mut self, leader: NodeId, data: Bytes) {
        let size = data.len() as u64 + ENTRY_HEADER_BYTES;
        if let Some(Message { to, term, body: MessageBody::Propose { proposals }, .. }) =
            self.msgs.last_mut()
        {
            let fits = self.forward_bytes + size <= self.config.append_bytes_max;
            if *to == leader && *term == self.term && fits {
                proposals.push(data);
                self.forward_bytes += size;
                return;
            }
        }
        self.forward_bytes = size;
        self.send(leader, self.term, MessageBody::Propose { proposals: vec![data] });
    }

    /// Proposals forwarded by `from`, in order. Only a leader takes them; anyone else drops
    /// them (a proposal is forwarded at most once, so it can never circle), and so does a
    /// leader that refuses proposals right now. The proposers time out in both cases.
    pub(crate) fn handle_forwarded_proposals(&mut self, from: NodeId, proposals: Vec<Bytes>) {
        if self.role != Role::Leader {
            tracing::debug!(id = %self.id, %from, "forwarded proposals dropped: not the leader");
            return;
        }
        let count = proposals.len();
        for (taken, data) in proposals.into_iter().enumerate() {
            if let Err(error) = self.append_proposal(data) {
                let dropped = count - taken;
                tracing::debug!(id = %self.id, %from, %error, dropped, "forwarded proposals dropped");
                return;
            }
        }
    }

    /// Appends a proposal to the leader's log, unless a leadership transfer is under way or
    /// too many bytes are uncommitted. It is sent to followers with the next Ready.
    fn append_proposal(&mut self, data: Bytes) -> Result<Index, ProposeError> {
        if let Some((to, _)) = self.transfer {
            return Err(ProposeError::TransferInProgress { to });
        }
        let index = self.log.last_index().next();
        let entry = Entry { term: self.term, index, kind: EntryKind::Normal, data };
        let size = entry.size_bytes();
        let uncommitted_bytes_max = self.config.uncommitted_bytes_max;
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > uncommitted_bytes_max {
            return Err(ProposeError::UncommittedFull { uncommitted_bytes_max });
        }
        self.uncommitted_bytes += size;
        self.log.push(entry);
        self.pending_broadcast = true;
        Ok(index)
    }

    /// Sends what new entries are waiting to every follower that can take them, and tells
    /// every follower a commit index that advanced since the last Ready.
    pub(crate) fn flush_broadcast(&mut self) {
        if std::mem::take(&mut self.pending_broadcast) && self.role == Role::Leader {
            self.broadcast_append(false);
        }
        self.flush_commit_news();
    }

    /// Tells every follower a commit index that advanced since the last Ready (leader only).
    pub(crate) fn flush_commit_news(&mut self) {
        if std::mem::take(&mut self.pending_commit_news) && self.role == Role::Leader {
            self.tell_commit();
        }
    }

    /// Tells every follower the commit index, with one message each at most: the appends
    /// already queued for this Ready carry it, and a follower with none queued gets an append
    /// (empty if it is up to date). A commit that advanced several times in one turn (on the
    /// leader's own sync and on each follower's answer) so costs one message per follower, not
    /// one per advance, and one answer back.
    ///
    /// Raising a queued append's commit is safe: this leader's log only grows in its term, and
    /// a follower commits no further than the last entry the append proves it holds
    /// (`min(commit, last new index)`, in `handle_append`).
    fn tell_commit(&mut self) {
        let (term, commit) = (self.term, self.log.commit);
        let mut told = Vec::new();
        for msg in &mut self.msgs {
            if let MessageBody::Append { commit: carried, .. } = &mut msg.body {
                if msg.term == term {
                    *carried = commit;
                    told.push(msg.to);
                }
            }
        }
        for peer in self.peers() {
            if !told.contains(&peer) && self.maybe_send_append(peer, true) {
                self.send_appends(peer);
            }
        }
    }

    /// Sends appends to every follower; with `send_if_empty`, also an empty one to followers
    /// that are up to date (to tell them a new commit index).
    fn broadcast_append(&mut self, send_if_empty: bool) {
        for peer in self.peers() {
            if self.maybe_send_append(peer, send_if_empty) {
                self.send_appends(peer);
            }
        }
    }

    /// Sends as many appends to `to` as its progress allows.
    pub(crate) fn send_appends(&mut self, to: NodeId) {
        while self.maybe_send_append(to, false) {}
    }

    /// Sends one append to `to` unless its progress is paused or (without `send_if_empty`) it
    /// has nothing new. Returns whether entries were sent (so the caller may send more).
    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let last = self.log.last_index();
        let Some(pr) = self.tracker.progress.get(&to) else { return false };
        if pr.is_paused() {
            return false;
        }
        let next_index = pr.next_index;
        let prev_index = next_index.prev();
        let Some(prev_term) = self.log.term(prev_index) else {
            // The entry was compacted away; only a snapshot can help this follower.
            self.send_snapshot(to);
            return false;
        };
        let entries = match self.log.entries(next_index, last.next(), self.config.append_bytes_max)
        {
            Ok(entries) => entries,
            Err(StoreError::Compacted { .. }) => {
                self.send_snapshot(to);
                return false;
            }
            Err(error) => {
                tracing::warn!(%error, %to, "cannot read entries for follower; retrying later");
                return false;
            }
        };
        let Some(pr) = self.tracker.progress.get_mut(&to) else { return false };
        if entries.is_empty() && !send_if_empty {
            return false;
        }
        let sent_any = !entries.is_empty();
        let bytes = entries.iter().map(Entry::size_bytes).sum();
        pr.sent_append(entries.last().map_or(prev_index, |e| e.index), bytes);
        let prev = EntryId::new(prev_term, prev_index);
        let commit = self.log.commit;
        self.send(to, self.term, MessageBody::Append { prev, entries, commit });
        sent_any
    }

    /// Sends every follower a heartbeat carrying a commit index it is known to hold.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        self.reads.round_sent();
        for peer in self.peers() {
            let matched = self.tracker.progress.get(&peer).map_or(Index(0), |pr| pr.match_index);
            let commit = self.log.commit.min(matched);
            let read_round = self.reads.round;
            self.send(peer, self.term, MessageBody::Heartbeat { commit, read_round });
        }
    }

    /// An append from the leader of the current term.
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev: EntryId,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        if !self.follow(from) {
            return;
        }
        if prev.index < self.log.commit {
            // Everything up to the commit index already matches the leader.
            let result = AppendResult::Accepted { match_index: self.log.commit };
            self.send_after_persist(from, self.term, MessageBody::AppendResponse(result));
            return;
        }
        let consistent = self.log.matches(prev)
            || (self.config.has_bug(PlantedBug::SkipConsistencyCheck)
                && prev.index <= self.log.last_index());
        if !consistent {
            let hint = self.log.find_conflict_by_term(prev.index, prev.term);
            let result = AppendResult::Rejected { rejected: prev.index, hint };
            self.send_after_persist(from, self.term, MessageBody::AppendResponse(result));
            return;
        }
        let last_new = prev.index.plus(entries.len() as u64);
        if let Some(conflict) = self.log.find_conflict(&entries) {
            if conflict <= self.log.commit {
                // Only a broken leader overwrites a committed entry; refuse rather than obey.
                tracing::error!(%from, %conflict, commit = %self.log.commit,
                    "append would overwrite a committed entry; ignored");
                return;
            }
            let mut entries = entries;
            entries.drain(..(conflict.0 - prev.index.0 - 1) as usize);
            let lost_config = self.configs.truncated_from(conflict);
            let new_config = self.configs.appended(&entries);
            self.log.append(entries);
            if lost_config || new_config {
                self.use_latest_config();
            }
        }
        self.log.commit_to(commit.min(last_new));
        let result = AppendResult::Accepted { match_index: last_new };
        self.send_after_persist(from, self.term, MessageBody::AppendResponse(result));
    }

    /// A heartbeat from the leader of the current term.
    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, commit: Index, read_round: u64) {
        if !self.follow(from) {
            return;
        }
        self.log.commit_to(commit.min(self.log.last_index()));
        let body = MessageBody::HeartbeatResponse { read_round };
        self.send_after_persist(from, self.term, body);
    }

    /// Accepts `from` as the leader of the current term. Returns false (and changes nothing)
    /// if this node is itself the leader: two leaders in one term would break Election Safety.
    pub(crate) fn follow(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            tracing::error!(id = %self.id, %from, term = %self.term, "another leader in my term");
            return false;
        }
        if self.role != Role::Follower {
            self.become_follower(self.term, Some(from));
        }
        self.leader = Some(from);
        self.election_elapsed = 0;
        true
    }

    /// A follower's answer to an append.
    pub(crate) fn handle_append_response(&mut self, from: NodeId, result: AppendResult) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        match result {
            AppendResult::Accepted { match_index } => {
                let now = self.ticks;
                let Some(pr) = self.tracker.progress.get_mut(&from) else { return };
                pr.heard_at = now;
                if match_index > last {
                    tracing::warn!(%from, %match_index, %last, "follower claims a match beyond my log");
                    return;
                }
                let news = pr.update_match(match_index);
                if let ProgressState::Snapshot { index, .. } = pr.state {
                    if pr.match_index >= index {
                        pr.become_probe(); // the snapshot is in; find where the logs agree
                    }
                }
                if pr.state == ProgressState::Probe && match_index >= pr.match_index {
                    pr.become_replicate();
                }
                self.maybe_send_timeout_now(from);
                if news && self.maybe_commit() {
                    self.pending_commit_news = true;
                }
                self.send_appends(from);
            }
            AppendResult::Rejected { rejected, hint } => {
                // Skip back over the follower's whole conflicting term, and over ours.
                let hint_next = if hint.term.0 > 0 {
                    self.log.find_conflict_by_term(hint.index, hint.term).index.next()
                } else {
                    hint.index.next()
                };
                let now = self.ticks;
                let Some(pr) = self.tracker.progress.get_mut(&from) else { return };
                pr.heard_at = now;
                match pr.reject(rejected, hint_next) {
                    Rejection::Stale => {}
                    Rejection::Probe => {
                        self.maybe_send_append(from, true);
                    }
                    Rejection::LostAcknowledged { acknowledged } => {
                        let now_matched = pr.match_index;
                        tracing::warn!(id = %self.id, follower = %from, %acknowledged,
                            %now_matched,
                            "follower rejected entries it had acknowledged (lost from its \
                             disk, or a late answer); sending them again");
                        self.maybe_send_append(from, true);
                    }
                }
            }
        }
    }

    /// A follower's answer to a heartbeat: it is alive, so resume a paused probe and send what
    /// it lacks. If everything was already sent but not acknowledged, the appends (or their
    /// answers) may have been lost: an empty append at `next_index - 1` makes the follower
    /// either confirm the match or reject it, which starts a probe from its real match.
    pub(crate) fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let now = self.ticks;
        let Some(pr) = self.tracker.progress.get_mut(&from) else { return };
        pr.heard_at = now;
        pr.probe_sent = false;
        let read_news = read_round > pr.read_round_acked;
        pr.read_round_acked = pr.read_round_acked.max(read_round);
        if let ProgressState::Snapshot { sent_at, .. } = pr.state {
            if now.saturating_sub(sent_at) >= u64::from(self.config.election_ticks) {
                // No answer to the snapshot for an election timeout: assume it was lost.
                pr.become_probe();
            }
        }
        if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
            // The follower is alive but the window is full: an append or its answer was
            // probably lost. Free one slot; a gap makes the next append fail and probe.
            pr.inflights.free_first();
        }
        let resend = !self.config.has_bug(PlantedBug::ForgetLostAppends);
        if pr.match_index < last && self.maybe_send_append(from, resend) {
            self.send_appends(from);
        }
        if read_news {
            self.release_confirmed_reads();
        }
        // A lost TimeoutNow is sent again while the caught-up target keeps answering.
        self.maybe_send_timeout_now(from);
    }

    /// Entries up to `index` are durable here. On a leader this may commit.
    pub(crate) fn on_persisted(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let persisted = self.log.persisted_index();
        if let Some(own) = self.tracker.progress.get_mut(&self.id) {
            own.update_match(persisted);
        }
        if self.maybe_commit() {
            self.pending_commit_news = true;
        }
    }

    /// Advances the commit index to the highest index a majority holds, if that entry is of
    /// the current term (paper §5.4.2: never commit an earlier term's entry by counting).
    pub(crate) fn maybe_commit(&mut self) -> bool {
        if self.config.has_bug(PlantedBug::LeaderCountsUnpersisted) {
            let last = self.log.last_index();
            if let Some(own) = self.tracker.progress.get_mut(&self.id) {
                own.update_match(last);
            }
        }
        let index = self.tracker.committed_index();
        if index <= self.log.commit {
            return false;
        }
        let own_term = self.log.term(index) == Some(self.term);
        if !own_term && !self.config.has_bug(PlantedBug::CommitEarlierTerm) {
            return false;
        }
        let advanced = self.log.commit_to(index);
        if advanced {
            self.register_reads_waiting_for_commit();
        }
        advanced
    }
}
