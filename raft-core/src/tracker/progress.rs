//! What a leader knows about one follower's log (paper §5.3 nextIndex and matchIndex), and the
//! follower's flow-control state.
//!
//! ```text
//!            accepted append                  rejection / unreachable
//!   Probe  ------------------->  Replicate  --------------------------> Probe
//!   one append at a time,       pipelined appends up to the
//!   paused until answered       in-flight window
//! ```

use super::inflights::Inflights;
use crate::types::Index;

/// The flow-control state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the logs agree is unknown: one append at a time, then wait for the answer.
    Probe,
    /// The logs agree up to `match_index`: stream appends, bounded by the in-flight window.
    Replicate,
    /// The follower needs entries the leader compacted: a snapshot ending at `index` was
    /// sent at leader tick `sent_at`; nothing else is sent until it is acknowledged, reported
    /// failed, or an election timeout passes.
    Snapshot {
        /// The last index the snapshot covers.
        index: Index,
        /// The leader's tick when it was sent.
        sent_at: u64,
    },
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to be durable and matching on the follower.
    /// Invariant: `match_index < next_index`.
    pub match_index: Index,
    /// The next index to send.
    pub next_index: Index,
    /// The flow-control state.
    pub state: ProgressState,
    /// In Probe: an append is outstanding, so no other is sent until an answer or heartbeat.
    pub probe_sent: bool,
    /// In Replicate: the appends in flight.
    pub inflights: Inflights,
    /// The leader's tick count when the follower last answered (or when the leader took
    /// office), for CheckQuorum.
    pub heard_at: u64,
    /// The highest ReadIndex round the follower echoed in this term.
    pub read_round_acked: u64,
}

impl Progress {
    /// A follower about which nothing is known but that it may hold entries up to
    /// `next_index - 1`.
    pub fn new(next_index: Index, inflights: Inflights) -> Progress {
        Progress {
            match_index: Index(0),
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights,
            heard_at: 0,
            read_round_acked: 0,
        }
    }

    /// Whether the follower answered (or the leader took office) within the `ticks` ticks up
    /// to `now`: the window CheckQuorum counts a follower in, and promotion asks of a learner.
    pub fn heard_within(&self, now: u64, ticks: u64) -> bool {
        now.saturating_sub(self.heard_at) < ticks
    }

