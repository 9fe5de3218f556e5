#!/usr/bin/env python3
"""Tuning curves of several runs on one plot: the model's estimated latency (sum over its
tasks of weight x best measured time) against trials, one line per tuning log.

    benches/tuning_curves.py --out curves.svg --target T --threads N \
        MODEL.onnx LABEL=LOG.jsonl [LABEL=LOG.jsonl ...] [-- MODEL2.onnx LABEL=LOG ...]

Task weights come from `kiln predict --json` for the same target (the tasks a compile runs);
a curve starts once every task has a measurement. Prints, per run, the final estimate and the
first trial within 5% of a reference run's final estimate (the first run given).
"""
import argparse, json, subprocess, sys


def weights(kiln, model, target, threads, cost_model):
    cmd = [kiln, "predict", model, "--json", "--target", target, "--threads", threads]
    if cost_model:
        cmd += ["--cost-model", cost_model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {k["workload"]: k["weight"] for k in json.loads(out)["kernels"]}


def curve(log, w):
    best, points, trial = {}, [], 0
    for line in open(log):
        r = json.loads(line)
        if r.get("kind") != "measure":
            continue
        trial += 1
        if r["error"] is None and r["times_ms"] and r["workload"] in w:
            t = sorted(r["times_ms"])[len(r["times_ms"]) // 2]
            best[r["workload"]] = min(best.get(r["workload"], t), t)
        if len(best) == len(w):
            points.append((trial, sum(w[k] * best[k] for k in w)))
    return points


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", default="target/release/kiln")
    p.add_argument("--out", required=True)
    p.add_argument("--target", default="host")
    p.add_argument("--threads", default="1")
    p.add_argument("--cost-model", help="for kiln predict (default: the shipped one)")
    p.add_argument("runs", nargs="+")
    a = p.parse_args()
    groups, cur = [], None
    for item in a.runs:
        if item.endswith(".onnx"):
            cur = (item, [])
            groups.append(cur)
        elif item != "--":
            label, log = item.split("=", 1)
            cur[1].append((label, log))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, (model, runs) in zip(axes[0], groups):
        w = weights(a.kiln, model, a.target, a.threads, a.cost_model)
        name = model.rsplit("/", 1)[-1].removesuffix(".onnx")
        reference = None
        for label, log in runs:
            pts = curve(log, w)
            if not pts:
                print(f"{name} {label}: no trial measured every task")
                continue
            final = pts[-1][1]
            if reference is None:
                reference = final
            hit = next((t for t, v in pts if v <= reference * 1.05), None)
            print(f"{name} {label}: {pts[-1][0]} trials, final {final:.3f} ms "
                  f"({final / reference:.3f}x the reference); within 5% of the reference "
                  f"after {hit if hit else 'never'}")
            ax.plot([t for t, _ in pts], [v for _, v in pts], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("trials")
        ax.set_ylabel("estimated model latency (ms)")
        ax.set_title(f"{name}, {a.target}, {a.threads} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(a.out)
    print("wrote", a.out)


if __name__ == "__main__":
    sys.exit(main())
