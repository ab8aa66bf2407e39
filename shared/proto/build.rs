//! Compiles every `.proto` under the repository's `proto/` folder at build time.
//!
//! We use `protox`, a protobuf compiler written in Rust, instead of the `protoc` binary:
//! nobody has to install anything to build the workspace, and CI machines without
//! `protoc` (or with a different version of it) produce byte-identical code.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = proto_files(&proto_root)?;
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&proto_root])?;
    // The descriptor set is embedded in the crate so every gRPC server can serve reflection.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("descriptors.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        // Card data must never reach a log line through `{:?}`: `Card` gets a hand-written,
        // redacting `Debug` in `src/lib.rs` (and so does every message that contains it).
        .skip_debug([".shop.payment.v1.Card"])
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

/// All `.proto` files below `dir`, sorted so the generated code does not depend on directory order.
fn proto_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}
