//! Elementwise arithmetic, comparison, logical and bitwise ops, unary math and Where.
//!
//! Invariant: operands are rank-aligned by prepending size-1 dims (numpy broadcasting), and each
//! ONNX op maps to the IR op with the same elementwise semantics (Less swaps operands of Greater,
//! integer fmod is built from truncating division).

use crate::builder::{invalid, unsupported, Builder, NResult};
use crate::node::NodeCx;
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{DType, ValueId};

pub(super) fn binary(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let (x, y) = (cx.input(0)?, cx.input(1)?);
    let op = match cx.op_type {
        "Add" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "Div" => BinaryOp::Div,
        "Pow" => {
            // The exponent may have another dtype (opset 12+); compute in the base's dtype.
            let y = b.cast(y, b.dtype(x))?;
            return b.binary(BinaryOp::Pow, x, y);
        }
        "Mod" => return modulo(b, cx, x, y),
        "Equal" => BinaryOp::Equal,
        "Greater" => BinaryOp::Greater,
        "GreaterOrEqual" => BinaryOp::GreaterEqual,
        "Less" => return b.binary(BinaryOp::Greater, y, x),
        "LessOrEqual" => return b.binary(BinaryOp::GreaterEqual, y, x),
        "And" => BinaryOp::LogicalAnd,
        "Or" => BinaryOp::LogicalOr,
        "Xor" => BinaryOp::LogicalXor,
        "BitwiseAnd" => BinaryOp::BitwiseAnd,
        "BitwiseOr" => BinaryOp::BitwiseOr,
        "BitwiseXor" => BinaryOp::BitwiseXor,
        "BitShift" => match cx.string("direction", "")?.as_str() {
            "LEFT" => BinaryOp::LogicalLeftShift,
            "RIGHT" if matches!(b.dtype(x), DType::I8 | DType::I16 | DType::I32 | DType::I64) => {
                BinaryOp::ArithmeticRightShift
            }
            "RIGHT" => BinaryOp::LogicalRightShift,
            d => return invalid(format!("direction must be LEFT or RIGHT, got `{d}`")),
        },
        other => return unsupported(format!("no binary mapping for {other}")),
    };
    b.binary(op, x, y)
}

fn modulo(b: &mut Builder, cx: &NodeCx, x: ValueId, y: ValueId) -> NResult<ValueId> {
    let fmod = cx.flag("fmod", false)?;
    let dt = b.dtype(x);
    if dt.is_float() {
        let r = b.binary(BinaryOp::Mod, x, y)?;
        if fmod {
            return Ok(r);
        }
        // Python-style remainder: move a non-zero fmod result to the divisor's sign.
        let zero = b.scalar(dt, 0.0);
        let r_neg = b.binary(BinaryOp::Greater, zero, r)?;
        let y_neg = b.binary(BinaryOp::Greater, zero, y)?;
        let r_zero = b.binary(BinaryOp::Equal, r, zero)?;
        let differ = b.binary(BinaryOp::LogicalXor, r_neg, y_neg)?;
        let nonzero = b.unary(UnaryOp::LogicalNot, r_zero)?;
        let fix = b.binary(BinaryOp::LogicalAnd, differ, nonzero)?;
        let shifted = b.binary(BinaryOp::Add, r, y)?;
        return b.select(fix, shifted, r);
    }
    if !fmod {
        return b.binary(BinaryOp::Mod, x, y);
    }
    // C fmod on integers: x - trunc(x / y) * y (IR integer division truncates).
    let q = b.binary(BinaryOp::Div, x, y)?;
    let p = b.binary(BinaryOp::Mul, q, y)?;
    b.binary(BinaryOp::Sub, x, p)
}

pub(super) fn variadic(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let vs = cx.present_inputs();
    let (&first, rest) = match vs.split_first() {
        Some(s) => s,
        None => return invalid("needs at least one input"),
    };
    let op = match cx.op_type {
        "Max" => BinaryOp::Maximum,
        "Min" => BinaryOp::Minimum,
        _ => BinaryOp::Add,
    };
    let mut acc = first;
    for &v in rest {
        acc = b.binary(op, acc, v)?;
    }
    if vs.len() == 1 {
        // A single operand still yields a fresh value so the output can be named.
        acc = b.add(kiln_ir::Op::Identity, &[acc])?;
    }
    if cx.op_type == "Mean" {
        acc = b.binary_scalar(BinaryOp::Div, acc, vs.len() as f64)?;
    }
    Ok(acc)
}

