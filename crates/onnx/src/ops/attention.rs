//! Attention (opsets 23-25) and RotaryEmbedding (opset 23), the transformer blocks of the
//! newer opsets.
//!
//! Attention: scaled dot-product attention with masks, causal and sliding-window
//! frontiers, grouped-query heads, a KV cache (`past_*` inputs, `present_*` outputs) or an
//! external cache with `nonpad_kv_seqlen`, softcap and the `qk_matmul_output` debug output.
//!
//! Invariant: the expansion computes exactly what the ONNX reference implementation
//! (`onnx/reference/ops/op_attention.py`) computes, in the same order of operations: `Q` and
//! `K^T` are each scaled by `sqrt(scale)` (rounded to the input type) before their product, the
//! additive bias collects the float mask (or a boolean mask as `0 / -inf`) and the causal,
//! window and padding frontiers as `0 / -inf` terms, the softmax is the safe one (an all `-inf`
//! row gives zeros, never NaN) and a row whose bias is all `-inf` attends nothing (zero output).
//! Frontiers are bounds on `j - i` (an iota difference, folded to a constant when small);
//! those that depend on `nonpad_kv_seqlen` are computed in the graph.

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, OrderedF64, PadMode, ReduceOp, UnaryOp};
use kiln_ir::{DType, Op, ValueId};

/// The attributes of one Attention node that shape its expansion.
struct AttentionAttrs {
    scale: Option<f32>,
    is_causal: bool,
    q_heads: Option<usize>,
    kv_heads: Option<usize>,
    softmax_dtype: Option<DType>,
    softcap: Option<f32>,
    qk_output_mode: i64,
    /// `-1` leaves a side of the window unbounded.
    left_window: i64,
    right_window: i64,
}

impl AttentionAttrs {
    fn read(cx: &NodeCx) -> NResult<Self> {
        let heads = |name: &str| -> NResult<Option<usize>> {
            match cx.int_opt(name)? {
                None => Ok(None),
                Some(h) if h >= 1 => Ok(Some(h as usize)),
                Some(h) => invalid(format!("{name} must be positive, got {h}")),
            }
        };
        let softmax_dtype = match cx.int_opt("softmax_precision")? {
            None => None,
            Some(1) => Some(DType::F32),
            Some(10) => Some(DType::F16),
            Some(11) => Some(DType::F64),
            Some(16) => Some(DType::BF16),
            Some(other) => {
                return unsupported(format!(
                    "softmax_precision {other} (float, float16, double or bfloat16 are supported)"
                ))
            }
        };
        let window = |name: &str| -> NResult<i64> {
            match cx.int(name, -1)? {
                w if w >= -1 => Ok(w),
                w => invalid(format!("{name} must be -1 or nonnegative, got {w}")),
            }
        };
        let qk_output_mode = cx.int("qk_matmul_output_mode", 0)?;
        if !(0..=3).contains(&qk_output_mode) {
            return invalid(format!(
                "qk_matmul_output_mode must be 0..3, got {qk_output_mode}"
            ));
        }
        Ok(AttentionAttrs {
            scale: cx.float_opt("scale")?,
            is_causal: cx.flag("is_causal", false)?,
            q_heads: heads("q_num_heads")?,
            kv_heads: heads("kv_num_heads")?,
            softmax_dtype,
            softcap: cx.float_opt("softcap")?,
            qk_output_mode,
            left_window: window("left_window_size")?,
            right_window: window("right_window_size")?,
        })
    }

    fn has_window(&self) -> bool {
        self.left_window >= 0 || self.right_window >= 0
    }
}

/// `[B, S, H*D]` -> `[B, H, S, D]`.
fn split_heads(b: &mut Builder, x: ValueId, heads: usize, what: &str) -> NResult<ValueId> {
    let s = b.shape(x);
    if !s[2].is_multiple_of(heads) {
        return invalid(format!(
            "{what}'s hidden size {} is not a multiple of its {heads} heads",
            s[2]
        ));
    }
    let x = b.reshape(x, vec![s[0], s[1], heads, s[2] / heads])?;
    b.transpose(x, vec![0, 2, 1, 3])
}

