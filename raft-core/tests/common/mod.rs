//! Helpers shared by the integration tests: building nodes with a given durable log, playing an
//! honest host for one Ready, and a small cluster whose messages the test delivers by hand.
//!
//! Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use bytes::Bytes;
use raft_core::{
    Config, Entry, EntryKind, HardState, Index, InitialState, MemLogStore, Message, MessageBody,
    NodeId, RawNode, Ready, Role, Term,
};
use std::collections::{BTreeMap, VecDeque};

/// The node type every test drives.
pub type Node = RawNode<MemLogStore>;

/// Node ids from plain numbers.
pub fn ids(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().map(|&id| NodeId(id)).collect()
}

/// A normal entry at `index` in `term` whose data names its position.
pub fn entry(term: u64, index: u64) -> Entry {
    let data = Bytes::from(format!("{term}/{index}"));
    Entry { term: Term(term), index: Index(index), kind: EntryKind::Normal, data }
}

/// Consecutive entries from index 1 on; `terms[i]` is the term of entry `i + 1`.
pub fn entries_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms.iter().enumerate().map(|(i, &term)| entry(term, i as u64 + 1)).collect()
}

/// `count` copies of `term`, for building long logs with `entries_with_terms`.
pub fn run_of(term: u64, count: usize) -> impl Iterator<Item = u64> {
    std::iter::repeat_n(term, count)
}

/// A node of `voters` with default config (tweaked by `tune`) and an empty log.
pub fn node(id: u64, voters: &[u64], tune: impl FnOnce(&mut Config)) -> Node {
    node_with_log(id, voters, &[], HardState::default(), tune)
}

/// A node that restarts from a durable `log` and `hard_state`.
pub fn node_with_log(
    id: u64,
    voters: &[u64],
    log: &[Entry],
    hard_state: HardState,
    tune: impl FnOnce(&mut Config),
) -> Node {
    let mut config = Config::new(NodeId(id));
    tune(&mut config);
    let mut store = MemLogStore::new();
    store.append(log);
    let initial = InitialState { hard_state, voters: ids(voters), applied: Index(0) };
    RawNode::new(config, store, initial).expect("valid test configuration")
}

/// Plays an honest host for one Ready: installs its snapshot, writes its entries, acknowledges it, applies what it
/// hands out, and returns it so the test can inspect what it carried.
pub fn persist_ready(node: &mut Node) -> Ready {
    let ready = node.ready();
    if let Some(snapshot) = &ready.snapshot {
        node.store_mut().install_snapshot(snapshot);
    }
    node.store_mut().append(&ready.entries);
    node.on_persisted(ready.number);
    if let Some(last) = ready.committed_entries.last() {
        node.on_applied(last.index);
    }
    node.check_invariants().expect("invariants hold");
    ready
}

/// [`persist_ready`] for a test that does not look at the Ready (what it sent is lost).
pub fn process_ready(node: &mut Node) {
    let _ready = persist_ready(node);
}

/// Every message a Ready sends, in the order a host sends them.
pub fn all_messages(ready: &Ready) -> Vec<Message> {
    ready.messages.iter().chain(&ready.messages_after_persist).cloned().collect()
}

/// Whether `messages` holds one of the kind `kind_name` (as in the trace format).
pub fn has_kind(messages: &[Message], kind_name: &str) -> bool {
    messages.iter().any(|m| m.body.kind_name() == kind_name)
}

/// A message from `from` to `to` in `term`.
pub fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// A cluster whose network is a queue the test controls: nothing moves unless the test says.
pub struct Cluster {
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered, oldest first.
    pub queue: VecDeque<Message>,
}

impl Cluster {
    /// Fresh nodes `1..=size` with default config tweaked by `tune`.
    pub fn new(size: u64, tune: impl Fn(&mut Config)) -> Cluster {
        let voters: Vec<u64> = (1..=size).collect();
        let nodes = voters.iter().map(|&id| (NodeId(id), node(id, &voters, &tune))).collect();
        Cluster { nodes, queue: VecDeque::new() }
    }

    /// A cluster from nodes the test built.
    pub fn from_nodes(nodes: Vec<Node>) -> Cluster {
        let nodes = nodes.into_iter().map(|n| (n.id(), n)).collect();
        Cluster { nodes, queue: VecDeque::new() }
    }

    /// The node `id`.
    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&NodeId(id)).expect("node exists")
    }

    /// Handles every node's Ready once, queueing what they send. Returns whether any had one.
    pub fn process_readies(&mut self) -> bool {
        let mut any = false;
        for node in self.nodes.values_mut() {
            if node.has_ready() {
                any = true;
                let ready = persist_ready(node);
                self.queue.extend(all_messages(&ready));
            }
        }
        any
    }

    /// Delivers one message; returns false if the queue was empty.
    pub fn deliver_one(&mut self) -> bool {
        let Some(msg) = self.queue.pop_front() else { return false };
        if let Some(node) = self.nodes.get_mut(&msg.to) {
            node.step(msg).expect("well-formed message");
            node.check_invariants().expect("invariants hold");
        }
        true
    }

    /// Delivers messages and handles Readies until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            let delivered = self.deliver_one();
            if !self.process_readies() && !delivered {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// [`Cluster::stabilize`] with node `id` cut off: every message to or from it is lost.
    pub fn stabilize_without(&mut self, id: u64) {
        let cut_off = NodeId(id);
        for _ in 0..100_000 {
            let any_ready = self.process_readies();
            self.queue.retain(|m| m.to != cut_off && m.from != cut_off);
            if !self.deliver_one() && !any_ready {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Node `id` campaigns and the cluster settles; asserts it won.
    pub fn elect(&mut self, id: u64) {
        self.node(id).campaign();
        self.stabilize();
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} should have won");
    }

    /// Ticks every node once.
    pub fn tick_all(&mut self) {
        for node in self.nodes.values_mut() {
            node.tick();
        }
    }
}
