//! Membership changes by joint consensus (paper §6, thesis §4.3): C_old,new first, C_new by
//! itself once that commits; both majorities during the joint phase; learners; one change at
//! a time; a removed leader steps down.

mod common;

use bytes::Bytes;
use common::{node, Cluster};
use raft_core::{ConfChange, ConfChangeError, Index, Membership, NodeId, Role};
use std::collections::BTreeSet;

fn set(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().map(|&id| NodeId(id)).collect()
}

/// Nodes 1-3 form the cluster; nodes 4 and 5 run, knowing the first configuration, in
/// which they do not vote.
fn cluster_with_spares() -> Cluster {
    Cluster::from_nodes((1..=5).map(|id| node(id, &[1, 2, 3], |_| {})).collect())
}

/// Ticks everyone until one of `candidates` leads; returns it.
fn elect_by_timeout(cluster: &mut Cluster, candidates: &[u64]) -> u64 {
    for _ in 0..200 {
        cluster.tick_all();
        cluster.stabilize();
        if let Some(&id) = candidates.iter().find(|&&id| cluster.node(id).role() == Role::Leader) {
            return id;
        }
    }
    panic!("none of {candidates:?} was elected");
}

/// The configuration entries in node `id`'s log, in order.
fn configs_in_log(cluster: &mut Cluster, id: u64) -> Vec<Membership> {
    let node = cluster.node(id);
    let entries = node.log_entries(node.first_index(), node.last_index().next(), u64::MAX).unwrap();
    entries
        .into_iter()
        .filter_map(|e| match e.kind {
            raft_core::EntryKind::Config(m) => Some(*m),
            _ => None,
        })
        .collect()
}

/// The change from {1,2,3} to {3,4,5}.
const REPLACE_1_2_WITH_4_5: [ConfChange; 4] = [
    ConfChange::AddVoter(NodeId(4)),
    ConfChange::AddVoter(NodeId(5)),
    ConfChange::Remove(NodeId(1)),
    ConfChange::Remove(NodeId(2)),
];

/// {1,2,3} -> {3,4,5} in one change: the joint entry, then C_new appended by the leader on its
/// own; leader 1 is not in C_new, so it steps down once C_new commits.
#[test]
fn joint_change_replaces_two_voters_and_the_leader() {
    let mut cluster = cluster_with_spares();
    cluster.elect(1);
    cluster.node(1).propose_conf_change(&REPLACE_1_2_WITH_4_5).unwrap();
    assert!(cluster.node(1).membership().is_joint(), "the joint entry is in force at once");
    cluster.stabilize();
    let configs = configs_in_log(&mut cluster, 4);
    assert_eq!(configs.len(), 2);
    assert_eq!(
        (configs[0].voters.clone(), configs[0].voters_outgoing.clone()),
        (set(&[3, 4, 5]), set(&[1, 2, 3]))
    );
    assert_eq!((configs[1].voters.clone(), configs[1].is_joint()), (set(&[3, 4, 5]), false));
    assert_eq!(cluster.node(1).role(), Role::Follower, "the removed leader stepped down");
    for id in 3..=5 {
        assert_eq!(cluster.node(id).membership(), &configs[1], "node {id}");
    }
    // Once their leases expire, the new voters elect a leader of their own, which commits.
    let leader = elect_by_timeout(&mut cluster, &[3, 4, 5]);
    cluster.node(leader).propose(Bytes::from_static(b"after")).unwrap();
    cluster.stabilize();
    let last = cluster.node(leader).last_index();
    for id in 3..=5 {
        assert_eq!(cluster.node(id).commit(), last, "node {id}");
    }
}

/// During the joint phase a commit needs a majority of C_old and of C_new: with nodes 4 and 5
/// cut off, nodes 1-3 (all of C_old) cannot commit anything.
#[test]
fn joint_commit_needs_both_majorities() {
    let mut cluster = cluster_with_spares();
    cluster.elect(1);
    let joint_index = cluster.node(1).propose_conf_change(&REPLACE_1_2_WITH_4_5).unwrap();
    cluster.process_readies();
    cluster.queue.retain(|m| m.to.0 < 4);
    loop {
        let any = cluster.process_readies();
        cluster.queue.retain(|m| m.to.0 < 4 && m.from.0 < 4);
        if !cluster.deliver_one() && !any {
            break;
        }
    }
    assert!(cluster.node(1).commit() < joint_index, "committed without a majority of C_new");
    assert!(cluster.node(1).membership().is_joint());
}

