//! The interpreter of the loop IR: the loop-level oracle of the schedule property tests and of
//! codegen tests.
//!
//! Invariant: [`run`] computes exactly what a compiled kernel computes for every operation whose
//! result is exactly specified: float arithmetic is done in `f32` with one rounding per
//! operation (`f16` and `bf16` values are widened to `f32` on load and rounded on store and on
//! cast; `f64` is computed in `f64`), integer arithmetic wraps at the width of its dtype
//! (unsigned dtypes compare, divide and convert as unsigned), `min`/`max` propagate NaN,
//! `select` evaluates only the chosen branch, loops of every kind run their iterations in
//! order. Transcendental intrinsics (`exp`, `log`, `tanh`, `sigmoid`, `erf`, `sin`, `cos`,
//! `pow`) are computed in `f64` (`erf` by [`crate::erf64`], the runtime hooks' function) and
//! rounded to `f32`, i.e. (nearly) correctly rounded: codegen tests compare those within a few
//! ulp. The function is verified first, so no input makes it panic or index out of bounds;
//! integer division by zero is reported as an error.

use crate::erf::erf64;
use crate::expr::{BinOp, CmpOp, Expr, Intrinsic};
use crate::stmt::Stmt;
use crate::tir::{PrimFunc, Scope};
use crate::verify::{verify, VerifyError};
use half::{bf16, f16};
use kiln_ir::{DType, Tensor, TensorData, TensorType};

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InterpError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("expected {expected} arguments, given {given}")]
    Arity { expected: usize, given: usize },
    #[error("argument %{name}: expected {expected}, given {given}")]
    BadArgument {
        name: String,
        expected: String,
        given: String,
    },
    #[error("integer division by zero")]
    DivisionByZero,
    #[error("internal: {0}")]
    Internal(String),
}

/// A scalar value during evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Val {
    /// A float of dtype `F32`, `F16` or `BF16`, held in f32.
    F(f32),
    /// An `F64` float.
    D(f64),
    /// An integer, already wrapped to its dtype.
    I(i64, DType),
    B(bool),
}

/// Runs `func` on `args` (one tensor per param, in order; outputs are written in place). Local
/// buffers start zeroed.
pub fn run(func: &PrimFunc, args: &mut [Tensor]) -> Result<(), InterpError> {
    verify(func)?;
    if args.len() != func.params.len() {
        return Err(InterpError::Arity {
            expected: func.params.len(),
            given: args.len(),
        });
    }
    let mut storage: Vec<TensorData> = Vec::with_capacity(func.buffers.len());
    for b in &func.buffers {
        storage.push(TensorData::zeros(b.dtype, b.num_elements()));
    }
    for (&p, t) in func.params.iter().zip(args.iter()) {
        let decl = &func.buffers[p.index()];
        if t.dtype() != decl.dtype || t.shape() != decl.shape.as_slice() {
            return Err(InterpError::BadArgument {
                name: decl.name.clone(),
                expected: format!("{}{:?}", decl.dtype, decl.shape),
                given: format!("{}{:?}", t.dtype(), t.shape()),
            });
        }
        storage[p.index()] = t.data().clone();
    }
    let mut m = Machine {
        func,
        storage,
        vars: vec![0; func.vars.len()],
    };
    m.stmt(&func.body)?;
    for (&p, t) in func.params.iter().zip(args.iter_mut()) {
        debug_assert_eq!(func.buffers[p.index()].scope, Scope::Param);
        let data = std::mem::replace(&mut m.storage[p.index()], TensorData::Bool(vec![]));
        let ty = TensorType {
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
        };
        *t = Tensor::from_data(ty, data).map_err(|e| InterpError::Internal(e.to_string()))?;
    }
    Ok(())
}

struct Machine<'a> {
    func: &'a PrimFunc,
    storage: Vec<TensorData>,
    vars: Vec<i64>,
}

/// `v` wrapped to the width of `d` (a `U64` is kept as its bit pattern).
fn wrap(d: DType, v: i64) -> i64 {
    match d {
        DType::I8 => v as i8 as i64,
        DType::U8 => v as u8 as i64,
        DType::I16 => v as i16 as i64,
        DType::U16 => v as u16 as i64,
        DType::I32 => v as i32 as i64,
        DType::U32 => v as u32 as i64,
        _ => v,
    }
}

