"""Helpers that make test images in memory."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 20000) -> bytes:
    """A palette PNG of side x side pixels, 1 bit deep, all zeros: tens of KB on disk,
    hundreds of megabytes once decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 3, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"PLTE", b"\x00\x00\x00")
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def crashing_avif(photo: bytes) -> bytes:
    """A fuzzed AVIF whose header reads fine and whose decoding raises RuntimeError (libavif:
    "Decoding of color planes failed"): before #10 that exception killed the worker process
    and, three deliveries later, failed every image of its batch. Found by seeded mutation."""
    import random

    from PIL import features

    assert features.check("avif"), "Pillow without AVIF"
    small = Image.open(io.BytesIO(photo)).convert("RGB").resize((64, 64))
    valid = encode(small, "AVIF", quality=30)
    rng = random.Random(1)
    for _ in range(20_000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            img = Image.open(io.BytesIO(bytes(data)), formats=["AVIF"])
        except Exception:
            continue
        try:
            img.load()
        except RuntimeError:
            return bytes(data)
        except Exception:
            continue
    raise AssertionError("no crashing AVIF found")
