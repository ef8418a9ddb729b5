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
                // Waited for like a chunk: a full queue must not drop the error and end the
                // stream as if it were whole.
                let told = out.sender.send_timeout(Err(failed), CHUNK_PATIENCE);
                let _ = out.runtime.block_on(told);
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
    /// Sends what is buffered, in chunks of at most [`CHUNK_BYTES`] (a single write may
    /// bring far more: a large value, or a buffered writer passing a big write through).
    fn send_buffer(&mut self) -> io::Result<()> {
        let buffered = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        let buffered = bytes::Bytes::from(buffered);
        for start in (0..buffered.len()).step_by(CHUNK_BYTES) {
            let end = (start + CHUNK_BYTES).min(buffered.len());
            self.send_chunk(buffered.slice(start..end))?;
        }
        Ok(())
    }

    fn send_chunk(&mut self, data: bytes::Bytes) -> io::Result<()> {
        let chunk = SnapshotChunk { data };
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

#[cfg(test)]
mod tests {
    use super::*;
    use kv_proto::kv::{command::Op, Command, Put};
    use tokio_stream::StreamExt;

    /// A state holding one value of `value_bytes` bytes.
    fn state_with_a_value_of(value_bytes: usize) -> KvState {
        let mut state = KvState::new();
        let put = Op::Put(Put { key: b"big".to_vec().into(), value: vec![7; value_bytes].into() });
        let command = Command { op: Some(put), ..Command::default() };
        state.apply(1, &kv_fsm::encode_command(&command)).unwrap();
        state
    }

    /// Every chunk stays within [`CHUNK_BYTES`], even for a value many times that size, and
    /// the chunks put together are the state's snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_stay_within_their_bound_whatever_the_values() {
        let state = state_with_a_value_of(20 * CHUNK_BYTES);
        let permit =
            std::sync::Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let mut chunks = stream(state.clone(), permit);
        let mut assembled = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let data = chunk.unwrap().data;
            assert!(data.len() <= CHUNK_BYTES, "a chunk of {} bytes", data.len());
            assembled.extend_from_slice(&data);
        }
        let read = KvState::read_snapshot(assembled.as_slice()).unwrap();
        assert_eq!(read.get(b"big").map(|s| s.value.len()), Some(20 * CHUNK_BYTES));
    }
}
