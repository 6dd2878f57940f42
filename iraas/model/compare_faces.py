"""`iraas bench model --model faces --gallery G --runtimes all`: where the faces model's embedding
network runs best here. Each photo is detected and aligned once (OpenCV, as the service does);
then each runtime embeds every face one at a time, and its answers (the nearest person in the
gallery) are compared with OpenCV's, the reference."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging import ImageError, decode
from .compare import Row, measured
from .faces import FaceEmbedder, Gallery
from .runtime import Choice
from .spec import SpecError

REFERENCE = Choice("opencv", "fp32")  # OpenCV's DNN engine: the default, no flag
CHOICES = (REFERENCE, Choice("onnxruntime", "fp32"), Choice("openvino", "fp32"), Choice("openvino", "bf16"))


def faces(embedder: FaceEmbedder, files: Sequence[Path]) -> list[np.ndarray[Any, Any]]:
    """Each readable photo's largest face, aligned (the whole photo where none is found)."""
    out = []
    for f in files:
        try:
            rgb = np.asarray(decode(f.read_bytes()).convert("RGB"))
        except (ImageError, OSError):
            continue
        found = embedder.detect(rgb)
        out.append(embedder.align(rgb, found[0] if found else None))
    if not out:
        raise SpecError("none of the images could be read")
    return out


def _measure(embedder: FaceEmbedder, crops: list[np.ndarray[Any, Any]], gallery: Gallery) -> tuple[float, list[str]]:
    """(faces a second, one at a time; the nearest person for each)."""
    embedder.embed(crops[:1])  # the first run plans and allocates
    t0 = time.perf_counter()
    vectors = [embedder.embed([c])[0] for c in crops]
    rate = len(crops) / (time.perf_counter() - t0)
    return rate, [gallery.ranked(v)[0][0] for v in vectors]


def compare_faces(
    files: Sequence[Path], gallery: Gallery, runtimes: Sequence[str] = ("onnxruntime", "openvino"), threads: int = 1
) -> list[Row]:
    reference = FaceEmbedder(threads)
    crops = faces(reference, files)
    rate, answers = _measure(reference, crops, gallery)

    def measure(choice: Choice) -> tuple[float, list[str]]:
        return _measure(FaceEmbedder(threads, choice.runtime, choice.precision), crops, gallery)

    return [Row(REFERENCE, rate, 1.0), *measured([c for c in CHOICES[1:] if c.runtime in runtimes], measure, answers)]
