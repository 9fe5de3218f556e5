//! The `kiln` command-line tool: argument parsing, and the commands as thin layers over the
//! library crates (import with `kiln_onnx`, execution with a [`backend::Backend`]).
//!
//! Invariant: a command ends in exactly one of three exit codes: 0 (done, and every compared
//! tensor matched), 1 (done, but some comparison failed) and 2 (could not do it: bad arguments,
//! unreadable or invalid model or data, unsupported op, backend error); the reason for 2 is one
//! `error: ...` line on stderr. A panic (a bug) is reported the same way with exit code 101.

pub mod backend;
pub mod bench;
pub mod compare;
pub mod compile;
pub mod conformance;
pub mod data;
pub mod device;
pub mod error;
pub mod inspect;
pub mod manifest;
pub mod panic_guard;
pub mod predict;
pub mod profile;
pub mod reference;
pub mod remote;
pub mod run;
pub mod shapes;
pub mod tune;

use backend::Backend;
use clap::{Parser, Subcommand};
use compare::Tolerance;
use error::CliError;
use kiln_onnx::Model;
use manifest::Manifest;
use shapes::{ImportArgs, ShapeBinding};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Result of a command that completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything compared matched (or there was nothing to compare).
    Pass,
    /// Some comparison failed.
    Mismatch,
}

