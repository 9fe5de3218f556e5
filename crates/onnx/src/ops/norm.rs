//! Normalisations (BatchNormalization in inference mode, InstanceNormalization,
//! LayerNormalization, RMSNormalization, GroupNormalization, MeanVarianceNormalization,
//! LpNormalization, LRN) and Softmax/LogSoftmax.
//!
//! Invariant: statistics are computed with IR reductions in the input dtype (in the stash type
//! where the op has one); per-channel parameters are reshaped to broadcast along the channel
//! axis; constant parameter arithmetic is folded by the builder.

use crate::builder::{invalid, norm_axis, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, DataLayout, Op, PoolAttrs, ReduceOp, UnaryOp};
use kiln_ir::{DType, ValueId};

/// Reshapes a `[C]` parameter to `[1, C, 1, ...]` for an input of rank `rank`.
fn per_channel(b: &mut Builder, p: ValueId, rank: usize) -> NResult<ValueId> {
    let s = b.shape(p);
    if s.len() != 1 {
        return invalid(format!("per-channel parameter must be 1-D, got {s:?}"));
    }
    let mut shape = vec![1; rank.max(2)];
    shape[1] = s[0];
    b.reshape(p, shape)
}

pub(super) fn batch_norm(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    if cx.flag("training_mode", false)? {
        return unsupported("training_mode=1 is not supported (inference only)");
    }
    if cx.num_outputs > 1 && (1..cx.num_outputs).any(|i| cx.wants_output(i)) {
        return unsupported("only the Y output is supported (inference mode)");
    }
    let x = cx.input(0)?;
    let r = b.rank(x);
    let eps = cx.float("epsilon", 1e-5)? as f64;
    let scale = per_channel(b, cx.input(1)?, r)?;
    let bias = per_channel(b, cx.input(2)?, r)?;
    let mean = per_channel(b, cx.input(3)?, r)?;
    let var = per_channel(b, cx.input(4)?, r)?;
    let dt = b.dtype(x);
    let (scale, bias, mean, var) = (
        b.cast(scale, dt)?,
        b.cast(bias, dt)?,
        b.cast(mean, dt)?,
        b.cast(var, dt)?,
    );
    // y = x * a + (bias - mean * a), a = scale / sqrt(var + eps).
    let ve = b.binary_scalar(BinaryOp::Add, var, eps)?;
    let inv = b.unary(UnaryOp::Rsqrt, ve)?;
    let a = b.binary(BinaryOp::Mul, scale, inv)?;
    let ma = b.binary(BinaryOp::Mul, mean, a)?;
    let c = b.binary(BinaryOp::Sub, bias, ma)?;
    let y = b.binary(BinaryOp::Mul, x, a)?;
    b.binary(BinaryOp::Add, y, c)
}

/// Mean and `x - mean` over `axes` (kept).
fn center(b: &mut Builder, x: ValueId, axes: &[usize]) -> NResult<(ValueId, ValueId)> {
    let s = b.shape(x);
    let count: usize = axes.iter().map(|&a| s[a]).product();
    let sum = b.reduce(ReduceOp::Sum, x, axes, true)?;
    let mean = b.binary_scalar(BinaryOp::Div, sum, count.max(1) as f64)?;
    let d = b.binary(BinaryOp::Sub, x, mean)?;
    Ok((mean, d))
}

/// `1 / sqrt(mean(d^2) + eps)` over `axes` (kept).
fn inv_std(b: &mut Builder, d: ValueId, axes: &[usize], eps: f64) -> NResult<ValueId> {
    let s = b.shape(d);
    let count: usize = axes.iter().map(|&a| s[a]).product();
    let sq = b.binary(BinaryOp::Mul, d, d)?;
    let var = b.reduce(ReduceOp::Sum, sq, axes, true)?;
    let var = b.binary_scalar(BinaryOp::Div, var, count.max(1) as f64)?;
    let ve = b.binary_scalar(BinaryOp::Add, var, eps)?;
    b.unary(UnaryOp::Rsqrt, ve)
}

pub(super) fn instance_norm(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let r = b.rank(x);
    if r < 3 {
        return invalid("input must have spatial dims");
    }
    let eps = cx.float("epsilon", 1e-5)? as f64;
    let axes: Vec<usize> = (2..r).collect();
    let (_, d) = center(b, x, &axes)?;
    let inv = inv_std(b, d, &axes, eps)?;
    let y = b.binary(BinaryOp::Mul, d, inv)?;
    let scale = per_channel(b, cx.input(1)?, r)?;
    let bias = per_channel(b, cx.input(2)?, r)?;
    let y = b.binary(BinaryOp::Mul, y, scale)?;
    b.binary(BinaryOp::Add, y, bias)
}

