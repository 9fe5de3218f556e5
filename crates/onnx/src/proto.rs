//! The ONNX protobuf messages, generated at build time from the vendored `proto/onnx.proto`.
//!
//! Invariant: these types mirror the proto2 schema exactly; all interpretation of their fields
//! (defaults, validation) happens in the other modules.

#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
