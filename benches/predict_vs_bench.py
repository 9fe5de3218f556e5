#!/usr/bin/env python3
"""Predicted (`kiln predict`) against measured (`kiln bench`) whole-model latency.

    benches/predict_vs_bench.py [--kiln target/release/kiln] [--threads 1] [--target host]
        [--cost-model FILE] [--tuning-log FILE] MODEL.onnx...

Prints a markdown table (predicted ms, measured median ms, predicted/measured) and the share of
models within +-10% and the Spearman correlation of the two rankings. Both numbers come from
this machine in one run; the bench is `--iters` timed runs after warm-up.
"""
import argparse, json, subprocess, sys


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    for pos, i in enumerate(order):
        r[i] = pos + 1.0
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va and vb else 0.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", default="target/release/kiln")
    p.add_argument("--threads", default="1")
    p.add_argument("--target", default="host")
    p.add_argument("--iters", default="30")
    p.add_argument("--cost-model")
    p.add_argument("--tuning-log")
    p.add_argument("models", nargs="+")
    a = p.parse_args()
    common = ["--target", a.target, "--threads", a.threads]
    if a.tuning_log:
        common += ["--tuning-log", a.tuning_log]
    rows = []
    for m in a.models:
        pred = [a.kiln, "predict", m, "--json"] + common
        if a.cost_model:
            pred += ["--cost-model", a.cost_model]
        predicted = json.loads(subprocess.run(pred, check=True, capture_output=True, text=True).stdout)["total_ms"]
        bench = [a.kiln, "bench", m, "--json", "--iters", a.iters] + common
        measured = json.loads(subprocess.run(bench, check=True, capture_output=True, text=True).stdout)["median_ms"]
        rows.append((m.rsplit("/", 1)[-1], predicted, measured))
    print("| model | predicted ms | measured ms | predicted / measured |")
    print("|---|---:|---:|---:|")
    for name, pr, me in rows:
        print(f"| {name} | {pr:.3f} | {me:.3f} | {pr / me:.3f} |")
    within = sum(1 for _, pr, me in rows if abs(pr / me - 1) <= 0.10)
    rho = spearman([r[1] for r in rows], [r[2] for r in rows])
    print(f"\nwithin +-10%: {within} of {len(rows)}; Spearman of the rankings: {rho:.3f}")


if __name__ == "__main__":
    sys.exit(main())
