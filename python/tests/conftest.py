"""Shared fixtures: the bundled models of the repository (tests/models) and their test data."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

REPO = pathlib.Path(__file__).resolve().parents[2]
MODELS = REPO / "tests" / "models"

# The bundled models (tests/models/NAME.onnx with NAME_data/input_N.pb and output_N.pb).
BUNDLED = [
    "resnet8_cifar",
    "dscnn_kws",
    "resnet8_cifar_int8",
    "qdq_mix_int8",
    "decoder_block",
    "detection_tail",
]


def read_pb(path: pathlib.Path) -> np.ndarray:
    t = TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def model_data(name: str, prefix: str) -> list:
    folder = MODELS / f"{name}_data"
    return [read_pb(p) for p in sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))]


@pytest.fixture(scope="session")
def models() -> pathlib.Path:
    return MODELS
