//! Measuring candidates: each one built and timed in a separate process.
//!
//! [`LocalRunner`] starts a worker process (the `kiln` binary's hidden `measure-worker`
//! command, which calls [`serve`]) and sends it one job: the model, the graph options, a
//! workload key and the candidates' knobs. The worker rebuilds the task from the model
//! ([`crate::task::extract_tasks`] is deterministic), and for each candidate reports `start`,
//! builds it (schedule, lowering, JIT), reports `built`, times it (warm-up, then repeats of
//! enough calls to last `min_repeat_ms`, the per-call mean of each repeat; a repeat during
//! which the kernel's threads waited for a CPU is timed again, see [`crate::contention`]; the
//! constant inputs warm or cold as in the model, see [`crate::cache`]) and reports `done` or
//! `error`, one JSON line each.
//!
//! Invariant: every candidate handed to [`Runner::measure`] gets exactly one result. A worker
//! that crashes or exceeds the build or run timeout is killed; the candidate in flight is
//! recorded as an error naming the signal or the timeout, and a new worker continues with the
//! remaining candidates, so no candidate can stop tuning.

use crate::cache::{self, ConstantCache};
use crate::contention::{self, run_queue_wait_ns};
use crate::task::extract_tasks;
use crate::TuneError;
use kiln_codegen::{CodegenOptions, JitModule, Threads};
use kiln_ir::{DType, TensorType};
use kiln_operators::kernel::{finish_kernel, KernelInput};
use kiln_schedules::{schedule_with, Knobs};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How candidates are timed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureOptions {
    /// The target whose ISA the candidates are compiled for (it must run on this machine).
    pub target: String,
    /// Threads the kernel runs with (1: no thread pool).
    pub threads: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed repeats; each is the mean of enough calls to last `min_repeat_ms`.
    pub repeats: usize,
    pub min_repeat_ms: f64,
    /// Limits on building (scheduling, lowering, code generation) and on running one candidate.
    pub build_timeout_ms: u64,
    pub run_timeout_ms: u64,
    /// Whether constant inputs are cached as the calls repeat ([`crate::cache`]).
    #[serde(default)]
    pub constants: ConstantCache,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        MeasureOptions {
            target: "host".into(),
            threads: 1,
            warmup: 1,
            repeats: 3,
            min_repeat_ms: 10.0,
            build_timeout_ms: 20_000,
            run_timeout_ms: 10_000,
            constants: ConstantCache::Auto,
        }
    }
}

/// The model a runner measures for, as the worker rebuilds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub path: PathBuf,
    /// Shapes bound to inputs by name.
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// E-graph rewriting on (as the compiler's default).
    pub rewrite: bool,
    /// `auto`, `nchw` or `nhwc`.
    pub layout: String,
}

impl ModelSpec {
    /// The graph options the compiler would use.
    pub fn graph_options(&self) -> kiln::GraphOptions {
        let mut options = kiln::GraphOptions {
            rewrite: self.rewrite,
            ..kiln::GraphOptions::default()
        };
        options.limits.layout = match self.layout.as_str() {
            "nchw" => kiln::LayoutChoice::Nchw,
            "nhwc" => kiln::LayoutChoice::Nhwc,
            _ => kiln::LayoutChoice::Auto,
        };
        options
    }

    /// Imports the model.
    pub fn load(&self) -> Result<kiln_onnx::Model, TuneError> {
        let options = kiln_onnx::ImportOptions {
            input_shapes: self.input_shapes.iter().cloned().collect(),
            ..Default::default()
        };
        kiln_onnx::load_model(&self.path, &options).map_err(TuneError::Import)
    }
}

/// One measurement request to a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub model: ModelSpec,
    pub workload: String,
    /// The trial number of the first candidate (fault injection in tests counts trials).
    pub first_trial: usize,
    pub candidates: Vec<Knobs>,
    pub options: MeasureOptions,
}

/// A worker's report about candidate `index` of its job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start { index: usize },
    Built { index: usize, build_ms: f64 },
    Done { index: usize, times_ms: Vec<f64> },
    Error { index: usize, error: String },
}

