//! Every rule proves its goal (`before => after`) on a small graph in the IR text form, and the
//! rewritten graph computes what the original computes (reference interpreter).

use kiln_ir::op::DataLayout;
use kiln_ir::Op;
use kiln_ir::{parse_graph, DType, Graph, Tensor};
use kiln_rewrite::{optimize, LayoutChoice, RewriteOptions};

/// Deterministic inputs in [-2, 2).
fn inputs(g: &Graph) -> Vec<Tensor> {
    g.inputs()
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let ty = g.ty(v);
            let n = ty.num_elements();
            let vals: Vec<f64> = (0..n)
                .map(|i| (((i * 7919 + k * 104_729 + 13) % 4001) as f64 / 1000.25) - 2.0)
                .collect();
            match ty.dtype {
                DType::F32 => {
                    Tensor::new(ty.shape.clone(), vals.iter().map(|&x| x as f32).collect()).unwrap()
                }
                DType::I32 => Tensor::new(
                    ty.shape.clone(),
                    vals.iter().map(|&x| (x * 10.0) as i32).collect(),
                )
                .unwrap(),
                other => panic!("test inputs of {other}"),
            }
        })
        .collect()
}

/// Optimizes `before`; checks that the result has `present` ops and none of `absent` (by op
/// name), and that it computes the same outputs within `tol`. Returns the rewritten graph.
fn prove(before: &str, present: &[&str], absent: &[&str], tol: f64) -> Graph {
    prove_with(&RewriteOptions::default(), before, present, absent, tol)
}

/// [`prove`] under `options`.
fn prove_with(
    options: &RewriteOptions,
    before: &str,
    present: &[&str],
    absent: &[&str],
    tol: f64,
) -> Graph {
    let g = parse_graph(before).unwrap_or_else(|e| panic!("{e}\n{before}"));
    let (after, report) = optimize(&g, options).unwrap();
    let text = after.to_string();
    let names: Vec<&str> = after.nodes().iter().map(|n| n.op.name()).collect();
    for p in present {
        assert!(
            names.contains(p),
            "{p} missing after rewriting:\n{text}\n{report:?}"
        );
    }
    for a in absent {
        assert!(
            !names.contains(a),
            "{a} left after rewriting:\n{text}\n{report:?}"
        );
    }
    let x = inputs(&g);
    let want = kiln_reference::run(&g, &x).unwrap();
    let got = kiln_reference::run(&after, &x).unwrap();
    for (w, o) in want.iter().zip(&got) {
        assert_eq!(w.ty(), o.ty());
        for (a, b) in w.data().to_f64_vec().iter().zip(o.data().to_f64_vec()) {
            assert!((a - b).abs() <= tol * (1.0 + a.abs()), "{a} vs {b}\n{text}");
        }
    }
    after
}

#[test]
fn transpose_pairs_compose_or_cancel() {
    prove(
        r#"graph {
  input %0 "x": f32[2,3,4]
  %1: f32[3,2,4] = transpose(%0) {"perm":[1,0,2]}
  %2: f32[2,3,4] = transpose(%1) {"perm":[1,0,2]}
  output %2
}"#,
        &[],
        &["transpose"],
        0.0,
    );
    let after = prove(
        r#"graph {
  input %0 "x": f32[2,3,4]
  %1: f32[3,4,2] = transpose(%0) {"perm":[1,2,0]}
  %2: f32[4,3,2] = transpose(%1) {"perm":[1,0,2]}
  output %2
}"#,
        &["transpose"],
        &[],
        0.0,
    );
    assert_eq!(kiln_rewrite::op_node_count(&after), 1);
}

