//! Per-kernel profiles of compiled models: what each kernel is, and how long each call took in
//! a run of a model compiled with [`crate::CompileOptions::profile`].
//!
//! Invariant: a [`ProfiledRun`] has one `(start, duration)` per kernel call of the model entry,
//! in call order, measured between the timestamps the entry records before each call and at its
//! end (so the durations of a run add up to the time between its first and last mark); runs
//! are profiled one at a time in a process (the marks are process-wide).

use crate::compile::{CompiledModel, RunError};
use kiln_ir::{Tensor, TensorData, TensorType};
use std::time::{Duration, Instant};

/// A kernel of a compiled model, as profiles report it.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelInfo {
    /// The kernel's symbol.
    pub name: String,
    /// Its op class (`Conv`, `Depthwise`, `MatMul`, ...).
    pub class: String,
    /// Arithmetic per call ([`kiln_ir::Op::flops`] of its ops).
    pub flops: f64,
    /// The type of the value it writes.
    pub output: String,
    /// Whether its register tiles run as target micro-kernels.
    pub tensorized: bool,
    /// The workload key its schedule is tuned under.
    pub workload: String,
}

/// One profiled run.
#[derive(Clone, Debug)]
pub struct ProfiledRun {
    pub outputs: Vec<Tensor>,
    /// When the entry started its first kernel.
    pub start: Instant,
    /// Per kernel call, in order: the offset of its start from [`ProfiledRun::start`] and its
    /// duration.
    pub kernels: Vec<(Duration, Duration)>,
}

impl CompiledModel {
    /// Runs the model once, recording the time of every kernel call. The model must have
    /// been compiled with [`crate::CompileOptions::profile`].
    pub fn run_profiled(&self, inputs: &[Tensor]) -> Result<ProfiledRun, RunError> {
        if !self.profiled() {
            return Err(RunError::NotProfiled);
        }
        drop(kiln_codegen::runtime::take_profile_marks());
        let outputs = self.run(inputs)?;
        let mut marks = kiln_codegen::runtime::take_profile_marks();
        marks.sort_by_key(|(i, _)| *i);
        let calls = self.kernels().len();
        if marks.len() != calls + 1 || marks.iter().enumerate().any(|(k, (i, _))| *i as usize != k)
        {
            return Err(RunError::Profile(format!(
                "expected {} marks in order, got {}",
                calls + 1,
                marks.len()
            )));
        }
        let start = marks[0].1;
        let kernels = marks
            .windows(2)
            .map(|w| (w[0].1 - start, w[1].1 - w[0].1))
            .collect();
        Ok(ProfiledRun {
            outputs,
            start,
            kernels,
        })
    }
}

/// Deterministic inputs for timing a model without data: floats in [-1, 1) from a fixed
/// xorshift sequence, integers 0.
pub fn synthetic_input(ty: &TensorType) -> Tensor {
    let n = ty.num_elements();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let data = if ty.dtype.is_float() {
        TensorData::from_f64(ty.dtype, (0..n).map(|_| next()))
    } else {
        TensorData::zeros(ty.dtype, n)
    };
    Tensor::from_data(ty.clone(), data).expect("sized from its type")
}

/// The f32 peak of one core of this machine, measured with an FMA loop in the vectors of its
/// micro-kernel ISA (about a millisecond): `(ISA name, GFLOP/s)`. `None` on a machine without
/// micro-kernels.
pub fn measure_host_peak() -> Option<Result<(&'static str, f64), String>> {
    let isa = crate::Target::host().microkernels()?;
    Some(
        kiln_codegen::jit::measure_peak_gflops(isa)
            .map(|p| (isa.name(), p))
            .map_err(|e| e.to_string()),
    )
}
