//! Whole graphs through `lower_graph`: fusion groups become single kernels, and the bundled
//! models run kernel by kernel in the TIR interpreter match `kiln_reference::run`.

mod lowering_common;

use kiln_ir::op::{BinaryOp, ConvAttrs, DataLayout, PoolAttrs, UnaryOp};
use kiln_ir::{DType, Graph, Op, OrderedF64, Tensor, TensorType};
use kiln_operators::fusion::partition;
use kiln_operators::kernel::{lower_graph, run_kernels, KernelInput};
use kiln_operators::schedule::OpClass;
use lowering_common::*;
use std::path::PathBuf;

fn conv_attrs() -> ConvAttrs {
    ConvAttrs {
        pad: [1, 1, 1, 1],
        stride: [1, 1],
        dilation: [1, 1],
        input_zp: 0,
        weight_zp: 0,
        layout: DataLayout::Nchw,
        fma: false,
    }
}

fn compare(graph: &Graph, inputs: &[Tensor], rel: f64) -> usize {
    graph.verify().unwrap();
    let kernels = lower_graph(graph).unwrap_or_else(|e| panic!("{e}"));
    let got = run_kernels(graph, &kernels, inputs).unwrap();
    let want = kiln_reference::run(graph, inputs).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("output {i}"), g, w, rel);
    }
    kernels.len()
}

#[test]
fn conv_bias_relu_is_one_kernel() {
    let mut rng = Rng(21);
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::new(DType::F32, vec![1, 3, 8, 8]).unwrap());
    let w = g.add_const_value(rand_default(&mut rng, DType::F32, &[8, 3, 3, 3]), "w");
    let zero = g.add_const_value(Tensor::new(vec![1], vec![0f32]).unwrap(), "b0");
    let c = g
        .add_node(Op::Conv2d(conv_attrs()), &[x, w, zero], "conv")
        .unwrap();
    let bias = g.add_const_value(rand_default(&mut rng, DType::F32, &[1, 8, 1, 1]), "bias");
    let a = g
        .add_node(Op::Binary(BinaryOp::Add), &[c, bias], "add")
        .unwrap();
    let r = g
        .add_node(
            Op::Clamp {
                min: OrderedF64(0.0),
                max: OrderedF64(f64::INFINITY),
            },
            &[a],
            "relu",
        )
        .unwrap();
    g.set_outputs(vec![r]).unwrap();
    let groups = partition(&g);
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].class, OpClass::Conv);
    assert_eq!(groups[0].nodes.len(), 3);
    let kernels = lower_graph(&g).unwrap();
    assert_eq!(kernels.len(), 1);
    let k = &kernels[0];
    assert_eq!(k.outputs, vec![r]);
    assert!(k.inputs.contains(&KernelInput::Value(x)));
    // One loop nest: the conv is computed at the epilogue's tile loop, the add is inlined.
    assert!(k
        .trace
        .0
        .iter()
        .any(|i| matches!(i, kiln_tir::Instruction::ComputeAt { .. })));
    let input = rand_default(&mut rng, DType::F32, &[1, 3, 8, 8]);
    assert_eq!(compare(&g, &[input], 1e-4), 1);
}

#[test]
fn residual_and_chains_fuse_reshape_aliases() {
    let mut rng = Rng(22);
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::new(DType::F32, vec![1, 4, 6, 8]).unwrap());
    let e = g.add_node(Op::Unary(UnaryOp::Exp), &[x], "exp").unwrap();
    let n = g.add_node(Op::Unary(UnaryOp::Negate), &[e], "neg").unwrap();
    let w = g.add_const_value(rand_default(&mut rng, DType::F32, &[4, 4, 3, 3]), "w");
    let b = g.add_const_value(rand_default(&mut rng, DType::F32, &[4]), "b");
    let c = g
        .add_node(Op::Conv2d(conv_attrs()), &[n, w, b], "conv")
        .unwrap();
    let a = g
        .add_node(Op::Binary(BinaryOp::Add), &[c, n], "residual")
        .unwrap();
    let t = g.add_node(Op::Unary(UnaryOp::Tanh), &[a], "tanh").unwrap();
    let r = g
        .add_node(
            Op::Reshape {
                shape: vec![1, 192],
            },
            &[t],
            "flat",
        )
        .unwrap();
    g.set_outputs(vec![r]).unwrap();
    let groups = partition(&g);
    // exp+neg (neg has two consumers, so the chain stops there), conv+add+tanh, reshape.
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert_eq!(groups[1].nodes.len(), 3);
    assert!(groups[2].alias);
    let input = rand_default(&mut rng, DType::F32, &[1, 4, 6, 8]);
    assert_eq!(compare(&g, &[input], 1e-4), 3);
}

