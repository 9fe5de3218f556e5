//! The verifier of the loop IR, and the interval analysis it (and lowering) relies on.
//!
//! Invariant: a [`PrimFunc`] accepted by [`verify`] is well typed (every store's value has its
//! buffer's dtype, every index is an integer, operands agree), binds each variable exactly once
//! and uses it only inside its loop, names no variable like an enclosing loop variable (so the
//! text form is unambiguous), only touches declared buffers of at most
//! [`kiln_ir::MAX_TENSOR_BYTES`] with indices *proven* inside their shapes, and has vectorized
//! loops only as innermost loops of extent 2 or more over straight-line stores (code
//! generation emits 4-lane chunks and a scalar tail), and no
//! parallel loop inside another. Consumers (the interpreter, codegen) need no bounds checks.
//!
//! Bounds are proven by interval arithmetic over the enclosing loop ranges, refined by *facts*:
//! the conditions of enclosing `if`s and of `select`s guarding a load. A fact `e < c` bounds every
//! occurrence of an expression structurally equal to `e`, which is how tail guards emitted by
//! lowering (`i.0 * 4 + i.1 < 10`) prove the matching index (`i.0 * 4 + i.1`).

use crate::expr::{BinOp, BufferId, CmpOp, Expr, VarId};
use crate::stmt::{ForKind, Stmt};
use crate::tir::{PrimFunc, Scope};
use kiln_ir::{DType, TensorType};

/// Why a function failed verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("buffer %{name}: {reason}")]
    BadBuffer { name: String, reason: String },
    #[error("params: {0}")]
    BadParams(String),
    #[error("variable `{name}` used outside a loop binding it (in {context})")]
    UnboundVar { name: String, context: String },
    #[error("variable `{name}` is bound twice (loop {context})")]
    Rebound { name: String, context: String },
    #[error("variable name `{name}` shadows an enclosing loop variable (in {context})")]
    Shadowed { name: String, context: String },
    #[error("type error in {context}: {reason}")]
    Type { context: String, reason: String },
    #[error("{context}: {buffer} takes {rank} indices, given {given}")]
    Rank {
        context: String,
        buffer: String,
        rank: usize,
        given: usize,
    },
    #[error("{context}: index {dim} of %{buffer} may lie outside 0..{extent} ({range})")]
    OutOfBounds {
        context: String,
        buffer: String,
        dim: usize,
        extent: usize,
        range: String,
    },
    #[error("unknown buffer id {0}")]
    UnknownBuffer(u32),
    #[error("loop `{name}`: {reason}")]
    BadLoop { name: String, reason: String },
    #[error("{context}: the tensorized region is not an instance of its intrinsic: {reason}")]
    Tensorized { context: String, reason: String },
}

/// A closed integer interval; `lo > hi` never happens for reachable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub lo: i128,
    pub hi: i128,
}

impl Interval {
    /// `[lo, hi]`.
    pub fn new(lo: i128, hi: i128) -> Self {
        Interval { lo, hi }
    }

    fn point(v: i128) -> Self {
        Interval { lo: v, hi: v }
    }

    fn intersect(self, o: Interval) -> Interval {
        Interval {
            lo: self.lo.max(o.lo),
            hi: self.hi.min(o.hi),
        }
    }

    fn union(self, o: Interval) -> Interval {
        Interval {
            lo: self.lo.min(o.lo),
            hi: self.hi.max(o.hi),
        }
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}]", self.lo, self.hi)
    }
}

/// Interval analysis of integer expressions: variable ranges plus facts from guards.
#[derive(Clone, Debug, Default)]
pub struct Bounds {
    ranges: Vec<Option<Interval>>,
    facts: Vec<(Expr, Interval)>,
}

const I64_RANGE: Interval = Interval {
    lo: i64::MIN as i128,
    hi: i64::MAX as i128,
};

fn checked(iv: Interval) -> Option<Interval> {
    (iv.lo >= I64_RANGE.lo && iv.hi <= I64_RANGE.hi).then_some(iv)
}

fn floor_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

impl Bounds {
    /// No variables known.
    pub fn new() -> Self {
        Bounds::default()
    }

    /// Declares `v` to range over `0..extent`.
    pub fn set_loop(&mut self, v: VarId, extent: usize) {
        let i = v.index();
        if self.ranges.len() <= i {
            self.ranges.resize(i + 1, None);
        }
        self.ranges[i] = Some(Interval::new(0, extent as i128 - 1));
    }

    /// Forgets the range of `v`.
    pub fn unset(&mut self, v: VarId) {
        if let Some(r) = self.ranges.get_mut(v.index()) {
            *r = None;
        }
    }

