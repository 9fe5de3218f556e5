//! Tensorized regions: a call of a target micro-kernel where the ISA has one, else the region's
//! loop nest compiled like any other.
//!
//! Invariant: a `Tensorized` statement compiles to code with the statement's semantics. With a
//! micro-kernel, the call passes the address of each access's base element (evaluated with the
//! region's enclosing loop variables) in the order of the micro-kernel ABI; every accessed
//! buffer has a base pointer in the function being emitted (a buffer held in registers, see
//! [`crate::promote`], sends the region to the loop-nest path). A region with a row limit calls
//! the full kernel when all its rows exist, the kernel of the tail's rows when some do, and
//! nothing otherwise. Micro-kernels are defined once per module per distinct code (machine code
//! or IR) and are local symbols.

use crate::isa::microkernel::{self, ContractionKernel, MicroCode, MicroIsa};
use crate::kernel::{cl_err, EmitState, FnLowerer};
use crate::CodegenError;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, Signature, StackSlotData, StackSlotKind,
};
use cranelift_module::{FuncId, Linkage, Module};
use kiln_tir::{Stmt, TensorIntrinsic};

impl<M: Module> EmitState<'_, M> {
    /// The module function of micro-kernel `kernel` for `isa`, defined on first use; `None`
    /// when the generator does not implement it.
    fn microkernel(
        &mut self,
        isa: MicroIsa,
        kernel: &ContractionKernel,
        caller: &str,
    ) -> Result<Option<FuncId>, CodegenError> {
        let Ok(code) = microkernel::generate(isa, kernel) else {
            return Ok(None);
        };
        self.define_microkernel(isa, code, kernel, caller).map(Some)
    }

    /// The module function of micro-kernel code `code` (described by `kernel` in dumps),
    /// defined on first use.
    pub(crate) fn define_microkernel(
        &mut self,
        isa: MicroIsa,
        code: MicroCode,
        kernel: &dyn std::fmt::Debug,
        caller: &str,
    ) -> Result<FuncId, CodegenError> {
        let key = code.key();
        if let Some(&id) = self.microkernels.get(&key) {
            return Ok(id);
        }
        let name = format!("kiln_uk{}_{}", isa.name(), self.microkernels.len());
        dump_microkernel(&name, kernel, &code);
        let mut sig = Signature::new(self.call_conv);
        sig.params.push(AbiParam::new(self.host.ptr));
        let id = self
            .module
            .declare_function(&name, Linkage::Local, &sig)
            .map_err(|e| cl_err(caller, e))?;
        match code {
            MicroCode::Machine(bytes) => self
                .module
                .define_function_bytes(id, 64, &bytes, &[])
                .map_err(|e| cl_err(&name, e))?,
            MicroCode::Ir(mut func) => {
                func.signature = sig;
                self.define(id, *func, &name)?;
            }
        }
        self.microkernels.insert(key, id);
        self.stats.microkernels += 1;
        Ok(id)
    }
}

/// With `KILN_DUMP_MICROKERNELS=DIR` set, writes each micro-kernel a module defines as
/// `DIR/NAME.txt`: the kernel's description and its instructions (a developer's aid; names
/// restart with each module, so one compile per folder).
fn dump_microkernel(name: &str, kernel: &dyn std::fmt::Debug, code: &MicroCode) {
    let Some(dir) = std::env::var_os("KILN_DUMP_MICROKERNELS").map(std::path::PathBuf::from) else {
        return;
    };
    let text = match code {
        MicroCode::Machine(bytes) => microkernel::disassemble(bytes),
        MicroCode::Ir(f) => f.display().to_string(),
    };
    let path = dir.join(format!("{name}.txt"));
    if let Err(e) = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, format!("{kernel:#?}\n\n{text}")))
    {
        eprintln!("warning: KILN_DUMP_MICROKERNELS: {}: {e}", path.display());
    }
}

