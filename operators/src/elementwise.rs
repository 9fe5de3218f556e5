//! Elementwise ops: unary, binary (numpy broadcast over equal ranks), clamp, select and cast.
//!
//! Invariant: float math is done in f32 (transcendentals in f64, rounded once to f32; computed
//! as f64 and rounded, which for the basic operations is the correctly rounded f32 result); f16
//! and bf16 are widened to f32 and rounded back to nearest even; f64 is computed in f64.
//! Integer arithmetic wraps (numpy semantics; unsigned types divide and compare as unsigned),
//! integer division and modulo by zero give 0, and shifts are logical on the unsigned bit pattern
//! with amounts of at least the bit width giving 0. No input that passed `infer_type` panics.

use crate::util::{broadcast_data, broadcast_vec, fail_named};
use crate::OpError;
use half::{bf16, f16};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{dispatch_data, DType, Element, Tensor, TensorData};

/// Integer element types with the wrapping semantics the elementwise ops need. Arithmetic is
/// done on `i128`, which holds every value of every integer dtype (u64 included).
trait Int: Element + Ord {
    const BITS: u32;
    fn from_i128_wrapping(v: i128) -> Self;
    fn as_i128(self) -> i128;
    fn bits(self) -> u64;
    fn from_bits(b: u64) -> Self;
}

macro_rules! impl_int {
    ($t:ty, $u:ty) => {
        impl Int for $t {
            const BITS: u32 = <$t>::BITS;
            fn from_i128_wrapping(v: i128) -> Self {
                v as $t
            }
            fn as_i128(self) -> i128 {
                self as i128
            }
            fn bits(self) -> u64 {
                (self as $u) as u64
            }
            fn from_bits(b: u64) -> Self {
                (b as $u) as $t
            }
        }
    };
}
impl_int!(i8, u8);
impl_int!(u8, u8);
impl_int!(i16, u16);
impl_int!(u16, u16);
impl_int!(i32, u32);
impl_int!(u32, u32);
impl_int!(i64, u64);
impl_int!(u64, u64);

/// The error function, accurate to 1e-10 absolute (far below f32 resolution; the series
/// cancels a little near 4): its Maclaurin series in f64 below |x| = 4,
/// where f32 `erf` is not yet 1, and +/-1 beyond (erfc(4) < 2^-25).
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x.abs() >= 4.0 {
        return x.signum();
    }
    // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
    let x2 = x * x;
    let mut term = x; // (-1)^n x^(2n+1) / n!
    let mut sum = x;
    for n in 1..200 {
        term *= -x2 / n as f64;
        let t = term / (2 * n + 1) as f64;
        sum += t;
        if t.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    sum * std::f64::consts::FRAC_2_SQRT_PI
}

/// A float unary op in f64 (rounded by the caller to the operand's dtype).
fn float_unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Abs => x.abs(),
        UnaryOp::Negate => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Erf => erf(x),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sign => {
            if x.is_nan() {
                x
            } else if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        // Bool-valued or non-float ops never reach here (see `unary`).
        UnaryOp::LogicalNot | UnaryOp::BitwiseNot | UnaryOp::IsNan | UnaryOp::IsInf => x,
    }
}

fn int_unary<T: Int>(op: UnaryOp, v: &[T]) -> Vec<T> {
    v.iter()
        .map(|&x| {
            let i = x.as_i128();
            match op {
                UnaryOp::Abs => T::from_i128_wrapping(i.abs()),
                UnaryOp::Negate => T::from_i128_wrapping(-i),
                UnaryOp::Sign => T::from_i128_wrapping(i.signum()),
                UnaryOp::BitwiseNot => T::from_bits(!x.bits()),
                _ => x,
            }
        })
        .collect()
}

