//! The latency model: a kernel's absolute latency on a device, predicted from the kernel's loop
//! features ([`crate::features`]) and the device's description ([`crate::device`]).
//!
//! Gradient-boosted trees (XGBoost) regress `ln(ms)` on one row per measurement: the kernel's
//! [`FEATURE_COUNT`] features followed by the device's [`DEVICE_FEATURE_COUNT`]. The trees
//! learn `ln(ms)` less the device's [`speed_index`] (the mean log latency of its probes), which
//! is added back to every prediction: a machine that runs everything 30% slower this hour, as
//! a shared one does, has probes 30% slower and gets predictions 30% slower, where trees on
//! the raw label could not leave the probe range they were trained on. Because the label is
//! absolute, one model serves every task and every device it has records for: the
//! search ranks a task's candidates by it, and whole-model latency is a sum of its predictions
//! ([`crate::predict`]). [`DeviceCostModel`] is the tuner's view of it for one device: it
//! starts from a pretrained [`LatencyModel`] (usable from trial one) and adapts to the device's
//! own measurements with trees boosted on top of the pretrained model's predictions (XGBoost's
//! base margin), or learns from scratch when there is no pretrained model.
//!
//! Invariant: a row is always kernel features then device features, in the orders of
//! [`crate::features::feature_names`] and [`crate::device::FEATURE_NAMES`]; a saved model
//! carries both lists and refuses to load under others; predictions are finite.

use crate::device::FEATURE_NAMES as DEVICE_FEATURE_NAMES;
use crate::features::{feature_names, FEATURE_COUNT};
use crate::model::{CostModel, Sample};
use crate::TuneError;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use xgb::parameters::BoosterParameters;
use xgb::{Booster, DMatrix};

/// How many numbers describe a device (see [`crate::device::DeviceDescription::features`]).
pub const DEVICE_FEATURE_COUNT: usize = DEVICE_FEATURE_NAMES.len();
/// The width of a model row.
pub const ROW_WIDTH: usize = FEATURE_COUNT + DEVICE_FEATURE_COUNT;
/// The booster attribute holding the feature names a model was trained on.
const FEATURES_ATTRIBUTE: &str = "kiln_features";
/// The booster attribute naming what its trees predict: [`PROBE_RELATIVE`], or (absent, models
/// of earlier Kilns) `ln(ms)` itself.
const LABEL_ATTRIBUTE: &str = "kiln_label";
const PROBE_RELATIVE: &str = "ln_ms_less_probe_index";

/// A device's speed index: the mean of the log latencies of its probes (the device features
/// named `log_ms_*`) that it has, 0 when it has none (a model then predicts `ln(ms)` as is).
pub fn speed_index(device: &[f32]) -> f32 {
    let (sum, n) = DEVICE_FEATURE_NAMES
        .iter()
        .zip(device)
        .filter(|(name, v)| name.starts_with("log_ms_") && v.is_finite())
        .fold((0.0, 0), |(sum, n), (_, v)| (sum + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f32
    }
}

/// One successful measurement as training data.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencySample {
    /// The workload key (samples of one task on one device are ranked against each other).
    pub task: String,
    /// The kernel's features ([`FEATURE_COUNT`] values).
    pub kernel: Vec<f32>,
    /// The device's features ([`DEVICE_FEATURE_COUNT`] values, NaN where unknown).
    pub device: Arc<[f32]>,
    /// Which device (a name for grouping, e.g. `target/threads`).
    pub device_name: Arc<str>,
    /// The median measured latency, in milliseconds (positive).
    pub ms: f64,
}

/// Boosting settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Boosting {
    pub rounds: i32,
    pub max_depth: u32,
    pub eta: f64,
}

impl Boosting {
    /// A model pretrained on many tasks and devices.
    pub const PRETRAIN: Boosting = Boosting {
        rounds: 200,
        max_depth: 7,
        eta: 0.15,
    };
    /// Trees adapting a pretrained model to one device's measurements (few samples: shallow).
    pub const ADAPT: Boosting = Boosting {
        rounds: 40,
        max_depth: 4,
        eta: 0.2,
    };
    /// A model learnt from one device's measurements only.
    pub const SCRATCH: Boosting = Boosting {
        rounds: 80,
        max_depth: 8,
        eta: 0.2,
    };
}

fn xgb_err(e: xgb::XGBError) -> TuneError {
    TuneError::CostModel(e.to_string())
}

/// The row of a kernel on a device.
fn row(kernel: &[f32], device: &[f32], out: &mut Vec<f32>) {
    let start = out.len();
    out.extend_from_slice(&kernel[..kernel.len().min(FEATURE_COUNT)]);
    out.resize(start + FEATURE_COUNT, 0.0);
    out.extend_from_slice(&device[..device.len().min(DEVICE_FEATURE_COUNT)]);
    out.resize(start + ROW_WIDTH, f32::NAN);
}

