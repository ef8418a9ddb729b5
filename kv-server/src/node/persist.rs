//! Persisting Readies beside the loop (step 2 of the Ready contract, docs/engine.md).
//!
//! The loop writes a Ready's entries into the log (into the page cache: microseconds) and
//! hands the `fdatasync` (hundreds of microseconds) to a thread of its own, `wal-sync`. While
//! the disk syncs, the loop goes on: it takes client writes and peer messages, sends appends,
//! counts acknowledgements, applies what is committed and answers clients. Readies that come
//! meanwhile are merged into one batch, written as soon as the sync in flight is done: so one
//! `fdatasync` serves everything that arrived during the one before (group commit).
//!
//! The rules kept:
//! - Persist and acknowledge in order: a Ready's `messages_after_persist` leave, and
//!   `on_persisted` is called, only once its batch and every earlier one are durable.
//! - One batch at a time: the next batch is written only once the one before it is durable
//!   (`Wal::write_unsynced` refuses otherwise), so a power cut can tear only the last batch.
//! - Apply only what is durable here: the engine hands out committed entries only up to
//!   what `on_persisted` reported.

use super::{slow, Core};
use crate::metrics::observe;
use raft_core::{Entry, HardState, Message, ReadyNumber};
use raft_log::wal::{PendingSync, WalError};
use std::collections::VecDeque;
use std::time::Instant;
use tokio::sync::mpsc;

/// The outcome of one sync, as the sync thread reports it.
pub(super) type Synced = Result<(), WalError>;

/// Readies taken from the engine and not yet durable.
#[derive(Default)]
pub(super) struct Persisting {
    /// Readies waiting for the sync in flight to end, merged into batches written in order:
    /// usually one batch, a new one only where a Ready replaces queued entries.
    queued: VecDeque<Batch>,
    /// The batch written and being synced.
    syncing: Option<Syncing>,
}

/// Readies merged into one write.
///
/// Invariant: every entry a message of `after_persist` acknowledges is in `entries` or
/// already durable. So a Ready whose entries would replace some of `entries` (a new
/// leader's conflicting suffix) is never merged in: the answers of the Readies before it
/// acknowledge the replaced entries, to their own term's leader, and must leave only once
/// those entries are durable (docs/engine.md, "Persisting Readies beside the loop").
struct Batch {
    /// The newest Ready merged in: acknowledging it acknowledges the earlier ones.
    number: ReadyNumber,
    /// The newest hard state given (each replaces the one before: a vote or term given up
    /// for a later one is covered by it, since the node never goes back to an older term).
    hard_state: Option<HardState>,
    /// The entries to append, in order, each continuing the one before.
    entries: Vec<Entry>,
    /// Their messages to send once durable, in order.
    after_persist: Vec<Message>,
}

/// A batch written, waiting for its `fdatasync`.
struct Syncing {
    number: ReadyNumber,
    after_persist: Vec<Message>,
    entries: usize,
    started: Instant,
}

impl Persisting {
    /// Whether a batch is being synced (the log takes no other change meanwhile).
    pub(super) fn is_syncing(&self) -> bool {
        self.syncing.is_some()
    }

    /// Adds a Ready's share of persisting to the last queued batch, or to a new batch
    /// behind it if its entries would replace some of that batch's.
    fn queue(
        &mut self,
        number: ReadyNumber,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        after_persist: Vec<Message>,
    ) {
        let replaces_queued = |batch: &Batch| match (entries.first(), batch.entries.last()) {
            (Some(first), Some(last)) => first.index <= last.index,
            _ => false,
        };
        if self.queued.back().is_none_or(replaces_queued) {
            self.queued.push_back(Batch {
                number,
                hard_state: None,
                entries: Vec::new(),
                after_persist: Vec::new(),
            });
        }
        let batch = self.queued.back_mut().expect("a batch was just made if none was queued");
        batch.number = number;
        batch.hard_state = hard_state.or(batch.hard_state);
        batch.entries.extend(entries);
        batch.after_persist.extend(after_persist);
    }

    /// The next batch to write, unless a sync is in flight: batches reach the log one at a
    /// time, each once the one before it is durable.
    fn next_to_write(&mut self) -> Option<Batch> {
        if self.is_syncing() {
            return None;
        }
        self.queued.pop_front()
    }

