//! Kiln's auto-tuner: finds fast schedules for a model's kernels on this machine.
//!
//! The pipeline, one module each ([`device`] describes the machine measured on, for cost
//! models that transfer between devices): [`task`] extracts the distinct workloads of a model;
//! `kiln_schedules` gives each its sketch and search space; [`features`] describes a scheduled
//! kernel; [`model`] learns from measurements which candidates are fast (XGBoost), and
//! [`latency`] predicts their absolute latency on a described device (trained from logs by
//! [`dataset`], judged on unseen tasks by [`evaluate`], summed over a model by [`predict`]); [`search`]
//! picks tasks and candidates by evolutionary search over the model's predictions; [`measure`]
//! builds and times candidates in separate processes, [`remote`] on device agents over RPC;
//! [`log`] keeps every measurement in an
//! append-only JSON-lines tuning log that later compiles read ([`log::LogContents::best_schedules`]);
//! [`plot`] draws the tuning curve.
//!
//! Invariant: tuning never changes what a model computes — every candidate is a legal schedule
//! of the same DAG (`kiln_schedules`), and the compiler replays a logged trace only when it
//! still replays and lowers on the workload's DAG.

pub mod cache;
pub mod contention;
pub mod dataset;
pub mod device;
pub mod evaluate;
pub mod features;
pub mod latency;
pub mod log;
pub mod measure;
pub mod model;
pub mod plot;
pub mod predict;
pub mod pretrained;
pub mod remote;
pub mod search;
pub mod seeds;
pub mod task;
pub mod validate;

pub use latency::{DeviceCostModel, LatencyModel};
pub use log::{read_log, LogContents, TuningLog};
pub use measure::{LocalRunner, MeasureOptions, ModelSpec, Runner};
pub use model::{holdout_accuracy, CostModel, XgbCostModel};
pub use predict::{predict_model, ModelPrediction};
pub use remote::{Devices, RemoteOptions, RpcRunner};
pub use search::{Progress, TuneOptions, Tuner};
pub use task::{extract_tasks, Task, TaskSet};

/// Why tuning failed.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error(transparent)]
    Import(#[from] kiln_onnx::ImportError),
    #[error("graph optimisation failed: {0}")]
    Graph(#[from] kiln::graph_opt::GraphOptError),
    #[error("lowering failed: {0}")]
    Lower(kiln_operators::kernel::KernelError),
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error("cost model: {0}")]
    CostModel(String),
    #[error("measurement job: {0}")]
    Job(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
