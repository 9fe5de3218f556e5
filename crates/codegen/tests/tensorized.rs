//! Tensorized regions compiled: with the host's micro-kernels (where it has them) and as loop
//! nests, both equal to the interpreter bit for bit (the update is an explicit fma in all three).

mod common;

use common::dags::*;
use common::*;
use kiln_codegen::{CodegenOptions, JitModule, Threads};
use kiln_tir::{interp, lower, Instruction as I, PrimFunc, TensorIntrinsic, Trace};

fn s(x: &str) -> String {
    x.to_string()
}

fn scheduled(dag: &kiln_tir::ComputeDag, trace: Vec<I>) -> PrimFunc {
    lower(dag, &Trace(trace).apply(dag).unwrap()).unwrap()
}

/// Compiles and runs `f` with and without micro-kernels (one and two threads) against the
/// interpreter, exactly; returns the micro-kernel calls of the threaded compile.
fn check_exact(f: &PrimFunc, seed: u64) -> usize {
    let mut want = random_args(f, seed);
    let args = want.clone();
    interp::run(f, &mut want).unwrap();
    let mut calls = 0;
    for (threads, micro) in [
        (Threads::Single, true),
        (Threads::Pool(2), true),
        (Threads::Single, false),
    ] {
        let opts = CodegenOptions {
            threads,
            microkernels: micro,
            verify_ir: true,
            ..CodegenOptions::default()
        };
        let jit = JitModule::compile(std::slice::from_ref(f), &opts).unwrap();
        let mut got = args.clone();
        jit.kernel(&f.name).unwrap().run(&mut got).unwrap();
        assert_close(
            &format!("micro {micro}, {threads:?}\n{f}"),
            &got,
            &want,
            0.0,
        );
        if micro && threads != Threads::Single {
            calls = jit.stats().microkernel_calls;
        }
    }
    calls
}

fn host_has_microkernels() -> bool {
    let host = kiln_codegen::isa::host_isa(false, false).unwrap();
    match kiln_codegen::isa::HostInfo::of(&*host).micro {
        Some(isa) => isa.runs_here(),
        None => {
            println!("notice: this machine has no target micro-kernels; only the loop-nest path of tensorized regions is checked");
            false
        }
    }
}

/// A `matmul` tiled `rows x cols`, accumulated in a cache-written tile, the row tiles parallel
/// and the column tile tensorized.
fn matmul_tile(rows: usize, cols: usize) -> Vec<I> {
    vec![
        I::Split {
            stage: s("c"),
            loop_: s("i"),
            factors: vec![rows],
        },
        I::Split {
            stage: s("c"),
            loop_: s("j"),
            factors: vec![cols],
        },
        I::Reorder {
            stage: s("c"),
            order: ["i.0", "j.0", "k", "i.1", "j.1"].map(s).to_vec(),
        },
        I::CacheWrite { stage: s("c") },
        I::Parallel {
            stage: s("c"),
            loop_: s("i.0"),
        },
        I::Tensorize {
            stage: s("c"),
            loop_: s("j.0"),
            intrinsic: TensorIntrinsic::Contraction,
        },
    ]
}

#[test]
fn a_cache_written_matmul_tile_runs_as_a_microkernel() {
    let (m, n, k) = (12, 40, 9);
    let dag = matmul(m, n, k);
    let f = scheduled(&dag, matmul_tile(6, 20));
    let calls = check_exact(&f, 3);
    if host_has_microkernels() {
        assert_eq!(calls, 1, "{f}");
    }
}

#[test]
fn ragged_row_tiles_run_the_full_and_the_tail_microkernel() {
    // Row splits that do not divide the rows: the last tile of 13 = 6 + 6 + 1 rows, 11 = 6 + 5,
    // 4 < 6 (one partial tile), and a tile of 5 rows in 12 = 5 + 5 + 2.
    for (m, rows) in [(13, 6), (11, 6), (4, 6), (12, 5)] {
        let dag = matmul(m, 24, 7);
        let f = scheduled(&dag, matmul_tile(rows, 24));
        assert!(f.to_string().contains("if "), "a ragged split guards: {f}");
        let calls = check_exact(&f, m as u64);
        if host_has_microkernels() {
            assert_eq!(calls, 1, "{m} rows in tiles of {rows}: {f}");
        }
    }
}

