//! Lowering of one [`PrimFunc`] to Cranelift IR: the kernel function and, through
//! [`crate::parallel`], its outlined parallel bodies; statements here, loops in `crate::loops`,
//! expressions in `crate::scalar` (and `crate::vector` for vectorized loops).
//!
//! Invariant: the emitted code has the semantics of [`kiln_tir::interp`] for every verified
//! function: index arithmetic in `i64`; each data dtype in its own width (`bool` as an `i8`
//! holding 0 or 1, `u8` compared, divided and widened unsigned), except `f16`: 16 bits in memory
//! but an `f32` value (so its arithmetic is `f32` arithmetic), widened on load and rounded to
//! nearest even on store, on a cast to `f16` and in `f16` constants (runtime hooks
//! `kiln_f16_to_f32` / `kiln_f32_to_f16`); integer arithmetic wrapping; `Div`/`Rem` truncating
//! and `FloorDiv`/`FloorMod` flooring, with `MIN / -1` wrapping instead of trapping and a zero
//! divisor leaving the function with [`crate::STATUS_DIV_BY_ZERO`]; float `min`/`max` propagating NaN;
//! float-to-int casts truncating and saturating with NaN to 0; `select` evaluating only the
//! chosen branch (a branch, or a `select` instruction when both operands are trap-free and
//! load-free). Every exit goes through one exit block that frees the heap-allocated local
//! buffers, so no path leaks.
//!
//! Buffers are addressed row-major from a base pointer per buffer: params are read from the
//! `params` array on entry, locals are stack slots (small) or `kiln_alloc` blocks (large),
//! allocated once per call (or once per parallel chunk for locals private to a parallel loop),
//! except small tiles that [`crate::promote`] keeps in Cranelift variables. `unrolled` loops up
//! to [`MAX_UNROLL`] iterations are emitted once per iteration (longer ones as plain loops).

use crate::isa::HostInfo;
use crate::parallel::{self, OutlineJob};
use crate::promote::{self, Promotion};
use crate::runtime::{self, names};
use crate::{CodegenError, CodegenOptions, Threads, STATUS_ALLOC_FAILED};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, FuncRef, Function, InstBuilder, MemFlagsData, Signature,
    StackSlotData, StackSlotKind, Type, UserFuncName, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_module::{FuncId, Linkage, Module};
use kiln_ir::DType;
use kiln_tir::{BufferId, Expr, PrimFunc, Scope, Stmt, VarId};
use std::collections::HashMap;

/// Largest single local buffer placed on the stack.
pub const MAX_STACK_BUFFER: u64 = 64 * 1024;
/// Largest total of local buffers one function places on the stack.
pub const STACK_BUDGET: u64 = 256 * 1024;
/// Alignment of every local buffer.
const LOCAL_ALIGN: u64 = 64;
/// `unrolled` loops longer than this are emitted as ordinary loops (code size).
pub const MAX_UNROLL: usize = 64;

/// The Cranelift type holding a value of `d` (`f16` and `bf16` values are held widened in
/// `f32`; unsigned integers in the signed type of their width).
pub fn clif_type(d: DType) -> Type {
    match d {
        DType::F32 | DType::F16 | DType::BF16 => types::F32,
        DType::F64 => types::F64,
        DType::I8 | DType::U8 | DType::Bool => types::I8,
        DType::I16 | DType::U16 => types::I16,
        DType::I32 | DType::U32 => types::I32,
        DType::I64 | DType::U64 => types::I64,
    }
}

/// Bytes per element of `d`.
pub fn elem_bytes(d: DType) -> u64 {
    d.size_bytes() as u64
}

/// Whether values of `d` compare, divide and widen as unsigned (`bool` included).
pub fn unsigned(d: DType) -> bool {
    d.is_unsigned() || d == DType::Bool
}

/// Memory flags of every buffer access: in bounds (verified), not necessarily aligned.
/// Params of `f` that no statement of `f` stores to.
///
/// Treating them as read-only memory is sound under the kernel ABI: a param the kernel does
/// not write is either not aliased by any param it writes, or (in-place elementwise kernels)
/// aliased element for element, with every element read before the same element is written,
/// and a load is placed no later than its first use, which precedes that write.
fn readonly_params(f: &PrimFunc) -> Vec<bool> {
    let mut ro = vec![false; f.buffers.len()];
    for p in &f.params {
        if let Some(r) = ro.get_mut(p.index()) {
            *r = true;
        }
    }
    f.body.walk(&mut |s| {
        if let Stmt::Store { buf, .. } = s {
            if let Some(r) = ro.get_mut(buf.index()) {
                *r = false;
            }
        }
    });
    ro
}

