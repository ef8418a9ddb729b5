//! A deterministic cluster simulator: 3, 5 or 7 nodes in one process, driven from one seed.
//!
//! Every random choice (which node ticks, which message arrives next, which is lost or
//! duplicated, when a node crashes or the network splits) comes from one [`Rng`] seeded with
//! the run's seed, so a seed replays exactly. A run has two phases:
//!
//! 1. **Safety**: `steps` random actions with faults: messages dropped, duplicated, delayed and
//!    reordered; symmetric and one-way partitions; crashes that lose everything not yet
//!    acknowledged durable, and restarts from what was. After every action the
//!    [`checker`] verifies Figure 3's properties and each node's own invariants.
//! 2. **Liveness**: the faults heal; within a bounded number of ticks a leader must emerge,
//!    every node must hold and commit the leader's whole log, and a new proposal must commit
//!    on every node.
//!
//! A failing run reports the seed and a command that replays it with a trace of the last
//! events (the run is deterministic, so the trace is taken by replaying, not by recording
//! every run).

pub mod checker;
pub mod network;

use crate::confchange::ConfChange;
use crate::config::Config;
use crate::message::Message;
use crate::node::{InitialState, Proposed, RawNode};
use crate::ready::Ready;
use crate::rng::Rng;
use crate::storage::{LogStore, MemLogStore};
use crate::types::{HardState, Index, NodeId, Role, Term};
use bytes::Bytes;
use checker::{Checker, Violation};
use network::Network;
use std::collections::VecDeque;
use std::fmt::Write as _;

/// The most Readies one node may hand out in a row while the cluster settles; more means its
/// `has_ready` never clears.
const READIES_PER_SETTLE_MAX: u32 = 10_000;

/// How many trace lines a failure report shows.
pub const TRACE_TAIL: usize = 60;

/// What to simulate. [`SimOptions::from_seed`] derives everything but the seed-independent
/// knobs from the seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The run's seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Actions in the safety phase.
    pub steps: u64,
    /// Per mille of messages dropped.
    pub drop_per_mille: u64,
    /// Per mille of messages duplicated.
    pub duplicate_per_mille: u64,
    /// Per mille of actions that crash a node.
    pub crash_per_mille: u64,
    /// Per mille of actions that change the partition.
    pub partition_per_mille: u64,
    /// PreVote on the nodes.
    pub pre_vote: bool,
    /// CheckQuorum on the nodes.
    pub check_quorum: bool,
    /// Followers forward proposals to the leader (otherwise clients follow the leader hint).
    pub proposal_forwarding: bool,
    /// Per mille of actions in which the leader hands leadership to a random voter.
    pub transfer_per_mille: u64,
    /// Per mille of actions in which a node snapshots its state machine and compacts its log.
    pub compact_per_mille: u64,
    /// Per mille of actions in which the leader proposes a random membership change. When
    /// above 0, nodes 1-3 start as the cluster and the others wait to be added.
    pub membership_per_mille: u64,
    /// Bytes per append message (small values split batches).
    pub append_bytes_max: u64,
    /// Appends in flight per follower.
    pub inflight_msgs_max: usize,
    /// Keep a trace of every event (slower; used to replay failures).
    pub trace: bool,
    /// Check the persist-before-answer rule on every message sent. Turned off only to show
    /// that breaking the rule is also caught later, by the Figure 3 checkers, once a crash
    /// loses what was promised.
    pub check_persist_before_answer: bool,
    /// A rule to break on purpose.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<crate::PlantedBug>,
}