/// Kiln: a tensor compiler for edge CPUs.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `kiln` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a model and print its inputs, outputs, op histogram and parameter count.
    Inspect {
        /// The ONNX model file.
        model: PathBuf,
        #[command(flatten)]
        import: ImportArgs,
    },
    /// Run a model on `DIR/input_N.pb` and compare with `DIR/output_N.pb` where present.
    Run {
        /// The ONNX model file.
        model: PathBuf,
        /// Folder with `input_N.pb` (and optionally `output_N.pb`) files.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Execution backend.
        #[arg(long, value_enum, default_value = "jit")]
        backend: Backend,
        /// Write the outputs to `DIR/output_N.pb`.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Threads for parallel loops of the JIT (default: the number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// The target the JIT compiles for: `host`, or a built-in target or target .toml file
        /// that runs on this machine (e.g. `x86_64-linux-gnu-avx2` on an AVX-512 machine).
        #[arg(long, default_value = "host")]
        target: String,
        #[command(flatten)]
        tolerance: ToleranceArgs,
        #[command(flatten)]
        import: ImportArgs,
        #[command(flatten)]
        graph: GraphArgs,
    },
    /// Run every `DIR/*/model.onnx` on its `test_data_set_*` folders (ONNX backend test layout).
    Conformance {
        /// Folder of case folders.
        dir: PathBuf,
        /// Execution backend.
        #[arg(long, value_enum, default_value = "jit")]
        backend: Backend,
        /// Skip list: one case name per line followed by `# reason` (repeatable: the union of
        /// the lists is skipped).
        #[arg(long, value_name = "FILE")]
        manifest: Vec<PathBuf>,
        /// Only run cases whose name contains this.
        #[arg(long, value_name = "SUBSTR")]
        filter: Option<String>,
        /// Print every case, not only failures.
        #[arg(short, long)]
        verbose: bool,
        /// Cases run in parallel (default: the number of CPUs).
        #[arg(short, long)]
        jobs: Option<usize>,
        #[command(flatten)]
        tolerance: ToleranceArgs,
    },
    /// Compile a model with the JIT and time it: median and min latency, compile time, arena.
    Bench {
        /// The ONNX model file.
        model: PathBuf,
        /// Folder with `input_N.pb` files (default: deterministic synthetic inputs).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Threads for parallel loops (default: the number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed runs (after a few untimed warm-up runs).
        #[arg(long, default_value_t = 50)]
        iters: usize,
        /// The target to compile for: `host`, or a built-in target or target .toml file that
        /// runs on this machine (e.g. `x86_64-linux-gnu-avx2` on an AVX-512 machine, to time
        /// the code an AVX2 CPU would run).
        #[arg(long, default_value = "host")]
        target: String,
        /// Print one JSON object with `median_ms`, `min_ms`, `compile_ms`, `arena_bytes`.
        #[arg(long)]
        json: bool,
        /// Time every kernel call: per kernel its median time, share, GFLOP/s and % of this
        /// machine's peak, sorted.
        #[arg(long)]
        profile: bool,
        /// Write the profiled runs as a Chrome trace (chrome://tracing, Perfetto); implies
        /// `--profile`.
        #[arg(long, value_name = "FILE")]
        profile_json: Option<PathBuf>,
        /// Time the model on a remote device instead (compiled as a library for `--target`).
        #[command(flatten)]
        remote: remote::RemoteArgs,
        #[command(flatten)]
        import: ImportArgs,
        #[command(flatten)]
        graph: GraphArgs,
    },
    /// Compile a model into a self-contained native shared library with a C ABI.
    Compile {
        /// The ONNX model file.
        model: PathBuf,
        /// The shared library to write (e.g. `libmodel.so`).
        #[arg(short, long, value_name = "OUT.so")]
        out: PathBuf,
        /// A built-in target (see `kiln targets`), `host`, or the path of a target .toml file.
        #[arg(long, default_value = "host")]
        target: String,
        /// Also write the C header of the library's ABI, with this model's inputs and outputs.
        #[arg(long, value_name = "OUT.h")]
        header: Option<PathBuf>,
        /// Build a library whose code never uses threads (no pool, smaller).
        #[arg(long)]
        single_thread: bool,
        /// Name the exported functions NAME_model_run, NAME_model_create, ... instead of
        /// kiln_model_run, ... (and the header's declarations), so that the libraries of
        /// several models link into one program. A C identifier.
        #[arg(long, value_name = "NAME")]
        prefix: Option<String>,
        #[command(flatten)]
        import: ImportArgs,
        #[command(flatten)]
        graph: GraphArgs,
    },
    /// List the built-in compilation targets.
    Targets,
    /// Tune the model's kernels on this machine: measured candidates go to an append-only
    /// tuning log that `compile`, `run` and `bench` read with `--tuning-log`.
    Tune {
        /// The ONNX model file.
        model: PathBuf,
        /// Trials (measured candidates) for the model, counting those a resumed log holds.
        #[arg(long, default_value_t = 200)]
        trials: usize,
        /// The tuning log (JSON lines); its cost model is kept beside it as LOG.model.json.
        #[arg(long, value_name = "FILE")]
        log: PathBuf,
        /// The target to tune for (it must run on this machine, or be the remote devices').
        #[arg(long, default_value = "host")]
        target: String,
        /// Draw the tuning curve (best latency against trials, per task and for the model).
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Continue the log: its measurements are not repeated and count towards --trials.
        #[arg(long)]
        resume: bool,
        /// Threads the kernels are measured with.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Candidates measured per round.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Seed of the search.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Each timed repeat of a candidate lasts at least this long (three repeats).
        #[arg(long, default_value_t = 10.0)]
        repeat_ms: f64,
        /// A candidate that takes longer to build (schedule, lower, compile) is an error.
        #[arg(long, default_value_t = 20_000)]
        build_timeout_ms: u64,
        /// A candidate whose timing runs take longer is an error.
        #[arg(long, default_value_t = 10_000)]
        run_timeout_ms: u64,
        /// Bind an input's shape, e.g. `input=1,3,224,224` (repeatable).
        #[arg(long = "input-shape", value_name = "NAME=DIMS", value_parser = shapes::parse_binding)]
        input_shapes: Vec<ShapeBinding>,
        /// Tune the imported graph as it is, without e-graph rewriting.
        #[arg(long)]
        no_rewrite: bool,
        /// Activation layout of convolutions (as for compile).
        #[arg(long, value_enum, default_value = "auto")]
        layout: LayoutArg,
        /// Measure candidates on remote devices (built here for `--target`).
        #[command(flatten)]
        remote: remote::RemoteArgs,
        /// The pretrained latency model the search starts from and adapts to this device
        /// (default: the one shipped with Kiln, `schedules/tuned/cost-model.json`).
        #[arg(long, value_name = "FILE")]
        cost_model: Option<PathBuf>,
        /// Start without a pretrained model: learn only from this run's measurements.
        #[arg(long)]
        no_pretrained: bool,
        /// After the search, measure the N fastest schedules of each task again (twice, in
        /// turn with the default schedule), so that no schedule wins on one lucky measurement
        /// (0: off)
        #[arg(long, value_name = "N", default_value_t = 3)]
        confirm: usize,
        /// Whether kernels find their weights in cache when timed: `cold` rotates copies of
        /// them that exceed the last-level cache, as inside a model whose weights do not stay
        /// cached; `auto` is cold for models whose constants take more than a quarter of the
        /// last-level cache (local measurements only).
        #[arg(long, value_enum, default_value = "auto")]
        constant_cache: ConstantCacheArg,
        /// Measure first, in each task's first round, the schedules that won in these logs
        /// (for the same target, on other thread counts or CPUs; repeatable) instead of those
        /// of the shipped pre-tuned records.
        #[arg(long, value_name = "LOG")]
        seeds_from: Vec<PathBuf>,
        /// Do not seed the first rounds with schedules that won elsewhere.
        #[arg(long, conflicts_with = "seeds_from")]
        no_seeds: bool,
        /// After tuning, add the log's best record per workload and thread count to the
        /// pre-tuned records in DIR (`schedules/tuned/records` ships with Kiln).
        #[arg(long, value_name = "DIR")]
        export_pretuned: Option<PathBuf>,
    },
    /// Internal: measures tuning candidates sent on stdin (started by `kiln tune`).
    #[command(hide = true)]
    MeasureWorker,
    /// The device agent: a small C program serving remote measurements on a board.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Remote measurement sessions with device agents.
    #[command(subcommand)]
    Rpc(RpcCommand),
    /// Predict a model's latency without running it: per kernel and in total, with the
    /// schedules a compile would use, from the latency model and the device's probes.
    Predict {
        /// The ONNX model file.
        model: PathBuf,
        /// The target to predict for (see `kiln targets`).
        #[arg(long, default_value = "host")]
        target: String,
        /// Threads the model would run with (default: the number of CPUs, as for bench).
        #[arg(long)]
        threads: Option<usize>,
        /// The latency model (default: the one shipped with Kiln).
        #[arg(long, value_name = "FILE")]
        cost_model: Option<PathBuf>,
        /// The device's description from `kiln device --json` (default: probe this machine).
        #[arg(long, value_name = "FILE")]
        device: Option<PathBuf>,
        /// Print one JSON object (`total_ms`, and per kernel `ms`, `weight`, `schedule`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        import: ImportArgs,
        #[command(flatten)]
        graph: GraphArgs,
    },
    /// Latency models: learn one from tuning logs and score it on held-out workloads.
    #[command(subcommand)]
    CostModel(CostModelCommand),
    /// Describe a device as the tuner sees it: its target's register file, cores, clock and
    /// caches, and the latencies of a fixed set of probe kernels (here, or on a remote device).
    Device {
        /// The target the device runs (see `kiln targets`).
        #[arg(long, default_value = "host")]
        target: String,
        /// Threads the probes run with.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: remote::RemoteArgs,
    },
    /// Serve a pool of device agents: agents register under a device key and send heartbeats;
    /// clients (`kiln tune --tracker`, `kiln rpc status`) queue for leases by key and priority.
    Tracker {
        /// The address to listen on (port 0 picks a free one, printed on stdout).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: String,
        /// The file holding the pre-shared key of the pool (agents and clients use the same).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// How often agents send heartbeats; one silent for three periods is dropped.
        #[arg(long, default_value_t = 2000)]
        heartbeat_ms: u64,
    },
}

