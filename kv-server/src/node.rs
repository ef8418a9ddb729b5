//! The node: raft-core driven on its own thread, with raft-log as its store, raft-net as its
//! transport and kv-fsm as its state machine (the host loop of docs/engine.md).
//!
//! One loop turn: take every queued input (client writes and reads, peer messages, ticks),
//! then handle every Ready. All the writes that arrived while the previous turn was syncing
//! go into one Ready, so one `fdatasync` serves them all (group commit); a leader's appends
//! leave before its own write (step 3 of the Ready contract), so followers write in parallel.
//!
//! A client write becomes a `Command` carrying this process's session id and a sequence
//! number (kv-fsm sessions, thesis §6.3). It is answered when an entry with that session and
//! sequence is applied, on whichever node proposed or forwarded it; until its deadline it is
//! proposed again every [`RETRY_INTERVAL`], and the session makes sure it applies once.

use crate::incoming::Incoming;
use bytes::Bytes;
use kv_fsm::{ApplyError, KvState, WriteResult};
use kv_proto::kv::{command::Op, Command};
use prost::Message as _;
use raft_core::{
    ConfChange, ConfChangeError, Config, Entry, EntryKind, Index, InitialState, Message,
    MessageBody, NodeId, ProposeError, RawNode, ReadIndexError, ReadState, Ready, Role,
};
use raft_log::wal::{Wal, WalError, WalOptions, WrittenSnapshot};
use raft_net::{Event, SnapshotSource, Transport};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A pending write is proposed again this often until it applies or its deadline passes.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// A learner that asked to vote is promoted once its log is within this many entries of
/// the leader's.
pub const PROMOTION_LAG_MAX: u64 = 100;

/// Inputs queued for the loop at most; more are refused (the node is overloaded).
const INPUTS_MAX: usize = 65_536;

/// Why a write was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No leader was known until the deadline: the write was never proposed.
    #[error("no leader is known")]
    NoLeader,
    /// The outcome is unknown: it may still apply.
    #[error("the write's outcome is unknown (timed out)")]
    Timeout,
    /// The leader holds too many uncommitted writes; retry later.
    #[error("the cluster is overloaded: {0}")]
    Busy(String),
    /// The node is stopping or stopped.
    #[error("the node is stopping")]
    Stopped,
}

/// Why a read was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No leader is known to confirm it.
    #[error("no leader is known")]
    NoLeader,
    /// Not confirmed before the deadline.
    #[error("the read was not confirmed in time")]
    Timeout,
    /// Too many reads wait; retry later.
    #[error("too many reads are waiting")]
    Busy,
    /// The node is stopping or stopped.
    #[error("the node is stopping")]
    Stopped,
}

/// Why a membership change was not proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeRefused {
    /// This node does not lead.
    #[error("this node does not lead (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// Another change (or a leadership transfer) is under way: retry shortly.
    #[error("busy: {0}")]
    Busy(String),
    /// The change makes no sense.
    #[error("{0}")]
    Invalid(String),
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log could not be opened.
    #[error("opening the log: {0}")]
    Log(#[from] WalError),
    /// The snapshot in the log could not be restored.
    #[error("restoring the state from the snapshot: {0}")]
    Snapshot(String),
    /// The engine refused its configuration.
    #[error("starting the engine: {0}")]
    Engine(String),
}

/// What the loop reports about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// Its current term.
    pub term: u64,
    /// Its role.
    pub role: Role,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// The commit index.
    pub commit: u64,
    /// The applied index.
    pub applied: u64,
    /// The first index in the log.
    pub first_index: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// The voters.
    pub voters: Vec<NodeId>,
    /// The learners.
    pub learners: Vec<NodeId>,
    /// The member table: how to reach each id.
    pub members: imbl::OrdMap<u64, kv_fsm::Member>,
    /// On a leader: how far each other member's log matches its own.
    pub matched: BTreeMap<NodeId, u64>,
    /// The configuration is joint (a change is half-way).
    pub joint: bool,
}

type Reply<T> = oneshot::Sender<T>;

/// What the loop takes.
pub(crate) enum Input {
    Write { op: Op, reply: Reply<Result<WriteResult, WriteError>> },
    Read { linearizable: bool, reply: Reply<Result<KvState, ReadError>> },
    Status { reply: Reply<NodeStatus> },
    Transfer { to: Option<NodeId>, reply: Reply<Result<NodeId, String>> },
    ConfChange { change: ConfChange, reply: Reply<Result<Index, ConfChangeRefused>> },
    Stop { reply: Reply<()> },
}

/// How the node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// The initial voters (used only when the log holds no configuration yet).
    pub voters: Vec<NodeId>,
    /// Where the log lives.
    pub data_dir: PathBuf,
    /// The Raft tick.
    pub tick: Duration,
    /// Ticks before an election.
    pub election_ticks: u32,
    /// Take a snapshot after this many applied entries.
    pub snapshot_entries: u64,
    /// Entries kept in the log below a snapshot, for followers a little behind.
    pub snapshot_catchup_entries: u64,
    /// How long a write or read may wait for its outcome.
    pub request_timeout: Duration,
    /// This node's row in the member table: the node writes it once a leader is known, and
    /// again whenever it differs (an address changed).
    pub me: kv_fsm::Member,
}

