//! The JIT: compile [`PrimFunc`]s (and model entries) into executable memory and call them
//! through a safe API.
//!
//! Invariant: generated code is only reachable through a [`Kernel`] or [`ModelFn`] borrowed from
//! the [`JitModule`] that owns its memory, and their `run` methods check every argument (count,
//! dtype, shape or byte length) before the one `unsafe` call, so safe code cannot make a kernel
//! touch memory outside the buffers it was given. The memory is freed when the module drops.

#![allow(unsafe_code)]

use crate::entry::{self, EntryLayout, ModelEntry};
use crate::isa::{target_isa, HostInfo};
use crate::kernel::{elem_bytes, EmitState};
use crate::runtime::HOOKS;
use crate::{CodegenError, CodegenOptions, CompileStats, Threads};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::default_libcall_names;
use kiln_ir::{dispatch_data, DType, Tensor, TensorData, TensorType};
use kiln_tir::PrimFunc;

/// A param of a compiled kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Bytes of the dense buffer.
    pub bytes: usize,
}

#[derive(Debug)]
struct KernelInfo {
    name: String,
    params: Vec<ParamInfo>,
    addr: *const u8,
}

#[derive(Debug)]
struct EntryInfo {
    name: String,
    layout: EntryLayout,
    addr: *const u8,
}

/// Compiled kernels and model entries in executable memory.
pub struct JitModule {
    module: Option<JITModule>,
    kernels: Vec<KernelInfo>,
    entries: Vec<EntryInfo>,
    pool: Option<crate::pool::SpinPool>,
    host: HostInfo,
    stats: CompileStats,
}

impl std::fmt::Debug for JitModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitModule")
            .field("kernels", &self.kernels)
            .field("entries", &self.entries)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw addresses in `kernels`/`entries` point into executable memory that the module
// owns and never writes after `finalize_definitions`; compiled code keeps no state between calls
// (every buffer it touches is passed to it), so calls from several threads at once are as safe as
// calls from one: a parallel loop submitted while another runs takes no pool worker and runs on
// its own thread (`crate::pool`). The cranelift module is touched again only by `Drop`.
unsafe impl Send for JitModule {}
// SAFETY: as above: `&JitModule` only reads immutable addresses and calls reentrant code.
unsafe impl Sync for JitModule {}

impl Drop for JitModule {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: every pointer into this memory lives in `kernels`/`entries`, reachable only
            // through borrows of `self`, which have ended.
            unsafe { m.free_memory() };
        }
    }
}

/// The signature of a compiled kernel.
type KernelFn = unsafe extern "C" fn(params: *const *mut u8) -> i32;
/// The signature of a compiled model entry.
type EntryFn = unsafe extern "C" fn(
    inputs: *const *const u8,
    outputs: *const *mut u8,
    arena: *mut u8,
    constants: *const *const u8,
) -> i32;

impl JitModule {
    /// Compiles `funcs` (each verified first) into one module.
    pub fn compile(funcs: &[PrimFunc], opts: &CodegenOptions) -> Result<JitModule, CodegenError> {
        JitModule::compile_with_entries(funcs, &[], opts)
    }

