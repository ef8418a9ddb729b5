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
use tokio::sync::Notify;

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
    message_bytes: usize,
    chunks: VecDeque<Bytes>,
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
    /// than the whole bound is still taken into an empty queue, so that no message is
    /// refused forever.
    pub fn push_message(&self, frame: Bytes) -> Result<(), Refused> {
        let mut lanes = self.lanes();
        if lanes.closed {
            return Err(Refused::Reset);
        }
        let over = lanes.message_bytes + frame.len() > self.bytes_max;
        if over && !lanes.messages.is_empty() {
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
    /// `epoch` (the transfer is then lost and must start over).
    pub async fn push_chunk(&self, frame: Bytes, epoch: u64) -> Result<(), Refused> {
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
                    lanes.chunks.push_back(frame);
                    drop(lanes);
                    self.queued.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Waits until something is queued, then moves every queued message and at most one
    /// chunk into `out`, in that order. Returns `false` once the queue is closed.
    pub async fn take(&self, out: &mut Vec<Bytes>) -> bool {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            {
                let mut lanes = self.lanes();
                if lanes.closed {
                    return false;
                }
                let took_chunk = if let Some(chunk) = lanes.chunks.pop_front() {
                    out.extend(lanes.messages.drain(..));
                    out.push(chunk);
                    true
                } else {
                    out.extend(lanes.messages.drain(..));
                    false
                };
                lanes.message_bytes = 0;
                lanes.refused_since_take = false;
                if !out.is_empty() {
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

    /// Drops everything queued (the connection it was meant for is gone) and starts a new
    /// epoch. Returns how many messages were dropped.
    pub fn clear(&self) -> usize {
        let mut lanes = self.lanes();
        let dropped = lanes.messages.len() + lanes.chunks.len();
        lanes.messages.clear();
        lanes.chunks.clear();
        lanes.message_bytes = 0;
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

    /// Bytes of messages queued now.
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
        let mut out = Vec::new();
        assert!(queue.take(&mut out).await);
        assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), vec![60, 40]);
        assert_eq!(queue.message_bytes(), 0);
        // A message larger than the bound still goes alone into an empty queue.
        queue.push_message(frame(500)).unwrap();
        assert_eq!(queue.push_message(frame(1)), Err(Refused::Full { first: true }));
    }

    #[tokio::test]
    async fn a_round_takes_every_message_and_one_chunk() {
        let queue = PeerQueue::new(1000);
        let epoch = queue.epoch();
        queue.push_chunk(frame(1), epoch).await.unwrap();
        queue.push_chunk(frame(2), epoch).await.unwrap();
        queue.push_message(frame(10)).unwrap();
        queue.push_message(frame(11)).unwrap();
        let mut out = Vec::new();
        queue.take(&mut out).await;
        assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), vec![10, 11, 1]);
        out.clear();
        queue.take(&mut out).await;
        assert_eq!(out.iter().map(Bytes::len).collect::<Vec<_>>(), vec![2]);
    }

    #[tokio::test]
    async fn a_chunk_waits_for_room_and_a_clear_ends_its_transfer() {
        let queue = std::sync::Arc::new(PeerQueue::new(1000));
        let epoch = queue.epoch();
        for _ in 0..CHUNKS_MAX {
            queue.push_chunk(frame(1), epoch).await.unwrap();
        }
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.push_chunk(frame(1), epoch).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room: the chunk waits");
        assert_eq!(queue.clear(), CHUNKS_MAX);
        assert_eq!(waiting.await.unwrap(), Err(Refused::Reset));
        let new_epoch = queue.epoch();
        queue.push_chunk(frame(1), new_epoch).await.unwrap();
    }

    #[tokio::test]
    async fn close_ends_the_writer_wait() {
        let queue = std::sync::Arc::new(PeerQueue::new(10));
        let writer = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.take(&mut Vec::new()).await })
        };
        tokio::task::yield_now().await;
        queue.close();
        assert!(!writer.await.unwrap());
        assert_eq!(queue.push_message(frame(1)), Err(Refused::Reset));
    }
}
