//! Three real kv-server processes on loopback with mutual TLS between them: writes at every
//! node, linearizable reads at every node, the leader killed with SIGKILL and the cluster
//! going on, the old leader restarted and catching up, a follower that lost an acknowledged
//! batch repaired by the same leader, a clean stop on SIGTERM, and bad flags.

mod common;

use common::*;
use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::{
    CompareAndSetRequest, DeleteRequest, ListRequest, MemberListRequest, SetRequest, StatusRequest,
    WriteSession,
};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_writes_and_linearizable_reads_everywhere_and_survive_the_leader() {
    let mut cluster = Cluster::start(3);
    // 1. A write through each node; each is read back, linearizably, at every node.
    for node in 0..3 {
        let key = format!("from-{node}");
        set(&cluster, node, &key, &format!("value {node}")).await;
        for reader in 0..3 {
            assert_eq!(
                get(&cluster, reader, &key).await,
                Some(format!("value {node}")),
                "read at {reader}"
            );
        }
    }
    // 2. Compare-and-set and List.
    let mut client = cluster.kv(1).await;
    let cas = |expected: Option<&str>, value: &str| CompareAndSetRequest {
        key: "cas".into(),
        expected: expected.map(|e| e.to_string().into()),
        value: value.to_string().into(),
        session: None,
    };
    assert!(client.compare_and_set(cas(None, "a")).await.unwrap().into_inner().succeeded);
    let refused = client.compare_and_set(cas(Some("b"), "c")).await.unwrap().into_inner();
    assert!(!refused.succeeded);
    assert_eq!(refused.current.as_deref(), Some(&b"a"[..]));
    let mut stream = client
        .list(ListRequest { prefix: "from-".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut keys = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        keys.push(String::from_utf8(item.key.to_vec()).unwrap());
    }
    assert_eq!(keys, ["from-0", "from-1", "from-2"]);
    // Every node wrote its row of the member table: any node names every member's client
    // address.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut cluster_client = ClusterClient::new(cluster.channel(2).await);
        let members = cluster_client.member_list(MemberListRequest {}).await.unwrap().into_inner();
        let addresses: Vec<String> =
            members.members.iter().map(|m| m.client_address.clone()).collect();
        let expected: Vec<String> =
            cluster.client_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        if addresses == expected {
            break;
        }
        assert!(Instant::now() < deadline, "member table incomplete: {addresses:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 3. Enough writes for snapshots and compaction (--snapshot-entries=200).
    let leader = cluster.leader().await;
    for i in 0..300 {
        set(&cluster, i % 3, &format!("bulk/{i:03}"), "x").await;
    }
    // 4. The leader dies with SIGKILL: a new one is elected and writes go on.
    cluster.kill(leader);
    let survivor = (leader + 1) % 3;
    set(&cluster, survivor, "after-kill", "yes").await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    assert_eq!(get(&cluster, (leader + 2) % 3, "after-kill").await.as_deref(), Some("yes"));
    // 5. The old leader restarts from its data directory and catches up.
    cluster.spawn(leader);
    caught_up(&cluster, leader, "after-kill", "the restarted node never caught up").await;
    assert_eq!(
        get(&cluster, leader, "from-0").await.as_deref(),
        Some("value 0"),
        "acknowledged data kept"
    );
    assert_eq!(get(&cluster, leader, "bulk/299").await.as_deref(), Some("x"));
    // 6. A follower down while 300 entries are written and the log compacted past them
    //    catches up from the leader's snapshot, streamed over the transport.
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower);
    for i in 0..300 {
        set(&cluster, leader, &format!("while-down/{i:03}"), "y").await;
    }
    let mut status_client = ClusterClient::new(cluster.channel(leader).await);
    let status = status_client.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(status.log_first_index > 250, "the leader compacted its log: {status:?}");
    cluster.spawn(follower);
    caught_up(&cluster, follower, "while-down/299", "the follower never caught up").await;
    let log =
        std::fs::read_to_string(cluster.dir.path().join(format!("n{}.log", follower + 1))).unwrap();
    assert!(log.contains("installed the leader's snapshot"), "caught up by snapshot: {log}");
    assert_eq!(get(&cluster, follower, "from-1").await.as_deref(), Some("value 1"));
    // 7. SIGTERM stops a node cleanly (exit 0).
    let status = cluster.terminate(cluster.leader().await);
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// A follower whose disk lost its last batch after acknowledging it (a cut tail, a restored
/// backup: beyond Raft's model) is repaired by the same leader, which sends the lost entries
/// again (docs/replication.md#a-follower-that-lost-what-it-acknowledged). A leader that took
/// the follower's rejections for stale ones would leave it behind for as long as it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_an_acknowledged_batch_is_repaired_by_the_same_leader() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let term = term_of(&cluster, leader).await;
    let follower = (leader + 1) % 3;
    set(&cluster, leader, "kept", "1").await;
    set(&cluster, leader, "lost", "2").await;
    // Applied there, so written, synced and acknowledged there; then a moment of quiet, so
    // that no later batch is still on its way.
    caught_up(&cluster, follower, "lost", "the follower never applied the write").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(follower);
    let cut = cut_last_batch(&cluster.data_dir(follower));
    cluster.spawn(follower);
    set(&cluster, leader, "after", "3").await;
    caught_up(&cluster, follower, "after", &format!("the follower stayed behind ({cut})")).await;
    caught_up(&cluster, follower, "lost", "the lost write was not sent again").await;
    // A new leader (an election on a starved machine) probes every follower afresh and
    // would repair this one without the rule under test: only the same leader shows it.
    if term_of(&cluster, leader).await == term {
        let warning = "follower rejected entries it had acknowledged";
        assert!(cluster.log(leader).contains(warning), "repaired, but not by that rule");
    }
}

/// The term node `node` is in.
async fn term_of(cluster: &Cluster, node: usize) -> u64 {
    let mut client = ClusterClient::new(cluster.channel(node).await);
    client.status(StatusRequest {}).await.unwrap().into_inner().term
}

/// Cuts the newest segment in `data_dir` before its last batch, as a disk that lost it would
/// leave it; says what it cut.
fn cut_last_batch(data_dir: &std::path::Path) -> String {
    use raft_log::record::{scan, RecordKind};
    // Segment names are their first index, zero-padded: the newest sorts last.
    let paths = std::fs::read_dir(data_dir).unwrap().map(|entry| entry.unwrap().path());
    let newest = paths.filter(|path| path.extension().is_some_and(|e| e == "seg")).max().unwrap();
    let bytes = std::fs::read(&newest).unwrap();
    let (records, _) = scan(&bytes);
    let last_batch = records.iter().rev().find(|r| r.kind == RecordKind::BatchStart).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&newest).unwrap();
    file.set_len(last_batch.offset as u64).unwrap();
    format!("{} cut at byte {}", newest.display(), last_batch.offset)
}

