//! Election rules (paper §5.2, §5.4.1; thesis §9.6 PreVote, §6.2 CheckQuorum), one rule per
//! test. The scenario files under tests/scenarios/election/ show the same rules as traces.

mod common;

use common::{entries_with_terms, msg, node, node_with_log, persist_ready, process_ready, Cluster};
use raft_core::{EntryId, HardState, Index, MessageBody, NodeId, Role, Term};

fn vote_request(from: u64, term: u64, last: (u64, u64)) -> raft_core::Message {
    let last = EntryId::new(Term(last.0), Index(last.1));
    msg(from, 3, term, MessageBody::Vote { last, transfer: false })
}

/// What node 3 answered in its next Ready: `Some(granted)` or `None` for no answer.
fn answer(n3: &mut common::Node) -> Option<bool> {
    let ready = persist_ready(n3);
    ready.messages_after_persist.iter().find_map(|m| match m.body {
        MessageBody::VoteResponse { granted } => Some(granted),
        _ => None,
    })
}

/// §5.2: each server votes for at most one candidate in a term, and the vote survives a
/// restart because it is part of the durable hard state.
#[test]
fn one_vote_per_term() {
    let mut n3 = node(3, &[1, 2, 3], |_| {});
    n3.step(vote_request(1, 1, (0, 0))).unwrap();
    assert_eq!(answer(&mut n3), Some(true));
    n3.step(vote_request(2, 1, (0, 0))).unwrap();
    assert_eq!(answer(&mut n3), Some(false), "a second vote in term 1");
    n3.step(vote_request(1, 1, (0, 0))).unwrap();
    assert_eq!(answer(&mut n3), Some(true), "a repeated request gets the same answer");

    // Restart from the durable hard state: the vote for 1 still stands.
    let hard_state = n3.status().hard_state;
    assert_eq!(hard_state.vote, Some(NodeId(1)));
    let mut restarted = node_with_log(3, &[1, 2, 3], &[], hard_state, |_| {});
    restarted.step(vote_request(2, 1, (0, 0))).unwrap();
    assert_eq!(answer(&mut restarted), Some(false), "voted twice in term 1 after a restart");
}

/// §5.4.1: a vote goes only to a candidate whose last entry is at least as up to date:
/// a later last term, or the same last term and at least as long a log.
#[test]
fn rejects_candidate_with_stale_log() {
    // Node 3's log: terms 1, 1, 2 (last entry 2/3).
    let log = entries_with_terms(&[1, 1, 2]);
    let hard_state = HardState { term: Term(2), vote: None, commit: Index(0) };
    let cases = [
        ((1, 5), false, "older last term, longer log"),
        ((2, 2), false, "same last term, shorter log"),
        ((2, 3), true, "same last entry"),
        ((2, 4), true, "same last term, longer log"),
        ((3, 1), true, "later last term, shorter log"),
    ];
    for (last, granted, why) in cases {
        let mut n3 = node_with_log(3, &[1, 2, 3], &log, hard_state, |_| {});
        n3.step(vote_request(1, 3, last)).unwrap();
        assert_eq!(answer(&mut n3), Some(granted), "{why}");
        assert_eq!(n3.term(), Term(3), "the term is adopted either way ({why})");
    }
}

/// Thesis §9.6: neither the pre-candidate nor the nodes it asks raise their term; only a won
/// pre-vote leads to a real election.
#[test]
fn prevote_does_not_raise_term() {
    let mut cluster = Cluster::new(3, |c| c.pre_vote = true);
    cluster.node(1).campaign();
    assert_eq!(cluster.node(1).role(), Role::PreCandidate);
    // Node 1's pre-vote requests reach 2 and 3, which grant them; the grants are in flight.
    cluster.process_readies();
    while cluster.queue.front().is_some_and(|m| m.to != NodeId(1)) {
        cluster.deliver_one();
    }
    cluster.process_readies();
    for id in 1..=3 {
        assert_eq!(cluster.node(id).term(), Term(0), "node {id} raised its term for a pre-vote");
        assert_eq!(cluster.node(id).status().hard_state.vote, None);
    }
    // Delivering the grants starts the real election, in term 1.
    cluster.stabilize();
    assert_eq!(cluster.node(1).role(), Role::Leader);
    assert_eq!(cluster.node(1).term(), Term(1));

    // A node cut off from everyone times out again and again without raising its term.
    let mut alone = node(3, &[1, 2, 3], |c| c.pre_vote = true);
    for _ in 0..100 {
        alone.tick();
        process_ready(&mut alone);
    }
    assert_eq!(alone.role(), Role::PreCandidate);
    assert_eq!(alone.term(), Term(0));
}

/// Thesis §6.2: with CheckQuorum, a leader that hears from no majority for `election_ticks`
/// ticks steps down at that tick, before any follower (whose timeout is at least
/// `election_ticks`) can campaign. Without CheckQuorum it never notices.
#[test]
fn leader_steps_down_without_quorum() {
    for check_quorum in [true, false] {
        let mut cluster = Cluster::new(3, |c| c.check_quorum = check_quorum);
        cluster.elect(1);
        let election_ticks = 10;
        let mut stepped_down_after = None;
        for tick in 1..=4 * election_ticks {
            cluster.node(1).tick();
            process_ready(cluster.node(1)); // its heartbeats go nowhere
            if cluster.node(1).role() != Role::Leader {
                stepped_down_after = Some(tick);
                break;
            }
        }
        if check_quorum {
            let ticks = stepped_down_after.expect("leader kept office without a quorum");
            assert_eq!(ticks, election_ticks, "stepped down after {ticks} ticks");
            assert_eq!(cluster.node(1).role(), Role::Follower);
            assert_eq!(cluster.node(1).leader(), None);
        } else {
            assert_eq!(stepped_down_after, None, "stepped down without CheckQuorum");
        }
    }
}

/// Thesis §4.2.3: a follower that heard from its leader within the election timeout ignores
/// vote requests, even from a higher term, so a partitioned node cannot depose the leader.
/// Once the lease expires, the same request is heard.
#[test]
fn follower_in_lease_ignores_vote_requests() {
    let mut cluster = Cluster::new(3, |c| c.pre_vote = false);
    cluster.elect(1);
    let last = EntryId::new(Term(1), cluster.node(1).last_index());
    let request = msg(2, 3, 5, MessageBody::Vote { last, transfer: false });
    cluster.node(3).step(request.clone()).unwrap();
    assert_eq!(cluster.node(3).term(), Term(1), "vote request heard inside the lease");
    assert_eq!(answer(cluster.node(3)), None);
    assert_eq!(cluster.node(3).leader(), Some(NodeId(1)));

    // The leader falls silent; after an election timeout's worth of ticks the lease is over.
    // (Node 3 campaigns itself too; a higher-term request still wins its attention.)
    for _ in 0..10 {
        cluster.node(3).tick();
    }
    process_ready(cluster.node(3));
    cluster.node(3).step(msg(2, 3, 5, MessageBody::Vote { last, transfer: false })).unwrap();
    assert_eq!(cluster.node(3).term(), Term(5));
    assert_eq!(answer(cluster.node(3)), Some(true));
}
