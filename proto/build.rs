//! Compiles the `.proto` files with protox (a protobuf compiler in Rust), so that building
//! needs no system `protoc`.

use std::path::Path;

const PROTOS: &[&str] = &["raft/v1/peer.proto", "kv/v1/command.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [root])?;
    let mut config = prost_build::Config::new();
    // Payloads are shared, not copied, from the frame they arrive in.
    config.bytes(["."]);
    config.compile_fds(descriptors)?;
    Ok(())
}
