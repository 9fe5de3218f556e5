//! Elementwise definitions: identity, unary, binary, clamp, select and cast, one stage each
//! (integer `pow` adds squaring stages).
//!
//! Invariant: each stage computes `crate::elementwise`'s result for the element at its index,
//! operands broadcast by indexing size-1 dims at 0. TIR has no bitwise or shift operators, so
//! those are built exactly from `i64` floor division and modulo by powers of two (see
//! [`super::expr::bitwise`]); integer division and modulo by zero give 0 through a `select`
//! that never evaluates the division.

use super::expr::{self as ex, bload, c, constant, eq, gt, ne, num, round};
use super::{unsupported, Builder, ComputeError, Operand};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{DType, Op, TensorType};
use kiln_tir::{BinOp, BufferId, Expr, Intrinsic};

pub(crate) fn define(
    b: &mut Builder,
    op: &Op,
    xs: &[Operand],
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let shape = out.shape.clone();
    match op {
        Op::Identity => {
            let x = &xs[0];
            b.stage("copy", &shape, |ax| bload(x.id, &x.ty.shape, ax))
        }
        Op::Unary(u) => {
            let x = &xs[0];
            let dt = x.ty.dtype;
            b.stage(kiln_ir::op::unary_name(*u), &shape, |ax| {
                unary(*u, dt, bload(x.id, &x.ty.shape, ax))
            })
        }
        Op::Binary(BinaryOp::Pow) if xs[0].ty.dtype.is_int() => int_pow(b, &xs[0], &xs[1], out),
        Op::Binary(bo) => {
            let (x, y) = (&xs[0], &xs[1]);
            let dt = x.ty.dtype;
            let id = b.stage(kiln_ir::op::binary_name(*bo), &shape, |ax| {
                binary(
                    *bo,
                    dt,
                    bload(x.id, &x.ty.shape, ax),
                    bload(y.id, &y.ty.shape, ax),
                )
            })?;
            if matches!(
                bo,
                BinaryOp::BitwiseAnd | BinaryOp::BitwiseOr | BinaryOp::BitwiseXor
            ) {
                b.keep_stage(id);
            }
            Ok(id)
        }
        Op::Clamp { min, max } => {
            let x = &xs[0];
            let dt = x.ty.dtype;
            let (lo, hi) = (constant(min.0, dt), constant(max.0, dt));
            b.stage("clamp", &shape, |ax| {
                let v = bload(x.id, &x.ty.shape, ax);
                Expr::select(
                    Expr::lt(v.clone(), lo.clone()),
                    lo,
                    Expr::select(gt(v.clone(), hi.clone()), hi, v),
                )
            })
        }
        Op::Select => {
            let (k, x, y) = (&xs[0], &xs[1], &xs[2]);
            b.stage("select", &shape, |ax| {
                Expr::select(
                    bload(k.id, &k.ty.shape, ax),
                    bload(x.id, &x.ty.shape, ax),
                    bload(y.id, &y.ty.shape, ax),
                )
            })
        }
        Op::MulAdd => {
            let (x, y, z) = (&xs[0], &xs[1], &xs[2]);
            b.stage("mul_add", &shape, |ax| {
                Expr::call(
                    Intrinsic::Fma,
                    vec![
                        bload(x.id, &x.ty.shape, ax),
                        bload(y.id, &y.ty.shape, ax),
                        bload(z.id, &z.ty.shape, ax),
                    ],
                )
            })
        }
        Op::Cast { to } => {
            let x = &xs[0];
            b.stage("cast", &shape, |ax| {
                Expr::cast(*to, bload(x.id, &x.ty.shape, ax))
            })
        }
        other => Err(unsupported(other, "not an elementwise op")),
    }
}

fn call(f: Intrinsic, x: Expr) -> Expr {
    Expr::call(f, vec![x])
}

