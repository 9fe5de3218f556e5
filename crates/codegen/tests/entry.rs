//! The whole-model entry function: two chained kernels through the arena, with an input, a
//! constant and an output; layout validation and argument checks.

use kiln_codegen::{Arg, CodegenError, CodegenOptions, JitModule, KernelCall, ModelEntry};
use kiln_ir::DType;
use kiln_tir::{Expr, ForKind, PrimFunc, Stmt};

const N: usize = 10;

/// `dst[i] = src[i] + 1`.
fn add_one() -> PrimFunc {
    let mut f = PrimFunc::new("add_one");
    let src = f.add_param("src", DType::F32, vec![N]);
    let dst = f.add_param("dst", DType::F32, vec![N]);
    let i = f.new_var("i");
    f.body = Stmt::for_(
        i,
        N,
        ForKind::Serial,
        Stmt::store(
            dst,
            vec![Expr::var(i)],
            Expr::load(src, vec![Expr::var(i)]) + Expr::f32(1.0),
        ),
    );
    f
}

/// `out[i] = a[i] * w[i]`.
fn scale() -> PrimFunc {
    let mut f = PrimFunc::new("scale");
    let a = f.add_param("a", DType::F32, vec![N]);
    let w = f.add_param("w", DType::F32, vec![N]);
    let out = f.add_param("out", DType::F32, vec![N]);
    let i = f.new_var("i");
    f.body = Stmt::for_(
        i,
        N,
        ForKind::Parallel,
        Stmt::store(
            out,
            vec![Expr::var(i)],
            Expr::load(a, vec![Expr::var(i)]) * Expr::load(w, vec![Expr::var(i)]),
        ),
    );
    f
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn model(calls: Vec<KernelCall>) -> ModelEntry {
    ModelEntry {
        name: "model_run".into(),
        calls,
    }
}

fn chained() -> ModelEntry {
    model(vec![
        KernelCall {
            kernel: "add_one".into(),
            args: vec![Arg::Input(0), Arg::Arena { offset: 64 }],
        },
        KernelCall {
            kernel: "scale".into(),
            args: vec![Arg::Arena { offset: 64 }, Arg::Constant(0), Arg::Output(0)],
        },
    ])
}

#[test]
fn two_chained_kernels_through_the_arena() {
    let funcs = [add_one(), scale()];
    let jit =
        JitModule::compile_with_entries(&funcs, &[chained()], &CodegenOptions::default()).unwrap();
    let entry = jit.entry("model_run").unwrap();
    assert_eq!(entry.layout().arena, 64 + 4 * N);
    let x: Vec<f32> = (0..N).map(|i| i as f32 - 3.0).collect();
    let w: Vec<f32> = (0..N).map(|i| 0.5 * i as f32).collect();
    let mut out = vec![0u8; 4 * N];
    let mut arena = vec![0u8; 64 + 4 * N];
    entry
        .run(&[&bytes(&x)], &mut [&mut out], &mut arena, &[&bytes(&w)])
        .unwrap();
    let want: Vec<f32> = x.iter().zip(&w).map(|(x, w)| (x + 1.0) * w).collect();
    assert_eq!(floats(&out), want);
    assert_eq!(
        floats(&arena[64..]),
        x.iter().map(|x| x + 1.0).collect::<Vec<_>>()
    );
    // The kernels stay callable on their own.
    assert!(jit.kernel("add_one").is_some() && jit.kernel("scale").is_some());

    // Too small an arena or a missing constant is refused before the call.
    let mut small = vec![0u8; 64];
    let err = entry
        .run(&[&bytes(&x)], &mut [&mut out], &mut small, &[&bytes(&w)])
        .unwrap_err();
    assert!(err.to_string().contains("arena"), "{err}");
    assert!(entry
        .run(&[&bytes(&x)], &mut [&mut out], &mut arena, &[])
        .is_err());
}

#[test]
fn entries_are_validated_when_compiled() {
    let funcs = [add_one(), scale()];
    let compile = |e: ModelEntry| {
        JitModule::compile_with_entries(&funcs, &[e], &CodegenOptions::default()).unwrap_err()
    };
    // A kernel writing an input.
    let err = compile(model(vec![KernelCall {
        kernel: "add_one".into(),
        args: vec![Arg::Arena { offset: 0 }, Arg::Input(0)],
    }]));
    assert!(matches!(err, CodegenError::BadEntry { .. }), "{err}");
    // Wrong argument count, unknown kernel, overlapping arena ranges.
    for calls in [
        vec![KernelCall {
            kernel: "add_one".into(),
            args: vec![Arg::Input(0)],
        }],
        vec![KernelCall {
            kernel: "nope".into(),
            args: vec![],
        }],
        vec![KernelCall {
            kernel: "add_one".into(),
            args: vec![Arg::Arena { offset: 0 }, Arg::Arena { offset: 8 }],
        }],
    ] {
        let err = compile(model(calls));
        assert!(matches!(err, CodegenError::BadEntry { .. }), "{err}");
    }
    // Identical ranges (an elementwise kernel in place over its input) are accepted.
    let in_place = model(vec![KernelCall {
        kernel: "add_one".into(),
        args: vec![Arg::Arena { offset: 0 }, Arg::Arena { offset: 0 }],
    }]);
    JitModule::compile_with_entries(&funcs, &[in_place], &CodegenOptions::default()).unwrap();
    // An entry named like a kernel.
    let mut e = chained();
    e.name = "scale".into();
    assert!(matches!(compile(e), CodegenError::DuplicateName(_)));
}
