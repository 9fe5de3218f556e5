//! Data-dependent row counts in a static graph (the output of NonMaxSuppression).
//!
//! A value with *dynamic rows* has its static bound of rows along its first axis, of which the
//! first `count` are the ONNX result and the rest padding; `count` is another value of the graph
//! (i64 `[1]`). Only ops that compute each row from the same row of their dynamic operand keep
//! that property, and [`propagate`] accepts only those (a Gather of rows by dynamic indices or of
//! columns of dynamic data, Slice/Squeeze/Unsqueeze off the first axis, Cast and unary ops);
//! any other op reading a dynamic value is refused with the reason, so padding never mixes into
//! a result. A graph output with dynamic rows gets its count as an extra output, and
//! [`crate::Model::trim_outputs`] cuts the padding off.
//!
//! Invariant: rows below the count of every value recorded in `Builder::dynamic_rows` are
//! exactly the rows the ONNX semantics give; the padding rows are never read by those rows.

use crate::builder::Builder;
use crate::node::NodeCx;
use kiln_ir::{Tensor, ValueId};

/// Ops that map each element (so each row) of their first operand on their own.
const ROW_WISE: &[&str] = &[
    "Identity",
    "Cast",
    "Abs",
    "Neg",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Exp",
    "Log",
    "Sqrt",
    "Floor",
    "Ceil",
    "Round",
    "Not",
    "Sign",
    "Reciprocal",
];

/// A graph output whose rows are data-dependent: output `output` holds `rows_output`'s value
/// (an i64 `[1]`) valid rows along its first axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowCount {
    pub output: usize,
    pub rows_output: usize,
}

/// The count `node`'s result inherits from its dynamic operands, `Ok(None)` when it has none,
/// or why Kiln cannot compute the op on padded rows.
pub(crate) fn propagate(b: &Builder, cx: &NodeCx) -> Result<Option<ValueId>, String> {
    let dynamic: Vec<(usize, ValueId)> = cx
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.and_then(|v| b.dynamic_rows.get(&v).map(|&c| (i, c))))
        .collect();
    let Some(&(_, count)) = dynamic.first() else {
        return Ok(None);
    };
    let refuse = || {
        Err(format!(
            "it reads the data-dependent rows of a NonMaxSuppression result, and Kiln computes \
             only row-wise ops on them (Gather of rows by them or of their columns, Slice, \
             Squeeze and Unsqueeze off the first axis, Cast, unary ops), not {}",
            cx.op_type
        ))
    };
    if dynamic.iter().any(|&(_, c)| c != count) {
        return refuse();
    }
    let which: Vec<usize> = dynamic.iter().map(|&(i, _)| i).collect();
    let rank = |i: usize| cx.inputs[i].map_or(0, |v| b.rank(v));
    let axes = |i: usize| -> Option<Vec<i64>> {
        let attr = cx.ints_opt("axes").ok().flatten();
        attr.or_else(|| {
            cx.inputs
                .get(i)
                .copied()
                .flatten()
                .and_then(|v| b.const_ints(v))
        })
    };
    let off_first = |axes: Option<Vec<i64>>, r: usize| {
        axes.is_some_and(|a| a.iter().all(|&x| x != 0 && x != -(r as i64)))
    };
    let ok = match cx.op_type {
        op if ROW_WISE.contains(&op) => which == [0],
        "Gather" => {
            let axis = cx.int("axis", 0).unwrap_or(0);
            let data_rank = rank(0) as i64;
            let axis = if axis < 0 { axis + data_rank } else { axis };
            (which == [0] && axis != 0) || (which == [1] && axis == 0)
        }
        "Slice" => which == [0] && off_first(axes(3), rank(0)),
        "Squeeze" => which == [0] && off_first(axes(1), rank(0)),
        "Unsqueeze" => {
            let out_rank = rank(0) + axes(1).map_or(0, |a| a.len());
            which == [0] && off_first(axes(1), out_rank)
        }
        _ => false,
    };
    if ok {
        Ok(Some(count))
    } else {
        refuse()
    }
}

/// The ONNX outputs from a compiled model's `outputs`: each output with dynamic rows cut to its
/// count, and the count outputs dropped.
pub(crate) fn trim(counts: &[RowCount], outputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
    let mut rows = vec![None; outputs.len()];
    for c in counts {
        let n = outputs
            .get(c.rows_output)
            .and_then(|t| t.data().to_i64_vec().first().copied())
            .ok_or_else(|| format!("output {} (a row count) is missing", c.rows_output))?;
        let slot = rows
            .get_mut(c.output)
            .ok_or_else(|| format!("output {} is missing", c.output))?;
        *slot = Some(n);
    }
    let drop: Vec<usize> = counts.iter().map(|c| c.rows_output).collect();
    let mut out = Vec::with_capacity(outputs.len());
    for (i, t) in outputs.into_iter().enumerate() {
        if drop.contains(&i) {
            continue;
        }
        match rows[i] {
            None => out.push(t),
            Some(n) => out.push(first_rows(&t, n)?),
        }
    }
    Ok(out)
}

/// The first `n` rows (along axis 0) of `t`.
fn first_rows(t: &Tensor, n: i64) -> Result<Tensor, String> {
    let shape = t.shape();
    let bound = shape.first().copied().unwrap_or(0);
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n <= bound)
        .ok_or_else(|| format!("row count {n} outside 0..={bound}"))?;
    let mut new_shape = shape.to_vec();
    new_shape[0] = n;
    let row: usize = shape[1..].iter().product();
    let index: Vec<Option<usize>> = (0..n * row).map(Some).collect();
    let ty = kiln_ir::TensorType::new(t.dtype(), new_shape).map_err(|e| e.to_string())?;
    Tensor::from_data(ty, t.data().gather(&index)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_cuts_rows_and_drops_counts() {
        let data = Tensor::new(vec![4, 2], (0..8).collect::<Vec<i64>>()).unwrap();
        let other = Tensor::new(vec![3], vec![1.0f32, 2.0, 3.0]).unwrap();
        let count = Tensor::new(vec![1], vec![3i64]).unwrap();
        let counts = [RowCount {
            output: 0,
            rows_output: 2,
        }];
        let out = trim(&counts, vec![data, other.clone(), count]).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].shape(), &[3, 2]);
        assert_eq!(out[0].as_slice::<i64>().unwrap(), &[0, 1, 2, 3, 4, 5]);
        assert_eq!(out[1], other);
        // A count beyond the bound is an error, not a read past the data.
        let data = Tensor::new(vec![2, 1], vec![0i64, 1]).unwrap();
        let count = Tensor::new(vec![1], vec![5i64]).unwrap();
        assert!(trim(&counts[..], vec![data.clone(), other, count]).is_err());
    }
}
