//! Expression helpers shared by the compute definitions: broadcast loads, constants of a dtype,
//! bounds conditions, balanced sums and exact integer bit arithmetic on `i64`.
//!
//! Invariant: every helper builds well-typed expressions from well-typed operands, and helpers
//! that index buffers produce indices the TIR bounds analysis can prove in range (loop variables,
//! constants, or loads guarded by a `select` on the very same index expression).

use kiln_ir::DType;
use kiln_tir::{BinOp, BufferId, CmpOp, Expr};

/// An `i64` constant.
pub fn c(v: i64) -> Expr {
    Expr::int(v)
}

/// A constant of `dtype` from an f64 with [`kiln_ir::Element::from_f64`] conversion semantics
/// (floats round, integers truncate and saturate, bool is `!= 0`).
pub fn constant(v: f64, dtype: DType) -> Expr {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Expr::float(v, dtype),
        DType::Bool => Expr::Bool(v != 0.0),
        DType::I8 => Expr::int_of(v as i8 as i64, dtype),
        DType::U8 => Expr::int_of(v as u8 as i64, dtype),
        DType::I16 => Expr::int_of(v as i16 as i64, dtype),
        DType::U16 => Expr::int_of(v as u16 as i64, dtype),
        DType::I32 => Expr::int_of(v as i32 as i64, dtype),
        DType::U32 => Expr::int_of(v as u32 as i64, dtype),
        DType::I64 => Expr::int_of(v as i64, dtype),
        DType::U64 => Expr::int_of(v as u64 as i64, dtype),
    }
}

/// The integer constant `v` (wrapped) of integer `dtype`, or the float constant.
pub fn num(v: i64, dtype: DType) -> Expr {
    if dtype.is_float() {
        Expr::float(v as f64, dtype)
    } else {
        Expr::int_of(v, dtype)
    }
}

/// Rounds an f16- or bf16-typed expression to its dtype (a no-op cast for other dtypes is not
/// emitted).
pub fn round(e: Expr, dtype: DType) -> Expr {
    if dtype.is_half() {
        Expr::cast(dtype, e)
    } else {
        e
    }
}

/// Loads `buf` (of `shape`) broadcast to an output indexed by `axes` (equal ranks; index 0
/// along size-1 dims).
pub fn bload(buf: BufferId, shape: &[usize], axes: &[Expr]) -> Expr {
    let idx = shape
        .iter()
        .zip(axes)
        .map(|(&d, a)| if d == 1 { c(0) } else { a.clone() })
        .collect();
    Expr::load(buf, idx)
}

/// `0 <= e < n`.
pub fn in_range(e: &Expr, n: usize) -> Expr {
    Expr::and(Expr::ge(e.clone(), c(0)), Expr::lt(e.clone(), c(n as i64)))
}

/// Conjunction of `conds` (`true` when empty).
pub fn all(conds: Vec<Expr>) -> Expr {
    conds
        .into_iter()
        .reduce(Expr::and)
        .unwrap_or(Expr::Bool(true))
}

/// `a == b`.
pub fn eq(a: Expr, b: Expr) -> Expr {
    Expr::cmp(CmpOp::Eq, a, b)
}

/// `a != b`.
pub fn ne(a: Expr, b: Expr) -> Expr {
    Expr::cmp(CmpOp::Ne, a, b)
}

/// `a > b`.
pub fn gt(a: Expr, b: Expr) -> Expr {
    Expr::cmp(CmpOp::Gt, a, b)
}

/// Sum of `terms` as a balanced tree (shallow expressions); `zero` when empty.
pub fn balanced_sum(mut terms: Vec<Expr>, zero: Expr) -> Expr {
    balanced(&mut terms, BinOp::Add).unwrap_or(zero)
}

/// Product of `terms` as a balanced tree; `one` when empty.
pub fn balanced_product(mut terms: Vec<Expr>, one: Expr) -> Expr {
    balanced(&mut terms, BinOp::Mul).unwrap_or(one)
}

