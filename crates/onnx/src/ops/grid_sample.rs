//! The spatial-transformer ops: AffineGrid builds a sampling grid, GridSample reads it.
//!
//! GridSample (opsets 16-22) samples `X [N, C, D1.., Dk]` at the normalised coordinates of
//! `grid [N, O1.., Ok, k]` (last axis in reverse dim order, x first), 2-D or volumetric,
//! nearest / (bi)linear / (bi)cubic, with zeros, border or reflection padding.
//!
//! Invariant: every step is the ONNX reference's (PyTorch's `GridSampler`): coordinates are
//! denormalised per `align_corners`, rounded half to even for nearest, moved inside by border
//! or reflection padding only when outside the borders, then each interpolation tap (1, 2 or 4
//! per dim, Keys cubic with a = -0.75) reads its pixel through the same padding rule (zeros:
//! outside reads 0). The taps' values are gathered at run-time linear indices (one GATHER_ELEMENTS
//! per combination of taps) and summed with their weights.

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{DType, Op, ValueId};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

/// `x` reflected into `[lo, hi]` by its nearest border until inside (the reference's
/// `_gs_reflect`), for values outside; others unchanged.
fn reflect(b: &mut Builder, x: ValueId, lo: f64, hi: f64) -> NResult<ValueId> {
    let range = hi - lo;
    let lo_v = b.scalar(b.dtype(x), lo);
    let hi_v = b.scalar(b.dtype(x), hi);
    let fold = |b: &mut Builder, dx: ValueId, near: f64, far: f64| -> NResult<ValueId> {
        // n = trunc(dx / range), r = dx - n * range; even n: near side, odd: far side.
        let q = b.binary_scalar(BinaryOp::Div, dx, range)?;
        let n = b.unary(UnaryOp::Floor, q)?;
        let nr = b.binary_scalar(BinaryOp::Mul, n, range)?;
        let r = b.binary(BinaryOp::Sub, dx, nr)?;
        let half = b.binary_scalar(BinaryOp::Mul, n, 0.5)?;
        let half = b.unary(UnaryOp::Floor, half)?;
        let twice = b.binary_scalar(BinaryOp::Mul, half, 2.0)?;
        let even = b.binary(BinaryOp::Equal, twice, n)?;
        let (near_v, far_v) = (b.scalar(b.dtype(dx), near), b.scalar(b.dtype(dx), far));
        // near +/- r: the sign is that of (far - near).
        let toward = if far > near {
            BinaryOp::Add
        } else {
            BinaryOp::Sub
        };
        let from_near = b.binary(toward, near_v, r)?;
        let away = if far > near {
            BinaryOp::Sub
        } else {
            BinaryOp::Add
        };
        let from_far = b.binary(away, far_v, r)?;
        b.select(even, from_near, from_far)
    };
    let below = b.binary(BinaryOp::Greater, lo_v, x)?;
    let dx_below = b.binary(BinaryOp::Sub, lo_v, x)?;
    let from_below = fold(b, dx_below, lo, hi)?;
    let above = b.binary(BinaryOp::Greater, x, hi_v)?;
    let dx_above = b.binary(BinaryOp::Sub, x, hi_v)?;
    let from_above = fold(b, dx_above, hi, lo)?;
    let y = b.select(above, from_above, x)?;
    b.select(below, from_below, y)
}

/// One interpolation tap along one dim: the pixel index (i64, inside the dim), its weight, and
/// whether it lies inside (for zeros padding).
struct Tap {
    index: ValueId,
    weight: ValueId,
    inside: Option<ValueId>,
}

