//! The 8-bit integer contraction micro-kernels: a tile of `rows x cols` `i32` accumulators in
//! vector registers, then the zero-point correction and the typed epilogue in registers before
//! a store of the output's type. Two instruction sets ([`Int8Isa`]): AVX-512 VNNI (zmm, 32
//! registers, `vpdpbusd`) and AVX2 (ymm, 16 registers, products of 16-bit pairs with
//! `vpmaddwd`; also what AVX-512F without VNNI runs).
//!
//! The forms it implements (anything else is refused, and the region compiles as loops):
//!
//! *Dot products of quadruples*: the innermost reduction loop has extent 4 and moves both
//! operands by one byte; the left operand (activations) is a broadcast along the columns, its
//! quadruple loaded per row as one dword; the right operand (packed weights, `i8` with zero
//! point 0) moves 4 bytes per column and not along the rows.
//! - VNNI: one `vpdpbusd` per accumulator and step (16 columns x 4 bytes per register). The
//!   activations must be `u8` (`i8` is flipped by xor 0x80 with its zero point moved by 128).
//!   With `zl` the left zero point in the `u8` domain, `Σ (x - zl) w = Σ x w - zl Σ w`: the
//!   column sums `Σ w` are accumulated beside the tile (one more `vpdpbusd` with a vector of
//!   ones per column vector and step) and subtracted, times `zl`, after the reduction.
//! - AVX2: `vpmaddubsw` would saturate (`255·127·2 > 2^15`), so both operands are widened to
//!   16 bits: the weights of 4 columns (16 bytes) into one register (`vpmovsxbw`), a row's
//!   quadruple broadcast and widened (`vpbroadcastd`, `vpmovzxbw`/`vpmovsxbw`) with `zl`
//!   subtracted in 16 bits (exact: `|x - zl| ≤ 255`), and one `vpmaddwd` per accumulator half
//!   and step adds the two pair products of each column into two `i32` lanes. Each 8-column
//!   vector has two such halves (columns 0-3 and 4-7), folded after the reduction by
//!   `vphaddd` and put in column order by `vpermq`.
//!
//! *Lanes* (depthwise: both operands contiguous along the columns, each output channel its own
//! activation and weight): per tap and column vector the weights widened to `i32` (`vpmovsxbd`,
//! their zero point subtracted), per row the activations widened, multiplied (`vpmulld`) and
//! added; the activation zero point is corrected through the column sums as above.
//!
//! Invariant: the code computes [`ContractionKernel::reference_bytes`] exactly (integer sums are
//! exact in any order; the epilogue as [`super::epilogue`] states), reads only the bytes the
//! reference reads (the partial last column vector through `k1`, or on AVX2 as a half vector:
//! AVX2 tiles take columns in fours) and writes only the output tile. Registers: `rdi` the
//! pointer array, `rsi`/`rdx` the operands walking the reduction, `rcx, r8..r11` the loop
//! counters; the epilogue keeps the output in `rsi` and its inputs in `rdx, rcx, r8..r11`.

use super::asm::{e, Addr, Asm, VecIsa};
use super::epilogue::{Block, Outputs, Program};
use crate::isa::microkernel::{ContractionKernel, MicrokernelError};
use iced_x86::code_asm::*;
use kiln_ir::DType;
use kiln_tir::BinOp;

/// Loop counters of the reduction loops outside the innermost (outermost first).
const COUNTERS: [AsmRegister64; 5] = [rcx, r8, r9, r10, r11];
/// The innermost loop of this extent is one dot product of quadruples.
const QUAD: usize = 4;

/// The instruction set of an integer kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Isa {
    /// AVX-512F with VNNI: zmm, `vpdpbusd`.
    Avx512Vnni,
    /// AVX2: ymm, 16-bit pair products (`vpmaddwd`).
    Avx2,
}

impl Int8Isa {
    fn vec_isa(self) -> VecIsa {
        match self {
            Int8Isa::Avx512Vnni => VecIsa::Avx512,
            Int8Isa::Avx2 => VecIsa::Avx2,
        }
    }
}