#[test]
fn reshape_chains_collapse_and_no_op_movement_vanishes() {
    let after = prove(
        r#"graph {
  input %0 "x": f32[2,3,4]
  %1: f32[6,4] = reshape(%0) {"shape":[6,4]}
  %2: f32[24] = reshape(%1) {"shape":[24]}
  output %2
}"#,
        &["reshape"],
        &[],
        0.0,
    );
    assert_eq!(kiln_rewrite::op_node_count(&after), 1);
    prove(
        r#"graph {
  input %0 "x": f32[2,3]
  %1: f32[2,3] = identity(%0)
  %2: f32[2,3] = reshape(%1) {"shape":[2,3]}
  %3: f32[2,3] = transpose(%2) {"perm":[0,1]}
  %4: f32[2,3] = abs(%3)
  output %4
}"#,
        &["abs"],
        &["identity", "reshape", "transpose"],
        0.0,
    );
}

#[test]
fn neutral_elements_vanish_unless_they_broadcast_or_touch_the_sign_of_zero() {
    prove(
        r#"graph {
  const @0: f32[1,1] = [1]
  input %0 "x": f32[2,3]
  %1: f32[1,1] = const(@0)
  %2: f32[2,3] = mul(%0, %1)
  %3: f32[2,3] = mul(%1, %2)
  %4: f32[2,3] = abs(%3)
  output %4
}"#,
        &["abs"],
        &["mul"],
        0.0,
    );
    // Broadcasting widens x: the multiplication stays (it is a broadcast copy).
    prove(
        r#"graph {
  const @0: f32[2,3] = [1, 1, 1, 1, 1, 1]
  input %0 "x": f32[1,3]
  %1: f32[2,3] = const(@0)
  %2: f32[2,3] = mul(%0, %1)
  output %2
}"#,
        &["mul"],
        &[],
        0.0,
    );
    // Integers: x + 0 and x - 0 are x; floats keep x + 0 (-0.0 + 0 = +0.0).
    prove(
        r#"graph {
  const @0: i32[1] = [0]
  input %0 "x": i32[4]
  %1: i32[1] = const(@0)
  %2: i32[4] = add(%1, %0)
  %3: i32[4] = sub(%2, %1)
  %4: i32[4] = abs(%3)
  output %4
}"#,
        &["abs"],
        &["add", "sub"],
        0.0,
    );
    prove(
        r#"graph {
  const @0: f32[1] = [0]
  input %0 "x": f32[4]
  %1: f32[1] = const(@0)
  %2: f32[4] = add(%0, %1)
  output %2
}"#,
        &["add"],
        &[],
        0.0,
    );
}

#[test]
fn double_negation_vanishes() {
    prove(
        r#"graph {
  input %0 "x": f32[5]
  %1: f32[5] = negate(%0)
  %2: f32[5] = negate(%1)
  %3: f32[5] = exp(%2)
  output %3
}"#,
        &["exp"],
        &["negate"],
        0.0,
    );
}

#[test]
fn constant_subgraphs_fold() {
    let after = prove(
        r#"graph {
  const @0: f32[3] = [1, 2, 3]
  const @1: f32[3] = [0.5, 0.25, 2]
  input %0 "x": f32[3]
  %1: f32[3] = const(@0)
  %2: f32[3] = const(@1)
  %3: f32[3] = mul(%1, %2)
  %4: f32[3] = exp(%3)
  %5: f32[3] = add(%0, %4)
  output %5
}"#,
        &["add"],
        &["mul", "exp"],
        0.0,
    );
    assert_eq!(kiln_rewrite::op_node_count(&after), 1);
}

/// conv -> mul(scale) -> add(shift): BatchNormalization as the importer writes it.
const CONV_BN: &str = r#"graph {
  const @0: f32[2,1,3,3] = [1, 0, -1, 2, 0, -2, 1, 0, -1, 0.5, 0.25, 0, 0, 0, 0, 0, 0, 3]
  const @1: f32[2] = [0.5, -0.5]
  const @2: f32[1,2,1,1] = [2, -0.25]
  const @3: f32[1,2,1,1] = [0.125, 4]
  input %0 "image": f32[1,1,5,5]
  %1: f32[2,1,3,3] = const(@0)
  %2: f32[2] = const(@1)
  %3: f32[1,2,3,3] = conv2d(%0, %1, %2) {"dilation":[1,1],"input_zp":0,"pad":[0,0,0,0],"stride":[1,1],"weight_zp":0}
  %4: f32[1,2,1,1] = const(@2)
  %5: f32[1,2,3,3] = mul(%3, %4)
  %6: f32[1,2,1,1] = const(@3)
  %7: f32[1,2,3,3] = add(%6, %5)
  %8: f32[1,2,3,3] = clamp(%7) {"max":6.0,"min":0.0}
  output %8
}"#;

