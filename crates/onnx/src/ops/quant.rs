//! Quantisation ops: QuantizeLinear/DequantizeLinear (per-tensor and per-axis) and the integer
//! convs and matmuls (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger). The QDQ form
//! (`DequantizeLinear -> op -> QuantizeLinear`) is fused into integer ops by `qdq`, which shares
//! the RESCALE helpers below.
//!
//! Invariant: integer arithmetic follows TOSA: zero points become op attributes, products
//! accumulate in i32, and requantisation is a RESCALE whose 32-bit multiplier and shift are
//! derived from the constant float scales as TFLite does (`scale = multiplier * 2^-shift`).

use crate::builder::norm_axis;
use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use crate::ops::conv::conv_core;
use crate::ops::matmul::matmul_nd;
use crate::tensor_io::dtype_from_onnx;
use kiln_ir::op::{BinaryOp, MatMulAttrs, RescaleAttrs, RoundingMode, UnaryOp};
use kiln_ir::{DType, Op, ValueId};

/// `scale` as a Q31 multiplier and a right shift: `scale ~= multiplier * 2^-shift`.
pub(crate) fn quantize_multiplier(scale: f64) -> Option<(i32, u8)> {
    if !(scale.is_finite() && scale > 0.0) {
        return None;
    }
    // frexp: scale = m * 2^e with m in [0.5, 1).
    let mut e = scale.log2().floor() as i32 + 1;
    let mut m = scale / 2f64.powi(e);
    while m >= 1.0 {
        m /= 2.0;
        e += 1;
    }
    while m < 0.5 {
        m *= 2.0;
        e -= 1;
    }
    let mut q = (m * (1u64 << 31) as f64).round() as i64;
    if q == 1 << 31 {
        q /= 2;
        e += 1;
    }
    let mut shift = 31 - e;
    if shift > 62 {
        q >>= (shift - 62).min(63);
        shift = 62;
    }
    if shift < 2 {
        return None;
    }
    Some((q as i32, shift as u8))
}

/// A zero point that must be one value for the whole tensor (0 when absent).
fn zero_point(b: &Builder, v: Option<ValueId>, what: &str) -> NResult<i32> {
    let Some(v) = v else { return Ok(0) };
    let vals = b.need_ints(v, what)?;
    match vals.split_first() {
        None => Ok(0),
        Some((&first, rest)) if rest.iter().all(|&x| x == first) => Ok(first as i32),
        Some(_) => unsupported(format!(
            "{what} differs per channel; only one zero point per tensor is supported"
        )),
    }
}

/// A weight and the single zero point CONV2D/MATMUL take for it. A zero point that differs along
/// `axis` (per output channel) is subtracted from the weight in i16 instead, which is exact for
/// 8-bit weights, and the zero point becomes 0.
pub(super) fn weight_and_zero_point(
    b: &mut Builder,
    w: ValueId,
    zp: Option<ValueId>,
    axis: usize,
    what: &str,
) -> NResult<(ValueId, i32)> {
    let Some(zp) = zp else { return Ok((w, 0)) };
    let vals = b.need_ints(zp, what)?;
    if vals.windows(2).all(|p| p[0] == p[1]) {
        return Ok((w, vals.first().copied().unwrap_or(0) as i32));
    }
    let (wide_ok, rank) = (matches!(b.dtype(w), DType::I8 | DType::U8), b.rank(w));
    if !wide_ok || axis >= rank || b.shape(w)[axis] != vals.len() {
        return unsupported(format!(
            "{what} of {} values does not fit weight {} along axis {axis}",
            vals.len(),
            b.ty(w)
        ));
    }
    let wide = b.cast(w, DType::I16)?;
    let zp16 = b.cast(zp, DType::I16)?;
    let zp16 = along_axis(b, zp16, axis, rank)?;
    let shifted = b.binary(BinaryOp::Sub, wide, zp16)?;
    Ok((shifted, 0))
}

/// Reshapes a 1-D per-axis parameter so it broadcasts along `axis` of a rank-`rank` tensor.
fn along_axis(b: &mut Builder, p: ValueId, axis: usize, rank: usize) -> NResult<ValueId> {
    let s = b.shape(p);
    if s.len() == 1 && s[0] > 1 && rank > 0 {
        let mut shape = vec![1; rank];
        shape[axis] = s[0];
        b.reshape(p, shape)
    } else if b.ty(p).num_elements() == 1 {
        b.reshape(p, vec![])
    } else {
        Ok(p)
    }
}