/// `kiln cost-model ...`.
#[derive(Debug, Subcommand)]
pub enum CostModelCommand {
    /// Train the latency model on tuning logs (records measured on this machine, for targets
    /// that run here; each device is probed once).
    Train {
        /// A tuning log (repeatable).
        #[arg(long = "log", value_name = "FILE", required = true)]
        logs: Vec<PathBuf>,
        /// A model the logs tuned (repeatable): their workloads are lowered again from it.
        #[arg(long = "model", value_name = "FILE.onnx", required = true)]
        models: Vec<PathBuf>,
        /// Where to save the trained model.
        #[arg(short, long, value_name = "FILE.json")]
        out: Option<PathBuf>,
        /// Score the model on whole held-out workloads first, with this many folds.
        #[arg(long, value_name = "FOLDS")]
        evaluate: Option<usize>,
        /// Write the training set as CSV (task, device, ms, then every feature by name).
        #[arg(long, value_name = "FILE.csv")]
        export_csv: Option<PathBuf>,
        /// Print the evaluation as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        import: ImportArgs,
        #[command(flatten)]
        graph: GraphArgs,
    },
}

/// `kiln agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Build the agent for a target with the target's C compiler (libcrypto linked in), to copy
    /// to the device and start there: `kiln-agent --listen ADDR:PORT --key-file FILE`.
    Build {
        /// A built-in target (see `kiln targets`), `host`, or a target .toml file.
        #[arg(long, default_value = "host")]
        target: String,
        /// The executable to write.
        #[arg(short, long, value_name = "PATH")]
        out: PathBuf,
    },
}

