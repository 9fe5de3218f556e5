//! Tensorization: the micro-kernel patterns a [`Stmt::Tensorized`] body may be an instance of,
//! and their analysis into a description code generators build micro-kernels from.
//!
//! Invariant: [`analyze`] accepts a body only when it is an instance of its intrinsic, and the
//! [`Contraction`] it returns addresses exactly the elements the body's statements access, in
//! the order the body accumulates them. A micro-kernel that computes the description therefore
//! computes what the body computes, bit for bit: the update is an explicit `fma` (one rounding
//! per step, in the body's reduction order) and the epilogue is the body's own expression,
//! evaluated operation by operation (`exp` and `sigmoid` by the approximations of
//! [`crate::math`], within their ulp bounds, as every vector code path computes them).
//!
//! # The contraction pattern
//!
//! Three loop nests over one `Local` f32 tile buffer `T` (loops of extent 1 are ignored: their
//! variable is 0 everywhere):
//!
//! 1. *init*: `T[tile(m, n)] = 0.0` over the whole tile;
//! 2. *update*: loops over `m`, `n` and reduction variables `r₁..r_k`, in any order and with any
//!    annotation: `T[tile(m, n)] = fma(lhs[..], rhs[..], T[tile(m, n)])`;
//! 3. *epilogue*: loops over `m` and `n`: `out[..] = E`, where `E` reads `T[tile(m, n)]` and
//!    other buffers, with the operations of [`Epilogue`].
//!
//! Each nest may guard its store with `if offset + m < bound` (the same guard in all three: a
//! row split that does not divide its axis), where `offset` is an expression of the enclosing
//! loops that is always a multiple of the tile's rows: the tile then holds `bound - offset` rows
//! when that is fewer than `rows`, which is always `bound mod rows` ([`RowLimit`]).
//!
//! `tile(m, n) = c + row_stride·m + n` (`row_stride ≥ cols`). Every other index is affine in the
//! nest's variables: `base + row·m + col·n (+ Σ reduce_i·r_i)`, where `base` is an expression
//! of the enclosing loops. `out` and every operand move along `n` by 0 (a broadcast) or 1 (a
//! contiguous vector), so a micro-kernel holds the tile as `rows` registers rows of `cols`
//! lanes and never gathers. The operands and the tile are f32; the epilogue is typed
//! ([`Epilogue::dtype`] over an f32 accumulator), so it may convert into an `i32`, `i8` or `u8`
//! output.
//!
//! # The 8-bit integer contraction
//!
//! The same three nests over an `i32` tile whose update is
//! `T[tile(m, n)] = T[tile(m, n)] + (i32(lhs[..]) - zl) * (i32(rhs[..]) - zr)` with `i8`/`u8`
//! operands and constant zero points (wrapping `i32` arithmetic: the sum is exact in any
//! order); the init stores `0`. The right operand may also move by 4 along the columns (a
//! panel of 4-byte groups of the reduction, see [`crate::Pack`]'s `group`). The epilogue is
//! typed ([`Epilogue::dtype`]): the accumulator is `i32`, inputs are `i32` or `f32`, casts
//! convert between `f32`, `i32`, `i8` and `u8` as the interpreter does, and the result has the
//! output's type.

use crate::affine::{linearize, Lin};
use crate::expr::{BinOp, BufferId, CmpOp, Expr, Intrinsic, VarId};
use crate::stmt::{Stmt, TensorIntrinsic};
use crate::tir::{PrimFunc, Scope};
use kiln_ir::DType;
use std::collections::BTreeSet;

/// Why a body is not an instance of its intrinsic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TensorizeError(pub String);

fn fail<T>(reason: impl Into<String>) -> Result<T, TensorizeError> {
    Err(TensorizeError(reason.into()))
}

/// Intrinsic calls an [`Epilogue`] may contain: those whose f32 results are exactly specified
/// (so every code generator computes them bit for bit), and `exp`, `sigmoid` and `erf` (GELU),
/// which micro-kernels compute by [`crate::math`]'s approximations (within its bounds of the
/// exact values the loop nest's interpretation gives).
pub const EPILOGUE_CALLS: [Intrinsic; 9] = [
    Intrinsic::Abs,
    Intrinsic::Sqrt,
    Intrinsic::Floor,
    Intrinsic::Ceil,
    Intrinsic::Round,
    Intrinsic::Fma,
    Intrinsic::Exp,
    Intrinsic::Sigmoid,
    Intrinsic::Erf,
];

/// How one buffer is addressed by a contraction, in elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Access {
    pub buf: BufferId,
    /// The element offset at `m = n = r = 0`: an expression of the enclosing loops' variables.
    pub base: Expr,
    /// Element stride per tile row `m`.
    pub row: i64,
    /// Element stride per tile column `n`: 0 (broadcast) or 1 (contiguous); the right operand
    /// of an integer contraction may also step by 4 (groups of the reduction).
    pub col: i64,
    /// Element stride per reduction loop (operands only; empty for the output and epilogue
    /// inputs).
    pub reduce: Vec<i64>,
}