pub(super) fn unary(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    let x = cx.input(0)?;
    let u = match cx.op_type {
        "Abs" => UnaryOp::Abs,
        "Neg" => UnaryOp::Negate,
        "Exp" => UnaryOp::Exp,
        "Log" => UnaryOp::Log,
        "Reciprocal" => UnaryOp::Reciprocal,
        "Sqrt" => UnaryOp::Sqrt,
        "Floor" => UnaryOp::Floor,
        "Ceil" => UnaryOp::Ceil,
        "Round" => UnaryOp::Round,
        "Sin" => UnaryOp::Sin,
        "Cos" => UnaryOp::Cos,
        "Tan" => {
            let s = b.unary(UnaryOp::Sin, x)?;
            let c = b.unary(UnaryOp::Cos, x)?;
            return b.binary(BinaryOp::Div, s, c);
        }
        "Sinh" | "Cosh" => {
            // (e^x -/+ e^-x) / 2
            let e = b.unary(UnaryOp::Exp, x)?;
            let n = b.unary(UnaryOp::Negate, x)?;
            let en = b.unary(UnaryOp::Exp, n)?;
            let op = if cx.op_type == "Sinh" {
                BinaryOp::Sub
            } else {
                BinaryOp::Add
            };
            let s = b.binary(op, e, en)?;
            return b.binary_scalar(BinaryOp::Mul, s, 0.5);
        }
        "Asinh" | "Acosh" => {
            // log(x + sqrt(x^2 +/- 1))
            let sq = b.binary(BinaryOp::Mul, x, x)?;
            let off = if cx.op_type == "Asinh" { 1.0 } else { -1.0 };
            let sq = b.binary_scalar(BinaryOp::Add, sq, off)?;
            let rt = b.unary(UnaryOp::Sqrt, sq)?;
            let s = b.binary(BinaryOp::Add, x, rt)?;
            return b.unary(UnaryOp::Log, s);
        }
        "Atanh" => {
            // log((1 + x) / (1 - x)) / 2
            let one = b.scalar(b.dtype(x), 1.0);
            let p = b.binary(BinaryOp::Add, one, x)?;
            let m = b.binary(BinaryOp::Sub, one, x)?;
            let q = b.binary(BinaryOp::Div, p, m)?;
            let l = b.unary(UnaryOp::Log, q)?;
            return b.binary_scalar(BinaryOp::Mul, l, 0.5);
        }
        "Erf" => UnaryOp::Erf,
        "Sigmoid" => UnaryOp::Sigmoid,
        "Tanh" => UnaryOp::Tanh,
        "Sign" => UnaryOp::Sign,
        "IsNaN" => UnaryOp::IsNan,
        "IsInf" => return is_inf(b, cx, x),
        "Not" => UnaryOp::LogicalNot,
        "BitwiseNot" => UnaryOp::BitwiseNot,
        other => return unsupported(format!("no unary mapping for {other}")),
    };
    b.unary(u, x)
}

fn is_inf(b: &mut Builder, cx: &NodeCx, x: ValueId) -> NResult<ValueId> {
    let neg = cx.flag("detect_negative", true)?;
    let pos = cx.flag("detect_positive", true)?;
    let inf = b.unary(UnaryOp::IsInf, x)?;
    if neg && pos {
        return Ok(inf);
    }
    if !neg && !pos {
        let f = b.scalar(DType::Bool, 0.0);
        return b.binary(BinaryOp::LogicalAnd, inf, f);
    }
    let zero = b.scalar(b.dtype(x), 0.0);
    let side = if pos {
        b.binary(BinaryOp::Greater, x, zero)?
    } else {
        b.binary(BinaryOp::Greater, zero, x)?
    };
    b.binary(BinaryOp::LogicalAnd, inf, side)
}

pub(super) fn where_(b: &mut Builder, cx: &NodeCx) -> NResult<ValueId> {
    b.select(cx.input(0)?, cx.input(1)?, cx.input(2)?)
}
