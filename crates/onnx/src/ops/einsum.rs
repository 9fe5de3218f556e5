//! Einsum: the equation parsed into labelled axes, lowered to transposes, reductions and either
//! one batched MATMUL (two float operands) or a broadcast product (anything else).
//!
//! Invariant: every label has one size across the operands (ellipsis dims broadcast from 1);
//! a label repeated within one operand takes its diagonal; a label in one operand only and not
//! in the output is summed before any product; the output's axes are in the order the equation
//! gives (implicit form: the ellipsis, then the labels used once, alphabetically).

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, ReduceOp};
use kiln_ir::{Op, ValueId};
use std::collections::BTreeMap;

/// Labels stand for the ellipsis' dims from this code point on (never a letter).
const ELLIPSIS_LABEL: u32 = 0x100;

/// One operand term: its labels, with `None` where the ellipsis stands.
fn parse_term(t: &str) -> NResult<Vec<Option<char>>> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("...") {
            if out.contains(&None) {
                return invalid(format!("term `{t}` has two ellipses"));
            }
            out.push(None);
            rest = &rest[3..];
        } else if c.is_ascii_alphabetic() {
            out.push(Some(c));
            rest = &rest[1..];
        } else {
            return invalid(format!("unexpected `{c}` in einsum term `{t}`"));
        }
    }
    Ok(out)
}

/// The term with its ellipsis expanded into `ell` labels (right-aligned to `total`).
fn expand(term: &[Option<char>], ell: usize, total: usize) -> Vec<char> {
    let mut out = Vec::new();
    for l in term {
        match l {
            Some(c) => out.push(*c),
            None => out.extend(
                (total - ell..total).filter_map(|i| char::from_u32(ELLIPSIS_LABEL + i as u32)),
            ),
        }
    }
    out
}

/// `x` (labelled `labels`) with each repeated label reduced to its diagonal.
fn take_diagonals(b: &mut Builder, mut x: ValueId, labels: &mut Vec<char>) -> NResult<ValueId> {
    while let Some((p, q)) = (0..labels.len())
        .flat_map(|p| (p + 1..labels.len()).map(move |q| (p, q)))
        .find(|&(p, q)| labels[p] == labels[q])
    {
        let s = b.shape(x);
        let n = s[p];
        let (ip, iq) = (b.iota(n, p, s.len())?, b.iota(n, q, s.len())?);
        let eye = b.binary(BinaryOp::Equal, ip, iq)?;
        let zero = b.scalar(b.dtype(x), 0.0);
        let on = b.select(eye, x, zero)?;
        x = b.reduce(ReduceOp::Sum, on, &[q], false)?;
        labels.remove(q);
    }
    Ok(x)
}

/// `x` transposed so its labels follow `order` (which holds them all).
fn permute(b: &mut Builder, x: ValueId, labels: &[char], order: &[char]) -> NResult<ValueId> {
    let perm: Vec<usize> = order
        .iter()
        .filter_map(|c| labels.iter().position(|l| l == c))
        .collect();
    b.transpose(x, perm)
}

pub(super) fn einsum(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let eq: String = cx
        .string("equation", "")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<Vec<Option<char>>> = lhs.split(',').map(parse_term).collect::<NResult<_>>()?;
    let xs = cx.present_inputs();
    if terms.len() != xs.len() {
        return invalid(format!(
            "equation `{eq}` has {} operands, the node {}",
            terms.len(),
            xs.len()
        ));
    }
    // Expand ellipses; check ranks and sizes.
    let mut ell_ranks = Vec::new();
    for (t, &x) in terms.iter().zip(&xs) {
        let named = t.iter().filter(|l| l.is_some()).count();
        let r = b.rank(x);
        let has_ell = t.contains(&None);
        if r < named || (!has_ell && r != named) {
            return invalid(format!(
                "operand of rank {r} does not fit its term in `{eq}`"
            ));
        }
        ell_ranks.push(r - named);
    }
    let total_ell = ell_ranks.iter().copied().max().unwrap_or(0);
    let mut labelled: Vec<(ValueId, Vec<char>)> = Vec::new();
    let mut sizes: BTreeMap<char, usize> = BTreeMap::new();
    for ((t, &x), &ell) in terms.iter().zip(&xs).zip(&ell_ranks) {
        let labels = expand(t, ell, total_ell);
        for (&l, &d) in labels.iter().zip(&b.shape(x)) {
            let e = sizes.entry(l).or_insert(d);
            if *e == 1 {
                *e = d;
            } else if d != *e && d != 1 {
                return invalid(format!("label `{l}` has sizes {e} and {d} in `{eq}`"));
            }
        }
        labelled.push((x, labels));
    }
    let ellipsis: Vec<char> = (0..total_ell)
        .filter_map(|i| char::from_u32(ELLIPSIS_LABEL + i as u32))
        .collect();
    let output: Vec<char> = match rhs {
        Some(r) => {
            let t = parse_term(r)?;
            expand(&t, total_ell, total_ell)
        }
        None => {
            let mut counts: BTreeMap<char, usize> = BTreeMap::new();
            for (_, ls) in &labelled {
                for &l in ls.iter().filter(|l| l.is_ascii_alphabetic()) {
                    *counts.entry(l).or_default() += 1;
                }
            }
            let once = counts.into_iter().filter(|&(_, n)| n == 1).map(|(l, _)| l);
            ellipsis.iter().copied().chain(once).collect()
        }
    };
    if let Some(l) = output.iter().find(|l| !sizes.contains_key(l)) {
        return invalid(format!("output label `{l}` is in no operand of `{eq}`"));
    }
    // Diagonals, then labels only one operand has and the output lacks are summed at once.
    for i in 0..labelled.len() {
        let (x, mut labels) = labelled[i].clone();
        let mut x = take_diagonals(b, x, &mut labels)?;
        let private: Vec<usize> = (0..labels.len())
            .filter(|&a| {
                !output.contains(&labels[a])
                    && labelled
                        .iter()
                        .enumerate()
                        .all(|(j, (_, ls))| j == i || !ls.contains(&labels[a]))
            })
            .collect();
        if !private.is_empty() {
            x = b.reduce(ReduceOp::Sum, x, &private, false)?;
            labels = (0..labels.len())
                .filter(|a| !private.contains(a))
                .map(|a| labels[a])
                .collect();
        }
        labelled[i] = (x, labels);
    }
    let dt = b.dtype(xs[0]);
    if labelled.len() == 2 && dt.is_float() {
        return contract_pair(b, &labelled, &output, &sizes);
    }
    broadcast_product(b, &labelled, &output, &sizes)
}