/// The epilogue expression, over the accumulated value and the epilogue inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Epilogue {
    /// The accumulated value `T[tile(m, n)]`.
    Acc,
    /// An f32 constant.
    Const(f32),
    /// `inputs[i]` at `(m, n)`.
    Input(usize),
    /// `Add`, `Sub`, `Mul`, `Div`, `Min`, `Max` (NaN-propagating), in f32.
    Binary(BinOp, Box<Epilogue>, Box<Epilogue>),
    /// `select(a op b, then, otherwise)` on f32 comparands.
    Select {
        op: CmpOp,
        a: Box<Epilogue>,
        b: Box<Epilogue>,
        then: Box<Epilogue>,
        otherwise: Box<Epilogue>,
    },
    /// One of [`EPILOGUE_CALLS`].
    Call(Intrinsic, Vec<Epilogue>),
    /// An `i32` constant (integer contractions).
    Int(i32),
    /// A conversion to `f32`, `i32`, `i8` or `u8` (integer contractions), as the interpreter
    /// converts: float to integer truncates and saturates (NaN is 0), integer to integer wraps.
    Cast(DType, Box<Epilogue>),
}

/// A value of an epilogue: `f32`, or an integer held in an `i32` (an `i8` or `u8` value after a
/// cast to that type).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    F32(f32),
    I32(i32),
}

impl Scalar {
    /// The value as an `f32` (an integer converted).
    pub fn as_f32(self) -> f32 {
        match self {
            Scalar::F32(x) => x,
            Scalar::I32(i) => i as f32,
        }
    }

    /// The value as an `i32` (a float converted as the interpreter converts).
    pub fn as_i32(self) -> i32 {
        match self {
            Scalar::F32(x) => x as i32,
            Scalar::I32(i) => i,
        }
    }
}

/// Whether `d` is a type an integer contraction's epilogue values may have.
fn epilogue_type(d: DType) -> bool {
    matches!(d, DType::F32 | DType::I32 | DType::I8 | DType::U8)
}

impl Epilogue {
    /// Calls `f` on this node and every sub-node, parents first.
    pub fn walk(&self, f: &mut dyn FnMut(&Epilogue)) {
        f(self);
        match self {
            Epilogue::Acc | Epilogue::Const(_) | Epilogue::Input(_) => {}
            Epilogue::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            Epilogue::Select {
                a,
                b,
                then,
                otherwise,
                ..
            } => {
                for e in [a, b, then, otherwise] {
                    e.walk(f);
                }
            }
            Epilogue::Call(_, args) => args.iter().for_each(|a| a.walk(f)),
            Epilogue::Int(_) => {}
            Epilogue::Cast(_, x) => x.walk(f),
        }
    }

    /// The type of the value, given the accumulator's and the inputs' types; an error names
    /// what is ill-typed (operands of different types, integer division, a call on integers,
    /// a cast outside `f32`, `i32`, `i8`, `u8`).
    pub fn dtype(&self, acc: DType, inputs: &[DType]) -> Result<DType, TensorizeError> {
        let ty = |e: &Epilogue| e.dtype(acc, inputs);
        let int = |d: DType| matches!(d, DType::I32 | DType::I8 | DType::U8);
        Ok(match self {
            Epilogue::Acc => acc,
            Epilogue::Const(_) => DType::F32,
            Epilogue::Int(_) => DType::I32,
            Epilogue::Input(i) => *inputs
                .get(*i)
                .ok_or_else(|| TensorizeError(format!("epilogue input {i} missing")))?,
            Epilogue::Binary(op, a, b) => {
                let (a, b) = (ty(a)?, ty(b)?);
                let ok = a == b
                    && (a == DType::F32
                        || a == DType::I32
                            && matches!(
                                op,
                                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Min | BinOp::Max
                            ));
                if !ok {
                    return fail(format!("epilogue {op:?} of {a} and {b}"));
                }
                a
            }
            Epilogue::Select {
                a,
                b,
                then,
                otherwise,
                ..
            } => {
                let (a, b, t, o) = (ty(a)?, ty(b)?, ty(then)?, ty(otherwise)?);
                if a != b || t != o || int(a) && a != DType::I32 || int(t) && t != DType::I32 {
                    return fail(format!("epilogue select on {a}/{b} of {t}/{o}"));
                }
                t
            }
            Epilogue::Call(f, args) => {
                for a in args {
                    if ty(a)? != DType::F32 {
                        return fail(format!("epilogue {f:?} of an integer"));
                    }
                }
                DType::F32
            }
            Epilogue::Cast(to, x) => {
                let from = ty(x)?;
                if !epilogue_type(*to) || !epilogue_type(from) {
                    return fail(format!("epilogue cast from {from} to {to}"));
                }
                *to
            }
        })
    }