/// The axis of per-axis quantisation (only read when the scale has several elements).
/// The quantisation axis: `axis` for per-axis scales, 0 (unused) for a per-tensor scale, whose
/// `axis` attribute is allowed but has no effect.
fn quant_axis(b: &Builder, cx: &NodeCx, scale: ValueId, rank: usize) -> NResult<usize> {
    let axis = cx.int("axis", 1)?;
    if b.ty(scale).num_elements() <= 1 {
        return Ok(0);
    }
    norm_axis(axis, rank)
}

/// How a scale or zero point applies: its block size along the quantisation axis (0: per
/// tensor or per axis, as its shape says).
fn block_size(cx: &NodeCx) -> NResult<usize> {
    match cx.int("block_size", 0)? {
        b if b >= 0 => Ok(b as usize),
        b => invalid(format!("block_size must be nonnegative, got {b}")),
    }
}

/// A scale or zero point shaped to broadcast against an input of shape `x`: per tensor, per
/// axis (1-D along `axis`), or blocked (the input's rank, `ceil(n / block)` along `axis`, each
/// value repeated over its block).
fn quant_param(
    b: &mut Builder,
    p: ValueId,
    axis: usize,
    x: &[usize],
    block: usize,
) -> NResult<ValueId> {
    if block == 0 {
        return along_axis(b, p, axis, x.len());
    }
    let s = b.shape(p);
    let n = x[axis];
    let blocks = n.div_ceil(block);
    let fits = s.len() == x.len()
        && (0..x.len()).all(|a| {
            if a == axis {
                s[a] == blocks
            } else {
                s[a] == x[a]
            }
        });
    if !fits {
        return invalid(format!(
            "a blocked parameter for input {x:?} (block {block} along axis {axis}) has shape {s:?}"
        ));
    }
    let mut split = s.clone();
    split.insert(axis + 1, 1);
    let p = b.reshape(p, split)?;
    let mut multiples = vec![1; x.len() + 1];
    multiples[axis + 1] = block;
    let p = b.add(kiln_ir::Op::Tile { multiples }, &[p])?;
    let mut merged = s;
    merged[axis] = blocks * block;
    let p = b.reshape(p, merged)?;
    b.slice_axis(p, axis, 0, n, 1)
}

pub(super) fn dequantize(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let block = block_size(cx)?;
    let x = cx.input(0)?;
    let scale = cx.input(1)?;
    let xs = b.shape(x);
    let axis = quant_axis(b, cx, scale, xs.len())?;
    let fdt = b.dtype(scale);
    if !fdt.is_float() {
        return invalid(format!("x_scale must be float, got {fdt}"));
    }
    // `x - zero_point` in i32, then one conversion (ONNX's definition, and onnxruntime's: an
    // i32 `x` above 2^24 is rounded once, not twice).
    let mut y = x;
    if let Some(zp) = cx.opt_input(2) {
        let zp = quant_param(b, zp, axis, &xs, block)?;
        let xi = b.cast(x, DType::I32)?;
        let zi = b.cast(zp, DType::I32)?;
        y = b.binary(BinaryOp::Sub, xi, zi)?;
    }
    let mut y = b.cast(y, DType::F32)?;
    let s = quant_param(b, scale, axis, &xs, block)?;
    let s = b.cast(s, DType::F32)?;
    y = b.binary(BinaryOp::Mul, y, s)?;
    b.cast(y, fdt)
}

