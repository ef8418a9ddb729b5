//! Proposal forwarding: a follower sends a proposal to the leader it knows. A forwarded
//! proposal is forwarded at most once and never acknowledged; the proposer sees its entry
//! applied or times out.

mod common;

use bytes::Bytes;
use common::{msg, node, Cluster};
use raft_core::{EntryKind, Index, MessageBody, NodeId, ProposeError, Proposed};

/// Whether any node's log holds an entry with `data`.
fn anyone_holds(cluster: &mut Cluster, data: &[u8]) -> bool {
    (1..=3).any(|id| {
        let node = cluster.node(id);
        let entries = node.log_entries(Index(1), node.last_index().next(), u64::MAX).unwrap();
        entries.iter().any(|e| e.kind == EntryKind::Normal && e.data == data)
    })
}

#[test]
fn follower_forwards_a_proposal_to_its_leader() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let proposed = cluster.node(2).propose(Bytes::from_static(b"fwd")).unwrap();
    assert_eq!(proposed, Proposed::Forwarded(NodeId(1)));
    cluster.stabilize();
    let last = cluster.node(1).last_index();
    for id in 1..=3 {
        let node = cluster.node(id);
        assert_eq!(node.commit(), last);
        let entry = &node.log_entries(last, last.next(), u64::MAX).unwrap()[0];
        assert_eq!(entry.data, Bytes::from_static(b"fwd"), "node {id}");
    }
}

#[test]
fn without_a_known_leader_the_proposal_is_refused_with_the_hint() {
    let mut lonely = node(2, &[1, 2, 3], |_| {});
    let refused = lonely.propose(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(refused, ProposeError::NotLeader { leader: None });

    let mut cluster = Cluster::new(3, |c| c.proposal_forwarding = false);
    cluster.elect(1);
    let refused = cluster.node(2).propose(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(refused, ProposeError::NotLeader { leader: Some(NodeId(1)) });
}

/// A forwarded proposal that reaches a node that is not (or no longer) the leader is dropped,
/// not forwarded again: nothing is appended and nothing is sent.
#[test]
fn forwarded_proposal_at_a_follower_is_dropped() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let last = cluster.node(3).last_index();
    let forwarded =
        msg(2, 3, 1, MessageBody::Propose { proposals: vec![Bytes::from_static(b"x")] });
    cluster.node(3).step(forwarded).unwrap();
    assert!(!cluster.node(3).has_ready());
    assert_eq!(cluster.node(3).last_index(), last);
}

/// A forwarded proposal lost on the way is never applied anywhere: the engine reports nothing
/// for it, and the proposer's timeout is the only outcome.
#[test]
fn lost_forwarded_proposal_is_never_applied() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(2).propose(Bytes::from_static(b"lost")).unwrap();
    cluster.process_readies();
    cluster.queue.retain(|m| !matches!(m.body, MessageBody::Propose { .. }));
    cluster.stabilize();
    for _ in 0..30 {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert!(!anyone_holds(&mut cluster, b"lost"));
}

/// The proposals a follower takes in one turn travel to the leader in one message, in the
/// order they were made, and the leader appends them in that order.
#[test]
fn proposals_of_one_turn_share_one_message() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    for data in [&b"a"[..], b"b", b"c"] {
        cluster.node(2).propose(Bytes::copy_from_slice(data)).unwrap();
    }
    let ready = common::persist_ready(cluster.node(2));
    let proposes: Vec<_> =
        ready.messages.iter().filter(|m| matches!(m.body, MessageBody::Propose { .. })).collect();
    assert_eq!(proposes.len(), 1, "one message: {proposes:?}");
    let MessageBody::Propose { proposals } = &proposes[0].body else { unreachable!() };
    assert_eq!(proposals, &[&b"a"[..], b"b", b"c"]);

    cluster.node(1).step(proposes[0].clone()).unwrap();
    let last = cluster.node(1).last_index();
    let appended = cluster.node(1).log_entries(Index(last.0 - 2), last.next(), u64::MAX).unwrap();
    let data: Vec<_> = appended.iter().map(|e| e.data.clone()).collect();
    assert_eq!(data, [&b"a"[..], b"b", b"c"]);
}

/// A `Propose` carrying no proposal (a peer may send one) changes nothing at the leader.
#[test]
fn an_empty_propose_changes_nothing() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let last = cluster.node(1).last_index();
    let empty = msg(2, 1, 1, MessageBody::Propose { proposals: Vec::new() });
    cluster.node(1).step(empty).unwrap();
    assert!(!cluster.node(1).has_ready());
    assert_eq!(cluster.node(1).last_index(), last);
}

/// A message of forwarded proposals stays within `append_bytes_max`, each counted as the
/// entry it becomes: the proposal that would take it over starts the next message.
#[test]
fn a_message_of_proposals_is_bounded_in_bytes() {
    let proposal_bytes = 2 + 24; // two data bytes and an entry's header
    let mut cluster = Cluster::new(3, |c| c.append_bytes_max = 2 * proposal_bytes + 1);
    cluster.elect(1);
    for _ in 0..5 {
        cluster.node(2).propose(Bytes::from_static(b"xx")).unwrap();
    }
    let ready = common::persist_ready(cluster.node(2));
    let sizes: Vec<usize> = ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Propose { proposals } => Some(proposals.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [2, 2, 1]);
}

/// A leader takes a message's proposals in order until it refuses one (here: too many bytes
/// uncommitted); that one and the rest are dropped, and their proposers time out.
#[test]
fn a_leader_takes_a_messages_proposals_until_it_refuses_one() {
    let entry_bytes = 1 + 24; // one data byte and an entry's header
    let mut cluster = Cluster::new(3, |c| c.uncommitted_bytes_max = 2 * entry_bytes);
    cluster.elect(1);
    let last = cluster.node(1).last_index();
    let proposals = [&b"a"[..], b"b", b"c", b"d"].map(Bytes::copy_from_slice).to_vec();
    cluster.node(1).step(msg(2, 1, 1, MessageBody::Propose { proposals })).unwrap();
    let node = cluster.node(1);
    let appended = node.log_entries(last.next(), node.last_index().next(), u64::MAX).unwrap();
    let data: Vec<_> = appended.iter().map(|e| e.data.clone()).collect();
    assert_eq!(data, [&b"a"[..], b"b"]);
}
