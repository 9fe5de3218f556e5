//! QDQ import with onnxruntime's arithmetic (the default [`Int8Numerics::OnnxRuntime`]): an int8
//! model computes exactly what onnxruntime's CPU provider computes for it, bit for bit.
//!
//! onnxruntime does not run a QDQ model as written. It fuses some `DQ -> op -> Q` groups into
//! integer kernels (QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool, QLinearSoftmax)
//! and runs the rest as float ops between a DequantizeLinear and a QuantizeLinear; before that it
//! turns every int8 tensor with a single consumer into uint8 (`q + 128`), which changes the
//! rounding of the kernels that read raw values. [`fuse_quantize`] applies its selection rules to
//! the anchoring QuantizeLinear and builds the fused group from the integers with the kernel's
//! own formula; for any other group it returns `None` and the float chain is imported as written
//! (DequantizeLinear, the op — a Conv in MLAS's order, see `mlas_conv` — and QuantizeLinear,
//! which follow onnxruntime's arithmetic too). The rules and formulas, with their sources and
//! the measurements that confirm them: docs/onnxruntime-int8-numerics.md (§2.1 the rules, §3
//! the kernels).
//!
//! Invariant: a fused value has exactly the dtype, shape, scale and zero point of the
//! QuantizeLinear output it replaces, and every element equals onnxruntime's. Groups onnxruntime
//! fuses whose kernel this module does not reproduce (QLinearMul, QLinearSigmoid, a non-global
//! QLinearAveragePool, broadcasts other than per span) are `Err`: the importer notes that the
//! model will differ from onnxruntime there and keeps the float path.

use super::qdq::{in_name, Fuser, OutQuant, QAct, QdqGraph};
use crate::builder::{unsupported, Builder, NResult};
use crate::node::NodeCx;
use crate::ops::conv::conv_core;
use crate::proto::NodeProto;
use kiln_ir::op::{BinaryOp, ReduceOp, UnaryOp};
use kiln_ir::{DType, Op, ValueId};
use std::collections::HashMap;

/// Ops that only move elements: onnxruntime drops their DequantizeLinear and QuantizeLinear when
/// both carry the same scale and zero point, and so does this module. (With other parameters the
/// float path is what onnxruntime runs.)
const DATA_MOVEMENT: &[&str] = &[
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "MaxPool",
    "GlobalMaxPool",
    "Identity",
    "Slice",
    "Gather",
    "Expand",
    "Tile",
    "DepthToSpace",
    "SpaceToDepth",
];

