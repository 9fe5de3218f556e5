//! Shared helpers: error construction, row-major strides, broadcasting and per-axis index maps.
//!
//! Invariant: every helper here is total on shapes that `infer_type` accepted; index maps only
//! ever produce in-bounds offsets or `None` (which selects the fill value), so no kernel built on
//! them can index out of range.

use crate::OpError;
use half::f16;
use kiln_ir::{DType, Element, Op, Tensor, TensorData};

/// An [`OpError::Unsupported`] naming `op`.
pub fn fail(op: &Op, reason: impl Into<String>) -> OpError {
    fail_named(op.name(), reason)
}

/// An [`OpError::Unsupported`] naming an op by its text-form name.
pub fn fail_named(op: &str, reason: impl Into<String>) -> OpError {
    OpError::Unsupported {
        op: op.into(),
        reason: reason.into(),
    }
}

/// Row-major strides (in elements) of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Per-axis index map: entry `i` of `maps[d]` is the input coordinate read for output coordinate
/// `i` along axis `d`, or `None` to write `fill`. The output has `maps[d].len()` elements along
/// axis `d`, in row-major order.
pub fn map_axes<T: Copy>(
    x: &[T],
    in_shape: &[usize],
    maps: &[Vec<Option<usize>>],
    fill: T,
) -> Vec<T> {
    let total: usize = maps.iter().map(Vec::len).product();
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return out;
    }
    let st = strides(in_shape);
    fn rec<T: Copy>(
        x: &[T],
        st: &[usize],
        maps: &[Vec<Option<usize>>],
        d: usize,
        off: Option<usize>,
        fill: T,
        out: &mut Vec<T>,
    ) {
        if d == maps.len() {
            out.push(off.and_then(|o| x.get(o).copied()).unwrap_or(fill));
            return;
        }
        for m in &maps[d] {
            let o = match (off, m) {
                (Some(base), Some(i)) => Some(base + i * st[d]),
                _ => None,
            };
            rec(x, st, maps, d + 1, o, fill, out);
        }
    }
    rec(x, &st, maps, 0, Some(0), fill, &mut out);
    out
}

/// The index maps that broadcast `in_shape` to `out_shape` (equal ranks, TOSA rule).
pub fn broadcast_maps(in_shape: &[usize], out_shape: &[usize]) -> Vec<Vec<Option<usize>>> {
    in_shape
        .iter()
        .zip(out_shape)
        .map(|(&i, &o)| (0..o).map(|k| Some(if i == 1 { 0 } else { k })).collect())
        .collect()
}

/// `x`'s elements broadcast to `out_shape` (a copy when the shapes already agree).
pub fn broadcast_vec<T: Element>(x: &[T], in_shape: &[usize], out_shape: &[usize]) -> Vec<T> {
    if in_shape == out_shape {
        x.to_vec()
    } else {
        map_axes(
            x,
            in_shape,
            &broadcast_maps(in_shape, out_shape),
            T::default(),
        )
    }
}

/// `t`'s data broadcast to `out_shape`.
pub fn broadcast_data(t: &Tensor, out_shape: &[usize]) -> TensorData {
    kiln_ir::dispatch_data!(t.data(), v => Element::wrap(broadcast_vec(v, t.shape(), out_shape)))
}

/// Float data (f32 or f16) widened to f32; `None` for other dtypes.
pub fn float_vec(data: &TensorData) -> Option<Vec<f32>> {
    match data {
        TensorData::F32(v) => Some(v.clone()),
        TensorData::F16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
        TensorData::BF16(v) => Some(v.iter().map(|x| x.to_f32()).collect()),
        _ => None,
    }
}

/// f32 results stored in `dtype`: f16 and bf16 round to nearest even, anything else is f32.
pub fn float_data(values: Vec<f32>, dtype: DType) -> TensorData {
    match dtype {
        DType::F16 => TensorData::F16(values.into_iter().map(f16::from_f32).collect()),
        DType::BF16 => TensorData::BF16(values.into_iter().map(half::bf16::from_f32).collect()),
        _ => TensorData::F32(values),
    }
}

/// Integer data (any integer dtype) as i32 with `zp` subtracted (wrapping); `None` otherwise.
pub fn int_vec_minus(data: &TensorData, zp: i32) -> Option<Vec<i32>> {
    let conv = |x: i64| (x as i32).wrapping_sub(zp);
    Some(match data {
        TensorData::I8(v) => v.iter().map(|&x| conv(x.into())).collect(),
        TensorData::U8(v) => v.iter().map(|&x| conv(x.into())).collect(),
        TensorData::I16(v) => v.iter().map(|&x| conv(x.into())).collect(),
        TensorData::I32(v) => v.iter().map(|&x| conv(x.into())).collect(),
        TensorData::I64(v) => v.iter().map(|&x| conv(x)).collect(),
        _ => return None,
    })
}

/// Multiply-accumulate in the accumulator type: f32 for floats, wrapping i32 for integers.
pub trait Acc: Copy + Default + Send + Sync {
    /// `self + a * b`.
    fn mac(self, a: Self, b: Self) -> Self;
}

impl Acc for f32 {
    #[inline]
    fn mac(self, a: f32, b: f32) -> f32 {
        self + a * b
    }
}

impl Acc for f64 {
    #[inline]
    fn mac(self, a: f64, b: f64) -> f64 {
        self + a * b
    }
}

impl Acc for i32 {
    #[inline]
    fn mac(self, a: i32, b: i32) -> i32 {
        self.wrapping_add(a.wrapping_mul(b))
    }
}

/// True for NaN, for any element type (only floats can be unordered with themselves).
#[inline]
pub fn is_nan<T: PartialOrd>(x: &T) -> bool {
    x.partial_cmp(x).is_none()
}
