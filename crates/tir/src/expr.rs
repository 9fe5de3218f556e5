//! Scalar expressions of the loop IR.
//!
//! Invariant: every [`Expr`] has a dtype derivable from its operands alone (plus the dtypes of the
//! buffers it loads), computed by [`Expr::infer_dtype`]. Loop variables and index arithmetic are
//! `i64`. Operands of a binary operator, a comparison, `min`/`max`, `select` branches and the
//! arguments of an intrinsic have one common dtype; there are no implicit conversions.
//!
//! Integer division comes in two flavours, kept apart so that the meaning never depends on the
//! dtype: [`BinOp::Div`]/[`BinOp::Rem`] truncate toward zero (C, TOSA INTDIV; the data semantics),
//! [`BinOp::FloorDiv`]/[`BinOp::FloorMod`] round toward negative infinity (Python; what index
//! arithmetic of splits, fuses and packing uses). Floats use IEEE division, `Rem` is `fmod`.

use kiln_ir::DType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A loop variable, an index into [`crate::PrimFunc::vars`] (or into a compute DAG's axis table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VarId(pub u32);

/// A buffer, an index into [`crate::PrimFunc::buffers`]. In a [`crate::ComputeDag`] it names a
/// tensor of the DAG instead (placeholders first, then stages).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BufferId(pub u32);

impl VarId {
    /// The arena index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl BufferId {
    /// The arena index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Arithmetic operators. Operands and result share one numeric dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    /// Floats: IEEE division. Integers: truncation toward zero.
    Div,
    /// Integers only: rounds toward negative infinity (index arithmetic).
    FloorDiv,
    /// Integers only: remainder with the sign of the divisor (pairs with `FloorDiv`).
    FloorMod,
    /// Remainder with the sign of the dividend (pairs with `Div`; `fmod` for floats).
    Rem,
    /// NaN-propagating for floats.
    Min,
    /// NaN-propagating for floats.
    Max,
}

/// Comparisons; the result is `bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    /// Whether `a op b` holds, with `PartialOrd`'s meaning (a NaN operand makes every
    /// comparison but `Ne` false).
    pub fn holds<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }

    /// The comparison that holds exactly when `self` does not (for non-NaN operands).
    pub fn negated(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::Ne,
            CmpOp::Ne => CmpOp::Eq,
            CmpOp::Lt => CmpOp::Ge,
            CmpOp::Le => CmpOp::Gt,
            CmpOp::Gt => CmpOp::Le,
            CmpOp::Ge => CmpOp::Lt,
        }
    }

    /// The operator symbol of the text form.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// Math intrinsics. All take float arguments except `abs`, which also takes integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Intrinsic {
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Erf,
    Floor,
    Ceil,
    /// Round half to even.
    Round,
    Abs,
    Sin,
    Cos,
    Pow,
    /// `fma(a, b, c) = a * b + c` with one rounding.
    Fma,
}

impl Intrinsic {
    /// Every intrinsic.
    pub const ALL: [Intrinsic; 15] = [
        Intrinsic::Exp,
        Intrinsic::Log,
        Intrinsic::Sqrt,
        Intrinsic::Rsqrt,
        Intrinsic::Tanh,
        Intrinsic::Sigmoid,
        Intrinsic::Erf,
        Intrinsic::Floor,
        Intrinsic::Ceil,
        Intrinsic::Round,
        Intrinsic::Abs,
        Intrinsic::Sin,
        Intrinsic::Cos,
        Intrinsic::Pow,
        Intrinsic::Fma,
    ];

    /// The name used in the text form.
    pub fn name(self) -> &'static str {
        match self {
            Intrinsic::Exp => "exp",
            Intrinsic::Log => "log",
            Intrinsic::Sqrt => "sqrt",
            Intrinsic::Rsqrt => "rsqrt",
            Intrinsic::Tanh => "tanh",
            Intrinsic::Sigmoid => "sigmoid",
            Intrinsic::Erf => "erf",
            Intrinsic::Floor => "floor",
            Intrinsic::Ceil => "ceil",
            Intrinsic::Round => "round",
            Intrinsic::Abs => "abs",
            Intrinsic::Sin => "sin",
            Intrinsic::Cos => "cos",
            Intrinsic::Pow => "pow",
            Intrinsic::Fma => "fma",
        }
    }

    /// The intrinsic called `name`.
    pub fn from_name(name: &str) -> Option<Intrinsic> {
        Intrinsic::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Number of arguments.
    pub fn arity(self) -> usize {
        match self {
            Intrinsic::Pow => 2,
            Intrinsic::Fma => 3,
            _ => 1,
        }
    }
}

