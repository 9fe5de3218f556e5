//! ScatterElements (and the old Scatter) and ScatterND with run-time indices, as masked
//! reductions: every output position compares itself with every update's target.
//!
//! Invariant: with `reduction = none` an output position takes the update that comes last in
//! the indices' row-major order among those targeting it (ONNX's sequential semantics), and
//! keeps its data where none does; `add`/`mul`/`max`/`min` combine the data with every update
//! targeting the position. Negative indices count from the end of their axis; an index outside
//! the axis matches no position. Cost is the product of the output's and the updates' sizes
//! along the scattered axes (the comparison is fused into the reduction that consumes it).

use crate::builder::{invalid, norm_axis, unsupported, Builder, NResult};
use crate::node::NodeCx;
use crate::ops::select::{linear_index, wrap_negative};
use kiln_ir::op::{BinaryOp, OrderedF64, PadMode, ReduceOp};
use kiln_ir::{DType, Op, ValueId};

/// How updates combine with the data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Combine {
    Replace,
    Add,
    Mul,
    Max,
    Min,
}

fn combine(cx: &NodeCx) -> NResult<Combine> {
    match cx.string("reduction", "none")?.as_str() {
        "none" => Ok(Combine::Replace),
        "add" => Ok(Combine::Add),
        "mul" => Ok(Combine::Mul),
        "max" => Ok(Combine::Max),
        "min" => Ok(Combine::Min),
        other => invalid(format!(
            "reduction `{other}` is not one of none, add, mul, max, min"
        )),
    }
}

/// The lowest and highest values of `dt` (the identities of max and min).
fn extremes(dt: DType) -> (f64, f64) {
    match dt.int_range() {
        Some((lo, hi)) => (lo as f64, hi as f64),
        None => (f64::NEG_INFINITY, f64::INFINITY),
    }
}

/// Combines `data` with the updates `upd` selected by `hit` (both broadcast to the
/// `[.., outputs, updates, ..]` comparison), folded over its updates axis `axis`.
fn reduce_updates(
    b: &mut Builder,
    kind: Combine,
    data: ValueId,
    hit: ValueId,
    upd: ValueId,
    axis: usize,
) -> NResult<ValueId> {
    let dt = b.dtype(data);
    let (lo, hi) = extremes(dt);
    let (op, identity, join) = match kind {
        Combine::Add => (ReduceOp::Sum, 0.0, BinaryOp::Add),
        Combine::Mul => (ReduceOp::Product, 1.0, BinaryOp::Mul),
        Combine::Max => (ReduceOp::Max, lo, BinaryOp::Maximum),
        Combine::Min => (ReduceOp::Min, hi, BinaryOp::Minimum),
        Combine::Replace => return unsupported("internal: replace is not a reduction"),
    };
    let id = b.scalar(dt, identity);
    let terms = b.select(hit, upd, id)?;
    let folded = b.reduce(op, terms, &[axis], false)?;
    b.binary(join, data, folded)
}

