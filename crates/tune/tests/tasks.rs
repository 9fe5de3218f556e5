//! Task extraction and features on a bundled model.

mod common;

use common::dscnn;
use kiln_schedules::{schedule_with, Knobs, MicroShape, OpClass, SketchTarget};
use kiln_tune::extract_tasks;
use kiln_tune::features::{feature_names, kernel_features, FEATURE_COUNT};

#[test]
fn tasks_are_the_distinct_kernels_weighted_by_count() {
    let spec = dscnn();
    let model = spec.load().unwrap();
    let set = extract_tasks(&model.graph, &spec.graph_options(), &kiln::Target::host()).unwrap();
    let keys: std::collections::HashSet<&str> = set.tasks.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(keys.len(), set.tasks.len());
    // Every kernel the compiler runs is a task occurrence (plus reshapes it aliases away).
    let compiled = kiln::Compiler::new(kiln::Target::host())
        .compile(&model.graph)
        .unwrap();
    let weights: usize = set.tasks.iter().map(|t| t.weight).sum();
    assert!(weights >= compiled.stats().kernels, "{weights}");
    assert!(weights <= compiled.stats().kernels + 3, "{weights}");
    // The four depthwise convolutions share one workload, and so do the three pointwise
    // convolutions that write a depthwise's padded input (the fourth does not pad).
    assert!(set
        .tasks
        .iter()
        .any(|t| t.weight == 4 && t.class == OpClass::Depthwise));
    assert!(set
        .tasks
        .iter()
        .any(|t| t.weight == 3 && t.class == OpClass::Conv && t.placement.is_some()));
    // Extraction is deterministic (workers rebuild tasks from the model file).
    let again = extract_tasks(&model.graph, &spec.graph_options(), &kiln::Target::host()).unwrap();
    let k1: Vec<&str> = set.tasks.iter().map(|t| t.key.as_str()).collect();
    let k2: Vec<&str> = again.tasks.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(k1, k2);
}

#[test]
fn features_see_what_the_knobs_change() {
    let spec = dscnn();
    let model = spec.load().unwrap();
    // The Cranelift sketch (a target without micro-kernels: x86-64 with SSE4.2 only).
    let baseline = kiln::Target::named("x86_64-linux-gnu").unwrap();
    let set = extract_tasks(&model.graph, &spec.graph_options(), &baseline).unwrap();
    let conv = set
        .tasks
        .iter()
        .find(|t| t.class == OpClass::Conv && t.weight == 3)
        .unwrap();
    let features = |k: &Knobs| {
        let (_, f) = schedule_with(&conv.dag, conv.class, &conv.keep, k, &conv.target).unwrap();
        kernel_features(&f, k)
    };
    let default = features(&Knobs::default());
    assert_eq!(default.len(), FEATURE_COUNT);
    assert!(default.iter().all(|x| x.is_finite()));
    let rolled = features(&Knobs {
        unroll_tile: Some(false),
        unroll_window: Some(false),
        ..Knobs::default()
    });
    let names = feature_names();
    let at = |name: &str| names.iter().position(|n| n == name).unwrap();
    // Unrolled register tiles keep the accumulator in registers; rolled loops do not.
    assert!(default[at("register_local_bytes")] > rolled[at("register_local_bytes")]);
    let wide = features(&Knobs {
        vector_tile: Some(16),
        ..Knobs::default()
    });
    assert_ne!(default, wide);
    // Tensorized tiles of a target with micro-kernels: the tile shape shows in the features.
    let micro = SketchTarget {
        microkernels: Some(MicroShape {
            lanes: 16,
            registers: 32,
            int8: false,
            converting: true,
            pointwise: true,
        }),
    };
    let (_, small) = schedule_with(
        &conv.dag,
        conv.class,
        &conv.keep,
        &Knobs {
            row_tile: Some(1),
            ..Knobs::default()
        },
        &micro,
    )
    .unwrap();
    let (_, big) =
        schedule_with(&conv.dag, conv.class, &conv.keep, &Knobs::default(), &micro).unwrap();
    assert!(big.to_string().contains("tensorize."), "{big}");
    // Same knob features: the difference is in the loops.
    let k = Knobs::default();
    assert_ne!(kernel_features(&small, &k), kernel_features(&big, &k));
}
