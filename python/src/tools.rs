//! The compiler's other entry points from Python: AOT libraries, tuning, prediction, targets,
//! and the measurement worker that tuning starts (`python -m kiln._worker`).
//!
//! Invariant: each function does what the `kiln` command of the same name does with the same
//! arguments (they call the CLI's library), releasing the GIL while Kiln works; tuning takes
//! the GIL back only to call the progress callback, whose exceptions end nothing but are
//! raised when the run has ended (its log is complete either way).

use crate::errors::{cli_error, compile_error, kiln_error};
use crate::model::{graph_args, CompileArgs};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;

/// What a library build made: (path, library bytes, weight bytes, kernels, arena bytes, CPU
/// features the code needs, notes).
type LibraryRow = (PathBuf, u64, usize, usize, usize, Vec<String>, Vec<String>);

/// Compiles a model into a shared library with the C ABI (see `kiln.compile_library`).
#[pyfunction]
#[pyo3(signature = (model, out, target, header, single_thread, prefix, args))]
#[allow(clippy::too_many_arguments)]
pub fn compile_library(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    out: PathBuf,
    target: String,
    header: Option<PathBuf>,
    single_thread: bool,
    prefix: Option<String>,
    args: CompileArgs,
) -> PyResult<LibraryRow> {
    let (source, import, graph) = args.prepare(model)?;
    let info = py.detach(move || {
        let t = kiln::Target::named(&target).map_err(|e| compile_error(&e))?;
        if let Some(p) = &prefix {
            kiln::aot::validate_prefix(p).map_err(|e| compile_error(&e))?;
        }
        let mut model = source.load(&import)?;
        let schedules = graph
            .schedules_noting(t.name(), single_thread.then_some(1), &mut |n| {
                model.notes.push(n)
            })
            .map_err(|e| cli_error(&e))?;
        let options = kiln::AotOptions {
            parallel: !single_thread,
            header,
            graph: graph.get(),
            // As `kiln compile`: a single-threaded library takes records measured on one
            // thread, a parallel one the fastest of any thread count.
            schedules,
            prefix,
        };
        let info = kiln::Compiler::new(t)
            .compile_library(&model.graph, &options, &out)
            .map_err(|e| compile_error(&e))?;
        Ok::<_, PyErr>((info, model.notes))
    })?;
    let (info, notes) = info;
    Ok((
        info.path,
        info.library_bytes,
        info.constant_bytes,
        info.kernels,
        info.arena_bytes,
        info.cpu_features,
        notes,
    ))
}

/// One task of a tuning result: (description, weight, trials, default ms, best ms).
type TaskRow = (String, usize, usize, Option<f64>, Option<f64>);

/// What a tuning run found: (trials, errors, default ms, tuned ms, tasks).
type TuneRow = (usize, usize, Option<f64>, Option<f64>, Vec<TaskRow>);

