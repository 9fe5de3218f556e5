//! Compute definitions: every graph op (except `Const`) as stage(s) of a [`kiln_tir::ComputeDag`].
//!
//! Invariant: [`define`] adds stages whose last one has exactly the type
//! [`kiln_ir::infer_type`] derives for the op, and which compute, element for element, what
//! [`crate::evaluate`] computes (integers exactly; floats up to the documented rounding of
//! reordered or f32-instead-of-f64 accumulation), for every input on which `evaluate` succeeds.
//! Loads of data-dependent indices (gather, table, resize tables) are guarded by `select`s, so
//! an index `evaluate` rejects reads the fill value (0) instead of failing.
//!
//! Conventions shared by the family modules:
//! * operands are DAG tensors ([`Operand`]); broadcasting loads index 0 along size-1 dims;
//! * f16 results are rounded explicitly (`cast(f16, ..)`) after every op, because the TIR
//!   interpreter keeps f16 expressions in f32 until a store; f16 convolutions, matmuls, pools
//!   and sums accumulate in an f32 stage followed by one rounding stage, like the reference;
//! * tables computed at definition time (resize indices and weights, pool divisors, per-channel
//!   rescale parameters) become extra placeholders bound to [`Builder::tables`];
//! * stages in [`Builder::keep`] must not be inlined by a schedule (inlining them would
//!   duplicate large expressions).

mod conv;
mod elementwise;
pub(crate) mod expr;
mod matmul;
mod movement;
mod pool;
mod quant;
mod reduce;
mod resize;

use kiln_ir::{DType, Op, Tensor, TensorType};
use kiln_tir::{BufferId, ComputeDag, DagError, Expr, ReduceKind};
use std::collections::BTreeSet;

/// Why an op could not be defined.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error(transparent)]
    Ir(#[from] kiln_ir::IrError),
    #[error(transparent)]
    Dag(#[from] DagError),
    #[error("{op}: {reason}")]
    Unsupported { op: String, reason: String },
}

pub(crate) fn unsupported(op: &Op, reason: impl Into<String>) -> ComputeError {
    ComputeError::Unsupported {
        op: op.name().to_string(),
        reason: reason.into(),
    }
}

/// An operand of an op: a DAG tensor with its graph type, and its value when it is a constant.
#[derive(Clone, Debug)]
pub struct Operand {
    pub id: BufferId,
    pub ty: TensorType,
    /// The operand's value when it is a weight (shared with the graph, not copied).
    pub constant: Option<std::sync::Arc<Tensor>>,
}

/// Builds one [`ComputeDag`] from several op definitions, with fresh stage names.
#[derive(Debug, Default)]
pub struct Builder {
    dag: ComputeDag,
    tables: Vec<(BufferId, Tensor)>,
    keep: BTreeSet<BufferId>,
    prefix: String,
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        Builder::default()
    }

    /// The DAG built so far.
    pub fn dag(&self) -> &ComputeDag {
        &self.dag
    }

    /// Definition-time constant tables: placeholders and their values.
    pub fn tables(&self) -> &[(BufferId, Tensor)] {
        &self.tables
    }

    /// Stages a schedule must not inline.
    pub fn keep(&self) -> &BTreeSet<BufferId> {
        &self.keep
    }

    /// The parts: DAG, tables, stages not to inline.
    pub fn into_parts(self) -> (ComputeDag, Vec<(BufferId, Tensor)>, BTreeSet<BufferId>) {
        (self.dag, self.tables, self.keep)
    }

    /// Sets the prefix of the names of the stages added next (sanitised to an identifier).
    pub fn set_prefix(&mut self, prefix: &str) {
        self.prefix = sanitize(prefix);
    }

    /// A name starting with the prefix that no tensor has yet.
    fn fresh(&self, what: &str) -> String {
        let base = if self.prefix.is_empty() {
            sanitize(what)
        } else {
            format!("{}_{}", self.prefix, sanitize(what))
        };
        if self.dag.find(&base).is_none() {
            return base;
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| self.dag.find(n).is_none())
            .unwrap_or(base)
    }

    /// Adds an input placeholder.
    pub fn placeholder(&mut self, name: &str, ty: &TensorType) -> Result<BufferId, ComputeError> {
        let name = self.fresh(name);
        Ok(self.dag.placeholder(&name, ty.dtype, &ty.shape)?)
    }

    /// Adds a definition-time constant table.
    pub(crate) fn table(&mut self, what: &str, t: Tensor) -> Result<BufferId, ComputeError> {
        let name = self.fresh(what);
        let id = self.dag.placeholder(&name, t.dtype(), t.shape())?;
        self.dag.mark_constant(id);
        self.tables.push((id, t));
        Ok(id)
    }

    /// Marks placeholder `id` as bound to a constant (see `kiln_tir::DagTensor::constant`).
    pub fn mark_constant(&mut self, id: BufferId) {
        self.dag.mark_constant(id);
    }

    /// Adds an elementwise-style stage.
    pub(crate) fn stage(
        &mut self,
        what: &str,
        shape: &[usize],
        body: impl FnOnce(&[Expr]) -> Expr,
    ) -> Result<BufferId, ComputeError> {
        let name = self.fresh(what);
        Ok(self.dag.compute(&name, shape, body)?)
    }

    /// Adds a reduction stage.
    pub(crate) fn reduce(
        &mut self,
        what: &str,
        shape: &[usize],
        reduce_axes: &[(&str, usize)],
        kind: ReduceKind,
        body: impl FnOnce(&[Expr], &[Expr]) -> Expr,
    ) -> Result<BufferId, ComputeError> {
        let name = self.fresh(what);
        Ok(self
            .dag
            .compute_reduce(&name, shape, reduce_axes, kind, body)?)
    }

    /// Makes the f32 sum of products `id` one `fma` chain (see
    /// [`kiln_tir::Reduction::fused_multiply_add`]).
    pub(crate) fn fuse_multiply_add(&mut self, id: BufferId) -> Result<(), ComputeError> {
        Ok(self.dag.fuse_multiply_add(id)?)
    }

    /// Marks a stage as not to be inlined.
    pub(crate) fn keep_stage(&mut self, id: BufferId) {
        self.keep.insert(id);
    }

    /// Rounds to f16 by an extra stage when `dtype` is f16 (accumulations run in f32).
    pub(crate) fn finish_f32(
        &mut self,
        acc: BufferId,
        dtype: DType,
        shape: &[usize],
    ) -> Result<BufferId, ComputeError> {
        if matches!(dtype, DType::F32 | DType::F64) || !dtype.is_float() {
            return Ok(acc);
        }
        self.stage("round", shape, |ax| {
            Expr::cast(dtype, Expr::load(acc, ax.to_vec()))
        })
    }
}

