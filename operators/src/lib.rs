//! Kiln's operator library: the reference semantics of every graph op, one module per op family.
//!
//! Invariant: [`evaluate`] computes exactly the semantics documented on [`kiln_ir::Op`], for every
//! dtype the op's type rule accepts, and returns an error (never panics) for anything else. Every
//! kernel runs only after [`kiln_ir::infer_type`] accepted its operands, and its result always has
//! the type that rule derives.
//!
//! The compile path lives here too: [`compute`] defines every op as TIR compute stages with the
//! same semantics, [`fusion`] partitions a graph into groups, [`schedule`] gives each op class
//! its default schedule and [`kernel::lower_graph`] turns a graph into lowered kernels.

pub mod collapse;
pub mod compute;
mod conv;
mod elementwise;
pub mod fusion;
pub mod kernel;
mod matmul;
mod movement;
pub mod placement;
mod pool;
mod quant;
mod reduce;
mod resize;
/// The schedule library (default schedules and the tuner's search space), re-exported.
pub use kiln_schedules as schedule;
mod util;

use kiln_ir::{Op, Tensor, TensorType};

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

/// A pool over a channels-last tensor: the NCHW pool of the transposed input, transposed back
/// (the values are the same; only the axis order differs).
fn pool_in_layout(op: &Op, p: &kiln_ir::op::PoolAttrs, x: &Tensor) -> Result<Tensor, OpError> {
    let nchw = kiln_ir::op::PoolAttrs {
        layout: kiln_ir::op::DataLayout::Nchw,
        ..p.clone()
    };
    let inner = match op {
        Op::AvgPool2d(_) => Op::AvgPool2d(nchw),
        _ => Op::MaxPool2d(nchw),
    };
    let x = evaluate(
        &Op::Transpose {
            perm: p.layout.to_nchw().to_vec(),
        },
        &[x],
    )?;
    let y = evaluate(&inner, &[&x])?;
    evaluate(
        &Op::Transpose {
            perm: p.layout.from_nchw().to_vec(),
        },
        &[&y],
    )
}

/// Evaluates `op` on `inputs`. [`Op::Const`] is resolved by the caller, not here.
///
/// Data-dependent failures (an out-of-range gather index) are reported as
/// [`OpError::Unsupported`] naming the op; integer division by zero yields 0 (see
/// [`kiln_ir::op::BinaryOp::Div`]).
pub fn evaluate(op: &Op, inputs: &[&Tensor]) -> Result<Tensor, OpError> {
    if let Op::Const(_) = op {
        return Err(util::fail(op, "constants are resolved by the caller"));
    }
    let types: Vec<&TensorType> = inputs.iter().map(|t| t.ty()).collect();
    let out = kiln_ir::infer_type(op, &types)?;
    let data = match op {
        Op::Const(_) => return Err(util::fail(op, "constants are resolved by the caller")),
        Op::Identity => inputs[0].data().clone(),
        Op::Unary(u) => elementwise::unary(*u, inputs[0])?,
        Op::Binary(b) => elementwise::binary(*b, inputs[0], inputs[1], &out.shape)?,
        Op::Clamp { min, max } => elementwise::clamp(inputs[0], min.0, max.0),
        Op::Select => elementwise::select(inputs[0], inputs[1], inputs[2], &out.shape)?,
        Op::MulAdd => elementwise::mul_add(inputs[0], inputs[1], inputs[2], &out.shape)?,
        Op::Cast { to } => elementwise::cast(inputs[0].data(), *to),
        Op::Conv2d(a) => conv::conv2d(a, inputs[0], inputs[1], inputs[2], &out, false)?,
        Op::DepthwiseConv2d(a) => conv::conv2d(a, inputs[0], inputs[1], inputs[2], &out, true)?,
        Op::TransposeConv2d(a) => conv::transpose_conv2d(a, inputs[0], inputs[1], inputs[2], &out)?,
        Op::MatMul(a) => matmul::matmul(a, inputs[0], inputs[1], &out)?,
        Op::AvgPool2d(p) | Op::MaxPool2d(p) if !p.layout.is_nchw() => {
            return pool_in_layout(op, p, inputs[0]);
        }
        Op::AvgPool2d(p) => pool::avg_pool(p, inputs[0], &out)?,
        Op::MaxPool2d(p) => pool::max_pool(p, inputs[0], &out)?,
        Op::ArgMax { axis } => reduce::argmax(inputs[0], *axis),
        Op::Reduce { kind, axis } => reduce::reduce(*kind, inputs[0], *axis)?,
        Op::Reshape { .. } => inputs[0].data().clone(),
        Op::Transpose { perm } => movement::transpose(inputs[0], perm),
        Op::Concat { axis } => movement::concat(inputs, *axis)?,
        Op::Slice { start, stride, .. } => movement::slice(inputs[0], start, stride, &out.shape),
        Op::Pad { pads, mode, value } => movement::pad(inputs[0], pads, *mode, value.0, &out.shape),
        Op::Tile { .. } => movement::tile(inputs[0], &out.shape),
        Op::Reverse { axis } => movement::reverse(inputs[0], *axis),
        Op::Gather { axis } => movement::gather(op, inputs[0], inputs[1], *axis)?,
        Op::GatherElements { axis } => movement::gather_elements(op, inputs[0], inputs[1], *axis)?,
        Op::Rescale(r) => quant::rescale(r, inputs[0])?,
        Op::Table => quant::table(inputs[0], inputs[1])?,
        Op::Resize(r) => resize::resize(r, inputs[0])?,
    };
    Ok(Tensor::from_data(out, data)?)
}
