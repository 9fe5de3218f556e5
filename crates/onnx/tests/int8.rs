//! With `Int8Numerics::Tosa`, int8 models in ONNX QDQ form import as TOSA integer ops
//! (CONV2D/MATMUL accumulating in i32, RESCALE) and agree with onnxruntime, or with
//! `QuantizeLinear` of the float computation, within one quantization step. (The default,
//! onnxruntime's arithmetic, is checked bit for bit in `crates/kiln/tests/models.rs`,
//! `tests/aot.rs` and this crate's unit tests.)
//!
//! The bundled `resnet8_cifar_int8.onnx` and its expected output come from
//! `tools/make_int8_model.py` (onnxruntime `quantize_static`); the small models are built here.

use kiln_ir::{DType, Graph, Op, Tensor};
use kiln_onnx::proto::*;
use kiln_onnx::{import_bytes, load_model, read_tensor_file, ImportOptions, Int8Numerics};
use prost::Message;
use std::path::PathBuf;

const F32: i32 = 1;
const I8: i32 = 3;
const I32: i32 = 6;
const I64: i32 = 7;

/// Import options selecting TOSA's numerics.
fn tosa() -> ImportOptions {
    ImportOptions {
        int8_numerics: Int8Numerics::Tosa,
        ..Default::default()
    }
}

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/models")
}

/// Node counts by op name, and the dtype of each op's first operand and result.
fn ops_with_types(g: &Graph) -> Vec<(&'static str, DType, DType)> {
    g.nodes()
        .iter()
        .filter(|n| !matches!(n.op, Op::Const(_)))
        .map(|n| {
            let input = n.inputs.first().map_or(DType::F32, |&v| g.ty(v).dtype);
            (n.op.name(), input, g.ty(n.output).dtype)
        })
        .collect()
}

fn count(ops: &[(&str, DType, DType)], name: &str) -> usize {
    ops.iter().filter(|o| o.0 == name).count()
}

/// The scale of the DequantizeLinear that produces graph output `name`.
fn output_scale(model: &ModelProto, name: &str) -> f64 {
    let g = model.graph.as_ref().expect("graph");
    let dq = g
        .node
        .iter()
        .find(|n| n.output.first().map(String::as_str) == Some(name))
        .expect("output producer");
    assert_eq!(dq.op_type.as_deref(), Some("DequantizeLinear"));
    let scale = g
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(dq.input[1].as_str()))
        .expect("scale initializer");
    match (scale.float_data.first(), scale.raw_data.as_deref()) {
        (Some(&f), _) => f64::from(f),
        (None, Some(raw)) => f64::from(f32::from_le_bytes(raw[..4].try_into().unwrap())),
        _ => panic!("empty scale"),
    }
}

#[test]
fn resnet8_int8_imports_integer_convs() {
    let model = load_model(&models_dir().join("resnet8_cifar_int8.onnx"), &tosa()).unwrap();
    assert!(model.notes.is_empty(), "{:?}", model.notes);
    let ops = ops_with_types(&model.graph);
    let convs: Vec<_> = ops.iter().filter(|o| o.0 == "conv2d").collect();
    assert_eq!(convs.len(), 9, "{ops:?}");
    for c in &convs {
        assert_eq!(
            (c.1, c.2),
            (DType::I8, DType::I32),
            "float or mistyped conv2d"
        );
    }
    let matmuls: Vec<_> = ops.iter().filter(|o| o.0 == "matmul").collect();
    assert_eq!(matmuls.len(), 1);
    assert_eq!((matmuls[0].1, matmuls[0].2), (DType::I8, DType::I32));
    // One RESCALE per conv and Gemm, three per Add (two operands and the sum), one for the pool.
    assert_eq!(count(&ops, "rescale"), 9 + 1 + 3 * 3 + 1, "{ops:?}");
    assert_eq!(count(&ops, "avg_pool2d"), 0);
}

#[test]
fn resnet8_int8_matches_onnxruntime_within_one_step() {
    let path = models_dir().join("resnet8_cifar_int8.onnx");
    let model = load_model(&path, &tosa()).unwrap();
    let data = models_dir().join("resnet8_cifar_int8_data");
    let (_, input) = read_tensor_file(&data.join("input_0.pb")).unwrap();
    let (name, expected) = read_tensor_file(&data.join("output_0.pb")).unwrap();
    let proto = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
    let step = output_scale(&proto, &name);

    let got = kiln_reference::run(&model.graph, &[input]).unwrap();
    let (got, want) = (got[0].data().to_f64_vec(), expected.data().to_f64_vec());
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() / step)
        .fold(0.0, f64::max);
    // onnxruntime fuses the final DQ -> Softmax -> Q into its table-based QLinearSoftmax, which
    // rounds some probabilities one step away from the float softmax Kiln keeps there.
    assert!(worst <= 1.0 + 1e-4, "max error {worst} quantization steps");
}

