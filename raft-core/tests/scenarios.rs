//! Golden-trace protocol scenarios (STYLE.md §6, "protocol scenarios").
//!
//! Each file under `tests/scenarios/<topic>/<behaviour>.txt` is a goldenscript: commands that
//! drive a small cluster of [`RawNode`]s over [`MemLogStore`]s, and the trace they print. The
//! host loop here is the honest one of the crate docs (send `messages`, persist, send
//! `messages_after_persist`, `on_persisted`, apply, `on_applied`); the network is an explicit
//! FIFO queue that delivers only when a script says so. Nothing is random: election timeouts
//! come from each node's seeded `Config`, so every run prints the same bytes.
//!
//! Regenerate after an intended change, then review the diff message by message:
//!
//! ```sh
//! UPDATE_GOLDENFILES=1 cargo test -p raft-core --release --test scenarios
//! ```
//!
//! # Commands
//!
//! Node ids are 1..=N. `B` is `true` or `false`.
//!
//! - `add-nodes N [voters=V] [pre_vote=B] [check_quorum=B] [election_ticks=T]
//!   [heartbeat_ticks=T] [append_bytes_max=N] [inflight_msgs_max=N] [read_requests_max=N]
//!   [planted_bug=NAME]`: nodes 1..=N, all starting with the first configuration, voters
//!   1..=V (V = N unless given); nodes V+1..=N are spares, not in it until a `conf-change`
//!   adds them. Every other setting is `Config::new`'s.
//! - `campaign ID`: the node starts an election now (a pre-vote round first if enabled).
//! - `propose ID DATA`: a client write at the node. Prints where it went: appended at
//!   `term/index` by a leader, forwarded to the leader a follower knows (thesis §6.2), or
//!   refused with the `ProposeError`.
//! - `conf-change ID STEP...`: asks the node for a membership change (paper §6), steps in
//!   order, each `add-voter=N`, `add-learner=N` or `remove=N` (goldenscript has no lists).
//!   Prints where the joint entry C_old,new went (`term/index`) or the `ConfChangeError`.
//! - `transfer-leadership FROM TO`: asks node FROM to hand leadership to TO (thesis §3.10).
//!   Prints that the transfer started, or the `TransferError` (TO need not be a node: the
//!   engine's refusal of a non-voter is printed like any other).
//! - `read ID REQUEST`: a client's linearizable read (thesis §6.4) at the node, with the
//!   host's id REQUEST for it. Prints that a leader took it, that a follower asked its leader,
//!   or the `ReadIndexError`.
//! - `snapshot ID`: the node's host snapshots its state machine at `compactable_index()`,
//!   records the snapshot in its store with the configuration at that index
//!   (`membership_at`) and compacts the log up to there (paper §7). Prints the snapshot's last
//!   entry.
//! - `tick ID... [times=N]`: advances the listed clocks together, N ticks (default 1).
//! - `tick-election ID...`: ticks the listed nodes together until one's timer fires (an
//!   election timeout, or a leader's failed CheckQuorum round) and says after how many ticks.
//! - `process-ready ID...`: takes one Ready per node, persists it, sends, applies. A snapshot
//!   from the leader prints as `install snapshot 1/4 voters=(1,2,3)` and is installed in the
//!   store before the Ready's entries; a confirmed read as `read 7 at 4`, with whether the
//!   state machine has applied that far (`serve now`) or the host holds the read until it has
//!   (`wait`, then `serve read 7` after a later apply).
//! - `deliver-msgs [ID...] [from=ID] [drop=ID]...`: delivers queued messages to the IDs (all
//!   if none are given) and drops those to each `drop` ID, in the order they were sent.
//! - `stabilize [ID...]`: process-ready and deliver among the IDs (all if none) until quiet.
//! - `partition ID...`: cuts the listed nodes off from the rest, both ways. `heal` undoes it.
//! - `crash ID`: loses everything the node did not persist. `restart ID`: a new engine over
//!   the durable log and hard state.
//! - `status [ID...]`: role, term, vote, leader, commit, last entry, and the configuration in
//!   force (`voters=(3,4,5)&(1,2,3) learners=(6)`: while joint, C_new & C_old). `log [ID...]`:
//!   entries (after a compaction, `snapshot=T/I` names the last entry the log no longer holds).
//! - `progress ID`: a leader's view of each member it replicates to (learners marked): match,
//!   next, probe, replicate or snapshot (with the index of the snapshot it waits to hear was
//!   installed).
//!
//! Messages print in the engine's trace format (`1->2 Append term=1 prev=1/1 commit=1
//! [1/2 "a"]`); a message lost to a partition or a crashed node prints with `(dropped: ...)`,
//! and identical lost messages are folded into one line with a count (`×15`). After every
//! input, the nodes whose role, term, vote, leader, commit or configuration in force changed
//! print one indented line.
//!
//! Every applied entry is compared across nodes (State Machine Safety, paper §5.4.3), and so is
//! the last entry of every snapshot a node installs: a mismatch fails the script, unless the
//! cluster runs a planted bug, in which case the trace prints the violation (that is what such
//! a script is there to show).

