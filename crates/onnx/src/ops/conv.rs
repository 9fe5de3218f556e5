//! Conv and ConvTranspose: 1-D and 2-D, grouped (depthwise or split into per-group convs),
//! explicit or automatic padding, and CausalConvWithState (a depthwise 1-D conv over a state
//! cache). Shared with the integer convs of `quant`.
//!
//! Invariant: the IR conv sees rank-4 NCHW input and OIHW weights; 1-D convs are reshaped to
//! height 1 and back, so the result has exactly the ONNX output shape.

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{ConvAttrs, DataLayout, TransposeConvAttrs};
use kiln_ir::{DType, Op, ValueId};

/// Window attributes of a conv or pool node, normalised to two spatial axes.
#[derive(Debug, Clone)]
pub(super) struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// `[top, bottom, left, right]`.
    pub pad: [usize; 4],
}

/// Reads `strides`, `dilations`, `pads` and `auto_pad` for spatial dims `input` and `kernel`
/// (each of length 1 or 2), returning 2-D attributes (1-D gets a leading unit axis).
pub(super) fn window(
    cx: &NodeCx,
    input: &[usize],
    kernel: &[usize],
    ceil_mode: bool,
) -> NResult<Window> {
    let n = input.len();
    if n == 0 || n > 2 || kernel.len() != n {
        return unsupported(format!(
            "only 1-D and 2-D windows are supported, got {n} spatial dims"
        ));
    }
    let list = |name: &str, default: i64| -> NResult<Vec<usize>> {
        let v = cx.ints_opt(name)?.unwrap_or_else(|| vec![default; n]);
        if v.len() != n {
            return invalid(format!(
                "{name} has {} entries for {n} spatial dims",
                v.len()
            ));
        }
        v.iter()
            .map(|&x| {
                if x >= 1 {
                    Ok(x as usize)
                } else {
                    invalid(format!("{name} must be positive, got {v:?}"))
                }
            })
            .collect()
    };
    let stride = list("strides", 1)?;
    let dilation = list("dilations", 1)?;
    let auto_pad = cx.string("auto_pad", "NOTSET")?;
    let mut pads = vec![0usize; 2 * n];
    match auto_pad.as_str() {
        "NOTSET" => {
            if let Some(p) = cx.ints_opt("pads")? {
                if p.len() != 2 * n {
                    return invalid(format!("pads has {} entries for {n} spatial dims", p.len()));
                }
                for (i, &v) in p.iter().enumerate() {
                    pads[i] = usize::try_from(v)
                        .or_else(|_| invalid(format!("negative pad in {p:?}")))?;
                }
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" => {
            for i in 0..n {
                let out = input[i].div_ceil(stride[i]);
                let span = dilation[i] * (kernel[i].max(1) - 1) + 1;
                let total = ((out.max(1) - 1) * stride[i] + span).saturating_sub(input[i]);
                let small = total / 2;
                let (begin, end) = if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                let _ = ceil_mode;
                pads[i] = begin;
                pads[i + n] = end;
            }
        }
        other => return invalid(format!("unknown auto_pad `{other}`")),
    }
    Ok(if n == 1 {
        Window {
            kernel: [1, kernel[0]],
            stride: [1, stride[0]],
            dilation: [1, dilation[0]],
            pad: [0, 0, pads[0], pads[1]],
        }
    } else {
        Window {
            kernel: [kernel[0], kernel[1]],
            stride: [stride[0], stride[1]],
            dilation: [dilation[0], dilation[1]],
            pad: [pads[0], pads[2], pads[1], pads[3]],
        }
    })
}

/// Inserts a unit height axis into a rank-3 tensor (`[N,C,L]` -> `[N,C,1,L]`).
pub(super) fn to_2d(b: &mut Builder, v: ValueId) -> NResult<ValueId> {
    let s = b.shape(v);
    if s.len() == 3 {
        b.reshape(v, vec![s[0], s[1], 1, s[2]])
    } else {
        Ok(v)
    }
}

/// Removes the unit height axis again.
pub(super) fn from_2d(b: &mut Builder, v: ValueId, one_d: bool) -> NResult<ValueId> {
    if !one_d {
        return Ok(v);
    }
    let s = b.shape(v);
    b.reshape(v, vec![s[0], s[1], s[3]])
}

pub(super) fn conv(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let bias = cx.opt_input(2);
    conv_core(b, cx, x, w, bias, 0, 0)
}

/// A grouped conv with zero points (0 for float convs); `bias` defaults to zeros of the
/// accumulator dtype.
pub(super) fn conv_core(
    b: &mut Builder,
    cx: &NodeCx,
    x: ValueId,
    w: ValueId,
    bias: Option<ValueId>,
    input_zp: i32,
    weight_zp: i32,
) -> NResult<ValueId> {
    let xs = b.shape(x);
    let ws = b.shape(w);
    if xs.len() != ws.len() || !(3..=4).contains(&xs.len()) {
        return unsupported(format!(
            "only 1-D and 2-D convs are supported (input {xs:?}, weight {ws:?})"
        ));
    }
    let one_d = xs.len() == 3;
    let kernel = match cx.ints_opt("kernel_shape")? {
        Some(k) if k.iter().map(|&d| d as usize).ne(ws[2..].iter().copied()) => {
            return invalid(format!("kernel_shape {k:?} does not match weight {ws:?}"))
        }
        _ => ws[2..].to_vec(),
    };
    let win = window(cx, &xs[2..], &kernel, false)?;
    let group = cx.int("group", 1)?;
    let c = xs[1];
    let o = ws[0];
    if group < 1 || !c.is_multiple_of(group as usize) || !o.is_multiple_of(group as usize) {
        return invalid(format!(
            "group {group} does not divide {c} input and {o} output channels"
        ));
    }
    let group = group as usize;
    if ws[1] * group != c {
        return invalid(format!(
            "weight {ws:?} does not fit {c} input channels in {group} groups"
        ));
    }
    let acc = if b.dtype(x).is_float() {
        b.dtype(x)
    } else {
        DType::I32
    };
    let bias = match bias {
        Some(v) => v,
        None => b.const_f64(acc, vec![o], &vec![0.0; o])?,
    };
    let x4 = to_2d(b, x)?;
    let w4 = to_2d(b, w)?;
    let attrs = ConvAttrs {
        pad: win.pad,
        stride: win.stride,
        dilation: win.dilation,
        input_zp,
        weight_zp,
        layout: DataLayout::Nchw,
        fma: false,
    };
    let y = if group == 1 {
        b.add(Op::Conv2d(attrs), &[x4, w4, bias])?
    } else if group == c && ws[1] == 1 {
        b.add(Op::DepthwiseConv2d(attrs), &[x4, w4, bias])?
    } else {
        let (cg, og) = (c / group, o / group);
        let mut parts = Vec::with_capacity(group);
        for g in 0..group {
            let xg = b.slice_axis(x4, 1, g * cg, cg, 1)?;
            let wg = b.slice_axis(w4, 0, g * og, og, 1)?;
            let bg = if b.shape(bias)[0] == 1 {
                bias
            } else {
                b.slice_axis(bias, 0, g * og, og, 1)?
            };
            parts.push(b.add(Op::Conv2d(attrs.clone()), &[xg, wg, bg])?);
        }
        b.concat(&parts, 1)?
    };
    from_2d(b, y, one_d)
}

pub(super) fn conv_transpose(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let xs = b.shape(x);
    let ws = b.shape(w);
    if xs.len() != ws.len() || !(3..=4).contains(&xs.len()) {
        return unsupported(format!(
            "only 1-D and 2-D transposed convs are supported (input {xs:?}, weight {ws:?})"
        ));
    }
    let n = xs.len() - 2;
    let one_d = n == 1;
    let group = cx.int("group", 1)?;
    if group < 1 || !xs[1].is_multiple_of(group as usize) || ws[0] != xs[1] {
        return invalid(format!(
            "group {group} does not fit input {xs:?} and weight {ws:?}"
        ));
    }
    let group = group as usize;
    let o = ws[1] * group;
    let list = |name: &str, default: i64| -> NResult<Vec<i64>> {
        let v = cx.ints_opt(name)?.unwrap_or_else(|| vec![default; n]);
        if v.len() != n {
            return invalid(format!(
                "{name} has {} entries for {n} spatial dims",
                v.len()
            ));
        }
        Ok(v)
    };
    let stride = list("strides", 1)?;
    let dilation = list("dilations", 1)?;
    let mut out_pad = list("output_padding", 0)?;
    if stride.iter().chain(&dilation).any(|&s| s < 1) || out_pad.iter().any(|&p| p < 0) {
        return invalid("strides and dilations must be positive, output_padding non-negative");
    }
    let kernel: Vec<i64> = ws[2..].iter().map(|&k| k as i64).collect();
    if let Some(k) = cx.ints_opt("kernel_shape")? {
        if k != kernel {
            return invalid(format!("kernel_shape {k:?} does not match weight {ws:?}"));
        }
    }
    let auto_pad = cx.string("auto_pad", "NOTSET")?;
    let output_shape = cx.ints_opt("output_shape")?;
    let mut pads = vec![0i64; 2 * n];
    if output_shape.is_some() || matches!(auto_pad.as_str(), "SAME_UPPER" | "SAME_LOWER") {
        let target: Vec<i64> = match &output_shape {
            Some(s) if s.len() >= n => s[s.len() - n..].to_vec(),
            Some(s) => return invalid(format!("output_shape {s:?} has fewer than {n} dims")),
            None => (0..n).map(|i| xs[2 + i] as i64 * stride[i]).collect(),
        };
        for i in 0..n {
            let full =
                stride[i] * (xs[2 + i] as i64 - 1) + out_pad[i] + (kernel[i] - 1) * dilation[i] + 1;
            let total = full - target[i];
            if total < 0 {
                out_pad[i] -= total;
                continue;
            }
            let (begin, end) = if auto_pad == "SAME_UPPER" {
                (total / 2, total - total / 2)
            } else {
                (total - total / 2, total / 2)
            };
            pads[i] = begin;
            pads[i + n] = end;
        }
    } else if auto_pad == "NOTSET" {
        if let Some(p) = cx.ints_opt("pads")? {
            if p.len() != 2 * n || p.iter().any(|&v| v < 0) {
                return invalid(format!("pads {p:?} must be {} non-negative entries", 2 * n));
            }
            pads = p;
        }
    } else if auto_pad != "VALID" {
        return invalid(format!("unknown auto_pad `{auto_pad}`"));
    }
    let u = |v: i64| v as usize;
    let attrs = if one_d {
        TransposeConvAttrs {
            pad: [0, 0, u(pads[0]), u(pads[1])],
            out_pad: [0, u(out_pad[0])],
            stride: [1, u(stride[0])],
            dilation: [1, u(dilation[0])],
            input_zp: 0,
            weight_zp: 0,
        }
    } else {
        TransposeConvAttrs {
            pad: [u(pads[0]), u(pads[2]), u(pads[1]), u(pads[3])],
            out_pad: [u(out_pad[0]), u(out_pad[1])],
            stride: [u(stride[0]), u(stride[1])],
            dilation: [u(dilation[0]), u(dilation[1])],
            input_zp: 0,
            weight_zp: 0,
        }
    };
    let dt = b.dtype(x);
    let bias = match cx.opt_input(2) {
        Some(v) => v,
        None => b.const_f64(dt, vec![o], &vec![0.0; o])?,
    };
    let x4 = to_2d(b, x)?;
    let w4 = to_2d(b, w)?;
    let y = if group == 1 {
        b.add(Op::TransposeConv2d(attrs), &[x4, w4, bias])?
    } else {
        let cg = xs[1] / group;
        let og = ws[1];
        let mut parts = Vec::with_capacity(group);
        for g in 0..group {
            let xg = b.slice_axis(x4, 1, g * cg, cg, 1)?;
            let wg = b.slice_axis(w4, 0, g * cg, cg, 1)?;
            let bg = b.slice_axis(bias, 0, g * og, og, 1)?;
            parts.push(b.add(Op::TransposeConv2d(attrs.clone()), &[xg, wg, bg])?);
        }
        b.concat(&parts, 1)?
    };
    from_2d(b, y, one_d)
}

/// CausalConvWithState (opset 26; the short convolution of Mamba-style blocks): a depthwise
/// 1-D convolution of `[B, C, L]` with `[C, 1, k]` over the input left-padded by `past_state`
/// (`[B, C, k-1]`, zeros when absent), with an optional fused SiLU; the second output is the
/// last `k - 1` positions of the padded input (the state for the next call).
pub(super) fn causal_conv_with_state(b: &mut Builder, cx: &NodeCx) -> NResult<Vec<ValueId>> {
    use kiln_ir::op::{BinaryOp, UnaryOp};
    let (x, w) = (cx.input(0)?, cx.input(1)?);
    let (xs, ws) = (b.shape(x), b.shape(w));
    let dt = b.dtype(x);
    if xs.len() != 3 || ws.len() != 3 || ws[0] != xs[1] || ws[1] != 1 || ws[2] == 0 {
        return invalid(format!(
            "input {xs:?} and weight {ws:?} must be [B, C, L] and [C, 1, k]"
        ));
    }
    let silu = match cx.string("activation", "none")?.as_str() {
        "none" => false,
        "silu" | "swish" => true,
        other => return invalid(format!("activation `{other}` is not none, silu or swish")),
    };
    let (batch, channels, len, k) = (xs[0], xs[1], xs[2], ws[2]);
    let state = match cx.opt_input(3) {
        Some(s) if b.shape(s) == [batch, channels, k - 1] => Some(s),
        Some(s) => {
            return invalid(format!(
                "past_state must be [{batch}, {channels}, {}], got {:?}",
                k - 1,
                b.shape(s)
            ))
        }
        None if k > 1 => {
            let zeros = vec![0.0; batch * channels * (k - 1)];
            Some(b.const_f64(dt, vec![batch, channels, k - 1], &zeros)?)
        }
        None => None,
    };
    let padded = match state {
        Some(s) => b.concat(&[s, x], 2)?,
        None => x,
    };
    let bias = match cx.opt_input(2) {
        Some(v) => v,
        None => b.const_f64(dt, vec![channels], &vec![0.0; channels])?,
    };
    let x4 = b.reshape(padded, vec![batch, channels, 1, len + k - 1])?;
    let w4 = b.reshape(w, vec![channels, 1, 1, k])?;
    let attrs = ConvAttrs {
        stride: [1, 1],
        dilation: [1, 1],
        ..Default::default()
    };
    let y = b.add(Op::DepthwiseConv2d(attrs), &[x4, w4, bias])?;
    let mut y = b.reshape(y, vec![batch, channels, len])?;
    if silu {
        let yf = b.cast(y, kiln_ir::DType::F32)?;
        let s = b.unary(UnaryOp::Sigmoid, yf)?;
        let yf = b.binary(BinaryOp::Mul, yf, s)?;
        y = b.cast(yf, dt)?;
    }
    let present = b.slice_axis(padded, 2, len, k - 1, 1)?;
    Ok(vec![y, present])
}
