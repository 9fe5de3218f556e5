//! Data movement as pure index arithmetic: reshape, transpose, concat, slice, pad, tile, reverse,
//! gather and gather_elements. One stage each, no arithmetic on the data.
//!
//! Invariant: every output element loads exactly the input element the reference copies (or
//! PAD's fill value, converted with [`super::expr::constant`]). Reshape recomputes input
//! coordinates from the row-major flat index (reshape of a contiguous tensor is an alias; the
//! fusion pass marks it so the runtime can skip the copy). Gather indices are normalised
//! (`i < 0 ? i + n : i`) and guarded: an index out of range, which the reference rejects,
//! reads 0.

use super::expr::{c, constant, in_range};
use super::{unsupported, Builder, ComputeError, Operand};
use kiln_ir::op::PadMode;
use kiln_ir::{DType, Op, TensorType};
use kiln_tir::{BufferId, Expr};

fn strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1] as i64;
    }
    s
}

/// `i` normalised against a dim of size `n` (negative counts from the end).
fn normalise(i: Expr, n: usize) -> Expr {
    Expr::select(Expr::lt(i.clone(), c(0)), i.clone() + c(n as i64), i)
}

pub(crate) fn define(
    b: &mut Builder,
    op: &Op,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let x = &xs[0];
    let xshape = x.ty.shape.clone();
    let shape = out.shape.clone();
    match op {
        Op::Reshape { .. } => {
            let (ost, ist) = (strides(&shape), strides(&xshape));
            b.stage("reshape", &shape, |ax| {
                let flat = ax
                    .iter()
                    .zip(&ost)
                    .map(|(a, &s)| if s == 1 { a.clone() } else { a.clone() * c(s) })
                    .reduce(|p, q| p + q)
                    .unwrap_or(c(0));
                let idx = xshape
                    .iter()
                    .zip(&ist)
                    .enumerate()
                    .map(|(d, (&n, &s))| {
                        let q = if s == 1 {
                            flat.clone()
                        } else {
                            Expr::floordiv(flat.clone(), c(s))
                        };
                        if d == 0 || n == 1 {
                            if n == 1 {
                                c(0)
                            } else {
                                q
                            }
                        } else {
                            Expr::floormod(q, c(n as i64))
                        }
                    })
                    .collect();
                Expr::load(x.id, idx)
            })
        }
        Op::Transpose { perm } => b.stage("transpose", &shape, |ax| {
            let mut idx = vec![c(0); perm.len()];
            for (j, &p) in perm.iter().enumerate() {
                idx[p] = ax[j].clone();
            }
            Expr::load(x.id, idx)
        }),
        Op::Concat { axis } => {
            let axis = *axis;
            b.stage("concat", &shape, |ax| {
                let mut offsets = vec![];
                let mut off = 0usize;
                for o in xs {
                    offsets.push(off);
                    off += o.ty.shape[axis];
                }
                let at = |k: usize| {
                    let mut idx = ax.to_vec();
                    if offsets[k] > 0 {
                        idx[axis] = ax[axis].clone() - c(offsets[k] as i64);
                    }
                    Expr::load(xs[k].id, idx)
                };
                let last = xs.len() - 1;
                let mut e = at(last);
                for k in (0..last).rev() {
                    let end = offsets[k] + xs[k].ty.shape[axis];
                    e = Expr::select(Expr::lt(ax[axis].clone(), c(end as i64)), at(k), e);
                }
                e
            })
        }
        Op::Slice { start, stride, .. } => b.stage("slice", &shape, |ax| {
            let idx = ax
                .iter()
                .enumerate()
                .map(|(d, a)| {
                    let v = if stride[d] == 1 {
                        a.clone()
                    } else {
                        a.clone() * c(stride[d] as i64)
                    };
                    if start[d] == 0 {
                        v
                    } else {
                        v + c(start[d] as i64)
                    }
                })
                .collect();
            Expr::load(x.id, idx)
        }),
        Op::Pad { pads, mode, value } => {
            let dt = x.ty.dtype;
            let fill = constant(value.0, dt);
            b.stage("pad", &shape, |ax| {
                let mut conds = vec![];
                let idx: Vec<Expr> = ax
                    .iter()
                    .enumerate()
                    .map(|(d, a)| {
                        let n = xshape[d] as i64;
                        let before = pads[d][0] as i64;
                        if before == 0 && pads[d][1] == 0 {
                            return a.clone();
                        }
                        let i = if before == 0 {
                            a.clone()
                        } else {
                            a.clone() - c(before)
                        };
                        match mode {
                            PadMode::Constant => {
                                conds.push(in_range(&i, n as usize));
                                i
                            }
                            PadMode::Edge => Expr::max(Expr::min(i, c(n - 1)), c(0)),
                            PadMode::Reflect => {
                                let r = Expr::select(
                                    Expr::lt(i.clone(), c(0)),
                                    c(0) - i.clone(),
                                    Expr::select(
                                        Expr::ge(i.clone(), c(n)),
                                        c(2 * (n - 1)) - i.clone(),
                                        i,
                                    ),
                                );
                                Expr::max(Expr::min(r, c(n - 1)), c(0))
                            }
                        }
                    })
                    .collect();
                let v = Expr::load(x.id, idx);
                if conds.is_empty() {
                    v
                } else {
                    Expr::select(super::expr::all(conds), v, fill)
                }
            })
        }
        Op::Tile { .. } => b.stage("tile", &shape, |ax| {
            let idx = ax
                .iter()
                .zip(&xshape)
                .map(|(a, &n)| {
                    if n == 1 {
                        c(0)
                    } else {
                        Expr::floormod(a.clone(), c(n as i64))
                    }
                })
                .collect();
            Expr::load(x.id, idx)
        }),
        Op::Reverse { axis } => b.stage("reverse", &shape, |ax| {
            let mut idx = ax.to_vec();
            idx[*axis] = c(xshape[*axis] as i64 - 1) - ax[*axis].clone();
            Expr::load(x.id, idx)
        }),
        Op::Gather { axis } => {
            let axis = *axis;
            let ind = &xs[1];
            let irank = ind.ty.shape.len();
            let n = xshape[axis];
            let dt = x.ty.dtype;
            b.stage("gather", &shape, |ax| {
                let iidx: Vec<Expr> = ax[axis..axis + irank].to_vec();
                let raw = Expr::cast(DType::I64, Expr::load(ind.id, iidx));
                let i = normalise(raw, n);
                let mut idx: Vec<Expr> = ax[..axis].to_vec();
                idx.push(i.clone());
                idx.extend_from_slice(&ax[axis + irank..]);
                Expr::select(in_range(&i, n), Expr::load(x.id, idx), Expr::zero(dt))
            })
        }
        Op::GatherElements { axis } => {
            let axis = *axis;
            let ind = &xs[1];
            for (d, (&i, &n)) in ind.ty.shape.iter().zip(&xshape).enumerate() {
                if d != axis && i > n {
                    return Err(unsupported(
                        op,
                        format!("indices shape exceeds data shape on axis {d}"),
                    ));
                }
            }
            let n = xshape[axis];
            let dt = x.ty.dtype;
            b.stage("gather_elements", &shape, |ax| {
                let raw = Expr::cast(DType::I64, Expr::load(ind.id, ax.to_vec()));
                let i = normalise(raw, n);
                let mut idx = ax.to_vec();
                idx[axis] = i.clone();
                Expr::select(in_range(&i, n), Expr::load(x.id, idx), Expr::zero(dt))
            })
        }
        other => Err(unsupported(other, "not a data-movement op")),
    }
}
