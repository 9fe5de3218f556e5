//! The example DAGs lowered naively and with hand-written schedules, run by the interpreter and
//! compared with naive Rust loops.

mod common;

use common::*;
use kiln_tir::{lower, lower_naive, verify, Instruction as I, Trace};

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
const CONV_S2: Conv = Conv {
    n: 2,
    c: 2,
    h: 8,
    w: 7,
    o: 3,
    kh: 3,
    kw: 2,
    pad: 0,
    stride: 2,
};

fn conv_inputs(p: &Conv) -> Vec<Vec<f32>> {
    vec![
        ints(p.n * p.c * p.h * p.w, 1),
        ints(p.o * p.c * p.kh * p.kw, 2),
        ints(p.o, 3),
    ]
}

#[test]
fn conv2d_naive_matches_reference() {
    for p in [CONV, CONV_S2] {
        let dag = p.dag();
        let f = lower_naive(&dag).unwrap();
        let inp = conv_inputs(&p);
        let out = run(&f, &dag, &inp);
        assert_eq!(out[3], p.reference(&inp[0], &inp[1], &inp[2]), "{p:?}");
    }
}

#[test]
fn conv2d_tuned_schedule_matches_reference() {
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
    let trace = Trace(vec![
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
            order: vec![
                s("n"),
                s("o.0"),
                s("oh"),
                s("ow.0"),
                s("rc"),
                s("ry"),
                s("rx"),
                s("o.1"),
                s("ow.1"),
            ],
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
    ]);
    let sched = trace.apply(&dag).unwrap();
    let f = lower(&dag, &sched).unwrap();
    verify(&f).unwrap();
    let text = f.to_string();
    assert!(text.contains("for.vectorized"), "{text}");
    assert!(text.contains("%w_packed"), "{text}");
    assert!(text.contains("%pad_tile"), "{text}");
    assert!(text.contains("%conv_acc"), "{text}");
    let inp = conv_inputs(&p);
    let out = run(&f, &dag, &inp);
    assert_eq!(out[3], p.reference(&inp[0], &inp[1], &inp[2]), "{text}");
}

#[test]
fn conv2d_inline_pad_and_epilogue_at_conv() {
    let dag = CONV_S2.dag();
    let trace = Trace(vec![
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
    ]);
    let f = lower(&dag, &trace.apply(&dag).unwrap()).unwrap();
    let inp = conv_inputs(&CONV_S2);
    let out = run(&f, &dag, &inp);
    assert_eq!(out[3], CONV_S2.reference(&inp[0], &inp[1], &inp[2]), "{f}");
}

