//! The cost model: predicts which candidates of a task run fastest, from their features.
//!
//! [`XgbCostModel`] is gradient-boosted trees (XGBoost through the `xgb` crate, Debian's
//! libxgboost, one thread): regression on the normalised throughput `best time of the task /
//! this time` (1 for the task's fastest candidate, towards 0 for slow ones, 0 for failures), so
//! candidates of every task share one scale, as in Ansor. It is retrained from all measurements
//! as they arrive and saved beside the tuning log.
//!
//! Invariant: [`CostModel::predict`] returns one finite score per feature vector (higher is
//! faster); an untrained model scores every candidate 0, which leaves the search random.

use crate::features::FEATURE_COUNT;
use crate::TuneError;
use std::path::Path;
use xgb::parameters::BoosterParameters;
use xgb::{Booster, DMatrix};

/// One measured candidate as training data.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Which task (samples are only ranked against samples of the same task).
    pub task: usize,
    pub features: Vec<f32>,
    /// Normalised throughput in `[0, 1]`.
    pub label: f32,
    /// The measured median latency in milliseconds (`None`: the candidate failed), for models
    /// that predict absolute latency ([`crate::latency`]).
    pub ms: Option<f64>,
}

/// A learned (or stand-in) predictor of candidate speed.
pub trait CostModel {
    /// Trains on every sample so far (replacing what it learnt before).
    fn fit(&mut self, samples: &[Sample]) -> Result<(), TuneError>;
    /// A score per feature vector: higher predicts faster.
    fn predict(&self, features: &[Vec<f32>]) -> Result<Vec<f32>, TuneError>;
    /// Whether `fit` has run on enough data to be used.
    fn is_trained(&self) -> bool;
    /// Saves the trained model at `path` (beside the tuning log); a no-op for models that
    /// keep nothing.
    fn save(&self, _path: &Path) -> Result<(), TuneError> {
        Ok(())
    }
}

/// Gradient-boosted trees (see the module doc).
#[derive(Default)]
pub struct XgbCostModel {
    booster: Option<Booster>,
}

impl std::fmt::Debug for XgbCostModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XgbCostModel")
            .field("trained", &self.booster.is_some())
            .finish()
    }
}

fn xgb_err(e: xgb::XGBError) -> TuneError {
    TuneError::CostModel(e.to_string())
}

fn matrix(features: &[Vec<f32>]) -> Result<DMatrix, TuneError> {
    let mut flat = Vec::with_capacity(features.len() * FEATURE_COUNT);
    for f in features {
        let mut row = f.clone();
        row.resize(FEATURE_COUNT, 0.0);
        flat.extend(row);
    }
    DMatrix::from_dense(&flat, features.len()).map_err(xgb_err)
}

impl XgbCostModel {
    /// Fewer samples than this and the model stays untrained.
    pub const MIN_SAMPLES: usize = 16;
    const ROUNDS: i32 = 60;

    pub fn new() -> Self {
        XgbCostModel::default()
    }

    /// Loads a model saved by [`Self::save`].
    pub fn load(path: &Path) -> Result<Self, TuneError> {
        let booster = Booster::load(path).map_err(xgb_err)?;
        Ok(XgbCostModel {
            booster: Some(booster),
        })
    }
}

impl CostModel for XgbCostModel {
    fn fit(&mut self, samples: &[Sample]) -> Result<(), TuneError> {
        if samples.len() < Self::MIN_SAMPLES {
            return Ok(());
        }
        let features: Vec<Vec<f32>> = samples.iter().map(|s| s.features.clone()).collect();
        let mut d = matrix(&features)?;
        let labels: Vec<f32> = samples.iter().map(|s| s.label).collect();
        d.set_labels(&labels).map_err(xgb_err)?;
        let mut b = Booster::new_with_cached_dmats(&BoosterParameters::default(), &[&d])
            .map_err(xgb_err)?;
        for (k, v) in [
            ("objective", "reg:squarederror"),
            ("nthread", "1"),
            ("max_depth", "8"),
            ("eta", "0.2"),
            ("min_child_weight", "1"),
            ("subsample", "1"),
            ("verbosity", "0"),
            ("seed", "1"),
        ] {
            b.set_param(k, v).map_err(xgb_err)?;
        }
        for i in 0..Self::ROUNDS {
            b.update(&d, i).map_err(xgb_err)?;
        }
        self.booster = Some(b);
        Ok(())
    }

