//! Vector code for `vectorized` loops: 4-lane `f32x4` / `i32x4` Cranelift SIMD.
//!
//! Invariant: a vectorized loop is emitted as vector code only when `vectorizable` proves the
//! vector form computes what the scalar loop computes, and otherwise falls back to unrolled scalar
//! code. The proof obligations:
//!
//! - the extent is a multiple of 4 (a loop of extent 8 or 16 becomes 2 or 4 chunks of 4 lanes);
//! - the body is straight-line stores (the verifier's rule) into `f32` or `i32` buffers, each
//!   *contiguous* in the loop variable `v`: the last index is affine in `v` with stride 1 and
//!   the other indices do not mention `v`;
//! - every load either does not mention `v` (a *uniform* value, computed once as a scalar and
//!   broadcast) or is contiguous of dtype `f32`/`i32`;
//! - `v` itself appears only inside such indices, and conditions (`select`, comparisons,
//!   logic) are uniform, so a `select` branches on a scalar and never evaluates a guarded load
//!   it should not;
//! - a buffer stored in the loop is only ever accessed (loaded or stored) at the *same* indices
//!   there, so executing statement by statement over 4 lanes, instead of iteration by iteration,
//!   reads and writes the same values.
//!
//! Operations on vectors: `+ - * /`, `min`/`max` (NaN-propagating like the interpreter), casts
//! between `f32` and `i32`, `sqrt`, `abs`, `floor`/`ceil`/`round` (when the ISA rounds vectors),
//! `fma` (when the ISA has FMA); every other intrinsic is computed lane by lane with the scalar
//! lowering, so results stay bit-identical to scalar code.

use crate::kernel::{mem_flags, FnLowerer};
use crate::CodegenError;
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_module::Module;
use kiln_ir::DType;
use kiln_tir::{BinOp, BufferId, Expr, Intrinsic, PrimFunc, Stmt, VarId};

/// Lanes of every vector.
pub const LANES: usize = 4;

/// What a (sub-)expression of a vectorized loop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Independent of the loop variable: a scalar, broadcast where needed.
    Uniform,
    /// One value per lane, of this dtype (`f32` or `i32`).
    Vector(DType),
}

/// A lowered value inside vector code.
#[derive(Clone, Copy, Debug)]
enum VVal {
    Uniform(Value),
    Vector(Value),
}

fn mentions(e: &Expr, v: VarId) -> bool {
    e.any(&|x| matches!(x, Expr::Var(w) if *w == v))
}

