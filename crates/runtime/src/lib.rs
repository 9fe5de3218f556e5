//! Kiln's runtime: what a compiled model needs at run time beyond its machine code.
//!
//! Invariant: memory is planned once, at compile time ([`memory::plan`]); running a model
//! allocates nothing but its one arena.

pub mod memory;

pub use memory::{plan, BufferRequest, MemoryPlan, PlanError, ALIGN};
