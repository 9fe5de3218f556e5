//! `kiln._native.compile` and the compiled model it returns.
//!
//! Invariant: a [`CompiledModel`] runs only on buffers `kiln.CompiledModel.run` prepared (one
//! contiguous byte view per graph input and output, checked again here by
//! [`kiln::CompiledModel::run_bytes`]); the run holds no Python object and no GIL, so any
//! number of Python threads may run one model at once (each run takes its own arena).

use crate::errors::{cli_error, compile_error, import_error, kiln_error, run_error};
use kiln_cli::error::{one_line, CliError};
use kiln_cli::shapes::ImportArgs;
use kiln_cli::{GraphArgs, LayoutArg};
use numpy::{PyReadonlyArray1, PyReadwriteArray1};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::HashMap;
use std::path::PathBuf;

/// Where a model comes from: a file (external data is read beside it) or protobuf bytes.
#[derive(Debug)]
pub enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Source {
    /// `model` as `kiln.compile` passes it: `bytes`, or a path (`str` or `os.PathLike`).
    pub fn of(model: &Bound<'_, PyAny>) -> PyResult<Source> {
        if let Ok(b) = model.cast::<PyBytes>() {
            return Ok(Source::Bytes(b.as_bytes().to_vec()));
        }
        Ok(Source::File(model.extract::<PathBuf>()?))
    }

    /// The model imported as `import` says (the CLI's `--input-shape`, `--int8-numerics`).
    pub fn load(&self, import: &ImportArgs) -> PyResult<kiln::Model> {
        match self {
            Source::File(path) => kiln_cli::load(path, import).map_err(|e| match e {
                CliError::Io { .. } => kiln_error("ModelImportError", one_line(&e), &[]),
                e => cli_error(&e),
            }),
            Source::Bytes(bytes) => {
                let mut options = kiln_cli::shapes::to_options(&import.input_shapes)
                    .map_err(|e| cli_error(&e))?;
                options.int8_numerics = import.int8_numerics.into();
                kiln::load_onnx_bytes(bytes, &options)
                    .map_err(|e| import_error(&e, "cannot import the model: "))
            }
        }
    }
}

/// `value` as one of the CLI's choices `T` (`--layout`, `--int8-numerics`), or a `ValueError`
/// naming the choices.
fn choice<T: clap::ValueEnum>(argument: &str, value: &str) -> PyResult<T> {
    T::from_str(value, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| format!("{:?}", p.get_name()))
            .collect();
        pyo3::exceptions::PyValueError::new_err(format!(
            "{argument} must be one of {}, not {value:?}",
            names.join(", ")
        ))
    })
}

/// Checks a `layout` argument (what `kiln tune` takes as a string).
pub fn check_layout(layout: &str) -> PyResult<()> {
    choice::<LayoutArg>("layout", layout).map(|_| ())
}

/// The import and graph options of every compiling function (a dict from the `kiln` package).
#[derive(Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct CompileArgs {
    pub tuning_log: Option<PathBuf>,
    pub input_shapes: Option<HashMap<String, Vec<usize>>>,
    pub pretuned: bool,
    pub rewrite: bool,
    pub layout: String,
    pub int8_numerics: String,
}

impl CompileArgs {
    /// The model's source, how to import it and the graph arguments.
    pub fn prepare(self, model: &Bound<'_, PyAny>) -> PyResult<(Source, ImportArgs, GraphArgs)> {
        let source = Source::of(model)?;
        let import = ImportArgs {
            input_shapes: self.input_shapes.unwrap_or_default().into_iter().collect(),
            int8_numerics: choice("int8_numerics", &self.int8_numerics)?,
        };
        let graph = graph_args(self.rewrite, &self.layout, self.tuning_log, self.pretuned)?;
        Ok((source, import, graph))
    }
}

/// The graph arguments of the CLI (`--no-rewrite`, `--layout`, `--tuning-log`,
/// `--no-pretuned`) from the keyword arguments of the Python functions.
pub fn graph_args(
    rewrite: bool,
    layout: &str,
    tuning_log: Option<PathBuf>,
    pretuned: bool,
) -> PyResult<GraphArgs> {
    Ok(GraphArgs {
        no_rewrite: !rewrite,
        dump_graph: None,
        layout: choice("layout", layout)?,
        tuning_log,
        no_pretuned: !pretuned,
    })
}

/// The name, numpy dtype name and shape of an input or output.
type TensorInfo = (String, String, Vec<usize>);

