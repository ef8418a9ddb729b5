//! kv-server: one node of the replicated key-value store. It composes raft-core (the engine),
//! raft-log (its durable log), raft-net (the peer transport) and kv-fsm (the state machine)
//! on a tokio runtime, and serves the gRPC API of `proto/kv/v1/kv.proto`.

pub mod auth;
mod backup;
pub mod config_file;
mod connections;
pub mod flags;
mod grpc;
pub mod health;
mod incoming;
pub mod metrics;
pub mod node;
pub mod scheduling;
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

/// Runs a server with checked `settings` on a runtime of its own (`--threads`) until it
/// stops: what the `kv-server` binary and `kvctl node` both do once their flags are checked.
pub fn run_until_stopped(settings: flags::Settings) -> Result<(), String> {
    // Before the runtime: its threads, and every thread the node starts, inherit the policy.
    scheduling::apply(settings.flags.scheduling).map_err(|e| e.to_string())?;
    let runtime = server_runtime(settings.flags.threads)
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(server::run(settings)).map_err(|e| e.to_string())
}

/// The runtime a server runs on (and `kvctl`, whose `node` command is a server), with
/// `threads` threads (`--threads`), one per core when `None`.
///
/// One thread gives tokio's current-thread runtime: a request, the Raft loop's turn that
/// proposes it, the frames that turn sends and the answer all run on that thread, with no
/// hand-over between threads. On the project's 2-core machine running three nodes, that
/// cost about 80 µs of server CPU per put against 110 µs with a runtime per core and the
/// loop on a thread of its own, and did about 1.3 times the puts/s (docs/performance.md,
/// "One thread per node").
///
/// More threads give tokio's multi-threaded runtime. Built with `--cfg tokio_unstable` (the
/// workspace's `.cargo/config.toml` sets it), its workers do not run a task woken by the
/// task they are running next (tokio's "LIFO slot"). That heuristic made each HTTP/2
/// connection task run, and write, right after every single request task that answered:
/// one `writev` per response. Without it, the answers of one batch of applied writes are
/// queued first and leave together (measured at 64 clients on a three-node cluster: 1.28
/// `writev` per request before, 0.67 after, and 9% less server CPU per request).
pub fn server_runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads =
        threads.or_else(|| std::thread::available_parallelism().ok().map(usize::from)).unwrap_or(1);
    if threads <= 1 {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads).enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}