/// `kiln rpc ...`.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum RpcCommand {
    /// Compile the model for a target, time the library on an agent's device (upload, measure,
    /// delete) and print its latency; where the target runs here too, check its outputs.
    Bench {
        /// The ONNX model file.
        model: PathBuf,
        #[command(flatten)]
        remote: remote::RemoteArgs,
        /// The device's target (see `kiln targets`), or a target .toml file.
        #[arg(long, default_value = "host")]
        target: String,
        /// Threads of the model on the device (1: a single-threaded library).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Timings (each of as many calls as `--min-repeat-ms` needs).
        #[arg(long, default_value_t = 10)]
        repeat: u32,
        /// The shortest timing; shorter ones are redone with more calls.
        #[arg(long, default_value_t = 100)]
        min_repeat_ms: u32,
        /// Deadline of the connection, of every message and of the measurement, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        import: ImportArgs,
        #[command(flatten)]
        graph: GraphArgs,
    },
    /// Print a tracker's devices, leases and queue.
    Status {
        /// The tracker's address.
        #[arg(long, value_name = "HOST:PORT")]
        tracker: String,
        /// The file holding the pool's pre-shared key.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Connect to an agent and print what its device is (CPU, cores, caches, features).
    Info {
        /// The agent's address.
        #[arg(long, value_name = "HOST:PORT")]
        rpc: String,
        /// The file holding the pre-shared key the agent was started with.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// Deadline of the connection and of every message, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout_s: u64,
        /// Print the device description as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--no-rewrite` / `--dump-graph DIR`: the graph step before compiling.
#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// Compile the imported graph as it is, without e-graph rewriting (to compare).
    #[arg(long)]
    pub no_rewrite: bool,
    /// Write the graph before and after rewriting into DIR (IR text and Graphviz dot).
    #[arg(long, value_name = "DIR")]
    pub dump_graph: Option<PathBuf>,
    /// Activation layout of convolutions: chosen by the cost model, kept NCHW, or channels-last
    /// wherever possible.
    #[arg(long, value_enum, default_value = "auto")]
    pub layout: LayoutArg,
    /// Use the fastest schedules this tuning log (from `kiln tune`) holds for the target
    /// (instead of the pre-tuned records shipped with Kiln).
    #[arg(long, value_name = "FILE")]
    pub tuning_log: Option<PathBuf>,
    /// Ignore the pre-tuned records shipped with Kiln (`schedules/tuned/records/`): default
    /// schedules wherever no --tuning-log says otherwise.
    #[arg(long)]
    pub no_pretuned: bool,
}

/// `--layout`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LayoutArg {
    Auto,
    Nchw,
    Nhwc,
}

/// `--constant-cache`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ConstantCacheArg {
    Auto,
    Warm,
    Cold,
}

impl ConstantCacheArg {
    fn get(self) -> kiln_tune::cache::ConstantCache {
        use kiln_tune::cache::ConstantCache;
        match self {
            ConstantCacheArg::Auto => ConstantCache::Auto,
            ConstantCacheArg::Warm => ConstantCache::Warm,
            ConstantCacheArg::Cold => ConstantCache::Cold,
        }
    }
}