/// A float constant or cast result rounded to the precision of `d` (held in f32).
fn round_to(d: DType, x: f32) -> f32 {
    match d {
        DType::F16 => f16::from_f32(x).to_f32(),
        DType::BF16 => bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

fn floor_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

fn floor_mod(a: i128, b: i128) -> i128 {
    let r = a % b;
    if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    }
}

/// An integer value as i128: its dtype's value (a `U64` read as unsigned).
fn wide(v: i64, d: DType) -> i128 {
    if d == DType::U64 {
        v as u64 as i128
    } else {
        v as i128
    }
}

fn nan_min<T: num_like::Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::NAN
    } else {
        a.min(b)
    }
}

fn nan_max<T: num_like::Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::NAN
    } else {
        a.max(b)
    }
}

/// The float operations the interpreter needs of f32 and f64.
mod num_like {
    pub trait Float: Copy {
        const NAN: Self;
        fn is_nan(self) -> bool;
        fn min(self, o: Self) -> Self;
        fn max(self, o: Self) -> Self;
    }
    macro_rules! float {
        ($t:ty) => {
            impl Float for $t {
                const NAN: Self = <$t>::NAN;
                fn is_nan(self) -> bool {
                    <$t>::is_nan(self)
                }
                fn min(self, o: Self) -> Self {
                    <$t>::min(self, o)
                }
                fn max(self, o: Self) -> Self {
                    <$t>::max(self, o)
                }
            }
        };
    }
    float!(f32);
    float!(f64);
}

