//! QDQ fusion: imports `DequantizeLinear -> float op -> QuantizeLinear` chains (the ONNX "QDQ"
//! form written by onnxruntime's `quantize_static`, TensorRT and others) as TOSA integer ops:
//! CONV2D/MATMUL with zero points accumulating in i32, then RESCALE to the output's int type.
//!
//! Design: every QuantizeLinear node is an anchor. Before the plain mapping runs, [`fuse_quantize`]
//! looks back through the ONNX graph from the Q node's input: an optional Relu/Clip, then one
//! float op whose operands are all DequantizeLinear outputs (per-tensor for activations,
//! per-channel allowed for weights and biases). If the pattern fits, the Q node's value is built
//! from the *integer* inputs of those DequantizeLinear nodes and the float chain is never read;
//! the importer's dead-node pruning then drops it. No ONNX node is removed or rewritten, so a
//! pattern that does not fit (Softmax, an AveragePool whose edge windows have other divisors,
//! per-axis activations, ...) keeps the float path with explicit dequantize (cast, sub, mul) and
//! quantize (div, round, add, clamp) around it.
//!
//! Fused ops: Conv (CONV2D or DEPTHWISE_CONV2D), MatMul and Gemm (MATMUL) with an i32 bias, then
//! a per-channel RESCALE; Add/Sub (both operands RESCALEd to i32 at a common scale, TFLite/TOSA
//! style) and Mul; GlobalAveragePool (i32 REDUCE_SUM) and AveragePool (DEPTHWISE_CONV2D with
//! ones); Concat (operands requantized to the output); data movement and MaxPool (on the int8
//! values, requantized only when the scales differ); a bare `Q(DQ(x))` (a RESCALE or nothing).
//!
//! Invariant: a fused value has exactly the dtype, shape, scale and zero point of the
//! QuantizeLinear output it replaces, and differs from `Q(op(DQ(..)))` only by the rounding of
//! the fixed-point RESCALE (round half up of a Q31 multiplier, TFLite/TOSA `QuantizeMultiplier`)
//! against ONNX's float division with round half to even: at most one quantization step per
//! requantization. Clamps from a fused Relu/Clip, data movement, max pooling and a requantization
//! between equal scales are exact. Patterns that match but cannot be lowered (a scale out of the
//! RESCALE range, a bias that does not fit i32, ...) are errors the importer turns into a note
//! before it falls back to the float path; nothing here panics.

use crate::builder::{invalid, norm_axis, unsupported, Builder, NResult};
use crate::node::NodeCx;
use crate::ops::conv::{conv_core, from_2d, to_2d, window};
use crate::ops::matmul::matmul_nd;
use crate::ops::quant::{rescale_by, weight_and_zero_point};
use crate::proto::NodeProto;
use crate::Int8Numerics;
use kiln_ir::op::{BinaryOp, ConvAttrs, DataLayout, MatMulAttrs, ReduceOp};
use kiln_ir::{DType, Op, ValueId};
use std::collections::HashMap;

/// Ops that only move or select elements: they commute with a per-tensor DequantizeLinear
/// (MaxPool too, since dequantization is increasing), so they run on the integers unchanged.
/// Only their first input is data; the others are shape operands.
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

/// Fractional bits of the i32 operands of a quantized Add/Sub (TFLite's `left_shift` for 8-bit
/// inputs, also what TOSA's legalization uses): 8-bit differences stay below 2^29.
const ADD_LEFT_SHIFT: i32 = 20;

/// Largest all-ones weight (elements) an integer AveragePool materializes.
const MAX_POOL_WEIGHTS: usize = 1 << 24;

/// Relative difference under which two scales are treated as equal. Far below f32 precision
/// of a ratio yet far above the rounding noise of products computed in f32 or f64.
const SAME_SCALE: f64 = 1e-6;

/// The ONNX graph as the fusion sees it: who produces each tensor and what it was imported as.
pub(crate) struct QdqGraph<'a> {
    /// Output name -> producing node.
    producers: HashMap<&'a str, &'a NodeProto>,
    /// Tensor name -> the nodes reading it, once per input slot.
    pub(super) consumers: HashMap<&'a str, Vec<&'a NodeProto>>,
    /// The graph's output names.
    pub(super) outputs: Vec<String>,
    pub(super) opset: i64,
    pub(super) numerics: Int8Numerics,
}

