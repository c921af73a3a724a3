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
    // Messages and the gRPC clients and servers in one pass, from the
    // descriptors protox produced.
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
