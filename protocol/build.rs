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
    // A message's rare parts boxed: a text message (nearly all of them)
    // leaves them `None`, and every move of a message or of a frame holding
    // one (decode, sequencing, the store's op, the push) then copies 160
    // bytes instead of 384.
    let mut builder = tonic_prost_build::configure();
    for rare in [
        "ChatMessage.media",
        "ChatMessage.location",
        "ChatMessage.group_event",
        "SendMessageRequest.media",
        "SendMessageRequest.location",
    ] {
        builder = builder.boxed(format!(".ourchat.{rare}"));
    }
    builder.compile_fds(descriptors)?;
    Ok(())
}
