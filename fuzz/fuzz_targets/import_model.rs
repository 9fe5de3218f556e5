//! Fuzz target: arbitrary bytes as an ONNX model.
//!
//! Invariant checked: `import_bytes` never panics, never aborts on a huge allocation, and every
//! model it accepts is a graph that passes `verify`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = kiln_onnx::import_bytes(data, None, &Default::default()) {
        if let Err(e) = model.graph.verify() {
            panic!("imported graph fails verification: {e}");
        }
    }
});
