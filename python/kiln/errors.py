"""The exceptions Kiln raises. Every one is a :class:`KilnError` carrying Kiln's message.

::

    KilnError
    ├── ModelImportError        the model cannot be read or imported
    │   └── UnsupportedOpError  an op Kiln cannot compile (``op_type``, ``node``)
    ├── CompileError            lowering, code generation, linking, an unknown target
    ├── InputError (ValueError) inputs of a run that do not fit the model
    │   ├── ShapeError          an input of the wrong shape
    │   └── DTypeError (TypeError)  an input of the wrong dtype
    ├── ExecutionError          compiled code failed while running
    └── TuneError               tuning or prediction failed
"""

from __future__ import annotations


class KilnError(Exception):
    """Base class of every error Kiln raises."""


class ModelImportError(KilnError):
    """The ONNX model cannot be read, decoded or imported."""


class UnsupportedOpError(ModelImportError):
    """The model uses an op (or an op configuration) Kiln cannot compile.

    ``op_type`` and ``node`` name the ONNX op and the node that uses it.
    """

    op_type: str = ""
    node: str = ""


class CompileError(KilnError):
    """Compilation failed (lowering, code generation, linking), or the target is unknown."""


class InputError(KilnError, ValueError):
    """The inputs given to a run do not fit the model (missing, extra, wrong count)."""


class ShapeError(InputError):
    """An input has a shape other than the model's."""


class DTypeError(InputError, TypeError):
    """An input has a dtype other than the model's."""


class ExecutionError(KilnError):
    """Compiled code reported an error while running (e.g. an integer division by zero)."""


class TuneError(KilnError):
    """Tuning or latency prediction failed."""


__all__ = [
    "KilnError",
    "ModelImportError",
    "UnsupportedOpError",
    "CompileError",
    "InputError",
    "ShapeError",
    "DTypeError",
    "ExecutionError",
    "TuneError",
]
