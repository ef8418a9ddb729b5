//! The key-value state: an ordered map from key to value and the revision that last wrote it,
//! changed only by applying committed log entries, in log order, identically on every node.

use crate::key::Key;
use crate::session::{Check, Sessions};
use bytes::Bytes;
use imbl::OrdMap;
use kv_proto::kv::{command::Op, Command};
use prost::Message as _;
use std::ops::Bound;

/// A stored value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The value.
    pub value: Bytes,
    /// The log index of the write that set it.
    pub mod_revision: u64,
}

/// How to reach a member: the member table's row for one node id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its advertised peer address (host:port).
    pub peer_address: String,
    /// Its advertised client address (host:port).
    pub client_address: String,
    /// It joined to vote: while it is a learner, the leader promotes it once its log has
    /// caught up.
    pub promote: bool,
}

impl Member {
    /// Whether `other` has the same name and addresses.
    pub fn same_addresses(&self, other: &Member) -> bool {
        self.name == other.name
            && self.peer_address == other.peer_address
            && self.client_address == other.client_address
    }
}

/// The result of a write, as the client gets it. `revision` is always the log index of the
/// write's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// The key now holds the value.
    Put {
        /// The entry's index.
        revision: u64,
    },
    /// The key is absent now; `deleted` if it was present.
    Delete {
        /// Whether there was a value to delete.
        deleted: bool,
        /// The entry's index.
        revision: u64,
    },
    /// The member table changed (or, for an allocating SetMember, was refused).
    Member {
        /// The entry's index.
        revision: u64,
        /// The member's id; 0 if an allocating SetMember was refused (name or address taken).
        id: u64,
    },
    /// The value was written if the current one matched.
    CompareAndSet {
        /// Whether the value was written.
        succeeded: bool,
        /// The value found when the comparison failed (absent if the key was absent).
        current: Option<Bytes>,
        /// The entry's index.
        revision: u64,
    },
}

/// Why an entry changed nothing. Deterministic: every replica refuses the same entries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The entry's data is not a command (a bug or a foreign writer; never from a client).
    #[error("entry {index} holds no valid command: {reason}")]
    Undecodable {
        /// The entry.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// A retried write whose first result is forgotten (acknowledged by the client, or its
    /// session expired): it may or may not have been applied, and is not applied again.
    #[error("session {client_id}: the result of write {sequence} is no longer known")]
    SessionExpired {
        /// The client.
        client_id: u64,
        /// The write.
        sequence: u64,
    },
}

/// The state machine. Cloning is O(1) (persistent maps share structure), so a snapshot can be
/// written from a clone while entries keep being applied to the original.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    pub(crate) map: OrdMap<Key, Stored>,
    pub(crate) sessions: Sessions,
    pub(crate) members: OrdMap<u64, Member>,
    /// The next id an allocating SetMember may give: ids are never reused.
    pub(crate) next_member_id: u64,
    pub(crate) applied: u64,
}

impl KvState {
    /// An empty state, nothing applied.
    pub fn new() -> KvState {
        KvState::default()
    }

    /// The index of the last entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// No member id below this one is ever allocated again: every id the table has held, and
    /// every id given by a join, is below it.
    pub fn next_member_id(&self) -> u64 {
        self.next_member_id
    }

    /// The member table: how to reach each node id.
    pub fn members(&self) -> &OrdMap<u64, Member> {
        &self.members
    }

    /// Empties the member table, for a state restored from a backup into a new cluster:
    /// the new cluster's members write their own rows as they start. Ids stay unique: none
    /// below `first_free` (past the new cluster's own), nor below any the backup used, is
    /// allocated again.
    pub fn forget_members(&mut self, first_free: u64) {
        self.members = OrdMap::new();
        self.next_member_id = self.next_member_id.max(first_free);
    }

    /// The client sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Marks an entry that carries no command (a no-op or a configuration) as applied.
    ///
    /// # Panics
    /// If `index` is not the next index to apply: entries are applied in log order, once.
    pub fn skip(&mut self, index: u64) {
        self.advance(index);
    }

    fn advance(&mut self, index: u64) {
        assert!(
            index == self.applied + 1,
            "entry {index} applied after {}: entries apply in order, once",
            self.applied
        );
        self.applied = index;
    }

