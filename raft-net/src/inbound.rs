//! The listener: accepts peer connections, authenticates each (TLS, then the hello), and
//! reads frames from it into the event stream. Each connection is its own task, so a slow,
//! silent or malicious peer holds up nobody else; anything wrong closes that one connection,
//! with the reason logged.

use crate::frame::FrameReader;
use crate::tls::{certificate_covers, may_serve_tls};
use crate::transport::{bump, lock, Event, ReceivedChunk, Security, Shared};
use crate::PeerAddress;
use crate::{frame, BoxStream, HELLO_BYTES_MAX, PROTOCOL_VERSION};
use kv_proto::peer::{peer_frame::Frame, Hello, HelloReply, PeerFrame, SnapshotChunk};
use raft_core::{Message, MessageBody, NodeId};
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Connections in their handshake at most: more are closed at once, so that a flood of
/// unauthenticated connections cannot use up the node's file descriptors for
/// `handshake_timeout` each.
const HANDSHAKES_MAX: usize = 128;

/// Connections in their handshake at most from one IP address, so that one host holding
/// silent connections open cannot take every handshake slot and keep the peers out. A peer
/// dials one connection at a time; a host running several nodes still fits many times over.
const HANDSHAKES_PER_ADDRESS_MAX: usize = 16;

/// The handshake slots: a node-wide bound and a bound per source address.
struct Handshakes {
    all: Arc<tokio::sync::Semaphore>,
    by_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

/// A connection's place among the handshakes, given back when it is dropped.
struct HandshakeSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    address: IpAddr,
    by_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl Handshakes {
    fn new() -> Handshakes {
        Handshakes {
            all: Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX)),
            by_address: Arc::default(),
        }
    }

    /// A slot for a connection from `address`, or why there is none.
    fn take(&self, address: IpAddr) -> Result<HandshakeSlot, String> {
        let mut by_address = lock(&self.by_address);
        let count = by_address.entry(address).or_insert(0);
        if *count >= HANDSHAKES_PER_ADDRESS_MAX {
            return Err(format!(
                "{HANDSHAKES_PER_ADDRESS_MAX} connections from this address are already in \
                 their handshake"
            ));
        }
        let Ok(permit) = self.all.clone().try_acquire_owned() else {
            return Err(format!("{HANDSHAKES_MAX} connections are already in their handshake"));
        };
        *count += 1;
        let by_address = self.by_address.clone();
        Ok(HandshakeSlot { _permit: permit, address, by_address })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_address = lock(&self.by_address);
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// Accepts connections until the transport shuts down.
pub(crate) async fn listen(shared: Arc<Shared>, listener: TcpListener) {
    let handshakes = Handshakes::new();
    // Refusals for want of a slot come in floods: one is logged per episode.
    let mut refusing = false;
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, remote)) => {
                let slot = match handshakes.take(remote.ip()) {
                    Ok(slot) => slot,
                    Err(reason) => {
                        if !std::mem::replace(&mut refusing, true) {
                            shared.record_refusal(format!("from {remote}: {reason}"));
                        } else {
                            bump(&shared.counters.connections_refused, 1);
                        }
                        continue; // dropped: closed at once
                    }
                };
                refusing = false;
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(shared.clone(), tcp, remote, slot));
            }
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(node = %shared.config.node_id, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Who a hello speaks for: the node, the host its certificate was checked against, and the
/// address it announced if this node took it on from that announcement.
struct Speaker {
    id: NodeId,
    host: String,
    announced: Option<PeerAddress>,
}

/// The peer and the connection's halves.
type Authenticated = (Speaker, FrameReader<ReadHalf<BoxStream>>, WriteHalf<BoxStream>);

async fn serve(shared: Arc<Shared>, tcp: TcpStream, remote: SocketAddr, handshake: HandshakeSlot) {
    let accepted = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        accepted = tokio::time::timeout(shared.config.handshake_timeout, accept(&shared, tcp)) => accepted,
    };
    let (speaker, reader, _write) = match accepted {
        Ok(Ok(authenticated)) => authenticated,
        Ok(Err(reason)) => return shared.record_refusal(format!("from {remote}: {reason}")),
        Err(_) => return shared.record_refusal(format!("from {remote}: the handshake timed out")),
    };
    drop(handshake);
    bump(&shared.counters.connections_accepted, 1);
    let (from, checked_host) = (speaker.id, speaker.host);
    if let Some(address) = speaker.announced {
        // Decided before the hello reply was written: the host may have configured the id, or
        // raised the bound past it, since. A configured address is never replaced.
        if !shared.take_on_announced(from, address.clone()) {
            return shared.record_refusal(format!(
                "from {remote}: node {from} is no longer newer than every node known here"
            ));
        }
        tracing::info!(node = %shared.config.node_id, peer = %from, "node {from} is not configured here but is newer than every node known here: taken on at the address it announced, {address}");
    }
    // A newer connection from the same peer replaces this one (the peer restarted, or its
    // old connection is half-open).
    let superseded = Arc::new(Notify::new());
    if let Some(older) = lock(&shared.inbound).insert(from, superseded.clone()) {
        older.notify_one();
    }
    // Registered first, checked second: a concurrent `remove_peer` or address change either
    // finds this connection registered and closes it, or is seen here.
    if shared.peer_address(from).map(|a| a.host) != Some(checked_host) {
        superseded.notify_one();
    }
    let ended = tokio::select! {
        () = shared.shutdown.cancelled() => None,
        () = superseded.notified() => None,
        ended = read_frames(&shared, from, reader) => Some(ended),
    };
    {
        let mut inbound = lock(&shared.inbound);
        if inbound.get(&from).is_some_and(|current| Arc::ptr_eq(current, &superseded)) {
            inbound.remove(&from);
        }
    }
    if let Some(Err(reason)) = ended {
        bump(&shared.counters.connections_closed_for_bad_input, 1);
        tracing::warn!(node = %shared.config.node_id, peer = %from, "closing the connection from {remote}: {reason}");
    }
}

