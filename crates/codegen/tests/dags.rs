//! The example DAGs of kiln-tir, lowered naively and with hand schedules (split, vectorize 4
//! innermost, parallel outer, unroll), compiled, run, and compared with the interpreter.

mod common;

use common::dags::*;
use common::*;
use kiln_tir::{lower, lower_naive, ComputeDag, Instruction as I, PrimFunc, Trace};

fn s(x: &str) -> String {
    x.to_string()
}

fn split(stage: &str, l: &str, f: &[usize]) -> I {
    I::Split {
        stage: s(stage),
        loop_: s(l),
        factors: f.to_vec(),
    }
}

fn scheduled(dag: &ComputeDag, trace: Vec<I>) -> PrimFunc {
    let t = Trace(trace);
    lower(dag, &t.apply(dag).unwrap()).unwrap()
}

/// Runs `f` under every option set; returns (vector loops, parallel bodies) of the threaded,
/// vectorizing compile.
fn check_all(f: &PrimFunc, seed: u64) -> (usize, usize) {
    let mut stats = (0, 0);
    for (i, opts) in option_sets().iter().enumerate() {
        let jit = check_against_interp(f, opts, seed);
        if i == 1 {
            stats = (jit.stats().vector_loops, jit.stats().parallel_bodies);
        }
    }
    stats
}

const CONV: Conv = Conv {
    n: 1,
    c: 3,
    h: 7,
    w: 6,
    o: 5,
    kh: 3,
    kw: 3,
    pad: 1,
    stride: 1,
};

#[test]
fn conv2d_naive() {
    for p in [
        CONV,
        Conv {
            n: 2,
            c: 2,
            h: 8,
            w: 7,
            o: 3,
            kh: 3,
            kw: 2,
            pad: 0,
            stride: 2,
        },
    ] {
        let dag = p.dag();
        check_all(&lower_naive(&dag).unwrap(), 1);
    }
}

#[test]
fn conv2d_tuned_schedule() {
    let p = Conv {
        n: 1,
        c: 3,
        h: 9,
        w: 8,
        o: 8,
        kh: 3,
        kw: 3,
        pad: 1,
        stride: 1,
    };
    let dag = p.dag();
    let f = scheduled(
        &dag,
        vec![
            I::Pack {
                buffer: s("w"),
                axis: 0,
                factor: 4,
                outer_first: false,
                group: None,
            },
            split("conv", "o", &[4]),
            split("conv", "ow", &[4]),
            I::Reorder {
                stage: s("conv"),
                order: ["n", "o.0", "oh", "ow.0", "rc", "ry", "rx", "o.1", "ow.1"]
                    .map(s)
                    .to_vec(),
            },
            I::CacheWrite { stage: s("conv") },
            I::Vectorize {
                stage: s("conv"),
                loop_: s("ow.1"),
            },
            I::Unroll {
                stage: s("conv"),
                loop_: s("o.1"),
            },
            I::ComputeAt {
                stage: s("pad"),
                target_stage: s("conv"),
                target_loop: s("oh"),
            },
            I::Fuse {
                stage: s("out"),
                loops: vec![s("n"), s("o")],
            },
            I::Parallel {
                stage: s("out"),
                loop_: s("n.o.fused"),
            },
        ],
    );
    let (vec, par) = check_all(&f, 2);
    assert!(vec >= 1, "no vector loop in\n{f}");
    assert!(par >= 1, "no parallel body in\n{f}");
}

#[test]
fn conv2d_inline_pad_parallel_batch() {
    let p = Conv {
        n: 2,
        c: 2,
        h: 8,
        w: 7,
        o: 3,
        kh: 3,
        kw: 2,
        pad: 1,
        stride: 2,
    };
    let dag = p.dag();
    let f = scheduled(
        &dag,
        vec![
            I::ComputeInline { stage: s("pad") },
            split("out", "ow", &[2]),
            I::ComputeAt {
                stage: s("conv"),
                target_stage: s("out"),
                target_loop: s("oh"),
            },
            I::Parallel {
                stage: s("out"),
                loop_: s("n"),
            },
        ],
    );
    let (_, par) = check_all(&f, 3);
    assert!(par >= 1, "{f}");
}

