//! Data movement: transpose, concat, slice, pad, tile, reverse, gather and gather_elements.
//!
//! Invariant: these ops are dtype-generic and never change element values (except PAD's fill,
//! converted to the dtype with cast semantics). Slice, pad, tile and reverse are expressed as
//! per-axis index maps whose entries are in range by construction; gather indices come from data
//! and are bounds-checked, so an out-of-range index is an error, never a panic.

use crate::util::{fail, map_axes, strides};
use crate::OpError;
use kiln_ir::op::PadMode;
use kiln_ir::{dispatch_data, Element, Op, Tensor, TensorData};

fn map_tensor(x: &Tensor, maps: &[Vec<Option<usize>>], fill: f64) -> TensorData {
    dispatch_data!(x.data(), v => Element::wrap(map_axes(v, x.shape(), maps, Element::from_f64(fill))))
}

/// TRANSPOSE: output dim `i` is input dim `perm[i]`.
pub fn transpose(x: &Tensor, perm: &[usize]) -> TensorData {
    let st = strides(x.shape());
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let out_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    fn run<T: Copy>(v: &[T], shape: &[usize], st: &[usize]) -> Vec<T> {
        let total: usize = shape.iter().product();
        let mut out = Vec::with_capacity(total);
        if total == 0 {
            return out;
        }
        let mut idx = vec![0usize; shape.len()];
        let mut off = 0usize;
        for _ in 0..total {
            out.push(v[off]);
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                off += st[d];
                if idx[d] < shape[d] {
                    break;
                }
                off -= st[d] * shape[d];
                idx[d] = 0;
            }
        }
        out
    }
    dispatch_data!(x.data(), v => Element::wrap(run(v, &out_shape, &out_st)))
}

/// CONCAT along `axis` (operands already checked to agree off the axis and in dtype).
pub fn concat(xs: &[&Tensor], axis: usize) -> Result<TensorData, OpError> {
    let first = xs[0];
    let outer: usize = first.shape()[..axis].iter().product();
    let inner: usize = first.shape()[axis + 1..].iter().product();
    /// Concatenates operands of the element type of `_like`.
    fn run<T: Element>(
        _like: &[T],
        xs: &[&Tensor],
        outer: usize,
        inner: usize,
        axis: usize,
    ) -> Option<TensorData> {
        let parts: Vec<(&[T], usize)> = xs
            .iter()
            .map(|t| Some((t.as_slice::<T>()?, t.shape()[axis] * inner)))
            .collect::<Option<_>>()?;
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
        for o in 0..outer {
            for &(v, chunk) in &parts {
                out.extend_from_slice(&v[o * chunk..(o + 1) * chunk]);
            }
        }
        Some(T::wrap(out))
    }
    let data = dispatch_data!(first.data(), v => run(v, xs, outer, inner, axis));
    data.ok_or_else(|| fail(&Op::Concat { axis }, "operand dtypes differ"))
}

/// SLICE: `out[i] = x[start + i * stride]` per axis.
pub fn slice(x: &Tensor, start: &[usize], stride: &[usize], size: &[usize]) -> TensorData {
    let maps: Vec<Vec<Option<usize>>> = (0..size.len())
        .map(|d| {
            (0..size[d])
                .map(|i| Some(start[d] + i * stride[d]))
                .collect()
        })
        .collect();
    map_tensor(x, &maps, 0.0)
}

/// PAD with `[before, after]` per axis; constant mode fills `value` (cast to the dtype).
pub fn pad(
    x: &Tensor,
    pads: &[[usize; 2]],
    mode: PadMode,
    value: f64,
    out_shape: &[usize],
) -> TensorData {
    let maps: Vec<Vec<Option<usize>>> = (0..out_shape.len())
        .map(|d| {
            let n = x.shape()[d] as isize;
            let before = pads[d][0] as isize;
            (0..out_shape[d])
                .map(|o| {
                    let i = o as isize - before;
                    if (0..n).contains(&i) {
                        return Some(i as usize);
                    }
                    match mode {
                        PadMode::Constant => None,
                        PadMode::Edge => Some(i.clamp(0, n - 1) as usize),
                        PadMode::Reflect => {
                            // Pads are at most n - 1 (checked by infer_type): one reflection.
                            let r = if i < 0 { -i } else { 2 * (n - 1) - i };
                            Some(r.clamp(0, (n - 1).max(0)) as usize)
                        }
                    }
                })
                .collect()
        })
        .collect();
    map_tensor(x, &maps, value)
}