/// The outcome of measuring one candidate.
#[derive(Clone, Debug, PartialEq)]
pub enum Measured {
    /// Per-call milliseconds of each repeat.
    Times(Vec<f64>),
    Error(String),
}

/// Builds and times candidates of one task: [`LocalRunner`] here, [`crate::remote::RpcRunner`]
/// on remote devices.
pub trait Runner {
    /// One result per candidate, in order.
    fn measure(
        &mut self,
        workload: &str,
        first_trial: usize,
        candidates: &[Knobs],
    ) -> Vec<Measured>;

    /// The device measured on, when it is not this machine (recorded in the log).
    fn device(&self) -> Option<String> {
        None
    }
}

/// Runs candidates in worker processes on this machine.
#[derive(Debug)]
pub struct LocalRunner {
    /// The worker command (program and arguments); it reads a [`Job`] on stdin.
    pub command: Vec<OsString>,
    pub model: ModelSpec,
    pub options: MeasureOptions,
}

/// What a worker process said, line by line, and how it ended.
enum FromWorker {
    Event(Event),
    Closed,
}

/// How a worker's job ended.
enum Ended {
    Finished,
    Died,
    TimedOut,
}

fn describe_exit(child: &mut Child) -> String {
    match child.wait() {
        Ok(status) => {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                if let Some(sig) = status.signal() {
                    return format!("the measurement process was killed by signal {sig}");
                }
            }
            format!("the measurement process exited ({status})")
        }
        Err(e) => format!("the measurement process could not be waited for: {e}"),
    }
}

impl LocalRunner {
    fn spawn(&self, job: &Job) -> Result<Worker, String> {
        let (program, args) = self.command.split_first().ok_or("no measurement command")?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the measurement process: {e}"))?;
        // What the worker says on stderr (its error or panic message), for the error record.
        let stderr = child.stderr.take().ok_or("no worker error output")?;
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.chars().take(300).collect())
                .unwrap_or_default()
        });
        let line = serde_json::to_string(job).map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            // A worker that dies before reading is reported when its output ends.
            let _ = writeln!(stdin, "{line}");
        }
        let stdout = child.stdout.take().ok_or("no worker output")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(ev) = serde_json::from_str::<Event>(&line) {
                    if tx.send(FromWorker::Event(ev)).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(FromWorker::Closed);
        });
        Ok(Worker {
            child,
            events: rx,
            stderr,
        })
    }
}

/// A running worker process: its events, and the last line it wrote to stderr once it ends.
struct Worker {
    child: Child,
    events: mpsc::Receiver<FromWorker>,
    stderr: std::thread::JoinHandle<String>,
}

impl Worker {
    /// Waits for the process that ended by itself and describes how, with its last stderr
    /// line.
    fn end(mut self) -> String {
        let why = describe_exit(&mut self.child);
        match self.stderr.join() {
            Ok(last) if !last.is_empty() => format!("{why} ({last})"),
            _ => why,
        }
    }

