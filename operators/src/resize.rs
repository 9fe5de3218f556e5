//! RESIZE with ONNX semantics, following `onnx/reference/ops/op_resize.py`: separable, one axis at
//! a time, in f64, with the reference's coordinate transforms, neighbour selection (edge-clamped
//! indices), nearest rounding modes, linear and cubic coefficients and `exclude_outside`.
//!
//! Invariant: every axis is either left untouched (scale 1, same size, no crop) or replaced by a
//! weighted sum of in-range input positions per output position (or `extrapolation_value` for
//! `tf_crop_and_resize` positions outside the input). The result is converted once to the input
//! dtype (integers, which only nearest accepts, with cast semantics).
//!
//! Scales are stored as f32. When the stored scale is the f32 rounding of `size / input` the
//! exact ratio is used instead, which is what ONNX does for models that give `sizes`.

use crate::util::fail_named;
use crate::OpError;
use kiln_ir::op::{CoordinateTransform, NearestRounding, ResizeAttrs, ResizeMode};
use kiln_ir::{Tensor, TensorData};

/// What one output position along an axis reads.
pub(crate) enum Tap {
    /// `extrapolation_value` (tf_crop_and_resize outside the input).
    Extrapolate,
    /// `sum(coeff * input[index])`.
    Weights(Vec<(usize, f64)>),
}

pub(crate) fn isclose(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn coeffs(r: &ResizeAttrs, ratio: f64) -> Vec<f64> {
    match r.mode {
        ResizeMode::Nearest => {
            if ratio.fract() == 0.0 {
                return vec![0.0, 1.0];
            }
            let floor = match r.nearest_rounding {
                NearestRounding::RoundPreferFloor => ratio <= 0.5,
                NearestRounding::RoundPreferCeil => ratio < 0.5,
                NearestRounding::Floor => true,
                NearestRounding::Ceil => false,
            };
            if floor {
                vec![1.0, 0.0]
            } else {
                vec![0.0, 1.0]
            }
        }
        ResizeMode::Linear => vec![1.0 - ratio, ratio],
        ResizeMode::Cubic => {
            let a = r.cubic_coeff_a as f64;
            let (p, q) = (ratio + 1.0, 1.0 - ratio);
            vec![
                ((a * p - 5.0 * a) * p + 8.0 * a) * p - 4.0 * a,
                ((a + 2.0) * ratio - (a + 3.0)) * ratio * ratio + 1.0,
                ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                ((a * (q + 1.0) - 5.0 * a) * (q + 1.0) + 8.0 * a) * (q + 1.0) - 4.0 * a,
            ]
        }
    }
}

/// The taps of every output position along one axis.
pub(crate) fn axis_taps(
    r: &ResizeAttrs,
    axis: usize,
    input: usize,
    out: usize,
    scale: f64,
) -> Vec<Tap> {
    let rank = r.size.len();
    let (roi_lo, roi_hi) = if r.roi.len() == 2 * rank {
        (r.roi[axis], r.roi[axis + rank])
    } else {
        (0.0, 1.0)
    };
    let in_f = input as f64;
    let out_f = scale * in_f;
    let last = input.saturating_sub(1);
    (0..out)
        .map(|y| {
            let y = y as f64;
            let x_ori = match r.coordinate_transform {
                CoordinateTransform::AlignCorners => {
                    if out_f == 1.0 {
                        0.0
                    } else {
                        y * (in_f - 1.0) / (out_f - 1.0)
                    }
                }
                CoordinateTransform::Asymmetric => y / scale,
                CoordinateTransform::TfCropAndResize => {
                    // The reference computes these roi products in f32.
                    let span = f64::from(roi_hi - roi_lo);
                    let base = f64::from(roi_lo * last as f32);
                    let x = if out_f == 1.0 {
                        f64::from((roi_hi - roi_lo) * last as f32 / 2.0)
                    } else {
                        y * span * (in_f - 1.0) / (out_f - 1.0)
                    };
                    let x = x + base;
                    if x < 0.0 || x > in_f - 1.0 {
                        return Tap::Extrapolate;
                    }
                    x
                }
                CoordinateTransform::PytorchHalfPixel => {
                    if out_f == 1.0 {
                        -0.5
                    } else {
                        (y + 0.5) / scale - 0.5
                    }
                }
                CoordinateTransform::HalfPixel => (y + 0.5) / scale - 0.5,
                CoordinateTransform::HalfPixelSymmetric => {
                    let adjustment = out as f64 / out_f;
                    let offset = in_f / 2.0 * (1.0 - adjustment);
                    offset + (y + 0.5) / scale - 0.5
                }
            };
            let x_int = x_ori.floor();
            let ratio = if x_ori == x_int { 1.0 } else { x_ori - x_int };
            let mut c = coeffs(r, ratio);
            let n = c.len() as i64;
            let pad = (n + 1) / 2;
            let xp = x_ori + pad as f64;
            let p = xp.floor();
            // Saturating: a degenerate scale (0, negative) may give an infinite coordinate.
            let offset = if xp == p { -(n / 2) } else { -(n / 2) + 1 };
            let start = (p as i64).saturating_add(offset).saturating_sub(pad);
            let idx: Vec<i64> = (0..n).map(|j| start.saturating_add(j)).collect();
            if r.exclude_outside {
                for (cj, &i) in c.iter_mut().zip(&idx) {
                    if i < 0 || i >= input as i64 {
                        *cj = 0.0;
                    }
                }
                let sum: f64 = c.iter().sum();
                let sum = if sum == 0.0 { 1.0 } else { sum };
                c.iter_mut().for_each(|cj| *cj /= sum);
            }
            Tap::Weights(
                idx.iter()
                    .zip(c)
                    .map(|(&i, cj)| (i.clamp(0, last as i64) as usize, cj))
                    .collect(),
            )
        })
        .collect()
}

/// RESIZE of `x` to `r.size`.
pub fn resize(r: &ResizeAttrs, x: &Tensor) -> Result<TensorData, OpError> {
    let rank = x.shape().len();
    if r.size.len() != rank || r.scales.len() != rank {
        return Err(fail_named("resize", "size and scales must match the rank"));
    }
    let mut shape = x.shape().to_vec();
    let mut data = x.data().to_f64_vec();
    let ev = r.extrapolation_value as f64;
    let tf = r.coordinate_transform == CoordinateTransform::TfCropAndResize;
    for axis in 0..rank {
        let (input, out) = (shape[axis], r.size[axis]);
        let stored = r.scales[axis];
        let exact = out as f64 / input as f64;
        let scale = if input > 0 && (exact as f32) == stored {
            exact
        } else {
            stored as f64
        };
        let roi_identity = r.roi.len() != 2 * rank
            || (isclose(r.roi[axis] as f64, 0.0) && isclose(r.roi[axis + rank] as f64, 1.0));
        if out == input && isclose(scale, 1.0) && (!tf || roi_identity) {
            continue;
        }
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let taps = if out == 0 {
            Vec::new()
        } else {
            axis_taps(r, axis, input, out, scale)
        };
        let mut next = Vec::with_capacity(outer * out * inner);
        for o in 0..outer {
            let src = &data[o * input * inner..(o + 1) * input * inner];
            for tap in &taps {
                match tap {
                    Tap::Extrapolate => next.extend(std::iter::repeat_n(ev, inner)),
                    Tap::Weights(w) => {
                        for i in 0..inner {
                            next.push(w.iter().map(|&(k, c)| c * src[k * inner + i]).sum());
                        }
                    }
                }
            }
        }
        data = next;
        shape[axis] = out;
    }
    Ok(TensorData::from_f64(x.dtype(), data))
}
