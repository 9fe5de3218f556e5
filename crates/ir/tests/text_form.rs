//! The text form prints and parses back to the same graph, and rejects malformed text clearly.

use kiln_ir::op::{BinaryOp, ConvAttrs, UnaryOp};
use kiln_ir::{parse_graph, DType, Graph, IrError, Op, OrderedF64, Tensor, TensorType};
use proptest::prelude::*;

const SAMPLE: &str = r#"graph {
  const @0: f32[2,1,3,3] = [1, 0, -1, 2, 0, -2, 1, 0, -1, 0.5, 0.25, 0, 0, 0, 0, 0, 0, inf]
  const @1: f32[2] = [0.5, -0.5]
  input %0 "image": f32[1,1,5,5]
  %1: f32[2,1,3,3] = const(@0)
  %2: f32[2] = const(@1)
  %3: f32[1,2,3,3] = conv2d(%0, %1, %2) {"dilation":[1,1],"input_zp":0,"pad":[0,0,0,0],"stride":[1,1],"weight_zp":0} name="Conv_0"
  %4: f32[1,2,3,3] = clamp(%3) {"max":"inf","min":0.0} name="Relu_1"
  %5: f32[1,2,1,3] = reduce_max(%4) {"axis":2}
  %6: f32[1,2,3,3] = sub(%4, %5) value="centred"
  output %6
}
"#;

#[test]
fn sample_round_trips() {
    let g = parse_graph(SAMPLE).expect("sample parses");
    g.verify().expect("sample verifies");
    let printed = g.to_string();
    assert_eq!(printed, SAMPLE);
    assert_eq!(parse_graph(&printed).unwrap(), g);
    assert_eq!(g.nodes()[2].op.name(), "conv2d");
    assert_eq!(g.value(g.outputs()[0]).name.as_deref(), Some("centred"));
}

#[test]
fn wrong_recorded_type_is_rejected() {
    let text = SAMPLE.replace("%6: f32[1,2,3,3]", "%6: f32[1,2,3,4]");
    let err = parse_graph(&text).unwrap_err();
    assert!(
        matches!(err, IrError::Parse { line: 10, ref message } if message.contains("infers f32[1,2,3,3]")),
        "{err}"
    );
}

#[test]
fn malformed_text_names_the_line() {
    for (text, line, needle) in [
        ("graph {\n  %1: f32[2] = add(%0, %0)\n}", 2, "used before"),
        ("graph {\n  input %0: f33[2]\n}", 2, "unknown dtype"),
        (
            "graph {\n  input %0: f32[2]\n  %1: f32[2] = frobnicate(%0)\n}",
            3,
            "frobnicate",
        ),
        ("graph {\n  input %0: f32[2]\n", 2, "missing closing"),
        (
            "graph {\n  const @0: f32[3] = [1, 2]\n}",
            2,
            "needs 3 elements",
        ),
        (
            "graph {\n  input %0: f32[2]\n  %1: f32[2] = clamp(%0) {\"min\":0}\n}",
            3,
            "max",
        ),
    ] {
        match parse_graph(text) {
            Err(IrError::Parse { line: l, message }) => {
                assert_eq!(l, line, "{text}: {message}");
                assert!(message.contains(needle), "{text}: {message}");
            }
            other => panic!("{text}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn absurd_shapes_are_refused_before_allocation() {
    let err = TensorType::new(DType::F32, vec![1_000_000, 1_000_000, 1_000_000]).unwrap_err();
    assert!(matches!(err, IrError::TooLarge { .. }), "{err}");
    let err = TensorType::new(DType::F32, vec![usize::MAX, 2]).unwrap_err();
    assert!(err.to_string().contains("overflows"), "{err}");
}

#[test]
fn builder_rejects_bad_operands_with_the_node_name() {
    let mut g = Graph::new();
    let a = g.add_input("a", TensorType::new(DType::F32, vec![2, 3]).unwrap());
    let b = g.add_input("b", TensorType::new(DType::F32, vec![4, 5]).unwrap());
    let err = g
        .add_node(Op::Binary(BinaryOp::Add), &[a, b], "Add_7")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Add_7") && msg.contains("do not broadcast"),
        "{msg}"
    );
    let i = g.add_input("i", TensorType::new(DType::I32, vec![2, 3]).unwrap());
    let err = g
        .add_node(Op::Unary(UnaryOp::Exp), &[i], "Exp_0")
        .unwrap_err();
    assert!(err.to_string().contains("does not accept i32"), "{err}");
}

#[test]
fn verifier_catches_use_before_definition() {
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::new(DType::F32, vec![2]).unwrap());
    let y = g.add_node(Op::Unary(UnaryOp::Exp), &[x], "e").unwrap();
    let z = g.add_node(Op::Unary(UnaryOp::Log), &[y], "l").unwrap();
    g.set_outputs(vec![z]).unwrap();
    g.verify().unwrap();
    let mut parts = g.into_parts();
    parts.nodes.swap(0, 1);
    let bad = Graph::from_parts(parts);
    assert!(bad.verify().is_err());
}

#[test]
fn verifier_catches_a_stale_type() {
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::new(DType::F32, vec![2]).unwrap());
    let y = g.add_node(Op::Unary(UnaryOp::Exp), &[x], "e").unwrap();
    g.set_outputs(vec![y]).unwrap();
    let mut parts = g.into_parts();
    parts.values[y.index()].ty = TensorType::new(DType::F32, vec![3]).unwrap();
    let err = Graph::from_parts(parts).verify().unwrap_err();
    assert!(matches!(err, IrError::TypeMismatch { .. }), "{err}");
}

