//! Leadership transfer (thesis §3.10): catch the target up, send it TimeoutNow, refuse
//! proposals meanwhile, give up after an election timeout.

mod common;

use bytes::Bytes;
use common::{msg, Cluster};
use raft_core::{MessageBody, NodeId, ProposeError, Role, Term, TransferError};

fn leaders(cluster: &mut Cluster) -> Vec<u64> {
    (1..=3).filter(|&id| cluster.node(id).role() == Role::Leader).collect()
}

/// The target already holds the whole log: TimeoutNow leaves at once, the target campaigns
/// in the next term and wins, although the voters still hear the old leader (its lease would
/// make them ignore any other vote request).
#[test]
fn transfer_to_an_up_to_date_follower_elects_it() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).transfer_leadership(NodeId(2)).unwrap();
    let ready = common::persist_ready(cluster.node(1));
    assert!(ready.messages.contains(&msg(1, 2, 1, MessageBody::TimeoutNow)));
    cluster.queue.extend(common::all_messages(&ready));
    cluster.stabilize();
    assert_eq!(leaders(&mut cluster), vec![2]);
    assert_eq!(cluster.node(2).term(), Term(2));
    assert_eq!(cluster.node(1).leader(), Some(NodeId(2)));
}

/// A lagging target is first sent what it lacks; TimeoutNow follows only once its match
/// index reaches the leader's last index.
#[test]
fn transfer_waits_for_the_target_to_catch_up() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    for _ in 0..5 {
        cluster.node(1).propose(Bytes::from_static(b"x")).unwrap();
    }
    cluster.stabilize_without(3); // node 3 misses the five entries
    let last = cluster.node(1).last_index();
    assert!(cluster.node(3).last_index() < last);

    cluster.node(1).transfer_leadership(NodeId(3)).unwrap();
    let ready = common::persist_ready(cluster.node(1));
    assert!(!ready.messages.iter().any(|m| m.body == MessageBody::TimeoutNow));
    cluster.queue.extend(common::all_messages(&ready));
    cluster.node(1).tick(); // a heartbeat answer exposes the missing entries
    cluster.stabilize();
    assert_eq!(leaders(&mut cluster), vec![3]);
    assert_eq!(cluster.node(3).status().hard_state.term, Term(2));
}

/// While a transfer is under way the leader refuses proposals, so the target can catch up
/// with a log that stops growing.
#[test]
fn proposals_are_refused_during_a_transfer() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).transfer_leadership(NodeId(2)).unwrap();
    let refused = cluster.node(1).propose(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(refused, ProposeError::TransferInProgress { to: NodeId(2) });
}

/// A target that never answers: after an election timeout the leader gives up the transfer,
/// stays leader (node 2 still answers) and takes proposals again.
#[test]
fn transfer_is_abandoned_after_an_election_timeout() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).transfer_leadership(NodeId(3)).unwrap();
    for _ in 0..10 {
        assert!(cluster.node(1).propose(Bytes::from_static(b"x")).is_err());
        cluster.node(1).tick();
        cluster.stabilize_without(3);
    }
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert!(cluster.node(1).propose(Bytes::from_static(b"x")).is_ok());
}

/// Only the leader transfers, and only to a voter; TimeoutNow from anyone but the leader is
/// ignored.
#[test]
fn transfer_is_refused_or_ignored_when_it_makes_no_sense() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let refused = cluster.node(2).transfer_leadership(NodeId(3)).unwrap_err();
    assert_eq!(refused, TransferError::NotLeader { leader: Some(NodeId(1)) });
    let refused = cluster.node(1).transfer_leadership(NodeId(9)).unwrap_err();
    assert_eq!(refused, TransferError::NotVoter { to: NodeId(9) });
    cluster.node(1).transfer_leadership(NodeId(1)).unwrap();
    assert!(cluster.node(1).propose(Bytes::from_static(b"x")).is_ok(), "self-transfer is a no-op");

    cluster.node(3).step(msg(2, 3, 1, MessageBody::TimeoutNow)).unwrap();
    assert_eq!(cluster.node(3).role(), Role::Follower, "TimeoutNow from a non-leader obeyed");
    assert_eq!(cluster.node(3).term(), Term(1));
}

/// A TimeoutNow that arrives late, after the target fell behind (say the transfer was
/// abandoned and the leader took new proposals), makes the target campaign; voters in the
/// leader's lease let a transfer vote through only if they would grant it, so the healthy
/// leader keeps its term.
#[test]
fn late_timeout_now_cannot_depose_a_healthy_leader() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).propose(Bytes::from_static(b"x")).unwrap();
    cluster.stabilize_without(3);
    cluster.node(3).step(msg(1, 3, 1, MessageBody::TimeoutNow)).unwrap();
    assert_eq!(cluster.node(3).role(), Role::Candidate);
    cluster.stabilize();
    assert_eq!(leaders(&mut cluster), vec![1]);
    assert_eq!(cluster.node(1).term(), Term(1), "a refused transfer vote raised the term");
}

/// A lost TimeoutNow is sent again on the target's next answer, while the transfer lasts.
#[test]
fn lost_timeout_now_is_sent_again() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).transfer_leadership(NodeId(2)).unwrap();
    let ready = common::persist_ready(cluster.node(1));
    assert!(ready.messages.iter().any(|m| m.body == MessageBody::TimeoutNow)); // and lost
    cluster.node(1).tick();
    cluster.stabilize();
    assert_eq!(leaders(&mut cluster), vec![2]);
}
