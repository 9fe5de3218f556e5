//! MATMUL `[B,M,K] x [B,K,N]` as one reduction stage over `k` (the fusion anchor), plus a
//! rounding stage for f16.
//!
//! Invariant: floats accumulate `a * b` in f32 (f64 in f64) in `k` order like the reference; integers
//! accumulate `(a - a_zp) * (b - b_zp)` in wrapping i32, each operand first converted to i32
//! with wrapping (so an i64 right operand is narrowed like the reference does).

use super::{Builder, ComputeError, Operand};
use kiln_ir::op::MatMulAttrs;
use kiln_ir::{DType, TensorType};
use kiln_tir::{BufferId, Expr, ReduceKind};

pub(crate) fn define(
    b: &mut Builder,
    attrs: &MatMulAttrs,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let (x, y) = (&xs[0], &xs[1]);
    let k = x.ty.shape[2];
    let float = x.ty.dtype.is_float();
    let widen = |e: Expr, dt: DType, zp: i32| -> Expr {
        if float {
            if matches!(dt, DType::F32 | DType::F64) {
                e
            } else {
                Expr::cast(DType::F32, e)
            }
        } else {
            Expr::cast(DType::I32, e) - Expr::int_of(zp as i64, DType::I32)
        }
    };
    let (xd, yd) = (x.ty.dtype, y.ty.dtype);
    let mm = b.reduce(
        "matmul",
        &out.shape,
        &[("k", k)],
        ReduceKind::Sum,
        |ax, r| {
            let av = Expr::load(x.id, vec![ax[0].clone(), ax[1].clone(), r[0].clone()]);
            let bv = Expr::load(y.id, vec![ax[0].clone(), r[0].clone(), ax[2].clone()]);
            widen(av, xd, attrs.a_zp) * widen(bv, yd, attrs.b_zp)
        },
    )?;
    if attrs.fma && float {
        b.fuse_multiply_add(mm)?;
    }
    b.finish_f32(mm, out.dtype, &out.shape)
}
