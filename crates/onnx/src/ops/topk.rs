//! TopK: the `k` largest (or smallest) elements along an axis, with their indices.
//!
//! Invariant: the result is exact and deterministic without a sort: each element's rank is the
//! number of elements that beat it (greater, or equal at a lower index; mirrored for
//! `largest=0`), so ranks are a permutation of `0..n` and ties keep index order, as ONNX
//! requires; output `r` is then the one element of rank `r`, picked by a max-reduction over the
//! elements masked by `rank == r`. Both steps are reductions over the axis (quadratic in its
//! length), computed by compiled kernels like any other reduction. NaNs compare false (they
//! rank last among the largest).

use crate::builder::{invalid, norm_axis, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, ReduceOp};
use kiln_ir::{DType, ValueId};

/// `x` with a size-1 axis inserted at `at`.
fn unsqueeze(b: &mut Builder, x: ValueId, at: usize) -> NResult<ValueId> {
    let mut s = b.shape(x);
    s.insert(at, 1);
    b.reshape(x, s)
}

/// Outputs: values, indices (i64).
pub(super) fn top_k(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let dt = b.dtype(x);
    if !dt.is_numeric() {
        return unsupported(format!("TopK of {dt}"));
    }
    let axis = norm_axis(cx.int("axis", -1)?, s.len())?;
    let n = s[axis];
    let k = if cx.opset >= 10 {
        match b.need_ints(cx.input(1)?, "k")?.as_slice() {
            [k] => *k,
            other => return invalid(format!("k must be one integer, got {other:?}")),
        }
    } else {
        cx.int("k", -1)?
    };
    let k = match usize::try_from(k) {
        Ok(k) if k <= n => k,
        _ => return invalid(format!("k must be in 0..={n}, got {k}")),
    };
    let largest = cx.flag("largest", true)?;
    // Any order is allowed when unsorted; this one is sorted.
    cx.flag("sorted", true)?;
    let (values, indices) = top_k_along(b, x, axis, k, largest)?;
    Ok(vec![values, indices])
}

/// The `k` largest (or smallest) elements of `x` along `axis`, sorted, ties in index order, and
/// their i64 indices.
pub(super) fn top_k_along(
    b: &mut Builder,
    x: ValueId,
    axis: usize,
    k: usize,
    largest: bool,
) -> NResult<(ValueId, ValueId)> {
    let s = b.shape(x);
    let dt = b.dtype(x);
    let n = s[axis];
    // rank[i] = #{ j : x[j] beats x[i] } over [.., i, j, ..].
    let xi = unsqueeze(b, x, axis + 1)?;
    let xj = unsqueeze(b, x, axis)?;
    let better = if largest {
        b.binary(BinaryOp::Greater, xj, xi)?
    } else {
        b.binary(BinaryOp::Greater, xi, xj)?
    };
    let equal = b.binary(BinaryOp::Equal, xj, xi)?;
    let i = b.iota(n, axis, s.len() + 1)?;
    let j = b.iota(n, axis + 1, s.len() + 1)?;
    let before = b.binary(BinaryOp::Greater, i, j)?;
    let tie = b.binary(BinaryOp::LogicalAnd, equal, before)?;
    let beats = b.binary(BinaryOp::LogicalOr, better, tie)?;
    let beats = b.cast(beats, DType::I32)?;
    let rank = b.reduce(ReduceOp::Sum, beats, &[axis + 1], false)?;
    // Output r picks the element of rank r, over [.., r, i, ..].
    let rank_i = unsqueeze(b, rank, axis)?;
    let mut slots = vec![1; s.len() + 1];
    slots[axis] = k;
    let r = b.const_tensor(slots.clone(), (0..k as i32).collect())?;
    let hit = b.binary(BinaryOp::Equal, rank_i, r)?;
    let lowest = if dt.is_float() {
        f64::NEG_INFINITY
    } else if dt.is_unsigned() {
        0.0
    } else {
        -(2f64.powi(dt.size_bytes() as i32 * 8 - 1))
    };
    let floor = b.scalar(dt, lowest);
    let x_i = unsqueeze(b, x, axis)?;
    let picked = b.select(hit, x_i, floor)?;
    let values = b.reduce(ReduceOp::Max, picked, &[axis + 1], false)?;
    let iota = b.iota(n, axis + 1, s.len() + 1)?;
    let none = b.scalar(DType::I64, -1.0);
    let which = b.select(hit, iota, none)?;
    let indices = b.reduce(ReduceOp::Max, which, &[axis + 1], false)?;
    Ok((values, indices))
}
