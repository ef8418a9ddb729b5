//! [`RawNode`]: the engine's one way in and one way out.

use crate::confchange::{ConfChange, ConfigHistory};
use crate::config::Config;
use crate::error::{
    ConfChangeError, ConfigError, ProposeError, ReadIndexError, StepError, StoreError,
    TransferError,
};
use crate::log::RaftLog;
use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::raft::Raft;
use crate::ready::{Ready, ReadyNumber};
use crate::storage::LogStore;
use crate::tracker::Progress;
use crate::types::{Entry, EntryId, HardState, Index, NodeId, Role, SoftState, Term};
use bytes::Bytes;
use std::collections::{BTreeSet, VecDeque};

/// What a node starts from: its durable hard state, the voters, and how far its state machine
/// has applied the log.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The persisted hard state (all zero for a new node).
    pub hard_state: HardState,
    /// The voting members, this node included if it votes.
    pub voters: Vec<NodeId>,
    /// The index the state machine has applied (0 for a fresh state machine).
    pub applied: Index,
}

/// What became of a proposal that was not refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proposed {
    /// This node leads and appended it at `index`. It commits there unless a new leader
    /// replaces it; the host learns which when the entry at `index` is applied.
    Appended(Index),
    /// This node follows `to` and forwarded the proposal there. Nothing reports its fate: the
    /// proposer recognizes its entry when applied (by an id in the data) or times out.
    Forwarded(NodeId),
}

impl Proposed {
    /// The index of an appended proposal.
    pub fn index(self) -> Option<Index> {
        match self {
            Proposed::Appended(index) => Some(index),
            Proposed::Forwarded(_) => None,
        }
    }
}

/// A snapshot of a node's state, for hosts, tests and status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The node's id.
    pub id: NodeId,
    /// Current term, vote and commit index.
    pub hard_state: HardState,
    /// Current role and known leader.
    pub soft_state: SoftState,
    /// The last index of the log.
    pub last_index: Index,
    /// The last index durable on this node.
    pub persisted_index: Index,
    /// The last index the host reported applied.
    pub applied: Index,
}

/// A Raft node without IO: feed it ticks, messages and proposals; take [`Ready`] batches out.
///
/// Invariant: every Ready handed out is acknowledged with [`RawNode::on_persisted`] in order,
/// and its `committed_entries` with [`RawNode::on_applied`].
pub struct RawNode<S> {
    raft: Raft<S>,
    /// The hard and soft state as of the last Ready handed out.
    prev_hard_state: HardState,
    prev_soft_state: SoftState,
    /// Readies handed out and not yet acknowledged durable, oldest first, with the snapshot
    /// index and the last entry each carried.
    in_flight: VecDeque<InFlight>,
    /// The term of the latest hard state the host reported durable.
    durable_term: Term,
    next_number: u64,
}

impl<S: LogStore> RawNode<S> {
    /// A node over `store`, starting as a follower from `initial`.
    pub fn new(config: Config, store: S, initial: InitialState) -> Result<RawNode<S>, ConfigError> {
        config.validate()?;
        let InitialState { hard_state, voters, applied } = initial;
        let last = store.last_index();
        if hard_state.commit > last {
            return Err(ConfigError::StartState(format!(
                "persisted commit {} is beyond the last log index {last}",
                hard_state.commit
            )));
        }
        // Everything a snapshot covers is committed, even if the hard state's commit lags.
        let compacted = store.first_index().prev();
        let commit = hard_state.commit.max(compacted).max(store.snapshot().index);
        if applied > commit {
            return Err(ConfigError::StartState(format!(
                "applied {applied} is beyond the commit index {commit}"
            )));
        }
        if applied < compacted {
            return Err(ConfigError::StartState(format!(
                "applied {applied} is below the snapshot at {compacted}: restore the state \
                 machine from the snapshot first"
            )));
        }
        let configs = config_history(&store, commit, voters)?;
        let log = RaftLog::new(store, commit, applied);
        let raft = Raft::new(config, log, hard_state, configs);
        let prev_soft_state = raft.soft_state();
        Ok(RawNode {
            raft,
            prev_hard_state: hard_state,
            prev_soft_state,
            in_flight: VecDeque::new(),
            durable_term: hard_state.term,
            next_number: 1,
        })
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
        self.raft.advance_membership();
    }

