//! Serial reductions into one element kept in a register: `for r in 0..n { out[I] = out[I] op
//! e(r) }` with `I` independent of `r` loads `out[I]` once before the loop, runs the loop on a
//! Cranelift variable, and stores the result once after it (a softmax's denominator, a mean).
//! Cranelift does not forward stores to loads, so the loop as written pays a store and a
//! reload per iteration on its critical path.
//!
//! Invariant: the memory after the loop and every value computed are the scalar loop's, in its
//! order (the same operations on the same operands, nothing reassociated): the loop is taken
//! only when its body is that one store, `I` does not mention `r`, `e` reads `out` at no index
//! other than `I` (distinct buffers never overlap in a kernel), the element type is stored and
//! loaded unchanged (not `f16`/`bf16`/`bool`), `out` is not register-promoted, and the loop runs
//! at least once.

use crate::kernel::{clif_type, mem_flags, FnLowerer};
use crate::CodegenError;
use cranelift_codegen::ir::InstBuilder;
use cranelift_frontend::Variable;
use cranelift_module::Module;
use kiln_ir::DType;
use kiln_tir::{BufferId, Expr, Stmt, VarId};

/// The element a serial reduction loop carries in a register.
pub(crate) struct Carried {
    pub buf: BufferId,
    pub indices: Vec<Expr>,
    pub var: Variable,
}

impl Carried {
    /// Whether `buf[indices]` is the carried element.
    pub fn is(&self, buf: BufferId, indices: &[Expr]) -> bool {
        self.buf == buf && self.indices == indices
    }
}

/// The `(buffer, indices)` of `for v in 0..extent { body }` when it is a reduction into one
/// element (see the module doc).
pub(crate) fn carried_element<'a, M: Module>(
    lw: &FnLowerer<'_, '_, '_, M>,
    v: VarId,
    extent: usize,
    body: &'a Stmt,
) -> Option<(BufferId, &'a [Expr])> {
    let Stmt::Store {
        buf,
        indices,
        value,
    } = body
    else {
        return None;
    };
    let dtype = lw.f.buffer(*buf)?.dtype;
    if extent == 0
        || matches!(dtype, DType::F16 | DType::BF16 | DType::Bool)
        || lw.promo.contains_key(buf)
        || lw.carried.is_some()
        || indices.iter().any(|i| {
            i.any(&|x| matches!(x, Expr::Var(w) if *w == v) || matches!(x, Expr::Load { .. }))
        })
    {
        return None;
    }
    let mut reads_acc = false;
    let mut reads_elsewhere = false;
    value.walk(&mut |e| {
        if let Expr::Load { buf: b, indices: i } = e {
            if b == buf {
                if i == indices {
                    reads_acc = true;
                } else {
                    reads_elsewhere = true;
                }
            }
        }
    });
    (reads_acc && !reads_elsewhere).then_some((*buf, indices.as_slice()))
}

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    /// Emits a loop [`carried_element`] accepted.
    pub(crate) fn carried_reduction(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
        (buf, indices): (BufferId, &[Expr]),
    ) -> Result<(), CodegenError> {
        let ty = clif_type(self.f.buffers[buf.index()].dtype);
        let addr = self.address(buf, indices)?;
        let start = self.b.ins().load(ty, mem_flags(), addr, 0);
        let acc = self.b.declare_var(ty);
        self.b.def_var(acc, start);
        self.carried = Some(Carried {
            buf,
            indices: indices.to_vec(),
            var: acc,
        });
        let looped = self.serial(var, extent, body);
        self.carried = None;
        looped?;
        let result = self.b.use_var(acc);
        self.b.ins().store(mem_flags(), result, addr, 0);
        Ok(())
    }
}
