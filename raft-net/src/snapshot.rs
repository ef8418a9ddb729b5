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
    if let Err(reason) = &result {
        tracing::warn!(node = %shared.config.node_id, peer = %to, "snapshot transfer failed: {reason}");
    }
    let _ = shared.events.send(Event::SnapshotSent { to, ok: result.is_ok() }).await;
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
        peer.queue.push_chunk(frame, epoch).await.map_err(|refused| match refused {
            Refused::Reset => "the connection was lost or the transport shut down".to_string(),
            Refused::Full { .. } => "the chunk lane is full".to_string(),
        })?;
        if last {
            return Ok(());
        }
        offset += len as u64;
    }
}