    /// Compiles `funcs` and the model entry functions `entries` calling them.
    pub fn compile_with_entries(
        funcs: &[PrimFunc],
        entries: &[ModelEntry],
        opts: &CodegenOptions,
    ) -> Result<JitModule, CodegenError> {
        let layouts = entry::check_module(funcs, entries, &[])?;
        let isa = target_isa(&opts.isa, false, opts.verify_ir)?;
        let host = HostInfo::of(&*isa);
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        for h in HOOKS {
            builder.symbol(h.name, (h.addr)());
        }
        let pool = match opts.threads {
            Threads::Pool(n) => Some(
                crate::pool::SpinPool::new(n)
                    .map_err(|e| CodegenError::ThreadPool(e.to_string()))?,
            ),
            Threads::Single | Threads::Global => None,
        };
        let mut jit = JitModule {
            module: Some(JITModule::new(builder)),
            kernels: vec![],
            entries: vec![],
            pool,
            host,
            stats: CompileStats::default(),
        };
        let Some(module) = jit.module.as_mut() else {
            return Err(CodegenError::Isa("JIT module missing".into()));
        };
        let (kernel_ids, entry_ids) = {
            let mut em = EmitState::new(module, host, opts.clone());
            let ids = entry::define_module(&mut em, funcs, entries)?;
            jit.stats = em.stats;
            ids
        };
        module
            .finalize_definitions()
            .map_err(|e| CodegenError::Cranelift {
                func: "<module>".into(),
                message: e.to_string(),
            })?;
        for (f, id) in funcs.iter().zip(kernel_ids) {
            let params = f
                .params
                .iter()
                .map(|p| {
                    let d = &f.buffers[p.index()];
                    ParamInfo {
                        name: d.name.clone(),
                        dtype: d.dtype,
                        shape: d.shape.clone(),
                        bytes: d
                            .num_elements()
                            .saturating_mul(elem_bytes(d.dtype) as usize),
                    }
                })
                .collect();
            jit.kernels.push(KernelInfo {
                name: f.name.clone(),
                params,
                addr: module.get_finalized_function(id),
            });
        }
        for ((e, layout), id) in entries.iter().zip(layouts).zip(entry_ids) {
            jit.entries.push(EntryInfo {
                name: e.name.clone(),
                layout,
                addr: module.get_finalized_function(id),
            });
        }
        Ok(jit)
    }

    /// The compiled kernel of the function named `name`.
    pub fn kernel(&self, name: &str) -> Option<Kernel<'_>> {
        let info = self.kernels.iter().find(|k| k.name == name)?;
        Some(Kernel { jit: self, info })
    }

    /// The compiled model entry named `name`.
    pub fn entry(&self, name: &str) -> Option<ModelFn<'_>> {
        let info = self.entries.iter().find(|e| e.name == name)?;
        Some(ModelFn { jit: self, info })
    }

    /// What codegen did.
    pub fn stats(&self) -> CompileStats {
        self.stats
    }

    /// What codegen knew about the host.
    pub fn host(&self) -> HostInfo {
        self.host
    }

    /// Runs `f` on the calling thread, its parallel loops on the module's own pool when it
    /// has one.
    fn in_pool(&self, f: impl FnOnce() -> i32) -> i32 {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

/// A compiled kernel.
#[derive(Debug, Clone, Copy)]
pub struct Kernel<'m> {
    jit: &'m JitModule,
    info: &'m KernelInfo,
}

