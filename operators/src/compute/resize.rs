//! RESIZE with per-axis index and weight tables computed at definition time.
//!
//! Invariant: the tables come from the reference's own tap computation
//! (`crate::resize::axis_taps`, same scale and identity-axis rules), so every output position
//! reads the same input positions with the same coefficients. Axes the reference leaves
//! untouched index the input directly. Nearest mode reads the single tap whose coefficient is
//! largest (exact for every dtype); linear and cubic sum `Π w_axis * x[idx]` over one reduce axis
//! per resized axis, in f32 (the reference sums axis by axis in f64: results agree to f32
//! rounding). `tf_crop_and_resize` positions outside the input have index -1 and read
//! `extrapolation_value` through the same guard that proves the table indices in range.

use super::expr::{all, constant, in_range};
use super::{Builder, ComputeError, Operand};
use crate::resize::{axis_taps, isclose, Tap};
use kiln_ir::op::{CoordinateTransform, ResizeAttrs, ResizeMode};
use kiln_ir::{DType, Tensor, TensorType};
use kiln_tir::{BufferId, Expr, ReduceKind};

/// Per resized axis: taps per position, and index/weight rows.
struct AxisTable {
    axis: usize,
    idx: Vec<i64>,
    weights: Vec<f32>,
}

pub(crate) fn define(
    b: &mut Builder,
    r: &ResizeAttrs,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let x = &xs[0];
    let dt = x.ty.dtype;
    let rank = x.ty.shape.len();
    let shape = out.shape.clone();
    let tf = r.coordinate_transform == CoordinateTransform::TfCropAndResize;
    let nearest = r.mode == ResizeMode::Nearest;
    let ntaps = match r.mode {
        ResizeMode::Nearest => 1,
        ResizeMode::Linear => 2,
        ResizeMode::Cubic => 4,
    };
    let mut axes: Vec<AxisTable> = vec![];
    for axis in 0..rank {
        let (input, outn) = (x.ty.shape[axis], r.size[axis]);
        let stored = r.scales[axis];
        let exact = outn as f64 / input as f64;
        let scale = if input > 0 && (exact as f32) == stored {
            exact
        } else {
            stored as f64
        };
        let roi_identity = r.roi.len() != 2 * rank
            || (isclose(r.roi[axis] as f64, 0.0) && isclose(r.roi[axis + rank] as f64, 1.0));
        if outn == input && isclose(scale, 1.0) && (!tf || roi_identity) {
            continue;
        }
        let mut t = AxisTable {
            axis,
            idx: vec![],
            weights: vec![],
        };
        for tap in axis_taps(r, axis, input, outn, scale) {
            match tap {
                Tap::Extrapolate => {
                    t.idx.extend(std::iter::repeat_n(-1, ntaps));
                    t.weights.push(1.0);
                    t.weights.extend(std::iter::repeat_n(0.0, ntaps - 1));
                }
                Tap::Weights(w) if nearest => {
                    let best = w
                        .iter()
                        .enumerate()
                        .fold(None::<(usize, f64)>, |acc, (i, &(_, cj))| match acc {
                            Some((_, bc)) if bc >= cj => acc,
                            _ => Some((i, cj)),
                        })
                        .map_or(0, |(i, _)| i);
                    t.idx.push(w.get(best).map_or(-1, |&(k, _)| k as i64));
                    t.weights.push(1.0);
                }
                Tap::Weights(w) => {
                    for j in 0..ntaps {
                        let (k, cj) = w.get(j).copied().unwrap_or((0, 0.0));
                        t.idx.push(k as i64);
                        t.weights.push(cj as f32);
                    }
                }
            }
        }
        axes.push(t);
    }
    if axes.is_empty() {
        return b.stage("resize", &shape, |ax| Expr::load(x.id, ax.to_vec()));
    }
    let mut idx_tabs = vec![];
    let mut w_tabs = vec![];
    for t in &axes {
        let n = shape[t.axis];
        let idx = Tensor::new(vec![n, ntaps], t.idx.clone())?;
        idx_tabs.push(b.table(&format!("resize_idx{}", t.axis), idx)?);
        if !nearest {
            let w = Tensor::new(vec![n, ntaps], t.weights.clone())?;
            w_tabs.push(b.table(&format!("resize_w{}", t.axis), w)?);
        }
    }
    let ev = r.extrapolation_value as f64;
    // The gathered element for output coordinates `ax` and tap coordinates `taps`.
    let gather = |ax: &[Expr], taps: &[Expr], fill: Expr| -> Expr {
        let mut idx: Vec<Expr> = ax.to_vec();
        let mut conds = vec![];
        for (k, t) in axes.iter().enumerate() {
            let i = Expr::load(idx_tabs[k], vec![ax[t.axis].clone(), taps[k].clone()]);
            conds.push(in_range(&i, x.ty.shape[t.axis]));
            idx[t.axis] = i;
        }
        Expr::select(all(conds), Expr::load(x.id, idx), fill)
    };
    if nearest {
        let zero_taps: Vec<Expr> = axes.iter().map(|_| Expr::int(0)).collect();
        return b.stage("resize", &shape, |ax| {
            gather(ax, &zero_taps, constant(ev, dt))
        });
    }
    let names: Vec<String> = axes.iter().map(|t| format!("t{}", t.axis)).collect();
    let raxes: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), ntaps)).collect();
    let widen = |e: Expr| {
        if dt == DType::F32 {
            e
        } else {
            Expr::cast(DType::F32, e)
        }
    };
    let acc = b.reduce("resize", &shape, &raxes, ReduceKind::Sum, |ax, taps| {
        let mut weight: Option<Expr> = None;
        for (k, t) in axes.iter().enumerate() {
            let w = Expr::load(w_tabs[k], vec![ax[t.axis].clone(), taps[k].clone()]);
            weight = Some(match weight {
                None => w,
                Some(p) => p * w,
            });
        }
        let v = widen(gather(ax, taps, constant(ev, dt)));
        match weight {
            Some(w) => w * v,
            None => v,
        }
    })?;
    b.finish_f32(acc, dt, &shape)
}