/// The integer value of QuantizeLinear `cx` if onnxruntime fuses the group it closes (see the
/// module doc); `Ok(None)` when the float chain is what onnxruntime runs.
pub(super) fn fuse_quantize(
    b: &mut Builder,
    cx: &NodeCx,
    g: &QdqGraph,
    values: &HashMap<String, ValueId>,
) -> NResult<Option<ValueId>> {
    let mut f = Fuser { g, b, values };
    let Some(out) = f.output_quant(cx)? else {
        return Ok(None);
    };
    let (Some(x_name), Some(y_name)) = (cx.node.input.first(), cx.node.output.first()) else {
        return Ok(None);
    };
    let Some((src, lo, hi)) = f.peel_activation(x_name)? else {
        return Ok(None);
    };
    if src != *x_name {
        // A Relu or Clip survives only if the Q makes it redundant; else onnxruntime runs a
        // float FusedConv and so does the float path.
        if !redundant(lo, hi, &out) || g.uses(x_name) != 1 {
            return Ok(None);
        }
    }
    let Some(p) = g.producer(&src) else {
        return Ok(None);
    };
    let op = p.op_type.as_deref().unwrap_or("");
    // The target's only reader is this group, it is no graph output, and every input that is
    // not a constant comes from a DequantizeLinear.
    if g.uses(&src) != 1 || p.output.len() != 1 {
        return Ok(None);
    }
    let from_dq = |name: &String| {
        name.is_empty()
            || values.get(name).is_some_and(|&v| f.b.const_of(v).is_some())
            || g.producer(name)
                .is_some_and(|d| d.op_type.as_deref() == Some("DequantizeLinear"))
    };
    if op != "DequantizeLinear" && !p.input.iter().all(from_dq) {
        return Ok(None);
    }
    let y_u8 = ort_dtype(&f, y_name, out.dtype) == DType::U8;
    let dt = |i: usize| dq_domain(&f, in_name(p, i));
    let fused = match op {
        "Conv" | "MatMul" if dt(0) == Some(y_u8) && y_u8 => {
            if op == "Conv" {
                f.ort_conv(p, &out)?
            } else {
                f.ort_matmul(p, &out)?
            }
        }
        "Gemm" if dt(0) == Some(y_u8) => f.ort_gemm(p, &out)?,
        "Add" if dt(0) == Some(y_u8) && dt(1) == Some(y_u8) => f.ort_add(p, &out, y_u8)?,
        "GlobalAveragePool" if dt(0) == Some(y_u8) => f.ort_global_average_pool(p, &out)?,
        "Softmax" if dt(0) == Some(y_u8) => f.ort_softmax(p, &out, y_u8)?,
        "Mul" | "Sigmoid" | "LeakyRelu" | "AveragePool" if dt(0) == Some(y_u8) => {
            return unsupported(format!(
                "onnxruntime runs this {op} as an integer kernel whose rounding Kiln does not \
                 reproduce yet; the float path may differ from it by a quantization step"
            ))
        }
        "DequantizeLinear" => match f.act(&src) {
            Some(x) if same_quant(&x, &out, f.b) => Some(x.q),
            _ => None,
        },
        _ if DATA_MOVEMENT.contains(&op) => match f.act(in_name(p, 0)) {
            Some(x) if same_quant(&x, &out, f.b) => f.data_movement(p, &out)?,
            _ => None,
        },
        _ => None,
    };
    Ok(fused)
}

/// True when a fused Relu or Clip to `[lo, hi]` cannot change what the Q produces (onnxruntime's
/// `IsClipMadeRedundantByQ`).
fn redundant(lo: f64, hi: f64, out: &OutQuant) -> bool {
    let (qmin, qmax) = qrange(out.dtype);
    let real = |q: f64| (q - f64::from(out.zp)) * out.scale;
    if lo == 0.0 && hi == f64::INFINITY {
        return f64::from(out.zp) == qmin;
    }
    lo <= real(qmin) && hi >= real(qmax)
}

fn qrange(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::I8 => (-128.0, 127.0),
        _ => (0.0, 255.0),
    }
}

/// Equal scale, zero point and dtype: `Q(DQ(x))` is `x` itself.
fn same_quant(x: &QAct, out: &OutQuant, b: &Builder) -> bool {
    x.zp == out.zp && x.scale == out.scale && b.dtype(x.q) == out.dtype
}

/// The dtype onnxruntime gives the integer tensor `name` of Kiln dtype `dtype`: uint8 when its
/// int8 QuantizeLinear has exactly one reader, a DequantizeLinear with the same zero point that
/// itself has one reader (`QDQS8ToU8Transformer` after `EnsureUniqueDQForNodeUnit`).
fn ort_dtype(f: &Fuser, name: &str, dtype: DType) -> DType {
    if dtype != DType::I8 {
        return dtype;
    }
    let g = f.g;
    let Some(q) = g.producer(name) else {
        return dtype;
    };
    if q.op_type.as_deref() != Some("QuantizeLinear") || g.uses(name) != 1 {
        return dtype;
    }
    let Some(dq) = g.consumers.get(name).and_then(|c| c.first()) else {
        return dtype;
    };
    let single_reader = dq.output.first().is_some_and(|o| g.uses(o) == 1);
    let zp = |n: &NodeProto| {
        n.input
            .get(2)
            .and_then(|z| f.values.get(z))
            .and_then(|&v| f.b.const_ints(v))
            .filter(|z| z.len() == 1)
    };
    let same_zp = matches!((zp(q), zp(dq)), (Some(a), Some(b)) if a == b);
    if dq.op_type.as_deref() == Some("DequantizeLinear") && single_reader && same_zp {
        DType::U8
    } else {
        dtype
    }
}