impl Kernel<'_> {
    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The params, in calling order.
    pub fn params(&self) -> &[ParamInfo] {
        &self.info.params
    }

    fn bad(&self, reason: String) -> CodegenError {
        CodegenError::BadArguments {
            func: self.info.name.clone(),
            reason,
        }
    }

    /// Runs the kernel on `args` (one tensor per param, of its dtype and shape; outputs are
    /// written in place), like [`kiln_tir::interp::run`].
    pub fn run(&self, args: &mut [Tensor]) -> Result<(), CodegenError> {
        self.check_count(args.len())?;
        for (p, t) in self.info.params.iter().zip(args.iter()) {
            if t.dtype() != p.dtype || t.shape() != p.shape.as_slice() {
                return Err(self.bad(format!(
                    "%{}: expected {}{:?}, given {}{:?}",
                    p.name,
                    p.dtype,
                    p.shape,
                    t.dtype(),
                    t.shape()
                )));
            }
        }
        let mut taken: Vec<(TensorType, TensorData)> = args
            .iter_mut()
            .map(|t| {
                let t = std::mem::replace(t, Tensor::scalar(false));
                (t.ty().clone(), t.into_data())
            })
            .collect();
        let ptrs: Vec<*mut u8> = taken
            .iter_mut()
            .map(|(_, d)| dispatch_data!(d, v => v.as_mut_ptr().cast::<u8>()))
            .collect();
        // The checks above make each pointer a distinct buffer of its param's dtype and size.
        let status = self.call(&ptrs);
        for (t, (ty, data)) in args.iter_mut().zip(taken) {
            *t = Tensor::from_data(ty, data).map_err(|e| self.bad(e.to_string()))?;
        }
        CodegenError::from_status(&self.info.name, status)
    }

    /// Runs the kernel on raw little-endian buffers, one per param, each exactly the param's
    /// byte size (`bool` bytes must be 0 or 1).
    pub fn run_bytes(&self, args: &mut [&mut [u8]]) -> Result<(), CodegenError> {
        self.check_count(args.len())?;
        for (p, a) in self.info.params.iter().zip(args.iter()) {
            if a.len() != p.bytes {
                return Err(self.bad(format!(
                    "%{}: expected {} bytes, given {}",
                    p.name,
                    p.bytes,
                    a.len()
                )));
            }
        }
        let ptrs: Vec<*mut u8> = args.iter_mut().map(|a| a.as_mut_ptr()).collect();
        let status = self.call(&ptrs);
        CodegenError::from_status(&self.info.name, status)
    }

    fn check_count(&self, n: usize) -> Result<(), CodegenError> {
        if n != self.info.params.len() {
            return Err(self.bad(format!(
                "expected {} buffers, given {n}",
                self.info.params.len()
            )));
        }
        Ok(())
    }

    /// Calls the kernel; `ptrs` must hold one distinct buffer of the right size per param.
    fn call(&self, ptrs: &[*mut u8]) -> i32 {
        debug_assert_eq!(ptrs.len(), self.info.params.len());
        // SAFETY: `addr` is the finalized address of a function compiled with the kernel
        // signature `KernelFn`; the module owning it outlives `self`.
        let f = unsafe { std::mem::transmute::<*const u8, KernelFn>(self.info.addr) };
        self.jit.in_pool(|| {
            // SAFETY: callers (`run`, `run_bytes`) checked that there is one pointer per param,
            // each to a distinct live buffer of the param's byte size; the verified kernel
            // accesses only elements inside those shapes.
            unsafe { f(ptrs.as_ptr()) }
        })
    }
}

/// A compiled whole-model entry function.
#[derive(Debug, Clone, Copy)]
pub struct ModelFn<'m> {
    jit: &'m JitModule,
    info: &'m EntryInfo,
}

impl ModelFn<'_> {
    /// The bytes the entry needs from each argument.
    pub fn layout(&self) -> &EntryLayout {
        &self.info.layout
    }

    /// Runs the model: checks that every input, output and constant the calls use is at least as
    /// large as they need and the arena covers every arena range, then calls the entry.
    pub fn run(
        &self,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        arena: &mut [u8],
        constants: &[&[u8]],
    ) -> Result<(), CodegenError> {
        let l = &self.info.layout;
        let bad = |reason: String| CodegenError::BadArguments {
            func: self.info.name.clone(),
            reason,
        };
        let check = |what: &str, need: &[usize], given: &[usize]| {
            if given.len() < need.len() {
                return Err(bad(format!(
                    "{} {what} needed, {} given",
                    need.len(),
                    given.len()
                )));
            }
            for (k, (&n, &g)) in need.iter().zip(given).enumerate() {
                if g < n {
                    return Err(bad(format!("{what} {k}: {n} bytes needed, {g} given")));
                }
            }
            Ok(())
        };
        let lens = |v: &[&[u8]]| v.iter().map(|s| s.len()).collect::<Vec<_>>();
        check("inputs", &l.inputs, &lens(inputs))?;
        let out_lens: Vec<usize> = outputs.iter().map(|s| s.len()).collect();
        check("outputs", &l.outputs, &out_lens)?;
        check("constants", &l.constants, &lens(constants))?;
        if arena.len() < l.arena {
            return Err(bad(format!(
                "arena: {} bytes needed, {} given",
                l.arena,
                arena.len()
            )));
        }
        let ins: Vec<*const u8> = inputs.iter().map(|s| s.as_ptr()).collect();
        let outs: Vec<*mut u8> = outputs.iter_mut().map(|s| s.as_mut_ptr()).collect();
        let consts: Vec<*const u8> = constants.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: `addr` is the finalized address of an entry compiled with signature `EntryFn`;
        // the module owning it outlives `self`.
        let f = unsafe { std::mem::transmute::<*const u8, EntryFn>(self.info.addr) };
        let arena = arena.as_mut_ptr();
        let status = self.jit.in_pool(|| {
            // SAFETY: the sizes were checked against the layout, which covers every byte any
            // kernel call touches; outputs and the arena are exclusive borrows, inputs and
            // constants are only read (checked when the entry was compiled), and the arena
            // ranges of one call are disjoint.
            unsafe { f(ins.as_ptr(), outs.as_ptr(), arena, consts.as_ptr()) }
        });
        CodegenError::from_status(&self.info.name, status)
    }
}

