//! Vector code for serial `max`/`min` reduction loops (a softmax's row maximum): `for r in
//! 0..n { out[i] = max(out[i], e(r)) }` with `out[i]` independent of `r` runs as lane-wise
//! partial maxima in four independent vectors over chunks of four `r`, combined at the end,
//! then the remaining iterations.
//!
//! Invariant: the result is the scalar loop's bit for bit. `fmax`/`fmin` (NaN-propagating,
//! `-0 < +0`: IEEE 754-2019 maximum/minimum) are commutative and associative, so any grouping of
//! the same operands gives the same value; the loop is taken only when `e` is an f32 expression
//! the vector code computes lane by lane as the scalar code does ([`crate::vector`]'s
//! `vectorizable`, which also proves no lane reads `out` at another index) and never reads `out`,
//! and when no register-promoted buffer is touched.

use crate::kernel::{mem_flags, FnLowerer};
use crate::vector::LANES;
use crate::CodegenError;
use cranelift_codegen::ir::{types, InstBuilder};
use cranelift_module::Module;
use kiln_ir::DType;
use kiln_tir::{BinOp, Expr, PrimFunc, Stmt, VarId};

/// A loop of this many iterations or more is worth vectorizing.
const MIN_EXTENT: usize = 2 * LANES;
/// Partial vectors kept at once (independent `fmax` chains).
const ACCUMULATORS: usize = 4;

/// The `(op, element)` of `for v in 0..extent { body }` when it is a max/min reduction into one
/// f32 element (see the module doc).
pub(crate) fn max_reduction<'a>(
    f: &PrimFunc,
    v: VarId,
    extent: usize,
    body: &'a Stmt,
) -> Option<(BinOp, &'a Expr)> {
    if extent < MIN_EXTENT {
        return None;
    }
    let Stmt::Store {
        buf,
        indices,
        value,
    } = body
    else {
        return None;
    };
    if f.buffer(*buf)?.dtype != DType::F32
        || indices
            .iter()
            .any(|i| i.any(&|x| matches!(x, Expr::Var(w) if w == &v)))
    {
        return None;
    }
    let Expr::Binary { op, a, b } = value else {
        return None;
    };
    if !matches!(op, BinOp::Max | BinOp::Min) {
        return None;
    }
    let is_acc =
        |e: &Expr| matches!(e, Expr::Load { buf: b, indices: i } if b == buf && i == indices);
    let element = match (is_acc(a), is_acc(b)) {
        (true, false) => b.as_ref(),
        (false, true) => a.as_ref(),
        _ => return None,
    };
    let reads_acc = element.any(&|x| matches!(x, Expr::Load { buf: b, .. } if b == buf));
    (!reads_acc && crate::vector::f32_lanes(f, element, v)).then_some((*op, element))
}

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    /// Emits a loop [`max_reduction`] accepted.
    pub(crate) fn vector_max_reduction(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
        op: BinOp,
        element: &Expr,
    ) -> Result<(), CodegenError> {
        let Stmt::Store { buf, indices, .. } = body else {
            return Err(self.err_internal("max reduction body"));
        };
        let combine = |b: &mut cranelift_frontend::FunctionBuilder, x, y| match op {
            BinOp::Max => b.ins().fmax(x, y),
            _ => b.ins().fmin(x, y),
        };
        let addr = self.address(*buf, indices)?;
        let start = self.b.ins().load(types::F32, mem_flags(), addr, 0);
        let splat = self.b.ins().splat(types::F32X4, start);
        // Independent accumulators, so that the loop is not one chain of `fmax` latencies.
        let accs: Vec<_> = (0..ACCUMULATORS)
            .map(|_| {
                let a = self.b.declare_var(types::F32X4);
                self.b.def_var(a, splat);
                a
            })
            .collect();
        let v = self.var(var);
        let step = ACCUMULATORS * LANES;
        let groups = extent / step;
        if groups > 0 {
            self.chunk_loop(var, groups, step, &mut |lw| {
                let base = lw.b.use_var(v);
                for (k, &acc) in accs.iter().enumerate() {
                    let at = lw.b.ins().iadd_imm_s(base, (k * LANES) as i64);
                    lw.b.def_var(v, at);
                    let x = lw.vexpr_f32(element, var)?;
                    let a = lw.b.use_var(acc);
                    let a = combine(&mut lw.b, a, x);
                    lw.b.def_var(acc, a);
                }
                lw.b.def_var(v, base);
                Ok(())
            })?;
        }
        // The chunks of 4 past the groups, into the first accumulator.
        let chunks = extent / LANES;
        for c in groups * ACCUMULATORS..chunks {
            let at = self.b.ins().iconst(types::I64, (c * LANES) as i64);
            self.b.def_var(v, at);
            let x = self.vexpr_f32(element, var)?;
            let a = self.b.use_var(accs[0]);
            let a = combine(&mut self.b, a, x);
            self.b.def_var(accs[0], a);
        }
        let mut a = self.b.use_var(accs[0]);
        for &acc in &accs[1..] {
            let x = self.b.use_var(acc);
            a = combine(&mut self.b, a, x);
        }
        let mut r = self.b.ins().extractlane(a, 0);
        for lane in 1..LANES as u8 {
            let x = self.b.ins().extractlane(a, lane);
            r = combine(&mut self.b, r, x);
        }
        // The partial result, then the remaining iterations as the scalar loop runs them.
        let addr = self.address(*buf, indices)?;
        self.b.ins().store(mem_flags(), r, addr, 0);
        self.unrolled_range(var, chunks * LANES..extent, body)
    }
}