/// The stride of `e` in `v` when `e` is affine in `v` with a constant stride.
fn stride(e: &Expr, v: VarId) -> Option<i64> {
    if !mentions(e, v) {
        return Some(0);
    }
    match e {
        Expr::Var(w) if *w == v => Some(1),
        Expr::Binary { op, a, b } => match op {
            BinOp::Add => stride(a, v)?.checked_add(stride(b, v)?),
            BinOp::Sub => stride(a, v)?.checked_sub(stride(b, v)?),
            BinOp::Mul => match (a.as_int(), b.as_int()) {
                (Some(c), _) => stride(b, v)?.checked_mul(c),
                (_, Some(c)) => stride(a, v)?.checked_mul(c),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Consecutive lanes touch consecutive elements.
fn contiguous(indices: &[Expr], v: VarId) -> bool {
    match indices.split_last() {
        Some((last, rest)) => stride(last, v) == Some(1) && !rest.iter().any(|i| mentions(i, v)),
        None => false,
    }
}

fn lane_type(d: DType) -> Option<Type> {
    match d {
        DType::F32 => Some(types::F32X4),
        DType::I32 => Some(types::I32X4),
        _ => None,
    }
}

/// The stores of a straight-line body, or `None` when it is something else.
fn stores(body: &Stmt) -> Option<Vec<(BufferId, &[Expr], &Expr)>> {
    match body {
        Stmt::Store {
            buf,
            indices,
            value,
        } => Some(vec![(*buf, indices.as_slice(), value)]),
        Stmt::Seq(v) => {
            let mut out = vec![];
            for s in v {
                out.extend(stores(s)?);
            }
            Some(out)
        }
        _ => None,
    }
}

fn classify(f: &PrimFunc, e: &Expr, v: VarId) -> Option<Kind> {
    if !mentions(e, v) {
        return Some(Kind::Uniform);
    }
    let d = f.expr_dtype(e).ok()?;
    lane_type(d)?;
    let vector = Some(Kind::Vector(d));
    match e {
        Expr::Load { indices, .. } => contiguous(indices, v).then_some(Kind::Vector(d)),
        Expr::Binary { op, a, b } => {
            classify(f, a, v)?;
            classify(f, b, v)?;
            let ok = match d {
                DType::F32 => !matches!(op, BinOp::Rem | BinOp::FloorDiv | BinOp::FloorMod),
                _ => matches!(
                    op,
                    BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Min | BinOp::Max
                ),
            };
            ok.then_some(Kind::Vector(d))
        }
        Expr::Select {
            cond,
            then,
            otherwise,
        } => {
            if mentions(cond, v) {
                return None;
            }
            classify(f, then, v)?;
            classify(f, otherwise, v)?;
            vector
        }
        Expr::Cast { value, .. } => {
            let from = f.expr_dtype(value).ok()?;
            lane_type(from)?;
            classify(f, value, v)?;
            vector
        }
        Expr::Call { intrinsic, args } => {
            for a in args {
                classify(f, a, v)?;
            }
            (d == DType::F32 || *intrinsic == Intrinsic::Abs).then_some(Kind::Vector(d))
        }
        _ => None,
    }
}

/// Whether `for.vectorized v in 0..extent { body }` may be emitted as 4-lane vector code.
pub(crate) fn vectorizable(f: &PrimFunc, v: VarId, extent: usize, body: &Stmt) -> bool {
    if !extent.is_multiple_of(LANES) {
        return false;
    }
    let Some(stores) = stores(body) else {
        return false;
    };
    for &(buf, indices, value) in &stores {
        let Some(decl) = f.buffer(buf) else {
            return false;
        };
        if lane_type(decl.dtype).is_none() || !contiguous(indices, v) {
            return false;
        }
        if classify(f, value, v).is_none() {
            return false;
        }
    }
    // A stored buffer is accessed only at the indices of its (first) store.
    for &(buf, indices, _) in &stores {
        let same = |other: &[Expr]| other == indices;
        if !stores.iter().all(|&(b, i, _)| b != buf || same(i)) {
            return false;
        }
        let mut ok = true;
        let mut check = |e: &Expr| {
            e.walk(&mut |x| {
                if let Expr::Load { buf: b, indices: i } = x {
                    if *b == buf && !same(i) {
                        ok = false;
                    }
                }
            })
        };
        for &(_, idx, value) in &stores {
            idx.iter().for_each(&mut check);
            check(value);
        }
        if !ok {
            return false;
        }
    }
    true
}

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    /// Emits a loop that [`vectorizable`] accepted: `extent / 4` chunks of 4 lanes.
    pub(crate) fn vector_loop(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        let stores = stores(body).ok_or_else(|| self.err_internal("vector loop body"))?;
        let v = self.var(var);
        for chunk in 0..extent / LANES {
            let base = self.b.ins().iconst(types::I64, (chunk * LANES) as i64);
            self.b.def_var(v, base);
            self.consts[var.index()] = Some((chunk * LANES) as i64);
            for &(buf, indices, value) in &stores {
                let d = self.f.buffers[buf.index()].dtype;
                if self.promo.contains_key(&buf) {
                    let pv = self.promoted_var(buf, indices, LANES)?;
                    let val = self.vexpr(value, var)?;
                    let val = self.vector_of(val, d)?;
                    self.b.def_var(pv, val);
                    continue;
                }
                let addr = self.address(buf, indices)?;
                let val = self.vexpr(value, var)?;
                let val = self.vector_of(val, d)?;
                self.b.ins().store(mem_flags(), val, addr, 0);
            }
        }
        self.consts[var.index()] = None;
        Ok(())
    }

    fn vector_of(&mut self, v: VVal, d: DType) -> Result<Value, CodegenError> {
        Ok(match v {
            VVal::Vector(x) => x,
            VVal::Uniform(x) => {
                let ty = lane_type(d).ok_or_else(|| self.err_internal(format!("vector of {d}")))?;
                self.b.ins().splat(ty, x)
            }
        })
    }

    fn vexpr(&mut self, e: &Expr, var: VarId) -> Result<VVal, CodegenError> {
        if !mentions(e, var) {
            return Ok(VVal::Uniform(self.expr(e)?));
        }
        let d = self.dtype(e)?;
        let ty = lane_type(d).ok_or_else(|| self.err_internal(format!("vector of {d}")))?;
        Ok(VVal::Vector(match e {
            Expr::Load { buf, indices } if self.promo.contains_key(buf) => {
                let pv = self.promoted_var(*buf, indices, LANES)?;
                self.b.use_var(pv)
            }
            Expr::Load { buf, indices } => {
                let addr = self.address(*buf, indices)?;
                self.b.ins().load(ty, mem_flags(), addr, 0)
            }
            Expr::Binary { op, a, b } if self.contracts(*op, a, b) => {
                let (x, y, c) =
                    crate::kernel::fma_parts(a, b).ok_or_else(|| self.err_internal("fma form"))?;
                let mut v = vec![];
                for e in [x, y, c] {
                    let x = self.vexpr(e, var)?;
                    v.push(self.vector_of(x, d)?);
                }
                self.b.ins().fma(v[0], v[1], v[2])
            }
            Expr::Binary { op, a, b } => {
                let (a, b) = (self.vexpr(a, var)?, self.vexpr(b, var)?);
                let (a, b) = (self.vector_of(a, d)?, self.vector_of(b, d)?);
                let ins = self.b.ins();
                match (op, d) {
                    (BinOp::Add, DType::F32) => ins.fadd(a, b),
                    (BinOp::Sub, DType::F32) => ins.fsub(a, b),
                    (BinOp::Mul, DType::F32) => ins.fmul(a, b),
                    (BinOp::Div, DType::F32) => ins.fdiv(a, b),
                    (BinOp::Min, DType::F32) => ins.fmin(a, b),
                    (BinOp::Max, DType::F32) => ins.fmax(a, b),
                    (BinOp::Add, _) => ins.iadd(a, b),
                    (BinOp::Sub, _) => ins.isub(a, b),
                    (BinOp::Mul, _) => ins.imul(a, b),
                    (BinOp::Min, _) => ins.smin(a, b),
                    (BinOp::Max, _) => ins.smax(a, b),
                    _ => return Err(self.err_internal(format!("vector {op:?} of {d}"))),
                }
            }
            Expr::Select {
                cond,
                then,
                otherwise,
            } => {
                let c = self.expr(cond)?;
                self.branch_select(
                    c,
                    ty,
                    |lw| {
                        let t = lw.vexpr(then, var)?;
                        lw.vector_of(t, d)
                    },
                    |lw| {
                        let o = lw.vexpr(otherwise, var)?;
                        lw.vector_of(o, d)
                    },
                )?
            }
            Expr::Cast { dtype, value } => {
                let from = self.dtype(value)?;
                let x = self.vexpr(value, var)?;
                let x = self.vector_of(x, from)?;
                match (from, *dtype) {
                    (a, b) if a == b => x,
                    (DType::F32, DType::I32) => self.b.ins().fcvt_to_sint_sat(types::I32X4, x),
                    (DType::I32, DType::F32) => self.b.ins().fcvt_from_sint(types::F32X4, x),
                    (a, b) => return Err(self.err_internal(format!("vector cast {a} to {b}"))),
                }
            }
            Expr::Call { intrinsic, args } => {
                let mut xs = vec![];
                for a in args {
                    let x = self.vexpr(a, var)?;
                    xs.push(self.vector_of(x, d)?);
                }
                self.vector_call(*intrinsic, d, ty, &xs)?
            }
            _ => return Err(self.err_internal("vector form of a non-vectorizable expression")),
        }))
    }

    fn vector_call(
        &mut self,
        f: Intrinsic,
        d: DType,
        ty: Type,
        xs: &[Value],
    ) -> Result<Value, CodegenError> {
        let host = self.em.host;
        let x = *xs
            .first()
            .ok_or_else(|| self.err_internal(format!("{} without arguments", f.name())))?;
        let native = match f {
            Intrinsic::Sqrt => Some(self.b.ins().sqrt(x)),
            Intrinsic::Abs if d == DType::F32 => Some(self.b.ins().fabs(x)),
            Intrinsic::Abs => Some(self.b.ins().iabs(x)),
            Intrinsic::Floor if host.has_vector_round => Some(self.b.ins().floor(x)),
            Intrinsic::Ceil if host.has_vector_round => Some(self.b.ins().ceil(x)),
            Intrinsic::Round if host.has_vector_round => Some(self.b.ins().nearest(x)),
            Intrinsic::Fma if host.has_fma && self.em.opts.use_fma && xs.len() == 3 => {
                Some(self.b.ins().fma(xs[0], xs[1], xs[2]))
            }
            _ => None,
        };
        if let Some(v) = native {
            return Ok(v);
        }
        // Lane by lane through the scalar lowering.
        let mut acc = None;
        for lane in 0..LANES as u8 {
            let args: Vec<Value> = xs
                .iter()
                .map(|&a| self.b.ins().extractlane(a, lane))
                .collect();
            let r = self.call(f, d, &args)?;
            acc = Some(match acc {
                None => self.b.ins().splat(ty, r),
                Some(v) => self.b.ins().insertlane(v, r, lane),
            });
        }
        acc.ok_or_else(|| self.err_internal("empty vector"))
    }
}
