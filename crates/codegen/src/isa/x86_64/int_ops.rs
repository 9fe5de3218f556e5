//! The integer operations of 8-bit integer contraction kernels: dot products of byte
//! quadruples (AVX-512 VNNI), widening loads, dword broadcasts, `i32` arithmetic, the
//! interpreter's conversions between `f32`, `i32`, `i8` and `u8`, and narrowing stores, each in
//! its AVX-512 (zmm) and AVX2 (ymm) form.
//!
//! Invariant: like [`Asm`]'s other methods, each touches only the registers it is given plus
//! `k1` (the tail mask) and `k2` (scratch) on AVX-512, and each computes per lane what
//! [`kiln_tir::Epilogue::eval_scalar`] computes: `i32` arithmetic wraps, float to integer
//! truncates and saturates with NaN as 0, integer to integer wraps (narrow values are held
//! sign- or zero-extended in `i32` lanes). AVX2 has no byte masks: its masked byte accesses
//! (widening loads, narrowing stores) serve a tail of exactly four lanes, and refuse others.

use super::asm::{e, Addr, Asm, VecIsa};
use iced_x86::code_asm::*;
use kiln_ir::DType;
use kiln_tir::BinOp;

fn avx512_only(a: &Asm, what: &str) -> Result<(), String> {
    if a.isa == VecIsa::Avx512 {
        Ok(())
    } else {
        Err(format!("{what} needs AVX-512"))
    }
}

/// AVX2: a masked byte access must be a tail of four lanes (one dword of bytes).
fn avx2_half_tail(a: &Asm) -> Result<(), String> {
    match a.avx2_tail() {
        Some(4) => Ok(()),
        t => Err(format!(
            "AVX2 masked byte accesses serve a tail of 4 lanes, not {t:?}"
        )),
    }
}

impl Asm {
    /// `acc += Σ_{q<4} a.u8[4i+q] · b.i8[4i+q]` per dword lane `i` (`vpdpbusd`, no saturation).
    pub fn dpbusd(&mut self, acc: u8, a: u8, b: u8) -> Result<(), String> {
        avx512_only(self, "vpdpbusd")?;
        self.a
            .vpdpbusd(Self::z(acc), Self::z(a), Self::z(b))
            .map_err(e)
    }

    /// `r = the dword at addr` in every lane.
    pub fn bcast_dword(&mut self, r: u8, addr: Addr) -> Result<(), String> {
        let m = self.vmem(addr)?;
        match self.isa {
            VecIsa::Avx512 => self.a.vpbroadcastd(Self::z(r), dword_ptr(m)),
            VecIsa::Avx2 => self.a.vpbroadcastd(Self::y(r), dword_ptr(m)),
        }
        .map_err(e)
    }

    /// `r = the bytes at addr` (one per lane), sign- or zero-extended to `i32` lanes (only the
    /// tail lanes read, the others zero, when `masked`).
    pub fn widen_bytes(
        &mut self,
        r: u8,
        addr: Addr,
        signed: bool,
        masked: bool,
    ) -> Result<(), String> {
        let mem = self.vmem(addr)?;
        if self.isa == VecIsa::Avx2 {
            let res = if masked {
                // Four bytes into the low half (the VEX form zeroes the upper one).
                avx2_half_tail(self)?;
                let (x, m) = (Self::x(r), dword_ptr(mem));
                if signed {
                    self.a.vpmovsxbd(x, m)
                } else {
                    self.a.vpmovzxbd(x, m)
                }
            } else {
                let (y, m) = (Self::y(r), qword_ptr(mem));
                if signed {
                    self.a.vpmovsxbd(y, m)
                } else {
                    self.a.vpmovzxbd(y, m)
                }
            };
            return res.map_err(e);
        }
        let m = xmmword_ptr(mem);
        let z = Self::z(r);
        match (signed, masked) {
            (true, false) => self.a.vpmovsxbd(z, m),
            (true, true) => self.a.vpmovsxbd(z.k1().z(), m),
            (false, false) => self.a.vpmovzxbd(z, m),
            (false, true) => self.a.vpmovzxbd(z.k1().z(), m),
        }
        .map_err(e)
    }

    /// `d = op(a, b)` on `i32` lanes (`+ - *` wrapping, signed `min`/`max`).
    pub fn int_arith(&mut self, op: BinOp, d: u8, a: u8, b: u8) -> Result<(), String> {
        // The instruction in the ISA's register width (as `Asm::arith` picks it).
        macro_rules! go {
            ($m:ident) => {
                match self.isa {
                    VecIsa::Avx512 => self.a.$m(Self::z(d), Self::z(a), Self::z(b)),
                    VecIsa::Avx2 => self.a.$m(Self::y(d), Self::y(a), Self::y(b)),
                }
            };
        }
        match op {
            BinOp::Add => go!(vpaddd),
            BinOp::Sub => go!(vpsubd),
            BinOp::Mul => go!(vpmulld),
            BinOp::Min => go!(vpminsd),
            BinOp::Max => go!(vpmaxsd),
            other => return Err(format!("integer epilogue operation {other:?}")),
        }
        .map_err(e)
    }

