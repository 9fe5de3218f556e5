//! Kiln's code generator: loop IR ([`kiln_tir::PrimFunc`]) to native code with Cranelift.
//!
//! Invariant: every function handed to codegen is verified first ([`kiln_tir::verify()`]); a
//! verified function either compiles or yields a [`CodegenError`] naming the function and the
//! construct, never a panic, and compiled code computes what [`kiln_tir::interp::run`] computes
//! (bit for bit, except transcendental intrinsics within an ulp, `exp` and `sigmoid` on an ISA with
//! FMA within the ulp bounds of [`kiln_tir::math`] (scalar, vector and micro-kernel code compute
//! its approximation identically), and float reductions whose order a schedule changed).
//!
//! # Kernel ABI
//!
//! Each `PrimFunc` becomes one function with the C signature
//!
//! ```c
//! int32_t kernel(uint8_t *const *params);   /* one pointer per param buffer, in params order */
//! ```
//!
//! Buffers are dense, row-major, of the declared dtype (`bool` is one byte, 0 or 1); no
//! alignment is required. A param the kernel never stores to may alias a param it stores to only
//! element for element with every element read before it is written (in-place elementwise
//! kernels): codegen loads such params as read-only memory that Cranelift may move to its use
//! or out of loops (never above a guard). The result is a status: [`STATUS_OK`], [`STATUS_DIV_BY_ZERO`] (an
//! integer division by zero, which the interpreter reports as an error too) or
//! [`STATUS_ALLOC_FAILED`] (a large local buffer could not be allocated). Parallel loops are
//! outlined into `int32_t body(const uint8_t *ctx, int64_t begin, int64_t end)` and run through
//! the runtime hook `kiln_parallel_for(body, ctx, n)` (see [`parallel`]); whole models get an
//! entry function that calls the kernels in order (see [`entry`]).
//!
//! Modules: [`isa`] (host flags; target micro-kernels per ISA), [`kernel`] (functions, statements and loops), `scalar` (expressions), [`vector`] (f32x4 / i32x4 code for
//! vectorized loops), [`promote`] (small local tiles held in registers), `tensorized` (micro-kernel calls), [`parallel`] (outlining
//! and private locals), [`runtime`] (the `extern "C"` hooks compiled code calls), [`entry`] (the
//! whole-model entry function), [`jit`] (the safe JIT API), [`aot`] (relocatable objects for a
//! target ISA, linked into shared libraries by the `kiln` crate).

pub mod aot;
mod approx;
mod byte_lanes;
pub mod entry;
pub mod isa;
mod jammed_reduce;
pub mod jit;
pub mod kernel;
mod loops;
pub mod parallel;
mod pointwise;
pub mod pool;
pub mod promote;
pub mod runtime;
mod scalar;
mod serial_reduce;
mod tensorized;
pub mod vector;
mod vector_reduce;

pub use aot::{compile_object, ObjectCode};
pub use entry::{Arg, KernelCall, ModelEntry};
pub use isa::IsaSpec;
pub use jit::{JitModule, Kernel, ModelFn};

use kiln_tir::VerifyError;

/// Status returned by a kernel that ran to completion.
pub const STATUS_OK: i32 = 0;
/// Status returned by a kernel that met an integer division (or remainder) by zero.
pub const STATUS_DIV_BY_ZERO: i32 = 1;
/// Status returned by a kernel whose heap-allocated local buffer could not be allocated.
pub const STATUS_ALLOC_FAILED: i32 = 2;

/// How parallel loops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Threads {
    /// Parallel loops run inline as serial loops (no outlining, no thread pool).
    Single,
    /// Parallel loops are outlined and split over the current rayon pool (rayon's global pool
    /// unless the caller runs inside another).
    #[default]
    Global,
    /// Parallel loops are outlined and split over a pool of this many threads owned by the
    /// [`JitModule`]: the calling thread and workers that spin briefly between loops (see
    /// [`pool`]).
    Pool(usize),
}

