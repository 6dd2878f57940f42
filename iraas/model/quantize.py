"""`iraas quantize`: a static int8 (QDQ) version of a model, calibrated on the user's own images.

Static quantization fixes each activation's int8 range ahead of time from real inputs, so it
must see images like those it will serve: the user's, through the same decoding and
preprocessing the service uses (no data set is shipped or downloaded). The result is an ONNX
file with QuantizeLinear/DequantizeLinear pairs around each weight and activation, which
onnxruntime fuses into int8 kernels (VNNI where the CPU has it), and a model spec beside it
that `--model NAME.toml` serves like any other.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging import ImageError, decode
from .classifier import crop_to_input, to_tensor
from .spec import ModelSpec, SpecError

log = logging.getLogger(__name__)


def calibration_tensors(spec: ModelSpec, files: Sequence[Path]) -> Iterator[np.ndarray[Any, Any]]:
    """Each readable image as the model's input tensor (batch of one); unreadable ones skipped."""
    for path in files:
        try:
            img = decode(path.read_bytes(), min_side=spec.resize or spec.input_size)
        except (ImageError, OSError) as exc:
            log.warning("calibration: skipping %s (%s)", path.name, exc)
            continue
        yield to_tensor(np.stack([crop_to_input(img, spec)]), spec)


class _Reader:
    """onnxruntime's CalibrationDataReader: one input feed per call, None at the end; images
    are read as they are fed, not all held at once."""

    def __init__(self, name: str, spec: ModelSpec, files: Sequence[Path]) -> None:
        self.name, self.spec, self.files = name, spec, files
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
        tensor = next(self.tensors, None)
        if tensor is None:
            return None
        self.count += 1
        return {self.name: tensor}

    def rewind(self) -> None:
        self.tensors, self.count = calibration_tensors(self.spec, self.files), 0


def quantize(spec: ModelSpec, files: Sequence[Path], out: Path) -> int:
    """Write `out` (a spec), `out`.onnx and `out`.labels.json; returns the images calibrated on."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if out.suffix != ".toml":
        raise SpecError(f"--out must name a .toml spec file, not {out.name}")
    if not files:
        raise SpecError("no calibration images: give a folder of images like those the service will see")
    input_name = ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    reader = _Reader(input_name, spec, files)
    onnx_out, labels_out = out.with_suffix(".onnx"), out.with_suffix(".labels.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(spec.onnx_path), str(prepared))  # shapes + folding, as ORT advises
        quantize_static(
            str(prepared),
            str(onnx_out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    if reader.count == 0:
        onnx_out.unlink(missing_ok=True)
        raise SpecError("none of the calibration images could be read")
    labels_out.write_text(json.dumps(list(spec.labels)))
    out.write_text(_spec_toml(spec, onnx_out.name, labels_out.name, reader.count))
    return reader.count


def _spec_toml(spec: ModelSpec, onnx_name: str, labels_name: str, images: int) -> str:
    def triple(v: tuple[float, float, float]) -> str:
        return "[" + ", ".join(repr(x) for x in v) + "]"

    return (
        f"# int8 (QDQ) version of {spec.name}, calibrated on {images} images by `iraas quantize`\n"
        f'name = "{spec.name}-int8"\n'
        f'onnx = "{onnx_name}"\n'
        f'labels = "{labels_name}"\n'
        f"input_size = {spec.input_size}\n"
        f"resize = {spec.resize}\n"
        f"scale = {triple(spec.scale)}\n"
        f"offset = {triple(spec.offset)}\n"
        f'channel_order = "{spec.channel_order}"\n'
        f'layout = "{spec.layout}"\n'
        'precision = "int8"\n'
    )
