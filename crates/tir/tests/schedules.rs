//! Schedule legality and the main property: every legal random trace lowers to a function that
//! verifies and computes what the naive schedule computes.

mod common;

use common::traces::*;
use common::*;
use kiln_tir::{lower, lower_naive, verify, ComputeDag, Instruction as I, ScheduleError, Trace};
use proptest::prelude::*;

fn s(x: &str) -> String {
    x.to_string()
}

/// Applies `inst` to a copy of the naive schedule of `dag` and returns the error.
fn reject(dag: &ComputeDag, insts: Vec<I>) -> ScheduleError {
    match Trace(insts).apply(dag) {
        Ok(_) => panic!("accepted"),
        Err(ScheduleError::AtInstruction { error, .. }) => *error,
        Err(e) => e,
    }
}

/// An fma chain's reduction order is its meaning: reorders that keep the reduction loops in
/// axis order (splits included) are legal, others are refused; a plain sum may be reordered.
#[test]
fn fma_chains_keep_their_reduction_order() {
    let conv = Conv {
        n: 1,
        c: 4,
        h: 5,
        w: 5,
        o: 2,
        kh: 3,
        kw: 3,
        pad: 1,
        stride: 1,
    };
    let plain = conv.dag();
    let mut fma = conv.dag();
    fma.fuse_multiply_add(fma.find("conv").unwrap()).unwrap();
    let swap = || I::Reorder {
        stage: s("conv"),
        order: vec![s("ry"), s("rx"), s("rc")],
    };
    let e = reject(&fma, vec![swap()]);
    assert!(e.to_string().contains("keep their order"), "{e}");
    assert!(Trace(vec![swap()]).apply(&plain).is_ok());
    let split = I::Split {
        stage: s("conv"),
        loop_: s("rc"),
        factors: vec![2],
    };
    let kept = I::Reorder {
        stage: s("conv"),
        order: vec![s("ow"), s("rc.0"), s("rc.1"), s("ry"), s("rx")],
    };
    assert!(Trace(vec![split.clone(), kept]).apply(&fma).is_ok());
    let inner_first = I::Reorder {
        stage: s("conv"),
        order: vec![s("rc.1"), s("rc.0")],
    };
    let e = reject(&fma, vec![split, inner_first]);
    assert!(e.to_string().contains("keep their order"), "{e}");
}