impl LayoutArg {
    fn name(self) -> &'static str {
        match self {
            LayoutArg::Auto => "auto",
            LayoutArg::Nchw => "nchw",
            LayoutArg::Nhwc => "nhwc",
        }
    }
}

impl GraphArgs {
    pub fn get(&self) -> kiln::GraphOptions {
        let mut options = kiln::GraphOptions {
            rewrite: !self.no_rewrite,
            dump_dir: self.dump_graph.clone(),
            ..kiln::GraphOptions::default()
        };
        options.limits.layout = match self.layout {
            LayoutArg::Auto => kiln::LayoutChoice::Auto,
            LayoutArg::Nchw => kiln::LayoutChoice::Nchw,
            LayoutArg::Nhwc => kiln::LayoutChoice::Nhwc,
        };
        options
    }

    /// The tuned schedules of `--tuning-log` for `target`, measured with `threads` threads
    /// (any count when `None`); without the option, the shipped pre-tuned records for them
    /// (none with `--no-pretuned`). Says which on stderr.
    pub fn schedules(
        &self,
        target: &str,
        threads: Option<usize>,
    ) -> Result<kiln::TunedSchedules, CliError> {
        self.schedules_noting(target, threads, &mut tune::note_on_stderr)
    }

    /// [`Self::schedules`], telling `note` which schedules apply.
    pub fn schedules_noting(
        &self,
        target: &str,
        threads: Option<usize>,
        note: &mut dyn FnMut(String),
    ) -> Result<kiln::TunedSchedules, CliError> {
        match &self.tuning_log {
            Some(log) => tune::schedules_from_log(log, target, threads, note),
            None if self.no_pretuned => Ok(kiln::TunedSchedules::default()),
            None => Ok(tune::pretuned_schedules(target, threads, note)),
        }
    }

    /// The log whose records schedule the kernels (as [`Self::schedules`] chooses).
    pub fn schedule_log(
        &self,
        target: &str,
        threads: Option<usize>,
    ) -> Result<Option<kiln_tune::LogContents>, CliError> {
        match &self.tuning_log {
            Some(log) => Ok(Some(
                kiln_tune::read_log(log).map_err(|e| CliError::Tune(Box::new(e.into())))?,
            )),
            None if self.no_pretuned => Ok(None),
            None => Ok(kiln::Target::named(target).ok().map(|t| {
                kiln_tune::pretrained::records(&t, threads, &kiln_tune::pretrained::host_cpu())
            })),
        }
    }
}

/// `--rtol` / `--atol`: an element matches when `|a - b| <= atol + rtol * |b|`.
#[derive(Debug, clap::Args)]
pub struct ToleranceArgs {
    /// Relative tolerance [default: 1e-3].
    #[arg(long)]
    pub rtol: Option<f64>,
    /// Absolute tolerance [default: 1e-4 for `run`, 1e-5 for `conformance`].
    #[arg(long)]
    pub atol: Option<f64>,
}

impl ToleranceArgs {
    fn get(&self, default: Tolerance) -> Result<Tolerance, CliError> {
        let t = Tolerance {
            rtol: self.rtol.unwrap_or(default.rtol),
            atol: self.atol.unwrap_or(default.atol),
        };
        if !(t.rtol >= 0.0 && t.atol >= 0.0) {
            return Err(CliError::Usage(
                "--rtol and --atol must be non-negative numbers".into(),
            ));
        }
        Ok(t)
    }
}

/// The manifest used when `--manifest` is not given (relative to the working directory).
pub const DEFAULT_MANIFEST: &str = "tests/conformance/skip.txt";