/// A scalar expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    /// A loop variable (`i64`).
    Var(VarId),
    /// An integer constant of an integer dtype (`i64` for index arithmetic).
    Int {
        value: i64,
        dtype: DType,
    },
    /// A float constant of a float dtype; `value` is exactly representable in that dtype when
    /// built through [`Expr::float`].
    Float {
        value: f64,
        dtype: DType,
    },
    Bool(bool),
    Binary {
        op: BinOp,
        a: Box<Expr>,
        b: Box<Expr>,
    },
    Cmp {
        op: CmpOp,
        a: Box<Expr>,
        b: Box<Expr>,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// Evaluates only the chosen branch, so a guarded load in `then` may be out of bounds when
    /// `cond` is false (zero padding). Codegen must lower such a select to a branch or a masked
    /// load, never to "load both and blend".
    Select {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// Conversion: int to int wraps (two's complement), float to int truncates toward zero and
    /// saturates (NaN gives 0), int to float rounds to nearest, anything to bool is `!= 0`.
    Cast {
        dtype: DType,
        value: Box<Expr>,
    },
    Load {
        buf: BufferId,
        indices: Vec<Expr>,
    },
    Call {
        intrinsic: Intrinsic,
        args: Vec<Expr>,
    },
}

/// A type error found by [`Expr::infer_dtype`], described in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TypeError(pub String);

fn bx(e: Expr) -> Box<Expr> {
    Box::new(e)
}

impl Expr {
    /// An `i64` constant (index arithmetic).
    pub fn int(value: i64) -> Expr {
        Expr::Int {
            value,
            dtype: DType::I64,
        }
    }

    /// An integer constant of `dtype`.
    pub fn int_of(value: i64, dtype: DType) -> Expr {
        Expr::Int { value, dtype }
    }

    /// An `f32` constant.
    pub fn f32(value: f32) -> Expr {
        Expr::Float {
            value: value as f64,
            dtype: DType::F32,
        }
    }

    /// A float constant of `dtype`, rounded to it.
    pub fn float(value: f64, dtype: DType) -> Expr {
        let value = match dtype {
            DType::F16 => half::f16::from_f64(value).to_f64(),
            DType::BF16 => half::bf16::from_f64(value).to_f64(),
            DType::F64 => value,
            _ => value as f32 as f64,
        };
        Expr::Float { value, dtype }
    }

    /// The zero (or `false`) of `dtype`.
    pub fn zero(dtype: DType) -> Expr {
        if dtype.is_float() {
            Expr::Float { value: 0.0, dtype }
        } else if dtype == DType::Bool {
            Expr::Bool(false)
        } else {
            Expr::Int { value: 0, dtype }
        }
    }

    /// A loop variable.
    pub fn var(v: VarId) -> Expr {
        Expr::Var(v)
    }

    /// A load.
    pub fn load(buf: BufferId, indices: Vec<Expr>) -> Expr {
        Expr::Load { buf, indices }
    }

    /// `op(a, b)`.
    pub fn binary(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary {
            op,
            a: bx(a),
            b: bx(b),
        }
    }

    /// `a // b` (floor division).
    pub fn floordiv(a: Expr, b: Expr) -> Expr {
        Expr::binary(BinOp::FloorDiv, a, b)
    }

    /// `a % b` (floor modulo).
    pub fn floormod(a: Expr, b: Expr) -> Expr {
        Expr::binary(BinOp::FloorMod, a, b)
    }

    /// `min(a, b)`.
    pub fn min(a: Expr, b: Expr) -> Expr {
        Expr::binary(BinOp::Min, a, b)
    }

    /// `max(a, b)`.
    pub fn max(a: Expr, b: Expr) -> Expr {
        Expr::binary(BinOp::Max, a, b)
    }

    /// A comparison.
    pub fn cmp(op: CmpOp, a: Expr, b: Expr) -> Expr {
        Expr::Cmp {
            op,
            a: bx(a),
            b: bx(b),
        }
    }

    /// `a < b`.
    pub fn lt(a: Expr, b: Expr) -> Expr {
        Expr::cmp(CmpOp::Lt, a, b)
    }

    /// `a >= b`.
    pub fn ge(a: Expr, b: Expr) -> Expr {
        Expr::cmp(CmpOp::Ge, a, b)
    }

    /// `a && b`.
    pub fn and(a: Expr, b: Expr) -> Expr {
        Expr::And(bx(a), bx(b))
    }

    /// `a || b`.
    pub fn or(a: Expr, b: Expr) -> Expr {
        Expr::Or(bx(a), bx(b))
    }

    /// `!a`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(a: Expr) -> Expr {
        Expr::Not(bx(a))
    }

    /// `select(cond, then, otherwise)`.
    pub fn select(cond: Expr, then: Expr, otherwise: Expr) -> Expr {
        Expr::Select {
            cond: bx(cond),
            then: bx(then),
            otherwise: bx(otherwise),
        }
    }

    /// A conversion to `dtype`.
    pub fn cast(dtype: DType, value: Expr) -> Expr {
        Expr::Cast {
            dtype,
            value: bx(value),
        }
    }

    /// An intrinsic call.
    pub fn call(intrinsic: Intrinsic, args: Vec<Expr>) -> Expr {
        Expr::Call { intrinsic, args }
    }

    /// The constant integer value, if this is an integer constant.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Expr::Int { value, .. } => Some(*value),
            _ => None,
        }
    }

    /// Whether this integer expression is provably a multiple of `k` for every value of its
    /// variables, given that the variables `aligned` accepts are multiples of `k`: sums,
    /// differences and products of such terms and of constants (a product by a multiple of
    /// `k` is one whatever its other factor).
    pub fn is_multiple_of(&self, k: i64, aligned: &dyn Fn(VarId) -> bool) -> bool {
        match self {
            Expr::Int { value, .. } => k != 0 && value % k == 0,
            Expr::Var(v) => aligned(*v),
            Expr::Binary { op, a, b } => match op {
                BinOp::Add | BinOp::Sub => {
                    a.is_multiple_of(k, aligned) && b.is_multiple_of(k, aligned)
                }
                BinOp::Mul => a.is_multiple_of(k, aligned) || b.is_multiple_of(k, aligned),
                _ => false,
            },
            _ => false,
        }
    }

    /// The direct sub-expressions, in evaluation order.
    pub fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Var(_) | Expr::Int { .. } | Expr::Float { .. } | Expr::Bool(_) => vec![],
            Expr::Binary { a, b, .. }
            | Expr::Cmp { a, b, .. }
            | Expr::And(a, b)
            | Expr::Or(a, b) => {
                vec![a, b]
            }
            Expr::Not(a) | Expr::Cast { value: a, .. } => vec![a],
            Expr::Select {
                cond,
                then,
                otherwise,
            } => vec![cond, then, otherwise],
            Expr::Load { indices, .. } => indices.iter().collect(),
            Expr::Call { args, .. } => args.iter().collect(),
        }
    }

    /// The same node with every direct sub-expression replaced by `f` of it.
    pub fn try_map_children<E>(
        &self,
        f: &mut dyn FnMut(&Expr) -> Result<Expr, E>,
    ) -> Result<Expr, E> {
        Ok(match self {
            Expr::Var(_) | Expr::Int { .. } | Expr::Float { .. } | Expr::Bool(_) => self.clone(),
            Expr::Binary { op, a, b } => Expr::Binary {
                op: *op,
                a: bx(f(a)?),
                b: bx(f(b)?),
            },
            Expr::Cmp { op, a, b } => Expr::Cmp {
                op: *op,
                a: bx(f(a)?),
                b: bx(f(b)?),
            },
            Expr::And(a, b) => Expr::And(bx(f(a)?), bx(f(b)?)),
            Expr::Or(a, b) => Expr::Or(bx(f(a)?), bx(f(b)?)),
            Expr::Not(a) => Expr::Not(bx(f(a)?)),
            Expr::Select {
                cond,
                then,
                otherwise,
            } => Expr::Select {
                cond: bx(f(cond)?),
                then: bx(f(then)?),
                otherwise: bx(f(otherwise)?),
            },
            Expr::Cast { dtype, value } => Expr::Cast {
                dtype: *dtype,
                value: bx(f(value)?),
            },
            Expr::Load { buf, indices } => Expr::Load {
                buf: *buf,
                indices: indices.iter().map(&mut *f).collect::<Result<_, E>>()?,
            },
            Expr::Call { intrinsic, args } => Expr::Call {
                intrinsic: *intrinsic,
                args: args.iter().map(&mut *f).collect::<Result<_, E>>()?,
            },
        })
    }

    /// Calls `f` on this expression and every sub-expression, parents first.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        for c in self.children() {
            c.walk(f);
        }
    }

    /// True when some sub-expression satisfies `pred`.
    pub fn any(&self, pred: &dyn Fn(&Expr) -> bool) -> bool {
        pred(self) || self.children().into_iter().any(|c| c.any(pred))
    }

    /// Replaces each variable `v` by `f(v)` when that is `Some`.
    pub fn substitute(&self, f: &dyn Fn(VarId) -> Option<Expr>) -> Expr {
        match self {
            Expr::Var(v) => f(*v).unwrap_or_else(|| self.clone()),
            _ => {
                let r: Result<Expr, std::convert::Infallible> =
                    self.try_map_children(&mut |c| Ok(c.substitute(f)));
                match r {
                    Ok(e) => e,
                    Err(never) => match never {},
                }
            }
        }
    }

    /// The dtype of the expression; `buffer` gives the dtype of each buffer (None: unknown).
    pub fn infer_dtype(
        &self,
        buffer: &dyn Fn(BufferId) -> Option<DType>,
    ) -> Result<DType, TypeError> {
        let err = |s: String| Err(TypeError(s));
        match self {
            Expr::Var(_) => Ok(DType::I64),
            Expr::Int { dtype, .. } => {
                if dtype.is_int() {
                    Ok(*dtype)
                } else {
                    err(format!("integer constant of non-integer dtype {dtype}"))
                }
            }
            Expr::Float { dtype, .. } => {
                if dtype.is_float() {
                    Ok(*dtype)
                } else {
                    err(format!("float constant of non-float dtype {dtype}"))
                }
            }
            Expr::Bool(_) => Ok(DType::Bool),
            Expr::Binary { op, a, b } => {
                let (ta, tb) = (a.infer_dtype(buffer)?, b.infer_dtype(buffer)?);
                if ta != tb {
                    return err(format!("operands of {op:?} have dtypes {ta} and {tb}"));
                }
                if !ta.is_numeric() {
                    return err(format!("{op:?} of non-numeric dtype {ta}"));
                }
                if matches!(op, BinOp::FloorDiv | BinOp::FloorMod) && !ta.is_int() {
                    return err(format!("{op:?} needs integers, got {ta}"));
                }
                Ok(ta)
            }
            Expr::Cmp { op, a, b } => {
                let (ta, tb) = (a.infer_dtype(buffer)?, b.infer_dtype(buffer)?);
                if ta != tb {
                    return err(format!(
                        "operands of `{}` have dtypes {ta} and {tb}",
                        op.symbol()
                    ));
                }
                Ok(DType::Bool)
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                let (ta, tb) = (a.infer_dtype(buffer)?, b.infer_dtype(buffer)?);
                if ta != DType::Bool || tb != DType::Bool {
                    return err(format!("logical operator on {ta} and {tb}, needs bool"));
                }
                Ok(DType::Bool)
            }
            Expr::Not(a) => {
                let ta = a.infer_dtype(buffer)?;
                if ta != DType::Bool {
                    return err(format!("`!` on {ta}, needs bool"));
                }
                Ok(DType::Bool)
            }
            Expr::Select {
                cond,
                then,
                otherwise,
            } => {
                let tc = cond.infer_dtype(buffer)?;
                if tc != DType::Bool {
                    return err(format!("select condition of dtype {tc}, needs bool"));
                }
                let (tt, to) = (then.infer_dtype(buffer)?, otherwise.infer_dtype(buffer)?);
                if tt != to {
                    return err(format!("select branches have dtypes {tt} and {to}"));
                }
                Ok(tt)
            }
            Expr::Cast { dtype, value } => {
                value.infer_dtype(buffer)?;
                Ok(*dtype)
            }
            Expr::Load { buf, indices } => {
                for (d, i) in indices.iter().enumerate() {
                    let t = i.infer_dtype(buffer)?;
                    if !t.is_int() {
                        return err(format!(
                            "index {d} of a load has dtype {t}, needs an integer"
                        ));
                    }
                }
                buffer(*buf).ok_or_else(|| TypeError(format!("load of unknown buffer {}", buf.0)))
            }
            Expr::Call { intrinsic, args } => {
                if args.len() != intrinsic.arity() {
                    return err(format!(
                        "{} takes {} arguments, given {}",
                        intrinsic.name(),
                        intrinsic.arity(),
                        args.len()
                    ));
                }
                let mut ty = None;
                for a in args {
                    let t = a.infer_dtype(buffer)?;
                    if ty.is_some_and(|ty| ty != t) {
                        return err(format!("arguments of {} differ in dtype", intrinsic.name()));
                    }
                    ty = Some(t);
                }
                let ty = ty.unwrap_or(DType::F32);
                let ok = ty.is_float() || (*intrinsic == Intrinsic::Abs && ty.is_int());
                if !ok {
                    return err(format!("{} of dtype {ty}", intrinsic.name()));
                }
                Ok(ty)
            }
        }
    }
}

macro_rules! impl_op {
    ($tr:ident, $method:ident, $op:expr) => {
        impl std::ops::$tr for Expr {
            type Output = Expr;
            fn $method(self, rhs: Expr) -> Expr {
                Expr::binary($op, self, rhs)
            }
        }
    };
}
impl_op!(Add, add, BinOp::Add);
impl_op!(Sub, sub, BinOp::Sub);
impl_op!(Mul, mul, BinOp::Mul);
impl_op!(Div, div, BinOp::Div);

impl fmt::Display for VarId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}