// ---- small hand-built QDQ models ----

fn value_info(name: &str, elem: i32, dims: &[usize]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension, Dimension};
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_{output}")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute: attrs,
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(2),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(1),
        f: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn init(name: &str, elem: i32, dims: &[usize], v: &[f64]) -> TensorProto {
    let mut t = TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(elem),
        ..Default::default()
    };
    match elem {
        F32 => t.float_data = v.iter().map(|&x| x as f32).collect(),
        I64 => t.int64_data = v.iter().map(|&x| x as i64).collect(),
        _ => t.int32_data = v.iter().map(|&x| x as i32).collect(),
    }
    t
}

/// Deterministic values in `[-amp, amp)`.
fn values(n: usize, seed: u64, amp: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// A quantized weight: int8 values with per-channel scales along `axis`, as DequantizeLinear
/// nodes and initializers producing `{name}_dq`.
fn weight(
    case: &mut Case,
    name: &str,
    dims: &[usize],
    scales: &[f64],
    axis: i64,
    elem: i32,
) -> Vec<f64> {
    let n: usize = dims.iter().product();
    let q: Vec<f64> = values(n, name.len() as u64 + 7, 127.0)
        .iter()
        .map(|v| v.round())
        .collect();
    let sd = [scales.len()];
    let sdims: &[usize] = if scales.len() == 1 { &[] } else { &sd };
    case.inits.push(init(name, elem, dims, &q));
    case.inits
        .push(init(&format!("{name}_s"), F32, sdims, scales));
    case.inits.push(init(
        &format!("{name}_z"),
        elem,
        sdims,
        &vec![0.0; scales.len()],
    ));
    let mut attrs = vec![];
    if scales.len() > 1 {
        attrs.push(attr_int("axis", axis));
    }
    let (s, z, dq) = (
        format!("{name}_s"),
        format!("{name}_z"),
        format!("{name}_dq"),
    );
    case.nodes
        .push(node("DequantizeLinear", &[name, &s, &z], &dq, attrs));
    q
}

/// A QDQ test case: float inputs quantized to int8 and dequantized to `{name}_dq`, weights and
/// `nodes` that compute float `y` from those.
#[derive(Default)]
struct Case {
    /// `(name, shape, scale, zero point)`.
    acts: Vec<(&'static str, Vec<usize>, f64, i8)>,
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
}

impl Case {
    fn act(&mut self, name: &'static str, shape: &[usize], scale: f64, zp: i8) {
        self.acts.push((name, shape.to_vec(), scale, zp));
    }

    /// The model; with `out = Some((scale, zp))` `y` is quantized and dequantized to `out`.
    fn model(&self, out: Option<(f64, i8)>) -> Vec<u8> {
        let mut nodes = Vec::new();
        let mut inits = self.inits.clone();
        let mut inputs = Vec::new();
        for (name, shape, scale, zp) in &self.acts {
            let (s, z) = (format!("{name}_s"), format!("{name}_z"));
            inits.push(init(&s, F32, &[], &[*scale]));
            inits.push(init(&z, I8, &[], &[f64::from(*zp)]));
            let (q, dq) = (format!("{name}_q"), format!("{name}_dq"));
            nodes.push(node("QuantizeLinear", &[name, &s, &z], &q, vec![]));
            nodes.push(node("DequantizeLinear", &[&q, &s, &z], &dq, vec![]));
            inputs.push(value_info(name, F32, shape));
        }
        nodes.extend(self.nodes.iter().cloned());
        let output = match out {
            None => "y",
            Some((scale, zp)) => {
                inits.push(init("y_s", F32, &[], &[scale]));
                inits.push(init("y_z", I8, &[], &[f64::from(zp)]));
                nodes.push(node("QuantizeLinear", &["y", "y_s", "y_z"], "y_q", vec![]));
                nodes.push(node(
                    "DequantizeLinear",
                    &["y_q", "y_s", "y_z"],
                    "out",
                    vec![],
                ));
                "out"
            }
        };
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                node: nodes,
                name: Some("qdq".into()),
                initializer: inits,
                input: inputs,
                output: vec![value_info(output, F32, &[])],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn inputs(&self) -> Vec<Tensor> {
        self.acts
            .iter()
            .enumerate()
            .map(|(i, (_, shape, scale, _))| {
                let n = shape.iter().product();
                let v = values(n, i as u64, 100.0 * scale);
                Tensor::new(shape.clone(), v.iter().map(|&x| x as f32).collect()).unwrap()
            })
            .collect()
    }

    /// Imports the QDQ model and checks it against `QuantizeLinear` of the float model's output,
    /// quantized to that output's range widened down to `-widen * max`. Returns the imported
    /// graph's ops.
    fn check(&self, widen: f64) -> Vec<(&'static str, DType, DType)> {
        let run = |bytes: &[u8]| -> (Graph, Vec<f64>) {
            let m = import_bytes(bytes, None, &tosa()).unwrap();
            let y = kiln_reference::run(&m.graph, &self.inputs()).unwrap();
            (m.graph, y[0].data().to_f64_vec())
        };
        let (_, y) = run(&self.model(None));
        let hi = y.iter().copied().fold(0.0, f64::max);
        let lo = y.iter().copied().fold(0.0, f64::min).min(-widen * hi);
        let scale = f64::from(((hi - lo) / 255.0) as f32);
        let zp = (-128.0 - lo / scale).round().clamp(-128.0, 127.0);
        let (g, got) = run(&self.model(Some((scale, zp as i8))));
        let quantize = |v: f64| ((v / scale).round_ties_even() + zp).clamp(-128.0, 127.0);
        let mut exact = 0;
        for (i, (&want, &got)) in y.iter().zip(&got).enumerate() {
            let (qw, qg) = (quantize(want), (got / scale).round() + zp);
            assert!((qw - qg).abs() <= 1.0, "element {i}: {qg} vs {qw}");
            exact += usize::from(qw == qg);
        }
        assert!(exact * 10 >= y.len() * 9, "{exact} of {} exact", y.len());
        let ops = ops_with_types(&g);
        for (name, input, _) in &ops {
            let float_compute = matches!(
                *name,
                "conv2d" | "matmul" | "max_pool2d" | "avg_pool2d" | "concat" | "reduce_sum"
            );
            assert!(
                !(float_compute && input.is_float()),
                "float {name}: {ops:?}"
            );
        }
        assert!(count(&ops, "rescale") > 0 || count(&ops, "max_pool2d") > 0);
        ops
    }
}

#[test]
fn conv_per_channel_with_bias_and_relu() {
    let mut c = Case::default();
    let sx = 0.04;
    c.act("x", &[1, 2, 6, 6], sx, 3);
    let sw = [0.01, 0.02, 0.005];
    weight(&mut c, "w", &[3, 2, 3, 3], &sw, 0, I8);
    let bias_s: Vec<f64> = sw.iter().map(|s| f64::from((sx * s) as f32)).collect();
    let bq = [500.0, -1200.0, 40.0];
    c.inits.push(init("b", I32, &[3], &bq));
    c.inits.push(init("b_s", F32, &[3], &bias_s));
    c.inits.push(init("b_z", I32, &[3], &[0.0; 3]));
    c.nodes.push(node(
        "DequantizeLinear",
        &["b", "b_s", "b_z"],
        "b_dq",
        vec![attr_int("axis", 0)],
    ));
    c.nodes.push(node(
        "Conv",
        &["x_dq", "w_dq", "b_dq"],
        "conv",
        vec![attr_ints("pads", &[1, 1, 1, 1])],
    ));
    c.nodes.push(node("Relu", &["conv"], "y", vec![]));
    // The output range reaches below zero, so the Relu becomes an int8 clamp at the zero point.
    let ops = c.check(0.3);
    assert!(ops.contains(&("conv2d", DType::I8, DType::I32)), "{ops:?}");
    assert!(ops.contains(&("clamp", DType::I8, DType::I8)), "{ops:?}");
}

#[test]
fn gemm_with_float_bias_and_alpha() {
    let mut c = Case::default();
    c.act("a", &[2, 8], 0.05, -4);
    weight(
        &mut c,
        "w",
        &[5, 8],
        &[0.01, 0.03, 0.02, 0.015, 0.005],
        0,
        I8,
    );
    c.inits
        .push(init("c", F32, &[5], &[0.5, -1.0, 0.25, 2.0, -0.75]));
    c.nodes.push(node(
        "Gemm",
        &["a_dq", "w_dq", "c"],
        "y",
        vec![
            attr_int("transB", 1),
            attr_float("alpha", 0.75),
            attr_float("beta", 0.5),
        ],
    ));
    let ops = c.check(0.0);
    assert!(ops.contains(&("matmul", DType::I8, DType::I32)), "{ops:?}");
}

#[test]
fn batched_matmul_per_channel_along_last_axis() {
    let mut c = Case::default();
    c.act("a", &[2, 3, 4], 0.03, 10);
    weight(&mut c, "w", &[4, 5], &[0.01, 0.02, 0.03, 0.04, 0.05], 1, I8);
    c.nodes.push(node("MatMul", &["a_dq", "w_dq"], "y", vec![]));
    let ops = c.check(0.0);
    assert!(ops.contains(&("matmul", DType::I8, DType::I32)), "{ops:?}");
}

#[test]
fn add_of_two_scales_with_clip() {
    let mut c = Case::default();
    c.act("a", &[1, 3, 4, 4], 0.03, 5);
    c.act("b", &[1, 3, 4, 4], 0.07, -10);
    c.inits.push(init("lo", F32, &[], &[-0.5]));
    c.inits.push(init("hi", F32, &[], &[1.0]));
    c.nodes.push(node("Add", &["a_dq", "b_dq"], "sum", vec![]));
    c.nodes
        .push(node("Clip", &["sum", "lo", "hi"], "y", vec![]));
    let ops = c.check(0.0);
    assert!(ops.contains(&("add", DType::I32, DType::I32)), "{ops:?}");
}

#[test]
fn mul_of_two_activations() {
    let mut c = Case::default();
    c.act("a", &[2, 6], 0.02, 0);
    c.act("b", &[2, 6], 0.05, 7);
    c.nodes.push(node("Mul", &["a_dq", "b_dq"], "y", vec![]));
    let ops = c.check(0.0);
    assert!(ops.contains(&("mul", DType::I32, DType::I32)), "{ops:?}");
}

#[test]
fn global_average_pool_sums_in_i32() {
    let mut c = Case::default();
    c.act("x", &[1, 4, 5, 5], 0.02, -20);
    c.nodes
        .push(node("GlobalAveragePool", &["x_dq"], "y", vec![]));
    let ops = c.check(0.0);
    assert!(
        ops.contains(&("reduce_sum", DType::I32, DType::I32)),
        "{ops:?}"
    );
}

#[test]
fn max_pool_stays_int8() {
    let mut c = Case::default();
    c.act("x", &[1, 2, 6, 6], 0.02, 4);
    c.nodes.push(node(
        "MaxPool",
        &["x_dq"],
        "y",
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    ));
    let ops = c.check(0.0);
    assert!(
        ops.contains(&("max_pool2d", DType::I8, DType::I8)),
        "{ops:?}"
    );
}

#[test]
fn transpose_stays_int8() {
    let mut c = Case::default();
    c.act("x", &[1, 2, 3, 4], 0.02, 4);
    c.nodes.push(node(
        "Transpose",
        &["x_dq"],
        "y",
        vec![attr_ints("perm", &[0, 2, 3, 1])],
    ));
    let ops = c.check(0.0);
    assert!(
        ops.contains(&("transpose", DType::I8, DType::I8)),
        "{ops:?}"
    );
}

#[test]
fn concat_requantizes_operands_to_the_output() {
    let mut c = Case::default();
    c.act("a", &[1, 2, 3, 3], 0.02, 4);
    c.act("b", &[1, 3, 3, 3], 0.05, -3);
    c.nodes.push(node(
        "Concat",
        &["a_dq", "b_dq"],
        "y",
        vec![attr_int("axis", 1)],
    ));
    let ops = c.check(0.0);
    assert!(ops.contains(&("concat", DType::I8, DType::I8)), "{ops:?}");
}

#[test]
fn conv_bias_at_another_scale_is_requantized() {
    let mut c = Case::default();
    let sx = 0.04;
    c.act("x", &[1, 2, 5, 5], sx, -7);
    let sw = [0.01, 0.02];
    weight(&mut c, "w", &[2, 2, 3, 3], &sw, 0, I8);
    // Twice the accumulator scale: the importer must requantize the bias, not reuse it.
    c.inits.push(init("b", I32, &[2], &[301.0, -77.0]));
    c.inits.push(init("b_s", F32, &[], &[2.0 * sx * 0.01]));
    c.inits.push(init("b_z", I32, &[], &[0.0]));
    c.nodes.push(node(
        "DequantizeLinear",
        &["b", "b_s", "b_z"],
        "b_dq",
        vec![],
    ));
    c.nodes
        .push(node("Conv", &["x_dq", "w_dq", "b_dq"], "y", vec![]));
    let ops = c.check(0.0);
    assert!(ops.contains(&("conv2d", DType::I8, DType::I32)), "{ops:?}");
}

#[test]
fn unfusable_pattern_keeps_the_float_path_with_a_note() {
    let mut c = Case::default();
    c.act("a", &[2, 8], 0.05, 0);
    // Scales along the reduction axis K cannot become a per-output-channel RESCALE.
    weight(&mut c, "w", &[5, 8], &[0.01; 8], 1, I8);
    c.nodes.push(node(
        "Gemm",
        &["a_dq", "w_dq"],
        "y",
        vec![attr_int("transB", 1)],
    ));
    let m = import_bytes(&c.model(Some((0.05, 0))), None, &tosa()).unwrap();
    assert!(
        m.notes.iter().any(|n| n.contains("keeps the float path")),
        "{:?}",
        m.notes
    );
    let ops = ops_with_types(&m.graph);
    assert!(ops.contains(&("matmul", DType::F32, DType::F32)), "{ops:?}");
    assert_eq!(count(&ops, "rescale"), 0);
}

#[test]
fn softmax_has_no_integer_form_and_stays_float() {
    let mut c = Case::default();
    c.act("a", &[2, 6], 0.05, 3);
    c.nodes.push(node("Softmax", &["a_dq"], "y", vec![]));
    let m = import_bytes(&c.model(Some((1.0 / 256.0, -128))), None, &tosa()).unwrap();
    assert!(m.notes.is_empty(), "{:?}", m.notes);
    let ops = ops_with_types(&m.graph);
    assert!(ops.contains(&("exp", DType::F32, DType::F32)), "{ops:?}");
}

#[test]
fn average_pool_is_a_depthwise_sum() {
    let mut c = Case::default();
    c.act("x", &[1, 3, 7, 7], 0.03, -9);
    c.nodes.push(node(
        "AveragePool",
        &["x_dq"],
        "y",
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_int("count_include_pad", 1),
        ],
    ));
    let ops = c.check(0.0);
    assert!(
        ops.contains(&("depthwise_conv2d", DType::I8, DType::I32)),
        "{ops:?}"
    );
    assert_eq!(count(&ops, "avg_pool2d"), 0);
}

#[test]
fn average_pool_not_counting_padding_stays_float() {
    let mut c = Case::default();
    c.act("x", &[1, 2, 4, 4], 0.03, 0);
    c.nodes.push(node(
        "AveragePool",
        &["x_dq"],
        "y",
        vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    ));
    let m = import_bytes(&c.model(Some((0.03, 0))), None, &tosa()).unwrap();
    assert!(
        m.notes.iter().any(|n| n.contains("other divisors")),
        "{:?}",
        m.notes
    );
    assert_eq!(count(&ops_with_types(&m.graph), "avg_pool2d"), 1);
}

#[test]
fn degenerate_quantization_parameters_do_not_panic() {
    for (w_scale, out_scale) in [
        ([0.0, 0.01], 0.05),
        ([-1.0, 0.01], 0.05),
        ([f64::NAN, 0.01], 0.05),
        ([1e30, 1e30], 1e-30),
        ([1e-30, 1e-30], 1e30),
        ([0.01, 0.01], 0.0),
    ] {
        let mut c = Case::default();
        c.act("x", &[1, 2, 4, 4], 0.04, 3);
        weight(&mut c, "w", &[2, 2, 1, 1], &w_scale, 0, I8);
        c.nodes.push(node("Conv", &["x_dq", "w_dq"], "y", vec![]));
        // Either a graph or an import error; never a panic.
        let _ = import_bytes(&c.model(Some((out_scale, 0))), None, &tosa());
    }
}

// ---- onnxruntime's float convolutions of dequantized values ----

/// MLAS's result for an NCHW convolution (one image, one group): im2col (`k = c·kh·kw + ky·kw +
/// kx`, padding 0.0), one fma chain from +0.0 per `k` block, blocks added in order
/// (`C = block + C`), the bias last.
#[allow(clippy::too_many_arguments)]
fn mlas_conv(
    x: &[f32],
    [c, h, wd]: [usize; 3],
    w: &[f32],
    o: usize,
    k: usize,
    pad: usize,
    stride: usize,
    bias: &[f32],
    k_blocks: &[(usize, usize)],
) -> Vec<f32> {
    let (oh, ow) = (
        (h + 2 * pad - k) / stride + 1,
        (wd + 2 * pad - k) / stride + 1,
    );
    let depth = c * k * k;
    let col = |kk: usize, p: usize| -> f32 {
        let (ch, ky, kx) = (kk / (k * k), kk / k % k, kk % k);
        let (iy, ix) = ((p / ow) * stride + ky, (p % ow) * stride + kx);
        match (iy.checked_sub(pad), ix.checked_sub(pad)) {
            (Some(iy), Some(ix)) if iy < h && ix < wd => x[(ch * h + iy) * wd + ix],
            _ => 0.0,
        }
    };
    let mut y = vec![0.0f32; o * oh * ow];
    for m in 0..o {
        for p in 0..oh * ow {
            let mut sum: Option<f32> = None;
            for &(k0, kc) in k_blocks {
                let mut acc = 0.0f32;
                for kk in k0..k0 + kc {
                    acc = col(kk, p).mul_add(w[m * depth + kk], acc);
                }
                sum = Some(sum.map_or(acc, |s| acc + s));
            }
            y[m * oh * ow + p] = sum.unwrap() + bias[m];
        }
    }
    y
}

/// A float Conv reading a DequantizeLinear output (one onnxruntime leaves in float) imports as
/// CONV2Ds accumulating in fma chains, no im2col, and computes MLAS's result bit for bit: one
/// `k` block (an RGB stem), two (16 channels: blocks of 128 + 16, the second starting inside a
/// channel's taps) and three (64 channels over 8x8 pixels: 256 + 256 + 64).
#[test]
fn float_conv_of_dequantized_values_rounds_as_mlas() {
    // (input channels, output channels, image side, padding, stride, MLAS's k blocks)
    type ConvCase = (usize, usize, usize, usize, usize, &'static [(usize, usize)]);
    let cases: [ConvCase; 4] = [
        (3, 16, 32, 1, 1, &[(0, 27)]),
        (16, 16, 32, 1, 1, &[(0, 128), (128, 16)]),
        (16, 32, 32, 1, 2, &[(0, 128), (128, 16)]),
        (64, 8, 8, 1, 1, &[(0, 256), (256, 256), (512, 64)]),
    ];
    for (c, o, hw, pad, stride, blocks) in cases {
        let k = 3;
        let mut case = Case::default();
        // Inputs on the quantization grid (multiples of 1/64 within range): dequantized
        // exactly as given, so the expected values can be computed from them.
        let scale = 1.0 / 64.0;
        case.act("x", &[1, c, hw, hw], scale, 0);
        let w = values(o * c * k * k, 11, 0.5);
        let bias = values(o, 12, 1.0);
        case.inits.push(init("w", F32, &[o, c, k, k], &w));
        case.inits.push(init("b", F32, &[o], &bias));
        case.nodes.push(node(
            "Conv",
            &["x_dq", "w", "b"],
            "y",
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("pads", &[pad as i64; 4]),
                attr_ints("strides", &[stride as i64; 2]),
            ],
        ));
        let m = import_bytes(&case.model(None), None, &ImportOptions::default()).unwrap();
        let ops = ops_with_types(&m.graph);
        assert_eq!(count(&ops, "matmul"), 0, "{ops:?}");
        assert_eq!(count(&ops, "conv2d"), blocks.len(), "{ops:?}");
        let fma = m
            .graph
            .nodes()
            .iter()
            .all(|n| !matches!(&n.op, Op::Conv2d(a) if !a.fma));
        assert!(fma, "a conv2d without fma: {}", m.graph);
        let x: Vec<f32> = values(c * hw * hw, 5, 100.0)
            .iter()
            .map(|v| (v.round() * scale) as f32)
            .collect();
        let input = Tensor::new(vec![1, c, hw, hw], x.clone()).unwrap();
        let got = kiln_reference::run(&m.graph, &[input]).unwrap();
        let (w32, b32): (Vec<f32>, Vec<f32>) = (
            w.iter().map(|&v| v as f32).collect(),
            bias.iter().map(|&v| v as f32).collect(),
        );
        let want = mlas_conv(&x, [c, hw, hw], &w32, o, k, pad, stride, &b32, blocks);
        let got = got[0].as_slice::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{c} channels, element {i}: {g} vs {w}"
            );
        }
    }
}
