//! Selections by index: Compress (a constant condition), GatherND and ReverseSequence (runtime
//! indices and lengths).
//!
//! Invariant: each becomes one GATHER or GATHER_ELEMENTS whose index tensor is either a
//! constant (Compress) or computed in the graph from the op's index inputs (negative indices
//! wrapped, strides applied, lengths compared), so runtime indices stay runtime.

use crate::builder::{invalid, norm_axis, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, ReduceOp};
use kiln_ir::{DType, Op, ValueId};

/// `idx` as i64 with its negative entries wrapped by `n` (a scalar, or sizes broadcast along
/// `idx`'s axes).
pub(super) fn wrap_negative(b: &mut Builder, idx: ValueId, n: ValueId) -> NResult<ValueId> {
    if !b.dtype(idx).is_int() {
        return invalid(format!("indices must be integers, got {}", b.dtype(idx)));
    }
    let idx = b.cast(idx, DType::I64)?;
    let zero = b.scalar(DType::I64, 0.0);
    let negative = b.binary(BinaryOp::Greater, zero, idx)?;
    let wrapped = b.binary(BinaryOp::Add, idx, n)?;
    b.select(negative, wrapped, idx)
}

/// The row-major position within `dims` of each index tuple along the last axis of `idx`
/// (`[.., k] -> [..]`), negative entries wrapped.
pub(super) fn linear_index(b: &mut Builder, idx: ValueId, dims: &[usize]) -> NResult<ValueId> {
    let r = b.rank(idx);
    let mut last = vec![1; r];
    last[r - 1] = dims.len();
    let sizes = b.const_tensor(last.clone(), dims.iter().map(|&d| d as i64).collect())?;
    let idx = wrap_negative(b, idx, sizes)?;
    let strides: Vec<i64> = (0..dims.len())
        .map(|j| dims[j + 1..].iter().product::<usize>() as i64)
        .collect();
    let strides = b.const_tensor(last, strides)?;
    let scaled = b.binary(BinaryOp::Mul, idx, strides)?;
    b.reduce(ReduceOp::Sum, scaled, &[r - 1], false)
}

/// Compress: the slices along `axis` (of the flattened input without one) whose condition is
/// true; a condition shorter than the axis leaves the rest out. The condition must be known
/// at import (the result's size depends on it).
pub(super) fn compress(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let mut x = cx.input(0)?;
    let cond = b.need_ints(cx.input(1)?, "condition")?;
    let axis = match cx.int_opt("axis")? {
        Some(a) => norm_axis(a, b.rank(x))?,
        None => {
            let n = b.ty(x).num_elements();
            x = b.reshape(x, vec![n])?;
            0
        }
    };
    let dim = b.shape(x)[axis];
    if cond.len() > dim {
        return invalid(format!(
            "condition has {} entries for an axis of {dim}",
            cond.len()
        ));
    }
    let keep: Vec<i64> = (0..cond.len() as i64)
        .filter(|&i| cond[i as usize] != 0)
        .collect();
    let idx = b.const_tensor(vec![keep.len()], keep)?;
    b.add(Op::Gather { axis }, &[x, idx])
}

/// GatherND: `out[i..] = data[batch.., indices[i.., :], ..]`, as one GATHER from the data
/// flattened to `[batch * indexed, rest]` at linear positions computed from the indices.
pub(super) fn gather_nd(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (data, indices) = (cx.input(0)?, cx.input(1)?);
    let (ds, is) = (b.shape(data), b.shape(indices));
    let batch = usize::try_from(cx.int("batch_dims", 0)?)
        .map_err(|_| crate::builder::NodeError::Invalid("batch_dims must be >= 0".into()))?;
    let Some(&k) = is.last() else {
        return invalid("indices must have rank at least 1");
    };
    if batch >= is.len() || batch + k > ds.len() || ds[..batch] != is[..batch] {
        return invalid(format!(
            "data {ds:?} and indices {is:?} do not fit batch_dims {batch}"
        ));
    }
    let nb: usize = ds[..batch].iter().product();
    let indexed = &ds[batch..batch + k];
    let positions: usize = indexed.iter().product();
    let rest: Vec<usize> = ds[batch + k..].to_vec();
    let row: usize = rest.iter().product();
    // Linear position within each batch.
    let lin = linear_index(b, indices, indexed)?;
    // Plus each batch's offset.
    let mut batch_shape = vec![1; is.len() - 1];
    batch_shape[..batch].copy_from_slice(&is[..batch]);
    let offsets = b.const_tensor(
        batch_shape,
        (0..nb as i64).map(|i| i * positions as i64).collect(),
    )?;
    let lin = b.binary(BinaryOp::Add, lin, offsets)?;
    let flat = b.reshape(data, vec![nb * positions, row])?;
    let picked = b.add(Op::Gather { axis: 0 }, &[flat, lin])?;
    let mut out = is[..is.len() - 1].to_vec();
    out.extend(rest);
    b.reshape(picked, out)
}

/// ReverseSequence: along `time_axis`, the first `sequence_lens[b]` steps of each batch entry
/// reversed, the rest kept.
pub(super) fn reverse_sequence(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (x, lens) = (cx.input(0)?, cx.input(1)?);
    let s = b.shape(x);
    if s.len() < 2 {
        return invalid(format!("input must have rank at least 2, got {s:?}"));
    }
    let time = norm_axis(cx.int("time_axis", 0)?, s.len())?;
    let batch = norm_axis(cx.int("batch_axis", 1)?, s.len())?;
    if time == batch || time > 1 || batch > 1 || b.shape(lens) != [s[batch]] {
        return invalid(format!(
            "time_axis {time} and batch_axis {batch} must be 0 and 1 in some order, with one length per batch entry"
        ));
    }
    let mut along = vec![1; s.len()];
    along[batch] = s[batch];
    let len = b.cast(lens, DType::I64)?;
    let len = b.reshape(len, along)?;
    let t = b.iota(s[time], time, s.len())?;
    let inside = b.binary(BinaryOp::Greater, len, t)?;
    let last = b.binary_scalar(BinaryOp::Sub, len, 1.0)?;
    let mirrored = b.binary(BinaryOp::Sub, last, t)?;
    let idx = b.select(inside, mirrored, t)?;
    let idx = b.broadcast_to(idx, &s)?;
    b.add(Op::GatherElements { axis: time }, &[x, idx])
}
