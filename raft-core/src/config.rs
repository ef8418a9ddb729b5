//! Node configuration: identity, timing in ticks, the seed, and the flow-control limits.

use crate::error::ConfigError;
use crate::types::NodeId;

/// How a node behaves. Every field is plain data; nothing here reads a clock or the
/// environment.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id. Must not be 0.
    pub id: NodeId,
    /// Ticks a follower waits without hearing a leader before it campaigns. The actual timeout
    /// is drawn anew after every reset from `[election_ticks, 2 * election_ticks)` (paper
    /// §5.2, randomized election timeouts). Must exceed `heartbeat_ticks`.
    pub election_ticks: u32,
    /// Ticks between a leader's heartbeats. Must be at least 1.
    pub heartbeat_ticks: u32,
    /// Run a PreVote round before a real election (thesis §9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for an election timeout steps down, and a
    /// follower that heard from a leader within the election timeout ignores vote requests
    /// (thesis §6.2, §4.2.3).
    pub check_quorum: bool,
    /// A follower forwards proposals to the leader it knows instead of refusing them.
    pub proposal_forwarding: bool,
    /// Seed for the election-timeout generator. The same seed and the same inputs give the
    /// same outputs. Nodes may share a seed (each draws its own stream by id), but a host
    /// should draw a fresh seed at every start, or a restarted node replays its timeouts.
    pub seed: u64,
    /// The most append messages in flight to one follower in the replicate state.
    pub inflight_msgs_max: usize,
    /// The most entry bytes in flight to one follower in the replicate state.
    pub inflight_bytes_max: u64,
    /// The most entry bytes in one append message (one entry is always sent, however large).
    pub append_bytes_max: u64,
    /// The most entry bytes handed out in one `Ready::committed_entries`.
    pub apply_bytes_max: u64,
    /// The most bytes of proposals a leader holds uncommitted (not yet handed out to apply)
    /// before it refuses new ones with [`crate::ProposeError::UncommittedFull`]. One proposal
    /// is always taken when none is pending, however large.
    pub uncommitted_bytes_max: u64,
    /// The most reads a leader holds waiting for its own-term commit or for a heartbeat
    /// round to confirm them; more are refused ([`crate::ReadIndexError::TooManyPending`]).
    pub read_requests_max: usize,
    /// A deliberately broken rule, for proving the simulator catches it. Never set outside
    /// tests.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<crate::planted::PlantedBug>,
}

impl Config {
    /// A configuration with the defaults: election after 10 ticks, heartbeat every tick,
    /// PreVote, CheckQuorum and proposal forwarding on, 256 messages / 4 MiB in flight per follower, 1 MiB per
    /// append, 4 MiB per apply batch, 64 MiB of uncommitted proposals.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            proposal_forwarding: true,
            seed: id.0,
            inflight_msgs_max: 256,
            inflight_bytes_max: 4 << 20,
            append_bytes_max: 1 << 20,
            apply_bytes_max: 4 << 20,
            uncommitted_bytes_max: 64 << 20,
            read_requests_max: 4096,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Checks the configuration, naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &'static str, reason: &'static str| Err(ConfigError::Invalid { field, reason });
        if self.id.0 == 0 {
            return invalid("id", "must not be 0");
        }
        if self.heartbeat_ticks == 0 {
            return invalid("heartbeat_ticks", "must be at least 1");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return invalid("election_ticks", "must be greater than heartbeat_ticks");
        }
        if self.read_requests_max == 0 {
            return invalid("read_requests_max", "must be at least 1");
        }
        if self.inflight_msgs_max == 0 {
            return invalid("inflight_msgs_max", "must be at least 1");
        }
        let byte_limits = [
            self.inflight_bytes_max,
            self.append_bytes_max,
            self.apply_bytes_max,
            self.uncommitted_bytes_max,
        ];
        if byte_limits.contains(&0) {
            return invalid("*_bytes_max", "byte limits must be at least 1");
        }
        Ok(())
    }

    /// Whether the planted bug `bug` is active (always false without the `planted-bugs`
    /// feature, so the check compiles away).
    #[inline]
    #[allow(unused_variables)]
    pub(crate) fn has_bug(&self, bug: crate::planted::PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted_bug == Some(bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }
}