#[test]
fn batch_norm_scale_and_shift_fold_into_the_convolution() {
    let after = prove(CONV_BN, &["conv2d", "clamp"], &["mul", "add"], 1e-6);
    assert_eq!(kiln_rewrite::op_node_count(&after), 2);
}

#[test]
fn zero_padding_folds_into_the_convolution() {
    let after = prove(
        r#"graph {
  const @0: f32[2,1,3,3] = [1, 0, -1, 2, 0, -2, 1, 0, -1, 0.5, 0.25, 0, 0, 0, 0, 0, 0, 3]
  const @1: f32[2] = [0.5, -0.5]
  input %0 "image": f32[1,1,5,5]
  %1: f32[1,1,7,8] = pad(%0) {"mode":"constant","pads":[[0,0],[0,0],[1,1],[2,1]],"value":0.0}
  %2: f32[2,1,3,3] = const(@0)
  %3: f32[2] = const(@1)
  %4: f32[1,2,5,6] = conv2d(%1, %2, %3) {"dilation":[1,1],"input_zp":0,"pad":[0,0,0,0],"stride":[1,1],"weight_zp":0}
  output %4
}"#,
        &["conv2d"],
        &["pad"],
        0.0,
    );
    let conv = after
        .nodes()
        .iter()
        .find(|n| n.op.name() == "conv2d")
        .unwrap();
    match &conv.op {
        kiln_ir::Op::Conv2d(a) => assert_eq!(a.pad, [1, 1, 2, 1]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rewriting_is_deterministic_and_keeps_the_signature() {
    let g = parse_graph(CONV_BN).unwrap();
    let (a, _) = optimize(&g, &RewriteOptions::default()).unwrap();
    let (b, _) = optimize(&g, &RewriteOptions::default()).unwrap();
    assert_eq!(a.to_string(), b.to_string());
    assert_eq!(a.inputs().len(), g.inputs().len());
    assert_eq!(a.value(a.inputs()[0]).name.as_deref(), Some("image"));
    assert_eq!(a.ty(a.outputs()[0]), g.ty(g.outputs()[0]));
}

#[test]
fn transposes_sink_through_elementwise_ops_and_cancel() {
    // NCHW -> NHWC, relu and a per-channel bias in NHWC, back to NCHW: no transpose is left.
    let after = prove(
        r#"graph {
  const @0: f32[1,1,1,3] = [0.5, -1, 2]
  input %0 "x": f32[1,3,2,2]
  input %1 "y": f32[1,3,2,2]
  %2: f32[1,2,2,3] = transpose(%0) {"perm":[0,2,3,1]}
  %3: f32[1,2,2,3] = transpose(%1) {"perm":[0,2,3,1]}
  %4: f32[1,2,2,3] = clamp(%2) {"max":"inf","min":0.0}
  %5: f32[1,1,1,3] = const(@0)
  %6: f32[1,2,2,3] = add(%4, %5)
  %7: f32[1,2,2,3] = mul(%3, %6)
  %8: f32[1,3,2,2] = transpose(%7) {"perm":[0,3,1,2]}
  output %8
}"#,
        &["clamp", "add", "mul"],
        &["transpose"],
        0.0,
    );
    assert_eq!(kiln_rewrite::op_node_count(&after), 3);
}

#[test]
fn slices_compose_vanish_when_full_and_see_through_concats() {
    prove(
        r#"graph {
  input %0 "x": f32[4,10]
  %1: f32[4,10] = slice(%0) {"size":[4,10],"start":[0,0],"stride":[1,1]}
  %2: f32[2,4] = slice(%1) {"size":[2,4],"start":[1,1],"stride":[2,2]}
  %3: f32[1,2] = slice(%2) {"size":[1,2],"start":[1,1],"stride":[1,2]}
  output %3
}"#,
        &["slice"],
        &[],
        0.0,
    );
    let after = prove(
        r#"graph {
  input %0 "a": f32[2,3]
  input %1 "b": f32[2,5]
  %2: f32[2,8] = concat(%0, %1) {"axis":1}
  %3: f32[2,5] = slice(%2) {"size":[2,5],"start":[0,3],"stride":[1,1]}
  %4: f32[2,3] = slice(%2) {"size":[2,3],"start":[0,0],"stride":[1,1]}
  %5: f32[2,3] = concat(%4) {"axis":0}
  %6: f32[2,5] = exp(%3)
  %7: f32[2,3] = exp(%5)
  output %6
  output %7
}"#,
        &["exp"],
        &["slice", "concat"],
        0.0,
    );
    assert_eq!(kiln_rewrite::op_node_count(&after), 2);
}

