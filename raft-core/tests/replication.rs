//! Replication (paper §5.3): conflict repair with the rejection hint, the pipelined in-flight
//! window, the byte bound on one append, and backpressure on proposals.
//! tests/scenarios/replication/ shows the traces.

mod common;

use bytes::Bytes;
use common::{entries_with_terms, node_with_log, run_of, Cluster, Node};
use raft_core::{
    AppendResult, Entry, HardState, Index, Message, MessageBody, NodeId, ProposeError, Role, Term,
};

/// Builds a log from runs of (term, length), starting at index 1.
fn log_of_runs(runs: &[(u64, usize)]) -> Vec<Entry> {
    let terms: Vec<u64> = runs.iter().flat_map(|&(term, len)| run_of(term, len)).collect();
    entries_with_terms(&terms)
}

fn restarted(id: u64, log: &[Entry], term: u64) -> Node {
    let hard_state = HardState { term: Term(term), vote: None, commit: Index(100) };
    node_with_log(id, &[1, 2, 3], log, hard_state, |_| {})
}

fn is_rejection_from_2(m: &Message) -> bool {
    m.from == NodeId(2)
        && matches!(m.body, MessageBody::AppendResponse(AppendResult::Rejected { .. }))
}

/// Delivers everything until quiet, counting the append rejections node 2 sends.
fn stabilize_counting_rejections(cluster: &mut Cluster) -> usize {
    let mut rejections = 0;
    loop {
        cluster.process_readies();
        let Some(front) = cluster.queue.front() else { return rejections };
        rejections += usize::from(is_rejection_from_2(front));
        cluster.deliver_one();
    }
}

/// §5.3 and its "optimization" paragraph: a follower 10,000 entries behind the leader, whose
/// own 5,000-entry suffix is from terms the leader never had, is repaired with one rejection
/// per divergent term rather than one per entry.
///
/// ```text
/// index:     1..=100   101..=2600   2601..=5100   5101..=7600   7601..=15100
/// leader 1:  term 1    term 3       term 3        term 3        term 5
/// node 2:    term 1    term 2       term 4        -             -
/// ```
#[test]
fn divergent_follower_10000_behind_is_repaired_in_few_round_trips() {
    let leader_log = log_of_runs(&[(1, 100), (3, 7500), (5, 7500)]);
    let follower_log = log_of_runs(&[(1, 100), (2, 2500), (4, 2500)]);
    let mut cluster = Cluster::from_nodes(vec![
        restarted(1, &leader_log, 5),
        restarted(2, &follower_log, 4),
        restarted(3, &leader_log, 5),
    ]);
    cluster.node(1).campaign();
    let rejections = stabilize_counting_rejections(&mut cluster);

    assert_eq!(cluster.node(1).role(), Role::Leader);
    // Probe at 15100 (node 2 hints 5100 in term 4), probe at 5100 in term 3 (node 2 hints
    // 2600 in term 2), then the probe at 100 in term 1 matches: two rejections.
    assert_eq!(rejections, 2, "round trips should follow terms, not entries");
    let last = cluster.node(1).last_index();
    assert_eq!(last, Index(15_101), "the new leader's no-op follows its log");
    assert_eq!(cluster.node(2).last_index(), last);
    for index in (1..=last.0).map(Index) {
        assert_eq!(cluster.node(2).log_term(index), cluster.node(1).log_term(index), "{index}");
    }
    assert_eq!(cluster.node(2).commit(), last);
}

/// Proposes `count` one-byte entries on node 1 and returns the appends its next Ready sends
/// to node 2.
fn appends_to_2_after_proposing(cluster: &mut Cluster, count: usize) -> Vec<Message> {
    for _ in 0..count {
        cluster.node(1).propose(Bytes::from_static(b"x")).unwrap();
    }
    let ready = common::persist_ready(cluster.node(1));
    ready.messages.into_iter().filter(|m| m.to == NodeId(2)).collect()
}

