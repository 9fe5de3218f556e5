//! Pointwise micro-kernels: random kernels (lengths with ragged tails, contiguous and broadcast
//! inputs, up to eight, expressions with `exp`, `erf`, `sigmoid`, clamps, NaN-propagating
//! `min`/`max` and division) against `PointwiseKernel::reference` bit for bit, NaN and
//! infinities among the inputs, nothing written past the kernel's length; and elementwise
//! loops compiled with and without them, equal bit for bit (and to the interpreter within its
//! exact `exp`'s distance).

mod common;

use common::*;
use kiln_codegen::isa::microkernel::{
    disassemble, generate_pointwise, MicroCode, MicroIsa, PointwiseKernel,
};
use kiln_codegen::jit::run_pointwise;
use kiln_codegen::{CodegenOptions, JitModule, Threads};
use kiln_ir::{DType, Tensor};
use kiln_tir::{interp, BinOp, CmpOp, Epilogue, Expr, ForKind, Intrinsic, PrimFunc, Stmt};
use proptest::prelude::*;

const X86: [MicroIsa; 2] = [MicroIsa::X86Avx2, MicroIsa::X86Avx512];

fn expression(choice: u8, inputs: usize) -> Epilogue {
    use Epilogue as E;
    let b = Box::new;
    let x = E::Input(0);
    let y = E::Input(inputs.saturating_sub(1));
    // Every input past the first two added in, so each is read.
    let sum = (2..inputs).fold(x.clone(), |s, i| {
        E::Binary(BinOp::Add, b(s), b(E::Input(i)))
    });
    match choice % 7 {
        // A softmax's numerator.
        0 => E::Call(Intrinsic::Exp, vec![E::Binary(BinOp::Sub, b(sum), b(y))]),
        // GELU.
        1 => E::Binary(
            BinOp::Mul,
            b(E::Binary(BinOp::Mul, b(sum.clone()), b(E::Const(0.5)))),
            b(E::Binary(
                BinOp::Add,
                b(E::Const(1.0)),
                b(E::Call(
                    Intrinsic::Erf,
                    vec![E::Binary(BinOp::Mul, b(sum), b(E::Const(0.707_106_77)))],
                )),
            )),
        ),
        2 => E::Binary(
            BinOp::Mul,
            b(sum.clone()),
            b(E::Call(Intrinsic::Sigmoid, vec![y])),
        ),
        // A clamp as the importer writes it.
        3 => E::Select {
            op: CmpOp::Lt,
            a: b(sum.clone()),
            b: b(E::Const(0.0)),
            then: b(E::Const(0.0)),
            otherwise: b(E::Select {
                op: CmpOp::Gt,
                a: b(sum.clone()),
                b: b(E::Const(6.0)),
                then: b(E::Const(6.0)),
                otherwise: b(sum),
            }),
        },
        4 => E::Binary(BinOp::Div, b(sum), b(y)),
        5 => E::Binary(
            BinOp::Max,
            b(E::Binary(BinOp::Min, b(sum), b(y))),
            b(E::Const(-1.5)),
        ),
        _ => E::Select {
            op: CmpOp::Ne,
            a: b(sum.clone()),
            b: b(y),
            then: b(E::Call(Intrinsic::Abs, vec![sum])),
            otherwise: b(E::Const(7.0)),
        },
    }
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            match i % 89 {
                13 => f32::NAN,
                29 => f32::INFINITY,
                47 => f32::NEG_INFINITY,
                _ => ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 24.0,
            }
        })
        .collect()
}

fn same(a: &[f32], b: &[f32]) -> Result<(), String> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()) {
            return Err(format!("element {i}: {x} vs reference {y}"));
        }
    }
    Ok(())
}

