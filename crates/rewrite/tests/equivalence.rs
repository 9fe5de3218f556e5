//! Rewriting preserves meaning: random graphs saturated and extracted compute what they computed
//! before (reference interpreter), and so do the bundled models.

use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{DType, Graph, Op, Tensor, TensorType, ValueId};
use kiln_rewrite::{op_node_count, optimize, LayoutChoice, RewriteOptions};
use proptest::prelude::*;

/// One step of a random graph: an op applied to the current value.
#[derive(Clone, Debug)]
enum Step {
    Transpose(u8),
    Reshape(u8),
    MulConst(i8),
    AddConst(i8),
    Unary(u8),
    Identity,
    BinaryWithInput(u8),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u8>().prop_map(Step::Transpose),
        any::<u8>().prop_map(Step::Reshape),
        (-2i8..3).prop_map(Step::MulConst),
        (-1i8..2).prop_map(Step::AddConst),
        any::<u8>().prop_map(Step::Unary),
        Just(Step::Identity),
        any::<u8>().prop_map(Step::BinaryWithInput),
    ]
}

/// Builds a graph: an f32 input of shape [2,3,4] threaded through `steps`, shape-changing steps
/// keeping the element count; binary steps combine with the (suitably reshaped) input.
fn build(steps: &[Step]) -> Graph {
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::new(DType::F32, vec![2, 3, 4]).unwrap());
    let mut cur: ValueId = x;
    let shapes: [&[usize]; 4] = [&[2, 3, 4], &[6, 4], &[24], &[4, 3, 2]];
    for (i, s) in steps.iter().enumerate() {
        let shape = g.ty(cur).shape.clone();
        let name = format!("n{i}");
        cur = match *s {
            Step::Transpose(p) => {
                let r = shape.len();
                let mut perm: Vec<usize> = (0..r).collect();
                perm.rotate_left(p as usize % r.max(1));
                if p & 0x80 != 0 && r > 1 {
                    perm.swap(0, r - 1);
                }
                g.add_node(Op::Transpose { perm }, &[cur], name).unwrap()
            }
            Step::Reshape(k) => {
                let target = shapes[k as usize % shapes.len()].to_vec();
                g.add_node(Op::Reshape { shape: target }, &[cur], name)
                    .unwrap()
            }
            Step::MulConst(c) | Step::AddConst(c) => {
                let ones = vec![1; shape.len()];
                let k = g.add_const_value(Tensor::new(ones, vec![c as f32]).unwrap(), "k");
                let op = if matches!(s, Step::MulConst(_)) {
                    BinaryOp::Mul
                } else {
                    BinaryOp::Add
                };
                g.add_node(Op::Binary(op), &[cur, k], name).unwrap()
            }
            Step::Unary(u) => {
                let op = [UnaryOp::Negate, UnaryOp::Abs, UnaryOp::Tanh][u as usize % 3];
                g.add_node(Op::Unary(op), &[cur], name).unwrap()
            }
            Step::Identity => g.add_node(Op::Identity, &[cur], name).unwrap(),
            Step::BinaryWithInput(b) => {
                let xs = g
                    .add_node(
                        Op::Reshape {
                            shape: shape.clone(),
                        },
                        &[x],
                        format!("x{i}"),
                    )
                    .unwrap();
                let op = [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Maximum][b as usize % 3];
                g.add_node(Op::Binary(op), &[cur, xs], name).unwrap()
            }
        };
    }
    g.set_outputs(vec![cur]).unwrap();
    g
}

