//! CONV2D, DEPTHWISE_CONV2D and TRANSPOSE_CONV2D as a reduction stage plus a bias stage.
//!
//! Invariant: the reduction stage (`conv`, the *anchor* of a fusion group) sums
//! `select(tap inside the input, x * w, 0)` over `(c, ky, kx)` in the reference's tap order, in
//! f32 for floats (f16 widened) and in wrapping i32 of `(x - input_zp) * (w - weight_zp)` for
//! integers, so padding contributes exactly nothing; the following `bias` stage adds the bias
//! (broadcast when it has one element) and rounds f16 once. Floats may differ from the
//! reference by the rounding of adding the bias last instead of first.
//!
//! An fma CONV2D ([`kiln_ir::op::ConvAttrs::fma`]) always takes the channels-last form below
//! (its body must be a bare product: padding comes from the padded copy, a 0.0 multiplied as
//! the reference does) and its reduction is marked as one fma chain, whose `rc, ry, rx` order
//! schedules keep.
//!
//! Only the bounds a tap can actually leave are tested (a 1x1 unpadded convolution has no
//! `select` at all), so inner loops carry no statically-true conditions.
//!
//! An f32 (or 8-bit integer) CONV2D with constant weights and a multiple of 4 output channels
//! accumulates channels-last instead: the anchor is `conv_nhwc[n, oy, ox, oc]` ([`NHWC_STAGE`]) over weights
//! transposed at definition time to `[ky, kx, c, oc]` (a table), so output channels are the
//! contiguous axis of both the accumulator and the weights (the default schedule vectorizes
//! them, see `crate::schedule`); the `bias` stage reads it transposed back to NCHW. The sum and
//! its order are the same; when taps can leave the input it reads a kept `pad` stage (the input
//! zero-padded once, NCHW; an integer input is padded with its zero point, whose product is 0)
//! instead, so its inner loops carry no guards. An f32 (or 8-bit integer) DEPTHWISE_CONV2D
//! (multiplier 1, constant weights, channels a multiple of 4) does the same over weights `[ky, kx, 1, c]` and a kept `pad_nhwc` stage, the
//! input copied channels-last with the padding as zeros, so its taps need no guards at all (a
//! channels-last input no tap leaves, as a producer's padded output, is read directly).
//!
//! Transpose convolution is written as a gather: output row `oy` reads input row
//! `iy = (oy + pad_top - ky * dilation) / stride` when the division is exact and `iy` is inside.

use super::expr::{all, bload, c, reach, TapBounds};
use super::{unsupported, Builder, ComputeError, Operand};
use kiln_ir::op::DataLayout;
use kiln_ir::{DType, Op, Tensor, TensorData, TensorType};
use kiln_tir::{BufferId, Expr, ReduceKind};

/// The accumulator dtype and the widened operands.
fn acc_dtype(dt: DType) -> DType {
    if dt.is_float() {
        DType::F32
    } else {
        DType::I32
    }
}

/// `x` widened to the accumulator type with `zp` subtracted (integers).
fn widen(x: Expr, acc: DType, zp: i32) -> Expr {
    if acc == DType::F32 {
        Expr::cast(DType::F32, x)
    } else {
        Expr::cast(DType::I32, x) - Expr::int_of(zp as i64, DType::I32)
    }
}

fn widen_f32_only(x: Expr, from: DType, acc: DType, zp: i32) -> Expr {
    if from == DType::F32 {
        x
    } else {
        widen(x, acc, zp)
    }
}

