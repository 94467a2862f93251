//! Generates the ONNX protobuf types from the vendored `src/onnx/onnx.proto`.
//!
//! The pure-Rust parser is used so that no `protoc` binary is needed on the machine (CI has none).
//! `tokio_bytes` makes `bytes` fields (`raw_data` above all) `bytes::Bytes`, so a model parsed from a
//! memory-mapped file shares the weights with the map instead of copying them.

fn main() {
    println!("cargo:rerun-if-changed=src/onnx/onnx.proto");
    println!("cargo:rerun-if-changed=build.rs");
    // The commit the binary was built from, for `dfast --version` ("unknown" outside a git checkout).
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=DFAST_COMMIT={commit}");
    protobuf_codegen::Codegen::new()
        .pure()
        .include("src/onnx")
        .input("src/onnx/onnx.proto")
        .customize(protobuf_codegen::Customize::default().tokio_bytes(true))
        .cargo_out_dir("onnx_proto")
        .run_from_script();
}