impl Machine<'_> {
    fn offset(
        &mut self,
        buf: crate::expr::BufferId,
        indices: &[Expr],
    ) -> Result<usize, InterpError> {
        let shape = &self.func.buffers[buf.index()].shape;
        let mut off = 0usize;
        for (i, &d) in indices.iter().zip(shape) {
            let v = match self.expr(i)? {
                Val::I(v, _) => v,
                other => return Err(InterpError::Internal(format!("index value {other:?}"))),
            };
            if v < 0 || v as u64 >= d as u64 {
                return Err(InterpError::Internal(format!(
                    "index {v} outside 0..{d} of %{}",
                    self.func.buffers[buf.index()].name
                )));
            }
            off = off * d + v as usize;
        }
        Ok(off)
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), InterpError> {
        match s {
            Stmt::For {
                var, extent, body, ..
            } => {
                for i in 0..*extent {
                    self.vars[var.index()] = i as i64;
                    self.stmt(body)?;
                }
                Ok(())
            }
            Stmt::Seq(v) => v.iter().try_for_each(|s| self.stmt(s)),
            Stmt::Tensorized { body, .. } => self.stmt(body),
            Stmt::Store {
                buf,
                indices,
                value,
            } => {
                let off = self.offset(*buf, indices)?;
                let val = self.expr(value)?;
                store(&mut self.storage[buf.index()], off, val)
            }
            Stmt::IfThenElse {
                cond,
                then,
                otherwise,
            } => {
                if self.truth(cond)? {
                    self.stmt(then)
                } else if let Some(o) = otherwise {
                    self.stmt(o)
                } else {
                    Ok(())
                }
            }
        }
    }

    fn truth(&mut self, e: &Expr) -> Result<bool, InterpError> {
        match self.expr(e)? {
            Val::B(b) => Ok(b),
            other => Err(InterpError::Internal(format!("condition value {other:?}"))),
        }
    }

    fn float(&mut self, e: &Expr) -> Result<Val, InterpError> {
        match self.expr(e)? {
            v @ (Val::F(_) | Val::D(_)) => Ok(v),
            other => Err(InterpError::Internal(format!(
                "expected a float, got {other:?}"
            ))),
        }
    }

    fn expr(&mut self, e: &Expr) -> Result<Val, InterpError> {
        Ok(match e {
            Expr::Var(v) => Val::I(self.vars[v.index()], DType::I64),
            Expr::Int { value, dtype } => Val::I(wrap(*dtype, *value), *dtype),
            Expr::Float { value, dtype } => match dtype {
                DType::F64 => Val::D(*value),
                d => Val::F(round_to(*d, *value as f32)),
            },
            Expr::Bool(b) => Val::B(*b),
            Expr::Binary { op, a, b } => {
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                binary(*op, a, b)?
            }
            Expr::Cmp { op, a, b } => {
                let (a, b) = (self.expr(a)?, self.expr(b)?);
                Val::B(compare(*op, a, b)?)
            }
            Expr::And(a, b) => Val::B(self.truth(a)? & self.truth(b)?),
            Expr::Or(a, b) => Val::B(self.truth(a)? | self.truth(b)?),
            Expr::Not(a) => Val::B(!self.truth(a)?),
            Expr::Select {
                cond,
                then,
                otherwise,
            } => {
                if self.truth(cond)? {
                    self.expr(then)?
                } else {
                    self.expr(otherwise)?
                }
            }
            Expr::Cast { dtype, value } => cast(*dtype, self.expr(value)?),
            Expr::Load { buf, indices } => {
                let off = self.offset(*buf, indices)?;
                load(&self.storage[buf.index()], off)?
            }
            Expr::Call { intrinsic, args } => self.call(*intrinsic, args)?,
        })
    }

    fn call(&mut self, f: Intrinsic, args: &[Expr]) -> Result<Val, InterpError> {
        if f == Intrinsic::Abs {
            let a = args
                .first()
                .ok_or_else(|| InterpError::Internal("abs()".into()))?;
            return Ok(match self.expr(a)? {
                Val::F(x) => Val::F(x.abs()),
                Val::D(x) => Val::D(x.abs()),
                Val::I(v, d) if d.is_unsigned() => Val::I(v, d),
                Val::I(v, d) => Val::I(wrap(d, v.wrapping_abs()), d),
                Val::B(b) => Val::B(b),
            });
        }
        let mut xs = [Val::F(0.0); 3];
        for (slot, a) in xs.iter_mut().zip(args) {
            *slot = self.float(a)?;
        }
        if let [Val::D(x), y, z] = xs {
            let as_f64 = |v: Val| match v {
                Val::D(d) => d,
                Val::F(f) => f as f64,
                _ => 0.0,
            };
            return Ok(Val::D(intrinsic64(f, x, as_f64(y), as_f64(z))));
        }
        let [x, y, z] = xs.map(|v| match v {
            Val::F(f) => f,
            Val::D(d) => d as f32,
            _ => 0.0,
        });
        let r = match f {
            Intrinsic::Sqrt => x.sqrt(),
            Intrinsic::Floor => x.floor(),
            Intrinsic::Ceil => x.ceil(),
            Intrinsic::Round => x.round_ties_even(),
            Intrinsic::Abs => x.abs(),
            Intrinsic::Fma => x.mul_add(y, z),
            other => intrinsic64(other, x as f64, y as f64, z as f64) as f32,
        };
        Ok(Val::F(r))
    }
}

/// An intrinsic computed in f64.
fn intrinsic64(f: Intrinsic, w: f64, y: f64, z: f64) -> f64 {
    match f {
        Intrinsic::Exp => w.exp(),
        Intrinsic::Log => w.ln(),
        Intrinsic::Sqrt => w.sqrt(),
        Intrinsic::Rsqrt => 1.0 / w.sqrt(),
        Intrinsic::Tanh => w.tanh(),
        Intrinsic::Sigmoid => 1.0 / (1.0 + (-w).exp()),
        Intrinsic::Erf => erf64(w),
        Intrinsic::Floor => w.floor(),
        Intrinsic::Ceil => w.ceil(),
        Intrinsic::Round => w.round_ties_even(),
        Intrinsic::Abs => w.abs(),
        Intrinsic::Sin => w.sin(),
        Intrinsic::Cos => w.cos(),
        Intrinsic::Pow => w.powf(y),
        Intrinsic::Fma => w.mul_add(y, z),
    }
}

macro_rules! float_binary {
    ($op:expr, $a:expr, $b:expr) => {
        match $op {
            BinOp::Add => $a + $b,
            BinOp::Sub => $a - $b,
            BinOp::Mul => $a * $b,
            BinOp::Div => $a / $b,
            BinOp::Rem => $a % $b,
            BinOp::Min => nan_min($a, $b),
            BinOp::Max => nan_max($a, $b),
            BinOp::FloorDiv | BinOp::FloorMod => {
                return Err(InterpError::Internal(format!("{:?} on floats", $op)))
            }
        }
    };
}

