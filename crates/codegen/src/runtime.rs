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
use kiln_tir::erf64;
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

    #[test]
    fn alloc_free_round_trip() {
        let p = kiln_alloc(1 << 20, 64);
        assert!(!p.is_null() && (p as usize).is_multiple_of(64));
        kiln_free(p, 1 << 20, 64);
        kiln_free(std::ptr::null_mut(), 4, 4);
    }
}