    /// Handles a message from a peer. A malformed or misaddressed message is refused with an
    /// error and changes nothing; every other message is handled (perhaps by ignoring it).
    pub fn step(&mut self, msg: Message) -> Result<(), StepError> {
        self.raft.step(msg)?;
        self.raft.advance_membership();
        Ok(())
    }

    /// Proposes `data` for the log. A leader appends it; a follower that knows its leader
    /// forwards it there (unless `Config::proposal_forwarding` is off); otherwise it is
    /// refused with the best leader hint this node has.
    pub fn propose(&mut self, data: Bytes) -> Result<Proposed, ProposeError> {
        self.raft.propose(data)
    }

    /// Asks for a linearizable read (thesis §6.4) identified by `request`. A [`crate::ReadState`]
    /// with the same `request` comes out in a later Ready: serve the read once the state
    /// machine has applied up to its index. A leader confirms its leadership with one
    /// heartbeat round for all reads taken before the round; a follower asks its leader. A
    /// read can be dropped without notice (the leader stepped down): time it out.
    pub fn read_index(&mut self, request: u64) -> Result<(), ReadIndexError> {
        self.raft.read_index(request)
    }

    /// Proposes a membership change (paper §6): the leader appends the joint configuration
    /// C_old,new at once (it is in force from then on), and C_new by itself once that
    /// commits. Returns the joint entry's index. One change at a time: a second one before
    /// the first finished is refused with [`ConfChangeError::InProgress`].
    pub fn propose_conf_change(
        &mut self,
        changes: &[ConfChange],
    ) -> Result<Index, ConfChangeError> {
        self.raft.propose_conf_change(changes)
    }

