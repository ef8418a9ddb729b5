//! The Jepsen-style harness (docs/testing.md): real `kv-server` processes attacked with
//! faults, every client operation recorded in a history, and the history checked.
//!
//! - [`history`]: the events of a run, as JSON lines, and their pairing into operations.
//! - [`linearizable`]: linearizability per key (Wing and Gong's search with Lowe's
//!   memoization), with a smallest failing sub-history for each anomaly.

pub mod history;
pub mod linearizable;