fn balanced(terms: &mut Vec<Expr>, op: BinOp) -> Option<Expr> {
    while terms.len() > 1 {
        let mut next = Vec::with_capacity(terms.len().div_ceil(2));
        let mut it = std::mem::take(terms).into_iter();
        while let Some(a) = it.next() {
            match it.next() {
                Some(b) => next.push(Expr::binary(op, a, b)),
                None => next.push(a),
            }
        }
        *terms = next;
    }
    terms.pop()
}

/// Bit width of an integer dtype.
pub fn bits(dtype: DType) -> u32 {
    match dtype {
        DType::I8 | DType::U8 => 8,
        DType::I16 | DType::U16 => 16,
        DType::I32 | DType::U32 => 32,
        _ => 64,
    }
}

/// `2^k` for an `i64` expression `k` in `0..64`, wrapping (`2^63` is `i64::MIN`), built from
/// the six bits of `k` without shifts.
pub fn pow2(k: &Expr) -> Expr {
    let factors = (0..6)
        .map(|j| {
            let bit = Expr::floormod(Expr::floordiv(k.clone(), c(1 << j)), c(2));
            let f = 1i64.wrapping_shl(1 << j);
            Expr::select(eq(bit, c(1)), c(f), c(1))
        })
        .collect();
    balanced_product(factors, c(1))
}

/// Bit `k` (a constant) of the two's complement `i64` value `x`, as 0 or 1.
pub fn bit(x: &Expr, k: u32) -> Expr {
    if k >= 63 {
        Expr::select(Expr::lt(x.clone(), c(0)), c(1), c(0))
    } else {
        Expr::floormod(Expr::floordiv(x.clone(), c(1i64 << k)), c(2))
    }
}

/// The bitwise combination `f(bit_k(a), bit_k(b))` over the `width` low bits of the `i64`
/// values `a` and `b`, as a wrapping `i64` sum of `2^k` terms.
pub fn bitwise(a: &Expr, b: &Expr, width: u32, f: impl Fn(Expr, Expr) -> Expr) -> Expr {
    let terms = (0..width)
        .map(|k| {
            let weight = 1i64.wrapping_shl(k);
            f(bit(a, k), bit(b, k)) * c(weight)
        })
        .collect();
    balanced_sum(terms, c(0))
}

/// Which input bounds a window tap (of a convolution or pool) may leave; the others hold for
/// every tap.
#[derive(Clone, Copy)]
pub struct TapBounds {
    pub y_lo: bool,
    pub y_hi: bool,
    pub x_lo: bool,
    pub x_hi: bool,
}

impl TapBounds {
    /// Whether any tap can leave the input.
    pub fn any(&self) -> bool {
        self.y_lo || self.y_hi || self.x_lo || self.x_hi
    }

    /// `select(tap inside, value, zero)`, testing only the bounds a tap may leave.
    pub fn guard(&self, iy: &Expr, h: usize, ix: &Expr, w: usize, value: Expr, zero: Expr) -> Expr {
        let mut conds = vec![];
        if self.y_lo {
            conds.push(Expr::ge(iy.clone(), c(0)));
        }
        if self.y_hi {
            conds.push(Expr::lt(iy.clone(), c(h as i64)));
        }
        if self.x_lo {
            conds.push(Expr::ge(ix.clone(), c(0)));
        }
        if self.x_hi {
            conds.push(Expr::lt(ix.clone(), c(w as i64)));
        }
        if conds.is_empty() {
            value
        } else {
            Expr::select(all(conds), value, zero)
        }
    }
}

/// The last input position a window along one axis reads (before clipping): output size `o`,
/// stride `s`, kernel `k`, dilation `d`, leading padding `p`.
pub fn reach(o: usize, s: i64, k: usize, d: i64, p: i64) -> i64 {
    (o as i64 - 1) * s + (k as i64 - 1) * d - p
}