fn binary(op: BinOp, a: Val, b: Val) -> Result<Val, InterpError> {
    Ok(match (a, b) {
        (Val::F(a), Val::F(b)) => Val::F(float_binary!(op, a, b)),
        (Val::D(a), Val::D(b)) => Val::D(float_binary!(op, a, b)),
        (Val::I(a, d), Val::I(b, _)) => {
            // On i128 sums, differences and quotients of two 64-bit values are exact (products
            // wrap at 128 bits, which keeps their low 64); wrapping to the dtype afterwards gives
            // two's complement (and unsigned) wrapping arithmetic.
            let (a, b) = (wide(a, d), wide(b, d));
            let div = matches!(
                op,
                BinOp::Div | BinOp::Rem | BinOp::FloorDiv | BinOp::FloorMod
            );
            if div && b == 0 {
                return Err(InterpError::DivisionByZero);
            }
            let r = match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a.wrapping_mul(b),
                BinOp::Div => a / b,
                BinOp::Rem => a % b,
                BinOp::FloorDiv => floor_div(a, b),
                BinOp::FloorMod => floor_mod(a, b),
                BinOp::Min => a.min(b),
                BinOp::Max => a.max(b),
            };
            Val::I(wrap(d, r as i64), d)
        }
        (a, b) => return Err(InterpError::Internal(format!("{op:?} on {a:?} and {b:?}"))),
    })
}

fn compare(op: CmpOp, a: Val, b: Val) -> Result<bool, InterpError> {
    let ord = match (a, b) {
        (Val::F(a), Val::F(b)) => return Ok(op.holds(a, b)),
        (Val::D(a), Val::D(b)) => return Ok(op.holds(a, b)),
        (Val::I(a, d), Val::I(b, _)) => wide(a, d).cmp(&wide(b, d)),
        (Val::B(a), Val::B(b)) => a.cmp(&b),
        (a, b) => return Err(InterpError::Internal(format!("compare {a:?} with {b:?}"))),
    };
    use std::cmp::Ordering::*;
    Ok(match op {
        CmpOp::Eq => ord == Equal,
        CmpOp::Ne => ord != Equal,
        CmpOp::Lt => ord == Less,
        CmpOp::Le => ord != Greater,
        CmpOp::Gt => ord == Greater,
        CmpOp::Ge => ord != Less,
    })
}

/// A float converted to integer dtype `d` (truncating toward zero, saturating; NaN is 0).
fn float_to_int(d: DType, x: f64) -> i64 {
    match d {
        DType::I8 => x as i8 as i64,
        DType::U8 => x as u8 as i64,
        DType::I16 => x as i16 as i64,
        DType::U16 => x as u16 as i64,
        DType::I32 => x as i32 as i64,
        DType::U32 => x as u32 as i64,
        DType::U64 => x as u64 as i64,
        _ => x as i64,
    }
}

/// An integer value of dtype `from` as f64 (unsigned 64-bit values read as unsigned).
fn int_to_f64(i: i64, from: DType) -> f64 {
    if from == DType::U64 {
        i as u64 as f64
    } else {
        i as f64
    }
}

fn cast(d: DType, v: Val) -> Val {
    match (v, d) {
        (_, DType::Bool) => Val::B(match v {
            Val::F(x) => x != 0.0,
            Val::D(x) => x != 0.0,
            Val::I(i, _) => i != 0,
            Val::B(b) => b,
        }),
        (Val::F(x), DType::F64) => Val::D(x as f64),
        (Val::F(x), d) if d.is_float() => Val::F(round_to(d, x)),
        (Val::F(x), d) => Val::I(float_to_int(d, x as f64), d),
        (Val::D(x), DType::F64) => Val::D(x),
        // Through f32, as compiled code converts.
        (Val::D(x), d) if d.is_half() => Val::F(round_to(d, x as f32)),
        (Val::D(x), DType::F32) => Val::F(x as f32),
        (Val::D(x), d) => Val::I(float_to_int(d, x), d),
        (Val::I(i, from), DType::F64) => Val::D(int_to_f64(i, from)),
        (Val::I(i, from), DType::F32) => Val::F(if from == DType::U64 {
            i as u64 as f32
        } else {
            i as f32
        }),
        (Val::I(i, from), DType::F16) => Val::F(f16::from_f64(int_to_f64(i, from)).to_f32()),
        (Val::I(i, from), DType::BF16) => Val::F(bf16::from_f64(int_to_f64(i, from)).to_f32()),
        (Val::I(i, _), d) => Val::I(wrap(d, i), d),
        (Val::B(b), DType::F64) => Val::D(if b { 1.0 } else { 0.0 }),
        (Val::B(b), d) if d.is_float() => Val::F(if b { 1.0 } else { 0.0 }),
        (Val::B(b), d) => Val::I(b as i64, d),
    }
}

