//! NonMaxSuppression (opsets 10, 11) as IR ops, with onnxruntime's arithmetic and order.
//!
//! The greedy selection is sequential: a candidate is kept when no kept box of its class
//! overlaps it by more than the IoU threshold. With every shape static, it unrolls: the IoU test
//! of every pair of boxes is one elementwise computation (`[B, N, N]`, the float operations of
//! onnxruntime's `SuppressByIOU` in its order, so borderline pairs decide alike); each class's
//! candidates are sorted by score (ties in index order, as `TopK`), and then one step per
//! candidate rank `t` keeps candidate `t` of every batch and class at once if it passes the score
//! threshold, no kept box suppresses it and fewer than `max_output_boxes_per_class` are kept.
//! The selected triples are then compacted in onnxruntime's order (batch, class, selection
//! order) by reductions over the kept flags.
//!
//! The number of selected boxes depends on the data, and Kiln's shapes are static: the result
//! has its bound `B·C·K` rows (`K = min(max_output_boxes_per_class, N)`), the rows past the
//! count are `-1`, and the count is recorded in [`Builder::dynamic_rows`] so the importer can
//! trim the graph outputs computed from it (see `crate::dynamic_rows`).
//!
//! Invariant: the first `count` rows equal onnxruntime's output exactly (candidates of equal
//! score are taken in index order; onnxruntime's heap leaves that order unspecified); the model
//! grows by a few ops per candidate, so the candidate count is bounded by [`MAX_BOXES`].

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use crate::ops::topk::top_k_along;
use kiln_ir::op::{BinaryOp, ReduceOp};
use kiln_ir::{DType, Op, ValueId};

/// The most boxes per batch whose selection is unrolled (a TopK in front bounds real models).
pub(crate) const MAX_BOXES: usize = 1024;

/// Bound on the `[B, C, N, N]` intermediates (sorting and the per-candidate IoU rows).
const MAX_PAIRS: usize = 1 << 24;

/// `selected_indices` (i64 `[B·C·K, 3]`, padded with -1; its row count is recorded).
pub(super) fn non_max_suppression(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (boxes, scores) = (cx.input(0)?, cx.input(1)?);
    let center = match cx.int("center_point_box", 0)? {
        0 => false,
        1 => true,
        c => return invalid(format!("center_point_box must be 0 or 1, got {c}")),
    };
    let (bs, ss) = (b.shape(boxes), b.shape(scores));
    if bs.len() != 3 || ss.len() != 3 || bs[2] != 4 || bs[0] != ss[0] || bs[1] != ss[2] {
        return invalid(format!(
            "boxes {bs:?} must be [B, N, 4] and scores {ss:?} [B, C, N]"
        ));
    }
    if b.dtype(boxes) != DType::F32 || b.dtype(scores) != DType::F32 {
        return unsupported("boxes and scores must be f32");
    }
    let scalar = |b: &Builder, i: usize, what: &str| -> NResult<Option<f64>> {
        match cx.opt_input(i) {
            None => Ok(None),
            Some(v) => match b.const_floats(v).as_deref() {
                Some(&[x]) => Ok(Some(x)),
                Some(other) => invalid(format!("{what} must be one value, got {other:?}")),
                None => crate::builder::not_static(what),
            },
        }
    };
    let max_per_class = scalar(b, 2, "max_output_boxes_per_class")?.unwrap_or(0.0);
    let iou_threshold = scalar(b, 3, "iou_threshold")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&iou_threshold) {
        return invalid(format!(
            "iou_threshold must be in [0, 1], got {iou_threshold}"
        ));
    }
    let score_threshold = scalar(b, 4, "score_threshold")?;
    let (batches, n, classes) = (bs[0], bs[1], ss[1]);
    let k = (max_per_class.max(0.0) as usize).min(n);
    if k == 0 || batches * classes == 0 {
        return b.const_tensor(vec![0, 3], Vec::<i64>::new());
    }
    if n > MAX_BOXES {
        return unsupported(format!(
            "NonMaxSuppression over {n} boxes: the greedy selection is unrolled per candidate, \
             up to {MAX_BOXES} boxes (a TopK in front of it bounds them)"
        ));
    }
    if batches * classes * n * n > MAX_PAIRS {
        return unsupported(format!(
            "NonMaxSuppression of {batches}x{classes} classes over {n} boxes: more than \
             {MAX_PAIRS} candidate pairs"
        ));
    }
    let suppress = pairwise_suppression(b, boxes, center, iou_threshold)?;
    // Per batch and class, the candidates in score order: [B, C, N].
    let (sorted, order) = top_k_along(b, scores, 2, n, true)?;
    let valid = match score_threshold {
        Some(t) => {
            let t = b.scalar(DType::F32, t);
            b.binary(BinaryOp::Greater, sorted, t)?
        }
        None => b.const_tensor(vec![1, 1, 1], vec![true])?,
    };
    let valid = b.cast(valid, DType::I32)?;
    // rows[b, c, t, :] = suppress[b, order[b, c, t], :]
    let flat = b.reshape(suppress, vec![batches * n, n])?;
    let base = b.const_tensor(
        vec![batches, 1, 1],
        (0..batches).map(|i| (i * n) as i64).collect(),
    )?;
    let row_index = b.binary(BinaryOp::Add, order, base)?;
    let rows = b.add(Op::Gather { axis: 0 }, &[flat, row_index])?;
    let iota = b.iota(n, 2, 3)?;
    let mut kept = b.const_tensor(vec![1, 1, 1], vec![0i32])?;
    let mut count = b.const_tensor(vec![1, 1, 1], vec![0i32])?;
    let limit = b.scalar(DType::I32, k as f64);
    let one = b.scalar(DType::I32, 1.0);
    let mut flags = Vec::with_capacity(n);
    for t in 0..n {
        let row = b.slice_axis(rows, 2, t, 1, 1)?;
        let row = b.reshape(row, vec![batches, classes, n])?;
        let hits = b.binary(BinaryOp::Mul, row, kept)?;
        let hit = b.reduce(ReduceOp::Max, hits, &[2], true)?;
        let free = b.binary(BinaryOp::Sub, one, hit)?;
        let room = b.binary(BinaryOp::Greater, limit, count)?;
        let room = b.cast(room, DType::I32)?;
        let ok = b.slice_axis(valid, 2, t.min(b.shape(valid)[2] - 1), 1, 1)?;
        let keep = b.binary(BinaryOp::Mul, free, room)?;
        let keep = b.binary(BinaryOp::Mul, keep, ok)?;
        let idx = b.slice_axis(order, 2, t, 1, 1)?;
        let at = b.binary(BinaryOp::Equal, iota, idx)?;
        let at = b.cast(at, DType::I32)?;
        let add = b.binary(BinaryOp::Mul, at, keep)?;
        kept = b.binary(BinaryOp::Add, kept, add)?;
        count = b.binary(BinaryOp::Add, count, keep)?;
        flags.push(keep);
    }
    let flags = b.concat(&flags, 2)?; // [B, C, N] in score order
    let count = b.reshape(count, vec![batches * classes])?;
    compact(b, flags, order, count, classes, k)
}

