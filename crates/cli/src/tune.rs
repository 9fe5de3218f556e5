//! `kiln tune`: tunes a model's kernels on this machine (or on remote devices: `--rpc`,
//! `--tracker`) and appends every measurement to a
//! tuning log that `kiln compile/run/bench --tuning-log` read; and the hidden `measure-worker`
//! command the tuner runs candidates in.
//!
//! Invariant: `kiln tune` never overwrites a log: a log that already has records is continued
//! only with `--resume` (the trials it holds for this model count towards `--trials`), and
//! every record is on disk before the next round starts.

use crate::error::CliError;
use crate::shapes::ShapeBinding;
use kiln::Target;
use kiln_tune::device::DeviceDescription;
use kiln_tune::latency::{DeviceCostModel, LatencyModel};
use kiln_tune::log::{read_log, TuningLog};
use kiln_tune::measure::{LocalRunner, MeasureOptions, ModelSpec, Runner};
use kiln_tune::model::{holdout_accuracy, CostModel, XgbCostModel};
use kiln_tune::remote::{RemoteOptions, RpcRunner};
use kiln_tune::search::{TuneOptions, Tuner};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A `kiln tune` invocation.
#[derive(Clone, Debug)]
pub struct TuneRequest {
    pub model: PathBuf,
    pub log: PathBuf,
    pub trials: usize,
    pub target: String,
    pub plot: Option<PathBuf>,
    pub resume: bool,
    pub threads: usize,
    pub batch: usize,
    pub seed: u64,
    pub repeat_ms: f64,
    pub build_timeout_ms: u64,
    pub run_timeout_ms: u64,
    pub input_shapes: Vec<ShapeBinding>,
    pub rewrite: bool,
    pub layout: String,
    /// Remote devices to measure on (none: this machine).
    pub remote: crate::remote::RemoteArgs,
    /// The latency model to start from (default: the one shipped with Kiln).
    pub cost_model: Option<PathBuf>,
    /// Learn from this run's measurements only (the ranking model of earlier Kilns).
    pub no_pretrained: bool,
    /// Add the best records to the pre-tuned records in this folder (`schedules/tuned/records`).
    pub export_pretuned: Option<PathBuf>,
    /// Schedules per task measured again after the search (0: none).
    pub confirm: usize,
    /// Whether constant inputs are timed warm or cold (local measurements).
    pub constant_cache: kiln_tune::cache::ConstantCache,
    /// Logs whose winners seed the first rounds (empty: the shipped pre-tuned records).
    pub seeds_from: Vec<PathBuf>,
    /// No seeds at all.
    pub no_seeds: bool,
}

/// The schedules each task's first round measures after its default ([`kiln_tune::seeds`]):
/// the winners of `--seeds-from` logs, else of the shipped pre-tuned records.
fn first_round_seeds(
    req: &TuneRequest,
    target: &Target,
    set: &kiln_tune::TaskSet,
) -> Result<kiln_tune::seeds::Seeds, CliError> {
    if req.no_seeds {
        return Ok(Default::default());
    }
    let (logs, source) = if req.seeds_from.is_empty() {
        let cpu = kiln_tune::pretrained::host_cpu();
        (
            vec![kiln_tune::pretrained::records(target, None, &cpu)],
            "the shipped pre-tuned records".to_string(),
        )
    } else {
        let logs = req
            .seeds_from
            .iter()
            .map(|p| read_log(p).map_err(|e| tune_err(e.into())))
            .collect::<Result<Vec<_>, _>>()?;
        (logs, format!("{} log(s)", req.seeds_from.len()))
    };
    let mut seeds = kiln_tune::seeds::from_logs(&logs, target.name(), req.threads);
    seeds.retain(|workload, knobs| {
        !knobs.is_empty() && set.tasks.iter().any(|t| &t.key == workload)
    });
    if !seeds.is_empty() {
        println!(
            "seeds: {} of {} task(s) start from schedules that won in {source}",
            seeds.len(),
            set.tasks.len()
        );
    }
    Ok(seeds)
}

