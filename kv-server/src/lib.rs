//! kv-server: one node of the replicated key-value store. It composes raft-core (the engine),
//! raft-log (its durable log), raft-net (the peer transport) and kv-fsm (the state machine)
//! on a tokio runtime, and serves the gRPC API of `proto/kv/v1/kv.proto`.

pub mod auth;
mod backup;
pub mod config_file;
mod connections;
pub mod flags;
pub mod health;
mod incoming;
pub mod metrics;
pub mod node;
pub mod server;
pub mod service;

/// Logs to stderr through tracing, at the level `RUST_LOG` gives (info by default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
