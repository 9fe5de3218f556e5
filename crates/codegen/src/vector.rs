//! Vector code for `vectorized` loops: 4-lane `f32x4` / `i32x4` Cranelift SIMD.
//!
//! Invariant: a vectorized loop is emitted as vector code only when `vectorizable` proves the
//! vector form computes what the scalar loop computes, and otherwise falls back to unrolled scalar
//! code. The proof obligations:
//!
//! - the extent is at least 4: `extent / 4` chunks of 4 lanes (unrolled up to
//!   [`UNROLLED_CHUNKS`], else a loop over the chunks), then the `extent mod 4` remaining
//!   iterations as scalar code (a row of 197 attention scores is 49 vectors and one scalar);
//! - the body is straight-line stores (the verifier's rule) into `f32` or `i32` buffers (so
//!   loops over `f16` data stay scalar code, except uniform `f16` scalars), each
//!   *contiguous* in the loop variable `v` (the last index is affine in `v` with stride 1 and
//!   the other indices do not mention `v`) or *strided* (every index affine in `v` with a
//!   constant stride, the row-major element stride non-zero, so the 4 lanes are 4 distinct
//!   elements: a scatter of 4 scalar stores);
//! - every load either does not mention `v` (a *uniform* value, computed once as a scalar and
//!   broadcast) or is contiguous (one vector load) or strided (a gather of 4 scalar loads) of
//!   dtype `f32`/`i32`;
//! - `v` itself appears only inside such indices and in conditions; a `select` whose condition
//!   is uniform, or uniform over each chunk of 4 lanes (`x < k` with `x` stepping by 1 per lane
//!   from a multiple of 4 and `k` a multiple of 4: computed at the chunk's first lane), branches
//!   on a scalar and never evaluates a guarded load it should not; a
//!   `select` whose condition varies per lane (comparisons of 32-bit lanes, `&&`, `||`, `!`)
//!   evaluates both arms for all 4 lanes and blends them bit by bit, which is allowed only when
//!   every load in its arms is also evaluated by its condition (so no load is speculated that
//!   the scalar loop would not perform) and the arms contain no integer division;
//! - a buffer stored in the loop is only ever accessed (loaded or stored) at the *same* indices
//!   there, so executing statement by statement over 4 lanes, instead of iteration by iteration,
//!   reads and writes the same values.
//!
//! `i8`/`u8` data is held sign- or zero-extended in `i32x4` lanes: loads widen 4 bytes, stores
//! narrow them (the values are in range: they come from a load or a cast to that type), and no
//! arithmetic runs on such lanes (it would have to wrap at 8 bits), only casts, selects and
//! comparisons.
//!
//! Operations on vectors: `+ - * /`, `min`/`max` (NaN-propagating like the interpreter), casts
//! between `f32`, `i32`, `i8` and `u8` (float to integer saturating with NaN as 0, integer to
//! integer wrapping), `sqrt`, `abs`, `floor`/`ceil`/`round` (when the ISA rounds vectors),
//! `fma` (when the ISA has FMA); every other intrinsic is computed lane by lane with the scalar
//! lowering, so results stay bit-identical to scalar code.

use crate::kernel::{mem_flags, FnLowerer};
use crate::scalar::float_cc;
use crate::CodegenError;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_module::Module;
use kiln_ir::DType;
use kiln_tir::{linear_stride, var_stride as stride};
use kiln_tir::{BinOp, BufferId, CmpOp, Expr, Intrinsic, PrimFunc, Stmt, VarId};

/// Lanes of every vector.
pub const LANES: usize = 4;

/// Most chunks of a vectorized loop emitted straight-line; more run as a loop over chunks.
pub const UNROLLED_CHUNKS: usize = 4;

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

/// Whether `e` reads loop variable `v`.
pub(crate) fn mentions(e: &Expr, v: VarId) -> bool {
    e.any(&|x| matches!(x, Expr::Var(w) if *w == v))
}

