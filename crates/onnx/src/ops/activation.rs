//! Activation functions and Clip, composed from IR elementwise ops.
//!
//! Invariant: each activation is the ONNX formula with the ONNX attribute defaults, built in the
//! input's dtype with scalar constants broadcast by rank alignment.

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::ValueId;

pub(super) fn clip(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    if cx.opset < 11 {
        let min = cx.float("min", f32::MIN)? as f64;
        let max = cx.float("max", f32::MAX)? as f64;
        return b.clamp(x, min, max);
    }
    let bound = |b: &mut Builder, i: usize| -> NResult<Option<Result<f64, ValueId>>> {
        match cx.opt_input(i) {
            None => Ok(None),
            Some(v) => match b.const_floats(v) {
                Some(vals) if vals.len() == 1 => Ok(Some(Ok(vals[0]))),
                Some(vals) => invalid(format!(
                    "bound {i} must be a scalar, has {} elements",
                    vals.len()
                )),
                None => Ok(Some(Err(v))),
            },
        }
    };
    let lo = bound(b, 1)?;
    let hi = bound(b, 2)?;
    let mut y = x;
    let (mut cmin, mut cmax) = (f64::NEG_INFINITY, f64::INFINITY);
    match lo {
        Some(Ok(v)) => cmin = v,
        Some(Err(v)) => y = b.binary(BinaryOp::Maximum, y, v)?,
        None => {}
    }
    match hi {
        Some(Ok(v)) => cmax = v,
        Some(Err(v)) => y = b.binary(BinaryOp::Minimum, y, v)?,
        None => {}
    }
    if cmin > f64::NEG_INFINITY || cmax < f64::INFINITY || y == x {
        if cmin > cmax {
            // ONNX: min > max sets every element to max.
            y = b.clamp(y, cmax, cmax)?;
        } else {
            y = b.clamp(y, cmin, cmax)?;
        }
    }
    Ok(y)
}

pub(super) fn activation(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let dt = b.dtype(x);
    if cx.op_type != "Relu" && cx.op_type != "PRelu" && !dt.is_float() {
        return unsupported(format!("{} of {dt}", cx.op_type));
    }
    let zero = b.scalar(dt, 0.0);
    match cx.op_type {
        "Relu" => b.clamp(x, 0.0, f64::INFINITY),
        "LeakyRelu" => {
            let alpha = cx.float("alpha", 0.01)? as f64;
            let neg = b.binary_scalar(BinaryOp::Mul, x, alpha)?;
            let is_neg = b.binary(BinaryOp::Greater, zero, x)?;
            b.select(is_neg, neg, x)
        }
        "PRelu" => {
            let slope = cx.input(1)?;
            let neg = b.binary(BinaryOp::Mul, x, slope)?;
            let is_neg = b.binary(BinaryOp::Greater, zero, x)?;
            b.select(is_neg, neg, x)
        }
        "Elu" => {
            let alpha = cx.float("alpha", 1.0)? as f64;
            let neg = expm1_scaled(b, x, alpha)?;
            let is_neg = b.binary(BinaryOp::Greater, zero, x)?;
            b.select(is_neg, neg, x)
        }
        "Selu" => {
            let alpha = cx.float("alpha", 1.673_263_2)? as f64;
            let gamma = cx.float("gamma", 1.050_701)? as f64;
            let neg = expm1_scaled(b, x, alpha)?;
            let is_pos = b.binary(BinaryOp::Greater, x, zero)?;
            let y = b.select(is_pos, x, neg)?;
            b.binary_scalar(BinaryOp::Mul, y, gamma)
        }
        "Celu" => {
            let alpha = cx.float("alpha", 1.0)? as f64;
            let scaled = b.binary_scalar(BinaryOp::Div, x, alpha)?;
            let e = expm1_scaled(b, scaled, alpha)?;
            let neg = b.binary(BinaryOp::Minimum, e, zero)?;
            let pos = b.binary(BinaryOp::Maximum, x, zero)?;
            b.binary(BinaryOp::Add, pos, neg)
        }
        "Softplus" => softplus(b, x),
        "Softsign" => {
            let a = b.unary(UnaryOp::Abs, x)?;
            let d = b.binary_scalar(BinaryOp::Add, a, 1.0)?;
            b.binary(BinaryOp::Div, x, d)
        }
        "HardSigmoid" => {
            let alpha = cx.float("alpha", 0.2)? as f64;
            let beta = cx.float("beta", 0.5)? as f64;
            hard_sigmoid(b, x, alpha, beta)
        }
        "HardSwish" => {
            let h = hard_sigmoid(b, x, 1.0 / 6.0, 0.5)?;
            b.binary(BinaryOp::Mul, x, h)
        }
        "Gelu" => gelu(b, cx, x),
        "Mish" => {
            let sp = softplus(b, x)?;
            let t = b.unary(UnaryOp::Tanh, sp)?;
            b.binary(BinaryOp::Mul, x, t)
        }
        "ThresholdedRelu" => {
            let alpha = cx.float("alpha", 1.0)? as f64;
            let a = b.scalar(dt, alpha);
            let keep = b.binary(BinaryOp::Greater, x, a)?;
            b.select(keep, x, zero)
        }
        "Shrink" => {
            let lambd = cx.float("lambd", 0.5)? as f64;
            let bias = cx.float("bias", 0.0)? as f64;
            let lo = b.scalar(dt, -lambd);
            let hi = b.scalar(dt, lambd);
            let below = b.binary(BinaryOp::Greater, lo, x)?;
            let above = b.binary(BinaryOp::Greater, x, hi)?;
            let plus = b.binary_scalar(BinaryOp::Add, x, bias)?;
            let minus = b.binary_scalar(BinaryOp::Sub, x, bias)?;
            let y = b.select(above, minus, zero)?;
            b.select(below, plus, y)
        }
        "Swish" => {
            let alpha = cx.float("alpha", 1.0)? as f64;
            let ax = b.binary_scalar(BinaryOp::Mul, x, alpha)?;
            let s = b.unary(UnaryOp::Sigmoid, ax)?;
            b.binary(BinaryOp::Mul, x, s)
        }
        other => unsupported(format!("no activation mapping for {other}")),
    }
}