pub(crate) fn define(
    b: &mut Builder,
    op: &Op,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let (x, w, bias) = (&xs[0], &xs[1], &xs[2]);
    let xd = x.ty.dtype;
    let acc = acc_dtype(xd);
    let ws_ = &w.ty.shape;
    let layout = match op {
        Op::Conv2d(a) | Op::DepthwiseConv2d(a) => a.layout,
        _ => DataLayout::Nchw,
    };
    // Geometry in NCHW terms whatever the layout: `xs_` input dims, `shape` output dims.
    let xs_ = layout.nchw_dims(&x.ty.shape);
    let shape = layout.nchw_dims(&out.shape).to_vec();
    let (h, wd) = (xs_[2], xs_[3]);
    let zero = Expr::zero(acc);
    // A load of the input at NCHW coordinates.
    let xload = |src: BufferId, [n, ch, iy, ix]: [Expr; 4]| {
        Expr::load(src, layout.shape_of([n, ch, iy, ix]))
    };
    let conv = match op {
        Op::Conv2d(a) | Op::DepthwiseConv2d(a) => {
            let depthwise = matches!(op, Op::DepthwiseConv2d(_));
            let (cin, kh, kw) = (ws_[1], ws_[2], ws_[3]);
            let mult = if depthwise {
                (ws_[0] / xs_[1].max(1)).max(1)
            } else {
                1
            };
            let (sy, sx) = (a.stride[0] as i64, a.stride[1] as i64);
            let (dy, dx) = (a.dilation[0] as i64, a.dilation[1] as i64);
            let (pt, pl) = (a.pad[0] as i64, a.pad[2] as i64);
            let (xzp, wzp) = (a.input_zp, a.weight_zp);
            // Which bounds a tap can leave (the others are statically true and not tested).
            let bounds = TapBounds {
                y_lo: pt > 0,
                y_hi: reach(shape[2], sy, kh, dy, pt) >= h as i64,
                x_lo: pl > 0,
                x_hi: reach(shape[3], sx, kw, dx, pl) >= wd as i64,
            };
            let raxes: Vec<(&str, usize)> = if depthwise {
                vec![("ry", kh), ("rx", kw)]
            } else {
                vec![("rc", cin), ("ry", kh), ("rx", kw)]
            };
            // The channels-last forms: the weights as a table, and what a padded copy of the
            // input holds in its border.
            let pv = pad_value(xd, acc, xzp);
            let wd_ = w.ty.dtype;
            let product = |xv: Expr, wv: Expr| {
                widen_f32_only(xv, xd, acc, xzp) * widen_f32_only(wv, wd_, acc, wzp)
            };
            if depthwise && mult == 1 && pv.is_some() {
                if let Some(wt) = nhwc_weights(b, x, w, layout, shape[1], 1, false)? {
                    let pv = pv.clone().unwrap_or_else(|| zero.clone());
                    // Channels-last over a zero-padded channels-last copy of the input: no guards.
                    let hp = reach(shape[2], sy, kh, dy, 0) as usize + 1;
                    let wp = reach(shape[3], sx, kw, dx, 0) as usize + 1;
                    let pshape = vec![shape[0], hp, wp, xs_[1]];
                    let pad = TapBounds {
                        y_lo: pt > 0,
                        y_hi: hp as i64 - pt > h as i64,
                        x_lo: pl > 0,
                        x_hi: wp as i64 - pl > wd as i64,
                    };
                    // A channels-last input no tap leaves is read as it is.
                    let xp = if layout == DataLayout::Nhwc && !pad.any() && !bounds.any() {
                        x.id
                    } else {
                        let xp = b.stage("pad_nhwc", &pshape, |ax| {
                            let iy = ax[1].clone() - c(pt);
                            let ix = ax[2].clone() - c(pl);
                            let xv =
                                xload(x.id, [ax[0].clone(), ax[3].clone(), iy.clone(), ix.clone()]);
                            pad.guard(&iy, h, &ix, wd, xv, pv.clone())
                        })?;
                        b.keep_stage(xp);
                        xp
                    };
                    let nshape = vec![shape[0], shape[2], shape[3], shape[1]];
                    let acc_stage =
                        b.reduce(NHWC_STAGE, &nshape, &raxes, ReduceKind::Sum, |ax, r| {
                            let iy = ax[1].clone() * c(sy) + r[0].clone() * c(dy);
                            let ix = ax[2].clone() * c(sx) + r[1].clone() * c(dx);
                            let xv = Expr::load(xp, vec![ax[0].clone(), iy, ix, ax[3].clone()]);
                            let wv = Expr::load(
                                wt,
                                vec![r[0].clone(), r[1].clone(), c(0), ax[3].clone()],
                            );
                            product(xv, wv)
                        })?;
                    return bias_stage(b, acc_stage, DataLayout::Nhwc, layout, bias, acc, out);
                }
            }
            // An integer channels-last convolution that reads a padded copy of its input pads
            // the channels to a multiple of 4 as well (the extra channels hold the zero point
            // and their weights are 0, so they add nothing): micro-kernels take the channels
            // four at a time (an RGB image's 3 channels become 4).
            let cpad = if acc == DType::I32 && layout == DataLayout::Nhwc && bounds.any() {
                cin.next_multiple_of(4)
            } else {
                cin
            };
            // An fma chain (`ConvAttrs::fma`) always takes this form: its body must be a
            // bare product, so padding comes from a copy, never a guard.
            let fma = !depthwise && a.fma;
            let nhwc = if depthwise || pv.is_none() {
                None
            } else {
                nhwc_weights(b, x, w, layout, shape[1], cpad, fma)?
            };
            if fma && nhwc.is_none() {
                return Err(unsupported(
                    op,
                    "fma accumulation needs constant f32 weights",
                ));
            }
            if let Some(wt) = nhwc {
                // Channels-last accumulator: `conv_nhwc[n, oy, ox, oc]`, weights `[ky, kx, c, oc]`;
                // a padded convolution reads a kept zero-padded copy of the input instead.
                let hp = reach(shape[2], sy, kh, dy, 0) as usize + 1;
                let wp = reach(shape[3], sx, kw, dx, 0) as usize + 1;
                let (src, off_y, off_x) = if bounds.any() {
                    let pad = TapBounds {
                        y_lo: pt > 0,
                        y_hi: hp as i64 - pt > h as i64,
                        x_lo: pl > 0,
                        x_hi: wp as i64 - pl > wd as i64,
                    };
                    let pshape = layout.shape([xs_[0], cpad, hp, wp]);
                    let border = pv.clone().unwrap_or_else(|| zero.clone());
                    let xp = b.stage("pad", &pshape, |ax| {
                        let [n, ch, y, xx] = layout.nchw_of(ax);
                        let iy = y - c(pt);
                        let ix = xx - c(pl);
                        let xv = xload(x.id, [n, ch.clone(), iy.clone(), ix.clone()]);
                        let v = pad.guard(&iy, h, &ix, wd, xv, border.clone());
                        if cpad == cin {
                            v
                        } else {
                            Expr::select(Expr::lt(ch, c(cin as i64)), v, border.clone())
                        }
                    })?;
                    b.keep_stage(xp);
                    (xp, 0, 0)
                } else {
                    (x.id, pt, pl)
                };
                let nshape = vec![shape[0], shape[2], shape[3], shape[1]];
                let raxes = [("rc", cpad), ("ry", kh), ("rx", kw)];
                let acc_stage =
                    b.reduce(NHWC_STAGE, &nshape, &raxes, ReduceKind::Sum, |ax, r| {
                        let (ky, kx, ch) = (r[1].clone(), r[2].clone(), r[0].clone());
                        let iy = ax[1].clone() * c(sy) + ky.clone() * c(dy) - c(off_y);
                        let ix = ax[2].clone() * c(sx) + kx.clone() * c(dx) - c(off_x);
                        let xv = xload(src, [ax[0].clone(), ch.clone(), iy, ix]);
                        let wv = Expr::load(wt, vec![ky, kx, ch, ax[3].clone()]);
                        product(xv, wv)
                    })?;
                if fma {
                    b.fuse_multiply_add(acc_stage)?;
                }
                return bias_stage(b, acc_stage, DataLayout::Nhwc, layout, bias, acc, out);
            }
            b.reduce("conv", &out.shape, &raxes, ReduceKind::Sum, |ax, r| {
                let ax = layout.nchw_of(ax);
                let (ky, kx, ch) = if depthwise {
                    let ch = if mult == 1 {
                        ax[1].clone()
                    } else {
                        Expr::floordiv(ax[1].clone(), c(mult as i64))
                    };
                    (r[0].clone(), r[1].clone(), ch)
                } else {
                    (r[1].clone(), r[2].clone(), r[0].clone())
                };
                let iy = ax[2].clone() * c(sy) + ky.clone() * c(dy) - c(pt);
                let ix = ax[3].clone() * c(sx) + kx.clone() * c(dx) - c(pl);
                let xv = xload(x.id, [ax[0].clone(), ch, iy.clone(), ix.clone()]);
                let wch = if depthwise { c(0) } else { r[0].clone() };
                let wv = Expr::load(w.id, vec![ax[1].clone(), wch, ky, kx]);
                let prod =
                    widen_f32_only(xv, xd, acc, xzp) * widen_f32_only(wv, w.ty.dtype, acc, wzp);
                bounds.guard(&iy, h, &ix, wd, prod, zero.clone())
            })?
        }
        Op::TransposeConv2d(a) => {
            let (cin, kh, kw) = (ws_[0], ws_[2], ws_[3]);
            let (sy, sx) = (a.stride[0] as i64, a.stride[1] as i64);
            let (dy, dx) = (a.dilation[0] as i64, a.dilation[1] as i64);
            let (pt, pl) = (a.pad[0] as i64, a.pad[2] as i64);
            let (xzp, wzp) = (a.input_zp, a.weight_zp);
            b.reduce(
                "tconv",
                &shape,
                &[("rc", cin), ("ry", kh), ("rx", kw)],
                ReduceKind::Sum,
                |ax, r| {
                    let ty = ax[2].clone() + c(pt) - r[1].clone() * c(dy);
                    let tx = ax[3].clone() + c(pl) - r[2].clone() * c(dx);
                    let iy = if sy == 1 {
                        ty.clone()
                    } else {
                        Expr::floordiv(ty.clone(), c(sy))
                    };
                    let ix = if sx == 1 {
                        tx.clone()
                    } else {
                        Expr::floordiv(tx.clone(), c(sx))
                    };
                    let mut conds = vec![
                        Expr::ge(ty.clone(), c(0)),
                        Expr::ge(tx.clone(), c(0)),
                        Expr::lt(iy.clone(), c(h as i64)),
                        Expr::lt(ix.clone(), c(wd as i64)),
                    ];
                    if sy > 1 {
                        conds.push(super::expr::eq(Expr::floormod(ty, c(sy)), c(0)));
                    }
                    if sx > 1 {
                        conds.push(super::expr::eq(Expr::floormod(tx, c(sx)), c(0)));
                    }
                    let xv = Expr::load(x.id, vec![ax[0].clone(), r[0].clone(), iy, ix]);
                    let wv = Expr::load(
                        w.id,
                        vec![r[0].clone(), ax[1].clone(), r[1].clone(), r[2].clone()],
                    );
                    let prod =
                        widen_f32_only(xv, xd, acc, xzp) * widen_f32_only(wv, w.ty.dtype, acc, wzp);
                    Expr::select(all(conds), prod, zero)
                },
            )?
        }
        other => return Err(unsupported(other, "not a convolution")),
    };
    bias_stage(b, conv, layout, layout, bias, acc, out)
}

