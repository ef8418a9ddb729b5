//! Snapshots and log compaction (paper §7): a leader sends its snapshot to a follower that
//! needs compacted entries; a follower installs it, keeping a consistent suffix; lost
//! snapshots are sent again.

mod common;

use bytes::Bytes;
use common::{entries_with_terms, msg, node_with_log, persist_ready, Cluster};
use raft_core::{
    AppendResult, ConfigError, HardState, Index, InitialState, LogStore, MemLogStore, Membership,
    MessageBody, NodeId, RawNode, SnapshotMeta, StepError, Term,
};

fn snapshot(term: u64, index: u64) -> SnapshotMeta {
    SnapshotMeta {
        index: Index(index),
        term: Term(term),
        membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

/// A follower of term 3 holding entries of terms `terms`, `commit` of them committed.
fn follower(terms: &[u64], commit: u64) -> common::Node {
    let hard_state = HardState { term: Term(3), vote: None, commit: Index(commit) };
    node_with_log(2, &[1, 2, 3], &entries_with_terms(terms), hard_state, |_| {})
}

/// The one message `node`'s next Ready sends after persisting.
fn ack(ready: &raft_core::Ready) -> AppendResult {
    match ready.messages_after_persist.as_slice() {
        [m] => match m.body {
            MessageBody::AppendResponse(result) => result,
            ref other => panic!("expected an append response, got {other:?}"),
        },
        other => panic!("expected one answer, got {other:?}"),
    }
}

/// The leader compacts its log; a follower that missed those entries gets the snapshot,
/// installs it, and then receives the rest by ordinary appends.
#[test]
fn lagging_follower_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    for _ in 0..20 {
        cluster.node(1).propose(Bytes::from_static(b"x")).unwrap();
    }
    cluster.stabilize_without(3);
    let leader = cluster.node(1);
    let upto = leader.compactable_index();
    assert_eq!(upto, leader.last_index());
    let membership = leader.membership().clone();
    leader.store_mut().record_snapshot(upto, membership).unwrap();
    leader.store_mut().compact(upto).unwrap();
    cluster.node(1).propose(Bytes::from_static(b"after")).unwrap();

    cluster.node(1).tick(); // a heartbeat: node 3's answer shows it lacks compacted entries
    let mut installed = None;
    for _ in 0..1_000 {
        if cluster.node(3).has_ready() {
            let ready = persist_ready(cluster.node(3));
            installed = installed.or(ready.snapshot.clone());
            cluster.queue.extend(common::all_messages(&ready));
        }
        if !cluster.deliver_one() && !cluster.process_readies() && !cluster.node(3).has_ready() {
            break;
        }
    }
    assert_eq!(installed.map(|s| s.index), Some(upto));
    let last = cluster.node(1).last_index();
    assert_eq!(cluster.node(3).last_index(), last);
    assert_eq!(cluster.node(3).commit(), last);
    assert_eq!(cluster.node(3).store().first_index(), upto.next());
    assert_eq!(cluster.node(3).log_term(last), cluster.node(1).log_term(last));
}

/// A follower whose log holds the snapshot's last entry keeps its log, suffix included (it
/// is consistent with the leader's), and only learns the commit index.
#[test]
fn follower_holding_the_snapshot_entry_keeps_its_suffix() {
    let mut n2 = follower(&[1, 1, 1, 1, 1], 2);
    n2.step(msg(1, 2, 3, MessageBody::InstallSnapshot { snapshot: snapshot(1, 3) })).unwrap();
    let ready = persist_ready(&mut n2);
    assert_eq!(ready.snapshot, None);
    assert_eq!(ack(&ready), AppendResult::Accepted { match_index: Index(3) });
    assert_eq!(n2.last_index(), Index(5));
    assert_eq!(n2.commit(), Index(3));
}

/// A follower whose log disagrees with the snapshot drops its whole log and installs the
/// snapshot; the acknowledgement waits for the install to be durable.
#[test]
fn follower_with_a_divergent_log_installs_the_snapshot() {
    let mut n2 = follower(&[1, 1, 2, 2], 1);
    n2.step(msg(1, 2, 3, MessageBody::InstallSnapshot { snapshot: snapshot(3, 3) })).unwrap();
    let ready = n2.ready();
    assert_eq!(ready.snapshot, Some(snapshot(3, 3)));
    assert!(ready.messages.is_empty(), "the ack must wait for the install");
    assert!(ready.committed_entries.is_empty(), "entries the snapshot covers were applied");
    assert_eq!(ack(&ready), AppendResult::Accepted { match_index: Index(3) });
    n2.store_mut().install_snapshot(ready.snapshot.as_ref().unwrap());
    n2.on_persisted(ready.number);
    assert_eq!((n2.last_index(), n2.commit()), (Index(3), Index(3)));
    assert_eq!(n2.log_term(Index(3)), Some(Term(3)));
    assert_eq!(n2.store().first_index(), Index(4));
    assert_eq!(n2.status().applied, Index(3));
    n2.check_invariants().unwrap();
}

/// A snapshot that covers nothing new is acknowledged with the follower's commit index and
/// changes nothing.
#[test]
fn stale_snapshot_changes_nothing() {
    let mut n2 = follower(&[1, 1, 1, 1, 1], 5);
    n2.step(msg(1, 2, 3, MessageBody::InstallSnapshot { snapshot: snapshot(1, 3) })).unwrap();
    let ready = persist_ready(&mut n2);
    assert_eq!(ready.snapshot, None);
    assert_eq!(ack(&ready), AppendResult::Accepted { match_index: Index(5) });
    assert_eq!(n2.last_index(), Index(5));
}

/// A snapshot nobody acknowledges is sent again once an election timeout has passed (the
/// transport may have lost it); the host can also report the failure at once.
#[test]
fn lost_snapshot_is_sent_again() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).propose(Bytes::from_static(b"x")).unwrap();
    cluster.stabilize_without(3);
    let upto = cluster.node(1).compactable_index();
    let leader = cluster.node(1);
    leader
        .store_mut()
        .record_snapshot(upto, Membership::new([NodeId(1), NodeId(2), NodeId(3)]))
        .unwrap();
    leader.store_mut().compact(upto).unwrap();
    let is_snapshot = |m: &raft_core::Message| m.body.kind_name() == "InstallSnapshot";
    let mut sent = 0;
    for _ in 0..25 {
        cluster.node(1).tick();
        loop {
            let any_ready = cluster.process_readies();
            sent += cluster.queue.iter().filter(|m| is_snapshot(m)).count();
            cluster.queue.retain(|m| !is_snapshot(m)); // every snapshot is lost
            if !cluster.deliver_one() && !any_ready {
                break;
            }
        }
    }
    assert!(sent >= 2, "the snapshot was sent {sent} times in 25 ticks");
    cluster.node(1).report_snapshot_failure(NodeId(3));
    cluster.node(1).tick();
    cluster.stabilize();
    assert_eq!(cluster.node(3).last_index(), cluster.node(1).last_index());
}