fn load(data: &TensorData, off: usize) -> Result<Val, InterpError> {
    let missing = || InterpError::Internal(format!("offset {off} outside storage"));
    Ok(match data {
        TensorData::F32(v) => Val::F(*v.get(off).ok_or_else(missing)?),
        TensorData::F16(v) => Val::F(v.get(off).ok_or_else(missing)?.to_f32()),
        TensorData::I8(v) => Val::I(*v.get(off).ok_or_else(missing)? as i64, DType::I8),
        TensorData::U8(v) => Val::I(*v.get(off).ok_or_else(missing)? as i64, DType::U8),
        TensorData::I16(v) => Val::I(*v.get(off).ok_or_else(missing)? as i64, DType::I16),
        TensorData::I32(v) => Val::I(*v.get(off).ok_or_else(missing)? as i64, DType::I32),
        TensorData::I64(v) => Val::I(*v.get(off).ok_or_else(missing)?, DType::I64),
        TensorData::Bool(v) => Val::B(*v.get(off).ok_or_else(missing)?),
        TensorData::F64(v) => Val::D(*v.get(off).ok_or_else(missing)?),
        TensorData::BF16(v) => Val::F(v.get(off).ok_or_else(missing)?.to_f32()),
        TensorData::U16(v) => Val::I(*v.get(off).ok_or_else(missing)? as i64, DType::U16),
        TensorData::U32(v) => Val::I(*v.get(off).ok_or_else(missing)? as i64, DType::U32),
        TensorData::U64(v) => Val::I(*v.get(off).ok_or_else(missing)? as i64, DType::U64),
    })
}

fn store(data: &mut TensorData, off: usize, val: Val) -> Result<(), InterpError> {
    let bad = || InterpError::Internal(format!("store at offset {off}"));
    match (data, val) {
        (TensorData::F32(v), Val::F(x)) => *v.get_mut(off).ok_or_else(bad)? = x,
        (TensorData::F16(v), Val::F(x)) => *v.get_mut(off).ok_or_else(bad)? = f16::from_f32(x),
        (TensorData::I8(v), Val::I(i, _)) => *v.get_mut(off).ok_or_else(bad)? = i as i8,
        (TensorData::U8(v), Val::I(i, _)) => *v.get_mut(off).ok_or_else(bad)? = i as u8,
        (TensorData::I16(v), Val::I(i, _)) => *v.get_mut(off).ok_or_else(bad)? = i as i16,
        (TensorData::I32(v), Val::I(i, _)) => *v.get_mut(off).ok_or_else(bad)? = i as i32,
        (TensorData::I64(v), Val::I(i, _)) => *v.get_mut(off).ok_or_else(bad)? = i,
        (TensorData::Bool(v), Val::B(b)) => *v.get_mut(off).ok_or_else(bad)? = b,
        (TensorData::F64(v), Val::D(x)) => *v.get_mut(off).ok_or_else(bad)? = x,
        (TensorData::BF16(v), Val::F(x)) => *v.get_mut(off).ok_or_else(bad)? = bf16::from_f32(x),
        (TensorData::U16(v), Val::I(i, _)) => *v.get_mut(off).ok_or_else(bad)? = i as u16,
        (TensorData::U32(v), Val::I(i, _)) => *v.get_mut(off).ok_or_else(bad)? = i as u32,
        (TensorData::U64(v), Val::I(i, _)) => *v.get_mut(off).ok_or_else(bad)? = i as u64,
        (d, val) => {
            return Err(InterpError::Internal(format!(
                "store of {val:?} into {} data",
                d.dtype()
            )))
        }
    }
    Ok(())
}