pub(super) fn quantize(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let block = block_size(cx)?;
    let x = cx.input(0)?;
    let scale = cx.input(1)?;
    let zp = cx.opt_input(2);
    let xs = b.shape(x);
    let axis = quant_axis(b, cx, scale, xs.len())?;
    let code = cx.int("output_dtype", 0)?;
    let narrow = match zp {
        Some(z) => b.narrow.get(&z).copied(),
        None => crate::tensor_io::Narrow::from_onnx(code as i32),
    };
    let out = match (zp, code) {
        (Some(z), _) => b.dtype(z),
        (None, 0) => DType::U8,
        (None, code) => {
            dtype_from_onnx(code as i32).map_err(crate::builder::NodeError::Unsupported)?
        }
    };
    let (lo, hi) = match (narrow, out) {
        (Some(n), _) => {
            let (lo, hi) = n.range();
            (lo as f64, hi as f64)
        }
        (None, out) => match out.int_range() {
            Some((lo, hi)) if out.size_bytes() <= 4 => (lo as f64, hi as f64),
            _ => return unsupported(format!("quantizing to {out}")),
        },
    };
    let xf = b.cast(x, DType::F32)?;
    let s = quant_param(b, scale, axis, &xs, block)?;
    let s = b.cast(s, DType::F32)?;
    let mut y = b.binary(BinaryOp::Div, xf, s)?;
    y = b.unary(UnaryOp::Round, y)?;
    if let Some(z) = zp {
        let z = quant_param(b, z, axis, &xs, block)?;
        let z = b.cast(z, DType::F32)?;
        y = b.binary(BinaryOp::Add, y, z)?;
    }
    y = b.clamp(y, lo, hi)?;
    let y = b.cast(y, out)?;
    if let Some(n) = narrow {
        b.narrow.insert(y, n);
    }
    Ok(y)
}

/// The float scales of an integer product: input, weight (per tensor or per channel), output.
struct Scales {
    input: Vec<f64>,
    weight: Vec<f64>,
    output: Vec<f64>,
}

/// RESCALE of an i32 accumulator by `in_scale * w_scale[c] / out_scale` along `axis`.
fn requantize(
    b: &mut Builder,
    acc: ValueId,
    scales: &Scales,
    out_zp: i32,
    to: DType,
    axis: usize,
) -> NResult<ValueId> {
    let (in_scale, w_scale, out_scale) =
        (&scales.input[..], &scales.weight[..], &scales.output[..]);
    let (&[si], &[so]) = (in_scale, out_scale) else {
        return unsupported("input and output scales must be per-tensor");
    };
    if w_scale.is_empty() {
        return invalid("weight scale is empty");
    }
    let real: Vec<f64> = w_scale.iter().map(|&sw| si * sw / so).collect();
    rescale_by(b, acc, 0, &real, out_zp, to, axis)
}

/// RESCALE of integer `x` to `to`: `out = round((x - input_zp) * real[c]) + output_zp`,
/// saturated, with one real scale per channel along `axis` (or a single one). Each scale becomes
/// a Q31 multiplier and shift ([`quantize_multiplier`]); rounding is TOSA SINGLE_ROUND.
pub(super) fn rescale_by(
    b: &mut Builder,
    x: ValueId,
    input_zp: i32,
    real: &[f64],
    output_zp: i32,
    to: DType,
    axis: usize,
) -> NResult<ValueId> {
    if real.is_empty() {
        return invalid("a rescale needs at least one scale");
    }
    let mut multiplier = Vec::with_capacity(real.len());
    let mut shift = Vec::with_capacity(real.len());
    for &r in real {
        let Some((m, s)) = quantize_multiplier(r) else {
            return unsupported(format!(
                "requantization scale {r} is out of the RESCALE range"
            ));
        };
        multiplier.push(m);
        shift.push(s);
    }
    let channel_axis = (multiplier.len() > 1).then_some(axis);
    b.add(
        Op::Rescale(RescaleAttrs {
            to,
            multiplier,
            shift,
            input_zp,
            output_zp,
            scale32: true,
            rounding: RoundingMode::Single,
            channel_axis,
        }),
        &[x],
    )
}

pub(super) fn matmul_integer(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let a_zp = zero_point(b, cx.opt_input(2), "a_zero_point")?;
    let m = cx.input(1)?;
    let last = b.rank(m).saturating_sub(1);
    let (m, b_zp) = weight_and_zero_point(b, m, cx.opt_input(3), last, "b_zero_point")?;
    matmul_nd(
        b,
        cx.input(0)?,
        m,
        MatMulAttrs {
            a_zp,
            b_zp,
            ..Default::default()
        },
    )
}

