//! The integer operations of 8-bit integer contraction kernels (AVX-512F + VNNI only): dot
//! products of byte quadruples, dword broadcasts, `i32` arithmetic, the interpreter's
//! conversions between `f32`, `i32`, `i8` and `u8`, and narrowing stores.
//!
//! Invariant: like [`Asm`]'s other methods, each touches only the registers it is given plus
//! `k1` (the tail mask) and `k2` (scratch), and each computes per lane what
//! [`kiln_tir::Epilogue::eval_scalar`] computes: `i32` arithmetic wraps, float to integer
//! truncates and saturates with NaN as 0, integer to integer wraps (narrow values are held
//! sign- or zero-extended in `i32` lanes).

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
        avx512_only(self, "vpbroadcastd")?;
        let m = self.vmem(addr)?;
        self.a.vpbroadcastd(Self::z(r), dword_ptr(m)).map_err(e)
    }

    /// `r = the 16 bytes at addr`, sign- or zero-extended to `i32` lanes (only the tail lanes
    /// read, the others zero, when `masked`).
    pub fn widen_bytes(
        &mut self,
        r: u8,
        addr: Addr,
        signed: bool,
        masked: bool,
    ) -> Result<(), String> {
        avx512_only(self, "vpmovsxbd")?;
        let m = xmmword_ptr(self.vmem(addr)?);
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
        avx512_only(self, "integer epilogues")?;
        let (d, a, b) = (Self::z(d), Self::z(a), Self::z(b));
        match op {
            BinOp::Add => self.a.vpaddd(d, a, b),
            BinOp::Sub => self.a.vpsubd(d, a, b),
            BinOp::Mul => self.a.vpmulld(d, a, b),
            BinOp::Min => self.a.vpminsd(d, a, b),
            BinOp::Max => self.a.vpmaxsd(d, a, b),
            other => return Err(format!("integer epilogue operation {other:?}")),
        }
        .map_err(e)
    }

    /// `d = to(x)` where `x` has type `from` (see the module doc); `tmp` is a scratch register
    /// distinct from `x` and `d` (used by float to integer conversions).
    pub fn convert(&mut self, to: DType, from: DType, d: u8, x: u8, tmp: u8) -> Result<(), String> {
        avx512_only(self, "epilogue conversions")?;
        let int = |t: DType| matches!(t, DType::I32 | DType::I8 | DType::U8);
        let (zd, zx) = (Self::z(d), Self::z(x));
        match (from, to) {
            (DType::F32, DType::F32) | (DType::I32 | DType::I8 | DType::U8, DType::I32) => {
                self.mov(d, x)
            }
            (f, DType::F32) if int(f) => self.a.vcvtdq2ps(zd, zx).map_err(e),
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
                if tmp == x || tmp == d {
                    return Err("conversion scratch aliases its operands".into());
                }
                const ORD_Q: i32 = 7;
                self.a.vcmpps(k2, zx, zx, ORD_Q).map_err(e)?;
                let mut src = zx;
                if let Some(lo) = lo {
                    self.constant(tmp, lo)?;
                    self.a.vmaxps(zd, Self::z(tmp), src).map_err(e)?;
                    src = zd;
                }
                self.constant(tmp, hi)?;
                self.a.vminps(zd, Self::z(tmp), src).map_err(e)?;
                self.a.vcvttps2dq(zd.k2().z(), zd).map_err(e)
            }
            (f, t) if int(f) && matches!(t, DType::I8 | DType::U8) => {
                self.a.vpslld(zd, zx, 24).map_err(e)?;
                if t == DType::I8 {
                    self.a.vpsrad(zd, zd, 24).map_err(e)
                } else {
                    self.a.vpsrld(zd, zd, 24).map_err(e)
                }
            }
            (f, t) => Err(format!("epilogue conversion from {f} to {t}")),
        }
    }

    /// Stores `r`'s lanes as `dtype` (`f32`/`i32` whole, `i8`/`u8` as their low bytes), only
    /// the tail lanes when `masked`.
    pub fn store_as(
        &mut self,
        dtype: DType,
        addr: Addr,
        r: u8,
        masked: bool,
    ) -> Result<(), String> {
        match dtype {
            DType::F32 | DType::I32 => self.store(addr, r, masked),
            DType::I8 | DType::U8 => {
                avx512_only(self, "narrowing stores")?;
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