/// The name of the channels-last accumulator stage of a float convolution (see the module doc);
/// the schedule library recognises it by this name.
pub(crate) use kiln_schedules::NHWC_STAGE;

/// For an f32 convolution with constant OIHW weights that is channels-last, has a multiple of
/// 4 output channels (an NCHW one with few or ragged channels vectorizes better over pixels) or
/// `always` (an fma chain, which has no other form):
/// the weights transposed to `[ky, kx, c, oc]` (HWIO) as a definition-time table: for the tap
/// order `ky, kx, c` a step of the reduction moves one row of output channels.
fn nhwc_weights(
    b: &mut Builder,
    x: &Operand,
    w: &Operand,
    layout: DataLayout,
    oc: usize,
    channels: usize,
    always: bool,
) -> Result<Option<BufferId>, ComputeError> {
    let channels_fit = always || layout == DataLayout::Nhwc || oc.is_multiple_of(4);
    let float = x.ty.dtype == DType::F32 && w.ty.dtype == DType::F32;
    if !(float || int8_operands(x, w)) || !channels_fit {
        return Ok(None);
    }
    let Some(values) = w.constant.as_ref() else {
        return Ok(None);
    };
    let s = &w.ty.shape;
    let (o, ci, kh, kw) = (s[0], s[1], s[2], s[3]);
    // Element `[y, xx, cc, oo]` of the table is element `[oo, cc, y, xx]` of the weights (0
    // in the channels past `ci` up to `channels`).
    let channels = channels.max(ci);
    let dims = [o, ci, kh, kw, channels];
    let ty = TensorType::new(w.ty.dtype, vec![kh, kw, channels, o])?;
    let data = match values.data() {
        TensorData::F32(v) => TensorData::F32(hwio(v, dims)),
        TensorData::I8(v) => TensorData::I8(hwio(v, dims)),
        TensorData::U8(v) => TensorData::U8(hwio(v, dims)),
        other => {
            let index = (0..kh).flat_map(move |y| {
                (0..kw).flat_map(move |xx| {
                    (0..channels).flat_map(move |cc| {
                        (0..o).map(move |oo| (cc < ci).then(|| ((oo * ci + cc) * kh + y) * kw + xx))
                    })
                })
            });
            other.gather_iter(ty.num_elements(), index)
        }
    };
    let table = Tensor::from_data(ty, data)?;
    Ok(Some(b.table("w_nhwc", table)?))
}

