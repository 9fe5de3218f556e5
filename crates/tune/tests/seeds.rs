//! Seeds: a task's first round measures its default, then the schedules that won elsewhere,
//! then what the search proposes.

mod common;

use common::dscnn;
use kiln_schedules::Knobs;
use kiln_tune::measure::{Measured, Runner};
use kiln_tune::{extract_tasks, TuneOptions, Tuner, TuningLog};
use std::collections::HashMap;

/// Times every candidate at 1 ms and remembers what each task's first batch was.
#[derive(Default)]
struct FirstBatches {
    first: HashMap<String, Vec<Knobs>>,
}

impl Runner for FirstBatches {
    fn measure(&mut self, workload: &str, _first: usize, candidates: &[Knobs]) -> Vec<Measured> {
        self.first
            .entry(workload.to_string())
            .or_insert_with(|| candidates.to_vec());
        vec![Measured::Times(vec![1.0, 1.0, 1.0]); candidates.len()]
    }
}

#[test]
fn the_first_round_measures_the_default_then_the_seeds() {
    let spec = dscnn();
    let model = spec.load().unwrap();
    let target = kiln::Target::named("x86_64-linux-gnu").unwrap();
    let set = extract_tasks(&model.graph, &spec.graph_options(), &target).unwrap();
    // Two schedules of the first task's space stand for winners on other devices.
    let task = &set.tasks[0];
    let mut rng = kiln_schedules::SplitMix(7);
    let mut seeds = vec![];
    while seeds.len() < 2 {
        let k = task.space.sample(&mut rng);
        if k != Knobs::default() && !seeds.contains(&k) {
            seeds.push(k);
        }
    }
    let options = TuneOptions {
        trials: 3 * set.tasks.len(),
        batch: 4,
        target: target.name().into(),
        seeds: HashMap::from([(task.key.clone(), seeds.clone())]),
        ..TuneOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut log = TuningLog::open(&dir.path().join("log.jsonl")).unwrap();
    let mut tuner = Tuner::new(&set, options, Box::new(kiln_tune::XgbCostModel::new()));
    let mut runner = FirstBatches::default();
    tuner.run(&mut runner, &mut log, &mut |_| {}).unwrap();
    let first = &runner.first[&task.key];
    assert_eq!(first[0], Knobs::default());
    assert_eq!(first[1..3], seeds[..]);
    // Tasks without seeds start from their default too.
    for t in &set.tasks[1..] {
        assert_eq!(runner.first[&t.key][0], Knobs::default());
    }
}
