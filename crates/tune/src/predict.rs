//! Whole-model latency without running the model: the sum of the latency model's predictions
//! for the kernels a compile would run (nn-Meter's kernel-sum idea).
//!
//! Each task of the model is scheduled as a compile would schedule it — with the best record of
//! the tuning log for the same target and thread count, else with the default knobs — lowered,
//! described by its loop features and predicted on the device; the model's latency is the sum
//! of `weight x predicted ms` over its tasks.
//!
//! Invariant: a prediction never runs or measures the model; every task of the model has
//! exactly one prediction, and a task's schedule is the one `kiln compile` would replay.

use crate::features::kernel_features;
use crate::latency::LatencyModel;
use crate::log::LogContents;
use crate::task::TaskSet;
use crate::TuneError;
use kiln_schedules::{schedule_with, Knobs};
use serde::Serialize;

/// Where a kernel's schedule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSource {
    /// The best record of the tuning log.
    Tuned,
    /// The default knobs.
    Default,
}

/// One kernel's prediction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelPrediction {
    pub workload: String,
    /// The ops and output type.
    pub desc: String,
    /// Kernels of the model that run this workload.
    pub weight: usize,
    /// Predicted latency of one run, in milliseconds.
    pub ms: f64,
    pub schedule: ScheduleSource,
}

/// A whole model's prediction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelPrediction {
    pub target: String,
    pub threads: usize,
    /// `sum weight x ms` over the kernels.
    pub total_ms: f64,
    pub kernels: Vec<KernelPrediction>,
}

/// Predicts `set`'s latency on the device described by `device` (its
/// [`crate::device::DeviceDescription::features`]), with the schedules `log` holds for
/// `target_name` and `threads` (see the module doc).
pub fn predict_model(
    set: &TaskSet,
    target_name: &str,
    threads: usize,
    log: Option<&LogContents>,
    model: &LatencyModel,
    device: &[f32],
) -> Result<ModelPrediction, TuneError> {
    let best = log.map(|l| l.best(target_name, Some(threads)));
    let mut kernels = vec![];
    let mut features = vec![];
    for task in &set.tasks {
        let lower = |knobs: &Knobs| {
            schedule_with(&task.dag, task.class, &task.keep, knobs, &task.target)
                .ok()
                .map(|(_, func)| kernel_features(&func, knobs))
        };
        let tuned = best
            .as_ref()
            .and_then(|b| b.get(&task.key))
            .and_then(|b| lower(&b.record.knobs));
        let (f, schedule) = match tuned {
            Some(f) => (f, ScheduleSource::Tuned),
            None => (
                lower(&Knobs::default()).ok_or_else(|| {
                    TuneError::CostModel(format!(
                        "the default schedule of {} does not lower",
                        task.desc
                    ))
                })?,
                ScheduleSource::Default,
            ),
        };
        features.push(f);
        kernels.push(KernelPrediction {
            workload: task.key.clone(),
            desc: task.desc.clone(),
            weight: task.weight,
            ms: 0.0,
            schedule,
        });
    }
    for (k, ms) in kernels.iter_mut().zip(model.predict_ms(&features, device)?) {
        k.ms = ms;
    }
    Ok(ModelPrediction {
        target: target_name.to_string(),
        threads,
        total_ms: kernels.iter().map(|k| k.ms * k.weight as f64).sum(),
        kernels,
    })
}