use goldenscript::Context;
use raft_core::tracker::ProgressState;
use raft_core::{
    ConfChange, Config, Entry, EntryId, EntryKind, HardState, Index, InitialState, LogStore,
    MemLogStore, Membership, Message, NodeId, PlantedBug, Proposed, RawNode, ReadState, Role,
    SnapshotMeta, Term,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::error::Error;
use std::fmt::Write as _;

/// The result type of every command.
type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The largest cluster `add-nodes` builds.
const NODES_MAX: u64 = 9;

/// The most ticks one `tick` command takes.
const TICKS_MAX: u32 = 10_000;

/// Bounds `stabilize`, so a livelock fails the script instead of hanging it.
const STABILIZE_ROUNDS_MAX: usize = 1000;

/// The parts of a node's state a trace reports when an input changes them.
#[derive(Clone, PartialEq, Eq)]
struct Summary {
    role: Role,
    term: Term,
    vote: Option<NodeId>,
    leader: Option<NodeId>,
    commit: Index,
    /// The configuration in force (the latest in the log, committed or not).
    membership: Membership,
}

impl Summary {
    /// The summary of `raw` now.
    fn of(raw: &RawNode<MemLogStore>) -> Summary {
        let status = raw.status();
        Summary {
            role: status.soft_state.role,
            term: status.hard_state.term,
            vote: status.hard_state.vote,
            leader: status.soft_state.leader,
            commit: status.hard_state.commit,
            membership: raw.membership().clone(),
        }
    }

    /// What changed from `self` to `after`, as `became candidate, term 2, voted for 2` or
    /// `commit 3, config voters=(3,4,5)`.
    fn changes(&self, after: &Summary) -> Option<String> {
        let mut parts = Vec::new();
        if after.role != self.role {
            parts.push(format!("became {}", after.role));
        }
        if after.term != self.term {
            parts.push(format!("term {}", after.term));
        }
        if after.vote != self.vote || after.term != self.term {
            if let Some(vote) = after.vote {
                parts.push(format!("voted for {vote}"));
            }
        }
        if after.leader != self.leader && after.role != Role::Leader {
            parts.push(format!("leader {}", opt(after.leader)));
        }
        if after.commit != self.commit {
            parts.push(format!("commit {}", after.commit));
        }
        if after.membership != self.membership {
            parts.push(format!("config {}", after.membership));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// One node: the engine while up, and what its disk holds.
struct Node {
    config: Config,
    /// `None` while crashed.
    raw: Option<RawNode<MemLogStore>>,
    /// The log store while crashed (while up it lives inside `raw`).
    down_store: Option<MemLogStore>,
    /// The hard state last persisted.
    durable: HardState,
    /// Confirmed reads the host holds until the state machine applies up to their index.
    /// Host memory: a crash loses them.
    reads_waiting: Vec<ReadState>,
}

impl Node {
    /// The running engine, or an error naming the crashed node.
    fn up(&mut self) -> Result<&mut RawNode<MemLogStore>> {
        let id = self.config.id;
        self.raw.as_mut().ok_or_else(|| format!("node {id} is down").into())
    }
}

/// The cluster, the network between its nodes, and the safety record.
#[derive(Default)]
struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered or dropped, oldest first.
    queue: VecDeque<Message>,
    /// Cut links `(from, to)`: messages on them are dropped at delivery.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// The first entry applied at each index, and the node that applied it.
    applied: BTreeMap<Index, (NodeId, Entry)>,
    /// A planted bug is active: a safety violation is printed rather than failing the script.
    planted_bug: bool,
    /// The first configuration's voters, which every node starts (and restarts) with.
    initial_voters: Vec<NodeId>,
}

impl goldenscript::Runner for Cluster {
    type Command = goldenscript::Command;

    fn run(&mut self, command: &goldenscript::Command, _: &Context) -> Result<String> {
        let mut out = String::new();
        let mut args = Args::new(command);
        match command.name.as_str() {
            "add-nodes" => self.add_nodes(&mut args, &mut out)?,
            "campaign" => self.campaign(&mut args, &mut out)?,
            "propose" => self.propose(&mut args, &mut out)?,
            "conf-change" => self.conf_change(&mut args, &mut out)?,
            "transfer-leadership" => self.transfer_leadership(&mut args, &mut out)?,
            "read" => self.read(&mut args, &mut out)?,
            "snapshot" => self.snapshot(&mut args, &mut out)?,
            "tick" => self.tick(&mut args, &mut out)?,
            "tick-election" => self.tick_election(&mut args, &mut out)?,
            "process-ready" => self.process_ready_cmd(&mut args, &mut out)?,
            "deliver-msgs" => self.deliver_msgs(&mut args, &mut out)?,
            "stabilize" => self.stabilize(&mut args, &mut out)?,
            "partition" => self.partition(&mut args, &mut out)?,
            "heal" => {
                args.finish()?;
                self.cut.clear();
                writeln!(out, "healed")?;
            }
            "crash" => self.crash(&mut args, &mut out)?,
            "restart" => self.restart(&mut args, &mut out)?,
            "status" => self.status(&mut args, &mut out)?,
            "log" => self.log(&mut args, &mut out)?,
            "progress" => self.progress(&mut args, &mut out)?,
            name => return Err(format!("unknown command {name}").into()),
        }
        Ok(out)
    }
}

/// Argument parsing on top of goldenscript's consumer: node ids, typed keys, and a final
/// check that nothing was left over. Every parse failure is an error, never a panic.
struct Args<'a> {
    command: &'a goldenscript::Command,
    inner: goldenscript::ArgumentConsumer<'a>,
}

impl<'a> Args<'a> {
    fn new(command: &'a goldenscript::Command) -> Args<'a> {
        Args { command, inner: command.consume_args() }
    }

    /// The next positional argument, required.
    fn pos(&mut self, what: &str) -> Result<&'a str> {
        self.inner.next_pos().ok_or_else(|| format!("missing {what}").into())
    }

    /// Every remaining positional argument, parsed as a node id.
    fn ids(&mut self) -> Result<Vec<NodeId>> {
        std::iter::from_fn(|| self.inner.next_pos()).map(parse_id).collect()
    }

    /// The value of `key=...`, parsed, if given.
    fn key<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        let Some(value) = self.inner.take_key(key) else { return Ok(None) };
        value.parse().map(Some).map_err(|e| format!("bad {key}={value}: {e}").into())
    }

    /// Every value of a repeatable `key=ID`, parsed as node ids.
    fn key_ids(&mut self, key: &str) -> Result<Vec<NodeId>> {
        let ids = self
            .command
            .args
            .iter()
            .filter_map(|arg| match arg {
                goldenscript::Argument::KeyValue(k, v) if k == key => Some(parse_id(v)),
                _ => None,
            })
            .collect();
        // The consumer drops every `key=` argument at once.
        self.inner.take_key(key);
        ids
    }

    /// Every remaining `key=value` argument, in script order.
    fn keys(&mut self) -> Vec<(&'a str, &'a str)> {
        std::iter::from_fn(|| self.inner.next_key()).collect()
    }

    /// Fails if any argument was not consumed.
    fn finish(&self) -> Result<()> {
        self.inner.reject_next()
    }
}

fn parse_id(s: &str) -> Result<NodeId> {
    match s.parse::<u64>() {
        Ok(id) if id > 0 => Ok(NodeId(id)),
        _ => Err(format!("bad node id {s:?}").into()),
    }
}

/// One step of `conf-change`: `add-voter=N`, `add-learner=N` or `remove=N`.
fn parse_step(key: &str, value: &str) -> Result<ConfChange> {
    let id = parse_id(value)?;
    match key {
        "add-voter" => Ok(ConfChange::AddVoter(id)),
        "add-learner" => Ok(ConfChange::AddLearner(id)),
        "remove" => Ok(ConfChange::Remove(id)),
        _ => Err(format!("unknown step {key}={value}: add-voter, add-learner or remove").into()),
    }
}

/// The node a step names.
fn step_id(step: ConfChange) -> NodeId {
    match step {
        ConfChange::AddVoter(id) | ConfChange::AddLearner(id) | ConfChange::Remove(id) => id,
    }
}

/// `Some(3)` as `3`, `None` as `none`.
fn opt(id: Option<NodeId>) -> String {
    id.map_or_else(|| "none".to_string(), |id| id.to_string())
}

/// Entries as the engine's message trace writes them: `[1/1 noop 1/2 "foo"]`.
fn fmt_entries(entries: &[Entry]) -> String {
    let items: Vec<String> = entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::Noop => format!("{} noop", e.id()),
            EntryKind::Normal => {
                format!("{} \"{}\"", e.id(), String::from_utf8_lossy(&e.data).escape_debug())
            }
            EntryKind::Config(membership) => format!("{} config {membership}", e.id()),
        })
        .collect();
    format!("[{}]", items.join(" "))
}