/// TLS, then the hello exchange. On refusal the peer is told why (if the hello got that far).
async fn accept(shared: &Shared, tcp: TcpStream) -> Result<Authenticated, String> {
    let (stream, certificate) = secure(shared, tcp).await?;
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read, HELLO_BYTES_MAX);
    let hello = match reader.next().await {
        Ok(Some(PeerFrame { frame: Some(Frame::Hello(hello)) })) => hello,
        Ok(Some(_)) => return Err("the first frame is not a hello".into()),
        Ok(None) => return Err("closed before the hello".into()),
        Err(e) => return Err(format!("no hello: {e}")),
    };
    let verdict = check_hello(shared, &hello, certificate.as_ref());
    let unknown_node = shared.peer_address(NodeId(hello.node_id)).is_none();
    let reply = HelloReply {
        node_id: shared.config.node_id.0,
        refused: verdict.as_ref().err().cloned().unwrap_or_default(),
        unknown_node: verdict.is_err() && unknown_node,
    };
    let reply = frame::encode_to_bytes(&PeerFrame { frame: Some(Frame::HelloReply(reply)) });
    write.write_all(&reply).await.map_err(|e| format!("hello reply: {e}"))?;
    write.flush().await.map_err(|e| format!("hello reply: {e}"))?;
    let speaker = verdict?;
    reader.set_frame_bytes_max(shared.config.frame_bytes_max);
    Ok((speaker, reader, write))
}

async fn secure(
    shared: &Shared,
    tcp: TcpStream,
) -> Result<(BoxStream, Option<CertificateDer<'static>>), String> {
    match &shared.security {
        Security::Tls(identity) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(identity.server.clone());
            let stream = acceptor.accept(tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
            let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
            let leaf = leaf.ok_or("no client certificate")?;
            Ok((Box::new(stream), Some(leaf)))
        }
        #[cfg(feature = "plain-tcp-for-benchmarks")]
        Security::PlainTcpForBenchmarks => Ok((Box::new(tcp), None)),
    }
}

