//! Transport throughput over loopback: node 1 sends batches of messages to node 2, both in this
//! process, once over mutual TLS and once over plain TCP, so that the cost of TLS shows.
//!
//! - `heartbeat/<security>`: batches of 10,000 `Heartbeat`s (a 16-byte frame), where the costs
//!   per message rule: encoding, queueing, decoding, the event channel.
//! - `append_64KiB/<security>`: batches of 500 `Append`s each carrying one entry of 64 KiB of
//!   data, where the costs per byte rule: copies and, with TLS, encryption.
//! - `heartbeat_bytes/<security>` and `append_64KiB_bytes/<security>` run the same benchmarks
//!   again: the plain groups report messages/s, the `_bytes` groups MB/s (10^6 bytes) of frames
//!   (length prefix and protobuf, not TLS records), as criterion 0.5 reports one throughput
//!   per benchmark.
//!
//! `<security>` is `tls` (mutual TLS 1.3 with certificates made by rcgen at start) or
//! `plain_tcp` (`Security::PlainTcpForBenchmarks`). The two transports of each are set up once,
//! before any timing, on one tokio runtime with 2 worker threads, and connected. An iteration
//! queues a whole batch with `Transport::send` from a task on that runtime (yielding and
//! retrying while the peer's queue is full) and ends once a task draining node 2's events, as
//! a node would, has counted the whole batch. The same message is sent again and again, so
//! building it is never timed, while encoding it is.
//!
//! ```sh
//! cargo bench -p raft-net --features plain-tcp-for-benchmarks --bench transport
//! # quick (about a minute once built)
//! cargo bench -p raft-net --features plain-tcp-for-benchmarks --bench transport -- \
//!     --warm-up-time 1 --measurement-time 3
//! ```

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use kv_proto::peer::{peer_frame::Frame, PeerFrame, RaftMessage};
use raft_core::{Entry, EntryId, EntryKind, Index, Message, MessageBody, NodeId, Term};
use raft_net::{
    Event, PeerAddress, Security, SendError, TlsIdentity, TlsPaths, Transport, TransportConfig,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Notify};

const CLUSTER: &str = "bench-cluster";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The node that sends.
const SENDER: NodeId = NodeId(1);
/// The node that receives.
const RECEIVER: NodeId = NodeId(2);
/// Heartbeats per iteration.
const HEARTBEATS_PER_BATCH: u64 = 10_000;
/// Appends per iteration.
const APPENDS_PER_BATCH: u64 = 500;
/// Data bytes of the entry in each append.
const ENTRY_BYTES: usize = 64 << 10;
/// The longest wait for a batch. A lost connection drops what was queued, and the batch would
/// never complete: fail rather than hang.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait for the two nodes to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The host name of node `id`, which its certificate covers.
fn host(id: NodeId) -> String {
    format!("node-{}.example", id.0)
}

/// Node `id`'s settings: the defaults, on an ephemeral loopback port, with both nodes' names
/// resolved to loopback.
fn config(id: NodeId) -> TransportConfig {
    let mut config = TransportConfig::new(id, CLUSTER, SocketAddr::new(LOCALHOST, 0));
    for node in [SENDER, RECEIVER] {
        config.resolve.insert(host(node), LOCALHOST);
    }
    config.backoff_initial = Duration::from_millis(10);
    config
}

/// Mutual TLS identities for the sender and the receiver, from a new CA. The PEM files live
/// only while they are loaded.
fn tls_identities() -> (Security, Security) {
    let dir = tempfile::tempdir().expect("a temporary directory for the certificates");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("writing a PEM file");
        path
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_key = KeyPair::generate().expect("a CA key");
    let ca = CertifiedIssuer::self_signed(params, ca_key).expect("a CA certificate");
    let ca_path = write("ca.pem", ca.pem());
    let identity = |id: NodeId| {
        let key = KeyPair::generate().expect("a node key");
        let params = CertificateParams::new(vec![host(id)]).expect("node parameters");
        let cert = params.signed_by(&key, &ca).expect("a node certificate");
        let paths = TlsPaths {
            ca: ca_path.clone(),
            cert: write(&format!("node-{}.pem", id.0), cert.pem()),
            key: write(&format!("node-{}-key.pem", id.0), key.serialize_pem()),
        };
        Security::Tls(TlsIdentity::load(&paths).expect("loading a node identity"))
    };
    (identity(SENDER), identity(RECEIVER))
}

/// Messages node 2 has received, counted by its drain task.
#[derive(Default)]
struct Received {
    messages: AtomicU64,
    /// Woken after every batch of events counted.
    more: Notify,
}

impl Received {
    fn count(&self) -> u64 {
        self.messages.load(Ordering::Acquire)
    }

    /// Waits until `target` messages were received, at most `within`; whether they were.
    async fn wait_for(&self, target: u64, within: Duration) -> bool {
        let reached = async {
            loop {
                let more = self.more.notified();
                if self.count() >= target {
                    return;
                }
                more.await;
            }
        };
        tokio::time::timeout(within, reached).await.is_ok()
    }
}

/// Takes node 2's events as its node loop would, and counts the messages.
async fn drain(mut events: mpsc::Receiver<Event>, received: Arc<Received>) {
    let mut batch = Vec::with_capacity(1024);
    while events.recv_many(&mut batch, 1024).await > 0 {
        let messages = batch.drain(..).filter(|event| matches!(event, Event::Message(_))).count();
        received.messages.fetch_add(messages as u64, Ordering::Release);
        received.more.notify_one();
    }
}

/// Queues `message`, yielding and retrying while the peer's queue is full.
async fn send_retrying(transport: &Transport, message: &Message) {
    loop {
        match transport.send(message) {
            Ok(()) => return,
            Err(SendError::QueueFull(_)) => tokio::task::yield_now().await,
            Err(error) => panic!("cannot send {message}: {error}"),
        }
    }
}