    /// Evaluates a (well-typed, see [`Epilogue::dtype`]) expression over typed values, as
    /// integer micro-kernels compute it: `i32` arithmetic wraps, casts convert as the
    /// interpreter does.
    pub fn eval_scalar(&self, acc: Scalar, inputs: &dyn Fn(usize) -> Scalar) -> Scalar {
        let ev = |e: &Epilogue| e.eval_scalar(acc, inputs);
        match self {
            Epilogue::Acc => acc,
            Epilogue::Const(c) => Scalar::F32(*c),
            Epilogue::Int(i) => Scalar::I32(*i),
            Epilogue::Input(i) => inputs(*i),
            Epilogue::Binary(op, a, b) => match (ev(a), ev(b)) {
                (Scalar::I32(x), Scalar::I32(y)) => Scalar::I32(match op {
                    BinOp::Add => x.wrapping_add(y),
                    BinOp::Sub => x.wrapping_sub(y),
                    BinOp::Mul => x.wrapping_mul(y),
                    BinOp::Min => x.min(y),
                    BinOp::Max => x.max(y),
                    _ => 0,
                }),
                (x, y) => Scalar::F32(
                    Epilogue::Binary(
                        *op,
                        Box::new(Epilogue::Const(x.as_f32())),
                        Box::new(Epilogue::Const(y.as_f32())),
                    )
                    .eval(0.0, &|_| 0.0),
                ),
            },
            Epilogue::Select {
                op,
                a,
                b,
                then,
                otherwise,
            } => {
                let holds = match (ev(a), ev(b)) {
                    // Compared as integers (f32 would round large values).
                    (Scalar::I32(x), Scalar::I32(y)) => match op {
                        CmpOp::Eq => x == y,
                        CmpOp::Ne => x != y,
                        CmpOp::Lt => x < y,
                        CmpOp::Le => x <= y,
                        CmpOp::Gt => x > y,
                        CmpOp::Ge => x >= y,
                    },
                    (x, y) => op.holds(x.as_f32(), y.as_f32()),
                };
                if holds {
                    ev(then)
                } else {
                    ev(otherwise)
                }
            }
            Epilogue::Call(..) => Scalar::F32(self.eval(acc.as_f32(), &|i| inputs(i).as_f32())),
            Epilogue::Cast(to, x) => {
                let v = ev(x);
                match (*to, v) {
                    (DType::F32, v) => Scalar::F32(v.as_f32()),
                    (DType::I32, v) => Scalar::I32(v.as_i32()),
                    (DType::I8, Scalar::F32(f)) => Scalar::I32(i32::from(f as i8)),
                    (DType::U8, Scalar::F32(f)) => Scalar::I32(i32::from(f as u8)),
                    (DType::I8, Scalar::I32(i)) => Scalar::I32(i32::from(i as i8)),
                    (DType::U8, Scalar::I32(i)) => Scalar::I32(i32::from(i as u8)),
                    (_, v) => v,
                }
            }
        }
    }

    /// Evaluates the expression in f32 as micro-kernels do (`exp` and `sigmoid` by
    /// [`crate::math`]).
    pub fn eval(&self, acc: f32, inputs: &dyn Fn(usize) -> f32) -> f32 {
        let ev = |e: &Epilogue| e.eval(acc, inputs);
        match self {
            Epilogue::Acc => acc,
            Epilogue::Const(c) => *c,
            Epilogue::Input(i) => inputs(*i),
            Epilogue::Binary(op, a, b) => {
                let (a, b) = (ev(a), ev(b));
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Min if a.is_nan() || b.is_nan() => f32::NAN,
                    BinOp::Max if a.is_nan() || b.is_nan() => f32::NAN,
                    BinOp::Min => a.min(b),
                    BinOp::Max => a.max(b),
                    _ => f32::NAN,
                }
            }
            Epilogue::Select {
                op,
                a,
                b,
                then,
                otherwise,
            } => {
                if op.holds(ev(a), ev(b)) {
                    ev(then)
                } else {
                    ev(otherwise)
                }
            }
            Epilogue::Call(f, args) => {
                let x: Vec<f32> = args.iter().map(ev).collect();
                match (f, x.as_slice()) {
                    (Intrinsic::Abs, [a]) => a.abs(),
                    (Intrinsic::Sqrt, [a]) => a.sqrt(),
                    (Intrinsic::Floor, [a]) => a.floor(),
                    (Intrinsic::Ceil, [a]) => a.ceil(),
                    (Intrinsic::Round, [a]) => a.round_ties_even(),
                    (Intrinsic::Fma, [a, b, c]) => a.mul_add(*b, *c),
                    (Intrinsic::Exp, [a]) => crate::math::exp(*a),
                    (Intrinsic::Sigmoid, [a]) => crate::math::sigmoid(*a),
                    (Intrinsic::Erf, [a]) => crate::math::erf(*a),
                    _ => f32::NAN,
                }
            }
            Epilogue::Int(_) | Epilogue::Cast(..) => self
                .eval_scalar(Scalar::F32(acc), &|i| Scalar::F32(inputs(i)))
                .as_f32(),
        }
    }
}

