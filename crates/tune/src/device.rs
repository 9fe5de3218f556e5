//! Device descriptions: what a cost model that transfers between machines knows about the one
//! a measurement came from.
//!
//! Three sources, as the transfer issue asks: the target (its micro-kernel register file: f32
//! lanes, registers, int8 dot products), the machine's own report (cores, clock, caches: this
//! machine's `/proc` and `/sys`, or an agent's INFO), and the measured latencies of [`PROBES`],
//! a fixed set of small kernels (HELP's observation: a few measurements describe a device
//! better than its datasheet). [`DeviceDescription::features`] turns it into numbers in a fixed
//! order ([`FEATURE_NAMES`]).
//!
//! Invariant: the probes are fixed graphs compiled with the default schedules, so their
//! latencies compare devices, never schedules; every device runs the same graphs on the same
//! inputs.

use crate::TuneError;
use kiln::{Graph, Target, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The probes: name and what it stresses. Their graphs are [`probe_text`]'s.
pub const PROBES: [(&str, &str); 6] = [
    (
        "gemm_f32",
        "f32 matmul with constant weights (256x256x256, packed panels)",
    ),
    (
        "gemm_i8",
        "int8 matmul with constant weights (256x256x256 into i32)",
    ),
    ("add_l1", "elementwise add within the L1 cache (3 x 32 KiB)"),
    (
        "add_stream",
        "elementwise add streaming 12 MiB (memory bandwidth)",
    ),
    ("exp", "exp of 64Ki floats (transcendental throughput)"),
    ("reduce", "row sums of a 256x1024 matrix"),
];

/// The IR text of probe `name` (a GEMM's constant weights are a fixed pattern of small
/// values, as a real layer's packed weights are constants).
pub fn probe_text(name: &str) -> Option<String> {
    let weights = |to: fn(usize) -> String| -> String {
        (0..256 * 256).map(to).collect::<Vec<_>>().join(",")
    };
    let gemm = |dtype: &str, out: &str, w: String| {
        format!(
            r#"graph {{
  const @0: {dtype}[1,256,256] = [{w}]
  input %0 "a": {dtype}[1,256,256]
  %1: {dtype}[1,256,256] = const(@0)
  %2: {out}[1,256,256] = matmul(%0, %1) {{"a_zp":0,"b_zp":0}}
  output %2
}}"#
        )
    };
    let elementwise = |n: usize| {
        format!(
            r#"graph {{
  input %0 "a": f32[1,{n}]
  input %1 "b": f32[1,{n}]
  %2: f32[1,{n}] = add(%0, %1)
  output %2
}}"#
        )
    };
    Some(match name {
        "gemm_f32" => gemm(
            "f32",
            "f32",
            weights(|i| format!("{}", (i % 17) as f32 / 16.0 - 0.5)),
        ),
        "gemm_i8" => gemm("i8", "i32", weights(|i| format!("{}", (i % 15) as i32 - 7))),
        "add_l1" => elementwise(8192),
        "add_stream" => elementwise(1 << 20),
        "exp" => r#"graph {
  input %0 "a": f32[1,65536]
  %1: f32[1,65536] = exp(%0)
  output %1
}"#
        .to_string(),
        "reduce" => r#"graph {
  input %0 "a": f32[256,1024]
  %1: f32[256,1] = reduce_sum(%0) {"axis":1}
  output %1
}"#
        .to_string(),
        _ => return None,
    })
}

/// The probe graphs, parsed.
pub fn probe_graphs() -> Result<Vec<(&'static str, Graph)>, TuneError> {
    PROBES
        .iter()
        .map(|&(name, _)| {
            let text =
                probe_text(name).ok_or_else(|| TuneError::Job(format!("no probe {name}")))?;
            kiln_ir::parse_graph(&text)
                .map(|g| (name, g))
                .map_err(|e| TuneError::Job(format!("probe {name}: {e}")))
        })
        .collect()
}

/// One probe's latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    /// Milliseconds per call (the median of the repeats).
    pub ms: f64,
}

/// One level of the data cache hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLevel {
    pub level: u32,
    pub bytes: u64,
}