fn matrix<'a>(
    rows: impl ExactSizeIterator<Item = (&'a [f32], &'a [f32])>,
) -> Result<DMatrix, TuneError> {
    let n = rows.len();
    let mut flat = Vec::with_capacity(n * ROW_WIDTH);
    for (k, d) in rows {
        row(k, d, &mut flat);
    }
    DMatrix::from_dense(&flat, n).map_err(xgb_err)
}

fn all_feature_names() -> String {
    let mut names = feature_names();
    names.extend(DEVICE_FEATURE_NAMES.iter().map(|n| format!("device.{n}")));
    names.join(",")
}

/// Trains a booster on `d` (labels set) with `boosting`.
fn boost(d: &DMatrix, boosting: Boosting) -> Result<Booster, TuneError> {
    let mut b =
        Booster::new_with_cached_dmats(&BoosterParameters::default(), &[d]).map_err(xgb_err)?;
    for (k, v) in [
        ("objective", "reg:squarederror".to_string()),
        ("nthread", "1".into()),
        ("max_depth", boosting.max_depth.to_string()),
        ("eta", boosting.eta.to_string()),
        ("min_child_weight", "1".into()),
        ("subsample", "0.9".into()),
        ("colsample_bytree", "0.8".into()),
        ("verbosity", "0".into()),
        ("seed", "1".into()),
    ] {
        b.set_param(k, &v).map_err(xgb_err)?;
    }
    for i in 0..boosting.rounds {
        b.update(d, i).map_err(xgb_err)?;
    }
    Ok(b)
}

/// A pretrained latency model (see the module doc).
pub struct LatencyModel {
    booster: Booster,
    /// Its trees predict `ln(ms)` less the device's [`speed_index`].
    probe_relative: bool,
}

impl std::fmt::Debug for LatencyModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyModel").finish_non_exhaustive()
    }
}

impl LatencyModel {
    /// Trains on `samples` (at least one).
    pub fn train(samples: &[LatencySample], boosting: Boosting) -> Result<Self, TuneError> {
        if samples.is_empty() {
            return Err(TuneError::CostModel(
                "no measurements to train the latency model on".into(),
            ));
        }
        let mut d = matrix(samples.iter().map(|s| (&s.kernel[..], &s.device[..])))?;
        let labels: Vec<f32> = samples
            .iter()
            .map(|s| s.ms.ln() as f32 - speed_index(&s.device))
            .collect();
        d.set_labels(&labels).map_err(xgb_err)?;
        let mut booster = boost(&d, boosting)?;
        booster
            .set_attribute(FEATURES_ATTRIBUTE, &all_feature_names())
            .map_err(xgb_err)?;
        booster
            .set_attribute(LABEL_ATTRIBUTE, PROBE_RELATIVE)
            .map_err(xgb_err)?;
        Ok(LatencyModel {
            booster,
            probe_relative: true,
        })
    }

    fn check_features(booster: Booster, origin: &str) -> Result<Self, TuneError> {
        let trained_on = booster
            .get_attribute(FEATURES_ATTRIBUTE)
            .map_err(xgb_err)?
            .unwrap_or_default();
        if trained_on != all_feature_names() {
            return Err(TuneError::CostModel(format!(
                "{origin} was trained on other features than this Kiln computes; retrain it \
                 (kiln cost-model train)"
            )));
        }
        let probe_relative = booster
            .get_attribute(LABEL_ATTRIBUTE)
            .map_err(xgb_err)?
            .is_some_and(|l| l == PROBE_RELATIVE);
        Ok(LatencyModel {
            booster,
            probe_relative,
        })
    }

    /// Loads a model saved by [`Self::save`].
    pub fn load(path: &Path) -> Result<Self, TuneError> {
        let booster = Booster::load(path)
            .map_err(|e| TuneError::CostModel(format!("cannot load {}: {e}", path.display())))?;
        Self::check_features(booster, &path.display().to_string())
    }

    /// Loads a model from the bytes of a saved one (`origin` names it in errors).
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, TuneError> {
        let booster = Booster::load_buffer(bytes)
            .map_err(|e| TuneError::CostModel(format!("cannot load {origin}: {e}")))?;
        Self::check_features(booster, origin)
    }