/// ScatterElements (and opset-9/10 Scatter): `out[.., idx[.., j, ..], ..] = updates[.., j, ..]`
/// along `axis`.
pub(super) fn scatter_elements(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (data, idx, upd) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let kind = if cx.op_type == "Scatter" {
        Combine::Replace
    } else {
        combine(cx)?
    };
    let (ds, is) = (b.shape(data), b.shape(idx));
    let r = ds.len();
    let axis = norm_axis(cx.int("axis", 0)?, r)?;
    if is.len() != r || b.shape(upd) != is || b.dtype(upd) != b.dtype(data) {
        return invalid(format!(
            "indices {is:?} and updates {:?} must match and have the data's rank {r}",
            b.shape(upd)
        ));
    }
    if (0..r).any(|a| a != axis && is[a] > ds[a]) {
        return invalid(format!("indices {is:?} exceed the data {ds:?}"));
    }
    let (n, m) = (ds[axis], is[axis]);
    let size = b.scalar(DType::I64, n as f64);
    let mut idx = wrap_negative(b, idx, size)?;
    let mut upd = upd;
    // Indices narrower than the data (off the axis) leave the rest alone: pad them with an
    // index that matches nothing.
    if (0..r).any(|a| a != axis && is[a] < ds[a]) {
        let pads: Vec<[usize; 2]> = (0..r)
            .map(|a| {
                if a == axis {
                    [0, 0]
                } else {
                    [0, ds[a] - is[a]]
                }
            })
            .collect();
        let pad = |b: &mut Builder, v: ValueId, fill: f64| {
            b.add(
                Op::Pad {
                    pads: pads.clone(),
                    mode: PadMode::Constant,
                    value: OrderedF64(fill),
                },
                &[v],
            )
        };
        idx = pad(b, idx, n as f64)?;
        upd = pad(b, upd, 0.0)?;
    }
    // The comparison [.., i (output), j (update), ..].
    let unsqueeze = |b: &mut Builder, v: ValueId, at: usize| {
        let mut s = b.shape(v);
        s.insert(at, 1);
        b.reshape(v, s)
    };
    let idx_j = unsqueeze(b, idx, axis)?;
    let positions = b.iota(n, axis, r + 1)?;
    let hit = b.binary(BinaryOp::Equal, idx_j, positions)?;
    match kind {
        Combine::Replace => {
            let j = b.iota(m, axis + 1, r + 1)?;
            let none = b.scalar(DType::I64, -1.0);
            let which = b.select(hit, j, none)?;
            let last = b.reduce(ReduceOp::Max, which, &[axis + 1], false)?;
            let zero = b.scalar(DType::I64, 0.0);
            let updated = b.binary(BinaryOp::GreaterEqual, last, zero)?;
            let safe = b.binary(BinaryOp::Maximum, last, zero)?;
            let taken = b.add(Op::GatherElements { axis }, &[upd, safe])?;
            b.select(updated, taken, data)
        }
        _ => {
            let upd_j = unsqueeze(b, upd, axis)?;
            reduce_updates(b, kind, data, hit, upd_j, axis + 1)
        }
    }
}

/// ScatterND: `out[idx[m, ..k]] = updates[m]` for the slices `data[i0, .., ik-1, :]`, over the
/// data flattened to `[positions, row]` and the updates to `[m, row]`.
pub(super) fn scatter_nd(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (data, idx, upd) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let kind = combine(cx)?;
    let (ds, is, us) = (b.shape(data), b.shape(idx), b.shape(upd));
    let Some(&k) = is.last() else {
        return invalid("indices must have rank at least 1");
    };
    let mut want = is[..is.len() - 1].to_vec();
    want.extend_from_slice(ds.get(k..).unwrap_or(&[]));
    if k > ds.len() || us != want || b.dtype(upd) != b.dtype(data) {
        return invalid(format!(
            "updates must be {want:?} for data {ds:?} and indices {is:?}, got {us:?}"
        ));
    }
    let positions: usize = ds[..k].iter().product();
    let row: usize = ds[k..].iter().product();
    let m: usize = is[..is.len() - 1].iter().product();
    // Linear target of each update.
    let idx = b.reshape(idx, vec![m, k])?;
    let target = linear_index(b, idx, &ds[..k])?;
    let zero = b.scalar(DType::I64, 0.0);
    let target = b.reshape(target, vec![1, m])?;
    let p = b.iota(positions, 0, 2)?;
    let hit = b.binary(BinaryOp::Equal, target, p)?; // [positions, m]
    let data2 = b.reshape(data, vec![positions, row])?;
    let upd2 = b.reshape(upd, vec![m, row])?;
    let out = match kind {
        Combine::Replace => {
            let order = b.iota(m, 1, 2)?;
            let none = b.scalar(DType::I64, -1.0);
            let which = b.select(hit, order, none)?;
            let last = b.reduce(ReduceOp::Max, which, &[1], false)?; // [positions]
            let updated = b.binary(BinaryOp::GreaterEqual, last, zero)?;
            let safe = b.binary(BinaryOp::Maximum, last, zero)?;
            let taken = b.add(Op::Gather { axis: 0 }, &[upd2, safe])?; // [positions, row]
            let updated = b.reshape(updated, vec![positions, 1])?;
            b.select(updated, taken, data2)?
        }
        _ => {
            let hit3 = b.reshape(hit, vec![positions, m, 1])?;
            let upd3 = b.reshape(upd2, vec![1, m, row])?;
            let data3 = b.reshape(data2, vec![positions, row])?;
            reduce_updates(b, kind, data3, hit3, upd3, 1)?
        }
    };
    b.reshape(out, ds)
}
