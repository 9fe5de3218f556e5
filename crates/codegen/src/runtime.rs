//! The runtime hooks compiled code calls: `extern "C"` Rust functions registered as JIT symbols.
//!
//! Invariant: every hook is declared once in [`HOOKS`] with the Cranelift signature its Rust
//! definition has, and the math hooks compute exactly what [`kiln_tir::interp`] computes (the same
//! `f64` formulas rounded to `f32`), so compiled transcendentals match the interpreter bit for
//! bit. Hooks never unwind: nothing in them panics.
//!
//! `kiln_parallel_for(body, ctx, n)` splits `0..n` into at most `4 × threads` contiguous chunks
//! and runs `body(ctx, begin, end)` for each on the [`crate::pool::SpinPool`] the caller runs
//! inside (a [`crate::JitModule`]'s own), else on the current rayon pool (rayon's global pool
//! unless the caller runs inside another); it returns the first non-zero status a chunk
//! returned, or 0. `kiln_alloc`/`kiln_free` back local buffers
//! too large for the stack; `kiln_free(null, ..)` is a no-op. `kiln_f16_to_f32` widens the bits
//! of an `f16` (exactly) and `kiln_f32_to_f16` rounds an `f32` to the bits of the nearest `f16`
//! (ties to even, NaN stays NaN), as the interpreter does with the `half` crate.
//! The `f64` math hooks (`kiln_exp`, ...) are the same formulas without the rounding to `f32`.
//! `kiln_profile_mark(i)` records a timestamp for entries compiled for profiling (see
//! [`take_profile_marks`]).

#![allow(unsafe_code)]

use cranelift_codegen::ir::{types, AbiParam, Signature, Type};
use cranelift_codegen::isa::CallConv;
use rayon::prelude::*;
use std::sync::atomic::{AtomicI32, Ordering};

/// The shape of a hook's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSig {
    /// `f32 -> f32`
    Unary,
    /// `(f32, f32) -> f32`
    Binary,
    /// `(f32, f32, f32) -> f32`
    Ternary,
    /// `(ptr body, ptr ctx, i64 n) -> i32`
    ParallelFor,
    /// `(i64 size, i64 align) -> ptr`
    Alloc,
    /// `(ptr, i64 size, i64 align)`
    Free,
    /// `u16 -> f32` (the bits of an `f16`, widened)
    F16ToF32,
    /// `i64 -> ()` (a profiling mark)
    Mark,
    /// `f32 -> u16` (rounded to the bits of an `f16`)
    F32ToF16,
    /// `f64 -> f64`
    Unary64,
    /// `(f64, f64) -> f64`
    Binary64,
    /// `(f64, f64, f64) -> f64`
    Ternary64,
}

impl HookSig {
    /// The Cranelift signature, for pointer type `ptr`.
    pub fn signature(self, call_conv: CallConv, ptr: Type) -> Signature {
        let mut s = Signature::new(call_conv);
        // `u16` crosses the C ABI zero-extended (the Rust side may rely on it).
        let p = |t: Type| {
            if t == types::I16 {
                AbiParam::new(t).uext()
            } else {
                AbiParam::new(t)
            }
        };
        let (params, ret): (Vec<Type>, Option<Type>) = match self {
            HookSig::Unary => (vec![types::F32], Some(types::F32)),
            HookSig::Binary => (vec![types::F32; 2], Some(types::F32)),
            HookSig::Ternary => (vec![types::F32; 3], Some(types::F32)),
            HookSig::ParallelFor => (vec![ptr, ptr, types::I64], Some(types::I32)),
            HookSig::Alloc => (vec![types::I64, types::I64], Some(ptr)),
            HookSig::Free => (vec![ptr, types::I64, types::I64], None),
            HookSig::F16ToF32 => (vec![types::I16], Some(types::F32)),
            HookSig::F32ToF16 => (vec![types::F32], Some(types::I16)),
            HookSig::Mark => (vec![types::I64], None),
            HookSig::Unary64 => (vec![types::F64], Some(types::F64)),
            HookSig::Binary64 => (vec![types::F64; 2], Some(types::F64)),
            HookSig::Ternary64 => (vec![types::F64; 3], Some(types::F64)),
        };
        s.params.extend(params.into_iter().map(p));
        s.returns.extend(ret.map(p));
        s
    }
}

