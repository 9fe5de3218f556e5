//! Kiln's schedule library.
//!
//! * [`sketch`]: the schedule structure of each op class (multi-level tiling of the output with
//!   the anchor reduction computed inside the tile, inlining, vectorized inner loops, parallel
//!   outer loops, unrolled register tiles), filled in by [`Knobs`]: `Knobs::default()` gives the
//!   hand-written default schedule, other knobs the candidates the auto-tuner measures.
//! * [`space`]: the knobs that matter for a given compute DAG, their legal values, random
//!   sampling and mutation.
//! * [`micro`]: on targets with micro-kernels ([`SketchTarget`]), the register tiles of
//!   convolutions and matmuls as tensorized regions sized for the target's registers.
//! * [`tuned`]: what ships in `schedules/tuned/` (the pretrained latency model).
//!
//! Invariant: every trace produced here replays legally on its DAG and lowers
//! ([`sketch::schedule_with`] falls back to simpler traces when lowering rejects one), so any
//! point of the space is a correct schedule; only its speed differs.

pub mod micro;
pub mod sketch;
pub mod space;
pub mod tuned;

pub use micro::{MicroShape, SketchTarget};
pub use sketch::{
    default_schedule, default_trace, lower_trace, schedule_with, Knobs, OpClass, NHWC_STAGE,
};
pub use space::{SearchSpace, SplitMix};
