//! Compiles the protos without a system `protoc`: protox parses them in pure
//! Rust, tonic-prost-build generates the code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("CARGO_FEATURE_GRPC").is_none() {
        return Ok(());
    }
    let files = [
        "protos/grantledger/v1/grants.proto",
        "protos/grantledger/v1/cluster.proto",
        "protos/grantledger/v1/raft.proto",
        "protos/grantledger/v1/audit.proto",
        "protos/grantledger/v1/policy.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["protos"])?;
    // tonic-reflection serves this; compile_fds does not write it. Only the
    // public API's files: the peer service is not served on the API port.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut api = fds.clone();
    api.file.retain(|f| f.name() != "grantledger/v1/raft.proto");
    std::fs::write(
        out.join("grantledger_descriptor.bin"),
        prost::Message::encode_to_vec(&api),
    )?;
    // serde for every message, in the proto3 JSON mapping (field names as
    // in the protos, every field present): `grantctl -o json` prints it.
    pbjson_build::Builder::new()
        .register_descriptors(&prost::Message::encode_to_vec(&fds))?
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".grantledger"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
