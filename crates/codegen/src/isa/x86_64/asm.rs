//! A thin layer over iced-x86's code assembler: vector registers by index, one method per
//! operation, each emitting the AVX2 (VEX, ymm) or the AVX-512F (EVEX, zmm) form.
//!
//! Invariant: every method emits only instructions of its ISA's baseline (AVX2 + FMA, or
//! AVX-512F: no DQ/BW/VL forms), touches only the registers it is given plus `k1` (the tail
//! mask, AVX-512) and `k2` (a scratch mask, AVX-512), and addresses constants RIP-relative
//! inside the code it assembles. A masked access (the partial last vector of a tile row)
//! touches only the lanes of the tail: AVX-512 through `k1`, AVX2 through `vmaskmovps` with the
//! mask register set up by [`Asm::tail_mask`].

use iced_x86::code_asm::*;
use iced_x86::IcedError;

/// The vector ISA a kernel is encoded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VecIsa {
    Avx2,
    Avx512,
}

impl VecIsa {
    /// f32 lanes per register.
    pub fn lanes(self) -> usize {
        match self {
            VecIsa::Avx2 => 8,
            VecIsa::Avx512 => 16,
        }
    }

    /// Vector registers.
    pub fn regs(self) -> usize {
        match self {
            VecIsa::Avx2 => 16,
            VecIsa::Avx512 => 32,
        }
    }

    /// Bytes per register.
    pub fn bytes(self) -> i64 {
        4 * self.lanes() as i64
    }
}

const YMM: [AsmRegisterYmm; 16] = [
    ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14,
    ymm15,
];
const XMM: [AsmRegisterXmm; 16] = [
    xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14,
    xmm15,
];
const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14,
    zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27,
    zmm28, zmm29, zmm30, zmm31,
];

/// A memory address `base + disp`.
#[derive(Clone, Copy, Debug)]
pub struct Addr {
    pub base: AsmRegister64,
    pub disp: i64,
}

impl Addr {
    fn mem(self) -> Result<AsmMemoryOperand, String> {
        let d = i32::try_from(self.disp)
            .map_err(|_| format!("displacement {} does not fit 32 bits", self.disp))?;
        Ok(self.base + d)
    }
}

/// A source operand of an arithmetic instruction.
#[derive(Clone, Copy, Debug)]
pub enum Src {
    Reg(u8),
    /// A full (or, masked, partial) vector in memory.
    Vec(Addr),
    /// One f32 in memory, broadcast to every lane (AVX-512 embedded broadcast).
    Bcst(Addr),
}

/// Comparison predicates of `vcmpps` (ordered, signalling on NaN where IEEE says so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pred {
    Eq = 0,
    Lt = 1,
    Le = 2,
    Unord = 3,
    Neq = 4,
    Ge = 13,
    Gt = 14,
}

/// The assembler of one kernel.
pub struct Asm {
    pub a: CodeAssembler,
    pub isa: VecIsa,
    consts: Vec<(u32, CodeLabel)>,
    /// AVX2: the register holding the tail mask and the label of its 8 dwords.
    avx2_mask: Option<(u8, CodeLabel, usize)>,
}

pub(super) fn e(err: IcedError) -> String {
    err.to_string()
}

impl Asm {
    pub fn new(isa: VecIsa) -> Result<Asm, String> {
        Ok(Asm {
            a: CodeAssembler::new(64).map_err(e)?,
            isa,
            consts: vec![],
            avx2_mask: None,
        })
    }

    pub(super) fn y(r: u8) -> AsmRegisterYmm {
        YMM[r as usize]
    }

    /// The low 128 bits of vector register `r` (AVX2's register file).
    pub(super) fn x(r: u8) -> AsmRegisterXmm {
        XMM[r as usize]
    }

    pub(super) fn z(r: u8) -> AsmRegisterZmm {
        ZMM[r as usize]
    }

    pub(super) fn vmem(&self, addr: Addr) -> Result<AsmMemoryOperand, String> {
        addr.mem()
    }

