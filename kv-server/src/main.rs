//! The kv-server binary: flags, logging, the runtime, then `server::run`.

use kv_server::config_file;
use std::process::ExitCode;

/// mimalloc: the servers allocate and free many small buffers per request (HTTP/2 frames,
/// protobuf messages); it costs less per call than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    kv_server::init_logging();
    let flags = config_file::parse_flags(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let settings = match flags.check() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("kv-server: {error}");
            return ExitCode::from(2);
        }
    };
    match kv_server::run_until_stopped(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kv-server: {error}");
            ExitCode::FAILURE
        }
    }
}
