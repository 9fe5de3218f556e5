//! The contraction micro-kernel: a tile of `rows x cols` f32 accumulators held in vector
//! registers, the reduction loops as counted loops with the innermost one unrolled, and the
//! epilogue applied in registers before each store.
//!
//! Invariant: for each accumulator the generated code performs exactly the fused
//! multiply-adds of [`ContractionKernel::reference`] in the same order (the reduction loops run
//! in the kernel's order; a tile too large for the register file is computed in chunks of rows
//! and column vectors, each running the whole reduction), reads only the bytes the reference
//! reads (partial last vectors are masked), and writes only the output tile.
//!
//! Registers: `rdi` holds the pointer array; `rsi`/`rdx` walk the two operands through the
//! reduction; `rcx, r8..r11` count the reduction loops; the epilogue keeps the output pointer
//! in `rsi` and the first six input pointers in `rdx, rcx, r8..r11` (more are reloaded into `rax` at each use). `rax` is scratch. All are
//! caller-saved in the System V ABI, so the kernel needs no frame.

use super::asm::{Addr, Asm, Src, VecIsa};
use super::epilogue::{Block, Outputs, Program};
use crate::isa::microkernel::{ContractionKernel, MicrokernelError, OperandStrides};
use iced_x86::code_asm::*;
use kiln_ir::DType;

/// Loop counters, outermost reduction loop first.
const COUNTERS: [AsmRegister64; 5] = [rcx, r8, r9, r10, r11];
/// Innermost reduction loops up to this extent are unrolled completely.
const FULL_UNROLL: usize = 8;
/// Inner nests of up to this many steps run straight-line inside the loop around them.
const FULL_UNROLL_NEST: usize = 16;
/// Otherwise they are unrolled by this factor (plus a straight-line remainder).
const UNROLL: usize = 4;
/// Scratch vector registers the reduction needs.
const SCRATCH: usize = 2;

fn err(s: impl Into<String>) -> MicrokernelError {
    MicrokernelError(s.into())
}

/// Machine code of `k` for `isa` (see the module doc).
pub fn contraction(isa: VecIsa, k: &ContractionKernel) -> Result<Vec<u8>, MicrokernelError> {
    check(k)?;
    if k.int8.is_some() {
        return Err(err("an integer contraction (see `int8_contraction`)"));
    }
    let lanes = isa.lanes();
    let nv = k.cols.div_ceil(lanes);
    let tail = k.cols % lanes;
    // A converting epilogue (conversions and narrowing stores) computes typed values into an
    // output of its type.
    let out = match &k.converts {
        None => DType::F32,
        Some((out, _)) => *out,
    };
    let prog = match &k.converts {
        None => Program::new(&k.epilogue),
        Some((_, inputs)) => Program::typed(&k.epilogue, DType::F32, inputs),
    }
    .map_err(err)?;
    if prog.result_type() != out {
        return Err(err("the epilogue's type is not the output's"));
    }
    let regs = isa.regs();
    let reserved = usize::from(isa == VecIsa::Avx2 && tail != 0);
    let avail = regs - reserved;
    let hoist = |vc: usize, o: &OperandStrides| match (o.row, o.col) {
        (0, 0) => 1,
        (0, _) => vc,
        _ => 0,
    };
    let ep = prog.registers(isa == VecIsa::Avx2);
    // The widest column chunk that leaves room for at least one row, then as many rows as fit.
    let (vc, rc) = (1..=nv)
        .rev()
        .find_map(|vc| {
            let other = (hoist(vc, &k.lhs) + hoist(vc, &k.rhs) + SCRATCH).max(ep);
            let rc = avail.checked_sub(other)? / vc;
            (rc >= 1).then_some((vc, rc.min(k.rows)))
        })
        .ok_or_else(|| err("the epilogue needs more registers than there are"))?;
    let mut g = Gen {
        asm: Asm::new(isa).map_err(err)?,
        k,
        nv,
        tail,
        prog,
        reserved,
        out,
    };
    if tail != 0 {
        g.asm.tail_mask(tail, (regs - 1) as u8).map_err(err)?;
    }
    for block in Block::tiling(k.rows, nv, rc, vc) {
        g.chunk(&block).map_err(err)?;
    }
    g.asm.finish().map_err(err)
}

/// What every generator supports.
fn check(k: &ContractionKernel) -> Result<(), MicrokernelError> {
    if k.rows == 0 || k.cols == 0 {
        return Err(err("empty tile"));
    }
    if k.reduce.len() > COUNTERS.len() {
        return Err(err(format!("{} reduction loops", k.reduce.len())));
    }
    for o in [&k.lhs, &k.rhs] {
        if o.col != 0 && o.col != 4 || o.reduce.len() != k.reduce.len() {
            return Err(err("operand strides"));
        }
    }
    if k.inputs.iter().any(|&(_, c)| c != 0 && c != 4) {
        return Err(err("epilogue input strides"));
    }
    Ok(())
}