/// What the cost model knows about a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceDescription {
    /// The target candidates are compiled for.
    pub target: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    pub cpu_model: String,
    pub cores: u32,
    pub clock_mhz: u32,
    /// Data (and unified) caches, by level.
    pub caches: Vec<CacheLevel>,
    /// The target's micro-kernel register file: f32 lanes per register and registers (0 when
    /// it has no micro-kernels), and whether it has int8 dot-product kernels.
    pub lanes: u32,
    pub registers: u32,
    pub int8_kernels: bool,
    /// Threads the probes ran with.
    pub threads: usize,
    pub probes: Vec<Probe>,
}

/// The names of [`DeviceDescription::features`], in order.
pub const FEATURE_NAMES: [&str; 15] = [
    "lanes",
    "registers",
    "int8_kernels",
    "log2_cores",
    "log2_threads",
    "clock_ghz",
    "log2_l1_bytes",
    "log2_l2_bytes",
    "log2_l3_bytes",
    "log_ms_gemm_f32",
    "log_ms_gemm_i8",
    "log_ms_add_l1",
    "log_ms_add_stream",
    "log_ms_exp",
    "log_ms_reduce",
];

impl DeviceDescription {
    /// The description of a device of `target` with what the machine reported, before probing.
    fn new(target: &Target, report: MachineReport, threads: usize) -> Self {
        let micro = target.sketch_target().microkernels;
        DeviceDescription {
            target: target.name().to_string(),
            arch: report.arch,
            cpu_model: report.cpu_model,
            cores: report.cores,
            clock_mhz: report.clock_mhz,
            caches: report.caches,
            lanes: micro.map_or(0, |m| m.lanes as u32),
            registers: micro.map_or(0, |m| m.registers as u32),
            int8_kernels: micro.is_some_and(|m| m.int8),
            threads,
            probes: vec![],
        }
    }

    /// This machine as a device of `target` (which must run here), probes measured on
    /// `threads` threads.
    pub fn of_host(target: &Target, threads: usize) -> Result<Self, TuneError> {
        let mut d = DeviceDescription::new(target, MachineReport::of_host(), threads);
        d.probes = probe_locally(target, threads)?;
        Ok(d)
    }

    /// A remote device of `target` as its agent described itself (probes to be added).
    pub fn of_agent(target: &Target, info: &kiln_rpc::DeviceInfo, threads: usize) -> Self {
        let mut caches: Vec<CacheLevel> = info
            .caches
            .iter()
            .filter(|c| c.kind != "Instruction")
            .map(|c| CacheLevel {
                level: c.level,
                bytes: c.bytes,
            })
            .collect();
        caches.sort_by_key(|c| c.level);
        let report = MachineReport {
            arch: info.arch.clone(),
            cpu_model: info.cpu_model.clone(),
            cores: info.cores,
            clock_mhz: info.clock_mhz,
            caches,
        };
        DeviceDescription::new(target, report, threads)
    }

    /// The bytes of data cache at `level` (0 when absent).
    pub fn cache_bytes(&self, level: u32) -> u64 {
        self.caches
            .iter()
            .find(|c| c.level == level)
            .map_or(0, |c| c.bytes)
    }

    /// The description as numbers, in the order of [`FEATURE_NAMES`] (a missing probe or
    /// cache is NaN, which XGBoost treats as missing).
    pub fn features(&self) -> Vec<f32> {
        let log2 = |v: u64| {
            if v == 0 {
                f32::NAN
            } else {
                (v as f64).log2() as f32
            }
        };
        let mut f = vec![
            self.lanes as f32,
            self.registers as f32,
            f32::from(u8::from(self.int8_kernels)),
            log2(u64::from(self.cores)),
            log2(self.threads as u64),
            if self.clock_mhz == 0 {
                f32::NAN
            } else {
                self.clock_mhz as f32 / 1000.0
            },
            log2(self.cache_bytes(1)),
            log2(self.cache_bytes(2)),
            log2(self.cache_bytes(3)),
        ];
        for (name, _) in PROBES {
            let ms = self.probes.iter().find(|p| p.name == name).map(|p| p.ms);
            f.push(ms.filter(|&m| m > 0.0).map_or(f32::NAN, |m| m.ln() as f32));
        }
        f
    }
}

