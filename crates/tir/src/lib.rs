//! Kiln's loop-level tensor IR (TIR), modelled on TVM's Tensor Expression design.
//!
//! A fused group of graph ops is described as a [`ComputeDag`] (placeholders plus compute stages
//! written as index expressions), scheduled by replaying a [`Trace`] of serialisable
//! [`Instruction`]s into a [`Schedule`], and lowered by [`lower`] to a [`PrimFunc`]: explicit loop
//! nests over declared buffers. [`verify`] checks a `PrimFunc`, [`interp::run`] executes it and
//! the text form (`Display` / [`parse_func`]) prints and reads it back.
//!
//! Invariant: every `PrimFunc` that [`lower`] returns passes [`verify`], and for every legal
//! schedule it computes the same values as the naive schedule of the same DAG (up to the order
//! of floating-point reductions when a reduction loop is reordered).

mod affine;
pub mod compute;
mod erf;
pub mod expr;
pub mod interp;
pub mod lower;
pub mod math;
pub mod schedule;
pub mod stmt;
pub mod tensorize;
pub mod text;
pub mod tir;
pub mod verify;

pub use affine::{linear_stride, var_stride};
pub use compute::{Axis, ComputeDag, DagError, DagTensor, ReduceKind, Reduction, Stage};
pub use erf::erf64;
pub use expr::{BinOp, BufferId, CmpOp, Expr, Intrinsic, TypeError, VarId};
pub use lower::{lower, lower_naive, LowerError};
pub use schedule::{
    Attach, Instruction, IterKind, LoopInfo, Pack, Schedule, ScheduleError, StageSchedule, Trace,
};
pub use stmt::{ForKind, Stmt, TensorIntrinsic};
pub use tensorize::{
    Access, Contraction, ContractionKind, Epilogue, IntContraction, Scalar, TensorizeError,
};
pub use text::{parse_func, ParseError};
pub use tir::{BufferDecl, PrimFunc, Scope};
pub use verify::{verify, Bounds, Interval, VerifyError};