/// The id of the last entry of `store`.
fn store_last(store: &MemLogStore) -> EntryId {
    let last = store.last_index();
    EntryId::new(store.term(last).unwrap_or_default(), last)
}

/// Every entry of `store`.
fn store_entries(store: &MemLogStore) -> Result<Vec<Entry>> {
    let (first, last) = (store.first_index(), store.last_index());
    if last < first {
        return Ok(Vec::new());
    }
    Ok(store.entries(first, last.next(), u64::MAX)?)
}

/// Each distinct item once, in order of first appearance, with how often it occurs. A node
/// that ticked many times before its Ready was taken sends one heartbeat per tick; the trace
/// shows them as one line with a count.
fn fold_duplicates<T: PartialEq>(items: &[T]) -> Vec<(&T, usize)> {
    let mut folded: Vec<(&T, usize)> = Vec::new();
    for item in items {
        match folded.iter_mut().find(|(seen, _)| *seen == item) {
            Some((_, n)) => *n += 1,
            None => folded.push((item, 1)),
        }
    }
    folded
}

/// ` ×3` for a count above one, nothing otherwise.
fn times(n: usize) -> String {
    if n > 1 {
        format!(" ×{n}")
    } else {
        String::new()
    }
}

/// The settings `add-nodes` takes: `[pre_vote=B] [check_quorum=B] [election_ticks=T]
/// [heartbeat_ticks=T] [append_bytes_max=N] [inflight_msgs_max=N] [read_requests_max=N]
/// [planted_bug=NAME]`. Every other `Config` field keeps the value `Config::new` gives it; the
/// seed is the node id.
struct NodeOptions {
    pre_vote: bool,
    check_quorum: bool,
    election_ticks: u32,
    heartbeat_ticks: u32,
    append_bytes_max: u64,
    inflight_msgs_max: usize,
    read_requests_max: usize,
    planted_bug: Option<PlantedBug>,
}

impl NodeOptions {
    /// The options given in `args`, defaults for the rest.
    fn parse(args: &mut Args) -> Result<NodeOptions> {
        let base = Config::new(NodeId(1));
        let planted_bug = match args.key::<String>("planted_bug")? {
            Some(name) => {
                Some(PlantedBug::from_name(&name).ok_or_else(|| format!("no planted bug {name}"))?)
            }
            None => None,
        };
        Ok(NodeOptions {
            pre_vote: args.key("pre_vote")?.unwrap_or(base.pre_vote),
            check_quorum: args.key("check_quorum")?.unwrap_or(base.check_quorum),
            election_ticks: args.key("election_ticks")?.unwrap_or(base.election_ticks),
            heartbeat_ticks: args.key("heartbeat_ticks")?.unwrap_or(base.heartbeat_ticks),
            append_bytes_max: args.key("append_bytes_max")?.unwrap_or(base.append_bytes_max),
            inflight_msgs_max: args.key("inflight_msgs_max")?.unwrap_or(base.inflight_msgs_max),
            read_requests_max: args.key("read_requests_max")?.unwrap_or(base.read_requests_max),
            planted_bug,
        })
    }

    /// The configuration of node `id`.
    fn config(&self, id: NodeId) -> Config {
        Config {
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            append_bytes_max: self.append_bytes_max,
            inflight_msgs_max: self.inflight_msgs_max,
            read_requests_max: self.read_requests_max,
            planted_bug: self.planted_bug,
            ..Config::new(id)
        }
    }

    /// The timing and election options, and any other option that differs from the default.
    fn describe(&self) -> String {
        let base = Config::new(NodeId(1));
        let mut line = format!(
            "pre_vote={} check_quorum={} election_ticks={} heartbeat_ticks={}",
            self.pre_vote, self.check_quorum, self.election_ticks, self.heartbeat_ticks
        );
        if self.append_bytes_max != base.append_bytes_max {
            line += &format!(" append_bytes_max={}", self.append_bytes_max);
        }
        if self.inflight_msgs_max != base.inflight_msgs_max {
            line += &format!(" inflight_msgs_max={}", self.inflight_msgs_max);
        }
        if self.read_requests_max != base.read_requests_max {
            line += &format!(" read_requests_max={}", self.read_requests_max);
        }
        if let Some(bug) = self.planted_bug {
            line += &format!(" planted_bug={}", bug.name());
        }
        line
    }
}

/// `term=1 vote=1 commit=0`.
fn fmt_hard_state(hs: &HardState) -> String {
    format!("term={} vote={} commit={}", hs.term, opt(hs.vote), hs.commit)
}

impl Cluster {
    /// The node `id`, or an error if there is none.
    fn node(&mut self, id: NodeId) -> Result<&mut Node> {
        self.nodes.get_mut(&id).ok_or_else(|| format!("no node {id}").into())
    }

    /// The listed ids (checked to exist), or every node if none are listed.
    fn ids_or_all(&self, ids: Vec<NodeId>) -> Result<Vec<NodeId>> {
        if ids.is_empty() {
            return Ok(self.nodes.keys().copied().collect());
        }
        self.check_ids(&ids)?;
        Ok(ids)
    }

    /// Fails unless every id names a node.
    fn check_ids(&self, ids: &[NodeId]) -> Result<()> {
        match ids.iter().find(|id| !self.nodes.contains_key(id)) {
            Some(id) => Err(format!("no node {id}").into()),
            None => Ok(()),
        }
    }