    fn predict(&self, features: &[Vec<f32>]) -> Result<Vec<f32>, TuneError> {
        let Some(b) = &self.booster else {
            return Ok(vec![0.0; features.len()]);
        };
        if features.is_empty() {
            return Ok(vec![]);
        }
        let p = b.predict(&matrix(features)?).map_err(xgb_err)?;
        Ok(p.into_iter()
            .map(|x| if x.is_finite() { x } else { 0.0 })
            .collect())
    }

    fn is_trained(&self) -> bool {
        self.booster.is_some()
    }

    /// Saves the trained model (XGBoost's JSON) at `path`, through a temporary file renamed
    /// over it, so a kill leaves the old model or the new one.
    fn save(&self, path: &Path) -> Result<(), TuneError> {
        let Some(b) = &self.booster else {
            return Ok(());
        };
        let tmp = path.with_extension("partial.json");
        b.save(&tmp).map_err(xgb_err)?;
        std::fs::rename(&tmp, path).map_err(TuneError::Io)
    }
}

/// Relative speed difference below which two measurements count as equal (noise).
pub const DISTINCT: f32 = 0.05;

/// Pairwise ranking accuracy on held-out measurements, by 5-fold cross-validation: the
/// samples are split at random into five folds; for each, a fresh [`XgbCostModel`] trained on
/// the other four ranks the fold's pairs (of the same task, see [`pairwise_accuracy`]).
/// Returns `(accuracy, pairs)` over all folds.
pub fn holdout_accuracy(samples: &[Sample], seed: u64) -> Result<(f64, usize), TuneError> {
    const FOLDS: usize = 5;
    let mut rng = kiln_schedules::SplitMix(seed);
    let fold: Vec<usize> = samples.iter().map(|_| rng.below(FOLDS)).collect();
    let (mut right, mut pairs) = (0.0, 0usize);
    for k in 0..FOLDS {
        let pick = |inside: bool| -> Vec<Sample> {
            samples
                .iter()
                .zip(&fold)
                .filter(|(_, &f)| (f == k) == inside)
                .map(|(s, _)| s.clone())
                .collect()
        };
        let (train, test) = (pick(false), pick(true));
        let mut m = XgbCostModel::new();
        m.fit(&train)?;
        if !m.is_trained() {
            continue;
        }
        let feats: Vec<Vec<f32>> = test.iter().map(|s| s.features.clone()).collect();
        let (acc, n) = pairwise_accuracy(&test, &m.predict(&feats)?);
        right += acc * n as f64;
        pairs += n;
    }
    Ok((
        if pairs == 0 {
            0.0
        } else {
            right / pairs as f64
        },
        pairs,
    ))
}

/// The fraction of pairs of samples of the same task whose speeds differ by more than
/// [`DISTINCT`] (more than measurement noise) that the predictions order right, and the number
/// of such pairs.
pub fn pairwise_accuracy(samples: &[Sample], predictions: &[f32]) -> (f64, usize) {
    let (mut right, mut pairs) = (0usize, 0usize);
    for i in 0..samples.len() {
        for j in i + 1..samples.len() {
            let (a, b) = (&samples[i], &samples[j]);
            let (hi, lo) = (a.label.max(b.label), a.label.min(b.label));
            if a.task != b.task || hi <= lo * (1.0 + DISTINCT) {
                continue;
            }
            pairs += 1;
            let truth = a.label > b.label;
            let guess = predictions[i] > predictions[j];
            if truth == guess && predictions[i] != predictions[j] {
                right += 1;
            }
        }
    }
    let accuracy = if pairs == 0 {
        0.0
    } else {
        right as f64 / pairs as f64
    };
    (accuracy, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_ranking_it_can_be_asked_about() {
        // Speed decreases with feature 0 and increases with feature 1.
        let samples: Vec<Sample> = (0..64)
            .map(|i| {
                let (a, b) = ((i % 8) as f32, (i / 8) as f32);
                let mut f = vec![0.0; FEATURE_COUNT];
                f[0] = a;
                f[1] = b;
                Sample {
                    task: 0,
                    features: f,
                    label: (1.0 + b) / (1.0 + a + b),
                    ms: Some(f64::from((1.0 + a + b) / (1.0 + b))),
                }
            })
            .collect();
        let mut m = XgbCostModel::new();
        assert!(!m.is_trained());
        m.fit(&samples).unwrap();
        assert!(m.is_trained());
        let feats: Vec<Vec<f32>> = samples.iter().map(|s| s.features.clone()).collect();
        let p = m.predict(&feats).unwrap();
        let (acc, pairs) = pairwise_accuracy(&samples, &p);
        assert!(pairs > 1000);
        assert!(acc > 0.9, "{acc}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        m.save(&path).unwrap();
        let again = XgbCostModel::load(&path).unwrap();
        assert_eq!(again.predict(&feats).unwrap(), p);
    }
}
