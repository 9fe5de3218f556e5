//! Kiln: a tensor compiler for edge CPUs. This crate is the library facade: load an ONNX model,
//! compile it for a target, run it with typed tensors.
//!
//! ```
//! use kiln::{Compiler, Target};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/models");
//! let model = kiln::load_onnx(format!("{dir}/dscnn_kws.onnx"), &Default::default())?;
//! let compiled = Compiler::new(Target::host()).compile(&model.graph)?;
//! let (_, input) = kiln::read_tensor(format!("{dir}/dscnn_kws_data/input_0.pb"))?;
//! let outputs = compiled.run(&[input])?;
//! assert_eq!(outputs[0].shape(), &[1, 12]);
//! # Ok(()) }
//! ```
//!
//! Invariant: a [`CompiledModel`] computes what the reference interpreter computes for the same
//! graph (up to float rounding of reordered reductions), allocating nothing per run but its one
//! arena, whose size the memory plan fixed at compile time.

pub mod aot;
mod bytes;
mod compile;
mod empty;
pub mod graph_opt;
pub mod profile;
pub mod target;

pub use aot::{compile_kernel_library, AotError, AotOptions, KernelParam, LibraryInfo};
pub use bytes::{tensor_bytes, tensor_from_bytes};
pub use compile::{CompileError, CompileStats, CompiledModel, RunError, StageTimes};
pub use graph_opt::{GraphOptions, RewriteReport};
pub use kiln_ir::{DType, Graph, Tensor, TensorType};
pub use kiln_onnx::{ImportError, ImportOptions, Int8Numerics, Model};
pub use kiln_operators::kernel::TunedSchedules;
pub use kiln_rewrite::{LayoutChoice, RewriteOptions};
pub use profile::{synthetic_input, KernelInfo, ProfiledRun};
pub use target::{Target, TargetError};

use std::path::Path;

/// Options of a compilation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Threads for parallel loops: 1 runs everything on the calling thread.
    pub threads: usize,
    /// What happens to the graph before lowering.
    pub graph: GraphOptions,
    /// Tuned schedules (from a tuning log) replacing the default schedule of their workloads.
    pub schedules: TunedSchedules,
    /// Record a timestamp around every kernel call ([`CompiledModel::run_profiled`]).
    pub profile: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            graph: GraphOptions::default(),
            schedules: TunedSchedules::default(),
            profile: false,
        }
    }
}

/// Compiles graphs for one target.
#[derive(Clone, Debug)]
pub struct Compiler {
    target: Target,
    options: CompileOptions,
}

impl Compiler {
    /// A compiler for `target` with default options.
    pub fn new(target: Target) -> Compiler {
        Compiler {
            target,
            options: CompileOptions::default(),
        }
    }

    /// Sets the options.
    pub fn with_options(mut self, options: CompileOptions) -> Compiler {
        self.options = options;
        self
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Compiles a verified graph into a self-contained shared library at `out` (see [`aot`]).
    pub fn compile_library(
        &self,
        graph: &Graph,
        options: &AotOptions,
        out: &Path,
    ) -> Result<LibraryInfo, AotError> {
        aot::compile_library(graph, &self.target, options, out)
    }

    /// Compiles a verified graph into native code (JIT) for this machine.
    pub fn compile(&self, graph: &Graph) -> Result<CompiledModel, CompileError> {
        compile::compile(graph, &self.target, &self.options)
    }
}

/// Loads and imports an ONNX model.
pub fn load_onnx(path: impl AsRef<Path>, options: &ImportOptions) -> Result<Model, ImportError> {
    kiln_onnx::load_model(path.as_ref(), options)
}

/// Imports an ONNX model from its protobuf bytes (a model with external data must be loaded
/// from its file, [`load_onnx`], which finds the data beside it).
pub fn load_onnx_bytes(bytes: &[u8], options: &ImportOptions) -> Result<Model, ImportError> {
    kiln_onnx::import_bytes(bytes, None, options)
}

/// Reads a serialized ONNX `TensorProto` file: its name and value.
pub fn read_tensor(path: impl AsRef<Path>) -> Result<(String, Tensor), ImportError> {
    kiln_onnx::read_tensor_file(path.as_ref())
}
