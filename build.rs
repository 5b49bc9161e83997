//! Compiles the vendored ONNX protobuf schema with a pure-Rust protobuf compiler (protox), so the
//! build needs no `protoc` binary on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto3");
    let fds = protox::compile(["proto/onnx.proto3"], ["proto/"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
