//! Shared helpers of Kiln's integration tests: where the bundled test assets live.
//!
//! Invariant: every path returned is inside this `tests/` folder of the repository, so the tests
//! need nothing outside the checkout (no /work/shared, no network).

use std::path::{Path, PathBuf};

/// This folder (`<repo>/tests`).
pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A bundled model with its test data.
#[derive(Clone, Debug)]
pub struct BundledModel {
    pub name: &'static str,
    pub model: PathBuf,
    /// Folder with `input_N.pb` and `output_N.pb`.
    pub data: PathBuf,
}

/// The float models under `tests/models` (the int8 one has its own tests).
pub fn bundled_models() -> Vec<BundledModel> {
    ["resnet8_cifar", "dscnn_kws", "decoder_block"]
        .into_iter()
        .map(|name| BundledModel {
            name,
            model: tests_dir().join("models").join(format!("{name}.onnx")),
            data: tests_dir().join("models").join(format!("{name}_data")),
        })
        .collect()
}

/// onnxruntime's outputs for a model of `../shared/models-int8` whose stored `output_N.pb` another
/// onnxruntime wrote (`tests/models/onnxruntime-1.32/NAME`, made by
/// `tools/ort_int8/reference_outputs.py`), if there are any.
pub fn onnxruntime_outputs(name: &str) -> Option<PathBuf> {
    let dir = tests_dir()
        .join("models")
        .join("onnxruntime-1.32")
        .join(name);
    dir.is_dir().then_some(dir)
}

/// The malformed-model corpus (`tests/malformed/*.onnx`), sorted.
pub fn malformed_models() -> Vec<PathBuf> {
    let dir = tests_dir().join("malformed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    files.sort();
    files
}
