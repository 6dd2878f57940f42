"""Where a model's graph runs, and at what precision.

- `onnxruntime` (the default): the exact fp32 reference; int8 for a quantized graph.
- `openvino` (the `openvino` extra): fp32; bf16 where the processor computes it natively
  (AVX-512 BF16 or AMX; docs/models.md has what it gains and what answers it changes); int8
  for the same quantized graph.

A quantized graph (`iraas quantize`) is int8 whatever runs it; a float one is fp32 or bf16.
What cannot work is refused when the model is loaded, naming what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .spec import SpecError

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
_OV_HINT = {"fp32": "f32", "bf16": "bf16"}


class Runtime(Protocol):
    name: str
    precision: str

    def run(self, tensor: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]: ...


@dataclass(frozen=True)
class Choice:
    """A runtime and a precision, as asked (by flag, or by the model's spec) and checked."""

    runtime: str = "onnxruntime"
    precision: str = "fp32"

    def __str__(self) -> str:
        return f"{self.runtime} {self.precision}"


def choose(runtime: str, precision: str, quantized: bool) -> Choice:
    """The runtime and precision to use: "" means the default (onnxruntime; int8 for a
    quantized graph, fp32 otherwise). Raises SpecError for what cannot work on any machine."""
    runtime = runtime or "onnxruntime"
    precision = precision or ("int8" if quantized else "fp32")
    if runtime not in RUNTIMES:
        raise SpecError(f"runtime must be {' or '.join(RUNTIMES)}, not {runtime!r}")
    if precision not in PRECISIONS:
        raise SpecError(f"precision must be {', '.join(PRECISIONS)}, not {precision!r}")
    if quantized != (precision == "int8"):
        raise SpecError(
            "this model is quantized (int8): its precision is int8"
            if quantized
            else "int8 needs a quantized model: `iraas quantize` makes one from yours"
        )
    if precision == "bf16" and runtime == "onnxruntime":
        raise SpecError("onnxruntime computes fp32 on a CPU: bf16 is --runtime openvino's")
    return Choice(runtime, precision)


def open_runtime(
    onnx_path: Path,
    choice: Choice,
    threads: int = 1,
    capabilities: Callable[[], list[str]] | None = None,
    spin: bool = True,
) -> Runtime:
    """`capabilities`: what the CPU computes natively, as OpenVINO names it (default: asks it).
    `spin`: onnxruntime's threads spin between operations (lower latency, more CPU); off for a
    session that only borrows idle cores (iraas/model/cores.py)."""
    if choice.runtime == "openvino":
        return OpenVino(onnx_path, choice.precision, threads, capabilities)
    return OnnxRuntime(onnx_path, choice.precision, threads, spin)


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, precision: str, threads: int, spin: bool = True) -> None:
        import onnxruntime as ort

        self.precision = precision
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, tensor: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray(self._session.run(None, {self._input: tensor})[0], dtype=np.float32)


class OpenVino:
    name = "openvino"

    def __init__(
        self, onnx_path: Path, precision: str, threads: int, capabilities: Callable[[], list[str]] | None
    ) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise SpecError("--runtime openvino needs OpenVINO: pip install 'iraas[openvino]'") from None
        core = ov.Core()
        offered = (capabilities or (lambda: list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))))()
        if precision == "bf16" and "BF16" not in offered:
            raise SpecError(
                "bf16 needs a CPU that computes it natively (AVX-512 BF16 or AMX); this one offers "
                f"{', '.join(offered)}: use fp32 (or a quantized model, int8)"
            )
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,  # one request at a time, as a worker runs it
            # several workers on one machine: pinned, each would take the same first core
            "ENABLE_CPU_PINNING": False,
            "PERFORMANCE_HINT": "LATENCY",
            # int8: the quantized operations in int8, the rest as exact as fp32
            "INFERENCE_PRECISION_HINT": _OV_HINT.get(precision, "f32"),
        }
        self.precision = precision
        self._request = core.compile_model(str(onnx_path), "CPU", config).create_infer_request()

    def run(self, tensor: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        out = self._request.infer({0: tensor})[0]
        return np.array(out, dtype=np.float32)  # a copy: the request reuses its output buffer
