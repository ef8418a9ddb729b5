//! The leader's promotion of a learner, with a learner that does not exist: the test answers
//! for it, so that it can be caught up and then silent, which real processes cannot stage
//! without a race.

use super::super::*;
use super::{put, within, OneNode, ELECTION_TIMEOUT};
use kv_proto::kv::SetMember;
use raft_core::{AppendResult, Term};
use raft_log::vfs::StdVfs;

const LEARNER: NodeId = NodeId(2);

/// The learner's answer to the leader: it holds the log up to `index`.
async fn answer_as_learner(one: &OneNode, term: u64, index: u64) {
    let body = MessageBody::AppendResponse(AppendResult::Accepted { match_index: Index(index) });
    let message = Message { from: LEARNER, to: NodeId(1), term: Term(term), body };
    one.inject.send(Event::Message(message)).await.expect("the loop takes events");
}

/// The learner's row in the member table, saying it joined to vote.
fn joined_to_vote() -> Op {
    Op::SetMember(SetMember {
        id: 0,
        name: "n2".into(),
        peer_address: "127.0.0.1:1".into(),
        client_address: "127.0.0.1:1".into(),
        allocate: true,
        min_id: LEARNER.0,
        promote: true,
    })
}

/// A learner that caught up and then fell silent for an election timeout is not promoted:
/// it may be dead, and as a voter it would only raise the quorum. Once it answers again, it
/// is. (Its row is written after it fell silent, so that it was never promoted while heard.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_fell_silent_is_promoted_only_once_it_answers_again() {
    let dir = tempfile::tempdir().unwrap();
    let one = OneNode::start(dir.path(), Arc::new(StdVfs)).await;
    within("the first write", one.node.write(put("a"), None)).await.expect("applied");
    let added = within("adding the learner", one.node.conf_change(ConfChange::AddLearner(LEARNER)));
    added.await.expect("a lone voter adds a learner");
    let status = one.status().await;
    assert!(status.learners.contains(&LEARNER), "{:?}", status.learners);
    answer_as_learner(&one, status.term, status.last_index).await;
    let caught_up = status.last_index;
    let counted = |status: &NodeStatus| status.matched.get(&LEARNER) == Some(&caught_up);
    one.status_when("the answer to count", counted).await;

    // Silent for many election timeouts: ticks follow the loop's turns, and a loaded machine
    // may delay some.
    tokio::time::sleep(ELECTION_TIMEOUT * 30).await;
    let row = within("the learner's row", one.node.write(joined_to_vote(), None)).await;
    assert!(matches!(row, Ok(WriteResult::Member { id: 2, .. })), "{row:?}");
    tokio::time::sleep(ELECTION_TIMEOUT * 10).await;
    let status = one.status().await;
    assert!(status.members.get(&LEARNER.0).is_some_and(|row| row.promote), "its row: to vote");
    assert!(
        !status.voters.contains(&LEARNER),
        "a learner silent for many election timeouts was promoted (voters {:?})",
        status.voters
    );

    answer_as_learner(&one, status.term, status.last_index).await;
    one.status_when("the promotion", |status| status.voters.contains(&LEARNER)).await;
    within("the stop", one.node.stop()).await;
    assert_eq!(within("the loop", one.task).await.unwrap(), Ok(()));
}