/// `suppress[b, i, j]` (i32 0/1): box `i` (kept) suppresses box `j`, computed as
/// onnxruntime's `SuppressByIOU` does it.
fn pairwise_suppression(
    b: &mut Builder,
    boxes: ValueId,
    center: bool,
    threshold: f64,
) -> NResult<ValueId> {
    let bs = b.shape(boxes);
    let (batches, n) = (bs[0], bs[1]);
    let coord = |b: &mut Builder, i: usize| -> NResult<ValueId> {
        let c = b.slice_axis(boxes, 2, i, 1, 1)?;
        b.reshape(c, vec![batches, n])
    };
    let (c0, c1, c2, c3) = (coord(b, 0)?, coord(b, 1)?, coord(b, 2)?, coord(b, 3)?);
    // (min, max) of each axis: MaxMin for corners, centre -/+ half size otherwise.
    let (x, y) = if center {
        let span = |b: &mut Builder, mid: ValueId, size: ValueId| -> NResult<(ValueId, ValueId)> {
            let half = b.binary_scalar(BinaryOp::Div, size, 2.0)?;
            Ok((
                b.binary(BinaryOp::Sub, mid, half)?,
                b.binary(BinaryOp::Add, mid, half)?,
            ))
        };
        (span(b, c0, c2)?, span(b, c1, c3)?)
    } else {
        let max_min = |b: &mut Builder, l: ValueId, r: ValueId| -> NResult<(ValueId, ValueId)> {
            let ge = b.binary(BinaryOp::GreaterEqual, l, r)?;
            Ok((b.select(ge, r, l)?, b.select(ge, l, r)?))
        };
        (max_min(b, c1, c3)?, max_min(b, c0, c2)?)
    };
    // Box i along axis 1, box j along axis 2.
    let pair = |b: &mut Builder, v: ValueId| -> NResult<(ValueId, ValueId)> {
        Ok((
            b.reshape(v, vec![batches, n, 1])?,
            b.reshape(v, vec![batches, 1, n])?,
        ))
    };
    let overlap = |b: &mut Builder, (lo, hi): (ValueId, ValueId)| -> NResult<(ValueId, ValueId)> {
        let ((lo_i, lo_j), (hi_i, hi_j)) = (pair(b, lo)?, pair(b, hi)?);
        let lo = b.binary(BinaryOp::Maximum, lo_i, lo_j)?;
        let hi = b.binary(BinaryOp::Minimum, hi_i, hi_j)?;
        let ok = b.binary(BinaryOp::Greater, hi, lo)?;
        Ok((b.binary(BinaryOp::Sub, hi, lo)?, ok))
    };
    let (wx, okx) = overlap(b, x)?;
    let (wy, oky) = overlap(b, y)?;
    let inter = b.binary(BinaryOp::Mul, wx, wy)?;
    let width = b.binary(BinaryOp::Sub, x.1, x.0)?;
    let height = b.binary(BinaryOp::Sub, y.1, y.0)?;
    let area = b.binary(BinaryOp::Mul, width, height)?;
    let (area_i, area_j) = pair(b, area)?;
    let sum = b.binary(BinaryOp::Add, area_i, area_j)?;
    let union = b.binary(BinaryOp::Sub, sum, inter)?;
    let zero = b.scalar(DType::F32, 0.0);
    let mut ok = b.binary(BinaryOp::LogicalAnd, okx, oky)?;
    for v in [inter, area_i, area_j, union] {
        let pos = b.binary(BinaryOp::Greater, v, zero)?;
        ok = b.binary(BinaryOp::LogicalAnd, ok, pos)?;
    }
    let iou = b.binary(BinaryOp::Div, inter, union)?;
    let t = b.scalar(DType::F32, threshold);
    let over = b.binary(BinaryOp::Greater, iou, t)?;
    let sup = b.binary(BinaryOp::LogicalAnd, ok, over)?;
    b.cast(sup, DType::I32)
}

