//! `kiln bench`: compile a model once, then time repeated runs.
//!
//! Invariant: the timed runs use the same compiled model and inputs; warm-up runs are never
//! timed; the report holds the median and minimum of exactly `iters` timed runs.

use crate::data::read_inputs;
use crate::error::CliError;
use crate::load;
use crate::shapes::ImportArgs;
use std::path::PathBuf;
use std::time::Instant;

/// What `kiln bench` was asked to do.
#[derive(Debug)]
pub struct BenchRequest {
    pub model: PathBuf,
    pub data: Option<PathBuf>,
    pub threads: usize,
    pub iters: usize,
    /// The target (`host`, or one that runs natively here).
    pub target: String,
    pub json: bool,
    pub import: ImportArgs,
    pub graph: kiln::GraphOptions,
    /// Tuned schedules (`--tuning-log`).
    pub schedules: kiln::TunedSchedules,
    /// Time every kernel call (`--profile`).
    pub profile: bool,
    /// Write the profiled runs as a Chrome trace (`--profile-json FILE`; implies profiling).
    pub profile_json: Option<PathBuf>,
}

/// The measured numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub median_ms: f64,
    pub min_ms: f64,
    pub compile_ms: f64,
    /// ONNX import, before the compilation (not part of `compile_ms`).
    pub import_ms: f64,
    /// `compile_ms` by stage.
    pub stages: kiln::StageTimes,
    pub arena_bytes: usize,
    pub naive_bytes: usize,
    pub kernels: usize,
    /// Kernels scheduled by a tuning record (`--tuning-log`).
    pub tuned_kernels: usize,
    pub threads: usize,
    /// Graph nodes (not constants) before and after rewriting, and the saturation time.
    pub rewrite: Option<(usize, usize, f64)>,
    /// Fusion groups chosen by the e-graph, and whether it fell back to the partition rule.
    pub fusion: Option<(usize, bool)>,
    /// Per-kernel times, when profiled.
    pub profile: Option<crate::profile::Profile>,
}

/// Compiles and times the model.
pub fn bench(req: &BenchRequest) -> Result<BenchReport, CliError> {
    if req.iters == 0 || req.threads == 0 {
        return Err(CliError::Usage(
            "--iters and --threads must be positive".into(),
        ));
    }
    let target = kiln::Target::named(&req.target).map_err(|e| CliError::Usage(e.to_string()))?;
    let import_start = Instant::now();
    let model = load(&req.model, &req.import)?;
    let import_ms = import_start.elapsed().as_secs_f64() * 1e3;
    let backend_err = |source: crate::backend::BackendError| CliError::Backend {
        backend: "jit",
        source: Box::new(source),
    };
    let profiling = req.profile || req.profile_json.is_some();
    let compiled = kiln::Compiler::new(target)
        .with_options(kiln::CompileOptions {
            threads: req.threads,
            graph: req.graph.clone(),
            schedules: req.schedules.clone(),
            profile: profiling,
        })
        .compile(&model.graph)
        .map_err(|e| backend_err(e.into()))?;
    let inputs = match &req.data {
        Some(dir) => read_inputs(dir)?,
        None => compiled
            .input_types()
            .iter()
            .map(kiln::synthetic_input)
            .collect(),
    };
    let warmup = (req.iters / 10).clamp(2, 10);
    for _ in 0..warmup {
        compiled.run(&inputs).map_err(|e| backend_err(e.into()))?;
    }
    let mut times = Vec::with_capacity(req.iters);
    let mut runs = vec![];
    for _ in 0..req.iters {
        let start = Instant::now();
        if profiling {
            runs.push(
                compiled
                    .run_profiled(&inputs)
                    .map_err(|e| backend_err(e.into()))?,
            );
        } else {
            compiled.run(&inputs).map_err(|e| backend_err(e.into()))?;
        }
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let profile =
        profiling.then(|| crate::profile::summarize(compiled.kernels(), &runs, req.threads));
    if let Some(path) = &req.profile_json {
        crate::profile::write_chrome_trace(path, compiled.kernels(), &runs)?;
    }
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    let median_ms = if times.len() % 2 == 1 {
        times[mid]
    } else {
        (times[mid - 1] + times[mid]) / 2.0
    };
    let stats = compiled.stats();
    Ok(BenchReport {
        median_ms,
        min_ms: times[0],
        compile_ms: stats.compile_ms,
        import_ms,
        stages: stats.stages,
        arena_bytes: stats.arena_bytes,
        naive_bytes: stats.naive_bytes,
        kernels: stats.kernels,
        tuned_kernels: stats.tuned_kernels,
        threads: req.threads,
        rewrite: stats
            .rewrite
            .as_ref()
            .map(|r| (r.nodes_before, r.nodes_after, r.saturation_ms)),
        fusion: stats
            .rewrite
            .as_ref()
            .and_then(|r| r.fusion.as_ref())
            .map(|f| (f.kernels, f.fell_back)),
        profile,
    })
}

/// Prints the report as text or as one JSON object.
pub fn print(report: &BenchReport, json: bool) {
    if json {
        let v = serde_json::json!({
            "median_ms": report.median_ms,
            "min_ms": report.min_ms,
            "compile_ms": report.compile_ms,
            "import_ms": report.import_ms,
            "stages_ms": serde_json::json!({
                "rewrite": report.stages.rewrite_ms,
                "lower": report.stages.lower_ms,
                "plan": report.stages.plan_ms,
                "codegen": report.stages.codegen_ms,
            }),
            "arena_bytes": report.arena_bytes,
            "naive_bytes": report.naive_bytes,
            "kernels": report.kernels,
            "tuned_kernels": report.tuned_kernels,
            "threads": report.threads,
            "rewrite": report.rewrite.map(|(before, after, ms)| serde_json::json!({
                "nodes_before": before, "nodes_after": after, "saturation_ms": ms,
            })),
            "fusion": report.fusion.map(|(groups, fell_back)| serde_json::json!({
                "groups": groups, "fell_back": fell_back,
            })),
            "profile": report.profile.as_ref().map(crate::profile::json),
        });
        println!("{v}");
    } else {
        println!("threads      {}", report.threads);
        println!("median       {:.3} ms", report.median_ms);
        println!("min          {:.3} ms", report.min_ms);
        println!(
            "compile      {:.1} ms ({}; import {:.1} before it)",
            report.compile_ms, report.stages, report.import_ms
        );
        println!(
            "kernels      {} ({} with tuned schedules)",
            report.kernels, report.tuned_kernels
        );
        match report.rewrite {
            Some((before, after, ms)) => {
                println!("rewrite      {before} -> {after} graph nodes ({ms:.1} ms saturation)")
            }
            None => println!("rewrite      off"),
        }
        if let Some((groups, fell_back)) = report.fusion {
            let how = if fell_back {
                "partition rule (e-graph groups were invalid)"
            } else {
                "chosen by the e-graph"
            };
            println!("fusion       {groups} groups, {how}");
        }
        println!(
            "arena        {} bytes (naive sum of intermediates: {} bytes)",
            report.arena_bytes, report.naive_bytes
        );
        if let Some(p) = &report.profile {
            crate::profile::print(p);
        }
    }
}
