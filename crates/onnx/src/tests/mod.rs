//! Unit tests: small ONNX models built with the prost types, imported and checked through the IR
//! text form, types and error messages.

use crate::proto::tensor_shape_proto::{dimension, Dimension};
use crate::proto::*;
use crate::{import_bytes, ImportError, ImportOptions};
use kiln_ir::{DType, Tensor};
use prost::Message;

mod control;
mod detection;
mod int8;
mod ops;

const F: i32 = 1;
const I64: i32 = 7;

fn dim(d: &str) -> Dimension {
    let value = match d.parse::<i64>() {
        Ok(v) => dimension::Value::DimValue(v),
        Err(_) => dimension::Value::DimParam(d.to_string()),
    };
    Dimension {
        value: Some(value),
        ..Default::default()
    }
}

fn value_info(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims.iter().map(|d| dim(d)).collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
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

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(7),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn init_f32(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(F),
        float_data: v.to_vec(),
        ..Default::default()
    }
}

fn init_i64(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(I64),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    outputs: &[&str],
    opset: i64,
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: Some("g".into()),
            initializer: inits,
            input: inputs,
            output: outputs.iter().map(|o| value_info(o, F, &[])).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn import(bytes: &[u8]) -> Result<crate::Model, ImportError> {
    import_bytes(bytes, None, &ImportOptions::default())
}

fn text(bytes: &[u8]) -> String {
    match import(bytes) {
        Ok(m) => m.graph.to_string(),
        Err(e) => panic!("import failed: {e}"),
    }
}

#[test]
fn add_broadcast_aligns_ranks() {
    let m = model(
        vec![node("Add", "add", &["x", "b"], &["y"], vec![])],
        vec![value_info("x", F, &["2", "3"])],
        vec![init_f32("b", &[3], &[1.0, 2.0, 3.0])],
        &["y"],
        17,
    );
    let t = text(&m);
    // The constant operand is reshaped to rank 2, folded into a constant.
    assert!(t.contains("f32[1,3] = const"), "{t}");
    assert!(t.contains("f32[2,3] = add"), "{t}");
    assert!(t.contains("output"), "{t}");
}

#[test]
fn unsorted_nodes_are_sorted() {
    let m = model(
        vec![
            node("Relu", "second", &["h"], &["y"], vec![]),
            node("Neg", "first", &["x"], &["h"], vec![]),
        ],
        vec![value_info("x", F, &["4"])],
        vec![],
        &["y"],
        17,
    );
    let t = text(&m);
    let neg = t.find("negate").expect("negate");
    let clamp = t.find("clamp").expect("clamp");
    assert!(neg < clamp, "{t}");
}

#[test]
fn truncated_bytes_are_a_decode_error() {
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![value_info("x", F, &["4"])],
        vec![],
        &["y"],
        17,
    );
    for cut in [1, m.len() / 2, m.len() - 1] {
        match import(&m[..cut]) {
            Err(ImportError::Decode(_)) | Err(ImportError::InvalidModel(_)) => {}
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    assert!(matches!(
        import(&[0xff, 0xff, 0xff]),
        Err(ImportError::Decode(_))
    ));
}

#[test]
fn wrong_initializer_size_is_rejected() {
    let m = model(
        vec![node("Add", "add", &["x", "b"], &["y"], vec![])],
        vec![value_info("x", F, &["3"])],
        vec![init_f32("b", &[3], &[1.0, 2.0])],
        &["y"],
        17,
    );
    let e = import(&m).unwrap_err().to_string();
    assert!(
        e.contains("initializer `b`") && e.contains("2 elements"),
        "{e}"
    );
}

#[test]
fn missing_input_is_rejected() {
    let m = model(
        vec![node("Add", "add", &["x", "nowhere"], &["y"], vec![])],
        vec![value_info("x", F, &["3"])],
        vec![],
        &["y"],
        17,
    );
    let e = import(&m).unwrap_err().to_string();
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn cycle_is_rejected() {
    let m = model(
        vec![
            node("Add", "a", &["x", "c"], &["b"], vec![]),
            node("Relu", "r", &["b"], &["c"], vec![]),
        ],
        vec![value_info("x", F, &["3"])],
        vec![],
        &["c"],
        17,
    );
    let e = import(&m).unwrap_err().to_string();
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn unknown_op_names_op_node_and_opset() {
    let m = model(
        vec![node("FancyOp", "fancy_1", &["x"], &["y"], vec![])],
        vec![value_info("x", F, &["3"])],
        vec![],
        &["y"],
        15,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::Unsupported { .. }), "{e:?}");
    let s = e.to_string();
    assert!(
        s.contains("FancyOp") && s.contains("fancy_1") && s.contains("opset 15"),
        "{s}"
    );
}

#[test]
fn attribute_no_mapping_understands_is_refused() {
    // SpaceToDepth gained `mode` in opset 28; an unknown attribute must never be ignored.
    let m = model(
        vec![node(
            "Relu",
            "relu_3",
            &["x"],
            &["y"],
            vec![attr_int("brand_new_flag", 1)],
        )],
        vec![value_info("x", F, &["3"])],
        vec![],
        &["y"],
        21,
    );
    let s = import(&m).unwrap_err().to_string();
    assert!(
        s.contains("relu_3") && s.contains("`brand_new_flag` is not supported"),
        "{s}"
    );
}

#[test]
fn other_domain_is_unsupported() {
    let mut n = node("Relu", "r", &["x"], &["y"], vec![]);
    n.domain = Some("com.microsoft".into());
    let m = model(
        vec![n],
        vec![value_info("x", F, &["3"])],
        vec![],
        &["y"],
        17,
    );
    let e = import(&m).unwrap_err().to_string();
    assert!(e.contains("com.microsoft"), "{e}");
}

#[test]
fn mismatched_shapes_are_invalid() {
    let m = model(
        vec![node("Add", "add", &["x", "z"], &["y"], vec![])],
        vec![value_info("x", F, &["2", "3"]), value_info("z", F, &["4"])],
        vec![],
        &["y"],
        17,
    );
    let e = import(&m).unwrap_err();
    assert!(matches!(e, ImportError::InvalidNode { .. }), "{e:?}");
}

#[test]
fn absurd_dims_are_rejected_before_allocating() {
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![value_info("x", F, &["100000000", "100000000", "100000000"])],
        vec![],
        &["y"],
        17,
    );
    assert!(import(&m).unwrap_err().to_string().contains("too large"));
    let m = model(
        vec![node("Add", "a", &["x", "w"], &["y"], vec![])],
        vec![value_info("x", F, &["1"])],
        vec![init_f32("w", &[1 << 40, 1 << 40], &[])],
        &["y"],
        17,
    );
    assert!(import(&m).is_err());
}

#[test]
fn symbolic_batch_defaults_to_one_with_a_note() {
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![value_info("x", F, &["N", "3"])],
        vec![],
        &["y"],
        17,
    );
    let model = import(&m).unwrap();
    assert_eq!(model.graph.ty(model.graph.inputs()[0]).shape, vec![1, 3]);
    assert!(
        model.notes[0].contains("symbolic batch `N` bound to 1"),
        "{:?}",
        model.notes
    );
    let mut opts = ImportOptions::default();
    opts.input_shapes.insert("x".into(), vec![5, 3]);
    let model = import_bytes(&m, None, &opts).unwrap();
    assert_eq!(model.graph.ty(model.graph.inputs()[0]).shape, vec![5, 3]);
    assert!(model.notes.is_empty());
    opts.input_shapes.insert("x".into(), vec![5, 4]);
    let e = import_bytes(&m, None, &opts).unwrap_err().to_string();
    assert!(e.contains("contradicts"), "{e}");
}

#[test]
fn unbound_inner_symbolic_dim_is_an_error() {
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![value_info("x", F, &["1", "T"])],
        vec![],
        &["y"],
        17,
    );
    let e = import(&m).unwrap_err().to_string();
    assert!(
        e.contains("`x`") && e.contains("`T`") && e.contains("--input-shape"),
        "{e}"
    );
}

