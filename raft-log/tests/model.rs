//! The write-ahead log against raft-core's `MemLogStore`, the in-memory reference model: random
//! runs of batches (continuing the log or replacing a conflicting suffix, paper §5.3), hard
//! states, snapshots, compactions (paper §7), snapshot installs from a leader, restarts,
//! power cuts, and power cuts after a batch whose syncs the disk failed part-way, on a
//! `FakeVfs`, with segments small enough that many are sealed, indexed and
//! compacted. After every step the log must answer every `LogStore` question as the model
//! does, and hold the model's hard state and snapshot.
//!
//! What a reopening may change, and so what the test reconciles (`Harness::reopen`):
//!
//! - the commit index is a hint (`HardState::commit`): opening takes it from the newest
//!   hard-state record or index header that survived (a cut or a compaction may have taken
//!   the newest one) and clamps it to the last index. So after a reopening it is at most the
//!   largest one ever written and at most the last index; everywhere else it is exactly the
//!   last one written. (The largest, not the last: the generator may cut below the commit,
//!   which Raft never does; a hard-state record kept before the cut then still holds the
//!   higher commit, which the clamp hides only while the log is shorter than it);
//! - the compaction boundary: opening recomputes it from the segments left
//!   (`reconcile_with_snapshot` in `wal.rs`): it stays at most the snapshot's index, so no
//!   entry above the snapshot is ever lost, but it can move either way below it. Up, when the
//!   first segment starts at or before the old boundary: its first entry's term is the one
//!   known, so it becomes the boundary. Down, when compaction left a segment holding entries
//!   below the boundary: they are served again (from index 1 when the first segment is still
//!   the first one written). The model is rebuilt with the new boundary, from the entries it
//!   knows itself: the log must never serve an entry the model did not have.
//!
//! Everything else must be equal after a power cut too: every step that returned `Ok` was
//! synced, so this checks that every acknowledged write survives, and that the directory is
//! synced after segments and snapshots are created, renamed and removed.
//!
//! The generator writes what a Raft host writes: terms never go back, an entry's term is at
//! most the durable term (the hard state of its batch), a new leader's entries (of a new
//! term) replace a suffix, a snapshot from a leader is installed before the Ready's hard
//! state is written (`docs/wal.md`). A cut never reaches the snapshot's index: a snapshot
//! covers applied, so committed, entries, and committed entries are never replaced.

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::{
    Entry, EntryKind, HardState, Index, LogStore, MemLogStore, Membership, NodeId, Rng,
    SnapshotMeta, StoreError, Term,
};
use raft_log::vfs::{FakeVfs, Vfs};
use raft_log::wal::{Wal, WalOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DIR: &str = "/node";

/// One step of a run. The numbers are picks, resolved against the log's state when the step
/// runs (so a shrunk run stays valid); the trace in a failure says what each one resolved to.
#[derive(Clone, Debug)]
enum Op {
    /// A batch of `count` entries with a hard state. `conflict_back` 0 continues the log;
    /// otherwise a new leader's entries start up to `conflict_back` entries before the end
    /// (above the snapshot), in a new term. `new_term`: a new term (and vote) even without a
    /// conflict; `old_term`: entries of the last entry's term (a follower catching up).
    Append { count: u8, conflict_back: u8, new_term: bool, old_term: bool, commit: u8 },
    /// A hard state alone: a bigger commit, or a new term and vote.
    HardStateOnly { new_term: bool, vote: u8, commit: u8 },
    /// The state machine's snapshot at a held index above the current snapshot.
    SaveSnapshot { at: u8 },
    /// Compaction up to an index the snapshot covers.
    Compact { at: u8 },
    /// A snapshot from a leader (`kind` % 4): 0 at a held entry with its term, 1 at a held
    /// entry with another term, 2 beyond the last index, 3 at or below the compaction
    /// boundary (nothing to do); then the Ready's hard state (a new term if `new_term`).
    InstallSnapshot { at: u8, kind: u8, new_term: bool },
    /// The owner removes the files the log gave up (segments and snapshots it no longer
    /// uses). Without it they stay until the next open, which must remove them.
    RemoveGivenUp,
    /// The process dies; every written byte remains.
    Reopen,
    /// The power goes; only synced bytes and names remain.
    PowerCut,
    /// An `Append` during which the disk lets `syncs_ok` more syncs succeed and then fails
    /// every one; then the power goes. A refused batch may have left any of its durable
    /// steps behind (the vote file, a cut, a roll-over), never part of its entries.
    AppendThenPowerCut { syncs_ok: u8, count: u8, conflict_back: u8, new_term: bool },
    /// As `AppendThenPowerCut`, but the power goes while the unsynced bytes are being written
    /// back: any mix of their 32-byte sectors (picked by
    /// `seed`) reached the disk, old, new or garbage. (Real sectors are 512 bytes or more; 32
    /// keeps each vote-file slot in one sector, as on a real disk, and tears batches finely.) The log must open, and may keep an
    /// intact prefix of the refused batch, or of the suffix it was cutting.
    AppendThenTornPowerCut { syncs_ok: u8, count: u8, conflict_back: u8, new_term: bool, seed: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let conflict_back = prop_oneof![3 => Just(0u8), 1 => 1..=6u8];
    let append = (1..=8u8, conflict_back, prop::bool::weighted(0.1), any::<bool>(), any::<u8>())
        .prop_map(|(count, conflict_back, new_term, old_term, commit)| Op::Append {
            count,
            conflict_back,
            new_term,
            old_term,
            commit,
        });
    let hard_state = (any::<bool>(), any::<u8>(), any::<u8>())
        .prop_map(|(new_term, vote, commit)| Op::HardStateOnly { new_term, vote, commit });
    let install = (any::<u8>(), 0..4u8, any::<bool>())
        .prop_map(|(at, kind, new_term)| Op::InstallSnapshot { at, kind, new_term });
    prop_oneof![
        10 => append,
        1 => hard_state,
        2 => any::<u8>().prop_map(|at| Op::SaveSnapshot { at }),
        2 => any::<u8>().prop_map(|at| Op::Compact { at }),
        2 => install,
        1 => Just(Op::RemoveGivenUp),
        1 => Just(Op::Reopen),
        1 => Just(Op::PowerCut),
        1 => (0..4u8, 1..=8u8, 0..=6u8, any::<bool>()).prop_map(
            |(syncs_ok, count, conflict_back, new_term)| Op::AppendThenPowerCut {
                syncs_ok,
                count,
                conflict_back,
                new_term
            }
        ),
        2 => (0..6u8, 1..=8u8, 0..=6u8, any::<bool>(), any::<u64>()).prop_map(
            |(syncs_ok, count, conflict_back, new_term, seed)| Op::AppendThenTornPowerCut {
                syncs_ok,
                count,
                conflict_back,
                new_term,
                seed
            }
        ),
    ]
}

/// A small deterministic generator for the reads each check makes.
struct Probe(Rng);

impl Probe {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `lo..=hi`.
    fn within(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `pick` mapped onto `lo..=hi`.
fn pick(pick: u8, lo: u64, hi: u64) -> u64 {
    lo + u64::from(pick) % (hi - lo + 1)
}

/// Fails the run with a message (the trace is added by `run`).
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

/// Fails the run unless the log's answer equals the model's.
macro_rules! ensure_same {
    ($wal:expr, $model:expr, $($what:tt)+) => {{
        let (wal, model) = (&$wal, &$model);
        ensure!(wal == model, "{}: the log says {wal:?}, the model {model:?}", format!($($what)+));
    }};
}

/// The log under test, the model, and what the model cannot hold itself.
struct Harness {
    options: WalOptions,
    vfs: FakeVfs,
    wal: Wal,
    model: MemLogStore,
    /// Every entry of the model's log that the model knows, compacted or not: the entries a
    /// reopened log may serve again below the compaction boundary.
    known: BTreeMap<u64, Entry>,
    /// The last hard state written (its commit lowered to the log's after a reopening).
    hard_state: HardState,
    /// The largest commit ever written: a reopened log's commit comes from a hard-state
    /// record that survived, which may be older than the last one (and, if the generator
    /// cut below it, higher than the clamped value a previous reopening reported).
    commit_max: Index,
    /// The bytes of the snapshot in force.
    snapshot_data: Option<Vec<u8>>,
    /// Numbers every entry and snapshot, so that no two hold the same bytes.
    serial: u64,
    probe: Probe,
    /// Set while an `AppendThenPowerCut` runs: the syncs that may still succeed.
    syncs_ok: Option<u8>,
    /// With `syncs_ok`: the power cut after the refused batch is torn, from this seed.
    torn_seed: Option<u64>,
    /// What each step did, resolved, for the failure message: (step, what).
    trace: Vec<(usize, String)>,
    step: usize,
}

fn open(vfs: &FakeVfs, options: &WalOptions) -> Result<Wal, String> {
    Wal::open_with(Arc::new(vfs.clone()), Path::new(DIR), options.clone())
        .map_err(|e| format!("the log does not open: {e}"))
}

fn show(hard_state: &HardState) -> String {
    let HardState { term, vote, commit } = hard_state;
    format!("hard state term {term} vote {vote:?} commit {commit}")
}

fn membership(serial: u64) -> Membership {
    let mut membership = Membership::new((1..=1 + serial % 5).map(NodeId));
    if serial.is_multiple_of(2) {
        membership.learners.insert(NodeId(9));
    }
    if serial.is_multiple_of(3) {
        membership.voters_outgoing = (2..=4).map(NodeId).collect();
    }
    membership
}

/// Runs `ops` on a fresh log and model, checking after every step. The newest segment
/// keeps `preallocate_bytes` of room ahead of its records (0: none), and the newest
/// `recent_bytes_max` bytes of entries are read from memory.
fn run(
    segment_bytes_max: u64,
    preallocate_bytes: u64,
    recent_bytes_max: u64,
    seed: u64,
    ops: &[Op],
) -> Result<(), String> {
    let options = WalOptions {
        segment_bytes_max,
        preallocate_bytes,
        recent_bytes_max,
        ..WalOptions::default()
    };
    let vfs = FakeVfs::new();
    let wal = open(&vfs, &options)?;
    let mut harness = Harness {
        options,
        vfs,
        wal,
        model: MemLogStore::new(),
        known: BTreeMap::new(),
        hard_state: HardState::default(),
        commit_max: Index(0),
        snapshot_data: None,
        serial: 0,
        probe: Probe(Rng::new(seed)),
        syncs_ok: None,
        torn_seed: None,
        trace: Vec::new(),
        step: 0,
    };
    for (step, op) in ops.iter().enumerate() {
        harness.step = step;
        let result = harness.apply(op).and_then(|()| harness.check());
        if let Err(error) = result {
            let trace: Vec<String> =
                harness.trace.iter().map(|(step, what)| format!("  {step}: {what}")).collect();
            return Err(format!("step {step} ({op:?}): {error}\ntrace:\n{}", trace.join("\n")));
        }
    }
    Ok(())
}

impl Harness {
    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Append { count, conflict_back, new_term, old_term, commit } => {
                self.append(count, conflict_back, new_term, old_term, commit)
            }
            Op::HardStateOnly { new_term, vote, commit } => {
                self.hard_state_only(new_term, vote, commit)
            }
            Op::SaveSnapshot { at } => self.save_snapshot(at),
            Op::Compact { at } => self.compact(at),
            Op::InstallSnapshot { at, kind, new_term } => self.install_snapshot(at, kind, new_term),
            Op::RemoveGivenUp => self.remove_given_up(),
            Op::Reopen => self.reopen(false),
            Op::PowerCut => self.reopen(true),
            Op::AppendThenPowerCut { syncs_ok, count, conflict_back, new_term } => {
                self.append_then_power_cut(syncs_ok, None, count, conflict_back, new_term)
            }
            Op::AppendThenTornPowerCut { syncs_ok, count, conflict_back, new_term, seed } => {
                self.append_then_power_cut(syncs_ok, Some(seed), count, conflict_back, new_term)
            }
        }
    }

    fn append_then_power_cut(
        &mut self,
        syncs_ok: u8,
        torn_seed: Option<u64>,
        count: u8,
        conflict_back: u8,
        new_term: bool,
    ) -> Result<(), String> {
        (self.syncs_ok, self.torn_seed) = (Some(syncs_ok), torn_seed);
        let appended = self.append(count, conflict_back, new_term, false, 0);
        (self.syncs_ok, self.torn_seed) = (None, None);
        appended?;
        self.reopen(true)
    }

    fn note(&mut self, what: String) {
        self.trace.push((self.step, what));
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// A new entry: mostly normal with 0-60 bytes of data, sometimes a no-op or a
    /// configuration.
    fn entry(&mut self, index: u64, term: u64) -> Entry {
        let serial = self.next_serial();
        let (kind, data) = match serial % 13 {
            0 => (EntryKind::Config(Box::new(membership(serial))), Bytes::new()),
            6 => (EntryKind::Noop, Bytes::new()),
            _ => {
                let len = (serial * 31 % 61) as usize;
                let data: Vec<u8> = format!("e{serial}.").bytes().cycle().take(len).collect();
                (EntryKind::Normal, Bytes::from(data))
            }
        };
        Entry { term: Term(term), index: Index(index), kind, data }
    }

    /// The hard state with `commit`, in the next term (voting for a node `vote` picks) or in
    /// the current one.
    fn next_hard_state(&self, new_term: bool, vote: u8, commit: u64) -> HardState {
        let current = self.hard_state;
        if new_term {
            let vote = Some(NodeId(1 + u64::from(vote) % 5));
            HardState { term: current.term.next(), vote, commit: Index(commit) }
        } else {
            HardState { commit: Index(commit), ..current }
        }
    }

    /// A commit at least the last one written (it never goes back), toward `last`.
    fn next_commit(&self, pick: u8, last: u64) -> u64 {
        self.hard_state.commit.0.max(last * u64::from(pick) / 255)
    }

    fn write(&mut self, hard_state: HardState, entries: &[Entry]) -> Result<(), String> {
        if let Some(syncs_ok) = self.syncs_ok {
            self.note(format!("the disk fails every sync after {syncs_ok} more"));
            self.vfs.fail_syncs_after(u64::from(syncs_ok));
            if self.wal.write(Some(hard_state), entries).is_err() {
                return self.reopen_after_refused_write(hard_state, entries);
            }
        } else {
            self.wal
                .write(Some(hard_state), entries)
                .map_err(|e| format!("write of {hard_state:?} refused: {e}"))?;
        }
        self.remember(hard_state, entries);
        Ok(())
    }

    /// The model after a write the log acknowledged.
    fn remember(&mut self, hard_state: HardState, entries: &[Entry]) {
        self.remember_entries(entries);
        self.hard_state = hard_state;
        self.commit_max = self.commit_max.max(hard_state.commit);
    }

    /// The model after `entries` reached the log (replacing any from their first index on).
    fn remember_entries(&mut self, entries: &[Entry]) {
        self.model.append(entries);
        if let Some(first) = entries.first() {
            self.known.split_off(&first.index.0);
            self.known.extend(entries.iter().map(|e| (e.index.0, e.clone())));
        }
    }

    fn append(
        &mut self,
        count: u8,
        conflict_back: u8,
        new_term: bool,
        old_term: bool,
        commit: u8,
    ) -> Result<(), String> {
        let last = self.model.last_index().0;
        let last_term = self.model.term(Index(last)).map_err(|e| e.to_string())?.0;
        // A cut stays above the snapshot (and so above the compaction boundary).
        let floor = self.model.snapshot().index.0.max(self.model.first_index().0 - 1);
        let conflict = conflict_back > 0 && last > floor;
        let new_term = new_term || conflict || self.hard_state.term == Term(0);
        let start =
            if conflict { last - u64::from(conflict_back - 1) % (last - floor) } else { last + 1 };
        let end = start + u64::from(count) - 1;
        let commit = self.next_commit(commit, end);
        let hard_state = self.next_hard_state(new_term, count, commit); // count picks the vote
        let term =
            if old_term && !new_term && last_term > 0 { last_term } else { hard_state.term.0 };
        let entries: Vec<Entry> = (start..=end).map(|i| self.entry(i, term)).collect();
        let cut = if conflict { " (replacing a suffix)" } else { "" };
        let hard_state_shown = show(&hard_state);
        self.note(format!("append {start}..={end} of term {term}{cut}, {hard_state_shown}"));
        self.write(hard_state, &entries)
    }

    fn hard_state_only(&mut self, new_term: bool, vote: u8, commit: u8) -> Result<(), String> {
        let new_term = new_term || self.hard_state.term == Term(0);
        let commit = self.next_commit(commit, self.model.last_index().0);
        let hard_state = self.next_hard_state(new_term, vote, commit);
        self.note(show(&hard_state));
        self.write(hard_state, &[])
    }

    fn save_snapshot(&mut self, at: u8) -> Result<(), String> {
        let (first, last) = (self.model.first_index().0, self.model.last_index().0);
        let covered = self.model.snapshot().index.0;
        let lo = (first - 1).max(covered + 1);
        // Above the snapshot when the log holds such an entry; else an older one (ignored).
        let index = if lo <= last { pick(at, lo, last) } else { last };
        let serial = self.next_serial();
        let data = format!("snapshot at {index}, #{serial}").into_bytes();
        self.note(format!("save snapshot at {index}"));
        self.wal
            .save_snapshot(Index(index), membership(serial), &data)
            .map_err(|e| format!("save_snapshot({index}) refused: {e}"))?;
        self.model.record_snapshot(Index(index), membership(serial)).map_err(|e| e.to_string())?;
        if index > covered {
            self.snapshot_data = Some(data);
        }
        Ok(())
    }

    fn compact(&mut self, at: u8) -> Result<(), String> {
        let covered = self.model.snapshot().index.0;
        let index = if at.is_multiple_of(3) { covered } else { pick(at, 0, covered) };
        self.note(format!("compact to {index}"));
        self.wal.compact(Index(index)).map_err(|e| format!("compact({index}) refused: {e}"))?;
        self.model.compact(Index(index)).map_err(|e| format!("model: {e}"))
    }

    fn install_snapshot(&mut self, at: u8, kind: u8, new_term: bool) -> Result<(), String> {
        let (first, last) = (self.model.first_index().0, self.model.last_index().0);
        let mut new_term = new_term || self.hard_state.term == Term(0);
        let mut term = self.hard_state.term.0 + u64::from(new_term);
        let held = |model: &MemLogStore, i: u64| model.term(Index(i)).map_or(1, |t| t.0);
        let (index, meta_term) = match kind % 4 {
            0 if first <= last => {
                let index = pick(at, first, last);
                (index, held(&self.model, index))
            }
            1 if first <= last => {
                let index = pick(at, first, last);
                let there = held(&self.model, index);
                if there != term {
                    (index, term)
                } else if there > 1 {
                    (index, there - 1)
                } else {
                    (new_term, term) = (true, term + 1);
                    (index, term)
                }
            }
            3 => {
                let index = pick(at, 0, first - 1);
                (index, held(&self.model, index))
            }
            _ => (pick(at, last + 1, last + 4), term),
        };
        let serial = self.next_serial();
        let meta = SnapshotMeta {
            index: Index(index),
            term: Term(meta_term),
            membership: membership(serial),
        };
        let data = format!("installed {index}/{meta_term}, #{serial}").into_bytes();
        let consistent = self.model.term(Index(index)) == Ok(Term(meta_term));
        self.note(format!("install snapshot {meta_term}/{index} (log holds it: {consistent})"));
        if serial.is_multiple_of(2) {
            self.wal.install_snapshot(&meta, &data).map_err(|e| format!("install refused: {e}"))?;
        } else {
            // Written beside the log first, as a server does with a large received snapshot.
            let writer = self.wal.received_snapshot_writer(meta.clone());
            let written =
                writer.write(&mut |out| out.write_all(&data)).map_err(|e| e.to_string())?;
            self.wal
                .install_written_snapshot(written)
                .map_err(|e| format!("install refused: {e}"))?;
        }
        if index > first - 1 {
            self.snapshot_data = Some(data);
            if !consistent {
                self.known.clear();
            }
        }
        self.model.install_snapshot(&meta);
        // The Ready's hard state, written after the install (docs/wal.md).
        let commit = self.hard_state.commit.0.max(index);
        let hard_state = self.next_hard_state(new_term, at, commit);
        self.note(show(&hard_state));
        self.write(hard_state, &[])
    }
}

impl Harness {
    fn remove_given_up(&mut self) -> Result<(), String> {
        let given_up = self.wal.take_given_up();
        self.note(format!("remove {} given-up files", given_up.paths().len()));
        given_up.remove().map_err(|e| format!("removing given-up files: {e}"))
    }

    /// Drops the log and opens it again on what a killed process (or a power cut) leaves, then
    /// checks what may differ and reconciles the model (see the module comment).
    fn reopen(&mut self, power_cut: bool) -> Result<(), String> {
        self.note(if power_cut { "power cut".into() } else { "reopen".into() });
        let image = if power_cut { self.vfs.crash() } else { self.vfs.kill() };
        self.wal = open(&image, &self.options)?;
        self.vfs = image;
        self.reconcile(power_cut, false)
    }

    /// After a batch the log refused because a sync failed, the power goes. The batch was
    /// never acknowledged, so the log may come back without it or, if its last sync reached
    /// the disk before failing was reported, with it (not here: a failed sync keeps
    /// nothing). Its durable steps may survive: the new term and vote (saved first) and the
    /// cut of a conflicting suffix (a suffix no leader acknowledged as committed, or the batch
    /// would not replace it). What it may not do is lose an acknowledged entry the batch did
    /// not replace, or refuse to open.
    ///
    /// After a plain power cut none of the batch's entries may survive. After a torn one
    /// (`torn_seed`), part of the batch's bytes reached the disk: an intact prefix of its
    /// entries may survive, and then its term must have been durable first.
    fn reopen_after_refused_write(
        &mut self,
        hard_state: HardState,
        entries: &[Entry],
    ) -> Result<(), String> {
        let image = match self.torn_seed {
            Some(seed) => {
                self.note(format!("the batch is refused; torn power cut (seed {seed})"));
                self.vfs.crash_torn(seed, 32)
            }
            None => {
                self.note("the batch is refused; power cut".into());
                self.vfs.crash()
            }
        };
        self.wal = open(&image, &self.options)?;
        self.vfs = image;
        let durable = self.wal.hard_state();
        if (durable.term, durable.vote) == (hard_state.term, hard_state.vote) {
            self.hard_state = HardState { commit: self.hard_state.commit, ..hard_state };
        }
        let (first, old_last) = (entries[0].index.0, self.model.last_index().0);
        let last = self.wal.last_index().0;
        let kept = self.kept_of_refused_batch(entries)?;
        if kept > 0 {
            ensure!(self.torn_seed.is_some(), "{kept} entries of a refused batch survived");
            ensure!(
                durable.term >= entries[0].term,
                "entries of term {} survived in durable term {}",
                entries[0].term,
                durable.term
            );
            self.note(format!("{kept} entries of the batch survived"));
            self.model.truncate_after(Index(first - 1));
            self.remember_entries(&entries[..kept]);
            // Its hard-state record may have survived too: its commit is a hint.
            self.commit_max = self.commit_max.max(hard_state.commit);
        } else {
            ensure!(
                (first - 1..=old_last).contains(&last),
                "the log ends at {last}: neither the old log (to {old_last}) nor cut at {first}"
            );
            if last < old_last {
                self.note(format!("the cut at {first} survived: the log ends at {last}"));
                self.known.split_off(&(last + 1));
                self.model.truncate_after(Index(last));
            }
        }
        self.reconcile(true, self.torn_seed.is_some())
    }

    /// How many of a refused batch's entries the reopened log holds: its entries from the
    /// batch's first index on are the batch's (a conflicting batch is of a new term, so its
    /// entries cannot be taken for the ones it replaced), or none of them are.
    fn kept_of_refused_batch(&self, entries: &[Entry]) -> Result<usize, String> {
        let first = entries[0].index;
        let last = self.wal.last_index();
        if last < first || self.wal.term(first) != Ok(entries[0].term) {
            return Ok(0);
        }
        let kept = (last.0 - first.0 + 1) as usize;
        ensure!(kept <= entries.len(), "the log ends at {last}, beyond the refused batch");
        Ok(kept)
    }

    /// Checks what a reopening may change and reconciles the model with it.
    /// `torn`: the power cut came while a refused batch was written back, so a torn tail
    /// may have been cut.
    fn reconcile(&mut self, power_cut: bool, torn: bool) -> Result<(), String> {
        let report = self.wal.recovery_report().clone();
        ensure!(
            torn || report.torn_bytes == 0,
            "a torn tail though every write was synced: {report:?}"
        );
        ensure!(report.repaired_from.is_none(), "repaired: {report:?}");
        ensure!(!report.log_replaced_by_snapshot, "no install was interrupted: {report:?}");
        if !power_cut {
            // Every sealed segment left its index file: only the newest one is read.
            ensure!(report.segments_scanned == 1, "scanned more than the newest: {report:?}");
        }
        let files = self.vfs.list(Path::new(DIR)).unwrap_or_default();
        let left = files.iter().filter(|p| raft_log::given_up::is_given_up(p)).count();
        ensure!(left == 0, "{left} given-up files left after an open");
        let segments = self.segment_files().len();
        ensure_same!(
            report.segments_indexed + report.segments_scanned,
            segments,
            "segments opened"
        );
        let durable = self.wal.hard_state();
        ensure_same!(
            (durable.term, durable.vote),
            (self.hard_state.term, self.hard_state.vote),
            "term and vote"
        );
        let limit = self.commit_max.min(self.wal.last_index());
        ensure!(durable.commit <= limit, "commit {} above {limit} after reopening", durable.commit);
        self.hard_state.commit = durable.commit;
        ensure_same!(self.wal.last_index(), self.model.last_index(), "last index");
        let boundary = self.wal.first_index().0 - 1;
        let snapshot = self.model.snapshot().index.0;
        ensure!(
            boundary <= snapshot,
            "compaction boundary {boundary} above the snapshot {snapshot}"
        );
        if boundary != self.model.first_index().0 - 1 {
            self.note(format!("the log now serves from {}", boundary + 1));
            self.rebuild_model(boundary)?;
        }
        Ok(())
    }

    /// A model holding what the model held, compacted up to `boundary` instead: from the
    /// entries it knows, with the same snapshot.
    fn rebuild_model(&mut self, boundary: u64) -> Result<(), String> {
        let snapshot = self.model.snapshot();
        let last = self.model.last_index().0;
        let known = |i: u64| {
            self.known
                .get(&i)
                .cloned()
                .ok_or_else(|| format!("the log serves entry {i}, never held"))
        };
        let mut model = MemLogStore::new();
        if boundary == snapshot.index.0 {
            model.install_snapshot(&snapshot);
        } else if boundary > 0 {
            let term = known(boundary)?.term;
            let meta = SnapshotMeta { index: Index(boundary), term, ..SnapshotMeta::default() };
            model.install_snapshot(&meta);
        }
        let entries = (boundary + 1..=last).map(known).collect::<Result<Vec<_>, _>>()?;
        model.append(&entries);
        if snapshot.index.0 > boundary {
            model
                .record_snapshot(snapshot.index, snapshot.membership.clone())
                .map_err(|e| e.to_string())?;
        }
        ensure_same!(model.snapshot(), snapshot, "rebuilt model's snapshot");
        self.model = model;
        Ok(())
    }

    fn segment_files(&self) -> Vec<PathBuf> {
        let files = self.vfs.list(Path::new(DIR)).unwrap_or_default();
        files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "seg")).collect()
    }

    /// Every question `LogStore` answers, asked of both; the hard state and the snapshot.
    fn check(&mut self) -> Result<(), String> {
        let (wal, model) = (&self.wal, &self.model);
        let (first, last) = (model.first_index(), model.last_index());
        ensure_same!(wal.first_index(), first, "first index");
        ensure_same!(wal.last_index(), last, "last index");
        for i in first.0 - 1..=last.0 {
            ensure_same!(wal.term(Index(i)), model.term(Index(i)), "term({i})");
        }
        if first.0 >= 2 {
            let below = first.prev().prev();
            ensure_same!(wal.term(below), model.term(below), "term({below})");
            let read = wal.entries(first.prev(), last.next(), u64::MAX);
            let compacted: Result<Vec<Entry>, _> = Err(StoreError::Compacted { first });
            ensure_same!(read, compacted, "entries from {}", first.prev());
        }
        ensure!(wal.term(last.next()).is_err(), "term({}) beyond the log answered", last.next());
        ensure!(wal.entries(first, last.next().next(), 0).is_err(), "a range beyond the log read");
        if first <= last {
            let all = wal.entries(first, last.next(), u64::MAX);
            ensure_same!(all, model.entries(first, last.next(), u64::MAX), "all entries");
            let lo = Index(self.probe.within(first.0, last.0));
            let hi = Index(self.probe.within(lo.0 + 1, last.0 + 1));
            let max_bytes = self.probe.within(0, 400);
            let read = wal.entries(lo, hi, max_bytes);
            ensure_same!(
                read,
                model.entries(lo, hi, max_bytes),
                "entries({lo}, {hi}, {max_bytes})"
            );
        }
        ensure_same!(wal.snapshot(), model.snapshot(), "snapshot");
        ensure_same!(wal.hard_state(), self.hard_state, "hard state");
        let data = wal.snapshot_data().map_err(|e| format!("snapshot data unreadable: {e}"))?;
        ensure_same!(data, self.snapshot_data, "snapshot data");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // About 5 s in release and 6 s in the test profile on 2 cores; PROPTEST_CASES
        // overrides it for a longer soak.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4096),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_log_behaves_as_the_model(
        segment_bytes_max in 200..1000u64,
        preallocate_bytes in prop_oneof![Just(0u64), 1..400u64],
        recent_bytes_max in prop_oneof![Just(0u64), 1..600u64, Just(u64::MAX)],
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(segment_bytes_max, preallocate_bytes, recent_bytes_max, seed, &ops)
            .map_err(TestCaseError::fail)?;
    }
}

// Pinned scenarios, as readable traces.

fn entry(term: u64, index: u64) -> Entry {
    let data = Bytes::from(format!("entry {index} of term {term}"));
    Entry { term: Term(term), index: Index(index), kind: EntryKind::Normal, data }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term: Term(term), vote: Some(NodeId(vote)), commit: Index(commit) }
}

