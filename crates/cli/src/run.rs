//! `kiln run`: one model, one data folder.
//!
//! Invariant: the outcome is [`Outcome::Mismatch`] iff some expected output was present and did
//! not match; outputs are written only when an output folder was asked for.

use crate::backend::{Backend, ExecOptions};
use crate::compare::Tolerance;
use crate::data::{check_data_set, tensor_path};
use crate::error::CliError;
use crate::shapes::ImportArgs;
use crate::{load, Outcome};
use std::path::PathBuf;

/// What `kiln run` was asked to do.
#[derive(Debug)]
pub struct RunRequest {
    pub model: PathBuf,
    pub data: PathBuf,
    pub backend: Backend,
    pub out: Option<PathBuf>,
    /// Threads of the JIT's parallel loops.
    pub threads: usize,
    pub tolerance: Tolerance,
    pub import: ImportArgs,
    pub graph: kiln::GraphOptions,
    /// Tuned schedules (`--tuning-log`).
    pub schedules: kiln::TunedSchedules,
    /// The target the JIT compiles for (`--target`: `host` or one that runs here).
    pub target: String,
}

/// Runs the request, printing one line per output.
pub fn run(req: &RunRequest) -> Result<Outcome, CliError> {
    if !req.data.is_dir() {
        return Err(CliError::BadData {
            path: req.data.clone(),
            reason: "no such data folder".into(),
        });
    }
    let target = kiln::Target::named(&req.target).map_err(|e| CliError::Usage(e.to_string()))?;
    let model = load(&req.model, &req.import)?;
    for note in &model.notes {
        println!("note: {note}");
    }
    let exec = ExecOptions {
        threads: req.threads,
        graph: req.graph.clone(),
        schedules: req.schedules.clone(),
        target: Some(target),
    };
    let checks = check_data_set(&model, req.backend, &exec, &req.data, req.tolerance)?;
    if let Some(out) = &req.out {
        std::fs::create_dir_all(out).map_err(|e| CliError::io(out, e))?;
        for (n, check) in checks.iter().enumerate() {
            let path = tensor_path(out, "output", n);
            kiln_onnx::write_tensor_file(&path, &check.name, &check.value).map_err(|source| {
                CliError::WriteTensor {
                    path: path.clone(),
                    source,
                }
            })?;
        }
    }
    let mut outcome = Outcome::Pass;
    for (n, check) in checks.iter().enumerate() {
        let head = format!("output {n} `{}` {}", check.name, check.value.ty());
        match &check.comparison {
            None => println!("{head}: no expected value"),
            Some(c) => {
                let verdict = if c.passed() { "PASS" } else { "FAIL" };
                println!("{head}: {c}: {verdict}");
                if !c.passed() {
                    outcome = Outcome::Mismatch;
                }
            }
        }
    }
    if let Some(out) = &req.out {
        println!("wrote {} output(s) to {}", checks.len(), out.display());
    }
    Ok(outcome)
}