#[test]
fn shape_subgraph_folds_into_reshape() {
    // y = Reshape(x, Concat(Shape(x)[0:1], [-1])).
    let m = model(
        vec![
            node("Shape", "shape", &["x"], &["s"], vec![attr_int("end", 1)]),
            node(
                "Concat",
                "cat",
                &["s", "minus1"],
                &["target"],
                vec![attr_int("axis", 0)],
            ),
            node("Reshape", "reshape", &["x", "target"], &["y"], vec![]),
        ],
        vec![value_info("x", F, &["2", "3", "4"])],
        vec![init_i64("minus1", &[1], &[-1])],
        &["y"],
        17,
    );
    let t = text(&m);
    assert!(t.contains("f32[2,12] = reshape"), "{t}");
    assert!(
        !t.contains("concat"),
        "the shape computation must fold away: {t}"
    );
}

#[test]
fn depthwise_and_grouped_conv() {
    let conv = |group: i64, w_in: i64| {
        model(
            vec![node(
                "Conv",
                "conv",
                &["x", "w"],
                &["y"],
                vec![attr_int("group", group), attr_ints("pads", &[1, 1, 1, 1])],
            )],
            vec![value_info("x", F, &["1", "4", "5", "5"])],
            vec![init_f32(
                "w",
                &[4, w_in, 3, 3],
                &vec![0.5; (4 * w_in * 9) as usize],
            )],
            &["y"],
            17,
        )
    };
    let t = text(&conv(4, 1));
    assert!(t.contains("f32[1,4,5,5] = depthwise_conv2d"), "{t}");
    let t = text(&conv(2, 2));
    assert_eq!(t.matches("= conv2d").count(), 2, "{t}");
    assert!(t.contains("concat"), "{t}");
}