#[test]
fn transposes_move_through_concats_and_cancel() {
    // Two channels-last branches joined in NCHW and brought back to NHWC (a fire module between
    // channels-last convolutions): the concat runs channels-last and no transpose is left.
    for n in [2, 3, 4] {
        let mut text = String::from("graph {\n");
        for i in 0..n {
            text += &format!("  input %{i} \"x{i}\": f32[1,2,2,{}]\n", i + 1);
        }
        let mut operands = vec![];
        for i in 0..n {
            text += &format!(
                "  %{}: f32[1,{},2,2] = transpose(%{i}) {{\"perm\":[0,3,1,2]}}\n",
                n + i,
                i + 1
            );
            operands.push(format!("%{}", n + i));
        }
        let channels: usize = (1..=n).sum();
        text += &format!(
            "  %{}: f32[1,{channels},2,2] = concat({}) {{\"axis\":1}}\n",
            2 * n,
            operands.join(", ")
        );
        text += &format!(
            "  %{}: f32[1,2,2,{channels}] = transpose(%{}) {{\"perm\":[0,2,3,1]}}\n",
            2 * n + 1,
            2 * n
        );
        text += &format!("  output %{}\n}}", 2 * n + 1);
        let after = prove(&text, &["concat"], &["transpose"], 0.0);
        assert_eq!(kiln_rewrite::op_node_count(&after), 1, "{n} operands");
    }
}

#[test]
fn slices_move_under_transposes_and_the_transposes_cancel() {
    // A channel slice of a channels-last value seen in NCHW, brought back to NHWC: the slice
    // runs channels-last (a strided one too) and no transpose is left.
    let after = prove(
        r#"graph {
  input %0 "x": f32[1,3,4,6]
  %1: f32[1,6,3,4] = transpose(%0) {"perm":[0,3,1,2]}
  %2: f32[1,2,3,2] = slice(%1) {"size":[1,2,3,2],"start":[0,1,0,1],"stride":[1,2,1,2]}
  %3: f32[1,3,2,2] = transpose(%2) {"perm":[0,2,3,1]}
  output %3
}"#,
        &["slice"],
        &["transpose"],
        0.0,
    );
    assert_eq!(kiln_rewrite::op_node_count(&after), 1);
}

#[test]
fn pads_move_under_transposes_and_the_transposes_cancel() {
    let after = prove(
        r#"graph {
  input %0 "x": f32[1,3,4,6]
  %1: f32[1,6,3,4] = transpose(%0) {"perm":[0,3,1,2]}
  %2: f32[1,6,6,5] = pad(%1) {"mode":"constant","pads":[[0,0],[0,0],[1,2],[0,1]],"value":0.0}
  %3: f32[1,6,5,6] = transpose(%2) {"perm":[0,2,3,1]}
  output %3
}"#,
        &["pad"],
        &["transpose"],
        0.0,
    );
    assert_eq!(kiln_rewrite::op_node_count(&after), 1);
}