/// Imports a model file with the given import arguments.
pub fn load(path: &Path, import: &ImportArgs) -> Result<Model, CliError> {
    let mut options = shapes::to_options(&import.input_shapes)?;
    options.int8_numerics = import.int8_numerics.into();
    if !path.is_file() {
        return Err(CliError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    kiln_onnx::load_model(path, &options).map_err(|source| CliError::Import {
        path: path.to_path_buf(),
        source,
    })
}

/// The number of CPUs (the default thread count).
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Executes a parsed command line.
pub fn execute(cli: Cli) -> Result<Outcome, CliError> {
    match cli.command {
        Command::Inspect { model, import } => {
            inspect::inspect(&model, &import).map(|()| Outcome::Pass)
        }
        Command::Run {
            model,
            data,
            backend,
            out,
            threads,
            target,
            tolerance,
            import,
            graph,
        } => {
            let threads = threads.unwrap_or_else(cpus);
            if threads == 0 {
                return Err(CliError::Usage("--threads must be positive".into()));
            }
            run::run(&run::RunRequest {
                model,
                data,
                backend,
                out,
                threads,
                tolerance: tolerance.get(Tolerance::RUN)?,
                import,
                schedules: graph.schedules(&target, Some(threads))?,
                target,
                graph: graph.get(),
            })
        }
        Command::Conformance {
            dir,
            backend,
            manifest,
            filter,
            verbose,
            jobs,
            tolerance,
        } => {
            let manifest = match manifest.as_slice() {
                [] if Path::new(DEFAULT_MANIFEST).is_file() => {
                    Manifest::load(Path::new(DEFAULT_MANIFEST))?
                }
                [] => {
                    eprintln!("note: no {DEFAULT_MANIFEST} here; nothing is skipped");
                    Manifest::default()
                }
                paths => {
                    let mut all = Manifest::default();
                    for path in paths {
                        all.skips.extend(Manifest::load(path)?.skips);
                    }
                    all
                }
            };
            let jobs = match jobs {
                Some(0) => return Err(CliError::Usage("--jobs must be at least 1".into())),
                Some(j) => j,
                None => cpus(),
            };
            conformance::conformance(&conformance::ConformanceRequest {
                dir,
                backend,
                manifest,
                filter,
                verbose,
                jobs,
                tolerance: tolerance.get(Tolerance::CONFORMANCE)?,
            })
        }
        Command::Bench {
            model,
            data,
            threads,
            iters,
            target,
            json,
            profile,
            profile_json,
            remote,
            import,
            graph,
        } => {
            if remote.is_remote() {
                if profile || profile_json.is_some() || data.is_some() {
                    return Err(CliError::Usage(
                        "--profile, --profile-json and --data time on this machine only".into(),
                    ));
                }
                return remote::bench(&remote::RemoteBench {
                    model,
                    remote,
                    target,
                    threads: threads.unwrap_or(1),
                    repeat: iters.clamp(1, 64) as u32,
                    min_repeat_ms: 100,
                    timeout_s: 60,
                    json,
                    import,
                    tuning_log: graph.tuning_log.clone(),
                    graph: graph.get(),
                })
                .map(|()| Outcome::Pass);
            }
            let threads = threads.unwrap_or_else(cpus);
            let req = bench::BenchRequest {
                model,
                data,
                threads,
                iters,
                json,
                profile,
                profile_json,
                import,
                schedules: graph.schedules(&target, Some(threads))?,
                target,
                graph: graph.get(),
            };
            bench::print(&bench::bench(&req)?, json);
            Ok(Outcome::Pass)
        }
        Command::Compile {
            model,
            out,
            target,
            header,
            single_thread,
            prefix,
            import,
            graph,
        } => compile::compile(&compile::CompileRequest {
            // A single-threaded library takes records measured on one thread; a parallel
            // one, whose pool size is chosen when it runs, the fastest of any thread count.
            schedules: graph.schedules(&target, single_thread.then_some(1))?,
            model,
            out,
            target,
            header,
            single_thread,
            prefix,
            import,
            graph: graph.get(),
        })
        .map(|()| Outcome::Pass),
        Command::Targets => {
            compile::targets();
            Ok(Outcome::Pass)
        }
        Command::Tune {
            model,
            trials,
            log,
            target,
            plot,
            resume,
            threads,
            batch,
            seed,
            repeat_ms,
            build_timeout_ms,
            run_timeout_ms,
            input_shapes,
            no_rewrite,
            layout,
            remote,
            cost_model,
            no_pretrained,
            export_pretuned,
            confirm,
            constant_cache,
            seeds_from,
            no_seeds,
        } => tune::tune(&tune::TuneRequest {
            seeds_from,
            no_seeds,
            confirm,
            constant_cache: constant_cache.get(),
            remote,
            cost_model,
            no_pretrained,
            export_pretuned,
            repeat_ms,
            build_timeout_ms,
            run_timeout_ms,
            model,
            log,
            trials,
            target,
            plot,
            resume,
            threads,
            batch,
            seed,
            input_shapes,
            rewrite: !no_rewrite,
            layout: layout.name().to_string(),
        })
        .map(|()| Outcome::Pass),
        Command::MeasureWorker => tune::measure_worker().map(|()| Outcome::Pass),
        Command::Agent(AgentCommand::Build { target, out }) => {
            remote::build_agent(&target, &out).map(|()| Outcome::Pass)
        }
        Command::Rpc(RpcCommand::Bench {
            model,
            remote,
            target,
            threads,
            repeat,
            min_repeat_ms,
            timeout_s,
            json,
            import,
            graph,
        }) => remote::bench(&remote::RemoteBench {
            model,
            remote,
            target,
            threads,
            repeat,
            min_repeat_ms,
            timeout_s,
            json,
            import,
            tuning_log: graph.tuning_log.clone(),
            graph: graph.get(),
        })
        .map(|()| Outcome::Pass),
        Command::Rpc(RpcCommand::Info {
            rpc,
            key_file,
            timeout_s,
            json,
        }) => remote::info(&rpc, &key_file, timeout_s, json).map(|()| Outcome::Pass),
        Command::Rpc(RpcCommand::Status {
            tracker,
            key_file,
            json,
        }) => remote::status(&tracker, &key_file, json).map(|()| Outcome::Pass),
        Command::Predict {
            model,
            target,
            threads,
            cost_model,
            device,
            json,
            import,
            graph,
        } => {
            let threads = threads.unwrap_or_else(cpus);
            predict::predict(&predict::PredictRequest {
                log: graph.schedule_log(&target, Some(threads))?,
                model,
                target,
                threads,
                cost_model,
                device,
                json,
                import,
                graph: graph.get(),
            })
            .map(|()| Outcome::Pass)
        }
        Command::CostModel(CostModelCommand::Train {
            logs,
            models,
            out,
            evaluate,
            export_csv,
            json,
            import,
            graph,
        }) => predict::train(&predict::TrainRequest {
            logs,
            models,
            out,
            evaluate,
            export_csv,
            json,
            import,
            graph: graph.get(),
        })
        .map(|()| Outcome::Pass),
        Command::Device {
            target,
            threads,
            json,
            remote,
        } => device::describe(&target, threads, &remote, json).map(|()| Outcome::Pass),
        Command::Tracker {
            listen,
            key_file,
            heartbeat_ms,
        } => remote::tracker(&listen, &key_file, heartbeat_ms).map(|()| Outcome::Pass),
    }
}

/// The whole program: parse arguments, run, report, and map the result to the exit code.
pub fn main() -> ExitCode {
    panic_guard::install_hook();
    // Usage errors (and --help / --version) exit through clap: code 2 for errors, 0 otherwise.
    let cli = Cli::parse();
    match panic_guard::catch(|| execute(cli)) {
        Ok(Ok(Outcome::Pass)) => ExitCode::SUCCESS,
        Ok(Ok(Outcome::Mismatch)) => ExitCode::from(1),
        Ok(Err(e)) => {
            eprintln!("error: {}", error::one_line(&e));
            ExitCode::from(2)
        }
        Err(panic) => {
            eprintln!("error: internal error (a bug in kiln): {panic}");
            ExitCode::from(101)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_run_defaults() {
        let cli = Cli::try_parse_from(["kiln", "run", "m.onnx", "--data", "d"]).unwrap();
        match cli.command {
            Command::Run {
                backend,
                out,
                tolerance,
                ..
            } => {
                assert_eq!(backend, Backend::Jit);
                assert!(out.is_none());
                assert_eq!(tolerance.get(Tolerance::RUN).unwrap(), Tolerance::RUN);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        for args in [
            &["kiln", "run", "m.onnx"][..],
            &["kiln", "run", "m.onnx", "--data", "d", "--backend", "gpu"],
            &["kiln", "inspect", "m.onnx", "--input-shape", "x"],
            &["kiln", "frobnicate"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }
}
