//! One peer's send queue: encoded frames waiting for the connection's writer.
//!
//! Two lanes. Messages (votes, appends, heartbeats) are bounded by bytes: a push beyond the
//! bound is refused, so a dead or stuck peer costs at most `bytes_max`. Snapshot chunks wait
//! in their own lane of at most [`CHUNKS_MAX`]: the snapshot sender waits for room, so a
//! snapshot is never held in memory whole. The writer takes every queued message and then at
//! most one chunk per round, so a heartbeat waits behind at most one chunk, never behind a
//! whole snapshot.
//!
//! The lock is a `std` mutex held only to move buffers in or out, never across an await.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{oneshot, Notify};

/// Told once a chunk was written and flushed to the connection (dropped unsent otherwise).
pub type Written = oneshot::Sender<()>;

/// What the writer takes in one round.
#[derive(Debug, Default)]
pub struct Batch {
    /// The frames, in order.
    pub frames: Vec<Bytes>,
    /// Message bytes among them: still counted against the bound until
    /// [`PeerQueue::release`], so that a batch being written counts too.
    pub message_bytes: usize,
    /// To tell once the frames are flushed.
    pub written: Vec<Written>,
}

/// Snapshot chunks queued per peer at most.
pub const CHUNKS_MAX: usize = 2;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The message lane is full. `first`: the first refusal since the writer last took
    /// from the queue (so the peer is reported unreachable once per episode, not per message).
    Full {
        /// Whether this is the first refusal of the episode.
        first: bool,
    },
    /// The queue was cleared since the sender began (a snapshot's connection was lost), or
    /// the transport is shutting down.
    Reset,
}

#[derive(Default)]
struct Lanes {
    messages: VecDeque<Bytes>,
    /// Queued message bytes, plus those taken by the writer and not yet released.
    message_bytes: usize,
    chunks: VecDeque<(Bytes, Option<Written>)>,
    /// A push was refused since the writer last took.
    refused_since_take: bool,
    /// Counts the clears: a snapshot started in one epoch must not continue in the next.
    epoch: u64,
    closed: bool,
}

/// The queue of one peer.
pub struct PeerQueue {
    lanes: Mutex<Lanes>,
    bytes_max: usize,
    /// Woken when something is queued (for the writer).
    queued: Notify,
    /// Woken when a chunk leaves or the queue is cleared (for a snapshot sender).
    room: Notify,
}

impl PeerQueue {
    /// An empty queue holding at most `bytes_max` bytes of messages.
    pub fn new(bytes_max: usize) -> PeerQueue {
        PeerQueue { lanes: Mutex::default(), bytes_max, queued: Notify::new(), room: Notify::new() }
    }