/// Hook names.
pub mod names {
    pub const EXP: &str = "kiln_expf";
    pub const LOG: &str = "kiln_logf";
    pub const TANH: &str = "kiln_tanhf";
    pub const SIGMOID: &str = "kiln_sigmoidf";
    pub const ERF: &str = "kiln_erff";
    pub const SIN: &str = "kiln_sinf";
    pub const COS: &str = "kiln_cosf";
    pub const POW: &str = "kiln_powf";
    pub const FMOD: &str = "kiln_fmodf";
    pub const FMA: &str = "kiln_fmaf";
    pub const PARALLEL_FOR: &str = "kiln_parallel_for";
    pub const ALLOC: &str = "kiln_alloc";
    pub const FREE: &str = "kiln_free";
    pub const F16_TO_F32: &str = "kiln_f16_to_f32";
    pub const F32_TO_F16: &str = "kiln_f32_to_f16";
    pub const PROFILE_MARK: &str = "kiln_profile_mark";
    pub const EXP64: &str = "kiln_exp";
    pub const LOG64: &str = "kiln_log";
    pub const TANH64: &str = "kiln_tanh";
    pub const SIGMOID64: &str = "kiln_sigmoid";
    pub const ERF64: &str = "kiln_erf";
    pub const SIN64: &str = "kiln_sin";
    pub const COS64: &str = "kiln_cos";
    pub const POW64: &str = "kiln_pow";
    pub const FMOD64: &str = "kiln_fmod";
    pub const FMA64: &str = "kiln_fma";
}

/// A hook: its symbol name, signature and (for the JIT) address.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub name: &'static str,
    pub sig: HookSig,
    pub addr: fn() -> *const u8,
}

/// Every hook compiled code may call.
pub const HOOKS: &[Hook] = &[
    Hook {
        name: names::EXP,
        sig: HookSig::Unary,
        addr: || kiln_expf as *const u8,
    },
    Hook {
        name: names::LOG,
        sig: HookSig::Unary,
        addr: || kiln_logf as *const u8,
    },
    Hook {
        name: names::TANH,
        sig: HookSig::Unary,
        addr: || kiln_tanhf as *const u8,
    },
    Hook {
        name: names::SIGMOID,
        sig: HookSig::Unary,
        addr: || kiln_sigmoidf as *const u8,
    },
    Hook {
        name: names::ERF,
        sig: HookSig::Unary,
        addr: || kiln_erff as *const u8,
    },
    Hook {
        name: names::SIN,
        sig: HookSig::Unary,
        addr: || kiln_sinf as *const u8,
    },
    Hook {
        name: names::COS,
        sig: HookSig::Unary,
        addr: || kiln_cosf as *const u8,
    },
    Hook {
        name: names::POW,
        sig: HookSig::Binary,
        addr: || kiln_powf as *const u8,
    },
    Hook {
        name: names::FMOD,
        sig: HookSig::Binary,
        addr: || kiln_fmodf as *const u8,
    },
    Hook {
        name: names::FMA,
        sig: HookSig::Ternary,
        addr: || kiln_fmaf as *const u8,
    },
    Hook {
        name: names::PARALLEL_FOR,
        sig: HookSig::ParallelFor,
        addr: || kiln_parallel_for as *const u8,
    },
    Hook {
        name: names::ALLOC,
        sig: HookSig::Alloc,
        addr: || kiln_alloc as *const u8,
    },
    Hook {
        name: names::FREE,
        sig: HookSig::Free,
        addr: || kiln_free as *const u8,
    },
    Hook {
        name: names::F16_TO_F32,
        sig: HookSig::F16ToF32,
        addr: || kiln_f16_to_f32 as *const u8,
    },
    Hook {
        name: names::F32_TO_F16,
        sig: HookSig::F32ToF16,
        addr: || kiln_f32_to_f16 as *const u8,
    },
    Hook {
        name: names::PROFILE_MARK,
        sig: HookSig::Mark,
        addr: || kiln_profile_mark as *const u8,
    },
    Hook {
        name: names::EXP64,
        sig: HookSig::Unary64,
        addr: || kiln_exp as *const u8,
    },
    Hook {
        name: names::LOG64,
        sig: HookSig::Unary64,
        addr: || kiln_log as *const u8,
    },
    Hook {
        name: names::TANH64,
        sig: HookSig::Unary64,
        addr: || kiln_tanh as *const u8,
    },
    Hook {
        name: names::SIGMOID64,
        sig: HookSig::Unary64,
        addr: || kiln_sigmoid as *const u8,
    },
    Hook {
        name: names::ERF64,
        sig: HookSig::Unary64,
        addr: || kiln_erf as *const u8,
    },
    Hook {
        name: names::SIN64,
        sig: HookSig::Unary64,
        addr: || kiln_sin as *const u8,
    },
    Hook {
        name: names::COS64,
        sig: HookSig::Unary64,
        addr: || kiln_cos as *const u8,
    },
    Hook {
        name: names::POW64,
        sig: HookSig::Binary64,
        addr: || kiln_pow as *const u8,
    },
    Hook {
        name: names::FMOD64,
        sig: HookSig::Binary64,
        addr: || kiln_fmod as *const u8,
    },
    Hook {
        name: names::FMA64,
        sig: HookSig::Ternary64,
        addr: || kiln_fma as *const u8,
    },
];

