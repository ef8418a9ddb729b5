//! A snapshot received from a leader is read back, checked and synced beside the loop
//! (`incoming.rs`): the node goes on answering meanwhile, and installs the snapshot once it
//! is ready. The leader is a peer the test plays: it sends node 1 its snapshot directly.

use super::super::*;
use super::persist::{Gate, GatedVfs, Released, SyncMode};
use super::{until, within, OneNode, ELECTION_TIMEOUT};
use raft_core::{Membership, SnapshotMeta, Term};
use raft_net::ReceivedChunk;

/// The state at `index`, with key `k` written by its last entry, as a leader's snapshot.
fn leaders_state(index: u64) -> Bytes {
    let mut state = KvState::new();
    for skipped in 1..index {
        state.skip(skipped);
    }
    let command = Command { op: Some(super::put("k")), ..Command::default() };
    state.apply_command(index, command).expect("a put applies");
    let mut bytes = Vec::new();
    state.write_snapshot(&mut bytes).unwrap();
    Bytes::from(bytes)
}

fn from_node_2(term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(2), to: NodeId(1), term: Term(term), body }
}

/// Node 2's snapshot at `index` (the state of [`leaders_state`], voters 1 and 2), sent in
/// `term` as transfer `transfer_id`, whole in one chunk.
fn snapshot_from_node_2(term: u64, index: u64, transfer_id: u64) -> Event {
    let membership = Membership::new([NodeId(1), NodeId(2)]);
    let meta = SnapshotMeta { index: Index(index), term: Term(term), membership };
    let install = from_node_2(term, MessageBody::InstallSnapshot { snapshot: meta });
    let data = leaders_state(index);
    let total_len = data.len() as u64;
    let chunk = ReceivedChunk {
        from: NodeId(2),
        transfer_id,
        offset: 0,
        total_len,
        data,
        install: Some(install),
    };
    Event::SnapshotChunk(chunk)
}

/// A one-node cluster that leads and has written itself into the member table (once it
/// follows node 2, a registration still to write would go to node 2 too, and count among
/// the messages dropped), on a file system where the syncs of temporary snapshot files pass
/// `syncs` and the removals of files the log gave up pass `removals`. Dropping it opens both
/// gates first (fields drop in order), so that a failed assertion leaves no thread waiting.
struct GatedNode {
    _released: [Released; 2],
    syncs: Arc<Gate>,
    removals: Arc<Gate>,
    one: OneNode,
    dir: tempfile::TempDir,
}