impl<'a> QdqGraph<'a> {
    pub(crate) fn new(
        nodes: &'a [NodeProto],
        outputs: Vec<String>,
        opset: i64,
        numerics: Int8Numerics,
    ) -> Self {
        let mut producers = HashMap::new();
        let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for n in nodes {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producers.insert(o.as_str(), n);
            }
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                consumers.entry(i.as_str()).or_default().push(n);
            }
        }
        QdqGraph {
            producers,
            consumers,
            outputs,
            opset,
            numerics,
        }
    }

    /// True for a Conv reading a DequantizeLinear output under onnxruntime's numerics: a float
    /// conv that must round as MLAS does.
    pub(crate) fn float_conv_of_dequantized(&self, node: &NodeProto) -> bool {
        self.numerics == Int8Numerics::OnnxRuntime
            && node.op_type.as_deref() == Some("Conv")
            && node
                .input
                .first()
                .and_then(|x| self.producer(x))
                .is_some_and(|p| p.op_type.as_deref() == Some("DequantizeLinear"))
    }

    /// How many times `name` is read: by node inputs, plus one if it is a graph output.
    pub(super) fn uses(&self, name: &str) -> usize {
        self.consumers.get(name).map_or(0, Vec::len)
            + usize::from(self.outputs.iter().any(|o| o == name))
    }

    pub(super) fn producer(&self, name: &str) -> Option<&'a NodeProto> {
        let n = self.producers.get(name).copied()?;
        matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx")).then_some(n)
    }
}

/// The state of the import a fusion reads: the graph, the builder and the imported values.
pub(super) struct Fuser<'g, 'b> {
    pub(super) g: &'g QdqGraph<'g>,
    pub(super) b: &'b mut Builder,
    pub(super) values: &'g HashMap<String, ValueId>,
}

/// A DequantizeLinear output seen through: its integer input and quantization parameters.
pub(super) struct Dq {
    pub(super) q: ValueId,
    /// One scale, or one per index of `axis`.
    pub(super) scale: Vec<f64>,
    /// As many zero points as scales (zeros when absent).
    pub(super) zp: Vec<i64>,
    /// The zero-point operand, when present (for per-channel weight zero points).
    pub(super) zp_value: Option<ValueId>,
    pub(super) axis: usize,
}

impl Dq {
    /// `(scale, zero point)` of a per-tensor quantized value.
    fn per_tensor(&self) -> Option<(f64, i32)> {
        match (&self.scale[..], &self.zp[..]) {
            ([s], [z]) => Some((*s, i32::try_from(*z).ok()?)),
            _ => None,
        }
    }

    /// The scales as one per index of `axis` of a `len`-long axis, if they are per tensor or
    /// per channel along exactly that axis.
    pub(super) fn scales_along(&self, axis: usize, len: usize) -> Option<Vec<f64>> {
        match self.scale.len() {
            1 => Some(vec![self.scale[0]; len]),
            n if n == len && self.axis == axis => Some(self.scale.clone()),
            _ => None,
        }
    }
}

/// The quantization of the fused value: that of the anchoring QuantizeLinear.
pub(super) struct OutQuant {
    pub(super) scale: f64,
    pub(super) zp: i32,
    pub(super) dtype: DType,
}

/// The quantized operands of a Conv.
pub(super) struct ConvOperands<'n> {
    pub(super) cx: NodeCx<'n>,
    pub(super) x: QAct,
    pub(super) w: ValueId,
    pub(super) w_zp: i32,
    /// The weight's scale per output channel.
    pub(super) w_scale: Vec<f64>,
    /// Output channels.
    pub(super) channels: usize,
}

/// The i32 product of a quantized Gemm, before its bias and requantisation.
pub(super) struct GemmProduct {
    pub(super) acc: ValueId,
    /// The activation operand's quantization.
    pub(super) a: QAct,
    /// The weight's scale per output column.
    pub(super) w_scale: Vec<f64>,
    pub(super) alpha: f32,
    pub(super) beta: f32,
    /// Output columns.
    pub(super) n: usize,
}

/// A per-tensor quantized activation operand.
#[derive(Clone, Copy)]
pub(super) struct QAct {
    pub(super) q: ValueId,
    pub(super) scale: f64,
    pub(super) zp: i32,
}

/// The magnitudes a per-tensor 8-bit DequantizeLinear output `name` can take: finite, and
/// either 0 or at least `min_nonzero`. `None` when `name` is not such an output.
pub(crate) fn dequantized_magnitudes(
    g: &QdqGraph,
    b: &mut Builder,
    values: &HashMap<String, ValueId>,
    name: &str,
) -> Option<super::mlas_conv::Magnitudes> {
    let act = Fuser { g, b, values }.act(name)?;
    // (q - zp) is an integer of at most 255 in magnitude (so the product stays finite below
    // this bound); f32 rounds the product by less than half of its value.
    let finite = 255.0 * act.scale < f64::from(f32::MAX) / 2.0;
    (act.scale > 0.0 && finite).then_some(super::mlas_conv::Magnitudes {
        min_nonzero: act.scale / 2.0,
    })
}