/// The node the hello speaks for and its configured host, if every claim holds: same protocol
/// and cluster, meant for this node, from a configured peer whose configured host the client
/// certificate covers, or from a newer node announcing an address (`announced`). Under TLS a
/// certificate is required here too, whatever `secure` did.
fn check_hello(
    shared: &Shared,
    hello: &Hello,
    certificate: Option<&CertificateDer<'_>>,
) -> Result<Speaker, String> {
    let config = &shared.config;
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} (this node speaks {PROTOCOL_VERSION})",
            hello.protocol_version
        ));
    }
    if hello.cluster_id != config.cluster_id {
        return Err(format!(
            "cluster id {:?} is not this cluster's {:?}",
            hello.cluster_id, config.cluster_id
        ));
    }
    if hello.to_node_id != config.node_id.0 {
        return Err(format!(
            "meant for node {}, this is node {}",
            hello.to_node_id, config.node_id
        ));
    }
    let from = NodeId(hello.node_id);
    let (address, announced) = match shared.peer_address(from) {
        Some(address) => (address, false),
        None => (announced(shared, hello, certificate)?, true),
    };
    let tls = matches!(shared.security, Security::Tls(_));
    match certificate {
        Some(certificate) if !certificate_covers(certificate, &address.host) => {
            let whose = if announced { "announced by" } else { "configured for" };
            return Err(format!(
                "claims to be node {from}, but its certificate does not cover {}, the host \
                 {whose} node {from}",
                address.host
            ));
        }
        None if tls => return Err("no client certificate".into()),
        _ => {}
    }
    let host = address.host.clone();
    Ok(Speaker { id: from, host, announced: announced.then_some(address) })
}

/// The address an unknown dialer announced, if this node takes it on from that: its id is
/// newer than every id the host knows of (a member that joined while this node was down; an
/// older unknown id was removed), and its certificate may serve TLS, as every node's must (a
/// client-only certificate of the same CA cannot pose as a new node).
fn announced(
    shared: &Shared,
    hello: &Hello,
    certificate: Option<&CertificateDer<'_>>,
) -> Result<PeerAddress, String> {
    let from = hello.node_id;
    let me = shared.config.node_id;
    let unknown = || format!("node {from} is not a configured peer of node {me}");
    if !shared.is_newer_than_known(from) || hello.from_address.is_empty() {
        return Err(unknown());
    }
    let address: PeerAddress =
        hello.from_address.parse().map_err(|e| format!("{}: {e}", unknown()))?;
    if certificate.is_some_and(|c| !may_serve_tls(c)) {
        return Err(format!(
            "{}, and its certificate may not serve TLS (no serverAuth usage): a client \
             certificate cannot announce a node",
            unknown()
        ));
    }
    Ok(address)
}

/// Where a peer's snapshot transfer stands on one connection.
struct Transfer {
    id: u64,
    next_offset: u64,
    total_len: u64,
}