/// Executable memory holding one micro-kernel-ABI function: machine code, or IR compiled for
/// the host.
struct RawFunction {
    module: Option<JITModule>,
    addr: *const u8,
}

impl RawFunction {
    fn new(code: crate::isa::microkernel::MicroCode) -> Result<RawFunction, CodegenError> {
        use crate::isa::microkernel::MicroCode;
        use cranelift_codegen::ir::{AbiParam, Signature};
        use cranelift_module::{Linkage, Module};
        let host = target_isa(&crate::IsaSpec::Host, false, false)?;
        let mut module = JITModule::new(JITBuilder::with_isa(host, default_libcall_names()));
        let mut sig = Signature::new(module.isa().default_call_conv());
        sig.params.push(AbiParam::new(module.isa().pointer_type()));
        let err = |e: cranelift_module::ModuleError| CodegenError::Cranelift {
            func: "microkernel".into(),
            message: e.to_string(),
        };
        let id = module
            .declare_function("microkernel", Linkage::Local, &sig)
            .map_err(err)?;
        match code {
            MicroCode::Machine(bytes) => module
                .define_function_bytes(id, 64, &bytes, &[])
                .map_err(err)?,
            MicroCode::Ir(mut func) => {
                func.signature = sig;
                let mut ctx = cranelift_codegen::Context::for_function(*func);
                module.define_function(id, &mut ctx).map_err(err)?;
            }
        }
        module.finalize_definitions().map_err(err)?;
        let addr = module.get_finalized_function(id);
        Ok(RawFunction {
            module: Some(module),
            addr,
        })
    }
}

impl Drop for RawFunction {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: `addr` is only used by methods borrowing `self`, which have ended.
            unsafe { m.free_memory() };
        }
    }
}

/// Whether Cranelift's host ISA lowers `fma` to an instruction (IR micro-kernels need it).
pub fn host_has_fma() -> Result<bool, CodegenError> {
    let isa = target_isa(&crate::IsaSpec::Host, false, false)?;
    Ok(crate::isa::HostInfo::of(&*isa).has_fma)
}

