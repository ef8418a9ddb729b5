//! The nouns of Raft as small newtypes: [`NodeId`], [`Term`], [`Index`], [`EntryId`], and the
//! records built from them: [`Entry`], [`HardState`], [`SoftState`].
//!
//! Newtypes keep a term from being passed where an index is expected; all three are `u64` on
//! the wire and on disk, never `usize`.

use crate::membership::Membership;
use bytes::Bytes;
use std::fmt;

macro_rules! newtype_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

newtype_u64!(
    /// A node's identity in the cluster. `NodeId(0)` is never a valid node.
    NodeId
);
newtype_u64!(
    /// A Raft term (paper §5.1). Terms only ever grow on a node.
    Term
);
newtype_u64!(
    /// A position in the replicated log. The first entry has index 1; index 0 is the empty
    /// prefix every log shares.
    Index
);

impl Term {
    /// The largest term a message may carry. Real clusters never come near it; the bound keeps
    /// `next()` from overflowing however far a faulty peer pushes the term.
    pub const MAX: Term = Term(u64::MAX >> 1);

    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl Index {
    /// The largest index a message may carry (see [`Term::MAX`]).
    pub const MAX: Index = Index(u64::MAX >> 1);

    /// The index after this one.
    pub fn next(self) -> Index {
        Index(self.0 + 1)
    }

    /// The index before this one (saturating at 0).
    pub fn prev(self) -> Index {
        Index(self.0.saturating_sub(1))
    }

    /// `self + n`.
    pub fn plus(self, n: u64) -> Index {
        Index(self.0 + n)
    }
}

/// Identifies one entry: the term it was created in and its position. Two logs that hold an
/// entry with the same id are identical up to and including it (Log Matching, paper §5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
}

impl EntryId {
    /// An entry id from its term and index.
    pub fn new(term: Term, index: Index) -> EntryId {
        EntryId { term, index }
    }

    /// Whether a log whose last entry is `self` is at least as up to date as one whose last
    /// entry is `other` (paper §5.4.1): the later term wins; with equal terms the longer log.
    pub fn is_up_to_date_with(self, other: EntryId) -> bool {
        (self.term, self.index) >= (other.term, other.index)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.term, self.index)
    }
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Application data, handed to the state machine.
    Normal,
    /// The empty entry a new leader appends for its term (paper §8, thesis §6.4): committing it
    /// commits every earlier entry, which Figure 8 forbids doing by counting replicas.
    Noop,
    /// A new configuration (paper §6): in force on a node as soon as it is in its log. Boxed:
    /// configurations are rare, and every other entry stays small to clone and move.
    Config(Box<Membership>),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The term of the leader that created it.
    pub term: Term,
    /// Its position in the log.
    pub index: Index,
    /// What it carries.
    pub kind: EntryKind,
    /// The payload; empty for [`EntryKind::Noop`].
    pub data: Bytes,
}

impl Entry {
    /// This entry's id.
    pub fn id(&self) -> EntryId {
        EntryId::new(self.term, self.index)
    }

    /// The bytes this entry counts for against the size limits of messages and windows.
    pub fn size_bytes(&self) -> u64 {
        let members = match &self.kind {
            EntryKind::Config(membership) => membership.members().len() as u64 * 8,
            EntryKind::Normal | EntryKind::Noop => 0,
        };
        self.data.len() as u64 + ENTRY_HEADER_BYTES + members
    }
}

/// The bytes an entry is counted for beyond its data (and a configuration's members): its
/// header (term, index, kind) on the wire.
pub(crate) const ENTRY_HEADER_BYTES: u64 = 24;

/// What a snapshot of the state machine covers (paper §7): every entry up to `index`, the
/// last of which has `term`, and the configuration at that point. The bytes of
/// the state itself belong to the host; the engine only ever handles this description.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// The last index the snapshot covers (0: no snapshot).
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The configuration as of `index`.
    pub membership: Membership,
}

impl SnapshotMeta {
    /// The id of the last entry the snapshot covers.
    pub fn last(&self) -> EntryId {
        EntryId::new(self.term, self.index)
    }
}

/// The state every node must persist before it answers anybody (paper Figure 2, "Persistent
/// state on all servers"), plus the commit index, which may be persisted lazily.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known committed. Persisting it is an optimisation (fewer entries to
    /// re-apply after a restart); losing it is safe.
    pub commit: Index,
}

/// A node's role (paper §5.1, plus the pre-candidate of thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asks whether it could win an election, without disturbing anybody's term (PreVote).
    PreCandidate,
    /// Asks for votes in a new term.
    Candidate,
    /// Replicates its log to the others.
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(name)
    }
}

/// Volatile state a host may want to show or act on: who leads, and in what role this node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The leader this node knows of in its current term.
    pub leader: Option<NodeId>,
    /// This node's role.
    pub role: Role,
}
