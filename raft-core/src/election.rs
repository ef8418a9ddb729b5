//! Leader election (paper §5.2, §5.4.1), with PreVote (thesis §9.6) and CheckQuorum (thesis
//! §6.2).
//!
//! ```text
//!            timeout               pre-vote quorum          vote quorum
//!  Follower ---------> PreCandidate ---------------> Candidate ----------> Leader
//!     ^                    |  pre-vote lost / newer term  |  lost / newer term  |
//!     +--------------------+------------------------------+---------------------+
//!                       (a leader also steps down when CheckQuorum fails)
//! ```

use crate::message::MessageBody;
use crate::planted::PlantedBug;
use crate::quorum::VoteResult;
use crate::raft::Raft;
use crate::storage::LogStore;
use crate::types::{Entry, EntryId, EntryKind, NodeId, Role, Term};
use bytes::Bytes;

impl<S: LogStore> Raft<S> {
    /// A follower's or candidate's tick: campaign once the randomized timeout expires.
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout {
            self.start_election();
        }
    }

    /// Starts an election now (an election timeout, or the host's explicit request): a PreVote
    /// round first when enabled. Leaders, and nodes that vote in no configuration that may
    /// still be in force, do nothing.
    pub(crate) fn start_election(&mut self) {
        if self.role == Role::Leader || !self.configs.may_campaign(self.id) {
            return;
        }
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    /// Asks the voters whether they would vote for this node in the next term, without
    /// changing its term or vote (thesis §9.6). A node cut off from the majority thus never
    /// raises its term, and cannot depose a healthy leader when it rejoins.
    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.tracker.votes.clear();
        self.reset_timers();
        tracing::debug!(id = %self.id, term = %self.term, "became pre-candidate");
        if self.tracker.record_vote(self.id, true) == VoteResult::Won {
            self.become_candidate(false);
            return;
        }
        let last = self.log.last_entry_id();
        let term = self.term.next();
        for peer in self.voter_peers() {
            self.send(peer, term, MessageBody::PreVote { last });
        }
    }

    /// Starts a real election in the next term, voting for itself (paper §5.2). The vote
    /// requests leave only after the new term and vote are durable: a candidate that crashed
    /// before persisting them could otherwise vote again in the same term. With `transfer`,
    /// the requests say the old leader handed over, so voters in its lease answer them.
    pub(crate) fn become_candidate(&mut self, transfer: bool) {
        self.enter_term(self.term.next());
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.tracker.votes.clear();
        self.reset_timers();
        tracing::debug!(id = %self.id, term = %self.term, "became candidate");
        if self.tracker.record_vote(self.id, true) == VoteResult::Won {
            self.become_leader();
            return;
        }
        let last = self.log.last_entry_id();
        for peer in self.voter_peers() {
            self.send_after_persist(peer, self.term, MessageBody::Vote { last, transfer });
        }
    }

    /// Takes office: resets every follower's progress and appends a no-op entry of the new
    /// term, whose commitment commits everything before it (paper §5.4.2, §8).
    pub(crate) fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.tracker.votes.clear();
        self.reset_timers();
        self.uncommitted_bytes = 0;
        self.transfer = None;
        let last = self.log.last_index();
        let (msgs_max, bytes_max) = (self.config.inflight_msgs_max, self.config.inflight_bytes_max);
        self.tracker.reset_progress(last, msgs_max, bytes_max, self.ticks);
        if let Some(own) = self.tracker.progress.get_mut(&self.id) {
            own.update_match(self.log.persisted_index());
        }
        let noop = Entry {
            term: self.term,
            index: last.next(),
            kind: EntryKind::Noop,
            data: Bytes::new(),
        };
        self.log.push(noop);
        self.pending_broadcast = true;
        tracing::debug!(id = %self.id, term = %self.term, "became leader");
    }

    /// A vote or pre-vote request in the current term (a pre-vote may carry `term + 1`).
    /// Grants it only to a candidate whose log is at least as up to date (§5.4.1), and at most
    /// one real vote per term (§5.2).
    pub(crate) fn handle_vote_request(
        &mut self,
        from: NodeId,
        msg_term: Term,
        last: EntryId,
        pre_vote: bool,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && msg_term > self.term);
        let up_to_date = last.is_up_to_date_with(self.log.last_entry_id())
            || self.config.has_bug(PlantedBug::SkipUpToDateCheck);
        let granted = can_vote && up_to_date;
        if pre_vote {
            // A granted pre-vote answers in the term asked about; nothing changes here.
            let term = if granted { msg_term } else { self.term };
            self.send_after_persist(from, term, MessageBody::PreVoteResponse { granted });
            return;
        }
        if granted {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        let body = MessageBody::VoteResponse { granted };
        if granted && self.config.has_bug(PlantedBug::VoteBeforePersist) {
            self.send(from, self.term, body);
        } else {
            self.send_after_persist(from, self.term, body);
        }
    }

    /// A vote or pre-vote response. Counts it if this node is still asking, and moves on once
    /// the election is won or lost.
    pub(crate) fn handle_vote_response(
        &mut self,
        from: NodeId,
        msg_term: Term,
        granted: bool,
        pre_vote: bool,
    ) {
        let asking = if pre_vote {
            // Granted pre-votes come in the term asked about; rejections in ours.
            let expected = if granted { self.term.next() } else { self.term };
            self.role == Role::PreCandidate && msg_term == expected
        } else {
            self.role == Role::Candidate
        };
        if !asking {
            return;
        }
        match self.tracker.record_vote(from, granted) {
            VoteResult::Won if pre_vote => self.become_candidate(false),
            VoteResult::Won => self.become_leader(),
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    /// A leader's tick: heartbeats every `heartbeat_ticks`, and with CheckQuorum a step-down
    /// as soon as `election_ticks` ticks passed without hearing from a majority (thesis
    /// §6.2). Followers campaign no earlier than `election_ticks` after their last contact
    /// with the leader, so (with clocks ticking at about the same rate) a cut-off leader has
    /// stepped down by about the time a new one can be elected.
    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.tick_transfer();
        // A leader is its own lease: it keeps ignoring disruptive vote requests while in office.
        self.election_elapsed = 0;
        let election_ticks = u64::from(self.config.election_ticks);
        if self.config.check_quorum
            && !self.tracker.quorum_heard_within(self.id, self.ticks, election_ticks)
        {
            tracing::info!(id = %self.id, term = %self.term, "no quorum heard; stepping down");
            self.become_follower(self.term, None);
            return;
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }
}
