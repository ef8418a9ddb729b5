//! What the clients do.
//!
//! - **registers**: get, set, compare-and-set and delete over a few keys at a time, every
//!   written value unique. Keys are used in generations (`r{generation}-{k}`): after every
//!   [`OPS_PER_GENERATION`] operations the clients move to fresh keys, so that each key's
//!   history stays short enough for the linearizability search.
//! - **set**: every write adds one unique element under its own key (`set/{element}`), and
//!   now and then a client lists the prefix; at the end a last list must hold every
//!   acknowledged element ([`crate::sets`]).

use crate::client::Op;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Single-key registers, checked for linearizability.
    Registers,
    /// A growing set, checked for lost and invented elements.
    Set,
}

/// The prefix of the set workload's keys.
pub const SET_PREFIX: &str = "set/";

/// Keys in use at once in the registers workload.
pub const KEYS_PER_GENERATION: u64 = 8;

/// Operations (of all clients together) before the registers workload moves to fresh keys.
pub const OPS_PER_GENERATION: u64 = 400;

/// A list in the set workload every this many operations of a client (each list holds the
/// whole set, so the history grows with the square of the lists).
const LIST_EVERY: u64 = 100;

/// The operations all clients have drawn, shared.
#[derive(Default)]
pub struct Counter(AtomicU64);

/// One client's source of operations.
pub struct Generator {
    workload: Workload,
    rng: fastrand::Rng,
    /// This client's writes so far (for unique values).
    written: u64,
    /// This client's operations so far.
    drawn: u64,
    /// The last value this client saw or wrote per key: what its compare-and-sets expect.
    last_seen: HashMap<String, Option<String>>,
}

impl Generator {
    /// The generator of client `client` (values are unique across clients), from `seed`.
    pub fn new(workload: Workload, client: u64, seed: u64) -> Generator {
        Generator {
            workload,
            rng: fastrand::Rng::with_seed(seed ^ client.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            written: client << 32,
            drawn: 0,
            last_seen: HashMap::new(),
        }
    }

    /// The next operation; `counter` counts every client's operations.
    pub fn next(&mut self, counter: &Counter) -> Op {
        let total = counter.0.fetch_add(1, Ordering::Relaxed);
        self.drawn += 1;
        match self.workload {
            Workload::Registers => self.register_op(total / OPS_PER_GENERATION),
            Workload::Set if self.drawn.is_multiple_of(LIST_EVERY) => {
                Op::List { prefix: SET_PREFIX.to_string() }
            }
            Workload::Set => {
                let element = self.unique();
                Op::Set { key: format!("{SET_PREFIX}{element}"), value: element }
            }
        }
    }

    fn unique(&mut self) -> String {
        self.written += 1;
        format!("v{:x}", self.written)
    }

    fn register_op(&mut self, generation: u64) -> Op {
        let key = register_key(generation, self.rng.u64(..KEYS_PER_GENERATION));
        match self.rng.u8(..100) {
            0..40 => Op::Get { key },
            40..70 => {
                let value = self.unique();
                self.last_seen.insert(key.clone(), Some(value.clone()));
                Op::Set { key, value }
            }
            70..92 => {
                let expected = self.last_seen.get(&key).cloned().flatten();
                let value = self.unique();
                Op::Cas { key, expected, value }
            }
            _ => Op::Delete { key },
        }
    }

    /// Notes what a completed read or write showed of `key` (for later compare-and-sets).
    pub fn saw(&mut self, key: &str, value: Option<String>) {
        self.last_seen.insert(key.to_string(), value);
    }
}

/// Key `k` of generation `generation` of the registers workload.
pub fn register_key(generation: u64, k: u64) -> String {
    format!("r{generation}-{k}")
}

/// Every register key the run may have touched, given the operations drawn.
pub fn register_keys_touched(counter: &Counter) -> Vec<String> {
    let generations = counter.0.load(Ordering::Relaxed) / OPS_PER_GENERATION + 1;
    (0..generations)
        .flat_map(|g| (0..KEYS_PER_GENERATION).map(move |k| register_key(g, k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_values_are_unique_across_clients_and_keys_move_on() {
        let counter = Counter::default();
        let mut clients: Vec<Generator> =
            (0..4).map(|c| Generator::new(Workload::Registers, c, 7)).collect();
        let mut values = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for round in 0..1000 {
            match clients[round % 4].next(&counter) {
                Op::Set { key, value } | Op::Cas { key, value, .. } => {
                    assert!(values.insert(value), "a value written twice");
                    keys.insert(key);
                }
                Op::Get { key } | Op::Delete { key } => {
                    keys.insert(key);
                }
                Op::List { .. } => unreachable!("registers never list"),
            }
        }
        let generations: std::collections::HashSet<&str> =
            keys.iter().map(|k| k.split('-').next().unwrap()).collect();
        let generations = generations.len();
        assert!(generations > 1 && keys.len() <= register_keys_touched(&counter).len());
    }

    #[test]
    fn the_set_workload_adds_unique_elements_and_lists_now_and_then() {
        let counter = Counter::default();
        let mut client = Generator::new(Workload::Set, 3, 1);
        let ops: Vec<Op> = (0..199).map(|_| client.next(&counter)).collect();
        let lists = ops.iter().filter(|op| matches!(op, Op::List { .. })).count();
        assert_eq!(lists, 1);
        for op in &ops {
            if let Op::Set { key, value } = op {
                assert_eq!(key, &format!("{SET_PREFIX}{value}"));
            }
        }
    }
}
