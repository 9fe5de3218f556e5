//! How well a latency model predicts tasks it has never seen.
//!
//! [`holdout_tasks`] splits the *workloads* into folds (every measurement of a workload, on
//! every device, lands in the same fold), trains a fresh [`LatencyModel`] on the other folds and
//! scores each held-out fold: within each (task, device) group, the pairwise ranking accuracy
//! (pairs whose latencies differ by more than [`DISTINCT`]), Spearman's rank correlation and
//! whether the measured fastest candidate is among the predicted top 1 and top 5; over all
//! held-out measurements, Spearman between predicted and measured latency and the median
//! relative error.
//!
//! Invariant: no measurement of a held-out workload is ever in the training folds.

use crate::latency::{Boosting, LatencyModel, LatencySample};
use crate::model::DISTINCT;
use crate::TuneError;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Groups with fewer candidates than this do not count towards top-k recall.
pub const TOP_K_MIN_CANDIDATES: usize = 10;

/// The scores of a held-out evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HoldoutReport {
    pub folds: usize,
    pub tasks: usize,
    pub samples: usize,
    /// Pairwise ranking accuracy within (task, device) groups, and how many pairs.
    pub pairwise: f64,
    pub pairs: usize,
    /// Mean Spearman correlation within (task, device) groups of at least 3 candidates.
    pub spearman_within: f64,
    /// Spearman correlation of predicted and measured latency over all held-out measurements.
    pub spearman_all: f64,
    /// Share of groups (≥ [`TOP_K_MIN_CANDIDATES`] candidates) whose measured fastest is the
    /// predicted fastest / among the predicted five fastest, and how many groups.
    pub top1: f64,
    pub top5: f64,
    pub top_k_groups: usize,
    /// Median of `|predicted / measured - 1|`.
    pub median_relative_error: f64,
}

/// Ranks of `v` (1-based, ties get their mean rank).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation of `a` and `b` (0 when either is constant or too short).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() < 2 || a.len() != b.len() {
        return 0.0;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

/// A stable fold for a workload key (FNV-1a, so folds do not depend on sample order).
fn fold_of(key: &str, seed: u64, folds: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % folds as u64) as usize
}

/// Scores of one (task, device) group: measured and predicted latencies.
#[derive(Default)]
struct Group {
    measured: Vec<f64>,
    predicted: Vec<f64>,
}

/// Held-out evaluation over whole workloads (see the module doc).
pub fn holdout_tasks(
    samples: &[LatencySample],
    folds: usize,
    seed: u64,
    boosting: Boosting,
) -> Result<HoldoutReport, TuneError> {
    let folds = folds.max(2);
    let fold: Vec<usize> = samples
        .iter()
        .map(|s| fold_of(&s.task, seed, folds))
        .collect();
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    let (mut all_measured, mut all_predicted) = (vec![], vec![]);
    for k in 0..folds {
        let train: Vec<LatencySample> = samples
            .iter()
            .zip(&fold)
            .filter(|(_, &f)| f != k)
            .map(|(s, _)| s.clone())
            .collect();
        let test: Vec<&LatencySample> = samples
            .iter()
            .zip(&fold)
            .filter(|(_, &f)| f == k)
            .map(|(s, _)| s)
            .collect();
        if train.is_empty() || test.is_empty() {
            continue;
        }
        let model = LatencyModel::train(&train, boosting)?;
        // Predict per device (one device vector per call).
        let mut by_device: HashMap<&str, Vec<&LatencySample>> = HashMap::new();
        for s in &test {
            by_device.entry(&s.device_name).or_default().push(s);
        }
        for (_, ss) in by_device {
            let kernels: Vec<Vec<f32>> = ss.iter().map(|s| s.kernel.clone()).collect();
            let predicted = model.predict_ms(&kernels, &ss[0].device)?;
            for (s, p) in ss.iter().zip(predicted) {
                let g = groups
                    .entry((s.task.clone(), s.device_name.to_string()))
                    .or_default();
                g.measured.push(s.ms);
                g.predicted.push(p);
                all_measured.push(s.ms);
                all_predicted.push(p);
            }
        }
    }
    let mut report = HoldoutReport {
        folds,
        tasks: groups
            .keys()
            .map(|(t, _)| t.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        samples: all_measured.len(),
        spearman_all: spearman(&all_measured, &all_predicted),
        ..HoldoutReport::default()
    };
    let mut errors: Vec<f64> = all_measured
        .iter()
        .zip(&all_predicted)
        .map(|(m, p)| (p / m - 1.0).abs())
        .collect();
    errors.sort_by(f64::total_cmp);
    report.median_relative_error = errors.get(errors.len() / 2).copied().unwrap_or(0.0);
    let (mut right, mut spearman_sum, mut spearman_groups) = (0usize, 0.0, 0usize);
    let (mut top1, mut top5) = (0usize, 0usize);
    for g in groups.values() {
        let n = g.measured.len();
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (g.measured[i], g.measured[j]);
                if a.max(b) <= a.min(b) * (1.0 + f64::from(DISTINCT)) {
                    continue;
                }
                report.pairs += 1;
                if (a < b) == (g.predicted[i] < g.predicted[j]) && g.predicted[i] != g.predicted[j]
                {
                    right += 1;
                }
            }
        }
        if n >= 3 {
            spearman_sum += spearman(&g.measured, &g.predicted);
            spearman_groups += 1;
        }
        if n >= TOP_K_MIN_CANDIDATES {
            let best = (0..n)
                .min_by(|&a, &b| g.measured[a].total_cmp(&g.measured[b]))
                .unwrap_or(0);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| g.predicted[a].total_cmp(&g.predicted[b]));
            let at = order.iter().position(|&i| i == best).unwrap_or(n);
            top1 += usize::from(at < 1);
            top5 += usize::from(at < 5);
            report.top_k_groups += 1;
        }
    }
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    report.pairwise = share(right, report.pairs);
    report.spearman_within = if spearman_groups == 0 {
        0.0
    } else {
        spearman_sum / spearman_groups as f64
    };
    report.top1 = share(top1, report.top_k_groups);
    report.top5 = share(top5, report.top_k_groups);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed_sequences() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 35.0, 90.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&a, &[1.0, 1.0, 1.0, 1.0]), 0.0);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
    }
}