    /// Hands leadership to the voter `to` (thesis §3.10): the leader brings `to` up to date,
    /// then tells it to campaign at once. Proposals are refused until `to` wins or an
    /// election timeout passes. Transferring to the leader itself cancels a transfer.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        self.raft.transfer_leadership(to)
    }

    /// Starts an election now, as if the election timeout had expired.
    pub fn campaign(&mut self) {
        self.raft.start_election();
    }

    /// The transport could not deliver to `peer`: stop streaming to it and probe instead.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if self.raft.role == Role::Leader {
            if let Some(pr) = self.raft.tracker.progress.get_mut(&peer) {
                pr.become_probe();
            }
        }
    }

    /// The host could not deliver a snapshot to `peer`; the leader probes it again (sending
    /// the snapshot anew if still needed).
    pub fn report_snapshot_failure(&mut self, peer: NodeId) {
        self.raft.report_snapshot_failure(peer);
    }

    /// How far the host may compact its log once its state machine has a snapshot there:
    /// entries both applied and durable (paper §7).
    pub fn compactable_index(&self) -> Index {
        let log = &self.raft.log;
        if log.has_pending_snapshot() {
            // Nothing more until the snapshot from the leader is installed.
            return log.store.first_index().prev();
        }
        log.applied.min(log.persisted_index())
    }

    /// The configuration in force at `index`, which must be committed (and not older than
    /// the last snapshot taken with it): what a snapshot at `index` must record.
    pub fn membership_at(&mut self, index: Index) -> Membership {
        self.raft.configs.committed_at(index)
    }

    /// Whether [`RawNode::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        let raft = &self.raft;
        raft.pending_broadcast
            || raft.pending_commit_news
            || !raft.msgs.is_empty()
            || !raft.msgs_after_persist.is_empty()
            || raft.hard_state() != self.prev_hard_state
            || raft.soft_state() != self.prev_soft_state
            || raft.log.has_entries_to_persist()
            || raft.log.has_snapshot_to_persist()
            || raft.log.has_entries_to_apply()
            || raft.reads.has_unsent_round()
            || !raft.reads.ready.is_empty()
    }

    /// Takes the next batch of work. See [`Ready`] for what to do with it.
    pub fn ready(&mut self) -> Ready {
        self.raft.flush_broadcast();
        self.raft.flush_read_round();
        let raft = &mut self.raft;
        let number = ReadyNumber(self.next_number);
        self.next_number += 1;
        let hard_state = raft.hard_state();
        let soft_state = raft.soft_state();
        let snapshot = raft.log.take_snapshot_to_persist();
        let entries = raft.log.take_to_persist();
        let committed_entries = raft.log.take_to_apply(raft.config.apply_bytes_max);
        let applied_bytes: u64 = committed_entries.iter().map(Entry::size_bytes).sum();
        raft.uncommitted_bytes = raft.uncommitted_bytes.saturating_sub(applied_bytes);
        self.in_flight.push_back(InFlight {
            number,
            snapshot: snapshot.as_ref().map(|s| s.index),
            last: entries.last().map(Entry::id),
            term: hard_state.term,
        });
        let vote_early = raft.config.has_bug(crate::PlantedBug::VoteBeforePersist);
        let (messages, held) =
            hold_until_term_durable(std::mem::take(&mut raft.msgs), self.durable_term, vote_early);
        let mut messages_after_persist = held;
        messages_after_persist.append(&mut raft.msgs_after_persist);
        let ready = Ready {
            number,
            soft_state: (soft_state != self.prev_soft_state).then_some(soft_state),
            hard_state: (hard_state != self.prev_hard_state).then_some(hard_state),
            snapshot,
            entries,
            messages,
            messages_after_persist,
            committed_entries,
            read_states: std::mem::take(&mut raft.reads.ready),
        };
        self.prev_hard_state = hard_state;
        self.prev_soft_state = soft_state;
        ready
    }

    /// The host made Ready `number` (and every earlier one) durable and sent its
    /// `messages_after_persist`.
    ///
    /// # Panics
    /// If `number` was not handed out or was already acknowledged: a host bug.
    pub fn on_persisted(&mut self, number: ReadyNumber) {
        assert!(
            self.in_flight.iter().any(|f| f.number == number),
            "node {}: Ready {number:?} is not awaiting persistence",
            self.raft.id
        );
        while self.in_flight.front().is_some_and(|f| f.number <= number) {
            let Some(done) = self.in_flight.pop_front() else { break };
            if let Some(index) = done.snapshot {
                self.raft.log.snapshot_stable(index);
            }
            if let Some(id) = done.last {
                self.raft.log.stable_to(id);
            }
            self.durable_term = self.durable_term.max(done.term);
        }
        self.raft.on_persisted();
        self.raft.advance_membership();
    }

    /// The host applied committed entries up to `index`.
    ///
    /// # Panics
    /// If `index` was never handed out to apply: a host bug.
    pub fn on_applied(&mut self, index: Index) {
        self.raft.log.applied_to(index);
    }

    /// The node's state now.
    pub fn status(&self) -> Status {
        let raft = &self.raft;
        Status {
            id: raft.id,
            hard_state: raft.hard_state(),
            soft_state: raft.soft_state(),
            last_index: raft.log.last_index(),
            persisted_index: raft.log.persisted_index(),
            applied: raft.log.applied,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.raft.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// The leader known in the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.leader
    }

    /// The commit index.
    pub fn commit(&self) -> Index {
        self.raft.log.commit
    }

    /// The first index the log holds; entries before it are covered by a snapshot.
    pub fn first_index(&self) -> Index {
        self.raft.log.first_index()
    }

    /// The last index of the log.
    pub fn last_index(&self) -> Index {
        self.raft.log.last_index()
    }

    /// The term of the entry at `index`, if this node's log holds it.
    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.raft.log.term(index)
    }

    /// The entries in `[lo, hi)` of this node's log (durable or not), within `max_bytes`.
    pub fn log_entries(
        &self,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        self.raft.log.entries(lo, hi, max_bytes)
    }

    /// The leader's view of `peer`'s replication (None unless this node leads).
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        if self.raft.role != Role::Leader {
            return None;
        }
        self.raft.tracker.progress.get(&peer)
    }

    /// On a leader: whether `peer` answered within the last election timeout (the window
    /// CheckQuorum uses). A learner that caught up and then fell silent may be dead; making
    /// it a voter would add a vote nobody casts and lower how many failures the cluster
    /// survives. False on a node that does not lead.
    pub fn heard_from_recently(&self, peer: NodeId) -> bool {
        let window = u64::from(self.raft.config.election_ticks);
        self.progress(peer).is_some_and(|pr| pr.heard_within(self.raft.ticks, window))
    }

    /// The voting members.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.raft.tracker.membership.voters
    }

    /// The configuration in force on this node: the latest in its log, committed or not.
    pub fn membership(&self) -> &Membership {
        &self.raft.tracker.membership
    }

    /// The latest configuration this node knows to be committed (it may lag the cluster's:
    /// a follower learns of commits from its leader).
    pub fn committed_membership(&self) -> &Membership {
        self.raft.configs.committed()
    }

    /// The log store.
    pub fn store(&self) -> &S {
        &self.raft.log.store
    }

    /// The log store, for the host to write what a Ready asked it to persist.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.raft.log.store
    }

    /// Consumes the node, returning its store (what survives a crash).
    pub fn into_store(self) -> S {
        self.raft.log.store
    }

    /// Checks the whole-state invariants (commit <= last index, applied <= commit, a leader's
    /// own match is durable, ...). Tests and the simulator call it after every input.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.raft.check_invariants()
    }
}