/// TILE to `out_shape` (each dim a multiple of the input's).
pub fn tile(x: &Tensor, out_shape: &[usize]) -> TensorData {
    let maps: Vec<Vec<Option<usize>>> = out_shape
        .iter()
        .zip(x.shape())
        .map(|(&o, &n)| (0..o).map(|i| Some(i % n.max(1))).collect())
        .collect();
    map_tensor(x, &maps, 0.0)
}

/// REVERSE along `axis`.
pub fn reverse(x: &Tensor, axis: usize) -> TensorData {
    let maps: Vec<Vec<Option<usize>>> = x
        .shape()
        .iter()
        .enumerate()
        .map(|(d, &n)| {
            (0..n)
                .map(|i| Some(if d == axis { n - 1 - i } else { i }))
                .collect()
        })
        .collect();
    map_tensor(x, &maps, 0.0)
}

/// Resolves a possibly negative index against a dim of size `n`.
fn resolve(op: &Op, i: i64, n: usize) -> Result<usize, OpError> {
    let n_i = i64::try_from(n).unwrap_or(i64::MAX);
    let r = if i < 0 { i + n_i } else { i };
    if (0..n_i).contains(&r) {
        Ok(r as usize)
    } else {
        Err(fail(
            op,
            format!("index {i} out of range for a dim of size {n}"),
        ))
    }
}

/// GATHER along `axis`: `out[a.., j.., b..] = x[a.., idx[j..], b..]`.
pub fn gather(op: &Op, x: &Tensor, idx: &Tensor, axis: usize) -> Result<TensorData, OpError> {
    let n = x.shape()[axis];
    let outer: usize = x.shape()[..axis].iter().product();
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let rows: Vec<usize> = idx
        .data()
        .to_i64_vec()
        .into_iter()
        .map(|i| resolve(op, i, n))
        .collect::<Result<_, _>>()?;
    fn run<T: Copy>(v: &[T], rows: &[usize], outer: usize, n: usize, inner: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * rows.len() * inner);
        for o in 0..outer {
            for &r in rows {
                let s = (o * n + r) * inner;
                out.extend_from_slice(&v[s..s + inner]);
            }
        }
        out
    }
    Ok(dispatch_data!(x.data(), v => Element::wrap(run(v, &rows, outer, n, inner))))
}

/// GATHER_ELEMENTS along `axis`: `out[p] = x[p with p[axis] = idx[p]]`.
pub fn gather_elements(
    op: &Op,
    x: &Tensor,
    idx: &Tensor,
    axis: usize,
) -> Result<TensorData, OpError> {
    let xs = x.shape();
    let is = idx.shape();
    for d in 0..xs.len() {
        if d != axis && is[d] > xs[d] {
            return Err(fail(
                op,
                format!("indices shape {is:?} exceeds data shape {xs:?} on axis {d}"),
            ));
        }
    }
    let xst = strides(xs);
    let indices = idx.data().to_i64_vec();
    let mut offsets = Vec::with_capacity(indices.len());
    let mut pos = vec![0usize; is.len()];
    for &i in &indices {
        let mut off = resolve(op, i, xs[axis])? * xst[axis];
        for d in 0..is.len() {
            if d != axis {
                off += pos[d] * xst[d];
            }
        }
        offsets.push(off);
        for d in (0..is.len()).rev() {
            pos[d] += 1;
            if pos[d] < is[d] {
                break;
            }
            pos[d] = 0;
        }
    }
    Ok(
        dispatch_data!(x.data(), v => Element::wrap(offsets.iter().map(|&o| v[o]).collect::<Vec<_>>())),
    )
}