    /// `batch` was written and its sync handed to the sync thread.
    fn start_sync(&mut self, batch: Batch) {
        self.syncing = Some(Syncing {
            number: batch.number,
            after_persist: batch.after_persist,
            entries: batch.entries.len(),
            started: Instant::now(),
        });
    }

    /// The batch whose sync just ended, with the answers that may leave now.
    fn synced(&mut self) -> Option<Syncing> {
        self.syncing.take()
    }
}

/// Starts the thread that runs the log's syncs, one at a time, in the order given, and
/// reports each outcome to `done`. It ends when the loop drops the returned sender.
pub(super) fn start_sync_thread(
    done: mpsc::UnboundedSender<Synced>,
) -> std::io::Result<std::sync::mpsc::Sender<PendingSync>> {
    let (jobs, receiver) = std::sync::mpsc::channel::<PendingSync>();
    std::thread::Builder::new().name("wal-sync".into()).spawn(move || {
        for pending in receiver {
            if done.send(pending.sync()).is_err() {
                return; // the loop is gone
            }
        }
    })?;
    Ok(jobs)
}

impl Core {
    /// Step 2 and 3 of the Ready contract for one Ready: its hard state and entries join
    /// the next batch, written at once unless a sync is in flight.
    pub(super) fn persist(
        &mut self,
        number: ReadyNumber,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        after_persist: Vec<Message>,
    ) -> Result<(), String> {
        self.persisting.queue(number, hard_state, entries, after_persist);
        self.write_queued()
    }

    /// Writes the queued batches in order until one needs a sync, unless a sync is in
    /// flight, and hands that sync to the sync thread. A batch with nothing to sync (no
    /// entries) is acknowledged at once.
    fn write_queued(&mut self) -> Result<(), String> {
        while let Some(batch) = self.persisting.next_to_write() {
            let written = self
                .raw
                .store_mut()
                .write_unsynced(batch.hard_state, &batch.entries)
                .map_err(|e| format!("writing the log: {e}"))?;
            match written {
                None => self.persisted(batch.number, batch.after_persist),
                Some(pending) => {
                    self.sync_jobs
                        .send(pending)
                        .map_err(|_| "the log's sync thread stopped".to_string())?;
                    self.persisting.start_sync(batch);
                }
            }
        }
        Ok(())
    }

    /// The sync thread's report on the batch in flight: on success the batch is durable.
    /// In the moment before the next batch is written, the log takes other changes: a
    /// snapshot written meanwhile is adopted (under steady load a sync is nearly always in
    /// flight, and the snapshot would otherwise wait for a lull that may never come).
    pub(super) fn on_synced(&mut self, outcome: Synced) -> Result<(), String> {
        let Some(syncing) = self.persisting.synced() else {
            return Err("a sync ended that was never started".into());
        };
        self.raw.store_mut().finish_sync(outcome).map_err(|e| format!("syncing the log: {e}"))?;
        let took = syncing.started.elapsed();
        observe(&self.metrics.wal_sync_seconds, took);
        slow::watch(&self.metrics, slow::Step::Sync { entries: syncing.entries }, took);
        self.metrics.wal_batch_entries.observe(syncing.entries as f64);
        self.persisted(syncing.number, syncing.after_persist);
        self.adopt_written_snapshot()?;
        self.write_queued()
    }

    /// Step 3: the batch up to Ready `number` is durable.
    fn persisted(&mut self, number: ReadyNumber, after_persist: Vec<Message>) {
        self.send(after_persist);
        self.raw.on_persisted(number);
    }