#[test]
fn matmul_naive_and_tiled() {
    let (m, n, k) = (7, 10, 5);
    let dag = matmul(m, n, k);
    let inp = inputs_for(&dag, 9);
    let want = matmul_ref(m, n, k, &inp[0], &inp[1]);
    assert_eq!(run(&lower_naive(&dag).unwrap(), &dag, &inp)[2], want);
    let trace = Trace(vec![
        split("c", "i", &[3]),
        split("c", "j", &[2, 4]),
        split("c", "k", &[2]),
        I::Reorder {
            stage: s("c"),
            order: vec![
                s("i.0"),
                s("j.0"),
                s("k.0"),
                s("i.1"),
                s("k.1"),
                s("j.1"),
                s("j.2"),
            ],
        },
        I::CacheWrite { stage: s("c") },
        I::Vectorize {
            stage: s("c"),
            loop_: s("j.2"),
        },
        I::Parallel {
            stage: s("c"),
            loop_: s("i.0"),
        },
    ]);
    let json = serde_json::to_string(&trace).unwrap();
    let back: Trace = serde_json::from_str(&json).unwrap();
    assert_eq!(back, trace);
    assert!(
        json.contains(r#""kind":"split""#) && json.contains(r#""loop":"i""#),
        "{json}"
    );
    // j = 10 is not divisible by 8: the vectorized loop would need a tail guard.
    let sched = trace.apply(&dag).unwrap();
    assert!(lower(&dag, &sched).is_err());
    let mut ok = trace.clone();
    ok.0[1] = split("c", "j", &[5, 2]);
    let f = lower(&dag, &ok.apply(&dag).unwrap()).unwrap();
    assert_eq!(run(&f, &dag, &inp)[2], want, "{f}");
    // Without vectorization the non-dividing split is fine (guarded).
    let mut guarded = trace.clone();
    guarded.0.remove(5);
    let f = lower(&dag, &guarded.apply(&dag).unwrap()).unwrap();
    assert!(f.to_string().contains("if "), "{f}");
    assert_eq!(run(&f, &dag, &inp)[2], want, "{f}");
}

#[test]
fn pools_naive_and_scheduled() {
    let (n, c, h, w, k, st) = (1, 2, 7, 8, 3, 2);
    let dag = pools(n, c, h, w, k, st);
    let inp = inputs_for(&dag, 4);
    let (mx, av) = pools_ref(n, c, h, w, k, st, &inp[0]);
    let out = run(&lower_naive(&dag).unwrap(), &dag, &inp);
    assert_eq!(out[1], mx);
    assert_eq!(out[2], av);
    let trace = Trace(vec![
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
    ]);
    let f = lower(&dag, &trace.apply(&dag).unwrap()).unwrap();
    let out = run(&f, &dag, &inp);
    assert_eq!(out[1], mx, "{f}");
    assert_eq!(out[2], av, "{f}");
}

/// Fused loops index with a division and a modulo, except where a loop has extent 1 (it is 0)
/// or only loops of extent 1 are outside it (the quotient is already in range): a batch of one
/// fused with the channels indexes the channels by the fused loop itself.
#[test]
fn fusing_a_batch_of_one_needs_no_division() {
    let fused = Trace(vec![I::Fuse {
        stage: s("maxpool"),
        loops: vec![s("n"), s("c")],
    }]);
    for (n, divides) in [(1, false), (2, true)] {
        let dag = pools(n, 3, 7, 8, 3, 2);
        let inp = inputs_for(&dag, 6);
        let (mx, _) = pools_ref(n, 3, 7, 8, 3, 2, &inp[0]);
        let f = lower(&dag, &fused.apply(&dag).unwrap()).unwrap();
        let text = f.to_string();
        assert_eq!(
            text.contains("n.c.fused // 3") && text.contains("n.c.fused % 3"),
            divides,
            "{f}"
        );
        assert_eq!(run(&f, &dag, &inp)[1], mx, "{f}");
    }
}

#[test]
fn reduction_and_transpose_and_elementwise() {
    let dag = reduce_axis1(3, 5, 4);
    let inp = inputs_for(&dag, 5);
    assert_eq!(
        run(&lower_naive(&dag).unwrap(), &dag, &inp)[1],
        reduce_axis1_ref(3, 5, 4, &inp[0])
    );
    let trace = Trace(vec![
        I::Reorder {
            stage: s("sum"),
            order: vec![s("r"), s("i"), s("k")],
        },
        I::Vectorize {
            stage: s("sum"),
            loop_: s("k"),
        },
    ]);
    let f = lower(&dag, &trace.apply(&dag).unwrap()).unwrap();
    assert_eq!(
        run(&f, &dag, &inp)[1],
        reduce_axis1_ref(3, 5, 4, &inp[0]),
        "{f}"
    );

    let dag = transpose(2, 3, 4);
    let inp = inputs_for(&dag, 6);
    assert_eq!(
        run(&lower_naive(&dag).unwrap(), &dag, &inp)[1],
        transpose_ref(2, 3, 4, &inp[0])
    );

    let dag = elementwise(&[3, 8]);
    let inp = inputs_for(&dag, 7);
    let want = elementwise_ref(&inp[0], &inp[1]);
    assert_eq!(run(&lower_naive(&dag).unwrap(), &dag, &inp)[2], want);
    let trace = Trace(vec![
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
    ]);
    let f = lower(&dag, &trace.apply(&dag).unwrap()).unwrap();
    assert_eq!(f.buffers.len(), 3, "{f}");
    assert_eq!(run(&f, &dag, &inp)[2], want, "{f}");
}

#[test]
fn lowered_text_round_trips() {
    let dag = CONV.dag();
    let f = lower_naive(&dag).unwrap();
    let text = f.to_string();
    let back = kiln_tir::parse_func(&text).unwrap();
    assert_eq!(back, f, "{text}");
    assert_eq!(back.to_string(), text);
}

#[test]
#[ignore = "prints the tuned conv for inspection"]
fn print_tuned_conv() {
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
    let trace = Trace(vec![
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
            order: vec![
                s("n"),
                s("o.0"),
                s("oh"),
                s("ow.0"),
                s("rc"),
                s("ry"),
                s("rx"),
                s("o.1"),
                s("ow.1"),
            ],
        },
        I::CacheWrite { stage: s("conv") },
        I::Vectorize {
            stage: s("conv"),
            loop_: s("ow.1"),
        },
        I::ComputeAt {
            stage: s("pad"),
            target_stage: s("conv"),
            target_loop: s("oh"),
        },
        I::ComputeAt {
            stage: s("conv"),
            target_stage: s("out"),
            target_loop: s("o"),
        },
    ]);
    println!("{}", lower(&dag, &trace.apply(&dag).unwrap()).unwrap());
}