    fn label_of(&mut self, bits: u32) -> CodeLabel {
        if let Some((_, l)) = self.consts.iter().find(|(b, _)| *b == bits) {
            return *l;
        }
        let l = self.a.create_label();
        self.consts.push((bits, l));
        l
    }

    /// Sets up masking of the last `tail` lanes' complement: lanes `0..tail` are live. AVX-512
    /// writes `k1`; AVX2 loads the mask into vector register `reg` (reserved from now on).
    pub fn tail_mask(&mut self, tail: usize, reg: u8) -> Result<(), String> {
        match self.isa {
            VecIsa::Avx512 => {
                let bits = (1u32 << tail) - 1;
                self.a.mov(eax, bits).map_err(e)?;
                self.a.kmovw(k1, eax).map_err(e)
            }
            VecIsa::Avx2 => {
                let l = self.a.create_label();
                self.avx2_mask = Some((reg, l, tail));
                self.a.vmovups(Self::y(reg), ymmword_ptr(l)).map_err(e)
            }
        }
    }

    /// AVX2: the live lanes of a masked access (`None` before [`Asm::tail_mask`]).
    pub(super) fn avx2_tail(&self) -> Option<usize> {
        self.avx2_mask.map(|(_, _, tail)| tail)
    }

    fn mask_reg(&self) -> Result<u8, String> {
        self.avx2_mask
            .map(|(r, _, _)| r)
            .ok_or_else(|| "masked access without a tail mask".to_string())
    }

    /// `r = 0`.
    pub fn zero(&mut self, r: u8) -> Result<(), String> {
        match self.isa {
            VecIsa::Avx512 => self.a.vpxord(Self::z(r), Self::z(r), Self::z(r)),
            VecIsa::Avx2 => self.a.vxorps(Self::y(r), Self::y(r), Self::y(r)),
        }
        .map_err(e)
    }

    /// `r = [addr]` (lanes outside the tail zeroed when `masked`).
    pub fn load(&mut self, r: u8, addr: Addr, masked: bool) -> Result<(), String> {
        let m = self.vmem(addr)?;
        match (self.isa, masked) {
            (VecIsa::Avx512, false) => self.a.vmovups(Self::z(r), zmmword_ptr(m)),
            (VecIsa::Avx512, true) => self.a.vmovups(Self::z(r).k1().z(), zmmword_ptr(m)),
            (VecIsa::Avx2, false) => self.a.vmovups(Self::y(r), ymmword_ptr(m)),
            (VecIsa::Avx2, true) => {
                let k = self.mask_reg()?;
                self.a.vmaskmovps(Self::y(r), Self::y(k), ymmword_ptr(m))
            }
        }
        .map_err(e)
    }

    /// `r = broadcast([addr])`.
    pub fn bcast(&mut self, r: u8, addr: Addr) -> Result<(), String> {
        let m = self.vmem(addr)?;
        match self.isa {
            VecIsa::Avx512 => self.a.vbroadcastss(Self::z(r), dword_ptr(m)),
            VecIsa::Avx2 => self.a.vbroadcastss(Self::y(r), dword_ptr(m)),
        }
        .map_err(e)
    }

    /// One Horner step `p = p * t + c` (one fma, rounded once). AVX-512 reads `c` as an
    /// embedded broadcast from the constant pool; AVX2 builds it in `tmp`.
    pub fn horner(&mut self, p: u8, t: u8, c: f32, tmp: u8) -> Result<(), String> {
        match self.isa {
            VecIsa::Avx512 => {
                let l = self.label_of(c.to_bits());
                self.a
                    .vfmadd213ps(Self::z(p), Self::z(t), dword_bcst(l))
                    .map_err(e)
            }
            VecIsa::Avx2 => {
                self.constant(tmp, c)?;
                self.fma(tmp, p, Src::Reg(t), false)?;
                self.mov(p, tmp)
            }
        }
    }

    /// `r = broadcast(value)` from the kernel's constant pool.
    pub fn constant(&mut self, r: u8, value: f32) -> Result<(), String> {
        self.constant_bits(r, value.to_bits())
    }