#[test]
fn a_per_column_scale_folds_into_constant_matmul_weights() {
    let after = prove(
        r#"graph {
  const @0: f32[1,3,2] = [1, 2, 3, 4, 5, 6]
  const @1: f32[1,1,2] = [0.5, -2]
  input %0 "a": f32[1,4,3]
  %1: f32[1,3,2] = const(@0)
  %2: f32[1,4,2] = matmul(%0, %1) {"a_zp":0,"b_zp":0}
  %3: f32[1,1,2] = const(@1)
  %4: f32[1,4,2] = mul(%3, %2)
  output %4
}"#,
        &["matmul"],
        &["mul"],
        1e-6,
    );
    assert_eq!(kiln_rewrite::op_node_count(&after), 1);
    // A per-row scale is not a column scale: the multiplication stays.
    prove(
        r#"graph {
  const @0: f32[1,3,2] = [1, 2, 3, 4, 5, 6]
  const @1: f32[1,4,1] = [0.5, -2, 1, 3]
  input %0 "a": f32[1,4,3]
  %1: f32[1,3,2] = const(@0)
  %2: f32[1,4,2] = matmul(%0, %1) {"a_zp":0,"b_zp":0}
  %3: f32[1,4,1] = const(@1)
  %4: f32[1,4,2] = mul(%2, %3)
  output %4
}"#,
        &["matmul", "mul"],
        &[],
        1e-6,
    );
}

#[test]
fn scales_do_not_fold_into_a_convolution_with_other_readers() {
    // Folding would compute the convolution twice (once per reader): the multiply stays.
    prove(
        r#"graph {
  const @0: f32[2,1,3,3] = [1, 0, -1, 2, 0, -2, 1, 0, -1, 0.5, 0.25, 0, 0, 0, 0, 0, 0, 3]
  const @1: f32[2] = [0.5, -0.5]
  const @2: f32[1,2,1,1] = [2, -0.25]
  input %0 "image": f32[1,1,5,5]
  %1: f32[2,1,3,3] = const(@0)
  %2: f32[2] = const(@1)
  %3: f32[1,2,3,3] = conv2d(%0, %1, %2) {"dilation":[1,1],"input_zp":0,"pad":[0,0,0,0],"stride":[1,1],"weight_zp":0}
  %4: f32[1,2,1,1] = const(@2)
  %5: f32[1,2,3,3] = mul(%3, %4)
  %6: f32[1,2,3,3] = sub(%5, %3)
  output %6
}"#,
        &["conv2d", "mul", "sub"],
        &[],
        0.0,
    );
}

/// Deterministic constant values for a tensor of `n` elements, as IR text.
fn values(n: usize, seed: usize) -> String {
    let v: Vec<String> = (0..n)
        .map(|i| format!("{}", (((i * 37 + seed * 11) % 17) as f32 - 8.0) / 16.0))
        .collect();
    v.join(", ")
}

/// conv 3x3 (4 -> 8 channels) + relu6, depthwise 3x3 + relu6, conv 1x1 + a residual add of the
/// depthwise output: a MobileNet-style chain over a 32x32 NCHW input.
fn conv_chain() -> String {
    format!(
        r#"graph {{
  const @0: f32[8,4,3,3] = [{w0}]
  const @1: f32[8] = [{b0}]
  const @2: f32[8,1,3,3] = [{w1}]
  const @3: f32[8] = [{b1}]
  const @4: f32[8,8,1,1] = [{w2}]
  const @5: f32[8] = [{b2}]
  input %0 "x": f32[1,4,32,32]
  %1: f32[8,4,3,3] = const(@0)
  %2: f32[8] = const(@1)
  %3: f32[1,8,32,32] = conv2d(%0, %1, %2) {{"dilation":[1,1],"input_zp":0,"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}}
  %4: f32[1,8,32,32] = clamp(%3) {{"max":6.0,"min":0.0}}
  %5: f32[8,1,3,3] = const(@2)
  %6: f32[8] = const(@3)
  %7: f32[1,8,32,32] = depthwise_conv2d(%4, %5, %6) {{"dilation":[1,1],"input_zp":0,"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}}
  %8: f32[1,8,32,32] = clamp(%7) {{"max":6.0,"min":0.0}}
  %9: f32[8,8,1,1] = const(@4)
  %10: f32[8] = const(@5)
  %11: f32[1,8,32,32] = conv2d(%8, %9, %10) {{"dilation":[1,1],"input_zp":0,"pad":[0,0,0,0],"stride":[1,1],"weight_zp":0}}
  %12: f32[1,8,32,32] = add(%11, %8)
  output %12
}}"#,
        w0 = values(288, 1),
        b0 = values(8, 2),
        w1 = values(72, 3),
        b1 = values(8, 4),
        w2 = values(64, 5),
        b2 = values(8, 6),
    )
}

fn conv_layouts(g: &Graph) -> Vec<DataLayout> {
    g.nodes()
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv2d(a) | Op::DepthwiseConv2d(a) => Some(a.layout),
            _ => None,
        })
        .collect()
}