fn err(s: impl Into<String>) -> MicrokernelError {
    MicrokernelError(s.into())
}

/// Machine code of the integer contraction `k` (see the module doc).
pub fn int8_contraction(isa: Int8Isa, k: &ContractionKernel) -> Result<Vec<u8>, MicrokernelError> {
    let Some(int8) = &k.int8 else {
        return Err(err("not an integer contraction"));
    };
    let form = if k.lhs.col == 1 && k.rhs.col == 1 && k.rhs.row == 0 {
        Form::Lanes
    } else {
        let Some(&quad) = k.reduce.last() else {
            return Err(err("no reduction"));
        };
        let lhs_last = k.lhs.reduce.last().copied();
        let rhs_last = k.rhs.reduce.last().copied();
        if quad != QUAD || lhs_last != Some(1) || rhs_last != Some(1) {
            return Err(err("the innermost reduction is not 4 consecutive bytes"));
        }
        if k.lhs.col != 0 || k.rhs.col != 4 || k.rhs.row != 0 {
            return Err(err(
                "operands are not broadcast activations x packed weight quadruples",
            ));
        }
        if int8.rhs != DType::I8 || int8.rhs_zp != 0 {
            return Err(err("dot products take i8 weights with zero point 0"));
        }
        Form::Quad
    };
    if !matches!(int8.lhs, DType::I8 | DType::U8) || !matches!(int8.rhs, DType::I8 | DType::U8) {
        return Err(err("8-bit operands only"));
    }
    let loops = k.reduce.len() - usize::from(form == Form::Quad);
    if loops > COUNTERS.len() {
        return Err(err("too many reduction loops"));
    }
    if k.rows == 0 || k.cols == 0 || k.inputs.iter().any(|&(_, c)| c != 0 && c != 4) {
        return Err(err("tile shape or epilogue input strides"));
    }
    let prog = Program::typed(&k.epilogue, DType::I32, &int8.inputs).map_err(err)?;
    if prog.result_type() != int8.out {
        return Err(err("the epilogue's type is not the output's"));
    }
    let vnni = isa == Int8Isa::Avx512Vnni;
    let visa = isa.vec_isa();
    let lanes = visa.lanes();
    // AVX2 widens pairs: products of 16-bit words, two accumulator halves per vector.
    let pairs = form == Form::Quad && !vnni;
    // The left zero point in the domain the instruction multiplies in (VNNI: u8).
    let flip = form == Form::Quad && vnni && int8.lhs == DType::I8;
    let zl = int8.lhs_zp + if flip { 128 } else { 0 };
    let nv = k.cols.div_ceil(lanes);
    let tail = k.cols % lanes;
    if !vnni && tail != 0 && tail != 4 {
        return Err(err("AVX2 integer tiles take columns in fours"));
    }
    // AVX2 keeps the tail mask (of the epilogue's f32/i32 inputs) in the last register.
    let reserved = usize::from(!vnni && tail != 0);
    let regs = visa.regs() - reserved;
    // Column sums correct the left zero point, except with pairs (subtracted from each row).
    let sums = zl != 0 && !pairs;
    // Per chunk of `vc` column vectors: weights (pairs: two halves) and column sums per vector,
    // the row operand, a scratch register and the constant registers (VNNI: ones for the sums,
    // 0x80 for the flip; pairs: the zero point in words; lanes: the weight zero point).
    let consts = match form {
        Form::Quad if pairs => usize::from(zl != 0),
        Form::Quad => usize::from(sums) + usize::from(flip),
        Form::Lanes => usize::from(int8.rhs_zp != 0),
    };
    let per_vec = if pairs { 2 } else { 1 };
    let ep = prog.registers(visa == VecIsa::Avx2);
    let (vc, rc) = (1..=nv)
        .rev()
        .find_map(|vc| {
            let other = vc * (per_vec + usize::from(sums)) + 2 + consts;
            let rc =
                (regs.checked_sub(other)? / (per_vec * vc)).min(regs.checked_sub(ep + 1)? / vc);
            (rc >= 1).then_some((vc, rc.min(k.rows)))
        })
        .ok_or_else(|| err("the tile needs more registers than there are"))?;
    let mut g = Gen {
        asm: Asm::new(visa).map_err(err)?,
        k,
        out: int8.out,
        lanes,
        regs,
        nv,
        tail,
        prog,
        form,
        pairs,
        loops,
        lhs_signed: int8.lhs == DType::I8,
        rhs_signed: int8.rhs == DType::I8,
        zr: int8.rhs_zp,
        flip,
        zl,
    };
    if tail != 0 {
        g.asm.tail_mask(tail, regs as u8).map_err(err)?;
    }
    for block in Block::tiling(k.rows, nv, rc, vc) {
        g.chunk(&block).map_err(err)?;
    }
    g.asm.finish().map_err(err)
}

