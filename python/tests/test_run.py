"""Compiled models from Python: results against the reference outputs and onnxruntime, inputs
given every accepted way, and the errors of inputs that do not fit."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import kiln
from conftest import BUNDLED, MODELS, model_data


def assert_close(got: np.ndarray, expected: np.ndarray, what: str, atol: float = 1e-4) -> None:
    assert got.dtype == expected.dtype, what
    assert got.shape == expected.shape, what
    if np.issubdtype(got.dtype, np.floating):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=atol, err_msg=what)
    else:
        np.testing.assert_array_equal(got, expected, err_msg=what)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_models_match_their_reference_outputs_and_onnxruntime(name: str) -> None:
    path = MODELS / f"{name}.onnx"
    model = kiln.compile(path, threads=1)
    inputs = model_data(name, "input")
    expected = model_data(name, "output")
    feeds = {info.name: x for info, x in zip(model.inputs, inputs)}
    got = model.run(feeds)
    assert [o.name for o in model.outputs] == list(got)
    assert len(got) == len(expected)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, feeds)
    # onnxruntime's own int8 kernels round differently on different ISAs (on an AVX2 machine
    # without VNNI it is one quantisation step, 1/255 here, from its reference file on
    # qdq_mix_int8): against the onnxruntime running here, int8 models agree within one step.
    ort_atol = 1.0 / 255 + 1e-6 if "int8" in name else 1e-4
    for j, (g, e, o) in enumerate(zip(got.values(), expected, ort_out)):
        assert_close(g, e, f"{name} output {j} vs its reference")
        assert_close(g, o, f"{name} output {j} vs onnxruntime", atol=ort_atol)


def test_a_model_given_as_bytes_or_a_model_proto_runs_as_from_its_file() -> None:
    path = MODELS / "dscnn_kws.onnx"
    (x,) = model_data("dscnn_kws", "input")
    from_file = kiln.compile(path, threads=1).run([x])
    from_bytes = kiln.compile(path.read_bytes(), threads=1).run([x])
    from_proto = kiln.compile(onnx.load(str(path)), threads=1).run([x])
    for a, b, c in zip(from_file.values(), from_bytes.values(), from_proto.values()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_inputs_are_accepted_by_name_position_keyword_and_alone() -> None:
    model = kiln.compile(MODELS / "dscnn_kws.onnx", threads=1)
    (info,) = model.inputs
    assert isinstance(info.dtype, np.dtype) and info.dtype == np.float32
    (x,) = model_data("dscnn_kws", "input")
    ways = [
        model.run({info.name: x}),
        model.run([x]),
        model.run(x),
        model(x),
        model.run(**{info.name: x}) if info.name.isidentifier() else model.run([x]),
    ]
    for w in ways[1:]:
        for a, b in zip(ways[0].values(), w.values()):
            np.testing.assert_array_equal(a, b)
    # A non-contiguous view is read correctly (copied once), and a list converts.
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), np.float32)
    wide[..., ::2] = x
    strided = model.run(wide[..., ::2])
    np.testing.assert_array_equal(list(strided.values())[0], list(ways[0].values())[0])
    listed = model.run([x.tolist()])
    np.testing.assert_array_equal(list(listed.values())[0], list(ways[0].values())[0])


def test_inputs_that_do_not_fit_are_clear_errors() -> None:
    model = kiln.compile(MODELS / "dscnn_kws.onnx", threads=1)
    (info,) = model.inputs
    (x,) = model_data("dscnn_kws", "input")
    with pytest.raises(kiln.DTypeError, match="must be float32, got float64"):
        model.run(x.astype(np.float64))
    with pytest.raises(TypeError):  # DTypeError is a TypeError too
        model.run(x.astype(np.int32))
    with pytest.raises(kiln.DTypeError):
        model.run(x.astype(">f4"))  # big-endian: not the layout compiled code reads
    with pytest.raises(kiln.ShapeError, match="must have shape"):
        model.run(x.reshape(-1))
    with pytest.raises(ValueError):  # InputError is a ValueError too
        model.run(np.concatenate([x, x]))
    with pytest.raises(kiln.InputError, match="no input named 'nope'"):
        model.run({"nope": x})
    with pytest.raises(kiln.InputError, match="missing"):
        model.run({})
    with pytest.raises(kiln.InputError, match="1 input"):
        model.run([x, x])
    with pytest.raises(kiln.DTypeError):
        model.run([["not", "numbers"]])


def test_two_threads_running_one_model_get_the_results_of_one() -> None:
    model = kiln.compile(MODELS / "resnet8_cifar.onnx", threads=2)
    rng = np.random.default_rng(7)
    shape = model.inputs[0].shape
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    alone = [list(model.run(x).values())[0] for x in xs]
    results: dict = {}
    errors: list = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                j = (i + k) % len(xs)
                results.setdefault(k, []).append((j, list(model.run(xs[j]).values())[0]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(2):
        assert len(results[k]) == 20
        for j, out in results[k]:
            np.testing.assert_array_equal(out, alone[j])


def test_outputs_with_data_dependent_rows_are_cut_to_their_rows() -> None:
    model = kiln.compile(MODELS / "detection_tail.onnx", threads=1)
    inputs = model_data("detection_tail", "input")
    expected = model_data("detection_tail", "output")
    got = list(model.run(inputs).values())
    assert len(got) == len(model.outputs) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape


def test_model_metadata() -> None:
    model = kiln.compile(MODELS / "decoder_block.onnx", threads=1)
    assert len(model.inputs) == 2 and len(model.outputs) == 3
    assert all(isinstance(i, kiln.TensorInfo) for i in model.inputs + model.outputs)
    assert model.target and model.threads == 1
    assert model.stats["kernels"] > 0 and model.stats["arena_bytes"] >= 0
    assert "kiln.CompiledModel" in repr(model)


def test_compiling_prints_nothing_and_logs_its_notes(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="kiln"):
        model = kiln.compile(MODELS / "dscnn_kws.onnx", threads=1)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert [r.getMessage() for r in caplog.records if r.name == "kiln"] == list(model.notes)
