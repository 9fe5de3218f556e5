//! LinearAttention (opset 26): the recurrent attention of linear-attention and DeltaNet-style
//! blocks, `linear`, `gated`, `delta` or `gated_delta` updates of a `[B, H_kv, d_k, d_v]` state,
//! with grouped query heads and an optional past state.
//!
//! Invariant: the recurrence runs exactly as the ONNX reference's loop, one time step after the
//! other in f32 (decay `S *= exp(g_t)`, delta `v_t = beta_t (v_t - S^T k_t)`, write
//! `S += k_t v_t^T`, read `o_t = scale q_t S` over the query heads' KV group), unrolled over
//! the sequence (bounded by [`MAX_STEPS`]; the chunked parallel form is not implemented).

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{DType, Op, ValueId};

/// The longest sequence unrolled.
const MAX_STEPS: usize = 1024;

/// `[B, T, H*D]` -> `[B, H, T, D]` in f32.
fn heads(b: &mut Builder, x: ValueId, h: usize, what: &str) -> NResult<ValueId> {
    let s = b.shape(x);
    if s.len() != 3 || !s[2].is_multiple_of(h) {
        return invalid(format!("{what} must be [B, T, {h} * D], got {s:?}"));
    }
    let x = b.reshape(x, vec![s[0], s[1], h, s[2] / h])?;
    let x = b.transpose(x, vec![0, 2, 1, 3])?;
    b.cast(x, DType::F32)
}

/// Time step `t` of a `[B, H, T, D]` tensor, as `[B, H, 1, D]`.
fn step(b: &mut Builder, x: ValueId, t: usize) -> NResult<ValueId> {
    b.slice_axis(x, 2, t, 1, 1)
}