/// OIHW weights `[o, ci, kh, kw]` as `[kh, kw, channels, o]` (channels past `ci` zero), read in
/// blocks of output channels so that each source row of taps is read from cache once per
/// block, not once per element (a ResNet-50's weights are 25M elements).
fn hwio<T: Copy + Default>(src: &[T], [o, ci, kh, kw, channels]: [usize; 5]) -> Vec<T> {
    const BLOCK: usize = 64;
    let mut out = vec![T::default(); kh * kw * channels * o];
    for cc in 0..ci {
        for o0 in (0..o).step_by(BLOCK) {
            for y in 0..kh {
                for xx in 0..kw {
                    let dst = ((y * kw + xx) * channels + cc) * o;
                    for oo in o0..(o0 + BLOCK).min(o) {
                        out[dst + oo] = src[((oo * ci + cc) * kh + y) * kw + xx];
                    }
                }
            }
        }
    }
    out
}

/// 8-bit integer activations and weights (accumulated in i32): the channels-last forms apply
/// to them as to f32.
fn int8_operands(x: &Operand, w: &Operand) -> bool {
    let byte = |d: DType| matches!(d, DType::I8 | DType::U8);
    byte(x.ty.dtype) && byte(w.ty.dtype)
}

/// The value a zero-padded copy of the input holds in its border: 0 for floats, the input's
/// zero point for integers (`(zp - zp) * w` adds nothing, as a tap outside the input must);
/// `None` when that zero point is not a value of the input's type.
fn pad_value(xd: DType, acc: DType, input_zp: i32) -> Option<Expr> {
    if acc != DType::I32 {
        return Some(Expr::zero(acc));
    }
    let (lo, hi) = match xd {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        _ => return None,
    };
    (lo..=hi)
        .contains(&input_zp)
        .then(|| Expr::int_of(i64::from(input_zp), xd))
}

/// The bias (epilogue) stage over the accumulator `conv` of layout `conv_layout`, writing the
/// output in `out_layout`.
fn bias_stage(
    b: &mut Builder,
    conv: BufferId,
    conv_layout: DataLayout,
    out_layout: DataLayout,
    bias: &Operand,
    acc: DType,
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let out_dt = out.dtype;
    b.stage("bias", &out.shape, |ax| {
        let nchw = out_layout.nchw_of(ax);
        let bv = bload(bias.id, &bias.ty.shape, std::slice::from_ref(&nchw[1]));
        let bv = if bias.ty.dtype == acc {
            bv
        } else {
            Expr::cast(acc, bv)
        };
        let v = Expr::load(conv, conv_layout.shape_of(nchw)) + bv;
        if out_dt == acc {
            v
        } else {
            Expr::cast(out_dt, v)
        }
    })
}