/// Code generation options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodegenOptions {
    /// How parallel loops run.
    pub threads: Threads,
    /// Emit 4-lane vector code for vectorizable `vectorized` loops (otherwise they are unrolled
    /// scalar code).
    pub vectorize: bool,
    /// Use the host's fused multiply-add instruction when it has one (otherwise `fma` calls
    /// `kiln_fmaf`, which is correctly rounded too).
    pub use_fma: bool,
    /// Contract `a * b + c` (f32) into one fused multiply-add where the ISA has FMA. Off by
    /// default: it rounds once instead of twice, so results differ from the interpreter's
    /// in the last bits (fast-math; reductions stay within ~1e-6 relative).
    pub contract_fma: bool,
    /// Run Cranelift's IR verifier on every generated function (slower compiles; on in tests).
    pub verify_ir: bool,
    /// Call target micro-kernels for tensorized regions where the ISA has them (otherwise the
    /// regions compile as loop nests).
    pub microkernels: bool,
    /// Model entries record a timestamp before each kernel call and at their end
    /// (`kiln_profile_mark`, read with [`runtime::take_profile_marks`]; JIT only).
    pub profile: bool,
    /// The ISA to generate code for (the JIT needs one this machine runs natively).
    pub isa: IsaSpec,
}

impl Default for CodegenOptions {
    fn default() -> Self {
        CodegenOptions {
            threads: Threads::Global,
            vectorize: true,
            use_fma: true,
            contract_fma: false,
            verify_ir: cfg!(debug_assertions),
            microkernels: true,
            profile: false,
            isa: IsaSpec::Host,
        }
    }
}

/// What codegen did, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// `vectorized` loops emitted as vector code.
    pub vector_loops: usize,
    /// Of those, loops moving 8-bit data in 16 byte lanes (see `byte_lanes`).
    pub byte_vector_loops: usize,
    /// `vectorized` loops emitted as unrolled scalar code (not provably vectorizable).
    pub scalar_vectorized_loops: usize,
    /// Parallel loops outlined into body functions.
    pub parallel_bodies: usize,
    /// Local buffers held in registers instead of memory (see [`promote`]).
    pub promoted_buffers: usize,
    /// Serial reduction loops whose element was kept in a register (see `serial_reduce`).
    pub carried_reductions: usize,
    /// Loops of serial reductions run several at once (see `jammed_reduce`).
    pub jammed_reductions: usize,
    /// Tensorized regions emitted as micro-kernel calls.
    pub microkernel_calls: usize,
    /// Distinct micro-kernels defined.
    pub microkernels: usize,
    /// Elementwise loops emitted as pointwise micro-kernel calls (see `pointwise`).
    pub pointwise_loops: usize,
    /// Vectorized loops of a select on a loop-invariant condition emitted as one loop per arm.
    pub unswitched_loops: usize,
}

/// Why code generation or a call of generated code failed.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error("function `{func}`: {source}")]
    Verify {
        func: String,
        #[source]
        source: VerifyError,
    },
    #[error("function `{func}`: unsupported {construct}")]
    Unsupported { func: String, construct: String },
    #[error("function `{func}`: cranelift rejected the generated code: {message}")]
    Cranelift { func: String, message: String },
    #[error("host ISA: {0}")]
    Isa(String),
    #[error("two functions are named `{0}`")]
    DuplicateName(String),
    #[error("model entry `{entry}`: {reason}")]
    BadEntry { entry: String, reason: String },
    #[error("`{func}`: bad arguments: {reason}")]
    BadArguments { func: String, reason: String },
    #[error("`{func}`: integer division by zero")]
    DivisionByZero { func: String },
    #[error("`{func}`: a local buffer could not be allocated")]
    AllocFailed { func: String },
    #[error("`{func}`: unknown status {status}")]
    BadStatus { func: String, status: i32 },
    #[error("thread pool: {0}")]
    ThreadPool(String),
}

impl CodegenError {
    /// The error for a non-zero status returned by generated code of `func`.
    pub fn from_status(func: &str, status: i32) -> Result<(), CodegenError> {
        let func = func.to_string();
        match status {
            STATUS_OK => Ok(()),
            STATUS_DIV_BY_ZERO => Err(CodegenError::DivisionByZero { func }),
            STATUS_ALLOC_FAILED => Err(CodegenError::AllocFailed { func }),
            status => Err(CodegenError::BadStatus { func, status }),
        }
    }
}
