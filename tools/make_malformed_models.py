#!/usr/bin/env python3
"""Write the malformed-model corpus to tests/malformed/*.onnx (or the folder given as argument).

Every file is a model Kiln must refuse with a clear error (exit code 2 from `kiln run` /
`kiln inspect`) and without panicking. The files are committed; rerun this script only to change
the corpus. Needs `pip install onnx numpy`.

Usage: python3 tools/make_malformed_models.py [OUT_DIR]
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "malformed")
OPSET = 17
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, initializers=(), opset=OPSET, check=True):
    graph = helper.make_graph(nodes, "malformed", inputs, outputs, list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if check:
        onnx.checker.check_model(m)  # only the structural problem we mean to plant may remain
    return m.SerializeToString()


def vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def valid_add():
    """x[2,3] + w[2,3] -> y; the base of several cases."""
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    return model([helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                 [vi("x", [2, 3])], [vi("y", [2, 3])], [w])


def cases():
    good = valid_add()
    yield "truncated", good[: len(good) // 2]
    yield "empty", b""
    yield "garbage", b"this is not a protobuf \xff\xfe\x00\x01 at all" * 4

    # [2,3] f32 needs 24 bytes of raw_data; this has 12.
    short = TensorProto(name="w", data_type=F, dims=[2, 3],
                        raw_data=np.ones(3, np.float32).tobytes())
    yield "initializer_too_short", model(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        [vi("x", [2, 3])], [vi("y", [2, 3])], [short], check=False)

    yield "missing_input", model(
        [helper.make_node("Add", ["x", "undefined_tensor"], ["y"], name="add")],
        [vi("x", [2, 3])], [vi("y", [2, 3])], check=False)

    yield "cycle", model(
        [helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
         helper.make_node("Relu", ["a"], ["b"], name="n2")],
        [vi("x", [2, 3])], [vi("a", [2, 3])], check=False)

    yield "unknown_op", model(
        [helper.make_node("FooBar", ["x"], ["y"], name="foo")],
        [vi("x", [2, 3])], [vi("y", [2, 3])], check=False)

    yield "mismatched_shapes", model(
        [helper.make_node("Add", ["x", "z"], ["y"], name="add")],
        [vi("x", [2, 3]), vi("z", [4, 5])], [vi("y", [2, 3])])

    huge = [1000000, 1000000, 1000000]
    yield "absurd_input_dims", model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [vi("x", huge)], [vi("y", huge)])

    # Claims a trillion-trillion elements but carries none: must be refused before allocating.
    big = TensorProto(name="w", data_type=F, dims=huge)
    yield "absurd_initializer_dims", model(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        [vi("x", [1])], [vi("y", huge)], [big], check=False)

    yield "negative_dims", model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [vi("x", [2, -3])], [vi("y", [2, -3])], check=False)

    yield "bad_opset", model(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        [vi("x", [2, 3])], [vi("y", [2, 3])],
        [numpy_helper.from_array(np.ones((2, 3), np.float32), "w")], opset=0, check=False)

    yield "output_never_produced", model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [vi("x", [2, 3])], [vi("nowhere", [2, 3])], check=False)

    yield "duplicate_output_name", model(
        [helper.make_node("Relu", ["x"], ["y"], name="r1"),
         helper.make_node("Neg", ["x"], ["y"], name="r2")],
        [vi("x", [2, 3])], [vi("y", [2, 3])], check=False)

    yield "wrong_arity", model(
        [helper.make_node("Add", ["x"], ["y"], name="add")],
        [vi("x", [2, 3])], [vi("y", [2, 3])], check=False)

    yield "bad_attribute", model(
        [helper.make_node("Transpose", ["x"], ["y"], name="t", perm=[0, 0])],
        [vi("x", [2, 3])], [vi("y", [3, 2])], check=False)

    yield "unknown_dtype", model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [vi("x", [2, 3], dtype=TensorProto.STRING)], [vi("y", [2, 3], dtype=TensorProto.STRING)],
        check=False)


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in cases():
        with open(os.path.join(OUT, name + ".onnx"), "wb") as f:
            f.write(data)
        print(f"{name}.onnx: {len(data)} bytes")


if __name__ == "__main__":
    main()
