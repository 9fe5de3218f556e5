#!/bin/sh
# Re-runs the checks behind docs/onnxruntime-int8-numerics.md: the executable spec (ref.py) against
# onnxruntime on the bundled int8 model, on ../shared/models-int8 when present, and on single
# kernels. Needs gcc, python3, onnx, onnxruntime 1.32 and numpy; run from anywhere.
set -e
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
shared=${KILN_SHARED:-$repo/../shared}
mkdir -p "${TMPDIR:-/tmp}/kiln_ort_int8"
cd "$here"
gcc -O2 -ffp-contract=off -shared -fPIC -o libfhelper.so fhelper.c -lm
m=$repo/tests/models/resnet8_cifar_int8
python3 verify_graph.py "$m.onnx" "${m}_data/input_0.pb" "${m}_data/output_0.pb"
if [ -f "$shared/models-int8/mobilenet_v2_int8.onnx" ]; then
  m=$shared/models-int8/mobilenet_v2_int8
  python3 verify_graph.py "$m.onnx" "${m}_data/input_0.pb" "${m}_data/output_0.pb"
  python3 predict_fusion.py "$repo/tests/models/resnet8_cifar_int8.onnx" "$m.onnx"
fi
python3 test_kernels.py