/// A node restarts from a compacted store only with its state machine restored from the
/// snapshot; a snapshot message without voters is malformed.
#[test]
fn compacted_store_needs_a_restored_state_machine_and_sane_snapshots() {
    let mut store = MemLogStore::new();
    store.append(&entries_with_terms(&[1, 1, 1]));
    store.record_snapshot(Index(2), Membership::new([NodeId(1)])).unwrap();
    store.compact(Index(2)).unwrap();
    let initial = |applied| InitialState {
        hard_state: HardState::default(),
        voters: vec![NodeId(1)],
        applied,
    };
    let config = raft_core::Config::new(NodeId(1));
    let refused = RawNode::new(config.clone(), store.clone(), initial(Index(0))).err();
    assert!(matches!(refused, Some(ConfigError::StartState(_))));
    let node = RawNode::new(config, store, initial(Index(2))).unwrap();
    assert_eq!(node.commit(), Index(2), "what a snapshot covers is committed");

    let mut n2 = follower(&[1], 1);
    let empty = SnapshotMeta { membership: Membership::default(), ..snapshot(1, 3) };
    let err = n2.step(msg(1, 2, 3, MessageBody::InstallSnapshot { snapshot: empty })).unwrap_err();
    assert!(matches!(err, StepError::Malformed { .. }));
}
