//! Type inference: the dtype and shape rule of every op. The verifier and the graph builder both
//! use it, so a graph's recorded types are always the ones derived here.

use crate::op::*;
use crate::{DType, IrError, Result, TensorType};

/// The result type of `op` applied to operands of the given types. For [`Op::Const`] the single
/// entry of `inputs` is the type of the constant.
pub fn infer_type(op: &Op, inputs: &[&TensorType]) -> Result<TensorType> {
    let name = op.name();
    let err = |reason: String| IrError::ty(name, reason);
    let arity = |n: usize| -> Result<()> {
        if inputs.len() == n {
            Ok(())
        } else {
            Err(err(format!("expects {n} operand(s), got {}", inputs.len())))
        }
    };
    let out = |dtype: DType, shape: Vec<usize>| TensorType::new(dtype, shape);
    match op {
        Op::Const(_) | Op::Identity => {
            arity(1)?;
            Ok(inputs[0].clone())
        }
        Op::Unary(u) => {
            arity(1)?;
            let x = inputs[0];
            let ok = match u {
                UnaryOp::Abs | UnaryOp::Negate | UnaryOp::Sign => x.dtype.is_numeric(),
                UnaryOp::LogicalNot => x.dtype == DType::Bool,
                UnaryOp::BitwiseNot => x.dtype.is_int(),
                _ => x.dtype.is_float(),
            };
            if !ok {
                return Err(err(format!("does not accept {}", x.dtype)));
            }
            let dtype = match u {
                UnaryOp::IsNan | UnaryOp::IsInf => DType::Bool,
                _ => x.dtype,
            };
            out(dtype, x.shape.clone())
        }
        Op::Binary(b) => {
            arity(2)?;
            let (a, c) = (inputs[0], inputs[1]);
            if a.dtype != c.dtype {
                return Err(err(format!(
                    "operand dtypes differ: {} and {}",
                    a.dtype, c.dtype
                )));
            }
            let ok = match b {
                BinaryOp::LogicalAnd | BinaryOp::LogicalOr | BinaryOp::LogicalXor => {
                    a.dtype == DType::Bool
                }
                BinaryOp::BitwiseAnd
                | BinaryOp::BitwiseOr
                | BinaryOp::BitwiseXor
                | BinaryOp::LogicalLeftShift
                | BinaryOp::LogicalRightShift
                | BinaryOp::ArithmeticRightShift => a.dtype.is_int(),
                BinaryOp::Equal => true,
                _ => a.dtype.is_numeric(),
            };
            if !ok {
                return Err(err(format!("does not accept {}", a.dtype)));
            }
            let shape = broadcast(name, &a.shape, &c.shape)?;
            let dtype = if b.is_comparison() {
                DType::Bool
            } else {
                a.dtype
            };
            out(dtype, shape)
        }
        Op::Clamp { .. } => {
            arity(1)?;
            if !inputs[0].dtype.is_numeric() {
                return Err(err(format!("does not accept {}", inputs[0].dtype)));
            }
            Ok(inputs[0].clone())
        }
        Op::Select => {
            arity(3)?;
            let (c, a, b) = (inputs[0], inputs[1], inputs[2]);
            if c.dtype != DType::Bool {
                return Err(err(format!("condition must be bool, got {}", c.dtype)));
            }
            if a.dtype != b.dtype {
                return Err(err(format!(
                    "operand dtypes differ: {} and {}",
                    a.dtype, b.dtype
                )));
            }
            let s = broadcast(name, &c.shape, &a.shape)?;
            out(a.dtype, broadcast(name, &s, &b.shape)?)
        }
        Op::MulAdd => {
            arity(3)?;
            let (a, b, c) = (inputs[0], inputs[1], inputs[2]);
            if !matches!(a.dtype, DType::F32 | DType::F64) {
                return Err(err(format!("does not accept {}", a.dtype)));
            }
            if a.dtype != b.dtype || a.dtype != c.dtype {
                return Err(err(format!(
                    "operand dtypes differ: {}, {} and {}",
                    a.dtype, b.dtype, c.dtype
                )));
            }
            let s = broadcast(name, &a.shape, &b.shape)?;
            out(a.dtype, broadcast(name, &s, &c.shape)?)
        }
        Op::Conv2d(a) | Op::DepthwiseConv2d(a) => {
            arity(3)?;
            let (x, w, bias) = (inputs[0], inputs[1], inputs[2]);
            let acc = conv_dtypes(name, x, w, bias)?;
            rank(name, "input", x, 4)?;
            rank(name, "weight", w, 4)?;
            let [n, c, h, wd] = a.layout.nchw_dims(&x.shape);
            let (o, i, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
            if matches!(op, Op::Conv2d(_)) {
                if i != c {
                    return Err(err(format!(
                        "input has {c} channels but weight expects {i}"
                    )));
                }
            } else if i != 1 || c == 0 || o % c != 0 {
                return Err(err(format!(
                    "weight {w} does not fit depthwise input with {c} channels"
                )));
            }
            check_bias(name, bias, o)?;
            if a.fma && !(matches!(op, Op::Conv2d(_)) && x.dtype == DType::F32) {
                return Err(err("fma accumulation is defined for f32 CONV2D only".into()));
            }
            nonzero(name, "stride", &a.stride)?;
            nonzero(name, "dilation", &a.dilation)?;
            let oh = window_out(
                name,
                h,
                a.pad[0] + a.pad[1],
                kh,
                a.stride[0],
                a.dilation[0],
                false,
            )?;
            let ow = window_out(
                name,
                wd,
                a.pad[2] + a.pad[3],
                kw,
                a.stride[1],
                a.dilation[1],
                false,
            )?;
            out(acc, a.layout.shape([n, o, oh, ow]))
        }
        Op::TransposeConv2d(a) => {
            arity(3)?;
            let (x, w, bias) = (inputs[0], inputs[1], inputs[2]);
            let acc = conv_dtypes(name, x, w, bias)?;
            rank(name, "input", x, 4)?;
            rank(name, "weight", w, 4)?;
            if w.shape[0] != x.shape[1] {
                return Err(err(format!(
                    "input has {} channels but weight expects {}",
                    x.shape[1], w.shape[0]
                )));
            }
            let o = w.shape[1];
            check_bias(name, bias, o)?;
            nonzero(name, "stride", &a.stride)?;
            nonzero(name, "dilation", &a.dilation)?;
            let full = |i: usize, k: usize, ax: usize| -> Result<usize> {
                let f = a.stride[ax] * i.saturating_sub(1)
                    + a.dilation[ax] * k.saturating_sub(1)
                    + 1
                    + a.out_pad[ax];
                f.checked_sub(a.pad[2 * ax] + a.pad[2 * ax + 1])
                    .filter(|_| i > 0 && k > 0)
                    .ok_or_else(|| err("padding removes the whole output".into()))
            };
            let oh = full(x.shape[2], w.shape[2], 0)?;
            let ow = full(x.shape[3], w.shape[3], 1)?;
            out(acc, vec![x.shape[0], o, oh, ow])
        }
        Op::MatMul(_) => {
            arity(2)?;
            let (a, b) = (inputs[0], inputs[1]);
            rank(name, "a", a, 3)?;
            rank(name, "b", b, 3)?;
            if a.dtype != b.dtype && !(a.dtype.is_int() && b.dtype.is_int()) {
                return Err(err(format!(
                    "operand dtypes differ: {} and {}",
                    a.dtype, b.dtype
                )));
            }
            let acc = accumulator(name, a.dtype)?;
            if a.shape[0] != b.shape[0] || a.shape[2] != b.shape[1] {
                return Err(err(format!("shapes {a} and {b} do not multiply")));
            }
            out(acc, vec![a.shape[0], a.shape[1], b.shape[2]])
        }
        Op::AvgPool2d(p) | Op::MaxPool2d(p) => {
            arity(1)?;
            let x = inputs[0];
            rank(name, "input", x, 4)?;
            let is_avg = matches!(op, Op::AvgPool2d(_));
            if (is_avg && !x.dtype.is_float()) || !x.dtype.is_numeric() {
                return Err(err(format!("does not accept {}", x.dtype)));
            }
            nonzero(name, "kernel", &p.kernel)?;
            nonzero(name, "stride", &p.stride)?;
            nonzero(name, "dilation", &p.dilation)?;
            let [n, c, h, w] = p.layout.nchw_dims(&x.shape);
            let oh = pool_out(name, h, p, 0)?;
            let ow = pool_out(name, w, p, 1)?;
            out(x.dtype, p.layout.shape([n, c, oh, ow]))
        }
        Op::ArgMax { axis } => {
            arity(1)?;
            let x = inputs[0];
            axis_in(name, *axis, x.rank())?;
            if !x.dtype.is_numeric() {
                return Err(err(format!("does not accept {}", x.dtype)));
            }
            if x.shape[*axis] == 0 {
                return Err(err("reduces an empty axis".into()));
            }
            let mut shape = x.shape.clone();
            shape.remove(*axis);
            out(DType::I32, shape)
        }
        Op::Reduce { kind, axis } => {
            arity(1)?;
            let x = inputs[0];
            axis_in(name, *axis, x.rank())?;
            let ok = match kind {
                ReduceOp::All | ReduceOp::Any => x.dtype == DType::Bool,
                _ => x.dtype.is_numeric(),
            };
            if !ok {
                return Err(err(format!("does not accept {}", x.dtype)));
            }
            let mut shape = x.shape.clone();
            shape[*axis] = 1;
            out(x.dtype, shape)
        }
        Op::Reshape { shape } => {
            arity(1)?;
            let t = out(inputs[0].dtype, shape.clone())?;
            if t.num_elements() != inputs[0].num_elements() {
                return Err(err(format!("cannot reshape {} to {shape:?}", inputs[0])));
            }
            Ok(t)
        }
        Op::Transpose { perm } => {
            arity(1)?;
            let x = inputs[0];
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank() {
                return Err(err(format!(
                    "permutation {perm:?} does not match rank {}",
                    x.rank()
                )));
            }
            for &p in perm {
                if p >= x.rank() || std::mem::replace(&mut seen[p], true) {
                    return Err(err(format!("{perm:?} is not a permutation")));
                }
            }
            out(x.dtype, perm.iter().map(|&p| x.shape[p]).collect())
        }
        Op::Concat { axis } => {
            if inputs.is_empty() {
                return Err(err("needs at least one operand".into()));
            }
            let first = inputs[0];
            axis_in(name, *axis, first.rank())?;
            let mut shape = first.shape.clone();
            shape[*axis] = 0;
            for t in inputs {
                let same = t.dtype == first.dtype
                    && t.rank() == first.rank()
                    && (0..t.rank()).all(|d| d == *axis || t.shape[d] == first.shape[d]);
                if !same {
                    return Err(err(format!(
                        "operand {t} does not match {first} off axis {axis}"
                    )));
                }
                shape[*axis] += t.shape[*axis];
            }
            out(first.dtype, shape)
        }
        Op::Slice {
            start,
            size,
            stride,
        } => {
            arity(1)?;
            let x = inputs[0];
            if start.len() != x.rank() || size.len() != x.rank() || stride.len() != x.rank() {
                return Err(err(format!(
                    "start/size/stride must have rank {}",
                    x.rank()
                )));
            }
            for d in 0..x.rank() {
                let last = if size[d] == 0 {
                    Some(0)
                } else {
                    (size[d] - 1)
                        .checked_mul(stride[d])
                        .and_then(|o| o.checked_add(start[d]))
                };
                let inside = match last {
                    Some(l) => size[d] == 0 || l < x.shape[d],
                    None => false,
                };
                if stride[d] == 0 || !inside {
                    return Err(err(format!(
                        "axis {d}: start {} size {} stride {} exceeds dim {}",
                        start[d], size[d], stride[d], x.shape[d]
                    )));
                }
            }
            out(x.dtype, size.clone())
        }
        Op::Pad { pads, mode, .. } => {
            arity(1)?;
            let x = inputs[0];
            if pads.len() != x.rank() {
                return Err(err(format!("pads must have rank {}", x.rank())));
            }
            let mut shape = Vec::with_capacity(x.rank());
            for (d, p) in pads.iter().enumerate() {
                let limit = match mode {
                    PadMode::Constant => usize::MAX,
                    PadMode::Reflect => x.shape[d].saturating_sub(1),
                    PadMode::Edge => {
                        if x.shape[d] == 0 {
                            0
                        } else {
                            usize::MAX
                        }
                    }
                };
                if p[0] > limit || p[1] > limit {
                    return Err(err(format!(
                        "{mode:?} padding {p:?} too large for dim {}",
                        x.shape[d]
                    )));
                }
                shape.push(
                    x.shape[d]
                        .checked_add(p[0])
                        .and_then(|s| s.checked_add(p[1]))
                        .ok_or_else(|| err("padded size overflows".into()))?,
                );
            }
            out(x.dtype, shape)
        }
        Op::Tile { multiples } => {
            arity(1)?;
            let x = inputs[0];
            if multiples.len() != x.rank() {
                return Err(err(format!("multiples must have rank {}", x.rank())));
            }
            let mut shape = Vec::with_capacity(x.rank());
            for (d, &m) in x.shape.iter().zip(multiples) {
                shape.push(
                    d.checked_mul(m)
                        .ok_or_else(|| err("tiled size overflows".into()))?,
                );
            }
            out(x.dtype, shape)
        }
        Op::Reverse { axis } => {
            arity(1)?;
            axis_in(name, *axis, inputs[0].rank())?;
            Ok(inputs[0].clone())
        }
        Op::Gather { axis } => {
            arity(2)?;
            let (x, idx) = (inputs[0], inputs[1]);
            axis_in(name, *axis, x.rank())?;
            index_dtype(name, idx)?;
            let mut shape = x.shape[..*axis].to_vec();
            shape.extend_from_slice(&idx.shape);
            shape.extend_from_slice(&x.shape[axis + 1..]);
            out(x.dtype, shape)
        }
        Op::GatherElements { axis } => {
            arity(2)?;
            let (x, idx) = (inputs[0], inputs[1]);
            axis_in(name, *axis, x.rank())?;
            index_dtype(name, idx)?;
            if idx.rank() != x.rank() {
                return Err(err(format!("indices {idx} must have the rank of data {x}")));
            }
            out(x.dtype, idx.shape.clone())
        }
        Op::Cast { to } => {
            arity(1)?;
            out(*to, inputs[0].shape.clone())
        }
        Op::Rescale(r) => {
            arity(1)?;
            let x = inputs[0];
            if !x.dtype.is_int() || !r.to.is_int() {
                return Err(err(format!(
                    "converts integers only, not {} to {}",
                    x.dtype, r.to
                )));
            }
            if r.multiplier.len() != r.shift.len() || r.multiplier.is_empty() {
                return Err(err(
                    "needs as many multipliers as shifts, at least one".into()
                ));
            }
            if r.shift.iter().any(|&s| !(2..=62).contains(&s)) {
                return Err(err("shifts must lie in 2..=62".into()));
            }
            if r.multiplier.len() > 1 {
                let axis = r
                    .channel_axis
                    .ok_or_else(|| err("per-channel needs an axis".into()))?;
                axis_in(name, axis, x.rank())?;
                if x.shape[axis] != r.multiplier.len() {
                    return Err(err(format!(
                        "{} multipliers for {} channels",
                        r.multiplier.len(),
                        x.shape[axis]
                    )));
                }
            }
            out(r.to, x.shape.clone())
        }
        Op::Table => {
            arity(2)?;
            let (x, t) = (inputs[0], inputs[1]);
            if x.dtype != DType::I8 || t.dtype != DType::I8 || t.shape != [256] {
                return Err(err(format!(
                    "needs i8 input and an i8[256] table, got {x} and {t}"
                )));
            }
            Ok(x.clone())
        }
        Op::Resize(r) => {
            arity(1)?;
            let x = inputs[0];
            if !x.dtype.is_numeric() {
                return Err(err(format!("does not accept {}", x.dtype)));
            }
            if r.size.len() != x.rank() || r.scales.len() != x.rank() {
                return Err(err(format!("size and scales must have rank {}", x.rank())));
            }
            if r.mode != ResizeMode::Nearest && !x.dtype.is_float() {
                return Err(err(format!("{:?} interpolation needs floats", r.mode)));
            }
            if r.size.iter().zip(&x.shape).any(|(&o, &i)| o > 0 && i == 0) {
                return Err(err("cannot resize an empty axis".into()));
            }
            out(x.dtype, r.size.clone())
        }
    }
}

/// Numpy broadcast of two shapes of equal rank (the TOSA rule).
pub fn broadcast(op: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    if a.len() != b.len() {
        return Err(IrError::ty(
            op,
            format!("operand ranks differ: {a:?} and {b:?}"),
        ));
    }
    a.iter()
        .zip(b)
        .map(|(&x, &y)| match (x, y) {
            _ if x == y => Ok(x),
            (1, _) => Ok(y),
            (_, 1) => Ok(x),
            _ => Err(IrError::ty(
                op,
                format!("shapes {a:?} and {b:?} do not broadcast"),
            )),
        })
        .collect()
}

fn rank(op: &str, what: &str, t: &TensorType, r: usize) -> Result<()> {
    if t.rank() == r {
        Ok(())
    } else {
        Err(IrError::ty(
            op,
            format!("{what} must have rank {r}, got {t}"),
        ))
    }
}

fn axis_in(op: &str, axis: usize, rank: usize) -> Result<()> {
    if axis < rank {
        Ok(())
    } else {
        Err(IrError::ty(
            op,
            format!("axis {axis} out of range for rank {rank}"),
        ))
    }
}

fn nonzero(op: &str, what: &str, v: &[usize]) -> Result<()> {
    if v.contains(&0) {
        Err(IrError::ty(op, format!("{what} {v:?} must be positive")))
    } else {
        Ok(())
    }
}

fn index_dtype(op: &str, t: &TensorType) -> Result<()> {
    if matches!(t.dtype, DType::I32 | DType::I64) {
        Ok(())
    } else {
        Err(IrError::ty(
            op,
            format!("indices must be i32 or i64, got {}", t.dtype),
        ))
    }
}

fn accumulator(op: &str, dtype: DType) -> Result<DType> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Ok(dtype),
        DType::I8 | DType::U8 | DType::I16 => Ok(DType::I32),
        other => Err(IrError::ty(op, format!("does not accept {other}"))),
    }
}

