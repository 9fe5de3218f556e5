//! Training data for the latency model: tuning-log measurements joined with the features of
//! the kernels they timed and of the devices they ran on.
//!
//! A log record names its workload, target, thread count and knobs but not its DAG, so the
//! models the log was tuned on are given too: their tasks are extracted for each target the
//! log mentions and every record is lowered again with its knobs
//! ([`kiln_schedules::schedule_with`]) to get its [`kernel_features`]. A device is a
//! (target, threads) pair of this machine, described as the `device` record before a
//! measurement in its log found it (a run's probes when it started), else once by `describe`.
//!
//! Invariant: a sample is made only from a successful measurement whose workload is one of the
//! given models' tasks for the record's own target and whose knobs lower on that task's DAG;
//! everything else is counted in [`Dataset::skipped`], never guessed.

use crate::device::DeviceDescription;
use crate::features::kernel_features;
use crate::latency::LatencySample;
use crate::log::{LogContents, Record};
use crate::task::{extract_tasks, Task};
use crate::TuneError;
use kiln::{Graph, GraphOptions, Target};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Why records were left out of a dataset, and how many.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Skipped {
    /// The candidate failed (no latency).
    pub errors: usize,
    /// Measured on a remote device (its description is not known here).
    pub remote: usize,
    /// Workload not among the given models' tasks for its target.
    pub unknown_workload: usize,
    /// Target this Kiln does not know.
    pub unknown_target: usize,
    /// Knobs that no longer lower on the workload's DAG.
    pub not_lowering: usize,
}

/// Samples and the devices they came from.
#[derive(Debug, Default)]
pub struct Dataset {
    pub samples: Vec<LatencySample>,
    /// `target/threads` → its description.
    pub devices: BTreeMap<String, DeviceDescription>,
    pub skipped: Skipped,
}

/// The name of a device of this machine in a dataset.
pub fn device_name(target: &str, threads: usize) -> String {
    format!("{target}/{threads}t")
}

/// Joins the measurements of `logs` with the tasks of `models` (see the module doc).
/// `describe(target, threads)` describes this machine as that device, for measurements no
/// `device` record of their log describes.
pub fn collect(
    models: &[Graph],
    options: &GraphOptions,
    logs: &[LogContents],
    describe: &mut dyn FnMut(&Target, usize) -> Result<DeviceDescription, TuneError>,
) -> Result<Dataset, TuneError> {
    let mut data = Dataset::default();
    let mut tasks_of: HashMap<String, Option<HashMap<String, Task>>> = HashMap::new();
    // Devices described here and now, by name.
    let mut described_now: HashMap<String, Arc<[f32]>> = HashMap::new();
    for log in logs {
        // The devices this log's runs described when they started, by name.
        let mut logged: HashMap<String, Arc<[f32]>> = HashMap::new();
        for record in &log.records {
            let m = match record {
                Record::Device(d) => {
                    let name = device_name(&d.target, d.threads);
                    logged.insert(name.clone(), d.description.features().into());
                    data.devices.insert(name, d.description.clone());
                    continue;
                }
                Record::Measure(m) => m,
                Record::Workload(_) => continue,
            };
            let Some(ms) = m.median_ms().filter(|&ms| ms > 0.0) else {
                data.skipped.errors += 1;
                continue;
            };
            if m.device.is_some() {
                data.skipped.remote += 1;
                continue;
            }
            if !tasks_of.contains_key(&m.target) {
                let tasks = match Target::named(&m.target) {
                    Ok(target) => {
                        let mut tasks = HashMap::new();
                        for g in models {
                            for t in extract_tasks(g, options, &target)?.tasks {
                                tasks.entry(t.key.clone()).or_insert(t);
                            }
                        }
                        Some(tasks)
                    }
                    Err(_) => None,
                };
                tasks_of.insert(m.target.clone(), tasks);
            }
            let Some(tasks) = &tasks_of[&m.target] else {
                data.skipped.unknown_target += 1;
                continue;
            };
            let Some(task) = tasks.get(&m.workload) else {
                data.skipped.unknown_workload += 1;
                continue;
            };
            let Ok((_, func)) = kiln_schedules::schedule_with(
                &task.dag,
                task.class,
                &task.keep,
                &m.knobs,
                &task.target,
            ) else {
                data.skipped.not_lowering += 1;
                continue;
            };
            let name = device_name(&m.target, m.threads);
            let device = match logged.get(&name) {
                Some(features) => features.clone(),
                None => {
                    if !described_now.contains_key(&name) {
                        let target =
                            Target::named(&m.target).map_err(|e| TuneError::Job(e.to_string()))?;
                        let description = describe(&target, m.threads)?;
                        described_now.insert(name.clone(), description.features().into());
                        data.devices.entry(name.clone()).or_insert(description);
                    }
                    described_now[&name].clone()
                }
            };
            data.samples.push(LatencySample {
                task: m.workload.clone(),
                kernel: kernel_features(&func, &m.knobs),
                device,
                device_name: name.as_str().into(),
                ms,
            });
        }
    }
    Ok(data)
}