#[test]
fn int8_conv_rescale_chain() {
    let mut rng = Rng(23);
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::new(DType::I8, vec![1, 2, 5, 8]).unwrap());
    let w = g.add_const_value(rand_default(&mut rng, DType::I8, &[4, 2, 3, 3]), "w");
    let b = g.add_const_value(rand(&mut rng, DType::I32, &[4], -500, 500), "b");
    let a = ConvAttrs {
        input_zp: -2,
        weight_zp: 1,
        ..conv_attrs()
    };
    let c = g.add_node(Op::Conv2d(a), &[x, w, b], "conv").unwrap();
    let r = g
        .add_node(
            Op::Rescale(kiln_ir::op::RescaleAttrs {
                to: DType::I8,
                multiplier: vec![1_200_000_000, 1_500_000_000, 1 << 30, 2_000_000_000],
                shift: vec![40, 41, 39, 42],
                input_zp: 0,
                output_zp: -1,
                scale32: true,
                rounding: kiln_ir::op::RoundingMode::Double,
                channel_axis: Some(1),
            }),
            &[c],
            "rescale",
        )
        .unwrap();
    let cl = g
        .add_node(
            Op::Clamp {
                min: OrderedF64(-1.0),
                max: OrderedF64(127.0),
            },
            &[r],
            "relu",
        )
        .unwrap();
    g.set_outputs(vec![cl]).unwrap();
    let input = rand_default(&mut rng, DType::I8, &[1, 2, 5, 8]);
    assert_eq!(compare(&g, &[input], 0.0), 1);
}

fn model_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/models")
        .join(name)
}

fn check_model(name: &str) {
    let model = kiln_onnx::load_model(
        &model_path(&format!("{name}.onnx")),
        &kiln_onnx::ImportOptions::default(),
    )
    .unwrap();
    let (_, input) =
        kiln_onnx::read_tensor_file(&model_path(&format!("{name}_data/input_0.pb"))).unwrap();
    let g = &model.graph;
    let kernels = lower_graph(g).unwrap_or_else(|e| panic!("{name}: {e}"));
    let nodes = g
        .nodes()
        .iter()
        .filter(|n| !matches!(n.op, Op::Const(_)))
        .count();
    assert!(kernels.len() < nodes, "{name}: no fusion happened");
    // Every input param is read: weights replaced by their pre-transposed tables are not passed
    // (nor embedded) beside them; and no weight is bound twice over.
    for k in &kernels {
        let used = k.func.body.buffers_accessed();
        for (i, p) in k.func.params.iter().enumerate().take(k.inputs.len()) {
            assert!(
                used.contains(p),
                "{name}: kernel {} never reads param {i}",
                k.name
            );
        }
    }
    let embedded: usize = kernels
        .iter()
        .flat_map(|k| &k.inputs)
        .map(|i| match i {
            KernelInput::Const(c) => g.constant(*c).ty().byte_size(),
            KernelInput::Table(t) => t.ty().byte_size(),
            KernelInput::Value(_) => 0,
        })
        .sum();
    let weights: usize = g.consts().iter().map(|t| t.ty().byte_size()).sum();
    // (int8 models also bind RESCALE's per-channel multiplier and shift tables.)
    let extra = if name.contains("int8") {
        weights / 2
    } else {
        weights / 20
    };
    assert!(
        embedded <= weights + extra,
        "{name}: kernels bind {embedded} bytes of constants for {weights} bytes of weights"
    );
    let got = run_kernels(g, &kernels, std::slice::from_ref(&input)).unwrap();
    let want = kiln_reference::run(g, &[input]).unwrap();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert_eq!(a.ty(), b.ty());
        let (a, b) = (a.data().to_f64_vec(), b.data().to_f64_vec());
        for (j, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= 1e-4, "{name} output {i}[{j}]: {x} vs {y}");
        }
    }
}

#[test]
fn resnet8_kernels_match_reference() {
    check_model("resnet8_cifar");
}

#[test]
fn dscnn_kernels_match_reference() {
    check_model("dscnn_kws");
}

/// The int8 ResNet-8 (QDQ import: integer conv + RESCALE chains), when the asset is present.
#[test]
fn resnet8_int8_kernels_match_reference() {
    if model_path("resnet8_cifar_int8.onnx").exists() {
        check_model("resnet8_cifar_int8");
    }
}

