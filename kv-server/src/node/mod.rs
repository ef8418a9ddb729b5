//! The node: raft-core driven by one task on the server's runtime, with raft-log as its
//! store, raft-net as its transport and kv-fsm as its state machine (the host loop of
//! docs/engine.md).
//!
//! One loop turn: take every queued input (client writes and reads, peer messages, ticks,
//! the end of a sync), then handle every Ready. A Ready's entries are written at once and
//! their `fdatasync` runs on the `wal-sync` thread (`persist.rs`); the Readies that come
//! while it runs are merged into the next batch, so one `fdatasync` serves every write that
//! arrived meanwhile (group commit). A leader's appends leave before its own write (step 3
//! of the Ready contract), so followers write in parallel.
//!
//! A client write becomes a `Command` carrying this process's session id and a sequence
//! number (kv-fsm sessions, thesis §6.3). It is answered when an entry with that session and
//! sequence is applied, on whichever node proposed or forwarded it; until its deadline it is
//! proposed again every [`RETRY_INTERVAL`], and the session makes sure it applies once.
//! A write that comes with the client's own session ([`ClientSession`]) is proposed under
//! that session instead, so that the client's own retries, to this node or any other, apply
//! once too.

use crate::incoming::{Checked, Incoming};
use crate::metrics::{gauge_value, observe, Metrics, PeerLabel};
use bytes::Bytes;
use kv_fsm::{ApplyError, KvState, WriteResult};
use kv_proto::kv::{command::Op, Command, WriteSession as ClientSession};
use prost::Message as _;
use raft_core::{
    ConfChange, ConfChangeError, Config, Entry, EntryKind, Index, InitialState, Message,
    MessageBody, NodeId, ProposeError, RawNode, Ready, Role,
};
use raft_log::vfs::Vfs;
use raft_log::wal::{PendingSync, Wal, WalError, WalOptions};
use raft_net::{Event, Transport};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod membership;
mod persist;
mod reads;
mod slow;
mod snapshots;
#[cfg(test)]
mod tests;

use membership::Removal;
use persist::{Persisting, Synced};
use reads::PendingRead;
use snapshots::{SnapshotNotSent, SnapshotOutcome};

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
    /// A retry of a write in a client's session whose result is no longer known (the client
    /// acknowledged it, or the session expired): it may or may not have been applied.
    #[error(
        "session {client_id}: the result of write {sequence} is no longer known \
         (acknowledged, or the session expired); it may have been applied"
    )]
    Forgotten {
        /// The client's session.
        client_id: u64,
        /// The write.
        sequence: u64,
    },
    /// The same write of a client's session arrived again at this node while this copy
    /// waited: the newer copy is answered instead.
    #[error("superseded by a newer copy of the same write (same session and sequence)")]
    Superseded,
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
    Write { op: Op, session: Option<ClientSession>, reply: Reply<Result<WriteResult, WriteError>> },
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
    /// Or after this many bytes of applied entries, whichever comes first.
    pub snapshot_bytes: u64,
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

    /// Replicates `op` and returns its result once applied. With the client's `session`,
    /// every copy of the write (same client and sequence, sent to any node) applies once and
    /// gets the first copy's result.
    pub async fn write(
        &self,
        op: Op,
        session: Option<ClientSession>,
    ) -> Result<WriteResult, WriteError> {
        self.ask(|reply| Input::Write { op, session, reply })
            .await
            .unwrap_or(Err(WriteError::Stopped))
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
    /// The client's session and sequence, for a write proposed under the client's session.
    client: Option<(u64, u64)>,
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
    /// The writes waiting to be applied, by the sequence they took in this node's session
    /// (those proposed under a client's session take one too, unused in the log).
    writes: BTreeMap<u64, PendingWrite>,
    /// Of those proposed under a client's session: `(client_id, sequence)` to the key in
    /// `writes`. Invariant: exactly the writes whose `client` is set, each once.
    client_writes: HashMap<(u64, u64), u64>,
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
    /// Bytes of entries applied since the last snapshot was started or installed.
    applied_bytes_since_snapshot: u64,
    /// The snapshot being written by its own thread, and when it started.
    snapshot_in_flight: Option<(SnapshotOutcome, Instant)>,
    metrics: Arc<Metrics>,
    /// The leader last reported, for counting leader changes.
    leader_seen: Option<NodeId>,
    /// The members whose replication lag was last measured.
    lag_measured: Vec<NodeId>,
    /// Readies taken and not yet durable (`persist.rs`).
    persisting: Persisting,
    /// Where the log's syncs go: the `wal-sync` thread.
    sync_jobs: std::sync::mpsc::Sender<PendingSync>,
    /// Where that thread reports each sync's outcome.
    synced: mpsc::UnboundedReceiver<Synced>,
    /// Where the threads checking received snapshots report (`incoming.rs`), and their
    /// sender, which each such thread gets a clone of.
    snapshot_checked: mpsc::UnboundedReceiver<Checked>,
    snapshot_checks: mpsc::UnboundedSender<Checked>,
}