impl SimOptions {
    /// Options derived from `seed`: the cluster size cycles 3, 5, 7 and the fault rates and
    /// engine limits are drawn from the seed.
    pub fn from_seed(seed: u64, steps: u64) -> SimOptions {
        let mut rng = Rng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        let mut options = SimOptions {
            seed,
            nodes: [3, 5, 7][(seed % 3) as usize],
            steps,
            drop_per_mille: rng.below(150),
            duplicate_per_mille: rng.below(50),
            crash_per_mille: 1 + rng.below(5),
            partition_per_mille: 1 + rng.below(8),
            pre_vote: !rng.chance(1, 4),
            check_quorum: !rng.chance(1, 4),
            proposal_forwarding: !rng.chance(1, 4),
            transfer_per_mille: rng.below(4),
            compact_per_mille: [0, 2, 10, 40][rng.below(4) as usize],
            membership_per_mille: [0, 0, 3, 10][rng.below(4) as usize],
            append_bytes_max: [64, 256, 1 << 20][rng.below(3) as usize],
            inflight_msgs_max: [1, 4, 64][rng.below(3) as usize],
            trace: false,
            check_persist_before_answer: true,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        };
        // A removed node that missed its removal keeps campaigning; only PreVote or
        // CheckQuorum's lease keeps it from deposing leaders (thesis §4.2.3).
        if options.membership_per_mille > 0 && !options.pre_vote {
            options.check_quorum = true;
        }
        options
    }

    /// The command line that replays this run with a trace.
    pub fn replay_command(&self) -> String {
        #[allow(unused_mut)]
        let mut cmd = format!(
            "cargo run --release -p raft-core --features testkit,planted-bugs --bin raft-sim -- \
             --seed {} --nodes {} --steps {} --trace",
            self.seed, self.nodes, self.steps
        );
        if !self.check_persist_before_answer {
            cmd.push_str(" --no-persist-check");
        }
        #[cfg(feature = "planted-bugs")]
        if let Some(bug) = self.planted_bug {
            let _ = write!(cmd, " --planted-bug {}", bug.name());
        }
        cmd
    }
}

/// What a run that held every property did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Actions taken in both phases.
    pub actions: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Entries committed.
    pub committed: u64,
    /// Leaders elected.
    pub elections: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Reads released to a host (each checked for linearizability).
    pub reads: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Membership changes the leader accepted.
    pub membership_changes: u64,
    /// Ticks the liveness phase needed to elect a leader and commit a proposal.
    pub liveness_ticks: u64,
    /// The trace, when asked for.
    pub trace: Vec<String>,
}

/// A run that broke a property.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The options of the run.
    pub options: SimOptions,
    /// The action at which it broke.
    pub action: u64,
    /// What broke.
    pub violation: Violation,
    /// Every event up to it, when the run kept a trace (as [`run_with_trace_on_failure`]
    /// makes it). Displaying the failure shows the last [`TRACE_TAIL`] of them.
    pub trace: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at action {}: {}",
            self.options.seed, self.action, self.violation
        )?;
        writeln!(f, "replay: {}", self.options.replay_command())?;
        let tail = &self.trace[self.trace.len().saturating_sub(TRACE_TAIL)..];
        if !tail.is_empty() {
            writeln!(f, "last {} events:", tail.len())?;
            for line in tail {
                writeln!(f, "  {line}")?;
            }
        }
        Ok(())
    }
}

/// One simulated node: the engine while it is up, and what its disk holds.
struct SimNode {
    id: NodeId,
    /// `None` while crashed.
    raw: Option<RawNode<MemLogStore>>,
    /// The store while crashed (while up it lives inside `raw`).
    crashed_store: Option<MemLogStore>,
    /// The durable hard state.
    durable: HardState,
    /// Readies taken (their `messages` already sent) and not yet persisted.
    unpersisted: VecDeque<Ready>,
    /// What the state machine applied (volatile: a crash loses it).
    applied: Index,
    /// The commit index the checker last saw.
    seen_commit: Index,
    /// The role and term the checker last saw.
    seen_role: (Role, Term),
    /// How many times the node was started; each start gets its own timeout seed, as a real
    /// host would draw a fresh one.
    starts: u64,
}

/// A simulated cluster.
pub struct Simulation {
    options: SimOptions,
    rng: Rng,
    nodes: Vec<SimNode>,
    network: Network,
    checker: Checker,
    report: SimReport,
    action: u64,
    proposals: u64,
    reads_asked: u64,
}

