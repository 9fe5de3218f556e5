"""Type stubs of Kiln's extension module (``kiln._native``); use the ``kiln`` package's API."""

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt

__version__: str

_Info = Tuple[str, str, List[int]]

class CompiledModel:
    @property
    def inputs(self) -> List[_Info]: ...
    @property
    def graph_outputs(self) -> List[_Info]: ...
    @property
    def row_counts(self) -> List[Tuple[int, int]]: ...
    @property
    def target(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def notes(self) -> List[str]: ...
    @property
    def stats(self) -> Dict[str, Union[int, float]]: ...
    def run_bytes(
        self, inputs: Sequence[npt.NDArray[np.uint8]], outputs: Sequence[npt.NDArray[np.uint8]]
    ) -> None: ...

class _CompileArgs(TypedDict):
    tuning_log: Optional[str]
    input_shapes: Optional[Dict[str, List[int]]]
    pretuned: bool
    rewrite: bool
    layout: str
    int8_numerics: str

def compile(
    model: Union[str, bytes], target: str, threads: Optional[int], args: _CompileArgs
) -> CompiledModel: ...
def compile_library(
    model: Union[str, bytes],
    out: str,
    target: str,
    header: Optional[str],
    single_thread: bool,
    prefix: Optional[str],
    args: _CompileArgs,
) -> Tuple[os.PathLike[str], int, int, int, int, List[str], List[str]]: ...
def tune(
    model: str,
    log: str,
    worker: List[str],
    progress: Optional[Callable[[int, int, Optional[float], int], None]],
    *,
    trials: int,
    target: str,
    threads: int,
    resume: bool,
    batch: int,
    seed: int,
    repeat_ms: float,
    build_timeout_ms: int,
    run_timeout_ms: int,
    input_shapes: Optional[Dict[str, List[int]]],
    rewrite: bool,
    layout: str,
    rpc: List[str],
    tracker: Optional[str],
    device_key: Optional[str],
    devices: int,
    key_file: Optional[str],
    plot: Optional[str],
    confirm: int,
    pretrained: bool,
) -> Tuple[
    int,
    int,
    Optional[float],
    Optional[float],
    List[Tuple[str, int, int, Optional[float], Optional[float]]],
]: ...
def predict(
    model: str,
    *,
    target: str,
    threads: int,
    tuning_log: Optional[str],
    pretuned: bool,
    cost_model: Optional[str],
    device: Optional[str],
    input_shapes: Optional[Dict[str, List[int]]],
    rewrite: bool,
    layout: str,
) -> str: ...
def targets() -> List[Tuple[str, Optional[str], str, bool]]: ...
def measure_worker() -> None: ...
