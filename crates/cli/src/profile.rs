//! `kiln bench --profile`: per-kernel times of a model's runs, as a table sorted by time (share,
//! GFLOP/s and % of this machine's measured peak) and, with `--profile-json FILE`, as a Chrome
//! trace (the format onnxruntime's profiler writes; open it in `chrome://tracing` or Perfetto).
//!
//! Invariant: every number comes from the profiled runs themselves: a kernel's time is the
//! median of its call durations over the timed runs; the peak is measured on this machine
//! with an FMA loop of the target's micro-kernel ISA (no peak, and no % column, on a machine
//! without micro-kernels).

use crate::error::CliError;
use kiln::{KernelInfo, ProfiledRun};
use std::path::Path;

/// The per-kernel summary of profiled runs.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelProfile {
    pub info: KernelInfo,
    /// Median over the runs, milliseconds.
    pub median_ms: f64,
}

/// A model's profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Kernels in call order.
    pub kernels: Vec<KernelProfile>,
    /// Peak GFLOP/s of the threads used (per-core peak times threads), when measured.
    pub peak_gflops: Option<f64>,
    /// How the peak was obtained.
    pub peak_note: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The profile of `runs` of a model with `kernels`, on `threads` threads.
pub fn summarize(kernels: &[KernelInfo], runs: &[ProfiledRun], threads: usize) -> Profile {
    let kernels = kernels
        .iter()
        .enumerate()
        .map(|(k, info)| KernelProfile {
            info: info.clone(),
            median_ms: median(
                runs.iter()
                    .filter_map(|r| r.kernels.get(k))
                    .map(|(_, d)| d.as_secs_f64() * 1e3)
                    .collect(),
            ),
        })
        .collect();
    let (peak_gflops, peak_note) = match kiln::profile::measure_host_peak() {
        Some(Ok((isa, p))) => (
            Some(p * threads as f64),
            format!("{p:.1} GFLOP/s per core x {threads} thread(s) ({isa} FMA loop, measured now)"),
        ),
        Some(Err(e)) => (None, format!("not measured: {e}")),
        None => (
            None,
            "unknown (this machine has no micro-kernel ISA)".into(),
        ),
    };
    Profile {
        kernels,
        peak_gflops,
        peak_note,
    }
}

impl KernelProfile {
    fn gflops(&self) -> f64 {
        if self.median_ms > 0.0 {
            self.info.flops / (self.median_ms * 1e6)
        } else {
            0.0
        }
    }
}

/// Prints the profile as a table sorted by time.
pub fn print(p: &Profile) {
    let total: f64 = p.kernels.iter().map(|k| k.median_ms).sum();
    let flops: f64 = p.kernels.iter().map(|k| k.info.flops).sum();
    println!();
    println!(
        "profile      {} kernels, {total:.3} ms in kernels (sum of medians)",
        p.kernels.len()
    );
    println!("peak         {}", p.peak_note);
    if total > 0.0 {
        let g = flops / (total * 1e6);
        match p.peak_gflops {
            Some(peak) => println!(
                "overall      {g:.1} GFLOP/s, {:.1}% of peak",
                100.0 * g / peak
            ),
            None => println!("overall      {g:.1} GFLOP/s"),
        }
    }
    let mut order: Vec<&KernelProfile> = p.kernels.iter().collect();
    order.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
    println!(
        "{:>9} {:>6} {:>8} {:>6}  {:<11} {:<5} {:<22} kernel",
        "ms", "share", "GFLOP/s", "peak", "class", "micro", "output"
    );
    for k in order {
        let share = if total > 0.0 {
            100.0 * k.median_ms / total
        } else {
            0.0
        };
        let peak = match p.peak_gflops {
            Some(pk) if k.info.flops > 0.0 => format!("{:.1}%", 100.0 * k.gflops() / pk),
            _ => "-".into(),
        };
        println!(
            "{:>9.4} {:>5.1}% {:>8.1} {:>6}  {:<11} {:<5} {:<22} {}",
            k.median_ms,
            share,
            k.gflops(),
            peak,
            k.info.class,
            if k.info.tensorized { "yes" } else { "" },
            k.info.output,
            k.info.name
        );
    }
}

/// The profile as JSON values (one per kernel, in call order).
pub fn json(p: &Profile) -> serde_json::Value {
    serde_json::json!({
        "peak_gflops": p.peak_gflops,
        "kernels": p.kernels.iter().map(|k| serde_json::json!({
            "name": k.info.name,
            "class": k.info.class,
            "output": k.info.output,
            "tensorized": k.info.tensorized,
            "flops": k.info.flops,
            "median_ms": k.median_ms,
            "gflops": k.gflops(),
        })).collect::<Vec<_>>(),
    })
}

/// Writes the runs as a Chrome trace: one complete event per run and per kernel call,
/// timestamps in microseconds from the first run's start.
pub fn write_chrome_trace(
    path: &Path,
    kernels: &[KernelInfo],
    runs: &[ProfiledRun],
) -> Result<(), CliError> {
    let Some(t0) = runs.first().map(|r| r.start) else {
        return Ok(());
    };
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    let mut events = vec![];
    for (i, run) in runs.iter().enumerate() {
        let base = us(run.start - t0);
        let dur: f64 = run.kernels.last().map_or(0.0, |(s, d)| us(*s + *d));
        events.push(serde_json::json!({
            "name": "model_run", "cat": "Session", "ph": "X", "pid": 0, "tid": 0,
            "ts": base, "dur": dur, "args": {"run": i},
        }));
        for (info, (start, d)) in kernels.iter().zip(&run.kernels) {
            events.push(serde_json::json!({
                "name": info.name, "cat": "Node", "ph": "X", "pid": 0, "tid": 0,
                "ts": base + us(*start), "dur": us(*d),
                "args": {
                    "class": info.class, "output": info.output, "flops": info.flops,
                    "tensorized": info.tensorized, "run": i,
                },
            }));
        }
    }
    let text = serde_json::to_string(&serde_json::json!({ "traceEvents": events }))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| CliError::io(path, e))
}