/// How the run times constant inputs, for the user ([`kiln_tune::cache`]).
fn constant_cache_line(req: &TuneRequest, graph: &kiln::Graph, remote: bool) -> String {
    use kiln_tune::cache::{model_constant_bytes, ConstantCache};
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    if remote {
        return "weights: timed as the device agent runs them (it repeats calls on one copy)"
            .into();
    }
    let constants = model_constant_bytes(graph);
    let cache = kiln_tune::device::host_last_level_cache_bytes();
    let cold = req.constant_cache.is_cold(constants, cache);
    let why = match (req.constant_cache, cache) {
        (ConstantCache::Auto, Some(c)) => format!(
            "the model's constants, {:.1} MiB, {} a quarter of the {:.0} MiB last-level cache",
            mib(constants),
            if cold { "exceed" } else { "fit in" },
            mib(c)
        ),
        (ConstantCache::Auto, None) => "this machine reports no last-level cache".into(),
        _ => "--constant-cache".into(),
    };
    format!(
        "weights: timed {} ({why})",
        if cold { "cold" } else { "warm" }
    )
}

fn tune_err(e: kiln_tune::TuneError) -> CliError {
    CliError::Tune(Box::new(e))
}

/// The cost model file kept beside a log (`LOG.model.json`).
pub fn model_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".model.json");
    log.with_file_name(name)
}

/// The cost model the search uses: the pretrained latency model (`--cost-model`, else the
/// shipped one) adapted to this device, described by its probes; or, with `--no-pretrained`,
/// without a pretrained model, or on remote devices (not yet described here), a ranking model
/// learnt from this run's measurements.
fn search_model(
    req: &TuneRequest,
    target: &Target,
    device: Option<&DeviceDescription>,
    model_file: &Path,
) -> Result<Box<dyn CostModel>, CliError> {
    let remote = device.is_none();
    let pretrained = match (&req.cost_model, req.no_pretrained) {
        (Some(_), true) => {
            return Err(CliError::Usage(
                "--cost-model and --no-pretrained contradict each other".into(),
            ))
        }
        (Some(path), false) => Some(LatencyModel::load(path).map_err(tune_err)?),
        (None, false) if !remote => kiln_tune::pretrained::latency_model().map_err(tune_err)?,
        _ => None,
    };
    if let Some(m) = pretrained {
        let Some(device) = device else {
            return Err(CliError::Usage(
                "--cost-model: a pretrained model needs the device's probes, which remote \
                 tuning does not take yet; pass --no-pretrained"
                    .into(),
            ));
        };
        println!(
            "cost model: pretrained latency model, adapted to {} ({} thread(s))",
            target.name(),
            req.threads
        );
        return Ok(Box::new(DeviceCostModel::new(
            Some(Rc::new(m)),
            device.features(),
        )));
    }
    Ok(match (req.resume, model_file.is_file()) {
        (true, true) => Box::new(XgbCostModel::load(model_file).map_err(tune_err)?),
        _ => Box::new(XgbCostModel::new()),
    })
}

/// What a tuning run found, per task and for the model.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneSummary {
    /// Trials measured by this run (resumed ones excluded), and of them the failed ones.
    pub trials: usize,
    pub errors: usize,
    /// `sum weight x time` over the tasks with their default and their best schedules.
    pub default_ms: Option<f64>,
    pub tuned_ms: Option<f64>,
    pub tasks: Vec<TaskSummary>,
}

/// One task of a [`TuneSummary`].
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSummary {
    /// The ops and output type.
    pub desc: String,
    /// Kernels of the model that run this workload.
    pub weight: usize,
    pub trials: usize,
    pub default_ms: Option<f64>,
    pub best_ms: Option<f64>,
}

/// What a tuning run tells its caller while it runs ([`tune_with`]).
#[derive(Clone, Copy, Debug)]
pub enum TuneEvent<'a> {
    /// A round of the search was measured.
    Round(&'a kiln_tune::search::Progress),
    /// The search is over (its report follows on stdout).
    SearchDone,
}

