//! The client API served on a one-node cluster (`crate::grpc`), over plain HTTP/2 on
//! loopback, with the node's log on the gated file system of `persist`: what the dispatch
//! and the stop promise.

use super::persist::{one_node_that_wrote, Released, SyncMode};
use super::{until, within};
use crate::grpc;
use crate::metrics::Metrics;
use crate::service::Service;
use kv_proto::kv::kv_client::KvClient;
use kv_proto::kv::{GetRequest, SetRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;

/// The server's address and the task serving; sending on the sender stops it.
struct Served {
    address: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves the API of `node` on a loopback port of its own, without TLS, waiting up to
/// `drain` for a connection's calls once stopped. The listener closes when the server drops
/// its stream of connections, as `connections::incoming`'s does.
async fn serve(node: crate::node::NodeHandle, drain: Duration) -> Served {
    serve_with(node, drain, None).await
}

/// As [`serve`], with at most `streams_max` calls open per connection.
async fn serve_with(
    node: crate::node::NodeHandle,
    drain: Duration,
    streams_max: Option<u32>,
) -> Served {
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (accepted, incoming) = tokio::sync::mpsc::channel(8);
    let open = metrics.client_connections.clone();
    tokio::spawn(async move {
        loop {
            let accept = tokio::select! {
                () = accepted.closed() => return, // the listener goes with this task
                accept = listener.accept() => accept,
            };
            let stream = accept
                .map(|(stream, _)| crate::connections::CountedStream::new(stream, open.clone()));
            if accepted.send(stream).await.is_err() {
                return;
            }
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
    let services = grpc::Services::new(Service::new(node, Vec::new(), 1 << 20, metrics.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let stopped = async move {
        let _ = stopped.await;
    };
    let serving = grpc::Serving { tls: None, services, metrics, drain, streams_max };
    let task = tokio::spawn(grpc::serve(incoming, serving, stopped));
    Served { address, stop, task }
}

async fn channel(address: std::net::SocketAddr) -> Channel {
    within("a connection", Endpoint::from_shared(format!("http://{address}")).unwrap().connect())
        .await
        .expect("connected")
}

fn set(key: &str) -> SetRequest {
    SetRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    }
}

/// The API's methods are reached by their paths; a service the server does not have gets
/// UNIMPLEMENTED, and the connection goes on serving. Answers carry no `date` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_service_their_path_names_and_unknown_ones_are_unimplemented() {
    let (_dir, _gate, node, _task) = one_node_that_wrote().await;
    let served = serve(node, Duration::from_secs(20)).await;
    let channel = channel(served.address).await;
    let mut kv = KvClient::new(channel.clone());

    let answer = within("a set", kv.set(set("k"))).await.expect("set");
    assert!(answer.metadata().get("date").is_none(), "no date header: {:?}", answer.metadata());
    let got = within("a get", kv.get(GetRequest { key: "k".into(), ..Default::default() }))
        .await
        .expect("get")
        .into_inner();
    assert!(got.found && got.value == b"v".as_slice());

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let unknown =
        within("a call to a service not served", health.check(HealthCheckRequest::default()))
            .await
            .expect_err("no health service here");
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown:?}");

    within("a set after it", kv.set(set("k2"))).await.expect("the connection still serves");
    let _ = served.stop.send(());
    within("the server to stop", served.task).await.unwrap();
}

/// A stop comes while a call waits for its write's sync (held by the test). The server must
/// not return, or drop the call, until the call has its answer: stopping lets the calls in
/// flight finish (HTTP/2 GOAWAY), as tonic's server did. Meanwhile new clients are refused
/// at once (the listener is closed), so that they try another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_answers_the_calls_in_flight_first() {
    let (_dir, gate, node, _task) = one_node_that_wrote().await;
    let _released = Released(gate.clone());
    let served = serve(node, Duration::from_secs(20)).await;
    let mut kv = KvClient::new(channel(served.address).await);

    gate.set(SyncMode::Hold);
    let call = tokio::spawn(async move { kv.set(set("held")).await });
    until("the call's batch to be written and its sync held", || gate.held() == 1).await;
    let _ = served.stop.send(());
    let address = served.address;
    // The listener closes once the server drops its stream of connections (here one hop
    // later, in the test's accept task); with the call held, that must happen.
    until("new clients to be refused", || std::net::TcpStream::connect(address).is_err()).await;
    assert!(!served.task.is_finished(), "the server stopped with a call in flight");
    assert!(!call.is_finished(), "the call ended before its write was durable");

    gate.set(SyncMode::Pass);
    let answer = within("the held call", call).await.unwrap();
    assert!(answer.is_ok(), "the call in flight was answered: {answer:?}");
    within("the server to stop", served.task).await.unwrap();
}

/// A client that connected and never spoke (no HTTP/2 preface) would keep a connection, and
/// so the stop, waiting forever. The stop waits for it only as long as the drain allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_a_silent_client_only_as_long_as_the_drain() {
    let (_dir, _gate, node, _task) = one_node_that_wrote().await;
    let drain = Duration::from_millis(300);
    let served = serve(node, drain).await;
    let mut silent = tokio::net::TcpStream::connect(served.address).await.unwrap();
    // The server's HTTP/2 SETTINGS arrive once the connection's task serves it.
    let mut settings = [0u8; 9];
    within("the server's settings", silent.read_exact(&mut settings)).await.unwrap();
    assert_eq!(settings[3], 0x4, "an HTTP/2 SETTINGS frame");

    let stopped_at = tokio::time::Instant::now();
    let _ = served.stop.send(());
    within("the server to stop after the drain", served.task).await.unwrap();
    assert!(stopped_at.elapsed() >= drain, "the silent connection was not given its drain");
    drop(silent);
}

/// The HTTP/2 settings a server sends first on a new connection, as (identifier, value).
async fn server_settings(address: std::net::SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut header = [0u8; 9];
    within("the server's settings", stream.read_exact(&mut header)).await.unwrap();
    assert_eq!(header[3], 0x4, "an HTTP/2 SETTINGS frame");
    assert_eq!(header[4], 0, "not an acknowledgement");
    assert_eq!(header[5..9], [0; 4], "on stream 0");
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    assert_eq!(length % 6, 0, "settings of 6 bytes each");
    let mut payload = vec![0u8; length];
    within("the settings' payload", stream.read_exact(&mut payload)).await.unwrap();
    payload
        .chunks_exact(6)
        .map(|s| (u16::from_be_bytes([s[0], s[1]]), u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
        .collect()
}

/// `--max-concurrent-streams` reaches the wire as SETTINGS_MAX_CONCURRENT_STREAMS (0x3);
/// without it the server announces no bound. Holding clients to the bound is HTTP/2's (h2's)
/// work once it is announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_on_concurrent_calls_is_announced_to_every_client() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    let (_dir, _gate, node, _task) = one_node_that_wrote().await;
    let bounded = serve_with(node.clone(), Duration::from_secs(1), Some(2)).await;
    let settings = server_settings(bounded.address).await;
    assert!(settings.contains(&(MAX_CONCURRENT_STREAMS, 2)), "{settings:?}");

    let unbounded = serve(node, Duration::from_secs(1)).await;
    let settings = server_settings(unbounded.address).await;
    assert!(settings.iter().all(|(id, _)| *id != MAX_CONCURRENT_STREAMS), "{settings:?}");
    for served in [bounded, unbounded] {
        let _ = served.stop.send(());
        within("the server to stop", served.task).await.unwrap();
    }
}