#[test]
fn softmax_opset_differences() {
    let sm = |opset: i64| {
        model(
            vec![node("Softmax", "sm", &["x"], &["y"], vec![])],
            vec![value_info("x", F, &["2", "3", "4"])],
            vec![],
            &["y"],
            opset,
        )
    };
    // Opset 11: default axis 1 over a 2-D coercion [2, 12].
    assert!(text(&sm(11)).contains("f32[2,12] = reshape"));
    // Opset 13: default axis -1, no coercion.
    assert!(!text(&sm(13)).contains("reshape"));
}

#[test]
fn opset_out_of_range_is_rejected() {
    let m = model(
        vec![node("Relu", "r", &["x"], &["y"], vec![])],
        vec![value_info("x", F, &["3"])],
        vec![],
        &["y"],
        9999,
    );
    assert!(import(&m).unwrap_err().to_string().contains("9999"));
}

#[test]
fn packed_int32_data_types() {
    let t = TensorProto {
        dims: vec![3],
        data_type: Some(3), // INT8
        int32_data: vec![-1, 5, 127],
        ..Default::default()
    };
    let v = crate::tensor_io::decode_tensor(&t, None).unwrap();
    assert_eq!(v, Tensor::new(vec![3], vec![-1i8, 5, 127]).unwrap());
    let t = TensorProto {
        dims: vec![1],
        data_type: Some(10), // FLOAT16, bits of 1.0
        int32_data: vec![0x3c00],
        ..Default::default()
    };
    let v = crate::tensor_io::decode_tensor(&t, None).unwrap();
    assert_eq!(v.dtype(), DType::F16);
    assert_eq!(v.data().to_f64_vec(), vec![1.0]);
    let t = TensorProto {
        dims: vec![2],
        data_type: Some(16), // BFLOAT16, bits of 1.0 and -2.0
        int32_data: vec![0x3f80, 0xc000],
        ..Default::default()
    };
    let v = crate::tensor_io::decode_tensor(&t, None).unwrap();
    assert_eq!(v.dtype(), DType::BF16);
    assert_eq!(v.data().to_f64_vec(), vec![1.0, -2.0]);
    let t = TensorProto {
        dims: vec![2],
        data_type: Some(11), // DOUBLE
        double_data: vec![1.0, 2.5],
        ..Default::default()
    };
    let v = crate::tensor_io::decode_tensor(&t, None).unwrap();
    assert_eq!(v, Tensor::new(vec![2], vec![1.0f64, 2.5]).unwrap());
    let t = TensorProto {
        dims: vec![2],
        data_type: Some(13), // UINT64 (uint64_data), beyond i64
        uint64_data: vec![u64::MAX, 7],
        ..Default::default()
    };
    let v = crate::tensor_io::decode_tensor(&t, None).unwrap();
    assert_eq!(v, Tensor::new(vec![2], vec![u64::MAX, 7]).unwrap());
    // Sub-byte integers unpack low bits first, signed ones sign-extended, into one byte each.
    let t = TensorProto {
        dims: vec![3],
        data_type: Some(22), // INT4: 0, -8, 7 (odd count: the last byte's high half is padding)
        raw_data: Some(vec![0x80, 0x07]),
        ..Default::default()
    };
    let v = crate::tensor_io::decode_tensor(&t, None).unwrap();
    assert_eq!(v, Tensor::new(vec![3], vec![0i8, -8, 7]).unwrap());
    let t = TensorProto {
        dims: vec![5],
        data_type: Some(25), // UINT2: 3, 2, 1, 0, 3
        raw_data: Some(vec![0b00_01_10_11, 0b11]),
        ..Default::default()
    };
    let v = crate::tensor_io::decode_tensor(&t, None).unwrap();
    assert_eq!(v, Tensor::new(vec![5], vec![3u8, 2, 1, 0, 3]).unwrap());
    let t = TensorProto {
        dims: vec![1],
        data_type: Some(17), // FLOAT8E4M3FN
        int32_data: vec![0x38],
        ..Default::default()
    };
    assert!(crate::tensor_io::decode_tensor(&t, None)
        .unwrap_err()
        .contains("FLOAT8E4M3FN"));
}