/// The first index of every segment file on `vfs`, oldest first.
fn segment_firsts(vfs: &FakeVfs) -> Vec<u64> {
    let mut files = vfs.list(Path::new(DIR)).unwrap();
    files.retain(|p| p.extension().is_some_and(|e| e == "seg"));
    files.sort();
    files.iter().map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap()).collect()
}

/// Writes entries `from..=to` of `term` in batches of 4, each with the hard state of `term`.
fn write_entries(wal: &mut Wal, term: u64, from: u64, to: u64) {
    let entries: Vec<Entry> = (from..=to).map(|i| entry(term, i)).collect();
    for batch in entries.chunks(4) {
        wal.write(Some(hard_state(term, 1, batch[0].index.0)), batch).unwrap();
    }
}

/// A leader's snapshot beyond the log replaces it; after a power cut the log starts after the
/// snapshot, answers the snapshot's term for its index, and takes the next entry.
#[test]
fn a_snapshot_installed_beyond_the_log_survives_a_power_cut() {
    let vfs = FakeVfs::new();
    let options = WalOptions { segment_bytes_max: 300, ..WalOptions::default() };
    let mut wal = open(&vfs, &options).unwrap();
    write_entries(&mut wal, 1, 1, 5);
    // 1. Leader 2 of term 2 sends a snapshot at 9/2: the Ready installs it, then writes the
    //    hard state of term 2.
    let meta = SnapshotMeta { index: Index(9), term: Term(2), membership: membership(1) };
    wal.install_snapshot(&meta, b"state at 9").unwrap();
    wal.write(Some(hard_state(2, 2, 9)), &[]).unwrap();
    // 2. The power goes.
    let image = vfs.crash();
    drop(wal);
    let mut wal = open(&image, &options).unwrap();
    assert_eq!(segment_firsts(&image), vec![10], "one empty segment after the snapshot");
    assert_eq!((wal.first_index(), wal.last_index()), (Index(10), Index(9)));
    assert_eq!(wal.term(Index(9)), Ok(Term(2)));
    assert_eq!(wal.term(Index(5)), Err(StoreError::Compacted { first: Index(10) }));
    assert_eq!(wal.snapshot(), meta);
    assert_eq!(wal.snapshot_data().unwrap(), Some(b"state at 9".to_vec()));
    let durable = wal.hard_state();
    assert_eq!((durable.term, durable.vote), (Term(2), Some(NodeId(2))));
    assert!(durable.commit <= Index(9), "the commit hint is clamped to the log");
    // 3. The leader's next entry follows the snapshot.
    wal.write(None, &[entry(2, 10)]).unwrap();
    assert_eq!(wal.entries(Index(10), Index(11), u64::MAX), Ok(vec![entry(2, 10)]));
}