impl<M: Module> FnLowerer<'_, '_, '_, M> {
    /// Emits `Tensorized { intrinsic, body }`.
    pub(crate) fn tensorized(
        &mut self,
        intrinsic: TensorIntrinsic,
        body: &Stmt,
    ) -> Result<(), CodegenError> {
        if let Some(isa) = self.em.host.micro.filter(|_| self.em.opts.microkernels) {
            if self.call_microkernel(isa, intrinsic, body)? {
                self.em.stats.microkernel_calls += 1;
                return Ok(());
            }
        }
        self.stmt(body)
    }

    /// Calls the micro-kernel of the region; `false` when there is none (nothing emitted).
    fn call_microkernel(
        &mut self,
        isa: MicroIsa,
        intrinsic: TensorIntrinsic,
        body: &Stmt,
    ) -> Result<bool, CodegenError> {
        let c = kiln_tir::tensorize::analyze(intrinsic, body, self.f)
            .map_err(|e| self.err_internal(format!("tensorized region: {e}")))?;
        let accesses: Vec<&kiln_tir::Access> = [&c.lhs, &c.rhs, &c.out]
            .into_iter()
            .chain(&c.inputs)
            .collect();
        let held = accesses.iter().any(|a| {
            self.promo.contains_key(&a.buf)
                || self.bases.get(a.buf.index()).is_none_or(Option::is_none)
        });
        if held {
            return Ok(false);
        }
        let kernel = ContractionKernel::of(&c);
        let name = self.f.name.clone();
        let Some(full) = self.em.microkernel(isa, &kernel, &name)? else {
            return Ok(false);
        };
        // A ragged row split: the tile's rows that exist decide between the full kernel, the
        // kernel of the tail's rows, and nothing.
        let limit = match &c.row_limit {
            None => None,
            Some(l) => {
                let tail = l.tail(c.rows);
                let tail_kernel = ContractionKernel {
                    rows: tail,
                    ..kernel.clone()
                };
                let tail = match tail {
                    0 => None,
                    _ => match self.em.microkernel(isa, &tail_kernel, &name)? {
                        Some(id) => Some(id),
                        None => return Ok(false),
                    },
                };
                Some((l, tail))
            }
        };
        let args = self.microkernel_args(&accesses)?;
        let Some((limit, tail)) = limit else {
            let r = self.func_ref(full);
            self.b.ins().call(r, &[args]);
            return Ok(true);
        };
        // rows_left = bound - offset: full when >= rows, the tail when in (0, rows).
        let offset = self.expr(&limit.offset)?;
        let bound = self.b.ins().iconst(types::I64, limit.bound);
        let left = self.b.ins().isub(bound, offset);
        let is_full = self
            .b
            .ins()
            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, left, c.rows as i64);
        let (full_block, partial_block, done) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        self.b
            .ins()
            .brif(is_full, full_block, &[], partial_block, &[]);
        self.b.switch_to_block(full_block);
        self.b.seal_block(full_block);
        let r = self.func_ref(full);
        self.b.ins().call(r, &[args]);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(partial_block);
        self.b.seal_block(partial_block);
        if let Some(tail) = tail {
            let some = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, left, 0);
            let call_block = self.b.create_block();
            self.b.ins().brif(some, call_block, &[], done, &[]);
            self.b.switch_to_block(call_block);
            self.b.seal_block(call_block);
            let r = self.func_ref(tail);
            self.b.ins().call(r, &[args]);
        }
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
        self.b.seal_block(done);
        Ok(true)
    }

    /// The micro-kernel ABI's argument: a stack array of the accesses' base addresses.
    fn microkernel_args(
        &mut self,
        accesses: &[&kiln_tir::Access],
    ) -> Result<cranelift_codegen::ir::Value, CodegenError> {
        let ptr = self.em.host.ptr;
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            8 * accesses.len() as u32,
            3,
        ));
        for (i, a) in accesses.iter().enumerate() {
            let base = self.bases[a.buf.index()]
                .ok_or_else(|| self.err_internal("tensorized access without a base"))?;
            let index = self.expr(&a.base)?;
            let size = self.f.buffers[a.buf.index()].dtype.size_bytes() as i64;
            let bytes = self.b.ins().imul_imm_s(index, size);
            let addr = self.b.ins().iadd(base, bytes);
            self.b.ins().stack_store(ptr, addr, slot, 8 * i as i32);
        }
        Ok(self.b.ins().stack_addr(ptr, slot, 0))
    }
}
