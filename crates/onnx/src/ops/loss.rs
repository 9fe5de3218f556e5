//! The training losses of the default domain: NegativeLogLikelihoodLoss and
//! SoftmaxCrossEntropyLoss (inference graphs exported with their loss head keep them).
//!
//! Invariant: the loss of element `(n, d)` is `-weight[t] * input[n, t, d]` with `t =
//! target[n, d]`, and 0 where `t == ignore_index`; `mean` divides the sum by the sum of the
//! weights that applied (the element count without class weights), as the ONNX function body
//! does. Targets are clipped into `0..C` before indexing, so an ignored out-of-range target
//! never reads outside the input.

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, ReduceOp, UnaryOp};
use kiln_ir::{DType, Op, ValueId};

/// How the per-element losses are combined.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reduction {
    None,
    Sum,
    Mean,
}

fn reduction(cx: &NodeCx) -> NResult<Reduction> {
    match cx.string("reduction", "mean")?.as_str() {
        "none" => Ok(Reduction::None),
        "sum" => Ok(Reduction::Sum),
        "mean" => Ok(Reduction::Mean),
        other => invalid(format!(
            "reduction must be none, sum or mean, got `{other}`"
        )),
    }
}

/// The negative log-likelihood of `log_prob` `[N, C, D...]` at `target` `[N, D...]`.
fn nll(
    b: &mut Builder,
    log_prob: ValueId,
    target: ValueId,
    weight: Option<ValueId>,
    reduce: Reduction,
    ignore_index: Option<i64>,
) -> NResult<ValueId> {
    let s = b.shape(log_prob);
    let ts = b.shape(target);
    let dt = b.dtype(log_prob);
    if !dt.is_float() {
        return unsupported(format!("a loss over {dt}"));
    }
    if s.len() < 2 {
        return invalid(format!("input must be [N, C, D...], got {s:?}"));
    }
    let (n, c) = (s[0], s[1]);
    let mut want = vec![n];
    want.extend_from_slice(&s[2..]);
    if ts != want {
        return invalid(format!(
            "target must be {want:?} for input {s:?}, got {ts:?}"
        ));
    }
    if !b.dtype(target).is_int() {
        return invalid(format!("target must be integer, got {}", b.dtype(target)));
    }
    let d: usize = s[2..].iter().product();
    let x3 = b.reshape(log_prob, vec![n, c, d])?;
    let target = b.cast(target, DType::I64)?;
    let t2 = b.reshape(target, vec![n, d])?;
    let clipped = b.clamp(t2, 0.0, (c.max(1) - 1) as f64)?;
    let index = b.reshape(clipped, vec![n, 1, d])?;
    let picked = b.add(Op::GatherElements { axis: 1 }, &[x3, index])?;
    let picked = b.reshape(picked, vec![n, d])?;
    let neg = b.unary(UnaryOp::Negate, picked)?;
    // The weight of each element: its class weight (or 1), 0 where ignored.
    let mut w = match weight {
        Some(w) => {
            if b.shape(w) != [c] {
                return invalid(format!("weight must be [{c}], got {:?}", b.shape(w)));
            }
            let w = b.cast(w, dt)?;
            Some(b.add(Op::Gather { axis: 0 }, &[w, clipped])?)
        }
        None => None,
    };
    if let Some(ii) = ignore_index {
        let ii = b.scalar(DType::I64, ii as f64);
        let ignored = b.binary(BinaryOp::Equal, t2, ii)?;
        let zero = b.scalar(dt, 0.0);
        let kept = match w {
            Some(w) => w,
            None => b.scalar(dt, 1.0),
        };
        let kept = b.select(ignored, zero, kept)?;
        w = Some(b.broadcast_to(kept, &[n, d])?);
    }
    let loss = match w {
        Some(w) => b.binary(BinaryOp::Mul, w, neg)?,
        None => neg,
    };
    match reduce {
        Reduction::None => b.reshape(loss, ts),
        Reduction::Sum => b.reduce(ReduceOp::Sum, loss, &[0, 1], false),
        Reduction::Mean => {
            let total = b.reduce(ReduceOp::Sum, loss, &[0, 1], false)?;
            match w {
                Some(w) => {
                    let weights = b.reduce(ReduceOp::Sum, w, &[0, 1], false)?;
                    b.binary(BinaryOp::Div, total, weights)
                }
                None => b.binary_scalar(BinaryOp::Div, total, (n * d).max(1) as f64),
            }
        }
    }
}

/// NegativeLogLikelihoodLoss: `(input, target, weight?)`.
pub(super) fn negative_log_likelihood(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let reduce = reduction(cx)?;
    let ignore_index = cx.int_opt("ignore_index")?;
    nll(
        b,
        cx.input(0)?,
        cx.input(1)?,
        cx.opt_input(2),
        reduce,
        ignore_index,
    )
}

/// SoftmaxCrossEntropyLoss: `(scores, labels, weight?)` -> `(loss, log_prob?)`, the NLL of the
/// log-softmax over axis 1.
pub(super) fn softmax_cross_entropy(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    let reduce = reduction(cx)?;
    let ignore_index = cx.int_opt("ignore_index")?;
    let x = cx.input(0)?;
    if b.rank(x) < 2 {
        return invalid(format!("scores must be [N, C, D...], got {:?}", b.shape(x)));
    }
    let log_prob = super::norm::log_softmax_axis(b, x, 1)?;
    let loss = nll(
        b,
        log_prob,
        cx.input(1)?,
        cx.opt_input(2),
        reduce,
        ignore_index,
    )?;
    Ok(vec![loss, log_prob])
}