/// LayerNormalization (opset 17+). `stash_type` (default 1, float) is the element type of the
/// statistics: the input is normalised in that type and the result cast back to the input's
/// type (torch's dynamo exporter writes `stash_type=1` explicitly); the Mean and InvStdDev
/// outputs have the stash type, as the spec says.
pub(super) fn layer_norm(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    let x = cx.input(0)?;
    let dt = b.dtype(x);
    let r = b.rank(x);
    let axis = norm_axis(cx.int("axis", -1)?, r)?;
    let eps = cx.float("epsilon", 1e-5)? as f64;
    let stash = match cx.int("stash_type", 1)? {
        1 => DType::F32,
        10 => DType::F16,
        other => {
            return unsupported(format!(
                "stash_type {other} (only 1 = float and 10 = float16 are supported)"
            ))
        }
    };
    if !dt.is_float() {
        return unsupported(format!("LayerNormalization of {dt}"));
    }
    let xs = b.cast(x, stash)?;
    let axes: Vec<usize> = (axis..r).collect();
    let (mean, d) = center(b, xs, &axes)?;
    let inv = inv_std(b, d, &axes, eps)?;
    let normalised = b.binary(BinaryOp::Mul, d, inv)?;
    let mut y = b.cast(normalised, dt)?;
    y = b.binary(BinaryOp::Mul, y, cx.input(1)?)?;
    if let Some(bias) = cx.opt_input(2) {
        y = b.binary(BinaryOp::Add, y, bias)?;
    }
    Ok(vec![y, mean, inv])
}

pub(super) fn softmax(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let r = s.len();
    let log = cx.op_type == "LogSoftmax";
    if !b.dtype(x).is_float() {
        return unsupported(format!("{} of {}", cx.op_type, b.dtype(x)));
    }
    if cx.opset >= 13 {
        let axis = norm_axis(cx.int("axis", -1)?, r)?;
        return softmax_axis(b, x, axis, log);
    }
    // Opset < 13: coerce to 2-D [prod(d[..axis]), prod(d[axis..])] and normalise rows.
    let axis = if r == 0 {
        0
    } else {
        norm_axis(cx.int("axis", 1)?, r).or_else(|_| {
            // axis == rank is allowed (one column).
            if cx.int("axis", 1)? == r as i64 {
                Ok(r)
            } else {
                invalid("axis out of range")
            }
        })?
    };
    let rows: usize = s[..axis].iter().product();
    let cols: usize = s[axis..].iter().product();
    let x2 = b.reshape(x, vec![rows, cols])?;
    let y = softmax_axis(b, x2, 1, log)?;
    b.reshape(y, s)
}

/// LogSoftmax along `axis`.
pub(super) fn log_softmax_axis(b: &mut Builder, x: ValueId, axis: usize) -> NResult<ValueId> {
    softmax_axis(b, x, axis, true)
}

fn softmax_axis(b: &mut Builder, x: ValueId, axis: usize, log: bool) -> NResult<ValueId> {
    let m = b.reduce(ReduceOp::Max, x, &[axis], true)?;
    let d = b.binary(BinaryOp::Sub, x, m)?;
    let e = b.unary(UnaryOp::Exp, d)?;
    let sum = b.reduce(ReduceOp::Sum, e, &[axis], true)?;
    if log {
        let l = b.unary(UnaryOp::Log, sum)?;
        b.binary(BinaryOp::Sub, d, l)
    } else {
        b.binary(BinaryOp::Div, e, sum)
    }
}

pub(super) fn rms_norm(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let r = b.rank(x);
    let axis = norm_axis(cx.int("axis", -1)?, r)?;
    let eps = cx.float("epsilon", 1e-5)? as f64;
    let axes: Vec<usize> = (axis..r).collect();
    let inv = inv_std(b, x, &axes, eps)?;
    let y = b.binary(BinaryOp::Mul, x, inv)?;
    b.binary(BinaryOp::Mul, y, cx.input(1)?)
}

/// LRN (local response normalisation across channels, AlexNet/GoogLeNet):
/// `y = x / (bias + alpha / size * sum(x[c'] ^ 2))^beta`, the sum over the `size` channels
/// `c - floor((size-1)/2) ..= c + ceil((size-1)/2)` that exist. The window sum is an average pool
/// over the channel axis of `[N, 1, C, prod(spatial)]` that counts the zero padding, times `size`.
pub(super) fn lrn(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    if s.len() < 3 {
        return invalid(format!("LRN input must be [N, C, D1, ...], got {s:?}"));
    }
    if !b.dtype(x).is_float() {
        return unsupported(format!("LRN of {}", b.dtype(x)));
    }
    let size = match cx.int_opt("size")? {
        Some(n) if n >= 1 && n <= i64::from(u16::MAX) => n as usize,
        Some(n) => return invalid(format!("size must be positive, got {n}")),
        None => return invalid("the size attribute is required"),
    };
    let alpha = cx.float("alpha", 1e-4)? as f64;
    let beta = cx.float("beta", 0.75)? as f64;
    let bias = cx.float("bias", 1.0)? as f64;
    let (lo, hi) = ((size - 1) / 2, size / 2);
    let spatial: usize = s[2..].iter().product();
    let sq = b.binary(BinaryOp::Mul, x, x)?;
    let rows = b.reshape(sq, vec![s[0], 1, s[1], spatial])?;
    let window = PoolAttrs {
        kernel: [size, 1],
        stride: [1, 1],
        pad: [lo, hi, 0, 0],
        dilation: [1, 1],
        ceil_mode: false,
        count_include_pad: true,
        layout: DataLayout::Nchw,
    };
    let mean = b.add(Op::AvgPool2d(window), &[rows])?;
    let mean = b.reshape(mean, s)?;
    let scaled = b.binary_scalar(BinaryOp::Mul, mean, alpha)?;
    let base = b.binary_scalar(BinaryOp::Add, scaled, bias)?;
    let denom = b.binary_scalar(BinaryOp::Pow, base, beta)?;
    b.binary(BinaryOp::Div, x, denom)
}