fn count(g: &Graph, op: &str) -> usize {
    g.nodes().iter().filter(|n| n.op.name() == op).count()
}

#[test]
fn a_convolution_chain_runs_channels_last_with_one_conversion_at_each_end() {
    let after = prove(&conv_chain(), &["conv2d", "transpose"], &[], 1e-5);
    assert_eq!(conv_layouts(&after), vec![DataLayout::Nhwc; 3], "{after}");
    assert_eq!(count(&after, "transpose"), 2, "{after}");
    // The clamps read their convolutions directly (so they fuse), not a transpose.
    for n in after.nodes().iter().filter(|n| n.op.name() == "clamp") {
        let producer = after
            .nodes()
            .iter()
            .find(|m| m.output == n.inputs[0])
            .unwrap();
        assert_ne!(producer.op.name(), "transpose", "{after}");
    }
    // Kept NCHW on request: nothing moves.
    let options = RewriteOptions {
        layout: LayoutChoice::Nchw,
        ..RewriteOptions::default()
    };
    let kept = prove_with(&options, &conv_chain(), &["conv2d"], &["transpose"], 1e-5);
    assert_eq!(conv_layouts(&kept), vec![DataLayout::Nchw; 3]);
}

#[test]
fn a_lone_small_convolution_keeps_its_layout_unless_forced() {
    // Two conversions cost more than converting inside one small kernel.
    let single = format!(
        r#"graph {{
  const @0: f32[8,4,3,3] = [{w}]
  const @1: f32[8] = [{b}]
  input %0 "x": f32[1,4,5,5]
  %1: f32[8,4,3,3] = const(@0)
  %2: f32[8] = const(@1)
  %3: f32[1,8,5,5] = conv2d(%0, %1, %2) {{"dilation":[1,1],"input_zp":0,"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}}
  output %3
}}"#,
        w = values(288, 7),
        b = values(8, 8)
    );
    let after = prove(&single, &["conv2d"], &["transpose"], 1e-5);
    assert_eq!(conv_layouts(&after), vec![DataLayout::Nchw]);
    let options = RewriteOptions {
        layout: LayoutChoice::Nhwc,
        ..RewriteOptions::default()
    };
    let forced = prove_with(&options, &single, &["conv2d", "transpose"], &[], 1e-5);
    assert_eq!(conv_layouts(&forced), vec![DataLayout::Nhwc]);
}

#[test]
fn reductions_move_below_transposes_and_unit_axis_transposes_become_reshapes() {
    // Both spatial reductions of a channels-last tensor read back as NCHW: the transpose sinks
    // below them and, moving only unit axes then, becomes a reshape.
    prove(
        r#"graph {
  input %0 "x": f32[1,3,4,5]
  %1: f32[1,5,3,4] = transpose(%0) {"perm":[0,3,1,2]}
  %2: f32[1,5,1,4] = reduce_sum(%1) {"axis":2}
  %3: f32[1,5,1,1] = reduce_sum(%2) {"axis":3}
  output %3
}"#,
        &["reduce_sum", "reshape"],
        &["transpose"],
        1e-6,
    );
}

