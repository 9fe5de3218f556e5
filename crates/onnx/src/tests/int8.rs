//! Regression (the int8 models of onnxruntime's `quantize_static`): a QDQ model computes what
//! onnxruntime computes by default, and TOSA's fixed-point numerics on request.

use super::*;
use crate::Int8Numerics;

const I8: i32 = 3;
const I32: i32 = 6;

fn init(name: &str, dtype: i32, dims: &[i64], v: &[i32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(dtype),
        int32_data: v.to_vec(),
        ..Default::default()
    }
}

/// `x -> Q -> DQ -> Conv 1x1 (two filters, weight 1 at scale 1/2, bias 0) -> Q -> DQ -> y`, every
/// activation at scale 1, so the requantization computes `acc / 2` and its rounding shows. When
/// `fan_out`, the quantized input is also read by a second output, so onnxruntime keeps it int8
/// and runs the Conv in float.
fn half_conv(fan_out: bool) -> Vec<u8> {
    let mut nodes = vec![
        node("QuantizeLinear", "qx", &["x", "s1", "z"], &["xq"], vec![]),
        node(
            "DequantizeLinear",
            "dqx",
            &["xq", "s1", "z"],
            &["xf"],
            vec![],
        ),
        node(
            "DequantizeLinear",
            "dqw",
            &["w", "sw"],
            &["wf"],
            vec![attr_int("axis", 0)],
        ),
        node(
            "DequantizeLinear",
            "dqb",
            &["b", "sw"],
            &["bf"],
            vec![attr_int("axis", 0)],
        ),
        node("Conv", "conv", &["xf", "wf", "bf"], &["c"], vec![]),
        node("QuantizeLinear", "qy", &["c", "s1", "z"], &["yq"], vec![]),
        node(
            "DequantizeLinear",
            "dqy",
            &["yq", "s1", "z"],
            &["y"],
            vec![],
        ),
    ];
    let mut outputs = vec!["y"];
    if fan_out {
        nodes.push(node(
            "DequantizeLinear",
            "dqx2",
            &["xq", "s1", "z"],
            &["x2"],
            vec![],
        ));
        outputs.push("x2");
    }
    model(
        nodes,
        vec![value_info("x", F, &["1", "1", "1", "4"])],
        vec![
            init_f32("s1", &[], &[1.0]),
            init_f32("sw", &[2], &[0.5, 0.5]),
            init("z", I8, &[], &[0]),
            init("w", I8, &[2, 1, 1, 1], &[1, 1]),
            init("b", I32, &[2], &[0, 0]),
        ],
        &outputs,
        13,
    )
}

fn run(bytes: &[u8], numerics: Int8Numerics, x: &[f32]) -> (String, Vec<f32>) {
    let options = ImportOptions {
        int8_numerics: numerics,
        ..Default::default()
    };
    let m = import_bytes(bytes, None, &options).unwrap_or_else(|e| panic!("import failed: {e}"));
    let input = Tensor::new(vec![1, 1, 1, 4], x.to_vec()).unwrap();
    let y = kiln_reference::run(&m.graph, &[input]).expect("reference run");
    (
        m.graph.to_string(),
        y[0].as_slice::<f32>().unwrap().to_vec(),
    )
}

/// The fused QLinearConv requantizes `f32(acc) * (Xs·Ws/Ys)` and rounds half to even; TOSA's
/// RESCALE rounds half up. `acc / 2` for acc = 1, 3, 5, 7 has a tie in every element.
#[test]
fn fused_conv_rounds_half_to_even_like_onnxruntime() {
    let x = [1.0, 3.0, 5.0, -1.0];
    let (text, y) = run(&half_conv(false), Int8Numerics::OnnxRuntime, &x);
    assert!(text.contains("conv2d"), "{text}");
    assert!(!text.contains("rescale"), "{text}");
    assert_eq!(y, [0.0, 2.0, 2.0, -0.0].repeat(2));
    let (text, y) = run(&half_conv(false), Int8Numerics::Tosa, &x);
    assert!(text.contains("rescale"), "{text}");
    assert_eq!(y, [1.0, 2.0, 3.0, 0.0].repeat(2));
}

/// A Conv whose quantized input has two readers stays int8 in onnxruntime, which then runs it
/// as a float Conv (MLAS SGEMM: one fma chain, bias added last) between DQ and Q: Kiln imports
/// it as an fma MATMUL, and the Q divides and rounds half to even.
#[test]
fn unfused_conv_runs_in_float_in_mlas_order() {
    let x = [1.0, 3.0, 5.0, 7.0];
    let (text, y) = run(&half_conv(true), Int8Numerics::OnnxRuntime, &x);
    assert!(
        text.contains("matmul") && text.contains("\"fma\":true"),
        "{text}"
    );
    assert!(!text.contains("conv2d"), "{text}");
    assert_eq!(y, [0.0, 2.0, 2.0, 4.0].repeat(2));
}
