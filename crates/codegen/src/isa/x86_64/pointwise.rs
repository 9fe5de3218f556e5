//! The pointwise micro-kernel: `out[j] = e(inputs)` for `j in 0..cols` over f32 vectors, each
//! input read at `j` (contiguous) or at 0 (broadcast), the expression compiled as an epilogue
//! [`Program`] (a typed one when it converts to an integer output: a quantisation) and emitted
//! for up to four vectors at once, interleaved.
//!
//! Invariant: each element is [`PointwiseKernel::reference`]'s, bit for bit (the program's
//! invariant: one IEEE operation per node, the specified `exp`/`sigmoid`/`erf` operation by
//! operation); the kernel reads only `cols` elements of each contiguous input and one of each
//! broadcast input (the partial last vector is masked) and writes only `cols` output elements.
//! ABI: the pointer array holds the output's pointer, then the inputs' in order.

use super::asm::{Asm, VecIsa};
use super::epilogue::{Block, Outputs, Program};
use crate::isa::microkernel::{MicrokernelError, PointwiseKernel};
use kiln_ir::DType;
use kiln_tir::Epilogue;

/// Vectors computed at once (their programs interleaved), at most.
const VECTORS: usize = 4;

/// Machine code of `k` for `isa` (see the module doc).
pub fn pointwise(isa: VecIsa, k: &PointwiseKernel) -> Result<Vec<u8>, MicrokernelError> {
    let err = |s: String| MicrokernelError(s);
    if k.cols == 0 {
        return Err(err("an empty pointwise kernel".into()));
    }
    let mut reads_acc = false;
    k.epilogue
        .walk(&mut |e| reads_acc |= matches!(e, Epilogue::Acc));
    if reads_acc {
        return Err(err("a pointwise expression has no accumulator".into()));
    }
    if k.input_types.len() != k.contiguous.len()
        || k.input_types.iter().any(|d| d.size_bytes() != 4)
    {
        return Err(err("pointwise inputs are 32-bit, one type each".into()));
    }
    let prog = Program::typed(&k.epilogue, DType::F32, &k.input_types).map_err(err)?;
    if prog.result_type() != k.out {
        return Err(err(format!(
            "a pointwise expression of type {} stored as {}",
            prog.result_type(),
            k.out
        )));
    }
    let lanes = isa.lanes();
    let nv = k.cols.div_ceil(lanes);
    let tail = k.cols % lanes;
    let regs = isa.regs();
    // AVX2 holds the tail mask in a vector register.
    let avail = regs - usize::from(isa == VecIsa::Avx2 && tail != 0);
    let need = prog.registers(isa == VecIsa::Avx2).max(1);
    // `emit_block` sets one register aside per vector of a block (a contraction's
    // accumulators; unused here until stored), the rest hold the programs.
    let vc = (1..=VECTORS.min(nv))
        .rev()
        .find(|&vc| avail >= vc + need)
        .ok_or_else(|| err("the expression needs more registers than there are".into()))?;
    let mut asm = Asm::new(isa).map_err(err)?;
    if tail != 0 {
        asm.tail_mask(tail, (regs - 1) as u8).map_err(err)?;
    }
    let inputs: Vec<(i64, i64)> = k
        .contiguous
        .iter()
        .map(|&c| (0, if c { 4 } else { 0 }))
        .collect();
    let masked = |j: usize| tail != 0 && j + 1 == nv;
    let outputs = Outputs {
        out_slot: 0,
        inputs: &inputs,
        dtype: k.out,
        out_row: 0,
        vector_bytes: (lanes * k.out.size_bytes()) as i64,
        masked: &masked,
    };
    for block in Block::tiling(1, nv, 1, vc) {
        prog.emit_block(&mut asm, &block, &outputs, avail)
            .map_err(err)?;
    }
    asm.finish().map_err(err)
}
