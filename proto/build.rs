//! Compiles the `.proto` files with protox (a protobuf compiler in Rust), so that building
//! needs no system `protoc`.

use std::path::Path;

const PROTOS: &[&str] = &["raft/v1/peer.proto", "kv/v1/command.proto", "kv/v1/kv.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [root])?;
    // The encoded descriptors, served by gRPC reflection so that generic tools (grpcurl) can
    // list and call the API.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), prost::Message::encode_to_vec(&descriptors))?;
    let mut config = prost_build::Config::new();
    // Payloads are shared, not copied, from the frame they arrive in.
    config.bytes(["."]);
    // The gRPC services (client and server stubs) come with the messages.
    tonic_prost_build::configure().compile_fds_with_config(descriptors, config)?;
    Ok(())
}
