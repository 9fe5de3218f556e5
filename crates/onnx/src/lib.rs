//! ONNX import: protobuf -> Kiln graph IR.
//!
//! Invariant: an imported graph is verified, fully static (symbolic dims bound, shape subgraphs
//! folded to constants) and uses only IR ops; anything else is an [`ImportError`] naming the op
//! type, node, opset and reason.

mod builder;
mod control;
mod dynamic_rows;
mod import;
mod node;
mod ops;
pub mod proto;
mod tensor_io;
#[cfg(test)]
mod tests;

pub use dynamic_rows::RowCount;
use kiln_ir::{Graph, Tensor};
use prost::Message;
use std::collections::HashMap;
use std::path::Path;

/// The default-domain opsets this importer implements fully.
pub const SUPPORTED_OPSETS: std::ops::RangeInclusive<i64> = 7..=21;

/// The newest opset ONNX has defined that the importer accepts: opsets after
/// [`SUPPORTED_OPSETS`] up to this one import with a note (their changes to the supported ops are
/// new dtypes and attributes whose defaults keep the older semantics); anything newer is refused.
pub const NEWEST_KNOWN_OPSET: i64 = 28;

/// Options of an import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Shapes bound to graph inputs by name; they replace symbolic (and must match fixed) dims.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Graph inputs frozen to a value: they become constants (and are no longer graph inputs),
    /// so shape operands fed through inputs (axes, sizes, zero points) fold at import time.
    /// Each value must have the input's declared dtype and fit its declared shape.
    pub constant_inputs: HashMap<String, Tensor>,
    /// The arithmetic of int8 QDQ patterns.
    pub int8_numerics: Int8Numerics,
}

/// How `DequantizeLinear -> op -> QuantizeLinear` patterns of int8 QDQ models are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int8Numerics {
    /// As onnxruntime's CPU provider computes them, bit for bit: the patterns it fuses as its
    /// integer kernels do (float-scale requantisation rounding half to even), the others as
    /// float ops in MLAS's order (docs/onnxruntime-int8-numerics.md).
    #[default]
    OnnxRuntime,
    /// TOSA v1.0: every fusable pattern becomes integer ops with a fixed-point RESCALE (round
    /// half up), as TOSA hardware computes it; within one quantisation step of onnxruntime per
    /// requantisation.
    Tosa,
}

/// An imported model.
#[derive(Clone, Debug)]
pub struct Model {
    pub graph: Graph,
    /// Messages for the user (e.g. a symbolic batch bound to 1).
    pub notes: Vec<String>,
    /// The default-domain opset the model declares.
    pub opset: i64,
    /// Graph outputs whose number of rows depends on the data (NonMaxSuppression's result and
    /// what is computed row by row from it): each has its static bound of rows and an extra
    /// graph output, appended after the ONNX outputs, holding its row count.
    pub row_counts: Vec<RowCount>,
}

impl Model {
    /// The ONNX outputs from the outputs of the compiled (or interpreted) graph: each output
    /// with data-dependent rows cut to its count, the count outputs dropped. Outputs of a model
    /// without such outputs are returned unchanged.
    pub fn trim_outputs(&self, outputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        dynamic_rows::trim(&self.row_counts, outputs)
    }

    /// How many of the graph's outputs are ONNX outputs (the rest are row counts).
    pub fn onnx_output_count(&self) -> usize {
        self.graph.outputs().len() - self.row_counts.len()
    }
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
    /// Kiln compiles static graphs: an operand such as a shape or axes list is computed at run
    /// time from a graph input. Binding that input to a constant (`ImportOptions::constant_inputs`)
    /// or exporting it as an initializer makes the model importable.
    #[error("{op_type} (node `{node}`, opset {opset}) needs a static operand: {reason}")]
    NotStatic {
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
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let base = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    import_bytes(&bytes, base, options)
}

/// Imports a model from its protobuf bytes; external data is read relative to `base_dir`
/// (refused when `None`).
pub fn import_bytes(
    bytes: &[u8],
    base_dir: Option<&Path>,
    options: &ImportOptions,
) -> Result<Model, ImportError> {
    let model = proto::ModelProto::decode(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
    import::import_model(&model, base_dir, options)
}

/// Reads a serialized ONNX `TensorProto` (the test-data `input_N.pb` format): its name and value.
pub fn read_tensor_file(path: &Path) -> Result<(String, Tensor), ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let t = proto::TensorProto::decode(bytes.as_slice())
        .map_err(|e| ImportError::Decode(format!("{}: {e}", path.display())))?;
    let name = t.name.clone().unwrap_or_default();
    let tensor = tensor_io::decode_tensor(&t, path.parent()).map_err(|e| {
        ImportError::InvalidModel(format!("tensor `{name}` in {}: {e}", path.display()))
    })?;
    Ok((name, tensor))
}

/// Writes a tensor as a serialized ONNX `TensorProto`.
pub fn write_tensor_file(path: &Path, name: &str, tensor: &Tensor) -> Result<(), ImportError> {
    let bytes = tensor_io::encode_tensor(name, tensor).encode_to_vec();
    std::fs::write(path, bytes).map_err(|source| ImportError::Io {
        path: path.display().to_string(),
        source,
    })
}
