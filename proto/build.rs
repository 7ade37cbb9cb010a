//! Compiles the protos without a system `protoc`: protox parses them in pure
//! Rust, tonic-prost-build generates the code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "protos/grantledger/v1/grants.proto",
        "protos/grantledger/v1/cluster.proto",
        "protos/grantledger/v1/raft.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["protos"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