/// A register-tile contraction (see the module doc), element strides and extents.
#[derive(Clone, Debug, PartialEq)]
pub struct Contraction {
    /// Tile rows (`m` extent, 1 when the tile has no row loop).
    pub rows: usize,
    /// Tile columns (`n` extent).
    pub cols: usize,
    /// Extents of the reduction loops, outermost first (the accumulation order).
    pub reduce: Vec<usize>,
    pub lhs: Access,
    pub rhs: Access,
    pub out: Access,
    /// The buffers the epilogue reads besides the tile, distinct accesses.
    pub inputs: Vec<Access>,
    pub epilogue: Epilogue,
    /// The guard of a ragged row split: only rows `m` with `offset + m < bound` exist.
    pub row_limit: Option<RowLimit>,
    /// What the operands are and how they multiply.
    pub kind: ContractionKind,
}

/// The element types of a contraction.
#[derive(Clone, Debug, PartialEq)]
pub enum ContractionKind {
    /// f32 operands and tile; the update is a fused multiply-add. The epilogue is typed as an
    /// integer contraction's is (over an f32 accumulator): it may read `i32` inputs and convert
    /// into an `i32`, `i8` or `u8` output (a quantisation fused after a float convolution).
    F32 {
        /// The output's type and each epilogue input's (`f32` or `i32`).
        out: DType,
        inputs: Vec<DType>,
    },
    /// 8-bit integer operands with zero points, an `i32` tile (see the module doc).
    Int8(IntContraction),
}

/// The types and zero points of an 8-bit integer contraction.
#[derive(Clone, Debug, PartialEq)]
pub struct IntContraction {
    /// `i8` or `u8`.
    pub lhs: DType,
    pub rhs: DType,
    pub lhs_zp: i32,
    pub rhs_zp: i32,
    /// The output's type (`f32`, `i32`, `i8` or `u8`) and each epilogue input's (`f32` or
    /// `i32`).
    pub out: DType,
    pub inputs: Vec<DType>,
}

/// Tile rows `m` exist where `offset + m < bound`; `offset` (an expression of the enclosing
/// loops) is always a multiple of the tile's rows, so a partial tile has [`RowLimit::tail`]
/// rows.
#[derive(Clone, Debug, PartialEq)]
pub struct RowLimit {
    pub offset: Expr,
    pub bound: i64,
}

impl RowLimit {
    /// The rows of a partial tile of `rows` rows: `bound mod rows` (0: tiles are full or
    /// empty).
    pub fn tail(&self, rows: usize) -> usize {
        self.bound.rem_euclid(rows.max(1) as i64) as usize
    }
}

impl Contraction {
    /// Multiply-adds per call.
    pub fn macs(&self) -> u64 {
        (self.rows * self.cols) as u64 * self.reduce.iter().map(|&e| e as u64).product::<u64>()
    }
}

/// Checks that `body` is an instance of `intrinsic` in `func` and describes it.
pub fn analyze(
    intrinsic: TensorIntrinsic,
    body: &Stmt,
    func: &PrimFunc,
) -> Result<Contraction, TensorizeError> {
    match intrinsic {
        TensorIntrinsic::Contraction => contraction(body, func),
    }
}

/// A perfect loop nest ending in one store; loops of extent 1 dropped (their variables are in
/// `unit`).
struct Nest<'a> {
    loops: Vec<(VarId, usize)>,
    unit: BTreeSet<VarId>,
    /// The condition of the one `if` (without `else`) around the store, if any.
    guard: Option<&'a Expr>,
    buf: BufferId,
    indices: &'a [Expr],
    value: &'a Expr,
}

fn nest<'a>(s: &'a Stmt, what: &str) -> Result<Nest<'a>, TensorizeError> {
    let mut loops = vec![];
    let mut unit = BTreeSet::new();
    let mut guard = None;
    let mut cur = s;
    loop {
        match cur {
            Stmt::IfThenElse {
                cond,
                then,
                otherwise: None,
            } if guard.is_none() => {
                guard = Some(cond);
                cur = then;
            }
            Stmt::For {
                var, extent, body, ..
            } => {
                if *extent == 1 {
                    unit.insert(*var);
                } else {
                    loops.push((*var, *extent));
                }
                cur = body;
            }
            Stmt::Store {
                buf,
                indices,
                value,
            } => {
                return Ok(Nest {
                    loops,
                    unit,
                    guard,
                    buf: *buf,
                    indices,
                    value,
                })
            }
            _ => {
                return fail(format!(
                    "the {what} is not a perfect loop nest around one store"
                ))
            }
        }
    }
}

