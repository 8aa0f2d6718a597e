//! Compiles every `.proto` under `im/` with protox (no system `protoc`), generates prost/tonic
//! code, and writes the encoded descriptor set the gateway embeds for JSON transcoding.

// A build script reports failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proto dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect(&root.join("im"), &mut files);
    files.sort();
    println!("cargo:rerun-if-changed=im");

    let fds = protox::compile(&files, [&root]).expect("proto files compile");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(
        out.join("im_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )
    .expect("write descriptor set");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generate prost/tonic code");
}