/// `select(allowed, 0, -inf)` in `dtype`.
fn frontier_bias(b: &mut Builder, allowed: ValueId, dtype: DType) -> NResult<ValueId> {
    let zero = b.scalar(dtype, 0.0);
    let neg_inf = b.scalar(dtype, f64::NEG_INFINITY);
    b.select(allowed, zero, neg_inf)
}

/// `j - i` over `[1, 1, rows (i), cols (j)]`: every frontier is a bound on it.
fn key_minus_query(b: &mut Builder, rows: usize, cols: usize) -> NResult<ValueId> {
    let i = b.iota(rows, 2, 4)?;
    let j = b.iota(cols, 3, 4)?;
    b.binary(BinaryOp::Sub, j, i)
}

/// Where the keys of each query block start: a per-batch offset read from `nonpad_kv_seqlen`
/// (external cache) or a constant (the past length, or 0).
enum Offset {
    Constant(i64),
    /// `nonpad_kv_seqlen` as `[B, 1, 1, 1]` i64; the offset is `nonpad - q_len`.
    PerBatch(ValueId),
}

/// The causal and window frontiers as `0 / -inf` bias terms (none when neither applies).
fn frontiers(
    b: &mut Builder,
    a: &AttentionAttrs,
    offset: &Offset,
    (lq, lkv): (usize, usize),
    dtype: DType,
) -> NResult<Vec<ValueId>> {
    let mut terms = Vec::new();
    let (left, right) = (a.left_window, a.right_window);
    if !a.is_causal && !a.has_window() {
        return Ok(terms);
    }
    let d = key_minus_query(b, lq, lkv)?;
    // Query i sits at absolute position p = i + offset and may see key j when j <= p
    // (causal), p - j <= left and j - p <= right (window): bounds on d = j - i.
    let mut conditions = Vec::new();
    match offset {
        Offset::Constant(off) => {
            let bound = |b: &mut Builder, v: i64| b.scalar(DType::I64, v as f64);
            if a.is_causal {
                let hi = bound(b, *off);
                conditions.push(b.binary(BinaryOp::GreaterEqual, hi, d)?);
            }
            if left >= 0 {
                let lo = bound(b, off - left);
                conditions.push(b.binary(BinaryOp::GreaterEqual, d, lo)?);
            }
            if right >= 0 {
                let hi = bound(b, off + right);
                conditions.push(b.binary(BinaryOp::GreaterEqual, hi, d)?);
            }
        }
        Offset::PerBatch(nonpad) => {
            // offset = nonpad - lq: j <= p  <=>  nonpad >= d + lq, and so on.
            let lq = lq as f64;
            if a.is_causal {
                let t = b.binary_scalar(BinaryOp::Add, d, lq)?;
                conditions.push(b.binary(BinaryOp::GreaterEqual, *nonpad, t)?);
            }
            if left >= 0 {
                let t = b.binary_scalar(BinaryOp::Add, d, left as f64 + lq)?;
                conditions.push(b.binary(BinaryOp::GreaterEqual, t, *nonpad)?);
            }
            if right >= 0 {
                let t = b.binary_scalar(BinaryOp::Add, d, lq - right as f64)?;
                conditions.push(b.binary(BinaryOp::GreaterEqual, *nonpad, t)?);
            }
        }
    }
    for c in conditions {
        terms.push(frontier_bias(b, c, dtype)?);
    }
    Ok(terms)
}

/// The mask input as an additive bias over `lkv` keys: a boolean mask becomes `0 / -inf`, and a
/// mask shorter than the keys is padded with `-inf`.
fn mask_bias(b: &mut Builder, mask: ValueId, lkv: usize, dtype: DType) -> NResult<ValueId> {
    let s = b.shape(mask);
    let Some(&last) = s.last() else {
        return invalid("attn_mask must have rank at least 1");
    };
    if last > lkv {
        return invalid(format!(
            "attn_mask covers {last} keys but there are only {lkv}"
        ));
    }
    let bias = match b.dtype(mask) {
        DType::Bool => frontier_bias(b, mask, dtype)?,
        d if d.is_float() => b.cast(mask, dtype)?,
        d => return invalid(format!("attn_mask must be bool or float, got {d}")),
    };
    if last == lkv {
        return Ok(bias);
    }
    let mut pads = vec![[0, 0]; s.len()];
    pads[s.len() - 1] = [0, lkv - last];
    b.add(
        Op::Pad {
            pads,
            mode: PadMode::Constant,
            value: OrderedF64(f64::NEG_INFINITY),
        },
        &[bias],
    )
}

