//! The etcd client the comparison benchmark uses, generated from the subset
//! of etcd's API in `protos/etcd.proto` (protox: no system protoc).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos/etcd.proto");
    let fds = protox::compile(["protos/etcd.proto"], ["protos"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
