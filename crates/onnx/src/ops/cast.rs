//! Cast and CastLike, including casts to the sub-byte integer types (held widened).
//!
//! Invariant: a cast to a Kiln dtype is one CAST (ONNX semantics: floats to integers truncate
//! toward zero and saturate, NaN becomes 0); a cast to a sub-byte type yields its widened dtype
//! holding only values of the narrow range, and the result is recorded as narrow so that a
//! CastLike or QuantizeLinear reading it knows its range.

use crate::builder::{Builder, NResult};
use crate::node::NodeCx;
use crate::tensor_io::{dtype_from_onnx, Narrow};
use kiln_ir::op::BinaryOp;
use kiln_ir::{DType, Op, ValueId};

pub(super) fn cast(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    // `saturate` and `round_mode` only concern float8/float4 targets, which Kiln does not have.
    cx.flag("saturate", true)?;
    cx.string("round_mode", "up")?;
    let (to, narrow) = if cx.op_type == "CastLike" {
        let like = cx.input(1)?;
        (b.dtype(like), b.narrow.get(&like).copied())
    } else {
        let code = cx.int_opt("to")?.ok_or(crate::builder::NodeError::Invalid(
            "attribute `to` is required".into(),
        ))?;
        let to = dtype_from_onnx(code as i32).map_err(crate::builder::NodeError::Unsupported)?;
        (to, Narrow::from_onnx(code as i32))
    };
    if let Some(n) = narrow {
        let y = cast_narrow(b, x, n)?;
        b.narrow.insert(y, n);
        return Ok(y);
    }
    if b.dtype(x) == to {
        return b.add(Op::Identity, &[x]);
    }
    b.add(Op::Cast { to }, &[x])
}

/// A cast to a sub-byte integer type (held widened): floats truncate toward zero and values
/// outside the type's range become 0 (as the ONNX reference's `ml_dtypes` conversion does);
/// integers wrap to the width.
fn cast_narrow(b: &mut Builder, x: ValueId, n: Narrow) -> NResult<ValueId> {
    let (lo, hi) = n.range();
    let t = b.cast(x, DType::I64)?;
    let y = if b.dtype(x).is_float() {
        let lo_v = b.scalar(DType::I64, lo as f64);
        let hi_v = b.scalar(DType::I64, hi as f64);
        let above = b.binary(BinaryOp::GreaterEqual, t, lo_v)?;
        let below = b.binary(BinaryOp::GreaterEqual, hi_v, t)?;
        let inside = b.binary(BinaryOp::LogicalAnd, above, below)?;
        let zero = b.scalar(DType::I64, 0.0);
        b.select(inside, t, zero)?
    } else {
        let shifted = b.binary_scalar(BinaryOp::Sub, t, lo as f64)?;
        let wrapped = b.binary_scalar(BinaryOp::Mod, shifted, (1i64 << n.bits) as f64)?;
        b.binary_scalar(BinaryOp::Add, wrapped, lo as f64)?
    };
    b.cast(y, n.widened())
}