pub(crate) fn mem_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// State shared by every function emitted into one module.
pub(crate) struct EmitState<'m, M: Module> {
    pub module: &'m mut M,
    pub host: HostInfo,
    pub opts: CodegenOptions,
    pub call_conv: CallConv,
    pub frontend: TargetFrontendConfig,
    hooks: HashMap<&'static str, FuncId>,
    outlined: usize,
    pub stats: crate::CompileStats,
    /// Micro-kernels defined in the module, by [`crate::isa::microkernel::MicroCode::key`].
    pub(crate) microkernels: HashMap<Vec<u8>, FuncId>,
    /// Linkage of kernels and model entries: `Export` in the JIT (looked up by name), `Local`
    /// and `Hidden` in AOT objects (only the C ABI wrapper is visible outside the library).
    pub kernel_linkage: Linkage,
    pub entry_linkage: Linkage,
}

impl<'m, M: Module> EmitState<'m, M> {
    pub fn new(module: &'m mut M, host: HostInfo, opts: CodegenOptions) -> Self {
        let call_conv = module.isa().default_call_conv();
        let frontend = module.isa().frontend_config();
        EmitState {
            module,
            host,
            opts,
            call_conv,
            frontend,
            hooks: HashMap::new(),
            outlined: 0,
            stats: crate::CompileStats::default(),
            microkernels: HashMap::new(),
            kernel_linkage: Linkage::Export,
            entry_linkage: Linkage::Export,
        }
    }

    /// `int32_t (uint8_t *const *params)`.
    pub fn kernel_signature(&self) -> Signature {
        let mut s = Signature::new(self.call_conv);
        s.params.push(AbiParam::new(self.host.ptr));
        s.returns.push(AbiParam::new(types::I32));
        s
    }

    /// `int32_t (const uint8_t *ctx, int64_t begin, int64_t end)`.
    pub fn body_signature(&self) -> Signature {
        let mut s = Signature::new(self.call_conv);
        s.params.push(AbiParam::new(self.host.ptr));
        s.params.push(AbiParam::new(types::I64));
        s.params.push(AbiParam::new(types::I64));
        s.returns.push(AbiParam::new(types::I32));
        s
    }

    /// The id of runtime hook `name`, declared as an import on first use.
    pub fn hook(&mut self, name: &'static str, func: &str) -> Result<FuncId, CodegenError> {
        if let Some(&id) = self.hooks.get(name) {
            return Ok(id);
        }
        let hook = runtime::hook(name).ok_or_else(|| CodegenError::Cranelift {
            func: func.to_string(),
            message: format!("unknown runtime hook {name}"),
        })?;
        let sig = hook.sig.signature(self.call_conv, self.host.ptr);
        let id = self
            .module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(|e| cl_err(func, e))?;
        self.hooks.insert(name, id);
        Ok(id)
    }