impl Nest<'_> {
    fn vars(&self) -> BTreeSet<VarId> {
        self.loops.iter().map(|(v, _)| *v).collect()
    }

    fn extent(&self, v: VarId) -> usize {
        self.loops
            .iter()
            .find(|(w, _)| *w == v)
            .map_or(1, |(_, e)| *e)
    }

    /// The row-major element offset of `indices` into `buf`, affine in the nest's variables.
    fn flat(
        &self,
        func: &PrimFunc,
        buf: BufferId,
        indices: &[Expr],
    ) -> Result<Lin, TensorizeError> {
        let Some(decl) = func.buffer(buf) else {
            return fail(format!("unknown buffer {}", buf.0));
        };
        if indices.len() != decl.shape.len() {
            return fail(format!("%{}: wrong index count", decl.name));
        }
        let unit = &self.unit;
        let zero = |v: VarId| unit.contains(&v).then(|| Expr::int(0));
        let vars = self.vars();
        let mut total = Lin::default();
        let mut stride: i128 = 1;
        for (i, &d) in indices.iter().zip(&decl.shape).rev() {
            let lin = linearize(&i.substitute(&zero), &vars).ok_or_else(|| {
                TensorizeError(format!("an index of %{} is not affine", decl.name))
            })?;
            total = total
                .add(lin.scale(stride).ok_or_else(overflow)?)
                .ok_or_else(overflow)?;
            stride = stride.checked_mul(d as i128).ok_or_else(overflow)?;
        }
        Ok(total)
    }
}

fn overflow() -> TensorizeError {
    TensorizeError("index arithmetic overflows".into())
}

fn coeff(l: &Lin, v: Option<VarId>) -> i128 {
    v.and_then(|v| l.coeffs.get(&v).copied()).unwrap_or(0)
}

fn small(x: i128) -> Result<i64, TensorizeError> {
    i64::try_from(x).map_err(|_| overflow())
}

/// `rest + c` of a linear form as an expression of the enclosing loops.
fn base_expr(l: &Lin) -> Result<Expr, TensorizeError> {
    let c = small(l.c)?;
    Ok(match l.rest_expr() {
        None => Expr::int(c),
        Some(r) if c == 0 => r,
        Some(r) if c < 0 => r - Expr::int(-c),
        Some(r) => r + Expr::int(c),
    })
}

/// The tile's layout: `tile(m, n) = c + row_stride·m + n`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct TileLayout {
    buf: BufferId,
    c: i128,
    row_stride: i128,
    rows: usize,
    cols: usize,
}

impl TileLayout {
    /// The (row, column) variables of an access of the tile in `nest`; checks it covers the
    /// whole tile exactly once.
    fn vars_of(
        &self,
        lin: &Lin,
        nest: &Nest,
        what: &str,
    ) -> Result<(Option<VarId>, Option<VarId>), TensorizeError> {
        if !lin.rest.is_empty() || lin.c != self.c {
            return fail(format!("the {what} addresses the tile at another offset"));
        }
        let (mut m, mut n) = (None, None);
        for (&v, &a) in &lin.coeffs {
            let e = nest.extent(v);
            if a == 1 && n.is_none() && e == self.cols {
                n = Some(v);
            } else if a == self.row_stride && m.is_none() && e == self.rows && self.rows > 1 {
                m = Some(v);
            } else {
                return fail(format!("the {what} does not cover the tile row by column"));
            }
        }
        if n.is_none() && self.cols > 1 || m.is_none() && self.rows > 1 {
            return fail(format!("the {what} does not cover the whole tile"));
        }
        Ok((m, n))
    }
}

impl Nest<'_> {
    /// The nest's guard as a row limit on its row variable `m`: `offset + m < bound` with
    /// `offset` free of the nest's loops and a multiple of `rows`.
    fn row_limit(
        &self,
        m: Option<VarId>,
        rows: usize,
        what: &str,
    ) -> Result<Option<RowLimit>, TensorizeError> {
        let Some(cond) = self.guard else {
            return Ok(None);
        };
        let bad = || {
            fail(format!(
                "the {what}'s guard is not a limit on the tile rows"
            ))
        };
        let (
            Expr::Cmp {
                op: CmpOp::Lt,
                a,
                b,
            },
            Some(m),
        ) = (cond, m)
        else {
            return bad();
        };
        let Some(bound) = b.as_int() else {
            return bad();
        };
        let unit = &self.unit;
        let a = a.substitute(&|v: VarId| unit.contains(&v).then(|| Expr::int(0)));
        let Some(lin) = linearize(&a, &self.vars()) else {
            return bad();
        };
        if lin.coeffs.len() != 1 || coeff(&lin, Some(m)) != 1 {
            return bad();
        }
        let offset = base_expr(&lin)?;
        if !offset.is_multiple_of(rows as i64, &|_| false) {
            return fail(format!(
                "the {what}'s row guard starts tiles off a multiple of {rows} rows"
            ));
        }
        Ok(Some(RowLimit { offset, bound }))
    }
}