#[test]
fn int8_matmul_accumulates_in_i32() {
    use kiln_ir::{DType, Tensor};
    use kiln_tir::{ComputeDag, Expr, ReduceKind};
    let (m, n, k) = (5, 8, 7);
    let mut dag = ComputeDag::new();
    let a = dag.placeholder("a", DType::I8, &[m, k]).unwrap();
    let b = dag.placeholder("b", DType::I8, &[k, n]).unwrap();
    dag.add_stage(
        "c",
        &[("i", m), ("j", n)],
        &[("k", k)],
        Some(ReduceKind::Sum),
        |x, r| {
            let av = Expr::cast(DType::I32, Expr::load(a, vec![x[0].clone(), r[0].clone()]));
            let bv = Expr::cast(DType::I32, Expr::load(b, vec![r[0].clone(), x[1].clone()]));
            (av - Expr::int_of(3, DType::I32)) * bv
        },
    )
    .unwrap();
    let av: Vec<i8> = (0..m * k)
        .map(|v| (v as i32 * 37 % 255 - 127) as i8)
        .collect();
    let bv: Vec<i8> = (0..k * n)
        .map(|v| (v as i32 * 91 % 255 - 127) as i8)
        .collect();
    let mut want = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|kk| (av[i * k + kk] as i32 - 3) * bv[kk * n + j] as i32)
                .sum();
        }
    }
    let trace = Trace(vec![
        split("c", "j", &[4]),
        I::Reorder {
            stage: s("c"),
            order: vec![s("i"), s("j.0"), s("k"), s("j.1")],
        },
        I::CacheWrite { stage: s("c") },
        I::Vectorize {
            stage: s("c"),
            loop_: s("j.1"),
        },
        I::Parallel {
            stage: s("c"),
            loop_: s("i"),
        },
    ]);
    for f in [
        lower_naive(&dag).unwrap(),
        lower(&dag, &trace.apply(&dag).unwrap()).unwrap(),
    ] {
        let mut args = [
            Tensor::new(vec![m, k], av.clone()).unwrap(),
            Tensor::new(vec![k, n], bv.clone()).unwrap(),
            Tensor::new(vec![m, n], vec![0i32; m * n]).unwrap(),
        ];
        kiln_tir::interp::run(&f, &mut args).unwrap();
        assert_eq!(args[2].as_slice::<i32>().unwrap(), want.as_slice(), "{f}");
    }
}