/// The integer value of the QuantizeLinear node `cx`, if its input is a fusable QDQ pattern.
/// `Ok(None)`: not a QDQ pattern, map the node as usual. `Err`: the pattern fits but cannot be
/// lowered; the caller notes the reason and maps the node as usual.
pub(crate) fn fuse_quantize(
    b: &mut Builder,
    cx: &NodeCx,
    g: &QdqGraph,
    values: &HashMap<String, ValueId>,
) -> NResult<Option<ValueId>> {
    if g.numerics == Int8Numerics::OnnxRuntime {
        return super::qdq_ort::fuse_quantize(b, cx, g, values);
    }
    let mut f = Fuser { g, b, values };
    let Some(out) = f.output_quant(cx)? else {
        return Ok(None);
    };
    let Some(x_name) = cx.node.input.first() else {
        return Ok(None);
    };
    let Some((src, lo, hi)) = f.peel_activation(x_name)? else {
        return Ok(None);
    };
    let Some(p) = g.producer(&src) else {
        return Ok(None);
    };
    let op = p.op_type.as_deref().unwrap_or("");
    let fused = match op {
        "Conv" => f.conv(p, &out)?,
        "MatMul" => f.matmul(p, &out)?,
        "Gemm" => f.gemm(p, &out)?,
        "Add" | "Sub" => f.add_sub(p, &out)?,
        "Mul" => f.mul(p, &out)?,
        "GlobalAveragePool" => f.global_average_pool(p, &out)?,
        "AveragePool" => f.average_pool(p, &out)?,
        "Concat" => f.concat(p, &out)?,
        "DequantizeLinear" => match f.act(&src) {
            Some(x) => Some(f.requantize(x, &out)?),
            None => None,
        },
        _ if DATA_MOVEMENT.contains(&op) => f.data_movement(p, &out)?,
        _ => None,
    };
    match fused {
        Some(v) => f.clamp_real(v, lo, hi, &out).map(Some),
        None => Ok(None),
    }
}

