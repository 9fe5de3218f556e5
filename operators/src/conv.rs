//! CONV2D, DEPTHWISE_CONV2D and TRANSPOSE_CONV2D over NCHW input with OIHW (transpose: IOHW)
//! weights.
//!
//! Invariant: float convolutions accumulate in f32 (f16 operands widened, the result rounded once
//! to f16), an fma CONV2D ([`ConvAttrs::fma`]) as one fused chain per element in `(c, ky, kx)`
//! order from +0.0, padded taps multiplied as 0.0, the bias added after; integer convolutions accumulate `(x - input_zp) * (w - weight_zp)` in wrapping i32,
//! so padding (which holds `input_zp`) contributes exactly zero and is simply skipped. Loops only
//! visit taps whose input position is in range, computed once per kernel tap, so no index is ever
//! out of bounds.

use crate::util::{float_data, float_vec, int_vec_minus, Acc};
use crate::OpError;
use kiln_ir::op::{ConvAttrs, DataLayout, TransposeConvAttrs};
use kiln_ir::{DType, Tensor, TensorData, TensorType};

/// The indices `i` in `0..count` with `0 <= i * stride + off < limit`, as a half-open range.
pub(crate) fn valid_range(off: isize, stride: usize, limit: usize, count: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let room = limit as isize - off;
    let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
    let hi = (hi as usize).min(count);
    let lo = (lo as usize).min(hi);
    (lo, hi)
}

/// `out[lo..hi] += wv * input[start + k * stride]` for k = 0, 1, ...
#[inline]
fn axpy_strided<T: Acc>(out: &mut [T], input: &[T], start: usize, stride: usize, wv: T) {
    if stride == 1 {
        for (o, &x) in out.iter_mut().zip(&input[start..]) {
            *o = o.mac(wv, x);
        }
    } else {
        for (o, &x) in out.iter_mut().zip(input[start..].iter().step_by(stride)) {
            *o = o.mac(wv, x);
        }
    }
}

/// Operands widened to the accumulator type.
enum Operands {
    Float {
        x: Vec<f32>,
        w: Vec<f32>,
        b: Vec<f32>,
        dtype: DType,
    },
    Int {
        x: Vec<i32>,
        w: Vec<i32>,
        b: Vec<i32>,
    },
}

fn operands(
    name: &str,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    x_zp: i32,
    w_zp: i32,
) -> Result<Operands, OpError> {
    let bad = || {
        crate::util::fail_named(
            name,
            format!("unsupported operand dtypes {} and {}", x.dtype(), w.dtype()),
        )
    };
    if x.dtype().is_float() {
        Ok(Operands::Float {
            x: float_vec(x.data()).ok_or_else(bad)?,
            w: float_vec(w.data()).ok_or_else(bad)?,
            b: float_vec(b.data()).ok_or_else(bad)?,
            dtype: x.dtype(),
        })
    } else {
        Ok(Operands::Int {
            x: int_vec_minus(x.data(), x_zp).ok_or_else(bad)?,
            w: int_vec_minus(w.data(), w_zp).ok_or_else(bad)?,
            b: b.as_slice::<i32>().ok_or_else(bad)?.to_vec(),
        })
    }
}

/// Shapes and attributes of one (possibly grouped) convolution.
struct ConvGeom<'a> {
    x: [usize; 4],
    w: [usize; 4],
    out: [usize; 4],
    groups: usize,
    a: &'a ConvAttrs,
}

fn dims4(s: &[usize]) -> [usize; 4] {
    [s[0], s[1], s[2], s[3]]
}

fn conv_kernel<T: Acc>(g: &ConvGeom, x: &[T], w: &[T], bias: &[T]) -> Vec<T> {
    let [n, c, h, wd] = g.x;
    let [o, cg, kh, kw] = g.w;
    let [_, _, oh, ow] = g.out;
    let opg = (o / g.groups).max(1);
    let (sy, sx) = (g.a.stride[0], g.a.stride[1]);
    let (dy, dx) = (g.a.dilation[0], g.a.dilation[1]);
    let (pt, pl) = (g.a.pad[0] as isize, g.a.pad[2] as isize);
    let mut out = vec![T::default(); n * o * oh * ow];
    if out.is_empty() {
        return out;
    }
    // Per kernel column: the valid output-column range and the first input column.
    let cols: Vec<(usize, usize, usize)> = (0..kw)
        .map(|kx| {
            let off = (kx * dx) as isize - pl;
            let (lo, hi) = valid_range(off, sx, wd, ow);
            (lo, hi, (lo as isize * sx as isize + off).max(0) as usize)
        })
        .collect();
    let rows: Vec<(usize, usize)> = (0..kh)
        .map(|ky| valid_range((ky * dy) as isize - pt, sy, h, oh))
        .collect();
    for (b, out_img) in out.chunks_exact_mut(o * oh * ow).enumerate() {
        for (oc, plane) in out_img.chunks_exact_mut(oh * ow).enumerate() {
            let bv = if bias.len() == 1 { bias[0] } else { bias[oc] };
            plane.fill(bv);
            let grp = oc / opg;
            for ci in 0..cg {
                let ic = grp * cg + ci;
                let in_plane = &x[(b * c + ic) * h * wd..][..h * wd];
                let wbase = (oc * cg + ci) * kh * kw;
                for ky in 0..kh {
                    let (ylo, yhi) = rows[ky];
                    for kx in 0..kw {
                        let wv = w[wbase + ky * kw + kx];
                        let (xlo, xhi, ix0) = cols[kx];
                        if xlo >= xhi {
                            continue;
                        }
                        for oy in ylo..yhi {
                            let iy = oy * sy + ky * dy - pt as usize;
                            let row_in = &in_plane[iy * wd..][..wd];
                            let row_out = &mut plane[oy * ow + xlo..oy * ow + xhi];
                            axpy_strided(row_out, row_in, ix0, sx, wv);
                        }
                    }
                }
            }
        }
    }
    out
}

