//! aarch64 micro-kernels as Cranelift IR: NEON's 128-bit vectors are Cranelift's `f32x4`, which
//! its aarch64 backend lowers one to one (`fmla`, `ld1`, `dup`), so a register tile written in
//! IR and compiled by the module's ISA is the NEON kernel.
//!
//! 8-bit integer tiles ([`int8_contraction`]) widen to 16 bits and multiply pairs
//! (`widening_pairwise_dot_product_s`: `smull`/`smull2`/`addp` on NEON), exact like x86's AVX2
//! kernels; the dot-product extension (`sdot`), which Cranelift does not emit, is not used.
//!
//! Invariant: each function [`contraction`] and [`int8_contraction`] return has the micro-kernel signature of
//! [`crate::isa::microkernel`] and touches only the memory its kernel's reference touches.
//! Being IR, it also compiles for any other Cranelift ISA with FMA: tests run it on the host.

mod contraction;
mod int8;
mod typed_epilogue;

pub use contraction::contraction;
pub use int8::int8_contraction;

use crate::isa::microkernel::{ContractionKernel, MicrokernelError};
use crate::kernel::mem_flags;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Function, InstBuilder, Signature, UserFuncName, Value,
};
use cranelift_codegen::isa::{CallConv, TargetFrontendConfig};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use target_lexicon::PointerWidth;

/// The pointers of a micro-kernel's argument array (lhs, rhs, out, epilogue inputs).
pub(super) struct Pointers {
    pub lhs: Value,
    pub rhs: Value,
    pub out: Value,
    pub inputs: Vec<Value>,
}

/// A micro-kernel function, `void (const uint8_t *const ptrs[])` in the System V calling
/// convention (the caller sets its module's): the entry block loads the pointers of the
/// operands, the output and `inputs` epilogue inputs, then `body` emits the kernel, then it
/// returns.
pub(super) fn kernel_function(
    inputs: usize,
    body: &mut dyn FnMut(&mut FunctionBuilder, &Pointers) -> Result<(), MicrokernelError>,
) -> Result<Function, MicrokernelError> {
    let mut sig = Signature::new(CallConv::SystemV);
    sig.params.push(AbiParam::new(types::I64));
    let mut func = Function::with_name_signature(UserFuncName::default(), sig);
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let ptrs = b.block_params(entry)[0];
    let mut ptr = |i: usize| b.ins().load(types::I64, mem_flags(), ptrs, 8 * i as i32);
    let p = Pointers {
        lhs: ptr(0),
        rhs: ptr(1),
        out: ptr(2),
        inputs: (0..inputs).map(|i| ptr(3 + i)).collect(),
    };
    body(&mut b, &p)?;
    b.ins().return_(&[]);
    // The function keeps no stack slots or safepoints, for which the frontend would need the
    // module's target; any 64-bit System V target describes it.
    b.finalize(TargetFrontendConfig {
        default_call_conv: CallConv::SystemV,
        pointer_width: PointerWidth::U64,
        page_size_align_log2: 12,
    });
    Ok(func)
}

/// A reduction loop: its extent and the operands' byte strides.
pub(super) type Level = (usize, i64, i64);

/// The first `n` reduction loops of `k`, outermost first.
pub(super) fn levels(k: &ContractionKernel, n: usize) -> Vec<Level> {
    (0..n)
        .map(|i| (k.reduce[i], k.lhs.reduce[i], k.rhs.reduce[i]))
        .collect()
}

/// The counted reduction loops `levels` (loops of extent 1 elided), starting at operand
/// addresses `lhs` and `rhs`, with `step(builder, lhs, rhs)` innermost at each iteration's
/// addresses. Every extent must be positive.
pub(super) fn reduction_loops(
    b: &mut FunctionBuilder,
    levels: &[Level],
    lhs: Value,
    rhs: Value,
    step: &mut dyn FnMut(&mut FunctionBuilder, Value, Value) -> Result<(), MicrokernelError>,
) -> Result<(), MicrokernelError> {
    let Some((&(extent, ls, rs), inner)) = levels.split_first() else {
        return step(b, lhs, rhs);
    };
    if extent == 1 {
        return reduction_loops(b, inner, lhs, rhs, step);
    }
    let (lv, rv, cv) = (
        b.declare_var(types::I64),
        b.declare_var(types::I64),
        b.declare_var(types::I64),
    );
    let zero = b.ins().iconst(types::I64, 0);
    b.def_var(lv, lhs);
    b.def_var(rv, rhs);
    b.def_var(cv, zero);
    let (header, body, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.ins().jump(header, &[]);
    b.switch_to_block(header);
    let c = b.use_var(cv);
    let more = b.ins().icmp_imm_s(IntCC::SignedLessThan, c, extent as i64);
    b.ins().brif(more, body, &[], exit, &[]);
    b.switch_to_block(body);
    b.seal_block(body);
    let (l, r) = (b.use_var(lv), b.use_var(rv));
    reduction_loops(b, inner, l, r, step)?;
    let l = b.ins().iadd_imm_s(l, ls);
    let r = b.ins().iadd_imm_s(r, rs);
    let c = b.use_var(cv);
    let c = b.ins().iadd_imm_s(c, 1);
    b.def_var(lv, l);
    b.def_var(rv, r);
    b.def_var(cv, c);
    b.ins().jump(header, &[]);
    b.seal_block(header);
    b.switch_to_block(exit);
    b.seal_block(exit);
    Ok(())
}
