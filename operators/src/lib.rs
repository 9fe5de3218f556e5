//! Kiln's operator library: the reference semantics of every graph op, one module per op family.
//!
//! Invariant: [`evaluate`] computes exactly the semantics documented on [`kiln_ir::Op`], for every
//! dtype the op's type rule accepts, and returns an error (never panics) for anything else.

use kiln_ir::{Op, Tensor};

/// Why an op could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The operands do not fit the op (the graph was not verified).
    #[error(transparent)]
    Ir(#[from] kiln_ir::IrError),
    /// The op or dtype combination has no reference implementation.
    #[error("{op}: {reason}")]
    Unsupported { op: String, reason: String },
}

/// Evaluates `op` on `inputs`. [`Op::Const`] is resolved by the caller, not here.
pub fn evaluate(op: &Op, inputs: &[&Tensor]) -> Result<Tensor, OpError> {
    let _ = inputs;
    Err(OpError::Unsupported {
        op: op.name().into(),
        reason: "not implemented yet".into(),
    })
}
