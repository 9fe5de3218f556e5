//! Judging schedules fairly: a schedule that won on one lucky measurement loses its place once
//! the confirmation measures it again, and the in-model validation times every kernel of the
//! model under both variants.

mod common;

use common::dscnn;
use kiln_schedules::Knobs;
use kiln_tune::measure::{Measured, Runner};
use kiln_tune::validate::{in_model, ValidateOptions};
use kiln_tune::{extract_tasks, read_log, TuneOptions, Tuner, TuningLog};
use std::collections::HashMap;

/// A device where the first non-default candidate of each workload is measured once at 0.5 ms
/// (a quiet moment) and 2 ms ever after; the default takes 1 ms, every other candidate 1.5 ms.
#[derive(Default)]
struct LuckyOnce {
    lucky: HashMap<String, Knobs>,
    seen: HashMap<(String, Knobs), usize>,
}

impl Runner for LuckyOnce {
    fn measure(&mut self, workload: &str, _first: usize, candidates: &[Knobs]) -> Vec<Measured> {
        candidates
            .iter()
            .map(|k| {
                let n = self.seen.entry((workload.into(), k.clone())).or_default();
                *n += 1;
                let ms = if *k == Knobs::default() {
                    1.0
                } else if self
                    .lucky
                    .entry(workload.into())
                    .or_insert_with(|| k.clone())
                    == k
                {
                    if *n == 1 {
                        0.5
                    } else {
                        2.0
                    }
                } else {
                    1.5
                };
                Measured::Times(vec![ms, ms, ms])
            })
            .collect()
    }
}

#[test]
fn a_schedule_that_won_once_by_luck_loses_to_the_default_once_measured_again() {
    let spec = dscnn();
    let model = spec.load().unwrap();
    let target = kiln::Target::named("x86_64-linux-gnu").unwrap();
    let set = extract_tasks(&model.graph, &spec.graph_options(), &target).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.jsonl");
    let mut log = TuningLog::open(&path).unwrap();
    let options = TuneOptions {
        trials: 60,
        batch: 4,
        target: target.name().into(),
        ..TuneOptions::default()
    };
    let mut tuner = Tuner::new(&set, options, Box::new(kiln_tune::XgbCostModel::new()));
    let mut runner = LuckyOnce::default();
    tuner.run(&mut runner, &mut log, &mut |_| {}).unwrap();
    let lucky_winners = tuner
        .states
        .iter()
        .filter(|s| s.best.as_ref().is_some_and(|b| b.1 == 0.5))
        .count();
    assert!(lucky_winners > 0, "no task measured a second candidate");

    let c = tuner.confirm(&mut runner, &mut log, 3, 2).unwrap();
    assert_eq!(c.tasks, lucky_winners);
    assert_eq!((c.changed, c.back_to_default), (c.tasks, c.tasks));
    for s in &tuner.states {
        if let Some((knobs, ms)) = &s.best {
            assert_eq!((knobs, *ms), (&Knobs::default(), 1.0));
        }
    }
    // The confirmation's measurements are in the log, and the log judges the same way.
    drop(log);
    let contents = read_log(&path).unwrap();
    assert_eq!(contents.measures().count(), tuner.trials + c.measurements);
    for best in contents.best(target.name(), Some(1)).values() {
        assert_eq!(best.record.knobs, Knobs::default(), "{best:?}");
    }
    // A resumed run counts the search's trials, not the confirmation's measurements again.
    let mut resumed = Tuner::new(
        &set,
        TuneOptions {
            trials: 60,
            batch: 4,
            target: target.name().into(),
            ..TuneOptions::default()
        },
        Box::new(kiln_tune::XgbCostModel::new()),
    );
    assert_eq!(resumed.resume(&contents).unwrap(), tuner.trials);
}

#[test]
fn the_model_is_timed_per_workload_under_both_variants() {
    let spec = dscnn();
    let model = spec.load().unwrap();
    let target = kiln::Target::host();
    let options = ValidateOptions {
        threads: 1,
        graph: spec.graph_options(),
        rounds: 2,
        runs: 2,
    };
    let v = in_model(&model.graph, &target, &Default::default(), &options).unwrap();
    let compiled = kiln::Compiler::new(target)
        .with_options(kiln::CompileOptions {
            threads: 1,
            graph: spec.graph_options(),
            ..Default::default()
        })
        .compile(&model.graph)
        .unwrap();
    let workloads: std::collections::HashSet<&str> = compiled
        .kernels()
        .iter()
        .map(|k| k.workload.as_str())
        .collect();
    assert_eq!(v.workloads.len(), workloads.len());
    for (w, t) in &v.workloads {
        assert!(workloads.contains(w.as_str()), "{w}");
        assert!(t.default_ms > 0.0 && t.tuned_ms > 0.0, "{w}: {t:?}");
    }
    let summed: f64 = v.workloads.values().map(|t| t.default_ms).sum();
    assert!(v.model.default_ms > 0.0 && v.model.tuned_ms > 0.0);
    // Medians of sums and sums of medians differ, but not by much on two runs.
    assert!(
        (summed / v.model.default_ms - 1.0).abs() < 0.5,
        "{summed} vs {v:?}"
    );
}