#[test]
fn pools_follow_their_convolution_into_channels_last() {
    // conv -> relu -> max pool -> conv -> global average pool: the whole chain runs channels
    // last, with one conversion in front and one (a reshape: the pooled tensor is 1x1) behind.
    let g = format!(
        r#"graph {{
  const @0: f32[8,4,3,3] = [{w1}]
  const @1: f32[8] = [{b1}]
  const @2: f32[8,8,3,3] = [{w2}]
  const @3: f32[8] = [{b2}]
  input %0 "x": f32[1,4,64,64]
  %1: f32[8,4,3,3] = const(@0)
  %2: f32[8] = const(@1)
  %3: f32[1,8,64,64] = conv2d(%0, %1, %2) {{"dilation":[1,1],"input_zp":0,"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}}
  %4: f32[1,8,64,64] = clamp(%3) {{"max":1e30,"min":0.0}}
  %5: f32[1,8,32,32] = max_pool2d(%4) {{"ceil_mode":false,"count_include_pad":false,"dilation":[1,1],"kernel":[2,2],"pad":[0,0,0,0],"stride":[2,2]}}
  %6: f32[8,8,3,3] = const(@2)
  %7: f32[8] = const(@3)
  %8: f32[1,8,32,32] = conv2d(%5, %6, %7) {{"dilation":[1,1],"input_zp":0,"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}}
  %9: f32[1,8,1,1] = avg_pool2d(%8) {{"ceil_mode":false,"count_include_pad":false,"dilation":[1,1],"kernel":[32,32],"pad":[0,0,0,0],"stride":[1,1]}}
  output %9
}}"#,
        w1 = values(288, 3),
        b1 = values(8, 4),
        w2 = values(576, 5),
        b2 = values(8, 6)
    );
    let after = prove(&g, &["conv2d", "max_pool2d", "avg_pool2d"], &[], 1e-5);
    assert_eq!(conv_layouts(&after), vec![DataLayout::Nhwc; 2], "{after}");
    for n in after.nodes() {
        if let Op::AvgPool2d(p) | Op::MaxPool2d(p) = &n.op {
            assert_eq!(p.layout, DataLayout::Nhwc, "{after}");
        }
    }
    assert_eq!(count(&after, "transpose"), 1, "{after}");
    // Kept NCHW on request.
    let options = RewriteOptions {
        layout: LayoutChoice::Nchw,
        ..RewriteOptions::default()
    };
    prove_with(&options, &g, &["max_pool2d"], &["transpose"], 1e-5);
}

#[test]
fn channels_last_convolutions_fold_padding_and_per_channel_scales() {
    let after = prove(
        &format!(
            r#"graph {{
  const @0: f32[4,2,3,3] = [{w}]
  const @1: f32[4] = [0.5, -0.5, 1, 2]
  const @2: f32[1,1,1,4] = [2, -1, 0.5, 3]
  input %0 "image": f32[1,5,5,2]
  %1: f32[1,6,8,2] = pad(%0) {{"mode":"constant","pads":[[0,0],[1,0],[2,1],[0,0]],"value":0.0}}
  %2: f32[4,2,3,3] = const(@0)
  %3: f32[4] = const(@1)
  %4: f32[1,4,6,4] = conv2d(%1, %2, %3) {{"dilation":[1,1],"input_zp":0,"layout":"nhwc","pad":[0,0,0,0],"stride":[1,1],"weight_zp":0}}
  %5: f32[1,1,1,4] = const(@2)
  %6: f32[1,4,6,4] = mul(%4, %5)
  output %6
}}"#,
            w = values(72, 9)
        ),
        &["conv2d"],
        &["pad", "mul"],
        1e-5,
    );
    let conv = after.nodes().iter().find(|n| n.op.name() == "conv2d");
    match conv.map(|n| &n.op) {
        Some(Op::Conv2d(a)) => {
            assert_eq!(a.pad, [1, 0, 2, 1]);
            assert_eq!(a.layout, DataLayout::Nhwc);
        }
        other => panic!("{other:?}"),
    }
}