/// The largest data cache of this machine (the last level), when Linux reports it.
pub fn host_last_level_cache_bytes() -> Option<u64> {
    MachineReport::of_host()
        .caches
        .iter()
        .map(|c| c.bytes)
        .max()
}

/// What a machine says about itself.
#[derive(Clone, Debug, Default)]
struct MachineReport {
    arch: String,
    cpu_model: String,
    cores: u32,
    clock_mhz: u32,
    caches: Vec<CacheLevel>,
}

impl MachineReport {
    /// This machine, from `/proc/cpuinfo` and `/sys/devices/system/cpu` (fields it cannot
    /// read stay empty or 0).
    fn of_host() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |key: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        let cpu_model = field("model name")
            .or_else(|| field("Model"))
            .unwrap_or_default();
        let sys = std::path::Path::new("/sys/devices/system/cpu/cpu0");
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
        let clock_mhz = read(sys.join("cpufreq/cpuinfo_max_freq"))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|khz| (khz / 1000) as u32)
            .or_else(|| {
                field("cpu MHz")
                    .and_then(|m| m.parse::<f64>().ok())
                    .map(|m| m as u32)
            })
            .unwrap_or(0);
        let mut caches = vec![];
        for i in 0..8 {
            let dir = sys.join(format!("cache/index{i}"));
            let (Some(level), Some(kind), Some(size)) = (
                read(dir.join("level")),
                read(dir.join("type")),
                read(dir.join("size")),
            ) else {
                continue;
            };
            if kind.trim() == "Instruction" {
                continue;
            }
            let size = size.trim();
            let bytes = match size.strip_suffix('K') {
                Some(k) => k.parse::<u64>().map(|k| k << 10),
                None => match size.strip_suffix('M') {
                    Some(m) => m.parse::<u64>().map(|m| m << 20),
                    None => size.parse::<u64>(),
                },
            };
            if let (Ok(level), Ok(bytes)) = (level.trim().parse(), bytes) {
                caches.push(CacheLevel { level, bytes });
            }
        }
        caches.sort_by_key(|c| c.level);
        MachineReport {
            arch: std::env::consts::ARCH.to_string(),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            clock_mhz,
            caches,
        }
    }
}

/// Deterministic input values of `ty` (small integers for integer types).
fn probe_input(ty: &kiln::TensorType) -> Result<Tensor, TuneError> {
    let n = ty.num_elements();
    let bytes: Vec<u8> = match ty.dtype {
        kiln::DType::F32 => (0..n)
            .flat_map(|i| ((((i * 7919) % 201) as f32 - 100.0) / 128.0).to_le_bytes())
            .collect(),
        kiln::DType::I8 => (0..n).map(|i| ((i * 31) % 15) as u8).collect(),
        other => vec![0; n * other.size_bytes()],
    };
    kiln::tensor_from_bytes(ty, &bytes)
        .ok_or_else(|| TuneError::Job(format!("no probe input of type {ty}")))
}

/// Calls `run` until a timing of `number` calls lasts 20 ms, then takes the median of 5 such
/// timings, in milliseconds per call.
pub(crate) fn time_calls(mut run: impl FnMut() -> Result<(), TuneError>) -> Result<f64, TuneError> {
    run()?;
    let mut number = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..number {
            run()?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if ms >= 20.0 || number >= 1 << 20 {
            break;
        }
        number = (number * 2).max((number as f64 * 20.0 / ms.max(1e-3)) as usize);
    }
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..number {
                run()?;
            }
            Ok(t.elapsed().as_secs_f64() * 1e3 / number as f64)
        })
        .collect::<Result<_, TuneError>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The probes compiled with the JIT for `target` and timed on this machine.