/// Keys' cubic convolution weights (a = -0.75) of taps -1, 0, 1, 2 at fraction `t`.
fn cubic_weights(b: &mut Builder, t: ValueId) -> NResult<[ValueId; 4]> {
    let a = -0.75;
    // far(s) for s = t + 1 and 2 - t: ((a s - 5a) s + 8a) s - 4a
    let far = |b: &mut Builder, s: ValueId| -> NResult<ValueId> {
        let p = b.binary_scalar(BinaryOp::Mul, s, a)?;
        let p = b.binary_scalar(BinaryOp::Sub, p, 5.0 * a)?;
        let p = b.binary(BinaryOp::Mul, p, s)?;
        let p = b.binary_scalar(BinaryOp::Add, p, 8.0 * a)?;
        let p = b.binary(BinaryOp::Mul, p, s)?;
        b.binary_scalar(BinaryOp::Sub, p, 4.0 * a)
    };
    // near(s) for s = t and 1 - t: ((a + 2) s - (a + 3)) s s + 1
    let near = |b: &mut Builder, s: ValueId| -> NResult<ValueId> {
        let p = b.binary_scalar(BinaryOp::Mul, s, a + 2.0)?;
        let p = b.binary_scalar(BinaryOp::Sub, p, a + 3.0)?;
        let p = b.binary(BinaryOp::Mul, p, s)?;
        let p = b.binary(BinaryOp::Mul, p, s)?;
        b.binary_scalar(BinaryOp::Add, p, 1.0)
    };
    let one = b.scalar(b.dtype(t), 1.0);
    let two = b.scalar(b.dtype(t), 2.0);
    let t1 = b.binary_scalar(BinaryOp::Add, t, 1.0)?;
    let omt = b.binary(BinaryOp::Sub, one, t)?;
    let tmt = b.binary(BinaryOp::Sub, two, t)?;
    Ok([far(b, t1)?, near(b, t)?, near(b, omt)?, far(b, tmt)?])
}