/// Repeats each of the `[B, H, L, D]` heads `reps` times in place (`h0, h0, h1, h1, ...`).
fn repeat_heads(b: &mut Builder, x: ValueId, reps: usize) -> NResult<ValueId> {
    if reps == 1 {
        return Ok(x);
    }
    let s = b.shape(x);
    let x = b.reshape(x, vec![s[0], s[1], 1, s[2], s[3]])?;
    let x = b.add(
        Op::Tile {
            multiples: vec![1, 1, reps, 1, 1],
        },
        &[x],
    )?;
    b.reshape(x, vec![s[0], s[1] * reps, s[2], s[3]])
}

/// Softmax over the last axis that maps an all `-inf` row to zeros instead of NaN.
fn safe_softmax(b: &mut Builder, x: ValueId) -> NResult<ValueId> {
    let axis = b.rank(x) - 1;
    let dt = b.dtype(x);
    let max = b.reduce(ReduceOp::Max, x, &[axis], true)?;
    let neg_inf = b.scalar(dt, f64::NEG_INFINITY);
    let all_masked = b.binary(BinaryOp::Equal, max, neg_inf)?;
    let zero = b.scalar(dt, 0.0);
    let safe_max = b.select(all_masked, zero, max)?;
    let shifted = b.binary(BinaryOp::Sub, x, safe_max)?;
    let e = b.unary(UnaryOp::Exp, shifted)?;
    let sum = b.reduce(ReduceOp::Sum, e, &[axis], true)?;
    let empty = b.binary(BinaryOp::Equal, sum, zero)?;
    let one = b.scalar(dt, 1.0);
    let sum = b.select(empty, one, sum)?;
    b.binary(BinaryOp::Div, e, sum)
}