/// Outputs: `Y [B, T, H_q * d_v]`, `present_state [B, H_kv, d_k, d_v]`.
pub(super) fn linear_attention(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    let rule = cx.string("update_rule", "gated_delta")?;
    let (gating, delta) = match rule.as_str() {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        other => {
            return invalid(format!(
                "update_rule `{other}` is not linear, gated, delta or gated_delta"
            ))
        }
    };
    cx.int("chunk_size", 0)?; // a tuning hint without effect on the result
    let hq = cx.int_opt("q_num_heads")?;
    let hkv = cx.int_opt("kv_num_heads")?;
    let (hq, hkv) = match (hq, hkv) {
        (Some(q), Some(k)) if q > 0 && k > 0 && q % k == 0 => (q as usize, k as usize),
        other => {
            return invalid(format!(
            "q_num_heads and kv_num_heads must be positive with q a multiple of kv, got {other:?}"
        ))
        }
    };
    let query = cx.input(0)?;
    let out_dtype = b.dtype(query);
    if !out_dtype.is_float() {
        return unsupported(format!("LinearAttention of {out_dtype}"));
    }
    let q4 = heads(b, query, hq, "query")?;
    let k4 = heads(b, cx.input(1)?, hkv, "key")?;
    let v4 = heads(b, cx.input(2)?, hkv, "value")?;
    let (qs, ks, vs) = (b.shape(q4), b.shape(k4), b.shape(v4));
    let (batch, len, dk, dv) = (qs[0], qs[2], qs[3], vs[3]);
    if ks[3] != dk || ks[2] != len || vs[2] != len || ks[0] != batch || vs[0] != batch {
        return invalid(format!(
            "query {qs:?}, key {ks:?} and value {vs:?} (as [B, H, T, D]) do not match"
        ));
    }
    if len > MAX_STEPS {
        return unsupported(format!(
            "sequences longer than {MAX_STEPS} steps (the recurrence is unrolled), got {len}"
        ));
    }
    let (decay, beta) = (cx.opt_input(4), cx.opt_input(5));
    if gating != decay.is_some() || delta != beta.is_some() {
        return invalid(format!(
            "update_rule `{rule}` {} decay and {} beta",
            if gating { "needs" } else { "forbids" },
            if delta { "needs" } else { "forbids" }
        ));
    }
    // decay: [B, T, H_kv] (per head) or [B, T, H_kv * d_k] -> [B, H_kv, T, 1 or d_k].
    let decay4 = match decay {
        Some(g) => {
            let gs = b.shape(g);
            let per = match gs.as_slice() {
                [bb, t, last] if *bb == batch && *t == len && *last == hkv => 1,
                [bb, t, last] if *bb == batch && *t == len && *last == hkv * dk => dk,
                _ => {
                    return invalid(format!(
                        "decay must be [B, T, H_kv] or [B, T, H_kv * d_k], got {gs:?}"
                    ))
                }
            };
            let g = b.reshape(g, vec![batch, len, hkv, per])?;
            let g = b.transpose(g, vec![0, 2, 1, 3])?;
            Some(b.cast(g, DType::F32)?)
        }
        None => None,
    };
    // beta: [B, T, H_kv or 1] -> [B, H_kv or 1, T, 1].
    let beta4 = match beta {
        Some(bt) => {
            let bs = b.shape(bt);
            let hb = match bs.as_slice() {
                [bb, t, last] if *bb == batch && *t == len && (*last == hkv || *last == 1) => *last,
                _ => return invalid(format!("beta must be [B, T, H_kv or 1], got {bs:?}")),
            };
            let bt = b.reshape(bt, vec![batch, len, hb, 1])?;
            let bt = b.transpose(bt, vec![0, 2, 1, 3])?;
            Some(b.cast(bt, DType::F32)?)
        }
        None => None,
    };
    let state_shape = vec![batch, hkv, dk, dv];
    let (mut state, state_dtype) = match cx.opt_input(3) {
        Some(p) if b.shape(p) == state_shape => (b.cast(p, DType::F32)?, b.dtype(p)),
        Some(p) => {
            return invalid(format!(
                "past_state must be {state_shape:?}, got {:?}",
                b.shape(p)
            ))
        }
        None => {
            let zeros = vec![0.0; batch * hkv * dk * dv];
            (
                b.const_f64(DType::F32, state_shape.clone(), &zeros)?,
                out_dtype,
            )
        }
    };
    let scale = match cx.float_opt("scale")? {
        Some(s) if s != 0.0 => f64::from(s),
        _ => 1.0 / (dk as f64).sqrt(),
    };
    let group = hq / hkv;
    let mut outputs = Vec::with_capacity(len);
    for t in 0..len {
        let (q_t, k_t) = (step(b, q4, t)?, step(b, k4, t)?);
        let mut v_t = step(b, v4, t)?;
        if let Some(g) = decay4 {
            // [B, H_kv, 1, 1 or d_k] -> [B, H_kv, 1 or d_k, 1]: scales rows of S.
            let g_t = step(b, g, t)?;
            let gs = b.shape(g_t);
            let g_t = b.reshape(g_t, vec![gs[0], gs[1], gs[3], 1])?;
            let e = b.unary(UnaryOp::Exp, g_t)?;
            state = b.binary(BinaryOp::Mul, state, e)?;
        }
        if let Some(bt) = beta4 {
            // retrieved = k_t S: [B, H_kv, 1, d_v].
            let retrieved = super::matmul::matmul_nd(b, k_t, state, Default::default())?;
            let d = b.binary(BinaryOp::Sub, v_t, retrieved)?;
            let b_t = step(b, bt, t)?;
            v_t = b.binary(BinaryOp::Mul, b_t, d)?;
        }
        let k_col = b.transpose(k_t, vec![0, 1, 3, 2])?;
        let outer = b.binary(BinaryOp::Mul, k_col, v_t)?;
        state = b.binary(BinaryOp::Add, state, outer)?;
        let read = if group == 1 {
            state
        } else {
            let s = b.reshape(state, vec![batch, hkv, 1, dk * dv])?;
            let s = b.add(
                Op::Tile {
                    multiples: vec![1, 1, group, 1],
                },
                &[s],
            )?;
            b.reshape(s, vec![batch, hq, dk, dv])?
        };
        let o = super::matmul::matmul_nd(b, q_t, read, Default::default())?;
        outputs.push(b.binary_scalar(BinaryOp::Mul, o, scale)?);
    }
    let o = b.concat(&outputs, 2)?; // [B, H_q, T, d_v]
    let o = b.transpose(o, vec![0, 2, 1, 3])?;
    let o = b.reshape(o, vec![batch, len, hq * dv])?;
    let y = b.cast(o, out_dtype)?;
    let present = b.cast(state, state_dtype)?;
    Ok(vec![y, present])
}