    /// Whether no append may be sent now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// A snapshot ending at `index` was sent at tick `now`: wait for its acknowledgement.
    pub fn become_snapshot(&mut self, index: Index, now: u64) {
        self.state = ProgressState::Snapshot { index, sent_at: now };
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Back to probing from just after the last known match.
    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Start streaming after the last known match.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// An append carrying entries up to `last` (`bytes` of them) was sent; `last` is
    /// `next_index - 1` for an empty append.
    pub fn sent_append(&mut self, last: Index, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if last >= self.next_index {
                    self.next_index = last.next();
                    self.inflights.add(last.0, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// The follower holds entries up to `index`. Returns whether that is news.
    pub fn update_match(&mut self, index: Index) -> bool {
        let news = index > self.match_index;
        if news {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index.next());
        self.inflights.free_to(index.0);
        news
    }

    /// The follower rejected an append whose `prev.index` was `rejected`; `hint_next` is where
    /// the hint says the next probe should start. Returns what the leader makes of it.
    ///
    /// A rejection below the match answers an append older than the match, so it is stale.
    /// One at the match itself is checked with a probe there: a follower that still holds
    /// what it acknowledged accepts it. If the probe is rejected and the next probe would go
    /// at or below the match, the follower has lost entries it acknowledged (its disk broke
    /// its promise: a cut tail, a restored backup). The match is lowered to just before that
    /// probe, so that this leader sends the lost entries again; keeping the match would leave
    /// the follower behind for as long as this leader leads, each probe rejected and sent
    /// again. Lowering a match is always safe: the commit index never goes back, and a lower
    /// match only counts the follower later.
    ///
    /// A late or duplicated answer to an earlier probe at the same index can look the same
    /// (the check is on the index only). Over one ordered connection that takes a reconnect
    /// while answers are in flight; the cost is entries sent again, or a snapshot if the
    /// leader compacted them.
    pub fn reject(&mut self, rejected: Index, hint_next: Index) -> Rejection {
        match self.state {
            ProgressState::Replicate => {
                if rejected < self.match_index {
                    return Rejection::Stale;
                }
                self.become_probe();
                Rejection::Probe
            }
            // Answers to appends sent before the snapshot.
            ProgressState::Snapshot { .. } => Rejection::Stale,
            ProgressState::Probe => {
                if self.next_index.prev() != rejected {
                    return Rejection::Stale;
                }
                self.probe_sent = false;
                // Invariant `match_index < next_index`: a next probe at or below the match
                // lowers the match with it.
                self.next_index = rejected.min(hint_next);
                if self.next_index <= self.match_index {
                    let acknowledged = self.match_index;
                    self.match_index = self.next_index.prev();
                    return Rejection::LostAcknowledged { acknowledged };
                }
                Rejection::Probe
            }
        }
    }
}

/// What a leader makes of a follower's rejection ([`Progress::reject`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// An answer to an older append: ignored.
    Stale,
    /// Probe again from the new `next_index`.
    Probe,
    /// The follower no longer holds entries up to `acknowledged`, which it had acknowledged:
    /// its match was lowered; probe again from the new `next_index`.
    LostAcknowledged {
        /// The match before the rejection.
        acknowledged: Index,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress::new(Index(11), Inflights::new(2, 1000))
    }

    #[test]
    fn probe_pauses_after_one_append_and_resumes_on_an_answer() {
        let mut pr = progress();
        assert!(!pr.is_paused());
        pr.sent_append(Index(12), 10);
        assert!(pr.is_paused());
        assert!(pr.update_match(Index(12)));
        assert!(!pr.is_paused());
        assert_eq!(pr.next_index, Index(13));
    }

    #[test]
    fn replicate_streams_until_the_window_is_full() {
        let mut pr = progress();
        pr.update_match(Index(10));
        pr.become_replicate();
        pr.sent_append(Index(12), 10);
        pr.sent_append(Index(14), 10);
        assert!(pr.is_paused(), "two appends fill a window of two");
        assert_eq!(pr.next_index, Index(15));
        pr.update_match(Index(12));
        assert!(!pr.is_paused());
    }

    #[test]
    fn a_rejection_in_replicate_falls_back_to_probe_from_the_match() {
        let mut pr = progress();
        pr.update_match(Index(10));
        pr.become_replicate();
        pr.sent_append(Index(20), 10);
        assert_eq!(pr.reject(Index(9), Index(1)), Rejection::Stale, "below the match: stale");
        assert_eq!(pr.reject(Index(15), Index(1)), Rejection::Probe);
        assert_eq!((pr.state, pr.next_index), (ProgressState::Probe, Index(11)));
    }

    #[test]
    fn a_rejection_at_the_match_is_checked_with_a_probe_there() {
        let mut pr = progress();
        pr.update_match(Index(10));
        pr.become_replicate();
        assert_eq!(pr.reject(Index(10), Index(4)), Rejection::Probe);
        assert_eq!((pr.state, pr.next_index), (ProgressState::Probe, Index(11)));
    }

    #[test]
    fn a_rejection_in_probe_jumps_to_the_hint() {
        let mut pr = Progress::new(Index(101), Inflights::new(2, 1000));
        pr.sent_append(Index(100), 0);
        assert_eq!(pr.reject(Index(50), Index(10)), Rejection::Stale, "not the outstanding probe");
        assert_eq!(pr.reject(Index(100), Index(41)), Rejection::Probe);
        assert_eq!(pr.next_index, Index(41));
    }

    /// A rejected probe at the match lowers the match to just before the next probe: to the
    /// hint, or to just before the match itself when the hint is past it (a leader that
    /// compacted past the match cannot read a hint below it).
    #[test]
    fn a_rejected_probe_at_the_match_lowers_the_match() {
        // (hint_next, match and next after)
        for (hint_next, after) in [(5, (4, 5)), (31, (29, 30))] {
            let mut pr = progress();
            pr.update_match(Index(30));
            pr.become_probe();
            pr.sent_append(Index(30), 0);
            let lost = pr.reject(Index(30), Index(hint_next));
            assert_eq!(lost, Rejection::LostAcknowledged { acknowledged: Index(30) });
            assert_eq!((pr.match_index, pr.next_index), (Index(after.0), Index(after.1)));
            assert!(!pr.is_paused(), "the next probe goes at once");
        }
    }
}