/// `blocks` EfficientNet-style blocks over a 1x8x4x4 NCHW input: depthwise 3x3, swish
/// (`x * sigmoid(x)`), squeeze-excitation (global average pool, 1x1 conv, sigmoid, scale).
fn swish_se_chain(blocks: usize) -> String {
    let mut consts = String::new();
    let mut body = String::new();
    let mut v = 1;
    let mut x = 0;
    for b in 0..blocks {
        let c = 4 * b;
        consts += &format!(
            "  const @{}: f32[8,1,3,3] = [{}]\n  const @{}: f32[8] = [{}]\n  const @{}: f32[8,8,1,1] = [{}]\n  const @{}: f32[8] = [{}]\n",
            c,
            values(72, c),
            c + 1,
            values(8, c + 1),
            c + 2,
            values(64, c + 2),
            c + 3,
            values(8, c + 3)
        );
        let conv = r#""dilation":[1,1],"input_zp":0,"stride":[1,1],"weight_zp":0"#;
        let pool = r#""ceil_mode":false,"count_include_pad":false,"dilation":[1,1],"kernel":[4,4],"pad":[0,0,0,0],"stride":[1,1]"#;
        body += &format!(
            "  %{a}: f32[8,1,3,3] = const(@{c0})\n  %{bb}: f32[8] = const(@{c1})\n  %{d}: f32[1,8,4,4] = depthwise_conv2d(%{x}, %{a}, %{bb}) {{{conv},\"pad\":[1,1,1,1]}}\n  %{s}: f32[1,8,4,4] = sigmoid(%{d})\n  %{w}: f32[1,8,4,4] = mul(%{d}, %{s})\n  %{p}: f32[1,8,1,1] = avg_pool2d(%{w}) {{{pool}}}\n  %{f}: f32[8,8,1,1] = const(@{c2})\n  %{fb}: f32[8] = const(@{c3})\n  %{e}: f32[1,8,1,1] = conv2d(%{p}, %{f}, %{fb}) {{{conv},\"pad\":[0,0,0,0]}}\n  %{g}: f32[1,8,1,1] = sigmoid(%{e})\n  %{y}: f32[1,8,4,4] = mul(%{w}, %{g})\n",
            a = v,
            bb = v + 1,
            d = v + 2,
            s = v + 3,
            w = v + 4,
            p = v + 5,
            f = v + 6,
            fb = v + 7,
            e = v + 8,
            g = v + 9,
            y = v + 10,
            c0 = c,
            c1 = c + 1,
            c2 = c + 2,
            c3 = c + 3,
        );
        x = v + 10;
        v += 11;
    }
    format!("graph {{\n{consts}  input %0 \"x\": f32[1,8,4,4]\n{body}  output %{x}\n}}")
}

#[test]
fn deep_networks_reading_values_twice_still_extract_channels_last_everywhere() {
    // Every block reads its swish twice and its scaled output feeds the next: the tree cost of
    // the last blocks is about 2^64 times a block's, beyond where an f64 tells one transpose
    // from another. Extraction must still keep the whole chain channels-last, pools included,
    // with one conversion at each end and no elementwise op computed twice.
    let options = RewriteOptions {
        microkernels: true,
        ..RewriteOptions::default()
    };
    let blocks = 32;
    let after = prove_with(
        &options,
        &swish_se_chain(blocks),
        &["depthwise_conv2d"],
        &[],
        1e-4,
    );
    assert!(
        conv_layouts(&after).iter().all(|&l| l == DataLayout::Nhwc),
        "{after}"
    );
    let nchw_pools = after
        .nodes()
        .iter()
        .filter(|n| matches!(&n.op, Op::AvgPool2d(a) if a.layout == DataLayout::Nchw))
        .count();
    assert_eq!(nchw_pools, 0, "{after}");
    assert_eq!(count(&after, "transpose"), 2, "{after}");
    assert_eq!(count(&after, "sigmoid"), 2 * blocks, "{after}");
}