/// An f32 CONV2D with [`ConvAttrs::fma`] (NCHW, one group): each output element is one `fma`
/// chain from +0.0 over `(c, ky, kx)`, a tap in the padding reading 0.0 (it is multiplied, not
/// skipped: `0.0 * w` may change the sign of a zero sum, as in an im2col GEMM), then the bias
/// added with one rounding.
fn fma_conv_kernel(g: &ConvGeom, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let [n, c, h, wd] = g.x;
    let [o, _, kh, kw] = g.w;
    let [_, _, oh, ow] = g.out;
    let (sy, sx) = (g.a.stride[0], g.a.stride[1]);
    let (dy, dx) = (g.a.dilation[0], g.a.dilation[1]);
    let (pt, pl) = (g.a.pad[0], g.a.pad[2]);
    let mut out = vec![0.0f32; n * o * oh * ow];
    if out.is_empty() {
        return out;
    }
    // The input element a tap reads, or `None` in the padding.
    let at = |o_pos: usize, k: usize, s: usize, d: usize, pad: usize, size: usize| {
        (o_pos * s + k * d).checked_sub(pad).filter(|&i| i < size)
    };
    for (b, out_img) in out.chunks_exact_mut(o * oh * ow).enumerate() {
        for (oc, plane) in out_img.chunks_exact_mut(oh * ow).enumerate() {
            for ci in 0..c {
                let in_plane = &x[(b * c + ci) * h * wd..][..h * wd];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = w[((oc * c + ci) * kh + ky) * kw + kx];
                        for (oy, row) in plane.chunks_exact_mut(ow).enumerate() {
                            let iy = at(oy, ky, sy, dy, pt, h);
                            for (ox, acc) in row.iter_mut().enumerate() {
                                let xv = match (iy, at(ox, kx, sx, dx, pl, wd)) {
                                    (Some(iy), Some(ix)) => in_plane[iy * wd + ix],
                                    _ => 0.0,
                                };
                                *acc = xv.mul_add(wv, *acc);
                            }
                        }
                    }
                }
            }
            let bv = if bias.len() == 1 { bias[0] } else { bias[oc] };
            plane.iter_mut().for_each(|v| *v += bv);
        }
    }
    out
}

/// CONV2D (`depthwise == false`) or DEPTHWISE_CONV2D, producing data of type `out`.
pub fn conv2d(
    a: &ConvAttrs,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    out: &TensorType,
    depthwise: bool,
) -> Result<TensorData, OpError> {
    let name = if depthwise {
        "depthwise_conv2d"
    } else {
        "conv2d"
    };
    let layout = a.layout;
    let g = ConvGeom {
        x: layout.nchw_dims(x.shape()),
        w: dims4(w.shape()),
        out: layout.nchw_dims(&out.shape),
        groups: if depthwise {
            g_channels(layout, x.shape())
        } else {
            1
        },
        a,
    };
    let xdims = dims4(x.shape());
    Ok(match operands(name, x, w, b, a.input_zp, a.weight_zp)? {
        Operands::Float { x, w, b, dtype } if a.fma => {
            let x = permute4(x, xdims, layout.to_nchw());
            let y = permute4(fma_conv_kernel(&g, &x, &w, &b), g.out, layout.from_nchw());
            float_data(y, dtype)
        }
        Operands::Float { x, w, b, dtype } => {
            float_data(conv_in_layout(&g, layout, xdims, x, &w, &b), dtype)
        }
        Operands::Int { x, w, b } => TensorData::I32(conv_in_layout(&g, layout, xdims, x, &w, &b)),
    })
}