/// For the DequantizeLinear output `name`: `Some(true)` when onnxruntime holds its integer input
/// as uint8, `Some(false)` for int8 (or wider), `None` when `name` is no DequantizeLinear output.
fn dq_domain(f: &Fuser, name: &str) -> Option<bool> {
    let dq = f.g.producer(name)?;
    if dq.op_type.as_deref() != Some("DequantizeLinear") {
        return None;
    }
    let q_name = dq.input.first()?;
    let q = *f.values.get(q_name)?;
    Some(ort_dtype(f, q_name, f.b.dtype(q)) == DType::U8)
}

/// `scale` as the f32 onnxruntime reads from the model.
fn f32_of(scale: f64) -> f32 {
    scale as f32
}

impl Fuser<'_, '_> {
    /// onnxruntime's requantization of an i32 accumulator (`MlasRequantizeOutput`):
    /// `rne(clamp(f32(acc) * scale[c], qmin - zp, qmax - zp)) + zp`, channel axis `axis`.
    fn requantize_f32(
        &mut self,
        acc: ValueId,
        scale: &[f32],
        axis: usize,
        out: &OutQuant,
    ) -> NResult<ValueId> {
        let rank = self.b.rank(acc);
        let s = if scale.iter().all(|&s| s == scale[0]) {
            self.b.scalar(DType::F32, f64::from(scale[0]))
        } else {
            let mut shape = vec![1; rank];
            shape[axis] = scale.len();
            self.b.const_tensor(shape, scale.to_vec())?
        };
        let f = self.b.cast(acc, DType::F32)?;
        let f = self.b.binary(BinaryOp::Mul, f, s)?;
        let (qmin, qmax) = qrange(out.dtype);
        let zp = f64::from(out.zp);
        let f = self.b.clamp(f, qmin - zp, qmax - zp)?;
        let f = self.b.unary(UnaryOp::Round, f)?;
        let f = if out.zp != 0 {
            self.b.binary_scalar(BinaryOp::Add, f, zp)?
        } else {
            f
        };
        self.b.cast(f, out.dtype)
    }

    /// The raw i32 bias of a fused Conv or Gemm: the DequantizeLinear's integer input (the
    /// kernel ignores the bias scale).
    fn raw_bias(&mut self, name: &str, channels: usize) -> NResult<Option<ValueId>> {
        let Some(d) = self.dequantized(name) else {
            return Ok(None);
        };
        if self.b.dtype(d.q) != DType::I32 || d.zp.iter().any(|&z| z != 0) {
            return Ok(None);
        }
        if self.b.ty(d.q).num_elements() != channels {
            return Ok(None);
        }
        self.b.reshape(d.q, vec![channels]).map(Some)
    }

    /// QLinearConv: exact i32 accumulation with the raw bias, then `(Xs·Ws[c]) / Ys`.
    fn ort_conv(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let Some(c) = self.conv_operands(p)? else {
            return Ok(None);
        };
        let bias = match p.input.get(2).filter(|s| !s.is_empty()) {
            Some(name) => match self.raw_bias(name, c.channels)? {
                Some(v) => Some(v),
                None => return Ok(None),
            },
            None => None,
        };
        let acc = conv_core(self.b, &c.cx, c.x.q, c.w, bias, c.x.zp, c.w_zp)?;
        let (xs, ys) = (f32_of(c.x.scale), f32_of(out.scale));
        let scale: Vec<f32> = c.w_scale.iter().map(|&ws| (xs * f32_of(ws)) / ys).collect();
        self.requantize_f32(acc, &scale, 1, out).map(Some)
    }

