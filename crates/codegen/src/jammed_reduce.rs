//! Serial reductions of neighbouring elements interleaved ("unroll and jam"): a loop
//! `for s in 0..n { out[I] = init; for r in 0..m { out[I] = out[I] op e } }` (extent-1 loops
//! may wrap the pair), each of whose iterations reduces its own element, runs [`JAM`]
//! iterations at once: their elements in registers, one step of each per step of `r`. A
//! softmax's or a layer norm's row sums were one dependent chain of adds per row, bound by the
//! adder's latency; eight chains keep it busy. The iterations left over run as written.
//!
//! Invariant: every element is computed by the same operations in the same order as in the
//! loop as written, and the memory after the loop is the same. The loop is taken only when `I`
//! moves with `s` (a non-zero element stride: the iterations' elements are distinct), `init`
//! does not read `out`, the reduction loop is one [`crate::serial_reduce`] carries (so `e`
//! reads `out` only at `I`: no iteration reads what another writes), and no register-promoted
//! buffer is touched.

use crate::kernel::{clif_type, mem_flags, FnLowerer};
use crate::serial_reduce::{carried_element, Carried};
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder};
use cranelift_module::Module;
use kiln_tir::{linear_stride, BufferId, Expr, ForKind, Stmt, VarId};

/// Iterations interleaved.
const JAM: usize = 8;

/// A reduction nest [`jammed`] accepted: the extent-1 loops around it, the element, its
/// initial value, and the reduction loop with its one update.
pub(crate) struct Jam<'a> {
    units: Vec<VarId>,
    buf: BufferId,
    indices: &'a [Expr],
    init: &'a Expr,
    r: VarId,
    r_extent: usize,
    update: &'a Stmt,
}

/// The reduction nest of `for s in 0..extent { body }` when its iterations may be interleaved
/// (see the module doc).
pub(crate) fn jammed<'a, M: Module>(
    lw: &FnLowerer<'_, '_, '_, M>,
    s: VarId,
    extent: usize,
    body: &'a Stmt,
) -> Option<Jam<'a>> {
    if extent < 2 * JAM {
        return None;
    }
    let mut units = vec![];
    let mut nest = body;
    while let Stmt::For {
        var,
        extent: 1,
        body,
        ..
    } = nest
    {
        units.push(*var);
        nest = body;
    }
    let Stmt::Seq(v) = nest else {
        return None;
    };
    let [Stmt::Store {
        buf,
        indices,
        value: init,
    }, Stmt::For {
        var: r,
        extent: r_extent,
        kind: ForKind::Serial,
        body: update,
    }] = v.as_slice()
    else {
        return None;
    };
    let (carried, at) = carried_element(lw, *r, *r_extent, update)?;
    let decl = lw.f.buffer(*buf)?;
    let reads_out = init.any(&|x| matches!(x, Expr::Load { buf: b, .. } if b == buf));
    if carried != *buf
        || at != indices.as_slice()
        || reads_out
        || linear_stride(&decl.shape, indices, s).is_none_or(|st| st == 0)
    {
        return None;
    }
    Some(Jam {
        units,
        buf: *buf,
        indices,
        init,
        r: *r,
        r_extent: *r_extent,
        update,
    })
}

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    /// Emits `for s in 0..extent { body }` whose nest [`jammed`] accepted as `j`.
    pub(crate) fn jammed_reduction(
        &mut self,
        s: VarId,
        extent: usize,
        body: &Stmt,
        j: &Jam,
    ) -> Result<(), CodegenError> {
        let ty = clif_type(self.f.buffers[j.buf.index()].dtype);
        let sv = self.var(s);
        let rv = self.var(j.r);
        let groups = extent / JAM;
        for &u in &j.units {
            let uv = self.var(u);
            let zero = self.b.ins().iconst(types::I64, 0);
            self.b.def_var(uv, zero);
            self.consts[u.index()] = Some(0);
        }
        let mut group = |lw: &mut Self| -> Result<(), CodegenError> {
            let s0 = lw.b.use_var(sv);
            let mut elements = vec![];
            for k in 0..JAM {
                let sk = lw.b.ins().iadd_imm_s(s0, k as i64);
                lw.b.def_var(sv, sk);
                let addr = lw.address(j.buf, j.indices)?;
                let start = lw.expr(j.init)?;
                let acc = lw.b.declare_var(ty);
                lw.b.def_var(acc, start);
                elements.push((addr, acc));
            }
            // for r in 0..m: one update of each element.
            let (head, after) = (lw.b.create_block(), lw.b.create_block());
            let zero = lw.b.ins().iconst(types::I64, 0);
            lw.b.def_var(rv, zero);
            lw.b.ins().jump(head, &[]);
            lw.b.switch_to_block(head);
            for (k, &(_, acc)) in elements.iter().enumerate() {
                let sk = lw.b.ins().iadd_imm_s(s0, k as i64);
                lw.b.def_var(sv, sk);
                lw.carried = Some(Carried {
                    buf: j.buf,
                    indices: j.indices.to_vec(),
                    var: acc,
                });
                let updated = lw.stmt(j.update);
                lw.carried = None;
                updated?;
            }
            let r = lw.b.use_var(rv);
            let next = lw.b.ins().iadd_imm_s(r, 1);
            lw.b.def_var(rv, next);
            let more =
                lw.b.ins()
                    .icmp_imm_s(IntCC::SignedLessThan, next, j.r_extent as i64);
            lw.b.ins().brif(more, head, &[], after, &[]);
            lw.b.switch_to_block(after);
            for &(addr, acc) in &elements {
                let v = lw.b.use_var(acc);
                lw.b.ins().store(mem_flags(), v, addr, 0);
            }
            // The group loop steps from the group's first iteration.
            lw.b.def_var(sv, s0);
            Ok(())
        };
        let jammed = self.chunk_loop(s, groups, JAM, &mut group);
        for &u in &j.units {
            self.consts[u.index()] = None;
        }
        jammed?;
        if groups * JAM < extent {
            let start = self.b.ins().iconst(types::I64, (groups * JAM) as i64);
            let end = self.b.ins().iconst(types::I64, extent as i64);
            self.counted_loop(s, start, end, false, body)?;
        }
        Ok(())
    }
}