/// UNARY: `infer_type` guarantees floats for the float ops, bool for `LogicalNot`, integers
/// for `BitwiseNot`, numeric for `Abs`/`Negate`/`Sign`.
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<TensorData, OpError> {
    let bad = || {
        fail_named(
            kiln_ir::op::unary_name(op),
            format!("does not accept {}", x.dtype()),
        )
    };
    Ok(match (op, x.data()) {
        (UnaryOp::LogicalNot, TensorData::Bool(v)) => {
            TensorData::Bool(v.iter().map(|b| !b).collect())
        }
        (UnaryOp::IsNan, TensorData::F32(v)) => {
            TensorData::Bool(v.iter().map(|x| x.is_nan()).collect())
        }
        (UnaryOp::IsNan, TensorData::F16(v)) => {
            TensorData::Bool(v.iter().map(|x| x.is_nan()).collect())
        }
        (UnaryOp::IsInf, TensorData::F32(v)) => {
            TensorData::Bool(v.iter().map(|x| x.is_infinite()).collect())
        }
        (UnaryOp::IsInf, TensorData::F16(v)) => {
            TensorData::Bool(v.iter().map(|x| x.is_infinite()).collect())
        }
        (UnaryOp::IsNan, TensorData::BF16(v)) => {
            TensorData::Bool(v.iter().map(|x| x.is_nan()).collect())
        }
        (UnaryOp::IsInf, TensorData::BF16(v)) => {
            TensorData::Bool(v.iter().map(|x| x.is_infinite()).collect())
        }
        (UnaryOp::IsNan, TensorData::F64(v)) => {
            TensorData::Bool(v.iter().map(|x| x.is_nan()).collect())
        }
        (UnaryOp::IsInf, TensorData::F64(v)) => {
            TensorData::Bool(v.iter().map(|x| x.is_infinite()).collect())
        }
        (UnaryOp::LogicalNot | UnaryOp::IsNan | UnaryOp::IsInf, _) => return Err(bad()),
        (_, TensorData::F32(v)) => TensorData::F32(
            v.iter()
                .map(|&x| float_unary(op, x as f64) as f32)
                .collect(),
        ),
        (_, TensorData::F64(v)) => TensorData::F64(v.iter().map(|&x| float_unary(op, x)).collect()),
        (_, TensorData::F16(v)) => TensorData::F16(
            v.iter()
                .map(|&x| f16::from_f32(float_unary(op, x.to_f64()) as f32))
                .collect(),
        ),
        (_, TensorData::BF16(v)) => TensorData::BF16(
            v.iter()
                .map(|&x| bf16::from_f32(float_unary(op, x.to_f64()) as f32))
                .collect(),
        ),
        (UnaryOp::Abs | UnaryOp::Negate | UnaryOp::Sign | UnaryOp::BitwiseNot, d) => match d {
            TensorData::I8(v) => TensorData::I8(int_unary(op, v)),
            TensorData::U8(v) => TensorData::U8(int_unary(op, v)),
            TensorData::I16(v) => TensorData::I16(int_unary(op, v)),
            TensorData::U16(v) => TensorData::U16(int_unary(op, v)),
            TensorData::I32(v) => TensorData::I32(int_unary(op, v)),
            TensorData::U32(v) => TensorData::U32(int_unary(op, v)),
            TensorData::I64(v) => TensorData::I64(int_unary(op, v)),
            TensorData::U64(v) => TensorData::U64(int_unary(op, v)),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    })
}

/// A float binary op in f64 (rounded by the caller to the operands' dtype).
fn float_binary(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Mod => a % b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Maximum => {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }
        BinaryOp::Minimum => {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        }
        // Comparisons, logical and bitwise ops are dispatched elsewhere.
        _ => f64::NAN,
    }
}

