//! Messages and snapshots between real transports over loopback mutual TLS: delivery both
//! ways, reconnection after a restart, coalesced writes, a peer that stops reading (and the
//! batch lost with it), snapshots between heartbeats and read only as they are sent.

mod common;

use bytes::Bytes;
use common::*;
use raft_core::{Index, Membership, Message, MessageBody, NodeId, SnapshotMeta, Term};
use raft_net::{Event, PeerAddress, SendError, SnapshotSource};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_messages_in_every_direction() {
    let pki = Pki::new("cluster");
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Node::start(config(id), identity(&pki.node(id))).await);
    }
    // Node 1 knows node 3 by IP, everyone else by name: a certificate covering 127.0.0.1
    // serves both.
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.id != a.id) {
            let by_ip = PeerAddress { host: "127.0.0.1".into(), port: b.port() };
            let address = if (a.id, b.id) == (NodeId(1), NodeId(3)) { by_ip } else { b.address() };
            a.transport.add_peer(b.id, address);
        }
    }
    await_links(&nodes.iter().collect::<Vec<_>>()).await;
    for from in 1..=3u64 {
        for to in (1..=3).filter(|&to| to != from) {
            for n in 0..10 {
                send_eventually(&nodes[from as usize - 1].transport, &heartbeat(from, to, n)).await;
            }
        }
    }
    for node in &mut nodes {
        let mut got = Vec::new();
        while got.len() < 20 {
            let message = node.next_message(WAIT).await.expect("every message arrives");
            assert_eq!(message.to, node.id);
            got.push(message);
        }
        for from in (1..=3).filter(|&from| NodeId(from) != node.id) {
            let numbers: Vec<Index> = got
                .iter()
                .filter(|m| m.from == NodeId(from))
                .map(|m| match m.body {
                    MessageBody::Heartbeat { commit, .. } => commit,
                    _ => panic!("unexpected {m}"),
                })
                .collect();
            let expected: Vec<Index> = (0..10).map(Index).collect();
            assert_eq!(numbers, expected, "node {} from {from}: in order, once each", node.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_redialled_and_gets_each_message_once() {
    let pki = Pki::new("cluster");
    let mut a = Node::start(config(1), identity(&pki.node(1))).await;
    let mut b = Node::start(config(2), identity(&pki.node(2))).await;
    connect_all(&[&a, &b]).await;
    send_eventually(&a.transport, &heartbeat(1, 2, 0)).await;
    assert!(b.next_message(WAIT).await.is_some());
    let port = b.port();
    drop(b);
    // While node 2 is down, messages to it are lost (and reported), never queued forever.
    let mut n = 1;
    let mut reported = false;
    for _ in 0..300 {
        let _ = a.transport.send(&heartbeat(1, 2, n));
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
        while let Ok(event) = a.events.try_recv() {
            reported |= event == Event::Unreachable(NodeId(2));
        }
    }
    assert!(reported, "the lost messages were reported");
    // Node 2 comes back on the same port; node 1 redials and delivery resumes.
    let mut restarted = config(2);
    restarted.listen.set_port(port);
    let mut b = Node::start(restarted, identity(&pki.node(2))).await;
    b.transport.add_peer(NodeId(1), a.address());
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while received.len() < 20 {
        assert!(tokio::time::Instant::now() < deadline, "delivery resumed: {received:?}");
        let _ = a.transport.send(&heartbeat(1, 2, n));
        n += 1;
        if let Some(Event::Message(m)) = b.next_event(Duration::from_millis(20)).await {
            let MessageBody::Heartbeat { commit, .. } = m.body else { panic!("{m}") };
            received.push(commit.0);
        }
    }
    let distinct: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(distinct.len(), received.len(), "nothing delivered twice: {received:?}");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order: {received:?}");
}

/// Under a burst, messages share writes: 2,000 heartbeats queued back to back all arrive, in
/// order, through fewer than 1,000 flushes (the writer takes everything queued each round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_messages_shares_few_writes() {
    let pki = Pki::new("cluster");
    let a = Node::start(config(1), identity(&pki.node(1))).await;
    let mut b = Node::start(config(2), identity(&pki.node(2))).await;
    connect_all(&[&a, &b]).await;
    for n in 0..2000 {
        a.transport.send(&heartbeat(1, 2, n)).expect("room in the queue");
    }
    for n in 0..2000 {
        let message = b.next_message(WAIT).await.expect("every heartbeat arrives");
        assert_eq!(message.body, heartbeat(1, 2, n).body, "in order, once each");
    }
    until("the last write is counted", || a.transport.stats().messages_sent == 2000).await;
    let stats = a.transport.stats();
    assert!(stats.writes > 0 && stats.writes < 1000, "coalesced: {stats:?}");
}

/// A listener that passes TLS and the hello as node 2, then never reads again.
async fn stuck_peer(pki: &Pki) -> (u16, tokio::task::JoinHandle<()>) {
    use kv_proto::peer::{peer_frame::Frame, HelloReply, PeerFrame};
    let paths = pki.node(2);
    let identity = raft_net::TlsIdentity::load(&paths).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
            let mut prefix = [0; 4];
            tls.read_exact(&mut prefix).await.unwrap();
            let mut hello = vec![0; u32::from_be_bytes(prefix) as usize];
            tls.read_exact(&mut hello).await.unwrap();
            let reply = HelloReply { node_id: 2, refused: String::new(), unknown_node: false };
            let frame = raft_net::frame::encode_to_bytes(&PeerFrame {
                frame: Some(Frame::HelloReply(reply)),
            });
            tls.write_all(&frame).await.unwrap();
            tls.flush().await.unwrap();
            held.push(tls); // never read: the sender's socket buffers fill up
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_costs_bounded_memory_and_nobody_else_waits() {
    let pki = Pki::new("cluster");
    let mut sender_config = config(1);
    sender_config.queue_bytes_max = 1 << 20;
    sender_config.write_timeout = Duration::from_secs(60);
    let a = Node::start(sender_config, identity(&pki.node(1))).await;
    let mut c = Node::start(config(3), identity(&pki.node(3))).await;
    let (stuck_port, stuck) = stuck_peer(&pki).await;
    a.transport
        .add_peer(NodeId(2), PeerAddress { host: "node-2.example".into(), port: stuck_port });
    connect_all(&[&a, &c]).await;
    let mut refused = 0;
    for round in 0..2000u64 {
        match a.transport.send(&proposal(1, 2, 64 * 1024)) {
            Ok(()) => {}
            Err(SendError::QueueFull(to)) => {
                assert_eq!(to, NodeId(2));
                refused += 1;
            }
            Err(other) => panic!("{other}"),
        }
        assert!(a.transport.queued_bytes(NodeId(2)) <= (1 << 20) + 70_000);
        if round % 20 == 0 {
            let _ = a.transport.send(&heartbeat(1, 3, round));
        }
        tokio::task::yield_now().await;
    }
    assert!(refused > 1000, "the stuck peer's queue filled: {refused} refused");
    assert!(a.transport.stats().messages_dropped >= refused);
    // Node 3 still gets messages while node 2 is stuck: a last one, sent now, arrives.
    // (Earlier ones may have been lost with a connection that a loaded machine let time out
    // during its handshake; Raft allows that, and the queue reports it.)
    send_eventually(&a.transport, &heartbeat(1, 3, 1_000_000)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = c.next_message(left).await.expect("node 3 is not held up by node 2");
        if message.body == heartbeat(1, 3, 1_000_000).body {
            break;
        }
    }
    stuck.abort();
}

/// A batch lost with its connection is reported: one append of 16 MiB (four times what the
/// kernel's loopback buffers take) to a peer that stops reading stalls past the write
/// timeout, with nothing else queued. The writer drops the connection and counts the
/// message it was writing as dropped, and the engine hears `Unreachable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lost_with_its_connection_is_counted_and_reported() {
    let pki = Pki::new("cluster");
    let mut sender_config = config(1);
    sender_config.frame_bytes_max = 32 << 20;
    sender_config.write_timeout = Duration::from_millis(300);
    let mut a = Node::start(sender_config, identity(&pki.node(1))).await;
    let (stuck_port, stuck) = stuck_peer(&pki).await;
    a.transport
        .add_peer(NodeId(2), PeerAddress { host: "node-2.example".into(), port: stuck_port });
    a.transport.send(&append(1, 2, 16 << 20)).expect("an empty queue takes it");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = a.next_event(left).await.expect("the lost append is reported");
        if event == Event::Unreachable(NodeId(2)) {
            break;
        }
    }
    let stats = a.transport.stats();
    assert!(stats.messages_dropped >= 1, "the append is counted as dropped: {stats:?}");
    assert_eq!(stats.messages_sent, 0, "and never as sent: {stats:?}");
    stuck.abort();
}

/// The `InstallSnapshot` message from node 1 to node 2 for a snapshot at index 900.
fn install_snapshot() -> Message {
    let meta = SnapshotMeta {
        index: Index(900),
        term: Term(4),
        membership: Membership::new([NodeId(1), NodeId(2)]),
    };
    let body = MessageBody::InstallSnapshot { snapshot: meta };
    Message { from: NodeId(1), to: NodeId(2), term: Term(4), body }
}

/// A snapshot travels in chunks that messages pass: heartbeats queued once the transfer has
/// begun all arrive before its last chunk (a message waits behind at most one chunk, never
/// behind the whole snapshot), and the data arrives whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_arrives_whole_in_chunks_with_heartbeats_between_them() {
    let pki = Pki::new("cluster");
    let mut sender_config = config(1);
    sender_config.snapshot_chunk_bytes = 64 * 1024;
    let mut a = Node::start(sender_config, identity(&pki.node(1))).await;
    let mut b = Node::start(config(2), identity(&pki.node(2))).await;
    connect_all(&[&a, &b]).await;
    send_eventually(&a.transport, &heartbeat(1, 2, 0)).await;
    assert!(b.next_message(WAIT).await.is_some());
    let data: Bytes = (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>().into();
    let install = install_snapshot();
    a.transport.send_snapshot(install.clone(), Box::new(data.clone())).unwrap();
    let second = a.transport.send_snapshot(install.clone(), Box::new(data.clone()));
    assert_eq!(second, Err(SendError::SnapshotInProgress(NodeId(2))), "one transfer at a time");
    // Queued while the transfer is under way: each must pass the chunks still to come.
    const HEARTBEATS: usize = 20;
    for n in 1..=HEARTBEATS {
        a.transport.send(&heartbeat(1, 2, n as u64)).unwrap();
    }
    let mut assembled = Vec::new();
    let mut heartbeats_during = 0;
    loop {
        match b.next_event(WAIT).await.expect("the transfer goes on") {
            Event::Message(_) => heartbeats_during += 1,
            Event::SnapshotChunk(chunk) => {
                assert_eq!(chunk.offset, assembled.len() as u64, "in order, no gap");
                assert_eq!(chunk.total_len, data.len() as u64);
                assert!(chunk.data.len() <= 64 * 1024);
                assembled.extend_from_slice(&chunk.data);
                if let Some(message) = chunk.install {
                    assert_eq!(message, install);
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(assembled, data, "the data arrives whole");
    assert_eq!(heartbeats_during, HEARTBEATS, "every heartbeat arrived before the last chunk");
    let sent = loop {
        match a.next_event(WAIT).await.expect("the sender learns the outcome") {
            Event::SnapshotSent { to, ok } => break (to, ok),
            _ => continue,
        }
    };
    assert_eq!(sent, (NodeId(2), true));
}

/// Snapshot data made up on demand, counting the chunks asked for.
struct CountedSource {
    len: u64,
    reads: Arc<AtomicUsize>,
}

impl SnapshotSource for CountedSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, _offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0x5a);
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A snapshot's data is read as the connection takes it, never ahead of it: to a peer that
/// takes nothing, a transfer of 20 chunks, each larger than the kernel's loopback buffers,
/// reads at most 5 of them (the one in the stalled write, two queued in the chunk lane, one
/// waiting for room, and one of slack), not all 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_read_only_as_the_connection_takes_it() {
    let pki = Pki::new("cluster");
    let mut sender_config = config(1);
    sender_config.frame_bytes_max = 32 << 20;
    sender_config.snapshot_chunk_bytes = 8 << 20;
    sender_config.write_timeout = Duration::from_secs(60);
    let a = Node::start(sender_config, identity(&pki.node(1))).await;
    let (stuck_port, stuck) = stuck_peer(&pki).await;
    a.transport
        .add_peer(NodeId(2), PeerAddress { host: "node-2.example".into(), port: stuck_port });
    let reads = Arc::new(AtomicUsize::new(0));
    let source = CountedSource { len: 20 * (8 << 20), reads: reads.clone() };
    a.transport.send_snapshot(install_snapshot(), Box::new(source)).unwrap();
    // 1. Two chunks fill the lane and a third waits for room: the transfer is under way.
    until("three chunks read", || reads.load(Ordering::SeqCst) >= 3).await;
    // 2. The writer takes one, its write stalls; given time, the sender reads no further.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let read = reads.load(Ordering::SeqCst);
    assert!(read <= 5, "{read} of 20 chunks read while the peer took none");
    stuck.abort();
}

/// A peer nobody answers for is redialled with backoff, not in a loop: with delays drawn from
/// `[d/2, d]` and `d` doubling from 50 ms to at most 100 ms, six failed dials take at least
/// 25 + 50 + 50 + 50 + 50 ms. (A slow machine only makes them take longer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_refuses_every_dial_is_redialled_with_backoff() {
    let pki = Pki::new("cluster");
    let mut config = config(1);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(100);
    let node = Node::start(config, identity(&pki.node(1))).await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = tokio::time::Instant::now();
    node.transport.add_peer(NodeId(2), PeerAddress { host: "127.0.0.1".into(), port: closed_port });
    until("six failed dials", || node.transport.stats().dials_failed >= 6).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(225), "six dials in {elapsed:?}: no backoff");
}
