//! Kiln's runtime: what a compiled model needs at run time beyond its machine code.
//!
//! Invariant: memory is planned once, at compile time ([`memory::plan`]); running a model
//! allocates nothing but its one arena.
//!
//! `c/` holds the runtime of AOT-compiled libraries, in C because it runs on the device without
//! Rust's std: `kiln_model.h` (the C ABI every library exports, nothing else) and
//! `kiln_model_rt.c` (contexts, a pthread pool for parallel loops, the hooks generated code
//! calls). The `kiln` crate embeds both and links them into each library.

pub mod memory;

pub use memory::{plan, BufferRequest, MemoryPlan, PlanError, ALIGN};
