//! CONV2D, DEPTHWISE_CONV2D and TRANSPOSE_CONV2D as a reduction stage plus a bias stage.
//!
//! Invariant: the reduction stage (`conv`, the *anchor* of a fusion group) sums
//! `select(tap inside the input, x * w, 0)` over `(c, ky, kx)` in the reference's tap order, in
//! f32 for floats (f16 widened) and in wrapping i32 of `(x - input_zp) * (w - weight_zp)` for
//! integers, so padding contributes exactly nothing; the following `bias` stage adds the bias
//! (broadcast when it has one element) and rounds f16 once. Floats may differ from the
//! reference by the rounding of adding the bias last instead of first.
//!
//! Transpose convolution is written as a gather: output row `oy` reads input row
//! `iy = (oy + pad_top - ky * dilation) / stride` when the division is exact and `iy` is inside.

use super::expr::{all, bload, c, in_range};
use super::{unsupported, Builder, ComputeError, Operand};
use kiln_ir::{DType, Op, TensorType};
use kiln_tir::{BufferId, Expr, ReduceKind};

/// The accumulator dtype and the widened operands.
fn acc_dtype(dt: DType) -> DType {
    if dt.is_float() {
        DType::F32
    } else {
        DType::I32
    }
}

/// `x` widened to the accumulator type with `zp` subtracted (integers).
fn widen(x: Expr, acc: DType, zp: i32) -> Expr {
    if acc == DType::F32 {
        Expr::cast(DType::F32, x)
    } else {
        Expr::cast(DType::I32, x) - Expr::int_of(zp as i64, DType::I32)
    }
}

fn widen_f32_only(x: Expr, from: DType, acc: DType, zp: i32) -> Expr {
    if from == DType::F32 {
        x
    } else {
        widen(x, acc, zp)
    }
}

pub(crate) fn define(
    b: &mut Builder,
    op: &Op,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let (x, w, bias) = (&xs[0], &xs[1], &xs[2]);
    let xd = x.ty.dtype;
    let acc = acc_dtype(xd);
    let (xs_, ws_) = (&x.ty.shape, &w.ty.shape);
    let (h, wd) = (xs_[2], xs_[3]);
    let zero = Expr::zero(acc);
    let shape = out.shape.clone();
    let conv = match op {
        Op::Conv2d(a) | Op::DepthwiseConv2d(a) => {
            let depthwise = matches!(op, Op::DepthwiseConv2d(_));
            let (cin, kh, kw) = (ws_[1], ws_[2], ws_[3]);
            let mult = if depthwise {
                (ws_[0] / xs_[1].max(1)).max(1)
            } else {
                1
            };
            let (sy, sx) = (a.stride[0] as i64, a.stride[1] as i64);
            let (dy, dx) = (a.dilation[0] as i64, a.dilation[1] as i64);
            let (pt, pl) = (a.pad[0] as i64, a.pad[2] as i64);
            let (xzp, wzp) = (a.input_zp, a.weight_zp);
            let raxes: Vec<(&str, usize)> = if depthwise {
                vec![("ry", kh), ("rx", kw)]
            } else {
                vec![("rc", cin), ("ry", kh), ("rx", kw)]
            };
            b.reduce("conv", &shape, &raxes, ReduceKind::Sum, |ax, r| {
                let (ky, kx, ch) = if depthwise {
                    let ch = if mult == 1 {
                        ax[1].clone()
                    } else {
                        Expr::floordiv(ax[1].clone(), c(mult as i64))
                    };
                    (r[0].clone(), r[1].clone(), ch)
                } else {
                    (r[1].clone(), r[2].clone(), r[0].clone())
                };
                let iy = ax[2].clone() * c(sy) + ky.clone() * c(dy) - c(pt);
                let ix = ax[3].clone() * c(sx) + kx.clone() * c(dx) - c(pl);
                let xv = Expr::load(x.id, vec![ax[0].clone(), ch, iy.clone(), ix.clone()]);
                let wch = if depthwise { c(0) } else { r[0].clone() };
                let wv = Expr::load(w.id, vec![ax[1].clone(), wch, ky, kx]);
                let prod =
                    widen_f32_only(xv, xd, acc, xzp) * widen_f32_only(wv, w.ty.dtype, acc, wzp);
                Expr::select(all(vec![in_range(&iy, h), in_range(&ix, wd)]), prod, zero)
            })?
        }
        Op::TransposeConv2d(a) => {
            let (cin, kh, kw) = (ws_[0], ws_[2], ws_[3]);
            let (sy, sx) = (a.stride[0] as i64, a.stride[1] as i64);
            let (dy, dx) = (a.dilation[0] as i64, a.dilation[1] as i64);
            let (pt, pl) = (a.pad[0] as i64, a.pad[2] as i64);
            let (xzp, wzp) = (a.input_zp, a.weight_zp);
            b.reduce(
                "tconv",
                &shape,
                &[("rc", cin), ("ry", kh), ("rx", kw)],
                ReduceKind::Sum,
                |ax, r| {
                    let ty = ax[2].clone() + c(pt) - r[1].clone() * c(dy);
                    let tx = ax[3].clone() + c(pl) - r[2].clone() * c(dx);
                    let iy = if sy == 1 {
                        ty.clone()
                    } else {
                        Expr::floordiv(ty.clone(), c(sy))
                    };
                    let ix = if sx == 1 {
                        tx.clone()
                    } else {
                        Expr::floordiv(tx.clone(), c(sx))
                    };
                    let mut conds = vec![
                        Expr::ge(ty.clone(), c(0)),
                        Expr::ge(tx.clone(), c(0)),
                        Expr::lt(iy.clone(), c(h as i64)),
                        Expr::lt(ix.clone(), c(wd as i64)),
                    ];
                    if sy > 1 {
                        conds.push(super::expr::eq(Expr::floormod(ty, c(sy)), c(0)));
                    }
                    if sx > 1 {
                        conds.push(super::expr::eq(Expr::floormod(tx, c(sx)), c(0)));
                    }
                    let xv = Expr::load(x.id, vec![ax[0].clone(), r[0].clone(), iy, ix]);
                    let wv = Expr::load(
                        w.id,
                        vec![r[0].clone(), ax[1].clone(), r[1].clone(), r[2].clone()],
                    );
                    let prod =
                        widen_f32_only(xv, xd, acc, xzp) * widen_f32_only(wv, w.ty.dtype, acc, wzp);
                    Expr::select(all(conds), prod, zero)
                },
            )?
        }
        other => return Err(unsupported(other, "not a convolution")),
    };
    let out_dt = out.dtype;
    b.stage("bias", &shape, |ax| {
        let bv = bload(bias.id, &bias.ty.shape, &[ax[1].clone()]);
        let bv = if bias.ty.dtype == acc {
            bv
        } else {
            Expr::cast(acc, bv)
        };
        let v = Expr::load(conv, ax.to_vec()) + bv;
        if out_dt == acc {
            v
        } else {
            Expr::cast(out_dt, v)
        }
    })
}