impl Fuser<'_, '_> {
    /// The context of another node of the graph with its imported inputs, if all are imported.
    pub(super) fn cx<'n>(&self, node: &'n NodeProto) -> Option<NodeCx<'n>> {
        let mut inputs = Vec::with_capacity(node.input.len());
        for i in &node.input {
            if i.is_empty() {
                inputs.push(None);
            } else {
                inputs.push(Some(*self.values.get(i)?));
            }
        }
        Some(NodeCx {
            node,
            op_type: node.op_type.as_deref().unwrap_or(""),
            opset: self.g.opset,
            inputs,
            num_outputs: node.output.len(),
            read: Default::default(),
        })
    }

    /// The quantization the anchoring QuantizeLinear produces, if it is per tensor with constant
    /// parameters and an integer type RESCALE can produce.
    pub(super) fn output_quant(&self, cx: &NodeCx) -> NResult<Option<OutQuant>> {
        // Read every attribute the plain mapping reads, so the unread-attribute check agrees;
        // `axis` only matters for per-axis scales, which are not fused.
        cx.int("axis", 1)?;
        let block = cx.int("block_size", 0)?;
        let code = cx.int("output_dtype", 0)?;
        if block != 0 {
            return Ok(None);
        }
        let Ok(scale) = cx.input(1) else {
            return Ok(None);
        };
        let Some(&[s]) = self.b.const_floats(scale).as_deref() else {
            return Ok(None);
        };
        let (zp, dtype) = match cx.opt_input(2) {
            Some(z) => match self.b.const_ints(z).as_deref() {
                Some(&[z0]) => (z0, self.b.dtype(z)),
                _ => return Ok(None),
            },
            None if code == 0 => (0, DType::U8),
            None => return Ok(None),
        };
        if !(matches!(dtype, DType::I8 | DType::U8) && s.is_finite() && s > 0.0) {
            return Ok(None);
        }
        let Ok(zp) = i32::try_from(zp) else {
            return Ok(None);
        };
        Ok(Some(OutQuant {
            scale: s,
            zp,
            dtype,
        }))
    }

    /// Looks through a Relu or Clip producing `name`: the tensor it reads and the real interval
    /// it clamps to (infinite when there is none).
    pub(super) fn peel_activation(&self, name: &str) -> NResult<Option<(String, f64, f64)>> {
        let (lo, hi) = (f64::NEG_INFINITY, f64::INFINITY);
        let Some(p) = self.g.producer(name) else {
            return Ok(Some((name.to_string(), lo, hi)));
        };
        let op = p.op_type.as_deref().unwrap_or("");
        if op != "Relu" && op != "Clip" {
            return Ok(Some((name.to_string(), lo, hi)));
        }
        let Some(cx) = self.cx(p) else {
            return Ok(None);
        };
        let src = in_name(p, 0).to_string();
        if op == "Relu" {
            return Ok(Some((src, 0.0, hi)));
        }
        let bound = |i: usize, attr: &str, default: f64| -> NResult<Option<f64>> {
            if self.g.opset < 11 {
                return Ok(Some(cx.float(attr, default as f32)? as f64));
            }
            match cx.opt_input(i) {
                None => Ok(Some(default)),
                Some(v) => Ok(match self.b.const_floats(v).as_deref() {
                    Some(&[x]) => Some(x),
                    _ => None,
                }),
            }
        };
        let (Some(min), Some(max)) = (
            bound(1, "min", f64::NEG_INFINITY)?,
            bound(2, "max", f64::INFINITY)?,
        ) else {
            return Ok(None);
        };
        if min.is_nan() || max.is_nan() {
            return Ok(None);
        }
        Ok(Some((src, min, max)))
    }

    /// The DequantizeLinear producing `name`, seen through, if its parameters are constants and
    /// it dequantizes 8-bit integers (or i32, for biases).
    pub(super) fn dequantized(&self, name: &str) -> Option<Dq> {
        let p = self.g.producer(name)?;
        if p.op_type.as_deref() != Some("DequantizeLinear") {
            return None;
        }
        let cx = self.cx(p)?;
        if cx.int("block_size", 0).ok()? != 0 {
            return None;
        }
        let q = cx.input(0).ok()?;
        if !matches!(self.b.dtype(q), DType::I8 | DType::U8 | DType::I32) {
            return None;
        }
        let scale = self.b.const_floats(cx.input(1).ok()?)?;
        if scale.is_empty() || !scale.iter().all(|s| s.is_finite() && *s > 0.0) {
            return None;
        }
        let zp_value = cx.opt_input(2);
        let zp = match zp_value {
            Some(z) => self.b.const_ints(z)?,
            None => vec![0; scale.len()],
        };
        if zp.len() != scale.len() {
            return None;
        }
        let axis = if scale.len() > 1 {
            norm_axis(cx.int("axis", 1).ok()?, self.b.rank(q)).ok()?
        } else {
            0
        };
        Some(Dq {
            q,
            scale,
            zp,
            zp_value,
            axis,
        })
    }

    /// A per-tensor quantized 8-bit activation.
    pub(super) fn act(&self, name: &str) -> Option<QAct> {
        let d = self.dequantized(name)?;
        let (scale, zp) = d.per_tensor()?;
        matches!(self.b.dtype(d.q), DType::I8 | DType::U8).then_some(QAct { q: d.q, scale, zp })
    }

    /// The 8-bit weight operand `name` (per tensor, or per channel along `axis` of length `len`):
    /// the integer weight ready for CONV2D/MATMUL, its zero point and one scale per channel.
    pub(super) fn weight(
        &mut self,
        name: &str,
        axis: usize,
        len: usize,
    ) -> NResult<Option<(ValueId, i32, Vec<f64>)>> {
        let Some(d) = self.dequantized(name) else {
            return Ok(None);
        };
        if !matches!(self.b.dtype(d.q), DType::I8 | DType::U8) {
            return Ok(None);
        }
        let Some(scales) = d.scales_along(axis, len) else {
            return unsupported(format!(
                "weight `{name}` is quantized along axis {} but the output channels are axis {axis}",
                d.axis
            ));
        };
        let (w, zp) = if d.zp.iter().all(|&z| z == d.zp[0]) {
            let zp =
                i32::try_from(d.zp[0]).or_else(|_| invalid("weight zero point out of range"))?;
            (d.q, zp)
        } else {
            weight_and_zero_point(self.b, d.q, d.zp_value, axis, "weight zero point")?
        };
        Ok(Some((w, zp, scales)))
    }

    /// The i32 bias of an accumulator whose channel `c` has real scale `acc_scale[c]`, from a
    /// bias `name` multiplied by `factor`. A DequantizeLinear of i32 whose scale already is the
    /// accumulator's (onnxruntime's form) is used as is; any other constant bias (a folded
    /// DequantizeLinear included) is quantized here with round half to even, as QuantizeLinear
    /// would.
    fn bias(&mut self, name: &str, acc_scale: &[f64], factor: f64) -> NResult<ValueId> {
        let n = acc_scale.len();
        if let Some(d) = self.dequantized(name) {
            let same = factor == 1.0
                && self.b.dtype(d.q) == DType::I32
                && d.zp.iter().all(|&z| z == 0)
                && self.b.ty(d.q).num_elements() == n
                && d.scales_along(0, n).is_some_and(|s| {
                    s.iter()
                        .zip(acc_scale)
                        .all(|(a, b)| (a / b - 1.0).abs() < SAME_SCALE)
                });
            if same {
                return self.b.reshape(d.q, vec![n]);
            }
        }
        let Some(real) = self.values.get(name).and_then(|&v| self.b.const_floats(v)) else {
            return unsupported(format!("bias `{name}` is not a constant"));
        };
        let real: Vec<f64> = match real.len() {
            1 => vec![real[0]; n],
            l if l == n => real,
            l => return invalid(format!("bias `{name}` has {l} values for {n} channels")),
        };
        let mut q = Vec::with_capacity(n);
        for (r, s) in real.iter().zip(acc_scale) {
            let v = (r * factor / s).round_ties_even();
            if !(v >= i32::MIN as f64 && v <= i32::MAX as f64) {
                return unsupported(format!("bias `{name}` does not fit i32 at scale {s}"));
            }
            q.push(v as i32);
        }
        self.b.const_tensor(vec![n], q)
    }

    /// `Q(Conv(DQ(x), DQ(w), [bias]))` -> CONV2D (i32) + RESCALE.
    fn conv(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let Some(c) = self.conv_operands(p)? else {
            return Ok(None);
        };
        let acc_scale: Vec<f64> = c.w_scale.iter().map(|s| c.x.scale * s).collect();
        let bias = match p.input.get(2).filter(|s| !s.is_empty()) {
            Some(name) => Some(self.bias(name, &acc_scale, 1.0)?),
            None => None,
        };
        let acc = conv_core(self.b, &c.cx, c.x.q, c.w, bias, c.x.zp, c.w_zp)?;
        self.rescale_out(acc, &acc_scale, 1, out).map(Some)
    }

    /// The operands of `Conv(DQ(x), DQ(w), ..)`: a quantized activation and a quantized weight
    /// (per output channel); `None` when they are not.
    pub(super) fn conv_operands<'n>(
        &mut self,
        p: &'n NodeProto,
    ) -> NResult<Option<ConvOperands<'n>>> {
        let (Some(cx), Some(x)) = (self.cx(p), self.act(in_name(p, 0))) else {
            return Ok(None);
        };
        let Ok(w_val) = cx.input(1) else {
            return Ok(None);
        };
        let channels = self.b.shape(w_val).first().copied().unwrap_or(0);
        let Some((w, w_zp, w_scale)) = self.weight(in_name(p, 1), 0, channels)? else {
            return Ok(None);
        };
        Ok(Some(ConvOperands {
            cx,
            x,
            w,
            w_zp,
            w_scale,
            channels,
        }))
    }

    /// `Q(MatMul(DQ(a), DQ(b)))` -> MATMUL (i32) + RESCALE; `b` may be per channel along its
    /// last axis.
    fn matmul(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let Some((acc, a, w_scale)) = self.matmul_product(p)? else {
            return Ok(None);
        };
        let acc_scale: Vec<f64> = w_scale.iter().map(|s| a.scale * s).collect();
        let axis = self.b.rank(acc).saturating_sub(1);
        self.rescale_out(acc, &acc_scale, axis, out).map(Some)
    }

    /// The i32 product of `MatMul(DQ(a), DQ(b))` with `a`'s quantization and `b`'s scale per
    /// column (per tensor or along its last axis); `None` when the operands are not quantized.
    pub(super) fn matmul_product(
        &mut self,
        p: &NodeProto,
    ) -> NResult<Option<(ValueId, QAct, Vec<f64>)>> {
        let (Some(cx), Some(a)) = (self.cx(p), self.act(in_name(p, 0))) else {
            return Ok(None);
        };
        let Ok(b_val) = cx.input(1) else {
            return Ok(None);
        };
        let bs = self.b.shape(b_val);
        let last = bs.len().saturating_sub(1);
        let n = bs.last().copied().unwrap_or(1);
        let Some((w, b_zp, w_scale)) = self.weight(in_name(p, 1), last, n)? else {
            return Ok(None);
        };
        let attrs = MatMulAttrs {
            a_zp: a.zp,
            b_zp,
            ..Default::default()
        };
        let acc = matmul_nd(self.b, a.q, w, attrs)?;
        Ok(Some((acc, a, w_scale)))
    }

    /// `Q(Gemm(DQ(a), DQ(b), [c]))` -> MATMUL (i32) + i32 bias + RESCALE, with `alpha` folded
    /// into the scales and `beta * c` quantized at the accumulator's scale.
    fn gemm(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let Some(g) = self.gemm_product(p)? else {
            return Ok(None);
        };
        let (alpha, beta) = (f64::from(g.alpha), f64::from(g.beta));
        if !beta.is_finite() {
            return unsupported(format!("beta {beta} in a quantized Gemm"));
        }
        let mut acc = g.acc;
        let acc_scale: Vec<f64> = g.w_scale.iter().map(|s| alpha * g.a.scale * s).collect();
        if let Some(c) = p.input.get(2).filter(|s| !s.is_empty()) {
            if beta != 0.0 {
                let bias = self.bias(c, &acc_scale, beta)?;
                acc = self.b.binary(BinaryOp::Add, acc, bias)?;
            }
        }
        self.rescale_out(acc, &acc_scale, 1, out).map(Some)
    }

    /// The integer product of `Gemm(DQ(a), DQ(b), ..)` (transposes applied, zero points in the
    /// MATMUL) with what the requantisation needs; `None` when the operands are not a quantized
    /// activation and a quantized constant weight.
    pub(super) fn gemm_product(&mut self, p: &NodeProto) -> NResult<Option<GemmProduct>> {
        let (Some(cx), Some(a)) = (self.cx(p), self.act(in_name(p, 0))) else {
            return Ok(None);
        };
        let Ok(b_val) = cx.input(1) else {
            return Ok(None);
        };
        let (trans_a, trans_b) = (cx.flag("transA", false)?, cx.flag("transB", false)?);
        let (alpha, beta) = (cx.float("alpha", 1.0)?, cx.float("beta", 1.0)?);
        let bs = self.b.shape(b_val);
        if self.b.rank(a.q) != 2 || bs.len() != 2 {
            return invalid("Gemm operands must be 2-D");
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return unsupported(format!("alpha {alpha} in a quantized Gemm"));
        }
        let n_axis = usize::from(!trans_b);
        let n = bs[n_axis];
        let Some((w, b_zp, w_scale)) = self.weight(in_name(p, 1), n_axis, n)? else {
            return Ok(None);
        };
        // A per-channel weight zero point was folded into `w` along `n_axis`; transposing keeps it.
        let a_q = if trans_a {
            self.b.transpose(a.q, vec![1, 0])?
        } else {
            a.q
        };
        let w = if trans_b {
            self.b.transpose(w, vec![1, 0])?
        } else {
            w
        };
        let attrs = MatMulAttrs {
            a_zp: a.zp,
            b_zp,
            ..Default::default()
        };
        let acc = matmul_nd(self.b, a_q, w, attrs)?;
        Ok(Some(GemmProduct {
            acc,
            a,
            w_scale,
            alpha,
            beta,
            n,
        }))
    }

    /// `Q(Add(DQ(a), DQ(b)))` (or Sub) the TFLite/TOSA way: both operands rescaled to i32 at a
    /// common scale `2 * max(sa, sb) / 2^20`, added, and rescaled to the output.
    fn add_sub(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let (Some(a), Some(c)) = (self.act(in_name(p, 0)), self.act(in_name(p, 1))) else {
            return Ok(None);
        };
        let op = if p.op_type.as_deref() == Some("Sub") {
            BinaryOp::Sub
        } else {
            BinaryOp::Add
        };
        let twice_max = 2.0 * a.scale.max(c.scale);
        let unit = f64::from(1 << ADD_LEFT_SHIFT);
        let ai = rescale_by(
            self.b,
            a.q,
            a.zp,
            &[a.scale / twice_max * unit],
            0,
            DType::I32,
            0,
        )?;
        let ci = rescale_by(
            self.b,
            c.q,
            c.zp,
            &[c.scale / twice_max * unit],
            0,
            DType::I32,
            0,
        )?;
        let sum = self.b.binary(op, ai, ci)?;
        self.rescale_out(sum, &[twice_max / unit], 0, out).map(Some)
    }

    /// `Q(Mul(DQ(a), DQ(b)))`: `(a - za) * (b - zb)` in i32, rescaled by `sa * sb / sy`.
    fn mul(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let (Some(a), Some(c)) = (self.act(in_name(p, 0)), self.act(in_name(p, 1))) else {
            return Ok(None);
        };
        let ai = rescale_by(self.b, a.q, a.zp, &[1.0], 0, DType::I32, 0)?;
        let ci = rescale_by(self.b, c.q, c.zp, &[1.0], 0, DType::I32, 0)?;
        let prod = self.b.binary(BinaryOp::Mul, ai, ci)?;
        self.rescale_out(prod, &[a.scale * c.scale], 0, out)
            .map(Some)
    }

    /// `Q(GlobalAveragePool(DQ(x)))`: an i32 sum over the spatial axes, less `count * zx`,
    /// rescaled by `sx / (count * sy)`.
    pub(super) fn global_average_pool(
        &mut self,
        p: &NodeProto,
        out: &OutQuant,
    ) -> NResult<Option<ValueId>> {
        let Some(x) = self.act(in_name(p, 0)) else {
            return Ok(None);
        };
        let shape = self.b.shape(x.q);
        if shape.len() < 3 {
            return invalid(format!("input must have spatial dims, got {shape:?}"));
        }
        let count: usize = shape[2..].iter().product();
        // Every partial sum of 8-bit values stays inside i32.
        if count == 0 || count > (i32::MAX as usize) / 256 {
            return unsupported(format!("a window of {count} elements in an i32 sum"));
        }
        let axes: Vec<usize> = (2..shape.len()).collect();
        let wide = self.b.cast(x.q, DType::I32)?;
        let mut sum = self.b.reduce(ReduceOp::Sum, wide, &axes, true)?;
        if x.zp != 0 {
            // |count * zx| < 2^31 by the bound on count.
            let offset = self.b.scalar(DType::I32, count as f64 * f64::from(x.zp));
            sum = self.b.binary(BinaryOp::Sub, sum, offset)?;
        }
        let real = x.scale / count as f64;
        self.rescale_out(sum, &[real], 0, out).map(Some)
    }

    /// `Q(AveragePool(DQ(x)))` when every window has the same divisor (no padding, or padding
    /// counted): a DEPTHWISE_CONV2D with all-ones weights sums `x - zx` in i32 (padding reads
    /// the zero point, so adds nothing), and RESCALE divides by `kh * kw` and requantizes.
    fn average_pool(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let (Some(cx), Some(x)) = (self.cx(p), self.act(in_name(p, 0))) else {
            return Ok(None);
        };
        let xs = self.b.shape(x.q);
        if !(3..=4).contains(&xs.len()) {
            return unsupported(format!("a {}-D average pool", xs.len().saturating_sub(2)));
        }
        let kernel: Vec<usize> = match cx.ints_opt("kernel_shape")? {
            Some(k) if k.iter().all(|&d| d >= 1) => k.iter().map(|&d| d as usize).collect(),
            _ => return invalid("kernel_shape must list positive sizes"),
        };
        if cx.flag("ceil_mode", false)? {
            return unsupported("ceil_mode gives edge windows of other sizes");
        }
        let win = window(&cx, &xs[2..], &kernel, false)?;
        if win.pad.iter().any(|&p| p > 0) && !cx.flag("count_include_pad", false)? {
            return unsupported("edge windows that do not count the padding have other divisors");
        }
        let count = win.kernel[0].saturating_mul(win.kernel[1]);
        if count > (i32::MAX as usize) / 256 {
            return unsupported(format!("a window of {count} elements in an i32 sum"));
        }
        let channels = xs[1];
        // The all-ones weight is materialized: keep it modest.
        if channels.saturating_mul(count) > MAX_POOL_WEIGHTS {
            return unsupported(format!("{channels} channels of {count}-element windows"));
        }
        let ones = self.b.const_f64(
            DType::I8,
            vec![channels, 1, win.kernel[0], win.kernel[1]],
            &vec![1.0; channels * count],
        )?;
        let zeros = self
            .b
            .const_f64(DType::I32, vec![channels], &vec![0.0; channels])?;
        let attrs = ConvAttrs {
            pad: win.pad,
            stride: win.stride,
            dilation: win.dilation,
            input_zp: x.zp,
            weight_zp: 0,
            layout: DataLayout::Nchw,
            fma: false,
        };
        let x4 = to_2d(self.b, x.q)?;
        let sum = self.b.add(Op::DepthwiseConv2d(attrs), &[x4, ones, zeros])?;
        let sum = from_2d(self.b, sum, xs.len() == 3)?;
        self.rescale_out(sum, &[x.scale / count as f64], 0, out)
            .map(Some)
    }

    /// `Q(Concat(DQ(x0), DQ(x1), ...))`: each operand requantized to the output, then concatenated.
    fn concat(&mut self, p: &NodeProto, out: &OutQuant) -> NResult<Option<ValueId>> {
        let Some(mut cx) = self.cx(p) else {
            return Ok(None);
        };
        let mut parts = Vec::with_capacity(p.input.len());
        for name in &p.input {
            match self.act(name) {
                Some(x) => parts.push(x),
                None => return Ok(None),
            }
        }
        for (slot, x) in cx.inputs.iter_mut().zip(parts) {
            *slot = Some(self.requantize(x, out)?);
        }
        Ok(super::map_node(self.b, &cx)?.first().copied())
    }

    /// `Q(op(DQ(x), shape operands...))` for a data-movement op: the op on the integers, then a
    /// requantization to the output (none when the parameters agree).
    pub(super) fn data_movement(
        &mut self,
        p: &NodeProto,
        out: &OutQuant,
    ) -> NResult<Option<ValueId>> {
        let (Some(mut cx), Some(x)) = (self.cx(p), self.act(in_name(p, 0))) else {
            return Ok(None);
        };
        if p.input
            .iter()
            .skip(1)
            .any(|i| self.dequantized(i).is_some())
        {
            return Ok(None);
        }
        if let Some(slot) = cx.inputs.first_mut() {
            *slot = Some(x.q);
        }
        let Some(&moved) = super::map_node(self.b, &cx)?.first() else {
            return Ok(None);
        };
        if self.b.dtype(moved) != self.b.dtype(x.q) {
            return Ok(None);
        }
        let moved = QAct { q: moved, ..x };
        self.requantize(moved, out).map(Some)
    }

    /// `Q(DQ(x))`: `x` itself when the parameters agree, else an 8-bit RESCALE.
    fn requantize(&mut self, x: QAct, out: &OutQuant) -> NResult<ValueId> {
        let same = x.zp == out.zp
            && self.b.dtype(x.q) == out.dtype
            && (x.scale / out.scale - 1.0).abs() < SAME_SCALE;
        if same {
            return Ok(x.q);
        }
        rescale_by(
            self.b,
            x.q,
            x.zp,
            &[x.scale / out.scale],
            out.zp,
            out.dtype,
            0,
        )
    }

    /// RESCALE of an accumulator with real scale `acc_scale[c]` (channel axis `axis`) to `out`.
    fn rescale_out(
        &mut self,
        acc: ValueId,
        acc_scale: &[f64],
        axis: usize,
        out: &OutQuant,
    ) -> NResult<ValueId> {
        let real: Vec<f64> = acc_scale.iter().map(|s| s / out.scale).collect();
        // Equal per-channel scales (a per-tensor weight) need one multiplier only.
        let real = if real.windows(2).all(|w| w[0] == w[1]) {
            &real[..real.len().min(1)]
        } else {
            &real[..]
        };
        rescale_by(self.b, acc, 0, real, out.zp, out.dtype, axis)
    }

    /// Clamps a quantized value to the real interval `[lo, hi]` (a fused Relu or Clip): exactly
    /// `Q(clip(v))`, since quantization is monotone. No op when the interval covers the dtype.
    fn clamp_real(&mut self, v: ValueId, lo: f64, hi: f64, out: &OutQuant) -> NResult<ValueId> {
        let (min, max) = match out.dtype {
            DType::I8 => (-128.0, 127.0),
            _ => (0.0, 255.0),
        };
        let quantize =
            |r: f64| ((r / out.scale).round_ties_even() + f64::from(out.zp)).clamp(min, max);
        let (qlo, qhi) = (quantize(lo), quantize(hi));
        if qlo <= min && qhi >= max {
            return Ok(v);
        }
        self.b.clamp(v, qlo, qhi)
    }
}

