//! REDUCE_* (axis kept with size 1) and ARGMAX (axis removed, i32 result) as reductions.
//!
//! Invariant: sums and products of floats accumulate in f32 (an f16 result is rounded once by
//! a final stage), integers wrap in their dtype, max/min propagate NaN and start from the
//! documented identities. TIR reductions have no bool identity, so ALL/ANY reduce `x ? 1 : 0`
//! as i8 with min/max and compare with 0 in a final stage.
//!
//! ARGMAX (first index of the maximum, the first NaN if any) is a two-value reduction, written as
//! two stages: `m = max(x)` along the axis (NaN-propagating, so `m` is NaN exactly when a NaN is
//! present), then `min(k : x[k] == m or (m and x[k] are both NaN))`, i.e. the first index
//! attaining it; the second stage reduces `select(hit, k, len)` with `min`.

use super::expr::{c, eq, ne};
use super::{unsupported, Builder, ComputeError, Operand};
use kiln_ir::op::ReduceOp;
use kiln_ir::{DType, Op, TensorType};
use kiln_tir::{BufferId, Expr, ReduceKind};

/// Indices into the input: the output axes with the reduced axis replaced by `k`.
fn input_index(ax: &[Expr], axis: usize, k: &Expr, kept: bool) -> Vec<Expr> {
    let mut idx: Vec<Expr> = ax.to_vec();
    if kept {
        idx[axis] = k.clone();
    } else {
        idx.insert(axis, k.clone());
    }
    idx
}

pub(crate) fn define(
    b: &mut Builder,
    op: &Op,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let x = &xs[0];
    let dt = x.ty.dtype;
    let shape = out.shape.clone();
    match op {
        Op::Reduce { kind, axis } => {
            let axis = *axis;
            let len = x.ty.shape[axis];
            let raxes = [("r", len)];
            match kind {
                ReduceOp::All | ReduceOp::Any => {
                    let rk = if *kind == ReduceOp::All {
                        ReduceKind::Min
                    } else {
                        ReduceKind::Max
                    };
                    let r = b.reduce("reduce_bits", &shape, &raxes, rk, |ax, r| {
                        let v = Expr::load(x.id, input_index(ax, axis, &r[0], true));
                        Expr::select(v, Expr::int_of(1, DType::I8), Expr::int_of(0, DType::I8))
                    })?;
                    b.stage(op.name(), &shape, |ax| {
                        ne(Expr::load(r, ax.to_vec()), Expr::int_of(0, DType::I8))
                    })
                }
                _ => {
                    let rk = match kind {
                        ReduceOp::Sum => ReduceKind::Sum,
                        ReduceOp::Product => ReduceKind::Product,
                        ReduceOp::Max => ReduceKind::Max,
                        _ => ReduceKind::Min,
                    };
                    let widen = dt.is_half();
                    let r = b.reduce(op.name(), &shape, &raxes, rk, |ax, r| {
                        let v = Expr::load(x.id, input_index(ax, axis, &r[0], true));
                        if widen {
                            Expr::cast(DType::F32, v)
                        } else {
                            v
                        }
                    })?;
                    b.finish_f32(r, dt, &shape)
                }
            }
        }
        Op::ArgMax { axis } => {
            let axis = *axis;
            let len = x.ty.shape[axis];
            let m = b.reduce(
                "argmax_max",
                &shape,
                &[("r", len)],
                ReduceKind::Max,
                |ax, r| Expr::load(x.id, input_index(ax, axis, &r[0], false)),
            )?;
            let float = dt.is_float();
            b.reduce("argmax", &shape, &[("r", len)], ReduceKind::Min, |ax, r| {
                let v = Expr::load(x.id, input_index(ax, axis, &r[0], false));
                let mv = Expr::load(m, ax.to_vec());
                let mut hit = eq(v.clone(), mv.clone());
                if float {
                    hit = Expr::or(hit, Expr::and(ne(mv.clone(), mv), ne(v.clone(), v)));
                }
                Expr::cast(DType::I32, Expr::select(hit, r[0].clone(), c(len as i64)))
            })
        }
        other => Err(unsupported(other, "not a reduction")),
    }
}
