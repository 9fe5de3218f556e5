//! Op mappings checked against direct computations: regressions from real models (LRN,
//! LayerNormalization's `stash_type`) and the einsum forms the conformance suite lacks.

use super::*;

/// Regression (the ONNX model zoo's AlexNet/GoogLeNet/ZFNet): LRN imports and computes
/// `x / (bias + alpha / size * window sum of x^2)^beta` over the channels that exist.
#[test]
fn lrn_normalises_over_a_channel_window() {
    let (n, c, hw) = (2, 5, 3);
    let x: Vec<f32> = (0..n * c * hw)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.7)
        .collect();
    let (size, alpha, beta, bias) = (4usize, 0.3f32, 0.75f32, 2.0f32);
    let m = model(
        vec![node(
            "LRN",
            "lrn",
            &["x"],
            &["y"],
            vec![
                attr_int("size", size as i64),
                attr_float("alpha", alpha),
                attr_float("beta", beta),
                attr_float("bias", bias),
            ],
        )],
        vec![value_info("x", F, &["2", "5", "3"])],
        vec![],
        &["y"],
        13,
    );
    let input = Tensor::new(vec![n, c, hw], x.clone()).unwrap();
    let y = evaluate(&m, &[input]);
    let mut expected = vec![0.0f64; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                let lo = ch.saturating_sub((size - 1) / 2);
                let hi = (ch + size / 2).min(c - 1);
                let sq: f64 = (lo..=hi)
                    .map(|k| f64::from(x[(b * c + k) * hw + p]).powi(2))
                    .sum();
                let at = (b * c + ch) * hw + p;
                let denom =
                    (f64::from(bias) + f64::from(alpha) / size as f64 * sq).powf(f64::from(beta));
                expected[at] = f64::from(x[at]) / denom;
            }
        }
    }
    assert_all_close(y[0].as_slice::<f32>().unwrap(), &expected, 1e-5);

    let missing_size = model(
        vec![node("LRN", "lrn", &["x"], &["y"], vec![])],
        vec![value_info("x", F, &["2", "5", "3"])],
        vec![],
        &["y"],
        13,
    );
    let e = import(&missing_size).unwrap_err().to_string();
    assert!(e.contains("lrn") && e.contains("size"), "{e}");
}

/// Regression (torch's dynamo exporter, opset 18): LayerNormalization with an explicit
/// `stash_type` imports; a stash type Kiln cannot compute in is refused by name.
#[test]
fn layer_norm_reads_stash_type() {
    let ln = |stash: i64| {
        model(
            vec![node(
                "LayerNormalization",
                "ln",
                &["x", "g", "b"],
                &["y"],
                vec![attr_int("axis", -1), attr_int("stash_type", stash)],
            )],
            vec![value_info("x", F, &["2", "4"])],
            vec![
                init_f32("g", &[4], &[1.0, 2.0, 0.5, -1.0]),
                init_f32("b", &[4], &[0.0, 0.1, 0.2, 0.3]),
            ],
            &["y"],
            18,
        )
    };
    let x = [1.0f32, 2.0, 3.0, 5.0, -1.0, 0.0, 4.0, 0.5];
    let y = evaluate(&ln(1), &[Tensor::new(vec![2, 4], x.to_vec()).unwrap()]);
    let (g, b) = ([1.0, 2.0, 0.5, -1.0], [0.0, 0.1, 0.2, 0.3]);
    let mut expected = Vec::new();
    for row in x.chunks(4) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / 4.0;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / 4.0;
        for (i, &v) in row.iter().enumerate() {
            expected.push((f64::from(v) - mean) / (var + 1e-5).sqrt() * g[i] + b[i]);
        }
    }
    assert_all_close(y[0].as_slice::<f32>().unwrap(), &expected, 1e-5);
    let e = import(&ln(11)).unwrap_err().to_string();
    assert!(e.contains("stash_type 11") && e.contains("`ln`"), "{e}");
}