    fn lanes(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a message frame, unless that would exceed the byte bound. A frame larger
    /// than the whole bound is still taken when nothing is queued or being written, so that no message is
    /// refused forever.
    pub fn push_message(&self, frame: Bytes) -> Result<(), Refused> {
        let mut lanes = self.lanes();
        if lanes.closed {
            return Err(Refused::Reset);
        }
        let over = lanes.message_bytes + frame.len() > self.bytes_max;
        if over && lanes.message_bytes > 0 {
            let first = !std::mem::replace(&mut lanes.refused_since_take, true);
            return Err(Refused::Full { first });
        }
        lanes.message_bytes += frame.len();
        lanes.messages.push_back(frame);
        drop(lanes);
        self.queued.notify_one();
        Ok(())
    }

    /// The current epoch, for [`PeerQueue::push_chunk`].
    pub fn epoch(&self) -> u64 {
        self.lanes().epoch
    }

    /// Queues a snapshot chunk once there is room, unless the queue was cleared since
    /// `epoch` (the transfer is then lost and must start over). `written` is told once the
    /// chunk is flushed to the connection.
    pub async fn push_chunk(
        &self,
        frame: Bytes,
        epoch: u64,
        written: Option<Written>,
    ) -> Result<(), Refused> {
        let mut item = Some((frame, written));
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut lanes = self.lanes();
                if lanes.closed || lanes.epoch != epoch {
                    return Err(Refused::Reset);
                }
                if lanes.chunks.len() < CHUNKS_MAX {
                    lanes.chunks.push_back(item.take().expect("pushed once"));
                    drop(lanes);
                    self.queued.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Waits until something is queued, then moves every queued message and at most one
    /// chunk into `batch`, in that order. Returns `false` once the queue is closed.
    pub async fn take(&self, batch: &mut Batch) -> bool {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            {
                let mut lanes = self.lanes();
                if lanes.closed {
                    return false;
                }
                for message in lanes.messages.drain(..) {
                    batch.message_bytes += message.len();
                    batch.frames.push(message);
                }
                let chunk = lanes.chunks.pop_front();
                lanes.refused_since_take = false;
                let took_chunk = chunk.is_some();
                if let Some((frame, written)) = chunk {
                    batch.frames.push(frame);
                    batch.written.extend(written);
                }
                if !batch.frames.is_empty() {
                    drop(lanes);
                    if took_chunk {
                        self.room.notify_waiters();
                    }
                    return true;
                }
            }
            queued.await;
        }
    }

    /// The writer is done with `message_bytes` of a batch (written, or lost with the
    /// connection): they no longer count against the bound.
    pub fn release(&self, message_bytes: usize) {
        let mut lanes = self.lanes();
        lanes.message_bytes = lanes.message_bytes.saturating_sub(message_bytes);
    }

    /// Drops everything queued (the connection it was meant for is gone) and starts a new
    /// epoch. Returns how many messages were dropped.
    pub fn clear(&self) -> usize {
        let mut lanes = self.lanes();
        let dropped = lanes.messages.len() + lanes.chunks.len();
        lanes.messages.clear();
        lanes.chunks.clear();
        lanes.message_bytes = 0;
        lanes.refused_since_take = false;
        lanes.epoch += 1;
        drop(lanes);
        self.room.notify_waiters();
        dropped
    }

    /// Refuses every later push and ends every wait.
    pub fn close(&self) {
        self.lanes().closed = true;
        self.queued.notify_waiters();
        self.queued.notify_one();
        self.room.notify_waiters();
    }

    /// Bytes of messages queued now, or taken by the writer and not yet released.
    pub fn message_bytes(&self) -> usize {
        self.lanes().message_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![7; len])
    }

    #[tokio::test]
    async fn messages_are_bounded_by_bytes() {
        let queue = PeerQueue::new(100);
        queue.push_message(frame(60)).unwrap();
        assert_eq!(queue.push_message(frame(50)), Err(Refused::Full { first: true }));
        assert_eq!(queue.push_message(frame(50)), Err(Refused::Full { first: false }));
        queue.push_message(frame(40)).unwrap();
        let mut batch = Batch::default();
        assert!(queue.take(&mut batch).await);
        assert_eq!(batch.frames.iter().map(Bytes::len).collect::<Vec<_>>(), vec![60, 40]);
        // Taken but not yet written: still counted, so a stuck write bounds memory too.
        assert_eq!(queue.message_bytes(), 100);
        assert_eq!(queue.push_message(frame(1)), Err(Refused::Full { first: true }));
        queue.release(batch.message_bytes);
        assert_eq!(queue.message_bytes(), 0);
        // A message larger than the bound still goes alone into an empty queue.
        queue.push_message(frame(500)).unwrap();
        assert_eq!(
            queue.push_message(frame(1)),
            Err(Refused::Full { first: false }),
            "the same episode: no take since"
        );
    }

    #[tokio::test]
    async fn a_round_takes_every_message_and_one_chunk() {
        let queue = PeerQueue::new(1000);
        let epoch = queue.epoch();
        let (told, written) = oneshot::channel();
        queue.push_chunk(frame(1), epoch, None).await.unwrap();
        queue.push_chunk(frame(2), epoch, Some(told)).await.unwrap();
        queue.push_message(frame(10)).unwrap();
        queue.push_message(frame(11)).unwrap();
        let mut batch = Batch::default();
        queue.take(&mut batch).await;
        assert_eq!(batch.frames.iter().map(Bytes::len).collect::<Vec<_>>(), vec![10, 11, 1]);
        assert!(batch.written.is_empty());
        let mut batch = Batch::default();
        queue.take(&mut batch).await;
        assert_eq!(batch.frames.iter().map(Bytes::len).collect::<Vec<_>>(), vec![2]);
        batch.written.pop().unwrap().send(()).unwrap();
        written.await.unwrap();
    }

    #[tokio::test]
    async fn a_chunk_waits_for_room_and_a_clear_ends_its_transfer() {
        let queue = std::sync::Arc::new(PeerQueue::new(1000));
        let epoch = queue.epoch();
        for _ in 0..CHUNKS_MAX {
            queue.push_chunk(frame(1), epoch, None).await.unwrap();
        }
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.push_chunk(frame(1), epoch, None).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room: the chunk waits");
        assert_eq!(queue.clear(), CHUNKS_MAX);
        assert_eq!(waiting.await.unwrap(), Err(Refused::Reset));
        let new_epoch = queue.epoch();
        queue.push_chunk(frame(1), new_epoch, None).await.unwrap();
    }

    #[tokio::test]
    async fn close_ends_the_writer_wait() {
        let queue = std::sync::Arc::new(PeerQueue::new(10));
        let writer = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.take(&mut Batch::default()).await })
        };
        tokio::task::yield_now().await;
        queue.close();
        assert!(!writer.await.unwrap());
        assert_eq!(queue.push_message(frame(1)), Err(Refused::Reset));
    }
}
