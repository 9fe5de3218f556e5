//! Compiles the vendored `proto/onnx.proto` (proto2) with `protox` (pure Rust, no `protoc`) and
//! generates the prost message types included by `src/proto.rs`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