impl GatedNode {
    async fn start() -> GatedNode {
        let dir = tempfile::tempdir().unwrap();
        let (syncs, removals) = (Arc::new(Gate::default()), Arc::new(Gate::default()));
        let vfs = GatedVfs::snapshot_syncs(syncs.clone(), removals.clone());
        let one = OneNode::start(dir.path(), Arc::new(vfs)).await;
        one.status_when("node 1 to lead", |s| s.role == Role::Leader).await;
        within("node 1 to register", async {
            while one.node.read(false).await.expect("a serializable read").members().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let _released = [Released(syncs.clone()), Released(removals.clone())];
        GatedNode { _released, syncs, removals, one, dir }
    }

    /// The term node 2 leads in: the one after node 1's.
    async fn next_term(&self) -> u64 {
        self.one.status().await.term + 1
    }
}

/// Sends node 1 node 2's heartbeats in `term`, six per election timeout, until aborted.
fn heartbeats_from_node_2(one: &OneNode, term: u64) -> tokio::task::JoinHandle<()> {
    let inject = one.inject.clone();
    tokio::spawn(async move {
        let heartbeat = MessageBody::Heartbeat { commit: Index(0), read_round: 0 };
        while inject.send(Event::Message(from_node_2(term, heartbeat.clone()))).await.is_ok() {
            tokio::time::sleep(ELECTION_TIMEOUT / 6).await;
        }
    })
}

/// The messages node 1 sent node 2 (dropped and counted: node 2 has no address).
fn sent_to_node_2(one: &OneNode) -> u64 {
    one.metrics.messages_dropped.get_or_create(&peer_label(NodeId(2))).get()
}

/// Node 2 leads a later term and sends node 1 its snapshot at 50. While the snapshot's file
/// is being synced (held by the test), the loop must answer: if it checked and wrote the
/// snapshot inside its turn, as it once did, a large snapshot would stop the node answering
/// clients and peers for as long as that takes. It answers node 2's appends, but not its
/// heartbeats (node 2 would send the snapshot again). Once the sync ends, the snapshot is
/// installed: the node's state is the leader's.
///
/// Node 2 has no address, so every message to it is dropped and counted
/// (`messages_dropped`): that is how the test sees what leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_snapshot_is_checked_and_synced_while_the_loop_answers() {
    let node = GatedNode::start().await;
    let (one, gate, removals) = (&node.one, &node.syncs, &node.removals);
    let before = one.status().await;
    removals.set(SyncMode::Hold);

    gate.set(SyncMode::Hold);
    let sent = snapshot_from_node_2(before.term + 1, 50, 1);
    one.inject.send(sent).await.unwrap();
    until("the snapshot's sync to be held", || gate.held() == 1).await;
    let meanwhile = one.status().await; // panics if the loop does not answer
    assert!(meanwhile.applied < 50, "installed before its sync ended: {meanwhile:?}");
    let state = one.node.read(false).await.expect("a serializable read is answered");
    assert!(state.get(b"k").is_none(), "the leader's state is in force before its sync ended");
    let before_answers = sent_to_node_2(one);
    let probe = MessageBody::Append {
        prev: raft_core::EntryId { index: Index(50), term: Term(before.term + 1) },
        entries: Vec::new(),
        commit: Index(50),
    };
    one.inject.send(Event::Message(from_node_2(before.term + 1, probe))).await.unwrap();
    // Node 1 now follows node 2 in a configuration of its own alone: without node 2's
    // heartbeats it would elect itself after an election timeout, and then refuse the
    // snapshot as sent in an earlier term.
    let heartbeats = heartbeats_from_node_2(one, before.term + 1);
    until("an answer to node 2", || sent_to_node_2(one) > before_answers).await;
    one.status().await; // a whole turn more: the probe and a heartbeat are handled
    one.status().await;
    assert_eq!(sent_to_node_2(one), before_answers + 1, "not the probe's answer alone");

    gate.set(SyncMode::Pass);
    one.status_when("the snapshot to be installed", |s| s.applied == 50).await;
    heartbeats.abort();
    let state = one.node.read(false).await.expect("a serializable read is answered");
    assert!(state.get(b"k").is_some(), "the state is not the leader's");
    let files = || -> Vec<std::path::PathBuf> {
        let names = std::fs::read_dir(node.dir.path().join("data")).unwrap();
        names.map(|f| f.unwrap().path()).collect()
    };
    let given_up = || files().into_iter().filter(|p| raft_log::given_up::is_given_up(p)).count();
    let leftovers: Vec<_> = files()
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains("incoming") || p.extension().is_some_and(|e| e == "tmp")
        })
        .collect();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
    // The log the snapshot replaced was given up, and is removed beside the loop: while
    // the removal is held, the loop answers.
    let old_log = node.dir.path().join("data").join(format!("{:020}.seg", 1));
    assert!(!files().contains(&old_log), "the old log is still in use");
    until("the old log's removal to be held", || removals.held() == 1).await;
    one.status().await;
    assert!(given_up() > 0, "no file was given up");
    removals.set(SyncMode::Pass);
    until("the old log's files to be removed", || given_up() == 0).await;
}

/// Node 2 sends its snapshot at 50, then, while that one is checked (its sync held), a newer
/// one at 60: the second waits for the first's check, and is checked and installed after it.
/// (Once, the second was marked as under check twice and never checked: the node stayed at
/// the first and held its answers to node 2 for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_received_during_a_check_is_checked_after_it() {
    let node = GatedNode::start().await;
    let (one, gate, term) = (&node.one, &node.syncs, node.next_term().await);
    gate.set(SyncMode::Hold);
    for (transfer, index) in [(1, 50), (2, 60)] {
        one.inject.send(snapshot_from_node_2(term, index, transfer)).await.unwrap();
    }
    until("the first snapshot's sync to be held", || gate.held() == 1).await;
    gate.set(SyncMode::Pass);
    one.status_when("the second snapshot to be installed", |s| s.applied == 60).await;
}

/// The check of node 2's snapshot panics (its sync does). The check must still end, as a
/// refusal: otherwise the node would withhold its heartbeat answers to node 2 for good, and
/// node 2 would never send the snapshot again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_panics_is_a_refusal_and_ends_the_hold() {
    let node = GatedNode::start().await;
    let (one, term) = (&node.one, node.next_term().await);
    node.syncs.set(SyncMode::Panic);
    one.inject.send(snapshot_from_node_2(term, 50, 1)).await.unwrap();
    let heartbeats = heartbeats_from_node_2(one, term);
    until("a heartbeat answer to node 2", || sent_to_node_2(one) > 0).await;
    heartbeats.abort();
    assert!(one.status().await.applied < 50, "a snapshot whose check panicked was installed");
}
