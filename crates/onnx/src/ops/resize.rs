//! Resize (opsets 10 to 19+) and Upsample.
//!
//! Invariant: scales, sizes, roi and axes must be constants; the output size and the per-axis
//! scale given to the IR RESIZE follow the ONNX rules (sizes win over scales; with sizes the
//! scale is `out / in`, adjusted by `keep_aspect_ratio_policy`). Opset-10 Resize and Upsample use
//! the asymmetric transform with floor rounding of nearest neighbours.

use crate::builder::{invalid, norm_axes, norm_axis, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{CoordinateTransform, NearestRounding, ResizeAttrs, ResizeMode};
use kiln_ir::{Op, ValueId};

fn mode_of(s: &str) -> NResult<ResizeMode> {
    Ok(match s {
        "nearest" => ResizeMode::Nearest,
        "linear" | "bilinear" => ResizeMode::Linear,
        "cubic" | "bicubic" => ResizeMode::Cubic,
        other => return invalid(format!("unknown mode `{other}`")),
    })
}

pub(super) fn resize(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let shape = b.shape(x);
    let r = shape.len();
    let mode = mode_of(&cx.string("mode", "nearest")?)?;
    let legacy = cx.op_type == "Upsample" || cx.opset < 11;
    if legacy {
        let scales: Vec<f64> = if cx.op_type == "Upsample" && cx.opset < 9 {
            cx.floats_opt("scales")?
                .unwrap_or_default()
                .iter()
                .map(|&v| v as f64)
                .collect()
        } else {
            b.need_floats(cx.input(1)?, "scales")?
        };
        let size = sizes_from_scales(&shape, &scales)?;
        let attrs = ResizeAttrs {
            size,
            scales: scales.iter().map(|&s| s as f32).collect(),
            mode,
            coordinate_transform: CoordinateTransform::Asymmetric,
            nearest_rounding: NearestRounding::Floor,
            cubic_coeff_a: -0.75,
            exclude_outside: false,
            extrapolation_value: 0.0,
            roi: Vec::new(),
        };
        return b.add(Op::Resize(attrs), &[x]);
    }
    if cx.flag("antialias", false)? {
        return unsupported("antialias=1 is not supported");
    }
    let axes = match cx.ints_opt("axes")? {
        Some(a) => {
            norm_axes(&a, r)?; // rejects repeats
            a.iter()
                .map(|&v| norm_axis(v, r))
                .collect::<NResult<Vec<_>>>()?
        }
        None => (0..r).collect::<Vec<usize>>(),
    };
    let opt_floats = |b: &Builder, i: usize, what: &str| -> NResult<Option<Vec<f64>>> {
        match cx.opt_input(i) {
            None => Ok(None),
            Some(v) => {
                let vals = b.need_floats(v, what)?;
                Ok(if vals.is_empty() { None } else { Some(vals) })
            }
        }
    };
    let roi_in = opt_floats(b, 1, "roi")?;
    let scales_in = opt_floats(b, 2, "scales")?;
    let sizes_in = match cx.opt_input(3) {
        Some(v) => {
            let s = b.need_ints(v, "sizes")?;
            if s.is_empty() {
                None
            } else {
                Some(s)
            }
        }
        None => None,
    };
    let n = axes.len();
    let mut scales = vec![1.0f64; r];
    let mut size = shape.clone();
    match (&scales_in, &sizes_in) {
        (Some(_), Some(_)) => return invalid("only one of scales and sizes may be given"),
        (None, None) => return invalid("one of scales and sizes is required"),
        (Some(s), None) => {
            if s.len() != n {
                return invalid(format!("scales {s:?} must have {n} entries"));
            }
            for (i, &a) in axes.iter().enumerate() {
                if s[i] <= 0.0 {
                    return invalid(format!("scales must be positive, got {s:?}"));
                }
                scales[a] = s[i];
            }
            size = sizes_from_scales(&shape, &scales)?;
        }
        (None, Some(s)) => {
            if s.len() != n || s.iter().any(|&v| v < 0) {
                return invalid(format!("sizes {s:?} must have {n} non-negative entries"));
            }
            for (i, &a) in axes.iter().enumerate() {
                size[a] = s[i] as usize;
                scales[a] = if shape[a] == 0 {
                    1.0
                } else {
                    s[i] as f64 / shape[a] as f64
                };
            }
            let policy = cx.string("keep_aspect_ratio_policy", "stretch")?;
            if policy != "stretch" {
                let sel = axes.iter().map(|&a| scales[a]);
                let s = match policy.as_str() {
                    "not_larger" => sel.fold(f64::INFINITY, f64::min),
                    "not_smaller" => sel.fold(f64::NEG_INFINITY, f64::max),
                    other => return invalid(format!("unknown keep_aspect_ratio_policy `{other}`")),
                };
                for &a in &axes {
                    scales[a] = s;
                    size[a] = (s * shape[a] as f64 + 0.5) as usize;
                }
            }
        }
    }
    let ct = match cx
        .string("coordinate_transformation_mode", "half_pixel")?
        .as_str()
    {
        "half_pixel" => CoordinateTransform::HalfPixel,
        "half_pixel_symmetric" => CoordinateTransform::HalfPixelSymmetric,
        "pytorch_half_pixel" => CoordinateTransform::PytorchHalfPixel,
        "align_corners" => CoordinateTransform::AlignCorners,
        "asymmetric" => CoordinateTransform::Asymmetric,
        "tf_crop_and_resize" => CoordinateTransform::TfCropAndResize,
        other => return unsupported(format!("coordinate_transformation_mode `{other}`")),
    };
    let nearest = match cx.string("nearest_mode", "round_prefer_floor")?.as_str() {
        "round_prefer_floor" => NearestRounding::RoundPreferFloor,
        "round_prefer_ceil" => NearestRounding::RoundPreferCeil,
        "floor" => NearestRounding::Floor,
        "ceil" => NearestRounding::Ceil,
        other => return invalid(format!("unknown nearest_mode `{other}`")),
    };
    let roi = if ct == CoordinateTransform::TfCropAndResize {
        let given = roi_in.ok_or(crate::builder::NodeError::Invalid(
            "tf_crop_and_resize needs roi".into(),
        ))?;
        if given.len() != 2 * n {
            return invalid(format!("roi must have {} entries", 2 * n));
        }
        let mut full: Vec<f32> = [vec![0.0; r], vec![1.0; r]].concat();
        for (i, &a) in axes.iter().enumerate() {
            full[a] = given[i] as f32;
            full[r + a] = given[n + i] as f32;
        }
        full
    } else {
        Vec::new()
    };
    let attrs = ResizeAttrs {
        size,
        scales: scales.iter().map(|&s| s as f32).collect(),
        mode,
        coordinate_transform: ct,
        nearest_rounding: nearest,
        cubic_coeff_a: cx.float("cubic_coeff_a", -0.75)?,
        exclude_outside: cx.flag("exclude_outside", false)?,
        extrapolation_value: cx.float("extrapolation_value", 0.0)?,
        roi,
    };
    b.add(Op::Resize(attrs), &[x])
}

/// `floor(in * scale)` per axis.
fn sizes_from_scales(shape: &[usize], scales: &[f64]) -> NResult<Vec<usize>> {
    if scales.len() != shape.len() {
        return invalid(format!(
            "scales {scales:?} must have one entry per dim of {shape:?}"
        ));
    }
    shape
        .iter()
        .zip(scales)
        .map(|(&d, &s)| {
            let v = (d as f64 * s).floor();
            if s > 0.0 && v.is_finite() && v < 1e12 {
                Ok(v as usize)
            } else {
                invalid(format!("invalid scale {s}"))
            }
        })
        .collect()
}