/// Tunes a model file (see `kiln.tune`).
#[pyfunction]
#[pyo3(signature = (model, log, worker, progress, *, trials, target, threads, resume, batch, seed, repeat_ms, build_timeout_ms, run_timeout_ms, input_shapes, rewrite, layout, rpc, tracker, device_key, devices, key_file, plot, confirm, pretrained))]
#[allow(clippy::too_many_arguments)]
pub fn tune(
    py: Python<'_>,
    model: PathBuf,
    log: PathBuf,
    worker: Vec<String>,
    progress: Option<Py<PyAny>>,
    trials: usize,
    target: String,
    threads: usize,
    resume: bool,
    batch: usize,
    seed: u64,
    repeat_ms: f64,
    build_timeout_ms: u64,
    run_timeout_ms: u64,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    rewrite: bool,
    layout: String,
    rpc: Vec<String>,
    tracker: Option<String>,
    device_key: Option<String>,
    devices: usize,
    key_file: Option<PathBuf>,
    plot: Option<PathBuf>,
    confirm: usize,
    pretrained: bool,
) -> PyResult<TuneRow> {
    crate::model::check_layout(&layout)?;
    let req = kiln_cli::tune::TuneRequest {
        model,
        log,
        trials,
        target,
        plot,
        resume,
        threads,
        batch,
        seed,
        repeat_ms,
        build_timeout_ms,
        run_timeout_ms,
        input_shapes: input_shapes.unwrap_or_default().into_iter().collect(),
        rewrite,
        layout,
        remote: kiln_cli::remote::RemoteArgs {
            rpc,
            tracker,
            device_key,
            devices,
            key_file,
            ..Default::default()
        },
        cost_model: None,
        no_pretrained: !pretrained,
        export_pretuned: None,
        confirm,
        constant_cache: kiln_tune::cache::ConstantCache::Auto,
        seeds_from: vec![],
        no_seeds: false,
    };
    let mut callback_error: Option<PyErr> = None;
    let summary = py.detach(|| {
        kiln_cli::tune::tune_with(
            &req,
            worker.into_iter().map(Into::into).collect(),
            &mut |event| {
                let (Some(cb), kiln_cli::tune::TuneEvent::Round(p)) = (&progress, event) else {
                    return;
                };
                if callback_error.is_some() {
                    return;
                }
                Python::attach(|py| {
                    if let Err(e) = cb.call1(py, (p.trials, p.total, p.model_ms, p.errors)) {
                        callback_error = Some(e);
                    }
                });
            },
        )
    });
    let summary = summary.map_err(|e| cli_error(&e))?;
    if let Some(e) = callback_error {
        return Err(e);
    }
    Ok((
        summary.trials,
        summary.errors,
        summary.default_ms,
        summary.tuned_ms,
        summary
            .tasks
            .into_iter()
            .map(|t| (t.desc, t.weight, t.trials, t.default_ms, t.best_ms))
            .collect(),
    ))
}

/// Predicts a model file's latency (see `kiln.predict`); returns the prediction as JSON.
#[pyfunction]
#[pyo3(signature = (model, *, target, threads, tuning_log, pretuned, cost_model, device, input_shapes, rewrite, layout))]
#[allow(clippy::too_many_arguments)]
pub fn predict(
    py: Python<'_>,
    model: PathBuf,
    target: String,
    threads: usize,
    tuning_log: Option<PathBuf>,
    pretuned: bool,
    cost_model: Option<PathBuf>,
    device: Option<PathBuf>,
    input_shapes: Option<HashMap<String, Vec<usize>>>,
    rewrite: bool,
    layout: String,
) -> PyResult<String> {
    let graph = graph_args(rewrite, &layout, tuning_log, pretuned)?;
    py.detach(move || {
        let log = graph
            .schedule_log(&target, Some(threads))
            .map_err(|e| cli_error(&e))?;
        let req = kiln_cli::predict::PredictRequest {
            model,
            target,
            threads,
            cost_model,
            device,
            json: true,
            import: kiln_cli::shapes::ImportArgs {
                input_shapes: input_shapes.unwrap_or_default().into_iter().collect(),
                ..Default::default()
            },
            graph: graph.get(),
            log,
        };
        let (p, _) = kiln_cli::predict::prediction(&req).map_err(|e| cli_error(&e))?;
        serde_json::to_string(&p).map_err(|e| kiln_error("KilnError", e.to_string(), &[]))
    })
}

/// The built-in targets: (name, triple or None for the host, description, runs here).
#[pyfunction]
pub fn targets() -> Vec<(String, Option<String>, String, bool)> {
    kiln::Target::builtin()
        .into_iter()
        .map(|t| {
            (
                t.name().to_string(),
                t.triple().map(str::to_string),
                t.description().to_string(),
                t.runs_natively(),
            )
        })
        .collect()
}

/// Serves one measurement job on stdin/stdout: what `python -m kiln._worker` runs for
/// `kiln.tune` (the `kiln measure-worker` of the CLI).
#[pyfunction]
pub fn measure_worker(py: Python<'_>) -> PyResult<()> {
    py.detach(|| {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        kiln_tune::measure::serve(&mut stdin.lock(), &mut stdout.lock())
    })
    .map_err(|e| kiln_error("TuneError", e.to_string(), &[]))
}
