//! Loops of a `PrimFunc` lowered to Cranelift IR: serial loops (counted, or carrying a
//! reduction's element in a variable), unrolled copies, vectorized loops (byte-lane code,
//! calls of the target's pointwise micro-kernel, 4-lane vector code, or scalar code for what
//! none of them takes) and unswitching of loop-invariant selects; parallel loops are outlined
//! by [`crate::parallel`].
//!
//! Invariant: every loop runs its body for each value of its variable in `0..extent`, in
//! order unless the loop is parallel, with the variable's value known to the emitted body
//! exactly where [`FnLowerer::consts`] says so (unrolled copies, vector chunks).

use crate::kernel::{FnLowerer, MAX_UNROLL};
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_module::Module;
use kiln_tir::{Expr, ForKind, Stmt, VarId};

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    pub(crate) fn for_loop(
        &mut self,
        var: VarId,
        extent: usize,
        kind: ForKind,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        match kind {
            ForKind::Unrolled if extent <= MAX_UNROLL => self.unrolled(var, extent, body),
            ForKind::Vectorized if self.em.opts.vectorize => {
                // Byte-lane moves test their border per 16 lanes already (see `byte_lanes`).
                let bytes = crate::vector::vectorizable(self.f, var, extent, body)
                    && crate::byte_lanes::byte_moves(self.f, var, extent, body);
                match crate::vector::unswitched(self.f, var, body).filter(|_| !bytes) {
                    Some((cond, then, otherwise)) => {
                        self.unswitch(var, extent, &cond, then, otherwise)
                    }
                    None => self.vectorized(var, extent, body),
                }
            }
            ForKind::Vectorized => self.vectorized(var, extent, body),
            ForKind::Parallel if self.outline_parallel => self.parallel_loop(var, extent, body),
            ForKind::Serial if self.em.opts.vectorize && !self.touches_promoted(body) => {
                match crate::vector_reduce::max_reduction(self.f, var, extent, body) {
                    Some((op, element)) => {
                        self.em.stats.vector_loops += 1;
                        self.vector_max_reduction(var, extent, body, op, element)
                    }
                    None => self.serial_or_carried(var, extent, body),
                }
            }
            ForKind::Serial => self.serial_or_carried(var, extent, body),
            _ => self.serial(var, extent, body),
        }
    }

    /// A vectorized loop as byte-lane code, pointwise micro-kernel calls, 4-lane vector code
    /// or (what none of them takes) scalar code.
    fn vectorized(&mut self, var: VarId, extent: usize, body: &Stmt) -> Result<(), CodegenError> {
        // A ragged extent (a scalar tail) or a loop over chunks only where no
        // register-promoted buffer is accessed (those take constant indices).
        let plain = !self.touches_promoted(body);
        if self.em.opts.vectorize
            && plain
            && crate::vector::vectorizable(self.f, var, extent, body)
            && crate::byte_lanes::byte_moves(self.f, var, extent, body)
        {
            self.em.stats.vector_loops += 1;
            self.em.stats.byte_vector_loops += 1;
            self.byte_vector_loop(var, extent, body)
        } else if self.em.opts.vectorize
            && plain
            && crate::vector::vectorizable(self.f, var, extent, body)
            && self.pointwise(var, extent, body)?
        {
            Ok(())
        } else if self.em.opts.vectorize
            && (extent.is_multiple_of(crate::vector::LANES) || plain)
            && crate::vector::vectorizable(self.f, var, extent, body)
        {
            self.em.stats.vector_loops += 1;
            self.vector_loop(var, extent, body, plain)
        } else if extent <= MAX_UNROLL {
            self.em.stats.scalar_vectorized_loops += 1;
            self.unrolled(var, extent, body)
        } else {
            self.serial(var, extent, body)
        }
    }

    /// `for.vectorized var in 0..extent { out[..] = select(cond, then, otherwise) }` with
    /// `cond` the same on every iteration: the condition evaluated once, then the loop of the
    /// arm it picks (each arm's loads guarded by the condition as before; an arm that is
    /// such a select again is unswitched in turn).
    fn unswitch(
        &mut self,
        var: VarId,
        extent: usize,
        cond: &Expr,
        then: Stmt,
        otherwise: Stmt,
    ) -> Result<(), CodegenError> {
        let c = self.expr(cond)?;
        match self.const_condition(c) {
            Some(true) => return self.for_loop(var, extent, ForKind::Vectorized, &then),
            Some(false) => return self.for_loop(var, extent, ForKind::Vectorized, &otherwise),
            None => {}
        }
        let (tb, eb, join) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b.ins().brif(c, tb, &[], eb, &[]);
        self.em.stats.unswitched_loops += 1;
        self.guarded += 1;
        let arm = |lw: &mut Self, block, body: &Stmt| {
            lw.b.switch_to_block(block);
            lw.for_loop(var, extent, ForKind::Vectorized, body)?;
            lw.b.ins().jump(join, &[]);
            Ok::<(), CodegenError>(())
        };
        let done = arm(self, tb, &then).and_then(|()| arm(self, eb, &otherwise));
        self.guarded -= 1;
        done?;
        self.b.switch_to_block(join);
        Ok(())
    }

    /// Whether `body` loads or stores a register-promoted buffer.
    fn touches_promoted(&self, body: &Stmt) -> bool {
        if self.promo.is_empty() {
            return false;
        }
        body.buffers_accessed()
            .iter()
            .any(|b| self.promo.contains_key(b))
    }

    fn unrolled(&mut self, var: VarId, extent: usize, body: &Stmt) -> Result<(), CodegenError> {
        self.unrolled_range(var, 0..extent, body)
    }

    /// `body` once per value of `var` in `range`, each with `var` a constant.
    pub(crate) fn unrolled_range(
        &mut self,
        var: VarId,
        range: std::ops::Range<usize>,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        let v = self.var(var);
        for i in range {
            let c = self.b.ins().iconst(types::I64, i as i64);
            self.b.def_var(v, c);
            self.consts[var.index()] = Some(i as i64);
            self.stmt(body)?;
        }
        self.consts[var.index()] = None;
        Ok(())
    }

    /// A serial loop, its reduction element in a variable where [`crate::serial_reduce`] can,
    /// neighbouring reductions interleaved where [`crate::jammed_reduce`] can.
    fn serial_or_carried(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        if self.carried.is_none() && !self.touches_promoted(body) {
            if let Some(jam) = crate::jammed_reduce::jammed(self, var, extent, body) {
                self.em.stats.jammed_reductions += 1;
                return self.jammed_reduction(var, extent, body, &jam);
            }
        }
        match crate::serial_reduce::carried_element(self, var, extent, body) {
            Some(element) => {
                self.em.stats.carried_reductions += 1;
                self.carried_reduction(var, extent, body, element)
            }
            None => self.serial(var, extent, body),
        }
    }

    pub(crate) fn serial(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        let start = self.b.ins().iconst(types::I64, 0);
        let end = self.b.ins().iconst(types::I64, extent as i64);
        self.counted_loop(var, start, end, extent == 0, body)
    }

    /// `for var in start..end { body }`; when `check_first` is false the range must be
    /// non-empty (the loop is emitted bottom-tested).
    pub fn counted_loop(
        &mut self,
        var: VarId,
        start: Value,
        end: Value,
        check_first: bool,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        let v = self.var(var);
        let (head, after) = (self.b.create_block(), self.b.create_block());
        self.b.def_var(v, start);
        if check_first {
            let nonempty = self.b.ins().icmp(IntCC::SignedLessThan, start, end);
            self.b.ins().brif(nonempty, head, &[], after, &[]);
        } else {
            self.b.ins().jump(head, &[]);
        }
        self.b.switch_to_block(head);
        self.stmt(body)?;
        let i = self.b.use_var(v);
        let next = self.b.ins().iadd_imm_s(i, 1);
        self.b.def_var(v, next);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, next, end);
        self.b.ins().brif(more, head, &[], after, &[]);
        self.b.switch_to_block(after);
        Ok(())
    }
}
