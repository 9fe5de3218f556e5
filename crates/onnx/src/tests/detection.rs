//! NonMaxSuppression's data-dependent rows: what may read them, and what is refused.

use super::*;

fn nms_then(op: &str, extra: Vec<AttributeProto>) -> Vec<u8> {
    model(
        vec![
            node(
                "NonMaxSuppression",
                "nms",
                &["boxes", "scores", "k"],
                &["sel"],
                vec![],
            ),
            node(op, "after", &["sel"], &["y"], extra),
        ],
        vec![
            value_info("boxes", F, &["1", "3", "4"]),
            value_info("scores", F, &["1", "1", "3"]),
        ],
        vec![init_i64("k", &[1], &[2])],
        &["y"],
        13,
    )
}

/// A reduction over the selected rows would mix in the padding: refused, naming the op.
#[test]
fn a_reduction_over_selected_rows_is_refused() {
    let err = import(&nms_then("ReduceSum", vec![]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ReduceSum") && err.contains("NonMaxSuppression"),
        "{err}"
    );
}

/// A row-wise op keeps the count: the output has its bound of rows and a count output.
#[test]
fn a_row_wise_op_keeps_the_row_count() {
    let m = import(&nms_then("Cast", vec![attr_int("to", 1)])).unwrap();
    assert_eq!(m.row_counts.len(), 1);
    assert_eq!(m.graph.outputs().len(), 2);
    assert_eq!(m.graph.ty(m.graph.outputs()[0]).shape, vec![2, 3]);
    assert_eq!(m.onnx_output_count(), 1);
    let boxes = Tensor::new(
        vec![1, 3, 4],
        vec![
            0.0f32, 0.0, 1.0, 1.0, 0.0, 0.1, 1.0, 1.1, 5.0, 5.0, 6.0, 6.0,
        ],
    )
    .unwrap();
    let scores = Tensor::new(vec![1, 1, 3], vec![0.9f32, 0.8, 0.7]).unwrap();
    let raw = kiln_reference::run(&m.graph, &[boxes, scores]).unwrap();
    let out = m.trim_outputs(raw).unwrap();
    // Box 1 overlaps box 0 (IoU 0.82 > 0): suppressed; box 2 is kept; at most 2 per class.
    assert_eq!(out[0].shape(), &[2, 3]);
    assert_eq!(
        out[0].as_slice::<f32>().unwrap(),
        &[0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    );
}