struct Gen<'k> {
    asm: Asm,
    k: &'k ContractionKernel,
    nv: usize,
    tail: usize,
    prog: Program,
    reserved: usize,
    /// The output's type (not f32 only for a converting epilogue).
    out: DType,
}

/// Where an operand's value for one fma comes from.
#[derive(Clone, Copy)]
enum Operand {
    Reg(u8),
    Vec(Addr),
    Bcst(Addr),
}

impl Gen<'_> {
    fn masked(&self, j: usize) -> bool {
        self.tail != 0 && j + 1 == self.nv
    }

    fn vbytes(&self) -> i64 {
        self.asm.isa.bytes()
    }

    fn chunk(&mut self, c: &Block) -> Result<(), String> {
        let accs = c.rows * c.vecs;
        let mut next = accs as u8;
        let mut hoisted = |o: &OperandStrides| -> Vec<u8> {
            let n = match (o.row, o.col) {
                (0, 0) => 1,
                (0, _) => c.vecs,
                _ => 0,
            };
            let v: Vec<u8> = (next..next + n as u8).collect();
            next += n as u8;
            v
        };
        let hl = hoisted(&self.k.lhs);
        let hr = hoisted(&self.k.rhs);
        let scratch = [next, next + 1];
        self.asm
            .a
            .mov(rsi, qword_ptr(rdi))
            .map_err(|e| e.to_string())?;
        self.asm
            .a
            .mov(rdx, qword_ptr(rdi + 8))
            .map_err(|e| e.to_string())?;
        for r in 0..accs as u8 {
            self.asm.zero(r)?;
        }
        let regs = StepRegs { hl, hr, scratch };
        self.levels(c, &regs, 0)?;
        self.epilogue(c)
    }

    /// Reduction loop `i` and the loops inside it; on exit the operand pointers have moved by
    /// `extent_i * stride_i`.
    fn levels(&mut self, c: &Block, regs: &StepRegs, i: usize) -> Result<(), String> {
        let k = self.k;
        let e = |x: iced_x86::IcedError| x.to_string();
        if k.reduce.is_empty() {
            return self.step(c, regs, 0, 0);
        }
        let ext = k.reduce[i];
        let (sl, sr) = (k.lhs.reduce[i], k.rhs.reduce[i]);
        if i + 1 == k.reduce.len() {
            let unroll = if ext <= FULL_UNROLL { ext } else { UNROLL };
            let (main, rem) = (ext / unroll, ext % unroll);
            let body = |g: &mut Self, n: usize| -> Result<(), String> {
                for u in 0..n as i64 {
                    g.step(c, regs, u * sl, u * sr)?;
                }
                g.asm.add_imm(rsi, n as i64 * sl)?;
                g.asm.add_imm(rdx, n as i64 * sr)
            };
            if main > 1 {
                let ctr = COUNTERS[i];
                self.asm.a.mov(ctr, main as i64).map_err(e)?;
                let mut top = self.asm.a.create_label();
                self.asm.a.set_label(&mut top).map_err(e)?;
                body(self, unroll)?;
                self.asm.a.dec(ctr).map_err(e)?;
                self.asm.a.jnz(top).map_err(e)?;
            } else if main == 1 {
                body(self, unroll)?;
            }
            if rem > 0 {
                body(self, rem)?;
            }
            return Ok(());
        }
        // Short inner nests (a convolution's taps inside its channels) run straight-line in
        // each iteration of this loop, in their order, rather than as counted loops of a few
        // steps.
        let inner = &k.reduce[i + 1..];
        if inner.iter().product::<usize>() <= FULL_UNROLL_NEST {
            let ctr = COUNTERS[i];
            if ext > 1 {
                self.asm.a.mov(ctr, ext as i64).map_err(e)?;
            }
            let mut top = self.asm.a.create_label();
            self.asm.a.set_label(&mut top).map_err(e)?;
            let mut index = vec![0usize; inner.len()];
            loop {
                let at = |o: &OperandStrides| -> i64 {
                    index
                        .iter()
                        .zip(&o.reduce[i + 1..])
                        .map(|(&j, &st)| j as i64 * st)
                        .sum()
                };
                self.step(c, regs, at(&k.lhs), at(&k.rhs))?;
                // The next index, last loop fastest.
                let Some(d) = (0..inner.len()).rev().find(|&d| index[d] + 1 < inner[d]) else {
                    break;
                };
                index[d] += 1;
                index[d + 1..].iter_mut().for_each(|j| *j = 0);
            }
            self.asm.add_imm(rsi, sl)?;
            self.asm.add_imm(rdx, sr)?;
            if ext > 1 {
                self.asm.a.dec(ctr).map_err(e)?;
                self.asm.a.jnz(top).map_err(e)?;
            }
            return Ok(());
        }
        let (il, ir) = (
            k.reduce[i + 1] as i64 * k.lhs.reduce[i + 1],
            k.reduce[i + 1] as i64 * k.rhs.reduce[i + 1],
        );
        let ctr = COUNTERS[i];
        self.asm.a.mov(ctr, ext as i64).map_err(e)?;
        let mut top = self.asm.a.create_label();
        self.asm.a.set_label(&mut top).map_err(e)?;
        self.levels(c, regs, i + 1)?;
        self.asm.add_imm(rsi, sl - il)?;
        self.asm.add_imm(rdx, sr - ir)?;
        self.asm.a.dec(ctr).map_err(e)?;
        self.asm.a.jnz(top).map_err(e)
    }

    /// One reduction step for the chunk: operands at `rsi + off_l`, `rdx + off_r`.
    fn step(&mut self, c: &Block, regs: &StepRegs, off_l: i64, off_r: i64) -> Result<(), String> {
        let vb = self.vbytes();
        let avx2 = self.asm.isa == VecIsa::Avx2;
        let ops = [
            (self.k.lhs.clone(), rsi, off_l, regs.hl.clone()),
            (self.k.rhs.clone(), rdx, off_r, regs.hr.clone()),
        ];
        // Operands that do not move along the rows: loaded once per step.
        for (o, ptr, d, h) in &ops {
            if o.row != 0 {
                continue;
            }
            if o.col == 0 {
                self.asm.bcast(
                    h[0],
                    Addr {
                        base: *ptr,
                        disp: *d,
                    },
                )?;
            } else {
                for (x, j) in (c.j0..c.j0 + c.vecs).enumerate() {
                    let addr = Addr {
                        base: *ptr,
                        disp: d + j as i64 * vb,
                    };
                    self.asm.load(h[x], addr, self.masked(j))?;
                }
            }
        }
        let [s0, s1] = regs.scratch;
        for m in c.m0..c.m0 + c.rows {
            let row_vec = |o: &OperandStrides| o.row != 0 && o.col != 0;
            // A broadcast operand that moves along the rows: one broadcast per row, in a
            // register unless AVX-512 can embed it in the fma (the other operand in a
            // register).
            let mut per_row = [None, None];
            for (x, (o, ptr, d, _)) in ops.iter().enumerate() {
                if o.row != 0 && o.col == 0 {
                    let addr = Addr {
                        base: *ptr,
                        disp: d + m as i64 * o.row,
                    };
                    let other = &ops[1 - x].0;
                    if avx2 || row_vec(other) {
                        self.asm.bcast(s0, addr)?;
                        per_row[x] = Some(Operand::Reg(s0));
                    } else {
                        per_row[x] = Some(Operand::Bcst(addr));
                    }
                }
            }
            for (xj, j) in (c.j0..c.j0 + c.vecs).enumerate() {
                let masked = self.masked(j);
                let src = |x: usize| -> Operand {
                    let (o, ptr, d, h) = &ops[x];
                    match (o.row, o.col) {
                        (0, 0) => Operand::Reg(h[0]),
                        (0, _) => Operand::Reg(h[xj]),
                        (_, 0) => per_row[x].unwrap_or(Operand::Reg(s0)),
                        _ => Operand::Vec(Addr {
                            base: *ptr,
                            disp: d + m as i64 * o.row + j as i64 * vb,
                        }),
                    }
                };
                let (a, b) = (src(0), src(1));
                let (x, mut y) = match (a, b) {
                    (Operand::Reg(r), other) | (other, Operand::Reg(r)) => (r, other),
                    (Operand::Vec(addr), other) | (other, Operand::Vec(addr)) => {
                        self.asm.load(s1, addr, masked)?;
                        (s1, other)
                    }
                    (Operand::Bcst(addr), other) => {
                        self.asm.bcast(s1, addr)?;
                        (s1, other)
                    }
                };
                if let Operand::Vec(addr) = y {
                    if avx2 && masked {
                        let t = if x == s1 { s0 } else { s1 };
                        self.asm.load(t, addr, true)?;
                        y = Operand::Reg(t);
                    }
                }
                let acc = ((m - c.m0) * c.vecs + xj) as u8;
                let (src_y, mask_y) = match y {
                    Operand::Reg(r) => (Src::Reg(r), false),
                    Operand::Vec(addr) => (Src::Vec(addr), masked),
                    Operand::Bcst(addr) => (Src::Bcst(addr), false),
                };
                self.asm.fma(acc, x, src_y, mask_y)?;
            }
        }
        Ok(())
    }

    fn epilogue(&mut self, c: &Block) -> Result<(), String> {
        let (tail, nv) = (self.tail, self.nv);
        let masked = move |j: usize| tail != 0 && j + 1 == nv;
        let outputs = Outputs {
            out_slot: 2,
            inputs: &self.k.inputs,
            dtype: self.out,
            out_row: self.k.out_row,
            vector_bytes: self.vbytes() / 4 * self.out.size_bytes() as i64,
            masked: &masked,
        };
        let regs = self.asm.isa.regs() - self.reserved;
        self.prog.emit_block(&mut self.asm, c, &outputs, regs)
    }
}

/// The registers of one chunk's reduction step.
struct StepRegs {
    /// Hoisted lhs / rhs registers (per column vector, or one for a broadcast).
    hl: Vec<u8>,
    hr: Vec<u8>,
    scratch: [u8; 2],
}
