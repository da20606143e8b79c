//! Compiles `proto/` into the message types, a typed client (for tests and tools), the raw-bytes
//! Dispatcher server, the canonical-JSON serde impls and the descriptor set served by reflection.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/coprocess_common.proto",
    "proto/coprocess_mini_request_object.proto",
    "proto/coprocess_object.proto",
    "proto/coprocess_response_object.proto",
    "proto/coprocess_return_overrides.proto",
    "proto/coprocess_session_state.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("coprocess_descriptor.bin");

    // A protoc from PATH wins; otherwise the vendored one, so nothing needs installing.
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    // Messages and a typed client come from prost. The server side is generated below by hand
    // (`tonic_build::manual`), because it must see the request's wire bytes, not a decoded
    // message: an Object passed back unchanged is sent back byte for byte.
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // Bodies decode as slices of the request buffer, not copies.
        .bytes(".")
        // Small ordered maps: cheaper to decode, copy and compare than SipHash tables, and
        // re-encoded in a stable order.
        .btree_map(".")
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(config, PROTOS, &["proto"])?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .build(&[".coprocess"])?;

    let dispatcher = tonic_build::manual::Service::builder()
        .name("Dispatcher")
        .package("coprocess")
        .method(raw_method("dispatch", "Dispatch"))
        .method(raw_method("dispatch_event", "DispatchEvent"))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[dispatcher]);

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}

/// A unary method whose request and reply are the undecoded protobuf bytes.
fn raw_method(name: &str, route_name: &str) -> tonic_build::manual::Method {
    tonic_build::manual::Method::builder()
        .name(name)
        .route_name(route_name)
        .input_type("crate::codec::RawMessage")
        .output_type("crate::codec::RawMessage")
        .codec_path("crate::codec::RawCodec")
        .build()
}
