//! Vector code for vectorized loops that only move 8-bit data: 16 byte lanes per `i8x16`
//! vector, where the general vector code (`crate::vector`) holds 8-bit values widened in 4
//! `i32` lanes. The padded input copy of an int8 convolution is such a loop: a select on the
//! border condition between a load and the zero point.
//!
//! Invariant: a loop is emitted here only when [`byte_moves`] holds, and then stores exactly the
//! bytes the scalar loop stores: every store and every load varying with the loop variable is
//! contiguous and of one 8-bit type (no arithmetic, so no lane can wrap or widen differently),
//! other values are computed once as scalars and splatted, and a select's condition does not
//! mention the loop variable, so it branches on a scalar and never performs a load the scalar
//! loop would not. The caller has already checked [`crate::vector::vectorizable`] (a stored
//! buffer is accessed only at the indices it is stored at) and that no register-promoted buffer
//! is touched. Iterations past the last full vector run as scalar code.

use crate::kernel::{mem_flags, FnLowerer};
use crate::vector::{contiguous, mentions, stores};
use crate::CodegenError;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_module::Module;
use kiln_ir::DType;
use kiln_tir::{Expr, PrimFunc, Stmt, VarId};

/// Lanes of a byte vector.
pub const BYTE_LANES: usize = 16;

/// Whether `e`, stored into a buffer of 8-bit type `d`, only moves bytes of that type.
fn moves_bytes(f: &PrimFunc, e: &Expr, v: VarId, d: DType) -> bool {
    if f.expr_dtype(e).ok() != Some(d) {
        return false;
    }
    if !mentions(e, v) {
        return true;
    }
    match e {
        Expr::Load { indices, .. } => contiguous(indices, v),
        Expr::Select {
            cond,
            then,
            otherwise,
        } => !mentions(cond, v) && moves_bytes(f, then, v, d) && moves_bytes(f, otherwise, v, d),
        _ => false,
    }
}

/// Whether `for.vectorized v in 0..extent { body }` only moves 8-bit data (see the module doc).
pub(crate) fn byte_moves(f: &PrimFunc, v: VarId, extent: usize, body: &Stmt) -> bool {
    if extent < BYTE_LANES {
        return false;
    }
    let Some(stores) = stores(body) else {
        return false;
    };
    stores.iter().all(|&(buf, indices, value)| {
        f.buffer(buf).is_some_and(|decl| {
            matches!(decl.dtype, DType::I8 | DType::U8)
                && contiguous(indices, v)
                && moves_bytes(f, value, v, decl.dtype)
        })
    })
}

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    /// Emits a loop that [`byte_moves`] accepted: unrolled vectors of 16 lanes up to
    /// [`crate::vector::UNROLLED_CHUNKS`], else a loop over them, then the remaining iterations
    /// as scalar code.
    pub(crate) fn byte_vector_loop(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        let stores = stores(body).ok_or_else(|| self.err_internal("byte loop body"))?;
        let chunks = extent / BYTE_LANES;
        let mut chunk = |lw: &mut Self| lw.byte_chunk(var, &stores);
        if chunks > crate::vector::UNROLLED_CHUNKS {
            self.chunk_loop(var, chunks, BYTE_LANES, &mut chunk)?;
        } else {
            self.unrolled_chunks(var, chunks, BYTE_LANES, &mut chunk)?;
        }
        self.unrolled_range(var, chunks * BYTE_LANES..extent, body)
    }

    fn byte_chunk(
        &mut self,
        var: VarId,
        stores: &[(kiln_tir::BufferId, &[Expr], &Expr)],
    ) -> Result<(), CodegenError> {
        for &(buf, indices, value) in stores {
            let addr = self.address(buf, indices)?;
            let val = self.byte_expr(value, var)?;
            self.b.ins().store(mem_flags(), val, addr, 0);
        }
        Ok(())
    }

    /// `e` (see [`moves_bytes`]) as an `i8x16` vector.
    fn byte_expr(&mut self, e: &Expr, var: VarId) -> Result<Value, CodegenError> {
        if !mentions(e, var) {
            let x = self.expr(e)?;
            return Ok(self.b.ins().splat(types::I8X16, x));
        }
        match e {
            Expr::Load { buf, indices } => {
                let addr = self.address(*buf, indices)?;
                let flags = self.load_flags(*buf);
                Ok(self.b.ins().load(types::I8X16, flags, addr, 0))
            }
            Expr::Select {
                cond,
                then,
                otherwise,
            } => {
                let c = self.expr(cond)?;
                self.branch_select(
                    c,
                    types::I8X16,
                    |lw| lw.byte_expr(then, var),
                    |lw| lw.byte_expr(otherwise, var),
                )
            }
            _ => Err(self.err_internal("byte vector of an expression that is not a move")),
        }
    }
}