/// Consecutive lanes touch consecutive elements.
pub(crate) fn contiguous(indices: &[Expr], v: VarId) -> bool {
    match indices.split_last() {
        Some((last, rest)) => stride(last, v) == Some(1) && !rest.iter().any(|i| mentions(i, v)),
        None => false,
    }
}

/// An access of `buf` varying per lane that is a gather/scatter: strided (not contiguous) with a
/// non-zero element stride; returns the stride.
fn strided(f: &PrimFunc, buf: BufferId, indices: &[Expr], v: VarId) -> Option<i64> {
    let decl = f.buffer(buf)?;
    let s = linear_stride(&decl.shape, indices, v)?;
    // The byte offset of lane 3 must fit a load's immediate offset.
    let bytes = s.checked_mul(4 * (LANES as i64 - 1))?;
    (s != 0 && i32::try_from(bytes).is_ok()).then_some(s)
}

/// Every load in `arm` is also a load of `cond` (same buffer and indices).
fn loads_covered(arm: &Expr, cond: &Expr) -> bool {
    let mut ok = true;
    arm.walk(&mut |x| {
        if let Expr::Load { .. } = x {
            if !cond.any(&|c| c == x) {
                ok = false;
            }
        }
    });
    ok
}

/// Integer division or remainder by a possibly-zero divisor anywhere in `e` (may leave the
/// function when speculated); division by a non-zero constant (index arithmetic) is safe.
fn has_int_division(f: &PrimFunc, e: &Expr) -> bool {
    e.any(&|x| match x {
        Expr::Binary { op, a, b } => {
            matches!(
                op,
                BinOp::Div | BinOp::Rem | BinOp::FloorDiv | BinOp::FloorMod
            ) && f.expr_dtype(a).is_ok_and(|d| !d.is_float())
                && b.as_int().is_none_or(|k| k == 0)
        }
        _ => false,
    })
}

/// Whether condition `c` has one value on all lanes of each chunk, though it mentions `v`:
/// `x < k` or `x >= k` (and their combinations) where `x` steps by 1 per lane from a multiple
/// of [`LANES`] and `k` is a multiple of it, so the 4 lanes `x .. x + 3` lie on one side. (The
/// split of a concat along a vectorized axis at a boundary the vectors do not straddle.)
fn chunk_uniform(c: &Expr, v: VarId) -> bool {
    if !mentions(c, v) {
        return true;
    }
    match c {
        Expr::Cmp { op, a, b } => {
            matches!(op, CmpOp::Lt | CmpOp::Ge)
                && b.as_int().is_some_and(|k| k % LANES as i64 == 0)
                && stride(a, v) == Some(1)
                && a.is_multiple_of(LANES as i64, &|w| w == v)
        }
        Expr::And(a, b) | Expr::Or(a, b) => chunk_uniform(a, v) && chunk_uniform(b, v),
        Expr::Not(a) => chunk_uniform(a, v),
        _ => false,
    }
}

/// Whether a condition varying per lane can be computed as a 32-bit lane mask.
fn mask_ok(f: &PrimFunc, c: &Expr, v: VarId) -> bool {
    if !mentions(c, v) {
        return true;
    }
    match c {
        Expr::Cmp { a, b, .. } => {
            let Ok(d) = f.expr_dtype(a) else {
                return false;
            };
            lane_type(d).is_some() && classify(f, a, v).is_some() && classify(f, b, v).is_some()
        }
        Expr::And(a, b) | Expr::Or(a, b) => mask_ok(f, a, v) && mask_ok(f, b, v),
        Expr::Not(a) => mask_ok(f, a, v),
        _ => false,
    }
}

fn lane_type(d: DType) -> Option<Type> {
    match d {
        DType::F32 => Some(types::F32X4),
        DType::I32 | DType::I8 | DType::U8 => Some(types::I32X4),
        _ => None,
    }
}

/// The flags of a bitcast that changes the lane count: lanes in little-endian order (as
/// memory holds them, on every target Kiln has).
fn lanes_le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little)
}