    /// The range of `v`, if it is bound.
    pub fn range(&self, v: VarId) -> Option<Interval> {
        self.ranges.get(v.index()).copied().flatten()
    }

    /// Number of facts (to restore with [`Bounds::truncate_facts`]).
    pub fn fact_count(&self) -> usize {
        self.facts.len()
    }

    /// Drops facts added after `n`.
    pub fn truncate_facts(&mut self, n: usize) {
        self.facts.truncate(n);
    }

    /// Records what holds when `cond` is true (`negated`: when it is false). Only conjunctions
    /// of comparisons are understood; anything else adds nothing.
    pub fn assume(&mut self, cond: &Expr, negated: bool) {
        match (cond, negated) {
            (Expr::And(a, b), false) => {
                self.assume(a, false);
                self.assume(b, false);
            }
            (Expr::Or(a, b), true) => {
                self.assume(a, true);
                self.assume(b, true);
            }
            (Expr::Not(a), n) => self.assume(a, !n),
            (Expr::Cmp { op, a, b }, n) => {
                let op = if n { op.negated() } else { *op };
                let (ia, ib) = (self.interval(a), self.interval(b));
                // a op b  =>  a in f(ib), b in g(ia)
                let bound = |op: CmpOp, other: Option<Interval>| -> Option<Interval> {
                    let o = other?;
                    let (min, max) = (I64_RANGE.lo, I64_RANGE.hi);
                    Some(match op {
                        CmpOp::Lt => Interval::new(min, o.hi - 1),
                        CmpOp::Le => Interval::new(min, o.hi),
                        CmpOp::Gt => Interval::new(o.lo + 1, max),
                        CmpOp::Ge => Interval::new(o.lo, max),
                        CmpOp::Eq => o,
                        CmpOp::Ne => return None,
                    })
                };
                let flipped = match op {
                    CmpOp::Lt => CmpOp::Gt,
                    CmpOp::Le => CmpOp::Ge,
                    CmpOp::Gt => CmpOp::Lt,
                    CmpOp::Ge => CmpOp::Le,
                    o => o,
                };
                if let Some(iv) = bound(op, ib) {
                    self.facts.push(((**a).clone(), iv));
                }
                if let Some(iv) = bound(flipped, ia) {
                    self.facts.push(((**b).clone(), iv));
                }
            }
            _ => {}
        }
    }

    /// An interval containing every value `e` takes (as an integer), or `None` when unknown.
    pub fn interval(&self, e: &Expr) -> Option<Interval> {
        let natural = self.natural(e);
        let mut iv = natural;
        for (fe, fi) in &self.facts {
            if fe == e {
                iv = Some(match iv {
                    Some(iv) => iv.intersect(*fi),
                    None => *fi,
                });
            }
        }
        iv.and_then(checked)
    }

    fn natural(&self, e: &Expr) -> Option<Interval> {
        match e {
            Expr::Int { value, .. } => Some(Interval::point(*value as i128)),
            Expr::Var(v) => self.range(*v),
            Expr::Binary { op, a, b } => {
                let ia = self.interval(a)?;
                let ib = self.interval(b)?;
                match op {
                    BinOp::Add => Some(Interval::new(ia.lo + ib.lo, ia.hi + ib.hi)),
                    BinOp::Sub => Some(Interval::new(ia.lo - ib.hi, ia.hi - ib.lo)),
                    BinOp::Mul => {
                        let c = [ia.lo * ib.lo, ia.lo * ib.hi, ia.hi * ib.lo, ia.hi * ib.hi];
                        Some(Interval::new(*c.iter().min()?, *c.iter().max()?))
                    }
                    BinOp::FloorDiv | BinOp::Div => {
                        if ib.lo <= 0 && ib.hi >= 0 {
                            return None;
                        }
                        let d = |x: i128, y: i128| {
                            if *op == BinOp::Div {
                                x / y
                            } else {
                                floor_div(x, y)
                            }
                        };
                        let c = [
                            d(ia.lo, ib.lo),
                            d(ia.lo, ib.hi),
                            d(ia.hi, ib.lo),
                            d(ia.hi, ib.hi),
                        ];
                        Some(Interval::new(*c.iter().min()?, *c.iter().max()?))
                    }
                    BinOp::FloorMod => {
                        if ib.lo <= 0 {
                            return None;
                        }
                        if ia.lo >= 0 && ia.hi < ib.lo {
                            Some(ia)
                        } else {
                            Some(Interval::new(0, ib.hi - 1))
                        }
                    }
                    BinOp::Rem => {
                        if ib.lo <= 0 {
                            return None;
                        }
                        if ia.lo >= 0 {
                            Some(Interval::new(0, ia.hi.min(ib.hi - 1)))
                        } else {
                            Some(Interval::new(-(ib.hi - 1), ib.hi - 1))
                        }
                    }
                    BinOp::Min => Some(Interval::new(ia.lo.min(ib.lo), ia.hi.min(ib.hi))),
                    BinOp::Max => Some(Interval::new(ia.lo.max(ib.lo), ia.hi.max(ib.hi))),
                }
            }
            Expr::Select {
                cond,
                then,
                otherwise,
            } => {
                let mut inner = self.clone();
                inner.assume(cond, false);
                let t = inner.interval(then)?;
                let mut inner = self.clone();
                inner.assume(cond, true);
                let o = inner.interval(otherwise)?;
                Some(t.union(o))
            }
            Expr::Cast { dtype, value } if dtype.is_int() => {
                let iv = self.interval(value)?;
                let (lo, hi) = int_range(*dtype);
                (iv.lo >= lo && iv.hi <= hi).then_some(iv)
            }
            _ => None,
        }
    }
}

