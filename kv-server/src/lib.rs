//! kv-server: one node of the replicated key-value store. It composes raft-core (the engine),
//! raft-log (its durable log), raft-net (the peer transport) and kv-fsm (the state machine)
//! on a tokio runtime, and serves the gRPC API of `proto/kv/v1/kv.proto`.

pub mod flags;
mod incoming;
pub mod node;
pub mod server;
pub mod service;