/// The configurations of a restarting node: the snapshot's (or, with none, the bootstrap
/// `voters`), then every configuration entry in the log after it (thesis §4.1: the latest
/// one in the log is in force, committed or not).
fn config_history<S: LogStore>(
    store: &S,
    commit: Index,
    voters: Vec<NodeId>,
) -> Result<ConfigHistory, ConfigError> {
    let snapshot = store.snapshot();
    let base = if snapshot.index.0 > 0 { snapshot.membership } else { Membership::new(voters) };
    let mut configs = ConfigHistory::new(snapshot.index, base);
    // Read in bounded chunks: the log may be far larger than memory should hold at once.
    const CHUNK_BYTES_MAX: u64 = 4 << 20;
    let (mut next, last) = (store.first_index(), store.last_index());
    while next <= last {
        let entries = store.entries(next, last.next(), CHUNK_BYTES_MAX).map_err(|error| {
            ConfigError::StartState(format!("cannot read the log to find configurations: {error}"))
        })?;
        let Some(read_to) = entries.last().map(|e| e.index) else { break };
        configs.appended(&entries);
        next = read_to.next();
    }
    configs.committed_to(commit);
    Ok(configs)
}

/// A Ready handed out and not yet acknowledged durable.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    number: ReadyNumber,
    /// The index of the snapshot it carried.
    snapshot: Option<Index>,
    /// The last entry it carried.
    last: Option<EntryId>,
    /// The term of the hard state as of this Ready.
    term: Term,
}

/// Splits `messages` into those that may leave at once and those that must wait for the
/// Ready to be durable: nothing speaks for a term before that term is durable. (A node that
/// wins an election alone, as the only voter, leads in a term it has not yet written; if it
/// crashed before writing it, it could lead that term again with another log.) Pre-vote
/// requests, forwarded proposals and read-index requests are exempt: their term binds
/// nobody. (The planted bug `vote-before-persist` lets its early votes through: holding
/// them would be persisting first, the very rule it breaks.)
fn hold_until_term_durable(
    messages: Vec<Message>,
    durable_term: Term,
    vote_early: bool,
) -> (Vec<Message>, Vec<Message>) {
    let may_leave = |msg: &Message| {
        msg.term <= durable_term
            || (vote_early && matches!(msg.body, MessageBody::VoteResponse { .. }))
            || matches!(
                msg.body,
                MessageBody::PreVote { .. }
                    | MessageBody::Propose { .. }
                    | MessageBody::ReadIndex { .. }
            )
    };
    if messages.iter().all(may_leave) {
        return (messages, Vec::new()); // the usual case: no new vector, no moves
    }
    messages.into_iter().partition(may_leave)
}
