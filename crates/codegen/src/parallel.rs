//! Parallel loops: outlining into body functions, the context they read, private locals.
//!
//! Invariant: a `parallel` loop of a kernel compiled with threads becomes
//!
//! ```c
//! int32_t kernel__parN(const uint8_t *ctx, int64_t begin, int64_t end);  /* runs begin..end */
//! status = kiln_parallel_for(kernel__parN, ctx, extent);               /* in the kernel */
//! ```
//!
//! where `ctx` is an array of 8-byte slots on the kernel's stack: slot `b` holds the base pointer
//! of buffer `b` (for every buffer the body uses that is not private to it), slot
//! `buffers.len() + k` holds the value of the `k`-th enclosing loop variable the body reads. The
//! body computes exactly the iterations `begin..end` of the original loop, so any split of
//! `0..extent` into chunks runs every iteration once. A `Local` buffer all of whose accesses lie
//! in one parallel loop is private to it: the body allocates its own copy (per chunk, which is
//! enough since an iteration writes such a buffer before reading it); every other local is
//! allocated once per kernel call and shared. A non-zero status of any chunk leaves the kernel
//! with that status. Without threads ([`crate::Threads::Single`]) parallel loops run inline.

use crate::kernel::FnLowerer;
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind};
use cranelift_module::{FuncId, Module};
use kiln_tir::{BufferId, Expr, ForKind, PrimFunc, Scope, Stmt, VarId};
use std::collections::{BTreeSet, HashMap};

/// A parallel loop body to define as its own function.
#[derive(Clone, Debug)]
pub(crate) struct OutlineJob {
    pub id: FuncId,
    pub name: String,
    /// The parallel loop variable.
    pub var: VarId,
    pub body: Stmt,
    /// Enclosing loop variables the body reads, in context-slot order.
    pub free: Vec<VarId>,
    /// Buffers the body uses, by id.
    pub used: BTreeSet<BufferId>,
}

/// Calls `f` on every buffer access (loads and stores) of `s`, with the innermost enclosing
/// parallel loop variable.
fn accesses(s: &Stmt, par: Option<VarId>, f: &mut dyn FnMut(BufferId, Option<VarId>)) {
    let expr = |e: &Expr, f: &mut dyn FnMut(BufferId, Option<VarId>)| {
        e.walk(&mut |x| {
            if let Expr::Load { buf, .. } = x {
                f(*buf, par);
            }
        })
    };
    match s {
        Stmt::For {
            var, kind, body, ..
        } => {
            let p = if *kind == ForKind::Parallel && par.is_none() {
                Some(*var)
            } else {
                par
            };
            accesses(body, p, f);
        }
        Stmt::Seq(v) => v.iter().for_each(|s| accesses(s, par, f)),
        Stmt::Tensorized { body, .. } => accesses(body, par, f),
        Stmt::Store {
            buf,
            indices,
            value,
        } => {
            f(*buf, par);
            indices.iter().for_each(|i| expr(i, f));
            expr(value, f);
        }
        Stmt::IfThenElse {
            cond,
            then,
            otherwise,
        } => {
            expr(cond, f);
            accesses(then, par, f);
            if let Some(o) = otherwise {
                accesses(o, par, f);
            }
        }
    }
}

/// The buffers `s` loads or stores.
pub(crate) fn buffers_used(s: &Stmt) -> BTreeSet<BufferId> {
    s.buffers_accessed()
}

/// The local buffers private to a parallel loop: those all of whose accesses lie inside the same
/// parallel loop, mapped to that loop's variable.
pub(crate) fn private_locals(f: &PrimFunc) -> HashMap<BufferId, VarId> {
    let mut seen: HashMap<BufferId, BTreeSet<Option<VarId>>> = HashMap::new();
    accesses(&f.body, None, &mut |b, par| {
        seen.entry(b).or_default().insert(par);
    });
    seen.into_iter()
        .filter(|(b, _)| f.buffer(*b).is_some_and(|d| d.scope == Scope::Local))
        .filter_map(|(b, pars)| match pars.into_iter().collect::<Vec<_>>()[..] {
            [Some(p)] => Some((b, p)),
            _ => None,
        })
        .collect()
}

