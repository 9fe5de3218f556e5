//! Shared helpers of the codegen tests: example DAGs and random traces (kiln-tir's own test
//! helpers, included by path), random arguments for any function, and the JIT-versus-interpreter
//! comparison.
#![allow(dead_code)]

#[path = "../../../tir/tests/common/mod.rs"]
pub mod dags;

use kiln_codegen::{CodegenOptions, JitModule, Threads};
use kiln_ir::{DType, Tensor, TensorData, TensorType};
use kiln_tir::{interp, PrimFunc};

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random data of `dtype` (floats in [-3, 3), integers over their whole range).
pub fn random_data(dtype: DType, n: usize, rng: &mut Rng) -> TensorData {
    match dtype {
        DType::F32 => TensorData::F32((0..n).map(|_| 3.0 * rng.unit()).collect()),
        DType::F16 => TensorData::F16((0..n).map(|_| half::f16::from_f32(rng.unit())).collect()),
        DType::I8 => TensorData::I8((0..n).map(|_| rng.next() as i8).collect()),
        DType::U8 => TensorData::U8((0..n).map(|_| rng.next() as u8).collect()),
        DType::I16 => TensorData::I16((0..n).map(|_| rng.next() as i16).collect()),
        DType::I32 => TensorData::I32((0..n).map(|_| rng.next() as i32).collect()),
        DType::I64 => TensorData::I64((0..n).map(|_| rng.next() as i64).collect()),
        DType::Bool => TensorData::Bool((0..n).map(|_| rng.next() & 1 == 1).collect()),
        DType::F64 => TensorData::F64((0..n).map(|_| 3.0 * rng.unit() as f64).collect()),
        DType::BF16 => TensorData::BF16((0..n).map(|_| half::bf16::from_f32(rng.unit())).collect()),
        DType::U16 => TensorData::U16((0..n).map(|_| rng.next() as u16).collect()),
        DType::U32 => TensorData::U32((0..n).map(|_| rng.next() as u32).collect()),
        DType::U64 => TensorData::U64((0..n).map(|_| rng.next()).collect()),
    }
}

/// Random tensors for every param of `f`.
pub fn random_args(f: &PrimFunc, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng(seed);
    f.params
        .iter()
        .map(|p| {
            let b = &f.buffers[p.index()];
            let ty = TensorType::new(b.dtype, b.shape.clone()).unwrap();
            Tensor::from_data(ty, random_data(b.dtype, b.num_elements(), &mut rng)).unwrap()
        })
        .collect()
}

/// Floats agree within `rel` relative (to the larger magnitude, at least 1) or are both NaN;
/// everything else agrees exactly.
pub fn assert_close(what: &str, got: &[Tensor], want: &[Tensor], rel: f32) {
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let floats = |d: &TensorData| match d {
            TensorData::F32(_) | TensorData::F64(_) | TensorData::F16(_) | TensorData::BF16(_) => {
                Some(d.to_f64_vec())
            }
            _ => None,
        };
        match (floats(g.data()), floats(w.data())) {
            (Some(gv), Some(wv)) if g.dtype() == w.dtype() => {
                assert_eq!(gv.len(), wv.len(), "{what}: param {k}");
                let rel = f64::from(rel);
                for (i, (a, b)) in gv.iter().zip(&wv).enumerate() {
                    let ok = (a.is_nan() && b.is_nan())
                        || a == b
                        || (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0);
                    assert!(ok, "{what}: param {k} element {i}: got {a}, want {b}");
                }
            }
            _ => assert_eq!(g.data(), w.data(), "{what}: param {k}"),
        }
    }
}

/// Option sets every comparison runs under (the last one contracts `a * b + c` into FMAs, so
/// it matches the interpreter only within rounding).
pub fn option_sets() -> Vec<CodegenOptions> {
    let base = CodegenOptions {
        verify_ir: true,
        ..CodegenOptions::default()
    };
    vec![
        CodegenOptions {
            threads: Threads::Single,
            ..base.clone()
        },
        CodegenOptions {
            threads: Threads::Pool(2),
            ..base.clone()
        },
        CodegenOptions {
            threads: Threads::Single,
            vectorize: false,
            use_fma: false,
            ..base.clone()
        },
        CodegenOptions {
            threads: Threads::Global,
            contract_fma: true,
            ..base
        },
    ]
}

/// Compiles `f`, runs it and the interpreter on the same random arguments and compares every
/// param. Returns the module for further inspection.
pub fn check_against_interp(f: &PrimFunc, opts: &CodegenOptions, seed: u64) -> JitModule {
    let jit = JitModule::compile(std::slice::from_ref(f), opts)
        .unwrap_or_else(|e| panic!("compile failed: {e}\n{f}"));
    let mut want = random_args(f, seed);
    let mut got = want.clone();
    interp::run(f, &mut want).unwrap();
    jit.kernel(&f.name).unwrap().run(&mut got).unwrap();
    assert_close(&format!("{opts:?}\n{f}"), &got, &want, 1e-5);
    jit
}