/// LpNormalization: `x / ||x||_p` along `axis` (p = 1 or 2), 0 where the norm is 0.
pub(super) fn lp_normalization(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let axis = norm_axis(cx.int("axis", -1)?, b.rank(x))?;
    let norm = match cx.int("p", 2)? {
        1 => {
            let a = b.unary(UnaryOp::Abs, x)?;
            b.reduce(ReduceOp::Sum, a, &[axis], true)?
        }
        2 => {
            let sq = b.binary(BinaryOp::Mul, x, x)?;
            let s = b.reduce(ReduceOp::Sum, sq, &[axis], true)?;
            b.unary(UnaryOp::Sqrt, s)?
        }
        p => return invalid(format!("p must be 1 or 2, got {p}")),
    };
    let zero = b.scalar(b.dtype(x), 0.0);
    let is_zero = b.binary(BinaryOp::Equal, norm, zero)?;
    let y = b.binary(BinaryOp::Div, x, norm)?;
    b.select(is_zero, zero, y)
}

/// MeanVarianceNormalization: `(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)` over `axes`
/// (default `[0, 2, 3]`), as its ONNX function body computes it.
pub(super) fn mean_variance_normalization(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let r = b.rank(x);
    let axes = crate::builder::norm_axes(&cx.ints_opt("axes")?.unwrap_or(vec![0, 2, 3]), r)?;
    let s = b.shape(x);
    let count: usize = axes.iter().map(|&a| s[a]).product();
    let mean_of = |b: &mut Builder, v: ValueId| -> NResult<ValueId> {
        let sum = b.reduce(ReduceOp::Sum, v, &axes, true)?;
        b.binary_scalar(BinaryOp::Div, sum, count.max(1) as f64)
    };
    let mean = mean_of(b, x)?;
    let sq = b.binary(BinaryOp::Mul, x, x)?;
    let mean_sq = mean_of(b, sq)?;
    let sq_mean = b.binary(BinaryOp::Mul, mean, mean)?;
    let var = b.binary(BinaryOp::Sub, mean_sq, sq_mean)?;
    let std = b.unary(UnaryOp::Sqrt, var)?;
    let std = b.binary_scalar(BinaryOp::Add, std, 1e-9)?;
    let d = b.binary(BinaryOp::Sub, x, mean)?;
    b.binary(BinaryOp::Div, d, std)
}

/// GroupNormalization (opset 21: per-channel scale and bias; `stash_type` as LayerNorm's):
/// the channels split into `num_groups` groups normalised over their channels and spatial
/// positions.
pub(super) fn group_normalization(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let dt = b.dtype(x);
    if s.len() < 3 || !dt.is_float() {
        return invalid(format!("input must be float [N, C, D...], got {dt}{s:?}"));
    }
    if cx.opset < 21 {
        return unsupported("GroupNormalization before opset 21 (per-group scale and bias)");
    }
    let groups = match cx.int_opt("num_groups")? {
        Some(g) if g >= 1 && s[1].is_multiple_of(g as usize) => g as usize,
        g => {
            return invalid(format!(
                "num_groups must divide the {} channels, got {g:?}",
                s[1]
            ))
        }
    };
    let stash = match cx.int("stash_type", 1)? {
        1 => DType::F32,
        other => return unsupported(format!("stash_type {other}")),
    };
    let eps = cx.float("epsilon", 1e-5)? as f64;
    let per_group: usize = s[1..].iter().product::<usize>() / groups;
    let g = b.reshape(x, vec![s[0], groups, per_group])?;
    let g = b.cast(g, stash)?;
    let (_, d) = center(b, g, &[2])?;
    let inv = inv_std(b, d, &[2], eps)?;
    let y = b.binary(BinaryOp::Mul, d, inv)?;
    let y = b.cast(y, dt)?;
    let y = b.reshape(y, s.clone())?;
    let scale = per_channel(b, cx.input(1)?, s.len())?;
    let bias = per_channel(b, cx.input(2)?, s.len())?;
    let y = b.binary(BinaryOp::Mul, y, scale)?;
    b.binary(BinaryOp::Add, y, bias)
}