fn conv_dtypes(op: &str, x: &TensorType, w: &TensorType, bias: &TensorType) -> Result<DType> {
    if x.dtype == DType::F64 {
        return Err(IrError::ty(op, "does not accept f64"));
    }
    let acc = accumulator(op, x.dtype)?;
    let weight_ok = if acc == DType::I32 {
        w.dtype.is_int() && w.dtype != DType::I64 && w.dtype != DType::I32
    } else {
        w.dtype == x.dtype
    };
    if !weight_ok || bias.dtype != acc {
        return Err(IrError::ty(
            op,
            format!(
                "input {}, weight {} and bias {} do not agree",
                x.dtype, w.dtype, bias.dtype
            ),
        ));
    }
    Ok(acc)
}

fn check_bias(op: &str, bias: &TensorType, channels: usize) -> Result<()> {
    if bias.rank() == 1 && (bias.shape[0] == channels || bias.shape[0] == 1) {
        Ok(())
    } else {
        Err(IrError::ty(
            op,
            format!("bias {bias} does not match {channels} output channels"),
        ))
    }
}

/// Output length of a sliding window over `input` padded by `pad` in total.
fn window_out(
    op: &str,
    input: usize,
    pad: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    ceil: bool,
) -> Result<usize> {
    let span = dilation * (kernel.max(1) - 1) + 1;
    let padded = input + pad;
    if kernel == 0 || padded < span {
        return Err(IrError::ty(
            op,
            format!("window of {kernel} (dilation {dilation}) exceeds padded input {padded}"),
        ));
    }
    let steps = padded - span;
    Ok(if ceil {
        steps.div_ceil(stride)
    } else {
        steps / stride
    } + 1)
}

fn pool_out(op: &str, input: usize, p: &PoolAttrs, axis: usize) -> Result<usize> {
    let (before, after) = (p.pad[2 * axis], p.pad[2 * axis + 1]);
    let (k, s, d) = (p.kernel[axis], p.stride[axis], p.dilation[axis]);
    let mut n = window_out(op, input, before + after, k, s, d, p.ceil_mode)?;
    // A window must start inside the input or the leading padding (ONNX/PyTorch rule).
    if p.ceil_mode && (n - 1) * s >= input + before {
        n -= 1;
    }
    Ok(n)
}