    /// The listed ids, at least one, each naming a node.
    fn some_ids(&self, args: &mut Args) -> Result<Vec<NodeId>> {
        let ids = args.ids()?;
        if ids.is_empty() {
            return Err("no node ids given".into());
        }
        self.check_ids(&ids)?;
        Ok(ids)
    }

    /// `add-nodes N [voters=V] [options]`: nodes 1..=N (see [`NodeOptions`]), all starting
    /// with the first configuration: voters 1..=V (V = N unless given). Nodes V+1..=N are
    /// spares: they run, knowing that configuration, in which they do not vote, until a
    /// membership change adds them (paper §6).
    fn add_nodes(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        if !self.nodes.is_empty() {
            return Err("the cluster already has nodes".into());
        }
        let count: u64 = args.pos("node count")?.parse()?;
        if !(1..=NODES_MAX).contains(&count) {
            return Err(format!("a cluster has 1 to {NODES_MAX} nodes").into());
        }
        let voter_count: u64 = args.key("voters")?.unwrap_or(count);
        if !(1..=count).contains(&voter_count) {
            return Err(format!(
                "voters={voter_count}: a cluster of {count} has 1 to {count} voters"
            )
            .into());
        }
        let options = NodeOptions::parse(args)?;
        args.finish()?;
        self.planted_bug = options.planted_bug.is_some();
        self.initial_voters = (1..=voter_count).map(NodeId).collect();
        for id in (1..=count).map(NodeId) {
            let config = options.config(id);
            let voters = self.initial_voters.clone();
            let initial = InitialState { voters, ..InitialState::default() };
            let raw = RawNode::new(config.clone(), MemLogStore::new(), initial)?;
            let node = Node {
                config,
                raw: Some(raw),
                down_store: None,
                durable: HardState::default(),
                reads_waiting: Vec::new(),
            };
            self.nodes.insert(id, node);
        }
        let spares = if voter_count < count {
            let spares: Vec<String> = (voter_count + 1..=count).map(|id| id.to_string()).collect();
            let first = Membership::new(self.initial_voters.iter().copied());
            format!(" (not in {first}: {})", spares.join(","))
        } else {
            String::new()
        };
        writeln!(out, "{count} nodes{spares}: {}", options.describe())?;
        Ok(())
    }

    /// Runs `input` on node `id`, then prints what it changed and checks the invariants.
    fn input(
        &mut self,
        id: NodeId,
        out: &mut String,
        indent: &str,
        input: impl FnOnce(&mut RawNode<MemLogStore>) -> Result<()>,
    ) -> Result<()> {
        let raw = self.node(id)?.up()?;
        let before = Summary::of(raw);
        input(raw)?;
        if let Some(changes) = before.changes(&Summary::of(raw)) {
            writeln!(out, "{indent}{id}: {changes}")?;
        }
        raw.check_invariants().map_err(|e| format!("node {id} invariant broken: {e}"))?;
        Ok(())
    }

    /// `campaign ID`
    fn campaign(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let id = parse_id(args.pos("node id")?)?;
        args.finish()?;
        self.input(id, out, "", |raw| {
            raw.campaign();
            Ok(())
        })
    }

    /// `propose ID DATA`: prints where the entry went, or why it was refused.
    fn propose(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let id = parse_id(args.pos("node id")?)?;
        let data = args.pos("data")?.to_string();
        args.finish()?;
        let mut line = String::new();
        self.input(id, out, "", |raw| {
            line = match raw.propose(data.clone().into()) {
                Ok(Proposed::Appended(index)) => {
                    format!("{id}: proposed {}/{index} {data:?}", raw.term())
                }
                Ok(Proposed::Forwarded(to)) => format!("{id}: forwarded {data:?} to {to}"),
                Err(error) => format!("{id}: refused: {error}"),
            };
            Ok(())
        })?;
        writeln!(out, "{line}")?;
        Ok(())
    }

    /// `conf-change ID STEP...` (paper §6, thesis §4.3): asks node ID for a membership change
    /// of the steps, in order: `add-voter=N`, `add-learner=N`, `remove=N`, each naming a node
    /// of the cluster. Prints where the joint entry C_old,new was appended, or the
    /// `ConfChangeError`; then, since the entry is in force at once, the node's new
    /// configuration.
    fn conf_change(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let id = parse_id(args.pos("node id")?)?;
        let steps: Vec<ConfChange> =
            args.keys().into_iter().map(|(k, v)| parse_step(k, v)).collect::<Result<_>>()?;
        args.finish()?;
        if steps.is_empty() {
            return Err("no steps: add-voter=N, add-learner=N or remove=N".into());
        }
        self.check_ids(&steps.iter().copied().map(step_id).collect::<Vec<_>>())?;
        let (mut line, mut changes) = (String::new(), String::new());
        self.input(id, &mut changes, "", |raw| {
            line = match raw.propose_conf_change(&steps) {
                Ok(index) => format!("{id}: conf change appended at {}/{index}", raw.term()),
                Err(error) => format!("{id}: conf change refused: {error}"),
            };
            Ok(())
        })?;
        writeln!(out, "{line}")?;
        out.push_str(&changes);
        Ok(())
    }

    /// `transfer-leadership FROM TO` (thesis §3.10): prints that FROM started handing
    /// leadership to TO, or why it refused. The TimeoutNow, if TO is already up to date,
    /// waits in FROM's next Ready like any other message.
    fn transfer_leadership(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let from = parse_id(args.pos("node id")?)?;
        let to = parse_id(args.pos("target node id")?)?;
        args.finish()?;
        let mut line = String::new();
        self.input(from, out, "", |raw| {
            line = match raw.transfer_leadership(to) {
                Ok(()) if to == from => {
                    format!("{from}: transfer to itself: no transfer under way")
                }
                Ok(()) => format!("{from}: transferring leadership to {to}"),
                Err(error) => format!("{from}: transfer refused: {error}"),
            };
            Ok(())
        })?;
        writeln!(out, "{line}")?;
        Ok(())
    }

    /// `read ID REQUEST` (thesis §6.4): a client's read at the node. A leader takes it; a
    /// follower asks the leader it knows (the `ReadIndex` waits in its next Ready); the
    /// refusal is printed otherwise. The read's fate shows later, as a `read` line in a Ready.
    fn read(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let id = parse_id(args.pos("node id")?)?;
        let request = args.pos("request id")?;
        let request: u64 = request.parse().map_err(|e| format!("bad request id {request}: {e}"))?;
        args.finish()?;
        let mut line = String::new();
        self.input(id, out, "", |raw| {
            line = match raw.read_index(request) {
                Ok(()) if raw.role() == Role::Leader => format!("{id}: read {request} taken"),
                Ok(()) => format!("{id}: read {request} asked of leader {}", opt(raw.leader())),
                Err(error) => format!("{id}: read {request} refused: {error}"),
            };
            Ok(())
        })?;
        writeln!(out, "{line}")?;
        Ok(())
    }

