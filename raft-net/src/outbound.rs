//! The writer of one peer: dials it, says hello, then writes whatever is queued, coalescing
//! every queued frame into one flush. A lost connection drops what was queued and the batch
//! being written (the peer is reported unreachable), then the writer redials with backoff.

use crate::config::Backoff;
use crate::frame::{self, FrameReader};
use crate::queue::Batch;
use crate::transport::{bump, lock, Event, Peer, Security, Shared};
use crate::{BoxStream, HELLO_BYTES_MAX, PROTOCOL_VERSION};
use kv_proto::peer::{peer_frame::Frame, Hello, PeerFrame};
use rustls_pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Bytes buffered before a write reaches the socket: many small frames make one TLS record
/// and one syscall.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

type Connection = (FrameReader<ReadHalf<BoxStream>>, WriteHalf<BoxStream>);

/// Runs until the peer is removed or the transport shuts down.
pub(crate) async fn run(shared: Arc<Shared>, peer: Arc<Peer>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    loop {
        let dialled = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            dialled = dial(&shared, &peer) => dialled,
        };
        if !is_current(&shared, &peer) {
            return; // removed or replaced while dialling: the new writer takes over
        }
        let (reason, lost) = match dialled {
            Ok(connection) => {
                backoff.reset();
                *lock(&peer.last_error) = None;
                tracing::debug!(node = %config.node_id, peer = %peer.id, "connected");
                pump(&shared, &peer, connection).await
            }
            Err(reason) => {
                bump(&shared.counters.dials_failed, 1);
                (reason, 0)
            }
        };
        if shared.shutdown.is_cancelled() || !is_current(&shared, &peer) {
            return;
        }
        let changed = lock(&peer.last_error).as_deref() != Some(reason.as_str());
        if changed {
            tracing::warn!(node = %config.node_id, peer = %peer.id, "peer {}: {reason}", peer.address);
        }
        *lock(&peer.last_error) = Some(reason);
        let dropped = lost + peer.queue.clear();
        if dropped > 0 {
            bump(&shared.counters.messages_dropped, dropped as u64);
            let _ = shared.events.try_send(Event::Unreachable(peer.id));
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Whether `peer` is still the configured peer of its id (not removed or replaced).
fn is_current(shared: &Shared, peer: &Arc<Peer>) -> bool {
    lock(&shared.peers).get(&peer.id).is_some_and(|current| Arc::ptr_eq(current, peer))
}

async fn resolve(shared: &Shared, peer: &Peer) -> Result<SocketAddr, String> {
    let host = &peer.address.host;
    if let Some(ip) = shared.config.resolve.get(host) {
        return Ok(SocketAddr::new(*ip, peer.address.port));
    }
    let mut addresses = tokio::net::lookup_host((host.as_str(), peer.address.port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addresses.next().ok_or_else(|| format!("{host} resolves to no address"))
}

/// Connects, secures and says hello, within the handshake timeout.
async fn dial(shared: &Shared, peer: &Peer) -> Result<Connection, String> {
    let handshake = async {
        let address = resolve(shared, peer).await?;
        let tcp = connect_from(shared.config.source, address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("connect: {e}"))?;
        let stream = secure(shared, peer, tcp).await?;
        hello(shared, peer, stream).await
    };
    tokio::time::timeout(shared.config.handshake_timeout, handshake)
        .await
        .map_err(|_| "the handshake timed out".to_string())?
}

/// A TCP connection to `address`, from `source` if given.
async fn connect_from(source: Option<IpAddr>, address: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect(address).await };
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(address).await
}

async fn secure(shared: &Shared, peer: &Peer, tcp: TcpStream) -> Result<BoxStream, String> {
    match &shared.security {
        Security::Tls(identity) => {
            let name = ServerName::try_from(peer.address.host.clone())
                .map_err(|e| format!("{} is not a valid server name: {e}", peer.address.host))?;
            let connector = tokio_rustls::TlsConnector::from(identity.client.clone());
            let stream =
                connector.connect(name, tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
            Ok(Box::new(stream))
        }
        #[cfg(feature = "plain-tcp-for-benchmarks")]
        Security::PlainTcpForBenchmarks => Ok(Box::new(tcp)),
    }
}

async fn hello(shared: &Shared, peer: &Peer, stream: BoxStream) -> Result<Connection, String> {
    let (read, mut write) = tokio::io::split(stream);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: shared.config.cluster_id.clone(),
        node_id: shared.config.node_id.0,
        to_node_id: peer.id.0,
        from_address: shared.config.advertise.as_ref().map(|a| a.to_string()).unwrap_or_default(),
    };
    let frame = frame::encode_to_bytes(&PeerFrame { frame: Some(Frame::Hello(hello)) });
    write.write_all(&frame).await.map_err(|e| format!("hello: {e}"))?;
    write.flush().await.map_err(|e| format!("hello: {e}"))?;
    let mut reader = FrameReader::new(read, HELLO_BYTES_MAX);
    let reply = match reader.next().await {
        Ok(Some(PeerFrame { frame: Some(Frame::HelloReply(reply)) })) => reply,
        Ok(Some(_)) => return Err("the peer answered the hello with another frame".into()),
        Ok(None) => return Err("the peer closed the connection at the hello".into()),
        Err(e) => return Err(format!("hello reply: {e}")),
    };
    if reply.unknown_node {
        let _ = shared.events.try_send(Event::NotAPeerOf(peer.id));
    }
    if !reply.refused.is_empty() {
        return Err(format!("the peer refused us: {}", reply.refused));
    }
    if reply.node_id != peer.id.0 {
        return Err(format!("the peer at this address is node {}, not {}", reply.node_id, peer.id));
    }
    Ok((reader, write))
}

/// Writes queued frames until the connection fails; returns why it ended and how many
/// messages taken from the queue were lost with it (a batch whose write failed: some of it
/// may have arrived, none of it surely did).
async fn pump(shared: &Shared, peer: &Peer, connection: Connection) -> (String, usize) {
    let (mut reader, write) = connection;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, write);
    loop {
        let mut batch = Batch::default();
        tokio::select! {
            () = shared.shutdown.cancelled() => return ("shut down".into(), 0),
            more = peer.queue.take(&mut batch) => if !more {
                return ("the peer was removed".into(), 0);
            },
            // The listener never writes after its hello reply: anything is a close.
            read = reader.next() => return match read {
                Ok(_) => ("the peer closed the connection".into(), 0),
                Err(e) => (format!("the connection failed: {e}"), 0),
            },
        }
        let written = write_batch(&mut writer, &batch.frames, shared.config.write_timeout).await;
        peer.queue.release(batch.message_bytes);
        if let Err(reason) = written {
            return (reason, batch.frames.len());
        }
        bump(&shared.counters.messages_sent, batch.frames.len() as u64);
        bump(&shared.counters.writes, 1);
        for written in batch.written {
            let _ = written.send(());
        }
    }
}

/// The most bytes handed to one write call: each must finish within the write timeout, so a
/// slow link that still makes progress is never cut, and a stalled one is.
const WRITE_SLICE_BYTES: usize = 64 * 1024;

/// Writes `frames` and flushes, each write call bounded by `timeout`.
async fn write_batch(
    writer: &mut BufWriter<WriteHalf<BoxStream>>,
    frames: &[bytes::Bytes],
    timeout: std::time::Duration,
) -> Result<(), String> {
    let stalled = |_| "a write made no progress within the write timeout".to_string();
    for frame in frames {
        for slice in frame.chunks(WRITE_SLICE_BYTES) {
            tokio::time::timeout(timeout, writer.write_all(slice))
                .await
                .map_err(stalled)?
                .map_err(|e| format!("write failed: {e}"))?;
        }
    }
    tokio::time::timeout(timeout, writer.flush())
        .await
        .map_err(stalled)?
        .map_err(|e| format!("write failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections come from the configured source address (127.0.0.0/8 is all loopback on
    /// Linux), or from the system's choice without one.
    #[tokio::test]
    async fn connections_come_from_the_configured_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        for (source, seen) in [(Some([127, 0, 0, 7]), [127, 0, 0, 7]), (None, [127, 0, 0, 1])] {
            let _tcp = connect_from(source.map(IpAddr::from), address).await.unwrap();
            let (_, from) = listener.accept().await.unwrap();
            assert_eq!(from.ip(), IpAddr::from(seen));
        }
    }
}
