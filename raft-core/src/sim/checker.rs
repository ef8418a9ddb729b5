//! The safety properties of the Raft paper's Figure 3, checked incrementally as the
//! simulation runs, plus the durability rule of the Ready contract.
//!
//! | property | paper | checked when |
//! |---|---|---|
//! | Election Safety: at most one leader per term | §5.2 | a node becomes leader |
//! | Log Matching: same index and term => same entry and same prefix | §5.3 | an entry enters a log |
//! | Leader Completeness: a leader holds every committed entry | §5.4 | a node becomes leader |
//! | State Machine Safety: one entry per index is ever applied | §5.4.3 | an entry is applied |
//! | Committed entries are never lost or changed | §5.4 | a commit index advances |
//! | Persist before answering | Figure 2, thesis §10.2.1 | a message leaves its node |
//!
//! Log Matching is checked per entry: every (index, term) ever appended anywhere must carry
//! the same payload and follow an entry of the same term. By induction on the index this is
//! the whole-prefix property, without comparing whole logs.

use crate::message::{AppendResult, Message, MessageBody};
use crate::types::{Entry, EntryKind, HardState, Index, NodeId, SnapshotMeta, Term};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt;

/// A broken safety property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property (`"Election Safety"`, ...).
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.property, self.detail)
    }
}

fn violation(property: &'static str, detail: String) -> Result<(), Violation> {
    Err(Violation { property, detail })
}

/// What the checker remembers of one (index, term).
#[derive(Clone, Debug, PartialEq, Eq)]
struct SeenEntry {
    prev_term: Term,
    kind: EntryKind,
    data: Bytes,
}

/// The global record the properties are checked against.
#[derive(Default)]
pub struct Checker {
    leaders: BTreeMap<Term, NodeId>,
    seen: BTreeMap<(Index, Term), SeenEntry>,
    /// `committed[i]` is the entry at index `i + 1` once any node committed it.
    committed: Vec<(Term, Bytes)>,
    /// Reads started and not yet answered: the node asked, and the highest index committed
    /// anywhere when the read started.
    reads: BTreeMap<u64, (NodeId, Index)>,
}

impl Checker {
    /// Election Safety: `node` became leader in `term`.
    pub fn on_leader(&mut self, node: NodeId, term: Term) -> Result<(), Violation> {
        match self.leaders.insert(term, node) {
            Some(other) if other != node => violation(
                "Election Safety",
                format!("nodes {other} and {node} were both leader in term {term}"),
            ),
            _ => Ok(()),
        }
    }

    /// Leader Completeness: the new leader's log (`term_at`) holds every committed entry.
    /// Entries below `first` were compacted into a snapshot of what the node had applied
    /// (checked when applied), so only the log from `first - 1` on is compared.
    pub fn check_leader_log(
        &self,
        node: NodeId,
        term: Term,
        first: Index,
        term_at: impl Fn(Index) -> Option<Term>,
    ) -> Result<(), Violation> {
        for (i, (committed_term, _)) in self.committed.iter().enumerate() {
            let index = Index(i as u64 + 1);
            if index < first.prev() {
                continue;
            }
            let held = term_at(index);
            if held != Some(*committed_term) {
                return violation(
                    "Leader Completeness",
                    format!(
                        "node {node} leads term {term} but holds {held:?} at index {index}, \
                         where term {committed_term} was committed"
                    ),
                );
            }
        }
        Ok(())
    }

    /// Log Matching: `entry` entered `node`'s log right after an entry of `prev_term`.
    pub fn on_append(
        &mut self,
        node: NodeId,
        entry: &Entry,
        prev_term: Term,
    ) -> Result<(), Violation> {
        let seen = SeenEntry { prev_term, kind: entry.kind.clone(), data: entry.data.clone() };
        match self.seen.get(&(entry.index, entry.term)) {
            None => {
                self.seen.insert((entry.index, entry.term), seen);
                Ok(())
            }
            Some(first) if *first == seen => Ok(()),
            Some(first) => violation(
                "Log Matching",
                format!(
                    "node {node} holds entry {} as {seen:?}, elsewhere it is {first:?}",
                    entry.id()
                ),
            ),
        }
    }

    /// Committed entries are never lost or changed: `node` now commits `entries`.
    pub fn on_commit(&mut self, node: NodeId, entries: &[Entry]) -> Result<(), Violation> {
        for entry in entries {
            let slot = entry.index.0 as usize - 1;
            if slot < self.committed.len() {
                let (term, data) = &self.committed[slot];
                if *term != entry.term || *data != entry.data {
                    return violation(
                        "Committed entries are never changed",
                        format!(
                            "node {node} committed {} but term {term} was committed there",
                            entry.id()
                        ),
                    );
                }
            } else if slot == self.committed.len() {
                self.committed.push((entry.term, entry.data.clone()));
            } else {
                return violation(
                    "Commit order",
                    format!("node {node} committed {} past the known commit", entry.id()),
                );
            }
        }
        Ok(())
    }

