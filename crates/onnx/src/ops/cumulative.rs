//! CumSum and CumProd: running sums and products along one axis (forward or reversed,
//! inclusive or exclusive).
//!
//! Invariant: element `i` of the axis is a masked reduction over the whole axis, `out[i] =
//! reduce_k (k in window(i) ? x[k] : identity)`, with the window `k <= i` (`k < i` exclusive,
//! `k >= i` / `k > i` reversed) a comparison of index iotas; the reduction visits `k` in increasing order,
//! as a running sum does, so float results agree with a sequential scan up to how the
//! identity terms (exact zeros / ones) are added. Cost is quadratic in the axis length.

use crate::builder::{invalid, norm_axis, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, ReduceOp};
use kiln_ir::ValueId;

pub(super) fn cumulative(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let s = b.shape(x);
    let dt = b.dtype(x);
    if !dt.is_numeric() {
        return unsupported(format!("{} of {dt}", cx.op_type));
    }
    let axis = match b.need_ints(cx.input(1)?, "axis")?.as_slice() {
        [a] => norm_axis(*a, s.len())?,
        other => return invalid(format!("axis must be one integer, got {other:?}")),
    };
    let exclusive = cx.flag("exclusive", false)?;
    let reverse = cx.flag("reverse", false)?;
    let (kind, identity) = if cx.op_type == "CumProd" {
        (ReduceOp::Product, 1.0)
    } else {
        (ReduceOp::Sum, 0.0)
    };
    let n = s[axis];
    // [.., 1 (i), n (k), ..]: every output position sees the whole axis.
    let mut spread = s.clone();
    spread.insert(axis, 1);
    let xk = b.reshape(x, spread)?;
    let i = b.iota(n, axis, s.len() + 1)?;
    let k = b.iota(n, axis + 1, s.len() + 1)?;
    let mask = match (reverse, exclusive) {
        (false, false) => b.binary(BinaryOp::GreaterEqual, i, k)?,
        (false, true) => b.binary(BinaryOp::Greater, i, k)?,
        (true, false) => b.binary(BinaryOp::GreaterEqual, k, i)?,
        (true, true) => b.binary(BinaryOp::Greater, k, i)?,
    };
    let id = b.scalar(dt, identity);
    let terms = b.select(mask, xk, id)?;
    let r = b.reduce(kind, terms, &[axis + 1], false)?;
    b.reshape(r, s)
}
