"""`iraas bench model --runtimes all`: every runtime and precision this machine can run the model
on, measured on the user's images: speed, and how often its top-1 answer is the fp32
reference's (onnxruntime). One is not always faster; the recommendation says which is here."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .quantize import calibration_tensors
from .runtime import Choice, choose, open_runtime
from .spec import ModelSpec, SpecError

DEFAULT = Choice()  # onnxruntime fp32: the reference
FLOAT = (DEFAULT, Choice("openvino", "fp32"), Choice("openvino", "bf16"))
QUANTIZED = (Choice("onnxruntime", "int8"), Choice("openvino", "int8"))
MIN_AGREEMENT = 0.99  # what a recommended choice must keep of the reference's top-1 answers


@dataclass(frozen=True)
class Row:
    choice: Choice
    images_per_s: float = 0.0
    agreement: float = 0.0  # share of images whose top-1 is the reference's
    missing: str = ""  # why it cannot run here

    @property
    def ms(self) -> float:
        return 1000 / self.images_per_s if self.images_per_s else 0.0


def tensors(spec: ModelSpec, files: Sequence[Path]) -> list[np.ndarray[Any, Any]]:
    """The readable images as the model's input, one each (decoded once, outside the timing)."""
    out = list(calibration_tensors(spec, files))
    if not out:
        raise SpecError("none of the images could be read")
    return out


def _measure(
    spec: ModelSpec, choice: Choice, inputs: list[np.ndarray[Any, Any]], threads: int
) -> tuple[float, list[int]]:
    """(images a second, inference only, one at a time as a worker runs them; top-1 of each)."""
    runtime = open_runtime(spec.onnx_path, choose(choice.runtime, choice.precision, spec.quantized), threads)
    runtime.run(inputs[0])  # the first run plans and allocates
    t0 = time.perf_counter()
    tops = [int(runtime.run(x).argmax()) for x in inputs]
    return len(inputs) / (time.perf_counter() - t0), tops


def compare(
    spec: ModelSpec,
    files: Sequence[Path],
    runtimes: Sequence[str] = ("onnxruntime", "openvino"),
    threads: int = 1,
    quantized: ModelSpec | None = None,
) -> list[Row]:
    """Each choice of `runtimes` on `spec` (and on `quantized`, its int8 version, if given)."""
    inputs = tensors(spec, files)
    rate, reference = _measure(spec, DEFAULT, inputs, threads)
    rows = [Row(DEFAULT, rate, 1.0)] if DEFAULT.runtime in runtimes else []
    for model, choices in ((spec, FLOAT[1:]), (quantized, QUANTIZED)):
        if model is not None:
            measure = functools.partial(_measure, model, inputs=inputs, threads=threads)
            rows += measured([c for c in choices if c.runtime in runtimes], measure, reference)
    return rows


def measured(
    choices: Sequence[Choice], measure: Callable[[Choice], tuple[float, Sequence[object]]], reference: Sequence[object]
) -> list[Row]:
    """A row for each choice: `measure(choice)` gives its rate and its answers, compared with the
    reference's; a choice this machine cannot run says why."""
    rows = []
    for choice in choices:
        try:
            rate, got = measure(choice)
        except SpecError as exc:
            rows.append(Row(choice, missing=str(exc)))
            continue
        rows.append(Row(choice, rate, sum(a == b for a, b in zip(got, reference, strict=True)) / len(reference)))
    return rows


def recommend(rows: Sequence[Row]) -> Row | None:
    """The fastest that keeps MIN_AGREEMENT of the reference's answers."""
    kept = [r for r in rows if not r.missing and r.agreement >= MIN_AGREEMENT]
    return max(kept, key=lambda r: r.images_per_s, default=None)


def table(
    rows: Sequence[Row], images: int, reference: Choice = DEFAULT, name: str = "fp32", what: str = "top-1"
) -> str:
    """`what` (a classifier's top-1, a face's person) compared with the `reference` choice's,
    which the header calls `name`."""
    base = next((r.images_per_s for r in rows if r.choice == reference and not r.missing), 0.0)
    same = f"{what} = {name}"
    width, vs = max(len(same), 12) + 1, max(len(name) + 3, 7)
    lines = [f"{'runtime':12} {'precision':9} {'img/s':>8} {'ms/img':>7} {'vs ' + name:>{vs}} {same:>{width}}"]
    for r in rows:
        if r.missing:
            lines.append(f"{r.choice.runtime:12} {r.choice.precision:9} cannot run here: {r.missing}")
            continue
        ratio = r.images_per_s / base if base else 0.0
        lines.append(
            f"{r.choice.runtime:12} {r.choice.precision:9} {r.images_per_s:8.1f} {r.ms:7.2f} {ratio:{vs}.2f} "
            f"{r.agreement:{width - 1}.1%}"
        )
    best = recommend(rows)
    lines.append(f"({images} images, inference only, one at a time)")
    if best is not None:
        flags = "the default: no flag"
        if best.choice != reference:
            flags = f"--runtime {best.choice.runtime} --precision {best.choice.precision}"
        lines.append(f"recommended here: {best.choice} ({flags}; {what} kept on {MIN_AGREEMENT:.0%} or more)")
    return "\n".join(lines)