/// A follower in the replicate state receives at most `inflight_msgs_max` appends before it
/// answers; each answer opens the window by the appends it acknowledges.
#[test]
fn pipelined_window_is_bounded() {
    let mut cluster = Cluster::new(3, |c| {
        c.inflight_msgs_max = 4;
        c.append_bytes_max = 1; // one entry per append
    });
    cluster.elect(1);
    let appends = appends_to_2_after_proposing(&mut cluster, 20);
    assert_eq!(appends.len(), 4, "the window holds four appends");
    let progress = cluster.node(1).progress(NodeId(2)).unwrap();
    assert!(progress.is_paused());
    assert_eq!(progress.inflights.count(), 4);

    // Node 2 acknowledges the first append: exactly one more leaves.
    cluster.node(2).step(appends[0].clone()).unwrap();
    let ack = common::persist_ready(cluster.node(2)).messages_after_persist;
    for m in ack {
        cluster.node(1).step(m).unwrap();
    }
    let more = common::persist_ready(cluster.node(1)).messages;
    assert_eq!(more.iter().filter(|m| m.to == NodeId(2)).count(), 1);
    assert_eq!(cluster.node(1).progress(NodeId(2)).unwrap().inflights.count(), 4);
}

/// The window is bounded in bytes too: once the bytes in flight reach `inflight_bytes_max`,
/// nothing more is sent, however few messages are out.
#[test]
fn pipelined_window_is_bounded_in_bytes() {
    let entry_bytes = 1 + 24; // one data byte plus the per-entry overhead
    let mut cluster = Cluster::new(3, |c| {
        c.inflight_bytes_max = 3 * entry_bytes;
        c.append_bytes_max = 1;
    });
    cluster.elect(1);
    let appends = appends_to_2_after_proposing(&mut cluster, 20);
    assert_eq!(appends.len(), 3);
    assert!(cluster.node(1).progress(NodeId(2)).unwrap().is_paused());
}

/// One append carries at most `append_bytes_max` bytes of entries (always at least one
/// entry, so an entry larger than the limit still travels).
#[test]
fn appends_respect_append_bytes_max() {
    let entry_bytes = 100 + 24;
    let mut cluster = Cluster::new(3, |c| c.append_bytes_max = 10 * entry_bytes);
    cluster.elect(1);
    for _ in 0..95 {
        cluster.node(1).propose(Bytes::from(vec![7u8; 100])).unwrap();
    }
    cluster.node(1).propose(Bytes::from(vec![7u8; 5000])).unwrap();
    let ready = common::persist_ready(cluster.node(1));
    let sizes: Vec<usize> = ready
        .messages
        .iter()
        .filter(|m| m.to == NodeId(2))
        .map(|m| match &m.body {
            MessageBody::Append { entries, .. } => entries.len(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sizes, vec![10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 1]);
    cluster.queue.extend(common::all_messages(&ready));
    cluster.stabilize();
    assert_eq!(cluster.node(2).last_index(), cluster.node(1).last_index());
}

/// Appends lost in the replicate state, with the window not full and nothing new to send, are
/// recovered on the next heartbeat answer: the leader sends an empty append at the end of what
/// it sent, the follower rejects it, and the leader probes back from the real match.
#[test]
fn lost_appends_are_resent_after_a_heartbeat() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    let lost = appends_to_2_after_proposing(&mut cluster, 3);
    assert!(!lost.is_empty());
    let last = cluster.node(1).last_index();
    // Every append of the batch is lost, and nobody proposes again.
    cluster.stabilize();
    assert!(cluster.node(2).last_index() < last);
    cluster.node(1).tick();
    cluster.stabilize();
    assert_eq!(cluster.node(2).last_index(), last);
    assert_eq!(cluster.node(2).commit(), last);
}

/// Backpressure: a leader holds at most `uncommitted_bytes_max` bytes of proposals that are
/// not yet committed and handed out to apply; beyond that `propose` refuses, and it takes
/// proposals again once entries commit.
#[test]
fn proposals_beyond_uncommitted_bytes_max_are_refused() {
    let entry_bytes = 100 + 24;
    let mut cluster = Cluster::new(3, |c| c.uncommitted_bytes_max = 10 * entry_bytes);
    cluster.elect(1);
    let data = Bytes::from(vec![7u8; 100]);
    for _ in 0..10 {
        cluster.node(1).propose(data.clone()).unwrap();
    }
    let refused = cluster.node(1).propose(data.clone()).unwrap_err();
    assert_eq!(refused, ProposeError::UncommittedFull { uncommitted_bytes_max: 10 * entry_bytes });
    assert_eq!(cluster.node(1).last_index(), Index(11), "the refused proposal was appended");

    cluster.stabilize();
    assert_eq!(cluster.node(1).commit(), Index(11));
    for _ in 0..10 {
        cluster.node(1).propose(data.clone()).unwrap();
    }
    // One proposal is always taken when none is pending, however large.
    cluster.stabilize();
    cluster.node(1).propose(Bytes::from(vec![7u8; 100 * 1024])).unwrap();
}

/// A follower whose disk lost entries it had acknowledged (a cut tail, a restored backup) is
/// repaired by the same leader. The leader's match for it is above its log, so the leader's
/// appends are rejected at or above that match; a leader that took those rejections for stale
/// answers would leave the follower behind for as long as it leads.
///
/// ```text
/// 1. node 1 leads term 2; nodes 2 and 3 acknowledge 1..=6.
/// 2. node 3 restarts with 1..=3 only: its disk lost 4..=6.
/// 3. node 1 appends 7: node 3 rejects prev 6 (at its match); a probe at 6 is rejected too,
///    hinting 3: node 1 lowers node 3's match to 3 and sends 4..=7.
/// ```
#[test]
fn a_follower_that_lost_acknowledged_entries_is_repaired_by_the_same_leader() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    for i in 0..5 {
        cluster.node(1).propose(Bytes::from(format!("write {i}"))).unwrap();
    }
    cluster.stabilize();
    let last = cluster.node(1).last_index();
    let matched = cluster.node(1).progress(NodeId(3)).unwrap().match_index;
    assert_eq!(matched, last, "node 3 acknowledged the whole log");

    let kept = cluster.node(3).log_entries(Index(1), Index(4), u64::MAX).unwrap();
    let term = cluster.node(3).term();
    let hard_state = HardState { term, vote: Some(NodeId(1)), commit: Index(3) };
    cluster.nodes.insert(NodeId(3), node_with_log(3, &[1, 2, 3], &kept, hard_state, |_| {}));

    cluster.node(1).propose(Bytes::from_static(b"after the loss")).unwrap();
    cluster.stabilize();
    let last = cluster.node(1).last_index();
    assert_eq!(cluster.node(3).last_index(), last, "node 3 holds the leader's log again");
    assert_eq!(cluster.node(3).commit(), last);
    assert_eq!(cluster.node(1).progress(NodeId(3)).unwrap().match_index, last);
}