pub(super) fn grid_sample(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (x, grid) = (cx.input(0)?, cx.input(1)?);
    let (xs, gs) = (b.shape(x), b.shape(grid));
    let dt = b.dtype(x);
    let k = xs.len().saturating_sub(2);
    if !(2..=3).contains(&k) || gs.len() != k + 2 || gs[0] != xs[0] || gs[k + 1] != k {
        return invalid(format!(
            "X {xs:?} and grid {gs:?} must be [N, C, D1..Dk] and [N, O1..Ok, k] with k 2 or 3"
        ));
    }
    if !dt.is_float() || !b.dtype(grid).is_float() {
        return unsupported(format!("GridSample of {dt} with a {} grid", b.dtype(grid)));
    }
    let default_mode = if cx.opset >= 20 { "linear" } else { "bilinear" };
    let mode = match cx.string("mode", default_mode)?.as_str() {
        "nearest" => Mode::Nearest,
        "linear" | "bilinear" => Mode::Linear,
        "cubic" | "bicubic" => Mode::Cubic,
        other => return invalid(format!("mode `{other}` is not nearest, linear or cubic")),
    };
    if mode == Mode::Cubic && k != 2 {
        return unsupported("cubic GridSample is defined for 2-D inputs only");
    }
    let padding = match cx.string("padding_mode", "zeros")?.as_str() {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        other => {
            return invalid(format!(
                "padding_mode `{other}` is not zeros, border or reflection"
            ))
        }
    };
    let align = cx.flag("align_corners", false)?;
    let (n, c) = (xs[0], xs[1]);
    let dims = &xs[2..];
    let points: usize = gs[1..k + 1].iter().product();
    let cdt = DType::F32;
    let grid = b.cast(grid, cdt)?;
    let mut per_dim: Vec<Vec<Tap>> = Vec::new();
    for (i, &d) in dims.iter().enumerate() {
        let g = b.slice_axis(grid, k + 1, k - 1 - i, 1, 1)?;
        let g = b.reshape(g, vec![n, points])?;
        // Denormalise.
        let (lo, hi) = if align {
            (0.0, d as f64 - 1.0)
        } else {
            (-0.5, d as f64 - 0.5)
        };
        let g1 = b.binary_scalar(BinaryOp::Add, g, 1.0)?;
        let mut coord = if align {
            let h = b.binary_scalar(BinaryOp::Div, g1, 2.0)?;
            b.binary_scalar(BinaryOp::Mul, h, d as f64 - 1.0)?
        } else {
            let s = b.binary_scalar(BinaryOp::Mul, g1, d as f64)?;
            let s = b.binary_scalar(BinaryOp::Sub, s, 1.0)?;
            b.binary_scalar(BinaryOp::Div, s, 2.0)?
        };
        if mode == Mode::Nearest {
            coord = b.unary(UnaryOp::Round, coord)?;
        }
        coord = match padding {
            Padding::Zeros => coord,
            Padding::Border => {
                let lo_v = b.scalar(cdt, lo);
                let hi_v = b.scalar(cdt, hi);
                let below = b.binary(BinaryOp::Greater, lo_v, coord)?;
                let above = b.binary(BinaryOp::Greater, coord, hi_v)?;
                let out = b.binary(BinaryOp::LogicalOr, below, above)?;
                let clamped = b.clamp(coord, 0.0, d as f64 - 1.0)?;
                b.select(out, clamped, coord)?
            }
            Padding::Reflection => reflect(b, coord, lo, hi)?,
        };
        // Taps: (offset from floor, weight).
        let base = if mode == Mode::Nearest {
            coord
        } else {
            b.unary(UnaryOp::Floor, coord)?
        };
        let weights: Vec<(i64, ValueId)> = match mode {
            Mode::Nearest => vec![(0, b.scalar(cdt, 1.0))],
            Mode::Linear => {
                let t = b.binary(BinaryOp::Sub, coord, base)?;
                let one = b.scalar(cdt, 1.0);
                vec![(0, b.binary(BinaryOp::Sub, one, t)?), (1, t)]
            }
            Mode::Cubic => {
                let t = b.binary(BinaryOp::Sub, coord, base)?;
                let w = cubic_weights(b, t)?;
                vec![(-1, w[0]), (0, w[1]), (1, w[2]), (2, w[3])]
            }
        };
        let base_i = b.cast(base, DType::I64)?;
        let mut taps = Vec::new();
        for (offset, weight) in weights {
            let j = b.binary_scalar(BinaryOp::Add, base_i, offset as f64)?;
            let (index, inside) = match padding {
                Padding::Zeros => {
                    let zero = b.scalar(DType::I64, 0.0);
                    let last = b.scalar(DType::I64, d as f64 - 1.0);
                    let ge = b.binary(BinaryOp::GreaterEqual, j, zero)?;
                    let le = b.binary(BinaryOp::GreaterEqual, last, j)?;
                    let inside = b.binary(BinaryOp::LogicalAnd, ge, le)?;
                    (b.clamp(j, 0.0, d as f64 - 1.0)?, Some(inside))
                }
                Padding::Border => (b.clamp(j, 0.0, d as f64 - 1.0)?, None),
                Padding::Reflection => {
                    let jf = b.cast(j, cdt)?;
                    let r = reflect(b, jf, lo, hi)?;
                    let ri = b.cast(r, DType::I64)?;
                    (b.clamp(ri, 0.0, d as f64 - 1.0)?, None)
                }
            };
            taps.push(Tap {
                index,
                weight,
                inside,
            });
        }
        per_dim.push(taps);
    }
    // Every combination of one tap per dim: value at the linear index, times the weights.
    let spatial: usize = dims.iter().product();
    let flat = b.reshape(x, vec![n, c, spatial])?;
    let mut combos: Vec<Vec<usize>> = vec![vec![]];
    for taps in &per_dim {
        combos = combos
            .into_iter()
            .flat_map(|pre| {
                (0..taps.len()).map(move |t| {
                    let mut v = pre.clone();
                    v.push(t);
                    v
                })
            })
            .collect();
    }
    let mut sum: Option<ValueId> = None;
    for combo in combos {
        let mut lin: Option<ValueId> = None;
        let mut weight: Option<ValueId> = None;
        let mut inside: Option<ValueId> = None;
        for (i, &t) in combo.iter().enumerate() {
            let tap = &per_dim[i][t];
            let stride: usize = dims[i + 1..].iter().product();
            let term = b.binary_scalar(BinaryOp::Mul, tap.index, stride as f64)?;
            lin = Some(match lin {
                None => term,
                Some(l) => b.binary(BinaryOp::Add, l, term)?,
            });
            weight = Some(match weight {
                None => tap.weight,
                Some(w) => b.binary(BinaryOp::Mul, w, tap.weight)?,
            });
            if let Some(ok) = tap.inside {
                inside = Some(match inside {
                    None => ok,
                    Some(a) => b.binary(BinaryOp::LogicalAnd, a, ok)?,
                });
            }
        }
        let (Some(lin), Some(mut weight)) = (lin, weight) else {
            return invalid("no spatial dims");
        };
        if let Some(ok) = inside {
            let zero = b.scalar(cdt, 0.0);
            weight = b.select(ok, weight, zero)?;
        }
        let lin = b.reshape(lin, vec![n, 1, points])?;
        let lin = b.broadcast_to(lin, &[n, c, points])?;
        let v = b.add(Op::GatherElements { axis: 2 }, &[flat, lin])?;
        let v = b.cast(v, cdt)?;
        let weight = b.reshape(weight, vec![n, 1, points])?;
        let term = b.binary(BinaryOp::Mul, v, weight)?;
        sum = Some(match sum {
            None => term,
            Some(s) => b.binary(BinaryOp::Add, s, term)?,
        });
    }
    let Some(sum) = sum else {
        return invalid("no interpolation taps");
    };
    let y = b.cast(sum, dt)?;
    let mut out = vec![n, c];
    out.extend_from_slice(&gs[1..k + 1]);
    b.reshape(y, out)
}