/// 8-bit lanes (held widened in `i32x4`).
fn narrow(d: DType) -> bool {
    matches!(d, DType::I8 | DType::U8)
}

/// The stores of a straight-line body, or `None` when it is something else.
pub(crate) fn stores(body: &Stmt) -> Option<Vec<(BufferId, &[Expr], &Expr)>> {
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
        Expr::Load { buf, indices } => (contiguous(indices, v)
            || strided(f, *buf, indices, v).is_some())
        .then_some(Kind::Vector(d)),
        Expr::Binary { op, a, b } => {
            classify(f, a, v)?;
            classify(f, b, v)?;
            let ok = match d {
                DType::F32 => !matches!(op, BinOp::Rem | BinOp::FloorDiv | BinOp::FloorMod),
                DType::I32 => matches!(
                    op,
                    BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Min | BinOp::Max
                ),
                _ => false,
            };
            ok.then_some(Kind::Vector(d))
        }
        Expr::Select {
            cond,
            then,
            otherwise,
        } => {
            // A condition varying within a chunk is a lane mask over both arms, evaluated on
            // every lane: only loads the condition performs too, and no division.
            let blend_ok = mask_ok(f, cond, v)
                && loads_covered(then, cond)
                && loads_covered(otherwise, cond)
                && !has_int_division(f, then)
                && !has_int_division(f, otherwise);
            if !(chunk_uniform(cond, v) || blend_ok) {
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
            (d == DType::F32 || d == DType::I32 && *intrinsic == Intrinsic::Abs)
                .then_some(Kind::Vector(d))
        }
        _ => None,
    }
}

/// Whether `e` varies with `v` and computes as f32 lanes (every load in it contiguous or
/// strided, every operation one the vector code has).
pub(crate) fn f32_lanes(f: &PrimFunc, e: &Expr, v: VarId) -> bool {
    classify(f, e, v) == Some(Kind::Vector(DType::F32))
}

/// The two arms of a vectorized loop whose body is one store of `select(cond, a, b)` with
/// `cond` independent of `v` and of the stored buffer: `(cond, store of a, store of b)`, the
/// loop to run decided once (a padded copy's border test per row, not per vector).
pub(crate) fn unswitched(f: &PrimFunc, v: VarId, body: &Stmt) -> Option<(Expr, Stmt, Stmt)> {
    let Stmt::Store {
        buf,
        indices,
        value,
    } = body
    else {
        return None;
    };
    let Expr::Select {
        cond,
        then,
        otherwise,
    } = value
    else {
        return None;
    };
    let mut reads_stored = false;
    cond.walk(&mut |e| reads_stored |= matches!(e, Expr::Load { buf: b, .. } if b == buf));
    if mentions(cond, v) || reads_stored || f.buffer(*buf).is_none() {
        return None;
    }
    let store = |value: &Expr| Stmt::Store {
        buf: *buf,
        indices: indices.clone(),
        value: value.clone(),
    };
    Some((cond.as_ref().clone(), store(then), store(otherwise)))
}

