#!/usr/bin/env python3
"""Make a transformer encoder for side-by-side checks beyond the bundled models: DeiT-small
widths with random weights (fixed seed), 4 pre-norm layers of attention (6 heads of 64:
LayerNormalization, Q/K/V MatMul+Add, Softmax, output projection, residual) and a GELU MLP
(erf form, 1536 wide), sequence 50 (a 224-pixel image in 32-pixel patches plus a class token),
width 384, opset 17. Writes OUT/encoder.onnx and OUT/encoder_data/{input_0,output_0}.pb (the
output is onnxruntime's, one thread), the layout `benches/compare_onnxruntime.py --models OUT`
and `kiln run --data` read. Needs `pip install onnx onnxruntime numpy`.

Usage: python3 benches/export_encoder.py OUT
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

out = sys.argv[1]
SEQ, D, H, FF, LAYERS = 50, 384, 6, 1536, 4
HD = D // H
rng = np.random.default_rng(5)
inits, nodes = [], []


def const(name, arr):
    inits.append(numpy_helper.from_array(np.asarray(arr), name))
    return name


def w(*s):
    return (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)


def node(op, ins, outs, **kw):
    nodes.append(helper.make_node(op, ins, outs, **kw))
    return outs[0]


x = "x"
shape_heads = const("shape_heads", np.array([1, SEQ, H, HD], dtype=np.int64))
shape_back = const("shape_back", np.array([1, SEQ, D], dtype=np.int64))
half = const("half", np.float32(0.5))
one = const("one", np.float32(1.0))
rsqrt2 = const("rsqrt2", np.float32(1 / np.sqrt(2)))
scale = const("scale", np.float32(1 / np.sqrt(HD)))
for l in range(LAYERS):
    p = f"l{l}_"
    g1 = const(p + "g1", (1 + 0.1 * rng.standard_normal(D)).astype(np.float32))
    b1 = const(p + "b1", (0.1 * rng.standard_normal(D)).astype(np.float32))
    n1 = node("LayerNormalization", [x, g1, b1], [p + "n1"], axis=-1, epsilon=1e-6)
    heads = []
    for t in "qkv":
        m = node("MatMul", [n1, const(p + "w" + t, w(D, D))], [p + t + "m"])
        a = node("Add", [m, const(p + "b" + t, (0.02 * rng.standard_normal(D)).astype(np.float32))], [p + t + "a"])
        r = node("Reshape", [a, shape_heads], [p + t + "r"])
        perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
        heads.append(node("Transpose", [r], [p + t + "t"], perm=perm))
    q, k, v = heads
    s = node("MatMul", [q, k], [p + "s"])
    s = node("Mul", [s, scale], [p + "ss"])
    s = node("Softmax", [s], [p + "sm"], axis=-1)
    o = node("MatMul", [s, v], [p + "o"])
    o = node("Transpose", [o], [p + "ot"], perm=[0, 2, 1, 3])
    o = node("Reshape", [o, shape_back], [p + "or"])
    o = node("MatMul", [o, const(p + "wo", w(D, D))], [p + "om"])
    o = node("Add", [o, const(p + "bo", (0.02 * rng.standard_normal(D)).astype(np.float32))], [p + "oa"])
    x = node("Add", [x, o], [p + "res1"])
    g2 = const(p + "g2", (1 + 0.1 * rng.standard_normal(D)).astype(np.float32))
    b2 = const(p + "b2", (0.1 * rng.standard_normal(D)).astype(np.float32))
    n2 = node("LayerNormalization", [x, g2, b2], [p + "n2"], axis=-1, epsilon=1e-6)
    h = node("MatMul", [n2, const(p + "w1", w(D, FF))], [p + "h"])
    h = node("Add", [h, const(p + "bb1", (0.02 * rng.standard_normal(FF)).astype(np.float32))], [p + "ha"])
    e = node("Mul", [h, rsqrt2], [p + "hs"])
    e = node("Erf", [e], [p + "erf"])
    e = node("Add", [e, one], [p + "e1"])
    g = node("Mul", [h, e], [p + "g"])
    g = node("Mul", [g, half], [p + "gh"])
    h = node("MatMul", [g, const(p + "w2", w(FF, D))], [p + "h2"])
    h = node("Add", [h, const(p + "bb2", (0.02 * rng.standard_normal(D)).astype(np.float32))], [p + "h2a"])
    x = node("Add", [x, h], [p + "res2"])
node("Identity", [x], ["y"])
graph = helper.make_graph(
    nodes, "encoder",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, D])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, D])], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
os.makedirs(os.path.join(out, "encoder_data"), exist_ok=True)
onnx.save(model, os.path.join(out, "encoder.onnx"))
xin = rng.standard_normal((1, SEQ, D)).astype(np.float32)
so = ort.SessionOptions()
so.intra_op_num_threads = 1
y = ort.InferenceSession(os.path.join(out, "encoder.onnx"), so).run(None, {"x": xin})[0]
onnx.save_tensor(numpy_helper.from_array(xin, "x"), os.path.join(out, "encoder_data", "input_0.pb"))
onnx.save_tensor(numpy_helper.from_array(y, "y"), os.path.join(out, "encoder_data", "output_0.pb"))
print("ok", y.shape)
