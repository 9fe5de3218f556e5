#!/usr/bin/env bash
# The Python package's tests: builds the kiln wheel (maturin, abi3, release) into a fresh
# virtual environment (target/python-venv, or $KILN_PYTHON_VENV) and runs python/tests there,
# against the repository's bundled models and onnxruntime, after a strict mypy check of the
# package's annotations and stubs.
set -euo pipefail
cd "$(dirname "$0")"
venv=$(realpath -m "${KILN_PYTHON_VENV:-../target/python-venv}")
rm -rf "$venv"
if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 without python3-venv: virtualenv does the same from pip.
    rm -rf "$venv"
    python3 -m pip install --quiet virtualenv
    python3 -m virtualenv --quiet "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet pytest mypy onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6
"$venv/bin/python" -m pip install --quiet .
# The annotations and the extension's stubs (kiln/_native.pyi) type-check strictly.
"$venv/bin/python" -m mypy --strict --ignore-missing-imports kiln
cd tests
"$venv/bin/python" -m pytest -q