/// `alpha * (exp(x) - 1)`.
fn expm1_scaled(b: &mut Builder, x: ValueId, alpha: f64) -> NResult<ValueId> {
    let e = b.unary(UnaryOp::Exp, x)?;
    let e = b.binary_scalar(BinaryOp::Sub, e, 1.0)?;
    b.binary_scalar(BinaryOp::Mul, e, alpha)
}

/// `log(exp(x) + 1)`.
fn softplus(b: &mut Builder, x: ValueId) -> NResult<ValueId> {
    let e = b.unary(UnaryOp::Exp, x)?;
    let e = b.binary_scalar(BinaryOp::Add, e, 1.0)?;
    b.unary(UnaryOp::Log, e)
}

/// `clamp(alpha * x + beta, 0, 1)`.
fn hard_sigmoid(b: &mut Builder, x: ValueId, alpha: f64, beta: f64) -> NResult<ValueId> {
    let y = b.binary_scalar(BinaryOp::Mul, x, alpha)?;
    let y = b.binary_scalar(BinaryOp::Add, y, beta)?;
    b.clamp(y, 0.0, 1.0)
}

fn gelu(b: &mut Builder, cx: &NodeCx, x: ValueId) -> NResult<ValueId> {
    let inner = match cx.string("approximate", "none")?.as_str() {
        "none" => {
            let s = b.binary_scalar(BinaryOp::Mul, x, std::f64::consts::FRAC_1_SQRT_2)?;
            b.unary(UnaryOp::Erf, s)?
        }
        "tanh" => {
            let x2 = b.binary(BinaryOp::Mul, x, x)?;
            let x3 = b.binary(BinaryOp::Mul, x2, x)?;
            let c = b.binary_scalar(BinaryOp::Mul, x3, 0.044715)?;
            let s = b.binary(BinaryOp::Add, x, c)?;
            let s = b.binary_scalar(BinaryOp::Mul, s, (2.0 / std::f64::consts::PI).sqrt())?;
            b.unary(UnaryOp::Tanh, s)?
        }
        other => {
            return invalid(format!(
                "approximate must be `none` or `tanh`, got `{other}`"
            ))
        }
    };
    let one = b.binary_scalar(BinaryOp::Add, inner, 1.0)?;
    let h = b.binary_scalar(BinaryOp::Mul, x, 0.5)?;
    b.binary(BinaryOp::Mul, h, one)
}

/// SwiGLU: `a * sigmoid(alpha * a) * b` over equal shapes (`alpha` default 1).
pub(super) fn swiglu(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (a, g) = (cx.input(0)?, cx.input(1)?);
    if b.shape(a) != b.shape(g) || b.dtype(a) != b.dtype(g) {
        return invalid("SwiGLU's A and B must have one shape and dtype (no broadcasting)");
    }
    if !b.dtype(a).is_float() {
        return unsupported(format!("SwiGLU of {}", b.dtype(a)));
    }
    let alpha = cx.float("alpha", 1.0)? as f64;
    let scaled = if alpha == 1.0 {
        a
    } else {
        b.binary_scalar(BinaryOp::Mul, a, alpha)?
    };
    let gate = b.unary(UnaryOp::Sigmoid, scaled)?;
    let swish = b.binary(BinaryOp::Mul, a, gate)?;
    b.binary(BinaryOp::Mul, swish, g)
}