/// The f32 peak of one core of this machine with `isa`'s vectors, in GFLOP/s: the best of a
/// few timed runs of [`crate::isa::microkernel::peak_loop`] (about a millisecond).
pub fn measure_peak_gflops(isa: crate::isa::microkernel::MicroIsa) -> Result<f64, CodegenError> {
    if !isa.runs_here() {
        return Err(CodegenError::Isa(format!(
            "this machine does not run {} micro-kernels",
            isa.name()
        )));
    }
    const ITERS: u32 = 20_000;
    let bytes = crate::isa::microkernel::peak_loop(isa, ITERS)
        .map_err(|e| CodegenError::Isa(e.to_string()))?;
    let f = RawFunction::new(crate::isa::microkernel::MicroCode::Machine(bytes))?;
    let flops = 24.0 * isa.f32_lanes() as f64 * f64::from(ITERS);
    let mut best = f64::INFINITY;
    for _ in 0..8 {
        let t = std::time::Instant::now();
        // SAFETY: the peak loop follows the micro-kernel ABI and touches no memory.
        unsafe {
            let call: unsafe extern "C" fn(*const u8) = std::mem::transmute(f.addr);
            call(std::ptr::null());
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(flops / best / 1e9)
}

/// [`run_microkernel`] for an 8-bit integer kernel over raw bytes: each slot is a byte buffer
/// and the byte offset of its access's base (see
/// [`crate::isa::microkernel::ContractionKernel::reference_bytes`]).
pub fn run_microkernel_bytes(
    isa: crate::isa::microkernel::MicroIsa,
    kernel: &crate::isa::microkernel::ContractionKernel,
    lhs: crate::isa::microkernel::ByteSlot,
    rhs: crate::isa::microkernel::ByteSlot,
    out: (&mut [u8], usize),
    inputs: &[crate::isa::microkernel::ByteSlot],
) -> Result<(), CodegenError> {
    // The output's pointer comes from its mutable borrow: the kernel writes through it.
    let out = BytesAt {
        ptr: out.0.as_mut_ptr().cast_const(),
        len: out.0.len(),
        base: out.1,
    };
    let mut slots = vec![BytesAt::of(lhs.0, lhs.1), BytesAt::of(rhs.0, rhs.1), out];
    slots.extend(inputs.iter().map(|&(b, i)| BytesAt::of(b, i)));
    call_microkernel(isa, kernel, &slots)
}

/// Runs micro-kernel `kernel` of family `isa` once on this machine: a safe entry for tests
/// and benchmarks of the generators. Each buffer comes with the element index of its access's
/// base; checks that the machine runs `isa` and that every access lies inside its slice. A
/// family whose kernels are Cranelift IR ([`MicroIsa::is_ir`]) runs that IR compiled for this
/// machine when it has FMA: how its generator is tested on a host of another architecture.
///
/// [`MicroIsa::is_ir`]: crate::isa::microkernel::MicroIsa::is_ir
pub fn run_microkernel(
    isa: crate::isa::microkernel::MicroIsa,
    kernel: &crate::isa::microkernel::ContractionKernel,
    lhs: crate::isa::microkernel::Slot,
    rhs: crate::isa::microkernel::Slot,
    out: (&mut [f32], usize),
    inputs: &[crate::isa::microkernel::Slot],
) -> Result<(), CodegenError> {
    let f32s = |b: &[f32], i: usize| BytesAt {
        ptr: b.as_ptr().cast(),
        len: 4 * b.len(),
        base: 4 * i,
    };
    // The output's pointer comes from its mutable borrow: the kernel writes through it.
    let out = BytesAt {
        ptr: out.0.as_mut_ptr().cast_const().cast(),
        len: 4 * out.0.len(),
        base: 4 * out.1,
    };
    let mut slots = vec![f32s(lhs.0, lhs.1), f32s(rhs.0, rhs.1), out];
    slots.extend(inputs.iter().map(|&(b, i)| f32s(b, i)));
    call_microkernel(isa, kernel, &slots)
}

/// Runs pointwise micro-kernel `kernel` of family `isa` once on this machine (a safe entry for
/// tests of the generators): `out[..cols]` from `inputs` (each read from its start); checks
/// that the machine runs `isa` and that every buffer holds what the kernel reads or writes.
pub fn run_pointwise(
    isa: crate::isa::microkernel::MicroIsa,
    kernel: &crate::isa::microkernel::PointwiseKernel,
    out: &mut [f32],
    inputs: &[&[f32]],
) -> Result<(), CodegenError> {
    let bad = |reason: String| CodegenError::BadArguments {
        func: "pointwise microkernel".into(),
        reason,
    };
    if !isa.runs_here() {
        return Err(CodegenError::Isa(format!(
            "this machine does not run {} micro-kernels",
            isa.name()
        )));
    }
    let f32s = |d: &kiln_ir::DType| *d == kiln_ir::DType::F32;
    if !f32s(&kernel.out) || !kernel.input_types.iter().all(f32s) {
        return Err(bad("a kernel of other types than f32 on f32 slices".into()));
    }
    if inputs.len() != kernel.contiguous.len() {
        return Err(bad(format!(
            "{} inputs given, {} expected",
            inputs.len(),
            kernel.contiguous.len()
        )));
    }
    let short = inputs
        .iter()
        .zip(&kernel.contiguous)
        .position(|(x, &c)| x.len() < if c { kernel.cols } else { 1 });
    if let Some(i) = short {
        return Err(bad(format!("input {i} is shorter than the kernel reads")));
    }
    if out.len() < kernel.cols {
        return Err(bad(format!(
            "an output of {} elements for {} columns",
            out.len(),
            kernel.cols
        )));
    }
    let code = crate::isa::microkernel::generate_pointwise(isa, kernel)
        .map_err(|e| CodegenError::Isa(e.to_string()))?;
    let f = RawFunction::new(code)?;
    let mut ptrs: Vec<*const u8> = vec![out.as_mut_ptr().cast_const().cast()];
    ptrs.extend(inputs.iter().map(|x| x.as_ptr().cast::<u8>()));
    // SAFETY: `addr` is the kernel's code in live executable memory; the kernel follows the
    // micro-kernel ABI and, as checked above, reads `cols` elements of each contiguous input,
    // one of each broadcast one, and writes `cols` elements of the output through its own
    // mutable borrow.
    unsafe {
        let call: unsafe extern "C" fn(*const *const u8) = std::mem::transmute(f.addr);
        call(ptrs.as_ptr());
    }
    Ok(())
}

/// A buffer given to a micro-kernel: its start, its length and the offset of the access's
/// base, in bytes.
struct BytesAt {
    ptr: *const u8,
    len: usize,
    base: usize,
}

impl BytesAt {
    fn of(b: &[u8], base: usize) -> BytesAt {
        BytesAt {
            ptr: b.as_ptr(),
            len: b.len(),
            base,
        }
    }
}

/// Checks that this machine runs `isa` and that each of `kernel`'s accesses lies inside its
/// buffer (lhs, rhs, out, inputs), then calls the kernel once.
fn call_microkernel(
    isa: crate::isa::microkernel::MicroIsa,
    kernel: &crate::isa::microkernel::ContractionKernel,
    slots: &[BytesAt],
) -> Result<(), CodegenError> {
    let bad = |reason: String| CodegenError::BadArguments {
        func: "microkernel".into(),
        reason,
    };
    if !(isa.runs_here() || isa.is_ir() && host_has_fma()?) {
        return Err(CodegenError::Isa(format!(
            "this machine does not run {} micro-kernels",
            isa.name()
        )));
    }
    if slots.len() != 3 + kernel.inputs.len() {
        return Err(bad(format!(
            "{} epilogue inputs given, {} expected",
            slots.len().saturating_sub(3),
            kernel.inputs.len()
        )));
    }
    for (i, ((lo, hi), s)) in kernel.byte_ranges().into_iter().zip(slots).enumerate() {
        let base = s.base as i64;
        if base + lo < 0 || base + hi > s.len as i64 {
            return Err(bad(format!(
                "pointer {i}: accesses bytes {}..{} of a {}-byte buffer",
                base + lo,
                base + hi,
                s.len
            )));
        }
    }
    let code = crate::isa::microkernel::generate(isa, kernel)
        .map_err(|e| CodegenError::Isa(e.to_string()))?;
    let f = RawFunction::new(code)?;
    // SAFETY: each base lies inside its buffer (checked above), so the offsets stay in bounds.
    let ptrs: Vec<*const u8> = slots.iter().map(|s| unsafe { s.ptr.add(s.base) }).collect();
    // SAFETY: `addr` is the kernel's code in live executable memory; the kernel follows the
    // micro-kernel ABI (System V, one pointer argument) and, as checked above, reads and
    // writes only inside the given buffers (the output only through its own).
    unsafe {
        let call: unsafe extern "C" fn(*const *const u8) = std::mem::transmute(f.addr);
        call(ptrs.as_ptr());
    }
    Ok(())
}