/// The hook called `name`.
pub fn hook(name: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.name == name)
}

extern "C" fn kiln_expf(x: f32) -> f32 {
    (x as f64).exp() as f32
}

extern "C" fn kiln_logf(x: f32) -> f32 {
    (x as f64).ln() as f32
}

extern "C" fn kiln_tanhf(x: f32) -> f32 {
    (x as f64).tanh() as f32
}

extern "C" fn kiln_sigmoidf(x: f32) -> f32 {
    (1.0 / (1.0 + (-(x as f64)).exp())) as f32
}

extern "C" fn kiln_erff(x: f32) -> f32 {
    erf64(x as f64) as f32
}

extern "C" fn kiln_sinf(x: f32) -> f32 {
    (x as f64).sin() as f32
}

extern "C" fn kiln_cosf(x: f32) -> f32 {
    (x as f64).cos() as f32
}

extern "C" fn kiln_powf(x: f32, y: f32) -> f32 {
    (x as f64).powf(y as f64) as f32
}

extern "C" fn kiln_fmodf(x: f32, y: f32) -> f32 {
    x % y
}

extern "C" fn kiln_fmaf(x: f32, y: f32, z: f32) -> f32 {
    x.mul_add(y, z)
}

extern "C" fn kiln_exp(x: f64) -> f64 {
    x.exp()
}

extern "C" fn kiln_log(x: f64) -> f64 {
    x.ln()
}

extern "C" fn kiln_tanh(x: f64) -> f64 {
    x.tanh()
}

extern "C" fn kiln_sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

extern "C" fn kiln_erf(x: f64) -> f64 {
    erf64(x)
}

extern "C" fn kiln_sin(x: f64) -> f64 {
    x.sin()
}

extern "C" fn kiln_cos(x: f64) -> f64 {
    x.cos()
}

extern "C" fn kiln_pow(x: f64, y: f64) -> f64 {
    x.powf(y)
}

extern "C" fn kiln_fmod(x: f64, y: f64) -> f64 {
    x % y
}

extern "C" fn kiln_fma(x: f64, y: f64, z: f64) -> f64 {
    x.mul_add(y, z)
}

/// Profiling marks `(call index, time)` recorded by entries compiled with
/// [`crate::CodegenOptions::profile`], in the order they were made.
static PROFILE_MARKS: std::sync::Mutex<Vec<(u32, std::time::Instant)>> =
    std::sync::Mutex::new(Vec::new());

/// Records that an entry compiled for profiling reached kernel call `index` (or, one past the
/// last, its end).
extern "C" fn kiln_profile_mark(index: i64) {
    let now = std::time::Instant::now();
    let mut marks = PROFILE_MARKS.lock().unwrap_or_else(|p| p.into_inner());
    marks.push((index as u32, now));
}