/// The handle clients use; cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    inputs: mpsc::Sender<Input>,
    request_timeout: Duration,
    /// Set by the loop when it stops because this node was removed from the cluster.
    removed: Arc<AtomicBool>,
}

impl NodeHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Input) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.inputs.try_send(make(reply)).ok()?;
        // The loop answers by its own deadline; this one only guards against a dead loop.
        tokio::time::timeout(self.request_timeout + Duration::from_secs(2), answer).await.ok()?.ok()
    }

    /// Replicates `op` and returns its result once applied.
    pub async fn write(&self, op: Op) -> Result<WriteResult, WriteError> {
        self.ask(|reply| Input::Write { op, reply }).await.unwrap_or(Err(WriteError::Stopped))
    }

    /// The state, at least as new as every write completed anywhere before the call when
    /// `linearizable` (ReadIndex); this node's current state otherwise.
    pub async fn read(&self, linearizable: bool) -> Result<KvState, ReadError> {
        self.ask(|reply| Input::Read { linearizable, reply })
            .await
            .unwrap_or(Err(ReadError::Stopped))
    }

    /// The node's status.
    pub async fn status(&self) -> Option<NodeStatus> {
        self.ask(|reply| Input::Status { reply }).await
    }

    /// Starts handing leadership to `to` (or the most caught-up voter); returns the target.
    pub async fn transfer_leadership(&self, to: Option<NodeId>) -> Result<NodeId, String> {
        self.ask(|reply| Input::Transfer { to, reply })
            .await
            .unwrap_or(Err("the node is stopping".into()))
    }

    /// Proposes a membership change (on the leader only).
    /// Returns the index of the configuration entry.
    pub async fn conf_change(&self, change: ConfChange) -> Result<Index, ConfChangeRefused> {
        self.ask(|reply| Input::ConfChange { change, reply })
            .await
            .unwrap_or(Err(ConfChangeRefused::Busy("the node is stopping".into())))
    }

    /// Whether the loop stopped because this node was removed from the cluster (a leader
    /// that removed itself learns here that its change went through).
    pub fn was_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Stops the loop after its current turn (everything acknowledged is durable). Waits for
    /// room in a full queue rather than dropping the request.
    pub async fn stop(&self) {
        let (reply, answer) = oneshot::channel();
        if self.inputs.send(Input::Stop { reply }).await.is_ok() {
            let _ = answer.await;
        }
    }
}

/// A write waiting to be applied.
struct PendingWrite {
    data: Bytes,
    reply: Reply<Result<WriteResult, WriteError>>,
    deadline: Instant,
    next_try: Instant,
    /// Appended or forwarded at least once: its outcome is unknown from then on.
    sent: bool,
    /// The term and leader when it was last appended or forwarded: proposing again makes
    /// sense only once they changed (the proposal may have been lost with the old leader).
    sent_under: (u64, Option<NodeId>),
}

/// Reads waiting together for one ReadIndex confirmation, then for the apply to reach its
/// index: every linearizable read that arrived in one loop turn (they all started before the
/// ReadIndex request was made, so its index serves each of them).
struct PendingRead {
    replies: Vec<Reply<Result<KvState, ReadError>>>,
    /// The latest deadline among them (each is answered by the turn after its own at most).
    deadline: Instant,
}

impl PendingRead {
    fn answer(self, answer: impl Fn() -> Result<KvState, ReadError>) {
        for reply in self.replies {
            let _ = reply.send(answer());
        }
    }
}

/// Everything the loop owns.
struct Core {
    raw: RawNode<Wal>,
    state: KvState,
    transport: Arc<Transport>,
    runtime: tokio::runtime::Handle,
    config: NodeConfig,
    /// This process's session id (random, never 0) and its next sequence number.
    session: u64,
    next_sequence: u64,
    /// A write of the session was seen applied: the session exists in the state machine.
    session_open: bool,
    writes: BTreeMap<u64, PendingWrite>,
    next_read: u64,
    /// The linearizable reads of this turn, asked of the engine together at its end.
    reads_arrived: Option<PendingRead>,
    reads_unconfirmed: HashMap<u64, PendingRead>,
    reads_confirmed: Vec<(Index, PendingRead)>,
    incoming: Incoming,
    /// The sequence of this node's own member-table write while it is pending.
    registering: Option<u64>,
    /// This run has seen this node in the configuration: leaving it later means removal.
    was_member: bool,
    /// Peers that refused this node as not one of their members, and when they last did.
    disowned_by: BTreeMap<NodeId, Instant>,
    /// When a message from another node last arrived.
    last_heard: Instant,
    /// Shared with the handles: set when the loop stops because this node was removed.
    removed: Arc<AtomicBool>,
    /// The snapshot being written by its own thread, and when it started.
    snapshot_in_flight: Option<(SnapshotOutcome, Instant)>,
}