impl Simulation {
    /// A cluster of fresh nodes.
    pub fn new(options: SimOptions) -> Simulation {
        let ids: Vec<NodeId> = (1..=options.nodes as u64).map(NodeId).collect();
        let mut sim = Simulation {
            rng: Rng::new(options.seed),
            nodes: Vec::new(),
            network: Network::new(options.drop_per_mille, options.duplicate_per_mille),
            checker: Checker::default(),
            report: SimReport::default(),
            action: 0,
            proposals: 0,
            reads_asked: 0,
            options,
        };
        for id in ids {
            let raw = sim.start_node(id, MemLogStore::new(), HardState::default());
            sim.nodes.push(SimNode {
                id,
                raw: Some(raw),
                crashed_store: None,
                durable: HardState::default(),
                unpersisted: VecDeque::new(),
                applied: Index(0),
                seen_commit: Index(0),
                seen_role: (Role::Follower, Term(0)),
                starts: 1,
            });
        }
        sim
    }

    fn node_config(&self, id: NodeId, starts: u64) -> Config {
        let o = &self.options;
        Config {
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: o.pre_vote,
            check_quorum: o.check_quorum,
            proposal_forwarding: o.proposal_forwarding,
            seed: Rng::with_stream(o.seed, starts).next_u64(),
            append_bytes_max: o.append_bytes_max,
            inflight_msgs_max: o.inflight_msgs_max,
            #[cfg(feature = "planted-bugs")]
            planted_bug: o.planted_bug,
            ..Config::new(id)
        }
    }

    /// The configuration every node starts from before its log says otherwise: with
    /// membership changes, nodes 1-3 form the first cluster and the others wait to be added
    /// (knowing the first configuration, in which they do not vote); without, every node is
    /// a voter.
    fn bootstrap_voters(&self) -> Vec<NodeId> {
        let first = if self.options.membership_per_mille > 0 { 3 } else { self.options.nodes };
        (1..=first as u64).map(NodeId).collect()
    }

    fn start_node(
        &self,
        id: NodeId,
        store: MemLogStore,
        durable: HardState,
    ) -> RawNode<MemLogStore> {
        let voters = self.bootstrap_voters();
        let initial = InitialState { hard_state: durable, voters, applied: Index(0) };
        let config = self.node_config(id, 1);
        RawNode::new(config, store, initial).expect("the simulator's config is valid")
    }

    /// Runs both phases. Returns the report, or the first violation.
    pub fn run(mut self) -> Result<SimReport, Box<SimFailure>> {
        let result = self.safety_phase().and_then(|()| self.liveness_phase());
        match result {
            Ok(()) => Ok(self.report),
            Err(violation) => Err(Box::new(SimFailure {
                options: self.options.clone(),
                action: self.action,
                violation,
                trace: std::mem::take(&mut self.report.trace),
            })),
        }
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.options.trace {
            let line = format!("{:>6} {}", self.action, line());
            self.report.trace.push(line);
        }
    }

    fn safety_phase(&mut self) -> Result<(), Violation> {
        for _ in 0..self.options.steps {
            self.action += 1;
            self.random_action()?;
        }
        Ok(())
    }

