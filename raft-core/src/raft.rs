//! The shared state of one Raft node and the rules every role obeys: the term rules of paper
//! §5.1 (and their PreVote/CheckQuorum refinements, thesis §9.6 and §4.2.3), role changes, and
//! the dispatch of each message to its handler in `election.rs` or `replication.rs`.

use crate::confchange::ConfigHistory;
use crate::config::Config;
use crate::error::StepError;
use crate::log::RaftLog;
use crate::membership::Membership;
use crate::message::{AppendResult, Message, MessageBody};
use crate::read_index::ReadQueue;
use crate::rng::Rng;
use crate::storage::LogStore;
use crate::tracker::ProgressTracker;
use crate::types::{EntryId, EntryKind, HardState, Index, NodeId, Role, SoftState, Term};

/// One node's Raft state. Driven only through [`crate::RawNode`].
pub(crate) struct Raft<S> {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    /// The current term. Invariant: never decreases.
    pub(crate) term: Term,
    /// The vote cast in `term`. Invariant: a leader or candidate voted for itself.
    pub(crate) vote: Option<NodeId>,
    /// The leader known in `term`.
    pub(crate) leader: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) log: RaftLog<S>,
    pub(crate) tracker: ProgressTracker,
    /// Ticks since the election timer was last reset (by a leader's message, a granted vote,
    /// or a role change). Always 0 on a leader, which is in its own lease while in office.
    pub(crate) election_elapsed: u32,
    /// Ticks since the last heartbeat (leader only).
    pub(crate) heartbeat_elapsed: u32,
    /// The current randomized election timeout, in `[election_ticks, 2 * election_ticks)`.
    pub(crate) election_timeout: u32,
    /// Ticks since this node started: the leader's clock for CheckQuorum.
    pub(crate) ticks: u64,
    /// Leader only: the voter leadership is being handed to, and ticks since the handover
    /// began. Invariant: `None` unless leading.
    pub(crate) transfer: Option<(NodeId, u32)>,
    /// ReadIndex bookkeeping: reads waiting for confirmation (leader), and read states ready
    /// for the host (any role).
    pub(crate) reads: ReadQueue,
    /// The configurations in the log; the latest is in force (thesis §4.1).
    pub(crate) configs: ConfigHistory,
    rng: Rng,
    /// Messages that may leave at once.
    pub(crate) msgs: Vec<Message>,
    /// Messages that may leave only after everything handed out so far is durable.
    pub(crate) msgs_after_persist: Vec<Message>,
    /// New entries wait to be sent to followers (sent in one batch at the next Ready).
    pub(crate) pending_broadcast: bool,
    /// The bytes (data plus `ENTRY_HEADER_BYTES` each) of the proposals in the `Propose`
    /// message `forward` queued last; meaningless once another message is queued after it.
    pub(crate) forward_bytes: u64,
    /// Leader only: the commit index advanced since the last Ready, and followers learn it
    /// from that Ready's appends (one per follower at most, however often it advanced).
    pub(crate) pending_commit_news: bool,
    /// Leader only: bytes of this term's proposals not yet handed out to apply.
    /// Invariant: at most `config.uncommitted_bytes_max` plus one proposal.
    pub(crate) uncommitted_bytes: u64,
}

