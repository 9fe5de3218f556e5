//! One-hot encodings: Hardmax and OneHot.
//!
//! Invariant: both compare an index tensor with a constant iota along the encoded axis (an
//! EQUAL that broadcasts), so the result is exact: one `on` value per position where the index
//! matches and `off` elsewhere; an index outside the axis matches nothing.

use crate::builder::{invalid, norm_axis, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::BinaryOp;
use kiln_ir::{DType, Op, ValueId};

/// Hardmax: 1 at the first maximum along `axis`, 0 elsewhere (before opset 13 over the input
/// coerced to 2-D at `axis`, like Softmax).
pub(super) fn hardmax(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let dt = b.dtype(x);
    if !dt.is_numeric() {
        return invalid(format!("Hardmax of {dt}"));
    }
    let (v, axis) = if cx.opset >= 13 {
        (x, norm_axis(cx.int("axis", -1)?, s.len())?)
    } else {
        let axis = norm_axis(cx.int("axis", 1)?, s.len())?;
        let rows: usize = s[..axis].iter().product();
        let cols: usize = s[axis..].iter().product();
        (b.reshape(x, vec![rows, cols])?, 1)
    };
    let vs = b.shape(v);
    let idx = b.add(Op::ArgMax { axis }, &[v])?;
    let idx = b.cast(idx, DType::I64)?;
    let mut kept = vs.clone();
    kept[axis] = 1;
    let idx = b.reshape(idx, kept)?;
    let positions = b.iota(vs[axis], axis, vs.len())?;
    let hit = b.binary(BinaryOp::Equal, positions, idx)?;
    let y = b.cast(hit, dt)?;
    let y = b.broadcast_to(y, &vs)?;
    b.reshape(y, s)
}

/// OneHot: `(indices, depth, values = [off, on])`; a new axis of `depth` at `axis`; negative
/// indices count from the end of it.
pub(super) fn one_hot(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let indices = cx.input(0)?;
    let depth = match b.need_floats(cx.input(1)?, "depth")?.as_slice() {
        [d] if *d >= 1.0 && *d <= u32::MAX as f64 => *d as usize,
        other => return invalid(format!("depth must be one positive number, got {other:?}")),
    };
    let values = cx.input(2)?;
    if b.shape(values) != [2] {
        return invalid(format!(
            "values must be [off, on], got shape {:?}",
            b.shape(values)
        ));
    }
    let s = b.shape(indices);
    let rank = s.len() + 1;
    let axis = norm_axis(cx.int("axis", -1)?, rank)?;
    let idx = b.cast(indices, DType::I64)?;
    let size = b.scalar(DType::I64, depth as f64);
    let idx = super::select::wrap_negative(b, idx, size)?;
    let mut with_axis = s.clone();
    with_axis.insert(axis, 1);
    let idx = b.reshape(idx, with_axis)?;
    let positions = b.iota(depth, axis, rank)?;
    let hit = b.binary(BinaryOp::Equal, positions, idx)?;
    let off = b.slice_axis(values, 0, 0, 1, 1)?;
    let on = b.slice_axis(values, 0, 1, 1, 1)?;
    let (off, on) = (b.reshape(off, vec![])?, b.reshape(on, vec![])?);
    let y = b.select(hit, on, off)?;
    let mut out = s;
    out.insert(axis, depth);
    b.broadcast_to(y, &out)
}
