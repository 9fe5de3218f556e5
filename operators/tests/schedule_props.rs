//! Property test: random legal schedules (splits, reorders, fuses, vectorize, parallel, unroll,
//! inline, compute_at) of conv, matmul, pooling, reduction and elementwise definitions compute
//! what `kiln_operators::evaluate` computes.

mod lowering_common;

use kiln_ir::op::*;
use kiln_ir::{DType, Op, Tensor, TensorType};
use kiln_operators::compute::single_op;
use kiln_tir::{Instruction, IterKind, Schedule, Trace};
use lowering_common::*;
use proptest::prelude::*;

/// Interprets `genes` as instructions, keeping those that apply legally.
fn random_trace(dag: &kiln_tir::ComputeDag, genes: &[(u8, usize, usize)]) -> Trace {
    let stages: Vec<String> = dag
        .tensors()
        .iter()
        .filter(|t| t.stage.is_some())
        .map(|t| t.name.clone())
        .collect();
    let mut s = Schedule::naive(dag);
    let mut out = vec![];
    for &(kind, pick, factor) in genes {
        let stage = stages[pick % stages.len()].clone();
        let loops = s.loops(dag, &stage).unwrap_or_default();
        if loops.is_empty() {
            continue;
        }
        let l = &loops[(pick / 3) % loops.len()];
        let inst = match kind % 8 {
            0 | 1 => Instruction::Split {
                stage,
                loop_: l.name.clone(),
                factors: vec![factor],
            },
            2 => {
                let mut order: Vec<String> = loops.iter().map(|l| l.name.clone()).collect();
                let n = order.len();
                order.rotate_left(factor % n);
                Instruction::Reorder { stage, order }
            }
            3 => {
                let i = (pick / 3) % loops.len();
                if i + 1 >= loops.len() {
                    continue;
                }
                Instruction::Fuse {
                    stage,
                    loops: vec![loops[i].name.clone(), loops[i + 1].name.clone()],
                }
            }
            4 => Instruction::Vectorize {
                stage,
                loop_: loops[loops.len() - 1].name.clone(),
            },
            5 => Instruction::Parallel {
                stage,
                loop_: loops[0].name.clone(),
            },
            6 => {
                if l.kind == IterKind::Reduce || factor % 2 == 0 {
                    Instruction::Unroll {
                        stage,
                        loop_: l.name.clone(),
                    }
                } else {
                    Instruction::ComputeInline { stage }
                }
            }
            _ => {
                let target = stages[(pick + factor) % stages.len()].clone();
                let tl = s.loops(dag, &target).unwrap_or_default();
                if tl.is_empty() {
                    continue;
                }
                Instruction::ComputeAt {
                    stage,
                    target_stage: target,
                    target_loop: tl[factor % tl.len()].name.clone(),
                }
            }
        };
        if s.apply(dag, &inst).is_ok() {
            out.push(inst);
        }
    }
    Trace(out)
}

/// Lowers `op` with the random schedule (when the end state is legal) and compares.
fn check_random(op: &Op, inputs: &[Tensor], genes: &[(u8, usize, usize)], rel: f64) {
    check_random_with(op, inputs, &[], genes, rel)
}

/// [`check_random`] with the operands `constants` marks (`Some`) known to the definition, as a
/// model's weights are.
fn check_random_with(
    op: &Op,
    inputs: &[Tensor],
    constants: &[bool],
    genes: &[(u8, usize, usize)],
    rel: f64,
) {
    let types: Vec<TensorType> = inputs.iter().map(|t| t.ty().clone()).collect();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let want = kiln_operators::evaluate(op, &refs).unwrap();
    let known: Vec<Option<Tensor>> = inputs
        .iter()
        .zip(constants)
        .map(|(t, &c)| c.then(|| t.clone()))
        .collect();
    let (b, out) = single_op(op, &types, &known).unwrap();
    let trace = random_trace(b.dag(), genes);
    let Ok(sched) = trace.apply(b.dag()) else {
        return;
    };
    let Ok(func) = kiln_tir::lower(b.dag(), &sched) else {
        return;
    };
    let got = run_func(&func, &b, inputs, out);
    assert_close(&format!("{op:?} {trace:?}"), &got, &want, rel);
}