    pub(super) fn constant_bits(&mut self, r: u8, bits: u32) -> Result<(), String> {
        let l = self.label_of(bits);
        match self.isa {
            VecIsa::Avx512 => self.a.vbroadcastss(Self::z(r), dword_ptr(l)),
            VecIsa::Avx2 => self.a.vbroadcastss(Self::y(r), dword_ptr(l)),
        }
        .map_err(e)
    }

    /// `[addr] = r` (only the tail lanes when `masked`).
    pub fn store(&mut self, addr: Addr, r: u8, masked: bool) -> Result<(), String> {
        let m = self.vmem(addr)?;
        match (self.isa, masked) {
            (VecIsa::Avx512, false) => self.a.vmovups(zmmword_ptr(m), Self::z(r)),
            (VecIsa::Avx512, true) => self.a.vmovups(zmmword_ptr(m).k1(), Self::z(r)),
            (VecIsa::Avx2, false) => self.a.vmovups(ymmword_ptr(m), Self::y(r)),
            (VecIsa::Avx2, true) => {
                let k = self.mask_reg()?;
                self.a.vmaskmovps(ymmword_ptr(m), Self::y(k), Self::y(r))
            }
        }
        .map_err(e)
    }

    /// `acc = x * y + acc`, one rounding. A masked vector source is read only in the tail
    /// lanes (AVX-512; AVX2 callers load masked sources into a register first).
    pub fn fma(&mut self, acc: u8, x: u8, y: Src, masked: bool) -> Result<(), String> {
        match (self.isa, y) {
            (VecIsa::Avx512, Src::Reg(r)) => {
                self.a.vfmadd231ps(Self::z(acc), Self::z(x), Self::z(r))
            }
            (VecIsa::Avx512, Src::Vec(addr)) => {
                let m = self.vmem(addr)?;
                if masked {
                    self.a
                        .vfmadd231ps(Self::z(acc).k1(), Self::z(x), zmmword_ptr(m))
                } else {
                    self.a.vfmadd231ps(Self::z(acc), Self::z(x), zmmword_ptr(m))
                }
            }
            (VecIsa::Avx512, Src::Bcst(addr)) => {
                let m = self.vmem(addr)?;
                self.a.vfmadd231ps(Self::z(acc), Self::z(x), dword_bcst(m))
            }
            (VecIsa::Avx2, Src::Reg(r)) => self.a.vfmadd231ps(Self::y(acc), Self::y(x), Self::y(r)),
            (VecIsa::Avx2, Src::Vec(addr)) if !masked => {
                let m = self.vmem(addr)?;
                self.a.vfmadd231ps(Self::y(acc), Self::y(x), ymmword_ptr(m))
            }
            (VecIsa::Avx2, _) => return Err("AVX2 fma source must be a register".into()),
        }
        .map_err(e)
    }

    /// `d = a op b` for `+ - * /` and x86 `min`/`max` (not NaN-propagating; see
    /// [`Asm::nan_from`]).
    pub fn arith(&mut self, op: Arith, d: u8, a: u8, b: u8) -> Result<(), String> {
        macro_rules! go {
            ($m:ident) => {
                match self.isa {
                    VecIsa::Avx512 => self.a.$m(Self::z(d), Self::z(a), Self::z(b)),
                    VecIsa::Avx2 => self.a.$m(Self::y(d), Self::y(a), Self::y(b)),
                }
            };
        }
        match op {
            Arith::Add => go!(vaddps),
            Arith::Sub => go!(vsubps),
            Arith::Mul => go!(vmulps),
            Arith::Div => go!(vdivps),
            Arith::Min => go!(vminps),
            Arith::Max => go!(vmaxps),
        }
        .map_err(e)
    }