fn int_range(d: DType) -> (i128, i128) {
    d.int_range().unwrap_or((I64_RANGE.lo, I64_RANGE.hi))
}

/// Checks every invariant listed in the module doc.
pub fn verify(func: &PrimFunc) -> Result<(), VerifyError> {
    let mut names = std::collections::HashSet::new();
    for b in &func.buffers {
        if !names.insert(b.name.as_str()) {
            return Err(VerifyError::BadBuffer {
                name: b.name.clone(),
                reason: "declared twice".into(),
            });
        }
        if let Err(e) = TensorType::new(b.dtype, b.shape.clone()) {
            return Err(VerifyError::BadBuffer {
                name: b.name.clone(),
                reason: e.to_string(),
            });
        }
    }
    for (i, b) in func.buffers.iter().enumerate() {
        let n = func.params.iter().filter(|p| p.index() == i).count();
        let ok = match b.scope {
            Scope::Param => n == 1,
            Scope::Local => n == 0,
        };
        if !ok {
            return Err(VerifyError::BadParams(format!(
                "%{} ({:?}) appears {n} times in params",
                b.name, b.scope
            )));
        }
    }
    if let Some(p) = func.params.iter().find(|p| p.index() >= func.buffers.len()) {
        return Err(VerifyError::UnknownBuffer(p.0));
    }
    let mut v = Verifier {
        func,
        bounds: Bounds::new(),
        bound_ever: vec![false; func.vars.len()],
        in_scope: vec![],
        parallel_depth: 0,
    };
    v.stmt(&func.body)
}

struct Verifier<'a> {
    func: &'a PrimFunc,
    bounds: Bounds,
    bound_ever: Vec<bool>,
    in_scope: Vec<VarId>,
    parallel_depth: usize,
}