/// The numpy name of a Kiln dtype (`bfloat16` has none in numpy itself).
fn numpy_dtype(d: kiln::DType) -> &'static str {
    use kiln::DType as D;
    match d {
        D::F32 => "float32",
        D::F16 => "float16",
        D::I8 => "int8",
        D::U8 => "uint8",
        D::I16 => "int16",
        D::I32 => "int32",
        D::I64 => "int64",
        D::Bool => "bool",
        D::F64 => "float64",
        D::BF16 => "bfloat16",
        D::U16 => "uint16",
        D::U32 => "uint32",
        D::U64 => "uint64",
    }
}

fn infos(names: &[String], types: &[kiln::TensorType]) -> Vec<TensorInfo> {
    names
        .iter()
        .zip(types)
        .map(|(n, t)| (n.clone(), numpy_dtype(t.dtype).to_string(), t.shape.clone()))
        .collect()
}

/// A model compiled to native code for this machine.
#[derive(Debug)]
#[pyclass(frozen, module = "kiln._native")]
pub struct CompiledModel {
    inner: kiln::CompiledModel,
    /// The ONNX outputs whose rows depend on the data: (output, output holding its row count).
    row_counts: Vec<(usize, usize)>,
    target: String,
    threads: usize,
    notes: Vec<String>,
}

#[pymethods]
impl CompiledModel {
    /// The graph inputs: (name, numpy dtype, shape), in order.
    #[getter]
    fn inputs(&self) -> Vec<TensorInfo> {
        infos(self.inner.input_names(), self.inner.input_types())
    }

    /// Every graph output, row counts included: (name, numpy dtype, shape), in order.
    #[getter]
    fn graph_outputs(&self) -> Vec<TensorInfo> {
        infos(self.inner.output_names(), self.inner.output_types())
    }

    /// (output, row-count output) of each output whose rows depend on the data.
    #[getter]
    fn row_counts(&self) -> Vec<(usize, usize)> {
        self.row_counts.clone()
    }

    #[getter]
    fn target(&self) -> &str {
        &self.target
    }

    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// What the compilation had to tell: the importer's notes (e.g. a symbolic dimension bound
    /// to 1) and which tuned schedules apply.
    #[getter]
    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// Numbers about the compilation.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let s = self.inner.stats();
        let d = pyo3::types::PyDict::new(py);
        d.set_item("kernels", s.kernels)?;
        d.set_item("tuned_kernels", s.tuned_kernels)?;
        d.set_item("arena_bytes", s.arena_bytes)?;
        d.set_item("compile_ms", s.compile_ms)?;
        Ok(d)
    }

    /// Runs the model on the bytes of each input, writing each output's bytes (one contiguous
    /// uint8 view per graph input and output, exactly its size), with the GIL released.
    fn run_bytes(
        &self,
        py: Python<'_>,
        inputs: Vec<PyReadonlyArray1<'_, u8>>,
        mut outputs: Vec<PyReadwriteArray1<'_, u8>>,
    ) -> PyResult<()> {
        let not_contiguous =
            |_| pyo3::exceptions::PyValueError::new_err("run_bytes needs contiguous buffers");
        let ins: Vec<&[u8]> = inputs
            .iter()
            .map(|a| a.as_slice().map_err(not_contiguous))
            .collect::<PyResult<_>>()?;
        let mut outs: Vec<&mut [u8]> = outputs
            .iter_mut()
            .map(|a| a.as_slice_mut().map_err(not_contiguous))
            .collect::<PyResult<_>>()?;
        let model = &self.inner;
        py.detach(move || model.run_bytes(&ins, &mut outs))
            .map_err(|e| run_error(&e))
    }
}

/// Imports and compiles a model for this machine (see `kiln.compile`).
#[pyfunction]
#[pyo3(signature = (model, target, threads, args))]
pub fn compile(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    target: String,
    threads: Option<usize>,
    args: CompileArgs,
) -> PyResult<CompiledModel> {
    let (source, import, graph) = args.prepare(model)?;
    let threads = match threads {
        Some(0) => {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "threads must be positive (None: one per CPU)",
            ))
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    py.detach(move || {
        let t = kiln::Target::named(&target).map_err(|e| compile_error(&e))?;
        let mut model = source.load(&import)?;
        let schedules = graph
            .schedules_noting(t.name(), Some(threads), &mut |n| model.notes.push(n))
            .map_err(|e| crate::errors::cli_error(&e))?;
        let compiled = kiln::Compiler::new(t.clone())
            .with_options(kiln::CompileOptions {
                threads,
                graph: graph.get(),
                schedules,
                profile: false,
            })
            .compile(&model.graph)
            .map_err(|e| compile_error(&e))?;
        Ok(CompiledModel {
            inner: compiled,
            row_counts: model
                .row_counts
                .iter()
                .map(|r| (r.output, r.rows_output))
                .collect(),
            target: t.name().to_string(),
            threads,
            notes: model.notes,
        })
    })
}