    fn random_action(&mut self) -> Result<(), Violation> {
        let o = &self.options;
        if self.rng.chance(o.crash_per_mille, 1000) {
            return self.crash_random();
        }
        if self.rng.chance(o.partition_per_mille, 1000) {
            self.change_partition();
            return Ok(());
        }
        if self.rng.chance(o.transfer_per_mille, 1000) {
            return self.transfer_leadership();
        }
        if self.rng.chance(o.compact_per_mille, 1000) {
            return self.take_snapshot();
        }
        if self.rng.chance(o.membership_per_mille, 1000) {
            return self.change_membership();
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        if self.nodes[i].raw.is_none() {
            // A crashed node comes back after a while.
            return if self.rng.chance(1, 20) { self.restart(i) } else { Ok(()) };
        }
        match self.rng.below(100) {
            0..=24 => self.tick(i),
            25..=59 => self.deliver_one(),
            60..=74 => self.take_ready(i),
            75..=89 => self.persist_one(i),
            90..=95 => self.propose(i),
            _ => self.read(i),
        }
    }

    fn tick(&mut self, i: usize) -> Result<(), Violation> {
        self.trace(|| format!("tick {}", i + 1));
        let raw = self.nodes[i].raw.as_mut().expect("ticked node is up");
        raw.tick();
        self.after_input(i)
    }

    /// A client proposes at node `i`; told of another leader, it retries there once (as a
    /// client following the leader hint would).
    fn propose(&mut self, i: usize) -> Result<(), Violation> {
        self.proposals += 1;
        let data = Bytes::from(format!("v{}", self.proposals));
        let raw = self.nodes[i].raw.as_mut().expect("proposing node is up");
        let mut target = i;
        let mut result = raw.propose(data.clone());
        if let Err(crate::ProposeError::NotLeader { leader: Some(leader) }) = result {
            let j = leader.0 as usize - 1;
            if let Some(raw) = self.nodes[j].raw.as_mut() {
                target = j;
                result = raw.propose(data.clone());
            }
        }
        self.trace(|| format!("propose {} {data:?} -> {result:?}", target + 1));
        self.after_input(target)
    }

    /// A random live node's state machine takes a snapshot at what it has applied, and its
    /// store drops the log up to there, or a few entries less (paper §7).
    fn take_snapshot(&mut self) -> Result<(), Violation> {
        let up: Vec<usize> =
            (0..self.nodes.len()).filter(|&i| self.nodes[i].raw.is_some()).collect();
        let Some(&i) = up.get(self.rng.below(up.len().max(1) as u64) as usize) else {
            return Ok(());
        };
        let keep = self.rng.below(4);
        let raw = self.nodes[i].raw.as_mut().expect("node is up");
        let index = raw.compactable_index();
        if index.0 == 0 {
            return Ok(());
        }
        let membership = raw.membership_at(index);
        let store = raw.store_mut();
        let host_error = |error: crate::StoreError| Violation {
            property: "Host snapshots",
            detail: format!("node {}: {error}", i + 1),
        };
        store.record_snapshot(index, membership).map_err(host_error)?;
        let upto = Index(index.0.saturating_sub(keep)).max(store.first_index().prev());
        store.compact(upto).map_err(host_error)?;
        self.trace(|| format!("snapshot {} at {index}, compacted to {upto}", i + 1));
        self.after_input(i)
    }

    /// The leader proposes a random membership change: grow, shrink, replace a voter, add a
    /// learner, promote one, or several of these at once.
    fn change_membership(&mut self) -> Result<(), Violation> {
        let Some(i) = self.stable_leader() else { return Ok(()) };
        let all: Vec<NodeId> = (1..=self.nodes.len() as u64).map(NodeId).collect();
        let raw = self.nodes[i].raw.as_ref().expect("leader is up");
        let membership = raw.membership().clone();
        let outsiders: Vec<NodeId> =
            all.iter().copied().filter(|id| !membership.members().contains(id)).collect();
        let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
        let learners: Vec<NodeId> = membership.learners.iter().copied().collect();
        let pick = |rng: &mut Rng, from: &[NodeId]| -> Option<NodeId> {
            (!from.is_empty()).then(|| from[rng.below(from.len() as u64) as usize])
        };
        let mut changes = Vec::new();
        for _ in 0..1 + self.rng.below(2) {
            let change = match self.rng.below(5) {
                0 => pick(&mut self.rng, &outsiders).map(ConfChange::AddVoter),
                1 => pick(&mut self.rng, &outsiders).map(ConfChange::AddLearner),
                2 => pick(&mut self.rng, &learners).map(ConfChange::AddVoter),
                3 => pick(&mut self.rng, &voters).map(ConfChange::Remove),
                _ => pick(&mut self.rng, &learners).map(ConfChange::Remove),
            };
            changes.extend(change);
        }
        changes.dedup();
        let raw = self.nodes[i].raw.as_mut().expect("leader is up");
        let result = raw.propose_conf_change(&changes);
        self.report.membership_changes += u64::from(result.is_ok());
        self.trace(|| format!("membership change at {}: {changes:?} -> {result:?}", i + 1));
        self.after_input(i)
    }

    /// A client reads at node `i` (a leader confirms it; a follower asks its leader).
    fn read(&mut self, i: usize) -> Result<(), Violation> {
        self.reads_asked += 1;
        let request = self.reads_asked;
        let node = &mut self.nodes[i];
        let raw = node.raw.as_mut().expect("reading node is up");
        let result = raw.read_index(request);
        if result.is_ok() {
            self.checker.on_read_start(node.id, request);
        }
        self.trace(|| format!("read {} request={request} -> {result:?}", i + 1));
        self.after_input(i)
    }

    /// The leader of the highest term, if up, hands leadership to a random voter.
    fn transfer_leadership(&mut self) -> Result<(), Violation> {
        let Some(i) = self.stable_leader() else { return Ok(()) };
        let to = NodeId(1 + self.rng.below(self.nodes.len() as u64));
        let raw = self.nodes[i].raw.as_mut().expect("leader is up");
        let result = raw.transfer_leadership(to);
        self.trace(|| format!("transfer leadership {} -> {to}: {result:?}", i + 1));
        self.after_input(i)
    }

    fn deliver_one(&mut self) -> Result<(), Violation> {
        let Some(msg) = self.network.take_random(&mut self.rng) else { return Ok(()) };
        let i = msg.to.0 as usize - 1;
        let Some(raw) = self.nodes[i].raw.as_mut() else { return Ok(()) };
        self.report.delivered += 1;
        let line = self.options.trace.then(|| format!("deliver {msg}"));
        let result = raw.step(msg);
        if let Some(line) = line {
            self.trace(|| format!("{line} -> {result:?}"));
        }
        if let Err(error) = result {
            return Err(Violation {
                property: "Engine accepts well-formed messages",
                detail: error.to_string(),
            });
        }
        self.after_input(i)
    }

    /// Takes a Ready: sends its `messages` at once, applies its committed entries, and keeps
    /// the rest until the node persists it.
    fn take_ready(&mut self, i: usize) -> Result<(), Violation> {
        let node = &mut self.nodes[i];
        let raw = node.raw.as_mut().expect("node is up");
        if !raw.has_ready() {
            return Ok(());
        }
        let mut ready = raw.ready();
        let id = node.id;
        if let Some(snapshot) = &ready.snapshot {
            // The host restores its state machine from the snapshot's bytes.
            self.checker.on_restore(id, snapshot)?;
            node.applied = snapshot.index;
            self.report.snapshots_installed += 1;
        }
        for entry in &ready.committed_entries {
            self.checker.on_apply(id, entry, node.applied)?;
            node.applied = entry.index;
        }
        for read in &ready.read_states {
            self.checker.on_read_state(id, read.request, read.index)?;
            self.report.reads += 1;
        }
        if let Some(last) = ready.committed_entries.last() {
            raw.on_applied(last.index);
        }
        let messages = std::mem::take(&mut ready.messages);
        node.unpersisted.push_back(ready);
        if self.options.trace {
            let r = self.nodes[i].unpersisted.back().expect("just pushed");
            let line = describe_ready(i, r, &messages);
            self.trace(|| line);
        }
        for msg in messages {
            self.send(i, msg)?;
        }
        self.after_input(i)
    }

    /// Makes the oldest taken Ready of node `i` durable, then sends what had to wait for it.
    fn persist_one(&mut self, i: usize) -> Result<(), Violation> {
        let node = &mut self.nodes[i];
        let Some(ready) = node.unpersisted.pop_front() else { return Ok(()) };
        let raw = node.raw.as_mut().expect("node is up");
        if let Some(hard_state) = ready.hard_state {
            node.durable = hard_state;
        }
        if let Some(snapshot) = &ready.snapshot {
            raw.store_mut().install_snapshot(snapshot);
        }
        raw.store_mut().append(&ready.entries);
        // Log Matching is checked on durable logs: an entry that was never written (nor
        // sent, see `RawNode::ready`) vanishes in a crash as if it never existed.
        let id = node.id;
        for entry in &ready.entries {
            let prev_term = raw.store().term(entry.index.prev()).unwrap_or_default();
            self.checker.on_append(id, entry, prev_term)?;
        }
        let number = ready.number;
        self.trace(|| format!("persist {} ready #{}", i + 1, number.0));
        for msg in ready.messages_after_persist {
            self.send(i, msg)?;
        }
        self.nodes[i].raw.as_mut().expect("node is up").on_persisted(number);
        self.after_input(i)
    }

    fn send(&mut self, i: usize, msg: Message) -> Result<(), Violation> {
        if self.options.check_persist_before_answer {
            let node = &self.nodes[i];
            let store = node.raw.as_ref().expect("sending node is up").store();
            self.checker.on_send(&msg, &node.durable, store.last_index())?;
        }
        self.network.send(msg, &mut self.rng);
        Ok(())
    }

    fn crash_random(&mut self) -> Result<(), Violation> {
        let up: Vec<usize> =
            (0..self.nodes.len()).filter(|&i| self.nodes[i].raw.is_some()).collect();
        // Keep at least one node up so the run keeps moving.
        if up.len() <= 1 {
            return Ok(());
        }
        let i = up[self.rng.below(up.len() as u64) as usize];
        self.crash(i);
        Ok(())
    }

    /// Crashes node `i`: everything not yet persisted is lost.
    fn crash(&mut self, i: usize) {
        self.trace(|| format!("crash {}", i + 1));
        self.report.crashes += 1;
        let node = &mut self.nodes[i];
        let raw = node.raw.take().expect("crashing node is up");
        node.crashed_store = Some(raw.into_store());
        node.unpersisted.clear();
        node.applied = Index(0);
    }

    /// Restarts node `i` from its durable state.
    fn restart(&mut self, i: usize) -> Result<(), Violation> {
        self.trace(|| format!("restart {}", i + 1));
        let node = &self.nodes[i];
        let store = node.crashed_store.clone().expect("restarting node was crashed");
        let voters = self.bootstrap_voters();
        // The state machine restarts from the store's latest snapshot, if any.
        let snapshot = store.snapshot();
        self.checker.on_restore(node.id, &snapshot)?;
        let initial = InitialState { hard_state: node.durable, voters, applied: snapshot.index };
        let config = self.node_config(node.id, node.starts + 1);
        let raw = RawNode::new(config, store, initial).map_err(|error| Violation {
            property: "Durable state restarts",
            detail: error.to_string(),
        })?;
        let node = &mut self.nodes[i];
        node.seen_commit = raw.commit();
        node.seen_role = (Role::Follower, raw.term());
        node.crashed_store = None;
        node.raw = Some(raw);
        node.starts += 1;
        node.applied = snapshot.index;
        Ok(())
    }

    fn change_partition(&mut self) {
        let all: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        self.network.heal();
        let n = all.len() as u64;
        let line = match self.rng.below(4) {
            0 => "heal".to_string(),
            1 => {
                // A minority (possibly holding the leader) cut off from the rest.
                let size = 1 + self.rng.below(n / 2) as usize;
                let side = self.pick_nodes(&all, size);
                self.network.isolate(&side, &all);
                format!("partition {side:?} from the rest")
            }
            2 => {
                // A bridge: two halves that only one node sees both of.
                let bridge = all[self.rng.below(n) as usize];
                let others: Vec<NodeId> = all.iter().copied().filter(|&id| id != bridge).collect();
                let half = others.len() / 2;
                for &a in &others[..half] {
                    for &b in &others[half..] {
                        self.network.block_one_way(a, b);
                        self.network.block_one_way(b, a);
                    }
                }
                format!("bridge through {bridge}")
            }
            _ => {
                let from = all[self.rng.below(n) as usize];
                let to = all[self.rng.below(n) as usize];
                self.network.block_one_way(from, to);
                format!("cut link {from}->{to} one way")
            }
        };
        self.trace(|| line);
    }

    fn pick_nodes(&mut self, all: &[NodeId], count: usize) -> Vec<NodeId> {
        let mut pool = all.to_vec();
        let mut picked = Vec::new();
        for _ in 0..count {
            let k = self.rng.below(pool.len() as u64) as usize;
            picked.push(pool.swap_remove(k));
        }
        picked.sort();
        picked
    }

    /// After any input to node `i`: its invariants, a new leader's properties, and newly
    /// committed entries.
    fn after_input(&mut self, i: usize) -> Result<(), Violation> {
        let node = &mut self.nodes[i];
        let Some(raw) = node.raw.as_ref() else { return Ok(()) };
        let id = node.id;
        raw.check_invariants().map_err(|detail| Violation {
            property: "Node invariants",
            detail: format!("node {id}: {detail}"),
        })?;
        // A leader counts once its term is durable: before that it has written nothing and
        // sent nothing (`RawNode::ready` holds back every message of an unwritten term), and
        // a crash erases it without a trace; a lone voter may then lead the same term again.
        let role = (raw.role(), raw.term());
        let visible = role.0 != Role::Leader || node.durable.term == role.1;
        if role != node.seen_role && visible {
            node.seen_role = role;
            if role.0 == Role::Leader {
                self.report.elections += 1;
                self.checker.on_leader(id, role.1)?;
                let first = raw.first_index();
                self.checker.check_leader_log(id, role.1, first, |index| raw.log_term(index))?;
                self.trace(|| format!("node {id} is leader of term {}", role.1));
            }
        }
        let node = &mut self.nodes[i];
        let raw = node.raw.as_ref().expect("checked above");
        let commit = raw.commit();
        if commit > node.seen_commit {
            // Entries a snapshot covers were checked when it was restored.
            let lo = node.seen_commit.next().max(raw.first_index());
            let entries = raw.log_entries(lo, commit.next().max(lo), u64::MAX).map_err(|e| {
                Violation { property: "Committed entries are readable", detail: e.to_string() }
            })?;
            node.seen_commit = commit;
            self.checker.on_commit(id, &entries)?;
            self.report.committed = self.checker.committed_len();
        }
        Ok(())
    }

    /// Heals every fault, then requires within a bound: a leader whose whole log every node
    /// holds and has committed (no follower is left behind), and then a new proposal
    /// committed on every node.
    fn liveness_phase(&mut self) -> Result<(), Violation> {
        self.trace(|| "liveness phase: heal everything".to_string());
        self.network.heal();
        self.network.drop_per_mille = 0;
        self.network.duplicate_per_mille = 0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].raw.is_none() {
                self.restart(i)?;
            }
        }
        const TICKS_MAX: u64 = 500;
        let marker = Bytes::from(format!("liveness-{}", self.options.seed));
        let mut proposed_at: Option<(usize, Index)> = None;
        for tick in 1..=TICKS_MAX {
            for i in 0..self.nodes.len() {
                self.action += 1;
                self.tick(i)?;
            }
            self.settle()?;
            let Some(leader) = self.stable_leader() else { continue };
            if !self.converged_on(leader) {
                continue;
            }
            match proposed_at {
                Some((at, index)) if at == leader && self.checker.is_committed(index, &marker) => {
                    self.report.liveness_ticks = tick;
                    self.report.actions = self.action;
                    return Ok(());
                }
                Some((at, _)) if at == leader => {}
                _ => {
                    let raw = self.nodes[leader].raw.as_mut().expect("leader is up");
                    let index = raw.propose(marker.clone()).ok().and_then(Proposed::index);
                    proposed_at = index.map(|index| (leader, index));
                    self.trace(|| format!("liveness proposal at node {} -> {index:?}", leader + 1));
                }
            }
        }
        Err(Violation {
            property: "Liveness",
            detail: format!(
                "within {TICKS_MAX} ticks of healing, no leader brought every node up to its \
                 log and committed a new proposal; nodes: {}",
                self.describe_nodes()
            ),
        })
    }

    /// One line per node: role, term, log and configuration, for failure reports.
    fn describe_nodes(&self) -> String {
        let describe = |n: &SimNode| match &n.raw {
            None => format!("{} down", n.id),
            Some(r) => format!(
                "{} {} term={} commit={} log={}..={} snapshot={} {}",
                n.id,
                r.role(),
                r.term(),
                r.commit(),
                r.first_index(),
                r.last_index(),
                r.store().snapshot().index,
                r.membership()
            ),
        };
        self.nodes.iter().map(describe).collect::<Vec<_>>().join("; ")
    }

    /// Whether every node holds the leader's whole log and has committed all of it.
    fn converged_on(&self, leader: usize) -> bool {
        let raw = self.nodes[leader].raw.as_ref().expect("leader is up");
        let last = raw.last_index();
        let leader_term = raw.log_term(last);
        let members = raw.membership().members();
        self.nodes.iter().filter(|n| members.contains(&n.id)).filter_map(|n| n.raw.as_ref()).all(
            |r| r.commit() == last && r.last_index() == last && r.log_term(last) == leader_term,
        )
    }

    /// The leader of the highest term, if no member of its configuration is in a later term
    /// (a node outside the configuration may be: a removed node that missed its removal).
    fn stable_leader(&self) -> Option<usize> {
        let up = |i: usize| self.nodes[i].raw.as_ref();
        let leader = (0..self.nodes.len())
            .filter(|&i| up(i).is_some_and(|r| r.role() == Role::Leader))
            .max_by_key(|&i| up(i).map(|r| r.term()))?;
        let raw = up(leader)?;
        let members = raw.membership().members();
        let later = self
            .nodes
            .iter()
            .filter(|n| members.contains(&n.id))
            .any(|n| n.raw.as_ref().is_some_and(|r| r.term() > raw.term()));
        (!later).then_some(leader)
    }

    /// Delivers and persists until nothing moves (with no faults left, the cluster settles).
    fn settle(&mut self) -> Result<(), Violation> {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let mut readies = 0;
                while self.nodes[i].raw.as_ref().is_some_and(|r| r.has_ready()) {
                    self.action += 1;
                    readies += 1;
                    if readies > READIES_PER_SETTLE_MAX {
                        return Err(Violation {
                            property: "Liveness",
                            detail: format!(
                                "node {} keeps having a Ready that changes nothing",
                                i + 1
                            ),
                        });
                    }
                    self.take_ready(i)?;
                    moved = true;
                }
                while !self.nodes[i].unpersisted.is_empty() {
                    self.action += 1;
                    self.persist_one(i)?;
                    moved = true;
                }
            }
            while !self.network.is_empty() {
                self.action += 1;
                self.deliver_one()?;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
        Err(Violation { property: "Liveness", detail: "the cluster never settled".to_string() })
    }
}

