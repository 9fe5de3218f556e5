//! Execution backends selectable with `--backend`.
//!
//! Invariant: every backend takes a verified graph and one tensor per graph input, and returns one
//! tensor per graph output or a [`BackendError`]; adding a backend means adding a [`Backend`]
//! variant and its arm in [`Backend::run`], nothing else in the CLI changes.

use kiln_ir::{Graph, Tensor};

/// A way to execute a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The reference interpreter: slow, simple, the oracle for every other backend.
    Reference,
}

/// Why a backend could not run a graph.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Reference(#[from] kiln_reference::ReferenceError),
}

impl Backend {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Reference => "reference",
        }
    }

    /// Runs `graph` on `inputs`.
    pub fn run(self, graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        match self {
            Backend::Reference => Ok(kiln_reference::run(graph, inputs)?),
        }
    }
}