/// Where the snapshot thread answers with the snapshot it wrote.
type SnapshotOutcome = std::sync::mpsc::Receiver<Result<WrittenSnapshot, String>>;

/// Opens the log, restores the state and starts the loop on its own thread.
pub fn start(
    config: NodeConfig,
    transport: Arc<Transport>,
    events: tokio::sync::mpsc::Receiver<Event>,
    runtime: tokio::runtime::Handle,
) -> Result<(NodeHandle, std::thread::JoinHandle<Result<(), String>>), StartError> {
    let wal = Wal::open(&config.data_dir, WalOptions::default())?;
    let report = wal.recovery_report().clone();
    if report.torn_bytes > 0 {
        tracing::warn!("the log's torn tail was cut: {report:?}");
    }
    let state = match wal.open_snapshot_data()? {
        Some(data) => {
            KvState::read_snapshot(data).map_err(|e| StartError::Snapshot(e.to_string()))?
        }
        None => KvState::new(),
    };
    let mut raft_config = Config::new(config.id);
    raft_config.election_ticks = config.election_ticks;
    raft_config.heartbeat_ticks = 1;
    raft_config.seed = fastrand::u64(..);
    let initial = InitialState {
        hard_state: wal.hard_state(),
        voters: config.voters.clone(),
        applied: Index(state.applied()),
    };
    let raw =
        RawNode::new(raft_config, wal, initial).map_err(|e| StartError::Engine(e.to_string()))?;
    let (inputs, receiver) = mpsc::channel(INPUTS_MAX);
    let removed = Arc::new(AtomicBool::new(false));
    let handle =
        NodeHandle { inputs, request_timeout: config.request_timeout, removed: removed.clone() };
    let mut core = Core {
        raw,
        state,
        transport,
        runtime,
        incoming: Incoming::new(config.data_dir.clone()),
        session: fastrand::u64(1..),
        next_sequence: 1,
        session_open: false,
        writes: BTreeMap::new(),
        // Random, so that a leader's answer to a read of an earlier run of this node (same
        // term, reconnected) never matches a read of this one.
        next_read: fastrand::u64(1..u64::MAX / 2),
        reads_arrived: None,
        reads_unconfirmed: HashMap::new(),
        reads_confirmed: Vec::new(),
        registering: None,
        was_member: false,
        disowned_by: BTreeMap::new(),
        last_heard: Instant::now(),
        removed,
        snapshot_in_flight: None,
        config,
    };
    core.connect_members();
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || core.run(receiver, events))
        .map_err(|e| StartError::Engine(e.to_string()))?;
    Ok((handle, thread))
}

