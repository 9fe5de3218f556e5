//! How well can anything rank a tuning log's candidates? Re-measures every distinct schedule
//! of a log twice on this machine and scores, with the held-out evaluation's metrics
//! (`kiln_tune::evaluate`), the log's latencies against the first re-measurement and the two
//! re-measurements against each other. A cost model is scored against the log's latencies, so
//! these are the ceiling of its within-task scores on this machine.
//!
//! ```sh
//! cargo run --release -p kiln-tune --example measurement_ceiling -- \
//!     MODEL.onnx LOG.jsonl TARGET THREADS target/release/kiln
//! ```

use kiln_tune::evaluate::spearman;
use kiln_tune::log::{median, read_log};
use kiln_tune::measure::{LocalRunner, MeasureOptions, Measured, ModelSpec, Runner};
use kiln_tune::model::DISTINCT;
use std::collections::BTreeMap;

/// Within-task agreement of two latency lists over the same candidates, summed over tasks.
#[derive(Default)]
struct Agreement {
    right: usize,
    pairs: usize,
    spearman_sum: f64,
    groups: usize,
    relative_differences: Vec<f64>,
}

impl Agreement {
    fn add(&mut self, a: &[f64], b: &[f64]) {
        for i in 0..a.len() {
            self.relative_differences.push((b[i] / a[i] - 1.0).abs());
            for j in i + 1..a.len() {
                if a[i].max(a[j]) <= a[i].min(a[j]) * (1.0 + f64::from(DISTINCT)) {
                    continue;
                }
                self.pairs += 1;
                self.right += usize::from((a[i] < a[j]) == (b[i] < b[j]));
            }
        }
        self.spearman_sum += spearman(a, b);
        self.groups += 1;
    }

    fn report(&mut self, what: &str) {
        self.relative_differences.sort_by(f64::total_cmp);
        let mid = self.relative_differences.len() / 2;
        println!(
            "{what}: pairwise {:.3} ({} pairs), Spearman within tasks {:.3} ({} tasks), median \
             relative difference {:.1}%",
            self.right as f64 / self.pairs.max(1) as f64,
            self.pairs,
            self.spearman_sum / self.groups.max(1) as f64,
            self.groups,
            100.0 * self.relative_differences.get(mid).copied().unwrap_or(0.0)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, log, target, threads, kiln] = &args[..] else {
        eprintln!("usage: measurement_ceiling MODEL.onnx LOG.jsonl TARGET THREADS KILN_BINARY");
        std::process::exit(2);
    };
    let threads: usize = threads.parse().expect("THREADS is a number");
    let contents = read_log(log.as_ref()).expect("a readable tuning log");
    // Per task, each distinct schedule with the median of its first measurement in the log.
    let mut tasks: BTreeMap<String, Vec<(kiln_schedules::Knobs, f64)>> = BTreeMap::new();
    for m in contents.measures() {
        let Some(ms) = m
            .median_ms()
            .filter(|_| m.target == *target && m.threads == threads)
        else {
            continue;
        };
        let candidates = tasks.entry(m.workload.clone()).or_default();
        if !candidates.iter().any(|(k, _)| *k == m.knobs) {
            candidates.push((m.knobs.clone(), ms));
        }
    }
    let mut runner = LocalRunner {
        command: vec![kiln.into(), "measure-worker".into()],
        model: ModelSpec {
            path: model.into(),
            input_shapes: vec![],
            rewrite: true,
            layout: "auto".into(),
        },
        options: MeasureOptions {
            target: target.clone(),
            threads,
            min_repeat_ms: 5.0,
            ..MeasureOptions::default()
        },
    };
    let (mut log_vs_again, mut again_vs_again) = (Agreement::default(), Agreement::default());
    for (workload, candidates) in &tasks {
        if candidates.len() < 3 {
            continue;
        }
        let knobs: Vec<_> = candidates.iter().map(|c| c.0.clone()).collect();
        let first = runner.measure(workload, 0, &knobs);
        let second = runner.measure(workload, 0, &knobs);
        let (mut logged, mut b, mut c) = (vec![], vec![], vec![]);
        for (((_, ms), x), y) in candidates.iter().zip(first).zip(second) {
            if let (Measured::Times(x), Measured::Times(y)) = (x, y) {
                logged.push(*ms);
                b.push(median(&x).unwrap_or(f64::NAN));
                c.push(median(&y).unwrap_or(f64::NAN));
            }
        }
        log_vs_again.add(&logged, &b);
        again_vs_again.add(&b, &c);
    }
    log_vs_again.report("the log against a re-measurement");
    again_vs_again.report("two re-measurements");
}
