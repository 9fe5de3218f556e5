//! ONNX import: protobuf -> Kiln graph IR.
//!
//! Invariant: an imported graph is verified, fully static (symbolic dims bound, shape subgraphs
//! folded to constants) and uses only IR ops; anything else is an [`ImportError`] naming the op
//! type, node, opset and reason.

use kiln_ir::{Graph, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Options of an import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Shapes bound to graph inputs by name; they replace symbolic (and must match fixed) dims.
    pub input_shapes: HashMap<String, Vec<usize>>,
}

/// An imported model.
#[derive(Clone, Debug)]
pub struct Model {
    pub graph: Graph,
    /// Messages for the user (e.g. a symbolic batch bound to 1).
    pub notes: Vec<String>,
    /// The default-domain opset the model declares.
    pub opset: i64,
}

/// Why a model could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed ONNX protobuf: {0}")]
    Decode(String),
    #[error("unsupported {op_type} (node `{node}`, opset {opset}): {reason}")]
    Unsupported {
        op_type: String,
        node: String,
        opset: i64,
        reason: String,
    },
    #[error("invalid {op_type} (node `{node}`, opset {opset}): {reason}")]
    InvalidNode {
        op_type: String,
        node: String,
        opset: i64,
        reason: String,
    },
    #[error("invalid model: {0}")]
    InvalidModel(String),
}

/// Loads and imports an ONNX model file (external data is read relative to its folder).
pub fn load_model(path: &Path, options: &ImportOptions) -> Result<Model, ImportError> {
    let _ = (path, options);
    Err(ImportError::InvalidModel("not implemented yet".into()))
}

/// Imports a model from its protobuf bytes; external data is read relative to `base_dir`
/// (refused when `None`).
pub fn import_bytes(
    bytes: &[u8],
    base_dir: Option<&Path>,
    options: &ImportOptions,
) -> Result<Model, ImportError> {
    let _ = (bytes, base_dir, options);
    Err(ImportError::InvalidModel("not implemented yet".into()))
}

/// Reads a serialized ONNX `TensorProto` (the test-data `input_N.pb` format): its name and value.
pub fn read_tensor_file(path: &Path) -> Result<(String, Tensor), ImportError> {
    let _ = path;
    Err(ImportError::InvalidModel("not implemented yet".into()))
}

/// Writes a tensor as a serialized ONNX `TensorProto`.
pub fn write_tensor_file(path: &Path, name: &str, tensor: &Tensor) -> Result<(), ImportError> {
    let _ = (path, name, tensor);
    Err(ImportError::InvalidModel("not implemented yet".into()))
}
