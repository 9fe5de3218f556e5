//! x86-64 micro-kernels, encoded with iced-x86 at compile time: AVX2 + FMA (ymm, 16 registers)
//! and AVX-512F (zmm, 32 registers, `k` masks for ragged tails).
//!
//! Invariant: the code of [`contraction`] follows the micro-kernel ABI of
//! [`crate::isa::microkernel`] (a frameless System V leaf: pointer array in `rdi`, only
//! caller-saved registers, constants RIP-relative in its own bytes, `vzeroupper` before `ret`)
//! and uses only instructions of its ISA's baseline.

mod asm;
mod contraction;
mod epilogue;

pub use asm::VecIsa;
pub use contraction::contraction;
