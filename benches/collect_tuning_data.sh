#!/usr/bin/env bash
# Tuning logs for the latency model: tunes each model for each device of this machine (a
# target and a thread count) and writes one log per (model, target, threads) under OUT.
#
#   benches/collect_tuning_data.sh OUT TRIALS MODEL.onnx...
#
# Devices: KILN_TARGETS (default: the x86-64 targets that run here) x KILN_THREADS (default
# "1 2"). Existing logs are continued (--resume), so a killed run picks up where it stopped.
# KILN_EXPORT_PRETUNED=DIR also adds each run's records that win inside the model to DIR.
# Each run's full output is kept in LOG.out.
# Then: kiln cost-model train --log OUT/*.jsonl --model MODEL.onnx... -o cost-model.json
set -euo pipefail
out=$1 trials=$2
shift 2
kiln=${KILN:-target/release/kiln}
mkdir -p "$out"
targets=${KILN_TARGETS:-}
if [ -z "$targets" ]; then
    targets="x86_64-linux-gnu x86_64-linux-gnu-avx2"
    grep -qw avx512f /proc/cpuinfo && targets="$targets x86_64-linux-gnu-avx512"
fi
for model in "$@"; do
    name=$(basename "$model" .onnx)
    for target in $targets; do
        for threads in ${KILN_THREADS:-1 2}; do
            log="$out/$name.$target.${threads}t.jsonl"
            echo "== $name $target ${threads}t"
            "$kiln" tune "$model" --target "$target" --threads "$threads" --trials "$trials" \
                --batch "${KILN_BATCH:-8}" --repeat-ms "${KILN_REPEAT_MS:-5}" --log "$log" --resume \
                ${KILN_EXPORT_PRETUNED:+--export-pretuned "$KILN_EXPORT_PRETUNED"} \
                > "$log.out" 2>&1
            grep -E "kernels summed|pre-tuned:" "$log.out" || tail -n 2 "$log.out"
        done
    done
done