fn attr_string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(3),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// Einsum forms beyond the conformance cases: a contraction over a transposed operand (the
/// attention-score form, through MATMUL), three operands (a broadcast product), and a trace.
#[test]
fn einsum_contractions_match_loops() {
    let vals = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
    let (a, bb, c) = (vals(2 * 3 * 4, 0.7), vals(2 * 5 * 4, 1.3), vals(4 * 2, 0.4));
    let eq = |e: &str, ins: &[(&str, &[&str])]| {
        model(
            vec![node(
                "Einsum",
                "e",
                &ins.iter().map(|i| i.0).collect::<Vec<_>>(),
                &["y"],
                vec![attr_string("equation", e)],
            )],
            ins.iter().map(|(n, d)| value_info(n, F, d)).collect(),
            vec![],
            &["y"],
            12,
        )
    };
    // bij,bkj->bik
    let m = eq(
        "bij,bkj->bik",
        &[("a", &["2", "3", "4"]), ("b", &["2", "5", "4"])],
    );
    let y = evaluate(
        &m,
        &[
            Tensor::new(vec![2, 3, 4], a.clone()).unwrap(),
            Tensor::new(vec![2, 5, 4], bb.clone()).unwrap(),
        ],
    );
    let mut want = vec![];
    for b in 0..2 {
        for i in 0..3 {
            for k in 0..5 {
                want.push(
                    (0..4)
                        .map(|j| {
                            f64::from(a[(b * 3 + i) * 4 + j]) * f64::from(bb[(b * 5 + k) * 4 + j])
                        })
                        .sum::<f64>(),
                );
            }
        }
    }
    assert_eq!(y[0].shape(), &[2, 3, 5]);
    assert_all_close(y[0].as_slice::<f32>().unwrap(), &want, 1e-5);
    // ij,jk,kl->il with i=2, j=3 (a's first 6), k=4, l=2
    let m = eq(
        "ij,jk,kl->il",
        &[("p", &["2", "3"]), ("q", &["3", "4"]), ("r", &["4", "2"])],
    );
    let (p, q) = (&a[..6], &bb[..12]);
    let y = evaluate(
        &m,
        &[
            Tensor::new(vec![2, 3], p.to_vec()).unwrap(),
            Tensor::new(vec![3, 4], q.to_vec()).unwrap(),
            Tensor::new(vec![4, 2], c.clone()).unwrap(),
        ],
    );
    let mut want = vec![];
    for i in 0..2 {
        for l in 0..2 {
            let mut s = 0.0f64;
            for j in 0..3 {
                for k in 0..4 {
                    s +=
                        f64::from(p[i * 3 + j]) * f64::from(q[j * 4 + k]) * f64::from(c[k * 2 + l]);
                }
            }
            want.push(s);
        }
    }
    assert_all_close(y[0].as_slice::<f32>().unwrap(), &want, 1e-5);
    // ii-> (trace)
    let m = eq("ii->", &[("t", &["3", "3"])]);
    let y = evaluate(&m, &[Tensor::new(vec![3, 3], a[..9].to_vec()).unwrap()]);
    let want = f64::from(a[0]) + f64::from(a[4]) + f64::from(a[8]);
    assert_all_close(y[0].as_slice::<f32>().unwrap(), &[want], 1e-5);
    let bad = eq("ij,jk->ik", &[("p", &["2", "3"]), ("q", &["4", "4"])]);
    let e = import(&bad).unwrap_err().to_string();
    assert!(e.contains("label `j`"), "{e}");
}

/// Scatters with run-time indices: duplicates (the last update wins without a reduction, all
/// combine with one), negative indices, and indices narrower than the data.
#[test]
fn scatters_follow_sequential_semantics() {
    let scatter_nd = |reduction: &str| {
        model(
            vec![node(
                "ScatterND",
                "s",
                &["data", "idx", "upd"],
                &["y"],
                vec![attr_string("reduction", reduction)],
            )],
            vec![
                value_info("data", F, &["4", "2"]),
                value_info("idx", I64, &["3", "1"]),
                value_info("upd", F, &["3", "2"]),
            ],
            vec![],
            &["y"],
            18,
        )
    };
    let inputs = [
        Tensor::new(vec![4, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).unwrap(),
        Tensor::new(vec![3, 1], vec![1i64, -1, 1]).unwrap(),
        Tensor::new(vec![3, 2], vec![10.0f32, 20.0, 30.0, 40.0, 50.0, 60.0]).unwrap(),
    ];
    let y = evaluate(&scatter_nd("none"), &inputs);
    assert_eq!(
        y[0].as_slice::<f32>().unwrap(),
        &[1.0, 2.0, 50.0, 60.0, 5.0, 6.0, 30.0, 40.0]
    );
    let y = evaluate(&scatter_nd("add"), &inputs);
    assert_eq!(
        y[0].as_slice::<f32>().unwrap(),
        &[1.0, 2.0, 63.0, 84.0, 5.0, 6.0, 37.0, 48.0]
    );
    // ScatterElements along axis 1 of [2, 3] with [1, 2] indices (the second row untouched).
    let m = model(
        vec![node(
            "ScatterElements",
            "s",
            &["data", "idx", "upd"],
            &["y"],
            vec![attr_int("axis", 1), attr_string("reduction", "max")],
        )],
        vec![
            value_info("data", F, &["2", "3"]),
            value_info("idx", I64, &["1", "2"]),
            value_info("upd", F, &["1", "2"]),
        ],
        vec![],
        &["y"],
        18,
    );
    let y = evaluate(
        &m,
        &[
            Tensor::new(vec![2, 3], vec![1.0f32, 5.0, 3.0, 4.0, 5.0, 6.0]).unwrap(),
            Tensor::new(vec![1, 2], vec![-1i64, 1]).unwrap(),
            Tensor::new(vec![1, 2], vec![9.0f32, 2.0]).unwrap(),
        ],
    );
    assert_eq!(
        y[0].as_slice::<f32>().unwrap(),
        &[1.0, 5.0, 9.0, 4.0, 5.0, 6.0]
    );
}