    /// QLinearMatMul: `b` per tensor or per column.
    fn ort_matmul(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let Some((acc, a, w_scale)) = self.matmul_product(p)? else {
            return Ok(None);
        };
        let (xs, ys) = (f32_of(a.scale), f32_of(out.scale));
        let scale: Vec<f32> = w_scale.iter().map(|&ws| (xs * f32_of(ws)) / ys).collect();
        let axis = self.b.rank(acc).saturating_sub(1);
        self.requantize_f32(acc, &scale, axis, out).map(Some)
    }

    /// QGemm: the raw i32 bias added to the accumulator, scale `((alpha·As)·Bs[n]) / Ys`.
    fn ort_gemm(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let Some(g) = self.gemm_product(p)? else {
            return Ok(None);
        };
        let mut acc = g.acc;
        match p.input.get(2).filter(|s| !s.is_empty()) {
            Some(_) if g.beta != 1.0 => return Ok(None),
            Some(name) => match self.raw_bias(name, g.n)? {
                Some(bias) => acc = self.b.binary(BinaryOp::Add, acc, bias)?,
                None => return Ok(None),
            },
            None => {}
        }
        let (xs, ys) = (f32_of(g.a.scale), f32_of(out.scale));
        let scale: Vec<f32> = g
            .w_scale
            .iter()
            .map(|&ws| ((g.alpha * xs) * f32_of(ws)) / ys)
            .collect();
        self.requantize_f32(acc, &scale, 1, out).map(Some)
    }

    /// The raw values of a quantized operand as f32, in onnxruntime's domain (`+ 128` for an
    /// int8 tensor it holds as uint8), with that domain's zero point.
    fn raw_f32(&mut self, x: &QAct, u8_domain: bool) -> NResult<(ValueId, f32)> {
        let v = self.b.cast(x.q, DType::F32)?;
        let shift = u8_domain && self.b.dtype(x.q) == DType::I8;
        if shift {
            let v = self.b.binary_scalar(BinaryOp::Add, v, 128.0)?;
            return Ok((v, (x.zp + 128) as f32));
        }
        Ok((v, x.zp as f32))
    }

    /// Rounds an f32 in onnxruntime's output domain, saturates it there (`cvtps2dq`, `packus`)
    /// and moves it back to the Kiln dtype of `out`.
    fn store_in_domain(&mut self, t: ValueId, out: &OutQuant, u8_domain: bool) -> NResult<ValueId> {
        let shift = u8_domain && out.dtype == DType::I8;
        let (lo, hi) = if shift {
            (0.0, 255.0)
        } else {
            qrange(out.dtype)
        };
        let t = self.b.unary(UnaryOp::Round, t)?;
        let t = self.b.clamp(t, lo, hi)?;
        let t = if shift {
            self.b.binary_scalar(BinaryOp::Sub, t, 128.0)?
        } else {
            t
        };
        self.b.cast(t, out.dtype)
    }

