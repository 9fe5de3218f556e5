#!/usr/bin/env python3
"""End-to-end latency of Kiln against onnxruntime, side by side in one run on this machine.

For every model (default: the five in ../shared/models, else the bundled ones in tests/models) and
thread count, it runs `kiln bench MODEL --threads T --iters N --json` and onnxruntime's
InferenceSession with intra_op_num_threads=T on the same input, alternating the two per model so
that machine noise hits both alike, and prints the median latencies and the ratio kiln/onnxruntime
(lower is better for Kiln). Nothing here asserts a timing: the numbers are for reading.

With --rounds R the Kiln/onnxruntime pair runs R times in a row per model and thread count; the
table shows the median of each side's medians and the median of the R per-round ratios (on a
shared machine whose speed drifts, a ratio taken within one round is the steadier number).

With --aot it also compiles each model into a shared library (`kiln compile`, target host) and
times it through examples/c/run_model.c (KILN_BENCH_ITERS), printing the AOT/JIT ratio.

With --tuning-logs DIR, a model with a tuning log DIR/NAME.jsonl (from `kiln tune`) is also timed
with `--tuning-log` in the same alternation, printing tuned ms, tuned/untuned and tuned/ort.

With --gemm N it also builds an N x N x N f32 MatMul model (random A input, constant B) and times
it against numpy's matmul (OpenBLAS sgemm, in a subprocess with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset and OPENBLAS_NUM_THREADS = threads), alternating, printing GFLOP/s and
numpy/kiln (above 1: Kiln is faster).

Usage: python3 benches/compare_onnxruntime.py [--models DIR] [--threads 1,2] [--iters 50]
                                              [--kiln PATH] [--markdown] [--aot]
                                              [--tuning-logs DIR] [--gemm N]
Needs: pip install onnxruntime numpy onnx; a release build of kiln (cargo build --release -p kiln-cli).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_models_dir():
    shared = os.path.join(ROOT, "..", "shared", "models")
    return shared if os.path.isdir(shared) else os.path.join(ROOT, "tests", "models")


def ort_median_ms(model, data_dir, threads, iters):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feeds = {}
    for i, inp in enumerate(sess.get_inputs()):
        t = onnx.TensorProto()
        with open(os.path.join(data_dir, f"input_{i}.pb"), "rb") as f:
            t.ParseFromString(f.read())
        feeds[inp.name] = numpy_helper.to_array(t)
    for _ in range(max(3, iters // 10)):
        sess.run(None, feeds)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def kiln_bench(kiln, model, threads, iters, tuning_log=None):
    extra = ["--tuning-log", tuning_log] if tuning_log else []
    out = subprocess.run(
        [kiln, "bench", model, "--threads", str(threads), "--iters", str(iters), "--json"] + extra,
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


NUMPY_GEMM = '''
import sys, time, numpy as np
n, iters = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
for _ in range(max(3, iters // 10)):
    a @ b
ts = []
for _ in range(iters):
    t = time.perf_counter()
    a @ b
    ts.append((time.perf_counter() - t) * 1e3)
ts.sort()
print(ts[len(ts) // 2])
'''


def gemm_model(tmp, n):
    """An n x n x n MatMul model (input a, constant b) in tmp; returns its path."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [b])
    path = os.path.join(tmp, f"gemm{n}.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def numpy_gemm_ms(n, threads, iters):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", NUMPY_GEMM, str(n), str(iters)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def build_runner(tmp):
    runner = os.path.join(tmp, "run_model")
    subprocess.run(["cc", "-std=c99", "-O2", "-I", os.path.join(ROOT, "crates/runtime/c"),
                    os.path.join(ROOT, "examples/c/run_model.c"), "-o", runner, "-ldl"],
                   check=True)
    return runner


def aot_bench(kiln, runner, tmp, model, data_dir, threads, iters):
    """Median and min ms of the AOT library of `model`, run through the C runner."""
    name = os.path.basename(model)[:-5]
    lib = os.path.join(tmp, f"lib{name}.so")
    if not os.path.exists(lib):
        subprocess.run([kiln, "compile", model, "-o", lib], check=True, capture_output=True)
    inputs = []
    for i in range(len(glob.glob(os.path.join(data_dir, "input_*.pb")))):
        t = onnx.TensorProto()
        with open(os.path.join(data_dir, f"input_{i}.pb"), "rb") as f:
            t.ParseFromString(f.read())
        path = os.path.join(tmp, f"{name}_input_{i}.bin")
        np.ascontiguousarray(numpy_helper.to_array(t)).tofile(path)
        inputs.append(path)
    env = dict(os.environ, KILN_NUM_THREADS=str(threads), KILN_BENCH_ITERS=str(iters))
    out = subprocess.run([runner, lib, tmp] + inputs, check=True, capture_output=True, text=True,
                         env=env).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["median_ms"], r["min_ms"], os.path.getsize(lib)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=default_models_dir())
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1,
                    help="Kiln/onnxruntime pairs per model (medians reported)")
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--aot", action="store_true",
                    help="also time the AOT shared library (needs cc)")
    ap.add_argument("--tuning-logs", metavar="DIR",
                    help="also time models that have DIR/NAME.jsonl with that tuning log")
    ap.add_argument("--gemm", type=int, metavar="N",
                    help="also time an N x N x N f32 matmul against numpy (OpenBLAS)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="kiln-bench-")
    runner = build_runner(tmp) if args.aot else None
    models = sorted(glob.glob(os.path.join(args.models, "*.onnx")))
    if not models:
        sys.exit(f"no *.onnx in {args.models}")
    rows = []
    for model in models:
        name = os.path.basename(model)[:-5]
        data = os.path.join(args.models, f"{name}_data")
        for threads in [int(t) for t in args.threads.split(",")]:
            pairs = []
            for _ in range(max(1, args.rounds)):
                k = kiln_bench(args.kiln, model, threads, args.iters)
                o_med, _ = ort_median_ms(model, data, threads, args.iters)
                pairs.append((k["median_ms"], o_med))
            k_med = statistics.median(p[0] for p in pairs)
            o_med = statistics.median(p[1] for p in pairs)
            ratio = statistics.median(p[0] / p[1] for p in pairs)
            row = [name, threads, k_med, o_med, ratio, k["compile_ms"], k["arena_bytes"]]
            if args.aot:
                a_med, _, size = aot_bench(args.kiln, runner, tmp, model, data, threads,
                                           args.iters)
                row += [a_med, a_med / k_med, size]
            if args.tuning_logs:
                log = os.path.join(args.tuning_logs, f"{name}.jsonl")
                if os.path.exists(log):
                    t = kiln_bench(args.kiln, model, threads, args.iters, log)
                    row += [t["median_ms"], t["median_ms"] / k_med,
                            t["median_ms"] / o_med]
                else:
                    row += [None, None, None]
            rows.append(row)
    header = ["model", "threads", "kiln ms", "ort ms", "kiln/ort", "compile ms", "arena bytes"]
    if args.aot:
        header += ["aot ms", "aot/jit", ".so bytes"]
    if args.tuning_logs:
        header += ["tuned ms", "tuned/untuned", "tuned/ort"]
    def cells(r):
        out = [r[0], str(r[1]), f"{r[2]:.3f}", f"{r[3]:.3f}", f"{r[4]:.2f}", f"{r[5]:.0f}",
               str(r[6])]
        rest = r[7:]
        if args.aot:
            out += [f"{rest[0]:.3f}", f"{rest[1]:.2f}", str(rest[2])]
            rest = rest[3:]
        if args.tuning_logs:
            out += ["-" if v is None else f"{v:.3f}" if i == 0 else f"{v:.2f}"
                    for i, v in enumerate(rest[:3])]
        return out
    if args.gemm:
        n = args.gemm
        model = gemm_model(tmp, n)
        flops = 2.0 * n ** 3
        print(f"\nf32 GEMM {n}x{n}x{n} (kiln: one MatMul with constant B; numpy: a @ b)")
        print("| threads | kiln ms | numpy ms | kiln GFLOP/s | numpy GFLOP/s | numpy/kiln |")
        print("|---|---|---|---|---|---|")
        for threads in [int(t) for t in args.threads.split(",")]:
            k = kiln_bench(args.kiln, model, threads, args.iters)["median_ms"]
            npms = numpy_gemm_ms(n, threads, args.iters)
            print(f"| {threads} | {k:.3f} | {npms:.3f} | {flops / k / 1e6:.1f} | "
                  f"{flops / npms / 1e6:.1f} | {npms / k:.2f} |")
        print()
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(cells(r)) + " |")
    else:
        widths = [20] + [max(len(h), 9) for h in header[1:]]
        print(" ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths))))
        for r in rows:
            print(" ".join(c.rjust(w) if i else c.ljust(w)
                           for i, (c, w) in enumerate(zip(cells(r), widths))))


if __name__ == "__main__":
    main()
