//! Errors raised while building, verifying or parsing a graph.

use crate::{DType, NodeId, ValueId};

/// Everything that can be wrong with a graph or its text form.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum IrError {
    /// An op was given operands whose types it does not accept.
    #[error("{op}: {reason}")]
    Type { op: String, reason: String },
    /// A tensor would be larger than Kiln will ever allocate.
    #[error("tensor of shape {shape:?} and dtype {dtype} is too large ({reason})")]
    TooLarge {
        shape: Vec<usize>,
        dtype: DType,
        reason: String,
    },
    /// A reference to a value that does not exist or is not yet defined.
    #[error("value {0} is used before it is defined or does not exist")]
    UndefinedValue(ValueId),
    /// A node whose recorded type disagrees with what its op infers.
    #[error("node {node} ({name}): recorded type {recorded} but the op infers {inferred}")]
    TypeMismatch {
        node: NodeId,
        name: String,
        recorded: String,
        inferred: String,
    },
    /// Any other structural problem.
    #[error("invalid graph: {0}")]
    Invalid(String),
    /// The text form could not be parsed.
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
}

impl IrError {
    /// Shorthand for a type error of `op`.
    pub fn ty(op: impl Into<String>, reason: impl Into<String>) -> Self {
        IrError::Type {
            op: op.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = IrError> = std::result::Result<T, E>;