    /// Declares a new local function for an outlined parallel body of `kernel`.
    pub fn declare_body(&mut self, kernel: &str) -> Result<(FuncId, String), CodegenError> {
        self.outlined += 1;
        self.stats.parallel_bodies += 1;
        let name = format!("{kernel}__par{}", self.outlined);
        let sig = self.body_signature();
        let id = self
            .module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| cl_err(kernel, e))?;
        Ok((id, name))
    }

    /// Compiles `func` into the module as the definition of `id`.
    pub fn define(&mut self, id: FuncId, func: Function, name: &str) -> Result<(), CodegenError> {
        let mut ctx = cranelift_codegen::Context::for_function(func);
        self.module
            .define_function(id, &mut ctx)
            .map_err(|e| CodegenError::Cranelift {
                func: name.to_string(),
                message: match &e {
                    cranelift_module::ModuleError::Compilation(
                        cranelift_codegen::CodegenError::Verifier(errs),
                    ) => format!(
                        "{}\n{}",
                        errs,
                        cranelift_codegen::print_errors::pretty_verifier_error(
                            &ctx.func,
                            None,
                            errs.clone()
                        )
                    ),
                    _ => format!("{e:?}"),
                },
            })
    }

    /// Declares the kernel of `f` (exported under its name).
    pub fn declare_kernel(&mut self, f: &PrimFunc) -> Result<FuncId, CodegenError> {
        let sig = self.kernel_signature();
        self.module
            .declare_function(&f.name, self.kernel_linkage, &sig)
            .map_err(|e| cl_err(&f.name, e))
    }

    /// Lowers `f` (verified) into the definition of `id`, then every body outlined from it.
    pub fn define_kernel(&mut self, id: FuncId, f: &PrimFunc) -> Result<(), CodegenError> {
        let private = if self.opts.threads == Threads::Single {
            HashMap::new()
        } else {
            parallel::private_locals(f)
        };
        let mut fctx = FunctionBuilderContext::new();
        let mut func = Function::with_name_signature(
            UserFuncName::user(0, id.as_u32()),
            self.kernel_signature(),
        );
        let jobs = {
            let mut lw = FnLowerer::new(self, f, &mut func, &mut fctx, &private, true);
            let params = lw.entry_param(0);
            for (i, &p) in f.params.iter().enumerate() {
                let base = lw.load_ptr(params, 8 * i as i32);
                lw.bases[p.index()] = Some(base);
            }
            let used = parallel::buffers_used(&f.body);
            let locals: Vec<BufferId> = (0..f.buffers.len())
                .map(|i| BufferId(i as u32))
                .filter(|b| f.buffers[b.index()].scope == Scope::Local)
                .filter(|b| used.contains(b) && !private.contains_key(b))
                .collect();
            lw.promo = promote::promotable(
                f,
                &f.body,
                &locals,
                lw.em.opts.vectorize,
                lw.outline_parallel,
            );
            lw.em.stats.promoted_buffers += lw.promo.len();
            let locals: Vec<BufferId> = locals
                .into_iter()
                .filter(|b| !lw.promo.contains_key(b))
                .collect();
            lw.alloc_locals(&locals)?;
            lw.stmt(&f.body)?;
            lw.finish()?
        };
        let name = f.name.clone();
        self.define(id, func, &name)?;
        for job in jobs {
            self.define_body(f, &private, job)?;
        }
        Ok(())
    }

    /// Defines one outlined parallel body (see [`crate::parallel`]).
    fn define_body(
        &mut self,
        f: &PrimFunc,
        private: &HashMap<BufferId, VarId>,
        job: OutlineJob,
    ) -> Result<(), CodegenError> {
        let mut fctx = FunctionBuilderContext::new();
        let mut func = Function::with_name_signature(
            UserFuncName::user(0, job.id.as_u32()),
            self.body_signature(),
        );
        {
            let mut lw = FnLowerer::new(self, f, &mut func, &mut fctx, private, false);
            let mine: Vec<BufferId> = job
                .used
                .iter()
                .copied()
                .filter(|b| private.get(b) == Some(&job.var))
                .collect();
            lw.promo = promote::promotable(f, &job.body, &mine, lw.em.opts.vectorize, false);
            lw.em.stats.promoted_buffers += lw.promo.len();
            lw.outlined_body(&job)?;
            let nested = lw.finish()?;
            debug_assert!(nested.is_empty());
        }
        self.define(job.id, func, &job.name)
    }
}

pub(crate) fn cl_err(func: &str, e: impl std::fmt::Debug) -> CodegenError {
    CodegenError::Cranelift {
        func: func.to_string(),
        message: format!("{e:?}"),
    }
}

