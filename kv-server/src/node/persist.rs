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

use super::Core;
use crate::metrics::observe;
use raft_core::{Entry, HardState, Message, ReadyNumber};
use raft_log::wal::{PendingSync, WalError};
use std::time::Instant;
use tokio::sync::mpsc;

/// The outcome of one sync, as the sync thread reports it.
pub(super) type Synced = Result<(), WalError>;

/// Readies taken from the engine and not yet durable.
#[derive(Default)]
pub(super) struct Persisting {
    /// Readies waiting for the sync in flight to end, merged into one batch.
    queued: Option<Batch>,
    /// The batch written and being synced.
    syncing: Option<Syncing>,
}

/// Readies merged into one write.
struct Batch {
    /// The newest Ready merged in: acknowledging it acknowledges the earlier ones.
    number: ReadyNumber,
    /// The newest hard state given (each replaces the one before).
    hard_state: Option<HardState>,
    /// The entries to append, in order; a later Ready's entries replace those from their
    /// first index on (a conflicting suffix cut in memory before it reached the disk).
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

    /// Adds a Ready's share of persisting to the batch written next.
    fn queue(
        &mut self,
        number: ReadyNumber,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        after_persist: Vec<Message>,
    ) {
        let batch = self.queued.get_or_insert_with(|| Batch {
            number,
            hard_state: None,
            entries: Vec::new(),
            after_persist: Vec::new(),
        });
        batch.number = number;
        batch.hard_state = hard_state.or(batch.hard_state);
        if let Some(first) = entries.first() {
            batch.entries.retain(|e| e.index < first.index);
        }
        batch.entries.extend(entries);
        batch.after_persist.extend(after_persist);
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

    /// Writes the queued batch, unless a sync is in flight, and hands its sync to the sync
    /// thread. A batch with nothing to sync (no entries) is acknowledged at once.
    fn write_queued(&mut self) -> Result<(), String> {
        if self.persisting.is_syncing() {
            return Ok(());
        }
        let Some(batch) = self.persisting.queued.take() else { return Ok(()) };
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
                self.persisting.syncing = Some(Syncing {
                    number: batch.number,
                    after_persist: batch.after_persist,
                    entries: batch.entries.len(),
                    started: Instant::now(),
                });
            }
        }
        Ok(())
    }

    /// The sync thread's report on the batch in flight: on success the batch is durable.
    /// In the moment before the next batch is written, the log takes other changes: a
    /// snapshot written meanwhile is adopted (under steady load a sync is nearly always in
    /// flight, and the snapshot would otherwise wait for a lull that may never come).
    pub(super) fn on_synced(&mut self, outcome: Synced) -> Result<(), String> {
        let Some(syncing) = self.persisting.syncing.take() else {
            return Err("a sync ended that was never started".into());
        };
        self.raw.store_mut().finish_sync(outcome).map_err(|e| format!("syncing the log: {e}"))?;
        observe(&self.metrics.wal_sync_seconds, syncing.started.elapsed());
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

    /// Readies queued behind a sync become one batch that ends as the last of them would
    /// leave the log: a later Ready's entries replace the earlier ones from their first index
    /// on, the newest hard state wins, every answer is kept in order, and acknowledging the
    /// batch acknowledges the newest Ready.
    #[test]
    fn readies_queued_behind_a_sync_merge_as_written_in_order() {
        let mut persisting = Persisting::default();
        let entries = vec![entry(2, 5), entry(2, 6), entry(2, 7)];
        persisting.queue(ReadyNumber(4), Some(hard_state(2, 4)), entries, vec![answer(2)]);
        persisting.queue(ReadyNumber(5), None, vec![], vec![answer(3)]);
        let replacing = vec![entry(3, 6), entry(3, 7), entry(3, 8)];
        persisting.queue(ReadyNumber(6), Some(hard_state(3, 5)), replacing, vec![answer(4)]);
        persisting.queue(ReadyNumber(7), None, vec![entry(3, 9)], vec![]);
        let batch = persisting.queued.take().expect("queued");
        assert_eq!(batch.number, ReadyNumber(7));
        assert_eq!(batch.hard_state, Some(hard_state(3, 5)));
        let ids: Vec<(u64, u64)> = batch.entries.iter().map(|e| (e.term.0, e.index.0)).collect();
        assert_eq!(ids, vec![(2, 5), (3, 6), (3, 7), (3, 8), (3, 9)]);
        assert_eq!(batch.after_persist, vec![answer(2), answer(3), answer(4)]);
    }
}