/// Input `i` of a node by name (empty when absent).
pub(super) fn in_name(p: &NodeProto, i: usize) -> &str {
    p.input.get(i).map(String::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::quant::quantize_multiplier;
    use kiln_ir::op::{RescaleAttrs, RoundingMode};
    use kiln_ir::{Op, Tensor};

    #[test]
    fn multiplier_and_shift_follow_tflite() {
        // Reference values from TFLite's QuantizeMultiplier (frexp, round(m * 2^31)).
        let cases = [
            (1.0, 1 << 30, 30),
            (0.5, 1 << 30, 31),
            (0.75, 1_610_612_736, 31),
            (1.0 / 3.0, 1_431_655_765, 32),
            (0.0123, 1_690_499_128, 37),
            (3e-5, 2_111_062_325, 46),
        ];
        for (scale, m, s) in cases {
            assert_eq!(quantize_multiplier(scale), Some((m, s)), "scale {scale}");
        }
        // A mantissa that rounds up to 2^31 moves to the next power of two.
        assert_eq!(quantize_multiplier(1.0 - 1e-12), Some((1 << 30, 30)));
        // Largest and smallest representable: shifts stay in TOSA's 2..=62.
        assert_eq!(quantize_multiplier(2f64.powi(28)), Some((1 << 30, 2)));
        assert_eq!(quantize_multiplier(2f64.powi(29)), None);
        let (m, s) = quantize_multiplier(1e-12).unwrap();
        assert_eq!(s, 62);
        assert!((f64::from(m) / 2f64.powi(62) / 1e-12 - 1.0).abs() < 1e-6);
        for bad in [0.0, -0.5, f64::NAN, f64::INFINITY] {
            assert_eq!(quantize_multiplier(bad), None, "{bad}");
        }
    }

    /// RESCALE with the computed multiplier rounds `v * scale` to nearest (ties up), so it agrees
    /// with float requantization except within 2^-20 of a tie.
    #[test]
    fn rescale_rounds_like_float_requantization() {
        let xs: Vec<i32> = (-40_000..40_000).step_by(7).collect();
        let x = Tensor::new(vec![xs.len()], xs.clone()).unwrap();
        for scale in [0.000_731, 0.0123, 0.25, 0.4999, 1.7, 3e-5] {
            let (m, s) = quantize_multiplier(scale).unwrap();
            let op = Op::Rescale(RescaleAttrs {
                to: DType::I32,
                multiplier: vec![m],
                shift: vec![s],
                input_zp: 0,
                output_zp: 0,
                scale32: true,
                rounding: RoundingMode::Single,
                channel_axis: None,
            });
            let y = kiln_operators::evaluate(&op, &[&x]).unwrap();
            for (&v, got) in xs.iter().zip(y.data().to_i64_vec()) {
                let exact = f64::from(v) * scale;
                let near_tie = (exact - exact.floor() - 0.5).abs() < 1e-6;
                if !near_tie {
                    assert_eq!(got as f64, exact.round(), "{v} * {scale}");
                } else {
                    assert!((got as f64 - exact).abs() <= 0.5 + 1e-6, "{v} * {scale}");
                }
            }
        }
    }
}