/// AffineGrid (opset 20): the sampling grid `[N, D1.., Dk, k]` of the affine maps `theta`
/// (`[N, 2, 3]` or `[N, 3, 4]`) applied to the normalised coordinates of an output of `size`
/// (`[N, C, H, W]` or `[N, C, D, H, W]`): the constant base grid `(x, y[, z], 1)` times
/// `theta^T` in one batched MATMUL.
pub(super) fn affine_grid(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let theta = cx.input(0)?;
    let size = b.need_ints(cx.input(1)?, "size")?;
    let align = cx.flag("align_corners", false)?;
    let ts = b.shape(theta);
    let k = size.len().saturating_sub(2);
    if !(2..=3).contains(&k) || ts != [size[0].max(0) as usize, k, k + 1] {
        return invalid(format!(
            "theta {ts:?} does not fit size {size:?} ([N, {k}, {}] expected)",
            k + 1
        ));
    }
    if size.iter().any(|&d| d < 1) {
        return invalid(format!("size must be positive, got {size:?}"));
    }
    let dims: Vec<usize> = size[2..].iter().map(|&d| d as usize).collect();
    let coord = |i: usize, s: usize| -> f64 {
        if align {
            if s == 1 {
                -1.0
            } else {
                -1.0 + 2.0 * i as f64 / (s - 1) as f64
            }
        } else {
            -1.0 + (2 * i + 1) as f64 / s as f64
        }
    };
    let points: usize = dims.iter().product();
    let mut base = Vec::with_capacity(points * (k + 1));
    for p in 0..points {
        // Position along each dim (row-major), then x (last dim) first.
        let mut rest = p;
        let mut at = vec![0; k];
        for d in (0..k).rev() {
            at[d] = rest % dims[d];
            rest /= dims[d];
        }
        for d in (0..k).rev() {
            base.push(coord(at[d], dims[d]));
        }
        base.push(1.0);
    }
    let dt = b.dtype(theta);
    let base = b.const_f64(dt, vec![1, points, k + 1], &base)?;
    let theta_t = b.transpose(theta, vec![0, 2, 1])?;
    let grid = super::matmul::matmul_nd(b, base, theta_t, Default::default())?;
    let mut out = vec![ts[0]];
    out.extend(&dims);
    out.push(k);
    b.reshape(grid, out)
}