impl<S: LogStore> Raft<S> {
    /// A follower with the given durable state.
    pub(crate) fn new(
        config: Config,
        log: RaftLog<S>,
        hard_state: HardState,
        configs: ConfigHistory,
    ) -> Raft<S> {
        let rng = Rng::with_stream(config.seed, config.id.0);
        let mut raft = Raft {
            id: config.id,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            role: Role::Follower,
            log,
            tracker: ProgressTracker::new(configs.latest().clone()),
            configs,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            election_timeout: config.election_ticks,
            rng,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            pending_broadcast: false,
            pending_commit_news: false,
            forward_bytes: 0,
            uncommitted_bytes: 0,
            ticks: 0,
            transfer: None,
            reads: ReadQueue::default(),
            config,
        };
        raft.reset_timers();
        raft
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.commit }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState { leader: self.leader, role: self.role }
    }

    /// Whether this node may vote and campaign.
    pub(crate) fn is_voter(&self) -> bool {
        self.tracker.membership.is_voter(self.id)
    }

    /// The other members (voters of both halves and learners), in id order: whom a leader
    /// replicates to. (A leader keeps a progress for exactly the members.)
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        self.tracker.progress.keys().copied().filter(|&id| id != self.id).collect()
    }

    /// The other voters, in id order: whom a candidate asks for votes.
    pub(crate) fn voter_peers(&self) -> Vec<NodeId> {
        self.tracker.membership.all_voters().into_iter().filter(|&id| id != self.id).collect()
    }

    /// Queues a message that may leave at once.
    pub(crate) fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs.push(Message { from: self.id, to, term, body });
    }

    /// Queues a message that may leave only once everything this node handed out to persist
    /// so far is durable: answers to votes and appends, and a candidate's vote requests.
    pub(crate) fn send_after_persist(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs_after_persist.push(Message { from: self.id, to, term, body });
    }

    /// Restarts the election and heartbeat timers and draws a new election timeout.
    pub(crate) fn reset_timers(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let ticks = self.config.election_ticks;
        self.election_timeout = ticks + self.rng.below(u64::from(ticks)) as u32;
    }

    /// Adopts `term` (if newer, forgetting the vote) and follows `leader`.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "node {} at term {} moved back to {term}", self.id, self.term);
        // A leader stepping down still tells its followers the commit it reached (a leader
        // that commits its own removal, say, so they apply it without waiting for a new one).
        self.flush_commit_news();
        if term > self.term {
            self.enter_term(term);
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.pending_broadcast = false;
        self.transfer = None;
        self.reads.clear_pending();
        self.tracker.votes.clear();
        self.reset_timers();
        tracing::debug!(id = %self.id, term = %self.term, ?leader, "became follower");
    }

    /// Moves to the later `term` with no vote yet. Answers still queued for the durable write
    /// from the earlier term are dropped (as if lost): they speak for a term this node has
    /// left, and an append ack among them may name entries that a leader of the new term
    /// replaces before the write, so sending it would claim entries the disk does not hold.
    pub(crate) fn enter_term(&mut self, term: Term) {
        assert!(term > self.term, "node {} at term {} entering {term}", self.id, self.term);
        self.term = term;
        self.vote = None;
        self.msgs_after_persist.retain(|msg| msg.term >= term);
    }

    /// One tick of the logical clock.
    pub(crate) fn tick(&mut self) {
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.tick_election(),
        }
    }

    /// Handles one message from a peer.
    pub(crate) fn step(&mut self, msg: Message) -> Result<(), StepError> {
        validate(&msg, self.id)?;
        // A forwarded proposal's term means nothing: only a leader takes it, whatever its term.
        let term_rules_apply = !matches!(msg.body, MessageBody::Propose { .. });
        if term_rules_apply && msg.term > self.term && !self.on_higher_term(&msg) {
            return Ok(());
        }
        if term_rules_apply && msg.term < self.term {
            self.on_lower_term(&msg);
            return Ok(());
        }
        let (from, term) = (msg.from, msg.term);
        match msg.body {
            MessageBody::PreVote { last } => self.handle_vote_request(from, term, last, true),
            MessageBody::Vote { last, .. } => self.handle_vote_request(from, term, last, false),
            MessageBody::PreVoteResponse { granted } => {
                self.handle_vote_response(from, term, granted, true)
            }
            MessageBody::VoteResponse { granted } => {
                self.handle_vote_response(from, term, granted, false)
            }
            MessageBody::Append { prev, entries, commit } => {
                self.handle_append(from, prev, entries, commit)
            }
            MessageBody::AppendResponse(result) => self.handle_append_response(from, result),
            MessageBody::Heartbeat { commit, read_round } => {
                self.handle_heartbeat(from, commit, read_round)
            }
            MessageBody::HeartbeatResponse { read_round } => {
                self.handle_heartbeat_response(from, read_round)
            }
            MessageBody::ReadIndex { request } => self.handle_read_index_request(from, request),
            MessageBody::InstallSnapshot { snapshot } => self.handle_snapshot(from, snapshot),
            MessageBody::ReadIndexResponse { request, index } => {
                self.handle_read_index_response(from, request, index)
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
            MessageBody::Propose { proposals } => self.handle_forwarded_proposals(from, proposals),
        }
        Ok(())
    }

    /// A message from a later term (paper §5.1: adopt it). Returns whether to go on handling
    /// the message in the (possibly new) term.
    fn on_higher_term(&mut self, msg: &Message) -> bool {
        match msg.body {
            MessageBody::PreVote { .. } | MessageBody::Vote { .. } => {
                // CheckQuorum's lease (thesis §4.2.3): while a leader was heard from within the
                // election timeout, a vote request cannot depose it. This is what keeps a
                // partitioned or removed node from disrupting a healthy cluster.
                let in_lease = self.config.check_quorum
                    && self.leader.is_some()
                    && self.election_elapsed < self.config.election_ticks
                    && !self.is_grantable_transfer_vote(&msg.body);
                if in_lease {
                    tracing::debug!(id = %self.id, from = %msg.from, "vote request ignored in lease");
                    return false;
                }
                // A PreVote changes nobody's term (thesis §9.6).
                if matches!(msg.body, MessageBody::Vote { .. }) {
                    self.become_follower(msg.term, None);
                }
                true
            }
            // A granted pre-vote carries the term the pre-candidate would campaign in.
            MessageBody::PreVoteResponse { granted: true } => true,
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(msg.term, Some(msg.from));
                true
            }
            _ => {
                self.become_follower(msg.term, None);
                true
            }
        }
    }

    /// A vote request sent on the leader's `TimeoutNow` that this node would grant: it may
    /// cross the lease (thesis §3.10). One it would refuse (a late TimeoutNow, a candidate
    /// whose log is behind) is ignored like any other in-lease request, so it cannot depose a
    /// healthy leader.
    fn is_grantable_transfer_vote(&self, body: &MessageBody) -> bool {
        match body {
            MessageBody::Vote { last, transfer: true } => {
                last.is_up_to_date_with(self.log.last_entry_id())
            }
            _ => false,
        }
    }

    /// A message from an earlier term: ignored, but a stale leader and a stale pre-candidate
    /// are told the current term so they stop.
    fn on_lower_term(&mut self, msg: &Message) {
        match msg.body {
            // With CheckQuorum or PreVote this node may have raised its term while cut off and
            // ignores vote requests in lease; answering lets the stale leader step down and
            // the cluster converge on the new term (etcd-io/raft does the same).
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. }
                if self.config.check_quorum || self.config.pre_vote =>
            {
                let body = MessageBody::HeartbeatResponse { read_round: 0 };
                self.send_after_persist(msg.from, self.term, body);
            }
            MessageBody::PreVote { .. } => {
                let body = MessageBody::PreVoteResponse { granted: false };
                self.send_after_persist(msg.from, self.term, body);
            }
            // A stale candidate must learn the term too (§5.1: reply false with the current
            // term). Nobody else may ever write to it: a node outside every configuration
            // that still lists it would otherwise campaign in its old term forever.
            MessageBody::Vote { .. } => {
                let body = MessageBody::VoteResponse { granted: false };
                self.send_after_persist(msg.from, self.term, body);
            }
            _ => {}
        }
    }

    /// The whole-state invariants, checked after every input by tests and the simulator.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.log.check_invariants()?;
        let me = self.id;
        match self.role {
            Role::Leader => {
                if self.leader != Some(me) || self.vote != Some(me) {
                    return Err(format!(
                        "leader {me} has leader {:?} vote {:?}",
                        self.leader, self.vote
                    ));
                }
                let last = self.log.last_index();
                for (id, pr) in &self.tracker.progress {
                    if pr.match_index >= pr.next_index || pr.match_index > last {
                        return Err(format!("progress of {id}: {pr:?} with last index {last}"));
                    }
                }
                let own = self.tracker.progress.get(&me).map_or(Index(0), |pr| pr.match_index);
                if own > self.log.persisted_index()
                    && !self.config.has_bug(crate::PlantedBug::LeaderCountsUnpersisted)
                {
                    return Err(format!("leader's own match {own} is not durable"));
                }
            }
            Role::Candidate if self.vote != Some(me) => {
                return Err(format!("candidate {me} voted for {:?}", self.vote));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Rejects messages whose shape breaks the protocol, before they touch any state.
fn validate(msg: &Message, me: NodeId) -> Result<(), StepError> {
    if msg.to != me {
        return Err(StepError::WrongRecipient { to: msg.to, me });
    }
    let malformed = |reason: String| Err(StepError::Malformed { from: msg.from, reason });
    if msg.from == me || msg.from == NodeId(0) {
        return malformed(format!("sender id {} is invalid", msg.from));
    }
    if !numbers_in_range(msg) {
        return malformed(format!(
            "{} carries a term above {} or an index above {}",
            msg.body.kind_name(),
            Term::MAX,
            Index::MAX
        ));
    }
    if let MessageBody::InstallSnapshot { snapshot } = &msg.body {
        if snapshot.index == Index(0) {
            return malformed("a snapshot must cover an entry".to_string());
        }
        if let Some(reason) = membership_problem(&snapshot.membership) {
            return malformed(format!("snapshot: {reason}"));
        }
    }
    if let MessageBody::Append { prev, entries, .. } = &msg.body {
        let mut expected = prev.index.next();
        let mut prev_term = prev.term;
        for entry in entries {
            if entry.index != expected {
                return malformed(format!("entry index {} where {expected} was due", entry.index));
            }
            if entry.term < prev_term || entry.term > msg.term {
                return malformed(format!("entry {} has an impossible term", entry.id()));
            }
            if let EntryKind::Config(membership) = &entry.kind {
                if let Some(reason) = membership_problem(membership) {
                    return malformed(format!("configuration entry {}: {reason}", entry.id()));
                }
            }
            prev_term = entry.term;
            expected = expected.next();
        }
    }
    Ok(())
}

/// What makes `membership` impossible for a peer to have sent, if anything.
fn membership_problem(membership: &Membership) -> Option<&'static str> {
    if membership.voters.is_empty() {
        return Some("no voters");
    }
    membership.members().contains(&NodeId(0)).then_some("node 0 is a member")
}

/// Whether every term and index in `msg` is at most [`Term::MAX`] / [`Index::MAX`], so no
/// arithmetic on them can overflow.
fn numbers_in_range(msg: &Message) -> bool {
    let id_ok = |id: &EntryId| id.term <= Term::MAX && id.index <= Index::MAX;
    msg.term <= Term::MAX
        && match &msg.body {
            MessageBody::PreVote { last } | MessageBody::Vote { last, .. } => id_ok(last),
            MessageBody::Append { prev, entries, commit } => {
                id_ok(prev)
                    && *commit <= Index::MAX
                    && prev
                        .index
                        .0
                        .checked_add(entries.len() as u64)
                        .is_some_and(|last| last <= Index::MAX.0)
            }
            MessageBody::AppendResponse(AppendResult::Accepted { match_index }) => {
                *match_index <= Index::MAX
            }
            MessageBody::AppendResponse(AppendResult::Rejected { rejected, hint }) => {
                *rejected <= Index::MAX && id_ok(hint)
            }
            MessageBody::Heartbeat { commit, .. } => *commit <= Index::MAX,
            MessageBody::ReadIndexResponse { index, .. } => *index <= Index::MAX,
            MessageBody::InstallSnapshot { snapshot } => {
                id_ok(&snapshot.last()) && snapshot.term <= msg.term
            }
            MessageBody::PreVoteResponse { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::ReadIndex { .. }
            | MessageBody::Propose { .. }
            | MessageBody::TimeoutNow => true,
        }
}
