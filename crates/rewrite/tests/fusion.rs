//! Fusion chosen by the e-graph: conv + bias + activation and elementwise chains become one
//! group, values with several readers stay materialised, and the groups lower and compute what
//! the graph computes.

use kiln_ir::{parse_graph, Graph, Op};
use kiln_operators::fusion::partition;
use kiln_operators::kernel::{lower_groups, run_kernels};
use kiln_rewrite::fusion::fusion_groups;
use kiln_rewrite::{RewriteOptions, RooflineCost};

/// The groups as op names, in order.
fn groups_of(text: &str) -> Vec<Vec<&'static str>> {
    let g = parse_graph(text).unwrap();
    let (g2, groups, report) =
        fusion_groups(&g, &RewriteOptions::default(), &RooflineCost::default()).unwrap();
    assert!(!report.fell_back);
    check_lowered(&g2, &groups);
    groups
        .iter()
        .map(|gr| gr.nodes.iter().map(|&n| g2.node(n).op.name()).collect())
        .collect()
}

/// The groups lower, and running their kernels gives the reference outputs.
fn check_lowered(g: &Graph, groups: &[kiln_operators::fusion::Group]) {
    let kernels = lower_groups(g, groups).unwrap();
    let inputs: Vec<kiln_ir::Tensor> = g
        .inputs()
        .iter()
        .map(|&v| {
            let n = g.ty(v).num_elements();
            kiln_ir::Tensor::new(
                g.ty(v).shape.clone(),
                (0..n).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<f32>>(),
            )
            .unwrap()
        })
        .collect();
    let got = run_kernels(g, &kernels, &inputs).unwrap();
    let want = kiln_reference::run(g, &inputs).unwrap();
    for (a, b) in got.iter().zip(&want) {
        for (x, y) in a.data().to_f64_vec().iter().zip(b.data().to_f64_vec()) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}

#[test]
fn conv_bias_and_activation_are_one_kernel() {
    let groups = groups_of(
        r#"graph {
  const @0: f32[4,1,3,3] = [1, 0, -1, 2, 0, -2, 1, 0, -1, 0.5, 0.25, 0, 0, 0, 0, 0, 0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, 0, 0, 0, 1, 1, 1]
  const @1: f32[4] = [0, 0, 0, 0]
  const @2: f32[1,4,1,1] = [0.5, -0.5, 1, 2]
  input %0 "image": f32[1,1,5,5]
  %1: f32[4,1,3,3] = const(@0)
  %2: f32[4] = const(@1)
  %3: f32[1,4,3,3] = conv2d(%0, %1, %2) {"dilation":[1,1],"input_zp":0,"pad":[0,0,0,0],"stride":[1,1],"weight_zp":0}
  %4: f32[1,4,1,1] = const(@2)
  %5: f32[1,4,3,3] = add(%4, %3)
  %6: f32[1,4,3,3] = sigmoid(%5)
  %7: f32[1,4,3,3] = mul(%5, %6)
  output %7
}"#,
    );
    // conv -> add(bias) -> sigmoid, then mul reads the add twice: neither reader fuses alone
    // (the add would be needed twice), but together (SiLU) they are one epilogue reading it
    // twice, so the whole is one kernel.
    assert_eq!(groups, vec![vec!["conv2d", "add", "sigmoid", "mul"]]);
}

#[test]
fn elementwise_chains_fuse_and_stop_at_pools_and_shared_values() {
    let groups = groups_of(
        r#"graph {
  input %0 "x": f32[1,2,4,4]
  %1: f32[1,2,4,4] = exp(%0)
  %2: f32[1,2,4,4] = negate(%1)
  %3: f32[1,2,4,4] = tanh(%2)
  %4: f32[1,2,2,2] = max_pool2d(%3) {"ceil_mode":false,"count_include_pad":false,"dilation":[1,1],"kernel":[2,2],"pad":[0,0,0,0],"stride":[2,2]}
  %5: f32[1,2,2,2] = abs(%4)
  %6: f32[1,2,2,2] = floor(%5)
  %7: f32[1,2,2,2] = ceil(%5)
  output %6
  output %7
}"#,
    );
    assert_eq!(
        groups,
        vec![
            vec!["exp", "negate", "tanh"],
            vec!["max_pool2d"],
            vec!["abs"],
            // (the extracted graph lists the two readers of abs in its own, deterministic order)
            vec!["ceil"],
            vec!["floor"],
        ]
    );
}

#[test]
fn bundled_models_fuse_like_the_partition_rule_and_still_compute_their_outputs() {
    for name in ["resnet8_cifar", "dscnn_kws"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models");
        let model =
            kiln_onnx::load_model(&dir.join(format!("{name}.onnx")), &Default::default()).unwrap();
        let (g, _) = kiln_rewrite::optimize(&model.graph, &RewriteOptions::default()).unwrap();
        let (g2, groups, report) =
            fusion_groups(&g, &RewriteOptions::default(), &RooflineCost::default()).unwrap();
        assert!(!report.fell_back, "{name}");
        assert_eq!(groups.len(), partition(&g2).len(), "{name}");
        // Every conv is followed in its group by its activation when it has one.
        for gr in &groups {
            if let Some(a) = gr.anchor {
                assert_eq!(gr.nodes[0], a);
            }
        }
        assert!(groups
            .iter()
            .any(|gr| gr.nodes.len() > 1 && matches!(g2.node(gr.nodes[0]).op, Op::Conv2d(_))));
        check_lowered(&g2, &groups);
    }
}
