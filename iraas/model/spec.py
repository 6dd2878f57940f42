"""What a model needs to be run: an ONNX file and how to feed it.

A spec is a small TOML or JSON file, so any ONNX image classifier can be plugged in::

    onnx = "resnet50.onnx"          # relative to the spec file
    labels = "labels.txt"           # one name per line, or a JSON list
    input_size = 224
    resize = 256                    # short side before the centre crop; 0 = squash to input_size
    mean = [0.485, 0.456, 0.406]    # in 0..1 units (torchvision style) ...
    std = [0.229, 0.224, 0.225]
    # scale = 0.0078125; offset = -0.9921875   # ... or x * scale + offset on 0..255 pixels
    channel_order = "RGB"           # or "BGR"
    layout = "NCHW"                 # or "NHWC"
    runtime = "openvino"            # optional: onnxruntime (default) or openvino (iraas/model/runtime.py)
    precision = "bf16"              # optional: fp32 (default), bf16; "int8" marks a quantized graph
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SpecError(ValueError):
    """A model spec that cannot be used."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    onnx_path: Path
    labels: tuple[str, ...]
    input_size: int
    resize: int  # short side before centre crop; 0 squashes the whole image to input_size
    scale: tuple[float, float, float]  # per channel, applied to 0..255 pixels: x * scale + offset
    offset: tuple[float, float, float]
    channel_order: str = "RGB"
    layout: str = "NCHW"
    weights_sha256: str = field(default="", compare=False)
    runtime: str = ""  # "": the default, onnxruntime
    precision: str = ""  # "": fp32; "int8": the graph is quantized

    @property
    def quantized(self) -> bool:
        return self.precision == "int8"


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        return (float(value),) * 3
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, int | float) for v in value):
        return (float(value[0]), float(value[1]), float(value[2]))
    raise SpecError(f"{what} must be a number or a list of three numbers")


def _normalisation(raw: dict[str, Any]) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    if "mean" in raw or "std" in raw:
        mean, std = _triple(raw.get("mean", 0.0), "mean"), _triple(raw.get("std", 1.0), "std")
        if any(s == 0 for s in std):
            raise SpecError("std must not be zero")
        # (x/255 - m) / s  ==  x * (1/(255 s)) + (-m/s)
        scale = tuple(1.0 / (255.0 * s) for s in std)
        offset = tuple(-m / s for m, s in zip(mean, std, strict=False))
        return (scale[0], scale[1], scale[2]), (offset[0], offset[1], offset[2])
    return _triple(raw.get("scale", 1.0 / 255.0), "scale"), _triple(raw.get("offset", 0.0), "offset")


def read_labels(path: Path) -> tuple[str, ...]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        labels = json.loads(text)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise SpecError(f"{path}: labels JSON must be a list of strings")
        return tuple(labels)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def load_spec(path: str | Path) -> ModelSpec:
    """Read a spec file (TOML, or JSON when it ends in .json)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read model spec {path}: {exc}") from exc
    for key in ("onnx", "labels", "input_size"):
        if key not in raw:
            raise SpecError(f"{path}: missing key {key!r}")
    order, layout = str(raw.get("channel_order", "RGB")).upper(), str(raw.get("layout", "NCHW")).upper()
    if order not in ("RGB", "BGR") or layout not in ("NCHW", "NHWC"):
        raise SpecError(f"{path}: channel_order must be RGB or BGR, layout NCHW or NHWC")
    size = int(raw["input_size"])
    resize = int(raw.get("resize", round(size / 0.875)))
    if size <= 0 or resize < 0 or (resize and resize < size):
        raise SpecError(f"{path}: need input_size > 0 and resize 0 or >= input_size")
    scale, offset = _normalisation(raw)
    onnx_path = (path.parent / str(raw["onnx"])).resolve()
    if not onnx_path.is_file():
        raise SpecError(f"{path}: ONNX file {onnx_path} not found")
    labels = read_labels((path.parent / str(raw["labels"])).resolve())
    name = str(raw.get("name", path.stem))
    return ModelSpec(
        name=name,
        onnx_path=onnx_path,
        labels=labels,
        input_size=size,
        resize=resize,
        scale=scale,
        offset=offset,
        channel_order=order,
        layout=layout,
        runtime=str(raw.get("runtime", "")),
        precision=str(raw.get("precision", "")),
    )
