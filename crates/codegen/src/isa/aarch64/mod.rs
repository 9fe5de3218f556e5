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

pub use contraction::contraction;
pub use int8::int8_contraction;

use crate::isa::microkernel::{ContractionKernel, MicrokernelError};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

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