/// Takes the profiling marks recorded so far (process-wide: profile one run at a time).
pub fn take_profile_marks() -> Vec<(u32, std::time::Instant)> {
    std::mem::take(&mut *PROFILE_MARKS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The `f16` with bits `bits`, widened to `f32` (exact).
pub extern "C" fn kiln_f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// The bits of the `f16` nearest `x` (ties to even).
pub extern "C" fn kiln_f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The error function in `f64`: FreeBSD's `s_erf.c` rational approximations (error below one
/// `f64` ulp), with the interpreter's conventions at the edges (`NaN` passes through, `|x| >= 4`
/// gives `±1`). The interpreter sums the Taylor series instead (slow for `|x|` near 4, and
/// inexact there by cancellation); after rounding to `f32` the two differ by at most one ulp
/// (checked on a dense grid in the tests).
///
/// ```text
/// Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
/// Developed at SunPro, a Sun Microsystems, Inc. business.
/// Permission to use, copy, modify, and distribute this software is freely granted, provided
/// that this notice is preserved.
/// ```
pub fn erf64(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    if ax >= 4.0 {
        return x.signum();
    }
    let y = if ax < 0.84375 {
        if ax < f64::from_bits(0x3e30_0000_0000_0000) {
            return 0.125 * (8.0 * x + EFX8 * x);
        }
        let z = x * x;
        let r = PP0 + z * (PP1 + z * (PP2 + z * (PP3 + z * PP4)));
        let s = 1.0 + z * (QQ1 + z * (QQ2 + z * (QQ3 + z * (QQ4 + z * QQ5))));
        return x + x * (r / s);
    } else if ax < 1.25 {
        let s = ax - 1.0;
        let p = PA0 + s * (PA1 + s * (PA2 + s * (PA3 + s * (PA4 + s * (PA5 + s * PA6)))));
        let q = 1.0 + s * (QA1 + s * (QA2 + s * (QA3 + s * (QA4 + s * (QA5 + s * QA6)))));
        ERX + p / q
    } else {
        1.0 - erfc_tail(ax)
    };
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// `erfc(x)` for `1.25 <= x < 4` (the `erfc2` branch of `s_erf.c`).
fn erfc_tail(x: f64) -> f64 {
    let s = 1.0 / (x * x);
    let (r, big_s) = if x < 1.0 / 0.35 {
        (
            RA0 + s * (RA1 + s * (RA2 + s * (RA3 + s * (RA4 + s * (RA5 + s * (RA6 + s * RA7)))))),
            1.0 + s
                * (SA1
                    + s * (SA2
                        + s * (SA3 + s * (SA4 + s * (SA5 + s * (SA6 + s * (SA7 + s * SA8))))))),
        )
    } else {
        (
            RB0 + s * (RB1 + s * (RB2 + s * (RB3 + s * (RB4 + s * (RB5 + s * RB6))))),
            1.0 + s * (SB1 + s * (SB2 + s * (SB3 + s * (SB4 + s * (SB5 + s * (SB6 + s * SB7)))))),
        )
    };
    // `x` with its low 32 bits cleared, so that `z * z` is exact.
    let z = f64::from_bits(x.to_bits() & 0xffff_ffff_0000_0000);
    (-z * z - 0.5625).exp() * ((z - x) * (z + x) + r / big_s).exp() / x
}

/// Coefficients of `s_erf.c`, as printed there (more digits than an `f64` holds).
#[allow(clippy::excessive_precision)]
mod erf_coeffs {
    pub(super) const ERX: f64 = 8.45062911510467529297e-01;
    pub(super) const EFX8: f64 = 1.02703333676410069053e+00;
    pub(super) const PP0: f64 = 1.28379167095512558561e-01;
    pub(super) const PP1: f64 = -3.25042107247001499370e-01;
    pub(super) const PP2: f64 = -2.84817495755985104766e-02;
    pub(super) const PP3: f64 = -5.77027029648944159157e-03;
    pub(super) const PP4: f64 = -2.37630166566501626084e-05;
    pub(super) const QQ1: f64 = 3.97917223959155352819e-01;
    pub(super) const QQ2: f64 = 6.50222499887672944485e-02;
    pub(super) const QQ3: f64 = 5.08130628187576562776e-03;
    pub(super) const QQ4: f64 = 1.32494738004321644526e-04;
    pub(super) const QQ5: f64 = -3.96022827877536812320e-06;
    pub(super) const PA0: f64 = -2.36211856075265944077e-03;
    pub(super) const PA1: f64 = 4.14856118683748331666e-01;
    pub(super) const PA2: f64 = -3.72207876035701323847e-01;
    pub(super) const PA3: f64 = 3.18346619901161753674e-01;
    pub(super) const PA4: f64 = -1.10894694282396677476e-01;
    pub(super) const PA5: f64 = 3.54783043256182359371e-02;
    pub(super) const PA6: f64 = -2.16637559486879084300e-03;
    pub(super) const QA1: f64 = 1.06420880400844228286e-01;
    pub(super) const QA2: f64 = 5.40397917702171048937e-01;
    pub(super) const QA3: f64 = 7.18286544141962662868e-02;
    pub(super) const QA4: f64 = 1.26171219808761642112e-01;
    pub(super) const QA5: f64 = 1.36370839120290507362e-02;
    pub(super) const QA6: f64 = 1.19844998467991074170e-02;
    pub(super) const RA0: f64 = -9.86494403484714822705e-03;
    pub(super) const RA1: f64 = -6.93858572707181764372e-01;
    pub(super) const RA2: f64 = -1.05586262253232909814e+01;
    pub(super) const RA3: f64 = -6.23753324503260060396e+01;
    pub(super) const RA4: f64 = -1.62396669462573470355e+02;
    pub(super) const RA5: f64 = -1.84605092906711035994e+02;
    pub(super) const RA6: f64 = -8.12874355063065934246e+01;
    pub(super) const RA7: f64 = -9.81432934416914548592e+00;
    pub(super) const SA1: f64 = 1.96512716674392571292e+01;
    pub(super) const SA2: f64 = 1.37657754143519042600e+02;
    pub(super) const SA3: f64 = 4.34565877475229228821e+02;
    pub(super) const SA4: f64 = 6.45387271733267880336e+02;
    pub(super) const SA5: f64 = 4.29008140027567833386e+02;
    pub(super) const SA6: f64 = 1.08635005541779435134e+02;
    pub(super) const SA7: f64 = 6.57024977031928170135e+00;
    pub(super) const SA8: f64 = -6.04244152148580987438e-02;
    pub(super) const RB0: f64 = -9.86494292470009928597e-03;
    pub(super) const RB1: f64 = -7.99283237680523006574e-01;
    pub(super) const RB2: f64 = -1.77579549177547519889e+01;
    pub(super) const RB3: f64 = -1.60636384855821916062e+02;
    pub(super) const RB4: f64 = -6.37566443368389627722e+02;
    pub(super) const RB5: f64 = -1.02509513161107724954e+03;
    pub(super) const RB6: f64 = -4.83519191608651397019e+02;
    pub(super) const SB1: f64 = 3.03380607434824582924e+01;
    pub(super) const SB2: f64 = 3.25792512996573918826e+02;
    pub(super) const SB3: f64 = 1.53672958608443695994e+03;
    pub(super) const SB4: f64 = 3.19985821950859553908e+03;
    pub(super) const SB5: f64 = 2.55305040643316442583e+03;
    pub(super) const SB6: f64 = 4.74528541206955367215e+02;
    pub(super) const SB7: f64 = -2.24409524465858183362e+01;
}
use erf_coeffs::*;

use crate::pool::BodyFn;

/// A context pointer that may cross threads: the body only reads it, and the caller keeps it
/// alive until `kiln_parallel_for` returns.
#[derive(Clone, Copy)]
struct Ctx(*const u8);

impl Ctx {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn ptr(self) -> *const u8 {
        self.0
    }
}
// SAFETY: the context is a read-only array of pointers and integers that outlives the parallel
// loop; the buffers it points to are written at disjoint elements by different iterations (the
// contract of a `parallel` loop, see `kiln_tir::ForKind::Parallel`).
unsafe impl Send for Ctx {}
// SAFETY: as above; shared reads only.
unsafe impl Sync for Ctx {}

extern "C" fn kiln_parallel_for(body: *const u8, ctx: *const u8, n: i64) -> i32 {
    if n <= 0 || body.is_null() {
        return 0;
    }
    // SAFETY: codegen passes the address of an outlined body function, which has exactly the
    // `BodyFn` signature (see `crate::parallel`).
    let body: BodyFn = unsafe { std::mem::transmute::<*const u8, BodyFn>(body) };
    if let Some(status) = crate::pool::parallel_for(body, ctx, n) {
        return status;
    }
    let chunks = n.min(4 * rayon::current_num_threads().max(1) as i64);
    let ctx = Ctx(ctx);
    let status = AtomicI32::new(0);
    let bound = |c: i64| (n as i128 * c as i128 / chunks as i128) as i64;
    (0..chunks).into_par_iter().for_each(|c| {
        // SAFETY: `begin..end` is a non-empty sub-range of `0..n`, the range the body was
        // outlined for, and `ctx` is the context its caller built (alive until we return).
        let s = unsafe { body(ctx.ptr(), bound(c), bound(c + 1)) };
        if s != 0 {
            let _ = status.compare_exchange(0, s, Ordering::Relaxed, Ordering::Relaxed);
        }
    });
    status.into_inner()
}

extern "C" fn kiln_alloc(size: i64, align: i64) -> *mut u8 {
    match std::alloc::Layout::from_size_align(size.max(1) as usize, align.max(1) as usize) {
        // SAFETY: the layout has a non-zero size.
        Ok(layout) => unsafe { std::alloc::alloc(layout) },
        Err(_) => std::ptr::null_mut(),
    }
}

extern "C" fn kiln_free(ptr: *mut u8, size: i64, align: i64) {
    if ptr.is_null() {
        return;
    }
    if let Ok(layout) =
        std::alloc::Layout::from_size_align(size.max(1) as usize, align.max(1) as usize)
    {
        // SAFETY: codegen frees each pointer `kiln_alloc` returned exactly once, with the same
        // size and alignment.
        unsafe { std::alloc::dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_is_distinct_and_addressable() {
        for (i, h) in HOOKS.iter().enumerate() {
            assert!(!(h.addr)().is_null());
            assert!(HOOKS[..i].iter().all(|o| o.name != h.name));
        }
    }

    /// The interpreter's Taylor series (kept here as the oracle of `erf64`).
    fn erf_series(x: f64) -> f64 {
        if x.is_nan() {
            return x;
        }
        if x.abs() >= 4.0 {
            return x.signum();
        }
        let x2 = x * x;
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    }

    #[test]
    fn erf_matches_the_series_within_an_f32_ulp() {
        for i in -50_000..=50_000 {
            let x = i as f64 * 1e-4;
            let (fast, series) = (erf64(x), erf_series(x));
            // The series itself cancels catastrophically near |x| = 4 (terms up to ~1e7).
            assert!(
                (fast - series).abs() <= 1e-8,
                "erf({x}): {fast} vs {series}"
            );
            let (a, b) = (fast as f32, series as f32);
            assert!(
                a.to_bits().abs_diff(b.to_bits()) <= 1,
                "erf({x}) in f32: {a} vs {b}"
            );
        }
        assert!(erf64(f64::NAN).is_nan());
        assert_eq!(erf64(f64::INFINITY), 1.0);
        assert_eq!(erf64(-7.0), -1.0);
        assert_eq!(erf64(0.0), 0.0);
    }

    #[test]
    fn alloc_free_round_trip() {
        let p = kiln_alloc(1 << 20, 64);
        assert!(!p.is_null() && (p as usize).is_multiple_of(64));
        kiln_free(p, 1 << 20, 64);
        kiln_free(std::ptr::null_mut(), 4, 4);
    }
}
