//! aarch64 micro-kernels as Cranelift IR: NEON's 128-bit vectors are Cranelift's `f32x4`, which
//! its aarch64 backend lowers one to one (`fmla`, `ld1`, `dup`), so a register tile written in
//! IR and compiled by the module's ISA is the NEON kernel.
//!
//! Invariant: the function [`contraction`] returns has the micro-kernel signature of
//! [`crate::isa::microkernel`] and touches only the memory its kernel's reference touches.
//! Being IR, it also compiles for any other Cranelift ISA with FMA: tests run it on the host.

mod contraction;

pub use contraction::contraction;
