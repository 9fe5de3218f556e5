#!/usr/bin/env python3
"""Write public CNN architectures as ONNX models with random weights, for benchmarking beyond
`../shared/models`: ResNet-50, SqueezeNet 1.1, ShuffleNet v2 (x1.0) and MobileNet v3 small.

Each model is built layer by layer with `onnx.helper` the way `torch.onnx.export` writes it in
eval mode (batch norm folded into the convolutions' weights and bias, opset 17), with He-scaled
random weights so activations stay in range through the depth. Beside each `NAME.onnx` goes
`NAME_data/input_0.pb` (a random 1x3x224x224 image) and `NAME_data/output_0.pb` (what onnxruntime
computes for it), the layout `kiln run --data` and `compare_onnxruntime.py` read.

The models are not committed (ResNet-50 alone is 100 MB); this script makes them in seconds.
Needs `pip install onnx onnxruntime numpy`.

Usage: python3 benches/export_public_cnns.py OUT_DIR [--models resnet50,squeezenet1_1,...]
then:  python3 benches/compare_onnxruntime.py --models OUT_DIR --threads 1
"""
import argparse
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


class Builder:
    """Appends nodes and initializers to one graph; every method returns its output's name."""

    def __init__(self, seed):
        self.nodes, self.inits, self.count = [], [], 0
        self.rng = np.random.default_rng(seed)

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, prefix, array):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, groups=1, pad=None, gain=1.0):
        fan_in = cin // groups * k * k
        w = self.rng.normal(0, gain * np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k))
        b = self.rng.normal(0, 0.05, cout)
        p = k // 2 if pad is None else pad
        return self.node("Conv", [x, self.const("w", w.astype(np.float32)),
                                  self.const("b", b.astype(np.float32))],
                         kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p],
                         group=groups)

    def relu(self, x):
        return self.node("Relu", [x])

    def conv_relu(self, x, cin, cout, k, stride=1, groups=1):
        return self.relu(self.conv(x, cin, cout, k, stride, groups))

    def max_pool(self, x, k, stride, pad, ceil=0):
        return self.node("MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4, ceil_mode=ceil)

    def gemm(self, x, cin, cout):
        w = self.rng.normal(0, np.sqrt(1.0 / cin), (cout, cin)).astype(np.float32)
        return self.node("Gemm", [x, self.const("fc_w", w),
                                  self.const("fc_b", np.zeros(cout, np.float32))], transB=1)

    def global_pool(self, x):
        return self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1)

    def classifier(self, x, cin, classes=1000):
        return self.gemm(self.global_pool(x), cin, classes)


def resnet50(b, x):
    x = b.max_pool(b.conv_relu(x, 3, 64, 7, 2), 3, 2, 1)
    cin = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = b.conv_relu(x, cin, width, 1)
            y = b.conv_relu(y, width, width, 3, s)
            # A small residual branch, as the zero-initialised last batch norm of torchvision
            # keeps it: the activations stay in range through 16 blocks.
            y = b.conv(y, width, width * 4, 1, gain=0.2)
            shortcut = b.conv(x, cin, width * 4, 1, s) if (s != 1 or cin != width * 4) else x
            x = b.relu(b.node("Add", [y, shortcut]))
            cin = width * 4
    return b.classifier(x, cin)


def squeezenet1_1(b, x):
    def fire(x, cin, squeeze, expand):
        s = b.conv_relu(x, cin, squeeze, 1)
        return b.node("Concat", [b.conv_relu(s, squeeze, expand, 1),
                                 b.conv_relu(s, squeeze, expand, 3)], axis=1)

    x = b.max_pool(b.relu(b.conv(x, 3, 64, 3, 2, pad=0)), 3, 2, 0, ceil=1)
    x = fire(fire(x, 64, 16, 64), 128, 16, 64)
    x = b.max_pool(x, 3, 2, 0, ceil=1)
    x = fire(fire(x, 128, 32, 128), 256, 32, 128)
    x = b.max_pool(x, 3, 2, 0, ceil=1)
    x = fire(fire(fire(fire(x, 256, 48, 192), 384, 48, 192), 384, 64, 256), 512, 64, 256)
    return b.global_pool(b.relu(b.conv(x, 512, 1000, 1)))