fn genes() -> impl Strategy<Value = Vec<(u8, usize, usize)>> {
    prop::collection::vec((0u8..8, 0usize..64, 1usize..6), 0..14)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn conv_random_schedules(g in genes(), seed in 1u64..1000, depthwise: bool, nhwc: bool) {
        let mut rng = Rng(seed);
        let layout = if nhwc { DataLayout::Nhwc } else { DataLayout::Nchw };
        let a = ConvAttrs { pad: [1, 0, 1, 2], stride: [1, 2], dilation: [1, 1], input_zp: 0, weight_zp: 0, layout, fma: false };
        let x = rand_default(&mut rng, DType::F32, &layout.shape([1, 2, 6, 7]));
        let (w, op) = if depthwise {
            (rand_default(&mut rng, DType::F32, &[4, 1, 3, 2]), Op::DepthwiseConv2d(a))
        } else {
            (rand_default(&mut rng, DType::F32, &[4, 2, 3, 2]), Op::Conv2d(a))
        };
        let b = rand_default(&mut rng, DType::F32, &[4]);
        check_random(&op, &[x, w, b], &g, 1e-4);
    }

    #[test]
    fn int_conv_random_schedules(g in genes(), seed in 1u64..1000) {
        let mut rng = Rng(seed);
        let a = ConvAttrs { pad: [1, 1, 0, 1], stride: [1, 1], dilation: [2, 1], input_zp: 3, weight_zp: -1, layout: DataLayout::Nchw, fma: false };
        let x = rand_default(&mut rng, DType::I8, &[1, 2, 6, 5]);
        let w = rand_default(&mut rng, DType::I8, &[3, 2, 2, 3]);
        let b = rand(&mut rng, DType::I32, &[3], -100, 100);
        check_random(&Op::Conv2d(a), &[x, w, b], &g, 0.0);
    }

    /// 8-bit integer convolutions with constant weights (the channels-last forms: weights as an
    /// HWIO table, the input padded with its zero point), random zero points, either layout.
    #[test]
    fn int8_conv_with_constant_weights(
        g in genes(),
        seed in 1u64..1000,
        depthwise: bool,
        nhwc: bool,
        unsigned: bool,
        zps in (-20i32..20, -3i32..3),
    ) {
        let mut rng = Rng(seed);
        let layout = if nhwc { DataLayout::Nhwc } else { DataLayout::Nchw };
        let (xd, input_zp) = if unsigned { (DType::U8, zps.0 + 128) } else { (DType::I8, zps.0) };
        let a = ConvAttrs { pad: [1, 1, 0, 2], stride: [1, 2], dilation: [1, 1], input_zp, weight_zp: zps.1, layout, fma: false };
        let x = rand_default(&mut rng, xd, &layout.shape([1, 4, 6, 7]));
        let (w, op) = if depthwise {
            (rand_default(&mut rng, DType::I8, &[4, 1, 3, 2]), Op::DepthwiseConv2d(a))
        } else {
            (rand_default(&mut rng, DType::I8, &[8, 4, 3, 2]), Op::Conv2d(a))
        };
        let b = rand(&mut rng, DType::I32, &[w.shape()[0]], -1000, 1000);
        check_random_with(&op, &[x.clone(), w.clone(), b.clone()], &[false, true, true], &[], 0.0);
        check_random_with(&op, &[x, w, b], &[false, true, true], &g, 0.0);
    }

    #[test]
    fn matmul_random_schedules(g in genes(), seed in 1u64..1000) {
        let mut rng = Rng(seed);
        let a = rand_default(&mut rng, DType::F32, &[2, 5, 6]);
        let b = rand_default(&mut rng, DType::F32, &[2, 6, 4]);
        check_random(&Op::MatMul(MatMulAttrs::default()), &[a, b], &g, 1e-4);
    }

    #[test]
    fn pool_random_schedules(g in genes(), seed in 1u64..1000, avg: bool) {
        let mut rng = Rng(seed);
        let p = PoolAttrs { kernel: [3, 2], stride: [2, 1], pad: [1, 1, 0, 1], dilation: [1, 1], ceil_mode: true, count_include_pad: seed % 2 == 0, layout: Default::default() };
        let x = rand_default(&mut rng, DType::F32, &[1, 3, 7, 6]);
        let op = if avg { Op::AvgPool2d(p) } else { Op::MaxPool2d(p) };
        check_random(&op, &[x], &g, 1e-5);
    }

    #[test]
    fn reduction_random_schedules(g in genes(), seed in 1u64..1000, axis in 0usize..3, argmax: bool) {
        let mut rng = Rng(seed);
        let x = rand(&mut rng, DType::I32, &[3, 4, 5], -4, 4);
        let op = if argmax { Op::ArgMax { axis } } else { Op::Reduce { kind: ReduceOp::Sum, axis } };
        check_random(&op, &[x], &g, 0.0);
    }

    #[test]
    fn elementwise_random_schedules(g in genes(), seed in 1u64..1000) {
        let mut rng = Rng(seed);
        let a = rand_default(&mut rng, DType::F32, &[3, 1, 8]);
        let b = rand_default(&mut rng, DType::F32, &[1, 5, 8]);
        check_random(&Op::Binary(BinaryOp::Mul), &[a.clone(), b], &g, 1e-6);
        let i = rand_default(&mut rng, DType::I16, &[4, 6]);
        let s = rand(&mut rng, DType::I16, &[4, 6], -2, 20);
        check_random(&Op::Binary(BinaryOp::LogicalRightShift), &[i, s], &g, 0.0);
    }
}

