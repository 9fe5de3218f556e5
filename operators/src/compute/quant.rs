//! RESCALE (TOSA `apply_scale` in exact `i64` arithmetic) and TABLE (i8 lookup).
//!
//! Invariant: RESCALE computes `clamp(floor((v * m + round) / 2^shift) + output_zp)` with
//! `v = x - input_zp`, exactly as the reference's i128 arithmetic, for every input of at most
//! 32 bits (and i64 inputs with `|v| < 2^46` whose result fits i64). TIR has only 64-bit
//! integers, so the multiplier is split as `m = mh * 2^16 + ml` (`0 <= ml < 2^16`):
//! `A = v * mh`, `B = v * ml + round`, `X = A + floor(B / 2^16)` is `floor((v*m + round) / 2^16)`
//! without overflow, and the result is `floor(X / 2^(shift-16))` for `shift >= 16`, or
//! `X * 2^(16-shift) + floor((B mod 2^16) / 2^shift)` below. Per-channel multipliers and shifts
//! are bound as `i64[C]` tables indexed by the channel coordinate; a single pair is inlined as
//! constants. The clamp is applied before adding `output_zp`, with bounds moved by `output_zp`
//! so that the addition cannot overflow.

use super::expr::{c, in_range};
use super::{unsupported, Builder, ComputeError, Operand};
use kiln_ir::op::{RescaleAttrs, RoundingMode};
use kiln_ir::{DType, Op, Tensor, TensorType};
use kiln_tir::{BufferId, Expr};

fn range(dtype: DType) -> (i128, i128) {
    dtype
        .int_range()
        .unwrap_or((i64::MIN.into(), i64::MAX.into()))
}

fn to_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Per-channel parameters, each a constant or a table column.
struct Params {
    mh: Vec<i64>,
    ml: Vec<i64>,
    round: Vec<i64>,
    /// `2^30` where DOUBLE_ROUND applies (added with the sign of `v`), else 0.
    adjust: Vec<i64>,
    /// `2^(shift - 16)` for shifts of at least 16, else 1 (never a zero divisor).
    div_hi: Vec<i64>,
    /// `2^(16 - shift)` for shifts below 16, else 0.
    mul_lo: Vec<i64>,
    /// `2^shift` for shifts below 16, else 1.
    div_lo: Vec<i64>,
}

fn params(r: &RescaleAttrs) -> Params {
    let mut p = Params {
        mh: vec![],
        ml: vec![],
        round: vec![],
        adjust: vec![],
        div_hi: vec![],
        mul_lo: vec![],
        div_lo: vec![],
    };
    for (&m, &s) in r.multiplier.iter().zip(&r.shift) {
        let m = if r.scale32 { m as i64 } else { m as i16 as i64 };
        let s = s.clamp(1, 62) as u32;
        p.mh.push(m.div_euclid(1 << 16));
        p.ml.push(m.rem_euclid(1 << 16));
        p.round.push(1i64 << (s - 1));
        let double = r.scale32 && r.rounding == RoundingMode::Double && s > 31;
        p.adjust.push(if double { 1 << 30 } else { 0 });
        if s >= 16 {
            p.div_hi.push(1i64 << (s - 16));
            p.mul_lo.push(0);
            p.div_lo.push(1);
        } else {
            p.div_hi.push(1);
            p.mul_lo.push(1i64 << (16 - s));
            p.div_lo.push(1i64 << s);
        }
    }
    p
}

pub(crate) fn define(
    b: &mut Builder,
    op: &Op,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let x = &xs[0];
    let shape = out.shape.clone();
    match op {
        Op::Table => {
            let t = &xs[1];
            b.stage("table", &shape, |ax| {
                let i = Expr::cast(DType::I64, Expr::load(x.id, ax.to_vec())) + c(128);
                Expr::select(
                    in_range(&i, 256),
                    Expr::load(t.id, vec![i]),
                    Expr::int_of(0, DType::I8),
                )
            })
        }
        Op::Rescale(r) => {
            if r.multiplier.is_empty() || r.multiplier.len() != r.shift.len() {
                return Err(unsupported(op, "multiplier and shift vectors do not match"));
            }
            let p = params(r);
            let per_channel = r.multiplier.len() > 1;
            let axis = r.channel_axis.unwrap_or(0);
            // Each parameter: a constant, or a table loaded at the channel coordinate.
            let mut tables: Vec<Option<BufferId>> = vec![];
            let cols = [
                &p.mh, &p.ml, &p.round, &p.adjust, &p.div_hi, &p.mul_lo, &p.div_lo,
            ];
            let names = ["mh", "ml", "round", "adjust", "div_hi", "mul_lo", "div_lo"];
            for (col, name) in cols.iter().zip(names) {
                if per_channel {
                    let t = Tensor::new(vec![col.len()], col.to_vec())?;
                    tables.push(Some(b.table(&format!("rescale_{name}"), t)?));
                } else {
                    tables.push(None);
                }
            }
            let (lo, hi) = range(r.to);
            let ozp = r.output_zp as i128;
            let (lo2, hi2) = (to_i64(lo - ozp), to_i64(hi - ozp));
            let izp = r.input_zp as i64;
            let single_shift_hi = !per_channel && p.mul_lo[0] == 0;
            let to = r.to;
            b.stage("rescale", &shape, |ax| {
                let param = |k: usize| -> Expr {
                    match tables[k] {
                        Some(t) => Expr::load(t, vec![ax[axis].clone()]),
                        None => c(cols[k][0]),
                    }
                };
                let v = Expr::cast(DType::I64, Expr::load(x.id, ax.to_vec())) - c(izp);
                let adj = param(3);
                let round =
                    param(2) + Expr::select(Expr::ge(v.clone(), c(0)), adj.clone(), c(0) - adj);
                let a = v.clone() * param(0);
                let bb = v * param(1) + round;
                let xx = a + Expr::floordiv(bb.clone(), c(1 << 16));
                let low = Expr::floormod(bb, c(1 << 16));
                let hi_branch = Expr::floordiv(xx.clone(), param(4));
                let lo_branch = xx * param(5) + Expr::floordiv(low, param(6));
                let res = if per_channel {
                    Expr::select(super::expr::eq(param(5), c(0)), hi_branch, lo_branch)
                } else if single_shift_hi {
                    hi_branch
                } else {
                    lo_branch
                };
                let clamped = Expr::max(Expr::min(res, c(hi2)), c(lo2)) + c(r.output_zp as i64);
                Expr::cast(to, clamped)
            })
        }
        other => Err(unsupported(other, "not a quantisation op")),
    }
}
