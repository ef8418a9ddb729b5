//! The transport handle: start, send, send a snapshot, change peers, shut down.

use crate::config::{PeerAddress, TransportConfig};
use crate::frame;
use crate::queue::{PeerQueue, Refused};
use crate::tls::TlsIdentity;
use crate::{inbound, outbound, snapshot};
use bytes::Bytes;
use kv_proto::peer::{self, peer_frame::Frame, PeerFrame};
use raft_core::{Message, NodeId};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// How connections are secured.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual TLS with the cluster CA: the only mode the server uses.
    Tls(TlsIdentity),
    /// Plain TCP with no authentication at all, so that the benchmark can show the cost of
    /// TLS. Exists only with the `plain-tcp-for-benchmarks` feature.
    #[cfg(feature = "plain-tcp-for-benchmarks")]
    PlainTcpForBenchmarks,
}

/// What the transport hands the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from an authenticated peer, addressed to this node.
    Message(Message),
    /// A piece of a snapshot's data; the last piece carries the `InstallSnapshot` message to
    /// step once all the data is held.
    SnapshotChunk(ReceivedChunk),
    /// Messages to this peer were dropped (its queue was full, or its connection was lost
    /// with messages queued): the engine should treat it as unreachable
    /// (`RawNode::report_unreachable`) and probe it.
    Unreachable(NodeId),
    /// This peer refused our connection because it does not count this node among its
    /// members: when most members say so, this node was removed from the cluster.
    NotAPeerOf(NodeId),
    /// A snapshot transfer ended: `ok` when every chunk was handed to the connection, false if
    /// the connection was lost or the data could not be read (`RawNode::report_snapshot_failure` when not `ok`).
    SnapshotSent {
        /// The peer.
        to: NodeId,
        /// Whether it went out whole.
        ok: bool,
    },
}

/// One received piece of a snapshot. Pieces of one transfer arrive in order, without gaps
/// (checked); a new `transfer_id` from the same peer abandons the previous transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedChunk {
    /// The sender.
    pub from: NodeId,
    /// Identifies the transfer.
    pub transfer_id: u64,
    /// Where `data` goes in the snapshot's data.
    pub offset: u64,
    /// The snapshot data's whole length.
    pub total_len: u64,
    /// The bytes.
    pub data: Bytes,
    /// On the last piece: the `InstallSnapshot` message.
    pub install: Option<Message>,
}

/// A snapshot's data, read in chunks as they are sent (so never held whole in memory).
/// Reads run on tokio's blocking pool.
pub trait SnapshotSource: Send + 'static {
    /// The data's length.
    fn len(&self) -> u64;
    /// Whether there is no data.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl SnapshotSource for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let bytes = self.get(start..start + buf.len()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the snapshot")
        })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Why a message was not queued. The engine treats all of them as a lost message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The recipient is not a configured peer.
    #[error("node {0} is not a configured peer")]
    UnknownPeer(NodeId),
    /// The peer's queue is full (it is slow, stuck or unreachable).
    #[error("the send queue to node {0} is full")]
    QueueFull(NodeId),
    /// The encoded message (the length prefix excluded) exceeds the frame limit.
    #[error("a message of {len} bytes to node {to} exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// The recipient.
        to: NodeId,
        /// The encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A snapshot transfer to this peer is already under way.
    #[error("a snapshot is already being sent to node {0}")]
    SnapshotInProgress(NodeId),
    /// The transport is shut down.
    #[error("the transport is shut down")]
    ShutDown,
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings contradict each other.
    #[error("invalid transport settings: {0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Counters, for tests and metrics. Every field counts since the start.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) connections_closed_for_bad_input: AtomicU64,
    pub(crate) dials_failed: AtomicU64,
}

