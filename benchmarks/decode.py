"""Decode cost of a 4000x3000 JPEG with and without DCT scaling (Pillow draft), and of the
sample's photos: one strict decode (now) against a strict check plus Pillow's decode (before).

python benchmarks/decode.py
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import numpy as np
import simplejpeg  # type: ignore[import-untyped]
from PIL import Image, ImageOps

from iraas.imaging import _draft, decode

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenet-sample" / "images"


def _photo_like(w: int = 4000, h: int = 3000) -> bytes:
    # Smooth gradients plus noise: compresses like a photo, unlike pure noise.
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    rgb = np.stack([(x * 255 / w), (y * 255 / h), ((x + y) * 127 / (w + h))], axis=-1)
    rgb += rng.normal(0, 4, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _median_ms(fn: object, repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def main() -> None:
    data = _photo_like()
    full = _median_ms(lambda: decode(data))
    drafted = _median_ms(lambda: decode(data, min_side=256))
    print(
        f"4000x3000 JPEG ({len(data) / 1e6:.1f} MB): full decode {full:.1f} ms, "
        f"with draft for a 256 px short side {drafted:.1f} ms ({full / drafted:.1f}x faster)"
    )


def _check_then_pillow(data: bytes, min_side: int) -> Image.Image:
    """Before: libjpeg-turbo strict at 1/8 scale only to catch corrupt scan data, then Pillow."""
    simplejpeg.decode_jpeg(data, strict=True, min_height=1, min_width=1)
    img = Image.open(io.BytesIO(data))
    _draft(img, min_side)
    img.load()
    return ImageOps.exif_transpose(img).convert("RGB")


def photos() -> None:
    datas = [p.read_bytes() for p in sorted(SAMPLE.iterdir())[:200]]
    now, before = [], []
    for _ in range(3):  # interleaved rounds
        now.append(statistics.median(_median_ms(lambda d=d: decode(d, 256), 3) for d in datas))
        before.append(statistics.median(_median_ms(lambda d=d: _check_then_pillow(d, 256), 3) for d in datas))
    n, b = statistics.median(now), statistics.median(before)
    print(f"sample photos, short side 256: one strict decode {n:.2f} ms, check + Pillow {b:.2f} ms (-{b - n:.2f} ms)")


if __name__ == "__main__":
    main()
    photos()