    /// `d = to(x)` where `x` has type `from` (see the module doc); `tmp` are scratch registers
    /// distinct from `x` and `d` (float to integer conversions use the first, and on AVX2 the
    /// second for the mask of ordered lanes).
    pub fn convert(
        &mut self,
        to: DType,
        from: DType,
        d: u8,
        x: u8,
        tmp: [Option<u8>; 2],
    ) -> Result<(), String> {
        let int = |t: DType| matches!(t, DType::I32 | DType::I8 | DType::U8);
        let avx2 = self.isa == VecIsa::Avx2;
        match (from, to) {
            (DType::F32, DType::F32) | (DType::I32 | DType::I8 | DType::U8, DType::I32) => {
                self.mov(d, x)
            }
            (f, DType::F32) if int(f) => if avx2 {
                self.a.vcvtdq2ps(Self::y(d), Self::y(x))
            } else {
                self.a.vcvtdq2ps(Self::z(d), Self::z(x))
            }
            .map_err(e),
            (DType::F32, t) if int(t) => {
                // NaN lanes become 0 through the mask of ordered lanes; the others are
                // clamped into the type's range (`vminps`/`vmaxps` with the constant first
                // keep a NaN, which the mask then zeroes), then truncated.
                let (lo, hi) = match t {
                    DType::I8 => (Some(-128.0f32), 127.0f32),
                    DType::U8 => (Some(0.0), 255.0),
                    // The largest f32 below 2^31; below -2^31 truncation gives i32::MIN.
                    _ => (None, 2_147_483_520.0),
                };
                let [Some(tmp), ord] = tmp else {
                    return Err("a float to integer conversion without scratch".into());
                };
                let ord = if avx2 {
                    Some(ord.ok_or("an AVX2 float to integer conversion needs two scratch")?)
                } else {
                    None
                };
                if [Some(tmp), ord].iter().flatten().any(|&t| t == x || t == d) || ord == Some(tmp)
                {
                    return Err("conversion scratch aliases its operands".into());
                }
                const ORD_Q: i32 = 7;
                match ord {
                    Some(o) => self.a.vcmpps(Self::y(o), Self::y(x), Self::y(x), ORD_Q),
                    None => self.a.vcmpps(k2, Self::z(x), Self::z(x), ORD_Q),
                }
                .map_err(e)?;
                let mut src = x;
                if let Some(lo) = lo {
                    self.constant(tmp, lo)?;
                    self.arith(super::asm::Arith::Max, d, tmp, src)?;
                    src = d;
                }
                self.constant(tmp, hi)?;
                self.arith(super::asm::Arith::Min, d, tmp, src)?;
                match ord {
                    Some(o) => {
                        let yd = Self::y(d);
                        self.a.vcvttps2dq(yd, yd).map_err(e)?;
                        self.a.vpand(yd, yd, Self::y(o))
                    }
                    None => self.a.vcvttps2dq(Self::z(d).k2().z(), Self::z(d)),
                }
                .map_err(e)
            }
            (f, t) if int(f) && matches!(t, DType::I8 | DType::U8) => if avx2 {
                let (yd, yx) = (Self::y(d), Self::y(x));
                self.a.vpslld(yd, yx, 24).map_err(e)?;
                if t == DType::I8 {
                    self.a.vpsrad(yd, yd, 24)
                } else {
                    self.a.vpsrld(yd, yd, 24)
                }
            } else {
                let (zd, zx) = (Self::z(d), Self::z(x));
                self.a.vpslld(zd, zx, 24).map_err(e)?;
                if t == DType::I8 {
                    self.a.vpsrad(zd, zd, 24)
                } else {
                    self.a.vpsrld(zd, zd, 24)
                }
            }
            .map_err(e),
            (f, t) => Err(format!("epilogue conversion from {f} to {t}")),
        }
    }

    /// Stores `r`'s lanes as `dtype` (`f32`/`i32` whole, `i8`/`u8` as their low bytes), only
    /// the tail lanes when `masked`. AVX2 narrows by packing with saturation (exact: the lanes
    /// already hold values of `dtype`) and overwrites `r`.
    pub fn store_as(
        &mut self,
        dtype: DType,
        addr: Addr,
        r: u8,
        masked: bool,
    ) -> Result<(), String> {
        match dtype {
            DType::F32 | DType::I32 => self.store(addr, r, masked),
            DType::I8 | DType::U8 if self.isa == VecIsa::Avx2 => {
                let m = self.vmem(addr)?;
                let (y, x) = (Self::y(r), Self::x(r));
                // Words in qwords 0 and 2 (one per 128-bit lane), gathered, then bytes.
                self.a.vpackssdw(y, y, y).map_err(e)?;
                self.a.vpermq(y, y, 0b00_00_10_00).map_err(e)?;
                if dtype == DType::I8 {
                    self.a.vpacksswb(x, x, x)
                } else {
                    self.a.vpackuswb(x, x, x)
                }
                .map_err(e)?;
                if masked {
                    avx2_half_tail(self)?;
                    self.a.vmovd(dword_ptr(m), x)
                } else {
                    self.a.vmovq(qword_ptr(m), x)
                }
                .map_err(e)
            }
            DType::I8 | DType::U8 => {
                let m = self.vmem(addr)?;
                if masked {
                    self.a.vpmovdb(xmmword_ptr(m).k1(), Self::z(r)).map_err(e)
                } else {
                    self.a.vpmovdb(xmmword_ptr(m), Self::z(r)).map_err(e)
                }
            }
            other => Err(format!("stores of {other}")),
        }
    }
}
