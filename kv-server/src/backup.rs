//! `SnapshotSave`: a consistent copy of the whole key space streamed to a client, for
//! backups (`kvctl snapshot save`; docs/operations.md#backup-and-restore).
//!
//! The state comes from a linearizable read, so the copy holds every write acknowledged
//! before the call; it is an O(1) clone of the persistent map, written out in kv-fsm's
//! snapshot format (checksummed) on a blocking thread while the node goes on applying. The
//! bytes go out in chunks through a small channel: a slow client holds back the writer, not
//! memory. At most [`BACKUPS_MAX`] run at once (each holds a thread and a copy of the key
//! space; more are answered RESOURCE_EXHAUSTED), and a client that leaves a chunk unread for
//! 30 s is dropped.

use kv_fsm::KvState;
use kv_proto::kv::SnapshotChunk;
use std::io::{self, Write};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::Stream;
use tonic::Status;

/// Bytes per chunk.
const CHUNK_BYTES: usize = 64 << 10;

/// The stream of a snapshot's chunks.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

/// Backups streamed at once, at most: each holds a thread and a copy of the key space.
pub const BACKUPS_MAX: usize = 2;

/// How long a client may leave a chunk unread before its backup is abandoned.
const CHUNK_PATIENCE: Duration = Duration::from_secs(30);

/// Streams `state` in the snapshot format; `permit` (one of [`BACKUPS_MAX`]) is held until
/// the stream ends.
pub fn stream(state: KvState, permit: OwnedSemaphorePermit) -> SnapshotStream {
    let (sender, receiver) = mpsc::channel(4);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = Chunks { sender, buffer: Vec::with_capacity(CHUNK_BYTES), runtime };
        let written = state.write_snapshot(&mut out).and_then(|_| out.send_buffer());
        if let Err(error) = written {
            // A client that went away is not an error; anything else is told to the client.
            if error.kind() != io::ErrorKind::BrokenPipe {
                let failed = Status::internal(format!("writing the snapshot: {error}"));
                let _ = out.sender.try_send(Err(failed));
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// A writer that sends what it is given as chunks.
struct Chunks {
    sender: mpsc::Sender<Result<SnapshotChunk, Status>>,
    buffer: Vec<u8>,
    runtime: tokio::runtime::Handle,
}

impl Chunks {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        let chunk = SnapshotChunk { data: data.into() };
        // A blocking thread may wait on the runtime; a client that stops reading is dropped.
        let sent = self.runtime.block_on(self.sender.send_timeout(Ok(chunk), CHUNK_PATIENCE));
        sent.map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the client went away or stalled")
        })
    }
}

impl Write for Chunks {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