/// A Cranelift function under construction from (part of) a [`PrimFunc`].
pub(crate) struct FnLowerer<'s, 'm, 'b, M: Module> {
    pub em: &'s mut EmitState<'m, M>,
    pub f: &'s PrimFunc,
    pub b: FunctionBuilder<'b>,
    /// Base pointer of each buffer, where known in this function.
    pub bases: Vec<Option<Value>>,
    vars: Vec<Option<Variable>>,
    func_refs: HashMap<FuncId, FuncRef>,
    entry: Block,
    /// The exit block; its one `i32` parameter is the status returned.
    exit: Block,
    /// Heap-allocated locals `(pointer, bytes)`, freed in the exit block.
    heap: Vec<(Value, u64)>,
    stack_used: u64,
    /// Locals private to a parallel loop (by loop variable).
    pub private: &'s HashMap<BufferId, VarId>,
    /// Whether `parallel` loops are outlined here (in the kernel, with threads) or run inline.
    pub(crate) outline_parallel: bool,
    pub jobs: Vec<OutlineJob>,
    /// Local buffers held in variables (see [`crate::promote`]).
    pub promo: HashMap<BufferId, Promotion>,
    promo_vars: HashMap<(BufferId, i64), Variable>,
    /// Values of loop variables that are constant in the code being emitted (unrolled copies,
    /// vector chunks).
    pub consts: Vec<Option<i64>>,
    /// Per buffer: a param the function never stores to, loaded as read-only memory.
    readonly: Vec<bool>,
    /// How many conditionals (`if`, branching `select`) enclose the code being emitted.
    pub(crate) guarded: usize,
    /// The element a serial reduction loop being emitted keeps in a variable (see
    /// [`crate::serial_reduce`]).
    pub(crate) carried: Option<crate::serial_reduce::Carried>,
}

