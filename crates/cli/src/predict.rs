//! `kiln predict`: a model's latency on a device without running it — per kernel and in total,
//! with the schedules a compile would use — and `kiln cost-model train`, which learns the
//! latency model it predicts with from tuning logs.
//!
//! Invariant: `kiln predict` never runs the model; the device is described by probes measured
//! on it (`kiln device`), here when the target runs here, else read from `--device FILE`.

use crate::error::CliError;
use crate::shapes::ImportArgs;
use kiln_tune::dataset::{collect, Dataset};
use kiln_tune::device::DeviceDescription;
use kiln_tune::evaluate::{holdout_tasks, HoldoutReport};
use kiln_tune::latency::{Boosting, LatencyModel};
use kiln_tune::predict::{predict_model, ScheduleSource};
use std::path::{Path, PathBuf};

fn tune_err(e: kiln_tune::TuneError) -> CliError {
    CliError::Tune(Box::new(e))
}

/// A `kiln predict` invocation.
#[derive(Debug)]
pub struct PredictRequest {
    pub model: PathBuf,
    pub target: String,
    pub threads: usize,
    /// The latency model (default: the one shipped with Kiln).
    pub cost_model: Option<PathBuf>,
    /// A device description from `kiln device --json` (default: probe this machine).
    pub device: Option<PathBuf>,
    pub json: bool,
    pub import: ImportArgs,
    pub graph: kiln::GraphOptions,
    /// The records whose schedules a compile would use (`--tuning-log`, else the shipped
    /// pre-tuned records; `None` with `--no-pretuned`).
    pub log: Option<kiln_tune::LogContents>,
}

/// The latency model at `path`, or the one shipped with Kiln.
pub fn latency_model(path: Option<&Path>) -> Result<LatencyModel, CliError> {
    match path {
        Some(p) => LatencyModel::load(p).map_err(tune_err),
        None => kiln_tune::pretrained::latency_model()
            .map_err(tune_err)?
            .ok_or_else(|| {
                CliError::Usage(
                    "this Kiln ships no pretrained latency model: pass --cost-model FILE \
                     (kiln cost-model train)"
                        .into(),
                )
            }),
    }
}

/// The description of the device `target` with `threads` threads: read from `file`, or this
/// machine probed.
fn device(
    file: Option<&Path>,
    target: &kiln::Target,
    threads: usize,
) -> Result<DeviceDescription, CliError> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| CliError::io(f, e))?;
        let d: DeviceDescription = serde_json::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{} is not a device description (kiln device --json): {e}",
                f.display()
            ))
        })?;
        if d.target != target.name() || d.threads != threads {
            return Err(CliError::Usage(format!(
                "{} describes target {} with {} thread(s), not {} with {threads}",
                f.display(),
                d.target,
                d.threads,
                target.name()
            )));
        }
        return Ok(d);
    }
    if !target.runs_natively() {
        return Err(CliError::Usage(format!(
            "target `{}` does not run on this machine: describe its device with `kiln device \
             --target {} --threads {threads} --json` there (or through --rpc) and pass --device FILE",
            target.name(),
            target.name()
        )));
    }
    DeviceDescription::of_host(target, threads).map_err(tune_err)
}

