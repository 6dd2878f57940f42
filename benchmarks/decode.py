"""Decode cost of a 4000x3000 JPEG with and without DCT scaling (Pillow draft).

python benchmarks/decode.py
"""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
from PIL import Image

from iraas.imaging import decode


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


if __name__ == "__main__":
    main()
