//! Generates the Rust code of every .proto in this crate with prost and tonic.
//! protoc comes from `protoc-bin-vendored`, so no system protoc is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "kuberaft/raft.proto",
    "kuberaft/admin.proto",
    "kuberaft/membership.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Raft payloads are `Bytes` in the core: keep them zero-copy on the wire too.
        .bytes(".kuberaft.raft.v1")
        .file_descriptor_set_path(out_dir.join("kuberaft_descriptor.bin"))
        .compile_protos(PROTOS, &["."])?;

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}