#[test]
fn kernel_counts_of_models() {
    for name in ["resnet8_cifar", "dscnn_kws"] {
        let model = kiln_onnx::load_model(
            &model_path(&format!("{name}.onnx")),
            &kiln_onnx::ImportOptions::default(),
        )
        .unwrap();
        let kernels = lower_graph(&model.graph).unwrap();
        let anchored = kernels
            .iter()
            .filter(|k| {
                matches!(
                    k.class,
                    OpClass::Conv | OpClass::Depthwise | OpClass::MatMul
                )
            })
            .count();
        let nodes = model
            .graph
            .nodes()
            .iter()
            .filter(|n| !matches!(n.op, Op::Const(_)))
            .count();
        eprintln!(
            "{name}: {nodes} nodes -> {} kernels ({anchored} anchored)",
            kernels.len()
        );
        assert!(anchored > 0);
    }
}

#[test]
fn padded_convolutions_and_pools_read_their_producers_padded_output() {
    // conv 1x1 + relu6 (NHWC) -> depthwise 3x3 pad 1 -> conv 3x3 stride 2 pad 1 -> max pool
    // 3x3 stride 2 pad 1 (ceil mode): every padded op's input comes from another kernel, which
    // writes it padded (with -inf for the pool: the conv's outputs go negative).
    let mut rng = Rng(5);
    let nhwc = |pad: usize, stride: usize| ConvAttrs {
        pad: [pad; 4],
        stride: [stride, stride],
        layout: DataLayout::Nhwc,
        ..conv_attrs()
    };
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::new(DType::F32, vec![1, 9, 7, 4]).unwrap());
    let w1 = g.add_const_value(rand_default(&mut rng, DType::F32, &[8, 4, 1, 1]), "w1");
    let b1 = g.add_const_value(rand_default(&mut rng, DType::F32, &[8]), "b1");
    let c1 = g
        .add_node(Op::Conv2d(nhwc(0, 1)), &[x, w1, b1], "pw")
        .unwrap();
    let r = g
        .add_node(
            Op::Clamp {
                min: OrderedF64(0.0),
                max: OrderedF64(6.0),
            },
            &[c1],
            "relu6",
        )
        .unwrap();
    let wd = g.add_const_value(rand_default(&mut rng, DType::F32, &[8, 1, 3, 3]), "wd");
    let bd = g.add_const_value(rand_default(&mut rng, DType::F32, &[8]), "bd");
    let d = g
        .add_node(Op::DepthwiseConv2d(nhwc(1, 1)), &[r, wd, bd], "dw")
        .unwrap();
    let w3 = g.add_const_value(rand_default(&mut rng, DType::F32, &[4, 8, 3, 3]), "w3");
    let b3 = g.add_const_value(rand_default(&mut rng, DType::F32, &[4]), "b3");
    let c3 = g
        .add_node(Op::Conv2d(nhwc(1, 2)), &[d, w3, b3], "c3")
        .unwrap();
    let pool = PoolAttrs {
        kernel: [3, 3],
        stride: [2, 2],
        pad: [1; 4],
        dilation: [1, 1],
        ceil_mode: true,
        count_include_pad: false,
        layout: DataLayout::Nhwc,
    };
    let p = g.add_node(Op::MaxPool2d(pool), &[c3], "pool").unwrap();
    g.set_outputs(vec![p]).unwrap();
    let inputs = vec![rand_default(&mut rng, DType::F32, &[1, 9, 7, 4])];
    let want = kiln_reference::run(&g, &inputs).unwrap();
    let (placed, groups) = kiln_operators::placement::place_padding(&g, &partition(&g))
        .expect("two convolutions and a pool qualify");
    let pads: Vec<f64> = placed
        .nodes()
        .iter()
        .filter_map(|n| match n.op {
            Op::Pad { value, .. } => Some(value.0),
            _ => None,
        })
        .collect();
    assert_eq!(pads, [0.0, 0.0, f64::NEG_INFINITY], "{placed}");
    // The placed graph means the same, and its kernels (for targets with and without
    // micro-kernels) compute it.
    let again = kiln_reference::run(&placed, &inputs).unwrap();
    assert_close("placed graph", &again[0], &want[0], 1e-5);
    for target in TARGETS {
        let kernels = kiln_operators::kernel::lower_groups_with(
            &placed,
            &groups,
            &Default::default(),
            &target,
        )
        .unwrap();
        assert_eq!(kernels.len(), 4);
        let got = run_kernels(&placed, &kernels, &inputs).unwrap();
        assert_close(&format!("{target:?}"), &got[0], &want[0], 1e-4);
        // No kernel copies an input into a padded local.
        for k in &kernels {
            assert!(!k.func.to_string().contains("pad_nhwc"), "{}", k.func);
        }
    }
}