    /// QLinearAdd (MLAS's AVX2 kernel): `rne(fma(a, Ra, fma(b, Rb, zc - fma(Ra, za, Rb·zb))))`
    /// on raw values, `a` being the operand of the output's shape (onnxruntime swaps a
    /// broadcast first operand to second place).
    fn ort_add(
        &mut self,
        p: &NodeProto,
        out: &OutQuant,
        u8_domain: bool,
    ) -> NResult<Option<ValueId>> {
        let (Some(x0), Some(x1)) = (self.act(in_name(p, 0)), self.act(in_name(p, 1))) else {
            return Ok(None);
        };
        let (s0, s1) = (self.b.shape(x0.q), self.b.shape(x1.q));
        let (v, s) = if s0.len() >= s1.len() && s0.iter().product::<usize>() >= s1.iter().product()
        {
            (x0, x1)
        } else {
            (x1, x0)
        };
        let (sv, ss) = (self.b.shape(v.q), self.b.shape(s.q));
        let scalar_like = ss.iter().product::<usize>() == 1;
        if sv != ss && !scalar_like {
            return unsupported(format!(
                "a quantized Add broadcasting {ss:?} over {sv:?}: onnxruntime's per-span kernel \
                 is not reproduced; the float path may differ from it by a quantization step"
            ));
        }
        let (vf, zv) = self.raw_f32(&v, u8_domain)?;
        let (sf, zs) = self.raw_f32(&s, u8_domain)?;
        let zc = if u8_domain && out.dtype == DType::I8 {
            out.zp + 128
        } else {
            out.zp
        } as f32;
        let yc = f32_of(out.scale);
        let (rv, rs) = (f32_of(v.scale) / yc, f32_of(s.scale) / yc);
        let fixed = zc - rv.mul_add(zv, rs * zs);
        let rs_c = self.b.scalar(DType::F32, f64::from(rs));
        let rv_c = self.b.scalar(DType::F32, f64::from(rv));
        let fixed_c = self.b.scalar(DType::F32, f64::from(fixed));
        let t = self.mul_add(sf, rs_c, fixed_c)?;
        let t = self.mul_add(vf, rv_c, t)?;
        self.store_in_domain(t, out, u8_domain).map(Some)
    }

    fn mul_add(&mut self, a: ValueId, b: ValueId, c: ValueId) -> NResult<ValueId> {
        let v = self.b.align_all(&[a, b, c])?;
        self.b.add(Op::MulAdd, &v)
    }

    /// QLinearGlobalAveragePool: `Σx - zx·N` in i32, scale `Xs / (Ys·N)`.
    fn ort_global_average_pool(
        &mut self,
        p: &NodeProto,
        out: &OutQuant,
    ) -> NResult<Option<ValueId>> {
        let Some(x) = self.act(in_name(p, 0)) else {
            return Ok(None);
        };
        let shape = self.b.shape(x.q);
        let count: usize = shape.iter().skip(2).product();
        if shape.len() < 3 || count == 0 || count >= 1 << 24 {
            return Ok(None);
        }
        let axes: Vec<usize> = (2..shape.len()).collect();
        let wide = self.b.cast(x.q, DType::I32)?;
        let mut sum = self.b.reduce(ReduceOp::Sum, wide, &axes, true)?;
        if x.zp != 0 {
            let offset = self.b.scalar(DType::I32, count as f64 * f64::from(x.zp));
            sum = self.b.binary(BinaryOp::Sub, sum, offset)?;
        }
        let scale = f32_of(x.scale) / (f32_of(out.scale) * count as f32);
        self.requantize_f32(sum, &[scale], 0, out).map(Some)
    }