/// [`conv_kernel`] over tensors of `layout`: channels-last tensors are computed as NCHW, the
/// input (of shape `xdims`) transposed in and the output back.
fn conv_in_layout<T: Acc>(
    g: &ConvGeom,
    layout: DataLayout,
    xdims: [usize; 4],
    x: Vec<T>,
    w: &[T],
    b: &[T],
) -> Vec<T> {
    let x = permute4(x, xdims, layout.to_nchw());
    permute4(conv_kernel(g, &x, w, b), g.out, layout.from_nchw())
}

/// The channel count (at least 1) of a depthwise input of `layout`.
fn g_channels(layout: DataLayout, shape: &[usize]) -> usize {
    layout.nchw_dims(shape)[1].max(1)
}

/// `data` of row-major shape `dims`, transposed by `perm` (output axis `i` is input axis
/// `perm[i]`); the identity permutation returns `data` as it is.
fn permute4<T: Copy>(data: Vec<T>, dims: [usize; 4], perm: [usize; 4]) -> Vec<T> {
    if perm == [0, 1, 2, 3] {
        return data;
    }
    let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
    let od = perm.map(|p| dims[p]);
    let os = perm.map(|p| strides[p]);
    let mut out = Vec::with_capacity(data.len());
    for a in 0..od[0] {
        for b in 0..od[1] {
            for c in 0..od[2] {
                let base = a * os[0] + b * os[1] + c * os[2];
                out.extend((0..od[3]).map(|d| data[base + d * os[3]]));
            }
        }
    }
    out
}

fn transpose_kernel<T: Acc>(
    a: &TransposeConvAttrs,
    xs: [usize; 4],
    ws: [usize; 4],
    os: [usize; 4],
    x: &[T],
    w: &[T],
    bias: &[T],
) -> Vec<T> {
    let [n, c, h, wd] = xs;
    let [_, o, kh, kw] = ws;
    let [_, _, oh, ow] = os;
    let (sy, sx) = (a.stride[0], a.stride[1]);
    let (dy, dx) = (a.dilation[0], a.dilation[1]);
    let (pt, pl) = (a.pad[0] as isize, a.pad[2] as isize);
    let mut out = vec![T::default(); n * o * oh * ow];
    if out.is_empty() {
        return out;
    }
    // Output column of input column ix under tap kx: ix * sx + kx * dx - pl.
    let cols: Vec<(usize, usize, isize)> = (0..kw)
        .map(|kx| {
            let off = (kx * dx) as isize - pl;
            let (lo, hi) = valid_range(off, sx, ow, wd);
            (lo, hi, off)
        })
        .collect();
    for (b, out_img) in out.chunks_exact_mut(o * oh * ow).enumerate() {
        for (oc, plane) in out_img.chunks_exact_mut(oh * ow).enumerate() {
            let bv = if bias.len() == 1 { bias[0] } else { bias[oc] };
            plane.fill(bv);
            for ic in 0..c {
                let in_plane = &x[(b * c + ic) * h * wd..][..h * wd];
                let wbase = (ic * o + oc) * kh * kw;
                for ky in 0..kh {
                    let yoff = (ky * dy) as isize - pt;
                    let (ylo, yhi) = valid_range(yoff, sy, oh, h);
                    for kx in 0..kw {
                        let wv = w[wbase + ky * kw + kx];
                        let (xlo, xhi, xoff) = cols[kx];
                        for iy in ylo..yhi {
                            let oy = (iy as isize * sy as isize + yoff) as usize;
                            let row_in = &in_plane[iy * wd..][..wd];
                            let row_out = &mut plane[oy * ow..][..ow];
                            let ox0 = (xlo as isize * sx as isize + xoff) as usize;
                            let outs = row_out[ox0..].iter_mut().step_by(sx);
                            for (o, &xv) in outs.zip(&row_in[xlo..xhi]) {
                                *o = o.mac(wv, xv);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// TRANSPOSE_CONV2D with ONNX ConvTranspose semantics: scatter every input pixel through the
/// kernel into the full output, of which the `pad` border is cropped.
pub fn transpose_conv2d(
    a: &TransposeConvAttrs,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    out: &TensorType,
) -> Result<TensorData, OpError> {
    let (xs, ws, os) = (dims4(x.shape()), dims4(w.shape()), dims4(&out.shape));
    Ok(
        match operands("transpose_conv2d", x, w, b, a.input_zp, a.weight_zp)? {
            Operands::Float { x, w, b, dtype } => {
                float_data(transpose_kernel(a, xs, ws, os, &x, &w, &b), dtype)
            }
            Operands::Int { x, w, b } => {
                TensorData::I32(transpose_kernel(a, xs, ws, os, &x, &w, &b))
            }
        },
    )
}
