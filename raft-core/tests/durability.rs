//! What must be durable before which message leaves (the table in the crate docs and in
//! docs/engine.md). Each test takes one Ready and checks which list each message sits in:
//! `messages` may leave at once, `messages_after_persist` only after the Ready is durable.

mod common;

use bytes::Bytes;
use common::{entry, has_kind, msg, node, persist_ready, Cluster};
use raft_core::{AppendResult, EntryId, HardState, Index, MessageBody, NodeId, Role, Term};

/// Vote requests promise "I am at this term and voted for myself": that must survive a crash,
/// or the candidate could vote again in the same term after a restart (§5.2, Figure 2).
#[test]
fn vote_request_waits_for_term_and_self_vote() {
    let mut n1 = node(1, &[1, 2, 3], |c| c.pre_vote = false);
    n1.campaign();
    let ready = n1.ready();
    let expected = HardState { term: Term(1), vote: Some(NodeId(1)), commit: Index(0) };
    assert_eq!(ready.hard_state, Some(expected));
    assert!(!has_kind(&ready.messages, "Vote"), "a vote request left before the write");
    let requests: Vec<_> = ready.messages_after_persist.iter().map(|m| (m.to, m.term)).collect();
    assert_eq!(requests, vec![(NodeId(2), Term(1)), (NodeId(3), Term(1))]);
}

/// A granted vote is a promise not to vote for anyone else in this term: it may leave only
/// once the vote is durable (§5.2, Figure 2 "persistent state").
#[test]
fn vote_response_waits_for_the_vote() {
    let mut n2 = node(2, &[1, 2, 3], |_| {});
    let last = EntryId::new(Term(0), Index(0));
    n2.step(msg(1, 2, 1, MessageBody::Vote { last, transfer: false })).unwrap();
    let ready = n2.ready();
    let expected = HardState { term: Term(1), vote: Some(NodeId(1)), commit: Index(0) };
    assert_eq!(ready.hard_state, Some(expected));
    assert!(ready.messages.is_empty(), "nothing may leave before the vote is durable");
    let granted = MessageBody::VoteResponse { granted: true };
    assert_eq!(ready.messages_after_persist, vec![msg(2, 1, 1, granted)]);
}

/// An accepted append tells the leader "these entries are durable here"; the leader counts
/// them toward commitment, so they must be on disk first (§5.3, §5.4).
#[test]
fn append_response_waits_for_the_entries() {
    let mut n2 = node(2, &[1, 2, 3], |_| {});
    let prev = EntryId::new(Term(0), Index(0));
    let entries = vec![entry(1, 1), entry(1, 2)];
    n2.step(msg(1, 2, 1, MessageBody::Append { prev, entries, commit: Index(0) })).unwrap();
    let ready = n2.ready();
    assert_eq!(ready.entries, vec![entry(1, 1), entry(1, 2)]);
    assert!(ready.messages.is_empty(), "the ack left before the entries were written");
    let accepted = AppendResult::Accepted { match_index: Index(2) };
    let ack = MessageBody::AppendResponse(accepted);
    assert_eq!(ready.messages_after_persist, vec![msg(2, 1, 1, ack)]);
    assert_eq!(n2.status().persisted_index, Index(0));
    n2.store_mut().append(&ready.entries);
    n2.on_persisted(ready.number);
    assert_eq!(n2.status().persisted_index, Index(2));
}

/// A leader's appends promise nothing about its own disk, so they leave at once and the leader
/// writes in parallel with its followers (thesis §10.2.1).
#[test]
fn leader_appends_leave_before_its_own_write() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let index = cluster.node(1).propose(Bytes::from_static(b"x")).unwrap().index().unwrap();
    let ready = cluster.node(1).ready();
    assert_eq!(ready.entries.last().map(|e| e.index), Some(index));
    let carries_entry = |m: &raft_core::Message| {
        matches!(&m.body, MessageBody::Append { entries, .. }
            if entries.iter().any(|e| e.index == index))
    };
    let early: Vec<_> = ready.messages.iter().filter(|m| carries_entry(m)).map(|m| m.to).collect();
    assert_eq!(early, vec![NodeId(2), NodeId(3)]);
    assert!(!ready.messages_after_persist.iter().any(carries_entry));
}

/// A pre-vote changes no durable state (thesis §9.6), so its requests leave at once and no
/// hard state is written.
#[test]
fn prevote_request_changes_nothing_and_leaves_at_once() {
    let mut n1 = node(1, &[1, 2, 3], |c| c.pre_vote = true);
    n1.campaign();
    assert_eq!(n1.role(), Role::PreCandidate);
    let ready = n1.ready();
    assert_eq!(ready.hard_state, None, "a pre-vote must not touch term or vote");
    assert!(ready.messages_after_persist.is_empty());
    let requests: Vec<_> = ready.messages.iter().map(|m| (m.to, m.term)).collect();
    assert_eq!(requests, vec![(NodeId(2), Term(1)), (NodeId(3), Term(1))]);
    assert!(has_kind(&ready.messages, "PreVote"));
    assert_eq!(n1.term(), Term(0));
}