fn input() -> Tensor {
    Tensor::new(
        vec![2, 3, 4],
        (0..24).map(|i| (i as f32 - 11.5) * 0.37).collect(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_compute_the_same_after_rewriting(steps in prop::collection::vec(arb_step(), 1..10)) {
        let g = build(&steps);
        let (after, _) = optimize(&g, &RewriteOptions::default()).unwrap();
        prop_assert!(op_node_count(&after) <= op_node_count(&g));
        let x = [input()];
        let want = kiln_reference::run(&g, &x).unwrap();
        let got = kiln_reference::run(&after, &x).unwrap();
        prop_assert_eq!(want[0].ty(), got[0].ty());
        for (a, b) in want[0].data().to_f64_vec().iter().zip(got[0].data().to_f64_vec()) {
            // Exact: the rules used here change no arithmetic (x*1, movement, -(-x)).
            prop_assert!(a == &b || (a.is_nan() && b.is_nan()), "{} vs {}\n{}\n=>\n{}", a, b, g, after);
        }
    }
}

fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models")
}

#[test]
fn bundled_models_keep_their_outputs_and_lose_their_batch_norms() {
    for name in ["resnet8_cifar", "dscnn_kws"] {
        let dir = models_dir();
        let model =
            kiln_onnx::load_model(&dir.join(format!("{name}.onnx")), &Default::default()).unwrap();
        let g = &model.graph;
        let (after, report) = optimize(g, &RewriteOptions::default()).unwrap();
        let (_, x) =
            kiln_onnx::read_tensor_file(&dir.join(format!("{name}_data/input_0.pb"))).unwrap();
        let (_, want) =
            kiln_onnx::read_tensor_file(&dir.join(format!("{name}_data/output_0.pb"))).unwrap();
        let got = kiln_reference::run(&after, std::slice::from_ref(&x)).unwrap();
        let err = got[0]
            .data()
            .to_f64_vec()
            .iter()
            .zip(want.data().to_f64_vec())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        println!(
            "{name}: {} -> {} nodes, {} iterations ({}), {:.1} ms saturation, max err {err:.2e}, applied {:?}",
            report.nodes_before,
            report.nodes_after,
            report.iterations,
            report.stop_reason,
            report.saturation_ms,
            report.applied
        );
        assert!(err <= 1e-4, "{name}: {err}");
        // Layout changes may add transposes at the ends of a channels-last chain; no other op
        // is ever added.
        let computing = |g: &kiln_ir::Graph| {
            g.nodes()
                .iter()
                .filter(|n| {
                    !matches!(
                        n.op,
                        Op::Const(_) | Op::Transpose { .. } | Op::Reshape { .. }
                    )
                })
                .count()
        };
        assert!(computing(&after) <= computing(g), "{name}");
        // No multiply or add by a per-channel constant right after a convolution is left.
        for n in after.nodes() {
            if let Op::Binary(BinaryOp::Mul | BinaryOp::Add) = n.op {
                let from_conv = n.inputs.iter().any(|&v| {
                    after.nodes().iter().any(|m| {
                        m.output == v && matches!(m.op, Op::Conv2d(_) | Op::DepthwiseConv2d(_))
                    })
                });
                let constant = n.inputs.iter().any(|&v| after.const_of(v).is_some());
                assert!(
                    !(from_conv && constant),
                    "{name}: {} left after a conv",
                    n.op.name()
                );
            }
        }
    }
}

/// A step of a random convolutional chain on an NCHW f32 tensor.
#[derive(Clone, Debug)]
enum ConvStep {
    /// 3x3 or 1x1 convolution (depthwise when the flag is set) with pseudo-random weights.
    Conv { seed: u8, k3: bool, depthwise: bool },
    /// Per-channel (or scalar) multiply or add by a constant, either operand order.
    Affine {
        seed: u8,
        add: bool,
        scalar: bool,
        left: bool,
    },
    /// Zero padding of H and W.
    Pad(u8),
    /// Clamp to [0, 6].
    Relu6,
    /// To NHWC, negate, back to NCHW.
    RoundTrip,
}

fn arb_conv_step() -> impl Strategy<Value = ConvStep> {
    prop_oneof![
        (any::<u8>(), any::<bool>(), any::<bool>()).prop_map(|(seed, k3, depthwise)| {
            ConvStep::Conv {
                seed,
                k3,
                depthwise,
            }
        }),
        (any::<u8>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(seed, add, scalar, left)| ConvStep::Affine {
                seed,
                add,
                scalar,
                left
            }
        ),
        any::<u8>().prop_map(ConvStep::Pad),
        Just(ConvStep::Relu6),
        Just(ConvStep::RoundTrip),
    ]
}

fn pseudo(seed: u8, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37 + seed as usize * 101 + 7) % 29) as f32 - 14.0) / 16.0)
        .collect()
}

