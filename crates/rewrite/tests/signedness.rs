//! The activation-signedness pass: 8-bit contractions read the activation type the target's
//! dot products take, and compute exactly what they computed before.

use kiln_ir::{parse_graph, DType, Graph, Op, Tensor};
use kiln_rewrite::signedness::prefer_activation_type;

/// A padded 3x3 convolution and a matmul over 8-bit activations of type `t` with zero point
/// `zp`, each computed by a cast; `shared` makes the convolution's activation a graph output
/// too.
fn graph(t: &str, zp: i32, shared: bool) -> Graph {
    let weights: Vec<String> = (0..36)
        .map(|i| ((i * 37) % 255 - 127).to_string())
        .collect();
    let extra = if shared { "\n  output %1" } else { "" };
    parse_graph(&format!(
        r#"graph {{
  const @0: i8[2,2,3,3] = [{w}]
  const @1: i32[2] = [5, -7]
  const @2: i8[1,16,3] = [{m}]
  input %0 "x": f32[1,2,4,4]
  %1: {t}[1,2,4,4] = cast(%0) {{"to":"{t}"}}
  %2: i8[2,2,3,3] = const(@0)
  %3: i32[2] = const(@1)
  %4: i32[1,2,4,4] = conv2d(%1, %2, %3) {{"dilation":[1,1],"input_zp":{zp},"pad":[1,1,1,1],"stride":[1,1],"weight_zp":0}}
  %5: {t}[1,2,4,4] = cast(%0) {{"to":"{t}"}}
  %6: {t}[1,8,4] = reshape(%5) {{"shape":[1,8,4]}}
  %7: {t}[1,8,16] = concat(%6, %6, %6, %6) {{"axis":2}}
  %8: i8[1,16,3] = const(@2)
  %9: i32[1,8,3] = matmul(%7, %8) {{"a_zp":{zp},"b_zp":0}}
  output %4
  output %9{extra}
}}"#,
        w = weights.join(", "),
        m = [&weights[..24], &weights[..24]].concat().join(", "),
    ))
    .unwrap()
}

/// Activations covering the whole 8-bit range of either type, and beyond it (saturated).
fn input() -> Tensor {
    Tensor::new(
        vec![1, 2, 4, 4],
        (0..32)
            .map(|i| (i * 19 % 64) as f32 * 9.0 - 290.0)
            .collect(),
    )
    .unwrap()
}

fn contraction_inputs(g: &Graph) -> Vec<(DType, i32)> {
    g.nodes()
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv2d(a) => Some((g.ty(n.inputs[0]).dtype, a.input_zp)),
            Op::MatMul(m) => Some((g.ty(n.inputs[0]).dtype, m.a_zp)),
            _ => None,
        })
        .collect()
}

#[test]
fn signed_activations_become_unsigned_with_the_same_products() {
    let g = graph("i8", -3, false);
    let after = prefer_activation_type(&g, DType::U8)
        .unwrap()
        .expect("converted");
    // Both activations are read only by their contraction (the matmul's is a concat).
    assert_eq!(
        contraction_inputs(&after),
        [(DType::U8, 125), (DType::U8, 125)],
        "{after}"
    );
    let want = kiln_reference::run(&g, &[input()]).unwrap();
    assert_eq!(kiln_reference::run(&after, &[input()]).unwrap(), want);
    // Already the preferred type: nothing to do.
    assert!(prefer_activation_type(&g, DType::I8).unwrap().is_none());
}

#[test]
fn unsigned_activations_become_signed_with_the_same_products() {
    let g = graph("u8", 131, false);
    let after = prefer_activation_type(&g, DType::I8)
        .unwrap()
        .expect("converted");
    assert_eq!(
        contraction_inputs(&after),
        [(DType::I8, 3), (DType::I8, 3)],
        "{after}"
    );
    let want = kiln_reference::run(&g, &[input()]).unwrap();
    assert_eq!(kiln_reference::run(&after, &[input()]).unwrap(), want);
}

#[test]
fn activations_read_elsewhere_are_left_alone() {
    // The convolution's activation is also a graph output: converting it would need a second
    // copy. The matmul's (read only by it) is still converted.
    let g = graph("i8", -3, true);
    let after = prefer_activation_type(&g, DType::U8)
        .unwrap()
        .expect("converted");
    assert_eq!(
        contraction_inputs(&after),
        [(DType::I8, -3), (DType::U8, 125)],
        "{after}"
    );
    assert_eq!(after.ty(after.outputs()[2]).dtype, DType::I8);
    let want = kiln_reference::run(&g, &[input()]).unwrap();
    assert_eq!(kiln_reference::run(&after, &[input()]).unwrap(), want);
    // Float contractions and other types are not this pass's business.
    assert!(prefer_activation_type(&g, DType::F32).unwrap().is_none());
}