/// The selected `(batch, class, box)` triples in onnxruntime's order from the kept flags
/// (`[B, C, N]` in score order), padded with -1 rows to `B·C·k`; records the row count.
fn compact(
    b: &mut Builder,
    flags: ValueId,
    order: ValueId,
    count: ValueId,
    classes: usize,
    k: usize,
) -> NResult<ValueId> {
    let s = b.shape(flags);
    let (bc, n) = (s[0] * s[1], s[2]);
    let rows = bc * k;
    let flags = b.reshape(flags, vec![bc, n])?;
    let order = b.reshape(order, vec![bc, n])?;
    // rank[g, t] = number kept in group g up to and including t.
    let upto = b.const_tensor(
        vec![1, n, n],
        (0..n * n).map(|i| i32::from(i % n <= i / n)).collect(),
    )?;
    let f3 = b.reshape(flags, vec![bc, 1, n])?;
    let masked = b.binary(BinaryOp::Mul, f3, upto)?;
    let rank = b.reduce(ReduceOp::Sum, masked, &[2], false)?; // [bc, n]
                                                              // offset[g] = kept in groups before g; end[g] = offset[g] + count[g].
    let before = b.const_tensor(
        vec![bc, bc],
        (0..bc * bc).map(|i| i32::from(i % bc < i / bc)).collect(),
    )?;
    let c_row = b.reshape(count, vec![1, bc])?;
    let prior = b.binary(BinaryOp::Mul, c_row, before)?;
    let offset = b.reduce(ReduceOp::Sum, prior, &[1], false)?; // [bc]
    let end = b.binary(BinaryOp::Add, offset, count)?;
    let total = b.reduce(ReduceOp::Sum, count, &[0], true)?; // [1]
                                                             // Row r belongs to the group g with offset[g] <= r < end[g]: the number of groups ending
                                                             // at or before r.
    let r = b.const_tensor(vec![rows, 1], (0..rows as i32).collect())?;
    let end_row = b.reshape(end, vec![1, bc])?;
    let done = b.binary(BinaryOp::GreaterEqual, r, end_row)?;
    let done = b.cast(done, DType::I32)?;
    let group = b.reduce(ReduceOp::Sum, done, &[1], false)?; // [rows]
    let last = b.scalar(DType::I32, (bc - 1) as f64);
    let group = b.binary(BinaryOp::Minimum, group, last)?;
    let first = b.add(Op::Gather { axis: 0 }, &[offset, group])?;
    let r1 = b.reshape(r, vec![rows])?;
    let j = b.binary(BinaryOp::Sub, r1, first)?; // rank - 1 within the group
                                                 // t = the position in score order whose rank is j + 1 and is kept.
    let g_rank = b.add(Op::Gather { axis: 0 }, &[rank, group])?; // [rows, n]
    let g_flag = b.add(Op::Gather { axis: 0 }, &[flags, group])?;
    let g_order = b.add(Op::Gather { axis: 0 }, &[order, group])?;
    let want = b.binary_scalar(BinaryOp::Add, j, 1.0)?;
    let want = b.reshape(want, vec![rows, 1])?;
    let is = b.binary(BinaryOp::Equal, g_rank, want)?;
    let kept = b.cast(g_flag, DType::Bool)?;
    let is = b.binary(BinaryOp::LogicalAnd, is, kept)?;
    let none = b.scalar(DType::I64, -1.0);
    let pick = b.select(is, g_order, none)?;
    let index = b.reduce(ReduceOp::Max, pick, &[1], false)?; // [rows] i64
    let group = b.cast(group, DType::I64)?;
    let batch = b.binary_scalar(BinaryOp::Div, group, classes as f64)?;
    let class = b.binary_scalar(BinaryOp::Mod, group, classes as f64)?;
    let total64 = b.cast(total, DType::I64)?;
    let r64 = b.cast(r1, DType::I64)?;
    let live = b.binary(BinaryOp::Greater, total64, r64)?;
    let mut cols = Vec::with_capacity(3);
    for v in [batch, class, index] {
        let v = b.select(live, v, none)?;
        cols.push(b.reshape(v, vec![rows, 1])?);
    }
    let out = b.concat(&cols, 1)?;
    b.dynamic_rows.insert(out, total64);
    Ok(out)
}