/// One change at a time: a second change while the first is not finished is refused.
#[test]
fn a_second_change_waits_for_the_first() {
    let mut cluster = cluster_with_spares();
    cluster.elect(1);
    let index = cluster.node(1).propose_conf_change(&[ConfChange::AddVoter(NodeId(4))]).unwrap();
    let refused = cluster.node(1).propose_conf_change(&[ConfChange::AddVoter(NodeId(5))]);
    assert_eq!(refused, Err(ConfChangeError::InProgress { index }));
    cluster.stabilize();
    assert!(cluster.node(1).propose_conf_change(&[ConfChange::AddVoter(NodeId(5))]).is_ok());
    let refused = cluster.node(2).propose_conf_change(&[ConfChange::Remove(NodeId(3))]);
    assert_eq!(refused, Err(ConfChangeError::NotLeader { leader: Some(NodeId(1)) }));
}

/// [`cluster_with_spares`] led by node 1, with node 4 added as a learner.
fn cluster_with_learner_4() -> Cluster {
    let mut cluster = cluster_with_spares();
    cluster.elect(1);
    cluster.node(1).propose_conf_change(&[ConfChange::AddLearner(NodeId(4))]).unwrap();
    cluster.stabilize();
    cluster
}

/// A learner receives the log but does not vote, does not count for commitment and never
/// campaigns; promoted, it becomes a voter like any other.
#[test]
fn learner_follows_the_log_and_can_be_promoted() {
    let mut cluster = cluster_with_learner_4();
    assert_eq!(cluster.node(1).membership().learners, set(&[4]));
    cluster.node(1).propose(Bytes::from_static(b"x")).unwrap();
    cluster.stabilize_without(4);
    assert_eq!(cluster.node(1).commit(), cluster.node(1).last_index(), "the learner counted");
    for _ in 0..50 {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert_eq!(cluster.node(4).role(), Role::Follower, "a learner campaigned");
    assert_eq!(cluster.node(4).last_index(), cluster.node(1).last_index());

    cluster.node(1).propose_conf_change(&[ConfChange::AddVoter(NodeId(4))]).unwrap();
    cluster.stabilize();
    let membership = cluster.node(4).membership().clone();
    assert_eq!((membership.voters, membership.learners), (set(&[1, 2, 3, 4]), set(&[])));
}

/// The leader tells whether it heard from a member within an election timeout: a learner
/// that caught up and then fell silent is not recent (kv-server promotes only recent ones),
/// and is again once it answers.
#[test]
fn a_learner_silent_for_an_election_timeout_is_not_heard_from_recently() {
    let mut cluster = cluster_with_learner_4();
    assert!(cluster.node(1).heard_from_recently(NodeId(4)), "it just answered");
    assert!(!cluster.node(2).heard_from_recently(NodeId(4)), "only the leader knows");
    let election_ticks = 10; // raft_core::Config's default, which these nodes keep
    for _ in 0..election_ticks {
        cluster.tick_all();
        cluster.stabilize_without(4);
    }
    assert!(!cluster.node(1).heard_from_recently(NodeId(4)), "silent for an election timeout");
    assert!(cluster.node(1).heard_from_recently(NodeId(2)), "the others answer heartbeats");
    for _ in 0..election_ticks {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert!(cluster.node(1).heard_from_recently(NodeId(4)), "it answers again");
}

/// A node restarting from its log finds the latest configuration in it.
#[test]
fn restart_finds_the_configuration_in_the_log() {
    let mut cluster = cluster_with_spares();
    cluster.elect(1);
    cluster.node(1).propose_conf_change(&[ConfChange::AddVoter(NodeId(4))]).unwrap();
    cluster.stabilize();
    let expected = cluster.node(4).membership().clone();
    let status = cluster.node(4).status();
    let store = cluster.nodes.remove(&NodeId(4)).unwrap().into_store();
    let initial = raft_core::InitialState {
        hard_state: status.hard_state,
        voters: common::ids(&[1, 2, 3]),
        applied: Index(0),
    };
    let restarted =
        raft_core::RawNode::new(raft_core::Config::new(NodeId(4)), store, initial).unwrap();
    assert_eq!(restarted.membership(), &expected);
}

/// A removed node that missed its removal keeps campaigning; it cannot disturb the cluster
/// (PreVote: its log is behind; CheckQuorum's lease: the voters hear their leader).
#[test]
fn removed_node_cannot_disturb_the_cluster() {
    let mut cluster = cluster_with_spares();
    cluster.elect(1);
    cluster.node(1).propose_conf_change(&[ConfChange::Remove(NodeId(3))]).unwrap();
    cluster.stabilize_without(3);
    assert_eq!(cluster.node(1).membership().voters, set(&[1, 2]));
    assert!(cluster.node(3).membership().voters.contains(&NodeId(3)), "node 3 missed it");
    let term = cluster.node(1).term();
    for _ in 0..100 {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), term);
}
