"""Synthetic single-kernel QDQ models (random data) run through onnxruntime (ORT_ENABLE_ALL, 1 thread)
and compared bit-exactly with ref.py.  Also checks which kernel ORT actually fused.
"""
import os, tempfile
import sys, itertools
import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto
import onnxruntime as ort
import ref

F32 = np.float32
rng = np.random.default_rng(1234)
T = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
RESULTS = []


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def session(model, threads=1, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, dump=None):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if dump:
        so.optimized_model_filepath = dump
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def fused_ops(model):
    p = os.path.join(tempfile.gettempdir(), "kiln_ort_int8") + "/_tmp_opt.onnx"
    session(model, dump=p)
    m = onnx.load(p)
    return sorted({(n.domain + ":" if n.domain else "") + n.op_type for n in m.graph.node} - {"QuantizeLinear", "DequantizeLinear", "Transpose"})


def report(name, ort_out, ref_out, extra=""):
    a = np.asarray(ort_out); b = np.asarray(ref_out).astype(a.dtype)
    if a.dtype == F32:
        mism = int((a.view(np.uint32) != b.view(np.uint32)).sum())
    else:
        mism = int((a != b).sum())
    RESULTS.append((name, a.size, mism))
    print(f"{name:70s} elems={a.size:8d} mismatches={mism} {extra}")
    return mism


def qparams(lo, hi, dtype):
    """asymmetric activation qparams like quantize_static (MinMax) -> (scale f32, zp)"""
    qmin, qmax = ref.qrange(dtype)
    lo = min(lo, 0.0); hi = max(hi, 0.0)
    s = F32((hi - lo) / (qmax - qmin))
    zp = int(np.clip(round(qmin - lo / float(s)), qmin, qmax))
    return s, zp


def qdq_act(name_in, name_out, s, zp, dtype, nodes, inits, tag):
    inits += [init(tag + "_s", F32(s)), init(tag + "_zp", np.array(zp, dtype))]
    nodes += [helper.make_node("QuantizeLinear", [name_in, tag + "_s", tag + "_zp"], [tag + "_q"]),
              helper.make_node("DequantizeLinear", [tag + "_q", tag + "_s", tag + "_zp"], [name_out])]


def weight_qdq(w, tag, nodes, inits, axis=0):
    """symmetric per-channel int8 weights (like quantize_static per_channel=True)"""
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red)
    ws = (amax / 127.0).astype(F32)
    shp = [1] * w.ndim; shp[axis] = -1
    wq = np.clip(np.rint(w / ws.reshape(shp)), -127, 127).astype(np.int8)
    inits += [init(tag + "_wq", wq), init(tag + "_ws", ws), init(tag + "_wzp", np.zeros(ws.shape, np.int8))]
    nodes += [helper.make_node("DequantizeLinear", [tag + "_wq", tag + "_ws", tag + "_wzp"], [tag + "_w"], axis=axis)]
    return wq, ws


def bias_qdq(b, xs, ws, tag, nodes, inits):
    bs = (F32(xs) * ws).astype(F32)
    bq = np.rint(b / bs).astype(np.int32)
    inits += [init(tag + "_bq", bq), init(tag + "_bs", bs), init(tag + "_bzp", np.zeros(bs.shape, np.int32))]
    nodes += [helper.make_node("DequantizeLinear", [tag + "_bq", tag + "_bs", tag + "_bzp"], [tag + "_b"], axis=0)]
    return bq, bs