#[test]
fn illegal_instructions_are_rejected_with_stage_and_loop() {
    let dag = matmul(4, 8, 6);
    let e = reject(
        &dag,
        vec![I::Vectorize {
            stage: s("c"),
            loop_: s("k"),
        }],
    );
    assert!(e.to_string().contains("stage `c`, loop `k`"), "{e}");
    let e = reject(
        &dag,
        vec![I::Parallel {
            stage: s("c"),
            loop_: s("k"),
        }],
    );
    assert!(e.to_string().contains("reduction"), "{e}");
    let e = reject(
        &dag,
        vec![I::Parallel {
            stage: s("c"),
            loop_: s("j"),
        }],
    );
    assert!(
        e.to_string().contains("loop `j`") && e.to_string().contains("outermost"),
        "{e}"
    );
    let e = reject(
        &dag,
        vec![I::Vectorize {
            stage: s("c"),
            loop_: s("i"),
        }],
    );
    assert!(e.to_string().contains("innermost"), "{e}");
    let e = reject(
        &dag,
        vec![I::Reorder {
            stage: s("c"),
            order: vec![s("i"), s("i")],
        }],
    );
    assert!(e.to_string().contains("twice"), "{e}");
    let e = reject(
        &dag,
        vec![I::Reorder {
            stage: s("c"),
            order: vec![s("i"), s("zz")],
        }],
    );
    assert!(
        matches!(e, ScheduleError::UnknownLoop { ref loop_, .. } if loop_ == "zz"),
        "{e}"
    );
    let e = reject(
        &dag,
        vec![I::Split {
            stage: s("c"),
            loop_: s("i"),
            factors: vec![0],
        }],
    );
    assert!(e.to_string().contains("factor 0"), "{e}");
    let e = reject(
        &dag,
        vec![I::Split {
            stage: s("c"),
            loop_: s("i"),
            factors: vec![usize::MAX, 2],
        }],
    );
    assert!(e.to_string().contains("too large"), "{e}");
    let e = reject(
        &dag,
        vec![I::Fuse {
            stage: s("c"),
            loops: vec![s("i"), s("k")],
        }],
    );
    assert!(e.to_string().contains("adjacent"), "{e}");
    let e = reject(
        &dag,
        vec![I::Fuse {
            stage: s("c"),
            loops: vec![s("j"), s("k")],
        }],
    );
    assert!(e.to_string().contains("reduction"), "{e}");
    let e = reject(&dag, vec![I::ComputeInline { stage: s("c") }]);
    assert!(e.to_string().contains("reduction"), "{e}");
    let e = reject(
        &dag,
        vec![
            I::CacheWrite { stage: s("c") },
            I::CacheWrite { stage: s("c") },
        ],
    );
    assert!(e.to_string().contains("twice"), "{e}");
    let e = reject(
        &dag,
        vec![I::Split {
            stage: s("nope"),
            loop_: s("i"),
            factors: vec![2],
        }],
    );
    assert!(matches!(e, ScheduleError::UnknownStage(_)), "{e}");
    let e = reject(
        &dag,
        vec![I::Split {
            stage: s("a"),
            loop_: s("i"),
            factors: vec![2],
        }],
    );
    assert!(e.to_string().contains("placeholder"), "{e}");
    let e = reject(
        &dag,
        vec![I::Pack {
            buffer: s("a"),
            axis: 2,
            factor: 2,
            outer_first: false,
            group: None,
        }],
    );
    assert!(e.to_string().contains("axis"), "{e}");
    let e = reject(
        &dag,
        vec![
            I::Split {
                stage: s("c"),
                loop_: s("j"),
                factors: vec![2],
            },
            I::Split {
                stage: s("c"),
                loop_: s("j"),
                factors: vec![2],
            },
        ],
    );
    assert!(matches!(e, ScheduleError::UnknownLoop { .. }), "{e}");
    let e = reject(
        &dag,
        vec![
            I::Vectorize {
                stage: s("c"),
                loop_: s("j"),
            },
            I::Split {
                stage: s("c"),
                loop_: s("j"),
                factors: vec![2],
            },
        ],
    );
    assert!(e.to_string().contains("annotated"), "{e}");

    let conv = Conv {
        n: 1,
        c: 2,
        h: 5,
        w: 5,
        o: 2,
        kh: 3,
        kw: 3,
        pad: 1,
        stride: 1,
    }
    .dag();
    let e = reject(
        &conv,
        vec![I::ComputeAt {
            stage: s("pad"),
            target_stage: s("out"),
            target_loop: s("oh"),
        }],
    );
    assert!(e.to_string().contains("only consumer"), "{e}");
    let e = reject(
        &conv,
        vec![I::ComputeAt {
            stage: s("conv"),
            target_stage: s("pad"),
            target_loop: s("y"),
        }],
    );
    assert!(e.to_string().contains("later stage"), "{e}");
    let e = reject(
        &conv,
        vec![I::ComputeAt {
            stage: s("out"),
            target_stage: s("out"),
            target_loop: s("oh"),
        }],
    );
    assert!(e.to_string().contains("later stage"), "{e}");
    let e = reject(&conv, vec![I::ComputeInline { stage: s("out") }]);
    assert!(e.to_string().contains("output"), "{e}");
    let e = reject(
        &conv,
        vec![
            I::ComputeAt {
                stage: s("pad"),
                target_stage: s("conv"),
                target_loop: s("oh"),
            },
            I::Split {
                stage: s("conv"),
                loop_: s("oh"),
                factors: vec![2],
            },
        ],
    );
    assert!(e.to_string().contains("computed at this loop"), "{e}");
    // compute_at of a region that is not affine in the inner loops (fused index) is a lowering error.
    let t = Trace(vec![
        I::Fuse {
            stage: s("conv"),
            loops: vec![s("oh"), s("ow")],
        },
        I::ComputeAt {
            stage: s("pad"),
            target_stage: s("conv"),
            target_loop: s("o"),
        },
    ]);
    let err = lower(&conv, &t.apply(&conv).unwrap()).unwrap_err();
    assert!(err.to_string().contains("not affine"), "{err}");
    // A vectorized loop of any extent lowers (code generation emits 4-lane chunks and a scalar
    // tail), and stays the innermost loop.
    let t = Trace(vec![I::Vectorize {
        stage: s("out"),
        loop_: s("ow"),
    }]);
    let f = lower(&conv, &t.apply(&conv).unwrap()).unwrap();
    assert!(f.to_string().contains("for.vectorized ow"), "{f}");
}