fn check(isa: MicroIsa, k: &PointwiseKernel, seed: u64) -> Result<(), TestCaseError> {
    let code = generate_pointwise(isa, k).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let MicroCode::Machine(bytes) = &code else {
        return Err(TestCaseError::fail("x86-64 kernels are machine code"));
    };
    let text = disassemble(bytes);
    prop_assert!(text.trim_end().ends_with("ret"), "{text}");
    for r in ["rbx", "rbp", "r12", "r13", "r14", "r15", "rsp"] {
        prop_assert!(!text.contains(r), "{} used:\n{}", r, text);
    }
    if !isa.runs_here() {
        return Ok(());
    }
    let inputs: Vec<Vec<f32>> = k
        .contiguous
        .iter()
        .enumerate()
        .map(|(i, &c)| values(if c { k.cols } else { 1 }, seed + 31 * i as u64))
        .collect();
    let slices: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    // Sentinels past the end show a write outside the kernel's columns.
    let mut want = vec![f32::from_bits(0x7fc0_1234); k.cols + 40];
    k.reference(&mut want, &slices)
        .ok_or_else(|| TestCaseError::fail("reference out of range"))?;
    let mut got = vec![f32::from_bits(0x7fc0_1234); k.cols + 40];
    run_pointwise(isa, k, &mut got, &slices).map_err(|e| TestCaseError::fail(e.to_string()))?;
    same(&got, &want).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}\n{k:?}")))?;
    let untouched = got[k.cols..].iter().all(|v| v.to_bits() == 0x7fc0_1234);
    prop_assert!(untouched, "{:?} wrote past {} columns", isa, k.cols);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn pointwise_kernels_compute_their_reference(
        cols in prop_oneof![1usize..=40, 41usize..=300],
        flags in prop::collection::vec(any::<bool>(), 1..=8),
        choice in 0u8..7,
        seed in any::<u64>(),
    ) {
        let k = PointwiseKernel {
            cols,
            epilogue: expression(choice, flags.len()),
            input_types: vec![DType::F32; flags.len()],
            contiguous: flags,
            out: DType::F32,
        };
        for isa in X86 {
            check(isa, &k, seed)?;
        }
    }
}

#[test]
fn families_this_machine_cannot_run_are_only_encoded() {
    for isa in X86 {
        if !isa.runs_here() {
            println!(
                "notice: this machine does not run {} micro-kernels; the pointwise tests only \
                 encode and disassemble them",
                isa.name()
            );
        }
    }
}

#[test]
fn neon_has_no_pointwise_kernels() {
    let k = PointwiseKernel {
        cols: 16,
        contiguous: vec![true],
        epilogue: Epilogue::Input(0),
        input_types: vec![DType::F32],
        out: DType::F32,
    };
    assert!(generate_pointwise(MicroIsa::Aarch64Neon, &k).is_err());
}

/// `out[r, i] = exp(x[r, i] - m[r, 0])` over `rows x n`, the inner loop vectorized (a
/// softmax's numerator, as the elementwise sketch leaves it).
fn softmax_numerator(rows: usize, n: usize) -> PrimFunc {
    let mut f = PrimFunc::new("ew");
    let x = f.add_param("x", DType::F32, vec![rows, n]);
    let m = f.add_param("m", DType::F32, vec![rows, 1]);
    let o = f.add_param("out", DType::F32, vec![rows, n]);
    let (r, i) = (f.new_var("r"), f.new_var("i"));
    let value = Expr::call(
        Intrinsic::Exp,
        vec![
            Expr::load(x, vec![Expr::var(r), Expr::var(i)])
                - Expr::load(m, vec![Expr::var(r), Expr::int(0)]),
        ],
    );
    f.body = Stmt::for_(
        r,
        rows,
        ForKind::Serial,
        Stmt::for_(
            i,
            n,
            ForKind::Vectorized,
            Stmt::store(o, vec![Expr::var(r), Expr::var(i)], value),
        ),
    );
    f
}

fn run(f: &PrimFunc, args: &[Tensor], micro: bool) -> (Vec<Tensor>, usize) {
    let opts = CodegenOptions {
        threads: Threads::Single,
        microkernels: micro,
        verify_ir: true,
        ..CodegenOptions::default()
    };
    run_with(f, args, &opts)
}