    /// Kills the process and reaps it. Its output threads are left to finish on their own (a
    /// process it started could still hold the pipes open).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Runner for LocalRunner {
    fn measure(
        &mut self,
        workload: &str,
        first_trial: usize,
        candidates: &[Knobs],
    ) -> Vec<Measured> {
        let mut results: Vec<Option<Measured>> = vec![None; candidates.len()];
        let build = Duration::from_millis(self.options.build_timeout_ms);
        let run = Duration::from_millis(self.options.run_timeout_ms);
        let mut next = 0;
        while next < candidates.len() {
            let job = Job {
                model: self.model.clone(),
                workload: workload.to_string(),
                first_trial: first_trial + next,
                candidates: candidates[next..].to_vec(),
                options: self.options.clone(),
            };
            let worker = match self.spawn(&job) {
                Ok(w) => w,
                Err(e) => {
                    for r in results.iter_mut().skip(next) {
                        *r = Some(Measured::Error(e.clone()));
                    }
                    break;
                }
            };
            let offset = next;
            // The candidate in flight and what it is doing, with the deadline of that phase.
            let mut in_flight: Option<(usize, &str)> = None;
            let mut deadline = Instant::now() + build;
            let ended = loop {
                let wait = deadline.saturating_duration_since(Instant::now());
                match worker.events.recv_timeout(wait) {
                    Ok(FromWorker::Event(ev)) => {
                        let finished = match ev {
                            Event::Start { index } => {
                                in_flight = Some((offset + index, "building"));
                                deadline = Instant::now() + build;
                                None
                            }
                            Event::Built { index, .. } => {
                                in_flight = Some((offset + index, "running"));
                                deadline = Instant::now() + run;
                                None
                            }
                            Event::Done { index, times_ms } => {
                                Some((offset + index, Measured::Times(times_ms)))
                            }
                            Event::Error { index, error } => {
                                Some((offset + index, Measured::Error(error)))
                            }
                        };
                        if let Some((i, m)) = finished {
                            if i < results.len() {
                                results[i] = Some(m);
                            }
                            in_flight = None;
                            next = next.max(i + 1);
                            deadline = Instant::now() + build;
                        }
                        if next >= candidates.len() {
                            break Ended::Finished;
                        }
                    }
                    Ok(FromWorker::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break Ended::Died
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break Ended::TimedOut,
                }
            };
            let (i, phase) = in_flight.unwrap_or((next, "starting"));
            match ended {
                Ended::Finished => {
                    worker.end();
                }
                Ended::Died => {
                    let why = worker.end();
                    if i < results.len() && results[i].is_none() {
                        results[i] = Some(Measured::Error(format!("{why} while {phase}")));
                    }
                    next = next.max(i + 1);
                }
                Ended::TimedOut => {
                    worker.kill();
                    let limit = if phase == "running" { run } else { build };
                    if i < results.len() {
                        results[i] = Some(Measured::Error(format!(
                            "timed out after {} ms while {phase}",
                            limit.as_millis()
                        )));
                    }
                    next = next.max(i + 1);
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Measured::Error("not measured".into())))
            .collect()
    }
}

/// Test hook, honoured only by debug builds: `KILN_TUNE_FAULT=crash:N` aborts the worker on
/// every trial number divisible by N (from 1), `hang:N` makes it sleep instead.
fn injected_fault(trial: usize) -> Option<&'static str> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let spec = std::env::var("KILN_TUNE_FAULT").ok()?;
    let (kind, every) = spec.split_once(':')?;
    let every: usize = every.parse().ok()?;
    if every == 0 || !(trial + 1).is_multiple_of(every) {
        return None;
    }
    match kind {
        "crash" => Some("crash"),
        "hang" => Some("hang"),
        _ => None,
    }
}

/// Deterministic small input values (zeros for integers, so indices stay in bounds).
fn synthetic(ty: &TensorType) -> Vec<u8> {
    let n = ty.num_elements();
    match ty.dtype {
        DType::F32 => (0..n)
            .flat_map(|i| ((((i * 7919) % 201) as f32 - 100.0) / 128.0).to_le_bytes())
            .collect(),
        other => vec![0u8; n * other.size_bytes()],
    }
}

/// Schedules and lowers one candidate of `task`: its kernel and what each of its input params
/// binds (the params after those are its outputs).
pub fn lower_candidate(
    task: &crate::task::Task,
    graph: &kiln_ir::Graph,
    knobs: &Knobs,
) -> Result<(kiln_tir::PrimFunc, Vec<KernelInput>), String> {
    let (trace, mut func) = schedule_with(&task.dag, task.class, &task.keep, knobs, &task.target)
        .map_err(|e| e.to_string())?;
    let mut inputs = task.inputs.clone();
    finish_kernel(
        graph,
        &task.dag,
        &trace,
        task.placement.as_ref(),
        &mut func,
        &mut inputs,
    );
    Ok((func, inputs))
}

/// Builds and times one candidate of `task` in this process; `cold_against`: the constant
/// inputs are timed cold against a cache of that many bytes ([`crate::cache`]).
fn measure_one(
    task: &crate::task::Task,
    graph: &kiln_ir::Graph,
    knobs: &Knobs,
    options: &MeasureOptions,
    cold_against: Option<u64>,
    report: &mut dyn FnMut(Event),
    index: usize,
) -> Result<Vec<f64>, String> {
    let start = Instant::now();
    let (func, inputs) = lower_candidate(task, graph, knobs)?;
    let target = kiln::Target::named(&options.target).map_err(|e| e.to_string())?;
    let codegen = CodegenOptions {
        isa: target.isa_spec(),
        threads: if options.threads <= 1 {
            Threads::Single
        } else {
            Threads::Pool(options.threads)
        },
        ..CodegenOptions::default()
    };
    let name = func.name.clone();
    let module =
        JitModule::compile(std::slice::from_ref(&func), &codegen).map_err(|e| e.to_string())?;
    let kernel = module
        .kernel(&name)
        .ok_or("the compiled kernel is missing")?;
    report(Event::Built {
        index,
        build_ms: start.elapsed().as_secs_f64() * 1e3,
    });
    // Each param's buffers: one, or for constants timed cold, copies the calls rotate over.
    let bytes: Vec<(Vec<u8>, bool)> = func
        .params
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let decl = &func.buffers[p.index()];
            let ty = TensorType::new(decl.dtype, decl.shape.clone());
            match (inputs.get(i), ty) {
                (Some(KernelInput::Const(c)), _) => (kiln::tensor_bytes(graph.constant(*c)), true),
                (Some(KernelInput::Table(t)), _) => (kiln::tensor_bytes(t), true),
                (Some(KernelInput::Value(_)), Ok(ty)) => (synthetic(&ty), false),
                (_, _) => (
                    vec![0u8; decl.num_elements() * decl.dtype.size_bytes()],
                    false,
                ),
            }
        })
        .collect();
    let constant_bytes: u64 = bytes
        .iter()
        .filter(|(_, constant)| *constant)
        .map(|(b, _)| b.len() as u64)
        .sum();
    let copies = cold_against.map_or(1, |c| cache::copies_for_cold(constant_bytes, Some(c)));
    let mut buffers: Vec<Vec<Vec<u8>>> = bytes
        .into_iter()
        .map(|(b, constant)| vec![b; if constant { copies } else { 1 }])
        .collect();
    let mut calls = 0usize;
    let mut call = |buffers: &mut Vec<Vec<Vec<u8>>>| {
        let mut args: Vec<&mut [u8]> = buffers
            .iter_mut()
            .map(|copies| {
                let n = copies.len();
                copies[calls % n].as_mut_slice()
            })
            .collect();
        calls += 1;
        kernel.run_bytes(&mut args).map_err(|e| e.to_string())
    };
    for _ in 0..options.warmup.max(1) {
        call(&mut buffers)?;
    }
    // Calls per repeat so that a repeat lasts `min_repeat_ms`, from one timed call.
    let t0 = Instant::now();
    call(&mut buffers)?;
    let one = t0.elapsed().as_secs_f64() * 1e3;
    let number = ((options.min_repeat_ms / one.max(1e-6)).ceil() as usize).clamp(1, 100_000);
    // A repeat during which the kernel's threads waited for a CPU (another process ran) is
    // timed again, up to as many extra repeats as were asked for; after that the disturbed
    // ones count too (a machine that is always busy still gets numbers).
    let repeats = options.repeats.max(1);
    let mut times = Vec::with_capacity(repeats);
    let mut disturbed = vec![];
    while times.len() < repeats {
        let waited = run_queue_wait_ns();
        let t = Instant::now();
        for _ in 0..number {
            call(&mut buffers)?;
        }
        let wall = t.elapsed();
        let ms = wall.as_secs_f64() * 1e3 / number as f64;
        let waited = run_queue_wait_ns()
            .zip(waited)
            .map_or(0, |(after, before)| after.saturating_sub(before));
        if contention::disturbed(waited, wall) && disturbed.len() < repeats {
            disturbed.push(ms);
        } else {
            times.push(ms);
        }
    }
    Ok(times)
}

