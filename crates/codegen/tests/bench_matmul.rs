//! A timing print (no assertions on speed): a 256³ f32 matmul with a hand schedule, compiled by
//! the JIT. Run with `cargo test --release -p kiln-codegen --test bench_matmul -- --ignored
//! --nocapture`.

mod common;

use common::dags::matmul;
use common::*;
use kiln_codegen::{CodegenOptions, JitModule, Threads};
use kiln_tir::{lower, lower_naive, Instruction as I, PrimFunc, Trace};
use std::time::Instant;

const M: usize = 256;

fn s(x: &str) -> String {
    x.to_string()
}

/// Register tile of 4 rows × `4 * vecs` columns (`vecs` f32x4 vectors per row) kept in
/// registers across the k loop, rows parallel.
fn tuned(vecs: usize) -> PrimFunc {
    let dag = matmul(M, M, M);
    let trace = Trace(vec![
        I::Split {
            stage: s("c"),
            loop_: s("i"),
            factors: vec![4],
        },
        I::Split {
            stage: s("c"),
            loop_: s("j"),
            factors: vec![vecs, 4],
        },
        I::Reorder {
            stage: s("c"),
            order: ["i.0", "j.0", "k", "i.1", "j.1", "j.2"].map(s).to_vec(),
        },
        I::CacheWrite { stage: s("c") },
        I::Vectorize {
            stage: s("c"),
            loop_: s("j.2"),
        },
        I::Unroll {
            stage: s("c"),
            loop_: s("j.1"),
        },
        I::Unroll {
            stage: s("c"),
            loop_: s("i.1"),
        },
        I::Parallel {
            stage: s("c"),
            loop_: s("i.0"),
        },
    ]);
    lower(&dag, &trace.apply(&dag).unwrap()).unwrap()
}

fn time(f: &PrimFunc, opts: &CodegenOptions, label: &str) {
    let jit = JitModule::compile(std::slice::from_ref(f), opts).unwrap();
    let k = jit.kernel(&f.name).unwrap();
    let mut args = random_args(f, 1);
    k.run(&mut args).unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        k.run(&mut args).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * (M * M * M) as f64 / best / 1e9;
    println!(
        "matmul {M}³ {label}: {:.3} ms, {gflops:.2} GFLOP/s ({:?})",
        best * 1e3,
        jit.stats()
    );
}

#[test]
#[ignore = "timing print"]
fn matmul_256_gflops() {
    let naive = lower_naive(&matmul(M, M, M)).unwrap();
    let single = CodegenOptions {
        threads: Threads::Single,
        verify_ir: false,
        ..CodegenOptions::default()
    };
    let par = CodegenOptions {
        threads: Threads::Global,
        ..single.clone()
    };
    time(&naive, &single, "naive, 1 thread");
    let threads = rayon::current_num_threads();
    for vecs in [2, 4] {
        let f = tuned(vecs);
        let tile = format!("tile 4x{} (f32x4)", 4 * vecs);
        time(&f, &single, &format!("{tile}, 1 thread"));
        time(&f, &par, &format!("{tile}, {threads} threads"));
        let fast = CodegenOptions {
            contract_fma: true,
            ..single.clone()
        };
        time(&f, &fast, &format!("{tile} + FMA contraction, 1 thread"));
    }
}