/// Compaction deletes every segment the snapshot covers whole, durably (the directory is
/// synced), and a power cut keeps every entry above the snapshot.
#[test]
fn compaction_across_segments_survives_a_power_cut() {
    let vfs = FakeVfs::new();
    let options = WalOptions { segment_bytes_max: 300, ..WalOptions::default() };
    let mut wal = open(&vfs, &options).unwrap();
    write_entries(&mut wal, 1, 1, 20);
    write_entries(&mut wal, 2, 21, 40);
    let before = segment_firsts(&vfs);
    assert!(before.len() >= 5, "expected several segments: {before:?}");
    wal.save_snapshot(Index(25), membership(2), b"state at 25").unwrap();
    wal.compact(Index(25)).unwrap();
    // A segment goes when the next one starts at or before 26: it holds nothing above 25.
    let kept: Vec<u64> = before
        .iter()
        .zip(before.iter().skip(1).chain([&u64::MAX]))
        .filter(|(_, &next)| next > 26)
        .map(|(&first, _)| first)
        .collect();
    assert!(kept.len() < before.len() - 2, "several segments removed: {before:?} -> {kept:?}");
    let image = vfs.crash();
    drop(wal);
    assert_eq!(segment_firsts(&image), kept, "the removals are durable");
    let wal = open(&image, &options).unwrap();
    assert!(wal.first_index() <= Index(26), "served from {}", wal.first_index());
    assert_eq!(wal.last_index(), Index(40));
    let above: Vec<Entry> = (26..=40).map(|i| entry(2, i)).collect();
    assert_eq!(wal.entries(Index(26), Index(41), u64::MAX), Ok(above));
    assert_eq!(wal.term(Index(25)), Ok(Term(2)));
    assert_eq!(wal.snapshot().last(), raft_core::EntryId::new(Term(2), Index(25)));
}