/// The variables `s` reads that no loop inside `s` binds, except `bound` (sorted).
fn free_vars(s: &Stmt, bound: VarId) -> Vec<VarId> {
    let mut read = BTreeSet::new();
    let mut binds = BTreeSet::from([bound]);
    s.walk(&mut |st| {
        let mut expr = |e: &Expr| {
            e.walk(&mut |x| {
                if let Expr::Var(v) = x {
                    read.insert(*v);
                }
            })
        };
        match st {
            Stmt::For { var, .. } => {
                binds.insert(*var);
            }
            Stmt::Store { indices, value, .. } => {
                indices.iter().for_each(&mut expr);
                expr(value);
            }
            Stmt::IfThenElse { cond, .. } => expr(cond),
            Stmt::Seq(_) | Stmt::Tensorized { .. } => {}
        }
    });
    read.difference(&binds).copied().collect()
}

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    /// Emits the call of an outlined body for `for.parallel var in 0..extent { body }`.
    pub(crate) fn parallel_loop(
        &mut self,
        var: VarId,
        extent: usize,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        let nbuf = self.f.buffers.len();
        let free = free_vars(body, var);
        let used = buffers_used(body);
        let slots = nbuf + free.len();
        let ptr = self.em.host.ptr;
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (8 * slots.max(1)) as u32,
            3,
        ));
        for &b in &used {
            if self.private.get(&b) == Some(&var) {
                continue;
            }
            let base = self.bases[b.index()]
                .ok_or_else(|| self.err_internal(format!("buffer {} has no storage", b.0)))?;
            self.b
                .ins()
                .stack_store(ptr, base, slot, (8 * b.index()) as i32);
        }
        for (k, &v) in free.iter().enumerate() {
            let var = self.var(v);
            let value = self.b.use_var(var);
            self.b
                .ins()
                .stack_store(ptr, value, slot, (8 * (nbuf + k)) as i32);
        }
        let ctx = self.b.ins().stack_addr(ptr, slot, 0);
        let kernel = self.f.name.clone();
        let (id, name) = self.em.declare_body(&kernel)?;
        let body_ref = self.func_ref(id);
        let body_addr = self.b.ins().func_addr(ptr, body_ref);
        let n = self.b.ins().iconst(types::I64, extent as i64);
        let hook = self.hook_ref(crate::runtime::names::PARALLEL_FOR)?;
        let call = self.b.ins().call(hook, &[body_addr, ctx, n]);
        let status = self.b.inst_results(call)[0];
        let failed = self.b.ins().icmp_imm_s(IntCC::NotEqual, status, 0);
        self.leave_with_if(failed, status);
        self.jobs.push(OutlineJob {
            id,
            name,
            var,
            body: body.clone(),
            free,
            used,
        });
        Ok(())
    }

    /// Emits the whole outlined body function of `job` (entry block current).
    pub(crate) fn outlined_body(&mut self, job: &OutlineJob) -> Result<(), CodegenError> {
        let (ctx, begin, end) = (
            self.entry_param(0),
            self.entry_param(1),
            self.entry_param(2),
        );
        let nbuf = self.f.buffers.len();
        let mut private = vec![];
        for &b in &job.used {
            if self.private.get(&b) == Some(&job.var) {
                if !self.promo.contains_key(&b) {
                    private.push(b);
                }
            } else {
                let base = self.load_ptr(ctx, (8 * b.index()) as i32);
                self.bases[b.index()] = Some(base);
            }
        }
        for (k, &v) in job.free.iter().enumerate() {
            let value = self.b.ins().load(
                types::I64,
                MemFlagsData::trusted(),
                ctx,
                (8 * (nbuf + k)) as i32,
            );
            let var = self.var(v);
            self.b.def_var(var, value);
        }
        self.alloc_locals(&private)?;
        self.counted_loop(job.var, begin, end, true, &job.body)
    }
}
