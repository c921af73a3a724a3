//! Compiles the `.proto` files with `protox` (pure Rust), so a fresh machine
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/common.proto",
        "proto/user.proto",
        "proto/message.proto",
        "proto/group.proto",
        "proto/session.proto",
        "proto/presence.proto",
        "proto/client.proto",
        "proto/services.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // The same descriptors for gRPC server reflection (grpcurl without the
    // .proto files).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("ourchat_descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Messages and the gRPC clients and servers in one pass, from the
    // descriptors protox produced.
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