impl<'a> Verifier<'a> {
    fn context(&self) -> String {
        match self.in_scope.last() {
            Some(v) => format!("loop `{}`", self.func.var_name(*v)),
            None => format!("function @{}", self.func.name),
        }
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), VerifyError> {
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                let name = self.func.var_name(*var).to_string();
                let Some(seen) = self.bound_ever.get_mut(var.index()) else {
                    return Err(VerifyError::BadLoop {
                        name: format!("v{}", var.0),
                        reason: "variable id outside the function's variable table".into(),
                    });
                };
                if *seen {
                    return Err(VerifyError::Rebound {
                        name,
                        context: self.context(),
                    });
                }
                *seen = true;
                if self.in_scope.iter().any(|v| self.func.var_name(*v) == name) {
                    return Err(VerifyError::Shadowed {
                        name,
                        context: self.context(),
                    });
                }
                if *extent == 0 {
                    return Err(VerifyError::BadLoop {
                        name,
                        reason: "extent 0".into(),
                    });
                }
                match kind {
                    ForKind::Vectorized => {
                        if *extent < 2 {
                            return Err(VerifyError::BadLoop {
                                name,
                                reason: format!("vectorized extent {extent} is below 2"),
                            });
                        }
                        if let Some(what) = non_straight_line(body) {
                            return Err(VerifyError::BadLoop {
                                name,
                                reason: format!(
                                    "vectorized loop contains {what}; only stores are allowed"
                                ),
                            });
                        }
                    }
                    ForKind::Parallel if self.parallel_depth > 0 => {
                        return Err(VerifyError::BadLoop {
                            name,
                            reason: "parallel loop nested in another parallel loop".into(),
                        });
                    }
                    _ => {}
                }
                let par = usize::from(*kind == ForKind::Parallel);
                self.parallel_depth += par;
                self.bounds.set_loop(*var, *extent);
                self.in_scope.push(*var);
                let r = self.stmt(body);
                self.in_scope.pop();
                self.bounds.unset(*var);
                self.parallel_depth -= par;
                r
            }
            Stmt::Seq(v) => v.iter().try_for_each(|s| self.stmt(s)),
            Stmt::Tensorized { intrinsic, body } => {
                self.stmt(body)?;
                crate::tensorize::analyze(*intrinsic, body, self.func)
                    .map(|_| ())
                    .map_err(|e| VerifyError::Tensorized {
                        context: self.context(),
                        reason: e.to_string(),
                    })
            }
            Stmt::Store {
                buf,
                indices,
                value,
            } => {
                let decl = self.access(*buf, indices)?;
                let ty = self.expr(value)?;
                if ty != decl.dtype {
                    return Err(VerifyError::Type {
                        context: self.context(),
                        reason: format!(
                            "store of {ty} into %{} of dtype {}",
                            decl.name, decl.dtype
                        ),
                    });
                }
                Ok(())
            }
            Stmt::IfThenElse {
                cond,
                then,
                otherwise,
            } => {
                let ty = self.expr(cond)?;
                if ty != DType::Bool {
                    return Err(VerifyError::Type {
                        context: self.context(),
                        reason: format!("if condition of dtype {ty}"),
                    });
                }
                let n = self.bounds.fact_count();
                self.bounds.assume(cond, false);
                let r = self.stmt(then);
                self.bounds.truncate_facts(n);
                r?;
                if let Some(o) = otherwise {
                    self.bounds.assume(cond, true);
                    let r = self.stmt(o);
                    self.bounds.truncate_facts(n);
                    r?;
                }
                Ok(())
            }
        }
    }

    /// Checks a load or store's buffer, rank, index types and bounds.
    fn access(
        &mut self,
        buf: BufferId,
        indices: &[Expr],
    ) -> Result<&'a crate::tir::BufferDecl, VerifyError> {
        let func = self.func;
        let decl = func.buffer(buf).ok_or(VerifyError::UnknownBuffer(buf.0))?;
        if indices.len() != decl.shape.len() {
            return Err(VerifyError::Rank {
                context: self.context(),
                buffer: decl.name.clone(),
                rank: decl.shape.len(),
                given: indices.len(),
            });
        }
        for (dim, (i, &extent)) in indices.iter().zip(&decl.shape).enumerate() {
            let ty = self.expr(i)?;
            if !ty.is_int() {
                return Err(VerifyError::Type {
                    context: self.context(),
                    reason: format!("index {dim} of %{} has dtype {ty}", decl.name),
                });
            }
            let iv = self.bounds.interval(i);
            let ok = iv.is_some_and(|iv| iv.lo >= 0 && iv.hi < extent as i128);
            if !ok {
                return Err(VerifyError::OutOfBounds {
                    context: self.context(),
                    buffer: decl.name.clone(),
                    dim,
                    extent,
                    range: iv.map_or_else(|| "unbounded".to_string(), |iv| iv.to_string()),
                });
            }
        }
        Ok(decl)
    }

    fn expr(&mut self, e: &Expr) -> Result<DType, VerifyError> {
        match e {
            Expr::Var(v) => {
                if !self.in_scope.contains(v) {
                    return Err(VerifyError::UnboundVar {
                        name: self.func.var_name(*v).to_string(),
                        context: self.context(),
                    });
                }
                Ok(DType::I64)
            }
            Expr::Load { buf, indices } => Ok(self.access(*buf, indices)?.dtype),
            Expr::Select {
                cond,
                then,
                otherwise,
            } => {
                self.expr(cond)?;
                let n = self.bounds.fact_count();
                self.bounds.assume(cond, false);
                let r = self.expr(then);
                self.bounds.truncate_facts(n);
                r?;
                self.bounds.assume(cond, true);
                let r = self.expr(otherwise);
                self.bounds.truncate_facts(n);
                r?;
                self.type_of(e)
            }
            _ => {
                for c in e.children() {
                    self.expr(c)?;
                }
                self.type_of(e)
            }
        }
    }

    fn type_of(&self, e: &Expr) -> Result<DType, VerifyError> {
        self.func.expr_dtype(e).map_err(|t| VerifyError::Type {
            context: self.context(),
            reason: t.0,
        })
    }
}

/// What makes `s` not straight-line code (a loop or a branch), if anything.
fn non_straight_line(s: &Stmt) -> Option<&'static str> {
    match s {
        Stmt::For { .. } => Some("a nested loop"),
        Stmt::IfThenElse { .. } => Some("a branch"),
        Stmt::Tensorized { .. } => Some("a tensorized region"),
        Stmt::Store { .. } => None,
        Stmt::Seq(v) => v.iter().find_map(non_straight_line),
    }
}