/// An identifier made of `name`'s letters, digits and `_` (others become `_`).
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, 't');
    }
    if s.starts_with("inf") || s.starts_with("nan") || s == "true" || s == "false" {
        s.insert(0, 't');
    }
    s
}

/// Adds `op` applied to `inputs` to the builder; returns the stage holding the op's result.
///
/// The result has exactly the type `infer_type` derives (checked).
pub fn define(b: &mut Builder, op: &Op, inputs: &[Operand]) -> Result<BufferId, ComputeError> {
    let types: Vec<&TensorType> = inputs.iter().map(|o| &o.ty).collect();
    let out = kiln_ir::infer_type(op, &types)?;
    for (i, o) in inputs.iter().enumerate() {
        let t = b
            .dag
            .tensor(o.id)
            .ok_or_else(|| unsupported(op, format!("operand {i} is not a DAG tensor")))?;
        if t.dtype != o.ty.dtype || t.shape != o.ty.shape {
            return Err(unsupported(
                op,
                format!(
                    "operand {i} is declared {} but the DAG tensor differs",
                    o.ty
                ),
            ));
        }
    }
    if out.num_elements() == 0 {
        return Err(unsupported(op, "empty results have no loop nest"));
    }
    let id = match op {
        Op::Const(_) => {
            return Err(unsupported(
                op,
                "constants are placeholders bound to weights, not stages",
            ))
        }
        Op::Identity
        | Op::Unary(_)
        | Op::Binary(_)
        | Op::Clamp { .. }
        | Op::Select
        | Op::MulAdd
        | Op::Cast { .. } => elementwise::define(b, op, inputs, &out)?,
        Op::Conv2d(_) | Op::DepthwiseConv2d(_) | Op::TransposeConv2d(_) => {
            conv::define(b, op, inputs, &out)?
        }
        Op::MatMul(a) => matmul::define(b, a, inputs, &out)?,
        Op::AvgPool2d(_) | Op::MaxPool2d(_) => pool::define(b, op, inputs, &out)?,
        Op::ArgMax { .. } | Op::Reduce { .. } => reduce::define(b, op, inputs, &out)?,
        Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Concat { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Tile { .. }
        | Op::Reverse { .. }
        | Op::Gather { .. }
        | Op::GatherElements { .. } => movement::define(b, op, inputs, &out)?,
        Op::Rescale(_) | Op::Table => quant::define(b, op, inputs, &out)?,
        Op::Resize(r) => resize::define(b, r, inputs, &out)?,
    };
    let t = b
        .dag
        .tensor(id)
        .ok_or_else(|| unsupported(op, "definition returned no tensor"))?;
    if t.dtype != out.dtype || t.shape != out.shape {
        return Err(unsupported(
            op,
            format!(
                "internal: definition gives {}{:?}, the type rule {}",
                t.dtype, t.shape, out
            ),
        ));
    }
    Ok(id)
}

/// A DAG of the single op `op` over placeholders `x0, x1, ...` of types `inputs`: returns the
/// builder and the result stage. Constant operands may be given to definitions that need them.
pub fn single_op(
    op: &Op,
    inputs: &[TensorType],
    constants: &[Option<Tensor>],
) -> Result<(Builder, BufferId), ComputeError> {
    let mut b = Builder::new();
    let mut ops = Vec::with_capacity(inputs.len());
    for (i, ty) in inputs.iter().enumerate() {
        let id = b.placeholder(&format!("x{i}"), ty)?;
        ops.push(Operand {
            id,
            ty: ty.clone(),
            constant: constants.get(i).cloned().flatten().map(std::sync::Arc::new),
        });
    }
    b.set_prefix(op.name());
    let out = define(&mut b, op, &ops)?;
    Ok((b, out))
}