pub fn probe_locally(target: &Target, threads: usize) -> Result<Vec<Probe>, TuneError> {
    let options = kiln::CompileOptions {
        threads: threads.max(1),
        ..kiln::CompileOptions::default()
    };
    let compiler = kiln::Compiler::new(target.clone()).with_options(options);
    let mut probes = vec![];
    for (name, graph) in probe_graphs()? {
        let model = compiler
            .compile(&graph)
            .map_err(|e| TuneError::Job(format!("probe {name}: {e}")))?;
        let inputs: Vec<Tensor> = graph
            .inputs()
            .iter()
            .map(|&v| probe_input(graph.ty(v)))
            .collect::<Result<_, _>>()?;
        let ms = time_calls(|| {
            model
                .run(&inputs)
                .map(|_| ())
                .map_err(|e| TuneError::Job(format!("probe {name}: {e}")))
        })?;
        probes.push(Probe {
            name: name.to_string(),
            ms,
        });
    }
    Ok(probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_parses_compiles_and_computes_what_the_reference_does() {
        let graphs = probe_graphs().unwrap();
        assert_eq!(graphs.len(), PROBES.len());
        for (name, graph) in graphs {
            let inputs: Vec<Tensor> = graph
                .inputs()
                .iter()
                .map(|&v| probe_input(graph.ty(v)).unwrap())
                .collect();
            let model = kiln::Compiler::new(Target::host()).compile(&graph).unwrap();
            let got = model.run(&inputs).unwrap();
            let want = kiln_reference::run(&graph, &inputs).unwrap();
            for (g, w) in got.iter().zip(&want) {
                let (g, w) = (g.data().to_f64_vec(), w.data().to_f64_vec());
                let worst = g
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                    .fold(0.0, f64::max);
                assert!(worst < 1e-3, "probe {name}: off by {worst}");
            }
        }
    }

    #[test]
    fn the_host_describes_itself_with_positive_probe_latencies() {
        let d = DeviceDescription::of_host(&Target::host(), 1).unwrap();
        assert!(d.cores >= 1);
        assert_eq!(d.arch, std::env::consts::ARCH);
        assert_eq!(d.probes.len(), PROBES.len());
        assert!(
            d.probes.iter().all(|p| p.ms > 0.0 && p.ms.is_finite()),
            "{d:?}"
        );
        let f = d.features();
        assert_eq!(f.len(), FEATURE_NAMES.len());
        // The probes' features are all present on the machine that measured them.
        assert!(f[8..].iter().all(|v| v.is_finite()), "{f:?}");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DeviceDescription>(&json).unwrap(), d);
    }

    #[test]
    fn an_agents_report_keeps_data_caches_in_level_order() {
        let info: kiln_rpc::DeviceInfo = serde_json::from_value(serde_json::json!({
            "agent_version": "0.1.0", "protocol_version": 1, "arch": "aarch64",
            "kernel": "6.1", "cpu_model": "Cortex-A72", "cores": 4,
            "memory_bytes": 4294967296u64, "clock_mhz": 1800, "max_upload_bytes": 1,
            "caches": [
                {"level": 2, "type": "Unified", "bytes": 1048576},
                {"level": 1, "type": "Instruction", "bytes": 49152},
                {"level": 1, "type": "Data", "bytes": 32768}
            ],
            "features": ["asimd"]
        }))
        .unwrap();
        let target = Target::named("aarch64-linux-gnu").unwrap();
        let d = DeviceDescription::of_agent(&target, &info, 1);
        assert_eq!(d.cache_bytes(1), 32768);
        assert_eq!(d.cache_bytes(2), 1 << 20);
        assert_eq!(d.cache_bytes(3), 0);
        let f = d.features();
        let at = |name: &str| f[FEATURE_NAMES.iter().position(|n| *n == name).unwrap()];
        assert_eq!(at("log2_cores"), 2.0, "log2 of 4 cores");
        assert_eq!(at("log2_threads"), 0.0, "log2 of 1 thread");
        assert!(
            at("log2_l3_bytes").is_nan() && at("log_ms_gemm_f32").is_nan(),
            "no L3, no probes yet: missing"
        );
        assert_eq!(d.lanes, 4, "NEON: four f32 lanes");
    }
}
