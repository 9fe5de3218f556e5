//! REDUCE_* along one axis (kept with size 1) and ARGMAX (axis removed, i32 result).
//!
//! Invariant: a tensor is viewed as `[outer, len, inner]` around the axis. Float sums and products
//! accumulate in f32 (f16 and bf16 rounded once at the end; f64 in f64), integer ones wrap. Max/min propagate NaN.
//! An empty axis gives the identity: sum 0, product 1, max -inf / dtype minimum, min +inf / dtype
//! maximum, all true, any false. ARGMAX returns the first index of the maximum (the first NaN
//! if there is one, like numpy).

use crate::util::{fail_named, float_data, float_vec, is_nan};
use crate::OpError;
use kiln_ir::op::ReduceOp;
use kiln_ir::{Tensor, TensorData};

fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// Folds every `[o, :, i]` fibre with `f`, starting from `init`.
fn fold<T: Copy, A: Copy>(
    v: &[T],
    (outer, len, inner): (usize, usize, usize),
    init: A,
    f: impl Fn(A, T) -> A,
) -> Vec<A> {
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut acc = init;
            for k in 0..len {
                acc = f(acc, v[(o * len + k) * inner + i]);
            }
            out.push(acc);
        }
    }
    out
}

fn pick<T: PartialOrd + Copy>(max: bool) -> impl Fn(T, T) -> T {
    move |acc: T, x: T| {
        if is_nan(&acc) || is_nan(&x) {
            if is_nan(&acc) {
                acc
            } else {
                x
            }
        } else if (max && x > acc) || (!max && x < acc) {
            x
        } else {
            acc
        }
    }
}

macro_rules! int_reduce {
    ($v:expr, $t:ty, $kind:expr, $dims:expr) => {{
        let v: &[$t] = $v;
        match $kind {
            ReduceOp::Sum => fold(v, $dims, 0 as $t, |a, x| a.wrapping_add(x)),
            ReduceOp::Product => fold(v, $dims, 1 as $t, |a, x| a.wrapping_mul(x)),
            ReduceOp::Max => fold(v, $dims, <$t>::MIN, pick(true)),
            _ => fold(v, $dims, <$t>::MAX, pick(false)),
        }
    }};
}

/// REDUCE of `kind` along `axis`.
pub fn reduce(kind: ReduceOp, x: &Tensor, axis: usize) -> Result<TensorData, OpError> {
    let dims = split(x.shape(), axis);
    let bad = || fail_named("reduce", format!("{kind:?} does not accept {}", x.dtype()));
    Ok(match (kind, x.data()) {
        (ReduceOp::All, TensorData::Bool(v)) => {
            TensorData::Bool(fold(v, dims, true, |a, b| a && b))
        }
        (ReduceOp::Any, TensorData::Bool(v)) => {
            TensorData::Bool(fold(v, dims, false, |a, b| a || b))
        }
        (ReduceOp::All | ReduceOp::Any, _) | (_, TensorData::Bool(_)) => return Err(bad()),
        (_, TensorData::F64(v)) => TensorData::F64(match kind {
            ReduceOp::Sum => fold(v, dims, 0.0f64, |a, b| a + b),
            ReduceOp::Product => fold(v, dims, 1.0f64, |a, b| a * b),
            ReduceOp::Max => fold(v, dims, f64::NEG_INFINITY, pick(true)),
            _ => fold(v, dims, f64::INFINITY, pick(false)),
        }),
        (_, TensorData::F32(_) | TensorData::F16(_) | TensorData::BF16(_)) => {
            let v = float_vec(x.data()).ok_or_else(bad)?;
            let r = match kind {
                ReduceOp::Sum => fold(&v, dims, 0.0f32, |a, b| a + b),
                ReduceOp::Product => fold(&v, dims, 1.0f32, |a, b| a * b),
                ReduceOp::Max => fold(&v, dims, f32::NEG_INFINITY, pick(true)),
                _ => fold(&v, dims, f32::INFINITY, pick(false)),
            };
            float_data(r, x.dtype())
        }
        (_, TensorData::I8(v)) => TensorData::I8(int_reduce!(v, i8, kind, dims)),
        (_, TensorData::U8(v)) => TensorData::U8(int_reduce!(v, u8, kind, dims)),
        (_, TensorData::I16(v)) => TensorData::I16(int_reduce!(v, i16, kind, dims)),
        (_, TensorData::I32(v)) => TensorData::I32(int_reduce!(v, i32, kind, dims)),
        (_, TensorData::I64(v)) => TensorData::I64(int_reduce!(v, i64, kind, dims)),
        (_, TensorData::U16(v)) => TensorData::U16(int_reduce!(v, u16, kind, dims)),
        (_, TensorData::U32(v)) => TensorData::U32(int_reduce!(v, u32, kind, dims)),
        (_, TensorData::U64(v)) => TensorData::U64(int_reduce!(v, u64, kind, dims)),
    })
}

fn argmax_vec<T: PartialOrd + Copy>(v: &[T], dims: (usize, usize, usize)) -> Vec<i32> {
    let (outer, len, inner) = dims;
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| v[(o * len + k) * inner + i];
            let mut best = 0usize;
            for k in 1..len {
                let (b, x) = (at(best), at(k));
                if is_nan(&b) {
                    break;
                }
                if x > b || is_nan(&x) {
                    best = k;
                }
            }
            out.push(i32::try_from(best).unwrap_or(i32::MAX));
        }
    }
    out
}

/// ARGMAX along `axis` (non-empty, checked by `infer_type`).
pub fn argmax(x: &Tensor, axis: usize) -> TensorData {
    let dims = split(x.shape(), axis);
    TensorData::I32(kiln_ir::dispatch_data!(x.data(), v => argmax_vec(v, dims)))
}