#[test]
fn matmul_naive_and_tiled() {
    let dag = matmul(7, 10, 5);
    check_all(&lower_naive(&dag).unwrap(), 4);
    let dag = matmul(12, 16, 9);
    let f = scheduled(
        &dag,
        vec![
            split("c", "i", &[3]),
            split("c", "j", &[2, 4]),
            split("c", "k", &[3]),
            I::Reorder {
                stage: s("c"),
                order: ["i.0", "j.0", "k.0", "i.1", "k.1", "j.1", "j.2"]
                    .map(s)
                    .to_vec(),
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
        ],
    );
    let (vec, par) = check_all(&f, 5);
    assert!(vec >= 1 && par >= 1, "{f}");
    // The accumulator tile (cache_write, unrolled and vectorized) lives in registers.
    let jit = check_against_interp(&f, &option_sets()[1], 5);
    assert_eq!(jit.stats().promoted_buffers, 1, "{f}");
}

#[test]
fn pools_naive_and_scheduled() {
    let dag = pools(1, 2, 7, 8, 3, 2);
    check_all(&lower_naive(&dag).unwrap(), 6);
    let f = scheduled(
        &dag,
        vec![
            I::Fuse {
                stage: s("maxpool"),
                loops: vec![s("n"), s("c")],
            },
            I::Parallel {
                stage: s("maxpool"),
                loop_: s("n.c.fused"),
            },
            I::Unroll {
                stage: s("maxpool"),
                loop_: s("kx"),
            },
            I::ComputeAt {
                stage: s("poolsum"),
                target_stage: s("avgpool"),
                target_loop: s("y"),
            },
            split("avgpool", "x", &[2]),
        ],
    );
    check_all(&f, 7);
}

#[test]
fn reduction_vectorized_over_the_kept_axis() {
    let dag = reduce_axis1(3, 5, 8);
    check_all(&lower_naive(&dag).unwrap(), 8);
    let f = scheduled(
        &dag,
        vec![
            I::Reorder {
                stage: s("sum"),
                order: vec![s("r"), s("i"), s("k")],
            },
            I::Vectorize {
                stage: s("sum"),
                loop_: s("k"),
            },
        ],
    );
    let (vec, _) = check_all(&f, 9);
    assert!(vec >= 1, "{f}");
}

#[test]
fn transpose_naive_and_scheduled() {
    let dag = transpose(4, 3, 8);
    check_all(&lower_naive(&dag).unwrap(), 10);
    // The innermost loop reads with stride: vector code gathers 4 scalar loads per chunk.
    let f = scheduled(
        &dag,
        vec![
            I::Reorder {
                stage: s("t"),
                order: vec![s("i0"), s("i2"), s("i1")],
            },
            I::Vectorize {
                stage: s("t"),
                loop_: s("i1"),
            },
            I::Parallel {
                stage: s("t"),
                loop_: s("i0"),
            },
        ],
    );
    let (vec, par) = check_all(&f, 11);
    assert_eq!(vec, 1, "{f}");
    assert!(par >= 1, "{f}");
}

#[test]
fn elementwise_chain_naive_and_fused() {
    let dag = elementwise(&[3, 16]);
    check_all(&lower_naive(&dag).unwrap(), 12);
    let f = scheduled(
        &dag,
        vec![
            I::ComputeInline { stage: s("add1") },
            I::ComputeInline { stage: s("mul2") },
            split("relu", "i1", &[4]),
            I::Vectorize {
                stage: s("relu"),
                loop_: s("i1.1"),
            },
            I::Parallel {
                stage: s("relu"),
                loop_: s("i0"),
            },
        ],
    );
    let (vec, par) = check_all(&f, 13);
    assert!(vec >= 1 && par >= 1, "{f}");
}
