"""Bit-exact numpy reference of onnxruntime 1.32 CPU-EP kernels used by QDQ int8 models
(x86-64, AVX2/AVX-512, MXCSR default = round-to-nearest-even, 1 intra-op thread).

Float32 arithmetic is done with numpy float32 (IEEE, one rounding per op); FMA-dependent
pieces (MLAS SGEMM micro-kernel, QLinearAdd AVX2 kernel) are done in a tiny C helper
(libfhelper.so, compiled with -ffp-contract=off, explicit fmaf()).
"""
import ctypes, os
import numpy as np

F32 = np.float32
_here = os.path.dirname(os.path.abspath(__file__))
_lib = ctypes.CDLL(os.path.join(_here, "libfhelper.so"))
_fp = ctypes.POINTER(ctypes.c_float)
_ip = ctypes.POINTER(ctypes.c_int32)
_lib.sgemm_direct.argtypes = [_fp, _fp, _fp, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
_lib.conv_segmented.argtypes = [_fp, _fp, _fp, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
_lib.qladd.argtypes = [_fp, _fp, ctypes.c_float, ctypes.c_float, ctypes.c_float, _ip, ctypes.c_size_t]
_lib.c_fmaf.argtypes = [ctypes.c_float] * 3
_lib.c_fmaf.restype = ctypes.c_float


def fmaf(a, b, c):
    return F32(_lib.c_fmaf(float(a), float(b), float(c)))


def _p(a, t=_fp):
    return a.ctypes.data_as(t)


def qrange(dtype):
    return (0, 255) if np.dtype(dtype) == np.uint8 else (-128, 127)


# ---------------------------------------------------------------- QuantizeLinear (MLAS)
def quantize_linear(x, scale, zp, dtype):
    """y = clamp(rne(x / scale), lo - zp, hi - zp) + zp ; division in f32 (vdivps), clamp in
    float before cvtps2dq (NaN -> lo)."""
    lo, hi = qrange(dtype)
    x = np.asarray(x, F32)
    zp = int(zp)
    v = x / F32(scale)                      # IEEE f32 division
    v = np.where(np.isnan(v), F32(lo - zp), v)
    v = np.minimum(np.maximum(v, F32(lo - zp)), F32(hi - zp))
    return (np.rint(v).astype(np.int32) + zp).astype(dtype)


# ---------------------------------------------------------------- DequantizeLinear
def dequantize_linear(q, scale, zp=None, axis=1):
    """y = f32(int32(q) - int32(zp)) * scale (one f32 multiply)."""
    q = np.asarray(q)
    scale = np.asarray(scale, F32)
    zp = np.zeros_like(scale, dtype=np.int64) if zp is None else np.asarray(zp).astype(np.int64)
    if scale.ndim == 0 or scale.size == 1:
        d = (q.astype(np.int64) - int(zp.reshape(-1)[0])).astype(np.int32)
        return d.astype(F32) * F32(scale.reshape(-1)[0])
    shp = [1] * q.ndim
    ax = axis if axis >= 0 else axis + q.ndim
    shp[ax] = -1
    d = (q.astype(np.int64) - zp.reshape(shp)).astype(np.int32)
    return d.astype(F32) * scale.reshape(shp)


# ---------------------------------------------------------------- MlasRequantizeOutput
def requantize(acc, scale, zp, dtype):
    """acc: int32 (bias already added, wraparound int32). y = clamp(f32(acc)*scale) -> rne -> +zp.
    scale broadcast over last axis (per output channel) or scalar."""
    lo, hi = qrange(dtype)
    f = np.asarray(acc, np.int32).astype(F32) * np.asarray(scale, F32)
    f = np.minimum(np.maximum(f, F32(lo - zp)), F32(hi - zp))
    return (np.rint(f).astype(np.int32) + int(zp)).astype(dtype)


def conv_output_scales(x_scale, w_scale, y_scale):
    """QLinearConv::ComputeOutputScale: (X_scale * W_scale[i]) / Y_scale, all f32."""
    w = np.asarray(w_scale, F32).reshape(-1)
    return (F32(x_scale) * w) / F32(y_scale)


def qgemm_output_scales(a_scale, b_scale, y_scale, alpha=1.0):
    """QGemm::ComputeOutputScale: (alpha * a_scale * b_scale[i]) / y_scale, f32, left-to-right."""
    b = np.asarray(b_scale, F32).reshape(-1)
    return ((F32(alpha) * F32(a_scale)) * b) / F32(y_scale)


# ---------------------------------------------------------------- integer conv (NCHW)
def _im2col(x, kh, kw, pads, strides, dil, pad_value):
    # x: [C,H,W] (int64 or float); returns [C*kh*kw, OH*OW] with k = c*kh*kw + ky*kw + kx
    C, H, W = x.shape
    pt, pl, pb, pr = pads[0], pads[1], pads[2], pads[3]
    sh, sw = strides
    dh, dw = dil
    OH = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = np.full((C, H + pt + pb, W + pl + pr), pad_value, dtype=x.dtype)
    xp[:, pt:pt + H, pl:pl + W] = x
    cols = np.empty((C, kh, kw, OH, OW), dtype=x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            cols[:, ky, kx] = xp[:, ky * dh: ky * dh + sh * (OH - 1) + 1: sh, kx * dw: kx * dw + sw * (OW - 1) + 1: sw]
    return cols.reshape(C * kh * kw, OH * OW), OH, OW


def qlinearconv_nchw(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias, pads, strides, dil, group, out_dtype):
    """x: [N,C,H,W] u8/s8, w: [M, C/g, kh, kw] s8, bias int32[M] or None. Exact int accumulation
    sum((x-xzp)*(w-wzp)) + bias (int32), then MlasRequantizeOutput / ConvSym post-process."""
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    Mg = M // group
    scales = conv_output_scales(x_scale, w_scale, y_scale)
    wzp = np.asarray(w_zp).astype(np.int64).reshape(-1)
    outs = []
    for n in range(N):
        xi = x[n].astype(np.int64) - int(x_zp)
        accs = []
        for g in range(group):
            col, OH, OW = _im2col(xi[g * Cg:(g + 1) * Cg], kh, kw, pads, strides, dil, 0)
            wg = w[g * Mg:(g + 1) * Mg].reshape(Mg, -1).astype(np.int64)
            wg = wg - (wzp[g * Mg:(g + 1) * Mg] if wzp.size > 1 else wzp[0]).reshape(-1, 1)
            accs.append(wg @ col)
        acc = np.concatenate(accs, 0)  # [M, OH*OW]
        if bias is not None:
            acc = acc + np.asarray(bias, np.int64).reshape(-1, 1)
        acc = ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)
        y = requantize(acc.T, scales if scales.size > 1 else scales[0], int(y_zp), out_dtype).T
        outs.append(y.reshape(M, OH, OW))
    return np.stack(outs)


# ---------------------------------------------------------------- float Conv (MLAS MlasConv, 1 thread)
def conv_float_mlas(x, w, b, pads, strides, dil, group):
    """Emulates onnxruntime CPU Conv (float32, 2-D) -> MlasConvPrepare/MlasConv, single thread.
    GemmDirect for 1x1/stride1/pad0, otherwise ExpandThenGemm(Segmented) (im2col + SGEMM with
    MLAS K/N blocking, FMA chain per K-block, K-blocks summed with one f32 add each), then bias add."""
    x = np.asarray(x, F32)
    w = np.asarray(w, F32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    Mg = M // group
    K = Cg * kh * kw
    outs = []
    for n in range(N):
        ys = []
        for g in range(group):
            xg = np.ascontiguousarray(x[n, g * Cg:(g + 1) * Cg])
            wg = np.ascontiguousarray(w[g * Mg:(g + 1) * Mg].reshape(Mg, K))
            col, OH, OW = _im2col(xg, kh, kw, pads, strides, dil, F32(0))
            col = np.ascontiguousarray(col, F32)
            OS = OH * OW
            out = np.zeros((Mg, OS), F32)
            direct = (kh == 1 and kw == 1 and all(s == 1 for s in strides) and all(p == 0 for p in pads))
            if direct or Mg > OS:
                # GemmDirect (pointwise) / ExpandThenGemm: one MlasGemm over full M,N,K
                _lib.sgemm_direct(_p(wg), _p(col), _p(out), Mg, OS, K)
            else:
                _lib.conv_segmented(_p(wg), _p(col), _p(out), Mg, OS, K)
            if b is not None:
                out = out + np.asarray(b, F32)[g * Mg:(g + 1) * Mg].reshape(-1, 1)
            ys.append(out.reshape(Mg, OH, OW))
        outs.append(np.concatenate(ys, 0))
    return np.stack(outs)


# ---------------------------------------------------------------- QLinearAdd (MLAS AVX2 kernel)
def qladd_params(a_scale, a_zp, b_scale, b_zp, c_scale, c_zp, variant="fmaA"):
    rac = F32(a_scale) / F32(c_scale)
    rbc = F32(b_scale) / F32(c_scale)
    if variant == "plain":
        s = F32(rac * F32(a_zp)) + F32(rbc * F32(b_zp))
    elif variant == "fmaA":   # fma(rac, zA, rbc*zB)
        s = fmaf(rac, F32(a_zp), F32(rbc * F32(b_zp)))
    elif variant == "fmaB":   # fma(rbc, zB, rac*zA)
        s = fmaf(rbc, F32(b_zp), F32(rac * F32(a_zp)))
    else:
        raise ValueError(variant)
    fixed = F32(F32(c_zp) - F32(s))
    return rac, rbc, fixed


def qlinear_add(a, a_scale, a_zp, b, b_scale, b_zp, c_scale, c_zp, dtype, variant="fmaA"):
    """y = sat(rne(fma(a, RAC, fma(b, RBC, FIXED)))), a,b raw quantized values as f32.
    (same-shape inputs; scalar-broadcast inputs fold a*RAC into FIXED with mul+add, not fma.)"""
    rac, rbc, fixed = qladd_params(a_scale, a_zp, b_scale, b_zp, c_scale, c_zp, variant)
    a = np.ascontiguousarray(np.asarray(a).astype(F32).reshape(-1))
    b = np.ascontiguousarray(np.asarray(b).astype(F32).reshape(-1))
    out = np.empty(a.size, np.int32)
    _lib.qladd(_p(a), _p(b), rac, rbc, fixed, _p(out, _ip), a.size)
    lo, hi = qrange(dtype)
    # packs_epi32 (int16 saturation) then packus/packs_epi16 -> equivalent to clamp to [lo,hi]
    return np.clip(out, lo, hi).astype(dtype)


# ---------------------------------------------------------------- QLinearGlobalAveragePool (NCHW)
def qlinear_gap(x, x_scale, x_zp, y_scale, y_zp, dtype):
    N, C = x.shape[:2]
    img = int(np.prod(x.shape[2:]))
    scale = F32(x_scale) / (F32(y_scale) * F32(img))
    acc = x.reshape(N, C, img).astype(np.int64).sum(-1) - int(x_zp) * img
    y = requantize(acc.astype(np.int32), scale, int(y_zp), dtype)
    return y.reshape(N, C, *([1] * (x.ndim - 2)))


# ---------------------------------------------------------------- QGemm
def qgemm(a, a_scale, a_zp, b, b_scale, b_zp, bias, y_scale, y_zp, transA, transB, alpha, dtype):
    A = a.astype(np.int64) - int(a_zp)
    if transA:
        A = A.T
    B = b.astype(np.int64)
    if transB:
        B = B.T                                  # now [K, N]
    bzp = np.asarray(b_zp).astype(np.int64).reshape(-1)
    B = B - (bzp.reshape(1, -1) if bzp.size > 1 else bzp[0])
    acc = A @ B
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64).reshape(1, -1)
    acc = ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)
    sc = qgemm_output_scales(a_scale, b_scale, y_scale, alpha)
    return requantize(acc, sc if sc.size > 1 else sc[0], int(y_zp), dtype)


# ---------------------------------------------------------------- QLinearSoftmax (opset13, last axis)
def qlinear_softmax_table(x_scale, D, is_signed):
    import math
    fmax = float(np.finfo(F32).max)
    bit_shift = math.log(float(F32(fmax) / F32(D)))     # float/size_t division in f32, log in double
    bit_shift = max(0.0, bit_shift - 5.0) / float(F32(x_scale))
    table = np.zeros(256, F32)
    for i in range(256):
        v = math.exp((float(i) - 255 + bit_shift) * float(F32(x_scale)))
        idx = (i - 128) & 0xFF if is_signed else i
        table[idx] = F32(v)
    return table


def qlinear_softmax(x, x_scale, x_zp, y_scale, y_zp, dtype):
    """com.microsoft QLinearSoftmax (opset13, reduce over last axis), ORT 1.32 = MLAS
    MlasComputeQSoftmax -> MlasQuantizeSoftmax{U8,I8}KernelAvx512 (per row):
      table[256] = f32(exp(double))  (qlinear_softmax_table), indexed by x + (255 - max) [u8]
                   or uint8(x + (127 - max)) [s8, table stored at index (i-128)&0xFF]
      total = AVX-512 lane-wise sum over blocks of 32 (two 16-lane adds per block), fixed
              shuffle-tree horizontal reduction, then the tail (D % 32) added sequentially
      scale = f32(f32(1/total) * Yf) with Yf = floor(1/y_scale)   (Yf is an integer-valued f32!)
      y = clamp(rne(fma(v, scale, f32(y_zp))), qmin, qmax)
    (alternative compilations -- AVX2 8-lane sums, mul+add instead of fma -- were never
     distinguished by random tests; the OLD non-MLAS formula rne((v*Yf)/sum) with int8 wrap DOES differ.)"""
    x = np.asarray(x)
    D = x.shape[-1]
    is_signed = np.dtype(dtype) == np.int8
    lo, hi = qrange(dtype)
    table = qlinear_softmax_table(x_scale, D, is_signed)
    Yf = F32(np.floor(F32(1.0) / F32(y_scale)))
    zpf = F32(int(y_zp))
    out = np.empty_like(x)
    flat = x.reshape(-1, D)
    of = out.reshape(-1, D)
    for r in range(flat.shape[0]):
        row = flat[r].astype(np.int64)
        if not is_signed:
            vals = table[255 - int(row.max()) + row].astype(F32)
        else:
            vals = table[(127 - int(row.max()) + row) & 0xFF].astype(F32)
        acc = np.zeros(16, F32)
        i = 0
        while i + 32 <= D:
            acc = (acc + vals[i:i + 16]).astype(F32)
            acc = (acc + vals[i + 16:i + 32]).astype(F32)
            i += 32
        s4 = acc.reshape(4, 4)
        s4 = (s4 + s4[[1, 1, 3, 3]]).astype(F32)
        s4 = (s4 + s4[[2, 3, 0, 1]]).astype(F32)
        s4 = (s4 + s4[:, [1, 0, 3, 2]]).astype(F32)
        s4 = (s4 + s4[:, [2, 3, 0, 1]]).astype(F32)
        total = F32(s4[0, 0])
        for v in vals[i:]:
            total = F32(total + v)
        scale = F32(F32(F32(1.0) / total) * Yf)
        q = np.array([int(np.rint(fmaf(v, scale, zpf))) for v in vals], np.int64)
        of[r] = np.clip(q, lo, hi).astype(dtype)
    return out


# ---------------------------------------------------------------- QLinearAveragePool (contrib), 2-D NCHW
def qlinear_avgpool(x, x_scale, x_zp, y_scale, y_zp, kernel, pads, strides, count_include_pad, dtype):
    """If kernel == spatial dims and all pads == 0 -> integer global-average path (qlinear_gap).
    Otherwise float path: xf = x_scale * f32(int(x)-zp); window sum in f32, h-major then w order
    (window clipped to the image, pads not visited); y = sum / f32(count) where count = kh*kw if
    count_include_pad else clipped window size; q = clamp(nearbyintf(f32(y / y_scale) + f32(y_zp)))."""
    N, C, H, W = x.shape
    kh, kw = kernel
    if (H, W) == (kh, kw) and all(p == 0 for p in pads):
        return qlinear_gap(x, x_scale, x_zp, y_scale, y_zp, dtype)
    lo, hi = qrange(dtype)
    xf = F32(x_scale) * (x.astype(np.int32) - int(x_zp)).astype(F32)
    pt, pl, pb, pr = pads
    sh, sw = strides
    OH = (H + pt + pb - kh) // sh + 1
    OW = (W + pl + pr - kw) // sw + 1
    y = np.empty((N, C, OH, OW), dtype)
    for ph in range(OH):
        hs = ph * sh - pt; he = min(hs + kh, H); hs = max(hs, 0)
        for pw in range(OW):
            ws = pw * sw - pl; we = min(ws + kw, W); ws = max(ws, 0)
            acc = np.zeros((N, C), F32)
            for h in range(hs, he):
                for w in range(ws, we):
                    acc = (acc + xf[:, :, h, w]).astype(F32)
            cnt = kh * kw if count_include_pad else (he - hs) * (we - ws)
            v = (acc / F32(cnt)).astype(F32)
            q = np.rint(((v / F32(y_scale)).astype(F32) + F32(y_zp)).astype(F32)).astype(np.int64)
            y[:, :, ph, pw] = np.clip(q, lo, hi).astype(dtype)
    return y


# ---------------------------------------------------------------- QLinearAdd with a broadcast scalar operand
def qlinear_add_scalar(span, span_scale, span_zp, scalar, sc_scale, sc_zp, c_scale, c_zp, dtype, scalar_variant="fma"):
    """MlasQLinearAdd with IsScalarB: ORT always passes the vector (span) operand as 'A' and the
    broadcast scalar as 'B' (it swaps operands when input 0 is the scalar).
      R_span = s_span/s_c ; R_sc = s_sc/s_c
      Fixed  = f32(z_c) - fma(R_span, z_span, f32(R_sc*z_sc))
      VF     = fma(f32(scalar), R_sc, Fixed)          (verified; 'muladd' = f32(Fixed + f32(scalar*R_sc)) is wrong)
      y      = sat(rne(fma(f32(x), R_span, VF)))"""
    rs, rsc, fixed = qladd_params(span_scale, span_zp, sc_scale, sc_zp, c_scale, c_zp, "fmaA")
    s = F32(int(scalar))
    vf = F32(fixed + F32(s * rsc)) if scalar_variant == "muladd" else fmaf(s, rsc, fixed)
    x = np.ascontiguousarray(np.asarray(span).astype(F32).reshape(-1))
    zero = np.zeros_like(x)
    out = np.empty(x.size, np.int32)
    _lib.qladd(_p(x), _p(zero), rs, F32(0), vf, _p(out, _ip), x.size)   # fma(0,0,VF)=VF then fma(x,rs,VF)
    lo, hi = qrange(dtype)
    return np.clip(out, lo, hi).astype(dtype)