#[test]
fn a_convolution_tile_with_relu_runs_as_a_microkernel() {
    let p = Conv {
        n: 1,
        c: 3,
        h: 6,
        w: 9,
        o: 5,
        kh: 3,
        kw: 3,
        pad: 1,
        stride: 1,
    };
    let dag = p.dag();
    let f = scheduled(
        &dag,
        vec![
            I::Split {
                stage: s("out"),
                loop_: s("o"),
                factors: vec![5],
            },
            I::Split {
                stage: s("out"),
                loop_: s("ow"),
                factors: vec![9],
            },
            I::Reorder {
                stage: s("out"),
                order: ["n", "o.0", "oh", "ow.0", "o.1", "ow.1"].map(s).to_vec(),
            },
            I::ComputeAt {
                stage: s("conv"),
                target_stage: s("out"),
                target_loop: s("ow.0"),
            },
            I::Reorder {
                stage: s("conv"),
                order: ["rc", "ry", "rx", "n", "o", "oh", "ow"].map(s).to_vec(),
            },
            I::Parallel {
                stage: s("out"),
                loop_: s("n"),
            },
            I::Tensorize {
                stage: s("out"),
                loop_: s("ow.0"),
                intrinsic: TensorIntrinsic::Contraction,
            },
        ],
    );
    let calls = check_exact(&f, 5);
    if host_has_microkernels() {
        assert_eq!(calls, 1, "{f}");
    }
}

#[test]
fn exp_sigmoid_and_erf_compute_the_specified_approximation_bit_for_bit() {
    let host =
        kiln_codegen::isa::HostInfo::of(&*kiln_codegen::isa::host_isa(false, false).unwrap());
    if !(host.has_fma && host.has_vector_round) {
        println!("notice: this machine's code has no fma or rounding; skipped");
        return;
    }
    let n = 4096;
    // Inputs over the whole useful range, the edges and NaN.
    let xs: Vec<f32> = (0..n)
        .map(|i| match i {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 0.0,
            _ => (i as f32 / n as f32 - 0.5) * 240.0,
        })
        .collect();
    for inner in ["for.vectorized j in 0..4", "for j in 0..4"] {
        let f = kiln_tir::parse_func(&format!(
            "func @m(%x: f32[{n}] param, %e: f32[{n}] param, %s: f32[{n}] param, %r: f32[{n}] param) {{
  for i in 0..{q} {{
    {inner} {{
      %e[i * 4 + j] = exp(%x[i * 4 + j])
      %s[i * 4 + j] = sigmoid(%x[i * 4 + j])
      %r[i * 4 + j] = erf(%x[i * 4 + j] * 0.03125_f32)
    }}
  }}
}}",
            q = n / 4
        ))
        .unwrap();
        let jit = JitModule::compile(
            std::slice::from_ref(&f),
            &CodegenOptions {
                threads: Threads::Single,
                ..CodegenOptions::default()
            },
        )
        .unwrap();
        let mut args = vec![
            kiln_ir::Tensor::new(vec![n], xs.clone()).unwrap(),
            kiln_ir::Tensor::new(vec![n], vec![0f32; n]).unwrap(),
            kiln_ir::Tensor::new(vec![n], vec![0f32; n]).unwrap(),
            kiln_ir::Tensor::new(vec![n], vec![0f32; n]).unwrap(),
        ];
        jit.kernel("m").unwrap().run(&mut args).unwrap();
        let (e, s) = (
            args[1].as_slice::<f32>().unwrap(),
            args[2].as_slice::<f32>().unwrap(),
        );
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for (i, &x) in xs.iter().enumerate() {
            let (we, ws) = (kiln_tir::math::exp(x), kiln_tir::math::sigmoid(x));
            assert!(same(e[i], we), "{inner}: exp({x}): {} vs {we}", e[i]);
            assert!(same(s[i], ws), "{inner}: sigmoid({x}): {} vs {ws}", s[i]);
            let r = args[3].as_slice::<f32>().unwrap();
            let wr = kiln_tir::math::erf(x * 0.03125);
            assert!(same(r[i], wr), "{inner}: erf({x}/32): {} vs {wr}", r[i]);
        }
    }
}