def mk(nodes, inits, inputs, outputs, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


# =============================================================== Conv
def conv_case(name, N, C, H, W, M, k, stride, pad, group, dtype, fanout=False, threads=1, wscale_mult=1.0):
    x = rng.standard_normal((N, C, H, W)).astype(F32) * 2
    w = (rng.standard_normal((M, C // group, k, k)) * 0.3 * wscale_mult).astype(F32)
    b = rng.standard_normal(M).astype(F32) * 0.5
    xs, xzp = qparams(float(x.min()), float(x.max()), dtype)
    nodes, inits = [], []
    qdq_act("X", "Xd", xs, xzp, dtype, nodes, inits, "x")
    wq, ws = weight_qdq(w, "w", nodes, inits)
    bq, bs = bias_qdq(b, xs, ws, "b", nodes, inits)
    pads = [pad] * 4
    nodes.append(helper.make_node("Conv", ["Xd", "w_w", "b_b"], ["Yf"], kernel_shape=[k, k], pads=pads,
                                  strides=[stride, stride], group=group))
    # output qparams from float reference range
    xd = ref.dequantize_linear(ref.quantize_linear(x, xs, xzp, dtype), xs, np.array(xzp))
    yf = ref.conv_float_mlas(xd, ref.dequantize_linear(wq, ws, None, 0), None, pads, [stride] * 2, [1, 1], group)
    ys, yzp = qparams(float(yf.min()) * 0.8, float(yf.max()) * 0.8, dtype)   # some saturation on purpose
    qdq_act("Yf", "Y", ys, yzp, dtype, nodes, inits, "y")
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    if fanout:   # second consumer of x's Q output -> Q stays int8 (no s8->u8 conversion) -> float Conv
        nodes.append(helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["X2"]))
        outputs.append(helper.make_tensor_value_info("X2", TensorProto.FLOAT, None))
    m = mk(nodes, inits, [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)], outputs)
    ops = fused_ops(m)
    y_ort = session(m, threads).run(["Y"], {"X": x})[0]
    # reference
    xq = ref.quantize_linear(x, xs, xzp, dtype)
    if "Conv" in ops:   # float path: DQ -> MLAS float conv -> Q
        wd = ref.dequantize_linear(wq, ws, None, 0)
        bd = ref.dequantize_linear(bq, bs, None, 0)
        yf = ref.conv_float_mlas(ref.dequantize_linear(xq, xs, np.array(xzp)), wd, bd, pads, [stride] * 2, [1, 1], group)
        yq = ref.quantize_linear(yf, ys, yzp, dtype)
    else:               # QLinearConv (u8 domain after s8->u8 conversion if dtype is int8)
        off = 128 if dtype == np.int8 else 0
        xu = (xq.astype(np.int32) + off).astype(np.uint8)
        yu = ref.qlinearconv_nchw(xu, xs, xzp + off, wq, ws, np.zeros(M, np.int8), ys, yzp + off, bq, pads,
                                  [stride] * 2, [1, 1], group, np.uint8)
        yq = (yu.astype(np.int32) - off).astype(dtype)
    y_ref = ref.dequantize_linear(yq, ys, np.array(yzp))
    return report(f"{name} [{','.join(ops)}] thr={threads}", y_ort, y_ref)


# =============================================================== Add
def add_case(name, n, dtype, variant, fanout=False, scales=None):
    a = rng.standard_normal(n).astype(F32) * 3
    b = rng.standard_normal(n).astype(F32) * 2
    if scales is None:
        as_, azp = qparams(float(a.min()), float(a.max()), dtype)
        bs_, bzp = qparams(float(b.min()), float(b.max()), dtype)
        cs_, czp = qparams(float((a + b).min()) * 0.9, float((a + b).max()) * 0.9, dtype)
    else:
        (as_, azp), (bs_, bzp), (cs_, czp) = scales
    nodes, inits = [], []
    qdq_act("A", "Ad", as_, azp, dtype, nodes, inits, "a")
    qdq_act("B", "Bd", bs_, bzp, dtype, nodes, inits, "b")
    nodes.append(helper.make_node("Add", ["Ad", "Bd"], ["Cf"]))
    qdq_act("Cf", "C", cs_, czp, dtype, nodes, inits, "c")
    outputs = [helper.make_tensor_value_info("C", TensorProto.FLOAT, None)]
    if fanout:
        nodes.append(helper.make_node("DequantizeLinear", ["a_q", "a_s", "a_zp"], ["A2"]))
        outputs.append(helper.make_tensor_value_info("A2", TensorProto.FLOAT, None))
    m = mk(nodes, inits, [helper.make_tensor_value_info("A", TensorProto.FLOAT, None),
                          helper.make_tensor_value_info("B", TensorProto.FLOAT, None)], outputs)
    ops = fused_ops(m)
    c_ort = session(m).run(["C"], {"A": a, "B": b})[0]
    aq = ref.quantize_linear(a, as_, azp, dtype); bq = ref.quantize_linear(b, bs_, bzp, dtype)
    if "Add" in ops:
        cf = ref.dequantize_linear(aq, as_, np.array(azp)) + ref.dequantize_linear(bq, bs_, np.array(bzp))
        cq = ref.quantize_linear(cf, cs_, czp, dtype)
    else:
        # QLinearAdd; if dtype int8 and no fanout: all three tensors converted to u8
        conv = (dtype == np.int8) and not fanout
        off = 128 if conv else 0
        kd = np.uint8 if conv else dtype
        cq = ref.qlinear_add((aq.astype(np.int32) + off).astype(kd), as_, azp + off, (bq.astype(np.int32) + off).astype(kd),
                             bs_, bzp + off, cs_, czp + off, kd, variant)
        cq = (cq.astype(np.int32) - off).astype(dtype)
    c_ref = ref.dequantize_linear(cq, cs_, np.array(czp))
    return report(f"{name} [{','.join(ops)}] variant={variant}", c_ort, c_ref)


# =============================================================== GAP
def gap_case(name, N, C, H, W, dtype):
    x = (rng.standard_normal((N, C, H, W)) * 2 + 0.5).astype(F32)
    xs, xzp = qparams(float(x.min()), float(x.max()), dtype)
    m_ = x.mean(axis=(2, 3))
    ys, yzp = qparams(float(m_.min()), float(m_.max()), dtype)
    nodes, inits = [], []
    qdq_act("X", "Xd", xs, xzp, dtype, nodes, inits, "x")
    nodes.append(helper.make_node("GlobalAveragePool", ["Xd"], ["Yf"]))
    qdq_act("Yf", "Y", ys, yzp, dtype, nodes, inits, "y")
    m = mk(nodes, inits, [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
           [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    ops = fused_ops(m)
    y_ort = session(m).run(["Y"], {"X": x})[0]
    xq = ref.quantize_linear(x, xs, xzp, dtype)
    off = 128 if dtype == np.int8 else 0
    yq = ref.qlinear_gap((xq.astype(np.int32) + off).astype(np.uint8), xs, xzp + off, ys, yzp + off, np.uint8)
    yq = (yq.astype(np.int32) - off).astype(dtype)
    return report(f"{name} [{','.join(ops)}]", y_ort, ref.dequantize_linear(yq, ys, np.array(yzp)))


# =============================================================== Gemm
def gemm_case(name, Mrows, K, N, dtype):
    a = rng.standard_normal((Mrows, K)).astype(F32)
    w = (rng.standard_normal((N, K)) * 0.2).astype(F32)
    b = rng.standard_normal(N).astype(F32) * 0.3
    as_, azp = qparams(float(a.min()), float(a.max()), dtype)
    nodes, inits = [], []
    qdq_act("A", "Ad", as_, azp, dtype, nodes, inits, "a")
    wq, ws = weight_qdq(w, "w", nodes, inits, axis=0)
    bq, bs = bias_qdq(b, as_, ws, "b", nodes, inits)
    nodes.append(helper.make_node("Gemm", ["Ad", "w_w", "b_b"], ["Yf"], transB=1))
    yf = a @ w.T + b
    ys, yzp = qparams(float(yf.min()), float(yf.max()), dtype)
    qdq_act("Yf", "Y", ys, yzp, dtype, nodes, inits, "y")
    m = mk(nodes, inits, [helper.make_tensor_value_info("A", TensorProto.FLOAT, None)],
           [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    ops = fused_ops(m)
    y_ort = session(m).run(["Y"], {"A": a})[0]
    aq = ref.quantize_linear(a, as_, azp, dtype)
    off = 128 if dtype == np.int8 else 0
    yq = ref.qgemm((aq.astype(np.int32) + off).astype(np.uint8), as_, azp + off, wq, ws, np.zeros(N, np.int8), bq, ys,
                   yzp + off, 0, 1, 1.0, np.uint8)
    yq = (yq.astype(np.int32) - off).astype(dtype)
    return report(f"{name} [{','.join(ops)}]", y_ort, ref.dequantize_linear(yq, ys, np.array(yzp)))


# =============================================================== Softmax
def softmax_case(name, rows, D, dtype, in_range=8.0):
    x = (rng.standard_normal((rows, D)) * in_range / 3).astype(F32)
    xs, xzp = qparams(float(x.min()), float(x.max()), dtype)
    ys, yzp = F32(1.0 / 256.0) if dtype == np.uint8 else F32(1.0 / 256.0), (0 if dtype == np.uint8 else -128)
    nodes, inits = [], []
    qdq_act("X", "Xd", xs, xzp, dtype, nodes, inits, "x")
    nodes.append(helper.make_node("Softmax", ["Xd"], ["Yf"], axis=-1))
    qdq_act("Yf", "Y", ys, yzp, dtype, nodes, inits, "y")
    m = mk(nodes, inits, [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
           [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    ops = fused_ops(m)
    y_ort = session(m).run(["Y"], {"X": x})[0]
    xq = ref.quantize_linear(x, xs, xzp, dtype)
    off = 128 if dtype == np.int8 else 0
    yq = ref.qlinear_softmax((xq.astype(np.int32) + off).astype(np.uint8), xs, xzp + off, ys, yzp + off, np.uint8)
    yq = (yq.astype(np.int32) - off).astype(dtype)
    return report(f"{name} [{','.join(ops)}]", y_ort, ref.dequantize_linear(yq, ys, np.array(yzp)))


# =============================================================== Q / DQ standalone
def q_dq_cases():
    # QuantizeLinear: ties and division-vs-reciprocal discriminating inputs
    s = F32(0.1)
    base = np.arange(-2000, 2000, dtype=np.int64)
    ties = ((base.astype(F32) + F32(0.5)) * s).astype(F32)          # near-ties
    rnd = (rng.standard_normal(200000) * 20).astype(F32)
    x = np.concatenate([ties, rnd, np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0], F32)])
    recip_diff = int((np.rint(x / s) != np.rint(x * (F32(1) / s))).sum())
    for dtype, zp in [(np.uint8, 37), (np.int8, -5)]:
        nodes, inits = [], []
        inits += [init("s", s), init("zp", np.array(zp, dtype))]
        nodes.append(helper.make_node("QuantizeLinear", ["X", "s", "zp"], ["Y"]))
        m = mk(nodes, inits, [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
               [helper.make_tensor_value_info("Y", T[np.dtype(dtype)], None)])
        y = session(m).run(None, {"X": x})[0]
        report(f"QuantizeLinear {np.dtype(dtype).name} (x/s, RNE, NaN->qmin)", y, ref.quantize_linear(x, s, zp, dtype),
               f"(x/s vs x*(1/s) differ on {recip_diff} inputs)")
        # alternative formula: x * (1/s) -> how many mismatches would it give?
        alt = np.clip(np.rint(np.nan_to_num(x * (F32(1) / s), nan=-1e9)) + zp, *ref.qrange(dtype)).astype(dtype)
        print(f"    (alt. formula rint(x*(1/s)) would mismatch on {int((alt != y).sum())} elements)")
    # DequantizeLinear int32 with big values (> 2^24) per-channel
    q = rng.integers(-2**31, 2**31 - 1, size=(4, 1000), dtype=np.int64).astype(np.int32)
    sc = rng.uniform(1e-6, 1e-3, size=4).astype(F32)
    zp = np.array([0, 5, -7, 100000], np.int32)
    nodes, inits = [], [init("q", q), init("s", sc), init("zp", zp)]
    nodes.append(helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["Y"], axis=0))
    m = mk(nodes, inits, [], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    y = session(m, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, {})[0]
    r = ref.dequantize_linear(q, sc, zp, 0)
    report("DequantizeLinear int32 per-channel, |q|>2^24: f32(int32(q-zp))*s", y, r)
    alt = (q.astype(np.float64) - zp.reshape(-1, 1)).astype(F32) * sc.reshape(-1, 1)
    alt2 = (q.astype(F32) - zp.astype(F32).reshape(-1, 1)) * sc.reshape(-1, 1)
    print(f"    (alt f32(double(q)-zp)*s mismatches={int((alt.view(np.uint32)!=y.view(np.uint32)).sum())}, "
          f"alt (f32(q)-f32(zp))*s mismatches={int((alt2.view(np.uint32)!=y.view(np.uint32)).sum())})")
    for dtype in (np.uint8, np.int8):
        qq = np.arange(256).astype(np.int64) + (0 if dtype == np.uint8 else -128)
        qq = np.tile(qq, 40).astype(dtype)
        s = F32(0.0123456); zp = 17 if dtype == np.uint8 else -3
        nodes, inits = [], [init("q", qq), init("s", s), init("zp", np.array(zp, dtype))]
        nodes.append(helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["Y"]))
        m = mk(nodes, inits, [], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
        y = session(m, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, {})[0]
        report(f"DequantizeLinear {np.dtype(dtype).name} per-tensor", y, ref.dequantize_linear(qq, s, np.array(zp)))


if __name__ == "__main__":
    print("== QuantizeLinear / DequantizeLinear")
    q_dq_cases()
    print("== Conv (fused -> QLinearConv u8s8; fanout -> float Conv)")
    for dtype in (np.int8, np.uint8):
        dn = np.dtype(dtype).name
        conv_case(f"conv3x3 C16->32 s1 {dn} (ConvSym)", 1, 16, 20, 20, 32, 3, 1, 1, 1, dtype)
        conv_case(f"conv3x3 C3->32 s2 {dn} (Cin%4!=0 -> SymmQgemm/Qgemm)", 1, 3, 33, 33, 32, 3, 2, 1, 1, dtype)
        conv_case(f"conv1x1 C64->24 {dn} (pointwise)", 1, 64, 14, 14, 24, 1, 1, 0, 1, dtype)
        conv_case(f"dwconv3x3 g=48 {dn} (ConvSymDepthwise)", 1, 48, 15, 15, 48, 3, 1, 1, 48, dtype)
        conv_case(f"dwconv3x3 g=24 s2 {dn} (g%16!=0 -> MlasConvDepthwise)", 1, 24, 15, 15, 24, 3, 2, 1, 24, dtype)
        conv_case(f"conv3x3 C20->10 {dn} (Cout<16 -> non-sym path)", 1, 20, 9, 9, 10, 3, 1, 1, 1, dtype)
        conv_case(f"conv3x3 grouped g=4 C32->32 {dn}", 1, 32, 12, 12, 32, 3, 1, 1, 4, dtype)
        conv_case(f"conv3x3 N=2 C8->16 {dn}", 2, 8, 10, 10, 16, 3, 1, 1, 1, dtype)
    conv_case("FLOAT conv3x3 C64->64 K=576 (3 K-blocks) fanout int8", 1, 64, 16, 16, 64, 3, 1, 1, 1, np.int8, fanout=True)
    conv_case("FLOAT conv3x3 C32->16 8x8 (ExpandThenGemm, M>N) fanout int8", 1, 32, 3, 3, 16, 3, 1, 1, 1, np.int8, fanout=True)
    conv_case("FLOAT conv1x1 C320->96 7x7 (GemmDirect, N<K) fanout int8", 1, 320, 7, 7, 96, 1, 1, 0, 1, np.int8, fanout=True)
    conv_case("FLOAT conv1x1 C96->24 56x56 (GemmDirect) fanout int8", 1, 96, 56, 56, 24, 1, 1, 0, 1, np.int8, fanout=True)
    conv_case("FLOAT conv1x1 s2 C16->32 (Segmented) fanout int8", 1, 16, 32, 32, 32, 1, 2, 0, 1, np.int8, fanout=True)
    conv_case("FLOAT dwconv3x3 g=32 (float grouped) fanout int8", 1, 32, 16, 16, 32, 3, 1, 1, 32, np.int8, fanout=True)
    for thr in (2, 4):
        conv_case("FLOAT conv3x3 C64->64 K=576 fanout int8", 1, 64, 32, 32, 64, 3, 1, 1, 1, np.int8, fanout=True, threads=thr)
    print("== Add")
    for variant in ("plain", "fmaA", "fmaB"):
        add_case("QLinearAdd u8 (converted from int8)", 100000, np.int8, variant)
        add_case("QLinearAdd u8 native", 100000, np.uint8, variant)
        add_case("QLinearAdd int8 (all s8, fanout)", 100000, np.int8, variant, fanout=True)
    print("== GlobalAveragePool")
    for dtype in (np.int8, np.uint8):
        gap_case(f"GAP 7x7 C=1280 {np.dtype(dtype).name}", 1, 1280, 7, 7, dtype)
        gap_case(f"GAP 8x8 C=64 N=3 {np.dtype(dtype).name}", 3, 64, 8, 8, dtype)
        gap_case(f"GAP 61x59 C=16 {np.dtype(dtype).name}", 1, 16, 61, 59, dtype)
    print("== Gemm")
    for dtype in (np.int8, np.uint8):
        gemm_case(f"Gemm 1x1280 -> 1000 {np.dtype(dtype).name}", 1, 1280, 1000, dtype)
        gemm_case(f"Gemm 7x64 -> 10 {np.dtype(dtype).name}", 7, 64, 10, dtype)
    print("== Softmax")
    for dtype in (np.int8, np.uint8):
        softmax_case(f"Softmax 64x10 {np.dtype(dtype).name}", 64, 10, dtype)
        softmax_case(f"Softmax 16x1000 {np.dtype(dtype).name}", 16, 1000, dtype, in_range=20)
    tot = sum(r[2] for r in RESULTS)
    print("TOTAL cases", len(RESULTS), "cases with mismatches:", sum(1 for r in RESULTS if r[2]))