/// With few entries but large ones, the bytes threshold takes the snapshot and the log is
/// compacted (--snapshot-entries=200 is never reached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_taken_after_enough_bytes_whatever_the_entry_count() {
    let mut cluster = Cluster::new(3);
    cluster.extra_flags.push("--snapshot-bytes=20000".into());
    for node in 0..3 {
        cluster.spawn(node);
    }
    let leader = cluster.leader().await;
    let value = "v".repeat(1000);
    for i in 0..60 {
        set(&cluster, leader, &format!("big/{i:02}"), &value).await;
    }
    let mut client = ClusterClient::new(cluster.channel(leader).await);
    let deadline = Instant::now() + WAIT;
    loop {
        let status = client.status(StatusRequest {}).await.unwrap().into_inner();
        if status.log_first_index > 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot after 60 KB in 60 entries: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.log(leader).contains("snapshot at"));
}

/// Writes refused before any leader exists do not poison the node's session: once a quorum
/// is up, the same node's writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_before_a_quorum_exists_fail_cleanly_and_later_ones_succeed() {
    let mut cluster = Cluster::new(3);
    cluster.spawn(0);
    let mut client = cluster.kv(0).await;
    for attempt in 0..3 {
        let request =
            SetRequest { key: "early".into(), value: format!("{attempt}").into(), session: None };
        let status = client.set(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "no leader: {status}");
    }
    cluster.spawn(1);
    cluster.spawn(2);
    cluster.leader().await;
    // The first write after that succeeds at once: no "outcome unknown" from a session the
    // state machine never saw opened.
    let request = SetRequest { key: "late".into(), value: "ok".into(), session: None };
    let written = cluster.kv(0).await.set(request).await;
    assert!(written.is_ok(), "{written:?}");
    assert_eq!(get(&cluster, 0, "late").await.as_deref(), Some("ok"));
    assert_eq!(get(&cluster, 0, "early").await, None, "no refused write was applied");
}

