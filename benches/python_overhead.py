#!/usr/bin/env python3
"""What the Python binding costs: `kiln.compile(MODEL).run` against `kiln bench` on the same
model, thread count and machine, in alternating rounds (the machine's drift hits both alike;
each round's order alternates too).

    python benches/python_overhead.py ../shared/models/mobilenet_v2.onnx --threads 1 \
        --kiln target/release/kiln --rounds 5 --iters 100

Prints each round's medians and the ratio of the medians of the rounds (Python / kiln bench).
Needs the `kiln` package installed (`pip install ./python`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

import numpy as np

import kiln


def python_median_ms(model: kiln.CompiledModel, feeds: dict, iters: int) -> float:
    for _ in range(5):
        model.run(feeds)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        model.run(feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench_median_ms(kiln_exe: str, model: str, threads: int, iters: int) -> float:
    out = subprocess.run(
        [kiln_exe, "bench", model, "--threads", str(threads), "--iters", str(iters), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out)["median_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=100)
    args = ap.parse_args()
    model = kiln.compile(args.model, threads=args.threads)
    rng = np.random.default_rng(0)
    feeds = {
        i.name: rng.uniform(-1, 1, i.shape).astype(i.dtype) for i in model.inputs
    }
    py, cli = [], []
    for r in range(args.rounds):
        # Which one goes first alternates, so neither always follows the other's load.
        if r % 2 == 0:
            cli.append(bench_median_ms(args.kiln, args.model, args.threads, args.iters))
            py.append(python_median_ms(model, feeds, args.iters))
        else:
            py.append(python_median_ms(model, feeds, args.iters))
            cli.append(bench_median_ms(args.kiln, args.model, args.threads, args.iters))
        print(f"round {r + 1}: kiln bench {cli[-1]:.3f} ms, python run {py[-1]:.3f} ms")
    a, b = statistics.median(py), statistics.median(cli)
    print(f"median of rounds: python {a:.3f} ms, kiln bench {b:.3f} ms, ratio {a / b:.3f}")


if __name__ == "__main__":
    main()