/// Outputs: `Y`, `present_key`, `present_value`, `qk_matmul_output`.
pub(super) fn attention(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    let a = AttentionAttrs::read(cx)?;
    let (mut q, mut k, mut v) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let dtype = b.dtype(q);
    if !dtype.is_float() {
        return unsupported(format!("Attention of {dtype}"));
    }
    if b.dtype(k) != dtype || b.dtype(v) != dtype {
        return invalid("Q, K and V must have one element type");
    }
    let rank = b.rank(q);
    if b.rank(k) != rank || b.rank(v) != rank {
        return invalid("Q, K and V must have one rank");
    }
    match rank {
        3 => {
            let (Some(hq), Some(hkv)) = (a.q_heads, a.kv_heads) else {
                return invalid("3-D inputs need q_num_heads and kv_num_heads");
            };
            q = split_heads(b, q, hq, "Q")?;
            k = split_heads(b, k, hkv, "K")?;
            v = split_heads(b, v, hkv, "V")?;
        }
        4 => {
            if a.q_heads.is_some_and(|h| h != b.shape(q)[1])
                || a.kv_heads.is_some_and(|h| h != b.shape(k)[1])
            {
                return invalid("q_num_heads/kv_num_heads contradict the 4-D inputs' head dims");
            }
        }
        r => return invalid(format!("Q, K and V must be 3-D or 4-D, got rank {r}")),
    }
    let (sq, sk, sv) = (b.shape(q), b.shape(k), b.shape(v));
    let batch = sq[0];
    if sk[0] != batch || sv[0] != batch || sk[1] != sv[1] || sk[3] != sq[3] || sk[2] != sv[2] {
        return invalid(format!(
            "Q {sq:?}, K {sk:?} and V {sv:?} (as [batch, heads, sequence, head size]) do not match"
        ));
    }

    // The KV cache: present = concat(past, new) along the sequence.
    let (past_key, past_value) = (cx.opt_input(4), cx.opt_input(5));
    let nonpad = cx.opt_input(6);
    let past_len = match (past_key, past_value) {
        (Some(pk), Some(pv)) => {
            if nonpad.is_some() {
                return invalid("nonpad_kv_seqlen cannot be combined with past_key/past_value");
            }
            let len = b.shape(pk)[2..3].first().copied().unwrap_or(0);
            k = b.concat(&[pk, k], 2)?;
            v = b.concat(&[pv, v], 2)?;
            len
        }
        (None, None) => 0,
        _ => return invalid("past_key and past_value must be given together"),
    };
    let (present_key, present_value) = (k, v);
    let (lq, lkv) = (sq[2], b.shape(k)[2]);

    // The additive bias: mask, frontiers, padding of the external cache.
    let mut terms = Vec::new();
    if let Some(mask) = cx.opt_input(3) {
        terms.push(mask_bias(b, mask, lkv, dtype)?);
    }
    match nonpad {
        Some(n) => {
            if b.shape(n) != [batch] {
                return invalid(format!(
                    "nonpad_kv_seqlen must be [{batch}], got {:?}",
                    b.shape(n)
                ));
            }
            let n = b.cast(n, DType::I64)?;
            let n = b.reshape(n, vec![batch, 1, 1, 1])?;
            terms.extend(frontiers(b, &a, &Offset::PerBatch(n), (lq, lkv), dtype)?);
            // Keys at or past nonpad_kv_seqlen are padding.
            let keys = b.iota(lkv, 3, 4)?;
            let real = b.binary(BinaryOp::Greater, n, keys)?;
            terms.push(frontier_bias(b, real, dtype)?);
        }
        None => {
            let off = Offset::Constant(past_len as i64);
            terms.extend(frontiers(b, &a, &off, (lq, lkv), dtype)?);
        }
    }
    let mut bias: Option<ValueId> = None;
    for t in terms {
        bias = Some(match bias {
            None => t,
            Some(acc) => b.binary(BinaryOp::Add, acc, t)?,
        });
    }

    // Grouped-query attention: each KV head serves hq / hkv query heads.
    let (hq, hkv) = (sq[1], sk[1]);
    if !hq.is_multiple_of(hkv) {
        return invalid(format!(
            "{hq} query heads are not a multiple of {hkv} key/value heads"
        ));
    }
    let k = repeat_heads(b, k, hq / hkv)?;
    let v = repeat_heads(b, v, hq / hkv)?;

    let scale = a.scale.map_or(1.0 / (sq[3] as f64).sqrt(), f64::from);
    let root = scale.sqrt();
    let qs = b.binary_scalar(BinaryOp::Mul, q, root)?;
    let kt = b.transpose(k, vec![0, 1, 3, 2])?;
    let kts = b.binary_scalar(BinaryOp::Mul, kt, root)?;
    let mut qk = super::matmul::matmul_nd(b, qs, kts, Default::default())?;
    if let Some(cap) = a.softcap.filter(|&c| c > 0.0) {
        let c = f64::from(cap);
        let t = b.binary_scalar(BinaryOp::Div, qk, c)?;
        let t = b.unary(UnaryOp::Tanh, t)?;
        qk = b.binary_scalar(BinaryOp::Mul, t, c)?;
    }
    let scores = match bias {
        Some(bias) => b.binary(BinaryOp::Add, qk, bias)?,
        None => qk,
    };
    let scores_out = if a.qk_output_mode == 2 { scores } else { qk };
    let scores = match a.softmax_dtype {
        Some(d) => b.cast(scores, d)?,
        None => scores,
    };
    let mut p = safe_softmax(b, scores)?;
    if let Some(bias) = bias {
        // A query whose every key is masked attends nothing.
        let axis = b.rank(bias) - 1;
        let bias_max = b.reduce(ReduceOp::Max, bias, &[axis], true)?;
        let neg_inf = b.scalar(dtype, f64::NEG_INFINITY);
        let all_masked = b.binary(BinaryOp::Equal, bias_max, neg_inf)?;
        let zero = b.scalar(b.dtype(p), 0.0);
        p = b.select(all_masked, zero, p)?;
    }
    let p = b.cast(p, dtype)?;
    let qk_out = if a.qk_output_mode == 3 { p } else { scores_out };
    let mut y = super::matmul::matmul_nd(b, p, v, Default::default())?;
    if rank == 3 {
        let sy = b.shape(y);
        y = b.transpose(y, vec![0, 2, 1, 3])?;
        y = b.reshape(y, vec![sy[0], sy[2], sy[1] * sy[3]])?;
    }
    Ok(vec![y, present_key, present_value, qk_out])
}