/// Reads frames until the peer closes (`Ok`) or sends something wrong (`Err`, why).
async fn read_frames(
    shared: &Shared,
    from: NodeId,
    mut reader: FrameReader<ReadHalf<BoxStream>>,
) -> Result<(), String> {
    let mut transfer: Option<Transfer> = None;
    loop {
        let frame = match reader.next().await {
            Ok(Some(PeerFrame { frame: Some(frame) })) => frame,
            Ok(Some(PeerFrame { frame: None })) => return Err("an empty frame".into()),
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let event = match frame {
            Frame::Message(message) => {
                let message = Message::try_from(message).map_err(|e| e.to_string())?;
                check_addressing(shared.config.node_id, from, &message)?;
                Event::Message(message)
            }
            Frame::SnapshotChunk(chunk) => Event::SnapshotChunk(check_chunk(
                shared.config.node_id,
                from,
                chunk,
                &mut transfer,
            )?),
            Frame::Hello(_) | Frame::HelloReply(_) => return Err("a second hello".into()),
        };
        bump(&shared.counters.messages_received, 1);
        if shared.events.send(event).await.is_err() {
            return Ok(()); // the node stopped listening for events
        }
    }
}

fn check_addressing(me: NodeId, from: NodeId, message: &Message) -> Result<(), String> {
    if message.from != from || message.to != me {
        return Err(format!(
            "a message from {} to {} on the connection of node {from} to node {me}",
            message.from, message.to
        ));
    }
    Ok(())
}

/// Checks that a chunk continues its transfer (or starts a new one at offset 0) and that the
/// last one carries an `InstallSnapshot` from the peer.
fn check_chunk(
    me: NodeId,
    from: NodeId,
    chunk: SnapshotChunk,
    transfer: &mut Option<Transfer>,
) -> Result<ReceivedChunk, String> {
    let continues = transfer.as_ref().filter(|t| t.id == chunk.transfer_id);
    let (expected_offset, total_len) = match continues {
        Some(t) => (t.next_offset, t.total_len),
        None => (0, chunk.total_len),
    };
    let len = chunk.data.len() as u64;
    let end = chunk.offset.checked_add(len).filter(|&end| end <= total_len);
    if chunk.offset != expected_offset || chunk.total_len != total_len || end.is_none() {
        return Err(format!(
            "snapshot chunk {} at {} (+{len} of {}) where {expected_offset} of {total_len} was due",
            chunk.transfer_id, chunk.offset, chunk.total_len
        ));
    }
    let last = end == Some(total_len);
    let install = match (last, chunk.install) {
        (true, Some(message)) => {
            let message = Message::try_from(message).map_err(|e| e.to_string())?;
            check_addressing(me, from, &message)?;
            if !matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                return Err("the last snapshot chunk carries no InstallSnapshot".into());
            }
            Some(message)
        }
        (false, None) => None,
        _ => return Err("InstallSnapshot must come with the last chunk, and only with it".into()),
    };
    *transfer = (!last).then_some(Transfer {
        id: chunk.transfer_id,
        next_offset: chunk.offset + len,
        total_len,
    });
    Ok(ReceivedChunk {
        from,
        transfer_id: chunk.transfer_id,
        offset: chunk.offset,
        total_len,
        data: chunk.data,
        install,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_proto::peer;
    use raft_core::{SnapshotMeta, Term};

    fn install() -> peer::RaftMessage {
        let snapshot =
            SnapshotMeta { index: raft_core::Index(5), term: Term(2), ..Default::default() };
        let message = Message {
            from: NodeId(2),
            to: NodeId(1),
            term: Term(2),
            body: MessageBody::InstallSnapshot { snapshot },
        };
        peer::RaftMessage::from(&message)
    }

    fn chunk(
        transfer_id: u64,
        offset: u64,
        len: usize,
        total_len: u64,
        last: bool,
    ) -> SnapshotChunk {
        SnapshotChunk {
            transfer_id,
            offset,
            total_len,
            data: vec![1; len].into(),
            install: last.then(install),
        }
    }

    /// Feeds `chunks` in order; the index of the first refused one, if any.
    fn first_refused(chunks: Vec<SnapshotChunk>) -> Option<usize> {
        let mut transfer = None;
        chunks
            .into_iter()
            .position(|c| check_chunk(NodeId(1), NodeId(2), c, &mut transfer).is_err())
    }

    #[test]
    fn chunks_in_order_pass_and_the_last_carries_the_message() {
        let mut transfer = None;
        let got = check_chunk(NodeId(1), NodeId(2), chunk(7, 0, 4, 10, false), &mut transfer);
        assert!(got.unwrap().install.is_none());
        check_chunk(NodeId(1), NodeId(2), chunk(7, 4, 4, 10, false), &mut transfer).unwrap();
        let last = check_chunk(NodeId(1), NodeId(2), chunk(7, 8, 2, 10, true), &mut transfer);
        assert!(last.unwrap().install.is_some());
        assert_eq!(first_refused(vec![chunk(1, 0, 0, 0, true)]), None, "empty data: one chunk");
        // A new transfer may start over at 0, abandoning the old one.
        assert_eq!(first_refused(vec![chunk(1, 0, 4, 10, false), chunk(2, 0, 10, 10, true)]), None);
    }

    #[test]
    fn gaps_overlaps_and_misplaced_messages_are_refused() {
        let cases = [
            (vec![chunk(1, 4, 4, 10, false)], 0, "a transfer starting past 0"),
            (vec![chunk(1, 0, 4, 10, false), chunk(1, 5, 4, 10, false)], 1, "a gap"),
            (vec![chunk(1, 0, 4, 10, false), chunk(1, 2, 4, 10, false)], 1, "an overlap"),
            (vec![chunk(1, 0, 4, 10, false), chunk(1, 4, 4, 12, false)], 1, "another total"),
            (vec![chunk(1, 0, 11, 10, true)], 0, "past the total"),
            (vec![chunk(1, 0, 4, 10, true)], 0, "the message before the end"),
            (vec![chunk(1, 0, 10, 10, false)], 0, "the end without the message"),
            (vec![chunk(1, u64::MAX, 4, u64::MAX, false)], 0, "an offset overflowing"),
        ];
        for (chunks, refused, case) in cases {
            assert_eq!(first_refused(chunks), Some(refused), "{case}");
        }
        let mut forged = chunk(1, 0, 1, 1, true);
        forged.install.as_mut().unwrap().from = 3;
        assert_eq!(first_refused(vec![forged]), Some(0), "an install from another node");
    }
}
