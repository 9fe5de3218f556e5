#!/usr/bin/env python3
"""Make `tests/models/detection_tail.onnx`: the post-processing tail of an object detector
(TopK + NonMaxSuppression + Gather) and onnxruntime's outputs for it.

Inputs: `boxes` [1, 200, 4] (corners y1, x1, y2, x2) and `scores` [1, 3, 200]. The tail keeps
the 64 boxes with the best score of any class (ReduceMax, TopK, Gather of boxes and scores),
runs NonMaxSuppression on them (at most 40 per class, IoU 0.5, score above 0.5) and gathers the
selected boxes. Outputs: `selected` [n, 3] (i64: batch, class, box among the 64) and
`detections` [n, 4]; n depends on the data (Kiln returns the bound and the count, see
crates/onnx/src/dynamic_rows.rs).

The expected outputs are what onnxruntime computes (one thread); they are committed (CI has no
onnxruntime), so rerun this script only to change them. Needs `pip install onnx onnxruntime numpy`.

Usage: python3 tools/make_detection_tail.py
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models"))
NAME = "detection_tail"
N, C, TOP = 200, 3, 64


def model():
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)
    f32 = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)
    inits = [i64("k", [TOP]), i64("axis0", [0]), i64("max_per_class", [40]),
             f32("iou", [0.5]), f32("score_min", [0.5]), i64("box_col", 2)]
    nodes = [
        helper.make_node("ReduceMax", ["scores"], ["best"], axes=[1], keepdims=0),
        helper.make_node("TopK", ["best", "k"], ["top_scores", "top"], axis=1),
        helper.make_node("Squeeze", ["top", "axis0"], ["top_flat"]),
        helper.make_node("Gather", ["boxes", "top_flat"], ["cand_boxes"], axis=1),
        helper.make_node("Gather", ["scores", "top_flat"], ["cand_scores"], axis=2),
        helper.make_node("NonMaxSuppression",
                         ["cand_boxes", "cand_scores", "max_per_class", "iou", "score_min"],
                         ["selected"]),
        helper.make_node("Gather", ["selected", "box_col"], ["which"], axis=1),
        helper.make_node("Squeeze", ["cand_boxes", "axis0"], ["cand_2d"]),
        helper.make_node("Gather", ["cand_2d", "which"], ["detections"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, NAME,
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, N, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, C, N])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["n", 3]),
         helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["n", 4])],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def main():
    rng = np.random.default_rng(11)
    corner = rng.uniform(0.0, 0.8, (1, N, 2))
    size = rng.uniform(0.05, 0.3, (1, N, 2))
    boxes = np.concatenate([corner, corner + size], axis=2).astype(np.float32)
    scores = rng.uniform(0.0, 1.0, (1, C, N)).astype(np.float32)
    path = os.path.join(ROOT, NAME + ".onnx")
    onnx.save(model(), path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    selected, detections = sess.run(None, {"boxes": boxes, "scores": scores})
    data = os.path.join(ROOT, NAME + "_data")
    os.makedirs(data, exist_ok=True)
    for i, (name, t) in enumerate([("boxes", boxes), ("scores", scores)]):
        onnx.save_tensor(numpy_helper.from_array(t, name), os.path.join(data, f"input_{i}.pb"))
    for i, (name, t) in enumerate([("selected", selected), ("detections", detections)]):
        onnx.save_tensor(numpy_helper.from_array(t, name), os.path.join(data, f"output_{i}.pb"))
    print(f"wrote {path}: {len(selected)} selected, onnxruntime {ort.__version__}")


if __name__ == "__main__":
    main()
