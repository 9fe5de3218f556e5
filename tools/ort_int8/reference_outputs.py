#!/usr/bin/env python3
"""Write onnxruntime's outputs for the int8 models of ../shared/models-int8 into
tests/models/onnxruntime-1.32/NAME/output_N.pb, for the models whose stored outputs another
onnxruntime build wrote (mobilenet_v2_int8: 712 of 1000 logits differ from onnxruntime 1.32).

One intra-op thread and default session options, as docs/onnxruntime-int8-numerics.md assumes.
The tests read these files instead of the stored ones when they exist.

Usage: python3 tools/ort_int8/reference_outputs.py [SHARED_INT8_DIR]
"""
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def main():
    shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "models-int8")
    out_root = os.path.join(ROOT, "tests", "models", f"onnxruntime-{ort.__version__.rsplit('.', 1)[0]}")
    for path in sorted(glob.glob(os.path.join(shared, "*.onnx"))):
        name = os.path.splitext(os.path.basename(path))[0]
        data = os.path.join(shared, name + "_data")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feeds = {}
        for i, inp in enumerate(sess.get_inputs()):
            feeds[inp.name] = numpy_helper.to_array(onnx.load_tensor(os.path.join(data, f"input_{i}.pb")))
        outs = sess.run(None, feeds)
        stored = [numpy_helper.to_array(onnx.load_tensor(os.path.join(data, f"output_{j}.pb")))
                  for j in range(len(outs))]
        same = all(np.array_equal(a, b) for a, b in zip(outs, stored))
        if same:
            print(f"{name}: the stored outputs are onnxruntime's")
            continue
        target = os.path.join(out_root, name)
        os.makedirs(target, exist_ok=True)
        for j, (o, meta) in enumerate(zip(outs, sess.get_outputs())):
            onnx.save_tensor(numpy_helper.from_array(o, meta.name), os.path.join(target, f"output_{j}.pb"))
        print(f"{name}: wrote {target}")


if __name__ == "__main__":
    main()
