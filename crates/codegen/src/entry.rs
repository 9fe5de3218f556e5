//! The whole-model entry function: the kernels of a model called in order, with every buffer
//! pointer derived from four base arrays.
//!
//! ```c
//! int32_t model_run(const uint8_t *const *inputs, uint8_t *const *outputs,
//!                   uint8_t *arena, const uint8_t *const *constants);
//! ```
//!
//! Invariant: the entry calls each [`KernelCall`] in order with a params array whose pointer `i`
//! is `inputs[k]`, `outputs[k]`, `arena + offset` or `constants[k]` as its [`Arg`] says, stops at
//! the first non-zero kernel status and returns it (0 when every kernel succeeded). A
//! [`ModelEntry`] is validated when compiled: every kernel exists, each call passes one argument
//! per param, no kernel writes a param bound to an input or a constant, and the arena ranges of
//! one call are pairwise disjoint or identical (in-place elementwise kernels). [`EntryLayout`] gives the bytes each array element and the
//! arena must provide; the safe caller ([`crate::ModelFn`]) checks them.

use crate::kernel::{cl_err, elem_bytes, EmitState};
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, Function, InstBuilder, MemFlagsData, Signature, StackSlotData,
    StackSlotKind, UserFuncName,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{FuncId, Module};
use kiln_tir::{PrimFunc, Stmt};
use std::collections::BTreeSet;

/// Where a kernel's param buffer lives in a model run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arg {
    /// Model input `k` (read only).
    Input(usize),
    /// Model output `k`.
    Output(usize),
    /// The arena, at this byte offset.
    Arena { offset: usize },
    /// Constant (weight) `k` (read only).
    Constant(usize),
}

/// One kernel call of a model entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCall {
    /// The [`PrimFunc`] name of the kernel.
    pub kernel: String,
    /// One argument per param, in `params` order.
    pub args: Vec<Arg>,
}

/// A whole-model entry function: its symbol name and the calls it makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEntry {
    pub name: String,
    pub calls: Vec<KernelCall>,
}

/// The bytes a [`ModelEntry`] reads and writes: the minimum size of each input, output and
/// constant, and of the arena.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryLayout {
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    pub constants: Vec<usize>,
    pub arena: usize,
}

/// The buffers `f` stores to.
fn written(f: &PrimFunc) -> BTreeSet<kiln_tir::BufferId> {
    let mut out = BTreeSet::new();
    f.body.walk(&mut |s| {
        if let Stmt::Store { buf, .. } = s {
            out.insert(*buf);
        }
    });
    out
}

fn need(v: &mut Vec<usize>, k: usize, bytes: usize) {
    if v.len() <= k {
        v.resize(k + 1, 0);
    }
    v[k] = v[k].max(bytes);
}

/// Validates `entry` against `funcs` and computes its layout.
pub fn layout(entry: &ModelEntry, funcs: &[PrimFunc]) -> Result<EntryLayout, CodegenError> {
    let bad = |reason: String| CodegenError::BadEntry {
        entry: entry.name.clone(),
        reason,
    };
    let mut l = EntryLayout::default();
    for (c, call) in entry.calls.iter().enumerate() {
        let f = funcs
            .iter()
            .find(|f| f.name == call.kernel)
            .ok_or_else(|| bad(format!("call {c}: no kernel `{}`", call.kernel)))?;
        if call.args.len() != f.params.len() {
            return Err(bad(format!(
                "call {c} of `{}`: {} arguments for {} params",
                f.name,
                call.args.len(),
                f.params.len()
            )));
        }
        let stores = written(f);
        let mut ranges: Vec<(usize, usize)> = vec![];
        for (&p, arg) in f.params.iter().zip(&call.args) {
            let decl = &f.buffers[p.index()];
            let bytes = (decl.num_elements() as u64)
                .checked_mul(elem_bytes(decl.dtype))
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| bad(format!("param %{} is too large", decl.name)))?;
            let read_only = matches!(arg, Arg::Input(_) | Arg::Constant(_));
            if read_only && stores.contains(&p) {
                return Err(bad(format!(
                    "call {c} of `{}` writes param %{} bound to read-only {arg:?}",
                    f.name, decl.name
                )));
            }
            match *arg {
                Arg::Input(k) => need(&mut l.inputs, k, bytes),
                Arg::Output(k) => need(&mut l.outputs, k, bytes),
                Arg::Constant(k) => need(&mut l.constants, k, bytes),
                Arg::Arena { offset } => {
                    let end = offset
                        .checked_add(bytes)
                        .ok_or_else(|| bad(format!("arena offset {offset} overflows")))?;
                    // Identical ranges are allowed: one value passed twice, or an elementwise
                    // kernel writing in place over an input that dies there (the caller's
                    // promise: each element is read before the same element is written).
                    let partial =
                        |&(s, e): &(usize, usize)| offset < e && s < end && (s, e) != (offset, end);
                    if bytes > 0 && ranges.iter().any(partial) {
                        return Err(bad(format!(
                            "call {c} of `{}`: arena range of %{} overlaps another param",
                            f.name, decl.name
                        )));
                    }
                    ranges.push((offset, end));
                    l.arena = l.arena.max(end);
                }
            }
        }
    }
    Ok(l)
}

