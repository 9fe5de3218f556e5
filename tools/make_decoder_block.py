#!/usr/bin/env python3
"""Make `tests/models/decoder_block.onnx`: one decoder-only transformer block at opset 23, built
from the operators that opset added for language models, and its expected output.

The block (random weights, fixed seed): RMSNormalization -> Q/K/V projections (MatMul) ->
RotaryEmbedding of Q and K (3-D inputs, `num_heads`, position ids) -> Attention (3-D, causal,
grouped-query: 4 query heads over 2 key/value heads, returning the present key/value cache) ->
output projection -> residual Add -> RMSNormalization -> MLP (MatMul, SiLU gate via Sigmoid/Mul,
MatMul) -> residual Add. Inputs: `x` [1, 16, 64] and `position_ids` [1, 16] (int64); outputs:
`y` [1, 16, 64], `present_key` and `present_value` [1, 2, 16, 16].

The expected outputs are what onnxruntime computes (one thread, default session options) for
a deterministic input; they are committed (CI has no onnxruntime), so rerun this script only to
change them. Needs `pip install onnx onnxruntime numpy`.

Usage: python3 tools/make_decoder_block.py
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models"))
NAME = "decoder_block"
SEQ, D, HQ, HKV, FF = 16, 64, 4, 2, 128
HEAD = D // HQ
MAX_POS = 64


def main():
    rng = np.random.default_rng(23)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)
    inits = {
        "norm1": (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32),
        "wq": w(D, D),
        "wk": w(D, HKV * HEAD),
        "wv": w(D, HKV * HEAD),
        "wo": w(D, D),
        "norm2": (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32),
        "w_gate": w(D, FF),
        "w_up": w(D, FF),
        "w_down": w(FF, D),
    }
    inv_freq = 1.0 / (10000 ** (np.arange(0, HEAD, 2) / HEAD))
    angles = np.outer(np.arange(MAX_POS), inv_freq)
    inits["cos_cache"] = np.cos(angles).astype(np.float32)
    inits["sin_cache"] = np.sin(angles).astype(np.float32)
    n = helper.make_node
    nodes = [
        n("RMSNormalization", ["x", "norm1"], ["h1"], axis=-1, epsilon=1e-6),
        n("MatMul", ["h1", "wq"], ["q"]),
        n("MatMul", ["h1", "wk"], ["k"]),
        n("MatMul", ["h1", "wv"], ["v"]),
        n("RotaryEmbedding", ["q", "cos_cache", "sin_cache", "position_ids"], ["q_rot"],
          num_heads=HQ),
        n("RotaryEmbedding", ["k", "cos_cache", "sin_cache", "position_ids"], ["k_rot"],
          num_heads=HKV),
        n("Attention", ["q_rot", "k_rot", "v"], ["attn", "present_key", "present_value"],
          is_causal=1, q_num_heads=HQ, kv_num_heads=HKV),
        n("MatMul", ["attn", "wo"], ["proj"]),
        n("Add", ["x", "proj"], ["r1"]),
        n("RMSNormalization", ["r1", "norm2"], ["h2"], axis=-1, epsilon=1e-6),
        n("MatMul", ["h2", "w_gate"], ["gate"]),
        n("Sigmoid", ["gate"], ["gate_sig"]),
        n("Mul", ["gate", "gate_sig"], ["silu"]),
        n("MatMul", ["h2", "w_up"], ["up"]),
        n("Mul", ["silu", "up"], ["ff"]),
        n("MatMul", ["ff", "w_down"], ["down"]),
        n("Add", ["r1", "down"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        NAME,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, D]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, SEQ])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, D]),
         helper.make_tensor_value_info("present_key", TensorProto.FLOAT, [1, HKV, SEQ, HEAD]),
         helper.make_tensor_value_info("present_value", TensorProto.FLOAT, [1, HKV, SEQ, HEAD])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(ROOT, NAME + ".onnx")
    onnx.save(model, path)

    x = rng.standard_normal((1, SEQ, D)).astype(np.float32)
    # A prefill that starts mid-sequence: positions 5..20.
    pos = (np.arange(SEQ, dtype=np.int64) + 5).reshape(1, SEQ)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"x": x, "position_ids": pos})
    data = os.path.join(ROOT, NAME + "_data")
    os.makedirs(data, exist_ok=True)
    for i, (k, v) in enumerate([("x", x), ("position_ids", pos)]):
        onnx.save_tensor(numpy_helper.from_array(v, k), os.path.join(data, f"input_{i}.pb"))
    for i, (o, v) in enumerate(zip(sess.get_outputs(), outs)):
        onnx.save_tensor(numpy_helper.from_array(v, o.name), os.path.join(data, f"output_{i}.pb"))
    print(f"wrote {path} and {data} (onnxruntime {ort.__version__})")


if __name__ == "__main__":
    main()