    /// QLinearSoftmax over the last axis (MLAS's AVX-512 kernel): `exp` from a 256-entry table
    /// indexed by `x - max(x)`, the row sum in the kernel's order, and
    /// `rne(fma(v, (1/Σ)·⌊1/Ys⌋, zy))`.
    fn ort_softmax(
        &mut self,
        p: &NodeProto,
        out: &OutQuant,
        u8_domain: bool,
    ) -> NResult<Option<ValueId>> {
        let (Some(cx), Some(x)) = (self.cx(p), self.act(in_name(p, 0))) else {
            return Ok(None);
        };
        let shape = self.b.shape(x.q);
        let rank = shape.len();
        let axis = cx.int("axis", if self.g.opset >= 13 { -1 } else { 1 })?;
        let axis = if axis < 0 { axis + rank as i64 } else { axis };
        // Before opset 13 the axis flattens the trailing dims; equal when it is the last one.
        if rank == 0 || axis != rank as i64 - 1 {
            return unsupported(
                "onnxruntime's QLinearSoftmax is reproduced over the last axis only",
            );
        }
        let d = shape[rank - 1];
        let xs = f32_of(x.scale);
        let bit_shift = (f64::from(f32::MAX / d as f32).ln() - 5.0).max(0.0) / f64::from(xs);
        let table: Vec<f32> = (0..256)
            .map(|i| ((f64::from(i) - 255.0 + bit_shift) * f64::from(xs)).exp() as f32)
            .collect();
        let table = self.b.const_tensor(vec![256], table)?;
        let xi = self.b.cast(x.q, DType::I32)?;
        let max = self.b.reduce(ReduceOp::Max, xi, &[rank - 1], true)?;
        let idx = self.b.binary(BinaryOp::Sub, xi, max)?;
        let idx = self.b.binary_scalar(BinaryOp::Add, idx, 255.0)?;
        let v = self.b.add(Op::Gather { axis: 0 }, &[table, idx])?;
        let total = self.softmax_total(v, d)?;
        let one = self.b.scalar(DType::F32, 1.0);
        let inv = self.b.binary(BinaryOp::Div, one, total)?;
        let yf = (1.0f32 / f32_of(out.scale)).floor();
        let scale = self.b.binary_scalar(BinaryOp::Mul, inv, f64::from(yf))?;
        let zy = if u8_domain && out.dtype == DType::I8 {
            out.zp + 128
        } else {
            out.zp
        };
        let zy = self.b.scalar(DType::F32, f64::from(zy));
        let t = self.mul_add(v, scale, zy)?;
        self.store_in_domain(t, out, u8_domain).map(Some)
    }

    /// The row sums of `v` (last axis of length `d`, kept) in the AVX-512 kernel's order: 16
    /// lane sums over blocks of 32, a fixed shuffle tree over the lanes, then the remaining
    /// `d % 32` elements one by one.
    fn softmax_total(&mut self, v: ValueId, d: usize) -> NResult<ValueId> {
        let shape = self.b.shape(v);
        let rank = shape.len();
        let last = rank - 1;
        let blocks = d / 32;
        let mut total = if blocks == 0 {
            self.b.scalar(DType::F32, 0.0)
        } else {
            let main = self.b.slice_axis(v, last, 0, blocks * 32, 1)?;
            let mut lanes_shape = shape.clone();
            lanes_shape[last] = blocks * 2;
            lanes_shape.push(16);
            let lanes = self.b.reshape(main, lanes_shape)?;
            let lanes = self.b.reduce(ReduceOp::Sum, lanes, &[last], false)?;
            // lane = 4·i + j: rows first ((r0 + r1) + (r2 + r3)), then columns likewise.
            let mut grid_shape = shape[..last].to_vec();
            grid_shape.extend([4, 4]);
            let grid = self.b.reshape(lanes, grid_shape)?;
            let rows = self.tree4(grid, last)?;
            let cols = self.tree4(rows, last + 1)?;
            let mut keep = shape.clone();
            keep[last] = 1;
            self.b.reshape(cols, keep)?
        };
        for i in blocks * 32..d {
            let e = self.b.slice_axis(v, last, i, 1, 1)?;
            total = self.b.binary(BinaryOp::Add, total, e)?;
        }
        Ok(total)
    }

    /// `(x[0] + x[1]) + (x[2] + x[3])` along `axis` of length 4, kept with length 1.
    fn tree4(&mut self, x: ValueId, axis: usize) -> NResult<ValueId> {
        let mut e = Vec::with_capacity(4);
        for i in 0..4 {
            e.push(self.b.slice_axis(x, axis, i, 1, 1)?);
        }
        let lo = self.b.binary(BinaryOp::Add, e[0], e[1])?;
        let hi = self.b.binary(BinaryOp::Add, e[2], e[3])?;
        self.b.binary(BinaryOp::Add, lo, hi)
    }
}
