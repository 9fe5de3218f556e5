//! Execution backends selectable with `--backend`.
//!
//! Invariant: every backend takes a verified graph and one tensor per graph input, and returns one
//! tensor per graph output or a [`BackendError`]; adding a backend means adding a [`Backend`]
//! variant and its arm in [`Backend::run`], nothing else in the CLI changes.

use kiln_ir::{Graph, Tensor};

/// A way to execute a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Compiled to native code with Cranelift and run in process (the default).
    Jit,
    /// The reference interpreter: slow, simple, the oracle for every other backend.
    Reference,
}

/// How compiled backends build and run a graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// Threads compiled code may use (0: the number of CPUs).
    pub threads: usize,
    /// Graph rewriting and dumps before compiling (the reference backend runs the imported graph
    /// as it is).
    pub graph: kiln::GraphOptions,
    /// Tuned schedules (`--tuning-log`).
    pub schedules: kiln::TunedSchedules,
    /// The target compiled backends compile for (`None`: the host); it must run here.
    pub target: Option<kiln::Target>,
}

impl ExecOptions {
    /// `threads` threads, default graph options (rewriting on), the host.
    pub fn threads(threads: usize) -> ExecOptions {
        ExecOptions {
            threads,
            graph: kiln::GraphOptions::default(),
            schedules: kiln::TunedSchedules::default(),
            target: None,
        }
    }
}

/// Why a backend could not run a graph.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Reference(#[from] kiln_reference::ReferenceError),
    #[error(transparent)]
    Compile(#[from] kiln::CompileError),
    #[error(transparent)]
    Run(#[from] kiln::RunError),
}

impl Backend {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Jit => "jit",
            Backend::Reference => "reference",
        }
    }

    /// Runs `graph` on `inputs` as `exec` says.
    pub fn run(
        self,
        graph: &Graph,
        inputs: &[Tensor],
        exec: &ExecOptions,
    ) -> Result<Vec<Tensor>, BackendError> {
        match self {
            Backend::Jit => {
                let threads = match exec.threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n,
                };
                let target = exec.target.clone().unwrap_or_else(kiln::Target::host);
                let compiled = kiln::Compiler::new(target)
                    .with_options(kiln::CompileOptions {
                        threads,
                        graph: exec.graph.clone(),
                        schedules: exec.schedules.clone(),
                        profile: false,
                    })
                    .compile(graph)?;
                Ok(compiled.run(inputs)?)
            }
            Backend::Reference => Ok(kiln_reference::run(graph, inputs)?),
        }
    }
}
