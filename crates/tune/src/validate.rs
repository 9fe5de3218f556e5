//! Tuned schedules judged inside the model.
//!
//! The tuner times each kernel alone: called over and over on the same buffers, with warm
//! caches and, on several threads, a pool kept busy by nothing else. Inside the model the same
//! kernel runs after its producer, on other cache contents, and a schedule that won alone can
//! lose there (measured: a resnet18 conv at 1.6 ms alone ran 2.7 ms inside the model on two
//! threads, where its default took 1.2 ms). [`in_model`] compiles the model twice, with the
//! candidate schedules and with the default ones, runs the two in turn with a timestamp around
//! every kernel call, and reports for each workload how long its kernels took inside the
//! model under each.
//!
//! Invariant: both compilations differ only in the schedules; every number is a median over
//! profiled runs of the model itself, the two variants alternating round by round so that a
//! slow minute of a shared machine falls on both.

use crate::TuneError;
use kiln::{CompileOptions, CompiledModel, Compiler, Graph, GraphOptions, Target, TunedSchedules};
use std::collections::HashMap;

/// A workload's kernels inside the model: the sum over its kernels of each one's time, per run
/// (median over the runs), under the default and under the candidate schedules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InModel {
    pub default_ms: f64,
    pub tuned_ms: f64,
    /// How many kernel calls of a run these times sum (the workload's kernels in the model).
    pub calls: usize,
}

/// What [`in_model`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Validation {
    /// Per workload key of the model's kernels.
    pub workloads: HashMap<String, InModel>,
    /// The whole model's kernels per run (median), under each.
    pub model: InModel,
}

/// How a validation runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidateOptions {
    pub threads: usize,
    pub graph: GraphOptions,
    /// Alternations of the two variants, and profiled runs of each per alternation.
    pub rounds: usize,
    pub runs: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            threads: 1,
            graph: GraphOptions::default(),
            rounds: 5,
            runs: 5,
        }
    }
}

/// Times the model's kernels with `candidates` and with the default schedules (see the module
/// doc).
pub fn in_model(
    graph: &Graph,
    target: &Target,
    candidates: &TunedSchedules,
    options: &ValidateOptions,
) -> Result<Validation, TuneError> {
    let compile = |schedules: &TunedSchedules| {
        Compiler::new(target.clone())
            .with_options(CompileOptions {
                threads: options.threads,
                graph: options.graph.clone(),
                schedules: schedules.clone(),
                profile: true,
            })
            .compile(graph)
            .map_err(|e| TuneError::Job(format!("validation compile: {e}")))
    };
    let variants = [compile(&TunedSchedules::default())?, compile(candidates)?];
    let inputs: Vec<kiln::Tensor> = variants[0]
        .input_types()
        .iter()
        .map(kiln::synthetic_input)
        .collect();
    let mut samples: [Samples; 2] = Default::default();
    for model in &variants {
        // Warm-up: first-touch of the arena and the pool's threads.
        for _ in 0..2 {
            model
                .run(&inputs)
                .map_err(|e| TuneError::Job(e.to_string()))?;
        }
    }
    for _ in 0..options.rounds.max(1) {
        for (model, (per_workload, whole)) in variants.iter().zip(samples.iter_mut()) {
            for _ in 0..options.runs.max(1) {
                let (run, total) = profiled_run(model, &inputs)?;
                for (workload, ms) in run {
                    per_workload.entry(workload).or_default().push(ms);
                }
                whole.push(total);
            }
        }
    }
    let [(default, default_whole), (tuned, tuned_whole)] = samples;
    let median = |v: &[f64]| crate::log::median(v).unwrap_or(f64::NAN);
    let workloads = default
        .iter()
        .filter_map(|(w, d)| {
            let t = tuned.get(w)?;
            Some((
                w.clone(),
                InModel {
                    default_ms: median(d),
                    tuned_ms: median(t),
                    calls: variants[0]
                        .kernels()
                        .iter()
                        .filter(|k| k.workload == *w)
                        .count(),
                },
            ))
        })
        .collect();
    Ok(Validation {
        workloads,
        model: InModel {
            default_ms: median(&default_whole),
            tuned_ms: median(&tuned_whole),
            calls: variants[0].kernels().len(),
        },
    })
}

/// A variant's times: per workload its time in each run, and the model's kernels in each run.
type Samples = (HashMap<String, Vec<f64>>, Vec<f64>);

/// One profiled run: milliseconds per workload (its kernels summed) and in all kernels.
fn profiled_run(
    model: &CompiledModel,
    inputs: &[kiln::Tensor],
) -> Result<(HashMap<String, f64>, f64), TuneError> {
    let run = model
        .run_profiled(inputs)
        .map_err(|e| TuneError::Job(e.to_string()))?;
    let mut per_workload: HashMap<String, f64> = HashMap::new();
    let mut total = 0.0;
    for (info, (_, duration)) in model.kernels().iter().zip(&run.kernels) {
        let ms = duration.as_secs_f64() * 1e3;
        *per_workload.entry(info.workload.clone()).or_default() += ms;
        total += ms;
    }
    Ok((per_workload, total))
}
