"""Kiln from Python: compile ONNX models to native code for this CPU and run them on numpy arrays.

::

    import kiln, numpy as np
    model = kiln.compile("resnet8_cifar.onnx")          # a path, bytes or an onnx.ModelProto
    x = np.zeros(model.inputs[0].shape, np.float32)
    print(model.run({model.inputs[0].name: x}))          # {output name: ndarray}

``compile`` builds code for this machine (the JIT); ``compile_library`` writes a shared library
with a C ABI for any target (``targets()``), to link into a C or C++ program; ``tune`` searches
faster schedules on this machine or on remote devices, keeping every measurement in an
append-only log that later compiles read (``tuning_log=``); ``predict`` estimates a model's
latency without running it. Errors are the exceptions of :mod:`kiln.errors`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from .errors import (
    CompileError,
    DTypeError,
    ExecutionError,
    InputError,
    KilnError,
    ModelImportError,
    ShapeError,
    TuneError,
    UnsupportedOpError,
)

__version__: str = _native.__version__

#: Kiln's notes (which tuned schedules apply, what the importer assumed) are logged at INFO
#: level here: ``logging.basicConfig(level=logging.INFO)`` shows them.
logger = logging.getLogger("kiln")

#: What the functions take as a model: a path to an ``.onnx`` file, the model's protobuf bytes,
#: or an ``onnx.ModelProto``. External data (weights beside the file) needs the path.
ModelLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]


def _numpy_dtype(name: str) -> Union["np.dtype[Any]", str]:
    """The numpy dtype of a Kiln dtype name; ``bfloat16`` through ml_dtypes when installed."""
    if name == "bfloat16":
        try:
            import ml_dtypes

            bfloat16: "np.dtype[Any]" = np.dtype(ml_dtypes.bfloat16)
            return bfloat16
        except ImportError:
            return "bfloat16"
    return np.dtype(name)


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of a compiled model."""

    name: str
    #: A numpy dtype (the string ``"bfloat16"`` when ml_dtypes is not installed).
    dtype: Union[np.dtype, str]
    shape: Tuple[int, ...]


def _source(model: ModelLike) -> Union[str, bytes]:
    if isinstance(model, bytes):
        return model
    if isinstance(model, (bytearray, memoryview)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    serialize = getattr(model, "SerializeToString", None)
    if callable(serialize):
        data = serialize()
        if isinstance(data, bytes):
            return data
    raise TypeError(
        f"a model is a path, bytes or an onnx.ModelProto, not {type(model).__name__}"
    )


@contextlib.contextmanager
def _model_path(model: ModelLike) -> Iterator[str]:
    """A path to the model: its own, or a temporary file holding its bytes."""
    source = _source(model)
    if isinstance(source, str):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="kiln-") as d:
        path = os.path.join(d, "model.onnx")
        with open(path, "wb") as f:
            f.write(source)
        yield path


def _shapes(
    input_shapes: Optional[Mapping[str, Sequence[int]]],
) -> Optional[Dict[str, List[int]]]:
    if input_shapes is None:
        return None
    return {str(k): [int(d) for d in v] for k, v in input_shapes.items()}