impl Core {
    /// The loop: waits for a client input, a transport event or the next tick, takes
    /// everything else queued, then ticks and handles the Readies. It waits on both queues
    /// directly (a small runtime of its own drives the wait), so a peer's message wakes the
    /// loop with one hand-over, not two.
    fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut events: mpsc::Receiver<Event>,
    ) -> Result<(), String> {
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| format!("starting the loop's runtime: {e}"))?;
        let tick = self.config.tick;
        let mut next_tick = Instant::now() + tick;
        let mut events_open = true;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let woken = waiter.block_on(next_wake(&mut inputs, &mut events, events_open, wait));
            let mut stop = None;
            match woken {
                Wake::Input(Some(input)) => stop = self.handle(input),
                Wake::Input(None) => return Ok(()), // every handle is gone
                Wake::Event(Some(event)) => self.on_peer_event(event),
                Wake::Event(None) => events_open = false,
                Wake::Tick => {}
            }
            for _ in 0..INPUTS_MAX {
                let Ok(input) = inputs.try_recv() else { break };
                stop = stop.or(self.handle(input));
            }
            for _ in 0..INPUTS_MAX {
                let Ok(event) = events.try_recv() else { break };
                self.on_peer_event(event);
            }
            self.request_read_index();
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.promote_caught_up_learners();
                next_tick = (next_tick + tick).max(now);
            }
            self.retry_and_expire(now);
            self.register();
            if let Err(error) = self.process_readies().and_then(|()| self.adopt_written_snapshot())
            {
                tracing::error!("stopping: {error}");
                self.fail_everything();
                return Err(error);
            }
            if let Some(reply) = stop {
                self.fail_everything();
                let _ = reply.send(());
                return Ok(());
            }
            if self.removed() {
                tracing::info!(node = %self.config.id, "removed from the cluster; stopping");
                self.removed.store(true, Ordering::Release);
                self.fail_everything();
                return Ok(());
            }
        }
    }

    /// Handles one input; returns the reply of a stop request.
    fn handle(&mut self, input: Input) -> Option<Reply<()>> {
        match input {
            Input::Write { op, reply } => self.start_write(op, reply),
            Input::Read { linearizable, reply } => self.start_read(linearizable, reply),
            Input::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Input::Transfer { to, reply } => {
                let _ = reply.send(self.transfer(to));
            }
            Input::ConfChange { change, reply } => {
                let result = self.raw.propose_conf_change(&[change]);
                let _ = reply.send(result.map_err(|error| match error {
                    ConfChangeError::NotLeader { leader } => ConfChangeRefused::NotLeader(leader),
                    ConfChangeError::InProgress { .. }
                    | ConfChangeError::TransferInProgress { .. } => {
                        ConfChangeRefused::Busy(error.to_string())
                    }
                    ConfChangeError::Invalid(reason) => ConfChangeRefused::Invalid(reason),
                }));
            }
            Input::Stop { reply } => return Some(reply),
        }
        None
    }

    fn start_write(&mut self, op: Op, reply: Reply<Result<WriteResult, WriteError>>) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let acked_below = self.writes.keys().next().copied().unwrap_or(sequence);
        let command = Command {
            client_id: self.session,
            sequence,
            acked_below,
            op: Some(op),
            open_session: !self.session_open,
        };
        let now = Instant::now();
        let pending = PendingWrite {
            data: command.encode_to_vec().into(),
            reply,
            deadline: now + self.config.request_timeout,
            next_try: now,
            sent: false,
            sent_under: (0, None),
        };
        self.writes.insert(sequence, pending);
        self.propose(sequence, now);
    }

    /// Proposes pending write `sequence` (again).
    fn propose(&mut self, sequence: u64, now: Instant) {
        let Some(pending) = self.writes.get_mut(&sequence) else { return };
        pending.next_try = now + RETRY_INTERVAL;
        let under = (self.raw.term().0, self.raw.leader());
        if pending.sent && pending.sent_under == under {
            return; // still in flight with the same leader: a copy would only add load
        }
        match self.raw.propose(pending.data.clone()) {
            Ok(_) => {
                pending.sent = true;
                pending.sent_under = under;
            }
            Err(ProposeError::NotLeader { .. } | ProposeError::TransferInProgress { .. }) => {}
            Err(error @ ProposeError::UncommittedFull { .. }) => {
                if !pending.sent {
                    let pending = self.writes.remove(&sequence).expect("just found");
                    let _ = pending.reply.send(Err(WriteError::Busy(error.to_string())));
                }
            }
        }
    }

    fn start_read(&mut self, linearizable: bool, reply: Reply<Result<KvState, ReadError>>) {
        if !linearizable {
            let _ = reply.send(Ok(self.state.clone()));
            return;
        }
        let deadline = Instant::now() + self.config.request_timeout;
        let arrived =
            self.reads_arrived.get_or_insert_with(|| PendingRead { replies: Vec::new(), deadline });
        arrived.replies.push(reply);
        arrived.deadline = deadline;
    }

    /// Asks the engine for one read index for every linearizable read of this turn: on a
    /// follower that is one ReadIndex message to the leader, not one per read.
    fn request_read_index(&mut self) {
        let Some(reads) = self.reads_arrived.take() else { return };
        let request = self.next_read;
        self.next_read += 1;
        match self.raw.read_index(request) {
            Ok(()) => {
                self.reads_unconfirmed.insert(request, reads);
            }
            Err(ReadIndexError::NoLeader) => reads.answer(|| Err(ReadError::NoLeader)),
            Err(ReadIndexError::TooManyPending { .. }) => reads.answer(|| Err(ReadError::Busy)),
        }
    }

    fn on_peer_event(&mut self, event: Event) {
        match event {
            // An InstallSnapshot counts only with its bytes, in the last chunk of a transfer.
            Event::Message(message)
                if matches!(message.body, MessageBody::InstallSnapshot { .. }) =>
            {
                tracing::warn!(
                    "dropped an InstallSnapshot from node {} without its data",
                    message.from
                );
            }
            Event::Message(message) => {
                self.last_heard = Instant::now();
                self.disowned_by.remove(&message.from);
                self.step(message);
            }
            Event::SnapshotChunk(chunk) => {
                if let Some(install) = self.incoming.receive(chunk) {
                    self.step(install);
                }
            }
            Event::Unreachable(peer) => self.raw.report_unreachable(peer),
            Event::NotAPeerOf(peer) => {
                self.disowned_by.insert(peer, Instant::now());
            }
            Event::SnapshotSent { to, ok } => {
                if !ok {
                    self.raw.report_snapshot_failure(to);
                }
            }
        }
    }

    fn step(&mut self, message: Message) {
        if let Err(error) = self.raw.step(message) {
            tracing::debug!("message refused by the engine: {error}");
        }
    }

    /// Proposes again the writes due for it; answers those past their deadline.
    fn retry_and_expire(&mut self, now: Instant) {
        let due: Vec<u64> =
            self.writes.iter().filter(|(_, p)| p.next_try <= now).map(|(&s, _)| s).collect();
        for sequence in due {
            let pending = &self.writes[&sequence];
            if pending.deadline <= now {
                let pending = self.writes.remove(&sequence).expect("just found");
                let error = if pending.sent { WriteError::Timeout } else { WriteError::NoLeader };
                let _ = pending.reply.send(Err(error));
            } else {
                self.propose(sequence, now);
            }
        }
        let expired: Vec<u64> = self
            .reads_unconfirmed
            .iter()
            .filter(|(_, read)| read.deadline <= now)
            .map(|(&request, _)| request)
            .collect();
        for request in expired {
            let reads = self.reads_unconfirmed.remove(&request).expect("just found");
            reads.answer(|| Err(ReadError::Timeout));
        }
        for reads in self.take_confirmed_reads(|_, reads| reads.deadline <= now) {
            reads.answer(|| Err(ReadError::Timeout));
        }
    }

    fn process_readies(&mut self) -> Result<(), String> {
        while self.raw.has_ready() {
            let ready = self.raw.ready();
            self.handle_ready(ready)?;
        }
        Ok(())
    }

    /// The Ready contract of docs/engine.md, in order.
    fn handle_ready(&mut self, ready: Ready) -> Result<(), String> {
        if let Some(soft) = ready.soft_state {
            tracing::info!(node = %self.config.id, term = %self.raw.term(), "leader is now {:?} (this node: {:?})", soft.leader, soft.role);
        }
        self.send(ready.messages);
        if let Some(meta) = &ready.snapshot {
            self.install_snapshot(meta)?;
        }
        if ready.hard_state.is_some() || !ready.entries.is_empty() {
            self.raw
                .store_mut()
                .write(ready.hard_state, &ready.entries)
                .map_err(|e| format!("writing the log: {e}"))?;
        }
        self.send(ready.messages_after_persist);
        self.raw.on_persisted(ready.number);
        self.apply(ready.committed_entries)?;
        self.confirm_reads(ready.read_states);
        self.release_reads();
        Ok(())
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                match self.send_snapshot(message) {
                    Ok(()) => {}
                    // One transfer at a time: the one under way reports its own outcome.
                    Err(SnapshotNotSent::InProgress) => {}
                    Err(SnapshotNotSent::Failed(error)) => {
                        tracing::warn!("snapshot to node {to} not sent: {error}");
                        self.raw.report_snapshot_failure(to);
                    }
                }
            } else if self.transport.send(&message).is_err() {
                self.raw.report_unreachable(to);
            }
        }
    }

    /// Sends the log's snapshot with `message`, if it is the snapshot the message describes
    /// (a newer one may have been saved since the engine built the message; the engine then
    /// resends with the right description after the failure is reported).
    fn send_snapshot(&mut self, message: Message) -> Result<(), SnapshotNotSent> {
        let failed = SnapshotNotSent::Failed;
        let MessageBody::InstallSnapshot { snapshot } = &message.body else {
            return Err(failed("not an InstallSnapshot".into()));
        };
        let data = described_snapshot(self.raw.store(), snapshot).map_err(failed)?;
        let _runtime = self.runtime.enter();
        match self.transport.send_snapshot(message, Box::new(SnapshotReader(data))) {
            Ok(()) => Ok(()),
            Err(raft_net::SendError::SnapshotInProgress(_)) => Err(SnapshotNotSent::InProgress),
            Err(error) => Err(failed(error.to_string())),
        }
    }

    /// Installs the snapshot a leader sent (its bytes arrived through the transport): the
    /// state is restored from them, and the log replaced or compacted (docs/snapshots.md).
    fn install_snapshot(&mut self, meta: &raft_core::SnapshotMeta) -> Result<(), String> {
        let (path, state) = self.incoming.take(meta).ok_or_else(|| {
            format!(
                "the engine installs snapshot {}/{} but its bytes never arrived",
                meta.index, meta.term
            )
        })?;
        let mut file =
            std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.raw
            .store_mut()
            .install_snapshot_with(meta, &mut |out| std::io::copy(&mut file, out).map(|_| ()))
            .map_err(|e| format!("installing the snapshot: {e}"))?;
        let _ = std::fs::remove_file(&path);
        tracing::info!(node = %self.config.id, "installed the leader's snapshot at {}/{}", meta.index, meta.term);
        self.state = state;
        self.connect_members();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
        for entry in entries {
            let index = entry.index.0;
            if index <= self.state.applied() {
                continue; // restored from a snapshot that covers it
            }
            match entry.kind {
                EntryKind::Normal if !entry.data.is_empty() => {
                    self.apply_command(index, &entry.data)
                }
                EntryKind::Config(_) => {
                    self.state.skip(index);
                    self.connect_members();
                }
                _ => self.state.skip(index),
            }
        }
        self.raw.on_applied(last);
        self.maybe_snapshot()
    }

    fn apply_command(&mut self, index: u64, data: &[u8]) {
        let Ok(command) = Command::decode(data) else {
            let _ = self.state.apply(index, data); // counted as applied, changes nothing
            return;
        };
        let (client_id, sequence) = (command.client_id, command.sequence);
        let changes_members = matches!(command.op, Some(Op::SetMember(_) | Op::RemoveMember(_)));
        let result = self.state.apply_command(index, command);
        if changes_members {
            self.connect_members();
        }
        if client_id != self.session {
            return;
        }
        if result.is_ok() {
            self.session_open = true;
        }
        if let Some(pending) = self.writes.remove(&sequence) {
            let answer = match result {
                Ok(result) => Ok(result),
                Err(ApplyError::SessionExpired { .. } | ApplyError::Undecodable { .. }) => {
                    // The session expired (100,000 others wrote since ours did): whether an
                    // earlier copy applied is unknown. Later writes go in a new session.
                    tracing::warn!("session {} expired; opening a new one", self.session);
                    self.session = fastrand::u64(1..);
                    self.next_sequence = 1;
                    self.session_open = false;
                    Err(WriteError::Timeout)
                }
            };
            let _ = pending.reply.send(answer);
        }
    }

    /// Serves the confirmed reads the state has caught up with (by applying entries or by
    /// installing a snapshot).
    fn release_reads(&mut self) {
        let applied = Index(self.state.applied());
        for reads in self.take_confirmed_reads(|index, _| index <= applied) {
            reads.answer(|| Ok(self.state.clone()));
        }
    }

    /// Removes and returns the confirmed reads `pick` chooses (by read index and read).
    fn take_confirmed_reads(
        &mut self,
        pick: impl Fn(Index, &PendingRead) -> bool,
    ) -> Vec<PendingRead> {
        let (picked, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads_confirmed).into_iter().partition(|(i, r)| pick(*i, r));
        self.reads_confirmed = kept;
        picked.into_iter().map(|(_, read)| read).collect()
    }

    fn confirm_reads(&mut self, read_states: Vec<ReadState>) {
        let applied = Index(self.state.applied());
        for read_state in read_states {
            let Some(reads) = self.reads_unconfirmed.remove(&read_state.request) else { continue };
            if read_state.index <= applied {
                reads.answer(|| Ok(self.state.clone()));
            } else {
                self.reads_confirmed.push((read_state.index, reads));
            }
        }
    }

    /// Whether a configuration without this node took effect after one with it: the node
    /// was removed and stops (as an etcd member does).
    ///
    /// A removed follower often never receives the configuration that removes it (the
    /// leader stops replicating to it); it learns of its removal when most of the other
    /// voters refuse its connections as not one of their members.
    ///
    /// Only committed configurations count: an entry that removes this node may still be
    /// replaced by a new leader, and a node that stopped for it would be a member gone missing.
    fn removed(&mut self) -> bool {
        let me = self.config.id;
        let member = self.raw.committed_membership().contains(me);
        self.was_member |= member;
        // A leader stays until it has committed the configuration without it, then steps down.
        if self.was_member && !member && self.raw.role() != Role::Leader {
            return true;
        }
        // Only refusals after the last message from anyone count, and only once nobody has
        // spoken to this node for three election timeouts: a peer that restarts, or has not
        // applied this node's addition yet, refuses it for a moment while the leader still
        // sends it heartbeats.
        let silent = self.config.tick * self.config.election_ticks * 3;
        if self.last_heard.elapsed() < silent {
            return false;
        }
        let others: Vec<NodeId> =
            self.raw.voters().iter().copied().filter(|&id| id != me).collect();
        let recent = |id: &NodeId| self.disowned_by.get(id).is_some_and(|&at| at > self.last_heard);
        let disowning = others.iter().filter(|id| recent(id)).count();
        self.was_member && !others.is_empty() && disowning * 2 > others.len()
    }

    /// Writes this node's row of the member table once a leader is known and the row differs
    /// from the one applied (one such write at a time).
    fn register(&mut self) {
        if self.registering.is_some_and(|sequence| self.writes.contains_key(&sequence)) {
            return;
        }
        self.registering = None;
        let me = &self.config.me;
        let id = self.config.id.0;
        let in_config = self.raw.membership().contains(self.config.id);
        let row = self.state.members().get(&id);
        if self.raw.leader().is_none() || !in_config || row.is_some_and(|r| r.same_addresses(me)) {
            return;
        }
        let op = Op::SetMember(kv_proto::kv::SetMember {
            id,
            name: me.name.clone(),
            peer_address: me.peer_address.clone(),
            client_address: me.client_address.clone(),
            allocate: false,
            min_id: 0,
            promote: false,
        });
        let (reply, _) = oneshot::channel();
        self.registering = Some(self.next_sequence);
        self.start_write(op, reply);
    }

    /// On the leader: proposes to promote each learner whose row asks for it once it has
    /// answered and its log is within [`PROMOTION_LAG_MAX`] entries of this one (thesis §4.2.1: a voter that still
    /// has to catch up would hold commitment back). The wish is in the replicated member
    /// table, so whichever node leads when the learner catches up promotes it.
    fn promote_caught_up_learners(&mut self) {
        if self.raw.role() != Role::Leader {
            return;
        }
        let last = self.raw.last_index().0;
        let ready: Vec<NodeId> = self
            .raw
            .membership()
            .learners
            .iter()
            .copied()
            .filter(|id| self.state.members().get(&id.0).is_some_and(|row| row.promote))
            .filter(|&id| {
                // A learner that never answered matches nothing, however short the log is.
                let matched = self.raw.progress(id).map_or(0, |p| p.match_index.0);
                matched > 0 && matched.saturating_add(PROMOTION_LAG_MAX) >= last
            })
            .collect();
        for id in ready {
            // Refused while another change is under way: tried again next tick.
            if self.raw.propose_conf_change(&[ConfChange::AddVoter(id)]).is_ok() {
                tracing::info!(node = %self.config.id, "learner {id} caught up: promoting it to voter");
            }
        }
    }

    /// Makes the transport's peers the members of the configuration, at the addresses of the
    /// member table (the initial ones from the flags until a row exists): an added or moved
    /// member is dialled at its address, a removed one forgotten. A row no configuration
    /// names (a removed leader could not delete its own) is not dialled.
    ///
    /// A peer with an id newer than every id known here is kept: it joined while this node
    /// was away and announced itself (docs/transport.md), and this node learns of it only by
    /// catching up from it.
    fn connect_members(&mut self) {
        let _runtime = self.runtime.enter();
        let newer_than_known = self.first_unknown_id();
        self.transport.accept_announced_from(newer_than_known);
        for (&id, member) in self.state.members() {
            if id == self.config.id.0 || !self.raw.membership().contains(NodeId(id)) {
                continue;
            }
            match member.peer_address.parse::<raft_net::PeerAddress>() {
                Ok(address) => self.transport.add_peer(NodeId(id), address),
                Err(error) => tracing::warn!("member {id}: {error}"),
            }
        }
        for id in self.transport.peers() {
            if !self.raw.membership().contains(id) && id < newer_than_known {
                self.transport.remove_peer(id);
            }
        }
    }

    /// The lowest id this node has never heard of: above every id of the member table (past
    /// and present: the state machine never reuses one) and of the configuration.
    fn first_unknown_id(&self) -> NodeId {
        let in_config = self.raw.membership().members().last().map_or(0, |id| id.0 + 1);
        NodeId(self.state.next_member_id().max(in_config).max(self.config.id.0 + 1))
    }

    /// Starts a snapshot once enough entries were applied since the last one: the state is
    /// cloned (O(1)) and written by a thread of its own, so that a large state never holds up
    /// heartbeats, appends or client answers. One at a time.
    fn maybe_snapshot(&mut self) -> Result<(), String> {
        if self.snapshot_in_flight.is_some() {
            return Ok(());
        }
        let applied = self.state.applied();
        // The log's snapshot, saved here or installed from a leader, is the last one.
        let last_snapshot = raft_core::LogStore::snapshot(self.raw.store()).index.0;
        if applied < last_snapshot.saturating_add(self.config.snapshot_entries) {
            return Ok(());
        }
        let membership = self.raw.membership_at(Index(applied));
        let writer = self
            .raw
            .store()
            .snapshot_writer(Index(applied), membership)
            .map_err(|e| format!("starting a snapshot: {e}"))?;
        let state = self.state.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let written = writer.write(&mut |out| state.write_snapshot(out).map(|_| ()));
                let _ = sender.send(written.map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("starting the snapshot thread: {e}"))?;
        self.snapshot_in_flight = Some((receiver, Instant::now()));
        Ok(())
    }

    /// Puts in force the snapshot the snapshot thread wrote, if it is done, and compacts the
    /// log below it, keeping a margin for followers a little behind.
    fn adopt_written_snapshot(&mut self) -> Result<(), String> {
        let Some((receiver, started)) = &self.snapshot_in_flight else { return Ok(()) };
        let written = match receiver.try_recv() {
            Ok(written) => written,
            Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Err("the snapshot thread stopped without an answer".into())
            }
        };
        let took = started.elapsed();
        self.snapshot_in_flight = None;
        let written = written.map_err(|e| format!("writing a snapshot: {e}"))?;
        let index = written.meta().index;
        let wal = self.raw.store_mut();
        if !wal.adopt_snapshot(written).map_err(|e| format!("saving a snapshot: {e}"))? {
            return Ok(()); // a newer one, installed from the leader, took its place
        }
        let keep_from = index.0.saturating_sub(self.config.snapshot_catchup_entries);
        let compact_to = Index(keep_from).min(self.raw.compactable_index());
        self.raw.store_mut().compact(compact_to).map_err(|e| format!("compacting: {e}"))?;
        tracing::info!(node = %self.config.id, "snapshot at {index} (written in {took:.0?} beside the loop), log compacted to {compact_to}");
        Ok(())
    }

    fn status(&self) -> NodeStatus {
        let membership = self.raw.membership();
        NodeStatus {
            id: self.config.id,
            term: self.raw.term().0,
            role: self.raw.role(),
            leader: self.raw.leader(),
            commit: self.raw.commit().0,
            applied: self.state.applied(),
            first_index: self.raw.first_index().0,
            last_index: self.raw.last_index().0,
            voters: membership.voters.iter().copied().collect(),
            learners: membership.learners.iter().copied().collect(),
            members: self.state.members().clone(),
            joint: !membership.voters_outgoing.is_empty(),
            matched: membership
                .members()
                .into_iter()
                .filter_map(|id| self.raw.progress(id).map(|p| (id, p.match_index.0)))
                .collect(),
        }
    }

    fn transfer(&mut self, to: Option<NodeId>) -> Result<NodeId, String> {
        if self.raw.role() != Role::Leader {
            return Err("this node is not the leader".into());
        }
        let me = self.config.id;
        let target = match to {
            Some(to) => to,
            None => self
                .raw
                .voters()
                .iter()
                .copied()
                .filter(|&id| id != me)
                .max_by_key(|&id| self.raw.progress(id).map_or(0, |p| p.match_index.0))
                .ok_or("no other voter to hand leadership to")?,
        };
        self.raw.transfer_leadership(target).map_err(|e| e.to_string())?;
        Ok(target)
    }

    /// Answers every waiting client: the node is stopping.
    fn fail_everything(&mut self) {
        for (_, write) in std::mem::take(&mut self.writes) {
            let error = if write.sent { WriteError::Timeout } else { WriteError::Stopped };
            let _ = write.reply.send(Err(error));
        }
        let arrived = self.reads_arrived.take().into_iter();
        let unconfirmed = self.reads_unconfirmed.drain().map(|(_, reads)| reads);
        let confirmed = self.reads_confirmed.drain(..).map(|(_, reads)| reads);
        for reads in arrived.chain(unconfirmed).chain(confirmed) {
            reads.answer(|| Err(ReadError::Stopped));
        }
    }
}

