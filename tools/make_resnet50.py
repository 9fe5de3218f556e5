#!/usr/bin/env python3
"""Write a ResNet-50 (torchvision's architecture, random weights, BatchNorm folded into the
convolutions as torch.onnx.export does in eval mode) to OUT/resnet50.onnx, with one input and
onnxruntime's output in OUT/resnet50_data (ONNX test-data layout), for measuring compile time and
speed on a model larger than the bundled ones without needing torch.

Usage: python3 tools/make_resnet50.py OUT_DIR   (needs onnx, onnxruntime, numpy; ~100 MB)
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class Net:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, what):
        self.n += 1
        return f"{what}_{self.n}"

    def conv(self, x, cin, cout, k, stride=1, relu=True):
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        b = 0.01 * self.rng.standard_normal(cout)
        wn, bn, y = self.name("w"), self.name("b"), self.name("conv")
        self.inits += [numpy_helper.from_array(w.astype(np.float32), wn),
                       numpy_helper.from_array(b.astype(np.float32), bn)]
        self.nodes.append(helper.make_node("Conv", [x, wn, bn], [y], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        return self.relu(y) if relu else y

    def relu(self, x):
        y = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [y]))
        return y

    def bottleneck(self, x, cin, width, stride):
        out = width * 4
        y = self.conv(x, cin, width, 1)
        y = self.conv(y, width, width, 3, stride)
        y = self.conv(y, width, out, 1, relu=False)
        short = self.conv(x, cin, out, 1, stride, relu=False) if stride != 1 or cin != out else x
        s = self.name("add")
        self.nodes.append(helper.make_node("Add", [y, short], [s]))
        return self.relu(s), out


def model():
    net = Net(50)
    x = net.conv("input", 3, 64, 7, 2)
    p = net.name("pool")
    net.nodes.append(helper.make_node("MaxPool", [x], [p], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1]))
    x, c = p, 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            x, c = net.bottleneck(x, c, width, stride if i == 0 else 1)
    net.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    net.nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    fc = net.rng.standard_normal((1000, c)) / np.sqrt(c)
    net.inits += [numpy_helper.from_array(fc.astype(np.float32), "fc_w"),
                  numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]
    net.nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], transB=1))
    g = helper.make_graph(net.nodes, "resnet50",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1000])],
                          net.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(os.path.join(out, "resnet50_data"), exist_ok=True)
    path = os.path.join(out, "resnet50.onnx")
    onnx.save(model(), path)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    (y,) = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    onnx.save_tensor(numpy_helper.from_array(x, "input"), os.path.join(out, "resnet50_data", "input_0.pb"))
    onnx.save_tensor(numpy_helper.from_array(y, "output"), os.path.join(out, "resnet50_data", "output_0.pb"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