#[test]
fn external_data_cannot_escape_the_model_folder() {
    let t = TensorProto {
        dims: vec![1],
        data_type: Some(F),
        data_location: Some(1),
        external_data: vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some("../secret.bin".into()),
        }],
        ..Default::default()
    };
    let dir = std::env::temp_dir();
    let e = crate::tensor_io::decode_tensor(&t, Some(&dir)).unwrap_err();
    assert!(e.contains("escapes"), "{e}");
    assert!(crate::tensor_io::decode_tensor(&t, None).is_err());
}

#[test]
fn tensor_files_round_trip() {
    let dir = std::env::temp_dir().join(format!("kiln-onnx-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("t.pb");
    let t = Tensor::new(vec![2, 2], vec![1.5f32, -2.0, 0.0, 3.25]).unwrap();
    crate::write_tensor_file(&p, "x", &t).unwrap();
    let (name, back) = crate::read_tensor_file(&p).unwrap();
    assert_eq!(name, "x");
    assert_eq!(back, t);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn requantization_multiplier() {
    let (m, s) = crate::ops::quantize_multiplier_for_tests(0.25).unwrap();
    assert_eq!((m, s), (1 << 30, 32));
    let (m, s) = crate::ops::quantize_multiplier_for_tests(0.0123).unwrap();
    let back = m as f64 / 2f64.powi(s as i32);
    assert!((back - 0.0123).abs() < 1e-9);
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(1),
        f: Some(v),
        ..Default::default()
    }
}

/// Imports `bytes` and runs the reference interpreter on `inputs`.
fn evaluate(bytes: &[u8], inputs: &[Tensor]) -> Vec<Tensor> {
    let m = import(bytes).unwrap_or_else(|e| panic!("import failed: {e}"));
    kiln_reference::run(&m.graph, inputs).expect("reference run")
}

fn assert_all_close(got: &[f32], expected: &[f64], tol: f64) {
    assert_eq!(got.len(), expected.len());
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (f64::from(g) - e).abs() <= tol * (1.0 + e.abs()),
            "element {i}: got {g}, expected {e}"
        );
    }
}

/// Regression (PaddlePaddle's exporter): an input dim written as -1 is symbolic, so a leading
/// one binds to 1 with a note, an inner one needs `--input-shape`; other negative dims stay
/// invalid.
#[test]
fn minus_one_dims_are_symbolic() {
    let relu = |dims: &[&str]| {
        model(
            vec![node("Relu", "r", &["x"], &["y"], vec![])],
            vec![value_info("x", F, dims)],
            vec![],
            &["y"],
            17,
        )
    };
    let m = import(&relu(&["-1", "3"])).unwrap();
    assert_eq!(m.graph.ty(m.graph.inputs()[0]).shape, vec![1, 3]);
    assert!(
        m.notes[0].contains("symbolic batch `-1` bound to 1"),
        "{:?}",
        m.notes
    );
    let inner = relu(&["1", "-1"]);
    let e = import(&inner).unwrap_err().to_string();
    assert!(
        e.contains("dim 1 is symbolic") && e.contains("--input-shape"),
        "{e}"
    );
    let mut opts = ImportOptions::default();
    opts.input_shapes.insert("x".into(), vec![1, 6]);
    let m = import_bytes(&inner, None, &opts).unwrap();
    assert_eq!(m.graph.ty(m.graph.inputs()[0]).shape, vec![1, 6]);
    let e = import(&relu(&["2", "-3"])).unwrap_err().to_string();
    assert!(e.contains("negative (-3)"), "{e}");
}