/// Two transports on loopback, connected: node 1 sends, node 2 receives.
struct Pair {
    /// `tls` or `plain_tcp`: the benchmark's name in its group.
    name: &'static str,
    sender: Arc<Transport>,
    /// Node 1's events (only `Unreachable` reports when its queue is full), kept open.
    _sender_events: mpsc::Receiver<Event>,
    receiver: Transport,
    received: Arc<Received>,
}

impl Pair {
    /// Starts both nodes, makes each a peer of the other, and waits until a message passes.
    async fn start(name: &'static str, sender: Security, receiver: Security) -> Pair {
        let (receiver, events) =
            Transport::start(config(RECEIVER), receiver).await.expect("starting node 2");
        let (sender, sender_events) =
            Transport::start(config(SENDER), sender).await.expect("starting node 1");
        let address = |transport: &Transport, id| PeerAddress {
            host: host(id),
            port: transport.local_addr().port(),
        };
        sender.add_peer(RECEIVER, address(&receiver, RECEIVER));
        receiver.add_peer(SENDER, address(&sender, SENDER));
        let received = Arc::new(Received::default());
        tokio::spawn(drain(events, received.clone()));
        let pair = Pair {
            name,
            sender: Arc::new(sender),
            _sender_events: sender_events,
            receiver,
            received,
        };
        pair.connect().await;
        pair
    }

    /// Sends heartbeats until one arrives. The writer keeps what it queued while it dials, but
    /// drops it when a dial fails, hence the resends; a straggler can only arrive during the
    /// first (warm-up) iteration.
    async fn connect(&self) {
        let probe = heartbeat();
        for _ in 0..CONNECT_TIMEOUT.as_millis() / 100 {
            if self.sender.send(&probe).is_ok()
                && self.received.wait_for(1, Duration::from_millis(100)).await
            {
                return;
            }
        }
        panic!(
            "{}: node 1 cannot reach node 2: {:?}; node 2 refused: {:?}",
            self.name,
            self.sender.peer_error(RECEIVER),
            self.receiver.recent_refusals()
        );
    }

    /// One iteration: queues `count` copies of `message` from a task on the runtime, then
    /// waits until node 2 has received them all.
    async fn send_batch(&self, message: &Message, count: u64) {
        let target = self.received.count() + count;
        let sender = self.sender.clone();
        let message = message.clone();
        let sending = tokio::spawn(async move {
            for _ in 0..count {
                send_retrying(&sender, &message).await;
            }
        });
        sending.await.expect("the sending task panicked");
        if !self.received.wait_for(target, BATCH_TIMEOUT).await {
            panic!(
                "{}: node 2 received {} of {target} messages in {BATCH_TIMEOUT:?}; node 1: {:?}, \
                 last dial error {:?}",
                self.name,
                self.received.count(),
                self.sender.stats(),
                self.sender.peer_error(RECEIVER)
            );
        }
    }
}

fn heartbeat() -> Message {
    let body = MessageBody::Heartbeat { commit: Index(1), read_round: 0 };
    Message { from: SENDER, to: RECEIVER, term: Term(1), body }
}

/// An append of one entry of [`ENTRY_BYTES`] of data.
fn append_64kib() -> Message {
    let entry = Entry {
        term: Term(1),
        index: Index(2),
        kind: EntryKind::Normal,
        data: Bytes::from(vec![0x5a; ENTRY_BYTES]),
    };
    let prev = EntryId::new(Term(1), Index(1));
    let body = MessageBody::Append { prev, entries: vec![entry], commit: Index(1) };
    Message { from: SENDER, to: RECEIVER, term: Term(1), body }
}

/// The bytes `message` takes on the wire: its frame, length prefix included.
fn frame_bytes(message: &Message) -> u64 {
    let frame = PeerFrame { frame: Some(Frame::Message(RaftMessage::from(message))) };
    raft_net::frame::encode_to_bytes(&frame).len() as u64
}

/// Runs `message` in batches of `per_batch` over every pair, in a group counting messages
/// (`name`) and one counting frame bytes (`<name>_bytes`).
fn bench_message(
    c: &mut Criterion,
    runtime: &Runtime,
    pairs: &[Pair],
    name: &str,
    message: &Message,
    per_batch: u64,
) {
    let bytes = per_batch * frame_bytes(message);
    let groups = [
        (name.to_string(), Throughput::Elements(per_batch)),
        (format!("{name}_bytes"), Throughput::BytesDecimal(bytes)),
    ];
    for (group_name, throughput) in groups {
        let mut group = c.benchmark_group(group_name);
        // An iteration takes milliseconds to tens of milliseconds: ten flat samples keep a run
        // within the measurement time.
        group.throughput(throughput).sample_size(10).sampling_mode(SamplingMode::Flat);
        for pair in pairs {
            group.bench_function(pair.name, |b| {
                b.to_async(runtime).iter(|| pair.send_batch(message, per_batch));
            });
        }
        group.finish();
    }
}

fn transport(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (sender, receiver) = tls_identities();
    let pairs = runtime.block_on(async {
        let tls = Pair::start("tls", sender, receiver).await;
        let plain = Pair::start(
            "plain_tcp",
            Security::PlainTcpForBenchmarks,
            Security::PlainTcpForBenchmarks,
        )
        .await;
        [tls, plain]
    });
    bench_message(c, &runtime, &pairs, "heartbeat", &heartbeat(), HEARTBEATS_PER_BATCH);
    bench_message(c, &runtime, &pairs, "append_64KiB", &append_64kib(), APPENDS_PER_BATCH);
}

criterion_group!(benches, transport);
criterion_main!(benches);