/// Two operands as one batched MATMUL: `[batch, left, contracted] x [batch, contracted, right]`.
fn contract_pair(
    b: &mut Builder,
    ops: &[(ValueId, Vec<char>)],
    output: &[char],
    sizes: &BTreeMap<char, usize>,
) -> NResult<ValueId> {
    let ((x, lx), (y, ly)) = (&ops[0], &ops[1]);
    let batch: Vec<char> = output
        .iter()
        .copied()
        .filter(|l| lx.contains(l) && ly.contains(l))
        .collect();
    let left: Vec<char> = lx.iter().copied().filter(|l| !ly.contains(l)).collect();
    let right: Vec<char> = ly.iter().copied().filter(|l| !lx.contains(l)).collect();
    let contracted: Vec<char> = lx
        .iter()
        .copied()
        .filter(|l| ly.contains(l) && !output.contains(l))
        .collect();
    let size = |ls: &[char]| ls.iter().map(|l| sizes[l]).product::<usize>();
    let dims = |ls: &[char]| ls.iter().map(|l| sizes[l]).collect::<Vec<_>>();
    let a_order = [batch.clone(), left.clone(), contracted.clone()].concat();
    let b_order = [batch.clone(), contracted.clone(), right.clone()].concat();
    let a = permute(b, *x, lx, &a_order)?;
    let a = b.broadcast_to(a, &dims(&a_order))?;
    let a = b.reshape(a, vec![size(&batch), size(&left), size(&contracted)])?;
    let c = permute(b, *y, ly, &b_order)?;
    let c = b.broadcast_to(c, &dims(&b_order))?;
    let c = b.reshape(c, vec![size(&batch), size(&contracted), size(&right)])?;
    let p = b.add(Op::MatMul(Default::default()), &[a, c])?;
    let got = [batch, left, right].concat();
    let p = b.reshape(p, dims(&got))?;
    permute(b, p, &got, output)
}

/// Any number of operands: each aligned to the output's labels followed by the summed ones,
/// multiplied with broadcasting, the summed labels reduced.
fn broadcast_product(
    b: &mut Builder,
    ops: &[(ValueId, Vec<char>)],
    output: &[char],
    sizes: &BTreeMap<char, usize>,
) -> NResult<ValueId> {
    let mut order: Vec<char> = output.to_vec();
    for (_, ls) in ops {
        for &l in ls {
            if !order.contains(&l) {
                order.push(l);
            }
        }
    }
    let mut acc: Option<ValueId> = None;
    for (x, ls) in ops {
        let mine: Vec<char> = order.iter().copied().filter(|l| ls.contains(l)).collect();
        let t = permute(b, *x, ls, &mine)?;
        let st = b.shape(t);
        let full: Vec<usize> = order
            .iter()
            .map(|l| mine.iter().position(|m| m == l).map_or(1, |p| st[p]))
            .collect();
        let t = b.reshape(t, full)?;
        acc = Some(match acc {
            None => t,
            Some(a) => b.binary(BinaryOp::Mul, a, t)?,
        });
    }
    let Some(mut acc) = acc else {
        return unsupported("Einsum without operands");
    };
    let want: Vec<usize> = order.iter().map(|l| sizes[l]).collect();
    acc = b.broadcast_to(acc, &want)?;
    let summed: Vec<usize> = (output.len()..order.len()).collect();
    if summed.is_empty() {
        return Ok(acc);
    }
    b.reduce(ReduceOp::Sum, acc, &summed, false)
}