// ---- random traces ----
/// Lowers `trace` and compares with the naive schedule; `Ok(true)` when it lowered.
fn check(dag: &ComputeDag, trace: &Trace, seed: u64) -> Result<bool, TestCaseError> {
    let sched = trace
        .apply(dag)
        .map_err(|e| TestCaseError::fail(format!("validated trace rejected: {e}")))?;
    // The trace survives a JSON round trip and replays to the same schedule.
    let json = serde_json::to_string(trace).unwrap();
    let back: Trace = serde_json::from_str(&json).unwrap();
    prop_assert_eq!(&back.apply(dag).unwrap(), &sched);
    let f = match lower(dag, &sched) {
        Ok(f) => f,
        Err(kiln_tir::LowerError::Verify(e)) => {
            return Err(TestCaseError::fail(format!(
                "lowered function fails verification: {e}"
            )))
        }
        Err(e) => {
            if std::env::var("TIR_DEBUG").is_ok() {
                eprintln!("lower rejected: {e}");
            }
            return Ok(false);
        }
    };
    prop_assert!(verify(&f).is_ok());
    let text = f.to_string();
    prop_assert_eq!(&kiln_tir::parse_func(&text).unwrap(), &f);
    let naive = lower_naive(dag).unwrap();
    let inputs = inputs_for(dag, seed);
    let want = run(&naive, dag, &inputs);
    let got = run(&f, dag, &inputs);
    prop_assert_eq!(got, want, "trace {}\n{}", json, text);
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_legal_traces_match_naive(fam in arb_family(), ch in choices(), seed in 0u64..1000) {
        let dag = fam.dag();
        let trace = random_trace(&dag, &ch);
        check(&dag, &trace, seed)?;
    }

    #[test]
    fn arbitrary_instructions_never_panic(fam in arb_family(), raw in proptest::collection::vec((0u8..10, "[a-z.0-9]{0,6}", "[a-z.0-9]{0,6}", proptest::collection::vec(0usize..20, 0..3)), 0..8)) {
        let dag = fam.dag();
        let names: Vec<String> = dag.tensors().iter().map(|t| t.name.clone()).collect();
        let insts: Vec<I> = raw.into_iter().map(|(op, a, b, f)| {
            let stage = if a.len() % 2 == 0 { names[a.len() % names.len()].clone() } else { a.clone() };
            let lp = b.clone();
            match op {
                0 => I::Split { stage, loop_: lp, factors: f },
                1 => I::Reorder { stage, order: vec![lp, a] },
                2 => I::Fuse { stage, loops: vec![lp, b] },
                3 => I::Vectorize { stage, loop_: lp },
                4 => I::Unroll { stage, loop_: lp },
                5 => I::Parallel { stage, loop_: lp },
                6 => I::ComputeAt { stage, target_stage: names[f.len() % names.len()].clone(), target_loop: lp },
                7 => I::ComputeInline { stage },
                8 => I::CacheWrite { stage },
                _ => I::Pack { buffer: stage, axis: f.first().copied().unwrap_or(0), factor: f.last().copied().unwrap_or(0), outer_first: f.len() % 2 == 0, group: None },
            }
        }).collect();
        if let Ok(sched) = Trace(insts).apply(&dag) {
            if let Ok(f) = lower(&dag, &sched) {
                prop_assert!(verify(&f).is_ok());
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics(text in "\\PC{0,120}") {
        let _ = serde_json::from_str::<Trace>(&text);
        let _ = serde_json::from_str::<Trace>(&format!(r#"[{{"kind":"split","stage":"c","loop":"i","factors":[{text}]}}]"#));
    }
}

/// Most random traces must actually lower (not just be rejected), for every DAG family.
#[test]
fn random_traces_mostly_lower() {
    let families = [
        Family::Conv(Conv {
            n: 1,
            c: 2,
            h: 6,
            w: 6,
            o: 4,
            kh: 3,
            kw: 3,
            pad: 1,
            stride: 1,
        }),
        Family::Matmul(6, 8, 5),
        Family::Pools(2, 6, 7, 2),
        Family::Reduce(3, 4, 8),
        Family::Elementwise(vec![4, 8]),
        Family::Transpose(3, 4, 2),
    ];
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for fam in families {
        let dag = fam.dag();
        let (mut lowered, mut nontrivial) = (0, 0);
        for seed in 0..60 {
            let ch: Vec<(u8, u32, u32, u32)> = (0..10)
                .map(|_| (next() as u8, next() as u32, next() as u32, next() as u32))
                .collect();
            let trace = random_trace(&dag, &ch);
            if check(&dag, &trace, seed).unwrap() {
                lowered += 1;
                if trace.0.len() >= 3 {
                    nontrivial += 1;
                }
            }
        }
        assert!(
            lowered >= 30 && nontrivial >= 20,
            "{fam:?}: {lowered} lowered, {nontrivial} with 3+ instructions"
        );
    }
}
