//! What an operator's tools see of real kv-server processes: the gRPC health service
//! (SERVING only with a leader and caught up) and gRPC reflection.

mod common;

use common::*;
use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::StatusRequest;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The health of slot `node` for `service` ("" for the whole server).
async fn health(cluster: &Cluster, node: usize, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(cluster.channel(node).await);
    let request = HealthCheckRequest { service: service.into() };
    let answer = client.check(request).await.expect("the health service answers");
    ServingStatus::try_from(answer.into_inner().status).expect("a known status")
}

/// Waits until slot `node` reports `wanted` for every service.
async fn wait_health(cluster: &Cluster, node: usize, wanted: ServingStatus, why: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut all = true;
        for service in kv_server::health::SERVICES {
            all &= health(cluster, node, service).await == wanted;
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "n{} never became {wanted:?}: {why}", node + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(cluster: &Cluster, node: usize) -> kv_proto::kv::StatusResponse {
    let mut client = ClusterClient::new(cluster.channel(node).await);
    client.status(StatusRequest {}).await.expect("status").into_inner()
}

/// A node alone (no quorum, so no leader) is NOT_SERVING; with a second node it is SERVING.
/// A node that starts far behind (40 MB) turns SERVING only once it has applied what the
/// leader had committed before it started. A node whose peers are all gone turns NOT_SERVING again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_only_with_a_leader_and_caught_up() {
    let mut cluster = Cluster::new(3);
    cluster.spawn(0);
    for _ in 0..10 {
        for service in kv_server::health::SERVICES {
            let alone = health(&cluster, 0, service).await;
            assert_eq!(alone, ServingStatus::NotServing, "{service:?} with no leader");
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    cluster.spawn(1);
    wait_health(&cluster, 0, ServingStatus::Serving, "a leader was elected").await;
    let leader = cluster.leader().await;
    // 40 MB to catch up: long enough (hundreds of milliseconds) to be seen, while n3
    // already knows its leader from the first heartbeat.
    let big = "x".repeat(1_000_000);
    for i in 0..40 {
        set(&cluster, leader, &format!("k{i:03}"), &big).await;
    }
    let committed = status(&cluster, leader).await.commit_index;
    // n3 starts empty: it catches up from a snapshot.
    cluster.spawn(2);
    let deadline = Instant::now() + WAIT;
    while health(&cluster, 2, "").await != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "n3 never became SERVING:\n{}", cluster.log(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = status(&cluster, 2).await.applied_index;
    assert!(applied >= committed, "SERVING at applied {applied}, before {committed}");
    assert_eq!(get(&cluster, 2, "k039").await.as_deref(), Some(big.as_str()));
    // Alone again: no leader, NOT_SERVING.
    cluster.kill(0);
    cluster.kill(1);
    wait_health(&cluster, 2, ServingStatus::NotServing, "its peers are gone").await;
}

/// Server reflection lists the API, the health service and reflection itself, so that
/// generic tools (grpcurl) can call the store without its .proto files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let cluster = Cluster::start(1);
    let mut client = ServerReflectionClient::new(cluster.channel(0).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = answers.message().await.expect("a response").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for wanted in ["kv.v1.KV", "kv.v1.Cluster", "grpc.health.v1.Health"] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
}

/// Slot `node`'s metrics: each sample line's name with its labels, and its value.
fn scrape(cluster: &Cluster, node: usize) -> Vec<(String, f64)> {
    use std::io::{Read, Write};
    let address = format!("127.0.0.1:{}", cluster.metrics_ports[node]);
    let mut stream = std::net::TcpStream::connect(&address).expect("the metrics endpoint");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(name, value)| (name.to_string(), value.parse().expect("a number")))
        .collect()
}

/// The value of the sample named exactly `name` (with its labels), 0 if absent.
fn sample(samples: &[(String, f64)], name: &str) -> f64 {
    samples.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v)
}

/// A scrape of a running node: the values move when writes happen (commit and applied
/// index, proposals, log batches, gRPC requests) and when the leader changes (term, leader
/// changes, role).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_writes_and_leader_changes() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    set(&cluster, leader, "warm", "up").await;
    let before = scrape(&cluster, leader);
    assert_eq!(sample(&before, "kv_raft_role{role=\"leader\"}"), 1.0, "{before:?}");
    assert_eq!(sample(&before, "kv_raft_role{role=\"follower\"}"), 0.0);
    for i in 0..20 {
        set(&cluster, leader, &format!("m{i}"), "v").await;
    }
    assert_eq!(get(&cluster, leader, "m19").await.as_deref(), Some("v"));
    // A connection held open over the scrape (the helpers' own are closed after each call).
    let held = cluster.channel(leader).await;
    let after = scrape(&cluster, leader);
    let moved = |name: &str, by: f64| {
        let (old, new) = (sample(&before, name), sample(&after, name));
        assert!(new >= old + by, "{name}: {old} -> {new}");
    };
    moved("kv_raft_commit_index", 20.0);
    moved("kv_raft_applied_index", 20.0);
    moved("kv_proposals_total{outcome=\"applied\"}", 20.0);
    moved("kv_proposal_duration_seconds_count", 20.0);
    moved("kv_wal_sync_duration_seconds_count", 1.0);
    moved("kv_wal_batch_entries_count", 1.0);
    moved("kv_read_index_duration_seconds_count", 1.0);
    moved("kv_grpc_requests_total{method=\"/kv.v1.KV/Set\",code=\"Ok\"}", 20.0);
    moved("kv_grpc_requests_total{method=\"/kv.v1.KV/Get\",code=\"Ok\"}", 1.0);
    moved("kv_peer_transport_events_total{event=\"messages_sent\"}", 20.0);
    moved("kv_peer_transport_events_total{event=\"messages_received\"}", 20.0);
    let open = sample(&after, "kv_grpc_client_connections");
    assert!(open >= 1.0, "the held connection is open: {open}");
    drop(held);
    // The lag is measured once per tick: scraped until a tick has measured both followers.
    let lagging = |samples: &[(String, f64)]| {
        samples.iter().filter(|(n, _)| n.starts_with("kv_raft_replication_lag_entries")).count()
    };
    let deadline = Instant::now() + WAIT;
    let mut measured = after.clone();
    while lagging(&measured) != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        measured = scrape(&cluster, leader);
    }
    assert_eq!(lagging(&measured), 2, "a lag per follower: {measured:?}");
    // A refused request is counted with its code.
    let mut client = cluster.kv(leader).await;
    let empty = kv_proto::kv::SetRequest { key: "".into(), value: "v".into(), session: None };
    assert!(client.set(empty).await.is_err());
    let refused = scrape(&cluster, leader);
    let invalid = "kv_grpc_requests_total{method=\"/kv.v1.KV/Set\",code=\"InvalidArgument\"}";
    assert_eq!(sample(&refused, invalid), 1.0, "{refused:?}");
    // Leadership moves: the new leader's term and leader changes move, and its role.
    let to = (leader + 1) % 3;
    let follower_before = scrape(&cluster, to);
    let mut admin = ClusterClient::new(cluster.channel(leader).await);
    let request = kv_proto::kv::TransferLeadershipRequest { name: format!("n{}", to + 1) };
    admin.transfer_leadership(request).await.expect("transfer");
    let deadline = Instant::now() + WAIT;
    while cluster.leader().await != to {
        assert!(Instant::now() < deadline, "leadership never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let follower_after = scrape(&cluster, to);
    assert_eq!(sample(&follower_after, "kv_raft_role{role=\"leader\"}"), 1.0);
    let term = |s: &[(String, f64)]| sample(s, "kv_raft_term");
    assert!(term(&follower_after) > term(&follower_before), "the term moved");
    let changes = |s: &[(String, f64)]| sample(s, "kv_raft_leader_changes_total");
    assert!(changes(&follower_after) > changes(&follower_before), "leader changes moved");
}

/// At most two backups stream at once (each holds a thread and a copy of the key space): a
/// third is refused while two clients leave theirs unread, and taken once one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_stream_at_most_two_at_once() {
    use kv_proto::kv::SnapshotSaveRequest;
    let cluster = Cluster::start(1);
    let big = "x".repeat(500_000);
    for i in 0..40 {
        // 20 MB: far more than the channel and HTTP/2 windows hold, so an unread backup
        // keeps its writer (and permit) waiting.
        set(&cluster, 0, &format!("b{i:02}"), &big).await;
    }
    let save = || async {
        let mut client = ClusterClient::new(cluster.channel(0).await);
        client.snapshot_save(SnapshotSaveRequest {}).await
    };
    let first = save().await.expect("a first backup");
    let _second = save().await.expect("a second backup");
    let third = save().await.expect_err("a third one at once");
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        match save().await {
            Ok(mut stream) => {
                let mut bytes = 0;
                while let Some(chunk) = stream.get_mut().message().await.expect("chunks") {
                    bytes += chunk.data.len();
                }
                assert!(bytes > 20_000_000, "the whole copy: {bytes} bytes");
                break;
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted),
        }
        assert!(Instant::now() < deadline, "the first backup's permit never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
