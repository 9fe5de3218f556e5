//! AVG_POOL2D and MAX_POOL2D as reductions over the window `(ky, kx)`.
//!
//! Invariant: window taps outside the input are masked with a `select` (the identity of max, 0
//! of the sum; only the bounds a tap can leave are tested), so they never count; MAX_POOL2D's empty windows give the identity (-inf / dtype
//! minimum) and NaN propagates, like the reference. AVG_POOL2D sums in f32 and divides by the
//! per-axis tap counts, computed at definition time exactly as the reference does (inside the
//! input, or inside the padded input with `count_include_pad`) and bound as two f32 tables
//! `[OH]` and `[OW]`; an empty count gives 0/0 = NaN as in the reference. A channels-last
//! pool indexes the same taps in its layout (channels are the innermost, vectorized axis).

use super::expr::{c, reach, TapBounds};
use super::{unsupported, Builder, ComputeError, Operand};
use kiln_ir::op::PoolAttrs;
use kiln_ir::{DType, Op, Tensor, TensorType};
use kiln_tir::{BufferId, Expr, ReduceKind};

/// Per output position along axis `ax`: the number of taps counted by the divisor.
fn counts(p: &PoolAttrs, ax: usize, input: usize, out: usize) -> Vec<f32> {
    let (k, s, d) = (p.kernel[ax], p.stride[ax], p.dilation[ax]);
    let before = p.pad[2 * ax] as i64;
    let padded_end = input as i64 + p.pad[2 * ax + 1] as i64;
    (0..out)
        .map(|o| {
            let start = (o * s) as i64 - before;
            (0..k)
                .filter(|&t| {
                    let pos = start + (t * d) as i64;
                    if p.count_include_pad {
                        pos >= -before && pos < padded_end
                    } else {
                        pos >= 0 && pos < input as i64
                    }
                })
                .count() as f32
        })
        .collect()
}

pub(crate) fn define(
    b: &mut Builder,
    op: &Op,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let (p, is_max) = match op {
        Op::MaxPool2d(p) => (p, true),
        Op::AvgPool2d(p) => (p, false),
        other => return Err(unsupported(other, "not a pool")),
    };
    let x = &xs[0];
    let dt = x.ty.dtype;
    let layout = p.layout;
    let [_, _, h, w] = layout.nchw_dims(&x.ty.shape);
    let shape = out.shape.clone();
    let [_, _, oh, ow] = layout.nchw_dims(&shape);
    let (sy, sx) = (p.stride[0] as i64, p.stride[1] as i64);
    let (dy, dx) = (p.dilation[0] as i64, p.dilation[1] as i64);
    let (pt, pl) = (p.pad[0] as i64, p.pad[2] as i64);
    let raxes = [("ky", p.kernel[0]), ("kx", p.kernel[1])];
    // Only the bounds a tap can leave are tested (an unpadded pool reads unguarded).
    let bounds = TapBounds {
        y_lo: pt > 0,
        y_hi: reach(oh, sy, p.kernel[0], dy, pt) >= h as i64,
        x_lo: pl > 0,
        x_hi: reach(ow, sx, p.kernel[1], dx, pl) >= w as i64,
    };
    // A tap's value, or `outside` where it leaves the input.
    let tap = |ax: &[Expr], r: &[Expr], outside: Expr| {
        let [n, ch, y, xx] = layout.nchw_of(ax);
        let iy = y * c(sy) + r[0].clone() * c(dy) - c(pt);
        let ix = xx * c(sx) + r[1].clone() * c(dx) - c(pl);
        let v = Expr::load(x.id, layout.shape_of([n, ch, iy.clone(), ix.clone()]));
        let v = if is_max || dt == DType::F32 {
            v
        } else {
            Expr::cast(DType::F32, v)
        };
        bounds.guard(&iy, h, &ix, w, v, outside)
    };
    if is_max {
        let ident = ReduceKind::Max
            .identity(dt)
            .ok_or_else(|| unsupported(op, format!("does not accept {dt}")))?;
        return b.reduce("maxpool", &shape, &raxes, ReduceKind::Max, |ax, r| {
            tap(ax, r, ident.clone())
        });
    }
    let sum = b.reduce("avgpool_sum", &shape, &raxes, ReduceKind::Sum, |ax, r| {
        tap(ax, r, Expr::f32(0.0))
    })?;
    let ch = b.table(
        "avgpool_count_h",
        Tensor::new(vec![oh], counts(p, 0, h, oh))?,
    )?;
    let cw = b.table(
        "avgpool_count_w",
        Tensor::new(vec![ow], counts(p, 1, w, ow))?,
    )?;
    b.stage("avgpool", &shape, |ax| {
        let [_, _, y, xx] = layout.nchw_of(ax);
        let count = Expr::load(ch, vec![y]) * Expr::load(cw, vec![xx]);
        let v = Expr::load(sum, ax.to_vec()) / count;
        if dt == DType::F32 {
            v
        } else {
            Expr::cast(dt, v)
        }
    })
}
