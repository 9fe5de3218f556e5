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

    /// Runs `graph` on `inputs`; `threads` is the parallelism compiled code may use.
    pub fn run(
        self,
        graph: &Graph,
        inputs: &[Tensor],
        threads: usize,
    ) -> Result<Vec<Tensor>, BackendError> {
        match self {
            Backend::Jit => {
                let compiled = kiln::Compiler::new(kiln::Target::host())
                    .with_options(kiln::CompileOptions { threads })
                    .compile(graph)?;
                Ok(compiled.run(inputs)?)
            }
            Backend::Reference => Ok(kiln_reference::run(graph, inputs)?),
        }
    }
}