/// Predicts the model's latency and prints it.
pub fn predict(req: &PredictRequest) -> Result<(), CliError> {
    let (p, d) = prediction(req)?;
    if req.json {
        let text = serde_json::to_string_pretty(&p).map_err(|e| CliError::Remote(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    print_prediction(&p, &d, &req.model);
    Ok(())
}

/// The model's predicted latency, and the device it was predicted for.
pub fn prediction(
    req: &PredictRequest,
) -> Result<(kiln_tune::predict::ModelPrediction, DeviceDescription), CliError> {
    if req.threads == 0 {
        return Err(CliError::Usage("--threads must be positive".into()));
    }
    let target = kiln::Target::named(&req.target).map_err(|e| CliError::Usage(e.to_string()))?;
    let model = crate::load(&req.model, &req.import)?;
    let latency = latency_model(req.cost_model.as_deref())?;
    let set = kiln_tune::extract_tasks(&model.graph, &req.graph, &target).map_err(tune_err)?;
    let d = device(req.device.as_deref(), &target, req.threads)?;
    let p = predict_model(
        &set,
        target.name(),
        req.threads,
        req.log.as_ref(),
        &latency,
        &d.features(),
    )
    .map_err(tune_err)?;
    Ok((p, d))
}

fn print_prediction(p: &kiln_tune::predict::ModelPrediction, d: &DeviceDescription, model: &Path) {
    let mut kernels = p.kernels.clone();
    kernels.sort_by(|a, b| (b.ms * b.weight as f64).total_cmp(&(a.ms * a.weight as f64)));
    println!(
        "{:>10}  {:>5}  {:>6}  {:<7}  kernel",
        "ms", "x", "share", "schedule"
    );
    for k in &kernels {
        let total = k.ms * k.weight as f64;
        println!(
            "{:>10.4}  {:>5}  {:>5.1}%  {:<8}  {}",
            total,
            k.weight,
            100.0 * total / p.total_ms.max(f64::MIN_POSITIVE),
            match k.schedule {
                ScheduleSource::Tuned => "tuned",
                ScheduleSource::Default => "default",
            },
            k.desc
        );
    }
    println!(
        "predicted {:.3} ms for {} on {} ({} thread(s), {})",
        p.total_ms,
        model.display(),
        p.target,
        p.threads,
        d.cpu_model
    );
}

/// A `kiln cost-model train` invocation.
#[derive(Debug)]
pub struct TrainRequest {
    pub logs: Vec<PathBuf>,
    pub models: Vec<PathBuf>,
    pub out: Option<PathBuf>,
    /// Also score the model on held-out workloads with this many folds.
    pub evaluate: Option<usize>,
    /// Also write the training set as CSV (task, device, ms, then the features).
    pub export_csv: Option<PathBuf>,
    pub json: bool,
    pub import: ImportArgs,
    pub graph: kiln::GraphOptions,
}

/// The training set of the request's logs and models (devices probed here).
fn dataset(req: &TrainRequest) -> Result<Dataset, CliError> {
    let mut logs = vec![];
    for l in &req.logs {
        logs.push(kiln_tune::read_log(l).map_err(|e| tune_err(e.into()))?);
    }
    let mut graphs = vec![];
    for m in &req.models {
        graphs.push(crate::load(m, &req.import)?.graph);
    }
    let mut describe = |t: &kiln::Target, threads: usize| {
        if !t.runs_natively() {
            return Err(kiln_tune::TuneError::Job(format!(
                "records of target {} were measured elsewhere: this machine cannot describe \
                 that device",
                t.name()
            )));
        }
        eprintln!("probing {} with {threads} thread(s)", t.name());
        DeviceDescription::of_host(t, threads)
    };
    collect(&graphs, &req.graph, &logs, &mut describe).map_err(tune_err)
}

fn print_report(r: &HoldoutReport) {
    println!(
        "held-out workloads ({} folds): {} tasks, {} measurements",
        r.folds, r.tasks, r.samples
    );
    println!(
        "  pairwise ranking accuracy {:.3} ({} pairs)",
        r.pairwise, r.pairs
    );
    println!(
        "  Spearman within tasks {:.3}, over all measurements {:.3}",
        r.spearman_within, r.spearman_all
    );
    println!(
        "  top-1 recall {:.3}, top-5 recall {:.3} ({} groups of >= {} candidates)",
        r.top1,
        r.top5,
        r.top_k_groups,
        kiln_tune::evaluate::TOP_K_MIN_CANDIDATES
    );
    println!(
        "  median relative latency error {:.1}%",
        100.0 * r.median_relative_error
    );
}

/// The training set as CSV: one row per measurement.
fn write_csv(path: &Path, data: &Dataset) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut header = vec!["task".to_string(), "device".into(), "ms".into()];
    header.extend(kiln_tune::features::feature_names());
    header.extend(
        kiln_tune::device::FEATURE_NAMES
            .iter()
            .map(|n| format!("device.{n}")),
    );
    writeln!(out, "{}", header.join(","))?;
    for s in &data.samples {
        write!(
            out,
            "{},{},{}",
            s.task.replace(',', ";"),
            s.device_name,
            s.ms
        )?;
        for v in s.kernel.iter().chain(s.device.iter()) {
            write!(out, ",{v}")?;
        }
        writeln!(out)?;
    }
    out.flush()
}

/// Trains (and optionally evaluates) the latency model.
pub fn train(req: &TrainRequest) -> Result<(), CliError> {
    if req.logs.is_empty() || req.models.is_empty() {
        return Err(CliError::Usage(
            "give the tuning logs (--log) and the models they tuned (--model)".into(),
        ));
    }
    if req.out.is_none() && req.evaluate.is_none() && req.export_csv.is_none() {
        return Err(CliError::Usage(
            "nothing to do: pass -o FILE to train, --evaluate FOLDS to score, or both".into(),
        ));
    }
    let data = dataset(req)?;
    let s = &data.skipped;
    eprintln!(
        "{} measurements on {} device(s) ({} failed, {} remote, {} of other workloads, {} of \
         unknown targets, {} not lowering: skipped)",
        data.samples.len(),
        data.devices.len(),
        s.errors,
        s.remote,
        s.unknown_workload,
        s.unknown_target,
        s.not_lowering
    );
    if let Some(path) = &req.export_csv {
        write_csv(path, &data).map_err(|e| CliError::io(path, e))?;
    }
    if let Some(folds) = req.evaluate {
        let r = holdout_tasks(&data.samples, folds, 1, Boosting::PRETRAIN).map_err(tune_err)?;
        if req.json {
            let text =
                serde_json::to_string_pretty(&r).map_err(|e| CliError::Remote(e.to_string()))?;
            println!("{text}");
        } else {
            print_report(&r);
        }
    }
    if let Some(out) = &req.out {
        let m = LatencyModel::train(&data.samples, Boosting::PRETRAIN).map_err(tune_err)?;
        m.save(out).map_err(tune_err)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
