#!/usr/bin/env python3
"""Make `tests/models/qdq_mix_int8.onnx`: a small int8 QDQ model (onnxruntime `quantize_static`,
per-channel int8 weights, int8 activations) that exercises every path of onnxruntime's int8
arithmetic Kiln reproduces, and onnxruntime's outputs for it.

The float model (random weights, fixed seed), input `x` [1, 3, 16, 16]:
- stem Conv 3->16 3x3 + Relu, read twice (residual), so onnxruntime keeps it int8;
- Conv 16->16 3x3 + Relu on that int8 tensor: a float Conv in MLAS order (k = 144: two blocks);
- Conv 16->16 1x1 on a uint8 tensor: a fused QLinearConv; a residual Add of uint8 and int8
  operands: a float Add;
- two branches from the (twice-read) sum, a 1x1 and a 3x3 float Conv, joined by an Add of two
  uint8 operands: a fused QLinearAdd in the uint8 domain;
- a depthwise 3x3 Conv (fused), GlobalAveragePool (fused), Flatten, Gemm 16->40 (QGemm) and
  Softmax over 40 classes (QLinearSoftmax: one 32-element block and an 8-element tail).

The expected output is what onnxruntime computes with one thread and default session options;
it is committed (CI has no onnxruntime), so rerun this script only to change it. Needs
`pip install onnx onnxruntime numpy`. docs/onnxruntime-int8-numerics.md explains the paths.

Usage: python3 tools/make_qdq_mix.py
"""
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)

ROOT = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models"))
NAME = "qdq_mix_int8"
CLASSES = 40


def float_model(rng):
    inits = []
    nodes = []

    def conv(name, x, cin, cout, k, group=1, relu=False):
        w = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k))
        b = 0.1 * rng.standard_normal(cout)
        inits.append(numpy_helper.from_array(w.astype(np.float32), name + "_w"))
        inits.append(numpy_helper.from_array(b.astype(np.float32), name + "_b"))
        out = name + ("_pre" if relu else "")
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [out], name=name,
                                      pads=[k // 2] * 4, group=group))
        if relu:
            nodes.append(helper.make_node("Relu", [out], [name], name=name + "_relu"))
        return name

    stem = conv("stem", "x", 3, 16, 3, relu=True)
    c1 = conv("c1", stem, 16, 16, 3, relu=True)
    c2 = conv("c2", c1, 16, 16, 1)
    nodes.append(helper.make_node("Add", [c2, stem], ["res"], name="res"))
    b1 = conv("b1", "res", 16, 16, 1)
    b2 = conv("b2", "res", 16, 16, 3)
    nodes.append(helper.make_node("Add", [b1, b2], ["join"], name="join"))
    dw = conv("dw", "join", 16, 16, 3, group=16, relu=True)
    nodes.append(helper.make_node("GlobalAveragePool", [dw], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    fc_w = rng.standard_normal((CLASSES, 16)) / 4.0
    inits.append(numpy_helper.from_array(fc_w.astype(np.float32), "fc_w"))
    inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(CLASSES)).astype(np.float32),
                                         "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc",
                                  transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes, NAME,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Calibration(CalibrationDataReader):
    def __init__(self, rng):
        self.batches = iter([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                             for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


def main():
    rng = np.random.default_rng(8)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "fp32.onnx")
        onnx.save(float_model(rng), fp32)
        path = os.path.join(ROOT, NAME + ".onnx")
        quantize_static(fp32, path, Calibration(rng), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    data = os.path.join(ROOT, NAME + "_data")
    os.makedirs(data, exist_ok=True)
    onnx.save_tensor(numpy_helper.from_array(x, "x"), os.path.join(data, "input_0.pb"))
    onnx.save_tensor(numpy_helper.from_array(y, "y"), os.path.join(data, "output_0.pb"))
    print(f"wrote {path} and {data}: onnxruntime {ort.__version__}, argmax {int(y.argmax())}")


if __name__ == "__main__":
    main()