fn describe_ready(i: usize, ready: &Ready, messages: &[Message]) -> String {
    let mut line = format!("ready {} #{}", i + 1, ready.number.0);
    if let Some(ss) = ready.soft_state {
        let _ = write!(line, " {} leader={:?}", ss.role, ss.leader.map(|l| l.0));
    }
    if let Some(hs) = ready.hard_state {
        let _ = write!(
            line,
            " hard(term={} vote={:?} commit={})",
            hs.term,
            hs.vote.map(|v| v.0),
            hs.commit
        );
    }
    if let (Some(first), Some(last)) = (ready.entries.first(), ready.entries.last()) {
        let _ = write!(line, " entries {}..{}", first.id(), last.id());
    }
    if let Some(last) = ready.committed_entries.last() {
        let _ = write!(line, " apply..{}", last.index);
    }
    for read in &ready.read_states {
        let _ = write!(line, " read {}@{}", read.request, read.index);
    }
    for msg in messages {
        let _ = write!(line, "\n         send {msg}");
    }
    for msg in &ready.messages_after_persist {
        let _ = write!(line, "\n         after persist: {msg}");
    }
    line
}

/// Runs `options`; on a failure, replays the same seed with tracing on to attach the last
/// events before the violation.
pub fn run_with_trace_on_failure(options: SimOptions) -> Result<SimReport, Box<SimFailure>> {
    match Simulation::new(options.clone()).run() {
        Ok(report) => Ok(report),
        Err(failure) if options.trace => Err(failure),
        Err(_) => Simulation::new(SimOptions { trace: true, ..options }).run(),
    }
}
