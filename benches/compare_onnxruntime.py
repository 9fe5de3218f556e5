#!/usr/bin/env python3
"""End-to-end latency of Kiln against onnxruntime, side by side in one run on this machine.

For every model (default: the five in ../shared/models, else the bundled ones in tests/models) and
thread count, it runs `kiln bench MODEL --threads T --iters N --json` and onnxruntime's
InferenceSession with intra_op_num_threads=T on the same input, alternating the two per model so
that machine noise hits both alike, and prints the median latencies and the ratio kiln/onnxruntime
(lower is better for Kiln). Nothing here asserts a timing: the numbers are for reading.

Usage: python3 benches/compare_onnxruntime.py [--models DIR] [--threads 1,2] [--iters 50]
                                              [--kiln PATH] [--markdown]
Needs: pip install onnxruntime numpy onnx; a release build of kiln (cargo build --release -p kiln-cli).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
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


def kiln_bench(kiln, model, threads, iters):
    out = subprocess.run(
        [kiln, "bench", model, "--threads", str(threads), "--iters", str(iters), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=default_models_dir())
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()
    models = sorted(glob.glob(os.path.join(args.models, "*.onnx")))
    if not models:
        sys.exit(f"no *.onnx in {args.models}")
    rows = []
    for model in models:
        name = os.path.basename(model)[:-5]
        data = os.path.join(args.models, f"{name}_data")
        for threads in [int(t) for t in args.threads.split(",")]:
            k = kiln_bench(args.kiln, model, threads, args.iters)
            o_med, _ = ort_median_ms(model, data, threads, args.iters)
            rows.append((name, threads, k["median_ms"], o_med, k["median_ms"] / o_med,
                         k["compile_ms"], k["arena_bytes"]))
    header = ("model", "threads", "kiln ms", "ort ms", "kiln/ort", "compile ms", "arena bytes")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.0f} | {r[6]} |")
    else:
        print("{:<20} {:>7} {:>10} {:>10} {:>9} {:>11} {:>12}".format(*header))
        for r in rows:
            print(f"{r[0]:<20} {r[1]:>7} {r[2]:>10.3f} {r[3]:>10.3f} {r[4]:>9.2f} {r[5]:>11.0f} {r[6]:>12}")


if __name__ == "__main__":
    main()
