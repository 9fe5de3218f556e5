//! Test-data folders in the ONNX layout: `input_N.pb` and `output_N.pb` (serialized
//! `TensorProto`s), N counting from 0; and checking a model's results against them.
//!
//! Invariant: inputs are read in index order up to the first missing index; an expected output is
//! only ever compared with the model output of the same index, and an `output_N.pb` beyond the
//! model's outputs is an error, never silently ignored.

use crate::backend::{Backend, ExecOptions};
use crate::compare::{compare, Comparison, Tolerance};
use crate::error::CliError;
use kiln_ir::Tensor;
use kiln_onnx::Model;
use std::path::{Path, PathBuf};

/// Path of `input_N.pb` / `output_N.pb` in `dir`.
pub fn tensor_path(dir: &Path, kind: &str, n: usize) -> PathBuf {
    dir.join(format!("{kind}_{n}.pb"))
}

fn read(path: &Path) -> Result<Tensor, CliError> {
    kiln_onnx::read_tensor_file(path)
        .map(|(_, t)| t)
        .map_err(|source| CliError::ReadTensor {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads `input_0.pb`, `input_1.pb`, ... from `dir`.
pub fn read_inputs(dir: &Path) -> Result<Vec<Tensor>, CliError> {
    Ok(read_named_inputs(dir)?
        .into_iter()
        .map(|(_, t)| t)
        .collect())
}

/// Reads `input_0.pb`, `input_1.pb`, ... from `dir` with the tensor names they record.
pub fn read_named_inputs(dir: &Path) -> Result<Vec<(String, Tensor)>, CliError> {
    if !dir.is_dir() {
        return Err(CliError::BadData {
            path: dir.to_path_buf(),
            reason: "not a folder".into(),
        });
    }
    let mut inputs = Vec::new();
    loop {
        let path = tensor_path(dir, "input", inputs.len());
        if !path.exists() {
            return Ok(inputs);
        }
        let named = kiln_onnx::read_tensor_file(&path).map_err(|source| CliError::ReadTensor {
            path: path.clone(),
            source,
        })?;
        inputs.push(named);
    }
}

/// Reads the expected outputs of a model with `n_outputs` outputs: `Some` where `output_N.pb`
/// exists.
pub fn read_expected(dir: &Path, n_outputs: usize) -> Result<Vec<Option<Tensor>>, CliError> {
    let extra = tensor_path(dir, "output", n_outputs);
    if extra.exists() {
        return Err(CliError::BadData {
            path: extra,
            reason: format!("the model has only {n_outputs} output(s)"),
        });
    }
    (0..n_outputs)
        .map(|n| {
            let path = tensor_path(dir, "output", n);
            path.exists().then(|| read(&path)).transpose()
        })
        .collect()
}

/// One model output, and its comparison with the expected value when there is one.
#[derive(Debug)]
pub struct OutputCheck {
    pub name: String,
    pub value: Tensor,
    pub comparison: Option<Comparison>,
}

impl OutputCheck {
    /// False only when compared and out of tolerance.
    pub fn passed(&self) -> bool {
        self.comparison.as_ref().is_none_or(Comparison::passed)
    }
}

/// Runs `graph` with `backend` (as `exec` says) on the inputs in `dir` and
/// compares with the outputs there.
pub fn check_data_set(
    model: &Model,
    backend: Backend,
    exec: &ExecOptions,
    dir: &Path,
    tol: Tolerance,
) -> Result<Vec<OutputCheck>, CliError> {
    let inputs = read_inputs(dir)?;
    check_outputs(model, backend, exec, dir, &inputs, tol)
}

/// Runs `model` with `backend` on `inputs` and compares its ONNX outputs (data-dependent rows
/// cut to their counts) with the outputs in `dir`.
pub fn check_outputs(
    model: &Model,
    backend: Backend,
    exec: &ExecOptions,
    dir: &Path,
    inputs: &[Tensor],
    tol: Tolerance,
) -> Result<Vec<OutputCheck>, CliError> {
    let graph = &model.graph;
    let expected = read_expected(dir, model.onnx_output_count())?;
    let outputs = backend
        .run(graph, inputs, exec)
        .map_err(|source| CliError::Backend {
            backend: backend.name(),
            source: Box::new(source),
        })?;
    let outputs = model
        .trim_outputs(outputs)
        .map_err(|reason| CliError::BadData {
            path: dir.to_path_buf(),
            reason: format!("the row counts of the outputs: {reason}"),
        })?;
    Ok(outputs
        .into_iter()
        .zip(expected)
        .zip(graph.outputs())
        .enumerate()
        .map(|(i, ((value, expected), &v))| OutputCheck {
            name: graph
                .value(v)
                .name
                .clone()
                .unwrap_or_else(|| format!("output {i}")),
            comparison: expected.map(|e| compare(&value, &e, tol)),
            value,
        })
        .collect())
}