/// Steps `messages` into their receivers and returns what those send back once persisted.
fn answers(cluster: &mut Cluster, messages: Vec<Message>) -> Vec<Message> {
    let mut back = Vec::new();
    for m in messages {
        let to = m.to.0;
        cluster.node(to).step(m).unwrap();
        back.extend(common::persist_ready(cluster.node(to)).messages_after_persist);
    }
    back
}

/// A follower learns a new commit index once per Ready, in the append that Ready sends it:
/// an append queued earlier in the turn is raised to the commit index reached since, and no
/// empty append follows it.
#[test]
fn a_turns_commit_index_rides_on_one_append_per_follower() {
    let mut cluster = Cluster::new(3, |_| {});
    cluster.elect(1);
    cluster.node(1).propose(Bytes::from_static(b"x")).unwrap();
    let sending_x = cluster.node(1).ready(); // the leader's own write of x is still going on
    let x = cluster.node(1).last_index();
    let mut acks = answers(&mut cluster, sending_x.messages);
    cluster.node(1).propose(Bytes::from_static(b"y")).unwrap();

    // Node 3's answer commits nothing (node 1's copy is not durable yet) and lets y go to node
    // 3 at once, with the old commit index. Node 2's answer then commits x.
    acks.sort_by_key(|m| std::cmp::Reverse(m.from));
    for ack in acks {
        cluster.node(1).step(ack).unwrap();
    }
    assert_eq!(cluster.node(1).commit(), x);
    let ready = cluster.node(1).ready();
    let mut appends: Vec<(NodeId, Index)> = ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { commit, .. } => Some((m.to, *commit)),
            _ => None,
        })
        .collect();
    appends.sort();
    assert_eq!(appends, [(NodeId(2), x), (NodeId(3), x)]);

    // Node 3 takes y with the raised index: it commits x, not y (not committed yet).
    let to_3: Vec<Message> = ready.messages.into_iter().filter(|m| m.to == NodeId(3)).collect();
    answers(&mut cluster, to_3);
    assert_eq!(cluster.node(3).commit(), x);
    assert_eq!(cluster.node(3).last_index(), x.next());
}