    /// `snapshot ID` (paper §7): the host snapshots the node's state machine at
    /// `compactable_index()` (applied and durable), records it in the store with the
    /// configuration in force at that index (`membership_at`), and compacts the log up to there.
    fn snapshot(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let id = parse_id(args.pos("node id")?)?;
        args.finish()?;
        let mut line = String::new();
        self.input(id, out, "", |raw| {
            let index = raw.compactable_index();
            if index.0 == 0 {
                return Err(format!("node {id} has applied nothing to snapshot").into());
            }
            // The configuration of the snapshot's own index, not the latest one.
            let membership = raw.membership_at(index);
            let store = raw.store_mut();
            store.record_snapshot(index, membership)?;
            store.compact(index)?;
            let snapshot = store.snapshot();
            line = format!(
                "{id}: snapshot at {} {}; log compacted through {index}",
                snapshot.last(),
                snapshot.membership
            );
            Ok(())
        })?;
        writeln!(out, "{line}")?;
        Ok(())
    }

    /// `tick ID... [times=N]`: the listed clocks advance together.
    fn tick(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let times: u32 = args.key("times")?.unwrap_or(1);
        if times > TICKS_MAX {
            return Err(format!("at most {TICKS_MAX} ticks at a time").into());
        }
        let ids = self.some_ids(args)?;
        args.finish()?;
        for t in 1..=times {
            for &id in &ids {
                let mut line = String::new();
                self.input(id, &mut line, "", |raw| {
                    raw.tick();
                    Ok(())
                })?;
                if let Some(line) = line.strip_suffix('\n') {
                    writeln!(out, "{line} (tick {t})")?;
                }
            }
        }
        Ok(())
    }

    /// `tick-election ID...`: ticks the listed nodes together until one's timer fires: a
    /// follower's or candidate's election timeout (it campaigns), or a leader's CheckQuorum
    /// round that finds no quorum (it steps down). Prints who fired after how many ticks.
    fn tick_election(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let ids = self.some_ids(args)?;
        args.finish()?;
        let mut ticks_max = 0;
        for &id in &ids {
            let node = self.node(id)?;
            ticks_max = ticks_max.max(node.config.election_ticks.saturating_mul(3));
            let raw = node.up()?;
            if raw.role() != Role::Leader && raw.has_ready() {
                return Err(format!("node {id} has an unprocessed Ready; process it first").into());
            }
        }
        for t in 1..=ticks_max {
            let mut fired = false;
            for &id in &ids {
                fired |= self.tick_and_report(id, t, out)?;
            }
            if fired {
                return Ok(());
            }
        }
        Err(format!("no timer fired within {ticks_max} ticks").into())
    }

    /// One tick of `id` for `tick-election`; reports and returns whether its timer fired.
    fn tick_and_report(&mut self, id: NodeId, t: u32, out: &mut String) -> Result<bool> {
        let raw = self.node(id)?.up()?;
        let (before, had_ready) = (Summary::of(raw), raw.has_ready());
        raw.tick();
        raw.check_invariants().map_err(|e| format!("node {id} invariant broken: {e}"))?;
        let after = Summary::of(raw);
        // A leader always has heartbeats to send; only a role change means its timer fired.
        let new_work = before.role != Role::Leader && !had_ready && raw.has_ready();
        let timer = if before.role == Role::Leader { "check-quorum" } else { "election" };
        let what = match before.changes(&after) {
            None if !new_work => return Ok(false),
            None => "campaigns again".to_string(),
            Some(changes) if after.role == before.role => format!("campaigns again, {changes}"),
            Some(changes) => changes,
        };
        writeln!(out, "{id}: {timer} timeout after {t} ticks: {what}")?;
        Ok(true)
    }

    /// `process-ready ID...`
    fn process_ready_cmd(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let ids = self.some_ids(args)?;
        args.finish()?;
        for id in ids {
            if !self.process_ready(id, out)? {
                writeln!(out, "ready {id}: nothing to do")?;
            }
        }
        Ok(())
    }

    /// Takes one Ready from `id` and handles it as the crate docs' host loop does. Returns
    /// false if the node had nothing ready.
    fn process_ready(&mut self, id: NodeId, out: &mut String) -> Result<bool> {
        let Cluster { nodes, queue, .. } = self;
        let node = nodes.get_mut(&id).ok_or_else(|| format!("no node {id}"))?;
        let raw = node.up()?;
        if !raw.has_ready() {
            return Ok(false);
        }
        let rd = raw.ready();
        writeln!(out, "ready {id}:")?;
        if let Some(ss) = rd.soft_state {
            writeln!(out, "  role {}, leader {}", ss.role, opt(ss.leader))?;
        }
        for (msg, n) in fold_duplicates(&rd.messages) {
            writeln!(out, "  send {msg}{}", times(n))?;
        }
        queue.extend(rd.messages);
        if let Some(snapshot) = &rd.snapshot {
            // First in the write: the entries of this Ready follow the snapshot.
            writeln!(out, "  install snapshot {} {}", snapshot.last(), snapshot.membership)?;
            node.up()?.store_mut().install_snapshot(snapshot);
        }
        if let Some(hs) = rd.hard_state {
            writeln!(out, "  persist hard state {}", fmt_hard_state(&hs))?;
            node.durable = hs;
        }
        let raw = node.up()?;
        if !rd.entries.is_empty() {
            writeln!(out, "  persist entries {}", fmt_entries(&rd.entries))?;
            raw.store_mut().append(&rd.entries);
        }
        for (msg, n) in fold_duplicates(&rd.messages_after_persist) {
            writeln!(out, "  send after persist {msg}{}", times(n))?;
        }
        queue.extend(rd.messages_after_persist);
        let number = rd.number;
        self.input(id, out, "  ", |raw| {
            raw.on_persisted(number);
            Ok(())
        })?;
        if let Some(snapshot) = &rd.snapshot {
            self.check_restored(id, snapshot, out)?;
        }
        if let Some(last) = rd.committed_entries.last() {
            writeln!(out, "  apply {}", fmt_entries(&rd.committed_entries))?;
            self.check_applied(id, &rd.committed_entries, out)?;
            self.node(id)?.up()?.on_applied(last.index);
        }
        self.serve_reads(id, rd.read_states, out)?;
        Ok(true)
    }