fn elementwise_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Unary(UnaryOp::Exp)),
        Just(Op::Unary(UnaryOp::Tanh)),
        Just(Op::Unary(UnaryOp::Negate)),
        Just(Op::Binary(BinaryOp::Add)),
        Just(Op::Binary(BinaryOp::Mul)),
        Just(Op::Binary(BinaryOp::Maximum)),
        (-5.0f64..5.0, 0.0f64..10.0).prop_map(|(lo, w)| Op::Clamp {
            min: OrderedF64(lo),
            max: OrderedF64(lo + w)
        }),
    ]
}

proptest! {
    /// Random chains of ops over random weights print and parse back identically.
    #[test]
    fn random_graphs_round_trip(
        dims in proptest::collection::vec(1usize..4, 1..4),
        ops in proptest::collection::vec((elementwise_op(), any::<prop::sample::Index>()), 1..12),
        weight in proptest::collection::vec(-1e6f32..1e6, 64),
    ) {
        let mut g = Graph::new();
        let ty = TensorType::new(DType::F32, dims.clone()).unwrap();
        let n = ty.num_elements();
        let x = g.add_input("x", ty);
        let w = g.add_const_value(Tensor::new(dims.clone(), weight[..n].to_vec()).unwrap(), "w");
        let mut vals = vec![x, w];
        for (op, pick) in ops {
            let a = vals[pick.index(vals.len())];
            let args = if matches!(op, Op::Binary(_)) { vec![a, vals[vals.len() - 1]] } else { vec![a] };
            vals.push(g.add_node(op, &args, "").unwrap());
        }
        g.set_outputs(vec![*vals.last().unwrap()]).unwrap();
        let back = parse_graph(&g.to_string()).unwrap();
        prop_assert_eq!(back, g);
    }
}

#[test]
fn conv_shape_rule_matches_the_formula() {
    let mut g = Graph::new();
    let x = g.add_input(
        "x",
        TensorType::new(DType::F32, vec![1, 3, 224, 224]).unwrap(),
    );
    let w = g.add_const_value(
        Tensor::zeros(TensorType::new(DType::F32, vec![32, 3, 3, 3]).unwrap()),
        "w",
    );
    let b = g.add_const_value(
        Tensor::zeros(TensorType::new(DType::F32, vec![32]).unwrap()),
        "b",
    );
    let attrs = ConvAttrs {
        pad: [0, 1, 0, 1],
        stride: [2, 2],
        dilation: [1, 1],
        ..Default::default()
    };
    let y = g.add_node(Op::Conv2d(attrs), &[x, w, b], "c").unwrap();
    assert_eq!(g.ty(y).shape, vec![1, 32, 112, 112]);
}

#[test]
fn fma_accumulation_is_for_f32_conv2d_only_and_round_trips() {
    let g = parse_graph(
        r#"graph {
  input %0 "x": f32[1,2,4,4]
  input %1 "w": f32[3,2,3,3]
  input %2 "b": f32[3]
  %3: f32[1,3,4,4] = conv2d(%0, %1, %2) {"dilation":[1,1],"fma":true,"input_zp":0,"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}
  output %3
}"#,
    )
    .unwrap();
    assert!(matches!(&g.nodes()[0].op, Op::Conv2d(a) if a.fma));
    assert_eq!(
        parse_graph(&g.to_string()).unwrap().to_string(),
        g.to_string()
    );
    let depthwise = r#"graph {
  input %0 "x": f32[1,2,4,4]
  input %1 "w": f32[2,1,3,3]
  input %2 "b": f32[2]
  %3: f32[1,2,4,4] = depthwise_conv2d(%0, %1, %2) {"dilation":[1,1],"fma":true,"input_zp":0,"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}
  output %3
}"#;
    let err = parse_graph(depthwise).unwrap_err().to_string();
    assert!(err.contains("fma accumulation"), "{err}");
    let int8 = r#"graph {
  input %0 "x": i8[1,2,4,4]
  input %1 "w": i8[3,2,3,3]
  input %2 "b": i32[3]
  %3: i32[1,3,4,4] = conv2d(%0, %1, %2) {"dilation":[1,1],"fma":true,"input_zp":0,"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}
  output %3
}"#;
    let err = parse_graph(int8).unwrap_err().to_string();
    assert!(err.contains("fma accumulation"), "{err}");
}