fn build_conv(steps: &[ConvStep]) -> Graph {
    let mut g = Graph::new();
    let mut cur = g.add_input("x", TensorType::new(DType::F32, vec![1, 3, 6, 6]).unwrap());
    for (i, s) in steps.iter().enumerate() {
        let shape = g.ty(cur).shape.clone();
        let c = shape[1];
        let name = format!("n{i}");
        cur = match *s {
            ConvStep::Conv {
                seed,
                k3,
                depthwise,
            } => {
                let k = if k3 && shape[2] >= 3 && shape[3] >= 3 {
                    3
                } else {
                    1
                };
                let (o, ci) = if depthwise {
                    (c, 1)
                } else {
                    (2 + seed as usize % 3, c)
                };
                let w = Tensor::new(vec![o, ci, k, k], pseudo(seed, o * ci * k * k)).unwrap();
                let b = Tensor::new(vec![o], pseudo(seed.wrapping_add(1), o)).unwrap();
                let (w, b) = (g.add_const_value(w, "w"), g.add_const_value(b, "b"));
                let attrs = kiln_ir::op::ConvAttrs {
                    stride: [1, 1],
                    dilation: [1, 1],
                    ..Default::default()
                };
                let op = if depthwise {
                    Op::DepthwiseConv2d(attrs)
                } else {
                    Op::Conv2d(attrs)
                };
                g.add_node(op, &[cur, w, b], name).unwrap()
            }
            ConvStep::Affine {
                seed,
                add,
                scalar,
                left,
            } => {
                let ch = if scalar { 1 } else { c };
                let k = Tensor::new(vec![1, ch, 1, 1], pseudo(seed, ch)).unwrap();
                let k = g.add_const_value(k, "k");
                let op = Op::Binary(if add { BinaryOp::Add } else { BinaryOp::Mul });
                let args = if left { [k, cur] } else { [cur, k] };
                g.add_node(op, &args, name).unwrap()
            }
            ConvStep::Pad(p) => {
                let (a, b) = ((p % 2) as usize, (p / 2 % 2) as usize);
                g.add_node(
                    Op::Pad {
                        pads: vec![[0, 0], [0, 0], [a, b], [b, a]],
                        mode: kiln_ir::op::PadMode::Constant,
                        value: kiln_ir::OrderedF64(0.0),
                    },
                    &[cur],
                    name,
                )
                .unwrap()
            }
            ConvStep::Relu6 => g
                .add_node(
                    Op::Clamp {
                        min: kiln_ir::OrderedF64(0.0),
                        max: kiln_ir::OrderedF64(6.0),
                    },
                    &[cur],
                    name,
                )
                .unwrap(),
            ConvStep::RoundTrip => {
                let t = g
                    .add_node(
                        Op::Transpose {
                            perm: vec![0, 2, 3, 1],
                        },
                        &[cur],
                        format!("t{i}"),
                    )
                    .unwrap();
                let n = g
                    .add_node(Op::Unary(UnaryOp::Negate), &[t], format!("neg{i}"))
                    .unwrap();
                g.add_node(
                    Op::Transpose {
                        perm: vec![0, 3, 1, 2],
                    },
                    &[n],
                    name,
                )
                .unwrap()
            }
        };
    }
    g.set_outputs(vec![cur]).unwrap();
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn random_conv_chains_compute_the_same_after_rewriting(
        steps in prop::collection::vec(arb_conv_step(), 1..8),
        channels_last: bool,
    ) {
        let g = build_conv(&steps);
        // Forcing channels-last exercises every rule on NHWC convolutions too.
        let layout = if channels_last { LayoutChoice::Nhwc } else { LayoutChoice::Auto };
        let options = RewriteOptions { layout, ..RewriteOptions::default() };
        let (after, _) = optimize(&g, &options).unwrap();
        let x = [Tensor::new(vec![1, 3, 6, 6], pseudo(3, 108)).unwrap()];
        let want = kiln_reference::run(&g, &x).unwrap();
        let got = kiln_reference::run(&after, &x).unwrap();
        prop_assert_eq!(want[0].ty(), got[0].ty());
        let scale = want[0].data().to_f64_vec().iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (a, b) in want[0].data().to_f64_vec().iter().zip(got[0].data().to_f64_vec()) {
            // Folding scales into weights rounds differently: relative to the output's range.
            prop_assert!((a - b).abs() <= 1e-5 * scale, "{} vs {}\n{}\n=>\n{}", a, b, g, after);
        }
    }
}