/// `op(x)` for `x` of dtype `dt` (the checks of `infer_type` already passed).
pub(crate) fn unary(op: UnaryOp, dt: DType, x: Expr) -> Expr {
    let float = dt.is_float();
    let r = |e: Expr| round(e, dt);
    match op {
        UnaryOp::Abs => r(call(Intrinsic::Abs, x)),
        UnaryOp::Negate if float => r(x * num(-1, dt)),
        UnaryOp::Negate => num(0, dt) - x,
        UnaryOp::Exp => r(call(Intrinsic::Exp, x)),
        UnaryOp::Log => r(call(Intrinsic::Log, x)),
        UnaryOp::Reciprocal => r(num(1, dt) / x),
        UnaryOp::Rsqrt => r(call(Intrinsic::Rsqrt, x)),
        UnaryOp::Sqrt => r(call(Intrinsic::Sqrt, x)),
        UnaryOp::Floor => r(call(Intrinsic::Floor, x)),
        UnaryOp::Ceil => r(call(Intrinsic::Ceil, x)),
        UnaryOp::Round => r(call(Intrinsic::Round, x)),
        UnaryOp::Sin => r(call(Intrinsic::Sin, x)),
        UnaryOp::Cos => r(call(Intrinsic::Cos, x)),
        UnaryOp::Erf => r(call(Intrinsic::Erf, x)),
        UnaryOp::Sigmoid => r(call(Intrinsic::Sigmoid, x)),
        UnaryOp::Tanh => r(call(Intrinsic::Tanh, x)),
        UnaryOp::Sign => {
            let s = Expr::select(
                gt(x.clone(), num(0, dt)),
                num(1, dt),
                Expr::select(Expr::lt(x.clone(), num(0, dt)), num(-1, dt), num(0, dt)),
            );
            if float {
                Expr::select(ne(x.clone(), x.clone()), x, s)
            } else {
                s
            }
        }
        UnaryOp::LogicalNot => Expr::not(x),
        // !x == -1 - x in two's complement, for every width.
        UnaryOp::BitwiseNot => Expr::int_of(-1, dt) - x,
        UnaryOp::IsNan => ne(x.clone(), x),
        UnaryOp::IsInf => eq(
            call(Intrinsic::Abs, x),
            Expr::Float {
                value: f64::INFINITY,
                dtype: dt,
            },
        ),
    }
}

/// `op(x, y)` for operands of dtype `dt` (integer `pow` is handled by [`int_pow`]).
pub(crate) fn binary(op: BinaryOp, dt: DType, x: Expr, y: Expr) -> Expr {
    let float = dt.is_float();
    let r = |e: Expr| round(e, dt);
    let zero = num(0, dt);
    match op {
        BinaryOp::Add => r(x + y),
        BinaryOp::Sub => r(x - y),
        BinaryOp::Mul => r(x * y),
        BinaryOp::Div if float => r(x / y),
        BinaryOp::Div => Expr::select(eq(y.clone(), zero.clone()), zero, x / y),
        BinaryOp::Mod if float => r(Expr::binary(BinOp::Rem, x, y)),
        BinaryOp::Mod => Expr::select(eq(y.clone(), zero.clone()), zero, Expr::floormod(x, y)),
        BinaryOp::Pow => r(Expr::call(Intrinsic::Pow, vec![x, y])),
        BinaryOp::Maximum => Expr::max(x, y),
        BinaryOp::Minimum => Expr::min(x, y),
        BinaryOp::Equal => eq(x, y),
        BinaryOp::Greater => gt(x, y),
        BinaryOp::GreaterEqual => Expr::ge(x, y),
        BinaryOp::LogicalAnd => Expr::and(x, y),
        BinaryOp::LogicalOr => Expr::or(x, y),
        BinaryOp::LogicalXor => ne(x, y),
        BinaryOp::BitwiseAnd | BinaryOp::BitwiseOr | BinaryOp::BitwiseXor => {
            let (a, b) = (Expr::cast(DType::I64, x), Expr::cast(DType::I64, y));
            let w = ex::bits(dt);
            let v = match op {
                BinaryOp::BitwiseAnd => ex::bitwise(&a, &b, w, |p, q| p * q),
                BinaryOp::BitwiseOr => ex::bitwise(&a, &b, w, |p, q| p.clone() + q.clone() - p * q),
                _ => ex::bitwise(&a, &b, w, |p, q| Expr::floormod(p + q, c(2))),
            };
            Expr::cast(dt, v)
        }
        BinaryOp::LogicalLeftShift => {
            // The amount is the operand's unsigned bit pattern: negative means huge.
            let w = ex::bits(dt) as i64;
            let k = Expr::cast(DType::I64, y);
            let ok = ex::in_range(&k, w as usize);
            let shifted = x * Expr::cast(dt, ex::pow2(&k));
            Expr::select(ok, shifted, zero)
        }
        BinaryOp::LogicalRightShift => {
            let w = ex::bits(dt);
            let k = Expr::cast(DType::I64, y);
            let a = Expr::cast(DType::I64, x);
            let ok = ex::in_range(&k, w as usize);
            let v = if w < 64 {
                // The unsigned pattern fits in i64: shift it as a non-negative number.
                let u = Expr::select(
                    Expr::lt(a.clone(), c(0)),
                    a.clone() + c(1i64 << w),
                    a.clone(),
                );
                Expr::floordiv(u, ex::pow2(&k))
            } else {
                // u >> 1 = floor(a / 2) + 2^63 for negative a (fits), then an arithmetic
                // shift of the non-negative result by k - 1.
                let half = Expr::floordiv(a.clone(), c(2));
                let u1 = Expr::select(Expr::lt(a.clone(), c(0)), half.clone() - c(i64::MIN), half);
                let km1 = Expr::max(k.clone() - c(1), c(0));
                Expr::select(eq(k.clone(), c(0)), a, Expr::floordiv(u1, ex::pow2(&km1)))
            };
            Expr::select(ok, Expr::cast(dt, v), zero)
        }
        BinaryOp::ArithmeticRightShift => {
            let w = ex::bits(dt).min(63) as i64;
            let k = Expr::cast(DType::I64, y);
            let a = Expr::cast(DType::I64, x);
            let ok = ex::in_range(&k, w as usize);
            let sat = Expr::select(Expr::lt(a.clone(), c(0)), c(-1), c(0));
            let v = Expr::select(ok, Expr::floordiv(a, ex::pow2(&k)), sat);
            Expr::cast(dt, v)
        }
    }
}