def shufflenet_v2(b, x):
    def shuffle(x, channels, hw):
        x = b.node("Reshape", [x, b.const("shape", np.array([1, 2, channels // 2, hw, hw]))])
        x = b.node("Transpose", [x], perm=[0, 2, 1, 3, 4])
        return b.node("Reshape", [x, b.const("shape", np.array([1, channels, hw, hw]))])

    def branch(x, cin, cout, stride):
        y = b.conv_relu(x, cin, cout, 1)
        y = b.conv(y, cout, cout, 3, stride, groups=cout)
        return b.conv_relu(y, cout, cout, 1)

    x = b.max_pool(b.conv_relu(x, 3, 24, 3, 2), 3, 2, 1)
    cin, hw = 24, 56
    for cout, repeats in [(116, 4), (232, 8), (464, 4)]:
        half = cout // 2
        left = b.conv_relu(b.conv(x, cin, cin, 3, 2, groups=cin), cin, half, 1)
        hw //= 2
        x = shuffle(b.node("Concat", [left, branch(x, cin, half, 2)], axis=1), cout, hw)
        for _ in range(repeats - 1):
            split = b.name("split")
            parts = [split + "_a", split + "_b"]
            b.nodes.append(helper.make_node("Split", [x, b.const("split", np.array(
                [half, half]))], parts, name=split, axis=1))
            x = shuffle(b.node("Concat", [parts[0], branch(parts[1], half, half, 1)], axis=1),
                        cout, hw)
        cin = cout
    return b.classifier(b.conv_relu(x, cin, 1024, 1), 1024)


def mobilenet_v3_small(b, x):
    def hswish(x):
        return b.node("HardSwish", [x])

    def squeeze_excite(x, channels):
        squeezed = (channels // 4 + 4) // 8 * 8
        s = b.node("GlobalAveragePool", [x])
        s = b.conv_relu(s, channels, squeezed, 1)
        s = b.node("HardSigmoid", [b.conv(s, squeezed, channels, 1)], alpha=1 / 6, beta=0.5)
        return b.node("Mul", [x, s])

    x = hswish(b.conv(x, 3, 16, 3, 2))
    cin = 16
    # kernel, expanded, out, squeeze-excite, hard-swish, stride (torchvision's table)
    for k, exp, cout, se, hs, s in [
            (3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2),
            (3, 88, 24, False, False, 1), (5, 96, 40, True, True, 2),
            (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
            (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1),
            (5, 288, 96, True, True, 2), (5, 576, 96, True, True, 1),
            (5, 576, 96, True, True, 1)]:
        act = hswish if hs else b.relu
        y = act(b.conv(x, cin, exp, 1)) if exp != cin else x
        y = act(b.conv(y, exp, exp, k, s, groups=exp))
        if se:
            y = squeeze_excite(y, exp)
        y = b.conv(y, exp, cout, 1)
        x = b.node("Add", [x, y]) if (s == 1 and cin == cout) else y
        cin = cout
    x = hswish(b.conv(x, cin, 576, 1))
    return b.gemm(hswish(b.gemm(b.global_pool(x), 576, 1024)), 1024, 1000)


MODELS = {"resnet50": resnet50, "squeezenet1_1": squeezenet1_1,
          "shufflenet_v2_x1_0": shufflenet_v2, "mobilenet_v3_small": mobilenet_v3_small}


def export(name, out_dir, seed):
    b = Builder(seed)
    output = MODELS[name](b, "input")
    graph = helper.make_graph(
        b.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                      [1, 3, 224, 224])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="kiln-benches")
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    path = os.path.join(out_dir, name + ".onnx")
    onnx.save(model, path)

    image = b.rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"input": image})
    data = os.path.join(out_dir, name + "_data")
    os.makedirs(data, exist_ok=True)
    for file, array, tensor_name in [("input_0.pb", image, "input"),
                                     ("output_0.pb", result, output)]:
        with open(os.path.join(data, file), "wb") as f:
            f.write(numpy_helper.from_array(array, tensor_name).SerializeToString())
    print(f"{path}: {len(b.nodes)} nodes, output {list(result.shape)}, "
          f"|max| {float(np.abs(result).max()):.3g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for name in args.models.split(","):
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        export(name, args.out_dir, args.seed)


if __name__ == "__main__":
    main()
