//! Generates the tonic/prost code for proto/ferrolog/v1. protoc comes from the
//! `protoc-bin-vendored` crate so a fresh machine needs no system package.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;

    unsafe_env_set("PROTOC", protoc.as_os_str());

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "errors.proto",
        "client.proto",
        "admin.proto",
        "metadata.proto",
        "raft.proto",
        "controller.proto",
        "replication.proto",
        "group.proto",
        "transaction.proto",
    ]
    .map(|f| root.join("ferrolog/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("ferrolog_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        // tonic's prost codec with a decode buffer sized for batches (src/codec.rs).
        .codec_path("crate::codec::FerrologCodec")
        .bytes(".ferrolog.v1.ProduceRequest.record_batch")
        .bytes(".ferrolog.v1.FetchResponse.record_batches")
        .bytes(".ferrolog.v1.ReplicaFetchPartitionData.record_batches")
        .bytes(".ferrolog.v1.Record")
        .bytes(".ferrolog.v1.RecordHeader")
        .compile_protos(&files, &[root])?;
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_set(key: &str, value: &std::ffi::OsStr) {
    // SAFETY: the build script runs no other threads that read the environment.
    unsafe { std::env::set_var(key, value) }
}