/// The two tile forms (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Broadcast activation quadruples x packed weight quadruples: `vpdpbusd`.
    Quad,
    /// Activations and weights both along the columns (depthwise): widened, `vpmulld`.
    Lanes,
}

struct Gen<'k> {
    asm: Asm,
    k: &'k ContractionKernel,
    out: DType,
    /// i32 lanes per vector register.
    lanes: usize,
    /// Vector registers the kernel may use (AVX2 with a tail: all but the mask's).
    regs: usize,
    nv: usize,
    tail: usize,
    prog: Program,
    form: Form,
    /// Dot products as 16-bit pair products (AVX2, see the module doc).
    pairs: bool,
    /// Counted reduction loops (dot products: all but the innermost quadruple).
    loops: usize,
    lhs_signed: bool,
    rhs_signed: bool,
    /// The right (weight) zero point (lanes form).
    zr: i32,
    flip: bool,
    zl: i32,
}

/// Registers of one chunk: accumulators `0..rows*vecs`, then these.
struct Regs {
    /// Pairs: the accumulators of the columns 4-7 halves, in the same order.
    upper: Vec<u8>,
    /// Per column vector (pairs: per half, two per vector).
    weights: Vec<u8>,
    sums: Vec<u8>,
    row: u8,
    scratch: u8,
    ones: Option<u8>,
    flip: Option<u8>,
    /// Pairs: the left zero point in every 16-bit word.
    zl_words: Option<u8>,
    /// The weight zero point in every lane (lanes form).
    zr: Option<u8>,
}

