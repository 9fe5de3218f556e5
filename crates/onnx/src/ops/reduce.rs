//! Reductions (ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare) and ArgMax/ArgMin.
//!
//! Invariant: axes come from the attribute or the input according to the op's opset history;
//! empty axes reduce everything unless `noop_with_empty_axes`; ArgMax/ArgMin results are i64
//! like ONNX, built from the IR's first-index i32 ARGMAX.

use crate::builder::{norm_axes, norm_axis, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, ReduceOp, UnaryOp};
use kiln_ir::{DType, Op, ValueId};

/// The opset from which each reduction takes `axes` as an input.
fn axes_input_since(op: &str) -> i64 {
    if op == "ReduceSum" {
        13
    } else {
        18
    }
}

pub(super) fn reduce(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let r = b.rank(x);
    let keepdims = cx.flag("keepdims", true)?;
    let axes = if cx.opset >= axes_input_since(cx.op_type) {
        match cx.opt_input(1) {
            Some(v) => b.need_ints(v, "axes")?,
            None => Vec::new(),
        }
    } else {
        cx.ints_opt("axes")?.unwrap_or_default()
    };
    let noop_with_empty_axes = cx.flag("noop_with_empty_axes", false)?;
    if axes.is_empty() && noop_with_empty_axes {
        return b.add(Op::Identity, &[x]);
    }
    let axes = if axes.is_empty() {
        (0..r).collect()
    } else {
        norm_axes(&axes, r)?
    };
    let dt = b.dtype(x);
    let sum = |b: &mut Builder, v: ValueId| b.reduce(ReduceOp::Sum, v, &axes, keepdims);
    match cx.op_type {
        "ReduceSum" => sum(b, x),
        "ReduceMean" => {
            let s = b.shape(x);
            let count: usize = axes.iter().map(|&a| s[a]).product();
            let t = sum(b, x)?;
            b.binary_scalar(BinaryOp::Div, t, count as f64)
        }
        "ReduceMax" | "ReduceMin" => {
            let kind = match (cx.op_type, dt) {
                ("ReduceMax", DType::Bool) => ReduceOp::Any,
                ("ReduceMin", DType::Bool) => ReduceOp::All,
                ("ReduceMax", _) => ReduceOp::Max,
                _ => ReduceOp::Min,
            };
            b.reduce(kind, x, &axes, keepdims)
        }
        "ReduceProd" => b.reduce(ReduceOp::Product, x, &axes, keepdims),
        "ReduceL1" => {
            let a = b.unary(UnaryOp::Abs, x)?;
            sum(b, a)
        }
        "ReduceL2" => {
            let sq = b.binary(BinaryOp::Mul, x, x)?;
            let s = sum(b, sq)?;
            if dt.is_float() {
                b.unary(UnaryOp::Sqrt, s)
            } else {
                unsupported("ReduceL2 of integers")
            }
        }
        "ReduceSumSquare" => {
            let sq = b.binary(BinaryOp::Mul, x, x)?;
            sum(b, sq)
        }
        "ReduceLogSum" => {
            let s = sum(b, x)?;
            b.unary(UnaryOp::Log, s)
        }
        "ReduceLogSumExp" => {
            let e = b.unary(UnaryOp::Exp, x)?;
            let s = sum(b, e)?;
            b.unary(UnaryOp::Log, s)
        }
        other => unsupported(format!("no reduction mapping for {other}")),
    }
}

pub(super) fn arg(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let axis = norm_axis(cx.int("axis", 0)?, s.len())?;
    let keepdims = cx.flag("keepdims", true)?;
    let last = cx.flag("select_last_index", false)?;
    let dt = b.dtype(x);
    let mut v = x;
    if cx.op_type == "ArgMin" {
        v = match dt {
            DType::U8 => b.unary(UnaryOp::BitwiseNot, v)?,
            _ if dt.is_numeric() => b.unary(UnaryOp::Negate, v)?,
            _ => return unsupported(format!("ArgMin of {dt}")),
        };
    }
    if last {
        v = b.add(Op::Reverse { axis }, &[v])?;
    }
    let mut idx = b.add(Op::ArgMax { axis }, &[v])?;
    idx = b.cast(idx, DType::I64)?;
    if last {
        // Index in the reversed axis -> index in the original axis.
        let n = b.scalar(DType::I64, (s[axis] as f64) - 1.0);
        idx = b.binary(BinaryOp::Sub, n, idx)?;
    }
    if keepdims {
        let mut shape = s.clone();
        shape[axis] = 1;
        idx = b.reshape(idx, shape)?;
    }
    Ok(idx)
}
