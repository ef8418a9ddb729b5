//! Client sessions (thesis §6.3): each write carries `(client_id, sequence)`, and the state
//! machine remembers the result of every write a client has not yet acknowledged, so that a
//! retried write (after a leader change, or a forwarding timeout) gets its first result back
//! instead of being applied a second time.
//!
//! A client says which results it holds with `acked_below`: every sequence below it has been
//! answered, and its result is forgotten. Sessions are bounded by [`SESSIONS_MAX`]: past it,
//! the session idle longest (the smallest last index, deterministic on every replica) is
//! expired. A write from an unknown session is taken as a new session only if it is the
//! client's first write (`sequence == 1`) or says it opens the session (`open_session`: the
//! client has seen none of its writes applied yet); any other may belong to an expired
//! session, whose earlier results are gone, and is refused with `SessionExpired`.

use crate::state::WriteResult;
use imbl::OrdMap;

/// Sessions kept at most; the one idle longest goes first.
pub const SESSIONS_MAX: usize = 100_000;

/// Results kept per session at most: a client with more writes in flight than this gets the
/// oldest unacknowledged results forgotten (and a retry of those refused).
pub const RESULTS_PER_SESSION_MAX: usize = 4096;

/// One client's session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// The results of writes not yet acknowledged, by sequence.
    pub results: OrdMap<u64, WriteResult>,
    /// Every sequence below this is answered (or forgotten); a retry of one is refused.
    pub acked_below: u64,
    /// The log index of the session's latest write.
    pub last_index: u64,
}

/// What a write's session says about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Not applied before: apply it.
    Fresh,
    /// Applied before, with this result.
    Duplicate(WriteResult),
    /// Its result is no longer known (acknowledged, or its session expired): refuse it.
    Forgotten,
}

/// Every session, and an index of them by idleness.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    by_client: OrdMap<u64, Session>,
    /// `(last_index, client_id)` of every session: the first is the idlest.
    by_last_index: OrdMap<(u64, u64), ()>,
}

impl Sessions {
    /// What to do with `sequence` of `client_id`; `open` if the client has seen none of its
    /// writes applied yet (so an unknown session is new, not expired).
    pub fn check(&self, client_id: u64, sequence: u64, open: bool) -> Check {
        match self.by_client.get(&client_id) {
            None if sequence == 1 || open => Check::Fresh,
            None => Check::Forgotten,
            Some(session) if sequence < session.acked_below => Check::Forgotten,
            Some(session) => match session.results.get(&sequence) {
                Some(result) => Check::Duplicate(result.clone()),
                None => Check::Fresh,
            },
        }
    }

    /// Records the result of a fresh write at log `index`, drops results below `acked_below`,
    /// and expires the idlest session if there are too many.
    pub fn record(
        &mut self,
        client_id: u64,
        sequence: u64,
        acked_below: u64,
        index: u64,
        result: WriteResult,
    ) {
        // Changed in place: one walk for a known client (imbl's `entry` walks twice), and no
        // rebalancing by a remove and an insert.
        let session = match self.by_client.get_mut(&client_id) {
            Some(session) => session,
            None => self.by_client.entry(client_id).or_default(),
        };
        self.by_last_index.remove(&(session.last_index, client_id));
        session.acked_below = session.acked_below.max(acked_below);
        while let Some(&(oldest, _)) = session.results.get_min() {
            if oldest >= session.acked_below {
                break;
            }
            session.results.remove(&oldest);
        }
        session.results.insert(sequence, result);
        while session.results.len() > RESULTS_PER_SESSION_MAX {
            // Forgotten as if acknowledged: a retry of it, or of anything older, is refused.
            let Some(&(oldest, _)) = session.results.get_min() else { break };
            session.results.remove(&oldest);
            session.acked_below = oldest.saturating_add(1);
        }
        session.last_index = index;
        self.by_last_index.insert((index, client_id), ());
        while self.by_client.len() > SESSIONS_MAX {
            let Some(&(idlest, ())) = self.by_last_index.get_min() else { break };
            self.by_last_index.remove(&idlest);
            self.by_client.remove(&idlest.1);
        }
    }

    /// Every session, by client id.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Session)> {
        self.by_client.iter()
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Adds a session read from a snapshot.
    pub(crate) fn restore(&mut self, client_id: u64, session: Session) {
        self.by_last_index.insert((session.last_index, client_id), ());
        self.by_client.insert(client_id, session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: u64) -> WriteResult {
        WriteResult::Put { revision }
    }

    #[test]
    fn a_retry_gets_the_first_result_until_acknowledged() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(7, 1, false), Check::Fresh);
        sessions.record(7, 1, 0, 10, put(10));
        assert_eq!(sessions.check(7, 1, false), Check::Duplicate(put(10)));
        assert_eq!(sessions.check(7, 2, false), Check::Fresh);
        sessions.record(7, 2, 2, 11, put(11)); // the client holds result 1
        assert_eq!(sessions.check(7, 1, false), Check::Forgotten);
        assert_eq!(sessions.check(7, 2, false), Check::Duplicate(put(11)));
    }

    #[test]
    fn an_unknown_session_starts_only_at_its_first_write() {
        let sessions = Sessions::default();
        assert_eq!(sessions.check(9, 1, false), Check::Fresh);
        assert_eq!(sessions.check(9, 2, false), Check::Forgotten, "maybe an expired session");
        assert_eq!(sessions.check(9, 2, true), Check::Fresh, "opened by a later write");
    }

    #[test]
    fn the_idlest_session_expires_first() {
        let mut sessions = Sessions::default();
        for client in 1..=SESSIONS_MAX as u64 {
            sessions.record(client, 1, 0, client, put(client));
        }
        sessions.record(1, 2, 0, 1_000_000, put(1_000_000)); // client 1 is busy again
        sessions.record(u64::MAX, 1, 0, 1_000_001, put(1_000_001));
        assert_eq!(sessions.len(), SESSIONS_MAX);
        assert_eq!(sessions.check(2, 2, false), Check::Forgotten, "client 2 was idlest");
        assert_eq!(sessions.check(1, 2, false), Check::Duplicate(put(1_000_000)));
    }

    #[test]
    fn results_per_session_are_bounded() {
        let mut sessions = Sessions::default();
        let n = RESULTS_PER_SESSION_MAX as u64 + 10;
        for sequence in 1..=n {
            sessions.record(3, sequence, 0, sequence, put(sequence));
        }
        assert_eq!(sessions.check(3, 5, false), Check::Forgotten);
        assert_eq!(sessions.check(3, n, false), Check::Duplicate(put(n)));
    }
}