/// Integer power with wrapping; negative exponents give `1/a^-e` truncated (0 unless |a| = 1).
fn int_pow(a: i128, e: i128) -> i128 {
    if e < 0 {
        return match a {
            1 => 1,
            -1 => {
                if e % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        };
    }
    // Wrapping at 128 bits and truncating to the dtype gives the dtype's wrapping power.
    let (mut base, mut e, mut acc) = (a, e as u128, 1i128);
    while e > 0 {
        if e & 1 == 1 {
            acc = acc.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    acc
}

fn int_binary_scalar<T: Int>(op: BinaryOp, a: T, b: T) -> T {
    let (x, y) = (a.as_i128(), b.as_i128());
    let w = T::from_i128_wrapping;
    match op {
        BinaryOp::Add => w(x.wrapping_add(y)),
        BinaryOp::Sub => w(x.wrapping_sub(y)),
        BinaryOp::Mul => w(x.wrapping_mul(y)),
        BinaryOp::Div => {
            if y == 0 {
                w(0)
            } else {
                w(x.wrapping_div(y))
            }
        }
        BinaryOp::Mod => {
            if y == 0 {
                return w(0);
            }
            let r = x.wrapping_rem(y);
            if r != 0 && ((r < 0) != (y < 0)) {
                w(r.wrapping_add(y))
            } else {
                w(r)
            }
        }
        BinaryOp::Pow => w(int_pow(x, y)),
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
        BinaryOp::BitwiseAnd => T::from_bits(a.bits() & b.bits()),
        BinaryOp::BitwiseOr => T::from_bits(a.bits() | b.bits()),
        BinaryOp::BitwiseXor => T::from_bits(a.bits() ^ b.bits()),
        BinaryOp::LogicalLeftShift | BinaryOp::LogicalRightShift => {
            let amount = b.bits();
            if amount >= T::BITS as u64 {
                w(0)
            } else if op == BinaryOp::LogicalLeftShift {
                T::from_bits(a.bits() << amount)
            } else {
                T::from_bits(a.bits() >> amount)
            }
        }
        BinaryOp::ArithmeticRightShift => {
            let amount = b.bits();
            if amount >= T::BITS as u64 {
                w(if x < 0 { -1 } else { 0 })
            } else {
                w(x >> amount)
            }
        }
        _ => a,
    }
}

fn zip<A: Copy, B: Copy, O>(a: &[A], b: &[B], f: impl Fn(A, B) -> O) -> Vec<O> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

fn compare<T: PartialOrd + Copy>(op: BinaryOp, a: &[T], b: &[T]) -> Vec<bool> {
    match op {
        BinaryOp::Equal => zip(a, b, |x, y| x == y),
        BinaryOp::Greater => zip(a, b, |x, y| x > y),
        _ => zip(a, b, |x, y| x >= y),
    }
}

/// BINARY over operands broadcast to `out_shape`.
pub fn binary(
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<TensorData, OpError> {
    let bad = || {
        fail_named(
            kiln_ir::op::binary_name(op),
            format!("does not accept {}", a.dtype()),
        )
    };
    let (x, y) = (broadcast_data(a, out_shape), broadcast_data(b, out_shape));
    use TensorData as D;
    if op.is_comparison() {
        return Ok(D::Bool(match (&x, &y) {
            (D::F32(p), D::F32(q)) => compare(op, p, q),
            (D::F16(p), D::F16(q)) => compare(op, p, q),
            (D::I8(p), D::I8(q)) => compare(op, p, q),
            (D::U8(p), D::U8(q)) => compare(op, p, q),
            (D::I16(p), D::I16(q)) => compare(op, p, q),
            (D::I32(p), D::I32(q)) => compare(op, p, q),
            (D::I64(p), D::I64(q)) => compare(op, p, q),
            (D::Bool(p), D::Bool(q)) => compare(op, p, q),
            (D::F64(p), D::F64(q)) => compare(op, p, q),
            (D::BF16(p), D::BF16(q)) => compare(op, p, q),
            (D::U16(p), D::U16(q)) => compare(op, p, q),
            (D::U32(p), D::U32(q)) => compare(op, p, q),
            (D::U64(p), D::U64(q)) => compare(op, p, q),
            _ => return Err(bad()),
        }));
    }
    Ok(match (&x, &y) {
        (D::Bool(p), D::Bool(q)) => D::Bool(match op {
            BinaryOp::LogicalAnd => zip(p, q, |s, t| s && t),
            BinaryOp::LogicalOr => zip(p, q, |s, t| s || t),
            BinaryOp::LogicalXor => zip(p, q, |s, t| s != t),
            _ => return Err(bad()),
        }),
        (D::F32(p), D::F32(q)) => D::F32(zip(p, q, |s, t| {
            float_binary(op, s as f64, t as f64) as f32
        })),
        (D::F64(p), D::F64(q)) => D::F64(zip(p, q, |s, t| float_binary(op, s, t))),
        (D::F16(p), D::F16(q)) => D::F16(zip(p, q, |s, t| {
            f16::from_f32(float_binary(op, s.to_f64(), t.to_f64()) as f32)
        })),
        (D::BF16(p), D::BF16(q)) => D::BF16(zip(p, q, |s, t| {
            bf16::from_f32(float_binary(op, s.to_f64(), t.to_f64()) as f32)
        })),
        (D::I8(p), D::I8(q)) => D::I8(zip(p, q, |s, t| int_binary_scalar(op, s, t))),
        (D::U8(p), D::U8(q)) => D::U8(zip(p, q, |s, t| int_binary_scalar(op, s, t))),
        (D::I16(p), D::I16(q)) => D::I16(zip(p, q, |s, t| int_binary_scalar(op, s, t))),
        (D::I32(p), D::I32(q)) => D::I32(zip(p, q, |s, t| int_binary_scalar(op, s, t))),
        (D::I64(p), D::I64(q)) => D::I64(zip(p, q, |s, t| int_binary_scalar(op, s, t))),
        (D::U16(p), D::U16(q)) => D::U16(zip(p, q, |s, t| int_binary_scalar(op, s, t))),
        (D::U32(p), D::U32(q)) => D::U32(zip(p, q, |s, t| int_binary_scalar(op, s, t))),
        (D::U64(p), D::U64(q)) => D::U64(zip(p, q, |s, t| int_binary_scalar(op, s, t))),
        _ => return Err(bad()),
    })
}

fn clamp_vec<T: Element>(v: &[T], lo: f64, hi: f64) -> Vec<T> {
    let (lo, hi) = (T::from_f64(lo), T::from_f64(hi));
    v.iter()
        .map(|&x| {
            if x < lo {
                lo
            } else if x > hi {
                hi
            } else {
                x
            }
        })
        .collect()
}

/// CLAMP: bounds converted to the dtype (saturating for integers); NaN passes through.
pub fn clamp(x: &Tensor, lo: f64, hi: f64) -> TensorData {
    dispatch_data!(x.data(), v => Element::wrap(clamp_vec(v, lo, hi)))
}

fn select_vec<T: Element>(
    c: &[bool],
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Option<Vec<T>> {
    let a = broadcast_vec(a.as_slice::<T>()?, a.shape(), out_shape);
    let b = broadcast_vec(b.as_slice::<T>()?, b.shape(), out_shape);
    Some(
        c.iter()
            .zip(a)
            .zip(b)
            .map(|((&c, x), y)| if c { x } else { y })
            .collect(),
    )
}

/// SELECT: `cond ? a : b`, all three broadcast to `out_shape`.
pub fn select(
    cond: &Tensor,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<TensorData, OpError> {
    let bad = || fail_named("select", "operands do not match");
    let c = cond.as_slice::<bool>().ok_or_else(bad)?;
    let c = broadcast_vec(c, cond.shape(), out_shape);
    let data = match a.dtype() {
        DType::F32 => select_vec::<f32>(&c, a, b, out_shape).map(Element::wrap),
        DType::F16 => select_vec::<f16>(&c, a, b, out_shape).map(Element::wrap),
        DType::I8 => select_vec::<i8>(&c, a, b, out_shape).map(Element::wrap),
        DType::U8 => select_vec::<u8>(&c, a, b, out_shape).map(Element::wrap),
        DType::I16 => select_vec::<i16>(&c, a, b, out_shape).map(Element::wrap),
        DType::I32 => select_vec::<i32>(&c, a, b, out_shape).map(Element::wrap),
        DType::I64 => select_vec::<i64>(&c, a, b, out_shape).map(Element::wrap),
        DType::Bool => select_vec::<bool>(&c, a, b, out_shape).map(Element::wrap),
        DType::F64 => select_vec::<f64>(&c, a, b, out_shape).map(Element::wrap),
        DType::BF16 => select_vec::<bf16>(&c, a, b, out_shape).map(Element::wrap),
        DType::U16 => select_vec::<u16>(&c, a, b, out_shape).map(Element::wrap),
        DType::U32 => select_vec::<u32>(&c, a, b, out_shape).map(Element::wrap),
        DType::U64 => select_vec::<u64>(&c, a, b, out_shape).map(Element::wrap),
    };
    data.ok_or_else(bad)
}

/// MUL_ADD: `a * b + c` with one rounding, broadcast to `out_shape` (f32 or f64).
pub fn mul_add(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    out_shape: &[usize],
) -> Result<TensorData, OpError> {
    fn go<T: Element + Copy>(
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        out_shape: &[usize],
        fma: fn(T, T, T) -> T,
    ) -> Option<Vec<T>> {
        let x = broadcast_vec(a.as_slice::<T>()?, a.shape(), out_shape);
        let y = broadcast_vec(b.as_slice::<T>()?, b.shape(), out_shape);
        let z = broadcast_vec(c.as_slice::<T>()?, c.shape(), out_shape);
        Some(
            x.iter()
                .zip(&y)
                .zip(&z)
                .map(|((&x, &y), &z)| fma(x, y, z))
                .collect(),
        )
    }
    let bad = || fail_named("mul_add", "needs three f32 or three f64 operands");
    let data = match a.dtype() {
        DType::F32 => go::<f32>(a, b, c, out_shape, f32::mul_add).map(TensorData::F32),
        DType::F64 => go::<f64>(a, b, c, out_shape, f64::mul_add).map(TensorData::F64),
        _ => None,
    };
    data.ok_or_else(bad)
}

/// A source element for CAST, keeping integers exact.
#[derive(Clone, Copy)]
enum Scalar {
    Int(i128),
    Float(f64),
}

fn cast_to<T: Int>(s: Scalar) -> T {
    match s {
        Scalar::Int(i) => T::from_i128_wrapping(i),
        // `as` from f64 truncates toward zero, saturates and maps NaN to 0.
        Scalar::Float(f) => T::from_f64(f),
    }
}

/// CAST with ONNX semantics: float to integer truncates toward zero and saturates (NaN to 0),
/// integer to integer wraps, anything to bool is `!= 0`, bool to number is 1/0, and float
/// narrowing rounds to nearest even.
pub fn cast(data: &TensorData, to: DType) -> TensorData {
    let src: Vec<Scalar> = match data {
        TensorData::F32(v) => v.iter().map(|&x| Scalar::Float(x as f64)).collect(),
        TensorData::F16(v) => v.iter().map(|x| Scalar::Float(x.to_f64())).collect(),
        TensorData::BF16(v) => v.iter().map(|x| Scalar::Float(x.to_f64())).collect(),
        TensorData::F64(v) => v.iter().map(|&x| Scalar::Float(x)).collect(),
        TensorData::Bool(v) => v.iter().map(|&x| Scalar::Int(x as i128)).collect(),
        TensorData::U64(v) => v.iter().map(|&x| Scalar::Int(x as i128)).collect(),
        other => other
            .to_i64_vec()
            .into_iter()
            .map(|i| Scalar::Int(i as i128))
            .collect(),
    };
    let it = src.into_iter();
    match to {
        DType::F32 => TensorData::F32(
            it.map(|s| match s {
                Scalar::Int(i) => i as f32,
                Scalar::Float(f) => f as f32,
            })
            .collect(),
        ),
        DType::F16 => TensorData::F16(
            it.map(|s| match s {
                Scalar::Int(i) => f16::from_f64(i as f64),
                Scalar::Float(f) => f16::from_f64(f),
            })
            .collect(),
        ),
        DType::BF16 => TensorData::BF16(
            it.map(|s| match s {
                Scalar::Int(i) => bf16::from_f64(i as f64),
                Scalar::Float(f) => bf16::from_f64(f),
            })
            .collect(),
        ),
        DType::F64 => TensorData::F64(
            it.map(|s| match s {
                Scalar::Int(i) => i as f64,
                Scalar::Float(f) => f,
            })
            .collect(),
        ),
        DType::Bool => TensorData::Bool(
            it.map(|s| match s {
                Scalar::Int(i) => i != 0,
                Scalar::Float(f) => f != 0.0,
            })
            .collect(),
        ),
        DType::I8 => TensorData::I8(it.map(cast_to).collect()),
        DType::U8 => TensorData::U8(it.map(cast_to).collect()),
        DType::I16 => TensorData::I16(it.map(cast_to).collect()),
        DType::I32 => TensorData::I32(it.map(cast_to).collect()),
        DType::I64 => TensorData::I64(it.map(cast_to).collect()),
        DType::U16 => TensorData::U16(it.map(cast_to).collect()),
        DType::U32 => TensorData::U32(it.map(cast_to).collect()),
        DType::U64 => TensorData::U64(it.map(cast_to).collect()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(clippy::excessive_precision)] // reference values at full f64 precision
    fn erf_matches_reference_values_in_f64() {
        let cases = [
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.5, 0.966_105_146_475_310_8),
            (2.5, 0.999_593_047_982_555),
            (3.9, 0.999_999_965_207_751_4),
            (-3.0, -0.999_977_909_503_001_4),
        ];
        for (x, want) in cases {
            let got = super::erf(x);
            assert!((got - want).abs() <= 1e-10, "erf({x}) = {got}, want {want}");
        }
    }
}