/// A reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames (messages and snapshot chunks) written to peers.
    pub messages_sent: u64,
    /// Messages and snapshot chunks received from authenticated peers.
    pub messages_received: u64,
    /// Messages refused at `send` or dropped with a lost connection.
    pub messages_dropped: u64,
    /// Flushes to peer connections (each carries every frame queued at the time).
    pub writes: u64,
    /// Inbound connections that passed the handshake.
    pub connections_accepted: u64,
    /// Inbound connections refused at TLS or the hello.
    pub connections_refused: u64,
    /// Authenticated connections closed for an oversized, truncated, undecodable or
    /// misaddressed frame.
    pub connections_closed_for_bad_input: u64,
    /// Dials that failed (connect, TLS, or a refused hello).
    pub dials_failed: u64,
}

impl Counters {
    fn read(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            messages_sent: get(&self.messages_sent),
            messages_received: get(&self.messages_received),
            messages_dropped: get(&self.messages_dropped),
            writes: get(&self.writes),
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            connections_closed_for_bad_input: get(&self.connections_closed_for_bad_input),
            dials_failed: get(&self.dials_failed),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// One outbound peer: where it is, its queue, and why the last dial failed.
pub(crate) struct Peer {
    pub(crate) id: NodeId,
    pub(crate) address: PeerAddress,
    pub(crate) queue: PeerQueue,
    pub(crate) last_error: Mutex<Option<String>>,
    /// A snapshot transfer to this peer is under way (one at a time: two would interleave).
    pub(crate) sending_snapshot: std::sync::atomic::AtomicBool,
}

/// The most refusal reasons kept for [`Transport::recent_refusals`].
const REFUSALS_KEPT: usize = 32;

/// State shared by the handle and every task.
pub(crate) struct Shared {
    pub(crate) config: TransportConfig,
    pub(crate) security: Security,
    pub(crate) peers: Mutex<BTreeMap<NodeId, Arc<Peer>>>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) counters: Counters,
    /// The live inbound connection of each peer, to close when a newer one authenticates.
    pub(crate) inbound: Mutex<BTreeMap<NodeId, Arc<Notify>>>,
    pub(crate) refusals: Mutex<VecDeque<String>>,
    pub(crate) next_transfer: AtomicU64,
    /// Unknown dialers with an id at least this, announcing an address their certificate
    /// covers, are taken on as peers (`u64::MAX`: none).
    pub(crate) announced_from: AtomicU64,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Adds peer `id` at `address` (or moves it there), with a writer dialling it.
    pub(crate) fn add_peer(self: &Arc<Self>, id: NodeId, address: PeerAddress) {
        if lock(&self.peers).get(&id).is_some_and(|peer| peer.address == address) {
            return;
        }
        let peer = self.new_peer(id, address);
        let old = lock(&self.peers).insert(id, peer.clone());
        if let Some(old) = old {
            old.queue.close();
            // Its inbound connection was authenticated against the old address: it must
            // authenticate again.
            self.close_inbound(id);
        }
        tokio::spawn(outbound::run(self.clone(), peer));
    }

    /// Whether `id` is at or above the host's bound for announced dialers (none while the
    /// host has set no bound).
    pub(crate) fn is_newer_than_known(&self, id: u64) -> bool {
        let bound = self.announced_from.load(Ordering::Relaxed);
        bound != u64::MAX && id >= bound
    }

    /// Adds `id`, which announced `address`, as a peer if it is still unknown and still newer
    /// than every id the host knows; returns whether it is now a peer (a peer configured
    /// meanwhile is kept at its configured address).
    pub(crate) fn take_on_announced(self: &Arc<Self>, id: NodeId, address: PeerAddress) -> bool {
        let peer = {
            let mut peers = lock(&self.peers);
            if peers.contains_key(&id) {
                return true;
            }
            if !self.is_newer_than_known(id.0) {
                return false;
            }
            let peer = self.new_peer(id, address);
            peers.insert(id, peer.clone());
            peer
        };
        tokio::spawn(outbound::run(self.clone(), peer));
        true
    }

    fn new_peer(&self, id: NodeId, address: PeerAddress) -> Arc<Peer> {
        Arc::new(Peer {
            id,
            address,
            queue: PeerQueue::new(self.config.queue_bytes_max),
            last_error: Mutex::default(),
            sending_snapshot: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn close_inbound(&self, id: NodeId) {
        if let Some(connection) = lock(&self.inbound).remove(&id) {
            connection.notify_one();
        }
    }

    /// The configured address of peer `id`.
    pub(crate) fn peer_address(&self, id: NodeId) -> Option<PeerAddress> {
        lock(&self.peers).get(&id).map(|peer| peer.address.clone())
    }

    pub(crate) fn record_refusal(&self, reason: String) {
        tracing::warn!(node = %self.config.node_id, "peer connection refused: {reason}");
        bump(&self.counters.connections_refused, 1);
        let mut refusals = lock(&self.refusals);
        if refusals.len() == REFUSALS_KEPT {
            refusals.pop_front();
        }
        refusals.push_back(reason);
    }
}

/// Room in a frame for a snapshot chunk's fields and its `InstallSnapshot` message beside the
/// data (a configuration of a few thousand members fits).
const CHUNK_OVERHEAD_BYTES: usize = 64 * 1024;

fn check(config: &TransportConfig) -> Result<(), StartError> {
    if config.snapshot_chunk_bytes == 0 {
        return Err(StartError::Config("snapshot_chunk_bytes must be at least 1".into()));
    }
    if config.snapshot_chunk_bytes + CHUNK_OVERHEAD_BYTES > config.frame_bytes_max {
        return Err(StartError::Config(format!(
            "snapshot_chunk_bytes {} plus {CHUNK_OVERHEAD_BYTES} bytes of overhead exceeds \
             frame_bytes_max {}",
            config.snapshot_chunk_bytes, config.frame_bytes_max
        )));
    }
    let zero = [
        ("handshake_timeout", config.handshake_timeout),
        ("write_timeout", config.write_timeout),
        ("backoff_initial", config.backoff_initial),
    ];
    if let Some((name, _)) = zero.iter().find(|(_, d)| d.is_zero()) {
        return Err(StartError::Config(format!("{name} must be above zero")));
    }
    if config.backoff_max < config.backoff_initial {
        return Err(StartError::Config("backoff_max is below backoff_initial".into()));
    }
    if config.peers.contains_key(&config.node_id) {
        return Err(StartError::Config(format!("node {} lists itself as a peer", config.node_id)));
    }
    Ok(())
}

/// A running transport. Dropping it shuts it down.
pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

/// Events waiting for the node at most; a full channel slows the peers' readers down.
const EVENTS_MAX: usize = 4096;

impl Transport {
    /// Binds the listen address, starts a writer for every configured peer, and returns the
    /// handle and the stream of [`Event`]s. Must run inside a tokio runtime.
    pub async fn start(
        config: TransportConfig,
        security: Security,
    ) -> Result<(Transport, mpsc::Receiver<Event>), StartError> {
        check(&config)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { address: config.listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { address: config.listen, source })?;
        let (events, receiver) = mpsc::channel(EVENTS_MAX);
        let peers = config.peers.clone();
        let shared = Arc::new(Shared {
            config,
            security,
            peers: Mutex::default(),
            events,
            shutdown: CancellationToken::new(),
            counters: Counters::default(),
            inbound: Mutex::default(),
            refusals: Mutex::default(),
            next_transfer: AtomicU64::new(fastrand::u64(..) >> 1),
            announced_from: AtomicU64::new(u64::MAX),
        });
        let transport = Transport { shared: shared.clone(), local_addr };
        for (id, address) in peers {
            transport.add_peer(id, address);
        }
        tokio::spawn(inbound::listen(shared, listener));
        Ok((transport, receiver))
    }

    /// The address the listener is bound to (with the port chosen, if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues `message` for its recipient without waiting. An error means the message is
    /// lost, as Raft allows; the peer is reported with [`Event::Unreachable`] too.
    pub fn send(&self, message: &Message) -> Result<(), SendError> {
        let to = message.to;
        let peer = self.peer(to)?;
        let frame = PeerFrame { frame: Some(Frame::Message(peer::RaftMessage::from(message))) };
        let bytes = frame::encode_to_bytes(&frame);
        let (len, max) = (bytes.len() - frame::LENGTH_BYTES, self.shared.config.frame_bytes_max);
        if len > max {
            return Err(SendError::TooLarge { to, len, max });
        }
        peer.queue.push_message(bytes).map_err(|refused| {
            bump(&self.shared.counters.messages_dropped, 1);
            match refused {
                Refused::Full { first } => {
                    // Reported once per episode on the event stream too; a full event stream
                    // means the node is already behind, and the report is not needed then.
                    if first {
                        let _ = self.shared.events.try_send(Event::Unreachable(to));
                    }
                    SendError::QueueFull(to)
                }
                Refused::Reset => SendError::ShutDown,
            }
        })
    }

    /// Sends a snapshot: `install` (an `InstallSnapshot` message) goes with the last chunk of
    /// `data`, read chunk by chunk as the connection takes them. The outcome arrives as
    /// [`Event::SnapshotSent`].
    pub fn send_snapshot(
        &self,
        install: Message,
        data: Box<dyn SnapshotSource>,
    ) -> Result<(), SendError> {
        let peer = self.peer(install.to)?;
        if peer.sending_snapshot.swap(true, Ordering::AcqRel) {
            return Err(SendError::SnapshotInProgress(install.to));
        }
        let transfer_id = self.shared.next_transfer.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(snapshot::send(self.shared.clone(), peer, transfer_id, install, data));
        Ok(())
    }

    fn peer(&self, id: NodeId) -> Result<Arc<Peer>, SendError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(SendError::ShutDown);
        }
        lock(&self.shared.peers).get(&id).cloned().ok_or(SendError::UnknownPeer(id))
    }

    /// Adds peer `id` at `address` (or moves it there): connections are then accepted from
    /// it, and a writer dials it.
    pub fn add_peer(&self, id: NodeId, address: PeerAddress) {
        self.shared.add_peer(id, address);
    }

    /// Takes on unknown dialers whose id is at least `first`: a dialer that announces its
    /// address in its hello, with a certificate that covers that host and may serve TLS, is
    /// added as a peer at that address. The host sets this just above every id it knows of
    /// (ids are never reused): a newer id is a member that joined while this node was down,
    /// an older unknown one was removed and is refused, which tells it so.
    pub fn accept_announced_from(&self, first: NodeId) {
        self.shared.announced_from.store(first.0, Ordering::Relaxed);
    }

    /// Forgets peer `id`: its writer stops, and its connections are refused from now on.
    pub fn remove_peer(&self, id: NodeId) {
        if let Some(old) = lock(&self.shared.peers).remove(&id) {
            old.queue.close();
        }
        self.close_inbound(id);
    }

    /// Closes the inbound connection of `id`. Called after changing `peers`: a connection
    /// that registers concurrently checks `peers` after registering (`inbound::serve`), so
    /// one of the two always sees the other.
    fn close_inbound(&self, id: NodeId) {
        self.shared.close_inbound(id);
    }

    /// The configured peers.
    pub fn peers(&self) -> Vec<NodeId> {
        lock(&self.shared.peers).keys().copied().collect()
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.read()
    }

    /// Bytes of messages queued for peer `id` now (0 for an unknown peer).
    pub fn queued_bytes(&self, id: NodeId) -> usize {
        lock(&self.shared.peers).get(&id).map_or(0, |peer| peer.queue.message_bytes())
    }

    /// Why the last dial of peer `id` failed, if it did and no dial succeeded since.
    pub fn peer_error(&self, id: NodeId) -> Option<String> {
        let peer = lock(&self.shared.peers).get(&id).cloned()?;
        let error = lock(&peer.last_error).clone();
        error
    }

    /// The reasons of the latest refused inbound connections, oldest first.
    pub fn recent_refusals(&self) -> Vec<String> {
        lock(&self.shared.refusals).iter().cloned().collect()
    }

    /// Stops listening, closes every connection and ends every task.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        for peer in lock(&self.shared.peers).values() {
            peer.queue.close();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}