/// `f` compiled with `opts` and run on `args`: the results and the loops run as pointwise calls.
fn run_with(f: &PrimFunc, args: &[Tensor], opts: &CodegenOptions) -> (Vec<Tensor>, usize) {
    let jit = JitModule::compile(std::slice::from_ref(f), opts).unwrap();
    let mut got = args.to_vec();
    jit.kernel(&f.name).unwrap().run(&mut got).unwrap();
    (got, jit.stats().pointwise_loops)
}

/// This machine's pointwise micro-kernel family, if it runs one (a notice when not).
fn host_pointwise() -> Option<MicroIsa> {
    let host = kiln_codegen::isa::host_isa(false, false).unwrap();
    let micro = kiln_codegen::isa::HostInfo::of(&*host)
        .micro
        .filter(|i| i.runs_here());
    if micro.is_none() {
        println!("notice: this machine has no pointwise micro-kernels; only the vector path ran");
    }
    micro
}

#[test]
fn elementwise_loops_give_the_vector_codes_bits() {
    let micro = host_pointwise();
    // One vector and a tail, a row of attention scores, and lengths past two chunks (a loop of
    // whole-chunk calls and a remainder kernel).
    for (rows, n) in [(3, 9), (4, 197), (2, 600), (1, 1024)] {
        let f = softmax_numerator(rows, n);
        let mut args = random_args(&f, n as u64);
        let x: Vec<f32> = args[0].as_slice::<f32>().unwrap().to_vec();
        let x = x
            .iter()
            .enumerate()
            .map(|(j, v)| match j % 53 {
                7 => f32::NAN,
                11 => f32::INFINITY,
                19 => -100.0,
                _ => v * 8.0,
            })
            .collect();
        args[0] = Tensor::from_data(args[0].ty().clone(), kiln_ir::TensorData::F32(x)).unwrap();
        let (vector, none) = run(&f, &args, false);
        let (pointwise, calls) = run(&f, &args, true);
        assert_eq!(none, 0);
        if micro.is_some() {
            assert_eq!(calls, 1, "{f}");
        }
        assert_close(&format!("{rows}x{n}\n{f}"), &pointwise, &vector, 0.0);
        let mut want = args.clone();
        interp::run(&f, &mut want).unwrap();
        assert_close(&format!("{rows}x{n}\n{f}"), &pointwise, &want, 1e-6);
    }
}

/// `out[i] = cast.T(clamp(round(x[i] / s) + zp, lo, hi))`, then for an f32 output the
/// dequantisation `(cast.f32(cast.i32(q) - zq) * s)` with `zq` an i32 scalar: the quantize
/// loops of an int8 model, vectorized whole as the elementwise sketch leaves them.
fn quantize_loop(n: usize, out: DType) -> PrimFunc {
    let mut f = PrimFunc::new("quantize");
    let x = f.add_param("x", DType::F32, vec![n]);
    let s = f.add_param("s", DType::F32, vec![1]);
    let zq = f.add_param("zq", DType::I32, vec![1]);
    let o = f.add_param("out", out, vec![n]);
    let i = f.new_var("i");
    let (lo, hi) = if out == DType::U8 {
        (0.0, 255.0)
    } else {
        (-128.0, 127.0)
    };
    let zero = Expr::int(0);
    let scaled = Expr::call(
        Intrinsic::Round,
        vec![Expr::load(x, vec![Expr::var(i)]) / Expr::load(s, vec![zero.clone()])],
    ) + Expr::f32(3.0);
    let clamped = Expr::select(
        Expr::lt(scaled.clone(), Expr::f32(lo)),
        Expr::f32(lo),
        Expr::select(
            Expr::cmp(CmpOp::Gt, scaled.clone(), Expr::f32(hi)),
            Expr::f32(hi),
            scaled,
        ),
    );
    let value = match out {
        DType::F32 => {
            let q = Expr::cast(DType::I32, Expr::cast(DType::I8, clamped));
            Expr::cast(DType::F32, q - Expr::load(zq, vec![zero.clone()]))
                * Expr::load(s, vec![zero])
        }
        DType::I32 => {
            Expr::cast(DType::I32, Expr::cast(DType::I8, clamped)) - Expr::load(zq, vec![zero])
        }
        t => Expr::cast(t, clamped),
    };
    f.body = Stmt::for_(
        i,
        n,
        ForKind::Vectorized,
        Stmt::store(o, vec![Expr::var(i)], value),
    );
    f
}