    /// Step 5 of the host loop: the reads held from earlier Readies that the state machine
    /// has now caught up with are served, then each new confirmed read is served at once if
    /// the state machine has applied up to its index, or held until it has.
    fn serve_reads(&mut self, id: NodeId, reads: Vec<ReadState>, out: &mut String) -> Result<()> {
        let node = self.node(id)?;
        let applied = node.up()?.status().applied;
        let (ready, waiting): (Vec<ReadState>, Vec<ReadState>) =
            std::mem::take(&mut node.reads_waiting)
                .into_iter()
                .partition(|read| read.index <= applied);
        node.reads_waiting = waiting;
        for read in ready {
            writeln!(out, "  serve read {} (applied {applied})", read.request)?;
        }
        for read in reads {
            let (request, index) = (read.request, read.index);
            if index <= applied {
                writeln!(out, "  read {request} at {index} (applied {applied}: serve now)")?;
            } else {
                writeln!(out, "  read {request} at {index} (applied {applied}: wait)")?;
                node.reads_waiting.push(read);
            }
        }
        Ok(())
    }

    /// State Machine Safety across snapshots (paper §7): a state machine restored from a
    /// snapshot must be the applied history up to its last entry, so that entry must be the
    /// one applied at its index elsewhere.
    fn check_restored(
        &mut self,
        id: NodeId,
        snapshot: &SnapshotMeta,
        out: &mut String,
    ) -> Result<()> {
        let Some((first, seen)) = self.applied.get(&snapshot.index) else { return Ok(()) };
        if seen.term == snapshot.term {
            return Ok(());
        }
        let violation = format!(
            "SAFETY VIOLATION (State Machine Safety, §5.4.3, §7): node {id} restored a snapshot \
             ending at {} where node {first} applied {}",
            snapshot.last(),
            fmt_entries(std::slice::from_ref(seen)),
        );
        if !self.planted_bug {
            return Err(violation.into());
        }
        writeln!(out, "  {violation}")?;
        Ok(())
    }

    /// State Machine Safety (paper §5.4.3): no two nodes apply different entries at one index.
    fn check_applied(&mut self, id: NodeId, entries: &[Entry], out: &mut String) -> Result<()> {
        for entry in entries {
            let (first, seen) = self.applied.entry(entry.index).or_insert((id, entry.clone()));
            if seen != entry {
                let violation = format!(
                    "SAFETY VIOLATION (State Machine Safety, §5.4.3): node {id} applied {} \
                     at index {} where node {first} applied {}",
                    fmt_entries(std::slice::from_ref(entry)),
                    entry.index,
                    fmt_entries(std::slice::from_ref(seen)),
                );
                if !self.planted_bug {
                    return Err(violation.into());
                }
                writeln!(out, "  {violation}")?;
            }
        }
        Ok(())
    }

    /// `deliver-msgs [ID...] [from=ID] [drop=ID]...` (etcd-raft's `deliver-msgs`): delivers
    /// queued messages addressed to the IDs and drops those addressed to a `drop` ID, in the
    /// order they were sent; with neither, delivers everything queued. `from` limits both to
    /// one sender.
    fn deliver_msgs(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let from: Option<NodeId> = args.key::<String>("from")?.map(|s| parse_id(&s)).transpose()?;
        let drop = args.key_ids("drop")?;
        let to = args.ids()?;
        args.finish()?;
        self.check_ids(&to)?;
        self.check_ids(&drop)?;
        if let Some(id) = to.iter().find(|id| drop.contains(id)) {
            return Err(format!("cannot both deliver and drop messages to {id}").into());
        }
        let all = to.is_empty() && drop.is_empty();
        let selected =
            self.take_queued(|m| from.is_none_or(|f| m.from == f) && (all || to.contains(&m.to)));
        let dropped =
            self.take_queued(|m| from.is_none_or(|f| m.from == f) && drop.contains(&m.to));
        for (msg, n) in fold_duplicates(&dropped) {
            writeln!(out, "{msg}{} (dropped)", times(n))?;
        }
        self.deliver_batch(selected, out)
    }

    /// Removes and returns the queued messages that `pick` selects, oldest first.
    fn take_queued(&mut self, pick: impl Fn(&Message) -> bool) -> Vec<Message> {
        let (taken, kept): (VecDeque<Message>, VecDeque<Message>) =
            std::mem::take(&mut self.queue).into_iter().partition(pick);
        self.queue = kept;
        taken.into()
    }

    /// Delivers `msgs` in order. Those the partition or a crash loses are printed first,
    /// duplicates folded (they change nothing, so their place in the order does not matter).
    fn deliver_batch(&mut self, msgs: Vec<Message>, out: &mut String) -> Result<()> {
        let mut lost = Vec::new();
        let mut live = Vec::new();
        for msg in msgs {
            if self.cut.contains(&(msg.from, msg.to)) {
                lost.push((msg, "partition".to_string()));
            } else if self.node(msg.to)?.raw.is_none() {
                let reason = format!("{} is down", msg.to);
                lost.push((msg, reason));
            } else {
                live.push(msg);
            }
        }
        for ((msg, reason), n) in fold_duplicates(&lost) {
            writeln!(out, "{msg}{} (dropped: {reason})", times(n))?;
        }
        for msg in live {
            writeln!(out, "{msg}")?;
            let to = msg.to;
            self.input(to, out, "  ", |raw| {
                // The harness only delivers what the engine itself sent: a refusal is a bug.
                raw.step(msg).map_err(|e| format!("node {to} refused a message: {e}").into())
            })?;
        }
        Ok(())
    }

    /// `stabilize [ID...]`: among the listed nodes (all if none), processes Readies and
    /// delivers messages until nothing moves. Messages to other nodes stay queued.
    fn stabilize(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let ids = args.ids()?;
        args.finish()?;
        let ids = self.ids_or_all(ids)?;
        for _ in 0..STABILIZE_ROUNDS_MAX {
            let mut moved = false;
            for &id in &ids {
                if self.node(id)?.raw.is_some() {
                    moved |= self.process_ready(id, out)?;
                }
            }
            let msgs = self.take_queued(|m| ids.contains(&m.to));
            moved |= !msgs.is_empty();
            self.deliver_batch(msgs, out)?;
            if !moved {
                return Ok(());
            }
        }
        Err(format!("not stable after {STABILIZE_ROUNDS_MAX} rounds").into())
    }