/// Thesis §6.3, end to end: a write sent with the client's session applies once however
/// often, and through whichever node, it is sent again, and every copy gets the first copy's
/// result; once the client says it holds that result, a copy is refused, not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_again_in_its_session_applies_once_through_any_node() {
    let cluster = Cluster::start(3);
    set(&cluster, 0, "warm-up", "a leader is known").await;
    let session = |sequence, acked_below| {
        Some(WriteSession { client_id: 42, sequence, acked_below, opening: sequence == 1 })
    };
    let put = |value: &str, session| SetRequest {
        key: "k".into(),
        value: value.to_string().into(),
        session,
    };
    // A set, then another client's set, then the first set again through another node: it
    // is answered with its first revision and does not overwrite the later value.
    let first = cluster.kv(0).await.set(put("first", session(1, 1))).await.unwrap();
    let other = cluster.kv(1).await.set(put("other", None)).await.unwrap();
    let again = cluster.kv(2).await.set(put("first", session(1, 1))).await.unwrap();
    assert_eq!(again.get_ref().revision, first.get_ref().revision);
    assert!(other.get_ref().revision > first.get_ref().revision);
    assert_eq!(get(&cluster, 2, "k").await.as_deref(), Some("other"), "applied twice");
    // A compare-and-set sent twice: the copy reports the success of the first, where a
    // second application would have failed (the key is no longer absent).
    let cas = CompareAndSetRequest {
        key: "c".into(),
        expected: None,
        value: "x".into(),
        session: session(2, 2),
    };
    let first = cluster.kv(1).await.compare_and_set(cas.clone()).await.unwrap().into_inner();
    let again = cluster.kv(0).await.compare_and_set(cas).await.unwrap().into_inner();
    assert!(first.succeeded);
    assert_eq!(again, first);
    // A delete sent twice: the copy reports the key deleted, at the first revision.
    let delete = DeleteRequest { key: "c".into(), session: session(3, 3) };
    let first = cluster.kv(2).await.delete(delete.clone()).await.unwrap().into_inner();
    let again = cluster.kv(1).await.delete(delete).await.unwrap().into_inner();
    assert!(first.deleted);
    assert_eq!(again, first);
    // Write 1 was acknowledged (acked_below 2 and 3 since): a copy of it is refused.
    let forgotten = cluster.kv(0).await.set(put("first", session(1, 1))).await.unwrap_err();
    assert_eq!(forgotten.code(), tonic::Code::FailedPrecondition, "{forgotten}");
    assert_eq!(get(&cluster, 0, "k").await.as_deref(), Some("other"));
    // Write 3 (a delete) sent again as a set: the sequence was reused for another write.
    let reused = cluster.kv(2).await.set(put("reused", session(3, 3))).await.unwrap_err();
    assert_eq!(reused.code(), tonic::Code::InvalidArgument, "{reused}");
    // A session that makes no sense is bad input; ids from 2^63 on are the nodes' own.
    let bad_sessions = [
        WriteSession { client_id: 0, sequence: 1, acked_below: 1, opening: true },
        WriteSession { client_id: 1 << 63, sequence: 1, acked_below: 1, opening: true },
        WriteSession { client_id: 7, sequence: 0, acked_below: 0, opening: true },
        WriteSession { client_id: 7, sequence: 2, acked_below: 3, opening: false },
    ];
    for bad in bad_sessions {
        let refused = cluster.kv(0).await.set(put("bad", Some(bad))).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    }
}

#[test]
fn bad_flags_stop_the_process_with_a_message_naming_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args([
            "--name=n9",
            "--initial-cluster=n1=127.0.0.1:1",
            "--data-dir=/nonexistent",
            "--listen-peer-address=127.0.0.1:1",
            "--listen-client-address=127.0.0.1:2",
            "--peer-cert-file=a",
            "--peer-key-file=b",
            "--peer-trusted-ca-file=c",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--name") && stderr.contains("n9"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_kv-server"))
        .args([
            "--name=n1",
            "--initial-cluster=n1=127.0.0.1:1",
            "--data-dir=/nonexistent",
            "--listen-peer-address=127.0.0.1:1",
            "--listen-client-address=127.0.0.1:2",
            "--peer-cert-file=/nonexistent/cert.pem",
            "--peer-key-file=b",
            "--peer-trusted-ca-file=/nonexistent/ca.pem",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/ca.pem"), "the missing file is named: {stderr}");
}