/// Client session ids below this are clients' ([`CLIENT_SESSION_ID_MAX`]); from it on,
/// nodes' own: a client cannot write in a node's session, and so cannot answer its writes.
const NODE_SESSION_ID_MIN: u64 = 1 << 63;

/// The largest session id a client may use (docs/api.md).
pub const CLIENT_SESSION_ID_MAX: u64 = NODE_SESSION_ID_MIN - 1;

/// A role as the API and the metrics name it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre-candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

fn peer_label(id: NodeId) -> PeerLabel {
    PeerLabel { peer: id.0.to_string() }
}

/// A new random session id for this node's own writes.
fn node_session_id() -> u64 {
    fastrand::u64(NODE_SESSION_ID_MIN..)
}

/// The loop's task: it ends with the loop's outcome (an error when a disk failure stopped it).
pub(crate) type LoopTask = tokio::task::JoinHandle<Result<(), String>>;

/// Opens the log in `config.data_dir` on `vfs`, restores the state and starts the loop as a
/// task on `runtime`. The server gives the real file system
/// ([`StdVfs`](raft_log::vfs::StdVfs)); tests give one that holds or breaks its syncs.
pub(crate) fn start(
    vfs: Arc<dyn Vfs>,
    config: NodeConfig,
    transport: Arc<Transport>,
    events: tokio::sync::mpsc::Receiver<Event>,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
) -> Result<(NodeHandle, LoopTask), StartError> {
    let wal = Wal::open_with(vfs, &config.data_dir, WalOptions::default())?;
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
    let (synced_sender, synced) = mpsc::unbounded_channel();
    let (snapshot_checks, snapshot_checked) = mpsc::unbounded_channel();
    let sync_jobs = persist::start_sync_thread(synced_sender)
        .map_err(|e| StartError::Engine(format!("starting the sync thread: {e}")))?;
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
        session: node_session_id(),
        next_sequence: 1,
        session_open: false,
        writes: BTreeMap::new(),
        client_writes: HashMap::new(),
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
        applied_bytes_since_snapshot: 0,
        snapshot_in_flight: None,
        config,
        metrics,
        leader_seen: None,
        lag_measured: Vec::new(),
        persisting: Persisting::default(),
        sync_jobs,
        synced,
        snapshot_checked,
        snapshot_checks,
    };
    core.connect_members();
    let task = core.runtime.clone().spawn(core.run(receiver, events));
    Ok((handle, task))
}