/// Tunes the model and prints what it found, with a progress bar on the terminal during the
/// search.
pub fn tune(req: &TuneRequest) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::io("current executable", e))?;
    let bar = indicatif::ProgressBar::new(req.trials as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} trials  {msg}  [{elapsed_precise}, ETA {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = tune_with(
        req,
        vec![exe.into_os_string(), "measure-worker".into()],
        &mut |event| match event {
            TuneEvent::Round(p) => {
                bar.set_length(p.total as u64);
                bar.set_position(p.trials as u64);
                let best = p.model_ms.map_or("-".to_string(), |m| format!("{m:.4} ms"));
                bar.set_message(format!("best {best}, {} errors", p.errors));
            }
            TuneEvent::SearchDone => bar.finish_and_clear(),
        },
    );
    bar.finish_and_clear();
    result.map(|_| ())
}

/// Tunes the model as [`tune`] does, measuring local candidates in processes started with
/// `worker` (a command whose stdin/stdout speak [`kiln_tune::measure::serve`]'s protocol) and
/// telling `progress` of each round and of the search's end; returns what it found.
pub fn tune_with(
    req: &TuneRequest,
    worker: Vec<std::ffi::OsString>,
    progress: &mut dyn FnMut(TuneEvent<'_>),
) -> Result<TuneSummary, CliError> {
    if req.trials == 0 || req.batch == 0 || req.threads == 0 {
        return Err(CliError::Usage(
            "--trials, --batch and --threads must be positive".into(),
        ));
    }
    if !(req.repeat_ms.is_finite() && req.repeat_ms >= 0.0)
        || req.build_timeout_ms == 0
        || req.run_timeout_ms == 0
    {
        return Err(CliError::Usage(
            "--repeat-ms must be a non-negative number and the timeouts positive".into(),
        ));
    }
    let target = Target::named(&req.target).map_err(|e| CliError::Usage(e.to_string()))?;
    let remote = req.remote.devices()?;
    if remote.is_none() && !target.runs_natively() {
        return Err(CliError::Usage(format!(
            "target `{}` does not run on this machine: measure on its devices with --rpc or \
             --tracker",
            target.name()
        )));
    }
    let model = crate::load(
        &req.model,
        &crate::shapes::ImportArgs {
            input_shapes: req.input_shapes.clone(),
            ..Default::default()
        },
    )?;
    let spec = ModelSpec {
        path: std::fs::canonicalize(&req.model).map_err(|e| CliError::io(&req.model, e))?,
        input_shapes: req.input_shapes.clone(),
        rewrite: req.rewrite,
        layout: req.layout.clone(),
    };
    let set =
        kiln_tune::extract_tasks(&model.graph, &spec.graph_options(), &target).map_err(tune_err)?;
    let existing = read_log(&req.log).map_err(|e| tune_err(e.into()))?;
    if !existing.records.is_empty() && !req.resume {
        return Err(CliError::Usage(format!(
            "tuning log {} already has {} records: pass --resume to continue it, or choose another file",
            req.log.display(),
            existing.records.len()
        )));
    }
    if !existing.skipped_lines.is_empty() {
        eprintln!(
            "note: tuning log {}: skipped unreadable line(s) {:?} (a record cut short by a kill)",
            req.log.display(),
            existing.skipped_lines
        );
    }
    let model_file = model_path(&req.log);
    // This machine as the device, as its probes find it now (local runs): it describes this
    // run's measurements in the log, and the pretrained model adapts to it.
    let device = match remote {
        None => Some(DeviceDescription::of_host(&target, req.threads).map_err(tune_err)?),
        Some(_) => None,
    };
    let cost_model = search_model(req, &target, device.as_ref(), &model_file)?;
    let seeds = first_round_seeds(req, &target, &set)?;
    let options = TuneOptions {
        seeds,
        trials: req.trials,
        batch: req.batch,
        seed: req.seed,
        target: target.name().to_string(),
        threads: req.threads,
        model_path: Some(model_file),
        ..TuneOptions::default()
    };
    let mut tuner = Tuner::new(&set, options, cost_model);
    let resumed = if req.resume {
        tuner.resume(&existing).map_err(tune_err)?
    } else {
        0
    };
    let remaining = req.trials.saturating_sub(resumed);
    println!(
        "{}: {} tasks ({} kernels), {} trials to run{}",
        req.model.display(),
        set.tasks.len(),
        set.tasks.iter().map(|t| t.weight).sum::<usize>(),
        remaining,
        if req.resume {
            format!(", {resumed} resumed from {}", req.log.display())
        } else {
            String::new()
        }
    );
    println!("{}", constant_cache_line(req, &set.graph, remote.is_some()));
    let mut log = TuningLog::open(&req.log).map_err(|e| tune_err(e.into()))?;
    if let Some(description) = device {
        log.append(&kiln_tune::log::Record::Device(
            kiln_tune::log::DeviceRecord {
                target: target.name().to_string(),
                threads: req.threads,
                description,
                timestamp: kiln_tune::log::now_secs(),
            },
        ))
        .map_err(|e| tune_err(e.into()))?;
    }
    let measure = MeasureOptions {
        threads: req.threads,
        target: target.name().to_string(),
        min_repeat_ms: req.repeat_ms,
        build_timeout_ms: req.build_timeout_ms,
        run_timeout_ms: req.run_timeout_ms,
        constants: req.constant_cache,
        ..MeasureOptions::default()
    };
    let graph_options = spec.graph_options();
    let remote_tuning = remote.is_some();
    let mut runner: Box<dyn Runner> = match remote {
        None => Box::new(LocalRunner {
            command: worker,
            model: spec,
            options: measure,
        }),
        Some((key, devices)) => {
            let options = RemoteOptions {
                key,
                devices,
                io_timeout: std::time::Duration::from_secs(30),
                client: format!("kiln tune {}", req.model.display()),
                memory_mb: 0,
            };
            let mut runner =
                RpcRunner::new(&spec, target.clone(), measure, options).map_err(tune_err)?;
            let n = runner
                .connect()
                .map_err(|e| CliError::Remote(format!("{}: {e}", req.remote.describe())))?;
            println!(
                "measuring on {n} device(s): {}",
                runner.device().unwrap_or_else(|| req.remote.describe())
            );
            Box::new(runner)
        }
    };
    if remaining > 0 {
        tuner.set_trials(remaining);
        tuner
            .run(runner.as_mut(), &mut log, &mut |p| {
                progress(TuneEvent::Round(p))
            })
            .map_err(tune_err)?;
    }
    progress(TuneEvent::SearchDone);
    if remaining > 0 && req.confirm > 0 {
        let c = tuner
            .confirm(runner.as_mut(), &mut log, req.confirm, CONFIRM_ROUNDS)
            .map_err(tune_err)?;
        if c.tasks > 0 {
            println!(
                "confirmed: the {} fastest schedule(s) of {} task(s) measured again {CONFIRM_ROUNDS} \
                 times in turn with their defaults ({} measurements): {} task(s) changed their \
                 best, {} of them back to the default",
                req.confirm, c.tasks, c.measurements, c.changed, c.back_to_default
            );
        }
    }
    report(&set, &tuner);
    let summary = TuneSummary {
        trials: tuner.trials,
        errors: tuner.errors,
        default_ms: tuner.default_model_ms(),
        tuned_ms: tuner.model_ms(),
        tasks: set
            .tasks
            .iter()
            .zip(&tuner.states)
            .map(|(t, s)| TaskSummary {
                desc: t.desc.clone(),
                weight: t.weight,
                trials: s.trials,
                default_ms: s.default_ms,
                best_ms: s.best.as_ref().map(|b| b.1),
            })
            .collect(),
    };
    if let Some(plot) = &req.plot {
        let labels: Vec<String> = set
            .tasks
            .iter()
            .map(|t| format!("{} x{}", t.desc, t.weight))
            .collect();
        let title = format!(
            "{}: tuning curve",
            req.model.file_stem().unwrap_or_default().to_string_lossy()
        );
        kiln_tune::plot::tuning_curve(
            plot,
            &title,
            &kiln_tune::plot::series(&tuner.curve, &labels),
        )
        .map_err(tune_err)?;
        println!("plot: {}", plot.display());
    }
    if let Some(dir) = &req.export_pretuned {
        export_pretuned(
            req,
            &model.graph,
            &graph_options,
            &target,
            dir,
            remote_tuning,
        )?;
    }
    Ok(summary)
}

/// `--export-pretuned DIR`: the log's records that beat their defaults alone; measured here,
/// each must also beat its default inside the model ([`kiln_tune::validate`]) to be written.
fn export_pretuned(
    req: &TuneRequest,
    graph: &kiln::Graph,
    graph_options: &kiln::GraphOptions,
    target: &Target,
    dir: &std::path::Path,
    remote_tuning: bool,
) -> Result<(), CliError> {
    use kiln_tune::pretrained::{beats_default, export, export_candidates, host_cpu};
    let log = read_log(&req.log).map_err(|e| tune_err(e.into()))?;
    let cpu = host_cpu();
    let all = export_candidates(&log, target, &cpu);
    let n = if remote_tuning {
        println!(
            "note: records measured on a remote device are exported as they won alone; they \
             are not validated inside the model (that would need the model run on the device)"
        );
        export(&all, target, &cpu, dir).map_err(tune_err)?
    } else {
        let (candidates, elsewhere): (Vec<_>, Vec<_>) = all.into_iter().partition(|(r, _)| {
            r.threads == req.threads && r.device.as_deref() == Some(cpu.as_str())
        });
        let schedules = kiln::TunedSchedules {
            traces: candidates
                .iter()
                .map(|(r, _)| (r.workload.clone(), r.trace.clone()))
                .collect(),
        };
        let validation = kiln_tune::validate::in_model(
            graph,
            target,
            &schedules,
            &kiln_tune::validate::ValidateOptions {
                threads: req.threads,
                graph: graph_options.clone(),
                ..Default::default()
            },
        )
        .map_err(tune_err)?;
        println!(
            "inside the model ({} thread(s)): {} candidate record(s); kernels {:.4} ms with \
             them, {:.4} ms with the defaults",
            req.threads,
            candidates.len(),
            validation.model.tuned_ms,
            validation.model.default_ms
        );
        let wins = |r: &kiln_tune::log::MeasureRecord| {
            validation
                .workloads
                .get(&r.workload)
                .is_some_and(|v| beats_default(v.tuned_ms, v.default_ms))
        };
        let desc: std::collections::HashMap<&str, &str> = log
            .records
            .iter()
            .filter_map(|r| match r {
                kiln_tune::log::Record::Workload(w) => Some((w.workload.as_str(), w.desc.as_str())),
                _ => None,
            })
            .collect();
        for (r, alone) in &candidates {
            if let Some(v) = validation.workloads.get(&r.workload) {
                let calls = v.calls.max(1) as f64;
                println!(
                    "  {}: alone {alone:.4} ms; in the model {:.4} ms, default {:.4} ms (per \
                     call, x{}): {}",
                    if wins(r) { "keep" } else { "drop" },
                    v.tuned_ms / calls,
                    v.default_ms / calls,
                    v.calls,
                    desc.get(r.workload.as_str())
                        .unwrap_or(&r.workload.as_str())
                );
            }
        }
        if !elsewhere.is_empty() {
            println!(
                "note: {} record(s) of other thread counts or devices in the log are not \
                 exported (they are validated by a run with their --threads on their device)",
                elsewhere.len()
            );
        }
        let kept: Vec<_> = candidates.into_iter().filter(|(r, _)| wins(r)).collect();
        export(&kept, target, &cpu, dir).map_err(tune_err)?
    };
    println!("pre-tuned: {n} record(s) added to {}", dir.display());
    Ok(())
}

fn report(set: &kiln_tune::TaskSet, tuner: &Tuner) {
    println!(
        "{:>4}  {:>6}  {:>10}  {:>10}  {:>7}  task",
        "x", "trials", "default ms", "best ms", "speedup"
    );
    for (t, s) in set.tasks.iter().zip(&tuner.states) {
        let best = s.best.as_ref().map(|b| b.1);
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let speedup = match (s.default_ms, best) {
            (Some(d), Some(b)) if b > 0.0 => format!("{:.2}x", d / b),
            _ => "-".into(),
        };
        println!(
            "{:>4}  {:>6}  {:>10}  {:>10}  {:>7}  {}",
            t.weight,
            s.trials,
            cell(s.default_ms),
            cell(best),
            speedup,
            t.desc
        );
    }
    if let (Some(d), Some(b)) = (tuner.default_model_ms(), tuner.model_ms()) {
        println!(
            "kernels summed (weight x time): default {d:.4} ms, tuned {b:.4} ms ({:.2}x)",
            d / b
        );
    }
    if let Some(n) = tuner.trials_to_within(0.05) {
        println!("within 5% of the final best after {n} trials of this run");
    }
    println!("errors: {} of {} trials", tuner.errors, tuner.trials);
    let samples = tuner.samples();
    match holdout_accuracy(&samples, 7) {
        Ok((acc, pairs)) if pairs > 0 => println!(
            "ranking model refit on this run's measurements: pairwise accuracy {acc:.3} on \
             {pairs} held-out pairs (random: 0.5)"
        ),
        _ => println!("cost model: too few measurements for a held-out accuracy"),
    }
}

/// How many times [`Tuner::confirm`] measures each confirmed schedule again.
const CONFIRM_ROUNDS: usize = 2;

/// Prints a note of the schedule choice on stderr (the CLI's sink for them).
pub fn note_on_stderr(note: String) {
    eprintln!("note: {note}");
}

/// The hidden worker command: one measurement job from stdin, events to stdout.
pub fn measure_worker() -> Result<(), CliError> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    kiln_tune::measure::serve(&mut stdin.lock(), &mut stdout.lock()).map_err(tune_err)
}

/// The pre-tuned records shipped with Kiln for `target` on `threads` threads (any when `None`;
/// a note to `note` when some apply).
pub fn pretuned_schedules(
    target: &str,
    threads: Option<usize>,
    note: &mut dyn FnMut(String),
) -> kiln::TunedSchedules {
    let Ok(t) = Target::named(target) else {
        return kiln::TunedSchedules::default();
    };
    let records = kiln_tune::pretrained::records(&t, threads, &kiln_tune::pretrained::host_cpu());
    let schedules = records.best_schedules(target, threads);
    if !schedules.traces.is_empty() {
        note(format!(
            "kiln's pre-tuned schedules for `{target}` apply ({} workloads known; \
             --no-pretuned ignores them)",
            schedules.traces.len()
        ));
    }
    schedules
}

/// The tuned schedules a `--tuning-log` holds for `target`, measured with `threads` threads
/// (any when `None`; what it found, to `note`).
pub fn schedules_from_log(
    log: &Path,
    target: &str,
    threads: Option<usize>,
    note: &mut dyn FnMut(String),
) -> Result<kiln::TunedSchedules, CliError> {
    if !log.is_file() {
        return Err(CliError::io(
            log,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such tuning log"),
        ));
    }
    let contents = read_log(log).map_err(|e| tune_err(e.into()))?;
    if !contents.skipped_lines.is_empty() {
        note(format!(
            "tuning log {}: skipped unreadable line(s) {:?}",
            log.display(),
            contents.skipped_lines
        ));
    }
    let schedules = contents.best_schedules(target, threads);
    let on = threads.map_or(String::new(), |t| format!(" on {t} thread(s)"));
    note(format!(
        "{} tuned schedule(s) for target `{target}`{on} from {}",
        schedules.traces.len(),
        log.display()
    ));
    Ok(schedules)
}