fn contraction(body: &Stmt, func: &PrimFunc) -> Result<Contraction, TensorizeError> {
    let parts: &[Stmt] = match body {
        Stmt::Seq(v) => v,
        _ => return fail("a contraction is three loop nests: init, update, epilogue"),
    };
    let [init, update, epi] = parts else {
        return fail("a contraction is three loop nests: init, update, epilogue");
    };
    let (init, update, epi) = (
        nest(init, "init")?,
        nest(update, "update")?,
        nest(epi, "epilogue")?,
    );

    // The update fixes the tile and the operands.
    let tile_buf = update.buf;
    let tdecl = func
        .buffer(tile_buf)
        .ok_or_else(|| TensorizeError("unknown tile buffer".into()))?;
    if tdecl.scope != Scope::Local {
        return fail(format!(
            "the accumulator %{} is not a local tile",
            tdecl.name
        ));
    }
    let is_tile = |e: &Expr| matches!(e, Expr::Load { buf, indices } if *buf == tile_buf && indices == update.indices);
    let (lhs, rhs, zps) = match update.value {
        Expr::Call {
            intrinsic: Intrinsic::Fma,
            args,
        } => {
            let [lhs, rhs, acc] = args.as_slice() else {
                return fail("fma takes three arguments");
            };
            if !is_tile(acc) {
                return fail("the update does not accumulate into the element it stores");
            }
            (lhs, rhs, None)
        }
        Expr::Binary {
            op: BinOp::Add,
            a,
            b,
        } => {
            let product = match (is_tile(a), is_tile(b)) {
                (true, false) => b,
                (false, true) => a,
                _ => return fail("the update does not accumulate into the element it stores"),
            };
            let Expr::Binary {
                op: BinOp::Mul,
                a: l,
                b: r,
            } = product.as_ref()
            else {
                return fail("the integer update does not add a product");
            };
            let ((lhs, zl), (rhs, zr)) = (widened(l)?, widened(r)?);
            (lhs, rhs, Some((zl, zr)))
        }
        _ => return fail("the update is not `T = fma(lhs, rhs, T)` or `T = T + lhs * rhs`"),
    };
    // The types every buffer must have.
    let dtype_of = |b: BufferId| func.buffer(b).map(|d| d.dtype);
    let check = |b: BufferId, ok: &dyn Fn(DType) -> bool, what: &str| match dtype_of(b) {
        Some(d) if ok(d) => Ok(d),
        Some(d) => fail(format!("the {what} is {d}")),
        None => fail(format!("the {what} is an unknown buffer")),
    };
    let byte = |d: DType| matches!(d, DType::I8 | DType::U8);
    let operand_buf = |e: &Expr| match e {
        Expr::Load { buf, .. } => Ok(*buf),
        _ => fail("an operand is not a load"),
    };
    let int8 = zps.is_some();
    if int8 {
        check(tile_buf, &|d| d == DType::I32, "integer accumulator")?;
        check(operand_buf(lhs)?, &byte, "left operand")?;
        check(operand_buf(rhs)?, &byte, "right operand")?;
    } else {
        let f32_ = |d: DType| d == DType::F32;
        check(tile_buf, &f32_, "accumulator")?;
        check(operand_buf(lhs)?, &f32_, "left operand")?;
        check(operand_buf(rhs)?, &f32_, "right operand")?;
    }
    let t_upd = update.flat(func, tile_buf, update.indices)?;
    if !t_upd.rest.is_empty() {
        return fail("the tile index depends on enclosing loops");
    }
    // Tile columns move by 1, rows by a larger stride; every other update loop reduces.
    let mut col_var = None;
    let mut row_var = None;
    for (&v, &a) in &t_upd.coeffs {
        if a == 1 && col_var.is_none() {
            col_var = Some(v);
        } else if row_var.is_none() {
            row_var = Some(v);
        } else {
            return fail("the tile has more than two dimensions");
        }
    }
    let Some(col_var) = col_var else {
        return fail("the tile has no contiguous column loop");
    };
    let cols = update.extent(col_var);
    let rows = row_var.map_or(1, |v| update.extent(v));
    let row_stride = coeff(&t_upd, row_var);
    if rows > 1 && row_stride < cols as i128 {
        return fail("tile rows overlap");
    }
    let layout = TileLayout {
        buf: tile_buf,
        c: t_upd.c,
        row_stride,
        rows,
        cols,
    };
    let reduce_vars: Vec<(VarId, usize)> = update
        .loops
        .iter()
        .copied()
        .filter(|(v, _)| Some(*v) != row_var && *v != col_var)
        .collect();
    let operand = |e: &Expr, what: &str| -> Result<Access, TensorizeError> {
        let Expr::Load { buf, indices } = e else {
            return fail(format!("the {what} operand is not a load"));
        };
        if *buf == tile_buf {
            return fail(format!("the {what} operand reads the tile"));
        }
        let lin = update.flat(func, *buf, indices)?;
        let col = small(coeff(&lin, Some(col_var)))?;
        if col != 0 && col != 1 && !(int8 && col == 4 && what == "right") {
            return fail(format!(
                "the {what} operand moves by {col} along the tile columns"
            ));
        }
        Ok(Access {
            buf: *buf,
            base: base_expr(&lin)?,
            row: small(coeff(&lin, row_var))?,
            col,
            reduce: reduce_vars
                .iter()
                .map(|(v, _)| small(coeff(&lin, Some(*v))))
                .collect::<Result<_, _>>()?,
        })
    };
    let lhs = operand(lhs, "left")?;
    let rhs = operand(rhs, "right")?;

    // The init zeroes exactly the tile.
    if init.buf != tile_buf {
        return fail("the init does not write the tile");
    }
    match init.value {
        Expr::Float {
            value,
            dtype: DType::F32,
        } if *value == 0.0 && !int8 => {}
        Expr::Int {
            value: 0,
            dtype: DType::I32,
        } if int8 => {}
        _ => return fail("the init does not store zero"),
    }
    let t_init = init.flat(func, tile_buf, init.indices)?;
    let (init_m, _) = layout.vars_of(&t_init, &init, "init")?;
    if init.loops.len() != usize::from(rows > 1) + usize::from(cols > 1) {
        return fail("the init has loops outside the tile");
    }

    // The epilogue: every load of the tile is T[tile(m, n)].
    if epi.buf == tile_buf {
        return fail("the epilogue writes the tile");
    }
    let mut tile_loads = vec![];
    epi.value.walk(&mut |e| {
        if let Expr::Load { buf, indices } = e {
            if *buf == tile_buf {
                tile_loads.push(indices.clone());
            }
        }
    });
    let Some(first) = tile_loads.first() else {
        return fail("the epilogue does not read the tile");
    };
    if tile_loads.iter().any(|l| l != first) {
        return fail("the epilogue reads more than one tile element");
    }
    let t_epi = epi.flat(func, tile_buf, first)?;
    let (em, en) = layout.vars_of(&t_epi, &epi, "epilogue")?;
    if epi.loops.len() != usize::from(em.is_some()) + usize::from(en.is_some()) {
        return fail("the epilogue has loops outside the tile");
    }
    let access = |buf: BufferId, indices: &[Expr], what: &str| -> Result<Access, TensorizeError> {
        let lin = epi.flat(func, buf, indices)?;
        let col = small(coeff(&lin, en))?;
        if col != 0 && col != 1 {
            return fail(format!("the {what} moves by {col} along the tile columns"));
        }
        Ok(Access {
            buf,
            base: base_expr(&lin)?,
            row: small(coeff(&lin, em))?,
            col,
            reduce: vec![],
        })
    };
    let out = access(epi.buf, epi.indices, "output")?;
    if out.col != 1 && cols > 1 {
        return fail("the output is not contiguous along the tile columns");
    }
    let mut inputs: Vec<Access> = vec![];
    let epilogue = epilogue_of(epi.value, &mut |buf, indices| {
        if buf == tile_buf {
            return Ok(Epilogue::Acc);
        }
        if buf == epi.buf {
            return fail("the epilogue reads its output");
        }
        let a = access(buf, indices, "epilogue input")?;
        let i = match inputs.iter().position(|x| *x == a) {
            Some(i) => i,
            None => {
                inputs.push(a);
                inputs.len() - 1
            }
        };
        Ok(Epilogue::Input(i))
    })?;
    // A ragged row split guards all three nests alike.
    let limits = [
        init.row_limit(init_m, rows, "init")?,
        update.row_limit(row_var, rows, "update")?,
        epi.row_limit(em, rows, "epilogue")?,
    ];
    if limits.iter().any(|l| *l != limits[0]) {
        return fail("the init, update and epilogue guard different rows");
    }
    let [row_limit, ..] = limits;
    let out_dtype = check(out.buf, &epilogue_type, "output")?;
    let input_dtypes = inputs
        .iter()
        .map(|a| {
            check(
                a.buf,
                &|d| matches!(d, DType::F32 | DType::I32),
                "epilogue input",
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let kind = match zps {
        None => {
            let ty = epilogue.dtype(DType::F32, &input_dtypes)?;
            if ty != out_dtype {
                return fail(format!("the epilogue computes {ty} into {out_dtype}"));
            }
            ContractionKind::F32 {
                out: out_dtype,
                inputs: input_dtypes,
            }
        }
        Some((lhs_zp, rhs_zp)) => {
            let ty = epilogue.dtype(DType::I32, &input_dtypes)?;
            if ty != out_dtype {
                return fail(format!("the epilogue computes {ty} into {out_dtype}"));
            }
            ContractionKind::Int8(IntContraction {
                lhs: check(lhs.buf, &byte, "left operand")?,
                rhs: check(rhs.buf, &byte, "right operand")?,
                lhs_zp,
                rhs_zp,
                out: out_dtype,
                inputs: input_dtypes,
            })
        }
    };
    Ok(Contraction {
        rows,
        cols,
        reduce: reduce_vars.iter().map(|(_, e)| *e).collect(),
        lhs,
        rhs,
        out,
        inputs,
        epilogue,
        row_limit,
        kind,
    })
}

/// `i32(load) - z` or `i32(load)` (z = 0) of an 8-bit buffer: the load and `z`.
fn widened(e: &Expr) -> Result<(&Expr, i32), TensorizeError> {
    let (x, z) = match e {
        Expr::Binary {
            op: BinOp::Sub,
            a,
            b,
        } => match b.as_ref() {
            Expr::Int {
                value,
                dtype: DType::I32,
            } => (a.as_ref(), i32::try_from(*value).map_err(|_| overflow())?),
            _ => return fail("an integer operand subtracts something other than a constant"),
        },
        other => (other, 0),
    };
    match x {
        Expr::Cast {
            dtype: DType::I32,
            value,
        } if matches!(value.as_ref(), Expr::Load { .. }) => Ok((value.as_ref(), z)),
        _ => fail("an integer operand is not a widened load"),
    }
}

type LoadFn<'a> = dyn FnMut(BufferId, &[Expr]) -> Result<Epilogue, TensorizeError> + 'a;

impl Epilogue {
    /// The epilogue form of expression `e`, each load replaced by what `load` makes of it
    /// (an [`Epilogue::Input`], usually): an error for an operation epilogues do not have.
    /// Elementwise loops compiled as pointwise micro-kernels take their expression this way.
    pub fn of_expr(e: &Expr, load: &mut LoadFn) -> Result<Epilogue, TensorizeError> {
        epilogue_of(e, load)
    }
}

fn epilogue_of(e: &Expr, load: &mut LoadFn) -> Result<Epilogue, TensorizeError> {
    let bx = Box::new;
    Ok(match e {
        Expr::Load { buf, indices } => load(*buf, indices)?,
        Expr::Float {
            value,
            dtype: DType::F32,
        } => Epilogue::Const(*value as f32),
        Expr::Int {
            value,
            dtype: DType::I32,
        } => Epilogue::Int(i32::try_from(*value).map_err(|_| overflow())?),
        Expr::Cast { dtype, value } if epilogue_type(*dtype) => {
            Epilogue::Cast(*dtype, bx(epilogue_of(value, load)?))
        }
        Expr::Binary { op, a, b }
            if matches!(
                op,
                BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Min | BinOp::Max
            ) =>
        {
            Epilogue::Binary(*op, bx(epilogue_of(a, load)?), bx(epilogue_of(b, load)?))
        }
        Expr::Select {
            cond,
            then,
            otherwise,
        } => match cond.as_ref() {
            Expr::Cmp { op, a, b } => Epilogue::Select {
                op: *op,
                a: bx(epilogue_of(a, load)?),
                b: bx(epilogue_of(b, load)?),
                then: bx(epilogue_of(then, load)?),
                otherwise: bx(epilogue_of(otherwise, load)?),
            },
            _ => return fail("an epilogue select tests something other than one comparison"),
        },
        Expr::Call { intrinsic, args } if EPILOGUE_CALLS.contains(intrinsic) => Epilogue::Call(
            *intrinsic,
            args.iter()
                .map(|a| epilogue_of(a, load))
                .collect::<Result<_, _>>()?,
        ),
        other => {
            return fail(format!(
                "the epilogue contains an unsupported operation: {other:?}"
            ))
        }
    })
}

/// Per reduction step (outermost loop first), the element offsets of an operand relative to its
/// base and tile position: `Σ reduce_i · r_i`, in accumulation order.
pub fn reduce_offsets(a: &Access, extents: &[usize]) -> Vec<i64> {
    let mut out = vec![0i64];
    for (&e, &s) in extents.iter().zip(&a.reduce) {
        out = out
            .iter()
            .flat_map(|&o| (0..e as i64).map(move |r| o + r * s))
            .collect();
    }
    out
}