/// The leader's own log counts toward a quorum only once the host reports it durable
/// (thesis §10.2.1): with one follower ack out of two, the entry commits exactly when the
/// leader's write completes, not before.
#[test]
fn leader_counts_itself_only_after_persisted() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let index = cluster.node(1).propose(Bytes::from_static(b"x")).unwrap().index().unwrap();
    let ready = cluster.node(1).ready();
    let to_node_2 = ready.messages.iter().find(|m| m.to == NodeId(2)).unwrap().clone();
    cluster.node(2).step(to_node_2).unwrap();
    let ack = persist_ready(cluster.node(2)).messages_after_persist;
    for m in ack {
        cluster.node(1).step(m).unwrap();
    }
    assert!(cluster.node(1).commit() < index, "committed with one durable copy of three");
    cluster.node(1).store_mut().append(&ready.entries);
    cluster.node(1).on_persisted(ready.number);
    assert_eq!(cluster.node(1).commit(), index);
}

/// A follower applies only entries it holds durably, even when the leader's commit index is
/// ahead: otherwise a crash could leave the state machine ahead of the log (docs/engine.md).
#[test]
fn follower_applies_only_what_it_has_persisted() {
    let mut n2 = node(2, &[1, 2, 3], |_| {});
    let prev = EntryId::new(Term(0), Index(0));
    let entries = vec![entry(1, 1), entry(1, 2)];
    n2.step(msg(1, 2, 1, MessageBody::Append { prev, entries, commit: Index(2) })).unwrap();
    let first = n2.ready();
    assert_eq!(first.hard_state.map(|hs| hs.commit), Some(Index(2)));
    assert!(first.committed_entries.is_empty(), "applied entries not yet durable");
    n2.store_mut().append(&first.entries);
    n2.on_persisted(first.number);
    let second = n2.ready();
    let applied: Vec<_> = second.committed_entries.iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![Index(1), Index(2)]);
}

/// An ack queued in one term must not leave after the node moved to a later term whose leader
/// replaced the acknowledged entries in the same Ready: the ack would claim entries the disk
/// never holds. (Found by the simulator, seed 4292 of the 100,000-seed run.)
///
/// 1. Node 2 at term 4 receives entries 1..=2 of term 4 and queues "match=2".
/// 2. Before its host takes a Ready, a term-5 leader sends entry 5/1, which replaces them.
/// 3. The Ready writes term 5 and entry 5/1 only; "term 4, match 2" must not be in it.
#[test]
fn ack_from_a_left_term_is_not_sent() {
    let mut n2 = node(2, &[1, 2, 3], |_| {});
    let prev = EntryId::new(Term(0), Index(0));
    let old = vec![entry(4, 1), entry(4, 2)];
    n2.step(msg(3, 2, 4, MessageBody::Append { prev, entries: old, commit: Index(0) })).unwrap();
    let new = vec![entry(5, 1)];
    n2.step(msg(1, 2, 5, MessageBody::Append { prev, entries: new, commit: Index(0) })).unwrap();
    let ready = n2.ready();
    assert_eq!(ready.entries, vec![entry(5, 1)]);
    let accepted = AppendResult::Accepted { match_index: Index(1) };
    let ack = MessageBody::AppendResponse(accepted);
    assert_eq!(ready.messages_after_persist, vec![msg(2, 1, 5, ack)]);
}

/// No message of a term leaves before that term is durable. A node that is the only voter
/// wins its election alone, in the same Ready that carries its new term: its appends to a
/// learner must wait for the write, or a crash before it could let the node lead that term a
/// second time with another log (found by the simulator).
#[test]
fn lone_voter_holds_its_first_appends_until_its_term_is_durable() {
    use raft_core::{InitialState, LogStore, MemLogStore, Membership, RawNode};
    let mut store = MemLogStore::new();
    store.append(&[entry(1, 1)]);
    let membership = Membership { learners: [NodeId(2)].into(), ..Membership::new([NodeId(1)]) };
    store.record_snapshot(Index(1), membership).unwrap();
    store.compact(Index(1)).unwrap();
    let hard_state = HardState { term: Term(1), vote: None, commit: Index(1) };
    let initial = InitialState { hard_state, voters: vec![NodeId(1)], applied: Index(1) };
    let mut n1 = RawNode::new(raft_core::Config::new(NodeId(1)), store, initial).unwrap();
    n1.campaign();
    assert_eq!(n1.role(), Role::Leader, "a lone voter wins at once");
    let ready = n1.ready();
    assert_eq!(ready.hard_state.map(|hs| hs.term), Some(Term(2)));
    assert!(ready.messages.is_empty(), "spoke for term 2 before writing it: {:?}", ready.messages);
    assert!(has_kind(&ready.messages_after_persist, "Append"));
    n1.store_mut().append(&ready.entries);
    n1.on_persisted(ready.number);
    n1.tick(); // a heartbeat to the learner
    let next = n1.ready();
    assert!(has_kind(&next.messages, "Heartbeat"), "once term 2 is durable, it speaks at once");
    assert_eq!(n1.store().last_index(), Index(2));
}
