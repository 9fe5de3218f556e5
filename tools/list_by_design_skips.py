#!/usr/bin/env python3
"""Print skip-manifest lines for the ONNX node cases Kiln cannot run by design.

1. Element types: Kiln's IR has exactly f64, f32, f16, bf16, i8, u8, i16, u16, i32, u32, i64,
   u64 and bool (crates/ir/src/dtype.rs). A case whose graph inputs, outputs, initializers,
   value_info or Constant/Cast attributes need another type (string, float8*, int4, int2,
   float4, ...) cannot run.
2. Non-tensor values: the IR holds tensors only, so graph inputs or outputs of sequence, optional
   or map type cannot be represented.
3. Domains: only the default ONNX domain is in scope (an inference compiler for edge CPUs); models
   that import no default-domain opset (ai.onnx.ml classic-ML ops, ai.onnx.preview.training
   optimizers) are out of scope.
Op-level skips (an op not implemented yet) are written by hand, with their own reason.

Usage: python3 tools/list_by_design_skips.py SUITE_DIR >> tests/conformance/skip.txt
       (SUITE_DIR is e.g. target/onnx-node-tests/node). Needs `pip install onnx`.
"""
import os
import sys

import onnx
from onnx import TensorProto

SUPPORTED = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT8, TensorProto.UINT8,
             TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL,
             TensorProto.DOUBLE, TensorProto.BFLOAT16, TensorProto.UINT16, TensorProto.UINT32,
             TensorProto.UINT64}


def non_tensor_kinds(values):
    """Kinds (sequence, optional, map) of the values that are not plain tensors."""
    kinds = {v.type.WhichOneof("value") for v in values}
    return sorted(k.replace("_type", "") for k in kinds - {"tensor_type", None})


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
        model = onnx.load(path, load_external_data=False)
        dtypes = set()
        graph_dtypes(model.graph, dtypes)
        bad = sorted(TensorProto.DataType.Name(d).lower() for d in dtypes - SUPPORTED
                     if d != TensorProto.UNDEFINED)
        kinds = non_tensor_kinds(list(model.graph.input) + list(model.graph.output))
        domains = sorted({o.domain for o in model.opset_import} - {"", "ai.onnx"})
        if bad:
            print(f"{case} # dtype {', '.join(bad)}: not in Kiln's IR")
        elif kinds:
            print(f"{case} # {', '.join(kinds)} values: Kiln's IR holds tensors only")
        elif not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
            print(f"{case} # domain {', '.join(domains)}: out of scope (default ONNX domain only)")


if __name__ == "__main__":
    main()
