//! Bad or odd input from peers: never a panic. A malformed message is refused with a
//! [`StepError`] and changes nothing; a well-formed but stale, future, unknown or out-of-range
//! one is ignored, answered, or makes the node step down, as the protocol says.

mod common;

use common::{
    entries_with_terms, entry, msg, node, node_with_log, persist_ready, process_ready, Cluster,
    Node,
};
use raft_core::{
    AppendResult, EntryId, HardState, Index, Message, MessageBody, NodeId, Role, StepError, Term,
};

fn append(prev: (u64, u64), entries: Vec<raft_core::Entry>, commit: u64) -> MessageBody {
    let prev = EntryId::new(Term(prev.0), Index(prev.1));
    MessageBody::Append { prev, entries, commit: Index(commit) }
}

/// A configuration entry naming `voters`.
fn config_entry(term: u64, index: u64, voters: &[u64]) -> raft_core::Entry {
    let membership = raft_core::Membership::new(voters.iter().map(|&id| NodeId(id)));
    let kind = raft_core::EntryKind::Config(Box::new(membership));
    raft_core::Entry { term: Term(term), index: Index(index), kind, data: bytes::Bytes::new() }
}

/// A follower of term 2 holding entries 1..=3 of terms 1, 1, 2, one committed.
fn follower() -> Node {
    let hard_state = HardState { term: Term(2), vote: None, commit: Index(1) };
    node_with_log(2, &[1, 2, 3], &entries_with_terms(&[1, 1, 2]), hard_state, |_| {})
}

/// The one message `node` sends next, persisting its Ready.
fn only_reply(node: &mut Node) -> Message {
    let ready = persist_ready(node);
    let mut sent = common::all_messages(&ready);
    assert_eq!(sent.len(), 1, "expected one reply, got {sent:?}");
    sent.pop().unwrap()
}

/// Appends whose entries do not follow `prev`, go back in term, or claim a term beyond the
/// message's are refused before they touch any state; so is a message from node 0 or from
/// the node itself, and one addressed to somebody else.
#[test]
fn malformed_append_is_refused() {
    let cases: Vec<(Message, &str)> = vec![
        (msg(1, 2, 2, append((2, 3), vec![entry(2, 5)], 0)), "gap after prev"),
        (msg(1, 2, 2, append((2, 3), vec![entry(2, 4), entry(2, 4)], 0)), "repeated index"),
        (msg(1, 2, 2, append((2, 3), vec![entry(1, 4)], 0)), "term below prev's"),
        (msg(1, 2, 2, append((1, 2), vec![entry(3, 3)], 0)), "term above the message's"),
        (msg(0, 2, 2, append((2, 3), vec![], 0)), "sender 0"),
        (msg(2, 2, 2, append((2, 3), vec![], 0)), "sender is the receiver"),
        (msg(1, 2, u64::MAX, append((2, 3), vec![], 0)), "term beyond Term::MAX"),
        (msg(1, 2, 2, append((2, u64::MAX), vec![entry(2, 0)], 0)), "index overflow"),
        (msg(1, 2, 2, append((2, 3), vec![], u64::MAX)), "commit beyond Index::MAX"),
        (msg(1, 2, 2, append((2, 3), vec![config_entry(2, 4, &[])], 0)), "config without voters"),
        (msg(1, 2, 2, append((2, 3), vec![config_entry(2, 4, &[0, 1])], 0)), "config with node 0"),
    ];
    for (message, why) in cases {
        let mut n2 = follower();
        process_ready(&mut n2); // applies entry 1, so nothing is left to hand out
        let before = n2.status();
        let err = n2.step(message).expect_err(why);
        assert!(matches!(err, StepError::Malformed { .. }), "{why}: {err}");
        assert_eq!(n2.status(), before, "{why} changed state");
        assert!(!n2.has_ready(), "{why} produced output");
    }
    let mut n2 = follower();
    let err = n2.step(msg(1, 3, 2, append((2, 3), vec![], 0))).unwrap_err();
    assert_eq!(err, StepError::WrongRecipient { to: NodeId(3), me: NodeId(2) });
}

