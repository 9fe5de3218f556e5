//! What the tune crate's tests share: the bundled model they tune.

use kiln_tune::measure::ModelSpec;

/// The bundled keyword-spotting model (small, every op class of a CNN).
pub fn dscnn() -> ModelSpec {
    ModelSpec {
        path: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/models/dscnn_kws.onnx"),
        input_shapes: vec![],
        rewrite: true,
        layout: "auto".into(),
    }
}