/// What ended the loop's wait.
enum Wake {
    Input(Option<Input>),
    Event(Option<Event>),
    Tick,
}

/// Waits for an input, an event (while the transport is open) or `wait` to pass.
async fn next_wake(
    inputs: &mut mpsc::Receiver<Input>,
    events: &mut mpsc::Receiver<Event>,
    events_open: bool,
    wait: Duration,
) -> Wake {
    tokio::select! {
        input = inputs.recv() => Wake::Input(input),
        event = events.recv(), if events_open => Wake::Event(event),
        () = tokio::time::sleep(wait) => Wake::Tick,
    }
}

/// Why a snapshot did not go out.
enum SnapshotNotSent {
    /// A transfer to the peer is under way already.
    InProgress,
    /// It failed; the engine should retry later.
    Failed(String),
}

/// The bytes of the log's snapshot, if it is the one `described` (a newer one may have been
/// saved since the engine built its InstallSnapshot: those bytes under that description would
/// install a state at the wrong index).
fn described_snapshot(
    wal: &Wal,
    described: &raft_core::SnapshotMeta,
) -> Result<raft_log::snapshot::SnapshotData, String> {
    let held = raft_core::LogStore::snapshot(wal);
    if held.last() != described.last() {
        return Err(format!("the log holds snapshot {}, not {}", held.last(), described.last()));
    }
    let data = wal.open_snapshot_data().map_err(|e| e.to_string())?;
    data.ok_or_else(|| "no snapshot to send".into())
}

