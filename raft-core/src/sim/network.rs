//! The simulated network: messages in flight, delivered in random order (delay and
//! reordering), sometimes dropped or duplicated, and partitions that block links one way or
//! both ways.

use crate::message::Message;
use crate::rng::Rng;
use crate::types::NodeId;
use std::collections::BTreeSet;

/// The most messages in flight; past it the oldest are dropped (a real network's buffers are
/// finite too).
pub const IN_FLIGHT_MAX: usize = 4096;

/// Messages in flight and the links that are cut.
#[derive(Default)]
pub struct Network {
    in_flight: Vec<Message>,
    /// Directed links (from, to) that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Per mille of messages dropped when sent.
    pub drop_per_mille: u64,
    /// Per mille of messages delivered twice.
    pub duplicate_per_mille: u64,
}

impl Network {
    /// A network with no partition that drops and duplicates messages at the given rates.
    pub fn new(drop_per_mille: u64, duplicate_per_mille: u64) -> Network {
        Network { drop_per_mille, duplicate_per_mille, ..Network::default() }
    }

    /// Puts `msg` on the wire, unless the network loses it.
    pub fn send(&mut self, msg: Message, rng: &mut Rng) {
        if self.drop_per_mille > 0 && rng.chance(self.drop_per_mille, 1000) {
            return;
        }
        if self.duplicate_per_mille > 0 && rng.chance(self.duplicate_per_mille, 1000) {
            self.in_flight.push(msg.clone());
        }
        self.in_flight.push(msg);
        if self.in_flight.len() > IN_FLIGHT_MAX {
            self.in_flight.remove(0);
        }
    }

    /// Takes a random message off the wire, or `None` if none is in flight. A message on a
    /// blocked link is taken off and lost.
    pub fn take_random(&mut self, rng: &mut Rng) -> Option<Message> {
        if self.in_flight.is_empty() {
            return None;
        }
        let pick = rng.below(self.in_flight.len() as u64) as usize;
        let msg = self.in_flight.swap_remove(pick);
        (!self.blocked.contains(&(msg.from, msg.to))).then_some(msg)
    }

    /// How many messages are in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether no message is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Cuts the links between `side` and everyone else in `all`, both ways.
    pub fn isolate(&mut self, side: &[NodeId], all: &[NodeId]) {
        for &a in side {
            for &b in all.iter().filter(|b| !side.contains(b)) {
                self.blocked.insert((a, b));
                self.blocked.insert((b, a));
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn block_one_way(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }
}