    /// State Machine Safety: `node` applies `entry` after applying up to `applied`.
    pub fn on_apply(&self, node: NodeId, entry: &Entry, applied: Index) -> Result<(), Violation> {
        if entry.index != applied.next() {
            return violation(
                "State Machine Safety",
                format!("node {node} applied {} after {applied}", entry.index),
            );
        }
        match self.committed.get(entry.index.0 as usize - 1) {
            Some((term, data)) if *term == entry.term && *data == entry.data => Ok(()),
            other => violation(
                "State Machine Safety",
                format!(
                    "node {node} applied {} where the committed entry is {other:?}",
                    entry.id()
                ),
            ),
        }
    }

    /// State Machine Safety across snapshots: a state machine restored from a snapshot ending
    /// at `snapshot.last()` must be the committed history up to there.
    pub fn on_restore(&self, node: NodeId, snapshot: &SnapshotMeta) -> Result<(), Violation> {
        if snapshot.index.0 == 0 {
            return Ok(());
        }
        match self.committed.get(snapshot.index.0 as usize - 1) {
            Some((term, _)) if *term == snapshot.term => Ok(()),
            other => violation(
                "State Machine Safety",
                format!(
                    "node {node} restored a snapshot ending at {} where the committed entry is \
                     {other:?}",
                    snapshot.last()
                ),
            ),
        }
    }

    /// The durability rule: `msg` is leaving `node`, whose durable state is `hard_state` and
    /// whose durable log (snapshot included) ends at `durable_last`.
    pub fn on_send(
        &self,
        msg: &Message,
        hard_state: &HardState,
        durable_last: Index,
    ) -> Result<(), Violation> {
        let durable_term = hard_state.term;
        let stale = |what: &str| {
            violation(
                "Persist before answering",
                format!(
                    "{msg} left while the durable {what} was behind (hard state {hard_state:?})"
                ),
            )
        };
        // A message whose term is behind the durable term is stale but harmless: the node can
        // never act in that term again, even after a restart.
        let behind = durable_term < msg.term;
        let same_term = durable_term == msg.term;
        match &msg.body {
            MessageBody::Vote { .. }
                if behind || (same_term && hard_state.vote != Some(msg.from)) =>
            {
                stale("term and self-vote")
            }
            MessageBody::VoteResponse { granted: true }
                if behind || (same_term && hard_state.vote != Some(msg.to)) =>
            {
                stale("vote")
            }
            MessageBody::AppendResponse(AppendResult::Accepted { match_index })
                if behind || *match_index > durable_last =>
            {
                stale("log")
            }
            // A pre-vote request and a granted pre-vote carry the term asked about (thesis §9.6);
            // a forwarded proposal's term is ignored by its receiver, and a follower's request
            // for a read index promises nothing: the leader's confirmation round decides.
            MessageBody::PreVote { .. }
            | MessageBody::PreVoteResponse { granted: true }
            | MessageBody::Propose { .. }
            | MessageBody::ReadIndex { .. } => Ok(()),
            _ if behind => stale("term"),
            _ => Ok(()),
        }
    }

    /// A read `request` starts at `node`: from now on it must see every entry committed so
    /// far.
    pub fn on_read_start(&mut self, node: NodeId, request: u64) {
        self.reads.insert(request, (node, Index(self.committed.len() as u64)));
    }

    /// Linearizable reads (thesis §6.4): `node` may serve read `request` once it has applied
    /// up to `index`, so `index` must cover every entry committed before the read started.
    pub fn on_read_state(&self, node: NodeId, request: u64, index: Index) -> Result<(), Violation> {
        // The network may duplicate a request or its answer, so a read can be released twice;
        // the host serves the first and ignores the rest, but each must be correct.
        let Some(&(asked_at, floor)) = self.reads.get(&request) else {
            return violation(
                "Linearizable reads",
                format!("node {node} released read {request}, which was never asked for"),
            );
        };
        if asked_at != node {
            return violation(
                "Linearizable reads",
                format!("read {request} asked at node {asked_at} was released at node {node}"),
            );
        }
        if index < floor {
            return violation(
                "Linearizable reads",
                format!(
                    "read {request} at node {node} got index {index}, but {floor} was already \
                     committed when it started: it would miss acknowledged writes"
                ),
            );
        }
        Ok(())
    }

    /// The highest index any node committed.
    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    /// Whether `data` was committed at `index`.
    pub fn is_committed(&self, index: Index, data: &Bytes) -> bool {
        index.0 >= 1 && self.committed.get(index.0 as usize - 1).is_some_and(|(_, d)| d == data)
    }
}
