//! The JIT-compiled bundled models match the reference interpreter and their expected outputs.

use kiln::{CompileOptions, Compiler, Target, Tensor};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/models")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.ty(), b.ty());
    a.data()
        .to_f64_vec()
        .iter()
        .zip(b.data().to_f64_vec())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Compiles bundled model `name` and checks every output against the reference interpreter
/// and the expected output files.
fn check(name: &str, threads: usize, tolerance: f64) {
    let dir = models_dir();
    let model = kiln::load_onnx(dir.join(format!("{name}.onnx")), &Default::default()).unwrap();
    let read = |prefix: &str, n: usize| -> Vec<Tensor> {
        (0..n)
            .map(|i| {
                kiln::read_tensor(dir.join(format!("{name}_data/{prefix}_{i}.pb")))
                    .unwrap()
                    .1
            })
            .collect()
    };
    let inputs = read("input", model.graph.inputs().len());
    let expected = read("output", model.onnx_output_count());
    let compiled = Compiler::new(Target::host())
        .with_options(CompileOptions {
            threads,
            ..Default::default()
        })
        .compile(&model.graph)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference = model
        .trim_outputs(kiln_reference::run(&model.graph, &inputs).unwrap())
        .unwrap();
    let got = model.trim_outputs(compiled.run(&inputs).unwrap()).unwrap();
    assert_eq!(got.len(), expected.len());
    for (i, g) in got.iter().enumerate() {
        let d_ref = max_abs_diff(g, &reference[i]);
        let d_exp = max_abs_diff(g, &expected[i]);
        assert!(
            d_ref <= tolerance,
            "{name} output {i}: {d_ref} from the reference"
        );
        assert!(
            d_exp <= tolerance,
            "{name} output {i}: {d_exp} from the expected output"
        );
    }
    let stats = compiled.stats();
    assert!(stats.arena_bytes <= stats.naive_bytes);
}

#[test]
fn resnet8_matches_single_threaded() {
    check("resnet8_cifar", 1, 1e-4);
}

#[test]
fn resnet8_matches_on_two_threads() {
    check("resnet8_cifar", 2, 1e-4);
}

#[test]
fn dscnn_matches() {
    check("dscnn_kws", 2, 1e-4);
}

/// Opset 23's transformer blocks (RMSNormalization, RotaryEmbedding with position ids, causal
/// grouped-query Attention with its present key/value outputs) against onnxruntime's outputs.
#[test]
fn decoder_block_matches_onnxruntime() {
    check("decoder_block", 1, 1e-4);
    check("decoder_block", 2, 1e-4);
}

/// TopK + NonMaxSuppression + Gather, whose outputs have a data-dependent number of rows, against
/// onnxruntime's outputs (exact: indices, and boxes gathered by them).
#[test]
fn detection_tail_matches_onnxruntime() {
    check("detection_tail", 1, 0.0);
    check("detection_tail", 2, 0.0);
}

/// int8 QDQ models compute exactly what onnxruntime does (docs/onnxruntime-int8-numerics.md).
#[test]
fn int8_models_match_onnxruntime_exactly() {
    check("resnet8_cifar_int8", 2, 0.0);
    check("qdq_mix_int8", 1, 0.0);
    check("qdq_mix_int8", 2, 0.0);
}

#[test]
fn wrong_inputs_are_errors() {
    let dir = models_dir();
    let model = kiln::load_onnx(dir.join("dscnn_kws.onnx"), &Default::default()).unwrap();
    let compiled = Compiler::new(Target::host()).compile(&model.graph).unwrap();
    assert!(matches!(
        compiled.run(&[]),
        Err(kiln::RunError::InputCount { .. })
    ));
    let wrong = Tensor::zeros(kiln::TensorType::new(kiln::DType::F32, vec![1, 2]).unwrap());
    assert!(matches!(
        compiled.run(&[wrong]),
        Err(kiln::RunError::InputType { .. })
    ));
}

#[test]
fn elementwise_kernels_write_in_place_over_dying_inputs() {
    // transpose -> exp -> transpose: exp's input dies at exp and has its size, so exp writes over
    // it and the arena holds one 4x6 f32 buffer instead of two.
    let g = transpose_exp_transpose();
    let compiled = Compiler::new(Target::host())
        .with_options(CompileOptions {
            threads: 1,
            // The graph as written: these tests are about the memory plan of these kernels
            // (rewriting would cancel the transposes).
            graph: kiln::GraphOptions {
                rewrite: false,
                ..Default::default()
            },
            ..Default::default()
        })
        .compile(&g)
        .unwrap();
    assert_eq!(compiled.stats().kernels, 3);
    assert_eq!(
        compiled.stats().arena_bytes,
        128,
        "24 f32 rounded to the 64-byte alignment"
    );
    let input = Tensor::new(vec![4, 6], (0..24).map(|i| i as f32 / 10.0).collect()).unwrap();
    let got = compiled.run(std::slice::from_ref(&input)).unwrap();
    let want = kiln_reference::run(&g, &[input]).unwrap();
    assert!(max_abs_diff(&got[0], &want[0]) <= 1e-6);
}