    /// Waits until every Ready taken is durable (before a snapshot is installed, which
    /// replaces the log under the batches).
    pub(super) async fn finish_persisting(&mut self) -> Result<(), String> {
        while self.persisting.is_syncing() {
            let outcome =
                self.synced.recv().await.ok_or("the log's sync thread stopped".to_string())?;
            self.on_synced(outcome)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::{EntryKind, Index, MessageBody, NodeId, Term};

    fn entry(term: u64, index: u64) -> Entry {
        let data = Bytes::from(format!("{term}/{index}"));
        Entry { term: Term(term), index: Index(index), kind: EntryKind::Normal, data }
    }

    fn answer(term: u64) -> Message {
        let body = MessageBody::HeartbeatResponse { read_round: term };
        Message { from: NodeId(2), to: NodeId(1), term: Term(term), body }
    }

    fn hard_state(term: u64, commit: u64) -> HardState {
        HardState { term: Term(term), vote: Some(NodeId(1)), commit: Index(commit) }
    }

    fn ids(batch: &Batch) -> Vec<(u64, u64)> {
        batch.entries.iter().map(|e| (e.term.0, e.index.0)).collect()
    }

    /// Batches reach the log one at a time: none is handed out to write while another's sync
    /// is in flight, and a batch's answers come back only with the end of its own sync.
    #[test]
    fn a_batch_is_written_only_once_the_one_before_is_durable() {
        let mut persisting = Persisting::default();
        persisting.queue(ReadyNumber(1), None, vec![entry(1, 1)], vec![answer(1)]);
        let first = persisting.next_to_write().expect("nothing in flight");
        persisting.start_sync(first);
        persisting.queue(ReadyNumber(2), None, vec![entry(1, 2)], vec![answer(2)]);
        assert!(persisting.next_to_write().is_none(), "written while a sync is in flight");
        let synced = persisting.synced().expect("in flight");
        assert_eq!((synced.number, synced.after_persist), (ReadyNumber(1), vec![answer(1)]));
        let second = persisting.next_to_write().expect("the sync before ended");
        assert_eq!((second.number, second.after_persist), (ReadyNumber(2), vec![answer(2)]));
    }

    /// Readies queued behind a sync that continue one another become one batch: the newest
    /// hard state wins, every answer is kept in order, and acknowledging the batch
    /// acknowledges the newest Ready.
    #[test]
    fn readies_queued_behind_a_sync_merge_in_order() {
        let mut persisting = Persisting::default();
        let entries = vec![entry(2, 5), entry(2, 6)];
        persisting.queue(ReadyNumber(4), Some(hard_state(2, 4)), entries, vec![answer(2)]);
        persisting.queue(ReadyNumber(5), None, vec![], vec![answer(3)]);
        persisting.queue(ReadyNumber(6), Some(hard_state(2, 5)), vec![entry(2, 7)], vec![]);
        assert_eq!(persisting.queued.len(), 1);
        let batch = persisting.queued.pop_front().expect("queued");
        assert_eq!(batch.number, ReadyNumber(6));
        assert_eq!(batch.hard_state, Some(hard_state(2, 5)));
        assert_eq!(ids(&batch), vec![(2, 5), (2, 6), (2, 7)]);
        assert_eq!(batch.after_persist, vec![answer(2), answer(3)]);
    }

    /// A Ready whose entries replace queued ones (a new leader's conflicting suffix) starts
    /// a batch of its own. Merged, the earlier Ready's answer to the old leader, which
    /// acknowledges 2/6 and 2/7, would leave once 3/6.. were durable instead: a promise about
    /// entries that never reached the disk, which that leader could count to commit them.
    #[test]
    fn a_ready_replacing_queued_entries_waits_for_them_to_be_durable() {
        let mut persisting = Persisting::default();
        let entries = vec![entry(2, 5), entry(2, 6), entry(2, 7)];
        persisting.queue(ReadyNumber(4), Some(hard_state(2, 4)), entries, vec![answer(2)]);
        let replacing = vec![entry(3, 6), entry(3, 7), entry(3, 8)];
        persisting.queue(ReadyNumber(5), Some(hard_state(3, 5)), replacing, vec![answer(3)]);
        persisting.queue(ReadyNumber(6), None, vec![entry(3, 9)], vec![]);
        assert_eq!(persisting.queued.len(), 2);
        let first = persisting.queued.pop_front().expect("first batch");
        assert_eq!((first.number, first.hard_state), (ReadyNumber(4), Some(hard_state(2, 4))));
        assert_eq!(ids(&first), vec![(2, 5), (2, 6), (2, 7)]);
        assert_eq!(first.after_persist, vec![answer(2)]);
        let second = persisting.queued.pop_front().expect("second batch");
        assert_eq!((second.number, second.hard_state), (ReadyNumber(6), Some(hard_state(3, 5))));
        assert_eq!(ids(&second), vec![(3, 6), (3, 7), (3, 8), (3, 9)]);
        assert_eq!(second.after_persist, vec![answer(3)]);
    }
}
