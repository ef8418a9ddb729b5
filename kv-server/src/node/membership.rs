//! Membership as the node sees it: whether it was removed, its own row of the member table,
//! promoting learners that asked to vote, and which peers the transport dials
//! (docs/running.md#adding-and-removing-members).

use super::{Core, PROMOTION_LAG_MAX};
use kv_proto::kv::command::Op;
use raft_core::{ConfChange, NodeId, Role};
use tokio::sync::oneshot;

/// How a node learned that it was removed from the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Removal {
    /// A committed configuration without it took effect after one with it.
    Applied,
    /// `by` of the `of` other voters refused its connections as not one of their members.
    Disowned { by: usize, of: usize },
}

impl Core {
    /// Whether, and how, this node learned that it was removed: it then stops (as an etcd
    /// member does).
    ///
    /// A removed follower often never receives the configuration that removes it (the
    /// leader stops replicating to it); it learns of its removal when most of the other
    /// voters refuse its connections as not one of their members.
    ///
    /// Only committed configurations count: an entry that removes this node may still be
    /// replaced by a new leader, and a node that stopped for it would be a member gone missing.
    pub(super) fn removal(&mut self) -> Option<Removal> {
        let me = self.config.id;
        let member = self.raw.committed_membership().contains(me);
        self.was_member |= member;
        // A leader stays until it has committed the configuration without it, then steps down.
        if self.was_member && !member && self.raw.role() != Role::Leader {
            return Some(Removal::Applied);
        }
        // Only refusals after the last message from anyone count, and only once nobody has
        // spoken to this node for three election timeouts: a peer that restarts, or has not
        // applied this node's addition yet, refuses it for a moment while the leader still
        // sends it heartbeats.
        let silent = self.config.tick * self.config.election_ticks * 3;
        if !self.was_member || self.last_heard.elapsed() < silent {
            return None;
        }
        let others: Vec<NodeId> =
            self.raw.voters().iter().copied().filter(|&id| id != me).collect();
        let recent = |id: &NodeId| self.disowned_by.get(id).is_some_and(|&at| at > self.last_heard);
        let by = others.iter().filter(|id| recent(id)).count();
        (by * 2 > others.len()).then_some(Removal::Disowned { by, of: others.len() })
    }

    /// Writes this node's row of the member table once a leader is known and the row differs
    /// from the one applied (one such write at a time).
    pub(super) fn register(&mut self) {
        if self.registering.is_some_and(|sequence| self.writes.contains_key(&sequence)) {
            return;
        }
        self.registering = None;
        let me = &self.config.me;
        let id = self.config.id.0;
        let in_config = self.raw.membership().contains(self.config.id);
        let row = self.state.members().get(&id);
        if self.raw.leader().is_none() || !in_config || row.is_some_and(|r| r.same_addresses(me)) {
            return;
        }
        let op = Op::SetMember(kv_proto::kv::SetMember {
            id,
            name: me.name.clone(),
            peer_address: me.peer_address.clone(),
            client_address: me.client_address.clone(),
            allocate: false,
            min_id: 0,
            promote: false,
        });
        let (reply, _) = oneshot::channel();
        self.registering = Some(self.next_sequence);
        self.start_write(op, None, reply);
    }

    /// On the leader: proposes to promote each learner whose row asks for it once it has
    /// answered and its log is within [`PROMOTION_LAG_MAX`] entries of this one (thesis §4.2.1: a voter that still
    /// has to catch up would hold commitment back). The wish is in the replicated member
    /// table, so whichever node leads when the learner catches up promotes it.
    pub(super) fn promote_caught_up_learners(&mut self) {
        if self.raw.role() != Role::Leader {
            return;
        }
        let last = self.raw.last_index().0;
        let ready: Vec<NodeId> = self
            .raw
            .membership()
            .learners
            .iter()
            .copied()
            .filter(|id| self.state.members().get(&id.0).is_some_and(|row| row.promote))
            .filter(|&id| {
                // A learner that never answered matches nothing, however short the log is.
                let matched = self.raw.progress(id).map_or(0, |p| p.match_index.0);
                matched > 0 && matched.saturating_add(PROMOTION_LAG_MAX) >= last
            })
            // One that caught up and then fell silent may be dead: as a voter it would only
            // raise the quorum. It is promoted once it answers again.
            .filter(|&id| self.raw.heard_from_recently(id))
            .collect();
        for id in ready {
            // Refused while another change is under way: tried again next tick.
            if self.raw.propose_conf_change(&[ConfChange::AddVoter(id)]).is_ok() {
                tracing::info!(node = %self.config.id, "learner {id} caught up: promoting it to voter");
            }
        }
    }

    /// Makes the transport's peers the members of the configuration, at the addresses of the
    /// member table (the initial ones from the flags until a row exists): an added or moved
    /// member is dialled at its address, a removed one forgotten. A row no configuration
    /// names (a removed leader could not delete its own) is not dialled.
    ///
    /// A peer with an id newer than every id known here is kept: it joined while this node
    /// was away and announced itself (docs/transport.md), and this node learns of it only by
    /// catching up from it.
    pub(super) fn connect_members(&mut self) {
        let _runtime = self.runtime.enter();
        let newer_than_known = self.first_unknown_id();
        self.transport.accept_announced_from(newer_than_known);
        for (&id, member) in self.state.members() {
            if id == self.config.id.0 || !self.raw.membership().contains(NodeId(id)) {
                continue;
            }
            match member.peer_address.parse::<raft_net::PeerAddress>() {
                Ok(address) => self.transport.add_peer(NodeId(id), address),
                Err(error) => tracing::warn!("member {id}: {error}"),
            }
        }
        // A member is forgotten only once a committed configuration leaves it out too: a
        // leader removing itself must still hear the acknowledgements of the entry that
        // removes it, which followers append (and may apply the previous entry) before it
        // commits.
        let given_at_join = self.given_at_join();
        for id in self.transport.peers() {
            let member = |m: &raft_core::Membership| m.contains(id);
            let known = member(self.raw.membership()) || member(self.raw.committed_membership());
            if !known && id < newer_than_known && !given_at_join.contains(&id) {
                self.transport.remove_peer(id);
            }
        }
    }

    /// The members the flags name, while this node has not caught up to its own addition:
    /// none of its configurations names it yet, so the members it was given when it joined
    /// are newer than any configuration it holds. A snapshot it catches up from can predate
    /// its leader's addition (the leader joined, then led before taking a snapshot of its
    /// own); going by that snapshot alone, the node would refuse its leader for good.
    ///
    /// Empty once a configuration has named this node: from then on its configurations
    /// are at least as new as its join.
    fn given_at_join(&self) -> &[NodeId] {
        let me = self.config.id;
        let named =
            self.raw.membership().contains(me) || self.raw.committed_membership().contains(me);
        if self.was_member || named {
            &[]
        } else {
            &self.config.voters
        }
    }

    /// The lowest id this node has never heard of: above every id of the member table (past
    /// and present: the state machine never reuses one) and of the configuration.
    ///
    /// The initial members of the flags count too: one that never started (so never wrote
    /// its row) and was removed is then refused as removed, not taken on as a newcomer.
    pub(super) fn first_unknown_id(&self) -> NodeId {
        let in_config = self.raw.membership().members().last().map_or(0, |id| id.0 + 1);
        let in_flags = self.config.voters.iter().map(|id| id.0 + 1).max().unwrap_or(0);
        let highest = self.state.next_member_id().max(in_config).max(in_flags);
        NodeId(highest.max(self.config.id.0 + 1))
    }
}