/// Integer `pow` with wrapping: square-and-multiply over the exponent's bits, one stage per
/// squaring (kept, so inlining never duplicates them); negative exponents give `1/a^-e`
/// truncated.
fn int_pow(
    b: &mut Builder,
    x: &Operand,
    y: &Operand,
    out: &TensorType,
) -> Result<BufferId, ComputeError> {
    let dt = x.ty.dtype;
    let shape = out.shape.clone();
    let nbits = if dt == DType::U8 { 8 } else { ex::bits(dt) - 1 };
    let mut squares = vec![b.stage("pow_base", &shape, |ax| bload(x.id, &x.ty.shape, ax))?];
    b.keep_stage(squares[0]);
    for _ in 1..nbits {
        let prev = squares[squares.len() - 1];
        let s = b.stage("pow_sq", &shape, |ax| {
            Expr::load(prev, ax.to_vec()) * Expr::load(prev, ax.to_vec())
        })?;
        b.keep_stage(s);
        squares.push(s);
    }
    b.stage("pow", &shape, |ax| {
        let e = Expr::cast(DType::I64, bload(y.id, &y.ty.shape, ax));
        let base = Expr::load(squares[0], ax.to_vec());
        let factors = squares
            .iter()
            .enumerate()
            .map(|(j, &s)| {
                Expr::select(
                    eq(ex::bit(&e, j as u32), c(1)),
                    Expr::load(s, ax.to_vec()),
                    num(1, dt),
                )
            })
            .collect();
        let positive = ex::balanced_product(factors, num(1, dt));
        let negative = if dt == DType::U8 {
            num(0, dt)
        } else {
            Expr::select(
                eq(base.clone(), num(1, dt)),
                num(1, dt),
                Expr::select(
                    eq(base, num(-1, dt)),
                    Expr::select(
                        eq(Expr::floormod(e.clone(), c(2)), c(0)),
                        num(1, dt),
                        num(-1, dt),
                    ),
                    num(0, dt),
                ),
            )
        };
        Expr::select(Expr::lt(e, c(0)), negative, positive)
    })
}