/// Opening recomputes the compaction boundary from the segments left (`reconcile_with_snapshot`):
/// below the snapshot the log may serve fewer entries than before, or more (compaction deletes
/// whole segments only, and what they still hold is served again); never above it.
#[test]
fn a_reopening_moves_the_compaction_boundary_only_below_the_snapshot() {
    let vfs = FakeVfs::new();
    let options = WalOptions { segment_bytes_max: 300, ..WalOptions::default() };
    let mut wal = open(&vfs, &options).unwrap();
    write_entries(&mut wal, 1, 1, 40);
    wal.save_snapshot(Index(35), membership(3), b"state at 35").unwrap();
    // 1. Compaction inside the first segment deletes nothing: after reopening, the log serves
    //    from 1 again.
    let firsts = segment_firsts(&vfs);
    wal.compact(Index(2)).unwrap();
    assert_eq!(wal.first_index(), Index(3));
    let vfs = vfs.kill();
    let mut wal = open(&vfs, &options).unwrap();
    assert_eq!(wal.first_index(), Index(1), "served again");
    assert_eq!(wal.entries(Index(1), Index(3), u64::MAX), Ok(vec![entry(1, 1), entry(1, 2)]));
    // 2. Compaction to just before the third segment deletes the first two: after reopening,
    //    the third segment's first entry is the boundary (the term before it is gone).
    let third = firsts[2];
    wal.compact(Index(third - 1)).unwrap();
    assert_eq!(wal.first_index(), Index(third));
    let wal = open(&vfs.kill(), &options).unwrap();
    assert_eq!(wal.first_index(), Index(third + 1), "one entry fewer served");
    assert_eq!(wal.term(Index(third)), Ok(Term(1)));
    assert_eq!(wal.last_index(), Index(40));
    assert_eq!(wal.snapshot().index, Index(35));
}