    /// Where `a` is NaN, `d = a` (with `a != d`): makes x86 `min`/`max`, which return the second
    /// operand when either is NaN, propagate NaN from the first too. `tmp` is a scratch vector
    /// register (AVX2).
    pub fn nan_from(&mut self, d: u8, a: u8, tmp: u8) -> Result<(), String> {
        match self.isa {
            VecIsa::Avx512 => {
                self.a
                    .vcmpps(k2, Self::z(a), Self::z(a), Pred::Unord as i32)
                    .map_err(e)?;
                self.a.vmovaps(Self::z(d).k2(), Self::z(a)).map_err(e)
            }
            VecIsa::Avx2 => {
                self.a
                    .vcmpps(Self::y(tmp), Self::y(a), Self::y(a), Pred::Unord as i32)
                    .map_err(e)?;
                self.a
                    .vblendvps(Self::y(d), Self::y(d), Self::y(a), Self::y(tmp))
                    .map_err(e)
            }
        }
    }

    /// `d = (a pred b) ? then : otherwise`; `tmp` is a scratch register (AVX2).
    #[allow(clippy::too_many_arguments)]
    pub fn select(
        &mut self,
        pred: Pred,
        a: u8,
        b: u8,
        then: u8,
        otherwise: u8,
        d: u8,
        tmp: u8,
    ) -> Result<(), String> {
        match self.isa {
            VecIsa::Avx512 => {
                self.a
                    .vcmpps(k2, Self::z(a), Self::z(b), pred as i32)
                    .map_err(e)?;
                self.a
                    .vblendmps(Self::z(d).k2(), Self::z(otherwise), Self::z(then))
                    .map_err(e)
            }
            VecIsa::Avx2 => {
                self.a
                    .vcmpps(Self::y(tmp), Self::y(a), Self::y(b), pred as i32)
                    .map_err(e)?;
                self.a
                    .vblendvps(Self::y(d), Self::y(otherwise), Self::y(then), Self::y(tmp))
                    .map_err(e)
            }
        }
    }

    /// `d = |a|`.
    pub fn abs(&mut self, d: u8, a: u8) -> Result<(), String> {
        let l = self.label_of(0x7fff_ffff);
        match self.isa {
            VecIsa::Avx512 => self.a.vpandd(Self::z(d), Self::z(a), dword_bcst(l)),
            VecIsa::Avx2 => {
                self.a.vbroadcastss(Self::y(d), dword_ptr(l)).map_err(e)?;
                self.a.vandps(Self::y(d), Self::y(d), Self::y(a))
            }
        }
        .map_err(e)
    }

    /// `d = sqrt(a)` (correctly rounded).
    pub fn sqrt(&mut self, d: u8, a: u8) -> Result<(), String> {
        match self.isa {
            VecIsa::Avx512 => self.a.vsqrtps(Self::z(d), Self::z(a)),
            VecIsa::Avx2 => self.a.vsqrtps(Self::y(d), Self::y(a)),
        }
        .map_err(e)
    }

    /// `d = round(a)` with `mode` 0 (nearest even), 1 (floor) or 2 (ceil); no precision
    /// exception.
    pub fn round(&mut self, d: u8, a: u8, mode: u32) -> Result<(), String> {
        let imm = (mode | 8) as i32;
        match self.isa {
            VecIsa::Avx512 => self.a.vrndscaleps(Self::z(d), Self::z(a), imm),
            VecIsa::Avx2 => self.a.vroundps(Self::y(d), Self::y(a), imm),
        }
        .map_err(e)
    }

    /// `d = 2^k` for the i32 lanes `k` of register `k` (`-126 <= k <= 127`), via `t`.
    fn pow2(&mut self, d: u8, k: u8, t: u8) -> Result<(), String> {
        self.constant_bits(t, 127)?;
        match self.isa {
            VecIsa::Avx512 => {
                self.a
                    .vpaddd(Self::z(d), Self::z(k), Self::z(t))
                    .map_err(e)?;
                self.a.vpslld(Self::z(d), Self::z(d), 23).map_err(e)
            }
            VecIsa::Avx2 => {
                self.a
                    .vpaddd(Self::y(d), Self::y(k), Self::y(t))
                    .map_err(e)?;
                self.a.vpslld(Self::y(d), Self::y(d), 23).map_err(e)
            }
        }
    }

