//! Control flow expanded at import: If on a folded condition, Loop with a known trip count
//! (loop-carried values and scan outputs), Scan in both directions, and the errors for
//! conditions only known at run time.

use super::*;

fn graph_attr(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(5),
        g: Some(g),
        ..Default::default()
    }
}

fn body(nodes: Vec<NodeProto>, inputs: &[(&str, i32)], outputs: &[&str]) -> GraphProto {
    let scalar = |(n, t): &(&str, i32)| value_info(n, *t, &[]);
    GraphProto {
        node: nodes,
        name: Some("body".into()),
        input: inputs.iter().map(scalar).collect(),
        output: outputs.iter().map(|o| value_info(o, F, &[])).collect(),
        ..Default::default()
    }
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.as_slice::<f32>().unwrap().to_vec()
}

#[test]
fn if_takes_the_branch_its_folded_condition_selects() {
    let branch = |k: f32, out: &str| GraphProto {
        node: vec![node("Mul", "m", &["x", "k"], &[out], vec![])],
        name: Some("branch".into()),
        initializer: vec![init_f32("k", &[], &[k])],
        output: vec![value_info(out, F, &["2"])],
        ..Default::default()
    };
    let m = model(
        vec![
            node("Greater", "g", &["a", "b"], &["cond"], vec![]),
            node(
                "If",
                "if",
                &["cond"],
                &["y"],
                vec![
                    graph_attr("then_branch", branch(2.0, "t")),
                    graph_attr("else_branch", branch(-1.0, "e")),
                ],
            ),
        ],
        vec![value_info("x", F, &["2"])],
        vec![init_f32("a", &[], &[1.0]), init_f32("b", &[], &[3.0])],
        &["y"],
        17,
    );
    let y = evaluate(&m, &[Tensor::new(vec![2], vec![1.5f32, -4.0]).unwrap()]);
    assert_eq!(
        floats(&y[0]),
        vec![-1.5, 4.0],
        "1 > 3 is false: the else branch"
    );
    // A condition computed from an input is only known at run time.
    let runtime = model(
        vec![node(
            "If",
            "if",
            &["c"],
            &["y"],
            vec![
                graph_attr("then_branch", branch(2.0, "t")),
                graph_attr("else_branch", branch(-1.0, "e")),
            ],
        )],
        vec![value_info("c", 9, &[]), value_info("x", F, &["2"])],
        vec![],
        &["y"],
        17,
    );
    match import(&runtime) {
        Err(ImportError::NotStatic { op_type, .. }) => assert_eq!(op_type, "If"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn loop_unrolls_carried_values_and_stacks_scan_outputs() {
    // acc_{i+1} = acc_i * 2 + i, and each iteration's acc is a scan output.
    let mut b = body(
        vec![
            node("Cast", "c", &["i"], &["fi"], vec![attr_int("to", 1)]),
            node("Mul", "m", &["acc", "two"], &["twice"], vec![]),
            node("Add", "a", &["twice", "fi"], &["acc_out"], vec![]),
            node("Identity", "keep", &["cond_in"], &["cond_out"], vec![]),
            node("Identity", "s", &["acc_out"], &["scan"], vec![]),
        ],
        &[("i", 7), ("cond_in", 9), ("acc", F)],
        &["cond_out", "acc_out", "scan"],
    );
    b.initializer.push(init_f32("two", &[], &[2.0]));
    let m = model(
        vec![node(
            "Loop",
            "loop",
            &["trip", "", "acc0"],
            &["acc", "all"],
            vec![graph_attr("body", b)],
        )],
        vec![value_info("acc0", F, &[])],
        vec![init_i64("trip", &[], &[4])],
        &["acc", "all"],
        17,
    );
    let y = evaluate(&m, &[Tensor::new(vec![], vec![1.0f32]).unwrap()]);
    // 1 -> 2 -> 5 -> 12 -> 27
    assert_eq!(floats(&y[0]), vec![27.0]);
    assert_eq!(y[1].shape(), &[4]);
    assert_eq!(floats(&y[1]), vec![2.0, 5.0, 12.0, 27.0]);
}

#[test]
fn scan_runs_forward_and_backward() {
    // Running sum over the rows of x [3, 2]; the scan output is the running state.
    let mut b = body(
        vec![
            node("Add", "a", &["s", "row"], &["s_out"], vec![]),
            node("Identity", "o", &["s_out"], &["y"], vec![]),
        ],
        &[],
        &["s_out", "y"],
    );
    b.input = vec![value_info("s", F, &["2"]), value_info("row", F, &["2"])];
    let scan = |reverse: i64| {
        model(
            vec![node(
                "Scan",
                "scan",
                &["s0", "x"],
                &["s", "ys"],
                vec![
                    graph_attr("body", b.clone()),
                    attr_int("num_scan_inputs", 1),
                    attr_ints("scan_input_directions", &[reverse]),
                ],
            )],
            vec![value_info("s0", F, &["2"]), value_info("x", F, &["3", "2"])],
            vec![],
            &["s", "ys"],
            17,
        )
    };
    let inputs = [
        Tensor::new(vec![2], vec![0.0f32, 10.0]).unwrap(),
        Tensor::new(vec![3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
    ];
    let y = evaluate(&scan(0), &inputs);
    assert_eq!(floats(&y[0]), vec![9.0, 22.0]);
    assert_eq!(floats(&y[1]), vec![1.0, 12.0, 4.0, 16.0, 9.0, 22.0]);
    let y = evaluate(&scan(1), &inputs);
    assert_eq!(floats(&y[1]), vec![5.0, 16.0, 8.0, 20.0, 9.0, 22.0]);
}
