//! Signal processing: the HannWindow, HammingWindow and BlackmanWindow generators and DFT.
//!
//! Invariant: a window depends only on its (import-time) size, so it is a constant computed in
//! f64 and rounded once to `output_datatype`; `periodic` windows divide by `N`, symmetric ones
//! by `N - 1`, as the ONNX reference does. The DFT is linear in the signal: constant twiddle
//! matrices (computed in f64 with the angle reduced modulo the length, rounded once) applied by
//! MATMUL.

use crate::builder::NodeError;
use crate::builder::{invalid, Builder, NResult};
use crate::node::NodeCx;
use crate::tensor_io::dtype_from_onnx;
use kiln_ir::ValueId;
use std::f64::consts::PI;

/// The `size` samples of a Hann, Hamming or Blackman window.
pub(super) fn window(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let size = match b.need_ints(cx.input(0)?, "size")?.as_slice() {
        [n] if *n >= 0 && *n <= i64::from(u32::MAX) => *n as usize,
        other => {
            return invalid(format!(
                "size must be one nonnegative integer, got {other:?}"
            ))
        }
    };
    let dtype =
        dtype_from_onnx(cx.int("output_datatype", 1)? as i32).map_err(NodeError::Unsupported)?;
    if !dtype.is_numeric() {
        return invalid(format!("output_datatype must be numeric, got {dtype}"));
    }
    let periodic = cx.flag("periodic", true)?;
    let denom = if periodic {
        size as f64
    } else {
        size as f64 - 1.0
    };
    let sample = |n: f64| -> f64 {
        let x = n / denom;
        match cx.op_type {
            "HannWindow" => (PI * x).sin().powi(2),
            "HammingWindow" => {
                let alpha = 25.0 / 46.0;
                alpha - (1.0 - alpha) * (2.0 * PI * x).cos()
            }
            _ => 0.42 - 0.5 * (2.0 * PI * x).cos() + 0.08 * (4.0 * PI * x).cos(),
        }
    };
    let values: Vec<f64> = (0..size).map(|n| sample(n as f64)).collect();
    b.const_f64(dtype, vec![size], &values)
}

/// A constant `[rows, cols]` matrix `f(r, c)` of `dtype`, computed in f64.
fn matrix(
    b: &mut Builder,
    dtype: kiln_ir::DType,
    rows: usize,
    cols: usize,
    f: impl Fn(usize, usize) -> f64,
) -> NResult<ValueId> {
    let v: Vec<f64> = (0..rows * cols).map(|at| f(at / cols, at % cols)).collect();
    b.const_f64(dtype, vec![rows, cols], &v)
}

/// `x` with axis `from` moved to position `to`.
fn move_axis(b: &mut Builder, x: ValueId, from: usize, to: usize) -> NResult<ValueId> {
    let mut perm: Vec<usize> = (0..b.rank(x)).filter(|&a| a != from).collect();
    perm.insert(to, from);
    b.transpose(x, perm)
}

