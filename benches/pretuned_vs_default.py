#!/usr/bin/env python3
"""The shipped pre-tuned records against default schedules, side by side on this machine.

    benches/pretuned_vs_default.py [--kiln target/release/kiln] [--threads 1,2] [--rounds 5]
        [--iters 50] [--target host] MODEL.onnx...

For each model and thread count, `kiln bench --json` runs alternately with the pre-tuned
records (the default) and with `--no-pretuned`, `--rounds` times each; prints, as a markdown
table, how many kernels took a record, the median of the rounds' medians and the smallest of
their minima, and the speedups by both. On a shared machine the median of a sub-millisecond
model moves by 10-30% between runs of the same code (a neighbour's load); the minimum moves
far less, so read a small difference by it.
"""
import argparse, json, statistics, subprocess, sys


def bench(kiln, model, target, threads, iters, extra):
    cmd = [kiln, "bench", model, "--json", "--target", target, "--threads", threads, "--iters", iters]
    cmd += extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    return r["median_ms"], r["min_ms"], r.get("tuned_kernels", 0), r.get("kernels", 0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", default="target/release/kiln")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--target", default="host")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", default="50")
    p.add_argument("models", nargs="+")
    a = p.parse_args()
    print("| model | threads | kernels with a record | pre-tuned median / min ms "
          "| default median / min ms | speedup by median | by min |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in a.models:
        for t in a.threads.split(","):
            tuned, plain = [], []
            for _ in range(a.rounds):
                tuned.append(bench(a.kiln, m, a.target, t, a.iters, []))
                plain.append(bench(a.kiln, m, a.target, t, a.iters, ["--no-pretuned"]))
            mt, mp = (statistics.median(r[0] for r in runs) for runs in (tuned, plain))
            nt, np_ = (min(r[1] for r in runs) for runs in (tuned, plain))
            name = m.rsplit("/", 1)[-1]
            print(f"| {name} | {t} | {tuned[0][2]} of {tuned[0][3]} | {mt:.4f} / {nt:.4f} "
                  f"| {mp:.4f} / {np_:.4f} | {mp / mt:.2f}x | {np_ / nt:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
