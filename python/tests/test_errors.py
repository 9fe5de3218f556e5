"""Bad models and bad arguments are exceptions of kiln.errors carrying Kiln's message."""

from __future__ import annotations

import pytest

import kiln
from conftest import MODELS

MALFORMED = MODELS.parent / "malformed"


def test_an_unsupported_op_names_the_op_and_the_node() -> None:
    with pytest.raises(kiln.UnsupportedOpError) as e:
        kiln.compile(MALFORMED / "unknown_op.onnx")
    assert e.value.op_type and e.value.node
    assert e.value.op_type in str(e.value)
    assert isinstance(e.value, kiln.ModelImportError)


@pytest.mark.parametrize(
    "name", ["garbage", "truncated", "empty", "mismatched_shapes", "cycle", "wrong_arity"]
)
def test_a_malformed_model_is_an_import_error(name: str) -> None:
    with pytest.raises(kiln.ModelImportError):
        kiln.compile(MALFORMED / f"{name}.onnx")


def test_garbage_bytes_and_missing_files_are_import_errors() -> None:
    with pytest.raises(kiln.ModelImportError, match="malformed ONNX"):
        kiln.compile(b"\x08\x01garbage")
    with pytest.raises(kiln.ModelImportError, match="(?i)no such file"):
        kiln.compile(MODELS / "no_such_model.onnx")
    with pytest.raises(TypeError):
        kiln.compile(42)


def test_bad_arguments() -> None:
    path = MODELS / "dscnn_kws.onnx"
    with pytest.raises(kiln.CompileError, match="unknown target|no-such-target"):
        kiln.compile(path, target="no-such-target")
    with pytest.raises(ValueError, match="threads"):
        kiln.compile(path, threads=0)
    with pytest.raises(ValueError, match="layout"):
        kiln.compile(path, layout="chw")
    with pytest.raises(kiln.KilnError):
        kiln.compile(path, tuning_log=MODELS / "no_such_log.jsonl")
    with pytest.raises(kiln.CompileError, match="C identifier"):
        kiln.compile_library(path, "/tmp/kiln-never-written.so", prefix="not-an-identifier")