pub(super) fn qlinear_matmul(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (a, a_scale, a_zp) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let (m, m_scale, m_zp) = (cx.input(3)?, cx.input(4)?, cx.input(5)?);
    let (y_scale, y_zp) = (cx.input(6)?, cx.input(7)?);
    let last = b.rank(m).saturating_sub(1);
    let (m, b_zp) = weight_and_zero_point(b, m, Some(m_zp), last, "b_zero_point")?;
    let attrs = MatMulAttrs {
        a_zp: zero_point(b, Some(a_zp), "a_zero_point")?,
        b_zp,
        fma: false,
    };
    let acc = matmul_nd(b, a, m, attrs)?;
    let to = b.dtype(y_zp);
    let out_zp = zero_point(b, Some(y_zp), "y_zero_point")?;
    let scales = Scales {
        input: b.need_floats(a_scale, "a_scale")?,
        weight: b.need_floats(m_scale, "b_scale")?,
        output: b.need_floats(y_scale, "y_scale")?,
    };
    let axis = b.rank(acc).saturating_sub(1);
    requantize(b, acc, &scales, out_zp, to, axis)
}

pub(super) fn conv_integer(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x_zp = zero_point(b, cx.opt_input(2), "x_zero_point")?;
    let (w, w_zp) = weight_and_zero_point(b, cx.input(1)?, cx.opt_input(3), 0, "w_zero_point")?;
    conv_core(b, cx, cx.input(0)?, w, None, x_zp, w_zp)
}

pub(super) fn qlinear_conv(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (x, x_scale, x_zp) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let (w, w_scale, w_zp) = (cx.input(3)?, cx.input(4)?, cx.input(5)?);
    let (y_scale, y_zp) = (cx.input(6)?, cx.input(7)?);
    let xz = zero_point(b, Some(x_zp), "x_zero_point")?;
    let (w, wz) = weight_and_zero_point(b, w, Some(w_zp), 0, "w_zero_point")?;
    let acc = conv_core(b, cx, x, w, cx.opt_input(8), xz, wz)?;
    let to = b.dtype(y_zp);
    let out_zp = zero_point(b, Some(y_zp), "y_zero_point")?;
    let scales = Scales {
        input: b.need_floats(x_scale, "x_scale")?,
        weight: b.need_floats(w_scale, "w_scale")?,
        output: b.need_floats(y_scale, "y_scale")?,
    };
    requantize(b, acc, &scales, out_zp, to, 1)
}

/// DynamicQuantizeLinear: `x` (f32) -> `(y: u8, scale, zero_point)` with the range of `x`
/// widened to include 0: `scale = (max - min) / 255` (1 when the range is empty), `zero_point =
/// round(clamp(-min / scale, 0, 255))`, `y = clamp(round(x / scale) + zero_point, 0, 255)`,
/// rounding half to even.
pub(super) fn dynamic_quantize(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    use kiln_ir::op::ReduceOp;
    let x = cx.input(0)?;
    if b.dtype(x) != DType::F32 {
        return invalid(format!("DynamicQuantizeLinear of {}", b.dtype(x)));
    }
    let axes: Vec<usize> = (0..b.rank(x)).collect();
    let zero = b.scalar(DType::F32, 0.0);
    let hi = b.reduce(ReduceOp::Max, x, &axes, false)?;
    let hi = b.binary(BinaryOp::Maximum, hi, zero)?;
    let lo = b.reduce(ReduceOp::Min, x, &axes, false)?;
    let lo = b.binary(BinaryOp::Minimum, lo, zero)?;
    let empty = b.binary(BinaryOp::Equal, hi, lo)?;
    let range = b.binary(BinaryOp::Sub, hi, lo)?;
    let one = b.scalar(DType::F32, 1.0);
    let range = b.select(empty, one, range)?;
    let scale = b.binary_scalar(BinaryOp::Div, range, 255.0)?;
    let zp = b.binary(BinaryOp::Div, lo, scale)?;
    let zp = b.binary(BinaryOp::Sub, zero, zp)?;
    let zp = b.clamp(zp, 0.0, 255.0)?;
    let zp = b.unary(UnaryOp::Round, zp)?;
    let q = b.binary(BinaryOp::Div, x, scale)?;
    let q = b.unary(UnaryOp::Round, q)?;
    let q = b.binary(BinaryOp::Add, q, zp)?;
    let q = b.clamp(q, 0.0, 255.0)?;
    let y = b.cast(q, DType::U8)?;
    let zp = b.cast(zp, DType::U8)?;
    Ok(vec![y, scale, zp])
}
