"""Predict which QDQ node groups onnxruntime 1.32 (CPU EP, x86-64, ORT_ENABLE_EXTENDED/ALL) fuses into
integer kernels, from the ORIGINAL QDQ graph, using the rules read from ORT source:
  1. EnsureUniqueDQForNodeUnit: a DQ whose output has k>1 consumers becomes k DQs.
  2. QDQS8ToU8Transformer: a Q (int8 scalar const zp) with exactly ONE output edge, into a DQ with the
     same zp, is converted (with that DQ) to uint8 (zp+128, data+128).  Q with >1 edge stays int8.
  3. Selectors (x86: is_int8_allowed=false):
       Conv / MatMul : dt(x) == dt(y) and dt(x) != int8          -> QLinearConv / QLinearMatMul
       Gemm          : dt(A) == dt(Y); A int8 => B int8             -> QGemm
       Add / Mul     : dt(a) == dt(b) == dt(y)                     -> QLinearAdd / QLinearMul
       GlobalAveragePool, AveragePool, Softmax, Sigmoid, LeakyRelu : dt(x) == dt(y) -> QLinear*
       Flatten/Reshape/Transpose/Squeeze/Unsqueeze/...: DQ->op->Q with equal scale & zp -> DQ/Q dropped
     and for all: every activation input comes from a DQ, the target's only consumers are Q nodes
     (exactly one Q per output), target does not produce a graph output.
Compares the prediction with ORT's optimized graph.
"""
import os, tempfile
import sys, collections
import numpy as np
import onnx
from onnx import numpy_helper
import onnxruntime as ort

INT8, UINT8 = onnx.TensorProto.INT8, onnx.TensorProto.UINT8


def predict(model):
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    producer = {}
    consumers = collections.defaultdict(list)
    for n in g.node:
        for o in n.output:
            producer[o] = n
        for i in n.input:
            if i:
                consumers[i].append(n)

    def n_uses(t):
        return len(consumers[t]) + (1 if t in graph_outputs else 0)

    # --- step 1+2: which Q nodes get converted to u8
    converted_q = set()
    for n in g.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or n.input[2] not in inits:
            continue
        if inits[n.input[2]].data_type != INT8:
            continue
        t = n.output[0]
        if t in graph_outputs:
            continue
        dqs = consumers[t]
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        dq = dqs[0]
        # EnsureUniqueDQ: the DQ is duplicated once per consumer -> Q gets n_uses(dq.out) edges
        if n_uses(dq.output[0]) != 1:
            continue
        zq = numpy_helper.to_array(inits[n.input[2]]); zd = dq.input[2] in inits and numpy_helper.to_array(inits[dq.input[2]])
        if zq.size != 1 or not isinstance(zd, np.ndarray) or zd.size != 1 or int(zq.reshape(-1)[0]) != int(zd.reshape(-1)[0]):
            continue
        converted_q.add(n.name or t)

    def act_dtype_of_dq(dq):
        src = dq.input[0]
        if src in inits:
            return inits[src].data_type
        p = producer.get(src)
        if p is not None and p.op_type == "QuantizeLinear":
            zp = inits[p.input[2]].data_type
            return UINT8 if (p.name or p.output[0]) in converted_q else zp
        return None

    def q_out_dtype(q):
        zp = inits[q.input[2]].data_type
        return UINT8 if (q.name or q.output[0]) in converted_q else zp

    pred = {}
    for n in g.node:
        t = n.op_type
        if t in ("QuantizeLinear", "DequantizeLinear"):
            continue
        # inputs from DQ?
        act_inputs = [i for i in n.input if i and not (i in inits)]
        dqs = [producer.get(i) for i in n.input if i]
        qs = consumers[n.output[0]]
        ok_q = (len(qs) == 1 and qs[0].op_type == "QuantizeLinear" and n.output[0] not in graph_outputs)
        all_dq = all(d is not None and d.op_type == "DequantizeLinear" for d in dqs)
        fused = False
        if all_dq and dqs:
            dts = [act_dtype_of_dq(d) for d in dqs]
            if t in ("Conv", "MatMul") and ok_q:
                dy = q_out_dtype(qs[0])
                fused = dts[0] == dy and dts[0] != INT8
            elif t == "Gemm":
                dy = q_out_dtype(qs[0]) if ok_q else dts[0]
                fused = (dts[0] == dy) and (dts[0] != INT8 or dts[1] == INT8) and (ok_q or len(qs) == 0)
            elif t in ("Add", "Mul") and ok_q:
                dy = q_out_dtype(qs[0])
                fused = dts[0] == dts[1] == dy
            elif t in ("GlobalAveragePool", "AveragePool", "Softmax", "Sigmoid", "LeakyRelu") and ok_q:
                fused = dts[0] == q_out_dtype(qs[0])
            elif t in ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze") and ok_q:
                d, q = dqs[0], qs[0]
                same = all(np.array_equal(numpy_helper.to_array(inits[a]), numpy_helper.to_array(inits[b]))
                           for a, b in zip(d.input[1:3], q.input[1:3]))
                fused = same and dts[0] == q_out_dtype(q)
        pred[n.name] = fused
    return pred, converted_q


def ort_actual(path):
    p = os.path.join(tempfile.gettempdir(), "kiln_ort_int8") + "/_pred_opt.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = p
    so.log_severity_level = 3
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    m = onnx.load(p)
    act = {}
    names = {n.name: n for n in m.graph.node}
    for n in m.graph.node:
        base = n.name.split("_token_")[0]
        if n.domain == "com.microsoft" or n.op_type.startswith("QLinear"):
            act[base] = True
    # Flatten etc. that lost their DQ/Q: input comes from a non-DQ integer tensor
    prod = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type in ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze") and n.domain == "":
            src = prod.get(n.input[0])
            act.setdefault(n.name, src is not None and src.op_type != "DequantizeLinear")
    return act


if __name__ == "__main__":
    for path in sys.argv[1:]:
        m = onnx.load(path)
        pred, conv = predict(m)
        act = ort_actual(path)
        bad = []
        for name, f in pred.items():
            a = act.get(name, False)
            if a != f:
                bad.append((name, f, a))
        nf = sum(pred.values())
        print(f"{path.split('/')[-1]}: {len(pred)} target nodes, predicted fused {nf}, ORT fused "
              f"{sum(1 for k in pred if act.get(k, False))}, disagreements: {bad}")