/// One op of each sketch the tuner searches: (op, inputs, class).
fn space_case(
    case: usize,
    rng: &mut lowering_common::Rng,
) -> (Op, Vec<Tensor>, kiln_operators::schedule::OpClass) {
    use kiln_operators::schedule::OpClass;
    let conv = |layout| ConvAttrs {
        pad: [1, 1, 1, 1],
        stride: [1, 1],
        dilation: [1, 1],
        layout,
        ..ConvAttrs::default()
    };
    match case {
        0 | 1 => {
            let layout = if case == 0 {
                DataLayout::Nchw
            } else {
                DataLayout::Nhwc
            };
            let x = rand_default(rng, DType::F32, &layout.shape([1, 3, 6, 10]));
            let w = rand_default(rng, DType::F32, &[16, 3, 3, 3]);
            let b = rand_default(rng, DType::F32, &[16]);
            (Op::Conv2d(conv(layout)), vec![x, w, b], OpClass::Conv)
        }
        2 => {
            let x = rand_default(rng, DType::F32, &[1, 8, 6, 10]);
            let w = rand_default(rng, DType::F32, &[8, 1, 3, 3]);
            let b = rand_default(rng, DType::F32, &[8]);
            (
                Op::DepthwiseConv2d(conv(DataLayout::Nchw)),
                vec![x, w, b],
                OpClass::Depthwise,
            )
        }
        3 => {
            let a = rand_default(rng, DType::F32, &[1, 8, 12]);
            let b = rand_default(rng, DType::F32, &[1, 12, 16]);
            (
                Op::MatMul(MatMulAttrs::default()),
                vec![a, b],
                OpClass::MatMul,
            )
        }
        4 => {
            let a = rand_default(rng, DType::F32, &[2, 4, 32]);
            let b = rand_default(rng, DType::F32, &[2, 4, 32]);
            (Op::Binary(BinaryOp::Add), vec![a, b], OpClass::Elementwise)
        }
        _ => {
            let x = rand_default(rng, DType::F32, &[1, 4, 8, 16]);
            let p = PoolAttrs {
                kernel: [2, 2],
                stride: [2, 2],
                pad: [0; 4],
                dilation: [1, 1],
                ceil_mode: false,
                count_include_pad: false,
                layout: Default::default(),
            };
            (Op::AvgPool2d(p), vec![x], OpClass::Pool)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Every point of the auto-tuner's search space is a correct schedule: knobs sampled from
    /// a DAG's space, and mutations and crossovers of them, compute what the reference computes.
    #[test]
    fn search_space_points_compute_the_reference(seed in 0u64..1_000_000, case in 0usize..6) {
        use kiln_operators::schedule::{schedule_with, SearchSpace, SplitMix};
        let mut rng = lowering_common::Rng(seed + 1);
        let (op, inputs, class) = space_case(case, &mut rng);
        let types: Vec<TensorType> = inputs.iter().map(|t| t.ty().clone()).collect();
        let consts: Vec<Option<Tensor>> = inputs.iter().map(|t| Some(t.clone())).collect();
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let want = kiln_operators::evaluate(&op, &refs).unwrap();
        let (b, out) = single_op(&op, &types, &consts).unwrap();
        for target in lowering_common::TARGETS {
            let space = SearchSpace::new(b.dag(), class, &target);
            prop_assert!(space.size() > 1, "{op:?}: {space:?}");
            let mut pick = SplitMix(seed);
            let k = space.sample(&mut pick);
            let m = space.mutate(&k, &mut pick);
            prop_assert_ne!(&k, &m);
            let c = space.crossover(&k, &m, &mut pick);
            for knobs in [k, m, c] {
                let (trace, func) = schedule_with(b.dag(), class, b.keep(), &knobs, &target).unwrap();
                let got = run_func(&func, &b, &inputs, out);
                assert_close(&format!("{op:?} {target:?} {knobs:?} {trace:?}"), &got, &want, 1e-4);
            }
        }
    }
}
