//! The Jepsen-style harness (docs/testing.md): real `kv-server` processes attacked with
//! faults, every client operation recorded in a history, and the history checked.
//!
//! - [`history`]: the events of a run, as JSON lines, and their pairing into operations.
//! - [`linearizable`]: linearizability per key (Wing and Gong's search with Lowe's
//!   memoization), with a smallest failing sub-history for each anomaly.
//! - [`sets`]: the set workload's check: no acknowledged add lost, nothing invented.
//! - [`report`]: anomalies as text and as an SVG timeline.
//! - [`proxy`]: per-link network faults between the nodes, through proxies.
//! - [`cluster`]: the `kv-server` processes; [`client`]: the recording clients;
//!   [`workload`]: what they do; [`nemesis`]: the faults; [`run`]: a whole run;
//!   [`plot`]: its throughput and latencies with the fault windows.

pub mod client;
pub mod cluster;
pub mod history;
pub mod linearizable;
pub mod nemesis;
pub mod plot;
pub mod proxy;
pub mod report;
pub mod run;
pub mod sets;
pub mod workload;