    /// `d = exp(x)` by the algorithm of `kiln_tir::math::exp`, operation by operation; `d`,
    /// `t1`, `t2`, `t3` distinct from each other and from `x` (which is kept).
    pub fn exp(&mut self, d: u8, x: u8, [t1, t2, t3]: [u8; 3]) -> Result<(), String> {
        use kiln_tir::math;
        // Clamp with the constant first: x86 min/max return their second operand when either
        // is NaN, so a NaN `x` passes through.
        self.constant(t1, math::CLAMP_HI)?;
        self.arith(Arith::Min, d, t1, x)?;
        self.constant(t1, math::CLAMP_LO)?;
        self.arith(Arith::Max, d, t1, d)?;
        self.constant(t1, math::LOG2E)?;
        self.arith(Arith::Mul, t2, d, t1)?;
        self.round(t2, t2, 0)?; // n
        self.constant(t1, -math::C1)?;
        self.fma(d, t2, Src::Reg(t1), false)?; // r = n * -C1 + x
        self.constant(t1, -math::C2)?;
        self.fma(d, t2, Src::Reg(t1), false)?; // r = n * -C2 + r
        self.constant(t3, math::P[0])?;
        for &c in &math::P[1..] {
            self.horner(t3, d, c, t1)?; // p = p * r + c
        }
        self.arith(Arith::Mul, t1, d, d)?; // r²
        self.fma(d, t3, Src::Reg(t1), false)?; // y = p * r² + r
        self.constant(t1, 1.0)?;
        self.arith(Arith::Add, t3, d, t1)?; // y + 1
                                            // n as i32 (exact: n is integral), split in two power-of-two factors.
        match self.isa {
            VecIsa::Avx512 => {
                self.a.vcvtps2dq(Self::z(t2), Self::z(t2)).map_err(e)?;
                self.a.vpsrad(Self::z(d), Self::z(t2), 1).map_err(e)?;
                self.a
                    .vpsubd(Self::z(t2), Self::z(t2), Self::z(d))
                    .map_err(e)?;
            }
            VecIsa::Avx2 => {
                self.a.vcvtps2dq(Self::y(t2), Self::y(t2)).map_err(e)?;
                self.a.vpsrad(Self::y(d), Self::y(t2), 1).map_err(e)?;
                self.a
                    .vpsubd(Self::y(t2), Self::y(t2), Self::y(d))
                    .map_err(e)?;
            }
        }
        self.pow2(d, d, t1)?;
        self.arith(Arith::Mul, t3, t3, d)?;
        self.pow2(d, t2, t1)?;
        self.arith(Arith::Mul, d, t3, d)
    }

    /// `d = 1 / (1 + exp(-x))` with [`Asm::exp`]; `d` and the four temporaries distinct from
    /// each other and from `x` (which is kept).
    pub fn sigmoid(&mut self, d: u8, x: u8, [t1, t2, t3, t4]: [u8; 4]) -> Result<(), String> {
        // -x (the sign flipped by an xor) into t4.
        let sign = self.label_of(0x8000_0000);
        match self.isa {
            VecIsa::Avx512 => self
                .a
                .vpxord(Self::z(t4), Self::z(x), dword_bcst(sign))
                .map_err(e)?,
            VecIsa::Avx2 => {
                self.a
                    .vbroadcastss(Self::y(t4), dword_ptr(sign))
                    .map_err(e)?;
                self.a
                    .vxorps(Self::y(t4), Self::y(t4), Self::y(x))
                    .map_err(e)?;
            }
        }
        self.exp(d, t4, [t1, t2, t3])?;
        self.constant(t1, 1.0)?;
        self.arith(Arith::Add, t2, t1, d)?;
        self.arith(Arith::Div, d, t1, t2)
    }