#[test]
fn padded_int8_convolutions_read_their_producers_output_padded_with_the_zero_point() {
    // int8 1x1 conv + requantisation -> depthwise 3x3 pad 1 -> conv 3x3 pad 1 (8 input
    // channels, quadruples), all channels-last, activations with zero point -7: each padded
    // op's producer writes its input padded with -7, exactly as the padded copy would.
    let mut rng = Rng(9);
    let mut w = |n: usize| -> String {
        let v: Vec<String> = (0..n)
            .map(|_| ((rng.next() % 61) as i64 - 30).to_string())
            .collect();
        v.join(", ")
    };
    let requant = |from: usize, shape: &str| {
        format!(
            "  %{a}: f32{shape} = cast(%{from}) {{\"to\":\"f32\"}}
  %{b}: f32{shape} = mul(%{a}, %90)
  %{c}: f32{shape} = round(%{b})
  %{d}: f32{shape} = clamp(%{c}) {{\"max\":120.0,\"min\":-128.0}}
  %{e}: i8{shape} = cast(%{d}) {{\"to\":\"i8\"}}
",
            a = from + 1,
            b = from + 2,
            c = from + 3,
            d = from + 4,
            e = from + 5
        )
    };
    let conv = |op: &str, x: usize, wv: usize, pad: usize| {
        format!(
            "{op}(%{x}, %{wv}, %91) {{\"dilation\":[1,1],\"input_zp\":-7,\"layout\":\"nhwc\",\"pad\":[{pad},{pad},{pad},{pad}],\"stride\":[1,1],\"weight_zp\":0}}"
        )
    };
    let text = format!(
        "graph {{
  const @0: i8[8,4,1,1] = [{w0}]
  const @1: i8[8,1,3,3] = [{w1}]
  const @2: i8[8,8,3,3] = [{w2}]
  const @3: f32[1,1,1,1] = [0.02]
  const @4: i32[8] = [5, -3, 0, 7, 1, -2, 4, 9]
  input %0 \"x\": i8[1,6,5,4]
  %90: f32[1,1,1,1] = const(@3)
  %91: i32[8] = const(@4)
  %80: i8[8,4,1,1] = const(@0)
  %81: i8[8,1,3,3] = const(@1)
  %82: i8[8,8,3,3] = const(@2)
  %1: i32[1,6,5,8] = {c1}
{r1}  %7: i32[1,6,5,8] = {c2}
{r2}  %13: i32[1,6,5,8] = {c3}
{r3}  output %18
}}",
        w0 = w(32),
        w1 = w(72),
        w2 = w(576),
        c1 = conv("conv2d", 0, 80, 0),
        r1 = requant(1, "[1,6,5,8]"),
        c2 = conv("depthwise_conv2d", 6, 81, 1),
        r2 = requant(7, "[1,6,5,8]"),
        c3 = conv("conv2d", 12, 82, 1),
        r3 = requant(13, "[1,6,5,8]"),
    );
    let g = kiln_ir::parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let data: Vec<i8> = (0..120).map(|i| ((i * 37) % 256) as u8 as i8).collect();
    let inputs = vec![Tensor::new(vec![1, 6, 5, 4], data).unwrap()];
    let want = kiln_reference::run(&g, &inputs).unwrap();
    let (placed, groups) = kiln_operators::placement::place_padding(&g, &partition(&g))
        .expect("both padded convolutions qualify");
    let pads: Vec<f64> = placed
        .nodes()
        .iter()
        .filter_map(|n| match n.op {
            Op::Pad { value, .. } => Some(value.0),
            _ => None,
        })
        .collect();
    assert_eq!(pads, [-7.0, -7.0], "{placed}");
    for target in TARGETS {
        let kernels = kiln_operators::kernel::lower_groups_with(
            &placed,
            &groups,
            &Default::default(),
            &target,
        )
        .unwrap();
        let got = run_kernels(&placed, &kernels, &inputs).unwrap();
        assert_eq!(got[0], want[0], "{target:?}");
        for k in &kernels {
            assert!(!k.func.to_string().contains("pad_nhwc"), "{}", k.func);
        }
    }
}
