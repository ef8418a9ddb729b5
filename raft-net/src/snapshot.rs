//! Sending a snapshot: its data is read chunk by chunk (on the blocking pool) and queued in
//! the peer's chunk lane, which holds at most two chunks, so memory stays bounded and
//! heartbeats keep passing between chunks.

use crate::frame;
use crate::queue::Refused;
use crate::transport::{Event, Peer, Shared, SnapshotSource};
use kv_proto::peer::{self, peer_frame::Frame, PeerFrame, SnapshotChunk};
use raft_core::Message;
use std::sync::Arc;

pub(crate) async fn send(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    transfer_id: u64,
    install: Message,
    data: Box<dyn SnapshotSource>,
) {
    let to = install.to;
    let result = send_chunks(&shared, &peer, transfer_id, &install, data).await;
    peer.sending_snapshot.store(false, std::sync::atomic::Ordering::Release);
    if let Err(reason) = &result {
        tracing::warn!(node = %shared.config.node_id, peer = %to, "snapshot transfer failed: {reason}");
    }
    let event = Event::SnapshotSent { to, ok: result.is_ok() };
    tokio::select! {
        () = shared.shutdown.cancelled() => {}
        _ = shared.events.send(event) => {}
    }
}

async fn send_chunks(
    shared: &Shared,
    peer: &Peer,
    transfer_id: u64,
    install: &Message,
    mut data: Box<dyn SnapshotSource>,
) -> Result<(), String> {
    let epoch = peer.queue.epoch();
    let total_len = data.len();
    let chunk_bytes = shared.config.snapshot_chunk_bytes.max(1) as u64;
    let mut offset = 0;
    loop {
        let len = chunk_bytes.min(total_len - offset) as usize;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            let result = data.read_at(offset, &mut buf);
            (data, result.map(|()| buf))
        });
        let (returned, bytes) = read.await.map_err(|e| format!("reading the snapshot: {e}"))?;
        data = returned;
        let bytes = bytes.map_err(|e| format!("reading the snapshot at {offset}: {e}"))?;
        let last = offset + len as u64 == total_len;
        let chunk = SnapshotChunk {
            transfer_id,
            offset,
            total_len,
            data: bytes.into(),
            install: last.then(|| peer::RaftMessage::from(install)),
        };
        let frame = frame::encode_to_bytes(&PeerFrame { frame: Some(Frame::SnapshotChunk(chunk)) });
        let lost = || "the connection was lost or the transport shut down".to_string();
        // The transfer succeeded once its last chunk (with the InstallSnapshot) is flushed.
        let (written, flushed) = if last {
            let (told, flushed) = tokio::sync::oneshot::channel();
            (Some(told), Some(flushed))
        } else {
            (None, None)
        };
        peer.queue.push_chunk(frame, epoch, written).await.map_err(|refused| match refused {
            Refused::Reset => lost(),
            Refused::Full { .. } => "the chunk lane is full".to_string(),
        })?;
        if let Some(flushed) = flushed {
            return flushed.await.map_err(|_| lost());
        }
        offset += len as u64;
    }
}
