//! Schedules that won elsewhere, measured first on a new device.
//!
//! A workload tuned before, on another thread count, on another CPU of the same target, in
//! another model's log, has schedules that beat its default there; on a device with no records
//! of its own they are likelier winners than anything a cost model has only predicted. With a
//! budget of a few trials per task (100 trials over mobilenet_v2's 34 tasks leave three), the
//! first round of each task measures its default, up to [`MAX_SEEDS`] such seeds and the cost
//! model's favourite. [`from_logs`] picks them: per workload the best schedule of each thread
//! count of the target, the thread counts nearest the device's first.
//!
//! Invariant: a seed is only a candidate: it is measured like any other, never assumed fast,
//! and only records of the same target (so of the same schedule space) and workload are used.

use crate::log::LogContents;
use kiln_schedules::Knobs;
use std::collections::{BTreeSet, HashMap};

/// Per workload key, its seeds, best first.
pub type Seeds = HashMap<String, Vec<Knobs>>;

/// Seeds measured in a task's first round, at most.
pub const MAX_SEEDS: usize = 2;

/// Per workload, up to [`MAX_SEEDS`] distinct non-default schedules that were the fastest of
/// their thread count for `target` in `logs`, ordered by how near that thread count is to
/// `threads`, then by their time there.
pub fn from_logs(logs: &[LogContents], target: &str, threads: usize) -> Seeds {
    // (thread distance, ms, knobs) per workload.
    let mut found: HashMap<String, Vec<(usize, f64, Knobs)>> = HashMap::new();
    for log in logs {
        let counts: BTreeSet<usize> = log
            .measures()
            .filter(|m| m.target == target)
            .map(|m| m.threads)
            .collect();
        for count in counts {
            for (workload, best) in log.best(target, Some(count)) {
                if best.record.knobs == Knobs::default() {
                    continue;
                }
                found.entry(workload).or_default().push((
                    count.abs_diff(threads),
                    best.ms,
                    best.record.knobs.clone(),
                ));
            }
        }
    }
    found
        .into_iter()
        .map(|(workload, mut seeds)| {
            seeds.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            let mut knobs: Vec<Knobs> = vec![];
            for (_, _, k) in seeds {
                if knobs.len() < MAX_SEEDS && !knobs.contains(&k) {
                    knobs.push(k);
                }
            }
            (workload, knobs)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{MeasureRecord, Record};

    fn knobs(tile: usize) -> Knobs {
        Knobs {
            vector_tile: Some(tile),
            ..Knobs::default()
        }
    }

    fn measure(workload: &str, target: &str, threads: usize, knobs: Knobs, ms: f64) -> Record {
        Record::Measure(MeasureRecord {
            workload: workload.into(),
            target: target.into(),
            threads,
            knobs,
            trace: Default::default(),
            times_ms: vec![ms],
            error: None,
            timestamp: 1,
            device: None,
        })
    }

    fn log(records: Vec<Record>) -> LogContents {
        LogContents {
            records,
            skipped_lines: vec![],
        }
    }

    #[test]
    fn winners_of_the_nearest_thread_counts_come_first() {
        let t = "x86_64-linux-gnu";
        let a = log(vec![
            // One thread: tile 8 won.
            measure("w", t, 1, Knobs::default(), 1.0),
            measure("w", t, 1, knobs(8), 0.5),
            measure("w", t, 1, knobs(16), 0.7),
            // Eight threads: tile 32 won.
            measure("w", t, 8, knobs(32), 0.1),
            // Another target's winner never seeds this one.
            measure("w", "x86_64-linux-gnu-avx2", 4, knobs(4), 0.01),
        ]);
        let b = log(vec![
            // Four threads (another log): tile 16 won.
            measure("w", t, 4, knobs(16), 0.3),
            measure("w", t, 4, knobs(8), 0.4),
            // A workload whose default won gives no seed.
            measure("v", t, 4, Knobs::default(), 0.2),
            measure("v", t, 4, knobs(8), 0.3),
        ]);
        let seeds = from_logs(&[a.clone(), b.clone()], t, 4);
        assert_eq!(seeds["w"], vec![knobs(16), knobs(8)]);
        assert!(!seeds.contains_key("v"));
        // Nearest to two threads: the 1-thread winner, then the 4-thread one.
        assert_eq!(from_logs(&[a, b], t, 2)["w"], vec![knobs(8), knobs(16)]);
    }
}
