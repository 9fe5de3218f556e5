#!/usr/bin/env python3
"""Print skip-manifest lines for the ONNX node cases that use an element type Kiln's IR lacks.

Kiln's IR has exactly f32, f16, i8, u8, i16, i32, i64 and bool (crates/ir/src/dtype.rs). A case
whose graph inputs, outputs, initializers, value_info or Constant/Cast attributes need any other
type (double, string, bfloat16, float8*, int4, uint16/32/64, complex, ...) cannot run by design;
these lines give each such case its reason. Op-level skips are written by hand.

Usage: python3 tools/list_unsupported_dtype_cases.py SUITE_DIR >> tests/conformance/skip.txt
       (SUITE_DIR is e.g. target/onnx-node-tests/node). Needs `pip install onnx`.
"""
import os
import sys

import onnx
from onnx import TensorProto

SUPPORTED = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.UINT8,
             TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL}


def type_dtypes(tp, out):
    """Element types inside a TypeProto (tensor, sequence, optional, map)."""
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        out.add(getattr(tp, kind).elem_type)
    elif kind == "sequence_type":
        type_dtypes(tp.sequence_type.elem_type, out)
    elif kind == "optional_type":
        type_dtypes(tp.optional_type.elem_type, out)
    elif kind == "map_type":
        out.add(tp.map_type.key_type)
        type_dtypes(tp.map_type.value_type, out)


def graph_dtypes(g, out):
    for v in list(g.input) + list(g.output) + list(g.value_info):
        type_dtypes(v.type, out)
    for t in g.initializer:
        out.add(t.data_type)
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                out.add(a.t.data_type)
            if a.type == onnx.AttributeProto.GRAPH:
                graph_dtypes(a.g, out)
            if n.op_type in ("Cast", "CastLike", "EyeLike", "RandomNormal", "RandomUniform",
                             "RandomNormalLike", "RandomUniformLike", "Multinomial",
                             "Bernoulli") and a.name in ("to", "dtype"):
                out.add(a.i)


def main():
    suite = sys.argv[1]
    for case in sorted(os.listdir(suite)):
        path = os.path.join(suite, case, "model.onnx")
        if not os.path.isfile(path):
            continue
        dtypes = set()
        graph_dtypes(onnx.load(path, load_external_data=False).graph, dtypes)
        bad = sorted(TensorProto.DataType.Name(d).lower() for d in dtypes - SUPPORTED
                     if d != TensorProto.UNDEFINED)
        if bad:
            print(f"{case} # dtype {', '.join(bad)}: not in Kiln's IR")


if __name__ == "__main__":
    main()