/// A snapshot's bytes, read for the transport.
struct SnapshotReader(raft_log::snapshot::SnapshotData);

impl SnapshotSource for SnapshotReader {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{LogStore, Membership, Term};

    #[test]
    fn a_snapshot_goes_out_only_under_its_own_description() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let entries: Vec<Entry> = (1..=20)
            .map(|i| Entry {
                term: Term(1),
                index: Index(i),
                kind: EntryKind::Normal,
                data: Bytes::new(),
            })
            .collect();
        let hard_state = raft_core::HardState { term: Term(1), vote: None, commit: Index(20) };
        wal.write(Some(hard_state), &entries).unwrap();
        let membership = Membership::new([NodeId(1)]);
        wal.save_snapshot(Index(10), membership.clone(), b"state at 10").unwrap();
        let at_10 = LogStore::snapshot(&wal);
        let data = described_snapshot(&wal, &at_10).expect("the held snapshot goes out");
        assert_eq!(data.len(), b"state at 10".len() as u64);
        // A newer snapshot is saved after the engine described the old one.
        wal.save_snapshot(Index(20), membership, b"state at 20").unwrap();
        let error = described_snapshot(&wal, &at_10).err().expect("a stale description");
        assert!(error.contains("holds snapshot 1/20, not 1/10"), "{error}");
        assert!(described_snapshot(&wal, &LogStore::snapshot(&wal)).is_ok());
    }
}
