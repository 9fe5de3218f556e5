#!/usr/bin/env python3
"""Make the int8 QDQ test model `tests/models/resnet8_cifar_int8.onnx` and its expected output.

The model is `tests/models/resnet8_cifar.onnx` quantized by onnxruntime's `quantize_static`:
QDQ format, per-channel symmetric int8 weights, asymmetric int8 activations (ORT's defaults for
QInt8), MinMax calibration over the bundled input plus a few deterministic random inputs. The
expected output is what onnxruntime (default session options, so its QDQ fusions to QLinear*
kernels are on) computes for `tests/models/resnet8_cifar_data/input_0.pb`; it is written with
that input to `tests/models/resnet8_cifar_int8_data/{input_0.pb,output_0.pb}`.

The outputs are committed (CI has no onnxruntime); rerun this script only to change them. Needs
`pip install onnx onnxruntime numpy`.

Usage: python3 tools/make_int8_model.py
"""
import os
import shutil
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)

ROOT = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models"))
SRC = os.path.join(ROOT, "resnet8_cifar.onnx")
DST = os.path.join(ROOT, "resnet8_cifar_int8.onnx")
SRC_DATA = os.path.join(ROOT, "resnet8_cifar_data")
DST_DATA = os.path.join(ROOT, "resnet8_cifar_int8_data")
CALIBRATION_SAMPLES = 15


def read_tensor(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return t.name, numpy_helper.to_array(t)


class Calibration(CalibrationDataReader):
    """The bundled input, then deterministic random inputs with its mean and spread."""

    def __init__(self, name, sample):
        rng = np.random.default_rng(20240601)
        batches = [sample]
        for _ in range(CALIBRATION_SAMPLES):
            r = rng.normal(sample.mean(), sample.std(), size=sample.shape)
            batches.append(r.astype(np.float32))
        self.feeds = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self.feeds, None)


def main():
    name, x = read_tensor(os.path.join(SRC_DATA, "input_0.pb"))
    with tempfile.TemporaryDirectory() as tmp:
        # quantize_static writes calibration scratch files next to its working copy.
        src = os.path.join(tmp, "model.onnx")
        shutil.copy(SRC, src)
        quantize_static(
            src,
            DST,
            Calibration(name, x),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    model = onnx.load(DST)
    onnx.checker.check_model(model)

    sess = ort.InferenceSession(DST, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {name: x})
    out_name = sess.get_outputs()[0].name

    os.makedirs(DST_DATA, exist_ok=True)
    with open(os.path.join(DST_DATA, "input_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(x, name).SerializeToString())
    with open(os.path.join(DST_DATA, "output_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(y, out_name).SerializeToString())

    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    print(f"wrote {DST}: {sum(ops.values())} nodes {dict(sorted(ops.items()))}")
    print(f"wrote {DST_DATA}: output `{out_name}` {y.shape} {y.ravel()}")


if __name__ == "__main__":
    main()
