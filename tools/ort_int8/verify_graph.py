"""Verify ref.py kernels against onnxruntime bit-exactly on a real model.

1. Optimize the model with ORT (ORT_ENABLE_ALL, 1 thread) and save the optimized graph.
2. Re-load the optimized graph with ORT_DISABLE_ALL, exposing every intermediate tensor as a
   graph output (same kernels run, nothing re-fused), run it.
3. For every node, recompute its outputs with ref.py from ORT's *own* inputs (isolated check),
   and additionally run the whole graph with ref.py from the model input (chained check).
Usage: python3 verify_graph.py model.onnx input.pb [expected_output.pb]
"""
import os, tempfile
import sys, collections
import numpy as np
import onnx
from onnx import numpy_helper, helper, TensorProto
import onnxruntime as ort
import ref

F32 = np.float32


def attrs(n):
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def run_node(n, get, inits):
    """Returns list of outputs for node n using ref kernels. get(name) -> array."""
    t = n.op_type
    a = attrs(n)
    I = [get(i) if i else None for i in n.input]
    if t == "QuantizeLinear":
        zp = I[2]
        return [ref.quantize_linear(I[0], I[1].reshape(-1)[0], int(zp.reshape(-1)[0]), zp.dtype)]
    if t == "DequantizeLinear":
        return [ref.dequantize_linear(I[0], I[1], I[2], a.get("axis", 1))]
    if t == "Transpose":
        return [np.ascontiguousarray(np.transpose(I[0], a["perm"]))]
    if t == "Flatten":
        ax = a.get("axis", 1)
        return [I[0].reshape(int(np.prod(I[0].shape[:ax])), -1)]
    if t == "Add" and n.domain == "":
        return [(I[0].astype(F32) + I[1].astype(F32)).astype(F32)]
    if t == "Conv" and n.domain == "":
        k = I[1].shape[2:]
        pads = a.get("pads", [0] * 4)
        return [ref.conv_float_mlas(I[0], I[1], I[2], pads, a.get("strides", [1, 1]), a.get("dilations", [1, 1]), a.get("group", 1))]
    if t == "QLinearConv":
        x = I[0]
        cl = a.get("channels_last", 0)
        if cl:
            x = np.transpose(x, (0, 3, 1, 2))
        y = ref.qlinearconv_nchw(x, I[1].reshape(-1)[0], int(I[2].reshape(-1)[0]), I[3], I[4], I[5],
                                 I[6].reshape(-1)[0], int(I[7].reshape(-1)[0]), I[8] if len(I) > 8 else None,
                                 a.get("pads", [0] * 4), a.get("strides", [1, 1]), a.get("dilations", [1, 1]),
                                 a.get("group", 1), I[0].dtype)
        if cl:
            y = np.ascontiguousarray(np.transpose(y, (0, 2, 3, 1)))
        return [y]
    if t == "QLinearAdd":
        assert I[0].shape == I[3].shape
        return [ref.qlinear_add(I[0], I[1], int(I[2]), I[3], I[4], int(I[5]), I[6], int(I[7]), I[0].dtype,
                                variant=QLADD_VARIANT).reshape(I[0].shape)]
    if t == "QLinearGlobalAveragePool":
        if a.get("channels_last", 0):
            x = np.transpose(I[0], (0, 3, 1, 2))
            y = ref.qlinear_gap(x, I[1], int(I[2]), I[3], int(I[4]), I[0].dtype)
            return [np.ascontiguousarray(np.transpose(y, (0, 2, 3, 1)))]
        return [ref.qlinear_gap(I[0], I[1], int(I[2]), I[3], int(I[4]), I[0].dtype)]
    if t == "QLinearAveragePool":
        x = I[0]
        cl = a.get("channels_last", 0)
        if cl:
            x = np.transpose(x, (0, 3, 1, 2))
        y = ref.qlinear_avgpool(x, I[1], int(I[2]), I[3], int(I[4]), a["kernel_shape"], a.get("pads", [0] * 4),
                                a.get("strides", [1, 1]), a.get("count_include_pad", 0), I[0].dtype)
        if cl:
            y = np.ascontiguousarray(np.transpose(y, (0, 2, 3, 1)))
        return [y]
    if t == "QGemm":
        return [ref.qgemm(I[0], I[1], int(I[2]), I[3], I[4], I[5], I[6], I[7], int(I[8]),
                          a.get("transA", 0), a.get("transB", 0), a.get("alpha", 1.0), I[0].dtype)]
    if t == "QLinearSoftmax":
        assert a.get("axis", -1) in (-1, I[0].ndim - 1) and a.get("opset") >= 13
        return [ref.qlinear_softmax(I[0], I[1], int(I[2]), I[3], int(I[4]), I[0].dtype)]
    raise NotImplementedError(n.domain + ":" + t)