    /// `partition ID...`: the listed nodes on one side, the rest on the other.
    fn partition(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let side: BTreeSet<NodeId> = self.some_ids(args)?.into_iter().collect();
        args.finish()?;
        let rest: BTreeSet<NodeId> =
            self.nodes.keys().copied().filter(|id| !side.contains(id)).collect();
        self.cut.clear();
        for &a in &side {
            for &b in &rest {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
        let group = |ids: &BTreeSet<NodeId>| {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            format!("({})", ids.join(","))
        };
        writeln!(out, "partitioned: {} {}", group(&side), group(&rest))?;
        Ok(())
    }

    /// `crash ID`: the engine and everything it did not hand out to persist are lost; the
    /// log store and the last persisted hard state survive.
    fn crash(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let id = parse_id(args.pos("node id")?)?;
        args.finish()?;
        let node = self.node(id)?;
        let raw = node.raw.take().ok_or_else(|| format!("node {id} is already down"))?;
        let (hard_state, last) = (raw.status().hard_state, raw.last_index());
        let store = raw.into_store();
        let durable_last = store_last(&store);
        writeln!(
            out,
            "{id}: crashed; durable {} last={durable_last}",
            fmt_hard_state(&node.durable)
        )?;
        if hard_state != node.durable || last != durable_last.index {
            writeln!(
                out,
                "  lost (never persisted): {} last index {last}",
                fmt_hard_state(&hard_state)
            )?;
        }
        node.down_store = Some(store);
        node.reads_waiting.clear();
        Ok(())
    }

    /// `restart ID`: a new engine over the durable log and hard state, with a state machine
    /// restored from the store's latest snapshot (or empty, applied = 0, without one) that
    /// replays the committed log after it. Like every node, it starts from the first
    /// configuration; the engine finds later ones in the snapshot and the log.
    fn restart(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let id = parse_id(args.pos("node id")?)?;
        args.finish()?;
        let voters = self.initial_voters.clone();
        let node = self.node(id)?;
        let store = node.down_store.take().ok_or_else(|| format!("node {id} is not down"))?;
        let last = store_last(&store);
        let applied = store.snapshot().index;
        let initial = InitialState { hard_state: node.durable, voters, applied };
        node.raw = Some(RawNode::new(node.config.clone(), store, initial)?);
        writeln!(out, "{id}: restarted; {} last={last}", fmt_hard_state(&node.durable))?;
        Ok(())
    }

    /// `status [ID...]`: role, term, vote, leader, commit, last entry, and the configuration
    /// in force.
    fn status(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let ids = args.ids()?;
        args.finish()?;
        for id in self.ids_or_all(ids)? {
            let node = self.node(id)?;
            let Some(raw) = node.raw.as_ref() else {
                let store = node.down_store.as_ref().ok_or("a down node keeps its store")?;
                let durable = fmt_hard_state(&node.durable);
                writeln!(out, "{id}: down; durable {durable} last={}", store_last(store))?;
                continue;
            };
            let s = Summary::of(raw);
            let last = raw.last_index();
            let last = EntryId::new(raw.log_term(last).unwrap_or_default(), last);
            writeln!(
                out,
                "{id}: {} term={} vote={} leader={} commit={} last={last} {}",
                s.role,
                s.term,
                opt(s.vote),
                opt(s.leader),
                s.commit,
                s.membership
            )?;
        }
        Ok(())
    }

    /// `progress ID`: the leader's view of each member it replicates to, voter or learner
    /// (paper §5.3 matchIndex, nextIndex), and its flow-control state.
    fn progress(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let id = parse_id(args.pos("node id")?)?;
        args.finish()?;
        let raw = self.node(id)?.up()?;
        if raw.role() != Role::Leader {
            return Err(format!("node {id} is not the leader").into());
        }
        let membership = raw.membership();
        let peers: Vec<NodeId> = membership.members().into_iter().filter(|&p| p != id).collect();
        for peer in peers {
            let learner = if membership.learners.contains(&peer) { " (learner)" } else { "" };
            let pr = raw.progress(peer).ok_or_else(|| format!("no progress for {peer}"))?;
            let state: String = match pr.state {
                ProgressState::Probe if pr.probe_sent => "probe (waiting for an answer)".into(),
                ProgressState::Probe => "probe".into(),
                ProgressState::Replicate => "replicate".into(),
                ProgressState::Snapshot { index, .. } => {
                    format!("snapshot {index} (waiting for the install)")
                }
            };
            writeln!(
                out,
                "{id}->{peer}: match={} next={} {state} inflight={}{learner}",
                pr.match_index,
                pr.next_index,
                pr.inflights.count()
            )?;
        }
        Ok(())
    }

    /// `log [ID...]`: each node's log (a down node's durable log); `snapshot=T/I` names the
    /// last entry compacted away, if any.
    fn log(&mut self, args: &mut Args, out: &mut String) -> Result<()> {
        let ids = args.ids()?;
        args.finish()?;
        for id in self.ids_or_all(ids)? {
            let node = self.node(id)?;
            let (entries, compacted, commit, state) = match node.raw.as_ref() {
                Some(raw) => {
                    let first = raw.first_index();
                    let compacted =
                        EntryId::new(raw.log_term(first.prev()).unwrap_or_default(), first.prev());
                    let entries = raw.log_entries(first, raw.last_index().next(), u64::MAX)?;
                    (entries, compacted, raw.commit(), "")
                }
                None => {
                    let store = node.down_store.as_ref().ok_or("a down node keeps its store")?;
                    let before = store.first_index().prev();
                    let compacted = EntryId::new(store.term(before)?, before);
                    (store_entries(store)?, compacted, node.durable.commit, " (down)")
                }
            };
            let snapshot = if compacted.index.0 > 0 {
                format!(" snapshot={compacted}")
            } else {
                String::new()
            };
            writeln!(out, "{id}{state}: commit={commit}{snapshot} {}", fmt_entries(&entries))?;
        }
        Ok(())
    }
}

/// Runs one scenario file under `tests/scenarios/`.
fn run_scenario(path: &str) {
    let full = format!("{}/tests/scenarios/{path}", env!("CARGO_MANIFEST_DIR"));
    if let Err(error) = goldenscript::run(&mut Cluster::default(), &full) {
        panic!("{path}: {error}");
    }
}

/// Bad script input is an error from the runner (goldenscript reports it with the line
/// number), never a panic.
#[test]
fn bad_input_is_an_error_not_a_panic() {
    let cases = [
        "campaign 1\n---\n",
        "add-nodes 0\n---\n",
        "add-nodes 3 election_ticks=1\n---\n",
        "add-nodes 3 planted_bug=nope\n---\n",
        "add-nodes 3 pre_vote=maybe\n---\n",
        "add-nodes 3\n---\n\nadd-nodes 3\n---\n",
        "add-nodes 3\n---\n\ntick 4\n---\n",
        "add-nodes 3\n---\n\ntick 1 times=x\n---\n",
        "add-nodes 3\n---\n\ntick 1 times=4000000000\n---\n",
        "add-nodes 3\n---\n\ndeliver-msgs 1 drop=1\n---\n",
        "add-nodes 3\n---\n\ndeliver-msgs drop=0\n---\n",
        "add-nodes 3\n---\n\ncrash 1\n---\n\ncrash 1\n---\n",
        "add-nodes 3\n---\n\ncrash 1\n---\n\ncampaign 1\n---\n",
        "add-nodes 3\n---\n\nrestart 1\n---\n",
        "add-nodes 3\n---\n\nprogress 1\n---\n",
        "add-nodes 3\n---\n\npropose 1\n---\n",
        "add-nodes 3\n---\n\nstatus x\n---\n",
        "add-nodes 3\n---\n\nstatus 1 extra=1\n---\n",
        "add-nodes 3\n---\n\nfly 1\n---\n",
        "add-nodes 3\n---\n\ntransfer-leadership 1\n---\n",
        "add-nodes 3\n---\n\ntransfer-leadership 1 x\n---\n",
        "add-nodes 3\n---\n\ntransfer-leadership 1 0\n---\n",
        "add-nodes 3\n---\n\ntransfer-leadership 4 1\n---\n",
        "add-nodes 3\n---\n\ntransfer-leadership 1 2 3\n---\n",
        "add-nodes 3\n---\n\ntransfer-leadership 1 2 times=2\n---\n",
        "add-nodes 3\n---\n\ncrash 1\n---\n\ntransfer-leadership 1 2\n---\n",
        "add-nodes 3\n---\n\nread 1\n---\n",
        "add-nodes 3\n---\n\nread 1 x\n---\n",
        "add-nodes 3\n---\n\nread 1 -1\n---\n",
        "add-nodes 3\n---\n\nread 4 1\n---\n",
        "add-nodes 3\n---\n\nread 1 2 3\n---\n",
        "add-nodes 3\n---\n\ncrash 1\n---\n\nread 1 1\n---\n",
        "add-nodes 3 read_requests_max=0\n---\n",
        "add-nodes 3 read_requests_max=x\n---\n",
        "add-nodes 3\n---\n\nsnapshot\n---\n",
        "add-nodes 3\n---\n\nsnapshot 0\n---\n",
        "add-nodes 3\n---\n\nsnapshot 1 2\n---\n",
        "add-nodes 3\n---\n\ncrash 1\n---\n\nsnapshot 1\n---\n",
        // Nothing applied yet: there is no state to snapshot.
        "add-nodes 3\n---\n\nsnapshot 1\n---\n",
        // Spares, and membership changes: the steps must parse and name nodes of the cluster.
        "add-nodes 3 voters=0\n---\n",
        "add-nodes 3 voters=4\n---\n",
        "add-nodes 3 voters=x\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change 1\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change x add-voter=4\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change 6 add-voter=4\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change 1 add-voter=x\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change 1 add-voter=0\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change 1 add-voter=6\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change 1 remove=6\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change 1 promote=4\n---\n",
        "add-nodes 5 voters=3\n---\n\nconf-change 1 add-voter=4 5\n---\n",
        "add-nodes 5 voters=3\n---\n\ncrash 1\n---\n\nconf-change 1 add-voter=4\n---\n",
        // A leader without CheckQuorum has no timer that could fire.
        "add-nodes 1 check_quorum=false\n---\n\ncampaign 1\n---\n\ntick-election 1\n---\n",
    ];
    for script in cases {
        let result = goldenscript::generate(&mut Cluster::default(), script);
        assert!(result.is_err(), "{script:?} should fail, got {result:?}");
    }
}

/// One `#[test]` per scenario file, named after it, plus a test that no file is left out.
macro_rules! scenarios {
    ($($name:ident => $path:literal,)*) => {
        $(
            #[doc = concat!("Runs `tests/scenarios/", $path, "`.")]
            #[test]
            fn $name() {
                run_scenario($path);
            }
        )*

        /// Every `.txt` file under `tests/scenarios/` has a test above.
        #[test]
        fn every_scenario_file_has_a_test() {
            let listed: BTreeSet<&str> = [$($path),*].into_iter().collect();
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
            for file in scenario_files(&root) {
                let rel = file.strip_prefix(&root).expect("under the root");
                let rel = rel.to_string_lossy().replace('\\', "/");
                assert!(listed.contains(rel.as_str()), "{rel} has no test in scenarios.rs");
            }
        }
    };
}

/// The `.txt` files under `dir`, recursively, sorted.
fn scenario_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("the scenarios directory is readable")
        .map(|entry| entry.expect("a readable directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(scenario_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "txt") {
            files.push(path);
        }
    }
    files
}

scenarios! {
    election_basic => "election/basic.txt",
    election_split_vote => "election/split_vote.txt",
    election_prevote_disruptive_rejoin => "election/prevote_disruptive_rejoin.txt",
    election_no_prevote_disruption => "election/no_prevote_disruption.txt",
    election_check_quorum_step_down => "election/check_quorum_step_down.txt",
    replication_log_repair => "replication/log_repair.txt",
    replication_figure8 => "replication/figure8.txt",
    replication_figure8_planted_bug => "replication/figure8_planted_bug.txt",
    leadership_transfer => "leadership/transfer.txt",
    leadership_transfer_timeout => "leadership/transfer_timeout.txt",
    leadership_forwarding => "leadership/forwarding.txt",
    snapshot_install => "snapshot/install.txt",
    snapshot_consistent_suffix => "snapshot/consistent_suffix.txt",
    reads_leader => "reads/leader.txt",
    reads_follower => "reads/follower.txt",
    membership_joint_change => "membership/joint_change.txt",
    membership_remove_leader => "membership/remove_leader.txt",
    membership_promote_learner => "membership/promote_learner.txt",
    membership_one_at_a_time => "membership/one_at_a_time.txt",
}
