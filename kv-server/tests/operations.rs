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
