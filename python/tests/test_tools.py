"""The compiler's other entry points from Python: AOT libraries, targets, prediction, tuning."""

from __future__ import annotations

import ctypes
import json
import pathlib

import numpy as np
import pytest

import kiln
from conftest import MODELS, model_data


def test_targets_list_the_host_and_aarch64() -> None:
    targets = kiln.targets()
    names = [t.name for t in targets]
    assert "host" in names or any(t.native for t in targets)
    assert any(t.triple and t.triple.startswith("aarch64") for t in targets)


def test_a_library_with_a_prefix_runs_through_its_c_abi(tmp_path: pathlib.Path) -> None:
    lib_path = tmp_path / "libkws.so"
    header = tmp_path / "kws.h"
    info = kiln.compile_library(MODELS / "dscnn_kws.onnx", lib_path, header=header, prefix="kws")
    assert pathlib.Path(info.path) == lib_path and info.library_bytes > 0 and info.kernels > 0
    assert "kws_model_run(" in header.read_text()
    lib = ctypes.CDLL(str(lib_path))
    assert not hasattr(lib, "kiln_model_run")
    ctx = ctypes.c_void_p()
    assert lib.kws_model_create(1, ctypes.byref(ctx)) == 0
    (x,) = model_data("dscnn_kws", "input")
    (expected,) = model_data("dscnn_kws", "output")
    out = np.empty_like(expected)
    ins = (ctypes.c_void_p * 1)(x.ctypes.data)
    outs = (ctypes.c_void_p * 1)(out.ctypes.data)
    assert lib.kws_model_run(ctx, ins, outs) == 0
    lib.kws_model_destroy(ctx)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4)


def test_predict_sums_its_kernels() -> None:
    p = kiln.predict(MODELS / "dscnn_kws.onnx", threads=1)
    assert p.total_ms > 0 and p.threads == 1
    assert p.kernels and all(k.schedule in ("tuned", "default") for k in p.kernels)
    assert abs(sum(k.ms * k.weight for k in p.kernels) - p.total_ms) < 1e-6 * max(1.0, p.total_ms)


def test_tuning_reports_progress_and_its_log_compiles(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "kws.jsonl"
    seen = []
    result = kiln.tune(
        MODELS / "dscnn_kws.onnx",
        trials=6,
        log=log,
        batch=3,
        repeat_ms=1.0,
        confirm=0,
        progress=seen.append,
    )
    assert seen and seen[-1].trials == result.trials == 6
    assert all(isinstance(p, kiln.TuneProgress) for p in seen)
    assert result.errors == 0
    assert any(t.best_ms is not None and t.trials > 0 for t in result.tasks)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) > 6
    model = kiln.compile(MODELS / "dscnn_kws.onnx", threads=1, tuning_log=log)
    assert any("tuned schedule(s)" in n for n in model.notes), model.notes
    (x,) = model_data("dscnn_kws", "input")
    (expected,) = model_data("dscnn_kws", "output")
    np.testing.assert_allclose(list(model.run(x).values())[0], expected, rtol=1e-3, atol=1e-4)
    # A log with records is not overwritten.
    with pytest.raises(kiln.KilnError, match="--resume|resume"):
        kiln.tune(MODELS / "dscnn_kws.onnx", trials=2, log=log)


def test_an_exception_in_the_progress_callback_is_raised_after_the_run(tmp_path: pathlib.Path) -> None:
    def fail(_: kiln.TuneProgress) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        kiln.tune(MODELS / "dscnn_kws.onnx", trials=2, log=tmp_path / "l.jsonl", batch=2,
                  repeat_ms=1.0, confirm=0, progress=fail)
    assert (tmp_path / "l.jsonl").stat().st_size > 0


def test_remote_tuning_arguments_and_an_unreachable_tracker_are_clear_errors(
    tmp_path: pathlib.Path,
) -> None:
    model = MODELS / "dscnn_kws.onnx"
    with pytest.raises(ValueError, match="key_file"):
        kiln.tune(model, log=tmp_path / "a.jsonl", tracker="127.0.0.1:9", device_key="rpi4")
    with pytest.raises(ValueError, match="device_key"):
        kiln.tune(model, log=tmp_path / "a.jsonl", tracker="127.0.0.1:9", key_file="k")
    key = tmp_path / "agent.key"
    key.write_text("c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0xMjM0NTY=\n")
    key.chmod(0o600)
    with pytest.raises(kiln.TuneError, match="127.0.0.1:9"):
        kiln.tune(model, trials=2, log=tmp_path / "b.jsonl", tracker="127.0.0.1:9",
                  device_key="rpi4", key_file=key)