QLADD_VARIANT = "fmaA"


def main(model_path, input_pb, out_pb=None):
    opt_path = os.path.join(tempfile.gettempdir(), "kiln_ort_int8") + "/_opt_" + model_path.split("/")[-1]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.optimized_model_filepath = opt_path
    so.log_severity_level = 3
    sess_full = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    x = numpy_helper.to_array(onnx.load_tensor(input_pb))
    in_name = sess_full.get_inputs()[0].name
    y_full = sess_full.run(None, {in_name: x})[0]
    if out_pb:
        exp = numpy_helper.to_array(onnx.load_tensor(out_pb))
        print("ORT output vs stored expected output_0.pb: max|diff| =", float(np.abs(y_full.astype(np.float64) - exp).max()),
              " bit-identical:", np.array_equal(y_full.view(np.uint32) if y_full.dtype == F32 else y_full, exp.view(np.uint32) if exp.dtype == F32 else exp))

    m = onnx.load(opt_path)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}

    # --- chained reference run (also gives dtypes for instrumenting)
    env = dict(inits)
    env[in_name] = x
    for n in g.node:
        outs = run_node(n, lambda k: env[k], inits)
        for o, v in zip(n.output, outs):
            env[o] = v
    final_name = g.output[0].name

    # --- instrumented ORT run (optimizations disabled on the already-optimized graph)
    existing = {o.name for o in g.output}
    np2onnx = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
               np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int32): TensorProto.INT32}
    for n in g.node:
        for o in n.output:
            if o not in existing:
                g.output.append(helper.make_tensor_value_info(o, np2onnx[env[o].dtype], None))
                existing.add(o)
    inst_path = opt_path.replace(".onnx", "_inst.onnx")
    onnx.save(m, inst_path)
    so2 = ort.SessionOptions()
    so2.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so2.intra_op_num_threads = 1
    so2.inter_op_num_threads = 1
    so2.log_severity_level = 3
    s2 = ort.InferenceSession(inst_path, so2, providers=["CPUExecutionProvider"])
    names = [o.name for o in s2.get_outputs()]
    res = dict(zip(names, s2.run(None, {in_name: x})))
    print("instrumented final output == normal ORT session output:",
          np.array_equal(res[final_name].view(np.uint32), y_full.view(np.uint32)))

    # --- isolated per-node check
    ort_env = dict(inits)
    ort_env[in_name] = x
    ort_env.update(res)
    stats = collections.OrderedDict()
    for n in g.node:
        outs = run_node(n, lambda k: ort_env[k], inits)
        key = (n.domain + ":" if n.domain else "") + n.op_type
        st = stats.setdefault(key, [0, 0, 0, 0.0])  # nodes, elements, mismatches, max abs diff
        for o, v in zip(n.output, outs):
            r = res[o]
            assert r.shape == v.shape, (n.name, r.shape, v.shape)
            if r.dtype == F32:
                mism = int((r.view(np.uint32) != v.astype(F32).view(np.uint32)).sum())
                md = float(np.abs(r.astype(np.float64) - v).max()) if mism else 0.0
            else:
                mism = int((r != v).sum())
                md = float(np.abs(r.astype(np.int64) - v.astype(np.int64)).max()) if mism else 0.0
            st[0] += 1; st[1] += r.size; st[2] += mism; st[3] = max(st[3], md)
            if mism:
                print(f"  MISMATCH {key} {n.name} -> {o}: {mism}/{r.size} max|d|={md}")
    print("isolated per-node check (op: nodes, elements, mismatching elements, max|diff|):")
    for k, v in stats.items():
        print(f"  {k:40s} nodes={v[0]:3d} elems={v[1]:9d} mismatches={v[2]} maxdiff={v[3]}")

    # --- chained comparison of every tensor
    tot = 0; bad = 0
    first_bad = None
    for n in g.node:
        for o in n.output:
            r = res[o]; v = env[o]
            eq = np.array_equal(r.view(np.uint32) if r.dtype == F32 else r, v.astype(r.dtype).view(np.uint32) if r.dtype == F32 else v)
            tot += 1
            if not eq:
                bad += 1
                if first_bad is None:
                    first_bad = (n.op_type, n.name, o)
    print(f"chained reference run: {tot - bad}/{tot} tensors bit-identical; first divergence: {first_bad}")
    fe = np.array_equal(env[final_name].view(np.uint32), y_full.view(np.uint32))
    print("chained reference final output bit-identical to ORT:", fe)


if __name__ == "__main__":
    if len(sys.argv) > 4:
        QLADD_VARIANT = sys.argv[4]
    main(*sys.argv[1:4])