def _path(p: Optional[Union[str, "os.PathLike[str]"]]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def _compile_args(
    tuning_log: Optional[Union[str, "os.PathLike[str]"]],
    input_shapes: Optional[Mapping[str, Sequence[int]]],
    pretuned: bool,
    rewrite: bool,
    layout: str,
    int8_numerics: str,
) -> _native._CompileArgs:
    """The import and graph options of :func:`compile` and :func:`compile_library`."""
    return {
        "tuning_log": _path(tuning_log),
        "input_shapes": _shapes(input_shapes),
        "pretuned": pretuned,
        "rewrite": rewrite,
        "layout": layout,
        "int8_numerics": int8_numerics,
    }


class CompiledModel:
    """A model compiled to native code for this machine. Create it with :func:`compile`.

    ``run`` may be called from several threads at once: each call releases the GIL and runs on
    its own working memory.
    """

    def __init__(self, native: "_native.CompiledModel") -> None:
        self._native = native
        self._inputs = tuple(
            TensorInfo(n, _numpy_dtype(d), tuple(s)) for n, d, s in native.inputs
        )
        graph_outputs = native.graph_outputs
        self._graph_outputs = tuple(
            TensorInfo(n or f"output_{i}", _numpy_dtype(d), tuple(s))
            for i, (n, d, s) in enumerate(graph_outputs)
        )
        self._row_counts = tuple(native.row_counts)
        counts = {r for _, r in self._row_counts}
        # The graph outputs that are ONNX outputs (not row counts), by index.
        self._onnx_outputs = tuple(
            i for i in range(len(self._graph_outputs)) if i not in counts
        )
        self._outputs = tuple(self._graph_outputs[i] for i in self._onnx_outputs)
        self._input_index = {t.name: i for i, t in enumerate(self._inputs)}

    @property
    def inputs(self) -> Tuple[TensorInfo, ...]:
        """The model's inputs, in order."""
        return self._inputs

    @property
    def outputs(self) -> Tuple[TensorInfo, ...]:
        """The model's outputs, in order. An output whose number of rows depends on the data
        (after NonMaxSuppression) is declared with its largest row count; ``run`` returns only
        the rows computed."""
        return self._outputs

    @property
    def target(self) -> str:
        """The target the code was compiled for."""
        return self._native.target

    @property
    def threads(self) -> int:
        """Threads a run uses."""
        return self._native.threads

    @property
    def notes(self) -> Tuple[str, ...]:
        """What the compilation had to tell: the importer's assumptions (e.g. a symbolic
        dimension bound to 1) and which tuned schedules apply. Also logged at INFO level on
        the ``kiln`` logger."""
        return tuple(self._native.notes)

    @property
    def stats(self) -> Dict[str, Union[int, float]]:
        """Kernels, tuned kernels, working memory (``arena_bytes``) and compile time."""
        return dict(self._native.stats)

    def __repr__(self) -> str:
        def sig(ts: Tuple[TensorInfo, ...]) -> str:
            return ", ".join(f"{t.name}: {t.dtype}{list(t.shape)}" for t in ts)

        return (
            f"<kiln.CompiledModel ({sig(self._inputs)}) -> ({sig(self._outputs)}) "
            f"for {self.target}, {self.threads} thread(s)>"
        )

    def _bind(self, feeds: Any, named: Mapping[str, Any]) -> List[Any]:
        """One array per input, in order, from a mapping, a sequence, one array, or keywords."""
        n = len(self._inputs)
        if feeds is None:
            feeds = {}
        if isinstance(feeds, np.ndarray) or np.isscalar(feeds):
            feeds = [feeds]
        if isinstance(feeds, Mapping):
            feeds = {**feeds, **named}
            unknown = [k for k in feeds if k not in self._input_index]
            if unknown:
                raise InputError(
                    f"the model has no input named {unknown[0]!r} "
                    f"(its inputs: {[t.name for t in self._inputs]})"
                )
            missing = [t.name for t in self._inputs if t.name not in feeds]
            if missing:
                raise InputError(f"input {missing[0]!r} is missing")
            return [feeds[t.name] for t in self._inputs]
        if named:
            raise InputError("give the inputs either positionally or by name, not both")
        given: List[Any] = list(feeds)
        if len(given) != n:
            raise InputError(f"the model has {n} input(s) but {len(given)} were given")
        return given

    def run(self, feeds: Any = None, /, **named: Any) -> Dict[str, np.ndarray]:
        """Runs the model; returns ``{output name: ndarray}`` in output order.

        ``feeds`` is ``{input name: array}``, a sequence of arrays in input order, or (for a
        model with one input) the array itself; inputs may also be given as keywords. An
        ndarray must have exactly the input's dtype and shape (``DTypeError``, ``ShapeError``);
        other array-likes (lists, scalars) are converted to the input's dtype. Inputs are read
        in place when C-contiguous and outputs are written straight into the arrays returned.
        """
        arrays = self._bind(feeds, named)
        views = []
        for info, a in zip(self._inputs, arrays):
            if isinstance(info.dtype, str):
                raise DTypeError(
                    f"input {info.name!r} is {info.dtype}: install ml_dtypes to pass it"
                )
            if not isinstance(a, np.ndarray):
                try:
                    a = np.asarray(a, dtype=info.dtype)
                except (TypeError, ValueError) as e:
                    raise DTypeError(f"input {info.name!r}: {e}") from None
            if a.dtype != info.dtype:
                raise DTypeError(
                    f"input {info.name!r} must be {info.dtype}, got {a.dtype}"
                )
            if a.shape != info.shape:
                raise ShapeError(
                    f"input {info.name!r} must have shape {info.shape}, got {a.shape}"
                )
            views.append(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        outputs = []
        for info in self._graph_outputs:
            if isinstance(info.dtype, str):
                raise DTypeError(
                    f"output {info.name!r} is {info.dtype}: install ml_dtypes to receive it"
                )
            outputs.append(np.empty(info.shape, info.dtype))
        self._native.run_bytes(views, [o.reshape(-1).view(np.uint8) for o in outputs])
        for output, count in self._row_counts:
            rows = int(outputs[count].reshape(-1)[0])
            outputs[output] = outputs[output][:rows]
        return {self._graph_outputs[i].name: outputs[i] for i in self._onnx_outputs}

    __call__ = run


def compile(
    model: ModelLike,
    target: str = "host",
    threads: Optional[int] = None,
    tuning_log: Optional[Union[str, "os.PathLike[str]"]] = None,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    *,
    pretuned: bool = True,
    rewrite: bool = True,
    layout: str = "auto",
    int8_numerics: str = "onnxruntime",
) -> CompiledModel:
    """Imports an ONNX model and compiles it to native code for this machine.

    Args:
        model: a path, the model's bytes, or an ``onnx.ModelProto``.
        target: ``"host"`` or a built-in target that runs here (see :func:`targets`).
        threads: threads a run uses (``None``: one per CPU).
        tuning_log: a log written by :func:`tune`: its fastest schedules replace the defaults
            (without it, Kiln's pre-tuned records for this CPU apply unless ``pretuned=False``).
        input_shapes: ``{input name: shape}`` binding symbolic dimensions (e.g. the batch).
        pretuned: use the pre-tuned records shipped with Kiln.
        rewrite: run the e-graph rewriting (algebra, folding, layout, fusion).
        layout: activation layout of convolutions: ``"auto"``, ``"nchw"`` or ``"nhwc"``.
        int8_numerics: ``"onnxruntime"`` (bit for bit onnxruntime's int8 arithmetic) or
            ``"tosa"``.

    Raises:
        ModelImportError, UnsupportedOpError: the model cannot be imported.
        CompileError: the target is unknown or does not run here, or compiling failed.
    """
    args = _compile_args(tuning_log, input_shapes, pretuned, rewrite, layout, int8_numerics)
    compiled = CompiledModel(_native.compile(_source(model), target, threads, args))
    for note in compiled.notes:
        logger.info(note)
    return compiled


@dataclass(frozen=True)
class LibraryInfo:
    """What :func:`compile_library` built."""

    path: str
    library_bytes: int
    constant_bytes: int
    kernels: int
    arena_bytes: int
    #: CPU features the library's code needs (checked when a context is created).
    cpu_features: Tuple[str, ...]
    #: What the compilation had to tell (also logged at INFO level on the ``kiln`` logger).
    notes: Tuple[str, ...] = ()


def compile_library(
    model: ModelLike,
    path: Union[str, "os.PathLike[str]"],
    target: str = "host",
    header: Optional[Union[str, "os.PathLike[str]"]] = None,
    *,
    single_thread: bool = False,
    prefix: Optional[str] = None,
    tuning_log: Optional[Union[str, "os.PathLike[str]"]] = None,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    pretuned: bool = True,
    rewrite: bool = True,
    layout: str = "auto",
    int8_numerics: str = "onnxruntime",
) -> LibraryInfo:
    """Compiles a model into a self-contained shared library with a C ABI (``kiln compile``).

    Args:
        path: the library to write (e.g. ``"libmodel.so"``).
        target: a built-in target (:func:`targets`), ``"host"``, or a target ``.toml`` file;
            libraries for aarch64 need its cross C compiler.
        header: also write the C header (it compiles as C and C++).
        single_thread: a library whose code never starts threads.
        prefix: name the exported functions ``PREFIX_model_run``, ... instead of
            ``kiln_model_run``, ..., so libraries of several models link into one program.

    The other arguments are :func:`compile`'s.
    """
    args = _compile_args(tuning_log, input_shapes, pretuned, rewrite, layout, int8_numerics)
    out, size, weights, kernels, arena, features, notes = _native.compile_library(
        _source(model), os.fspath(path), target, _path(header), single_thread, prefix, args
    )
    for note in notes:
        logger.info(note)
    return LibraryInfo(os.fspath(out), size, weights, kernels, arena, tuple(features), tuple(notes))


@dataclass(frozen=True)
class TuneProgress:
    """Where a tuning run is, passed to ``tune(progress=...)`` after each round."""

    trials: int
    total: int
    #: The model's kernels summed with the best schedules so far (ms), once known.
    best_ms: Optional[float]
    errors: int


@dataclass(frozen=True)
class TaskResult:
    """One tuned task: a kernel workload and the number of kernels of the model that run it."""

    desc: str
    weight: int
    trials: int
    default_ms: Optional[float]
    best_ms: Optional[float]


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found. ``default_ms`` and ``tuned_ms`` sum ``weight x time`` over
    the tasks with their default and best schedules."""

    trials: int
    errors: int
    default_ms: Optional[float]
    tuned_ms: Optional[float]
    tasks: Tuple[TaskResult, ...]


def tune(
    model: ModelLike,
    trials: int = 200,
    log: Optional[Union[str, "os.PathLike[str]"]] = None,
    target: str = "host",
    tracker: Optional[str] = None,
    *,
    device_key: Optional[str] = None,
    devices: int = 1,
    rpc: Sequence[str] = (),
    key_file: Optional[Union[str, "os.PathLike[str]"]] = None,
    threads: int = 1,
    resume: bool = False,
    progress: Optional[Callable[[TuneProgress], None]] = None,
    plot: Optional[Union[str, "os.PathLike[str]"]] = None,
    batch: int = 16,
    seed: int = 1,
    repeat_ms: float = 10.0,
    build_timeout_ms: int = 20_000,
    run_timeout_ms: int = 10_000,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    rewrite: bool = True,
    layout: str = "auto",
    confirm: int = 3,
    pretrained: bool = True,
) -> TuneResult:
    """Tunes the model's kernels (``kiln tune``): every measurement is appended to ``log``,
    which :func:`compile` and :func:`compile_library` read with ``tuning_log=log``.

    Candidates are measured on this machine in worker processes (``python -m kiln._worker``),
    or on remote devices: the agents at ``rpc=["host:port", ...]`` or ``devices`` leased from
    ``tracker="host:port"`` under ``device_key``, with the agents' key in ``key_file``. A log
    that already has records is continued only with ``resume=True``. ``progress`` is called
    after each round with a :class:`TuneProgress`; an exception it raises is re-raised when the
    run ends. Kiln prints its report of the run on standard output.
    """
    if log is None:
        raise TypeError("tune() needs log=: the tuning log file the measurements go to")
    if (rpc or tracker) and key_file is None:
        raise ValueError("tune(): rpc= and tracker= need key_file= (the device agents' key)")
    if tracker and not device_key:
        raise ValueError("tune(): tracker= needs device_key= (the pool of devices to lease)")
    if rpc and tracker:
        raise ValueError("tune(): give rpc= (agents) or tracker= (a pool), not both")
    with _model_path(model) as path:
        callback = None
        if progress is not None:
            callback = lambda trials, total, best, errors: progress(
                TuneProgress(trials, total, best, errors)
            )
        done, errors, default_ms, tuned_ms, tasks = _native.tune(
            os.path.abspath(path),
            os.fspath(log),
            [sys.executable, "-m", "kiln._worker"],
            callback,
            trials=trials,
            target=target,
            threads=threads,
            resume=resume,
            batch=batch,
            seed=seed,
            repeat_ms=repeat_ms,
            build_timeout_ms=build_timeout_ms,
            run_timeout_ms=run_timeout_ms,
            input_shapes=_shapes(input_shapes),
            rewrite=rewrite,
            layout=layout,
            rpc=list(rpc),
            tracker=tracker,
            device_key=device_key,
            devices=devices,
            key_file=_path(key_file),
            plot=_path(plot),
            confirm=confirm,
            pretrained=pretrained,
        )
    return TuneResult(
        done, errors, default_ms, tuned_ms, tuple(TaskResult(*t) for t in tasks)
    )


@dataclass(frozen=True)
class KernelPrediction:
    """One kernel workload's predicted latency (``ms`` per run of one of its ``weight``
    kernels), with the schedule a compile would use (``"tuned"`` or ``"default"``)."""

    workload: str
    desc: str
    weight: int
    ms: float
    schedule: str


@dataclass(frozen=True)
class Prediction:
    """A model's predicted latency: ``total_ms`` sums ``weight x ms`` over the kernels."""

    target: str
    threads: int
    total_ms: float
    kernels: Tuple[KernelPrediction, ...]


def predict(
    model: ModelLike,
    target: str = "host",
    threads: int = 1,
    tuning_log: Optional[Union[str, "os.PathLike[str]"]] = None,
    *,
    pretuned: bool = True,
    cost_model: Optional[Union[str, "os.PathLike[str]"]] = None,
    device: Optional[Union[str, "os.PathLike[str]"]] = None,
    input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
    rewrite: bool = True,
    layout: str = "auto",
) -> Prediction:
    """Predicts the model's latency without running it (``kiln predict``), with the schedules
    a compile would use, from Kiln's latency model (or ``cost_model``). The device is this
    machine, described by a few seconds of probe kernels, or ``device``: a description from
    ``kiln device --json`` measured on it."""
    with _model_path(model) as path:
        text = _native.predict(
            path,
            target=target,
            threads=threads,
            tuning_log=_path(tuning_log),
            pretuned=pretuned,
            cost_model=_path(cost_model),
            device=_path(device),
            input_shapes=_shapes(input_shapes),
            rewrite=rewrite,
            layout=layout,
        )
    p = json.loads(text)
    kernels = tuple(
        KernelPrediction(k["workload"], k["desc"], k["weight"], k["ms"], k["schedule"].lower())
        for k in p["kernels"]
    )
    return Prediction(p["target"], p["threads"], p["total_ms"], kernels)


@dataclass(frozen=True)
class TargetInfo:
    """A built-in compilation target."""

    name: str
    #: The target triple (``None``: this machine).
    triple: Optional[str]
    description: str
    #: Whether code for it runs on this machine (``compile`` needs that; libraries do not).
    native: bool


def targets() -> Tuple[TargetInfo, ...]:
    """The built-in targets (``kiln targets``)."""
    return tuple(TargetInfo(*t) for t in _native.targets())


__all__ = [
    "compile",
    "compile_library",
    "tune",
    "predict",
    "targets",
    "CompiledModel",
    "TensorInfo",
    "LibraryInfo",
    "TuneProgress",
    "TuneResult",
    "TaskResult",
    "Prediction",
    "KernelPrediction",
    "TargetInfo",
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