/// Checks a whole module before any code is emitted: every function verifies, no two symbols
/// (functions, entries, `extra` names such as data objects) share a name, and every entry is
/// valid; returns the entries' layouts, in order.
pub fn check_module(
    funcs: &[PrimFunc],
    entries: &[ModelEntry],
    extra: &[&str],
) -> Result<Vec<EntryLayout>, CodegenError> {
    for f in funcs {
        kiln_tir::verify(f).map_err(|source| CodegenError::Verify {
            func: f.name.clone(),
            source,
        })?;
    }
    let mut names: Vec<&str> = funcs.iter().map(|f| f.name.as_str()).collect();
    names.extend(entries.iter().map(|e| e.name.as_str()));
    names.extend_from_slice(extra);
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(CodegenError::DuplicateName(n.to_string()));
        }
    }
    entries.iter().map(|e| layout(e, funcs)).collect()
}

/// Declares and defines every kernel of `funcs`, then every entry (all checked by
/// [`check_module`]); returns the kernels' and the entries' ids, in order.
pub(crate) fn define_module<M: Module>(
    em: &mut EmitState<'_, M>,
    funcs: &[PrimFunc],
    entries: &[ModelEntry],
) -> Result<(Vec<FuncId>, Vec<FuncId>), CodegenError> {
    let kernels = funcs
        .iter()
        .map(|f| em.declare_kernel(f))
        .collect::<Result<Vec<FuncId>, _>>()?;
    for (f, &id) in funcs.iter().zip(&kernels) {
        em.define_kernel(id, f)?;
    }
    let entries = entries
        .iter()
        .map(|e| define_entry(em, e, funcs, &kernels))
        .collect::<Result<Vec<FuncId>, _>>()?;
    Ok((kernels, entries))
}

/// `int32_t (ptr inputs, ptr outputs, ptr arena, ptr constants)`.
pub(crate) fn entry_signature<M: Module>(em: &EmitState<'_, M>) -> Signature {
    let mut s = Signature::new(em.call_conv);
    s.params.extend((0..4).map(|_| AbiParam::new(em.host.ptr)));
    s.returns.push(AbiParam::new(types::I32));
    s
}

/// Declares and defines `entry` (already validated by [`layout`]); `kernels` are the ids of
/// `funcs`, in order.
pub(crate) fn define_entry<M: Module>(
    em: &mut EmitState<'_, M>,
    entry: &ModelEntry,
    funcs: &[PrimFunc],
    kernels: &[FuncId],
) -> Result<FuncId, CodegenError> {
    let sig = entry_signature(em);
    let id = em
        .module
        .declare_function(&entry.name, em.entry_linkage, &sig)
        .map_err(|e| cl_err(&entry.name, e))?;
    let ptr = em.host.ptr;
    let mut func = Function::with_name_signature(UserFuncName::user(1, id.as_u32()), sig);
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut func, &mut fctx);
        let start = b.create_block();
        b.append_block_params_for_function_params(start);
        b.switch_to_block(start);
        let [inputs, outputs, arena, constants] = [0, 1, 2, 3].map(|i| b.block_params(start)[i]);
        let exit = b.create_block();
        let status = b.append_block_param(exit, types::I32);
        let max_params = entry.calls.iter().map(|c| c.args.len()).max().unwrap_or(0);
        let slot = b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (8 * max_params.max(1)) as u32,
            3,
        ));
        let mark = if em.opts.profile {
            let id = em.hook(crate::runtime::names::PROFILE_MARK, &entry.name)?;
            Some(em.module.declare_func_in_func(id, b.func))
        } else {
            None
        };
        for (index, call) in entry.calls.iter().enumerate() {
            if let Some(m) = mark {
                let i = b.ins().iconst(types::I64, index as i64);
                b.ins().call(m, &[i]);
            }
            let Some(k) = funcs.iter().position(|f| f.name == call.kernel) else {
                return Err(CodegenError::BadEntry {
                    entry: entry.name.clone(),
                    reason: format!("no kernel `{}`", call.kernel),
                });
            };
            for (i, arg) in call.args.iter().enumerate() {
                let p = match *arg {
                    Arg::Input(k) => {
                        b.ins()
                            .load(ptr, MemFlagsData::trusted(), inputs, 8 * k as i32)
                    }
                    Arg::Output(k) => {
                        b.ins()
                            .load(ptr, MemFlagsData::trusted(), outputs, 8 * k as i32)
                    }
                    Arg::Constant(k) => {
                        b.ins()
                            .load(ptr, MemFlagsData::trusted(), constants, 8 * k as i32)
                    }
                    Arg::Arena { offset } => b.ins().iadd_imm_s(arena, offset as i64),
                };
                b.ins().stack_store(ptr, p, slot, 8 * i as i32);
            }
            let params = b.ins().stack_addr(ptr, slot, 0);
            let callee = em.module.declare_func_in_func(kernels[k], b.func);
            let inst = b.ins().call(callee, &[params]);
            let s = b.inst_results(inst)[0];
            let failed = b.ins().icmp_imm_s(IntCC::NotEqual, s, 0);
            let cont = b.create_block();
            b.ins().brif(failed, exit, &[BlockArg::Value(s)], cont, &[]);
            b.switch_to_block(cont);
        }
        if let Some(m) = mark {
            let i = b.ins().iconst(types::I64, entry.calls.len() as i64);
            b.ins().call(m, &[i]);
        }
        let zero = b.ins().iconst(types::I32, 0);
        b.ins().jump(exit, &[BlockArg::Value(zero)]);
        b.switch_to_block(exit);
        b.ins().return_(&[status]);
        b.seal_all_blocks();
        b.finalize(em.frontend);
    }
    em.define(id, func, &entry.name)?;
    Ok(id)
}
