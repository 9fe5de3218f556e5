//! x86-64 micro-kernels, encoded with iced-x86 at compile time: AVX2 + FMA (ymm, 16 registers)
//! and AVX-512F (zmm, 32 registers, `k` masks for ragged tails); 8-bit integer contractions
//! with AVX-512 VNNI (`int8`).
//!
//! Invariant: the code of [`contraction`] and [`pointwise`] follows the micro-kernel ABI of
//! [`crate::isa::microkernel`] (a frameless System V leaf: pointer array in `rdi`, only
//! caller-saved registers, constants RIP-relative in its own bytes, `vzeroupper` before `ret`)
//! and uses only instructions of its ISA's baseline.

mod asm;
mod contraction;
mod epilogue;
mod int8;
mod int_ops;
mod pointwise;

pub use asm::VecIsa;
pub use contraction::contraction;
pub use int8::{int8_contraction, Int8Isa};
pub use pointwise::pointwise;

/// A function `void f(const void *)` running `iterations` rounds of 12 independent vector
/// fused multiply-adds (no memory traffic): times the core's f32 peak,
/// `iterations * 12 * 2 * lanes` flops per call.
pub fn peak_loop(isa: VecIsa, iterations: u32) -> Result<Vec<u8>, String> {
    use iced_x86::code_asm::*;
    let mut a = asm::Asm::new(isa)?;
    let e = |x: iced_x86::IcedError| x.to_string();
    for r in 0..14u8 {
        a.zero(r)?;
    }
    a.a.mov(ecx, iterations).map_err(e)?;
    let mut top = a.a.create_label();
    a.a.set_label(&mut top).map_err(e)?;
    for r in 0..12u8 {
        a.fma(r, 12, asm::Src::Reg(13), false)?;
    }
    a.a.dec(ecx).map_err(e)?;
    a.a.jnz(top).map_err(e)?;
    a.finish()
}