/// The worker: reads one [`Job`] from `input` and writes one [`Event`] line per step to
/// `output`.
pub fn serve(input: &mut dyn Read, output: &mut dyn Write) -> Result<(), TuneError> {
    let mut line = String::new();
    BufReader::new(input)
        .read_line(&mut line)
        .map_err(TuneError::Io)?;
    let job: Job = serde_json::from_str(&line).map_err(|e| TuneError::Job(e.to_string()))?;
    let model = job.model.load()?;
    let target =
        kiln::Target::named(&job.options.target).map_err(|e| TuneError::Job(e.to_string()))?;
    let set = extract_tasks(&model.graph, &job.model.graph_options(), &target)?;
    let tasks: HashMap<&str, &crate::task::Task> =
        set.tasks.iter().map(|t| (t.key.as_str(), t)).collect();
    let task = tasks
        .get(job.workload.as_str())
        .ok_or_else(|| TuneError::Job(format!("the model has no workload {}", job.workload)))?;
    let cache_bytes = crate::device::host_last_level_cache_bytes();
    let cold_against = job
        .options
        .constants
        .is_cold(cache::model_constant_bytes(&set.graph), cache_bytes)
        .then(|| cache_bytes.unwrap_or(cache::ASSUMED_CACHE_BYTES));
    let mut send = |ev: Event| -> Result<(), TuneError> {
        let text = serde_json::to_string(&ev).map_err(|e| TuneError::Job(e.to_string()))?;
        writeln!(output, "{text}").map_err(TuneError::Io)?;
        output.flush().map_err(TuneError::Io)
    };
    for (index, knobs) in job.candidates.iter().enumerate() {
        send(Event::Start { index })?;
        match injected_fault(job.first_trial + index) {
            Some("crash") => std::process::abort(),
            Some(_) => std::thread::sleep(Duration::from_secs(3600)),
            None => {}
        }
        // A lost `built` line only makes the parent apply the build timeout to the run too.
        let result = measure_one(
            task,
            &set.graph,
            knobs,
            &job.options,
            cold_against,
            &mut |e| {
                let _ = send(e);
            },
            index,
        );
        let ev = match result {
            Ok(times_ms) => Event::Done { index, times_ms },
            Err(error) => Event::Error { index, error },
        };
        send(ev)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(script: &str) -> LocalRunner {
        LocalRunner {
            command: vec!["sh".into(), "-c".into(), script.into()],
            model: ModelSpec {
                path: "unused.onnx".into(),
                input_shapes: vec![],
                rewrite: true,
                layout: "auto".into(),
            },
            options: MeasureOptions {
                build_timeout_ms: 500,
                run_timeout_ms: 500,
                ..MeasureOptions::default()
            },
        }
    }

    #[test]
    fn a_worker_that_fails_gives_every_candidate_an_error_with_its_message() {
        let mut r = runner("cat >/dev/null; echo 'error: no such model' >&2; exit 3");
        let knobs = [Knobs::default(), Knobs::default()];
        let results = r.measure("w", 0, &knobs);
        assert_eq!(results.len(), 2);
        for m in results {
            let Measured::Error(e) = m else {
                panic!("{m:?}")
            };
            assert!(
                e.contains("exit status: 3") && e.contains("no such model"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_silent_worker_times_out_and_the_next_candidate_gets_a_new_one() {
        // Reports `start` for the first candidate of its job, then hangs.
        let script = r#"read job; echo '{"event":"start","index":0}'; exec sleep 30"#;
        let mut r = runner(script);
        let results = r.measure("w", 0, &[Knobs::default(), Knobs::default()]);
        for m in &results {
            assert!(
                matches!(m, Measured::Error(e) if e.contains("timed out after 500 ms while building")),
                "{results:?}"
            );
        }
    }

    #[test]
    fn results_of_a_worker_are_taken_in_order() {
        let script = r#"read job
echo '{"event":"start","index":0}'
echo '{"event":"built","index":0,"build_ms":1.0}'
echo '{"event":"done","index":0,"times_ms":[1.0,2.0,3.0]}'
echo '{"event":"start","index":1}'
echo '{"event":"error","index":1,"error":"does not lower"}'"#;
        let mut r = runner(script);
        let results = r.measure("w", 0, &[Knobs::default(), Knobs::default()]);
        assert_eq!(
            results,
            vec![
                Measured::Times(vec![1.0, 2.0, 3.0]),
                Measured::Error("does not lower".into())
            ]
        );
    }
}
