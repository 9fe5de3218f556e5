//! Shared helpers of the lowering tests: random tensors, single-op lowering and comparison.
#![allow(dead_code)]

use half::f16;
use kiln_ir::{DType, Op, Tensor, TensorData, TensorType};
use kiln_operators::compute::{single_op, Builder};
use kiln_operators::schedule::{default_schedule, lower_trace, MicroShape, OpClass, SketchTarget};
use kiln_tir::{BufferId, PrimFunc, Trace};

/// A small deterministic generator (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    pub fn float(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 * 3.0 - 3.0
    }
}

/// A random tensor: floats in [-3, 3], integers in `[lo, hi]`.
pub fn rand(rng: &mut Rng, dtype: DType, shape: &[usize], lo: i64, hi: i64) -> Tensor {
    let n: usize = shape.iter().product();
    let data = match dtype {
        DType::F32 => TensorData::F32((0..n).map(|_| rng.float()).collect()),
        DType::F16 => TensorData::F16((0..n).map(|_| f16::from_f32(rng.float())).collect()),
        DType::Bool => TensorData::Bool((0..n).map(|_| rng.next().is_multiple_of(2)).collect()),
        _ => TensorData::from_f64(dtype, (0..n).map(|_| rng.range(lo, hi) as f64)),
    };
    Tensor::from_data(TensorType::new(dtype, shape.to_vec()).unwrap(), data).unwrap()
}

/// Default integer range of a dtype for random data.
pub fn int_range(d: DType) -> (i64, i64) {
    match d {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        DType::I16 => (-32768, 32767),
        DType::I32 => (-100_000, 100_000),
        DType::I64 => (-1_000_000, 1_000_000),
        _ => (0, 1),
    }
}

pub fn rand_default(rng: &mut Rng, dtype: DType, shape: &[usize]) -> Tensor {
    let (lo, hi) = int_range(dtype);
    rand(rng, dtype, shape, lo, hi)
}

/// Runs `func` (params: placeholders of `b` in DAG order, then the output).
pub fn run_func(func: &PrimFunc, b: &Builder, inputs: &[Tensor], out: BufferId) -> Tensor {
    let dag = b.dag();
    let mut args = vec![];
    let mut next_input = inputs.iter();
    for (i, t) in dag.tensors().iter().enumerate() {
        if t.stage.is_some() {
            continue;
        }
        let id = BufferId(i as u32);
        match b.tables().iter().find(|(p, _)| *p == id) {
            Some((_, v)) => args.push(v.clone()),
            None => args.push(next_input.next().expect("an input per placeholder").clone()),
        }
    }
    let ot = dag.tensor(out).unwrap();
    args.push(Tensor::zeros(
        TensorType::new(ot.dtype, ot.shape.clone()).unwrap(),
    ));
    kiln_tir::interp::run(func, &mut args).unwrap_or_else(|e| panic!("{e}\n{func}"));
    args.pop().unwrap()
}

/// Element-wise comparison: ints and bools exact, floats within `rel` relative (and `rel`
/// absolute near zero); NaN equals NaN.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel: f64) {
    assert_eq!(got.ty(), want.ty(), "{what}: types differ");
    if !got.dtype().is_float() {
        assert_eq!(got.data(), want.data(), "{what}");
        return;
    }
    let (g, w) = (got.data().to_f64_vec(), want.data().to_f64_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a.is_nan() && b.is_nan())
            || a == b
            || (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0);
        assert!(ok, "{what}: element {i}: got {a}, want {b}");
    }
}

/// Lowers `op` alone naively and with the default schedule of `class`, runs both and compares
/// with `kiln_operators::evaluate`. Returns the default trace.
pub fn check_op(op: &Op, inputs: &[Tensor], class: OpClass, rel: f64) -> Trace {
    let types: Vec<TensorType> = inputs.iter().map(|t| t.ty().clone()).collect();
    let consts: Vec<Option<Tensor>> = inputs.iter().map(|t| Some(t.clone())).collect();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let want = kiln_operators::evaluate(op, &refs).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    let (b, out) = single_op(op, &types, &consts).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    let naive = kiln_tir::lower_naive(b.dag()).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    let got = run_func(&naive, &b, inputs, out);
    assert_close(&format!("{op:?} naive"), &got, &want, rel);
    let mut first = None;
    for target in TARGETS {
        let (trace, func) = default_schedule(b.dag(), class, b.keep(), &target)
            .unwrap_or_else(|e| panic!("{op:?}: {e}"));
        let again = lower_trace(b.dag(), &trace).expect("the trace replays");
        assert_eq!(again, func);
        let got = run_func(&func, &b, inputs, out);
        assert_close(
            &format!("{op:?} default {target:?} {trace:?}"),
            &got,
            &want,
            rel,
        );
        first.get_or_insert(trace);
    }
    first.unwrap_or_default()
}

/// The targets schedules are checked for: none with micro-kernels (the first), AVX-512- (with
/// and without 8-bit integer kernels) and AVX2-shaped micro-kernels (with them: tensorized
/// tiles, run by the interpreter here).
pub const TARGETS: [SketchTarget; 4] = [
    SketchTarget { microkernels: None },
    SketchTarget {
        microkernels: Some(MicroShape {
            lanes: 16,
            registers: 32,
            int8: true,
            converting: true,
            pointwise: true,
        }),
    },
    SketchTarget {
        microkernels: Some(MicroShape {
            lanes: 16,
            registers: 32,
            int8: false,
            converting: true,
            pointwise: true,
        }),
    },
    SketchTarget {
        microkernels: Some(MicroShape {
            lanes: 8,
            registers: 16,
            int8: true,
            converting: true,
            pointwise: true,
        }),
    },
];