    /// Saves the model (XGBoost's JSON) through a temporary file renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<(), TuneError> {
        let tmp = path.with_extension("partial.json");
        self.booster.save(&tmp).map_err(xgb_err)?;
        std::fs::rename(&tmp, path).map_err(TuneError::Io)
    }

    /// Predicted `ln(ms)` of each kernel on the device.
    pub fn predict_ln(&self, kernels: &[Vec<f32>], device: &[f32]) -> Result<Vec<f32>, TuneError> {
        if kernels.is_empty() {
            return Ok(vec![]);
        }
        let d = matrix(kernels.iter().map(|k| (&k[..], device)))?;
        let p = self.booster.predict(&d).map_err(xgb_err)?;
        let index = if self.probe_relative {
            speed_index(device)
        } else {
            0.0
        };
        Ok(p.into_iter()
            .map(|x| if x.is_finite() { x + index } else { index })
            .collect())
    }

    /// Predicted latency of each kernel on the device, in milliseconds.
    pub fn predict_ms(&self, kernels: &[Vec<f32>], device: &[f32]) -> Result<Vec<f64>, TuneError> {
        Ok(self
            .predict_ln(kernels, device)?
            .into_iter()
            .map(|l| f64::from(l).exp())
            .collect())
    }
}

/// The tuner's cost model for one device (see the module doc): scores are `-ln(ms)` predicted,
/// so higher is faster and scores of different tasks compare.
pub struct DeviceCostModel {
    pretrained: Option<Rc<LatencyModel>>,
    device: Arc<[f32]>,
    local: Option<Booster>,
}

impl std::fmt::Debug for DeviceCostModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCostModel")
            .field("pretrained", &self.pretrained.is_some())
            .field("adapted", &self.local.is_some())
            .finish()
    }
}

impl DeviceCostModel {
    /// Fewer successful measurements than this and nothing is learnt from them.
    pub const MIN_SAMPLES: usize = 8;

    /// A model for the device described by `device`, starting from `pretrained` if given.
    pub fn new(pretrained: Option<Rc<LatencyModel>>, device: Vec<f32>) -> Self {
        DeviceCostModel {
            pretrained,
            device: device.into(),
            local: None,
        }
    }

    /// The pretrained model's predictions as base margins of `d` (none without one).
    fn set_base(&self, d: &mut DMatrix, kernels: &[Vec<f32>]) -> Result<(), TuneError> {
        if let Some(p) = &self.pretrained {
            d.set_base_margin(&p.predict_ln(kernels, &self.device)?)
                .map_err(xgb_err)?;
        }
        Ok(())
    }

    /// Predicted latency of each kernel on this device, in milliseconds.
    pub fn predict_ms(&self, kernels: &[Vec<f32>]) -> Result<Vec<f64>, TuneError> {
        let ln = match (&self.local, &self.pretrained) {
            (None, None) => vec![0.0; kernels.len()],
            (None, Some(p)) => p.predict_ln(kernels, &self.device)?,
            (Some(local), _) if !kernels.is_empty() => {
                let mut d = matrix(kernels.iter().map(|k| (&k[..], &self.device[..])))?;
                self.set_base(&mut d, kernels)?;
                local.predict(&d).map_err(xgb_err)?
            }
            (Some(_), _) => vec![],
        };
        Ok(ln.into_iter().map(|l| f64::from(l).exp()).collect())
    }
}

impl CostModel for DeviceCostModel {
    fn fit(&mut self, samples: &[Sample]) -> Result<(), TuneError> {
        let ran: Vec<(&Sample, f64)> = samples
            .iter()
            .filter_map(|s| s.ms.filter(|&ms| ms > 0.0).map(|ms| (s, ms)))
            .collect();
        if ran.len() < Self::MIN_SAMPLES {
            return Ok(());
        }
        let kernels: Vec<Vec<f32>> = ran.iter().map(|(s, _)| s.features.clone()).collect();
        let mut d = matrix(kernels.iter().map(|k| (&k[..], &self.device[..])))?;
        d.set_labels(&ran.iter().map(|(_, ms)| ms.ln() as f32).collect::<Vec<_>>())
            .map_err(xgb_err)?;
        self.set_base(&mut d, &kernels)?;
        let boosting = if self.pretrained.is_some() {
            Boosting::ADAPT
        } else {
            Boosting::SCRATCH
        };
        self.local = Some(boost(&d, boosting)?);
        Ok(())
    }

    fn predict(&self, features: &[Vec<f32>]) -> Result<Vec<f32>, TuneError> {
        Ok(self
            .predict_ms(features)?
            .into_iter()
            .map(|ms| {
                let s = -(ms.max(f64::MIN_POSITIVE).ln()) as f32;
                if s.is_finite() {
                    s
                } else {
                    0.0
                }
            })
            .collect())
    }

    fn is_trained(&self) -> bool {
        self.pretrained.is_some() || self.local.is_some()
    }

    /// Saves the device's adapted trees (the pretrained model is saved where it came from).
    fn save(&self, path: &Path) -> Result<(), TuneError> {
        let Some(b) = &self.local else { return Ok(()) };
        let tmp = path.with_extension("partial.json");
        b.save(&tmp).map_err(xgb_err)?;
        std::fs::rename(&tmp, path).map_err(TuneError::Io)
    }
}