/// RotaryEmbedding (opset 23): rotates the first `rotary_embedding_dim` features of each head
/// by the angles whose cosines and sines the caches hold, halves (`x[:d/2]`, `x[d/2:]`) or
/// interleaved pairs (`x[0::2]`, `x[1::2]`) as the real and imaginary parts; the remaining
/// features pass through. With `position_ids` the caches are `[max_position, d/2]` tables
/// gathered per token, without them `[batch, sequence, d/2]`.
pub(super) fn rotary_embedding(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let (mut cos, mut sin) = (cx.input(1)?, cx.input(2)?);
    let interleaved = cx.flag("interleaved", false)?;
    let shape = b.shape(x);
    // As [batch, sequence, heads, head size].
    let x4 = match shape.len() {
        4 => b.transpose(x, vec![0, 2, 1, 3])?,
        3 => {
            let heads = match cx.int("num_heads", 0)? {
                h if h >= 1 && shape[2].is_multiple_of(h as usize) => h as usize,
                h => {
                    return invalid(format!(
                        "3-D input needs num_heads dividing its hidden size {}, got {h}",
                        shape[2]
                    ))
                }
            };
            b.reshape(x, vec![shape[0], shape[1], heads, shape[2] / heads])?
        }
        r => return invalid(format!("input must be 3-D or 4-D, got rank {r}")),
    };
    let s4 = b.shape(x4);
    let head = s4[3];
    let dim = match cx.int("rotary_embedding_dim", 0)? {
        0 => head,
        d if d > 0 && d as usize <= head && d % 2 == 0 => d as usize,
        d => {
            return invalid(format!(
                "rotary_embedding_dim must be even and at most the head size {head}, got {d}"
            ))
        }
    };
    if let Some(ids) = cx.opt_input(3) {
        cos = b.add(Op::Gather { axis: 0 }, &[cos, ids])?;
        sin = b.add(Op::Gather { axis: 0 }, &[sin, ids])?;
    }
    let half = dim / 2;
    let table = vec![s4[0], s4[1], half];
    for c in [cos, sin] {
        if b.shape(c) != table {
            return invalid(format!(
                "the cos/sin caches must give {table:?} per token, got {:?}",
                b.shape(c)
            ));
        }
    }
    let cos = b.reshape(cos, vec![s4[0], s4[1], 1, half])?;
    let sin = b.reshape(sin, vec![s4[0], s4[1], 1, half])?;
    let (x1, x2) = if interleaved {
        (
            b.slice_axis(x4, 3, 0, half, 2)?,
            b.slice_axis(x4, 3, 1, half, 2)?,
        )
    } else {
        (
            b.slice_axis(x4, 3, 0, half, 1)?,
            b.slice_axis(x4, 3, half, half, 1)?,
        )
    };
    let (c1, s2) = (
        b.binary(BinaryOp::Mul, cos, x1)?,
        b.binary(BinaryOp::Mul, sin, x2)?,
    );
    let real = b.binary(BinaryOp::Sub, c1, s2)?;
    let (s1, c2) = (
        b.binary(BinaryOp::Mul, sin, x1)?,
        b.binary(BinaryOp::Mul, cos, x2)?,
    );
    let imag = b.binary(BinaryOp::Add, s1, c2)?;
    let rotated = if interleaved {
        let mut pair = b.shape(real);
        pair.push(1);
        let r = b.reshape(real, pair.clone())?;
        let i = b.reshape(imag, pair)?;
        let both = b.concat(&[r, i], 4)?;
        b.reshape(both, vec![s4[0], s4[1], s4[2], dim])?
    } else {
        b.concat(&[real, imag], 3)?
    };
    let y = if dim < head {
        let rest = b.slice_axis(x4, 3, dim, head - dim, 1)?;
        b.concat(&[rotated, rest], 3)?
    } else {
        rotated
    };
    if shape.len() == 3 {
        b.reshape(y, shape)
    } else {
        b.transpose(y, vec![0, 2, 1, 3])
    }
}
