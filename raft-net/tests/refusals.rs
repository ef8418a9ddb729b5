//! Who may not talk to a node, and what may not stop it: every refusal is logged with its
//! reason (checked through `recent_refusals` and `peer_error`), and the listener keeps
//! serving the peers that are in order.

mod common;

use common::*;
use kv_proto::peer::{peer_frame::Frame, Hello, PeerFrame};
use raft_core::NodeId;
use raft_net::{Event, PeerAddress, TlsIdentity};
use rustls_pki_types::ServerName;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
/// How long a message that must not arrive is waited for.
const QUIET: Duration = Duration::from_millis(500);

/// Waits until `node` logged a refusal containing `needle`.
async fn refused_with(node: &Node, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let refusals = node.transport.recent_refusals();
        if refusals.iter().any(|r| r.contains(needle)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no refusal with {needle:?}: {refusals:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node`'s dials of `peer` fail with an error containing `needle`.
async fn dial_fails_with(node: &Node, peer: u64, needle: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let error = node.transport.peer_error(NodeId(peer));
        if error.as_deref().is_some_and(|e| e.contains(needle)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dial error with {needle:?}: {error:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Node 3, in order, still gets through to `node`.
async fn still_serves(pki: &Pki, node: &mut Node) {
    still_serves_from(pki, node, None).await;
}

/// Node 3, in order and dialing from `source` (the system's choice if `None`), still gets
/// through to `node`.
async fn still_serves_from(pki: &Pki, node: &mut Node, source: Option<IpAddr>) {
    let mut good_config = config(3);
    good_config.source = source;
    let good = Node::start(good_config, identity(&pki.node(3))).await;
    node.transport.add_peer(good.id, good.address());
    good.transport.add_peer(node.id, node.address());
    send_eventually(&good.transport, &heartbeat(3, node.id.0, 42)).await;
    let message = node.next_message(WAIT).await.expect("the good peer gets through");
    assert_eq!(message.from, NodeId(3));
}

/// A TLS client of `pki`'s CA presenting `client` (or no certificate), for raw tests.
async fn raw_tls(
    ca: &TlsIdentity,
    client: Option<&raft_net::TlsPaths>,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = match client {
        Some(paths) => TlsIdentity::load(paths).unwrap().client_config(),
        None => {
            let mut config = (*ca.client_config()).clone();
            config.client_auth_cert_resolver = Arc::new(NoClientCert);
            Arc::new(config)
        }
    };
    let tcp = TcpStream::connect((LOCALHOST, port)).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut stream =
        connector.connect(ServerName::try_from("node-1.example").unwrap(), tcp).await?;
    // TLS 1.3 reports a refused client certificate only on the first read.
    stream.write_all(&[]).await?;
    Ok(stream)
}

#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

fn hello(node_id: u64, to: u64, cluster: &str) -> bytes::Bytes {
    let hello = Hello {
        protocol_version: 1,
        cluster_id: cluster.into(),
        node_id,
        to_node_id: to,
        from_address: String::new(),
    };
    raft_net::frame::encode_to_bytes(&PeerFrame { frame: Some(Frame::Hello(hello)) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new("cluster");
    let paths = pki.node(1);
    let mut node = Node::start(config(1), identity(&paths)).await;
    let ca = TlsIdentity::load(&paths).unwrap();
    if let Ok(mut stream) = raw_tls(&ca, None, node.port()).await {
        let _ = stream.write_all(&hello(2, 1, CLUSTER)).await;
        let mut buf = [0; 64];
        assert!(!matches!(stream.read(&mut buf).await, Ok(n) if n > 0), "no answer");
    }
    refused_with(&node, "TLS handshake").await;
    still_serves(&pki, &mut node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("cluster");
    let other = Pki::new("impostor");
    let mut node = Node::start(config(1), identity(&pki.node(1))).await;
    // The impostor trusts the cluster CA, so only node 1's checks of its certificate stop it:
    // as a client when it dials node 1, as a server when node 1 dials it.
    let mut paths = other.node(2);
    paths.ca = pki.ca_path();
    let impostor = Node::start(config(2), identity(&paths)).await;
    node.transport.add_peer(NodeId(2), impostor.address());
    impostor.transport.add_peer(NodeId(1), node.address());
    let _ = impostor.transport.send(&heartbeat(2, 1, 1));
    refused_with(&node, "TLS handshake").await;
    dial_fails_with(&impostor, 1, "UnknownCA").await;
    dial_fails_with(&node, 2, "invalid peer certificate: UnknownIssuer").await;
    assert!(node.next_message(QUIET).await.is_none(), "nothing from the impostor");
    still_serves(&pki, &mut node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_must_cover_the_configured_name() {
    let pki = Pki::new("cluster");
    let mut a = Node::start(config(1), identity(&pki.node(1))).await;
    // Node 2's certificate covers node-2.example and 127.0.0.1, not node-7.example.
    let mut b = Node::start(config(2), identity(&pki.node(2))).await;
    let wrong = PeerAddress { host: "node-7.example".into(), port: b.port() };
    a.transport.add_peer(NodeId(2), wrong);
    b.transport.add_peer(NodeId(1), a.address());
    let _ = a.transport.send(&heartbeat(1, 2, 1));
    dial_fails_with(&a, 2, "certificate").await;
    assert!(b.next_message(QUIET).await.is_none(), "nothing sent to a peer not proven");
    // Named right, the same node is reached.
    a.transport.add_peer(NodeId(2), b.address());
    send_eventually(&a.transport, &heartbeat(1, 2, 2)).await;
    assert!(b.next_message(WAIT).await.is_some());
    let _ = &mut a;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_claiming_an_id_its_certificate_does_not_cover_is_refused() {
    let pki = Pki::new("cluster");
    let mut node = Node::start(config(1), identity(&pki.node(1))).await;
    // Node 2's certificate covers node-2.example; it claims to be node 4 (node-4.example).
    let liar = Node::start(config(4), identity(&pki.node(2))).await;
    node.transport.add_peer(NodeId(4), PeerAddress { host: "node-4.example".into(), port: 1 });
    liar.transport.add_peer(NodeId(1), node.address());
    let _ = liar.transport.send(&heartbeat(4, 1, 1));
    refused_with(&node, "does not cover node-4.example").await;
    dial_fails_with(&liar, 1, "refused us").await;
    assert!(node.next_message(QUIET).await.is_none());
    still_serves(&pki, &mut node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_another_cluster_id_is_refused() {
    let pki = Pki::new("cluster");
    let mut node = Node::start(config(1), identity(&pki.node(1))).await;
    let mut other_config = config(2);
    other_config.cluster_id = "another-cluster".into();
    let other = Node::start(other_config, identity(&pki.node(2))).await;
    node.transport.add_peer(other.id, other.address());
    other.transport.add_peer(NodeId(1), node.address());
    let _ = other.transport.send(&heartbeat(2, 1, 1));
    refused_with(&node, "cluster id \"another-cluster\"").await;
    dial_fails_with(&other, 1, "cluster id").await;
    assert!(node.next_message(QUIET).await.is_none());
    still_serves(&pki, &mut node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_frames_and_half_open_connections_leave_the_listener_serving() {
    let pki = Pki::new("cluster");
    let mut node_config = config(1);
    node_config.frame_bytes_max = 1 << 20;
    node_config.snapshot_chunk_bytes = 64 * 1024;
    node_config.handshake_timeout = Duration::from_millis(300);
    let mut node = Node::start(node_config, identity(&pki.node(1))).await;
    node.transport.add_peer(NodeId(2), PeerAddress { host: "node-2.example".into(), port: 1 });
    let port = node.port();
    // 1. Garbage instead of TLS.
    let mut garbage = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x13\x37").await.unwrap();
    refused_with(&node, "TLS handshake").await;
    // 2. Half-open: connects and says nothing. The handshake timeout closes it (that it
    //    holds nobody up meanwhile is `a_silent_connection_holds_up_no_other_handshake`).
    let _silent = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    // 3. A good certificate, a good hello, then a frame announcing 3 GiB.
    let ca = TlsIdentity::load(&pki.node(2)).unwrap();
    let mut stream = raw_tls(&ca, Some(&pki.node(2)), port).await.unwrap();
    stream.write_all(&hello(2, 1, CLUSTER)).await.unwrap();
    stream.write_all(&[0xc0, 0, 0, 0, 1, 2, 3]).await.unwrap();
    stream.flush().await.unwrap();
    // 4. The same, then a well-formed message from node 2 addressed to node 3.
    let mut stream3 = raw_tls(&ca, Some(&pki.node(2)), port).await.unwrap();
    stream3.write_all(&hello(2, 1, CLUSTER)).await.unwrap();
    let misaddressed = PeerFrame {
        frame: Some(Frame::Message(kv_proto::peer::RaftMessage::from(&heartbeat(2, 3, 1)))),
    };
    stream3.write_all(&raft_net::frame::encode_to_bytes(&misaddressed)).await.unwrap();
    stream3.flush().await.unwrap();
    // 5. The same, then bytes that are no protobuf.
    let mut stream2 = raw_tls(&ca, Some(&pki.node(2)), port).await.unwrap();
    stream2.write_all(&hello(2, 1, CLUSTER)).await.unwrap();
    stream2.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
    stream2.flush().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.transport.stats().connections_closed_for_bad_input < 3 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", node.transport.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refused_with(&node, "timed out").await;
    assert!(node.next_message(QUIET).await.is_none(), "the misaddressed message is dropped");
    still_serves(&pki, &mut node).await;
}

/// A node whose handshakes may take a minute: long enough that a listener finishing one
/// handshake before starting the next would make every test here wait out its deadline.
async fn patient_node(pki: &Pki) -> Node {
    let mut node_config = config(1);
    node_config.handshake_timeout = Duration::from_secs(60);
    Node::start(node_config, identity(&pki.node(1))).await
}

/// A connection that opens and says nothing holds up no other handshake: while it sits in
/// its handshake (60 s allowed), node 3 gets through within the 10 s wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_holds_up_no_other_handshake() {
    let pki = Pki::new("cluster");
    let mut node = patient_node(&pki).await;
    let silent = TcpStream::connect((LOCALHOST, node.port())).await.unwrap();
    still_serves(&pki, &mut node).await;
    let refusals = node.transport.recent_refusals();
    assert!(refusals.is_empty(), "the silent connection is still in its handshake: {refusals:?}");
    drop(silent);
}

/// One address cannot take every handshake slot: 16 silent connections from 127.0.0.1 sit in
/// their handshake, the 17th from it is closed at once and logged, and node 3, dialing from
/// 127.0.0.3, still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_16_handshakes_at_once_come_from_one_address() {
    let pki = Pki::new("cluster");
    let mut node = patient_node(&pki).await;
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(TcpStream::connect((LOCALHOST, node.port())).await.unwrap());
    }
    let seventeenth = TcpStream::connect((LOCALHOST, node.port())).await.unwrap();
    let from = seventeenth.local_addr().unwrap();
    refused_with(
        &node,
        &format!("from {from}: 16 connections from this address are already in their handshake"),
    )
    .await;
    still_serves_from(&pki, &mut node, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))).await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_naming_another_sender_closes_the_connection() {
    let pki = Pki::new("cluster");
    let mut node = Node::start(config(1), identity(&pki.node(1))).await;
    let peer = Node::start(config(2), identity(&pki.node(2))).await;
    connect_all(&[&node, &peer]).await;
    // Node 2, authenticated, sends a message claiming to come from node 3.
    send_eventually(&peer.transport, &heartbeat(3, 1, 1)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.transport.stats().connections_closed_for_bad_input == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.next_message(QUIET).await.is_none(), "the forged message is not delivered");
    // Node 2 redials and its honest messages go through.
    send_eventually(&peer.transport, &heartbeat(2, 1, 2)).await;
    let message = node.next_message(WAIT).await.unwrap();
    assert_eq!(message.from, NodeId(2));
}

#[tokio::test]
async fn contradictory_settings_are_refused_at_start() {
    let pki = Pki::new("cluster");
    let mut chunk_too_big = config(1);
    chunk_too_big.snapshot_chunk_bytes = chunk_too_big.frame_bytes_max;
    let mut lists_itself = config(1);
    lists_itself.peers.insert(NodeId(1), PeerAddress { host: "node-1.example".into(), port: 1 });
    let mut no_backoff = config(1);
    no_backoff.backoff_initial = Duration::ZERO;
    let cases =
        [(chunk_too_big, "frame_bytes_max"), (lists_itself, "itself"), (no_backoff, "backoff")];
    for (settings, needle) in cases {
        let error = raft_net::Transport::start(settings, identity(&pki.node(1))).await.err();
        let error = error.expect("refused").to_string();
        assert!(error.contains(needle), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_authenticated_for_an_old_address_is_closed_when_the_address_changes() {
    let pki = Pki::new("cluster");
    let mut node = Node::start(config(1), identity(&pki.node(1))).await;
    let peer = Node::start(config(2), identity(&pki.node(2))).await;
    connect_all(&[&node, &peer]).await;
    send_eventually(&peer.transport, &heartbeat(2, 1, 1)).await;
    assert!(node.next_message(WAIT).await.is_some());
    // Node 2 is now configured as node-7.example, which its certificate does not cover.
    node.transport.add_peer(NodeId(2), PeerAddress { host: "node-7.example".into(), port: 1 });
    refused_with(&node, "does not cover node-7.example").await;
    let _ = peer.transport.send(&heartbeat(2, 1, 2));
    assert!(node.next_message(QUIET).await.is_none(), "the old connection speaks no more");
}

/// A dialer this node does not know, announcing its address: taken on if its id is newer
/// than every id the host knows of (it joined while this node was down), so that this node
/// can answer it; refused if older (it was removed), or if its certificate is for clients only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_node_announcing_its_address_is_taken_on_and_an_older_or_client_one_refused() {
    let pki = Pki::new("cluster");
    let mut node = Node::start(config(1), identity(&pki.node(1))).await;
    node.transport.accept_announced_from(NodeId(5));
    let announcing = |id: u64| {
        let mut settings = config(id);
        settings.advertise = Some(PeerAddress { host: format!("node-{id}.example"), port: 0 });
        settings
    };
    // Node 7 is newer: it gets through, and node 1 answers it at the announced address.
    let mut newer_settings = announcing(7);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    newer_settings.listen.set_port(port);
    newer_settings.advertise.as_mut().unwrap().port = port;
    let mut newer = Node::start(newer_settings, identity(&pki.node(7))).await;
    newer.transport.add_peer(node.id, node.address());
    send_eventually(&newer.transport, &heartbeat(7, 1, 1)).await;
    let message = node.next_message(WAIT).await.expect("the newer node gets through");
    assert_eq!(message.from, NodeId(7));
    assert!(node.transport.peers().contains(&NodeId(7)), "taken on as a peer");
    send_eventually(&node.transport, &heartbeat(1, 7, 2)).await;
    let answer = newer.next_message(WAIT).await.expect("node 1 answers at the announced address");
    assert_eq!(answer.from, NodeId(1));
    // Node 3 is older and unknown: removed. It is refused and told so.
    let mut older = Node::start(announcing(3), identity(&pki.node(3))).await;
    older.transport.add_peer(node.id, node.address());
    let _ = older.transport.send(&heartbeat(3, 1, 3));
    refused_with(&node, "node 3 is not a configured peer").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while older.next_event(Duration::from_millis(100)).await != Some(Event::NotAPeerOf(NodeId(1))) {
        assert!(tokio::time::Instant::now() < deadline, "the older node was not told");
    }
    // Node 8 is newer but holds a client-only certificate.
    let mut params = rcgen::CertificateParams::new(vec!["node-8.example".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_only = pki.issue_with("client-only", params);
    let impostor = Node::start(announcing(8), identity(&client_only)).await;
    impostor.transport.add_peer(node.id, node.address());
    let _ = impostor.transport.send(&heartbeat(8, 1, 4));
    refused_with(&node, "a client certificate cannot announce a node").await;
    assert!(!node.transport.peers().contains(&NodeId(8)));
}

/// Until the host sets a bound, no unknown dialer is taken on from its announcement, not even
/// one claiming the largest id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bound_no_announced_dialer_is_taken_on() {
    let pki = Pki::new("cluster");
    let node = Node::start(config(1), identity(&pki.node(1))).await;
    let mut settings = config(u64::MAX);
    let host = format!("node-{}.example", u64::MAX);
    settings.advertise = Some(PeerAddress { host: host.clone(), port: 1 });
    let certificate = pki.issue("largest", &[&host]);
    let dialer = Node::start(settings, identity(&certificate)).await;
    dialer.transport.add_peer(node.id, node.address());
    let _ = dialer.transport.send(&heartbeat(u64::MAX, 1, 1));
    refused_with(&node, "is not a configured peer").await;
    assert!(!node.transport.peers().contains(&NodeId(u64::MAX)));
}