#[test]
fn a_broadcast_input_of_equal_byte_size_is_not_overwritten_in_place() {
    use kiln::{DType, Graph, TensorType};
    use kiln_ir::op::BinaryOp;
    use kiln_ir::Op;
    // t: i32[1,2] (8 bytes) dies at the add, whose output i16[2,2] is also 8 bytes; the add reads
    // t again for its second row, after the first row was written where t lives: overwriting t
    // in place would corrupt that row.
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::new(DType::I32, vec![2, 1]).unwrap());
    let y = g.add_input("y", TensorType::new(DType::I16, vec![2, 2]).unwrap());
    let t = g
        .add_node(Op::Transpose { perm: vec![1, 0] }, &[x], "t")
        .unwrap();
    let h = g.add_node(Op::Cast { to: DType::I16 }, &[t], "h").unwrap();
    let e = g
        .add_node(Op::Binary(BinaryOp::Add), &[h, y], "add")
        .unwrap();
    let out = g
        .add_node(Op::Transpose { perm: vec![1, 0] }, &[e], "out")
        .unwrap();
    g.set_outputs(vec![out]).unwrap();
    let compiled = Compiler::new(Target::host())
        .with_options(CompileOptions {
            threads: 1,
            // The graph as written: these tests are about the memory plan of these kernels
            // (rewriting would cancel the transposes).
            graph: kiln::GraphOptions {
                rewrite: false,
                ..Default::default()
            },
            ..Default::default()
        })
        .compile(&g)
        .unwrap();
    let inputs = [
        Tensor::new(vec![2, 1], vec![1000i32, -3]).unwrap(),
        Tensor::new(vec![2, 2], vec![5i16, 7, 11, 13]).unwrap(),
    ];
    let got = compiled.run(&inputs).unwrap();
    let want = kiln_reference::run(&g, &inputs).unwrap();
    assert_eq!(got, want);
}

#[test]
fn rewriting_runs_before_lowering_and_can_be_turned_off() {
    use kiln::GraphOptions;
    // transpose -> exp -> transpose: the e-graph sinks the first transpose through exp and
    // cancels the pair, leaving one kernel.
    let g = transpose_exp_transpose();
    let input = Tensor::new(vec![4, 6], (0..24).map(|i| i as f32 / 10.0).collect()).unwrap();
    let want = kiln_reference::run(&g, std::slice::from_ref(&input)).unwrap();
    for (rewrite, kernels) in [(true, 1), (false, 3)] {
        let compiled = Compiler::new(Target::host())
            .with_options(CompileOptions {
                threads: 1,
                graph: GraphOptions {
                    rewrite,
                    ..Default::default()
                },
                ..Default::default()
            })
            .compile(&g)
            .unwrap();
        assert_eq!(compiled.stats().kernels, kernels, "rewrite {rewrite}");
        let report = compiled.stats().rewrite.as_ref();
        assert_eq!(
            report.map(|r| (r.nodes_before, r.nodes_after)),
            rewrite.then_some((3, 1))
        );
        let got = compiled.run(std::slice::from_ref(&input)).unwrap();
        assert!(max_abs_diff(&got[0], &want[0]) <= 1e-6);
    }
}

/// `transpose(exp(transpose(x)))` over an f32[4,6] input.
fn transpose_exp_transpose() -> kiln::Graph {
    use kiln_ir::op::UnaryOp;
    use kiln_ir::Op;
    let mut g = kiln::Graph::new();
    let x = g.add_input(
        "x",
        kiln::TensorType::new(kiln::DType::F32, vec![4, 6]).unwrap(),
    );
    let t = g
        .add_node(Op::Transpose { perm: vec![1, 0] }, &[x], "t0")
        .unwrap();
    let e = g.add_node(Op::Unary(UnaryOp::Exp), &[t], "exp").unwrap();
    let y = g
        .add_node(Op::Transpose { perm: vec![1, 0] }, &[e], "t1")
        .unwrap();
    g.set_outputs(vec![y]).unwrap();
    g
}

/// TOSA's numerics (`Int8Numerics::Tosa`): compiled code equals the reference interpreter exactly
/// (integer RESCALEs), and stays within one quantization step (1/255 here) of onnxruntime.
#[test]
fn int8_tosa_numerics_compile_exactly_and_stay_within_a_step() {
    let dir = models_dir();
    let options = kiln::ImportOptions {
        int8_numerics: kiln::Int8Numerics::Tosa,
        ..Default::default()
    };
    for name in ["resnet8_cifar_int8", "qdq_mix_int8"] {
        let model = kiln::load_onnx(dir.join(format!("{name}.onnx")), &options).unwrap();
        let data = dir.join(format!("{name}_data"));
        let input = kiln::read_tensor(data.join("input_0.pb")).unwrap().1;
        let expected = kiln::read_tensor(data.join("output_0.pb")).unwrap().1;
        let compiled = Compiler::new(Target::host())
            .compile(&model.graph)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = compiled.run(std::slice::from_ref(&input)).unwrap();
        let reference = kiln_reference::run(&model.graph, &[input]).unwrap();
        assert_eq!(max_abs_diff(&got[0], &reference[0]), 0.0, "{name}");
        let step = max_abs_diff(&got[0], &expected);
        assert!(
            step <= 1.0 / 255.0 + 1e-6,
            "{name}: {step} from onnxruntime"
        );
    }
}
