//! Timing candidates in a worker: every kernel of a model is timed, with its weights warm and
//! with them rotated over copies beyond the last-level cache (cold, as inside a model whose
//! weights do not stay cached).

mod common;

use common::dscnn;
use kiln_schedules::Knobs;
use kiln_tune::cache::ConstantCache;
use kiln_tune::extract_tasks;
use kiln_tune::measure::{serve, Event, Job, MeasureOptions};

/// The events a worker writes for `job`.
fn events(job: &Job) -> Vec<Event> {
    let line = serde_json::to_string(job).unwrap() + "\n";
    let mut out = vec![];
    serve(&mut line.as_bytes(), &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_kernel_is_timed_with_its_weights_warm_and_cold() {
    let spec = dscnn();
    let model = spec.load().unwrap();
    let target = kiln::Target::host();
    let set = extract_tasks(&model.graph, &spec.graph_options(), &target).unwrap();
    // Kernels whose constants are packed at compile time (micro-kernel panels) as well as
    // plain weights are among them.
    assert!(set.tasks.len() >= 5);
    for constants in [ConstantCache::Warm, ConstantCache::Cold] {
        for task in &set.tasks {
            let job = Job {
                model: spec.clone(),
                workload: task.key.clone(),
                first_trial: 0,
                candidates: vec![Knobs::default()],
                options: MeasureOptions {
                    target: target.name().to_string(),
                    min_repeat_ms: 0.5,
                    constants,
                    ..MeasureOptions::default()
                },
            };
            let events = events(&job);
            let Some(Event::Done { times_ms, .. }) = events.last() else {
                panic!("{constants:?} {}: {events:?}", task.desc)
            };
            assert_eq!(times_ms.len(), 3);
            assert!(times_ms.iter().all(|&t| t > 0.0), "{times_ms:?}");
        }
    }
}