impl Gen<'_> {
    fn masked(&self, j: usize) -> bool {
        self.tail != 0 && j + 1 == self.nv
    }

    fn chunk(&mut self, c: &Block) -> Result<(), String> {
        let accs = (c.rows * c.vecs) as u8;
        let mut next = accs;
        let mut take = |n: usize| {
            let v: Vec<u8> = (next..next + n as u8).collect();
            next += n as u8;
            v
        };
        let pairs = self.pairs;
        let upper = if pairs { take(c.rows * c.vecs) } else { vec![] };
        let weights = take(c.vecs * if pairs { 2 } else { 1 });
        let sums = if self.zl != 0 && !pairs {
            take(c.vecs)
        } else {
            vec![]
        };
        let row = take(1)[0];
        let scratch = take(1)[0];
        let quad = self.form == Form::Quad;
        let ones = (quad && !pairs && self.zl != 0).then(|| take(1)[0]);
        let flip = self.flip.then(|| take(1)[0]);
        let zl_words = (pairs && self.zl != 0).then(|| take(1)[0]);
        let zr = (!quad && self.zr != 0).then(|| take(1)[0]);
        if usize::from(next) > self.regs {
            return Err("the chunk needs more registers than there are".into());
        }
        let regs = Regs {
            upper,
            weights,
            sums,
            row,
            scratch,
            ones,
            flip,
            zl_words,
            zr,
        };
        self.asm.a.mov(rsi, qword_ptr(rdi)).map_err(e)?;
        self.asm.a.mov(rdx, qword_ptr(rdi + 8)).map_err(e)?;
        for r in (0..accs).chain(regs.upper.iter().chain(&regs.sums).copied()) {
            self.asm.zero(r)?;
        }
        if let Some(z) = regs.zl_words {
            let w = u32::from(self.zl as u16);
            self.asm.constant_bits(z, w | w << 16)?;
        }
        if let Some(o) = regs.ones {
            self.asm.constant_bits(o, 0x0101_0101)?;
        }
        if let Some(f) = regs.flip {
            self.asm.constant_bits(f, 0x8080_8080)?;
        }
        if let Some(z) = regs.zr {
            self.asm.constant_bits(z, self.zr as u32)?;
        }
        self.levels(c, &regs, 0)?;
        if pairs {
            // Per accumulator, lanes 2c and 2c + 1 hold the halves of column c of its four:
            // within 128-bit lanes `vphaddd` gives columns (0 1 4 5 | 2 3 6 7), `vpermq` orders.
            for (lo, &hi) in (0..accs).zip(&regs.upper) {
                let (l, h) = (Asm::y(lo), Asm::y(hi));
                self.asm.a.vphaddd(l, l, h).map_err(e)?;
                self.asm.a.vpermq(l, l, 0b11_01_10_00).map_err(e)?;
            }
        }
        // Σ (x - zl) w = Σ x w - zl Σ w.
        if !regs.sums.is_empty() {
            self.asm.constant_bits(regs.scratch, self.zl as u32)?;
            for &s in &regs.sums {
                self.asm.int_arith(BinOp::Mul, s, s, regs.scratch)?;
            }
            for i in 0..c.rows {
                for (x, &s) in regs.sums.iter().enumerate() {
                    let acc = (i * c.vecs + x) as u8;
                    self.asm.int_arith(BinOp::Sub, acc, acc, s)?;
                }
            }
        }
        self.epilogue(c)
    }

    /// Reduction loop `i` (of those outside the innermost quadruple) and the loops inside it;
    /// on exit the operand pointers have moved by `extent_i * stride_i`.
    fn levels(&mut self, c: &Block, regs: &Regs, i: usize) -> Result<(), String> {
        let k = self.k;
        let outer = self.loops;
        if i == outer {
            return match self.form {
                Form::Quad if self.pairs => self.pairs_step(c, regs),
                Form::Quad => self.step(c, regs),
                Form::Lanes => self.lanes_step(c, regs),
            };
        }
        let (ext, sl, sr) = (k.reduce[i], k.lhs.reduce[i], k.rhs.reduce[i]);
        let (il, ir) = if i + 1 < outer {
            (
                k.reduce[i + 1] as i64 * k.lhs.reduce[i + 1],
                k.reduce[i + 1] as i64 * k.rhs.reduce[i + 1],
            )
        } else {
            (0, 0)
        };
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

    /// One step of four bytes per lane: operands at `rsi` and `rdx`.
    fn step(&mut self, c: &Block, regs: &Regs) -> Result<(), String> {
        let k = self.k;
        for (x, j) in (c.j0..c.j0 + c.vecs).enumerate() {
            let addr = Addr {
                base: rdx,
                disp: (j * self.lanes * QUAD) as i64,
            };
            self.asm.load(regs.weights[x], addr, self.masked(j))?;
            if let Some(o) = regs.ones {
                self.asm.dpbusd(regs.sums[x], o, regs.weights[x])?;
            }
        }
        for i in 0..c.rows {
            let m = c.m0 + i;
            let addr = Addr {
                base: rsi,
                disp: m as i64 * k.lhs.row,
            };
            self.asm.bcast_dword(regs.row, addr)?;
            if let Some(f) = regs.flip {
                self.asm
                    .a
                    .vpxord(Asm::z(regs.row), Asm::z(regs.row), Asm::z(f))
                    .map_err(e)?;
            }
            for x in 0..c.vecs {
                let acc = (i * c.vecs + x) as u8;
                self.asm.dpbusd(acc, regs.row, regs.weights[x])?;
            }
        }
        Ok(())
    }

    /// One step of four bytes per lane as 16-bit pair products: operands at `rsi` and `rdx`.
    fn pairs_step(&mut self, c: &Block, regs: &Regs) -> Result<(), String> {
        let k = self.k;
        // Halves of a vector: two, or one for a tail of four columns.
        let (tail, nv) = (self.tail, self.nv);
        let halves = move |j: usize| if tail != 0 && j + 1 == nv { 1 } else { 2 };
        for (x, j) in (c.j0..c.j0 + c.vecs).enumerate() {
            for h in 0..halves(j) {
                let m = self.asm.vmem(Addr {
                    base: rdx,
                    disp: ((j * self.lanes + h * 4) * QUAD) as i64,
                })?;
                let w = Asm::y(regs.weights[2 * x + h]);
                self.asm.a.vpmovsxbw(w, xmmword_ptr(m)).map_err(e)?;
            }
        }
        for i in 0..c.rows {
            let m = self.asm.vmem(Addr {
                base: rsi,
                disp: (c.m0 + i) as i64 * k.lhs.row,
            })?;
            let (rx, ry) = (Asm::x(regs.row), Asm::y(regs.row));
            self.asm.a.vpbroadcastd(rx, dword_ptr(m)).map_err(e)?;
            if self.lhs_signed {
                self.asm.a.vpmovsxbw(ry, rx)
            } else {
                self.asm.a.vpmovzxbw(ry, rx)
            }
            .map_err(e)?;
            if let Some(z) = regs.zl_words {
                self.asm.a.vpsubw(ry, ry, Asm::y(z)).map_err(e)?;
            }
            for (x, j) in (c.j0..c.j0 + c.vecs).enumerate() {
                for h in 0..halves(j) {
                    let lo = i * c.vecs + x;
                    let acc = Asm::y(if h == 0 { lo as u8 } else { regs.upper[lo] });
                    let t = Asm::y(regs.scratch);
                    self.asm
                        .a
                        .vpmaddwd(t, ry, Asm::y(regs.weights[2 * x + h]))
                        .map_err(e)?;
                    self.asm.a.vpaddd(acc, acc, t).map_err(e)?;
                }
            }
        }
        Ok(())
    }

    /// One tap of a depthwise tile: operands at `rsi` and `rdx`, a byte per lane.
    fn lanes_step(&mut self, c: &Block, regs: &Regs) -> Result<(), String> {
        let k = self.k;
        for (x, j) in (c.j0..c.j0 + c.vecs).enumerate() {
            let addr = Addr {
                base: rdx,
                disp: (j * self.lanes) as i64,
            };
            let w = regs.weights[x];
            self.asm
                .widen_bytes(w, addr, self.rhs_signed, self.masked(j))?;
            if let Some(z) = regs.zr {
                self.asm.int_arith(BinOp::Sub, w, w, z)?;
            }
            if self.zl != 0 {
                let s = regs.sums[x];
                self.asm.int_arith(BinOp::Add, s, s, w)?;
            }
        }
        for i in 0..c.rows {
            let m = c.m0 + i;
            for (x, j) in (c.j0..c.j0 + c.vecs).enumerate() {
                let addr = Addr {
                    base: rsi,
                    disp: m as i64 * k.lhs.row + (j * self.lanes) as i64,
                };
                self.asm
                    .widen_bytes(regs.row, addr, self.lhs_signed, self.masked(j))?;
                let (t, w) = (regs.scratch, regs.weights[x]);
                self.asm.int_arith(BinOp::Mul, t, regs.row, w)?;
                let acc = (i * c.vecs + x) as u8;
                self.asm.int_arith(BinOp::Add, acc, acc, t)?;
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
            vector_bytes: (self.lanes * self.out.size_bytes()) as i64,
            masked: &masked,
        };
        self.prog.emit_block(&mut self.asm, c, &outputs, self.regs)
    }
}