impl Core {
    /// The loop: waits for a client input, a transport event, the end of a sync or the next
    /// tick, takes everything else queued, then ticks and handles the Readies.
    ///
    /// It is a task on the server's runtime, beside the gRPC and transport tasks that feed
    /// it, and it does not wait for the disk in steady state: the log's `fdatasync` runs on a
    /// thread of its own (`persist.rs`). So on a one-thread runtime a client's request, the
    /// loop's turn and the frames it sends all run on one thread, with no hand-over between
    /// threads. Rarer disk work still runs inside a turn and holds the thread meanwhile:
    /// saving a new term or vote, rolling or cutting a segment, putting a snapshot in force
    /// (a rename: a received snapshot is read, checked and synced beside the loop,
    /// `incoming.rs`) (docs/performance.md, "One thread per node").
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut events: mpsc::Receiver<Event>,
    ) -> Result<(), String> {
        let tick = self.config.tick;
        let mut next_tick = Instant::now() + tick;
        let mut events_open = true;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let side =
                SideChannels { synced: &mut self.synced, checked: &mut self.snapshot_checked };
            let woken = next_wake(&mut inputs, &mut events, side, events_open, wait).await;
            let turn_started = Instant::now();
            let mut stop = None;
            let mut failed = None;
            match woken {
                Wake::Input(Some(input)) => stop = self.handle(input),
                Wake::Input(None) => return self.finish_and_fail_everything().await, // no handles
                Wake::Event(Some(event)) => self.on_peer_event(event),
                Wake::Event(None) => events_open = false,
                Wake::Synced(Some(outcome)) => failed = self.on_synced(outcome).err(),
                Wake::Synced(None) => failed = Some("the log's sync thread stopped".into()),
                Wake::SnapshotChecked(checked) => self.on_snapshot_checked(checked),
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
            if let (None, Ok(outcome)) = (&failed, self.synced.try_recv()) {
                failed = self.on_synced(outcome).err();
            }
            self.request_read_index();
            let now = Instant::now();
            if now >= next_tick {
                slow::watch(&self.metrics, slow::Step::LateTick, now - next_tick);
                self.raw.tick();
                self.discard_overtaken_snapshot();
                let _removal_goes_on = self.remove_given_up_files(); // beside the loop
                self.promote_caught_up_learners();
                self.measure_replication_lag();
                next_tick = (next_tick + tick).max(now);
            }
            self.retry_and_expire(now);
            self.register();
            let turn = match failed {
                Some(error) => Err(error),
                None => self.process_readies().await.and_then(|()| self.adopt_written_snapshot()),
            };
            if let Err(error) = turn {
                tracing::error!("stopping: {error}");
                self.fail_everything();
                return Err(error);
            }
            let took = turn_started.elapsed();
            observe(&self.metrics.loop_turn_seconds, took);
            slow::watch(&self.metrics, slow::Step::Turn, took);
            if let Some(reply) = stop {
                let stopped = self.finish_and_fail_everything().await;
                let _ = reply.send(());
                return stopped;
            }
            if let Some(removal) = self.removal() {
                if let Removal::Disowned { by, of } = removal {
                    tracing::info!(
                        "disowned by {by} of the {of} other voters, who no longer count this \
                         node a peer: it was removed"
                    );
                }
                tracing::info!(node = %self.config.id, "removed from the cluster; stopping");
                self.removed.store(true, Ordering::Release);
                return self.finish_and_fail_everything().await;
            }
        }
    }

    /// Stops cleanly: waits until every batch taken is durable (what the node acknowledged
    /// stays acknowledged across the restart), then fails what still waits.
    async fn finish_and_fail_everything(&mut self) -> Result<(), String> {
        let finished = self.finish_persisting().await;
        if let Err(error) = &finished {
            tracing::error!("stopping: {error}");
        }
        self.fail_everything();
        // A node removed from the cluster may never open its log again to remove these.
        if let Some(removal) = self.remove_given_up_files() {
            let _ = removal.await;
        }
        finished
    }

    /// Handles one input; returns the reply of a stop request.
    fn handle(&mut self, input: Input) -> Option<Reply<()>> {
        match input {
            Input::Write { op, session, reply } => self.start_write(op, session, reply),
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

    fn start_write(
        &mut self,
        op: Op,
        session: Option<ClientSession>,
        reply: Reply<Result<WriteResult, WriteError>>,
    ) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let command = match &session {
            Some(client) => Command {
                client_id: client.client_id,
                sequence: client.sequence,
                acked_below: client.acked_below,
                op: Some(op),
                open_session: client.opening,
            },
            None => Command {
                client_id: self.session,
                sequence,
                acked_below: self.writes.keys().next().copied().unwrap_or(sequence),
                op: Some(op),
                open_session: !self.session_open,
            },
        };
        let client = session.map(|client| (client.client_id, client.sequence));
        // A newer copy of a client's write that still waits here takes its place, and what
        // was sent with it: once sent, the write's outcome is unknown whatever the newer copy
        // meets (a copy answered "not done" while an older one may still apply would lie).
        let older = client.and_then(|key| self.client_writes.insert(key, sequence));
        let (sent, sent_under) = match older {
            Some(older) => {
                let older = self.writes.remove(&older).expect("client_writes names a write");
                let _ = older.reply.send(Err(WriteError::Superseded));
                (older.sent, older.sent_under)
            }
            None => (false, (0, None)),
        };
        let now = Instant::now();
        let pending = PendingWrite {
            data: command.encode_to_vec().into(),
            reply,
            deadline: now + self.config.request_timeout,
            next_try: now,
            sent,
            sent_under,
            client,
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
                    let pending = self.take_write(sequence).expect("just found");
                    let _ = pending.reply.send(Err(WriteError::Busy(error.to_string())));
                }
            }
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
            // Proposals and read requests come only from members: a peer taken on from its
            // announcement (docs/transport.md) may lead, but it may not write through this
            // node before a configuration names it.
            Event::Message(message)
                if matches!(
                    message.body,
                    MessageBody::Propose { .. } | MessageBody::ReadIndex { .. }
                ) && !self.raw.membership().contains(message.from) =>
            {
                tracing::warn!("dropped a request from node {}, not a member", message.from);
            }
            Event::Message(message) => {
                self.last_heard = Instant::now();
                self.disowned_by.remove(&message.from);
                self.step(message);
            }
            Event::SnapshotChunk(chunk) => {
                if let Some(received) = self.incoming.receive(chunk) {
                    self.check_received(received);
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

    /// Removes pending write `sequence` (a key of `writes`), with its client session entry.
    fn take_write(&mut self, sequence: u64) -> Option<PendingWrite> {
        let pending = self.writes.remove(&sequence)?;
        if let Some(key) = pending.client {
            self.client_writes.remove(&key);
        }
        Some(pending)
    }

    /// Proposes again the writes due for it; answers those past their deadline.
    fn retry_and_expire(&mut self, now: Instant) {
        let due: Vec<u64> =
            self.writes.iter().filter(|(_, p)| p.next_try <= now).map(|(&s, _)| s).collect();
        for sequence in due {
            let pending = &self.writes[&sequence];
            if pending.deadline <= now {
                let pending = self.take_write(sequence).expect("just found");
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

    async fn process_readies(&mut self) -> Result<(), String> {
        while self.raw.has_ready() {
            let ready = self.raw.ready();
            self.handle_ready(ready).await?;
        }
        Ok(())
    }

    /// The Ready contract of docs/engine.md, in order.
    async fn handle_ready(&mut self, ready: Ready) -> Result<(), String> {
        if let Some(soft) = ready.soft_state {
            tracing::info!(node = %self.config.id, term = %self.raw.term(), "leader is now {:?} (this node: {:?})", soft.leader, soft.role);
            self.metrics.set_role(soft.role);
            if soft.leader != self.leader_seen {
                self.leader_seen = soft.leader;
                self.metrics.leader_changes.inc();
            }
        }
        self.metrics.term.set(gauge_value(self.raw.term().0));
        self.send(ready.messages);
        if let Some(meta) = &ready.snapshot {
            self.finish_persisting().await?;
            self.install_snapshot(meta)?;
        }
        self.persist(ready.number, ready.hard_state, ready.entries, ready.messages_after_persist)?;
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
            } else if self.incoming.holds(&message) {
                continue;
            } else if self.transport.send(&message).is_err() {
                self.raw.report_unreachable(to);
                self.metrics.messages_dropped.get_or_create(&peer_label(to)).inc();
            }
        }
    }

    /// On the leader: how many entries each other member's log lags behind this one. A
    /// member no longer measured (removed, or this node no longer leads) loses its gauge.
    fn measure_replication_lag(&mut self) {
        let mut measured = Vec::new();
        if self.raw.role() == Role::Leader {
            let last = self.raw.last_index().0;
            for id in self.raw.membership().members() {
                if let (true, Some(progress)) = (id != self.config.id, self.raw.progress(id)) {
                    let lag = last.saturating_sub(progress.match_index.0);
                    let gauge = self.metrics.replication_lag.get_or_create(&peer_label(id));
                    gauge.set(gauge_value(lag));
                    measured.push(id);
                }
            }
        }
        for gone in self.lag_measured.iter().filter(|id| !measured.contains(id)) {
            self.metrics.replication_lag.remove(&peer_label(*gone));
        }
        self.lag_measured = measured;
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
        for entry in entries {
            let index = entry.index.0;
            if index <= self.state.applied() {
                continue; // restored from a snapshot that covers it
            }
            self.applied_bytes_since_snapshot += entry.size_bytes();
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
        self.metrics.applied_index.set(gauge_value(last.0));
        self.metrics.commit_index.set(gauge_value(self.raw.commit().0));
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
            if let Some(&ours) = self.client_writes.get(&(client_id, sequence)) {
                let pending = self.take_write(ours).expect("client_writes names a write");
                let _ = pending.reply.send(result.map_err(|error| match error {
                    ApplyError::SessionExpired { .. } => {
                        WriteError::Forgotten { client_id, sequence }
                    }
                    ApplyError::Undecodable { .. } => WriteError::Timeout,
                }));
            }
            return;
        }
        if result.is_ok() {
            self.session_open = true;
        }
        // A write of this node's session (a client-session write never takes this sequence).
        let ours = self.writes.get(&sequence).is_some_and(|pending| pending.client.is_none());
        if let Some(pending) = ours.then(|| self.writes.remove(&sequence)).flatten() {
            let answer = match result {
                Ok(result) => Ok(result),
                Err(ApplyError::SessionExpired { .. } | ApplyError::Undecodable { .. }) => {
                    // The session expired (100,000 others wrote since ours did): whether an
                    // earlier copy applied is unknown. Later writes go in a new session,
                    // opened by them (`open_session`); their sequences go on from here, so
                    // they never share a key of `writes` with a write still waiting.
                    tracing::warn!("session {} expired; opening a new one", self.session);
                    self.session = node_session_id();
                    self.session_open = false;
                    Err(WriteError::Timeout)
                }
            };
            let _ = pending.reply.send(answer);
        }
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
        self.client_writes.clear();
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
    /// The log's sync thread finished a sync; `None` if it stopped (it panicked: the loop
    /// holds its job queue, so it ends no other way).
    Synced(Option<Synced>),
    /// A received snapshot's check ended.
    SnapshotChecked(Checked),
    Tick,
}

/// The loop's own threads' reports: the log's syncs, and the checks of received snapshots.
struct SideChannels<'a> {
    synced: &'a mut mpsc::UnboundedReceiver<Synced>,
    checked: &'a mut mpsc::UnboundedReceiver<Checked>,
}

/// Waits for an input, an event (while the transport is open), the end of a sync or of a
/// snapshot's check, or `wait` to pass.
async fn next_wake(
    inputs: &mut mpsc::Receiver<Input>,
    events: &mut mpsc::Receiver<Event>,
    side: SideChannels<'_>,
    events_open: bool,
    wait: Duration,
) -> Wake {
    tokio::select! {
        outcome = side.synced.recv() => Wake::Synced(outcome),
        // Never `None`: the loop holds a sender.
        Some(checked) = side.checked.recv() => Wake::SnapshotChecked(checked),
        input = inputs.recv() => Wake::Input(input),
        event = events.recv(), if events_open => Wake::Event(event),
        () = tokio::time::sleep(wait) => Wake::Tick,
    }
}
