//! RESCALE (TOSA v1.0 integer requantisation) and TABLE (i8 lookup).
//!
//! Invariant: RESCALE evaluates TOSA's `apply_scale_32` / `apply_scale_16` exactly, in i128 so
//! nothing overflows: `(v * multiplier + round) >> shift` with `round = 1 << (shift - 1)`
//! (round half up), plus DOUBLE_ROUND's `±(1 << 30)` when `shift > 31` (32-bit scales only),
//! then adds `output_zp` and saturates to the output dtype. TOSA's REQUIREs on the intermediate
//! range are not errors here: out-of-range intermediates simply saturate.

use crate::util::fail_named;
use crate::OpError;
use kiln_ir::op::{RescaleAttrs, RoundingMode};
use kiln_ir::{DType, Tensor, TensorData};

/// TOSA `apply_scale_32` (with `double_round`) or `apply_scale_16`, computed without overflow.
pub fn apply_scale(
    value: i64,
    multiplier: i32,
    shift: u8,
    scale32: bool,
    double_round: bool,
) -> i128 {
    let shift = u32::from(shift.clamp(1, 126));
    let mut round: i128 = 1i128 << (shift - 1);
    if scale32 && double_round && shift > 31 {
        if value >= 0 {
            round += 1 << 30;
        } else {
            round -= 1 << 30;
        }
    }
    let multiplier = if scale32 {
        i128::from(multiplier)
    } else {
        // apply_scale_16 takes an i16 multiplier.
        i128::from(multiplier as i16)
    };
    (i128::from(value) * multiplier + round) >> shift
}

fn range(dtype: DType) -> (i128, i128) {
    dtype
        .int_range()
        .unwrap_or((i64::MIN.into(), i64::MAX.into()))
}

/// RESCALE: `clamp(apply_scale(x - input_zp) + output_zp)` per element, with the
/// multiplier/shift of the element's channel along `channel_axis` when there are several.
pub fn rescale(r: &RescaleAttrs, x: &Tensor) -> Result<TensorData, OpError> {
    if !x.dtype().is_int() || !r.to.is_int() {
        return Err(fail_named("rescale", "converts integers only"));
    }
    let shape = x.shape();
    let (channels, inner) = match (r.multiplier.len(), r.channel_axis) {
        (n, Some(axis)) if n > 1 && axis < shape.len() => {
            (shape[axis], shape[axis + 1..].iter().product::<usize>())
        }
        (n, _) if n > 1 => return Err(fail_named("rescale", "per-channel needs an axis")),
        _ => (1, 1),
    };
    let (lo, hi) = range(r.to);
    let double = r.rounding == RoundingMode::Double;
    let mut out = Vec::with_capacity(x.data().len());
    for (i, v) in x.data().to_i64_vec().into_iter().enumerate() {
        let c = if channels > 1 {
            (i / inner.max(1)) % channels
        } else {
            0
        };
        let (m, s) = match (r.multiplier.get(c), r.shift.get(c)) {
            (Some(&m), Some(&s)) => (m, s),
            _ => {
                return Err(fail_named(
                    "rescale",
                    "multiplier/shift vectors do not cover the channels",
                ))
            }
        };
        let v = v.wrapping_sub(i64::from(r.input_zp));
        let scaled = apply_scale(v, m, s, r.scale32, double);
        out.push((scaled + i128::from(r.output_zp)).clamp(lo, hi));
    }
    let it = out.into_iter();
    Ok(match r.to {
        DType::I8 => TensorData::I8(it.map(|v| v as i8).collect()),
        DType::U8 => TensorData::U8(it.map(|v| v as u8).collect()),
        DType::I16 => TensorData::I16(it.map(|v| v as i16).collect()),
        DType::I32 => TensorData::I32(it.map(|v| v as i32).collect()),
        _ => TensorData::I64(it.map(|v| v as i64).collect()),
    })
}

/// TABLE: `out = table[x + 128]` for i8 input and an i8[256] table.
pub fn table(x: &Tensor, t: &Tensor) -> Result<TensorData, OpError> {
    let bad = || fail_named("table", "needs i8 input and an i8[256] table");
    let (xs, ts) = (
        x.as_slice::<i8>().ok_or_else(bad)?,
        t.as_slice::<i8>().ok_or_else(bad)?,
    );
    if ts.len() != 256 {
        return Err(bad());
    }
    Ok(TensorData::I8(
        xs.iter()
            .map(|&v| ts[(i16::from(v) + 128) as usize])
            .collect(),
    ))
}