/// `f` compiled for AVX2 (8-lane pointwise kernels, the tail mask in a register) and run, where
/// this machine has AVX2 and FMA.
fn run_avx2(f: &PrimFunc, args: &[Tensor]) -> Option<(Vec<Tensor>, usize)> {
    if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
    {
        println!(
            "notice: this machine has no AVX2 with FMA; the AVX2 pointwise kernels did not run"
        );
        return None;
    }
    let flags = [
        "sse3", "ssse3", "sse41", "sse42", "popcnt", "avx", "avx2", "fma", "bmi1", "bmi2",
    ]
    .iter()
    .map(|f| (format!("has_{f}"), "true".to_string()))
    .collect();
    let opts = CodegenOptions {
        threads: Threads::Single,
        microkernels: true,
        verify_ir: true,
        isa: kiln_codegen::isa::IsaSpec::Triple {
            triple: "x86_64-unknown-linux-gnu".into(),
            flags,
        },
        ..CodegenOptions::default()
    };
    Some(run_with(f, args, &opts))
}

#[test]
fn quantize_loops_give_the_vector_codes_bits() {
    let micro = host_pointwise();
    for out in [DType::F32, DType::I32, DType::I8, DType::U8] {
        for n in [64, 77, 600, 3072] {
            let f = quantize_loop(n, out);
            let mut args = random_args(&f, n as u64);
            // Values across the clamps, ties of the rounding, NaN and infinities.
            let x: Vec<f32> = (0..n)
                .map(|j| match j % 41 {
                    3 => f32::NAN,
                    5 => f32::INFINITY,
                    9 => f32::NEG_INFINITY,
                    13 => 2.5,
                    17 => -0.5,
                    _ => (j as f32 - n as f32 / 2.0) * 0.37,
                })
                .collect();
            args[0] = Tensor::from_data(args[0].ty().clone(), kiln_ir::TensorData::F32(x)).unwrap();
            args[1] = Tensor::from_data(args[1].ty().clone(), kiln_ir::TensorData::F32(vec![0.5]))
                .unwrap();
            let (vector, none) = run(&f, &args, false);
            let (pointwise, calls) = run(&f, &args, true);
            assert_eq!(none, 0);
            // AVX2 narrows a partial vector only as a half (4 lanes): other tails of byte
            // outputs stay vector code (AVX-512 masks any tail).
            let byte_tail = matches!(out, DType::I8 | DType::U8) && ![0, 4].contains(&(n % 8));
            if let Some(m) = micro {
                let expected = usize::from(!(m == MicroIsa::X86Avx2 && byte_tail));
                assert_eq!(
                    calls,
                    expected,
                    "{out} x {n} on {}: the loop ran as pointwise calls\n{f}",
                    m.name()
                );
            }
            let what = format!("{out} x {n}\n{f}");
            assert_close(&what, &pointwise, &vector, 0.0);
            let mut want = args.clone();
            interp::run(&f, &mut want).unwrap();
            assert_close(&what, &pointwise, &want, 0.0);
            if let Some((avx2, calls)) = run_avx2(&f, &args) {
                assert_eq!(calls, usize::from(!byte_tail), "AVX2 {what}");
                assert_close(&format!("AVX2 {what}"), &avx2, &want, 0.0);
            }
        }
    }
}