impl<'s, 'm, 'b, M: Module> FnLowerer<'s, 'm, 'b, M> {
    fn new(
        em: &'s mut EmitState<'m, M>,
        f: &'s PrimFunc,
        func: &'b mut Function,
        fctx: &'b mut FunctionBuilderContext,
        private: &'s HashMap<BufferId, VarId>,
        is_kernel: bool,
    ) -> Self {
        let mut b = FunctionBuilder::new(func, fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let exit = b.create_block();
        b.append_block_param(exit, types::I32);
        let outline_parallel = is_kernel && em.opts.threads != Threads::Single;
        FnLowerer {
            em,
            f,
            b,
            bases: vec![None; f.buffers.len()],
            vars: vec![None; f.vars.len()],
            func_refs: HashMap::new(),
            entry,
            exit,
            heap: vec![],
            stack_used: 0,
            private,
            outline_parallel,
            jobs: vec![],
            promo: HashMap::new(),
            promo_vars: HashMap::new(),
            carried: None,
            consts: vec![None; f.vars.len()],
            readonly: readonly_params(f),
            guarded: 0,
        }
    }

    /// Flags of a load of `buf`: a load of a param the function never stores to, outside any
    /// conditional, is a pure read-only load that may move (so Cranelift places it next to its
    /// use, which keeps register pressure low, and hoists it out of loops when invariant); a
    /// guarded load never moves above its guard.
    pub fn load_flags(&self, buf: BufferId) -> MemFlagsData {
        if self.guarded == 0 && self.readonly.get(buf.index()).copied().unwrap_or(false) {
            mem_flags().with_readonly().with_can_move()
        } else {
            mem_flags()
        }
    }

    /// Parameter `i` of the function.
    pub fn entry_param(&self, i: usize) -> Value {
        self.b.block_params(self.entry)[i]
    }

    /// Jumps to the exit block with status 0 and emits it; returns the outlined jobs.
    fn finish(mut self) -> Result<Vec<OutlineJob>, CodegenError> {
        let zero = self.b.ins().iconst(types::I32, 0);
        self.b.ins().jump(self.exit, &[BlockArg::Value(zero)]);
        self.b.switch_to_block(self.exit);
        let status = self.b.block_params(self.exit)[0];
        if !self.heap.is_empty() {
            let free = self.hook_ref(names::FREE)?;
            for (ptr, bytes) in std::mem::take(&mut self.heap) {
                let size = self.b.ins().iconst(types::I64, bytes as i64);
                let align = self.b.ins().iconst(types::I64, LOCAL_ALIGN as i64);
                self.b.ins().call(free, &[ptr, size, align]);
            }
        }
        self.b.ins().return_(&[status]);
        self.b.seal_all_blocks();
        let frontend = self.em.frontend;
        let jobs = std::mem::take(&mut self.jobs);
        self.b.finalize(frontend);
        Ok(jobs)
    }

    /// A function reference to `id` usable in this function.
    pub fn func_ref(&mut self, id: FuncId) -> FuncRef {
        if let Some(&r) = self.func_refs.get(&id) {
            return r;
        }
        let r = self.em.module.declare_func_in_func(id, self.b.func);
        self.func_refs.insert(id, r);
        r
    }

    /// A function reference to runtime hook `name`.
    pub fn hook_ref(&mut self, name: &'static str) -> Result<FuncRef, CodegenError> {
        let id = self.em.hook(name, &self.f.name)?;
        Ok(self.func_ref(id))
    }

    /// Loads a pointer-sized value at `base + offset`.
    pub fn load_ptr(&mut self, base: Value, offset: i32) -> Value {
        let ptr = self.em.host.ptr;
        self.b
            .ins()
            .load(ptr, MemFlagsData::trusted(), base, offset)
    }

    /// The Cranelift variable of loop variable `v`.
    pub fn var(&mut self, v: VarId) -> Variable {
        if let Some(Some(var)) = self.vars.get(v.index()) {
            return *var;
        }
        let var = self.b.declare_var(types::I64);
        if let Some(slot) = self.vars.get_mut(v.index()) {
            *slot = Some(var);
        }
        var
    }

    pub fn err_internal(&self, what: impl Into<String>) -> CodegenError {
        CodegenError::Unsupported {
            func: self.f.name.clone(),
            construct: what.into(),
        }
    }

    /// The dtype of `e`.
    pub fn dtype(&self, e: &Expr) -> Result<DType, CodegenError> {
        self.f
            .expr_dtype(e)
            .map_err(|t| self.err_internal(format!("ill-typed expression: {t}")))
    }

    /// Allocates the local buffers `bufs` (stack when small, heap otherwise); leaves with
    /// [`STATUS_ALLOC_FAILED`] when a heap allocation fails.
    pub fn alloc_locals(&mut self, bufs: &[BufferId]) -> Result<(), CodegenError> {
        let mut fresh_heap = vec![];
        for &buf in bufs {
            let decl = &self.f.buffers[buf.index()];
            let bytes = (decl.num_elements() as u64)
                .saturating_mul(elem_bytes(decl.dtype))
                .max(1);
            let ptr = self.em.host.ptr;
            let base = if bytes <= MAX_STACK_BUFFER && self.stack_used + bytes <= STACK_BUDGET {
                self.stack_used += bytes.next_multiple_of(LOCAL_ALIGN);
                let slot = self.b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    bytes as u32,
                    LOCAL_ALIGN.trailing_zeros() as u8,
                ));
                self.b.ins().stack_addr(ptr, slot, 0)
            } else {
                let alloc = self.hook_ref(names::ALLOC)?;
                let size = self.b.ins().iconst(types::I64, bytes as i64);
                let align = self.b.ins().iconst(types::I64, LOCAL_ALIGN as i64);
                let call = self.b.ins().call(alloc, &[size, align]);
                let p = self.b.inst_results(call)[0];
                self.heap.push((p, bytes));
                fresh_heap.push(p);
                p
            };
            self.bases[buf.index()] = Some(base);
        }
        for p in fresh_heap {
            let null = self.b.ins().icmp_imm_s(IntCC::Equal, p, 0);
            self.leave_if(null, STATUS_ALLOC_FAILED);
        }
        Ok(())
    }

    /// Leaves the function with `status` when `cond` (an `i8` truth value) holds.
    pub fn leave_if(&mut self, cond: Value, status: i32) {
        let s = self.b.ins().iconst(types::I32, status as i64);
        self.leave_with_if(cond, s);
    }

    /// Leaves the function with the status value `status` when `cond` holds.
    pub fn leave_with_if(&mut self, cond: Value, status: Value) {
        let cont = self.b.create_block();
        self.b
            .ins()
            .brif(cond, self.exit, &[BlockArg::Value(status)], cont, &[]);
        self.b.switch_to_block(cont);
    }

    // ---- statements ----

    pub fn stmt(&mut self, s: &Stmt) -> Result<(), CodegenError> {
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => self.for_loop(*var, *extent, *kind, body),
            Stmt::Seq(v) => v.iter().try_for_each(|s| self.stmt(s)),
            Stmt::Tensorized { intrinsic, body } => self.tensorized(*intrinsic, body),
            Stmt::Store {
                buf,
                indices,
                value,
            } => {
                if let Some(var) = self
                    .carried
                    .as_ref()
                    .filter(|c| c.is(*buf, indices))
                    .map(|c| c.var)
                {
                    let v = self.expr(value)?;
                    self.b.def_var(var, v);
                    return Ok(());
                }
                if self.promo.contains_key(buf) {
                    let var = self.promoted_var(*buf, indices, 1)?;
                    let v = self.expr(value)?;
                    let v = self.round_half(self.f.buffers[buf.index()].dtype, v)?;
                    self.b.def_var(var, v);
                    return Ok(());
                }
                let addr = self.address(*buf, indices)?;
                let v = self.expr(value)?;
                let v = match self.f.buffers[buf.index()].dtype {
                    DType::F16 => self.call_hook(names::F32_TO_F16, &[v])?,
                    DType::BF16 => self.f32_to_bf16(v),
                    _ => v,
                };
                self.b.ins().store(mem_flags(), v, addr, 0);
                Ok(())
            }
            Stmt::IfThenElse {
                cond,
                then,
                otherwise,
            } => {
                let c = self.expr(cond)?;
                let (tb, eb, join) = (
                    self.b.create_block(),
                    self.b.create_block(),
                    self.b.create_block(),
                );
                self.b.ins().brif(c, tb, &[], eb, &[]);
                self.guarded += 1;
                self.b.switch_to_block(tb);
                self.stmt(then)?;
                self.b.ins().jump(join, &[]);
                self.b.switch_to_block(eb);
                if let Some(o) = otherwise {
                    self.stmt(o)?;
                }
                self.guarded -= 1;
                self.b.ins().jump(join, &[]);
                self.b.switch_to_block(join);
                Ok(())
            }
        }
    }

    // ---- addresses ----

    /// The variable holding the element (`lanes == 1`) or the 4-element group (`lanes == 4`)
    /// of promoted buffer `buf` at `indices`, whose variables are all constant here.
    pub fn promoted_var(
        &mut self,
        buf: BufferId,
        indices: &[Expr],
        lanes: usize,
    ) -> Result<Variable, CodegenError> {
        let decl = &self.f.buffers[buf.index()];
        let consts = &self.consts;
        let off = promote::offset(&decl.shape, indices, &|v: VarId| {
            consts.get(v.index()).copied().flatten()
        })
        .ok_or_else(|| {
            self.err_internal(format!("promoted %{} at a non-constant index", decl.name))
        })?;
        if self.promo.get(&buf).map(|p| p.lanes) != Some(lanes) {
            return Err(self.err_internal(format!(
                "promoted %{} accessed with {lanes} lanes",
                decl.name
            )));
        }
        if let Some(&v) = self.promo_vars.get(&(buf, off)) {
            return Ok(v);
        }
        let scalar = clif_type(decl.dtype);
        let ty = if lanes == 1 {
            scalar
        } else {
            scalar
                .by(lanes as u32)
                .ok_or_else(|| self.err_internal("vector type"))?
        };
        let v = self.b.declare_var(ty);
        self.promo_vars.insert((buf, off), v);
        Ok(v)
    }

    /// An index expression as an `i64` value.
    pub fn index(&mut self, e: &Expr) -> Result<Value, CodegenError> {
        let d = self.dtype(e)?;
        let v = self.expr(e)?;
        Ok(match d {
            DType::I64 | DType::U64 => v,
            d if unsigned(d) => self.b.ins().uextend(types::I64, v),
            _ => self.b.ins().sextend(types::I64, v),
        })
    }

    /// The address of element `indices` of `buf` (row-major).
    pub fn address(&mut self, buf: BufferId, indices: &[Expr]) -> Result<Value, CodegenError> {
        let decl = self
            .f
            .buffer(buf)
            .ok_or_else(|| self.err_internal(format!("unknown buffer {}", buf.0)))?;
        let (shape, dtype) = (decl.shape.clone(), decl.dtype);
        let base = self.bases[buf.index()].ok_or_else(|| {
            self.err_internal(format!("buffer %{} has no storage here", decl.name))
        })?;
        let mut off: Option<Value> = None;
        for (i, &d) in indices.iter().zip(&shape) {
            let iv = self.index(i)?;
            off = Some(match off {
                None => iv,
                Some(o) => {
                    let scaled = self.b.ins().imul_imm_s(o, d as i64);
                    self.b.ins().iadd(scaled, iv)
                }
            });
        }
        Ok(match off {
            None => base,
            Some(o) => {
                let bytes = self.b.ins().imul_imm_s(o, elem_bytes(dtype) as i64);
                self.b.ins().iadd(base, bytes)
            }
        })
    }
}