/// §5.1: a message from an earlier term is dropped, but a stale leader's append is answered
/// with the current term so it steps down; a message from a later term is adopted, turning a
/// leader into a follower of the new term.
#[test]
fn stale_and_future_terms_are_handled() {
    let mut n2 = follower();
    n2.step(msg(1, 2, 1, append((1, 2), vec![entry(1, 3)], 3))).unwrap();
    let reply = only_reply(&mut n2);
    assert_eq!(reply, msg(2, 1, 2, MessageBody::HeartbeatResponse { read_round: 0 }));
    assert_eq!(n2.last_index(), Index(3));
    assert_eq!(n2.log_term(Index(3)), Some(Term(2)), "a stale append overwrote an entry");
    assert_eq!(n2.commit(), Index(1));

    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let leader = cluster.node(1);
    leader.step(msg(3, 1, 1_000_000, MessageBody::HeartbeatResponse { read_round: 0 })).unwrap();
    assert_eq!(leader.role(), Role::Follower);
    assert_eq!(leader.term(), Term(1_000_000));
    assert_eq!(leader.leader(), None);
    leader.step(msg(2, 1, Term::MAX.0, append((0, 0), vec![], 0))).unwrap();
    assert_eq!(leader.term(), Term::MAX);
    assert_eq!(leader.leader(), Some(NodeId(2)));
}

/// Answers from a node outside the configuration are ignored: they count toward no vote and
/// no commit, and a leader keeps no progress for the sender.
#[test]
fn unknown_sender_is_ignored() {
    let mut n1 = node(1, &[1, 2, 3], |c| c.pre_vote = false);
    n1.campaign();
    process_ready(&mut n1);
    n1.step(msg(9, 1, 1, MessageBody::VoteResponse { granted: true })).unwrap();
    assert_eq!(n1.role(), Role::Candidate, "a stranger's vote elected the candidate");

    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let index = cluster.node(1).propose(bytes::Bytes::from_static(b"x")).unwrap().index().unwrap();
    process_ready(cluster.node(1));
    let ack = MessageBody::AppendResponse(AppendResult::Accepted { match_index: index });
    cluster.node(1).step(msg(9, 1, 1, ack)).unwrap();
    assert!(cluster.node(1).commit() < index, "a stranger's ack committed an entry");
    assert!(cluster.node(1).progress(NodeId(9)).is_none());
    assert!(!common::has_kind(&persist_ready(cluster.node(1)).messages, "Append"));
}

/// An append whose `prev` lies beyond the follower's log fails the consistency check (§5.3)
/// and is answered with a hint at the follower's last entry; so is a leader's claim that a
/// follower matched beyond the leader's own log, which the leader ignores.
#[test]
fn append_beyond_the_log_is_rejected() {
    let mut n2 = follower();
    n2.step(msg(1, 2, 2, append((2, 1_000), vec![entry(2, 1_001)], 1_001))).unwrap();
    let hint = EntryId::new(Term(2), Index(3));
    let rejected = AppendResult::Rejected { rejected: Index(1_000), hint };
    assert_eq!(only_reply(&mut n2), msg(2, 1, 2, MessageBody::AppendResponse(rejected)));
    assert_eq!(n2.last_index(), Index(3));
    assert_eq!(n2.commit(), Index(1));

    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let far = AppendResult::Accepted { match_index: Index(1_000) };
    cluster.node(1).step(msg(2, 1, 1, MessageBody::AppendResponse(far))).unwrap();
    let last = cluster.node(1).last_index();
    assert!(cluster.node(1).progress(NodeId(2)).unwrap().match_index <= last);
    cluster.node(1).check_invariants().unwrap();
}

/// An append with no entries is a probe: a matching `prev` is accepted (and may advance the
/// commit index, never past `prev`); a non-matching one is rejected with a hint.
#[test]
fn empty_append_is_a_probe() {
    let mut n2 = follower();
    n2.step(msg(1, 2, 2, append((1, 2), vec![], 3))).unwrap();
    let accepted = AppendResult::Accepted { match_index: Index(2) };
    assert_eq!(only_reply(&mut n2), msg(2, 1, 2, MessageBody::AppendResponse(accepted)));
    assert_eq!(n2.commit(), Index(2), "commit may reach prev but not beyond it");
    assert_eq!(n2.last_index(), Index(3), "a probe truncated the log");

    let mut n2 = follower();
    n2.step(msg(1, 2, 3, append((3, 3), vec![], 3))).unwrap();
    let hint = EntryId::new(Term(2), Index(3));
    let rejected = AppendResult::Rejected { rejected: Index(3), hint };
    assert_eq!(only_reply(&mut n2), msg(2, 1, 3, MessageBody::AppendResponse(rejected)));
    assert_eq!(n2.commit(), Index(1));
}

/// §5.1: a vote request from an earlier term is refused with the current term, so a stale
/// candidate learns it (the simulator found a candidate no node ever wrote to otherwise).
#[test]
fn stale_candidate_is_told_the_term() {
    let mut n2 = follower();
    let last = EntryId::new(Term(2), Index(9));
    n2.step(msg(1, 2, 1, MessageBody::Vote { last, transfer: false })).unwrap();
    let refused = MessageBody::VoteResponse { granted: false };
    assert_eq!(only_reply(&mut n2), msg(2, 1, 2, refused));
}