/// Whether `for.vectorized v in 0..extent { body }` may be emitted as 4-lane vector code.
pub(crate) fn vectorizable(f: &PrimFunc, v: VarId, extent: usize, body: &Stmt) -> bool {
    if extent < LANES {
        return false;
    }
    let Some(stores) = stores(body) else {
        return false;
    };
    for &(buf, indices, value) in &stores {
        let Some(decl) = f.buffer(buf) else {
            return false;
        };
        if lane_type(decl.dtype).is_none()
            || !(contiguous(indices, v) || strided(f, buf, indices, v).is_some())
        {
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
    /// Emits a loop that [`vectorizable`] accepted: `extent / 4` chunks of 4 lanes (a loop over
    /// the chunks when there are more than [`UNROLLED_CHUNKS`] and `looped` allows it: no
    /// register-promoted buffer is accessed), then the remaining iterations as scalar code.
    pub(crate) fn vector_loop(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
        looped: bool,
    ) -> Result<(), CodegenError> {
        let stores = stores(body).ok_or_else(|| self.err_internal("vector loop body"))?;
        let chunks = extent / LANES;
        let mut chunk = |lw: &mut Self| lw.vector_chunk(var, &stores);
        if looped && chunks > UNROLLED_CHUNKS {
            self.chunk_loop(var, chunks, LANES, &mut chunk)?;
        } else {
            self.unrolled_chunks(var, chunks, LANES, &mut chunk)?;
        }
        // The remaining iterations, one by one.
        self.unrolled_range(var, chunks * LANES..extent, body)
    }

    /// `chunk` emitted once with `var` at each of `0, lanes, 2·lanes, .. < chunks · lanes`, as
    /// a bottom-tested loop (there must be at least one chunk).
    pub(crate) fn chunk_loop(
        &mut self,
        var: VarId,
        chunks: usize,
        lanes: usize,
        chunk: &mut dyn FnMut(&mut Self) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let v = self.var(var);
        let (head, after) = (self.b.create_block(), self.b.create_block());
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.def_var(v, zero);
        self.b.ins().jump(head, &[]);
        self.b.switch_to_block(head);
        chunk(self)?;
        let i = self.b.use_var(v);
        let next = self.b.ins().iadd_imm_s(i, lanes as i64);
        self.b.def_var(v, next);
        let more = self.b.ins().icmp_imm_s(
            cranelift_codegen::ir::condcodes::IntCC::SignedLessThan,
            next,
            (chunks * lanes) as i64,
        );
        self.b.ins().brif(more, head, &[], after, &[]);
        self.b.switch_to_block(after);
        Ok(())
    }

    /// `chunk` emitted straight-line with `var` a constant at each of `0, lanes, .. <
    /// chunks · lanes` (so conditions on it fold).
    pub(crate) fn unrolled_chunks(
        &mut self,
        var: VarId,
        chunks: usize,
        lanes: usize,
        chunk: &mut dyn FnMut(&mut Self) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let v = self.var(var);
        for c in 0..chunks {
            let base = self.b.ins().iconst(types::I64, (c * lanes) as i64);
            self.b.def_var(v, base);
            self.consts[var.index()] = Some((c * lanes) as i64);
            chunk(self)?;
        }
        self.consts[var.index()] = None;
        Ok(())
    }

    /// The stores of one chunk of 4 lanes starting at the current value of `var`.
    fn vector_chunk(
        &mut self,
        var: VarId,
        stores: &[(BufferId, &[Expr], &Expr)],
    ) -> Result<(), CodegenError> {
        for &(buf, indices, value) in stores {
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
            match (self.lane_bytes(buf, indices, var)?, narrow(d)) {
                (None, false) => {
                    self.b.ins().store(mem_flags(), val, addr, 0);
                }
                (None, true) => {
                    // In-range lanes narrowed (saturation changes nothing) to 4 bytes.
                    let ins = self.b.ins();
                    let h = ins.snarrow(val, val);
                    let ins = self.b.ins();
                    let q = if d == DType::I8 {
                        ins.snarrow(h, h)
                    } else {
                        ins.unarrow(h, h)
                    };
                    let q = self.b.ins().bitcast(types::I32X4, lanes_le(), q);
                    let w = self.b.ins().extractlane(q, 0);
                    self.b.ins().store(mem_flags(), w, addr, 0);
                }
                (Some(step), is_narrow) => {
                    for lane in 0..LANES as u8 {
                        let x = self.b.ins().extractlane(val, lane);
                        let off = step * i32::from(lane);
                        if is_narrow {
                            self.b.ins().istore8(mem_flags(), x, addr, off);
                        } else {
                            self.b.ins().store(mem_flags(), x, addr, off);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `None` for a contiguous access, else the byte step between lanes of a strided one.
    fn lane_bytes(
        &self,
        buf: BufferId,
        indices: &[Expr],
        var: VarId,
    ) -> Result<Option<i32>, CodegenError> {
        if contiguous(indices, var) {
            return Ok(None);
        }
        let s = strided(self.f, buf, indices, var)
            .ok_or_else(|| self.err_internal("vector access neither contiguous nor strided"))?;
        let size = self.f.buffers[buf.index()].dtype.size_bytes() as i64;
        i32::try_from(s * size)
            .map(Some)
            .map_err(|_| self.err_internal("lane stride"))
    }

    /// A per-lane condition as an `i32x4` mask (all ones where true).
    fn vmask(&mut self, c: &Expr, var: VarId) -> Result<Value, CodegenError> {
        if !mentions(c, var) {
            let b = self.expr(c)?;
            let m = self.b.ins().bmask(types::I32, b);
            return Ok(self.b.ins().splat(types::I32X4, m));
        }
        Ok(match c {
            Expr::Cmp { op, a, b } => {
                let d = self.dtype(a)?;
                let (x, y) = (self.vexpr(a, var)?, self.vexpr(b, var)?);
                let (x, y) = (self.vector_of(x, d)?, self.vector_of(y, d)?);
                if d == DType::F32 {
                    let cc = float_cc(*op);
                    let m = self.b.ins().fcmp(cc, x, y);
                    self.b.ins().bitcast(types::I32X4, MemFlagsData::new(), m)
                } else {
                    self.b.ins().icmp(crate::scalar::int_cc(*op, false), x, y)
                }
            }
            Expr::And(a, b) => {
                let (x, y) = (self.vmask(a, var)?, self.vmask(b, var)?);
                self.b.ins().band(x, y)
            }
            Expr::Or(a, b) => {
                let (x, y) = (self.vmask(a, var)?, self.vmask(b, var)?);
                self.b.ins().bor(x, y)
            }
            Expr::Not(a) => {
                let x = self.vmask(a, var)?;
                self.b.ins().bnot(x)
            }
            _ => return Err(self.err_internal("vector mask of a non-condition")),
        })
    }

    /// `x` (i32 lanes) clamped to the range of 8-bit type `to`.
    fn clamp_lanes(&mut self, x: Value, to: DType) -> Value {
        let (lo, hi) = if to == DType::I8 {
            (-128, 127)
        } else {
            (0, 255)
        };
        let lo = self.b.ins().iconst(types::I32, lo);
        let lo = self.b.ins().splat(types::I32X4, lo);
        let hi = self.b.ins().iconst(types::I32, hi);
        let hi = self.b.ins().splat(types::I32X4, hi);
        let x = self.b.ins().smax(x, lo);
        self.b.ins().smin(x, hi)
    }

    fn vector_of(&mut self, v: VVal, d: DType) -> Result<Value, CodegenError> {
        Ok(match v {
            VVal::Vector(x) => x,
            VVal::Uniform(x) => {
                let ty = lane_type(d).ok_or_else(|| self.err_internal(format!("vector of {d}")))?;
                // A scalar 8-bit value, widened as the lanes hold it.
                let x = match d {
                    DType::I8 => self.b.ins().sextend(types::I32, x),
                    DType::U8 => self.b.ins().uextend(types::I32, x),
                    _ => x,
                };
                self.b.ins().splat(ty, x)
            }
        })
    }

    /// `e` (see [`f32_lanes`]) as an `f32x4` of the 4 lanes from the current value of `var`.
    pub(crate) fn vexpr_f32(&mut self, e: &Expr, var: VarId) -> Result<Value, CodegenError> {
        let x = self.vexpr(e, var)?;
        self.vector_of(x, DType::F32)
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
            Expr::Load { buf, indices } if narrow(d) => {
                let addr = self.address(*buf, indices)?;
                let signed = d == DType::I8;
                match self.lane_bytes(*buf, indices, var)? {
                    None => {
                        // Four bytes, widened to 16 then 32 bits.
                        let flags = self.load_flags(*buf);
                        let w = self.b.ins().load(types::I32, flags, addr, 0);
                        let v = self.b.ins().scalar_to_vector(types::I32X4, w);
                        let v = self.b.ins().bitcast(types::I8X16, lanes_le(), v);
                        let ins = self.b.ins();
                        if signed {
                            let h = ins.swiden_low(v);
                            self.b.ins().swiden_low(h)
                        } else {
                            let h = ins.uwiden_low(v);
                            self.b.ins().uwiden_low(h)
                        }
                    }
                    Some(step) => {
                        let mut acc = None;
                        for lane in 0..LANES as u8 {
                            let off = step * i32::from(lane);
                            let ins = self.b.ins();
                            let x = if signed {
                                ins.sload8(types::I32, mem_flags(), addr, off)
                            } else {
                                ins.uload8(types::I32, mem_flags(), addr, off)
                            };
                            acc = Some(match acc {
                                None => self.b.ins().splat(ty, x),
                                Some(v) => self.b.ins().insertlane(v, x, lane),
                            });
                        }
                        acc.ok_or_else(|| self.err_internal("empty gather"))?
                    }
                }
            }
            Expr::Load { buf, indices } => {
                let addr = self.address(*buf, indices)?;
                match self.lane_bytes(*buf, indices, var)? {
                    None => {
                        let flags = self.load_flags(*buf);
                        self.b.ins().load(ty, flags, addr, 0)
                    }
                    Some(step) => {
                        let scalar = ty.lane_type();
                        let mut acc = None;
                        for lane in 0..LANES as u8 {
                            let x = self.b.ins().load(
                                scalar,
                                mem_flags(),
                                addr,
                                step * i32::from(lane),
                            );
                            acc = Some(match acc {
                                None => self.b.ins().splat(ty, x),
                                Some(v) => self.b.ins().insertlane(v, x, lane),
                            });
                        }
                        acc.ok_or_else(|| self.err_internal("empty gather"))?
                    }
                }
            }
            Expr::Binary { op, a, b } if self.contracts(*op, a, b) => {
                let (x, y, c) =
                    crate::scalar::fma_parts(a, b).ok_or_else(|| self.err_internal("fma form"))?;
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
            } if !chunk_uniform(cond, var) => {
                let m = self.vmask(cond, var)?;
                let (t, o) = (self.vexpr(then, var)?, self.vexpr(otherwise, var)?);
                let (t, o) = (self.vector_of(t, d)?, self.vector_of(o, d)?);
                let m = if ty == types::I32X4 {
                    m
                } else {
                    self.b.ins().bitcast(ty, MemFlagsData::new(), m)
                };
                self.b.ins().bitselect(m, t, o)
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
                    (DType::F32, to) if narrow(to) => {
                        // Saturating to i32, then to the 8-bit range, is saturating once.
                        let i = self.b.ins().fcvt_to_sint_sat(types::I32X4, x);
                        self.clamp_lanes(i, to)
                    }
                    (DType::I32 | DType::I8 | DType::U8, DType::F32) => {
                        self.b.ins().fcvt_from_sint(types::F32X4, x)
                    }
                    // Widened lanes are already the i32 value.
                    (DType::I8 | DType::U8, DType::I32) => x,
                    (_, DType::I8) => {
                        let h = self.b.ins().ishl_imm_u(x, 24);
                        self.b.ins().sshr_imm_u(h, 24)
                    }
                    (_, DType::U8) => {
                        let m = self.b.ins().iconst(types::I32, 0xFF);
                        let m = self.b.ins().splat(types::I32X4, m);
                        self.b.ins().band(x, m)
                    }
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
        if d == DType::F32 && host.has_fma && self.em.opts.use_fma && host.has_vector_round {
            match f {
                Intrinsic::Exp => return Ok(crate::approx::exp(&mut self.b, x, true)),
                Intrinsic::Sigmoid => return Ok(crate::approx::sigmoid(&mut self.b, x, true)),
                Intrinsic::Erf => return Ok(crate::approx::erf(&mut self.b, x, true)),
                _ => {}
            }
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
