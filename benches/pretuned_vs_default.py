#!/usr/bin/env python3
"""The shipped pre-tuned records against default schedules, side by side on this machine.

    benches/pretuned_vs_default.py [--kiln target/release/kiln] [--threads 1,2] [--rounds 5]
        [--iters 50] [--target host] MODEL.onnx...

For each model and thread count, `kiln bench --json` runs alternately with the pre-tuned
records (the default) and with `--no-pretuned`, `--rounds` times each; prints the medians of
the rounds' medians and the speedup as a markdown table.
"""
import argparse, json, statistics, subprocess, sys


def bench(kiln, model, target, threads, iters, extra):
    cmd = [kiln, "bench", model, "--json", "--target", target, "--threads", threads, "--iters", iters]
    cmd += extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["median_ms"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", default="target/release/kiln")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--target", default="host")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", default="50")
    p.add_argument("models", nargs="+")
    a = p.parse_args()
    print("| model | threads | pre-tuned ms | default ms | speedup |")
    print("|---|---:|---:|---:|---:|")
    for m in a.models:
        for t in a.threads.split(","):
            tuned, plain = [], []
            for _ in range(a.rounds):
                tuned.append(bench(a.kiln, m, a.target, t, a.iters, []))
                plain.append(bench(a.kiln, m, a.target, t, a.iters, ["--no-pretuned"]))
            mt, mp = statistics.median(tuned), statistics.median(plain)
            name = m.rsplit("/", 1)[-1]
            print(f"| {name} | {t} | {mt:.4f} | {mp:.4f} | {mp / mt:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