    /// Applies the command in entry `index`'s data. A retried write of a session gets its
    /// first result and changes nothing.
    ///
    /// # Panics
    /// If `index` is not the next index to apply.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Result<WriteResult, ApplyError> {
        match Command::decode(data) {
            Ok(command) => self.apply_command(index, command),
            Err(e) => {
                self.advance(index);
                Err(ApplyError::Undecodable { index, reason: e.to_string() })
            }
        }
    }

    /// As [`KvState::apply`], for a command the host decoded already (to recognize its own
    /// writes by their session).
    ///
    /// # Panics
    /// If `index` is not the next index to apply.
    pub fn apply_command(
        &mut self,
        index: u64,
        command: Command,
    ) -> Result<WriteResult, ApplyError> {
        self.advance(index);
        let op = command
            .op
            .ok_or_else(|| ApplyError::Undecodable { index, reason: "no operation".into() })?;
        let (client_id, sequence) = (command.client_id, command.sequence);
        if client_id == 0 {
            return Ok(self.execute(index, op));
        }
        match self.sessions.check(client_id, sequence, command.open_session) {
            Check::Duplicate(result) => Ok(result),
            Check::Forgotten => Err(ApplyError::SessionExpired { client_id, sequence }),
            Check::Fresh => {
                let result = self.execute(index, op);
                let acked_below = command.acked_below;
                self.sessions.record(client_id, sequence, acked_below, index, result.clone());
                Ok(result)
            }
        }
    }

    fn execute(&mut self, index: u64, op: Op) -> WriteResult {
        match op {
            Op::Put(put) => {
                self.map
                    .insert(Key::from(put.key), Stored { value: put.value, mod_revision: index });
                WriteResult::Put { revision: index }
            }
            Op::Delete(delete) => {
                let deleted = self.map.remove(delete.key.as_ref()).is_some();
                WriteResult::Delete { deleted, revision: index }
            }
            Op::SetMember(member) => {
                let taken = self
                    .members
                    .values()
                    .any(|m| m.name == member.name || m.peer_address == member.peer_address);
                let id = match (member.allocate, taken) {
                    (true, true) => return WriteResult::Member { revision: index, id: 0 },
                    (true, false) => {
                        let above_rows = self.members.keys().max().map_or(1, |id| id + 1);
                        self.next_member_id.max(member.min_id).max(above_rows)
                    }
                    (false, _) => member.id,
                };
                self.next_member_id = self.next_member_id.max(id.saturating_add(1));
                let kept = self.members.get(&id).is_some_and(|row| row.promote);
                let row = Member {
                    name: member.name,
                    peer_address: member.peer_address,
                    client_address: member.client_address,
                    promote: if member.allocate { member.promote } else { kept },
                };
                self.members.insert(id, row);
                WriteResult::Member { revision: index, id }
            }
            Op::RemoveMember(member) => {
                self.members.remove(&member.id);
                WriteResult::Member { revision: index, id: member.id }
            }
            Op::CompareAndSet(cas) => {
                let current = self.map.get(cas.key.as_ref()).map(|stored| stored.value.clone());
                if current == cas.expected {
                    let stored = Stored { value: cas.value, mod_revision: index };
                    self.map.insert(Key::from(cas.key), stored);
                    WriteResult::CompareAndSet { succeeded: true, current: None, revision: index }
                } else {
                    WriteResult::CompareAndSet { succeeded: false, current, revision: index }
                }
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Stored> {
        self.map.get(key)
    }

    /// Keys starting with `prefix` and greater than `start_after` (if not empty), in order,
    /// at most `limit` of them (0: no limit).
    pub fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        start_after: &[u8],
        limit: usize,
    ) -> impl Iterator<Item = (&'a Key, &'a Stored)> + 'a {
        let start = if start_after.is_empty() || start_after < prefix {
            Bound::Included(prefix)
        } else {
            Bound::Excluded(start_after)
        };
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.map
            .range::<_, [u8]>((start, Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .take(limit)
    }
}

/// Encodes a command for a log entry.
pub fn encode_command(command: &Command) -> Vec<u8> {
    command.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_proto::kv::{CompareAndSet, Delete, Put};

    fn put(key: &str, value: &str) -> Op {
        Op::Put(Put {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
        })
    }

    fn command(client_id: u64, sequence: u64, op: Op) -> Vec<u8> {
        encode_command(&Command {
            client_id,
            sequence,
            acked_below: 0,
            op: Some(op),
            open_session: false,
        })
    }

    fn value(state: &KvState, key: &str) -> Option<(String, u64)> {
        state
            .get(key.as_bytes())
            .map(|s| (String::from_utf8_lossy(&s.value).into(), s.mod_revision))
    }

    #[test]
    fn writes_apply_in_order_with_their_index_as_revision() {
        let mut state = KvState::new();
        assert_eq!(
            state.apply(1, &command(0, 0, put("a", "1"))),
            Ok(WriteResult::Put { revision: 1 })
        );
        state.skip(2);
        state.apply(3, &command(0, 0, put("a", "2"))).unwrap();
        assert_eq!(value(&state, "a"), Some(("2".into(), 3)));
        let delete = Op::Delete(Delete { key: "a".into() });
        assert_eq!(
            state.apply(4, &command(0, 0, delete.clone())),
            Ok(WriteResult::Delete { deleted: true, revision: 4 })
        );
        assert_eq!(
            state.apply(5, &command(0, 0, delete)),
            Ok(WriteResult::Delete { deleted: false, revision: 5 })
        );
        assert_eq!(state.applied(), 5);
    }

    #[test]
    fn compare_and_set_writes_only_on_a_match_and_absent_means_absent() {
        let mut state = KvState::new();
        let cas = |expected: Option<&str>, value: &str| {
            Op::CompareAndSet(CompareAndSet {
                key: "k".into(),
                expected: expected.map(|e| e.as_bytes().to_vec().into()),
                value: value.as_bytes().to_vec().into(),
            })
        };
        let created = state.apply(1, &command(0, 0, cas(None, "v1"))).unwrap();
        assert_eq!(
            created,
            WriteResult::CompareAndSet { succeeded: true, current: None, revision: 1 }
        );
        let refused = state.apply(2, &command(0, 0, cas(None, "v2"))).unwrap();
        let current = Some(Bytes::from_static(b"v1"));
        assert_eq!(refused, WriteResult::CompareAndSet { succeeded: false, current, revision: 2 });
        let swapped = state.apply(3, &command(0, 0, cas(Some("v1"), "v3"))).unwrap();
        assert!(matches!(swapped, WriteResult::CompareAndSet { succeeded: true, .. }));
        assert_eq!(value(&state, "k"), Some(("v3".into(), 3)));
    }

    #[test]
    fn a_retried_write_gets_its_first_result_and_changes_nothing() {
        let mut state = KvState::new();
        let first = state.apply(1, &command(42, 1, put("x", "1"))).unwrap();
        state.apply(2, &command(43, 1, put("x", "2"))).unwrap();
        // Session 42 retries write 1 after a leader change: same result, no second write.
        assert_eq!(state.apply(3, &command(42, 1, put("x", "1"))), Ok(first));
        assert_eq!(value(&state, "x"), Some(("2".into(), 2)));
        // Once acknowledged, the retry is refused, never applied.
        let ack = encode_command(&Command {
            client_id: 42,
            sequence: 2,
            acked_below: 2,
            op: Some(put("y", "1")),
            open_session: false,
        });
        state.apply(4, &ack).unwrap();
        let stale = state.apply(5, &command(42, 1, put("x", "1")));
        assert_eq!(stale, Err(ApplyError::SessionExpired { client_id: 42, sequence: 1 }));
        assert_eq!(value(&state, "x"), Some(("2".into(), 2)));
    }

    #[test]
    fn a_session_is_opened_by_its_first_applied_write_whatever_its_sequence() {
        let mut state = KvState::new();
        // Write 1 of session 5 was lost; write 2 arrives first and opens the session.
        let opening = |sequence| Command {
            client_id: 5,
            sequence,
            acked_below: 1,
            op: Some(put("k", "v")),
            open_session: true,
        };
        assert!(state.apply(1, &encode_command(&opening(2))).is_ok());
        assert!(state.apply(2, &encode_command(&opening(1))).is_ok(), "write 1 is still fresh");
        // Without the flag, an unknown session's later write may be an expired one: refused.
        let unknown = command(6, 3, put("k", "w"));
        assert!(matches!(state.apply(3, &unknown), Err(ApplyError::SessionExpired { .. })));
    }

    #[test]
    fn allocated_member_ids_are_fresh_and_never_reused() {
        use kv_proto::kv::{RemoveMember, SetMember};
        let mut state = KvState::new();
        let join = |name: &str, port: u16| {
            Op::SetMember(SetMember {
                name: name.into(),
                peer_address: format!("h:{port}"),
                allocate: true,
                min_id: 4,
                ..SetMember::default()
            })
        };
        let id_of = |result: Result<WriteResult, ApplyError>| match result {
            Ok(WriteResult::Member { id, .. }) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(id_of(state.apply(1, &command(0, 0, join("a", 1)))), 4, "at least min_id");
        assert_eq!(id_of(state.apply(2, &command(0, 0, join("b", 2)))), 5, "a race gets another");
        assert_eq!(id_of(state.apply(3, &command(0, 0, join("a", 3)))), 0, "name taken: refused");
        let remove = Op::RemoveMember(RemoveMember { id: 5 });
        state.apply(4, &command(0, 0, remove)).unwrap();
        assert_eq!(id_of(state.apply(5, &command(0, 0, join("c", 5)))), 6, "5 is never reused");
    }

    /// A restored state has no member rows, keeps its keys, and allocates no id below
    /// either the backup's next id or the new cluster's first free one.
    #[test]
    fn forgetting_members_keeps_keys_and_ids_unique() {
        use kv_proto::kv::SetMember;
        let mut state = KvState::new();
        let row = SetMember {
            name: "old".into(),
            peer_address: "h:1".into(),
            allocate: true,
            min_id: 7,
            ..SetMember::default()
        };
        state.apply(1, &command(0, 0, Op::SetMember(row))).unwrap();
        state.apply(2, &command(0, 0, put("k", "v"))).unwrap();
        let mut restored = state.clone();
        restored.forget_members(4);
        assert!(restored.members().is_empty());
        assert_eq!(
            restored.get(b"k").map(|s| s.value.clone()),
            state.get(b"k").map(|s| s.value.clone())
        );
        assert_eq!(restored.next_member_id(), 8, "the backup's ids stay used");
        restored.forget_members(20);
        assert_eq!(restored.next_member_id(), 20, "past the new cluster's ids");
    }

    #[test]
    fn the_wish_to_vote_survives_the_members_own_row_writes_and_a_snapshot() {
        use kv_proto::kv::SetMember;
        let mut state = KvState::new();
        let row = |allocate, promote| SetMember {
            id: 7,
            name: "n7".into(),
            peer_address: "h:7".into(),
            client_address: "h:8".into(),
            allocate,
            min_id: 7,
            promote,
        };
        state.apply(1, &command(0, 0, Op::SetMember(row(true, true)))).unwrap();
        assert!(state.members()[&7].promote, "a join to vote");
        // The node registers itself (not allocating): the flag stays.
        state.apply(2, &command(0, 0, Op::SetMember(row(false, false)))).unwrap();
        assert!(state.members()[&7].promote, "kept by the member's own write");
        let mut bytes = Vec::new();
        state.write_snapshot(&mut bytes).unwrap();
        let restored = KvState::read_snapshot(bytes.as_slice()).unwrap();
        assert!(restored.members()[&7].promote, "kept by a snapshot");
        let mut learner = KvState::new();
        learner.apply(1, &command(0, 0, Op::SetMember(row(true, false)))).unwrap();
        assert!(!learner.members()[&7].promote, "a join as learner only");
    }

    #[test]
    fn undecodable_entries_change_nothing_but_count_as_applied() {
        let mut state = KvState::new();
        assert!(matches!(
            state.apply(1, &[0xff, 0xff]),
            Err(ApplyError::Undecodable { index: 1, .. })
        ));
        assert!(matches!(state.apply(2, &[]), Err(ApplyError::Undecodable { index: 2, .. })));
        assert_eq!((state.applied(), state.len()), (2, 0));
    }

    #[test]
    #[should_panic(expected = "entries apply in order")]
    fn applying_out_of_order_is_a_host_bug() {
        let mut state = KvState::new();
        state.skip(2);
    }

    #[test]
    fn list_walks_a_prefix_in_order_from_a_cursor() {
        let mut state = KvState::new();
        for (i, key) in ["a", "b/1", "b/2", "b/3", "c"].iter().enumerate() {
            state.apply(i as u64 + 1, &command(0, 0, put(key, "v"))).unwrap();
        }
        let keys = |prefix: &str, after: &str, limit| -> Vec<String> {
            state
                .list(prefix.as_bytes(), after.as_bytes(), limit)
                .map(|(k, _)| String::from_utf8_lossy(k).into())
                .collect()
        };
        assert_eq!(keys("b/", "", 0), ["b/1", "b/2", "b/3"]);
        assert_eq!(keys("b/", "b/1", 0), ["b/2", "b/3"]);
        assert_eq!(keys("b/", "", 2), ["b/1", "b/2"]);
        assert_eq!(keys("", "b/3", 0), ["c"]);
        assert_eq!(keys("b/", "a", 0), ["b/1", "b/2", "b/3"], "a cursor before the prefix");
        assert_eq!(keys("z", "", 0), Vec::<String>::new());
    }
}
