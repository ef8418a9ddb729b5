//! Linearizable reads with ReadIndex (thesis §6.4): one heartbeat round confirms every read
//! taken before it; a new leader waits for its own-term commit; followers ask the leader.

mod common;

use bytes::Bytes;
use common::{node, persist_ready, process_ready, Cluster};
use raft_core::{Index, MessageBody, NodeId, ReadIndexError, ReadState, Role};

/// The read states node `id` hands out while the cluster settles.
fn settle_collecting_reads(cluster: &mut Cluster, id: u64) -> Vec<ReadState> {
    let mut reads = Vec::new();
    loop {
        if cluster.node(id).has_ready() {
            let ready = persist_ready(cluster.node(id));
            reads.extend(ready.read_states.iter().copied());
            cluster.queue.extend(common::all_messages(&ready));
        }
        let others = cluster.process_readies();
        if !cluster.deliver_one() && !others && !cluster.node(id).has_ready() {
            return reads;
        }
    }
}

/// Whether `ready` sends heartbeats carrying `round`.
fn carries_round(messages: &[raft_core::Message], round: u64) -> bool {
    messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Heartbeat { read_round, .. } if read_round == round))
}

/// One heartbeat round confirms every read taken before it; each read's index is the commit
/// index when the leader took it.
#[test]
fn one_heartbeat_round_confirms_every_pending_read() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let commit = cluster.node(1).commit();
    for request in [7, 8, 9] {
        cluster.node(1).read_index(request).unwrap();
    }
    let ready = persist_ready(cluster.node(1));
    assert!(ready.read_states.is_empty(), "released before the round was confirmed");
    assert!(carries_round(&ready.messages, 1));
    let heartbeats = ready.messages.iter().filter(|m| m.body.kind_name() == "Heartbeat").count();
    assert_eq!(heartbeats, 2, "one heartbeat per follower serves all three reads");
    cluster.queue.extend(common::all_messages(&ready));
    let reads = settle_collecting_reads(&mut cluster, 1);
    let expected: Vec<_> = [7, 8, 9].map(|request| ReadState { request, index: commit }).into();
    assert_eq!(reads, expected);
}

/// A new leader's commit index may lag behind what its predecessor committed, so it serves no
/// read before it has committed an entry of its own term (its no-op).
#[test]
fn new_leader_serves_no_read_before_its_own_term_commit() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.node(1).campaign();
    while cluster.node(1).role() != Role::Leader {
        cluster.process_readies();
        cluster.deliver_one();
    }
    assert!(cluster.node(1).commit() < cluster.node(1).last_index(), "the no-op is not committed");
    cluster.node(1).read_index(1).unwrap();
    let ready = persist_ready(cluster.node(1));
    assert!(!carries_round(&ready.messages, 1), "a round started before the own-term commit");
    cluster.queue.extend(common::all_messages(&ready));
    let reads = settle_collecting_reads(&mut cluster, 1);
    let noop = cluster.node(1).last_index();
    assert_eq!(reads, vec![ReadState { request: 1, index: noop }]);
}

/// A follower asks its leader; the leader confirms the round and answers with its commit
/// index; the follower hands the read to its host.
#[test]
fn follower_read_asks_the_leader() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).propose(Bytes::from_static(b"x")).unwrap();
    cluster.stabilize();
    cluster.node(2).read_index(5).unwrap();
    let reads = settle_collecting_reads(&mut cluster, 2);
    let commit = cluster.node(1).commit();
    assert_eq!(reads, vec![ReadState { request: 5, index: commit }]);
}

/// A leader cut off from the majority cannot confirm a round, so it never releases the read;
/// when it learns of the new term it steps down and drops it (the reader times out).
#[test]
fn deposed_leader_never_releases_a_read() {
    // Without CheckQuorum's lease, so node 2 can be elected at once in this script.
    let mut cluster = Cluster::new(3, |c| c.check_quorum = false);
    cluster.elect(1);
    cluster.node(1).read_index(1).unwrap();
    cluster.stabilize_without(1);
    let reads = persist_ready(cluster.node(1)).read_states;
    assert!(reads.is_empty());
    cluster.elect(2);
    let reads = settle_collecting_reads(&mut cluster, 1);
    assert!(reads.is_empty(), "a deposed leader released {reads:?}");
    assert_eq!(cluster.node(1).leader(), Some(NodeId(2)));
}

/// Reads are refused at once with no known leader, and beyond `read_requests_max`.
#[test]
fn reads_are_refused_without_a_leader_or_beyond_the_limit() {
    let mut lonely = node(2, &[1, 2, 3], |_| {});
    assert_eq!(lonely.read_index(1), Err(ReadIndexError::NoLeader));

    let mut cluster = Cluster::new(3, |c| c.read_requests_max = 2);
    cluster.elect(1);
    cluster.node(1).read_index(1).unwrap();
    cluster.node(1).read_index(2).unwrap();
    let refused = cluster.node(1).read_index(3).unwrap_err();
    assert_eq!(refused, ReadIndexError::TooManyPending { read_requests_max: 2 });
}

/// A one-node cluster is its own majority: once its no-op commits, reads need no round.
#[test]
fn single_node_reads_need_no_round() {
    let mut alone = node(1, &[1], |_| {});
    alone.campaign();
    process_ready(&mut alone);
    assert_eq!(alone.role(), Role::Leader);
    alone.read_index(4).unwrap();
    let ready = persist_ready(&mut alone);
    assert_eq!(ready.read_states, vec![ReadState { request: 4, index: Index(1) }]);
}