/// DFT (opsets 17-20): the discrete Fourier transform along one axis of a real (`[.., 1]`) or
/// complex (`[.., 2]`) signal, forward or inverse, full or one-sided, as matmuls with constant
/// cosine and sine matrices of the transform length (the signal cut or zero-padded to it).
/// Inverse one-sided (irfft) input is a half spectrum whose implied conjugate half is
/// counted twice; its output is real.
pub(super) fn dft(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    use kiln_ir::op::BinaryOp;
    let x = cx.input(0)?;
    let s = b.shape(x);
    let r = s.len();
    let dt = b.dtype(x);
    if r < 2 || !matches!(s[r - 1], 1 | 2) || !dt.is_float() {
        return invalid(format!(
            "input must be a float signal [.., 1] or [.., 2], got {dt}{s:?}"
        ));
    }
    let axis = if cx.opset >= 20 {
        match cx.opt_input(2) {
            Some(a) => match b.need_ints(a, "axis")?.as_slice() {
                [a] => *a,
                other => return invalid(format!("axis must be one integer, got {other:?}")),
            },
            None => -2,
        }
    } else {
        cx.int("axis", 1)?
    };
    let axis = crate::builder::norm_axis(axis, r)?;
    if axis == r - 1 {
        return invalid("the transform axis cannot be the real/imaginary axis");
    }
    let inverse = cx.flag("inverse", false)?;
    let onesided = cx.flag("onesided", false)?;
    let n_in = s[axis];
    let len = match cx.opt_input(1) {
        Some(l) => match b.need_ints(l, "dft_length")?.as_slice() {
            [l] if *l >= 1 => *l as usize,
            other => return invalid(format!("dft_length must be positive, got {other:?}")),
        },
        None if inverse && onesided => 2 * n_in.saturating_sub(1).max(1),
        None => n_in,
    };
    // The signal parts, transform axis last: [.., n_in].
    let part = |b: &mut Builder, i: usize| -> NResult<ValueId> {
        let p = b.slice_axis(x, r - 1, i, 1, 1)?;
        let p = b.reshape(p, s[..r - 1].to_vec())?;
        move_axis(b, p, axis, r - 2)
    };
    let re = part(b, 0)?;
    let im = if s[r - 1] == 2 {
        Some(part(b, 1)?)
    } else {
        None
    };
    let tau = 2.0 * std::f64::consts::PI / len as f64;
    let angle = |n: usize, k: usize| tau * ((n * k) % len) as f64;
    let project = |b: &mut Builder, v: ValueId, m: ValueId| -> NResult<ValueId> {
        super::matmul::matmul_nd(b, v, m, Default::default())
    };
    let combine = |b: &mut Builder, a: ValueId, op: BinaryOp, c: Option<ValueId>| match c {
        Some(c) => b.binary(op, a, c),
        None if op == BinaryOp::Sub => b.unary(kiln_ir::op::UnaryOp::Negate, a),
        None => Ok(a),
    };
    // Rows of the matrices: the input samples used (the signal cut or zero-padded to `len`).
    let (out_re, out_im) = if inverse && onesided {
        // x[n] = 1/L sum_k w_k (Re Y[k] cos - Im Y[k] sin), w = 1 at 0 and L/2, 2 between.
        let m = n_in.min(len / 2 + 1);
        let weight = |k: usize| if k == 0 || 2 * k == len { 1.0 } else { 2.0 };
        let re = b.slice_axis(re, r - 2, 0, m, 1)?;
        let cos = matrix(b, dt, m, len, |k, n| {
            weight(k) * angle(n, k).cos() / len as f64
        })?;
        let y = project(b, re, cos)?;
        let y = match im {
            Some(im) => {
                let im = b.slice_axis(im, r - 2, 0, m, 1)?;
                let sin = matrix(b, dt, m, len, |k, n| {
                    weight(k) * angle(n, k).sin() / len as f64
                })?;
                let t = project(b, im, sin)?;
                b.binary(BinaryOp::Sub, y, t)?
            }
            None => y,
        };
        (y, None)
    } else {
        let rows = n_in.min(len);
        let cols = if onesided && !inverse {
            len / 2 + 1
        } else {
            len
        };
        let re = b.slice_axis(re, r - 2, 0, rows, 1)?;
        let im = match im {
            Some(im) => Some(b.slice_axis(im, r - 2, 0, rows, 1)?),
            None => None,
        };
        let scale = if inverse { 1.0 / len as f64 } else { 1.0 };
        let cos = matrix(b, dt, rows, cols, |n, k| angle(n, k).cos() * scale)?;
        let sin = matrix(b, dt, rows, cols, |n, k| angle(n, k).sin() * scale)?;
        let rc = project(b, re, cos)?;
        let rs = project(b, re, sin)?;
        let (ic, is) = match im {
            Some(im) => (Some(project(b, im, cos)?), Some(project(b, im, sin)?)),
            None => (None, None),
        };
        if inverse {
            // Re = Re.cos - Im.sin, Im = Re.sin + Im.cos (over L already in the matrices).
            let yr = combine(b, rc, BinaryOp::Sub, is)?;
            let yi = combine(b, rs, BinaryOp::Add, ic)?;
            (yr, Some(yi))
        } else {
            // Re = Re.cos + Im.sin, Im = Im.cos - Re.sin.
            let yr = combine(b, rc, BinaryOp::Add, is)?;
            let yi = match ic {
                Some(ic) => b.binary(BinaryOp::Sub, ic, rs)?,
                None => b.unary(kiln_ir::op::UnaryOp::Negate, rs)?,
            };
            (yr, Some(yi))
        }
    };
    let back = |b: &mut Builder, v: ValueId| -> NResult<ValueId> {
        let v = move_axis(b, v, r - 2, axis)?;
        let mut shape = b.shape(v);
        shape.push(1);
        b.reshape(v, shape)
    };
    let yr = back(b, out_re)?;
    match out_im {
        Some(yi) => {
            let yi = back(b, yi)?;
            b.concat(&[yr, yi], r - 1)
        }
        None => Ok(yr),
    }
}