    /// `d = erf(x)` by the algorithm of `kiln_tir::math::erf`, operation by operation (the
    /// large branch with [`Asm::exp`]); `d` and the five temporaries distinct from each other
    /// and from `x` (which is kept).
    pub fn erf(&mut self, d: u8, x: u8, [t1, t2, t3, t4, t5]: [u8; 5]) -> Result<(), String> {
        use kiln_tir::math::{ERF_CLAMP, ERF_LARGE, ERF_SMALL, ERF_SPLIT};
        // small = x · P(x²) into t5.
        self.arith(Arith::Mul, t4, x, x)?;
        self.constant(t3, ERF_SMALL[ERF_SMALL.len() - 1])?;
        for &c in ERF_SMALL[..ERF_SMALL.len() - 1].iter().rev() {
            self.horner(t3, t4, c, t1)?; // p * t + c
        }
        self.arith(Arith::Mul, t5, x, t3)?;
        // a = min(|x|, clamp), a NaN passing through (x86 min returns its second operand).
        self.abs(t4, x)?;
        self.constant(t1, ERF_CLAMP)?;
        self.arith(Arith::Min, t2, t1, t4)?;
        self.constant(t3, ERF_LARGE[ERF_LARGE.len() - 1])?;
        for &c in ERF_LARGE[..ERF_LARGE.len() - 1].iter().rev() {
            self.horner(t3, t2, c, t1)?; // q * a + c
        }
        // large = (1 - exp(q)) with x's sign or-ed in (1 - exp(q) >= 0).
        self.exp(d, t3, [t1, t2, t4])?;
        self.constant(t1, 1.0)?;
        self.arith(Arith::Sub, d, t1, d)?;
        let sign = self.label_of(0x8000_0000);
        match self.isa {
            VecIsa::Avx512 => {
                self.a
                    .vpandd(Self::z(t2), Self::z(x), dword_bcst(sign))
                    .map_err(e)?;
                self.a
                    .vpord(Self::z(d), Self::z(d), Self::z(t2))
                    .map_err(e)?;
            }
            VecIsa::Avx2 => {
                self.a
                    .vbroadcastss(Self::y(t2), dword_ptr(sign))
                    .map_err(e)?;
                self.a
                    .vandps(Self::y(t2), Self::y(t2), Self::y(x))
                    .map_err(e)?;
                self.a
                    .vorps(Self::y(d), Self::y(d), Self::y(t2))
                    .map_err(e)?;
            }
        }
        // |x| < split ? small : large.
        self.abs(t4, x)?;
        self.constant(t1, ERF_SPLIT)?;
        self.select(Pred::Lt, t4, t1, t5, d, d, t2)
    }

    /// `d = s`.
    pub fn mov(&mut self, d: u8, s: u8) -> Result<(), String> {
        if d == s {
            return Ok(());
        }
        match self.isa {
            VecIsa::Avx512 => self.a.vmovaps(Self::z(d), Self::z(s)),
            VecIsa::Avx2 => self.a.vmovaps(Self::y(d), Self::y(s)),
        }
        .map_err(e)
    }

    /// `gpr += imm` (nothing for 0).
    pub fn add_imm(&mut self, gpr: AsmRegister64, imm: i64) -> Result<(), String> {
        if imm == 0 {
            return Ok(());
        }
        match i32::try_from(imm) {
            Ok(i) => self.a.add(gpr, i).map_err(e),
            Err(_) => {
                self.a.mov(rax, imm).map_err(e)?;
                self.a.add(gpr, rax).map_err(e)
            }
        }
    }

    /// Ends the function (`vzeroupper; ret`), emits the constant pool and assembles.
    pub fn finish(mut self) -> Result<Vec<u8>, String> {
        self.a.vzeroupper().map_err(e)?;
        self.a.ret().map_err(e)?;
        for (bits, mut l) in std::mem::take(&mut self.consts) {
            self.a.set_label(&mut l).map_err(e)?;
            self.a.dd(&[bits]).map_err(e)?;
        }
        if let Some((_, mut l, tail)) = self.avx2_mask.take() {
            self.a.set_label(&mut l).map_err(e)?;
            let words: Vec<u32> = (0..8)
                .map(|i| if i < tail { u32::MAX } else { 0 })
                .collect();
            self.a.dd(&words).map_err(e)?;
        }
        self.a.assemble(0).map_err(e)
    }
}

/// Arithmetic operations of [`Asm::arith`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}
